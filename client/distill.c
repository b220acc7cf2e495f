/* distill.c - the `distill` command line client of distilld's HTTP API.
 *
 *   distill [--url URL] [--token TOKEN] [--data-dir DIR] [--json] COMMAND ...
 *
 * main() takes the global options from anywhere on the line, finds the
 * command in one table and runs it; each command parses its own options,
 * makes its requests through api.c and prints a table or a few lines for
 * people, or the API's JSON with --json. `watch` (and `submit --wait`) follow
 * the job's event stream: see watch.c. Exit codes are in client.h and the
 * usage text: 0 ok, 1 error, 2 usage; a watched job that failed 3, was
 * canceled 4, is paused 5. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "client.h"

#define JOBS_PAGE_MAX 500       /* the API's largest page of jobs */
#define METRICS_PAGE_MAX 10000  /* and of metric points */
#define NAMES_MAX 2048

typedef struct {
    const char *name, *arguments, *summary;
    int (*run)(Client *c, int argc, char **argv);
} Command;

static const Command *current; /* for usage messages */

static const char usage_head[] =
    "usage: distill [--url URL] [--token TOKEN] [--data-dir DIR] [--json] COMMAND ...\n"
    "\n"
    "commands:\n";
static const char usage_notes[] =
    "\n"
    "The daemon is at --url, $DISTILL_URL or http://127.0.0.1:8080. Submitting and changing jobs\n"
    "needs its token: --token, $DISTILL_TOKEN, or the file DATA_DIR/token, where DATA_DIR is\n"
    "--data-dir, $DISTILL_DATA_DIR or ./var (the daemon's --data-dir).\n"
    "--json prints the API's JSON (watch: one event per line).\n"
    "\n"
    "exit status: 0 done, 1 error (daemon unreachable, token refused, unknown job, conflict, bad spec),\n"
    "2 usage; watch and submit --wait: 0 succeeded, 3 failed, 4 canceled, 5 paused.\n";

static void print_usage(FILE *to, int notes);

/* A usage mistake: what was wrong, the command's synopsis, exit 2. */
static int usage_error(const char *fmt, const char *arg) {
    fprintf(stderr, "distill: ");
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    if (current) fprintf(stderr, "usage: distill %s %s\n", current->name, current->arguments);
    else print_usage(stderr, 0);
    return EXIT_USAGE;
}

/* argv[*i] is `name VALUE` or `name=VALUE`: 1 (value set, *i moved on),
 * 0 another argument, -1 the value is missing. */
static int option_value(int argc, char **argv, int *i, const char *name, const char **value) {
    size_t n = strlen(name);
    if (strncmp(argv[*i], name, n) != 0) return 0;
    if (argv[*i][n] == '=') {
        *value = argv[*i] + n + 1;
        return 1;
    }
    if (argv[*i][n]) return 0;
    if (*i + 1 >= argc) return -1;
    *value = argv[++*i];
    return 1;
}

static int is_option(const char *arg) { return arg[0] == '-' && arg[1]; }

static int parse_count(const char *text, long *out) {
    char *end;
    errno = 0;
    long x = strtol(text, &end, 10);
    if (!*text || *end || errno || x < 1) return -1;
    *out = x;
    return 0;
}

/* One positional ID and nothing else. */
static int only_id(int argc, char **argv, const char **id) {
    *id = NULL;
    for (int i = 0; i < argc; i++) {
        if (is_option(argv[i])) return usage_error("unknown option %s", argv[i]);
        if (*id) return usage_error("unexpected argument %s", argv[i]);
        *id = argv[i];
    }
    if (!*id) return usage_error("%s needs a job id", current->name);
    return client_check_id(*id);
}

static void print_raw(const Buffer *raw) {
    fwrite(raw->data ? raw->data : "", 1, raw->size, stdout);
    if (!raw->size || raw->data[raw->size - 1] != '\n') putchar('\n');
}

static void print_json(json_t *value) {
    char *text = json_dumps(value, JSON_COMPACT);
    if (text) printf("%s\n", text);
    free(text);
}

/* ---- submit ---- */

static int read_spec(const char *file, Buffer *out) {
    FILE *f = strcmp(file, "-") == 0 ? stdin : fopen(file, "rb");
    if (!f) {
        fprintf(stderr, "distill: cannot read %s: %s\n", file, strerror(errno));
        return EXIT_ERROR;
    }
    char chunk[65536];
    size_t n;
    while ((n = fread(chunk, 1, sizeof chunk, f)) > 0) buffer_append(out, chunk, n);
    int failed = ferror(f);
    if (f != stdin) fclose(f);
    if (failed) {
        fprintf(stderr, "distill: cannot read %s\n", file);
        return EXIT_ERROR;
    }
    return 0;
}

static int cmd_submit(Client *c, int argc, char **argv) {
    const char *file = NULL;
    int wait = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) wait = 1;
        else if (is_option(argv[i])) return usage_error("unknown option %s", argv[i]);
        else if (file) return usage_error("unexpected argument %s", argv[i]);
        else file = argv[i];
    }
    if (!file) return usage_error("%s needs a job spec file (JSON; - for stdin)", "submit");
    Buffer spec = {0}, raw = {0};
    json_t *job = NULL;
    int rc = read_spec(file, &spec);
    if (!rc) rc = client_call(c, "POST", "/jobs", spec.data ? spec.data : "", spec.size, file, &job, &raw);
    buffer_free(&spec);
    if (rc) return rc;
    char id[64];
    snprintf(id, sizeof id, "%s", json_text(json_object_get(job, "id"), ""));
    json_decref(job);
    if (c->json) print_raw(&raw);
    else printf("%s\n", id);
    fflush(stdout);
    buffer_free(&raw);
    return wait ? watch_job(c, id) : EXIT_OK;
}

/* ---- ls ---- */

static void step_text(json_t *job, char *out, size_t size) {
    long step = (long)json_integer_value(json_object_get(job, "step"));
    long total = (long)json_integer_value(json_object_get(job, "total_steps"));
    if (total > 0) snprintf(out, size, "%ld/%ld", step, total);
    else snprintf(out, size, "%ld/?", step); /* an epochs spec: the worker knows the total */
}

static void print_jobs_table(json_t *jobs) {
    int w_id = 2, w_kind = 4, w_state = 5, w_step = 4;
    size_t i;
    json_t *job;
    char step[64];
    json_array_foreach(jobs, i, job) {
        int n;
        if ((n = (int)strlen(json_text(json_object_get(job, "id"), ""))) > w_id) w_id = n;
        if ((n = (int)strlen(json_text(json_object_get(job, "kind"), ""))) > w_kind) w_kind = n;
        if ((n = (int)strlen(json_text(json_object_get(job, "state"), ""))) > w_state) w_state = n;
        step_text(job, step, sizeof step);
        if ((n = (int)strlen(step)) > w_step) w_step = n;
    }
    printf("%-*s  %-*s  %-*s  %-*s  %s\n", w_id, "ID", w_kind, "KIND", w_state, "STATE", w_step, "STEP", "CREATED");
    json_array_foreach(jobs, i, job) {
        char created[64];
        format_time(json_number_value(json_object_get(job, "created_at")), created, sizeof created);
        step_text(job, step, sizeof step);
        printf("%-*s  %-*s  %-*s  %-*s  %s\n", w_id, json_text(json_object_get(job, "id"), ""), w_kind,
               json_text(json_object_get(job, "kind"), ""), w_state, json_text(json_object_get(job, "state"), ""),
               w_step, step, created);
    }
}

static int cmd_ls(Client *c, int argc, char **argv) {
    const char *state = NULL, *limit_text = NULL;
    long limit = 0;
    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = option_value(argc, argv, &i, "--state", &state)) ||
            (m = option_value(argc, argv, &i, "--limit", &limit_text))) {
            if (m < 0) return usage_error("%s needs a value", argv[i]);
        } else if (is_option(argv[i])) {
            return usage_error("unknown option %s", argv[i]);
        } else {
            return usage_error("unexpected argument %s", argv[i]);
        }
    }
    if (limit_text && parse_count(limit_text, &limit))
        return usage_error("--limit %s: must be a positive integer", limit_text);
    char *state_query = state ? curl_easy_escape(c->curl, state, 0) : NULL;
    json_t *all = json_array(), *next = json_null();
    char cursor[128] = "";
    int rc = 0;
    for (;;) {
        long want = limit ? limit - (long)json_array_size(all) : JOBS_PAGE_MAX;
        char path[512];
        snprintf(path, sizeof path, "/jobs?limit=%ld%s%s%s%s", want < JOBS_PAGE_MAX ? want : JOBS_PAGE_MAX,
                 state_query ? "&state=" : "", state_query ? state_query : "", cursor[0] ? "&cursor=" : "", cursor);
        json_t *page;
        if ((rc = client_call(c, "GET", path, NULL, 0, NULL, &page, NULL))) break;
        json_array_extend(all, json_object_get(page, "jobs"));
        json_decref(next);
        next = json_incref(json_object_get(page, "next_cursor"));
        if (!next) next = json_null();
        json_decref(page);
        if (!json_is_string(next) || (limit && (long)json_array_size(all) >= limit)) break;
        snprintf(cursor, sizeof cursor, "%s", json_string_value(next));
    }
    curl_free(state_query);
    if (!rc) {
        if (c->json) {
            json_t *out = json_pack("{s:O,s:O}", "jobs", all, "next_cursor", next);
            print_json(out);
            json_decref(out);
        } else if (json_array_size(all) == 0) {
            printf("no %s%sjobs\n", state ? state : "", state ? " " : "");
        } else {
            print_jobs_table(all);
        }
    }
    json_decref(all);
    json_decref(next);
    return rc;
}

/* ---- show ---- */

static int cmd_show(Client *c, int argc, char **argv) {
    const char *id;
    int rc = only_id(argc, argv, &id);
    if (rc) return rc;
    char path[128];
    snprintf(path, sizeof path, "/jobs/%s", id);
    json_t *job;
    Buffer raw = {0};
    if ((rc = client_call(c, "GET", path, NULL, 0, NULL, &job, &raw))) return rc;
    if (c->json) {
        print_raw(&raw);
    } else {
        const char *request = json_string_value(json_object_get(job, "request"));
        const char *error = json_string_value(json_object_get(job, "error"));
        json_t *checkpoint = json_object_get(job, "checkpoint_step");
        long step = (long)json_integer_value(json_object_get(job, "step"));
        long total = (long)json_integer_value(json_object_get(job, "total_steps"));
        char created[64], updated[64];
        format_time(json_number_value(json_object_get(job, "created_at")), created, sizeof created);
        format_time(json_number_value(json_object_get(job, "updated_at")), updated, sizeof updated);
        printf("id          %s\n", json_text(json_object_get(job, "id"), ""));
        printf("kind        %s\n", json_text(json_object_get(job, "kind"), ""));
        printf("state       %s", json_text(json_object_get(job, "state"), ""));
        if (request) printf(" (%s requested)", request);
        printf("\n");
        if (total > 0) printf("step        %ld of %ld (%d%%)\n", step, total, (int)(100.0 * step / total));
        else printf("step        %ld\n", step);
        if (json_is_integer(checkpoint)) printf("checkpoint  step %ld\n", (long)json_integer_value(checkpoint));
        if (error) printf("error       %s\n", error);
        printf("created     %s\n", created);
        printf("updated     %s\n", updated);
        char *spec = json_dumps(json_object_get(job, "spec"), JSON_INDENT(2));
        printf("spec        ");
        for (const char *p = spec ? spec : "null"; *p; p++) { /* indented under its label */
            putchar(*p);
            if (*p == '\n') printf("            ");
        }
        printf("\n");
        free(spec);
    }
    json_decref(job);
    buffer_free(&raw);
    return 0;
}

/* ---- cancel, pause, resume ---- */

static int cmd_change(Client *c, int argc, char **argv) {
    const char *id, *action = current->name;
    int rc = only_id(argc, argv, &id);
    if (rc) return rc;
    char path[128];
    snprintf(path, sizeof path, "/jobs/%s/%s", id, action);
    json_t *job;
    Buffer raw = {0};
    if ((rc = client_call(c, "POST", path, NULL, 0, NULL, &job, &raw))) return rc;
    const char *state = json_text(json_object_get(job, "state"), "?");
    if (c->json) print_raw(&raw);
    else if (json_is_string(json_object_get(job, "request"))) /* 202: a running job stops at its next step */
        printf("%s: %s requested; the job is %s and stops at its next step%s\n", id, action, state,
               strcmp(action, "pause") == 0 ? " with a checkpoint" : "");
    else if (strcmp(action, "resume") == 0 && json_is_integer(json_object_get(job, "checkpoint_step")))
        printf("%s: %s; it resumes from step %ld\n", id, state,
               (long)json_integer_value(json_object_get(job, "checkpoint_step")));
    else
        printf("%s: %s\n", id, state);
    json_decref(job);
    buffer_free(&raw);
    return 0;
}

/* ---- watch ---- */

static int cmd_watch(Client *c, int argc, char **argv) {
    const char *id;
    int rc = only_id(argc, argv, &id);
    return rc ? rc : watch_job(c, id);
}

/* ---- metrics ---- */

static void csv_point(json_t *p) {
    const char *name = json_text(json_object_get(p, "name"), "");
    if (strpbrk(name, ",\"\r\n")) { /* quoted, quotes doubled */
        putchar('"');
        for (const char *q = name; *q; q++) {
            if (*q == '"') putchar('"');
            putchar(*q);
        }
        putchar('"');
    } else {
        fputs(name, stdout);
    }
    json_t *value = json_object_get(p, "value");
    printf(",%lld,", (long long)json_integer_value(json_object_get(p, "step")));
    if (json_is_number(value)) printf("%.9g", json_number_value(value)); /* null (not finite): empty */
    printf(",%.6f\n", json_number_value(json_object_get(p, "time")));
}

/* Where name is in the list of column names; appended when new. */
static size_t column_of(json_t *names, const char *name) {
    size_t j;
    json_t *known;
    json_array_foreach(names, j, known)
        if (strcmp(json_string_value(known), name) == 0) return j;
    json_array_append_new(names, json_string(name));
    return json_array_size(names) - 1;
}

/* One row per step, one column per metric (loss and lr first). Pages come in
 * step order and never split a step, so a row is a run of points. */
static void print_metrics_table(json_t *points) {
    json_t *names = json_array(), *p;
    size_t i, j;
    int has_loss = 0, has_lr = 0;
    json_array_foreach(points, i, p) {
        const char *name = json_text(json_object_get(p, "name"), "");
        has_loss |= strcmp(name, "loss") == 0;
        has_lr |= strcmp(name, "lr") == 0;
    }
    if (has_loss) column_of(names, "loss");
    if (has_lr) column_of(names, "lr");
    json_array_foreach(points, i, p) column_of(names, json_text(json_object_get(p, "name"), ""));
    size_t columns = json_array_size(names);
    json_t **row = calloc(columns, sizeof *row);
    if (!row) {
        fprintf(stderr, "distill: out of memory\n");
        exit(EXIT_ERROR);
    }
    printf("%8s", "step");
    json_array_foreach(names, j, p) printf("  %11s", json_string_value(p));
    printf("\n");
    for (i = 0; i < json_array_size(points);) {
        json_int_t step = json_integer_value(json_object_get(json_array_get(points, i), "step"));
        memset(row, 0, columns * sizeof *row);
        for (; i < json_array_size(points); i++) {
            p = json_array_get(points, i);
            if (json_integer_value(json_object_get(p, "step")) != step) break;
            row[column_of(names, json_text(json_object_get(p, "name"), ""))] = json_object_get(p, "value");
        }
        printf("%8lld", (long long)step);
        for (j = 0; j < columns; j++) {
            const char *name = json_string_value(json_array_get(names, j));
            int width = strlen(name) > 11 ? (int)strlen(name) : 11;
            char cell[64] = "";
            if (json_is_number(row[j])) snprintf(cell, sizeof cell, "%.6g", json_number_value(row[j]));
            else if (row[j]) snprintf(cell, sizeof cell, "nan"); /* null: not finite */
            printf("  %*s", width, cell);
        }
        printf("\n");
    }
    free(row);
    json_decref(names);
}

static int cmd_metrics(Client *c, int argc, char **argv) {
    const char *id = NULL, *name;
    char names[NAMES_MAX] = "";
    int csv = 0;
    for (int i = 0; i < argc; i++) {
        int m = option_value(argc, argv, &i, "--name", &name);
        if (m < 0) return usage_error("%s needs a metric name", argv[i]);
        if (m > 0) {
            size_t n = strlen(names);
            if (!name[0] || n + strlen(name) + 2 > sizeof names)
                return usage_error("--name %s: empty or too long", name);
            snprintf(names + n, sizeof names - n, "%s%s", n ? "," : "", name);
        } else if (strcmp(argv[i], "--csv") == 0) {
            csv = 1;
        } else if (is_option(argv[i])) {
            return usage_error("unknown option %s", argv[i]);
        } else if (id) {
            return usage_error("unexpected argument %s", argv[i]);
        } else {
            id = argv[i];
        }
    }
    if (!id) return usage_error("%s needs a job id", "metrics");
    int rc = client_check_id(id);
    if (rc) return rc;
    char *names_query = names[0] ? curl_easy_escape(c->curl, names, 0) : NULL;
    json_t *all = json_array();
    long after = -1;
    if (csv && !c->json) printf("name,step,value,time\n");
    for (;;) {
        char path[NAMES_MAX * 3 + 256];
        snprintf(path, sizeof path, "/jobs/%s/metrics?limit=%d&after_step=%ld%s%s", id, METRICS_PAGE_MAX, after,
                 names_query ? "&names=" : "", names_query ? names_query : "");
        json_t *page;
        if ((rc = client_call(c, "GET", path, NULL, 0, NULL, &page, NULL))) break;
        json_t *points = json_object_get(page, "points"), *p, *next = json_object_get(page, "next_after_step");
        size_t i;
        if (csv && !c->json) json_array_foreach(points, i, p) csv_point(p);
        else json_array_extend(all, points);
        int more = json_is_integer(next);
        if (more) after = (long)json_integer_value(next);
        json_decref(page);
        if (!more) break;
    }
    curl_free(names_query);
    if (!rc && c->json) {
        json_t *out = json_pack("{s:O,s:n}", "points", all, "next_after_step");
        print_json(out);
        json_decref(out);
    } else if (!rc && !csv) {
        if (json_array_size(all)) print_metrics_table(all);
        else fprintf(stderr, "distill: job %s has no %s%s yet\n", id, names[0] ? "points of " : "metrics", names);
    }
    json_decref(all);
    return rc;
}

/* ---- pull ---- */

typedef struct {
    CURL *curl;
    int fd;
    long status;
    Buffer error_body;
    uint64_t bytes;
    int write_errno;
} Download;

static size_t download_write(char *data, size_t size, size_t count, void *ctx) {
    Download *d = ctx;
    size_t total = size * count;
    if (!d->status) curl_easy_getinfo(d->curl, CURLINFO_RESPONSE_CODE, &d->status);
    if (d->status != 200) { /* an error body, not weights */
        if (d->error_body.size < 65536) buffer_append(&d->error_body, data, total);
        return total;
    }
    for (size_t done = 0; done < total;) {
        ssize_t n = write(d->fd, data + done, total - done);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) {
            d->write_errno = errno;
            return 0;
        }
        done += (size_t)n;
    }
    d->bytes += total;
    return total;
}

/* 8 bytes of little-endian header length, then a JSON object, inside the file. */
static int is_safetensors(int fd, uint64_t size) {
    unsigned char head[9];
    if (size < sizeof head || pread(fd, head, sizeof head, 0) != (ssize_t)sizeof head) return 0;
    uint64_t header = 0;
    for (int i = 7; i >= 0; i--) header = header << 8 | head[i];
    return header >= 2 && header <= size - 8 && head[8] == '{';
}

static int cmd_pull(Client *c, int argc, char **argv) {
    const char *id = NULL, *output = NULL;
    for (int i = 0; i < argc; i++) {
        int m;
        if ((m = option_value(argc, argv, &i, "-o", &output)) ||
            (m = option_value(argc, argv, &i, "--output", &output))) {
            if (m < 0) return usage_error("%s needs a file name", argv[i]);
        } else if (is_option(argv[i])) {
            return usage_error("unknown option %s", argv[i]);
        } else if (id) {
            return usage_error("unexpected argument %s", argv[i]);
        } else {
            id = argv[i];
        }
    }
    if (!id) return usage_error("%s needs a job id", "pull");
    int rc = client_check_id(id);
    if (rc) return rc;
    char default_output[128], temp[PATH_MAX];
    if (!output) {
        snprintf(default_output, sizeof default_output, "%s.safetensors", id);
        output = default_output;
    }
    if ((size_t)snprintf(temp, sizeof temp, "%s.partial-XXXXXX", output) >= sizeof temp) {
        fprintf(stderr, "distill: %s: name too long\n", output);
        return EXIT_ERROR;
    }
    Download d = {.curl = c->curl, .fd = mkstemp(temp)};
    if (d.fd < 0) {
        fprintf(stderr, "distill: cannot create %s: %s\n", temp, strerror(errno));
        return EXIT_ERROR;
    }
    mode_t mask = umask(0); /* mkstemp makes it 0600: give it the mode any new file gets */
    umask(mask);
    fchmod(d.fd, 0666 & ~mask);
    char url[sizeof c->url + 256];
    snprintf(url, sizeof url, "%s/api/v1/jobs/%s/weights", c->url, id);
    curl_easy_reset(c->curl);
    struct curl_slist *headers = NULL;
    client_configure(c, c->curl, c->errbuf, &headers);
    curl_easy_setopt(c->curl, CURLOPT_URL, url);
    curl_easy_setopt(c->curl, CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c->curl, CURLOPT_WRITEFUNCTION, download_write);
    curl_easy_setopt(c->curl, CURLOPT_WRITEDATA, &d);
    curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_LIMIT, 1L); /* no overall limit: weights can be large */
    curl_easy_setopt(c->curl, CURLOPT_LOW_SPEED_TIME, 60L);
    CURLcode result = curl_easy_perform(c->curl);
    curl_slist_free_all(headers);

    rc = EXIT_ERROR;
    if (d.write_errno) fprintf(stderr, "distill: cannot write %s: %s\n", temp, strerror(d.write_errno));
    else if (result != CURLE_OK) client_report_transport(c, c->curl, result, c->errbuf);
    else if (d.status != 200) client_report_status(c, d.status, d.error_body.data, d.error_body.size, NULL);
    else if (!is_safetensors(d.fd, d.bytes))
        fprintf(stderr, "distill: the daemon sent %llu bytes that are not a safetensors file\n",
                (unsigned long long)d.bytes);
    else if (fsync(d.fd) != 0) fprintf(stderr, "distill: cannot write %s: %s\n", temp, strerror(errno));
    else rc = 0;
    if (close(d.fd) != 0 && rc == 0) {
        fprintf(stderr, "distill: cannot write %s: %s\n", temp, strerror(errno));
        rc = EXIT_ERROR;
    }
    if (rc == 0 && rename(temp, output) != 0) {
        fprintf(stderr, "distill: cannot rename %s to %s: %s\n", temp, output, strerror(errno));
        rc = EXIT_ERROR;
    }
    buffer_free(&d.error_body);
    if (rc) {
        unlink(temp);
        return rc;
    }
    char directory[PATH_MAX];
    snprintf(directory, sizeof directory, "%s", output);
    int dir_fd = open(dirname(directory), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd >= 0) { /* the rename itself survives a crash */
        fsync(dir_fd);
        close(dir_fd);
    }
    if (c->json) {
        json_t *out = json_pack("{s:s,s:s,s:I}", "job", id, "path", output, "bytes", (json_int_t)d.bytes);
        print_json(out);
        json_decref(out);
    } else {
        printf("wrote %s (%llu bytes): the student weights of job %s\n", output, (unsigned long long)d.bytes, id);
    }
    return 0;
}

/* ---- health ---- */

static int cmd_health(Client *c, int argc, char **argv) {
    if (argc > 0) return usage_error(is_option(argv[0]) ? "unknown option %s" : "unexpected argument %s", argv[0]);
    json_t *health, *version = NULL;
    Buffer raw = {0};
    int rc = client_call(c, "GET", "/health", NULL, 0, NULL, &health, &raw);
    if (rc) return rc;
    if (c->json) {
        print_raw(&raw);
    } else {
        client_call(c, "GET", "/version", NULL, 0, NULL, &version, NULL);
        printf("distilld %s at %s: %s\n", json_text(json_object_get(version, "version"), "?"), c->url,
               json_text(json_object_get(health, "status"), "?"));
        static const char *const states[] = {"queued", "running", "paused", "succeeded", "failed", "canceled", NULL};
        json_t *jobs = json_object_get(health, "jobs");
        printf("jobs:");
        for (int i = 0; states[i]; i++)
            printf("%s %lld %s", i ? "," : "", (long long)json_integer_value(json_object_get(jobs, states[i])),
                   states[i]);
        printf("\n");
    }
    json_decref(health);
    json_decref(version);
    buffer_free(&raw);
    return 0;
}

static const Command commands[] = {
    {"submit", "SPEC.json [--wait]", "submit a job (- reads stdin); prints its id; --wait: then watch", cmd_submit},
    {"ls", "[--state S] [--limit N]", "jobs, newest first", cmd_ls},
    {"show", "ID", "one job: state, step, checkpoint, error, spec", cmd_show},
    {"watch", "ID", "a live progress line until the job ends", cmd_watch},
    {"cancel", "ID", "cancel a queued or running job", cmd_change},
    {"pause", "ID", "pause a running job at its next step (with a checkpoint)", cmd_change},
    {"resume", "ID", "queue a paused job again; it goes on from its checkpoint", cmd_change},
    {"metrics", "ID [--name N]... [--csv]", "every metric point (CSV: name,step,value,time)", cmd_metrics},
    {"pull", "ID [-o FILE]", "the student's weights (safetensors; default ID.safetensors)", cmd_pull},
    {"health", "", "the daemon's status and job counts", cmd_health},
    {NULL, NULL, NULL, NULL},
};

static void print_usage(FILE *to, int notes) {
    fputs(usage_head, to);
    for (const Command *cmd = commands; cmd->name; cmd++) {
        char head[96];
        snprintf(head, sizeof head, "%s %s", cmd->name, cmd->arguments);
        fprintf(to, "  %-34s %s\n", head, cmd->summary);
    }
    fputs(notes ? usage_notes : "\n(distill --help says more)\n", to);
}

static int run(int argc, char **argv, char **args) {
    const char *url = NULL, *token = NULL, *data_dir = NULL;
    int json = 0, help = 0, n = 0;
    for (int i = 1; i < argc; i++) { /* global options go anywhere */
        int m;
        if ((m = option_value(argc, argv, &i, "--url", &url)) ||
            (m = option_value(argc, argv, &i, "--token", &token)) ||
            (m = option_value(argc, argv, &i, "--data-dir", &data_dir))) {
            if (m < 0) return usage_error("%s needs a value", argv[i]);
        } else if (strcmp(argv[i], "--json") == 0) {
            json = 1;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            help = 1;
        } else {
            args[n++] = argv[i];
        }
    }
    if (help || (n > 0 && strcmp(args[0], "help") == 0)) {
        print_usage(stdout, 1);
        return EXIT_OK;
    }
    if (n == 0) return usage_error("%s", "no command given");
    for (const Command *cmd = commands; cmd->name; cmd++)
        if (strcmp(cmd->name, args[0]) == 0) current = cmd;
    if (!current) return usage_error(is_option(args[0]) ? "unknown option %s" : "unknown command \"%s\"", args[0]);
    Client client;
    int rc = client_init(&client, url, token, data_dir, json);
    if (!rc) rc = current->run(&client, n - 1, args + 1);
    client_free(&client);
    return rc;
}

int main(int argc, char **argv) {
    char **args = calloc((size_t)argc + 1, sizeof *args); /* argv without the global options */
    if (!args) return EXIT_ERROR;
    int rc = run(argc, argv, args);
    free(args);
    return rc;
}
