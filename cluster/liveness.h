// Liveness of the ranks while serving: the watch (heartbeats, rank 0's step
// deadline, naming the ranks that went silent), the one watched wait that
// every polled wait of epserve goes through (the transports' MoE exchanges,
// the model's batch agreement, the engine's plans and answers), and the
// watched collectives built on it. It decides nothing about steps or MoE
// layers: callers set the deadline and count the exchanges they enter.
//
// While the watch is on, every rank but 0 tells rank 0 about every 100 ms
// that it is alive (from any wait that polls), and rank 0 gives up a wait at
// the deadline, naming the ranks it has not heard from. One watch per
// process; all calls but ep_cluster_watch_check (async-signal-safe) and
// ep_cluster_watch_check_pending are main-thread only.
#ifndef EP_CLUSTER_LIVENESS_H
#define EP_CLUSTER_LIVENESS_H

#include <stdbool.h>
#include <stddef.h>

#include "cluster/cluster.h"

// Seconds rank 0 listens for signs of life before it names the silent ranks.
#define EP_CLUSTER_WATCH_GRACE_S 0.5

// ---- the watch ---------------------------------------------------------------

// Collective over the cluster (duplicates its communicator). Stop is
// collective too (every rank says goodbye so no message stays unmatched);
// rank 0 waits at most 2 s for the others.
ep_status ep_cluster_watch_start(ep_cluster *c);
void ep_cluster_watch_stop(void);
bool ep_cluster_watch_on(void);

// Rank 0: the wall clock (ep_now_us) at which a wait gives up; 0 = never.
// Set once per step by its owner (the engine); clears ep_cluster_watch_gave_up.
void ep_cluster_watch_set_deadline(double deadline_us);
// Asks rank 0's current or next wait to check now whether some rank went
// silent (a SIGTERM from mpirun may mean a rank died). Async-signal-safe.
void ep_cluster_watch_check(void);
// Takes a pending check request (true once per ep_cluster_watch_check).
bool ep_cluster_watch_take_check(void);
// Whether a check request waits to be taken (any thread): rank 0's watchdog
// learns that the engine thread is blocked where it cannot look.
bool ep_cluster_watch_check_pending(void);

// Rank 0: whether a wait gave up since the last ep_cluster_watch_set_deadline
// (the other ranks are then still inside it).
bool ep_cluster_watch_gave_up(void);

// Counts one MoE exchange entered by this rank (a no-op without the watch):
// a transport calls it once per collective it posts, so that rank 0 can
// tell a rank that is behind from one that is silent.
void ep_cluster_watch_enter(void);

// From every wait loop: non-zero ranks send their heartbeat when due; rank 0
// reads the heartbeats that arrived. A no-op without the watch.
void ep_cluster_watch_poll(void);

// Rank 0: listens for grace_s, then writes the ranks it did not hear from
// meanwhile into names (", "-separated, "" none) and returns how many. When
// none is silent but some reported fewer MoE exchanges entered than rank 0,
// those are named instead (*behind = true). 0 without the watch.
int ep_cluster_watch_silent(double grace_s, char *names, size_t cap, bool *behind);

// ---- the watched wait ------------------------------------------------------------

// Why rank 0 gave up a watched wait, for a caller that words the error itself.
typedef struct {
    const char *call; // the wait (ep_cluster_wait.call)
    bool late;        // the deadline passed; else a SIGTERM check found a silent rank
    bool missing;     // names are the wait's missing() ranks (no grace period was spent)
    bool behind;      // the named ranks sent heartbeats but entered fewer MoE exchanges
    int n;            // ranks named; 0: none could be told ("unknown")
    char names[512];  // ", "-separated
    int64_t entered;  // MoE exchanges rank 0 had entered
} ep_cluster_watch_verdict;

// Forms the error of a wait that gave up (sets the last-error message).
typedef ep_status (*ep_cluster_watch_fail_fn)(void *arg, const ep_cluster_watch_verdict *v);

typedef struct {
    // One poll of what is awaited: *done once it completed. An error ends
    // the wait with that error.
    ep_status (*test)(void *arg, bool *done);
    // Optional (rank 0): writes the ranks whose part has not arrived and
    // returns how many. At the deadline they are named at once, without
    // listening to the heartbeats for the grace period.
    int (*missing)(void *arg, char *names, size_t cap);
    void *arg;
    const char *call; // what is awaited, for the error ("MPI_Ialltoallv (payload)")
    // A wait that may last long (a plan while the engine is idle): sleeps
    // from the first poll on, backing off to 2 ms, so that an idle rank costs
    // no core. Else it spins 64 polls first and backs off to about 1 ms.
    bool idle;
    // Optional: words the error of a wait that gave up. NULL: "no answer from
    // rank(s) R (why while rank 0 waited in MoE exchange X, call; gave up at
    // the step deadline | on a SIGTERM: mpirun ends the job)".
    ep_cluster_watch_fail_fn fail;
    void *fail_arg;
} ep_cluster_wait;

// The one watched wait: calls test until done or an error, sending or
// reading heartbeats meanwhile. Rank 0 gives up at the deadline, or when a
// check request finds a rank silent (not merely behind), with EP_ERR_COMM
// naming the ranks; a check that finds every rank alive waits on. Without
// the watch it only polls test (no deadline, no heartbeats).
ep_status ep_cluster_watch_wait(const ep_cluster_wait *w);

// ---- watched collectives ------------------------------------------------------------

// ep_cluster_allreduce_i64, except that while the watch is on it is posted
// and polled like the MoE exchanges (and counted as one entered), so a rank
// that stops or dies during it is named by rank 0 at the deadline instead
// of leaving rank 0 blocked where nothing polls. Collective.
ep_status ep_cluster_watch_allreduce_i64(ep_cluster *c, int64_t *v, int n, ep_reduce_op op);

// A private channel for one owner's messages (the engine's plans, "ready"
// and results): a duplicate of the cluster's communicator, so its messages
// never meet the MoE exchanges'. Every wait on it is a watched, idle-paced
// wait whose error fail words (NULL: the default). init is collective.
typedef struct ep_cluster_chan ep_cluster_chan;
ep_status ep_cluster_chan_init(ep_cluster *c, ep_cluster_watch_fail_fn fail, void *fail_arg,
                               ep_cluster_chan **out);
void ep_cluster_chan_free(ep_cluster_chan *ch); // NULL ok

// Broadcast of bytes from root, watched (collective over the channel).
// what names it in errors: "plan" -> "MPI_Ibcast (plan)".
ep_status ep_cluster_chan_bcast(ep_cluster_chan *ch, void *buf, size_t bytes, int root,
                                const char *what);
// Blocking send of bytes to rank dst with tag (>= 0).
ep_status ep_cluster_chan_send(ep_cluster_chan *ch, int dst, int tag, const void *buf, size_t bytes,
                               const char *what);
// Posts the receive of at most cap bytes from rank src with tag into buf,
// which must stay valid until ep_cluster_chan_wait_recvs returns EP_OK (a
// wait that gave up leaves it posted); one per source at a time.
ep_status ep_cluster_chan_post_recv(ep_cluster_chan *ch, int src, int tag, void *buf, size_t cap,
                                    const char *what);
// Waits, watched, until every posted receive arrived; what is the wait's
// name in errors. At the deadline the ranks whose message is missing are
// named at once (verdict.missing).
ep_status ep_cluster_chan_wait_recvs(ep_cluster_chan *ch, const char *what);

#endif
