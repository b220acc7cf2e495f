/* main.c - the distilld program.
 *
 *   distilld run SPEC.json [--run-dir DIR] [--resume]   one job in the foreground
 *   distilld predict --weights W --input X.npy --output Y.npy [--threads N]
 *   distilld version
 *
 * Every command first makes sure OpenBLAS runs the best kernels this CPU has
 * (see core/blas.h) and says which core it runs on. */
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "formats.h"
#include "jobspec.h"
#include "model.h"
#include "train.h"
#include "util.h"

#define VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f, "usage:\n"
               "  distilld run SPEC.json [--run-dir DIR] [--resume]\n"
               "      train or distill one job in the foreground; DIR defaults to runs/<spec name>\n"
               "  distilld predict --weights W.safetensors --input X.npy --output Y.npy [--threads N]\n"
               "      X: float32 [N,C,H,W], already normalized; Y: float32 logits [N,K]\n"
               "  distilld version\n");
}

static void format_duration(char *out, size_t size, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(out, size, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
    else snprintf(out, size, "%lds", s);
}

/* ---- run ---- */

typedef struct {
    double last_print;
} Progress;

static void print_log(void *ctx, const char *message) {
    (void)ctx;
    printf("%s\n", message);
    fflush(stdout);
}

static void print_step(void *ctx, const StepMetrics *m) {
    Progress *p = ctx;
    double now = now_seconds();
    long every = m->total_steps / 100 > 0 ? m->total_steps / 100 : 1; /* ~100 lines a run, or every 10 s */
    if (m->step % every != 0 && m->step != m->total_steps && now - p->last_print < 10.0) return;
    p->last_print = now;
    char eta[32], elapsed[32];
    format_duration(eta, sizeof eta, m->eta_seconds);
    format_duration(elapsed, sizeof elapsed, m->elapsed_seconds);
    printf("step %ld/%ld  loss %.4f  lr %.3e  grad-norm %.3f  %.0f img/s  elapsed %s  ETA %s\n", m->step,
           m->total_steps, m->loss, m->lr, m->grad_norm, m->images_per_second, elapsed, eta);
    fflush(stdout);
}

static void print_eval(void *ctx, const EvalMetrics *e) {
    (void)ctx;
    printf("eval at step %ld:", e->step);
    if (e->has_val) printf("  val top-1 %.2f%%", 100 * e->val_top1);
    printf("  test top-1 %.2f%%", 100 * e->test_top1);
    if (e->has_teacher) {
        printf("  teacher test top-1 %.2f%%  agreement %.2f%%", 100 * e->teacher_test_top1, 100 * e->test_agreement);
        if (e->has_val) printf("  val distill loss %.4f", e->val_distill_loss);
    }
    printf("\n");
    fflush(stdout);
}

static void print_checkpoint(void *ctx, long step, const char *path) {
    (void)ctx;
    printf("checkpoint at step %ld: %s\n", step, path);
    fflush(stdout);
}

static int cmd_run(int argc, char **argv) {
    const char *spec_path = NULL, *run_dir = NULL;
    int resume = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--resume") == 0) resume = 1;
        else if (strcmp(argv[i], "--run-dir") == 0 && i + 1 < argc) run_dir = argv[++i];
        else if (argv[i][0] == '-') {
            fprintf(stderr, "distilld run: unknown option %s\n", argv[i]);
            return 2;
        } else if (!spec_path) spec_path = argv[i];
        else {
            fprintf(stderr, "distilld run: one spec at a time (got %s and %s)\n", spec_path, argv[i]);
            return 2;
        }
    }
    if (!spec_path) {
        usage(stderr);
        return 2;
    }
    char err[ERR_LEN];
    unsigned char *text;
    size_t size;
    if (read_file_all(spec_path, &text, &size, err) != 0) {
        fprintf(stderr, "distilld: %s\n", err);
        return 1;
    }
    JobSpec spec;
    int rc = jobspec_parse((const char *)text, &spec, err);
    free(text);
    if (rc) {
        fprintf(stderr, "distilld: %s: %s\n", spec_path, err);
        return 1;
    }
    char dir[SPEC_PATH_MAX];
    if (!run_dir) {
        char copy[SPEC_PATH_MAX];
        snprintf(copy, sizeof copy, "%s", spec_path);
        char *name = basename(copy), *dot = strrchr(name, '.');
        if (dot && dot != name) *dot = 0;
        snprintf(dir, sizeof dir, "runs/%s", name);
        run_dir = dir;
    }
    printf("distilld %s: %s\n", VERSION, blas_describe());
    Progress progress = {0};
    TrainCallbacks cb = {.ctx = &progress, .on_log = print_log, .on_step = print_step, .on_eval = print_eval,
                         .on_checkpoint = print_checkpoint};
    TrainResult result;
    rc = train_run(&spec, run_dir, resume, &cb, &result, err);
    if (rc < 0) {
        fprintf(stderr, "distilld: %s\n", err);
        return 1;
    }
    printf("done: %ld steps, test top-1 %.2f%%, weights in %s\n", result.steps_done, 100 * result.final_test_top1,
           result.weights_path);
    return 0;
}

/* ---- predict ---- */

static int cmd_predict(int argc, char **argv) {
    const char *weights = NULL, *input = NULL, *output = NULL;
    int threads = 0;
    for (int i = 0; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--weights") == 0 && next) weights = argv[++i];
        else if (strcmp(argv[i], "--input") == 0 && next) input = argv[++i];
        else if (strcmp(argv[i], "--output") == 0 && next) output = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && next) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "distilld predict: unexpected argument %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!weights || !input || !output) {
        fprintf(stderr, "distilld predict: --weights, --input and --output are required\n");
        return 2;
    }
    train_threads(threads);
    char err[ERR_LEN];
    float *x = NULL;
    int ndim;
    int64_t shape[FORMATS_MAX_DIMS];
    if (npy_read_f32(input, &x, &ndim, shape, err) != 0) {
        fprintf(stderr, "distilld: %s\n", err);
        return 1;
    }
    Model *m = NULL;
    int chunk = shape[0] < 64 ? (int)(shape[0] > 0 ? shape[0] : 1) : 64;
    if (ndim == 4 && model_load(&m, weights, chunk, err) != 0) {
        fprintf(stderr, "distilld: %s\n", err);
        free(x);
        return 1;
    }
    if (ndim != 4 || shape[1] != m->cfg.in_channels || shape[2] != m->cfg.image_size || shape[3] != m->cfg.image_size) {
        if (ndim != 4)
            fprintf(stderr, "distilld: %s: expected a 4-D array [N,C,H,W], got %d dimensions\n", input, ndim);
        else
            fprintf(stderr, "distilld: %s: images are [%lld,%lld,%lld] but the model takes [%d,%d,%d]\n", input,
                    (long long)shape[1], (long long)shape[2], (long long)shape[3], m->cfg.in_channels,
                    m->cfg.image_size, m->cfg.image_size);
        model_free(m);
        free(x);
        return 1;
    }
    const int k = m->cfg.num_classes;
    const size_t image_floats = (size_t)shape[1] * shape[2] * shape[3];
    float *y = xcalloc((size_t)shape[0] * k, sizeof(float));
    for (int64_t start = 0; start < shape[0]; start += chunk) {
        int n = shape[0] - start < chunk ? (int)(shape[0] - start) : chunk;
        const float *logits = model_forward(m, x + start * image_floats, n);
        memcpy(y + start * k, logits, sizeof(float) * n * k);
    }
    int64_t out_shape[2] = {shape[0], k};
    int rc = npy_write_f32(output, y, 2, out_shape, err);
    if (rc) fprintf(stderr, "distilld: %s\n", err);
    model_free(m);
    free(x);
    free(y);
    return rc ? 1 : 0;
}

int main(int argc, char **argv) {
    blas_ensure_fast_core(argv);
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    const char *cmd = argv[1];
    if (strcmp(cmd, "run") == 0) return cmd_run(argc - 2, argv + 2);
    if (strcmp(cmd, "predict") == 0) return cmd_predict(argc - 2, argv + 2);
    if (strcmp(cmd, "version") == 0 || strcmp(cmd, "--version") == 0) {
        printf("distilld %s\n%s\n", VERSION, blas_describe());
        return 0;
    }
    if (strcmp(cmd, "help") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0) {
        usage(stdout);
        return 0;
    }
    fprintf(stderr, "distilld: unknown command \"%s\"\n", cmd);
    usage(stderr);
    return 2;
}
