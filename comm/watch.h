// Liveness watch of the ranks while serving (scheduler/engine.c turns it
// on). While it is on, the MPI transport waits for its collectives by
// polling instead of blocking; every rank but 0 tells rank 0 about every
// 100 ms that it is alive (from any wait that polls), and rank 0 gives up a
// wait at the step deadline, naming the ranks it has not heard from. One
// watch per process; all calls but ep_comm_watch_check (async-signal-safe)
// and ep_comm_watch_check_pending are main-thread only.
#ifndef EP_COMM_WATCH_H
#define EP_COMM_WATCH_H

#include <stdbool.h>
#include <stddef.h>

#include "cluster/cluster.h"

// Seconds rank 0 listens for signs of life before it names the silent ranks.
#define EP_COMM_WATCH_GRACE_S 0.5

// Collective over the cluster (duplicates its communicator). Stop is
// collective too (every rank says goodbye so no message stays unmatched);
// rank 0 waits at most 2 s for the others.
ep_status ep_comm_watch_start(ep_cluster *c);
void ep_comm_watch_stop(void);
bool ep_comm_watch_on(void);

// Rank 0: the wall clock (ep_now_us) at which a wait gives up; 0 = never.
void ep_comm_watch_set_deadline(double deadline_us);
// Asks rank 0's current or next wait to check now whether some rank went
// silent (a SIGTERM from mpirun may mean a rank died). Async-signal-safe.
void ep_comm_watch_check(void);
// Takes a pending check request (true once per ep_comm_watch_check).
bool ep_comm_watch_take_check(void);
// Whether a check request waits to be taken (any thread): rank 0's watchdog
// learns that the engine thread is blocked where it cannot look.
bool ep_comm_watch_check_pending(void);

// Rank 0: whether a wait of the transport gave up since the last
// ep_comm_watch_set_deadline (the other ranks are then still inside it).
bool ep_comm_watch_gave_up(void);

// ep_cluster_allreduce_i64, except that while the watch is on it is posted
// and polled like the MoE exchanges (and counted as one entered), so a rank
// that stops or dies during it is named by rank 0 at the step deadline
// instead of leaving rank 0 blocked where nothing polls. Collective.
ep_status ep_comm_watch_allreduce_i64(ep_cluster *c, int64_t *v, int n, ep_reduce_op op);

// From every wait loop: non-zero ranks send their heartbeat when due; rank 0
// reads the heartbeats that arrived.
void ep_comm_watch_poll(void);

// Rank 0: listens for grace_s, then writes the ranks it did not hear from
// meanwhile into names (", "-separated, "" none) and returns how many. When
// none is silent but some reported fewer MoE exchanges entered than rank 0,
// those are named instead (*behind = true).
int ep_comm_watch_silent(double grace_s, char *names, size_t cap, bool *behind);

#endif
