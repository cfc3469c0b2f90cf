/* account.c -- the two counters and their budgets.
 *
 * virtual_bytes  = committed bytes: carved regions + committed heap + metadata.
 * physical_bytes = resident by our account: regions in use + free regions not
 *                  purged with DONTNEED + heap pages handed out + metadata.
 * Invariants (quiescent): physical <= virtual <= reserved,
 *                         virtual <= virtual_budget, physical <= physical_budget
 *                         (the latter two unless a budget was lowered at run time).
 *
 * Concurrency: any thread charges and uncharges. A charge is a relaxed CAS
 * loop that only succeeds when the new total stays within the budget, so
 * concurrent chargers can never overshoot it together. The counters publish
 * no data, so relaxed order is enough; TSan sees no happens-before from
 * them (which is what we want: see atomic.h).
 */
#include "internal.h"

#include <sched.h>
#include <stdlib.h>

static void watermark(rp_pool *p, uint64_t phys)
{
    size_t soft = p->cfg.physical_soft_limit;
    if (!soft || !p->cfg.watermark_hook)
        return;
    uint64_t above = phys > soft;
    uint64_t was = rp_load_relaxed_u64(&p->acct.soft_above);
    /* CAS so that exactly one thread reports each crossing. */
    if (was != above && rp_cas_relaxed_u64(&p->acct.soft_above, &was, above))
        p->cfg.watermark_hook(p->cfg.watermark_opaque, p, (size_t)phys,
                              (int)above);
}

/* Add bytes to *ctr iff the result stays <= *budget. */
static bool charge(uint64_t *ctr, const uint64_t *budget, uint64_t *peak,
                   size_t bytes, uint64_t *out)
{
    uint64_t cur = rp_load_relaxed_u64(ctr);
    uint64_t next;
    do {
        uint64_t b = rp_load_relaxed_u64(budget);
        next = cur + bytes;
        if (next < cur || next > b)
            return false;
        /* CAS loop on the counter alone; pairs with nothing (no data). */
    } while (!rp_cas_relaxed_u64(ctr, &cur, next));
    rp_max_relaxed_u64(peak, next);
    *out = next;
    return true;
}

int rpi_virt_charge(rp_pool *p, size_t bytes)
{
    uint64_t now;
    if (!charge(&p->acct.virtual_bytes, &p->acct.virtual_budget,
                &p->acct.virtual_peak, bytes, &now))
        return -ENOMEM;
    return 0;
}

void rpi_virt_uncharge(rp_pool *p, size_t bytes)
{
    uint64_t old = rp_sub_relaxed_u64(&p->acct.virtual_bytes, bytes);
    rp_assert(1, old >= bytes);
    (void)old;
}

/* The CAS charge alone: no purge and no watermark hook, so that a caller
 * holding a lock (the heap's) may use it; the caller checks the watermark
 * after its unlock. Lock-free (a CAS loop). */
bool rpi_phys_try_charge(rp_pool *p, size_t bytes)
{
    uint64_t now;
    return charge(&p->acct.physical_bytes, &p->acct.physical_budget,
                  &p->acct.physical_peak, bytes, &now);
}

int rpi_phys_charge(rp_pool *p, size_t bytes)
{
    uint64_t now;
    /* Over budget: purge free regions and retry. If nothing could be purged
     * but some class still has resident free regions, another purger is
     * holding them (it batch-pops a class while it works) and is releasing
     * them: wait for it rather than fail. Give up only when nothing
     * purgeable is left (or after a bounded number of rounds). */
    for (int attempt = 0; attempt < 10000; attempt++) {
        if (charge(&p->acct.physical_bytes, &p->acct.physical_budget,
                   &p->acct.physical_peak, bytes, &now)) {
            watermark(p, now);
            return 0;
        }
        if (rpi_purge_for(p, bytes) == 0) {
            if (!rpi_dirty_any(p))
                break;
            sched_yield();
        }
    }
    return -ENOMEM;
}

void rpi_phys_force(rp_pool *p, size_t bytes)
{
    uint64_t now = rp_add_relaxed_u64(&p->acct.physical_bytes, bytes) + bytes;
    rp_max_relaxed_u64(&p->acct.physical_peak, now);
    watermark(p, now);
}

void rpi_phys_uncharge(rp_pool *p, size_t bytes)
{
    uint64_t old = rp_sub_relaxed_u64(&p->acct.physical_bytes, bytes);
    rp_assert(1, old >= bytes);
    watermark(p, old - bytes);
}

void rpi_count_fail(rp_pool *p, enum rp_fail why)
{
    uint64_t *c = why == RP_FAIL_VIRTUAL    ? &p->acct.fail_virtual
                  : why == RP_FAIL_PHYSICAL ? &p->acct.fail_physical
                  : why == RP_FAIL_OS       ? &p->acct.fail_os
                                            : &p->acct.fail_other;
    rp_add_relaxed_u64(c, 1);
}

void *rpi_fail_null(rp_pool *p, enum rp_fail why, int err)
{
    rpi_count_fail(p, why);
    errno = err;
    return NULL;
}

int rp_budget_set(rp_pool *p, rp_budget_kind kind, size_t bytes)
{
    if (!p || bytes == 0)
        return -EINVAL;
    if (kind == RP_BUDGET_VIRTUAL) {
        if (bytes > p->reserve_bytes)
            return -EINVAL;
        rp_store_relaxed_u64(&p->acct.virtual_budget, bytes);
        return 0;
    }
    if (kind != RP_BUDGET_PHYSICAL)
        return -EINVAL;
    rp_store_relaxed_u64(&p->acct.physical_budget, bytes);
    uint64_t phys = rp_load_relaxed_u64(&p->acct.physical_bytes);
    if (phys > bytes)
        rpi_purge_for(p, phys - bytes);
    return 0;
}

size_t rp_budget_get(const rp_pool *p, rp_budget_kind kind)
{
    if (!p)
        return 0;
    if (kind == RP_BUDGET_VIRTUAL)
        return rp_load_relaxed_u64(&p->acct.virtual_budget);
    if (kind == RP_BUDGET_PHYSICAL)
        return rp_load_relaxed_u64(&p->acct.physical_budget);
    return 0;
}
