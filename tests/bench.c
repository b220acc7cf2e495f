/* bench.c - times one kind of step of distilld's engine, for make bench.
 *
 *   bench KIND MODEL_JSON [TEACHER_JSON] --batch B --threads N [--iters I] [--warmup W] [--bf16]
 *         [--bf16-student]
 *
 * KIND: train (supervised step: forward, cross-entropy, backward, Adam),
 * distill (augmentation + mixup of the batch, teacher forward in passes
 * (model_pass_capacity) as a job runs it, student forward/backward on T^2 KL,
 * Adam), infer (forward in passes, as distilld predict runs it). --bf16 runs the
 * teacher (distill) or the model (train, infer) in bfloat16 (model_set_bf16),
 * as a job with "teacher_precision" or "precision": "bfloat16" does;
 * --bf16-student runs a distill step's student in bfloat16. Random weights and
 * images; the work per step does not depend on their values. Prints one JSON
 * line: median images/s over the timed iterations, GFLOP/s achieved (counted
 * as direct convolution: an effective rate where Winograd does fewer), the
 * sgemm rate on the step's own GEMM shapes and the share of the step that
 * those GEMMs alone would take, and the peak resident memory of the
 * process. */
#include <jansson.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "augment.h"
#include "bf16.h"
#include "blas.h"
#include "jobspec.h"
#include "model.h"
#include "ops.h"
#include "optim.h"
#include "train.h"
#include "util.h"

static int compare_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static Model *make_model(const char *json, int batch, int inference) {
    char err[ERR_LEN];
    json_error_t jerr;
    json_t *o = json_loads(json, 0, &jerr);
    ModelConfig c;
    model_config_defaults(&c);
    Model *m = NULL;
    if (!o || jobspec_parse_model(o, &c, err) != 0 || (inference ? model_create_inference(&m, &c, batch, err) : model_create(&m, &c, batch, err)) != 0) {
        fprintf(stderr, "bench: model %s: %s\n", json, o ? err : jerr.text);
        exit(2);
    }
    json_decref(o);
    model_init_bit(m, 1);
    Rng rng = rng_derive(7, 1, 0);
    for (size_t i = m->head_kernel; i < m->head_kernel + (size_t)m->head_channels * c.num_classes; i++)
        m->weights[i] = 0.01f * (float)rng_normal(&rng);
    return m;
}

/* multiply-adds of one forward pass per image as direct convolution, x2 for FLOPs */
static double forward_flops(const Model *m) {
    double f = 0;
    for (int i = 0; i < m->num_convs; i++) {
        const ConvShape *s = &m->convs[i]->shape;
        f += 2.0 * s->out_channels * s->out_h * s->out_w * s->in_channels * s->kernel_h * s->kernel_w;
    }
    return f + 2.0 * m->head_channels * m->cfg.num_classes;
}

/* Seconds that OpenBLAS alone needs for the GEMMs of a step's convolutions,
 * at the shapes the step runs them, through blas_sgemm as the step does: per
 * image (or group of images, conv_group), the batch split over the threads as
 * conv2d_forward/backward split it, forward (W . col) and, for a training
 * step, the backward products conv2d_backward runs: dout . col^T (or its
 * transpose, conv_dw_transposed) and W^T . dout, or, where the input
 * gradient is a convolution (conv_input_grad_is_conv), the two products on
 * the im2col of dout; the stem has no input gradient. A Winograd conv
 * (conv_winograd_tile) runs 36 GEMMs per group of images instead (on images
 * 4 pixels wide: 16): U . V forward, dM . V^T and U^T . dM backward,
 * with 4x4 (2x2) tiles as columns, a backward's groups in bf16 as
 * conv_bf16_dw_group. Best of
 * 3; *executed gets the FLOPs of those GEMMs. Nothing else is timed: this is
 * the least time the step could take with the same GEMMs. A model that runs
 * in bfloat16 (model_set_bf16) is timed, for each conv it runs in bf16
 * (conv_bf16_faster), with the bf16 GEMMs instead, as
 * conv2d_forward_bf16 and conv2d_backward run them: bf16_gemm with packed
 * kernels (W, U, and W^T or U^T backward), bf16_gemm_nt for dW (of a group
 * of images at once, conv_bf16_dw_group). */
static double conv_gemm_seconds(const Model *m, int batch, int backward, double *executed) {
    const int threads = omp_get_max_threads();
    double total = 0;
    for (int i = 0; i < m->num_convs; i++) {
        const ConvShape *s = &m->convs[i]->shape;
        const int bf16 = m->w_bf16 && conv_bf16_faster(s);
        const int M = s->out_channels, N = s->out_h * s->out_w, K = s->in_channels * s->kernel_h * s->kernel_w;
        const int kk = s->kernel_h * s->kernel_w, cin = s->in_channels, hw = s->in_h * s->in_w;
        const int grad_conv = i > 0 && conv_input_grad_is_conv(s);
        const int group = conv_group(s, threads, bf16), groups = (batch + group - 1) / group;
        const int tile = conv_winograd_tile(s, bf16), mats = (tile + 2) * (tile + 2);
        if (tile) {
            const int tiles = ((s->out_h + tile - 1) / tile) * ((s->out_w + tile - 1) / tile);
            const int bgroup = bf16 ? conv_bf16_dw_group(s) : conv_group(s, 1, 0);
            const int bgroups = (batch + bgroup - 1) / bgroup, most = group > bgroup ? group : bgroup;
            const size_t mat = (size_t)(M > cin ? M : cin) * tiles * most, uw = (size_t)M * cin;
            float *u = xcalloc(mats * uw, sizeof(float)), *du = xcalloc((size_t)threads * mats * uw, sizeof(float));
            float *v = xcalloc((size_t)threads * mats * mat, sizeof(float));
            float *o = xcalloc((size_t)threads * mats * mat, sizeof(float));
            for (size_t j = 0; j < mats * uw; j++) u[j] = 0.01f * (float)(j % 13);
            uint32_t *packed = bf16 ? xcalloc(mats * bf16_packed_size(M, cin), sizeof(uint32_t)) : NULL;
            uint32_t *packed_t = bf16 ? xcalloc(mats * bf16_packed_size(cin, M), sizeof(uint32_t)) : NULL;
            const size_t nrows = bf16_nt_rows_size(M, cin, tiles * bgroup, 1);
            uint32_t *rows = bf16 ? xcalloc(threads * nrows, sizeof(uint32_t)) : NULL;
            for (int x = 0; packed && x < mats; x++) {
                bf16_pack(packed + x * bf16_packed_size(M, cin), u + x * uw, M, cin, cin, 1);
                bf16_pack(packed_t + x * bf16_packed_size(cin, M), u + x * uw, cin, M, 1, cin);
            }
            for (size_t j = 0; j < (size_t)threads * mats * mat; j++) v[j] = 0.01f * (float)(j % 7);
            double best = 1e30;
            for (int rep = 0; rep < 3; rep++) {
                double t0 = now_seconds();
#pragma omp parallel for schedule(static)
                for (int g = 0; g < groups; g++) {
                    const int t = omp_get_thread_num(), n = (batch - g * group < group ? batch - g * group : group) * tiles;
                    for (int x = 0; x < mats; x++)
                        if (packed)
                            bf16_gemm(o + ((size_t)t * mats + x) * mat, n, packed + x * bf16_packed_size(M, cin),
                                      v + ((size_t)t * mats + x) * mat, n, M, n, cin, 0);
                        else
                            blas_sgemm(0, 0, M, n, cin, u + x * uw, cin, v + ((size_t)t * mats + x) * mat, n, 0.0f,
                                       o + ((size_t)t * mats + x) * mat, n);
                }
#pragma omp parallel for schedule(static)
                for (int g = 0; g < (backward ? bgroups : 0); g++) {
                    const int t = omp_get_thread_num();
                    const int n = (batch - g * bgroup < bgroup ? batch - g * bgroup : bgroup) * tiles;
                    for (int x = 0; x < mats; x++) {
                        float *vx = v + ((size_t)t * mats + x) * mat, *ox = o + ((size_t)t * mats + x) * mat;
                        if (bf16) {
                            const Bf16Runs dm = {ox, n, 0}, v = {vx, n, 0};
                            bf16_gemm_nt(du + ((size_t)t * mats + x) * uw, cin, dm, M, v, cin, n, 1, rows + t * nrows);
                            if (i > 0) bf16_gemm(vx, n, packed_t + x * bf16_packed_size(cin, M), ox, n, cin, n, M, 0);
                            continue;
                        }
                        blas_sgemm(0, 1, M, cin, n, ox, n, vx, n, 1.0f, du + ((size_t)t * mats + x) * uw, cin);
                        if (i > 0) blas_sgemm(1, 0, cin, n, M, u + x * uw, cin, ox, n, 0.0f, vx, n);
                    }
                }
                double dt = now_seconds() - t0;
                if (dt < best) best = dt;
            }
            total += best;
            *executed += 2.0 * mats * M * cin * tiles * batch * (1 + (backward ? (i > 0 ? 2 : 1) : 0));
            free(u), free(du), free(v), free(o), free(packed), free(packed_t), free(rows);
            continue;
        }
        /* a backward takes dW of a group of images in one GEMM (bf16: conv_bf16_dw_group; float: as the forward
         * groups them, with their input gradients), the input gradients of as many as a float GEMM takes */
        const int in_group = conv_group(s, 1, 0), transposed = !bf16 && conv_dw_transposed(s);
        const int dw_group = !backward || grad_conv ? 1 : bf16 ? conv_bf16_dw_group(s) : in_group;
        const int most = group > dw_group ? group : dw_group, dw_groups = (batch + dw_group - 1) / dw_group;
        size_t cols = grad_conv && (size_t)M * kk * hw > (size_t)K * N ? (size_t)M * kk * hw : (size_t)K * N;
        if ((size_t)K * N * most > cols) cols = (size_t)K * N * most;
        float *w = xcalloc((size_t)M * K, sizeof(float));
        float *col = xcalloc((size_t)threads * cols, sizeof(float));
        float *dcol = xcalloc((size_t)threads * cols, sizeof(float));
        float *out = xcalloc((size_t)threads * M * N * most, sizeof(float));
        float *dw = xcalloc((size_t)threads * M * K, sizeof(float));
        for (size_t j = 0; j < (size_t)M * K; j++) w[j] = 0.01f * (float)(j % 13);
        uint32_t *packed = bf16 ? xcalloc(bf16_packed_size(M, K), sizeof(uint32_t)) : NULL;
        uint32_t *packed_t = bf16 ? xcalloc(bf16_packed_size(K, M), sizeof(uint32_t)) : NULL; /* W^T, or flipped */
        const size_t nrows = grad_conv ? bf16_nt_rows_size(M * kk, cin, hw, 1) : bf16_nt_rows_size(M, K, N, dw_group);
        uint32_t *rows = bf16 ? xcalloc(threads * nrows, sizeof(uint32_t)) : NULL;
        if (packed) {
            bf16_pack(packed, w, M, K, K, 1);
            if (grad_conv)
                bf16_pack(packed_t, w, cin, M * kk, M * kk, 1);
            else
                bf16_pack(packed_t, w, K, M, 1, K);
        }
        for (size_t j = 0; j < (size_t)threads * cols; j++) col[j] = 0.01f * (float)(j % 7);
        double best = 1e30;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now_seconds();
#pragma omp parallel for schedule(static)
            for (int g = 0; g < groups; g++) {
                const int t = omp_get_thread_num(), n = (batch - g * group < group ? batch - g * group : group) * N;
                if (packed)
                    bf16_gemm(out + (size_t)t * M * N * most, n, packed, col + (size_t)t * cols, n, M, n, K, 0);
                else
                    blas_sgemm(0, 0, M, n, K, w, K, col + (size_t)t * cols, n, 0.0f, out + (size_t)t * M * N * most, n);
            }
#pragma omp parallel for schedule(static)
            for (int b = 0; b < (backward ? dw_groups : 0); b++) { /* backward: per image (bf16: per dW group) */
                const int t = omp_get_thread_num(), left = batch - b * dw_group;
                const int count = left < dw_group ? left : dw_group;
                float *c = col + (size_t)t * cols, *o = out + (size_t)t * M * N * most, *d = dcol + (size_t)t * cols;
                if (bf16 && grad_conv) {
                    const Bf16Runs dcols = {c, hw, 0}, img = {d, hw, 0};
                    bf16_gemm_nt(dw + (size_t)t * M * K, cin, dcols, M * kk, img, cin, hw, 1, rows + t * nrows);
                    bf16_gemm(d, hw, packed_t, c, hw, cin, hw, M * kk, 1);
                    continue;
                }
                if (bf16) {
                    bf16_gemm_nt(dw + (size_t)t * M * K, K, (Bf16Runs){o, N, (size_t)M * N}, M,
                                 (Bf16Runs){c, (size_t)count * N, N}, K, N, count, rows + t * nrows);
                    for (int g = 0; i > 0 && g < count; g += in_group) {
                        const int n = (count - g < in_group ? count - g : in_group) * N;
                        bf16_gemm(d, n, packed_t, o + (size_t)g * M * N, n, K, n, M, 0);
                    }
                    continue;
                }
                if (grad_conv) { /* c stands for the im2col of dout, d for the input and its gradient */
                    blas_sgemm(0, 1, M * kk, cin, hw, c, hw, d, hw, 1.0f, dw + (size_t)t * M * K, cin);
                    blas_sgemm(0, 0, cin, hw, M * kk, w, M * kk, c, hw, 1.0f, d, hw);
                    continue;
                }
                const int n = count * N;
                if (transposed)
                    blas_sgemm(0, 1, K, M, n, c, n, o, n, 1.0f, dw + (size_t)t * M * K, M);
                else
                    blas_sgemm(0, 1, M, K, n, o, n, c, n, 1.0f, dw + (size_t)t * M * K, K);
                if (i > 0) blas_sgemm(1, 0, K, n, M, w, K, o, n, 0.0f, d, n);
            }
            double dt = now_seconds() - t0;
            if (dt < best) best = dt;
        }
        total += best;
        *executed += 2.0 * M * N * K * batch * (1 + (backward ? (i > 0 ? 2 : 1) : 0));
        free(w), free(col), free(out), free(dw), free(dcol), free(packed), free(packed_t), free(rows);
    }
    return total;
}

/* conv_gemm_seconds of a forward of `batch` images as model_predict runs an
 * inference model: passes of as many images as it does (see model_predict),
 * each on one thread, the threads side by side; a thread's time is its
 * passes' GEMMs, timed while the other threads time theirs */
static double passes_gemm_seconds(const Model *m, int batch, double *executed) {
    const int threads = m->threads, pass = model_lane_pass(m, batch);
    const int passes = (batch + pass - 1) / pass, most = (passes + threads - 1) / threads;
    double seconds = 0, flops = 0;
#pragma omp parallel num_threads(threads) reduction(max : seconds)
    {
        double mine = 0;
        omp_set_num_threads(1);
        seconds = most * conv_gemm_seconds(m, pass, 0, &mine);
        if (omp_get_thread_num() == 0) flops = mine;
    }
    *executed += flops * passes;
    return seconds;
}

int main(int argc, char **argv) {
    blas_ensure_fast_core(argv);
    if (argc < 3) {
        fprintf(stderr, "usage: bench train|distill|infer MODEL_JSON [TEACHER_JSON] --batch B --threads N\n");
        return 2;
    }
    const char *kind = argv[1], *student_json = argv[2], *teacher_json = NULL;
    int batch = 128, threads = 1, iters = 10, warmup = 3, bf16 = 0, bf16_student = 0;
    for (int i = 3; i < argc; i++) {
        if (strcmp(argv[i], "--batch") == 0 && i + 1 < argc) batch = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--iters") == 0 && i + 1 < argc) iters = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0 && i + 1 < argc) warmup = atoi(argv[++i]);
        else if (strcmp(argv[i], "--bf16") == 0) bf16 = 1;
        else if (strcmp(argv[i], "--bf16-student") == 0) bf16_student = 1;
        else teacher_json = argv[i];
    }
    int is_train = strcmp(kind, "train") == 0, is_distill = strcmp(kind, "distill") == 0;
    if (!is_train && !is_distill && strcmp(kind, "infer") != 0) {
        fprintf(stderr, "bench: unknown kind %s\n", kind);
        return 2;
    }
    if (is_distill && !teacher_json) {
        fprintf(stderr, "bench: distill needs a teacher config\n");
        return 2;
    }
    train_threads(threads);
    /* the teacher (and inference) without gradients, as a job runs it */
    const int is_infer = !is_train && !is_distill;
    Model *student = make_model(student_json, is_infer ? model_pass_capacity(batch, bf16) : batch, is_infer);
    Model *teacher = is_distill ? make_model(teacher_json, model_pass_capacity(batch, bf16), 1) : NULL; /* as a job */
    char err[ERR_LEN];
    if (bf16_student && !is_distill) {
        fprintf(stderr, "bench: --bf16-student is for distill (train and infer take --bf16)\n");
        return 2;
    }
    if ((bf16 && model_set_bf16(is_distill ? teacher : student, err) != 0) ||
        (bf16_student && model_set_bf16(student, err) != 0)) {
        fprintf(stderr, "bench: %s\n", err);
        return 2;
    }
    const ModelConfig *c = &student->cfg;
    const int k = c->num_classes;
    const size_t image_floats = (size_t)c->in_channels * c->image_size * c->image_size;
    float *raw = xcalloc(batch * image_floats, sizeof(float)), *images = xcalloc(batch * image_floats, sizeof(float));
    float *targets = xcalloc((size_t)batch * k, sizeof(float)), *dlogits = xcalloc((size_t)batch * k, sizeof(float));
    float *probs = xcalloc((size_t)batch * k, sizeof(float)), *tprobs = xcalloc((size_t)batch * k, sizeof(float));
    float *tlogits = xcalloc((size_t)batch * k, sizeof(float));
    float *tmp = xcalloc(image_floats > (size_t)k ? image_floats : (size_t)k, sizeof(float));
    Rng rng = rng_derive(3, 2, 0);
    for (size_t i = 0; i < batch * image_floats; i++) raw[i] = rng_uniform(&rng);
    for (int b = 0; b < batch; b++) targets[(size_t)b * k + rng_below(&rng, k)] = 1.0f;
    OptimConfig opt = {.lr = 1e-3f, .weight_decay = 1e-4f, .clip_norm = 1.0f, .warmup_steps = 0, .total_steps = 1000000};

    /* inference with fixed weights standardizes (and transforms) them once, on its first call: untimed, as
     * PyTorch's side freezes its standardized weights up front */
    if (is_infer) model_predict(student, tlogits, raw, batch);
    double *times = xcalloc(iters, sizeof(double));
    for (int it = -warmup; it < iters; it++) {
        double t0 = now_seconds();
        if (is_distill) {
            /* the step's data work: inception crop + flip of every image, then
             * mixup; in parallel, each image's draws its own, as a job does it */
#pragma omp parallel for schedule(dynamic, 4)
            for (int b = 0; b < batch; b++) {
                Rng mine = rng_derive(3, 3, (uint64_t)(it + warmup) * 65536u + (uint64_t)b);
                CropBox box = inception_crop_box(&mine, c->image_size, c->image_size, 0.05f, 1.0f);
                float *out = images + b * image_floats;
                resize_bilinear(out, c->image_size, c->image_size, raw + b * image_floats, c->in_channels,
                                c->image_size, c->image_size, box);
                if (rng_next(&mine) & 1) flip_horizontal(out, c->in_channels, c->image_size, c->image_size);
            }
            mixup_batch(images, image_floats, NULL, k, batch, mixup_coefficient(&rng), tmp);
            model_predict(teacher, tlogits, images, batch);
            const float *logits = model_forward(student, images, batch);
            distill_loss_forward(probs, tprobs, logits, tlogits, batch, k, 1.0f);
            memset(dlogits, 0, sizeof(float) * batch * k);
            distill_loss_backward(dlogits, probs, tprobs, batch, k, 1.0f);
            model_zero_grad(student);
            model_backward(student, dlogits, batch);
            optimizer_step(student, &opt, 100);
        } else if (is_train) {
            const float *logits = model_forward(student, raw, batch);
            cross_entropy_forward(probs, logits, targets, batch, k);
            memset(dlogits, 0, sizeof(float) * batch * k);
            cross_entropy_backward(dlogits, probs, targets, batch, k);
            model_zero_grad(student);
            model_backward(student, dlogits, batch);
            optimizer_step(student, &opt, 100);
        } else {
            model_predict(student, tlogits, raw, batch);
        }
        if (it >= 0) times[it] = now_seconds() - t0;
    }
    qsort(times, iters, sizeof(double), compare_double);
    double median = iters % 2 ? times[iters / 2] : 0.5 * (times[iters / 2 - 1] + times[iters / 2]);
    double flops = forward_flops(student) * (is_train || is_distill ? 3.0 : 1.0) * batch;
    if (teacher) flops += forward_flops(teacher) * batch;
    double executed = 0, gemm = is_infer ? passes_gemm_seconds(student, batch, &executed)
                                         : conv_gemm_seconds(student, batch, is_train || is_distill, &executed);
    if (teacher) gemm += passes_gemm_seconds(teacher, batch, &executed);
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    printf("{\"impl\": \"distilld\", \"kind\": \"%s\", \"batch\": %d, \"threads\": %d, \"images_per_second\": %.1f, "
           "\"gflops\": %.1f, \"sgemm_gflops\": %.1f, \"gemm_share\": %.3f, \"peak_rss_mb\": %.1f, \"params\": %zu, "
           "\"blas\": \"%s\", \"precision\": \"%s\", \"student_precision\": \"%s\"}\n",
           kind, batch, threads, batch / median, flops / median * 1e-9, executed / gemm * 1e-9, gemm / median,
           ru.ru_maxrss / 1024.0, student->num_floats, blas_describe(), bf16 ? "bfloat16" : "float32",
           bf16_student ? "bfloat16" : "float32");
    model_free(student);
    model_free(teacher);
    free(raw), free(images), free(targets), free(dlogits), free(probs), free(tprobs), free(tlogits), free(tmp);
    free(times);
    return 0;
}
