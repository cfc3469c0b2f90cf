/* stress_fork -- fork repeatedly while other threads allocate from every
 * allocator of the pool (objects, heap, regions, arenas). Each child frees
 * what the parent allocated before the fork, keeps allocating, checks the
 * pool and exits; a child that deadlocks (on the heap lock, a claimed region,
 * the carve lock) is killed by its watchdog and fails the run. */
#include "stress_common.h"

#include <sys/wait.h>

static rp_pool *pool;
static volatile int stop;

/* Give back a block of the given kind: 0 object, 1 heap, 2 region. */
static void put_back(int kind, void *p)
{
    if (kind == 0)
        rp_free(pool, p);
    else if (kind == 1)
        rp_heap_free(pool, p);
    else
        rp_region_release(pool, p);
}

static void *busy(void *arg)
{
    uint64_t rng = (uint64_t)(uintptr_t)arg;
    void *held[32] = {0};
    int kind[32] = {0};
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        int s = (int)(stress_rand(&rng) % 32);
        if (held[s]) {
            put_back(kind[s], held[s]);
            held[s] = NULL;
        } else {
            kind[s] = (int)(stress_rand(&rng) % 3);
            held[s] = kind[s] == 0 ? rp_alloc(pool, 16 + stress_rand(&rng) % 5000)
                      : kind[s] == 1 ? rp_heap_alloc(pool, 40000 + stress_rand(&rng) % 100000)
                                     : rp_region_acquire(pool, 64 * KiB);
        }
        rp_arena *a = rp_arena_thread(pool);
        if (a) {
            rp_arena_alloc(a, 100, 16);
            if ((stress_rand(&rng) & 63) == 0)
                rp_arena_reset(a);
        }
    }
    for (int s = 0; s < 32; s++)
        if (held[s])
            put_back(kind[s], held[s]);
    rp_thread_detach(pool);
    return NULL;
}

/* Short-lived threads that use the pool and exit: their shards are recycled
 * through liburcu's call_rcu worker, so forks happen while reclaim callbacks
 * run (this caught a lock-order deadlock between the fork handler and
 * call_rcu_before_fork). */
static void *short_lived(void *arg)
{
    (void)arg;
    void *o = rp_alloc(pool, 100);
    rp_arena *a = rp_arena_thread(pool);
    if (a)
        rp_arena_alloc(a, 64, 16);
    rp_free(pool, o);
    return NULL;
}

static void *churner(void *arg)
{
    (void)arg;
    while (!__atomic_load_n(&stop, __ATOMIC_RELAXED)) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) == 0)
            pthread_join(t, NULL);
    }
    return NULL;
}

static int child(void *obj, void *heap, void *region)
{
    alarm(20);
    if (((unsigned char *)obj)[10] != 0x11 || ((unsigned char *)heap)[10] != 0x22 ||
        ((unsigned char *)region)[10] != 0x33)
        return 10;
    rp_free(pool, obj);
    rp_heap_free(pool, heap);
    rp_region_release(pool, region);
    for (int i = 0; i < 200; i++) {
        void *o = rp_alloc(pool, 64 + (size_t)i);
        void *h = rp_heap_alloc(pool, 50000);
        void *r = rp_region_acquire(pool, 128 * KiB);
        if (!o || !h || !r)
            return 11;
        memset(o, 1, 64);
        rp_free(pool, o);
        rp_heap_free(pool, h);
        rp_region_release(pool, r);
    }
    rp_arena *a = rp_arena_thread(pool);
    if (!a || !rp_arena_alloc(a, 1000, 64))
        return 12;
    return 0;
}

int main(int argc, char **argv)
{
    struct stress_args a = stress_parse(argc, argv, "stress_fork", 3, 0, STRESS_TSAN ? 30 : 100);
    rp_config c;
    rp_config_init(&c);
    c.reserve_bytes = (size_t)4 << 30;
    c.heap_bytes = 128 * MiB;
    c.purge_delay_ms = 5;
    c.purge_thread = 0; /* TSan: a multithreaded parent's child may not start threads */
    c.error_hook = stress_error_hook;
    pool = rp_pool_create(&c);
    pthread_t t[16];
    int nt = a.threads > 16 ? 16 : a.threads;
    for (int i = 0; i < nt; i++)
        pthread_create(&t[i], NULL, busy, (void *)(uintptr_t)(a.seed + (uint64_t)i));
    pthread_t ch;
    pthread_create(&ch, NULL, churner, NULL);
    int forks = 0, bad = 0;
    for (long i = 0; i < a.count; i++) {
        void *obj = rp_alloc(pool, 100);
        void *heap = rp_heap_alloc(pool, 60000);
        void *region = rp_region_acquire(pool, 64 * KiB);
        if (!obj || !heap || !region) {
            stress_fail("parent allocation failed");
            break;
        }
        memset(obj, 0x11, 100);
        memset(heap, 0x22, 100);
        memset(region, 0x33, 100);
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0)
            _exit(child(obj, heap, region));
        int st = 0;
        waitpid(pid, &st, 0);
        forks++;
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            bad++;
            stress_fail("child %d: %s %d", forks, WIFEXITED(st) ? "exit" : "signal",
                        WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
        }
        rp_free(pool, obj);
        rp_heap_free(pool, heap);
        rp_region_release(pool, region);
    }
    __atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
    pthread_join(ch, NULL);
    for (int i = 0; i < nt; i++)
        pthread_join(t[i], NULL);
    STRESS_CHECK(rp_check(pool) == 0, "rp_check");
    char sum[120];
    snprintf(sum, sizeof sum, "%d forks under %d allocating threads, %d bad children", forks, nt, bad);
    rp_pool_destroy(pool);
    return stress_finish("stress_fork", sum);
}
