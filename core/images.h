/* images.h - photo datasets: folders of JPEG images, one sub-folder per
 * class, and the Oxford Flowers102 layout (jpg/ + imagelabels.mat +
 * setid.mat), decoded once with libjpeg-turbo into a cache file that later
 * jobs map instead of decoding again.
 *
 * Every image is decoded to RGB (grayscale is replicated, CMYK converted),
 * using the JPEG's DCT scaling to decode near the target size, then resized
 * bilinearly so its short side is `resize_small` pixels (aspect kept: images
 * keep their own sizes, see Dataset.offsets). Files that are not *.jpg or
 * *.jpeg, and names starting with '.', are ignored. A corrupt or truncated
 * JPEG, an empty class folder, or a folder with no classes refuses the whole
 * dataset with a message naming the file or folder: a training set that
 * silently lost images would give numbers nobody can trust.
 *
 * The cache: <cache_dir>/images-<hash of root, split and size>.cache holds
 * the decoded pixels and labels after a header with a fingerprint of the
 * source (every file's name, size, modification time and label, and
 * resize_small). A cache whose fingerprint no longer matches the folder is
 * rebuilt; a stale or damaged cache is never used. Writes are atomic, so
 * jobs that build the same cache at once each end with a whole file. */
#ifndef DISTILLD_IMAGES_H
#define DISTILLD_IMAGES_H

#include <stdint.h>

#include "formats.h"

#define IMAGES_DEFAULT_RESIZE 160

/* One split of an image folder. `split` "train", "val" or "test" reads
 * root/<split>/<class>/...; NULL reads root/<class>/... (every image).
 * Classes are the sorted sub-folder names of the split's folder;
 * class_names (may be NULL) must then match them (so that train and test
 * agree on label numbers). cache_dir NULL: decode without a cache. */
int dataset_load_folder(const char *root, const char *split, int resize_small, const char *cache_dir,
                        Dataset *out, char *err);

/* Whether root has train/ and test/ sub-folders (and val/: *has_val). */
int image_folder_has_splits(const char *root, int *has_val);

/* A flat folder (root/<class>/...) split in two, per class: a fixed seeded
 * 20 % of every class's images is the test split, the rest training. */
int dataset_load_folder_split(const char *root, int resize_small, const char *cache_dir, Dataset *train,
                              Dataset *test, char *err);

/* Oxford Flowers102: root/jpg/image_NNNNN.jpg, root/imagelabels.mat (labels
 * 1..102 of the 8,189 images, read as 0..101), root/setid.mat (trnid, valid,
 * tstid: 1,020 / 1,020 / 6,149 image numbers). split "train", "val" or
 * "test". */
int dataset_load_flowers102(const char *root, const char *split, int resize_small, const char *cache_dir,
                            Dataset *out, char *err);

/* MAT-file level 5 (MATLAB v5..v7: 128-byte header, little- or big-endian,
 * zlib-compressed elements): the real part of numeric array `name`, any
 * numeric class and any stored element type, as doubles in column-major
 * order. *data is malloc'd. */
int mat_read_array(const char *path, const char *name, double **data, int64_t *count, char *err);

#endif
