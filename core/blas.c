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
