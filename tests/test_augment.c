/* test_augment.c - tests for core/augment.c (DESIGN.md section 4: inception
 * crop, bilinear resize, flip, mixup), for the batches of core/data.c, and for
 * the distillation loss against PyTorch.
 *
 * How it works: crop boxes are drawn many times and held to the exact bounds
 * that rounding h and w to integers allows; resizes are compared with a
 * double-precision bilinear written here from the definition; mixup against
 * the formula; batches are built from a small in-memory dataset whose images
 * carry a unique marker pixel. The KL loss/gradient and two resizes are
 * written as .npy files to a mkdtemp directory and recomputed by
 * tests/torch_augment_check.py (PyTorch, float64); its exit status is a
 * CHECK. PyTorch is a declared test dependency: without it that case fails. */
#include <ftw.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "augment.h"
#include "data.h"
#include "formats.h"
#include "ops.h"
#include "test.h"
#include "util.h"

/* resize vs the double reference, absolute, for pixel values in [0, 1]:
 * float rounding of the source coordinate (~6e-8 * size, sizes here < 64)
 * and of the two lerps stays well below it. */
#define RESIZE_ATOL 1e-5
/* mixup and normalized pixels vs a double formula: a few float roundings */
#define MIX_ATOL 1e-6

static char tmp_dir[] = "/tmp/distilld-test-augment-XXXXXX";

/* xorshift64 for test data; state never 0 */
static uint64_t rand_state = 88172645463325252ULL;
static double rand_uniform(double lo, double hi) {
    rand_state ^= rand_state << 13;
    rand_state ^= rand_state >> 7;
    rand_state ^= rand_state << 17;
    return lo + (hi - lo) * (double)(rand_state >> 11) * 0x1.0p-53;
}
static void fill_uniform(float *x, size_t n, double lo, double hi) {
    for (size_t i = 0; i < n; i++) x[i] = (float)rand_uniform(lo, hi);
}

static float *new_floats(size_t n) { return xcalloc(n, sizeof(float)); }

/* ------------------------------------------------------------ crop boxes */

/* A box is consistent with inception_crop_box's definition when some real
 * (w_r, h_r) with |w - w_r| <= 0.5, |h - h_r| <= 0.5 (the rounding) has area
 * w_r*h_r in [area_min, area_max] * H*W and aspect w_r/h_r in [3/4, 4/3]:
 *   (w+.5)(h+.5) >= area_min*H*W,  (w-.5)(h-.5) <= area_max*H*W,
 *   (w+.5)/(h-.5) >= 3/4,          (w-.5)/(h+.5) <= 4/3.
 * (Rounded sides move area and aspect independently inside these ranges, so
 * this is the whole tolerance.) 1e-9 absorbs float area_min/max. */
static int box_area_ok(CropBox b, int height, int width, float area_min, float area_max) {
    double total = (double)height * width;
    return (b.w + 0.5) * (b.h + 0.5) >= area_min * total * (1 - 1e-9) &&
           (b.w - 0.5) * (b.h - 0.5) <= area_max * total * (1 + 1e-9);
}
static int box_aspect_ok(CropBox b) {
    return (b.w + 0.5) / (b.h - 0.5) >= 0.75 * (1 - 1e-9) && (b.w - 0.5) / (b.h + 0.5) <= 4.0 / 3.0 * (1 + 1e-9);
}
static int box_inside(CropBox b, int height, int width) {
    return b.h >= 1 && b.w >= 1 && b.y >= 0 && b.x >= 0 && b.y + b.h <= height && b.x + b.w <= width;
}

static void check_inception_boxes(int height, int width, float area_min, float area_max, int draws) {
    Rng rng = rng_derive(1234, (uint64_t)height * 10007 + width, (uint64_t)(area_min * 1000));
    int outside = 0, bad_area = 0, bad_aspect = 0, whole = 0;
    int left = 0, right = 0, top = 0, bottom = 0;
    double min_frac = 2, max_frac = -1, min_aspect = 9, max_aspect = -1, sum_log_aspect = 0;
    CropBox first_bad = {0, 0, 0, 0};
    for (int i = 0; i < draws; i++) {
        CropBox b = inception_crop_box(&rng, height, width, area_min, area_max);
        int is_whole = b.y == 0 && b.x == 0 && b.h == height && b.w == width;
        whole += is_whole;
        if (!box_inside(b, height, width)) {
            if (!outside++) first_bad = b;
            continue;
        }
        /* the documented fallback (whole image after 10 failed tries) may break the ranges */
        if (!box_area_ok(b, height, width, area_min, area_max) && !is_whole) {
            if (!bad_area++ && !outside) first_bad = b;
        }
        if (!box_aspect_ok(b) && !is_whole) {
            if (!bad_aspect++ && !outside && !bad_area) first_bad = b;
        }
        double frac = (double)b.h * b.w / ((double)height * width), aspect = (double)b.w / b.h;
        min_frac = fmin(min_frac, frac), max_frac = fmax(max_frac, frac);
        min_aspect = fmin(min_aspect, aspect), max_aspect = fmax(max_aspect, aspect);
        sum_log_aspect += log(aspect);
        left += b.x == 0, right += b.x == width - b.w, top += b.y == 0, bottom += b.y == height - b.h;
    }
    const char *fmt = "%dx%d area [%.2f, %.2f]";
    char what[96];
    snprintf(what, sizeof what, fmt, height, width, area_min, area_max);
    CHECK(outside == 0, "%s: %d boxes outside the image, e.g. y=%d x=%d h=%d w=%d", what, outside, first_bad.y,
          first_bad.x, first_bad.h, first_bad.w);
    CHECK(bad_area == 0, "%s: %d boxes with an area fraction outside the range even allowing rounding, e.g. "
          "y=%d x=%d h=%d w=%d", what, bad_area, first_bad.y, first_bad.x, first_bad.h, first_bad.w);
    CHECK(bad_aspect == 0, "%s: %d boxes with aspect outside [3/4, 4/3] even allowing rounding, e.g. h=%d w=%d",
          what, bad_aspect, first_bad.h, first_bad.w);
    /* the ranges are covered, not just respected */
    CHECK(min_frac < area_min + 0.05, "%s: smallest area fraction %.4f, want < %.4f", what, min_frac, area_min + 0.05);
    CHECK(max_frac > area_max - 0.05, "%s: largest area fraction %.4f, want > %.4f", what, max_frac, area_max - 0.05);
    CHECK(min_aspect < 0.75 + 0.05, "%s: narrowest aspect w/h %.4f, want < 0.80", what, min_aspect);
    CHECK(max_aspect > 4.0 / 3.0 - 0.05, "%s: widest aspect w/h %.4f, want > 1.283", what, max_aspect);
    CHECK(left > 0 && right > 0 && top > 0 && bottom > 0,
          "%s: positions do not reach every edge (x=0: %d, x=W-w: %d, y=0: %d, y=H-h: %d)", what, left, right, top,
          bottom);
    /* whole-image boxes: the fallback or a full-size draw, never the majority */
    CHECK(whole < draws / 4, "%s: %d of %d boxes are the whole image", what, whole, draws);
    if (height == width) /* log-uniform aspect is symmetric on a square image */
        CHECK(fabs(sum_log_aspect / draws) < 0.01, "%s: mean log(w/h) %.4f, want ~0", what, sum_log_aspect / draws);
}

static void test_inception_crop(void) {
    TEST_CASE("inception crop boxes: inside, area and aspect within range (up to rounding), ranges covered");
    const int sizes[][2] = {{28, 28}, {32, 32}, {160, 120}, {120, 160}, {500, 375}, {375, 500}};
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        check_inception_boxes(sizes[s][0], sizes[s][1], 0.05f, 1.0f, 20000);
        check_inception_boxes(sizes[s][0], sizes[s][1], 0.25f, 1.0f, 20000);
    }
    check_inception_boxes(64, 64, 0.3f, 0.5f, 20000);

    /* the same Rng state gives the same boxes */
    Rng a = rng_derive(77, 4, 9), b = rng_derive(77, 4, 9), c = rng_derive(78, 4, 9);
    int same = 1, differs = 0;
    for (int i = 0; i < 1000; i++) {
        CropBox x = inception_crop_box(&a, 160, 120, 0.05f, 1.0f), y = inception_crop_box(&b, 160, 120, 0.05f, 1.0f);
        CropBox z = inception_crop_box(&c, 160, 120, 0.05f, 1.0f);
        same &= x.y == y.y && x.x == y.x && x.h == y.h && x.w == y.w;
        differs |= x.y != z.y || x.x != z.x || x.h != z.h || x.w != z.w;
    }
    CHECK(same, "the same seed gave different boxes");
    CHECK(differs, "another seed gave the very same 1000 boxes");

    /* an impossible request falls back to the whole image: a 10x200 image has
     * no box of aspect <= 4/3 with half its area */
    Rng r = rng_derive(5, 0, 0);
    for (int i = 0; i < 100; i++) {
        CropBox box = inception_crop_box(&r, 10, 200, 0.5f, 1.0f);
        CHECK(box.y == 0 && box.x == 0 && box.h == 10 && box.w == 200,
              "fallback: got y=%d x=%d h=%d w=%d, want the whole 10x200 image", box.y, box.x, box.h, box.w);
        if (!(box.y == 0 && box.x == 0 && box.h == 10 && box.w == 200)) break;
    }
}

static void test_central_crop(void) {
    TEST_CASE("central crop box values");
    struct { int h, w, ch, cw, y, x, oh, ow; } cases[] = {
        {160, 160, 128, 128, 16, 16, 128, 128},
        {28, 28, 24, 24, 2, 2, 24, 24},
        {375, 500, 224, 224, 75, 138, 224, 224},
        {29, 31, 28, 28, 0, 1, 28, 28},  /* odd margins round down */
        {10, 12, 10, 12, 0, 0, 10, 12},  /* crop = image */
        {20, 8, 16, 16, 2, 0, 16, 8},    /* larger than the image: clamped */
        {146, 182, 128, 128, 9, 27, 128, 128},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CropBox b = central_crop_box(cases[i].h, cases[i].w, cases[i].ch, cases[i].cw);
        CHECK(b.y == cases[i].y && b.x == cases[i].x && b.h == cases[i].oh && b.w == cases[i].ow,
              "%dx%d crop %dx%d: got y=%d x=%d h=%d w=%d, want y=%d x=%d h=%d w=%d", cases[i].h, cases[i].w,
              cases[i].ch, cases[i].cw, b.y, b.x, b.h, b.w, cases[i].y, cases[i].x, cases[i].oh, cases[i].ow);
    }
}

/* ------------------------------------------------------------ resize */

/* Bilinear from the definition, in double: output pixel i samples source
 * coordinate (i + 0.5) * box.h / dh - 0.5 (clamped at 0) of the box; the
 * value is the weighted sum of the four neighbours floor(.) and floor(.)+1,
 * both clamped to the box's last row/column. */
static void resize_reference(double *dst, int dh, int dw, const float *src, int channels, int sh, int sw, CropBox box) {
    for (int c = 0; c < channels; c++)
        for (int i = 0; i < dh; i++)
            for (int j = 0; j < dw; j++) {
                double fy = fmax((i + 0.5) * box.h / dh - 0.5, 0.0), fx = fmax((j + 0.5) * box.w / dw - 0.5, 0.0);
                int y0 = (int)floor(fy), x0 = (int)floor(fx);
                double ly = fy - y0, lx = fx - x0;
                int ys[2] = {y0 < box.h - 1 ? y0 : box.h - 1, y0 + 1 < box.h - 1 ? y0 + 1 : box.h - 1};
                int xs[2] = {x0 < box.w - 1 ? x0 : box.w - 1, x0 + 1 < box.w - 1 ? x0 + 1 : box.w - 1};
                double wy[2] = {1 - ly, ly}, wx[2] = {1 - lx, lx}, v = 0;
                for (int a = 0; a < 2; a++)
                    for (int b = 0; b < 2; b++)
                        v += wy[a] * wx[b] * src[((size_t)c * sh + box.y + ys[a]) * sw + box.x + xs[b]];
                dst[((size_t)c * dh + i) * dw + j] = v;
            }
}

static void check_resize(const char *what, int channels, int sh, int sw, CropBox box, int dh, int dw) {
    size_t n_src = (size_t)channels * sh * sw, n_dst = (size_t)channels * dh * dw;
    float *src = new_floats(n_src), *got = new_floats(n_dst);
    double *want = xcalloc(n_dst, sizeof(double));
    fill_uniform(src, n_src, 0.0, 1.0);
    for (size_t i = 0; i < n_dst; i++) got[i] = NAN;
    resize_bilinear(got, dh, dw, src, channels, sh, sw, box);
    resize_reference(want, dh, dw, src, channels, sh, sw, box);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n_dst; i++)
        if (!(fabs(got[i] - want[i]) <= RESIZE_ATOL)) {
            if (!bad) first = i;
            bad++;
        }
    CHECK(bad == 0, "%s: %zu of %zu values off by more than %g; first [%zu] got %.9g want %.9g", what, bad, n_dst,
          RESIZE_ATOL, first, bad ? got[first] : 0.0, bad ? want[first] : 0.0);
    free(src), free(got), free(want);
}

static void test_resize(void) {
    TEST_CASE("bilinear resize against a double reference (half-pixel centres, edges clamped)");
    check_resize("up 7x9 -> 20x23", 1, 7, 9, (CropBox){0, 0, 7, 9}, 20, 23);
    check_resize("up 2x2 -> 8x8", 1, 2, 2, (CropBox){0, 0, 2, 2}, 8, 8);
    check_resize("down 40x36 -> 7x11", 1, 40, 36, (CropBox){0, 0, 40, 36}, 7, 11);
    check_resize("down 37x29 -> 3x2", 1, 37, 29, (CropBox){0, 0, 37, 29}, 3, 2);
    check_resize("non-square 12x30 -> 16x16", 1, 12, 30, (CropBox){0, 0, 12, 30}, 16, 16);
    check_resize("crop box (5,7,11,13) of 24x31 -> 16x16", 1, 24, 31, (CropBox){5, 7, 11, 13}, 16, 16);
    check_resize("crop box (3,2,20,9) of 24x31 -> 6x5", 1, 24, 31, (CropBox){3, 2, 20, 9}, 6, 5);
    check_resize("crop box at the bottom-right corner", 1, 24, 31, (CropBox){14, 19, 10, 12}, 13, 17);
    check_resize("3 channels, crop box, up", 3, 19, 23, (CropBox){2, 4, 12, 15}, 32, 32);
    check_resize("3 channels, whole image, down", 3, 50, 40, (CropBox){0, 0, 50, 40}, 13, 13);
    check_resize("1x1 box -> 4x4 (constant)", 2, 5, 5, (CropBox){2, 3, 1, 1}, 4, 4);
    check_resize("one row -> 3x9", 1, 6, 9, (CropBox){4, 0, 1, 9}, 3, 9);
    check_resize("2 channels, wider than a chunk of columns: 9x140 -> 5x600", 2, 9, 140, (CropBox){1, 3, 8, 131}, 5, 600);

    /* box size == output size: an exact copy of the box */
    float src[2 * 10 * 12], out[2 * 5 * 6], want[2 * 5 * 6];
    fill_uniform(src, 2 * 10 * 12, -3.0, 3.0);
    float whole[2 * 10 * 12];
    resize_bilinear(whole, 10, 12, src, 2, 10, 12, (CropBox){0, 0, 10, 12});
    CHECK(memcmp(whole, src, sizeof src) == 0, "whole image to its own size is not an exact copy");
    resize_bilinear(out, 5, 6, src, 2, 10, 12, (CropBox){3, 4, 5, 6});
    for (int c = 0; c < 2; c++)
        for (int y = 0; y < 5; y++)
            for (int x = 0; x < 6; x++) want[(c * 5 + y) * 6 + x] = src[(c * 10 + 3 + y) * 12 + 4 + x];
    CHECK(memcmp(out, want, sizeof out) == 0, "box (3,4,5,6) to 5x6 is not an exact copy of the box");
}

/* ------------------------------------------------------------ flip */

static void test_flip(void) {
    TEST_CASE("horizontal flip reverses every row of every channel; twice is the identity");
    const int widths[] = {1, 2, 7, 8};
    for (size_t k = 0; k < sizeof widths / sizeof widths[0]; k++) {
        const int c = 3, h = 5, w = widths[k];
        size_t n = (size_t)c * h * w;
        float *img = new_floats(n), *orig = new_floats(n);
        fill_uniform(orig, n, -1.0, 1.0);
        memcpy(img, orig, n * sizeof(float));
        flip_horizontal(img, c, h, w);
        int reversed = 1;
        for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    reversed &= img[((size_t)ch * h + y) * w + x] == orig[((size_t)ch * h + y) * w + (w - 1 - x)];
        CHECK(reversed, "width %d: a flipped row is not the reversed row", w);
        flip_horizontal(img, c, h, w);
        CHECK(memcmp(img, orig, n * sizeof(float)) == 0, "width %d: flipping twice is not the identity", w);
        free(img), free(orig);
    }
}

/* ------------------------------------------------------------ mixup */

static void test_mixup_coefficient(void) {
    TEST_CASE("mixup coefficient: in [0.5, 1), uniform there (mean 0.75)");
    Rng rng = rng_derive(11, 5, 0);
    const int n = 200000;
    int outside = 0, below_mid = 0;
    double sum = 0, lo = 2, hi = -1;
    for (int i = 0; i < n; i++) {
        float a = mixup_coefficient(&rng);
        outside += !(a >= 0.5f && a < 1.0f);
        below_mid += a < 0.75f;
        sum += a, lo = fmin(lo, a), hi = fmax(hi, a);
    }
    CHECK(outside == 0, "%d of %d coefficients outside [0.5, 1)", outside, n);
    /* standard error of the mean: 0.144/sqrt(n) = 3.2e-4 */
    CHECK(fabs(sum / n - 0.75) < 0.003, "mean %.5f, want 0.75", sum / n);
    /* U(0.5, 1): half below 0.75 (se 0.0011) */
    CHECK(fabs((double)below_mid / n - 0.5) < 0.01, "%.4f below 0.75, want 0.5", (double)below_mid / n);
    CHECK(lo < 0.501 && hi > 0.999, "range seen [%.4f, %.4f], want ~[0.5, 1)", lo, hi);
}

static void check_mixup(int batch, size_t image_floats, int classes, float a) {
    size_t n_img = (size_t)batch * image_floats, n_t = (size_t)batch * classes;
    float *x = new_floats(n_img), *x0 = new_floats(n_img), *t = new_floats(n_t), *t0 = new_floats(n_t);
    /* tmp exactly as large as documented, so ASan sees an overrun */
    float *tmp = new_floats(image_floats > (size_t)classes ? image_floats : (size_t)classes);
    fill_uniform(x0, n_img, -1.0, 1.0);
    for (int i = 0; i < batch; i++) t0[(size_t)i * classes + (i * 3 + 1) % classes] = 1.0f; /* one-hot */
    memcpy(x, x0, n_img * sizeof(float));
    memcpy(t, t0, n_t * sizeof(float));
    mixup_batch(x, image_floats, t, classes, batch, a, tmp);
    size_t bad_x = 0, bad_t = 0, bad_sum = 0, first_x = 0, first_t = 0;
    for (int i = 0; i < batch; i++) {
        int p = (i - 1 + batch) % batch; /* numpy roll by one: image 0 mixes with the last */
        for (size_t k = 0; k < image_floats; k++) {
            double want = (double)a * x0[(size_t)i * image_floats + k] + (1.0 - a) * x0[(size_t)p * image_floats + k];
            if (batch == 1) want = x0[k];
            if (!(fabs(x[(size_t)i * image_floats + k] - want) <= MIX_ATOL)) {
                if (!bad_x++) first_x = (size_t)i * image_floats + k;
            }
        }
        double row = 0;
        for (int c = 0; c < classes; c++) {
            double want = (double)a * t0[(size_t)i * classes + c] + (1.0 - a) * t0[(size_t)p * classes + c];
            if (batch == 1) want = t0[c];
            if (!(fabs(t[(size_t)i * classes + c] - want) <= MIX_ATOL)) {
                if (!bad_t++) first_t = (size_t)i * classes + c;
            }
            row += t[(size_t)i * classes + c];
        }
        bad_sum += !(fabs(row - 1.0) <= MIX_ATOL);
    }
    CHECK(bad_x == 0, "B=%d a=%g: %zu image values differ from a*x_i + (1-a)*x_(i-1 mod B); first [%zu] (image %zu)",
          batch, a, bad_x, first_x, first_x / image_floats);
    CHECK(bad_t == 0, "B=%d a=%g: %zu target values differ from the formula; first [%zu] (row %zu)", batch, a, bad_t,
          first_t, first_t / classes);
    CHECK(bad_sum == 0, "B=%d a=%g: %zu target rows do not sum to 1", batch, a, bad_sum);
    if (batch == 1) {
        CHECK(memcmp(x, x0, n_img * sizeof(float)) == 0, "batch of 1: images changed");
        CHECK(memcmp(t, t0, n_t * sizeof(float)) == 0, "batch of 1: targets changed");
    }
    /* targets may be NULL: images mixed the same way */
    float *y = new_floats(n_img);
    memcpy(y, x0, n_img * sizeof(float));
    mixup_batch(y, image_floats, NULL, classes, batch, a, tmp);
    CHECK(memcmp(y, x, n_img * sizeof(float)) == 0, "B=%d: NULL targets changes the mixed images", batch);
    free(x), free(x0), free(t), free(t0), free(tmp), free(y);
}

static void test_mixup_batch(void) {
    TEST_CASE("mixup batch: x_i = a x_i + (1-a) x_(i-1 mod B), targets too, rows sum to 1");
    check_mixup(8, 3 * 5 * 5, 10, 0.7f);
    check_mixup(5, 12, 3, 0.5f);
    check_mixup(2, 16, 4, 0.9375f);
    check_mixup(3, 2, 10, 0.61f); /* more classes than image floats: tmp sized by classes */
    check_mixup(6, 7, 5, 1.0f);
    check_mixup(1, 20, 4, 0.6f);
}

/* ------------------------------------------------------------ batches (data.h) */

enum { DN = 50, DK = 5, DS = 8 };

/* Image i: pixel (0,0) = i*53 mod 256 is a unique marker (53 is odd), the
 * corner (S-1,S-1) is 255 for even i and 0 for odd i, the rest a pattern. */
static uint8_t pixel_value(int i, int c, int y, int x, int h, int w) {
    if (y == 0 && x == 0) return (uint8_t)((i * 53 + c * 101) % 256);
    if (y == h - 1 && x == w - 1) return i % 2 ? 0 : 255;
    return (uint8_t)((i * 17 + c * 29 + y * 31 + x * 7 + y * x * (i % 7)) % 256);
}

static void make_dataset(Dataset *ds, int n, int c, int h, int w, int classes, int salt) {
    memset(ds, 0, sizeof *ds);
    ds->n = n, ds->c = c, ds->h = h, ds->w = w, ds->num_classes = classes;
    ds->pixels = xcalloc((size_t)n * c * h * w, 1);
    ds->labels = xcalloc((size_t)n, sizeof(int32_t));
    for (int i = 0; i < n; i++) {
        ds->labels[i] = (i + salt) % classes;
        for (int ch = 0; ch < c; ch++)
            for (int y = 0; y < h; y++)
                for (int x = 0; x < w; x++)
                    ds->pixels[(((size_t)i * c + ch) * h + y) * w + x] = pixel_value(i + salt, ch, y, x, h, w);
    }
}

/* JobData by hand: `train` (and `test`) shared, train_index = all */
static void make_jobdata(JobData *d, const Dataset *train, const Dataset *test) {
    memset(d, 0, sizeof *d);
    d->train = *train;
    if (test) d->test = *test;
    d->test_count = test ? test->n : 0;
    d->train_count = train->n;
    d->train_index = xcalloc((size_t)train->n, sizeof(int32_t));
    for (int i = 0; i < train->n; i++) d->train_index[i] = i;
    d->perm = NULL;
    d->perm_epoch = -1;
}
static void free_jobdata(JobData *d) { /* the datasets belong to the caller */
    free(d->train_index);
    free(d->val_index);
    free(d->perm);
    memset(d, 0, sizeof *d);
}

static JobSpec make_spec(int batch, int crop, int flip, int mixup, uint64_t seed) {
    JobSpec s;
    memset(&s, 0, sizeof s);
    s.kind = JOB_DISTILL;
    s.model.in_channels = 1, s.model.num_classes = DK, s.model.image_size = DS;
    s.model.norm_mean[0] = 0.5f, s.model.norm_std[0] = 0.5f;
    s.batch_size = batch;
    s.crop = crop, s.flip = flip, s.mixup = mixup;
    s.crop_area_min = 0.05f, s.crop_area_max = 1.0f;
    s.eval_resize = DS, s.eval_crop = DS;
    s.seed = seed;
    return s;
}

typedef struct {
    float *images, *targets;
    int32_t *labels;
    int batch;
} Batch;

#define GUARD 4096
#define GUARD_VALUE -12345.0f
static Batch train_batch(JobData *d, const JobSpec *s, long step) {
    Batch b = {new_floats((size_t)s->batch_size * DS * DS), new_floats((size_t)s->batch_size * DK),
               xcalloc((size_t)s->batch_size, sizeof(int32_t)), s->batch_size};
    size_t n = data_scratch_size(d, s);
    float *scratch = new_floats(n + GUARD);
    for (size_t i = n; i < n + GUARD; i++) scratch[i] = GUARD_VALUE;
    data_train_batch(d, s, step, b.images, b.targets, b.labels, scratch);
    size_t touched = 0;
    for (size_t i = n; i < n + GUARD; i++) touched += scratch[i] != GUARD_VALUE;
    CHECK(touched == 0, "data_train_batch wrote %zu floats past data_scratch_size (%zu)", touched, n);
    free(scratch);
    return b;
}
static void free_batch(Batch *b) { free(b->images), free(b->targets), free(b->labels); }
static int batch_equal(const Batch *a, const Batch *b) {
    return memcmp(a->images, b->images, sizeof(float) * a->batch * DS * DS) == 0 &&
           memcmp(a->targets, b->targets, sizeof(float) * a->batch * DK) == 0 &&
           memcmp(a->labels, b->labels, sizeof(int32_t) * a->batch) == 0;
}

/* which image of `ds` an unaugmented, normalized output is (by the marker) */
static int image_of(const Dataset *ds, const float *img) {
    for (int i = 0; i < ds->n; i++)
        if (fabsf((ds->pixels[(size_t)i * DS * DS] / 255.0f - 0.5f) / 0.5f - img[0]) < 1e-4f) return i;
    return -1;
}
/* max |img - normalized pixels of image i| */
static double plain_error(const Dataset *ds, int i, const float *img) {
    double err = 0;
    for (int p = 0; p < DS * DS; p++)
        err = fmax(err, fabs(img[p] - (ds->pixels[(size_t)i * DS * DS + p] / 255.0 - 0.5) / 0.5));
    return err;
}

/* 0 if a DS x DS image is `plain`, 1 if it is plain's mirror image, -1 if neither. */
static int flip_kind(const float *img, const float *plain) {
    float mirror[DS * DS];
    memcpy(mirror, plain, sizeof mirror);
    flip_horizontal(mirror, 1, DS, DS);
    if (memcmp(img, plain, sizeof mirror) == 0) return 0;
    return memcmp(img, mirror, sizeof mirror) == 0 ? 1 : -1;
}

static void test_batches_deterministic(const Dataset *ds) {
    TEST_CASE("training batches are a pure function of (seed, step)");
    JobSpec s = make_spec(8, CROP_INCEPTION, 1, 1, 3);
    JobData d1, d2;
    make_jobdata(&d1, ds, NULL);
    make_jobdata(&d2, ds, NULL);
    Batch a5 = train_batch(&d1, &s, 5), a2 = train_batch(&d1, &s, 2), b5 = train_batch(&d1, &s, 5);
    CHECK(batch_equal(&a5, &b5), "step 5 twice (with step 2 between) differs");
    Batch a13 = train_batch(&d1, &s, 13); /* epoch 2: another permutation in the memo */
    Batch c5 = train_batch(&d1, &s, 5);
    CHECK(batch_equal(&a5, &c5), "step 5 after step 13 (another epoch) differs");
    Batch a6 = train_batch(&d1, &s, 6); /* positions 48..55 straddle epochs 0 and 1 */
    /* a fresh JobData, other order */
    Batch f6 = train_batch(&d2, &s, 6), f13 = train_batch(&d2, &s, 13), f2 = train_batch(&d2, &s, 2),
          f5 = train_batch(&d2, &s, 5);
    CHECK(batch_equal(&a2, &f2), "step 2 differs in a fresh JobData");
    CHECK(batch_equal(&a5, &f5), "step 5 differs in a fresh JobData");
    CHECK(batch_equal(&a6, &f6), "step 6 differs in a fresh JobData");
    CHECK(batch_equal(&a13, &f13), "step 13 differs in a fresh JobData");
    CHECK(!batch_equal(&a5, &a6), "steps 5 and 6 are the same batch");
    CHECK(memcmp(a5.images, a6.images, sizeof(float) * 8 * DS * DS) != 0, "steps 5 and 6 have the same images");
    JobSpec other = s;
    other.seed = 4;
    JobData d3;
    make_jobdata(&d3, ds, NULL);
    Batch o5 = train_batch(&d3, &other, 5);
    CHECK(memcmp(a5.images, o5.images, sizeof(float) * 8 * DS * DS) != 0, "seeds 3 and 4 give the same images");
    CHECK(memcmp(a5.labels, o5.labels, sizeof(int32_t) * 8) != 0, "seeds 3 and 4 give the same order");
    /* targets: rows sum to 1, labels in range */
    int bad_rows = 0, bad_labels = 0;
    for (int j = 0; j < 8; j++) {
        double sum = 0;
        for (int k = 0; k < DK; k++) sum += a5.targets[j * DK + k];
        bad_rows += !(fabs(sum - 1) < MIX_ATOL);
        bad_labels += !(a5.labels[j] >= 0 && a5.labels[j] < DK);
    }
    CHECK(bad_rows == 0 && bad_labels == 0, "%d target rows do not sum to 1, %d labels out of range", bad_rows,
          bad_labels);
    /* the padded random crop too (train_batch also checks it stays in its scratch) */
    JobSpec random = make_spec(8, CROP_RANDOM, 1, 1, 3);
    Batch r5 = train_batch(&d1, &random, 5), r5b = train_batch(&d2, &random, 5);
    CHECK(batch_equal(&r5, &r5b), "random crop: step 5 differs between two JobData");
    Batch *all[] = {&a5, &a2, &b5, &a13, &c5, &a6, &f6, &f13, &f2, &f5, &o5, &r5, &r5b};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) free_batch(all[i]);
    free_jobdata(&d1), free_jobdata(&d2), free_jobdata(&d3);
}

static void test_batches_epochs(const Dataset *ds) {
    TEST_CASE("an epoch shows every training image once; crop none = plain normalized image");
    /* B = 10 divides n = 50: steps 5e .. 5e+4 are epoch e */
    JobSpec s = make_spec(10, CROP_NONE, 0, 0, 3);
    JobData d;
    make_jobdata(&d, ds, NULL);
    int order[3][DN];
    int unknown = 0, not_plain = 0, wrong_label = 0, wrong_target = 0;
    for (int epoch = 0; epoch < 3; epoch++) {
        int seen[DN] = {0};
        for (int k = 0; k < 5; k++) {
            Batch b = train_batch(&d, &s, epoch * 5 + k);
            for (int j = 0; j < 10; j++) {
                const float *img = b.images + (size_t)j * DS * DS;
                int i = image_of(ds, img);
                order[epoch][k * 10 + j] = i;
                if (i < 0) {
                    unknown++;
                    continue;
                }
                seen[i]++;
                not_plain += !(plain_error(ds, i, img) <= MIX_ATOL);
                wrong_label += b.labels[j] != ds->labels[i];
                for (int c = 0; c < DK; c++) wrong_target += b.targets[j * DK + c] != (c == ds->labels[i] ? 1.0f : 0.0f);
            }
            free_batch(&b);
        }
        int missing = 0, repeated = 0;
        for (int i = 0; i < DN; i++) missing += seen[i] == 0, repeated += seen[i] > 1;
        CHECK(missing == 0 && repeated == 0, "epoch %d: %d images missing, %d repeated", epoch, missing, repeated);
    }
    CHECK(unknown == 0, "%d output images are no training image", unknown);
    CHECK(not_plain == 0, "%d images differ from the normalized source by more than %g", not_plain, MIX_ATOL);
    CHECK(wrong_label == 0, "%d labels are not the image's label", wrong_label);
    CHECK(wrong_target == 0, "%d target values are not the one-hot label", wrong_target);
    CHECK(memcmp(order[0], order[1], sizeof order[0]) != 0 && memcmp(order[1], order[2], sizeof order[0]) != 0,
          "consecutive epochs have the same order");
    int identity = 1;
    for (int i = 0; i < DN; i++) identity &= order[0][i] == i;
    CHECK(!identity, "epoch 0 is not shuffled");

    /* B = 8 does not divide 50: each run of 50 positions is still a permutation */
    JobSpec s8 = make_spec(8, CROP_NONE, 0, 0, 3);
    JobData d8;
    make_jobdata(&d8, ds, NULL);
    int stream[400], bad_epochs = 0;
    for (int k = 0; k < 50; k++) {
        Batch b = train_batch(&d8, &s8, k);
        for (int j = 0; j < 8; j++) stream[k * 8 + j] = image_of(ds, b.images + (size_t)j * DS * DS);
        free_batch(&b);
    }
    for (int e = 0; e < 8; e++) {
        int seen[DN] = {0}, ok = 1;
        for (int p = 0; p < DN; p++) {
            int i = stream[e * DN + p];
            if (i < 0 || seen[i]++) ok = 0;
        }
        bad_epochs += !ok;
    }
    CHECK(bad_epochs == 0, "B=8: %d of 8 epochs are not a permutation of the images", bad_epochs);

    /* normalization with mean = std = 0.5: 0 -> -1 and 255 -> +1 (corner pixel) */
    Batch b = train_batch(&d, &s, 0);
    int seen_lo = 0, seen_hi = 0, bad_ends = 0;
    for (int j = 0; j < 10; j++) {
        float v = b.images[(size_t)j * DS * DS + DS * DS - 1];
        int i = image_of(ds, b.images + (size_t)j * DS * DS);
        if (i < 0) continue;
        if (i % 2) seen_lo++, bad_ends += !(fabsf(v + 1.0f) <= 1e-6f);
        else seen_hi++, bad_ends += !(fabsf(v - 1.0f) <= 1e-6f);
    }
    CHECK(seen_lo > 0 && seen_hi > 0 && bad_ends == 0, "normalization: %d of %d+%d corner pixels not -1 / +1",
          bad_ends, seen_lo, seen_hi);
    free_batch(&b);
    free_jobdata(&d), free_jobdata(&d8);
}

static void test_batches_augmented(const Dataset *ds) {
    TEST_CASE("batch augmentation: order independent of it, flip mirrors, mixup as mixup_batch");
    JobData d;
    make_jobdata(&d, ds, NULL);
    JobSpec plain = make_spec(8, CROP_NONE, 0, 0, 9), flip = make_spec(8, CROP_NONE, 1, 0, 9),
            crop = make_spec(8, CROP_INCEPTION, 0, 0, 9), mixed = make_spec(8, CROP_INCEPTION, 0, 1, 9);
    int flipped = 0, unflipped = 0, neither = 0, cropped = 0, out_of_range = 0, order = 0, mix_bad = 0;
    float coefficient[12];
    for (long k = 0; k < 12; k++) {
        Batch p = train_batch(&d, &plain, k), f = train_batch(&d, &flip, k), c = train_batch(&d, &crop, k),
              m = train_batch(&d, &mixed, k);
        order += memcmp(p.labels, f.labels, sizeof(int32_t) * 8) != 0 || memcmp(p.labels, c.labels, sizeof(int32_t) * 8) != 0 ||
                 memcmp(p.labels, m.labels, sizeof(int32_t) * 8) != 0;
        for (int j = 0; j < 8; j++) {
            float *pi = p.images + (size_t)j * DS * DS, *fi = f.images + (size_t)j * DS * DS;
            int kind = flip_kind(fi, pi);
            unflipped += kind == 0, flipped += kind == 1, neither += kind < 0;
            float *ci = c.images + (size_t)j * DS * DS;
            cropped += memcmp(ci, pi, sizeof(float) * DS * DS) != 0;
            for (int q = 0; q < DS * DS; q++) out_of_range += !(ci[q] >= -1.0f - 1e-6f && ci[q] <= 1.0f + 1e-6f);
        }
        /* mixup: same crops as without it (their randomness is separate), mixed
         * with the coefficient read off a target row whose partner has another label */
        float a = NAN;
        for (int j = 0; j < 8; j++)
            if (m.labels[j] != m.labels[(j + 7) % 8]) {
                a = m.targets[j * DK + m.labels[j]];
                break;
            }
        coefficient[k] = a;
        if (!(a >= 0.5f && a <= 1.0f)) {
            mix_bad++;
        } else {
            float *x = c.images, *t = c.targets, tmp[DS * DS];
            mixup_batch(x, DS * DS, t, DK, 8, a, tmp);
            for (int q = 0; q < 8 * DS * DS; q++) mix_bad += !(fabsf(m.images[q] - x[q]) <= MIX_ATOL);
            for (int q = 0; q < 8 * DK; q++) mix_bad += !(fabsf(m.targets[q] - t[q]) <= MIX_ATOL);
        }
        free_batch(&p), free_batch(&f), free_batch(&c), free_batch(&m);
    }
    CHECK(order == 0, "%d of 12 steps change image order when augmentation changes", order);
    CHECK(neither == 0, "flip: %d images are neither the plain image nor its mirror", neither);
    CHECK(flipped > 20 && unflipped > 20, "flip: %d flipped, %d not, of 96 (want about half each)", flipped, unflipped);
    CHECK(cropped > 80, "inception crop: only %d of 96 images differ from the plain image", cropped);
    CHECK(out_of_range == 0, "inception crop: %d normalized values outside [-1, 1]", out_of_range);
    CHECK(mix_bad == 0, "mixup: %d values differ from mixup_batch of the unmixed batch (or no coefficient)", mix_bad);
    int all_same = 1;
    for (int k = 1; k < 12; k++) all_same &= coefficient[k] == coefficient[0];
    CHECK(!all_same, "mixup: every step has the same coefficient %g", coefficient[0]);
    free_jobdata(&d);
}

/* data_eval_batch (or data_augmented_eval_batch) with a guarded scratch of
 * data_scratch_size, as train.c passes it; floats written past it are added
 * to *overrun. */
static int eval_batch(const JobData *d, const JobSpec *s, int split, int start, int count, float *images,
                      int32_t *labels, int augmented, size_t *overrun) {
    size_t n = data_scratch_size(d, s);
    float *scratch = new_floats(n + GUARD);
    for (size_t i = n; i < n + GUARD; i++) scratch[i] = GUARD_VALUE;
    int got = (augmented ? data_augmented_eval_batch : data_eval_batch)(d, s, split, start, count, images, labels,
                                                                         scratch);
    for (size_t i = n; i < n + GUARD; i++) *overrun += scratch[i] != GUARD_VALUE;
    free(scratch);
    return got;
}

static void test_eval_batches(const Dataset *train, const Dataset *test) {
    TEST_CASE("eval batches: deterministic, plain normalized image at full size, resize + central crop");
    JobData d;
    make_jobdata(&d, train, test);
    d.val_count = 3;
    d.val_index = xcalloc(3, sizeof(int32_t));
    d.val_index[0] = 3, d.val_index[1] = 7, d.val_index[2] = 11;
    JobSpec s = make_spec(8, CROP_INCEPTION, 1, 1, 3);
    float a[8 * DS * DS], b[8 * DS * DS];
    int32_t la[8], lb[8];
    size_t overrun = 0;
    CHECK(data_split_size(&d, SPLIT_TEST) == test->n && data_split_size(&d, SPLIT_VAL) == 3, "split sizes %d, %d",
          data_split_size(&d, SPLIT_TEST), data_split_size(&d, SPLIT_VAL));
    int n1 = eval_batch(&d, &s, SPLIT_TEST, 8, 8, a, la, 0, &overrun);
    int n2 = eval_batch(&d, &s, SPLIT_TEST, 8, 8, b, lb, 0, &overrun);
    CHECK(n1 == 8 && n2 == 8, "returned %d, %d images, want 8", n1, n2);
    CHECK(memcmp(a, b, sizeof a) == 0 && memcmp(la, lb, sizeof la) == 0, "the same eval batch twice differs");
    int bad = 0;
    for (int j = 0; j < 8; j++) {
        bad += !(plain_error(test, 8 + j, a + (size_t)j * DS * DS) <= MIX_ATOL);
        bad += la[j] != test->labels[8 + j];
    }
    CHECK(bad == 0, "test images 8..15: %d images or labels differ from the plain normalized ones", bad);
    int tail = eval_batch(&d, &s, SPLIT_TEST, test->n - 3, 8, a, la, 0, &overrun);
    CHECK(tail == 3, "3 images left: returned %d", tail);
    int nv = eval_batch(&d, &s, SPLIT_VAL, 0, 8, a, la, 0, &overrun);
    bad = 0;
    for (int j = 0; j < 3; j++) {
        bad += !(plain_error(train, d.val_index[j], a + (size_t)j * DS * DS) <= MIX_ATOL);
        bad += la[j] != train->labels[d.val_index[j]];
    }
    CHECK(nv == 3 && bad == 0, "validation: returned %d, %d images or labels are not train[3, 7, 11]", nv, bad);

    /* eval_resize 12: resize 8 -> 12, then the central 8x8 (box 2,2) */
    s.eval_resize = 12;
    eval_batch(&d, &s, SPLIT_TEST, 0, 2, a, la, 0, &overrun);
    bad = 0;
    for (int j = 0; j < 2; j++) {
        float src[DS * DS], mid[12 * 12];
        double mid_ref[12 * 12];
        for (int p = 0; p < DS * DS; p++) src[p] = test->pixels[(size_t)j * DS * DS + p] / 255.0f;
        resize_reference(mid_ref, 12, 12, src, 1, DS, DS, (CropBox){0, 0, DS, DS});
        for (int p = 0; p < 144; p++) mid[p] = (float)mid_ref[p];
        for (int y = 0; y < DS; y++)
            for (int x = 0; x < DS; x++) {
                double want = (mid[(y + 2) * 12 + x + 2] - 0.5) / 0.5;
                bad += !(fabs(a[(size_t)j * DS * DS + y * DS + x] - want) <= 2 * RESIZE_ATOL);
            }
    }
    CHECK(bad == 0, "eval_resize 12, crop 8: %d values differ from resize + central crop", bad);
    CHECK(overrun == 0, "eval_resize 12 on 8x8 images: wrote %zu floats past data_scratch_size", overrun);
    free_jobdata(&d);
}

static void test_augmented_eval_batches(const Dataset *train, const Dataset *test) {
    TEST_CASE("augmented eval batches: cropped and flipped as training images, never mixed, image i's draw its own");
    JobData d;
    make_jobdata(&d, train, test);
    enum { N = 16 };
    JobSpec plain = make_spec(8, CROP_NONE, 0, 1, 5), flip = make_spec(8, CROP_NONE, 1, 1, 5),
            crop = make_spec(8, CROP_INCEPTION, 1, 1, 5), unmixed = make_spec(8, CROP_INCEPTION, 1, 0, 5),
            reseeded = make_spec(8, CROP_INCEPTION, 1, 1, 6);
    static float p[N * DS * DS], f[N * DS * DS], c[N * DS * DS], u[N * DS * DS], r[N * DS * DS], again[N * DS * DS];
    int32_t lp[N], lc[N], lu[N];
    size_t overrun = 0;
    int got = eval_batch(&d, &plain, SPLIT_TEST, 0, N, p, lp, 1, &overrun);
    eval_batch(&d, &flip, SPLIT_TEST, 0, N, f, lp, 1, &overrun);
    eval_batch(&d, &crop, SPLIT_TEST, 0, N, c, lc, 1, &overrun);
    eval_batch(&d, &unmixed, SPLIT_TEST, 0, N, u, lu, 1, &overrun);
    eval_batch(&d, &reseeded, SPLIT_TEST, 0, N, r, lu, 1, &overrun);
    /* the same images from batches that start elsewhere: 5..12 of [5, 13), then 0..4 and 13..15 */
    eval_batch(&d, &crop, SPLIT_TEST, 5, 8, again + 5 * DS * DS, lu, 1, &overrun);
    eval_batch(&d, &crop, SPLIT_TEST, 0, 5, again, lu, 1, &overrun);
    eval_batch(&d, &crop, SPLIT_TEST, 13, 3, again + 13 * DS * DS, lu, 1, &overrun);
    CHECK(got == N, "returned %d images, want %d", got, N);
    int bad = 0, flipped = 0, unflipped = 0, neither = 0, cropped = 0, out_of_range = 0, other_seed = 0;
    for (int j = 0; j < N; j++) {
        const float *pj = p + (size_t)j * DS * DS, *fj = f + (size_t)j * DS * DS, *cj = c + (size_t)j * DS * DS;
        bad += !(plain_error(test, j, pj) <= MIX_ATOL) || lp[j] != test->labels[j] || lc[j] != test->labels[j];
        int kind = flip_kind(fj, pj);
        unflipped += kind == 0, flipped += kind == 1, neither += kind < 0;
        cropped += flip_kind(cj, pj) < 0;
        other_seed += memcmp(cj, r + (size_t)j * DS * DS, sizeof(float) * DS * DS) != 0;
        for (int q = 0; q < DS * DS; q++) out_of_range += !(cj[q] >= -1.0f - 1e-6f && cj[q] <= 1.0f + 1e-6f);
    }
    CHECK(bad == 0, "crop none, no flip: %d images or labels differ from the plain normalized test images", bad);
    CHECK(neither == 0 && flipped > 2 && unflipped > 2, "flip: %d mirrored, %d not, %d neither, of %d", flipped,
          unflipped, neither, N);
    CHECK(cropped > N / 2 && out_of_range == 0, "inception crop: %d of %d differ from the image, %d values out of range",
          cropped, N, out_of_range);
    CHECK(memcmp(c, u, sizeof c) == 0, "mixup in the spec changed the augmented evaluation images");
    CHECK(memcmp(c, again, sizeof c) == 0, "an image's crop depends on where its batch starts");
    CHECK(other_seed > N / 2, "another seed gave the same crops for %d of %d images", N - other_seed, N);
    CHECK(overrun == 0, "wrote %zu floats past data_scratch_size", overrun);
    free_jobdata(&d);
}

static void test_eval_non_square(void) {
    TEST_CASE("eval batches of non-square images: short side resized, central crop, within data_scratch_size");
    /* an IDX folder may hold non-square images; train.c passes the same
     * data_scratch_size scratch to data_train_batch and data_eval_batch */
    size_t overrun = 0;
    int bad;
    Dataset wide;
    make_dataset(&wide, 4, 1, 6, 12, DK, 0);
    JobData dw;
    make_jobdata(&dw, &wide, &wide);
    JobSpec sw = make_spec(2, CROP_INCEPTION, 1, 1, 3);
    sw.eval_resize = 16;
    float out[2 * DS * DS];
    int32_t lw[2];
    int nw = eval_batch(&dw, &sw, SPLIT_TEST, 0, 2, out, lw, 0, &overrun);
    CHECK(nw == 2, "6x12 images: returned %d", nw);
    CHECK(overrun == 0, "6x12 images, eval_resize 16: data_eval_batch wrote %zu floats past data_scratch_size (%zu)",
          overrun, data_scratch_size(&dw, &sw));
    bad = 0;
    for (int j = 0; j < 2; j++) {
        float src[6 * 12], mid[16 * 32];
        double mid_ref[16 * 32];
        for (int p = 0; p < 72; p++) src[p] = wide.pixels[(size_t)j * 72 + p] / 255.0f;
        resize_reference(mid_ref, 16, 32, src, 1, 6, 12, (CropBox){0, 0, 6, 12});
        for (int p = 0; p < 16 * 32; p++) mid[p] = (float)mid_ref[p];
        for (int y = 0; y < DS; y++)
            for (int x = 0; x < DS; x++) {
                double want = (mid[(y + 4) * 32 + x + 12] - 0.5) / 0.5;
                bad += !(fabs(out[(size_t)j * DS * DS + y * DS + x] - want) <= 2 * RESIZE_ATOL);
            }
    }
    CHECK(bad == 0, "6x12 images, eval_resize 16: %d values differ from resize to 16x32 + central 8x8", bad);
    free_jobdata(&dw);
    dataset_free(&wide);
}

/* ------------------------------------------------------------ PyTorch */

static const char *tmp_path(const char *fmt, int i) {
    static char bufs[4][512];
    static int next;
    char name[128], *b = bufs[next++ % 4];
    snprintf(name, sizeof name, fmt, i);
    snprintf(b, sizeof bufs[0], "%s/%s", tmp_dir, name);
    return b;
}

/* tests/torch_augment_check.py from the repository root (make test runs
 * there), else next to the build directory of this executable */
static int find_script(char *path, size_t size) {
    snprintf(path, size, "tests/torch_augment_check.py");
    if (access(path, R_OK) == 0) return 0;
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    char *slash = strrchr(exe, '/');
    if (slash) *slash = 0;
    snprintf(path, size, "%s/../../tests/torch_augment_check.py", exe);
    return access(path, R_OK) == 0 ? 0 : -1;
}

static int write_f32(const char *path, const float *x, int ndim, const int64_t *shape) {
    char err[ERR_LEN] = "";
    int rc = npy_write_f32(path, x, ndim, shape, err);
    CHECK(rc == 0, "writing %s: %s", path, err);
    return rc;
}

static void test_against_torch(void) {
    TEST_CASE("KL distillation loss/gradient and bilinear resize against PyTorch (float64)");
    const float temperatures[] = {0.5f, 1.0f, 2.0f, 5.0f, 10.0f};
    const int nt = 5, batch = 6, classes = 10;
    int failed_writes = 0;
    for (int i = 0; i < nt; i++) {
        float s[6 * 10], t[6 * 10], ps[6 * 10], pt[6 * 10], grad[6 * 10], grad2[6 * 10];
        fill_uniform(s, 60, -4.0, 4.0);
        fill_uniform(t, 60, -4.0, 4.0);
        /* large logits: confident rows, and student and teacher disagreeing */
        s[3] = 30.0f, s[10 + 7] = -30.0f, s[20 + 0] = 25.0f, t[3] = 28.0f, t[10 + 2] = 30.0f, t[30 + 5] = -30.0f;
        t[40 + 9] = 29.0f, s[40 + 1] = 29.5f;
        s[50 + 4] = 45.0f, t[50 + 1] = 44.0f, t[50 + 8] = -45.0f; /* /T = 90 at T = 0.5: exp overflows float */
        float T = temperatures[i];
        float loss = distill_loss_forward(ps, pt, s, t, batch, classes, T);
        memset(grad, 0, sizeof grad);
        distill_loss_backward(grad, ps, pt, batch, classes, T);
        /* backward adds */
        for (int k = 0; k < 60; k++) grad2[k] = 0.5f;
        distill_loss_backward(grad2, ps, pt, batch, classes, T);
        int adds = 1;
        for (int k = 0; k < 60; k++) adds &= fabsf(grad2[k] - (0.5f + grad[k])) <= 1e-6f;
        CHECK(adds, "T=%g: distill_loss_backward does not add to dlogits", T);
        CHECK(loss > 0 && isfinite(loss), "T=%g: loss %g, want finite and > 0", T, loss);
        /* a student equal to the teacher has zero loss and gradient */
        float same = distill_loss_forward(ps, pt, t, t, batch, classes, T);
        CHECK(fabsf(same) <= 1e-6f, "T=%g: loss of the teacher against itself is %g", T, same);
        int64_t shape2[2] = {batch, classes}, shape1[1] = {1};
        failed_writes += write_f32(tmp_path("kl%d_student.npy", i), s, 2, shape2) != 0;
        failed_writes += write_f32(tmp_path("kl%d_teacher.npy", i), t, 2, shape2) != 0;
        failed_writes += write_f32(tmp_path("kl%d_temperature.npy", i), &T, 1, shape1) != 0;
        failed_writes += write_f32(tmp_path("kl%d_loss.npy", i), &loss, 1, shape1) != 0;
        failed_writes += write_f32(tmp_path("kl%d_grad.npy", i), grad, 2, shape2) != 0;
    }
    /* resizes of the whole image: up, down, and non-square both ways */
    const int rs[][5] = {{3, 13, 17, 29, 40}, {3, 13, 17, 6, 7}, {1, 31, 9, 11, 20}, {2, 8, 8, 24, 5}};
    for (int i = 0; i < 4; i++) {
        int c = rs[i][0], sh = rs[i][1], sw = rs[i][2], dh = rs[i][3], dw = rs[i][4];
        float *src = new_floats((size_t)c * sh * sw), *dst = new_floats((size_t)c * dh * dw);
        fill_uniform(src, (size_t)c * sh * sw, 0.0, 1.0);
        resize_bilinear(dst, dh, dw, src, c, sh, sw, (CropBox){0, 0, sh, sw});
        int64_t shape_src[3] = {c, sh, sw}, shape_dst[3] = {c, dh, dw};
        failed_writes += write_f32(tmp_path("resize%d_src.npy", i), src, 3, shape_src) != 0;
        failed_writes += write_f32(tmp_path("resize%d_dst.npy", i), dst, 3, shape_dst) != 0;
        free(src), free(dst);
    }
    if (failed_writes) return;

    char script[PATH_MAX + 64];
    if (find_script(script, sizeof script) != 0) {
        CHECK(0, "tests/torch_augment_check.py not found (run from the repository root)");
        return;
    }
    if (access("/usr/bin/python3", X_OK) != 0) {
        CHECK(0, "/usr/bin/python3 is missing: PyTorch is a declared test dependency (make test-deps)");
        return;
    }
    char command[2 * PATH_MAX + 128];
    snprintf(command, sizeof command, "/usr/bin/python3 '%s' '%s' %d 4", script, tmp_dir, nt);
    fflush(stdout);
    int rc = system(command);
    /* importing torch takes seconds: only probe for it to explain a failure */
    if (rc != 0 && system("/usr/bin/python3 -c 'import numpy, torch' >/dev/null 2>&1") != 0)
        CHECK(0, "/usr/bin/python3 cannot import numpy and torch: PyTorch is a declared test dependency "
                 "(make test-deps installs python3-torch)");
    else
        CHECK(rc == 0, "%s exited with status %d", command, rc);
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* Each batch's images are made in parallel: 1, 2 and 3 threads must give the
 * same bytes (a job resumed on another thread count repeats its batches). */
static void test_batches_threads(const Dataset *train, const Dataset *test) {
    TEST_CASE("training and evaluation batches are the same on 1, 2 and 3 threads");
    const int was = omp_get_max_threads();
    JobSpec inception = make_spec(8, CROP_INCEPTION, 1, 1, 3), random = make_spec(8, CROP_RANDOM, 1, 1, 3);
    JobData d;
    make_jobdata(&d, train, test);
    Batch first[2];
    float eval_first[2][8 * DS * DS];
    int32_t labels_first[2][8];
    for (int threads = 1; threads <= 3; threads++) {
        omp_set_num_threads(threads);
        Batch b[2] = {train_batch(&d, &inception, 6), train_batch(&d, &random, 6)}; /* step 6 straddles two epochs */
        float eval[2][8 * DS * DS];
        int32_t labels[2][8];
        size_t overrun = 0;
        int got = 0;
        for (int augmented = 0; augmented < 2; augmented++)
            got += eval_batch(&d, &inception, SPLIT_TEST, 4, 8, eval[augmented], labels[augmented], augmented, &overrun);
        CHECK(got == 16 && overrun == 0, "%d threads: eval batches of %d images, %zu floats past the scratch", threads,
              got, overrun);
        if (threads == 1) {
            memcpy(first, b, sizeof b);
            memcpy(eval_first, eval, sizeof eval);
            memcpy(labels_first, labels, sizeof labels);
            continue;
        }
        CHECK(batch_equal(&b[0], &first[0]), "%d threads: the inception-crop batch differs from 1 thread's", threads);
        CHECK(batch_equal(&b[1], &first[1]), "%d threads: the random-crop batch differs from 1 thread's", threads);
        CHECK(memcmp(eval, eval_first, sizeof eval) == 0 && memcmp(labels, labels_first, sizeof labels) == 0,
              "%d threads: an eval batch differs from 1 thread's", threads);
        free_batch(&b[0]), free_batch(&b[1]);
    }
    free_batch(&first[0]), free_batch(&first[1]);
    free_jobdata(&d);
    omp_set_num_threads(was);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_inception_crop();
    test_central_crop();
    test_resize();
    test_flip();
    test_mixup_coefficient();
    test_mixup_batch();

    Dataset train, test;
    make_dataset(&train, DN, 1, DS, DS, DK, 0);
    make_dataset(&test, 20, 1, DS, DS, DK, 100);
    test_batches_deterministic(&train);
    test_batches_epochs(&train);
    test_batches_augmented(&train);
    test_eval_batches(&train, &test);
    test_augmented_eval_batches(&train, &test);
    test_batches_threads(&train, &test);
    test_eval_non_square();
    dataset_free(&train);
    dataset_free(&test);

    test_against_torch();
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
