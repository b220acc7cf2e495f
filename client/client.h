/* client.h - what the files of the `distill` CLI share: the connection to the
 * daemon (api.c), the live view of a job (watch.c), and the exit codes.
 *
 * Every request goes through client_request(), which prints the reason itself
 * when the daemon cannot be reached; client_call() also turns an HTTP error
 * into the API's message (or a word about the token on 401). Both return 0 or
 * the exit code the command should end with, so a command is a short run of
 * `if ((rc = ...)) return rc;`. */
#ifndef DISTILL_CLIENT_H
#define DISTILL_CLIENT_H

#include <curl/curl.h>
#include <jansson.h>
#include <limits.h>
#include <stddef.h>

/* exit codes; 3-5 say how a watched job ended */
enum {
    EXIT_OK = 0,
    EXIT_ERROR = 1,    /* the daemon refused, is unreachable, or a local file could not be used */
    EXIT_USAGE = 2,    /* unknown command or option, missing argument */
    EXIT_FAILED = 3,   /* the job failed */
    EXIT_CANCELED = 4, /* the job was canceled */
    EXIT_PAUSED = 5,   /* the job is paused */
    EXIT_INTERRUPTED = 130,
};

typedef struct {
    char *data;
    size_t size, capacity;
} Buffer;

void buffer_append(Buffer *b, const void *data, size_t size); /* keeps data NUL-terminated */
void buffer_free(Buffer *b);

typedef struct {
    char url[1024];              /* the daemon, no trailing '/' */
    char token[256];             /* "" when none was found */
    char token_origin[PATH_MAX + 64]; /* where the token came from, or where we looked */
    int json;                    /* --json: print the API's JSON */
    CURL *curl;                  /* for requests; an event stream has its own handle */
    char errbuf[CURL_ERROR_SIZE];
} Client;

/* flag values may be NULL; the environment and defaults fill in the rest */
int client_init(Client *c, const char *url, const char *token, const char *data_dir, int json);
void client_free(Client *c);

/* Options every handle gets: token, timeouts, no proxy for loopback.
 * `headers` is a list the caller may extend and must free after the transfer. */
void client_configure(Client *c, CURL *handle, char *errbuf, struct curl_slist **headers);

/* method path (after /api/v1) with an optional body; any HTTP status is 0 and
 * fills status and reply. A transport error is printed: EXIT_ERROR. */
int client_request(Client *c, const char *method, const char *path, const char *body, size_t body_size, long *status,
                   Buffer *reply);

/* client_request + a 2xx JSON reply parsed into *out (may be NULL) and its text
 * in *raw (may be NULL; free it). Anything else is printed, prefixed with
 * `context` when given: EXIT_ERROR. */
int client_call(Client *c, const char *method, const char *path, const char *body, size_t body_size,
                const char *context, json_t **out, Buffer *raw);

void client_report_transport(Client *c, CURL *handle, CURLcode rc, const char *errbuf);
void client_report_status(Client *c, long status, const char *body, size_t size, const char *context);

/* 0 if id can be a job id; else prints why and returns EXIT_ERROR */
int client_check_id(const char *id);

double monotonic_seconds(void);
void format_duration(double seconds, char *out, size_t size);
void format_time(double epoch_seconds, char *out, size_t size);
int state_exit_code(const char *state); /* -1 for a job that has not ended */
const char *json_text(json_t *value, const char *fallback); /* a JSON string's text, or fallback */

/* `distill watch`: follows a job until it ends; returns the exit code */
int watch_job(Client *c, const char *id);

#endif
