/* formats.c - safetensors, .npy, IDX and IDX-backed datasets. See formats.h.
 *
 * How it works: each reader takes the file's header apart first (JSON via
 * jansson for safetensors, a small Python-literal parser for .npy, big-endian
 * u32 dims for IDX), checks every size and offset against the real length of
 * the file, and only then allocates and reads the data straight into the
 * output buffers. Multi-byte values are stored little-endian (IDX dims:
 * big-endian) and converted explicitly, so the code is also right on a
 * big-endian host. Writers build the whole file in memory and hand it to
 * write_file_atomic, so a crash never leaves a half-written file. */
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
    size_t got = fread(pre, 1, 10, f);
    if (got < 10 || memcmp(pre, "\x93NUMPY", 6) != 0) {
        set_error(err, "%s: not a .npy file (bad magic; expected \\x93NUMPY)", path);
        goto done;
    }
    int major = pre[6], minor = pre[7];
    int64_t header_len, prefix;
    if (major == 1) {
        header_len = pre[8] | (pre[9] << 8);
        prefix = 10;
    } else if (major == 2 || major == 3) {
        if (fread(pre + 10, 1, 2, f) != 2) {
            set_error(err, "%s: .npy file truncated in its header", path);
            goto done;
        }
        header_len = (int64_t)pre[8] | ((int64_t)pre[9] << 8) | ((int64_t)pre[10] << 16) | ((int64_t)pre[11] << 24);
        prefix = 12;
    } else {
        set_error(err, "%s: unsupported .npy format version %d.%d", path, major, minor);
        goto done;
    }
    if (header_len > NPY_MAX_HEADER || header_len > file_size - prefix) {
        set_error(err, "%s: .npy header length %lld does not fit in the file (truncated?)", path,
                  (long long)header_len);
        goto done;
    }
    header = xcalloc((size_t)header_len + 1, 1);
    if (fread(header, 1, (size_t)header_len, f) != (size_t)header_len) {
        set_error(err, "%s: cannot read the .npy header", path);
        goto done;
    }
    if (npy_parse_header(path, header, (size_t)header_len, type, ndim, shape, err) < 0) goto done;

    int64_t available = file_size - prefix - header_len;
    int64_t numel = checked_numel(*ndim, shape, INT64_MAX / 8);
    char shape_text[256];
    format_shape(shape_text, sizeof shape_text, *ndim, shape);
    if (numel < 0 || numel * type->size > available) {
        set_error(err, "%s: .npy data truncated: shape %s of %s needs %lld bytes, file has %lld", path, shape_text,
                  type->descr, numel < 0 ? -1LL : (long long)(numel * type->size), (long long)available);
        goto done;
    }
    if (numel * type->size < available) {
        set_error(err, "%s: %lld trailing bytes after the .npy data (shape %s of %s)", path,
                  (long long)(available - numel * type->size), shape_text, type->descr);
        goto done;
    }
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
    free(d->pixels);
    free(d->labels);
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
