/* loadgen.c -- a small HTTP/1.1 load generator for server.c.
 *
 * N threads, each with one keep-alive connection to 127.0.0.1 (and nowhere
 * else), send one request at a time and read the whole response before the
 * next, for a bounded time (and optionally a bounded count). Most requests
 * are GET /hello; --blob-percent of them are GET /blob?kb=N with N drawn
 * log-uniformly from [1, --max-kb], so small blobs are common and large ones
 * rare, as in real traffic.
 *
 * Every response is checked: status line, Content-Length, and for a blob
 * the exact length asked for. Counted separately:
 *   requests   complete responses with the expected status
 *   rejected   503 answers: the server refused for lack of memory (its
 *              budget working as intended, not a failure of the exchange)
 *   errors     anything else: connection failures, timeouts, bad responses.
 *              After an error the connection is closed and opened again.
 *
 * Options
 *   --port N           server port on 127.0.0.1 (required)
 *   --threads N        concurrent connections (default 8)
 *   --seconds N        run time (default 10; at most 3600)
 *   --max-requests N   stop after this many requests in total (default: none)
 *   --blob-percent P   share of /blob requests (default 5)
 *   --max-kb N         largest blob (default 1024)
 *   --slow N           the first N threads are slow downloaders (default 0):
 *                      they ask only for blobs and read each body at most
 *                      16 KiB per millisecond (about 16 MiB/s), so the server
 *                      holds their responses in its write buffers longer
 * Output: one "loadgen:" line of key=value pairs on stdout.
 */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define IO_TIMEOUT_S 5         /* a silent server cannot hang us longer */
#define BUF_BYTES (64 * 1024)
#define NBUCKETS 256           /* latency histogram, ~12% resolution */

struct options {
    int port, threads, seconds, blob_percent, max_kb, slow;
    long long max_requests;    /* 0 = no limit */
};

struct thread {
    pthread_t tid;
    int id;
    bool slow;                 /* a slow downloader (--slow) */
    const struct options *o;
    double deadline;
    /* Results, read by main after pthread_join. */
    unsigned long long requests, rejected, errors, bytes;
    unsigned long long hist[NBUCKETS];
    double max_latency_us;
};

static atomic_llong budget;     /* requests left under --max-requests */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ------------------------------------------------------------------------ */
/* Latency histogram: exact below 16 us, then 8 buckets per power of two.    */

static int bucket_of(uint64_t us)
{
    if (us < 16)
        return (int)us;
    int e = 63 - __builtin_clzll(us); /* 2^e <= us < 2^(e+1), e >= 4 */
    int b = 16 + (e - 4) * 8 + (int)((us >> (e - 3)) & 7);
    return b < NBUCKETS ? b : NBUCKETS - 1;
}

static double bucket_upper_us(int b)
{
    if (b < 16)
        return b + 1;
    int e = (b - 16) / 8 + 4, sub = (b - 16) % 8;
    return ldexp(1.0 + (sub + 1) / 8.0, e);
}

static double percentile(const unsigned long long *hist, unsigned long long n, double p)
{
    unsigned long long want = (unsigned long long)ceil(p * (double)n), seen = 0;
    for (int b = 0; b < NBUCKETS; b++) {
        seen += hist[b];
        if (seen >= want && seen > 0)
            return bucket_upper_us(b);
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* One connection.                                                           */

static uint64_t next_rand(uint64_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

/* Connect to 127.0.0.1:port, retrying for a moment while the server is
 * still starting (ECONNREFUSED). Returns the socket or -1. */
static int connect_loopback(int port, char *err, size_t errlen)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    for (int attempt = 0;; attempt++) {
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            snprintf(err, errlen, "socket: %s", strerror(errno));
            return -1;
        }
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) {
            struct timeval tv = {IO_TIMEOUT_S, 0};
            int one = 1;
            if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv) != 0 ||
                setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv) != 0 ||
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0) {
                snprintf(err, errlen, "setsockopt: %s", strerror(errno));
                close(fd);
                return -1;
            }
            return fd;
        }
        int e = errno;
        close(fd);
        if (e != ECONNREFUSED || attempt >= 30) {
            snprintf(err, errlen, "connect 127.0.0.1:%d: %s", port, strerror(e));
            return -1;
        }
        struct timespec pause = {0, 100 * 1000 * 1000};
        nanosleep(&pause, NULL);
    }
}

static int send_all(int fd, const char *p, size_t n, char *err, size_t errlen)
{
    while (n > 0) {
        ssize_t k = send(fd, p, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR)
                continue;
            snprintf(err, errlen, "send: %s", errno == EAGAIN ? "timed out" : strerror(errno));
            return -1;
        }
        p += k;
        n -= (size_t)k;
    }
    return 0;
}

/* Read one response. Returns its status (and body length, whether the
 * server will close) or -1 with a message in err. */
static int read_response(int fd, char *buf, bool slow, size_t *body_len, bool *closing,
                         char *err, size_t errlen)
{
    size_t len = 0;
    const char *end;
    while (!(end = memmem(buf, len, "\r\n\r\n", 4))) {
        if (len == BUF_BYTES) {
            snprintf(err, errlen, "response head larger than %d bytes", BUF_BYTES);
            return -1;
        }
        ssize_t k = recv(fd, buf + len, BUF_BYTES - len, 0);
        if (k <= 0) {
            if (k < 0 && errno == EINTR)
                continue;
            snprintf(err, errlen, "recv: %s",
                     k == 0 ? "server closed the connection"
                            : errno == EAGAIN ? "timed out" : strerror(errno));
            return -1;
        }
        len += (size_t)k;
    }
    size_t head = (size_t)(end - buf) + 4;
    /* "HTTP/1.x NNN ". (Not sscanf: the buffer is not NUL-terminated, and
     * sscanf would run strlen over it.) */
    if (head < 13 || memcmp(buf, "HTTP/1.", 7) != 0 || (buf[7] != '0' && buf[7] != '1') ||
        buf[8] != ' ' || !isdigit((unsigned char)buf[9]) || !isdigit((unsigned char)buf[10]) ||
        !isdigit((unsigned char)buf[11]) || buf[12] != ' ') {
        snprintf(err, errlen, "bad status line");
        return -1;
    }
    int status = (buf[9] - '0') * 100 + (buf[10] - '0') * 10 + (buf[11] - '0');
    /* Content-Length and Connection, case-insensitively, line by line. */
    long long clen = -1;
    *closing = false;
    for (const char *s = (const char *)memmem(buf, head, "\r\n", 2) + 2; s < end;) {
        const char *e = memmem(s, (size_t)(end + 2 - s), "\r\n", 2);
        if (strncasecmp(s, "Content-Length:", 15) == 0) {
            const char *d = s + 15;
            while (d < e && *d == ' ')
                d++;
            for (clen = d < e ? 0 : -1; d < e && clen >= 0 && clen < (1LL << 40); d++)
                clen = isdigit((unsigned char)*d) ? clen * 10 + (*d - '0') : -1;
        }
        else if (strncasecmp(s, "Connection:", 11) == 0 && memmem(s, (size_t)(e - s), "close", 5))
            *closing = true;
        s = e + 2;
    }
    if (clen < 0) {
        snprintf(err, errlen, "no Content-Length");
        return -1;
    }
    /* The body: what came with the head, then the rest, read and dropped. */
    size_t have = len - head;
    if (have > (size_t)clen) {
        snprintf(err, errlen, "%zu bytes more than Content-Length", have - (size_t)clen);
        return -1;
    }
    memmove(buf, buf + head, have); /* keep the body's first bytes for checks */
    size_t kept = have;
    while (have < (size_t)clen) {
        size_t room = kept < BUF_BYTES ? BUF_BYTES - kept : 0;
        size_t want = (size_t)clen - have;
        char *dst = buf + kept;
        if (room == 0) {         /* the checks need only the first bytes: */
            dst = buf + BUF_BYTES / 2; /* overwrite the buffer's second half */
            room = BUF_BYTES / 2;
        }
        if (slow) { /* a client on a slow link: 16 KiB per millisecond at most */
            struct timespec pause = {0, 1000 * 1000};
            nanosleep(&pause, NULL);
            room = room < 16384 ? room : 16384;
        }
        ssize_t k = recv(fd, dst, want < room ? want : room, 0);
        if (k <= 0) {
            if (k < 0 && errno == EINTR)
                continue;
            snprintf(err, errlen, "recv body: %s",
                     k == 0 ? "server closed the connection"
                            : errno == EAGAIN ? "timed out" : strerror(errno));
            return -1;
        }
        have += (size_t)k;
        if (dst == buf + kept)
            kept += (size_t)k;
    }
    *body_len = (size_t)clen;
    return status;
}

static void *client(void *arg)
{
    struct thread *t = arg;
    const struct options *o = t->o;
    uint64_t rng = 0x2545f4914f6cdd1dULL * (uint64_t)(t->id + 1);
    char *buf = malloc(BUF_BYTES);
    char err[256];
    int fd = -1, reported = 0;
    if (!buf) {
        fprintf(stderr, "loadgen: malloc: %s\n", strerror(errno));
        t->errors++;
        return NULL;
    }
    while (now_seconds() < t->deadline) {
        if (o->max_requests && atomic_fetch_sub(&budget, 1) <= 0)
            break;
        if (fd < 0 && (fd = connect_loopback(o->port, err, sizeof err)) < 0)
            goto error;

        char req[128];
        long kb = 0;
        if (t->slow || (int)(next_rand(&rng) % 100) < o->blob_percent) {
            /* Log-uniform in [1, max_kb]: exp(uniform(0, ln max_kb)). */
            double u = (double)(next_rand(&rng) >> 11) / 9007199254740992.0;
            kb = lround(exp(u * log((double)o->max_kb)));
            kb = kb < 1 ? 1 : kb > o->max_kb ? o->max_kb : kb;
            snprintf(req, sizeof req, "GET /blob?kb=%ld HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", kb);
        } else {
            snprintf(req, sizeof req, "GET /hello HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        }
        double t0 = now_seconds();
        if (send_all(fd, req, strlen(req), err, sizeof err) != 0)
            goto error;
        size_t body;
        bool closing;
        int status = read_response(fd, buf, t->slow, &body, &closing, err, sizeof err);
        if (status < 0)
            goto error;
        double us = (now_seconds() - t0) * 1e6;
        if (status == 503) {
            t->rejected++;
        } else if (status != 200) {
            snprintf(err, sizeof err, "status %d for %.40s", status, req);
            goto error;
        } else if (kb ? body != (size_t)kb * 1024 || memcmp(buf, "blob 1 of ", 10) != 0
                      : memcmp(buf, "Hello", 5) != 0) {
            snprintf(err, sizeof err, "wrong body (%zu bytes) for %.40s", body, req);
            goto error;
        } else {
            t->requests++;
            t->bytes += body;
            t->hist[bucket_of((uint64_t)us)]++;
            if (us > t->max_latency_us)
                t->max_latency_us = us;
        }
        if (closing) {
            close(fd);
            fd = -1;
        }
        continue;
    error:
        t->errors++;
        if (reported++ < 3) /* the first few, so a broken server is visible */
            fprintf(stderr, "loadgen: thread %d: %s\n", t->id, err);
        if (fd >= 0)
            close(fd);
        fd = -1;
        struct timespec pause = {0, 10 * 1000 * 1000}; /* do not spin on errors */
        nanosleep(&pause, NULL);
    }
    if (fd >= 0)
        close(fd);
    free(buf);
    return NULL;
}

static long parse_num(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || *end || v < lo || v > hi) {
        fprintf(stderr, "loadgen: %s wants a number in [%ld, %ld]\n", opt, lo, hi);
        exit(2);
    }
    return v;
}

int main(int argc, char **argv)
{
    struct options o = {.port = 0, .threads = 8, .seconds = 10, .blob_percent = 5,
                        .max_kb = 1024};
    bool usage = false;
    for (int i = 1; i < argc && !usage; i += 2) { /* every option takes a value */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--port") == 0)
            o.port = (int)parse_num(a, v, 1, 65535);
        else if (strcmp(a, "--threads") == 0)
            o.threads = (int)parse_num(a, v, 1, 1024);
        else if (strcmp(a, "--seconds") == 0)
            o.seconds = (int)parse_num(a, v, 1, 3600);
        else if (strcmp(a, "--max-requests") == 0)
            o.max_requests = parse_num(a, v, 1, 1000000000L);
        else if (strcmp(a, "--blob-percent") == 0)
            o.blob_percent = (int)parse_num(a, v, 0, 100);
        else if (strcmp(a, "--max-kb") == 0)
            o.max_kb = (int)parse_num(a, v, 1, 8192);
        else if (strcmp(a, "--slow") == 0)
            o.slow = (int)parse_num(a, v, 0, 1024);
        else
            usage = true;
    }
    if (usage || o.port == 0) {
        fprintf(stderr, "usage: %s --port N [--threads N] [--seconds N] [--max-requests N]"
                        " [--blob-percent P] [--max-kb N] [--slow N]\n", argv[0]);
        return 2;
    }
    atomic_init(&budget, o.max_requests);

    struct thread *t = calloc((size_t)o.threads, sizeof *t);
    if (!t) {
        perror("loadgen: calloc");
        return 1;
    }
    double start = now_seconds();
    int started = 0;
    for (int i = 0; i < o.threads; i++) {
        t[i].id = i;
        t[i].slow = i < o.slow;
        t[i].o = &o;
        t[i].deadline = start + o.seconds;
        int rc = pthread_create(&t[i].tid, NULL, client, &t[i]);
        if (rc != 0) {
            fprintf(stderr, "loadgen: pthread_create: %s\n", strerror(rc));
            break;
        }
        started++;
    }
    unsigned long long requests = 0, rejected = 0, errors = 0, bytes = 0;
    unsigned long long hist[NBUCKETS] = {0};
    double max_us = 0;
    for (int i = 0; i < started; i++) {
        int rc = pthread_join(t[i].tid, NULL);
        if (rc != 0) {
            fprintf(stderr, "loadgen: pthread_join: %s\n", strerror(rc));
            return 1;
        }
        requests += t[i].requests;
        rejected += t[i].rejected;
        errors += t[i].errors;
        bytes += t[i].bytes;
        for (int b = 0; b < NBUCKETS; b++)
            hist[b] += t[i].hist[b];
        if (t[i].max_latency_us > max_us)
            max_us = t[i].max_latency_us;
    }
    double secs = now_seconds() - start;
    free(t);
    if (started < o.threads)
        errors++;
    printf("loadgen: threads=%d seconds=%.2f requests=%llu req_per_s=%.0f errors=%llu "
           "rejected=%llu received_mib=%.1f p50_us=%.0f p99_us=%.0f max_us=%.0f\n",
           started, secs, requests, (double)requests / secs, errors, rejected,
           (double)bytes / (1024.0 * 1024.0), percentile(hist, requests, 0.50),
           percentile(hist, requests, 0.99), max_us);
    return errors == 0 ? 0 : 1;
}
