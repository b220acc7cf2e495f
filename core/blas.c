/* blas.c - choose OpenBLAS's kernels for this CPU. See blas.h. */
#include "blas.h"

#include <cblas.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *openblas_get_corename(void);
char *openblas_get_config(void);

#define REEXEC_MARK "DISTILLD_BLAS_CORE_CHOSEN"

/* 3: AVX-512 kernels, 2: AVX2 kernels, 1: anything older */
static int core_tier(const char *name) {
    static const char *avx512[] = {"skylakex", "cooperlake", "sapphirerapids", NULL};
    static const char *avx2[] = {"haswell", "zen", "skylake", "excavator", NULL};
    if (!name) return 0;
    for (int i = 0; avx512[i]; i++)
        if (strcasecmp(name, avx512[i]) == 0) return 3;
    for (int i = 0; avx2[i]; i++)
        if (strcasecmp(name, avx2[i]) == 0) return 2;
    return 1;
}

const char *blas_preferred_core(int has_avx512, int has_avx2_fma, const char *current) {
    int have = core_tier(current);
    if (has_avx512 && have < 3) return "SkylakeX";
    if (has_avx2_fma && have < 2) return "Haswell";
    return NULL;
}

void blas_ensure_fast_core(char **argv) {
    if (getenv("OPENBLAS_CORETYPE")) return; /* the user's choice stands */
    if (getenv(REEXEC_MARK)) return;         /* already re-executed once */
    __builtin_cpu_init();
    int avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    int avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const char *want = blas_preferred_core(avx512, avx2, openblas_get_corename());
    if (!want) return;
    setenv("OPENBLAS_CORETYPE", want, 1);
    setenv(REEXEC_MARK, openblas_get_corename(), 1);
    execv("/proc/self/exe", argv);
    /* exec failed: carry on with the slower kernels rather than not at all */
    unsetenv("OPENBLAS_CORETYPE");
    fprintf(stderr, "distilld: warning: could not re-exec to select OpenBLAS core %s\n", want);
}

/* OpenBLAS packs both operands of a product into a buffer it maps once per
 * caller and writes only as far as a product needs. Until something has
 * written the pages past that point, small products run far below the
 * kernel's speed, and stay there however often they repeat: measured with
 * 0.3.21's Zen kernels, one thread, 64 products each, in GFLOP/s before and
 * after a single 512x512x512 product: 32x196x288 13.5 -> 33, 64x256x576
 * 11 -> 33, 128x64x1152 18 -> 33 (16x784x144 29 -> 30). No page faults
 * happen in the slow runs, so the likely cost is the kernel's read-ahead
 * into pages that are not mapped, a page-table walk each time. A larger
 * product than that, on every thread at once (so that each takes its own
 * buffer), writes them all. */
void blas_warm_buffers(int threads) {
    enum { N = 1024, K = 512 };
#pragma omp parallel num_threads(threads)
    {
        float *a = calloc((size_t)N * K, sizeof(float)), *b = calloc((size_t)K * N, sizeof(float));
        float *c = malloc((size_t)N * N * sizeof(float));
#pragma omp barrier
        if (a && b && c) cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, N, K, 1.0f, a, K, b, N, 0.0f, c, N);
        free(a), free(b), free(c);
    }
}

/* OpenBLAS 0.3.21's rule for its small-matrix kernels (row-major terms):
 * at most SMALL_MACS multiply-adds; not A^T . B^T; A . B^T only when C has
 * at most SMALL_NT_C elements and k >= 32. Measured, one thread, per
 * product in GFLOP/s, whole -> in pieces: 16x4096x147 63 -> 100 (columns by
 * 256), 32x1024x64 73 -> 104 (by 256), 16x1024x64 A^T.B 62 -> 95 (by 256),
 * 64x16x1024 A.B^T 57 -> 96 (inner by 512), 147x16x256 A.B^T 72 -> 100
 * (rows by 74: C at most SMALL_NT_C; that lost on C wider than
 * SMALL_NT_NARROW or an inner dimension shorter than SMALL_NT_LONG). Pieces
 * narrower than SMALL_MIN_PIECE, or wider than the MAX, gained nothing. */
#define SMALL_MACS 1e6
#define SMALL_NT_C 1200
#define SMALL_MIN_PIECE 32
#define SMALL_MAX_COLUMNS 256
#define SMALL_MAX_INNER 512
#define SMALL_NT_NARROW 32
#define SMALL_NT_LONG 256

/* 1 when the core has the small-matrix kernels: its AVX-512 ones */
static int small_kernels(void) {
    static _Atomic int known = -1;
    if (known < 0) known = core_tier(openblas_get_corename()) == 3;
    return known;
}

/* the widest piece, a power of two from SMALL_MIN_PIECE up to max, of at most
 * SMALL_MACS multiply-adds; 0 if even the narrowest has more */
static int piece(double macs_per_column, int max) {
    int p = SMALL_MIN_PIECE;
    if (macs_per_column * p > SMALL_MACS) return 0;
    while (2 * p <= max && macs_per_column * 2 * p <= SMALL_MACS) p *= 2;
    return p;
}

void blas_sgemm(int trans_a, int trans_b, int m, int n, int k, const float *a, int lda, const float *b, int ldb,
                float beta, float *c, int ldc) {
    const enum CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
    const int small = small_kernels(), large = (double)m * n * k > SMALL_MACS;
    if (small && large && !trans_b) { /* column blocks of C and B */
        const int w = piece((double)m * k, SMALL_MAX_COLUMNS);
        if (w && w < n) {
            for (int j = 0; j < n; j += w)
                cblas_sgemm(CblasRowMajor, ta, tb, m, n - j < w ? n - j : w, k, 1.0f, a, lda, b + j, ldb, beta, c + j,
                            ldc);
            return;
        }
    }
    if (small && trans_b && !trans_a) {
        /* blocks of the inner dimension, summed; and of C's rows when C is
         * narrow and the inner dimension long */
        const int narrow = m * n > SMALL_NT_C && n <= SMALL_NT_NARROW && k >= SMALL_NT_LONG;
        const int rows = narrow ? SMALL_NT_C / n : m, w = piece((double)rows * n, SMALL_MAX_INNER);
        if (w && rows * n <= SMALL_NT_C && (narrow || (large && w < k))) {
            for (int i = 0; i < m; i += rows)
                for (int p = 0; p < k; p += w)
                    cblas_sgemm(CblasRowMajor, ta, tb, m - i < rows ? m - i : rows, n, k - p < w ? k - p : w, 1.0f,
                                a + (size_t)i * lda + p, lda, b + p, ldb, p ? 1.0f : beta, c + (size_t)i * ldc,
                                ldc);
            return;
        }
    }
    cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

const char *blas_describe(void) {
    static char text[256];
    const char *detected = getenv(REEXEC_MARK);
    const char *user = getenv("OPENBLAS_CORETYPE");
    if (detected)
        snprintf(text, sizeof text, "OpenBLAS core %s (chosen by distilld; OpenBLAS detected %s)", openblas_get_corename(),
                 detected);
    else if (user)
        snprintf(text, sizeof text, "OpenBLAS core %s (OPENBLAS_CORETYPE=%s)", openblas_get_corename(), user);
    else
        snprintf(text, sizeof text, "OpenBLAS core %s (detected)", openblas_get_corename());
    return text;
}
