/* ops.h -- the allocation calls the workload loops are stamped out with.
 *
 * Each workload loop is written once as a macro and instantiated per
 * allocator with these inline functions, so the measured code calls
 * malloc/rp_alloc directly (no function pointer in between) and every
 * allocator pays the same harness cost. `ctx` is the rp_pool (or arena) for
 * rpool and unused for malloc.
 *
 * The bench is compiled with -fno-builtin-malloc/-free so the compiler cannot
 * pair up and delete a malloc/free whose memory it can see is unused.
 */
#ifndef RPB_OPS_H
#define RPB_OPS_H

#include "common.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static inline void *op_malloc(void *ctx, size_t n)
{
    (void)ctx;
    return malloc(n);
}
static inline void op_mfree(void *ctx, void *p)
{
    (void)ctx;
    free(p);
}

#if RPB_HAVE_ALLOC
static inline void *op_rpalloc(void *ctx, size_t n) { return rp_alloc(ctx, n); }
static inline void op_rpfree(void *ctx, void *p) { rp_free(ctx, p); }
#endif

#if RPB_HAVE_HEAP
static inline void *op_heapalloc(void *ctx, size_t n)
{
    return rp_heap_alloc(ctx, n);
}
static inline void op_heapfree(void *ctx, void *p) { rp_heap_free(ctx, p); }
#endif

#if RPB_HAVE_REGION
static inline void *op_regacquire(void *ctx, size_t n)
{
    return rp_region_acquire(ctx, n);
}
static inline void op_regrelease(void *ctx, void *p)
{
    rp_region_release(ctx, p);
}
#endif

/* An allocation returned NULL inside a measured loop: the cell is an error,
 * never a number (rpb_alloc_failed is out of line and cold). */
#define op_failed rpb_alloc_failed

#endif /* RPB_OPS_H */
