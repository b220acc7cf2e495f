/* http.h - distilld's HTTP API (DESIGN.md section 6) on libmicrohttpd.
 *
 * http.c owns the daemon, the route table, authentication, request bodies and
 * the one error shape {"error":{"code","message"}}; server/h_*.c hold one
 * resource each. Handlers run on MHD's connection threads and stay short:
 * they read and write the Db, never train. */
#ifndef DISTILLD_HTTP_H
#define DISTILLD_HTTP_H

#include <jansson.h>
#include <microhttpd.h>

#include "db.h"

#define HTTP_BODY_MAX (1 << 20) /* request bodies above this get 413 */

typedef struct {
    Db *db;
    const char *data_dir;          /* runs live in data_dir/runs/<job id>/ */
    const char *token;             /* bearer token of POST and DELETE (and of reads when auth_reads) */
    int auth_reads;                /* every API endpoint needs the token; forced on off loopback */
    const char *const *path_roots; /* NULL-terminated roots for dataset and teacher paths;
                                      NULL = data_dir and /usr/share/datasets */
    const char *web_dir;           /* dashboard files served at / (NULL or missing: a built-in page) */
    int max_streams;               /* concurrent event streams, 503 beyond; 0 = 16 */
} HttpConfig;

typedef struct HttpServer HttpServer;

/* listen: "host:port" ("127.0.0.1:8080", "[::1]:0"); port 0 picks a free one.
 * The port bound goes to *port. cfg and its strings must outlive the server. */
int http_start(HttpServer **out, const HttpConfig *cfg, const char *listen, int *port, char *err);
/* Ends the event streams, then waits for every connection thread. */
void http_stop(HttpServer *s);

/* ---- for the handler files (server/h_*.c) ---- */

typedef struct {
    HttpServer *server;
    const HttpConfig *cfg;
    struct MHD_Connection *connection;
    const char *method, *url;
    char id[DB_ID_LEN];     /* the route's {id}, "" if it has none */
    const char *rest;       /* the route's {path*} (no leading '/'), NULL if none */
    char *body;             /* NUL-terminated request body, NULL if none */
    size_t body_size;
} HttpRequest;

/* Each queues the response and returns what the access handler must return. */
enum MHD_Result http_reply_json(HttpRequest *r, unsigned status, json_t *body); /* steals body */
enum MHD_Result http_reply_error(HttpRequest *r, unsigned status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
enum MHD_Result http_reply_db_error(HttpRequest *r, int rc, const char *what, const char *err);
enum MHD_Result http_reply(HttpRequest *r, unsigned status, struct MHD_Response *response); /* destroys it */
struct MHD_Response *http_json_response(json_t *body); /* steals body; NULL when out of memory */

const char *http_query(HttpRequest *r, const char *key); /* a query-string value, NULL if absent */
/* An integer query value in [lo, hi]; `fallback` when absent. -1 (after a 400 reply) when bad. */
int http_query_long(HttpRequest *r, const char *key, long lo, long hi, long fallback, long *out,
                    enum MHD_Result *reply);

json_t *http_job_json(const DbJob *job);
const char *http_data_dir(const HttpServer *s);         /* realpath of cfg->data_dir */
const char *const *http_path_roots(const HttpServer *s); /* realpaths, NULL-terminated */
int http_stream_acquire(HttpServer *s);                  /* 0, or -1 when max_streams are open */
void http_stream_release(HttpServer *s);
int http_stopping(const HttpServer *s);

/* the handlers of the route table */
enum MHD_Result h_health(HttpRequest *r);
enum MHD_Result h_version(HttpRequest *r);
enum MHD_Result h_jobs_create(HttpRequest *r);
enum MHD_Result h_jobs_list(HttpRequest *r);
enum MHD_Result h_job_get(HttpRequest *r);
enum MHD_Result h_job_delete(HttpRequest *r);
enum MHD_Result h_job_cancel(HttpRequest *r);
enum MHD_Result h_job_pause(HttpRequest *r);
enum MHD_Result h_job_resume(HttpRequest *r);
enum MHD_Result h_job_metrics(HttpRequest *r);
enum MHD_Result h_job_checkpoints(HttpRequest *r);
enum MHD_Result h_job_weights(HttpRequest *r);
enum MHD_Result h_job_events(HttpRequest *r);
enum MHD_Result h_static(HttpRequest *r);

#endif
