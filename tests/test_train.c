/* test_train.c - the training loop end to end on Fashion-MNIST.
 *
 * - Learning: a small ResNetV2 trained on 6,000 Fashion-MNIST images for 300
 *   steps reaches a test top-1 far above chance (threshold measured, see
 *   TRAIN_MIN_TOP1).
 * - Determinism: two runs of the same spec end with bit-identical weights.
 * - Exact resume: a run stopped at step k and resumed from its checkpoint
 *   ends bit-for-bit equal to an uninterrupted run, for `train` and for
 *   `distill` (the teacher being the first run's weights), with crop, flip and
 *   mixup on.
 * - Refusals: resuming with a different spec; a teacher of another class count.
 * - Mixed precision ("precision": "bfloat16"): the same run with its
 *   convolutions in bf16 learns as well (BF16_TRAIN_MAX_DROP).
 * - The bfloat16 teacher ("teacher_precision"): the learned model in bf16
 *   predicts as it does in float (thresholds measured, see BF16_*), and a
 *   distill job runs its teacher that way. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "bf16.h"
#include "data.h"
#include "formats.h"
#include "jobspec.h"
#include "model.h"
#include "test.h"
#include "train.h"
#include "util.h"

/* Measured on a 2-core build machine with this exact spec: 75.2 % after 300
 * steps (56.4 % at step 100, 71.9 % at 200); chance is 10 %. The run is
 * deterministic for a given thread count, so the margin covers other thread
 * counts and CPUs (different float rounding), not run-to-run noise. */
#define TRAIN_MIN_TOP1 0.70f
/* The same run in mixed precision ("precision": "bfloat16"): measured 75.25 %
 * against float's 75.17 %. Allowed: two points below float's. */
#define BF16_TRAIN_MAX_DROP 0.02f

typedef struct {
    long stop_at;
    long steps_seen;
    int evals;
    float last_loss;
    EvalMetrics last_eval;
    char log[4096]; /* every log message, one per line */
} Watch;

static void on_log(void *ctx, const char *message) {
    Watch *w = ctx;
    size_t n = strlen(w->log);
    snprintf(w->log + n, sizeof w->log - n, "%s\n", message);
}

static void on_step(void *ctx, const StepMetrics *m) {
    Watch *w = ctx;
    w->steps_seen++;
    w->last_loss = m->loss;
}

static void on_eval(void *ctx, const EvalMetrics *e) {
    Watch *w = ctx;
    w->evals++;
    w->last_eval = *e;
}

static int should_stop(void *ctx) {
    Watch *w = ctx;
    return w->stop_at > 0 && w->steps_seen >= w->stop_at;
}

static int run_spec(const char *json, const char *dir, int resume, Watch *w, TrainResult *r, char *err) {
    JobSpec spec;
    if (jobspec_parse(json, &spec, err) != 0) return -2;
    TrainCallbacks cb = {.ctx = w, .on_log = on_log, .on_step = on_step, .on_eval = on_eval, .should_stop = should_stop};
    char checkpoint[1024];
    const char *from = resume && train_latest_checkpoint(dir, checkpoint, sizeof checkpoint) == 0 ? checkpoint : NULL;
    return train_run(&spec, dir, NULL, from, &cb, r, err);
}

static int files_equal(const char *a, const char *b) {
    unsigned char *x, *y;
    size_t nx, ny;
    if (read_file_all(a, &x, &nx, NULL) || read_file_all(b, &y, &ny, NULL)) return 0;
    int same = nx == ny && memcmp(x, y, nx) == 0;
    free(x);
    free(y);
    return same;
}

/* Trains the spec below, in float or (bf16) "precision": "bfloat16"; returns
 * its test top-1, or -1 */
static float learn(const char *root, const char *name, int bf16, char *weights_out) {
    char spec[1024], dir[512], err[ERR_LEN];
    snprintf(spec, sizeof spec,
             "{\"kind\":\"train\",\"dataset\":{\"name\":\"fashion-mnist\",\"subset_size\":6000},"
             "\"model\":{\"depth\":[1,1,1],\"base_width\":16,\"gn_groups\":8,\"stem\":\"small\"},"
             "\"batch_size\":64,\"steps\":300,\"lr\":0.003,\"weight_decay\":0.0003,\"crop\":\"none\","
             "\"mixup\":false,\"flip\":true,\"seed\":0,\"threads\":2%s}",
             bf16 ? ",\"precision\":\"bfloat16\"" : "");
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    Watch w = {0};
    TrainResult r;
    int rc = run_spec(spec, dir, 0, &w, &r, err);
    CHECK(rc == TRAIN_DONE, "train_run: %d %s", rc, err);
    if (rc != TRAIN_DONE) return -1;
    CHECK(w.steps_seen == 300 && r.steps_done == 300, "steps seen %ld, done %ld", w.steps_seen, r.steps_done);
    CHECK(w.evals == 1, "expected one evaluation, at the end, got %d", w.evals);
    CHECK(access(r.weights_path, F_OK) == 0, "no weights at %s", r.weights_path);
    CHECK((strstr(w.log, "mixed precision") != NULL) == (bf16 != 0), "the first log line must say whether the "
          "convolutions run in bfloat16: %s", w.log);
    if (weights_out) snprintf(weights_out, 512, "%s", r.weights_path);
    return r.final_test_top1;
}

static float test_learns(const char *root, char *weights_out) {
    TEST_CASE("a small model learns Fashion-MNIST (300 steps, 6,000 images)");
    const float top1 = learn(root, "learns", 0, weights_out);
    printf("     test top-1 after 300 steps: %.2f%% (threshold %.0f%%)\n", 100 * top1, 100 * TRAIN_MIN_TOP1);
    CHECK(top1 >= TRAIN_MIN_TOP1, "test top-1 %.4f below %.2f", top1, TRAIN_MIN_TOP1);
    return top1;
}

/* "precision": "bfloat16": the same run with the convolutions' forward and
 * backward in bf16 learns as well as the float one (threshold: BF16_TRAIN_*) */
static void test_bf16_learns(const char *root, float float_top1) {
    TEST_CASE("mixed precision: the same model learns as well with its convolutions in bfloat16");
    if (!bf16_fast()) {
        printf("     skipped: this build has no AVX512-BF16 kernel (jobs refuse bfloat16)\n");
        return;
    }
    const float top1 = learn(root, "learns-bf16", 1, NULL);
    printf("     test top-1 after 300 steps: %.2f%% in bf16, %.2f%% in float (allowed: %.1f points below)\n",
           100 * top1, 100 * float_top1, 100 * BF16_TRAIN_MAX_DROP);
    CHECK(top1 >= float_top1 - BF16_TRAIN_MAX_DROP, "bf16 test top-1 %.4f more than %.3f below float's %.4f", top1,
          BF16_TRAIN_MAX_DROP, float_top1);
}

static const char *small_spec(char *buf, size_t size, const char *kind, const char *teacher) {
    snprintf(buf, size,
             "{\"kind\":\"%s\",%s%s%s\"dataset\":{\"name\":\"fashion-mnist\",\"subset_size\":300,\"val_size\":200,\"test_size\":500},"
             "\"model\":{\"depth\":[1,1],\"base_width\":8,\"gn_groups\":4,\"stem\":\"small\"},"
             "\"batch_size\":16,\"steps\":12,\"warmup_steps\":3,\"lr\":0.003,\"crop\":\"inception\","
             "\"mixup\":true,\"flip\":true,\"eval_every\":6,\"checkpoint_every\":5,\"seed\":7,\"threads\":2}",
             kind, teacher ? "\"teacher\":\"" : "", teacher ? teacher : "", teacher ? "\"," : "");
    return buf;
}

static void test_resume(const char *root, const char *kind, const char *teacher, char *weights_out) {
    char name[128], spec[2048], a[512], b[512], c[512], err[ERR_LEN];
    snprintf(name, sizeof name, "%s: stopped at step 7 and resumed == uninterrupted, bit for bit", kind);
    TEST_CASE(name);
    small_spec(spec, sizeof spec, kind, teacher);
    snprintf(a, sizeof a, "%s/%s-a", root, kind);
    snprintf(b, sizeof b, "%s/%s-b", root, kind);
    snprintf(c, sizeof c, "%s/%s-c", root, kind);
    TrainResult ra, rb, rc_;
    Watch wa = {0}, wb = {.stop_at = 7}, wc = {0};
    int rc = run_spec(spec, a, 0, &wa, &ra, err);
    CHECK(rc == TRAIN_DONE, "uninterrupted run: %d %s", rc, err);
    CHECK(wa.evals == 2 && wa.steps_seen == 12, "eval_every 6 over 12 steps: %d evaluations, %ld steps", wa.evals,
          wa.steps_seen);
    rc = run_spec(spec, b, 0, &wb, &rb, err);
    CHECK(rc == TRAIN_STOPPED && rb.steps_done == 7, "stopped run: rc %d after %ld steps: %s", rc, rb.steps_done, err);
    CHECK(access(rb.weights_path, F_OK) != 0, "a stopped run must not write final weights");
    Watch wb2 = {0};
    rc = run_spec(spec, b, 1, &wb2, &rb, err);
    CHECK(rc == TRAIN_DONE && rb.steps_done == 12, "resumed run: rc %d, %ld steps: %s", rc, rb.steps_done, err);
    CHECK(wb2.steps_seen == 5, "resume should run steps 8..12 (5 steps), ran %ld", wb2.steps_seen);
    CHECK(files_equal(ra.weights_path, rb.weights_path), "resumed weights differ from the uninterrupted run's");
    CHECK(ra.final_test_top1 == rb.final_test_top1, "final accuracy differs: %f vs %f", ra.final_test_top1,
          rb.final_test_top1);
    if (teacher) /* measured again by the resumed process: the same augmented images */
        CHECK(wa.last_eval.has_teacher && wa.last_eval.teacher_aug_top1 == wb2.last_eval.teacher_aug_top1 &&
                  wa.last_eval.teacher_aug_top1 > 0.0f && wa.last_eval.teacher_aug_top1 <= 1.0f,
              "teacher top-1 on augmented test images: %f uninterrupted, %f resumed", wa.last_eval.teacher_aug_top1,
              wb2.last_eval.teacher_aug_top1);
    rc = run_spec(spec, c, 0, &wc, &rc_, err);
    CHECK(rc == TRAIN_DONE && files_equal(ra.weights_path, rc_.weights_path),
          "two runs of the same spec must give the same weights");
    if (weights_out) snprintf(weights_out, 512, "%s", ra.weights_path);

    /* the checkpoint belongs to its spec */
    char other[2048];
    snprintf(other, sizeof other, "%s", spec);
    char *seed = strstr(other, "\"seed\":7");
    if (seed) seed[7] = '8';
    Watch wd = {0};
    TrainResult rd;
    rc = run_spec(other, b, 1, &wd, &rd, err);
    CHECK(rc < 0 && strstr(err, "different spec"), "resuming with another spec must be refused, got %d: %s", rc, err);

    /* on another thread count it resumes, and says the result is no longer bit for bit */
    char one_thread[2048], d[512];
    snprintf(one_thread, sizeof one_thread, "%s", spec);
    char *threads = strstr(one_thread, "\"threads\":2");
    if (threads) threads[10] = '1';
    snprintf(d, sizeof d, "%s/%s-d", root, kind);
    Watch we = {.stop_at = 7}, wf = {0};
    rc = run_spec(spec, d, 0, &we, &rd, err);
    CHECK(rc == TRAIN_STOPPED && threads, "stopped run on 2 threads: %d %s", rc, err);
    rc = run_spec(one_thread, d, 1, &wf, &rd, err);
    CHECK(rc == TRAIN_DONE && wf.steps_seen == 5 && strstr(wf.log, "2 thread(s), this one runs on 1 thread(s)") &&
              strstr(wf.log, "bit for bit"),
          "resumed on 1 thread: rc %d, %ld steps, %s; log:\n%s", rc, wf.steps_seen, err, wf.log);
}

/* A 2-step distill job from `teacher` in root/name: the dataset keys after
 * subset_size and the keys after "model" are given. */
static int run_small_distill(const char *root, const char *name, const char *teacher, const char *dataset,
                             const char *rest, Watch *w, char *err) {
    char spec[2048], dir[512];
    snprintf(spec, sizeof spec,
             "{\"kind\":\"distill\",\"teacher\":\"%s\",\"dataset\":{\"name\":\"fashion-mnist\",\"subset_size\":100%s},"
             "\"steps\":2,\"warmup_steps\":0,%s}",
             teacher, dataset, rest);
    snprintf(dir, sizeof dir, "%s/%s", root, name);
    TrainResult r;
    return run_spec(spec, dir, 0, w, &r, err);
}

static void test_teacher_mismatch(const char *root, const char *teacher) {
    TEST_CASE("distill: a teacher with another class count is refused");
    /* MNIST-shaped data with a 10-class teacher is fine; make the student 12 classes */
    char err[ERR_LEN];
    Watch w = {0};
    int rc = run_small_distill(root, "mismatch", teacher, "",
                               "\"model\":{\"depth\":[1],\"base_width\":8,\"gn_groups\":4,\"stem\":\"small\","
                               "\"image_size\":32},\"batch_size\":8",
                               &w, err);
    CHECK(rc < 0 && strstr(err, "teacher"), "a 28-px teacher for a 32-px student must be refused: %d %s", rc, err);
}

static void test_teacher_augmented(const char *root, const char *teacher) {
    TEST_CASE("distill: the teacher's top-1 on augmented test images; without crop or flip, its plain test top-1");
    char err[ERR_LEN];
    Watch w = {0};
    int rc = run_small_distill(root, "teacher-plain", teacher, ",\"test_size\":500",
                               "\"model\":{\"depth\":[1],\"base_width\":8,\"gn_groups\":4,\"stem\":\"small\"},"
                               "\"batch_size\":16,\"crop\":\"none\",\"flip\":false,\"mixup\":true",
                               &w, err);
    CHECK(rc == TRAIN_DONE && w.evals == 1 && w.last_eval.has_teacher, "run: %d %s, %d evaluations", rc, err, w.evals);
    CHECK(w.last_eval.teacher_aug_top1 == w.last_eval.teacher_test_top1 && w.last_eval.teacher_test_top1 > 0.0f,
          "crop none, no flip: %f on augmented images, %f on the test images", w.last_eval.teacher_aug_top1,
          w.last_eval.teacher_test_top1);
}

/* The bf16 teacher against the float one, with test_learns's model (75 %
 * test top-1) on the 10,000 test images, plain and augmented as function
 * matching shows them (see test_bf16_teacher's printout). How far apart they
 * are depends on the model: the same 300 steps give a different model with
 * each rounding of the float training (each OpenBLAS kernel; Winograd
 * F(2x2, 3x3) or F(4x4, 3x3) in float), and over eight such models
 * (OPENBLAS_CORETYPE Haswell, Cooperlake, SkylakeX and Sandybridge, with
 * each Winograd) the figures ranged as quoted below: one model's KL four
 * times another's. The bounds sit above those ranges, and far below what
 * matters to distillation: the recipes' students end 0.07-0.15 nats of KL
 * from their teacher (docs/RESULTS.md). */
static const struct {
    float min_agreement;   /* same top-1 class as the float teacher */
    float max_top1_change; /* |top-1 in bf16 - top-1 in float| */
    double max_kl;         /* mean KL(float softmax || bf16 softmax), nats */
} BF16_BOUNDS[2] = {
    {0.985f, 0.005f, 2.5e-3}, /* plain: 99.04-99.58 %, 0.00-0.17 points, 5.6e-5 - 1.1e-3 */
    {0.955f, 0.015f, 8e-3},   /* augmented: 96.93-99.05 %, 0.04-0.78 points, 4.3e-4 - 4.2e-3 */
};

static double kl_softmax(const float *p_logits, const float *q_logits, int k) {
    double mp = p_logits[0], mq = q_logits[0], zp = 0, zq = 0, kl = 0;
    for (int i = 1; i < k; i++) mp = fmax(mp, p_logits[i]), mq = fmax(mq, q_logits[i]);
    for (int i = 0; i < k; i++) zp += exp(p_logits[i] - mp), zq += exp(q_logits[i] - mq);
    for (int i = 0; i < k; i++) {
        const double lp = p_logits[i] - mp - log(zp), lq = q_logits[i] - mq - log(zq);
        kl += exp(lp) * (lp - lq);
    }
    return kl;
}

static int argmax_of(const float *x, int k) {
    int best = 0;
    for (int i = 1; i < k; i++)
        if (x[i] > x[best]) best = i;
    return best;
}

/* The model test_learns trained, as a teacher in float and in bfloat16, on
 * the test images as evaluation shows them and as a distill job's training
 * crops do (data_augmented_eval_batch); then a distill job with
 * "teacher_precision": "bfloat16" reports the bf16 teacher's test top-1. */
static void test_bf16_teacher(const char *root, const char *weights) {
    TEST_CASE("bfloat16 teacher: predicts as the float one on the 10,000 test images, plain and augmented");
    if (!bf16_fast()) {
        printf("     not run: this build has no AVX512-BF16 kernel, and refuses bfloat16 teachers\n");
        return;
    }
    enum { B = 250 };
    JobSpec s;
    JobData d;
    char err[ERR_LEN];
    Model *f32 = NULL, *b16 = NULL;
    int rc = jobspec_parse("{\"kind\":\"train\",\"steps\":1,\"batch_size\":250}", &s, err);
    if (!rc) rc = data_open(&s.dataset, NULL, &d, err);
    if (!rc) rc = jobspec_resolve(&s, d.train_count, d.train.num_classes, d.train.c, d.train.h, err);
    if (!rc) rc = model_load(&f32, weights, B, err);
    if (!rc) rc = model_load(&b16, weights, B, err);
    if (!rc) rc = model_set_bf16(b16, err);
    CHECK(rc == 0, "setup: %s", err);
    if (rc) return;
    const int k = s.model.num_classes, total = data_split_size(&d, SPLIT_TEST);
    const size_t image_floats = (size_t)s.model.in_channels * s.model.image_size * s.model.image_size;
    float *images = xcalloc(B * image_floats, sizeof(float)), *logits = xcalloc((size_t)B * k, sizeof(float));
    float plain_f32 = 0, plain_b16 = 0;
    float *scratch = xcalloc(data_scratch_size(&d, &s) + 1, sizeof(float));
    int32_t *labels = xcalloc(B, sizeof(int32_t));
    for (int augmented = 0; augmented <= 1; augmented++) {
        long agree = 0, right_f32 = 0, right_b16 = 0;
        double kl = 0, worst_logit = 0;
        for (int start = 0; start < total; start += B) {
            int n = augmented ? data_augmented_eval_batch(&d, &s, SPLIT_TEST, start, B, images, labels, scratch)
                              : data_eval_batch(&d, &s, SPLIT_TEST, start, B, images, labels, scratch);
            memcpy(logits, model_forward(f32, images, n), sizeof(float) * n * k);
            const float *low = model_forward(b16, images, n);
            for (int i = 0; i < n; i++) {
                const int a = argmax_of(logits + (size_t)i * k, k), b = argmax_of(low + (size_t)i * k, k);
                agree += a == b, right_f32 += a == labels[i], right_b16 += b == labels[i];
                kl += kl_softmax(logits + (size_t)i * k, low + (size_t)i * k, k);
                for (int j = 0; j < k; j++)
                    worst_logit = fmax(worst_logit, fabs(logits[(size_t)i * k + j] - low[(size_t)i * k + j]));
            }
        }
        const float agreement = (float)agree / total, top1_f32 = (float)right_f32 / total;
        const float top1_b16 = (float)right_b16 / total;
        printf("     %s test images: top-1 %.2f%% float, %.2f%% bf16; same class %.2f%%; mean KL %.2e; "
               "largest logit change %.3f\n",
               augmented ? "augmented" : "plain", 100 * top1_f32, 100 * top1_b16, 100 * agreement, kl / total,
               worst_logit);
        if (!augmented) {
            CHECK(top1_f32 >= TRAIN_MIN_TOP1, "the float teacher is not the learned model: %.4f", top1_f32);
            plain_f32 = top1_f32, plain_b16 = top1_b16;
        }
        CHECK(agreement >= BF16_BOUNDS[augmented].min_agreement, "bf16 and float agree on %.4f of the images",
              agreement);
        CHECK(fabsf(top1_b16 - top1_f32) <= BF16_BOUNDS[augmented].max_top1_change, "top-1 %.4f in bf16, %.4f in float",
              top1_b16, top1_f32);
        CHECK(kl / total <= BF16_BOUNDS[augmented].max_kl, "mean KL %.3g", kl / total);
        CHECK(worst_logit > 0, "bf16 logits equal the float ones: the bf16 path did not run");
    }
    free(images), free(logits), free(scratch), free(labels);
    model_free(f32);
    model_free(b16);
    data_close(&d);

    TEST_CASE("bfloat16 teacher: a distill job runs its teacher in bf16 (its test top-1, as measured above)");
    Watch wf = {0}, wb = {0};
    const char *model = "\"model\":{\"depth\":[1],\"base_width\":8,\"gn_groups\":4,\"stem\":\"small\"},\"batch_size\":250";
    char rest[512];
    snprintf(rest, sizeof rest, "%s,\"teacher_precision\":\"bfloat16\"", model);
    rc = run_small_distill(root, "teacher-f32", weights, ",\"test_size\":10000", model, &wf, err);
    CHECK(rc == TRAIN_DONE && wf.last_eval.has_teacher, "float teacher job: %d %s", rc, err);
    rc = run_small_distill(root, "teacher-bf16", weights, ",\"test_size\":10000", rest, &wb, err);
    CHECK(rc == TRAIN_DONE && wb.last_eval.has_teacher, "bf16 teacher job: %d %s", rc, err);
    CHECK(strstr(wb.log, "teacher's forward in bfloat16") && !strstr(wf.log, "bfloat16"),
          "the job log must say when the teacher runs in bfloat16:\n%s", wb.log);
    printf("     teacher test top-1 reported by the jobs: %.2f%% float, %.2f%% bf16\n",
           100 * wf.last_eval.teacher_test_top1, 100 * wb.last_eval.teacher_test_top1);
    /* the same batches of the same model on as many threads: the same logits */
    CHECK(wf.last_eval.teacher_test_top1 == plain_f32 && wb.last_eval.teacher_test_top1 == plain_b16,
          "the jobs' teachers scored %.4f (float) and %.4f (bf16), the direct runs above %.4f and %.4f",
          wf.last_eval.teacher_test_top1, wb.last_eval.teacher_test_top1, plain_f32, plain_b16);
}

static void test_recipes_parse(void) {
    TEST_CASE("every recipe in recipes/ is a valid spec");
    const char *names[] = {"demo", "fmnist-teacher", "fmnist-fm-1k", "fmnist-labels-1k"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char path[256], err[ERR_LEN];
        snprintf(path, sizeof path, "recipes/%s.json", names[i]);
        unsigned char *text;
        size_t size;
        JobSpec spec;
        int rc = read_file_all(path, &text, &size, err);
        CHECK(rc == 0, "%s", err);
        if (rc) continue;
        rc = jobspec_parse((const char *)text, &spec, err);
        free(text);
        CHECK(rc == 0, "%s: %s", path, err);
    }
}

int main(void) {
    test_recipes_parse();
    char root[] = "/tmp/distilld-test-train-XXXXXX";
    if (!mkdtemp(root)) return 2;
    char teacher[512] = "";
    test_resume(root, "train", NULL, teacher);
    test_resume(root, "distill", teacher, NULL);
    test_teacher_mismatch(root, teacher);
    test_teacher_augmented(root, teacher);
    char learned[512] = "";
    const float float_top1 = test_learns(root, learned);
    test_bf16_learns(root, float_top1);
    test_bf16_teacher(root, learned);
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf %s", root);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", root);
    return test_finish();
}
