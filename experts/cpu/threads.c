// The process-wide thread pool of the CPU expert kernels: workers started on
// first need, woken per ep_par_for, tasks handed out by an atomic counter;
// a round ends when its tasks are done, whether or not every worker woke.
// It does not pin threads; it sets OpenBLAS to one thread when it starts.
#include "experts/kernels.h"

#include <cblas.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define EP_PAR_MAX_THREADS 256

static struct {
    pthread_mutex_t mu;
    pthread_cond_t wake;          // a new round (gen changed)
    pthread_cond_t done;          // the last worker that joined a closed round finished
    int want;                     // threads per round, caller included; 0 = not yet read from env
    int started;                  // workers running (the caller is not one)
    uint64_t gen;                 // round number
    atomic_uint_fast64_t gen_pub; // gen, for the spinning reads outside the lock
    bool open;         // the round still lets workers join (its tasks may not all be taken)
    atomic_int active; // workers that joined this round and have not finished (changed
                       // under the lock, read without it while spinning)
    int round_threads; // threads taking tasks this round (worker ids below it may join)
    ep_par_fn fn;
    void *ctx;
    int n_tasks;
    atomic_int next;                        // next task to hand out
    bool busy;                              // a round is running (ep_par_for is not re-entrant)
    uint64_t start_gen[EP_PAR_MAX_THREADS]; // gen before worker i was created
} ep_pool = {
    .mu = PTHREAD_MUTEX_INITIALIZER,
    .wake = PTHREAD_COND_INITIALIZER,
    .done = PTHREAD_COND_INITIALIZER,
};

// How long a thread polls before it sleeps on a condition variable: a
// decode step runs ~50 rounds of 0.1-1 ms, and a wake-up through the
// condition variable costs tens of microseconds, often a small round's
// whole length, during which the caller runs the round alone. Each poll
// yields the core (sched_yield), so ranks oversubscribing the cores lose
// little; ~100 polls are ~50-100 us.
#define EP_PAR_SPIN 128

static int env_threads(const char *name)
{
    const char *s = getenv(name);
    if (!s || !*s) return 0;
    char *end = NULL;
    long v = strtol(s, &end, 10);
    return (end && !*end && v >= 1) ? (int)EP_MIN(v, EP_PAR_MAX_THREADS) : 0;
}

static int default_threads(void)
{
    int n = env_threads("EP_NUM_THREADS");
    if (!n) n = env_threads("OPENBLAS_NUM_THREADS");
    if (!n) {
        long c = sysconf(_SC_NPROCESSORS_ONLN);
        n = c >= 1 ? (int)EP_MIN(c, EP_PAR_MAX_THREADS) : 1;
    }
    return n;
}

// The pool's size on first use. OpenBLAS (the fp32 dense products) then
// runs on one thread inside each task: the pool is the step's only threads,
// so OpenBLAS's own never compete with it for the cores.
static void pool_init_locked(void)
{
    if (ep_pool.want) return;
    ep_pool.want = default_threads();
    openblas_set_num_threads(1);
}

static void run_tasks(ep_par_fn fn, void *ctx, int n, int thread)
{
    for (int t; (t = atomic_fetch_add_explicit(&ep_pool.next, 1, memory_order_relaxed)) < n;)
        fn(ctx, t, thread);
}

// A worker joins a round only while it is open and reads the round's fn,
// ctx and task count under the lock, so one that wakes late (the machine is
// shared, a wake-up can take a scheduler slice) either finds the round
// closed and sleeps again, or takes part in a round with that round's state.
// The caller waits only for the workers that joined, never for one that has
// not been scheduled yet.
static void *worker(void *arg)
{
    const int id = (int)(intptr_t)arg; // 1.. (the caller is thread 0)
    pthread_mutex_lock(&ep_pool.mu);
    // The round current when this worker was made: it may first get the lock
    // after that round's broadcast, and must still be able to join the next.
    uint64_t seen = ep_pool.start_gen[id];
    for (;;) {
        if (ep_pool.gen == seen) {
            pthread_mutex_unlock(&ep_pool.mu);
            for (int i = 0; i < EP_PAR_SPIN && atomic_load(&ep_pool.gen_pub) == seen; i++)
                sched_yield();
            pthread_mutex_lock(&ep_pool.mu);
        }
        while (ep_pool.gen == seen)
            pthread_cond_wait(&ep_pool.wake, &ep_pool.mu);
        seen = ep_pool.gen;
        if (!ep_pool.open || id >= ep_pool.round_threads) continue;
        ep_pool.active++;
        const ep_par_fn fn = ep_pool.fn;
        void *ctx = ep_pool.ctx;
        const int n = ep_pool.n_tasks;
        pthread_mutex_unlock(&ep_pool.mu);
        run_tasks(fn, ctx, n, id);
        pthread_mutex_lock(&ep_pool.mu);
        if (--ep_pool.active == 0 && !ep_pool.open) pthread_cond_signal(&ep_pool.done);
    }
    return NULL;
}

int ep_par_threads(void)
{
    pthread_mutex_lock(&ep_pool.mu);
    pool_init_locked();
    int n = ep_pool.want;
    pthread_mutex_unlock(&ep_pool.mu);
    return n;
}

void ep_par_set_threads(int n)
{
    EP_ASSERT(n >= 1);
    pthread_mutex_lock(&ep_pool.mu);
    EP_ASSERT(!ep_pool.busy);
    pool_init_locked();
    ep_pool.want = EP_MIN(n, EP_PAR_MAX_THREADS);
    pthread_mutex_unlock(&ep_pool.mu);
}

void ep_par_for(int n_tasks, ep_par_fn fn, void *ctx)
{
    if (n_tasks <= 0) return;
    pthread_mutex_lock(&ep_pool.mu);
    EP_ASSERT(!ep_pool.busy); // a task called ep_par_for, or two threads share the pool
    pool_init_locked();
    const int threads = EP_MIN(ep_pool.want, n_tasks);
    if (threads <= 1) {
        pthread_mutex_unlock(&ep_pool.mu);
        for (int t = 0; t < n_tasks; t++)
            fn(ctx, t, 0);
        return;
    }
    while (ep_pool.started < threads - 1) {
        pthread_t th;
        ep_pool.start_gen[ep_pool.started + 1] = ep_pool.gen;
        if (pthread_create(&th, NULL, worker, (void *)(intptr_t)(ep_pool.started + 1)) != 0)
            break; // run with the threads we have
        pthread_detach(th);
        ep_pool.started++;
    }
    ep_pool.busy = true;
    ep_pool.fn = fn;
    ep_pool.ctx = ctx;
    ep_pool.n_tasks = n_tasks;
    ep_pool.round_threads = EP_MIN(threads, ep_pool.started + 1);
    atomic_store(&ep_pool.next, 0);
    ep_pool.active = 0;
    ep_pool.open = true;
    ep_pool.gen++;
    atomic_store(&ep_pool.gen_pub, ep_pool.gen);
    pthread_cond_broadcast(&ep_pool.wake);
    pthread_mutex_unlock(&ep_pool.mu);

    run_tasks(fn, ctx, n_tasks, 0);

    // Every task is taken now; those not run here belong to joined workers.
    pthread_mutex_lock(&ep_pool.mu);
    ep_pool.open = false;
    if (ep_pool.active > 0) { // joined workers finish their last task: poll first
        pthread_mutex_unlock(&ep_pool.mu);
        for (int i = 0; i < EP_PAR_SPIN && atomic_load(&ep_pool.active) > 0; i++)
            sched_yield();
        pthread_mutex_lock(&ep_pool.mu);
    }
    while (ep_pool.active > 0)
        pthread_cond_wait(&ep_pool.done, &ep_pool.mu);
    ep_pool.busy = false;
    pthread_mutex_unlock(&ep_pool.mu);
}
