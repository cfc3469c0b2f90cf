/* test_heap.c -- the constant-time fallback heap (src/heap.c).
 * White-box: includes src/internal.h for the heap's range and its hidden
 * functions (rpi_heap_check and friends). */
#include "internal.h"
#include "testutil.h"

#include <fcntl.h>
#include <pthread.h>
#include <sys/wait.h>

/* rpi_heap_counters' slots (heap.c). */
enum {
    HC_OS_LOCKED,   /* OS calls the heap made holding its lock */
    HC_OS_UNLOCKED, /* ... and without it */
    HC_HELD,        /* fragments held by a purge in flight */
    HC_GROWING,     /* a growth step in flight */
    HC_LAZY,        /* lazy fragments */
    HC_LAZY_BYTES,  /* their dirty bytes */
    HC_LAZY_MAX,    /* the cap on those */
    HC_JOBS,        /* jobs completed */
    HC_PURGE_FAILS,
    HC_N
};
#define JOB_PURGE 1 /* rpi_heap_job_hook's `what` */
#define JOB_GROW 2

static uint64_t heap_counter(rp_pool *p, int which)
{
    uint64_t c[HC_N];
    rpi_heap_counters(p, c);
    return c[which];
}

/* OS calls of the heap kinds, process-wide (single-threaded tests). */
static unsigned long os_heap_calls(void)
{
    return rp_os_calls(RP_OS_PURGE) + rp_os_calls(RP_OS_COMMIT);
}

#define HDR 32 /* fragment header bytes (heap.c) */
#define PURGE_MIN (64 * KiB) /* RP_HEAP_PURGE_BYTES (heap.c) */

#if RP_TSAN || RP_ASAN
#define SLOW 1
#else
#define SLOW 0
#endif

static size_t page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

static uint64_t rng_next(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    uint64_t x = *s;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    return x;
}

/* Fragment size the heap uses for a request (power of two >= size + 32). */
static size_t frag_of(size_t size)
{
    size_t f = 64;
    while (f < size + HDR)
        f *= 2;
    return f;
}

static void fill(void *b, size_t n, uint64_t tag)
{
    unsigned char *c = b;
    for (size_t i = 0; i < n; i++)
        c[i] = (unsigned char)(tag + i * 7);
}

static bool intact(const void *b, size_t n, uint64_t tag)
{
    const unsigned char *c = b;
    for (size_t i = 0; i < n; i++)
        if (c[i] != (unsigned char)(tag + i * 7))
            return false;
    return true;
}

/* The heap's account must never be below what the kernel finds resident in
 * the heap range, and the whole pool's likewise. */
static void assert_heap_mincore_ok(rp_pool *p)
{
    rp_stats s = rp_test_stats(p);
    size_t res = rp_resident_bytes(p->heap_base, p->heap_bytes);
    if (s.heap_physical_bytes < res)
        fail_msg("heap_physical_bytes %zu < resident %zu in the heap range",
                 s.heap_physical_bytes, res);
    size_t all = rp_resident_bytes(p->base, p->reserve_bytes);
    if (s.physical_bytes < all)
        fail_msg("physical_bytes %zu < resident %zu", s.physical_bytes, all);
}

/* The heaps here are small on purpose: the pool's creation-time warning
 * that one cannot guarantee its worst case (RP_ERR_WARNING, through the
 * hook) is expected and discarded; any other report is not. */
static rp_pool *create_pool(rp_errlog *log, rp_config *c)
{
    rp_pool *p = rp_pool_create(c);
    assert_non_null(p);
    if (log && log->count) {
        assert_int_equal(log->count, 1);
        assert_int_equal(log->last_code, RP_ERR_WARNING);
        memset(log, 0, sizeof *log);
    }
    return p;
}

static rp_pool *make_pool(rp_errlog *log, size_t heap_bytes)
{
    rp_config c = rp_test_config(log);
    c.heap_bytes = heap_bytes;
    return create_pool(log, &c);
}

/* A pool whose heap purges lazily (purge_delay_ms > 0). */
static rp_pool *make_lazy_pool(rp_errlog *log, size_t heap_bytes, uint32_t delay_ms)
{
    rp_config c = rp_test_config(log);
    c.heap_bytes = heap_bytes;
    c.purge_delay_ms = delay_ms;
    return create_pool(log, &c);
}

static void log_reset(rp_errlog *log) { memset(log, 0, sizeof *log); }

/* ---- basics ---------------------------------------------------------------- */

static void test_heap_basic_alloc_free(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 8 * MiB);
    size_t sizes[] = {1, 15, 16, 31, 32, 33, 100, 4000, 4096, 40000, 65504, 65505,
                      300000};
    void *b[sizeof sizes / sizeof *sizes];
    size_t total = 0;
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) {
        b[i] = rp_heap_alloc(p, sizes[i]);
        assert_non_null(b[i]);
        assert_int_equal((uintptr_t)b[i] % 16, 0);
        assert_true(rpi_heap_owns(p, b[i]));
        size_t u = rpi_heap_usable(p, b[i]);
        assert_int_equal(u, frag_of(sizes[i]) - HDR);
        assert_true(u >= sizes[i]);
        fill(b[i], u, i);
        total += frag_of(sizes[i]);
        assert_int_equal(rpi_heap_check(p), 0);
    }
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.heap_allocated_bytes, total);
    assert_int_equal(s.heap_capacity_bytes, 8 * MiB);
    assert_int_equal(s.heap_largest_request, 300000);
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++)
        assert_true(intact(b[i], rpi_heap_usable(p, b[i]), i));
    /* Free in an order that exercises merging with both neighbours. */
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i += 2) {
        rp_heap_free(p, b[i]);
        assert_int_equal(rpi_heap_check(p), 0);
    }
    for (size_t i = 1; i < sizeof sizes / sizeof *sizes; i += 2) {
        assert_true(intact(b[i], frag_of(sizes[i]) - HDR, i));
        rp_heap_free(p, b[i]);
        assert_int_equal(rpi_heap_check(p), 0);
    }
    s = rp_test_stats(p);
    assert_int_equal(s.heap_allocated_bytes, 0);
    assert_int_equal(s.heap_peak_allocated_bytes, total);
    assert_int_equal(s.heap_oom_count, 0);
    rp_heap_free(p, NULL); /* ignored, not reported */
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    assert_heap_mincore_ok(p);
    rp_pool_destroy(p);
}

static void test_heap_size_limits(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 4 * MiB);
    size_t maxr = rpi_heap_max_request(p);
    assert_int_equal(maxr, 4 * MiB - HDR);
    rp_stats s0 = rp_test_stats(p);

    errno = 0;
    assert_null(rp_heap_alloc(p, 0));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_heap_alloc(p, maxr + 1));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_heap_alloc(p, SIZE_MAX));
    assert_int_equal(errno, ENOMEM);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.heap_oom_count, 2); /* size 0 is not an OOM */
    assert_int_equal(s.fail_other, s0.fail_other + 3);
    assert_int_equal(s.heap_largest_request, SIZE_MAX);

    /* The largest request takes the whole heap. */
    void *b = rp_heap_alloc(p, maxr);
    assert_non_null(b);
    s = rp_test_stats(p);
    assert_int_equal(s.heap_committed_bytes, 4 * MiB);
    assert_int_equal(s.heap_allocated_bytes, 4 * MiB);
    memset(b, 0x5a, maxr);
    errno = 0;
    assert_null(rp_heap_alloc(p, 1)); /* full */
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(rp_test_stats(p).heap_oom_count, 3);
    rp_heap_free(p, b);
    /* Try-alloc: a refusal for space is not counted as a pool failure. */
    uint64_t other = rp_test_stats(p).fail_other;
    assert_null(rpi_heap_try_alloc(p, maxr + 1));
    assert_int_equal(rp_test_stats(p).fail_other, other);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(log.count, 0);
    /* A NULL pool. */
    errno = 0;
    assert_null(rp_heap_alloc(NULL, 16));
    assert_int_equal(errno, EINVAL);
    rp_pool_destroy(p);
}

static void test_heap_no_heap(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    errno = 0;
    assert_null(rp_heap_alloc(p, 100));
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(rpi_heap_max_request(p), 0);
    assert_int_equal(rpi_heap_guaranteed_live(p, 0), 0);
    int x;
    rp_heap_free(p, &x);
    assert_int_equal(log.count, 1);
    assert_int_equal(log.last_code, RP_ERR_FOREIGN);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_check(p), 0);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.heap_capacity_bytes, 0);
    assert_int_equal(s.heap_oom_count, 1);
    rp_pool_destroy(p);
}

/* ---- the random walk -------------------------------------------------------- */

#define WALK_SLOTS 512

struct live {
    void *p;
    size_t size;   /* requested */
    uint64_t tag;
};

static size_t random_size(uint64_t *seed, size_t max)
{
    /* Log-uniform over [1, max], with a bias to sizes near powers of two
     * (the heap's rounding edges). */
    unsigned bits = (unsigned)(rng_next(seed) % (unsigned)rp_log2(max)) + 1;
    size_t v = (size_t)(rng_next(seed) & (((size_t)1 << bits) - 1));
    switch (rng_next(seed) % 8) {
    case 0: v = ((size_t)1 << bits) - HDR; break;      /* exactly a fragment */
    case 1: v = ((size_t)1 << bits) - HDR + 1; break;  /* just over */
    default: break;
    }
    if (v == 0 || v > max)
        v = 1 + v % max;
    return v;
}

/* delay_ms: the pool's purge delay (0: the heap purges eagerly; else lazily,
 * up to the lazy cap, which widens the physical bound by that cap). */
static void random_walk(uint32_t delay_ms)
{
    rp_errlog log = {0};
    rp_pool *p = delay_ms ? make_lazy_pool(&log, 4 * MiB, delay_ms) : make_pool(&log, 4 * MiB);
    size_t lazy_max = heap_counter(p, HC_LAZY_MAX);
    assert_true(delay_ms ? lazy_max > 0 : lazy_max == 0);
    unsigned long os0 = os_heap_calls(), unlocked0 = heap_counter(p, HC_OS_UNLOCKED);
    static struct live live[WALK_SLOTS];
    memset(live, 0, sizeof live);
    uint64_t seed = 0x1234567ull;
    size_t tally = 0, nlive = 0;
    int exhausted = 0, ops = SLOW ? 12000 : 60000;
    bool draining = false;
    uint64_t next_tag = 1;
    for (int op = 0; op < ops; op++) {
        size_t slot = (size_t)(rng_next(&seed) % WALK_SLOTS);
        bool want_alloc = draining ? false : (rng_next(&seed) % 100) < 60;
        if (draining && nlive < WALK_SLOTS / 8)
            draining = false;
        if (want_alloc && !live[slot].p) {
            size_t size = random_size(&seed, (rng_next(&seed) % 16) ? 64 * KiB : 1 * MiB);
            errno = 0;
            void *b = rp_heap_alloc(p, size);
            if (!b) {
                assert_int_equal(errno, ENOMEM);
                exhausted++;
                draining = true;
            } else {
                live[slot] = (struct live){b, size, next_tag++};
                fill(b, size, live[slot].tag);
                tally += frag_of(size);
                nlive++;
                assert_true(rpi_heap_usable(p, b) >= size);
            }
        } else if (live[slot].p) {
            if (!intact(live[slot].p, live[slot].size, live[slot].tag))
                fail_msg("op %d: block %p (%zu bytes) was overwritten", op,
                         live[slot].p, live[slot].size);
            rp_heap_free(p, live[slot].p);
            tally -= frag_of(live[slot].size);
            nlive--;
            live[slot].p = NULL;
        }
        assert_int_equal(rpi_heap_check(p), 0);
        rp_stats s = rp_test_stats(p);
        assert_int_equal(s.heap_allocated_bytes, tally);
        /* The documented over-count bound (nfree <= nlive + 1). */
        size_t bound = tally + 2 * page_size() * (2 * nlive + 1) + PURGE_MIN * (nlive + 1) +
                       lazy_max;
        assert_true(heap_counter(p, HC_LAZY_BYTES) <= lazy_max);
        if (s.heap_physical_bytes > bound)
            fail_msg("op %d: heap_physical_bytes %zu above the bound %zu", op,
                     s.heap_physical_bytes, bound);
        if (op % 64 == 0) {
            assert_heap_mincore_ok(p);
            assert_int_equal(rp_check(p), 0);
        }
    }
    assert_true(exhausted >= 10);
    for (size_t i = 0; i < WALK_SLOTS; i++)
        if (live[i].p) {
            assert_true(intact(live[i].p, live[i].size, live[i].tag));
            rp_heap_free(p, live[i].p);
        }
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.heap_allocated_bytes, 0);
    assert_int_equal(s.heap_oom_count, (uint64_t)exhausted);
    /* Every system call was made without the heap lock, and these were all
     * of the heap's. */
    assert_int_equal(heap_counter(p, HC_OS_LOCKED), 0);
    assert_int_equal(heap_counter(p, HC_OS_UNLOCKED) - unlocked0, os_heap_calls() - os0);
    /* Lazy: what is still lazy is purged on request. */
    if (delay_ms) {
        assert_true(s.heap_physical_bytes <= page_size() + PURGE_MIN + lazy_max);
        rpi_heap_purge_lazy(p, SIZE_MAX, UINT64_MAX);
        assert_int_equal(heap_counter(p, HC_LAZY), 0);
        assert_int_equal(heap_counter(p, HC_LAZY_BYTES), 0);
        s = rp_test_stats(p);
    }
    /* Everything free: one fragment; its header page and less than
     * PURGE_MIN of its interior stay charged. */
    assert_true(s.heap_physical_bytes >= page_size());
    assert_true(s.heap_physical_bytes < page_size() + PURGE_MIN);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    assert_heap_mincore_ok(p);
    rp_pool_destroy(p);
}

static void test_heap_random_walk(void **state)
{
    (void)state;
    random_walk(0);
}

static void test_heap_random_walk_lazy(void **state)
{
    (void)state;
    random_walk(60000); /* nothing expires during the walk */
}

/* ---- growth ----------------------------------------------------------------- */

static void test_heap_growth_keeps_blocks(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 16 * MiB);
    assert_int_equal(rp_test_stats(p).heap_committed_bytes, 0);
    enum { N = 32 };
    void *b[N];
    size_t sz = 512 * KiB - HDR; /* one 512 KiB fragment each */
    size_t last_committed = 0;
    int steps = 0;
    uint64_t commits0 = rp_os_calls(RP_OS_COMMIT);
    for (int i = 0; i < N; i++) {
        b[i] = rp_heap_alloc(p, sz);
        assert_non_null(b[i]);
        fill(b[i], sz, (uint64_t)i * 11);
        rp_stats s = rp_test_stats(p);
        /* Committed: the smallest step 1, 2, 4, 8, 16 MiB holding i+1 blocks. */
        size_t want = 1 * MiB;
        while (want < (size_t)(i + 1) * 512 * KiB)
            want *= 2;
        assert_int_equal(s.heap_committed_bytes, want);
        if (s.heap_committed_bytes != last_committed) {
            steps++;
            last_committed = s.heap_committed_bytes;
            /* Every block made before the step is intact. */
            for (int j = 0; j <= i; j++)
                assert_true(intact(b[j], sz, (uint64_t)j * 11));
        }
        assert_int_equal(rpi_heap_check(p), 0);
    }
    assert_int_equal(steps, 5);
    assert_int_equal(rp_os_calls(RP_OS_COMMIT) - commits0, 5);
    /* Full: no growth beyond the capacity. */
    uint64_t other = rp_test_stats(p).fail_other;
    errno = 0;
    assert_null(rp_heap_alloc(p, 1));
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(rp_test_stats(p).fail_other, other + 1);
    for (int j = 0; j < N; j++) {
        assert_true(intact(b[j], sz, (uint64_t)j * 11));
        rp_heap_free(p, b[j]);
    }
    assert_int_equal(rpi_heap_check(p), 0);
    /* The committed part never shrinks; the heap is not re-initialised. */
    assert_int_equal(rp_test_stats(p).heap_committed_bytes, 16 * MiB);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* Growth extends a free top fragment instead of leaving two free fragments
 * side by side, and a large request skips steps. */
static void test_heap_growth_extends_top(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 64 * MiB);
    void *a = rp_heap_alloc(p, 100);
    assert_non_null(a);
    assert_int_equal(rp_test_stats(p).heap_committed_bytes, 1 * MiB);
    void *big = rp_heap_alloc(p, 5 * MiB); /* 8 MiB fragment */
    assert_non_null(big);
    /* 1 MiB -> 16 MiB in one step: the top (1 MiB - 128 free) grows. */
    assert_int_equal(rp_test_stats(p).heap_committed_bytes, 16 * MiB);
    memset(big, 1, 5 * MiB);
    assert_int_equal(rpi_heap_check(p), 0);
    rp_heap_free(p, big);
    rp_heap_free(p, a);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, page_size());
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- physical accounting and purging ---------------------------------------- */

static void test_heap_purge_mincore(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 64 * MiB);
    size_t pg = page_size();
    enum { N = 6 };
    void *b[N];
    size_t sz = 1 * MiB - HDR; /* 1 MiB fragments */
    for (int i = 0; i < N; i++) {
        b[i] = rp_heap_alloc(p, sz);
        assert_non_null(b[i]);
        assert_heap_mincore_ok(p); /* charged before the user touches it */
        memset(b[i], 0x11 * (i + 1), sz);
        assert_heap_mincore_ok(p);
    }
    rp_stats s = rp_test_stats(p);
    size_t res_full = rp_resident_bytes(p->heap_base, p->heap_bytes);
    assert_true(res_full >= N * (1 * MiB - pg));
    size_t phys_full = s.heap_physical_bytes;

    /* A block between two live ones: its interior pages leave at once. */
    rp_heap_free(p, b[1]);
    s = rp_test_stats(p);
    assert_int_equal(s.heap_physical_bytes, phys_full - (1 * MiB - pg));
    size_t res = rp_resident_bytes(p->heap_base, p->heap_bytes);
    assert_true(res <= res_full - (1 * MiB - pg));
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);

    /* Merging with a purged neighbour purges only what was still resident
     * and never uncharges a page twice (rp_check compares the account). */
    rp_heap_free(p, b[2]);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys_full - 2 * MiB + pg);

    /* Reuse of purged pages charges them back (before they are touched). */
    void *c = rp_heap_alloc(p, 2 * MiB - HDR);
    assert_ptr_equal(c, b[1]);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys_full);
    assert_heap_mincore_ok(p);
    memset(c, 0x77, 2 * MiB - HDR);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    rp_heap_free(p, c);

    for (int i = 0; i < N; i++)
        if (i != 1 && i != 2)
            rp_heap_free(p, b[i]);
    s = rp_test_stats(p);
    assert_int_equal(s.heap_allocated_bytes, 0);
    assert_int_equal(s.heap_physical_bytes, pg);
    assert_true(rp_resident_bytes(p->heap_base, p->heap_bytes) <= pg);
    assert_heap_mincore_ok(p);

    /* Small blocks: freed pages below the purge threshold stay resident and
     * counted, and are handed out again without a fault or a system call. */
    void *sm[8];
    for (int i = 0; i < 8; i++) {
        sm[i] = rp_heap_alloc(p, 3000); /* 4 KiB fragments from the base */
        assert_non_null(sm[i]);
        memset(sm[i], 3, 3000);
    }
    size_t phys8 = rp_test_stats(p).heap_physical_bytes;
    rp_heap_free(p, sm[3]);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys8);
    assert_heap_mincore_ok(p);
    for (int i = 0; i < 8; i++)
        if (i != 3)
            rp_heap_free(p, sm[i]);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys8);
    assert_true(phys8 <= pg + 8 * 4 * KiB);
    unsigned long madv = rp_os_calls(RP_OS_PURGE);
    for (int round = 0; round < 100; round++) {
        void *x = rp_heap_alloc(p, 3000);
        assert_ptr_equal(x, sm[0]);
        memset(x, 4, 3000);
        rp_heap_free(p, x);
    }
    assert_int_equal(rp_os_calls(RP_OS_PURGE), madv);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys8);
    assert_heap_mincore_ok(p);
    /* Enough freed resident interior is purged at once. */
    void *big = rp_heap_alloc(p, 200 * KiB);
    assert_non_null(big);
    memset(big, 5, 200 * KiB);
    rp_heap_free(p, big);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, pg);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* A purge the OS refuses keeps the pages counted (over-count, never under). */
static void test_heap_purge_failure_keeps_account(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 16 * MiB);
    void *a = rp_heap_alloc(p, 256 * KiB - HDR);
    void *b = rp_heap_alloc(p, 256 * KiB - HDR);
    void *c = rp_heap_alloc(p, 256 * KiB - HDR);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    memset(a, 1, 256 * KiB - HDR);
    memset(b, 1, 256 * KiB - HDR);
    memset(c, 1, 256 * KiB - HDR);
    size_t phys = rp_test_stats(p).heap_physical_bytes;
    rp_os_fault_inject(RP_OS_PURGE, 1);
    rp_heap_free(p, b);
    rp_os_fault_inject(RP_OS_PURGE, 0);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys);
    assert_heap_mincore_ok(p);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_check(p), 0);
    /* The next free merges and purges the lot. */
    rp_heap_free(p, a);
    assert_true(rp_test_stats(p).heap_physical_bytes < phys - 400 * KiB);
    assert_heap_mincore_ok(p);
    rp_heap_free(p, c);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, page_size());
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* ---- budgets and OS refusals ------------------------------------------------ */

static void test_heap_physical_budget_refusal(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 32 * MiB);
    rp_stats s0 = rp_test_stats(p);
    assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, s0.physical_bytes + 3 * MiB), 0);
    enum { N = 64 };
    void *b[N];
    size_t sz = 256 * KiB - HDR;
    int n = 0;
    for (; n < N; n++) {
        errno = 0;
        b[n] = rp_heap_alloc(p, sz);
        if (!b[n])
            break;
        memset(b[n], n, sz);
    }
    assert_true(n >= 10 && n < 12);
    assert_int_equal(errno, ENOMEM);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.fail_physical, s0.fail_physical + 1);
    assert_int_equal(s.heap_oom_count, 1);
    assert_true(s.physical_bytes <= s.physical_budget);
    /* The heap has room (32 MiB), the budget does not: consistent state. */
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_check(p), 0);
    assert_heap_mincore_ok(p);
    /* A free makes room again: the purged pages come back under budget. */
    rp_heap_free(p, b[0]);
    b[0] = rp_heap_alloc(p, sz);
    assert_non_null(b[0]);
    memset(b[0], 0, sz);
    for (int i = 1; i < n; i++) {
        unsigned char *c = b[i];
        assert_int_equal(c[0], i);
        assert_int_equal(c[sz - 1], i);
    }
    for (int i = 0; i < n; i++)
        rp_heap_free(p, b[i]);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void test_heap_virtual_budget_and_os_refusal(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 32 * MiB);
    rp_stats s0 = rp_test_stats(p);
    /* Room for the first 1 MiB step, not for the next one (4 MiB). */
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, s0.virtual_bytes + 1 * MiB + MiB / 2), 0);
    void *a = rp_heap_alloc(p, 256 * KiB);
    assert_non_null(a);
    assert_int_equal(rp_test_stats(p).heap_committed_bytes, 1 * MiB);
    errno = 0;
    assert_null(rp_heap_alloc(p, 1 * MiB));
    assert_int_equal(errno, ENOMEM);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.fail_virtual, s0.fail_virtual + 1);
    assert_int_equal(s.heap_oom_count, 1);
    assert_int_equal(s.heap_committed_bytes, 1 * MiB);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, p->reserve_bytes), 0);

    /* mprotect refused: ENOMEM, counted as an OS failure, nothing changed. */
    rp_os_fault_inject(RP_OS_COMMIT, 1);
    errno = 0;
    assert_null(rp_heap_alloc(p, 1 * MiB));
    assert_int_equal(errno, ENOMEM);
    rp_os_fault_inject(RP_OS_COMMIT, 0);
    s = rp_test_stats(p);
    assert_int_equal(s.fail_os, s0.fail_os + 1);
    assert_int_equal(s.heap_committed_bytes, 1 * MiB);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_check(p), 0);
    /* And then it works. */
    void *b = rp_heap_alloc(p, 1 * MiB);
    assert_non_null(b);
    memset(b, 9, 1 * MiB);
    rp_heap_free(p, b);
    rp_heap_free(p, a);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* rp_alloc's mid sizes try the heap first. When the heap cannot grow (the
 * virtual budget refuses its first step) but a free region of the right
 * class is already committed, the request is served from that region and
 * nothing counts as a failure; when the region path is refused too, the
 * failure is counted once, under the limit that refused. */
static void test_heap_refused_growth_falls_back_once(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 32 * MiB); /* mid sizes: (32 KiB, 1 MiB] */
    void *r = rp_region_acquire(p, 600 * KiB);
    assert_non_null(r);
    size_t rsize = rp_region_size(p, r);
    rp_region_release(p, r); /* free, still committed */
    rp_stats s0 = rp_test_stats(p);
    assert_int_equal(s0.heap_committed_bytes, 0);
    /* No room for the heap's first step (1 MiB), nor for a new region. */
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, s0.virtual_bytes + 64 * KiB), 0);
    char *a = rp_alloc(p, 600 * KiB);
    assert_non_null(a);
    memset(a, 7, 600 * KiB);
    assert_int_equal(rp_usable_size(p, a), rsize); /* the free region */
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.heap_committed_bytes, 0);
    assert_int_equal(s.heap_oom_count, s0.heap_oom_count + 1); /* the heap said no */
    assert_int_equal(s.fail_virtual, s0.fail_virtual);        /* ... nothing failed */
    assert_int_equal(s.fail_other, s0.fail_other);
    assert_int_equal(s.fail_os, s0.fail_os);
    /* Again: the heap and the region path both refused -- one failure. */
    errno = 0;
    assert_null(rp_alloc(p, 600 * KiB));
    assert_int_equal(errno, ENOMEM);
    s = rp_test_stats(p);
    assert_int_equal(s.fail_virtual, s0.fail_virtual + 1);
    assert_int_equal(s.fail_other, s0.fail_other);
    assert_int_equal(s.fail_os, s0.fail_os);
    /* rp_heap_alloc has nowhere else to go: its refusal is counted. */
    errno = 0;
    assert_null(rp_heap_alloc(p, 100));
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(rp_test_stats(p).fail_virtual, s0.fail_virtual + 2);
    /* An OS refusal of the heap's growth falls back the same way. */
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, p->reserve_bytes), 0);
    rp_free(p, a); /* the region is free again */
    s0 = rp_test_stats(p);
    rp_os_fault_inject(RP_OS_COMMIT, 1);
    a = rp_alloc(p, 600 * KiB);
    rp_os_fault_inject(RP_OS_COMMIT, 0);
    assert_non_null(a);
    s = rp_test_stats(p);
    assert_int_equal(s.fail_os, s0.fail_os);
    assert_int_equal(s.heap_committed_bytes, 0);
    rp_free(p, a);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* ---- bad input --------------------------------------------------------------- */

#define EXPECT_REPORT(log, code)                                              \
    do {                                                                      \
        assert_int_equal((log)->count, 1);                                    \
        assert_int_equal((log)->last_code, (code));                           \
        assert_non_null(strstr((log)->last_msg, "heap"));                     \
        log_reset(log);                                                       \
    } while (0)

/* Write into a (poisoned) fragment header as a buggy program would. */
static void poke(void *addr, uint64_t v)
{
    rp_unpoison(addr, 8);
    memcpy(addr, &v, 8);
    rp_poison(addr, 8);
}

static uint64_t peek(const void *addr)
{
    uint64_t v;
    rp_unpoison((void *)addr, 8);
    memcpy(&v, addr, 8);
    rp_poison((void *)addr, 8);
    return v;
}

static void test_heap_bad_free_reported(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 8 * MiB);
    char *a = rp_heap_alloc(p, 1000);
    char *b = rp_heap_alloc(p, 5000);
    char *c = rp_heap_alloc(p, 1000);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    memset(b, 0x42, 5000);
    rp_stats s0 = rp_test_stats(p);

    /* Outside the pool. */
    int local;
    rp_heap_free(p, &local);
    EXPECT_REPORT(&log, RP_ERR_FOREIGN);
    /* Inside the pool, not heap memory. */
    void *r = rp_region_acquire(p, 64 * KiB);
    assert_non_null(r);
    rp_heap_free(p, r);
    EXPECT_REPORT(&log, RP_ERR_WRONG_API);
    rp_region_release(p, r);
    assert_int_equal(log.count, 0);
    /* Interior pointers: unaligned, and aligned like a block start. */
    rp_heap_free(p, b + 1);
    EXPECT_REPORT(&log, RP_ERR_INTERIOR);
    rp_heap_free(p, b + 64);
    EXPECT_REPORT(&log, RP_ERR_INTERIOR);
    rp_heap_free(p, b + 4096);
    EXPECT_REPORT(&log, RP_ERR_INTERIOR);
    assert_int_equal(rpi_heap_usable(p, b + 64), 0);
    EXPECT_REPORT(&log, RP_ERR_INTERIOR);
    /* Never allocated: in free heap space, and beyond the committed part. */
    rp_heap_free(p, c + 8192);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE);
    rp_heap_free(p, (char *)p->heap_base + p->heap_bytes - 4096 + HDR);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE);
    /* Nothing changed. */
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.heap_allocated_bytes, s0.heap_allocated_bytes);
    assert_int_equal(s.heap_physical_bytes, s0.heap_physical_bytes);
    assert_int_equal(s.errors, s0.errors + 8);
    assert_int_equal(rpi_heap_check(p), 0);
    for (int i = 0; i < 5000; i++)
        assert_int_equal((unsigned char)b[i], 0x42);

    /* Double free: the block alone, then merged into a neighbour. */
    rp_heap_free(p, c);
    assert_int_equal(log.count, 0);
    rp_heap_free(p, c);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE);
    assert_int_equal(rpi_heap_usable(p, c), 0);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE);
    rp_heap_free(p, a);
    rp_heap_free(p, b);
    assert_int_equal(log.count, 0);
    rp_heap_free(p, b); /* b's header was absorbed by the merge */
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE);
    rp_heap_free(p, a);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_test_stats(p).heap_allocated_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_heap_mincore_ok(p);
    rp_pool_destroy(p);
}

/* A double free of a large block whose header page was purged by the merge:
 * the check reads that page, and must not leave it resident. */
static void test_heap_bad_free_of_purged_block(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 8 * MiB);
    char *a = rp_heap_alloc(p, 128 * KiB - HDR);
    char *b = rp_heap_alloc(p, 128 * KiB - HDR);
    char *keep = rp_heap_alloc(p, 100);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(keep);
    memset(a, 1, 128 * KiB - HDR);
    memset(b, 1, 128 * KiB - HDR);
    rp_heap_free(p, a);
    rp_heap_free(p, b); /* merged into a; b's header page is now purged */
    assert_heap_mincore_ok(p);
    rp_heap_free(p, b);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE);
    assert_heap_mincore_ok(p);
    rp_heap_free(p, keep);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_heap_corrupt_header_detected(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 8 * MiB);
    char *a = rp_heap_alloc(p, 1000);
    char *b = rp_heap_alloc(p, 1000);
    char *c = rp_heap_alloc(p, 1000);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(c);
    size_t alloc0 = rp_test_stats(p).heap_allocated_bytes;

    /* The block's own header (its size word), e.g. by an underflow. */
    uint64_t saved = peek(b - HDR);
    poke(b - HDR, saved ^ 0x4000);
    rp_heap_free(p, b);
    EXPECT_REPORT(&log, RP_ERR_CORRUPT);
    assert_int_equal(rpi_heap_usable(p, b), 0);
    EXPECT_REPORT(&log, RP_ERR_CORRUPT);
    assert_int_equal(rpi_heap_check(p), -EFAULT);
    EXPECT_REPORT(&log, RP_ERR_INVARIANT);
    assert_int_equal(rp_check(p), -EFAULT);
    EXPECT_REPORT(&log, RP_ERR_INVARIANT);
    poke(b - HDR, saved);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_test_stats(p).heap_allocated_bytes, alloc0);

    /* Only the check word damaged (any bit of the header is covered). */
    saved = peek(b - 8);
    poke(b - 8, saved + 1);
    rp_heap_free(p, b);
    EXPECT_REPORT(&log, RP_ERR_CORRUPT);
    poke(b - 8, saved);

    /* A neighbour's header damaged (an overflow out of a): freeing b must
     * not merge through it; nothing changes. */
    uint64_t a_size = peek(a - HDR);
    poke(a - HDR, a_size + 64);
    rp_heap_free(p, b);
    EXPECT_REPORT(&log, RP_ERR_CORRUPT);
    poke(a - HDR, a_size);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_test_stats(p).heap_allocated_bytes, alloc0);

    /* A free fragment's header damaged: the checker finds it, and an
     * allocation that meets it fails cleanly. */
    rp_heap_free(p, c); /* merges with the top free fragment */
    assert_int_equal(log.count, 0);
    uint64_t cs = peek(c - HDR + 24);
    poke(c - HDR + 24, cs ^ 1);
    assert_int_equal(rpi_heap_check(p), -EFAULT);
    EXPECT_REPORT(&log, RP_ERR_INVARIANT);
    errno = 0;
    assert_null(rp_heap_alloc(p, 1000));
    assert_int_equal(errno, ENOMEM);
    EXPECT_REPORT(&log, RP_ERR_CORRUPT);
    poke(c - HDR + 24, cs);
    assert_int_equal(rpi_heap_check(p), 0);

    rp_heap_free(p, a);
    rp_heap_free(p, b);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_test_stats(p).heap_allocated_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* Under ASan, freed blocks and every header are poisoned: a use after free,
 * an overflow into the next header and a read of the block's own header each
 * abort the (forked) program. Skipped in other builds. */
#if RP_ASAN
static void asan_child(int what, char *live, char *freed, size_t usable)
{
    int fd = open("/dev/null", O_WRONLY);
    if (fd >= 0)
        dup2(fd, 2); /* keep the expected report out of the test log */
    volatile char sink;
    switch (what) {
    case 0: sink = freed[10]; break;
    case 1: live[usable] = 1; break;
    case 2: sink = live[-1]; break;
    default: break;
    }
    (void)sink;
    _exit(0); /* reached only if ASan missed it */
}
#endif

static void test_heap_asan_poisoning(void **state)
{
    (void)state;
#if !RP_ASAN
    skip();
#else
    rp_pool *p = make_pool(NULL, 8 * MiB);
    char *live = rp_heap_alloc(p, 1000);
    char *freed = rp_heap_alloc(p, 1000);
    char *after = rp_heap_alloc(p, 1000);
    assert_non_null(live);
    assert_non_null(freed);
    assert_non_null(after);
    size_t usable = rpi_heap_usable(p, live);
    memset(live, 1, usable); /* the whole usable size is addressable */
    rp_heap_free(p, freed);
    for (int what = 0; what < 3; what++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0)
            asan_child(what, live, freed, usable);
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_false(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    rp_heap_free(p, live);
    rp_heap_free(p, after);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
#endif
}

/* ---- the fragmentation bound -------------------------------------------------- */

static void test_heap_guaranteed_live_bound(void **state)
{
    (void)state;
    rp_pool *p = make_pool(NULL, 64 * MiB);
    /* Requests up to 64 KiB - 32: fragments up to 64 KiB = 1024 units of 64,
     * log2 = 10: H = 2 M (1 + 10), so M = 64 MiB / 22 (rounded to 64). */
    size_t m = rpi_heap_guaranteed_live(p, 64 * KiB - HDR);
    assert_int_equal(m, (64 * MiB / 64 / 22) * 64);
    assert_true(rpi_heap_required_capacity(m, 64 * KiB - HDR) <= 64 * MiB);
    assert_true(rpi_heap_required_capacity(m + 64, 64 * KiB - HDR) > 64 * MiB);
    /* One unit more of request size doubles n: one more log2 step. */
    assert_true(rpi_heap_guaranteed_live(p, 64 * KiB - HDR + 1) < m);
    /* 0 = the largest request the heap can serve (the whole heap). */
    assert_int_equal(rpi_heap_guaranteed_live(p, 0),
                     (64 * MiB / 64 / (2 * (1 + 20))) * 64);
    assert_int_equal(rpi_heap_required_capacity(1 * MiB, 1), 2 * MiB);
    assert_int_equal(rpi_heap_required_capacity(SIZE_MAX / 2, 1 * MiB), SIZE_MAX);

    /* A fragmenting sequence within the bound: fill with blocks of one
     * size while the live total stays within m, free every other one (the
     * holes are too small for the next, doubled size), repeat. Every request
     * is served. */
    enum { N = 8192 };
    static void *b[N];
    int n = 0;
    for (size_t sz = 64; sz <= 64 * KiB; sz *= 2) {
        while (n < N && rp_test_stats(p).heap_allocated_bytes + sz <= m) {
            b[n] = rp_heap_alloc(p, sz - HDR);
            assert_non_null(b[n]);
            n++;
        }
        int k = 0;
        for (int i = 0; i < n; i++) {
            if (i % 2 == 0)
                rp_heap_free(p, b[i]);
            else
                b[k++] = b[i];
        }
        n = k;
        assert_int_equal(rpi_heap_check(p), 0);
    }
    assert_int_equal(rp_test_stats(p).heap_oom_count, 0);
    for (int i = 0; i < n; i++)
        rp_heap_free(p, b[i]);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- system calls outside the lock, lazy purging ----------------------------- */

/* What the job hook saw: it runs in the thread that holds a purge or a
 * growth step, after the heap lock was dropped and before the system call. */
struct hook_log {
    rp_pool *p;
    int purges, grows, nested;
    int held_seen, growing_seen, check_failed, nested_failed;
    int busy; /* no recursion through the nested calls */
};
static struct hook_log hook_log;

static void job_hook(rp_pool *p, int what)
{
    struct hook_log *l = &hook_log;
    if (p != l->p || l->busy)
        return;
    l->busy = 1;
    if (what == JOB_PURGE) {
        l->purges++;
        l->held_seen += heap_counter(p, HC_HELD) >= 1;
        /* The lock is free: a whole allocation and free go through here. */
        char *x = rp_heap_alloc(p, 100);
        if (x) {
            memset(x, 0x6b, 100);
            rp_heap_free(p, x);
            l->nested++;
        } else {
            l->nested_failed++;
        }
    } else if (what == JOB_GROW) {
        l->grows++;
        l->growing_seen += heap_counter(p, HC_GROWING) == 1;
    }
    /* A held fragment or a growth step in flight is a consistent state. */
    if (rpi_heap_check(p) != 0)
        l->check_failed++;
    l->busy = 0;
}

static void test_heap_syscalls_outside_lock(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 64 * MiB);
    size_t pg = page_size();
    memset(&hook_log, 0, sizeof hook_log);
    hook_log.p = p;
    /* A small free fragment fenced off from the big ones: the hook's nested
     * allocation is served from it (a whole-heap purge holds all other free
     * memory, and a nested call would wait for its own thread). */
    char *spare = rp_heap_alloc(p, 1000), *fence = rp_heap_alloc(p, 1000);
    assert_non_null(spare);
    assert_non_null(fence);
    rp_heap_free(p, spare);
    rpi_heap_job_hook = job_hook;
    unsigned long os0 = os_heap_calls(), unlocked0 = heap_counter(p, HC_OS_UNLOCKED);

    enum { N = 12 };
    void *b[N];
    for (int i = 0; i < N; i++) { /* growth steps 1, 2, 4, 8, 16 MiB */
        b[i] = rp_heap_alloc(p, 1 * MiB - HDR);
        assert_non_null(b[i]);
        memset(b[i], i + 1, 1 * MiB - HDR);
    }
    assert_true(hook_log.grows >= 4);
    size_t phys = rp_test_stats(p).heap_physical_bytes;
    for (int i = 0; i < N; i += 2) { /* each purged on its own */
        rp_heap_free(p, b[i]);
        assert_heap_mincore_ok(p);
    }
    /* The purged pages are uncharged exactly: the interior of each block. */
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys - (N / 2) * (1 * MiB - pg));
    assert_true(hook_log.purges >= N / 2);
    for (int i = 1; i < N; i += 2) { /* merges with purged neighbours */
        unsigned char *c = b[i]; /* untouched by the neighbours' purges */
        assert_int_equal(c[0], i + 1);
        assert_int_equal(c[1 * MiB - HDR - 1], i + 1);
        rp_heap_free(p, b[i]);
        assert_heap_mincore_ok(p);
    }
    rpi_heap_job_hook = NULL;
    rp_heap_free(p, fence);

    assert_int_equal(hook_log.check_failed, 0);
    assert_int_equal(hook_log.nested_failed, 0);
    assert_int_equal(hook_log.nested, hook_log.purges);
    assert_int_equal(hook_log.held_seen, hook_log.purges);
    assert_int_equal(hook_log.growing_seen, hook_log.grows);
    /* Every madvise and mprotect of the heap ran without its lock. */
    assert_int_equal(heap_counter(p, HC_OS_LOCKED), 0);
    assert_int_equal(heap_counter(p, HC_OS_UNLOCKED) - unlocked0, os_heap_calls() - os0);
    assert_int_equal(heap_counter(p, HC_HELD), 0);
    assert_int_equal(heap_counter(p, HC_GROWING), 0);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.heap_allocated_bytes, 0);
    assert_true(s.heap_physical_bytes < pg + PURGE_MIN);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* A lazy heap keeps a freed fragment resident and charged, hands it out
 * again without a system call, and purges it on request, exactly. */
static void test_heap_lazy_keeps_and_purges(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_lazy_pool(&log, 16 * MiB, 60000);
    size_t pg = page_size();
    /* Two 1 MiB blocks fill the first two growth steps exactly: a's
     * fragment is the only free one once it is freed. */
    char *a = rp_heap_alloc(p, 1 * MiB - HDR); /* at the base: page-aligned */
    char *keep = rp_heap_alloc(p, 1 * MiB - HDR);
    assert_non_null(a);
    assert_non_null(keep);
    assert_ptr_equal(a - HDR, p->heap_base);
    memset(a, 0x21, 1 * MiB - HDR);
    size_t phys0 = rp_test_stats(p).heap_physical_bytes;
    unsigned long madv = rp_os_calls(RP_OS_PURGE);

    rp_heap_free(p, a);
    assert_int_equal(rp_os_calls(RP_OS_PURGE), madv);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys0);
    assert_int_equal(heap_counter(p, HC_LAZY), 1);
    assert_int_equal(heap_counter(p, HC_LAZY_BYTES), 1 * MiB - pg); /* its interior */
    assert_true(rp_resident_bytes(a, 1 * MiB - HDR) >= 1 * MiB - pg);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);

    /* Reuse: the same fragment, no system call, nothing charged again. */
    char *b = rp_heap_alloc(p, 1 * MiB - HDR);
    assert_ptr_equal(b, a);
    assert_int_equal(heap_counter(p, HC_LAZY), 0);
    assert_int_equal(heap_counter(p, HC_LAZY_BYTES), 0);
    assert_int_equal(rp_os_calls(RP_OS_PURGE), madv);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys0);
    memset(b, 0x22, 1 * MiB - HDR);
    assert_int_equal(rp_check(p), 0);

    /* A split keeps the remainder lazy (same slot) while it holds PURGE_MIN
     * of dirty pages. */
    rp_heap_free(p, b);
    char *c = rp_heap_alloc(p, 256 * KiB - HDR);
    assert_ptr_equal(c, a);
    assert_int_equal(heap_counter(p, HC_LAZY), 1);
    assert_int_equal(heap_counter(p, HC_LAZY_BYTES), 1 * MiB - 256 * KiB - pg);
    assert_int_equal(rp_check(p), 0);
    rp_heap_free(p, c); /* merges back into one lazy fragment */
    assert_int_equal(heap_counter(p, HC_LAZY), 1);
    assert_int_equal(heap_counter(p, HC_LAZY_BYTES), 1 * MiB - pg);
    assert_int_equal(rp_os_calls(RP_OS_PURGE), madv);

    /* Purge on request: one madvise, exactly the interior uncharged. */
    size_t got = rpi_heap_purge_lazy(p, SIZE_MAX, UINT64_MAX);
    assert_int_equal(got, 1 * MiB - pg);
    assert_int_equal(rp_os_calls(RP_OS_PURGE), madv + 1);
    assert_int_equal(heap_counter(p, HC_LAZY), 0);
    assert_int_equal(rp_test_stats(p).heap_physical_bytes, phys0 - (1 * MiB - pg));
    assert_true(rp_resident_bytes(a + pg, 1 * MiB - 2 * pg) == 0);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(rpi_heap_purge_lazy(p, SIZE_MAX, UINT64_MAX), 0);
    rp_heap_free(p, keep);
    assert_int_equal(heap_counter(p, HC_OS_LOCKED), 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* The cap on lazy bytes and the number of slots: the oldest lazy fragment is
 * purged to make room, and the lazy set never exceeds either. */
static void test_heap_lazy_cap_and_slots(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_lazy_pool(&log, 64 * MiB, 60000);
    size_t cap = heap_counter(p, HC_LAZY_MAX);
    assert_int_equal(cap, 8 * MiB); /* capacity / 8 */

    /* Bytes: twelve 1 MiB fragments freed, eight fit under the cap. */
    enum { NB = 12 };
    void *b[NB], *k[NB];
    for (int i = 0; i < NB; i++) {
        b[i] = rp_heap_alloc(p, 1 * MiB - HDR);
        k[i] = rp_heap_alloc(p, 100); /* keeps the blocks apart */
        assert_non_null(b[i]);
        assert_non_null(k[i]);
        memset(b[i], 3, 1 * MiB - HDR);
    }
    unsigned long madv = rp_os_calls(RP_OS_PURGE);
    for (int i = 0; i < NB; i++) {
        rp_heap_free(p, b[i]);
        assert_true(heap_counter(p, HC_LAZY_BYTES) <= cap);
        assert_heap_mincore_ok(p);
    }
    uint64_t n = heap_counter(p, HC_LAZY);
    assert_true(n >= 7 && n <= 8);
    assert_int_equal(rp_os_calls(RP_OS_PURGE) - madv, NB - n); /* one each */
    /* The oldest went first: b[0] is no longer resident, b[NB-1] is. */
    assert_true(rp_resident_bytes((char *)b[0] + page_size(), 512 * KiB) == 0);
    assert_true(rp_resident_bytes(b[NB - 1], 512 * KiB) >= 512 * KiB);
    assert_int_equal(rp_check(p), 0);
    rpi_heap_purge_lazy(p, SIZE_MAX, UINT64_MAX);
    for (int i = 0; i < NB; i++)
        rp_heap_free(p, k[i]);

    /* Slots: 80 fragments of 128 KiB (~124 KiB dirty each: 9.7 MiB would
     * exceed the cap too, so count both limits). */
    enum { NS = 80 };
    void *s[NS], *t[NS];
    for (int i = 0; i < NS; i++) {
        s[i] = rp_heap_alloc(p, 96 * KiB);
        t[i] = rp_heap_alloc(p, 100);
        assert_non_null(s[i]);
        assert_non_null(t[i]);
        memset(s[i], 4, 96 * KiB);
    }
    for (int i = 0; i < NS; i++) {
        rp_heap_free(p, s[i]);
        assert_true(heap_counter(p, HC_LAZY) <= 64);
        assert_true(heap_counter(p, HC_LAZY_BYTES) <= cap);
    }
    assert_true(heap_counter(p, HC_LAZY) >= 60);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    for (int i = 0; i < NS; i++)
        rp_heap_free(p, t[i]);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(heap_counter(p, HC_OS_LOCKED), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* A lazy fragment older than purge_delay_ms is purged when another one turns
 * lazy, and by rpi_heap_purge_lazy with a cutoff. */
static void test_heap_lazy_expiry(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_lazy_pool(&log, 64 * MiB, 30);
    char *a = rp_heap_alloc(p, 512 * KiB - HDR);
    char *k1 = rp_heap_alloc(p, 100);
    char *b = rp_heap_alloc(p, 512 * KiB - HDR);
    char *k2 = rp_heap_alloc(p, 100);
    char *c = rp_heap_alloc(p, 512 * KiB - HDR);
    char *k3 = rp_heap_alloc(p, 100);
    assert_non_null(k3);
    memset(a, 1, 512 * KiB - HDR);
    memset(b, 1, 512 * KiB - HDR);
    memset(c, 1, 512 * KiB - HDR);
    unsigned long madv = rp_os_calls(RP_OS_PURGE);
    rp_heap_free(p, a);
    assert_int_equal(heap_counter(p, HC_LAZY), 1);
    usleep(80 * 1000);
    rp_heap_free(p, b); /* a has expired: purged now, b turns lazy */
    assert_int_equal(rp_os_calls(RP_OS_PURGE), madv + 1);
    assert_int_equal(heap_counter(p, HC_LAZY), 1);
    assert_true(rp_resident_bytes(a + page_size(), 256 * KiB) == 0);
    assert_true(rp_resident_bytes(b, 256 * KiB) >= 256 * KiB);
    /* A cutoff before b's time purges nothing; one after it purges b. */
    uint64_t now = rpi_now_ms();
    assert_int_equal(rpi_heap_purge_lazy(p, SIZE_MAX, now - 1000), 0);
    usleep(20 * 1000);
    assert_true(rpi_heap_purge_lazy(p, SIZE_MAX, rpi_now_ms()) > 0);
    assert_int_equal(heap_counter(p, HC_LAZY), 0);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    rp_heap_free(p, c);
    rp_heap_free(p, k1);
    rp_heap_free(p, k2);
    rp_heap_free(p, k3);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* At the physical budget the heap purges its own lazy fragments (outside its
 * lock) before it gives up: memory it only keeps for speed never causes an
 * ENOMEM. */
static void test_heap_lazy_budget_squeeze(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_lazy_pool(&log, 64 * MiB, 60000);
    rp_stats s0 = rp_test_stats(p);
    assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, s0.physical_bytes + 2 * MiB + MiB / 2), 0);
    char *a = rp_heap_alloc(p, 1 * MiB - HDR);
    char *keep = rp_heap_alloc(p, 100);
    assert_non_null(a);
    assert_non_null(keep);
    memset(a, 7, 1 * MiB - HDR);
    rp_heap_free(p, a);
    assert_int_equal(heap_counter(p, HC_LAZY), 1);
    /* 2 MiB from never-touched pages: charged in full; fits only once the
     * lazy 1 MiB is purged. */
    char *b = rp_heap_alloc(p, 2 * MiB - HDR);
    assert_non_null(b);
    memset(b, 8, 2 * MiB - HDR);
    assert_int_equal(heap_counter(p, HC_LAZY), 0);
    rp_stats s = rp_test_stats(p);
    assert_true(s.physical_bytes <= s.physical_budget);
    assert_int_equal(s.fail_physical, s0.fail_physical);
    assert_int_equal(s.heap_oom_count, 0);
    assert_heap_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    /* Beyond the budget it still fails cleanly. */
    errno = 0;
    assert_null(rp_heap_alloc(p, 2 * MiB - HDR));
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(rp_test_stats(p).fail_physical, s0.fail_physical + 1);
    rp_heap_free(p, b);
    rp_heap_free(p, keep);
    assert_int_equal(heap_counter(p, HC_OS_LOCKED), 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* Threads allocate, fill, verify and free purge-sized blocks: every purge
 * runs outside the lock on a held fragment, concurrently with the other
 * threads' operations. A purge that reached live memory would zero it (the
 * whole block is verified); the account must be exact at the end. Under TSan
 * this is also the race check of the deferred purges. */
#define CP_THREADS 4
#define CP_SLOTS 12

struct cp_arg {
    rp_pool *p;
    int id, ops;
    int bad;
};

static void *cp_worker(void *arg)
{
    struct cp_arg *x = arg;
    uint64_t seed = 1000 + (uint64_t)x->id;
    unsigned char *b[CP_SLOTS] = {0};
    size_t n[CP_SLOTS] = {0};
    unsigned char tag[CP_SLOTS] = {0};
    for (int i = 0; i < x->ops; i++) {
        int s = (int)(rng_next(&seed) % CP_SLOTS);
        if (b[s]) {
            for (size_t k = 0; k < n[s]; k += 509)
                if (b[s][k] != tag[s])
                    x->bad++;
            if (b[s][n[s] - 1] != tag[s])
                x->bad++;
            rp_heap_free(x->p, b[s]);
            b[s] = NULL;
        } else {
            size_t sz = 16 * KiB + (size_t)(rng_next(&seed) % (240 * KiB));
            if (rng_next(&seed) % 4 == 0)
                sz = 1 + (size_t)(rng_next(&seed) % 4000);
            b[s] = rp_heap_alloc(x->p, sz);
            if (b[s]) {
                n[s] = sz;
                tag[s] = (unsigned char)(x->id * 16 + s + 1);
                memset(b[s], tag[s], sz);
            }
        }
    }
    for (int s = 0; s < CP_SLOTS; s++)
        if (b[s])
            rp_heap_free(x->p, b[s]);
    return NULL;
}

static void concurrent_purges(uint32_t delay_ms)
{
    rp_errlog log = {0};
    rp_pool *p = delay_ms ? make_lazy_pool(&log, 32 * MiB, delay_ms) : make_pool(&log, 32 * MiB);
    pthread_t t[CP_THREADS];
    struct cp_arg x[CP_THREADS];
    for (int i = 0; i < CP_THREADS; i++) {
        x[i] = (struct cp_arg){p, i, SLOW ? 600 : 3000, 0};
        assert_int_equal(pthread_create(&t[i], NULL, cp_worker, &x[i]), 0);
    }
    for (int i = 0; i < CP_THREADS; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(x[i].bad, 0);
    }
    /* Quiescent: the account is exact (rp_check compares it) and above what
     * the kernel finds resident. */
    assert_int_equal(heap_counter(p, HC_HELD), 0);
    assert_int_equal(heap_counter(p, HC_GROWING), 0);
    assert_int_equal(heap_counter(p, HC_OS_LOCKED), 0);
    assert_true(heap_counter(p, HC_OS_UNLOCKED) > 0);
    assert_true(heap_counter(p, HC_LAZY_BYTES) <= heap_counter(p, HC_LAZY_MAX));
    assert_int_equal(rp_test_stats(p).heap_allocated_bytes, 0);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_check(p), 0);
    assert_heap_mincore_ok(p);
    rpi_heap_purge_lazy(p, SIZE_MAX, UINT64_MAX);
    rp_stats s = rp_test_stats(p);
    assert_true(s.heap_physical_bytes < page_size() + PURGE_MIN);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void test_heap_concurrent_purges(void **state)
{
    (void)state;
    concurrent_purges(0);
}

static void test_heap_concurrent_purges_lazy(void **state)
{
    (void)state;
    concurrent_purges(5); /* short: expiry purges happen too */
}

/* ---- threads and fork ---------------------------------------------------------- */

#define XT_THREADS 4
#define XT_SLOTS 64

struct xt {
    rp_pool *p;
    int id;
    void *volatile *shared; /* hand-off slots (exchanged atomically) */
    int ops;
};

static void *xt_worker(void *arg)
{
    struct xt *x = arg;
    uint64_t seed = 77 + (uint64_t)x->id;
    void *mine[16] = {0};
    size_t msz[16] = {0};
    for (int i = 0; i < x->ops; i++) {
        int s = (int)(rng_next(&seed) % 16);
        if (mine[s]) {
            unsigned char *c = mine[s];
            assert_int_equal(c[0], (unsigned char)x->id);
            assert_int_equal(c[msz[s] - 1], (unsigned char)x->id);
            if (rng_next(&seed) % 2) {
                rp_heap_free(x->p, mine[s]);
            } else {
                /* Hand it to whoever takes the slot; free what was there. */
                void *old = __atomic_exchange_n((void **)&x->shared[rng_next(&seed) % XT_SLOTS],
                                                mine[s], __ATOMIC_ACQ_REL);
                if (old)
                    rp_heap_free(x->p, old);
            }
            mine[s] = NULL;
        } else {
            size_t sz = 1 + (size_t)(rng_next(&seed) % ((rng_next(&seed) % 4) ? 4096 : 200000));
            void *b = rp_heap_alloc(x->p, sz);
            if (b) {
                memset(b, x->id, sz);
                mine[s] = b;
                msz[s] = sz;
            }
        }
    }
    for (int s = 0; s < 16; s++)
        if (mine[s])
            rp_heap_free(x->p, mine[s]);
    return NULL;
}

static void test_heap_threads_cross_free(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 16 * MiB);
    static void *volatile shared[XT_SLOTS];
    pthread_t t[XT_THREADS];
    struct xt x[XT_THREADS];
    for (int i = 0; i < XT_THREADS; i++) {
        x[i] = (struct xt){p, i + 1, shared, SLOW ? 3000 : 30000};
        assert_int_equal(pthread_create(&t[i], NULL, xt_worker, &x[i]), 0);
    }
    for (int i = 0; i < XT_THREADS; i++)
        pthread_join(t[i], NULL);
    for (int i = 0; i < XT_SLOTS; i++)
        if (shared[i]) {
            rp_heap_free(p, shared[i]);
            shared[i] = NULL;
        }
    assert_int_equal(rp_test_stats(p).heap_allocated_bytes, 0);
    assert_int_equal(rpi_heap_check(p), 0);
    assert_int_equal(rp_check(p), 0);
    assert_heap_mincore_ok(p);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* A block freed by one thread comes back to another as part of a larger
 * block at a different address, with no synchronization between the two
 * threads but the heap's. Under TSan this must be silent: the heap gives the
 * "free happens-before reuse" edge per page, not per block address. */
struct handoff {
    rp_pool *p;
    void *block;
    int done; /* relaxed: carries no happens-before */
};

static void *handoff_worker(void *arg)
{
    struct handoff *h = arg;
    char *b = rp_heap_alloc(h->p, 100 * KiB);
    assert_non_null(b);
    memset(b, 0x3c, 100 * KiB);
    h->block = b;
    rp_heap_free(h->p, b);
    __atomic_store_n(&h->done, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void test_heap_reuse_across_threads_at_new_address(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 16 * MiB);
    char *lead = rp_heap_alloc(p, 200 * KiB);
    assert_non_null(lead);
    struct handoff h = {p, NULL, 0};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, handoff_worker, &h), 0);
    while (!__atomic_load_n(&h.done, __ATOMIC_RELAXED))
        sched_yield();
    /* Free the block below: it merges with the worker's freed block, and
     * the next allocation starts at `lead`, covering the worker's bytes. */
    rp_heap_free(p, lead);
    char *big = rp_heap_alloc(p, 300 * KiB);
    assert_ptr_equal(big, lead);
    memset(big, 0x5d, 300 * KiB);
    rp_heap_free(p, big);
    pthread_join(t, NULL);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

struct forker {
    rp_pool *p;
    int stop;
};

static void *fork_hammer(void *arg)
{
    struct forker *f = arg;
    uint64_t seed = 5;
    void *b[8] = {0};
    while (!__atomic_load_n(&f->stop, __ATOMIC_RELAXED)) {
        int s = (int)(rng_next(&seed) % 8);
        if (b[s]) {
            rp_heap_free(f->p, b[s]);
            b[s] = NULL;
        } else {
            b[s] = rp_heap_alloc(f->p, 1 + rng_next(&seed) % 100000);
        }
    }
    for (int s = 0; s < 8; s++)
        if (b[s])
            rp_heap_free(f->p, b[s]);
    return NULL;
}

static void test_heap_fork_while_busy(void **state)
{
    (void)state;
    rp_pool *p = make_pool(NULL, 16 * MiB);
    struct forker f = {p, 0};
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, fork_hammer, &f), 0);
    for (int i = 0; i < (SLOW ? 5 : 30); i++) {
        pid_t pid = fork();
        assert_true(pid >= 0);
        if (pid == 0) {
            /* The child has the heap lock free and the heap consistent. */
            void *b = rp_heap_alloc(p, 5000);
            int ok = b != NULL && rpi_heap_check(p) == 0;
            rp_heap_free(p, b);
            _exit(ok && rpi_heap_check(p) == 0 ? 0 : 1);
        }
        int st = 0;
        assert_int_equal(waitpid(pid, &st, 0), pid);
        assert_true(WIFEXITED(st));
        assert_int_equal(WEXITSTATUS(st), 0);
    }
    __atomic_store_n(&f.stop, 1, __ATOMIC_RELAXED);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heap_basic_alloc_free),
        cmocka_unit_test(test_heap_size_limits),
        cmocka_unit_test(test_heap_no_heap),
        cmocka_unit_test(test_heap_random_walk),
        cmocka_unit_test(test_heap_random_walk_lazy),
        cmocka_unit_test(test_heap_growth_keeps_blocks),
        cmocka_unit_test(test_heap_growth_extends_top),
        cmocka_unit_test(test_heap_purge_mincore),
        cmocka_unit_test(test_heap_purge_failure_keeps_account),
        cmocka_unit_test(test_heap_physical_budget_refusal),
        cmocka_unit_test(test_heap_virtual_budget_and_os_refusal),
        cmocka_unit_test(test_heap_refused_growth_falls_back_once),
        cmocka_unit_test(test_heap_bad_free_reported),
        cmocka_unit_test(test_heap_bad_free_of_purged_block),
        cmocka_unit_test(test_heap_corrupt_header_detected),
        cmocka_unit_test(test_heap_asan_poisoning),
        cmocka_unit_test(test_heap_guaranteed_live_bound),
        cmocka_unit_test(test_heap_syscalls_outside_lock),
        cmocka_unit_test(test_heap_lazy_keeps_and_purges),
        cmocka_unit_test(test_heap_lazy_cap_and_slots),
        cmocka_unit_test(test_heap_lazy_expiry),
        cmocka_unit_test(test_heap_lazy_budget_squeeze),
        cmocka_unit_test(test_heap_concurrent_purges),
        cmocka_unit_test(test_heap_concurrent_purges_lazy),
        cmocka_unit_test(test_heap_threads_cross_free),
        cmocka_unit_test(test_heap_reuse_across_threads_at_new_address),
        cmocka_unit_test(test_heap_fork_while_busy),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
