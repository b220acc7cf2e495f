/* augment.c - crops, bilinear resize, flip and mixup. See augment.h. */
#include "augment.h"

#include <math.h>
#include <omp.h>
#include <string.h>

CropBox inception_crop_box(Rng *rng, int height, int width, float area_min, float area_max) {
    const double area = (double)height * width;
    const double log_lo = log(3.0 / 4.0), log_hi = log(4.0 / 3.0);
    for (int attempt = 0; attempt < 10; attempt++) {
        double target = area * (area_min + (area_max - area_min) * rng_uniform(rng));
        double aspect = exp(log_lo + (log_hi - log_lo) * rng_uniform(rng));
        int w = (int)lround(sqrt(target * aspect));
        int h = (int)lround(sqrt(target / aspect));
        if (w >= 1 && h >= 1 && w <= width && h <= height) {
            CropBox b = {.h = h, .w = w};
            b.y = (int)rng_below(rng, (uint32_t)(height - h + 1));
            b.x = (int)rng_below(rng, (uint32_t)(width - w + 1));
            return b;
        }
    }
    return (CropBox){0, 0, height, width};
}

CropBox central_crop_box(int height, int width, int crop_h, int crop_w) {
    if (crop_h > height) crop_h = height;
    if (crop_w > width) crop_w = width;
    return (CropBox){(height - crop_h) / 2, (width - crop_w) / 2, crop_h, crop_w};
}

void resize_bilinear(float *dst, int dh, int dw, const float *src, int channels, int sh, int sw, CropBox box) {
    enum { CHUNK = 256 };
    const float sy = (float)box.h / dh, sx = (float)box.w / dw;
    /* the columns' taps and weights, a chunk of output columns at a time */
    int x0s[CHUNK], x1s[CHUNK];
    float wxs[CHUNK];
    for (int j0 = 0; j0 < dw; j0 += CHUNK) {
        const int nj = dw - j0 < CHUNK ? dw - j0 : CHUNK;
        for (int j = 0; j < nj; j++) {
            float fx = (j0 + j + 0.5f) * sx - 0.5f;
            if (fx < 0) fx = 0;
            int x0 = (int)fx;
            if (x0 > box.w - 1) x0 = box.w - 1;
            float wx = fx - x0;
            x0s[j] = x0;
            x1s[j] = x0 + 1 < box.w ? x0 + 1 : box.w - 1;
            wxs[j] = wx > 1 ? 1 : wx;
        }
        for (int c = 0; c < channels; c++) {
            const float *plane = src + (size_t)c * sh * sw;
            float *out = dst + (size_t)c * dh * dw + j0;
            for (int i = 0; i < dh; i++) {
                float fy = (i + 0.5f) * sy - 0.5f;
                if (fy < 0) fy = 0;
                int y0 = (int)fy;
                if (y0 > box.h - 1) y0 = box.h - 1;
                int y1 = y0 + 1 < box.h ? y0 + 1 : box.h - 1;
                float wy = fy - y0;
                if (wy > 1) wy = 1;
                const float *r0 = plane + (size_t)(box.y + y0) * sw + box.x, *r1 = plane + (size_t)(box.y + y1) * sw + box.x;
                for (int j = 0; j < nj; j++) {
                    const int x0 = x0s[j], x1 = x1s[j];
                    const float wx = wxs[j];
                    float top = r0[x0] + (r0[x1] - r0[x0]) * wx;
                    float bottom = r1[x0] + (r1[x1] - r1[x0]) * wx;
                    out[(size_t)i * dw + j] = top + (bottom - top) * wy;
                }
            }
        }
    }
}

void flip_horizontal(float *img, int channels, int height, int width) {
    for (size_t r = 0; r < (size_t)channels * height; r++) {
        float *row = img + r * width;
        for (int a = 0, b = width - 1; a < b; a++, b--) {
            float t = row[a];
            row[a] = row[b];
            row[b] = t;
        }
    }
}

float mixup_coefficient(Rng *rng) {
    float a = rng_uniform(rng);
    return a > 1.0f - a ? a : 1.0f - a;
}

/* Walks the batch backwards so each partner x_{i-1} is still unmixed when
 * used; image 0's partner is the last image, saved first. Each thread walks
 * its own range of pixels: the same sums for any number of threads. */
void mixup_batch(float *images, size_t image_floats, float *targets, int classes, int batch, float a, float *tmp) {
    if (batch < 2) return;
    const float b = 1.0f - a;
#pragma omp parallel
    {
        const size_t threads = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        const size_t lo = image_floats * t / threads, hi = image_floats * (t + 1) / threads;
        memcpy(tmp + lo, images + (size_t)(batch - 1) * image_floats + lo, (hi - lo) * sizeof(float));
        for (int i = batch - 1; i >= 1; i--) {
            float *x = images + (size_t)i * image_floats;
            const float *p = images + (size_t)(i - 1) * image_floats;
            for (size_t k = lo; k < hi; k++) x[k] = a * x[k] + b * p[k];
        }
        for (size_t k = lo; k < hi; k++) images[k] = a * images[k] + b * tmp[k];
    }
    if (!targets) return;
    float *last = tmp;
    memcpy(last, targets + (size_t)(batch - 1) * classes, sizeof(float) * classes);
    for (int i = batch - 1; i >= 1; i--)
        for (int c = 0; c < classes; c++)
            targets[(size_t)i * classes + c] = a * targets[(size_t)i * classes + c] + b * targets[(size_t)(i - 1) * classes + c];
    for (int c = 0; c < classes; c++) targets[c] = a * targets[c] + b * last[c];
}
