/* main.c - the distilld program.
 *
 *   distilld [serve] [--listen ADDR] [--data-dir DIR] [--workers N] [--threads N] ...   the daemon
 *   distilld run SPEC.json [--run-dir DIR] [--cache-dir DIR] [--threads N] [--resume]   one job in the foreground
 *   distilld predict --weights W --input X.npy --output Y.npy [--threads N] [--precision P]
 *   distilld export --weights W --onnx OUT.onnx          the model as ONNX (core/onnx.h)
 *   distilld version
 *
 * Every command first makes sure OpenBLAS runs the best kernels this CPU has
 * (see core/blas.h) and says which core it runs on. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "blas.h"
#include "db.h"
#include "formats.h"
#include "http.h"
#include "jobspec.h"
#include "model.h"
#include "log.h"
#include "onnx.h"
#include "train.h"
#include "util.h"
#include "worker.h"

#define VERSION "0.1.0"

static void usage(FILE *f) {
    fprintf(f, "usage:\n"
               "  distilld [serve] [--listen ADDR] [--data-dir DIR] [--workers N] [--threads N]\n"
               "                   [--max-streams N] [--migrations DIR] [--web DIR] [--first-job SPEC.json]\n"
               "      the daemon: HTTP API on ADDR (default 127.0.0.1:8080), data in DIR (default ./var)\n"
               "  distilld run SPEC.json [--run-dir DIR] [--cache-dir DIR] [--threads N] [--resume]\n"
               "      train or distill one job in the foreground; DIR defaults to runs/<spec name>;\n"
               "      --threads overrides the spec's \"threads\"\n"
               "  distilld predict --weights W.safetensors --input X.npy --output Y.npy [--threads N]\n"
               "                   [--precision float32|bfloat16]\n"
               "      X: float32 [N,C,H,W], already normalized; Y: float32 logits [N,K];\n"
               "      bfloat16 runs the convolutions in bfloat16 (faster; CPUs with AVX512-BF16)\n"
               "  distilld export --weights W.safetensors --onnx OUT.onnx\n"
               "      the model as ONNX: input \"images\" float32 [batch,C,H,W], already normalized;\n"
               "      output \"logits\" [batch,K]\n"
               "  distilld version\n");
}

static void format_duration(char *out, size_t size, double seconds) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(out, size, "%ldh%02ldm", s / 3600, s / 60 % 60);
    else if (s >= 60) snprintf(out, size, "%ldm%02lds", s / 60, s % 60);
    else snprintf(out, size, "%lds", s);
}

/* ---- run ---- */

/* `distilld run` prints progress and keeps every step and evaluation in
 * run_dir/metrics.jsonl (one JSON object a line), for plots and tables. */
typedef struct {
    double last_print;
    const char *run_dir;
    long resume_step; /* -1: a fresh run */
    FILE *metrics;
} Progress;

/* Opened at the first metric (train_run has made the directory by then). A
 * resumed run keeps the lines up to its checkpoint's step, so the file holds
 * each step once. */
static FILE *metrics_file(Progress *p) {
    if (p->metrics) return p->metrics;
    char path[SPEC_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/metrics.jsonl", p->run_dir);
    char *kept = NULL;
    size_t kept_len = 0;
    if (p->resume_step >= 0) {
        FILE *old = fopen(path, "r");
        FILE *mem = open_memstream(&kept, &kept_len);
        char line[4096];
        while (old && mem && fgets(line, sizeof line, old)) {
            json_t *o = json_loads(line, 0, NULL);
            json_t *step = json_object_get(o, "step");
            if (json_is_integer(step) && json_integer_value(step) <= p->resume_step) fputs(line, mem);
            json_decref(o);
        }
        if (old) fclose(old);
        if (mem) fclose(mem);
    }
    p->metrics = fopen(path, "w");
    if (p->metrics && kept) fwrite(kept, 1, kept_len, p->metrics);
    free(kept);
    if (!p->metrics) fprintf(stderr, "distilld: cannot write %s\n", path);
    return p->metrics;
}

static void write_metrics(Progress *p, json_t *line) {
    FILE *f = metrics_file(p);
    char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    if (f && text) {
        fprintf(f, "%s\n", text);
        fflush(f);
    }
    free(text);
    json_decref(line);
}

static void print_log(void *ctx, const char *message) {
    (void)ctx;
    printf("%s\n", message);
    fflush(stdout);
}

static void print_step(void *ctx, const StepMetrics *m) {
    Progress *p = ctx;
    write_metrics(p, json_pack("{s:s,s:I,s:f,s:f,s:f,s:f,s:f}", "type", "step", "step", (json_int_t)m->step, "loss",
                               (double)m->loss, "lr", (double)m->lr, "grad_norm", (double)m->grad_norm,
                               "images_per_second", (double)m->images_per_second, "elapsed_seconds",
                               m->elapsed_seconds));
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
    Progress *p = ctx;
    json_t *line = json_pack("{s:s,s:I,s:f}", "type", "eval", "step", (json_int_t)e->step, "test_top1",
                             (double)e->test_top1);
    if (e->has_val) json_object_set_new(line, "val_top1", json_real(e->val_top1));
    if (e->has_teacher) {
        json_object_set_new(line, "teacher_test_top1", json_real(e->teacher_test_top1));
        json_object_set_new(line, "teacher_aug_top1", json_real(e->teacher_aug_top1));
        json_object_set_new(line, "test_agreement", json_real(e->test_agreement));
        if (e->has_val) {
            json_object_set_new(line, "teacher_val_top1", json_real(e->teacher_val_top1));
            json_object_set_new(line, "val_distill_loss", json_real(e->val_distill_loss));
        }
    }
    write_metrics(p, line);
    printf("eval at step %ld:", e->step);
    if (e->has_val) printf("  val top-1 %.2f%%", 100 * e->val_top1);
    printf("  test top-1 %.2f%%", 100 * e->test_top1);
    if (e->has_teacher) {
        printf("  teacher test top-1 %.2f%% (augmented %.2f%%)  agreement %.2f%%", 100 * e->teacher_test_top1,
               100 * e->teacher_aug_top1, 100 * e->test_agreement);
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
    const char *spec_path = NULL, *run_dir = NULL, *cache_dir = NULL;
    int resume = 0, threads = -1;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--resume") == 0) resume = 1;
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
            char *end;
            long n = strtol(argv[++i], &end, 10);
            if (*end || end == argv[i] || n < 0 || n > 1024) {
                fprintf(stderr, "distilld run: --threads must be an integer from 0 (every core) to 1024, got %s\n",
                        argv[i]);
                return 2;
            }
            threads = (int)n;
        }
        else if (strcmp(argv[i], "--run-dir") == 0 && i + 1 < argc) run_dir = argv[++i];
        else if (strcmp(argv[i], "--cache-dir") == 0 && i + 1 < argc) cache_dir = argv[++i];
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
    if (threads >= 0) spec.threads = threads;
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
    Progress progress = {.run_dir = run_dir, .resume_step = -1};
    TrainCallbacks cb = {.ctx = &progress, .on_log = print_log, .on_step = print_step, .on_eval = print_eval,
                         .on_checkpoint = print_checkpoint};
    TrainResult result;
    char checkpoint[SPEC_PATH_MAX + 64];
    const char *resume_from = NULL;
    if (resume && train_latest_checkpoint(run_dir, checkpoint, sizeof checkpoint) == 0) {
        resume_from = checkpoint;
        const char *name = strrchr(checkpoint, '/');
        if (sscanf(name ? name + 1 : checkpoint, "checkpoint-%ld", &progress.resume_step) != 1) progress.resume_step = 0;
    } else if (resume) {
        printf("no checkpoint in %s: starting from step 0\n", run_dir);
    }
    /* decoded photo datasets: $XDG_CACHE_HOME/distilld or ~/.cache/distilld */
    char cache[SPEC_PATH_MAX];
    if (!cache_dir && getenv("XDG_CACHE_HOME") && getenv("XDG_CACHE_HOME")[0]) {
        snprintf(cache, sizeof cache, "%s/distilld", getenv("XDG_CACHE_HOME"));
        cache_dir = cache;
    } else if (!cache_dir && getenv("HOME") && getenv("HOME")[0]) {
        snprintf(cache, sizeof cache, "%s/.cache/distilld", getenv("HOME"));
        cache_dir = cache;
    }
    rc = train_run(&spec, run_dir, cache_dir, resume_from, &cb, &result, err);
    if (progress.metrics) fclose(progress.metrics);
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
    const char *weights = NULL, *input = NULL, *output = NULL, *precision = "float32";
    int threads = 0;
    for (int i = 0; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--weights") == 0 && next) weights = argv[++i];
        else if (strcmp(argv[i], "--input") == 0 && next) input = argv[++i];
        else if (strcmp(argv[i], "--output") == 0 && next) output = argv[++i];
        else if (strcmp(argv[i], "--threads") == 0 && next) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--precision") == 0 && next) precision = argv[++i];
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
    const int bf16 = strcmp(precision, "bfloat16") == 0;
    if (!bf16 && strcmp(precision, "float32") != 0) {
        fprintf(stderr, "distilld predict: --precision must be float32 or bfloat16, not \"%s\"\n", precision);
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
    if (ndim == 4 && model_load(&m, weights, model_pass_capacity(shape[0], bf16), err) != 0) {
        fprintf(stderr, "distilld: %s\n", err);
        free(x);
        return 1;
    }
    if (ndim != 4 || shape[0] > INT_MAX || shape[1] != m->cfg.in_channels || shape[2] != m->cfg.image_size ||
        shape[3] != m->cfg.image_size) {
        if (ndim != 4)
            fprintf(stderr, "distilld: %s: expected a 4-D array [N,C,H,W], got %d dimensions\n", input, ndim);
        else if (shape[0] > INT_MAX)
            fprintf(stderr, "distilld: %s: %lld images, more than %d at once\n", input, (long long)shape[0], INT_MAX);
        else
            fprintf(stderr, "distilld: %s: images are [%lld,%lld,%lld] but the model takes [%d,%d,%d]\n", input,
                    (long long)shape[1], (long long)shape[2], (long long)shape[3], m->cfg.in_channels,
                    m->cfg.image_size, m->cfg.image_size);
        model_free(m);
        free(x);
        return 1;
    }
    if (bf16 && model_set_bf16(m, err) != 0) {
        fprintf(stderr, "distilld: --precision %s\n", err);
        model_free(m);
        free(x);
        return 1;
    }
    const int k = m->cfg.num_classes;
    float *y = xcalloc((size_t)shape[0] * k, sizeof(float));
    model_predict(m, y, x, (int)shape[0]);
    int64_t out_shape[2] = {shape[0], k};
    int rc = npy_write_f32(output, y, 2, out_shape, err);
    if (rc) fprintf(stderr, "distilld: %s\n", err);
    model_free(m);
    free(x);
    free(y);
    return rc ? 1 : 0;
}

/* ---- export ---- */

static int cmd_export(int argc, char **argv) {
    const char *weights = NULL, *onnx = NULL;
    for (int i = 0; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(argv[i], "--weights") == 0 && next) weights = argv[++i];
        else if (strcmp(argv[i], "--onnx") == 0 && next) onnx = argv[++i];
        else {
            fprintf(stderr, "distilld export: unexpected argument %s\n", argv[i]);
            usage(stderr);
            return 2;
        }
    }
    if (!weights || !onnx) {
        fprintf(stderr, "distilld export: --weights and --onnx are required\n");
        return 2;
    }
    char err[ERR_LEN];
    Model *m = NULL;
    if (model_load(&m, weights, 1, err) != 0 || onnx_export(m, onnx, err) != 0) {
        fprintf(stderr, "distilld: %s\n", err);
        model_free(m);
        return 1;
    }
    model_free(m);
    return 0;
}

/* ---- serve ---- */

/* SIGINT and SIGTERM write their number to a pipe that the main thread
 * reads: the handler may run on any thread (the workers', the HTTP server's,
 * OpenBLAS's), and a byte in a pipe is not lost the way a flag set just
 * before pause() is. */
static int stop_pipe[2] = {-1, -1};
static void on_signal(int sig) {
    unsigned char b = (unsigned char)sig;
    ssize_t n = write(stop_pipe[1], &b, 1);
    (void)n; /* a full pipe already holds a stop */
}

/* data_dir/token: created on first start, mode 0600; returned without newline. */
static int load_or_create_token(const char *data_dir, char *token, size_t size, char *path, size_t path_size,
                                char *err) {
    snprintf(path, path_size, "%s/token", data_dir);
    unsigned char *text;
    size_t n;
    if (read_file_all(path, &text, &n, NULL) == 0) {
        while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == ' ')) n--;
        text[n] = 0;
        int ok = n >= 16 && n < size;
        if (ok) snprintf(token, size, "%s", (char *)text);
        free(text);
        return ok ? 0 : set_error(err, "%s: the token file is empty or malformed; delete it to make a new one", path);
    }
    unsigned char raw[24];
    if (getrandom(raw, sizeof raw, 0) != (ssize_t)sizeof raw) return set_error(err, "no randomness for the token");
    for (size_t i = 0; i < sizeof raw; i++) snprintf(token + 2 * i, size - 2 * i, "%02x", raw[i]);
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) return set_error(err, "cannot create %s: %s", path, strerror(errno));
    char line[128];
    int len = snprintf(line, sizeof line, "%s\n", token);
    int bad = write(fd, line, len) != len || fsync(fd) != 0;
    close(fd);
    return bad ? set_error(err, "cannot write %s", path) : 0;
}

/* A folder next to the executable's repository (build/distilld -> ./X), else the installed one. */
static void default_dir(char *out, size_t size, const char *name) {
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *dir = dirname(exe);
        snprintf(out, size, "%s/../%s", dir, name);
        if (access(out, F_OK) == 0) return;
    }
    snprintf(out, size, "/usr/share/distilld/%s", name);
}

static int submit_spec_file(Db *db, const char *path, char *err) {
    unsigned char *text;
    size_t size;
    if (read_file_all(path, &text, &size, err) != 0) return -1;
    JobSpec spec;
    int rc = jobspec_parse((const char *)text, &spec, err);
    free(text);
    if (rc) return -1;
    char *canonical = jobspec_to_json(&spec);
    DbJob job;
    rc = db_job_create(db, spec.kind == JOB_DISTILL ? "distill" : "train", canonical, spec.steps, &job, err);
    free(canonical);
    if (rc) return -1;
    log_msg(LOG_INFO, "first start: submitted %s as job %s", path, job.id);
    db_job_free(&job);
    return 0;
}

static int is_loopback(const char *listen) {
    return strncmp(listen, "127.", 4) == 0 || strncmp(listen, "localhost:", 10) == 0 || strncmp(listen, "[::1]", 5) == 0;
}

static int cmd_serve(int argc, char **argv) {
    const char *listen = "127.0.0.1:8080", *data_dir = "var", *first_job = NULL;
    char migrations[PATH_MAX], web[PATH_MAX];
    default_dir(migrations, sizeof migrations, "migrations");
    default_dir(web, sizeof web, "web");
    int workers = 1, threads = 0, max_streams = 32;
    for (int i = 0; i < argc; i++) {
        const char *next = i + 1 < argc ? argv[i + 1] : NULL;
        if (!next) {
            fprintf(stderr, "distilld serve: %s needs a value (or is unknown)\n", argv[i]);
            return 2;
        }
        if (strcmp(argv[i], "--listen") == 0) listen = next;
        else if (strcmp(argv[i], "--data-dir") == 0) data_dir = next;
        else if (strcmp(argv[i], "--workers") == 0) workers = atoi(next);
        else if (strcmp(argv[i], "--threads") == 0) threads = atoi(next);
        else if (strcmp(argv[i], "--max-streams") == 0) max_streams = atoi(next);
        else if (strcmp(argv[i], "--migrations") == 0) snprintf(migrations, sizeof migrations, "%s", next);
        else if (strcmp(argv[i], "--web") == 0) snprintf(web, sizeof web, "%s", next);
        else if (strcmp(argv[i], "--first-job") == 0) first_job = next;
        else {
            fprintf(stderr, "distilld serve: unknown option %s\n", argv[i]);
            return 2;
        }
        i++;
    }
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    if (cores < 1) cores = 1;
    if (workers < 1 || workers > 64 || max_streams < 1) {
        fprintf(stderr, "distilld serve: --workers must be 1..64 and --max-streams at least 1\n");
        return 2;
    }
    if (threads == 0) threads = cores / workers > 0 ? (int)(cores / workers) : 1;
    if (threads < 1 || (long)threads * workers > cores) {
        fprintf(stderr, "distilld serve: %d workers x %d threads is more than the %ld cores\n", workers, threads, cores);
        return 2;
    }
    char err[ERR_LEN];
    if (mkdir(data_dir, 0700) != 0 && errno != EEXIST) {
        log_msg(LOG_ERROR, "cannot create %s: %s", data_dir, strerror(errno));
        return 1;
    }
    char token[128], token_path[PATH_MAX], db_path[PATH_MAX], runs[PATH_MAX];
    if (load_or_create_token(data_dir, token, sizeof token, token_path, sizeof token_path, err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return 1;
    }
    snprintf(runs, sizeof runs, "%s/runs", data_dir);
    if (mkdir(runs, 0700) != 0 && errno != EEXIST) {
        log_msg(LOG_ERROR, "cannot create %s: %s", runs, strerror(errno));
        return 1;
    }
    snprintf(db_path, sizeof db_path, "%s/distilld.db", data_dir);
    int first_start = access(db_path, F_OK) != 0;
    Db *db;
    if (db_open(&db, db_path, migrations, err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        return 1;
    }
    DbRecovered rec;
    if (db_recover(db, &rec, err) != 0) {
        log_msg(LOG_ERROR, "recovering jobs: %s", err);
        db_close(db);
        return 1;
    }
    if (rec.requeued)
        log_msg(LOG_INFO, "%d job%s left running by the last run re-queued; they resume from their checkpoints",
                rec.requeued, rec.requeued == 1 ? "" : "s");
    if (rec.paused)
        log_msg(LOG_INFO, "%d job%s left running by the last run with a pause asked for: paused at the last checkpoint",
                rec.paused, rec.paused == 1 ? "" : "s");
    if (rec.canceled)
        log_msg(LOG_INFO, "%d job%s left running by the last run with a cancel asked for: canceled", rec.canceled,
                rec.canceled == 1 ? "" : "s");
    if (first_start && first_job && submit_spec_file(db, first_job, err) != 0)
        log_msg(LOG_WARN, "first start: could not submit %s: %s", first_job, err);

    /* before the workers and the HTTP server start, so a stop during their start-up is not lost */
    if (pipe2(stop_pipe, O_CLOEXEC) != 0 || fcntl(stop_pipe[1], F_SETFL, O_NONBLOCK) != 0) {
        log_msg(LOG_ERROR, "cannot create a pipe: %s", strerror(errno));
        db_close(db);
        return 1;
    }
    struct sigaction sa = {.sa_handler = on_signal, .sa_flags = SA_RESTART};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    char real_data[PATH_MAX];
    if (!realpath(data_dir, real_data)) snprintf(real_data, sizeof real_data, "%s", data_dir);
    const char *roots[] = {real_data, DATASET_BUILTIN_ROOT, NULL};
    HttpConfig hc = {.db = db, .data_dir = data_dir, .token = token, .auth_reads = !is_loopback(listen),
                     .path_roots = roots, .web_dir = web, .max_streams = max_streams};
    Workers *w;
    WorkerConfig wc = {.db = db, .data_dir = data_dir, .count = workers, .threads_per_job = threads};
    if (workers_start(&w, &wc, err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        db_close(db);
        return 1;
    }
    HttpServer *http;
    int port = 0;
    if (http_start(&http, &hc, listen, &port, err) != 0) {
        log_msg(LOG_ERROR, "%s", err);
        workers_stop(w);
        db_close(db);
        return 1;
    }
    char host[256];
    snprintf(host, sizeof host, "%s", listen);
    char *colon = strrchr(host, ':');
    if (colon) *colon = 0;
    log_msg(LOG_INFO, "distilld %s: %s; %d worker%s x %d thread%s", VERSION, blas_describe(), workers,
            workers == 1 ? "" : "s", threads, threads == 1 ? "" : "s");
    log_msg(LOG_INFO, "listening on http://%s:%d (dashboard at /, API at /api/v1)", host, port);
    log_msg(LOG_INFO, "API token in %s (send it as: Authorization: Bearer <token>)", token_path);

    unsigned char sig = 0;
    for (ssize_t n; (n = read(stop_pipe[0], &sig, 1)) != 1;) {
        if (n == 0 || errno != EINTR) {
            log_msg(LOG_ERROR, "waiting for a signal: %s", strerror(errno));
            break;
        }
    }
    log_msg(LOG_INFO, "signal %d: stopping; running jobs checkpoint and return to the queue", sig);
    http_stop(http);
    workers_stop(w);
    db_close(db);
    log_msg(LOG_INFO, "stopped");
    return 0;
}

int main(int argc, char **argv) {
    blas_ensure_fast_core(argv);
    if (argc < 2 || argv[1][0] == '-') return cmd_serve(argc - 1, argv + 1);
    const char *cmd = argv[1];
    if (strcmp(cmd, "serve") == 0) return cmd_serve(argc - 2, argv + 2);
    if (strcmp(cmd, "run") == 0) return cmd_run(argc - 2, argv + 2);
    if (strcmp(cmd, "predict") == 0) return cmd_predict(argc - 2, argv + 2);
    if (strcmp(cmd, "export") == 0) return cmd_export(argc - 2, argv + 2);
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
