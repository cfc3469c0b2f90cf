/* atomic.h -- rpool's one atomics and sanitizer layer.
 *
 * Every shared access in rpool goes through this header, so the rest of the
 * code reads as ordinary C and the sanitizer recipe lives in one place.
 *
 * Atomics. Release builds use ConcurrencyKit's ck_pr (inline assembly on
 * x86-64). ThreadSanitizer cannot see inline assembly, so TSan builds use the
 * compiler's __atomic builtins with the same orders instead: TSan then checks
 * every atomic access against plain accesses to the same word.
 *
 * Happens-before. rpool shows TSan exactly the contract users rely on and
 * nothing more:
 *   - rp_hb_release(addr) when memory leaves an owner (free, release, reset)
 *     and rp_hb_acquire(addr) when it is handed out again. These call
 *     __tsan_release/__tsan_acquire through weak symbols, in every build: in
 *     a program without the TSan runtime they are a not-taken branch; linked
 *     into a user's TSan program, even the ordinary librpool gives TSan the
 *     free -> next-allocation edge.
 *   - RP_HIDE_BEGIN/END around rpool's internal synchronization on shared
 *     structures (free-stack heads, the heap lock): accesses and
 *     synchronization inside are invisible to TSan. Without this, a shared
 *     stack head would order every pair of allocating threads and hide real
 *     races in the user's program (a false negative), and ck's speculative
 *     Treiber-stack read would be reported (a false positive).
 *   - Counters shared by all threads use relaxed RMWs, which create no
 *     happens-before in TSan's model either.
 *
 * ASan: rp_poison/rp_unpoison mark memory rpool holds but the user must not
 * touch (freed objects, arena space past the bump pointer, free regions).
 */
#ifndef RP_ATOMIC_H
#define RP_ATOMIC_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifndef __has_feature
#define __has_feature(x) 0
#endif

#if defined(__SANITIZE_THREAD__) || __has_feature(thread_sanitizer)
#define RP_TSAN 1
/* Negative control for tests/test_tsan.c: -DRP_TSAN_SHOW_INTERNAL_SYNC=1
 * makes rpool's internal synchronization visible again, which must make the
 * user-race test fail (masking). Never for production builds. */
#ifndef RP_TSAN_SHOW_INTERNAL_SYNC
#define RP_TSAN_SHOW_INTERNAL_SYNC 0
#endif
#else
#define RP_TSAN 0
#endif

#if defined(__SANITIZE_ADDRESS__) || __has_feature(address_sanitizer)
#define RP_ASAN 1
#else
#define RP_ASAN 0
#endif

/* ---- happens-before annotations (all builds, weak) ---------------------- */

extern void __tsan_acquire(void *addr) __attribute__((weak));
extern void __tsan_release(void *addr) __attribute__((weak));

static inline void rp_hb_release(const void *addr)
{
    if (__tsan_release)
        __tsan_release((void *)addr);
}

static inline void rp_hb_acquire(const void *addr)
{
    if (__tsan_acquire)
        __tsan_acquire((void *)addr);
}

#if RP_TSAN && !RP_TSAN_SHOW_INTERNAL_SYNC
/* Exported by the clang 14 and gcc 12 TSan runtimes, not declared in their
 * public headers. */
void __tsan_ignore_thread_begin(void);
void __tsan_ignore_thread_end(void);
void AnnotateIgnoreSyncBegin(const char *file, int line);
void AnnotateIgnoreSyncEnd(const char *file, int line);
#define RP_HIDE_BEGIN()                                                       \
    do {                                                                      \
        AnnotateIgnoreSyncBegin(__FILE__, __LINE__);                          \
        __tsan_ignore_thread_begin();                                         \
    } while (0)
#define RP_HIDE_END()                                                         \
    do {                                                                      \
        __tsan_ignore_thread_end();                                           \
        AnnotateIgnoreSyncEnd(__FILE__, __LINE__);                            \
    } while (0)
#else
#define RP_HIDE_BEGIN() ((void)0)
#define RP_HIDE_END() ((void)0)
#endif

/* Internal mutexes (carving, metadata, the thread list, the pool registry)
 * protect only rpool's own data, all of which is accessed with atomics or
 * inside hidden sections. Their lock/unlock must not create happens-before
 * between user threads (two threads that both carve or start a shard would
 * otherwise be ordered, hiding races in the user's code), so TSan builds
 * ignore their synchronization. */
#if RP_TSAN && !RP_TSAN_SHOW_INTERNAL_SYNC
#define RP_SYNC_HIDE_BEGIN() AnnotateIgnoreSyncBegin(__FILE__, __LINE__)
#define RP_SYNC_HIDE_END() AnnotateIgnoreSyncEnd(__FILE__, __LINE__)
#else
#define RP_SYNC_HIDE_BEGIN() ((void)0)
#define RP_SYNC_HIDE_END() ((void)0)
#endif

static inline void rp_mutex_lock(pthread_mutex_t *m)
{
    RP_SYNC_HIDE_BEGIN();
    pthread_mutex_lock(m);
    RP_SYNC_HIDE_END();
}

static inline void rp_mutex_unlock(pthread_mutex_t *m)
{
    RP_SYNC_HIDE_BEGIN();
    pthread_mutex_unlock(m);
    RP_SYNC_HIDE_END();
}

/* ---- ASan poisoning ------------------------------------------------------ */

#if RP_ASAN
#include <sanitizer/asan_interface.h>
#define rp_poison(addr, len) ASAN_POISON_MEMORY_REGION((addr), (len))
#define rp_unpoison(addr, len) ASAN_UNPOISON_MEMORY_REGION((addr), (len))
#else
#define rp_poison(addr, len) ((void)(addr), (void)(len))
#define rp_unpoison(addr, len) ((void)(addr), (void)(len))
#endif

/* ---- atomics ------------------------------------------------------------- */
/* Names carry the memory order. CAS returns true on success and, on failure,
 * stores the value found into *expected. All CAS are acq_rel / acquire on
 * failure (ck's lock cmpxchg is a full barrier on x86-64). */

#if RP_TSAN

#define RP_DEF_ATOMICS(T, N)                                                  \
    static inline T rp_load_relaxed_##N(const T *p)                           \
    { return __atomic_load_n(p, __ATOMIC_RELAXED); }                          \
    static inline T rp_load_acquire_##N(const T *p)                           \
    { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }                          \
    static inline void rp_store_relaxed_##N(T *p, T v)                        \
    { __atomic_store_n(p, v, __ATOMIC_RELAXED); }                             \
    static inline void rp_store_release_##N(T *p, T v)                        \
    { __atomic_store_n(p, v, __ATOMIC_RELEASE); }                             \
    static inline bool rp_cas_##N(T *p, T *expected, T desired)               \
    {                                                                         \
        return __atomic_compare_exchange_n(p, expected, desired, false,       \
                                           __ATOMIC_ACQ_REL,                  \
                                           __ATOMIC_ACQUIRE);                 \
    }                                                                         \
    static inline T rp_swap_##N(T *p, T v)                                    \
    { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }

typedef void *rp_vptr; /* a macro argument of `void *` would bind const wrongly */
RP_DEF_ATOMICS(uint32_t, u32)
RP_DEF_ATOMICS(uint64_t, u64)
RP_DEF_ATOMICS(rp_vptr, ptr)

/* Relaxed counters: no ordering, no happens-before. */
static inline uint64_t rp_add_relaxed_u64(uint64_t *p, uint64_t v)
{ return __atomic_fetch_add(p, v, __ATOMIC_RELAXED); }
static inline uint64_t rp_sub_relaxed_u64(uint64_t *p, uint64_t v)
{ return __atomic_fetch_sub(p, v, __ATOMIC_RELAXED); }
/* Relaxed CAS for counters that carry no data (budget reservations). */
static inline bool rp_cas_relaxed_u64(uint64_t *p, uint64_t *expected,
                                      uint64_t desired)
{
    return __atomic_compare_exchange_n(p, expected, desired, false,
                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}
#define rp_fence_seq_cst() __atomic_thread_fence(__ATOMIC_SEQ_CST)

#else /* ConcurrencyKit */

#include <ck_pr.h>

#define RP_DEF_ATOMICS(T, N, CKN)                                             \
    static inline T rp_load_relaxed_##N(const T *p)                           \
    { return (T)ck_pr_load_##CKN(p); }                                        \
    static inline T rp_load_acquire_##N(const T *p)                           \
    {                                                                         \
        T v = (T)ck_pr_load_##CKN(p);                                         \
        ck_pr_fence_acquire(); /* orders later loads after this one */        \
        return v;                                                             \
    }                                                                         \
    static inline void rp_store_relaxed_##N(T *p, T v)                        \
    { ck_pr_store_##CKN(p, v); }                                              \
    static inline void rp_store_release_##N(T *p, T v)                        \
    {                                                                         \
        ck_pr_fence_release(); /* earlier accesses before the store */        \
        ck_pr_store_##CKN(p, v);                                              \
    }                                                                         \
    static inline bool rp_cas_##N(T *p, T *expected, T desired)               \
    { return ck_pr_cas_##CKN##_value(p, *expected, desired, expected); }      \
    static inline T rp_swap_##N(T *p, T v)                                    \
    { return (T)ck_pr_fas_##CKN(p, v); }

RP_DEF_ATOMICS(uint32_t, u32, 32)
RP_DEF_ATOMICS(uint64_t, u64, 64)

static inline void *rp_load_relaxed_ptr(void *const *p)
{ return ck_pr_load_ptr(p); }
static inline void *rp_load_acquire_ptr(void *const *p)
{
    void *v = ck_pr_load_ptr(p);
    ck_pr_fence_acquire();
    return v;
}
static inline void rp_store_relaxed_ptr(void **p, void *v)
{ ck_pr_store_ptr(p, v); }
static inline void rp_store_release_ptr(void **p, void *v)
{
    ck_pr_fence_release();
    ck_pr_store_ptr(p, v);
}
static inline bool rp_cas_ptr(void **p, void **expected, void *desired)
{ return ck_pr_cas_ptr_value(p, *expected, desired, expected); }
static inline void *rp_swap_ptr(void **p, void *v)
{ return ck_pr_fas_ptr(p, v); }

static inline uint64_t rp_add_relaxed_u64(uint64_t *p, uint64_t v)
{ return ck_pr_faa_64(p, v); }
static inline uint64_t rp_sub_relaxed_u64(uint64_t *p, uint64_t v)
{ return ck_pr_faa_64(p, (uint64_t)0 - v); }
static inline bool rp_cas_relaxed_u64(uint64_t *p, uint64_t *expected,
                                      uint64_t desired)
{ return ck_pr_cas_64_value(p, *expected, desired, expected); }
#define rp_fence_seq_cst() ck_pr_fence_memory()

#endif

/* Counter update that never goes below zero in a snapshot: callers only
 * subtract what they added earlier. */
static inline void rp_max_relaxed_u64(uint64_t *p, uint64_t v)
{
    uint64_t cur = rp_load_relaxed_u64(p);
    /* CAS loop: raises a peak; pairs with nothing (statistic only). */
    while (cur < v && !rp_cas_relaxed_u64(p, &cur, v))
        ;
}

#endif /* RP_ATOMIC_H */
