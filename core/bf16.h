/* bf16.h - bfloat16 GEMMs for convolutions' forward and backward passes.
 *
 * C (m, n) = A (m, k) . B (k, n), with A's and B's elements rounded to
 * bfloat16 (8 significant bits, round to nearest even) and the products
 * summed in float. bf16_gemm: A, the weights, is packed once (bf16_pack);
 * B, the activations, is rounded as the GEMM reads it. bf16_gemm_nt: both
 * operands run along k in memory (a weight gradient, dout . col^T). On a
 * CPU with AVX512-BF16 each instruction does 32 such multiply-adds in pairs
 * along k, which makes the GEMMs 2-3x faster than OpenBLAS's sgemm.
 * Debian's OpenBLAS is built without its sbgemm, hence this file. */
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

/* bf16_gemm with B read through a pointer per row: element (r, j) is
 * rows[r][(j / width) * stride + j % width], the columns in runs of `width`
 * (a multiple of 16) placed `stride` floats apart. A convolution's im2col
 * without writing it: rows[r] is where kernel tap r reads the (padded) input
 * for the first output pixel, a run is a row of output pixels. */
void bf16_gemm_rows(float *c, int ldc, const uint32_t *a_packed, const float *const *rows, int width, int stride,
                    int m, int n, int k, int accumulate);

/* C (m, n) += A (m, K) . B (n, K)^T where both run along K in memory: K is
 * `segments` runs of k floats each, run g of row i at p + i * row + g * seg
 * (one run: a row-major matrix; several: the images of a batch, whose sum
 * is a weight gradient). A and B are first rounded into `rows`
 * (bf16_nt_rows_size uint32s), each run as pairs along k, and C's elements
 * are then dot products of rows. C has row stride ldc. Single-threaded. */
typedef struct {
    const float *p;
    size_t row, seg;
} Bf16Runs;
size_t bf16_nt_rows_size(int m, int n, int k, int segments);
void bf16_gemm_nt(float *c, int ldc, Bf16Runs a, int m, Bf16Runs b, int n, int k, int segments, uint32_t *rows);

#endif
