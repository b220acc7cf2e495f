/* blas.h - make OpenBLAS run the fastest kernels this CPU has.
 *
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) detects some AVX-512 CPUs as
 * "Prescott" and runs SSE3 kernels 3-6x slower than its SkylakeX ones. It
 * reads OPENBLAS_CORETYPE only when the library loads, so the fix is to
 * re-exec the program with the variable set, before any other work. A value
 * the user set is never overridden. */
#ifndef DISTILLD_BLAS_H
#define DISTILLD_BLAS_H

/* The OpenBLAS core to ask for, or NULL to keep `current`: SkylakeX on
 * AVX-512 CPUs, Haswell on AVX2+FMA ones, when `current` is a weaker core. */
const char *blas_preferred_core(int has_avx512, int has_avx2_fma, const char *current);

/* Call first in main(): re-execs with OPENBLAS_CORETYPE when it helps (once;
 * never when the user set it). Returns only if no re-exec happened. */
void blas_ensure_fast_core(char **argv);

/* Makes OpenBLAS's packing buffers ready for `threads` threads calling sgemm
 * at once: one product per thread, big enough to write every page of its
 * buffer that a later product packs into or reads ahead into. Without it,
 * small products ran up to 2.5x slower (see blas.c). Call where the thread
 * count is set, before the work; it takes ~50 ms per thread. */
void blas_warm_buffers(int threads);

/* C (m, n) = op(A) . op(B) + beta C, row-major, alpha 1, through
 * cblas_sgemm. OpenBLAS's AVX-512 cores multiply a product of at most 1e6
 * multiply-adds straight from its operands ("small matrix" kernels); a
 * larger one is first copied into packed buffers, which for a few dozen
 * channels costs as much as the multiplying. So a larger product whose
 * pieces would qualify goes in pieces: blocks of C's columns, or, when op(B)
 * is B^T, blocks of the inner dimension, summed into C, and of C's rows when
 * C is narrow and the inner dimension long. Other cores take it whole. */
void blas_sgemm(int trans_a, int trans_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                float beta, float *c, int ldc);

/* "OpenBLAS 0.3.21 core SkylakeX (chosen by distilld)" or similar. */
const char *blas_describe(void);

#endif
