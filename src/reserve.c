/* reserve.c -- the pool's one reservation: layout, metadata, carving.
 *
 * A pool is one mmap(PROT_NONE, MAP_NORESERVE) range, reserved once:
 *
 *   base                                                      base + reserve
 *   | pool | descriptor table | meta bump | heap ... | regions ...         |
 *     ^ committed prefix of each part grows on demand (mprotect RW)
 *
 * Each part's committed prefix is contiguous, so the kernel sees at most two
 * mappings per part (committed, not yet committed): the VMA count stays
 * constant however many regions exist. Regions are carved by bumping the
 * high-water mark `hwm` (in granules of region_min_bytes); a pointer maps to
 * its descriptor by (ptr - rbase) >> gshift.
 *
 * Concurrency: carving and descriptor-table commits run under carve_lock
 * (they make system calls; reuse of carved regions never takes it). The meta
 * bump area is under meta_lock. Lock order: carve_lock, then meta_lock is
 * never taken inside it (independent); neither is held while calling out of
 * this file except into os.c and account.c.
 *
 * Invariants:
 *   virtual_bytes = metadata_bytes + heap_committed_bytes + hwm * granule
 *   desc_committed >= hwm * sizeof(rp_rdesc)
 */
#include "internal.h"

#include <string.h>

static size_t clamp(size_t v, size_t lo, size_t hi)
{
    return v < lo ? lo : v > hi ? hi : v;
}

rp_pool *rpi_reserve_create(const rp_config *cfg)
{
    size_t page = rpi_os_page_size();
    size_t gran = cfg->region_min_bytes;
    size_t R = rp_align_up(cfg->reserve_bytes, gran);
    size_t pool_bytes = rp_align_up(sizeof(rp_pool), page);
    size_t ngr_max = R / gran;
    size_t desc_bytes = rp_align_up(ngr_max * sizeof(rp_rdesc), page);
    size_t bump_bytes = rp_align_up(clamp(R / 1024, (size_t)1 << 20, (size_t)1 << 30), page);
    size_t heap_bytes = rp_align_up(cfg->heap_bytes, page);
    size_t meta_end = rp_align_up(pool_bytes + desc_bytes + bump_bytes, gran);
    size_t rstart = rp_align_up(meta_end + heap_bytes, gran);
    if (rstart + cfg->region_max_bytes > R) {
        errno = EINVAL;
        return NULL;
    }

    void *mem;
    int rc = rpi_os_reserve(R, &mem);
    if (rc) {
        errno = ENOMEM;
        return NULL;
    }
    rc = rpi_os_commit(mem, pool_bytes);
    if (rc) {
        rpi_os_release(mem, R);
        errno = ENOMEM;
        return NULL;
    }

    rp_pool *p = mem; /* fresh anonymous pages: already zero */
    p->magic = RP_POOL_MAGIC;
    p->cfg = *cfg;
    p->page = page;
    p->base = mem;
    p->reserve_bytes = R;
    p->desc = (rp_rdesc *)(p->base + pool_bytes);
    p->bump_base = p->base + pool_bytes + desc_bytes;
    p->bump_reserved = bump_bytes;
    p->heap_base = p->base + meta_end;
    p->heap_bytes = heap_bytes;
    p->rbase = p->base + rstart;
    p->rbytes = (R - rstart) / gran * gran;
    p->gshift = rp_log2(gran);
    p->nclasses = rp_log2(cfg->region_max_bytes) - p->gshift + 1;
    p->ngranules = p->rbytes / gran;
    for (unsigned c = 0; c < p->nclasses; c++) {
        ck_stack_init(&p->cls[c].free);
        /* ck_stack's ABA generation is a char * bumped by pointer arithmetic;
         * from NULL the first bump is NULL + 1, which UBSan rightly flags.
         * Any non-NULL start works: only equality of generations matters. */
        p->cls[c].free.generation = (char *)p->cls;
    }
    pthread_mutex_init(&p->carve_lock, NULL);
    pthread_mutex_init(&p->meta_lock, NULL);

    p->acct.virtual_budget = cfg->virtual_budget ? cfg->virtual_budget : R;
    p->acct.physical_budget =
        cfg->physical_budget ? cfg->physical_budget : rpi_os_physical_default();
    /* The pool struct itself is metadata: committed and (once written)
     * resident. */
    p->acct.virtual_bytes = pool_bytes;
    p->acct.physical_bytes = pool_bytes;
    p->acct.virtual_peak = pool_bytes;
    p->acct.physical_peak = pool_bytes;
    p->acct.metadata_bytes = pool_bytes;
    return p;
}

void rpi_reserve_destroy(rp_pool *p)
{
    size_t R = p->reserve_bytes;
    /* ASan: manual poisoning survives munmap, so a later mapping at this
     * address would inherit it. Unpoison what was ever committed (only
     * there can poison have been set), not the whole reservation. */
    rp_unpoison(p->rbase, (size_t)rp_load_relaxed_u64(&p->hwm) << p->gshift);
    rp_unpoison(p->heap_base, (size_t)rp_load_relaxed_u64(&p->acct.heap_committed_bytes));
    rp_unpoison(p->bump_base, rp_load_relaxed_u64(&p->bump_committed));
    rp_unpoison(p->desc, rp_load_relaxed_u64(&p->desc_committed));
    pthread_mutex_destroy(&p->carve_lock);
    pthread_mutex_destroy(&p->meta_lock);
    p->magic = 0;
    rpi_os_release(p->base, R); /* on failure the range just stays mapped */
}

/* Commit [addr, addr + bytes): charge virtual (and physical when `resident`,
 * for memory that is written at once), then mprotect. On failure everything
 * is undone, *why says which step refused, and -ENOMEM is returned. The one
 * commit path of this file: regions, heap steps and metadata all use it. */
static int commit_range(rp_pool *p, void *addr, size_t bytes, bool resident,
                        enum rp_fail *why)
{
    if (rpi_virt_charge(p, bytes)) {
        *why = RP_FAIL_VIRTUAL;
        return -ENOMEM;
    }
    if (resident && rpi_phys_charge(p, bytes)) {
        rpi_virt_uncharge(p, bytes);
        *why = RP_FAIL_PHYSICAL;
        return -ENOMEM;
    }
    if (rpi_os_commit(addr, bytes)) {
        if (resident)
            rpi_phys_uncharge(p, bytes);
        rpi_virt_uncharge(p, bytes);
        *why = RP_FAIL_OS;
        return -ENOMEM;
    }
    return 0;
}

/* Grow a committed metadata prefix [base, base + *committed) to at least
 * `need` bytes (page-rounded by the caller), charged as metadata. Caller
 * holds the lock that serializes writers of *committed. */
static int grow_meta(rp_pool *p, char *base, uint64_t *committed, size_t need,
                     enum rp_fail *why)
{
    size_t have = rp_load_relaxed_u64(committed);
    if (need <= have)
        return 0;
    if (commit_range(p, base + have, need - have, true, why))
        return -ENOMEM;
    rp_add_relaxed_u64(&p->acct.metadata_bytes, need - have);
    rp_store_relaxed_u64(committed, need);
    return 0;
}

rp_rdesc *rpi_carve(rp_pool *p, unsigned cls, unsigned kind, size_t count,
                    enum rp_fail *why)
{
    size_t n = (size_t)1 << cls;
    size_t span = n * count; /* granules */
    rp_rdesc *d = NULL;

    rpi_rcu_ready(); /* before the lock: see internal.h */
    rp_mutex_lock(&p->carve_lock);
    size_t hwm = rp_load_relaxed_u64(&p->hwm);
    if (hwm + span > p->ngranules) {
        *why = RP_FAIL_OTHER; /* reservation exhausted */
        goto out;
    }
    size_t need = rp_align_up((hwm + span) * sizeof(rp_rdesc), p->page);
    if (grow_meta(p, (char *)p->desc, &p->desc_committed, need, why) ||
        commit_range(p, p->rbase + (hwm << p->gshift), span << p->gshift, false, why))
        goto out;
    for (size_t r = 0; r < count; r++) {
        size_t h = hwm + r * n;
        rp_rdesc *e = &p->desc[h];
        for (size_t g = 1; g < n; g++) {
            rp_store_relaxed_u32(&e[g].head, (uint32_t)h);
            rp_store_relaxed_u32(&e[g].word, RW_MAKE(RS_TAIL, 0, RK_NONE));
        }
        rp_store_relaxed_u32(&e->head, (uint32_t)h);
        rp_store_relaxed_u32(&e->word, r ? RW_MAKE(RS_RESERVED, cls, RK_NONE)
                                         : RW_MAKE(RS_IN_USE, cls, kind));
    }
    if (count > 1) /* the run's regions, until they are handed out */
        rp_poison(p->rbase + ((hwm + n) << p->gshift), (span - n) << p->gshift);
    d = &p->desc[hwm];
    /* Publishes the new granules to lookups. A pointer into this region
     * reaches another thread only through the caller's own synchronization,
     * which orders these stores before that thread's lookup. */
    rp_store_release_u64(&p->hwm, hwm + span);
out:
    rp_mutex_unlock(&p->carve_lock);
    return d;
}

int rpi_heap_commit(rp_pool *p, void *addr, size_t bytes, enum rp_fail *why)
{
    if (commit_range(p, addr, bytes, false, why))
        return -ENOMEM; /* counted by the heap, which knows the outcome */
    rp_add_relaxed_u64(&p->acct.heap_committed_bytes, bytes);
    return 0;
}

void *rpi_meta_alloc(rp_pool *p, size_t bytes, size_t align)
{
    void *r = NULL;
    enum rp_fail why = RP_FAIL_OTHER;
    rpi_rcu_ready(); /* before the lock: see internal.h */
    rp_mutex_lock(&p->meta_lock);
    size_t off = rp_align_up(rp_load_relaxed_u64(&p->bump_used), align ? align : 16);
    if (off + bytes > p->bump_reserved || off + bytes < off)
        goto fail;
    if (grow_meta(p, p->bump_base, &p->bump_committed, rp_align_up(off + bytes, p->page),
                  &why))
        goto fail;
    rp_store_relaxed_u64(&p->bump_used, off + bytes);
    r = p->bump_base + off;
    rp_mutex_unlock(&p->meta_lock);
    return r;
fail:
    rp_mutex_unlock(&p->meta_lock);
    return rpi_fail_null(p, why, ENOMEM);
}
