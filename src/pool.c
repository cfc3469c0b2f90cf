/* pool.c -- pool lifecycle, the process-wide pool registry, fork handling,
 * and the one error-reporting path.
 *
 * Registry: a list of live pools under registry_lock. Thread exit consults
 * it (by pool id) before touching a pool; fork handlers walk it.
 *
 * Lock order (fork prepare takes them all, in this order, with liburcu's
 * fork hooks between the first and the rest; see fork_prepare):
 * registry_lock, then per pool in registry order: threads_lock,
 * carve_lock, meta_lock, the heap lock, the arena list lock. No code path
 * takes an earlier lock while holding a later one: thread exit holds
 * registry_lock and then takes threads_lock/carve_lock/meta_lock/heap
 * through detach; nothing takes registry_lock while holding a pool lock.
 */
#include "internal.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Recursive: a malloc reached from thread-exit processing (liburcu's
 * call_rcu allocates) may come back here on the same thread when rpool is
 * the process's malloc (librpool-malloc.so). */
static pthread_mutex_t registry_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static rp_pool *registry;          /* under registry_lock */
static uint64_t next_pool_id = 1;  /* under registry_lock */
static pthread_once_t fork_once = PTHREAD_ONCE_INIT;

const char *rp_version(void)
{
    return RP_VERSION_STRING;
}

/* The registry's lock and list are rpool-internal: hidden from TSan
 * (accesses and synchronization), see atomic.h. */
rp_pool *rpi_registry_lock(uint64_t id)
{
    rp_pool *found = NULL;
    RP_HIDE_BEGIN();
    pthread_mutex_lock(&registry_lock);
    for (rp_pool *p = registry; p && !found; p = p->reg_next)
        if (p->id == id)
            found = p;
    RP_HIDE_END();
    return found;
}

void rpi_registry_unlock(void)
{
    RP_HIDE_BEGIN();
    pthread_mutex_unlock(&registry_lock);
    RP_HIDE_END();
}

/* Lock order for fork (two deadlocks found by stress_fork decided it):
 *  1. registry_lock first: an exiting thread holds it while detaching, and
 *     detaching calls call_rcu, which needs liburcu's own mutex;
 *  2. then quiesce liburcu (call_rcu_before_fork waits for the call_rcu
 *     worker, whose reclaim() takes a pool's threads_lock; urcu_bp_before_fork
 *     takes liburcu's registry mutex);
 *  3. then every pool's threads, carve, meta, heap and arena list locks (no
 *     code holds one of these while calling into liburcu).
 * Released in reverse order after the fork. */
static void fork_prepare(void)
{
    pthread_mutex_lock(&registry_lock);
    rpi_threads_prefork();
    for (rp_pool *p = registry; p; p = p->reg_next) {
        rp_mutex_lock(&p->threads_lock);
        rp_mutex_lock(&p->carve_lock);
        rp_mutex_lock(&p->meta_lock);
        rpi_heap_prefork(p);
        rpi_arena_prefork(p);
    }
}

static void fork_release(int child)
{
    for (rp_pool *p = registry; p; p = p->reg_next) {
        rpi_arena_postfork(p);
        rpi_heap_postfork(p);
        rp_mutex_unlock(&p->meta_lock);
        rp_mutex_unlock(&p->carve_lock);
        rp_mutex_unlock(&p->threads_lock);
        if (child) {
            /* The purger thread does not exist in the child; expired regions
             * are then purged from within rpool calls (rpi_region_put). */
            p->purger_running = 0;
            rp_store_relaxed_u32(&p->purge_busy, 0);
            /* No purger, so no new thread-cache entries; the ones there
             * count as expired at the next purge (from a release). */
            rp_store_relaxed_u32(&p->rc_on, 0);
            p->rc_ticks = 0;
            /* A steal or check in another thread ended with the fork. */
            rp_store_relaxed_u32(&p->esteal_busy, 0);
        }
    }
    rpi_threads_postfork(child);
    if (child) {
        /* A recursive mutex records its owner's kernel thread id, which the
         * child's only thread does not have: unlocking would fail (EPERM)
         * and leave the lock held forever. Start the child with a fresh one
         * (no other thread exists in the child to hold it). */
        pthread_mutex_t fresh = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
        registry_lock = fresh;
    } else {
        pthread_mutex_unlock(&registry_lock);
    }
}

static void fork_parent(void) { fork_release(0); }
static void fork_child(void) { fork_release(1); }

static void fork_setup(void)
{
    pthread_atfork(fork_prepare, fork_parent, fork_child);
}

static void report_config(const rp_config *c, const char *msg)
{
    if (c->error_hook)
        c->error_hook(c->error_opaque, NULL, RP_ERR_MISUSE, NULL, msg);
    else
        fprintf(stderr, "rpool: invalid config: %s\n", msg);
}

rp_pool *rp_pool_create(const rp_config *cfg)
{
    rp_config c;
    char err[256];
    if (cfg)
        c = *cfg;
    else
        rp_config_init(&c);
    if (rp_config_validate(&c, err, sizeof err) != 0) {
        report_config(&c, err);
        errno = EINVAL;
        return NULL;
    }
    pthread_once(&fork_once, fork_setup);
    rp_pool *p = rpi_reserve_create(&c);
    if (!p)
        return NULL;
    int rc = rpi_threads_init(p);
    if (!rc)
        rc = rpi_heap_init(p);
    if (!rc)
        rc = rpi_slab_init(p);
    if (!rc)
        rc = rpi_arena_init(p);
    /* Last: the purger reads the modules' state (p->heap, p->slab), and
     * pthread_create orders their initialization before its first read. */
    if (!rc)
        rc = rpi_purger_start(p);
    if (rc) {
        rpi_purger_stop(p);
        rpi_reserve_destroy(p);
        errno = rc == -EINVAL ? EINVAL : ENOMEM;
        return NULL;
    }
    /* The half-fit worst case: warn when the heap cannot guarantee even one
     * mid-sized request (up to 1 MiB, or its largest if smaller) under
     * worst-case fragmentation (docs/HEAP.md). */
    size_t maxr = rpi_heap_max_request(p);
    if (maxr > ((size_t)1 << 20))
        maxr = (size_t)1 << 20;
    size_t live = rpi_heap_guaranteed_live(p, maxr);
    if (p->heap_bytes && live < maxr)
        rpi_report(p, RP_ERR_WARNING, NULL,
                   "heap_bytes=%zu guarantees only %zu live bytes under worst-case "
                   "fragmentation for requests up to %zu (docs/HEAP.md)",
                   p->heap_bytes, live, maxr);
    RP_HIDE_BEGIN();
    pthread_mutex_lock(&registry_lock);
    p->id = next_pool_id++;
    p->reg_next = registry;
    registry = p;
    pthread_mutex_unlock(&registry_lock);
    RP_HIDE_END();
    return p;
}

void rp_pool_destroy(rp_pool *p)
{
    if (!p)
        return;
    RP_HIDE_BEGIN();
    pthread_mutex_lock(&registry_lock);
    rp_pool **pp = &registry;
    while (*pp && *pp != p)
        pp = &(*pp)->reg_next;
    bool found = *pp == p;
    if (found)
        *pp = p->reg_next;
    pthread_mutex_unlock(&registry_lock);
    RP_HIDE_END();
    if (!found) {
        rpi_report(NULL, RP_ERR_MISUSE, p,
                   "rp_pool_destroy(%p): not a live pool (destroyed twice?)",
                   (void *)p);
        return;
    }
    rpi_purger_stop(p);
    rpi_threads_destroy(p);
    rpi_reserve_destroy(p);
}

int rp_check(rp_pool *p)
{
    if (!p)
        return -EINVAL;
    int rc = rpi_region_check(p);
    if (!rc)
        rc = rpi_heap_check(p);
    if (!rc)
        rc = rpi_slab_check(p);
    if (!rc)
        rc = rpi_arena_check(p);
    return rc;
}

static const char *code_name(rp_error code)
{
    switch (code) {
    case RP_ERR_FOREIGN: return "foreign-pointer";
    case RP_ERR_INTERIOR: return "interior-pointer";
    case RP_ERR_NOT_LIVE: return "not-live";
    case RP_ERR_WRONG_API: return "wrong-api";
    case RP_ERR_CORRUPT: return "corrupt";
    case RP_ERR_INVARIANT: return "invariant";
    case RP_ERR_MISUSE: return "misuse";
    case RP_ERR_WARNING: return "warning";
    }
    return "error";
}

void rpi_report(rp_pool *p, rp_error code, const void *ptr, const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    bool warning = code == RP_ERR_WARNING;
    if (p && !warning)
        rp_add_relaxed_u64(&p->acct.errors, 1);
    if (p && p->cfg.error_hook)
        p->cfg.error_hook(p->cfg.error_opaque, p, code, ptr, msg);
    else
        fprintf(stderr, "rpool: [%s] %s\n", code_name(code), msg);
    if (p && p->cfg.strict && !warning) {
        fprintf(stderr, "rpool: strict mode: aborting\n");
        abort();
    }
}

void rpi_assert_fail(const char *cond, const char *file, int line)
{
    fprintf(stderr, "rpool: assertion failed: %s (%s:%d)\n", cond, file, line);
    abort();
}
