/* model.c - BiT ResNetV2: layout, initialisation, forward, backward, weights I/O.
 *
 * model_create walks the architecture once and hands out offsets: parameters
 * into one block (the order of the table is the order of the weight file),
 * activations into another. Forward and backward then walk the same units.
 * Each unit keeps what its backward needs: its input x, p = relu(gn_a(x)),
 * a, q, b, r and the shortcut; a ReLU's backward uses its own output as the
 * mask, so GroupNorm outputs are never stored separately. */
#include "model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "formats.h"
#include "util.h"

/* ---------------------------------------------------------- configuration */

void model_config_defaults(ModelConfig *c) {
    memset(c, 0, sizeof *c);
    c->num_stages = 4;
    c->depth[0] = 3, c->depth[1] = 4, c->depth[2] = 6, c->depth[3] = 3;
    c->base_width = 64;
    c->width = 1;
    c->gn_groups = 32;
    c->stem = STEM_BIT;
    c->in_channels = 3;
    c->num_classes = 1000;
    c->image_size = 224;
    for (int i = 0; i < MODEL_MAX_CHANNELS; i++) c->norm_mean[i] = 0.5f, c->norm_std[i] = 0.5f;
}

static int spatial_after_stem(const ModelConfig *c) {
    if (c->stem == STEM_SMALL) return c->image_size;
    int s = (c->image_size + 2 * 3 - 7) / 2 + 1; /* 7x7 s2 pad 3 */
    return (s + 2 * 1 - 3) / 2 + 1;              /* 3x3 s2 pool, pad 1 */
}

int model_config_validate(const ModelConfig *c, char *err) {
    if (c->num_stages < 1 || c->num_stages > MODEL_MAX_STAGES)
        return set_error(err, "model.depth: need 1 to %d stages, got %d", MODEL_MAX_STAGES, c->num_stages);
    for (int s = 0; s < c->num_stages; s++)
        if (c->depth[s] < 1 || c->depth[s] > 99)
            return set_error(err, "model.depth: stage %d has %d units (1 to 99 allowed)", s + 1, c->depth[s]);
    if (c->base_width < 1 || c->base_width > 4096)
        return set_error(err, "model.base_width must be 1..4096, got %d", c->base_width);
    if (c->width < 1 || c->width > 64) return set_error(err, "model.width must be 1..64, got %d", c->width);
    if (c->stem != STEM_BIT && c->stem != STEM_SMALL) return set_error(err, "model.stem must be \"bit\" or \"small\"");
    if (c->block != BLOCK_BOTTLENECK && c->block != BLOCK_BASIC)
        return set_error(err, "model.block must be \"bottleneck\" or \"basic\"");
    if (c->in_channels < 1 || c->in_channels > MODEL_MAX_CHANNELS)
        return set_error(err, "model.in_channels must be 1..%d, got %d", MODEL_MAX_CHANNELS, c->in_channels);
    if (c->num_classes < 2 || c->num_classes > 100000)
        return set_error(err, "model.num_classes must be 2..100000, got %d", c->num_classes);
    if (c->image_size < 1 || c->image_size > 4096)
        return set_error(err, "model.image_size must be 1..4096, got %d", c->image_size);
    int stem_channels = c->base_width * c->width;
    if (c->gn_groups < 1 || stem_channels % c->gn_groups != 0)
        return set_error(err, "model.gn_groups (%d) must divide the stem width base_width*width = %d",
                         c->gn_groups, stem_channels);
    int spatial = spatial_after_stem(c);
    for (int s = 1; s < c->num_stages; s++) spatial = (spatial + 2 - 3) / 2 + 1;
    if (c->image_size < (c->stem == STEM_BIT ? 7 : 3) || spatial < 1)
        return set_error(err, "model.image_size %d is too small for a %s stem and %d stages", c->image_size,
                         c->stem == STEM_BIT ? "bit" : "small", c->num_stages);
    for (int i = 0; i < c->in_channels; i++)
        if (!(c->norm_std[i] > 0.0f) || !isfinite(c->norm_mean[i]))
            return set_error(err, "normalization: std must be > 0 and mean finite (channel %d)", i);
    return 0;
}

/* ------------------------------------------------------------------ layout */

/* A training model keeps every activation the backward pass reads, one
 * after another in region 0. An inference model (nothing kept for backward)
 * reuses memory, and so does a training model's block of activation
 * gradients: region 0 holds the input, the head and the GroupNorm
 * statistics, units alternate their outputs between regions 1 and 2, and
 * everything inside a unit lives in region 3, reused by every unit, in two
 * slots: p, then q and r over it (a unit's input has at least `mid`
 * channels, so they fit), and a, then b over it. Each is dead when the next
 * in its slot is written, forward and backward. In an inference model a unit
 * with an identity shortcut has its output where its input is: its last
 * convolution adds onto x, which nothing reads after gn_a. The stem conv
 * before a pool is read by nothing after the pool, so it is in region 3 in
 * every layout.
 * An inference model with a front (see plan_front) lays out the input, the
 * stem and the front's units for front_pass images, so one image's
 * activations stay in the cache from layer to layer, and the rest for the
 * batch capacity; the front's output, the p of the unit after it, is in
 * region 4, where each of the front's passes writes its images. A training
 * model's front views (see Model) have their activation gradients in a
 * layout of their own, for front_pass images.
 * Offsets are laid out region-relative (the region in the top bits), then
 * relocated. */
enum { REGION_FIXED = 0, REGION_PING = 1, REGION_PONG = 2, REGION_UNIT = 3, REGION_FRONT = 4, REGIONS = 5,
       REGION_SHIFT = 56 };

typedef struct {
    Model *m;
    size_t params, acts, rstd, scratch;
    int capacity;
    int reuse, region;
    size_t cursor[REGIONS], size[REGIONS];
} Layout;

static size_t add_param(Layout *l, ParamKind kind, const char *name, int d0, int d1, int d2, int d3) {
    Model *m = l->m;
    ParamInfo *p = &m->params[m->num_params++];
    snprintf(p->name, sizeof p->name, "%s", name);
    p->kind = kind;
    p->dims[0] = d0, p->dims[1] = d1, p->dims[2] = d2, p->dims[3] = d3;
    p->size = (size_t)d0 * d1 * d2 * d3;
    p->offset = l->params;
    l->params += p->size;
    return p->offset;
}

static size_t place(Layout *l, int region, size_t per_image) {
    size_t off = l->cursor[region];
    l->cursor[region] += per_image * l->capacity;
    if (l->cursor[region] > l->size[region]) l->size[region] = l->cursor[region];
    return (size_t)region << REGION_SHIFT | off;
}

static size_t add_act(Layout *l, size_t per_image) { return place(l, l->reuse ? l->region : REGION_FIXED, per_image); }

/* An activation read only by the op right after it: region 3 in every layout. */
static size_t add_temp(Layout *l, size_t per_image) { return place(l, REGION_UNIT, per_image); }

/* In a reusing layout, the next activation of the unit goes at `offset` of region 3. */
static void unit_rewind(Layout *l, size_t offset) {
    if (l->reuse) l->cursor[REGION_UNIT] = offset & (((size_t)1 << REGION_SHIFT) - 1);
}

/* Region-relative offsets to absolute ones, regions one after another. */
static void relocate(Layout *l) {
    size_t base[REGIONS] = {0};
    for (int r = 1; r < REGIONS; r++) base[r] = base[r - 1] + l->size[r - 1];
    l->acts = base[REGIONS - 1] + l->size[REGIONS - 1];
    Model *m = l->m;
#define RELOCATE(field) ((field) = base[(field) >> REGION_SHIFT] + ((field) & (((size_t)1 << REGION_SHIFT) - 1)))
    RELOCATE(m->act_input);
    RELOCATE(m->act_stem_conv);
    RELOCATE(m->act_stem_out);
    RELOCATE(m->act_head);
    RELOCATE(m->act_pooled);
    RELOCATE(m->act_logits);
    RELOCATE(m->head_norm.mean);
    RELOCATE(m->head_norm.rstd);
    for (int i = 0; i < m->num_units; i++) {
        Unit *u = &m->units[i];
        Norm *norms[3] = {&u->gn_a, &u->gn_b, &u->gn_c};
        for (int k = 0; k < 3; k++) {
            RELOCATE(norms[k]->mean);
            RELOCATE(norms[k]->rstd);
        }
        RELOCATE(u->x);
        RELOCATE(u->p);
        RELOCATE(u->a);
        RELOCATE(u->q);
        RELOCATE(u->b);
        RELOCATE(u->r);
        RELOCATE(u->out);
    }
#undef RELOCATE
}

static Conv make_conv(Layout *l, const char *prefix, int cin, int cout, int k, int stride, int pad, int h, int w) {
    char name[96];
    snprintf(name, sizeof name, "%s/standardized_conv2d/kernel", prefix);
    Conv c = {0};
    c.shape = (ConvShape){.batch = l->capacity, .in_channels = cin, .in_h = h, .in_w = w, .out_channels = cout,
                          .kernel_h = k, .kernel_w = k, .stride = stride, .pad = pad};
    conv_shape_init(&c.shape);
    c.weight = add_param(l, PARAM_KERNEL, name, cout, cin, k, k);
    c.rstd = l->rstd;
    l->rstd += cout;
    size_t s = conv_scratch_size(&c.shape, 0);
    if (s > l->scratch) l->scratch = s;
    return c;
}

static Norm make_norm(Layout *l, const char *prefix, int channels, int hw) {
    char name[96];
    Norm n = {.channels = channels, .hw = hw};
    snprintf(name, sizeof name, "%s/gamma", prefix);
    n.gamma = add_param(l, PARAM_GAMMA, name, channels, 1, 1, 1);
    snprintf(name, sizeof name, "%s/beta", prefix);
    n.beta = add_param(l, PARAM_BETA, name, channels, 1, 1, 1);
    n.mean = place(l, REGION_FIXED, l->m->cfg.gn_groups);
    n.rstd = place(l, REGION_FIXED, l->m->cfg.gn_groups);
    const size_t sums = (size_t)2 * l->capacity * channels; /* groupnorm_backward's per-image sums */
    if (!l->m->inference && sums > l->scratch) l->scratch = sums;
    return n;
}

static int count_params(const ModelConfig *c) {
    int n = 1 + 4; /* stem kernel; head gn gamma/beta, head kernel/bias */
    for (int s = 0; s < c->num_stages; s++) n += c->depth[s] * 9 + 1; /* 3 convs + 3 gns x2, + proj */
    return n;
}

/* Lays out the whole model: parameter table, unit offsets and block sizes.
 * Returns the sizes of the buffers that are not per-parameter or per-activation. */
typedef struct { size_t rstd, scratch; } ScratchSizes;

static ScratchSizes model_layout(Model *m, int capacity, int reuse, int in_place_shortcut) {
    const ModelConfig *c = &m->cfg;
    const int front = m->inference && m->front_pass > 0;
    Layout l = {.m = m, .capacity = front ? m->front_pass : capacity, .reuse = reuse, .region = REGION_FIXED};
    m->num_params = 0;
    int size = c->image_size, channels = c->base_width * c->width;
    char prefix[96];

    m->act_input = add_act(&l, (size_t)c->in_channels * size * size);
    l.region = c->stem == STEM_BIT ? REGION_UNIT : REGION_PING; /* the stem's output is unit 1's input */
    if (c->stem == STEM_BIT)
        m->stem = make_conv(&l, "resnet/root_block", c->in_channels, channels, 7, 2, 3, size, size);
    else
        m->stem = make_conv(&l, "resnet/root_block", c->in_channels, channels, 3, 1, 1, size, size);
    size = m->stem.shape.out_h;
    m->has_pool = c->stem == STEM_BIT;
    size_t stem_size = (size_t)channels * size * size;
    m->act_stem_conv = m->has_pool ? add_temp(&l, stem_size) : add_act(&l, stem_size);
    m->act_stem_out = m->act_stem_conv;
    if (m->has_pool) {
        m->pool = (PoolShape){.batch = capacity, .channels = channels, .in_h = size, .in_w = size,
                              .kernel = 3, .stride = 2, .pad = 1};
        pool_shape_init(&m->pool);
        size = m->pool.out_h;
        l.region = REGION_PING;
        m->act_stem_out = add_act(&l, (size_t)channels * size * size);
    }

    size_t x = m->act_stem_out;
    int x_region = REGION_PING, u = 0;
    const int basic = c->block == BLOCK_BASIC;
    for (int s = 0; s < c->num_stages; s++) {
        int mid = c->base_width * c->width << s, out = basic ? mid : 4 * mid;
        for (int b = 0; b < c->depth[s]; b++, u++) {
            Unit *un = &m->units[u];
            int stride = (b == 0 && s > 0) ? 2 : 1;
            int hw = size * size;
            un->x = x;
            l.region = REGION_UNIT;
            l.cursor[REGION_UNIT] = 0;
            const int front_end = front && u == m->front_units;
            if (front_end) l.capacity = capacity;
            snprintf(prefix, sizeof prefix, "resnet/block%d/unit%02d/a/group_norm", s + 1, b + 1);
            un->gn_a = make_norm(&l, prefix, channels, hw);
            const size_t p_slot = add_act(&l, (size_t)channels * hw); /* q and r go over it */
            un->p = front_end ? place(&l, REGION_FRONT, (size_t)channels * hw) : p_slot;
            un->has_proj = b == 0 && (stride != 1 || channels != out);
            if (un->has_proj) {
                snprintf(prefix, sizeof prefix, "resnet/block%d/unit%02d/a/proj", s + 1, b + 1);
                un->proj = make_conv(&l, prefix, channels, out, 1, stride, 0, size, size);
            }
            snprintf(prefix, sizeof prefix, "resnet/block%d/unit%02d/a", s + 1, b + 1);
            if (basic) { /* a: 3x3 with the stride; b: 3x3 onto the output, below */
                un->conv_a = make_conv(&l, prefix, channels, mid, 3, stride, 1, size, size);
                size = un->conv_a.shape.out_h;
                hw = size * size;
            } else {
                un->conv_a = make_conv(&l, prefix, channels, mid, 1, 1, 0, size, size);
            }
            un->a = add_act(&l, (size_t)mid * hw);
            snprintf(prefix, sizeof prefix, "resnet/block%d/unit%02d/b/group_norm", s + 1, b + 1);
            un->gn_b = make_norm(&l, prefix, mid, hw);
            unit_rewind(&l, p_slot);
            un->q = add_act(&l, (size_t)mid * hw);
            snprintf(prefix, sizeof prefix, "resnet/block%d/unit%02d/b", s + 1, b + 1);
            if (basic) {
                un->conv_b = make_conv(&l, prefix, mid, out, 3, 1, 1, size, size);
            } else {
                un->conv_b = make_conv(&l, prefix, mid, mid, 3, stride, 1, size, size);
                size = un->conv_b.shape.out_h;
                hw = size * size;
                unit_rewind(&l, un->a);
                un->b = add_act(&l, (size_t)mid * hw);
                snprintf(prefix, sizeof prefix, "resnet/block%d/unit%02d/c/group_norm", s + 1, b + 1);
                un->gn_c = make_norm(&l, prefix, mid, hw);
                unit_rewind(&l, p_slot);
                un->r = add_act(&l, (size_t)mid * hw);
                snprintf(prefix, sizeof prefix, "resnet/block%d/unit%02d/c", s + 1, b + 1);
                un->conv_c = make_conv(&l, prefix, mid, out, 1, 1, 0, size, size);
            }
            if (in_place_shortcut && !un->has_proj) {
                un->out = x; /* conv_c (or a basic unit's conv_b) adds onto the input */
            } else {
                l.region = x_region = x_region == REGION_PING ? REGION_PONG : REGION_PING; /* not x's region */
                l.cursor[l.region] = 0;
                un->out = add_act(&l, (size_t)out * hw);
            }
            x = un->out;
            channels = out;
        }
    }
    m->head_channels = channels;
    l.region = REGION_FIXED;
    m->head_norm = make_norm(&l, "resnet/group_norm", channels, size * size);
    m->act_head = add_act(&l, (size_t)channels * size * size);
    m->act_pooled = add_act(&l, channels);
    m->head_kernel = add_param(&l, PARAM_KERNEL, "resnet/head/conv2d/kernel", c->num_classes, channels, 1, 1);
    m->head_bias = add_param(&l, PARAM_BIAS, "resnet/head/conv2d/bias", c->num_classes, 1, 1, 1);
    m->act_logits = add_act(&l, c->num_classes);

    relocate(&l);
    m->num_floats = l.params;
    m->num_acts = l.acts;
    m->batch_capacity = capacity;
    return (ScratchSizes){.rstd = l.rstd, .scratch = l.scratch};
}

size_t model_config_param_count(const ModelConfig *c) {
    if (model_config_validate(c, NULL) != 0) return 0;
    Model m = {.cfg = *c};
    m.num_units = 0;
    for (int s = 0; s < c->num_stages; s++) m.num_units += c->depth[s];
    m.units = xcalloc(m.num_units, sizeof *m.units);
    m.params = xcalloc(count_params(c), sizeof *m.params);
    model_layout(&m, 1, 0, 0);
    free(m.units);
    free(m.params);
    return m.num_floats;
}

/* The floats of a conv's input and output per image, and of its kernel. */
static size_t in_floats(const ConvShape *s) { return (size_t)s->in_channels * s->in_h * s->in_w; }
static size_t out_floats(const ConvShape *s) { return (size_t)s->out_channels * s->out_h * s->out_w; }
static size_t conv_act_floats(const ConvShape *s) {
    return in_floats(s) > out_floats(s) ? in_floats(s) : out_floats(s);
}

static size_t conv_kernel_floats(const ConvShape *s) {
    return (size_t)s->out_channels * s->in_channels * s->kernel_h * s->kernel_w;
}

/* The front (model_forward, model_backward). A model's early units have large
 * activations and small kernels: in passes of many images each layer's
 * output leaves the cache before the next layer reads it, and in passes of
 * one or two images it stays there (the bit128 teacher's first four units
 * took 1.75 s in one lane's passes of 32 images, 1.32 s in passes of 2; the
 * same images, 2 lanes). Its late
 * units have small activations and large kernels, which a pass reads
 * whole: those are faster in large passes. The front is the units up to a
 * stage's start (its input then has no other reader) whose activations
 * outweigh their kernels read once per pass: 2 x the pass's images x the
 * largest activation per image (written once and read once) at least the
 * kernels' floats. Its passes hold FRONT_FLOATS of their largest activation
 * (at least one image). A training model keeps every activation for the
 * backward pass, so its front saves the next layer's reads of them, and
 * its threads' waits for one another between the front's layers (the
 * bit128 student 541 -> 607 images/s on 2 threads, the fmnist student
 * 1876 -> 1968). Lays out nothing: needs the shapes of a layout. */
enum { FRONT_FLOATS = 1 << 16 }; /* 256 KB: a quarter of an L2 cache of 1 MB */

/* The images of a front's pass whose largest activation is `largest` floats. */
static size_t front_images(size_t largest) { return largest < FRONT_FLOATS ? FRONT_FLOATS / largest : 1; }

static void plan_front(Model *m, int capacity) {
    const ConvShape *stem = &m->stem.shape;
    size_t largest = (size_t)stem->out_channels * stem->out_h * stem->out_w, front_largest = 0;
    int front_units = 0;
    for (int i = 0; i < m->num_units; i++) {
        const Unit *u = &m->units[i];
        if (i > 0 && u->has_proj) front_units = i, front_largest = largest;
        const ConvShape *convs[4] = {&u->conv_a.shape, &u->conv_b.shape,
                                     m->cfg.block == BLOCK_BOTTLENECK ? &u->conv_c.shape : NULL,
                                     u->has_proj ? &u->proj.shape : NULL};
        size_t act = 0, kernels = 0;
        for (int k = 0; k < 4; k++) {
            if (!convs[k]) continue;
            if (conv_act_floats(convs[k]) > act) act = conv_act_floats(convs[k]);
            kernels += conv_kernel_floats(convs[k]);
        }
        if (act > largest) largest = act;
        if (2 * front_images(largest) * act < kernels) break;
    }
    m->front_units = m->front_pass = 0;
    if (front_units == 0) return;
    const size_t pass = front_images(front_largest);
    if (pass >= (size_t)capacity) return;
    m->front_units = front_units;
    m->front_pass = (int)pass;
}

/* A training model's front views (see Model), one per thread, with scratch
 * for a bf16 backward too; 0 if their memory is not there. */
static size_t convs_scratch_size(const Model *m, int bf16_backward);

static int make_front_views(Model *m) {
    if (!m->front_pass) return 1;
    omp_set_num_threads(1);
    size_t scratch = convs_scratch_size(m, 1);
    omp_set_num_threads(m->threads);
    for (int i = 0; i <= m->front_units; i++) { /* groupnorm_backward's per-image sums, 2 x (B, C) */
        const ConvShape *sa = &m->units[i].conv_a.shape, *sb = &m->units[i].conv_b.shape;
        int most = sa->in_channels > sa->out_channels ? sa->in_channels : sa->out_channels;
        if (sb->out_channels > most) most = sb->out_channels;
        const size_t sums = (size_t)2 * m->front_pass * most;
        if (sums > scratch) scratch = sums;
    }
    const Norm *end = &m->units[m->front_units].gn_a; /* the last parameters the front's backward sums */
    m->front_params = end->beta + end->channels;
    const Unit *after = &m->units[m->front_units]; /* its first conv's U follows the front's */
    m->front_du = after->has_proj ? after->proj.wino : after->conv_a.wino;
    if (!(m->front_views = calloc(m->threads, sizeof *m->front_views))) return 0;
    int ok = 1;
    for (int t = 0; t < m->threads; t++) {
        Model *v = &m->front_views[t];
        v->scratch = calloc(scratch, sizeof(float));
        v->scratch_size = scratch;
        v->dw_hat = calloc(m->front_params, sizeof(float));
        v->grads = calloc(m->front_params, sizeof(float));
        v->grad_acts = calloc(m->front_grad_acts, sizeof(float));
        v->w_du = calloc(m->front_du ? m->front_du : 1, sizeof(float));
        v->grad_units = m->front_grad_units;
        v->grad_stem_conv = m->front_grad_stem_conv;
        v->grad_stem_out = m->front_grad_stem_out;
        ok = ok && v->scratch && v->dw_hat && v->grads && v->grad_acts && v->w_du;
    }
    return ok;
}

/* inference: weights, standardized kernels and activations only */
static int model_build(Model **out, const ModelConfig *c, int batch_capacity, int inference, char *err) {
    *out = NULL;
    if (model_config_validate(c, err) != 0) return -1;
    if (batch_capacity < 1) return set_error(err, "batch size must be at least 1");
    Model *m = xcalloc(1, sizeof *m);
    m->cfg = *c;
    m->inference = inference; /* no gradients; the activations' layout reuses memory */
    for (int s = 0; s < c->num_stages; s++) m->num_units += c->depth[s];
    m->units = xcalloc(m->num_units, sizeof *m->units);
    m->params = xcalloc(count_params(c), sizeof *m->params);
    m->threads = omp_get_max_threads(); /* forward and backward run on this many */
    model_layout(m, batch_capacity, 1, inference); /* the shapes, for the front's plan */
    plan_front(m, batch_capacity);
    if (!inference && m->front_pass) { /* the front views' gradients: a layout for a pass */
        model_layout(m, m->front_pass, 1, 0);
        m->front_grad_units = xcalloc(m->num_units, sizeof *m->front_grad_units);
        memcpy(m->front_grad_units, m->units, m->num_units * sizeof *m->units);
        m->front_grad_acts = m->num_acts;
        m->front_grad_stem_conv = m->act_stem_conv;
        m->front_grad_stem_out = m->act_stem_out;
    }
    if (!inference) { /* the gradients' layout first: the activations' is the model's */
        model_layout(m, batch_capacity, 1, 0);
        m->grad_units = xcalloc(m->num_units, sizeof *m->grad_units);
        memcpy(m->grad_units, m->units, m->num_units * sizeof *m->units);
        m->num_grad_acts = m->num_acts;
        m->grad_stem_conv = m->act_stem_conv;
        m->grad_stem_out = m->act_stem_out;
        m->grad_head = m->act_head;
        m->grad_pooled = m->act_pooled;
    }
    ScratchSizes sizes = model_layout(m, batch_capacity, inference, inference);
    m->convs = xcalloc((size_t)m->num_units * 4 + 1, sizeof *m->convs);
    m->convs[m->num_convs++] = &m->stem;
    for (int i = 0; i < m->num_units; i++) {
        Unit *u = &m->units[i];
        if (u->has_proj) m->convs[m->num_convs++] = &u->proj;
        m->convs[m->num_convs++] = &u->conv_a;
        m->convs[m->num_convs++] = &u->conv_b;
        if (c->block == BLOCK_BOTTLENECK) m->convs[m->num_convs++] = &u->conv_c;
    }
    size_t wino = 0;
    for (int i = 0; i < m->num_convs; i++) {
        m->convs[i]->wino = wino;
        wino += conv_winograd_u_size(&m->convs[i]->shape);
    }
    /* the big blocks may not fit: a job asking too much must fail, not abort the process */
    size_t argmax = m->has_pool ? (size_t)batch_capacity * m->pool.channels * m->pool.out_h * m->pool.out_w : 1;
    m->weights = calloc(m->num_floats, sizeof(float));
    m->w_hat = calloc(m->num_floats, sizeof(float));
    m->w_wino = wino ? calloc(wino, sizeof(float)) : NULL;
    m->ws_rstd = calloc(sizes.rstd, sizeof(float));
    m->scratch_size = sizes.scratch ? sizes.scratch : 1;
    m->scratch = calloc(m->scratch_size, sizeof(float));
    m->acts = calloc(m->num_acts, sizeof(float));
    m->pool_argmax = calloc(argmax, sizeof(int32_t));
    int training_ok = 1;
    if (!inference) {
        m->grads = calloc(m->num_floats, sizeof(float));
        m->adam_m = calloc(m->num_floats, sizeof(float));
        m->adam_v = calloc(m->num_floats, sizeof(float));
        m->dw_hat = calloc(m->num_floats, sizeof(float));
        m->grad_acts = calloc(m->num_grad_acts, sizeof(float));
        training_ok = m->grads && m->adam_m && m->adam_v && m->dw_hat && m->grad_acts && make_front_views(m);
    }
    if (!m->weights || !m->w_hat || (wino && !m->w_wino) || !m->ws_rstd || !m->scratch || !m->acts ||
        !m->pool_argmax || !training_ok) {
        double blocks = (inference ? 2.0 * m->num_floats + m->num_acts
                                   : 6.0 * m->num_floats + m->num_acts + m->num_grad_acts) + wino;
        double mb = ((blocks + sizes.scratch) * sizeof(float)) / (1024.0 * 1024.0);
        model_free(m);
        return set_error(err, "not enough memory for this model at batch size %d (%.0f MB)", batch_capacity, mb);
    }
    *out = m;
    return 0;
}

int model_create(Model **out, const ModelConfig *c, int batch_capacity, char *err) {
    return model_build(out, c, batch_capacity, 0, err);
}

int model_create_inference(Model **out, const ModelConfig *c, int batch_capacity, char *err) {
    return model_build(out, c, batch_capacity, 1, err);
}

static void free_front_views(Model *m) {
    for (int t = 0; m->front_views && t < m->threads; t++) {
        free(m->front_views[t].scratch);
        free(m->front_views[t].dw_hat);
        free(m->front_views[t].grads);
        free(m->front_views[t].grad_acts);
        free(m->front_views[t].w_du);
    }
    free(m->front_views);
    m->front_views = NULL;
    free(m->front_grad_units);
    m->front_grad_units = NULL;
}

static void free_lanes(Model *m) {
    for (int i = 1; i < m->num_lanes; i++) { /* lane 0 uses the model's own buffers */
        free(m->lanes[i].acts);
        free(m->lanes[i].scratch);
        free(m->lanes[i].pool_argmax);
    }
    free(m->lanes);
    m->lanes = NULL;
    m->num_lanes = 0;
}

void model_free(Model *m) {
    if (!m) return;
    free_lanes(m);
    free_front_views(m);
    free(m->units);
    free(m->grad_units);
    free(m->convs);
    free(m->params);
    free(m->weights);
    free(m->grads);
    free(m->adam_m);
    free(m->adam_v);
    free(m->w_hat);
    free(m->w_bf16);
    free(m->w_wino);
    free(m->dw_hat);
    free(m->ws_rstd);
    free(m->scratch);
    free(m->acts);
    free(m->grad_acts);
    free(m->pool_argmax);
    free(m);
}

void model_init_bit(Model *m, uint64_t seed) {
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        float *w = m->weights + p->offset;
        Rng rng = rng_derive(seed, 0x1417, (uint64_t)i);
        int is_head = p->offset == m->head_kernel || p->offset == m->head_bias;
        if (p->kind == PARAM_KERNEL && !is_head) {
            double std = sqrt(2.0 / ((double)p->dims[1] * p->dims[2] * p->dims[3]));
            for (size_t k = 0; k < p->size; k++) w[k] = (float)(rng_normal(&rng) * std);
        } else {
            float v = p->kind == PARAM_GAMMA ? 1.0f : 0.0f;
            for (size_t k = 0; k < p->size; k++) w[k] = v;
        }
    }
    if (!m->inference) {
        memset(m->adam_m, 0, m->num_floats * sizeof(float));
        memset(m->adam_v, 0, m->num_floats * sizeof(float));
    }
    m->w_hat_valid = 0;
}

/* Training calls on a model built for inference are programming errors. */
static void require_training(const Model *m, const char *what) {
    if (m->inference) {
        fprintf(stderr, "distilld: %s on a model built for inference (no gradients)\n", what);
        abort();
    }
}

/* ----------------------------------------------------------------- forward */

/* dst = src, or 0 when src is NULL, for activation-sized blocks: split over
 * the model's threads, since one thread alone does not reach the memory's
 * bandwidth and the others would wait for it (about 2.5x faster on 2). */
static float *bulk_copy(float *dst, const float *src, size_t n) {
    enum { ALONE = 1 << 14, ALIGN = 16 }; /* floats: below ALONE one thread does it all */
#pragma omp parallel if (n > ALONE)
    {
        /* one equal share per thread, cut at multiples of ALIGN floats */
        const size_t threads = (size_t)omp_get_num_threads(), t = (size_t)omp_get_thread_num();
        const size_t lo = n * t / threads / ALIGN * ALIGN;
        const size_t hi = t + 1 == threads ? n : n * (t + 1) / threads / ALIGN * ALIGN;
        if (src)
            memcpy(dst + lo, src + lo, (hi - lo) * sizeof(float));
        else
            memset(dst + lo, 0, (hi - lo) * sizeof(float));
    }
    return dst;
}

static ConvShape at_batch(const Conv *c, int batch) {
    ConvShape s = c->shape;
    s.batch = batch;
    return s;
}

/* whether c runs in bf16: the model does, and c is faster so (conv_bf16_faster) */
static int in_bf16(const Model *m, const Conv *c) {
    return m->w_bf16 && conv_bf16_faster(&c->shape);
}

/* c's Winograd U, or NULL: not Winograd, or in bf16 */
static const float *wino_u(const Model *m, const Conv *c) {
    return conv_is_winograd(&c->shape) && !in_bf16(m, c) ? m->w_wino + c->wino : NULL;
}

static void conv_forward(Model *m, const Conv *c, float *out, const float *in, int accumulate, int batch) {
    ConvShape s = at_batch(c, batch);
    if (in_bf16(m, c))
        conv2d_forward_bf16(out, in, m->w_bf16 + c->packed, &s, accumulate, m->scratch);
    else
        conv2d_forward(out, in, m->w_hat + c->weight, wino_u(m, c), &s, accumulate, m->scratch);
}

/* din = the input gradient, or += it when accumulate */
static void conv_backward(Model *m, const Conv *c, float *din, int accumulate, const float *dout, const float *in,
                          int batch) {
    ConvShape s = at_batch(c, batch);
    if (m->w_du && conv_is_winograd(&s)) /* a front view: dU summed over its passes */
        conv2d_backward_du(din, m->w_du + c->wino, dout, in, m->w_hat + c->weight, wino_u(m, c), &s, accumulate,
                           in_bf16(m, c), m->scratch);
    else
        conv2d_backward(din, m->dw_hat + c->weight, dout, in, m->w_hat + c->weight, wino_u(m, c), &s, accumulate,
                        in_bf16(m, c), m->scratch);
}

/* out = relu(gn(in)), fused; its statistics from image `first` */
static void norm_relu_forward(Model *m, const Norm *n, float *out, const float *in, int first, int batch) {
    float *a = m->acts;
    const size_t stats = (size_t)first * m->cfg.gn_groups;
    groupnorm_forward(out, a + n->mean + stats, a + n->rstd + stats, in, m->weights + n->gamma, m->weights + n->beta,
                      batch, n->channels, n->hw, m->cfg.gn_groups, 1);
}

/* din = the input gradient, or += it when accumulate */
static void norm_relu_backward(Model *m, const Norm *n, float *din, int accumulate, const float *dout,
                               const float *out, const float *in, int first, int batch) {
    const size_t stats = (size_t)first * m->cfg.gn_groups;
    groupnorm_backward(din, m->grads + n->gamma, m->grads + n->beta, dout, in, m->acts + n->mean + stats,
                       m->acts + n->rstd + stats, m->weights + n->gamma, batch, n->channels, n->hw, m->cfg.gn_groups,
                       out, accumulate, m->scratch);
}

/* A unit's activations (or their gradients) from image `first` of `base`. */
typedef struct {
    float *x, *p, *a, *q, *b, *r, *out;
} UnitAt;

/* The floats of a unit's output per image. */
static size_t unit_out_floats(const Model *m, const Unit *u) {
    return out_floats(m->cfg.block == BLOCK_BASIC ? &u->conv_b.shape : &u->conv_c.shape);
}

static UnitAt unit_at(const Model *m, float *base, const Unit *u, int first) {
    const int basic = m->cfg.block == BLOCK_BASIC;
    const ConvShape *sa = &u->conv_a.shape, *sb = &u->conv_b.shape;
    const size_t x = (size_t)first * in_floats(sa), a = (size_t)first * out_floats(sa);
    const size_t b = (size_t)first * out_floats(sb), out = (size_t)first * unit_out_floats(m, u);
    return (UnitAt){.x = base + u->x + x, .p = base + u->p + x, .a = base + u->a + a, .q = base + u->q + a,
                    .b = basic ? NULL : base + u->b + b, .r = basic ? NULL : base + u->r + b,
                    .out = base + u->out + out};
}

static void standardize_all(Model *m) {
    if (m->w_hat_valid) return;
    for (int i = 0; i < m->num_convs; i++) {
        const Conv *cv = m->convs[i];
        const ConvShape *s = &cv->shape;
        weight_standardize_forward(m->w_hat + cv->weight, m->ws_rstd + cv->rstd, m->weights + cv->weight,
                                   s->out_channels, s->in_channels * s->kernel_h * s->kernel_w);
        if (in_bf16(m, cv)) conv_bf16_pack(m->w_bf16 + cv->packed, m->w_hat + cv->weight, s, m->scratch);
        if (wino_u(m, cv)) conv_winograd_u(m->w_wino + cv->wino, m->w_hat + cv->weight, s);
    }
    m->w_hat_valid = 1;
}

/* The most scratch any of the model's convolutions needs on the current
 * number of OpenMP threads (with room for a bf16 backward: bf16_backward). */
static size_t convs_scratch_size(const Model *m, int bf16_backward) {
    size_t most = 1;
    for (int i = 0; i < m->num_convs; i++) {
        const ConvShape *s = &m->convs[i]->shape;
        const size_t need = conv_scratch_size(s, bf16_backward && conv_bf16_faster(s));
        if (need > most) most = need;
    }
    return most;
}

int model_set_bf16(Model *m, char *err) {
    if (!bf16_fast())
        return set_error(err, "bfloat16: this build of distilld has no AVX512-BF16 kernel (it needs a CPU with "
                              "AVX512-BF16, and a build with ARCH=native on it)");
    if (m->w_bf16) return 0;
    omp_set_num_threads(m->threads); /* the scratch is sized for this many */
    size_t total = 0;
    for (int i = 0; i < m->num_convs; i++) {
        m->convs[i]->packed = total;
        if (conv_bf16_faster(&m->convs[i]->shape)) total += conv_bf16_packed_size(&m->convs[i]->shape);
    }
    const size_t scratch = convs_scratch_size(m, !m->inference);
    if (scratch > m->scratch_size) { /* a training model's backward in bf16 needs more */
        float *more = realloc(m->scratch, scratch * sizeof(float));
        if (!more)
            return set_error(err, "bfloat16: not enough memory for the convolutions' scratch (%.0f MB)",
                             scratch * sizeof(float) / (1024.0 * 1024.0));
        memset(more + m->scratch_size, 0, (scratch - m->scratch_size) * sizeof(float));
        m->scratch = more;
        m->scratch_size = scratch;
    }
    if (!(m->w_bf16 = calloc(total, sizeof(uint32_t))))
        return set_error(err, "bfloat16: not enough memory for the packed kernels (%.0f MB)",
                         total * sizeof(uint32_t) / (1024.0 * 1024.0));
    m->w_hat_valid = 0; /* the next forward standardizes and packs */
    return 0;
}

/* The input copied in, the stem and its pool, for `batch` images from image
 * `first` of the activations. */
static void stem_forward(Model *m, const float *images, int first, int batch) {
    float *a = m->acts;
    const size_t in = in_floats(&m->stem.shape), conv = out_floats(&m->stem.shape);
    float *input = bulk_copy(a + m->act_input + first * in, images, batch * in);
    conv_forward(m, &m->stem, a + m->act_stem_conv + first * conv, input, 0, batch);
    if (m->has_pool) {
        PoolShape ps = m->pool;
        ps.batch = batch;
        const size_t pooled = (size_t)ps.channels * ps.out_h * ps.out_w;
        maxpool_forward(a + m->act_stem_out + first * pooled, m->pool_argmax + first * pooled,
                        a + m->act_stem_conv + first * conv, &ps);
    }
}

/* A unit from x to out for `batch` images from image `first`; from its p when
 * gn_a has run (the front's end). */
static void unit_forward(Model *m, const Unit *u, int first, int batch, int from_p) {
    const UnitAt at = unit_at(m, m->acts, u, first);
    if (!from_p) norm_relu_forward(m, &u->gn_a, at.p, at.x, first, batch);
    /* out starts as the shortcut, and the unit's last conv adds to it */
    if (u->has_proj)
        conv_forward(m, &u->proj, at.out, at.p, 0, batch);
    else if (at.out != at.x) /* an inference model adds onto x in place */
        bulk_copy(at.out, at.x, batch * unit_out_floats(m, u));
    conv_forward(m, &u->conv_a, at.a, at.p, 0, batch);
    norm_relu_forward(m, &u->gn_b, at.q, at.a, first, batch);
    if (m->cfg.block == BLOCK_BASIC) {
        conv_forward(m, &u->conv_b, at.out, at.q, 1, batch);
        return;
    }
    conv_forward(m, &u->conv_b, at.b, at.q, 0, batch);
    norm_relu_forward(m, &u->gn_c, at.r, at.b, first, batch);
    conv_forward(m, &u->conv_c, at.out, at.r, 1, batch);
}

/* The front (plan_front) for `batch` images from image `first`: the stem and
 * the front's units in the activations from image `slot` (an inference
 * model's front holds only its pass: 0; a training model's, the batch:
 * first), then the next unit's gn_a onto its p from image `first`. */
static void front_forward(Model *m, const float *images, int first, int slot, int batch) {
    stem_forward(m, images, slot, batch);
    for (int i = 0; i < m->front_units; i++) unit_forward(m, &m->units[i], slot, batch, 0);
    const Unit *next = &m->units[m->front_units];
    norm_relu_forward(m, &next->gn_a, unit_at(m, m->acts, next, first).p, unit_at(m, m->acts, next, slot).x, first,
                      batch);
}

/* A training model's view for thread t: the model, with the thread's own
 * scratch, pass of activation gradients and sums of the front's gradients
 * (see Model). */
static Model *front_view(Model *m, int t) {
    Model *v = &m->front_views[t], own = *v;
    *v = *m;
    v->scratch = own.scratch, v->scratch_size = own.scratch_size;
    v->dw_hat = own.dw_hat, v->grads = own.grads, v->w_du = own.w_du;
    v->grad_acts = own.grad_acts, v->grad_units = own.grad_units;
    v->grad_stem_conv = own.grad_stem_conv, v->grad_stem_out = own.grad_stem_out;
    v->threads = 1, v->front_views = NULL, v->lanes = NULL, v->num_lanes = 0;
    omp_set_num_threads(1); /* the view's scratch is for one thread */
    return v;
}

/* Thread t's share of `batch` images: [*lo, *hi). */
static void share(int batch, int t, int threads, int *lo, int *hi) {
    *lo = (int)((long)batch * t / threads);
    *hi = (int)((long)batch * (t + 1) / threads);
}

float *model_forward(Model *m, const float *images, int batch) {
    omp_set_num_threads(m->threads); /* the scratch was sized for this many */
    float *a = m->acts;
    const ModelConfig *c = &m->cfg;
    standardize_all(m);
    const size_t image = in_floats(&m->stem.shape);
    const int pass = m->front_pass;
    if (pass && m->inference) { /* one pass after another, in the front's buffers */
        for (int first = 0; first < batch; first += pass)
            front_forward(m, images + first * image, first, 0, batch - first < pass ? batch - first : pass);
    } else if (pass) { /* each thread its share of the images, a pass at a time */
#pragma omp parallel num_threads(m->threads)
        {
            const int t = omp_get_thread_num();
            Model *v = front_view(m, t);
            int lo, hi;
            share(batch, t, omp_get_num_threads(), &lo, &hi);
            for (int first = lo; first < hi; first += pass)
                front_forward(v, images + first * image, first, first, hi - first < pass ? hi - first : pass);
        }
    } else {
        stem_forward(m, images, 0, batch);
    }
    for (int i = pass ? m->front_units : 0; i < m->num_units; i++)
        unit_forward(m, &m->units[i], 0, batch, pass && i == m->front_units);
    size_t last = m->num_units ? m->units[m->num_units - 1].out : m->act_stem_out;
    norm_relu_forward(m, &m->head_norm, a + m->act_head, a + last, 0, batch);
    avgpool_forward(a + m->act_pooled, a + m->act_head, batch, m->head_channels, m->head_norm.hw);
    dense_forward(a + m->act_logits, a + m->act_pooled, m->weights + m->head_kernel, m->weights + m->head_bias, batch,
                  m->head_channels, c->num_classes);
    return a + m->act_logits;
}

int model_pass_capacity(long images, int bf16) {
    const int pass = bf16 ? MODEL_PASS_IMAGES_BF16 : MODEL_PASS_IMAGES;
    return images < 1 ? 1 : images < pass ? (int)images : pass;
}

/* The lanes of an inference model (see Model): lane 0 runs in the model's
 * own buffers, which are at least as large; the others get their own. 0 if
 * their memory is not there. */
static int make_lanes(Model *m) {
    omp_set_num_threads(1); /* the scratch of a lane is for one thread */
    const size_t scratch = convs_scratch_size(m, 0);
    omp_set_num_threads(m->threads);
    const size_t argmax =
        m->has_pool ? (size_t)m->batch_capacity * m->pool.channels * m->pool.out_h * m->pool.out_w : 1;
    m->lanes = calloc(m->threads, sizeof *m->lanes);
    if (!m->lanes) return 0;
    m->num_lanes = m->threads;
    int ok = 1;
    for (int i = 1; i < m->num_lanes; i++) {
        Model *lane = &m->lanes[i];
        lane->acts = calloc(m->num_acts, sizeof(float));
        lane->scratch = calloc(scratch, sizeof(float));
        lane->scratch_size = scratch;
        lane->pool_argmax = calloc(argmax, sizeof(int32_t));
        ok = ok && lane->acts && lane->scratch && lane->pool_argmax;
    }
    if (!ok) free_lanes(m);
    return ok;
}

int model_lane_pass(const Model *m, int batch) {
    const int per_thread = (batch + m->threads - 1) / m->threads;
    return per_thread < m->batch_capacity ? per_thread : m->batch_capacity;
}

void model_predict(Model *m, float *logits, const float *images, int batch) {
    const ModelConfig *c = &m->cfg;
    const size_t image_floats = (size_t)c->in_channels * c->image_size * c->image_size;
    const int pass = model_lane_pass(m, batch);
    if (m->inference && m->threads > 1 && batch > pass && (m->lanes || make_lanes(m))) {
        omp_set_num_threads(m->threads);
        standardize_all(m); /* the lanes read the model's kernels */
        for (int i = 0; i < m->num_lanes; i++) { /* the model as it is now, in the lane's own buffers */
            Model *lane = &m->lanes[i], own = *lane;
            *lane = *m;
            if (i > 0) {
                lane->acts = own.acts, lane->pool_argmax = own.pool_argmax;
                lane->scratch = own.scratch, lane->scratch_size = own.scratch_size;
            }
            lane->threads = 1, lane->lanes = NULL, lane->num_lanes = 0;
        }
        const int passes = (batch + pass - 1) / pass;
#pragma omp parallel for schedule(dynamic, 1)
        for (int i = 0; i < passes; i++) {
            const int start = i * pass, n = batch - start < pass ? batch - start : pass;
            memcpy(logits + (size_t)start * c->num_classes,
                   model_forward(&m->lanes[omp_get_thread_num()], images + start * image_floats, n),
                   sizeof(float) * n * c->num_classes);
        }
        return;
    }
    for (int start = 0; start < batch; start += m->batch_capacity) {
        const int n = batch - start < m->batch_capacity ? batch - start : m->batch_capacity;
        memcpy(logits + (size_t)start * c->num_classes, model_forward(m, images + start * image_floats, n),
               sizeof(float) * n * c->num_classes);
    }
}

/* ---------------------------------------------------------------- backward */

void model_zero_grad(Model *m) {
    require_training(m, "model_zero_grad");
    memset(m->grads, 0, m->num_floats * sizeof(float));
}

/* The activation-gradient block reuses memory (see model_layout), so every
 * buffer is either set by its first op (the convolutions' and GroupNorms'
 * accumulate = 0) or, for ops that only add (+=), zeroed just before. */
static float *zeroed(float *p, size_t n) {
    return bulk_copy(p, NULL, n);
}

/* Unit i's backward for `batch` images from image `first` of the activations
 * and `slot` of their gradients (first, but for a front view's own: 0); to
 * its p's gradient when to_p (the front's end: the front takes gn_a). */
static void unit_backward(Model *m, int i, int first, int slot, int batch, int to_p) {
    const Unit *u = &m->units[i];
    const UnitAt a = unit_at(m, m->acts, u, first), d = unit_at(m, m->grad_acts, &m->grad_units[i], slot);
    /* dr, dq and dp share one slot, db and da another (see model_layout);
     * each gradient is set by the first op that writes it, added to by a second */
    if (!u->has_proj) /* identity shortcut: the residual add passes dout to x unchanged */
        bulk_copy(d.x, d.out, batch * unit_out_floats(m, u));
    if (m->cfg.block == BLOCK_BASIC) {
        conv_backward(m, &u->conv_b, d.q, 0, d.out, a.q, batch);
    } else {
        conv_backward(m, &u->conv_c, d.r, 0, d.out, a.r, batch);
        norm_relu_backward(m, &u->gn_c, d.b, 0, d.r, a.r, a.b, first, batch);
        conv_backward(m, &u->conv_b, d.q, 0, d.b, a.q, batch);
    }
    norm_relu_backward(m, &u->gn_b, d.a, 0, d.q, a.q, a.a, first, batch);
    conv_backward(m, &u->conv_a, d.p, 0, d.a, a.p, batch);
    if (u->has_proj) conv_backward(m, &u->proj, d.p, 1, d.out, a.p, batch);
    if (!to_p) norm_relu_backward(m, &u->gn_a, d.x, !u->has_proj, d.p, a.p, a.x, first, batch);
}

/* The pool's and the stem's backward, images as unit_backward. */
static void stem_backward(Model *m, int first, int slot, int batch) {
    float *d = m->grad_acts;
    const size_t in = in_floats(&m->stem.shape), conv = out_floats(&m->stem.shape);
    if (m->has_pool) {
        PoolShape ps = m->pool;
        ps.batch = batch;
        const size_t pooled = (size_t)ps.channels * ps.out_h * ps.out_w;
        maxpool_backward(zeroed(d + m->grad_stem_conv + slot * conv, batch * conv),
                         d + m->grad_stem_out + slot * pooled, m->pool_argmax + first * pooled, &ps);
    }
    conv_backward(m, &m->stem, NULL, 0, d + m->grad_stem_conv + slot * conv, m->acts + m->act_input + first * in,
                  batch);
}

/* A front view's backward (see Model) for `batch` images from image
 * `first`, from dp, the gradient of the next unit's p for the batch; its
 * own gradients for those images from image 0 of its own. */
static void front_backward(Model *v, const float *dp, int first, int batch) {
    const int next = v->front_units;
    const Unit *u = &v->units[next];
    const UnitAt a = unit_at(v, v->acts, u, first);
    norm_relu_backward(v, &u->gn_a, unit_at(v, v->grad_acts, &v->grad_units[next], 0).x, 0,
                       dp + (size_t)first * in_floats(&u->conv_a.shape), a.p, a.x, first, batch);
    for (int i = next - 1; i >= 0; i--) unit_backward(v, i, first, 0, batch, 0);
    stem_backward(v, first, 0, batch);
}

void model_backward(Model *m, const float *dlogits, int batch) {
    require_training(m, "model_backward");
    omp_set_num_threads(m->threads);
    const float *a = m->acts;
    float *d = m->grad_acts;
    const ModelConfig *c = &m->cfg;
    memset(m->dw_hat, 0, m->num_floats * sizeof(float));

    size_t last = m->num_units ? m->units[m->num_units - 1].out : m->act_stem_out;
    size_t dlast = m->num_units ? m->grad_units[m->num_units - 1].out : m->grad_stem_out;
    size_t head_size = (size_t)batch * m->head_channels * m->head_norm.hw;
    float *dpooled = zeroed(d + m->grad_pooled, (size_t)batch * m->head_channels);
    dense_backward(dpooled, m->grads + m->head_kernel, m->grads + m->head_bias, dlogits, a + m->act_pooled,
                   m->weights + m->head_kernel, batch, m->head_channels, c->num_classes);
    avgpool_backward(zeroed(d + m->grad_head, head_size), dpooled, batch, m->head_channels, m->head_norm.hw);
    norm_relu_backward(m, &m->head_norm, d + dlast, 0, d + m->grad_head, a + m->act_head, a + last, 0, batch);

    const int pass = m->front_pass;
    for (int i = m->num_units - 1; i >= (pass ? m->front_units : 0); i--)
        unit_backward(m, i, 0, 0, batch, pass && i == m->front_units);
    if (!pass) {
        stem_backward(m, 0, 0, batch);
    } else { /* the front: each thread its share of the images, as forward, into its own sums */
        const size_t n = m->front_params;
        int ran = 1; /* the threads (views) that ran: at most m->threads */
#pragma omp parallel num_threads(m->threads)
        {
            const int t = omp_get_thread_num();
            Model *v = front_view(m, t);
            memset(v->dw_hat, 0, n * sizeof(float));
            memset(v->grads, 0, n * sizeof(float));
            memset(v->w_du, 0, m->front_du * sizeof(float));
            int lo, hi;
            if (t == 0) ran = omp_get_num_threads();
            share(batch, t, omp_get_num_threads(), &lo, &hi);
            for (int first = lo; first < hi; first += pass)
                front_backward(v, d + m->grad_units[m->front_units].p, first, hi - first < pass ? hi - first : pass);
            for (int i = 0; i < m->num_convs; i++) { /* the front's Winograd dU, into dw_hat */
                const Conv *cv = m->convs[i];
                if (conv_is_winograd(&cv->shape) && cv->wino < m->front_du)
                    conv_winograd_dw(v->dw_hat + cv->weight, v->w_du + cv->wino, &cv->shape, in_bf16(v, cv));
            }
        }
#pragma omp parallel for schedule(static)
        for (size_t k = 0; k < n; k++) /* the threads' sums, in thread order */
            for (int t = 0; t < ran; t++) {
                m->dw_hat[k] += m->front_views[t].dw_hat[k];
                m->grads[k] += m->front_views[t].grads[k];
            }
    }

    /* chain the kernels' gradients through weight standardization */
    for (int i = 0; i < m->num_convs; i++) {
        const Conv *cv = m->convs[i];
        const ConvShape *s = &cv->shape;
        weight_standardize_backward(m->grads + cv->weight, m->dw_hat + cv->weight, m->w_hat + cv->weight,
                                    m->ws_rstd + cv->rstd, s->out_channels, s->in_channels * s->kernel_h * s->kernel_w);
    }
}

/* ------------------------------------------------------------- weights I/O */

#define WEIGHTS_FORMAT "distilld-bit-v1"

/* In-memory (Cout, Cin, KH, KW) <-> file HWIO (KH, KW, Cin, Cout); vectors as they are. */
static void file_shape(const ParamInfo *p, int *ndim, int64_t shape[4]) {
    if (p->kind == PARAM_KERNEL) {
        *ndim = 4;
        shape[0] = p->dims[2], shape[1] = p->dims[3], shape[2] = p->dims[1], shape[3] = p->dims[0];
    } else {
        *ndim = 1;
        shape[0] = p->dims[0];
    }
}

static void to_file_layout(float *dst, const float *src, const ParamInfo *p) {
    if (p->kind != PARAM_KERNEL) {
        memcpy(dst, src, p->size * sizeof(float));
        return;
    }
    const int co_n = p->dims[0], ci_n = p->dims[1], kh_n = p->dims[2], kw_n = p->dims[3];
    for (int co = 0; co < co_n; co++)
        for (int ci = 0; ci < ci_n; ci++)
            for (int kh = 0; kh < kh_n; kh++)
                for (int kw = 0; kw < kw_n; kw++)
                    dst[(((size_t)kh * kw_n + kw) * ci_n + ci) * co_n + co] =
                        src[(((size_t)co * ci_n + ci) * kh_n + kh) * kw_n + kw];
}

static void from_file_layout(float *dst, const float *src, const ParamInfo *p) {
    if (p->kind != PARAM_KERNEL) {
        memcpy(dst, src, p->size * sizeof(float));
        return;
    }
    const int co_n = p->dims[0], ci_n = p->dims[1], kh_n = p->dims[2], kw_n = p->dims[3];
    for (int co = 0; co < co_n; co++)
        for (int ci = 0; ci < ci_n; ci++)
            for (int kh = 0; kh < kh_n; kh++)
                for (int kw = 0; kw < kw_n; kw++)
                    dst[(((size_t)co * ci_n + ci) * kh_n + kh) * kw_n + kw] =
                        src[(((size_t)kh * kw_n + kw) * ci_n + ci) * co_n + co];
}

static char *config_depth_json(const ModelConfig *c) {
    json_t *a = json_array();
    for (int s = 0; s < c->num_stages; s++) json_array_append_new(a, json_integer(c->depth[s]));
    char *out = json_dumps(a, JSON_COMPACT);
    json_decref(a);
    return out;
}

char *model_normalization_json(const ModelConfig *c) {
    json_t *o = json_object(), *mean = json_array(), *std = json_array();
    for (int i = 0; i < c->in_channels; i++) {
        json_array_append_new(mean, json_real(c->norm_mean[i]));
        json_array_append_new(std, json_real(c->norm_std[i]));
    }
    json_object_set_new(o, "mean", mean);
    json_object_set_new(o, "std", std);
    char *out = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(9));
    json_decref(o);
    return out;
}

/* Writes blocks (weights, or weights + Adam moments for a checkpoint) as one
 * safetensors file; block b's tensors are named prefixes[b] + the BiT name. */
static int save_blocks(const Model *m, const float *const *blocks, const char *const *prefixes, int num_blocks,
                       const char *const *extra_keys, const char *const *extra_values, int num_extra, const char *path,
                       char *err) {
    const ModelConfig *c = &m->cfg;
    StFile f = {0};
    f.count = m->num_params * num_blocks;
    f.tensors = xcalloc(f.count, sizeof *f.tensors);
    for (int b = 0; b < num_blocks; b++)
        for (int i = 0; i < m->num_params; i++) {
            const ParamInfo *p = &m->params[i];
            StTensor *t = &f.tensors[b * m->num_params + i];
            size_t len = strlen(prefixes[b]) + strlen(p->name) + 1;
            t->name = xcalloc(len, 1);
            snprintf(t->name, len, "%s%s", prefixes[b], p->name);
            file_shape(p, &t->ndim, t->shape);
            t->data = xcalloc(p->size, sizeof(float));
            to_file_layout(t->data, blocks[b] + p->offset, p);
        }
    char ints[6][16];
    int vals[6] = {c->base_width, c->width, c->gn_groups, c->in_channels, c->num_classes, c->image_size};
    for (int i = 0; i < 6; i++) snprintf(ints[i], sizeof ints[i], "%d", vals[i]);
    char *depth = config_depth_json(c), *norm = model_normalization_json(c);
    const char *keys[16] = {"format", "depth", "base_width", "width", "gn_groups", "stem",
                            "in_channels", "num_classes", "image_size", "normalization", "block"};
    const char *values[16] = {WEIGHTS_FORMAT, depth, ints[0], ints[1], ints[2], c->stem == STEM_BIT ? "bit" : "small",
                              ints[3], ints[4], ints[5], norm, c->block == BLOCK_BASIC ? "basic" : "bottleneck"};
    f.meta_count = 11;
    for (int i = 0; i < num_extra && f.meta_count < 16; i++, f.meta_count++)
        keys[f.meta_count] = extra_keys[i], values[f.meta_count] = extra_values[i];
    f.meta_keys = (char **)keys;
    f.meta_values = (char **)values;
    int rc = safetensors_write(path, &f, err);
    for (int i = 0; i < f.count; i++) {
        free(f.tensors[i].name);
        free(f.tensors[i].data);
    }
    free(f.tensors);
    free(depth);
    free(norm);
    return rc;
}

int model_save_block(const Model *m, const float *block, const char *path, char *err) {
    const float *blocks[] = {block};
    const char *prefixes[] = {""};
    return save_blocks(m, blocks, prefixes, 1, NULL, NULL, 0, path, err);
}

int model_save(const Model *m, const char *path, char *err) { return model_save_block(m, m->weights, path, err); }

static int meta_int(const StFile *f, const char *key, int *out, const char *path, char *err) {
    const char *v = safetensors_meta(f, key);
    if (!v) return set_error(err, "%s: __metadata__ has no \"%s\" (not a distilld weights file?)", path, key);
    char *end;
    long x = strtol(v, &end, 10);
    if (end == v || *end || x < -1000000 || x > 1000000)
        return set_error(err, "%s: __metadata__ \"%s\" is not an integer: \"%s\"", path, key, v);
    *out = (int)x;
    return 0;
}

static int meta_float_list(json_t *arr, float *out, int n, const char *what, const char *path, char *err) {
    if (!json_is_array(arr) || (int)json_array_size(arr) != n)
        return set_error(err, "%s: normalization.%s must be a list of %d numbers", path, what, n);
    for (int i = 0; i < n; i++) {
        json_t *v = json_array_get(arr, i);
        if (!json_is_number(v)) return set_error(err, "%s: normalization.%s[%d] is not a number", path, what, i);
        out[i] = (float)json_number_value(v);
    }
    return 0;
}

static int config_from_file(ModelConfig *c, const StFile *f, const char *path, char *err) {
    model_config_defaults(c);
    const char *format = safetensors_meta(f, "format");
    if (!format || strcmp(format, WEIGHTS_FORMAT) != 0)
        return set_error(err, "%s: __metadata__ \"format\" is %s%s%s, expected \"%s\"", path, format ? "\"" : "",
                         format ? format : "missing", format ? "\"" : "", WEIGHTS_FORMAT);
    if (meta_int(f, "base_width", &c->base_width, path, err) || meta_int(f, "width", &c->width, path, err) ||
        meta_int(f, "gn_groups", &c->gn_groups, path, err) || meta_int(f, "in_channels", &c->in_channels, path, err) ||
        meta_int(f, "num_classes", &c->num_classes, path, err) || meta_int(f, "image_size", &c->image_size, path, err))
        return -1;
    const char *stem = safetensors_meta(f, "stem");
    if (!stem || (strcmp(stem, "bit") && strcmp(stem, "small")))
        return set_error(err, "%s: __metadata__ \"stem\" must be \"bit\" or \"small\"", path);
    c->stem = strcmp(stem, "bit") == 0 ? STEM_BIT : STEM_SMALL;
    const char *block = safetensors_meta(f, "block"); /* absent: bottleneck, BiT's */
    if (block && strcmp(block, "bottleneck") && strcmp(block, "basic"))
        return set_error(err, "%s: __metadata__ \"block\" must be \"bottleneck\" or \"basic\"", path);
    c->block = block && !strcmp(block, "basic") ? BLOCK_BASIC : BLOCK_BOTTLENECK;
    const char *depth = safetensors_meta(f, "depth");
    json_t *d = depth ? json_loads(depth, 0, NULL) : NULL;
    if (!json_is_array(d) || json_array_size(d) < 1 || json_array_size(d) > MODEL_MAX_STAGES) {
        json_decref(d);
        return set_error(err, "%s: __metadata__ \"depth\" must be a JSON list of 1..%d integers", path,
                         MODEL_MAX_STAGES);
    }
    c->num_stages = (int)json_array_size(d);
    for (int s = 0; s < c->num_stages; s++) {
        json_t *v = json_array_get(d, s);
        if (!json_is_integer(v)) {
            json_decref(d);
            return set_error(err, "%s: __metadata__ \"depth\" entry %d is not an integer: %s", path, s, depth);
        }
        c->depth[s] = (int)json_integer_value(v);
    }
    json_decref(d);
    const char *norm = safetensors_meta(f, "normalization");
    if (norm && c->in_channels >= 1 && c->in_channels <= MODEL_MAX_CHANNELS) {
        json_t *o = json_loads(norm, 0, NULL);
        int rc = json_is_object(o) ? 0 : set_error(err, "%s: __metadata__ \"normalization\" is not a JSON object", path);
        if (!rc) rc = meta_float_list(json_object_get(o, "mean"), c->norm_mean, c->in_channels, "mean", path, err);
        if (!rc) rc = meta_float_list(json_object_get(o, "std"), c->norm_std, c->in_channels, "std", path, err);
        json_decref(o);
        if (rc) return rc;
    }
    char why[ERR_LEN];
    if (model_config_validate(c, why) != 0) return set_error(err, "%s: architecture in __metadata__: %s", path, why);
    return 0;
}

/* Copies every tensor of f into block with the model's layout; refuses missing,
 * extra and mis-shaped tensors, naming them. */
static int block_from_file(const Model *m, float *block, const char *prefix, const StFile *f, const char *path,
                           char *err) {
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        char name[160];
        snprintf(name, sizeof name, "%s%s", prefix, p->name);
        const StTensor *t = safetensors_find(f, name);
        if (!t) return set_error(err, "%s: missing tensor %s", path, name);
        int ndim;
        int64_t shape[4];
        file_shape(p, &ndim, shape);
        int same = t->ndim == ndim;
        for (int k = 0; same && k < ndim; k++) same = t->shape[k] == shape[k];
        if (!same) {
            char want[64], got[96];
            int n = 0;
            for (int k = 0; k < ndim; k++) n += snprintf(want + n, sizeof want - n, "%s%lld", k ? "," : "", (long long)shape[k]);
            n = 0;
            got[0] = 0;
            for (int k = 0; k < t->ndim && n < (int)sizeof got - 24; k++)
                n += snprintf(got + n, sizeof got - n, "%s%lld", k ? "," : "", (long long)t->shape[k]);
            return set_error(err, "%s: tensor %s has shape [%s] but the architecture in __metadata__ needs [%s]", path,
                             name, got, want);
        }
        from_file_layout(block + p->offset, t->data, p);
    }
    return 0;
}

/* Every tensor in f must be one of the model's under one of the prefixes. */
static int refuse_extra_tensors(const Model *m, const StFile *f, const char *const *prefixes, int num_prefixes,
                                const char *path, char *err) {
    for (int i = 0; i < f->count; i++) {
        const char *name = f->tensors[i].name;
        int known = 0;
        for (int b = 0; b < num_prefixes && !known; b++) {
            size_t len = strlen(prefixes[b]);
            if (strncmp(name, prefixes[b], len) != 0) continue;
            for (int k = 0; k < m->num_params && !known; k++) known = strcmp(name + len, m->params[k].name) == 0;
        }
        if (!known) return set_error(err, "%s: unexpected tensor %s (not part of this architecture)", path, name);
    }
    return 0;
}

/* --------------------------------------------------- BiT .npz checkpoints */

/* A BiT .npz (big_transfer's BiT-M-R50x1.npz, say) holds the same tensors
 * under the same names and layouts as our files, but no metadata: the
 * architecture is read off the names and shapes instead. */

#define NPZ_ROOT_KERNEL "resnet/root_block/standardized_conv2d/kernel"
#define NPZ_HEAD_KERNEL "resnet/head/conv2d/kernel"
#define NPZ_GN_GROUPS 32       /* every BiT model */
#define NPZ_BIT_IMAGE_SIZE 224 /* BiT's own resolution */
#define NPZ_SMALL_IMAGE_SIZE 28

/* Some exports number their convolutions (standardized_conv2d_1, _2, ...);
 * each such path component becomes standardized_conv2d. */
static int npz_normalize_names(StFile *f, const char *path, char *err) {
    static const char stem[] = "standardized_conv2d";
    const size_t stem_len = sizeof stem - 1;
    for (int i = 0; i < f->count; i++) {
        char *name = f->tensors[i].name, *w = name;
        for (const char *r = name; *r;) {
            const char *end = strchr(r, '/');
            size_t len = end ? (size_t)(end - r) : strlen(r);
            size_t digits = 0;
            if (len > stem_len + 1 && memcmp(r, stem, stem_len) == 0 && r[stem_len] == '_')
                while (stem_len + 1 + digits < len && r[stem_len + 1 + digits] >= '0' && r[stem_len + 1 + digits] <= '9')
                    digits++;
            size_t keep = digits > 0 && stem_len + 1 + digits == len ? stem_len : len;
            memmove(w, r, keep);
            w += keep;
            r += len;
            if (*r == '/') *w++ = *r++;
        }
        *w = 0;
    }
    for (int i = 0; i < f->count; i++)
        for (int j = 0; j < i; j++)
            if (strcmp(f->tensors[i].name, f->tensors[j].name) == 0)
                return set_error(err, "%s: two members are both tensor %s once standardized_conv2d_N is read as "
                                      "standardized_conv2d", path, f->tensors[i].name);
    return 0;
}

static void shape_text(char *out, size_t size, const StTensor *t) {
    size_t n = 0;
    out[0] = 0;
    for (int k = 0; k < t->ndim && n + 24 < size; k++)
        n += (size_t)snprintf(out + n, size - n, "%s%lld", k ? "," : "", (long long)t->shape[k]);
}

/* depth from the unit names, widths from the root conv, stem from its kernel
 * size, classes from the head; see model_load_sized. */
static int config_from_npz(ModelConfig *c, const StFile *f, int image_size, const char *path, char *err) {
    model_config_defaults(c); /* BiT normalization: mean 0.5, std 0.5 */
    char got[96];
    const StTensor *root = safetensors_find(f, NPZ_ROOT_KERNEL);
    if (!root) return set_error(err, "%s: missing tensor %s (not a BiT ResNetV2 checkpoint?)", path, NPZ_ROOT_KERNEL);
    shape_text(got, sizeof got, root);
    if (root->ndim != 4 || root->shape[0] != root->shape[1] || (root->shape[0] != 7 && root->shape[0] != 3) ||
        root->shape[2] < 1 || root->shape[2] > MODEL_MAX_CHANNELS || root->shape[3] < 1 || root->shape[3] > 1 << 20)
        return set_error(err, "%s: tensor %s has shape [%s]; a BiT root kernel is [7,7,C,W] or [3,3,C,W] (HWIO) "
                              "with 1..%d input channels", path, NPZ_ROOT_KERNEL, got, MODEL_MAX_CHANNELS);
    c->stem = root->shape[0] == 7 ? STEM_BIT : STEM_SMALL;
    c->in_channels = (int)root->shape[2];
    int root_width = (int)root->shape[3];
    if (root_width % NPZ_GN_GROUPS != 0)
        return set_error(err, "%s: the root conv has %d output channels, not a multiple of the %d GroupNorm groups "
                              "every BiT model has; refusing to guess another group count", path, root_width,
                         NPZ_GN_GROUPS);
    c->gn_groups = NPZ_GN_GROUPS;
    /* only base_width*width matters; name it as BiT does (R50x3: 64 x 3) */
    if (root_width % 64 == 0 && root_width / 64 <= 64)
        c->base_width = 64, c->width = root_width / 64;
    else
        c->base_width = root_width, c->width = 1;

    memset(c->depth, 0, sizeof c->depth);
    c->num_stages = 0;
    for (int i = 0; i < f->count; i++) {
        int s, u, used = 0;
        if (sscanf(f->tensors[i].name, "resnet/block%d/unit%d/%n", &s, &u, &used) != 2 || used == 0) continue;
        if (s < 1 || s > MODEL_MAX_STAGES || u < 1 || u > 99)
            return set_error(err, "%s: tensor %s: stage %d, unit %d is out of range (stages 1..%d, units 1..99)", path,
                             f->tensors[i].name, s, u, MODEL_MAX_STAGES);
        if (u > c->depth[s - 1]) c->depth[s - 1] = u;
        if (s > c->num_stages) c->num_stages = s;
    }
    if (c->num_stages == 0)
        return set_error(err, "%s: no resnet/block1/unit01/... tensors (not a BiT ResNetV2 checkpoint?)", path);
    for (int s = 0; s < c->num_stages; s++)
        if (c->depth[s] == 0)
            return set_error(err, "%s: there are tensors of stage %d but none of stage %d (resnet/block%d/...)", path,
                             c->num_stages, s + 1, s + 1);

    const StTensor *head = safetensors_find(f, NPZ_HEAD_KERNEL);
    if (!head) return set_error(err, "%s: missing tensor %s", path, NPZ_HEAD_KERNEL);
    shape_text(got, sizeof got, head);
    if (head->ndim != 4 || head->shape[0] != 1 || head->shape[1] != 1 || head->shape[3] < 1 || head->shape[3] > 1 << 20)
        return set_error(err, "%s: tensor %s has shape [%s]; the BiT head kernel is [1,1,C,classes]", path,
                         NPZ_HEAD_KERNEL, got);
    c->num_classes = (int)head->shape[3];
    c->image_size = image_size > 0 ? image_size : c->stem == STEM_BIT ? NPZ_BIT_IMAGE_SIZE : NPZ_SMALL_IMAGE_SIZE;
    char why[ERR_LEN];
    if (model_config_validate(c, why) != 0)
        return set_error(err, "%s: architecture inferred from the tensors: %s", path, why);
    return 0;
}

/* Every tensor of the inferred architecture is there with its shape. */
static int npz_check_tensors(const Model *m, const StFile *f, const char *path, char *err) {
    const ModelConfig *c = &m->cfg;
    char depth[64] = "";
    for (int s = 0, n = 0; s < c->num_stages; s++)
        n += snprintf(depth + n, sizeof depth - (size_t)n, "%s%d", s ? "," : "", c->depth[s]);
    for (int i = 0; i < m->num_params; i++) {
        const ParamInfo *p = &m->params[i];
        StTensor want = {0};
        file_shape(p, &want.ndim, want.shape);
        char want_text[96], got_text[96];
        shape_text(want_text, sizeof want_text, &want);
        const StTensor *t = safetensors_find(f, p->name);
        if (!t)
            return set_error(err, "%s: missing tensor %s [%s] (inferred: depth [%s], root width %d, %s stem, %d "
                                  "classes)", path, p->name, want_text, depth, c->base_width * c->width,
                             c->stem == STEM_BIT ? "bit" : "small", c->num_classes);
        int same = t->ndim == want.ndim;
        for (int k = 0; same && k < want.ndim; k++) same = t->shape[k] == want.shape[k];
        shape_text(got_text, sizeof got_text, t);
        if (!same)
            return set_error(err, "%s: tensor %s has shape [%s] but needs [%s] (inferred: depth [%s], root width %d, "
                                  "%s stem, %d classes)", path, p->name, got_text, want_text, depth,
                             c->base_width * c->width, c->stem == STEM_BIT ? "bit" : "small", c->num_classes);
    }
    return 0;
}

int model_load_sized(Model **out, const char *path, int batch_capacity, int image_size, char *err) {
    *out = NULL;
    StFile f = {0};
    int npz = npz_is_zip(path);
    if ((npz ? npz_read(path, &f, err) : safetensors_read(path, &f, err)) != 0) return -1;
    ModelConfig c;
    Model *m = NULL;
    int rc = npz ? npz_normalize_names(&f, path, err) : 0;
    if (!rc) rc = npz ? config_from_npz(&c, &f, image_size, path, err) : config_from_file(&c, &f, path, err);
    if (!rc) rc = model_create_inference(&m, &c, batch_capacity, err);
    if (!rc && npz) rc = npz_check_tensors(m, &f, path, err);
    const char *prefixes[] = {""};
    if (!rc) rc = block_from_file(m, m->weights, "", &f, path, err);
    if (!rc) rc = refuse_extra_tensors(m, &f, prefixes, 1, path, err);
    safetensors_free(&f);
    if (rc) {
        model_free(m);
        return -1;
    }
    m->w_hat_valid = 0;
    *out = m;
    return 0;
}

int model_load(Model **out, const char *path, int batch_capacity, char *err) {
    return model_load_sized(out, path, batch_capacity, 0, err);
}

/* ------------------------------------------------------------- checkpoints */

#define OPT_M_PREFIX "optimizer/adam_m/"
#define OPT_V_PREFIX "optimizer/adam_v/"

int model_save_checkpoint(const Model *m, long step, const char *spec_json, const char *path, char *err) {
    if (m->inference) return set_error(err, "%s: a model built for inference has no optimizer state", path);
    char step_text[32];
    snprintf(step_text, sizeof step_text, "%ld", step);
    const float *blocks[] = {m->weights, m->adam_m, m->adam_v};
    const char *prefixes[] = {"", OPT_M_PREFIX, OPT_V_PREFIX};
    const char *keys[] = {"step", "spec"}, *values[] = {step_text, spec_json ? spec_json : "{}"};
    return save_blocks(m, blocks, prefixes, 3, keys, values, 2, path, err);
}

int model_load_checkpoint(Model *m, const char *path, long *step, char **spec_json, char *err) {
    if (m->inference) return set_error(err, "%s: a model built for inference has no optimizer state", path);
    StFile f = {0};
    if (safetensors_read(path, &f, err) != 0) return -1;
    ModelConfig c;
    int rc = config_from_file(&c, &f, path, err);
    int same_depth = c.num_stages == m->cfg.num_stages;
    for (int s = 0; same_depth && s < c.num_stages; s++) same_depth = c.depth[s] == m->cfg.depth[s];
    if (!rc && (!same_depth || c.base_width != m->cfg.base_width || c.width != m->cfg.width || c.gn_groups != m->cfg.gn_groups ||
                c.stem != m->cfg.stem || c.in_channels != m->cfg.in_channels || c.num_classes != m->cfg.num_classes ||
                c.image_size != m->cfg.image_size))
        rc = set_error(err, "%s: checkpoint is of a different architecture than the job's model", path);
    const char *prefixes[] = {"", OPT_M_PREFIX, OPT_V_PREFIX};
    if (!rc) rc = block_from_file(m, m->weights, "", &f, path, err);
    if (!rc) rc = block_from_file(m, m->adam_m, OPT_M_PREFIX, &f, path, err);
    if (!rc) rc = block_from_file(m, m->adam_v, OPT_V_PREFIX, &f, path, err);
    if (!rc) rc = refuse_extra_tensors(m, &f, prefixes, 3, path, err);
    const char *step_text = safetensors_meta(&f, "step");
    char *end = NULL;
    errno = 0;
    long s = step_text ? strtol(step_text, &end, 10) : -1;
    if (!rc && (!step_text || end == step_text || *end || errno == ERANGE || s < 0))
        rc = set_error(err, "%s: checkpoint has no valid \"step\" in __metadata__", path);
    if (!rc) {
        *step = s;
        if (spec_json) {
            const char *sj = safetensors_meta(&f, "spec");
            *spec_json = sj ? strdup(sj) : NULL;
        }
    }
    safetensors_free(&f);
    m->w_hat_valid = 0;
    return rc;
}
