/* fork_hook.c -- fork() in a multithreaded program that allocates from rpool.
 *
 * Four threads allocate and free continuously (objects, regions, their
 * thread arenas) and share a list of "sessions" under the application's own
 * mutex. Meanwhile the main thread forks again and again. Each child -- a
 * copy of the process with only the forking thread in it -- frees memory the
 * parent's threads allocated, keeps allocating, even starts a thread of its
 * own, and exits. This is the pattern of a prefork server or of a snapshot
 * child (think Redis BGSAVE); if the child only wants to exec(), use
 * posix_spawn() instead and none of this matters.
 *
 * What rpool's atfork handlers guarantee
 * --------------------------------------
 * rp_pool_create registers pthread_atfork handlers (once per process):
 *   - prepare: take the registry lock and, for every pool, its locks (thread
 *     list, carving, metadata, fallback heap), and quiesce liburcu. So
 *     fork() happens at a moment when no thread is inside a locked section
 *     of rpool.
 *   - parent and child: release them all; in the child re-initialize
 *     liburcu's state. The background purger thread does not exist in the
 *     child; expired regions are purged from inside rpool calls instead.
 * Hence in the child every rpool call works, on every pool, including
 * rp_free/rp_region_release of memory that other parent threads allocated
 * (frees are allowed from any thread).
 *
 * What they do not (cannot) cover: rpool's lock-free paths. A thread that
 * was between two steps of a lock-free operation when fork() copied the
 * process (a region popped off a free stack but not yet marked in use, a
 * gauge not yet updated) never finishes it in the child. The structures
 * stay consistent -- that is what lock-free means -- but that one region or
 * object is lost to the child, and the stats counters can stay off by it
 * for good. So rp_check() in such a child may report mismatches (try it:
 * about every other run does); use it in the parent, and read the child's
 * stats as approximate. The loss is bounded by the operations in flight:
 * at most a few regions or objects per thread.
 *
 * What the application must still do
 * ----------------------------------
 *   - Its own locks. A mutex held by another thread at the moment of fork
 *     stays locked forever in the child. Either never fork while holding
 *     shared locks, or register pthread_atfork handlers for them (here:
 *     sessions_lock). Prepare handlers run in REVERSE order of registration:
 *     register yours after rp_pool_create, so your lock is taken before
 *     rpool's -- the same order as in code that calls rpool while holding
 *     your lock. The other order can deadlock fork().
 *   - Other threads' private state. Their thread arenas and per-thread
 *     object caches are copied into the child, but their owners do not exist
 *     there: nobody can reset those arenas, and their memory stays allocated
 *     (and counted) until the child exits. The child may still read what
 *     is in them, but cannot free it. Objects, regions and heap blocks are
 *     fine: any thread may free them.
 *   - Threads. Only the forking thread exists in the child; start what the
 *     child needs (it may call rp_arena_thread etc. in new threads).
 *   - stdio and exit. Flush stdio before fork() (or the child's exit would
 *     write the parent's buffered output twice) and leave the child with
 *     _exit(), which skips the parent's atexit handlers.
 *   - Strictly, POSIX allows only async-signal-safe calls in the child of a
 *     multithreaded process until exec. glibc goes further (malloc and
 *     stdio have atfork handlers); rpool's handlers put rpool in that
 *     group, but anything else the child calls needs the same care.
 *
 * Run: ./fork_hook     (about half a second: 20 forks under 4 threads)
 * Under ThreadSanitizer add TSAN_OPTIONS=die_after_fork=0: TSan refuses to
 * start threads in the child of a multithreaded process.
 */
#define _POSIX_C_SOURCE 200809L /* nanosleep, alarm, pthread_atfork */
#include <rpool.h>

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

enum { THREADS = 4, FORKS = 20, MAX_SESSIONS = 512 };

static rp_pool *pool;
static atomic_int stop;

/* ------------------------------------------------------------------------ */
/* Application state shared by the threads, under the application's lock.    */

struct session {
    struct session *next;
    size_t len;
    unsigned char fill;      /* every data byte holds this value */
    unsigned char data[];
};

static pthread_mutex_t sessions_lock = PTHREAD_MUTEX_INITIALIZER;
static struct session *sessions;   /* under sessions_lock */
static size_t nsessions;           /* under sessions_lock */

static void app_prepare(void)
{
    pthread_mutex_lock(&sessions_lock);
}

static void app_release(void)
{
    pthread_mutex_unlock(&sessions_lock);
}

static void die(const char *what, int err)
{
    fprintf(stderr, "fork_hook: %s: %s\n", what, strerror(err));
    exit(1);
}

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Add a new session or retire the oldest one. Allocation and free happen
 * outside the lock: keep critical sections free of allocator calls when
 * you can (it also sidesteps the handler-order question above). */
static void session_step(uint64_t *rng)
{
    struct session *old = NULL;
    pthread_mutex_lock(&sessions_lock);
    if (nsessions >= MAX_SESSIONS) {
        old = sessions;
        sessions = old->next;
        nsessions--;
    }
    pthread_mutex_unlock(&sessions_lock);
    if (old) {
        rp_free(pool, old);
        return;
    }
    size_t len = 16 + next_rand(rng) % 4000;
    struct session *s = rp_alloc(pool, sizeof *s + len);
    if (!s)
        return; /* budget reached: skip this one, as a server would shed it */
    s->len = len;
    s->fill = (unsigned char)(len & 0xff);
    memset(s->data, s->fill, len);
    pthread_mutex_lock(&sessions_lock);
    s->next = sessions;
    sessions = s;
    nsessions++;
    pthread_mutex_unlock(&sessions_lock);
}

static void *worker(void *arg)
{
    uint64_t rng = 0x9e3779b97f4a7c15u * ((uintptr_t)arg + 1);
    rp_arena *a = rp_arena_thread(pool);
    if (!a)
        die("rp_arena_thread", errno);
    while (!atomic_load_explicit(&stop, memory_order_relaxed)) {
        session_step(&rng);
        /* Per-request scratch in the thread arena... */
        char *scratch = rp_arena_alloc(a, 64 + next_rand(&rng) % 2048, 16);
        if (scratch)
            scratch[0] = 1;
        if ((next_rand(&rng) & 31) == 0)
            rp_arena_reset(a);
        /* ... and now and then a buffer-sized region. */
        if ((next_rand(&rng) & 15) == 0) {
            void *r = rp_region_acquire(pool, 64 * KiB << (next_rand(&rng) % 3));
            if (r) {
                memset(r, 0xab, 4096);
                rp_region_release(pool, r);
            }
        }
    }
    rp_thread_detach(pool);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* The child.                                                                */

static void *child_thread(void *arg)
{
    (void)arg;
    rp_arena *a = rp_arena_thread(pool);
    for (int i = 0; a && i < 1000; i++)
        if (!rp_arena_alloc(a, 256, 16))
            return (void *)1;
    return a ? NULL : (void *)1;
}

/* Returns the child's exit status: 0 when all went well. */
static int child_main(unsigned char *parent_buf, size_t parent_len, int verbose)
{
    alarm(10); /* a deadlocked child is killed, and the parent reports it */

    /* The parent's buffer (allocated by the forking thread) is intact. */
    for (size_t i = 0; i < parent_len; i++)
        if (parent_buf[i] != 0x5a)
            return 10;

    /* Free every session the parent's threads allocated. Taking
     * sessions_lock is safe only because of app_prepare/app_release. */
    size_t freed = 0, bytes = 0;
    pthread_mutex_lock(&sessions_lock);
    while (sessions) {
        struct session *s = sessions;
        for (size_t i = 0; i < s->len; i++)
            if (s->data[i] != s->fill)
                return 11;
        sessions = s->next;
        bytes += s->len;
        rp_free(pool, s);
        freed++;
    }
    nsessions = 0;
    pthread_mutex_unlock(&sessions_lock);
    rp_region_release(pool, parent_buf);

    /* Keep allocating: objects, regions, this thread's arena, and a thread
     * of the child's own. */
    for (int i = 0; i < 2000; i++) {
        void *o = rp_alloc(pool, 32 + (size_t)i);
        void *r = (i % 100) == 0 ? rp_region_acquire(pool, 256 * KiB) : NULL;
        if (!o || ((i % 100) == 0 && !r))
            return 12;
        memset(o, 1, 32);
        rp_free(pool, o);
        rp_region_release(pool, r);
    }
    rp_arena *a = rp_arena_thread(pool);
    if (!a || !rp_arena_alloc(a, 100 * KiB, 64))
        return 13;
    rp_arena_reset(a);
    pthread_t t;
    void *res = NULL;
    if (pthread_create(&t, NULL, child_thread, NULL) != 0 || pthread_join(t, &res) != 0 ||
        res != NULL)
        return 14;

    if (verbose) {
        rp_stats st;
        rp_stats_get(pool, &st);
        printf("child %d: freed %zu sessions (%zu KiB) allocated by the parent's threads,\n"
               "  allocated 2000 objects, 20 regions, arena memory in 2 threads; physical "
               "~%zu KiB (approximate in a child, see above), %llu misuse reports\n",
               (int)getpid(), freed, bytes / KiB, st.physical_bytes / KiB,
               (unsigned long long)st.errors);
        fflush(stdout);
    }
    return 0;
}

int main(void)
{
    rp_config cfg;
    rp_config_init(&cfg);
    cfg.reserve_bytes = (size_t)4 << 30;
    cfg.heap_bytes = 64 * MiB;
    cfg.physical_budget = 256 * MiB;
    cfg.purge_thread = 0; /* rp_check at the end needs a quiescent pool: no
                             background purger running concurrently */
    char err[256];
    if (rp_config_from_env(&cfg, "RPOOL_CONF", err, sizeof err) != 0) {
        fprintf(stderr, "fork_hook: %s\n", err);
        return 2;
    }
    pool = rp_pool_create(&cfg); /* registers rpool's atfork handlers */
    if (!pool) {
        perror("fork_hook: rp_pool_create");
        return 1;
    }
    /* After rp_pool_create: our prepare handler then runs before rpool's. */
    int rc = pthread_atfork(app_prepare, app_release, app_release);
    if (rc != 0)
        die("pthread_atfork", rc);

    pthread_t threads[THREADS];
    for (int i = 0; i < THREADS; i++)
        if ((rc = pthread_create(&threads[i], NULL, worker, (void *)(uintptr_t)i)) != 0)
            die("pthread_create", rc);

    int bad = 0;
    for (int f = 0; f < FORKS; f++) {
        struct timespec pause = {0, 10 * 1000 * 1000}; /* let the threads run */
        nanosleep(&pause, NULL);

        size_t len = 128 * KiB;
        unsigned char *buf = rp_region_acquire(pool, len);
        if (!buf)
            die("rp_region_acquire", errno);
        memset(buf, 0x5a, len);

        fflush(stdout); /* or the child would repeat our buffered output */
        fflush(stderr);
        pid_t pid = fork();
        if (pid < 0)
            die("fork", errno);
        if (pid == 0)
            _exit(child_main(buf, len, f == 0));

        int status;
        while (waitpid(pid, &status, 0) < 0)
            if (errno != EINTR)
                die("waitpid", errno);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            bad++;
            if (WIFSIGNALED(status))
                fprintf(stderr, "fork_hook: child %d killed by signal %d%s\n", (int)pid,
                        WTERMSIG(status), WTERMSIG(status) == SIGALRM ? " (deadlock?)" : "");
            else
                fprintf(stderr, "fork_hook: child %d exited with %d\n", (int)pid,
                        WEXITSTATUS(status));
        }
        /* The child's frees happened in its own copy: ours still holds the
         * buffer, and the sessions are still ours. */
        rp_region_release(pool, buf);
    }

    atomic_store(&stop, 1);
    for (int i = 0; i < THREADS; i++)
        if ((rc = pthread_join(threads[i], NULL)) != 0)
            die("pthread_join", rc);
    size_t left = 0;
    while (sessions) {
        struct session *s = sessions;
        sessions = s->next;
        rp_free(pool, s);
        left++;
    }
    int check = rp_check(pool);
    rp_stats st;
    rp_stats_get(pool, &st);
    printf("parent: %d forks under %d allocating threads, %d failed children; "
           "freed the %zu remaining sessions; rp_check %s, %llu misuse reports\n",
           FORKS, THREADS, bad, left, check == 0 ? "ok" : "FAILED",
           (unsigned long long)st.errors);
    rp_pool_destroy(pool);
    return bad == 0 && check == 0 && st.errors == 0 ? 0 : 1;
}
