/* test_arena.c -- thread arenas, explicit arenas, mark/rewind/reset, budgets,
 * hand-off between threads, sanitizer poisoning, and the generic allocator
 * interface. White-box: includes src/internal.h to look at region
 * descriptors and the reservation's layout. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <sys/wait.h>
#include <time.h>

/* Fewer threads and request cycles under the sanitizers. */
#if RP_TSAN
#define SCALE_THREADS 1000
#define SCALE_CYCLES 200000
#elif RP_ASAN
#define SCALE_THREADS 10000
#define SCALE_CYCLES 500000
#else
#define SCALE_THREADS 10000
#define SCALE_CYCLES 1000000
#endif

/* TSan suppressions: tests/helpers/tsan_supp.c (linked into every test). */

static rp_pool *mkpool(rp_errlog *log)
{
    rp_config c = rp_test_config(log);
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    return p;
}

/* xorshift64*: deterministic sizes. */
static uint64_t rnd(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545f4914f6cdd1dull;
}

static void fill(void *p, size_t n, unsigned char v)
{
    memset(p, v, n);
}

static void assert_filled(const void *p, size_t n, unsigned char v)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        if (c[i] != v)
            fail_msg("byte %zu of %p is %#x, expected %#x", i, p, c[i], v);
}

/* ---- alignment ----------------------------------------------------------- */

struct rec {
    void *p;
    size_t n;
    unsigned char v;
};

static void align_sweep(rp_pool *p, rp_arena *a, struct rec *recs, int *nrec)
{
    size_t rmax = p->cfg.region_max_bytes, page = p->page;
    for (size_t align = 1; align <= rmax; align <<= 1) {
        /* Any region base is page aligned, so these always fit a region. */
        size_t most = rmax - (align > page ? align - page : 0);
        size_t sizes[] = {1, 3, 100, align < most ? align : most};
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            void *q = rp_arena_alloc(a, sizes[i], align);
            if (!q)
                fail_msg("align %zu size %zu: NULL (errno %d)", align, sizes[i], errno);
            assert_int_equal((uintptr_t)q % align, 0);
            unsigned char v = (unsigned char)(*nrec * 7 + 1);
            fill(q, sizes[i], v);
            recs[*nrec] = (struct rec){q, sizes[i], v};
            (*nrec)++;
        }
    }
    /* align 0 means 16. */
    for (int i = 0; i < 8; i++) {
        void *q = rp_arena_alloc(a, 1 + (size_t)i, 0);
        assert_non_null(q);
        assert_int_equal((uintptr_t)q % 16, 0);
    }
}

static void test_arena_alignment_every_power_of_two(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    static struct rec recs[2 * 4 * 64];
    int nrec = 0;
    rp_arena *t = rp_arena_thread(p);
    rp_arena *e = rp_arena_create(p, 0);
    assert_non_null(t);
    assert_non_null(e);
    align_sweep(p, t, recs, &nrec);
    align_sweep(p, e, recs, &nrec);
    /* Nothing overlapped: every block still holds its own pattern. */
    for (int i = 0; i < nrec; i++)
        assert_filled(recs[i].p, recs[i].n, recs[i].v);
    assert_int_equal(rp_check(p), 0);

    /* Bad alignments: EINVAL, counted, nothing changes. */
    uint64_t fails = rp_test_stats(p).fail_other;
    size_t bad[] = {3, 24, 48, 4097, p->cfg.region_max_bytes * 2, (size_t)1 << 63};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        assert_null(rp_arena_alloc(t, 8, bad[i]));
        assert_int_equal(errno, EINVAL);
        errno = 0;
        assert_null(rp_arena_alloc(e, 8, bad[i]));
        assert_int_equal(errno, EINVAL);
    }
    assert_int_equal(rp_test_stats(p).fail_other, fails + 2 * 6);
    /* Too large for any region, however aligned: ENOMEM. */
    errno = 0;
    assert_null(rp_arena_alloc(e, p->cfg.region_max_bytes + 1, 16));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_arena_alloc(e, p->cfg.region_max_bytes, p->cfg.region_max_bytes));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_arena_alloc(e, SIZE_MAX, 1));
    assert_int_equal(errno, ENOMEM);
    for (int i = 0; i < nrec; i++)
        assert_filled(recs[i].p, recs[i].n, recs[i].v);
    assert_int_equal(log.count, 0);
    rp_arena_destroy(e);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_arena_size_zero_unique(void **state)
{
    (void)state;
    rp_pool *p = mkpool(NULL);
    rp_arena *a = rp_arena_create(p, 0);
    enum { N = 5000 };
    static uintptr_t seen[N];
    for (int i = 0; i < N; i++) {
        void *q = rp_arena_alloc(a, 0, i % 3 ? 1 : 16);
        assert_non_null(q);
        seen[i] = (uintptr_t)q;
        for (int j = 0; j < i; j += 97)
            assert_true(seen[j] != seen[i]);
        if (i > 0)
            assert_true(seen[i] > seen[i - 1]); /* same chunk: strictly rising */
    }
    rp_arena_destroy(a);
    rp_pool_destroy(p);
}

/* ---- mark / rewind ---------------------------------------------------------- */

static void test_arena_mark_rewind_nesting(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_arena *arenas[2] = {rp_arena_thread(p), rp_arena_create(p, 0)};
    for (int k = 0; k < 2; k++) {
        rp_arena *a = arenas[k];
        size_t in_use0 = rp_test_stats(p).region_in_use_bytes;
        rp_arena_pos outer = rp_arena_mark(a);
        /* Level 1: 200 blocks of 1 KiB, spilling into a second chunk. */
        static char *l1[200];
        for (int i = 0; i < 200; i++) {
            l1[i] = rp_arena_alloc(a, 1024, 8);
            assert_non_null(l1[i]);
            fill(l1[i], 1024, (unsigned char)i);
        }
        size_t in_use1 = rp_test_stats(p).region_in_use_bytes;
        assert_true(in_use1 > in_use0);
        rp_arena_pos inner = rp_arena_mark(a);
        /* Level 2: small blocks, new chunks and a dedicated large block. */
        char *first2 = rp_arena_alloc(a, 4000, 16);
        assert_non_null(first2);
        fill(first2, 4000, 0xee);
        for (int i = 0; i < 300; i++) {
            char *q = rp_arena_alloc(a, 2000, 16);
            assert_non_null(q);
            fill(q, 2000, 0xdd);
        }
        char *big = rp_arena_alloc(a, 3 * MiB, 64);
        assert_non_null(big);
        fill(big, 3 * MiB, 0xcc);
        rp_arena_pos deeper = rp_arena_mark(a);
        /* Level 3 inside level 2. */
        char *first3 = rp_arena_alloc(a, 512, 16);
        assert_non_null(first3);
        fill(first3, 512, 0xbb);
        rp_arena_rewind(a, deeper);
        assert_ptr_equal(rp_arena_alloc(a, 512, 16), first3); /* reused */
        assert_true(rp_test_stats(p).region_in_use_bytes > in_use1);

        rp_arena_rewind(a, inner);
        /* Below the mark: intact. Above it: the same bytes come back, and
         * the chunks acquired since went back to the pool. */
        for (int i = 0; i < 200; i++)
            assert_filled(l1[i], 1024, (unsigned char)i);
        assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use1);
        assert_ptr_equal(rp_arena_alloc(a, 4000, 16), first2);
        assert_int_equal(rp_check(p), 0);

        /* A position rewound past is misuse: reported and ignored. */
        int before = log.count;
        rp_arena_pos now = rp_arena_mark(a);
        rp_arena_rewind(a, deeper);
        assert_int_equal(log.count, before + 1);
        assert_int_equal(log.last_code, RP_ERR_MISUSE);
        rp_arena_pos after = rp_arena_mark(a);
        assert_ptr_equal(after.chunk, now.chunk);
        assert_int_equal(after.offset, now.offset);

        rp_arena_rewind(a, outer);
        assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use0);
        char *again = rp_arena_alloc(a, 1024, 8);
        assert_non_null(again);
        if (a == arenas[1])
            assert_ptr_equal(again, l1[0]); /* explicit: first chunk kept */
        assert_int_equal(rp_check(p), 0);
    }
    assert_int_equal(log.count, 2);
    rp_arena_destroy(arenas[1]);
    rp_pool_destroy(p);
}

static void test_arena_rewind_rejects_foreign_and_stale_positions(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_arena *a = rp_arena_create(p, 0);
    rp_arena *b = rp_arena_create(p, 0);
    char *x = rp_arena_alloc(a, 100, 16);
    fill(x, 100, 0x5a);
    rp_arena_pos pa = rp_arena_mark(a);
    rp_arena_pos pb = rp_arena_mark(b);

    /* b's position in a; a NULL position in an explicit arena; an offset
     * beyond the arena's use. Each is reported and ignored. */
    rp_arena_rewind(a, pb);
    assert_int_equal(log.count, 1);
    assert_int_equal(log.last_code, RP_ERR_MISUSE);
    rp_arena_rewind(a, (rp_arena_pos){NULL, 0});
    assert_int_equal(log.count, 2);
    rp_arena_pos future = pa;
    future.offset += 4096;
    rp_arena_rewind(a, future);
    assert_int_equal(log.count, 3);
    rp_arena_pos now = rp_arena_mark(a);
    assert_ptr_equal(now.chunk, pa.chunk);
    assert_int_equal(now.offset, pa.offset);
    assert_filled(x, 100, 0x5a);

    /* A chunk released and acquired again by the same arena: its region
     * generation changed, so the old position is recognized as stale. */
    rp_arena_pos m = rp_arena_mark(a);
    void *big = rp_arena_alloc(a, 1 * MiB, 16);
    assert_non_null(big);
    rp_arena_pos stale = rp_arena_mark(a);
    rp_arena_rewind(a, m);
    void *big2 = rp_arena_alloc(a, 1 * MiB, 16);
    assert_ptr_equal(big2, big); /* same region back from the LIFO pool */
    assert_ptr_equal(rp_arena_mark(a).chunk, stale.chunk);
    rp_arena_rewind(a, stale);
    assert_int_equal(log.count, 4);
    assert_int_equal(log.last_code, RP_ERR_MISUSE);
    assert_true(strstr(log.last_msg, "recycled") != NULL);
    rp_arena_rewind(a, m);
    assert_int_equal(log.count, 4);
    assert_int_equal(rp_check(p), 0);
    rp_arena_destroy(a);
    rp_arena_destroy(b);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- reset ------------------------------------------------------------------- */

/* One request: a few dozen small objects, sometimes enough to need a second
 * and third chunk, rarely a block larger than any chunk. */
static void request(rp_arena *a, uint64_t *seed, uint64_t cycle)
{
    unsigned n = 1 + (unsigned)(rnd(seed) % 48);
    for (unsigned i = 0; i < n; i++) {
        size_t sz = 1 + (size_t)(rnd(seed) % 700);
        char *q = rp_arena_alloc(a, sz, i % 5 ? 16 : 64);
        assert_true(q != NULL);
        q[0] = (char)i;
        q[sz - 1] = (char)i;
    }
    if (cycle % 16 == 0) {
        char *q = rp_arena_alloc(a, 150 * KiB, 16);
        assert_true(q != NULL);
        q[150 * KiB - 1] = 1;
    }
    if (cycle % 1024 == 0) {
        char *q = rp_arena_alloc(a, 2 * MiB + 1, 4096);
        assert_true(q != NULL);
        q[2 * MiB] = 1;
    }
}

static void test_arena_reset_keeps_virtual_flat(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    c.purge_delay_ms = 1000; /* released chunks stay warm between requests */
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    rp_arena *t = rp_arena_thread(p);
    rp_arena *e = rp_arena_create(p, 0);
    uint64_t seed = 0x9e3779b97f4a7c15ull;
    const uint64_t warm = 5000, cycles = SCALE_CYCLES;
    size_t virt = 0, phys_after_reset = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (uint64_t i = 0; i < cycles; i++) {
        request(t, &seed, i);
        request(e, &seed, i + 7);
        rp_arena_reset(t);
        rp_arena_reset(e);
        if (i + 1 == warm) {
            rp_stats s = rp_test_stats(p);
            virt = s.virtual_bytes;
            phys_after_reset = s.region_in_use_bytes;
        } else if (i + 1 > warm && (i + 1) % 100000 == 0) {
            rp_stats s = rp_test_stats(p);
            assert_int_equal(s.virtual_bytes, virt);
            /* After a reset each arena holds exactly its first chunk. */
            assert_int_equal(s.region_in_use_bytes, phys_after_reset);
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.virtual_bytes, virt);
    assert_int_equal(s.region_in_use_bytes, 2 * 64 * KiB);
    assert_int_equal(phys_after_reset, 2 * 64 * KiB);
    assert_int_equal(s.arena_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    print_message("  %lu request cycles x 2 arenas: %.2f s, virtual %zu bytes flat\n",
                  (unsigned long)cycles,
                  (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
                  virt);
    rp_arena_destroy(e);
    rp_pool_destroy(p);
}

/* Request arenas created and destroyed per request reuse the same regions. */
static void test_arena_create_destroy_keeps_virtual_flat(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    c.purge_delay_ms = 1000;
    rp_pool *p = rp_pool_create(&c);
    uint64_t seed = 42;
    size_t virt = 0;
    for (uint64_t i = 0; i < SCALE_CYCLES / 10; i++) {
        rp_arena *a = rp_arena_create(p, 0);
        assert_true(a != NULL);
        request(a, &seed, i);
        rp_arena_destroy(a);
        if (i == 2000)
            virt = rp_test_stats(p).virtual_bytes;
    }
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.virtual_bytes, virt);
    assert_int_equal(s.region_in_use_bytes, 0);
    assert_int_equal(s.arena_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- thread arenas ----------------------------------------------------------- */

struct thr_arg {
    rp_pool *p;
    int id;
    int ok;
};

static void *thread_user(void *arg)
{
    struct thr_arg *t = arg;
    rp_arena *a = rp_arena_thread(t->p);
    if (!a)
        return NULL;
    /* A first chunk, a second one, and a dedicated region. */
    char *blocks[40];
    for (int i = 0; i < 40; i++) {
        blocks[i] = rp_arena_alloc(a, 2000, 16);
        if (!blocks[i])
            return NULL;
        memset(blocks[i], t->id & 0xff, 2000);
    }
    rp_arena_pos m = rp_arena_mark(a);
    char *big = rp_arena_alloc(a, 300 * KiB, 16);
    if (!big)
        return NULL;
    memset(big, 1, 300 * KiB);
    rp_arena_rewind(a, m);
    big = rp_arena_alloc(a, 100 * KiB, 16);
    if (!big)
        return NULL;
    memset(big, 2, 100 * KiB);
    for (int i = 0; i < 40; i++)
        for (int j = 0; j < 2000; j += 250)
            if ((unsigned char)blocks[i][j] != (t->id & 0xff))
                return NULL;
    t->ok = 1;
    return NULL; /* the thread arena goes back at thread exit */
}

static void test_arena_thread_arenas_return_memory_at_exit(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_purge(p);
    rp_stats base = rp_test_stats(p);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    enum { BATCH = 50 };
    static struct thr_arg args[BATCH];
    pthread_t th[BATCH];
    for (int done = 0; done < SCALE_THREADS; done += BATCH) {
        for (int i = 0; i < BATCH; i++) {
            args[i] = (struct thr_arg){p, done + i, 0};
            assert_int_equal(pthread_create(&th[i], NULL, thread_user, &args[i]), 0);
        }
        for (int i = 0; i < BATCH; i++) {
            assert_int_equal(pthread_join(th[i], NULL), 0);
            assert_int_equal(args[i].ok, 1);
        }
    }
    /* Shards leave the registry at exit and are recycled after an RCU grace
     * period: wait for the count to drain. */
    rp_stats s = rp_test_stats(p);
    for (int i = 0; i < 500 && s.threads != 0; i++) {
        struct timespec ms = {0, 10 * 1000 * 1000};
        nanosleep(&ms, NULL);
        s = rp_test_stats(p);
    }
    assert_int_equal(s.threads, 0);
    rp_purge(p);
    s = rp_test_stats(p);
    assert_int_equal(s.region_in_use_bytes, 0);
    assert_int_equal(s.region_dirty_bytes, 0);
    assert_int_equal(s.arena_bytes, 0);
    /* Physical is back at the baseline; only metadata (descriptor table,
     * shards) may have grown. */
    assert_int_equal(s.physical_bytes - s.metadata_bytes,
                     base.physical_bytes - base.metadata_bytes);
    assert_true(s.metadata_bytes - base.metadata_bytes < 8 * MiB);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    print_message("  %d threads: %.2f s, metadata grew by %zu bytes\n", SCALE_THREADS,
                  (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
                  s.metadata_bytes - base.metadata_bytes);
    /* And the kernel agrees: nothing of the region area is resident. */
    size_t carved = (size_t)rp_load_relaxed_u64(&p->hwm) << p->gshift;
    assert_int_equal(rp_resident_bytes(p->rbase, carved), 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* Stats read thread arenas while threads start and exit one after another
 * (their shards are recycled after a grace period and zeroed for the next
 * thread): the reads must stay exact-or-in-flight and, under TSan, silent. */
struct churn {
    rp_pool *p;
    int stop;      /* atomic */
    int bad;       /* atomic */
};

static void *churn_reader(void *arg)
{
    struct churn *c = arg;
    while (!__atomic_load_n(&c->stop, __ATOMIC_RELAXED)) {
        rp_stats s;
        if (rp_stats_get(c->p, &s) != 0 || s.arena_bytes > 64 * MiB)
            __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void *churn_worker(void *arg)
{
    struct churn *c = arg;
    rp_arena *a = rp_arena_thread(c->p);
    for (int i = 0; a && i < 100; i++) {
        char *q = rp_arena_alloc(a, 700, 16);
        if (!q) {
            __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
            break;
        }
        q[699] = 1;
    }
    return NULL;
}

static void test_arena_stats_read_while_threads_come_and_go(void **state)
{
    (void)state;
    rp_errlog log = {0};
    struct churn c = {.p = mkpool(&log)};
    pthread_t reader;
    assert_int_equal(pthread_create(&reader, NULL, churn_reader, &c), 0);
    for (int i = 0; i < 300; i++) {
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, churn_worker, &c), 0);
        assert_int_equal(pthread_join(t, NULL), 0);
        struct timespec ms = {0, 1000 * 1000}; /* let grace periods pass */
        nanosleep(&ms, NULL);
    }
    __atomic_store_n(&c.stop, 1, __ATOMIC_RELAXED);
    assert_int_equal(pthread_join(reader, NULL), 0);
    assert_int_equal(c.bad, 0);
    rp_stats s = rp_test_stats(c.p);
    assert_int_equal(s.arena_bytes, 0);
    assert_int_equal(s.region_in_use_bytes, 0);
    assert_int_equal(rp_check(c.p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(c.p);
}

static void test_arena_thread_arena_is_per_thread_and_lazy(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_pool *q = mkpool(&log);
    size_t in_use = rp_test_stats(p).region_in_use_bytes;
    rp_arena *a = rp_arena_thread(p);
    assert_non_null(a);
    assert_ptr_equal(rp_arena_thread(p), a); /* same arena every call */
    assert_true(rp_arena_thread(q) != a);    /* one per pool */
    /* No chunk until the first allocation. */
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use);
    rp_arena_pos empty = rp_arena_mark(a);
    assert_null(empty.chunk);
    assert_non_null(rp_arena_alloc(a, 10, 8));
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use + 64 * KiB);
    /* Rewinding to the empty position returns every chunk. */
    rp_arena_rewind(a, empty);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use);
    assert_non_null(rp_arena_alloc(a, 10, 8));
    /* Destroying a thread arena is misuse, reported and ignored. */
    rp_arena_destroy(a);
    assert_int_equal(log.count, 1);
    assert_int_equal(log.last_code, RP_ERR_MISUSE);
    char *x = rp_arena_alloc(a, 64, 16);
    assert_non_null(x);
    fill(x, 64, 1);
    /* rp_thread_detach returns the arena's chunks; the next call makes a
     * fresh arena. */
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use);
    assert_int_equal(rp_test_stats(p).arena_bytes, 0);
    rp_arena *b = rp_arena_thread(p);
    assert_non_null(b);
    assert_non_null(rp_arena_alloc(b, 64, 16));
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 1);
    rp_pool_destroy(q);
    rp_pool_destroy(p); /* returns the live thread arena too */
}

/* ---- budgets and refusals ----------------------------------------------------- */

static void test_arena_budget_enomem_then_usable(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    const size_t budget = 100 * KiB;
    rp_arena *a = rp_arena_create(p, budget);
    assert_non_null(a);
    for (int round = 0; round < 3; round++) {
        uint64_t fails = rp_test_stats(p).fail_other;
        static char *blk[200];
        size_t total = 0;
        int n = 0;
        for (;;) {
            errno = 0;
            char *q = rp_arena_alloc(a, 1000, 8);
            if (!q)
                break;
            fill(q, 1000, (unsigned char)(n + round));
            blk[n++] = q;
            total += 1000;
            assert_true(n < 200);
        }
        assert_int_equal(errno, ENOMEM);
        assert_int_equal(rp_test_stats(p).fail_other, fails + 1);
        /* Bytes handed out never pass the budget, and stop within one
         * request of it (1000-byte blocks with 8-byte alignment need no
         * padding; unused chunk tails do not count). */
        assert_true(total <= budget);
        assert_true(total > budget - 1000);
        /* Still usable: what is left of the budget can be had, exactly. */
        size_t left = budget - total;
        char *tail = rp_arena_alloc(a, left, 1);
        assert_non_null(tail);
        fill(tail, left, 0x77);
        errno = 0;
        assert_null(rp_arena_alloc(a, 1, 1));
        assert_int_equal(errno, ENOMEM);
        /* Large requests are refused by the budget before any region is
         * taken. */
        size_t in_use = rp_test_stats(p).region_in_use_bytes;
        assert_null(rp_arena_alloc(a, 1 * MiB, 16));
        assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use);
        for (int i = 0; i < n; i++)
            assert_filled(blk[i], 1000, (unsigned char)(i + round));
        /* Rewinding to where it is changes nothing. */
        rp_arena_pos m = rp_arena_mark(a);
        rp_arena_rewind(a, m);
        assert_null(rp_arena_alloc(a, 1, 1));
        assert_int_equal(rp_check(p), 0);
        /* Reset restores the whole budget (checked by the next round). */
        rp_arena_reset(a);
    }
    /* A mark before a block, rewound, makes exactly its bytes available. */
    assert_non_null(rp_arena_alloc(a, budget - 4096, 16));
    rp_arena_pos m = rp_arena_mark(a);
    assert_non_null(rp_arena_alloc(a, 4096, 16));
    assert_null(rp_arena_alloc(a, 1, 1));
    rp_arena_rewind(a, m);
    assert_non_null(rp_arena_alloc(a, 4096, 16));
    assert_int_equal(log.count, 0);
    rp_arena_destroy(a);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_arena_pool_refusal_leaves_arena_usable(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_arena *arenas[2] = {rp_arena_create(p, 0), rp_arena_thread(p)};
    for (int k = 0; k < 2; k++) {
        rp_arena *a = arenas[k];
        char *x = rp_arena_alloc(a, 1000, 16);
        assert_non_null(x);
        fill(x, 1000, 0x42);
        rp_arena_pos m = rp_arena_mark(a);
        rp_stats s = rp_test_stats(p);
        /* No more physical memory for anyone. */
        assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, s.physical_bytes), 0);
        errno = 0;
        assert_null(rp_arena_alloc(a, 200 * KiB, 16)); /* needs a new region */
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(rp_arena_alloc(a, 65000, 16)); /* needs the next chunk */
        assert_int_equal(errno, ENOMEM);
        rp_stats s2 = rp_test_stats(p);
        assert_true(s2.fail_physical >= s.fail_physical + 2);
        assert_int_equal(s2.region_in_use_bytes, s.region_in_use_bytes);
        /* The arena is untouched and still serves what fits its chunk. */
        rp_arena_pos m2 = rp_arena_mark(a);
        assert_ptr_equal(m2.chunk, m.chunk);
        assert_int_equal(m2.offset, m.offset);
        char *y = rp_arena_alloc(a, 1000, 16);
        assert_non_null(y);
        assert_ptr_equal(y, x + 1008); /* bumped right after x */
        assert_filled(x, 1000, 0x42);
        assert_int_equal(rp_check(p), 0);
        /* Memory again: the same request succeeds. */
        assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, 1 * GiB), 0);
        char *big = rp_arena_alloc(a, 200 * KiB, 16);
        assert_non_null(big);
        fill(big, 200 * KiB, 3);
        assert_int_equal(rp_check(p), 0);
    }
    assert_int_equal(log.count, 0);
    rp_arena_destroy(arenas[0]);
    rp_pool_destroy(p);
}

/* ---- hand-off ----------------------------------------------------------------- */

/* An explicit arena passes between two threads; each turn checks what the
 * other wrote, adds its own blocks (crossing chunks), sometimes rewinds or
 * resets. A mutex/condvar pair is the happens-before edge the contract asks
 * for; TSan must stay silent. A third thread reads stats throughout (relaxed
 * reads of both threads' thread arenas). */
struct handoff {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int turn;      /* 0 or 1: whose turn; 2: done */
    int rounds;
    rp_pool *p;
    rp_arena *a;
    unsigned char **blocks; /* arena memory: the block list itself */
    int nblocks;
    int stop_stats;
    int errors;    /* failures seen off the main thread (cmocka asserts
                      only on the main thread); under lock */
    int round_no;  /* turns taken; under lock */
    int reader_errors; /* atomic */
};

#define HO_BLOCK 3000

/* One turn of the owner `me`; returns the number of failures. */
static int handoff_turn(struct handoff *h, int me)
{
    int bad = 0;
    rp_arena *mine = rp_arena_thread(h->p); /* concurrent thread-arena traffic */
    for (int i = 0; i < 20; i++) {
        void *q = rp_arena_alloc(mine, 5000, 16);
        if (!q)
            return bad + 1;
        memset(q, me, 5000);
    }
    rp_arena_reset(mine);
    for (int i = 0; i < h->nblocks; i++)
        for (int j = 0; j < HO_BLOCK; j += 512)
            bad += h->blocks[i][j] != (unsigned char)i;
    if (h->round_no % 7 == 6) {
        rp_arena_reset(h->a);
        h->blocks = rp_arena_alloc(h->a, 4096 * sizeof *h->blocks, 64);
        if (!h->blocks)
            return bad + 1;
        h->nblocks = 0;
    }
    rp_arena_pos m = rp_arena_mark(h->a);
    unsigned char *scratch = rp_arena_alloc(h->a, 100 * KiB, 16);
    if (!scratch)
        return bad + 1;
    memset(scratch, 0xff, 100 * KiB);
    rp_arena_rewind(h->a, m);
    for (int i = 0; i < 16 && h->nblocks < 4096; i++) {
        unsigned char *b = rp_arena_alloc(h->a, HO_BLOCK, 16);
        if (!b)
            return bad + 1;
        memset(b, h->nblocks, HO_BLOCK);
        h->blocks[h->nblocks++] = b;
    }
    return bad;
}

static void handoff_loop(struct handoff *h, int me)
{
    for (int round = me; round < h->rounds; round += 2) {
        pthread_mutex_lock(&h->lock);
        while (h->turn != me)
            pthread_cond_wait(&h->cond, &h->lock);
        pthread_mutex_unlock(&h->lock);
        /* Owner of h->a now: the mutex orders us after the other owner. */
        int bad = handoff_turn(h, me);
        pthread_mutex_lock(&h->lock);
        h->errors += bad;
        h->round_no++;
        h->turn = 1 - me;
        pthread_cond_broadcast(&h->cond);
        pthread_mutex_unlock(&h->lock);
    }
}

static void *handoff_peer(void *arg)
{
    handoff_loop(arg, 1);
    return NULL;
}

static void *stats_reader(void *arg)
{
    struct handoff *h = arg;
    while (!__atomic_load_n(&h->stop_stats, __ATOMIC_RELAXED)) {
        rp_stats s;
        if (rp_stats_get(h->p, &s) != 0 || s.arena_bytes > 1 * GiB)
            __atomic_fetch_add(&h->reader_errors, 1, __ATOMIC_RELAXED);
        sched_yield();
    }
    return NULL;
}

static void test_arena_handoff_between_threads(void **state)
{
    (void)state;
    rp_errlog log = {0};
    struct handoff h = {.lock = PTHREAD_MUTEX_INITIALIZER,
                        .cond = PTHREAD_COND_INITIALIZER,
                        .rounds = RP_TSAN ? 200 : 1000};
    h.p = mkpool(&log);
    h.a = rp_arena_create(h.p, 0);
    h.blocks = rp_arena_alloc(h.a, 4096 * sizeof *h.blocks, 64);
    assert_non_null(h.blocks);
    pthread_t peer, reader;
    assert_int_equal(pthread_create(&reader, NULL, stats_reader, &h), 0);
    assert_int_equal(pthread_create(&peer, NULL, handoff_peer, &h), 0);
    handoff_loop(&h, 0);
    assert_int_equal(pthread_join(peer, NULL), 0);
    __atomic_store_n(&h.stop_stats, 1, __ATOMIC_RELAXED);
    assert_int_equal(pthread_join(reader, NULL), 0);
    assert_int_equal(h.errors, 0);
    assert_int_equal(h.reader_errors, 0);
    assert_int_equal(h.round_no, h.rounds);
    for (int i = 0; i < h.nblocks; i++)
        assert_filled(h.blocks[i], HO_BLOCK, (unsigned char)i);
    assert_int_equal(rp_check(h.p), 0);
    rp_arena_destroy(h.a);
    assert_int_equal(rp_check(h.p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(h.p);
}

/* ---- ASan poisoning ------------------------------------------------------------- */

/* Scenarios for rp_run_child: each ends in an access ASan must report. */
static void write_after_reset(void *arg)
{
    (void)arg;
    rp_config c = rp_test_config(NULL);
    rp_pool *p = rp_pool_create(&c);
    rp_arena *a = rp_arena_create(p, 0);
    char *x = rp_arena_alloc(a, 64, 16);
    x[0] = 1;
    rp_arena_reset(a);
    ((volatile char *)x)[8] = 2; /* use after reset */
}

static void read_beyond_bump(void *arg)
{
    (void)arg;
    rp_config c = rp_test_config(NULL);
    rp_pool *p = rp_pool_create(&c);
    rp_arena *a = rp_arena_thread(p);
    char *x = rp_arena_alloc(a, 64, 16);
    rp_arena_pos m = rp_arena_mark(a);
    char *y = rp_arena_alloc(a, 64, 16);
    y[0] = 1;
    rp_arena_rewind(a, m);
    (void)((volatile char *)x)[100]; /* past the bump pointer: was y */
}

/* Run scenario in a child with its stderr captured: ASan must stop it. */
static void assert_asan_child(void (*scenario)(void *))
{
#if RP_ASAN
    static char out[64 * 1024];
    int st = rp_run_child(scenario, NULL, out, sizeof out);
    if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
        fail_msg("child exited cleanly; stderr:\n%s", out);
    assert_non_null(strstr(out, "AddressSanitizer"));
    assert_non_null(strstr(out, "use-after-poison"));
#else
    (void)scenario;
    skip();
#endif
}

static void test_arena_asan_reports_use_after_reset(void **state)
{
    (void)state;
    assert_asan_child(write_after_reset);
}

static void test_arena_asan_reports_access_beyond_bump(void **state)
{
    (void)state;
    assert_asan_child(read_beyond_bump);
}

/* ---- generic allocator interface ------------------------------------------------ */

struct texel {
    float r, g, b, a;
};

/* Code written once against rp_allocator. */
static struct texel *load_texture(rp_allocator al, size_t w, size_t h)
{
    struct texel *t = RP_NEW(al, struct texel, rp_mul_size(w, h));
    if (!t)
        return NULL;
    for (size_t i = 0; i < w * h; i++)
        t[i] = (struct texel){(float)i, 1.0f, 2.0f, 3.0f};
    return t;
}

static void round_trip(rp_allocator al)
{
    struct texel *t[8];
    for (int k = 0; k < 8; k++) {
        size_t w = (size_t)16 << k, h = 9;
        t[k] = load_texture(al, w, h);
        assert_non_null(t[k]);
        assert_int_equal((uintptr_t)t[k] % _Alignof(struct texel), 0);
    }
    for (int k = 0; k < 8; k++) {
        size_t w = (size_t)16 << k, h = 9;
        for (size_t i = 0; i < w * h; i += 7)
            assert_true(t[k][i].r == (float)i && t[k][i].a == 3.0f);
        al.free(al.ctx, t[k], w * h * sizeof(struct texel));
    }
    /* Over-aligned requests through the interface. */
    for (size_t align = 1; align <= 4096; align <<= 1) {
        void *q = rp_allocator_call(al, 100, align);
        assert_non_null(q);
        assert_int_equal((uintptr_t)q % align, 0);
        memset(q, 1, 100);
        al.free(al.ctx, q, 100);
    }
    errno = 0;
    assert_null(rp_allocator_call(al, 8, 3));
    assert_int_equal(errno, EINVAL);
}

static void test_arena_allocator_round_trip_arena(void **state)
{
    (void)state;
    rp_pool *p = mkpool(NULL);
    rp_arena *a = rp_arena_create(p, 0);
    round_trip(rp_allocator_arena(a));
    assert_true(rp_test_stats(p).region_in_use_bytes > 64 * KiB);
    rp_arena_reset(a); /* the arena frees it all */
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, 64 * KiB);
    round_trip(rp_allocator_arena(rp_arena_thread(p)));
    rp_arena_destroy(a);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_arena_allocator_round_trip_libc(void **state)
{
    (void)state;
    round_trip(rp_allocator_libc());
}

static void test_arena_allocator_round_trip_pool(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    round_trip(rp_allocator_pool(p));
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_arena_rp_new_overflow_enomem(void **state)
{
    (void)state;
    rp_pool *p = mkpool(NULL);
    rp_arena *a = rp_arena_create(p, 0);
    rp_allocator als[3] = {rp_allocator_arena(a), rp_allocator_libc(),
                           rp_allocator_pool(p)};
    rp_arena_pos before = rp_arena_mark(a);
    uint64_t fails = rp_test_stats(p).fail_other;
    for (int k = 0; k < 3; k++) {
        errno = 0;
        assert_null(RP_NEW(als[k], uint64_t, SIZE_MAX / 4));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(RP_NEW(als[k], struct texel, (SIZE_MAX / sizeof(struct texel)) + 1));
        assert_int_equal(errno, ENOMEM);
        errno = 0;
        assert_null(RP_NEW(als[k], char, SIZE_MAX));
        assert_int_equal(errno, ENOMEM);
    }
    /* The overflow never reached an allocator: nothing counted, nothing
     * handed out. */
    assert_int_equal(rp_test_stats(p).fail_other, fails);
    rp_arena_pos after = rp_arena_mark(a);
    assert_ptr_equal(after.chunk, before.chunk);
    assert_int_equal(after.offset, before.offset);
    /* A product that does not overflow but fits no region: ENOMEM from the
     * arena itself. */
    errno = 0;
    assert_null(RP_NEW(als[0], uint64_t, p->cfg.region_max_bytes));
    assert_int_equal(errno, ENOMEM);
    uint64_t *ok = RP_NEW(als[0], uint64_t, 1000);
    assert_non_null(ok);
    ok[999] = 1;
    rp_arena_destroy(a);
    rp_pool_destroy(p);
}

/* ---- layout, stats, checks -------------------------------------------------------- */

static void test_arena_chunks_grow_and_large_requests_get_own_region(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_arena *a = rp_arena_thread(p);
    size_t in_use = rp_test_stats(p).region_in_use_bytes;
    /* Chunk sizes double from region_min (64 KiB) up to region_max / 4. */
    size_t expect = 0, chunk = 64 * KiB;
    void *prev_chunk = NULL;
    for (int k = 0; k < 8; k++) {
        /* Fill the current chunk until the next block lands elsewhere. */
        for (;;) {
            char *q = rp_arena_alloc(a, 1024, 16);
            assert_non_null(q);
            rp_arena_pos m = rp_arena_mark(a);
            if (m.chunk != prev_chunk) {
                prev_chunk = m.chunk;
                break;
            }
        }
        expect += chunk;
        assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use + expect);
        assert_int_equal(rp_region_size(p, prev_chunk), 0); /* not a user region */
        if (chunk < p->cfg.region_max_bytes / 4)
            chunk *= 2;
    }
    assert_int_equal(chunk, 1 * MiB);
    /* A request larger than the next chunk gets a region of its own; the
     * current chunk, which has more room left, stays the bump chunk. */
    char *small1 = rp_arena_alloc(a, 16, 16);
    char *big = rp_arena_alloc(a, 2 * MiB, 16);
    char *small2 = rp_arena_alloc(a, 16, 16);
    assert_non_null(big);
    assert_ptr_equal(small2, small1 + 16);
    rp_rdesc *d = rpi_desc_lookup(p, big);
    assert_ptr_equal(rpi_desc_base(p, d), big);
    assert_int_equal(rpi_desc_bytes(p, d), 2 * MiB);
    assert_int_equal(RW_KIND(d->word), RK_ARENA);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use + expect + 2 * MiB);
    /* One that leaves more room in its region than the current chunk has
     * becomes the bump chunk. */
    char *big2 = rp_arena_alloc(a, 1 * MiB + 1, 16);
    char *after = rp_arena_alloc(a, 16, 16);
    assert_ptr_equal(after, big2 + 1 * MiB + 16);
    assert_int_equal(rp_check(p), 0);
    /* Reset keeps only the first chunk. */
    rp_arena_reset(a);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, in_use + 64 * KiB);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void test_arena_stats_count_bytes_handed_out(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    assert_int_equal(rp_test_stats(p).arena_bytes, 0);
    /* Thread arena: every byte, padding included, read live. */
    rp_arena *t = rp_arena_thread(p);
    assert_non_null(rp_arena_alloc(t, 100, 16));
    assert_int_equal(rp_test_stats(p).arena_bytes, 100);
    assert_non_null(rp_arena_alloc(t, 10, 16)); /* 12 bytes of padding */
    assert_int_equal(rp_test_stats(p).arena_bytes, 122);
    for (int i = 0; i < 100; i++)
        assert_non_null(rp_arena_alloc(t, 1000, 8)); /* the first pads 6 */
    /* The tail of the first chunk, left behind, is not counted. */
    assert_int_equal(rp_test_stats(p).arena_bytes, 128 + 100 * 1000);
    rp_arena_reset(t);
    assert_int_equal(rp_test_stats(p).arena_bytes, 0);
    /* Explicit arena: counted when it moves past a chunk (not per call). */
    rp_arena *e = rp_arena_create(p, 0);
    assert_non_null(rp_arena_alloc(e, 1000, 8));
    assert_int_equal(rp_test_stats(p).arena_bytes, 0);
    for (int i = 0; i < 99; i++)
        assert_non_null(rp_arena_alloc(e, 1000, 8));
    size_t first_chunk = (64 * KiB - 128) / 1000 * 1000; /* 65 blocks */
    assert_int_equal(rp_test_stats(p).arena_bytes, first_chunk);
    rp_arena_pos m = rp_arena_mark(e);
    /* Larger than the next chunk (256 KiB): a dedicated 512 KiB region with
     * less room left than the current chunk, so the current chunk stays
     * (its 35 blocks still uncounted); the dedicated block counts at once. */
    assert_non_null(rp_arena_alloc(e, 480 * KiB, 16));
    assert_int_equal(rp_test_stats(p).arena_bytes, first_chunk + 480 * KiB);
    rp_arena_rewind(e, m);
    assert_int_equal(rp_test_stats(p).arena_bytes, first_chunk);
    rp_arena_reset(e);
    assert_int_equal(rp_test_stats(p).arena_bytes, 0);
    assert_non_null(rp_arena_alloc(e, 70 * KiB, 16));
    rp_arena_destroy(e);
    assert_int_equal(rp_test_stats(p).arena_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void test_arena_check_detects_damaged_chain(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_arena *a = rp_arena_thread(p);
    char *x = rp_arena_alloc(a, 100, 16);
    assert_non_null(rp_arena_alloc(a, 100 * KiB, 16));
    assert_int_equal(rp_check(p), 0);
    rp_rdesc *d = rpi_desc_lookup(p, x);
    unsigned char saved[RP_DESC_USER_BYTES];
    memcpy(saved, d->user.bytes, sizeof saved);
    memset(d->user.bytes, 0x5a, sizeof saved); /* a stray write */
    assert_int_equal(rp_check(p), -EFAULT);
    assert_int_equal(log.count, 1);
    assert_int_equal(log.last_code, RP_ERR_INVARIANT);
    assert_non_null(strstr(log.last_msg, "arena check"));
    memcpy(d->user.bytes, saved, sizeof saved);
    assert_int_equal(rp_check(p), 0);
    /* A live explicit arena whose region was taken over is found too. */
    rp_arena *e = rp_arena_create(p, 0);
    rp_rdesc *ed = rpi_desc_lookup(p, e);
    memcpy(saved, ed->user.bytes, sizeof saved);
    memset(ed->user.bytes, 0, sizeof saved);
    assert_int_equal(rp_check(p), -EFAULT);
    assert_int_equal(log.count, 2);
    memcpy(ed->user.bytes, saved, sizeof saved);
    assert_int_equal(rp_check(p), 0);
    rp_arena_destroy(e);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- the inline fast path (rpool.h) ----------------------------------------------- */

typedef void *(*alloc_call)(rp_arena *a, size_t size, size_t align);

/* The three ways in: the header's inline path (the macro), the exported
 * function (its address, so no macro), and the exported slow path. */
static void *call_inline(rp_arena *a, size_t size, size_t align)
{
    return rp_arena_alloc(a, size, align);
}

static void *call_by_name(rp_arena *a, size_t size, size_t align)
{
    return (rp_arena_alloc)(a, size, align);
}

static const alloc_call call_styles[] = {call_inline, call_by_name, rp_arena_alloc,
                                         rp_arena_alloc_slow};
#define NSTYLES ((int)(sizeof call_styles / sizeof call_styles[0]))

/* One step of a deterministic mixed sequence: most requests small and
 * fast-path aligned; some size 0, page-aligned or larger, invalid, or too
 * large for any region. */
static void mixed_request(uint64_t *seed, size_t *size, size_t *align)
{
    uint64_t r = rnd(seed);
    static const size_t aligns[] = {0, 1, 2, 8, 16, 64, 2048, 4096, 8192, 3};
    *align = aligns[r % 10 < 7 ? r % 6 : (r >> 8) % 10];
    switch ((r >> 16) % 40) {
    case 0: *size = 0; break;
    case 1: *size = 40 * KiB + (r >> 24) % 1000; break; /* often a new chunk */
    case 2: *size = (size_t)300 * KiB; break;           /* a dedicated region */
    case 3: *size = 5 * MiB; break;                     /* fits no region */
    default: *size = 1 + (size_t)((r >> 24) % 3000); break;
    }
}

/* Two pools driven by the same sequence, one through the inline path only,
 * the other cycling through every call style: the same blocks (offsets in
 * their chunks), the same failures and errno, the same counters. */
static void test_arena_inline_and_out_of_line_calls_interleave(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *pools[2] = {mkpool(&log), mkpool(&log)};
    for (int kind = 0; kind < 3; kind++) {
        rp_arena *arenas[2];
        for (int k = 0; k < 2; k++)
            arenas[k] = kind == 0 ? rp_arena_thread(pools[k])
                                  : rp_arena_create(pools[k], kind == 2 ? 200 * KiB : 0);
        uint64_t seeds[2] = {0x1234 + (uint64_t)kind, 0x1234 + (uint64_t)kind};
        for (int i = 0; i < 20000; i++) {
            void *got[2];
            int err[2];
            size_t size = 0, align = 0;
            for (int k = 0; k < 2; k++) {
                mixed_request(&seeds[k], &size, &align);
                alloc_call f = k == 0 ? call_inline : call_styles[i % NSTYLES];
                errno = 0;
                got[k] = f(arenas[k], size, align);
                err[k] = errno;
                if (got[k]) {
                    size_t a = align ? align : 16;
                    assert_int_equal((uintptr_t)got[k] % a, 0);
                    if (size)
                        memset(got[k], (int)(i & 0xff), size < 64 ? size : 64);
                }
            }
            if ((got[0] == NULL) != (got[1] == NULL) || err[0] != err[1])
                fail_msg("step %d (kind %d, size %zu, align %zu): %p/%d vs %p/%d", i,
                         kind, size, align, got[0], err[0], got[1], err[1]);
            rp_arena_pos m0 = rp_arena_mark(arenas[0]), m1 = rp_arena_mark(arenas[1]);
            assert_int_equal(m0.offset & 0xffffffffu, m1.offset & 0xffffffffu);
            if (got[0])
                assert_int_equal((uintptr_t)got[0] - (uintptr_t)m0.chunk,
                                 (uintptr_t)got[1] - (uintptr_t)m1.chunk);
            if (i % 997 == 996) {
                rp_arena_reset(arenas[0]);
                rp_arena_reset(arenas[1]);
            }
        }
        rp_stats s0 = rp_test_stats(pools[0]), s1 = rp_test_stats(pools[1]);
        assert_int_equal(s0.fail_other, s1.fail_other);
        assert_int_equal(s0.region_in_use_bytes, s1.region_in_use_bytes);
        assert_int_equal(s0.arena_bytes, s1.arena_bytes);
        assert_true(s0.fail_other > 0);
        for (int k = 0; k < 2; k++) {
            assert_int_equal(rp_check(pools[k]), 0);
            if (kind)
                rp_arena_destroy(arenas[k]);
        }
    }
    /* A NULL arena: EINVAL from every style, nothing counted. */
    for (int k = 0; k < NSTYLES; k++) {
        errno = 0;
        assert_null(call_styles[k](NULL, 16, 16));
        assert_int_equal(errno, EINVAL);
    }
    assert_int_equal(log.count, 0);
    rp_pool_destroy(pools[0]);
    rp_pool_destroy(pools[1]);
}

/* The public prefix is the arena's own state: the inline path bumps it,
 * the library's calls see that, and the library keeps limit honest (0 in
 * an ASan build, so that the slow path poisons and unpoisons). */
static void test_arena_inline_head_is_the_arena_prefix(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_arena *t = rp_arena_thread(p);
    const rp_arena_head *h = (const rp_arena_head *)(const void *)t;
    assert_int_equal(h->bump, 0); /* no chunk yet: the inline path misses */
    assert_int_equal(h->limit, 0);
    char *x = rp_arena_alloc(t, 100, 16);
    assert_non_null(x);
    assert_int_equal(h->bump, (uintptr_t)x + 100);
    if (RP_ASAN) {
        assert_int_equal(h->limit, 0);
    } else {
        rp_rdesc *d = rpi_desc_lookup(p, x);
        assert_true(h->limit > h->bump);
        assert_int_equal(h->limit, (uintptr_t)rpi_desc_base(p, d) + rpi_desc_bytes(p, d));
    }
    /* Out-of-line calls continue from the inline bump and vice versa. */
    char *y = (rp_arena_alloc)(t, 10, 16);
    assert_ptr_equal(y, x + 112);
    char *z = rp_arena_alloc(t, 1, 1);
    assert_ptr_equal(z, y + 10);
    char *w = rp_arena_alloc_slow(t, 8, 8);
    assert_ptr_equal(w, z + 6); /* 123 rounded up to 128 */
    assert_int_equal(rp_test_stats(p).arena_bytes, 128 + 8);
    /* A budget ends the fast path where the budget ends. */
    rp_arena *e = rp_arena_create(p, 1000);
    const rp_arena_head *eh = (const rp_arena_head *)(const void *)e;
    char *first = rp_arena_alloc(e, 1, 1);
    assert_non_null(first);
    if (!RP_ASAN)
        assert_int_equal(eh->limit, (uintptr_t)first + 1000);
    assert_non_null(rp_arena_alloc(e, 999, 1));
    errno = 0;
    assert_null(rp_arena_alloc(e, 1, 1));
    assert_int_equal(errno, ENOMEM);
    rp_arena_reset(e);
    assert_ptr_equal(rp_arena_alloc(e, 1000, 1), first);
#if RP_ASAN
    /* Every block is unpoisoned exactly (to ASan's 8-byte granule) and the
     * room after it stays poisoned. */
    rp_arena_reset(t);
    char *q = rp_arena_alloc(t, 64, 16);
    assert_int_equal(__asan_region_is_poisoned(q, 64), NULL);
    assert_ptr_equal(__asan_region_is_poisoned(q, 72), q + 64);
#endif
    rp_arena_destroy(e);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* ---- per-arena stats ------------------------------------------------------------------ */

static void test_arena_stats_get_reports_one_arena(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    rp_arena_stats st;
    assert_int_equal(rp_arena_stats_get(NULL, &st), -EINVAL);
    rp_arena *t = rp_arena_thread(p);
    assert_int_equal(rp_arena_stats_get(t, NULL), -EINVAL);
    /* A fresh thread arena: nothing yet. */
    assert_int_equal(rp_arena_stats_get(t, &st), 0);
    assert_int_equal(st.size, sizeof st);
    assert_int_equal(st.version, RP_ARENA_STATS_VERSION);
    assert_int_equal(st.is_thread_arena, 1);
    assert_int_equal(st.bytes_in_use, 0);
    assert_int_equal(st.regions, 0);
    assert_int_equal(st.region_bytes, 0);
    assert_int_equal(st.peak_bytes, 0);
    assert_int_equal(st.budget_bytes, 0);
    assert_int_equal(st.in_flight, 0);
    /* N bytes over three chunks (64 + 128 + 256 KiB): 1000-byte blocks,
     * 8-aligned, so no padding; chunk tails do not count. */
    const size_t n = 300 * 1000;
    for (int i = 0; i < 300; i++)
        assert_non_null(rp_arena_alloc(t, 1000, 8));
    assert_int_equal(rp_arena_stats_get(t, &st), 0);
    assert_int_equal(st.bytes_in_use, n);
    assert_int_equal(st.regions, 3);
    assert_int_equal(st.region_bytes, (64 + 128 + 256) * KiB);
    assert_int_equal(st.peak_bytes, n);
    rp_arena_reset(t);
    assert_int_equal(rp_arena_stats_get(t, &st), 0);
    assert_int_equal(st.bytes_in_use, 0);
    assert_true(st.peak_bytes >= n);
    assert_int_equal(st.peak_bytes, n);
    assert_int_equal(st.regions, 1);
    assert_int_equal(st.region_bytes, 64 * KiB);
    /* A smaller cycle leaves the mark; a peak reset starts a new one. */
    assert_non_null(rp_arena_alloc(t, 5000, 16));
    assert_int_equal(rp_arena_stats_get(t, &st), 0);
    assert_int_equal(st.bytes_in_use, 5000);
    assert_int_equal(st.peak_bytes, n);
    rp_arena_peak_reset(t);
    assert_int_equal(rp_arena_stats_get(t, &st), 0);
    assert_int_equal(st.peak_bytes, 5000);
    assert_non_null(rp_arena_alloc(t, 3000, 8)); /* peak follows use live */
    assert_int_equal(rp_arena_stats_get(t, &st), 0);
    assert_int_equal(st.peak_bytes, 8000);
    /* Explicit arena: exact per arena (unlike rp_stats.arena_bytes, which
     * counts explicit arenas at chunk events only), with its budget. */
    rp_arena *e = rp_arena_create(p, 100 * KiB);
    assert_int_equal(rp_arena_stats_get(e, &st), 0);
    assert_int_equal(st.is_thread_arena, 0);
    assert_int_equal(st.budget_bytes, 100 * KiB);
    assert_int_equal(st.bytes_in_use, 0);
    assert_int_equal(st.regions, 1);
    assert_int_equal(st.region_bytes, 64 * KiB);
    assert_non_null(rp_arena_alloc(e, 1000, 16));
    rp_arena_pos m = rp_arena_mark(e);
    assert_non_null(rp_arena_alloc(e, 70 * KiB, 16)); /* a second chunk */
    assert_int_equal(rp_arena_stats_get(e, &st), 0);
    assert_int_equal(st.bytes_in_use, 1000 + 70 * KiB);
    assert_int_equal(st.regions, 2);
    assert_int_equal(st.region_bytes, (64 + 128) * KiB);
    rp_arena_rewind(e, m);
    assert_int_equal(rp_arena_stats_get(e, &st), 0);
    assert_int_equal(st.bytes_in_use, 1000);
    assert_int_equal(st.regions, 1);
    assert_int_equal(st.peak_bytes, 1000 + 70 * KiB);
    assert_int_equal(rp_test_stats(p).arena_bytes, 8000); /* e not counted yet */
    rp_arena_destroy(e);
    assert_int_equal(log.count, 0);
    /* A detached thread arena is no live arena (its shard memory stays
     * mapped, so the call can tell): -EINVAL, reported like every call on
     * a dead arena (on stderr: a dead arena's pool cannot be trusted, so
     * not through this pool's hook). */
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_arena_stats_get(t, &st), -EINVAL);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* What the iterator saw, by kind. */
struct seen {
    int threads, explicits, in_flight, bad;
    uint64_t tids[8];
    size_t budgets[8];
    size_t thread_bytes, explicit_bytes;
};

static void collect(const rp_arena_stats *st, uint64_t tid, void *arg)
{
    struct seen *s = arg;
    if (st->size != sizeof *st || st->version != RP_ARENA_STATS_VERSION ||
        st->is_thread_arena != (tid != 0))
        s->bad++;
    if (st->in_flight) {
        s->in_flight++;
        return;
    }
    if (tid) {
        if (s->threads < 8)
            s->tids[s->threads] = tid;
        s->threads++;
        s->thread_bytes += st->bytes_in_use;
    } else {
        if (s->explicits < 8)
            s->budgets[s->explicits] = st->budget_bytes;
        s->explicits++;
        s->explicit_bytes += st->bytes_in_use;
    }
}

struct parked {
    rp_pool *p;
    size_t bytes;   /* to allocate from the thread arena; 0: none */
    int use_arena;  /* 0: only rp_alloc (a shard, no arena) */
    pthread_barrier_t *ready, *done;
};

static void *parked_thread(void *arg)
{
    struct parked *k = arg;
    void *obj = rp_alloc(k->p, 64); /* a shard in every case */
    if (k->use_arena) {
        rp_arena *a = rp_arena_thread(k->p);
        if (k->bytes)
            (void)rp_arena_alloc(a, k->bytes, 16);
    }
    pthread_barrier_wait(k->ready);
    pthread_barrier_wait(k->done); /* main iterates meanwhile */
    rp_free(k->p, obj);
    return NULL;
}

static void test_arena_foreach_visits_thread_and_explicit_arenas(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = mkpool(&log);
    pthread_barrier_t ready, done;
    pthread_barrier_init(&ready, NULL, 4);
    pthread_barrier_init(&done, NULL, 4);
    struct parked ks[3] = {{p, 3000, 1, &ready, &done},
                           {p, 0, 1, &ready, &done},  /* asked, never used */
                           {p, 0, 0, &ready, &done}}; /* no arena at all */
    pthread_t th[3];
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_create(&th[i], NULL, parked_thread, &ks[i]), 0);
    assert_non_null(rp_arena_alloc(rp_arena_thread(p), 500, 16));
    rp_arena *e[3];
    for (int i = 0; i < 3; i++) {
        e[i] = rp_arena_create(p, (size_t)(i + 1) * 10000);
        assert_non_null(rp_arena_alloc(e[i], (size_t)(i + 1) * 100, 1));
    }
    pthread_barrier_wait(&ready);
    struct seen s = {0};
    rpi_arena_foreach(p, collect, &s);
    assert_int_equal(s.bad, 0);
    assert_int_equal(s.in_flight, 0);
    assert_int_equal(s.threads, 3); /* main, the user and the idle asker */
    assert_true(s.tids[0] != s.tids[1] && s.tids[1] != s.tids[2] &&
                s.tids[0] != s.tids[2]);
    assert_int_equal(s.thread_bytes, 500 + 3000);
    assert_int_equal(s.explicits, 3);
    assert_int_equal(s.explicit_bytes, 100 + 200 + 300);
    size_t bsum = s.budgets[0] + s.budgets[1] + s.budgets[2];
    assert_int_equal(bsum, 60000);
    /* A destroyed arena is gone from the next walk. */
    rp_arena_destroy(e[1]);
    memset(&s, 0, sizeof s);
    rpi_arena_foreach(p, collect, &s);
    assert_int_equal(s.explicits, 2);
    assert_int_equal(s.explicit_bytes, 100 + 300);
    assert_int_equal(s.budgets[0] + s.budgets[1], 40000);
    pthread_barrier_wait(&done);
    for (int i = 0; i < 3; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    rp_arena_destroy(e[0]);
    rp_arena_destroy(e[2]);
    memset(&s, 0, sizeof s);
    rpi_arena_foreach(p, collect, &s);
    assert_int_equal(s.explicits, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    pthread_barrier_destroy(&ready);
    pthread_barrier_destroy(&done);
    rp_pool_destroy(p);
}

/* One thread creates, uses and destroys explicit arenas, resets its thread
 * arena and works a long-lived arena, while another walks every arena and
 * reads the long-lived one's stats: every snapshot plausible, and under
 * TSan no report (the test's own code, inline fast path included, is
 * instrumented). */
struct churn2 {
    rp_pool *p;
    rp_arena *keep;  /* owned by the worker; read by the reader */
    int stop;        /* atomic */
    int bad;         /* atomic */
    int walks;       /* reader only */
};

#define CHURN_BUDGET_A ((size_t)1 << 20)
#define CHURN_BUDGET_B ((size_t)3 << 20)

static void check_snapshot(const rp_arena_stats *st, uint64_t tid, void *arg)
{
    struct churn2 *c = arg;
    int bad = 0;
    if (st->in_flight)
        return;
    bad |= st->bytes_in_use > st->region_bytes;
    bad |= st->peak_bytes < st->bytes_in_use;
    bad |= st->region_bytes < st->regions * 64 * KiB;
    bad |= st->region_bytes > 64 * MiB;
    if (tid == 0) {
        bad |= st->regions < 1;
        bad |= st->budget_bytes != CHURN_BUDGET_A && st->budget_bytes != CHURN_BUDGET_B;
        bad |= st->bytes_in_use > st->budget_bytes;
    }
    if (bad)
        __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
}

static void *churn2_worker(void *arg)
{
    struct churn2 *c = arg;
    rp_arena *t = rp_arena_thread(c->p);
    uint64_t seed = 77;
    for (int i = 0; i < (RP_TSAN ? 1500 : 10000); i++) {
        rp_arena *a = rp_arena_create(c->p, CHURN_BUDGET_A);
        if (!a) {
            __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
            break;
        }
        int n = 1 + (int)(rnd(&seed) % 80);
        for (int j = 0; j < n; j++) {
            size_t sz = 1 + (size_t)(rnd(&seed) % 4000);
            char *q = rp_arena_alloc(a, sz, 16);
            char *r = rp_arena_alloc(t, sz, 0);
            char *s = rp_arena_alloc(c->keep, sz, 64);
            if (!q || !r || !s) {
                __atomic_fetch_add(&c->bad, 1, __ATOMIC_RELAXED);
                break;
            }
            q[sz - 1] = r[sz - 1] = s[sz - 1] = 1;
        }
        if (i % 3 == 0)
            rp_arena_reset(a);
        rp_arena_destroy(a);
        rp_arena_reset(t);
        if (i % 5 == 0)
            rp_arena_reset(c->keep);
    }
    __atomic_store_n(&c->stop, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void test_arena_stats_walk_while_arenas_come_and_go(void **state)
{
    (void)state;
    rp_errlog log = {0};
    struct churn2 c = {.p = mkpool(&log)};
    c.keep = rp_arena_create(c.p, CHURN_BUDGET_B);
    assert_non_null(c.keep);
    pthread_t w;
    assert_int_equal(pthread_create(&w, NULL, churn2_worker, &c), 0);
    while (!__atomic_load_n(&c.stop, __ATOMIC_RELAXED)) {
        rpi_arena_foreach(c.p, check_snapshot, &c);
        rp_arena_stats st;
        int rc = rp_arena_stats_get(c.keep, &st);
        if (rc == 0)
            check_snapshot(&st, 0, &c);
        else if (rc != -EAGAIN)
            __atomic_fetch_add(&c.bad, 1, __ATOMIC_RELAXED);
        rp_stats s;
        if (rp_stats_get(c.p, &s) != 0 || s.arena_bytes > 64 * MiB)
            __atomic_fetch_add(&c.bad, 1, __ATOMIC_RELAXED);
        c.walks++;
    }
    assert_int_equal(pthread_join(w, NULL), 0);
    assert_int_equal(__atomic_load_n(&c.bad, __ATOMIC_RELAXED), 0);
    assert_true(c.walks > 0);
    rp_arena_stats st;
    assert_int_equal(rp_arena_stats_get(c.keep, &st), 0);
    assert_true(st.peak_bytes > 0);
    print_message("  %d walks while the worker ran\n", c.walks);
    rp_arena_destroy(c.keep);
    assert_int_equal(rp_check(c.p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(c.p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_arena_alignment_every_power_of_two),
        cmocka_unit_test(test_arena_size_zero_unique),
        cmocka_unit_test(test_arena_mark_rewind_nesting),
        cmocka_unit_test(test_arena_rewind_rejects_foreign_and_stale_positions),
        cmocka_unit_test(test_arena_reset_keeps_virtual_flat),
        cmocka_unit_test(test_arena_create_destroy_keeps_virtual_flat),
        cmocka_unit_test(test_arena_thread_arenas_return_memory_at_exit),
        cmocka_unit_test(test_arena_stats_read_while_threads_come_and_go),
        cmocka_unit_test(test_arena_thread_arena_is_per_thread_and_lazy),
        cmocka_unit_test(test_arena_budget_enomem_then_usable),
        cmocka_unit_test(test_arena_pool_refusal_leaves_arena_usable),
        cmocka_unit_test(test_arena_handoff_between_threads),
        cmocka_unit_test(test_arena_asan_reports_use_after_reset),
        cmocka_unit_test(test_arena_asan_reports_access_beyond_bump),
        cmocka_unit_test(test_arena_rp_new_overflow_enomem),
        cmocka_unit_test(test_arena_allocator_round_trip_arena),
        cmocka_unit_test(test_arena_allocator_round_trip_libc),
        cmocka_unit_test(test_arena_allocator_round_trip_pool),
        cmocka_unit_test(test_arena_chunks_grow_and_large_requests_get_own_region),
        cmocka_unit_test(test_arena_stats_count_bytes_handed_out),
        cmocka_unit_test(test_arena_check_detects_damaged_chain),
        cmocka_unit_test(test_arena_inline_and_out_of_line_calls_interleave),
        cmocka_unit_test(test_arena_inline_head_is_the_arena_prefix),
        cmocka_unit_test(test_arena_stats_get_reports_one_arena),
        cmocka_unit_test(test_arena_foreach_visits_thread_and_explicit_arenas),
        cmocka_unit_test(test_arena_stats_walk_while_arenas_come_and_go),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
