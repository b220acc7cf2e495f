/* images_dump - the photo dataset readers of core/images.c, for
 * tests/images_check.py to compare with a reference decoder:
 *
 *   images_dump folder ROOT SPLIT|- RESIZE CACHE_DIR|- OUT_DIR
 *   images_dump split ROOT RESIZE CACHE_DIR|- OUT_DIR       (seeded 80/20 split: OUT_DIR/{train,test})
 *   images_dump flowers ROOT SPLIT RESIZE CACHE_DIR|- OUT_DIR
 *   images_dump mat FILE NAME                               (prints count, then the values)
 *
 * OUT_DIR gets labels.npy (int32) and image-NNNNN.npy (float32 (3, H, W),
 * pixel values 0..255); the first line printed is "N images, K classes". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "formats.h"
#include "images.h"
#include "util.h"

static int dump(const Dataset *d, const char *out_dir, char *err) {
    mkdir(out_dir, 0755);
    char path[4096];
    snprintf(path, sizeof path, "%s/labels.npy", out_dir);
    int64_t n = d->n;
    if (npy_write_i32(path, d->labels, 1, &n, err)) return -1;
    for (int i = 0; i < d->n; i++) {
        int h, w;
        const uint8_t *px = dataset_image(d, i, &h, &w);
        size_t count = (size_t)d->c * h * w;
        float *f = xcalloc(count, sizeof *f);
        for (size_t k = 0; k < count; k++) f[k] = px[k];
        int64_t shape[3] = {d->c, h, w};
        snprintf(path, sizeof path, "%s/image-%05d.npy", out_dir, i);
        int rc = npy_write_f32(path, f, 3, shape, err);
        free(f);
        if (rc) return -1;
    }
    printf("%d images, %d classes\n", d->n, d->num_classes);
    return 0;
}

int main(int argc, char **argv) {
    char err[ERR_LEN];
    Dataset d = {0}, test = {0};
    int rc = -1;
    if (argc == 4 && !strcmp(argv[1], "mat")) {
        double *values;
        int64_t count;
        if (mat_read_array(argv[2], argv[3], &values, &count, err) == 0) {
            printf("%lld\n", (long long)count);
            for (int64_t i = 0; i < count; i++) printf("%.17g\n", values[i]);
            free(values);
            return 0;
        }
    } else if (argc == 7 && (!strcmp(argv[1], "folder") || !strcmp(argv[1], "flowers"))) {
        const char *split = strcmp(argv[3], "-") ? argv[3] : NULL, *cache = strcmp(argv[5], "-") ? argv[5] : NULL;
        rc = !strcmp(argv[1], "folder") ? dataset_load_folder(argv[2], split, atoi(argv[4]), cache, &d, err)
                                        : dataset_load_flowers102(argv[2], split, atoi(argv[4]), cache, &d, err);
        if (rc == 0) rc = dump(&d, argv[6], err);
    } else if (argc == 6 && !strcmp(argv[1], "split")) {
        const char *cache = strcmp(argv[4], "-") ? argv[4] : NULL;
        rc = dataset_load_folder_split(argv[2], atoi(argv[3]), cache, &d, &test, err);
        char dir[4096];
        mkdir(argv[5], 0755);
        snprintf(dir, sizeof dir, "%s/train", argv[5]);
        if (rc == 0) rc = dump(&d, dir, err);
        snprintf(dir, sizeof dir, "%s/test", argv[5]);
        if (rc == 0) rc = dump(&test, dir, err);
    } else {
        fprintf(stderr, "usage: see the top of tests/images_dump.c\n");
        return 2;
    }
    dataset_free(&d);
    dataset_free(&test);
    if (rc) {
        fprintf(stderr, "images_dump: %s\n", err);
        return 1;
    }
    return 0;
}
