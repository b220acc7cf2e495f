/* http.c - the daemon's HTTP server: libmicrohttpd, one thread per connection.
 *
 * A request is matched against one static route table; no path is 404, a
 * known path with another method 405 (with Allow). Authentication, the body
 * cap and the route lookup happen on MHD's first call for a request, so a bad
 * request is answered before its body is read. The body is accumulated in the
 * per-request state (req_cls) up to HTTP_BODY_MAX, then the route's handler
 * runs once; the state is freed in the completion callback.
 *
 * Thread per connection because an event stream blocks its connection's
 * thread while it waits for the database (see h_events.c); the connection
 * limit bounds the threads. There is no per-address limit below it: a
 * reverse proxy, or a dashboard and scripts on one machine, all arrive from
 * one address, and MHD counts a connection the client has closed until its
 * thread has exited, so a busy client of a loaded daemon would be refused
 * (the connection reset) well below the cap it is meant to keep to. */
#include "http.h"

#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "log.h"
#include "util.h"

#define HTTP_MAX_ROOTS 16
#define HTTP_TIMEOUT_SECONDS 30
#define HTTP_CONNECTION_LIMIT 256
#define HTTP_DEFAULT_STREAMS 16
#define HTTP_DISCARD_MAX (64ull << 20)

struct HttpServer {
    HttpConfig cfg;
    struct MHD_Daemon *daemon;
    char data_dir[PATH_MAX];
    char *roots[HTTP_MAX_ROOTS + 1];
    atomic_int streams;
    atomic_int stopping;
};

typedef struct {
    const char *method;
    const char *pattern; /* literal segments, "{id}" (one segment), "{path*}" (the rest, outside /api/) */
    enum MHD_Result (*handler)(HttpRequest *r);
} HttpRoute;

static const HttpRoute routes[] = {
    {"GET", "/api/v1/health", h_health},
    {"GET", "/api/v1/version", h_version},
    {"GET", "/api/v1/jobs", h_jobs_list},
    {"POST", "/api/v1/jobs", h_jobs_create},
    {"GET", "/api/v1/jobs/{id}", h_job_get},
    {"DELETE", "/api/v1/jobs/{id}", h_job_delete},
    {"POST", "/api/v1/jobs/{id}/cancel", h_job_cancel},
    {"POST", "/api/v1/jobs/{id}/pause", h_job_pause},
    {"POST", "/api/v1/jobs/{id}/resume", h_job_resume},
    {"GET", "/api/v1/jobs/{id}/metrics", h_job_metrics},
    {"GET", "/api/v1/jobs/{id}/checkpoints", h_job_checkpoints},
    {"GET", "/api/v1/jobs/{id}/weights", h_job_weights},
    {"GET", "/api/v1/jobs/{id}/events", h_job_events},
    {"GET", "/{path*}", h_static},
};
#define NUM_ROUTES (sizeof routes / sizeof routes[0])

/* req_cls: the handlers' view first, so an HttpRequest * is a RequestState *. */
typedef struct {
    HttpRequest request;
    const HttpRoute *route;
    size_t body_capacity;
    unsigned long long received;
    int body_too_large;
    int replied;
} RequestState;

/* ---- routing ---- */

static int is_id_char(char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
}

/* 1 if path matches pattern, filling id and rest. */
static int route_match(const char *pattern, const char *path, char id[DB_ID_LEN], const char **rest) {
    id[0] = 0;
    *rest = NULL;
    const char *p = pattern, *u = path;
    while (*p == '/' && *u == '/') {
        p++, u++;
        size_t plen = strcspn(p, "/"), ulen = strcspn(u, "/");
        if (plen == 7 && strncmp(p, "{path*}", 7) == 0) {
            /* the API's namespace is never a file */
            if (strncmp(path, "/api/", 5) == 0 || strcmp(path, "/api") == 0) return 0;
            *rest = u;
            return 1;
        }
        if (plen == 4 && strncmp(p, "{id}", 4) == 0) {
            if (ulen == 0 || ulen >= DB_ID_LEN) return 0;
            for (size_t i = 0; i < ulen; i++)
                if (!is_id_char(u[i])) return 0;
            memcpy(id, u, ulen);
            id[ulen] = 0;
        } else if (plen != ulen || strncmp(p, u, plen) != 0) {
            return 0;
        }
        p += plen, u += ulen;
    }
    return *p == 0 && *u == 0;
}

/* ---- replies ---- */

enum MHD_Result http_reply(HttpRequest *r, unsigned status, struct MHD_Response *response) {
    if (!response) return MHD_NO;
    ((RequestState *)r)->replied = 1;
    enum MHD_Result rc = MHD_queue_response(r->connection, status, response);
    MHD_destroy_response(response);
    return rc;
}

struct MHD_Response *http_json_response(json_t *body) {
    /* 15 digits: timestamps to 10 us, and 0.003 prints as 0.003 */
    char *text = body ? json_dumps(body, JSON_COMPACT | JSON_REAL_PRECISION(15)) : NULL;
    json_decref(body);
    if (!text) return NULL;
    struct MHD_Response *response = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    if (!response) {
        free(text);
        return NULL;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-store");
    return response;
}

enum MHD_Result http_reply_json(HttpRequest *r, unsigned status, json_t *body) {
    return http_reply(r, status, http_json_response(body));
}

static json_t *error_body(const char *code, char *message) {
    json_t *text = json_string(message);
    if (!text) { /* not UTF-8 (a query value, say): keep the ASCII */
        for (char *c = message; *c; c++)
            if ((unsigned char)*c >= 0x80) *c = '?';
        text = json_string(message);
    }
    return json_pack("{s:{s:s,s:o}}", "error", "code", code, "message", text);
}

enum MHD_Result http_reply_error(HttpRequest *r, unsigned status, const char *code, const char *fmt, ...) {
    char message[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof message, fmt, ap);
    va_end(ap);
    if (status >= 500 && status != MHD_HTTP_SERVICE_UNAVAILABLE) log_msg(LOG_ERROR, "%s %s: %s", r->method, r->url, message);
    return http_reply_json(r, status, error_body(code, message));
}

enum MHD_Result http_reply_db_error(HttpRequest *r, int rc, const char *what, const char *err) {
    if (rc == DB_NOT_FOUND) return http_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "%s: not found", what);
    if (rc == DB_CONFLICT) return http_reply_error(r, MHD_HTTP_CONFLICT, "conflict", "%s: %s", what, err);
    return http_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", "%s: %s", what, err);
}

/* ---- query strings ---- */

const char *http_query(HttpRequest *r, const char *key) {
    return MHD_lookup_connection_value(r->connection, MHD_GET_ARGUMENT_KIND, key);
}

int http_query_long(HttpRequest *r, const char *key, long lo, long hi, long fallback, long *out,
                    enum MHD_Result *reply) {
    const char *text = http_query(r, key);
    if (!text) {
        *out = fallback;
        return 0;
    }
    char *end;
    errno = 0;
    long x = strtol(text, &end, 10);
    if (!*text || *end || errno || x < lo || x > hi) {
        *reply = http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "%s: must be an integer from %ld to %ld",
                                  key, lo, hi);
        return -1;
    }
    *out = x;
    return 0;
}

/* ---- jobs as JSON ---- */

static json_t *string_or_null(const char *s) {
    return s[0] ? json_string(s) : json_null();
}

json_t *http_job_json(const DbJob *job) {
    json_t *o = json_object();
    json_object_set_new(o, "id", json_string(job->id));
    json_object_set_new(o, "kind", json_string(job->kind));
    json_object_set_new(o, "state", json_string(job->state));
    json_t *spec = job->spec_json ? json_loads(job->spec_json, 0, NULL) : NULL;
    json_object_set_new(o, "spec", spec ? spec : json_null());
    json_object_set_new(o, "step", json_integer(job->step));
    json_object_set_new(o, "total_steps", json_integer(job->total_steps));
    json_object_set_new(o, "checkpoint_step", job->checkpoint_step >= 0 ? json_integer(job->checkpoint_step) : json_null());
    json_object_set_new(o, "error", string_or_null(job->error));
    json_object_set_new(o, "request", string_or_null(job->request));
    json_object_set_new(o, "created_at", json_real(job->created_at));
    json_object_set_new(o, "updated_at", json_real(job->updated_at));
    return o;
}

/* ---- server state the handlers share ---- */

const char *http_data_dir(const HttpServer *s) { return s->data_dir; }
const char *const *http_path_roots(const HttpServer *s) { return (const char *const *)s->roots; }
int http_stopping(const HttpServer *s) { return atomic_load(&((HttpServer *)s)->stopping); }

int http_stream_acquire(HttpServer *s) {
    int max = s->cfg.max_streams > 0 ? s->cfg.max_streams : HTTP_DEFAULT_STREAMS;
    if (atomic_fetch_add(&s->streams, 1) >= max) {
        atomic_fetch_sub(&s->streams, 1);
        return -1;
    }
    return 0;
}

void http_stream_release(HttpServer *s) { atomic_fetch_sub(&s->streams, 1); }

/* ---- authentication ---- */

/* Constant time in the token's content; only its length can leak. */
static int token_equal(const char *given, const char *token) {
    size_t n = strlen(token), m = strlen(given);
    unsigned diff = n != m;
    for (size_t i = 0; i < n; i++) diff |= (unsigned char)token[i] ^ (unsigned char)(i < m ? given[i] : 0);
    return n > 0 && diff == 0;
}

/* Authorization: Bearer <token>; a GET may give ?access_token= instead, for
 * a browser's EventSource, which cannot set headers. */
static int is_authorized(HttpServer *s, struct MHD_Connection *c, int is_read) {
    if (!s->cfg.token) return 0;
    const char *given = NULL;
    const char *header = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (header && strncasecmp(header, "Bearer ", 7) == 0) {
        given = header + 7;
        while (*given == ' ') given++;
    } else if (!header && is_read) {
        given = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "access_token");
    }
    return given && token_equal(given, s->cfg.token);
}

/* ---- the MHD callbacks ---- */

/* First call of a request: route, authenticate, check the declared body size.
 * Returns MHD_YES without a reply when the request goes on to its handler. */
static enum MHD_Result request_begin(HttpServer *s, RequestState *st) {
    HttpRequest *r = &st->request;
    int is_read = strcmp(r->method, "GET") == 0 || strcmp(r->method, "HEAD") == 0;
    const char *method = strcmp(r->method, "HEAD") == 0 ? "GET" : r->method;
    char allow[64] = "";
    int path_known = 0;
    for (size_t i = 0; i < NUM_ROUTES && !st->route; i++) {
        char id[DB_ID_LEN];
        const char *rest;
        if (!route_match(routes[i].pattern, r->url, id, &rest)) continue;
        path_known = 1;
        if (strcmp(routes[i].method, method) == 0) {
            st->route = &routes[i];
            memcpy(r->id, id, sizeof r->id);
            r->rest = rest;
        } else if (!strstr(allow, routes[i].method)) {
            size_t n = strlen(allow);
            snprintf(allow + n, sizeof allow - n, "%s%s", n ? ", " : "", routes[i].method);
            if (strcmp(routes[i].method, "GET") == 0) strncat(allow, ", HEAD", sizeof allow - strlen(allow) - 1);
        }
    }
    if (!path_known) return http_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "no such path: %s", r->url);
    if (!st->route) {
        char message[256];
        snprintf(message, sizeof message, "%s is not allowed on %s (allowed: %s)", r->method, r->url, allow);
        struct MHD_Response *response = http_json_response(error_body("method_not_allowed", message));
        if (response) MHD_add_response_header(response, MHD_HTTP_HEADER_ALLOW, allow);
        return http_reply(r, MHD_HTTP_METHOD_NOT_ALLOWED, response);
    }
    /* the dashboard's files are public; the API's reads need the token only off loopback */
    int needs_token = !is_read || (s->cfg.auth_reads && st->route->handler != h_static);
    if (needs_token && !is_authorized(s, r->connection, is_read)) {
        char message[] = "this endpoint needs the header Authorization: Bearer <token> (the token file is in the "
                         "data directory)";
        struct MHD_Response *response = http_json_response(error_body("unauthorized", message));
        if (response) MHD_add_response_header(response, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
        return http_reply(r, MHD_HTTP_UNAUTHORIZED, response);
    }
    const char *length = MHD_lookup_connection_value(r->connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
    if (length && strtoull(length, NULL, 10) > HTTP_BODY_MAX)
        return http_reply_error(r, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                                "request body of %s bytes is larger than the %d-byte limit", length, HTTP_BODY_MAX);
    return MHD_YES;
}

static void body_append(RequestState *st, const char *data, size_t size) {
    HttpRequest *r = &st->request;
    if (st->body_too_large) return;
    if (r->body_size + size > HTTP_BODY_MAX) { /* stop accumulating; 413 once the upload ends */
        st->body_too_large = 1;
        free(r->body);
        r->body = NULL;
        r->body_size = 0;
        return;
    }
    if (r->body_size + size + 1 > st->body_capacity) {
        size_t capacity = st->body_capacity ? st->body_capacity : 4096;
        while (capacity < r->body_size + size + 1) capacity *= 2;
        char *body = realloc(r->body, capacity);
        if (!body) {
            st->body_too_large = 1;
            free(r->body);
            r->body = NULL;
            r->body_size = 0;
            return;
        }
        r->body = body;
        st->body_capacity = capacity;
    }
    memcpy(r->body + r->body_size, data, size);
    r->body_size += size;
    r->body[r->body_size] = 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *connection, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_data_size,
                                  void **req_cls) {
    (void)version;
    HttpServer *s = cls;
    RequestState *st = *req_cls;
    if (!st) {
        st = xcalloc(1, sizeof *st);
        *req_cls = st;
        st->request.server = s;
        st->request.cfg = &s->cfg;
        st->request.connection = connection;
        st->request.method = method;
        st->request.url = url;
        return request_begin(s, st);
    }
    if (*upload_data_size) {
        /* MHD 0.9 cannot queue a reply in the middle of an upload: an
         * oversized body without Content-Length is read and dropped until it
         * ends, then answered 413; past HTTP_DISCARD_MAX the connection is cut. */
        st->received += *upload_data_size;
        if (!st->replied) body_append(st, upload_data, *upload_data_size);
        *upload_data_size = 0;
        return st->received > HTTP_DISCARD_MAX ? MHD_NO : MHD_YES;
    }
    if (st->replied) return MHD_YES;
    if (st->body_too_large)
        return http_reply_error(&st->request, MHD_HTTP_CONTENT_TOO_LARGE, "body_too_large",
                                "request body is larger than the %d-byte limit", HTTP_BODY_MAX);
    return st->route->handler(&st->request);
}

static void on_completed(void *cls, struct MHD_Connection *connection, void **req_cls,
                         enum MHD_RequestTerminationCode toe) {
    (void)cls, (void)connection, (void)toe;
    RequestState *st = *req_cls;
    if (!st) return;
    free(st->request.body);
    free(st);
    *req_cls = NULL;
}

/* ---- start and stop ---- */

/* "host:port" or "[v6]:port" -> a socket address. */
static int parse_listen(const char *listen, struct sockaddr_storage *addr, int *loopback, char *err) {
    char host[256];
    const char *port_text;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':' || (size_t)(close - listen - 1) >= sizeof host)
            return set_error(err, "--listen %s: expected [address]:port", listen);
        memcpy(host, listen + 1, (size_t)(close - listen - 1));
        host[close - listen - 1] = 0;
        port_text = close + 2;
    } else {
        const char *colon = strrchr(listen, ':');
        if (!colon || (size_t)(colon - listen) >= sizeof host)
            return set_error(err, "--listen %s: expected host:port", listen);
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = 0;
        port_text = colon + 1;
    }
    char *end;
    long port = strtol(port_text, &end, 10);
    if (!*port_text || *end || port < 0 || port > 65535)
        return set_error(err, "--listen %s: the port must be from 0 to 65535", listen);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *found;
    int rc = getaddrinfo(host[0] ? host : NULL, NULL, &hints, &found);
    if (rc) return set_error(err, "--listen %s: %s", listen, gai_strerror(rc));
    memset(addr, 0, sizeof *addr);
    memcpy(addr, found->ai_addr, found->ai_addrlen);
    freeaddrinfo(found);
    if (addr->ss_family == AF_INET) {
        struct sockaddr_in *in = (struct sockaddr_in *)addr;
        in->sin_port = htons((uint16_t)port);
        *loopback = (ntohl(in->sin_addr.s_addr) >> 24) == 127;
    } else {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)addr;
        in6->sin6_port = htons((uint16_t)port);
        *loopback = IN6_IS_ADDR_LOOPBACK(&in6->sin6_addr) ||
                    (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr) && in6->sin6_addr.s6_addr[12] == 127);
    }
    return 0;
}

static void server_free(HttpServer *s) {
    for (int i = 0; s->roots[i]; i++) free(s->roots[i]);
    free(s);
}

int http_start(HttpServer **out, const HttpConfig *cfg, const char *listen, int *port, char *err) {
    *out = NULL;
    if (!cfg->db || !cfg->data_dir || !cfg->token || !cfg->token[0])
        return set_error(err, "http: a database, a data directory and a token are required");
    HttpServer *s = xcalloc(1, sizeof *s);
    s->cfg = *cfg;
    if (!realpath(cfg->data_dir, s->data_dir)) {
        set_error(err, "data directory %s: %s", cfg->data_dir, strerror(errno));
        server_free(s);
        return -1;
    }
    /* roots that do not exist are skipped: nothing can resolve inside them */
    static const char *const default_roots[] = {NULL, "/usr/share/datasets", NULL};
    const char *const *roots = cfg->path_roots;
    int from_default = !roots;
    if (from_default) roots = default_roots;
    for (int i = 0, n = 0; (from_default && i == 0) || roots[i]; i++) {
        const char *root = from_default && i == 0 ? s->data_dir : roots[i];
        char resolved[PATH_MAX];
        if (n == HTTP_MAX_ROOTS) {
            set_error(err, "http: more than %d path roots", HTTP_MAX_ROOTS);
            server_free(s);
            return -1;
        }
        if (realpath(root, resolved)) s->roots[n++] = strdup(resolved);
    }

    struct sockaddr_storage addr;
    int loopback = 0;
    if (parse_listen(listen, &addr, &loopback, err)) {
        server_free(s);
        return -1;
    }
    if (!loopback) s->cfg.auth_reads = 1;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_POLL |
                     MHD_USE_ERROR_LOG | (addr.ss_family == AF_INET6 ? MHD_USE_IPv6 : 0);
    uint16_t wanted = ntohs(addr.ss_family == AF_INET ? ((struct sockaddr_in *)&addr)->sin_port
                                                      : ((struct sockaddr_in6 *)&addr)->sin6_port);
    s->daemon = MHD_start_daemon(flags, wanted, NULL, NULL, on_request, s,
                                 MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
                                 MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
                                 MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)HTTP_TIMEOUT_SECONDS,
                                 MHD_OPTION_CONNECTION_LIMIT, (unsigned)HTTP_CONNECTION_LIMIT,
                                 MHD_OPTION_END);
    if (!s->daemon) {
        set_error(err, "cannot listen on %s (in use, or not an address of this machine?)", listen);
        server_free(s);
        return -1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(s->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (port) *port = info ? info->port : wanted;
    *out = s;
    return 0;
}

void http_stop(HttpServer *s) {
    if (!s) return;
    atomic_store(&s->stopping, 1); /* event streams notice within one poll interval */
    MHD_stop_daemon(s->daemon);
    server_free(s);
}
