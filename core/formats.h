/* formats.h - the file formats the core reads and writes:
 *
 *   safetensors  weights and checkpoints (F32 only), generic: tensors by name
 *                plus string->string metadata; writes are atomic and
 *                deterministic (same StFile -> same bytes).
 *   .npy         numpy arrays (teacher logits, labels, test references).
 *   .npz         zip archives of .npy arrays (BiT checkpoints), read only.
 *   IDX          MNIST-style files, plain or gzip-compressed (uint8 only).
 *   Dataset      images + labels built from IDX files, including the
 *                built-in Fashion-MNIST from Debian's dataset-fashion-mnist.
 *
 * Every reader validates everything it takes from the file before using it
 * (sizes, offsets, counts) and refuses bad input with a message in `err`
 * (ERR_LEN bytes) that names the file and the problem. Functions return 0 on
 * success and a negative value on failure; on failure outputs hold nothing
 * that needs freeing. */
#ifndef DISTILLD_FORMATS_H
#define DISTILLD_FORMATS_H

#include <stdint.h>
#include <stddef.h>

#define FORMATS_MAX_DIMS 8

/* ---- safetensors ------------------------------------------------------- */

typedef struct {
    char *name;
    int ndim;                          /* 0 (a scalar) .. FORMATS_MAX_DIMS */
    int64_t shape[FORMATS_MAX_DIMS];
    float *data;                       /* owned, row-major, prod(shape) floats */
} StTensor;

typedef struct {
    StTensor *tensors;                 /* in data-buffer order when read */
    int count;
    char **meta_keys;                  /* __metadata__, in header order */
    char **meta_values;
    int meta_count;
} StFile;

/* Reads and validates a whole file. On success *out owns everything; release
 * it with safetensors_free. */
int safetensors_read(const char *path, StFile *out, char *err);

/* Writes tensors in the given order (contiguous, no gaps), "__metadata__"
 * first, the header padded with spaces to a multiple of 8 bytes. Uses
 * write_file_atomic. Refuses duplicate or NULL names, bad shapes, NULL data. */
int safetensors_write(const char *path, const StFile *f, char *err);

void safetensors_free(StFile *f);                 /* also fine on a zeroed StFile */
const StTensor *safetensors_find(const StFile *f, const char *name);   /* NULL if absent */
const char *safetensors_meta(const StFile *f, const char *key);        /* NULL if absent */
int64_t st_tensor_numel(const StTensor *t);

/* ---- .npy (format versions 1.0, 2.0, 3.0; C order only) ----------------- */

/* Element types accepted by the readers: f4 f8 i1 u1 i2 u2 i4 u4 i8 u8 b1, little
 * or big endian. npy_read_f32 converts any of them to float; npy_read_i32
 * accepts the integer and bool types only and refuses values outside int32.
 * *data is malloc'd (free with free()); shape gets *ndim entries. */
int npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[FORMATS_MAX_DIMS], char *err);
int npy_read_i32(const char *path, int32_t **data, int *ndim, int64_t shape[FORMATS_MAX_DIMS], char *err);

/* Write version 1.0 files ('<f4' / '<i4'), data starting at a multiple of 64
 * bytes, via write_file_atomic. ndim may be 0 (a scalar). */
int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape, char *err);
int npy_write_i32(const char *path, const int32_t *data, int ndim, const int64_t *shape, char *err);

/* ---- .npz (zip archives of .npy members, as numpy's savez writes) ------- */

/* Reads every member of an .npz as a float32 tensor (any dtype npy_read_f32
 * takes) named without its ".npy" suffix, in central-directory order; no
 * metadata. Members may be stored or deflated; zip64 records and extra
 * fields are understood; CRC-32s are checked. Refuses anything else (other
 * methods, encryption, split archives, members that are not .npy, duplicate
 * names, truncated or inconsistent records), naming the file and member.
 * Release *out with safetensors_free. */
int npz_read(const char *path, StFile *out, char *err);

/* 1 if the file starts like a zip archive ("PK\3\4", or "PK\5\6" for one
 * with no members), else 0 (also when it cannot be read). */
int npz_is_zip(const char *path);

/* ---- IDX (MNIST format) ------------------------------------------------- */

#define IDX_MAX_DIMS 4

typedef struct {
    int ndim;                          /* 1 .. IDX_MAX_DIMS */
    int64_t dims[IDX_MAX_DIMS];
    uint8_t *data;                     /* owned, prod(dims) bytes, row-major */
    size_t size;                       /* prod(dims) */
} IdxFile;

/* Reads a plain or gzip-compressed (detected by the 1f 8b magic) IDX file.
 * Only element type 0x08 (unsigned byte) is supported. Refuses truncated
 * files, trailing bytes and corrupt gzip streams. */
int idx_read(const char *path, IdxFile *out, char *err);
void idx_free(IdxFile *f);

/* ---- datasets ----------------------------------------------------------- */

typedef struct {
    int n, c, h, w, num_classes;
    uint8_t *pixels;                   /* (n, c, h, w) */
    int32_t *labels;                   /* (n) */
    /* Images of their own sizes (photo folders, images.h): image i is
     * (c, heights[i], widths[i]) at pixels + offsets[i], and h, w are the
     * largest. NULL when every image is (c, h, w). */
    uint64_t *offsets;
    int32_t *heights, *widths;
    void *map;                         /* pixels lie in this read-only mapping of map_size bytes */
    size_t map_size;
    void *owned_block;                 /* or in this malloc'd block (freed with the dataset) */
} Dataset;

/* Image i: its pixels (c, *h, *w). */
static inline const uint8_t *dataset_image(const Dataset *d, int i, int *h, int *w) {
    if (!d->offsets) {
        *h = d->h;
        *w = d->w;
        return d->pixels + (size_t)i * d->c * d->h * d->w;
    }
    *h = d->heights[i];
    *w = d->widths[i];
    return d->pixels + d->offsets[i];
}

#define DATASET_BUILTIN_ROOT "/usr/share/datasets"

/* images: 3-D IDX (n, h, w) -> c = 1; labels: 1-D IDX (n).
 * num_classes = max label + 1. */
int dataset_load_idx(const char *images_path, const char *labels_path, Dataset *out, char *err);

/* name "fashion-mnist" or "mnist", split "train" or "test"; reads
 * DATASET_BUILTIN_ROOT/<name>/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz.
 * These have 10 classes: num_classes is 10 and any label >= 10 is refused. */
int dataset_load_builtin(const char *name, const char *split, Dataset *out, char *err);
/* The same with another root directory (tests, non-Debian installs). */
int dataset_load_builtin_at(const char *root, const char *name, const char *split, Dataset *out,
                            char *err);
void dataset_free(Dataset *d);

#endif
