/* test_asan.c -- in ASan builds, memory rpool holds but the user must not
 * touch is poisoned: a use after release/free inside rpool's own memory is
 * reported by ASan. Each case runs the bad access in a child process and
 * expects the child to die with ASan's report. Skipped in other builds. */
#include "testutil.h"


#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define HAVE_ASAN 1
#else
#define HAVE_ASAN 0
#endif

enum bad { REGION_AFTER_RELEASE, OBJECT_AFTER_FREE, HEAP_AFTER_FREE, ARENA_AFTER_RESET };

static void do_bad(enum bad what)
{
    rp_config c = rp_test_config(NULL);
    c.purge_delay_ms = 1000; /* released regions stay mapped: only ASan can tell */
    rp_pool *p = rp_pool_create(&c);
    volatile char *x = NULL;
    switch (what) {
    case REGION_AFTER_RELEASE:
        x = rp_region_acquire(p, 64 * KiB);
        rp_region_release(p, (void *)x);
        break;
    case OBJECT_AFTER_FREE:
        x = rp_alloc(p, 100);
        rp_free(p, (void *)x);
        break;
    case HEAP_AFTER_FREE:
        x = rp_heap_alloc(p, 50000);
        rp_heap_free(p, (void *)x);
        break;
    case ARENA_AFTER_RESET: {
        rp_arena *a = rp_arena_create(p, 0);
        rp_arena_alloc(a, 64, 16); /* the arena keeps its header up front */
        x = rp_arena_alloc(a, 100, 16);
        rp_arena_reset(a);
        break;
    }
    }
    x[40] = 1; /* must be reported */
    _exit(0);
}

static void run_bad(void *what)
{
    do_bad(*(enum bad *)what);
}

static void expect_report(enum bad what)
{
    if (!HAVE_ASAN)
        skip();
    static char out[1 << 16];
    int st = rp_run_child(run_bad, &what, out, sizeof out);
    if (!(WIFEXITED(st) && WEXITSTATUS(st) != 0) && !WIFSIGNALED(st))
        fail_msg("child survived the bad access");
    if (!strstr(out, "ERROR: AddressSanitizer: use-after-poison"))
        fail_msg("no use-after-poison report:\n%.3000s", out);
}

static void test_asan_region_use_after_release(void **s) { (void)s; expect_report(REGION_AFTER_RELEASE); }
static void test_asan_object_use_after_free(void **s) { (void)s; expect_report(OBJECT_AFTER_FREE); }
static void test_asan_heap_use_after_free(void **s) { (void)s; expect_report(HEAP_AFTER_FREE); }
static void test_asan_arena_use_after_reset(void **s) { (void)s; expect_report(ARENA_AFTER_RESET); }

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_asan_region_use_after_release),
        cmocka_unit_test(test_asan_object_use_after_free),
        cmocka_unit_test(test_asan_heap_use_after_free),
        cmocka_unit_test(test_asan_arena_use_after_reset),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
