/* stats.c -- snapshots of the counters and their text, JSON and Prometheus
 * renderings.
 *
 * Reads only: every counter is loaded with a relaxed atomic, so a snapshot
 * taken while other threads work is a set of individually exact values that
 * may disagree by in-flight operations (exact when quiescent). Nothing here
 * allocates: output is formatted into a stack buffer and passed to the
 * caller's write callback piece by piece.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#define LD(x) rp_load_relaxed_u64(&(x))

int rp_stats_get(rp_pool *p, rp_stats *st)
{
    if (!p || !st)
        return -EINVAL;
    memset(st, 0, sizeof *st);
    st->size = sizeof *st;
    st->version = RP_STATS_VERSION;
    rp_account *a = &p->acct;
    st->reserved_bytes = p->reserve_bytes;
    st->virtual_bytes = LD(a->virtual_bytes);
    st->physical_bytes = LD(a->physical_bytes);
    st->virtual_budget = LD(a->virtual_budget);
    st->physical_budget = LD(a->physical_budget);
    st->virtual_peak = LD(a->virtual_peak);
    st->physical_peak = LD(a->physical_peak);
    st->metadata_bytes = LD(a->metadata_bytes);
    st->heap_committed_bytes = LD(a->heap_committed_bytes);
    st->heap_physical_bytes = LD(a->heap_physical_bytes);
    st->fail_virtual = LD(a->fail_virtual);
    st->fail_physical = LD(a->fail_physical);
    st->fail_os = LD(a->fail_os);
    st->fail_other = LD(a->fail_other);
    st->errors = LD(a->errors);
    st->threads = LD(p->nthreads);
    st->nclasses = p->nclasses;
    uint64_t cached[RP_MAX_CLASSES] = {0}, hits[RP_MAX_CLASSES] = {0};
    rpi_region_cache_stats(p, cached, hits);
    for (unsigned c = 0; c < p->nclasses; c++) {
        struct rp_class *k = &p->cls[c];
        rp_class_stats *cs = &st->cls[c];
        size_t b = rpi_class_bytes(p, c);
        cs->region_bytes = b;
        /* Regions in thread caches sit in the in_use gauge; report them as
         * free and resident. */
        uint64_t in_use = LD(k->in_use);
        cs->cached = cached[c] < in_use ? cached[c] : in_use;
        cs->in_use = in_use - cs->cached;
        cs->free_dirty = LD(k->dirty) + cs->cached;
        cs->free_clean = LD(k->clean);
        cs->carves = LD(k->carves);
        cs->reuses = LD(k->reuses) + hits[c];
        cs->purges = LD(k->purges);
        cs->splits = LD(k->splits);
        st->region_in_use_bytes += cs->in_use * b;
        st->region_dirty_bytes += cs->free_dirty * b;
        st->region_clean_bytes += cs->free_clean * b;
        st->carves += cs->carves;
        st->reuses += cs->reuses;
        st->purges += cs->purges;
        st->splits += cs->splits;
    }
    rpi_heap_stats(p, st);
    st->heap_guaranteed_live_bytes = rpi_heap_guaranteed_live(p, 0);
    rpi_slab_stats(p, st);
    rpi_arena_stats(p, st);
    return 0;
}

/* A class that was never used has nothing to show in any format. */
static bool class_unused(const rp_class_stats *k)
{
    return !k->in_use && !k->free_dirty && !k->free_clean && !k->carves;
}

/* Formatting without allocation: a stack buffer flushed to the callback. */
struct out {
    rp_write_fn write;
    void *opaque;
    char buf[1024];
};

static void outf(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(struct out *o, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->buf, sizeof o->buf, fmt, ap);
    va_end(ap);
    o->write(o->opaque, o->buf);
}

/* ---- per-thread and per-arena rows -------------------------------------- */

/* Rows are collected first (the walks hold the RCU read lock or the arena
 * list lock, under which the user's write callback must not run) into a
 * bounded stack array; threads and arenas past the bound are summed. */
#define ROWS_MAX 32

struct trow {
    uint64_t tid;
    bool has_arena;
    rp_arena_stats a;       /* the thread arena, when has_arena */
    uint64_t rc_regions, rc_bytes; /* region cache */
};

struct arow {
    rp_arena_stats a;
};

struct rows {
    rp_pool *p;
    unsigned nt, na;
    struct trow t[ROWS_MAX];
    struct arow a[ROWS_MAX];
    uint64_t more_threads, more_arenas;  /* not listed */
    uint64_t more_bytes;                 /* their arena bytes in use */
};

static void row_thread(rp_tstate *ts, void *arg)
{
    struct rows *r = arg;
    if (r->nt == ROWS_MAX) {
        r->more_threads++;
        return;
    }
    struct trow *t = &r->t[r->nt++];
    memset(t, 0, sizeof *t);
    t->tid = rp_load_relaxed_u64(&ts->tid);
    rpi_region_cache_shard(r->p, ts, &t->rc_regions, &t->rc_bytes);
}

static void row_arena(const rp_arena_stats *st, uint64_t tid, void *arg)
{
    struct rows *r = arg;
    if (tid) {
        for (unsigned i = 0; i < r->nt; i++)
            if (r->t[i].tid == tid) {
                r->t[i].has_arena = true;
                r->t[i].a = *st;
                return;
            }
        r->more_bytes += st->bytes_in_use; /* a thread not listed */
        return;
    }
    if (r->na == ROWS_MAX) {
        r->more_arenas++;
        r->more_bytes += st->bytes_in_use;
        return;
    }
    r->a[r->na++].a = *st;
}

/* Collect the rows of p. O(threads + explicit arenas * ROWS_MAX). */
static void rows_collect(rp_pool *p, struct rows *r)
{
    r->p = p;
    r->nt = r->na = 0;
    r->more_threads = r->more_arenas = r->more_bytes = 0;
    rpi_threads_foreach(p, row_thread, r);
    rpi_arena_foreach(p, row_arena, r);
}

static void print_rows_text(struct out *o, const struct rows *r)
{
    outf(o, "threads (%u listed):\n", r->nt);
    for (unsigned i = 0; i < r->nt; i++) {
        const struct trow *t = &r->t[i];
        if (t->has_arena && t->a.in_flight)
            outf(o, "  thread %" PRIu64 ": arena in flight (changing chunks)", t->tid);
        else if (t->has_arena)
            outf(o, "  thread %" PRIu64 ": arena in use %zu, peak %zu, %" PRIu64
                    " regions (%zu bytes)", t->tid, t->a.bytes_in_use, t->a.peak_bytes,
                 t->a.regions, t->a.region_bytes);
        else
            outf(o, "  thread %" PRIu64 ": no arena", t->tid);
        outf(o, "; region cache %" PRIu64 " regions (%" PRIu64 " bytes)\n", t->rc_regions,
             t->rc_bytes);
    }
    if (r->more_threads)
        outf(o, "  ... %" PRIu64 " more threads\n", r->more_threads);
    outf(o, "explicit arenas (%u listed):\n", r->na);
    for (unsigned i = 0; i < r->na; i++) {
        const rp_arena_stats *a = &r->a[i].a;
        if (a->in_flight)
            outf(o, "  arena %u: in flight (changing chunks)\n", i + 1);
        else
            outf(o, "  arena %u: in use %zu, peak %zu, %" PRIu64 " regions (%zu bytes), budget %zu\n",
                 i + 1, a->bytes_in_use, a->peak_bytes, a->regions, a->region_bytes,
                 a->budget_bytes);
    }
    if (r->more_arenas)
        outf(o, "  ... %" PRIu64 " more arenas\n", r->more_arenas);
    if (r->more_threads || r->more_arenas)
        outf(o, "  (unlisted arenas hold %" PRIu64 " bytes in use)\n", r->more_bytes);
}

static void print_rows_json(struct out *o, const struct rows *r)
{
    outf(o, "\"thread_list\":[");
    for (unsigned i = 0; i < r->nt; i++) {
        const struct trow *t = &r->t[i];
        outf(o, "%s{\"tid\":%" PRIu64 ",\"region_cache_regions\":%" PRIu64
                ",\"region_cache_bytes\":%" PRIu64, i ? "," : "", t->tid, t->rc_regions,
             t->rc_bytes);
        if (t->has_arena)
            outf(o, ",\"arena\":{\"in_flight\":%s,\"bytes_in_use\":%zu,\"peak_bytes\":%zu,"
                    "\"regions\":%" PRIu64 ",\"region_bytes\":%zu}",
                 t->a.in_flight ? "true" : "false", t->a.bytes_in_use, t->a.peak_bytes,
                 t->a.regions, t->a.region_bytes);
        outf(o, "}");
    }
    outf(o, "],\"arena_list\":[");
    for (unsigned i = 0; i < r->na; i++) {
        const rp_arena_stats *a = &r->a[i].a;
        outf(o, "%s{\"in_flight\":%s,\"bytes_in_use\":%zu,\"peak_bytes\":%zu,\"regions\":%" PRIu64
                ",\"region_bytes\":%zu,\"budget_bytes\":%zu}",
             i ? "," : "", a->in_flight ? "true" : "false", a->bytes_in_use, a->peak_bytes,
             a->regions, a->region_bytes, a->budget_bytes);
    }
    outf(o, "],\"threads_unlisted\":%" PRIu64 ",\"arenas_unlisted\":%" PRIu64
            ",\"unlisted_arena_bytes\":%" PRIu64 ",",
         r->more_threads, r->more_arenas, r->more_bytes);
}

static void print_text(struct out *o, const rp_stats *s, const struct rows *r)
{
    size_t in_use = s->region_in_use_bytes, dirty = s->region_dirty_bytes;
    size_t heap_p = s->heap_physical_bytes, meta = s->metadata_bytes;
    outf(o, "rpool %s stats (version %u)\n", RP_VERSION_STRING, s->version);
    outf(o, "reconciliation (bytes):\n");
    outf(o, "  regions in use %zu + free resident %zu + heap %zu + metadata %zu = %zu (physical %zu) %s\n",
         in_use, dirty, heap_p, meta, in_use + dirty + heap_p + meta, s->physical_bytes,
         in_use + dirty + heap_p + meta == s->physical_bytes ? "ok" : "MISMATCH (in flight?)");
    size_t purged = s->region_clean_bytes + (s->heap_committed_bytes - heap_p);
    outf(o, "  physical %zu + purged %zu = %zu (virtual %zu) %s\n", s->physical_bytes, purged,
         s->physical_bytes + purged, s->virtual_bytes,
         s->physical_bytes + purged == s->virtual_bytes ? "ok" : "MISMATCH (in flight?)");
    outf(o, "  physical %zu of budget %zu (%.1f%%), peak %zu\n", s->physical_bytes,
         s->physical_budget, 100.0 * (double)s->physical_bytes / (double)s->physical_budget,
         s->physical_peak);
    outf(o, "  virtual  %zu of budget %zu (%.1f%%), peak %zu; reserved %zu\n", s->virtual_bytes,
         s->virtual_budget, 100.0 * (double)s->virtual_bytes / (double)s->virtual_budget,
         s->virtual_peak, s->reserved_bytes);
    outf(o, "regions: carves %" PRIu64 " reuses %" PRIu64 " purges %" PRIu64 " splits %" PRIu64 "\n",
         s->carves, s->reuses, s->purges, s->splits);
    outf(o, "  %12s %8s %8s %8s %8s %8s %8s %8s\n", "class", "in_use", "dirty", "cached",
         "clean", "carves", "reuses", "purges");
    for (unsigned c = 0; c < s->nclasses; c++) {
        const rp_class_stats *k = &s->cls[c];
        if (class_unused(k))
            continue;
        outf(o, "  %12zu %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64 " %8" PRIu64
                " %8" PRIu64 "\n",
             k->region_bytes, k->in_use, k->free_dirty, k->cached, k->free_clean, k->carves,
             k->reuses, k->purges);
    }
    outf(o, "heap: capacity %zu committed %zu allocated %zu peak %zu largest %zu ooms %" PRIu64
            "; guaranteed live under worst-case fragmentation %zu\n",
         s->heap_capacity_bytes, s->heap_committed_bytes, s->heap_allocated_bytes,
         s->heap_peak_allocated_bytes, s->heap_largest_request, s->heap_oom_count,
         s->heap_guaranteed_live_bytes);
    outf(o, "objects: %zu bytes; arenas: %zu bytes; threads: %" PRIu64 "\n", s->slab_bytes,
         s->arena_bytes, s->threads);
    print_rows_text(o, r);
    outf(o, "failures: virtual %" PRIu64 " physical %" PRIu64 " os %" PRIu64 " other %" PRIu64
            "; misuse reports %" PRIu64 "\n",
         s->fail_virtual, s->fail_physical, s->fail_os, s->fail_other, s->errors);
}

static void print_json(struct out *o, const rp_stats *s, const struct rows *r)
{
    outf(o, "{\"schema_version\":%u,\"library_version\":\"%s\",", s->version, RP_VERSION_STRING);
    outf(o, "\"reserved_bytes\":%zu,\"virtual_bytes\":%zu,\"physical_bytes\":%zu,"
            "\"virtual_budget\":%zu,\"physical_budget\":%zu,\"virtual_peak\":%zu,"
            "\"physical_peak\":%zu,\"metadata_bytes\":%zu,",
         s->reserved_bytes, s->virtual_bytes, s->physical_bytes, s->virtual_budget,
         s->physical_budget, s->virtual_peak, s->physical_peak, s->metadata_bytes);
    outf(o, "\"regions\":{\"in_use_bytes\":%zu,\"dirty_bytes\":%zu,\"clean_bytes\":%zu,"
            "\"carves\":%" PRIu64 ",\"reuses\":%" PRIu64 ",\"purges\":%" PRIu64 ",\"splits\":%" PRIu64
            ",\"classes\":[",
         s->region_in_use_bytes, s->region_dirty_bytes, s->region_clean_bytes, s->carves,
         s->reuses, s->purges, s->splits);
    bool first = true;
    for (unsigned c = 0; c < s->nclasses; c++) {
        const rp_class_stats *k = &s->cls[c];
        if (class_unused(k))
            continue;
        outf(o, "%s{\"region_bytes\":%zu,\"in_use\":%" PRIu64 ",\"free_dirty\":%" PRIu64
                ",\"cached\":%" PRIu64 ",\"free_clean\":%" PRIu64 ",\"carves\":%" PRIu64
                ",\"reuses\":%" PRIu64 ",\"purges\":%" PRIu64 ",\"splits\":%" PRIu64 "}",
             first ? "" : ",", k->region_bytes, k->in_use, k->free_dirty, k->cached,
             k->free_clean, k->carves, k->reuses, k->purges, k->splits);
        first = false;
    }
    outf(o, "]},\"heap\":{\"capacity_bytes\":%zu,\"committed_bytes\":%zu,\"physical_bytes\":%zu,"
            "\"allocated_bytes\":%zu,\"peak_allocated_bytes\":%zu,\"largest_request\":%zu,"
            "\"oom_count\":%" PRIu64 ",\"guaranteed_live_bytes\":%zu},",
         s->heap_capacity_bytes, s->heap_committed_bytes, s->heap_physical_bytes,
         s->heap_allocated_bytes, s->heap_peak_allocated_bytes, s->heap_largest_request,
         s->heap_oom_count, s->heap_guaranteed_live_bytes);
    print_rows_json(o, r);
    outf(o, "\"slab_bytes\":%zu,\"arena_bytes\":%zu,\"threads\":%" PRIu64 ","
            "\"failures\":{\"virtual\":%" PRIu64 ",\"physical\":%" PRIu64 ",\"os\":%" PRIu64
            ",\"other\":%" PRIu64 "},\"misuse_reports\":%" PRIu64 "}\n",
         s->slab_bytes, s->arena_bytes, s->threads, s->fail_virtual, s->fail_physical,
         s->fail_os, s->fail_other, s->errors);
}

static void prom(struct out *o, const char *name, const char *type, const char *help,
                 const char *labels, uint64_t v)
{
    if (help)
        outf(o, "# HELP rpool_%s %s\n# TYPE rpool_%s %s\n", name, help, name, type);
    outf(o, "rpool_%s%s %" PRIu64 "\n", name, labels, v);
}

static void print_prometheus(struct out *o, const rp_stats *s)
{
    prom(o, "reserved_bytes", "gauge", "Address space reserved by the pool.", "", s->reserved_bytes);
    prom(o, "virtual_bytes", "gauge", "Committed bytes.", "", s->virtual_bytes);
    prom(o, "physical_bytes", "gauge", "Resident bytes by rpool's account.", "", s->physical_bytes);
    prom(o, "budget_bytes", "gauge", "Hard budgets.", "{kind=\"virtual\"}", s->virtual_budget);
    prom(o, "budget_bytes", "gauge", NULL, "{kind=\"physical\"}", s->physical_budget);
    prom(o, "peak_bytes", "gauge", "Peak usage.", "{kind=\"virtual\"}", s->virtual_peak);
    prom(o, "peak_bytes", "gauge", NULL, "{kind=\"physical\"}", s->physical_peak);
    prom(o, "metadata_bytes", "gauge", "Committed metadata.", "", s->metadata_bytes);
    prom(o, "region_bytes", "gauge", "Region bytes by state.", "{state=\"in_use\"}",
         s->region_in_use_bytes);
    prom(o, "region_bytes", "gauge", NULL, "{state=\"free_dirty\"}", s->region_dirty_bytes);
    prom(o, "region_bytes", "gauge", NULL, "{state=\"free_clean\"}", s->region_clean_bytes);
    const char *ctr[] = {"region_carves_total", "region_reuses_total", "region_purges_total",
                         "region_cached"};
    const char *hlp[] = {"Regions carved from new address space.", "Regions reused.",
                         "Regions purged.", "Free regions parked in thread region caches."};
    for (int m = 0; m < 4; m++) {
        bool first = true;
        for (unsigned c = 0; c < s->nclasses; c++) {
            const rp_class_stats *k = &s->cls[c];
            if (class_unused(k))
                continue;
            char lab[64];
            snprintf(lab, sizeof lab, "{class=\"%zu\"}", k->region_bytes);
            uint64_t v = m == 0 ? k->carves : m == 1 ? k->reuses : m == 2 ? k->purges : k->cached;
            prom(o, ctr[m], m == 3 ? "gauge" : "counter", first ? hlp[m] : NULL, lab, v);
            first = false;
        }
    }
    prom(o, "heap_allocated_bytes", "gauge", "Bytes allocated from the fallback heap.", "",
         s->heap_allocated_bytes);
    prom(o, "heap_oom_total", "counter", "Fallback heap allocation failures.", "", s->heap_oom_count);
    prom(o, "slab_bytes", "gauge", "Object bytes in use.", "", s->slab_bytes);
    prom(o, "arena_bytes", "gauge", "Bytes handed out by live arenas.", "", s->arena_bytes);
    prom(o, "threads", "gauge", "Live per-thread shards.", "", s->threads);
    prom(o, "failures_total", "counter", "Allocations refused.", "{reason=\"virtual\"}",
         s->fail_virtual);
    prom(o, "failures_total", "counter", NULL, "{reason=\"physical\"}", s->fail_physical);
    prom(o, "failures_total", "counter", NULL, "{reason=\"os\"}", s->fail_os);
    prom(o, "failures_total", "counter", NULL, "{reason=\"other\"}", s->fail_other);
    prom(o, "misuse_reports_total", "counter", "Misuse reports.", "", s->errors);
}

int rp_stats_print(rp_pool *p, rp_write_fn write, void *opaque, int flags)
{
    if (!p || !write || flags < RP_STATS_TEXT || flags > RP_STATS_PROMETHEUS)
        return -EINVAL;
    rp_stats s;
    rp_stats_get(p, &s);
    struct out o = {.write = write, .opaque = opaque};
    struct rows r;
    if (flags != RP_STATS_PROMETHEUS)
        rows_collect(p, &r);
    if (flags == RP_STATS_JSON)
        print_json(&o, &s, &r);
    else if (flags == RP_STATS_PROMETHEUS)
        print_prometheus(&o, &s);
    else
        print_text(&o, &s, &r);
    return 0;
}
