/* test_slab.c -- size-class object pools: rp_alloc, rp_calloc, rp_realloc,
 * rp_aligned_alloc, rp_free, rp_usable_size.
 * White-box where it helps: includes src/internal.h to find a pointer's
 * region and the pool's layout. */
#include "internal.h"
#include "testutil.h"

#include <pthread.h>
#include <stdatomic.h>

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define UNDER_TSAN 1
#else
#define UNDER_TSAN 0
#endif
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#include <sanitizer/asan_interface.h>
#define UNDER_ASAN 1
#define UNPOISON(a, n) ASAN_UNPOISON_MEMORY_REGION((a), (n))
#define POISON(a, n) ASAN_POISON_MEMORY_REGION((a), (n))
#else
#define UNDER_ASAN 0
#define UNPOISON(a, n) ((void)(a), (void)(n))
#define POISON(a, n) ((void)(a), (void)(n))
#endif

/* TSan suppressions: tests/helpers/tsan_supp.c (linked into every test). */

/* Work scale: TSan runs ~10x slower; keep every case well under 20 s. */
#define SCALE(n) (UNDER_TSAN ? (n) / 16 : UNDER_ASAN ? (n) / 4 : (n))

/* ---- the documented class table (docs/OBJECTS.md) ------------------------ */

/* 16, 32, 48, 64, then 4 classes per power of two up to 32 KiB. */
static size_t expected_class(size_t s)
{
    if (s == 0)
        s = 1;
    if (s <= 64)
        return (s + 15) / 16 * 16;
    size_t k = 64;
    while (k * 2 < s)
        k *= 2; /* s in (k, 2k] */
    size_t step = k / 4;
    return k + (s - k + step - 1) / step * step;
}

/* The tests' pseudo-random numbers: advance the 64-bit LCG state *r
 * (Knuth's MMIX constants), return its high 31 bits. */
static uint64_t lcg_next(uint64_t *r)
{
    *r = *r * 6364136223846793005ull + 1442695040888963407ull;
    return *r >> 33;
}

static rp_pool *make_pool(rp_errlog *log, int hardened)
{
    rp_config c = rp_test_config(log);
    c.hardened = hardened;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    return p;
}

/* Every object freed: no object bytes counted, the check passes, and once
 * this thread detaches no region is in use; no report; destroy. */
static void all_back_and_destroy(rp_pool *p, rp_errlog *log)
{
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, 0);
    assert_int_equal(log->count, 0);
    rp_pool_destroy(p);
}

/* Expect exactly one report with `code` from `stmt`. */
#define EXPECT_REPORT(log, code, stmt)                                        \
    do {                                                                      \
        int before_ = (log)->count;                                           \
        stmt;                                                                 \
        if ((log)->count != before_ + 1 || (log)->last_code != (code))        \
            fail_msg("%s: expected one report %d, got %d reports, last %d (%s)", \
                     #stmt, (int)(code), (log)->count - before_,              \
                     (int)(log)->last_code, (log)->last_msg);                 \
    } while (0)

/* ---- classes and waste --------------------------------------------------- */

static void test_slab_waste_bound_every_size(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    size_t worst_small = 0;
    double worst_ratio = 0;
    for (size_t s = 0; s <= RP_OBJECT_MAX; s++) {
        void *o = rp_alloc(p, s);
        assert_non_null(o);
        assert_int_equal((uintptr_t)o % 16, 0);
        size_t u = rp_usable_size(p, o);
        if (u != expected_class(s))
            fail_msg("size %zu: usable %zu, class table says %zu", s, u, expected_class(s));
        size_t eff = s ? s : 1;
        size_t waste = u - eff;
        /* The bound of OBJECTS.md: < 16 bytes up to 64, else < 25% of the
         * request (and < 20% of the block). */
        if (eff <= 64) {
            assert_true(waste < 16);
            if (waste > worst_small)
                worst_small = waste;
        } else {
            assert_true(4 * waste < eff);
            assert_true(5 * waste < u);
            double r = (double)waste / (double)eff;
            if (r > worst_ratio)
                worst_ratio = r;
        }
        memset(o, 0x5a, eff);
        rp_free(p, o);
    }
    assert_int_equal(worst_small, 15);
    assert_true(worst_ratio < 0.25 && worst_ratio > 0.2); /* tight: 255/1025 */
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* Every class edge: size and size + 1, up to RP_OBJECT_MAX and beyond into
 * heap and region sizes. */
static void test_slab_class_boundaries(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    size_t edges[64], n = 0;
    for (size_t s = 16; s <= RP_OBJECT_MAX; s = expected_class(s + 1))
        edges[n++] = s;
    assert_int_equal(n, 40);
    for (size_t i = 0; i < n; i++) {
        void *a = rp_alloc(p, edges[i]);
        void *b = rp_alloc(p, edges[i] + 1);
        assert_non_null(a);
        assert_non_null(b);
        assert_int_equal(rp_usable_size(p, a), edges[i]);
        if (i + 1 < n)
            assert_int_equal(rp_usable_size(p, b), edges[i + 1]);
        else
            assert_true(rp_usable_size(p, b) >= edges[i] + 1);
        memset(a, 1, edges[i]);
        memset(b, 2, edges[i] + 1);
        rp_stats s = rp_test_stats(p);
        /* b above RP_OBJECT_MAX is not an object of a slab */
        assert_int_equal(s.slab_bytes, edges[i] + (i + 1 < n ? edges[i + 1] : 0));
        rp_free(p, a);
        rp_free(p, b);
    }
    /* Beyond: 32 KiB + 1 up to the heap route (min(1 MiB, the heap's
     * largest request, its capacity / 8): 1 MiB with the test config's
     * 64 MiB heap) comes from the heap; above it up to region_max a region
     * of its own; above region_max only the heap fits. */
    size_t big[] = {RP_OBJECT_MAX + 1, 64 * KiB - 1, 64 * KiB, 64 * KiB + 1,
                    1 * MiB, 1 * MiB + 1, 4 * MiB - 1, 4 * MiB, 4 * MiB + 1, 16 * MiB};
    rp_stats base = rp_test_stats(p);
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) {
        void *o = rp_alloc(p, big[i]);
        assert_non_null(o);
        assert_int_equal((uintptr_t)o % 16, 0);
        size_t u = rp_usable_size(p, o);
        assert_true(u >= big[i]);
        rp_stats s = rp_test_stats(p);
        if (big[i] > 1 * MiB && big[i] <= 4 * MiB) { /* a region: power of two */
            size_t r = 64 * KiB;
            while (r < big[i])
                r *= 2;
            assert_int_equal(u, r);
            assert_int_equal(s.region_in_use_bytes, base.region_in_use_bytes + r);
            assert_int_equal(s.heap_allocated_bytes, base.heap_allocated_bytes);
        } else { /* the heap */
            assert_true(s.heap_allocated_bytes > base.heap_allocated_bytes);
            assert_int_equal(s.region_in_use_bytes, base.region_in_use_bytes);
        }
        memset(o, 3, big[i]);
        rp_free(p, o);
        s = rp_test_stats(p);
        assert_int_equal(s.region_in_use_bytes, base.region_in_use_bytes);
        assert_int_equal(s.heap_allocated_bytes, base.heap_allocated_bytes);
    }
    /* Larger than the heap can ever hold, and sizes near SIZE_MAX. */
    size_t huge[] = {64 * MiB, 1 * GiB, SIZE_MAX / 2, SIZE_MAX / 2 + 1, SIZE_MAX - 15,
                     SIZE_MAX};
    for (size_t i = 0; i < sizeof huge / sizeof huge[0]; i++) {
        errno = 0;
        assert_null(rp_alloc(p, huge[i]));
        assert_int_equal(errno, ENOMEM);
    }
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* Mid sizes go to the heap first, up to min(1 MiB, the heap's largest
 * request, its capacity / 8), whatever the granule; above that a region of
 * its own. */
static void test_slab_heap_threshold(void **state)
{
    (void)state;
    rp_errlog log = {0};
    struct {
        size_t granule, heap, route, region; /* region: bytes for route + 1 */
    } cases[] = {
        {1 * MiB, 64 * MiB, 1 * MiB, 2 * MiB},    /* the 1 MiB cap */
        {64 * KiB, 64 * MiB, 1 * MiB, 2 * MiB},
        {64 * KiB, 4 * MiB, 512 * KiB, 1 * MiB},  /* capacity / 8 */
        {1 * MiB, 2 * MiB, 256 * KiB, 1 * MiB},   /* capacity / 8, one granule */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        rp_config c = rp_test_config(&log);
        c.region_min_bytes = cases[i].granule;
        c.region_max_bytes = 16 * MiB;
        c.heap_bytes = cases[i].heap;
        rp_pool *p = rp_pool_create(&c);
        assert_non_null(p);
        log.count = 0; /* small heaps warn about their fragmentation bound */
        rp_stats b = rp_test_stats(p);
        void *h = rp_alloc(p, cases[i].route);      /* the heap */
        void *r = rp_alloc(p, cases[i].route + 1);  /* a region of its own */
        assert_non_null(h);
        assert_non_null(r);
        rp_stats s = rp_test_stats(p);
        assert_true(s.heap_allocated_bytes > b.heap_allocated_bytes);
        assert_int_equal(s.region_in_use_bytes, b.region_in_use_bytes + cases[i].region);
        assert_true(rp_usable_size(p, h) >= cases[i].route);
        assert_int_equal(rp_usable_size(p, r), cases[i].region);
        rp_free(p, h);
        rp_free(p, r);
        s = rp_test_stats(p);
        assert_int_equal(s.heap_allocated_bytes, b.heap_allocated_bytes);
        assert_int_equal(s.region_in_use_bytes, b.region_in_use_bytes);
        /* Small objects still come from slabs. */
        void *o = rp_alloc(p, 100);
        assert_int_equal(rp_usable_size(p, o), 112);
        rp_free(p, o);
        assert_int_equal(log.count, 0);
        assert_int_equal(rp_check(p), 0);
        rp_pool_destroy(p);
    }

    /* No heap: everything above RP_OBJECT_MAX up to region_max is a region;
     * above it nothing fits. */
    rp_config c = rp_test_config(&log);
    c.heap_bytes = 0;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    void *a = rp_alloc(p, 40000);
    assert_non_null(a);
    assert_int_equal(rp_usable_size(p, a), 64 * KiB);
    errno = 0;
    assert_null(rp_alloc(p, 4 * MiB + 1));
    assert_int_equal(errno, ENOMEM);
    rp_free(p, a);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* A full heap does not fail a mid-size request: it falls back to a region
 * of its own, and nothing counts as a failure. rp_free, rp_usable_size and
 * rp_realloc work on both kinds of block. */
static void test_slab_mid_size_heap_full(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    c.heap_bytes = 1 * MiB; /* route: capacity / 8 = 128 KiB */
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    log.count = 0; /* a small heap warns about its fragmentation bound */
    rp_stats b = rp_test_stats(p);
    enum { N = 24, SZ = 100 * 1024 };
    char *o[N];
    int nheap = 0, nregion = 0;
    for (int i = 0; i < N; i++) {
        rp_stats before = rp_test_stats(p);
        o[i] = rp_alloc(p, SZ);
        assert_non_null(o[i]);
        memset(o[i], i + 1, SZ);
        rp_stats s = rp_test_stats(p);
        if (s.heap_allocated_bytes > before.heap_allocated_bytes) {
            assert_int_equal(s.region_in_use_bytes, before.region_in_use_bytes);
            assert_true(rp_usable_size(p, o[i]) >= SZ);
            assert_int_equal(nregion, 0); /* the heap first, until it is full */
            nheap++;
        } else {
            assert_int_equal(s.region_in_use_bytes, before.region_in_use_bytes + 128 * KiB);
            assert_int_equal(rp_usable_size(p, o[i]), 128 * KiB);
            nregion++;
        }
    }
    assert_true(nheap >= 1); /* the first 100 KiB request came from the heap */
    assert_true(nregion >= 1);
    rp_stats s = rp_test_stats(p);
    assert_true(s.heap_oom_count > b.heap_oom_count); /* the heap said no ... */
    assert_int_equal(s.fail_other, b.fail_other);     /* ... but nothing failed */
    assert_int_equal(s.fail_physical, b.fail_physical);
    assert_int_equal(s.fail_virtual, b.fail_virtual);
    assert_int_equal(rp_check(p), 0);

    /* realloc: in place within the block, and across heap and regions with
     * the contents kept. o[0] is a heap block, o[N - 1] a region. */
    char *q = rp_realloc(p, o[0], 120 * KiB);
    assert_ptr_equal(q, o[0]);
    q = rp_realloc(p, o[0], 200 * KiB);   /* above the route: a region */
    assert_non_null(q);
    assert_int_equal(rp_usable_size(p, q), 256 * KiB);
    for (size_t k = 0; k < SZ; k += 4093)
        assert_int_equal(q[k], 1);
    o[0] = q;
    rp_stats s1 = rp_test_stats(p);
    q = rp_realloc(p, o[N - 1], 40 * KiB); /* below half: the heap again */
    assert_non_null(q);
    rp_stats s2 = rp_test_stats(p);
    assert_true(s2.heap_allocated_bytes > s1.heap_allocated_bytes);
    assert_int_equal(s2.region_in_use_bytes, s1.region_in_use_bytes - 128 * KiB);
    for (size_t k = 0; k < 40 * KiB; k += 4093)
        assert_int_equal(q[k], N);
    o[N - 1] = q;
    for (int i = 0; i < N; i++)
        rp_free(p, o[i]);
    s = rp_test_stats(p);
    assert_int_equal(s.heap_allocated_bytes, b.heap_allocated_bytes);
    assert_int_equal(s.region_in_use_bytes, b.region_in_use_bytes);
    assert_int_equal(s.fail_other, b.fail_other);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);

    /* When a region cannot take it either (larger than region_max), the
     * request fails and counts once. */
    c = rp_test_config(&log);
    c.heap_bytes = 1 * MiB;
    c.region_max_bytes = 64 * KiB;
    rp_pool *p2 = rp_pool_create(&c);
    assert_non_null(p2);
    log.count = 0;
    b = rp_test_stats(p2);
    int got = 0;
    for (int i = 0; i < N; i++) {
        errno = 0;
        o[i] = rp_alloc(p2, SZ);
        if (!o[i]) {
            assert_int_equal(errno, ENOMEM);
            break;
        }
        got++;
    }
    assert_true(got >= 1 && got < N);
    s = rp_test_stats(p2);
    assert_int_equal(s.fail_other, b.fail_other + 1);
    for (int i = 0; i < got; i++)
        rp_free(p2, o[i]);
    assert_int_equal(rp_check(p2), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p2);
    rp_pool_destroy(p);
}

/* A tiny region_max: classes whose slab would not fit go to the heap. */
static void test_slab_small_region_max(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    c.region_min_bytes = 4 * KiB;
    c.region_max_bytes = 8 * KiB;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    void *o[40];
    size_t n = 0;
    for (size_t s = 16; s <= RP_OBJECT_MAX; s = expected_class(s + 1)) {
        o[n] = rp_alloc(p, s);
        assert_non_null(o[n]);
        assert_true(rp_usable_size(p, o[n]) >= s);
        memset(o[n], 7, s);
        n++;
    }
    assert_int_equal(rp_check(p), 0);
    for (size_t i = 0; i < n; i++)
        rp_free(p, o[i]);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_test_stats(p).heap_allocated_bytes, 0);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- API behaviour ------------------------------------------------------- */

static void test_slab_zero_size_unique(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    void *a = rp_alloc(p, 0), *b = rp_alloc(p, 0);
    assert_non_null(a);
    assert_non_null(b);
    assert_ptr_not_equal(a, b);
    assert_int_equal(rp_usable_size(p, a), 16);
    rp_free(p, a);
    rp_free(p, b);
    rp_free(p, NULL); /* nothing */
    assert_int_equal(rp_usable_size(p, NULL), 0);
    void *c = rp_aligned_alloc(p, 64, 0);
    assert_non_null(c);
    rp_free(p, c);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void test_slab_calloc_zeroes(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    size_t sizes[] = {1, 48, 1000, 32768, 40000, 200000};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
        unsigned char *d = rp_alloc(p, sizes[i]);
        assert_non_null(d);
        memset(d, 0xee, sizes[i]);
        rp_free(p, d);
        unsigned char *z = rp_calloc(p, 1, sizes[i]);
        assert_non_null(z);
        for (size_t j = 0; j < sizes[i]; j++)
            if (z[j])
                fail_msg("calloc(%zu) byte %zu = %#x", sizes[i], j, z[j]);
        rp_free(p, z);
    }
    unsigned char *z = rp_calloc(p, 10, 10);
    assert_non_null(z);
    assert_int_equal(rp_usable_size(p, z), 112);
    rp_free(p, z);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void fill(unsigned char *o, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        o[i] = (unsigned char)(seed + i * 7);
}

static void verify_fill(const unsigned char *o, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++)
        if (o[i] != (unsigned char)(seed + i * 7))
            fail_msg("byte %zu of %zu lost (%#x)", i, n, o[i]);
}

static void test_slab_realloc_across_classes(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    /* Grow through every class and into heap/region sizes, then shrink. */
    size_t sizes[64], n = 0;
    for (size_t s = 1; s <= 300 * KiB; s = s * 3 / 2 + 7)
        sizes[n++] = s;
    unsigned char *o = rp_realloc(p, NULL, sizes[0]); /* NULL: acts as rp_alloc */
    assert_non_null(o);
    fill(o, sizes[0], 1);
    size_t have = sizes[0];
    for (size_t i = 1; i < n; i++) {
        o = rp_realloc(p, o, sizes[i]);
        assert_non_null(o);
        verify_fill(o, have, 1);
        fill(o, sizes[i], 1);
        have = sizes[i];
        assert_true(rp_usable_size(p, o) >= sizes[i]);
    }
    for (size_t i = n; i-- > 0;) {
        o = rp_realloc(p, o, sizes[i]);
        assert_non_null(o);
        verify_fill(o, sizes[i], 1);
        assert_true(rp_usable_size(p, o) >= sizes[i]);
        if (sizes[i] <= RP_OBJECT_MAX) /* shrinking moves to the fitting class */
            assert_int_equal(rp_usable_size(p, o), expected_class(sizes[i]));
    }
    /* Same class: stays in place. */
    void *q = rp_realloc(p, o, 2);
    assert_ptr_equal(q, o);
    /* Failure leaves the block untouched. */
    fill(q, 2, 9);
    errno = 0;
    assert_null(rp_realloc(p, q, SIZE_MAX - 100));
    assert_int_equal(errno, ENOMEM);
    verify_fill(q, 2, 9);
    assert_null(rp_realloc(p, q, 0)); /* frees */
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

static void test_slab_aligned_every_pow2(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    /* An alignment above the region base alignment takes size + align -
     * base_align bytes of region (OBJECTS.md): 4 MiB alignment of 40000
     * bytes needs an 8 MiB region class. */
    c.region_max_bytes = 8 * MiB;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    size_t sizes[] = {1, 24, 100, 5000, 40000};
    for (size_t align = 1; align <= 4 * MiB; align *= 2) {
        for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
            unsigned char *o = rp_aligned_alloc(p, align, sizes[i]);
            if (!o)
                fail_msg("aligned_alloc(%zu, %zu) failed: errno %d", align, sizes[i], errno);
            if ((uintptr_t)o % align || (uintptr_t)o % 16)
                fail_msg("aligned_alloc(%zu, %zu) = %p", align, sizes[i], (void *)o);
            assert_true(rp_usable_size(p, o) >= sizes[i]);
            fill(o, sizes[i], (unsigned)align);
            verify_fill(o, sizes[i], (unsigned)align);
            rp_free(p, o);
        }
    }
    /* Objects: alignments the class sizes and slab bases give for free. */
    void *a = rp_aligned_alloc(p, 64, 100);
    assert_int_equal(rp_usable_size(p, a), 128);
    void *b = rp_aligned_alloc(p, 4096, 10);
    assert_int_equal(rp_usable_size(p, b), 4096);
    rp_free(p, a);
    rp_free(p, b);
    /* Bad alignments: EINVAL; impossible ones: ENOMEM. */
    size_t bad[] = {0, 3, 24, 48, 100, 4097, SIZE_MAX};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        errno = 0;
        assert_null(rp_aligned_alloc(p, bad[i], 64));
        assert_int_equal(errno, EINVAL);
    }
    errno = 0;
    assert_null(rp_aligned_alloc(p, 16 * MiB, 64));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_aligned_alloc(p, 64, SIZE_MAX - 10));
    assert_int_equal(errno, ENOMEM);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    /* Large blocks went back at once; the thread's slabs go at detach. */
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, 0);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* Exact accounting: slab_bytes is the sum of the live objects' classes. */
static void test_slab_stats_exact(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    enum { N = 5000 };
    static void *o[N];
    size_t sum = 0;
    uint64_t rng = 42;
    for (int i = 0; i < N; i++) {
        size_t s = lcg_next(&rng) % 3000;
        o[i] = rp_alloc(p, s);
        assert_non_null(o[i]);
        sum += expected_class(s);
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, sum);
    assert_int_equal(rp_check(p), 0);
    for (int i = 0; i < N; i += 2) {
        sum -= rp_usable_size(p, o[i]);
        rp_free(p, o[i]);
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, sum);
    assert_int_equal(rp_check(p), 0);
    for (int i = 1; i < N; i += 2)
        rp_free(p, o[i]);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    /* The thread keeps its current slabs and a few empty ones; detaching
     * gives every slab back. */
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* Counted set (OBJECTS.md "Counted set"): a thread's fast frees into up to
 * 16 of its slabs are counted on the slab, not in its net; stats and
 * rp_check add them, and a slab leaving the set folds them into net. Each
 * phase checks slab_bytes exactly:
 *  1. frees over 3 classes x 12 slabs (more slabs than the set holds, so
 *     slabs in and out of it take fast frees), in 4 shuffled rounds; then
 *     100000 alloc/free pairs on one slab (far more frees than slots);
 *  2. a thread exits with uncounted frees (its slabs are abandoned);
 *  3. remote frees collected into slabs in the set (used moves, the
 *     uncounted count must not), then allocations and local frees. */
struct cset_ctx {
    rp_pool *p;
    void **o;
    size_t n;
};

static void shuffle_ptrs(void **v, size_t n, uint64_t seed)
{
    for (size_t i = n; i > 1; i--) {
        size_t j = lcg_next(&seed) % i;
        void *t = v[i - 1];
        v[i - 1] = v[j];
        v[j] = t;
    }
}

/* Allocates n 64-byte objects, frees a shuffled half, exits. */
static void *cset_exit_worker(void *arg)
{
    struct cset_ctx *c = arg;
    for (size_t i = 0; i < c->n; i++)
        c->o[i] = rp_alloc(c->p, 64);
    shuffle_ptrs(c->o, c->n, 7);
    for (size_t i = 0; i < c->n / 2; i++)
        rp_free(c->p, c->o[i]);
    return NULL;
}

/* Frees every third object of c->o (another thread's), then detaches. */
static void *cset_remote_worker(void *arg)
{
    struct cset_ctx *c = arg;
    for (size_t i = 0; i < c->n; i += 3)
        rp_free(c->p, c->o[i]);
    rp_thread_detach(c->p);
    return NULL;
}

static void test_slab_counted_set_exact(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    /* 1. 12 slabs (64 KiB) of each of 64, 256 and 1024 bytes. */
    static const size_t sz[3] = {64, 256, 1024};
    enum { PER64 = 12 * 1024, PER256 = 12 * 256, PER1K = 12 * 64 };
    enum { N = PER64 + PER256 + PER1K };
    static void *o[N];
    static size_t osz[N];
    size_t k = 0, live = 0;
    for (size_t i = 0; k < N; i++) {
        size_t c = i % 3;
        size_t want = c == 0 ? PER64 : c == 1 ? PER256 : PER1K;
        if (i / 3 >= want)
            continue;
        osz[k] = sz[c];
        o[k] = rp_alloc(p, sz[c]);
        assert_non_null(o[k]);
        live += sz[c];
        k++;
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, live);
    assert_int_equal(rp_check(p), 0);
    static void *round_o[N];
    for (unsigned r = 0; r < 4; r++) {
        size_t m = 0;
        for (size_t i = r; i < N; i += 4) {
            round_o[m++] = o[i];
            live -= osz[i];
        }
        shuffle_ptrs(round_o, m, 100 + r);
        for (size_t i = 0; i < m; i++)
            rp_free(p, round_o[i]);
        if (rp_test_stats(p).slab_bytes != live)
            fail_msg("round %u: slab_bytes %zu, expected %zu", r,
                     rp_test_stats(p).slab_bytes, live);
        assert_int_equal(rp_check(p), 0);
    }
    assert_int_equal(live, 0);

    /* 1b. Churn on one slab: many more fast frees than it has slots, one
     * object kept live; the uncounted count stays below cap (folded at
     * each refill), or the statistics would drop it. */
    void *keep = rp_alloc(p, 64);
    assert_non_null(keep);
    for (int i = 0; i < 100000; i++) {
        void *q = rp_alloc(p, 64);
        assert_non_null(q);
        rp_free(p, q);
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, 64);
    assert_int_equal(rp_check(p), 0);
    rp_free(p, keep);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);

    /* 2. A thread exits with half of its objects freed. */
    enum { W = 4096 };
    static void *wo[W];
    struct cset_ctx c = {p, wo, W};
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, cset_exit_worker, &c), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    assert_int_equal(rp_test_stats(p).slab_bytes, (size_t)(W / 2) * 64);
    assert_int_equal(rp_check(p), 0);
    for (size_t i = W / 2; i < W; i++)
        rp_free(p, wo[i]);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);

    /* 3. Remote frees into this thread's slabs, collected while its own
     * uncounted frees are pending. */
    for (size_t i = 0; i < W; i++)
        assert_non_null(wo[i] = rp_alloc(p, 64));
    live = (size_t)W * 64;
    for (size_t i = 1; i < W; i += 3) { /* local, fast */
        rp_free(p, wo[i]);
        wo[i] = NULL;
        live -= 64;
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, live);
    assert_int_equal(pthread_create(&t, NULL, cset_remote_worker, &c), 0);
    assert_int_equal(pthread_join(t, NULL), 0);
    for (size_t i = 0; i < W; i += 3) {
        wo[i] = NULL;
        live -= 64;
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, live);
    assert_int_equal(rp_check(p), 0);
    static void *more[W];
    for (size_t i = 0; i < W; i++) { /* the bins refill from collected lists */
        assert_non_null(more[i] = rp_alloc(p, 64));
        live += 64;
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, live);
    assert_int_equal(rp_check(p), 0);
    shuffle_ptrs(more, W, 9);
    for (size_t i = 0; i < W; i++)
        rp_free(p, more[i]);
    for (size_t i = 0; i < W; i++)
        if (wo[i])
            rp_free(p, wo[i]);
    all_back_and_destroy(p, &log);
}

/* The fast-path cache survives pools that come and go at the same address. */
static void test_slab_pools_come_and_go(void **state)
{
    (void)state;
    rp_errlog log = {0};
    for (int round = 0; round < 20; round++) {
        rp_pool *a = make_pool(&log, round & 1);
        rp_pool *b = make_pool(&log, 0);
        void *x = rp_alloc(a, 64), *y = rp_alloc(b, 64), *z = rp_alloc(a, 100);
        assert_non_null(x);
        assert_non_null(y);
        assert_non_null(z);
        rp_free(a, x);
        rp_free(b, y);
        /* A pointer of the other pool is foreign. */
        EXPECT_REPORT(&log, RP_ERR_FOREIGN, rp_free(b, z));
        rp_free(a, z);
        assert_int_equal(rp_test_stats(a).slab_bytes, 0);
        assert_int_equal(rp_test_stats(b).slab_bytes, 0);
        assert_int_equal(rp_check(a), 0);
        assert_int_equal(rp_check(b), 0);
        rp_pool_destroy(a); /* this thread's cache still names a */
        rp_pool_destroy(b);
    }
}

/* ---- bad input ----------------------------------------------------------- */

static void bad_input(int hardened)
{
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, hardened);
    rp_pool *q = make_pool(&log, hardened);

    /* Allocation arguments. */
    errno = 0;
    assert_null(rp_calloc(p, SIZE_MAX / 2, 3));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_calloc(p, (size_t)1 << 33, (size_t)1 << 33));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_alloc(p, SIZE_MAX));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_aligned_alloc(p, 96, 10));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(rp_alloc(NULL, 10));
    assert_int_equal(errno, EINVAL);
    assert_int_equal(log.count, 0);

    char *a = rp_alloc(p, 100); /* class 112 */
    char *b = rp_alloc(p, 100);
    char *big = rp_alloc(p, 100 * KiB);
    char *other = rp_alloc(q, 100);
    assert_non_null(a);
    assert_non_null(b);
    assert_non_null(big);
    assert_non_null(other);
    char *t48 = rp_alloc(p, 48);
    memset(a, 1, 100);
    rp_stats before = rp_test_stats(p);
    int stack_var;

    /* Foreign: another pool, the stack, the uncarved region area. */
    EXPECT_REPORT(&log, RP_ERR_FOREIGN, rp_free(p, other));
    EXPECT_REPORT(&log, RP_ERR_FOREIGN, rp_free(p, &stack_var));
    EXPECT_REPORT(&log, RP_ERR_FOREIGN, rp_free(p, p->rbase + p->rbytes - 64));
    EXPECT_REPORT(&log, RP_ERR_FOREIGN, (void)rp_usable_size(p, other));
    /* Interior: inside an object, misaligned, the large object. */
    EXPECT_REPORT(&log, RP_ERR_INTERIOR, rp_free(p, a + 16));
    EXPECT_REPORT(&log, RP_ERR_INTERIOR, rp_free(p, a + 1));
    EXPECT_REPORT(&log, RP_ERR_INTERIOR, rp_free(p, big + 4096));
    EXPECT_REPORT(&log, RP_ERR_INTERIOR, (void)rp_usable_size(p, a + 8));
    assert_int_equal(rp_usable_size(p, a), 112);
    /* Never allocated: a slot past the ones handed out. */
    rp_rdesc *d = rpi_desc_lookup(p, a);
    char *sbase = rpi_desc_base(p, d);
    char *unused = sbase + 200 * 112; /* slots are handed out in batches of 36 */
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, unused));
    /* The slab's tail after its last object (48-byte class: 65536 % 48 = 16;
     * hardened: the bitmap lives there). */
    rp_rdesc *d48 = rpi_desc_lookup(p, t48);
    char *tail = rpi_desc_base(p, d48) + rpi_desc_bytes(p, d48) - 16;
    EXPECT_REPORT(&log, RP_ERR_INTERIOR, rp_free(p, tail));
    /* Wrong API: a user region, an arena allocation. */
    void *r = rp_region_acquire(p, 64 * KiB);
    EXPECT_REPORT(&log, RP_ERR_WRONG_API, rp_free(p, r));
    EXPECT_REPORT(&log, RP_ERR_WRONG_API, (void)rp_usable_size(p, r));
    rp_arena *ar = rp_arena_create(p, 0);
    if (ar) {
        void *x = rp_arena_alloc(ar, 64, 16);
        assert_non_null(x);
        EXPECT_REPORT(&log, RP_ERR_WRONG_API, rp_free(p, x));
        rp_arena_destroy(ar);
    }
    /* Released region: not live. */
    rp_region_release(p, r);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, r));
    /* None of that changed anything. */
    rp_stats after = rp_test_stats(p);
    assert_int_equal(after.slab_bytes, before.slab_bytes);
    assert_int_equal(after.region_in_use_bytes, before.region_in_use_bytes);
    assert_int_equal(rp_check(p), 0);
    for (int i = 0; i < 100; i++)
        assert_int_equal(a[i], 1);
    rp_free(p, t48);

    /* Double free: the immediate repeat is caught in every mode. */
    rp_free(p, b);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, b));
    assert_int_equal(rp_check(p), 0);
    /* Large blocks: always. */
    rp_free(p, big);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, big));
    /* Hardened: any double free, in any order, and usable_size of a freed
     * object. */
    if (hardened) {
        char *c1 = rp_alloc(p, 100), *c2 = rp_alloc(p, 100);
        rp_free(p, c1);
        rp_free(p, c2);
        EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, c1));
        EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, (void)rp_usable_size(p, c2));
    }
    /* A slab with no object out (kept empty for reuse): every free into it
     * is a double free. Fill one 16-byte slab, start a second, give the
     * first slab's objects back. */
    enum { M = 4097 };
    void **v = malloc(M * sizeof *v);
    assert_non_null(v);
    for (int i = 0; i < M; i++)
        v[i] = rp_alloc(p, 16);
    rp_rdesc *d0 = rpi_desc_lookup(p, v[0]);
    assert_ptr_not_equal(rpi_desc_lookup(p, v[M - 1]), d0);
    for (int i = 0; i < M; i++)
        if (rpi_desc_lookup(p, v[i]) == d0)
            rp_free(p, v[i]);
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, v[0]));
    assert_int_equal(rp_check(p), 0);
    for (int i = 0; i < M; i++)
        if (rpi_desc_lookup(p, v[i]) != d0)
            rp_free(p, v[i]);
    free(v);
    rp_free(p, a);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    /* A NULL pool. */
    rp_free(NULL, NULL);
    rp_free(q, other);
    assert_int_equal(rp_check(q), 0);
    rp_pool_destroy(q);
    rp_pool_destroy(p);
}

static void test_slab_bad_input_plain(void **state)
{
    (void)state;
    bad_input(0);
}

static void test_slab_bad_input_hardened(void **state)
{
    (void)state;
    bad_input(1);
}

/* Hardened: an overwritten free-list link is reported as corrupt when it is
 * decoded, and never followed. */
static void test_slab_hardened_corrupt_link(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 1);
    void *o[4];
    for (int i = 0; i < 4; i++)
        o[i] = rp_alloc(p, 64);
    for (int i = 0; i < 4; i++)
        rp_free(p, o[i]);
    /* A use-after-free write over the link of the last object freed. */
    UNPOISON(o[3], 64);
    *(void **)o[3] = o[0]; /* a plausible raw pointer: wrong encoding */
    POISON(o[3], 64);
    /* The bin hands out the rest of its batch first; the damaged link is
     * decoded when o[3] (the head of the slab's local list) is taken. */
    int corrupt = 0;
    for (int i = 0; i < 300; i++) {
        int before = log.count;
        void *x = rp_alloc(p, 64);
        assert_non_null(x);
        if (log.count != before) {
            assert_int_equal(log.last_code, RP_ERR_CORRUPT);
            corrupt++;
        }
        assert_int_equal((uintptr_t)x % 16, 0);
        assert_int_equal(rp_usable_size(p, x), 64);
        memset(x, 0, 64);
    }
    assert_int_equal(corrupt, 1);
    assert_int_equal(log.count, 1);
    rp_pool_destroy(p);
}

/* Best-effort detection without hardening, remotely: a repeat free of the
 * last object pushed to a slab's remote list. */
struct remote_ctx {
    rp_pool *p;
    void *obj;
    rp_errlog *log;
    int reports;
};

static void *remote_double(void *arg)
{
    struct remote_ctx *c = arg;
    int before = c->log->count;
    rp_free(c->p, c->obj);
    rp_free(c->p, c->obj);
    c->reports = c->log->count - before;
    return NULL;
}

static void test_slab_remote_double_free(void **state)
{
    (void)state;
    for (int hardened = 0; hardened < 2; hardened++) {
        rp_errlog log = {0};
        rp_pool *p = make_pool(&log, hardened);
        void *keep = rp_alloc(p, 64);
        struct remote_ctx c = {p, rp_alloc(p, 64), &log, 0};
        pthread_t t;
        pthread_create(&t, NULL, remote_double, &c);
        pthread_join(t, NULL);
        assert_int_equal(c.reports, 1);
        assert_int_equal(log.last_code, RP_ERR_NOT_LIVE);
        rp_free(p, keep);
        assert_int_equal(rp_test_stats(p).slab_bytes, 0);
        assert_int_equal(rp_check(p), 0);
        rp_pool_destroy(p);
    }
}

/* A stale free by another thread into a slab that has no object out (kept
 * empty by its owner for reuse): hardened pools report it at once; plain
 * pools report it when the owner reuses the slab, and never hand the
 * object out twice. */
struct stale_ctx {
    rp_pool *p;
    void *obj;
};

static void *stale_free(void *arg)
{
    struct stale_ctx *c = arg;
    rp_free(c->p, c->obj);
    return NULL;
}

static int cmp_ptr(const void *a, const void *b)
{
    uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;
    return x < y ? -1 : x > y;
}

static void test_slab_stale_remote_double_free(void **state)
{
    (void)state;
    for (int hardened = 0; hardened < 2; hardened++) {
        rp_errlog log = {0};
        rp_pool *p = make_pool(&log, hardened);
        enum { M = 4097 }; /* one full 16-byte slab and one more object */
        void **v = malloc(2 * M * sizeof *v);
        assert_non_null(v);
        for (int i = 0; i < M; i++)
            v[i] = rp_alloc(p, 16);
        rp_rdesc *d0 = rpi_desc_lookup(p, v[0]);
        int n0 = 0;
        for (int i = 0; i < M; i++)
            if (rpi_desc_lookup(p, v[i]) == d0) {
                rp_free(p, v[i]); /* the first slab empties: kept for reuse */
                n0++;
            }
        struct stale_ctx c = {p, v[0]};
        pthread_t t;
        pthread_create(&t, NULL, stale_free, &c);
        pthread_join(t, NULL);
        assert_int_equal(log.count, hardened ? 1 : 0); /* hardened: at once */
        /* Use up the second slab and reuse the first: no object twice. */
        int n = 0;
        for (int i = 0; i < M; i++)
            if (rpi_desc_lookup(p, v[i]) != d0)
                v[n++] = v[i];
        for (int i = 0; i < M + n0; i++)
            v[n++] = rp_alloc(p, 16);
        assert_int_equal(log.count, 1);
        assert_int_equal(log.last_code, RP_ERR_NOT_LIVE);
        qsort(v, (size_t)n, sizeof *v, cmp_ptr);
        for (int i = 1; i < n; i++)
            if (v[i] == v[i - 1])
                fail_msg("object %p handed out twice", v[i]);
        assert_int_equal(rp_test_stats(p).slab_bytes, (size_t)n * 16);
        assert_int_equal(rp_check(p), 0);
        for (int i = 0; i < n; i++)
            rp_free(p, v[i]);
        assert_int_equal(rp_test_stats(p).slab_bytes, 0);
        assert_int_equal(rp_check(p), 0);
        free(v);
        rp_pool_destroy(p);
    }
}

/* ---- batched remote frees ------------------------------------------------ */

/* A thread that allocates on request and then waits: the objects stay owned
 * by a live thread, so frees by others are batched. */
struct owner_thread {
    rp_pool *p;
    size_t size;
    int n;
    void **objs;
    atomic_int phase;   /* 1: allocate n objects; 2: done; 3: exit */
};

static void *owner_main(void *arg)
{
    struct owner_thread *o = arg;
    for (;;) {
        int ph = atomic_load_explicit(&o->phase, memory_order_acquire);
        if (ph == 3)
            return NULL;
        if (ph == 1) {
            for (int i = 0; i < o->n; i++)
                o->objs[i] = rp_alloc(o->p, o->size);
            atomic_store_explicit(&o->phase, 2, memory_order_release);
        }
        sched_yield();
    }
}

static void owner_ask(struct owner_thread *o)
{
    atomic_store_explicit(&o->phase, 1, memory_order_release);
    while (atomic_load_explicit(&o->phase, memory_order_acquire) != 2)
        sched_yield();
}

struct free_one {
    rp_pool *p;
    void *obj;
    int shard;          /* allocate first: frees are then batched */
};

static void *free_one_main(void *arg)
{
    struct free_one *f = arg;
    if (f->shard)
        rp_free(f->p, rp_alloc(f->p, 16));
    rp_free(f->p, f->obj);
    return NULL; /* exit: a batch holding obj would be pushed */
}

/* Frees of another live thread's objects wait in per-thread batches: the
 * counters are exact at once, rp_check validates open batches, the
 * immediate repeat (the head of a batch, or of the slab's remote list) is
 * reported, also by other threads, nothing is handed out twice, and
 * detaching gives every slab back. */
static void test_slab_remote_batches(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    enum { N = 1000 };
    static void *objs[N], *again[N];
    struct owner_thread ow = {p, 64, N, objs, 0};
    pthread_t t;
    pthread_create(&t, NULL, owner_main, &ow);
    owner_ask(&ow);
    rp_free(p, rp_alloc(p, 16)); /* a shard: threads without one never batch */
    for (int i = 0; i < N; i++) {
        assert_non_null(objs[i]);
        memset(objs[i], 0x5a, 64);
    }
    assert_int_equal(rp_test_stats(p).slab_bytes, N * 64);
    rp_stats before = rp_test_stats(p);
    for (int i = 0; i < N; i++)
        rp_free(p, objs[i]); /* remote: batched here */
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.slab_bytes, 0);          /* counted when freed */
    assert_int_equal(s.region_in_use_bytes, before.region_in_use_bytes);
    assert_int_equal(rp_check(p), 0);           /* with a batch still open */
    assert_int_equal(log.count, 0);

    /* Repeats: the last object freed (the head of the open batch, tagged),
     * the last object of the last batch pushed (the head of the slab's
     * remote list), and the head of this thread's batch freed again by a
     * third thread. Each is reported and changes nothing. Batches of rb
     * objects: the first (N / rb) * rb frees were pushed. */
#define RB64 (RP_RB_BYTES / 64 < RP_RB_OBJS ? RP_RB_BYTES / 64 : RP_RB_OBJS)
    _Static_assert(RB64 <= (int)N && (int)N % RB64 != 0, "a batch pushed, one open");
    const int rb = RB64;
#undef RB64
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, objs[N - 1]));
    EXPECT_REPORT(&log, RP_ERR_NOT_LIVE, rp_free(p, objs[N / rb * rb - 1]));
    assert_int_equal(rp_check(p), 0);
    /* Another thread without a shard pushes at once, one with a shard
     * batches: both check the tag first. */
    for (int shard = 0; shard < 2; shard++) {
        struct free_one f = {p, objs[N - 1], shard};
        pthread_t t2;
        pthread_create(&t2, NULL, free_one_main, &f);
        pthread_join(t2, NULL);
        assert_int_equal(log.count, 3 + shard);
        assert_int_equal(log.last_code, RP_ERR_NOT_LIVE);
    }
    assert_int_equal(log.last_code, RP_ERR_NOT_LIVE);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);

    /* This thread's batches go out when it detaches; the owner reuses the
     * objects, each once. */
    assert_int_equal(rp_thread_detach(p), 0);
    ow.objs = again;
    owner_ask(&ow);
    static void *all[N];
    memcpy(all, again, sizeof all);
    qsort(all, N, sizeof *all, cmp_ptr);
    for (int i = 1; i < N; i++)
        if (all[i] == all[i - 1])
            fail_msg("object %p handed out twice", all[i]);
    int reused = 0;
    for (int i = 0; i < N; i++)
        reused += bsearch(&objs[i], all, N, sizeof *all, cmp_ptr) != NULL;
    assert_true(reused > N / 2); /* the freed objects came back */
    assert_int_equal(rp_test_stats(p).slab_bytes, N * 64);
    for (int i = 0; i < N; i++)
        rp_free(p, again[i]);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    atomic_store_explicit(&ow.phase, 3, memory_order_release);
    pthread_join(t, NULL);
    assert_int_equal(rp_thread_detach(p), 0);
    s = rp_test_stats(p);
    assert_int_equal(s.region_in_use_bytes, 0);
    assert_int_equal(s.slab_bytes, 0);
    assert_int_equal(log.count, 4);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* Remote frees of every class, from a thread with a shard: classes up to
 * 16 KiB are batched (several pushes each for the large ones, whose slabs
 * span granules), larger ones pushed at once. Counters are exact at every
 * step, rp_check accepts the open batches, and once this thread detaches
 * (pushing them) and the owner exits, no region is left in use. */
static void test_slab_remote_every_class(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    enum { N = 40 };
    static void *objs[N];
    struct owner_thread ow = {p, 16, N, objs, 0};
    pthread_t t;
    pthread_create(&t, NULL, owner_main, &ow);
    rp_free(p, rp_alloc(p, 16)); /* a shard: this thread's frees batch */
    int classes = 0;
    for (size_t sz = 16; sz <= RP_OBJECT_MAX; sz = expected_class(sz + 1)) {
        ow.size = sz; /* read by the owner after phase 1's release */
        owner_ask(&ow);
        for (int i = 0; i < N; i++) {
            assert_non_null(objs[i]);
            memset(objs[i], 0x3c, sz);
        }
        assert_int_equal(rp_test_stats(p).slab_bytes, (uint64_t)N * sz);
        for (int i = 0; i < N; i++)
            rp_free(p, objs[i]);
        assert_int_equal(rp_test_stats(p).slab_bytes, 0);
        assert_int_equal(rp_check(p), 0);
        classes++;
    }
    assert_int_equal(classes, 40);
    assert_int_equal(rp_thread_detach(p), 0); /* pushes the open batches */
    assert_int_equal(rp_check(p), 0);
    atomic_store_explicit(&ow.phase, 3, memory_order_release);
    pthread_join(t, NULL);
    all_back_and_destroy(p, &log);
}

/* The owner exits while another thread holds a batch of its objects: the
 * slab is abandoned, and the batch's push makes it DEAD and releases it. */
static void test_slab_batch_into_abandoned_slab(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    enum { N = 300 };
    static void *objs[N];
    struct owner_thread ow = {p, 256, N, objs, 0};
    pthread_t t;
    pthread_create(&t, NULL, owner_main, &ow);
    owner_ask(&ow);
    rp_free(p, rp_alloc(p, 16)); /* a shard: threads without one never batch */
    for (int i = 0; i < N; i++)
        rp_free(p, objs[i]); /* batched: the last batch stays open */
    atomic_store_explicit(&ow.phase, 3, memory_order_release);
    pthread_join(t, NULL); /* its slabs are abandoned (objects out: ours) */
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_true(rp_test_stats(p).region_in_use_bytes > 0);
    assert_int_equal(rp_thread_detach(p), 0); /* pushes: the slab dies */
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.region_in_use_bytes, 0);
    assert_int_equal(log.count, 0);
    assert_int_equal(rp_check(p), 0);
    rp_pool_destroy(p);
}

/* ---- cross-thread traffic ------------------------------------------------ */

/* A single-producer single-consumer ring: the release store of head
 * publishes the slot (pairs with the consumer's acquire load); the release
 * store of tail gives the slot back (pairs with the producer's acquire). */
#define RING 1024
struct ring {
    _Alignas(64) atomic_size_t head;
    _Alignas(64) atomic_size_t tail;
    void *slot[RING];
};

static bool ring_put(struct ring *r, void *v)
{
    size_t h = atomic_load_explicit(&r->head, memory_order_relaxed);
    if (h - atomic_load_explicit(&r->tail, memory_order_acquire) == RING)
        return false;
    r->slot[h % RING] = v;
    atomic_store_explicit(&r->head, h + 1, memory_order_release);
    return true;
}

static void *ring_get(struct ring *r)
{
    size_t t = atomic_load_explicit(&r->tail, memory_order_relaxed);
    if (atomic_load_explicit(&r->head, memory_order_acquire) == t)
        return NULL;
    void *v = r->slot[t % RING];
    atomic_store_explicit(&r->tail, t + 1, memory_order_release);
    return v;
}

#define COOKIE 0x5eedc0deu

struct obj_hdr {       /* at offset 16: free-list links may use the first 16 */
    uint32_t cookie;
    uint32_t size;
    uint64_t tag;      /* address ^ serial */
};

struct peer {
    rp_pool *p;
    struct ring *out, *in;
    long nalloc;       /* objects to send */
    long nrecv;        /* objects to receive */
    uint64_t rng;
    int detach_at_end;
    long bad;
};

static void *make_obj(struct peer *pe, uint64_t serial)
{
    uint64_t r = lcg_next(&pe->rng);
    size_t size = 32 + (r % 8 == 0 ? r % 4000 : r % 200);
    unsigned char *o = rp_alloc(pe->p, size);
    if (!o)
        return NULL;
    struct obj_hdr *h = (struct obj_hdr *)(o + 16);
    h->cookie = COOKIE;
    h->size = (uint32_t)size;
    h->tag = (uint64_t)(uintptr_t)o ^ serial;
    memset(o + 16 + sizeof *h, (int)(serial & 0xff), size - 16 - sizeof *h);
    return o;
}

static bool check_and_free(struct peer *pe, unsigned char *o)
{
    struct obj_hdr *h = (struct obj_hdr *)(o + 16);
    bool ok = h->cookie == COOKIE;
    if (ok) {
        uint64_t serial = h->tag ^ (uint64_t)(uintptr_t)o;
        for (size_t i = 16 + sizeof *h; i < h->size; i++)
            if (o[i] != (unsigned char)(serial & 0xff)) {
                ok = false;
                break;
            }
        if (rp_usable_size(pe->p, o) < h->size)
            ok = false;
    }
    h->cookie = 0xdeaddead;
    rp_free(pe->p, o);
    return ok;
}

static void *peer_main(void *arg)
{
    struct peer *pe = arg;
    long sent = 0, got = 0;
    void *pending = NULL;
    while (sent < pe->nalloc || got < pe->nrecv) {
        int progress = 0;
        for (int k = 0; k < 64 && sent < pe->nalloc; k++) {
            if (!pending)
                pending = make_obj(pe, (uint64_t)sent);
            if (!pending) {
                pe->bad++;
                return NULL;
            }
            if (!ring_put(pe->out, pending))
                break;
            pending = NULL;
            sent++;
            progress = 1;
        }
        for (int k = 0; k < 64 && got < pe->nrecv; k++) {
            void *o = ring_get(pe->in);
            if (!o)
                break;
            if (!check_and_free(pe, o))
                pe->bad++;
            got++;
            progress = 1;
        }
        if (!progress)
            sched_yield();
    }
    if (pe->detach_at_end)
        rp_thread_detach(pe->p);
    return NULL;
}

/* Pairs of threads that free each other's objects: every free is remote,
 * every slab gets remote lists, and thread exit abandons what is live. */
static void run_pairs(rp_pool *p, int pairs, long per_thread, int detach)
{
    struct ring *rings = calloc((size_t)pairs * 2, sizeof *rings);
    struct peer *pe = calloc((size_t)pairs * 2, sizeof *pe);
    pthread_t *t = calloc((size_t)pairs * 2, sizeof *t);
    assert_non_null(rings);
    for (int i = 0; i < pairs; i++) {
        struct peer *a = &pe[2 * i], *b = &pe[2 * i + 1];
        *a = (struct peer){p, &rings[2 * i], &rings[2 * i + 1], per_thread, per_thread,
                           (uint64_t)i * 2 + 1, detach, 0};
        *b = (struct peer){p, &rings[2 * i + 1], &rings[2 * i], per_thread, per_thread,
                           (uint64_t)i * 2 + 2, detach, 0};
    }
    for (int i = 0; i < pairs * 2; i++)
        pthread_create(&t[i], NULL, peer_main, &pe[i]);
    for (int i = 0; i < pairs * 2; i++) {
        pthread_join(t[i], NULL);
        if (pe[i].bad)
            fail_msg("thread %d: %ld objects with a bad cookie or failed allocations", i,
                     pe[i].bad);
    }
    free(rings);
    free(pe);
    free(t);
}

static void test_slab_producer_consumer(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    rp_stats base = rp_test_stats(p);
    long per = SCALE(600000L); /* 4 threads x 2 x 600k = 4.8M operations */
    run_pairs(p, 2, per, 0);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.slab_bytes, 0);
    assert_int_equal(s.errors, 0);
    assert_int_equal(rp_check(p), 0);
    /* Threads exited: their slabs went back (empty) or were abandoned and
     * released by the last remote free. Only this thread's are left. */
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, 0);
    rp_purge(p);
    s = rp_test_stats(p);
    /* Physical back to the baseline: what remains is metadata (per-thread
     * shards are metadata and are recycled, not returned) and the heap. */
    assert_int_equal(s.physical_bytes - s.metadata_bytes - s.heap_physical_bytes,
                     base.physical_bytes - base.metadata_bytes - base.heap_physical_bytes);
    assert_int_equal(s.region_dirty_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

static void test_slab_producer_consumer_hardened(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 1);
    run_pairs(p, 2, SCALE(150000L), 1);
    rp_stats s = rp_test_stats(p);
    assert_int_equal(s.slab_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* ---- thread exit: abandonment and adoption ------------------------------- */

struct exit_ctx {
    rp_pool *p;
    size_t n;
    void **objs;
    size_t *sizes;
};

static void *alloc_and_exit(void *arg)
{
    struct exit_ctx *c = arg;
    for (size_t i = 0; i < c->n; i++) {
        c->sizes[i] = 16 + (i * 37) % 3000;
        c->objs[i] = rp_alloc(c->p, c->sizes[i]);
        if (c->objs[i])
            memset(c->objs[i], (int)(i & 0xff), c->sizes[i]);
    }
    return NULL; /* exits with everything live: its slabs are abandoned */
}

static void *alloc_some(void *arg)
{
    struct exit_ctx *c = arg;
    for (size_t i = 0; i < c->n; i++) {
        c->objs[i] = rp_alloc(c->p, c->sizes[i]);
        if (c->objs[i])
            memset(c->objs[i], 0x77, c->sizes[i]);
    }
    rp_thread_detach(c->p);
    return NULL;
}

static void test_slab_thread_exit_abandon_adopt(void **state)
{
    (void)state;
    for (int hardened = 0; hardened < 2; hardened++) {
        rp_errlog log = {0};
        rp_pool *p = make_pool(&log, hardened);
        enum { N = 20000 };
        static void *objs[N], *objs2[N];
        static size_t sizes[N];
        struct exit_ctx a = {p, N, objs, sizes};
        pthread_t t;
        pthread_create(&t, NULL, alloc_and_exit, &a);
        pthread_join(t, NULL);
        size_t live = 0;
        for (size_t i = 0; i < N; i++) {
            assert_non_null(objs[i]);
            live += expected_class(sizes[i]);
        }
        rp_stats s = rp_test_stats(p);
        assert_int_equal(s.slab_bytes, live);
        assert_true(s.region_in_use_bytes > 0);
        assert_int_equal(rp_check(p), 0); /* the abandoned stacks are consistent */

        /* Free every other object from here: remote frees into abandoned
         * slabs. */
        for (size_t i = 0; i < N; i += 2) {
            unsigned char *o = objs[i];
            for (size_t j = 0; j < sizes[i]; j++)
                if (o[j] != (unsigned char)(i & 0xff))
                    fail_msg("object %zu damaged at %zu", i, j);
            live -= expected_class(sizes[i]);
            rp_free(p, o);
        }
        assert_int_equal(rp_test_stats(p).slab_bytes, live);
        assert_int_equal(rp_check(p), 0);

        /* Another thread adopts the abandoned slabs (their free objects come
         * back) and exits with its objects live. */
        struct exit_ctx b = {p, N / 2, objs2, sizes};
        pthread_create(&t, NULL, alloc_some, &b);
        pthread_join(t, NULL);
        for (size_t i = 0; i < N / 2; i++)
            assert_non_null(objs2[i]);
        assert_int_equal(rp_check(p), 0);
        /* The remaining objects of the first thread are intact. */
        for (size_t i = 1; i < N; i += 2) {
            unsigned char *o = objs[i];
            for (size_t j = 0; j < sizes[i]; j++)
                if (o[j] != (unsigned char)(i & 0xff))
                    fail_msg("object %zu damaged at %zu after adoption", i, j);
        }
        /* Free everything: the last remote free into each abandoned slab
         * gives it back. */
        for (size_t i = 1; i < N; i += 2)
            rp_free(p, objs[i]);
        for (size_t i = 0; i < N / 2; i++)
            rp_free(p, objs2[i]);
        s = rp_test_stats(p);
        assert_int_equal(s.slab_bytes, 0);
        assert_int_equal(rp_check(p), 0);
        assert_int_equal(rp_thread_detach(p), 0);
        s = rp_test_stats(p);
        assert_int_equal(s.region_in_use_bytes, 0);
        assert_int_equal(rp_check(p), 0);
        assert_int_equal(log.count, 0);
        rp_pool_destroy(p);
    }
}

/* Threads exit while others free their objects: remote frees race with
 * abandonment, adoption and the DEAD hand-over. Nothing may be lost. */
struct churn {
    rp_pool *p;
    struct ring *ring;
    long n;
    long bad;
};

static void *churn_producer(void *arg)
{
    struct churn *c = arg;
    for (long i = 0; i < c->n; i++) {
        size_t size = 32 + (size_t)(i * 131) % 700; /* room for the header */
        unsigned char *o = rp_alloc(c->p, size);
        if (!o) {
            c->bad++;
            break;
        }
        struct obj_hdr *h = (struct obj_hdr *)(o + 16);
        h->cookie = COOKIE;
        h->size = (uint32_t)size;
        h->tag = (uint64_t)(uintptr_t)o;
        while (!ring_put(c->ring, o))
            sched_yield();
    }
    return NULL; /* exit: abandon whatever the consumer has not freed yet */
}

static void test_slab_exit_races_remote_frees(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    long rounds = SCALE(64L), per = 3000;
    struct ring *ring = calloc(1, sizeof *ring);
    for (long r = 0; r < rounds; r++) {
        struct churn c = {p, ring, per, 0};
        pthread_t t;
        pthread_create(&t, NULL, churn_producer, &c);
        long got = 0;
        while (got < per) {
            unsigned char *o = ring_get(ring);
            if (!o) {
                sched_yield();
                continue;
            }
            struct obj_hdr *h = (struct obj_hdr *)(o + 16);
            if (h->cookie != COOKIE || h->tag != (uint64_t)(uintptr_t)o)
                fail_msg("round %ld: object %p has a bad cookie", r, (void *)o);
            h->cookie = 0;
            rp_free(p, o);
            got++;
        }
        pthread_join(t, NULL);
        assert_int_equal(c.bad, 0);
    }
    free(ring);
    all_back_and_destroy(p, &log);
}

/* Objects of a thread that detaches while they are live, freed later by
 * the same thread under a new shard: remote frees into its own abandoned
 * slabs. */
static void test_slab_detach_then_free(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    void *o[3000];
    for (int i = 0; i < 3000; i++)
        o[i] = rp_alloc(p, (size_t)(i % 500) + 1);
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_check(p), 0);
    for (int i = 0; i < 3000; i++)
        rp_free(p, o[i]);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(rp_thread_detach(p), 0);
    assert_int_equal(rp_test_stats(p).region_in_use_bytes, 0);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

/* ---- empty slabs of idle threads ------------------------------------------- */

struct idle_ctx {
    rp_pool *p;
    pthread_barrier_t b;
    int rounds;
};

/* Each round: 4096 x 256 B allocated, written, freed (its slabs become
 * empty and are kept for reuse), then idle at the barrier while the main
 * thread looks. */
static void *idle_worker(void *arg)
{
    struct idle_ctx *x = arg;
    static void *o[4096];
    for (int r = 0; r < x->rounds; r++) {
        for (int i = 0; i < 4096; i++) {
            o[i] = rp_alloc(x->p, 256);
            assert_non_null(o[i]);
            memset(o[i], r + 1, 256);
        }
        for (int i = 0; i < 4096; i++)
            rp_free(x->p, o[(i * 1237) % 4096]);
        pthread_barrier_wait(&x->b); /* idle: main inspects */
        pthread_barrier_wait(&x->b); /* main done */
    }
    return NULL;
}

struct given_back {
    rp_pool *p;
    size_t base, kept;
};

static bool is_given_back(void *arg)
{
    struct given_back *g = arg;
    return (rp_test_stats(g->p).region_in_use_bytes - g->base) * 4 <= g->kept;
}

/* Wait until the worker's kept slabs (in_use above base) are at most a
 * quarter of `kept`; returns the milliseconds waited (0: at once, -1:
 * timeout; rp_wait_until). */
static int wait_given_back(rp_pool *p, size_t base, size_t kept)
{
    struct given_back g = {p, base, kept};
    return rp_wait_until(is_given_back, &g);
}

/* A thread that goes idle keeps up to EMPTY_BYTES of empty slabs for
 * reuse, but they are not lost to the pool: a physical-budget squeeze and
 * rp_purge take them back at once, the purger once they sat unused for the
 * purge delay, all while the thread is alive and never calls rpool again. */
static void test_slab_idle_thread_empties_given_back(void **state)
{
    (void)state;
    for (int phase = 0; phase < 2; phase++) {
        rp_errlog log = {0};
        rp_config c = rp_test_config(&log);
        c.purge_thread = 1;
        c.region_cache_bytes = 8 * MiB;
        c.purge_delay_ms = phase == 0 ? 60000 : 40;
        rp_pool *p = rp_pool_create(&c);
        assert_non_null(p);
        struct idle_ctx x = {.p = p, .rounds = phase == 0 ? 2 : 1};
        pthread_barrier_init(&x.b, NULL, 2);
        size_t base = rp_test_stats(p).region_in_use_bytes;
        pthread_t t;
        assert_int_equal(pthread_create(&t, NULL, idle_worker, &x), 0);
        for (int r = 0; r < x.rounds; r++) {
            pthread_barrier_wait(&x.b);
            /* The worker's slabs were empty before the barrier: time the
             * purger's delay from here, not from after rp_check (which may
             * take a while under a sanitizer). */
            struct timespec t0;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            rp_stats k = rp_test_stats(p);
            size_t kept = k.region_in_use_bytes - base;
            assert_true(kept >= 512 * KiB); /* most of the 1 MiB of slabs */
            assert_int_equal(rp_check(p), 0);
            if (phase == 1) {
                /* The purger, after the delay: seen given back no sooner
                 * than 30 ms after the barrier (40 ms delay, one tick of
                 * slack). */
                assert_true(wait_given_back(p, base, kept) >= 0);
                assert_true(rp_ms_since(&t0) >= 30);
            } else if (r == 0) {
                /* A budget squeeze: the physical budget is what is in use
                 * now; a 512 KiB region fits only if the idle thread's
                 * empty slabs go back and are purged (its current slab
                 * stays). */
                assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, k.physical_bytes), 0);
                void *rg = rp_region_acquire(p, 512 * KiB);
                assert_non_null(rg);
                memset(rg, 7, 512 * KiB);
                assert_int_equal(wait_given_back(p, base + 512 * KiB, kept), 0);
                rp_region_release(p, rg);
                assert_int_equal(rp_budget_set(p, RP_BUDGET_PHYSICAL, 64 * GiB), 0);
            } else {
                /* rp_purge. */
                assert_true(rp_purge(p) >= kept / 2);
                assert_int_equal(wait_given_back(p, base, kept), 0);
            }
            assert_int_equal(rp_check(p), 0);
            pthread_barrier_wait(&x.b);
        }
        pthread_join(t, NULL);
        pthread_barrier_destroy(&x.b);
        assert_int_equal(rp_check(p), 0);
        assert_int_equal(log.count, 0);
        rp_pool_destroy(p);
    }
}

/* ---- runs (docs/DESIGN.md "Runs") --------------------------------------- */

struct run_ctx {
    rp_pool *p;
    pthread_barrier_t b;
    void *obj;           /* the thread's one 64 B object */
};

/* Allocate one 64 B object (its slab starts a run), let the main thread
 * work, free it and exit (the run goes back). */
static void *run_worker(void *arg)
{
    struct run_ctx *x = arg;
    x->obj = rp_alloc(x->p, 64);
    assert_non_null(x->obj);
    pthread_barrier_wait(&x->b); /* allocated: main works */
    pthread_barrier_wait(&x->b); /* main done */
    rp_free(x->p, x->obj);
    return NULL;
}

#define GRANULE (64 * KiB)
#define SLAB_OBJS_64 ((int)(GRANULE / 64))

static uintptr_t granule_of(const void *o)
{
    return (uintptr_t)o & ~(uintptr_t)(GRANULE - 1);
}

/* Two threads that need slabs at the same time each get theirs side by
 * side: the main thread's first 4 slabs of 64 B objects are 4 adjacent
 * granules although another thread took a slab between its first and its
 * second. When that thread exits, what is left of its run is reused by the
 * next thread before any new address space is carved. */
static void test_slab_run_keeps_threads_apart(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    static void *o[4 * SLAB_OBJS_64];
    o[0] = rp_alloc(p, 64);
    assert_non_null(o[0]);
    struct run_ctx x = {.p = p};
    pthread_barrier_init(&x.b, NULL, 2);
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_worker, &x), 0);
    pthread_barrier_wait(&x.b);
    uintptr_t other = granule_of(x.obj);
    assert_true(other != granule_of(o[0]));
    for (int i = 1; i < 4 * SLAB_OBJS_64; i++) {
        o[i] = rp_alloc(p, 64);
        assert_non_null(o[i]);
        memset(o[i], 0x5a, 64);
    }
    uintptr_t g0 = granule_of(o[0]);
    for (int i = 0; i < 4 * SLAB_OBJS_64; i++) {
        uintptr_t g = granule_of(o[i]);
        assert_true(g >= g0 && g < g0 + 4 * GRANULE);
        assert_true(g != other);
    }
    assert_int_equal(rp_check(p), 0);
    pthread_barrier_wait(&x.b);
    pthread_join(t, NULL);
    assert_int_equal(rp_check(p), 0);

    /* The worker's run went back to the free stack: a new thread's slab
     * comes from it, and nothing new is carved. */
    rp_stats before = rp_test_stats(p);
    x.obj = NULL;
    assert_int_equal(pthread_create(&t, NULL, run_worker, &x), 0);
    pthread_barrier_wait(&x.b);
    rp_stats after = rp_test_stats(p);
    assert_int_equal(after.carves, before.carves);
    assert_int_equal(after.virtual_bytes - after.metadata_bytes,
                     before.virtual_bytes - before.metadata_bytes); /* a shard may be new */
    assert_true(granule_of(x.obj) > other && granule_of(x.obj) < other + 1 * MiB);
    pthread_barrier_wait(&x.b);
    pthread_join(t, NULL);
    for (int i = 0; i < 4 * SLAB_OBJS_64; i++)
        rp_free(p, o[i]);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(rp_test_stats(p).slab_bytes, 0);
    assert_int_equal(log.count, 0);
    pthread_barrier_destroy(&x.b);
    rp_pool_destroy(p);
}

/* A run never causes an ENOMEM: at a virtual budget with no room for a
 * run, the carve falls back to one region; with no room for any carve,
 * another thread's run is taken back. Neither counts a failure. */
static void test_slab_run_returned_at_budget(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    struct run_ctx x = {.p = p};
    pthread_barrier_init(&x.b, NULL, 2);

    /* Room for a few regions (and two threads' shards), not for a run: the
     * main thread's first slab and the worker's are single regions. */
    rp_stats k = rp_test_stats(p);
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, k.virtual_bytes + 8 * GRANULE), 0);
    void *first = rp_alloc(p, 64);
    assert_non_null(first);
    rp_stats a = rp_test_stats(p);
    assert_int_equal(a.virtual_bytes - a.metadata_bytes,
                     k.virtual_bytes - k.metadata_bytes + GRANULE);
    k = a;
    pthread_t t;
    assert_int_equal(pthread_create(&t, NULL, run_worker, &x), 0);
    pthread_barrier_wait(&x.b);
    a = rp_test_stats(p);
    assert_int_equal(a.virtual_bytes - a.metadata_bytes,
                     k.virtual_bytes - k.metadata_bytes + GRANULE);
    assert_int_equal(a.fail_virtual, 0);
    pthread_barrier_wait(&x.b);
    pthread_join(t, NULL);
    assert_int_equal(rp_check(p), 0);

    /* A thread holding a run, no other free region, no room for a carve:
     * the main thread's slab comes from the run. */
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, c.reserve_bytes), 0);
    void *hold[64];
    int nh = 0;
    for (;;) {
        k = rp_test_stats(p);
        if (k.region_dirty_bytes + k.region_clean_bytes == 0)
            break;
        assert_true(nh < 64);
        hold[nh] = rp_region_acquire(p, GRANULE);
        assert_non_null(hold[nh]);
        nh++;
    }
    assert_int_equal(pthread_create(&t, NULL, run_worker, &x), 0);
    pthread_barrier_wait(&x.b);
    k = rp_test_stats(p);
    assert_int_equal(k.region_clean_bytes, 15 * GRANULE); /* the worker's run */
    assert_int_equal(k.region_dirty_bytes, 0);
    assert_int_equal(rp_budget_set(p, RP_BUDGET_VIRTUAL, k.virtual_bytes), 0);
    void *o = rp_alloc(p, 1024);
    assert_non_null(o);
    memset(o, 1, 1024);
    a = rp_test_stats(p);
    assert_int_equal(a.virtual_bytes, k.virtual_bytes);
    assert_int_equal(a.carves, k.carves);
    assert_int_equal(a.fail_virtual, 0);
    assert_int_equal(rp_check(p), 0);
    pthread_barrier_wait(&x.b);
    pthread_join(t, NULL);
    rp_free(p, o);
    rp_free(p, first);
    while (nh > 0)
        rp_region_release(p, hold[--nh]);
    assert_int_equal(rp_check(p), 0);
    assert_int_equal(log.count, 0);
    pthread_barrier_destroy(&x.b);
    rp_pool_destroy(p);
}

/* Damaged metadata on the run path: a region of a run whose state word is
 * not RESERVED is reported (RP_ERR_CORRUPT) and never handed out; the rest
 * of that run goes back to the free stacks and the allocation succeeds. */
static void test_slab_run_damaged_descriptor_reported(void **state)
{
    (void)state;
    rp_errlog log = {0};
    rp_pool *p = make_pool(&log, 0);
    static void *o[2 * SLAB_OBJS_64];
    o[0] = rp_alloc(p, 64);
    assert_non_null(o[0]);
    char *next = (char *)granule_of(o[0]) + GRANULE; /* first region of the run */
    rp_rdesc *d = rpi_desc_lookup(p, next);
    assert_non_null(d);
    assert_int_equal(rp_load_relaxed_u32(&d->word), RW_MAKE(RS_RESERVED, 0, RK_NONE));
    rp_store_relaxed_u32(&d->word, RW_MAKE(RS_IN_USE, 0, RK_USER)); /* damage */
    for (int i = 1; i < 2 * SLAB_OBJS_64; i++) {
        o[i] = rp_alloc(p, 64);
        assert_non_null(o[i]);
        assert_true(granule_of(o[i]) != (uintptr_t)next);
        memset(o[i], 0x33, 64);
    }
    assert_int_equal(log.count, 1);
    assert_int_equal(log.last_code, RP_ERR_CORRUPT);
    /* The damaged run's other 14 regions went back to the free stack,
     * clean; the second slab is the first region of a new run (15 more
     * left in it); the damaged region is never handed out and stays in
     * the clean gauge it was counted in. */
    assert_int_equal(rp_test_stats(p).cls[0].free_clean, 14 + 15 + 1);
    for (int i = 0; i < 2 * SLAB_OBJS_64; i++)
        rp_free(p, o[i]);
    assert_int_equal(log.count, 1);
    rp_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_slab_waste_bound_every_size),
        cmocka_unit_test(test_slab_class_boundaries),
        cmocka_unit_test(test_slab_heap_threshold),
        cmocka_unit_test(test_slab_mid_size_heap_full),
        cmocka_unit_test(test_slab_small_region_max),
        cmocka_unit_test(test_slab_zero_size_unique),
        cmocka_unit_test(test_slab_calloc_zeroes),
        cmocka_unit_test(test_slab_realloc_across_classes),
        cmocka_unit_test(test_slab_aligned_every_pow2),
        cmocka_unit_test(test_slab_stats_exact),
        cmocka_unit_test(test_slab_counted_set_exact),
        cmocka_unit_test(test_slab_pools_come_and_go),
        cmocka_unit_test(test_slab_bad_input_plain),
        cmocka_unit_test(test_slab_bad_input_hardened),
        cmocka_unit_test(test_slab_hardened_corrupt_link),
        cmocka_unit_test(test_slab_remote_double_free),
        cmocka_unit_test(test_slab_stale_remote_double_free),
        cmocka_unit_test(test_slab_remote_batches),
        cmocka_unit_test(test_slab_remote_every_class),
        cmocka_unit_test(test_slab_batch_into_abandoned_slab),
        cmocka_unit_test(test_slab_producer_consumer),
        cmocka_unit_test(test_slab_producer_consumer_hardened),
        cmocka_unit_test(test_slab_thread_exit_abandon_adopt),
        cmocka_unit_test(test_slab_exit_races_remote_frees),
        cmocka_unit_test(test_slab_detach_then_free),
        cmocka_unit_test(test_slab_idle_thread_empties_given_back),
        cmocka_unit_test(test_slab_run_keeps_threads_apart),
        cmocka_unit_test(test_slab_run_returned_at_budget),
        cmocka_unit_test(test_slab_run_damaged_descriptor_reported),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
