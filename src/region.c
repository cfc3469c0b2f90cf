/* region.c -- region size classes, lock-free free stacks, CAS-claimed reuse,
 * splitting, and (delayed) purging.
 *
 * A region is a run of 2^cls granules. Its head descriptor's state word
 * (state | cls | kind) is changed only by CAS, so exactly one party wins any
 * transition:
 *
 *   carve -> IN_USE -> (release) -> FREE_DIRTY ---(purge)--> FREE_CLEAN
 *                 \-> PURGING -> FREE_CLEAN / FREE_LAZY        |
 *   FREE_* --(claim by the thread that popped it)--> IN_USE <--/
 *
 * Free regions of a class sit on one ck_stack (mpmc, generation-tagged
 * against ABA; descriptors are never freed, so a stale read of a popped
 * entry's link is harmless). Only the thread that popped a region may move
 * it out of a FREE state: the reuser and a delayed purge both pop before
 * they CAS, so they can never both own it, and the CAS double-checks.
 *
 * Counters per class (relaxed): nfree >= regions on the stack (incremented
 * before a push, decremented after a pop; a purger holds popped regions
 * without decrementing, so an acquirer that sees nfree > 0 and an empty stack
 * waits briefly instead of carving new address space).
 *
 * Accounting equations (quiescent):
 *   physical = metadata + heap_physical + sum(in_use + dirty) * class bytes
 *   virtual  = metadata + heap_committed + hwm * granule
 *   hwm * granule = sum(in_use + dirty + clean) * class bytes
 *
 * TSan: stack operations are hidden (RP_HIDE_*); the hand-off of a region is
 * shown as rp_hb_release(desc) before it is pushed and rp_hb_acquire(desc)
 * after it is claimed (see atomic.h).
 */
#include "internal.h"

#include <sched.h>
#include <signal.h>
#include <string.h>

#define FREE_STATE(s) ((s) == RS_FREE_DIRTY || (s) == RS_FREE_LAZY || (s) == RS_FREE_CLEAN)

int rpi_class_of(const rp_pool *p, size_t bytes)
{
    size_t gran = (size_t)1 << p->gshift;
    if (bytes <= gran)
        return 0;
    if (bytes > rpi_class_bytes(p, p->nclasses - 1))
        return -1;
    return (int)(rp_log2(bytes - 1) + 1 - p->gshift);
}

static inline rp_rdesc *desc_of_link(ck_stack_entry_t *e)
{
    return (rp_rdesc *)((char *)e - offsetof(rp_rdesc, link));
}

static void push_free(rp_pool *p, rp_rdesc *d, unsigned cls)
{
    rp_add_relaxed_u64(&p->cls[cls].nfree, 1);
    RP_HIDE_BEGIN();
    ck_stack_push_mpmc(&p->cls[cls].free, &d->link);
    RP_HIDE_END();
}

static rp_rdesc *pop_free(rp_pool *p, unsigned cls)
{
    RP_HIDE_BEGIN();
    ck_stack_entry_t *e = ck_stack_pop_mpmc(&p->cls[cls].free);
    RP_HIDE_END();
    if (!e)
        return NULL;
    rp_sub_relaxed_u64(&p->cls[cls].nfree, 1);
    return desc_of_link(e);
}

/* Gauge moves between states, per class. */
static uint64_t *gauge(rp_pool *p, unsigned cls, unsigned state)
{
    struct rp_class *c = &p->cls[cls];
    return state == RS_IN_USE ? &c->in_use
           : state == RS_FREE_CLEAN ? &c->clean
                                    : &c->dirty; /* DIRTY, LAZY, PURGING */
}

static void gauge_move(rp_pool *p, unsigned cls, unsigned from, unsigned to)
{
    rp_sub_relaxed_u64(gauge(p, cls, from), 1);
    rp_add_relaxed_u64(gauge(p, cls, to), 1);
}

/* Make region d (popped by us, state word w) IN_USE for `kind`.
 * Returns 0, or -ENOMEM (physical budget; d is pushed back untouched). */
static int claim(rp_pool *p, rp_rdesc *d, unsigned kind)
{
    uint32_t w = rp_load_relaxed_u32(&d->word);
    unsigned cls = RW_CLS(w), st = RW_STATE(w);
    size_t bytes = rpi_class_bytes(p, cls);
    if (!FREE_STATE(st)) {
        rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                   "region %p on free stack of class %u has state %u",
                   rpi_desc_base(p, d), cls, st);
        return -EFAULT;
    }
    if (st == RS_FREE_CLEAN && rpi_phys_charge(p, bytes)) {
        push_free(p, d, cls);
        return -ENOMEM;
    }
    /* CAS: FREE_* -> IN_USE. We popped d, so no one else may change it; a
     * failure means metadata damage, not a race. Pairs with the CAS that
     * made it free (release or purge). */
    if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_IN_USE, cls, kind))) {
        if (st == RS_FREE_CLEAN)
            rpi_phys_uncharge(p, bytes);
        rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                   "region %p changed state while claimed", rpi_desc_base(p, d));
        return -EFAULT;
    }
    gauge_move(p, cls, st, RS_IN_USE);
    rp_add_relaxed_u64(&p->cls[cls].reuses, 1);
    return 0;
}

/* After a region becomes ours: TSan edge from its last releaser, fresh
 * generation, cleared owner state. */
static rp_rdesc *handed_out(rp_pool *p, rp_rdesc *d)
{
    rp_hb_acquire(d); /* pairs with rp_hb_release in rpi_region_put */
    rp_store_relaxed_u32(&d->gen, rp_load_relaxed_u32(&d->gen) + 1);
    memset(&d->user, 0, sizeof d->user);
    rp_unpoison(rpi_desc_base(p, d), rpi_desc_bytes(p, d));
    return d;
}

/* Try the free stack of class cls; wait briefly while a purger holds some. */
static rp_rdesc *reuse(rp_pool *p, unsigned cls, unsigned kind, int *err)
{
    for (int spin = 0; spin < 64; spin++) {
        rp_rdesc *d = pop_free(p, cls);
        if (d) {
            int rc = claim(p, d, kind);
            if (rc == 0)
                return d;
            *err = rc;
            if (rc == -ENOMEM)
                return NULL;
            continue; /* corrupt entry dropped; try the next */
        }
        if (rp_load_relaxed_u64(&p->cls[cls].nfree) == 0)
            return NULL;
        sched_yield(); /* a purger or pusher is mid-operation */
    }
    return NULL;
}

/* Split a free region of a larger class: keep the first 2^cls granules and
 * push the rest as free regions of classes cls .. k-1 in the same state. */
static rp_rdesc *split(rp_pool *p, unsigned cls, unsigned kind, int *err)
{
    for (unsigned k = cls + 1; k < p->nclasses; k++) {
        rp_rdesc *d = pop_free(p, k);
        if (!d)
            continue;
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w);
        if (!FREE_STATE(st) || RW_CLS(w) != k) {
            rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                       "region %p on free stack of class %u has word %#x",
                       rpi_desc_base(p, d), k, w);
            continue;
        }
        size_t mine = rpi_class_bytes(p, cls);
        if (st == RS_FREE_CLEAN && rpi_phys_charge(p, mine)) {
            push_free(p, d, k);
            *err = -ENOMEM;
            return NULL;
        }
        /* CAS FREE_* -> PURGING marks it ours while we rewrite descriptors;
         * pairs with the CAS that freed it. */
        if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_PURGING, k, RK_NONE))) {
            if (st == RS_FREE_CLEAN)
                rpi_phys_uncharge(p, mine);
            rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                       "region %p changed state while split", rpi_desc_base(p, d));
            continue;
        }
        rp_sub_relaxed_u64(gauge(p, k, st), 1);
        size_t head = rpi_desc_index(p, d);
        uint64_t rel = rp_load_relaxed_u64(&d->release_ms);
        for (unsigned j = cls; j < k; j++) {
            size_t ph = head + ((size_t)1 << j);   /* piece of class j */
            size_t n = (size_t)1 << j;
            rp_rdesc *pd = &p->desc[ph];
            for (size_t g = 1; g < n; g++)
                rp_store_relaxed_u32(&pd[g].head, (uint32_t)ph);
            rp_store_relaxed_u32(&pd->head, (uint32_t)ph);
            rp_store_relaxed_u64(&pd->release_ms, rel);
            rp_store_relaxed_u32(&pd->word, RW_MAKE(st, j, RK_NONE));
            rp_add_relaxed_u64(gauge(p, j, st), 1);
            rp_add_relaxed_u64(&p->cls[j].splits, 1);
            rp_hb_release(pd); /* the next claimer sees our descriptor writes */
            push_free(p, pd, j);
        }
        for (size_t g = 1; g < ((size_t)1 << cls); g++)
            rp_store_relaxed_u32(&d[g].head, (uint32_t)head);
        rp_store_relaxed_u32(&d->word, RW_MAKE(RS_IN_USE, cls, kind));
        rp_add_relaxed_u64(&p->cls[cls].in_use, 1);
        rp_add_relaxed_u64(&p->cls[cls].splits, 1);
        return d;
    }
    return NULL;
}

rp_rdesc *rpi_region_get(rp_pool *p, size_t bytes, unsigned kind)
{
    int c = rpi_class_of(p, bytes);
    if (bytes == 0 || c < 0)
        return rpi_fail_null(p, RP_FAIL_OTHER, EINVAL);
    unsigned cls = (unsigned)c;
    int err = 0;

    rp_rdesc *d = reuse(p, cls, kind, &err);
    if (d)
        return handed_out(p, d);
    if (err == -ENOMEM)
        return rpi_fail_null(p, RP_FAIL_PHYSICAL, ENOMEM);

    /* Nothing free in this class: new address space. */
    size_t size = rpi_class_bytes(p, cls);
    enum rp_fail why = RP_FAIL_PHYSICAL;
    if (rpi_phys_charge(p, size) == 0) {
        d = rpi_carve(p, cls, kind, &why);
        if (d) {
            rp_add_relaxed_u64(&p->cls[cls].in_use, 1);
            rp_add_relaxed_u64(&p->cls[cls].carves, 1);
            return handed_out(p, d);
        }
        rpi_phys_uncharge(p, size);
    }
    /* At a budget or out of reservation: split a larger free region. */
    err = 0;
    d = split(p, cls, kind, &err);
    if (d)
        return handed_out(p, d);
    return rpi_fail_null(p, err == -ENOMEM ? RP_FAIL_PHYSICAL : why, ENOMEM);
}

/* Purge region d (state PURGING, ours) with advice; returns its new free
 * state. Accounts the physical release. */
static unsigned purge_one(rp_pool *p, rp_rdesc *d, unsigned cls, int advice)
{
    size_t bytes = rpi_class_bytes(p, cls);
    rp_poison(rpi_desc_base(p, d), bytes);
    if (rpi_os_purge(rpi_desc_base(p, d), bytes, advice) != 0) {
        rpi_count_fail(p, RP_FAIL_OS);
        return RS_FREE_DIRTY; /* nothing changed: still resident, counted */
    }
    rp_add_relaxed_u64(&p->cls[cls].purges, 1);
    if (advice == RP_PURGE_FREE)
        return RS_FREE_LAZY; /* the kernel may keep the pages: stay counted */
    rpi_phys_uncharge(p, bytes);
    return RS_FREE_CLEAN;
}

void rpi_region_put(rp_pool *p, rp_rdesc *d)
{
    uint32_t w = rp_load_relaxed_u32(&d->word);
    unsigned cls = RW_CLS(w);
    rp_hb_release(d); /* pairs with rp_hb_acquire in handed_out */
    if (p->cfg.purge_delay_ms == 0) {
        /* CAS IN_USE -> PURGING; we own it (internal caller), cannot fail
         * except on damage. */
        if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_PURGING, cls, RK_NONE))) {
            rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                       "region %p changed state while released", rpi_desc_base(p, d));
            return;
        }
        unsigned st = purge_one(p, d, cls, p->cfg.purge_advice);
        rp_store_relaxed_u32(&d->word, RW_MAKE(st, cls, RK_NONE));
        gauge_move(p, cls, RS_IN_USE, st);
        push_free(p, d, cls);
        return;
    }
    uint64_t now = rpi_now_ms();
    rp_store_relaxed_u64(&d->release_ms, now);
    rp_poison(rpi_desc_base(p, d), rpi_class_bytes(p, cls));
    /* CAS IN_USE -> FREE_DIRTY; pairs with the claim CAS of the next user. */
    if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_FREE_DIRTY, cls, RK_NONE))) {
        rpi_report(p, RP_ERR_CORRUPT, rpi_desc_base(p, d),
                   "region %p changed state while released", rpi_desc_base(p, d));
        return;
    }
    gauge_move(p, cls, RS_IN_USE, RS_FREE_DIRTY);
    push_free(p, d, cls);
    if (now >= rp_load_relaxed_u64(&p->next_purge_ms))
        rpi_purge_expired(p);
}

/* ---- public region API --------------------------------------------------- */

void *rp_region_acquire(rp_pool *p, size_t bytes)
{
    if (!p) {
        errno = EINVAL;
        return NULL;
    }
    rp_rdesc *d = rpi_region_get(p, bytes, RK_USER);
    return d ? rpi_desc_base(p, d) : NULL;
}

/* Validate ptr as the base of a live region of kind `kind`; report and
 * return NULL otherwise, else store the state word it checked in *wout.
 * Shared by release and size queries. */
static rp_rdesc *live_region(const rp_pool *p, const void *ptr, unsigned kind,
                             const char *what, bool report, uint32_t *wout)
{
    rp_rdesc *d = rpi_desc_lookup(p, ptr);
    rp_pool *mp = (rp_pool *)p;
    if (!d) {
        if (report)
            rpi_report(mp, RP_ERR_FOREIGN, ptr,
                       "%s(%p): not a region of pool %p (outside its region area)",
                       what, ptr, (void *)p);
        return NULL;
    }
    if (rpi_desc_base(p, d) != ptr) {
        if (report)
            rpi_report(mp, RP_ERR_INTERIOR, ptr,
                       "%s(%p): interior pointer into the region at %p",
                       what, ptr, rpi_desc_base(p, d));
        return NULL;
    }
    uint32_t w = rp_load_relaxed_u32(&d->word);
    /* IN_USE with no kind: another thread has just claimed its release. */
    if (RW_STATE(w) != RS_IN_USE || RW_KIND(w) == RK_NONE) {
        if (report)
            rpi_report(mp, RP_ERR_NOT_LIVE, ptr,
                       "%s(%p): region is not live (already released or never acquired)",
                       what, ptr);
        return NULL;
    }
    if (RW_KIND(w) != kind) {
        if (report)
            rpi_report(mp, RP_ERR_WRONG_API, ptr,
                       "%s(%p): region belongs to the %s allocator, not rp_region_acquire",
                       what, ptr,
                       RW_KIND(w) == RK_SLAB    ? "object (slab)"
                       : RW_KIND(w) == RK_LARGE ? "object (large)"
                                                : "arena");
        return NULL;
    }
    *wout = w;
    return d;
}

void rp_region_release(rp_pool *p, void *region)
{
    if (!p || !region)
        return;
    uint32_t w;
    rp_rdesc *d = live_region(p, region, RK_USER, "rp_region_release", true, &w);
    if (!d)
        return;
    /* Claim the release: IN_USE|USER (the word just checked) -> IN_USE with
     * no kind. Of two racing releasers exactly one wins; the loser is a
     * double release. Pairs with the CAS in claim/carve that made it IN_USE. */
    if (!rp_cas_u32(&d->word, &w, RW_MAKE(RS_IN_USE, RW_CLS(w), RK_NONE))) {
        rpi_report(p, RP_ERR_NOT_LIVE, region,
                   "rp_region_release(%p): region is not live (released concurrently)",
                   region);
        return;
    }
    rpi_region_put(p, d);
}

size_t rp_region_size(const rp_pool *p, const void *region)
{
    if (!p || !region)
        return 0;
    uint32_t w;
    rp_rdesc *d = live_region(p, region, RK_USER, "rp_region_size", false, &w);
    return d ? rpi_desc_bytes(p, d) : 0;
}

/* ---- purging --------------------------------------------------------------- */

/* Purge regions of class cls: all of them (force, DONTNEED, LAZY included)
 * or those released before `cutoff` (configured advice). Stops once `want`
 * bytes of physical were released. Returns bytes released. */
static size_t purge_class(rp_pool *p, unsigned cls, bool force, uint64_t cutoff,
                          size_t want)
{
    struct rp_class *c = &p->cls[cls];
    size_t bytes = rpi_class_bytes(p, cls), released = 0;
    if (rp_load_relaxed_u64(&c->dirty) == 0)
        return 0;
    RP_HIDE_BEGIN();
    ck_stack_entry_t *e = rpi_stack_batch_pop(&c->free);
    RP_HIDE_END();
    /* We hold the whole chain; nfree still counts it, so acquirers wait
     * instead of carving. Keep entries we do not purge in `keep`. */
    ck_stack_entry_t *keep = NULL, *todo = NULL;
    while (e) {
        RP_HIDE_BEGIN(); /* link written by ck's push under hiding */
        ck_stack_entry_t *next = e->next;
        RP_HIDE_END();
        rp_rdesc *d = desc_of_link(e);
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w);
        bool old = rp_load_relaxed_u64(&d->release_ms) <= cutoff;
        bool take = (st == RS_FREE_DIRTY && (force || old)) ||
                    (st == RS_FREE_LAZY && force);
        ck_stack_entry_t **list = take ? &todo : &keep;
        RP_HIDE_BEGIN();
        e->next = *list;
        RP_HIDE_END();
        *list = e;
        e = next;
    }
    /* Give the untouched ones back first so acquirers can use them. */
    for (e = keep; e;) {
        RP_HIDE_BEGIN();
        ck_stack_entry_t *next = e->next;
        ck_stack_push_mpmc(&c->free, e);
        RP_HIDE_END();
        e = next;
    }
    int advice = force ? RP_PURGE_DONTNEED : p->cfg.purge_advice;
    for (e = todo; e;) {
        RP_HIDE_BEGIN();
        ck_stack_entry_t *next = e->next;
        RP_HIDE_END();
        rp_rdesc *d = desc_of_link(e);
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w);
        if (released < want &&
            rp_cas_u32(&d->word, &w, RW_MAKE(RS_PURGING, cls, RK_NONE))) {
            /* CAS FREE -> PURGING: we popped it, so this cannot race a
             * claimer; pairs with the CAS that freed it. */
            unsigned ns = purge_one(p, d, cls, advice);
            if (ns == RS_FREE_CLEAN) {
                released += bytes;
                gauge_move(p, cls, st, RS_FREE_CLEAN);
            }
            rp_store_relaxed_u32(&d->word, RW_MAKE(ns, cls, RK_NONE));
        }
        RP_HIDE_BEGIN();
        ck_stack_push_mpmc(&c->free, e);
        RP_HIDE_END();
        e = next;
    }
    return released;
}

size_t rpi_purge_for(rp_pool *p, size_t bytes)
{
    size_t got = 0;
    for (int c = (int)p->nclasses - 1; c >= 0 && got < bytes; c--)
        got += purge_class(p, (unsigned)c, true, UINT64_MAX, bytes - got);
    return got;
}

bool rpi_dirty_any(rp_pool *p)
{
    for (unsigned c = 0; c < p->nclasses; c++)
        if (rp_load_relaxed_u64(&p->cls[c].dirty))
            return true;
    return false;
}

size_t rp_purge(rp_pool *p)
{
    if (!p)
        return 0;
    return rpi_purge_for(p, SIZE_MAX);
}

void rpi_purge_expired(rp_pool *p)
{
    uint32_t idle = 0;
    /* CAS 0 -> 1: one purger at a time; pairs with the release store below. */
    if (!rp_cas_u32(&p->purge_busy, &idle, 1))
        return;
    uint64_t now = rpi_now_ms();
    uint64_t delay = p->cfg.purge_delay_ms;
    uint64_t cutoff = now >= delay ? now - delay : 0;
    for (unsigned c = 0; c < p->nclasses; c++)
        purge_class(p, c, false, cutoff, SIZE_MAX);
    uint64_t step = delay / 4 > 5 ? delay / 4 : 5;
    rp_store_relaxed_u64(&p->next_purge_ms, now + step);
    rp_store_release_u32(&p->purge_busy, 0);
}

/* ---- background purger ----------------------------------------------------- */

static void *purger_main(void *arg)
{
    rp_pool *p = arg;
    uint64_t step = p->cfg.purge_delay_ms / 4 > 5 ? p->cfg.purge_delay_ms / 4 : 5;
    pthread_mutex_lock(&p->purger_lock);
    while (!p->purger_stop) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += (long)(step % 1000) * 1000000L;
        ts.tv_sec += (time_t)(step / 1000) + ts.tv_nsec / 1000000000L;
        ts.tv_nsec %= 1000000000L;
        pthread_cond_timedwait(&p->purger_cond, &p->purger_lock, &ts);
        if (p->purger_stop)
            break;
        pthread_mutex_unlock(&p->purger_lock);
        rpi_purge_expired(p);
        pthread_mutex_lock(&p->purger_lock);
    }
    pthread_mutex_unlock(&p->purger_lock);
    return NULL;
}

int rpi_purger_start(rp_pool *p)
{
    pthread_mutex_init(&p->purger_lock, NULL);
    pthread_cond_init(&p->purger_cond, NULL);
    if (!p->cfg.purge_thread || p->cfg.purge_delay_ms == 0)
        return 0;
    p->purger_stop = 0;
    /* The purger must never receive the application's signals (a server
     * that blocks SIGTERM for signalfd would otherwise be killed through
     * this thread): create it with every signal blocked. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(&p->purger, NULL, purger_main, p);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0)
        return -EAGAIN;
    p->purger_running = 1;
    return 0;
}

void rpi_purger_stop(rp_pool *p)
{
    if (p->purger_running) {
        pthread_mutex_lock(&p->purger_lock);
        p->purger_stop = 1;
        pthread_cond_signal(&p->purger_cond);
        pthread_mutex_unlock(&p->purger_lock);
        pthread_join(p->purger, NULL);
        p->purger_running = 0;
    }
    pthread_cond_destroy(&p->purger_cond);
    pthread_mutex_destroy(&p->purger_lock);
}

/* ---- invariant check ---------------------------------------------------------- */

#define CHECK(cond, ...)                                                      \
    do {                                                                      \
        if (!(cond)) {                                                        \
            rpi_report(p, RP_ERR_INVARIANT, NULL, __VA_ARGS__);               \
            return -EFAULT;                                                   \
        }                                                                     \
    } while (0)

static int region_check(rp_pool *p);

/* Exclude the delayed purger (it holds regions in PURGING while it works),
 * so that a check at a quiescent point of the program is exact. */
int rpi_region_check(rp_pool *p)
{
    uint32_t idle = 0;
    /* CAS 0 -> 1 as in rpi_purge_expired; pairs with its release store. */
    while (!rp_cas_u32(&p->purge_busy, &idle, 1)) {
        idle = 0;
        sched_yield();
    }
    int rc = region_check(p);
    rp_store_release_u32(&p->purge_busy, 0);
    return rc;
}

static int region_check(rp_pool *p)
{
    uint64_t in_use[RP_MAX_CLASSES] = {0}, dirty[RP_MAX_CLASSES] = {0},
             clean[RP_MAX_CLASSES] = {0};
    size_t hwm = rp_load_acquire_u64(&p->hwm);
    size_t used_bytes = 0;
    for (size_t g = 0; g < hwm;) {
        rp_rdesc *d = &p->desc[g];
        uint32_t w = rp_load_relaxed_u32(&d->word);
        unsigned st = RW_STATE(w), cls = RW_CLS(w);
        CHECK(st != RS_TAIL && st != RS_UNUSED && st != RS_PURGING,
              "check: granule %zu is a region head with state %u", g, st);
        CHECK(cls < p->nclasses, "check: region %zu has class %u", g, cls);
        CHECK(rp_load_relaxed_u32(&d->head) == g,
              "check: head %zu names head %u", g, rp_load_relaxed_u32(&d->head));
        size_t n = (size_t)1 << cls;
        CHECK(g + n <= hwm, "check: region %zu of class %u passes the hwm %zu", g, cls, hwm);
        for (size_t t = 1; t < n; t++) {
            uint32_t tw = rp_load_relaxed_u32(&d[t].word);
            CHECK(RW_STATE(tw) == RS_TAIL && rp_load_relaxed_u32(&d[t].head) == g,
                  "check: granule %zu of region %zu is not its tail", g + t, g);
        }
        if (st == RS_IN_USE)
            in_use[cls]++;
        else if (st == RS_FREE_CLEAN)
            clean[cls]++;
        else
            dirty[cls]++;
        if (st != RS_FREE_CLEAN)
            used_bytes += n << p->gshift;
        g += n;
    }
    for (unsigned c = 0; c < p->nclasses; c++) {
        struct rp_class *k = &p->cls[c];
        CHECK(in_use[c] == rp_load_relaxed_u64(&k->in_use) &&
                  dirty[c] == rp_load_relaxed_u64(&k->dirty) &&
                  clean[c] == rp_load_relaxed_u64(&k->clean),
              "check: class %u gauges in_use/dirty/clean %lu/%lu/%lu, table says %lu/%lu/%lu",
              c, (unsigned long)k->in_use, (unsigned long)k->dirty,
              (unsigned long)k->clean, (unsigned long)in_use[c],
              (unsigned long)dirty[c], (unsigned long)clean[c]);
        /* Walk the stack (quiescent): every entry a free head of class c. */
        uint64_t n = 0;
        RP_HIDE_BEGIN();
        for (ck_stack_entry_t *e = CK_STACK_FIRST(&k->free); e && n <= hwm;
             e = CK_STACK_NEXT(e)) {
            rp_rdesc *d = desc_of_link(e);
            uint32_t w = rp_load_relaxed_u32(&d->word);
            if (!FREE_STATE(RW_STATE(w)) || RW_CLS(w) != c)
                n = UINT64_MAX - 1;
            else
                n++;
        }
        RP_HIDE_END();
        CHECK(n == dirty[c] + clean[c] && n == rp_load_relaxed_u64(&k->nfree),
              "check: class %u free stack holds %lu entries, expected %lu (nfree %lu)",
              c, (unsigned long)n, (unsigned long)(dirty[c] + clean[c]),
              (unsigned long)rp_load_relaxed_u64(&k->nfree));
    }
    rp_account *a = &p->acct;
    uint64_t meta = rp_load_relaxed_u64(&a->metadata_bytes);
    uint64_t hc = rp_load_relaxed_u64(&a->heap_committed_bytes);
    uint64_t hp = rp_load_relaxed_u64(&a->heap_physical_bytes);
    uint64_t virt = rp_load_relaxed_u64(&a->virtual_bytes);
    uint64_t phys = rp_load_relaxed_u64(&a->physical_bytes);
    CHECK(virt == meta + hc + (hwm << p->gshift),
          "check: virtual_bytes %lu != metadata %lu + heap %lu + carved %lu",
          (unsigned long)virt, (unsigned long)meta, (unsigned long)hc,
          (unsigned long)(hwm << p->gshift));
    CHECK(phys == meta + hp + used_bytes,
          "check: physical_bytes %lu != metadata %lu + heap %lu + regions %lu",
          (unsigned long)phys, (unsigned long)meta, (unsigned long)hp,
          (unsigned long)used_bytes);
    CHECK(phys <= virt && virt <= p->reserve_bytes,
          "check: physical %lu <= virtual %lu <= reserved %zu fails",
          (unsigned long)phys, (unsigned long)virt, p->reserve_bytes);
    return 0;
}
