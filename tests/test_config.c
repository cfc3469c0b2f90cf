/* test_config.c -- defaults, presets, validation of every field, environment
 * parsing, pool creation refusing bad configs, stats output formats. */
#include "testutil.h"

#include <errno.h>

struct bad {
    const char *field;       /* must appear in the message */
    void (*apply)(rp_config *);
    const char *range;       /* must appear in the message */
};

static void b_reserve_small(rp_config *c) { c->reserve_bytes = 1 * MiB; }
static void b_reserve_huge(rp_config *c) { c->reserve_bytes = (size_t)1 << 50; }
static void b_vbudget(rp_config *c) { c->virtual_budget = 1000; }
static void b_vbudget_over(rp_config *c) { c->virtual_budget = c->reserve_bytes + 1 * MiB; }
static void b_pbudget(rp_config *c) { c->physical_budget = 4096; }
static void b_rmin_pow2(rp_config *c) { c->region_min_bytes = 100 * KiB; }
static void b_rmin_small(rp_config *c) { c->region_min_bytes = 1024; }
static void b_rmax_pow2(rp_config *c) { c->region_max_bytes = 3 * MiB; }
static void b_rmax_lt_min(rp_config *c) { c->region_min_bytes = 1 * MiB; c->region_max_bytes = 512 * KiB; }
static void b_rmax_big(rp_config *c) { c->region_max_bytes = 2 * GiB; }
static void b_rmax_reserve(rp_config *c) { c->reserve_bytes = 64 * MiB; c->heap_bytes = 0; c->region_max_bytes = 32 * MiB; }
static void b_delay(rp_config *c) { c->purge_delay_ms = 3600001; }
static void b_advice(rp_config *c) { c->purge_advice = 2; }
static void b_advice_neg(rp_config *c) { c->purge_advice = -1; }
static void b_thread(rp_config *c) { c->purge_thread = 5; }
static void b_rcache_small(rp_config *c) { c->region_cache_bytes = 4096; }
static void b_rcache_big(rp_config *c) { c->region_cache_bytes = 2 * GiB; }
static void b_heap_small(rp_config *c) { c->heap_bytes = 4096; }
static void b_heap_big(rp_config *c) { c->heap_bytes = c->reserve_bytes / 2 + 1 * MiB; }
static void b_hardened(rp_config *c) { c->hardened = 2; }
static void b_strict(rp_config *c) { c->strict = -3; }
static void b_soft(rp_config *c) { c->physical_budget = 64 * MiB; c->physical_soft_limit = 128 * MiB; }
static void b_soft_small(rp_config *c) { c->physical_soft_limit = 10; }

static const struct bad bads[] = {
    {"reserve_bytes", b_reserve_small, "[16777216, "},
    {"reserve_bytes", b_reserve_huge, "[16777216, "},
    {"virtual_budget", b_vbudget, "0 or in [1048576, "},
    {"virtual_budget", b_vbudget_over, "reserve_bytes"},
    {"physical_budget", b_pbudget, "0 or in [1048576, "},
    {"region_min_bytes", b_rmin_pow2, "power of two"},
    {"region_min_bytes", b_rmin_small, "[4096, 1073741824]"},
    {"region_max_bytes", b_rmax_pow2, "power of two"},
    {"region_max_bytes", b_rmax_lt_min, ">= region_min_bytes"},
    {"region_max_bytes", b_rmax_big, "[4096, 1073741824]"},
    {"region_max_bytes", b_rmax_reserve, "reserve_bytes/4"},
    {"purge_delay_ms", b_delay, "[0, 3600000]"},
    {"purge_advice", b_advice, "[0, 1]"},
    {"purge_advice", b_advice_neg, "[0, 1]"},
    {"purge_thread", b_thread, "[0, 1]"},
    {"region_cache_bytes", b_rcache_small, "0 or in [65536, 1073741824]"},
    {"region_cache_bytes", b_rcache_big, "0 or in [65536, 1073741824]"},
    {"heap_bytes", b_heap_small, "0 or in [1048576, "},
    {"heap_bytes", b_heap_big, "reserve_bytes/2"},
    {"hardened", b_hardened, "[0, 1]"},
    {"strict", b_strict, "[0, 1]"},
    {"physical_soft_limit", b_soft, "<= physical_budget"},
    {"physical_soft_limit", b_soft_small, "0 or in [1048576, "},
};

static void test_config_defaults_and_presets_valid(void **state)
{
    (void)state;
    rp_config c;
    char err[256];
    assert_int_equal(rp_config_init(&c), 0);
    assert_int_equal(rp_config_validate(&c, err, sizeof err), 0);
    assert_int_equal(c.reserve_bytes, 64 * GiB);
    assert_int_equal(rp_config_preset(&c, "lowmem"), 0);
    assert_int_equal(rp_config_validate(&c, err, sizeof err), 0);
    assert_int_equal(c.purge_delay_ms, 0);
    assert_int_equal(c.region_max_bytes, 4 * MiB);
    rp_config before = c;
    assert_int_equal(rp_config_preset(&c, "nonsense"), -EINVAL);
    assert_memory_equal(&c, &before, sizeof c);
    assert_int_equal(rp_config_init(NULL), -EINVAL);
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    rp_pool_destroy(p);
    p = rp_pool_create(NULL); /* defaults */
    assert_non_null(p);
    rp_pool_destroy(p);
}

static void test_config_every_invalid_field_named(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof bads / sizeof bads[0]; i++) {
        rp_config c;
        rp_config_init(&c);
        bads[i].apply(&c);
        char err[256] = "";
        assert_int_equal(rp_config_validate(&c, err, sizeof err), -EINVAL);
        if (!strstr(err, bads[i].field) || !strstr(err, bads[i].range))
            fail_msg("case %zu: message '%s' lacks '%s' or '%s'", i, err, bads[i].field,
                     bads[i].range);
        /* The message also names the offending value. */
        assert_non_null(strchr(err, '='));
        /* Pool creation refuses it: NULL, EINVAL, reason through the hook. */
        rp_errlog log = {0};
        c.error_hook = rp_errlog_hook;
        c.error_opaque = &log;
        errno = 0;
        assert_null(rp_pool_create(&c));
        assert_int_equal(errno, EINVAL);
        assert_int_equal(log.count, 1);
        assert_int_equal(log.last_code, RP_ERR_MISUSE);
        assert_string_equal(log.last_msg, err);
    }
    char err[64];
    assert_int_equal(rp_config_validate(NULL, err, sizeof err), -EINVAL);
}

static void test_config_from_env(void **state)
{
    (void)state;
    rp_config c;
    char err[512];
    rp_config_init(&c);
    unsetenv("RPOOL_TEST_CONF");
    assert_int_equal(rp_config_from_env(&c, "RPOOL_TEST_CONF", err, sizeof err), 0);
    setenv("RPOOL_TEST_CONF", "preset=lowmem,physical_budget=2G,purge_delay_ms=500,heap_bytes=16M,purge_advice=free", 1);
    assert_int_equal(rp_config_from_env(&c, "RPOOL_TEST_CONF", err, sizeof err), 0);
    assert_int_equal(c.physical_budget, 2 * GiB);
    assert_int_equal(c.purge_delay_ms, 500);
    assert_int_equal(c.heap_bytes, 16 * MiB);
    assert_int_equal(c.reserve_bytes, 4 * GiB); /* from the preset */
    assert_int_equal(c.purge_advice, RP_PURGE_FREE);

    struct {
        const char *val, *want1, *want2;
    } bad[] = {
        {"bogus_key=1", "unknown key 'bogus_key'", "keys:"},
        {"physical_budget=12Q", "physical_budget = '12Q'", "size"},
        {"physical_budget=", "physical_budget = ''", "size"},
        {"purge_delay_ms=99999999", "purge_delay_ms", "[0, 3600000]"},
        {"region_min_bytes=100K", "region_min_bytes", "power of two"},
        {"preset=tiny", "preset = 'tiny'", "server, lowmem"},
        {"physical_budget", "is not key=value", "physical_budget"},
        {"purge_thread=7", "purge_thread", "[0, 1]"},
        {"region_cache_bytes=1K", "region_cache_bytes", "[65536, 1073741824]"},
        {"reserve_bytes=99999999999999999999999", "reserve_bytes", "size"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rp_config before = c;
        setenv("RPOOL_TEST_CONF", bad[i].val, 1);
        err[0] = '\0';
        assert_int_equal(rp_config_from_env(&c, "RPOOL_TEST_CONF", err, sizeof err), -EINVAL);
        if (!strstr(err, bad[i].want1) || !strstr(err, bad[i].want2))
            fail_msg("'%s' -> '%s'", bad[i].val, err);
        assert_memory_equal(&c, &before, sizeof c); /* unchanged on error */
    }
    unsetenv("RPOOL_TEST_CONF");
}

struct sink {
    char buf[65536];
    size_t len;
};

static void sink_write(void *opaque, const char *text)
{
    struct sink *s = opaque;
    size_t n = strlen(text);
    if (s->len + n < sizeof s->buf) {
        memcpy(s->buf + s->len, text, n + 1);
        s->len += n;
    }
}

static void test_config_print_round_trip(void **state)
{
    (void)state;
    rp_config c;
    rp_config_init(&c);
    struct sink s = {.len = 0};
    assert_int_equal(rp_config_print(&c, sink_write, &s), 0);
    assert_non_null(strstr(s.buf, "reserve_bytes=68719476736\n"));
    assert_non_null(strstr(s.buf, "purge_delay_ms=1000\n"));
}

/* The stats outputs: JSON checked by a real parser (python3's json module,
 * which rejects duplicate keys through object_pairs_hook), Prometheus and
 * text for their key lines. */
static void test_stats_formats(void **state)
{
    (void)state;
    rp_config c = rp_test_config(NULL);
    rp_pool *p = rp_pool_create(&c);
    void *r = rp_region_acquire(p, 256 * KiB);
    assert_non_null(r);
    /* A thread arena and an explicit arena to list. */
    assert_non_null(rp_arena_alloc(rp_arena_thread(p), 1000, 0));
    rp_arena *ea = rp_arena_create(p, 1 * MiB);
    assert_non_null(ea);
    assert_non_null(rp_arena_alloc(ea, 5000, 0));
    struct sink s = {.len = 0};
    assert_int_equal(rp_stats_print(p, sink_write, &s, RP_STATS_JSON), 0);
    char path[] = "/tmp/rpool-json-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, s.buf, s.len), (ssize_t)s.len);
    close(fd);
    char cmd[1024];
    snprintf(cmd, sizeof cmd,
             "python3 -c 'import json,sys\n"
             "def nodup(pairs):\n"
             "    keys=[k for k,_ in pairs]\n"
             "    assert len(keys)==len(set(keys)), keys\n"
             "    return dict(pairs)\n"
             "d=json.load(open(sys.argv[1]), object_pairs_hook=nodup)\n"
             "assert d[\"schema_version\"]==2\n"
             "t=d[\"thread_list\"]\n"
             "assert len(t)==1 and t[0][\"arena\"][\"bytes_in_use\"]==1000, t\n"
             "a=d[\"arena_list\"]\n"
             "assert len(a)==1 and a[0][\"bytes_in_use\"]==5000 and a[0][\"budget_bytes\"]==1048576, a\n"
             "u=262144+t[0][\"arena\"][\"region_bytes\"]+a[0][\"region_bytes\"]\n"
             "assert d[\"regions\"][\"in_use_bytes\"]==u, (d[\"regions\"], u)\n"
             "assert d[\"threads_unlisted\"]==0 and d[\"arenas_unlisted\"]==0\n'"
             " %s", path);
    assert_int_equal(system(cmd), 0);
    unlink(path);

    s.len = 0;
    assert_int_equal(rp_stats_print(p, sink_write, &s, RP_STATS_PROMETHEUS), 0);
    assert_non_null(strstr(s.buf, "\nrpool_physical_bytes "));
    assert_non_null(strstr(s.buf, "rpool_budget_bytes{kind=\"virtual\"} "));
    assert_non_null(strstr(s.buf, "rpool_region_reuses_total{class=\"262144\"} 0"));
    s.len = 0;
    assert_int_equal(rp_stats_print(p, sink_write, &s, RP_STATS_TEXT), 0);
    assert_non_null(strstr(s.buf, "reconciliation"));
    assert_null(strstr(s.buf, "MISMATCH"));
    assert_non_null(strstr(s.buf, "threads (1 listed):\n  thread "));
    assert_non_null(strstr(s.buf, ": arena in use 1000, peak 1000, 1 regions ("));
    assert_non_null(strstr(s.buf, "explicit arenas (1 listed):\n  arena 1: in use 5000, peak 5000, "));
    assert_non_null(strstr(s.buf, "budget 1048576\n"));
    assert_int_equal(rp_stats_print(p, sink_write, &s, 42), -EINVAL);
    rp_stats st;
    assert_int_equal(rp_stats_get(p, &st), 0);
    assert_int_equal(st.size, sizeof st);
    assert_int_equal(st.version, RP_STATS_VERSION);
    assert_int_equal(rp_stats_get(NULL, &st), -EINVAL);
    rp_arena_destroy(ea);
    rp_region_release(p, r);
    rp_pool_destroy(p);
}

static void test_config_version(void **state)
{
    (void)state;
    assert_string_equal(rp_version(), RP_VERSION_STRING);
}

/* The heap's worst-case fragmentation warning goes through the error hook
 * (not stderr), is not counted as an error, and strict mode does not abort
 * for it. A big enough heap draws no warning. */
static void test_config_heap_warning_through_hook(void **state)
{
    (void)state;
    for (int strict = 0; strict < 2; strict++) {
        rp_errlog log = {0};
        rp_config c = rp_test_config(&log);
        c.heap_bytes = 1 * MiB;
        c.strict = strict;
        rp_pool *p = rp_pool_create(&c);
        assert_non_null(p);
        assert_int_equal(log.count, 1);
        assert_int_equal(log.last_code, RP_ERR_WARNING);
        assert_non_null(strstr(log.last_msg, "worst-case fragmentation"));
        assert_non_null(strstr(log.last_msg, "heap_bytes=1048576"));
        assert_int_equal(rp_test_stats(p).errors, 0);
        rp_pool_destroy(p);
    }
    rp_errlog log = {0};
    rp_config c = rp_test_config(&log);
    c.heap_bytes = 1 * GiB / 2;
    rp_pool *p = rp_pool_create(&c);
    assert_non_null(p);
    assert_int_equal(log.count, 0);
    rp_pool_destroy(p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_config_heap_warning_through_hook),
        cmocka_unit_test(test_config_defaults_and_presets_valid),
        cmocka_unit_test(test_config_every_invalid_field_named),
        cmocka_unit_test(test_config_from_env),
        cmocka_unit_test(test_config_print_round_trip),
        cmocka_unit_test(test_stats_formats),
        cmocka_unit_test(test_config_version),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
