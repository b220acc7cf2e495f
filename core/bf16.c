/* bf16.c - the bfloat16 GEMM of bf16.h.
 *
 * Blocking: B is taken a strip of BF16_NR columns and BF16_KC pairs of rows
 * at a time, rounded and interleaved into a 24 KiB buffer that stays in L1;
 * every 8-row panel of packed A (from L2) runs the micro-kernel over it. The
 * micro-kernel holds an 8 x 32 block of C in 16 registers and, per pair of
 * k, broadcasts each row's pair of A and multiplies it with two vectors of
 * B pairs (vdpbf16ps: c += a0*b0 + a1*b1 in 16 lanes). */
#include "bf16.h"

#include <string.h>

#ifdef __AVX512BF16__
#include <immintrin.h>
#endif

#define BF16_MR 8   /* rows of C per micro-kernel call */
#define BF16_NR 32  /* columns of C per strip: two vectors */
#define BF16_KC 192 /* pairs of k per strip */
#define BF16_NT_R 4 /* bf16_gemm_nt: rows of C per block */
#define BF16_NT_C 4 /* bf16_gemm_nt: columns of C per block */
#define BF16_NT_KC 512 /* bf16_gemm_nt: pairs per pass over C (2 KiB of each row) */
#define BF16_NT_NB 128 /* bf16_gemm_nt: rows of B per pass, 256 KiB, kept in L2 while A's rows go by */

/* Where bf16_gemm reads B: row r at b + r * ldb, or (rows) at rows[r], its
 * columns in runs of `width` placed `stride` apart (bf16_gemm_rows). */
typedef struct {
    const float *b;
    int ldb;
    const float *const *rows;
    int width, stride;
} BSource;

/* B's row r from column j on: 16 contiguous floats at most (a strip's half) */
static const float *b_at(const BSource *src, int r, int j) {
    if (!src->rows) return src->b + (size_t)r * src->ldb + j;
    return src->rows[r] + (size_t)(j / src->width) * src->stride + j % src->width;
}

static uint32_t bf16_bits(float x) {
    uint32_t u;
    memcpy(&u, &x, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u >> 16) | 0x40u; /* NaN stays a (quiet) NaN */
    return (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
}

float bf16_round(float x) {
    uint32_t u = bf16_bits(x) << 16;
    float r;
    memcpy(&r, &u, sizeof r);
    return r;
}

size_t bf16_packed_size(int m, int k) {
    return (size_t)(m + BF16_MR - 1) / BF16_MR * BF16_MR * ((k + 1) / 2);
}

/* parallel over the blocks of rows when there are enough to pay for the threads */
#define PACK_PARALLEL_FLOATS 65536

void bf16_pack(uint32_t *packed, const float *a, int m, int k, size_t row_stride, size_t col_stride) {
    const int pairs = (k + 1) / 2;
#pragma omp parallel for schedule(static) if ((size_t)m * k >= PACK_PARALLEL_FLOATS)
    for (int i = 0; i < m; i += BF16_MR) {
        uint32_t *out = packed + (size_t)i * pairs;
        for (int p = 0; p < pairs; p++)
            for (int r = 0; r < BF16_MR; r++) {
                const float *lo = a + (size_t)(i + r) * row_stride + (size_t)2 * p * col_stride;
                const int in = i + r < m;
                const float x0 = in ? lo[0] : 0.0f, x1 = in && 2 * p + 1 < k ? lo[col_stride] : 0.0f;
                *out++ = bf16_bits(x0) | bf16_bits(x1) << 16;
            }
    }
}

#ifdef __AVX512BF16__
int bf16_fast(void) {
    return 1;
}

static __mmask16 lanes(int count) {
    return count >= 16 ? 0xffff : count <= 0 ? 0 : (__mmask16)((1u << count) - 1);
}

/* rows k0, k0+1, ... (pairs of them) of B's columns [j, j + cols) into
 * strip: per pair, 32 (lo, hi) */
static void pack_strip(uint32_t *strip, const BSource *b, int j, int k0, int k, int pairs, int cols) {
    /* cvtne2ps gives row 2p's 16 values in the low half and row 2p+1's in the high half; interleave them */
    const __m512i zip = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    const __mmask16 m0 = lanes(cols), m1 = lanes(cols - 16);
    for (int p = 0; p < pairs; p++, strip += BF16_NR) {
        const int r = k0 + 2 * p;
        const int has_hi = r + 1 < k;
        for (int h = 0; h < 2; h++) {
            const __mmask16 mask = h ? m1 : m0;
            const __m512 x0 = mask ? _mm512_maskz_loadu_ps(mask, b_at(b, r, j + 16 * h)) : _mm512_setzero_ps();
            const __m512 x1 = has_hi && mask ? _mm512_maskz_loadu_ps(mask, b_at(b, r + 1, j + 16 * h))
                                             : _mm512_setzero_ps();
            const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(x1, x0);
            _mm512_store_si512(strip + 16 * h, _mm512_permutexvar_epi16(zip, both));
        }
    }
}

static void micro_kernel(float *c, int ldc, const uint32_t *a, const uint32_t *strip, int pairs, int rows, int cols,
                         int accumulate) {
    __m512 acc[BF16_MR][2];
    for (int r = 0; r < BF16_MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; p++, a += BF16_MR, strip += BF16_NR) {
        const __m512bh b0 = (__m512bh)_mm512_load_si512(strip), b1 = (__m512bh)_mm512_load_si512(strip + 16);
        for (int r = 0; r < BF16_MR; r++) {
            const __m512bh ar = (__m512bh)_mm512_set1_epi32((int)a[r]);
            acc[r][0] = _mm512_dpbf16_ps(acc[r][0], ar, b0);
            acc[r][1] = _mm512_dpbf16_ps(acc[r][1], ar, b1);
        }
    }
    const __mmask16 m0 = lanes(cols), m1 = lanes(cols - 16);
    for (int r = 0; r < rows; r++) {
        float *cr = c + (size_t)r * ldc;
        if (accumulate) {
            acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_maskz_loadu_ps(m0, cr));
            acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_maskz_loadu_ps(m1, cr + 16));
        }
        _mm512_mask_storeu_ps(cr, m0, acc[r][0]);
        _mm512_mask_storeu_ps(cr + 16, m1, acc[r][1]);
    }
}

/* dst[p] = (x[2p], x[2p+1]) rounded, low half first: (k + 1) / 2 uint32s */
static void bf16_rows(uint32_t *dst, const float *src, int k) {
    int i = 0;
    for (; i + 32 <= k; i += 32, dst += 16) {
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
        _mm512_storeu_si512(dst, both);
    }
    if (i < k) {
        const __m512 x0 = _mm512_maskz_loadu_ps(lanes(k - i), src + i);
        const __m512 x1 = _mm512_maskz_loadu_ps(lanes(k - i - 16), src + i + 16);
        _mm512_mask_storeu_epi32(dst, lanes((k - i + 1) / 2), (__m512i)_mm512_cvtne2ps_pbh(x1, x0));
    }
}

/* a BF16_NT_R x BF16_NT_C block of C += over `pairs` pairs: one vector of
 * partial sums per element, 16 pairs at a time, summed across at the end */
static void dot_block(float *c, size_t ldc, const uint32_t *a, size_t lda, const uint32_t *b, size_t ldb,
                      int rows, int cols, int pairs) {
    const uint32_t *ar[BF16_NT_R], *bc[BF16_NT_C];
    for (int r = 0; r < BF16_NT_R; r++) ar[r] = a + (size_t)(r < rows ? r : rows - 1) * lda;
    for (int j = 0; j < BF16_NT_C; j++) bc[j] = b + (size_t)(j < cols ? j : cols - 1) * ldb;
    __m512 acc[BF16_NT_R][BF16_NT_C];
    for (int r = 0; r < BF16_NT_R; r++)
        for (int j = 0; j < BF16_NT_C; j++) acc[r][j] = _mm512_setzero_ps();
    for (int p = 0; p < pairs; p += 16) {
        const __mmask16 mask = lanes(pairs - p);
        __m512bh av[BF16_NT_R], bv[BF16_NT_C];
        for (int r = 0; r < BF16_NT_R; r++) av[r] = (__m512bh)_mm512_maskz_loadu_epi32(mask, ar[r] + p);
        for (int j = 0; j < BF16_NT_C; j++) bv[j] = (__m512bh)_mm512_maskz_loadu_epi32(mask, bc[j] + p);
        for (int r = 0; r < BF16_NT_R; r++)
            for (int j = 0; j < BF16_NT_C; j++) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], av[r], bv[j]);
    }
    /* the 16 vectors' sums into one vector, element 4r + j: pairs of vectors
     * added within 128-bit lanes, then the four lanes added across */
    __m512 x[8], y[4];
    for (int i = 0; i < 8; i++) {
        const __m512 u = acc[i / 2][i % 2 * 2], v = acc[i / 2][i % 2 * 2 + 1];
        x[i] = _mm512_add_ps(_mm512_unpacklo_ps(u, v), _mm512_unpackhi_ps(u, v));
    }
    for (int i = 0; i < 4; i++) {
        const __m512d u = _mm512_castps_pd(x[2 * i]), v = _mm512_castps_pd(x[2 * i + 1]);
        y[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(u, v)), _mm512_castpd_ps(_mm512_unpackhi_pd(u, v)));
    }
    const __m512 z0 = _mm512_add_ps(_mm512_shuffle_f32x4(y[0], y[1], 0x44), _mm512_shuffle_f32x4(y[0], y[1], 0xee));
    const __m512 z1 = _mm512_add_ps(_mm512_shuffle_f32x4(y[2], y[3], 0x44), _mm512_shuffle_f32x4(y[2], y[3], 0xee));
    const __m512 sum = _mm512_add_ps(_mm512_shuffle_f32x4(z0, z1, 0x88), _mm512_shuffle_f32x4(z0, z1, 0xdd));
    _Alignas(64) float s[16];
    _mm512_store_ps(s, sum);
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) c[(size_t)r * ldc + j] += s[4 * r + j];
}

#else /* portable: the same blocking and packing, plain loops */
int bf16_fast(void) {
    return 0;
}

static float half(uint32_t pair, int high) {
    uint32_t u = high ? pair & 0xffff0000u : pair << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static void pack_strip(uint32_t *strip, const BSource *b, int j0, int k0, int k, int pairs, int cols) {
    for (int p = 0; p < pairs; p++, strip += BF16_NR) {
        const int r = k0 + 2 * p;
        for (int j = 0; j < BF16_NR; j++) {
            const float lo = j < cols ? *b_at(b, r, j0 + j) : 0.0f;
            const float hi = j < cols && r + 1 < k ? *b_at(b, r + 1, j0 + j) : 0.0f;
            strip[j] = bf16_bits(lo) | bf16_bits(hi) << 16;
        }
    }
}

static void micro_kernel(float *c, int ldc, const uint32_t *a, const uint32_t *strip, int pairs, int rows, int cols,
                         int accumulate) {
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            float acc = 0.0f;
            for (int p = 0; p < pairs; p++) {
                const uint32_t ap = a[p * BF16_MR + r], bp = strip[p * BF16_NR + j];
                acc += half(ap, 0) * half(bp, 0) + half(ap, 1) * half(bp, 1);
            }
            c[(size_t)r * ldc + j] = accumulate ? c[(size_t)r * ldc + j] + acc : acc;
        }
}

static void bf16_rows(uint32_t *dst, const float *src, int k) {
    for (int i = 0; i < k; i += 2) dst[i / 2] = bf16_bits(src[i]) | (i + 1 < k ? bf16_bits(src[i + 1]) << 16 : 0u);
}

static void dot_block(float *c, size_t ldc, const uint32_t *a, size_t lda, const uint32_t *b, size_t ldb,
                      int rows, int cols, int pairs) {
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++) {
            float acc = 0.0f;
            for (int p = 0; p < pairs; p++) {
                const uint32_t ap = a[r * lda + p], bp = b[j * ldb + p];
                acc += half(ap, 0) * half(bp, 0) + half(ap, 1) * half(bp, 1);
            }
            c[(size_t)r * ldc + j] += acc;
        }
}
#endif

static void gemm(float *c, int ldc, const uint32_t *a_packed, const BSource *b, int m, int n, int k, int accumulate) {
    _Alignas(64) uint32_t strip[BF16_KC * BF16_NR];
    const int pairs = (k + 1) / 2;
    for (int j = 0; j < n; j += BF16_NR) {
        const int cols = n - j < BF16_NR ? n - j : BF16_NR;
        for (int p0 = 0; p0 < pairs; p0 += BF16_KC) {
            const int np = pairs - p0 < BF16_KC ? pairs - p0 : BF16_KC;
            pack_strip(strip, b, j, 2 * p0, k, np, cols);
            for (int i = 0; i < m; i += BF16_MR)
                micro_kernel(c + (size_t)i * ldc + j, ldc, a_packed + (size_t)i * pairs + (size_t)p0 * BF16_MR, strip,
                             np, m - i < BF16_MR ? m - i : BF16_MR, cols, accumulate || p0 > 0);
        }
    }
}

void bf16_gemm(float *c, int ldc, const uint32_t *a_packed, const float *b, int ldb, int m, int n, int k,
               int accumulate) {
    const BSource src = {.b = b, .ldb = ldb};
    gemm(c, ldc, a_packed, &src, m, n, k, accumulate);
}

void bf16_gemm_rows(float *c, int ldc, const uint32_t *a_packed, const float *const *rows, int width, int stride,
                    int m, int n, int k, int accumulate) {
    const BSource src = {.rows = rows, .width = width, .stride = stride};
    gemm(c, ldc, a_packed, &src, m, n, k, accumulate);
}

size_t bf16_nt_rows_size(int m, int n, int k, int segments) {
    return ((size_t)m + n) * segments * ((k + 1) / 2);
}

void bf16_gemm_nt(float *c, int ldc, Bf16Runs a_float, int m, Bf16Runs b_float, int n, int k, int segments,
                  uint32_t *rows) {
    const int run = (k + 1) / 2, pairs = segments * run;
    for (int i = 0; i < m + n; i++) {
        const Bf16Runs x = i < m ? a_float : b_float;
        const float *row = x.p + (size_t)(i < m ? i : i - m) * x.row;
        for (int g = 0; g < segments; g++) bf16_rows(rows + (size_t)i * pairs + (size_t)g * run, row + g * x.seg, k);
    }
    const uint32_t *a = rows, *b = rows + (size_t)m * pairs;
    const size_t lda = pairs, ldb = pairs;
    for (int p0 = 0; p0 < pairs; p0 += BF16_NT_KC) {
        const int np = pairs - p0 < BF16_NT_KC ? pairs - p0 : BF16_NT_KC;
        for (int j0 = 0; j0 < n; j0 += BF16_NT_NB) {
            const int j1 = n - j0 < BF16_NT_NB ? n : j0 + BF16_NT_NB;
            for (int i = 0; i < m; i += BF16_NT_R)
                for (int j = j0; j < j1; j += BF16_NT_C)
                    dot_block(c + (size_t)i * ldc + j, (size_t)ldc, a + (size_t)i * lda + p0, lda,
                              b + (size_t)j * ldb + p0, ldb, m - i < BF16_NT_R ? m - i : BF16_NT_R,
                              j1 - j < BF16_NT_C ? j1 - j : BF16_NT_C, np);
        }
    }
}
