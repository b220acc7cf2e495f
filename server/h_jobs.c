/* h_jobs.c - the jobs resource: submit, list, show, cancel, pause, resume,
 * delete, and a job's metrics, checkpoints and weights; health and version.
 *
 * A submitted spec is parsed by jobspec (errors name the key), its dataset and
 * teacher paths are resolved with realpath() and must lie inside a configured
 * root, and a teacher given as {"job": id} becomes that job's weights file, so
 * the stored spec (canonical JSON) is what a worker can run as it is. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "http.h"
#include "jobspec.h"
#include "log.h"
#include "model.h"
#include "onnx.h"
#include "util.h"

#define DISTILLD_VERSION "0.1.0"

static const char *const job_states[] = {"queued", "running", "paused", "succeeded", "failed", "canceled", NULL};

static int is_job_state(const char *s) {
    for (int i = 0; job_states[i]; i++)
        if (strcmp(s, job_states[i]) == 0) return 1;
    return 0;
}

static int is_id(const char *s) {
    size_t n = strlen(s);
    if (n == 0 || n >= DB_ID_LEN) return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') || (s[i] >= '0' && s[i] <= '9') ||
              s[i] == '_' || s[i] == '-'))
            return 0;
    return 1;
}

static void weights_path(const HttpServer *s, const char *id, char *out, size_t size) {
    snprintf(out, size, "%s/runs/%s/weights.safetensors", http_data_dir(s), id);
}

/* ---- health, version ---- */

enum MHD_Result h_health(HttpRequest *r) {
    json_t *counts = json_object();
    char err[ERR_LEN];
    for (int i = 0; job_states[i]; i++) {
        long total;
        int rc = db_jobs_count(r->cfg->db, job_states[i], &total, err);
        if (rc) {
            json_decref(counts);
            return http_reply_db_error(r, rc, "health", err);
        }
        json_object_set_new(counts, job_states[i], json_integer(total));
    }
    return http_reply_json(r, MHD_HTTP_OK, json_pack("{s:s,s:o}", "status", "ok", "jobs", counts));
}

enum MHD_Result h_version(HttpRequest *r) {
    return http_reply_json(r, MHD_HTTP_OK, json_pack("{s:s}", "version", DISTILLD_VERSION));
}

/* ---- submit ---- */

/* Resolves path (relative to the data directory) into resolved and checks it
 * lies inside a root. 0 ok; 1 outside the roots; 2 unusable (missing...). */
static int confine_path(const HttpServer *s, const char *key, const char *path, char resolved[PATH_MAX], char *err) {
    for (const char *p = path; *p;) { /* refuse ".." before resolving: no probing outside the roots */
        size_t n = strcspn(p, "/");
        if (n == 2 && p[0] == '.' && p[1] == '.') {
            set_error(err, "%s: \"..\" is not allowed in paths", key);
            return 1;
        }
        p += n;
        while (*p == '/') p++;
    }
    char joined[PATH_MAX * 2];
    if (path[0] == '/') snprintf(joined, sizeof joined, "%s", path);
    else snprintf(joined, sizeof joined, "%s/%s", http_data_dir(s), path);
    if (!realpath(joined, resolved)) {
        set_error(err, "%s: %s: %s", key, path, strerror(errno));
        return 2;
    }
    const char *const *roots = http_path_roots(s);
    for (int i = 0; roots[i]; i++) {
        size_t n = strlen(roots[i]);
        if (strcmp(roots[i], "/") == 0) return 0;
        if (strncmp(resolved, roots[i], n) == 0 && (resolved[n] == 0 || resolved[n] == '/')) return 0;
    }
    char list[1024] = "";
    for (int i = 0; roots[i]; i++) {
        size_t n = strlen(list);
        snprintf(list + n, sizeof list - n, "%s%s", i ? ", " : "", roots[i]);
    }
    set_error(err, "%s: %s is outside the allowed directories (%s)", key, path, list);
    return 1;
}

static enum MHD_Result reply_path_error(HttpRequest *r, int rc, const char *err) {
    if (rc == 1) return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "path_not_allowed", "%s", err);
    return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec", "%s", err);
}

/* Checks path is inside a root and of the wanted type (S_IFDIR or S_IFREG),
 * then writes the resolved path back into the spec. */
static int resolve_spec_path(HttpRequest *r, const char *key, char *path, mode_t type, enum MHD_Result *reply) {
    char resolved[PATH_MAX], err[ERR_LEN];
    int rc = confine_path(r->server, key, path, resolved, err);
    if (rc) {
        *reply = reply_path_error(r, rc, err);
        return -1;
    }
    struct stat st;
    if (stat(resolved, &st) != 0 || (st.st_mode & S_IFMT) != type) {
        *reply = http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec", "%s: %s is not a %s", key, path,
                                  type == S_IFDIR ? "directory" : "file");
        return -1;
    }
    if (strlen(resolved) >= SPEC_PATH_MAX) {
        *reply = http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec", "%s: the resolved path is too long", key);
        return -1;
    }
    snprintf(path, SPEC_PATH_MAX, "%s", resolved);
    return 0;
}

/* {"job": id}: a train job that succeeded; the spec gets its weights file. */
static int resolve_teacher_job(HttpRequest *r, JobSpec *spec, enum MHD_Result *reply) {
    const char *id = spec->teacher_job;
    if (!is_id(id)) {
        *reply = http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec", "teacher.job: \"%s\" is not a job id", id);
        return -1;
    }
    DbJob teacher;
    char err[ERR_LEN];
    int rc = db_job_get(r->cfg->db, id, &teacher, err);
    if (rc == DB_NOT_FOUND) {
        *reply = http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec", "teacher.job: no job %s", id);
        return -1;
    }
    if (rc) {
        *reply = http_reply_db_error(r, rc, "teacher.job", err);
        return -1;
    }
    if (strcmp(teacher.kind, "train") != 0 || strcmp(teacher.state, "succeeded") != 0) {
        *reply = http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec",
                                  "teacher.job: job %s is a %s job in state %s; a teacher must be a train job that "
                                  "succeeded", id, teacher.kind, teacher.state);
        db_job_free(&teacher);
        return -1;
    }
    db_job_free(&teacher);
    char path[PATH_MAX];
    weights_path(r->server, id, path, sizeof path);
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode) || strlen(path) >= SPEC_PATH_MAX) {
        *reply = http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec", "teacher.job: job %s has no weights file",
                                  id);
        return -1;
    }
    snprintf(spec->teacher, sizeof spec->teacher, "%s", path);
    spec->teacher_job[0] = 0; /* jobspec takes a weights file or a job, not both */
    return 0;
}

enum MHD_Result h_jobs_create(HttpRequest *r) {
    if (!r->body || r->body_size == 0)
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_json", "the request body must be a job spec (JSON)");
    json_error_t jerr;
    json_t *root = json_loadb(r->body, r->body_size, JSON_REJECT_DUPLICATES, &jerr);
    if (!root)
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_json", "the body is not valid JSON: %s (line %d, column %d)",
                                jerr.text, jerr.line, jerr.column);
    JobSpec spec;
    char err[ERR_LEN];
    int rc = jobspec_parse_json(root, &spec, err);
    json_decref(root);
    if (rc) return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "invalid_spec", "%s", err);

    enum MHD_Result reply;
    if (spec.dataset.path[0] && resolve_spec_path(r, "dataset.path", spec.dataset.path, S_IFDIR, &reply)) return reply;
    if (spec.teacher[0] && resolve_spec_path(r, "teacher", spec.teacher, S_IFREG, &reply)) return reply;
    if (spec.teacher_job[0] && resolve_teacher_job(r, &spec, &reply)) return reply;

    char *spec_json = jobspec_to_json(&spec);
    if (!spec_json) return http_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", "cannot encode the spec");
    DbJob job;
    rc = db_job_create(r->cfg->db, spec.kind == JOB_DISTILL ? "distill" : "train", spec_json,
                       spec.have_epochs ? 0 : spec.steps, &job, err);
    free(spec_json);
    if (rc) return http_reply_db_error(r, rc, "submit", err);
    char location[128];
    snprintf(location, sizeof location, "/api/v1/jobs/%s", job.id);
    struct MHD_Response *response = http_json_response(http_job_json(&job));
    db_job_free(&job);
    if (response) MHD_add_response_header(response, MHD_HTTP_HEADER_LOCATION, location);
    return http_reply(r, MHD_HTTP_CREATED, response);
}

/* ---- list, show ---- */

enum MHD_Result h_jobs_list(HttpRequest *r) {
    const char *state = http_query(r, "state");
    const char *cursor = http_query(r, "cursor");
    if (state && !is_job_state(state))
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
                                "state: must be one of queued, running, paused, succeeded, failed, canceled");
    if (cursor && cursor[0] && !is_id(cursor))
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "cursor: not a cursor this API gave");
    long limit;
    enum MHD_Result reply;
    if (http_query_long(r, "limit", 1, 500, 50, &limit, &reply)) return reply;
    DbJob *jobs;
    int count;
    char next[DB_ID_LEN], err[ERR_LEN];
    int rc = db_jobs_list(r->cfg->db, state && state[0] ? state : NULL, cursor ? cursor : "", (int)limit, &jobs, &count,
                          next, err);
    if (rc == DB_NOT_FOUND) return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "cursor: %s", err);
    if (rc) return http_reply_db_error(r, rc, "jobs", err);
    json_t *list = json_array();
    for (int i = 0; i < count; i++) {
        json_array_append_new(list, http_job_json(&jobs[i]));
        db_job_free(&jobs[i]);
    }
    free(jobs);
    return http_reply_json(r, MHD_HTTP_OK,
                           json_pack("{s:o,s:o}", "jobs", list, "next_cursor", next[0] ? json_string(next) : json_null()));
}

enum MHD_Result h_job_get(HttpRequest *r) {
    DbJob job;
    char err[ERR_LEN];
    int rc = db_job_get(r->cfg->db, r->id, &job, err);
    if (rc) return http_reply_db_error(r, rc, r->id, err);
    json_t *body = http_job_json(&job);
    db_job_free(&job);
    return http_reply_json(r, MHD_HTTP_OK, body);
}

/* ---- state changes ---- */

/* The job as it is now, with `status`; or 409 naming its state when it was
 * not in one the action applies to. */
static enum MHD_Result reply_job(HttpRequest *r, unsigned status, const char *action, int conflict) {
    DbJob job;
    char err[ERR_LEN];
    int rc = db_job_get(r->cfg->db, r->id, &job, err);
    if (rc) return http_reply_db_error(r, rc, r->id, err);
    if (conflict) {
        enum MHD_Result reply = http_reply_error(r, MHD_HTTP_CONFLICT, "conflict", "cannot %s job %s: it is %s", action,
                                                 r->id, job.state);
        db_job_free(&job);
        return reply;
    }
    json_t *body = http_job_json(&job);
    db_job_free(&job);
    return http_reply_json(r, status, body);
}

enum MHD_Result h_job_cancel(HttpRequest *r) {
    static const char *const from[] = {"queued", NULL};
    char err[ERR_LEN];
    int rc = db_job_transition(r->cfg->db, r->id, from, "canceled", NULL, err);
    if (rc == 0) return reply_job(r, MHD_HTTP_OK, "cancel", 0);
    if (rc != DB_CONFLICT) return http_reply_db_error(r, rc, r->id, err);
    /* not queued: running (or claimed meanwhile) gets asked to stop */
    rc = db_job_request(r->cfg->db, r->id, "cancel", err);
    if (rc == 0) return reply_job(r, MHD_HTTP_ACCEPTED, "cancel", 0);
    if (rc == DB_CONFLICT) return reply_job(r, 0, "cancel", 1);
    return http_reply_db_error(r, rc, r->id, err);
}

enum MHD_Result h_job_pause(HttpRequest *r) {
    char err[ERR_LEN];
    int rc = db_job_request(r->cfg->db, r->id, "pause", err);
    if (rc == 0) return reply_job(r, MHD_HTTP_ACCEPTED, "pause", 0);
    if (rc == DB_CONFLICT) return reply_job(r, 0, "pause", 1);
    return http_reply_db_error(r, rc, r->id, err);
}

enum MHD_Result h_job_resume(HttpRequest *r) {
    static const char *const from[] = {"paused", NULL};
    char err[ERR_LEN];
    int rc = db_job_transition(r->cfg->db, r->id, from, "queued", NULL, err);
    if (rc == 0) return reply_job(r, MHD_HTTP_OK, "resume", 0);
    if (rc == DB_CONFLICT) return reply_job(r, 0, "resume", 1);
    return http_reply_db_error(r, rc, r->id, err);
}

/* Removes what is inside the directory open as dir_fd, never following a
 * symbolic link (a link is removed, not what it names). */
static int remove_tree_at(int dir_fd, int depth) {
    DIR *dir = fdopendir(dir_fd);
    if (!dir) {
        close(dir_fd);
        return -1;
    }
    int rc = 0;
    struct dirent *entry;
    while ((entry = readdir(dir))) {
        const char *name = entry->d_name;
        if (strcmp(name, ".") == 0 || strcmp(name, "..") == 0) continue;
        if (unlinkat(dirfd(dir), name, 0) == 0) continue;
        if (errno != EISDIR && errno != EPERM) {
            rc = -1;
            continue;
        }
        int child = depth < 8 ? openat(dirfd(dir), name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC) : -1;
        if (child < 0 || remove_tree_at(child, depth + 1) != 0 || unlinkat(dirfd(dir), name, AT_REMOVEDIR) != 0) rc = -1;
    }
    closedir(dir);
    return rc;
}

static int remove_run_dir(const HttpServer *s, const char *id) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/runs/%s", http_data_dir(s), id);
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0 && (errno == ELOOP || errno == ENOTDIR)) return unlink(path); /* a link or file: not what it names */
    if (fd < 0) return errno == ENOENT ? 0 : -1;
    if (remove_tree_at(fd, 0) != 0) return -1;
    return rmdir(path) == 0 || errno == ENOENT ? 0 : -1;
}

enum MHD_Result h_job_delete(HttpRequest *r) {
    char err[ERR_LEN], weights[PATH_MAX];
    weights_path(r->server, r->id, weights, sizeof weights);
    int rc = db_job_delete(r->cfg->db, r->id, weights, err);
    if (rc == DB_CONFLICT) return http_reply_error(r, MHD_HTTP_CONFLICT, "conflict", "cannot delete: %s", err);
    if (rc) return http_reply_db_error(r, rc, r->id, err);
    if (remove_run_dir(r->server, r->id) != 0)
        log_msg(LOG_WARN, "job %s deleted, but its run directory could not be removed fully", r->id);
    return http_reply(r, MHD_HTTP_NO_CONTENT, MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT));
}

/* ---- metrics, checkpoints, weights ---- */

#define METRIC_NAMES_MAX 32

/* The job must exist: an unknown id is 404, not an empty list. */
static int job_exists(HttpRequest *r, enum MHD_Result *reply) {
    DbJob job;
    char err[ERR_LEN];
    int rc = db_job_get(r->cfg->db, r->id, &job, err);
    if (rc) {
        *reply = http_reply_db_error(r, rc, r->id, err);
        return 0;
    }
    db_job_free(&job);
    return 1;
}

static json_t *metric_points_json(const DbMetric *points, int count) {
    json_t *list = json_array();
    for (int i = 0; i < count; i++) { /* a NaN or infinite value (a diverged loss) is null */
        json_t *value = isfinite(points[i].value) ? json_real(points[i].value) : json_null();
        json_array_append_new(list, json_pack("{s:s,s:I,s:o,s:f}", "name", points[i].name, "step",
                                              (json_int_t)points[i].step, "value", value, "time", points[i].time));
    }
    return list;
}

/* ?buckets=N[&from_step=A][&to_step=B]: downsampled for display
 * (db_metrics_buckets), in the same point shape, with the bucket width. */
static enum MHD_Result metrics_buckets(HttpRequest *r, const char *const *names, int num_names) {
    enum MHD_Result reply;
    long buckets, from_step, to_step;
    if (http_query(r, "after_step") || http_query(r, "limit"))
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
                                "buckets: not with after_step or limit (a downsampled range is one answer; "
                                "use from_step and to_step)");
    if (http_query_long(r, "buckets", 1, 10000, 1, &buckets, &reply)) return reply;
    if (http_query_long(r, "from_step", 0, 4000000000000000000L, 0, &from_step, &reply)) return reply;
    if (http_query_long(r, "to_step", 0, 4000000000000000000L, 4000000000000000000L, &to_step, &reply)) return reply;
    if (to_step < from_step)
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "to_step: %ld is before from_step %ld",
                                to_step, from_step);
    DbMetric *points;
    int count;
    long width;
    char err[ERR_LEN];
    int rc = db_metrics_buckets(r->cfg->db, r->id, names, num_names, from_step, to_step, (int)buckets, &points, &count,
                                &width, err);
    if (rc) return http_reply_db_error(r, rc, r->id, err);
    json_t *list = metric_points_json(points, count);
    free(points);
    return http_reply_json(r, MHD_HTTP_OK,
                           json_pack("{s:o,s:I,s:o}", "points", list, "bucket_steps", (json_int_t)width,
                                     "next_after_step", json_null()));
}

/* Keyset-paged on step: a page never splits a step (db_metrics_page), so the
 * next page (after next_after_step) starts on a whole step and each (name,
 * step) comes once. next_after_step is null when nothing follows yet. With
 * buckets=N, one downsampled answer instead (metrics_buckets). */
enum MHD_Result h_job_metrics(HttpRequest *r) {
    enum MHD_Result reply;
    long after_step, limit;
    char names_text[METRIC_NAMES_MAX * 32] = "";
    const char *names[METRIC_NAMES_MAX];
    int num_names = 0;
    const char *names_query = http_query(r, "names");
    if (names_query && names_query[0]) {
        if (strlen(names_query) >= sizeof names_text)
            return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request", "names: too long");
        snprintf(names_text, sizeof names_text, "%s", names_query);
        for (char *p = names_text;;) {
            char *comma = strchr(p, ',');
            if (comma) *comma = 0;
            size_t n = strlen(p);
            if (n == 0 || n >= sizeof ((DbMetric *)0)->name || num_names == METRIC_NAMES_MAX)
                return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
                                        "names: a comma-separated list of up to %d metric names", METRIC_NAMES_MAX);
            names[num_names++] = p;
            if (!comma) break;
            p = comma + 1;
        }
    }
    if (http_query(r, "buckets")) return metrics_buckets(r, names, num_names);
    if (http_query_long(r, "after_step", -1, 4000000000000000000L, -1, &after_step, &reply)) return reply;
    if (http_query_long(r, "limit", 1, 10000, 1000, &limit, &reply)) return reply;
    DbMetric *points;
    int count;
    char err[ERR_LEN];
    int rc = db_metrics_page(r->cfg->db, r->id, names, num_names, after_step, (int)limit, &points, &count, err);
    if (rc) return http_reply_db_error(r, rc, r->id, err);
    /* the store ends a page on a step boundary; one more read says whether
     * anything follows the page's last step */
    long next = -1;
    if (count > 0) {
        DbMetric *more;
        int more_count;
        rc = db_metrics_page(r->cfg->db, r->id, names, num_names, points[count - 1].step, 1, &more, &more_count, err);
        if (rc) {
            free(points);
            return http_reply_db_error(r, rc, r->id, err);
        }
        free(more);
        if (more_count > 0) next = points[count - 1].step;
    }
    json_t *list = metric_points_json(points, count);
    free(points);
    return http_reply_json(r, MHD_HTTP_OK,
                           json_pack("{s:o,s:o}", "points", list, "next_after_step",
                                     next >= 0 ? json_integer(next) : json_null()));
}

enum MHD_Result h_job_checkpoints(HttpRequest *r) {
    long *steps;
    char **paths, err[ERR_LEN];
    int count;
    int rc = db_checkpoints_list(r->cfg->db, r->id, &steps, &paths, &count, err);
    if (rc) return http_reply_db_error(r, rc, r->id, err);
    json_t *list = json_array();
    for (int i = 0; i < count; i++) {
        json_array_append_new(list, json_pack("{s:I,s:s}", "step", (json_int_t)steps[i], "path", paths[i]));
        free(paths[i]);
    }
    free(paths);
    free(steps);
    return http_reply_json(r, MHD_HTTP_OK, json_pack("{s:o}", "checkpoints", list));
}

/* ?format=onnx: the weights file loaded and encoded as ONNX (core/onnx.h),
 * per request (milliseconds for a student, about a second for an R50x1);
 * format=safetensors or no format: the file as it is. */
enum MHD_Result h_job_weights(HttpRequest *r) {
    const char *format = http_query(r, "format");
    int onnx = format && strcmp(format, "onnx") == 0;
    if (format && format[0] && !onnx && strcmp(format, "safetensors") != 0)
        return http_reply_error(r, MHD_HTTP_BAD_REQUEST, "bad_request",
                                "format: must be safetensors or onnx, got \"%.64s\"", format);
    enum MHD_Result reply;
    if (!job_exists(r, &reply)) return reply;
    char path[PATH_MAX];
    weights_path(r->server, r->id, path, sizeof path);
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        if (fd >= 0) close(fd);
        return http_reply_error(r, MHD_HTTP_NOT_FOUND, "not_found", "job %s has no weights yet", r->id);
    }
    struct MHD_Response *response;
    if (onnx) {
        close(fd);
        char err[ERR_LEN];
        Model *m = NULL;
        unsigned char *data = NULL;
        size_t size = 0;
        int rc = model_load(&m, path, 1, err);
        if (!rc) rc = onnx_encode(m, &data, &size, err);
        model_free(m);
        if (rc) return http_reply_error(r, MHD_HTTP_INTERNAL_SERVER_ERROR, "internal", "job %s: %s", r->id, err);
        response = MHD_create_response_from_buffer(size, data, MHD_RESPMEM_MUST_FREE);
        if (!response) free(data);
    } else {
        response = MHD_create_response_from_fd64((uint64_t)st.st_size, fd);
        if (!response) close(fd);
    }
    if (!response) return MHD_NO;
    char disposition[128];
    snprintf(disposition, sizeof disposition, "attachment; filename=\"%s.%s\"", r->id, onnx ? "onnx" : "safetensors");
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
    MHD_add_response_header(response, MHD_HTTP_HEADER_CONTENT_DISPOSITION, disposition);
    return http_reply(r, MHD_HTTP_OK, response);
}
