/* db.c - distilld's SQLite store (see db.h): schema migrations at open, jobs
 * and their state machine, metrics, checkpoints, crash recovery, events.
 *
 * How it works: one connection in serialized mode, shared by every thread.
 * Serialized mode makes each sqlite3_* call safe, but a transaction belongs to
 * the connection, not to a thread: two threads' BEGIN ... COMMIT would mix. So
 * every db_* function holds Db.lock from start to end; it is also what makes
 * sqlite3_errmsg, sqlite3_changes and last_insert_rowid refer to our own
 * statement. Every write runs in BEGIN IMMEDIATE ... COMMIT (or is a single
 * statement), and every read sees only committed data.
 *
 * Durability: PRAGMA synchronous=FULL (the WAL is fsynced at every commit)
 * for submissions, transitions, checkpoints, deletes and events. Metric
 * batches and progress updates commit with NORMAL: in WAL mode they survive a
 * crash of the process, only an OS crash can lose the latest few, and those
 * are after the last checkpoint (whose FULL commit syncs everything before
 * it), which db_recover deletes and the resumed run recomputes anyway.
 *
 * Event ids come from AUTOINCREMENT and commits are serialized by Db.lock, so
 * ids become visible in increasing order: a reader that has seen id N will
 * never later find a new event below N (what makes SSE resume exact).
 *
 * Ownership of results: db_jobs_list's array is malloc'd (db_job_free each
 * element, then free it); metric pages are one malloc'd array; checkpoint
 * lists are a malloc'd steps array and a malloc'd array of malloc'd paths. */
#include "db.h"
#include "util.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#define DB_BUSY_TIMEOUT_MS 5000
#define DB_JOBS_PAGE_MAX 500
#define DB_METRICS_PAGE_MAX 10000
#define DB_EVENTS_PAGE_MAX 1000
#define DB_MAX_METRIC_NAMES 256

struct Db {
    sqlite3 *conn;
    pthread_mutex_t lock;  /* held for the whole of every db_* call */
    int synchronous_full;  /* the connection's PRAGMA synchronous: 1 FULL, 0 NORMAL */
};

static const char *const db_states[] = {"queued", "running", "paused", "succeeded", "failed", "canceled", NULL};

/* The state machine of DESIGN.md section 5, plus running -> queued (graceful
 * shutdown and crash recovery put a running job back in the queue). */
static const struct {
    const char *from, *to;
} db_edges[] = {
    {"queued", "running"}, {"running", "succeeded"}, {"running", "failed"},   {"running", "paused"},
    {"paused", "queued"},  {"queued", "canceled"},   {"running", "canceled"}, {"running", "queued"},
};

static int is_state(const char *s) {
    for (int i = 0; db_states[i]; i++)
        if (strcmp(s, db_states[i]) == 0) return 1;
    return 0;
}

static int edge_is_legal(const char *from, const char *to) {
    for (size_t i = 0; i < sizeof db_edges / sizeof db_edges[0]; i++)
        if (strcmp(db_edges[i].from, from) == 0 && strcmp(db_edges[i].to, to) == 0) return 1;
    return 0;
}

static int is_terminal(const char *state) {
    return !strcmp(state, "succeeded") || !strcmp(state, "failed") || !strcmp(state, "canceled");
}

static double unix_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void copy_string(char *dst, size_t cap, const char *src) {
    snprintf(dst, cap, "%s", src ? src : "");
}

/* ---- statements ---------------------------------------------------------- */

/* An error naming the statement (its start) and SQLite's message. */
static int sql_fail(Db *db, const char *sql, char *err) {
    int len = (int)strlen(sql);
    set_error(err, "%.*s%s: %s", len > 60 ? 57 : len, sql, len > 60 ? "..." : "", sqlite3_errmsg(db->conn));
    return DB_ERROR;
}

/* Binds parameters 1, 2, ... as described by types: 't' a const char *
 * (NULL binds NULL), 'l' a long, 'd' a double. The values must outlive the
 * statement (SQLITE_STATIC): every statement here is finalized before its
 * function returns. */
static int bind_values(Db *db, sqlite3_stmt *st, const char *types, va_list ap, char *err) {
    for (int i = 0; types[i]; i++) {
        int rc;
        if (types[i] == 't') {
            const char *s = va_arg(ap, const char *);
            rc = s ? sqlite3_bind_text(st, i + 1, s, -1, SQLITE_STATIC) : sqlite3_bind_null(st, i + 1);
        } else if (types[i] == 'l') {
            rc = sqlite3_bind_int64(st, i + 1, (sqlite3_int64)va_arg(ap, long));
        } else if (types[i] == 'd') {
            rc = sqlite3_bind_double(st, i + 1, va_arg(ap, double));
        } else {
            return set_error(err, "internal error: bind type '%c'", types[i]);
        }
        if (rc != SQLITE_OK) return sql_fail(db, sqlite3_sql(st), err);
    }
    return 0;
}

/* Binds again, after sqlite3_reset, for the next row of a batch. */
static int bind(Db *db, sqlite3_stmt *st, char *err, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    int rc = bind_values(db, st, types, ap, err);
    va_end(ap);
    return rc;
}

static sqlite3_stmt *statement_v(Db *db, char *err, const char *sql, const char *types, va_list ap) {
    sqlite3_stmt *st = NULL;
    if (sqlite3_prepare_v2(db->conn, sql, -1, &st, NULL) != SQLITE_OK) {
        sql_fail(db, sql, err);
        sqlite3_finalize(st);
        return NULL;
    }
    if (bind_values(db, st, types, ap, err) != 0) {
        sqlite3_finalize(st);
        return NULL;
    }
    return st;
}

/* A prepared statement with its parameters bound, or NULL (err set). */
static sqlite3_stmt *statement(Db *db, char *err, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = statement_v(db, err, sql, types, ap);
    va_end(ap);
    return st;
}

/* SQLITE_ROW, SQLITE_DONE, DB_NOT_FOUND (a foreign key: every one of ours
 * names a job) or DB_ERROR. */
static int step(Db *db, sqlite3_stmt *st, char *err) {
    int rc = sqlite3_step(st);
    if (rc == SQLITE_ROW || rc == SQLITE_DONE) return rc;
    if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) {
        set_error(err, "no such job");
        return DB_NOT_FOUND;
    }
    return sql_fail(db, sqlite3_sql(st), err);
}

/* Runs a statement to completion, ignoring any rows: 0, DB_NOT_FOUND or DB_ERROR. */
static int execute(Db *db, char *err, const char *sql, const char *types, ...) {
    va_list ap;
    va_start(ap, types);
    sqlite3_stmt *st = statement_v(db, err, sql, types, ap);
    va_end(ap);
    if (!st) return DB_ERROR;
    int rc;
    while ((rc = step(db, st, err)) == SQLITE_ROW) {
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rc;
}

/* ---- transactions ------------------------------------------------------- */

static int set_synchronous(Db *db, int full, char *err) {
    if (db->synchronous_full == full) return 0;
    if (execute(db, err, full ? "PRAGMA synchronous = FULL" : "PRAGMA synchronous = NORMAL", "") != 0)
        return DB_ERROR;
    db->synchronous_full = full;
    return 0;
}

/* BEGIN IMMEDIATE: the write lock is taken now, so the reads that decide a
 * write cannot go stale before it (and no SQLITE_BUSY_SNAPSHOT later). */
static int tx_begin(Db *db, int durable, char *err) {
    if (set_synchronous(db, durable, err) != 0) return DB_ERROR;
    return execute(db, err, "BEGIN IMMEDIATE", "") == 0 ? 0 : DB_ERROR;
}

static void tx_rollback(Db *db) {
    if (sqlite3_get_autocommit(db->conn)) return; /* SQLite already rolled back */
    char ignored[ERR_LEN];
    execute(db, ignored, "ROLLBACK", "");
}

/* Commits if rc is 0, else rolls back; returns the outcome. */
static int tx_end(Db *db, int rc, char *err) {
    if (rc == 0 && execute(db, err, "COMMIT", "") != 0) rc = DB_ERROR;
    if (rc != 0) tx_rollback(db);
    return rc;
}

/* ---- rows --------------------------------------------------------------- */

#define JOB_COLUMNS                                                                                       \
    "id, kind, state, spec, step, total_steps, checkpoint_step, checkpoint_path, error, request, created_at, " \
    "updated_at"

static int job_from_row(sqlite3_stmt *st, DbJob *out, char *err) {
    memset(out, 0, sizeof *out);
    copy_string(out->id, sizeof out->id, (const char *)sqlite3_column_text(st, 0));
    copy_string(out->kind, sizeof out->kind, (const char *)sqlite3_column_text(st, 1));
    copy_string(out->state, sizeof out->state, (const char *)sqlite3_column_text(st, 2));
    const char *spec = (const char *)sqlite3_column_text(st, 3);
    out->spec_json = strdup(spec ? spec : "");
    if (!out->spec_json) return set_error(err, "out of memory reading job %s", out->id);
    out->step = (long)sqlite3_column_int64(st, 4);
    out->total_steps = (long)sqlite3_column_int64(st, 5);
    out->checkpoint_step = (long)sqlite3_column_int64(st, 6);
    copy_string(out->checkpoint_path, sizeof out->checkpoint_path, (const char *)sqlite3_column_text(st, 7));
    copy_string(out->error, sizeof out->error, (const char *)sqlite3_column_text(st, 8));
    copy_string(out->request, sizeof out->request, (const char *)sqlite3_column_text(st, 9));
    out->created_at = sqlite3_column_double(st, 10);
    out->updated_at = sqlite3_column_double(st, 11);
    return 0;
}

static int job_get_locked(Db *db, const char *id, DbJob *out, char *err) {
    memset(out, 0, sizeof *out);
    sqlite3_stmt *st = statement(db, err, "SELECT " JOB_COLUMNS " FROM jobs WHERE id = ?", "t", id);
    if (!st) return DB_ERROR;
    int rc = step(db, st, err);
    if (rc == SQLITE_ROW) {
        rc = job_from_row(st, out, err);
    } else if (rc == SQLITE_DONE) {
        rc = DB_NOT_FOUND;
        set_error(err, "no job %s", id);
    }
    sqlite3_finalize(st);
    return rc;
}

/* The state (and step, if wanted) of a job: 0, DB_NOT_FOUND or DB_ERROR. */
static int job_state(Db *db, const char *id, char state[DB_STATE_LEN], long *step_out, char *err) {
    sqlite3_stmt *st = statement(db, err, "SELECT state, step FROM jobs WHERE id = ?", "t", id);
    if (!st) return DB_ERROR;
    int rc = step(db, st, err);
    if (rc == SQLITE_ROW) {
        copy_string(state, DB_STATE_LEN, (const char *)sqlite3_column_text(st, 0));
        if (step_out) *step_out = (long)sqlite3_column_int64(st, 1);
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        rc = DB_NOT_FOUND;
        set_error(err, "no job %s", id);
    }
    sqlite3_finalize(st);
    return rc;
}

static int job_exists(Db *db, const char *id, char *err) {
    char state[DB_STATE_LEN];
    return job_state(db, id, state, NULL, err);
}

/* ---- events ------------------------------------------------------------- */

static int event_append_locked(Db *db, const char *job_id, const char *type, long step_number, const char *data_json,
                               long *id, char *err) {
    *id = 0;
    int rc = execute(db, err, "INSERT OR IGNORE INTO events (job_id, type, step, data, time) VALUES (?, ?, ?, ?, ?)",
                     "ttltd", job_id, type, step_number, data_json, unix_now());
    if (rc == DB_NOT_FOUND) set_error(err, "no job %s", job_id);
    if (rc != 0) return rc;
    if (sqlite3_changes(db->conn) > 0) *id = (long)sqlite3_last_insert_rowid(db->conn);
    return 0;
}

/* A "state" event: {"state": to, "from": old or null, "error": text or null, "step": n}. */
static int append_state_event(Db *db, const char *job_id, const char *to, const char *from, const char *error_text,
                              long step_number, char *err) {
    json_t *data = json_pack("{s:s, s:s?, s:s?, s:I}", "state", to, "from", from, "error", error_text, "step",
                             (json_int_t)step_number);
    char *text = data ? json_dumps(data, JSON_COMPACT) : NULL;
    json_decref(data);
    if (!text) return set_error(err, "cannot encode the state event of job %s", job_id);
    long id;
    int rc = event_append_locked(db, job_id, "state", -1, text, &id, err);
    free(text);
    return rc;
}

/* ---- jobs --------------------------------------------------------------- */

static int new_job_id(char id[DB_ID_LEN], char *err) {
    unsigned char bytes[8];
    size_t got = 0;
    while (got < sizeof bytes) {
        ssize_t n = getrandom(bytes + got, sizeof bytes - got, 0);
        if (n < 0) {
            if (errno == EINTR) continue;
            return set_error(err, "getrandom: %s", strerror(errno));
        }
        got += (size_t)n;
    }
    snprintf(id, DB_ID_LEN, "j%02x%02x%02x%02x%02x%02x%02x%02x", bytes[0], bytes[1], bytes[2], bytes[3], bytes[4],
             bytes[5], bytes[6], bytes[7]);
    return 0;
}

static int job_create_locked(Db *db, const char *kind, const char *spec_json, long total_steps, DbJob *out,
                             char *err) {
    if (!kind || (strcmp(kind, "train") != 0 && strcmp(kind, "distill") != 0))
        return set_error(err, "job kind must be \"train\" or \"distill\", not \"%s\"", kind ? kind : "(null)");
    if (!spec_json) return set_error(err, "a job needs a spec");
    if (total_steps < 0) return set_error(err, "total_steps is %ld, must be >= 0", total_steps);
    char id[DB_ID_LEN];
    if (tx_begin(db, 1, err) != 0) return DB_ERROR;
    int rc;
    /* 64 random bits: a collision is a curiosity, but cheap to rule out */
    for (int attempt = 0;; attempt++) {
        if ((rc = new_job_id(id, err)) != 0) break;
        rc = job_exists(db, id, err);
        if (rc != 0 || attempt == 8) break;
    }
    if (rc == 0) rc = set_error(err, "cannot find an unused job id");
    if (rc == DB_NOT_FOUND) {
        double now = unix_now();
        rc = execute(db, err,
                     "INSERT INTO jobs (id, seq, kind, state, spec, total_steps, created_at, updated_at) "
                     "VALUES (?, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?, 'queued', ?, ?, ?, ?)",
                     "tttldd", id, kind, spec_json, total_steps, now, now);
        if (rc == 0) rc = append_state_event(db, id, "queued", NULL, NULL, 0, err);
        if (rc == 0) rc = job_get_locked(db, id, out, err);
        if (rc != 0 && rc != DB_ERROR) rc = DB_ERROR; /* the job we just inserted must exist */
    }
    rc = tx_end(db, rc, err);
    if (rc != 0) db_job_free(out);
    return rc;
}

/* The heart of the state machine; runs inside the caller's transaction. */
static int transition_locked(Db *db, const char *id, const char *const *from, const char *to, const char *error_text,
                             char *err) {
    if (!is_state(to)) return set_error(err, "unknown job state \"%s\"", to);
    char old[DB_STATE_LEN];
    long step_number = 0;
    int rc = job_state(db, id, old, &step_number, err);
    if (rc != 0) return rc;
    int allowed = from == NULL;
    for (int i = 0; from && from[i]; i++)
        if (strcmp(from[i], old) == 0) allowed = 1;
    if (!allowed || !edge_is_legal(old, to)) {
        set_error(err, "job %s is %s: it cannot become %s", id, old, to);
        return DB_CONFLICT;
    }
    const char *stored_error = strcmp(to, "failed") == 0 ? (error_text ? error_text : "") : NULL;
    rc = execute(db, err, "UPDATE jobs SET state = ?, request = '', error = ?, updated_at = ? WHERE id = ?", "ttdt",
                 to, stored_error ? stored_error : "", unix_now(), id);
    if (rc == 0) rc = append_state_event(db, id, to, old, stored_error, step_number, err);
    return rc;
}

static int job_claim_next_locked(Db *db, DbJob *out, char *err) {
    memset(out, 0, sizeof *out);
    if (tx_begin(db, 1, err) != 0) return DB_ERROR;
    char id[DB_ID_LEN] = "";
    sqlite3_stmt *st = statement(db, err, "SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1", "");
    int rc = st ? step(db, st, err) : DB_ERROR;
    if (rc == SQLITE_ROW) {
        copy_string(id, sizeof id, (const char *)sqlite3_column_text(st, 0));
        rc = 0;
    } else if (rc == SQLITE_DONE) {
        rc = DB_NOT_FOUND;
        set_error(err, "no queued job");
    }
    sqlite3_finalize(st);
    static const char *const from_queued[] = {"queued", NULL};
    if (rc == 0) rc = transition_locked(db, id, from_queued, "running", NULL, err);
    if (rc == 0) rc = job_get_locked(db, id, out, err);
    rc = tx_end(db, rc, err);
    if (rc != 0) db_job_free(out);
    return rc;
}

static int jobs_count_locked(Db *db, const char *state, long *count, char *err) {
    *count = 0;
    if (!is_state(state)) return set_error(err, "unknown job state \"%s\"", state);
    sqlite3_stmt *st = statement(db, err, "SELECT COUNT(*) FROM jobs WHERE state = ?", "t", state);
    if (!st) return DB_ERROR;
    int rc = step(db, st, err);
    if (rc == SQLITE_ROW) {
        *count = (long)sqlite3_column_int64(st, 0);
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

static int jobs_list_locked(Db *db, const char *state, const char *cursor, int limit, DbJob **jobs, int *count,
                            char next[DB_ID_LEN], char *err) {
    /* a caller may pass the same buffer as cursor and next */
    char cursor_id[DB_ID_LEN];
    copy_string(cursor_id, sizeof cursor_id, cursor);
    cursor = cursor_id;
    *jobs = NULL;
    *count = 0;
    next[0] = 0;
    if (state && *state && !is_state(state)) return set_error(err, "unknown job state \"%s\"", state);
    if (limit < 1) limit = 1;
    if (limit > DB_JOBS_PAGE_MAX) limit = DB_JOBS_PAGE_MAX;
    long before_seq = LONG_MAX;
    if (*cursor) {
        sqlite3_stmt *st = statement(db, err, "SELECT seq FROM jobs WHERE id = ?", "t", cursor);
        int rc = st ? step(db, st, err) : DB_ERROR;
        if (rc == SQLITE_ROW) before_seq = (long)sqlite3_column_int64(st, 0);
        sqlite3_finalize(st);
        /* a cursor is the id of a job; once that job is deleted its place is
         * unknown, and guessing would repeat or skip jobs */
        if (rc == SQLITE_DONE) {
            set_error(err, "unknown cursor %s (no such job)", cursor);
            return DB_NOT_FOUND;
        }
        if (rc != SQLITE_ROW) return rc;
    }
    /* one row more than asked tells whether a further page exists */
    sqlite3_stmt *st =
        state && *state
            ? statement(db, err,
                        "SELECT " JOB_COLUMNS " FROM jobs WHERE state = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                        "tll", state, before_seq, (long)limit + 1)
            : statement(db, err, "SELECT " JOB_COLUMNS " FROM jobs WHERE seq < ? ORDER BY seq DESC LIMIT ?", "ll",
                        before_seq, (long)limit + 1);
    if (!st) return DB_ERROR;
    DbJob *list = NULL;
    int n = 0, capacity = 0, rc;
    while ((rc = step(db, st, err)) == SQLITE_ROW) {
        if (n == limit) { /* the extra row */
            copy_string(next, DB_ID_LEN, list[n - 1].id);
            rc = SQLITE_DONE;
            break;
        }
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            DbJob *grown = realloc(list, (size_t)capacity * sizeof *list);
            if (!grown) {
                rc = set_error(err, "out of memory listing jobs");
                break;
            }
            list = grown;
        }
        if ((rc = job_from_row(st, &list[n], err)) != 0) break;
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        for (int i = 0; i < n; i++) db_job_free(&list[i]);
        free(list);
        next[0] = 0;
        return rc;
    }
    *jobs = list;
    *count = n;
    return 0;
}

static int job_request_locked(Db *db, const char *id, const char *request, char *err) {
    if (!request || (strcmp(request, "pause") != 0 && strcmp(request, "cancel") != 0))
        return set_error(err, "a request is \"pause\" or \"cancel\", not \"%s\"", request ? request : "(null)");
    if (tx_begin(db, 1, err) != 0) return DB_ERROR;
    char state[DB_STATE_LEN];
    int rc = job_state(db, id, state, NULL, err);
    if (rc == 0 && strcmp(state, "running") != 0) {
        set_error(err, "job %s is %s, not running: nothing to %s", id, state, request);
        rc = DB_CONFLICT;
    }
    if (rc == 0)
        rc = execute(db, err, "UPDATE jobs SET request = ?, updated_at = ? WHERE id = ?", "tdt", request, unix_now(),
                     id);
    return tx_end(db, rc, err);
}

static int job_set_progress_locked(Db *db, const char *id, long step_number, char *err) {
    if (set_synchronous(db, 0, err) != 0) return DB_ERROR;
    int rc = execute(db, err, "UPDATE jobs SET step = ?, updated_at = ? WHERE id = ?", "ldt", step_number,
                     unix_now(), id);
    if (rc == 0 && sqlite3_changes(db->conn) == 0) {
        set_error(err, "no job %s", id);
        rc = DB_NOT_FOUND;
    }
    return rc;
}

/* The first unfinished job whose spec names `weights` as its teacher, into
 * user/user_state; 0 if there is one, SQLITE_DONE if none. */
static int teacher_user(Db *db, const char *weights, char user[DB_ID_LEN], char user_state[DB_STATE_LEN], char *err) {
    sqlite3_stmt *st = statement(db, err,
                                 "SELECT id, state FROM jobs WHERE state IN ('queued', 'running', 'paused') "
                                 "AND json_extract(spec, '$.teacher') = ? ORDER BY seq LIMIT 1",
                                 "t", weights);
    if (!st) return DB_ERROR;
    int rc = step(db, st, err);
    if (rc == SQLITE_ROW) {
        copy_string(user, DB_ID_LEN, (const char *)sqlite3_column_text(st, 0));
        copy_string(user_state, DB_STATE_LEN, (const char *)sqlite3_column_text(st, 1));
        rc = 0;
    }
    sqlite3_finalize(st);
    return rc;
}

static int job_delete_locked(Db *db, const char *id, const char *weights, char *err) {
    if (tx_begin(db, 1, err) != 0) return DB_ERROR;
    char state[DB_STATE_LEN];
    int rc = job_state(db, id, state, NULL, err);
    if (rc == 0 && !is_terminal(state)) {
        set_error(err, "job %s is %s: only succeeded, failed or canceled jobs can be deleted", id, state);
        rc = DB_CONFLICT;
    }
    char user[DB_ID_LEN], user_state[DB_STATE_LEN];
    if (rc == 0 && weights) {
        rc = teacher_user(db, weights, user, user_state, err);
        if (rc == 0) {
            set_error(err, "job %s is the teacher of job %s, which is %s: cancel it, or let it finish, first", id,
                      user, user_state);
            rc = DB_CONFLICT;
        } else if (rc == SQLITE_DONE) {
            rc = 0;
        }
    }
    /* metrics, checkpoints and events go with it (ON DELETE CASCADE) */
    if (rc == 0) rc = execute(db, err, "DELETE FROM jobs WHERE id = ?", "t", id);
    return tx_end(db, rc, err);
}

/* ---- metrics ------------------------------------------------------------ */

static int metrics_insert_locked(Db *db, const char *job_id, const DbMetric *points, int count, char *err) {
    if (count < 0 || (count > 0 && !points)) return set_error(err, "bad metric batch (%d points)", count);
    for (int i = 0; i < count; i++) {
        if (!memchr(points[i].name, 0, sizeof points[i].name) || !points[i].name[0])
            return set_error(err, "metric point %d of job %s has no name", i, job_id);
        if (points[i].step < 0)
            return set_error(err, "metric %s of job %s has step %ld", points[i].name, job_id, points[i].step);
    }
    if (count == 0) return 0;
    /* NORMAL is enough here: see the top of the file */
    if (tx_begin(db, 0, err) != 0) return DB_ERROR;
    sqlite3_stmt *st = statement(
        db, err, "INSERT OR IGNORE INTO metrics (job_id, name, step, value, time) VALUES (?, ?, ?, ?, ?)", "");
    int rc = st ? 0 : DB_ERROR;
    for (int i = 0; i < count && rc == 0; i++) {
        sqlite3_reset(st);
        /* a NaN value is bound as NULL (SQLite has no NaN) and read back as NaN */
        rc = bind(db, st, err, "ttldd", job_id, points[i].name, points[i].step, points[i].value, points[i].time);
        if (rc == 0) rc = step(db, st, err);
        if (rc == SQLITE_DONE) rc = 0;
        if (rc == DB_NOT_FOUND) set_error(err, "no job %s", job_id);
    }
    sqlite3_finalize(st);
    return tx_end(db, rc, err);
}

/* " AND name IN (?first, ...)" for num_names names (nothing for none). */
static int names_clause(char *sql, size_t size, int first, int num_names) {
    if (num_names == 0) return 0;
    int len = snprintf(sql, size, " AND name IN (");
    for (int i = 0; i < num_names; i++)
        len += snprintf(sql + len, size - (size_t)len, "%s?%d", i ? "," : "", first + i);
    return len + snprintf(sql + len, size - (size_t)len, ")");
}

/* Runs `sql`, a SELECT of (name, step, value, time) whose parameters are ?1
 * the job, ?2.. the `num_values` longs and ?names_at.. the names, and appends
 * its rows to *list (n used, *capacity allocated). */
static int metrics_rows(Db *db, const char *sql, const char *job_id, const long *values, int num_values,
                        const char *const *names, int num_names, int names_at, DbMetric **list, int *n,
                        int *capacity, char *err) {
    sqlite3_stmt *st = statement(db, err, sql, "t", job_id);
    if (!st) return DB_ERROR;
    for (int i = 0; i < num_values; i++) {
        if (sqlite3_bind_int64(st, 2 + i, values[i]) != SQLITE_OK) {
            sqlite3_finalize(st);
            return sql_fail(db, sql, err);
        }
    }
    for (int i = 0; i < num_names; i++) {
        if (sqlite3_bind_text(st, names_at + i, names[i], -1, SQLITE_STATIC) != SQLITE_OK) {
            sqlite3_finalize(st);
            return sql_fail(db, sql, err);
        }
    }
    int rc;
    while ((rc = step(db, st, err)) == SQLITE_ROW) {
        if (*n == *capacity) {
            int grown_capacity = *capacity ? 2 * *capacity : 256;
            DbMetric *grown = realloc(*list, (size_t)grown_capacity * sizeof *grown);
            if (!grown) {
                rc = set_error(err, "out of memory reading metrics of job %s", job_id);
                break;
            }
            *list = grown;
            *capacity = grown_capacity;
        }
        DbMetric *m = &(*list)[(*n)++];
        const unsigned char *name = sqlite3_column_text(st, 0);
        copy_string(m->name, sizeof m->name, name ? (const char *)name : "");
        m->step = (long)sqlite3_column_int64(st, 1);
        m->value = sqlite3_column_type(st, 2) == SQLITE_NULL ? NAN : sqlite3_column_double(st, 2);
        m->time = sqlite3_column_double(st, 3);
    }
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : rc;
}

/* Points of a job with step > after (or, if one_step, step == after), of the
 * given names, ordered by (step, name), at most row_limit (0: no limit). */
static int metrics_select(Db *db, const char *job_id, const char *const *names, int num_names, int one_step,
                          long after, int row_limit, DbMetric **points, int *count, char *err) {
    char sql[256 + 8 * DB_MAX_METRIC_NAMES];
    int len = snprintf(sql, sizeof sql, "SELECT name, step, value, time FROM metrics WHERE job_id = ?1 AND step %s ?2",
                       one_step ? "=" : ">");
    len += names_clause(sql + len, sizeof sql - (size_t)len, 4, num_names);
    snprintf(sql + len, sizeof sql - (size_t)len, " ORDER BY step, name LIMIT ?3");
    long values[2] = {after, row_limit > 0 ? row_limit : -1}; /* -1: no limit */
    DbMetric *list = NULL;
    int n = 0, capacity = 0;
    int rc = metrics_rows(db, sql, job_id, values, 2, names, num_names, 4, &list, &n, &capacity, err);
    if (rc != 0) {
        free(list);
        return rc;
    }
    *points = list;
    *count = n;
    return 0;
}

static int metric_order(const void *a, const void *b) {
    const DbMetric *x = a, *y = b;
    if (x->step != y->step) return x->step < y->step ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int check_names(const char *const *names, int num_names, char *err) {
    if (num_names < 0 || num_names > DB_MAX_METRIC_NAMES)
        return set_error(err, "%d metric names asked for, at most %d", num_names, DB_MAX_METRIC_NAMES);
    for (int i = 0; i < num_names; i++)
        if (!names[i]) return set_error(err, "metric name %d is NULL", i);
    return 0;
}

/* Three GROUP BY passes over the range, each on the (job_id, name, step) key:
 * the least value of each (name, bucket), the greatest, and the first null.
 * SQLite gives the bare columns (step, time) of a min()/max() aggregate from
 * the row that holds the extreme. The union is sorted and (name, step) pairs
 * picked twice are kept once. */
static int metrics_buckets_locked(Db *db, const char *job_id, const char *const *names, int num_names,
                                  long from_step, long to_step, int buckets, DbMetric **points, int *count,
                                  long *width, char *err) {
    *points = NULL;
    *count = 0;
    *width = 1;
    if (!names) num_names = 0;
    if (check_names(names, num_names, err)) return DB_ERROR;
    if (buckets < 1 || buckets > DB_METRICS_PAGE_MAX)
        return set_error(err, "%d buckets asked for, 1 to %d", buckets, DB_METRICS_PAGE_MAX);
    int rc = job_exists(db, job_id, err);
    if (rc != 0) return rc;
    char where[64 + 8 * DB_MAX_METRIC_NAMES];
    int len = snprintf(where, sizeof where, "job_id = ?1 AND step BETWEEN ?2 AND ?3");
    names_clause(where + len, sizeof where - (size_t)len, 5, num_names);

    /* the bucket width from the steps actually present in the range */
    char sql[512 + 8 * DB_MAX_METRIC_NAMES];
    snprintf(sql, sizeof sql, "SELECT '', MIN(step), COUNT(*), MAX(step) FROM metrics WHERE %s", where);
    long range[3] = {from_step, to_step, 0};
    DbMetric *list = NULL;
    int n = 0, capacity = 0;
    rc = metrics_rows(db, sql, job_id, range, 2, names, num_names, 5, &list, &n, &capacity, err);
    if (rc != 0 || n == 0 || list[0].value == 0) { /* an error, or no points in the range */
        free(list);
        return rc;
    }
    long lo = list[0].step, hi = (long)list[0].time;
    n = 0;
    long step_width = (hi - lo) / buckets + 1; /* buckets of step_width steps cover [lo, hi] */
    range[0] = lo;
    range[1] = hi;
    range[2] = step_width;
    static const char *const passes[3] = {
        "SELECT name, step, MIN(value), time FROM metrics WHERE %s GROUP BY name, (step - ?2) / ?4",
        "SELECT name, step, MAX(value), time FROM metrics WHERE %s GROUP BY name, (step - ?2) / ?4",
        "SELECT name, MIN(step), NULL, time FROM metrics WHERE %s AND value IS NULL GROUP BY name, (step - ?2) / ?4",
    };
    int extremes = 0; /* rows of the MIN and MAX passes */
    for (int pass = 0; pass < 3 && rc == 0; pass++) {
        snprintf(sql, sizeof sql, passes[pass], where);
        rc = metrics_rows(db, sql, job_id, range, 3, names, num_names, 5, &list, &n, &capacity, err);
        if (pass == 1) extremes = n;
    }
    if (rc != 0) {
        free(list);
        return rc;
    }
    /* a bucket of nulls only gives MIN and MAX a null from any of its rows:
     * drop those, the third pass has its first null */
    int kept = 0;
    for (int i = 0; i < n; i++)
        if (i >= extremes || !isnan(list[i].value)) list[kept++] = list[i];
    n = kept;
    qsort(list, (size_t)n, sizeof *list, metric_order);
    kept = 0;
    for (int i = 0; i < n; i++)
        if (kept == 0 || metric_order(&list[kept - 1], &list[i]) != 0) list[kept++] = list[i];
    *points = list;
    *count = kept;
    *width = step_width;
    return 0;
}

static int metrics_page_locked(Db *db, const char *job_id, const char *const *names, int num_names, long after_step,
                               int limit, DbMetric **points, int *count, char *err) {
    *points = NULL;
    *count = 0;
    if (!names) num_names = 0;
    if (check_names(names, num_names, err)) return DB_ERROR;
    if (limit < 1) limit = 1;
    if (limit > DB_METRICS_PAGE_MAX) limit = DB_METRICS_PAGE_MAX;
    int rc = job_exists(db, job_id, err);
    if (rc != 0) return rc;
    DbMetric *list;
    int n;
    rc = metrics_select(db, job_id, names, num_names, 0, after_step, limit + 1, &list, &n, err);
    if (rc != 0) return rc;
    if (n == limit + 1) {
        long split_step = list[limit].step;
        n = limit;
        while (n > 0 && list[n - 1].step == split_step) n--;
        if (n == 0) {
            /* one step alone has more than limit points: return all of it
             * (bounded by the number of metric names) rather than stall */
            free(list);
            return metrics_select(db, job_id, names, num_names, 1, split_step, 0, points, count, err);
        }
    }
    *points = list;
    *count = n;
    return 0;
}

/* ---- checkpoints -------------------------------------------------------- */

static int checkpoint_record_locked(Db *db, const char *job_id, long step_number, const char *path, char *err) {
    if (!path || !*path) return set_error(err, "checkpoint of job %s has no path", job_id);
    if (strlen(path) >= sizeof ((DbJob *)0)->checkpoint_path)
        return set_error(err, "checkpoint path of job %s is longer than %zu bytes", job_id,
                         sizeof ((DbJob *)0)->checkpoint_path - 1);
    if (step_number < 0) return set_error(err, "checkpoint of job %s at step %ld", job_id, step_number);
    if (tx_begin(db, 1, err) != 0) return DB_ERROR;
    double now = unix_now();
    int rc = execute(db, err, "INSERT OR REPLACE INTO checkpoints (job_id, step, path, created_at) VALUES (?, ?, ?, ?)",
                     "tltd", job_id, step_number, path, now);
    if (rc == DB_NOT_FOUND) set_error(err, "no job %s", job_id);
    /* the job points at its latest checkpoint, never back at an older one */
    if (rc == 0)
        rc = execute(db, err,
                     "UPDATE jobs SET checkpoint_step = ?, checkpoint_path = ?, updated_at = ? "
                     "WHERE id = ? AND checkpoint_step <= ?",
                     "ltdtl", step_number, path, now, job_id, step_number);
    return tx_end(db, rc, err);
}

static int checkpoints_list_locked(Db *db, const char *job_id, long **steps, char ***paths, int *count, char *err) {
    *steps = NULL;
    *paths = NULL;
    *count = 0;
    int rc = job_exists(db, job_id, err);
    if (rc != 0) return rc;
    sqlite3_stmt *st =
        statement(db, err, "SELECT step, path FROM checkpoints WHERE job_id = ? ORDER BY step", "t", job_id);
    if (!st) return DB_ERROR;
    long *step_list = NULL;
    char **path_list = NULL;
    int n = 0, capacity = 0;
    while ((rc = step(db, st, err)) == SQLITE_ROW) {
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            long *grown_steps = realloc(step_list, (size_t)capacity * sizeof *step_list);
            if (grown_steps) step_list = grown_steps;
            char **grown_paths = realloc(path_list, (size_t)capacity * sizeof *path_list);
            if (grown_paths) path_list = grown_paths;
            if (!grown_steps || !grown_paths) {
                rc = set_error(err, "out of memory listing checkpoints of job %s", job_id);
                break;
            }
        }
        const char *path = (const char *)sqlite3_column_text(st, 1);
        if (!(path_list[n] = strdup(path ? path : ""))) {
            rc = set_error(err, "out of memory listing checkpoints of job %s", job_id);
            break;
        }
        step_list[n++] = (long)sqlite3_column_int64(st, 0);
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        for (int i = 0; i < n; i++) free(path_list[i]);
        free(path_list);
        free(step_list);
        return rc;
    }
    *steps = step_list;
    *paths = path_list;
    *count = n;
    return 0;
}

/* ---- crash recovery ----------------------------------------------------- */

static int recover_locked(Db *db, DbRecovered *done, char *err) {
    *done = (DbRecovered){0, 0, 0};
    if (tx_begin(db, 1, err) != 0) return DB_ERROR;
    /* collect first: the updates below move rows out of the index being read */
    struct {
        char id[DB_ID_LEN];
        long checkpoint_step;
        char request[16];
    } *jobs = NULL;
    int n = 0, capacity = 0, rc;
    sqlite3_stmt *st = statement(
        db, err, "SELECT id, checkpoint_step, request FROM jobs WHERE state = 'running' ORDER BY seq", "");
    if (!st) return tx_end(db, DB_ERROR, err);
    while ((rc = step(db, st, err)) == SQLITE_ROW) {
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            void *grown = realloc(jobs, (size_t)capacity * sizeof *jobs);
            if (!grown) {
                rc = set_error(err, "out of memory recovering jobs");
                break;
            }
            jobs = grown;
        }
        copy_string(jobs[n].id, DB_ID_LEN, (const char *)sqlite3_column_text(st, 0));
        jobs[n].checkpoint_step = (long)sqlite3_column_int64(st, 1);
        copy_string(jobs[n++].request, sizeof jobs->request, (const char *)sqlite3_column_text(st, 2));
    }
    sqlite3_finalize(st);
    rc = rc == SQLITE_DONE ? 0 : rc;
    static const char *const from_running[] = {"running", NULL};
    DbRecovered counts = {0, 0, 0};
    for (int i = 0; i < n && rc == 0; i++) {
        /* a cancel asked for before the crash is carried out: the job keeps
         * what it recorded and never runs again */
        if (!strcmp(jobs[i].request, "cancel")) {
            rc = transition_locked(db, jobs[i].id, from_running, "canceled", NULL, err);
            counts.canceled++;
            continue;
        }
        /* the resumed run recomputes these steps; its metric and eval events
         * stay (appending them again is ignored), so the stream stays exact */
        rc = execute(db, err, "DELETE FROM metrics WHERE job_id = ? AND step > ?", "tl", jobs[i].id,
                     jobs[i].checkpoint_step);
        if (rc == 0)
            rc = execute(db, err, "UPDATE jobs SET step = MAX(checkpoint_step, 0) WHERE id = ?", "t", jobs[i].id);
        /* a pause asked for before the crash holds: the job waits for resume */
        int pause = !strcmp(jobs[i].request, "pause");
        if (rc == 0) rc = transition_locked(db, jobs[i].id, from_running, pause ? "paused" : "queued", NULL, err);
        if (pause)
            counts.paused++;
        else
            counts.requeued++;
    }
    free(jobs);
    rc = tx_end(db, rc, err);
    if (rc == 0) *done = counts;
    return rc;
}

/* ---- events ------------------------------------------------------------- */

static int event_append_checked(Db *db, const char *job_id, const char *type, long step_number,
                                const char *data_json, long *id, char *err) {
    *id = 0;
    int stepped = type && (strcmp(type, "metric") == 0 || strcmp(type, "eval") == 0);
    if (!type || (!stepped && strcmp(type, "state") != 0 && strcmp(type, "log") != 0))
        return set_error(err, "unknown event type \"%s\"", type ? type : "(null)");
    if (stepped && step_number < 0) return set_error(err, "a %s event needs a step >= 0", type);
    if (!stepped && step_number != -1) return set_error(err, "a %s event has no step (pass -1)", type);
    json_error_t json_error;
    json_t *data = json_loads(data_json ? data_json : "", 0, &json_error);
    int is_object = json_is_object(data);
    json_decref(data);
    if (!is_object) return set_error(err, "the data of a %s event must be a JSON object", type);
    if (set_synchronous(db, 1, err) != 0) return DB_ERROR;
    return event_append_locked(db, job_id, type, step_number, data_json, id, err);
}

static int events_after_locked(Db *db, const char *job_id, long after_id, long after_step, int limit,
                               DbEvent **events, int *count, char *err) {
    *events = NULL;
    *count = 0;
    if (limit < 1) limit = 1;
    if (limit > DB_EVENTS_PAGE_MAX) limit = DB_EVENTS_PAGE_MAX;
    int rc = job_exists(db, job_id, err);
    if (rc != 0) return rc;
    sqlite3_stmt *st = statement(db, err,
                                 "SELECT id, job_id, type, step, data, time FROM events "
                                 "WHERE job_id = ? AND id > ? AND (step < 0 OR step > ?) ORDER BY id LIMIT ?",
                                 "tlll", job_id, after_id, after_step < -1 ? -1L : after_step, (long)limit);
    if (!st) return DB_ERROR;
    DbEvent *list = NULL;
    int n = 0, capacity = 0;
    while ((rc = step(db, st, err)) == SQLITE_ROW) {
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 64;
            DbEvent *grown = realloc(list, (size_t)capacity * sizeof *list);
            if (!grown) {
                rc = set_error(err, "out of memory reading events of job %s", job_id);
                break;
            }
            list = grown;
        }
        DbEvent *e = &list[n];
        memset(e, 0, sizeof *e);
        e->id = (long)sqlite3_column_int64(st, 0);
        copy_string(e->job_id, sizeof e->job_id, (const char *)sqlite3_column_text(st, 1));
        copy_string(e->type, sizeof e->type, (const char *)sqlite3_column_text(st, 2));
        e->step = (long)sqlite3_column_int64(st, 3);
        const char *data = (const char *)sqlite3_column_text(st, 4);
        if (!(e->data_json = strdup(data ? data : "{}"))) {
            rc = set_error(err, "out of memory reading events of job %s", job_id);
            break;
        }
        e->time = sqlite3_column_double(st, 5);
        n++;
    }
    sqlite3_finalize(st);
    if (rc != SQLITE_DONE) {
        db_events_free(list, n);
        return rc;
    }
    *events = list;
    *count = n;
    return 0;
}

void db_events_free(DbEvent *events, int count) {
    if (!events) return;
    for (int i = 0; i < count; i++) free(events[i].data_json);
    free(events);
}

/* ---- migrations --------------------------------------------------------- */

typedef struct {
    int number;
    char name[256];
} Migration;

static int migration_compare(const void *a, const void *b) {
    return ((const Migration *)a)->number - ((const Migration *)b)->number;
}

/* NNNN_name.sql, name of letters, digits, '_' and '-'; returns NNNN or -1. */
static int migration_number(const char *file) {
    size_t len = strlen(file);
    if (len < 10 || len >= sizeof ((Migration *)0)->name) return -1;
    for (int i = 0; i < 4; i++)
        if (!isdigit((unsigned char)file[i])) return -1;
    if (file[4] != '_') return -1;
    for (size_t i = 5; i < len - 4; i++)
        if (!isalnum((unsigned char)file[i]) && file[i] != '_' && file[i] != '-') return -1;
    int number = atoi(file);
    return number >= 1 ? number : -1;
}

/* The *.sql files of dir, sorted, numbered 1, 2, 3 ... without a gap. */
static int migrations_list(const char *dir, Migration **out, int *count, char *err) {
    *out = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) return set_error(err, "cannot open the migrations directory %s: %s", dir, strerror(errno));
    Migration *list = NULL;
    int n = 0, capacity = 0, rc = 0;
    struct dirent *entry;
    while (rc == 0 && (entry = readdir(d))) {
        size_t len = strlen(entry->d_name);
        if (len < 4 || strcmp(entry->d_name + len - 4, ".sql") != 0) continue; /* READMEs, editor files */
        int number = migration_number(entry->d_name);
        if (number < 0) {
            rc = set_error(err, "migration %s/%s: the name must be NNNN_name.sql (NNNN from 0001)", dir,
                           entry->d_name);
            break;
        }
        if (n == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            Migration *grown = realloc(list, (size_t)capacity * sizeof *list);
            if (!grown) {
                rc = set_error(err, "out of memory listing %s", dir);
                break;
            }
            list = grown;
        }
        list[n].number = number;
        copy_string(list[n].name, sizeof list[n].name, entry->d_name);
        n++;
    }
    closedir(d);
    if (rc == 0 && n == 0) rc = set_error(err, "no migrations (NNNN_name.sql) in %s", dir);
    if (rc == 0) qsort(list, (size_t)n, sizeof *list, migration_compare);
    for (int i = 0; rc == 0 && i < n; i++) {
        if (list[i].number != i + 1)
            rc = i > 0 && list[i].number == list[i - 1].number
                     ? set_error(err, "migrations %s and %s in %s have the same number", list[i - 1].name,
                                 list[i].name, dir)
                     : set_error(err, "migration %s in %s: expected number %04d (no gaps from 0001)", list[i].name,
                                 dir, i + 1);
    }
    if (rc != 0) {
        free(list);
        return DB_ERROR;
    }
    *out = list;
    *count = n;
    return 0;
}

/* Migrations run inside distilld's transaction: one that commits or rolls
 * back itself would break the all-or-nothing upgrade, so it cannot prepare. */
static int migration_authorizer(void *unused, int action, const char *a, const char *b, const char *c,
                                const char *d) {
    (void)unused, (void)a, (void)b, (void)c, (void)d;
    return action == SQLITE_TRANSACTION || action == SQLITE_SAVEPOINT ? SQLITE_DENY : SQLITE_OK;
}

/* Runs every statement of one migration file; errors name the file and line. */
static int migration_run(Db *db, const char *dir, const char *name, char *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    unsigned char *bytes;
    size_t size;
    if (read_file_all(path, &bytes, &size, err) != 0) return DB_ERROR;
    const char *text = (const char *)bytes;
    if (strlen(text) != size) {
        free(bytes);
        return set_error(err, "migration %s contains a NUL byte", path);
    }
    const char *sql = text;
    int rc = 0;
    while (rc == 0 && *sql) {
        while (isspace((unsigned char)*sql)) sql++;
        int line = 1;
        for (const char *p = text; p < sql; p++) line += *p == '\n';
        sqlite3_stmt *st = NULL;
        const char *tail = NULL;
        int prepared = sqlite3_prepare_v2(db->conn, sql, -1, &st, &tail);
        if (prepared == SQLITE_OK && st) {
            int stepped;
            while ((stepped = sqlite3_step(st)) == SQLITE_ROW) {
            }
            if (stepped != SQLITE_DONE) prepared = stepped;
        }
        if (prepared != SQLITE_OK)
            rc = set_error(err, "migration %s failed at line %d: %s%s", path, line, sqlite3_errmsg(db->conn),
                           prepared == SQLITE_AUTH ? " (BEGIN, COMMIT and SAVEPOINT are not allowed: each migration "
                                                     "runs inside distilld's own transaction)"
                                                   : "");
        sqlite3_finalize(st);
        if (!st) break; /* only comments and blanks were left */
        sql = tail;
    }
    free(bytes);
    return rc;
}

static int pragma_integer(Db *db, const char *sql, long *value, char *err) {
    sqlite3_stmt *st = statement(db, err, sql, "");
    if (!st) return DB_ERROR;
    int rc = step(db, st, err);
    if (rc == SQLITE_ROW) *value = (long)sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    if (rc == SQLITE_ROW) return 0;
    return rc == SQLITE_DONE ? set_error(err, "%s returned nothing", sql) : rc;
}

/* Applies the migrations above user_version in one transaction that also
 * sets user_version: the schema is either all of the old or all of the new. */
static int migrate(Db *db, const char *dir, char *err) {
    long version = 0;
    if (pragma_integer(db, "PRAGMA user_version", &version, err) != 0) return DB_ERROR;
    Migration *list;
    int count;
    if (migrations_list(dir, &list, &count, err) != 0) return DB_ERROR;
    int newest = list[count - 1].number, rc = 0;
    if (version > newest) {
        rc = set_error(err,
                       "schema version %ld is newer than the newest migration in %s (%04d): the database was "
                       "written by a newer distilld, refusing to open it",
                       version, dir, newest);
    } else if (version < newest) {
        /* Off for the upgrade (as SQLite's docs advise for schema changes), so
         * a migration that rebuilds a table does not cascade-delete its
         * children; foreign_key_check then proves nothing is left dangling.
         * The pragma is a no-op inside a transaction, hence before BEGIN. */
        rc = execute(db, err, "PRAGMA foreign_keys = OFF", "");
        if (rc == 0) rc = tx_begin(db, 1, err);
        if (rc == 0) {
            sqlite3_set_authorizer(db->conn, migration_authorizer, NULL);
            for (int i = 0; i < count && rc == 0; i++)
                if (list[i].number > version) rc = migration_run(db, dir, list[i].name, err);
            sqlite3_set_authorizer(db->conn, NULL, NULL);
            if (rc == 0) {
                sqlite3_stmt *st = statement(db, err, "PRAGMA foreign_key_check", "");
                rc = st ? step(db, st, err) : DB_ERROR;
                if (rc == SQLITE_ROW)
                    rc = set_error(err, "after the migrations in %s, a row of table %s refers to a missing %s row", dir,
                                   (const char *)sqlite3_column_text(st, 0), (const char *)sqlite3_column_text(st, 2));
                else if (rc == SQLITE_DONE)
                    rc = 0;
                sqlite3_finalize(st);
            }
            if (rc == 0) {
                char sql[64]; /* PRAGMA takes no parameters; newest is our own integer */
                snprintf(sql, sizeof sql, "PRAGMA user_version = %d", newest);
                rc = execute(db, err, sql, "");
            }
            rc = tx_end(db, rc, err);
        }
    }
    free(list);
    return rc == 0 ? 0 : DB_ERROR;
}

/* ---- open / close ------------------------------------------------------- */

int db_open(Db **out, const char *path, const char *migrations_dir, char *err) {
    *out = NULL;
    if (!sqlite3_threadsafe()) return set_error(err, "this SQLite was built without thread support");
    Db *db = calloc(1, sizeof *db);
    if (!db) return set_error(err, "out of memory opening %s", path);
    if (pthread_mutex_init(&db->lock, NULL) != 0) {
        free(db);
        return set_error(err, "cannot create the database lock");
    }
    int rc = sqlite3_open_v2(path, &db->conn, SQLITE_OPEN_FULLMUTEX | SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
                             NULL);
    if (rc != SQLITE_OK) {
        set_error(err, "cannot open database %s: %s", path, db->conn ? sqlite3_errmsg(db->conn) : sqlite3_errstr(rc));
        db_close(db);
        return DB_ERROR;
    }
    sqlite3_extended_result_codes(db->conn, 1);
    if (sqlite3_busy_timeout(db->conn, DB_BUSY_TIMEOUT_MS) != SQLITE_OK) {
        set_error(err, "database %s: cannot set busy_timeout: %s", path, sqlite3_errmsg(db->conn));
        db_close(db);
        return DB_ERROR;
    }
    char message[ERR_LEN];
    rc = 0;
    sqlite3_stmt *st = statement(db, message, "PRAGMA journal_mode = WAL", "");
    if (!st || step(db, st, message) != SQLITE_ROW) {
        rc = DB_ERROR;
    } else {
        const char *mode = (const char *)sqlite3_column_text(st, 0);
        /* "memory" is what an in-memory database (":memory:") answers */
        if (!mode || (strcmp(mode, "wal") != 0 && strcmp(mode, "memory") != 0))
            rc = set_error(message, "journal_mode is %s, not wal", mode ? mode : "(null)");
    }
    sqlite3_finalize(st);
    db->synchronous_full = -1;
    if (rc == 0) rc = set_synchronous(db, 1, message);
    if (rc == 0) rc = migrate(db, migrations_dir, message);
    long foreign_keys = 0;
    if (rc == 0) rc = execute(db, message, "PRAGMA foreign_keys = ON", "");
    if (rc == 0) rc = pragma_integer(db, "PRAGMA foreign_keys", &foreign_keys, message);
    if (rc == 0 && foreign_keys != 1) rc = set_error(message, "this SQLite does not enforce foreign keys");
    if (rc != 0) {
        set_error(err, "database %s: %s", path, message);
        db_close(db);
        return DB_ERROR;
    }
    *out = db;
    return 0;
}

void db_close(Db *db) {
    if (!db) return;
    sqlite3_close_v2(db->conn); /* every statement is already finalized */
    pthread_mutex_destroy(&db->lock);
    free(db);
}

/* ---- the public functions: each holds the lock for all of its work ------ */

#define LOCKED(db, call)                 \
    do {                                 \
        pthread_mutex_lock(&(db)->lock); \
        int locked_rc = (call);          \
        pthread_mutex_unlock(&(db)->lock); \
        return locked_rc;                \
    } while (0)

int db_job_create(Db *db, const char *kind, const char *spec_json, long total_steps, DbJob *out, char *err) {
    memset(out, 0, sizeof *out);
    LOCKED(db, job_create_locked(db, kind, spec_json, total_steps, out, err));
}

int db_job_get(Db *db, const char *id, DbJob *out, char *err) {
    LOCKED(db, job_get_locked(db, id, out, err));
}

void db_job_free(DbJob *job) {
    if (!job) return;
    free(job->spec_json);
    job->spec_json = NULL;
}

int db_jobs_list(Db *db, const char *state, const char *cursor, int limit, DbJob **jobs, int *count,
                 char next[DB_ID_LEN], char *err) {
    LOCKED(db, jobs_list_locked(db, state, cursor, limit, jobs, count, next, err));
}

int db_jobs_count(Db *db, const char *state, long *count, char *err) {
    LOCKED(db, jobs_count_locked(db, state, count, err));
}

/* from == NULL allows any legal edge. */
int db_job_transition(Db *db, const char *id, const char *const *from, const char *to, const char *error_text,
                      char *err) {
    pthread_mutex_lock(&db->lock);
    int rc = tx_begin(db, 1, err);
    if (rc == 0) rc = tx_end(db, transition_locked(db, id, from, to, error_text, err), err);
    pthread_mutex_unlock(&db->lock);
    return rc;
}

int db_job_claim_next(Db *db, DbJob *out, char *err) {
    LOCKED(db, job_claim_next_locked(db, out, err));
}

int db_job_set_progress(Db *db, const char *id, long step_number, char *err) {
    LOCKED(db, job_set_progress_locked(db, id, step_number, err));
}

int db_job_request(Db *db, const char *id, const char *request, char *err) {
    LOCKED(db, job_request_locked(db, id, request, err));
}

int db_job_delete(Db *db, const char *id, const char *weights, char *err) {
    LOCKED(db, job_delete_locked(db, id, weights, err));
}

int db_metrics_insert(Db *db, const char *job_id, const DbMetric *points, int count, char *err) {
    LOCKED(db, metrics_insert_locked(db, job_id, points, count, err));
}

int db_metrics_page(Db *db, const char *job_id, const char *const *names, int num_names, long after_step, int limit,
                    DbMetric **points, int *count, char *err) {
    LOCKED(db, metrics_page_locked(db, job_id, names, num_names, after_step, limit, points, count, err));
}

int db_metrics_buckets(Db *db, const char *job_id, const char *const *names, int num_names, long from_step,
                       long to_step, int buckets, DbMetric **points, int *count, long *width, char *err) {
    LOCKED(db, metrics_buckets_locked(db, job_id, names, num_names, from_step, to_step, buckets, points, count, width,
                                      err));
}

int db_checkpoint_record(Db *db, const char *job_id, long step_number, const char *path, char *err) {
    LOCKED(db, checkpoint_record_locked(db, job_id, step_number, path, err));
}

int db_checkpoints_list(Db *db, const char *job_id, long **steps, char ***paths, int *count, char *err) {
    LOCKED(db, checkpoints_list_locked(db, job_id, steps, paths, count, err));
}

int db_recover(Db *db, DbRecovered *done, char *err) {
    LOCKED(db, recover_locked(db, done, err));
}

int db_event_append(Db *db, const char *job_id, const char *type, long step_number, const char *data_json, long *id,
                    char *err) {
    LOCKED(db, event_append_checked(db, job_id, type, step_number, data_json, id, err));
}

int db_events_after(Db *db, const char *job_id, long after_id, long after_step, int limit, DbEvent **events,
                    int *count, char *err) {
    LOCKED(db, events_after_locked(db, job_id, after_id, after_step, limit, events, count, err));
}
