/* os.c -- the only file that calls mmap, mprotect, madvise, munmap, sysconf.
 *
 * Every failure becomes a negative errno value; callers never look at errno
 * for these calls. Tests can make the Nth call of each operation fail
 * (rp_os_fault_inject): the counters below are process-wide and touched by
 * any thread with relaxed atomics (they order nothing).
 */
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

/* calls[op]: calls made so far; arm_at[op]: fail when calls reaches it (0 =
 * disarmed); armed_from[op]: calls at arming time. Relaxed: statistics and a
 * test trigger, no data is published through them. */
static uint64_t calls[RP_OS_NOPS];
static uint64_t arm_at[RP_OS_NOPS];
static uint64_t armed_from[RP_OS_NOPS];

/* Count a call of op; true if this call must fail by injection. */
static bool injected(rp_os_op op)
{
    uint64_t n = rp_add_relaxed_u64(&calls[op], 1) + 1;
    uint64_t at = rp_load_relaxed_u64(&arm_at[op]);
    /* CAS so that exactly one call fails per arming, even when racing. */
    if (at != 0 && n == at && rp_cas_relaxed_u64(&arm_at[op], &at, 0))
        return true;
    return false;
}

long rp_os_fault_inject(rp_os_op op, unsigned long nth)
{
    if ((unsigned)op >= RP_OS_NOPS)
        return -EINVAL;
    uint64_t now = rp_load_relaxed_u64(&calls[op]);
    uint64_t since = now - rp_load_relaxed_u64(&armed_from[op]);
    rp_store_relaxed_u64(&armed_from[op], now);
    rp_store_relaxed_u64(&arm_at[op], nth ? now + nth : 0);
    return (long)since;
}

unsigned long rp_os_calls(rp_os_op op)
{
    if ((unsigned)op >= RP_OS_NOPS)
        return 0;
    return (unsigned long)rp_load_relaxed_u64(&calls[op]);
}

int rpi_os_reserve(size_t bytes, void **out)
{
    if (injected(RP_OS_RESERVE))
        return -ENOMEM;
    void *a = mmap(NULL, bytes, PROT_NONE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == MAP_FAILED)
        return -(errno ? errno : ENOMEM);
    *out = a;
    return 0;
}

int rpi_os_commit(void *addr, size_t bytes)
{
    if (injected(RP_OS_COMMIT))
        return -ENOMEM;
    if (mprotect(addr, bytes, PROT_READ | PROT_WRITE) != 0)
        return -(errno ? errno : ENOMEM);
    return 0;
}

int rpi_os_purge(void *addr, size_t bytes, int advice)
{
    if (injected(RP_OS_PURGE))
        return -EINVAL;
    int adv = advice == RP_PURGE_FREE ? MADV_FREE : MADV_DONTNEED;
    if (madvise(addr, bytes, adv) != 0)
        return -(errno ? errno : EINVAL);
    return 0;
}

int rpi_os_release(void *addr, size_t bytes)
{
    if (injected(RP_OS_RELEASE))
        return -EINVAL;
    if (munmap(addr, bytes) != 0)
        return -(errno ? errno : EINVAL);
    return 0;
}

size_t rpi_os_page_size(void)
{
    static size_t page; /* idempotent race: every writer stores the same value */
    size_t v = (size_t)rp_load_relaxed_u64((uint64_t *)&page);
    if (v == 0) {
        long s = sysconf(_SC_PAGESIZE);
        v = s > 0 ? (size_t)s : 4096;
        rp_store_relaxed_u64((uint64_t *)&page, v);
    }
    return v;
}

/* Read a small file into buf; returns bytes read or -1. */
static ssize_t read_small(const char *path, char *buf, size_t len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, len - 1);
    close(fd);
    if (n < 0)
        return -1;
    buf[n] = '\0';
    return n;
}

/* The cgroup v2 memory.max of this process, or 0 when unlimited/unknown. */
static size_t cgroup_memory_max(void)
{
    char line[512], path[768], val[64];
    if (read_small("/proc/self/cgroup", line, sizeof line) <= 0)
        return 0;
    /* v2 entry: "0::/some/path" */
    char *e = strstr(line, "0::");
    if (!e)
        return 0;
    e += 3;
    char *nl = strchr(e, '\n');
    if (nl)
        *nl = '\0';
    snprintf(path, sizeof path, "/sys/fs/cgroup%s/memory.max",
             strcmp(e, "/") == 0 ? "" : e);
    if (read_small(path, val, sizeof val) <= 0)
        return 0;
    if (strncmp(val, "max", 3) == 0)
        return 0;
    char *end;
    unsigned long long v = strtoull(val, &end, 10);
    return end != val ? (size_t)v : 0;
}

size_t rpi_os_physical_default(void)
{
    size_t cg = cgroup_memory_max();
    long pages = sysconf(_SC_PHYS_PAGES);
    size_t ram = pages > 0 ? (size_t)pages * rpi_os_page_size() : (size_t)1 << 32;
    return cg && cg < ram ? cg : ram;
}

uint64_t rpi_now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}
