/* config.c -- defaults, presets, validation, environment overrides.
 *
 * One table describes every numeric field (name, offset, range, whether it
 * must be a power of two, whether it is a size): validation, the environment
 * parser and rp_config_print all read it, so they cannot drift apart.
 * No shared state: every function works on the caller's struct.
 */
#include "internal.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)
#define GiB ((size_t)1 << 30)
#define TiB ((size_t)1 << 40)

#if RP_TSAN
#define RESERVE_MAX (512 * GiB) /* TSan's fixed layout refuses more */
#else
#define RESERVE_MAX (64 * TiB)
#endif

enum ftype { F_SIZE, F_U32, F_INT };

/* Region classes span [region_min_bytes, region_max_bytes] within
 * [4 KiB, 1 GiB]: at most 19 classes, so RP_MAX_CLASSES always suffices. */
_Static_assert(30 - 12 + 1 <= RP_MAX_CLASSES, "class table holds every legal range");

struct field {
    const char *name;
    size_t off;
    enum ftype type;
    uint64_t lo, hi;   /* allowed range */
    bool zero_ok;      /* 0 allowed outside [lo, hi] (automatic / off) */
    bool pow2;
};

#define F(n, t, lo, hi, z, p2) {#n, offsetof(rp_config, n), t, lo, hi, z, p2}
static const struct field fields[] = {
    F(reserve_bytes, F_SIZE, 16 * MiB, RESERVE_MAX, false, false),
    F(virtual_budget, F_SIZE, 1 * MiB, RESERVE_MAX, true, false),
    F(physical_budget, F_SIZE, 1 * MiB, (uint64_t)1 << 62, true, false),
    F(region_min_bytes, F_SIZE, 4 * KiB, 1 * GiB, false, true),
    F(region_max_bytes, F_SIZE, 4 * KiB, 1 * GiB, false, true),
    F(purge_delay_ms, F_U32, 0, 3600000, false, false),
    F(purge_advice, F_INT, 0, 1, false, false),
    F(purge_thread, F_INT, 0, 1, false, false),
    F(region_cache_bytes, F_SIZE, 64 * KiB, 1 * GiB, true, false),
    F(heap_bytes, F_SIZE, 1 * MiB, RESERVE_MAX / 2, true, false),
    F(hardened, F_INT, 0, 1, false, false),
    F(strict, F_INT, 0, 1, false, false),
    F(physical_soft_limit, F_SIZE, 1 * MiB, (uint64_t)1 << 62, true, false),
};
#define NFIELDS (sizeof fields / sizeof fields[0])

static uint64_t get(const rp_config *c, const struct field *f)
{
    const char *b = (const char *)c + f->off;
    switch (f->type) {
    case F_SIZE: return *(const size_t *)(const void *)b;
    case F_U32: return *(const uint32_t *)(const void *)b;
    default: return (uint64_t)(int64_t)*(const int *)(const void *)b;
    }
}

static void set(rp_config *c, const struct field *f, uint64_t v)
{
    char *b = (char *)c + f->off;
    switch (f->type) {
    case F_SIZE: *(size_t *)(void *)b = (size_t)v; break;
    case F_U32: *(uint32_t *)(void *)b = (uint32_t)v; break;
    default: *(int *)(void *)b = (int)v; break;
    }
}

int rp_config_init(rp_config *cfg)
{
    if (!cfg)
        return -EINVAL;
    memset(cfg, 0, sizeof *cfg);
    return rp_config_preset(cfg, "server");
}

int rp_config_preset(rp_config *cfg, const char *name)
{
    if (!cfg || !name)
        return -EINVAL;
    rp_config c = *cfg;
    if (strcmp(name, "server") == 0) {
        c.reserve_bytes = 64 * GiB;
        c.region_min_bytes = 64 * KiB;
        c.region_max_bytes = 64 * MiB;
        c.purge_delay_ms = 1000;
        c.purge_advice = RP_PURGE_DONTNEED;
        c.purge_thread = 1;
        c.region_cache_bytes = 8 * MiB;
        c.heap_bytes = 1 * GiB;
    } else if (strcmp(name, "lowmem") == 0) {
        c.reserve_bytes = 4 * GiB;
        c.region_min_bytes = 64 * KiB;
        c.region_max_bytes = 4 * MiB;
        c.purge_delay_ms = 0;
        c.purge_advice = RP_PURGE_DONTNEED;
        c.purge_thread = 0;
        c.region_cache_bytes = 0;
        c.heap_bytes = 64 * MiB;
    } else {
        return -EINVAL;
    }
    *cfg = c;
    return 0;
}

static int fail(char *err, size_t len, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t len, const char *fmt, ...)
{
    if (err && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err, len, fmt, ap);
        va_end(ap);
    }
    return -EINVAL;
}

static int check_field(const struct field *f, uint64_t v, char *err, size_t len)
{
    if (f->type == F_INT && (int64_t)v < 0)
        return fail(err, len, "%s = %" PRId64 ": must be in [%" PRIu64 ", %" PRIu64 "]",
                    f->name, (int64_t)v, f->lo, f->hi);
    if (v == 0 && f->zero_ok)
        return 0;
    if (v < f->lo || v > f->hi || (f->pow2 && !rp_is_pow2(v)))
        return fail(err, len, "%s = %" PRIu64 ": must be %s%sin [%" PRIu64 ", %" PRIu64 "]",
                    f->name, v, f->zero_ok ? "0 or " : "",
                    f->pow2 ? "a power of two " : "", f->lo, f->hi);
    return 0;
}

int rp_config_validate(const rp_config *c, char *err, size_t len)
{
    if (!c)
        return fail(err, len, "config is NULL");
    for (size_t i = 0; i < NFIELDS; i++) {
        int rc = check_field(&fields[i], get(c, &fields[i]), err, len);
        if (rc)
            return rc;
    }
    /* Relations between fields. */
    size_t page = rpi_os_page_size();
    if (c->region_min_bytes < page)
        return fail(err, len, "region_min_bytes = %zu: must be at least the page size %zu",
                    c->region_min_bytes, page);
    if (c->region_max_bytes < c->region_min_bytes)
        return fail(err, len, "region_max_bytes = %zu: must be >= region_min_bytes (%zu)",
                    c->region_max_bytes, c->region_min_bytes);
    if (c->heap_bytes > c->reserve_bytes / 2)
        return fail(err, len, "heap_bytes = %zu: must be 0 or in [%zu, reserve_bytes/2 = %zu]",
                    c->heap_bytes, 1 * MiB, c->reserve_bytes / 2);
    if (c->region_max_bytes > c->reserve_bytes / 4)
        return fail(err, len, "region_max_bytes = %zu: must be <= reserve_bytes/4 = %zu",
                    c->region_max_bytes, c->reserve_bytes / 4);
    if (c->virtual_budget > c->reserve_bytes)
        return fail(err, len, "virtual_budget = %zu: must be 0 or in [%zu, reserve_bytes = %zu]",
                    c->virtual_budget, 1 * MiB, c->reserve_bytes);
    if (c->physical_soft_limit && c->physical_budget &&
        c->physical_soft_limit > c->physical_budget)
        return fail(err, len, "physical_soft_limit = %zu: must be <= physical_budget (%zu)",
                    c->physical_soft_limit, c->physical_budget);
    return 0;
}

/* Parse "123", "64K", "2G", "1T" (powers of 1024). */
static int parse_size(const char *s, size_t n, uint64_t *out)
{
    if (n == 0)
        return -1;
    uint64_t v = 0;
    size_t i = 0;
    for (; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (i == 0)
        return -1;
    unsigned shift = 0;
    if (i < n) {
        switch (s[i] | 0x20) {
        case 'k': shift = 10; break;
        case 'm': shift = 20; break;
        case 'g': shift = 30; break;
        case 't': shift = 40; break;
        default: return -1;
        }
        i++;
        if (i < n && (s[i] | 0x20) == 'b') /* accept KB/MB/GB too */
            i++;
    }
    if (i != n || (shift && v > (UINT64_MAX >> shift)))
        return -1;
    *out = v << shift;
    return 0;
}

int rp_config_from_env(rp_config *cfg, const char *var, char *err, size_t len)
{
    if (!cfg || !var)
        return fail(err, len, "config or variable name is NULL");
    const char *s = getenv(var);
    if (!s || !*s)
        return 0;
    rp_config c = *cfg;
    while (*s) {
        const char *end = strchr(s, ',');
        size_t n = end ? (size_t)(end - s) : strlen(s);
        const char *eq = memchr(s, '=', n);
        if (n == 0) {
            s += 1;
            continue;
        }
        if (!eq)
            return fail(err, len, "%s: '%.*s' is not key=value", var, (int)n, s);
        size_t kn = (size_t)(eq - s), vn = n - kn - 1;
        const char *v = eq + 1;
        if (kn == 6 && strncmp(s, "preset", 6) == 0) {
            char name[32];
            snprintf(name, sizeof name, "%.*s", (int)(vn < 31 ? vn : 31), v);
            if (vn >= sizeof name || rp_config_preset(&c, name))
                return fail(err, len, "%s: preset = '%.*s': must be one of server, lowmem",
                            var, (int)vn, v);
        } else {
            const struct field *f = NULL;
            for (size_t i = 0; i < NFIELDS; i++)
                if (strlen(fields[i].name) == kn && strncmp(fields[i].name, s, kn) == 0)
                    f = &fields[i];
            if (!f)
                return fail(err, len, "%s: unknown key '%.*s' (keys: preset, reserve_bytes, "
                            "virtual_budget, physical_budget, region_min_bytes, region_max_bytes, "
                            "purge_delay_ms, purge_advice, purge_thread, region_cache_bytes, heap_bytes, hardened, "
                            "strict, physical_soft_limit)", var, (int)kn, s);
            uint64_t x;
            if (f->type == F_INT && f->off == offsetof(rp_config, purge_advice) &&
                ((vn == 8 && strncasecmp(v, "dontneed", 8) == 0) ||
                 (vn == 4 && strncasecmp(v, "free", 4) == 0))) {
                x = (vn == 4);
            } else if (parse_size(v, vn, &x) ||
                       (f->type != F_SIZE && x > f->hi && !(x == 0 && f->zero_ok))) {
                return fail(err, len, "%s: %s = '%.*s': must be %s in [%" PRIu64 ", %" PRIu64 "]",
                            var, f->name, (int)vn, v,
                            f->type == F_SIZE ? "a size (K/M/G/T suffix allowed)" : "a number",
                            f->lo, f->hi);
            }
            char e2[200];
            if (check_field(f, x, e2, sizeof e2))
                return fail(err, len, "%s: %s", var, e2);
            set(&c, f, x);
        }
        s += n;
        if (*s == ',')
            s++;
    }
    char e3[200];
    if (rp_config_validate(&c, e3, sizeof e3))
        return fail(err, len, "%s: %s", var, e3);
    *cfg = c;
    return 0;
}

int rp_config_print(const rp_config *cfg, rp_write_fn write, void *opaque)
{
    if (!cfg || !write)
        return -EINVAL;
    char line[128];
    for (size_t i = 0; i < NFIELDS; i++) {
        snprintf(line, sizeof line, "%s=%" PRIu64 "\n", fields[i].name,
                 get(cfg, &fields[i]));
        write(opaque, line);
    }
    return 0;
}
