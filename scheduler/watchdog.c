// Rank 0's guards around ep_engine_run (scheduler/engine_impl.h): the
// SIGTERM handler (a user's stop, or mpirun ending the job after a rank
// died) and the watchdog thread that ends the process when the engine
// thread is blocked where no wait of cluster/liveness.h looks. Planning and
// steps are engine.c's and engine_step.c's.
#include "scheduler/engine_impl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

// SIGTERM: a user's stop, or mpirun tearing the job down because a rank
// died. Rank 0 listens for heartbeats (cluster/liveness.h) to tell which: a
// silent rank makes it a failure naming that rank, else a shutdown.
static ep_engine *volatile g_term_engine;
static void on_sigterm(int sig)
{
    (void)sig;
    ep_engine *e = g_term_engine;
    if (e) {
        atomic_store(&e->term, 1);
        ep_cluster_watch_check();
    }
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) && errno == EINTR) {
    }
}

// After a failure rank 0 keeps answering (every request in flight got its
// error; new ones and /health get 503) this long before the job exits, so
// that the answers are flushed and callers see the 503. Within mpirun's
// SIGKILL delay when launched with --mca odls_base_sigkill_timeout 3.
enum { EP_ENG_LINGER_MS = 1500 };

static void linger(void)
{
    sleep_ms(EP_ENG_LINGER_MS);
}

// Rank 0's watchdog, for what the engine thread cannot see because it is
// blocked in an MPI call that does not poll (none on a step's path is
// known since the model's agreement allreduce polls too; kept as the last
// line of defence): a step that outlives its deadline
// and the watch's grace period, or a SIGTERM whose check the engine thread
// has not taken within 1.5 s. Answers every request with EV_ERROR, keeps the
// front end up for EP_ENG_LINGER_MS and ends the process. Every wait that
// polls (plans, ready, results, MoE exchanges) names the silent ranks
// itself before this fires.
static void *watchdog(void *arg)
{
    ep_engine *e = arg;
    double shutdown_seen = 0, term_seen = 0;
    for (;;) {
        sleep_ms(50);
        if (atomic_load(&e->step_phase) < 0) return NULL; // the run ended
        double now = ep_now_us();
        double begin = (double)atomic_load(&e->step_begin_us);
        const char *why = NULL;
        char msg[512];
        // A SIGTERM whose check no wait has taken: the engine thread is
        // blocked (a wait that took it and found every rank alive goes on).
        if (atomic_load(&e->term) && ep_cluster_watch_check_pending()) {
            if (term_seen == 0) term_seen = now;
        } else {
            term_seen = 0;
        }
        if (term_seen > 0 && now - term_seen > 1.5e6) {
            snprintf(msg, sizeof msg,
                     "job terminated (SIGTERM, a rank may have died) during step %lld; rank 0 "
                     "was blocked and could not tell which rank",
                     (long long)atomic_load(&e->step_no));
            why = msg;
        } else if (begin > 0 &&
                   now - begin > (e->o.step_timeout_s + EP_CLUSTER_WATCH_GRACE_S + 1.0) * 1e6) {
            snprintf(msg, sizeof msg,
                     "step %lld did not finish within %g s on every rank (no "
                     "answer from rank(s) unknown: rank 0 is blocked in a collective that "
                     "does not poll)",
                     (long long)atomic_load(&e->step_no), e->o.step_timeout_s);
            why = msg;
        } else if (atomic_load(&e->shutdown_req) && begin > 0) {
            if (shutdown_seen == 0) shutdown_seen = now;
            if (now - EP_MAX(shutdown_seen, begin) > 2e6 + e->o.step_timeout_s * 1e6) {
                snprintf(msg, sizeof msg,
                         "shut down while step %lld was stuck beyond its deadline "
                         "(a rank does not answer)",
                         (long long)atomic_load(&e->step_no));
                why = msg;
            }
        }
        if (!why) continue;
        pthread_mutex_lock(&e->mu);
        atomic_store(&e->failed, 1);
        ep_eng_fail_all(e, EP_ERR_UNAVAILABLE, why);
        pthread_mutex_unlock(&e->mu);
        fprintf(stderr, "epserve: rank 0: %s\n", why);
        fflush(stderr);
        linger();
        _exit(1);
    }
    return NULL;
}

void ep_eng_handle_term(ep_engine *e)
{
    if (!atomic_exchange(&e->term, 0)) return;
    ep_cluster_watch_take_check();
    char names[256] = "";
    bool behind = false;
    int n = ep_cluster_watch_silent(EP_CLUSTER_WATCH_GRACE_S, names, sizeof names, &behind);
    pthread_mutex_lock(&e->mu);
    if (n > 0 && !behind) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "rank(s) %s stopped answering (no heartbeat for %g s; the job is being torn "
                 "down: SIGTERM) before step %lld",
                 names, EP_CLUSTER_WATCH_GRACE_S, (long long)atomic_load(&e->step_no));
        atomic_store(&e->failed, 1);
        ep_eng_fail_all(e, EP_ERR_UNAVAILABLE, msg);
        ep_errorf(EP_ERR_COMM, "%s", msg);
    } else {
        ep_engine_shutdown(e, false);
    }
    pthread_mutex_unlock(&e->mu);
}

void ep_eng_watchdog_start(ep_engine *e, ep_eng_watchdog *wd)
{
    memset(wd, 0, sizeof *wd);
    atomic_store(&e->step_phase, 0);
    wd->have_thread = pthread_create(&wd->thread, NULL, watchdog, e) == 0;
    // mpirun answers a dead rank with SIGTERM to the others: unless the
    // program handles SIGTERM itself, fail the requests before exiting.
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigterm;
    sigemptyset(&sa.sa_mask);
    wd->own_term =
        sigaction(SIGTERM, NULL, &wd->old_term) == 0 && wd->old_term.sa_handler == SIG_DFL;
    if (wd->own_term) {
        g_term_engine = e;
        sigaction(SIGTERM, &sa, NULL);
    }
}

void ep_eng_watchdog_stop(ep_engine *e, ep_eng_watchdog *wd)
{
    atomic_store(&e->step_phase, -1); // the thread's sign to return
    if (wd->have_thread) pthread_join(wd->thread, NULL);
    if (wd->own_term) {
        sigaction(SIGTERM, &wd->old_term, NULL);
        g_term_engine = NULL;
    }
}
