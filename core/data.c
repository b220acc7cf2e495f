/* data.c - datasets, splits and per-step batches. See data.h. */
#include "data.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "augment.h"
#include "images.h"
#include "util.h"

enum { RNG_VAL_SPLIT = 1, RNG_SUBSET = 2, RNG_EPOCH = 3, RNG_AUGMENT = 4, RNG_MIXUP = 5, RNG_EVAL_AUGMENT = 6 };

static void shuffle(int32_t *a, int n, Rng *rng) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)rng_below(rng, (uint32_t)i + 1);
        int32_t t = a[i];
        a[i] = a[j];
        a[j] = t;
    }
}

static int load_idx_folder(const char *dir, const char *split, Dataset *out, char *err) {
    const char *prefix = strcmp(split, "train") == 0 ? "train" : "t10k";
    char images[SPEC_PATH_MAX + 64], labels[SPEC_PATH_MAX + 64];
    struct stat st;
    snprintf(images, sizeof images, "%s/%s-images-idx3-ubyte.gz", dir, prefix);
    if (stat(images, &st) != 0) snprintf(images, sizeof images, "%s/%s-images-idx3-ubyte", dir, prefix);
    snprintf(labels, sizeof labels, "%s/%s-labels-idx1-ubyte.gz", dir, prefix);
    if (stat(labels, &st) != 0) snprintf(labels, sizeof labels, "%s/%s-labels-idx1-ubyte", dir, prefix);
    return dataset_load_idx(images, labels, out, err);
}

/* The spec's splits: train and test always, val when the source has its own
 * validation split (Flowers102, an image folder with val/). */
static int load_splits(const DatasetSpec *spec, const char *cache_dir, JobData *d, char *err) {
    if (spec->name[0]) {
        if (dataset_load_builtin(spec->name, "train", &d->train, err)) return -1;
        return dataset_load_builtin(spec->name, "test", &d->test, err);
    }
    if (!strcmp(spec->format, "idx")) {
        if (load_idx_folder(spec->path, "train", &d->train, err)) return -1;
        return load_idx_folder(spec->path, "test", &d->test, err);
    }
    const int size = spec->resize_small;
    if (!strcmp(spec->format, "flowers102")) {
        if (dataset_load_flowers102(spec->path, "train", size, cache_dir, &d->train, err)) return -1;
        if (dataset_load_flowers102(spec->path, "val", size, cache_dir, &d->val, err)) return -1;
        return dataset_load_flowers102(spec->path, "test", size, cache_dir, &d->test, err);
    }
    int has_val;
    if (!image_folder_has_splits(spec->path, &has_val))
        return dataset_load_folder_split(spec->path, size, cache_dir, &d->train, &d->test, err);
    if (dataset_load_folder(spec->path, "train", size, cache_dir, &d->train, err)) return -1;
    if (has_val && dataset_load_folder(spec->path, "val", size, cache_dir, &d->val, err)) return -1;
    return dataset_load_folder(spec->path, "test", size, cache_dir, &d->test, err);
}

int data_open(const DatasetSpec *spec, const char *cache_dir, JobData *d, char *err) {
    memset(d, 0, sizeof *d);
    d->perm_epoch = -1;
    if (load_splits(spec, cache_dir, d, err)) {
        data_close(d);
        return -1;
    }
    const Dataset *tr = &d->train, *te = &d->test;
    if (tr->c != te->c || (!tr->offsets && (tr->h != te->h || tr->w != te->w))) {
        data_close(d);
        return set_error(err, "dataset: training images are %dx%dx%d but test images are %dx%dx%d", tr->c, tr->h, tr->w,
                         te->c, te->h, te->w);
    }
    if (te->num_classes > tr->num_classes) d->train.num_classes = te->num_classes;
    if (d->val.n > 0) { /* the source's own validation split */
        if (d->val.num_classes > d->train.num_classes) d->train.num_classes = d->val.num_classes;
        if (spec->val_size > d->val.n) {
            int n = d->val.n;
            data_close(d);
            return set_error(err, "dataset.val_size: %d is larger than the dataset's %d validation images",
                             spec->val_size, n);
        }
    }
    if (spec->test_size > te->n) {
        int n = te->n;
        data_close(d);
        return set_error(err, "dataset.test_size: %d is larger than the %d test images", spec->test_size, n);
    }
    d->test_count = spec->test_size ? spec->test_size : te->n;
    if (spec->val_size >= tr->n) {
        data_close(d);
        return set_error(err, "dataset.val_size: %d leaves no training images (the split has %d)", spec->val_size, tr->n);
    }

    /* validation: the source's own split (all of it, or its first val_size
     * images), else a fixed seeded holdout of the training split, the same
     * for every job on this dataset */
    int32_t *all = xcalloc(tr->n, sizeof *all);
    for (int i = 0; i < tr->n; i++) all[i] = i;
    int pool;
    if (d->val.n > 0) {
        pool = tr->n;
        d->val_count = spec->val_size ? spec->val_size : d->val.n;
        d->val_index = xcalloc(d->val_count, sizeof *d->val_index);
        for (int i = 0; i < d->val_count; i++) d->val_index[i] = i;
    } else {
        if (spec->val_size > 0) {
            Rng rng = rng_derive(0, RNG_VAL_SPLIT, 0);
            shuffle(all, tr->n, &rng);
        }
        pool = tr->n - spec->val_size;
        d->val_count = spec->val_size;
        d->val_index = xcalloc(d->val_count, sizeof *d->val_index);
        memcpy(d->val_index, all + pool, sizeof(int32_t) * d->val_count);
    }

    if (spec->subset_size == 0) {
        d->train_count = pool;
        d->train_index = xcalloc(pool, sizeof *d->train_index);
        memcpy(d->train_index, all, sizeof(int32_t) * pool);
        free(all);
        return 0;
    }
    /* class-balanced subset: size/K of each class (the remainder to the first classes) */
    const int k = tr->num_classes, size = spec->subset_size;
    if (size > pool) {
        free(all);
        data_close(d);
        return set_error(err, "dataset.subset_size: %d is larger than the %d training images", size, pool);
    }
    Rng rng = rng_derive(spec->subset_seed, RNG_SUBSET, 0);
    int32_t *order = xcalloc(pool, sizeof *order);
    memcpy(order, all, sizeof(int32_t) * pool);
    shuffle(order, pool, &rng);
    int *taken = xcalloc(k, sizeof *taken);
    d->train_index = xcalloc(size, sizeof *d->train_index);
    for (int i = 0; i < pool && d->train_count < size; i++) {
        int label = tr->labels[order[i]];
        int want = size / k + (label < size % k ? 1 : 0);
        if (taken[label] < want) {
            taken[label]++;
            d->train_index[d->train_count++] = order[i];
        }
    }
    free(order);
    free(taken);
    free(all);
    if (d->train_count < size) {
        data_close(d);
        return set_error(err, "dataset.subset_size: %d cannot be class-balanced: some class has fewer than %d images",
                         size, size / k + 1);
    }
    return 0;
}

void data_close(JobData *d) {
    dataset_free(&d->train);
    dataset_free(&d->val);
    dataset_free(&d->test);
    free(d->train_index);
    free(d->val_index);
    free(d->perm);
    memset(d, 0, sizeof *d);
}

int data_split_size(const JobData *d, int split) { return split == SPLIT_VAL ? d->val_count : d->test_count; }

/* Evaluation resizes the short side to eval_resize, keeping the aspect ratio. */
static void eval_resized_dims(int h, int w, const JobSpec *spec, int *rh, int *rw) {
    *rh = h <= w ? spec->eval_resize : (int)((long)spec->eval_resize * h / w);
    *rw = h <= w ? (int)((long)spec->eval_resize * w / h) : spec->eval_resize;
}

/* Floats of scratch one thread needs to make one image of any split. */
static size_t image_scratch_size(const JobData *d, const JobSpec *spec) {
    /* the largest image of any split, and its resize for evaluation */
    const Dataset *splits[3] = {&d->train, &d->val, &d->test};
    size_t src = 0, resized = 0, padded = 0;
    const int pad = spec->model.image_size / 8;
    for (int k = 0; k < 3; k++) {
        const Dataset *ds = splits[k];
        for (int i = 0; i < ds->n; i++) {
            int h, w, rh, rw;
            dataset_image(ds, i, &h, &w);
            eval_resized_dims(h, w, spec, &rh, &rw);
            /* the batch code puts its work area after c * h * w of the split's largest height and width */
            size_t a = (size_t)ds->c * ds->h * ds->w, b = (size_t)ds->c * rh * rw;
            size_t c = (size_t)ds->c * (h + 2 * pad) * (w + 2 * pad);
            if (a > src) src = a;
            if (b > resized) resized = b;
            if (c > padded) padded = c;
            if (!ds->offsets) break; /* all of one size */
        }
    }
    size_t out = (size_t)spec->model.in_channels * spec->model.image_size * spec->model.image_size;
    size_t work = resized > padded ? resized : padded;
    if (out > work) work = out; /* mixup's one-image temporary */
    if ((size_t)spec->model.num_classes > work) work = spec->model.num_classes;
    return src + work;
}

size_t data_scratch_size(const JobData *d, const JobSpec *spec) {
    return image_scratch_size(d, spec) * (size_t)omp_get_max_threads();
}

static void to_unit_float(float *dst, const uint8_t *src, size_t n) {
    for (size_t i = 0; i < n; i++) dst[i] = src[i] * (1.0f / 255.0f);
}

static void normalize(float *img, const ModelConfig *m) {
    const size_t plane = (size_t)m->image_size * m->image_size;
    for (int c = 0; c < m->in_channels; c++) {
        const float mean = m->norm_mean[c], inv = 1.0f / m->norm_std[c];
        for (size_t i = 0; i < plane; i++) img[c * plane + i] = (img[c * plane + i] - mean) * inv;
    }
}

static int32_t train_image_at(JobData *d, const JobSpec *spec, long position) {
    long epoch = position / d->train_count;
    if (epoch != d->perm_epoch) {
        if (!d->perm) d->perm = xcalloc(d->train_count, sizeof *d->perm);
        memcpy(d->perm, d->train_index, sizeof(int32_t) * d->train_count);
        Rng rng = rng_derive(spec->seed, RNG_EPOCH, (uint64_t)epoch);
        shuffle(d->perm, d->train_count, &rng);
        d->perm_epoch = epoch;
    }
    return d->perm[position % d->train_count];
}

/* One image of ds into out (C, S, S), cropped and flipped as the spec's
 * training images are, with draws from rng; normalized. src and work are
 * scratch (data_scratch_size). */
static void augment_image(const Dataset *ds, int32_t idx, const JobSpec *spec, Rng *rng, float *out, float *src,
                          float *work) {
    const ModelConfig *m = &spec->model;
    const int s = m->image_size;
    int h, w;
    const uint8_t *pixels = dataset_image(ds, idx, &h, &w);
    if (spec->crop == CROP_INCEPTION) { /* only the box's pixels to float: (C, box.h, box.w) */
        CropBox box = inception_crop_box(rng, h, w, spec->crop_area_min, spec->crop_area_max);
        for (int c = 0; c < ds->c; c++)
            for (int y = 0; y < box.h; y++)
                to_unit_float(src + ((size_t)c * box.h + y) * box.w, pixels + ((size_t)c * h + box.y + y) * w + box.x,
                              (size_t)box.w);
        resize_bilinear(out, s, s, src, ds->c, box.h, box.w, (CropBox){0, 0, box.h, box.w});
    } else if (spec->crop == CROP_RANDOM) {
        to_unit_float(src, pixels, (size_t)ds->c * h * w);
        /* zero-pad by S/8 on every side, then a random S x S window */
        int pad = s / 8, ph = h + 2 * pad, pw = w + 2 * pad;
        memset(work, 0, sizeof(float) * ds->c * ph * pw);
        for (int c = 0; c < ds->c; c++)
            for (int y = 0; y < h; y++)
                memcpy(work + ((size_t)c * ph + y + pad) * pw + pad, src + ((size_t)c * h + y) * w, sizeof(float) * w);
        int ch = s < ph ? s : ph, cw = s < pw ? s : pw;
        CropBox box = {(int)rng_below(rng, (uint32_t)(ph - ch + 1)), (int)rng_below(rng, (uint32_t)(pw - cw + 1)), ch,
                       cw};
        resize_bilinear(out, s, s, work, ds->c, ph, pw, box);
    } else {
        to_unit_float(src, pixels, (size_t)ds->c * h * w);
        resize_bilinear(out, s, s, src, ds->c, h, w, (CropBox){0, 0, h, w});
    }
    if (spec->flip && (rng_next(rng) & 1)) flip_horizontal(out, m->in_channels, s, s);
    normalize(out, m);
}

void data_train_batch(JobData *d, const JobSpec *spec, long step, float *images, float *targets, int32_t *labels,
                      float *scratch) {
    const Dataset *tr = &d->train;
    const ModelConfig *m = &spec->model;
    const int b_size = spec->batch_size, k = m->num_classes, s = m->image_size;
    const size_t src_floats = (size_t)tr->c * tr->h * tr->w, out_floats = (size_t)m->in_channels * s * s;
    const size_t per_thread = image_scratch_size(d, spec);
    /* the images' indices first, in order: the epoch's permutation is memoized in d */
    for (int j = 0; j < b_size; j++) labels[j] = train_image_at(d, spec, step * b_size + j);
#pragma omp parallel for schedule(dynamic, 4)
    for (int j = 0; j < b_size; j++) {
        float *src = scratch + (size_t)omp_get_thread_num() * per_thread;
        const int32_t idx = labels[j];
        Rng rng = rng_derive(spec->seed, RNG_AUGMENT, (uint64_t)step * 65536u + (uint64_t)j);
        augment_image(tr, idx, spec, &rng, images + (size_t)j * out_floats, src, src + src_floats);
        labels[j] = tr->labels[idx];
        for (int c = 0; c < k; c++) targets[(size_t)j * k + c] = c == labels[j] ? 1.0f : 0.0f;
    }
    if (spec->mixup) {
        Rng rng = rng_derive(spec->seed, RNG_MIXUP, (uint64_t)step);
        float a = mixup_coefficient(&rng);
        mixup_batch(images, out_floats, targets, k, b_size, a, scratch);
    }
}

/* How many images an evaluation batch of `count` from `start` has. */
static int eval_batch_count(const JobData *d, int split, int start, int count) {
    const int left = data_split_size(d, split) - start;
    return left < 0 ? 0 : left < count ? left : count;
}

/* The dataset and image index of evaluation image i of a split. */
static const Dataset *eval_image(const JobData *d, int split, int i, int32_t *idx) {
    *idx = split == SPLIT_VAL ? d->val_index[i] : i;
    return split == SPLIT_TEST ? &d->test : d->val.n > 0 ? &d->val : &d->train;
}

int data_augmented_eval_batch(const JobData *d, const JobSpec *spec, int split, int start, int count, float *images,
                              int32_t *labels, float *scratch) {
    const int n = eval_batch_count(d, split, start, count);
    const size_t out_floats = (size_t)spec->model.in_channels * spec->model.image_size * spec->model.image_size;
    const size_t per_thread = image_scratch_size(d, spec);
#pragma omp parallel for schedule(dynamic, 4)
    for (int j = 0; j < n; j++) {
        float *src = scratch + (size_t)omp_get_thread_num() * per_thread;
        int32_t idx;
        const Dataset *ds = eval_image(d, split, start + j, &idx);
        Rng rng = rng_derive(spec->seed, RNG_EVAL_AUGMENT, (uint64_t)split << 32 | (uint64_t)(start + j));
        augment_image(ds, idx, spec, &rng, images + (size_t)j * out_floats, src, src + (size_t)ds->c * ds->h * ds->w);
        labels[j] = ds->labels[idx];
    }
    return n;
}

int data_eval_batch(const JobData *d, const JobSpec *spec, int split, int start, int count, float *images,
                    int32_t *labels, float *scratch) {
    const int n = eval_batch_count(d, split, start, count);
    const ModelConfig *m = &spec->model;
    const int s = m->image_size;
    const size_t out_floats = (size_t)m->in_channels * s * s;
    const size_t per_thread = image_scratch_size(d, spec);
#pragma omp parallel for schedule(dynamic, 4)
    for (int j = 0; j < n; j++) {
        int32_t idx;
        const Dataset *ds = eval_image(d, split, start + j, &idx);
        float *src = scratch + (size_t)omp_get_thread_num() * per_thread, *resized = src + (size_t)ds->c * ds->h * ds->w;
        float *out = images + (size_t)j * out_floats;
        int h, w, rh, rw;
        const uint8_t *pixels = dataset_image(ds, idx, &h, &w);
        to_unit_float(src, pixels, (size_t)ds->c * h * w);
        /* resize the short side to eval_resize, then take the central eval_crop */
        eval_resized_dims(h, w, spec, &rh, &rw);
        if (rh == h && rw == w) {
            resize_bilinear(out, s, s, src, ds->c, h, w, central_crop_box(h, w, s, s));
        } else {
            resize_bilinear(resized, rh, rw, src, ds->c, h, w, (CropBox){0, 0, h, w});
            resize_bilinear(out, s, s, resized, ds->c, rh, rw, central_crop_box(rh, rw, s, s));
        }
        normalize(out, m);
        labels[j] = ds->labels[idx];
    }
    return n;
}
