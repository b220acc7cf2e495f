/* test_model.c - proves the model's files, initialisation and training
 * arithmetic, and the job spec and BLAS choices around them:
 *  1. weights round-trip bit-exactly (bit and small stems, odd floats and a
 *     non-default normalization), the file holds BiT's names, HWIO shapes and
 *     metadata, and saving a loaded model gives the same bytes;
 *  2. bad weight files (edited through the formats API, or byte by byte) are
 *     refused with a message naming the file and the problem;
 *  3. checkpoints round-trip weights, Adam moments, step and spec, and refuse
 *     another architecture;
 *  4. BiT init: zero head, GroupNorm 1/0, He-normal kernels, seeded;
 *  5. the warmup + cosine schedule at its landmarks;
 *  6. optimizer_step against a double-precision reference of the update;
 *  7. job spec refusals (message names the key), defaults, canonical JSON
 *     round trip and jobspec_resolve;
 *  8. blas_preferred_core for each CPU / detected core pair.
 * Files go to one mkdtemp directory under /tmp, removed at the end. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* memmem */
#endif
#include <float.h>
#include <ftw.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "bf16.h"
#include "blas.h"
#include "formats.h"
#include "jobspec.h"
#include "model.h"
#include "optim.h"
#include "test.h"
#include "util.h"

/* ---- helpers -------------------------------------------------------------- */

static char tmp_dir[] = "/tmp/distilld-test-model-XXXXXX";

static const char *tmp_path(const char *name) {
    static char bufs[8][512];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof bufs[0], "%s/%s", tmp_dir, name);
    return b;
}

static int contains(const char *haystack, const char *needle) { return haystack && strstr(haystack, needle) != NULL; }

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static void die(const char *what, const char *err) {
    fprintf(stderr, "test setup failed: %s: %s\n", what, err ? err : "");
    exit(2);
}

/* depth [2,1], base 8, width 2 -> stem 16 channels, stages 16/64 and 32/128. */
static void bit_config(ModelConfig *c) {
    model_config_defaults(c);
    c->num_stages = 2;
    c->depth[0] = 2, c->depth[1] = 1;
    c->base_width = 8;
    c->width = 2;
    c->gn_groups = 4;
    c->stem = STEM_BIT;
    c->in_channels = 3;
    c->num_classes = 7;
    c->image_size = 32;
    /* 1/3 and 0.2290001 need all 9 digits to survive the JSON metadata */
    const float mean[3] = {0.485f, 0.456f, 1.0f / 3.0f}, std[3] = {0.2290001f, 0.224f, 0.225f};
    for (int i = 0; i < 3; i++) c->norm_mean[i] = mean[i], c->norm_std[i] = std[i];
}

static void small_config(ModelConfig *c) {
    model_config_defaults(c);
    c->num_stages = 3;
    c->depth[0] = 1, c->depth[1] = 2, c->depth[2] = 1;
    c->base_width = 4;
    c->width = 1;
    c->gn_groups = 2;
    c->stem = STEM_SMALL;
    c->in_channels = 2;
    c->num_classes = 5;
    c->image_size = 12;
    c->norm_mean[0] = 0.1f, c->norm_mean[1] = -0.25f;
    c->norm_std[0] = 0.3f, c->norm_std[1] = 1.75f;
}

/* Random floats including the awkward ones a file must carry unchanged. */
static void fill_random(float *x, size_t n, uint64_t seed) {
    Rng rng = rng_derive(seed, 0xfeed, 0);
    for (size_t i = 0; i < n; i++) {
        double v = rng_normal(&rng) * exp(3.0 * rng_normal(&rng));
        x[i] = (float)v;
    }
    if (n >= 4) {
        x[0] = -0.0f;
        x[1] = FLT_MIN / 8; /* subnormal */
        x[2] = FLT_MAX;
        x[3] = -FLT_MAX;
    }
}

static Model *new_model(const ModelConfig *c, int capacity) {
    Model *m;
    char err[ERR_LEN] = "";
    if (model_create(&m, c, capacity, err) != 0) die("model_create", err);
    return m;
}

static Model *random_model(const ModelConfig *c, uint64_t seed) {
    Model *m = new_model(c, 1);
    fill_random(m->weights, m->num_floats, seed);
    return m;
}

static const ParamInfo *find_param(const Model *m, const char *name) {
    for (int i = 0; i < m->num_params; i++)
        if (strcmp(m->params[i].name, name) == 0) return &m->params[i];
    return NULL;
}

static int ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

static int same_bits(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

static int same_file_bytes(const char *p1, const char *p2) {
    unsigned char *a = NULL, *b = NULL;
    size_t na = 0, nb = 0;
    char err[ERR_LEN];
    int same = read_file_all(p1, &a, &na, err) == 0 && read_file_all(p2, &b, &nb, err) == 0 && na == nb &&
               memcmp(a, b, na) == 0;
    free(a);
    free(b);
    return same;
}

static void write_bytes(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) die("write", path);
    fclose(f);
}

static void check_config_equal(const ModelConfig *a, const ModelConfig *b) {
    CHECK(a->num_stages == b->num_stages, "num_stages %d vs %d", a->num_stages, b->num_stages);
    for (int s = 0; s < a->num_stages && s < MODEL_MAX_STAGES; s++)
        CHECK(a->depth[s] == b->depth[s], "depth[%d] %d vs %d", s, a->depth[s], b->depth[s]);
    CHECK(a->base_width == b->base_width, "base_width %d vs %d", a->base_width, b->base_width);
    CHECK(a->width == b->width, "width %d vs %d", a->width, b->width);
    CHECK(a->gn_groups == b->gn_groups, "gn_groups %d vs %d", a->gn_groups, b->gn_groups);
    CHECK(a->stem == b->stem, "stem %d vs %d", a->stem, b->stem);
    CHECK(a->block == b->block, "block %d vs %d", a->block, b->block);
    CHECK(a->in_channels == b->in_channels, "in_channels %d vs %d", a->in_channels, b->in_channels);
    CHECK(a->num_classes == b->num_classes, "num_classes %d vs %d", a->num_classes, b->num_classes);
    CHECK(a->image_size == b->image_size, "image_size %d vs %d", a->image_size, b->image_size);
    for (int i = 0; i < a->in_channels && i < MODEL_MAX_CHANNELS; i++) {
        CHECK(memcmp(&a->norm_mean[i], &b->norm_mean[i], 4) == 0, "norm_mean[%d] %.9g vs %.9g", i, a->norm_mean[i],
              b->norm_mean[i]);
        CHECK(memcmp(&a->norm_std[i], &b->norm_std[i], 4) == 0, "norm_std[%d] %.9g vs %.9g", i, a->norm_std[i],
              b->norm_std[i]);
    }
}

/* Every parameter of m is in f under prefix with its HWIO (or 1-D) shape, and
 * its elements are block's, transposed (Cout,Cin,KH,KW) -> (KH,KW,Cin,Cout). */
static void check_file_holds_block(const StFile *f, const Model *m, const float *block, const char *prefix) {
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        char name[256];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const StTensor *t = safetensors_find(f, name);
        CHECK(t != NULL, "tensor %s not in the file", name);
        if (!t) continue;
        const float *mem = block + p->offset;
        if (p->kind == PARAM_KERNEL) {
            int co_n = p->dims[0], ci_n = p->dims[1], kh_n = p->dims[2], kw_n = p->dims[3];
            int shape_ok = t->ndim == 4 && t->shape[0] == kh_n && t->shape[1] == kw_n && t->shape[2] == ci_n &&
                           t->shape[3] == co_n;
            CHECK(shape_ok, "%s: file shape is not HWIO [%d,%d,%d,%d]", name, kh_n, kw_n, ci_n, co_n);
            if (!shape_ok) continue;
            size_t bad = 0;
            for (int co = 0; co < co_n; co++)
                for (int ci = 0; ci < ci_n; ci++)
                    for (int kh = 0; kh < kh_n; kh++)
                        for (int kw = 0; kw < kw_n; kw++) {
                            size_t fi = (((size_t)kh * kw_n + kw) * ci_n + ci) * co_n + co;
                            size_t mi = (((size_t)co * ci_n + ci) * kh_n + kh) * kw_n + kw;
                            bad += memcmp(&t->data[fi], &mem[mi], 4) != 0;
                        }
            CHECK(bad == 0, "%s: %zu elements not at their HWIO position", name, bad);
        } else {
            int shape_ok = t->ndim == 1 && t->shape[0] == p->dims[0];
            CHECK(shape_ok, "%s: file shape is not 1-D [%d]", name, p->dims[0]);
            if (shape_ok) CHECK(same_bits(t->data, mem, p->size), "%s: values differ", name);
        }
    }
}

/* ---- 1. weights round trip -------------------------------------------------- */

static void round_trip(const ModelConfig *c, const char *tag, uint64_t seed) {
    char err[ERR_LEN] = "";
    char a_name[64], b_name[64];
    snprintf(a_name, sizeof a_name, "%s-a.safetensors", tag);
    snprintf(b_name, sizeof b_name, "%s-b.safetensors", tag);
    char a_path[512], b_path[512];
    snprintf(a_path, sizeof a_path, "%s", tmp_path(a_name));
    snprintf(b_path, sizeof b_path, "%s", tmp_path(b_name));

    Model *m = random_model(c, seed);
    CHECK(m->num_floats == model_config_param_count(c), "param count %zu vs model_config_param_count %zu",
          m->num_floats, model_config_param_count(c));
    int rc = model_save(m, a_path, err);
    CHECK(rc == 0, "model_save: %s", err);
    Model *l = NULL;
    rc = model_load(&l, a_path, 2, err);
    CHECK(rc == 0 && l, "model_load: %s", err);
    if (!l) {
        model_free(m);
        return;
    }
    check_config_equal(&l->cfg, c);
    CHECK(l->num_floats == m->num_floats, "%zu floats loaded, %zu saved", l->num_floats, m->num_floats);
    CHECK(l->num_params == m->num_params, "%d tensors loaded, %d saved", l->num_params, m->num_params);
    CHECK(l->batch_capacity == 2, "batch capacity %d", l->batch_capacity);
    if (l->num_floats == m->num_floats) {
        size_t diff = 0;
        for (size_t i = 0; i < m->num_floats; i++) diff += memcmp(&l->weights[i], &m->weights[i], 4) != 0;
        CHECK(diff == 0, "%zu of %zu weights differ bitwise after save/load", diff, m->num_floats);
    }
    rc = model_save(l, b_path, err);
    CHECK(rc == 0, "second model_save: %s", err);
    CHECK(same_file_bytes(a_path, b_path), "saving the loaded model gives different bytes");
    model_free(l);
    model_free(m);
}

static void test_round_trip(void) {
    TEST_CASE("weights round trip bit-exactly (stem=bit) and re-save byte-identically");
    ModelConfig c;
    bit_config(&c);
    round_trip(&c, "bit", 11);

    TEST_CASE("weights round trip bit-exactly (stem=small) and re-save byte-identically");
    small_config(&c);
    round_trip(&c, "small", 12);

    TEST_CASE("weights round trip bit-exactly (block=basic) and re-save byte-identically");
    small_config(&c);
    c.block = BLOCK_BASIC;
    round_trip(&c, "basic", 13);

    TEST_CASE("model_save to an unwritable path fails with a message");
    Model *m = random_model(&c, 3);
    char err[ERR_LEN] = "";
    int rc = model_save(m, "/nonexistent-distilld-dir/w.safetensors", err);
    CHECK(rc < 0, "saving into a missing directory succeeded");
    CHECK(contains(err, "/nonexistent-distilld-dir/w.safetensors"), "message does not name the path: %s", err);
    model_free(m);
}

static void test_file_layout(void) {
    TEST_CASE("weight file: BiT names, HWIO shapes, 1-D GroupNorm, metadata");
    ModelConfig c;
    bit_config(&c);
    Model *m = random_model(&c, 21);
    const char *path = tmp_path("layout.safetensors");
    char err[ERR_LEN] = "";
    CHECK(model_save(m, path, err) == 0, "model_save: %s", err);
    StFile f = {0};
    if (safetensors_read(path, &f, err) != 0) die("safetensors_read", err);

    /* stem + stage1 (2 units x 9 + proj) + stage2 (9 + proj) + head gn, kernel, bias */
    CHECK(f.count == 1 + 19 + 10 + 4, "%d tensors in the file, expected 34", f.count);
    CHECK(m->num_params == 34, "%d parameters in the model, expected 34", m->num_params);
    struct { const char *name; int ndim; int64_t shape[4]; } want[] = {
        {"resnet/root_block/standardized_conv2d/kernel", 4, {7, 7, 3, 16}},
        {"resnet/block1/unit01/a/group_norm/gamma", 1, {16}},
        {"resnet/block1/unit01/a/group_norm/beta", 1, {16}},
        {"resnet/block1/unit01/a/proj/standardized_conv2d/kernel", 4, {1, 1, 16, 64}},
        {"resnet/block1/unit01/a/standardized_conv2d/kernel", 4, {1, 1, 16, 16}},
        {"resnet/block1/unit01/b/group_norm/gamma", 1, {16}},
        {"resnet/block1/unit01/b/standardized_conv2d/kernel", 4, {3, 3, 16, 16}},
        {"resnet/block1/unit01/c/group_norm/beta", 1, {16}},
        {"resnet/block1/unit01/c/standardized_conv2d/kernel", 4, {1, 1, 16, 64}},
        {"resnet/block1/unit02/a/group_norm/gamma", 1, {64}},
        {"resnet/block1/unit02/a/standardized_conv2d/kernel", 4, {1, 1, 64, 16}},
        {"resnet/block2/unit01/a/group_norm/gamma", 1, {64}},
        {"resnet/block2/unit01/a/proj/standardized_conv2d/kernel", 4, {1, 1, 64, 128}},
        {"resnet/block2/unit01/a/standardized_conv2d/kernel", 4, {1, 1, 64, 32}},
        {"resnet/block2/unit01/b/standardized_conv2d/kernel", 4, {3, 3, 32, 32}},
        {"resnet/block2/unit01/c/group_norm/gamma", 1, {32}},
        {"resnet/block2/unit01/c/standardized_conv2d/kernel", 4, {1, 1, 32, 128}},
        {"resnet/group_norm/gamma", 1, {128}},
        {"resnet/group_norm/beta", 1, {128}},
        {"resnet/head/conv2d/kernel", 4, {1, 1, 128, 7}},
        {"resnet/head/conv2d/bias", 1, {7}},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        const StTensor *t = safetensors_find(&f, want[i].name);
        CHECK(t != NULL, "no tensor %s", want[i].name);
        if (!t) continue;
        int ok = t->ndim == want[i].ndim;
        for (int d = 0; ok && d < t->ndim; d++) ok = t->shape[d] == want[i].shape[d];
        CHECK(ok, "%s has the wrong shape (ndim %d, first dim %lld)", want[i].name, t->ndim,
              (long long)(t->ndim ? t->shape[0] : -1));
    }
    CHECK(!safetensors_find(&f, "resnet/block1/unit02/a/proj/standardized_conv2d/kernel"),
          "unit02 has a projection");
    /* no tensor outside the model's table; rank by kind */
    for (int i = 0; i < f.count; i++) {
        const char *name = f.tensors[i].name;
        CHECK(find_param(m, name) != NULL, "file tensor %s is not a model parameter", name);
        int vec = ends_with(name, "/gamma") || ends_with(name, "/beta") || ends_with(name, "/bias");
        CHECK(f.tensors[i].ndim == (vec ? 1 : 4), "%s has %d dims", name, f.tensors[i].ndim);
    }

    /* in-memory shapes are (Cout, Cin, KH, KW) and head (K, C, 1, 1) */
    const ParamInfo *root = find_param(m, "resnet/root_block/standardized_conv2d/kernel");
    const ParamInfo *head = find_param(m, "resnet/head/conv2d/kernel");
    CHECK(root && root->dims[0] == 16 && root->dims[1] == 3 && root->dims[2] == 7 && root->dims[3] == 7,
          "root kernel in memory is not (16,3,7,7)");
    CHECK(head && head->dims[0] == 7 && head->dims[1] == 128 && head->dims[2] == 1 && head->dims[3] == 1,
          "head kernel in memory is not (7,128,1,1)");

    /* one element each, by hand: memory (co=5, ci=2, kh=3, kw=6) is file [3][6][2][5] */
    const StTensor *rt = safetensors_find(&f, "resnet/root_block/standardized_conv2d/kernel");
    if (root && rt) {
        float mem = m->weights[root->offset + ((5 * 3 + 2) * 7 + 3) * 7 + 6];
        float file = rt->data[((3 * 7 + 6) * 3 + 2) * 16 + 5];
        CHECK(memcmp(&mem, &file, 4) == 0, "root kernel (5,2,3,6) is %g in memory but HWIO[3,6,2,5] is %g", mem,
              file);
        float other = rt->data[((3 * 7 + 6) * 3 + 5 % 3) * 16 + 2]; /* a transposition mix-up would land here */
        CHECK(memcmp(&mem, &other, 4) != 0, "distinct elements coincide; test data is not random");
    }
    /* head: memory (k=3, c=100) is file [0][0][100][3] */
    const StTensor *ht = safetensors_find(&f, "resnet/head/conv2d/kernel");
    if (head && ht) {
        float mem = m->weights[head->offset + 3 * 128 + 100];
        CHECK(memcmp(&mem, &ht->data[100 * 7 + 3], 4) == 0, "head kernel (3,100) is not at HWIO [0,0,100,3]");
    }
    check_file_holds_block(&f, m, m->weights, "");

    struct { const char *key, *value; } meta[] = {
        {"format", "distilld-bit-v1"}, {"depth", "[2,1]"},     {"base_width", "8"},  {"width", "2"},
        {"gn_groups", "4"},            {"stem", "bit"},        {"in_channels", "3"}, {"num_classes", "7"},
        {"image_size", "32"},          {"block", "bottleneck"},
    };
    for (size_t i = 0; i < sizeof meta / sizeof meta[0]; i++) {
        const char *v = safetensors_meta(&f, meta[i].key);
        CHECK(v && strcmp(v, meta[i].value) == 0, "metadata %s is \"%s\", expected \"%s\"", meta[i].key,
              v ? v : "(missing)", meta[i].value);
    }
    const char *norm = safetensors_meta(&f, "normalization");
    json_t *nj = norm ? json_loads(norm, 0, NULL) : NULL;
    CHECK(json_is_object(nj), "normalization metadata is not a JSON object: %s", norm ? norm : "(missing)");
    json_t *mean = json_object_get(nj, "mean"), *std = json_object_get(nj, "std");
    CHECK(json_array_size(mean) == 3 && json_array_size(std) == 3, "normalization lists are not 3 long");
    for (int i = 0; i < 3 && json_array_size(mean) == 3 && json_array_size(std) == 3; i++) {
        CHECK((float)json_number_value(json_array_get(mean, i)) == c.norm_mean[i], "normalization mean[%d]", i);
        CHECK((float)json_number_value(json_array_get(std, i)) == c.norm_std[i], "normalization std[%d]", i);
    }
    json_decref(nj);
    safetensors_free(&f);

    /* the small stem: a 3x3 root, no projection mismatch in stage 1 */
    ModelConfig s;
    small_config(&s);
    Model *sm = random_model(&s, 22);
    const char *spath = tmp_path("layout-small.safetensors");
    CHECK(model_save(sm, spath, err) == 0, "model_save: %s", err);
    if (safetensors_read(spath, &f, err) != 0) die("safetensors_read", err);
    const StTensor *t = safetensors_find(&f, "resnet/root_block/standardized_conv2d/kernel");
    CHECK(t && t->ndim == 4 && t->shape[0] == 3 && t->shape[1] == 3 && t->shape[2] == 2 && t->shape[3] == 4,
          "small root kernel is not [3,3,2,4]");
    t = safetensors_find(&f, "resnet/head/conv2d/kernel");
    CHECK(t && t->ndim == 4 && t->shape[0] == 1 && t->shape[1] == 1 && t->shape[2] == 64 && t->shape[3] == 5,
          "small head kernel is not [1,1,64,5]");
    CHECK(safetensors_find(&f, "resnet/block2/unit02/b/standardized_conv2d/kernel") != NULL, "no block2/unit02");
    CHECK(!safetensors_find(&f, "resnet/block2/unit02/a/proj/standardized_conv2d/kernel"), "unit02 has a proj");
    const char *v = safetensors_meta(&f, "stem");
    CHECK(v && strcmp(v, "small") == 0, "stem metadata is %s", v ? v : "(missing)");
    v = safetensors_meta(&f, "depth");
    CHECK(v && strcmp(v, "[1,2,1]") == 0, "depth metadata is %s", v ? v : "(missing)");
    check_file_holds_block(&f, sm, sm->weights, "");
    safetensors_free(&f);
    model_free(sm);

    /* basic units: 3x3 a and b, no c, no 4x expansion; a projection only where the shape changes */
    s.block = BLOCK_BASIC;
    sm = random_model(&s, 23);
    CHECK(model_save(sm, spath, err) == 0, "model_save: %s", err);
    if (safetensors_read(spath, &f, err) != 0) die("safetensors_read", err);
    /* stem + stage 1 (1 unit x 6) + stage 2 (2 x 6 + proj) + stage 3 (6 + proj) + head gn, kernel, bias */
    CHECK(f.count == 1 + 6 + 13 + 7 + 4, "%d tensors in the basic file, expected 31", f.count);
    t = safetensors_find(&f, "resnet/block2/unit01/a/standardized_conv2d/kernel");
    CHECK(t && t->ndim == 4 && t->shape[0] == 3 && t->shape[1] == 3 && t->shape[2] == 4 && t->shape[3] == 8,
          "basic block2/unit01/a is not [3,3,4,8]");
    t = safetensors_find(&f, "resnet/block2/unit01/b/standardized_conv2d/kernel");
    CHECK(t && t->shape[0] == 3 && t->shape[1] == 3 && t->shape[2] == 8 && t->shape[3] == 8,
          "basic block2/unit01/b is not [3,3,8,8]");
    t = safetensors_find(&f, "resnet/block2/unit01/a/proj/standardized_conv2d/kernel");
    CHECK(t && t->shape[0] == 1 && t->shape[1] == 1 && t->shape[2] == 4 && t->shape[3] == 8,
          "basic block2/unit01 projection is not [1,1,4,8]");
    CHECK(!safetensors_find(&f, "resnet/block1/unit01/a/proj/standardized_conv2d/kernel"),
          "basic stage 1 (4 -> 4 channels, stride 1) has a projection");
    CHECK(!safetensors_find(&f, "resnet/block1/unit01/c/standardized_conv2d/kernel"), "a basic unit has a c conv");
    t = safetensors_find(&f, "resnet/head/conv2d/kernel");
    CHECK(t && t->shape[2] == 16 && t->shape[3] == 5, "basic head kernel is not [1,1,16,5]");
    v = safetensors_meta(&f, "block");
    CHECK(v && strcmp(v, "basic") == 0, "block metadata is %s", v ? v : "(missing)");
    check_file_holds_block(&f, sm, sm->weights, "");
    safetensors_free(&f);
    model_free(sm);
    model_free(m);
}

/* ---- 2. bad weight files ------------------------------------------------------ */

static char good_path[512];

static StFile read_good(void) {
    StFile f = {0};
    char err[ERR_LEN];
    if (safetensors_read(good_path, &f, err) != 0) die("read good file", err);
    return f;
}

/* Writes f under name, frees it, returns the path. */
static const char *write_edited(StFile *f, const char *name) {
    const char *path = tmp_path(name);
    char err[ERR_LEN];
    if (safetensors_write(path, f, err) != 0) die("safetensors_write", err);
    safetensors_free(f);
    return path;
}

static void st_remove(StFile *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) {
            free(f->tensors[i].name);
            free(f->tensors[i].data);
            memmove(&f->tensors[i], &f->tensors[i + 1], (size_t)(f->count - i - 1) * sizeof *f->tensors);
            f->count--;
            return;
        }
    die("st_remove: no tensor", name);
}

static void st_add(StFile *f, const char *name, int ndim, const int64_t *shape) {
    f->tensors = realloc(f->tensors, (size_t)(f->count + 1) * sizeof *f->tensors);
    if (!f->tensors) die("realloc", name);
    StTensor *t = &f->tensors[f->count++];
    memset(t, 0, sizeof *t);
    t->name = strdup(name);
    t->ndim = ndim;
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d], n *= shape[d];
    t->data = xcalloc((size_t)n, sizeof(float));
    fill_random(t->data, (size_t)n, 99);
}

static void st_reshape(StFile *f, const char *name, int ndim, const int64_t *shape) {
    st_remove(f, name);
    st_add(f, name, ndim, shape);
}

/* value NULL removes the key */
static void st_set_meta(StFile *f, const char *key, const char *value) {
    for (int i = 0; i < f->meta_count; i++)
        if (strcmp(f->meta_keys[i], key) == 0) {
            free(f->meta_values[i]);
            if (value) {
                f->meta_values[i] = strdup(value);
            } else {
                free(f->meta_keys[i]);
                memmove(&f->meta_keys[i], &f->meta_keys[i + 1], (size_t)(f->meta_count - i - 1) * sizeof(char *));
                memmove(&f->meta_values[i], &f->meta_values[i + 1], (size_t)(f->meta_count - i - 1) * sizeof(char *));
                f->meta_count--;
            }
            return;
        }
    if (!value) die("st_set_meta: no key", key);
    f->meta_keys = realloc(f->meta_keys, (size_t)(f->meta_count + 1) * sizeof(char *));
    f->meta_values = realloc(f->meta_values, (size_t)(f->meta_count + 1) * sizeof(char *));
    if (!f->meta_keys || !f->meta_values) die("realloc", key);
    f->meta_keys[f->meta_count] = strdup(key);
    f->meta_values[f->meta_count++] = strdup(value);
}

/* model_load must fail, leave *out NULL, and name the file and each needle. */
static void expect_load_refused(const char *path, const char *what, const char *needle1, const char *needle2,
                                const char *needle3) {
    Model *m = (Model *)&m; /* not NULL, so a failure that forgets to clear it shows */
    char err[ERR_LEN] = "";
    int rc = model_load(&m, path, 1, err);
    CHECK(rc < 0, "%s: accepted", what);
    CHECK(m == NULL, "%s: *out not NULL after failure", what);
    if (rc == 0 && m) model_free(m);
    if (getenv("TEST_VERBOSE")) printf("  %s -> %s\n", what, err);
    CHECK(contains(err, path), "%s: message does not name the file: %s", what, err);
    if (needle1) CHECK(contains(err, needle1), "%s: message lacks '%s': %s", what, needle1, err);
    if (needle2) CHECK(contains(err, needle2), "%s: message lacks '%s': %s", what, needle2, err);
    if (needle3) CHECK(contains(err, needle3), "%s: message lacks '%s': %s", what, needle3, err);
}

static void test_bad_files(void) {
    ModelConfig c;
    bit_config(&c);
    Model *m = random_model(&c, 31);
    char err[ERR_LEN] = "";
    snprintf(good_path, sizeof good_path, "%s", tmp_path("good.safetensors"));
    if (model_save(m, good_path, err) != 0) die("model_save", err);
    model_free(m);
    StFile f;

    TEST_CASE("bad weights: the unedited copy loads (control)");
    f = read_good();
    const char *path = write_edited(&f, "control.safetensors");
    Model *ok = NULL;
    CHECK(model_load(&ok, path, 1, err) == 0 && ok, "re-written good file refused: %s", err);
    model_free(ok);

    TEST_CASE("weights: unknown metadata is ignored, normalization is optional");
    f = read_good();
    st_set_meta(&f, "note", "converted from BiT-M-R50x1.npz");
    st_set_meta(&f, "normalization", NULL);
    path = write_edited(&f, "no-norm.safetensors");
    ok = NULL;
    CHECK(model_load(&ok, path, 1, err) == 0 && ok, "file with an extra key and no normalization refused: %s", err);
    if (ok) {
        for (int i = 0; i < 3; i++)
            CHECK(ok->cfg.norm_mean[i] == 0.5f && ok->cfg.norm_std[i] == 0.5f, "default normalization[%d] %g/%g", i,
                  ok->cfg.norm_mean[i], ok->cfg.norm_std[i]);
        CHECK(ok->cfg.width == 2 && ok->cfg.num_stages == 2, "architecture lost");
    }
    model_free(ok);

    TEST_CASE("bad weights: a missing tensor is named");
    f = read_good();
    st_remove(&f, "resnet/block1/unit02/b/group_norm/beta");
    expect_load_refused(write_edited(&f, "missing.safetensors"), "missing tensor",
                        "resnet/block1/unit02/b/group_norm/beta", "missing", NULL);
    f = read_good();
    st_remove(&f, "resnet/head/conv2d/bias");
    expect_load_refused(write_edited(&f, "missing-bias.safetensors"), "missing head bias", "resnet/head/conv2d/bias",
                        NULL, NULL);

    TEST_CASE("bad weights: an extra tensor is named");
    f = read_good();
    st_add(&f, "resnet/block1/unit02/a/proj/standardized_conv2d/kernel", 4, (int64_t[]){1, 1, 64, 64});
    expect_load_refused(write_edited(&f, "extra-proj.safetensors"), "extra proj",
                        "resnet/block1/unit02/a/proj/standardized_conv2d/kernel", NULL, NULL);
    f = read_good();
    st_add(&f, "notes/whatever", 1, (int64_t[]){3});
    expect_load_refused(write_edited(&f, "extra-other.safetensors"), "extra tensor", "notes/whatever", NULL, NULL);

    TEST_CASE("bad weights: a wrong shape is named with both shapes");
    f = read_good();
    st_reshape(&f, "resnet/block2/unit01/b/standardized_conv2d/kernel", 4, (int64_t[]){3, 3, 32, 31});
    expect_load_refused(write_edited(&f, "shape.safetensors"), "wrong shape",
                        "resnet/block2/unit01/b/standardized_conv2d/kernel", "[3,3,32,31]", "[3,3,32,32]");
    /* same element count, OIHW instead of HWIO */
    f = read_good();
    st_reshape(&f, "resnet/block2/unit01/b/standardized_conv2d/kernel", 4, (int64_t[]){32, 32, 3, 3});
    expect_load_refused(write_edited(&f, "shape-oihw.safetensors"), "OIHW layout",
                        "resnet/block2/unit01/b/standardized_conv2d/kernel", "[32,32,3,3]", "[3,3,32,32]");
    /* same element count, wrong rank */
    f = read_good();
    st_reshape(&f, "resnet/group_norm/gamma", 2, (int64_t[]){1, 128});
    expect_load_refused(write_edited(&f, "shape-rank.safetensors"), "2-D gamma", "resnet/group_norm/gamma",
                        "[1,128]", "[128]");

    TEST_CASE("bad weights: metadata architecture disagreeing with the tensors");
    f = read_good();
    st_set_meta(&f, "width", "1");
    expect_load_refused(write_edited(&f, "meta-width.safetensors"), "width 1",
                        "resnet/root_block/standardized_conv2d/kernel", "[7,7,3,16]", "[7,7,3,8]");
    f = read_good();
    st_set_meta(&f, "num_classes", "8");
    expect_load_refused(write_edited(&f, "meta-classes.safetensors"), "num_classes 8", "resnet/head/conv2d/kernel",
                        "[1,1,128,7]", "[1,1,128,8]");
    f = read_good();
    st_set_meta(&f, "stem", "small");
    expect_load_refused(write_edited(&f, "meta-stem.safetensors"), "stem small",
                        "resnet/root_block/standardized_conv2d/kernel", "[7,7,3,16]", "[3,3,3,16]");
    f = read_good();
    st_set_meta(&f, "depth", "[1,1]");
    expect_load_refused(write_edited(&f, "meta-depth-less.safetensors"), "depth [1,1]", "resnet/block1/unit02/",
                        NULL, NULL);
    f = read_good();
    st_set_meta(&f, "depth", "[2,2]");
    expect_load_refused(write_edited(&f, "meta-depth-more.safetensors"), "depth [2,2]", "resnet/block2/unit02/",
                        NULL, NULL);
    f = read_good();
    st_set_meta(&f, "in_channels", "1");
    st_set_meta(&f, "normalization", "{\"mean\":[0.5],\"std\":[0.5]}");
    expect_load_refused(write_edited(&f, "meta-channels.safetensors"), "in_channels 1",
                        "resnet/root_block/standardized_conv2d/kernel", NULL, NULL);

    TEST_CASE("bad weights: missing or wrong format");
    f = read_good();
    st_set_meta(&f, "format", NULL);
    expect_load_refused(write_edited(&f, "no-format.safetensors"), "no format", "format", "missing", NULL);
    f = read_good();
    st_set_meta(&f, "format", "distilld-bit-v2");
    expect_load_refused(write_edited(&f, "format-v2.safetensors"), "format v2", "format", "distilld-bit-v2", NULL);
    f = read_good();
    st_set_meta(&f, "format", "");
    expect_load_refused(write_edited(&f, "format-empty.safetensors"), "empty format", "format", NULL, NULL);

    TEST_CASE("bad weights: non-integer or missing metadata values");
    const char *bad_ints[][2] = {{"width", "2.5"}, {"gn_groups", "four"}, {"base_width", ""},
                                 {"image_size", "32 "}, {"num_classes", "0x7"}, {"in_channels", "99999999999"}};
    for (size_t i = 0; i < sizeof bad_ints / sizeof bad_ints[0]; i++) {
        f = read_good();
        st_set_meta(&f, bad_ints[i][0], bad_ints[i][1]);
        char what[64];
        snprintf(what, sizeof what, "%s=\"%s\"", bad_ints[i][0], bad_ints[i][1]);
        expect_load_refused(write_edited(&f, "meta-int.safetensors"), what, bad_ints[i][0], NULL, NULL);
    }
    const char *required[] = {"depth", "base_width", "width", "gn_groups", "stem", "in_channels", "num_classes",
                              "image_size"};
    for (size_t i = 0; i < sizeof required / sizeof required[0]; i++) {
        f = read_good();
        st_set_meta(&f, required[i], NULL);
        char what[64];
        snprintf(what, sizeof what, "no %s", required[i]);
        expect_load_refused(write_edited(&f, "meta-missing.safetensors"), what, required[i], NULL, NULL);
    }
    f = read_good();
    st_set_meta(&f, "stem", "BiT");
    expect_load_refused(write_edited(&f, "meta-stem-bad.safetensors"), "stem BiT", "stem", NULL, NULL);

    TEST_CASE("bad weights: bad depth lists");
    const char *depths[] = {"[2,x]", "[]", "[2,0]", "2", "[2,1.5]", "[2,-1]", "[1,1,1,1,1,1,1,1,1]", "{\"a\":1}",
                            "[2,\"1\"]", ""};
    for (size_t i = 0; i < sizeof depths / sizeof depths[0]; i++) {
        f = read_good();
        st_set_meta(&f, "depth", depths[i]);
        char what[64];
        snprintf(what, sizeof what, "depth=%s", depths[i]);
        expect_load_refused(write_edited(&f, "meta-depth.safetensors"), what, "depth", NULL, NULL);
    }

    TEST_CASE("bad weights: an invalid architecture is refused by validation");
    f = read_good();
    st_set_meta(&f, "gn_groups", "5"); /* does not divide 16 */
    expect_load_refused(write_edited(&f, "meta-groups.safetensors"), "gn_groups 5", "gn_groups", NULL, NULL);
    f = read_good();
    st_set_meta(&f, "gn_groups", "0");
    expect_load_refused(write_edited(&f, "meta-groups0.safetensors"), "gn_groups 0", "gn_groups", NULL, NULL);
    f = read_good();
    st_set_meta(&f, "num_classes", "1");
    expect_load_refused(write_edited(&f, "meta-classes1.safetensors"), "num_classes 1", "num_classes", NULL, NULL);
    f = read_good();
    st_set_meta(&f, "normalization", "{\"mean\":[0.5,0.5,0.5],\"std\":[0.5,0,0.5]}");
    expect_load_refused(write_edited(&f, "meta-norm0.safetensors"), "std 0", "normalization", NULL, NULL);
    f = read_good();
    st_set_meta(&f, "normalization", "{\"mean\":[0.5],\"std\":[0.5,0.5,0.5]}");
    expect_load_refused(write_edited(&f, "meta-norm-short.safetensors"), "short mean", "normalization", "mean", NULL);
    f = read_good();
    st_set_meta(&f, "normalization", "[0.5]");
    expect_load_refused(write_edited(&f, "meta-norm-list.safetensors"), "normalization list", "normalization", NULL,
                        NULL);

    TEST_CASE("bad weights: truncated, F16, empty and nonexistent files");
    unsigned char *bytes = NULL;
    size_t size = 0;
    if (read_file_all(good_path, &bytes, &size, err) != 0) die("read good bytes", err);
    const char *trunc = tmp_path("truncated.safetensors");
    write_bytes(trunc, bytes, size - 4);
    expect_load_refused(trunc, "4 bytes short", NULL, NULL, NULL);
    write_bytes(trunc, bytes, 100); /* inside the header */
    expect_load_refused(trunc, "cut in the header", NULL, NULL, NULL);
    write_bytes(trunc, bytes, 5); /* inside the length */
    expect_load_refused(trunc, "cut in the length", NULL, NULL, NULL);
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | bytes[i];
    CHECK(header_len < size, "header length %llu", (unsigned long long)header_len);
    unsigned char *dtype = header_len < size ? memmem(bytes + 8, header_len, "\"dtype\":\"F32\"", 13) : NULL;
    CHECK(dtype != NULL, "no \"dtype\":\"F32\" in the header");
    if (dtype) {
        memcpy(dtype, "\"dtype\":\"F16\"", 13);
        const char *f16 = tmp_path("f16.safetensors");
        write_bytes(f16, bytes, size);
        expect_load_refused(f16, "F16", "F16", NULL, NULL);
    }
    free(bytes);
    const char *empty = tmp_path("empty.safetensors");
    write_bytes(empty, "", 0);
    expect_load_refused(empty, "empty file", NULL, NULL, NULL);
    expect_load_refused(tmp_path("does-not-exist.safetensors"), "nonexistent", NULL, NULL, NULL);
}

/* ---- 3. checkpoints ----------------------------------------------------------- */

static void test_checkpoints(void) {
    TEST_CASE("checkpoint round trip: weights, Adam moments, step, spec");
    ModelConfig c;
    bit_config(&c);
    Model *a = random_model(&c, 41);
    fill_random(a->adam_m, a->num_floats, 42);
    fill_random(a->adam_v, a->num_floats, 43);
    for (size_t i = 0; i < a->num_floats; i++) a->adam_v[i] = fabsf(a->adam_v[i]);
    const char *spec = "{\"kind\":\"train\",\"dataset\":{\"name\":\"fashion-mnist\"},\"steps\":100,"
                       "\"note\":\"na\xc3\xafve \\\"quoted\\\"\"}";
    const char *path = tmp_path("ckpt.safetensors");
    char err[ERR_LEN] = "";
    int rc = model_save_checkpoint(a, 123456789012L, spec, path, err);
    CHECK(rc == 0, "model_save_checkpoint: %s", err);

    Model *b = random_model(&c, 44);
    fill_random(b->adam_m, b->num_floats, 45);
    fill_random(b->adam_v, b->num_floats, 46);
    long step = -7;
    char *spec_back = NULL;
    rc = model_load_checkpoint(b, path, &step, &spec_back, err);
    CHECK(rc == 0, "model_load_checkpoint: %s", err);
    CHECK(step == 123456789012L, "step %ld", step);
    CHECK(spec_back && strcmp(spec_back, spec) == 0, "spec back is %s", spec_back ? spec_back : "(null)");
    free(spec_back);
    CHECK(same_bits(a->weights, b->weights, a->num_floats), "weights differ after checkpoint load");
    CHECK(same_bits(a->adam_m, b->adam_m, a->num_floats), "adam_m differs after checkpoint load");
    CHECK(same_bits(a->adam_v, b->adam_v, a->num_floats), "adam_v differs after checkpoint load");

    /* the file: three blocks under their prefixes, HWIO; step and spec in metadata */
    StFile f = {0};
    if (safetensors_read(path, &f, err) != 0) die("safetensors_read", err);
    CHECK(f.count == 3 * a->num_params, "%d tensors in the checkpoint", f.count);
    check_file_holds_block(&f, a, a->adam_m, "optimizer/adam_m/");
    check_file_holds_block(&f, a, a->adam_v, "optimizer/adam_v/");
    const char *v = safetensors_meta(&f, "step");
    CHECK(v && strcmp(v, "123456789012") == 0, "step metadata %s", v ? v : "(missing)");
    v = safetensors_meta(&f, "format");
    CHECK(v && strcmp(v, "distilld-bit-v1") == 0, "format metadata %s", v ? v : "(missing)");
    safetensors_free(&f);

    /* NULL spec_json pointer is allowed */
    step = -1;
    rc = model_load_checkpoint(b, path, &step, NULL, err);
    CHECK(rc == 0 && step == 123456789012L, "load without spec: rc %d step %ld: %s", rc, step, err);

    TEST_CASE("checkpoint refuses another architecture");
    ModelConfig other = c;
    other.width = 1;
    Model *w1 = new_model(&other, 1);
    char *sj = NULL;
    rc = model_load_checkpoint(w1, path, &step, &sj, err);
    CHECK(rc < 0, "checkpoint of width 2 loaded into a width-1 model");
    CHECK(contains(err, path) && contains(err, "architecture"), "message: %s", err);
    free(sj);
    model_free(w1);
    other = c;
    other.num_classes = 9;
    Model *k9 = new_model(&other, 1);
    rc = model_load_checkpoint(k9, path, &step, NULL, err);
    CHECK(rc < 0 && contains(err, "architecture"), "checkpoint of 7 classes loaded into a 9-class model: %s", err);
    model_free(k9);
    other = c;
    other.depth[1] = 2;
    Model *d22 = new_model(&other, 1);
    rc = model_load_checkpoint(d22, path, &step, NULL, err);
    CHECK(rc < 0 && contains(err, "architecture"), "depth [2,1] checkpoint loaded into [2,2]: %s", err);
    model_free(d22);

    TEST_CASE("checkpoint refuses a step that is not a non-negative integer");
    const char *bad_steps[] = {"abc", "-5", "12x", "", "99999999999999999999999"};
    for (size_t i = 0; i < sizeof bad_steps / sizeof bad_steps[0]; i++) {
        if (safetensors_read(path, &f, err) != 0) die("safetensors_read", err);
        st_set_meta(&f, "step", bad_steps[i]);
        const char *bad = write_edited(&f, "ckpt-bad-step.safetensors");
        step = -1;
        rc = model_load_checkpoint(b, bad, &step, NULL, err);
        CHECK(rc < 0, "step \"%s\" accepted as %ld", bad_steps[i], step);
        if (rc < 0) CHECK(contains(err, "step"), "message: %s", err);
    }

    TEST_CASE("checkpoint refuses a weights-only file");
    const char *wpath = tmp_path("weights-only.safetensors");
    if (model_save(a, wpath, err) != 0) die("model_save", err);
    rc = model_load_checkpoint(b, wpath, &step, NULL, err);
    CHECK(rc < 0 && contains(err, "optimizer/adam_m/"), "weights-only file accepted as a checkpoint: %s", err);

    model_free(a);
    model_free(b);
}

/* ---- 4. BiT init ------------------------------------------------------------ */

static void test_init(void) {
    TEST_CASE("BiT init: zero head, gamma 1, beta 0, He-normal kernels");
    ModelConfig c;
    bit_config(&c);
    Model *m = random_model(&c, 51); /* init must overwrite whatever was there */
    model_init_bit(m, 1234);
    int checked_std = 0;
    const char *largest = NULL;
    size_t largest_size = 0;
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        const float *w = m->weights + p->offset;
        size_t zeros = 0, ones = 0;
        for (size_t k = 0; k < p->size; k++) zeros += w[k] == 0.0f, ones += w[k] == 1.0f;
        if (strncmp(p->name, "resnet/head/", 12) == 0) {
            CHECK(zeros == p->size, "%s: %zu of %zu not zero", p->name, p->size - zeros, p->size);
        } else if (ends_with(p->name, "/gamma")) {
            CHECK(ones == p->size, "%s: %zu of %zu not one", p->name, p->size - ones, p->size);
        } else if (ends_with(p->name, "/beta")) {
            CHECK(zeros == p->size, "%s: %zu of %zu not zero", p->name, p->size - zeros, p->size);
        } else {
            CHECK(ends_with(p->name, "/kernel") && p->kind == PARAM_KERNEL, "%s: unexpected parameter", p->name);
            CHECK(zeros == 0, "%s: %zu zeros", p->name, zeros);
            double sum = 0, sq = 0;
            for (size_t k = 0; k < p->size; k++) sum += w[k], sq += (double)w[k] * w[k];
            double mean = sum / p->size, sd = sqrt(sq / p->size - mean * mean);
            double fan_in = (double)p->dims[1] * p->dims[2] * p->dims[3];
            double want = sqrt(2.0 / fan_in);
            if (p->size >= 4000) {
                checked_std++;
                CHECK(fabs(sd / want - 1.0) < 0.05, "%s: std %.5f, expected sqrt(2/%g) = %.5f", p->name, sd, fan_in,
                      want);
                CHECK(fabs(mean) < 5.0 * want / sqrt((double)p->size), "%s: mean %.5f", p->name, mean);
            } else {
                /* small kernels: still the right order of magnitude */
                CHECK(sd > 0.7 * want && sd < 1.3 * want, "%s: std %.5f vs %.5f", p->name, sd, want);
            }
            if (p->size > largest_size) largest_size = p->size, largest = p->name;
        }
    }
    CHECK(checked_std >= 3, "only %d kernels large enough for the 5%% check", checked_std);
    CHECK(largest && strcmp(largest, "resnet/block2/unit01/b/standardized_conv2d/kernel") == 0,
          "largest kernel is %s", largest ? largest : "(none)");
    /* distinct tensors get distinct streams */
    const ParamInfo *a1 = find_param(m, "resnet/block1/unit01/b/standardized_conv2d/kernel");
    const ParamInfo *a2 = find_param(m, "resnet/block1/unit02/b/standardized_conv2d/kernel");
    CHECK(a1 && a2 && !same_bits(m->weights + a1->offset, m->weights + a2->offset, a1->size),
          "two same-shaped kernels got the same values");

    TEST_CASE("BiT init: same seed identical, different seed different");
    Model *same = new_model(&c, 1), *diff = new_model(&c, 1);
    model_init_bit(same, 1234);
    model_init_bit(diff, 1235);
    CHECK(same_bits(m->weights, same->weights, m->num_floats), "same seed gave different weights");
    size_t differ = 0, kernel_floats = 0;
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        if (p->kind != PARAM_KERNEL || strncmp(p->name, "resnet/head/", 12) == 0) continue;
        kernel_floats += p->size;
        for (size_t k = 0; k < p->size; k++) differ += m->weights[p->offset + k] != diff->weights[p->offset + k];
    }
    CHECK(differ > kernel_floats * 99 / 100, "seeds 1234 and 1235 share %zu of %zu kernel values",
          kernel_floats - differ, kernel_floats);
    model_free(same);
    model_free(diff);
    model_free(m);
}

/* ---- 5. schedule -------------------------------------------------------------- */

static void test_schedule(void) {
    TEST_CASE("schedule: linear warmup, cosine to zero, pure");
    const long warm = 10, total = 110;
    CHECK(schedule_multiplier(0, warm, total) == 0.0f, "step 0: %g", schedule_multiplier(0, warm, total));
    for (long s = 1; s < warm; s++) {
        float got = schedule_multiplier(s, warm, total);
        CHECK(close_enough(got, (double)s / warm, 1e-6, 0), "warmup step %ld: %g, expected %g", s, got,
              (double)s / warm);
    }
    CHECK(schedule_multiplier(warm, warm, total) == 1.0f, "step == warmup: %g", schedule_multiplier(warm, warm, total));
    float mid = schedule_multiplier(warm + (total - warm) / 2, warm, total);
    CHECK(close_enough(mid, 0.5, 1e-6, 1e-7), "cosine midpoint: %g", mid);
    float quarter = schedule_multiplier(warm + (total - warm) / 4, warm, total);
    CHECK(close_enough(quarter, 0.5 * (1 + cos(M_PI / 4)), 1e-6, 1e-7), "cosine quarter: %g", quarter);
    float prev = 1.0f;
    int decreasing = 1;
    for (long s = warm + 1; s < total; s++) {
        float cur = schedule_multiplier(s, warm, total);
        if (!(cur < prev && cur > 0.0f)) decreasing = 0;
        prev = cur;
    }
    CHECK(decreasing, "not strictly decreasing (and positive) after warmup");
    float last = schedule_multiplier(total - 1, warm, total);
    CHECK(last > 0.0f && last < 0.001f, "last step: %g", last);
    CHECK(fabsf(schedule_multiplier(total, warm, total)) < 1e-6f, "step == total: %g",
          schedule_multiplier(total, warm, total));
    /* pure: same answer whatever was asked before */
    float again[4] = {schedule_multiplier(37, warm, total), schedule_multiplier(3, warm, total),
                      schedule_multiplier(37, 20, 1000), schedule_multiplier(37, warm, total)};
    CHECK(again[0] == again[3], "schedule(37) changed between calls");
    CHECK(again[2] != again[0], "schedule ignores its warmup/total arguments");

    TEST_CASE("schedule: no warmup starts at 1");
    CHECK(schedule_multiplier(0, 0, 100) == 1.0f, "warmup 0, step 0: %g", schedule_multiplier(0, 0, 100));
    CHECK(close_enough(schedule_multiplier(50, 0, 100), 0.5, 1e-6, 1e-7), "warmup 0, step 50: %g",
          schedule_multiplier(50, 0, 100));
    CHECK(schedule_multiplier(1, 0, 100) < 1.0f && schedule_multiplier(1, 0, 100) > 0.99f, "warmup 0, step 1: %g",
          schedule_multiplier(1, 0, 100));
}

/* ---- 6. optimizer ------------------------------------------------------------- */

typedef struct { double *w, *m, *v; } AdamRef;

static double ref_schedule(long step, long warm, long total) {
    if (step < warm) return (double)step / warm;
    double progress = (double)(step - warm) / (double)(total - warm);
    if (progress > 1) progress = 1;
    return 0.5 * (1 + cos(M_PI * progress));
}

/* The recipe's update in double, written from DESIGN.md section 4 and
 * optim.h, with optim.h's float constants (1 - 0.999f is 0.99998713e-3, a
 * 1.3e-5 relative difference in v that is not a bug). Weight decay by name:
 * every ".../kernel", the head's included. Returns the pre-clip norm;
 * clipped[] gets the clipped gradients, m_scale[] the size of the terms summed
 * into m (for a tolerance that survives cancellation). */
static double ref_adam_step(const Model *m, AdamRef *r, const float *grads, const OptimConfig *o, long step,
                            double *clipped, double *m_scale) {
    const double b1 = ADAM_BETA1, b2 = ADAM_BETA2, eps = ADAM_EPS;
    double sq = 0;
    for (size_t i = 0; i < m->num_floats; i++) sq += (double)grads[i] * grads[i];
    double norm = sqrt(sq);
    double scale = (o->clip_norm > 0 && norm > o->clip_norm) ? o->clip_norm / norm : 1.0;
    double t = (double)step + 1;
    double s = ref_schedule(step, o->warmup_steps, o->total_steps);
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        double wd = ends_with(p->name, "/kernel") ? o->weight_decay : 0.0;
        for (size_t k = p->offset; k < p->offset + p->size; k++) {
            double g = grads[k] * scale;
            clipped[k] = g;
            m_scale[k] = b1 * fabs(r->m[k]) + (1 - b1) * fabs(g);
            r->m[k] = b1 * r->m[k] + (1 - b1) * g;
            r->v[k] = b2 * r->v[k] + (1 - b2) * g * g;
            double mhat = r->m[k] / (1 - pow(b1, t)), vhat = r->v[k] / (1 - pow(b2, t));
            r->w[k] -= s * (o->lr * mhat / (sqrt(vhat) + eps) + wd * r->w[k]);
        }
    }
    return norm;
}

/* Three steps from random weights and zero moments; grads scaled to `grad_norm`
 * (roughly); the head bias gets tiny gradients so Adam's eps matters. */
static void optimizer_scenario(const char *what, const OptimConfig *o, double grad_scale, int expect_clip) {
    ModelConfig c;
    model_config_defaults(&c);
    c.num_stages = 2;
    c.depth[0] = 1, c.depth[1] = 1;
    c.base_width = 4, c.width = 1, c.gn_groups = 2, c.stem = STEM_SMALL;
    c.in_channels = 1, c.num_classes = 3, c.image_size = 4;
    Model *m = new_model(&c, 1);
    size_t n = m->num_floats;
    Rng rng = rng_derive(61, 1, 0);
    for (size_t i = 0; i < n; i++) m->weights[i] = (float)rng_normal(&rng);
    AdamRef r = {calloc(n, sizeof(double)), calloc(n, sizeof(double)), calloc(n, sizeof(double))};
    for (size_t i = 0; i < n; i++) r.w[i] = m->weights[i];
    float *grads = calloc(n, sizeof(float));
    double *clipped = calloc(n, sizeof(double)), *m_scale = calloc(n, sizeof(double));
    const ParamInfo *bias = find_param(m, "resnet/head/conv2d/bias");
    for (long step = 0; step < 3; step++) {
        for (size_t i = 0; i < n; i++) grads[i] = (float)(rng_normal(&rng) * grad_scale);
        for (size_t k = 0; k < bias->size; k++) grads[bias->offset + k] = (float)(rng_normal(&rng) * 3e-9);
        memcpy(m->grads, grads, n * sizeof(float));
        m->w_hat_valid = 1;
        float got_norm = optimizer_step(m, o, step);
        double want_norm = ref_adam_step(m, &r, grads, o, step, clipped, m_scale);
        CHECK(close_enough(got_norm, want_norm, 1e-6, 0), "%s step %ld: returned norm %.9g, pre-clip norm %.9g",
              what, step, got_norm, want_norm);
        CHECK(expect_clip == (o->clip_norm > 0 && want_norm > o->clip_norm),
              "%s: scenario does not exercise what it claims (norm %g, clip %g)", what, want_norm, o->clip_norm);
        CHECK(m->w_hat_valid == 0, "%s: w_hat still marked valid after the weights changed", what);
        size_t bad_g = 0, bad_m = 0, bad_v = 0, bad_w = 0;
        double worst_w = 0;
        for (size_t i = 0; i < n; i++) {
            bad_g += !close_enough(m->grads[i], clipped[i], 1e-6, 1e-30);
            bad_m += !(fabs(m->adam_m[i] - r.m[i]) <= 2e-6 * m_scale[i]);
            bad_v += !close_enough(m->adam_v[i], r.v[i], 2e-6, 0);
            double e = fabs(m->weights[i] - r.w[i]) / (1e-6 + 1e-5 * fabs(r.w[i]));
            bad_w += e > 1;
            if (e > worst_w) worst_w = e;
        }
        CHECK(bad_g == 0, "%s step %ld: %zu gradients not clipped as expected", what, step, bad_g);
        CHECK(bad_m == 0, "%s step %ld: %zu adam_m values off", what, step, bad_m);
        CHECK(bad_v == 0, "%s step %ld: %zu adam_v values off", what, step, bad_v);
        CHECK(bad_w == 0, "%s step %ld: %zu weights off (worst %.3g x tolerance)", what, step, bad_w, worst_w);
        if (!expect_clip) CHECK(same_bits(m->grads, grads, n), "%s step %ld: gradients changed without clipping", what,
                                step);
    }
    free(r.w), free(r.m), free(r.v), free(grads), free(clipped), free(m_scale);
    model_free(m);
}

static void test_optimizer(void) {
    TEST_CASE("optimizer: Adam constants are the recipe's");
    CHECK(ADAM_BETA1 == 0.9f && ADAM_BETA2 == 0.999f && ADAM_EPS == 1e-8f, "beta1 %g beta2 %g eps %g",
          (double)ADAM_BETA1, (double)ADAM_BETA2, (double)ADAM_EPS);

    TEST_CASE("optimizer: clipping active, warmup, weight decay on kernels only");
    OptimConfig o = {.lr = 0.01f, .weight_decay = 0.05f, .clip_norm = 1.0f, .warmup_steps = 2, .total_steps = 10};
    optimizer_scenario("clip active", &o, 1.0, 1);

    TEST_CASE("optimizer: norm below clip_norm leaves gradients alone");
    o = (OptimConfig){.lr = 0.003f, .weight_decay = 0.02f, .clip_norm = 1.0f, .warmup_steps = 0, .total_steps = 5};
    optimizer_scenario("clip inactive", &o, 0.02, 0);

    TEST_CASE("optimizer: clip_norm 0 or negative disables clipping");
    o = (OptimConfig){.lr = 0.01f, .weight_decay = 0.1f, .clip_norm = 0.0f, .warmup_steps = 1, .total_steps = 4};
    optimizer_scenario("clip 0", &o, 1.0, 0);
    o.clip_norm = -1.0f;
    optimizer_scenario("clip -1", &o, 1.0, 0);

    TEST_CASE("optimizer: decay reaches the head kernel, not gamma/beta/bias");
    /* zero gradients isolate decay: Adam's term is 0, so w -= s*wd*w exactly */
    ModelConfig c;
    small_config(&c);
    Model *m = new_model(&c, 1);
    for (size_t i = 0; i < m->num_floats; i++) m->weights[i] = 1.0f;
    o = (OptimConfig){.lr = 0.01f, .weight_decay = 0.25f, .clip_norm = 1.0f, .warmup_steps = 0, .total_steps = 100};
    float norm = optimizer_step(m, &o, 0);
    CHECK(norm == 0.0f, "norm of zero gradients is %g", norm);
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        float want = ends_with(p->name, "/kernel") ? 0.75f : 1.0f;
        size_t bad = 0;
        for (size_t k = 0; k < p->size; k++) bad += m->weights[p->offset + k] != want;
        CHECK(bad == 0, "%s: %zu values are not %g after one decay step", p->name, bad, want);
    }
    model_free(m);
}

/* ---- 7. job specs ----------------------------------------------------------- */

static void expect_spec_refused(const char *json, const char *needle1, const char *needle2) {
    JobSpec s;
    char err[ERR_LEN] = "";
    int rc = jobspec_parse(json, &s, err);
    CHECK(rc < 0, "accepted: %s", json);
    if (getenv("TEST_VERBOSE")) printf("  %s -> %s\n", json, err);
    CHECK(contains(err, needle1), "message for %s lacks '%s': %s", json, needle1, err);
    if (needle2) CHECK(contains(err, needle2), "message for %s lacks '%s': %s", json, needle2, err);
}

static int parse_ok(const char *json, JobSpec *s) {
    char err[ERR_LEN] = "";
    int rc = jobspec_parse(json, s, err);
    CHECK(rc == 0, "refused %s: %s", json, err);
    return rc == 0;
}

#define SPEC_FIELD(field, fmt)                                                                             \
    CHECK(a->field == b->field, "%s: field " #field " " fmt " vs " fmt, what, a->field, b->field)

static void check_specs_equal(const JobSpec *a, const JobSpec *b, const char *what) {
    SPEC_FIELD(kind, "%d");
    CHECK(strcmp(a->dataset.name, b->dataset.name) == 0, "%s: dataset.name", what);
    CHECK(strcmp(a->dataset.format, b->dataset.format) == 0, "%s: dataset.format", what);
    CHECK(strcmp(a->dataset.path, b->dataset.path) == 0, "%s: dataset.path", what);
    SPEC_FIELD(dataset.val_size, "%d");
    SPEC_FIELD(dataset.test_size, "%d");
    SPEC_FIELD(dataset.subset_size, "%d");
    CHECK(a->dataset.subset_seed == b->dataset.subset_seed, "%s: dataset.subset_seed", what);
    SPEC_FIELD(model.num_stages, "%d");
    for (int i = 0; i < a->model.num_stages && i < MODEL_MAX_STAGES; i++) SPEC_FIELD(model.depth[i], "%d");
    SPEC_FIELD(model.base_width, "%d");
    SPEC_FIELD(model.width, "%d");
    SPEC_FIELD(model.gn_groups, "%d");
    SPEC_FIELD(model.stem, "%d");
    SPEC_FIELD(model.block, "%d");
    SPEC_FIELD(model.in_channels, "%d");
    SPEC_FIELD(model.num_classes, "%d");
    SPEC_FIELD(model.image_size, "%d");
    CHECK(strcmp(a->teacher, b->teacher) == 0, "%s: teacher %s vs %s", what, a->teacher, b->teacher);
    CHECK(strcmp(a->teacher_job, b->teacher_job) == 0, "%s: teacher_job %s vs %s", what, a->teacher_job, b->teacher_job);
    SPEC_FIELD(teacher_precision, "%d");
    SPEC_FIELD(precision, "%d");
    SPEC_FIELD(batch_size, "%d");
    SPEC_FIELD(steps, "%ld");
    SPEC_FIELD(epochs, "%g");
    SPEC_FIELD(have_epochs, "%d");
    SPEC_FIELD(lr, "%g");
    SPEC_FIELD(weight_decay, "%g");
    SPEC_FIELD(clip_norm, "%g");
    SPEC_FIELD(temperature, "%g");
    SPEC_FIELD(warmup_steps, "%ld");
    SPEC_FIELD(mixup, "%d");
    SPEC_FIELD(flip, "%d");
    SPEC_FIELD(crop, "%d");
    SPEC_FIELD(crop_area_min, "%g");
    SPEC_FIELD(crop_area_max, "%g");
    SPEC_FIELD(eval_resize, "%d");
    SPEC_FIELD(eval_crop, "%d");
    SPEC_FIELD(eval_every, "%ld");
    SPEC_FIELD(checkpoint_every, "%ld");
    CHECK(a->seed == b->seed, "%s: seed %llu vs %llu", what, (unsigned long long)a->seed,
          (unsigned long long)b->seed);
    SPEC_FIELD(threads, "%d");
}

/* to_json -> parse gives the same fields, and to_json of that is the same text */
static void check_json_round_trip(const JobSpec *s, const char *what) {
    char *text = jobspec_to_json(s);
    CHECK(text != NULL, "%s: jobspec_to_json returned NULL", what);
    if (!text) return;
    JobSpec back;
    char err[ERR_LEN] = "";
    int rc = jobspec_parse(text, &back, err);
    CHECK(rc == 0, "%s: canonical JSON refused: %s\n    %s", what, err, text);
    if (rc == 0) {
        check_specs_equal(s, &back, what);
        char *again = jobspec_to_json(&back);
        CHECK(again && strcmp(text, again) == 0, "%s: canonical JSON is not a fixed point:\n    %s\n    %s", what,
              text, again ? again : "(null)");
        free(again);
    }
    free(text);
}

static void test_jobspec_refusals(void) {
    TEST_CASE("job spec: unknown keys are refused by name");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"learning_rate\":0.1}", "learning_rate", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"model\":{\"depths\":[1]}}", "model.depths", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"dataset\":{\"name\":\"mnist\",\"colour\":1}}",
                        "dataset.colour", NULL);
    expect_spec_refused("{\"kind\":\"distill\",\"steps\":100,\"teacher\":{\"wieghts\":\"t.safetensors\"}}",
                        "teacher.wieghts", NULL);

    TEST_CASE("job spec: wrong types are refused by name");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"lr\":\"0.1\"}", "lr", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"batch_size\":32.5}", "batch_size", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"batch_size\":32.0}", "batch_size", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"model\":{\"depth\":3}}", "model.depth", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"model\":{\"depth\":[1,\"2\"]}}", "model.depth", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"model\":{\"width\":true}}", "model.width", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":\"100\"}", "steps", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"mixup\":1}", "mixup", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"model\":[]}", "model", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"model\":{\"block\":\"wide\"}}", "model.block", "basic");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"model\":{\"block\":1}}", "model.block", NULL);

    TEST_CASE("job spec: warmup not shorter than the schedule is refused");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"warmup_steps\":100}", "warmup_steps", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":480,\"warmup_steps\":1500}", "warmup_steps", NULL);

    TEST_CASE("job spec: temperature must be > 0");
    expect_spec_refused("{\"kind\":\"distill\",\"teacher\":\"t.safetensors\",\"steps\":10,\"temperature\":0}",
                        "temperature", NULL);
    expect_spec_refused("{\"kind\":\"distill\",\"teacher\":\"t.safetensors\",\"steps\":10,\"temperature\":-2.5}",
                        "temperature", NULL);

    TEST_CASE("job spec: kind and teacher");
    expect_spec_refused("{\"steps\":100}", "kind", NULL);
    expect_spec_refused("{\"kind\":\"finetune\",\"steps\":100}", "kind", NULL);
    expect_spec_refused("{\"kind\":\"distill\",\"steps\":100}", "teacher", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"teacher\":\"t.safetensors\"}", "teacher", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"teacher\":{\"job\":\"j1\"}}", "teacher", NULL);
    expect_spec_refused("{\"kind\":\"distill\",\"teacher\":\"t.safetensors\",\"steps\":10,\"teacher_precision\":\"fp8\"}",
                        "teacher_precision", "bfloat16");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":10,\"teacher_precision\":\"bfloat16\"}", "teacher_precision",
                        "distill");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":10,\"precision\":\"half\"}", "precision", "bfloat16");
    if (!bf16_fast()) { /* a build without the kernel says so rather than run slowly */
        expect_spec_refused("{\"kind\":\"distill\",\"teacher\":\"t.safetensors\",\"steps\":10,"
                            "\"teacher_precision\":\"bfloat16\"}",
                            "teacher_precision", "AVX512-BF16");
        expect_spec_refused("{\"kind\":\"train\",\"steps\":10,\"precision\":\"bfloat16\"}", "precision",
                            "AVX512-BF16");
    }

    TEST_CASE("job spec: steps xor epochs");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"epochs\":2}", "steps", "epochs");
    expect_spec_refused("{\"kind\":\"train\"}", "steps", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":0}", "steps", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"epochs\":0}", "epochs", NULL);

    TEST_CASE("job spec: invalid JSON and duplicate keys");
    expect_spec_refused("{\"kind\":\"train\",", "JSON", NULL);
    expect_spec_refused("", "JSON", NULL);
    expect_spec_refused("[1,2]", "object", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":10,\"steps\":20}", "duplicate", "\"steps\"");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":10,\"model\":{\"width\":1,\"width\":2}}", "duplicate",
                        "\"width\"");

    TEST_CASE("job spec: crop and crop_area");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"crop\":\"center\"}", "crop", "center");
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"crop_area\":[0.9,0.1]}", "crop_area", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"crop_area\":[0.1]}", "crop_area", NULL);
    expect_spec_refused("{\"kind\":\"train\",\"steps\":100,\"crop_area\":[0.1,1.5]}", "crop_area", NULL);
}

static void test_jobspec_accepted(void) {
    TEST_CASE("job spec: a minimal train spec gets the defaults");
    JobSpec s;
    if (parse_ok("{\"kind\":\"train\",\"steps\":100}", &s)) {
        CHECK(s.kind == JOB_TRAIN, "kind %d", s.kind);
        CHECK(strcmp(s.dataset.name, "fashion-mnist") == 0, "dataset %s", s.dataset.name);
        CHECK(s.steps == 100 && !s.have_epochs && s.epochs == 0, "steps %ld epochs %g", s.steps, s.epochs);
        CHECK(s.batch_size == 128, "batch_size %d", s.batch_size);
        CHECK(s.lr == 1e-3f, "lr %g", s.lr);
        CHECK(s.weight_decay == 1e-4f, "weight_decay %g", s.weight_decay);
        CHECK(s.clip_norm == 1.0f, "clip_norm %g", s.clip_norm);
        CHECK(s.temperature == 1.0f, "temperature %g", s.temperature);
        CHECK(s.warmup_steps == -1, "warmup_steps %ld (unresolved default should be -1)", s.warmup_steps);
        CHECK(s.mixup == 1 && s.flip == 1, "mixup %d flip %d", s.mixup, s.flip);
        CHECK(s.crop == CROP_INCEPTION, "crop %d", s.crop);
        CHECK(s.crop_area_min == 0.05f && s.crop_area_max == 1.0f, "crop_area %g..%g", s.crop_area_min,
              s.crop_area_max);
        CHECK(s.model.num_stages == 3 && s.model.depth[0] == 1 && s.model.depth[1] == 1 && s.model.depth[2] == 1,
              "default depth");
        CHECK(s.model.base_width == 16 && s.model.width == 1 && s.model.gn_groups == 8 && s.model.stem == STEM_SMALL &&
                  s.model.block == BLOCK_BOTTLENECK,
              "default model widths/stem/block");
        CHECK(s.model.in_channels == 0 && s.model.num_classes == 0 && s.model.image_size == 0,
              "in/out sizes should wait for the dataset");
        CHECK(s.teacher[0] == 0 && s.teacher_job[0] == 0, "teacher set");
        CHECK(s.teacher_precision == PRECISION_FLOAT32, "teacher_precision %d", s.teacher_precision);
        CHECK(s.seed == 0 && s.threads == 0 && s.eval_every == 0 && s.checkpoint_every == 0, "seed/threads/every");
        check_json_round_trip(&s, "minimal");
    }

    TEST_CASE("job spec: canonical JSON parses back to the same spec");
    const char *full =
        "{\"kind\":\"distill\",\"dataset\":{\"path\":\"/data/x\",\"val_size\":500,\"test_size\":300,\"subset_size\":2000,"
        "\"subset_seed\":77},\"model\":{\"depth\":[2,3,1],\"base_width\":24,\"width\":2,\"gn_groups\":6,"
        "\"stem\":\"bit\",\"block\":\"basic\",\"in_channels\":3,\"num_classes\":12,\"image_size\":64},"
        "\"teacher\":\"/w/teacher.safetensors\","
        "\"batch_size\":96,\"steps\":3000,\"lr\":0.0031234567,\"weight_decay\":0.00037777777,\"clip_norm\":2.5000001,"
        "\"warmup_steps\":150,\"temperature\":2.71828183,\"mixup\":false,\"flip\":false,\"crop\":\"random\","
        "\"crop_area\":[0.123456789,0.9],\"eval_resize\":73,\"eval_crop\":64,\"eval_every\":250,\"checkpoint_every\":500,"
        "\"seed\":9,\"threads\":3}";
    if (parse_ok(full, &s)) {
        CHECK(s.kind == JOB_DISTILL && strcmp(s.teacher, "/w/teacher.safetensors") == 0, "kind/teacher");
        CHECK(strcmp(s.dataset.path, "/data/x") == 0 && strcmp(s.dataset.format, "idx") == 0 && !s.dataset.name[0],
              "dataset path/format/name: %s %s %s", s.dataset.path, s.dataset.format, s.dataset.name);
        CHECK(s.dataset.val_size == 500 && s.dataset.test_size == 300 && s.dataset.subset_size == 2000 &&
                  s.dataset.subset_seed == 77,
              "dataset ints");
        CHECK(s.model.num_stages == 3 && s.model.depth[1] == 3 && s.model.base_width == 24 && s.model.gn_groups == 6 &&
                  s.model.stem == STEM_BIT && s.model.block == BLOCK_BASIC && s.model.image_size == 64,
              "model fields");
        CHECK(s.lr == 0.0031234567f && s.temperature == 2.71828183f && s.crop == CROP_RANDOM && !s.mixup && !s.flip,
              "training fields");
        CHECK(s.crop_area_min == 0.123456789f && s.crop_area_max == 0.9f, "crop_area");
        check_json_round_trip(&s, "full");
    }
    if (parse_ok("{\"kind\":\"distill\",\"teacher\":{\"job\":\"job-42\"},\"epochs\":2.5,\"dataset\":\"mnist\"}", &s)) {
        CHECK(strcmp(s.teacher_job, "job-42") == 0 && !s.teacher[0], "teacher job %s", s.teacher_job);
        CHECK(s.have_epochs && s.epochs == 2.5 && s.steps == 0, "epochs %g steps %ld", s.epochs, s.steps);
        CHECK(strcmp(s.dataset.name, "mnist") == 0, "dataset %s", s.dataset.name);
        check_json_round_trip(&s, "epochs + teacher job");
    }

    TEST_CASE("job spec: teacher_precision");
    if (parse_ok("{\"kind\":\"distill\",\"teacher\":\"t.safetensors\",\"steps\":10,\"teacher_precision\":\"float32\"}",
                 &s))
        CHECK(s.teacher_precision == PRECISION_FLOAT32, "teacher_precision %d", s.teacher_precision);
    if (bf16_fast() &&
        parse_ok("{\"kind\":\"distill\",\"teacher\":\"t.safetensors\",\"steps\":10,\"teacher_precision\":\"bfloat16\"}",
                 &s)) {
        CHECK(s.teacher_precision == PRECISION_BFLOAT16, "teacher_precision %d", s.teacher_precision);
        check_json_round_trip(&s, "bfloat16 teacher");
    }

    TEST_CASE("job spec: precision (the trained model's convolutions)");
    if (parse_ok("{\"kind\":\"train\",\"steps\":10}", &s))
        CHECK(s.precision == PRECISION_FLOAT32, "precision defaults to float32, got %d", s.precision);
    if (bf16_fast() && parse_ok("{\"kind\":\"train\",\"steps\":10,\"precision\":\"bfloat16\"}", &s)) {
        CHECK(s.precision == PRECISION_BFLOAT16, "precision %d", s.precision);
        check_json_round_trip(&s, "bfloat16 training");
    }
    if (bf16_fast() && parse_ok("{\"kind\":\"distill\",\"teacher\":\"t.safetensors\",\"steps\":10,"
                                "\"precision\":\"bfloat16\",\"teacher_precision\":\"bfloat16\"}", &s)) {
        CHECK(s.precision == PRECISION_BFLOAT16 && s.teacher_precision == PRECISION_BFLOAT16, "precision %d, %d",
              s.precision, s.teacher_precision);
        check_json_round_trip(&s, "bfloat16 student and teacher");
    }

    TEST_CASE("job spec: a teacher with both weights and job is refused or kept whole");
    const char *both = "{\"kind\":\"distill\",\"teacher\":{\"weights\":\"a.safetensors\",\"job\":\"j7\"},\"steps\":10}";
    char both_err[ERR_LEN] = "";
    if (jobspec_parse(both, &s, both_err) < 0)
        CHECK(contains(both_err, "teacher"), "refused without naming teacher: %s", both_err);
    else
        check_json_round_trip(&s, "teacher weights + job");

    TEST_CASE("job spec: a resolved spec survives canonical JSON (checkpoint resume)");
    char err[ERR_LEN] = "";
    if (parse_ok("{\"kind\":\"train\",\"epochs\":3,\"lr\":0.0021234567}", &s)) {
        CHECK(jobspec_resolve(&s, 50000, 10, 1, 28, err) == 0, "resolve: %s", err);
        char *text = jobspec_to_json(&s);
        JobSpec back;
        int rc = text ? jobspec_parse(text, &back, err) : -1;
        CHECK(rc == 0, "resolved spec's JSON refused: %s", err);
        if (rc == 0) {
            CHECK(jobspec_resolve(&back, 50000, 10, 1, 28, err) == 0, "re-resolve: %s", err);
            CHECK(back.steps == s.steps && back.warmup_steps == s.warmup_steps && back.lr == s.lr &&
                      back.eval_every == s.eval_every && back.checkpoint_every == s.checkpoint_every &&
                      back.eval_crop == s.eval_crop && back.eval_resize == s.eval_resize &&
                      back.model.num_classes == s.model.num_classes && back.model.image_size == s.model.image_size,
                  "resumed spec differs: steps %ld/%ld warmup %ld/%ld", back.steps, s.steps, back.warmup_steps,
                  s.warmup_steps);
            char *again = jobspec_to_json(&back);
            CHECK(again && strcmp(again, text) == 0, "resolved canonical JSON changes on resume:\n    %s\n    %s", text,
                  again ? again : "(null)");
            free(again);
        }
        free(text);
    }

    TEST_CASE("job spec: canonical JSON keeps epochs exactly");
    /* epochs is a double; the canonical JSON must not round it (it decides the step count) */
    if (parse_ok("{\"kind\":\"train\",\"epochs\":2.3456789012}", &s)) {
        char *text = jobspec_to_json(&s);
        JobSpec back;
        if (text && jobspec_parse(text, &back, err) == 0) {
            CHECK(back.epochs == s.epochs, "epochs %.17g comes back as %.17g from %s", s.epochs, back.epochs, text);
        } else {
            CHECK(0, "canonical JSON refused: %s", err);
        }
        free(text);
    }
    if (parse_ok("{\"kind\":\"train\",\"epochs\":1.00000000049,\"batch_size\":1}", &s)) {
        char *text = jobspec_to_json(&s);
        JobSpec back;
        if (text && jobspec_parse(text, &back, err) == 0 && jobspec_resolve(&s, 60000000, 10, 1, 28, err) == 0 &&
            jobspec_resolve(&back, 60000000, 10, 1, 28, err) == 0) {
            CHECK(back.steps == s.steps, "steps %ld from the spec, %ld from its canonical JSON", s.steps, back.steps);
        } else {
            CHECK(0, "setup: %s", err);
        }
        free(text);
    }
}

static void test_jobspec_resolve(void) {
    TEST_CASE("job spec resolve: epochs -> steps, default warmup, sizes from the dataset");
    JobSpec s;
    char err[ERR_LEN] = "";
    if (parse_ok("{\"kind\":\"train\",\"epochs\":3}", &s)) {
        int rc = jobspec_resolve(&s, 50000, 10, 1, 28, err);
        CHECK(rc == 0, "resolve: %s", err);
        CHECK(s.steps == 1172, "3 epochs of 50000 at batch 128: %ld steps, expected ceil(1171.875) = 1172", s.steps);
        CHECK(s.warmup_steps == 58, "default warmup %ld, expected 5%% of 1172 = 58", s.warmup_steps);
        CHECK(s.model.in_channels == 1 && s.model.num_classes == 10 && s.model.image_size == 28,
              "sizes from the dataset: %d %d %d", s.model.in_channels, s.model.num_classes, s.model.image_size);
        /* docs/jobspec.md: evaluate once at the end, checkpoint every min(1000, steps), eval at image size */
        CHECK(s.eval_every == 1172, "default eval_every %ld, expected the whole schedule", s.eval_every);
        CHECK(s.checkpoint_every == 1000, "default checkpoint_every %ld, expected min(1000, 1172)", s.checkpoint_every);
        CHECK(s.eval_crop == 28 && s.eval_resize == 28, "eval crop/resize %d/%d for 28-px images", s.eval_crop,
              s.eval_resize);
    }
    if (parse_ok("{\"kind\":\"train\",\"epochs\":1,\"batch_size\":100}", &s)) {
        CHECK(jobspec_resolve(&s, 1000, 10, 1, 28, err) == 0, "resolve: %s", err);
        CHECK(s.steps == 10, "exact division: %ld steps", s.steps);
        CHECK(s.checkpoint_every == 10 && s.eval_every == 10, "checkpoint/eval every %ld/%ld for a 10-step job",
              s.checkpoint_every, s.eval_every);
    }
    if (parse_ok("{\"kind\":\"train\",\"epochs\":2,\"dataset\":{\"name\":\"mnist\",\"subset_size\":1000}}", &s)) {
        CHECK(jobspec_resolve(&s, 60000, 10, 1, 28, err) == 0, "resolve: %s", err);
        CHECK(s.steps == 16, "2 epochs of a 1000-image subset at 128: %ld steps, expected 16", s.steps);
    }
    if (parse_ok("{\"kind\":\"train\",\"steps\":1000,\"warmup_steps\":0}", &s)) {
        CHECK(jobspec_resolve(&s, 100, 10, 1, 28, err) == 0, "resolve: %s", err);
        CHECK(s.steps == 1000 && s.warmup_steps == 0, "explicit steps/warmup changed: %ld %ld", s.steps,
              s.warmup_steps);
    }
    if (parse_ok("{\"kind\":\"train\",\"steps\":1000}", &s)) {
        CHECK(jobspec_resolve(&s, 100, 10, 1, 28, err) == 0, "resolve: %s", err);
        CHECK(s.warmup_steps == 50, "default warmup of 1000 steps: %ld", s.warmup_steps);
    }

    TEST_CASE("job spec resolve: refusals name the key");
    if (parse_ok("{\"kind\":\"train\",\"steps\":100,\"dataset\":{\"name\":\"mnist\",\"subset_size\":70000}}", &s)) {
        CHECK(jobspec_resolve(&s, 60000, 10, 1, 28, err) < 0, "subset larger than the training set accepted");
        CHECK(contains(err, "dataset.subset_size"), "message: %s", err);
    }
    if (parse_ok("{\"kind\":\"train\",\"steps\":100,\"model\":{\"num_classes\":5}}", &s)) {
        CHECK(jobspec_resolve(&s, 60000, 10, 1, 28, err) < 0, "5-class model on a 10-class dataset accepted");
        CHECK(contains(err, "model.num_classes"), "message: %s", err);
    }
    if (parse_ok("{\"kind\":\"train\",\"steps\":100,\"model\":{\"in_channels\":3}}", &s)) {
        CHECK(jobspec_resolve(&s, 60000, 10, 1, 28, err) < 0, "3-channel model on 1-channel images accepted");
        CHECK(contains(err, "model.in_channels"), "message: %s", err);
    }
    /* warmup checked again once epochs become steps: 1 epoch of 256 at 128 = 2 steps */
    if (parse_ok("{\"kind\":\"train\",\"epochs\":1,\"warmup_steps\":5}", &s)) {
        CHECK(jobspec_resolve(&s, 256, 10, 1, 28, err) < 0, "warmup 5 of a 2-step schedule accepted");
        CHECK(contains(err, "warmup_steps"), "message: %s", err);
    }
}

/* ---- 8. BLAS core -------------------------------------------------------------- */

static void expect_core(int avx512, int avx2, const char *current, const char *want) {
    const char *got = blas_preferred_core(avx512, avx2, current);
    int same = (!got && !want) || (got && want && strcmp(got, want) == 0);
    CHECK(same, "avx512=%d avx2=%d current=%s: got %s, expected %s", avx512, avx2, current ? current : "NULL",
          got ? got : "NULL", want ? want : "NULL");
}

static void test_blas(void) {
    TEST_CASE("blas_preferred_core: upgrade weak cores, keep good ones");
    expect_core(1, 1, "Prescott", "SkylakeX");
    expect_core(1, 1, "Haswell", "SkylakeX");
    expect_core(1, 1, "Zen", "SkylakeX");
    expect_core(1, 1, "SkylakeX", NULL);
    expect_core(1, 1, "Cooperlake", NULL);
    expect_core(0, 1, "Prescott", "Haswell");
    expect_core(0, 1, "Nehalem", "Haswell");
    expect_core(0, 1, "Sandybridge", "Haswell");
    expect_core(0, 1, "Zen", NULL);
    expect_core(0, 1, "Haswell", NULL);
    expect_core(0, 0, "Prescott", NULL);
    expect_core(0, 0, "Nehalem", NULL);
}

/* The same weights in a training model and in one built for inference:
 * bit-equal logits, no gradient blocks, no checkpoints; model_load builds
 * the inference kind, and model_predict runs more images than it holds. */
static void inference_matches(const ModelConfig *c, uint64_t seed) {
    char err[ERR_LEN] = "";
    const int batch = 3;
    Model *train = new_model(c, batch), *infer = NULL;
    model_init_bit(train, seed);
    Rng rng = rng_derive(seed, 9, 0);
    for (size_t i = 0; i < train->num_floats; i++) train->weights[i] += 0.05f * (float)rng_normal(&rng);
    CHECK(model_create_inference(&infer, c, batch, err) == 0 && infer, "model_create_inference: %s", err);
    if (!infer) {
        model_free(train);
        return;
    }
    CHECK(infer->inference && !infer->grads && !infer->adam_m && !infer->adam_v && !infer->dw_hat && !infer->grad_acts,
          "an inference model holds training blocks");
    CHECK(infer->num_acts * 4 < train->num_acts * 3, "inference activations %zu floats, training %zu: no reuse",
          infer->num_acts, train->num_acts);
    /* the activation gradients reuse memory as inference activations do, but
     * for the identity shortcuts, which inference adds onto x in place */
    CHECK(train->num_grad_acts * 4 < train->num_acts * 3 && infer->num_acts <= train->num_grad_acts,
          "training activation gradients %zu floats (activations %zu), inference activations %zu: not reused as "
          "designed", train->num_grad_acts, train->num_acts, infer->num_acts);
    memcpy(infer->weights, train->weights, train->num_floats * sizeof(float));
    const size_t image = (size_t)c->in_channels * c->image_size * c->image_size;
    float *x = xcalloc(batch * image, sizeof(float));
    for (size_t i = 0; i < batch * image; i++) x[i] = (float)rng_normal(&rng);
    const size_t k = (size_t)batch * c->num_classes;
    float *want = xcalloc(k, sizeof(float));
    memcpy(want, model_forward(train, x, batch), k * sizeof(float));
    float max_abs = 0;
    for (size_t i = 0; i < k; i++) max_abs = fmaxf(max_abs, fabsf(want[i]));
    CHECK(max_abs > 1e-3f, "logits are all near zero (%g): the comparison would prove nothing", max_abs);
    CHECK(same_bits(model_forward(infer, x, batch), want, k), "inference logits differ from the training model's");
    CHECK(model_save_checkpoint(infer, 1, "{}", tmp_path("inference.ckpt"), err) != 0 && strstr(err, "inference"),
          "a checkpoint of an inference model: %s", err);
    const char *path = tmp_path("inference.safetensors");
    CHECK(model_save(train, path, err) == 0, "model_save: %s", err);
    Model *loaded = NULL;
    CHECK(model_load(&loaded, path, batch, err) == 0 && loaded && loaded->inference, "model_load: %s", err);
    if (loaded) CHECK(same_bits(model_forward(loaded, x, batch), want, k), "a loaded model's logits differ");
    model_free(loaded);
    /* model_predict: passes of at most the capacity (2 images), side by
     * side in three lanes (one image each) */
    const int threads = omp_get_max_threads();
    omp_set_num_threads(3);
    loaded = NULL;
    CHECK(model_load(&loaded, path, batch - 1, err) == 0 && loaded, "model_load: %s", err);
    if (loaded) {
        float *got = xcalloc(k, sizeof(float));
        model_predict(loaded, got, x, batch);
        CHECK(loaded->num_lanes == 3, "model_predict ran its passes in %d lanes, not 3", loaded->num_lanes);
        /* not bit for bit: a pass of fewer images groups the convolutions'
         * GEMMs otherwise (measured: 2e-7 here) */
        float worst = 0;
        for (size_t i = 0; i < k; i++) worst = fmaxf(worst, fabsf(got[i] - want[i]));
        CHECK(worst <= 1e-5f * max_abs, "model_predict in passes of 1 image: logits differ by %g (largest %g)", worst,
              max_abs);
        /* again, in the same lanes: the same bits */
        float *again = xcalloc(k, sizeof(float));
        model_predict(loaded, again, x, batch);
        CHECK(same_bits(again, got, k), "model_predict in lanes: a second call's logits differ");
        free(again);
        free(got);
    }
    model_free(loaded);
    /* in bfloat16 the passes change nothing: each column of a bf16 GEMM sums
     * its products in the same order whatever the columns beside it */
    Model *whole = NULL;
    loaded = NULL;
    if (bf16_fast() && model_load(&whole, path, batch, err) == 0 && model_load(&loaded, path, 1, err) == 0 &&
        model_set_bf16(whole, err) == 0 && model_set_bf16(loaded, err) == 0) {
        float *got = xcalloc(k, sizeof(float));
        model_predict(loaded, got, x, batch);
        CHECK(same_bits(got, model_forward(whole, x, batch), k), "bf16 logits in passes of 1 image differ from one "
                                                                  "pass of %d", batch);
        free(got);
    } else
        CHECK(!bf16_fast(), "bf16 models: %s", err);
    model_free(whole);
    model_free(loaded);
    omp_set_num_threads(threads);
    free(x);
    free(want);
    model_free(infer);
    model_free(train);
}

static void test_inference_model(void) {
    ModelConfig c;
    TEST_CASE("inference model (stem=bit): activations reused, same logits bit for bit (in passes: to rounding; "
              "in bf16, bit for bit), no gradients, no checkpoints");
    bit_config(&c);
    inference_matches(&c, 21);
    TEST_CASE("inference model (stem=small): activations reused, same logits bit for bit (in passes: to rounding; "
              "in bf16, bit for bit), no gradients, no checkpoints");
    small_config(&c);
    inference_matches(&c, 22);
    /* basic units: the first is an identity unit, whose input is the stem's output */
    TEST_CASE("inference model (block=basic): activations reused, same logits bit for bit (in passes: to rounding; "
              "in bf16, bit for bit), no gradients, no checkpoints");
    small_config(&c);
    c.block = BLOCK_BASIC;
    c.depth[0] = 2;
    inference_matches(&c, 23);
    /* 160 px: the stem's and the first stage's activations (100 K floats an
     * image) outweigh their kernels, so the first stage runs image by image
     * and the second in passes of the capacity */
    TEST_CASE("inference model with a front (stem=bit, 160 px): the first stage image by image, the same logits");
    bit_config(&c);
    c.image_size = 160;
    Model *m = NULL;
    char err[ERR_LEN] = "";
    CHECK(model_create_inference(&m, &c, 3, err) == 0 && m, "model_create_inference: %s", err);
    if (m) CHECK(m->front_units == 2 && m->front_pass == 1, "front: %d units in passes of %d images, expected 2 in 1",
                 m->front_units, m->front_pass);
    model_free(m);
    inference_matches(&c, 24);
}

/* |a - b| / |b| over whole vectors (L2) */
static double relative_error(const float *a, const float *b, size_t n) {
    double d = 0, norm = 0;
    for (size_t i = 0; i < n; i++) d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]), norm += (double)b[i] * b[i];
    return norm > 0 ? sqrt(d / norm) : sqrt(d);
}

/* A training model in bf16 (mixed precision): the same weights give logits
 * and gradients close to the float model's, and a weight change is packed
 * anew. Measured on this model (random weights, batch 4): the logits differ
 * by 0.6 % (L2), the gradient by 0.8 % at the head growing to 17-30 % at the
 * stem, layer by layer - and as much with the backward in float, so that is
 * the forward's rounding reaching GroupNorm statistics, ReLU masks and
 * max-pool choices, not the backward's GEMMs, which test_ops checks against
 * exact sums. Wrong backward GEMMs give errors of 100 % and more. */
#define BF16_LOGITS_MAX 2e-2 /* measured 6.2e-3 */
#define BF16_GRADS_MAX 0.35  /* measured 0.16 over all parameters */
/* A batch of normal images and logit gradients for c, x then dlogits. */
static void random_batch(Rng *rng, const ModelConfig *c, int batch, float **x, float **dlogits) {
    const size_t image = (size_t)c->in_channels * c->image_size * c->image_size, k = (size_t)batch * c->num_classes;
    *x = xcalloc(batch * image, sizeof(float));
    *dlogits = xcalloc(k, sizeof(float));
    for (size_t i = 0; i < batch * image; i++) (*x)[i] = (float)rng_normal(rng);
    for (size_t i = 0; i < k; i++) (*dlogits)[i] = (float)rng_normal(rng);
}

/* After an Adam step on its gradients, m's logits on x are a fresh model's
 * given the new weights (in bf16 if m is): the kernels as the convolutions
 * use them (standardized, packed, Winograd's U) follow the weights. */
static void check_step(Model *m, const ModelConfig *c, const float *x, int batch, const float *before,
                       const char *what) {
    char err[ERR_LEN] = "";
    const size_t k = (size_t)batch * c->num_classes;
    OptimConfig opt = {.lr = 1e-2f, .weight_decay = 0, .clip_norm = 0, .warmup_steps = 0, .total_steps = 10};
    optimizer_step(m, &opt, 1);
    float *after = xcalloc(k, sizeof(float));
    memcpy(after, model_forward(m, x, batch), k * sizeof(float));
    Model *fresh = new_model(c, batch);
    memcpy(fresh->weights, m->weights, m->num_floats * sizeof(float));
    if (m->w_bf16) CHECK(model_set_bf16(fresh, err) == 0, "model_set_bf16: %s", err);
    CHECK(same_bits(model_forward(fresh, x, batch), after, k), "%s: after a step the logits are not those of the "
          "new weights: stale kernels", what);
    CHECK(!same_bits(after, before, k), "%s: the step changed nothing", what);
    model_free(fresh);
    free(after);
}

static void test_weights_change(void) {
    TEST_CASE("after a step a model's logits are those of its new weights: no stale standardized or Winograd kernels");
    ModelConfig c;
    bit_config(&c);
    const int batch = 4;
    Model *m = new_model(&c, batch);
    model_init_bit(m, 37);
    Rng rng = rng_derive(37, 1, 0);
    for (size_t i = 0; i < m->num_floats; i++) m->weights[i] += 0.05f * (float)rng_normal(&rng); /* not a zero head */
    int winograd = 0;
    for (int i = 0; i < m->num_convs; i++) winograd += conv_winograd_u_size(&m->convs[i]->shape) > 0;
    CHECK(winograd > 0 && m->w_wino, "the test model has no float Winograd conv with a kept U (%d)", winograd);
    float *x, *dlogits, *before = xcalloc((size_t)batch * c.num_classes, sizeof(float));
    random_batch(&rng, &c, batch, &x, &dlogits);
    memcpy(before, model_forward(m, x, batch), (size_t)batch * c.num_classes * sizeof(float));
    const float u_before = m->w_wino[0];
    model_zero_grad(m);
    model_backward(m, dlogits, batch);
    check_step(m, &c, x, batch, before, "float");
    CHECK(m->w_wino[0] != u_before, "the step left the first Winograd conv's U as it was: the test tests nothing");
    free(x), free(dlogits), free(before);
    model_free(m);
}

static void test_bf16_training(void) {
    TEST_CASE("mixed precision: a training model in bf16 has float's logits and gradients within bf16 rounding");
    if (!bf16_fast()) {
        printf("     skipped: this build has no AVX512-BF16 kernel\n");
        return;
    }
    ModelConfig c;
    bit_config(&c);
    const int batch = 4;
    Model *f32 = new_model(&c, batch), *b16 = new_model(&c, batch);
    char err[ERR_LEN] = "";
    model_init_bit(f32, 31);
    Rng rng = rng_derive(31, 9, 0);
    for (size_t i = 0; i < f32->num_floats; i++) f32->weights[i] += 0.05f * (float)rng_normal(&rng);
    memcpy(b16->weights, f32->weights, f32->num_floats * sizeof(float));
    CHECK(model_set_bf16(b16, err) == 0, "model_set_bf16 on a training model: %s", err);
    int in_bf16 = 0, in_float = 0; /* the model has convs of both kinds (conv_bf16_faster) */
    for (int i = 0; i < b16->num_convs; i++) {
        const ConvShape *s = &b16->convs[i]->shape;
        in_bf16 += conv_bf16_faster(s), in_float += conv_is_winograd(s) && !conv_bf16_faster(s);
    }
    CHECK(in_bf16 > 0 && in_float > 0, "the test model runs %d convs in bf16 and %d Winograd convs in float: want "
          "both", in_bf16, in_float);
    const size_t k = (size_t)batch * c.num_classes;
    float *x, *dlogits, *want = xcalloc(k, sizeof(float)), *got = xcalloc(k, sizeof(float));
    random_batch(&rng, &c, batch, &x, &dlogits);
    memcpy(want, model_forward(f32, x, batch), k * sizeof(float));
    memcpy(got, model_forward(b16, x, batch), k * sizeof(float));
    const double logit_err = relative_error(got, want, k);
    model_zero_grad(f32);
    model_zero_grad(b16);
    model_backward(f32, dlogits, batch);
    model_backward(b16, dlogits, batch);
    const double grad_err = relative_error(b16->grads, f32->grads, f32->num_floats);
    printf("     relative L2 error: logits %.2g, gradients %.2g\n", logit_err, grad_err);
    CHECK(logit_err < BF16_LOGITS_MAX && logit_err > 1e-5, "logits off by %.3g: want bf16 rounding (1e-5 .. %g)",
          logit_err, BF16_LOGITS_MAX);
    CHECK(grad_err < BF16_GRADS_MAX && grad_err > 1e-5, "gradients off by %.3g: want bf16 rounding (1e-5 .. %g)",
          grad_err, BF16_GRADS_MAX);
    /* a step changes the weights, so the next forward packs them again */
    check_step(b16, &c, x, batch, got, "bf16");
    free(x), free(dlogits), free(want), free(got);
    model_free(f32);
    model_free(b16);
}

/* A training model's front (plan_front) changes only the order of the work:
 * a model with one gives the logits of a batch, and the gradients to
 * rounding (each thread sums the front's kernel and GroupNorm gradients of
 * its own images), of the same model built for one of the front's passes,
 * which has none, run on the batch a pass at a time. On 2 threads, in float
 * or bf16. */
static void training_front_matches(const ModelConfig *c, int batch, int bf16, uint64_t seed) {
    char err[ERR_LEN] = "";
    const int threads = omp_get_max_threads();
    omp_set_num_threads(2);
    Model *m = new_model(c, batch);
    CHECK(m->front_pass > 0 && m->front_views && m->front_params > 0, "no front (%d units in passes of %d images)",
          m->front_units, m->front_pass);
    const int pass = m->front_pass > 0 ? m->front_pass : batch;
    Model *h = new_model(c, pass);
    CHECK(h->front_pass == 0, "the model for %d images has a front too: nothing to compare with", pass);
    if (bf16 && (model_set_bf16(m, err) != 0 || model_set_bf16(h, err) != 0)) {
        CHECK(0, "model_set_bf16: %s", err);
        bf16 = 0;
    }
    model_init_bit(m, seed);
    Rng rng = rng_derive(seed, 9, 0);
    for (size_t i = 0; i < m->num_floats; i++) m->weights[i] += 0.05f * (float)rng_normal(&rng);
    memcpy(h->weights, m->weights, m->num_floats * sizeof(float));
    const size_t image = (size_t)c->in_channels * c->image_size * c->image_size, k = (size_t)batch * c->num_classes;
    float *x = xcalloc(batch * image, sizeof(float)), *dlogits = xcalloc(k, sizeof(float));
    for (size_t i = 0; i < batch * image; i++) x[i] = (float)rng_normal(&rng);
    for (size_t i = 0; i < k; i++) dlogits[i] = (float)rng_normal(&rng);
    float *got = xcalloc(k, sizeof(float)), *want = xcalloc(k, sizeof(float));
    model_zero_grad(m);
    memcpy(got, model_forward(m, x, batch), k * sizeof(float));
    model_backward(m, dlogits, batch);
    model_zero_grad(h); /* the passes' gradients add up */
    for (int at = 0; at < batch; at += pass) {
        const int n = batch - at < pass ? batch - at : pass;
        memcpy(want + (size_t)at * c->num_classes, model_forward(h, x + at * image, n),
               (size_t)n * c->num_classes * sizeof(float));
        model_backward(h, dlogits + (size_t)at * c->num_classes, n);
    }
    const double logit_err = relative_error(got, want, k);
    const double front_err = relative_error(m->grads, h->grads, m->front_params);
    const double rest_err =
        relative_error(m->grads + m->front_params, h->grads + m->front_params, m->num_floats - m->front_params);
    CHECK(logit_err <= 1e-6, "logits with and without the front differ by %.3g", logit_err);
    CHECK(front_err <= 1e-5 && rest_err <= 1e-5, "gradients with and without the front differ by %.3g (the front's "
          "parameters) and %.3g (the rest)", front_err, rest_err);
    double norm = 0;
    for (size_t i = 0; i < m->front_params; i++) norm += (double)h->grads[i] * h->grads[i];
    CHECK(norm > 1e-6, "the front's gradients are all near zero (%g): the comparison would prove nothing", norm);
    free(x), free(dlogits), free(got), free(want);
    model_free(m);
    model_free(h);
    omp_set_num_threads(threads);
}

static void test_training_front(void) {
    ModelConfig c;
    TEST_CASE("training model with a front (stem=bit, 160 px, 48 images): the same logits and gradients without it");
    bit_config(&c);
    c.image_size = 160;
    training_front_matches(&c, 48, 0, 31);
    if (bf16_fast()) {
        TEST_CASE("training model with a front in bf16 (mixed precision): the same logits and gradients without it");
        training_front_matches(&c, 48, 1, 32);
    }
    TEST_CASE("training model with a front (block=basic, 96 px, 40 images): the same logits and gradients without "
              "it");
    small_config(&c);
    c.block = BLOCK_BASIC;
    c.base_width = 16;
    c.image_size = 96;
    training_front_matches(&c, 40, 0, 33);
}

int main(void) {
    if (!mkdtemp(tmp_dir)) die("mkdtemp", tmp_dir);
    test_round_trip();
    test_file_layout();
    test_bad_files();
    test_checkpoints();
    test_inference_model();
    test_weights_change();
    test_bf16_training();
    test_training_front();
    test_init();
    test_schedule();
    test_optimizer();
    test_jobspec_refusals();
    test_jobspec_accepted();
    test_jobspec_resolve();
    test_blas();
    nftw(tmp_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return test_finish();
}
