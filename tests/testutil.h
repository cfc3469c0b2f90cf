/* testutil.h -- helpers shared by rpool's tests (header-only). */
#ifndef RP_TESTUTIL_H
#define RP_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
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

/* Run fn(arg) in a forked child with its stderr captured into out (NUL-
 * terminated, read until EOF); returns the child's wait status. For cases
 * that must abort or be reported by a sanitizer. fn must not return. */
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
    ssize_t r;
    while (n < len - 1 && (r = read(fds[0], out + n, len - 1 - n)) > 0)
        n += (size_t)r;
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
