/* server.c -- a multithreaded HTTP/1.1 server on 127.0.0.1 whose memory
 * comes from rpool (default) or from plain malloc (--malloc), for comparison.
 *
 * Architecture
 * ------------
 *   main thread   epoll over { listening socket, signalfd, timerfd }.
 *                 Accepts connections and deals them round-robin to the
 *                 workers; prints a progress line every second; stops the
 *                 server on SIGINT/SIGTERM or when --seconds run out.
 *   N workers     one epoll each, over { their connections, an eventfd }.
 *                 A connection lives on one worker from accept to close, so
 *                 nothing about it is shared and nothing needs a lock. The
 *                 main thread hands a new socket over through the worker's
 *                 inbox (a mutex-protected queue) and pokes its eventfd.
 *
 * Memory: three lifetimes, three rpool tools
 * ------------------------------------------
 *   connection    struct conn                  rp_alloc / rp_free
 *                 read and write buffers       rp_region_acquire / _release
 *   request       parsed headers, the body     the worker's thread arena
 *                 being built, the response    (rp_arena_thread), reset
 *                 head                         after every request
 * With --malloc the same code runs on malloc/free: the difference is
 * confined to `struct memory` and request_begin/request_end below. Request
 * code allocates through an rp_allocator and frees what it allocates, as
 * malloc code must; on the arena those frees are no-ops and the reset frees
 * everything at once (so a forgotten free cannot leak there).
 *
 * Endpoints
 *   GET /hello        a short greeting
 *   GET /blob?kb=N    N KiB of text (1 <= N <= 8192), built in request memory
 *   GET /metrics      rpool's stats in the Prometheus text format
 * Memory refused by the budget is answered with 503, never a crash.
 *
 * Options
 *   --port N          TCP port on 127.0.0.1 (default 8080; 0 = any free one)
 *   --port-file PATH  write the bound port there (for scripts using port 0)
 *   --threads N       worker threads (default: one per online CPU)
 *   --seconds N       stop after N seconds (default 30, at most 3600)
 *   --max-conns N     connections served at once (default 1024)
 *   --malloc          use malloc/free instead of rpool
 *   --rss-log PATH    append "seconds rss_bytes budget_bytes physical_bytes"
 *                     four times a second (budget and physical are 0 with
 *                     --malloc)
 * The pool is the "server" preset with a 256 MiB physical budget; RPOOL_CONF
 * overrides any field (e.g. RPOOL_CONF=physical_budget=64M).
 *
 * Output: the progress line on stderr; at exit, the stats reconciliation
 * (rpool) and one "summary:" line of key=value pairs on stdout: requests
 * (all answered), rejected (503s), shed (connections refused), seconds
 * (first to last request), req_per_s, peak_rss_bytes (VmHWM),
 * rss_at_stop_bytes, peak_physical_bytes and physical_budget_bytes.
 */
#define _GNU_SOURCE /* accept4, memmem, signalfd, timerfd, eventfd */
#include <rpool.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

#define READ_BUF_BYTES (64 * KiB)  /* per connection: the largest request head */
#define MAX_HEADERS 64
#define MAX_BLOB_KB 8192
#define RESERVE_ABOVE (256 * KiB) /* responses this large reserve their write
                                     buffer before the first byte is sent */
#define INBOX_CAP 256              /* sockets waiting for a worker to adopt them */
#define TICK_MS 250                /* sampling period; progress every 4 ticks */

/* ------------------------------------------------------------------------ */
/* Small helpers.                                                            */

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fatal(const char *what)
{
    fprintf(stderr, "server: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fatal_rc(const char *what, int rc)
{
    fprintf(stderr, "server: %s: %s\n", what, strerror(rc));
    exit(1);
}

/* close() that reports failure. Nothing can be retried (the descriptor is
 * gone either way), but an error here usually means a bug worth seeing. */
static void close_fd(int fd)
{
    if (close(fd) != 0)
        perror("server: close");
}

/* Resident set size from /proc/self/statm (second field, in pages). */
static size_t rss_bytes(void)
{
    static long page;
    if (!page)
        page = sysconf(_SC_PAGESIZE);
    FILE *f = fopen("/proc/self/statm", "r");
    unsigned long size = 0, resident = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%lu %lu", &size, &resident) != 2)
        resident = 0;
    fclose(f);
    return (size_t)resident * (size_t)page;
}

/* Peak resident set size: VmHWM in /proc/self/status. */
static size_t peak_rss_bytes(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    if (!f)
        return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "VmHWM: %zu kB", &kb) == 1)
            break;
    fclose(f);
    return kb * KiB;
}

/* ------------------------------------------------------------------------ */
/* Memory: the one place where the rpool and malloc builds differ.           */

static rp_pool *pool; /* NULL with --malloc */

struct memory {
    const char *name;
    /* Long-lived objects (struct conn). rp_allocator_pool: rp_alloc/rp_free,
     * size-class slabs with per-thread caches. */
    rp_allocator objects;
    /* Connection buffers. Returns the buffer and its usable size in *got
     * (a region is a power of two >= want, so it may exceed want). */
    void *(*buffer_get)(size_t want, size_t *got);
    void (*buffer_put)(void *buf);
};

static void *region_get(size_t want, size_t *got)
{
    void *r = rp_region_acquire(pool, want);
    *got = r ? rp_region_size(pool, r) : 0;
    return r;
}

static void region_put(void *buf)
{
    rp_region_release(pool, buf);
}

static void *malloc_get(size_t want, size_t *got)
{
    void *b = malloc(want);
    *got = b ? want : 0;
    return b;
}

static void malloc_put(void *buf)
{
    free(buf);
}

static struct memory mem;

/* Free through an rp_allocator (the header has rp_allocator_call for the
 * allocation side only). */
static void mem_free(rp_allocator a, void *p, size_t size)
{
    if (p)
        a.free(a.ctx, p, size);
}

/* ------------------------------------------------------------------------ */
/* Server state.                                                             */

struct conn {
    struct conn *prev, *next;  /* the owning worker's list */
    int fd;
    uint32_t events;           /* the epoll interest currently registered */
    bool close_after_write;    /* "Connection: close" or a fatal request error */
    char *rbuf;                /* bytes received and not yet handled */
    size_t rcap, rlen;
    char *wbuf;                /* response bytes the socket did not take yet */
    size_t wcap, woff, wlen;   /* pending = wbuf[woff .. wlen) */
};

struct worker {
    int id;
    pthread_t thread;
    int epfd;
    int wakefd;                /* eventfd: "look at your inbox / the stop flag" */
    /* Inbox: sockets accepted by the main thread, waiting to be adopted. */
    pthread_mutex_t inbox_lock;
    int inbox[INBOX_CAP];
    unsigned inbox_head, inbox_count;
    /* Owned by the worker thread. */
    struct conn *conns;
    rp_arena *arena;           /* request memory (rpool) */
    rp_allocator request;      /* allocator over `arena`, or the C library */
    double first_request, last_request;
    /* Read by the main thread for the progress line. */
    atomic_ullong requests;
    atomic_ullong rejected;    /* answered 503: memory refused */
    atomic_uint nconns;
};

static struct {
    int nworkers;
    struct worker *workers;
    atomic_int stop;
    atomic_uint nconns;        /* over all workers, for --max-conns */
    unsigned max_conns;
    atomic_ullong shed;        /* connections closed at once: over capacity
                                  or no memory for their buffers */
} srv;

/* ------------------------------------------------------------------------ */
/* Request memory.                                                           */

/* Nothing to do at the start of a request: the arena was reset at the end
 * of the previous one, and malloc needs no setup. */
static rp_allocator request_begin(struct worker *w)
{
    return w->request;
}

/* End of a request: the arena frees all of it in O(1) and keeps its first
 * chunk warm for the next request. With malloc, every block has already
 * been freed by the code that allocated it. */
static void request_end(struct worker *w)
{
    if (w->arena)
        rp_arena_reset(w->arena);
}

/* A growable byte string on an rp_allocator. Growth allocates a larger
 * block, copies and frees the old one (rp_allocator has no realloc). On an
 * arena the old blocks stay until the reset: with doubling, at most as many
 * bytes as the final string -- the usual price of building in an arena. */
struct sb {
    rp_allocator a;
    char *p;
    size_t len, cap;
    bool oom;                  /* an allocation failed; the string is unusable */
};

static bool sb_reserve(struct sb *b, size_t extra)
{
    if (b->oom)
        return false;
    if (b->cap - b->len >= extra)
        return true;
    size_t cap = b->cap ? b->cap : 256;
    while (cap - b->len < extra) {
        if (cap > SIZE_MAX / 2) {
            b->oom = true;
            return false;
        }
        cap *= 2;
    }
    char *p = rp_allocator_call(b->a, cap, 1);
    if (!p) {
        b->oom = true;
        return false;
    }
    if (b->len)
        memcpy(p, b->p, b->len);
    mem_free(b->a, b->p, b->cap);
    b->p = p;
    b->cap = cap;
    return true;
}

static void sb_append(struct sb *b, const void *s, size_t n)
{
    if (sb_reserve(b, n)) {
        memcpy(b->p + b->len, s, n);
        b->len += n;
    }
}

static void sb_printf(struct sb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(struct sb *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || !sb_reserve(b, (size_t)n + 1)) {
        b->oom = true;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void sb_free(struct sb *b)
{
    mem_free(b->a, b->p, b->cap);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* rp_write_fn that appends rpool's stats output to a string. It allocates
 * from the request arena while rp_stats_print runs. That is safe because
 * rp_stats_print takes its snapshot first and then only formats, holding no
 * rpool lock (src/stats.c) -- rpool.h promises only that rp_stats_print
 * itself does not allocate. */
static void sb_write(void *opaque, const char *text)
{
    sb_append(opaque, text, strlen(text));
}

/* ------------------------------------------------------------------------ */
/* HTTP parsing. The request stays in the read buffer; the parsed form      */
/* points into it and lives in request memory.                               */

struct header {
    const char *name, *value;
    size_t name_len, value_len;
};

struct request {
    const char *method, *target;
    size_t method_len, target_len;
    int minor;                  /* HTTP/1.minor */
    struct header *headers;     /* request memory */
    size_t nheaders, headers_cap;
    size_t length;              /* head + body bytes in the read buffer */
    bool keep_alive;
};

enum parse_result { PARSE_OK, PARSE_INCOMPLETE, PARSE_BAD, PARSE_TOO_LARGE,
                    PARSE_UNSUPPORTED, PARSE_NOMEM };

static bool token_eq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

/* Does a comma-separated header value contain `tok` (case-insensitive)? */
static bool has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok);
    for (size_t i = 0; i < n;) {
        while (i < n && (v[i] == ' ' || v[i] == ','))
            i++;
        size_t j = i;
        while (j < n && v[j] != ',')
            j++;
        size_t e = j;
        while (e > i && v[e - 1] == ' ')
            e--;
        if (e - i == tl && strncasecmp(v + i, tok, tl) == 0)
            return true;
        i = j;
    }
    return false;
}

/* Parse the request at buf[0 .. len) (cap: the read buffer's size). An
 * incomplete request is parsed again from the start when more bytes come:
 * simple, and cheap for requests this small. */
static enum parse_result parse_request(rp_allocator a, const char *buf, size_t len,
                                       size_t cap, struct request *rq)
{
    memset(rq, 0, sizeof *rq);
    const char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (!end)
        return len == cap ? PARSE_TOO_LARGE : PARSE_INCOMPLETE;
    size_t head_len = (size_t)(end - buf) + 4;

    /* Request line: METHOD SP target SP HTTP/1.x CRLF */
    const char *eol = memmem(buf, head_len, "\r\n", 2);
    const char *sp1 = memchr(buf, ' ', (size_t)(eol - buf));
    const char *sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(eol - sp1 - 1)) : NULL;
    if (!sp1 || !sp2 || sp1 == buf || sp2 == sp1 + 1 || eol - sp2 != 9 ||
        memcmp(sp2 + 1, "HTTP/1.", 7) != 0 || (sp2[8] != '0' && sp2[8] != '1'))
        return PARSE_BAD;
    rq->method = buf;
    rq->method_len = (size_t)(sp1 - buf);
    rq->target = sp1 + 1;
    rq->target_len = (size_t)(sp2 - sp1 - 1);
    rq->minor = sp2[8] - '0';

    /* Headers: count the lines first, then allocate exactly that many. */
    const char *lines = eol + 2;
    size_t n = 0;
    for (const char *s = lines; s < end; s = (const char *)memmem(s, (size_t)(end + 2 - s),
                                                                   "\r\n", 2) + 2)
        n++;
    if (n > MAX_HEADERS)
        return PARSE_TOO_LARGE;
    rq->headers_cap = n ? n : 1;
    rq->headers = RP_NEW(a, struct header, rq->headers_cap);
    if (!rq->headers)
        return PARSE_NOMEM;
    size_t content_length = 0;
    bool conn_close = false, conn_keep = false;
    for (const char *s = lines; s < end;) {
        const char *e = memmem(s, (size_t)(end + 2 - s), "\r\n", 2);
        const char *colon = memchr(s, ':', (size_t)(e - s));
        if (!colon || colon == s)
            return PARSE_BAD;
        const char *v = colon + 1, *ve = e;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
            ve--;
        struct header h = {s, v, (size_t)(colon - s), (size_t)(ve - v)};
        rq->headers[rq->nheaders++] = h;
        if (token_eq(h.name, h.name_len, "Content-Length")) {
            if (h.value_len == 0 || h.value_len > 12)
                return PARSE_BAD;
            content_length = 0;
            for (size_t i = 0; i < h.value_len; i++) {
                if (!isdigit((unsigned char)h.value[i]))
                    return PARSE_BAD;
                content_length = content_length * 10 + (size_t)(h.value[i] - '0');
            }
        } else if (token_eq(h.name, h.name_len, "Transfer-Encoding")) {
            return PARSE_UNSUPPORTED;
        } else if (token_eq(h.name, h.name_len, "Connection")) {
            conn_close |= has_token(h.value, h.value_len, "close");
            conn_keep |= has_token(h.value, h.value_len, "keep-alive");
        }
        s = e + 2;
    }
    /* HTTP/1.1 keeps the connection open unless told otherwise; 1.0 closes
     * it unless asked to keep it. */
    rq->keep_alive = rq->minor == 1 ? !conn_close : conn_keep;
    /* A body (we ignore it) must fit the read buffer with its head. */
    if (content_length > cap - head_len)
        return PARSE_TOO_LARGE;
    if (len - head_len < content_length)
        return PARSE_INCOMPLETE;
    rq->length = head_len + content_length;
    return PARSE_OK;
}

/* ------------------------------------------------------------------------ */
/* Connections.                                                              */

static void conn_close(struct worker *w, struct conn *c)
{
    /* close() also removes the socket from the epoll set (we never dup it).
     * This cannot hurt later events of the same epoll_wait batch: each
     * socket appears at most once per batch, and this is its event. */
    close_fd(c->fd);
    mem.buffer_put(c->rbuf);
    if (c->wbuf)
        mem.buffer_put(c->wbuf);
    if (c->prev)
        c->prev->next = c->next;
    else
        w->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    mem_free(mem.objects, c, sizeof *c);
    atomic_fetch_sub_explicit(&w->nconns, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&srv.nconns, 1, memory_order_relaxed);
}

/* Adopt a socket from the inbox: allocate its state and read buffer and add
 * it to our epoll set. On failure the socket is closed: a client we cannot
 * serve is better refused at once than left hanging. */
static void conn_open(struct worker *w, int fd)
{
    struct conn *c = RP_NEW(mem.objects, struct conn, 1);
    if (!c)
        goto refuse;
    *c = (struct conn){.fd = fd, .events = EPOLLIN};
    c->rbuf = mem.buffer_get(READ_BUF_BYTES, &c->rcap);
    if (!c->rbuf)
        goto refuse;
    struct epoll_event ev = {.events = c->events, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
        perror("server: epoll_ctl(ADD)");
        goto refuse;
    }
    c->next = w->conns;
    if (w->conns)
        w->conns->prev = c;
    w->conns = c;
    atomic_fetch_add_explicit(&w->nconns, 1, memory_order_relaxed);
    return;
refuse:
    if (c) {
        mem.buffer_put(c->rbuf); /* NULL is fine for both kinds */
        mem_free(mem.objects, c, sizeof *c);
    }
    atomic_fetch_add_explicit(&srv.shed, 1, memory_order_relaxed);
    atomic_fetch_sub_explicit(&srv.nconns, 1, memory_order_relaxed);
    close_fd(fd);
}

/* Switch the epoll interest between reading and writing. While a response
 * is still queued we stop reading: a client that sends requests faster
 * than it reads responses is held back by TCP instead of by our memory. */
static int conn_watch(struct worker *w, struct conn *c)
{
    uint32_t want = c->wlen > c->woff ? EPOLLOUT : EPOLLIN;
    if (want == c->events)
        return 0;
    struct epoll_event ev = {.events = want, .data.ptr = c};
    if (epoll_ctl(w->epfd, EPOLL_CTL_MOD, c->fd, &ev) != 0) {
        perror("server: epoll_ctl(MOD)");
        return -1;
    }
    c->events = want;
    return 0;
}

/* sendmsg with MSG_NOSIGNAL: a peer that went away gives EPIPE, not a
 * SIGPIPE that would kill the process. */
static ssize_t send_iov(int fd, struct iovec *iov, int iovcnt)
{
    struct msghdr msg = {.msg_iov = iov, .msg_iovlen = (size_t)iovcnt};
    ssize_t n;
    do
        n = sendmsg(fd, &msg, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
}

/* Make room for `bytes` more queued output: a new buffer for what is pending
 * plus `bytes` (a region of the next class up, or a malloc block), the
 * pending bytes moved to its start. Returns 0, or -1 without memory. */
static int conn_reserve(struct conn *c, size_t bytes)
{
    if (c->wcap - c->wlen >= bytes)
        return 0;
    size_t pending = c->wlen - c->woff, cap;
    char *nb = mem.buffer_get(pending + bytes, &cap);
    if (!nb)
        return -1;
    if (pending)
        memcpy(nb, c->wbuf + c->woff, pending);
    if (c->wbuf)
        mem.buffer_put(c->wbuf);
    c->wbuf = nb;
    c->wcap = cap;
    c->woff = 0;
    c->wlen = pending;
    return 0;
}

/* Give the write buffer back once nothing is queued in it: an idle
 * keep-alive connection holds only its read buffer. */
static void conn_trim(struct conn *c)
{
    if (c->wbuf && c->wlen == c->woff) {
        mem.buffer_put(c->wbuf);
        c->wbuf = NULL;
        c->wcap = c->woff = c->wlen = 0;
    }
}

/* Send a response now, as far as the socket takes it, and copy whatever it
 * did not take into the connection's write buffer. The common case -- the
 * whole response fits the socket buffer -- makes no copy at all: the bytes
 * go from request memory straight to the kernel, and request memory can be
 * freed as soon as we return. Returns 0, or -1 if the connection must close
 * (a socket error, or no memory for the rest; see handle_one for how large
 * responses avoid the latter). */
static int conn_send(struct conn *c, struct iovec *iov, int iovcnt)
{
    size_t total = 0, done = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (c->wlen == c->woff) { /* nothing queued: we may write directly */
        ssize_t n = send_iov(c->fd, iov, iovcnt);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return -1;
        done = n > 0 ? (size_t)n : 0;
    }
    if (done == total) {
        conn_trim(c); /* a reservation that was not needed goes back */
        return 0;
    }
    if (conn_reserve(c, total - done) != 0)
        return -1; /* part of the response is out; we cannot finish it */
    for (int i = 0; i < iovcnt; i++) {
        size_t skip = done < iov[i].iov_len ? done : iov[i].iov_len;
        done -= skip;
        memcpy(c->wbuf + c->wlen, (char *)iov[i].iov_base + skip, iov[i].iov_len - skip);
        c->wlen += iov[i].iov_len - skip;
    }
    return 0;
}

/* EPOLLOUT: push queued bytes; when all are out, the write buffer goes back.
 * Returns 0, or -1 if the connection must close. */
static int conn_flush(struct conn *c)
{
    while (c->wlen > c->woff) {
        struct iovec iov = {c->wbuf + c->woff, c->wlen - c->woff};
        ssize_t n = send_iov(c->fd, &iov, 1);
        if (n < 0)
            return errno == EAGAIN || errno == EWOULDBLOCK ? 0 : -1;
        c->woff += (size_t)n;
    }
    conn_trim(c);
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Handlers: they build a body in request memory.                            */

struct response {
    int status;
    const char *reason;
    const char *type;
    struct sb body;
};

/* The padding of every blob line: dots and a newline (filled in main). */
static char filler[1024];

/* GET /blob?kb=N: N KiB of text, one numbered 1 KiB line after another. The
 * string grows as it is built, as output of unknown size would. */
static void handle_blob(struct response *rs, const char *query, size_t qlen)
{
    long kb = 0;
    if (qlen > 3 && qlen < 12 && memcmp(query, "kb=", 3) == 0) {
        char num[16];
        memcpy(num, query + 3, qlen - 3);
        num[qlen - 3] = '\0';
        char *end;
        kb = strtol(num, &end, 10);
        if (*end)
            kb = 0;
    }
    if (kb < 1 || kb > MAX_BLOB_KB) {
        rs->status = 400;
        rs->reason = "Bad Request";
        sb_printf(&rs->body, "usage: /blob?kb=N with 1 <= N <= %d\n", MAX_BLOB_KB);
        return;
    }
    for (long i = 0; i < kb && !rs->body.oom; i++) {
        size_t start = rs->body.len;
        sb_printf(&rs->body, "blob %ld of %ld KiB ", i + 1, kb);
        size_t used = rs->body.len - start;
        sb_append(&rs->body, filler + used, sizeof filler - used);
    }
}

static void handle_metrics(struct response *rs)
{
    rs->type = "text/plain; version=0.0.4";
    if (pool) {
        rp_stats_print(pool, sb_write, &rs->body, RP_STATS_PROMETHEUS);
    } else {
        sb_printf(&rs->body, "# --malloc: no allocator metrics\n"
                             "process_resident_memory_bytes %zu\n", rss_bytes());
    }
}

static void route(const struct request *rq, struct response *rs)
{
    const char *path = rq->target, *q = memchr(rq->target, '?', rq->target_len);
    size_t plen = q ? (size_t)(q - path) : rq->target_len;
    size_t qlen = q ? rq->target_len - plen - 1 : 0;
    *rs = (struct response){200, "OK", "text/plain", {.a = rs->body.a}};
    if (!token_eq(rq->method, rq->method_len, "GET")) {
        rs->status = 405;
        rs->reason = "Method Not Allowed";
        sb_printf(&rs->body, "only GET is served here\n");
    } else if (plen == 6 && memcmp(path, "/hello", 6) == 0) {
        sb_printf(&rs->body, "Hello from rpool-demo (%s)\n", mem.name);
    } else if (plen == 5 && memcmp(path, "/blob", 5) == 0) {
        handle_blob(rs, q ? q + 1 : "", qlen);
    } else if (plen == 8 && memcmp(path, "/metrics", 8) == 0) {
        handle_metrics(rs);
    } else {
        rs->status = 404;
        rs->reason = "Not Found";
        sb_printf(&rs->body, "not found\n");
    }
}

/* Canned answers need no memory, so they work when memory is short. */
static const char resp_503[] =
    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
    "Content-Length: 14\r\nRetry-After: 1\r\n\r\nout of memory\n";
static const char resp_400[] =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 12\r\nConnection: close\r\n\r\nbad request\n";
static const char resp_413[] =
    "HTTP/1.1 413 Content Too Large\r\nContent-Length: 18\r\nConnection: close\r\n\r\n"
    "request too large\n";
static const char resp_501[] =
    "HTTP/1.1 501 Not Implemented\r\nContent-Length: 30\r\nConnection: close\r\n\r\n"
    "transfer encodings not served\n";

static int send_canned(struct conn *c, const char *text, size_t len)
{
    struct iovec iov = {(void *)text, len};
    return conn_send(c, &iov, 1);
}

/* Handle the request at the start of the read buffer, if it is complete.
 * Returns the bytes it used (0: incomplete, wait for more), or -1 when the
 * connection must close now. */
static ssize_t handle_one(struct worker *w, struct conn *c, const char *buf, size_t len)
{
    rp_allocator a = request_begin(w);
    struct request rq;
    enum parse_result pr = parse_request(a, buf, len, c->rcap, &rq);
    ssize_t used = (ssize_t)len; /* after an error, nothing more is handled */
    int rc = 0;
    switch (pr) {
    case PARSE_INCOMPLETE:
        used = 0;
        break;
    case PARSE_BAD:
        rc = send_canned(c, resp_400, sizeof resp_400 - 1);
        c->close_after_write = true;
        break;
    case PARSE_TOO_LARGE:
        rc = send_canned(c, resp_413, sizeof resp_413 - 1);
        c->close_after_write = true;
        break;
    case PARSE_UNSUPPORTED:
        rc = send_canned(c, resp_501, sizeof resp_501 - 1);
        c->close_after_write = true;
        break;
    case PARSE_NOMEM:
        /* Out of memory before we know the request's length: we cannot skip
         * it, so answer and close. */
        rc = send_canned(c, resp_503, sizeof resp_503 - 1);
        c->close_after_write = true;
        atomic_fetch_add_explicit(&w->rejected, 1, memory_order_relaxed);
        break;
    case PARSE_OK: {
        struct response rs = {.body = {.a = a}};
        route(&rq, &rs);
        struct sb head = {.a = a};
        if (!rs.body.oom)
            sb_printf(&head, "HTTP/1.1 %d %s\r\nServer: rpool-demo\r\nContent-Type: %s\r\n"
                             "Content-Length: %zu\r\n%s\r\n",
                      rs.status, rs.reason, rs.type, rs.body.len,
                      rq.keep_alive ? "" : "Connection: close\r\n");
        /* Fail before the first byte is sent, not halfway: a large response
         * may not fit the socket buffer, and if the rest then found no
         * memory we could only cut the connection. So reserve its write
         * buffer now and answer 503 if that is refused; conn_send gives
         * the reservation back if the socket takes everything. */
        size_t total = head.len + rs.body.len;
        bool reserved = total < RESERVE_ABOVE || conn_reserve(c, total) == 0;
        if (rs.body.oom || head.oom || !reserved) {
            rc = send_canned(c, resp_503, sizeof resp_503 - 1);
            atomic_fetch_add_explicit(&w->rejected, 1, memory_order_relaxed);
        } else {
            struct iovec iov[2] = {{head.p, head.len}, {rs.body.p, rs.body.len}};
            rc = conn_send(c, iov, 2);
        }
        if (!rq.keep_alive)
            c->close_after_write = true;
        used = (ssize_t)rq.length;
        sb_free(&head);
        sb_free(&rs.body);
        break;
    }
    }
    if (pr != PARSE_INCOMPLETE) {
        double t = now_seconds();
        if (w->first_request == 0)
            w->first_request = t;
        w->last_request = t;
        atomic_fetch_add_explicit(&w->requests, 1, memory_order_relaxed);
    }
    /* Free the parse results, then end the request: on an arena this
     * reset is what really frees everything above. */
    mem_free(a, rq.headers, rq.headers_cap * sizeof *rq.headers);
    request_end(w);
    return rc != 0 ? -1 : used;
}

/* Handle every complete request in the read buffer, one at a time, and stop
 * as soon as a response is queued (see conn_watch). Returns -1 when the
 * connection must close now. */
static int conn_process(struct worker *w, struct conn *c)
{
    size_t off = 0;
    while (c->wlen == c->woff && !c->close_after_write && off < c->rlen) {
        ssize_t used = handle_one(w, c, c->rbuf + off, c->rlen - off);
        if (used < 0)
            return -1;
        if (used == 0)
            break;
        off += (size_t)used;
    }
    if (c->close_after_write)
        off = c->rlen; /* discard whatever the client sent after */
    if (off > 0) {
        memmove(c->rbuf, c->rbuf + off, c->rlen - off);
        c->rlen -= off;
    }
    if (c->close_after_write && c->wlen == c->woff)
        return -1; /* everything sent: close now */
    return conn_watch(w, c);
}

/* One epoll event for a connection. */
static void conn_event(struct worker *w, struct conn *c, uint32_t events)
{
    if (events & EPOLLERR) {
        conn_close(w, c);
        return;
    }
    if (events & EPOLLOUT) {
        if (conn_flush(c) != 0) {
            conn_close(w, c);
            return;
        }
        /* Output drained: requests that arrived meanwhile can be handled. */
        if (conn_process(w, c) != 0)
            conn_close(w, c);
        return;
    }
    if (events & (EPOLLIN | EPOLLHUP)) {
        /* One read per event: level-triggered epoll reports the socket again
         * if more is waiting, which keeps one busy client from starving the
         * others on this worker. (The buffer cannot be full here: a full
         * buffer without a complete request was answered with 413.) A peer
         * that closed makes the socket readable and recv return 0. */
        ssize_t n;
        do
            n = recv(c->fd, c->rbuf + c->rlen, c->rcap - c->rlen, 0);
        while (n < 0 && errno == EINTR);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK)) {
            conn_close(w, c); /* peer closed, or a socket error */
            return;
        }
        if (n > 0)
            c->rlen += (size_t)n;
        if (conn_process(w, c) != 0)
            conn_close(w, c);
    }
}

/* ------------------------------------------------------------------------ */
/* Workers.                                                                  */

static void adopt_inbox(struct worker *w)
{
    uint64_t count;
    if (read(w->wakefd, &count, sizeof count) < 0 && errno != EAGAIN)
        fatal("read(eventfd)");
    for (;;) {
        int fd = -1;
        pthread_mutex_lock(&w->inbox_lock);
        if (w->inbox_count) {
            fd = w->inbox[w->inbox_head];
            w->inbox_head = (w->inbox_head + 1) % INBOX_CAP;
            w->inbox_count--;
        }
        pthread_mutex_unlock(&w->inbox_lock);
        if (fd < 0)
            return;
        conn_open(w, fd);
    }
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    if (pool) {
        /* This thread's own arena: no lock, no atomic on its fast path.
         * Created on first use; returned at rp_thread_detach below. */
        w->arena = rp_arena_thread(pool);
        if (!w->arena)
            fatal("rp_arena_thread");
        w->request = rp_allocator_arena(w->arena);
    } else {
        w->request = rp_allocator_libc();
    }
    struct epoll_event events[64];
    while (!atomic_load_explicit(&srv.stop, memory_order_acquire)) {
        int n = epoll_wait(w->epfd, events, 64, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fatal("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            if (events[i].data.ptr == NULL)
                adopt_inbox(w); /* the eventfd: new sockets, or stop */
            else
                conn_event(w, events[i].data.ptr, events[i].events);
        }
    }
    while (w->conns)
        conn_close(w, w->conns);
    adopt_inbox(w); /* sockets handed over after the last wake-up */
    while (w->conns)
        conn_close(w, w->conns);
    if (pool)
        rp_thread_detach(pool); /* the arena and object caches go back now */
    return NULL;
}

static void worker_wake(struct worker *w)
{
    uint64_t one = 1;
    if (write(w->wakefd, &one, sizeof one) != sizeof one)
        fatal("write(eventfd)");
}

/* Hand a new socket to a worker. With the inbox full the worker is far
 * behind; refusing the connection is kinder than queueing without bound. */
static void worker_give(struct worker *w, int fd)
{
    bool ok = false;
    pthread_mutex_lock(&w->inbox_lock);
    if (w->inbox_count < INBOX_CAP) {
        w->inbox[(w->inbox_head + w->inbox_count) % INBOX_CAP] = fd;
        w->inbox_count++;
        ok = true;
    }
    pthread_mutex_unlock(&w->inbox_lock);
    if (ok) {
        worker_wake(w);
    } else {
        atomic_fetch_add_explicit(&srv.shed, 1, memory_order_relaxed);
        atomic_fetch_sub_explicit(&srv.nconns, 1, memory_order_relaxed);
        close_fd(fd);
    }
}

static void worker_start(struct worker *w, int id)
{
    w->id = id;
    atomic_init(&w->requests, 0);
    atomic_init(&w->rejected, 0);
    atomic_init(&w->nconns, 0);
    w->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (w->epfd < 0)
        fatal("epoll_create1");
    w->wakefd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (w->wakefd < 0)
        fatal("eventfd");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->wakefd, &ev) != 0)
        fatal("epoll_ctl(eventfd)");
    int rc = pthread_mutex_init(&w->inbox_lock, NULL);
    if (rc != 0)
        fatal_rc("pthread_mutex_init", rc);
    rc = pthread_create(&w->thread, NULL, worker_main, w);
    if (rc != 0)
        fatal_rc("pthread_create", rc);
}

/* ------------------------------------------------------------------------ */
/* The main thread: accept, progress, stop.                                  */

struct options {
    int port;
    const char *port_file;
    int threads;
    int seconds;
    unsigned max_conns;
    bool use_malloc;
    const char *rss_log;
};

static long parse_num(const char *opt, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = s ? strtol(s, &end, 10) : 0;
    if (!s || errno || *end || v < lo || v > hi) {
        fprintf(stderr, "server: %s wants a number in [%ld, %ld]\n", opt, lo, hi);
        exit(2);
    }
    return v;
}

static struct options parse_options(int argc, char **argv)
{
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    struct options o = {.port = 8080, .threads = cpus > 0 && cpus < 64 ? (int)cpus : 4,
                        .seconds = 30, .max_conns = 1024};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--port") == 0)
            o.port = (int)parse_num(a, v, 0, 65535), i++;
        else if (strcmp(a, "--port-file") == 0 && v)
            o.port_file = v, i++;
        else if (strcmp(a, "--threads") == 0)
            o.threads = (int)parse_num(a, v, 1, 64), i++;
        else if (strcmp(a, "--seconds") == 0)
            o.seconds = (int)parse_num(a, v, 1, 3600), i++;
        else if (strcmp(a, "--max-conns") == 0)
            o.max_conns = (unsigned)parse_num(a, v, 1, 100000), i++;
        else if (strcmp(a, "--malloc") == 0)
            o.use_malloc = true;
        else if (strcmp(a, "--rss-log") == 0 && v)
            o.rss_log = v, i++;
        else {
            fprintf(stderr, "usage: %s [--port N] [--port-file PATH] [--threads N] "
                            "[--seconds N] [--max-conns N] [--malloc] [--rss-log PATH]\n",
                    argv[0]);
            exit(2);
        }
    }
    return o;
}

static rp_pool *make_pool(void)
{
    rp_config cfg;
    rp_config_init(&cfg); /* the "server" preset */
    cfg.physical_budget = 256 * MiB;
    char err[256];
    if (rp_config_from_env(&cfg, "RPOOL_CONF", err, sizeof err) != 0) {
        fprintf(stderr, "server: %s\n", err);
        exit(2);
    }
    rp_pool *p = rp_pool_create(&cfg);
    if (!p)
        fatal("rp_pool_create");
    return p;
}

static int listen_loopback(int port, int *bound_port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        fatal("socket");
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) != 0)
        fatal("setsockopt(SO_REUSEADDR)");
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0)
        fatal("bind(127.0.0.1)");
    if (listen(fd, SOMAXCONN) != 0)
        fatal("listen");
    socklen_t len = sizeof sa;
    if (getsockname(fd, (struct sockaddr *)&sa, &len) != 0)
        fatal("getsockname");
    *bound_port = ntohs(sa.sin_port);
    return fd;
}

/* Write the port to `path` via a temporary file and rename, so that a
 * script polling for the file never reads it half-written. */
static void write_port_file(const char *path, int port)
{
    char tmp[PATH_MAX];
    if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
        fprintf(stderr, "server: --port-file path too long\n");
        exit(2);
    }
    FILE *f = fopen(tmp, "w");
    if (!f)
        fatal(tmp);
    fprintf(f, "%d\n", port);
    if (fclose(f) != 0)
        fatal(tmp);
    if (rename(tmp, path) != 0)
        fatal("rename(port file)");
}

/* Accept everything pending and deal it to the workers. Returns false when
 * accepting must pause (out of file descriptors): the listening socket is
 * level-triggered, so retrying at once would spin. */
static bool accept_all(int lfd, unsigned *next_worker)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return true;
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                perror("server: accept4 (pausing accepts for a tick)");
                return false;
            }
            fatal("accept4");
        }
        /* Responses leave in one write; do not let Nagle hold back the
         * tail of a large one waiting for an ACK. */
        int one = 1;
        if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one) != 0)
            perror("server: setsockopt(TCP_NODELAY)");
        if (atomic_fetch_add_explicit(&srv.nconns, 1, memory_order_relaxed) >= srv.max_conns) {
            atomic_fetch_sub_explicit(&srv.nconns, 1, memory_order_relaxed);
            atomic_fetch_add_explicit(&srv.shed, 1, memory_order_relaxed);
            close_fd(fd);
            continue;
        }
        worker_give(&srv.workers[*next_worker], fd);
        *next_worker = (*next_worker + 1) % (unsigned)srv.nworkers;
    }
}

static unsigned long long total_requests(unsigned long long *rejected)
{
    unsigned long long r = 0, x = 0;
    for (int i = 0; i < srv.nworkers; i++) {
        r += atomic_load_explicit(&srv.workers[i].requests, memory_order_relaxed);
        x += atomic_load_explicit(&srv.workers[i].rejected, memory_order_relaxed);
    }
    if (rejected)
        *rejected = x;
    return r;
}

static void progress_line(double t, double rps, size_t rss, unsigned long long rejected)
{
    unsigned conns = atomic_load_explicit(&srv.nconns, memory_order_relaxed);
    if (pool) {
        rp_stats st;
        rp_stats_get(pool, &st);
        fprintf(stderr, "[%5.1fs] rpool  %8.0f req/s  physical %7.1f MiB of %.0f MiB (%4.1f%%)"
                        "  rss %7.1f MiB  conns %u  503s %llu\n",
                t, rps, (double)st.physical_bytes / MiB, (double)st.physical_budget / MiB,
                100.0 * (double)st.physical_bytes / (double)st.physical_budget,
                (double)rss / MiB, conns, rejected);
    } else {
        fprintf(stderr, "[%5.1fs] malloc %8.0f req/s  rss %7.1f MiB  conns %u  503s %llu\n", t,
                rps, (double)rss / MiB, conns, rejected);
    }
}

static void write_stdout(void *opaque, const char *text)
{
    (void)opaque;
    fputs(text, stdout);
}

int main(int argc, char **argv)
{
    struct options o = parse_options(argc, argv);
    srv.max_conns = o.max_conns;
    memset(filler, '.', sizeof filler - 1);
    filler[sizeof filler - 1] = '\n';

    /* Block the stop signals in every thread and receive them through a
     * signalfd in the main loop instead: no async-signal-safety worries, no
     * EINTR surprises in workers. Threads inherit the mask when created, so
     * this must come before the first thread -- and rp_pool_create starts
     * one (the "server" preset's background purger). A SIGTERM delivered to
     * a thread that does not block it would kill the process. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGTERM);
    int rc = pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if (rc != 0)
        fatal_rc("pthread_sigmask", rc);
    int sfd = signalfd(-1, &sigs, SFD_NONBLOCK | SFD_CLOEXEC);
    if (sfd < 0)
        fatal("signalfd");

    if (o.use_malloc) {
        mem = (struct memory){"malloc", rp_allocator_libc(), malloc_get, malloc_put};
    } else {
        pool = make_pool();
        mem = (struct memory){"rpool", rp_allocator_pool(pool), region_get, region_put};
    }

    int port;
    int lfd = listen_loopback(o.port, &port);

    srv.nworkers = o.threads;
    srv.workers = calloc((size_t)o.threads, sizeof *srv.workers);
    if (!srv.workers)
        fatal("calloc");
    for (int i = 0; i < o.threads; i++)
        worker_start(&srv.workers[i], i);

    int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (tfd < 0)
        fatal("timerfd_create");
    struct itimerspec its = {{0, TICK_MS * 1000000L}, {0, TICK_MS * 1000000L}};
    if (timerfd_settime(tfd, 0, &its, NULL) != 0)
        fatal("timerfd_settime");

    int epfd = epoll_create1(EPOLL_CLOEXEC);
    if (epfd < 0)
        fatal("epoll_create1");
    int fds[3] = {lfd, sfd, tfd};
    for (int i = 0; i < 3; i++) {
        struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
        if (epoll_ctl(epfd, EPOLL_CTL_ADD, fds[i], &ev) != 0)
            fatal("epoll_ctl");
    }

    FILE *log = NULL;
    if (o.rss_log) {
        log = fopen(o.rss_log, "w");
        if (!log)
            fatal(o.rss_log);
        fprintf(log, "# seconds rss_bytes budget_bytes physical_bytes (%s)\n", mem.name);
    }
    if (o.port_file)
        write_port_file(o.port_file, port);
    if (pool)
        fprintf(stderr, "server: 127.0.0.1:%d, %d workers, memory from rpool %s, physical "
                        "budget %.0f MiB (RPOOL_CONF=%s), stopping after %d s\n",
                port, o.threads, rp_version(),
                (double)rp_budget_get(pool, RP_BUDGET_PHYSICAL) / MiB,
                getenv("RPOOL_CONF") ? getenv("RPOOL_CONF") : "", o.seconds);
    else
        fprintf(stderr, "server: 127.0.0.1:%d, %d workers, memory from malloc, "
                        "stopping after %d s\n", port, o.threads, o.seconds);

    double t0 = now_seconds(), last_t = t0;
    unsigned long long last_requests = 0;
    unsigned next_worker = 0, tick = 0;
    bool accepting = true;
    const char *why = "time limit";
    while (!atomic_load_explicit(&srv.stop, memory_order_relaxed)) {
        struct epoll_event ev[8];
        int n = epoll_wait(epfd, ev, 8, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fatal("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            int fd = ev[i].data.fd;
            if (fd == lfd) {
                if (!accept_all(lfd, &next_worker)) {
                    if (epoll_ctl(epfd, EPOLL_CTL_DEL, lfd, NULL) != 0)
                        fatal("epoll_ctl(DEL)");
                    accepting = false;
                }
            } else if (fd == sfd) {
                struct signalfd_siginfo si;
                if (read(sfd, &si, sizeof si) == sizeof si) {
                    why = si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM";
                    atomic_store(&srv.stop, 1);
                }
            } else if (fd == tfd) {
                uint64_t expirations;
                if (read(tfd, &expirations, sizeof expirations) != sizeof expirations)
                    continue;
                double t = now_seconds();
                size_t rss = rss_bytes();
                rp_stats st = {0};
                if (pool)
                    rp_stats_get(pool, &st);
                if (log)
                    fprintf(log, "%.2f %zu %zu %zu\n", t - t0, rss, st.physical_budget,
                            st.physical_bytes);
                if (!accepting) { /* a tick has passed: try accepting again */
                    struct epoll_event lev = {.events = EPOLLIN, .data.fd = lfd};
                    if (epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &lev) != 0)
                        fatal("epoll_ctl(ADD listen)");
                    accepting = true;
                }
                if (++tick % (1000 / TICK_MS) == 0) {
                    unsigned long long rejected;
                    unsigned long long r = total_requests(&rejected);
                    progress_line(t - t0, (double)(r - last_requests) / (t - last_t), rss,
                                  rejected);
                    last_requests = r;
                    last_t = t;
                }
                if (t - t0 >= o.seconds)
                    atomic_store(&srv.stop, 1);
            }
        }
    }

    /* Stop: close the door, wake every worker, wait for them to close their
     * connections and give their memory back. */
    double t_end = now_seconds();
    size_t rss_at_stop = rss_bytes(); /* after the load, before cleanup */
    close_fd(lfd); /* new connections are refused from here on */
    for (int i = 0; i < srv.nworkers; i++)
        worker_wake(&srv.workers[i]);
    for (int i = 0; i < srv.nworkers; i++)
        if ((rc = pthread_join(srv.workers[i].thread, NULL)) != 0)
            fatal_rc("pthread_join", rc);

    unsigned long long rejected, requests = total_requests(&rejected);
    double first = 0, last = 0;
    for (int i = 0; i < srv.nworkers; i++) {
        struct worker *w = &srv.workers[i];
        if (w->first_request > 0 && (first == 0 || w->first_request < first))
            first = w->first_request;
        if (w->last_request > last)
            last = w->last_request;
        close_fd(w->epfd);
        close_fd(w->wakefd);
        pthread_mutex_destroy(&w->inbox_lock);
    }
    double busy = last > first ? last - first : 0;
    fprintf(stderr, "server: stopped (%s) after %.1f s\n", why, t_end - t0);

    size_t physical_peak = 0, budget = 0;
    if (pool) {
        /* Everything is closed: what is left is the pool's own cache of free
         * regions and warm slabs. The reconciliation shows where each
         * resident byte is and that the sums agree. */
        printf("--- rpool stats at exit ---\n");
        rp_stats_print(pool, write_stdout, NULL, RP_STATS_TEXT);
        rp_stats st;
        rp_stats_get(pool, &st);
        physical_peak = st.physical_peak;
        budget = st.physical_budget;
    }
    printf("summary: mode=%s requests=%llu rejected=%llu shed=%llu seconds=%.2f req_per_s=%.0f "
           "peak_rss_bytes=%zu rss_at_stop_bytes=%zu peak_physical_bytes=%zu "
           "physical_budget_bytes=%zu\n",
           mem.name, requests, rejected,
           (unsigned long long)atomic_load(&srv.shed), busy,
           busy > 0 ? (double)requests / busy : 0.0, peak_rss_bytes(), rss_at_stop,
           physical_peak, budget);
    if (log) {
        int failed = ferror(log); /* a write error at any tick, or at close */
        if (fclose(log) != 0 || failed)
            fprintf(stderr, "server: writing %s failed\n", o.rss_log);
    }
    close_fd(epfd);
    close_fd(tfd);
    close_fd(sfd);
    free(srv.workers);
    rp_pool_destroy(pool);
    if (fflush(stdout) != 0) {
        perror("server: stdout");
        return 1;
    }
    return 0;
}
