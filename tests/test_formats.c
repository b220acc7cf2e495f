/* test_formats.c - tests for core/formats.c: safetensors, .npy, .npz, IDX, datasets.
 *
 * How it works: every case writes its files into one mkdtemp directory under
 * /tmp (removed at the end). Valid files are round-tripped and compared bit by
 * bit; invalid ones are crafted byte by byte and each refusal must return < 0
 * with a message naming the file and the problem. numpy (/usr/bin/python3) is
 * used, when present, to write files for us to read and to read ours. Zip
 * archives (.npz) are built byte by byte too, then tampered with field by
 * field. The real Fashion-MNIST from Debian's dataset-fashion-mnist is
 * checked last. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include "formats.h"
#include "test.h"
#include "util.h"

#include <ftw.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char tmp_dir[] = "/tmp/distilld-test-formats-XXXXXX";

/* A path inside the temp dir; a few rotating buffers so two can be live. */
static const char *tmp_path(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp_dir, name);
    return b;
}

static void write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) {
        fprintf(stderr, "cannot write test file %s\n", path);
        exit(2);
    }
    fclose(f);
}

static void write_gzip(const char *path, const void *data, size_t len) {
    gzFile g = gzopen(path, "wb");
    if (!g || gzwrite(g, data, (unsigned)len) != (int)len || gzclose(g) != Z_OK) {
        fprintf(stderr, "cannot write test file %s\n", path);
        exit(2);
    }
}

static int file_bytes(const char *path, unsigned char **data, size_t *size) {
    char err[ERR_LEN];
    return read_file_all(path, data, size, err);
}

static int contains(const char *haystack, const char *needle) { return strstr(haystack, needle) != NULL; }

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

/* ---- safetensors --------------------------------------------------------- */

/* A safetensors file from a header text and raw data. */
static const char *write_st_raw(const char *name, const char *header, const void *data, size_t data_len) {
    const char *path = tmp_path(name);
    size_t hl = strlen(header);
    unsigned char *buf = xcalloc(8 + hl + data_len, 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (data_len) memcpy(buf + 8 + hl, data, data_len);
    write_bytes(path, buf, 8 + hl + data_len);
    free(buf);
    return path;
}

/* Reading must fail, and the message must name the file and each needle. */
static void expect_st_refused(const char *path, const char *needle1, const char *needle2) {
    StFile f;
    char err[ERR_LEN] = "";
    int rc = safetensors_read(path, &f, err);
    CHECK(rc < 0, "%s was accepted", path);
    CHECK(f.count == 0 && f.tensors == NULL && f.meta_count == 0, "output not empty after failure");
    if (getenv("TEST_VERBOSE")) printf("  refused: %s\n", err);
    CHECK(contains(err, path), "message does not name the file: %s", err);
    CHECK(contains(err, needle1), "message lacks '%s': %s", needle1, err);
    if (needle2) CHECK(contains(err, needle2), "message lacks '%s': %s", needle2, err);
}

static void expect_st_header_refused(const char *header, size_t data_len, const char *needle1,
                                     const char *needle2) {
    unsigned char *data = xcalloc(data_len + 1, 1);
    expect_st_refused(write_st_raw("bad.safetensors", header, data, data_len), needle1, needle2);
    free(data);
}

static float bits_to_float(uint32_t bits) {
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static void test_safetensors_round_trip(void) {
    TEST_CASE("safetensors round trip is bit-exact and deterministic");
    float special[6] = { bits_to_float(0x7fc12345u) /* NaN with payload */, -0.0f, bits_to_float(1u) /* denormal */,
                         bits_to_float(0x7f800000u) /* inf */, 1.0f / 3.0f, -123456.789f };
    float scalar = 2.5f;
    float big[2 * 1 * 3 * 2];
    Rng rng = rng_derive(7, 1, 0);
    for (size_t i = 0; i < sizeof big / sizeof big[0]; i++) big[i] = (float)rng_normal(&rng);

    StTensor tensors[4] = {
        { "resnet/head/conv2d/kernel", 2, { 2, 3 }, special },
        { "scalar", 0, { 0 }, &scalar },
        { "empty", 2, { 0, 4 }, NULL },
        { "resnet/block1/unit01/a/group_norm/gamma", 4, { 2, 1, 3, 2 }, big },
    };
    char *keys[3] = { "format", "depth", "note" };
    char *values[3] = { "distilld-bit-v1", "[3,4,6,3]", "na\xc3\xafve \xe2\x9c\x93 \"quoted\"" };
    StFile f = { tensors, 4, keys, values, 3 };

    char err[ERR_LEN] = "";
    const char *p1 = tmp_path("a.safetensors"), *p2 = tmp_path("b.safetensors");
    CHECK(safetensors_write(p1, &f, err) == 0, "write: %s", err);
    StFile r;
    CHECK(safetensors_read(p1, &r, err) == 0, "read: %s", err);
    CHECK(r.count == 4, "count %d", r.count);
    for (int i = 0; i < 4 && i < r.count; i++) {
        const StTensor *a = &tensors[i], *b = &r.tensors[i];
        CHECK(strcmp(a->name, b->name) == 0, "tensor %d name %s != %s", i, b->name, a->name);
        CHECK(a->ndim == b->ndim, "tensor %s ndim %d != %d", a->name, b->ndim, a->ndim);
        CHECK(memcmp(a->shape, b->shape, sizeof(int64_t) * (size_t)a->ndim) == 0, "tensor %s shape", a->name);
        int64_t n = st_tensor_numel(a);
        CHECK(n == 0 || memcmp(a->data, b->data, (size_t)n * 4) == 0, "tensor %s data differs bitwise", a->name);
    }
    CHECK(r.meta_count == 3, "meta_count %d", r.meta_count);
    for (int i = 0; i < 3; i++) {
        const char *v = safetensors_meta(&r, keys[i]);
        CHECK(v && strcmp(v, values[i]) == 0, "metadata %s = %s", keys[i], v ? v : "(null)");
        CHECK(i >= r.meta_count || strcmp(r.meta_keys[i], keys[i]) == 0, "metadata order");
    }
    CHECK(safetensors_meta(&r, "absent") == NULL, "absent metadata key found");
    const StTensor *found = safetensors_find(&r, "scalar");
    CHECK(found && found->ndim == 0 && found->data[0] == 2.5f, "find scalar");
    CHECK(safetensors_find(&r, "nope") == NULL, "absent tensor found");

    /* Writing the same content again (the original and the read-back copy)
     * gives the same bytes. */
    const char *p3 = tmp_path("c.safetensors");
    CHECK(safetensors_write(p2, &f, err) == 0, "second write: %s", err);
    CHECK(safetensors_write(p3, &r, err) == 0, "write of read-back: %s", err);
    unsigned char *b1, *b2, *b3;
    size_t s1, s2, s3;
    if (file_bytes(p1, &b1, &s1) == 0 && file_bytes(p2, &b2, &s2) == 0 && file_bytes(p3, &b3, &s3) == 0) {
        CHECK(s1 == s2 && memcmp(b1, b2, s1) == 0, "two writes differ");
        CHECK(s1 == s3 && memcmp(b1, b3, s1) == 0, "write of read-back differs");
        uint64_t hl = 0;
        for (int i = 7; i >= 0; i--) hl = (hl << 8) | b1[i];
        CHECK((8 + hl) % 8 == 0, "data not 8-byte aligned: header %llu", (unsigned long long)hl);
        CHECK(b1[8] == '{' && (b1[8 + hl - 1] == ' ' || b1[8 + hl - 1] == '}'), "header framing");
        CHECK(s1 == 8 + hl + 4 * (6 + 1 + 0 + 12), "file size %zu", s1);
        free(b1), free(b2), free(b3);
    } else {
        CHECK(0, "cannot read written files back");
    }
    safetensors_free(&r);
    safetensors_free(&r); /* idempotent */
}

static void test_safetensors_foreign_layout(void) {
    TEST_CASE("safetensors: header order differs from data order, padded header");
    /* As other writers do: keys sorted by name, metadata in the middle,
     * trailing spaces; tensors come back in data-buffer order. */
    float data[5] = { 1, 2, 3, 4, 5 };
    const char *path = write_st_raw("foreign.safetensors",
                                    "{\"a\":{\"data_offsets\":[8,20],\"dtype\":\"F32\",\"shape\":[3]},"
                                    "\"__metadata__\":{\"k\":\"v\"},"
                                    "\"z\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}}   ",
                                    data, sizeof data);
    StFile r;
    char err[ERR_LEN] = "";
    CHECK(safetensors_read(path, &r, err) == 0, "read: %s", err);
    if (r.count == 2) {
        CHECK(strcmp(r.tensors[0].name, "z") == 0 && strcmp(r.tensors[1].name, "a") == 0, "order by offset");
        CHECK(r.tensors[0].ndim == 2 && r.tensors[0].shape[1] == 2 && r.tensors[0].data[1] == 2.0f, "tensor z");
        CHECK(r.tensors[1].data[0] == 3.0f && r.tensors[1].data[2] == 5.0f, "tensor a");
        CHECK(safetensors_meta(&r, "k") && strcmp(safetensors_meta(&r, "k"), "v") == 0, "metadata");
    } else {
        CHECK(0, "count %d", r.count);
    }
    safetensors_free(&r);
}

static void test_safetensors_refusals(void) {
    TEST_CASE("safetensors refuses bad files with clear messages");
    char err[ERR_LEN];
    StFile f;
    CHECK(safetensors_read(tmp_path("does-not-exist.safetensors"), &f, err) < 0 && contains(err, "cannot open") &&
              contains(err, "does-not-exist"),
          "missing file: %s", err);

    const char *p = tmp_path("short.safetensors");
    write_bytes(p, "\x10\x00\x00\x00\x00", 5);
    expect_st_refused(p, "shorter than", NULL);

    unsigned char bytes[64] = { 0 };
    bytes[0] = 0x00, bytes[1] = 0x01; /* 256-byte header in a 40-byte file */
    p = tmp_path("long-header.safetensors");
    write_bytes(p, bytes, 40);
    expect_st_refused(p, "header length 256", "truncated");

    memset(bytes, 0, sizeof bytes);
    bytes[4] = 0x01; /* 4 GiB */
    p = tmp_path("huge-header.safetensors");
    write_bytes(p, bytes, 40);
    expect_st_refused(p, "absurdly large", NULL);

    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\",", 0, "not valid JSON", NULL);
    expect_st_header_refused("[1, 2]", 0, "not a JSON object", NULL);
    expect_st_header_refused("{\"a\": 5}", 0, "'a'", "not a JSON object");
    expect_st_header_refused("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 4, "'a'", "no dtype");
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", 4, "'a'", "no shape");
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", 4, "'a'", "no data_offsets");
    expect_st_header_refused("{\"a\": {\"dtype\": 1, \"shape\": [1], \"data_offsets\": [0, 4]}}", 4,
                             "dtype is not a string", NULL);
    const char *dtypes[] = { "F16", "BF16", "F64", "I64", "U8", "BOOL" };
    for (int i = 0; i < 6; i++) {
        char header[256];
        snprintf(header, sizeof header,
                 "{\"weights\": {\"dtype\": \"%s\", \"shape\": [1], \"data_offsets\": [0, 4]}}", dtypes[i]);
        expect_st_header_refused(header, 4, dtypes[i], "'weights'");
    }
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": 3, \"data_offsets\": [0, 12]}}", 12,
                             "shape is not an array", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 4,
                             "negative", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1.5], \"data_offsets\": [0, 4]}}", 4,
                             "not an integer", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [\"2\"], \"data_offsets\": [0, 8]}}", 8,
                             "not an integer", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1,1,1,1,1,1,1,1,1], \"data_offsets\": [0, 4]}}",
                             4, "9 dimensions", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1099511627776, 1099511627776], "
                             "\"data_offsets\": [0, 4]}}",
                             4, "too large", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 0]}}", 4,
                             "begin > end", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0]}}", 4,
                             "data_offsets", "[begin, end]");
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 4,
                             "non-negative", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": \"0-4\"}}", 4,
                             "data_offsets", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [3], \"data_offsets\": [0, 8]}}", 8,
                             "needs 12", "'a'");
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8,
                             "truncated", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]},"
                             " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [4, 12]}}",
                             12, "overlaps", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}", 8, "gap",
                             NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", 8,
                             "trailing", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"x\": 1}}",
                             4, "unknown key 'x'", NULL);
    expect_st_header_refused("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
                             " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                             4, "duplicate", NULL);
    expect_st_header_refused("{\"__metadata__\": {\"depth\": [3, 4]}}", 0, "__metadata__", "'depth'");
    expect_st_header_refused("{\"__metadata__\": [\"a\"]}", 0, "__metadata__", "not a JSON object");

    /* A good file cut short. */
    float v[4] = { 1, 2, 3, 4 };
    StTensor t = { "w", 1, { 4 }, v };
    StFile good = { &t, 1, NULL, NULL, 0 };
    p = tmp_path("cut.safetensors");
    CHECK(safetensors_write(p, &good, err) == 0, "write: %s", err);
    unsigned char *buf;
    size_t size;
    if (file_bytes(p, &buf, &size) == 0) {
        write_bytes(p, buf, size - 3);
        expect_st_refused(p, "truncated", "'w'");
        free(buf);
    }

    /* The writer refuses what it could not write correctly. */
    StTensor dup[2] = { { "w", 1, { 4 }, v }, { "w", 1, { 4 }, v } };
    StFile bad = { dup, 2, NULL, NULL, 0 };
    CHECK(safetensors_write(tmp_path("dup.safetensors"), &bad, err) < 0 && contains(err, "twice"),
          "duplicate names: %s", err);
    StTensor nodata = { "w", 1, { 4 }, NULL };
    StFile bad2 = { &nodata, 1, NULL, NULL, 0 };
    CHECK(safetensors_write(tmp_path("nodata.safetensors"), &bad2, err) < 0 && contains(err, "no data"),
          "NULL data: %s", err);
    StTensor negative = { "w", 1, { -4 }, v };
    StFile bad3 = { &negative, 1, NULL, NULL, 0 };
    CHECK(safetensors_write(tmp_path("neg.safetensors"), &bad3, err) < 0 && contains(err, "negative"),
          "negative shape: %s", err);
    CHECK(access(tmp_path("dup.safetensors"), F_OK) != 0, "a refused write left a file behind");
}

/* ---- .npy ---------------------------------------------------------------- */

static void test_npy_round_trip(void) {
    TEST_CASE("npy round trip (f32 and i32, 0-D to 3-D), data 64-byte aligned");
    char err[ERR_LEN] = "";
    float f[24];
    for (int i = 0; i < 24; i++) f[i] = (float)i * 0.37f - 4.0f;
    f[3] = bits_to_float(0x7fc00001u);
    f[4] = -0.0f;
    int64_t shape3[3] = { 2, 3, 4 };
    const char *p = tmp_path("f.npy");
    CHECK(npy_write_f32(p, f, 3, shape3, err) == 0, "write: %s", err);
    float *back = NULL;
    int ndim = -1;
    int64_t shape[FORMATS_MAX_DIMS];
    CHECK(npy_read_f32(p, &back, &ndim, shape, err) == 0, "read: %s", err);
    CHECK(ndim == 3 && shape[0] == 2 && shape[1] == 3 && shape[2] == 4, "shape");
    CHECK(back && memcmp(back, f, sizeof f) == 0, "data differs bitwise");
    free(back);

    unsigned char *bytes;
    size_t size;
    if (file_bytes(p, &bytes, &size) == 0) {
        size_t header_len = bytes[8] | (bytes[9] << 8);
        CHECK((10 + header_len) % 64 == 0, "data starts at %zu", 10 + header_len);
        CHECK(bytes[6] == 1 && bytes[7] == 0, "version %d.%d", bytes[6], bytes[7]);
        CHECK(bytes[10 + header_len - 1] == '\n', "header does not end with a newline");
        CHECK(memmem(bytes, size, "'descr': '<f4'", 14) != NULL, "descr");
        CHECK(memmem(bytes, size, "'shape': (2, 3, 4)", 18) != NULL, "shape text");
        CHECK(size == 10 + header_len + sizeof f, "size");
        free(bytes);
    }

    int32_t labels[5] = { 0, 9, -3, 2147483647, -2147483647 - 1 };
    int64_t shape1[1] = { 5 };
    p = tmp_path("i.npy");
    CHECK(npy_write_i32(p, labels, 1, shape1, err) == 0, "write i32: %s", err);
    int32_t *lb = NULL;
    CHECK(npy_read_i32(p, &lb, &ndim, shape, err) == 0, "read i32: %s", err);
    CHECK(ndim == 1 && shape[0] == 5 && lb && memcmp(lb, labels, sizeof labels) == 0, "i32 round trip");
    free(lb);
    if (file_bytes(p, &bytes, &size) == 0) {
        CHECK(memmem(bytes, size, "'shape': (5,)", 13) != NULL, "1-D shape text");
        free(bytes);
    }
    /* i32 files read as float too. */
    CHECK(npy_read_f32(p, &back, &ndim, shape, err) == 0 && back[1] == 9.0f && back[2] == -3.0f, "i4 as f32: %s",
          err);
    free(back);

    float s = 42.0f;
    p = tmp_path("scalar.npy");
    CHECK(npy_write_f32(p, &s, 0, NULL, err) == 0, "write scalar: %s", err);
    CHECK(npy_read_f32(p, &back, &ndim, shape, err) == 0 && ndim == 0 && back[0] == 42.0f, "scalar: %s", err);
    free(back);

    int64_t empty_shape[2] = { 0, 7 };
    p = tmp_path("empty.npy");
    CHECK(npy_write_f32(p, NULL, 2, empty_shape, err) == 0, "write empty: %s", err);
    CHECK(npy_read_f32(p, &back, &ndim, shape, err) == 0 && ndim == 2 && shape[0] == 0 && shape[1] == 7,
          "empty: %s", err);
    free(back);
}

static int python_has_numpy(void) {
    return access("/usr/bin/python3", X_OK) == 0 &&
           system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

static void test_npy_numpy_interop(void) {
    TEST_CASE("npy files written by numpy are read; ours are read by numpy");
    if (!python_has_numpy()) {
        printf("note: /usr/bin/python3 with numpy not found; numpy interop not checked\n");
        return;
    }
    char err[ERR_LEN] = "";
    int64_t shape3[3] = { 2, 3, 4 };
    float ours[24];
    for (int i = 0; i < 24; i++) ours[i] = (float)i * 0.5f - 3.0f;
    CHECK(npy_write_f32(tmp_path("ours_f.npy"), ours, 3, shape3, err) == 0, "%s", err);
    int32_t our_labels[4] = { 3, 1, 4, 1 };
    int64_t shape1[1] = { 4 };
    CHECK(npy_write_i32(tmp_path("ours_i.npy"), our_labels, 1, shape1, err) == 0, "%s", err);

    const char *script =
        "import sys, numpy as np\n"
        "from numpy.lib import format as npf\n"
        "d = sys.argv[1]\n"
        "a = (np.arange(24, dtype=np.float32) * 0.5 - 3).reshape(2, 3, 4)\n"
        "np.save(d + '/np_f4.npy', a)\n"
        "np.save(d + '/np_f8.npy', a.astype('<f8'))\n"
        "np.save(d + '/np_f4be.npy', a.astype('>f4'))\n"
        "np.save(d + '/np_i8.npy', np.array([0, 9, 5, 7], dtype='<i8'))\n"
        "np.save(d + '/np_i4.npy', np.array([[1, -2], [3, 4]], dtype='<i4'))\n"
        "np.save(d + '/np_u1.npy', np.array([0, 255, 7], dtype='|u1'))\n"
        "np.save(d + '/np_bool.npy', np.array([True, False, True]))\n"
        "np.save(d + '/np_scalar.npy', np.float32(1.25))\n"
        "np.save(d + '/np_fortran.npy', np.asfortranarray(np.ones((3, 2), dtype=np.float32)))\n"
        "np.save(d + '/np_big_i8.npy', np.array([1, 2**40], dtype='<i8'))\n"
        "np.save(d + '/np_c8.npy', np.ones(2, dtype=np.complex64))\n"
        "with open(d + '/np_v2.npy', 'wb') as f:\n"
        "    npf.write_array(f, a, version=(2, 0))\n"
        "b = np.load(d + '/ours_f.npy')\n"
        "assert b.dtype == np.float32 and b.shape == (2, 3, 4) and np.array_equal(a, b), 'ours_f'\n"
        "c = np.load(d + '/ours_i.npy')\n"
        "assert c.dtype == np.int32 and c.tolist() == [3, 1, 4, 1], 'ours_i'\n";
    const char *script_path = tmp_path("make_npy.py");
    write_bytes(script_path, script, strlen(script));
    char command[1024];
    snprintf(command, sizeof command, "/usr/bin/python3 %s %s", script_path, tmp_dir);
    int rc = system(command);
    CHECK(rc == 0, "python (writing numpy files, reading ours) exited with %d", rc);
    if (rc != 0) return;

    float expected[24];
    for (int i = 0; i < 24; i++) expected[i] = (float)i * 0.5f - 3.0f;
    const char *float_files[] = { "np_f4.npy", "np_f8.npy", "np_f4be.npy", "np_v2.npy" };
    for (int k = 0; k < 4; k++) {
        float *data = NULL;
        int ndim;
        int64_t shape[FORMATS_MAX_DIMS];
        int ok = npy_read_f32(tmp_path(float_files[k]), &data, &ndim, shape, err) == 0;
        CHECK(ok, "%s: %s", float_files[k], err);
        if (ok) {
            CHECK(close_enough(data[23], 8.5, 0, 0), "%s last value %g", float_files[k], data[23]);
            CHECK(ndim == 3 && shape[0] == 2 && shape[1] == 3 && shape[2] == 4, "%s shape", float_files[k]);
            CHECK(memcmp(data, expected, sizeof expected) == 0, "%s values", float_files[k]);
        }
        free(data);
    }
    int32_t *labels = NULL;
    int ndim;
    int64_t shape[FORMATS_MAX_DIMS];
    CHECK(npy_read_i32(tmp_path("np_i8.npy"), &labels, &ndim, shape, err) == 0 && ndim == 1 && shape[0] == 4 &&
              labels[1] == 9 && labels[3] == 7,
          "np_i8: %s", err);
    free(labels);
    CHECK(npy_read_i32(tmp_path("np_i4.npy"), &labels, &ndim, shape, err) == 0 && ndim == 2 && labels[1] == -2 &&
              labels[3] == 4,
          "np_i4: %s", err);
    free(labels);
    CHECK(npy_read_i32(tmp_path("np_u1.npy"), &labels, &ndim, shape, err) == 0 && labels[1] == 255 &&
              labels[2] == 7,
          "np_u1: %s", err);
    free(labels);
    CHECK(npy_read_i32(tmp_path("np_bool.npy"), &labels, &ndim, shape, err) == 0 && labels[0] == 1 &&
              labels[1] == 0,
          "np_bool: %s", err);
    free(labels);
    float *data = NULL;
    CHECK(npy_read_f32(tmp_path("np_u1.npy"), &data, &ndim, shape, err) == 0 && data[1] == 255.0f, "u1 as f32: %s",
          err);
    free(data);
    CHECK(npy_read_f32(tmp_path("np_scalar.npy"), &data, &ndim, shape, err) == 0 && ndim == 0 && data[0] == 1.25f,
          "scalar: %s", err);
    free(data);

    CHECK(npy_read_f32(tmp_path("np_fortran.npy"), &data, &ndim, shape, err) < 0 && contains(err, "Fortran") &&
              data == NULL,
          "fortran order: %s", err);
    CHECK(npy_read_i32(tmp_path("np_big_i8.npy"), &labels, &ndim, shape, err) < 0 && contains(err, "int32"),
          "i8 out of int32 range: %s", err);
    CHECK(npy_read_i32(tmp_path("np_f4.npy"), &labels, &ndim, shape, err) < 0 && contains(err, "not an integer"),
          "floats as labels: %s", err);
    CHECK(npy_read_f32(tmp_path("np_c8.npy"), &data, &ndim, shape, err) < 0 && contains(err, "<c8"),
          "complex: %s", err);
}

/* A v1.0 .npy file from a header dict and raw data. */
static const char *write_npy_raw(const char *name, const char *dict, const void *data, size_t data_len) {
    unsigned char buf[512];
    size_t hl = strlen(dict);
    memcpy(buf, "\x93NUMPY\x01\x00", 8);
    buf[8] = (unsigned char)hl;
    buf[9] = 0;
    memcpy(buf + 10, dict, hl);
    memcpy(buf + 10 + hl, data, data_len);
    const char *path = tmp_path(name);
    write_bytes(path, buf, 10 + hl + data_len);
    return path;
}

static void expect_npy_refused(const char *path, const char *needle) {
    float *data = (float *)1;
    int ndim;
    int64_t shape[FORMATS_MAX_DIMS];
    char err[ERR_LEN] = "";
    CHECK(npy_read_f32(path, &data, &ndim, shape, err) < 0, "%s accepted", path);
    CHECK(data == NULL, "data not NULL after failure");
    if (getenv("TEST_VERBOSE")) printf("  refused: %s\n", err);
    CHECK(contains(err, path), "message does not name the file: %s", err);
    CHECK(contains(err, needle), "message lacks '%s': %s", needle, err);
}

static void test_npy_refusals(void) {
    TEST_CASE("npy refuses bad files with clear messages");
    unsigned char zeros[64] = { 0 };
    const char *ok_dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 2), }\n";
    write_npy_raw("ok.npy", ok_dict, zeros, 16);
    float *data = NULL;
    int ndim;
    int64_t shape[FORMATS_MAX_DIMS];
    char err[ERR_LEN];
    CHECK(npy_read_f32(tmp_path("ok.npy"), &data, &ndim, shape, err) == 0, "the hand-made file is fine: %s", err);
    free(data);

    expect_npy_refused(write_npy_raw("trunc.npy", ok_dict, zeros, 15), "truncated");
    expect_npy_refused(write_npy_raw("trail.npy", ok_dict, zeros, 17), "trailing");
    const char *p = tmp_path("magic.npy");
    write_bytes(p, "PK\x03\x04 this is a zip file", 24);
    expect_npy_refused(p, "bad magic");
    p = tmp_path("tiny.npy");
    write_bytes(p, "\x93NUM", 4);
    expect_npy_refused(p, "bad magic");
    p = tmp_path("version.npy");
    write_bytes(p, "\x93NUMPY\x09\x00\x00\x00", 10);
    expect_npy_refused(p, "version 9.0");
    expect_npy_refused(write_npy_raw("garbage.npy", "{'descr' '<f4'}\n", zeros, 4), "cannot parse");
    expect_npy_refused(write_npy_raw("notdict.npy", "descr=<f4\n", zeros, 4), "dict");
    expect_npy_refused(write_npy_raw("noshape.npy", "{'descr': '<f4', 'fortran_order': False}\n", zeros, 4),
                       "shape");
    expect_npy_refused(
        write_npy_raw("badshape.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,)}\n", zeros, 4),
        "shape");
    expect_npy_refused(
        write_npy_raw("unknownkey.npy", "{'descr': '<f4', 'fortran_order': False, 'shape': (1,), 'x': 1}\n", zeros, 4),
        "unknown key 'x'");
    expect_npy_refused(
        write_npy_raw("dtype.npy", "{'descr': '<U4', 'fortran_order': False, 'shape': (1,), }\n", zeros, 16), "<U4");
    expect_npy_refused(write_npy_raw("struct.npy",
                                     "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }\n", zeros, 4),
                       "structured");
    expect_npy_refused(
        write_npy_raw("fortran.npy", "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }\n", zeros, 16),
        "Fortran");
    p = tmp_path("headerlen.npy");
    write_bytes(p, "\x93NUMPY\x01\x00\xff\x7f{}", 12);
    expect_npy_refused(p, "header length");
    int64_t negative[1] = { -1 };
    CHECK(npy_write_f32(tmp_path("w.npy"), (float *)zeros, 1, negative, err) < 0 && contains(err, "negative"),
          "write negative shape: %s", err);
}

/* ---- .npz ----------------------------------------------------------------- */

/* A growing byte buffer for building zip archives by hand. */
typedef struct {
    unsigned char *p;
    size_t len, cap;
} Bytes;

static void bytes_put(Bytes *b, const void *data, size_t n) {
    if (b->len + n > b->cap) {
        b->cap = (b->len + n) * 2 + 64;
        b->p = realloc(b->p, b->cap);
        if (!b->p) exit(2);
    }
    if (n) memcpy(b->p + b->len, data, n);
    b->len += n;
}

static void bytes_le(Bytes *b, uint64_t v, int width) {
    unsigned char t[8];
    for (int i = 0; i < width; i++) t[i] = (unsigned char)(v >> (8 * i));
    bytes_put(b, t, (size_t)width);
}

static void patch_le(Bytes *b, size_t at, uint64_t v, int width) {
    for (int i = 0; i < width; i++) b->p[at + i] = (unsigned char)(v >> (8 * i));
}

/* A v1.0 .npy of n float32 values 0.5*i - 1 (shape (n,)). */
static Bytes npy_bytes(int n) {
    Bytes b = { 0 };
    char dict[128];
    int dl = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%d,), }", n);
    size_t header_len = ((10 + (size_t)dl + 1 + 63) / 64) * 64 - 10;
    bytes_put(&b, "\x93NUMPY\x01\x00", 8);
    bytes_le(&b, header_len, 2);
    bytes_put(&b, dict, (size_t)dl);
    for (size_t i = (size_t)dl; i + 1 < header_len; i++) bytes_put(&b, " ", 1);
    bytes_put(&b, "\n", 1);
    for (int i = 0; i < n; i++) {
        float v = 0.5f * (float)i - 1.0f;
        uint32_t bits;
        memcpy(&bits, &v, 4);
        bytes_le(&b, bits, 4);
    }
    return b;
}

typedef struct {
    const char *name;
    Bytes data;  /* the uncompressed member */
    int method;  /* 8: deflated; anything else: stored, under that method number */
    int zip64;   /* sizes (and offset) as 0xFFFFFFFF, the values in zip64 extra fields */
} ZipEntry;

/* Where build_zip put things, for tampering. */
typedef struct {
    size_t local[8], central[8], data[8];
    size_t cd_offset, end;
} ZipLayout;

static Bytes deflate_raw(const Bytes *in) {
    z_stream z;
    memset(&z, 0, sizeof z);
    if (deflateInit2(&z, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK) exit(2);
    Bytes out = { 0 };
    out.cap = deflateBound(&z, in->len) + 16;
    out.p = malloc(out.cap);
    z.next_in = in->p;
    z.avail_in = (uInt)in->len;
    z.next_out = out.p;
    z.avail_out = (uInt)out.cap;
    if (deflate(&z, Z_FINISH) != Z_STREAM_END) exit(2);
    out.len = z.total_out;
    deflateEnd(&z);
    return out;
}

/* An archive as numpy's writer makes it (every local header carries a zip64
 * extra field with the real sizes), with the variations of `entries`;
 * zip64_end adds a zip64 end record and locator. */
static Bytes build_zip(const ZipEntry *entries, int n, int zip64_end, ZipLayout *lay) {
    Bytes z = { 0 }, cd = { 0 };
    memset(lay, 0, sizeof *lay);
    for (int i = 0; i < n; i++) {
        const ZipEntry *e = &entries[i];
        Bytes packed = e->method == 8 ? deflate_raw(&e->data) : (Bytes){ 0 };
        const Bytes *stored = e->method == 8 ? &packed : &e->data;
        uint32_t crc = (uint32_t)crc32(0L, e->data.p, (uInt)e->data.len);
        size_t name_len = strlen(e->name);
        uint64_t usize = e->data.len, csize = stored->len;
        uint32_t usize32 = e->zip64 ? 0xFFFFFFFFu : (uint32_t)usize, csize32 = e->zip64 ? 0xFFFFFFFFu : (uint32_t)csize;

        lay->local[i] = z.len;
        bytes_le(&z, 0x04034b50, 4);
        bytes_le(&z, 45, 2);
        bytes_le(&z, 0, 2);
        bytes_le(&z, (uint64_t)e->method, 2);
        bytes_le(&z, 0, 4); /* time, date */
        bytes_le(&z, crc, 4);
        bytes_le(&z, csize32, 4);
        bytes_le(&z, usize32, 4);
        bytes_le(&z, name_len, 2);
        bytes_le(&z, 20, 2);
        bytes_put(&z, e->name, name_len);
        bytes_le(&z, 1, 2); /* zip64 extra: both sizes, always in a local header */
        bytes_le(&z, 16, 2);
        bytes_le(&z, usize, 8);
        bytes_le(&z, csize, 8);
        lay->data[i] = z.len;
        bytes_put(&z, stored->p, stored->len);

        lay->central[i] = cd.len;
        bytes_le(&cd, 0x02014b50, 4);
        bytes_le(&cd, 45, 2);
        bytes_le(&cd, 45, 2);
        bytes_le(&cd, 0, 2);
        bytes_le(&cd, (uint64_t)e->method, 2);
        bytes_le(&cd, 0, 4);
        bytes_le(&cd, crc, 4);
        bytes_le(&cd, csize32, 4);
        bytes_le(&cd, usize32, 4);
        bytes_le(&cd, name_len, 2);
        bytes_le(&cd, e->zip64 ? 28 : 0, 2);
        bytes_le(&cd, 0, 2); /* comment */
        bytes_le(&cd, 0, 2); /* disk */
        bytes_le(&cd, 0, 2);
        bytes_le(&cd, 0, 4);
        bytes_le(&cd, e->zip64 ? 0xFFFFFFFFu : lay->local[i], 4);
        bytes_put(&cd, e->name, name_len);
        if (e->zip64) {
            bytes_le(&cd, 1, 2);
            bytes_le(&cd, 24, 2);
            bytes_le(&cd, usize, 8);
            bytes_le(&cd, csize, 8);
            bytes_le(&cd, lay->local[i], 8);
        }
        free(packed.p);
    }
    lay->cd_offset = z.len;
    for (int i = 0; i < n; i++) lay->central[i] += lay->cd_offset;
    bytes_put(&z, cd.p, cd.len);
    if (zip64_end) {
        size_t at = z.len;
        bytes_le(&z, 0x06064b50, 4);
        bytes_le(&z, 44, 8);
        bytes_le(&z, 45, 2);
        bytes_le(&z, 45, 2);
        bytes_le(&z, 0, 4);
        bytes_le(&z, 0, 4);
        bytes_le(&z, (uint64_t)n, 8);
        bytes_le(&z, (uint64_t)n, 8);
        bytes_le(&z, cd.len, 8);
        bytes_le(&z, lay->cd_offset, 8);
        bytes_le(&z, 0x07064b50, 4);
        bytes_le(&z, 0, 4);
        bytes_le(&z, at, 8);
        bytes_le(&z, 1, 4);
    }
    lay->end = z.len;
    bytes_le(&z, 0x06054b50, 4);
    bytes_le(&z, 0, 4);
    bytes_le(&z, zip64_end ? 0xFFFF : (uint64_t)n, 2);
    bytes_le(&z, zip64_end ? 0xFFFF : (uint64_t)n, 2);
    bytes_le(&z, zip64_end ? 0xFFFFFFFFu : cd.len, 4);
    bytes_le(&z, zip64_end ? 0xFFFFFFFFu : lay->cd_offset, 4);
    bytes_le(&z, 0, 2);
    free(cd.p);
    return z;
}

/* The two members most cases use: a.npy stored (5 values), b.npy deflated (300). */
static Bytes build_ab(ZipLayout *lay, int zip64_sizes, int zip64_end) {
    ZipEntry e[2] = { { "a.npy", npy_bytes(5), 0, zip64_sizes }, { "dir/b.npy", npy_bytes(300), 8, zip64_sizes } };
    Bytes z = build_zip(e, 2, zip64_end, lay);
    free(e[0].data.p);
    free(e[1].data.p);
    return z;
}

static void expect_npz_read(const char *what, const Bytes *z) {
    const char *path = tmp_path("good.npz");
    write_bytes(path, z->p, z->len);
    StFile f;
    char err[ERR_LEN] = "";
    int ok = npz_read(path, &f, err) == 0;
    CHECK(ok, "%s: %s", what, err);
    if (!ok) return;
    CHECK(npz_is_zip(path), "%s: npz_is_zip says no", what);
    CHECK(f.count == 2 && f.meta_count == 0, "%s: %d tensors, %d metadata", what, f.count, f.meta_count);
    const StTensor *a = safetensors_find(&f, "a"), *b = safetensors_find(&f, "dir/b");
    CHECK(a && a->ndim == 1 && a->shape[0] == 5 && a->data[4] == 1.0f, "%s: tensor a", what);
    CHECK(b && b->ndim == 1 && b->shape[0] == 300 && b->data[0] == -1.0f && b->data[299] == 148.5f, "%s: tensor dir/b",
          what);
    safetensors_free(&f);
}

/* Reading must fail, naming the file and containing each needle. */
static void expect_npz_refused(const char *name, const void *data, size_t len, const char *needle1,
                               const char *needle2) {
    const char *path = tmp_path(name);
    write_bytes(path, data, len);
    StFile f;
    char err[ERR_LEN] = "";
    CHECK(npz_read(path, &f, err) < 0, "%s was accepted", name);
    CHECK(f.count == 0 && f.tensors == NULL, "%s: output not empty after failure", name);
    if (getenv("TEST_VERBOSE")) printf("  refused: %s\n", err);
    CHECK(contains(err, path), "%s: message does not name the file: %s", name, err);
    CHECK(contains(err, needle1), "%s: message lacks '%s': %s", name, needle1, err);
    if (needle2) CHECK(contains(err, needle2), "%s: message lacks '%s': %s", name, needle2, err);
}

/* A copy of z with one little-endian field changed. */
static void expect_patched_refused(const char *name, const Bytes *z, size_t at, uint64_t v, int width,
                                   const char *needle1, const char *needle2) {
    Bytes c = { 0 };
    bytes_put(&c, z->p, z->len);
    patch_le(&c, at, v, width);
    expect_npz_refused(name, c.p, c.len, needle1, needle2);
    free(c.p);
}

static void test_npz_read(void) {
    TEST_CASE("npz: stored and deflated members, zip64 sizes and end record");
    ZipLayout lay;
    Bytes z = build_ab(&lay, 0, 0);
    expect_npz_read("plain", &z);
    free(z.p);
    z = build_ab(&lay, 1, 0);
    expect_npz_read("zip64 sizes", &z);
    free(z.p);
    z = build_ab(&lay, 1, 1);
    expect_npz_read("zip64 sizes and end record", &z);
    free(z.p);
    /* as written to a stream: flag bit 3, the local CRC and sizes zero (the real ones in the
       directory; the data descriptor after the data is not needed) */
    z = build_ab(&lay, 0, 0);
    for (int i = 0; i < 2; i++) {
        patch_le(&z, lay.local[i] + 6, 8, 2);
        patch_le(&z, lay.central[i] + 8, 8, 2);
        patch_le(&z, lay.local[i] + 14, 0, 4);
        patch_le(&z, lay.local[i] + 18, 0, 8);
    }
    expect_npz_read("data descriptors", &z);
    free(z.p);

    /* an archive with no members (np.savez with no arrays) */
    const unsigned char empty[22] = { 'P', 'K', 5, 6 };
    const char *path = tmp_path("empty.npz");
    write_bytes(path, empty, sizeof empty);
    StFile f;
    char err[ERR_LEN] = "";
    CHECK(npz_is_zip(path) && npz_read(path, &f, err) == 0 && f.count == 0, "empty archive: %s", err);
    safetensors_free(&f);
    CHECK(!npz_is_zip(tmp_path("ok.npy")) && !npz_is_zip(tmp_path("no such file")), "npz_is_zip on other files");
}

static void test_npz_numpy_interop(void) {
    TEST_CASE("npz: numpy's savez and savez_compressed are read");
    if (!python_has_numpy()) {
        printf("note: /usr/bin/python3 with numpy not found; numpy interop not checked\n");
        return;
    }
    const char *script =
        "import sys, numpy as np\n"
        "d = sys.argv[1]\n"
        "a = (np.arange(24, dtype=np.float32) * 0.5 - 3).reshape(2, 3, 4)\n"
        "kw = {'x/y/kernel': a, 'f8': a.astype('<f8'), 'i4': np.array([1, -2], dtype='<i4'), 's': np.float32(2.5)}\n"
        "np.savez(d + '/np_stored.npz', **kw)\n"
        "np.savez_compressed(d + '/np_deflated.npz', **kw)\n";
    const char *script_path = tmp_path("make_npz.py");
    write_bytes(script_path, script, strlen(script));
    char command[1024];
    snprintf(command, sizeof command, "/usr/bin/python3 %s %s", script_path, tmp_dir);
    int rc = system(command);
    CHECK(rc == 0, "python (writing .npz files) exited with %d", rc);
    if (rc != 0) return;
    const char *files[2] = { "np_stored.npz", "np_deflated.npz" };
    for (int k = 0; k < 2; k++) {
        StFile f;
        char err[ERR_LEN] = "";
        int ok = npz_read(tmp_path(files[k]), &f, err) == 0;
        CHECK(ok, "%s: %s", files[k], err);
        if (!ok) continue;
        const StTensor *a = safetensors_find(&f, "x/y/kernel"), *d = safetensors_find(&f, "f8"),
                       *i = safetensors_find(&f, "i4"), *s = safetensors_find(&f, "s");
        CHECK(f.count == 4, "%s: %d tensors", files[k], f.count);
        CHECK(a && a->ndim == 3 && a->shape[0] == 2 && a->shape[2] == 4 && a->data[23] == 8.5f, "%s: float32",
              files[k]);
        CHECK(d && d->ndim == 3 && d->data[1] == -2.5f, "%s: float64 converted", files[k]);
        CHECK(i && i->ndim == 1 && i->data[1] == -2.0f, "%s: int32 converted", files[k]);
        CHECK(s && s->ndim == 0 && s->data[0] == 2.5f, "%s: scalar", files[k]);
        safetensors_free(&f);
    }
}

static void test_npz_refusals(void) {
    TEST_CASE("npz refuses bad archives, naming the file and member");
    ZipLayout lay;
    Bytes z = build_ab(&lay, 0, 0);

    expect_npz_refused("garbage.npz", "this is not a zip archive at all, just text", 43, "not a zip", "bad magic");
    expect_npz_refused("short.npz", "PK\x03\x04", 4, "too short", NULL);
    expect_npz_refused("truncated_end.npz", z.p, z.len - 1, "truncated", NULL);
    expect_npz_refused("truncated_half.npz", z.p, z.len / 2, "truncated", NULL);
    expect_npz_refused("truncated_header.npz", z.p, 10, "too short", NULL);
    /* the last member's data cut short, the directory after it intact */
    Bytes cut = { 0 };
    bytes_put(&cut, z.p, lay.cd_offset - 10);
    bytes_put(&cut, z.p + lay.cd_offset, z.len - lay.cd_offset);
    patch_le(&cut, cut.len - 6, lay.cd_offset - 10, 4);
    expect_npz_refused("truncated_data.npz", cut.p, cut.len, "dir/b.npy", "truncated");
    free(cut.p);

    /* CRC-32: in both headers (so they agree), then in one only */
    Bytes bad = { 0 };
    bytes_put(&bad, z.p, z.len);
    patch_le(&bad, lay.local[1] + 14, 0x12345678, 4);
    patch_le(&bad, lay.central[1] + 16, 0x12345678, 4);
    expect_npz_refused("crc.npz", bad.p, bad.len, "CRC-32 mismatch", "dir/b.npy");
    free(bad.p);
    bad = (Bytes){ 0 };
    bytes_put(&bad, z.p, z.len);
    bad.p[lay.data[0] + 100] ^= 0x40; /* a stored value */
    expect_npz_refused("crc_stored.npz", bad.p, bad.len, "CRC-32 mismatch", "a.npy");
    free(bad.p);
    expect_patched_refused("crc_local.npz", &z, lay.local[0] + 14, 0x12345678, 4, "disagrees", "a.npy");
    bad = (Bytes){ 0 };
    bytes_put(&bad, z.p, z.len);
    for (int i = 0; i < 8; i++) bad.p[lay.data[1] + 3 + i] ^= 0xA5;
    expect_npz_refused("deflate.npz", bad.p, bad.len, "dir/b.npy", NULL);
    free(bad.p);

    /* methods: bzip2 (12) in both headers; 8 on a stored member */
    bad = (Bytes){ 0 };
    bytes_put(&bad, z.p, z.len);
    patch_le(&bad, lay.local[0] + 8, 12, 2);
    patch_le(&bad, lay.central[0] + 10, 12, 2);
    expect_npz_refused("method.npz", bad.p, bad.len, "compression method 12", "a.npy");
    free(bad.p);
    expect_patched_refused("method_local.npz", &z, lay.local[0] + 8, 8, 2, "compression method", "a.npy");
    expect_patched_refused("encrypted.npz", &z, lay.central[0] + 8, 1, 2, "encrypted", "a.npy");

    /* sizes and offsets */
    expect_patched_refused("cd_offset.npz", &z, lay.end + 16, lay.cd_offset + 1000, 4, "central directory", NULL);
    expect_patched_refused("cd_size.npz", &z, lay.end + 12, 20000, 4, "central directory", NULL);
    expect_patched_refused("entries.npz", &z, lay.end + 8, 0x00030003, 4, "3 members", NULL);
    expect_patched_refused("central_sig.npz", &z, lay.central[1], 0x02014b51, 4, "entry 2 of 2", "bad signature");
    expect_patched_refused("entries_big.npz", &z, lay.end + 8, 0x23282328, 4, "9000 members", NULL);
    expect_patched_refused("disks.npz", &z, lay.end + 8, 1, 2, "multi-disk", NULL);
    expect_patched_refused("local_offset.npz", &z, lay.central[1] + 42, lay.cd_offset + 5, 4, "local header offset",
                           "dir/b.npy");
    expect_patched_refused("local_sig.npz", &z, lay.central[1] + 42, lay.local[1] + 1, 4, "no local file header",
                           "dir/b.npy");
    expect_patched_refused("local_name.npz", &z, lay.local[0] + 30, 'x', 1, "local header names it", "a.npy");
    expect_patched_refused("size_stored.npz", &z, lay.central[0] + 24, 1000, 4, "disagrees", "a.npy");
    bad = (Bytes){ 0 };
    bytes_put(&bad, z.p, z.len);
    patch_le(&bad, lay.local[0] + 22, 100, 4);
    patch_le(&bad, lay.local[0] + 30 + 5 + 4, 100, 8); /* the zip64 extra's copy */
    patch_le(&bad, lay.central[0] + 24, 100, 4);
    expect_npz_refused("size_mismatch.npz", bad.p, bad.len, "sizes differ", "a.npy");
    free(bad.p);
    Bytes tiny = npy_bytes(0);
    uint64_t b_size = tiny.len; /* smaller than the real b.npy */
    free(tiny.p);
    bad = (Bytes){ 0 };
    bytes_put(&bad, z.p, z.len);
    patch_le(&bad, lay.local[1] + 22, b_size, 4);
    patch_le(&bad, lay.local[1] + 30 + 9 + 4, b_size, 8);
    patch_le(&bad, lay.central[1] + 24, b_size, 4);
    expect_npz_refused("inflates_more.npz", bad.p, bad.len, "inflates to more than", "dir/b.npy");
    free(bad.p);
    expect_patched_refused("extra.npz", &z, lay.local[0] + 30 + 5 + 2, 40, 2, "extra field", "a.npy");
    expect_patched_refused("comment.npz", &z, lay.end + 20, 5, 2, "end-of-central-directory", NULL);
    free(z.p);

    /* zip64: an extra field too short for the values marked 0xFFFFFFFF */
    z = build_ab(&lay, 1, 0);
    expect_patched_refused("zip64_extra.npz", &z, lay.central[0] + 46 + 5 + 2, 8, 2, "zip64 extra field", "a.npy");
    free(z.p);
    z = build_ab(&lay, 1, 1);
    expect_patched_refused("zip64_locator.npz", &z, lay.end - 20 + 8, 1u << 30, 8, "zip64", "locator");
    expect_patched_refused("zip64_end.npz", &z, lay.end - 20 - 56, 0x12345678, 4, "zip64 end-of-central-directory",
                           NULL);
    free(z.p);

    /* members: not .npy, not a valid .npy, two of the same name */
    Bytes note = { 0 };
    bytes_put(&note, "just some notes", 15);
    ZipEntry text[1] = { { "notes.txt", note, 0, 0 } };
    z = build_zip(text, 1, 0, &lay);
    expect_npz_refused("not_npy.npz", z.p, z.len, "notes.txt", "not a .npy array");
    free(z.p);
    ZipEntry fake[1] = { { "fake.npy", note, 8, 0 } };
    z = build_zip(fake, 1, 0, &lay);
    expect_npz_refused("fake_npy.npz", z.p, z.len, "member fake.npy: not a .npy file", "bad magic");
    free(z.p);
    free(note.p);
    ZipEntry twice[2] = { { "w.npy", npy_bytes(2), 0, 0 }, { "w.npy", npy_bytes(3), 0, 0 } };
    z = build_zip(twice, 2, 0, &lay);
    expect_npz_refused("twice.npz", z.p, z.len, "w.npy", "appears twice");
    free(z.p);
    free(twice[0].data.p);
    free(twice[1].data.p);
    Bytes cut_npy = npy_bytes(4);
    cut_npy.len -= 3;
    ZipEntry short_npy[1] = { { "short.npy", cut_npy, 8, 0 } };
    z = build_zip(short_npy, 1, 0, &lay);
    expect_npz_refused("short_npy.npz", z.p, z.len, "member short.npy", "truncated");
    free(z.p);
    free(cut_npy.p);
}

/* ---- IDX ----------------------------------------------------------------- */

/* IDX bytes: magic, big-endian dims, then `payload`. */
static size_t make_idx(unsigned char *out, int type, int ndim, const uint32_t *dims, const unsigned char *payload,
                       size_t payload_len) {
    out[0] = 0, out[1] = 0, out[2] = (unsigned char)type, out[3] = (unsigned char)ndim;
    for (int i = 0; i < ndim; i++)
        for (int b = 0; b < 4; b++) out[4 + 4 * i + b] = (unsigned char)(dims[i] >> (24 - 8 * b));
    memcpy(out + 4 + 4 * ndim, payload, payload_len);
    return 4 + 4 * (size_t)ndim + payload_len;
}

static void expect_idx_refused(const char *path, const char *needle) {
    IdxFile f;
    char err[ERR_LEN] = "";
    CHECK(idx_read(path, &f, err) < 0, "%s accepted", path);
    CHECK(f.data == NULL, "data not NULL after failure");
    if (getenv("TEST_VERBOSE")) printf("  refused: %s\n", err);
    CHECK(contains(err, path), "message does not name the file: %s", err);
    CHECK(contains(err, needle), "message lacks '%s': %s", needle, err);
}

static void test_idx(void) {
    TEST_CASE("IDX plain and gzip, refusals");
    unsigned char pixels[12];
    for (int i = 0; i < 12; i++) pixels[i] = (unsigned char)(i * 21);
    uint32_t dims[3] = { 3, 2, 2 };
    unsigned char file[256];
    size_t len = make_idx(file, 0x08, 3, dims, pixels, 12);
    const char *plain = tmp_path("img.idx"), *gz = tmp_path("img.idx.gz");
    write_bytes(plain, file, len);
    write_gzip(gz, file, len);
    const char *paths[2] = { plain, gz };
    for (int k = 0; k < 2; k++) {
        IdxFile f;
        char err[ERR_LEN] = "";
        CHECK(idx_read(paths[k], &f, err) == 0, "%s: %s", paths[k], err);
        CHECK(f.ndim == 3 && f.dims[0] == 3 && f.dims[1] == 2 && f.dims[2] == 2 && f.size == 12, "%s dims",
              paths[k]);
        CHECK(f.data && memcmp(f.data, pixels, 12) == 0, "%s data", paths[k]);
        idx_free(&f);
    }

    /* A gzip file of two members is one stream (as `cat a.gz b.gz` makes). */
    const char *multi = tmp_path("multi.idx.gz");
    write_gzip(tmp_path("part1.gz"), file, 10);
    write_gzip(tmp_path("part2.gz"), file + 10, len - 10);
    unsigned char *p1, *p2;
    size_t s1, s2;
    if (file_bytes(tmp_path("part1.gz"), &p1, &s1) == 0 && file_bytes(tmp_path("part2.gz"), &p2, &s2) == 0) {
        unsigned char both[1024];
        memcpy(both, p1, s1);
        memcpy(both + s1, p2, s2);
        write_bytes(multi, both, s1 + s2);
        IdxFile f;
        char err[ERR_LEN] = "";
        CHECK(idx_read(multi, &f, err) == 0 && f.size == 12 && memcmp(f.data, pixels, 12) == 0, "multi-member: %s",
              err);
        idx_free(&f);

        /* Trailing garbage after the gzip stream. */
        memcpy(both + s1 + s2, "junk", 4);
        write_bytes(tmp_path("junk.idx.gz"), both, s1 + s2 + 4);
        expect_idx_refused(tmp_path("junk.idx.gz"), "trailing garbage");
        free(p1), free(p2);
    }

    unsigned char *gz_bytes;
    size_t gz_len;
    if (file_bytes(gz, &gz_bytes, &gz_len) == 0) {
        write_bytes(tmp_path("cut.idx.gz"), gz_bytes, gz_len / 2);
        expect_idx_refused(tmp_path("cut.idx.gz"), "truncated");
        write_bytes(tmp_path("nocrc.idx.gz"), gz_bytes, gz_len - 6);
        expect_idx_refused(tmp_path("nocrc.idx.gz"), "truncated");
        gz_bytes[gz_len - 6] ^= 0x55; /* inside the CRC32 trailer */
        write_bytes(tmp_path("crc.idx.gz"), gz_bytes, gz_len);
        expect_idx_refused(tmp_path("crc.idx.gz"), "corrupt gzip");
        gz_bytes[gz_len - 6] ^= 0x55;
        gz_bytes[3] = 0xe0; /* reserved flag bits */
        write_bytes(tmp_path("flags.idx.gz"), gz_bytes, gz_len);
        expect_idx_refused(tmp_path("flags.idx.gz"), "corrupt gzip");
        free(gz_bytes);
    }

    write_bytes(tmp_path("short.idx"), file, len - 1);
    expect_idx_refused(tmp_path("short.idx"), "truncated");
    write_gzip(tmp_path("short.idx.gz"), file, len - 1);
    expect_idx_refused(tmp_path("short.idx.gz"), "truncated");
    write_bytes(tmp_path("hdr.idx"), file, 7);
    expect_idx_refused(tmp_path("hdr.idx"), "truncated");
    write_bytes(tmp_path("empty.idx"), file, 0);
    expect_idx_refused(tmp_path("empty.idx"), "truncated");
    unsigned char longer[300];
    memcpy(longer, file, len);
    longer[len] = 0;
    write_bytes(tmp_path("long.idx"), longer, len + 1);
    expect_idx_refused(tmp_path("long.idx"), "trailing");
    write_gzip(tmp_path("long.idx.gz"), longer, len + 1);
    expect_idx_refused(tmp_path("long.idx.gz"), "trailing");

    unsigned char bad[256];
    memcpy(bad, file, len);
    bad[0] = 0x7f, bad[1] = 'E';
    write_bytes(tmp_path("magic.idx"), bad, len);
    expect_idx_refused(tmp_path("magic.idx"), "bad magic");
    memcpy(bad, file, len);
    bad[2] = 0x0D;
    write_bytes(tmp_path("float.idx"), bad, len);
    expect_idx_refused(tmp_path("float.idx"), "0x0d (float)");
    bad[2] = 0x08, bad[3] = 0;
    write_bytes(tmp_path("ndim0.idx"), bad, len);
    expect_idx_refused(tmp_path("ndim0.idx"), "0 dimensions");
    bad[3] = 5;
    write_bytes(tmp_path("ndim5.idx"), bad, len);
    expect_idx_refused(tmp_path("ndim5.idx"), "5 dimensions");
    /* dims promising 4 GB in a tiny gzip file */
    uint32_t huge[2] = { 0xffffffffu, 0xffffffffu };
    len = make_idx(bad, 0x08, 2, huge, pixels, 12);
    write_gzip(tmp_path("huge.idx.gz"), bad, len);
    expect_idx_refused(tmp_path("huge.idx.gz"), "truncated");
    expect_idx_refused(tmp_path("absent.idx"), "cannot open");
}

/* ---- datasets ------------------------------------------------------------- */

static void write_idx_file(const char *path, int ndim, const uint32_t *dims, const unsigned char *payload,
                           size_t payload_len, int gzip) {
    unsigned char buf[512];
    size_t len = make_idx(buf, 0x08, ndim, dims, payload, payload_len);
    if (gzip)
        write_gzip(path, buf, len);
    else
        write_bytes(path, buf, len);
}

static void test_dataset_idx(void) {
    TEST_CASE("dataset from IDX files, mismatches refused");
    unsigned char pixels[24], labels[4] = { 0, 2, 1, 2 };
    for (int i = 0; i < 24; i++) pixels[i] = (unsigned char)(255 - i);
    uint32_t image_dims[3] = { 4, 2, 3 }, label_dims[1] = { 4 }, three[1] = { 3 };
    const char *images = tmp_path("ds-images.idx"), *labels_path = tmp_path("ds-labels.idx.gz");
    write_idx_file(images, 3, image_dims, pixels, 24, 0);
    write_idx_file(labels_path, 1, label_dims, labels, 4, 1);
    Dataset d;
    char err[ERR_LEN] = "";
    CHECK(dataset_load_idx(images, labels_path, &d, err) == 0, "%s", err);
    CHECK(d.n == 4 && d.c == 1 && d.h == 2 && d.w == 3 && d.num_classes == 3, "dims %d %d %d %d classes %d", d.n,
          d.c, d.h, d.w, d.num_classes);
    CHECK(d.pixels && memcmp(d.pixels, pixels, 24) == 0, "pixels");
    CHECK(d.labels && d.labels[1] == 2 && d.labels[2] == 1, "labels");
    dataset_free(&d);

    const char *short_labels = tmp_path("ds-3labels.idx");
    write_idx_file(short_labels, 1, three, labels, 3, 0);
    CHECK(dataset_load_idx(images, short_labels, &d, err) < 0 && contains(err, "4 images") &&
              contains(err, "3 labels") && d.pixels == NULL,
          "count mismatch: %s", err);
    uint32_t flat[2] = { 4, 6 };
    const char *flat_images = tmp_path("ds-flat.idx");
    write_idx_file(flat_images, 2, flat, pixels, 24, 0);
    CHECK(dataset_load_idx(flat_images, labels_path, &d, err) < 0 && contains(err, "3-D") &&
              contains(err, flat_images),
          "2-D images: %s", err);
    uint32_t label_matrix[2] = { 2, 2 };
    const char *matrix_labels = tmp_path("ds-matrix.idx");
    write_idx_file(matrix_labels, 2, label_matrix, labels, 4, 0);
    CHECK(dataset_load_idx(images, matrix_labels, &d, err) < 0 && contains(err, "1-D"), "2-D labels: %s", err);
    CHECK(dataset_load_idx(images, tmp_path("ds-missing.idx"), &d, err) < 0 && contains(err, "ds-missing.idx"),
          "missing labels: %s", err);
}

static void test_dataset_builtin_errors(void) {
    TEST_CASE("built-in datasets: missing files name the package, bad labels refused");
    Dataset d;
    char err[ERR_LEN] = "";
    const char *empty_root = tmp_path("no-datasets");
    mkdir(empty_root, 0755);
    CHECK(dataset_load_builtin_at(empty_root, "fashion-mnist", "train", &d, err) < 0 &&
              contains(err, "dataset-fashion-mnist") && contains(err, "train-images-idx3-ubyte.gz") &&
              contains(err, empty_root),
          "missing fashion-mnist: %s", err);
    CHECK(dataset_load_builtin_at(empty_root, "mnist", "test", &d, err) < 0 &&
              contains(err, "t10k-images-idx3-ubyte.gz"),
          "missing mnist: %s", err);
    CHECK(dataset_load_builtin("cifar10", "train", &d, err) < 0 && contains(err, "cifar10"), "unknown name: %s",
          err);
    CHECK(dataset_load_builtin("fashion-mnist", "validation", &d, err) < 0 && contains(err, "validation"),
          "unknown split: %s", err);

    /* A fake fashion-mnist whose labels go beyond its 10 classes. */
    char root[600], dir[700];
    snprintf(root, sizeof root, "%s", tmp_path("fake-root"));
    snprintf(dir, sizeof dir, "%s/fashion-mnist", root);
    mkdir(root, 0755);
    mkdir(dir, 0755);
    unsigned char pixels[8] = { 0 }, labels[2] = { 3, 12 };
    uint32_t image_dims[3] = { 2, 2, 2 }, label_dims[1] = { 2 };
    char path[800];
    snprintf(path, sizeof path, "%s/t10k-images-idx3-ubyte.gz", dir);
    write_idx_file(path, 3, image_dims, pixels, 8, 1);
    snprintf(path, sizeof path, "%s/t10k-labels-idx1-ubyte.gz", dir);
    write_idx_file(path, 1, label_dims, labels, 2, 1);
    CHECK(dataset_load_builtin_at(root, "fashion-mnist", "test", &d, err) < 0 && contains(err, "label 12") &&
              d.labels == NULL,
          "label out of range: %s", err);
    labels[1] = 9;
    write_idx_file(path, 1, label_dims, labels, 2, 1);
    CHECK(dataset_load_builtin_at(root, "fashion-mnist", "test", &d, err) == 0 && d.num_classes == 10 && d.n == 2,
          "fake dataset: %s", err);
    dataset_free(&d);
}

static void check_real_split(const char *split, int n, int first_label, uint64_t pixel_sum) {
    Dataset d;
    char err[ERR_LEN] = "";
    if (dataset_load_builtin("fashion-mnist", split, &d, err) < 0) {
        CHECK(0, "fashion-mnist %s: %s", split, err);
        return;
    }
    CHECK(d.n == n && d.c == 1 && d.h == 28 && d.w == 28, "%s: %dx%dx%dx%d", split, d.n, d.c, d.h, d.w);
    CHECK(d.num_classes == 10, "%s: %d classes", split, d.num_classes);
    int counts[10] = { 0 };
    for (int i = 0; i < d.n; i++)
        if (d.labels[i] >= 0 && d.labels[i] < 10) counts[d.labels[i]]++;
    for (int k = 0; k < 10; k++) CHECK(counts[k] == n / 10, "%s: class %d has %d images", split, k, counts[k]);
    CHECK(d.labels[0] == first_label, "%s: first label %d", split, d.labels[0]);
    uint64_t sum = 0;
    for (size_t i = 0; i < (size_t)d.n * 28 * 28; i++) sum += d.pixels[i];
    CHECK(sum == pixel_sum, "%s: pixel sum %llu", split, (unsigned long long)sum);
    dataset_free(&d);
}

static void test_fashion_mnist(void) {
    TEST_CASE("built-in Fashion-MNIST (Debian dataset-fashion-mnist)");
    struct stat st;
    if (stat(DATASET_BUILTIN_ROOT "/fashion-mnist", &st) != 0) {
        CHECK(0, "%s/fashion-mnist is missing: install the Debian package dataset-fashion-mnist",
              DATASET_BUILTIN_ROOT);
        return;
    }
    double t0 = now_seconds();
    check_real_split("train", 60000, 9, 3431114169ULL);
    check_real_split("test", 10000, 9, 573469082ULL);
    printf("note: both Fashion-MNIST splits loaded in %.2f s\n", now_seconds() - t0);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_safetensors_round_trip();
    test_safetensors_foreign_layout();
    test_safetensors_refusals();
    test_npy_round_trip();
    test_npy_numpy_interop();
    test_npy_refusals();
    test_npz_read();
    test_npz_numpy_interop();
    test_npz_refusals();
    test_idx();
    test_dataset_idx();
    test_dataset_builtin_errors();
    test_fashion_mnist();
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
