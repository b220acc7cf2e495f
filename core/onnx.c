/* onnx.c - writes a Model as an ONNX ModelProto (see onnx.h for the graph).
 *
 * The protobuf encoding is small enough to write by hand: every field is a
 * tag (field number << 3 | wire type) followed by a varint, a little-endian
 * fixed32, or a varint length and that many bytes. A nested message is built
 * in its own buffer and appended with its length, except where the bytes are
 * the weights: a tensor's values are converted straight into the buffer of
 * initializers, and that buffer is copied once, into the model. Field
 * numbers are onnx.proto's. */
#include "onnx.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ops.h"
#include "util.h"

#define ONNX_IR_VERSION 8
#define ONNX_OPSET 13
#define ONNX_FLOAT 1 /* TensorProto.DataType */
#define ONNX_INT64 7
#define PROTOBUF_MAX ((size_t)INT32_MAX) /* protobuf refuses larger messages */

/* ---------------------------------------------------------------- protobuf */

enum { WIRE_VARINT = 0, WIRE_LEN = 2, WIRE_FIXED32 = 5 };

/* field numbers from onnx.proto */
enum { MODEL_IR_VERSION = 1, MODEL_PRODUCER_NAME = 2, MODEL_DOC_STRING = 6, MODEL_GRAPH = 7, MODEL_OPSET_IMPORT = 8,
       MODEL_METADATA_PROPS = 14 };
enum { OPSET_DOMAIN = 1, OPSET_VERSION = 2 };
enum { ENTRY_KEY = 1, ENTRY_VALUE = 2 };
enum { GRAPH_NODE = 1, GRAPH_NAME = 2, GRAPH_INITIALIZER = 5, GRAPH_INPUT = 11, GRAPH_OUTPUT = 12 };
enum { NODE_INPUT = 1, NODE_OUTPUT = 2, NODE_NAME = 3, NODE_OP_TYPE = 4, NODE_ATTRIBUTE = 5 };
enum { ATTR_NAME = 1, ATTR_F = 2, ATTR_I = 3, ATTR_INTS = 8, ATTR_TYPE = 20 };
enum { ATTR_TYPE_FLOAT = 1, ATTR_TYPE_INT = 2, ATTR_TYPE_INTS = 7 };
enum { TENSOR_DIMS = 1, TENSOR_DATA_TYPE = 2, TENSOR_NAME = 8, TENSOR_RAW_DATA = 9 };
enum { VALUE_NAME = 1, VALUE_TYPE = 2 };
enum { TYPE_TENSOR = 1, TYPE_TENSOR_ELEM_TYPE = 1, TYPE_TENSOR_SHAPE = 2, SHAPE_DIM = 1, DIM_VALUE = 1,
       DIM_PARAM = 2 };

typedef struct {
    unsigned char *data;
    size_t len, cap;
    int failed; /* out of memory (or past the protobuf limit) once: every later write is dropped */
} Buf;

/* room for `more` bytes after len; 0 ok */
static int buf_reserve(Buf *b, size_t more) {
    if (b->failed) return -1;
    if (more > PROTOBUF_MAX || b->len + more > PROTOBUF_MAX) {
        b->failed = 1;
        return -1;
    }
    if (b->len + more > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + more) cap *= 2;
        unsigned char *p = realloc(b->data, cap);
        if (!p) {
            b->failed = 1;
            return -1;
        }
        b->data = p;
        b->cap = cap;
    }
    return 0;
}

/* `more` bytes appended, for the caller to fill; NULL once failed */
static unsigned char *buf_grow(Buf *b, size_t more) {
    if (buf_reserve(b, more) != 0) return NULL;
    unsigned char *at = b->data + b->len;
    b->len += more;
    return at;
}

static void buf_free(Buf *b) {
    free(b->data);
    *b = (Buf){0};
}

static void put_raw(Buf *b, const void *data, size_t size) {
    unsigned char *at = buf_grow(b, size);
    if (at && size) memcpy(at, data, size);
}

static void put_varint(Buf *b, uint64_t v) {
    unsigned char bytes[10];
    int n = 0;
    do {
        bytes[n] = v & 0x7f;
        v >>= 7;
        if (v) bytes[n] |= 0x80;
        n++;
    } while (v);
    put_raw(b, bytes, n);
}

static void put_tag(Buf *b, int field, int wire) { put_varint(b, (uint64_t)field << 3 | wire); }

static void put_int(Buf *b, int field, int64_t v) {
    put_tag(b, field, WIRE_VARINT);
    put_varint(b, (uint64_t)v); /* negative int64: ten bytes, two's complement, as protobuf does */
}

static void put_float(Buf *b, int field, float f) {
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    unsigned char bytes[4] = {u & 0xff, (u >> 8) & 0xff, (u >> 16) & 0xff, u >> 24};
    put_tag(b, field, WIRE_FIXED32);
    put_raw(b, bytes, 4);
}

static void put_bytes(Buf *b, int field, const void *data, size_t size) {
    put_tag(b, field, WIRE_LEN);
    put_varint(b, size);
    put_raw(b, data, size);
}

static void put_string(Buf *b, int field, const char *s) { put_bytes(b, field, s, strlen(s)); }

/* appends sub as a length-delimited field and frees it */
static void put_message(Buf *b, int field, Buf *sub) {
    if (sub->failed) b->failed = 1;
    put_bytes(b, field, sub->data, sub->len);
    buf_free(sub);
}

/* ------------------------------------------------------------------- graph */

typedef struct {
    const Model *m;
    Buf nodes, initializers;
    float *w_hat;   /* one standardized kernel at a time (room for the largest) */
    float *rstd;    /* its per-channel 1/std: weight_standardize_forward's cache, not exported */
} Graph;

static const char *param_name(const Model *m, size_t offset) {
    for (int i = 0; i < m->num_params; i++)
        if (m->params[i].offset == offset) return m->params[i].name;
    return "unknown";
}

/* An initializer: float32 (or int64) values, little-endian, under name. The
 * TensorProto's small fields are built apart; its raw_data goes straight
 * into the initializers. */
static void add_initializer(Graph *g, const char *name, int data_type, const int64_t *dims, int ndim,
                            const void *values, size_t count) {
    Buf head = {0};
    for (int i = 0; i < ndim; i++) put_int(&head, TENSOR_DIMS, dims[i]);
    put_int(&head, TENSOR_DATA_TYPE, data_type);
    put_string(&head, TENSOR_NAME, name);
    put_tag(&head, TENSOR_RAW_DATA, WIRE_LEN);
    const size_t width = data_type == ONNX_INT64 ? 8 : 4, raw = count * width;
    put_varint(&head, raw);
    Buf *b = &g->initializers;
    if (head.failed) b->failed = 1;
    put_tag(b, GRAPH_INITIALIZER, WIRE_LEN);
    put_varint(b, head.len + raw);
    put_raw(b, head.data, head.len);
    buf_free(&head);
    unsigned char *at = buf_grow(b, raw);
    for (size_t i = 0; at && i < count; i++) {
        uint64_t u;
        if (data_type == ONNX_INT64) {
            u = (uint64_t)((const int64_t *)values)[i];
        } else {
            uint32_t f;
            memcpy(&f, (const float *)values + i, sizeof f);
            u = f;
        }
        for (size_t k = 0; k < width; k++) *at++ = (u >> (8 * k)) & 0xff;
    }
}

static void add_floats(Graph *g, const char *name, const float *values, const int64_t *dims, int ndim) {
    size_t count = 1;
    for (int i = 0; i < ndim; i++) count *= (size_t)dims[i];
    add_initializer(g, name, ONNX_FLOAT, dims, ndim, values, count);
}

static void add_int64s(Graph *g, const char *name, const int64_t *values, int64_t count) {
    add_initializer(g, name, ONNX_INT64, &count, 1, values, (size_t)count);
}

typedef struct {
    const char *name;
    int kind;           /* ATTR_TYPE_INT, _INTS or _FLOAT */
    int64_t ints[4];
    int count;
    float f;
} Attr;

static void put_attribute(Buf *node, const Attr *a) {
    Buf b = {0};
    put_string(&b, ATTR_NAME, a->name);
    put_int(&b, ATTR_TYPE, a->kind);
    if (a->kind == ATTR_TYPE_FLOAT) put_float(&b, ATTR_F, a->f);
    else if (a->kind == ATTR_TYPE_INT) put_int(&b, ATTR_I, a->ints[0]);
    else
        for (int i = 0; i < a->count; i++) put_int(&b, ATTR_INTS, a->ints[i]);
    put_message(node, NODE_ATTRIBUTE, &b);
}

/* A node named after its output; inputs is NULL-terminated. */
static void add_node(Graph *g, const char *op, const char *const *inputs, const char *output, const Attr *attrs,
                     int num_attrs) {
    Buf n = {0};
    for (int i = 0; inputs[i]; i++) put_string(&n, NODE_INPUT, inputs[i]);
    put_string(&n, NODE_OUTPUT, output);
    put_string(&n, NODE_NAME, output);
    put_string(&n, NODE_OP_TYPE, op);
    for (int i = 0; i < num_attrs; i++) put_attribute(&n, &attrs[i]);
    put_message(&g->nodes, GRAPH_NODE, &n);
}

/* out = conv(in) with the standardized kernel of c, no bias */
static void emit_conv(Graph *g, const Conv *c, const char *in, const char *out) {
    const ConvShape *s = &c->shape;
    const int fan_in = s->in_channels * s->kernel_h * s->kernel_w;
    weight_standardize_forward(g->w_hat, g->rstd, g->m->weights + c->weight, s->out_channels, fan_in);
    char name[128];
    snprintf(name, sizeof name, "%s_hat", param_name(g->m, c->weight));
    const int64_t dims[4] = {s->out_channels, s->in_channels, s->kernel_h, s->kernel_w};
    add_floats(g, name, g->w_hat, dims, 4);
    const char *inputs[] = {in, name, NULL};
    const Attr attrs[] = {
        {"kernel_shape", ATTR_TYPE_INTS, {s->kernel_h, s->kernel_w}, 2, 0},
        {"strides", ATTR_TYPE_INTS, {s->stride, s->stride}, 2, 0},
        {"pads", ATTR_TYPE_INTS, {s->pad, s->pad, s->pad, s->pad}, 4, 0},
    };
    add_node(g, "Conv", inputs, out, attrs, 3);
}

/* out = relu(groupnorm(in)) on a (N, C, h, w) tensor */
static void emit_norm_relu(Graph *g, const Norm *n, const char *prefix, const char *in, int h, int w, char *out,
                           size_t out_size) {
    const Model *m = g->m;
    const int c = n->channels;
    char grouped[128], normalized[128], back[128], scaled[128], shifted[128], shape[128];
    snprintf(grouped, sizeof grouped, "%s/grouped", prefix);
    snprintf(normalized, sizeof normalized, "%s/normalized", prefix);
    snprintf(back, sizeof back, "%s/ungrouped", prefix);
    snprintf(scaled, sizeof scaled, "%s/scaled", prefix);
    snprintf(shifted, sizeof shifted, "%s/shifted", prefix);
    snprintf(shape, sizeof shape, "%s/shape", prefix);
    snprintf(out, out_size, "%s/relu", prefix);

    const char *to_groups[] = {in, "groupnorm/grouped_shape", NULL};
    add_node(g, "Reshape", to_groups, grouped, NULL, 0);
    const char *inorm[] = {grouped, "groupnorm/ones", "groupnorm/zeros", NULL};
    const Attr eps = {"epsilon", ATTR_TYPE_FLOAT, {0}, 0, GN_EPS};
    add_node(g, "InstanceNormalization", inorm, normalized, &eps, 1);
    const int64_t back_shape[4] = {0, c, h, w}; /* 0: the batch, as it is */
    add_int64s(g, shape, back_shape, 4);
    const char *ungroup[] = {normalized, shape, NULL};
    add_node(g, "Reshape", ungroup, back, NULL, 0);
    const int64_t dims[3] = {c, 1, 1};
    const char *gamma = param_name(m, n->gamma), *beta = param_name(m, n->beta);
    add_floats(g, gamma, m->weights + n->gamma, dims, 3);
    add_floats(g, beta, m->weights + n->beta, dims, 3);
    const char *mul[] = {back, gamma, NULL}, *add[] = {scaled, beta, NULL}, *relu[] = {shifted, NULL};
    add_node(g, "Mul", mul, scaled, NULL, 0);
    add_node(g, "Add", add, shifted, NULL, 0);
    add_node(g, "Relu", relu, out, NULL, 0);
}

/* The initializers every GroupNorm shares. */
static void add_groupnorm_constants(Graph *g) {
    const int groups = g->m->cfg.gn_groups;
    const int64_t grouped[3] = {0, groups, -1};
    add_int64s(g, "groupnorm/grouped_shape", grouped, 3);
    float *ones = xcalloc(groups, sizeof(float)), *zeros = xcalloc(groups, sizeof(float));
    for (int i = 0; i < groups; i++) ones[i] = 1.0f;
    const int64_t dims[1] = {groups};
    add_floats(g, "groupnorm/ones", ones, dims, 1);
    add_floats(g, "groupnorm/zeros", zeros, dims, 1);
    free(ones);
    free(zeros);
}

static void build_graph(Graph *g) {
    const Model *m = g->m;
    char x[128], prefix[96], name[128];
    add_groupnorm_constants(g);

    emit_conv(g, &m->stem, "images", "stem/conv");
    snprintf(x, sizeof x, "stem/conv");
    if (m->has_pool) {
        const PoolShape *p = &m->pool;
        /* zero padding, as the model pools: N, C untouched; H, W begin then end */
        const int64_t pads[8] = {0, 0, p->pad, p->pad, 0, 0, p->pad, p->pad};
        add_int64s(g, "stem/pool_pads", pads, 8);
        const float zero = 0.0f;
        add_floats(g, "stem/pool_pad_value", &zero, NULL, 0); /* a scalar */
        const char *pad_in[] = {"stem/conv", "stem/pool_pads", "stem/pool_pad_value", NULL};
        add_node(g, "Pad", pad_in, "stem/padded", NULL, 0);
        const Attr attrs[] = {
            {"kernel_shape", ATTR_TYPE_INTS, {p->kernel, p->kernel}, 2, 0},
            {"strides", ATTR_TYPE_INTS, {p->stride, p->stride}, 2, 0},
        };
        const char *pool_in[] = {"stem/padded", NULL};
        add_node(g, "MaxPool", pool_in, "stem/pool", attrs, 2);
        snprintf(x, sizeof x, "stem/pool");
    }

    int u = 0;
    for (int s = 0; s < m->cfg.num_stages; s++)
        for (int b = 0; b < m->cfg.depth[s]; b++, u++) {
            const Unit *un = &m->units[u];
            const int h = un->conv_a.shape.in_h, w = un->conv_a.shape.in_w;
            const int ha = un->conv_a.shape.out_h, wa = un->conv_a.shape.out_w; /* a basic unit strides in a */
            const int ho = un->conv_b.shape.out_h, wo = un->conv_b.shape.out_w;
            char p[128], q[128], r[128], a[128], bb[128], c[128], sc[128], out[128];
            snprintf(prefix, sizeof prefix, "block%d/unit%02d", s + 1, b + 1);
            snprintf(name, sizeof name, "%s/a/group_norm", prefix);
            emit_norm_relu(g, &un->gn_a, name, x, h, w, p, sizeof p);
            if (un->has_proj) {
                snprintf(sc, sizeof sc, "%s/a/proj", prefix);
                emit_conv(g, &un->proj, p, sc);
            } else {
                snprintf(sc, sizeof sc, "%s", x);
            }
            snprintf(a, sizeof a, "%s/a/conv", prefix);
            emit_conv(g, &un->conv_a, p, a);
            snprintf(name, sizeof name, "%s/b/group_norm", prefix);
            emit_norm_relu(g, &un->gn_b, name, a, ha, wa, q, sizeof q);
            snprintf(bb, sizeof bb, "%s/b/conv", prefix);
            emit_conv(g, &un->conv_b, q, bb);
            if (m->cfg.block == BLOCK_BASIC) {
                snprintf(c, sizeof c, "%s", bb);
            } else {
                snprintf(name, sizeof name, "%s/c/group_norm", prefix);
                emit_norm_relu(g, &un->gn_c, name, bb, ho, wo, r, sizeof r);
                snprintf(c, sizeof c, "%s/c/conv", prefix);
                emit_conv(g, &un->conv_c, r, c);
            }
            snprintf(out, sizeof out, "%s/out", prefix);
            const char *sum[] = {c, sc, NULL};
            add_node(g, "Add", sum, out, NULL, 0);
            snprintf(x, sizeof x, "%s", out);
        }

    const Unit *last = &m->units[m->num_units - 1];
    char head[128];
    const ConvShape *last_conv = m->cfg.block == BLOCK_BASIC ? &last->conv_b.shape : &last->conv_c.shape;
    emit_norm_relu(g, &m->head_norm, "head/group_norm", x, last_conv->out_h, last_conv->out_w, head, sizeof head);
    const char *pool_in[] = {head, NULL}, *flat_in[] = {"head/mean", NULL};
    add_node(g, "GlobalAveragePool", pool_in, "head/mean", NULL, 0);
    const Attr axis = {"axis", ATTR_TYPE_INT, {1}, 1, 0};
    add_node(g, "Flatten", flat_in, "head/features", &axis, 1);
    const int64_t kernel_dims[2] = {m->cfg.num_classes, m->head_channels}, bias_dims[1] = {m->cfg.num_classes};
    const char *kernel = param_name(m, m->head_kernel), *bias = param_name(m, m->head_bias);
    add_floats(g, kernel, m->weights + m->head_kernel, kernel_dims, 2);
    add_floats(g, bias, m->weights + m->head_bias, bias_dims, 1);
    const char *gemm_in[] = {"head/features", kernel, bias, NULL};
    const Attr trans = {"transB", ATTR_TYPE_INT, {1}, 1, 0};
    add_node(g, "Gemm", gemm_in, "logits", &trans, 1);
}

/* A float32 tensor value: dims < 0 are the symbolic "batch". */
static void put_value_info(Buf *graph, int field, const char *name, const int64_t *dims, int ndim) {
    Buf shape = {0}, tensor = {0}, type = {0}, value = {0};
    for (int i = 0; i < ndim; i++) {
        Buf dim = {0};
        if (dims[i] < 0) put_string(&dim, DIM_PARAM, "batch");
        else put_int(&dim, DIM_VALUE, dims[i]);
        put_message(&shape, SHAPE_DIM, &dim);
    }
    put_int(&tensor, TYPE_TENSOR_ELEM_TYPE, ONNX_FLOAT);
    put_message(&tensor, TYPE_TENSOR_SHAPE, &shape);
    put_message(&type, TYPE_TENSOR, &tensor);
    put_string(&value, VALUE_NAME, name);
    put_message(&value, VALUE_TYPE, &type);
    put_message(graph, field, &value);
}

static void put_metadata(Buf *model, const char *key, const char *value) {
    Buf e = {0};
    put_string(&e, ENTRY_KEY, key);
    put_string(&e, ENTRY_VALUE, value);
    put_message(model, MODEL_METADATA_PROPS, &e);
}

int onnx_encode(const Model *m, unsigned char **data, size_t *size, char *err) {
    *data = NULL;
    *size = 0;
    const ModelConfig *c = &m->cfg;
    if (m->num_units < 1) return set_error(err, "ONNX export: the model has no units");
    size_t largest = 0, widest = 0; /* the biggest kernel, the most output channels */
    for (int i = 0; i < m->num_convs; i++) {
        const ConvShape *s = &m->convs[i]->shape;
        size_t n = (size_t)s->out_channels * s->in_channels * s->kernel_h * s->kernel_w;
        if (n > largest) largest = n;
        if ((size_t)s->out_channels > widest) widest = s->out_channels;
    }
    if (m->num_floats * sizeof(float) >= PROTOBUF_MAX)
        return set_error(err, "ONNX export: %zu parameters (%.0f MB) do not fit in one ONNX file (2 GB protobuf limit)",
                         m->num_floats, m->num_floats * 4.0 / 1e6);
    Graph g = {.m = m};
    g.w_hat = malloc(largest * sizeof(float));
    g.rstd = malloc(widest * sizeof(float));
    if (!g.w_hat || !g.rstd) {
        free(g.w_hat);
        free(g.rstd);
        return set_error(err, "ONNX export: out of memory");
    }
    build_graph(&g);
    free(g.w_hat);
    free(g.rstd);

    /* the GraphProto is nodes, initializers, then the rest (tail) */
    Buf tail = {0};
    put_string(&tail, GRAPH_NAME, "distilld_bit_resnetv2");
    const int64_t in_dims[4] = {-1, c->in_channels, c->image_size, c->image_size}, out_dims[2] = {-1, c->num_classes};
    put_value_info(&tail, GRAPH_INPUT, "images", in_dims, 4);
    put_value_info(&tail, GRAPH_OUTPUT, "logits", out_dims, 2);

    Buf model = {0}, opset = {0};
    if (g.nodes.failed || g.initializers.failed || tail.failed) model.failed = 1;
    put_int(&model, MODEL_IR_VERSION, ONNX_IR_VERSION);
    put_string(&model, MODEL_PRODUCER_NAME, "distilld");
    put_string(&model, MODEL_DOC_STRING,
               "BiT ResNetV2 (GroupNorm, weight standardization folded into the kernels). Input \"images\": "
               "float32 [batch, C, S, S], pixels in [0,1] already normalized as (x - mean) / std per channel "
               "(metadata \"normalization\"). Output \"logits\": float32 [batch, K].");
    put_string(&opset, OPSET_DOMAIN, "");
    put_int(&opset, OPSET_VERSION, ONNX_OPSET);
    put_message(&model, MODEL_OPSET_IMPORT, &opset);
    char *norm = model_normalization_json(c);
    char number[32];
    put_metadata(&model, "normalization", norm ? norm : "{}");
    free(norm);
    put_metadata(&model, "stem", c->stem == STEM_BIT ? "bit" : "small");
    put_metadata(&model, "block", c->block == BLOCK_BASIC ? "basic" : "bottleneck");
    snprintf(number, sizeof number, "%d", c->image_size);
    put_metadata(&model, "image_size", number);
    snprintf(number, sizeof number, "%d", c->num_classes);
    put_metadata(&model, "num_classes", number);
    const size_t graph_size = g.nodes.len + g.initializers.len + tail.len;
    put_tag(&model, MODEL_GRAPH, WIRE_LEN);
    put_varint(&model, graph_size);
    if (buf_reserve(&model, graph_size) == 0) { /* exactly: the weights are in memory twice at most */
        put_raw(&model, g.nodes.data, g.nodes.len);
        put_raw(&model, g.initializers.data, g.initializers.len);
        put_raw(&model, tail.data, tail.len);
    }
    buf_free(&g.nodes);
    buf_free(&g.initializers);
    buf_free(&tail);
    if (model.failed) {
        buf_free(&model);
        return set_error(err, "ONNX export: out of memory, or the file would pass the 2 GB protobuf limit");
    }
    *data = model.data;
    *size = model.len;
    return 0;
}

int onnx_export(const Model *m, const char *path, char *err) {
    unsigned char *data;
    size_t size;
    if (onnx_encode(m, &data, &size, err) != 0) return -1;
    int rc = write_file_atomic(path, data, size, err);
    free(data);
    return rc;
}
