/* tsan_supp.c -- the only ThreadSanitizer suppressions of rpool's tests.
 *
 * liburcu is linked as an uninstrumented shared library (never inlined with
 * _LGPL_SOURCE in TSan builds). Its call_rcu worker allocates and frees its
 * own bookkeeping (call_rcu_data, barrier completion records) with calloc/
 * free; TSan's interceptors see those allocations without seeing liburcu's
 * own synchronization (futexes and uatomic ops compiled without TSan), and
 * report the recycled heap blocks as racing. Every access involved is made
 * by liburcu's code on liburcu's memory; `called_from_lib` matches only
 * interceptor calls made from inside those libraries, so no report that
 * involves rpool's or the test's own code is hidden. No `race:`
 * suppressions are used anywhere. */
#ifndef __has_feature
#define __has_feature(x) 0
#endif
#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
/* Strong on purpose: the TSan runtime's own default is weak, and a second
 * weak definition may lose to it. Tests must not define their own. */
const char *__tsan_default_suppressions(void);
const char *__tsan_default_suppressions(void)
{
    return "called_from_lib:liburcu-bp.so\n"
           "called_from_lib:liburcu-common.so\n";
}
#else
extern int rp_tsan_supp_unused; /* keep the translation unit non-empty */
#endif
