/* model.h - BiT ResNetV2 (pre-activation bottleneck units, GroupNorm,
 * weight-standardized convolutions) for any depth list and width, and the
 * same network with pre-activation basic units (two 3x3 convolutions) for
 * small students.
 *
 * Parameters, gradients, Adam moments and activations each live in one
 * allocation, laid out by a table built from the configuration. In memory a
 * conv kernel is (Cout, Cin, KH, KW) and the head is (K, C); weight files
 * use BiT's HWIO layout and names (see model_save / model_load), so BiT's
 * own .npz checkpoints load too. */
#ifndef DISTILLD_MODEL_H
#define DISTILLD_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "ops.h"

#define MODEL_MAX_STAGES 8
#define MODEL_MAX_CHANNELS 8

enum { STEM_BIT = 0, STEM_SMALL = 1 };
enum { BLOCK_BOTTLENECK = 0, BLOCK_BASIC = 1 };

typedef struct {
    int depth[MODEL_MAX_STAGES]; /* units per stage */
    int num_stages;
    int base_width, width, gn_groups, stem;
    int block;                   /* BLOCK_BOTTLENECK (BiT) or BLOCK_BASIC */
    int in_channels, num_classes, image_size;
    /* pixels in [0,1] are normalized as (x - mean) / std per channel */
    float norm_mean[MODEL_MAX_CHANNELS], norm_std[MODEL_MAX_CHANNELS];
} ModelConfig;

typedef enum { PARAM_KERNEL, PARAM_GAMMA, PARAM_BETA, PARAM_BIAS } ParamKind;

typedef struct {
    char name[96];   /* BiT name, e.g. resnet/block1/unit01/a/standardized_conv2d/kernel */
    ParamKind kind;
    int dims[4];     /* in-memory shape; kernels (Cout, Cin, KH, KW), head (K, C, 1, 1), vectors (C, 1, 1, 1) */
    size_t offset, size;
} ParamInfo;

typedef struct {
    ConvShape shape;   /* batch = capacity */
    size_t weight;     /* offset of the kernel in the parameter block (and w_hat block) */
    size_t rstd;       /* offset of its per-channel 1/std in the standardization cache */
    size_t packed;     /* offset of its bf16-packed kernel in w_bf16 (model_set_bf16) */
    size_t wino;       /* offset of its Winograd U in w_wino (conv_winograd_u_size floats) */
} Conv;

typedef struct {
    int channels, hw;
    size_t gamma, beta; /* parameter offsets */
    size_t mean, rstd;  /* activation offsets, (B, G) each */
} Norm;

/* A bottleneck unit uses every field below; a basic unit is
 * p = relu(gn_a(x)), a = conv_a(p) (3x3, the stride), q = relu(gn_b(a)),
 * out = conv_b(q) (3x3) + shortcut, and has no b, r, gn_c or conv_c. */
typedef struct {
    int has_proj;
    Norm gn_a, gn_b, gn_c;
    Conv conv_a, conv_b, conv_c, proj;
    /* activation offsets */
    size_t x;  /* input (the previous unit's out) */
    size_t p;  /* relu(gn_a(x))       (B, Cin, H, W) */
    size_t a;  /* conv_a(p)           (B, mid, H, W) */
    size_t q;  /* relu(gn_b(a))       (B, mid, H, W) */
    size_t b;  /* conv_b(q)           (B, mid, Ho, Wo) */
    size_t r;  /* relu(gn_c(b))       (B, mid, Ho, Wo) */
    size_t out;/* conv_c(r) + shortcut: x, or proj(p) if has_proj  (B, Cout, Ho, Wo) */
} Unit;

typedef struct Model {
    ModelConfig cfg;
    ParamInfo *params;
    int num_params;
    size_t num_floats;      /* total parameters */
    float *weights;         /* (num_floats) */
    float *grads;           /* (num_floats) */
    float *adam_m, *adam_v; /* (num_floats) */
    float *w_hat;           /* standardized kernels, same offsets as weights */
    float *dw_hat;          /* their gradients */
    float *ws_rstd;         /* (sum of Cout over standardized convs) */
    int w_hat_valid;        /* 0 after the weights change */
    uint32_t *w_bf16;       /* NULL, or (model_set_bf16) the standardized kernels packed for the bf16 GEMM */
    float *w_wino;          /* the Winograd convs' U (conv_winograd_u), with w_hat, for those run in float */

    Conv stem;
    int has_pool;
    PoolShape pool;
    Unit *units;
    int num_units;
    Conv **convs;          /* every standardized conv: stem, then each unit's */
    int num_convs;
    Norm head_norm;
    size_t head_kernel, head_bias;
    int head_channels;

    /* activations for up to batch_capacity images */
    int batch_capacity;
    size_t num_acts;
    float *acts;
    /* activation gradients (training): laid out as an inference model's
     * activations (but an identity unit's output gradient apart from its
     * input's), so only the unit being differentiated and its input and
     * output gradients are live; grad_units holds the units' offsets in it */
    float *grad_acts;
    size_t num_grad_acts;
    Unit *grad_units;
    size_t grad_stem_conv, grad_stem_out, grad_head, grad_pooled;
    float *scratch;        /* convolution scratch (see conv_scratch_size) */
    size_t scratch_size;   /* its floats */
    int threads;           /* OpenMP threads when created: forward/backward run on this many */
    int inference;         /* built for inference: grads, adam_m/v, dw_hat and grad_acts are NULL */
    int32_t *pool_argmax;
    size_t act_input, act_stem_conv, act_stem_out, act_head, act_pooled, act_logits;
    /* model_predict on an inference model runs its passes side by side, one
     * per thread, each in a lane: a copy of the model with its own
     * activations, argmax and scratch (for one thread), reading the model's
     * weights. Made at its first call of more than one pass; none if the
     * memory was not there (the passes then run one after another). */
    struct Model *lanes;
    int num_lanes;
    /* The front: the stem, the first front_units units and the next unit's
     * gn_a, run front_pass images at a time, so that an image's activations
     * stay in the cache from layer to layer (see plan_front in model.c);
     * front_pass 0 when the model has none. An inference model runs its
     * passes' fronts one after another, in activations laid out for
     * front_pass images. A training model's threads each run the front on
     * their share of the batch, forward and backward, side by side, each in
     * a view (front_views): the model with the thread's own scratch, its own
     * activation gradients for a pass (laid out as front_grad_units and
     * front_grad_stem_*, front_grad_acts floats), and its own dw_hat and
     * grads for the parameters up to the front's end (the first
     * front_params), added up after the backward pass in thread order. A
     * view sums its Winograd convs' dU over its passes in w_du (laid out as
     * the front's first front_du floats of w_wino: no dU is larger than its
     * conv's float U) and transforms them into dw_hat after the last. */
    int front_units, front_pass;
    struct Model *front_views;
    size_t front_params, front_du;
    float *w_du;
    Unit *front_grad_units;
    size_t front_grad_acts, front_grad_stem_conv, front_grad_stem_out;
} Model;

/* The default configuration values (BiT normalization: mean 0.5, std 0.5). */
void model_config_defaults(ModelConfig *c);
/* Checks a configuration, naming the first problem. */
int model_config_validate(const ModelConfig *c, char *err);
/* Number of parameters a configuration has (0 if invalid). */
size_t model_config_param_count(const ModelConfig *c);

/* Builds the model; batch_capacity is the largest batch forward() will see.
 * Forward and backward run on as many OpenMP threads as the calling thread
 * had when the model was created (see train_threads). */
int model_create(Model **out, const ModelConfig *c, int batch_capacity, char *err);
/* The same for forward passes only (a teacher, predict, export): weights and
 * standardized kernels, without gradients, Adam moments or activation
 * gradients, and activations that reuse memory (only the current unit's and
 * the previous unit's output are kept), so `acts` holds the input and the
 * head, not every layer. model_backward, model_zero_grad, the optimizer and
 * checkpoints refuse such a model. */
int model_create_inference(Model **out, const ModelConfig *c, int batch_capacity, char *err);
void model_free(Model *m);

/* Runs the model's convolutions in bfloat16: their forwards
 * (conv2d_forward_bf16) and, for a training model, their backwards
 * (conv2d_backward with bf16): products of bf16-rounded kernels, activations
 * and gradients, summed in float. Weights, their gradients, the optimizer
 * and GroupNorm, pooling and the head stay float (mixed precision), and so
 * do the convolutions that are no faster in bf16 (conv_bf16_faster: the
 * Winograd ones that float runs as F(4x4, 3x3)). Refused
 * by a build without the AVX512-BF16 kernel (bf16_fast), which would be
 * slower than float. */
int model_set_bf16(Model *m, char *err);

/* BiT initialisation: He-normal kernels, GroupNorm gamma 1 / beta 0, zero head. */
void model_init_bit(Model *m, uint64_t seed);

/* Forward pass of `batch` normalized images (B, C, S, S); returns the logits (B, K). */
float *model_forward(Model *m, const float *images, int batch);
/* The logits (B, K) of any number of images into `logits`: forward passes of
 * at most the model's batch capacity. A training model runs them one after
 * another; an inference model (a teacher, predict) runs them side by side,
 * one per thread (the model's lanes), each on one thread, with no barrier
 * between its layers: on 2 threads, the teachers of docs/PERFORMANCE.md in
 * bfloat16 741 -> 814 images/s (bit128) and 2004 -> 2717 (fmnist), a
 * distill step with both models in bfloat16 276 -> 303 and 1002 -> 1145
 * (medians, alternating runs). The logits equal those of passes one after another
 * to rounding (the GEMMs group a pass's images by its threads), and in
 * bfloat16 bit for bit. An inference model built for MODEL_PASS_IMAGES holds a
 * quarter of the activations of one built for a batch of 128, at the same
 * speed (per-image work). One that runs in bfloat16 is faster in passes of
 * MODEL_PASS_IMAGES_BF16, whose activations stay in the caches between its
 * layers: the bit128 teacher of docs/PERFORMANCE.md 686 -> 771 images/s on
 * 2 threads, 405 -> 495 on 1; in float, smaller passes were slower (370 ->
 * 342 images/s). Within a pass, the model's front (the stem and the first
 * units, whose activations outweigh their kernels: plan_front in model.c)
 * runs one image or a few at a time. */
#define MODEL_PASS_IMAGES 32
#define MODEL_PASS_IMAGES_BF16 8
void model_predict(Model *m, float *logits, const float *images, int batch);
/* The images of each of model_predict's passes in lanes: at least one pass
 * per thread, the images shared out evenly, at most the batch capacity. */
int model_lane_pass(const Model *m, int batch);
/* The batch capacity to build such a model with for `images` at a time, in
 * float or (bf16) bfloat16: MODEL_PASS_IMAGES or MODEL_PASS_IMAGES_BF16, or
 * fewer when fewer come (at least 1). */
int model_pass_capacity(long images, int bf16);
void model_zero_grad(Model *m);
/* Backward pass after model_forward with the same batch; accumulates into m->grads. */
void model_backward(Model *m, const float *dlogits, int batch);

/* Weights I/O: safetensors with BiT names, HWIO kernels, architecture in __metadata__. */
int model_save(const Model *m, const char *path, char *err);
/* The metadata value "normalization": {"mean":[...],"std":[...]} (malloc'd). */
char *model_normalization_json(const ModelConfig *c);
/* Reads a weights file's architecture and builds a model with its weights,
 * for inference (model_create_inference: a teacher, predict, export). The
 * file is our safetensors (architecture in __metadata__) or a BiT .npz
 * checkpoint (told apart by the zip magic, not the name): its architecture
 * is inferred from the tensors - depth from the block{s}/unit{NN} names,
 * base_width*width from the root conv's output channels (written 64 x w when
 * divisible, else that width x 1; only the product matters), stem "bit" for
 * a 7x7 root kernel and "small" for 3x3, in_channels and num_classes from the
 * root and head kernels, gn_groups 32 (a root width not divisible by 32 is
 * refused), BiT's normalization (mean 0.5, std 0.5), and image_size 224
 * ("bit") or 28 ("small"). Conv names numbered standardized_conv2d_N are read
 * as standardized_conv2d. Missing, extra or mis-shaped tensors are refused. */
int model_load(Model **out, const char *path, int batch_capacity, char *err);
/* The same, but a .npz (which records no input size) is built for
 * image_size-px images when image_size > 0; a safetensors file keeps the size
 * in its metadata. */
int model_load_sized(Model **out, const char *path, int batch_capacity, int image_size, char *err);
/* Saves any block (gradients, say) under the model's names and layouts. */
int model_save_block(const Model *m, const float *block, const char *path, char *err);

/* A checkpoint: weights, Adam moments (as optimizer/adam_m/... and
 * optimizer/adam_v/...), the step and the job spec in __metadata__. The
 * batch order and augmentation are functions of (seed, step), so this is the
 * whole state of a run. */
int model_save_checkpoint(const Model *m, long step, const char *spec_json, const char *path, char *err);
/* Loads into a model of the same architecture; *spec_json is malloc'd (may be NULL). */
int model_load_checkpoint(Model *m, const char *path, long *step, char **spec_json, char *err);

#endif
