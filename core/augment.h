/* augment.h - image augmentation of the recipe (DESIGN.md section 4):
 * inception crop (area and aspect ranges, bilinear resize), horizontal flip,
 * mixup with the batch rolled by one as partner, and the evaluation
 * resize + central crop. Images are float (C, H, W) planes. */
#ifndef DISTILLD_AUGMENT_H
#define DISTILLD_AUGMENT_H

#include <stddef.h>

#include "util.h"

typedef struct { int y, x, h, w; } CropBox; /* in source pixels, inside the image */

/* Inception-style crop: area fraction in [area_min, area_max] of the image,
 * aspect ratio log-uniform in [3/4, 4/3]; up to 10 tries, then the whole image. */
CropBox inception_crop_box(Rng *rng, int height, int width, float area_min, float area_max);

/* Central square-ish crop of size (h, w). */
CropBox central_crop_box(int height, int width, int crop_h, int crop_w);

/* dst (C, dh, dw) = bilinear resize of the box of src (C, sh, sw); pixel
 * centres at +0.5 (align_corners = false), edges clamped, no antialiasing. */
void resize_bilinear(float *dst, int dh, int dw, const float *src, int channels, int sh, int sw, CropBox box);

void flip_horizontal(float *img, int channels, int height, int width);

/* One coefficient per batch: a ~ U(0,1) folded to max(a, 1-a). */
float mixup_coefficient(Rng *rng);

/* x_i = a x_i + (1-a) x_{i-1 mod B}, the same for the (B, classes) targets
 * (targets may be NULL). `tmp` holds max(image_floats, classes) floats. */
void mixup_batch(float *images, size_t image_floats, float *targets, int classes, int batch, float a, float *tmp);

#endif
