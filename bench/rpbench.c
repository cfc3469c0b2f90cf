/* rpbench.c -- one benchmark cell per process.
 *
 *   rpbench <workload> alloc=<a> [threads=N] [cpus=N] [size=B]
 *           [order=lifo|random] [ops=N] [iters=N] [wait_ms=N] [purge_ms=N]
 *           [replays=N] [seed=N] [place=free|split|pair]
 *   rpbench features
 *
 * workload: small | xthread | request | large | overhead | heap
 * alloc:    glibc | jemalloc | mimalloc | tcmalloc  (malloc/free; the peer is
 *           chosen by LD_PRELOAD, which the process verifies)
 *           rpool-malloc  (malloc/free of librpool-malloc.so, preloaded)
 *           rpool  (rpool's API for that workload, in process)
 *           bump   (request: inline bump pointer; xthread: the bare ring)
 *
 * Output protocol: see common.h. run.py drives the cells; run a cell by hand
 * to look at one number.
 */
#define _GNU_SOURCE
#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct {
    const char *name;
    rpb_alloc alloc;
} allocs[] = {
    {"glibc", RPB_GLIBC},       {"jemalloc", RPB_JEMALLOC},
    {"mimalloc", RPB_MIMALLOC}, {"tcmalloc", RPB_TCMALLOC},
    {"rpool-malloc", RPB_RPOOL_MALLOC},
    {"rpool", RPB_RPOOL},       {"bump", RPB_BUMP},
};

static const struct {
    const char *name;
    void (*fn)(const rpb_args *);
} workloads[] = {
    {"small", wl_small},       {"xthread", wl_xthread},
    {"request", wl_request},   {"large", wl_large},
    {"overhead", wl_overhead}, {"heap", wl_heap},
};

static uint64_t parse_u64(const char *key, const char *v)
{
    char *end;
    unsigned long long x = strtoull(v, &end, 10);
    if (end == v)
        rpb_error("%s=%s: not a number", key, v);
    switch (*end) {
    case 'K': case 'k': x <<= 10; end++; break;
    case 'M': case 'm': x <<= 20; end++; break;
    case 'G': case 'g': x <<= 30; end++; break;
    default: break;
    }
    if (*end)
        rpb_error("%s=%s: trailing characters", key, v);
    return x;
}

static void usage(void)
{
    fprintf(stderr,
            "usage: rpbench <small|xthread|request|large|overhead|heap> "
            "alloc=<glibc|jemalloc|mimalloc|tcmalloc|rpool-malloc|rpool|bump> "
            "[threads=N] [cpus=N] [size=B] [order=lifo|random] [ops=N] "
            "[iters=N] [wait_ms=N] [purge_ms=N] [replays=N] [seed=N] "
            "[place=free|split|pair]\n"
            "       rpbench features\n");
    exit(64);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    if (strcmp(argv[1], "features") == 0) {
        printf("FEATURES pool=%d region=%d alloc=%d arena=%d heap=%d\n",
               RPB_HAVE_POOL, RPB_HAVE_REGION, RPB_HAVE_ALLOC, RPB_HAVE_ARENA,
               RPB_HAVE_HEAP);
        return 0;
    }
    rpb_args a = {.workload = argv[1], .threads = 1, .seed = 1,
                  .wait_ms = 1000, .purge_ms = 200};
    int have_alloc = 0;
    for (int i = 2; i < argc; i++) {
        char *eq = strchr(argv[i], '=');
        if (!eq)
            usage();
        *eq = 0;
        const char *k = argv[i], *v = eq + 1;
        if (strcmp(k, "alloc") == 0) {
            for (size_t j = 0; j < sizeof allocs / sizeof allocs[0]; j++)
                if (strcmp(v, allocs[j].name) == 0) {
                    a.alloc = allocs[j].alloc;
                    a.alloc_name = allocs[j].name;
                    have_alloc = 1;
                }
            if (!have_alloc)
                rpb_error("unknown alloc=%s", v);
        } else if (strcmp(k, "threads") == 0) {
            a.threads = (int)parse_u64(k, v);
        } else if (strcmp(k, "cpus") == 0) {
            a.cpus = (int)parse_u64(k, v);
        } else if (strcmp(k, "size") == 0) {
            a.size = (size_t)parse_u64(k, v);
        } else if (strcmp(k, "order") == 0) {
            if (strcmp(v, "lifo") && strcmp(v, "random"))
                rpb_error("order=%s: lifo or random", v);
            a.random_order = strcmp(v, "random") == 0;
        } else if (strcmp(k, "ops") == 0) {
            a.ops = parse_u64(k, v);
        } else if (strcmp(k, "iters") == 0) {
            a.iters = parse_u64(k, v);
        } else if (strcmp(k, "wait_ms") == 0) {
            a.wait_ms = (uint32_t)parse_u64(k, v);
        } else if (strcmp(k, "purge_ms") == 0) {
            a.purge_ms = (uint32_t)parse_u64(k, v);
        } else if (strcmp(k, "replays") == 0) {
            a.replays = (uint32_t)parse_u64(k, v);
        } else if (strcmp(k, "seed") == 0) {
            a.seed = parse_u64(k, v);
        } else if (strcmp(k, "place") == 0) {
            if (strcmp(v, "free") == 0)
                a.place = RPB_PLACE_FREE;
            else if (strcmp(v, "split") == 0)
                a.place = RPB_PLACE_SPLIT;
            else if (strcmp(v, "pair") == 0)
                a.place = RPB_PLACE_PAIR;
            else
                rpb_error("place=%s: free, split or pair", v);
        } else {
            rpb_error("unknown key %s", k);
        }
    }
    if (!have_alloc)
        usage();
    if (a.threads < 1 || a.threads > 64)
        rpb_error("threads=%d out of range [1, 64]", a.threads);
    if (a.place != RPB_PLACE_FREE && strcmp(a.workload, "xthread") != 0)
        rpb_error("place= is an xthread parameter");
    rpb_verify_malloc(&a);
    if (a.cpus > 0) {
        if (rpb_pin_cpus(a.cpus) != 0)
            rpb_error("cannot pin to %d CPUs", a.cpus);
        rpb_info("pinned to %d CPUs", a.cpus);
    }
    for (size_t j = 0; j < sizeof workloads / sizeof workloads[0]; j++)
        if (strcmp(a.workload, workloads[j].name) == 0) {
            workloads[j].fn(&a);
            return 0;
        }
    rpb_error("unknown workload %s", a.workload);
}
