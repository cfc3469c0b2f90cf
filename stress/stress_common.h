/* stress_common.h -- argv handling and reporting shared by stress programs.
 *
 *   stress_X [-t threads] [-s seconds] [-r seed] [-n count]
 *
 * Defaults are short (they run in `make test`); RP_STRESS_LONG=1 multiplies
 * the duration by 20 (`make stress`). Under ThreadSanitizer defaults shrink.
 * Every program prints its seed first and ends with "PASS ..." or
 * "FAIL ..." and the matching exit status.
 */
#ifndef RP_STRESS_COMMON_H
#define RP_STRESS_COMMON_H

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "rpool.h"

#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define STRESS_TSAN 1
#else
#define STRESS_TSAN 0
#endif
#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define STRESS_ASAN 1
#else
#define STRESS_ASAN 0
#endif

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

struct stress_args {
    int threads;
    double seconds;
    uint64_t seed;
    long count;
};

static int stress_failed;

static inline void stress_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline void stress_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "FAIL: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    __atomic_store_n(&stress_failed, 1, __ATOMIC_RELAXED);
}

#define STRESS_CHECK(cond, ...)                                               \
    do {                                                                      \
        if (!(cond))                                                          \
            stress_fail(__VA_ARGS__);                                         \
    } while (0)

static inline void stress_watchdog(int signo)
{
    (void)signo;
    static const char msg[] = "FAIL: watchdog expired (deadlock?)\n";
    ssize_t w = write(2, msg, sizeof msg - 1);
    (void)w;
    _exit(3);
}

static inline struct stress_args stress_parse(int argc, char **argv, const char *name,
                                              int threads, double seconds, long count)
{
    struct stress_args a = {threads, seconds, (uint64_t)time(NULL) ^ (uint64_t)getpid(), count};
    if (getenv("RP_STRESS_LONG"))
        a.seconds *= 20, a.count *= 10;
    int opt;
    while ((opt = getopt(argc, argv, "t:s:r:n:")) != -1) {
        switch (opt) {
        case 't': a.threads = atoi(optarg); break;
        case 's': a.seconds = atof(optarg); break;
        case 'r': a.seed = strtoull(optarg, NULL, 0); break;
        case 'n': a.count = atol(optarg); break;
        default:
            fprintf(stderr, "usage: %s [-t threads] [-s seconds] [-r seed] [-n count]\n", name);
            exit(2);
        }
    }
    printf("%s: seed=%llu threads=%d seconds=%.1f count=%ld\n", name,
           (unsigned long long)a.seed, a.threads, a.seconds, a.count);
    fflush(stdout);
    signal(SIGALRM, stress_watchdog);
    alarm((unsigned)(a.seconds * 4 + 120));
    return a;
}

static inline int stress_finish(const char *name, const char *summary)
{
    if (__atomic_load_n(&stress_failed, __ATOMIC_RELAXED)) {
        printf("FAIL %s: %s\n", name, summary);
        return 1;
    }
    printf("PASS %s: %s\n", name, summary);
    return 0;
}

static inline double stress_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline uint64_t stress_rand(uint64_t *s)
{
    /* splitmix64 */
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline void stress_error_hook(void *opaque, rp_pool *p, rp_error code,
                                     const void *ptr, const char *msg)
{
    (void)opaque;
    (void)p;
    stress_fail("rpool reported error %d on %p: %s", (int)code, ptr, msg);
}

#endif
