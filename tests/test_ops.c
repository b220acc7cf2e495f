/* test_ops.c - proves every op in core/ops.h, two ways of STYLE.md's three
 * (the third, the whole model against PyTorch, lives elsewhere):
 *  1. each forward against a naive double-precision reference written here as
 *     plainly as possible (7-loop convolution, textbook GroupNorm, ...);
 *  2. each backward against central finite differences of L = sum(out * R),
 *     R fixed and random, taken through those same double references, for
 *     every element of every input and parameter of small shapes.
 * It also holds ops.h to its contract: every gradient buffer starts at
 * GRAD_PREFILL and backward must add to it; a NULL input gradient is accepted
 * for conv, GroupNorm and dense; forwards overwrite their output; the shape
 * helpers give the right sizes and the pointwise conv needs no scratch.
 * Deterministic: a local xorshift generator with fixed seeds. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <omp.h>

#include "bf16.h"
#include "blas.h"
#include "ops.h"
#include "test.h"

/* Forward, float op vs double reference:
 *   |got - want| <= 1e-5 * (|want| + max|want| over the tensor)
 * i.e. 1e-5 relative, measured against the tensor's scale for elements near 0
 * (float rounding in a sum is relative to the size of its terms). */
#define FWD_RTOL 1e-5
/* Backward, float analytic gradient vs double central difference with step h:
 *   |analytic - numeric| <= 1e-3 * |numeric| + 1e-5
 * The central difference is exact to ~h^2 * L''' + 1e-16 * |L| / h ~ 1e-10,
 * and a float gradient is good to ~1e-6, so anything wrong by more than 0.1%
 * fails. */
#define FD_STEP 1e-5
#define FD_RTOL 1e-3
#define FD_ATOL 1e-5
/* Every gradient buffer starts here; backward must add to it (+=). */
#define GRAD_PREFILL 0.5f
/* Forwards must overwrite their output, whatever was in it. */
#define OUT_GARBAGE 777.0f

/* ------------------------------------------------------------ helpers */

/* xorshift64; state never 0 */
static uint64_t rand_state = 1;
static void rand_seed(uint64_t seed) { rand_state = seed ? seed : 1; }
static double rand_uniform(double lo, double hi) {
    rand_state ^= rand_state << 13;
    rand_state ^= rand_state >> 7;
    rand_state ^= rand_state << 17;
    return lo + (hi - lo) * (double)(rand_state >> 11) * 0x1.0p-53;
}

/* Each case allocates through track() and frees everything at its end, so
 * LeakSanitizer stays quiet and buffers are exactly sized for ASan. */
#define MAX_TRACKED 64
static void *tracked[MAX_TRACKED];
static int n_tracked;
static void *track(void *p) {
    if (!p || n_tracked == MAX_TRACKED) {
        fprintf(stderr, "test_ops: allocation failed\n");
        exit(2);
    }
    return tracked[n_tracked++] = p;
}
static float *new_floats(size_t n) { return track(calloc(n ? n : 1, sizeof(float))); }
static double *new_doubles(size_t n) { return track(calloc(n ? n : 1, sizeof(double))); }
static int32_t *new_ints(size_t n) { return track(calloc(n ? n : 1, sizeof(int32_t))); }
static void free_tracked(void) {
    while (n_tracked) free(tracked[--n_tracked]);
}

static void fill_uniform(float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = (float)rand_uniform(lo, hi);
}
static void fill_constant(float *x, size_t n, float v) {
    for (size_t i = 0; i < n; i++) x[i] = v;
}
/* |x| in [0.1, 1]: finite differences never cross the ReLU kink */
static void fill_away_from_zero(float *x, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float m = (float)rand_uniform(0.1, 1.0);
        x[i] = rand_uniform(0.0, 1.0) < 0.5 ? -m : m;
    }
}
/* The values -(n-1)/2 .. (n-1)/2 times `step`, shuffled: all distinct and at
 * least `step` apart, so a finite difference never changes a max-pool winner. */
static void fill_distinct(float *x, size_t n, double step) {
    for (size_t i = 0; i < n; i++) x[i] = (float)(((double)i - (n - 1) / 2.0) * step);
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)rand_uniform(0.0, (double)(i + 1));
        if (j > i) j = i;
        float t = x[i];
        x[i] = x[j];
        x[j] = t;
    }
}
static double *as_doubles(const float *x, size_t n) {
    double *d = new_doubles(n);
    for (size_t i = 0; i < n; i++) d[i] = x[i];
    return d;
}
static double dot(const double *a, const double *b, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += a[i] * b[i];
    return s;
}

static void check_forward(const char *what, const float *got, const double *want, size_t n) {
    double scale = 0.0;
    for (size_t i = 0; i < n; i++) scale = fmax(scale, fabs(want[i]));
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - want[i]);
        if (!(err <= FWD_RTOL * (fabs(want[i]) + scale))) { /* NaN fails too */
            if (!bad) first = i;
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %zu of %zu values off; first [%zu] got %.9g want %.9g", what, bad, n, first,
          bad ? got[first] : 0.0, bad ? want[first] : 0.0);
}

/* A gradient set (accumulate 0) onto garbage against the same gradient
 * added (accumulate 1) onto GRAD_PREFILL: the same sums, within the add's
 * rounding; NaN garbage would show through any read of it. */
static void check_set(const char *what, const float *set, const float *added, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)set[i] + GRAD_PREFILL - added[i]) <= 1e-6 * (1.0 + fabs(added[i])))) {
            if (!bad) first = i;
            bad++;
        }
    CHECK(bad == 0, "%s: %zu of %zu values off; first [%zu] set %.9g, added onto %g: %.9g", what, bad, n, first,
          bad ? set[first] : 0.0, GRAD_PREFILL, bad ? added[first] : 0.0);
}

/* Two float results of the same computation (e.g. with and without din). */
static void check_same(const char *what, const float *got, const float *want, size_t n) {
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (!(fabs((double)got[i] - want[i]) <= 1e-6 * (1.0 + fabs(want[i])))) {
            if (!bad) first = i;
            bad++;
        }
    CHECK(bad == 0, "%s: %zu of %zu values differ; first [%zu] %.9g vs %.9g", what, bad, n, first,
          bad ? got[first] : 0.0, bad ? want[first] : 0.0);
}

/* L(ctx) in double, reading the tensor being differentiated through ctx. */
typedef double (*objective_fn)(void *ctx);

/* analytic: the op's gradient buffer, which started at GRAD_PREFILL. x: the
 * double tensor the objective reads; each element is nudged by +-h in turn. */
static void check_gradient(const char *what, objective_fn objective, void *ctx, double *x, size_t n,
                           const float *analytic) {
    size_t bad = 0, first = 0;
    double first_numeric = 0.0, max_numeric = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double saved = x[i];
        x[i] = saved + FD_STEP;
        const double up = objective(ctx);
        x[i] = saved - FD_STEP;
        const double down = objective(ctx);
        x[i] = saved;
        const double numeric = (up - down) / (2.0 * FD_STEP);
        const double got = (double)analytic[i] - GRAD_PREFILL;
        max_numeric = fmax(max_numeric, fabs(numeric));
        if (!(fabs(got - numeric) <= FD_RTOL * fabs(numeric) + FD_ATOL)) {
            if (!bad) {
                first = i;
                first_numeric = numeric;
            }
            bad++;
        }
    }
    CHECK(bad == 0, "%s: %zu of %zu gradients off; first [%zu] analytic %.9g (minus prefill) numeric %.9g",
          what, bad, n, first, bad ? (double)analytic[first] - GRAD_PREFILL : 0.0, first_numeric);
    /* a gradient that is zero everywhere would make the comparison vacuous */
    CHECK(max_numeric > 1e-2, "%s: numeric gradient is ~0 everywhere (max %g)", what, max_numeric);
}

/* ----------------------------------------------------------- shape helpers */

static void test_shapes(void) {
    TEST_CASE("conv_shape_init / pool_shape_init / conv_scratch_size");
    ConvShape stem = {.batch = 1, .in_channels = 3, .in_h = 224, .in_w = 224, .out_channels = 64,
                      .kernel_h = 7, .kernel_w = 7, .stride = 2, .pad = 3};
    CHECK(conv_shape_init(&stem) == 0 && stem.out_h == 112 && stem.out_w == 112, "7x7 s2 p3 on 224: %dx%d",
          stem.out_h, stem.out_w);
    ConvShape down = {.batch = 1, .in_channels = 8, .in_h = 56, .in_w = 55, .out_channels = 8,
                      .kernel_h = 3, .kernel_w = 3, .stride = 2, .pad = 1};
    CHECK(conv_shape_init(&down) == 0 && down.out_h == 28 && down.out_w == 28, "3x3 s2 p1 on 56x55: %dx%d",
          down.out_h, down.out_w);
    ConvShape proj = {.batch = 1, .in_channels = 8, .in_h = 56, .in_w = 56, .out_channels = 16,
                      .kernel_h = 1, .kernel_w = 1, .stride = 2, .pad = 0};
    CHECK(conv_shape_init(&proj) == 0 && proj.out_h == 28 && proj.out_w == 28, "1x1 s2 on 56: %dx%d",
          proj.out_h, proj.out_w);
    CHECK(conv_scratch_size(&proj, 0) >= (size_t)8 * 28 * 28, "1x1 s2 needs im2col scratch, got %zu",
          conv_scratch_size(&proj, 0));
    ConvShape rect = {.batch = 1, .in_channels = 2, .in_h = 6, .in_w = 9, .out_channels = 1,
                      .kernel_h = 3, .kernel_w = 5, .stride = 2, .pad = 2};
    CHECK(conv_shape_init(&rect) == 0 && rect.out_h == 4 && rect.out_w == 5, "3x5 s2 p2 on 6x9: %dx%d",
          rect.out_h, rect.out_w);
    /* at least 256 (GROUP_COLUMNS) pixels: one image per GEMM, read in place */
    ConvShape point = {.batch = 4, .in_channels = 16, .in_h = 16, .in_w = 17, .out_channels = 32,
                       .kernel_h = 1, .kernel_w = 1, .stride = 1, .pad = 0};
    CHECK(conv_shape_init(&point) == 0 && point.out_h == 16 && point.out_w == 17, "1x1 s1: %dx%d", point.out_h,
          point.out_w);
    omp_set_num_threads(1);
    CHECK(conv_scratch_size(&point, 0) == 0, "pointwise conv on one thread must need no scratch, got %zu",
          conv_scratch_size(&point, 0));
    omp_set_num_threads(2);
    CHECK(conv_scratch_size(&point, 0) == (size_t)2 * 32 * 16,
          "pointwise conv on two threads needs only their private dW (2 x 32 x 16), got %zu",
          conv_scratch_size(&point, 0));
    /* fewer pixels: several images side by side per GEMM, copied */
    ConvShape small_point = point;
    small_point.in_h = 7, small_point.in_w = 9;
    CHECK(conv_shape_init(&small_point) == 0 && conv_scratch_size(&small_point, 0) >= (size_t)4 * 16 * 63,
          "pointwise conv on 7x9 images needs room for the batch side by side, got %zu",
          conv_scratch_size(&small_point, 0));
    ConvShape padded_point = small_point;
    padded_point.pad = 1;
    CHECK(conv_shape_init(&padded_point) == 0 && padded_point.out_h == 9 && padded_point.out_w == 11,
          "1x1 s1 p1: %dx%d", padded_point.out_h, padded_point.out_w);
    CHECK(conv_scratch_size(&padded_point, 0) >= (size_t)16 * 9 * 11, "padded 1x1 is not pointwise, got %zu",
          conv_scratch_size(&padded_point, 0));
    ConvShape empty = {.batch = 1, .in_channels = 1, .in_h = 2, .in_w = 8, .out_channels = 1,
                       .kernel_h = 5, .kernel_w = 3, .stride = 1, .pad = 1};
    CHECK(conv_shape_init(&empty) == -1, "5-tall kernel on a 2+2-tall padded image must be rejected");

    PoolShape pool = {.batch = 1, .channels = 64, .in_h = 112, .in_w = 112, .kernel = 3, .stride = 2, .pad = 1};
    CHECK(pool_shape_init(&pool) == 0 && pool.out_h == 56 && pool.out_w == 56, "pool 3x3 s2 p1 on 112: %dx%d",
          pool.out_h, pool.out_w);
    PoolShape odd = {.batch = 1, .channels = 1, .in_h = 7, .in_w = 8, .kernel = 3, .stride = 2, .pad = 1};
    CHECK(pool_shape_init(&odd) == 0 && odd.out_h == 4 && odd.out_w == 4, "pool on 7x8: %dx%d", odd.out_h,
          odd.out_w);
    PoolShape tiny = {.batch = 1, .channels = 1, .in_h = 1, .in_w = 1, .kernel = 3, .stride = 2, .pad = 1};
    CHECK(pool_shape_init(&tiny) == 0 && tiny.out_h == 1 && tiny.out_w == 1, "pool on 1x1: %dx%d", tiny.out_h,
          tiny.out_w);
    PoolShape none = {.batch = 1, .channels = 1, .in_h = 2, .in_w = 2, .kernel = 3, .stride = 2, .pad = 0};
    CHECK(pool_shape_init(&none) == -1, "3x3 window on an unpadded 2x2 image must be rejected");
}

/* ------------------------------------------------------------------ conv */

/* out[b,o,y,x] = sum_{c,i,j} in[b,c, y*stride-pad+i, x*stride-pad+j] * w[o,c,i,j],
 * cells outside the image being 0 */
static void conv_reference(double *out, const double *in, const double *w, const ConvShape *s) {
    for (int b = 0; b < s->batch; b++)
        for (int o = 0; o < s->out_channels; o++)
            for (int y = 0; y < s->out_h; y++)
                for (int x = 0; x < s->out_w; x++) {
                    double acc = 0.0;
                    for (int c = 0; c < s->in_channels; c++)
                        for (int i = 0; i < s->kernel_h; i++)
                            for (int j = 0; j < s->kernel_w; j++) {
                                int iy = y * s->stride - s->pad + i, ix = x * s->stride - s->pad + j;
                                if (iy < 0 || iy >= s->in_h || ix < 0 || ix >= s->in_w) continue;
                                acc += in[((b * s->in_channels + c) * s->in_h + iy) * s->in_w + ix] *
                                       w[((o * s->in_channels + c) * s->kernel_h + i) * s->kernel_w + j];
                            }
                    out[((b * s->out_channels + o) * s->out_h + y) * s->out_w + x] = acc;
                }
}

/* The gradients of dot(r, conv(in, w)) by the direct sum, plus GRAD_PREFILL:
 * for images too large for finite differences. */
static void conv_reference_backward(double *din, double *dw, const double *r, const double *in, const double *w,
                                    const ConvShape *s) {
    const size_t n_in = (size_t)s->batch * s->in_channels * s->in_h * s->in_w;
    const size_t n_w = (size_t)s->out_channels * s->in_channels * s->kernel_h * s->kernel_w;
    for (size_t i = 0; i < n_in; i++) din[i] = GRAD_PREFILL;
    for (size_t i = 0; i < n_w; i++) dw[i] = GRAD_PREFILL;
    for (int b = 0; b < s->batch; b++)
        for (int o = 0; o < s->out_channels; o++)
            for (int y = 0; y < s->out_h; y++)
                for (int x = 0; x < s->out_w; x++) {
                    const double g = r[((b * s->out_channels + o) * s->out_h + y) * s->out_w + x];
                    for (int c = 0; c < s->in_channels; c++)
                        for (int i = 0; i < s->kernel_h; i++)
                            for (int j = 0; j < s->kernel_w; j++) {
                                int iy = y * s->stride - s->pad + i, ix = x * s->stride - s->pad + j;
                                if (iy < 0 || iy >= s->in_h || ix < 0 || ix >= s->in_w) continue;
                                const size_t at = ((size_t)(b * s->in_channels + c) * s->in_h + iy) * s->in_w + ix;
                                const size_t wi = ((size_t)(o * s->in_channels + c) * s->kernel_h + i) * s->kernel_w + j;
                                din[at] += g * w[wi];
                                dw[wi] += g * in[at];
                            }
                }
}

typedef struct {
    ConvShape shape;
    double *in;      /* (B, Cin, H, W) */
    double *w;       /* (Cout, Cin, KH, KW) */
    const double *r; /* (B, Cout, Ho, Wo) */
    double *out;     /* (B, Cout, Ho, Wo) work space */
    size_t out_count;
} ConvProblem;

static double conv_objective(void *ctx) {
    ConvProblem *p = ctx;
    conv_reference(p->out, p->in, p->w, &p->shape);
    return dot(p->out, p->r, p->out_count);
}

/* A Winograd conv's backward summed over calls (conv2d_backward_du): the
 * batch in two calls, their dU then transformed once (conv_winograd_dw),
 * gives conv2d_backward's din and dw (din_want, dw_want: accumulated onto
 * GRAD_PREFILL) to float rounding: the same products, summed in another
 * order. */
static void check_du(const char *what, const ConvShape *s, const float *in, const float *w, const float *r,
                     const float *din_want, const float *dw_want, int bf16, float *scratch) {
    const size_t in_size = (size_t)s->in_channels * s->in_h * s->in_w;
    const size_t out_size = (size_t)s->out_channels * s->out_h * s->out_w;
    const size_t n_in = s->batch * in_size, n_w = (size_t)s->out_channels * s->in_channels * 9;
    float *du = new_floats(conv_winograd_du_size(s, bf16)), *din = new_floats(n_in), *dw = new_floats(n_w);
    fill_constant(din, n_in, GRAD_PREFILL);
    fill_constant(dw, n_w, GRAD_PREFILL);
    for (int first = 0, half = s->batch / 2 > 0 ? s->batch / 2 : s->batch; first < s->batch; first += half) {
        ConvShape part = *s;
        part.batch = s->batch - first < half ? s->batch - first : half;
        conv2d_backward_du(din + first * in_size, du, r + first * out_size, in + first * in_size, w, NULL, &part, 1,
                           bf16, scratch);
    }
    conv_winograd_dw(dw, du, s, bf16);
    const struct { const char *what; const float *got, *want; size_t n; } grads[] = {
        {"d/d input", din, din_want, n_in}, {"d/d weight", dw, dw_want, n_w}};
    for (int g = 0; g < 2; g++) {
        double scale = 0.0, worst = 0.0;
        for (size_t i = 0; i < grads[g].n; i++) scale = fmax(scale, fabs(grads[g].want[i] - GRAD_PREFILL));
        for (size_t i = 0; i < grads[g].n; i++) worst = fmax(worst, fabs(grads[g].got[i] - grads[g].want[i]) / scale);
        CHECK(worst < 1e-5, "%s, dU over two calls: %s off conv2d_backward's by %.3g of its scale", what,
              grads[g].what, worst);
    }
}

static void test_conv(const char *name, int batch, int in_channels, int in_h, int in_w, int out_channels,
                      int kernel_h, int kernel_w, int stride, int pad, int expect_h, int expect_w) {
    char full[160];
    snprintf(full, sizeof full, "%s [%d thread%s]", name, omp_get_max_threads(), omp_get_max_threads() == 1 ? "" : "s");
    TEST_CASE(full);
    ConvShape s = {.batch = batch, .in_channels = in_channels, .in_h = in_h, .in_w = in_w,
                   .out_channels = out_channels, .kernel_h = kernel_h, .kernel_w = kernel_w,
                   .stride = stride, .pad = pad};
    int rc = conv_shape_init(&s);
    CHECK(rc == 0 && s.out_h == expect_h && s.out_w == expect_w, "shape: rc %d, %dx%d, want %dx%d", rc, s.out_h,
          s.out_w, expect_h, expect_w);
    if (rc != 0 || s.out_h != expect_h || s.out_w != expect_w) return;

    const size_t n_in = (size_t)batch * in_channels * in_h * in_w;
    const size_t n_w = (size_t)out_channels * in_channels * kernel_h * kernel_w;
    const size_t n_out = (size_t)batch * out_channels * s.out_h * s.out_w;
    const size_t n_col = (size_t)in_channels * kernel_h * kernel_w * s.out_h * s.out_w;
    /* read in place: pointwise, on images of at least 256 (GROUP_COLUMNS)
     * pixels; dW summed privately on several threads, or transposed (Cin > Cout) */
    const int pointwise = kernel_h == 1 && kernel_w == 1 && stride == 1 && pad == 0 && in_h * in_w >= 256;
    const int private_dw = omp_get_max_threads() > 1 || in_channels > out_channels;
    const size_t n_scratch = conv_scratch_size(&s, 0);
    if (pointwise && !private_dw)
        CHECK(n_scratch == 0, "pointwise conv on one thread must need no scratch, got %zu", n_scratch);
    else if (pointwise)
        CHECK(n_scratch == (size_t)omp_get_max_threads() * n_w, "pointwise conv needs one private dW per thread, got %zu",
              n_scratch);
    else if (conv_is_winograd(&s)) {
        const int t = conv_winograd_tile(&s, 0);
        const size_t vm = (size_t)(t + 2) * (t + 2) * (in_channels + out_channels) * ((s.out_h + t - 1) / t) *
                          ((s.out_w + t - 1) / t);
        CHECK(n_scratch >= vm, "Winograd scratch %zu smaller than one image's transforms (%zu)", n_scratch, vm);
    } else
        CHECK(n_scratch >= n_col, "scratch %zu smaller than one im2col (%zu)", n_scratch, n_col);
    /* the advertised scratch and a canary behind it that must survive (ASan
     * catches reads past it); none at all (NULL) when the op needs none */
    enum { CANARY = 64 };
    float *scratch = n_scratch ? new_floats(n_scratch + CANARY) : NULL;
    if (scratch) fill_constant(scratch + n_scratch, CANARY, -12345.0f);

    float *in = new_floats(n_in), *w = new_floats(n_w), *r = new_floats(n_out), *out = new_floats(n_out);
    fill_uniform(in, n_in, -1.0, 1.0);
    fill_uniform(w, n_w, -1.0, 1.0);
    fill_uniform(r, n_out, -1.0, 1.0);

    fill_constant(out, n_out, OUT_GARBAGE);
    if (scratch) fill_constant(scratch, n_scratch, OUT_GARBAGE);
    conv2d_forward(out, in, w, NULL, &s, 0, scratch);
    ConvProblem p = {s, as_doubles(in, n_in), as_doubles(w, n_w), as_doubles(r, n_out), new_doubles(n_out), n_out};
    conv_reference(p.out, p.in, p.w, &s);
    check_forward("conv forward", out, p.out, n_out);

    /* accumulate: out += conv(in), as a residual unit adds its last conv to the shortcut */
    double *sum = new_doubles(n_out);
    for (size_t i = 0; i < n_out; i++) {
        out[i] = r[i];
        sum[i] = p.out[i] + (double)r[i];
    }
    conv2d_forward(out, in, w, NULL, &s, 1, scratch);
    check_forward("conv forward, accumulated", out, sum, n_out);

    float *din = new_floats(n_in), *dw = new_floats(n_w);
    fill_constant(din, n_in, GRAD_PREFILL);
    fill_constant(dw, n_w, GRAD_PREFILL);
    if (scratch) fill_constant(scratch, n_scratch, OUT_GARBAGE); /* backward must not rely on forward's */
    conv2d_backward(din, dw, r, in, w, NULL, &s, 1, 0, scratch);
    /* finite differences cost a convolution per input: small problems only;
     * they also vouch for the direct sums that check the large ones */
    if ((double)n_in * n_out * in_channels * kernel_h * kernel_w < 1e9) {
        check_gradient("conv d/d input", conv_objective, &p, p.in, n_in, din);
        check_gradient("conv d/d weight", conv_objective, &p, p.w, n_w, dw);
    }
    double *din_ref = new_doubles(n_in), *dw_ref = new_doubles(n_w);
    conv_reference_backward(din_ref, dw_ref, p.r, p.in, p.w, &s);
    check_forward("conv d/d input by the direct sum", din, din_ref, n_in);
    check_forward("conv d/d weight by the direct sum", dw, dw_ref, n_w);

    /* the image needs no gradient: din NULL still gives dw, the same one
     * unless din took the input gradient as a convolution: then dw came from
     * the im2col of dout, and without din it comes from the input's, a
     * different order of the same sums (Winograd computes dw the same way
     * with or without din) */
    float *dw_only = new_floats(n_w);
    fill_constant(dw_only, n_w, GRAD_PREFILL);
    conv2d_backward(NULL, dw_only, r, in, w, NULL, &s, 1, 0, scratch);
    if (conv_input_grad_is_conv(&s))
        check_forward("conv d/d weight with din NULL", dw_only, dw_ref, n_w);
    else
        check_same("conv d/d weight with din NULL", dw_only, dw, n_w);
    /* din set, not added to: whatever it held before */
    float *din_set = new_floats(n_in);
    fill_constant(din_set, n_in, NAN);
    fill_constant(dw_only, n_w, GRAD_PREFILL);
    conv2d_backward(din_set, dw_only, r, in, w, NULL, &s, 0, 0, scratch);
    check_set("conv d/d input set", din_set, din, n_in);

    /* a kept Winograd U (conv_winograd_u) is what the op multiplies by: U of
     * another kernel w2 (w reversed: the random stream of the tests after
     * this one stays as it was), passed with w, gives w2's output and input
     * gradient (dW does not read the kernel) */
    const size_t n_u = conv_winograd_u_size(&s);
    CHECK((n_u > 0) == conv_is_winograd(&s), "conv_winograd_u_size %zu, Winograd %d", n_u, conv_is_winograd(&s));
    if (n_u) {
        float *u2 = new_floats(n_u), *w2 = new_floats(n_w), *want = new_floats(n_out), *got = new_floats(n_out);
        float *din_want = new_floats(n_in), *din_got = new_floats(n_in);
        for (size_t i = 0; i < n_w; i++) w2[i] = w[n_w - 1 - i];
        conv_winograd_u(u2, w2, &s);
        conv2d_forward(want, in, w2, NULL, &s, 0, scratch);
        conv2d_forward(got, in, w, u2, &s, 0, scratch);
        check_same("conv forward with a kept U", got, want, n_out);
        conv2d_backward(din_want, dw_only, r, in, w2, NULL, &s, 0, 0, scratch);
        conv2d_backward(din_got, dw_only, r, in, w, u2, &s, 0, 0, scratch);
        check_same("conv d/d input with a kept U", din_got, din_want, n_in);
        check_du("conv", &s, in, w, r, din, dw, 0, scratch);
    }

    size_t overrun = 0;
    for (size_t i = 0; scratch && i < CANARY; i++) overrun += scratch[n_scratch + i] != -12345.0f;
    CHECK(overrun == 0, "the op wrote %zu floats past the %zu of scratch it asked for", overrun, n_scratch);
    free_tracked();
}

/* ---------------------------------------------------------- bfloat16 */

static void test_bf16_round(void) {
    TEST_CASE("bf16 rounding: nearest, ties to even, NaN and infinity kept");
    const float one = 1.0f, ulp = 1.0f / 128; /* bf16 keeps 7 fraction bits */
    CHECK(bf16_round(one + ulp) == one + ulp, "1 + 2^-7 is a bf16 value, got %.9g", bf16_round(one + ulp));
    CHECK(bf16_round(one + ulp / 2) == one, "1 + 2^-8 is a tie: to even (1), got %.9g", bf16_round(one + ulp / 2));
    CHECK(bf16_round(one + 3 * ulp / 2) == one + 2 * ulp, "1 + 3 * 2^-8 is a tie: to even, got %.9g",
          bf16_round(one + 3 * ulp / 2));
    CHECK(bf16_round(one + ulp / 2 + ulp / 64) == one + ulp, "just above a tie rounds up, got %.9g",
          bf16_round(one + ulp / 2 + ulp / 64));
    CHECK(bf16_round(-3.0f) == -3.0f && bf16_round(0.0f) == 0.0f, "exact values kept");
    CHECK(isnan(bf16_round(NAN)) && isinf(bf16_round(INFINITY)) && bf16_round(-INFINITY) < 0, "NaN and inf kept");
    CHECK(isinf(bf16_round(FLT_MAX)), "FLT_MAX rounds up to infinity in bf16, got %g", bf16_round(FLT_MAX));
}

/* C (m, n), row stride ldc, against want; column n, just past C's rows,
 * must still hold what `beyond` saved of it */
static void check_gemm(const char *what, const float *c, int ldc, const double *want, int m, int n,
                       const float *beyond) {
    float *got = new_floats((size_t)m * n);
    size_t touched = 0;
    for (int i = 0; i < m; i++) {
        memcpy(got + (size_t)i * n, c + (size_t)i * ldc, n * sizeof(float));
        touched += c[(size_t)i * ldc + n] != beyond[i];
    }
    check_forward(what, got, want, (size_t)m * n);
    CHECK(touched == 0, "%s wrote %zu values past the n columns of C", what, touched);
}

/* blas_sgemm, which may take a product in pieces (columns, inner blocks, row
 * blocks), against the product in double, onto C holding 0.5 (beta 1) or
 * NaN (beta 0), strides wider than the rows */
static void test_blas_sgemm(const char *name, int trans_a, int trans_b, int m, int n, int k, float beta) {
    TEST_CASE(name);
    const int lda = (trans_a ? m : k) + 3, ldb = (trans_b ? k : n) + 2, ldc = n + 5;
    float *a = new_floats((size_t)(trans_a ? k : m) * lda), *b = new_floats((size_t)(trans_b ? n : k) * ldb);
    float *c = new_floats((size_t)m * ldc), *beyond = new_floats(m);
    double *want = new_doubles((size_t)m * n);
    fill_uniform(a, (size_t)(trans_a ? k : m) * lda, -1.0, 1.0);
    fill_uniform(b, (size_t)(trans_b ? n : k) * ldb, -1.0, 1.0);
    fill_constant(c, (size_t)m * ldc, beta == 0.0f ? NAN : 0.5f);
    for (int i = 0; i < m; i++) {
        beyond[i] = c[(size_t)i * ldc + n] = -7.0f;
        for (int j = 0; j < n; j++) {
            double acc = beta == 0.0f ? 0.0 : beta * 0.5;
            for (int p = 0; p < k; p++)
                acc += (double)(trans_a ? a[(size_t)p * lda + i] : a[(size_t)i * lda + p]) *
                       (trans_b ? b[(size_t)j * ldb + p] : b[(size_t)p * ldb + j]);
            want[(size_t)i * n + j] = acc;
        }
    }
    blas_sgemm(trans_a, trans_b, m, n, k, a, lda, b, ldb, beta, c, ldc);
    check_gemm("blas_sgemm", c, ldc, want, m, n, beyond);
    free_tracked();
}

/* C (+)= round(A) . round(B) in double, against the bf16 GEMM: the products
 * of bf16 values are exact in float, so only the float sums differ */
static void test_bf16_gemm(const char *name, int m, int n, int k, int accumulate, int trans_a) {
    char full[160];
    snprintf(full, sizeof full, "%s (%s kernel)", name, bf16_fast() ? "AVX512-BF16" : "portable");
    TEST_CASE(full);
    const int ldb = n + 3, ldc = n + 5; /* strides wider than the rows */
    float *a = new_floats((size_t)m * k), *b = new_floats((size_t)k * ldb), *c = new_floats((size_t)m * ldc);
    uint32_t *packed = track(calloc(bf16_packed_size(m, k), sizeof(uint32_t)));
    double *want = new_doubles((size_t)m * n);
    fill_uniform(a, (size_t)m * k, -1.0, 1.0);
    fill_uniform(b, (size_t)k * ldb, -1.0, 1.0);
    fill_uniform(c, (size_t)m * ldc, -1.0, 1.0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = accumulate ? c[(size_t)i * ldc + j] : 0.0;
            for (int p = 0; p < k; p++) /* A (m, k), or stored as its transpose (k, m) */
                acc += (double)bf16_round(a[trans_a ? (size_t)p * m + i : (size_t)i * k + p]) *
                       bf16_round(b[(size_t)p * ldb + j]);
            want[(size_t)i * n + j] = acc;
        }
    if (trans_a)
        bf16_pack(packed, a, m, k, 1, m);
    else
        bf16_pack(packed, a, m, k, k, 1);
    float *beyond = new_floats(m);
    for (int i = 0; i < m; i++) beyond[i] = c[(size_t)i * ldc + n];
    bf16_gemm(c, ldc, packed, b, ldb, m, n, k, accumulate);
    check_gemm("bf16 GEMM", c, ldc, want, m, n, beyond);
    free_tracked();
}

/* C += A . B^T for A and B running along K = segments runs of k, against
 * double sums of the rounded values */
static void test_bf16_gemm_nt(const char *name, int m, int n, int k, int segments) {
    char full[160];
    snprintf(full, sizeof full, "%s (%s kernel)", name, bf16_fast() ? "AVX512-BF16" : "portable");
    TEST_CASE(full);
    /* A: segments blocks of (m, k) one after the other (as images' dout); B
     * rows of segments * k + 3 floats, the runs side by side (as a group's
     * im2col); C with a stride wider than its rows */
    const int ldc = n + 5, ldb = segments * k + 3;
    float *a = new_floats((size_t)segments * m * k), *b = new_floats((size_t)n * ldb), *c = new_floats((size_t)m * ldc);
    uint32_t *rows = track(calloc(bf16_nt_rows_size(m, n, k, segments), sizeof(uint32_t)));
    double *want = new_doubles((size_t)m * n);
    fill_uniform(a, (size_t)segments * m * k, -1.0, 1.0);
    fill_uniform(b, (size_t)n * ldb, -1.0, 1.0);
    fill_uniform(c, (size_t)m * ldc, -1.0, 1.0);
    for (int i = 0; i < m; i++)
        for (int j = 0; j < n; j++) {
            double acc = c[(size_t)i * ldc + j];
            for (int g = 0; g < segments; g++)
                for (int p = 0; p < k; p++)
                    acc += (double)bf16_round(a[((size_t)g * m + i) * k + p]) *
                           bf16_round(b[(size_t)j * ldb + g * k + p]);
            want[(size_t)i * n + j] = acc;
        }
    float *beyond = new_floats(m);
    for (int i = 0; i < m; i++) beyond[i] = c[(size_t)i * ldc + n];
    const Bf16Runs ra = {a, (size_t)k, (size_t)m * k}, rb = {b, (size_t)ldb, (size_t)k};
    bf16_gemm_nt(c, ldc, ra, m, rb, n, k, segments, rows);
    check_gemm("bf16 GEMM A . B^T", c, ldc, want, m, n, beyond);
    free_tracked();
}

/* conv2d_forward_bf16 against the float conv: within bf16's precision of it
 * always, and for the im2col and 1x1 paths, whose GEMMs multiply the inputs
 * and weights themselves, equal to the exact conv of the rounded tensors */
static void test_conv_bf16(const char *name, int batch, int in_channels, int in_h, int in_w, int out_channels,
                           int kernel, int stride, int pad) {
    char full[160];
    snprintf(full, sizeof full, "%s [%d thread%s]", name, omp_get_max_threads(), omp_get_max_threads() == 1 ? "" : "s");
    TEST_CASE(full);
    ConvShape s = {.batch = batch, .in_channels = in_channels, .in_h = in_h, .in_w = in_w,
                   .out_channels = out_channels, .kernel_h = kernel, .kernel_w = kernel, .stride = stride, .pad = pad};
    CHECK(conv_shape_init(&s) == 0, "shape");
    const size_t n_in = (size_t)batch * in_channels * in_h * in_w;
    const size_t n_w = (size_t)out_channels * in_channels * kernel * kernel;
    const size_t n_out = (size_t)batch * out_channels * s.out_h * s.out_w, n_scratch = conv_scratch_size(&s, 1);
    float *in = new_floats(n_in), *w = new_floats(n_w), *out = new_floats(n_out), *exact = new_floats(n_out);
    float *scratch = new_floats(n_scratch);
    uint32_t *packed = track(calloc(conv_bf16_packed_size(&s), sizeof(uint32_t)));
    fill_uniform(in, n_in, -1.0, 1.0);
    fill_uniform(w, n_w, -1.0, 1.0);
    conv_bf16_pack(packed, w, &s, scratch);
    fill_constant(out, n_out, OUT_GARBAGE);
    fill_constant(scratch, n_scratch, OUT_GARBAGE);
    conv2d_forward_bf16(out, in, packed, &s, 0, scratch);

    double *want = new_doubles(n_out);
    conv_reference(want, as_doubles(in, n_in), as_doubles(w, n_w), &s);
    double scale = 0.0, worst = 0.0;
    for (size_t i = 0; i < n_out; i++) scale = fmax(scale, fabs(want[i]));
    for (size_t i = 0; i < n_out; i++) worst = fmax(worst, fabs(out[i] - want[i]) / scale);
    /* bf16 keeps 8 significant bits (a relative rounding of 2^-9), the float conv 24 */
    CHECK(worst < 1e-2, "bf16 conv is off the exact conv by %.3g of the output's scale", worst);
    CHECK(worst > 1e-5, "bf16 conv agrees with the exact conv to %.3g: it did not round to bf16", worst);
    if (!conv_is_winograd(&s)) {
        double *rin = new_doubles(n_in), *rw = new_doubles(n_w), *rounded = new_doubles(n_out);
        for (size_t i = 0; i < n_in; i++) rin[i] = bf16_round(in[i]);
        for (size_t i = 0; i < n_w; i++) rw[i] = bf16_round(w[i]);
        conv_reference(rounded, rin, rw, &s);
        check_forward("bf16 conv = exact conv of the rounded input and weights", out, rounded, n_out);
    }
    /* accumulate: the same sums added to what out held */
    for (size_t i = 0; i < n_out; i++) exact[i] = out[i], out[i] = 1.0f;
    conv2d_forward_bf16(out, in, packed, &s, 1, scratch);
    size_t bad = 0;
    for (size_t i = 0; i < n_out; i++) bad += !(fabs(out[i] - (exact[i] + 1.0f)) <= 1e-6 * (1.0 + fabs(exact[i])));
    CHECK(bad == 0, "accumulate: %zu of %zu values are not the forward's plus 1", bad, n_out);

    /* the backward in bf16, against the exact gradients, onto prefilled
     * din and dw, with a canary behind the scratch it asked for */
    enum { CANARY = 64 };
    float *r = new_floats(n_out), *din = new_floats(n_in), *dw = new_floats(n_w), *dw_only = new_floats(n_w);
    float *big = new_floats(n_scratch + CANARY);
    fill_uniform(r, n_out, -1.0, 1.0);
    fill_constant(big, n_scratch, OUT_GARBAGE);
    fill_constant(big + n_scratch, CANARY, -12345.0f);
    fill_constant(din, n_in, GRAD_PREFILL);
    fill_constant(dw, n_w, GRAD_PREFILL);
    fill_constant(dw_only, n_w, GRAD_PREFILL);
    conv2d_backward(din, dw, r, in, w, NULL, &s, 1, 1, big);
    conv2d_backward(NULL, dw_only, r, in, w, NULL, &s, 1, 1, big);
    float *din_set = new_floats(n_in), *dw_set = new_floats(n_w);
    fill_constant(din_set, n_in, NAN);
    fill_constant(dw_set, n_w, GRAD_PREFILL);
    conv2d_backward(din_set, dw_set, r, in, w, NULL, &s, 0, 1, big);
    check_set("bf16 conv d/d input set", din_set, din, n_in);
    if (conv_is_winograd(&s)) check_du("bf16 conv", &s, in, w, r, din, dw, 1, big);
    double *din_ref = new_doubles(n_in), *dw_ref = new_doubles(n_w);
    conv_reference_backward(din_ref, dw_ref, as_doubles(r, n_out), as_doubles(in, n_in), as_doubles(w, n_w), &s);
    const struct { const char *what; const float *got; const double *want; size_t n; } grads[] = {
        {"d/d input", din, din_ref, n_in},
        {"d/d weight", dw, dw_ref, n_w},
        {"d/d weight, din NULL", dw_only, dw_ref, n_w}};
    for (int g = 0; g < 3; g++) {
        double gscale = 0.0, gworst = 0.0;
        for (size_t i = 0; i < grads[g].n; i++) gscale = fmax(gscale, fabs(grads[g].want[i] - GRAD_PREFILL));
        for (size_t i = 0; i < grads[g].n; i++)
            gworst = fmax(gworst, fabs(grads[g].got[i] - grads[g].want[i]) / gscale);
        CHECK(gworst < 1e-2 && gworst > 1e-5, "bf16 backward %s: off the exact gradient by %.3g of its scale (want "
              "bf16's rounding: above 1e-5, below 1e-2)", grads[g].what, gworst);
    }
    if (!conv_is_winograd(&s)) { /* the GEMMs multiply dout, the input and the kernel themselves */
        double *rr = new_doubles(n_out), *rin = new_doubles(n_in), *rw = new_doubles(n_w);
        for (size_t i = 0; i < n_out; i++) rr[i] = bf16_round(r[i]);
        for (size_t i = 0; i < n_in; i++) rin[i] = bf16_round(in[i]);
        for (size_t i = 0; i < n_w; i++) rw[i] = bf16_round(w[i]);
        conv_reference_backward(din_ref, dw_ref, rr, rin, rw, &s);
        check_forward("bf16 backward d/d input = exact one of the rounded tensors", din, din_ref, n_in);
        check_forward("bf16 backward d/d weight = exact one of the rounded tensors", dw, dw_ref, n_w);
    }
    size_t overrun = 0;
    for (size_t i = 0; i < CANARY; i++) overrun += big[n_scratch + i] != -12345.0f;
    CHECK(overrun == 0, "the bf16 backward wrote %zu floats past the %zu of scratch it asked for", overrun, n_scratch);
    free_tracked();
}

/* ---------------------------------------------- weight standardization */

/* each output row: (w - mean) / sqrt(population variance + 1e-10) */
static void weight_standardize_reference(double *w_hat, const double *w, int out_channels, int fan_in) {
    for (int o = 0; o < out_channels; o++) {
        const double *row = w + (size_t)o * fan_in;
        double mean = 0.0, var = 0.0;
        for (int i = 0; i < fan_in; i++) mean += row[i];
        mean /= fan_in;
        for (int i = 0; i < fan_in; i++) var += (row[i] - mean) * (row[i] - mean);
        var /= fan_in;
        for (int i = 0; i < fan_in; i++) w_hat[(size_t)o * fan_in + i] = (row[i] - mean) / sqrt(var + 1e-10);
    }
}

typedef struct {
    int out_channels, fan_in;
    double *w;       /* (Cout, fan_in) */
    const double *r; /* (Cout, fan_in) */
    double *w_hat;   /* (Cout, fan_in) work space */
} WsProblem;

static double ws_objective(void *ctx) {
    WsProblem *p = ctx;
    weight_standardize_reference(p->w_hat, p->w, p->out_channels, p->fan_in);
    return dot(p->w_hat, p->r, (size_t)p->out_channels * p->fan_in);
}

static void test_weight_standardize(const char *name, int out_channels, int fan_in) {
    TEST_CASE(name);
    const size_t n = (size_t)out_channels * fan_in;
    float *w = new_floats(n), *r = new_floats(n), *w_hat = new_floats(n), *rstd = new_floats(out_channels);
    /* rows of very different offset and spread; the small spread (0.03)
     * also makes a wrong epsilon visible */
    static const double spreads[] = {0.03, 0.3, 1.0, 2.5};
    for (int o = 0; o < out_channels; o++) {
        double offset = rand_uniform(-0.5, 0.5), spread = spreads[o % 4];
        for (int i = 0; i < fan_in; i++) w[(size_t)o * fan_in + i] = (float)(offset + spread * rand_uniform(-1, 1));
    }
    fill_uniform(r, n, -1.0, 1.0);

    fill_constant(w_hat, n, OUT_GARBAGE);
    weight_standardize_forward(w_hat, rstd, w, out_channels, fan_in);
    WsProblem p = {out_channels, fan_in, as_doubles(w, n), as_doubles(r, n), new_doubles(n)};
    weight_standardize_reference(p.w_hat, p.w, out_channels, fan_in);
    check_forward("weight standardization forward", w_hat, p.w_hat, n);
    for (int o = 0; o < out_channels; o++) {
        double mean = 0.0, sq = 0.0;
        for (int i = 0; i < fan_in; i++) mean += w_hat[(size_t)o * fan_in + i];
        for (int i = 0; i < fan_in; i++) sq += (double)w_hat[(size_t)o * fan_in + i] * w_hat[(size_t)o * fan_in + i];
        mean /= fan_in;
        CHECK(fabs(mean) < 1e-5 && fabs(sq / fan_in - 1.0) < 1e-5, "row %d: mean %g, variance %g", o, mean,
              sq / fan_in);
    }

    float *dw = new_floats(n);
    fill_constant(dw, n, GRAD_PREFILL);
    weight_standardize_backward(dw, r, w_hat, rstd, out_channels, fan_in);
    check_gradient("weight standardization d/d w", ws_objective, &p, p.w, n, dw);
    free_tracked();
}

/* -------------------------------------------------------------- GroupNorm */

/* per image and group of C/G channels: (x - mean) / sqrt(var + eps) * gamma + beta */
static void groupnorm_reference(double *out, const double *in, const double *gamma, const double *beta, int batch,
                                int channels, int hw, int groups, int relu) {
    const int per_group = channels / groups;
    const int n = per_group * hw;
    for (int b = 0; b < batch; b++)
        for (int g = 0; g < groups; g++) {
            const double *x = in + ((size_t)b * channels + (size_t)g * per_group) * hw;
            double mean = 0.0, var = 0.0;
            for (int i = 0; i < n; i++) mean += x[i];
            mean /= n;
            for (int i = 0; i < n; i++) var += (x[i] - mean) * (x[i] - mean);
            var /= n;
            for (int c = 0; c < per_group; c++) {
                const int ch = g * per_group + c;
                for (int i = 0; i < hw; i++) {
                    size_t at = ((size_t)b * channels + ch) * hw + i;
                    out[at] = (in[at] - mean) / sqrt(var + (double)GN_EPS) * gamma[ch] + beta[ch];
                    if (relu && out[at] < 0.0) out[at] = 0.0;
                }
            }
        }
}

typedef struct {
    int batch, channels, hw, groups, relu;
    double *in;          /* (B, C, HW) */
    double *gamma, *beta; /* (C) */
    const double *r;     /* (B, C, HW) */
    double *out;         /* (B, C, HW) work space */
} GroupNormProblem;

static double groupnorm_objective(void *ctx) {
    GroupNormProblem *p = ctx;
    groupnorm_reference(p->out, p->in, p->gamma, p->beta, p->batch, p->channels, p->hw, p->groups, p->relu);
    return dot(p->out, p->r, (size_t)p->batch * p->channels * p->hw);
}

/* relu = 1 tests the fused GroupNorm + ReLU the model uses */
static void test_groupnorm(const char *name, int batch, int channels, int hw, int groups, int relu) {
    TEST_CASE(name);
    const size_t n = (size_t)batch * channels * hw, n_stats = (size_t)batch * groups;
    float *in = new_floats(n), *r = new_floats(n), *out = new_floats(n);
    float *gamma = new_floats(channels), *beta = new_floats(channels);
    float *mean = new_floats(n_stats), *rstd = new_floats(n_stats);
    /* each channel its own offset and spread, so group statistics matter */
    for (int b = 0; b < batch; b++)
        for (int c = 0; c < channels; c++) {
            double offset = rand_uniform(-1.0, 1.0), spread = rand_uniform(0.3, 2.0);
            for (int i = 0; i < hw; i++)
                in[((size_t)b * channels + c) * hw + i] = (float)(offset + spread * rand_uniform(-1.0, 1.0));
        }
    fill_uniform(gamma, channels, 0.5, 1.5);
    fill_uniform(beta, channels, -0.5, 0.5);
    fill_uniform(r, n, -1.0, 1.0);

    fill_constant(out, n, OUT_GARBAGE);
    groupnorm_forward(out, mean, rstd, in, gamma, beta, batch, channels, hw, groups, relu);
    GroupNormProblem p = {batch, channels, hw, groups, relu, as_doubles(in, n), as_doubles(gamma, channels),
                          as_doubles(beta, channels), as_doubles(r, n), new_doubles(n)};
    groupnorm_reference(p.out, p.in, p.gamma, p.beta, batch, channels, hw, groups, relu);
    check_forward("groupnorm forward", out, p.out, n);

    float *din = new_floats(n), *dgamma = new_floats(channels), *dbeta = new_floats(channels);
    fill_constant(din, n, GRAD_PREFILL);
    fill_constant(dgamma, channels, GRAD_PREFILL);
    fill_constant(dbeta, channels, GRAD_PREFILL);
    float *sums = new_floats((size_t)2 * batch * channels);
    groupnorm_backward(din, dgamma, dbeta, r, in, mean, rstd, gamma, batch, channels, hw, groups, relu ? out : NULL,
                       1, sums);
    check_gradient("groupnorm d/d input", groupnorm_objective, &p, p.in, n, din);
    check_gradient("groupnorm d/d gamma", groupnorm_objective, &p, p.gamma, channels, dgamma);
    check_gradient("groupnorm d/d beta", groupnorm_objective, &p, p.beta, channels, dbeta);

    float *dgamma_only = new_floats(channels), *dbeta_only = new_floats(channels);
    fill_constant(dgamma_only, channels, GRAD_PREFILL);
    fill_constant(dbeta_only, channels, GRAD_PREFILL);
    groupnorm_backward(NULL, dgamma_only, dbeta_only, r, in, mean, rstd, gamma, batch, channels, hw, groups,
                       relu ? out : NULL, 1, sums);
    check_same("groupnorm d/d gamma with din NULL", dgamma_only, dgamma, channels);
    check_same("groupnorm d/d beta with din NULL", dbeta_only, dbeta, channels);
    float *din_set = new_floats(n); /* din set, not added to */
    fill_constant(din_set, n, NAN);
    fill_constant(dgamma_only, channels, GRAD_PREFILL);
    fill_constant(dbeta_only, channels, GRAD_PREFILL);
    groupnorm_backward(din_set, dgamma_only, dbeta_only, r, in, mean, rstd, gamma, batch, channels, hw, groups,
                       relu ? out : NULL, 0, sums);
    check_set("groupnorm d/d input set", din_set, din, n);
    /* the same bytes on 1 and 3 threads as on the default number */
    const int was = omp_get_max_threads();
    float *din_t = new_floats(n), *dgamma_t = new_floats(channels), *dbeta_t = new_floats(channels);
    for (int threads = 1; threads <= 3; threads += 2) {
        fill_constant(din_t, n, GRAD_PREFILL);
        fill_constant(dgamma_t, channels, GRAD_PREFILL);
        fill_constant(dbeta_t, channels, GRAD_PREFILL);
        omp_set_num_threads(threads);
        groupnorm_backward(din_t, dgamma_t, dbeta_t, r, in, mean, rstd, gamma, batch, channels, hw, groups,
                           relu ? out : NULL, 1, sums);
        CHECK(memcmp(din_t, din, n * sizeof(float)) == 0 && memcmp(dgamma_t, dgamma, channels * sizeof(float)) == 0 &&
                  memcmp(dbeta_t, dbeta, channels * sizeof(float)) == 0,
              "groupnorm backward on %d thread(s) differs from %d threads'", threads, was);
    }
    omp_set_num_threads(was);
    free_tracked();
}

/* ------------------------------------------------------------------ ReLU */

typedef struct {
    size_t n;
    double *in;
    const double *r;
} ElementwiseProblem;

static double relu_objective(void *ctx) {
    ElementwiseProblem *p = ctx;
    double s = 0.0;
    for (size_t i = 0; i < p->n; i++) s += (p->in[i] > 0.0 ? p->in[i] : 0.0) * p->r[i];
    return s;
}

static void test_relu(void) {
    TEST_CASE("relu");
    const size_t n = 2 * 3 * 4 * 5;
    float *in = new_floats(n), *out = new_floats(n), *r = new_floats(n), *din = new_floats(n);
    fill_away_from_zero(in, n);
    fill_uniform(r, n, -1.0, 1.0);
    fill_constant(out, n, OUT_GARBAGE);
    relu_forward(out, in, n);
    ElementwiseProblem p = {n, as_doubles(in, n), as_doubles(r, n)};
    double *want = new_doubles(n);
    size_t negatives = 0;
    for (size_t i = 0; i < n; i++) {
        want[i] = p.in[i] > 0.0 ? p.in[i] : 0.0;
        negatives += p.in[i] < 0.0;
    }
    CHECK(negatives > n / 4 && negatives < 3 * n / 4, "inputs should be of both signs (%zu negative)", negatives);
    check_forward("relu forward", out, want, n);
    fill_constant(din, n, GRAD_PREFILL);
    relu_backward(din, r, out, n);
    check_gradient("relu d/d input", relu_objective, &p, p.in, n, din);
    free_tracked();
}

/* -------------------------------------------------------------- max-pool */

/* max over the window, cells outside the image counting as value 0 */
static void maxpool_reference(double *out, const double *in, const PoolShape *s) {
    for (int p = 0; p < s->batch * s->channels; p++)
        for (int y = 0; y < s->out_h; y++)
            for (int x = 0; x < s->out_w; x++) {
                double best = -INFINITY;
                for (int i = 0; i < s->kernel; i++)
                    for (int j = 0; j < s->kernel; j++) {
                        int iy = y * s->stride - s->pad + i, ix = x * s->stride - s->pad + j;
                        int inside = iy >= 0 && iy < s->in_h && ix >= 0 && ix < s->in_w;
                        double v = inside ? in[((size_t)p * s->in_h + iy) * s->in_w + ix] : 0.0;
                        if (v > best) best = v;
                    }
                out[((size_t)p * s->out_h + y) * s->out_w + x] = best;
            }
}

typedef struct {
    PoolShape shape;
    double *in;
    const double *r;
    double *out;
    size_t out_count;
} PoolProblem;

static double maxpool_objective(void *ctx) {
    PoolProblem *p = ctx;
    maxpool_reference(p->out, p->in, &p->shape);
    return dot(p->out, p->r, p->out_count);
}

/* Plane (batch 1, channel 1) is all negative: windows that overlap the zero
 * padding output 0 there, argmax -1, and their gradient goes nowhere. */
static void test_maxpool(const char *name, int in_h, int in_w, int expect_h, int expect_w) {
    TEST_CASE(name);
    PoolShape s = {.batch = 2, .channels = 2, .in_h = in_h, .in_w = in_w, .kernel = 3, .stride = 2, .pad = 1};
    int rc = pool_shape_init(&s);
    CHECK(rc == 0 && s.out_h == expect_h && s.out_w == expect_w, "shape: rc %d, %dx%d, want %dx%d", rc, s.out_h,
          s.out_w, expect_h, expect_w);
    if (rc != 0 || s.out_h != expect_h || s.out_w != expect_w) return;
    const size_t plane_in = (size_t)in_h * in_w, plane_out = (size_t)s.out_h * s.out_w;
    const size_t n_in = 4 * plane_in, n_out = 4 * plane_out;
    float *in = new_floats(n_in), *out = new_floats(n_out), *r = new_floats(n_out), *din = new_floats(n_in);
    int32_t *argmax = new_ints(n_out);
    fill_distinct(in, n_in, 0.01);
    const size_t negative_plane = 3; /* (b 1, c 1) */
    float *neg = in + negative_plane * plane_in;
    float top = -FLT_MAX;
    for (size_t i = 0; i < plane_in; i++) top = fmaxf(top, neg[i]);
    for (size_t i = 0; i < plane_in; i++) neg[i] -= top + 0.05f; /* all <= -0.05, still distinct */
    fill_uniform(r, n_out, -1.0, 1.0);

    fill_constant(out, n_out, OUT_GARBAGE);
    maxpool_forward(out, argmax, in, &s);
    PoolProblem p = {s, as_doubles(in, n_in), as_doubles(r, n_out), new_doubles(n_out), n_out};
    maxpool_reference(p.out, p.in, &s);
    check_forward("maxpool forward", out, p.out, n_out);
    size_t argmax_bad = 0;
    for (size_t o = 0; o < n_out; o++) {
        size_t plane = o / plane_out;
        int32_t a = argmax[o];
        if (a < -1 || (a >= 0 ? (size_t)a >= plane_in || in[plane * plane_in + a] != out[o] : out[o] != 0.0f))
            argmax_bad++;
    }
    CHECK(argmax_bad == 0, "%zu argmax entries do not point at the output value (or -1 for padding)", argmax_bad);

    /* in the negative plane, the corner window (overlapping padding) is 0 from
     * the padding and the window at (1,1) (inside the image) is negative */
    const float *neg_out = out + negative_plane * plane_out;
    const int32_t *neg_arg = argmax + negative_plane * plane_out;
    CHECK(neg_out[0] == 0.0f && neg_arg[0] == -1, "corner of negative plane: %g, argmax %d", neg_out[0],
          neg_arg[0]);
    CHECK(neg_out[s.out_w + 1] < 0.0f && neg_arg[s.out_w + 1] >= 0, "inner window of negative plane: %g, argmax %d",
          neg_out[s.out_w + 1], neg_arg[s.out_w + 1]);
    CHECK(neg_out[1] == 0.0f && neg_arg[1] == -1, "top edge of negative plane: %g, argmax %d", neg_out[1], neg_arg[1]);

    /* ties: on zeros, every window's first tap in window order wins - the
     * padding (-1) where the window starts outside the image */
    float *zeros = new_floats(n_in), *tie_out = new_floats(n_out);
    int32_t *tie_arg = new_ints(n_out);
    maxpool_forward(tie_out, tie_arg, zeros, &s);
    size_t tie_bad = 0;
    for (size_t o = 0; o < n_out; o++) {
        const int oh = (int)(o % plane_out) / s.out_w, ow = (int)(o % plane_out) % s.out_w;
        const int ih = 2 * oh - 1, iw = 2 * ow - 1, first = ih < 0 || iw < 0 ? -1 : ih * in_w + iw;
        tie_bad += tie_arg[o] != first || tie_out[o] != 0.0f;
    }
    CHECK(tie_bad == 0, "on a tie, %zu windows did not pick their first tap", tie_bad);

    fill_constant(din, n_in, GRAD_PREFILL);
    maxpool_backward(din, r, argmax, &s);
    check_gradient("maxpool d/d input", maxpool_objective, &p, p.in, n_in, din);

    /* the negative plane receives exactly the dout of windows inside the image */
    double received = 0.0, inside_dout = 0.0;
    for (size_t i = 0; i < plane_in; i++) received += (double)din[negative_plane * plane_in + i] - GRAD_PREFILL;
    for (int y = 0; y < s.out_h; y++)
        for (int x = 0; x < s.out_w; x++) {
            int y0 = y * s.stride - s.pad, x0 = x * s.stride - s.pad;
            if (y0 >= 0 && x0 >= 0 && y0 + s.kernel <= in_h && x0 + s.kernel <= in_w)
                inside_dout += r[negative_plane * plane_out + (size_t)y * s.out_w + x];
        }
    CHECK(fabs(received - inside_dout) < 1e-5, "negative plane received %g, windows inside the image sent %g",
          received, inside_dout);
    free_tracked();
}

/* ------------------------------------------------------ global avg pool */

typedef struct {
    int batch, channels, hw;
    double *in;
    const double *r;
} AvgPoolProblem;

static void avgpool_reference(double *out, const double *in, int batch, int channels, int hw) {
    for (int p = 0; p < batch * channels; p++) {
        double sum = 0.0;
        for (int i = 0; i < hw; i++) sum += in[(size_t)p * hw + i];
        out[p] = sum / hw;
    }
}

static double avgpool_objective(void *ctx) {
    AvgPoolProblem *p = ctx;
    double s = 0.0;
    for (int q = 0; q < p->batch * p->channels; q++) {
        double o;
        avgpool_reference(&o, p->in + (size_t)q * p->hw, 1, 1, p->hw);
        s += o * p->r[q];
    }
    return s;
}

static void test_avgpool(void) {
    TEST_CASE("global average pool");
    const int batch = 2, channels = 3, hw = 10;
    const size_t n_in = (size_t)batch * channels * hw, n_out = (size_t)batch * channels;
    float *in = new_floats(n_in), *out = new_floats(n_out), *r = new_floats(n_out), *din = new_floats(n_in);
    fill_uniform(in, n_in, -1.0, 1.0);
    fill_uniform(r, n_out, -1.0, 1.0);
    fill_constant(out, n_out, OUT_GARBAGE);
    avgpool_forward(out, in, batch, channels, hw);
    AvgPoolProblem p = {batch, channels, hw, as_doubles(in, n_in), as_doubles(r, n_out)};
    double *want = new_doubles(n_out);
    avgpool_reference(want, p.in, batch, channels, hw);
    check_forward("avgpool forward", out, want, n_out);
    fill_constant(din, n_in, GRAD_PREFILL);
    avgpool_backward(din, r, batch, channels, hw);
    check_gradient("avgpool d/d input", avgpool_objective, &p, p.in, n_in, din);
    free_tracked();
}

/* ----------------------------------------------------------------- dense */

static void dense_reference(double *out, const double *in, const double *w, const double *bias, int batch,
                            int in_features, int out_features) {
    for (int b = 0; b < batch; b++)
        for (int k = 0; k < out_features; k++) {
            double acc = bias[k];
            for (int c = 0; c < in_features; c++) acc += in[b * in_features + c] * w[k * in_features + c];
            out[b * out_features + k] = acc;
        }
}

typedef struct {
    int batch, in_features, out_features;
    double *in, *w, *bias; /* (B, C), (K, C), (K) */
    const double *r;       /* (B, K) */
    double *out;           /* (B, K) work space */
} DenseProblem;

static double dense_objective(void *ctx) {
    DenseProblem *p = ctx;
    dense_reference(p->out, p->in, p->w, p->bias, p->batch, p->in_features, p->out_features);
    return dot(p->out, p->r, (size_t)p->batch * p->out_features);
}

static void test_dense(void) {
    TEST_CASE("dense head");
    const int batch = 3, in_features = 6, out_features = 4;
    const size_t n_in = (size_t)batch * in_features, n_w = (size_t)out_features * in_features;
    const size_t n_out = (size_t)batch * out_features;
    float *in = new_floats(n_in), *w = new_floats(n_w), *bias = new_floats(out_features);
    float *out = new_floats(n_out), *r = new_floats(n_out);
    fill_uniform(in, n_in, -1.0, 1.0);
    fill_uniform(w, n_w, -1.0, 1.0);
    fill_uniform(bias, out_features, -1.0, 1.0);
    fill_uniform(r, n_out, -1.0, 1.0);
    fill_constant(out, n_out, OUT_GARBAGE);
    dense_forward(out, in, w, bias, batch, in_features, out_features);
    DenseProblem p = {batch, in_features, out_features, as_doubles(in, n_in), as_doubles(w, n_w),
                      as_doubles(bias, out_features), as_doubles(r, n_out), new_doubles(n_out)};
    dense_reference(p.out, p.in, p.w, p.bias, batch, in_features, out_features);
    check_forward("dense forward", out, p.out, n_out);

    float *din = new_floats(n_in), *dw = new_floats(n_w), *dbias = new_floats(out_features);
    fill_constant(din, n_in, GRAD_PREFILL);
    fill_constant(dw, n_w, GRAD_PREFILL);
    fill_constant(dbias, out_features, GRAD_PREFILL);
    dense_backward(din, dw, dbias, r, in, w, batch, in_features, out_features);
    check_gradient("dense d/d input", dense_objective, &p, p.in, n_in, din);
    check_gradient("dense d/d weight", dense_objective, &p, p.w, n_w, dw);
    check_gradient("dense d/d bias", dense_objective, &p, p.bias, out_features, dbias);

    float *dw_only = new_floats(n_w), *dbias_only = new_floats(out_features);
    fill_constant(dw_only, n_w, GRAD_PREFILL);
    fill_constant(dbias_only, out_features, GRAD_PREFILL);
    dense_backward(NULL, dw_only, dbias_only, r, in, w, batch, in_features, out_features);
    check_same("dense d/d weight with din NULL", dw_only, dw, n_w);
    check_same("dense d/d bias with din NULL", dbias_only, dbias, out_features);
    free_tracked();
}

/* ---------------------------------------------------------------- losses */

/* log sum_j exp(x_j / T), shifted by the max so it never overflows */
static double logsumexp_reference(const double *x, int n, double temperature) {
    double top = -INFINITY, sum = 0.0;
    for (int j = 0; j < n; j++) top = fmax(top, x[j] / temperature);
    for (int j = 0; j < n; j++) sum += exp(x[j] / temperature - top);
    return top + log(sum);
}

static void softmax_reference(double *out, const double *logits, int rows, int cols, double temperature) {
    for (int b = 0; b < rows; b++) {
        double lse = logsumexp_reference(logits + (size_t)b * cols, cols, temperature);
        for (int c = 0; c < cols; c++)
            out[(size_t)b * cols + c] = exp(logits[(size_t)b * cols + c] / temperature - lse);
    }
}

/* mean over the batch of -sum_c t_c log softmax(x)_c */
static double cross_entropy_reference(const double *logits, const double *targets, int batch, int classes) {
    double loss = 0.0;
    for (int b = 0; b < batch; b++) {
        const double *x = logits + (size_t)b * classes;
        double lse = logsumexp_reference(x, classes, 1.0);
        for (int c = 0; c < classes; c++) loss -= targets[(size_t)b * classes + c] * (x[c] - lse);
    }
    return loss / batch;
}

/* mean over the batch of T^2 sum_c p_c (log p_c - log q_c),
 * p = softmax(teacher / T), q = softmax(student / T) */
static double distill_reference(const double *student, const double *teacher, int batch, int classes,
                                double temperature) {
    double loss = 0.0;
    for (int b = 0; b < batch; b++) {
        const double *s = student + (size_t)b * classes, *t = teacher + (size_t)b * classes;
        double lse_s = logsumexp_reference(s, classes, temperature);
        double lse_t = logsumexp_reference(t, classes, temperature);
        for (int c = 0; c < classes; c++) {
            double log_p = t[c] / temperature - lse_t, log_q = s[c] / temperature - lse_s;
            loss += exp(log_p) * (log_p - log_q);
        }
    }
    return temperature * temperature * loss / batch;
}

typedef struct {
    int batch, classes;
    double temperature;
    double *logits;        /* (B, K) student logits for distillation */
    const double *targets; /* (B, K) targets, or teacher logits for distillation */
} LossProblem;

static double cross_entropy_objective(void *ctx) {
    LossProblem *p = ctx;
    return cross_entropy_reference(p->logits, p->targets, p->batch, p->classes);
}

static double distill_objective(void *ctx) {
    LossProblem *p = ctx;
    return distill_reference(p->logits, p->targets, p->batch, p->classes, p->temperature);
}

static void check_loss(const char *what, float got, double want) {
    CHECK(close_enough(got, want, FWD_RTOL, 1e-6), "%s: got %.9g want %.9g", what, got, want);
}

/* targets_kind: 0 one-hot, 1 mixup of two one-hots, 2 arbitrary distribution */
static void test_cross_entropy(const char *name, int targets_kind) {
    TEST_CASE(name);
    const int batch = 4, classes = 5;
    const size_t n = (size_t)batch * classes;
    float *logits = new_floats(n), *targets = new_floats(n), *probs = new_floats(n), *dlogits = new_floats(n);
    fill_uniform(logits, n, -3.0, 3.0);
    for (int b = 0; b < batch; b++) {
        float *t = targets + (size_t)b * classes;
        int first = (int)rand_uniform(0, classes), second = (first + 1 + (int)rand_uniform(0, classes - 1)) % classes;
        if (targets_kind == 0) {
            t[first] = 1.0f;
        } else if (targets_kind == 1) {
            float lambda = (float)rand_uniform(0.2, 0.8);
            t[first] = lambda;
            t[second] = 1.0f - lambda;
        } else {
            double sum = 0.0, raw[5];
            for (int c = 0; c < classes; c++) sum += raw[c] = rand_uniform(0.1, 1.0);
            for (int c = 0; c < classes; c++) t[c] = (float)(raw[c] / sum);
        }
    }
    LossProblem p = {batch, classes, 1.0, as_doubles(logits, n), as_doubles(targets, n)};

    fill_constant(probs, n, OUT_GARBAGE);
    float loss = cross_entropy_forward(probs, logits, targets, batch, classes);
    check_loss("cross-entropy loss", loss, cross_entropy_reference(p.logits, p.targets, batch, classes));
    double *want_probs = new_doubles(n);
    softmax_reference(want_probs, p.logits, batch, classes, 1.0);
    check_forward("cross-entropy probabilities", probs, want_probs, n);

    fill_constant(dlogits, n, GRAD_PREFILL);
    cross_entropy_backward(dlogits, probs, targets, batch, classes);
    check_gradient("cross-entropy d/d logits", cross_entropy_objective, &p, p.logits, n, dlogits);

    /* logits far beyond expf's range must not overflow */
    for (size_t i = 0; i < n; i++) logits[i] += 200.0f;
    double *shifted = as_doubles(logits, n);
    loss = cross_entropy_forward(probs, logits, targets, batch, classes);
    CHECK(isfinite(loss), "loss with logits near 200 is %g", loss);
    check_loss("cross-entropy loss, logits near 200", loss, cross_entropy_reference(shifted, p.targets, batch, classes));
    free_tracked();
}

static void test_distill(const char *name, float temperature) {
    TEST_CASE(name);
    const int batch = 3, classes = 6;
    const size_t n = (size_t)batch * classes;
    float *student = new_floats(n), *teacher = new_floats(n);
    float *student_probs = new_floats(n), *teacher_probs = new_floats(n), *dlogits = new_floats(n);
    fill_uniform(student, n, -3.0, 3.0);
    fill_uniform(teacher, n, -3.0, 3.0);
    LossProblem p = {batch, classes, temperature, as_doubles(student, n), as_doubles(teacher, n)};

    fill_constant(student_probs, n, OUT_GARBAGE);
    fill_constant(teacher_probs, n, OUT_GARBAGE);
    float loss = distill_loss_forward(student_probs, teacher_probs, student, teacher, batch, classes, temperature);
    double want = distill_reference(p.logits, p.targets, batch, classes, temperature);
    check_loss("distillation loss", loss, want);
    CHECK(loss > 0.0f, "KL of different distributions must be > 0, got %g", loss);
    double *want_probs = new_doubles(n);
    softmax_reference(want_probs, p.logits, batch, classes, temperature);
    check_forward("student probabilities softmax(s/T)", student_probs, want_probs, n);
    softmax_reference(want_probs, p.targets, batch, classes, temperature);
    check_forward("teacher probabilities softmax(t/T)", teacher_probs, want_probs, n);

    fill_constant(dlogits, n, GRAD_PREFILL);
    distill_loss_backward(dlogits, student_probs, teacher_probs, batch, classes, temperature);
    check_gradient("distillation d/d student logits", distill_objective, &p, p.logits, n, dlogits);

    /* student == teacher: no loss and no gradient */
    loss = distill_loss_forward(student_probs, teacher_probs, teacher, teacher, batch, classes, temperature);
    CHECK(fabsf(loss) <= 1e-7f, "KL of identical distributions must be 0, got %g", loss);
    fill_constant(dlogits, n, GRAD_PREFILL);
    distill_loss_backward(dlogits, student_probs, teacher_probs, batch, classes, temperature);
    size_t moved = 0;
    for (size_t i = 0; i < n; i++) moved += fabsf(dlogits[i] - GRAD_PREFILL) > 1e-7f;
    CHECK(moved == 0, "%zu gradients nonzero although student == teacher", moved);

    /* logits far beyond expf's range (200 / T) must not overflow */
    for (size_t i = 0; i < n; i++) {
        student[i] += 200.0f;
        teacher[i] += 200.0f;
    }
    double *shifted_student = as_doubles(student, n), *shifted_teacher = as_doubles(teacher, n);
    loss = distill_loss_forward(student_probs, teacher_probs, student, teacher, batch, classes, temperature);
    CHECK(isfinite(loss), "loss with logits near 200 is %g", loss);
    check_loss("distillation loss, logits near 200", loss,
               distill_reference(shifted_student, shifted_teacher, batch, classes, temperature));
    free_tracked();
}

static void test_softmax_rows(void) {
    TEST_CASE("softmax_rows");
    const int rows = 3, cols = 7;
    const size_t n = (size_t)rows * cols;
    float *logits = new_floats(n), *out = new_floats(n);
    fill_uniform(logits, n, -5.0, 5.0);
    logits[cols] += 500.0f; /* one huge logit in row 1 */
    double *x = as_doubles(logits, n), *want = new_doubles(n);
    static const float temperatures[] = {0.5f, 1.0f, 3.0f};
    for (int k = 0; k < 3; k++) {
        fill_constant(out, n, OUT_GARBAGE);
        softmax_rows(out, logits, rows, cols, temperatures[k]);
        softmax_reference(want, x, rows, cols, temperatures[k]);
        check_forward("softmax_rows", out, want, n);
        for (int b = 0; b < rows; b++) {
            double sum = 0.0;
            for (int c = 0; c < cols; c++) sum += out[(size_t)b * cols + c];
            CHECK(fabs(sum - 1.0) < 1e-6, "T=%g row %d sums to %.9g", temperatures[k], b, sum);
        }
    }
    free_tracked();
}

int main(void) {
    rand_seed(0x5eed0f0e5u);
    test_shapes();

    /* convolutions split the batch across threads: prove them on one and on two */
    for (int threads = 1; threads <= 2; threads++) {
    omp_set_num_threads(threads);
    /*        name                                     B Cin  H  W Cout KH KW  s  p  Ho Wo */
    test_conv("conv 1x1 s1 p0 (pointwise, no im2col)", 2, 3, 16, 17, 4, 1, 1, 1, 0, 16, 17);
    test_conv("conv 1x1 s1 p0 on 4x5 (pointwise, images side by side)", 3, 3, 4, 5, 4, 1, 1, 1, 0, 4, 5);
    test_conv("conv 3x3 s1 p1 on 3x4, 5 images (im2col side by side; on 2 threads 3 + 2)", 5, 2, 3, 4, 3, 3, 3,
              1, 1, 3, 4);
    test_conv("conv 1x1 s2 p0 (projection shortcut)", 2, 3, 5, 6, 2, 1, 1, 2, 0, 3, 3);
    test_conv("conv 1x1 s1 p0 on 4x4, 20 images (backward in groups of 16 + 4)", 20, 3, 4, 4, 5, 1, 1, 1, 0, 4, 4);
    test_conv("conv 3x3 s2 p1 to 4x4, 20 images (backward in groups of 16 + 4, dW transposed)", 20, 3, 8, 8, 4, 3, 3, 2,
              1, 4, 4);
    test_conv("conv 1x1 s1 p0, 24 -> 4 (pointwise, dW transposed)", 2, 24, 16, 16, 4, 1, 1, 1, 0, 16, 16);
    test_conv("conv 1x1 s2 p0 on 5x41 (projection, phase rows copied 8 at a time)", 2, 3, 5, 41, 2, 1, 1, 2, 0, 3, 21);
    test_conv("conv 1x1 s1 p1 (padded, not pointwise)", 2, 2, 3, 4, 3, 1, 1, 1, 1, 5, 6);
    test_conv("conv 3x3 s1 p1", 2, 2, 5, 4, 3, 3, 3, 1, 1, 5, 4);
    test_conv("conv 3x3 s2 p1", 2, 3, 7, 6, 2, 3, 3, 2, 1, 4, 3);
    /* the 3x3 stride-2 col2im builds each input row from interleaved taps:
     * odd and even widths, rows of more than one vector */
    test_conv("conv 3x3 s2 p1 on 21x19 (col2im by rows, odd width)", 2, 4, 21, 19, 8, 3, 3, 2, 1, 11, 10);
    test_conv("conv 3x3 s2 p1 on 18x20 (col2im by rows, even width)", 2, 4, 18, 20, 8, 3, 3, 2, 1, 9, 10);
    test_conv("conv 7x7 s2 p3 (stem)", 2, 3, 9, 8, 2, 7, 7, 2, 3, 5, 4);
    test_conv("conv 2x2 s3 p1 (im2col skips a phase and a row in three)", 2, 2, 7, 8, 3, 2, 2, 3, 1, 3, 3);
    /* 3x3 pad 1 with 8 channels or more: Winograd, F(4x4, 3x3) on images
     * wider than 4 pixels, else F(2x2, 3x3). Partial tiles at the bottom and
     * right edges (1, 2 and 3 rows or columns of 4), rows of tiles shorter
     * than a vector, as long as one and longer, images side by side in a
     * partial group, more than one group per thread, channels not a
     * multiple of 8 */
    test_conv("conv 3x3 s1 p1, 8 -> 8 at 40x48 (Winograd; large: direct sums only)", 2, 8, 40, 48, 8, 3, 3, 1, 1, 40,
              48);
    test_conv("conv 3x3 s1 p1, 8 -> 12 at 7x5, 5 images (Winograd side by side; on 2 threads 3 + 2)", 5, 8, 7, 5, 12,
              3, 3, 1, 1, 7, 5);
    test_conv("conv 3x3 s1 p1, 12 -> 8 at 1x19 (Winograd, one row of tiles)", 2, 12, 1, 19, 8, 3, 3, 1, 1, 1, 19);
    test_conv("conv 3x3 s1 p1, 8 -> 8 at 18x17 (Winograd, 9 tiles a row)", 2, 8, 18, 17, 8, 3, 3, 1, 1, 18, 17);
    test_conv("conv 3x3 s1 p1, 13 -> 9 at 13x32 (Winograd, 8 tiles a row: a vector's worth)", 3, 13, 13, 32, 9, 3, 3,
              1, 1, 13, 32);
    test_conv("conv 3x3 s1 p1, 9 -> 11 at 12x11 (Winograd, whole tile rows, partial tile columns)", 2, 9, 12, 11, 11,
              3, 3, 1, 1, 12, 11);
    test_conv("conv 3x3 s1 p1, 16 -> 8 at 2x2, 20 images (Winograd, one tile each, groups of 16 + 4)", 20, 16, 2, 2,
              8, 3, 3, 1, 1, 2, 2);
    test_conv("conv 3x5 s2 p2 (non-square kernel and image)", 2, 2, 6, 9, 3, 3, 5, 2, 2, 4, 5);
    test_conv("conv 5x3 s1 p0 (non-square, no padding)", 3, 2, 7, 5, 2, 5, 3, 1, 0, 3, 3);
    /* the input gradient of a stride-1 conv is a conv of dout, and dW comes
     * from the same im2col, up to 255 output channels; from 256 on, and for
     * any stride but 1, through W^T . dout and col2im */
    test_conv("conv 3x3 s1 p1, 4 -> 4 (input gradient and dW from the im2col of dout)", 2, 4, 6, 6, 4, 3, 3, 1, 1, 6,
              6);
    test_conv("conv 3x3 s1 p0 (input gradient as a conv padded 2)", 2, 3, 6, 5, 4, 3, 3, 1, 0, 4, 3);
    test_conv("conv 5x5 s1 p2 (input gradient as a conv, 25 taps)", 2, 2, 6, 7, 3, 5, 5, 1, 2, 6, 7);
    test_conv("conv 3x3 s1 p1, 2 -> 256 (input gradient through W^T . dout)", 1, 2, 4, 3, 256, 3, 3, 1, 1, 4, 3);
    /* the bf16 forward of a fixed teacher, through each of the float forward's paths */
    /*             name                                              B Cin  H  W Cout K  s  p */
    test_conv_bf16("bf16 conv 1x1 (pointwise, in place)",             2, 20, 16, 17, 12, 1, 1, 0);
    test_conv_bf16("bf16 conv 1x1 on 4x5 (images side by side)",      5, 24, 4, 5, 40, 1, 1, 0);
    test_conv_bf16("bf16 conv 3x3 s1 p1, 4 channels (im2col)",        2, 4, 9, 11, 9, 3, 1, 1);
    test_conv_bf16("bf16 conv 3x3 s2 p1 (strided im2col, side by side)", 3, 16, 9, 8, 24, 3, 2, 1);
    test_conv_bf16("bf16 conv 7x7 s2 p3 (stem)",                      2, 3, 19, 18, 17, 7, 2, 3);
    /* output rows a multiple of 16 wide: the GEMM reads the phase planes (bf16_gemm_rows) */
    test_conv_bf16("bf16 conv 7x7 s2 p3 to 8x32 (stem, B from the phase planes)", 2, 3, 16, 64, 20, 7, 2, 3);
    test_conv_bf16("bf16 conv 7x7 s2 p3 to 5x48 (runs of 48 across strips)", 3, 3, 9, 96, 9, 7, 2, 3);
    test_conv_bf16("bf16 conv 3x3 s1 p1 to 6x16, 1 channel (small stem, B from the planes)", 2, 1, 6, 16, 16, 3, 1, 1);
    test_conv_bf16("bf16 conv 3x3 s2 p1 to 7x7, 6 images (odd pixels, dW of the group in one GEMM)", 6, 12, 13, 13, 10,
                   3, 2, 1);
    test_conv_bf16("bf16 conv 3x3 s2 p1 to 4x4, 20 images (input gradients in groups of 16 + 4)", 20, 8, 8, 8, 12, 3, 2,
                   1);
    test_conv_bf16("bf16 conv 3x3 s1 p1, 8 -> 12 at 7x5 (Winograd side by side)", 5, 8, 7, 5, 12, 3, 1, 1);
    test_conv_bf16("bf16 conv 3x3 s1 p1, 16 -> 8 at 2x2 (Winograd, groups of 16 + 4)", 20, 16, 2, 2, 8, 3, 1, 1);
    test_conv_bf16("bf16 conv 3x3 s1 p1, 40 -> 33 at 24x26 (Winograd, many tiles)", 2, 40, 24, 26, 33, 3, 1, 1);
    }
    for (int threads = 1; threads <= 2; threads++) { /* a 128-px-like stem: its im2col in bands (conv_band_rows) */
        omp_set_num_threads(threads);
        test_conv("conv 7x7 s2 p3 on 96x88 (stem, im2col in bands of 5 rows; direct sums only)", 2, 3, 96, 88, 4, 7,
                  7, 2, 3, 48, 44);
    }

    /*              name                                                   A^T B^T    m     n     k  beta */
    test_blas_sgemm("blas_sgemm 16 x 4096 x 147 (column blocks)",               0, 0,   16, 4096, 147, 0.0f);
    test_blas_sgemm("blas_sgemm A^T . B, 16 x 1000 x 64 (column blocks)",       1, 0,   16, 1000,  64, 1.0f);
    test_blas_sgemm("blas_sgemm A . B^T, 64 x 16 x 1100 (inner blocks)",        0, 1,   64,   16, 1100, 1.0f);
    test_blas_sgemm("blas_sgemm A . B^T, 147 x 16 x 700 (row and inner blocks)", 0, 1, 147,   16, 700, 0.0f);
    test_blas_sgemm("blas_sgemm A . B^T, 40 x 150 x 300 (whole)",               0, 1,   40,  150, 300, 1.0f);
    test_bf16_round();
    /*             name                                          m    n    k  accumulate, A transposed */
    test_bf16_gemm("bf16 GEMM 8 x 32 x 2 (one block)",           8,  32,   2, 0, 0);
    test_bf16_gemm("bf16 GEMM 13 x 45 x 7 (edges, odd k)",       13,  45,   7, 0, 0);
    test_bf16_gemm("bf16 GEMM 3 x 5 x 1 (less than a block)",     3,   5,   1, 0, 0);
    test_bf16_gemm("bf16 GEMM 21 x 70 x 777 (k in three blocks)", 21,  70, 777, 0, 0);
    test_bf16_gemm("bf16 GEMM 17 x 33 x 400, accumulate",        17,  33, 400, 1, 0);
    test_bf16_gemm("bf16 GEMM 19 x 40 x 9, A packed from its transpose", 19, 40, 9, 1, 1);
    /*                name                                                       m    n     k  runs */
    test_bf16_gemm_nt("bf16 GEMM A . B^T 4 x 4 x 32 (one block)",                  4,   4,   32, 1);
    test_bf16_gemm_nt("bf16 GEMM A . B^T 7 x 9 x 37 (edges, odd k)",               7,   9,   37, 1);
    test_bf16_gemm_nt("bf16 GEMM A . B^T 1 x 2 x 1 (less than a block)",           1,   2,    1, 1);
    test_bf16_gemm_nt("bf16 GEMM A . B^T 10 x 13 x 2101 (k in three passes)",     10,  13, 2101, 1);
    test_bf16_gemm_nt("bf16 GEMM A . B^T 6 x 11 x 5 x 7 runs (odd runs)",          6,  11,    5, 7);
    test_bf16_gemm_nt("bf16 GEMM A . B^T 5 x 300 x 16 x 70 runs (B in 3 passes)",  5, 300,   16, 70);

    test_weight_standardize("weight standardization 4 x 27 (3x3x3)", 4, 27);
    test_weight_standardize("weight standardization 3 x 8 (1x1x8)", 3, 8);

    test_groupnorm("groupnorm groups=1 (B2 C6 HW5)", 2, 6, 5, 1, 0);
    test_groupnorm("groupnorm groups=3 (B2 C6 HW5)", 2, 6, 5, 3, 0);
    test_groupnorm("groupnorm groups=C (B2 C6 HW5)", 2, 6, 5, 6, 0);
    test_groupnorm("groupnorm groups=2 (B3 C8 HW4)", 3, 8, 4, 2, 0);
    /* sums in float partials of whole channels, up to 256 floats each: four
     * partials of 4 channels, and one channel each */
    test_groupnorm("groupnorm groups=2 (B2 C32 HW49, partials of 4 channels)", 2, 32, 49, 2, 0);
    test_groupnorm("groupnorm groups=2 (B1 C4 HW300, partials of 1 channel)", 1, 4, 300, 2, 0);
    test_groupnorm("groupnorm+relu fused groups=3 (B2 C6 HW5)", 2, 6, 5, 3, 1);
    test_groupnorm("groupnorm+relu fused groups=2 (B3 C8 HW4)", 3, 8, 4, 2, 1);

    test_relu();
    test_maxpool("maxpool 3x3 s2 p1 on 7x7 (zero padding wins on a negative plane)", 7, 7, 4, 4);
    test_maxpool("maxpool 3x3 s2 p1 on 8x6", 8, 6, 4, 3);
    test_maxpool("maxpool 3x3 s2 p1 on 16x21 (branch-free inner columns, odd width)", 16, 21, 8, 11);
    test_maxpool("maxpool 3x3 s2 p1 on 9x40 (vector blocks, the last overlapping)", 9, 40, 5, 20);
    test_maxpool("maxpool 3x3 s2 p1 on 6x67 (vector blocks, odd width)", 6, 67, 3, 34);
    test_avgpool();
    test_dense();

    test_softmax_rows();
    test_cross_entropy("cross-entropy one-hot targets", 0);
    test_cross_entropy("cross-entropy mixup targets", 1);
    test_cross_entropy("cross-entropy soft targets", 2);
    test_distill("distillation T=0.5", 0.5f);
    test_distill("distillation T=1", 1.0f);
    test_distill("distillation T=2", 2.0f);
    test_distill("distillation T=4", 4.0f);
    /* last, so that its random numbers leave the other tests' as they were */
    for (int threads = 1; threads <= 2; threads++) {
        omp_set_num_threads(threads);
        test_conv_bf16("bf16 conv 3x3 s1 p1, 8 -> 8 at 4x4, 70 images (Winograd dU of 64 + 6 images)", 70, 8, 4, 4, 8,
                       3, 1, 1);
    }
    return test_finish();
}
