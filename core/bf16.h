/* bf16.h - bfloat16 GEMMs for convolutions' forward and backward passes.
 *
 * C (m, n) = A (m, k) . B (k, n), with A's and B's elements rounded to
 * bfloat16 (8 significant bits, round to nearest even) and the products
 * summed in float. bf16_gemm: A, the weights, is packed once (bf16_pack);
 * B, the activations, is rounded as the GEMM reads it. bf16_gemm_nt: both
 * operands run along k in memory (a weight gradient, dout . col^T), rounded
 * to rows of pairs first (bf16_rows). On a CPU with AVX512-BF16
 * each instruction does 32 such multiply-adds in pairs along k, which makes
 * the GEMM 2-3x faster than OpenBLAS's sgemm. Debian's OpenBLAS is built
 * without its sbgemm, hence this file. */
#ifndef DISTILLD_BF16_H
#define DISTILLD_BF16_H

#include <stddef.h>
#include <stdint.h>

/* 1 when this build has the AVX512-BF16 kernel; 0 when it runs the portable
 * loop (the same products, far slower), so callers refuse bf16 work. */
int bf16_fast(void);

/* x rounded to bfloat16 and back to float: the value the GEMM multiplies. */
float bf16_round(float x);

/* uint32s of a packed (m, k) matrix: panels of 8 rows, each row's elements
 * in pairs along k (odd k and partial panels padded with zeros). Element
 * (i, j) is a[i * row_stride + j * col_stride]: (lda, 1) packs a row-major
 * matrix, (1, lda) the transpose of one. */
size_t bf16_packed_size(int m, int k);
void bf16_pack(uint32_t *packed, const float *a, int m, int k, size_t row_stride, size_t col_stride);

/* C = A . B, or C += A . B when accumulate; B (k, n) has row stride ldb,
 * C (m, n) row stride ldc. Single-threaded: callers split the work. */
void bf16_gemm(float *c, int ldc, const uint32_t *a_packed, const float *b, int ldb, int m, int n, int k,
               int accumulate);

/* dst[p] = (x[2p], x[2p+1]) rounded, low half first: (k + 1) / 2 uint32s of a row of k floats */
void bf16_rows(uint32_t *dst, const float *x, int k);

/* C (m, n) += A (m, k) . B (n, k)^T, with A and B as rows of `pairs` = (k + 1) / 2
 * uint32s (bf16_rows), row strides lda and ldb in uint32s. Single-threaded. */
void bf16_gemm_nt(float *c, size_t ldc, const uint32_t *a, size_t lda, const uint32_t *b, size_t ldb, int m, int n,
                  int pairs);

#endif
