/* stress_heap -- the fallback heap under concurrent random walks: threads
 * allocate random sizes (16 B .. 256 KiB) and free in random order, each
 * block marked with a per-block pattern at both ends that is checked before
 * its free. Periodically every thread pauses at a barrier and the main
 * thread runs rp_check (which includes the heap's invariant checker),
 * compares the heap's allocated-bytes counter with the threads' own tally,
 * and checks the heap's white-box counters: no purge or growth step still in
 * flight, no system call ever made with the heap lock held, lazy bytes
 * within their cap.
 *
 * Two pools, half the time each: one purging eagerly (purge_delay_ms = 0:
 * every purge is a madvise on a held fragment, outside the lock, racing the
 * other threads) and one purging lazily (purge_delay_ms = 5: lazy fragments,
 * evictions, expiry). A purge that reached a live block would zero its
 * pattern. */
#include "stress_common.h"

#define SLOTS 256

/* heap.c's white-box counters (see tests/test_heap.c for the slots). */
void rpi_heap_counters(rp_pool *p, uint64_t *out);
enum { HC_OS_LOCKED, HC_OS_UNLOCKED, HC_HELD, HC_GROWING, HC_LAZY, HC_LAZY_BYTES,
       HC_LAZY_MAX, HC_JOBS, HC_PURGE_FAILS, HC_N };

static rp_pool *pool;
static pthread_barrier_t bar;
static volatile int done;
static size_t tally[64];
static uint64_t seed;

struct blk {
    unsigned char *p;
    size_t n;
};

static void *walker(void *arg)
{
    int id = (int)(uintptr_t)arg;
    uint64_t rng = seed + 99 + (uint64_t)id * 7919;
    struct blk b[SLOTS] = {{0}};
    for (int phase = 0;; phase++) {
        for (int i = 0; i < 4000; i++) {
            int s = (int)(stress_rand(&rng) % SLOTS);
            unsigned char mark = (unsigned char)(s ^ id);
            if (b[s].p) {
                for (size_t k = 0; k < b[s].n && k < 64; k++)
                    if (b[s].p[k] != mark)
                        stress_fail("heap block %p damaged", (void *)b[s].p);
                if (b[s].p[b[s].n - 1] != mark)
                    stress_fail("heap block %p: last byte damaged", (void *)b[s].p);
                tally[id] -= rp_usable_size(pool, b[s].p);
                rp_heap_free(pool, b[s].p);
                b[s].p = NULL;
            } else {
                size_t n = 16 + stress_rand(&rng) % ((stress_rand(&rng) & 7) ? 4096 : 256 * KiB);
                b[s].p = rp_heap_alloc(pool, n);
                if (!b[s].p)
                    continue; /* full: allowed */
                b[s].n = n;
                memset(b[s].p, mark, n < 64 ? n : 64);
                b[s].p[n - 1] = mark;
                tally[id] += rp_usable_size(pool, b[s].p);
            }
        }
        pthread_barrier_wait(&bar); /* main checks */
        pthread_barrier_wait(&bar);
        if (__atomic_load_n(&done, __ATOMIC_RELAXED))
            break;
    }
    for (int s = 0; s < SLOTS; s++)
        if (b[s].p) {
            tally[id] -= rp_usable_size(pool, b[s].p);
            rp_heap_free(pool, b[s].p);
        }
    return NULL;
}

/* One pool, one phase of `seconds`. Returns the number of checks. */
static int run_phase(int nt, double seconds, uint32_t purge_delay_ms, char *sum, size_t len)
{
    rp_config c;
    rp_config_init(&c);
    c.reserve_bytes = (size_t)2 << 30;
    c.heap_bytes = 32 * MiB; /* small: the walk fills it often */
    c.purge_delay_ms = purge_delay_ms;
    c.purge_thread = 0;
    c.error_hook = stress_error_hook;
    pool = rp_pool_create(&c);
    done = 0;
    pthread_barrier_init(&bar, NULL, (unsigned)nt + 1);
    pthread_t t[64];
    for (int i = 0; i < nt; i++)
        pthread_create(&t[i], NULL, walker, (void *)(uintptr_t)i);
    double end = stress_now() + seconds;
    int checks = 0;
    uint64_t hc[HC_N];
    for (;;) {
        pthread_barrier_wait(&bar);
        size_t sum_live = 0;
        for (int i = 0; i < nt; i++)
            sum_live += tally[i];
        rp_stats s;
        rp_stats_get(pool, &s);
        STRESS_CHECK(rp_check(pool) == 0, "rp_check at check %d", checks);
        STRESS_CHECK(s.heap_allocated_bytes >= sum_live, "heap allocated %zu below tally %zu",
                     s.heap_allocated_bytes, sum_live);
        rpi_heap_counters(pool, hc);
        STRESS_CHECK(hc[HC_HELD] == 0 && hc[HC_GROWING] == 0,
                     "heap jobs in flight at a barrier: %llu held, growing %llu",
                     (unsigned long long)hc[HC_HELD], (unsigned long long)hc[HC_GROWING]);
        STRESS_CHECK(hc[HC_OS_LOCKED] == 0, "%llu system calls under the heap lock",
                     (unsigned long long)hc[HC_OS_LOCKED]);
        STRESS_CHECK(hc[HC_LAZY_BYTES] <= hc[HC_LAZY_MAX], "lazy bytes %llu above cap %llu",
                     (unsigned long long)hc[HC_LAZY_BYTES], (unsigned long long)hc[HC_LAZY_MAX]);
        checks++;
        if (stress_now() >= end)
            __atomic_store_n(&done, 1, __ATOMIC_RELAXED);
        pthread_barrier_wait(&bar);
        if (__atomic_load_n(&done, __ATOMIC_RELAXED))
            break;
    }
    for (int i = 0; i < nt; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&bar);
    rp_stats s;
    rp_stats_get(pool, &s);
    STRESS_CHECK(s.heap_allocated_bytes == 0, "heap allocated %zu after freeing all",
                 s.heap_allocated_bytes);
    STRESS_CHECK(rp_check(pool) == 0, "final rp_check");
    rpi_heap_counters(pool, hc);
    snprintf(sum, len, "delay %u ms: %d checks, peak allocated %zu of %zu, ooms %llu, "
             "%llu heap syscalls (0 under the lock), %llu jobs",
             purge_delay_ms, checks, s.heap_peak_allocated_bytes, s.heap_capacity_bytes,
             (unsigned long long)s.heap_oom_count, (unsigned long long)hc[HC_OS_UNLOCKED],
             (unsigned long long)hc[HC_JOBS]);
    rp_pool_destroy(pool);
    return checks;
}

int main(int argc, char **argv)
{
    struct stress_args a = stress_parse(argc, argv, "stress_heap", 4, STRESS_TSAN ? 1.0 : 2.0, 0);
    int nt = a.threads > 64 ? 64 : a.threads;
    seed = a.seed;
    char eager[256], lazy[256], sum[520];
    run_phase(nt, a.seconds / 2, 0, eager, sizeof eager);
    run_phase(nt, a.seconds / 2, 5, lazy, sizeof lazy);
    snprintf(sum, sizeof sum, "%s; %s", eager, lazy);
    return stress_finish("stress_heap", sum);
}
