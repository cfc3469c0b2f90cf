/* preload.c -- librpool-malloc.so: malloc and friends on one process-default
 * pool, for LD_PRELOAD or linking, so that any program gets a hard memory
 * budget (malloc returns NULL with ENOMEM at the budget instead of the OOM
 * killer).
 *
 * Configuration: RPOOL_CONF (rp_config_from_env syntax, e.g.
 * "physical_budget=512M,purge_delay_ms=200"); defaults: the server preset
 * without the background purger thread. RPOOL_STATS=1 prints the stats at
 * exit. An invalid RPOOL_CONF is reported once on stderr and the process
 * falls back to the C library's allocator (it never runs with a config it
 * did not ask for).
 *
 * Life cycle and its hazards:
 *  - Before the pool exists, and for allocations made on the initializing
 *    thread while it creates the pool (pthread_create, pthread_atfork, ...),
 *    memory comes from a static bootstrap buffer (bump, never reused; each
 *    block has a size header so realloc can copy it).
 *  - Other threads arriving during initialization wait for it (it makes a
 *    few system calls).
 *  - Pointers from neither the pool nor the bootstrap buffer came from the
 *    C library's allocator (before the preload took over, or from a library
 *    that calls __libc_malloc): they go back to it, never into rpool.
 *  - fork(): the pool's own atfork handlers keep its locks consistent; the
 *    child keeps allocating from the same pool.
 *  - Thread exit: thread-local destructors that free after rpool's shard was
 *    detached simply re-create a shard (glibc re-runs destructors).
 *
 * Concurrency: `state` is the only shared word of this file; it is written
 * with release order once the pool is ready and read with acquire order, so
 * a thread that sees READY sees the pool pointer (pairs with the release
 * store in init).
 */
#include "internal.h"

#include <dlfcn.h>
#include <malloc.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

enum { UNINIT = 0, INITIALIZING = 1, READY = 2, FALLBACK = 3 };

static uint32_t state;
static rp_pool *pool;
static __thread int in_init; /* this thread is creating the pool */

/* glibc's own allocator, for foreign pointers and the fallback. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

/* ---- bootstrap buffer ---------------------------------------------------- */

#define BOOT_BYTES (1u << 20)
static unsigned char boot[BOOT_BYTES] __attribute__((aligned(64)));
static uint64_t boot_used;

struct boot_hdr {
    size_t size;
    size_t pad;
};

static void *boot_alloc(size_t size, size_t align)
{
    if (align < 16)
        align = 16;
    uint64_t cur = rp_load_relaxed_u64(&boot_used), start, next;
    do { /* CAS loop: bump; pairs with nothing (no data published) */
        start = rp_align_up(cur + sizeof(struct boot_hdr), align);
        next = start + size;
        if (next > BOOT_BYTES || next < start) {
            errno = ENOMEM;
            return NULL;
        }
    } while (!rp_cas_relaxed_u64(&boot_used, &cur, next));
    ((struct boot_hdr *)(void *)(boot + start))[-1].size = size;
    return boot + start;
}

static bool in_boot(const void *p)
{
    return (const unsigned char *)p >= boot && (const unsigned char *)p < boot + BOOT_BYTES;
}

static size_t boot_size(const void *p)
{
    return ((const struct boot_hdr *)p)[-1].size;
}

/* ---- initialization ------------------------------------------------------ */

static void print_stats(void *opaque, const char *text)
{
    (void)opaque;
    ssize_t w = write(2, text, strlen(text));
    (void)w;
}

static void at_exit_stats(void)
{
    if (rp_load_acquire_u32(&state) == READY)
        rp_stats_print(pool, print_stats, NULL, RP_STATS_TEXT);
}

static void init(void)
{
    uint32_t s = UNINIT;
    /* CAS UNINIT -> INITIALIZING: one thread initializes; pairs with the
     * release store of READY/FALLBACK below. */
    if (!rp_cas_u32(&state, &s, INITIALIZING)) {
        while (rp_load_acquire_u32(&state) == INITIALIZING)
            sched_yield();
        return;
    }
    in_init = 1;
    rp_config cfg;
    rp_config_init(&cfg);
    cfg.purge_thread = 0;
    cfg.purge_delay_ms = 200;
    char err[512];
    uint32_t result = FALLBACK;
    if (rp_config_from_env(&cfg, "RPOOL_CONF", err, sizeof err) != 0) {
        fprintf(stderr, "rpool-malloc: %s; using the C library's allocator\n", err);
    } else if ((pool = rp_pool_create(&cfg)) == NULL) {
        fprintf(stderr, "rpool-malloc: cannot create the pool (%s); using the C library's allocator\n",
                strerror(errno));
    } else {
        result = READY;
        const char *st = getenv("RPOOL_STATS");
        if (st && *st == '1')
            atexit(at_exit_stats);
    }
    in_init = 0;
    rp_store_release_u32(&state, result);
}

/* The pool, or NULL when the caller must use the bootstrap buffer (during
 * initialization on this thread) or the C library (fallback). */
static inline rp_pool *get_pool(bool *fallback)
{
    uint32_t s = rp_load_acquire_u32(&state);
    if (RP_LIKELY(s == READY))
        return pool;
    if (s == UNINIT || (s == INITIALIZING && !in_init)) {
        if (!in_init)
            init();
        s = rp_load_acquire_u32(&state);
        if (s == READY)
            return pool;
    }
    *fallback = s == FALLBACK;
    return NULL;
}

static inline bool ours(const void *ptr)
{
    uint32_t s = rp_load_acquire_u32(&state);
    return s == READY && (uintptr_t)ptr - (uintptr_t)pool->base < pool->reserve_bytes;
}

/* ---- the malloc API --------------------------------------------------------- */

EXPORT void *malloc(size_t size)
{
    bool fb = false;
    rp_pool *p = get_pool(&fb);
    if (RP_LIKELY(p != NULL))
        return rp_alloc(p, size);
    return fb ? __libc_malloc(size) : boot_alloc(size, 16);
}

EXPORT void free(void *ptr)
{
    if (!ptr || in_boot(ptr))
        return; /* bootstrap blocks are never reused */
    if (RP_LIKELY(ours(ptr))) {
        rp_free(pool, ptr);
        return;
    }
    __libc_free(ptr); /* came from the C library */
}

EXPORT void *calloc(size_t n, size_t size)
{
    bool fb = false;
    rp_pool *p = get_pool(&fb);
    if (RP_LIKELY(p != NULL))
        return rp_calloc(p, n, size);
    if (fb)
        return __libc_calloc(n, size);
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return boot_alloc(total, 16); /* static buffer: already zero */
}

static size_t foreign_usable(void *ptr)
{
    static size_t (*real)(void *);
    if (!real)
        real = (size_t (*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    return real ? real(ptr) : 0;
}

EXPORT void *realloc(void *ptr, size_t size)
{
    if (!ptr)
        return malloc(size);
    if (ours(ptr))
        return rp_realloc(pool, ptr, size);
    if (!in_boot(ptr) && rp_load_acquire_u32(&state) == FALLBACK)
        return __libc_realloc(ptr, size);
    if (size == 0) {
        free(ptr);
        return NULL;
    }
    /* A bootstrap or C-library block moves into the pool. */
    size_t old = in_boot(ptr) ? boot_size(ptr) : foreign_usable(ptr);
    void *q = malloc(size);
    if (!q)
        return NULL;
    memcpy(q, ptr, old < size ? old : size);
    free(ptr);
    return q;
}

EXPORT void *reallocarray(void *ptr, size_t n, size_t size)
{
    size_t total;
    if (__builtin_mul_overflow(n, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(ptr, total);
}

static void *aligned(size_t align, size_t size)
{
    bool fb = false;
    rp_pool *p = get_pool(&fb);
    if (RP_LIKELY(p != NULL))
        return rp_aligned_alloc(p, align, size);
    if (!rp_is_pow2(align)) {
        errno = EINVAL;
        return NULL;
    }
    return fb ? __libc_memalign(align, size) : boot_alloc(size, align);
}

EXPORT int posix_memalign(void **out, size_t align, size_t size)
{
    if (!rp_is_pow2(align) || align % sizeof(void *))
        return EINVAL;
    int saved = errno;
    void *q = aligned(align, size);
    if (!q)
        return errno == EINVAL ? EINVAL : ENOMEM;
    errno = saved;
    *out = q;
    return 0;
}

EXPORT void *aligned_alloc(size_t align, size_t size)
{
    return aligned(align, size);
}

EXPORT void *memalign(size_t align, size_t size)
{
    return aligned(align, size);
}

EXPORT void *valloc(size_t size)
{
    return aligned(rpi_os_page_size(), size);
}

EXPORT void *pvalloc(size_t size)
{
    size_t page = rpi_os_page_size();
    size_t rounded = rp_align_up(size ? size : 1, page);
    if (rounded < size) {
        errno = ENOMEM;
        return NULL;
    }
    return aligned(page, rounded);
}

EXPORT size_t malloc_usable_size(void *ptr)
{
    if (!ptr)
        return 0;
    if (in_boot(ptr))
        return boot_size(ptr);
    if (ours(ptr))
        return rp_usable_size(pool, ptr);
    return foreign_usable(ptr);
}
