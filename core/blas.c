/* blas.c - choose OpenBLAS's kernels for this CPU. See blas.h. */
#include "blas.h"

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
