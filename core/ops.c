/* ops.c - forward/backward pairs of every layer in a BiT ResNetV2.
 *
 * Convolution is im2col + one cblas_sgemm per image: the per-image GEMMs
 * (N = Ho*Wo) stay in cache, which on this hardware beats one whole-batch
 * GEMM; only images of a few pixels go several to a GEMM (conv_group). A 1x1
 * stride-1 convolution needs no im2col: the image is already the column
 * matrix. The backward pass of a stride-1 convolution takes both
 * gradients from one im2col, of dout (conv_input_grad_is_conv). Statistics
 * (GroupNorm, weight standardization) accumulate in double so that large
 * groups do not lose precision. */
#include "ops.h"

#include <cblas.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* ------------------------------------------------------------------ conv */

int conv_shape_init(ConvShape *s) {
    s->out_h = (s->in_h + 2 * s->pad - s->kernel_h) / s->stride + 1;
    s->out_w = (s->in_w + 2 * s->pad - s->kernel_w) / s->stride + 1;
    if (s->in_h + 2 * s->pad < s->kernel_h || s->in_w + 2 * s->pad < s->kernel_w) return -1;
    return s->out_h > 0 && s->out_w > 0 ? 0 : -1;
}

static int conv_is_pointwise(const ConvShape *s) {
    return s->kernel_h == 1 && s->kernel_w == 1 && s->stride == 1 && s->pad == 0;
}

/* The input gradient of a stride-1 convolution is itself a stride-1
 * convolution: of dout, with the kernel flipped and its two channel axes
 * swapped, padded kernel-1-pad. Its GEMM, Cin x (H*W) x (Cout*KH*KW), has the
 * forward's long inner dimension where W^T . dout has only Cout, it needs no
 * col2im scatter, and its im2col of dout also gives dW, so the input's im2col
 * is not rebuilt. Measured per 128 images, one thread, backward: 3x3 16->16
 * at 28x28 58 -> 37 ms, 64->64 at 16x16 178 -> 148 ms; but 256->256 at 4x4
 * 196 -> 227 ms, where the im2col of dout is mostly border. */
int conv_input_grad_is_conv(const ConvShape *s) {
    return !conv_is_pointwise(s) && s->stride == 1 && s->kernel_h == s->kernel_w && s->pad < s->kernel_h &&
           s->out_channels < 256;
}

static ConvShape conv_input_grad_shape(const ConvShape *s) {
    ConvShape t = {.batch = s->batch, .in_channels = s->out_channels, .in_h = s->out_h, .in_w = s->out_w,
                   .out_channels = s->in_channels, .kernel_h = s->kernel_h, .kernel_w = s->kernel_w,
                   .stride = 1, .pad = s->kernel_h - 1 - s->pad};
    conv_shape_init(&t); /* out_h, out_w = in_h, in_w */
    return t;
}

/* im2col copies rows in blocks of COPY_BLOCK floats, rounding each row's
 * length up: a row's tail is garbage that the next row overwrites, since
 * rows are written in order, and the last row's lands in COPY_BLOCK floats
 * of slack after the column matrix. Reads round up the same way, into the
 * slack after the phase planes. */
#define COPY_BLOCK 8
/* one unaligned vector load or store */
typedef float Block __attribute__((vector_size(COPY_BLOCK * sizeof(float)), aligned(sizeof(float)), may_alias));

/* The zero-bordered input plane im2col reads from, split by column into
 * `stride` phase planes (phase p holds the padded columns p, p+stride, ...),
 * so that every row of the column matrix is a contiguous copy: tap kw of
 * output column ow reads padded column ow*stride+kw, which is column
 * ow + kw/stride of phase kw%stride. */
typedef struct {
    int rows, cols; /* of each phase plane */
    size_t plane;   /* floats of each */
} Phases;

static Phases conv_phases(const ConvShape *s) {
    Phases p = {.rows = s->in_h + 2 * s->pad};
    p.cols = (s->in_w + 2 * s->pad + s->stride - 1) / s->stride;
    p.plane = (size_t)p.rows * p.cols;
    return p;
}

/* Floats of the phase planes and their slack, for im2col. */
static size_t conv_padded_plane(const ConvShape *s) {
    return (size_t)s->stride * conv_phases(s).plane + COPY_BLOCK;
}

/* Images per forward GEMM: one, unless an image has fewer than
 * GROUP_COLUMNS output pixels. A GEMM of one image's 4x4 outputs packs the
 * whole kernel for 16 columns of work; side by side, up to GROUP_IMAGES
 * images share that packing. Measured per 128 images, one thread, forward:
 * 3x3 128->128 at 4x4 8.5 -> 7.4 ms, 1x1 512->128 at 4x4 3.9 -> 3.4 ms; at
 * 7x7 no change, and a larger GROUP_COLUMNS (groups at 14x14) was slower. */
#define GROUP_COLUMNS 256
#define GROUP_IMAGES 16

int conv_group(const ConvShape *s, int threads) {
    const int n = s->out_h * s->out_w, share = (s->batch + threads - 1) / threads; /* every thread gets a group */
    int g = (GROUP_COLUMNS + n - 1) / n;
    if (g > GROUP_IMAGES) g = GROUP_IMAGES;
    return g < share ? g : share > 0 ? share : 1;
}

/* Per thread: im2col of one image, or of a group of images side by side in
 * the forward pass; the column gradient, or the im2col of dout when the input
 * gradient is a convolution, or a group's output before it is scattered to
 * its images; a private dW when several threads share the batch or when dW
 * comes from the im2col of dout (then as (Cout, KH*KW reversed, Cin), put in
 * order when the partials are summed); and the phase planes, one set per
 * image of a group. Each column matrix has COPY_BLOCK floats of slack. */
typedef struct {
    size_t col, dcol, dw, padded, per_thread;
} ConvScratch;

static ConvScratch conv_scratch_layout(const ConvShape *s, int threads) {
    ConvScratch l = {0};
    const size_t kk = (size_t)s->kernel_h * s->kernel_w, n = (size_t)s->out_h * s->out_w;
    const int group = conv_group(s, 1); /* the largest, whatever the threads */
    if (!conv_is_pointwise(s)) {
        l.col = s->in_channels * kk * n + COPY_BLOCK;
        l.dcol = l.col;
        l.padded = conv_padded_plane(s);
    }
    if (group > 1) {
        l.col = s->in_channels * kk * n * group + COPY_BLOCK;
        l.padded *= group;
    }
    if (conv_input_grad_is_conv(s)) {
        const ConvShape t = conv_input_grad_shape(s);
        l.dcol = s->out_channels * kk * s->in_h * s->in_w + COPY_BLOCK;
        if (conv_padded_plane(&t) > l.padded) l.padded = conv_padded_plane(&t);
    }
    if (group > 1 && s->out_channels * n * group > l.dcol) l.dcol = s->out_channels * n * group;
    if (threads > 1 || conv_input_grad_is_conv(s)) l.dw = s->out_channels * s->in_channels * kk;
    l.per_thread = l.col + l.dcol + l.dw + l.padded;
    return l;
}

/* after the threads' blocks: the flipped, transposed kernel, shared */
size_t conv_scratch_size(const ConvShape *s) {
    int threads = omp_get_max_threads();
    size_t flipped = 0;
    if (conv_input_grad_is_conv(s)) flipped = (size_t)s->out_channels * s->in_channels * s->kernel_h * s->kernel_w;
    return (size_t)threads * conv_scratch_layout(s, threads).per_thread + flipped;
}

/* Output columns [lo, hi) whose input column ow*stride - pad + kw is inside the image. */
static void conv_valid_columns(const ConvShape *s, int kw, int *lo, int *hi) {
    int a = s->pad - kw, b = s->in_w + s->pad - kw;
    *lo = a <= 0 ? 0 : (a + s->stride - 1) / s->stride;
    *hi = b <= 0 ? 0 : (b + s->stride - 1) / s->stride;
    if (*hi > s->out_w) *hi = s->out_w;
    if (*lo > *hi) *lo = *hi;
}

/* col: (Cin*KH*KW, count*Ho*Wo) from `count` consecutive images (Cin, H, W),
 * side by side. Each plane is first copied inside a zero border into its
 * phase planes (`padded`, count * conv_padded_plane floats), then every row
 * of col is a run of contiguous copies, written in order (see COPY_BLOCK).
 * gcc would turn each row's block loop back into a call to memcpy, which
 * costs more than the copy for rows this short, hence the pragma. */
#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-distribute-patterns")
static void im2col(float *restrict col, const float *img, int count, const ConvShape *s, float *restrict padded) {
    const int ho = s->out_h, wo = s->out_w, stride = s->stride, pad = s->pad;
    const Phases ph = conv_phases(s);
    const size_t planes = conv_padded_plane(s), in_size = (size_t)s->in_channels * s->in_h * s->in_w;
    /* a kernel narrower than the stride reads only some phases, and rows */
    const int phases = s->kernel_w < stride ? s->kernel_w : stride;
    for (int g = 0; g < count; g++) memset(padded + g * planes, 0, phases * ph.plane * sizeof(float));
    float *dst = col;
    for (int c = 0; c < s->in_channels; c++) {
        for (int g = 0; g < count; g++) {
            const float *plane = img + g * in_size + (size_t)c * s->in_h * s->in_w;
            float *const mine = padded + g * planes;
            for (int h = 0; h < s->in_h; h++) {
                if ((h + pad) % stride >= s->kernel_h) continue;
                const float *src = plane + (size_t)h * s->in_w;
                float *row = mine + (size_t)(h + pad) * ph.cols;
                if (stride == 1) {
                    memcpy(row + pad, src, sizeof(float) * s->in_w);
                    continue;
                }
                for (int p = 0; p < phases; p++) { /* phase p, column j: input column j*stride + p - pad */
                    float *to = row + (size_t)p * ph.plane;
                    const int lo = p >= pad ? 0 : (pad - p + stride - 1) / stride;
                    const int last = s->in_w - 1 + pad - p, hi = last < 0 ? -1 : last / stride;
                    for (int j = lo; j <= hi; j++) to[j] = src[j * stride + p - pad];
                }
            }
        }
        for (int kh = 0; kh < s->kernel_h; kh++)
            for (int kw = 0; kw < s->kernel_w; kw++)
                for (int g = 0; g < count; g++) {
                    const float *src = padded + g * planes + (size_t)(kw % stride) * ph.plane +
                                       (size_t)kh * ph.cols + kw / stride;
                    for (int oh = 0; oh < ho; oh++, dst += wo) {
                        const float *from = src + (size_t)oh * stride * ph.cols;
                        for (int i = 0; i < wo; i += COPY_BLOCK) *(Block *)(dst + i) = *(const Block *)(from + i);
                    }
                }
    }
}

#pragma GCC pop_options

/* img += col2im(col) */
static void col2im_add(float *img, const float *col, const ConvShape *s) {
    const int ho = s->out_h, wo = s->out_w, stride = s->stride;
    for (int c = 0; c < s->in_channels; c++) {
        float *plane = img + (size_t)c * s->in_h * s->in_w;
        for (int kh = 0; kh < s->kernel_h; kh++) {
            for (int kw = 0; kw < s->kernel_w; kw++) {
                const float *row = col + (((size_t)c * s->kernel_h + kh) * s->kernel_w + kw) * ho * wo;
                int lo, hi;
                conv_valid_columns(s, kw, &lo, &hi);
                for (int oh = 0; oh < ho; oh++) {
                    int ih = oh * stride - s->pad + kh;
                    if (ih < 0 || ih >= s->in_h) continue;
                    const float *src = row + (size_t)oh * wo;
                    float *dst = plane + (size_t)ih * s->in_w - s->pad + kw;
                    for (int ow = lo; ow < hi; ow++) dst[ow * stride] += src[ow];
                }
            }
        }
    }
}

void conv2d_forward(float *out, const float *in, const float *w, const ConvShape *s, int accumulate, float *scratch) {
    const int m = s->out_channels, n = s->out_h * s->out_w;
    const int k = s->in_channels * s->kernel_h * s->kernel_w;
    const size_t in_size = (size_t)s->in_channels * s->in_h * s->in_w;
    const ConvScratch layout = conv_scratch_layout(s, omp_get_max_threads());
    const int group = conv_group(s, omp_get_max_threads()), groups = (s->batch + group - 1) / group;
#pragma omp parallel for schedule(static)
    for (int gi = 0; gi < groups; gi++) {
        float *mine = scratch + (size_t)omp_get_thread_num() * layout.per_thread;
        const int b0 = gi * group, count = s->batch - b0 < group ? s->batch - b0 : group, nn = count * n;
        const float *col = in + b0 * in_size;
        if (!conv_is_pointwise(s)) {
            im2col(mine, col, count, s, mine + layout.col + layout.dcol + layout.dw);
            col = mine;
        } else if (count > 1) { /* the images' (Cin, n) side by side */
            for (int c = 0; c < s->in_channels; c++)
                for (int g = 0; g < count; g++)
                    memcpy(mine + ((size_t)c * count + g) * n, col + g * in_size + (size_t)c * n, n * sizeof(float));
            col = mine;
        }
        float *out_b = out + (size_t)b0 * m * n;
        if (count == 1) {
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, w, k, col, n,
                        accumulate ? 1.0f : 0.0f, out_b, n);
            continue;
        }
        /* the group's output (m, count*n), then to its images */
        float *res = mine + layout.col;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, nn, k, 1.0f, w, k, col, nn, 0.0f, res, nn);
        for (int g = 0; g < count; g++)
            for (int o = 0; o < m; o++) {
                const float *src = res + (size_t)o * nn + (size_t)g * n;
                float *dst = out_b + ((size_t)g * m + o) * n;
                if (accumulate)
                    for (int i = 0; i < n; i++) dst[i] += src[i];
                else
                    memcpy(dst, src, n * sizeof(float));
            }
    }
}

/* Images are split into one contiguous chunk per thread; each thread sums its
 * chunk's dW privately and the partial sums are added in thread order, so the
 * result depends only on the thread count. */
void conv2d_backward(float *din, float *dw, const float *dout, const float *in, const float *w,
                     const ConvShape *s, float *scratch) {
    const int m = s->out_channels, n = s->out_h * s->out_w, cin = s->in_channels, hw = s->in_h * s->in_w;
    const int kk = s->kernel_h * s->kernel_w, k = cin * kk;
    const size_t in_size = (size_t)cin * hw, w_size = (size_t)m * k;
    const int pointwise = conv_is_pointwise(s), grad_conv = din && conv_input_grad_is_conv(s);
    const int threads = omp_get_max_threads() < s->batch ? omp_get_max_threads() : s->batch;
    const ConvScratch layout = conv_scratch_layout(s, omp_get_max_threads());
    const ConvShape t = conv_input_grad_shape(s);
    float *flipped = scratch + (size_t)omp_get_max_threads() * layout.per_thread;
    if (grad_conv) /* flipped[c][o][i] = w[o][c][kk-1-i] */
        for (int o = 0; o < m; o++)
            for (int c = 0; c < cin; c++)
                for (int i = 0; i < kk; i++)
                    flipped[((size_t)c * m + o) * kk + i] = w[((size_t)o * cin + c) * kk + kk - 1 - i];
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num();
        float *mine = scratch + (size_t)tid * layout.per_thread;
        float *col = mine, *dcol = mine + layout.col, *padded = mine + layout.col + layout.dcol + layout.dw;
        float *dw_mine = layout.dw ? mine + layout.col + layout.dcol : dw;
        if (layout.dw) memset(dw_mine, 0, w_size * sizeof(float));
        const int b0 = (int)((long)s->batch * tid / threads), b1 = (int)((long)s->batch * (tid + 1) / threads);
        for (int b = b0; b < b1; b++) {
            const float *dout_b = dout + (size_t)b * m * n, *in_b = in + b * in_size;
            float *din_b = din ? din + b * in_size : NULL;
            if (grad_conv) {
                /* both gradients from one im2col, of dout with the flipped
                 * kernel: its row (o, kk-1-i) is dout shifted back by tap i */
                im2col(dcol, dout_b, 1, &t, padded);
                /* dW as (m, kk reversed, cin) += dcol (m*kk, hw) . in_b^T (hw, cin) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m * kk, cin, hw, 1.0f, dcol, hw, in_b, hw, 1.0f,
                            dw_mine, cin);
                /* din_b (cin, hw) += flipped (cin, m*kk) . dcol (m*kk, hw) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, cin, hw, m * kk, 1.0f, flipped, m * kk, dcol,
                            hw, 1.0f, din_b, hw);
                continue;
            }
            const float *col_b = in_b;
            if (!pointwise) {
                im2col(col, in_b, 1, s, padded);
                col_b = col;
            }
            /* dW (m, k) += dout_b (m, n) . col_b^T (n, k) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, k, n, 1.0f, dout_b, n, col_b, n, 1.0f, dw_mine, k);
            if (!din) continue;
            if (pointwise) { /* din_b (k, n) += W^T (k, m) . dout_b (m, n) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, n, m, 1.0f, w, k, dout_b, n, 1.0f, din_b, n);
            } else { /* dcol (k, n) = W^T (k, m) . dout_b (m, n), scattered back by col2im */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, k, n, m, 1.0f, w, k, dout_b, n, 0.0f, dcol, n);
                col2im_add(din_b, dcol, s);
            }
        }
        if (layout.dw) {
#pragma omp barrier
            /* reduce: thread tid adds slice tid of every partial, in thread order */
            const size_t lo = w_size * tid / threads, hi = w_size * (tid + 1) / threads;
            for (int u = 0; u < threads; u++) {
                const float *part = scratch + (size_t)u * layout.per_thread + layout.col + layout.dcol;
                if (grad_conv) /* part is (m, kk reversed, cin) */
                    for (size_t i = lo; i < hi; i++)
                        dw[i] += part[(i / k * kk + kk - 1 - i % kk) * cin + i % k / kk];
                else
                    for (size_t i = lo; i < hi; i++) dw[i] += part[i];
            }
        }
    }
}

/* ------------------------------------------------- weight standardization */

void weight_standardize_forward(float *w_hat, float *rstd, const float *w, int out_channels, int fan_in) {
    for (int o = 0; o < out_channels; o++) {
        const float *row = w + (size_t)o * fan_in;
        double sum = 0.0, sumsq = 0.0;
        for (int i = 0; i < fan_in; i++) sum += row[i];
        double mean = sum / fan_in;
        for (int i = 0; i < fan_in; i++) sumsq += (row[i] - mean) * (row[i] - mean);
        double r = 1.0 / sqrt(sumsq / fan_in + WS_EPS);
        rstd[o] = (float)r;
        float *out = w_hat + (size_t)o * fan_in;
        for (int i = 0; i < fan_in; i++) out[i] = (float)((row[i] - mean) * r);
    }
}

void weight_standardize_backward(float *dw, const float *dw_hat, const float *w_hat, const float *rstd,
                                 int out_channels, int fan_in) {
    for (int o = 0; o < out_channels; o++) {
        const float *g = dw_hat + (size_t)o * fan_in, *wh = w_hat + (size_t)o * fan_in;
        double sum_g = 0.0, sum_gw = 0.0;
        for (int i = 0; i < fan_in; i++) {
            sum_g += g[i];
            sum_gw += (double)g[i] * wh[i];
        }
        double mean_g = sum_g / fan_in, mean_gw = sum_gw / fan_in;
        float *d = dw + (size_t)o * fan_in;
        for (int i = 0; i < fan_in; i++) d[i] += (float)(rstd[o] * (g[i] - mean_g - wh[i] * mean_gw));
    }
}

/* ------------------------------------------------------------- GroupNorm */

void groupnorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                       const float *beta, int batch, int channels, int hw, int groups, int relu) {
    const int cpg = channels / groups;
    const size_t group_size = (size_t)cpg * hw;
#pragma omp parallel for schedule(static)
    for (int bg = 0; bg < batch * groups; bg++) {
        const int b = bg / groups, g = bg % groups;
        const size_t base = ((size_t)b * channels + (size_t)g * cpg) * hw;
        const float *x = in + base;
        /* two passes; float sums per channel, double across channels */
        double sum = 0.0;
        for (int c = 0; c < cpg; c++) {
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int i = 0; i < hw; i++) part += x[(size_t)c * hw + i];
            sum += part;
        }
        const float mu = (float)(sum / group_size);
        double sumsq = 0.0;
        for (int c = 0; c < cpg; c++) {
            float part = 0.0f;
#pragma omp simd reduction(+ : part)
            for (int i = 0; i < hw; i++) {
                float d = x[(size_t)c * hw + i] - mu;
                part += d * d;
            }
            sumsq += part;
        }
        const float r = (float)(1.0 / sqrt(sumsq / group_size + GN_EPS));
        mean[bg] = mu;
        rstd[bg] = r;
        for (int c = 0; c < cpg; c++) {
            const float scale = r * gamma[g * cpg + c];
            const float shift = beta[g * cpg + c] - mu * scale;
            const float *xc = x + (size_t)c * hw;
            float *yc = out + base + (size_t)c * hw;
            if (relu)
                for (int i = 0; i < hw; i++) {
                    float y = xc[i] * scale + shift;
                    yc[i] = y > 0.0f ? y : 0.0f;
                }
            else
                for (int i = 0; i < hw; i++) yc[i] = xc[i] * scale + shift;
        }
    }
}

/* Parallel over groups: a group's gamma/beta entries are touched by one thread only. */
void groupnorm_backward(float *din, float *dgamma, float *dbeta, const float *dout, const float *in,
                        const float *mean, const float *rstd, const float *gamma, int batch, int channels, int hw,
                        int groups, const float *relu_out) {
    const int cpg = channels / groups;
    const size_t group_size = (size_t)cpg * hw;
#pragma omp parallel for schedule(static)
    for (int g = 0; g < groups; g++) {
        for (int b = 0; b < batch; b++) {
            const size_t base = ((size_t)b * channels + (size_t)g * cpg) * hw;
            const float mu = mean[b * groups + g], r = rstd[b * groups + g];
            double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
            for (int c = 0; c < cpg; c++) {
                const size_t off = base + (size_t)c * hw;
                const float *xc = in + off, *dy = dout + off, *y = relu_out ? relu_out + off : NULL;
                float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
                if (y) {
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
                    for (int i = 0; i < hw; i++) {
                        const float g = dy[i]; /* loaded whatever the mask: no masked load */
                        float d = y[i] > 0.0f ? g : 0.0f;
                        sum_dy += d;
                        sum_dy_xhat += d * (xc[i] - mu) * r;
                    }
                } else {
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
                    for (int i = 0; i < hw; i++) {
                        sum_dy += dy[i];
                        sum_dy_xhat += dy[i] * (xc[i] - mu) * r;
                    }
                }
                const int ch = g * cpg + c;
                dgamma[ch] += sum_dy_xhat;
                dbeta[ch] += sum_dy;
                sum_dxhat += (double)sum_dy * gamma[ch];
                sum_dxhat_xhat += (double)sum_dy_xhat * gamma[ch];
            }
            if (!din) continue;
            const float mean_dxhat = (float)(sum_dxhat / group_size);
            const float mean_dxhat_xhat = (float)(sum_dxhat_xhat / group_size);
            for (int c = 0; c < cpg; c++) {
                const int ch = g * cpg + c;
                const size_t off = base + (size_t)c * hw;
                const float *xc = in + off, *dy = dout + off, *y = relu_out ? relu_out + off : NULL;
                float *dx = din + off;
                const float gm = gamma[ch];
                for (int i = 0; i < hw; i++) {
                    const float g = dy[i];
                    float d = (!y || y[i] > 0.0f) ? g : 0.0f;
                    float xhat = (xc[i] - mu) * r;
                    dx[i] += r * (d * gm - mean_dxhat - xhat * mean_dxhat_xhat);
                }
            }
        }
    }
}

/* ------------------------------------------------------------------ ReLU */

void relu_forward(float *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

void relu_backward(float *din, const float *dout, const float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float g = dout[i]; /* loaded whatever the mask: no masked load */
        din[i] += out[i] > 0.0f ? g : 0.0f;
    }
}

/* -------------------------------------------------------------- max-pool */

int pool_shape_init(PoolShape *s) {
    s->out_h = (s->in_h + 2 * s->pad - s->kernel) / s->stride + 1;
    s->out_w = (s->in_w + 2 * s->pad - s->kernel) / s->stride + 1;
    if (s->in_h + 2 * s->pad < s->kernel || s->in_w + 2 * s->pad < s->kernel) return -1;
    return s->out_h > 0 && s->out_w > 0 ? 0 : -1;
}

void maxpool_forward(float *out, int32_t *argmax, const float *in, const PoolShape *s) {
    const long planes = (long)s->batch * s->channels;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < planes; p++) {
        const float *x = in + p * s->in_h * s->in_w;
        for (int oh = 0; oh < s->out_h; oh++) {
            for (int ow = 0; ow < s->out_w; ow++) {
                float best = -FLT_MAX;
                int32_t where = -1;
                for (int kh = 0; kh < s->kernel; kh++) {
                    int ih = oh * s->stride - s->pad + kh;
                    for (int kw = 0; kw < s->kernel; kw++) {
                        int iw = ow * s->stride - s->pad + kw;
                        int inside = ih >= 0 && ih < s->in_h && iw >= 0 && iw < s->in_w;
                        float v = inside ? x[ih * s->in_w + iw] : 0.0f; /* zero padding */
                        if (v > best) {
                            best = v;
                            where = inside ? ih * s->in_w + iw : -1;
                        }
                    }
                }
                size_t o = (p * s->out_h + oh) * s->out_w + ow;
                out[o] = best;
                argmax[o] = where;
            }
        }
    }
}

void maxpool_backward(float *din, const float *dout, const int32_t *argmax, const PoolShape *s) {
    const long planes = (long)s->batch * s->channels;
    const size_t out_plane = (size_t)s->out_h * s->out_w, in_plane = (size_t)s->in_h * s->in_w;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < planes; p++)
        for (size_t o = 0; o < out_plane; o++) {
            int32_t a = argmax[p * out_plane + o];
            if (a >= 0) din[p * in_plane + a] += dout[p * out_plane + o];
        }
}

/* ------------------------------------------------------ global avg pool */

void avgpool_forward(float *out, const float *in, int batch, int channels, int hw) {
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)batch * channels; p++) {
        double sum = 0.0;
        for (int i = 0; i < hw; i++) sum += in[p * hw + i];
        out[p] = (float)(sum / hw);
    }
}

void avgpool_backward(float *din, const float *dout, int batch, int channels, int hw) {
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)batch * channels; p++) {
        float g = dout[p] / hw;
        for (int i = 0; i < hw; i++) din[p * hw + i] += g;
    }
}

/* --------------------------------------------------------------- dense */

void dense_forward(float *out, const float *in, const float *w, const float *bias, int batch,
                   int in_features, int out_features) {
    for (int b = 0; b < batch; b++) memcpy(out + (size_t)b * out_features, bias, sizeof(float) * out_features);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, batch, out_features, in_features, 1.0f, in,
                in_features, w, in_features, 1.0f, out, out_features);
}

void dense_backward(float *din, float *dw, float *dbias, const float *dout, const float *in, const float *w,
                    int batch, int in_features, int out_features) {
    if (din)
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, batch, in_features, out_features, 1.0f, dout,
                    out_features, w, in_features, 1.0f, din, in_features);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, out_features, in_features, batch, 1.0f, dout,
                out_features, in, in_features, 1.0f, dw, in_features);
    for (int b = 0; b < batch; b++)
        for (int k = 0; k < out_features; k++) dbias[k] += dout[(size_t)b * out_features + k];
}

/* -------------------------------------------------------------- losses */

void softmax_rows(float *out, const float *logits, int rows, int cols, float temperature) {
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * cols;
        float *y = out + (size_t)r * cols;
        float mx = -FLT_MAX;
        for (int c = 0; c < cols; c++) mx = fmaxf(mx, x[c]);
        double sum = 0.0;
        for (int c = 0; c < cols; c++) {
            y[c] = expf((x[c] - mx) / temperature);
            sum += y[c];
        }
        for (int c = 0; c < cols; c++) y[c] = (float)(y[c] / sum);
    }
}

/* log-sum-exp of x/T over one row, stable */
static double row_logsumexp(const float *x, int cols, float temperature) {
    float mx = -FLT_MAX;
    for (int j = 0; j < cols; j++) mx = fmaxf(mx, x[j]);
    double sum = 0.0;
    for (int j = 0; j < cols; j++) sum += exp(((double)x[j] - mx) / temperature);
    return (double)mx / temperature + log(sum);
}

float cross_entropy_forward(float *probs, const float *logits, const float *targets, int batch, int classes) {
    softmax_rows(probs, logits, batch, classes, 1.0f);
    double loss = 0.0;
    for (int b = 0; b < batch; b++) {
        const float *x = logits + (size_t)b * classes;
        double lse = row_logsumexp(x, classes, 1.0f);
        for (int c = 0; c < classes; c++) {
            float t = targets[(size_t)b * classes + c];
            if (t != 0.0f) loss -= t * ((double)x[c] - lse);
        }
    }
    return (float)(loss / batch);
}

void cross_entropy_backward(float *dlogits, const float *probs, const float *targets, int batch, int classes) {
    const float scale = 1.0f / batch;
    for (size_t i = 0; i < (size_t)batch * classes; i++) dlogits[i] += (probs[i] - targets[i]) * scale;
}

float distill_loss_forward(float *student_probs, float *teacher_probs, const float *student_logits,
                           const float *teacher_logits, int batch, int classes, float temperature) {
    softmax_rows(student_probs, student_logits, batch, classes, temperature);
    softmax_rows(teacher_probs, teacher_logits, batch, classes, temperature);
    double loss = 0.0;
    for (int b = 0; b < batch; b++) {
        const float *s = student_logits + (size_t)b * classes, *t = teacher_logits + (size_t)b * classes;
        double lse_s = row_logsumexp(s, classes, temperature), lse_t = row_logsumexp(t, classes, temperature);
        for (int c = 0; c < classes; c++) {
            float p = teacher_probs[(size_t)b * classes + c];
            /* log p - log q, each as x/T - lse */
            if (p > 0.0f) loss += p * (((double)t[c] - s[c]) / temperature - lse_t + lse_s);
        }
    }
    return (float)(temperature * temperature * loss / batch);
}

void distill_loss_backward(float *dlogits, const float *student_probs, const float *teacher_probs, int batch,
                           int classes, float temperature) {
    /* d/ds of T^2 KL = T^2 * (q - p) / T, averaged over the batch */
    const float scale = temperature / batch;
    for (size_t i = 0; i < (size_t)batch * classes; i++)
        dlogits[i] += (student_probs[i] - teacher_probs[i]) * scale;
}
