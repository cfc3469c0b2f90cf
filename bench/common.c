/* common.c -- clocks, RNG helpers, RSS, threads, reporting and allocator
 * identity for rpbench. See common.h for the process protocol.
 *
 * Threads: rpb_run_threads owns the start barrier and the start/stop slots;
 * slot i is written only by thread i and read by the main thread after
 * pthread_join (the join orders the writes before the reads).
 */
#define _GNU_SOURCE
#include "common.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__)
#include <x86intrin.h>
#endif

/* ------------------------------------------------------------------------ */
/* Clocks.                                                                   */

uint64_t rpb_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t rpb_ticks(void)
{
#if defined(__x86_64__)
    /* lfence keeps the read from drifting ahead of the measured operation. */
    _mm_lfence();
    uint64_t t = __rdtsc();
    _mm_lfence();
    return t;
#else
    return rpb_now_ns();
#endif
}

double rpb_ns_per_tick(void)
{
    static double cached;
    if (cached > 0)
        return cached;
#if defined(__x86_64__)
    /* Calibrate the TSC against the monotonic clock over 50 ms. */
    uint64_t n0 = rpb_now_ns(), t0 = rpb_ticks();
    struct timespec d = {0, 50 * 1000 * 1000};
    nanosleep(&d, NULL);
    uint64_t n1 = rpb_now_ns(), t1 = rpb_ticks();
    cached = (t1 > t0) ? (double)(n1 - n0) / (double)(t1 - t0) : 1.0;
#else
    cached = 1.0;
#endif
    return cached;
}

/* ------------------------------------------------------------------------ */
/* Random helpers.                                                           */

size_t rpb_rng_logsize(rpb_rng *r, size_t lo, size_t hi)
{
    /* lo * (hi/lo)^u with u uniform in [0, 1): integer-only, via a uniform
     * exponent and a uniform mantissa inside that octave. */
    unsigned lo_l2 = 63u - (unsigned)__builtin_clzll(lo);
    unsigned hi_l2 = 63u - (unsigned)__builtin_clzll(hi);
    unsigned e = lo_l2 + (unsigned)rpb_rng_below(r, hi_l2 - lo_l2 + 1);
    size_t base = (size_t)1 << e;
    size_t s = base + (size_t)rpb_rng_below(r, base);
    if (s < lo)
        s = lo;
    if (s > hi)
        s = hi;
    return s;
}

void rpb_permutation(uint32_t *perm, size_t n, uint64_t seed)
{
    rpb_rng r;
    rpb_rng_seed(&r, seed);
    for (size_t i = 0; i < n; i++)
        perm[i] = (uint32_t)i;
    for (size_t i = n; i > 1; i--) {
        size_t j = (size_t)rpb_rng_below(&r, i);
        uint32_t t = perm[i - 1];
        perm[i - 1] = perm[j];
        perm[j] = t;
    }
}

/* ------------------------------------------------------------------------ */
/* Memory.                                                                   */

size_t rpb_page_size(void)
{
    static size_t ps;
    if (!ps)
        ps = (size_t)sysconf(_SC_PAGESIZE);
    return ps;
}

void *rpb_hbuf(size_t bytes)
{
    if (bytes == 0)
        bytes = 1;
    void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        rpb_error("harness mmap of %zu bytes failed: %s", bytes,
                  strerror(errno));
    return p;
}

void rpb_hbuf_free(void *p, size_t bytes)
{
    if (p)
        munmap(p, bytes ? bytes : 1);
}

size_t rpb_rss_bytes(void)
{
    /* statm: size resident shared text lib data dt, in pages. Read with
     * plain syscalls: stdio would allocate from the allocator under test. */
    char buf[256];
    int fd = open("/proc/self/statm", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    unsigned long size = 0, res = 0;
    if (sscanf(buf, "%lu %lu", &size, &res) != 2)
        return 0;
    return (size_t)res * rpb_page_size();
}

size_t rpb_rss_peak_bytes(void)
{
    char buf[4096];
    int fd = open("/proc/self/status", O_RDONLY);
    if (fd < 0)
        return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = 0;
    const char *h = strstr(buf, "VmHWM:");
    if (!h)
        return 0;
    return (size_t)strtoull(h + 6, NULL, 10) * 1024u;
}

int rpb_rss_peak_reset(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY);
    if (fd < 0)
        return -1;
    ssize_t n = write(fd, "5", 1);
    close(fd);
    return n == 1 ? 0 : -1;
}

/* ------------------------------------------------------------------------ */
/* Threads.                                                                  */

#define RPB_MAX_THREADS 64

static pthread_barrier_t start_barrier;
static uint64_t t_start[RPB_MAX_THREADS], t_stop[RPB_MAX_THREADS];

typedef struct tharg {
    int idx;
    rpb_thread_fn fn;
    void *ctx;
} tharg;

static void *thread_main(void *p)
{
    tharg *t = p;
    t->fn(t->idx, t->ctx);
    return NULL;
}

void rpb_start(int idx)
{
    pthread_barrier_wait(&start_barrier);
    t_start[idx] = rpb_now_ns();
}

void rpb_stop(int idx) { t_stop[idx] = rpb_now_ns(); }

uint64_t rpb_run_threads(int n, rpb_thread_fn fn, void *ctx)
{
    if (n < 1 || n > RPB_MAX_THREADS)
        rpb_error("threads=%d out of range [1, %d]", n, RPB_MAX_THREADS);
    pthread_t th[RPB_MAX_THREADS];
    tharg ta[RPB_MAX_THREADS];
    pthread_barrier_init(&start_barrier, NULL, (unsigned)n);
    for (int i = 0; i < n; i++) {
        ta[i] = (tharg){i, fn, ctx};
        int e = pthread_create(&th[i], NULL, thread_main, &ta[i]);
        if (e)
            rpb_error("pthread_create: %s", strerror(e));
    }
    for (int i = 0; i < n; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&start_barrier);
    uint64_t lo = UINT64_MAX, hi = 0;
    for (int i = 0; i < n; i++) {
        if (t_start[i] < lo)
            lo = t_start[i];
        if (t_stop[i] > hi)
            hi = t_stop[i];
    }
    return hi > lo ? hi - lo : 1;
}

int rpb_pin_cpus(int n)
{
    cpu_set_t have, want;
    if (sched_getaffinity(0, sizeof have, &have) != 0)
        return -1;
    CPU_ZERO(&want);
    int got = 0;
    for (int c = 0; c < CPU_SETSIZE && got < n; c++) {
        if (CPU_ISSET(c, &have)) {
            CPU_SET(c, &want);
            got++;
        }
    }
    if (got < n)
        rpb_info("only %d CPUs available for cpus=%d", got, n);
    return sched_setaffinity(0, sizeof want, &want);
}

int rpb_cpu_count(void)
{
    cpu_set_t have;
    if (sched_getaffinity(0, sizeof have, &have) != 0)
        return 0;
    return CPU_COUNT(&have);
}

int rpb_pin_thread(int k)
{
    cpu_set_t have, want;
    if (sched_getaffinity(0, sizeof have, &have) != 0)
        return -1;
    int n = CPU_COUNT(&have);
    if (n < 1)
        return -1;
    k %= n;
    CPU_ZERO(&want);
    for (int c = 0; c < CPU_SETSIZE; c++) {
        if (CPU_ISSET(c, &have) && k-- == 0) {
            CPU_SET(c, &want);
            break;
        }
    }
    return pthread_setaffinity_np(pthread_self(), sizeof want, &want) ? -1
                                                                       : 0;
}

/* ------------------------------------------------------------------------ */
/* Reporting: straight to fd 1 in one write per line.                        */

static void emit(const char *prefix, const char *fmt, va_list ap)
{
    char line[1024];
    int k = snprintf(line, sizeof line, "%s", prefix);
    int m = vsnprintf(line + k, sizeof line - (size_t)k, fmt, ap);
    size_t len = (size_t)k + (m > 0 ? (size_t)m : 0);
    if (len > sizeof line - 2)
        len = sizeof line - 2;
    line[len++] = '\n';
    fflush(stdout);
    ssize_t w = write(1, line, len);
    (void)w;
}

void rpb_metric(const char *name, double value)
{
    char line[256];
    int n = snprintf(line, sizeof line, "M metric=%s value=%.6g\n", name,
                     value);
    ssize_t w = write(1, line, (size_t)n);
    (void)w;
}

void rpb_info(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit("INFO ", fmt, ap);
    va_end(ap);
}

void rpb_error(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit("ERROR reason=", fmt, ap);
    va_end(ap);
    _exit(4);
}

void rpb_alloc_failed(const char *what, size_t n)
{
    rpb_error("%s(%zu) returned NULL: %s", what, n, strerror(errno));
}

void rpb_unavailable(const char *what)
{
    char line[512];
    int n = snprintf(line, sizeof line,
                     "UNAVAILABLE reason=%s not in librpool.a (link probe "
                     "failed)\n",
                     what);
    ssize_t w = write(1, line, (size_t)n);
    (void)w;
    _exit(2);
}

/* ------------------------------------------------------------------------ */
/* Allocator identity.                                                       */

/* A symbol only that library defines, and a piece of its file name. */
static const char *const peer_sym[] = {
    [RPB_JEMALLOC] = "mallctl",
    [RPB_MIMALLOC] = "mi_version",
    [RPB_TCMALLOC] = "tc_version",
    [RPB_RPOOL_MALLOC] = "rp_version",
};
static const char *const peer_lib[] = {
    [RPB_GLIBC] = "libc.so",
    [RPB_JEMALLOC] = "jemalloc",
    [RPB_MIMALLOC] = "mimalloc",
    [RPB_TCMALLOC] = "tcmalloc",
    [RPB_RPOOL_MALLOC] = "librpool-malloc",
};

static void missing(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit("MISSING reason=", fmt, ap);
    va_end(ap);
    _exit(3);
}

void rpb_verify_malloc(const rpb_args *a)
{
    void *m = dlsym(RTLD_DEFAULT, "malloc");
    Dl_info di;
    const char *owner = (m && dladdr(m, &di) && di.dli_fname) ? di.dli_fname
                                                              : "?";
    /* rp_version is not exported by rpbench itself (no -rdynamic), so it
     * is found only when librpool-malloc.so is loaded. */
    if (!rpb_is_malloc(a->alloc)) {
        /* rpool and bump columns run with the system malloc underneath. */
        for (int k = RPB_JEMALLOC; k <= RPB_RPOOL_MALLOC; k++)
            if (dlsym(RTLD_DEFAULT, peer_sym[k]))
                missing("%s loaded into an in-process %s run", peer_lib[k],
                        a->alloc_name);
        return;
    }
    if (!strstr(owner, peer_lib[a->alloc]))
        missing("malloc is served by %s, not %s (LD_PRELOAD=%s)", owner,
                peer_lib[a->alloc],
                getenv("LD_PRELOAD") ? getenv("LD_PRELOAD") : "");
    if (a->alloc == RPB_GLIBC) {
        for (int k = RPB_JEMALLOC; k <= RPB_RPOOL_MALLOC; k++)
            if (dlsym(RTLD_DEFAULT, peer_sym[k]))
                missing("%s symbol %s present in a glibc run", peer_lib[k],
                        peer_sym[k]);
        rpb_info("malloc=%s", owner);
        return;
    }
    void *sym = dlsym(RTLD_DEFAULT, peer_sym[a->alloc]);
    if (!sym)
        missing("%s not found: symbol %s unresolved", peer_lib[a->alloc],
                peer_sym[a->alloc]);
    char ver[128] = "?";
    if (a->alloc == RPB_JEMALLOC) {
        int (*mallctl)(const char *, void *, size_t *, void *, size_t);
        *(void **)&mallctl = sym;
        const char *v = NULL;
        size_t len = sizeof v;
        if (mallctl("version", &v, &len, NULL, 0) == 0 && v)
            snprintf(ver, sizeof ver, "%s", v);
    } else if (a->alloc == RPB_MIMALLOC) {
        int (*mi_version)(void);
        *(void **)&mi_version = sym;
        snprintf(ver, sizeof ver, "%d", mi_version());
    } else if (a->alloc == RPB_RPOOL_MALLOC) {
        const char *(*rp_ver)(void);
        *(void **)&rp_ver = sym;
        snprintf(ver, sizeof ver, "%s", rp_ver());
    } else {
        const char *(*tc_version)(int *, int *, const char **);
        *(void **)&tc_version = sym;
        int maj = 0, min = 0;
        const char *patch = NULL;
        const char *v = tc_version(&maj, &min, &patch);
        snprintf(ver, sizeof ver, "%s", v ? v : "?");
    }
    rpb_info("malloc=%s version=%s", owner, ver);
}

/* ------------------------------------------------------------------------ */
/* Latency percentiles.                                                      */

static int cmp_u32(const void *x, const void *y)
{
    uint32_t a = *(const uint32_t *)x, b = *(const uint32_t *)y;
    return (a > b) - (a < b);
}

void rpb_report_latency(uint32_t *ticks, size_t n, const char *prefix)
{
    if (n == 0)
        return;
    qsort(ticks, n, sizeof *ticks, cmp_u32);
    double k = rpb_ns_per_tick();
    char name[96];
    static const struct {
        const char *suffix;
        double q;
    } qs[] = {{"p50_ns", 0.5}, {"p99_ns", 0.99}, {"p999_ns", 0.999}};
    for (size_t i = 0; i < sizeof qs / sizeof qs[0]; i++) {
        size_t at = (size_t)(qs[i].q * (double)(n - 1));
        snprintf(name, sizeof name, "%s%s", prefix, qs[i].suffix);
        rpb_metric(name, ticks[at] * k);
    }
    snprintf(name, sizeof name, "%smax_ns", prefix);
    rpb_metric(name, ticks[n - 1] * k);
}

/* ------------------------------------------------------------------------ */
/* rpool.                                                                    */

#if RPB_HAVE_POOL
rp_pool *rpb_pool(size_t heap_bytes, long purge_delay_ms, int purge_thread)
{
    rp_config c;
    if (rp_config_init(&c) != 0)
        rpb_error("rp_config_init failed");
    c.reserve_bytes = (size_t)4 << 30;
    c.heap_bytes = heap_bytes;
    if (purge_delay_ms >= 0)
        c.purge_delay_ms = (uint32_t)purge_delay_ms;
    if (purge_thread >= 0)
        c.purge_thread = purge_thread;
    char err[256];
    if (rp_config_validate(&c, err, sizeof err) != 0)
        rpb_error("rp_config_validate: %s", err);
    rp_pool *p = rp_pool_create(&c);
    if (!p)
        rpb_error("rp_pool_create: %s", strerror(errno));
    return p;
}

void rpb_pool_done(rp_pool *p) { rp_pool_destroy(p); }
#else
rp_pool *rpb_pool(size_t heap_bytes, long purge_delay_ms, int purge_thread)
{
    (void)heap_bytes;
    (void)purge_delay_ms;
    (void)purge_thread;
    rpb_unavailable("rp_pool_create/rp_config_init");
}

void rpb_pool_done(rp_pool *p) { (void)p; }
#endif
