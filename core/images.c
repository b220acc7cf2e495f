/* images.c - JPEG folders, Flowers102 and the decoded-image cache. See images.h. */
#include "images.h"

#include <dirent.h>
#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "augment.h"
#include "util.h"

/* ---- MAT v5 ------------------------------------------------------------- */

enum {
    MI_INT8 = 1, MI_UINT8 = 2, MI_INT16 = 3, MI_UINT16 = 4, MI_INT32 = 5, MI_UINT32 = 6, MI_SINGLE = 7,
    MI_DOUBLE = 9, MI_INT64 = 12, MI_UINT64 = 13, MI_MATRIX = 14, MI_COMPRESSED = 15,
};

typedef struct {
    const unsigned char *p;
    size_t len;
    int swap; /* the file is big-endian */
} MatBuf;

static uint32_t mat_u32(const MatBuf *b, size_t at) {
    const unsigned char *q = b->p + at;
    return b->swap ? (uint32_t)q[0] << 24 | (uint32_t)q[1] << 16 | (uint32_t)q[2] << 8 | q[3]
                   : (uint32_t)q[3] << 24 | (uint32_t)q[2] << 16 | (uint32_t)q[1] << 8 | q[0];
}

static int mat_type_size(uint32_t type) {
    switch (type) {
    case MI_INT8: case MI_UINT8: return 1;
    case MI_INT16: case MI_UINT16: return 2;
    case MI_INT32: case MI_UINT32: case MI_SINGLE: return 4;
    case MI_DOUBLE: case MI_INT64: case MI_UINT64: return 8;
    default: return 0;
    }
}

static double mat_number(const MatBuf *b, const unsigned char *q, uint32_t type) {
    unsigned char v[8];
    int size = mat_type_size(type);
    for (int i = 0; i < size && i < 8; i++) v[i] = b->swap ? q[size - 1 - i] : q[i];
    switch (type) {
    case MI_INT8: return (int8_t)v[0];
    case MI_UINT8: return v[0];
    case MI_INT16: { int16_t x; memcpy(&x, v, 2); return x; }
    case MI_UINT16: { uint16_t x; memcpy(&x, v, 2); return x; }
    case MI_INT32: { int32_t x; memcpy(&x, v, 4); return x; }
    case MI_UINT32: { uint32_t x; memcpy(&x, v, 4); return x; }
    case MI_SINGLE: { float x; memcpy(&x, v, 4); return x; }
    case MI_DOUBLE: { double x; memcpy(&x, v, 8); return x; }
    case MI_INT64: { int64_t x; memcpy(&x, v, 8); return (double)x; }
    default: { uint64_t x; memcpy(&x, v, 8); return (double)x; }
    }
}

/* The element at *at: its type, its data and its size; *at moves past it
 * (and its padding to 8 bytes). The small format packs up to 4 bytes into
 * the tag. */
static int mat_element(const MatBuf *b, size_t *at, uint32_t *type, const unsigned char **data, size_t *size,
                       const char *path, char *err) {
    if (b->len - *at < 8) return set_error(err, "%s: truncated MAT element at byte %zu", path, *at);
    uint32_t first = mat_u32(b, *at);
    if (first >> 16) { /* small data element */
        *type = first & 0xffff;
        *size = first >> 16;
        if (*size > 4) return set_error(err, "%s: bad small MAT element at byte %zu", path, *at);
        *data = b->p + *at + 4;
        *at += 8;
        return 0;
    }
    *type = first;
    *size = mat_u32(b, *at + 4);
    if (*size > b->len - *at - 8) return set_error(err, "%s: MAT element at byte %zu runs past the end", path, *at);
    *data = b->p + *at + 8;
    size_t padded = *type == MI_COMPRESSED ? *size : (*size + 7) / 8 * 8;
    *at += 8 + (padded <= b->len - *at - 8 ? padded : b->len - *at - 8);
    return 0;
}

/* Inflates a miCOMPRESSED element (a zlib stream) into a malloc'd buffer. */
static int mat_inflate(const unsigned char *src, size_t size, unsigned char **out, size_t *out_len, const char *path,
                       char *err) {
    size_t cap = size * 4 + 64, len = 0;
    unsigned char *buf = malloc(cap);
    z_stream z = {0};
    if (!buf || inflateInit(&z) != Z_OK) {
        free(buf);
        return set_error(err, "%s: out of memory inflating a MAT element", path);
    }
    z.next_in = (unsigned char *)src;
    z.avail_in = (uInt)size;
    int rc;
    do {
        if (len == cap) {
            if (cap > ((size_t)1 << 31)) break;
            unsigned char *grown = realloc(buf, cap * 2);
            if (!grown) break;
            buf = grown;
            cap *= 2;
        }
        z.next_out = buf + len;
        z.avail_out = (uInt)(cap - len);
        rc = inflate(&z, Z_NO_FLUSH);
        len = cap - z.avail_out;
    } while (rc == Z_OK);
    inflateEnd(&z);
    if (rc != Z_STREAM_END) {
        free(buf);
        return set_error(err, "%s: a compressed MAT element is corrupt or truncated", path);
    }
    *out = buf;
    *out_len = len;
    return 0;
}

/* A miMATRIX element: 1 if it is the array `name` (then *data filled), 0 if
 * another, <0 on error. */
static int mat_matrix(const MatBuf *m, const char *name, double **data, int64_t *count, const char *path, char *err) {
    size_t at = 0;
    uint32_t type;
    const unsigned char *d;
    size_t size;
    /* array flags, dimensions, name, real part */
    if (mat_element(m, &at, &type, &d, &size, path, err)) return -1;
    if (type != MI_UINT32 || size < 8) return set_error(err, "%s: a MAT array without array flags", path);
    MatBuf flags = {d, size, m->swap};
    int is_complex = (mat_u32(&flags, 0) >> 11) & 1, cls = mat_u32(&flags, 0) & 0xff;
    if (mat_element(m, &at, &type, &d, &size, path, err)) return -1;
    if (type != MI_INT32 || size < 8 || size % 4) return set_error(err, "%s: a MAT array without dimensions", path);
    MatBuf dims = {d, size, m->swap};
    int64_t numel = 1;
    for (size_t i = 0; i < size / 4; i++) {
        int32_t dim = (int32_t)mat_u32(&dims, 4 * i);
        if (dim < 0 || (dim > 0 && numel > (INT64_C(1) << 40) / dim))
            return set_error(err, "%s: a MAT array with bad dimensions", path);
        numel *= dim;
    }
    if (mat_element(m, &at, &type, &d, &size, path, err)) return -1;
    if (type != MI_INT8) return set_error(err, "%s: a MAT array without a name", path);
    if (strlen(name) != size || memcmp(d, name, size) != 0) return 0;
    if (cls < 6 || cls > 15) return set_error(err, "%s: %s is not a numeric array (MAT class %d)", path, name, cls);
    if (is_complex) return set_error(err, "%s: %s is complex", path, name);
    if (mat_element(m, &at, &type, &d, &size, path, err)) return -1;
    int elem = mat_type_size(type);
    if (!elem) return set_error(err, "%s: %s has MAT element type %u, not a number type", path, name, type);
    if ((int64_t)(size / (size_t)elem) != numel || size % (size_t)elem)
        return set_error(err, "%s: %s holds %zu bytes of type %u for %lld elements", path, name, size, type,
                         (long long)numel);
    double *values = malloc(sizeof(double) * (size_t)(numel ? numel : 1));
    if (!values) return set_error(err, "%s: out of memory reading %s", path, name);
    for (int64_t i = 0; i < numel; i++) values[i] = mat_number(m, d + (size_t)i * (size_t)elem, type);
    *data = values;
    *count = numel;
    return 1;
}

int mat_read_array(const char *path, const char *name, double **data, int64_t *count, char *err) {
    *data = NULL;
    *count = 0;
    unsigned char *file;
    size_t len;
    if (read_file_all(path, &file, &len, err)) return -1;
    int rc = 0;
    if (len < 128 || memcmp(file, "MATLAB 5.0 MAT-file", 19) != 0) {
        rc = set_error(err, "%s: not a MAT-file level 5 (no \"MATLAB 5.0 MAT-file\" header)", path);
    } else if (!(file[126] == 'I' && file[127] == 'M') && !(file[126] == 'M' && file[127] == 'I')) {
        rc = set_error(err, "%s: bad MAT endian indicator", path);
    }
    MatBuf b = {file, len, rc == 0 && file[126] == 'M'};
    for (size_t at = 128; rc == 0 && at < len;) {
        uint32_t type;
        const unsigned char *d;
        size_t size;
        if (mat_element(&b, &at, &type, &d, &size, path, err)) {
            rc = -1;
            break;
        }
        if (type == MI_COMPRESSED) {
            unsigned char *plain = NULL;
            size_t plain_len = 0;
            if (mat_inflate(d, size, &plain, &plain_len, path, err)) {
                rc = -1;
                break;
            }
            MatBuf inner = {plain, plain_len, b.swap};
            size_t inner_at = 0;
            if (mat_element(&inner, &inner_at, &type, &d, &size, path, err)) rc = -1;
            else if (type == MI_MATRIX) {
                MatBuf mb = {d, size, b.swap};
                rc = mat_matrix(&mb, name, data, count, path, err);
            }
            free(plain);
        } else if (type == MI_MATRIX) {
            MatBuf mb = {d, size, b.swap};
            rc = mat_matrix(&mb, name, data, count, path, err);
        }
        if (rc == 1) break;
    }
    free(file);
    if (rc == 0) return set_error(err, "%s: no array named %s", path, name);
    return rc < 0 ? -1 : 0;
}

/* ---- source lists ------------------------------------------------------- */

typedef struct {
    char **paths;
    int32_t *labels;
    int n, capacity;
    int num_classes;
} FileList;

static void list_add(FileList *l, const char *path, int32_t label) {
    if (l->n == l->capacity) {
        l->capacity = l->capacity ? 2 * l->capacity : 256;
        char **paths = realloc(l->paths, sizeof(char *) * (size_t)l->capacity);
        int32_t *labels = realloc(l->labels, sizeof(int32_t) * (size_t)l->capacity);
        if (!paths || !labels) {
            fprintf(stderr, "distilld: out of memory listing images\n");
            abort();
        }
        l->paths = paths;
        l->labels = labels;
    }
    l->paths[l->n] = strdup(path);
    if (!l->paths[l->n]) abort();
    l->labels[l->n++] = label;
}

static void list_free(FileList *l) {
    for (int i = 0; i < l->n; i++) free(l->paths[i]);
    free(l->paths);
    free(l->labels);
    memset(l, 0, sizeof *l);
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int is_jpeg_name(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (!strcasecmp(dot, ".jpg") || !strcasecmp(dot, ".jpeg"));
}

/* The sorted names in dir: sub-folders (want_dirs) or JPEG files. */
static int list_dir(const char *dir, int want_dirs, char ***names, int *count, char *err) {
    *names = NULL;
    *count = 0;
    DIR *d = opendir(dir);
    if (!d) return set_error(err, "%s: %s", dir, strerror(errno));
    char **list = NULL;
    int n = 0, cap = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.') continue;
        char path[4096];
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
        if (stat(path, &st) != 0) continue;
        if (want_dirs ? !S_ISDIR(st.st_mode) : !(S_ISREG(st.st_mode) && is_jpeg_name(e->d_name))) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 64;
            char **grown = realloc(list, sizeof(char *) * (size_t)cap);
            if (!grown) abort();
            list = grown;
        }
        list[n] = strdup(e->d_name);
        if (!list[n]) abort();
        n++;
    }
    closedir(d);
    qsort(list, (size_t)n, sizeof *list, compare_names);
    *names = list;
    *count = n;
    return 0;
}

static void free_names(char **names, int n) {
    for (int i = 0; i < n; i++) free(names[i]);
    free(names);
}

/* dir/<class>/<file>: every JPEG, classes sorted, files sorted within each. */
static int list_class_folders(const char *dir, FileList *out, char *err) {
    memset(out, 0, sizeof *out);
    char **classes;
    int num_classes;
    if (list_dir(dir, 1, &classes, &num_classes, err)) return -1;
    if (num_classes == 0) return set_error(err, "%s: no class sub-folders (expected one folder of JPEGs per class)", dir);
    int rc = 0;
    for (int c = 0; c < num_classes && rc == 0; c++) {
        char class_dir[4096];
        snprintf(class_dir, sizeof class_dir, "%s/%s", dir, classes[c]);
        char **files;
        int num_files;
        rc = list_dir(class_dir, 0, &files, &num_files, err);
        if (rc) break;
        if (num_files == 0) rc = set_error(err, "%s: class folder has no .jpg or .jpeg images", class_dir);
        for (int i = 0; i < num_files && rc == 0; i++) {
            char path[8192];
            snprintf(path, sizeof path, "%s/%s", class_dir, files[i]);
            list_add(out, path, c);
        }
        free_names(files, num_files);
    }
    free_names(classes, num_classes);
    out->num_classes = num_classes;
    if (rc) list_free(out);
    return rc;
}

/* ---- decoding ----------------------------------------------------------- */

/* The image at path decoded and resized so its short side is `side`, planar
 * RGB (3, *h, *w), malloc'd. */
static int decode_jpeg(tjhandle tj, const char *path, int side, uint8_t **pixels, int *out_h, int *out_w, char *err) {
    unsigned char *file;
    size_t len;
    if (read_file_all(path, &file, &len, err)) return -1;
    int width, height, subsamp, colorspace;
    if (len > 0x7fffffff || tjDecompressHeader3(tj, file, (unsigned long)len, &width, &height, &subsamp, &colorspace)) {
        free(file);
        return set_error(err, "%s: not a JPEG image (%s)", path, tjGetErrorStr2(tj));
    }
    /* the smallest DCT scale whose short side is still at least `side` */
    int num_factors;
    tjscalingfactor *factors = tjGetScalingFactors(&num_factors);
    int short_side = height < width ? height : width;
    tjscalingfactor best = {1, 1};
    for (int i = 0; i < num_factors; i++) {
        int scaled = TJSCALED(short_side, factors[i]), best_scaled = TJSCALED(short_side, best);
        if (scaled >= side && scaled < best_scaled) best = factors[i];
    }
    int w = TJSCALED(width, best), h = TJSCALED(height, best);
    int cmyk = colorspace == TJCS_CMYK || colorspace == TJCS_YCCK;
    int channels = cmyk ? 4 : 3;
    unsigned char *decoded = malloc((size_t)w * h * channels);
    if (!decoded) {
        free(file);
        return set_error(err, "%s: out of memory decoding a %dx%d image", path, width, height);
    }
    /* warnings (a truncated or damaged stream) count as errors */
    int rc = tjDecompress2(tj, file, (unsigned long)len, decoded, w, 0, h, cmyk ? TJPF_CMYK : TJPF_RGB,
                           TJFLAG_STOPONWARNING);
    free(file);
    if (rc != 0) {
        set_error(err, "%s: corrupt or truncated JPEG (%s)", path, tjGetErrorStr2(tj));
        free(decoded);
        return -1;
    }
    /* to planar floats in [0, 255]; CMYK as Adobe writes it (inverted):
     * R = C*K/255 and so on */
    const size_t plane = (size_t)w * h;
    float *src = malloc(sizeof(float) * 3 * plane);
    if (!src) {
        free(decoded);
        return set_error(err, "%s: out of memory", path);
    }
    for (size_t i = 0; i < plane; i++) {
        const unsigned char *px = decoded + i * channels;
        for (int c = 0; c < 3; c++)
            src[c * plane + i] = cmyk ? px[c] * px[3] * (1.0f / 255.0f) : px[c];
    }
    free(decoded);
    int dh = h <= w ? side : (int)(((long)side * h + w / 2) / w);
    int dw = h <= w ? (int)(((long)side * w + h / 2) / h) : side;
    float *dst = src;
    if (dh != h || dw != w) {
        dst = malloc(sizeof(float) * 3 * (size_t)dh * dw);
        if (!dst) {
            free(src);
            return set_error(err, "%s: out of memory", path);
        }
        resize_bilinear(dst, dh, dw, src, 3, h, w, (CropBox){0, 0, h, w});
        free(src);
    }
    uint8_t *out = malloc((size_t)3 * dh * dw);
    if (!out) {
        free(dst);
        return set_error(err, "%s: out of memory", path);
    }
    for (size_t i = 0; i < (size_t)3 * dh * dw; i++) {
        float v = dst[i] + 0.5f;
        out[i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
    }
    free(dst);
    *pixels = out;
    *out_h = dh;
    *out_w = dw;
    return 0;
}

/* ---- the cache ---------------------------------------------------------- */

#define CACHE_MAGIC "DSTLIMG1"

typedef struct {
    char magic[8];
    uint64_t fingerprint;
    uint32_t n, channels, num_classes, resize_small;
    uint64_t pixel_bytes;
} CacheHeader;

typedef struct {
    uint64_t offset; /* into the pixel block */
    uint32_t h, w;
    int32_t label;
    uint32_t reserved;
} CacheRecord;

static uint64_t fnv(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

/* What the cache must match: every file's path, size, mtime, label; the size. */
static int list_fingerprint(const FileList *l, int resize_small, uint64_t *out, char *err) {
    uint64_t h = fnv(0xcbf29ce484222325ULL, &resize_small, sizeof resize_small);
    for (int i = 0; i < l->n; i++) {
        struct stat st;
        if (stat(l->paths[i], &st) != 0) return set_error(err, "%s: %s", l->paths[i], strerror(errno));
        int64_t facts[4] = {(int64_t)st.st_size, (int64_t)st.st_mtim.tv_sec, (int64_t)st.st_mtim.tv_nsec, l->labels[i]};
        h = fnv(h, l->paths[i], strlen(l->paths[i]) + 1);
        h = fnv(h, facts, sizeof facts);
    }
    *out = h;
    return 0;
}

static void dataset_from_map(Dataset *out, void *map, size_t size) {
    const CacheHeader *hd = map;
    const CacheRecord *rec = (const CacheRecord *)(hd + 1);
    memset(out, 0, sizeof *out);
    out->n = (int)hd->n;
    out->c = (int)hd->channels;
    out->num_classes = (int)hd->num_classes;
    out->labels = xcalloc(out->n, sizeof *out->labels);
    out->offsets = xcalloc(out->n, sizeof *out->offsets);
    out->heights = xcalloc(out->n, sizeof *out->heights);
    out->widths = xcalloc(out->n, sizeof *out->widths);
    for (int i = 0; i < out->n; i++) {
        out->labels[i] = rec[i].label;
        out->offsets[i] = rec[i].offset;
        out->heights[i] = (int32_t)rec[i].h;
        out->widths[i] = (int32_t)rec[i].w;
        if (out->heights[i] > out->h) out->h = out->heights[i];
        if (out->widths[i] > out->w) out->w = out->widths[i];
    }
    out->pixels = (uint8_t *)(rec + out->n);
    out->map = map;
    out->map_size = size;
}

/* Maps a cache file if it is whole and matches the fingerprint: 1 if used. */
static int cache_open(const char *path, uint64_t fingerprint, int resize_small, Dataset *out) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || (size_t)st.st_size < sizeof(CacheHeader)) {
        fclose(f);
        return 0;
    }
    size_t size = (size_t)st.st_size;
    void *map = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fileno(f), 0);
    fclose(f);
    if (map == MAP_FAILED) return 0;
    const CacheHeader *hd = map;
    int ok = memcmp(hd->magic, CACHE_MAGIC, 8) == 0 && hd->fingerprint == fingerprint &&
             hd->resize_small == (uint32_t)resize_small && hd->channels == 3 && hd->n > 0 && hd->n < (1u << 28) &&
             hd->pixel_bytes < size && size == sizeof *hd + hd->n * sizeof(CacheRecord) + hd->pixel_bytes;
    const CacheRecord *rec = (const CacheRecord *)(hd + 1);
    for (uint32_t i = 0; ok && i < hd->n; i++) /* every record inside the pixel block */
        ok = rec[i].h > 0 && rec[i].w > 0 && rec[i].h < 65536 && rec[i].w < 65536 && rec[i].label >= 0 &&
             (uint32_t)rec[i].label < hd->num_classes && rec[i].offset <= hd->pixel_bytes &&
             (uint64_t)3 * rec[i].h * rec[i].w <= hd->pixel_bytes - rec[i].offset;
    if (!ok) {
        munmap(map, size);
        return 0;
    }
    dataset_from_map(out, map, size);
    return 1;
}

/* Decodes every image of the list (OpenMP threads, each its own decoder),
 * writes the cache file (if cache_path) and maps it, or keeps it in memory. */
static int decode_list(const FileList *l, int resize_small, uint64_t fingerprint, const char *cache_path,
                       const char *what, Dataset *out, char *err) {
    uint8_t **images = xcalloc(l->n, sizeof *images);
    int *hs = xcalloc(l->n, sizeof *hs), *ws = xcalloc(l->n, sizeof *ws);
    int failed = -1, done = 0;
    char first_err[ERR_LEN] = "";
    double start = now_seconds(), last_report = start;
#pragma omp parallel
    {
        tjhandle tj = tjInitDecompress();
        char my_err[ERR_LEN];
#pragma omp for schedule(dynamic, 8)
        for (int i = 0; i < l->n; i++) {
            int bad;
#pragma omp atomic read
            bad = failed;
            if (bad >= 0) continue;
            if (!tj) {
                set_error(my_err, "libjpeg-turbo: %s", tjGetErrorStr2(NULL));
            } else if (decode_jpeg(tj, l->paths[i], resize_small, &images[i], &hs[i], &ws[i], my_err) == 0) {
                int so_far;
#pragma omp atomic capture
                so_far = ++done;
                if (omp_get_thread_num() == 0 && now_seconds() - last_report > 5) { /* only thread 0 reports */
                    last_report = now_seconds();
                    fprintf(stderr, "decoding %s: %d / %d images\n", what, so_far, l->n);
                }
                continue;
            }
#pragma omp critical(decode_error)
            if (failed < 0 || i < failed) {
                failed = i;
                snprintf(first_err, sizeof first_err, "%s", my_err);
            }
        }
        if (tj) tjDestroy(tj);
    }
    int rc = 0;
    if (failed >= 0) rc = set_error(err, "%s", first_err);
    uint64_t pixel_bytes = 0;
    for (int i = 0; i < l->n && rc == 0; i++) pixel_bytes += (uint64_t)3 * hs[i] * ws[i];
    unsigned char *file = NULL;
    size_t size = sizeof(CacheHeader) + (size_t)l->n * sizeof(CacheRecord) + pixel_bytes;
    if (rc == 0 && !(file = malloc(size))) rc = set_error(err, "%s: out of memory for %zu bytes of pixels", what, size);
    if (rc == 0) {
        CacheHeader *hd = (CacheHeader *)file;
        memset(hd, 0, sizeof *hd);
        memcpy(hd->magic, CACHE_MAGIC, 8);
        hd->fingerprint = fingerprint;
        hd->n = (uint32_t)l->n;
        hd->channels = 3;
        hd->num_classes = (uint32_t)l->num_classes;
        hd->resize_small = (uint32_t)resize_small;
        hd->pixel_bytes = pixel_bytes;
        CacheRecord *rec = (CacheRecord *)(hd + 1);
        unsigned char *pixels = (unsigned char *)(rec + l->n);
        uint64_t at = 0;
        for (int i = 0; i < l->n; i++) {
            rec[i] = (CacheRecord){at, (uint32_t)hs[i], (uint32_t)ws[i], l->labels[i], 0};
            memcpy(pixels + at, images[i], (size_t)3 * hs[i] * ws[i]);
            at += (uint64_t)3 * hs[i] * ws[i];
        }
        fprintf(stderr, "decoded %s: %d images in %.1f s\n", what, l->n, now_seconds() - start);
    }
    for (int i = 0; i < l->n; i++) free(images[i]);
    free(images);
    free(hs);
    free(ws);
    if (rc) return -1;
    /* the written cache is mapped (page cache shared by every job); without
     * one, or if it cannot be written, the buffer itself is the dataset */
    if (cache_path) {
        char werr[ERR_LEN];
        if (write_file_atomic(cache_path, file, size, werr) == 0 &&
            cache_open(cache_path, fingerprint, resize_small, out)) {
            free(file);
            return 0;
        }
        fprintf(stderr, "warning: image cache %s not written: %s\n", cache_path, werr);
    }
    dataset_from_map(out, file, size);
    out->map = NULL; /* a malloc'd block: dataset_free frees it */
    out->owned_block = file;
    return 0;
}

static int make_dirs(const char *dir, char *err) {
    char path[4096];
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1; *p; p++) {
        if (*p != '/') continue;
        *p = 0;
        if (mkdir(path, 0755) != 0 && errno != EEXIST) return set_error(err, "%s: %s", path, strerror(errno));
        *p = '/';
    }
    if (mkdir(path, 0755) != 0 && errno != EEXIST) return set_error(err, "%s: %s", path, strerror(errno));
    return 0;
}

/* The dataset of a file list: from the cache when it matches, else decoded
 * (and cached). `key` names the source (root + split) for the cache file. */
static int load_list(const FileList *l, const char *key, int resize_small, const char *cache_dir, Dataset *out,
                     char *err) {
    memset(out, 0, sizeof *out);
    if (resize_small < 8 || resize_small > 4096)
        return set_error(err, "dataset.resize_small: %d is outside 8..4096", resize_small);
    uint64_t fingerprint = 0;
    if (list_fingerprint(l, resize_small, &fingerprint, err)) return -1;
    char cache_path[4096];
    if (cache_dir) {
        if (make_dirs(cache_dir, err)) return -1;
        char real[4096];
        const char *root = realpath(key, real) ? real : key;
        uint64_t h = fnv(0xcbf29ce484222325ULL, root, strlen(root) + 1);
        h = fnv(h, key + strlen(key) + 1, strlen(key + strlen(key) + 1) + 1); /* the split, after the root */
        h = fnv(h, &resize_small, sizeof resize_small);
        snprintf(cache_path, sizeof cache_path, "%s/images-%016llx.cache", cache_dir, (unsigned long long)h);
        if (cache_open(cache_path, fingerprint, resize_small, out)) return 0;
    }
    char what[4200];
    snprintf(what, sizeof what, "%s%s%s", key, key[strlen(key) + 1] ? " " : "", key + strlen(key) + 1);
    return decode_list(l, resize_small, fingerprint, cache_dir ? cache_path : NULL, what, out, err);
}

/* "root\0split\0": the cache key of a split of root. */
static void cache_key(char *key, size_t size, const char *root, const char *split) {
    int n = snprintf(key, size - 1, "%s", root);
    snprintf(key + n + 1, size - (size_t)n - 1, "%s", split ? split : "");
}

int image_folder_has_splits(const char *root, int *has_val) {
    char path[4096];
    struct stat st;
    int train, test;
    snprintf(path, sizeof path, "%s/train", root);
    train = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    snprintf(path, sizeof path, "%s/test", root);
    test = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    snprintf(path, sizeof path, "%s/val", root);
    if (has_val) *has_val = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    return train && test;
}

int dataset_load_folder(const char *root, const char *split, int resize_small, const char *cache_dir, Dataset *out,
                        char *err) {
    char dir[4096], key[4200];
    if (split) snprintf(dir, sizeof dir, "%s/%s", root, split);
    else snprintf(dir, sizeof dir, "%s", root);
    FileList l;
    if (list_class_folders(dir, &l, err)) return -1;
    cache_key(key, sizeof key, root, split);
    int rc = load_list(&l, key, resize_small, cache_dir, out, err);
    list_free(&l);
    return rc;
}

int dataset_load_folder_split(const char *root, int resize_small, const char *cache_dir, Dataset *train,
                              Dataset *test, char *err) {
    memset(train, 0, sizeof *train);
    memset(test, 0, sizeof *test);
    FileList all, parts[2] = {{0}, {0}};
    if (list_class_folders(root, &all, err)) return -1;
    /* per class: a seeded shuffle, the first 20 % (at least one) to test */
    for (int i = 0; i < all.n;) {
        int j = i;
        while (j < all.n && all.labels[j] == all.labels[i]) j++;
        int count = j - i, *order = xcalloc(count, sizeof *order);
        for (int k = 0; k < count; k++) order[k] = k;
        Rng rng = rng_derive(0, 0x5eed, (uint64_t)all.labels[i]);
        for (int k = count - 1; k > 0; k--) {
            int r = (int)rng_below(&rng, (uint32_t)k + 1), t = order[k];
            order[k] = order[r];
            order[r] = t;
        }
        int to_test = count < 2 ? 0 : (count + 2) / 5 > 0 ? (count + 2) / 5 : 1;
        char *is_test = xcalloc(count, 1);
        for (int k = 0; k < to_test; k++) is_test[order[k]] = 1;
        for (int k = 0; k < count; k++) list_add(&parts[is_test[k] ? 1 : 0], all.paths[i + k], all.labels[i]);
        free(is_test);
        free(order);
        i = j;
    }
    parts[0].num_classes = parts[1].num_classes = all.num_classes;
    list_free(&all);
    char key[4200];
    int rc = 0;
    if (parts[1].n == 0) rc = set_error(err, "%s: too few images to hold out a test split (2 per class at least)", root);
    if (rc == 0) {
        cache_key(key, sizeof key, root, "split-train");
        rc = load_list(&parts[0], key, resize_small, cache_dir, train, err);
    }
    if (rc == 0) {
        cache_key(key, sizeof key, root, "split-test");
        rc = load_list(&parts[1], key, resize_small, cache_dir, test, err);
    }
    list_free(&parts[0]);
    list_free(&parts[1]);
    if (rc) {
        dataset_free(train);
        dataset_free(test);
    }
    return rc;
}

/* ---- Flowers102 --------------------------------------------------------- */

int dataset_load_flowers102(const char *root, const char *split, int resize_small, const char *cache_dir,
                            Dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    const char *ids_name = !strcmp(split, "train") ? "trnid" : !strcmp(split, "val") ? "valid" : "tstid";
    char labels_path[4096], setid_path[4096];
    snprintf(labels_path, sizeof labels_path, "%s/imagelabels.mat", root);
    snprintf(setid_path, sizeof setid_path, "%s/setid.mat", root);
    double *labels = NULL, *ids = NULL;
    int64_t num_labels, num_ids;
    if (mat_read_array(labels_path, "labels", &labels, &num_labels, err)) return -1;
    if (mat_read_array(setid_path, ids_name, &ids, &num_ids, err)) {
        free(labels);
        return -1;
    }
    FileList l = {0};
    l.num_classes = 102;
    int rc = 0;
    for (int64_t i = 0; i < num_labels && rc == 0; i++)
        if (labels[i] != (int)labels[i] || labels[i] < 1 || labels[i] > 102)
            rc = set_error(err, "%s: label %g of image %lld is not in 1..102", labels_path, labels[i], (long long)i + 1);
    for (int64_t i = 0; i < num_ids && rc == 0; i++) {
        double id = ids[i];
        if (id != (int64_t)id || id < 1 || id > (double)num_labels) {
            rc = set_error(err, "%s: %s holds image number %g, outside 1..%lld", setid_path, ids_name, id,
                           (long long)num_labels);
            break;
        }
        char path[4200];
        snprintf(path, sizeof path, "%s/jpg/image_%05lld.jpg", root, (long long)id);
        list_add(&l, path, (int32_t)labels[(int64_t)id - 1] - 1);
    }
    free(labels);
    free(ids);
    if (rc == 0) {
        char key[4200];
        cache_key(key, sizeof key, root, split);
        rc = load_list(&l, key, resize_small, cache_dir, out, err);
    }
    list_free(&l);
    return rc;
}
