/* train.c - the training loop. See train.h.
 *
 * One step: build the batch of this step (a function of seed and step),
 * [teacher forward on the same mixed batch], student forward, loss, backward,
 * clip + Adam + schedule. Evaluation every eval_every steps and at the end,
 * an atomic checkpoint every checkpoint_every steps, at the end and when the
 * caller asks to stop. The final weights go to run_dir/weights.safetensors. */
#include "train.h"

#include <cblas.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blas.h"
#include "data.h"
#include "model.h"
#include "optim.h"
#include "util.h"

void openblas_set_num_threads(int num_threads);

int train_threads(int requested) {
    int n = requested;
    if (n <= 0) {
        long cores = sysconf(_SC_NPROCESSORS_ONLN);
        n = cores > 0 ? (int)cores : 1;
    }
    /* the batch is split across OpenMP threads; each GEMM runs on one */
    openblas_set_num_threads(1);
    omp_set_num_threads(n);
    blas_warm_buffers(n);
    return n;
}

static void logf_cb(const TrainCallbacks *cb, const char *fmt, ...) {
    if (!cb || !cb->on_log) return;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cb->on_log(cb->ctx, msg);
}

static int argmax_row(const float *x, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

typedef struct {
    JobSpec spec;
    JobData data;
    Model *student, *teacher;
    float *images, *targets, *dlogits, *probs, *teacher_probs, *teacher_logits, *scratch;
    int32_t *labels;
    int teacher_evaluated;
    float teacher_val_top1, teacher_test_top1, teacher_aug_top1;
} Run;

/* Student (and teacher) top-1 on a split; agreement and distillation loss
 * when there is a teacher. */
static void evaluate_split(Run *r, int split, float *top1, float *teacher_top1, float *agreement, float *distill_loss) {
    const JobSpec *s = &r->spec;
    const int k = s->model.num_classes, total = data_split_size(&r->data, split);
    long correct = 0, teacher_correct = 0, agree = 0;
    double loss = 0.0;
    for (int start = 0; start < total; start += s->batch_size) {
        int n = data_eval_batch(&r->data, s, split, start, s->batch_size, r->images, r->labels, r->scratch);
        float *logits = model_forward(r->student, r->images, n);
        float *tlogits = NULL;
        if (r->teacher) model_predict(r->teacher, tlogits = r->teacher_logits, r->images, n);
        for (int i = 0; i < n; i++) {
            int p = argmax_row(logits + (size_t)i * k, k);
            correct += p == r->labels[i];
            if (tlogits) {
                int t = argmax_row(tlogits + (size_t)i * k, k);
                teacher_correct += t == r->labels[i];
                agree += t == p;
            }
        }
        if (tlogits)
            loss += (double)n * distill_loss_forward(r->probs, r->teacher_probs, logits, tlogits, n, k, s->temperature);
    }
    *top1 = total ? (float)correct / total : 0.0f;
    if (teacher_top1) *teacher_top1 = total ? (float)teacher_correct / total : 0.0f;
    if (agreement) *agreement = total ? (float)agree / total : 0.0f;
    if (distill_loss) *distill_loss = total ? (float)(loss / total) : 0.0f;
}

/* The teacher's top-1 on the test images augmented as the student's training
 * images: how well it knows the function the student learns to match. */
static float teacher_augmented_top1(Run *r) {
    const JobSpec *s = &r->spec;
    const int k = s->model.num_classes, total = data_split_size(&r->data, SPLIT_TEST);
    long correct = 0;
    for (int start = 0; start < total; start += s->batch_size) {
        int n = data_augmented_eval_batch(&r->data, s, SPLIT_TEST, start, s->batch_size, r->images, r->labels,
                                          r->scratch);
        model_predict(r->teacher, r->teacher_logits, r->images, n);
        for (int i = 0; i < n; i++) correct += argmax_row(r->teacher_logits + (size_t)i * k, k) == r->labels[i];
    }
    return total ? (float)correct / total : 0.0f;
}

static EvalMetrics evaluate(Run *r, long step) {
    EvalMetrics e = {.step = step, .has_val = r->data.val_count > 0, .has_teacher = r->teacher != NULL};
    float t_val = 0, t_test = 0, agree_val = 0;
    if (e.has_val) evaluate_split(r, SPLIT_VAL, &e.val_top1, &t_val, &agree_val, &e.val_distill_loss);
    evaluate_split(r, SPLIT_TEST, &e.test_top1, &t_test, &e.test_agreement, NULL);
    if (r->teacher && !r->teacher_evaluated) {
        r->teacher_val_top1 = t_val, r->teacher_test_top1 = t_test;
        r->teacher_aug_top1 = teacher_augmented_top1(r);
        r->teacher_evaluated = 1;
    }
    e.teacher_val_top1 = r->teacher_val_top1, e.teacher_test_top1 = r->teacher_test_top1;
    e.teacher_aug_top1 = r->teacher_aug_top1;
    return e;
}

static int load_teacher(Run *r, char *err) {
    const JobSpec *s = &r->spec;
    if (s->kind != JOB_DISTILL) return 0;
    if (!s->teacher[0]) return set_error(err, "teacher: job %s must be resolved to a weights file first", s->teacher_job);
    char why[ERR_LEN];
    /* a BiT .npz records no input size: it runs at the student's */
    const int bf16 = s->teacher_precision == PRECISION_BFLOAT16;
    if (model_load_sized(&r->teacher, s->teacher, model_pass_capacity(s->batch_size, bf16), s->model.image_size,
                         why) != 0)
        return set_error(err, "teacher: %s", why);
    const ModelConfig *t = &r->teacher->cfg, *m = &s->model;
    if (t->num_classes != m->num_classes)
        return set_error(err, "teacher: it predicts %d classes but the student (and dataset) have %d", t->num_classes,
                         m->num_classes);
    if (t->in_channels != m->in_channels || t->image_size != m->image_size)
        return set_error(err, "teacher: it takes %dx%dx%d images but the student takes %dx%dx%d", t->in_channels,
                         t->image_size, t->image_size, m->in_channels, m->image_size, m->image_size);
    for (int c = 0; c < m->in_channels; c++)
        if (t->norm_mean[c] != m->norm_mean[c] || t->norm_std[c] != m->norm_std[c])
            return set_error(err, "teacher: its input normalization differs from the student's");
    if (bf16 && model_set_bf16(r->teacher, why) != 0)
        return set_error(err, "teacher_precision: %s", why);
    return 0;
}

/* The spec a checkpoint was written for (saved) must be this run's but for
 * the thread count, so a run can resume on other cores. Returns the
 * checkpoint's thread count, -1 if the specs differ otherwise. */
static int checkpoint_threads(const char *saved, const JobSpec *s, const char *spec_json) {
    JobSpec t;
    char why[ERR_LEN];
    if (!saved || jobspec_parse(saved, &t, why) != 0) return -1;
    int threads = t.threads;
    t.threads = s->threads;
    char *json = jobspec_to_json(&t);
    int same = json && strcmp(json, spec_json) == 0;
    free(json);
    return same ? threads : -1;
}

/* mkdir -p */
static int make_dir(const char *path, char *err) {
    char buf[SPEC_PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf) return set_error(err, "path too long: %s", path);
    for (char *p = buf + 1;; p++) {
        if (*p == '/' || *p == 0) {
            char c = *p;
            *p = 0;
            if (mkdir(buf, 0755) != 0 && errno != EEXIST)
                return set_error(err, "cannot create %s: %s", buf, strerror(errno));
            *p = c;
            if (!c) break;
        }
    }
    return 0;
}

static void run_free(Run *r) {
    data_close(&r->data);
    model_free(r->student);
    model_free(r->teacher);
    free(r->images);
    free(r->targets);
    free(r->dlogits);
    free(r->probs);
    free(r->teacher_probs);
    free(r->teacher_logits);
    free(r->scratch);
    free(r->labels);
}

int train_latest_checkpoint(const char *run_dir, char *path, size_t size) {
    DIR *dir = opendir(run_dir);
    long best = -1;
    if (!dir) return -1;
    struct dirent *e;
    while ((e = readdir(dir)) != NULL) {
        long step;
        char tail[32];
        if (sscanf(e->d_name, "checkpoint-%ld.safetensor%31s", &step, tail) == 2 && strcmp(tail, "s") == 0 &&
            step > best)
            best = step;
    }
    closedir(dir);
    if (best < 0) return -1;
    snprintf(path, size, "%s/checkpoint-%08ld.safetensors", run_dir, best);
    return 0;
}

int train_run(const JobSpec *spec_in, const char *run_dir, const char *cache_dir, const char *resume_from,
              const TrainCallbacks *cb, TrainResult *result, char *err) {
    Run r = {.spec = *spec_in};
    JobSpec *s = &r.spec;
    memset(result, 0, sizeof *result);
    int threads = train_threads(s->threads);
    if (make_dir(run_dir, err)) return -1;
    if (data_open(&s->dataset, cache_dir, &r.data, err)) return -1;
    const Dataset *tr = &r.data.train;
    /* photos have sizes of their own: the model's default input is a crop of
     * 4/5 of the short side (128 of 160, as big_vision's Flowers configs) */
    int image_size = tr->offsets ? s->dataset.resize_small * 4 / 5 : tr->h;
    if (jobspec_resolve(s, r.data.train_count, tr->num_classes, tr->c, image_size, err)) {
        run_free(&r);
        return -1;
    }
    int rc = model_create(&r.student, &s->model, s->batch_size, err);
    char why[ERR_LEN];
    if (!rc && s->precision == PRECISION_BFLOAT16 && model_set_bf16(r.student, why) != 0)
        rc = set_error(err, "precision: %s", why);
    if (!rc) rc = load_teacher(&r, err);
    if (rc) {
        run_free(&r);
        return -1;
    }
    model_init_bit(r.student, s->seed);

    const int b = s->batch_size, k = s->model.num_classes;
    const size_t image_floats = (size_t)s->model.in_channels * s->model.image_size * s->model.image_size;
    r.images = xcalloc((size_t)b * image_floats, sizeof(float));
    r.targets = xcalloc((size_t)b * k, sizeof(float));
    r.dlogits = xcalloc((size_t)b * k, sizeof(float));
    r.probs = xcalloc((size_t)b * k, sizeof(float));
    r.teacher_probs = xcalloc((size_t)b * k, sizeof(float));
    r.teacher_logits = xcalloc((size_t)b * k, sizeof(float));
    r.labels = xcalloc(b, sizeof(int32_t));
    r.scratch = xcalloc(data_scratch_size(&r.data, s), sizeof(float));

    char ckpt[SPEC_PATH_MAX + 64], previous[SPEC_PATH_MAX + 64];
    snprintf(previous, sizeof previous, "%s", resume_from ? resume_from : "");
    snprintf(result->weights_path, sizeof result->weights_path, "%s/weights.safetensors", run_dir);
    char *spec_json = jobspec_to_json(s);
    long start = 0;
    if (resume_from) {
        char *saved = NULL;
        int saved_threads = -1;
        rc = model_load_checkpoint(r.student, resume_from, &start, &saved, err);
        if (!rc && (saved_threads = checkpoint_threads(saved, s, spec_json)) < 0)
            rc = set_error(err, "%s was written for a different spec; refusing to resume (start a new run directory)",
                           resume_from);
        free(saved);
        if (rc) {
            free(spec_json);
            run_free(&r);
            return -1;
        }
        logf_cb(cb, "resuming from %s at step %ld", resume_from, start);
        if (saved_threads != s->threads) {
            char was[32], now[32]; /* spec threads: 0 is every core */
            snprintf(was, sizeof was, saved_threads ? "%d thread(s)" : "every core", saved_threads);
            snprintf(now, sizeof now, s->threads ? "%d thread(s)" : "every core", s->threads);
            logf_cb(cb, "the checkpoint was written by a run on %s, this one runs on %s: from here sums round "
                        "differently, so the weights will not be bit for bit those of an uninterrupted run",
                    was, now);
        }
    }
    logf_cb(cb, "%s job: %ld steps of %d images (%d training images, %d validation, %d test), %zu parameters, "
                "%d compute thread%s%s%s",
            s->kind == JOB_DISTILL ? "distill" : "train", s->steps, b, r.data.train_count, r.data.val_count,
            r.data.test_count, r.student->num_floats, threads, threads == 1 ? "" : "s",
            s->teacher_precision == PRECISION_BFLOAT16 ? ", the teacher's forward in bfloat16" : "",
            s->precision == PRECISION_BFLOAT16 ? ", convolutions in bfloat16 (mixed precision)" : "");

    OptimConfig opt = {.lr = s->lr, .weight_decay = s->weight_decay, .clip_norm = s->clip_norm,
                       .warmup_steps = s->warmup_steps, .total_steps = s->steps};
    const double t0 = now_seconds();
    double last = t0, step_time = 0.0;
    int status = TRAIN_DONE;
    long step = start;
    for (; step < s->steps; step++) {
        data_train_batch(&r.data, s, step, r.images, r.targets, r.labels, r.scratch);
        float loss;
        memset(r.dlogits, 0, sizeof(float) * b * k);
        if (r.teacher) {
            model_predict(r.teacher, r.teacher_logits, r.images, b);
            const float *logits = model_forward(r.student, r.images, b);
            loss = distill_loss_forward(r.probs, r.teacher_probs, logits, r.teacher_logits, b, k, s->temperature);
            distill_loss_backward(r.dlogits, r.probs, r.teacher_probs, b, k, s->temperature);
        } else {
            const float *logits = model_forward(r.student, r.images, b);
            loss = cross_entropy_forward(r.probs, logits, r.targets, b, k);
            cross_entropy_backward(r.dlogits, r.probs, r.targets, b, k);
        }
        model_zero_grad(r.student);
        model_backward(r.student, r.dlogits, b);
        float norm = optimizer_step(r.student, &opt, step);
        if (!isfinite(loss) || !isfinite(norm)) {
            status = -1;
            set_error(err, "training diverged at step %ld (loss %g, gradient norm %g): lower lr or check the data",
                      step + 1, loss, norm);
            break;
        }

        double now = now_seconds(), dt = now - last;
        last = now;
        step_time = step == start ? dt : 0.9 * step_time + 0.1 * dt;
        const long done = step + 1;
        if (cb && cb->on_step) {
            StepMetrics m = {.step = done, .total_steps = s->steps, .loss = loss, .grad_norm = norm,
                             .lr = s->lr * schedule_multiplier(step, s->warmup_steps, s->steps),
                             .images_per_second = (float)(b / step_time), .elapsed_seconds = now - t0,
                             .eta_seconds = step_time * (s->steps - done)};
            cb->on_step(cb->ctx, &m);
        }
        if (done % s->eval_every == 0 || done == s->steps) {
            EvalMetrics e = evaluate(&r, done);
            result->final_test_top1 = e.test_top1;
            if (cb && cb->on_eval) cb->on_eval(cb->ctx, &e);
            last = now_seconds(); /* keep evaluation out of the throughput */
        }
        int stop = done < s->steps && cb && cb->should_stop && cb->should_stop(cb->ctx);
        if (done % s->checkpoint_every == 0 || done == s->steps || stop) {
            snprintf(ckpt, sizeof ckpt, "%s/checkpoint-%08ld.safetensors", run_dir, done);
            if (model_save_checkpoint(r.student, done, spec_json, ckpt, err) != 0) {
                status = -1;
                break;
            }
            /* the caller records the new checkpoint before the old one goes */
            if (cb && cb->on_checkpoint) cb->on_checkpoint(cb->ctx, done, ckpt);
            if (previous[0] && strcmp(previous, ckpt) != 0) unlink(previous);
            snprintf(previous, sizeof previous, "%s", ckpt);
            last = now_seconds();
        }
        if (stop) {
            step++;
            status = TRAIN_STOPPED;
            break;
        }
    }
    result->steps_done = step;
    if (status == TRAIN_DONE && start >= s->steps) {
        EvalMetrics e = evaluate(&r, s->steps); /* resumed a finished run: report it again */
        result->final_test_top1 = e.test_top1;
        if (cb && cb->on_eval) cb->on_eval(cb->ctx, &e);
    }
    if (status == TRAIN_DONE && model_save(r.student, result->weights_path, err) != 0) status = -1;
    free(spec_json);
    run_free(&r);
    return status;
}
