/* db.h - distilld's SQLite store: jobs and their state machine, metrics,
 * checkpoints and the event log the API streams.
 *
 * One connection, opened in serialized mode and shared by every thread.
 * journal_mode=WAL, busy_timeout, foreign_keys=ON; migrations/NNNN_*.sql are
 * applied at open, in order, in one transaction that also sets user_version.
 * Every statement is prepared with bound parameters. State transitions and
 * job submissions commit with synchronous=FULL before the function returns.
 *
 * States (DESIGN.md section 5): queued -> running -> succeeded | failed;
 * running -> paused -> queued; queued | running -> canceled. Functions return
 * 0 on success, DB_NOT_FOUND, DB_CONFLICT (an illegal transition, or a delete
 * of a job that is not finished), or DB_ERROR with a message in err. */
#ifndef DISTILLD_DB_H
#define DISTILLD_DB_H

#include <stddef.h>

#define DB_NOT_FOUND 1
#define DB_CONFLICT 2
#define DB_ERROR (-1)

#define DB_ID_LEN 40
#define DB_STATE_LEN 16

typedef struct Db Db;

typedef struct {
    char id[DB_ID_LEN];          /* "j" + 16 hex digits, random */
    char kind[16];               /* "train" | "distill" */
    char state[DB_STATE_LEN];
    char *spec_json;             /* the resolved spec as submitted (malloc'd) */
    long step, total_steps;      /* progress */
    long checkpoint_step;        /* last recorded checkpoint, -1 if none */
    char checkpoint_path[1024];
    char error[512];             /* why a job failed, "" otherwise */
    char request[16];            /* "pause" or "cancel" asked of a running job, "" otherwise */
    double created_at, updated_at; /* unix seconds */
} DbJob;

typedef struct {
    char name[32];               /* "loss", "lr", "grad_norm", "images_per_second", "val_top1", ... */
    long step;
    double value;
    double time;                 /* unix seconds */
} DbMetric;

typedef struct {
    long id;                     /* increasing; the SSE event id */
    char job_id[DB_ID_LEN];
    char type[16];               /* "state", "log", "metric" (one per step), "eval" (one per evaluation) */
    long step;                   /* training step of "metric"/"eval" events, -1 otherwise */
    char *data_json;             /* malloc'd JSON object */
    double time;
} DbEvent;

/* Opens (creating if needed) the database at path and applies the .sql files
 * of migrations_dir whose number is above the stored user_version. */
int db_open(Db **out, const char *path, const char *migrations_dir, char *err);
void db_close(Db *db);

/* ---- jobs ---- */
int db_job_create(Db *db, const char *kind, const char *spec_json, long total_steps, DbJob *out, char *err);
int db_job_get(Db *db, const char *id, DbJob *out, char *err);
void db_job_free(DbJob *job);  /* frees spec_json */
/* Jobs newest first, optionally of one state; keyset-paged: cursor is the id of
 * the last job of the previous page ("" for the first). *next gets the cursor of
 * the next page, "" at the end. limit is capped at 500. */
int db_jobs_list(Db *db, const char *state, const char *cursor, int limit, DbJob **jobs, int *count,
                 char next[DB_ID_LEN], char *err);
/* How many jobs are in `state`. */
int db_jobs_count(Db *db, const char *state, long *count, char *err);
/* Moves a job to `to` if its state is one of `from` (NULL-terminated list),
 * in one BEGIN IMMEDIATE transaction that also appends a "state" event.
 * error_text (may be NULL) is stored for failed jobs. */
int db_job_transition(Db *db, const char *id, const char *const *from, const char *to, const char *error_text,
                      char *err);
/* The oldest queued job becomes running (BEGIN IMMEDIATE); DB_NOT_FOUND if none. */
int db_job_claim_next(Db *db, DbJob *out, char *err);
int db_job_set_progress(Db *db, const char *id, long step, char *err);
/* Asks a running job to pause or cancel ("pause"/"cancel"); the worker running
 * it polls the request every step, checkpoints, and makes the transition.
 * DB_CONFLICT if the job is not running. A transition clears the request. */
int db_job_request(Db *db, const char *id, const char *request, char *err);
/* Terminal jobs only (succeeded, failed, canceled); removes metrics, checkpoints, events.
 * `weights` (may be NULL) is the job's weights file: DB_CONFLICT while a queued, running
 * or paused job's spec names it as its teacher. */
int db_job_delete(Db *db, const char *id, const char *weights, char *err);

/* ---- metrics: each (job, name, step) stored once (a repeat is ignored) ---- */
int db_metrics_insert(Db *db, const char *job_id, const DbMetric *points, int count, char *err);
/* Points with step > after_step, ordered by (step, name), of the given names
 * (NULL or empty = all), at most limit (capped at 10000). A page ends on a
 * step boundary, so the last point's step is the next after_step: it may hold
 * fewer than limit points, or all of one step if that step alone has more. */
int db_metrics_page(Db *db, const char *job_id, const char *const *names, int num_names, long after_step, int limit,
                    DbMetric **points, int *count, char *err);

/* Display downsampling of the points with from_step <= step <= to_step: the
 * steps present are cut into `buckets` runs of *width steps each, and per
 * metric name and bucket come back the point of least value, the point of
 * greatest value and the first null (NaN) point, if any, ordered by (step,
 * name). A range with at most two points per name and bucket comes back
 * whole. Values and times are those of the points picked. */
int db_metrics_buckets(Db *db, const char *job_id, const char *const *names, int num_names, long from_step,
                       long to_step, int buckets, DbMetric **points, int *count, long *width, char *err);

/* ---- checkpoints ---- */
int db_checkpoint_record(Db *db, const char *job_id, long step, const char *path, char *err);
/* Checkpoints of a job, oldest first. */
int db_checkpoints_list(Db *db, const char *job_id, long **steps, char ***paths, int *count, char *err);

/* ---- crash recovery, at start-up ---- */
/* Every job left running goes back to queued and, in the same transaction,
 * its metric rows after its last checkpoint step are deleted (all of them if
 * it has no checkpoint), so a resumed run records each step exactly once.
 * A pause or cancel asked for and not yet carried out is: the job becomes
 * paused (at its checkpoint, as above) or canceled (keeping what it recorded).
 * *done says how many jobs went each way. */
typedef struct {
    int requeued, paused, canceled;
} DbRecovered;
int db_recover(Db *db, DbRecovered *done, char *err);

/* ---- events (what GET /jobs/{id}/events streams) ----
 * A "metric" or "eval" event is stored once per (job, type, step): appending it
 * again (a resumed run recomputing steps after its checkpoint, bit for bit the
 * same values) is ignored, so a client following the stream never sees a step
 * twice. *id is 0 when the append was ignored. */
int db_event_append(Db *db, const char *job_id, const char *type, long step, const char *data_json, long *id,
                    char *err);
/* A job's events with ids after after_id, oldest first, at most limit; the
 * metric and eval events of steps up to after_step are left out (-1: none). */
int db_events_after(Db *db, const char *job_id, long after_id, long after_step, int limit, DbEvent **events,
                    int *count, char *err);
void db_events_free(DbEvent *events, int count);

#endif
