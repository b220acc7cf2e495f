/* watch.c - `distill watch ID`: a job's progress, live, until it ends.
 *
 * The job's Server-Sent Events (GET /jobs/{id}/events) are parsed as libcurl
 * hands over the bytes: lines are split on CR, LF or CRLF, "id:", "event:",
 * "data:" and "retry:" fields gathered, and each blank line dispatches one
 * event. "metric" and "eval" events feed the progress line; "state" and "log"
 * events are printed; the stream's last "end" event says how the job finished.
 * A dropped connection is reopened with Last-Event-ID, so nothing is missed or
 * seen twice; after RECONNECT_GIVE_UP_SECONDS of failures watch gives up.
 *
 * A paused job keeps its stream open (it may be resumed), so a "paused" state
 * event is checked against GET /jobs/{id}: only a job that is still paused ends
 * the watch. A job that had already ended is summed up from the REST API
 * (job, last step's metrics, last evaluation) instead of replaying its log.
 *
 * On a terminal the line is redrawn in place (\r); otherwise a plain line is
 * written on each state change and evaluation and every PLAIN_LINE_SECONDS.
 * --json prints each event as one JSON object per line. */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "client.h"

#define RECONNECT_GIVE_UP_SECONDS 120.0
#define STALLED_SECONDS 35L          /* the daemon sends a heartbeat every 10 s */
#define TTY_REDRAW_SECONDS 0.1
#define PLAIN_LINE_SECONDS 10.0
#define LINE_MAX_BYTES (16 << 20)

typedef struct {
    Client *c;
    const char *id;
    CURL *stream;
    char errbuf[CURL_ERROR_SIZE];
    /* the response being read */
    long status;
    int connected;
    Buffer error_body;
    /* Server-Sent Events parsing */
    Buffer line, data;
    int after_cr, has_data;
    char event[32];
    long pending_id;    /* the "id:" field of the event being read */
    int has_pending_id;
    long last_event_id; /* of the last event dispatched: where a reconnect resumes */
    long retry_ms;
    int check_paused; /* a "paused" state event came: stop reading and ask the API */
    /* how it ended: an exit code, or -1 while it runs */
    int ended;
    /* the progress line */
    char state[16], error[1024];
    long step, total_steps;
    double loss, lr, images_per_second, eta_seconds, val_top1, test_top1;
    int has_loss, has_lr, has_speed, has_eta, has_val, has_test;
    int tty, line_visible;
    double last_draw;
    char last_plain[512];
} Watch;

static volatile sig_atomic_t interrupted;

static void on_interrupt(int signal_number) {
    (void)signal_number;
    interrupted = 1;
}

/* ---- the progress line ---- */

/* The progress line; when it is wider than `width` (0: no limit), the least
 * needed fields are left out, since a wrapped line cannot be redrawn with \r. */
static void watch_format(const Watch *w, char *out, size_t size, int width) {
    enum { FIELDS = 9 };
    char text[FIELDS][64] = {{0}};
    static const int priority[FIELDS] = {1, 10, 9, 8, 3, 6, 7, 4, 8}; /* left out lowest first */
    snprintf(text[0], sizeof text[0], "%s", w->id);
    snprintf(text[1], sizeof text[1], "%s", w->state[0] ? w->state : "?");
    if (w->total_steps > 0)
        snprintf(text[2], sizeof text[2], "step %ld/%ld (%d%%)", w->step, w->total_steps,
                 (int)(100.0 * (double)w->step / (double)w->total_steps));
    else if (w->step > 0)
        snprintf(text[2], sizeof text[2], "step %ld", w->step);
    if (w->has_loss) snprintf(text[3], sizeof text[3], "loss %.4f", w->loss);
    if (w->has_lr) snprintf(text[4], sizeof text[4], "lr %.3g", w->lr);
    if (w->has_val) snprintf(text[5], sizeof text[5], "val %.1f%%", 100.0 * w->val_top1);
    if (w->has_test) snprintf(text[6], sizeof text[6], "test %.1f%%", 100.0 * w->test_top1);
    if (w->has_speed) snprintf(text[7], sizeof text[7], "%.0f img/s", w->images_per_second);
    if (w->has_eta && strcmp(w->state, "running") == 0) {
        char eta[32];
        format_duration(w->eta_seconds, eta, sizeof eta);
        snprintf(text[8], sizeof text[8], "ETA %s", eta);
    }
    for (;;) {
        int length = 0, lowest = -1;
        for (int i = 0; i < FIELDS; i++) {
            if (!text[i][0]) continue;
            length += (length ? 2 : 0) + (int)strlen(text[i]);
            if (lowest < 0 || priority[i] < priority[lowest]) lowest = i;
        }
        if (width <= 0 || length <= width || priority[lowest] >= 9) break;
        text[lowest][0] = 0;
    }
    size_t n = 0;
    out[0] = 0;
    for (int i = 0; i < FIELDS; i++)
        if (text[i][0] && n < size) n += (size_t)snprintf(out + n, size - n, "%s%s", n ? "  " : "", text[i]);
}

static int terminal_columns(void) {
    struct winsize ws;
    return ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 ? ws.ws_col : 80;
}

/* force: on a terminal, redraw now; otherwise print a plain line now */
static void watch_draw(Watch *w, int force) {
    if (w->c->json) return;
    double now = monotonic_seconds();
    char line[512];
    if (w->tty) {
        if (!force && now - w->last_draw < TTY_REDRAW_SECONDS) return;
        int width = terminal_columns() - 1;
        watch_format(w, line, sizeof line, width);
        if (width > 0 && (int)strlen(line) > width) line[width] = 0;
        printf("\r%s\033[K", line);
        w->line_visible = 1;
    } else {
        if (!force && now - w->last_draw < PLAIN_LINE_SECONDS) return;
        watch_format(w, line, sizeof line, 0);
        if (strcmp(line, w->last_plain) == 0) return;
        printf("%s\n", line);
        snprintf(w->last_plain, sizeof w->last_plain, "%s", line);
    }
    fflush(stdout);
    w->last_draw = now;
}

/* A line of its own (a log message, a reconnect notice) above the progress line. */
static void watch_note(Watch *w, FILE *to, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void watch_note(Watch *w, FILE *to, const char *fmt, ...) {
    if (w->line_visible) {
        printf("\r\033[K");
        fflush(stdout);
        w->line_visible = 0;
    }
    va_list ap;
    va_start(ap, fmt);
    vfprintf(to, fmt, ap);
    va_end(ap);
    fputc('\n', to);
    fflush(to);
    if (w->tty) watch_draw(w, 1);
}

/* The last line, and why a job failed. */
static void watch_finish(Watch *w) {
    if (!w->c->json) {
        if (w->tty) {
            watch_draw(w, 1);
            printf("\n");
        } else {
            watch_draw(w, 1);
        }
        fflush(stdout);
    }
    if (w->ended == EXIT_FAILED && w->error[0]) fprintf(stderr, "distill: job %s failed: %s\n", w->id, w->error);
}

/* ---- the job as the REST API has it ---- */

static void watch_take_job(Watch *w, json_t *job) {
    snprintf(w->state, sizeof w->state, "%s", json_text(json_object_get(job, "state"), "?"));
    snprintf(w->error, sizeof w->error, "%s", json_text(json_object_get(job, "error"), ""));
    w->step = (long)json_integer_value(json_object_get(job, "step"));
    w->total_steps = (long)json_integer_value(json_object_get(job, "total_steps"));
}

/* The newest value of each metric a page of points names. */
static void watch_take_points(Watch *w, json_t *points) {
    size_t i;
    json_t *p;
    json_array_foreach(points, i, p) {
        const char *name = json_string_value(json_object_get(p, "name"));
        json_t *value = json_object_get(p, "value");
        if (!name || !json_is_number(value)) continue;
        double x = json_number_value(value);
        if (strcmp(name, "loss") == 0) w->loss = x, w->has_loss = 1;
        else if (strcmp(name, "lr") == 0) w->lr = x, w->has_lr = 1;
        else if (strcmp(name, "images_per_second") == 0) w->images_per_second = x, w->has_speed = 1;
        else if (strcmp(name, "val_top1") == 0) w->val_top1 = x, w->has_val = 1;
        else if (strcmp(name, "test_top1") == 0) w->test_top1 = x, w->has_test = 1;
    }
}

/* State, step and error from GET /jobs/{id}; loss, LR and speed of the last
 * step and the last evaluation from its metrics (best effort). */
static int watch_summary(Watch *w) {
    char path[256];
    json_t *job;
    snprintf(path, sizeof path, "/jobs/%s", w->id);
    int rc = client_call(w->c, "GET", path, NULL, 0, NULL, &job, NULL);
    if (rc) return rc;
    watch_take_job(w, job);
    json_decref(job);
    w->has_eta = 0;
    if (w->step > 0) {
        snprintf(path, sizeof path, "/jobs/%s/metrics?names=loss,lr,images_per_second&after_step=%ld&limit=100",
                 w->id, w->step - 1);
        json_t *page;
        if (client_call(w->c, "GET", path, NULL, 0, NULL, &page, NULL) == 0) {
            watch_take_points(w, json_object_get(page, "points"));
            json_decref(page);
        }
    }
    long after = -1;
    for (int pages = 0; pages < 1000; pages++) { /* evaluations are few: a page or two */
        snprintf(path, sizeof path, "/jobs/%s/metrics?names=val_top1,test_top1&limit=10000&after_step=%ld", w->id,
                 after);
        json_t *page;
        if (client_call(w->c, "GET", path, NULL, 0, NULL, &page, NULL) != 0) break;
        watch_take_points(w, json_object_get(page, "points"));
        json_t *next = json_object_get(page, "next_after_step");
        int more = json_is_integer(next);
        after = more ? (long)json_integer_value(next) : after;
        json_decref(page);
        if (!more) break;
    }
    return 0;
}

/* ---- events ---- */

static double number_or(json_t *data, const char *key, double fallback, int *has) {
    json_t *v = json_object_get(data, key);
    if (!json_is_number(v)) return fallback;
    if (has) *has = 1;
    return json_number_value(v);
}

static void watch_event(Watch *w, const char *type, int has_id, long id, json_t *data) {
    if (w->c->json) {
        json_t *line = json_pack("{s:o,s:s,s:O}", "id", has_id ? json_integer(id) : json_null(), "event", type, "data",
                                 data);
        char *text = line ? json_dumps(line, JSON_COMPACT) : NULL;
        if (text) printf("%s\n", text);
        fflush(stdout);
        free(text);
        json_decref(line);
    }
    if (strcmp(type, "metric") == 0) {
        snprintf(w->state, sizeof w->state, "running");
        w->step = (long)number_or(data, "step", (double)w->step, NULL);
        w->total_steps = (long)number_or(data, "total_steps", (double)w->total_steps, NULL);
        w->loss = number_or(data, "loss", w->loss, &w->has_loss);
        w->lr = number_or(data, "lr", w->lr, &w->has_lr);
        w->images_per_second = number_or(data, "images_per_second", w->images_per_second, &w->has_speed);
        w->eta_seconds = number_or(data, "eta_seconds", w->eta_seconds, &w->has_eta);
        watch_draw(w, 0);
    } else if (strcmp(type, "eval") == 0) {
        w->val_top1 = number_or(data, "val_top1", w->val_top1, &w->has_val);
        w->test_top1 = number_or(data, "test_top1", w->test_top1, &w->has_test);
        watch_draw(w, 1);
    } else if (strcmp(type, "state") == 0) {
        const char *state = json_string_value(json_object_get(data, "state"));
        if (!state) return;
        snprintf(w->state, sizeof w->state, "%s", state);
        snprintf(w->error, sizeof w->error, "%s", json_text(json_object_get(data, "error"), ""));
        w->has_eta = 0;
        if (strcmp(state, "paused") == 0) w->check_paused = 1;
        else watch_draw(w, 1);
    } else if (strcmp(type, "log") == 0) {
        const char *message = json_string_value(json_object_get(data, "message"));
        if (message && !w->c->json) watch_note(w, stdout, "  %s", message);
    } else if (strcmp(type, "end") == 0) {
        const char *state = json_string_value(json_object_get(data, "state"));
        if (state && strcmp(state, "deleted") == 0) {
            watch_note(w, stderr, "distill: job %s was deleted", w->id);
            w->ended = EXIT_ERROR;
            return;
        }
        if (state) snprintf(w->state, sizeof w->state, "%s", state);
        int code = state ? state_exit_code(state) : -1;
        w->ended = code >= 0 ? code : EXIT_ERROR;
    }
}

static void sse_dispatch(Watch *w) {
    if (w->has_pending_id) w->last_event_id = w->pending_id;
    if (w->has_data) {
        if (w->data.size && w->data.data[w->data.size - 1] == '\n') w->data.data[--w->data.size] = 0;
        json_t *data = json_loadb(w->data.data ? w->data.data : "", w->data.size, 0, NULL);
        if (data) watch_event(w, w->event[0] ? w->event : "message", w->has_pending_id, w->pending_id, data);
        json_decref(data);
    }
    w->event[0] = 0;
    w->data.size = 0;
    w->has_data = w->has_pending_id = 0;
}

static void sse_line(Watch *w, char *line) {
    if (!line[0]) {
        sse_dispatch(w);
        return;
    }
    if (line[0] == ':') return; /* a comment: the heartbeat */
    char *value = strchr(line, ':');
    if (value) {
        *value++ = 0;
        if (*value == ' ') value++;
    } else {
        value = "";
    }
    if (strcmp(line, "event") == 0) {
        snprintf(w->event, sizeof w->event, "%s", value);
    } else if (strcmp(line, "data") == 0) {
        buffer_append(&w->data, value, strlen(value));
        buffer_append(&w->data, "\n", 1);
        w->has_data = 1;
    } else if (strcmp(line, "id") == 0) {
        char *end;
        long id = strtol(value, &end, 10);
        if (*value && !*end && id >= 0) w->pending_id = id, w->has_pending_id = 1;
    } else if (strcmp(line, "retry") == 0) {
        char *end;
        long ms = strtol(value, &end, 10);
        if (*value && !*end && ms >= 0) w->retry_ms = ms;
    }
}

static size_t stream_write(char *bytes, size_t size, size_t count, void *ctx) {
    Watch *w = ctx;
    size_t total = size * count;
    if (!w->status) curl_easy_getinfo(w->stream, CURLINFO_RESPONSE_CODE, &w->status);
    if (w->status != 200) {
        if (w->error_body.size < 65536) buffer_append(&w->error_body, bytes, total);
        return total;
    }
    w->connected = 1;
    for (size_t i = 0; i < total; i++) {
        char ch = bytes[i];
        if (w->after_cr && ch == '\n') {
            w->after_cr = 0;
            continue;
        }
        w->after_cr = ch == '\r';
        if (ch == '\r' || ch == '\n') {
            buffer_append(&w->line, "", 0);
            sse_line(w, w->line.data);
            w->line.size = 0;
            if (w->ended >= 0 || w->check_paused) return 0; /* stop reading: the transfer ends */
        } else if (w->line.size < LINE_MAX_BYTES) {
            buffer_append(&w->line, &ch, 1);
        }
    }
    return total;
}

static int stream_progress(void *ctx, curl_off_t a, curl_off_t b, curl_off_t c, curl_off_t d) {
    (void)ctx, (void)a, (void)b, (void)c, (void)d;
    return interrupted; /* nonzero aborts the transfer */
}

/* One connection to the event stream, from last_event_id on. */
static CURLcode stream_once(Watch *w) {
    char url[sizeof w->c->url + 256];
    snprintf(url, sizeof url, "%s/api/v1/jobs/%s/events", w->c->url, w->id);
    curl_easy_reset(w->stream);
    struct curl_slist *headers = NULL;
    client_configure(w->c, w->stream, w->errbuf, &headers);
    headers = curl_slist_append(headers, "Accept: text/event-stream");
    if (w->last_event_id > 0) {
        char header[64];
        snprintf(header, sizeof header, "Last-Event-ID: %ld", w->last_event_id);
        headers = curl_slist_append(headers, header);
    }
    curl_easy_setopt(w->stream, CURLOPT_URL, url);
    curl_easy_setopt(w->stream, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(w->stream, CURLOPT_WRITEFUNCTION, stream_write);
    curl_easy_setopt(w->stream, CURLOPT_WRITEDATA, w);
    curl_easy_setopt(w->stream, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(w->stream, CURLOPT_LOW_SPEED_TIME, STALLED_SECONDS);
    curl_easy_setopt(w->stream, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(w->stream, CURLOPT_XFERINFOFUNCTION, stream_progress);
    w->status = 0;
    w->connected = 0;
    w->error_body.size = 0;
    w->line.size = 0;
    w->data.size = 0;
    w->after_cr = w->has_data = w->has_pending_id = 0;
    w->event[0] = 0;
    CURLcode rc = curl_easy_perform(w->stream);
    curl_slist_free_all(headers);
    return rc;
}

static void sleep_ms(long ms) {
    while (ms > 0 && !interrupted) {
        long slice = ms < 100 ? ms : 100;
        usleep((useconds_t)slice * 1000);
        ms -= slice;
    }
}

/* Reads the stream until the job ends, reconnecting when it drops. */
static int watch_stream(Watch *w) {
    double failing_since = 0;
    int said_reconnecting = 0;
    for (;;) {
        CURLcode rc = stream_once(w);
        if (interrupted) return EXIT_INTERRUPTED;
        if (w->ended >= 0) return w->ended;
        if (w->check_paused) { /* a pause from the past, or this one? */
            w->check_paused = 0;
            json_t *job;
            char path[128];
            snprintf(path, sizeof path, "/jobs/%s", w->id);
            if (client_call(w->c, "GET", path, NULL, 0, NULL, &job, NULL) == 0) {
                int paused = strcmp(json_text(json_object_get(job, "state"), ""), "paused") == 0;
                json_decref(job);
                if (paused) {
                    w->ended = EXIT_PAUSED;
                    if (w->c->json) printf("{\"id\":null,\"event\":\"end\",\"data\":{\"state\":\"paused\"}}\n");
                    else watch_summary(w);
                    return EXIT_PAUSED;
                }
            }
            continue; /* it was resumed since: read on from the same event */
        }
        if (w->connected) { /* it was working: the clock for giving up starts now */
            failing_since = 0;
            said_reconnecting = 0;
        }
        if (w->status && w->status != 200 && w->status != 503) { /* 404 (deleted), 401 ...: not a network problem */
            if (w->line_visible) printf("\n");
            client_report_status(w->c, w->status, w->error_body.data, w->error_body.size, NULL);
            return EXIT_ERROR;
        }
        double now = monotonic_seconds();
        if (failing_since == 0) failing_since = now;
        if (now - failing_since > RECONNECT_GIVE_UP_SECONDS) {
            if (w->line_visible) printf("\n");
            if (rc != CURLE_OK) client_report_transport(w->c, w->stream, rc, w->errbuf);
            else fprintf(stderr, "distill: the event stream of job %s keeps failing (HTTP %ld)\n", w->id, w->status);
            return EXIT_ERROR;
        }
        if (!said_reconnecting) {
            const char *why = w->status == 503 ? "the daemon has too many event streams open"
                              : rc != CURLE_OK  ? (w->errbuf[0] ? w->errbuf : curl_easy_strerror(rc))
                                                : "the stream ended";
            watch_note(w, stderr, "distill: lost the event stream (%s); reconnecting…", why);
            said_reconnecting = 1;
        }
        sleep_ms(w->retry_ms);
    }
}

int watch_job(Client *c, const char *id) {
    int rc = client_check_id(id);
    if (rc) return rc;
    Watch w = {.c = c, .id = id, .ended = -1, .retry_ms = 2000, .tty = isatty(STDOUT_FILENO) && !c->json};
    json_t *job;
    char path[128];
    snprintf(path, sizeof path, "/jobs/%s", id);
    if ((rc = client_call(c, "GET", path, NULL, 0, NULL, &job, NULL))) return rc;
    watch_take_job(&w, job);
    json_decref(job);

    int code = state_exit_code(w.state);
    if (code == EXIT_PAUSED && c->json) { /* its stream would never end */
        printf("{\"id\":null,\"event\":\"end\",\"data\":{\"state\":\"paused\"}}\n");
        return code;
    }
    if (code >= 0 && !c->json) { /* over already: no need to replay its whole log */
        if ((rc = watch_summary(&w))) return rc;
        w.ended = code;
        watch_finish(&w);
        return code;
    }

    if (!(w.stream = curl_easy_init())) {
        fprintf(stderr, "distill: cannot start libcurl\n");
        return EXIT_ERROR;
    }
    w.step = 0; /* the replayed log rebuilds the line from the start */
    struct sigaction action = {.sa_handler = on_interrupt}, previous;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, &previous);
    code = watch_stream(&w);
    sigaction(SIGINT, &previous, NULL);
    if (code == EXIT_INTERRUPTED && w.line_visible) printf("\n");
    else if (w.ended >= 0 && w.ended != EXIT_ERROR) watch_finish(&w);
    curl_easy_cleanup(w.stream);
    buffer_free(&w.line);
    buffer_free(&w.data);
    buffer_free(&w.error_body);
    return code;
}
