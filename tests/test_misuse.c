/* test_misuse.c -- every misuse in one place, each with the exact error
 * code reported through the hook, and each leaving the pool unchanged
 * (rp_check passes, counters as before). Aborting paths (strict mode, a
 * destroyed pool) run in a child process. Every invalid config field is
 * covered, with its message, in test_config.c. */
#include "testutil.h"

#include <errno.h>
#include <stdint.h>

static rp_errlog lg;
static rp_pool *P, *Q;

static int setup(void **state)
{
    (void)state;
    memset(&lg, 0, sizeof lg);
    rp_config c = rp_test_config(&lg);
    c.hardened = 1;
    P = rp_pool_create(&c);
    Q = rp_pool_create(&c);
    return P && Q ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    rp_pool_destroy(Q);
    rp_pool_destroy(P);
    return 0;
}

/* Run fn(arg) expecting exactly one report with `code`; the pool's object,
 * heap and region counters and its invariants must be unchanged. */
#define EXPECT(code, call)                                                    \
    do {                                                                      \
        rp_stats b_ = rp_test_stats(P);                                       \
        int n_ = lg.count;                                                    \
        call;                                                                 \
        if (lg.count != n_ + 1 || lg.last_code != (code))                     \
            fail_msg("%s: %d reports, last code %d (want %d): %s", #call,     \
                     lg.count - n_, (int)lg.last_code, (int)(code),           \
                     lg.last_msg);                                            \
        rp_stats a_ = rp_test_stats(P);                                       \
        assert_int_equal(a_.slab_bytes, b_.slab_bytes);                       \
        assert_int_equal(a_.heap_allocated_bytes, b_.heap_allocated_bytes);   \
        assert_int_equal(a_.region_in_use_bytes, b_.region_in_use_bytes);     \
        assert_int_equal(rp_check(P), 0);                                     \
    } while (0)

static void test_misuse_double_and_delayed_double_free(void **s)
{
    (void)s;
    void *o = rp_alloc(P, 100);
    rp_free(P, o);
    EXPECT(RP_ERR_NOT_LIVE, rp_free(P, o));
    /* Delayed: other traffic in between, the slot not yet reused. */
    void *x = rp_alloc(P, 300);
    void *keep[16];
    for (int i = 0; i < 16; i++)
        keep[i] = rp_alloc(P, 40);
    rp_free(P, x);
    for (int i = 0; i < 16; i++)
        rp_free(P, keep[i]);
    EXPECT(RP_ERR_NOT_LIVE, rp_free(P, x));
    void *h = rp_heap_alloc(P, 50000);
    rp_heap_free(P, h);
    EXPECT(RP_ERR_NOT_LIVE, rp_heap_free(P, h));
    void *r = rp_region_acquire(P, 64 * KiB);
    rp_region_release(P, r);
    EXPECT(RP_ERR_NOT_LIVE, rp_region_release(P, r));
}

static void test_misuse_foreign_interior_other_pool(void **s)
{
    (void)s;
    int stack_var;
    EXPECT(RP_ERR_FOREIGN, rp_free(P, &stack_var));
    EXPECT(RP_ERR_FOREIGN, rp_region_release(P, &stack_var));
    void *qo = rp_alloc(Q, 64);
    EXPECT(RP_ERR_FOREIGN, rp_free(P, qo)); /* another pool's object */
    rp_free(Q, qo);
    void *o = rp_alloc(P, 256);
    EXPECT(RP_ERR_INTERIOR, rp_free(P, (char *)o + 8));
    rp_free(P, o);
    void *r = rp_region_acquire(P, 128 * KiB);
    EXPECT(RP_ERR_INTERIOR, rp_region_release(P, (char *)r + 4096));
    rp_region_release(P, r);
}

static void test_misuse_wrong_api(void **s)
{
    (void)s;
    void *r = rp_region_acquire(P, 64 * KiB);
    void *o = rp_alloc(P, 64);
    void *h = rp_heap_alloc(P, 40000);
    EXPECT(RP_ERR_WRONG_API, rp_free(P, r));              /* region to objects */
    EXPECT(RP_ERR_WRONG_API, rp_region_release(P, o));    /* object to regions */
    EXPECT(RP_ERR_WRONG_API, rp_heap_free(P, r));         /* region to the heap */
    rp_arena *a = rp_arena_create(P, 0);
    void *ab = rp_arena_alloc(a, 64, 16);
    EXPECT(RP_ERR_WRONG_API, rp_free(P, ab));             /* arena memory freed */
    rp_arena_destroy(a);
    rp_free(P, o);
    rp_heap_free(P, h);
    rp_region_release(P, r);
}

static void test_misuse_arena(void **s)
{
    (void)s;
    rp_arena *t = rp_arena_thread(P);
    EXPECT(RP_ERR_MISUSE, rp_arena_destroy(t));
    rp_arena *a = rp_arena_create(P, 0);
    rp_arena *b = rp_arena_create(P, 0);
    rp_arena_alloc(b, 100, 16);
    rp_arena_pos pos_b = rp_arena_mark(b);
    EXPECT(RP_ERR_MISUSE, rp_arena_rewind(a, pos_b)); /* another arena's mark */
    rp_arena_destroy(a);
    rp_arena_destroy(b);
    rp_thread_detach(P);
}

static void test_misuse_sizes_and_alignment(void **s)
{
    (void)s;
    int n = lg.count;
    errno = 0;
    assert_null(rp_calloc(P, SIZE_MAX / 2, 3));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_alloc(P, SIZE_MAX - 8));
    assert_int_equal(errno, ENOMEM);
    errno = 0;
    assert_null(rp_aligned_alloc(P, 48, 64));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(rp_region_acquire(P, 0));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(rp_arena_alloc(rp_arena_thread(P), 16, 3));
    assert_int_equal(errno, EINVAL);
    errno = 0;
    assert_null(RP_NEW(rp_allocator_pool(P), uint64_t, SIZE_MAX / 4));
    assert_int_equal(errno, ENOMEM);
    /* Bad sizes are failures, not misuse reports. */
    assert_int_equal(lg.count, n);
    assert_int_equal(rp_check(P), 0);
}

/* A destroyed pool: destroying it again is detected (the registry no longer
 * knows it) and reported on stderr; run in a child, since any other use of
 * its unmapped memory would fault. Strict mode aborts after the report. */
static void destroyed_then_strict(void *arg)
{
    (void)arg;
    rp_config c = rp_test_config(NULL);
    rp_pool *p = rp_pool_create(&c);
    rp_pool_destroy(p);
    rp_pool_destroy(p);
    c.strict = 1;
    p = rp_pool_create(&c);
    int x;
    rp_free(p, &x);
}

static void test_misuse_destroyed_pool_and_strict(void **s)
{
    (void)s;
    char out[8192];
    int st = rp_run_child(destroyed_then_strict, NULL, out, sizeof out);
    if (!strstr(out, "[misuse] rp_pool_destroy(") || !strstr(out, "not a live pool"))
        fail_msg("no destroyed-pool report: %s", out);
    if (!strstr(out, "[foreign-pointer]") || !WIFSIGNALED(st) || WTERMSIG(st) != SIGABRT)
        fail_msg("strict mode did not report and abort: %s", out);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_misuse_double_and_delayed_double_free),
        cmocka_unit_test(test_misuse_foreign_interior_other_pool),
        cmocka_unit_test(test_misuse_wrong_api),
        cmocka_unit_test(test_misuse_arena),
        cmocka_unit_test(test_misuse_sizes_and_alignment),
        cmocka_unit_test(test_misuse_destroyed_pool_and_strict),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
