/* onnx.h - a model as an ONNX file, for inference outside distilld.
 *
 * The graph computes exactly what model_forward computes:
 *   input  "images": float32 [batch, C, S, S], NCHW, pixels ALREADY
 *          normalized as model_forward takes them: (pixel in [0,1] - mean)
 *          / std per channel, with the weights file's normalization (also
 *          written to the ONNX metadata_props as "normalization");
 *   output "logits": float32 [batch, K].
 * The batch dimension is symbolic ("batch"); C, S and K are the model's.
 *
 * How each piece is written (opset 13, ir_version 8; onnx 1.12 has no
 * GroupNormalization, and OpenCV 4.6's dnn reads all of these ops):
 *   - weight standardization is folded in: each conv kernel is the
 *     standardized kernel w_hat, computed in float by the model's own
 *     weight_standardize_forward, stored OIHW as "<BiT kernel name>_hat";
 *   - stem "bit": Conv 7x7 stride 2 pads 3, then an explicit zero Pad of 1
 *     and MaxPool 3x3 stride 2 without pads: the model max-pools over zero
 *     padding (BiT's), while ONNX MaxPool pads with -inf, which differs
 *     wherever a border window is all negative. Stem "small": Conv 3x3 pads 1;
 *   - GroupNorm: Reshape (N, G, -1) -> InstanceNormalization (scale 1,
 *     bias 0, epsilon 1e-5; per image and group over C/G x H x W, i.e.
 *     GroupNorm without the affine part) -> Reshape (N, C, H, W) ->
 *     Mul gamma (C,1,1) -> Add beta (C,1,1) -> Relu;
 *   - head: GlobalAveragePool -> Flatten -> Gemm with the dense (K, C)
 *     kernel (transB) and bias.
 * Tensors are raw_data, little-endian float32; the protobuf is written by
 * hand (varints and length-delimited fields). A model whose file would pass
 * protobuf's 2 GB message limit is refused (no external data). */
#ifndef DISTILLD_ONNX_H
#define DISTILLD_ONNX_H

#include <stddef.h>

#include "model.h"

/* The ONNX bytes of m in a malloc'd buffer (*data, *size). */
int onnx_encode(const Model *m, unsigned char **data, size_t *size, char *err);

/* onnx_encode, then written to path atomically (write_file_atomic). */
int onnx_export(const Model *m, const char *path, char *err);

#endif
