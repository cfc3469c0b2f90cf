/* test_region.c -- the reservation, region pools, accounting and budgets.
 * White-box: includes src/internal.h to see the reservation's layout. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>

/* physical_bytes must never be below what the kernel says is resident. */
static void assert_mincore_ok(rp_pool *p)
{
    rp_stats s = rp_test_stats(p);
    size_t res = rp_resident_bytes(p->base, p->reserve_bytes);
    if (s.physical_bytes < res)
        fail_msg("physical_bytes %zu < resident %zu", s.physical_bytes, res);
}

/* Mappings of the process that lie inside the pool's reservation. */
static int vma_count(rp_pool *p)
{
    FILE *f = fopen("/proc/self/maps", "r");
    assert_non_null(f);
    unsigned long lo, hi;
    int n = 0;
    char line[512];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "%lx-%lx", &lo, &hi) == 2 && lo >= (uintptr_t)p->base &&
            hi <= (uintptr_t)p->base + p->reserve_bytes)
            n++;
    fclose(f);
    return n;
}

static void test_region_acquire_release_basic(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    size_t base_phys = rp_test_stats(p).physical_bytes;

    void *a = rp_region_acquire(p, 1);
    void *b = rp_region_acquire(p, 64 * KiB + 1);
    void *d = rp_region_acquire(p, 4 * MiB);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(d);
    assert_int_equal(rp_region_size(p, a), 64 * KiB);
    assert_int_equal(rp_region_size(p, b), 128 * KiB);
    assert_int_equal(rp_region_size(p, d), 4 * MiB);
    memset(a, 0xa1, 64 * KiB);
    memset(b, 0xb2, 128 * KiB);
    memset(d, 0xd3, 4 * MiB);
    /* Pointer -> region is arithmetic: interior pointers find their head. */
    assert_ptr_equal(rpi_desc_base(p, rpi_desc_lookup(p, (char *)d + 3 * MiB + 5)), d);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.region_in_use_bytes, 64 * KiB + 128 * KiB + 4 * MiB);
    assert_true(s.physical_bytes >= base_phys + s.region_in_use_bytes);
    assert_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);

    rp_region_release(p, a);
    rp_region_release(p, b);
    rp_region_release(p, d);
    s = rp_test_stats(p);
    assert_int_equal(s.region_in_use_bytes, 0);
    assert_int_equal(s.region_clean_bytes, 64 * KiB + 128 * KiB + 4 * MiB);
    assert_int_equal(rp_check(p), 0);
    assert_mincore_ok(p);
    /* Reuse: same class comes back from the pool, virtual does not grow. */
    size_t virt = s.virtual_bytes;
    void *a2 = rp_region_acquire(p, 60 * KiB);
    assert_ptr_equal(a2, a);
    assert_int_equal(rp_test_stats(p).virtual_bytes, virt);
    assert_int_equal(rp_test_stats(p).reuses, 1);
    rp_region_release(p, a2);
    assert_int_equal(log.count, 0);
    /* Bad sizes. */
    errno = 0;
    assert_null(rp_region_acquire(p, 0));
    assert_int_equal(errno, EINVAL);
    assert_null(rp_region_acquire(p, 4 * MiB + 1));
    assert_int_equal(errno, EINVAL);
    rp_pool_destroy(p);
}

static void test_region_vma_count_constant(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    void *r[200];
    for (int i = 0; i < 200; i++) {
        r[i] = rp_region_acquire(p, (size_t)(64 * KiB) << (i % 4));
        assert_non_null(r[i]);
    }
    int after_many = vma_count(p);
    for (int i = 0; i < 200; i += 2)
        rp_region_release(p, r[i]);
    /* Committed parts are contiguous: a handful of mappings, whatever the
     * number of regions (pool, descriptors, bump, heap, regions: committed +
     * reserved rest of each). */
    assert_true(after_many <= 10);
    assert_int_equal(vma_count(p), after_many);
    for (int i = 1; i < 200; i += 2)
        rp_region_release(p, r[i]);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- the seed-004 leak scenario, multi-threaded ---------------------------- */

#define LEAK_THREADS 4
#define LEAK_ROUNDS 3000
#define SLOTS 8

struct leak_ctx {
    rp_pool *p;
    int id;
    size_t max_virtual;   /* highest virtual seen by this thread */
    int errors;
};

static uint64_t holders[1 << 16]; /* granule index -> tag of current holder */

static void *leak_worker(void *arg)
{
    struct leak_ctx *x = arg;
    rp_pool *p = x->p;
    void *held[SLOTS] = {0};
    uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(x->id + 1);
    for (int round = 0; round < LEAK_ROUNDS; round++) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        int s = (int)((seed >> 33) % SLOTS);
        if (held[s]) {
            /* Our tag must still be there: nobody else held it meanwhile. */
            uint64_t tag = ((uint64_t)x->id << 32) | (uint64_t)(uintptr_t)held[s] >> 16;
            size_t g = (size_t)((char *)held[s] - p->rbase) >> p->gshift;
            if (*(uint64_t *)held[s] != tag || holders[g] != tag)
                x->errors++;
            __atomic_store_n(&holders[g], 0, __ATOMIC_RELAXED);
            rp_region_release(p, held[s]);
            held[s] = NULL;
        } else {
            size_t sz = (size_t)(64 * KiB) << ((seed >> 40) % 4);
            void *r = rp_region_acquire(p, sz);
            if (!r)
                continue; /* at the budget: allowed, must not leak */
            uint64_t tag = ((uint64_t)x->id << 32) | (uint64_t)(uintptr_t)r >> 16;
            size_t g = (size_t)((char *)r - p->rbase) >> p->gshift;
            uint64_t none = 0;
            /* Exactly one holder: the slot must be free when we get it. */
            if (!__atomic_compare_exchange_n(&holders[g], &none, tag, false,
                                             __ATOMIC_RELAXED, __ATOMIC_RELAXED))
                x->errors++;
            *(uint64_t *)r = tag;
            memset((char *)r + 4096, x->id, 4096);
            held[s] = r;
        }
        rp_stats st;
        rp_stats_get(p, &st);
        if (st.virtual_bytes > x->max_virtual)
            x->max_virtual = st.virtual_bytes;
    }
    for (int s = 0; s < SLOTS; s++)
        if (held[s]) {
            size_t g = (size_t)((char *)held[s] - p->rbase) >> p->gshift;
            __atomic_store_n(&holders[g], 0, __ATOMIC_RELAXED);
            rp_region_release(p, held[s]);
        }
    return NULL;
}

/* Most address space the workers can ever need at once: every slot of every
 * thread holding a region of each class. */
#define LEAK_PEAK ((size_t)LEAK_THREADS * SLOTS * (64 + 128 + 256 + 512) * KiB)

static void run_leak_scenario(int purge_delay_ms, int purge_thread, size_t budget)
{
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    c.virtual_budget = budget;
    c.purge_delay_ms = (uint32_t)purge_delay_ms;
    c.purge_thread = purge_thread;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    size_t base_phys = rp_test_stats(p).physical_bytes;
    memset(holders, 0, sizeof holders);

    uint64_t acquired = 0;
    for (int round = 0; round < 3; round++) {
        pthread_t t[LEAK_THREADS];
        struct leak_ctx x[LEAK_THREADS];
        for (int i = 0; i < LEAK_THREADS; i++) {
            x[i] = (struct leak_ctx){.p = p, .id = i + 1};
            assert_int_equal(pthread_create(&t[i], NULL, leak_worker, &x[i]), 0);
        }
        for (int i = 0; i < LEAK_THREADS; i++) {
            pthread_join(t[i], NULL);
            assert_int_equal(x[i].errors, 0);
            assert_true(x[i].max_virtual <= c.virtual_budget);
        }
        rp_stats s = rp_test_stats(p);
        assert_true(s.virtual_bytes <= c.virtual_budget);
        /* Address space plateaus: carved regions never exceed the peak
         * concurrent demand, however much was churned through them. */
        size_t carved = p->hwm << p->gshift;
        assert_true(carved <= LEAK_PEAK);
        assert_int_equal(s.region_in_use_bytes, 0);
        assert_int_equal(rp_check(p), 0);
        acquired = s.carves + s.reuses;
    }
    rp_stats s = rp_test_stats(p);
    /* The churn was far larger than the budget: only reuse made it fit. */
    assert_true(acquired * 64 * KiB > 8 * (uint64_t)budget);
    if (budget >= LEAK_PEAK + 8 * MiB)
        assert_int_equal(s.fail_virtual + s.fail_physical + s.fail_other, 0);
    else
        assert_true(s.fail_virtual > 0); /* the tight variant hit the budget */
    rp_purge(p);
    s = rp_test_stats(p);
    /* Physical back to baseline: what remains is metadata (the pool header
     * at creation, plus descriptor pages for the carved address space). */
    assert_int_equal(s.physical_bytes, s.metadata_bytes + s.heap_physical_bytes);
    assert_true(s.physical_bytes - base_phys <= s.metadata_bytes);
    /* Metadata growth: descriptor pages for the carved address space, plus
     * the per-thread shards region users have (they cache released
     * regions): recycled only after an RCU grace period, so each of the 3
     * rounds may have needed fresh ones. */
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t shards = (3 * LEAK_THREADS * sizeof(rp_tstate) + page - 1) / page * page + page;
    assert_true(s.physical_bytes - base_phys <= s.virtual_bytes / 256 + shards);
    assert_int_equal(s.region_dirty_bytes, 0);
    /* ...and the kernel agrees: nothing of the region area is resident. */
    assert_int_equal(rp_resident_bytes(p->rbase, p->hwm << p->gshift), 0);
    assert_mincore_ok(p);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void test_region_leak_scenario_immediate_purge(void **state)
{
    (void)state;
    run_leak_scenario(0, 0, 48 * MiB);
}

static void test_region_leak_scenario_delayed_purge(void **state)
{
    (void)state;
    run_leak_scenario(5, 1, 48 * MiB);
}

static void test_region_leak_scenario_tight_budget(void **state)
{
    (void)state;
    run_leak_scenario(0, 0, 4 * MiB);
}

/* ---- budgets ---------------------------------------------------------------- */

static void exhaust_and_recover(rp_pool *p, size_t region, uint64_t *fail_counter_before,
                                uint64_t (*fail_counter)(rp_pool *))
{
    void *r[4096];
    int n = 0;
    for (; n < 4096; n++) {
        errno = 0;
        r[n] = rp_region_acquire(p, region);
        if (!r[n])
            break;
        memset(r[n], n & 0xff, region);
    }
    assert_true(n > 0 && n < 4096);
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(fail_counter(p), *fail_counter_before + 1);
    rp_stats s = rp_test_stats(p);
    assert_true(s.virtual_bytes <= s.virtual_budget);
    assert_true(s.physical_bytes <= s.physical_budget);
    /* Earlier regions keep their contents. */
    for (int i = 0; i < n; i++) {
        unsigned char *b = r[i];
        assert_true(b[0] == (i & 0xff) && b[region - 1] == (i & 0xff));
    }
    assert_int_equal(rp_check(p), 0);
    rp_region_release(p, r[n / 2]);
    void *again = rp_region_acquire(p, region);
    assert_non_null(again);
    r[n / 2] = again;
    for (int i = 0; i < n; i++)
        rp_region_release(p, r[i]);
    assert_int_equal(rp_check(p), 0);
}

static uint64_t fails_virtual(rp_pool *p) { return rp_test_stats(p).fail_virtual; }
static uint64_t fails_physical(rp_pool *p) { return rp_test_stats(p).fail_physical; }

static void test_region_virtual_budget_exhaustion(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.virtual_budget = 32 * MiB;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    uint64_t before = 0;
    exhaust_and_recover(p, 256 * KiB, &before, fails_virtual);
    rp_pool_destroy(p);
}

static void test_region_physical_budget_exhaustion(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.physical_budget = 24 * MiB;
    c.purge_delay_ms = 60000; /* keep freed regions dirty: the squeeze must purge */
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    uint64_t before = 0;
    exhaust_and_recover(p, 1 * MiB, &before, fails_physical);
    /* Everything is free now but dirty; a different class must still fit by
     * purging the dirty regions first. */
    void *big = rp_region_acquire(p, 4 * MiB);
    assert_non_null(big);
    void *r[64];
    int n = 0;
    while (n < 64 && (r[n] = rp_region_acquire(p, 2 * MiB)))
        n++;
    assert_true(n >= 4);
    assert_true(rp_test_stats(p).physical_bytes <= 24 * MiB);
    for (int i = 0; i < n; i++)
        rp_region_release(p, r[i]);
    rp_region_release(p, big);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_region_split_at_virtual_budget(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.virtual_budget = 12 * MiB;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    /* Fill the budget with 4 MiB regions, free them, then ask for 64 KiB:
     * no new address space is allowed, so a 4 MiB region must be split. */
    void *big[4];
    int n = 0;
    while (n < 4 && (big[n] = rp_region_acquire(p, 4 * MiB)))
        n++;
    assert_true(n >= 2);
    for (int i = 0; i < n; i++)
        rp_region_release(p, big[i]);
    size_t virt = rp_test_stats(p).virtual_bytes;
    void *small[200];
    int m = 0;
    while (m < 200 && (small[m] = rp_region_acquire(p, 64 * KiB))) {
        memset(small[m], m, 64 * KiB);
        m++;
    }
    /* Every byte of the free 4 MiB regions ends up usable as 64 KiB ones
     * (plus whatever room the budget still had for carving). */
    assert_true(m >= n * 64);
    rp_stats s = rp_test_stats(p);
    assert_true(s.splits > 0);
    assert_true(s.virtual_bytes <= c.virtual_budget);
    assert_true(s.virtual_bytes >= virt);
    assert_int_equal(rp_check(p), 0);
    for (int i = 0; i < m; i++) {
        assert_int_equal(((unsigned char *)small[i])[100], (unsigned char)i);
        rp_region_release(p, small[i]);
    }
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- OS fault injection --------------------------------------------------------- */

static void test_region_os_faults(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.purge_delay_ms = 0;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    void *keep = rp_region_acquire(p, 128 * KiB);
    memset(keep, 0x5a, 128 * KiB);
    /* Commit fails for every N up to the number of commits one acquire
     * makes (descriptor table + region): clean ENOMEM, counters exact. */
    for (unsigned long nth = 1; nth <= 2; nth++) {
        rp_stats before = rp_test_stats(p);
        rp_os_fault_inject(RP_OS_COMMIT, nth);
        void *r[8];
        int got = 0;
        for (int i = 0; i < 8; i++) {
            r[i] = rp_region_acquire(p, (size_t)512 * KiB << (i % 2));
            got += r[i] != NULL;
        }
        rp_os_fault_inject(RP_OS_COMMIT, 0);
        rp_stats after = rp_test_stats(p);
        assert_true(got >= 7);
        assert_true(after.fail_os <= before.fail_os + 1);
        assert_int_equal(rp_check(p), 0);
        for (int i = 0; i < 8; i++)
            rp_region_release(p, r[i]);
        assert_int_equal(rp_check(p), 0);
    }
    /* Exactly one commit fails: the acquire that needs new space fails,
     * nothing changes, and a retry succeeds. */
    rp_stats before = rp_test_stats(p);
    rp_os_fault_inject(RP_OS_COMMIT, 1);
    errno = 0;
    void *r = rp_region_acquire(p, 2 * MiB); /* class never used: must carve */
    assert_null(r);
    assert_int_equal(errno, ENOMEM);
    rp_stats mid = rp_test_stats(p);
    assert_int_equal(mid.fail_os, before.fail_os + 1);
    assert_int_equal(mid.virtual_bytes, before.virtual_bytes);
    assert_int_equal(mid.physical_bytes, before.physical_bytes);
    r = rp_region_acquire(p, 2 * MiB);
    assert_non_null(r);
    rp_region_release(p, r);
    /* Purge fails: the region stays resident and counted, still reusable. */
    rp_os_fault_inject(RP_OS_PURGE, 1);
    void *q = rp_region_acquire(p, 64 * KiB);
    memset(q, 1, 64 * KiB);
    rp_region_release(p, q);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.region_dirty_bytes, 64 * KiB);
    assert_int_equal(rp_check(p), 0);
    assert_mincore_ok(p);
    assert_int_equal(rp_purge(p), 64 * KiB);
    assert_int_equal(rp_test_stats(p).region_dirty_bytes, 0);
    assert_int_equal(((unsigned char *)keep)[1000], 0x5a);
    rp_region_release(p, keep);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
    /* Reserve fails: pool creation fails cleanly, and works on retry. */
    rp_os_fault_inject(RP_OS_RESERVE, 1);
    errno = 0;
    assert_null(rp_pool_create(&c));
    assert_int_equal(errno, ENOMEM);
    p = rp_pool_create(&c);
    assert_non_null(p);
    rp_pool_destroy(p);
}

/* Every commit an acquire sequence makes, failed in turn (N = 1..calls). */
static void test_region_fault_every_nth_commit(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    rp_pool *p = rp_pool_create(&c);
    unsigned long c0 = rp_os_calls(RP_OS_COMMIT);
    void *r[24];
    for (int i = 0; i < 24; i++)
        r[i] = rp_region_acquire(p, (size_t)64 * KiB << (i % 6));
    unsigned long calls = rp_os_calls(RP_OS_COMMIT) - c0;
    for (int i = 0; i < 24; i++)
        rp_region_release(p, r[i]);
    rp_pool_destroy(p);
    assert_true(calls >= 6);
    for (unsigned long nth = 1; nth <= calls; nth++) {
        p = rp_pool_create(&c);
        assert_non_null(p);
        rp_os_fault_inject(RP_OS_COMMIT, nth);
        int failed = 0;
        for (int i = 0; i < 24; i++) {
            r[i] = rp_region_acquire(p, (size_t)64 * KiB << (i % 6));
            if (r[i])
                memset(r[i], i, 64);
            else
                failed++;
        }
        rp_os_fault_inject(RP_OS_COMMIT, 0);
        assert_int_equal(failed, 1);
        assert_int_equal(rp_test_stats(p).fail_os, 1);
        assert_int_equal(rp_check(p), 0);
        for (int i = 0; i < 24; i++)
            if (r[i]) {
                assert_int_equal(((unsigned char *)r[i])[63], i);
                rp_region_release(p, r[i]);
            }
        assert_int_equal(rp_check(p), 0);
        rp_pool_destroy(p);
    }
}

/* Every purge a release sequence makes, failed in turn: the failed region
 * stays resident and counted (dirty), the counters stay exact, the region
 * is reused normally, and a later rp_purge releases it. */
static void test_region_fault_every_nth_purge(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    for (unsigned long nth = 1; nth <= 12; nth++) {
        rp_pool *p = rp_pool_create(&c);
        void *r[12];
        for (int i = 0; i < 12; i++) {
            r[i] = rp_region_acquire(p, (size_t)64 * KiB << (i % 3));
            memset(r[i], i, 4096);
        }
        size_t phys_in_use = rp_test_stats(p).physical_bytes;
        rp_os_fault_inject(RP_OS_PURGE, nth);
        for (int i = 0; i < 12; i++)
            rp_region_release(p, r[i]);
        rp_os_fault_inject(RP_OS_PURGE, 0);
        rp_stats s = rp_test_stats(p);
        size_t failed_bytes = (size_t)64 * KiB << ((nth - 1) % 3);
        assert_int_equal(s.fail_os, 1);
        assert_int_equal(s.region_dirty_bytes, failed_bytes);
        assert_int_equal(s.physical_bytes, phys_in_use - (s.region_clean_bytes));
        assert_int_equal(rp_check(p), 0);
        assert_mincore_ok(p);
        /* A later purge releases exactly the region whose purge failed. */
        assert_int_equal(rp_purge(p), failed_bytes);
        assert_int_equal(rp_test_stats(p).region_dirty_bytes, 0);
        assert_int_equal(rp_resident_bytes(r[nth - 1], failed_bytes), 0);
        assert_int_equal(rp_check(p), 0);
        rp_pool_destroy(p);
    }
    /* munmap failing at destroy: nothing crashes, later pools work. */
    rp_pool *p = rp_pool_create(&c);
    rp_os_fault_inject(RP_OS_RELEASE, 1);
    rp_pool_destroy(p);
    rp_os_fault_inject(RP_OS_RELEASE, 0);
    p = rp_pool_create(&c);
    assert_non_null(p);
    void *r = rp_region_acquire(p, 64 * KiB);
    assert_non_null(r);
    rp_region_release(p, r);
    rp_pool_destroy(p);
}

/* ---- purge delay and advice ------------------------------------------------------ */

static void test_region_purge_delay(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.purge_delay_ms = 50;
    c.purge_thread = 1;
    rp_pool *p = rp_pool_create(&c);
    void *r = rp_region_acquire(p, 1 * MiB);
    memset(r, 7, 1 * MiB);
    rp_region_release(p, r);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.region_dirty_bytes, 1 * MiB);
    assert_true(rp_resident_bytes(r, 1 * MiB) == 1 * MiB);
    /* Warm reuse within the delay: same region, no physical charge. */
    size_t phys = s.physical_bytes;
    void *r2 = rp_region_acquire(p, 1 * MiB);
    assert_ptr_equal(r2, r);
    assert_int_equal(rp_test_stats(p).physical_bytes, phys);
    rp_region_release(p, r2);
    /* The background purger returns it after the delay. */
    for (int i = 0; i < 200 && rp_test_stats(p).region_dirty_bytes; i++)
        usleep(5000);
    s = rp_test_stats(p);
    assert_int_equal(s.region_dirty_bytes, 0);
    assert_int_equal(s.physical_bytes, phys - 1 * MiB);
    assert_int_equal(rp_resident_bytes(r, 1 * MiB), 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_region_madv_free_counts_until_escalated(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.purge_advice = RP_PURGE_FREE;
    rp_pool *p = rp_pool_create(&c);
    void *r = rp_region_acquire(p, 1 * MiB);
    memset(r, 7, 1 * MiB);
    size_t phys = rp_test_stats(p).physical_bytes;
    rp_region_release(p, r);
    /* MADV_FREE'd pages may stay resident: they stay counted. */
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.physical_bytes, phys);
    assert_int_equal(s.region_dirty_bytes, 1 * MiB);
    assert_mincore_ok(p);
    /* rp_purge escalates to DONTNEED and releases the count. */
    assert_int_equal(rp_purge(p), 1 * MiB);
    assert_int_equal(rp_test_stats(p).physical_bytes, phys - 1 * MiB);
    assert_int_equal(rp_resident_bytes(r, 1 * MiB), 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- per-thread region cache ------------------------------------------------------ */

static rp_config cache_config(rp_errlog *log, uint32_t delay_ms)
{
    rp_config c = rp_test_config(log);
    c.purge_delay_ms = delay_ms;
    c.purge_thread = 1;
    c.region_cache_bytes = 8 * MiB;
    return c;
}

/* A release parks the region in the thread's cache: the same thread gets it
 * back, the stats show it free and resident (cached), rp_check holds, and a
 * second release of it is reported and changes nothing. */
static void test_region_cache_reuse_and_double_release(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = cache_config(&log, 60000);
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    void *r = rp_region_acquire(p, 1 * MiB);
    assert_non_null(r);
    memset(r, 1, 1 * MiB);
    rp_stats s0 = rp_test_stats(p);
    rp_region_release(p, r);
    rp_stats s = rp_test_stats(p);
    unsigned k = 4; /* 1 MiB with 64 KiB granules */
    assert_int_equal(s.cls[k].cached, 1);
    assert_int_equal(s.cls[k].in_use, 0);
    assert_int_equal(s.cls[k].free_dirty, 1);
    assert_int_equal(s.region_dirty_bytes, 1 * MiB);
    assert_int_equal(s.physical_bytes, s0.physical_bytes);
    assert_int_equal(rp_check(p), 0);
    /* Released twice: reported, nothing changes. */
    rp_region_release(p, r);
    assert_int_equal(log.count, 1);
    assert_int_equal(log.last_code, RP_ERR_NOT_LIVE);
    assert_int_equal(rp_test_stats(p).cls[k].cached, 1);
    assert_int_equal(rp_check(p), 0);
    /* Size query on a cached region: not live. */
    assert_int_equal(rp_region_size(p, r), 0);
    uint64_t reuses = s.cls[k].reuses;
    void *r2 = rp_region_acquire(p, 1 * MiB);
    assert_ptr_equal(r2, r);
    s = rp_test_stats(p);
    assert_int_equal(s.cls[k].cached, 0);
    assert_int_equal(s.cls[k].in_use, 1);
    assert_int_equal(s.cls[k].reuses, reuses + 1);
    assert_int_equal(s.physical_bytes, s0.physical_bytes);
    assert_int_equal(rp_region_size(p, r2), 1 * MiB);
    assert_int_equal(rp_check(p), 0);
    rp_region_release(p, r2);
    /* rp_purge takes back what caches hold too. */
    assert_int_equal(rp_purge(p), 1 * MiB);
    s = rp_test_stats(p);
    assert_int_equal(s.cls[k].cached, 0);
    assert_int_equal(s.region_dirty_bytes, 0);
    assert_int_equal(rp_resident_bytes(r, 1 * MiB), 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 1);
    rp_pool_destroy(p);
}

struct physical_at {
    rp_pool *p;
    size_t base;
};

static bool physical_at_base(void *arg)
{
    struct physical_at *w = arg;
    return rp_test_stats(w->p).physical_bytes == w->base;
}

/* The purger takes back a cached region once the delay has passed, even if
 * its thread never calls rpool again; mincore agrees. */
static void test_region_cache_expires(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = cache_config(&log, 40);
    rp_pool *p = rp_pool_create(&c);
    void *r = rp_region_acquire(p, 2 * MiB);
    memset(r, 1, 2 * MiB);
    /* Baseline: everything but the region (the shard's metadata stays). */
    size_t base = rp_test_stats(p).physical_bytes - 2 * MiB;
    rp_region_release(p, r);
    assert_int_equal(rp_test_stats(p).cls[5].cached, 1);
    struct physical_at w = {p, base};
    int waited = rp_wait_until(physical_at_base, &w);
    /* Not before the delay: taken back between delay and delay + ticks. */
    assert_true(waited >= 30);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.physical_bytes, base);
    assert_int_equal(s.cls[5].cached, 0);
    assert_int_equal(s.region_dirty_bytes, 0);
    assert_int_equal(rp_resident_bytes(r, 2 * MiB), 0);
    assert_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

struct cache_hold {
    rp_pool *p;
    size_t bytes;
    int n;
    void *got[8];
    pthread_barrier_t *stay; /* NULL: exit at once */
};

/* Acquire n regions, touch them, release them into this thread's cache;
 * then, with `stay`, stay alive (cache full) until the caller has worked. */
static void *cache_filler(void *arg)
{
    struct cache_hold *h = arg;
    for (int i = 0; i < h->n; i++) {
        h->got[i] = rp_region_acquire(h->p, h->bytes);
        if (h->got[i]) /* the caller checks got[] (no cmocka asserts off the main thread) */
            memset(h->got[i], 3, h->bytes);
    }
    for (int i = 0; i < h->n; i++)
        rp_region_release(h->p, h->got[i]);
    if (h->stay) {
        pthread_barrier_wait(h->stay); /* filled */
        pthread_barrier_wait(h->stay); /* caller done */
    }
    return NULL;
}

/* Memory parked in another thread's cache never causes a refusal: at the
 * physical budget a purge takes it back; at the virtual budget the region
 * itself is taken back and reused. */
static void test_region_cache_never_blocks_budget(void **state)
{
    (void)state;
    for (int virt = 0; virt < 2; virt++) {
        rp_errlog log = {0};
        rp_config c = cache_config(&log, 60000);
        rp_pool *p = rp_pool_create(&c);
        rp_stats s = rp_test_stats(p);
        /* Room for two 1 MiB regions beyond what exists now, plus slack
         * (less than a region) for the two threads' shard metadata. */
        size_t slack = 256 * KiB;
        if (virt)
            assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, s.virtual_bytes + 2 * MiB + slack), 0);
        else
            assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, s.physical_bytes + 2 * MiB + slack), 0);
        pthread_barrier_t bar;
        pthread_barrier_init(&bar, NULL, 2);
        struct cache_hold h = {p, 1 * MiB, 2, {0}, &bar};
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, cache_filler, &h), 0);
        pthread_barrier_wait(&bar);
        assert_non_null(h.got[0]);
        assert_non_null(h.got[1]);
        /* Both regions sit in the (live) filler's cache. */
        assert_int_equal(rp_test_stats(p).cls[4].cached, 2);
        void *a = rp_region_acquire(p, 1 * MiB);
        void *b = rp_region_acquire(p, 1 * MiB);
        assert_non_null(a);
        assert_non_null(b);
        /* Full now: the next one fails cleanly. */
        errno = 0;
        assert_null(rp_region_acquire(p, 1 * MiB));
        assert_int_equal(errno, ENOMEM);
        /* At the virtual budget the cached regions themselves were taken
         * back and reused (no new address space); never duplicated. */
        if (virt) {
            assert_true(a == h.got[0] || a == h.got[1]);
            assert_true(b == h.got[0] || b == h.got[1]);
        }
        assert_ptr_not_equal(a, b);
        assert_int_equal(rp_test_stats(p).cls[4].cached, 0);
        rp_region_release(p, a);
        rp_region_release(p, b);
        pthread_barrier_wait(&bar);
        pthread_join(t, NULL);
        pthread_barrier_destroy(&bar);
        assert_int_equal(rp_check(p), 0);
        assert_int_equal(log.count, 0);
        rp_pool_destroy(p);
    }
}

/* A thread that exits (or detaches) hands its cached regions back to the
 * shared free stacks, and its cache hits stay counted. */
static void test_region_cache_thread_exit(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = cache_config(&log, 60000);
    rp_pool *p = rp_pool_create(&c);
    struct cache_hold h = {p, 256 * KiB, 3, {0}, NULL};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cache_filler, &h), 0);
    pthread_join(t, NULL);
    for (int i = 0; i < 3; i++)
        assert_non_null(h.got[i]);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.cls[2].cached, 0);
    assert_int_equal(s.cls[2].free_dirty, 3);
    assert_int_equal(s.cls[2].in_use, 0);
    assert_int_equal(rp_check(p), 0);
    /* The main thread reuses them from the shared stack. */
    uint64_t carves = s.cls[2].carves;
    void *r[3];
    for (int i = 0; i < 3; i++)
        r[i] = rp_region_acquire(p, 256 * KiB);
    assert_int_equal(rp_test_stats(p).cls[2].carves, carves);
    for (int i = 0; i < 3; i++)
        rp_region_release(p, r[i]);
    /* Explicit detach does the same for the calling thread. */
    assert_true(rp_test_stats(p).cls[2].cached > 0);
    uint64_t reuses = rp_test_stats(p).cls[2].reuses;
    assert_int_equal(rp_thread_detach(p), 0);
    s = rp_test_stats(p);
    assert_int_equal(s.cls[2].cached, 0);
    assert_int_equal(s.cls[2].reuses, reuses);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

struct cache_churn {
    rp_pool *p;
    int id;
    int rounds;
    int errors;
};

/* Churn with a purger stealing concurrently (2 ms delay): every region
 * carries its holder's tag while held; no region is ever held twice. */
static void *cache_churner(void *arg)
{
    struct cache_churn *w = arg;
    for (int i = 0; i < w->rounds; i++) {
        size_t bytes = (size_t)64 * KiB << (i % 3);
        uint64_t *r = rp_region_acquire(w->p, bytes);
        if (!r) {
            w->errors++;
            continue;
        }
        r[0] = (uint64_t)w->id << 32 | (uint64_t)i;
        r[bytes / 8 - 1] = r[0];
        if (i % 7 == 0)
            sched_yield();
        if (r[0] != ((uint64_t)w->id << 32 | (uint64_t)i) || r[bytes / 8 - 1] != r[0])
            w->errors++; /* someone else holds it too */
        rp_region_release(w->p, r);
    }
    return NULL;
}

static void test_region_cache_concurrent_steal(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = cache_config(&log, 2);
    rp_pool *p = rp_pool_create(&c);
    enum { T = 4 };
    pthread_t t[T];
    struct cache_churn w[T];
    for (int i = 0; i < T; i++) {
        w[i] = (struct cache_churn){p, i + 1, 20000, 0};
        assert_int_equal(pthread_create(&t[i], NULL, cache_churner, &w[i]), 0);
    }
    /* Meanwhile: purges and stats walks from this thread. */
    for (int i = 0; i < 200; i++) {
        if (i % 3 == 0)
            rp_purge(p);
        rp_test_stats(p);
        usleep(500);
    }
    for (int i = 0; i < T; i++) {
        pthread_join(t[i], NULL);
        assert_int_equal(w[i].errors, 0);
    }
    assert_int_equal(rp_check(p), 0);
    rp_purge(p);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.region_in_use_bytes, 0);
    assert_int_equal(s.region_dirty_bytes, 0);
    assert_mincore_ok(p);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* ---- bad release --------------------------------------------------------------- */

static void test_region_bad_release(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    rp_pool *p = rp_pool_create(&c);
    rp_pool *q = rp_pool_create(&c);
    void *r = rp_region_acquire(p, 256 * KiB);
    void *rq = rp_region_acquire(q, 64 * KiB);
    int stack_var;
    rp_stats before = rp_test_stats(p);

    rp_region_release(p, &stack_var);
    assert_int_equal(log.last_code, RP_ERR_FOREIGN);
    assert_ptr_equal(log.last_ptr, &stack_var);
    assert_non_null(strstr(log.last_msg, "not a region"));
    rp_region_release(p, rq); /* another pool's region */
    assert_int_equal(log.last_code, RP_ERR_FOREIGN);
    rp_region_release(p, (char *)r + 64 * KiB);
    assert_int_equal(log.last_code, RP_ERR_INTERIOR);
    rp_region_release(p, (char *)r + 16);
    assert_int_equal(log.last_code, RP_ERR_INTERIOR);
    assert_int_equal(log.count, 4);
    /* Nothing changed by the bad calls. */
    rp_stats mid = rp_test_stats(p);
    assert_int_equal(mid.region_in_use_bytes, before.region_in_use_bytes);
    assert_int_equal(mid.physical_bytes, before.physical_bytes);
    assert_int_equal(mid.errors, 4);

    rp_region_release(p, r);
    assert_int_equal(log.count, 4);
    rp_region_release(p, r); /* double release */
    assert_int_equal(log.last_code, RP_ERR_NOT_LIVE);
    assert_int_equal(log.count, 5);
    /* Never-acquired region base inside the carved area: a free region. */
    assert_int_equal(rp_region_size(p, r), 0);
    rp_region_release(p, NULL); /* ignored, not an error */
    assert_int_equal(log.count, 5);
    assert_int_equal(rp_check(p), 0);
    rp_region_release(q, rq);
    assert_int_equal(rp_check(q), 0);
    rp_pool_destroy(q);
    rp_pool_destroy(p);
}

struct dbl {
    rp_pool *p;
    void *r;
    pthread_barrier_t *bar;
};

static void *dbl_release(void *arg)
{
    struct dbl *d = arg;
    pthread_barrier_wait(d->bar);
    rp_region_release(d->p, d->r);
    return NULL;
}

static void test_region_concurrent_double_release_one_wins(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    rp_pool *p = rp_pool_create(&c);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, 2);
    for (int round = 0; round < 200; round++) {
        struct dbl d = {p, rp_region_acquire(p, 64 * KiB), &bar};
        int before = __atomic_load_n(&log.count, __ATOMIC_RELAXED);
        pthread_t t;
        pthread_create(&t, NULL, dbl_release, &d);
        dbl_release(&d);
        pthread_join(t, NULL);
        /* Two racing releases of one region: exactly one is reported. */
        if (log.count != before + 1 || log.last_code != RP_ERR_NOT_LIVE)
            fail_msg("round %d: %d reports, last code %d: %s", round, log.count - before,
                     (int)log.last_code, log.last_msg);
    }
    pthread_barrier_destroy(&bar);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(rp_test_stats(p).region_clean_bytes, 64 * KiB);
    rp_pool_destroy(p);
}

static void test_region_strict_mode_aborts(void **state)
{
    (void)state;
    pid_t pid = fork();
    if (pid == 0) {
        rp_config c = rp_test_config(NULL);
        c.strict = 1;
        rp_pool *p = rp_pool_create(&c);
        int x;
        fclose(stderr);
        rp_region_release(p, &x);
        _exit(0); /* not reached in strict mode */
    }
    int st;
    waitpid(pid, &st, 0);
    assert_true(WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT);
}

static void test_region_pools_independent(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.virtual_budget = 16 * MiB;
    rp_pool *a = rp_pool_create(&c);
    rp_pool *b = rp_pool_create(&c);
    void *ra[64];
    int n = 0;
    while (n < 64 && (ra[n] = rp_region_acquire(a, 1 * MiB)))
        n++;
    /* a is at its budget; b is untouched and fully usable. */
    assert_null(rp_region_acquire(a, 1 * MiB));
    void *rb = rp_region_acquire(b, 1 * MiB);
    assert_non_null(rb);
    assert_int_equal(rp_test_stats(b).region_in_use_bytes, 1 * MiB);
    rp_region_release(b, rb);
    for (int i = 0; i < n; i++)
        rp_region_release(a, ra[i]);
    rp_pool_destroy(a);
    /* b still works after a is gone. */
    rb = rp_region_acquire(b, 64 * KiB);
    assert_non_null(rb);
    rp_region_release(b, rb);
    assert_int_equal(rp_check(b), 0);
    rp_pool_destroy(b);
}

static void test_region_budget_set_runtime(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.purge_delay_ms = 60000;
    rp_pool *p = rp_pool_create(&c);
    void *r[8];
    for (int i = 0; i < 8; i++) {
        r[i] = rp_region_acquire(p, 1 * MiB);
        memset(r[i], 1, 1 * MiB);
    }
    for (int i = 0; i < 8; i++)
        rp_region_release(p, r[i]);
    size_t phys = rp_test_stats(p).physical_bytes;
    /* Lowering the physical budget purges free regions to meet it. */
    assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, phys - 4 * MiB), 0);
    assert_int_equal(rp_budget_get(p, RP_BUDGET_PHYSICAL), phys - 4 * MiB);
    assert_true(rp_test_stats(p).physical_bytes <= phys - 4 * MiB);
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, 0), -EINVAL);
    assert_int_equal(rp_budget_set(p, (rp_budget_kind)7, MiB), -EINVAL);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

struct marks {
    int up, down;
    size_t last;
};

static void on_mark(void *opaque, rp_pool *p, size_t phys, int above)
{
    (void)p;
    struct marks *m = opaque;
    if (above)
        m->up++;
    else
        m->down++;
    m->last = phys;
}

static void test_region_soft_watermark_callback(void **state)
{
    (void)state;
    struct marks m = {0, 0, 0};
    rp_config c = rp_test_config(NULL);
    c.physical_soft_limit = 8 * MiB;
    c.watermark_hook = on_mark;
    c.watermark_opaque = &m;
    rp_pool *p = rp_pool_create(&c);
    void *r[4];
    for (int i = 0; i < 4; i++)
        r[i] = rp_region_acquire(p, 4 * MiB);
    /* Crossed upwards exactly once, reporting a value above the limit. */
    assert_int_equal(m.up, 1);
    assert_int_equal(m.down, 0);
    assert_true(m.last > 8 * MiB);
    for (int i = 0; i < 4; i++)
        rp_region_release(p, r[i]);
    /* Purged at release (delay 0): back below, reported once. */
    assert_int_equal(m.down, 1);
    assert_true(m.last <= 8 * MiB);
    rp_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_region_acquire_release_basic),
        cmocka_unit_test(test_region_vma_count_constant),
        cmocka_unit_test(test_region_leak_scenario_immediate_purge),
        cmocka_unit_test(test_region_leak_scenario_delayed_purge),
        cmocka_unit_test(test_region_leak_scenario_tight_budget),
        cmocka_unit_test(test_region_virtual_budget_exhaustion),
        cmocka_unit_test(test_region_physical_budget_exhaustion),
        cmocka_unit_test(test_region_split_at_virtual_budget),
        cmocka_unit_test(test_region_os_faults),
        cmocka_unit_test(test_region_fault_every_nth_commit),
        cmocka_unit_test(test_region_fault_every_nth_purge),
        cmocka_unit_test(test_region_purge_delay),
        cmocka_unit_test(test_region_cache_reuse_and_double_release),
        cmocka_unit_test(test_region_cache_expires),
        cmocka_unit_test(test_region_cache_never_blocks_budget),
        cmocka_unit_test(test_region_cache_thread_exit),
        cmocka_unit_test(test_region_cache_concurrent_steal),
        cmocka_unit_test(test_region_madv_free_counts_until_escalated),
        cmocka_unit_test(test_region_bad_release),
        cmocka_unit_test(test_region_concurrent_double_release_one_wins),
        cmocka_unit_test(test_region_strict_mode_aborts),
        cmocka_unit_test(test_region_pools_independent),
        cmocka_unit_test(test_region_budget_set_runtime),
        cmocka_unit_test(test_region_soft_watermark_callback),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
