/* stats_dump.c -- reading rpool's accounting: a snapshot struct, three text
 * renderings (human, JSON, Prometheus) and a soft-limit watermark.
 *
 * What a server does with these:
 *   - rp_stats_get: a struct of counters, read without locks and without
 *     allocating, cheap enough for a once-per-second progress line or a
 *     health check ("physical bytes within 90% of the budget?").
 *   - rp_stats_print(RP_STATS_TEXT): the reconciliation a human reads after
 *     an incident -- where every resident byte is (regions in use, free but
 *     still resident, heap, metadata) and that it adds up.
 *   - RP_STATS_JSON: for logs and tooling.
 *   - RP_STATS_PROMETHEUS: the text exposition format, served on /metrics or
 *     written to a file for node_exporter's textfile collector (below).
 *   - physical_soft_limit + watermark_hook: an early warning before the hard
 *     budget starts refusing allocations (e.g. shed load, drop caches).
 *
 * Run: ./stats_dump [--prom-file PATH]
 *   --prom-file writes the Prometheus text to PATH atomically (temporary file,
 *   fsync, rename), so a scraper never reads half a file.
 */
#define _POSIX_C_SOURCE 200809L /* fileno, fsync */
#include <rpool.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

/* rp_write_fn: rpool formats into a stack buffer and hands us NUL-terminated
 * pieces. The callback cannot report failure, so write errors are collected
 * by the FILE (ferror) and checked once at the end. */
static void write_file(void *opaque, const char *text)
{
    fputs(text, (FILE *)opaque);
}

/* Runs on the allocating (or freeing) thread at the moment physical use
 * crosses the soft limit. Keep it short, and do not allocate from the pool
 * here (rpool.h). A real server would set a flag that its accept loop reads. */
static void on_watermark(void *opaque, rp_pool *p, size_t physical_bytes, int above)
{
    (void)p;
    int *crossings = opaque;
    (*crossings)++;
    printf("  watermark: physical %zu KiB is now %s the soft limit\n", physical_bytes / KiB,
           above ? "above" : "below");
}

/* Write the Prometheus text to `path` so that a reader sees either the old
 * or the new file, never a torn one: write a temporary file next to it,
 * flush it to disk, then rename over the target (atomic on POSIX). */
static int write_prometheus_file(rp_pool *pool, const char *path)
{
    char tmp[4096];
    int n = snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    if (n < 0 || (size_t)n >= sizeof tmp) {
        fprintf(stderr, "stats_dump: path too long: %s\n", path);
        return -1;
    }
    FILE *f = fopen(tmp, "w");
    if (!f) {
        fprintf(stderr, "stats_dump: %s: %s\n", tmp, strerror(errno));
        return -1;
    }
    int rc = rp_stats_print(pool, write_file, f, RP_STATS_PROMETHEUS);
    if (rc == 0 && (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0))
        rc = -errno;
    if (fclose(f) != 0 && rc == 0)
        rc = -errno;
    if (rc == 0 && rename(tmp, path) != 0)
        rc = -errno;
    if (rc != 0) {
        fprintf(stderr, "stats_dump: writing %s: %s\n", path, strerror(-rc));
        unlink(tmp);
        return -1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    const char *prom_file = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--prom-file") == 0 && i + 1 < argc) {
            prom_file = argv[++i];
        } else {
            fprintf(stderr, "usage: %s [--prom-file PATH]\n", argv[0]);
            return 2;
        }
    }

    int crossings = 0;
    rp_config cfg;
    rp_config_init(&cfg);
    cfg.reserve_bytes = (size_t)1 << 30;
    cfg.heap_bytes = 32 * MiB; /* smaller heaps make rp_pool_create warn that
                                  worst-case fragmentation could refuse a
                                  1 MiB request (docs/HEAP.md) */
    cfg.physical_budget = 64 * MiB;
    cfg.physical_soft_limit = 8 * MiB;
    cfg.purge_delay_ms = 60000; /* keep released regions resident: they show
                                   up as "free resident" in the dump */
    cfg.purge_thread = 0;       /* rp_check at the end needs a quiescent pool */
    cfg.watermark_hook = on_watermark;
    cfg.watermark_opaque = &crossings;
    char err[256];
    if (rp_config_from_env(&cfg, "RPOOL_CONF", err, sizeof err) != 0) {
        fprintf(stderr, "stats_dump: %s\n", err);
        return 2;
    }
    rp_pool *pool = rp_pool_create(&cfg);
    if (!pool) {
        perror("stats_dump: rp_pool_create");
        return 1;
    }

    /* Give every layer something to count: regions of three classes, small
     * objects, heap blocks and the thread arena. */
    printf("allocating (soft limit %zu KiB):\n", cfg.physical_soft_limit / KiB);
    void *regions[12] = {0};
    void *objects[1000] = {0};
    void *heap[8] = {0};
    int failed = 0;
    for (int i = 0; i < 12; i++)
        failed |= !(regions[i] = rp_region_acquire(pool, (64 * KiB) << (i % 3)));
    for (int i = 0; i < 1000; i++)
        failed |= !(objects[i] = rp_alloc(pool, 16 + (size_t)i * 8));
    for (int i = 0; i < 8; i++)
        failed |= !(heap[i] = rp_heap_alloc(pool, 40 * KiB + (size_t)i * 1000));
    rp_arena *arena = rp_arena_thread(pool);
    failed |= !arena || !rp_arena_alloc(arena, 300 * KiB, 64);
    for (int i = 0; i < 12; i++) /* touch the pages, as a real user would */
        if (regions[i])
            memset(regions[i], 1, 64 * KiB);
    if (failed) {
        perror("stats_dump: an allocation failed");
        rp_pool_destroy(pool);
        return 1;
    }
    /* Free half of it: released regions stay resident (purge delay), freed
     * objects stay in their slabs, the arena reset keeps its first chunk. */
    for (int i = 0; i < 12; i += 2)
        rp_region_release(pool, regions[i]);
    for (int i = 0; i < 1000; i += 2)
        rp_free(pool, objects[i]);
    for (int i = 0; i < 8; i += 2)
        rp_heap_free(pool, heap[i]);

    /* A health check from the struct. Fields are individually exact; while
     * other threads allocate they may disagree by in-flight operations. */
    rp_stats st;
    rp_stats_get(pool, &st);
    printf("\nhealth: physical %.1f MiB of %.1f MiB (%.0f%%), %llu allocation failures\n",
           (double)st.physical_bytes / MiB, (double)st.physical_budget / MiB,
           100.0 * (double)st.physical_bytes / (double)st.physical_budget,
           (unsigned long long)(st.fail_virtual + st.fail_physical + st.fail_os +
                                st.fail_other));

    printf("\n=== RP_STATS_TEXT ===\n");
    rp_stats_print(pool, write_file, stdout, RP_STATS_TEXT);
    printf("\n=== RP_STATS_JSON ===\n");
    rp_stats_print(pool, write_file, stdout, RP_STATS_JSON);
    printf("\n=== RP_STATS_PROMETHEUS ===\n");
    rp_stats_print(pool, write_file, stdout, RP_STATS_PROMETHEUS);

    int rc = 0;
    if (prom_file) {
        rc = write_prometheus_file(pool, prom_file);
        if (rc == 0)
            printf("\nwrote %s\n", prom_file);
    }

    /* Give everything back. rp_purge drops the free-but-resident regions at
     * once instead of after the purge delay; physical use falls below the
     * soft limit again and the hook says so. */
    printf("\nfreeing and purging:\n");
    for (int i = 1; i < 12; i += 2)
        rp_region_release(pool, regions[i]);
    for (int i = 1; i < 1000; i += 2)
        rp_free(pool, objects[i]);
    for (int i = 1; i < 8; i += 2)
        rp_heap_free(pool, heap[i]);
    rp_thread_detach(pool); /* returns the thread arena and object caches */
    size_t purged = rp_purge(pool);
    rp_stats_get(pool, &st);
    printf("purged %zu KiB; physical now %zu KiB (metadata %zu KiB, heap %zu KiB, "
           "regions %zu KiB)\n", purged / KiB, st.physical_bytes / KiB,
           st.metadata_bytes / KiB, st.heap_physical_bytes / KiB,
           (st.region_in_use_bytes + st.region_dirty_bytes) / KiB);
    if (rp_check(pool) != 0)
        rc = -1;
    rp_pool_destroy(pool);
    if (fflush(stdout) != 0 || ferror(stdout)) {
        perror("stats_dump: stdout");
        return 1;
    }
    if (crossings < 2) {
        fprintf(stderr, "stats_dump: expected the watermark hook to fire twice\n");
        return 1;
    }
    return rc == 0 ? 0 : 1;
}
