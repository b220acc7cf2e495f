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

/* "OpenBLAS 0.3.21 core SkylakeX (chosen by distilld)" or similar. */
const char *blas_describe(void);

#endif
