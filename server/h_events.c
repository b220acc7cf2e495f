/* h_events.c - GET /jobs/{id}/events: a job's event log as Server-Sent Events.
 *
 * Each stored event goes out as "id: N\nevent: TYPE\ndata: JSON\n\n", after
 * the Last-Event-ID header (or ?last_event_id=), so a client that reconnects
 * misses nothing and sees nothing twice. The response is an MHD content
 * reader that blocks its connection's thread (one per connection): it polls
 * the database every POLL_SECONDS, writes a ": heartbeat" comment when it has
 * been quiet for HEARTBEAT_SECONDS (which also keeps the connection timeout
 * from firing: MHD's timeout counts from the last byte sent or received), and
 * ends once the job is finished and every event of it was sent, with a last
 * "event: end" (no id) so a browser's EventSource stops reconnecting.
 * ?after_step=S leaves out the metric and eval events of steps up to S (a
 * client that has read those through the metrics endpoint follows a long job
 * live without its history); state and log events all come. */
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"
#include "util.h"

#define POLL_SECONDS 0.25
#define HEARTBEAT_SECONDS 10.0
#define EVENTS_PER_POLL 200

typedef struct {
    HttpServer *server;
    Db *db;
    char job_id[DB_ID_LEN];
    long last_id, after_step;
    int socket_fd;             /* to notice a client that hung up while the job is quiet */
    char *pending;             /* formatted text not yet handed to MHD */
    size_t pending_size, pending_sent, pending_capacity;
    double last_poll, last_write;
    int started, done;
} EventStream;

static void pending_append(EventStream *e, const char *text, size_t size) {
    if (e->pending_size + size > e->pending_capacity) {
        size_t capacity = e->pending_capacity ? e->pending_capacity : 4096;
        while (capacity < e->pending_size + size) capacity *= 2;
        char *grown = realloc(e->pending, capacity);
        if (!grown) abort(); /* out of memory */
        e->pending = grown;
        e->pending_capacity = capacity;
    }
    memcpy(e->pending + e->pending_size, text, size);
    e->pending_size += size;
}

static void pending_puts(EventStream *e, const char *text) { pending_append(e, text, strlen(text)); }

/* One SSE event; a data field with newlines becomes several data lines. */
static void append_event(EventStream *e, const DbEvent *ev) {
    char head[128];
    snprintf(head, sizeof head, "id: %ld\nevent: %s\n", ev->id, ev->type);
    pending_puts(e, head);
    const char *data = ev->data_json ? ev->data_json : "{}";
    for (;;) {
        size_t n = strcspn(data, "\r\n");
        pending_puts(e, "data: ");
        pending_append(e, data, n);
        pending_puts(e, "\n");
        data += n;
        if (!*data) break;
        data += data[0] == '\r' && data[1] == '\n' ? 2 : 1;
    }
    pending_puts(e, "\n");
}

static int is_terminal(const char *state) {
    return strcmp(state, "succeeded") == 0 || strcmp(state, "failed") == 0 || strcmp(state, "canceled") == 0;
}

/* Appends the events after last_id; marks the stream done when the job had
 * finished before this read and the read reached the end of its log. */
static int stream_poll(EventStream *e) {
    char err[ERR_LEN];
    DbJob job;
    int rc = db_job_get(e->db, e->job_id, &job, err);
    if (rc == DB_NOT_FOUND) { /* deleted meanwhile */
        pending_puts(e, "event: end\ndata: {\"state\":\"deleted\"}\n\n");
        e->done = 1;
        return 0;
    }
    if (rc) return -1;
    int finished = is_terminal(job.state);
    char end[128];
    snprintf(end, sizeof end, "event: end\ndata: {\"state\":\"%s\"}\n\n", job.state);
    db_job_free(&job);
    DbEvent *events;
    int count;
    if (db_events_after(e->db, e->job_id, e->last_id, e->after_step, EVENTS_PER_POLL, &events, &count, err)) return -1;
    for (int i = 0; i < count; i++) {
        append_event(e, &events[i]);
        e->last_id = events[i].id;
    }
    db_events_free(events, count);
    if (count == EVENTS_PER_POLL) e->last_poll = 0; /* more are waiting: read on as soon as these are sent */
    if (finished && count < EVENTS_PER_POLL) {
        pending_puts(e, end);
        e->done = 1;
    }
    return 0;
}

static int peer_closed(int fd) {
    if (fd < 0) return 0;
    struct pollfd p = {.fd = fd, .events = POLLRDHUP};
    return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static void sleep_seconds(double seconds) {
    if (seconds <= 0) return;
    struct timespec t = {.tv_sec = (time_t)seconds, .tv_nsec = (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&t, NULL);
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    EventStream *e = cls;
    for (;;) {
        if (e->pending_sent < e->pending_size) {
            size_t n = e->pending_size - e->pending_sent;
            if (n > max) n = max;
            memcpy(buf, e->pending + e->pending_sent, n);
            e->pending_sent += n;
            e->last_write = now_seconds();
            return (ssize_t)n;
        }
        e->pending_size = e->pending_sent = 0;
        if (e->done || http_stopping(e->server)) return MHD_CONTENT_READER_END_OF_STREAM;
        if (!e->started) { /* at once, so the client has the headers before the first event */
            e->started = 1;
            pending_puts(e, "retry: 2000\n\n");
            continue;
        }
        double now = now_seconds();
        if (now - e->last_poll >= POLL_SECONDS) {
            e->last_poll = now;
            if (stream_poll(e) != 0) return MHD_CONTENT_READER_END_WITH_ERROR;
            if (e->pending_size || e->done) continue;
        }
        if (now - e->last_write >= HEARTBEAT_SECONDS) {
            pending_puts(e, ": heartbeat\n\n");
            continue;
        }
        if (peer_closed(e->socket_fd)) return MHD_CONTENT_READER_END_OF_STREAM; /* nobody to tell */
        sleep_seconds(e->last_poll + POLL_SECONDS - now_seconds());
    }
}

static void stream_free(void *cls) {
    EventStream *e = cls;
    http_stream_release(e->server);
    free(e->pending);
    free(e);
}

enum MHD_Result h_job_events(HttpRequest *r) {
    DbJob job;
    char err[ERR_LEN];
    int rc = db_job_get(r->cfg->db, r->id, &job, err);
    if (rc) return http_reply_db_error(r, rc, r->id, err);
    db_job_free(&job);

    const char *last = MHD_lookup_connection_value(r->connection, MHD_HEADER_KIND, MHD_HTTP_HEADER_LAST_EVENT_ID);
    long last_id = 0;
    if (last) {
        char *end;
        last_id = strtol(last, &end, 10);
        if (!*last || *end || last_id < 0)
            return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "Last-Event-ID: must be an event id");
    } else {
        enum MHD_Result reply;
        if (http_query_long(r, "last_event_id", 0, 4000000000000000000L, 0, &last_id, &reply)) return reply;
    }
    long after_step;
    enum MHD_Result reply;
    if (http_query_long(r, "after_step", -1, 4000000000000000000L, -1, &after_step, &reply)) return reply;

    if (http_stream_acquire(r->server) != 0)
        return http_reply_error(r, MHD_HTTP_SERVICE_UNAVAILABLE, "too_many_streams",
                                "too many event streams are open; try again later");
    EventStream *e = xcalloc(1, sizeof *e);
    e->server = r->server;
    e->db = r->cfg->db;
    memcpy(e->job_id, r->id, sizeof e->job_id);
    e->last_id = last_id;
    e->after_step = after_step;
    e->last_write = now_seconds();
    const union MHD_ConnectionInfo *info = MHD_get_connection_info(r->connection, MHD_CONNECTION_INFO_CONNECTION_FD);
    e->socket_fd = info ? info->connect_fd : -1;
    struct MHD_Response *response = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_read, e,
                                                                      stream_free);
    if (!response) {
        stream_free(e);
        return MHD_NO;
    }
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(response, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(response, "X-Accel-Buffering", "no");
    return http_reply(r, MHD_HTTP_OK, response);
}
