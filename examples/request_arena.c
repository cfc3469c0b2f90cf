/* request_arena.c -- per-request memory with rpool arenas.
 *
 * A server allocates most of a request's memory in one place and frees it
 * all together when the response has gone out: the parsed request line, the
 * header table, decoded parameters, the response being built. An arena
 * matches that life cycle exactly: allocation is a pointer bump, and
 * rp_arena_reset frees the whole request in O(1) with no per-object free
 * (so no leak and no double free is possible inside a request).
 *
 * This program handles a list of fake HTTP requests many times over and
 * shows the three arena tools a request handler needs:
 *
 *   1. rp_arena_thread + rp_arena_reset: the worker thread's own arena,
 *      reset after every request. The first chunk stays warm, so a steady
 *      stream of requests costs no system call and no page fault, and the
 *      pool's committed (virtual) memory stays flat -- checked at the end.
 *
 *   2. rp_arena_mark + rp_arena_rewind: nested scratch scopes. Decoding a
 *      form body needs a temporary copy; decoding each field needs a smaller
 *      one. A mark taken before the scratch work and a rewind after it give
 *      that memory back at once, while the request's earlier data stays.
 *
 *   3. rp_arena_create(pool, budget): an explicit arena with a byte budget,
 *      one per upload request. However the handler processes the body, that
 *      request cannot use more than the budget: the allocation that would
 *      pass it returns NULL (errno ENOMEM) and the handler answers 413.
 *
 * Run: ./request_arena            (prints the first round, then a summary)
 */
#define _POSIX_C_SOURCE 200809L /* strtok_r, strcasecmp */
#include <rpool.h>

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

enum { ROUNDS = 40000 };              /* times the request list is replayed */
#define UPLOAD_BUDGET (64 * KiB)      /* memory budget of one upload request */
#define UPLOAD_BODY (200 * KiB)       /* the oversized upload in the list */

/* ------------------------------------------------------------------------ */
/* Parsing: every string of a parsed request lives in the request's arena.  */

struct header {
    const char *name;
    const char *value;
};

struct request {
    char *method;
    char *path;
    char *query;            /* after '?', or NULL */
    struct header *headers;
    size_t nheaders;
    const char *body;
    size_t body_len;
};

struct response {
    int status;
    const char *reason;
    char *body;             /* NUL-terminated, in the request's arena */
};

/* Copy n bytes into the arena as a NUL-terminated string. */
static char *arena_strndup(rp_arena *a, const char *s, size_t n)
{
    char *d = rp_arena_alloc(a, n + 1, 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

/* printf into the arena. Formats once to measure, then once into memory of
 * exactly the right size: no guessing at buffer sizes. */
static char *arena_printf(rp_arena *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static char *arena_printf(rp_arena *a, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NULL;
    char *s = rp_arena_alloc(a, (size_t)n + 1, 1);
    if (!s)
        return NULL;
    va_start(ap, fmt);
    vsnprintf(s, (size_t)n + 1, fmt, ap);
    va_end(ap);
    return s;
}

/* Parse "METHOD SP target SP HTTP/1.x CRLF (name: value CRLF)* CRLF body".
 * The raw bytes are copied into the arena first: the parsed request then no
 * longer depends on the connection's read buffer, which the server may
 * reuse for the next request while this one is still being handled.
 * Returns 0, -EINVAL for a malformed request, -ENOMEM when the arena
 * refuses (its budget or the pool's). */
static int parse_request(rp_arena *a, const char *raw, size_t len, struct request *rq)
{
    memset(rq, 0, sizeof *rq);
    const char *end = NULL;
    for (size_t i = 0; i + 3 < len; i++)
        if (memcmp(raw + i, "\r\n\r\n", 4) == 0) {
            end = raw + i + 2; /* keep the CRLF of the last header line */
            break;
        }
    if (!end)
        return -EINVAL;
    char *head = arena_strndup(a, raw, (size_t)(end - raw));
    if (!head)
        return -ENOMEM;

    /* Request line. */
    char *eol = strstr(head, "\r\n");
    *eol = '\0';
    char *sp1 = strchr(head, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0)
        return -EINVAL;
    *sp1 = *sp2 = '\0';
    rq->method = head;
    rq->path = sp1 + 1;
    char *q = strchr(rq->path, '?');
    if (q) {
        *q = '\0';
        rq->query = q + 1;
    }

    /* Headers: count the lines, then fill an array of exactly that size. */
    char *lines = eol + 2;
    size_t n = 0;
    for (char *s = lines; (s = strstr(s, "\r\n")) != NULL; s += 2)
        n++;
    rq->headers = rp_arena_alloc(a, rp_mul_size(n, sizeof *rq->headers),
                                 _Alignof(struct header));
    if (!rq->headers)
        return -ENOMEM;
    for (char *s = lines; *s;) {
        char *e = strstr(s, "\r\n");
        *e = '\0';
        char *colon = strchr(s, ':');
        if (!colon)
            return -EINVAL;
        *colon = '\0';
        char *v = colon + 1;
        while (*v == ' ')
            v++;
        rq->headers[rq->nheaders++] = (struct header){s, v};
        s = e + 2;
    }
    rq->body = end + 2;
    rq->body_len = len - (size_t)(rq->body - raw);
    return 0;
}

static const char *header(const struct request *rq, const char *name)
{
    for (size_t i = 0; i < rq->nheaders; i++)
        if (strcasecmp(rq->headers[i].name, name) == 0)
            return rq->headers[i].value;
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* Handlers.                                                                 */

/* Decode one application/x-www-form-urlencoded component ("a+b%21") into
 * dst; returns its length. dst needs at most strlen(src) + 1 bytes. */
static size_t url_decode(char *dst, const char *src, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '+') {
            dst[o++] = ' ';
        } else if (src[i] == '%' && i + 2 < n && isxdigit((unsigned char)src[i + 1]) &&
                   isxdigit((unsigned char)src[i + 2])) {
            char hex[3] = {src[i + 1], src[i + 2], '\0'};
            dst[o++] = (char)strtol(hex, NULL, 16);
            i += 2;
        } else {
            dst[o++] = src[i];
        }
    }
    dst[o] = '\0';
    return o;
}

/* GET /users/<id>?fields=a,b,c -- a small JSON answer. */
static int handle_user(rp_arena *a, const struct request *rq, struct response *rs)
{
    long id = strtol(rq->path + 7, NULL, 10);
    const char *fields = rq->query && strncmp(rq->query, "fields=", 7) == 0
                             ? rq->query + 7 : "name";
    char *body = arena_printf(a, "{\"id\":%ld,\"fields\":\"%s\"}", id, fields);
    if (!body)
        return -ENOMEM;
    *rs = (struct response){200, "OK", body};
    return 0;
}

/* POST /form -- decode a urlencoded body and report what it held.
 *
 * The decoded copy of the body and each decoded field are scratch: the
 * response only needs a few numbers and the longest value. Two nested
 * scopes give the scratch back as soon as it is dead:
 *
 *   outer mark  -> the decoded body copy (as large as the body)
 *     inner mark -> one decoded field, rewound after each field
 *   rewind outer -> everything the decoding took is free again
 *
 * Anything that must outlive a scope (here: `longest`, the response) is
 * allocated before the scope's mark -- or copied out before the rewind. */
static int handle_form(rp_arena *a, const struct request *rq, struct response *rs)
{
    const char *ct = header(rq, "Content-Type");
    if (!ct || strcmp(ct, "application/x-www-form-urlencoded") != 0) {
        *rs = (struct response){415, "Unsupported Media Type", "form expected"};
        return 0;
    }
    char *longest = rp_arena_alloc(a, rq->body_len + 1, 1); /* outlives the scopes */
    if (!longest)
        return -ENOMEM;
    longest[0] = '\0';
    size_t nfields = 0, decoded_bytes = 0;

    rp_arena_pos outer = rp_arena_mark(a);
    char *copy = arena_strndup(a, rq->body, rq->body_len);
    if (!copy) {
        rp_arena_rewind(a, outer);
        return -ENOMEM;
    }
    for (char *save = NULL, *kv = strtok_r(copy, "&", &save); kv;
         kv = strtok_r(NULL, "&", &save)) {
        rp_arena_pos inner = rp_arena_mark(a);
        size_t n = strlen(kv);
        char *field = rp_arena_alloc(a, n + 1, 1);
        if (!field) {
            rp_arena_rewind(a, outer); /* the outer rewind drops inner too */
            return -ENOMEM;
        }
        size_t m = url_decode(field, kv, n);
        const char *value = strchr(field, '=');
        if (value && strlen(value + 1) > strlen(longest))
            strcpy(longest, value + 1); /* copy out before the rewind */
        nfields++;
        decoded_bytes += m;
        rp_arena_rewind(a, inner);
    }
    rp_arena_rewind(a, outer);

    char *body = arena_printf(a, "%zu fields, %zu bytes decoded, longest value \"%s\"",
                              nfields, decoded_bytes, longest);
    if (!body)
        return -ENOMEM;
    *rs = (struct response){200, "OK", body};
    return 0;
}

/* POST /upload -- keep a private copy of the body (a real handler would
 * decompress, scan or transform it). The arena's budget, not this code,
 * bounds how much memory the request can take: the caller maps ENOMEM from
 * an upload arena to 413. */
static int handle_upload(rp_arena *a, const struct request *rq, struct response *rs)
{
    char *copy = rp_arena_alloc(a, rq->body_len, 16);
    if (!copy)
        return -ENOMEM; /* the caller turns this into 413 for upload arenas */
    memcpy(copy, rq->body, rq->body_len);
    char *body = arena_printf(a, "stored %zu bytes", rq->body_len);
    if (!body)
        return -ENOMEM;
    *rs = (struct response){200, "OK", body};
    return 0;
}

static int route(rp_arena *a, const struct request *rq, struct response *rs)
{
    if (strcmp(rq->method, "GET") == 0 && strcmp(rq->path, "/hello") == 0) {
        *rs = (struct response){200, "OK", "hello"};
        return 0;
    }
    if (strcmp(rq->method, "GET") == 0 && strncmp(rq->path, "/users/", 7) == 0)
        return handle_user(a, rq, rs);
    if (strcmp(rq->method, "POST") == 0 && strcmp(rq->path, "/form") == 0)
        return handle_form(a, rq, rs);
    if (strcmp(rq->method, "POST") == 0 && strcmp(rq->path, "/upload") == 0)
        return handle_upload(a, rq, rs);
    *rs = (struct response){404, "Not Found", "no such resource"};
    return 0;
}

/* ------------------------------------------------------------------------ */
/* The per-request life cycle.                                               */

/* Handle one raw request in arena `a` and return the status. The response
 * text is formatted into the arena too, as a server would before writing it
 * to the socket. Nothing here frees anything: the caller resets (or
 * destroys) the arena when the request is over.
 *
 * `enomem` is the answer when the arena refuses memory: 503 when the pool
 * is out of memory (the server is overloaded; try again later), 413 when
 * the request's own budget is exhausted (this request is too large). errno
 * is ENOMEM either way; the caller knows which limit applies. */
static int serve(rp_arena *a, const char *raw, size_t len, int enomem, int verbose)
{
    struct request rq;
    struct response rs = {500, "Internal Server Error", "out of memory"};
    int rc = parse_request(a, raw, len, &rq);
    if (rc == -EINVAL)
        rs = (struct response){400, "Bad Request", "malformed request"};
    else if (rc == 0)
        rc = route(a, &rq, &rs);
    if (rc == -ENOMEM)
        rs = enomem == 413 ? (struct response){413, "Payload Too Large", "over budget"}
                           : (struct response){503, "Service Unavailable", "out of memory"};
    char *wire = arena_printf(a, "HTTP/1.1 %d %s\r\nContent-Length: %zu\r\n\r\n%s",
                              rs.status, rs.reason, strlen(rs.body), rs.body);
    if (verbose)
        printf("  %-48.*s -> %d %s (%zu bytes on the wire): %s\n", (int)strcspn(raw, "\r"),
               raw, rs.status, rs.reason, wire ? strlen(wire) : 0, rs.body);
    return rs.status;
}

int main(void)
{
    /* A pool with a physical budget; RPOOL_CONF can override any field
     * (e.g. RPOOL_CONF=physical_budget=32M ./request_arena). */
    rp_config cfg;
    rp_config_init(&cfg);               /* the "server" preset */
    cfg.reserve_bytes = (size_t)1 << 30; /* address space: plenty for a demo */
    cfg.heap_bytes = 0;                  /* no fallback heap needed here */
    cfg.physical_budget = 64 * MiB;
    cfg.purge_thread = 0;                /* see rp_check at the end */
    /* The preset keeps released regions resident for purge_delay_ms (1 s)
     * before giving their pages back. That matters for per-request explicit
     * arenas: destroying one releases its chunk, and with purge_delay_ms = 0
     * every request would pay an madvise() and fresh page faults. */
    char err[256];
    if (rp_config_from_env(&cfg, "RPOOL_CONF", err, sizeof err) != 0) {
        fprintf(stderr, "request_arena: %s\n", err);
        return 2;
    }
    rp_pool *pool = rp_pool_create(&cfg);
    if (!pool) {
        perror("request_arena: rp_pool_create");
        return 1;
    }

    /* The requests a client might send. The last one is an upload larger
     * than the per-upload memory budget. */
    static const char *const fixed[] = {
        "GET /hello HTTP/1.1\r\nHost: example\r\n\r\n",
        "GET /users/42?fields=name,email,created HTTP/1.1\r\nHost: example\r\n"
        "Accept: application/json\r\nCookie: session=abc; theme=dark\r\n\r\n",
        "POST /form HTTP/1.1\r\nHost: example\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 57\r\n\r\n"
        "name=Ada+Lovelace&lang=C%2B%2B&note=hello%2C+world%21&x=1",
        "POST /upload HTTP/1.1\r\nHost: example\r\nContent-Length: 5\r\n\r\nhello",
        "GET /missing HTTP/1.1\r\nHost: example\r\n\r\n",
        "GARBAGE\r\n\r\n",
    };
    enum { NFIXED = sizeof fixed / sizeof fixed[0] };
    /* The oversized upload is built at run time, in plain malloc memory:
     * it stands for bytes sitting in a connection buffer. */
    static const char upload_head[] = "POST /upload HTTP/1.1\r\nHost: example\r\n\r\n";
    size_t big_len = sizeof upload_head - 1 + UPLOAD_BODY;
    char *big = malloc(big_len);
    if (!big) {
        perror("request_arena: malloc");
        rp_pool_destroy(pool);
        return 1;
    }
    memcpy(big, upload_head, sizeof upload_head - 1);
    memset(big + sizeof upload_head - 1, 'x', UPLOAD_BODY);

    /* The worker's arena: created on first use, owned by this thread. */
    rp_arena *a = rp_arena_thread(pool);
    if (!a) {
        perror("request_arena: rp_arena_thread");
        free(big);
        rp_pool_destroy(pool);
        return 1;
    }

    unsigned long handled = 0, statuses[6] = {0};
    size_t virtual_warm = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int verbose = round == 0;
        if (verbose)
            printf("first round (every request is handled %d times):\n", ROUNDS);
        for (int i = 0; i <= NFIXED; i++) {
            const char *raw = i < NFIXED ? fixed[i] : big;
            size_t len = i < NFIXED ? strlen(fixed[i]) : big_len;
            int status;
            if (strncmp(raw, "POST /upload ", 13) == 0) {
                /* Uploads get an arena of their own with a byte budget. It
                 * could travel with the request to another thread (see the
                 * hand-off rule in rpool.h); here it just dies with it. */
                rp_arena *up = rp_arena_create(pool, UPLOAD_BUDGET);
                if (!up) {
                    perror("request_arena: rp_arena_create");
                    free(big);
                    rp_pool_destroy(pool);
                    return 1;
                }
                status = serve(up, raw, len, 413, verbose);
                if (verbose && status == 413)
                    printf("  %-48s    (the upload arena's %zu KiB budget refused the copy)\n",
                           "", UPLOAD_BUDGET / KiB);
                rp_arena_destroy(up);
            } else {
                status = serve(a, raw, len, 503, verbose);
                /* The request is over: free all of it in one step. */
                rp_arena_reset(a);
            }
            handled++;
            statuses[status / 100]++;
        }
        if (round == 0) {
            /* Warm: every chunk size the requests need has been used once. */
            rp_stats st;
            rp_stats_get(pool, &st);
            virtual_warm = st.virtual_bytes;
        }
    }

    rp_stats st;
    rp_stats_get(pool, &st);
    printf("%lu requests: %lu 2xx, %lu 4xx, %lu 5xx\n", handled, statuses[2], statuses[4],
           statuses[5]);
    printf("pool committed after the first round %zu bytes, after the last %zu bytes (%s)\n",
           virtual_warm, st.virtual_bytes,
           st.virtual_bytes == virtual_warm ? "flat" : "GREW");
    printf("pool physical %zu bytes (peak %zu) of budget %zu; arena bytes in use now %zu;"
           " refused allocations %llu (the upload budget)\n",
           st.physical_bytes, st.physical_peak, st.physical_budget, st.arena_bytes,
           (unsigned long long)st.fail_other);

    /* Return the thread arena now rather than at thread exit, then check the
     * pool's invariants: a clean program leaves nothing behind. rp_check is
     * exact only on a quiescent pool, and rpool's background purger thread
     * would be a concurrent user; that is why purge_thread is 0 here (expired
     * regions are then purged from inside rpool calls). */
    rp_thread_detach(pool);
    int check = rp_check(pool);
    free(big);
    rp_pool_destroy(pool);
    if (check != 0 || st.virtual_bytes != virtual_warm) {
        fprintf(stderr, "request_arena: %s\n", check ? "rp_check failed" : "memory grew");
        return 1;
    }
    return 0;
}
