/* worker.c - job runner threads. See worker.h. */
#include "worker.h"

#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "jobspec.h"
#include "log.h"
#include "train.h"
#include "util.h"

#define METRIC_BATCH 256     /* points buffered before a flush */
#define FLUSH_SECONDS 1.0    /* or this long since the last flush */

struct Workers {
    WorkerConfig cfg;
    pthread_t *threads;
    int started;
    atomic_int shutdown;
};

enum { STOP_NONE = 0, STOP_SHUTDOWN, STOP_PAUSE, STOP_CANCEL };

/* One running job: the callbacks' context. */
typedef struct {
    Workers *workers;
    Db *db;
    const char *job_id;
    DbMetric points[METRIC_BATCH];
    int num_points;
    json_t *events;          /* [type, step, data] waiting for the next flush */
    double last_flush;
    long last_step;
    int stop_reason;
    double last_log;
} JobRun;

static double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void flush(JobRun *r) {
    char err[ERR_LEN];
    if (r->num_points > 0 && db_metrics_insert(r->db, r->job_id, r->points, r->num_points, err) != 0)
        log_msg(LOG_ERROR, "job %s: storing metrics: %s", r->job_id, err);
    r->num_points = 0;
    size_t i;
    json_t *e;
    json_array_foreach(r->events, i, e) {
        char *data = json_dumps(json_array_get(e, 2), JSON_COMPACT | JSON_REAL_PRECISION(9));
        long id;
        if (db_event_append(r->db, r->job_id, json_string_value(json_array_get(e, 0)),
                            (long)json_integer_value(json_array_get(e, 1)), data, &id, err) != 0)
            log_msg(LOG_ERROR, "job %s: storing an event: %s", r->job_id, err);
        free(data);
    }
    json_array_clear(r->events);
    if (r->last_step > 0 && db_job_set_progress(r->db, r->job_id, r->last_step, err) != 0)
        log_msg(LOG_ERROR, "job %s: storing progress: %s", r->job_id, err);
    r->last_flush = now_seconds();
}

static void add_point(JobRun *r, const char *name, long step, double value) {
    if (r->num_points == METRIC_BATCH) flush(r);
    DbMetric *p = &r->points[r->num_points++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->step = step;
    p->value = value;
    p->time = wall_seconds();
}

static void add_event(JobRun *r, const char *type, long step, json_t *data) {
    json_array_append_new(r->events, json_pack("[s,I,o]", type, (json_int_t)step, data));
}

static void on_log(void *ctx, const char *message) {
    JobRun *r = ctx;
    log_msg(LOG_INFO, "job %s: %s", r->job_id, message);
    add_event(r, "log", -1, json_pack("{s:s}", "message", message));
}

static void on_step(void *ctx, const StepMetrics *m) {
    JobRun *r = ctx;
    add_point(r, "loss", m->step, m->loss);
    add_point(r, "lr", m->step, m->lr);
    add_point(r, "grad_norm", m->step, m->grad_norm);
    add_point(r, "images_per_second", m->step, m->images_per_second);
    add_event(r, "metric", m->step,
              json_pack("{s:I,s:I,s:f,s:f,s:f,s:f,s:f}", "step", (json_int_t)m->step, "total_steps",
                        (json_int_t)m->total_steps, "loss", (double)m->loss, "lr", (double)m->lr, "grad_norm",
                        (double)m->grad_norm, "images_per_second", (double)m->images_per_second, "eta_seconds",
                        m->eta_seconds));
    r->last_step = m->step;
    double now = now_seconds();
    if (now - r->last_log >= 30.0 || m->step == m->total_steps) { /* progress in the daemon's log too */
        r->last_log = now;
        log_msg(LOG_INFO, "job %s: step %ld/%ld  loss %.4f  lr %.3e  %.0f img/s  ETA %.0f s", r->job_id, m->step,
                m->total_steps, m->loss, m->lr, m->images_per_second, m->eta_seconds);
    }
    if (now - r->last_flush >= FLUSH_SECONDS) flush(r);
}

static void on_eval(void *ctx, const EvalMetrics *e) {
    JobRun *r = ctx;
    json_t *data = json_pack("{s:I,s:f}", "step", (json_int_t)e->step, "test_top1", (double)e->test_top1);
    add_point(r, "test_top1", e->step, e->test_top1);
    if (e->has_val) {
        add_point(r, "val_top1", e->step, e->val_top1);
        json_object_set_new(data, "val_top1", json_real(e->val_top1));
    }
    if (e->has_teacher) {
        add_point(r, "teacher_test_top1", e->step, e->teacher_test_top1);
        add_point(r, "teacher_aug_top1", e->step, e->teacher_aug_top1);
        add_point(r, "test_agreement", e->step, e->test_agreement);
        json_object_set_new(data, "teacher_test_top1", json_real(e->teacher_test_top1));
        json_object_set_new(data, "teacher_aug_top1", json_real(e->teacher_aug_top1));
        json_object_set_new(data, "test_agreement", json_real(e->test_agreement));
        if (e->has_val) {
            add_point(r, "teacher_val_top1", e->step, e->teacher_val_top1);
            add_point(r, "val_distill_loss", e->step, e->val_distill_loss);
            json_object_set_new(data, "teacher_val_top1", json_real(e->teacher_val_top1));
            json_object_set_new(data, "val_distill_loss", json_real(e->val_distill_loss));
        }
    }
    add_event(r, "eval", e->step, data);
    flush(r);
}

/* The metrics up to a checkpoint are stored before the checkpoint is
 * recorded, so recovery can trust everything at or before its step. */
static void on_checkpoint(void *ctx, long step, const char *path) {
    JobRun *r = ctx;
    char err[ERR_LEN];
    flush(r);
    if (db_checkpoint_record(r->db, r->job_id, step, path, err) != 0)
        log_msg(LOG_ERROR, "job %s: recording checkpoint %ld: %s", r->job_id, step, err);
}

static int should_stop(void *ctx) {
    JobRun *r = ctx;
    if (atomic_load(&r->workers->shutdown)) {
        r->stop_reason = STOP_SHUTDOWN;
        return 1;
    }
    DbJob job;
    char err[ERR_LEN];
    if (db_job_get(r->db, r->job_id, &job, err) != 0) return 0;
    if (strcmp(job.request, "pause") == 0) r->stop_reason = STOP_PAUSE;
    else if (strcmp(job.request, "cancel") == 0) r->stop_reason = STOP_CANCEL;
    db_job_free(&job);
    return r->stop_reason != STOP_NONE;
}

static void finish(Db *db, const char *id, const char *to, const char *error_text) {
    static const char *const running[] = {"running", NULL};
    char err[ERR_LEN];
    if (db_job_transition(db, id, running, to, error_text, err) != 0)
        log_msg(LOG_ERROR, "job %s: running -> %s: %s", id, to, err);
    else
        log_msg(LOG_INFO, "job %s: %s%s%s", id, to, error_text ? ": " : "", error_text ? error_text : "");
}

static void run_job(Workers *w, DbJob *job) {
    char err[ERR_LEN], run_dir[SPEC_PATH_MAX];
    JobSpec spec;
    snprintf(run_dir, sizeof run_dir, "%s/runs/%s", w->cfg.data_dir, job->id);
    if (jobspec_parse(job->spec_json, &spec, err) != 0) {
        finish(w->cfg.db, job->id, "failed", err);
        return;
    }
    spec.threads = w->cfg.threads_per_job;
    JobRun r = {.workers = w, .db = w->cfg.db, .job_id = job->id, .events = json_array(), .last_flush = now_seconds(),
                .last_log = now_seconds()};
    TrainCallbacks cb = {.ctx = &r, .on_log = on_log, .on_step = on_step, .on_eval = on_eval,
                         .on_checkpoint = on_checkpoint, .should_stop = should_stop};
    TrainResult result;
    /* resume from the checkpoint the database recorded: its metrics are stored */
    const char *resume_from = job->checkpoint_step >= 0 && job->checkpoint_path[0] ? job->checkpoint_path : NULL;
    char cache_dir[SPEC_PATH_MAX + 16];
    snprintf(cache_dir, sizeof cache_dir, "%s/cache", w->cfg.data_dir);
    int rc = train_run(&spec, run_dir, cache_dir, resume_from, &cb, &result, err);
    flush(&r);
    json_decref(r.events);
    if (rc == TRAIN_DONE) finish(w->cfg.db, job->id, "succeeded", NULL);
    else if (rc < 0) finish(w->cfg.db, job->id, "failed", err);
    else if (r.stop_reason == STOP_PAUSE) finish(w->cfg.db, job->id, "paused", NULL);
    else if (r.stop_reason == STOP_CANCEL) finish(w->cfg.db, job->id, "canceled", NULL);
    else finish(w->cfg.db, job->id, "queued", NULL); /* shutdown: resume from the checkpoint next start */
}

static void *worker_main(void *arg) {
    Workers *w = arg;
    train_threads(w->cfg.threads_per_job);
    while (!atomic_load(&w->shutdown)) {
        DbJob job;
        char err[ERR_LEN];
        int rc = db_job_claim_next(w->cfg.db, &job, err);
        if (rc == DB_NOT_FOUND) {
            usleep(200 * 1000);
            continue;
        }
        if (rc != 0) {
            log_msg(LOG_ERROR, "claiming a job: %s", err);
            sleep(1);
            continue;
        }
        log_msg(LOG_INFO, "job %s: running (%s)", job.id, job.kind);
        run_job(w, &job);
        db_job_free(&job);
    }
    return NULL;
}

int workers_start(Workers **out, const WorkerConfig *cfg, char *err) {
    Workers *w = xcalloc(1, sizeof *w);
    w->cfg = *cfg;
    w->threads = xcalloc(cfg->count, sizeof *w->threads);
    atomic_init(&w->shutdown, 0);
    for (int i = 0; i < cfg->count; i++) {
        if (pthread_create(&w->threads[i], NULL, worker_main, w) != 0) {
            workers_stop(w);
            return set_error(err, "cannot start worker thread %d", i + 1);
        }
        w->started++;
    }
    *out = w;
    return 0;
}

void workers_stop(Workers *w) {
    if (!w) return;
    atomic_store(&w->shutdown, 1);
    for (int i = 0; i < w->started; i++) pthread_join(w->threads[i], NULL);
    free(w->threads);
    free(w);
}
