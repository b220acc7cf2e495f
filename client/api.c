/* api.c - the `distill` CLI's side of the HTTP API: the daemon's address and
 * token, one libcurl handle for plain requests, and the messages for what can
 * go wrong (daemon down, token refused, the API's own errors).
 *
 * The token is sent with every request when one is known, so a daemon that
 * wants it for reads too (off loopback) is served the same way. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "client.h"

#define DEFAULT_URL "http://127.0.0.1:8080"
#define DEFAULT_DATA_DIR "./var"
#define CONNECT_TIMEOUT_SECONDS 10L
#define REQUEST_TIMEOUT_SECONDS 120L

void buffer_append(Buffer *b, const void *data, size_t size) {
    if (b->size + size + 1 > b->capacity) {
        size_t capacity = b->capacity ? b->capacity : 4096;
        while (capacity < b->size + size + 1) capacity *= 2;
        char *grown = realloc(b->data, capacity);
        if (!grown) {
            fprintf(stderr, "distill: out of memory\n");
            exit(EXIT_ERROR);
        }
        b->data = grown;
        b->capacity = capacity;
    }
    memcpy(b->data + b->size, data, size);
    b->size += size;
    b->data[b->size] = 0;
}

void buffer_free(Buffer *b) {
    free(b->data);
    *b = (Buffer){0};
}

double monotonic_seconds(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

void format_duration(double seconds, char *out, size_t size) {
    long s = seconds > 0 ? (long)(seconds + 0.5) : 0;
    if (s < 60) snprintf(out, size, "%lds", s);
    else if (s < 3600) snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
    else if (s < 86400) snprintf(out, size, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else snprintf(out, size, "%ldd%02ldh", s / 86400, s / 3600 % 24);
}

void format_time(double epoch_seconds, char *out, size_t size) {
    time_t t = (time_t)epoch_seconds;
    struct tm local;
    if (epoch_seconds <= 0 || !localtime_r(&t, &local) || !strftime(out, size, "%Y-%m-%d %H:%M:%S", &local))
        snprintf(out, size, "-");
}

int state_exit_code(const char *state) {
    if (strcmp(state, "succeeded") == 0) return EXIT_OK;
    if (strcmp(state, "failed") == 0) return EXIT_FAILED;
    if (strcmp(state, "canceled") == 0) return EXIT_CANCELED;
    if (strcmp(state, "paused") == 0) return EXIT_PAUSED;
    return -1;
}

const char *json_text(json_t *value, const char *fallback) {
    const char *text = json_string_value(value);
    return text ? text : fallback;
}

int client_check_id(const char *id) {
    size_t n = strlen(id);
    int ok = n > 0 && n < 40;
    for (size_t i = 0; ok && i < n; i++)
        ok = (id[i] >= 'a' && id[i] <= 'z') || (id[i] >= 'A' && id[i] <= 'Z') || (id[i] >= '0' && id[i] <= '9') ||
             id[i] == '_' || id[i] == '-';
    if (ok) return 0;
    fprintf(stderr, "distill: \"%s\" is not a job id (`distill ls` lists them)\n", id);
    return EXIT_ERROR;
}

/* ---- address and token ---- */

static const char *first_set(const char *flag, const char *env_name) {
    if (flag) return flag;
    const char *env = getenv(env_name);
    return env && env[0] ? env : NULL;
}

/* DATA_DIR/token, as the daemon wrote it (one line). */
static void load_token_file(Client *c, const char *data_dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/token", data_dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        snprintf(c->token_origin, sizeof c->token_origin, "%s: %s", path, strerror(errno));
        return;
    }
    char line[sizeof c->token];
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    line[strcspn(line, " \t\r\n")] = 0;
    if (!line[0]) {
        snprintf(c->token_origin, sizeof c->token_origin, "%s: empty", path);
        return;
    }
    snprintf(c->token, sizeof c->token, "%s", line);
    snprintf(c->token_origin, sizeof c->token_origin, "%s", path);
}

int client_init(Client *c, const char *url, const char *token, const char *data_dir, int json) {
    memset(c, 0, sizeof *c);
    c->json = json;
    url = first_set(url, "DISTILL_URL");
    if (!url) url = DEFAULT_URL;
    size_t n = strlen(url);
    while (n > 0 && url[n - 1] == '/') n--;
    if (n >= 7 && strncmp(url + n - 7, "/api/v1", 7) == 0) n -= 7; /* the API's URL works too */
    if (n == 0 || n >= sizeof c->url) {
        fprintf(stderr, "distill: \"%s\" is not a usable daemon URL\n", url);
        return EXIT_USAGE;
    }
    memcpy(c->url, url, n);
    c->url[n] = 0;

    if (token) {
        snprintf(c->token, sizeof c->token, "%s", token);
        snprintf(c->token_origin, sizeof c->token_origin, "--token");
    } else if ((token = first_set(NULL, "DISTILL_TOKEN"))) {
        snprintf(c->token, sizeof c->token, "%s", token);
        snprintf(c->token_origin, sizeof c->token_origin, "$DISTILL_TOKEN");
    } else {
        data_dir = first_set(data_dir, "DISTILL_DATA_DIR");
        load_token_file(c, data_dir ? data_dir : DEFAULT_DATA_DIR);
    }

    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK || !(c->curl = curl_easy_init())) {
        fprintf(stderr, "distill: cannot start libcurl\n");
        return EXIT_ERROR;
    }
    return 0;
}

void client_free(Client *c) {
    if (c->curl) curl_easy_cleanup(c->curl);
    c->curl = NULL;
    curl_global_cleanup();
}

/* ---- requests ---- */

void client_configure(Client *c, CURL *handle, char *errbuf, struct curl_slist **headers) {
    errbuf[0] = 0;
    curl_easy_setopt(handle, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(handle, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(handle, CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT_SECONDS);
    curl_easy_setopt(handle, CURLOPT_USERAGENT, "distill/0.1.0");
    curl_easy_setopt(handle, CURLOPT_PROTOCOLS_STR, "http,https");
    /* a proxy from the environment must not swallow the daemon on this machine */
    if (!getenv("no_proxy") && !getenv("NO_PROXY"))
        curl_easy_setopt(handle, CURLOPT_NOPROXY, "localhost,127.0.0.1,::1");
    if (c->token[0]) {
        char header[sizeof c->token + 32];
        snprintf(header, sizeof header, "Authorization: Bearer %s", c->token);
        *headers = curl_slist_append(*headers, header);
    }
    *headers = curl_slist_append(*headers, "Expect:"); /* no 100-continue round trip */
}

static size_t collect_reply(char *data, size_t size, size_t count, void *ctx) {
    buffer_append(ctx, data, size * count);
    return size * count;
}

int client_request(Client *c, const char *method, const char *path, const char *body, size_t body_size, long *status,
                   Buffer *reply) {
    char url[sizeof c->url + 2048];
    if ((size_t)snprintf(url, sizeof url, "%s/api/v1%s", c->url, path) >= sizeof url) {
        fprintf(stderr, "distill: request path too long\n");
        return EXIT_ERROR;
    }
    CURL *h = c->curl;
    curl_easy_reset(h);
    struct curl_slist *headers = NULL;
    client_configure(c, h, c->errbuf, &headers);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_TIMEOUT, REQUEST_TIMEOUT_SECONDS);
    if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? body : "");
        curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? body_size : 0));
        headers = curl_slist_append(headers, "Content-Type: application/json");
    }
    headers = curl_slist_append(headers, "Accept: application/json");
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, collect_reply);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, reply);
    CURLcode rc = curl_easy_perform(h);
    curl_slist_free_all(headers);
    if (rc != CURLE_OK) {
        client_report_transport(c, h, rc, c->errbuf);
        return EXIT_ERROR;
    }
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
    return 0;
}

int client_call(Client *c, const char *method, const char *path, const char *body, size_t body_size,
                const char *context, json_t **out, Buffer *raw) {
    Buffer reply = {0};
    long status = 0;
    int rc = client_request(c, method, path, body, body_size, &status, &reply);
    if (rc) {
        buffer_free(&reply);
        return rc;
    }
    if (status < 200 || status >= 300) {
        client_report_status(c, status, reply.data, reply.size, context);
        buffer_free(&reply);
        return EXIT_ERROR;
    }
    if (out) {
        json_error_t jerr;
        *out = json_loadb(reply.data ? reply.data : "", reply.size, 0, &jerr);
        if (!*out) {
            fprintf(stderr, "distill: %s answered HTTP %ld with something that is not JSON (is it distilld?)\n",
                    c->url, status);
            buffer_free(&reply);
            return EXIT_ERROR;
        }
    }
    if (raw) *raw = reply;
    else buffer_free(&reply);
    return 0;
}

/* ---- what went wrong ---- */

void client_report_transport(Client *c, CURL *handle, CURLcode rc, const char *errbuf) {
    long os_errno = 0;
    curl_easy_getinfo(handle, CURLINFO_OS_ERRNO, &os_errno);
    const char *detail = errbuf && errbuf[0] ? errbuf : curl_easy_strerror(rc);
    switch (rc) {
    case CURLE_COULDNT_CONNECT:
        if (os_errno == ECONNREFUSED)
            fprintf(stderr, "distill: cannot reach distilld at %s: connection refused — is it running? (make run)\n",
                    c->url);
        else
            fprintf(stderr, "distill: cannot reach distilld at %s: %s — is it running? (make run)\n", c->url,
                    os_errno ? strerror((int)os_errno) : detail);
        break;
    case CURLE_COULDNT_RESOLVE_HOST:
        fprintf(stderr, "distill: cannot reach distilld at %s: unknown host (%s)\n", c->url, detail);
        break;
    case CURLE_OPERATION_TIMEDOUT:
        fprintf(stderr, "distill: cannot reach distilld at %s: no answer in time (%s)\n", c->url, detail);
        break;
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        fprintf(stderr, "distill: %s is not a URL distill can use: %s\n", c->url, detail);
        break;
    default:
        fprintf(stderr, "distill: the request to distilld at %s failed: %s\n", c->url, detail);
    }
}

void client_report_status(Client *c, long status, const char *body, size_t size, const char *context) {
    const char *prefix = context ? context : "", *separator = context ? ": " : "";
    if (status == 401) {
        if (c->token[0])
            fprintf(stderr, "distill: the token was refused (it came from %s); it is in DATA_DIR/token of the daemon "
                            "at %s: pass --data-dir DIR, --token or set DISTILL_TOKEN\n", c->token_origin, c->url);
        else
            fprintf(stderr, "distill: the daemon wants its token and none was found (%s); it is in DATA_DIR/token: "
                            "pass --data-dir DIR, --token or set DISTILL_TOKEN\n", c->token_origin);
        return;
    }
    json_t *root = body && size ? json_loadb(body, size, 0, NULL) : NULL;
    const char *message = json_string_value(json_object_get(json_object_get(root, "error"), "message"));
    if (message) fprintf(stderr, "distill: %s%s%s\n", prefix, separator, message);
    else fprintf(stderr, "distill: %s%sunexpected reply from %s: HTTP %ld\n", prefix, separator, c->url, status);
    json_decref(root);
}
