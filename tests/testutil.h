/* testutil.h -- helpers shared by rpool's tests (header-only). */
#ifndef RP_TESTUTIL_H
#define RP_TESTUTIL_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "rpool.h"

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)

/* Error hook that records the reports instead of printing them. */
typedef struct rp_errlog {
    int count;
    rp_error last_code;
    const void *last_ptr;
    char last_msg[512];
} rp_errlog;

static inline void rp_errlog_hook(void *opaque, rp_pool *p, rp_error code,
                                  const void *ptr, const char *msg)
{
    (void)p;
    rp_errlog *l = opaque;
    __atomic_fetch_add(&l->count, 1, __ATOMIC_RELAXED);
    l->last_code = code;
    l->last_ptr = ptr;
    snprintf(l->last_msg, sizeof l->last_msg, "%s", msg);
}

/* A small test pool: tiny classes so tests stay fast. */
static inline rp_config rp_test_config(rp_errlog *log)
{
    rp_config c;
    rp_config_init(&c);
    c.reserve_bytes = 1 * GiB;
    c.region_min_bytes = 64 * KiB;
    c.region_max_bytes = 4 * MiB;
    c.heap_bytes = 64 * MiB;
    c.purge_delay_ms = 0;
    c.purge_thread = 0;
    if (log) {
        c.error_hook = rp_errlog_hook;
        c.error_opaque = log;
    }
    return c;
}

/* Resident bytes of [addr, addr + len) according to the kernel. */
static inline size_t rp_resident_bytes(const void *addr, size_t len)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    uintptr_t a = (uintptr_t)addr & ~(page - 1);
    size_t n = ((uintptr_t)addr + len - a + page - 1) / page;
    size_t res = 0;
    unsigned char vec[4096];
    for (size_t i = 0; i < n; i += sizeof vec) {
        size_t m = n - i < sizeof vec ? n - i : sizeof vec;
        if (mincore((void *)(a + i * page), m * page, vec) != 0)
            continue; /* unmapped holes are not resident */
        for (size_t j = 0; j < m; j++)
            res += (vec[j] & 1) ? page : 0;
    }
    return res;
}

/* Milliseconds since *t0 on CLOCK_MONOTONIC. */
static inline long rp_ms_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)(t.tv_sec - t0->tv_sec) * 1000 + (t.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Poll pred(arg) every 5 ms until it holds. Returns the milliseconds of
 * real time (CLOCK_MONOTONIC) from the call to the end of the check that
 * saw it hold -- 0 if it held at the first check, so "== 0" means at once
 * -- or -1 if it still did not hold after 5000 ms. Real time, not a count
 * of requested sleeps: under load a sleep lasts longer than asked. */
static inline int rp_wait_until(bool (*pred)(void *arg), void *arg)
{
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (pred(arg))
        return 0;
    for (;;) {
        usleep(5000);
        bool ok = pred(arg);
        long ms = rp_ms_since(&t0);
        if (ok)
            return ms > 0 ? (int)ms : 1; /* not at once: never 0 */
        if (ms >= 5000)
            return -1;
    }
}

/* Run fn(arg) in a forked child with its stderr captured into out (NUL-
 * terminated: the first len - 1 bytes, the rest read and dropped, so the
 * child never blocks on a full pipe or dies of SIGPIPE); reads until EOF
 * and returns the child's wait status. For cases that must abort or be
 * reported by a sanitizer. fn must not return. */
static inline int rp_run_child(void (*fn)(void *), void *arg, char *out, size_t len)
{
    int fds[2];
    assert_int_equal(pipe(fds), 0);
    fflush(NULL); /* no stdio buffer is written twice */
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(fds[1], 2);
        close(fds[0]);
        alarm(60); /* a hung child fails the test instead of hanging it */
        fn(arg);
        _exit(0);
    }
    close(fds[1]);
    size_t n = 0;
    for (;;) {
        char drop[4096];
        char *dst = n < len - 1 ? out + n : drop;
        size_t room = n < len - 1 ? len - 1 - n : sizeof drop;
        ssize_t r = read(fds[0], dst, room);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        if (dst != drop)
            n += (size_t)r;
    }
    out[n] = '\0';
    close(fds[0]);
    int st = 0;
    assert_int_equal(waitpid(pid, &st, 0), pid);
    return st;
}

static inline rp_stats rp_test_stats(rp_pool *p)
{
    rp_stats s;
    assert_int_equal(rp_stats_get(p, &s), 0);
    return s;
}

#endif
