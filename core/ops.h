/* ops.h - the layers of a BiT ResNetV2, each a forward/backward pair.
 *
 * Tensors are float arrays in NCHW order (batch, channels, height, width).
 * Outputs come first, then caches, inputs, weights and dimensions. No op
 * allocates: scratch buffers are passed in. Every backward ACCUMULATES (+=)
 * into the input gradient and the parameter gradients, so a tensor used twice
 * (the residual shortcut) simply receives both contributions; callers zero
 * gradients first. A NULL input gradient means "not needed" (the image).
 * Heavy work goes through cblas_sgemm (or, for a bfloat16 teacher's
 * forward, bf16_gemm). */
#ifndef DISTILLD_OPS_H
#define DISTILLD_OPS_H

#include <stddef.h>
#include <stdint.h>

/* ---- 2-D convolution (cross-correlation), square stride, symmetric zero pad ---- */
typedef struct {
    int batch, in_channels, in_h, in_w;
    int out_channels, kernel_h, kernel_w, stride, pad;
    int out_h, out_w; /* filled by conv_shape_init */
} ConvShape;

/* Fills out_h/out_w; returns -1 if the output would be empty. */
int conv_shape_init(ConvShape *s);
/* Floats of scratch the conv needs with omp_get_max_threads() threads: per
 * thread an im2col of one image and its gradient (none for a 1x1 stride-1
 * unpadded conv on images of 256 pixels or more), plus a private dW when
 * there is more than one thread; for a Winograd conv the transformed input,
 * output and dW of a group of images per thread. Convolutions split the
 * batch across OpenMP threads; each GEMM is single-threaded and sized to
 * stay in cache. */
size_t conv_scratch_size(const ConvShape *s, int bf16 /* room for conv2d_backward in bf16 */);
/* Images side by side in one forward GEMM with `threads` threads (bf16: as
 * conv2d_forward_bf16 runs it): 1, or for images of fewer than 256 output
 * pixels (for a Winograd conv, tiles) up to 16 (F(4x4, 3x3): 64), so that
 * the GEMM has about 256 columns, while every thread still gets a group. A
 * Winograd backward takes the same groups, with one thread's count, from
 * each thread's chunk of images. */
int conv_group(const ConvShape *s, int threads, int bf16);

void conv2d_forward(float *out,        /* (B, Cout, Ho, Wo); += when accumulate (a residual unit's last conv) */
                    const float *in,   /* (B, Cin, H, W) */
                    const float *w,    /* (Cout, Cin, KH, KW) */
                    const float *u,    /* a Winograd conv's conv_winograd_u of w, or NULL: computed in scratch */
                    const ConvShape *s, int accumulate, float *scratch);
/* A float Winograd conv's transformed kernel (its (m+2)^2 matrices U_xi,
 * conv_winograd_tile(s, 0)): conv_winograd_u_size floats, 0 when the conv
 * is not Winograd. Kept per weight change, it spares conv2d_forward and
 * conv2d_backward computing it on every call. */
size_t conv_winograd_u_size(const ConvShape *s);
void conv_winograd_u(float *u, const float *w, const ConvShape *s);
/* The same forward pass in bfloat16 (bf16.h): conv_bf16_pack rounds the
 * kernel once per weight change - for a Winograd conv
 * its 16 transformed matrices, computed in float first - and
 * conv2d_forward_bf16 rounds the input (or its Winograd transform) as the
 * GEMMs read it. Products are summed in float. conv_bf16_pack uses scratch
 * (conv_scratch_size) for the transform. */
size_t conv_bf16_packed_size(const ConvShape *s); /* uint32s */
void conv_bf16_pack(uint32_t *packed, const float *w /* (Cout, Cin, KH, KW) */, const ConvShape *s, float *scratch);
void conv2d_forward_bf16(float *out, const float *in, const uint32_t *packed, const ConvShape *s, int accumulate,
                         float *scratch);
/* 1 when the convolution runs as Winograd: 3x3, stride 1, pad 1, at least
 * 8 input and 8 output channels. conv_winograd_tile gives the output tile's
 * side: 4, F(4x4, 3x3), for float GEMMs on images wider than 4 pixels, 36
 * GEMMs per tile with 1/4 of the direct FLOPs; else 2, F(2x2, 3x3), 16
 * GEMMs with 4/9 of them (bf16, whose operands F(4x4, 3x3)'s transforms
 * would cost too much precision; ops.c); 0 when not Winograd. Each GEMM
 * (one per transform element) is Cout x tiles x Cin, images side by side
 * (conv_group), in place of the im2col GEMM. */
int conv_is_winograd(const ConvShape *s);
int conv_winograd_tile(const ConvShape *s, int bf16 /* the GEMMs in bfloat16 */);
/* 1 when the convolution is faster in bfloat16 than in float, so that a
 * bfloat16 model runs it so: every one but a Winograd conv that float runs
 * as F(4x4, 3x3), whose 2.25 products per output pixel against F(2x2,
 * 3x3)'s 4 make up for the bf16 GEMM's double rate (ops.c). */
int conv_bf16_faster(const ConvShape *s);
/* 1 when conv2d_backward takes the input gradient as a convolution of dout
 * (stride 1, square kernel, fewer than 256 output channels, not Winograd)
 * and dW from the same im2col: its GEMMs are then (Cout*KH*KW) x Cin x (H*W)
 * for dW and Cin x (H*W) x (Cout*KH*KW) for the input gradient. */
int conv_input_grad_is_conv(const ConvShape *s);
/* Images whose dW a bf16 conv2d_backward sums in one GEMM (not an input
 * gradient by convolution): enough for about 1,024 output pixels, or for a
 * Winograd conv about 256 tiles. */
int conv_bf16_dw_group(const ConvShape *s);
/* 1 when a float conv2d_backward sums dW transposed, as col . dout^T
 * ((Cin*KH*KW) x Cout x pixels): more columns of dW than rows, and not an
 * input gradient by convolution. */
int conv_dw_transposed(const ConvShape *s);
/* With bf16, the backward's GEMMs run in bfloat16 (bf16.h) as the forward's
 * do in conv2d_forward_bf16: their operands rounded (dout, the input or its
 * transforms, the kernel), their products summed in float; dW and din are
 * float sums over the images as ever. The scratch must then be sized with
 * bf16 (conv_scratch_size). */
void conv2d_backward(float *din,       /* (B, Cin, H, W) += (accumulate) or = ; may be NULL */
                     float *dw,        /* (Cout, Cin, KH, KW) += */
                     const float *dout,/* (B, Cout, Ho, Wo) */
                     const float *in, const float *w,
                     const float *u,   /* as conv2d_forward's; NULL with bf16 */
                     const ConvShape *s, int accumulate, int bf16, float *scratch);
/* A Winograd conv's backward summed over several calls (a training model's
 * front, a few images a call): conv2d_backward_du adds the call's weight
 * gradient as the GEMMs give it, transformed - dU, the (tile+2)^2 matrices
 * (Cout, Cin) of conv_winograd_tile(s, bf16), conv_winograd_du_size floats -
 * to du, where conv2d_backward would transform it into dw on every call;
 * conv_winograd_dw adds G^T dU G to dw once, after the last. */
void conv2d_backward_du(float *din, float *du, const float *dout, const float *in, const float *w, const float *u,
                        const ConvShape *s, int accumulate, int bf16, float *scratch);
size_t conv_winograd_du_size(const ConvShape *s, int bf16); /* 0 when not Winograd */
void conv_winograd_dw(float *dw /* (Cout, Cin, 3, 3) += */, const float *du, const ConvShape *s, int bf16);

/* ---- weight standardization: per output channel over (Cin, KH, KW) ---- */
#define WS_EPS 1e-10f
void weight_standardize_forward(float *w_hat,   /* (Cout, fan_in) */
                                float *rstd,    /* (Cout) cache */
                                const float *w, /* (Cout, fan_in) */
                                int out_channels, int fan_in);
void weight_standardize_backward(float *dw,           /* (Cout, fan_in) += */
                                 const float *dw_hat, /* (Cout, fan_in) */
                                 const float *w_hat, const float *rstd,
                                 int out_channels, int fan_in);

/* ---- GroupNorm over (C/G channels x HW) per image and group ----
 * Optionally fused with the ReLU that follows it everywhere in ResNetV2:
 * forward with relu = 1 writes relu(gn(x)); backward with relu_out (that
 * output) masks dout first. With relu = 0 / relu_out = NULL it is plain GN. */
#define GN_EPS 1e-5f
void groupnorm_forward(float *out,        /* (B, C, HW) */
                       float *mean, float *rstd, /* (B, G) cache */
                       const float *in,   /* (B, C, HW) */
                       const float *gamma, const float *beta, /* (C) */
                       int batch, int channels, int hw, int groups, int relu);
void groupnorm_backward(float *din, float *dgamma, float *dbeta, /* +=; din = when not accumulate */
                        const float *dout, const float *in,
                        const float *mean, const float *rstd, const float *gamma,
                        int batch, int channels, int hw, int groups,
                        const float *relu_out, /* NULL: no ReLU */
                        int accumulate, float *sums /* scratch: 2 x batch x channels floats */);

/* ---- ReLU ---- */
void relu_forward(float *out, const float *in, size_t n);
void relu_backward(float *din /* += */, const float *dout, const float *out, size_t n);

/* ---- max-pool, zero padding (BiT pads the stem with zeros, not -inf) ---- */
typedef struct {
    int batch, channels, in_h, in_w, kernel, stride, pad;
    int out_h, out_w; /* filled by pool_shape_init */
} PoolShape;
int pool_shape_init(PoolShape *s);
void maxpool_forward(float *out,      /* (B, C, Ho, Wo) */
                     int32_t *argmax, /* (B, C, Ho, Wo) cache: index in the image plane, -1 = padding */
                     const float *in, const PoolShape *s);
void maxpool_backward(float *din /* += */, const float *dout, const int32_t *argmax, const PoolShape *s);

/* ---- global average pool ---- */
void avgpool_forward(float *out /* (B, C) */, const float *in /* (B, C, HW) */, int batch, int channels, int hw);
void avgpool_backward(float *din /* += */, const float *dout, int batch, int channels, int hw);

/* ---- dense head: out = in . w^T + bias ---- */
void dense_forward(float *out,      /* (B, K) */
                   const float *in, /* (B, C) */
                   const float *w,  /* (K, C) */
                   const float *bias, /* (K) */
                   int batch, int in_features, int out_features);
void dense_backward(float *din, float *dw, float *dbias, /* += */
                    const float *dout, const float *in, const float *w,
                    int batch, int in_features, int out_features);

/* ---- losses (batch means); probs are caches for the backward ---- */
/* Softmax cross-entropy against target distributions (one-hot for plain
 * labels, mixed for mixup). Returns the mean loss. */
float cross_entropy_forward(float *probs,         /* (B, K) */
                            const float *logits,  /* (B, K) */
                            const float *targets, /* (B, K) rows sum to 1 */
                            int batch, int classes);
void cross_entropy_backward(float *dlogits /* += */, const float *probs, const float *targets,
                            int batch, int classes);

/* Distillation: T^2 * KL(softmax(t/T) || softmax(s/T)). Returns the mean loss. */
float distill_loss_forward(float *student_probs, float *teacher_probs, /* (B, K) softmax(x/T) */
                           const float *student_logits, const float *teacher_logits,
                           int batch, int classes, float temperature);
void distill_loss_backward(float *dlogits /* += */, const float *student_probs,
                           const float *teacher_probs, int batch, int classes, float temperature);

/* Row-wise softmax of x/T in place of out (numerically stable). */
void softmax_rows(float *out, const float *logits, int rows, int cols, float temperature);

#endif
