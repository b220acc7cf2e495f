/* formats.c - safetensors, .npy, .npz, IDX and IDX-backed datasets. See formats.h.
 *
 * How it works: each reader takes the file's header apart first (JSON via
 * jansson for safetensors, a small Python-literal parser for .npy, big-endian
 * u32 dims for IDX; for .npz the zip end record, then the central directory,
 * then each member's local header), checks every size and offset against the
 * real length of the file, and only then allocates and reads the data
 * straight into the output buffers (an .npz member is read or inflated
 * into one buffer, then parsed as a .npy held in memory). Multi-byte values
 * are stored little-endian (IDX dims: big-endian) and converted explicitly,
 * so the code is also right on a big-endian host. Writers build the whole
 * file in memory and hand it to write_file_atomic, so a crash never leaves a
 * half-written file. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* fseeko */
#endif
#include "formats.h"

#include "util.h"

#include <errno.h>
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

/* ---- byte order --------------------------------------------------------- */

static int host_is_little_endian(void) {
    const uint16_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static uint64_t load_le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

static void store_le64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t load_be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* Reverse each `width`-byte element in place. */
static void swap_elements(void *data, size_t count, size_t width) {
    if (width < 2) return;
    unsigned char *p = data;
    for (size_t i = 0; i < count; i++, p += width)
        for (size_t a = 0, b = width - 1; a < b; a++, b--) {
            unsigned char t = p[a];
            p[a] = p[b];
            p[b] = t;
        }
}

/* Convert elements between the file's byte order and the host's. */
static void to_or_from_file_order(void *data, size_t count, size_t width, int file_big_endian) {
    if (file_big_endian == host_is_little_endian()) swap_elements(data, count, width);
}

/* ---- small helpers ------------------------------------------------------ */

/* Opens a regular file for reading and reports its size. */
static FILE *open_regular(const char *path, int64_t *size, char *err) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        set_error(err, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        fclose(f);
        set_error(err, "%s is not a regular file", path);
        return NULL;
    }
    *size = (int64_t)st.st_size;
    return f;
}

/* "(3, 4)"-style text for messages. */
static void format_shape(char *out, size_t cap, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, cap, "[");
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, "%s%lld", i ? ", " : "", (long long)shape[i]);
    if (used < cap) snprintf(out + used, cap - used, "]");
}

/* Product of dims, or -1 if it would exceed `limit`. */
static int64_t checked_numel(int ndim, const int64_t *shape, int64_t limit) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0) return -1;
        if (shape[i] != 0 && n > limit / shape[i]) return -1;
        n *= shape[i];
    }
    return n;
}

static char *xstrdup(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = xcalloc(n, 1);
    memcpy(d, s, n);
    return d;
}

/* ---- safetensors ------------------------------------------------------- */

#define ST_MAX_HEADER (100LL * 1024 * 1024)

int64_t st_tensor_numel(const StTensor *t) {
    int64_t n = 1;
    for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
    return n;
}

void safetensors_free(StFile *f) {
    if (!f) return;
    for (int i = 0; i < f->count; i++) {
        free(f->tensors[i].name);
        free(f->tensors[i].data);
    }
    free(f->tensors);
    for (int i = 0; i < f->meta_count; i++) {
        free(f->meta_keys[i]);
        free(f->meta_values[i]);
    }
    free(f->meta_keys);
    free(f->meta_values);
    memset(f, 0, sizeof *f);
}

const StTensor *safetensors_find(const StFile *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

const char *safetensors_meta(const StFile *f, const char *key) {
    for (int i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta_keys[i], key) == 0) return f->meta_values[i];
    return NULL;
}

/* Where a tensor's bytes are in the data buffer; `index` is its position in
 * the header, used to keep header order among equal offsets. */
typedef struct {
    int64_t begin, end;
    int index;
} StSpan;

static int compare_spans(const void *a, const void *b) {
    const StSpan *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return x->index - y->index;
}

static int json_nonnegative_int(const json_t *v, int64_t *out) {
    if (!json_is_integer(v) || json_integer_value(v) < 0) return 0;
    *out = (int64_t)json_integer_value(v);
    return 1;
}

/* Validates one "name": {dtype, shape, data_offsets} entry against the size
 * of the data buffer and fills t (without data) and span. */
static int st_parse_entry(const char *path, const char *name, json_t *entry, int64_t data_size,
                          StTensor *t, StSpan *span, char *err) {
    if (!json_is_object(entry))
        return set_error(err, "%s: tensor '%s': header entry is not a JSON object", path, name);
    const char *key;
    json_t *value;
    json_object_foreach(entry, key, value) {
        if (strcmp(key, "dtype") != 0 && strcmp(key, "shape") != 0 && strcmp(key, "data_offsets") != 0)
            return set_error(err, "%s: tensor '%s': unknown key '%s' in header entry", path, name, key);
    }

    json_t *dtype = json_object_get(entry, "dtype");
    if (!dtype) return set_error(err, "%s: tensor '%s' has no dtype", path, name);
    if (!json_is_string(dtype)) return set_error(err, "%s: tensor '%s': dtype is not a string", path, name);
    if (strcmp(json_string_value(dtype), "F32") != 0)
        return set_error(err, "%s: tensor '%s' has dtype %s; only F32 is supported", path, name,
                         json_string_value(dtype));

    json_t *shape = json_object_get(entry, "shape");
    if (!shape) return set_error(err, "%s: tensor '%s' has no shape", path, name);
    if (!json_is_array(shape)) return set_error(err, "%s: tensor '%s': shape is not an array", path, name);
    if (json_array_size(shape) > FORMATS_MAX_DIMS)
        return set_error(err, "%s: tensor '%s' has %zu dimensions; at most %d are supported", path, name,
                         json_array_size(shape), FORMATS_MAX_DIMS);
    t->ndim = (int)json_array_size(shape);
    for (int i = 0; i < t->ndim; i++) {
        json_t *d = json_array_get(shape, (size_t)i);
        if (!json_is_integer(d))
            return set_error(err, "%s: tensor '%s': shape[%d] is not an integer", path, name, i);
        if (!json_nonnegative_int(d, &t->shape[i]))
            return set_error(err, "%s: tensor '%s': shape[%d] = %lld is negative", path, name, i,
                             (long long)json_integer_value(d));
    }
    int64_t numel = checked_numel(t->ndim, t->shape, INT64_MAX / 4);
    char shape_text[256];
    format_shape(shape_text, sizeof shape_text, t->ndim, t->shape);
    if (numel < 0) return set_error(err, "%s: tensor '%s': shape %s is too large", path, name, shape_text);

    json_t *offsets = json_object_get(entry, "data_offsets");
    if (!offsets) return set_error(err, "%s: tensor '%s' has no data_offsets", path, name);
    if (!json_is_array(offsets) || json_array_size(offsets) != 2)
        return set_error(err, "%s: tensor '%s': data_offsets is not an array [begin, end]", path, name);
    if (!json_nonnegative_int(json_array_get(offsets, 0), &span->begin) ||
        !json_nonnegative_int(json_array_get(offsets, 1), &span->end))
        return set_error(err, "%s: tensor '%s': data_offsets must be two non-negative integers", path, name);
    if (span->begin > span->end)
        return set_error(err, "%s: tensor '%s': data_offsets [%lld, %lld] has begin > end", path, name,
                         (long long)span->begin, (long long)span->end);
    if (span->end > data_size)
        return set_error(err,
                         "%s: tensor '%s': data_offsets [%lld, %lld] reach past the end of the %lld-byte "
                         "data buffer (file truncated?)",
                         path, name, (long long)span->begin, (long long)span->end, (long long)data_size);
    if (span->end - span->begin != 4 * numel)
        return set_error(err,
                         "%s: tensor '%s': data_offsets [%lld, %lld] hold %lld bytes but F32 shape %s "
                         "needs %lld",
                         path, name, (long long)span->begin, (long long)span->end,
                         (long long)(span->end - span->begin), shape_text, (long long)(4 * numel));
    return 0;
}

static int st_parse_metadata(const char *path, json_t *meta, StFile *out, char *err) {
    if (!json_is_object(meta)) return set_error(err, "%s: __metadata__ is not a JSON object", path);
    size_t n = json_object_size(meta);
    out->meta_keys = xcalloc(n, sizeof(char *));
    out->meta_values = xcalloc(n, sizeof(char *));
    const char *key;
    json_t *value;
    json_object_foreach(meta, key, value) {
        if (!json_is_string(value))
            return set_error(err, "%s: __metadata__ value for '%s' is not a string", path, key);
        out->meta_keys[out->meta_count] = xstrdup(key);
        out->meta_values[out->meta_count] = xstrdup(json_string_value(value));
        out->meta_count++;
    }
    return 0;
}

/* Parses and validates the header, then reads each tensor's bytes. */
static int st_read_open(const char *path, FILE *f, int64_t file_size, StFile *out, char *err) {
    if (file_size < 8)
        return set_error(err, "%s: not a safetensors file: only %lld bytes, shorter than the 8-byte header length",
                         path, (long long)file_size);
    unsigned char len_bytes[8];
    if (fread(len_bytes, 1, 8, f) != 8) return set_error(err, "%s: cannot read the header length", path);
    uint64_t header_len = load_le64(len_bytes);
    if (header_len > (uint64_t)ST_MAX_HEADER)
        return set_error(err, "%s: header length %llu is absurdly large (limit 100 MB); not a safetensors file?",
                         path, (unsigned long long)header_len);
    if ((int64_t)header_len > file_size - 8)
        return set_error(err, "%s: header length %llu is larger than the %lld bytes after it (file truncated?)",
                         path, (unsigned long long)header_len, (long long)(file_size - 8));
    int64_t data_size = file_size - 8 - (int64_t)header_len;

    char *header = xcalloc((size_t)header_len + 1, 1);
    if (fread(header, 1, (size_t)header_len, f) != (size_t)header_len) {
        free(header);
        return set_error(err, "%s: cannot read the %llu-byte header (file truncated?)", path,
                         (unsigned long long)header_len);
    }
    json_error_t jerr;
    json_t *root = json_loadb(header, (size_t)header_len, JSON_REJECT_DUPLICATES, &jerr);
    free(header);
    if (!root)
        return set_error(err, "%s: header is not valid JSON: %s (line %d, column %d)", path, jerr.text,
                         jerr.line, jerr.column);
    if (!json_is_object(root)) {
        json_decref(root);
        return set_error(err, "%s: header is not a JSON object", path);
    }

    int rc = 0;
    size_t entries = json_object_size(root);
    out->tensors = xcalloc(entries, sizeof(StTensor));
    StSpan *spans = xcalloc(entries, sizeof(StSpan));
    const char *key;
    json_t *value;
    json_object_foreach(root, key, value) {
        if (strcmp(key, "__metadata__") == 0) {
            rc = st_parse_metadata(path, value, out, err);
        } else {
            StTensor *t = &out->tensors[out->count];
            StSpan *s = &spans[out->count];
            s->index = out->count;
            rc = st_parse_entry(path, key, value, data_size, t, s, err);
            if (rc == 0) {
                t->name = xstrdup(key);
                out->count++;
            }
        }
        if (rc < 0) break;
    }
    json_decref(root);

    /* The tensors must tile the data buffer exactly, as the spec requires. */
    if (rc == 0) qsort(spans, (size_t)out->count, sizeof(StSpan), compare_spans);
    int64_t covered = 0;
    for (int i = 0; rc == 0 && i < out->count; i++) {
        const char *name = out->tensors[spans[i].index].name;
        if (spans[i].begin < covered)
            rc = set_error(err, "%s: tensor '%s' at data_offsets [%lld, %lld] overlaps tensor '%s'", path, name,
                           (long long)spans[i].begin, (long long)spans[i].end,
                           out->tensors[spans[i - 1].index].name);
        else if (spans[i].begin > covered)
            rc = set_error(err, "%s: unused gap of %lld bytes in the data buffer before tensor '%s'", path,
                           (long long)(spans[i].begin - covered), name);
        else
            covered = spans[i].end;
    }
    if (rc == 0 && covered != data_size)
        rc = set_error(err, "%s: %lld trailing bytes after the last tensor in the data buffer", path,
                       (long long)(data_size - covered));

    /* Read in file order, and keep the tensors in that order. */
    StTensor *ordered = xcalloc((size_t)out->count + 1, sizeof(StTensor));
    for (int i = 0; rc == 0 && i < out->count; i++) {
        StTensor *t = &ordered[i];
        *t = out->tensors[spans[i].index];
        int64_t numel = st_tensor_numel(t);
        t->data = malloc((size_t)numel * sizeof(float) + 1);
        if (!t->data) {
            rc = set_error(err, "%s: out of memory for tensor '%s'", path, t->name);
            break;
        }
        if (fseeko(f, (off_t)(8 + (int64_t)header_len + spans[i].begin), SEEK_SET) != 0 ||
            fread(t->data, sizeof(float), (size_t)numel, f) != (size_t)numel) {
            rc = set_error(err, "%s: data of tensor '%s' is truncated (file changed while reading?)", path,
                           t->name);
            break;
        }
        to_or_from_file_order(t->data, (size_t)numel, sizeof(float), 0);
    }
    if (rc == 0) {
        free(out->tensors);
        out->tensors = ordered;
    } else {
        for (int i = 0; i < out->count; i++) free(ordered[i].data);
        free(ordered);
    }
    free(spans);
    return rc;
}

int safetensors_read(const char *path, StFile *out, char *err) {
    memset(out, 0, sizeof *out);
    int64_t file_size;
    FILE *f = open_regular(path, &file_size, err);
    if (!f) return -1;
    int rc = st_read_open(path, f, file_size, out, err);
    fclose(f);
    if (rc < 0) safetensors_free(out);
    return rc;
}

/* Builds the JSON header; *data_bytes gets the size of the data buffer. */
static json_t *st_build_header(const char *path, const StFile *f, int64_t *data_bytes, char *err) {
    json_t *root = json_object();
    if (f->meta_count > 0) {
        json_t *meta = json_object();
        json_object_set_new(root, "__metadata__", meta);
        for (int i = 0; i < f->meta_count; i++) {
            const char *k = f->meta_keys[i], *v = f->meta_values[i];
            if (!k || !v) {
                set_error(err, "%s: metadata entry %d has a NULL key or value", path, i);
                goto fail;
            }
            if (json_object_get(meta, k)) {
                set_error(err, "%s: metadata key '%s' appears twice", path, k);
                goto fail;
            }
            json_t *s = json_string(v);
            if (!s || json_object_set_new(meta, k, s) != 0) {
                set_error(err, "%s: metadata '%s' is not valid UTF-8", path, k);
                goto fail;
            }
        }
    }
    int64_t offset = 0;
    for (int i = 0; i < f->count; i++) {
        const StTensor *t = &f->tensors[i];
        if (!t->name) {
            set_error(err, "%s: tensor %d has no name", path, i);
            goto fail;
        }
        if (strcmp(t->name, "__metadata__") == 0 || json_object_get(root, t->name)) {
            set_error(err, "%s: tensor name '%s' is reserved or appears twice", path, t->name);
            goto fail;
        }
        if (t->ndim < 0 || t->ndim > FORMATS_MAX_DIMS) {
            set_error(err, "%s: tensor '%s' has %d dimensions; 0..%d are supported", path, t->name, t->ndim,
                      FORMATS_MAX_DIMS);
            goto fail;
        }
        int64_t numel = checked_numel(t->ndim, t->shape, INT64_MAX / 8);
        if (numel < 0) {
            set_error(err, "%s: tensor '%s' has a negative or too large shape", path, t->name);
            goto fail;
        }
        if (numel > 0 && !t->data) {
            set_error(err, "%s: tensor '%s' has no data", path, t->name);
            goto fail;
        }
        json_t *shape = json_array();
        for (int d = 0; d < t->ndim; d++) json_array_append_new(shape, json_integer(t->shape[d]));
        json_t *entry = json_object();
        json_object_set_new(entry, "dtype", json_string("F32"));
        json_object_set_new(entry, "shape", shape);
        json_object_set_new(entry, "data_offsets",
                            json_pack("[II]", (json_int_t)offset, (json_int_t)(offset + 4 * numel)));
        if (json_object_set_new(root, t->name, entry) != 0) {
            set_error(err, "%s: tensor name '%s' is not valid UTF-8", path, t->name);
            goto fail;
        }
        if (offset > INT64_MAX / 2 - 4 * numel) {
            set_error(err, "%s: tensors too large to write", path);
            goto fail;
        }
        offset += 4 * numel;
    }
    *data_bytes = offset;
    return root;
fail:
    json_decref(root);
    return NULL;
}

int safetensors_write(const char *path, const StFile *f, char *err) {
    if (f->count < 0 || f->meta_count < 0 || (f->count > 0 && !f->tensors) ||
        (f->meta_count > 0 && (!f->meta_keys || !f->meta_values)))
        return set_error(err, "%s: invalid StFile (negative counts or NULL arrays)", path);
    int64_t data_bytes = 0;
    json_t *root = st_build_header(path, f, &data_bytes, err);
    if (!root) return -1;
    char *json = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(root);
    if (!json) return set_error(err, "%s: cannot encode the header", path);

    size_t json_len = strlen(json);
    size_t header_len = (json_len + 7) & ~(size_t)7; /* data then starts 8-byte aligned */
    size_t total = 8 + header_len + (size_t)data_bytes;
    unsigned char *buf = malloc(total);
    if (!buf) {
        free(json);
        return set_error(err, "%s: out of memory building a %zu-byte file", path, total);
    }
    store_le64(buf, header_len);
    memcpy(buf + 8, json, json_len);
    memset(buf + 8 + json_len, ' ', header_len - json_len);
    free(json);
    unsigned char *p = buf + 8 + header_len;
    for (int i = 0; i < f->count; i++) {
        size_t numel = (size_t)st_tensor_numel(&f->tensors[i]);
        if (numel == 0) continue;
        memcpy(p, f->tensors[i].data, numel * sizeof(float));
        to_or_from_file_order(p, numel, sizeof(float), 0);
        p += numel * sizeof(float);
    }
    int rc = write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

/* ---- .npy ---------------------------------------------------------------- */

#define NPY_MAX_HEADER (1 << 20)

typedef struct {
    char kind;      /* 'f' float, 'i' signed, 'u' unsigned, 'b' bool */
    int size;       /* bytes per element */
    int big_endian;
    char descr[64]; /* as written in the file, for messages */
} NpyType;

/* A cursor over the header: a Python dict literal such as
 * {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } */
typedef struct {
    const char *p, *end;
} PyCursor;

static void py_skip_space(PyCursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

static int py_accept(PyCursor *c, char ch) {
    py_skip_space(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A quoted string without escapes (all numpy ever writes here). */
static int py_string(PyCursor *c, char *out, size_t cap) {
    py_skip_space(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return 0;
    char quote = *c->p++;
    size_t n = 0;
    while (c->p < c->end && *c->p != quote) {
        if (*c->p == '\\' || n + 1 >= cap) return 0;
        out[n++] = *c->p++;
    }
    if (c->p >= c->end) return 0;
    c->p++;
    out[n] = 0;
    return 1;
}

static int py_word(PyCursor *c, const char *word) {
    py_skip_space(c);
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) return 0;
    c->p += n;
    return 1;
}

/* (), (5,), (3, 4) - old Python 2 files may write 3L. */
static int py_shape_tuple(PyCursor *c, int *ndim, int64_t *shape) {
    if (!py_accept(c, '(')) return 0;
    *ndim = 0;
    for (;;) {
        if (py_accept(c, ')')) return 1;
        py_skip_space(c);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9' || *ndim >= FORMATS_MAX_DIMS) return 0;
        int64_t v = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            if (v > (INT64_MAX - 9) / 10) return 0;
            v = v * 10 + (*c->p++ - '0');
        }
        if (c->p < c->end && *c->p == 'L') c->p++;
        shape[(*ndim)++] = v;
        if (!py_accept(c, ',')) return py_accept(c, ')');
    }
}

static int npy_parse_descr(const char *descr, NpyType *type) {
    memset(type, 0, sizeof *type);
    snprintf(type->descr, sizeof type->descr, "%s", descr);
    if (strlen(descr) != 3) return 0;
    char order = descr[0];
    type->kind = descr[1];
    type->size = descr[2] - '0';
    if (!strchr("fiub", type->kind) || (type->kind == 'f' && type->size != 4 && type->size != 8) ||
        (type->kind == 'b' && type->size != 1) ||
        (type->size != 1 && type->size != 2 && type->size != 4 && type->size != 8))
        return 0;
    if (order == '<' || order == '|')
        type->big_endian = 0;
    else if (order == '>')
        type->big_endian = 1;
    else if (order == '=')
        type->big_endian = !host_is_little_endian();
    else
        return 0;
    return 1;
}

static int npy_parse_header(const char *path, const char *text, size_t len, NpyType *type, int *ndim,
                            int64_t *shape, char *err) {
    PyCursor c = { text, text + len };
    int have_descr = 0, have_order = 0, have_shape = 0;
    if (!py_accept(&c, '{')) return set_error(err, "%s: .npy header is not a Python dict literal", path);
    while (!py_accept(&c, '}')) {
        char key[64];
        if (!py_string(&c, key, sizeof key) || !py_accept(&c, ':'))
            return set_error(err, "%s: cannot parse the .npy header dict", path);
        if (strcmp(key, "descr") == 0) {
            char descr[64];
            if (!py_string(&c, descr, sizeof descr))
                return set_error(err, "%s: .npy descr is not a simple type string (structured dtypes are "
                                      "not supported)", path);
            if (!npy_parse_descr(descr, type))
                return set_error(err, "%s: .npy dtype '%s' is not supported (use <f4, <f8, <i4, <i8, |u1 ...)",
                                 path, descr);
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0) {
            if (py_word(&c, "True"))
                return set_error(err, "%s: .npy array is in Fortran order (fortran_order: True); only C order "
                                      "is supported", path);
            if (!py_word(&c, "False"))
                return set_error(err, "%s: .npy fortran_order is not True or False", path);
            have_order = 1;
        } else if (strcmp(key, "shape") == 0) {
            if (!py_shape_tuple(&c, ndim, shape))
                return set_error(err, "%s: .npy shape is not a tuple of at most %d non-negative integers", path,
                                 FORMATS_MAX_DIMS);
            have_shape = 1;
        } else {
            return set_error(err, "%s: unknown key '%s' in the .npy header", path, key);
        }
        if (!py_accept(&c, ',')) {
            if (!py_accept(&c, '}')) return set_error(err, "%s: cannot parse the .npy header dict", path);
            break;
        }
    }
    py_skip_space(&c);
    if (c.p != c.end) return set_error(err, "%s: unexpected text after the .npy header dict", path);
    if (!have_descr || !have_order || !have_shape)
        return set_error(err, "%s: .npy header lacks '%s'", path,
                         !have_descr ? "descr" : !have_order ? "fortran_order" : "shape");
    return 0;
}

/* The fixed start of a .npy: magic, version and header length. `start`
 * holds the first `have` bytes (12, or all of a shorter file) of a file (or
 * zip member) of file_size bytes. `what` names it in messages. */
static int npy_prefix(const char *what, const unsigned char *start, size_t have, int64_t file_size, int64_t *prefix,
                      int64_t *header_len, char *err) {
    if (have < 10 || memcmp(start, "\x93NUMPY", 6) != 0)
        return set_error(err, "%s: not a .npy file (bad magic; expected \\x93NUMPY)", what);
    int major = start[6], minor = start[7];
    if (major == 1) {
        *header_len = start[8] | (start[9] << 8);
        *prefix = 10;
    } else if (major == 2 || major == 3) {
        if (have < 12) return set_error(err, "%s: .npy file truncated in its header", what);
        *header_len = (int64_t)start[8] | ((int64_t)start[9] << 8) | ((int64_t)start[10] << 16) |
                      ((int64_t)start[11] << 24);
        *prefix = 12;
    } else {
        return set_error(err, "%s: unsupported .npy format version %d.%d", what, major, minor);
    }
    if (*header_len > NPY_MAX_HEADER || *header_len > file_size - *prefix)
        return set_error(err, "%s: .npy header length %lld does not fit in the file (truncated?)", what,
                         (long long)*header_len);
    return 0;
}

/* The `available` bytes after the header must hold exactly the array. */
static int npy_check_data_size(const char *what, const NpyType *type, int ndim, const int64_t *shape,
                               int64_t available, int64_t *numel, char *err) {
    *numel = checked_numel(ndim, shape, INT64_MAX / 8);
    char shape_text[256];
    format_shape(shape_text, sizeof shape_text, ndim, shape);
    if (*numel < 0 || *numel * type->size > available)
        return set_error(err, "%s: .npy data truncated: shape %s of %s needs %lld bytes, file has %lld", what,
                         shape_text, type->descr, *numel < 0 ? -1LL : (long long)(*numel * type->size),
                         (long long)available);
    if (*numel * type->size < available)
        return set_error(err, "%s: %lld trailing bytes after the .npy data (shape %s of %s)", what,
                         (long long)(available - *numel * type->size), shape_text, type->descr);
    return 0;
}

/* A whole .npy held in memory (a zip member): validates it and points *raw
 * at its elements inside buf, converted in place to host byte order. */
static int npy_parse_memory(const char *what, unsigned char *buf, size_t len, NpyType *type, int *ndim,
                            int64_t *shape, unsigned char **raw, size_t *count, char *err) {
    int64_t prefix, header_len, numel;
    if (npy_prefix(what, buf, len < 12 ? len : 12, (int64_t)len, &prefix, &header_len, err) < 0) return -1;
    if (npy_parse_header(what, (const char *)buf + prefix, (size_t)header_len, type, ndim, shape, err) < 0)
        return -1;
    if (npy_check_data_size(what, type, *ndim, shape, (int64_t)len - prefix - header_len, &numel, err) < 0)
        return -1;
    *raw = buf + prefix + header_len;
    *count = (size_t)numel;
    to_or_from_file_order(*raw, *count, (size_t)type->size, type->big_endian);
    return 0;
}

/* Reads the header and the raw elements (converted to host byte order). */
static int npy_read_raw(const char *path, NpyType *type, int *ndim, int64_t *shape, void **raw, size_t *count,
                        char *err) {
    *raw = NULL;
    int64_t file_size;
    FILE *f = open_regular(path, &file_size, err);
    if (!f) return -1;
    int rc = -1;
    char *header = NULL;
    unsigned char pre[12];
    size_t got = fread(pre, 1, sizeof pre, f);
    int64_t prefix, header_len, numel;
    if (npy_prefix(path, pre, got, file_size, &prefix, &header_len, err) < 0) goto done;
    header = xcalloc((size_t)header_len + 1, 1);
    if (fseeko(f, (off_t)prefix, SEEK_SET) != 0 || fread(header, 1, (size_t)header_len, f) != (size_t)header_len) {
        set_error(err, "%s: cannot read the .npy header", path);
        goto done;
    }
    if (npy_parse_header(path, header, (size_t)header_len, type, ndim, shape, err) < 0) goto done;
    if (npy_check_data_size(path, type, *ndim, shape, file_size - prefix - header_len, &numel, err) < 0) goto done;
    *raw = malloc((size_t)(numel * type->size) + 1);
    if (!*raw) {
        set_error(err, "%s: out of memory for %lld elements", path, (long long)numel);
        goto done;
    }
    if (fread(*raw, (size_t)type->size, (size_t)numel, f) != (size_t)numel) {
        set_error(err, "%s: .npy data truncated while reading", path);
        goto done;
    }
    to_or_from_file_order(*raw, (size_t)numel, (size_t)type->size, type->big_endian);
    *count = (size_t)numel;
    rc = 0;
done:
    if (rc < 0) {
        free(*raw);
        *raw = NULL;
    }
    free(header);
    fclose(f);
    return rc;
}

/* Element i of a host-order raw buffer, as double / as int64 (bools 0/1). */
static double npy_element_double(const NpyType *t, const void *raw, size_t i) {
    const unsigned char *p = (const unsigned char *)raw + i * (size_t)t->size;
    switch (t->kind) {
    case 'f':
        if (t->size == 4) {
            float v;
            memcpy(&v, p, 4);
            return v;
        } else {
            double v;
            memcpy(&v, p, 8);
            return v;
        }
    case 'i':
        switch (t->size) {
        case 1: return (int8_t)p[0];
        case 2: { int16_t v; memcpy(&v, p, 2); return v; }
        case 4: { int32_t v; memcpy(&v, p, 4); return v; }
        default: { int64_t v; memcpy(&v, p, 8); return (double)v; }
        }
    case 'b': return p[0] != 0;
    default:
        switch (t->size) {
        case 1: return p[0];
        case 2: { uint16_t v; memcpy(&v, p, 2); return v; }
        case 4: { uint32_t v; memcpy(&v, p, 4); return v; }
        default: { uint64_t v; memcpy(&v, p, 8); return (double)v; }
        }
    }
}

int npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[FORMATS_MAX_DIMS], char *err) {
    *data = NULL;
    NpyType type;
    void *raw;
    size_t count;
    if (npy_read_raw(path, &type, ndim, shape, &raw, &count, err) < 0) return -1;
    if (type.kind == 'f' && type.size == 4) {
        *data = raw;
        return 0;
    }
    float *out = malloc(count * sizeof(float) + 1);
    if (!out) {
        free(raw);
        return set_error(err, "%s: out of memory converting %zu elements", path, count);
    }
    for (size_t i = 0; i < count; i++) out[i] = (float)npy_element_double(&type, raw, i);
    free(raw);
    *data = out;
    return 0;
}

int npy_read_i32(const char *path, int32_t **data, int *ndim, int64_t shape[FORMATS_MAX_DIMS], char *err) {
    *data = NULL;
    NpyType type;
    void *raw;
    size_t count;
    if (npy_read_raw(path, &type, ndim, shape, &raw, &count, err) < 0) return -1;
    if (type.kind == 'f') {
        free(raw);
        return set_error(err, "%s: dtype %s is not an integer type; expected integers (<i4, <i8, |u1 ...)", path,
                         type.descr);
    }
    int32_t *out = malloc(count * sizeof(int32_t) + 1);
    if (!out) {
        free(raw);
        return set_error(err, "%s: out of memory converting %zu elements", path, count);
    }
    for (size_t i = 0; i < count; i++) {
        const unsigned char *p = (const unsigned char *)raw + i * (size_t)type.size;
        int64_t v;
        if (type.kind == 'u' && type.size == 8) {
            uint64_t u;
            memcpy(&u, p, 8);
            v = u > (uint64_t)INT32_MAX ? INT64_MAX : (int64_t)u;
        } else if (type.kind == 'i' && type.size == 8) {
            memcpy(&v, p, 8);
        } else {
            v = (int64_t)npy_element_double(&type, raw, i); /* exact for <= 32-bit integers */
        }
        if (v < INT32_MIN || v > INT32_MAX) {
            free(raw);
            free(out);
            return set_error(err, "%s: element %zu does not fit in int32", path, i);
        }
        out[i] = (int32_t)v;
    }
    free(raw);
    *data = out;
    return 0;
}

static int npy_write(const char *path, const char *descr, const void *data, int ndim, const int64_t *shape,
                     char *err) {
    if (ndim < 0 || ndim > FORMATS_MAX_DIMS || (ndim > 0 && !shape))
        return set_error(err, "%s: cannot write a .npy with %d dimensions (0..%d)", path, ndim, FORMATS_MAX_DIMS);
    int64_t numel = checked_numel(ndim, shape, INT64_MAX / 8);
    if (numel < 0) return set_error(err, "%s: negative or too large shape", path);
    if (numel > 0 && !data) return set_error(err, "%s: no data to write", path);

    char dict[512];
    int n = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", descr);
    for (int i = 0; i < ndim; i++)
        n += snprintf(dict + n, sizeof dict - (size_t)n, "%s%lld", i ? ", " : "", (long long)shape[i]);
    n += snprintf(dict + n, sizeof dict - (size_t)n, "%s), }", ndim == 1 ? "," : "");

    /* magic(6) + version(2) + length(2) + dict + spaces + '\n' = multiple of 64 */
    size_t header_len = ((10 + (size_t)n + 1 + 63) / 64) * 64 - 10;
    size_t total = 10 + header_len + (size_t)numel * 4;
    unsigned char *buf = malloc(total);
    if (!buf) return set_error(err, "%s: out of memory building a %zu-byte file", path, total);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)(header_len & 0xff);
    buf[9] = (unsigned char)(header_len >> 8);
    memcpy(buf + 10, dict, (size_t)n);
    memset(buf + 10 + n, ' ', header_len - (size_t)n - 1);
    buf[10 + header_len - 1] = '\n';
    if (numel > 0) memcpy(buf + 10 + header_len, data, (size_t)numel * 4);
    to_or_from_file_order(buf + 10 + header_len, (size_t)numel, 4, 0);
    int rc = write_file_atomic(path, buf, total, err);
    free(buf);
    return rc;
}

int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape, char *err) {
    return npy_write(path, "<f4", data, ndim, shape, err);
}

int npy_write_i32(const char *path, const int32_t *data, int ndim, const int64_t *shape, char *err) {
    return npy_write(path, "<i4", data, ndim, shape, err);
}

/* ---- .npz (zip archives of .npy members) ---------------------------------- */

/* Zip records (PKWARE APPNOTE 4.3): signatures and fixed sizes. */
#define ZIP_LOCAL_SIG 0x04034b50u
#define ZIP_CENTRAL_SIG 0x02014b50u
#define ZIP_END_SIG 0x06054b50u
#define ZIP64_END_SIG 0x06064b50u
#define ZIP64_LOCATOR_SIG 0x07064b50u
#define ZIP_LOCAL_SIZE 30
#define ZIP_CENTRAL_SIZE 46
#define ZIP_END_SIZE 22
#define ZIP64_END_SIZE 56
#define ZIP64_LOCATOR_SIZE 20
#define ZIP_MAX_COMMENT 65535
#define ZIP_FLAG_ENCRYPTED 0x0001
#define ZIP_FLAG_DATA_DESCRIPTOR 0x0008
#define ZIP_NO_VALUE32 0xFFFFFFFFu /* "see the zip64 extra field" */
/* deflate never expands data by more than about 1032:1 */
#define ZIP_MAX_INFLATE_RATIO 1100

static uint16_t load_le16(const unsigned char *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t load_le32(const unsigned char *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

typedef struct {
    char *name; /* as stored in the central directory */
    int method, flags;
    uint32_t crc;
    uint64_t compressed, uncompressed, local_offset;
} ZipMember;

int npz_is_zip(const char *path) {
    unsigned char magic[4] = { 0 };
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    size_t n = fread(magic, 1, 4, f);
    fclose(f);
    /* PK\3\4 starts a member; PK\5\6 is the whole of an archive with none */
    return n == 4 && magic[0] == 'P' && magic[1] == 'K' &&
           ((magic[2] == 3 && magic[3] == 4) || (magic[2] == 5 && magic[3] == 6));
}

/* Reads len bytes at offset; callers have checked the range against the file. */
static int read_at(FILE *f, const char *path, uint64_t offset, void *buf, size_t len, char *err) {
    if (fseeko(f, (off_t)offset, SEEK_SET) != 0 || fread(buf, 1, len, f) != len)
        return set_error(err, "%s: cannot read %zu bytes at offset %llu (file truncated or changed while reading?)",
                         path, len, (unsigned long long)offset);
    return 0;
}

/* Walks an extra field and applies the zip64 extended information record
 * (id 0x0001): it holds, in this order, the 8-byte values of whichever of
 * uncompressed size, compressed size and local header offset were stored as
 * 0xFFFFFFFF (offset may be NULL in a local header, which has none). */
static int zip_apply_zip64_extra(const char *path, const char *member, const unsigned char *extra, size_t len,
                                 uint64_t *uncompressed, uint64_t *compressed, uint64_t *offset, char *err) {
    size_t pos = 0;
    while (pos < len) {
        if (len - pos < 4)
            return set_error(err, "%s: member %s: extra field is malformed (%zu stray bytes at its end)", path, member,
                             len - pos);
        unsigned id = load_le16(extra + pos), size = load_le16(extra + pos + 2);
        if (size > len - pos - 4)
            return set_error(err, "%s: member %s: extra field record 0x%04x of %u bytes overruns the %zu-byte extra "
                                  "field", path, member, id, size, len);
        if (id == 0x0001) {
            const unsigned char *p = extra + pos + 4;
            size_t left = size;
            uint64_t *fields[3] = { uncompressed, compressed, offset };
            for (int i = 0; i < 3; i++) {
                if (!fields[i] || *fields[i] != ZIP_NO_VALUE32) continue;
                if (left < 8)
                    return set_error(err, "%s: member %s: zip64 extra field is too short for the sizes and offset "
                                          "marked 0xFFFFFFFF", path, member);
                *fields[i] = load_le64(p);
                p += 8;
                left -= 8;
            }
        }
        pos += 4 + size;
    }
    return 0;
}

/* Finds the end-of-central-directory record (and the zip64 one if there is
 * one) and reports where the central directory is. *limit is where the
 * directory must end (the start of the end records). */
static int zip_find_directory(const char *path, FILE *f, int64_t file_size, uint64_t *cd_offset, uint64_t *cd_size,
                              uint64_t *entries, uint64_t *limit, char *err) {
    if (file_size < ZIP_END_SIZE)
        return set_error(err, "%s: not a zip (.npz) file: only %lld bytes, too short for a zip directory (truncated?)",
                         path, (long long)file_size);
    size_t tail_len = (size_t)(file_size < ZIP_END_SIZE + ZIP_MAX_COMMENT ? file_size : ZIP_END_SIZE + ZIP_MAX_COMMENT);
    uint64_t tail_start = (uint64_t)file_size - tail_len;
    unsigned char *tail = xcalloc(tail_len, 1);
    if (read_at(f, path, tail_start, tail, tail_len, err) < 0) {
        free(tail);
        return -1;
    }
    /* the last signature whose comment runs exactly to the end of the file */
    size_t at = tail_len - ZIP_END_SIZE;
    int found = 0;
    for (;; at--) {
        if (load_le32(tail + at) == ZIP_END_SIG && at + ZIP_END_SIZE + load_le16(tail + at + 20) == tail_len) {
            found = 1;
            break;
        }
        if (at == 0) break;
    }
    if (!found) {
        free(tail);
        return set_error(err, "%s: no zip end-of-central-directory record at the end of the file (truncated, or not a "
                              "zip file)", path);
    }
    const unsigned char *end = tail + at;
    unsigned disk = load_le16(end + 4), cd_disk = load_le16(end + 6);
    uint64_t disk_entries = load_le16(end + 8);
    *entries = load_le16(end + 10);
    *cd_size = load_le32(end + 12);
    *cd_offset = load_le32(end + 16);
    *limit = tail_start + at;
    free(tail);

    unsigned char loc[ZIP64_LOCATOR_SIZE];
    if (*limit >= ZIP64_LOCATOR_SIZE && read_at(f, path, *limit - ZIP64_LOCATOR_SIZE, loc, sizeof loc, err) == 0 &&
        load_le32(loc) == ZIP64_LOCATOR_SIG) {
        uint64_t z64_offset = load_le64(loc + 8);
        if (load_le32(loc + 4) != 0 || load_le32(loc + 16) > 1)
            return set_error(err, "%s: multi-disk (split) zip archives are not supported", path);
        if (z64_offset > *limit - ZIP64_LOCATOR_SIZE || *limit - ZIP64_LOCATOR_SIZE - z64_offset < ZIP64_END_SIZE)
            return set_error(err, "%s: zip64 end-of-central-directory locator points at offset %llu, outside the file's "
                                  "%llu bytes before it", path, (unsigned long long)z64_offset,
                             (unsigned long long)(*limit - ZIP64_LOCATOR_SIZE));
        unsigned char z[ZIP64_END_SIZE];
        if (read_at(f, path, z64_offset, z, sizeof z, err) < 0) return -1;
        if (load_le32(z) != ZIP64_END_SIG)
            return set_error(err, "%s: no zip64 end-of-central-directory record at offset %llu (bad signature)", path,
                             (unsigned long long)z64_offset);
        disk = load_le32(z + 16);
        cd_disk = load_le32(z + 20);
        disk_entries = load_le64(z + 24);
        *entries = load_le64(z + 32);
        *cd_size = load_le64(z + 40);
        *cd_offset = load_le64(z + 48);
        *limit = z64_offset;
    }
    if (disk != 0 || cd_disk != 0 || disk_entries != *entries)
        return set_error(err, "%s: multi-disk (split) zip archives are not supported", path);
    if (*cd_offset > *limit || *cd_size > *limit - *cd_offset)
        return set_error(err, "%s: central directory at offset %llu, %llu bytes, reaches past its end record at %llu "
                              "(truncated or corrupt zip file)", path, (unsigned long long)*cd_offset,
                         (unsigned long long)*cd_size, (unsigned long long)*limit);
    if (*entries > *cd_size / ZIP_CENTRAL_SIZE)
        return set_error(err, "%s: zip directory claims %llu members, more than its %llu bytes can hold", path,
                         (unsigned long long)*entries, (unsigned long long)*cd_size);
    return 0;
}

/* Parses the central directory into members[entries]. */
static int zip_parse_directory(const char *path, const unsigned char *cd, uint64_t cd_size, uint64_t entries,
                               ZipMember *members, char *err) {
    uint64_t pos = 0;
    for (uint64_t k = 0; k < entries; k++) {
        ZipMember *m = &members[k];
        if (cd_size - pos < ZIP_CENTRAL_SIZE || load_le32(cd + pos) != ZIP_CENTRAL_SIG)
            return set_error(err, "%s: central directory entry %llu of %llu is missing or has a bad signature", path,
                             (unsigned long long)k + 1, (unsigned long long)entries);
        const unsigned char *h = cd + pos;
        size_t name_len = load_le16(h + 28), extra_len = load_le16(h + 30), comment_len = load_le16(h + 32);
        if (cd_size - pos - ZIP_CENTRAL_SIZE < name_len + extra_len + comment_len)
            return set_error(err, "%s: central directory entry %llu overruns the directory", path,
                             (unsigned long long)k + 1);
        const unsigned char *name = h + ZIP_CENTRAL_SIZE;
        if (name_len == 0 || memchr(name, 0, name_len))
            return set_error(err, "%s: central directory entry %llu has an empty name or one with a NUL byte", path,
                             (unsigned long long)k + 1);
        m->name = xcalloc(name_len + 1, 1);
        memcpy(m->name, name, name_len);
        m->flags = load_le16(h + 8);
        m->method = load_le16(h + 10);
        m->crc = load_le32(h + 16);
        m->compressed = load_le32(h + 20);
        m->uncompressed = load_le32(h + 24);
        m->local_offset = load_le32(h + 42);
        unsigned start_disk = load_le16(h + 34);
        if (zip_apply_zip64_extra(path, m->name, name + name_len, extra_len, &m->uncompressed, &m->compressed,
                                  &m->local_offset, err) < 0)
            return -1;
        if (start_disk != 0 && start_disk != 0xFFFF)
            return set_error(err, "%s: member %s is on disk %u; multi-disk zip archives are not supported", path,
                             m->name, start_disk);
        if (m->flags & ZIP_FLAG_ENCRYPTED)
            return set_error(err, "%s: member %s is encrypted; encrypted archives are not supported", path, m->name);
        if (m->method != 0 && m->method != 8)
            return set_error(err, "%s: member %s uses compression method %d; only 0 (stored) and 8 (deflated) are "
                                  "supported", path, m->name, m->method);
        if (name_len <= 4 || strcmp(m->name + name_len - 4, ".npy") != 0)
            return set_error(err, "%s: member %s is not a .npy array (an .npz holds only NAME.npy members)", path,
                             m->name);
        for (uint64_t j = 0; j < k; j++)
            if (strcmp(members[j].name, m->name) == 0)
                return set_error(err, "%s: member %s appears twice in the zip directory", path, m->name);
        pos += ZIP_CENTRAL_SIZE + name_len + extra_len + comment_len;
    }
    if (pos != cd_size)
        return set_error(err, "%s: %llu unexpected bytes after the %llu entries of the zip central directory", path,
                         (unsigned long long)(cd_size - pos), (unsigned long long)entries);
    return 0;
}

/* Checks a member's local header against its directory entry and returns
 * where its data starts. Members must lie before the central directory. */
static int zip_member_data_offset(const char *path, FILE *f, const ZipMember *m, uint64_t cd_offset,
                                  uint64_t *data_offset, char *err) {
    unsigned char h[ZIP_LOCAL_SIZE];
    if (m->local_offset > cd_offset || cd_offset - m->local_offset < ZIP_LOCAL_SIZE)
        return set_error(err, "%s: member %s: local header offset %llu is outside the %llu bytes before the central "
                              "directory", path, m->name, (unsigned long long)m->local_offset,
                         (unsigned long long)cd_offset);
    if (read_at(f, path, m->local_offset, h, sizeof h, err) < 0) return -1;
    if (load_le32(h) != ZIP_LOCAL_SIG)
        return set_error(err, "%s: member %s: no local file header at offset %llu (bad signature)", path, m->name,
                         (unsigned long long)m->local_offset);
    size_t name_len = load_le16(h + 26), extra_len = load_le16(h + 28);
    uint64_t header_end = m->local_offset + ZIP_LOCAL_SIZE + name_len + extra_len;
    if (header_end > cd_offset)
        return set_error(err, "%s: member %s: local header runs into the central directory", path, m->name);
    unsigned char *rest = xcalloc(name_len + extra_len + 1, 1);
    int rc = read_at(f, path, m->local_offset + ZIP_LOCAL_SIZE, rest, name_len + extra_len, err);
    if (rc == 0 && (name_len != strlen(m->name) || memcmp(rest, m->name, name_len) != 0))
        rc = set_error(err, "%s: member %s: its local header names it %.*s", path, m->name, (int)name_len, rest);
    if (rc == 0 && load_le16(h + 8) != m->method)
        rc = set_error(err, "%s: member %s: local header says compression method %d, the directory %d", path,
                       m->name, load_le16(h + 8), m->method);
    uint64_t compressed = load_le32(h + 18), uncompressed = load_le32(h + 22);
    if (rc == 0)
        rc = zip_apply_zip64_extra(path, m->name, rest + name_len, extra_len, &uncompressed, &compressed, NULL, err);
    /* with a data descriptor (flag bit 3) the local CRC and sizes may be zero */
    if (rc == 0 && !(load_le16(h + 6) & ZIP_FLAG_DATA_DESCRIPTOR) &&
        (load_le32(h + 14) != m->crc || compressed != m->compressed || uncompressed != m->uncompressed))
        rc = set_error(err, "%s: member %s: local header (CRC %08x, %llu -> %llu bytes) disagrees with the central "
                            "directory (CRC %08x, %llu -> %llu bytes)", path, m->name, load_le32(h + 14),
                       (unsigned long long)compressed, (unsigned long long)uncompressed, m->crc,
                       (unsigned long long)m->compressed, (unsigned long long)m->uncompressed);
    free(rest);
    if (rc < 0) return -1;
    if (m->compressed > cd_offset - header_end)
        return set_error(err, "%s: member %s: its %llu bytes of data at offset %llu reach past the central directory "
                              "(truncated or corrupt zip file)", path, m->name, (unsigned long long)m->compressed,
                         (unsigned long long)header_end);
    *data_offset = header_end;
    return 0;
}

static uint32_t crc32_of(const unsigned char *data, size_t len) {
    uLong crc = crc32(0L, Z_NULL, 0);
    while (len > 0) {
        uInt chunk = len > (1u << 30) ? (1u << 30) : (uInt)len;
        crc = crc32(crc, data, chunk);
        data += chunk;
        len -= chunk;
    }
    return (uint32_t)crc;
}

/* Raw deflate (no zlib or gzip wrapper) from `in` into exactly out_len bytes. */
static int zip_inflate(const char *path, const char *member, const unsigned char *in, size_t in_len,
                       unsigned char *out, size_t out_len, char *err) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (inflateInit2(&z, -15) != Z_OK) return set_error(err, "%s: cannot initialise zlib", path);
    int zrc = Z_OK;
    size_t in_left = in_len, out_left = out_len + 1; /* one spare byte to notice too much output */
    z.next_in = (unsigned char *)in;
    z.next_out = out;
    while (zrc == Z_OK) {
        if (z.avail_in == 0 && in_left > 0) {
            z.avail_in = in_left > (1u << 30) ? (1u << 30) : (uInt)in_left;
            in_left -= z.avail_in;
        }
        if (z.avail_out == 0 && out_left > 0) {
            z.avail_out = out_left > (1u << 30) ? (1u << 30) : (uInt)out_left;
            out_left -= z.avail_out;
        }
        zrc = inflate(&z, Z_NO_FLUSH);
        if (zrc == Z_BUF_ERROR && (z.avail_in > 0 || in_left > 0) && (z.avail_out > 0 || out_left > 0)) zrc = Z_OK;
    }
    size_t produced = (size_t)z.total_out, consumed = (size_t)z.total_in;
    const char *msg = z.msg ? z.msg : zError(zrc);
    inflateEnd(&z);
    if (produced > out_len)
        return set_error(err, "%s: member %s: deflate data inflates to more than the %zu bytes the zip directory says",
                         path, member, out_len);
    if (zrc == Z_DATA_ERROR || zrc == Z_NEED_DICT)
        return set_error(err, "%s: member %s: corrupt deflate data: %s", path, member, msg);
    if (zrc != Z_STREAM_END)
        return set_error(err, "%s: member %s: deflate data ends early after %zu of %zu bytes (truncated?)", path,
                         member, consumed, in_len);
    if (produced != out_len)
        return set_error(err, "%s: member %s: deflate data inflates to %zu bytes, the zip directory says %zu", path,
                         member, produced, out_len);
    if (consumed != in_len)
        return set_error(err, "%s: member %s: %zu bytes after the end of its deflate data", path, member,
                         in_len - consumed);
    return 0;
}

/* Reads one member: decompresses, checks its CRC-32 and parses it as a .npy
 * into t (float32, named without ".npy"). */
static int npz_read_member(const char *path, FILE *f, const ZipMember *m, uint64_t cd_offset, StTensor *t,
                           char *err) {
    uint64_t data_offset = 0;
    if (zip_member_data_offset(path, f, m, cd_offset, &data_offset, err) < 0) return -1;
    if (m->method == 0 && m->compressed != m->uncompressed)
        return set_error(err, "%s: member %s is stored (not compressed) but its sizes differ: %llu and %llu bytes", path,
                         m->name, (unsigned long long)m->compressed, (unsigned long long)m->uncompressed);
    if (m->method == 8 && m->uncompressed / ZIP_MAX_INFLATE_RATIO > m->compressed)
        return set_error(err, "%s: member %s claims %llu bytes from %llu deflated ones, more than deflate can produce",
                         path, m->name, (unsigned long long)m->uncompressed, (unsigned long long)m->compressed);
    if (m->uncompressed > (uint64_t)SIZE_MAX / 2)
        return set_error(err, "%s: member %s is too large (%llu bytes)", path, m->name,
                         (unsigned long long)m->uncompressed);
    size_t len = (size_t)m->uncompressed;
    unsigned char *buf = malloc(len + 1), *packed = NULL;
    if (!buf) return set_error(err, "%s: member %s: out of memory for %zu bytes", path, m->name, len);
    int rc;
    if (m->method == 0) {
        rc = read_at(f, path, data_offset, buf, len, err);
    } else {
        packed = malloc((size_t)m->compressed + 1);
        rc = packed ? read_at(f, path, data_offset, packed, (size_t)m->compressed, err)
                    : set_error(err, "%s: member %s: out of memory for %llu bytes", path, m->name,
                                (unsigned long long)m->compressed);
        if (rc == 0) rc = zip_inflate(path, m->name, packed, (size_t)m->compressed, buf, len, err);
        free(packed);
    }
    uint32_t crc = rc == 0 ? crc32_of(buf, len) : 0;
    if (rc == 0 && crc != m->crc)
        rc = set_error(err, "%s: member %s: CRC-32 mismatch (directory %08x, data %08x): the archive is corrupt", path,
                       m->name, m->crc, crc);

    char what[ERR_LEN];
    snprintf(what, sizeof what, "%s: member %s", path, m->name);
    NpyType type;
    unsigned char *raw = NULL;
    size_t count = 0;
    if (rc == 0) rc = npy_parse_memory(what, buf, len, &type, &t->ndim, t->shape, &raw, &count, err);
    if (rc == 0 && type.kind == 'f' && type.size == 4) {
        /* already float32 in host order: move it to the front and keep the buffer */
        memmove(buf, raw, count * sizeof(float));
        float *shrunk = realloc(buf, count * sizeof(float) + 1);
        t->data = shrunk ? shrunk : (float *)buf;
        buf = NULL;
    } else if (rc == 0) {
        t->data = malloc(count * sizeof(float) + 1);
        if (!t->data)
            rc = set_error(err, "%s: out of memory converting %zu elements", what, count);
        for (size_t i = 0; rc == 0 && i < count; i++) t->data[i] = (float)npy_element_double(&type, raw, i);
    }
    free(buf);
    if (rc < 0) return -1;
    size_t name_len = strlen(m->name) - 4;
    t->name = xcalloc(name_len + 1, 1);
    memcpy(t->name, m->name, name_len);
    return 0;
}

int npz_read(const char *path, StFile *out, char *err) {
    memset(out, 0, sizeof *out);
    int64_t file_size;
    FILE *f = open_regular(path, &file_size, err);
    if (!f) return -1;
    unsigned char magic[4] = { 0 };
    size_t got = fread(magic, 1, 4, f);
    int rc = 0;
    if (got < 4 || memcmp(magic, "PK", 2) != 0 || !((magic[2] == 3 && magic[3] == 4) || (magic[2] == 5 && magic[3] == 6)))
        rc = set_error(err, "%s: not a zip (.npz) file (bad magic %02x %02x %02x %02x; expected PK\\3\\4)", path,
                       magic[0], magic[1], magic[2], magic[3]);
    uint64_t cd_offset = 0, cd_size = 0, entries = 0, limit = 0;
    if (rc == 0) rc = zip_find_directory(path, f, file_size, &cd_offset, &cd_size, &entries, &limit, err);
    unsigned char *cd = NULL;
    ZipMember *members = NULL;
    if (rc == 0) {
        cd = xcalloc((size_t)cd_size + 1, 1);
        members = xcalloc((size_t)entries + 1, sizeof *members);
        rc = read_at(f, path, cd_offset, cd, (size_t)cd_size, err);
    }
    if (rc == 0) rc = zip_parse_directory(path, cd, cd_size, entries, members, err);
    if (rc == 0) out->tensors = xcalloc((size_t)entries + 1, sizeof(StTensor));
    for (uint64_t k = 0; rc == 0 && k < entries; k++) {
        rc = npz_read_member(path, f, &members[k], cd_offset, &out->tensors[k], err);
        if (rc == 0) out->count++;
    }
    for (uint64_t k = 0; members && k < entries; k++) free(members[k].name);
    free(members);
    free(cd);
    fclose(f);
    if (rc < 0) safetensors_free(out);
    return rc;
}

/* ---- IDX ------------------------------------------------------------------ */

/* A byte stream over a plain file or a gzip file (possibly several members). */
typedef struct {
    FILE *file;
    const char *path;
    int gzip;
    int z_ready;       /* inflateInit2 done */
    int member_ended;  /* inflate returned Z_STREAM_END for the current member */
    z_stream z;
    unsigned char in[1 << 16];
} ByteStream;

static int stream_refill(ByteStream *s, char *err) {
    size_t n = fread(s->in, 1, sizeof s->in, s->file);
    if (n == 0 && ferror(s->file)) return set_error(err, "%s: read error: %s", s->path, strerror(errno));
    s->z.next_in = s->in;
    s->z.avail_in = (uInt)n;
    return 0;
}

/* Reads up to `want` bytes; *got < want only at the end of the data. */
static int stream_read(ByteStream *s, void *buf, size_t want, size_t *got, char *err) {
    if (!s->gzip) {
        *got = fread(buf, 1, want, s->file);
        if (*got < want && ferror(s->file)) return set_error(err, "%s: read error: %s", s->path, strerror(errno));
        return 0;
    }
    s->z.next_out = buf;
    size_t left = want;
    while (left > 0) {
        uInt chunk = left > (1u << 30) ? (1u << 30) : (uInt)left;
        s->z.avail_out = chunk;
        while (s->z.avail_out > 0) {
            if (s->z.avail_in == 0 && stream_refill(s, err) < 0) return -1;
            if (s->member_ended) {
                if (s->z.avail_in == 0) break; /* clean end of the last member */
                if (s->z.next_in[0] != 0x1f)
                    return set_error(err, "%s: trailing garbage after the end of the gzip stream", s->path);
                inflateReset(&s->z);
                s->member_ended = 0;
            }
            if (s->z.avail_in == 0)
                return set_error(err, "%s: gzip stream truncated (compressed data ends early)", s->path);
            int zrc = inflate(&s->z, Z_NO_FLUSH);
            if (zrc == Z_STREAM_END)
                s->member_ended = 1;
            else if (zrc != Z_OK && zrc != Z_BUF_ERROR)
                return set_error(err, "%s: corrupt gzip data: %s", s->path, s->z.msg ? s->z.msg : zError(zrc));
        }
        size_t produced = chunk - s->z.avail_out;
        left -= produced;
        if (s->z.avail_out > 0) break;
    }
    *got = want - left;
    return 0;
}

static const char *idx_type_name(int type) {
    switch (type) {
    case 0x08: return "unsigned byte";
    case 0x09: return "signed byte";
    case 0x0B: return "short";
    case 0x0C: return "int";
    case 0x0D: return "float";
    case 0x0E: return "double";
    default: return "unknown";
    }
}

static int idx_read_stream(ByteStream *s, int64_t file_size, IdxFile *out, char *err) {
    const char *path = s->path;
    unsigned char head[4 + 4 * IDX_MAX_DIMS];
    size_t got;
    if (stream_read(s, head, 4, &got, err) < 0) return -1;
    if (got < 4) return set_error(err, "%s: truncated: %zu bytes, too short for an IDX header", path, got);
    if (head[0] != 0 || head[1] != 0)
        return set_error(err, "%s: not an IDX file: bad magic %02x %02x %02x %02x (expected 00 00 08 ndim)", path,
                         head[0], head[1], head[2], head[3]);
    if (head[2] != 0x08)
        return set_error(err, "%s: IDX element type 0x%02x (%s) is not supported; only 0x08 (unsigned byte)", path,
                         head[2], idx_type_name(head[2]));
    int ndim = head[3];
    if (ndim < 1 || ndim > IDX_MAX_DIMS)
        return set_error(err, "%s: IDX file has %d dimensions; 1..%d are supported", path, ndim, IDX_MAX_DIMS);
    if (stream_read(s, head + 4, 4 * (size_t)ndim, &got, err) < 0) return -1;
    if (got < 4 * (size_t)ndim) return set_error(err, "%s: truncated inside the IDX dimensions", path);

    out->ndim = ndim;
    for (int i = 0; i < ndim; i++) out->dims[i] = load_be32(head + 4 + 4 * i);
    int64_t numel = checked_numel(ndim, out->dims, INT64_MAX / 2);
    char shape_text[128];
    format_shape(shape_text, sizeof shape_text, ndim, out->dims);
    int64_t header_bytes = 4 + 4 * ndim;
    if (!s->gzip) {
        if (numel < 0 || numel > file_size - header_bytes)
            return set_error(err, "%s: truncated: IDX dims %s need %lld bytes of data, file has %lld", path,
                             shape_text, numel < 0 ? -1LL : (long long)numel, (long long)(file_size - header_bytes));
        if (numel < file_size - header_bytes)
            return set_error(err, "%s: %lld trailing bytes after the IDX data (dims %s)", path,
                             (long long)(file_size - header_bytes - numel), shape_text);
    } else if (numel < 0 || numel / 1100 > file_size) {
        /* deflate cannot expand by more than ~1032x: a lie or a truncated file */
        return set_error(err, "%s: IDX dims %s claim more data than the %lld-byte gzip file can hold (truncated?)",
                         path, shape_text, (long long)file_size);
    }
    out->data = malloc((size_t)numel + 1);
    if (!out->data) return set_error(err, "%s: out of memory for %lld bytes", path, (long long)numel);
    out->size = (size_t)numel;
    if (stream_read(s, out->data, out->size, &got, err) < 0) return -1;
    if (got < out->size)
        return set_error(err, "%s: truncated: IDX dims %s need %zu bytes of data, got %zu", path, shape_text,
                         out->size, got);
    unsigned char extra;
    if (stream_read(s, &extra, 1, &got, err) < 0) return -1; /* also makes zlib check the CRC */
    if (got > 0) return set_error(err, "%s: trailing bytes after the IDX data (dims %s)", path, shape_text);
    return 0;
}

void idx_free(IdxFile *f) {
    if (!f) return;
    free(f->data);
    memset(f, 0, sizeof *f);
}

int idx_read(const char *path, IdxFile *out, char *err) {
    memset(out, 0, sizeof *out);
    int64_t file_size;
    FILE *f = open_regular(path, &file_size, err);
    if (!f) return -1;
    ByteStream *s = xcalloc(1, sizeof *s);
    s->file = f;
    s->path = path;
    unsigned char magic[2] = { 0, 0 };
    size_t n = fread(magic, 1, 2, f);
    rewind(f);
    int rc = 0;
    if (n == 2 && magic[0] == 0x1f && magic[1] == 0x8b) {
        s->gzip = 1;
        if (inflateInit2(&s->z, 15 + 16) != Z_OK) /* 15+16: gzip wrapper, CRC checked */
            rc = set_error(err, "%s: cannot initialise zlib", path);
        else
            s->z_ready = 1;
    }
    if (rc == 0) rc = idx_read_stream(s, file_size, out, err);
    if (s->z_ready) inflateEnd(&s->z);
    free(s);
    fclose(f);
    if (rc < 0) idx_free(out);
    return rc;
}

/* ---- datasets ----------------------------------------------------------- */

void dataset_free(Dataset *d) {
    if (!d) return;
    if (d->map) munmap(d->map, d->map_size);
    else if (d->owned_block) free(d->owned_block);
    else free(d->pixels);
    free(d->labels);
    free(d->offsets);
    free(d->heights);
    free(d->widths);
    memset(d, 0, sizeof *d);
}

int dataset_load_idx(const char *images_path, const char *labels_path, Dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    IdxFile images, labels;
    if (idx_read(images_path, &images, err) < 0) return -1;
    if (images.ndim != 3) {
        idx_free(&images);
        return set_error(err, "%s: images must be a 3-D IDX file (n, h, w), this one is %d-D", images_path,
                         images.ndim);
    }
    if (images.dims[0] > INT_MAX || images.dims[1] > INT_MAX || images.dims[2] > INT_MAX) {
        idx_free(&images);
        return set_error(err, "%s: too many images or too large images", images_path);
    }
    if (idx_read(labels_path, &labels, err) < 0) {
        idx_free(&images);
        return -1;
    }
    int rc = 0;
    if (labels.ndim != 1)
        rc = set_error(err, "%s: labels must be a 1-D IDX file, this one is %d-D", labels_path, labels.ndim);
    else if (labels.dims[0] != images.dims[0])
        rc = set_error(err, "image and label counts differ: %s has %lld images, %s has %lld labels", images_path,
                       (long long)images.dims[0], labels_path, (long long)labels.dims[0]);
    if (rc == 0) {
        out->n = (int)images.dims[0];
        out->c = 1;
        out->h = (int)images.dims[1];
        out->w = (int)images.dims[2];
        out->pixels = images.data; /* (n, h, w) bytes are already (n, 1, h, w) */
        images.data = NULL;
        out->labels = xcalloc((size_t)out->n, sizeof(int32_t));
        int max_label = -1;
        for (int i = 0; i < out->n; i++) {
            out->labels[i] = labels.data[i];
            if (labels.data[i] > max_label) max_label = labels.data[i];
        }
        out->num_classes = max_label + 1;
    }
    idx_free(&images);
    idx_free(&labels);
    return rc;
}

typedef struct {
    const char *name;
    const char *package; /* Debian package that installs it, or NULL */
    int num_classes;
} BuiltinDataset;

static const BuiltinDataset builtin_datasets[] = {
    { "fashion-mnist", "dataset-fashion-mnist", 10 },
    { "mnist", NULL, 10 },
};

int dataset_load_builtin_at(const char *root, const char *name, const char *split, Dataset *out, char *err) {
    memset(out, 0, sizeof *out);
    const BuiltinDataset *b = NULL;
    for (size_t i = 0; i < sizeof builtin_datasets / sizeof builtin_datasets[0]; i++)
        if (name && strcmp(name, builtin_datasets[i].name) == 0) b = &builtin_datasets[i];
    if (!b) return set_error(err, "unknown built-in dataset '%s' (known: fashion-mnist, mnist)", name ? name : "");
    const char *prefix;
    if (split && strcmp(split, "train") == 0)
        prefix = "train";
    else if (split && strcmp(split, "test") == 0)
        prefix = "t10k";
    else
        return set_error(err, "unknown split '%s' for dataset %s (use train or test)", split ? split : "", name);

    char images[4096], labels[4096];
    snprintf(images, sizeof images, "%s/%s/%s-images-idx3-ubyte.gz", root, name, prefix);
    snprintf(labels, sizeof labels, "%s/%s/%s-labels-idx1-ubyte.gz", root, name, prefix);
    const char *paths[2] = { images, labels };
    for (int i = 0; i < 2; i++) {
        if (access(paths[i], R_OK) == 0) continue;
        if (b->package)
            return set_error(err, "built-in dataset %s: cannot read %s (%s); install the Debian package %s "
                                  "(apt-get install %s)", name, paths[i], strerror(errno), b->package, b->package);
        return set_error(err, "built-in dataset %s: cannot read %s (%s); no Debian package provides it, put the "
                              "IDX .gz files in %s/%s/", name, paths[i], strerror(errno), root, name);
    }
    if (dataset_load_idx(images, labels, out, err) < 0) return -1;
    for (int i = 0; i < out->n; i++)
        if (out->labels[i] >= b->num_classes) {
            int bad = out->labels[i];
            dataset_free(out);
            return set_error(err, "%s: label %d at index %d is out of range for %s (%d classes)", labels, bad, i,
                             name, b->num_classes);
        }
    out->num_classes = b->num_classes;
    return 0;
}

int dataset_load_builtin(const char *name, const char *split, Dataset *out, char *err) {
    return dataset_load_builtin_at(DATASET_BUILTIN_ROOT, name, split, out, err);
}
