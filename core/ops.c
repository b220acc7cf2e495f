/* ops.c - forward/backward pairs of every layer in a BiT ResNetV2.
 *
 * Convolution is im2col + one sgemm per image (blas_sgemm): the per-image GEMMs
 * (N = Ho*Wo) stay in cache, which on this hardware beats one whole-batch
 * GEMM; only images of a few pixels go several to a GEMM (conv_group). A 1x1
 * stride-1 convolution needs no im2col: the image is already the column
 * matrix. The backward pass of a stride-1 convolution takes both
 * gradients from one im2col, of dout (conv_input_grad_is_conv). A 3x3
 * stride-1 pad-1 convolution, the workhorse of ResNet units, skips im2col
 * altogether: it runs as Winograd F(4x4, 3x3), 36 GEMMs with 1/4 of the
 * FLOPs, or in bfloat16 F(2x2, 3x3), 16 GEMMs with 4/9 of them
 * (conv_winograd_tile). The GEMMs may run in bfloat16 instead (bf16.c)
 * on the same paths: a teacher's forward (conv2d_forward_bf16), a training
 * model's forward and backward (conv2d_backward with bf16).
 * Statistics (GroupNorm, weight standardization) accumulate in double so
 * that large groups do not lose precision. */
#include "ops.h"

#include "bf16.h"
#include "blas.h"

#include <float.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* ------------------------------------------------------------------ conv */

int conv_shape_init(ConvShape *s) {
    s->out_h = (s->in_h + 2 * s->pad - s->kernel_h) / s->stride + 1;
    s->out_w = (s->in_w + 2 * s->pad - s->kernel_w) / s->stride + 1;
    if (s->in_h + 2 * s->pad < s->kernel_h || s->in_w + 2 * s->pad < s->kernel_w) return -1;
    return s->out_h > 0 && s->out_w > 0 ? 0 : -1;
}

static int conv_is_pointwise(const ConvShape *s) {
    return s->kernel_h == 1 && s->kernel_w == 1 && s->stride == 1 && s->pad == 0;
}

static int conv_is_3x3_stride2(const ConvShape *s) {
    return s->kernel_h == 3 && s->kernel_w == 3 && s->stride == 2 && s->pad == 1;
}

/* a ResNet unit's strided projection shortcut */
static int conv_is_1x1_stride2(const ConvShape *s) {
    return s->kernel_h == 1 && s->kernel_w == 1 && s->stride == 2 && s->pad == 0;
}

/* The input gradient of a stride-1 convolution is itself a stride-1
 * convolution: of dout, with the kernel flipped and its two channel axes
 * swapped, padded kernel-1-pad. Its GEMM, Cin x (H*W) x (Cout*KH*KW), has the
 * forward's long inner dimension where W^T . dout has only Cout, it needs no
 * col2im scatter, and its im2col of dout also gives dW, so the input's im2col
 * is not rebuilt. Measured per 128 images, one thread, backward: 3x3 16->16
 * at 28x28 58 -> 37 ms, 64->64 at 16x16 178 -> 148 ms; but 256->256 at 4x4
 * 196 -> 227 ms, where the im2col of dout is mostly border. (Those 3x3
 * pad-1 convolutions now run as Winograd, below; this path keeps the rest.) */
int conv_input_grad_is_conv(const ConvShape *s) {
    return !conv_is_pointwise(s) && !conv_is_winograd(s) && s->stride == 1 && s->kernel_h == s->kernel_w &&
           s->pad < s->kernel_h && s->out_channels < 256;
}

static ConvShape conv_input_grad_shape(const ConvShape *s) {
    ConvShape t = {.batch = s->batch, .in_channels = s->out_channels, .in_h = s->out_h, .in_w = s->out_w,
                   .out_channels = s->in_channels, .kernel_h = s->kernel_h, .kernel_w = s->kernel_w,
                   .stride = 1, .pad = s->kernel_h - 1 - s->pad};
    conv_shape_init(&t); /* out_h, out_w = in_h, in_w */
    return t;
}

/* im2col copies rows in blocks of COPY_BLOCK floats, rounding each row's
 * length up: a row's tail is garbage that the next row overwrites, since
 * rows are written in order, and the last row's lands in COPY_BLOCK floats
 * of slack after the column matrix. Reads round up the same way, into the
 * slack after the phase planes. */
#define COPY_BLOCK 8
/* one unaligned vector load or store */
typedef float Block __attribute__((vector_size(COPY_BLOCK * sizeof(float)), aligned(sizeof(float)), may_alias));
typedef int BlockMask __attribute__((vector_size(COPY_BLOCK * sizeof(int))));
#define EVENS(a, b) __builtin_shuffle(a, b, (BlockMask){0, 2, 4, 6, 8, 10, 12, 14})
#define ODDS(a, b) __builtin_shuffle(a, b, (BlockMask){1, 3, 5, 7, 9, 11, 13, 15})
/* EVENS(a, b) with b loaded one float early */
#define LAST_EVENS(a, b) __builtin_shuffle(a, b, (BlockMask){0, 2, 4, 6, 9, 11, 13, 15})
#define ZIP_LO(a, b) __builtin_shuffle(a, b, (BlockMask){0, 8, 1, 9, 2, 10, 3, 11})
#define ZIP_HI(a, b) __builtin_shuffle(a, b, (BlockMask){4, 12, 5, 13, 6, 14, 7, 15})
#define LOAD(p) (*(const Block *)(p))
#define STORE(p, v) (*(Block *)(p) = (v))

/* v's first n lanes, the rest zero: a block that runs past a row's end.
 * (Zeroing the float past the row with a store of its own makes the vector
 * loads that later read it wait on that store.) */
static inline Block first_lanes(Block v, int n) {
    const BlockMask lane = {0, 1, 2, 3, 4, 5, 6, 7};
    return (Block)((BlockMask)v & (lane < n));
}

#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-distribute-patterns")
/* dst[0..n) = src[0..n), in line: the transforms copy one image row at a
 * time, where a call to memcpy costs more than the copy (as for im2col).
 * In blocks, the last one overlapping the one before: rows of 28 or 14
 * floats copied by gcc's own loop took 16 at once and the rest one by one,
 * and the copy was half of F(4x4)'s input transform on 16 channels. */
static inline void copy_row(float *restrict dst, const float *restrict src, int n) {
    if (n < COPY_BLOCK) {
        for (int i = 0; i < n; i++) dst[i] = src[i];
        return;
    }
    for (int i = 0; i + COPY_BLOCK < n; i += COPY_BLOCK) STORE(dst + i, LOAD(src + i));
    STORE(dst + n - COPY_BLOCK, LOAD(src + n - COPY_BLOCK));
}

/* dst[0..n) = or, when accumulate, += src[0..n): a transform's row of output */
static inline void put_row(float *restrict dst, const float *restrict src, int n, int accumulate) {
    if (!accumulate) {
        copy_row(dst, src, n);
        return;
    }
    int i = 0;
    for (; i + COPY_BLOCK <= n; i += COPY_BLOCK) STORE(dst + i, LOAD(dst + i) + LOAD(src + i));
    for (; i < n; i++) dst[i] += src[i];
}
#pragma GCC pop_options

/* The zero-bordered input plane im2col reads from, split by column into
 * `stride` phase planes (phase p holds the padded columns p, p+stride, ...),
 * so that every row of the column matrix is a contiguous copy: tap kw of
 * output column ow reads padded column ow*stride+kw, which is column
 * ow + kw/stride of phase kw%stride. */
typedef struct {
    int rows, cols; /* of each phase plane */
    size_t plane;   /* floats of each */
} Phases;

static Phases conv_phases(const ConvShape *s) {
    Phases p = {.rows = s->in_h + 2 * s->pad};
    p.cols = (s->in_w + 2 * s->pad + s->stride - 1) / s->stride;
    p.plane = (size_t)p.rows * p.cols;
    return p;
}

/* Floats of the phase planes and their slack, for im2col. */
static size_t conv_padded_plane(const ConvShape *s) {
    return (size_t)s->stride * conv_phases(s).plane + COPY_BLOCK;
}

/* Winograd.
 *
 * A 3x3 stride-1 pad-1 convolution computes each m x m block of output
 * pixels (a tile) from the (m+2) x (m+2) input patch around it. With the
 * transforms of Lavin and Gray ("Fast Algorithms for Convolutional Neural
 * Networks", 2016)
 *   out_tile = A^T [ (G w G^T) . (B^T patch B) ] A
 * where . multiplies element by element. For each of the (m+2)^2 elements
 * xi the sum over input channels is a GEMM: M_xi (Cout, tiles) = U_xi (Cout,
 * Cin) . V_xi (Cin, tiles), so a forward pass is an input transform, the
 * GEMMs and an output transform. The backward pass is the exact gradient of
 * that computation: dM_xi = A dout_tile A^T, then dU_xi += dM_xi . V_xi^T
 * (dW = G^T dU G) and dV_xi = U_xi^T . dM_xi (din += B dV B^T, patches
 * overlapping by two pixels).
 *
 * Float convolutions run F(4x4, 3x3): 36 GEMMs of 1/4 of the direct FLOPs.
 * Its transforms take coefficients up to 8 and fractions of 1/6 and 1/24,
 * which cost a few float roundings but would cost bfloat16 GEMM operands
 * about 2.5 % of the output (measured against 0.3 % for a direct bf16
 * convolution): bf16 convolutions run F(2x2, 3x3) instead, 16 GEMMs of 4/9
 * of the FLOPs, whose transforms use only 0, +-1 and +-1/2 (0.4 %). A bf16
 * model runs those only on images 4 pixels wide; its other Winograd convs
 * stay float, whose F(4x4, 3x3) is as fast or faster (conv_bf16_faster).
 *
 * Tile (i, j) reads padded rows m*i..m*i+m+1 and padded columns m*j..m*j+m+1
 * (the zero border is padded row and column 0). Tiles are numbered u = i*tw
 * + j within an image, images side by side (conv_group), so each xi's matrix
 * row for a channel is count*tiles floats. The transforms run on whole rows
 * of tiles as Block vectors, and like im2col they round lengths up to
 * COPY_BLOCK and write in order, into slack at the end. */
#define WINO_MIN_CHANNELS 8
/* F(4x4, 3x3) transforms rows of tiles eight at a time: an image of one
 * tile a row (4 pixels wide) would use an eighth of each vector, and ran
 * slower than F(2x2, 3x3) (128 -> 128 channels at 4x4, forward and
 * backward, 14.9 against 14.4 ms per 128 images on one thread). */
#define WINO4_MIN_WIDTH 4

int conv_is_winograd(const ConvShape *s) {
    return s->kernel_h == 3 && s->kernel_w == 3 && s->stride == 1 && s->pad == 1 &&
           s->in_channels >= WINO_MIN_CHANNELS && s->out_channels >= WINO_MIN_CHANNELS;
}

int conv_winograd_tile(const ConvShape *s, int bf16) {
    return !conv_is_winograd(s) ? 0 : bf16 || s->out_w <= WINO4_MIN_WIDTH ? 2 : 4;
}

/* Float F(4x4, 3x3) against bf16 F(2x2, 3x3), one thread, µs per image
 * forward / backward (the models' 3x3 convs, 16 images a call): 16 channels
 * at 28x28 22.2 / 42.5 against 27.3 / 55.9; 32 at 32x32 82.8 / 178.1
 * against 94.4 / 225.4; 32 at 14x14 and 16x16, 64 at 7x7, 8x8 and 16x16,
 * 128 at 8x8 within 2-15 % either way. At 4x4 both are F(2x2, 3x3) and
 * bf16's forward is 1.6-2.2x faster (docs/PERFORMANCE.md). */
int conv_bf16_faster(const ConvShape *s) {
    return conv_winograd_tile(s, 0) != 4;
}

typedef struct {
    int m, mats;       /* tile side, and the (m + 2)^2 matrices */
    int th, tw, tiles; /* tiles per image: th rows of tw */
    int row;           /* floats of a padded row buffer, rounded up, with slack */
    size_t plane;      /* floats of one (th + 1) x tw plane of tile rows, with slack */
} Tiles;

static Tiles wino_tiles(const ConvShape *s, int bf16) {
    const int m = conv_winograd_tile(s, bf16);
    Tiles t = {.m = m, .mats = (m + 2) * (m + 2), .th = (s->out_h + m - 1) / m, .tw = (s->out_w + m - 1) / m};
    t.tiles = t.th * t.tw;
    const int tw_up = (t.tw + COPY_BLOCK - 1) / COPY_BLOCK * COPY_BLOCK;
    t.row = m * tw_up + (m == 2 ? 2 : 5) * COPY_BLOCK;
    t.plane = (size_t)(t.th + 1) * t.tw + COPY_BLOCK;
    return t;
}

/* Images per forward GEMM: one, unless an image has fewer than
 * GROUP_COLUMNS output pixels (Winograd: tiles). A GEMM of one image's 4x4
 * outputs packs the whole kernel for 16 columns of work; side by side, up
 * to GROUP_IMAGES images share that packing (WINO4_GROUP_IMAGES for
 * F(4x4, 3x3), whose images have a quarter of the tiles). Measured per 128
 * images, one thread, forward: 3x3 128->128 at 4x4 8.5 -> 7.4 ms, 1x1
 * 512->128 at 4x4 3.9 -> 3.4 ms; at 7x7 no change, and a larger
 * GROUP_COLUMNS (groups at 14x14) was slower. */
#define GROUP_COLUMNS 256
#define GROUP_IMAGES 16
#define WINO4_GROUP_IMAGES 64

int conv_group(const ConvShape *s, int threads, int bf16) {
    const int tile = conv_winograd_tile(s, bf16);
    const int n = tile ? wino_tiles(s, bf16).tiles : s->out_h * s->out_w;
    const int most = tile == 4 ? WINO4_GROUP_IMAGES : GROUP_IMAGES;
    const int share = (s->batch + threads - 1) / threads; /* every thread gets a group */
    int g = (GROUP_COLUMNS + n - 1) / n;
    if (g > most) g = most;
    return g < share ? g : share > 0 ? share : 1;
}

/* Floats between the matrices of `rows` channels, of the larger of a
 * forward's and a backward's group of images (in bf16 the backward's is
 * conv_bf16_dw_group): a multiple of 16 that is not a multiple of 32, so
 * that the streams of a transform do not land in the same cache sets, and
 * at least COPY_BLOCK of slack. */
static size_t wino_stride(const ConvShape *s, int rows, int bf16) {
    const int forward = conv_group(s, 1, bf16), backward = bf16 ? conv_bf16_dw_group(s) : forward;
    size_t n = (size_t)rows * (forward > backward ? forward : backward) * wino_tiles(s, bf16).tiles + COPY_BLOCK;
    n = (n + 15) / 16 * 16;
    return n / 16 % 2 ? n : n + 16;
}

/* Work floats of the transforms. F(2x2, 3x3): eight tile-row planes, then
 * the rows of a zero-bordered input plane (2 th + 2), or two rows, or a row
 * and, per input row, four rows of tiles between zeros (half a row each):
 * at most 4 th + 4 rows. F(4x4, 3x3): 24 planes, then 4 th + 2 rows, or
 * four, or a row and, per input row, six rows of tiles between zeros (zs
 * floats each, wino4_input_grad). */
static size_t wino4_zs(const Tiles *t) {
    return (size_t)(t->tw + COPY_BLOCK - 1) / COPY_BLOCK * COPY_BLOCK + 2 * COPY_BLOCK;
}

static size_t wino_work(const ConvShape *s, int bf16) {
    const Tiles t = wino_tiles(s, bf16);
    if (t.m == 2) return 8 * t.plane + (size_t)(4 * t.th + 4) * t.row + COPY_BLOCK;
    const size_t grad = t.row + 6 * (size_t)s->in_h * wino4_zs(&t), rows = (size_t)(4 * t.th + 2) * t.row;
    return 24 * t.plane + (grad > rows ? grad : rows) + COPY_BLOCK;
}

/* A bf16 convolution whose GEMM packs B straight from the phase planes of
 * all its input channels (bf16_gemm_rows), never writing its im2col: the
 * stems, whose im2col is kernel_h * kernel_w / stride^2 times their input.
 * Few taps (K), and output rows a multiple of 16 wide (a run per row). */
#define PLANE_ROWS 256
static int conv_gemm_reads_planes(const ConvShape *s) {
    return !conv_is_pointwise(s) && !conv_is_winograd(s) && s->out_w % 16 == 0 &&
           s->in_channels * s->kernel_h * s->kernel_w <= PLANE_ROWS;
}

/* A float convolution whose im2col of one image would not stay in L2 (the
 * 128-px stems: 147 x 4096 floats, 2.4 MB) builds it a band of output rows
 * at a time, about BAND_COLUMNS pixels, from the phase planes of all its
 * channels, and each band goes through its GEMM while it is in cache: the
 * forward's and dW's (an input gradient, which the stem does not need, is
 * taken whole). Measured
 * on the bit128 student's stem, 3 -> 16 channels, one thread, per 128 images:
 * forward 39 -> 31 ms, dW 46 -> 34 ms (with blas_sgemm's blocks of rows).
 * Returns the rows of a band, or 0. */
#define BAND_MIN_FLOATS (256 * 1024)
#define BAND_COLUMNS 256
static int conv_band_rows(const ConvShape *s) {
    const size_t k = (size_t)s->in_channels * s->kernel_h * s->kernel_w;
    if (conv_is_pointwise(s) || conv_is_winograd(s) || k > PLANE_ROWS ||
        k * s->out_h * s->out_w < BAND_MIN_FLOATS)
        return 0;
    const int rows = BAND_COLUMNS / s->out_w;
    return rows < 1 ? 1 : rows < s->out_h ? rows : 0;
}

/* Per thread: im2col of one image, or of a group of images side by side in
 * the forward pass; the column gradient, or the im2col of dout when the input
 * gradient is a convolution, or a group's output before it is scattered to
 * its images, or a group's column gradient and its dout side by side; a
 * private dW when several threads share the batch, when dW comes from the
 * im2col of dout (then as (Cout, KH*KW reversed, Cin)) or is summed
 * transposed (conv_dw_transposed), put in order when the partials are summed;
 * and the phase planes, one set per image of a group. Each column matrix has
 * COPY_BLOCK floats of slack. */
typedef struct {
    size_t col, dcol, dw, padded, rows, per_thread;
    int group; /* bf16, not Winograd: conv_bf16_dw_group */
} ConvScratch;

/* A bf16 backward sums a group of images' dW in one GEMM (bf16_gemm_nt),
 * about this many output pixels: each of its dot products ends in a sum
 * across a vector, which small images would pay for every few products.
 * A Winograd conv's (F(2x2, 3x3), on images 4 pixels wide) sums dU, 16
 * GEMMs of about WINO_BF16_DW_COLUMNS tiles: 64 images, where the forward
 * groups 16 (conv_group). Measured on one thread, µs per image backward:
 * 128 -> 128 channels 62 -> 54, 256 -> 256 235 -> 185; 128 images a GEMM
 * were no faster than 64, and need twice the scratch. */
#define BF16_DW_COLUMNS 1024
#define WINO_BF16_DW_COLUMNS 256

int conv_bf16_dw_group(const ConvShape *s) {
    const int tile = conv_winograd_tile(s, 1);
    const int n = tile ? wino_tiles(s, 1).tiles : s->out_h * s->out_w;
    const int g = ((tile ? WINO_BF16_DW_COLUMNS : BF16_DW_COLUMNS) + n - 1) / n;
    return g < s->batch ? g : s->batch > 0 ? s->batch : 1;
}

/* A float backward with more columns of dW (Cin*KH*KW) than rows (Cout)
 * sums its transpose, dW^T (k, m) += col (k, n) . dout^T (n, m): sgemm runs
 * A . B^T about twice as fast with the longer side as rows (one thread,
 * GFLOP/s: the stem's 16x147x4096 29 -> 59, 32x288x256 72 -> 93). The
 * private dW holds it, put in order when the partials are summed. */
int conv_dw_transposed(const ConvShape *s) {
    return !conv_input_grad_is_conv(s) && s->in_channels * s->kernel_h * s->kernel_w > s->out_channels;
}

static ConvScratch conv_scratch_layout(const ConvShape *s, int threads, int bf16) {
    ConvScratch l = {0};
    if (conv_is_winograd(s)) { /* V, M and dU, and the transforms' work: room for F(4x4) and F(2x2) alike */
        const int m = s->out_channels, c = s->in_channels;
        for (int v = 0; v < 2; v++) {
            const size_t mats = wino_tiles(s, v).mats, work = wino_work(s, v);
            const size_t col = mats * wino_stride(s, c, v), dcol = mats * wino_stride(s, m, v);
            if (col > l.col) l.col = col;
            if (dcol > l.dcol) l.dcol = dcol;
            if (mats * m * c > l.dw) l.dw = mats * m * c;
            if (work > l.padded) l.padded = work;
        }
        if (bf16) l.rows = bf16_nt_rows_size(m, c, conv_bf16_dw_group(s) * wino_tiles(s, 1).tiles, 1);
        l.per_thread = l.col + l.dcol + l.dw + l.padded + l.rows;
        return l;
    }
    const size_t kk = (size_t)s->kernel_h * s->kernel_w, n = (size_t)s->out_h * s->out_w;
    const int group = conv_group(s, 1, 0); /* the largest, whatever the threads */
    if (!conv_is_pointwise(s)) {
        l.col = s->in_channels * kk * n + COPY_BLOCK;
        l.dcol = l.col;
        l.padded = conv_padded_plane(s);
    }
    if (group > 1) {
        l.col = s->in_channels * kk * n * group + COPY_BLOCK;
        l.padded *= group;
    }
    if (conv_input_grad_is_conv(s)) {
        const ConvShape t = conv_input_grad_shape(s);
        l.dcol = s->out_channels * kk * s->in_h * s->in_w + COPY_BLOCK;
        if (conv_padded_plane(&t) > l.padded) l.padded = conv_padded_plane(&t);
    }
    if (group > 1 && (s->in_channels * kk + s->out_channels) * n * group + COPY_BLOCK > l.dcol)
        l.dcol = (s->in_channels * kk + s->out_channels) * n * group + COPY_BLOCK;
    if ((conv_gemm_reads_planes(s) || conv_band_rows(s)) && s->in_channels * conv_padded_plane(s) > l.padded)
        /* every channel's planes */
        l.padded = s->in_channels * conv_padded_plane(s);
    if (conv_is_3x3_stride2(s) || conv_is_1x1_stride2(s)) { /* col2im's row */
        const size_t row = 2 * (size_t)((s->out_w + COPY_BLOCK - 1) / COPY_BLOCK * COPY_BLOCK) + COPY_BLOCK;
        if (row > l.padded) l.padded = row;
    }
    if (threads > 1 || conv_input_grad_is_conv(s) || conv_dw_transposed(s))
        l.dw = s->out_channels * s->in_channels * kk;
    if (bf16) { /* the rows of bf16_gemm_nt, for a group's dW or (conv_input_grad_is_conv) an image's */
        l.group = conv_bf16_dw_group(s);
        l.rows = bf16_nt_rows_size(s->out_channels, s->in_channels * kk, n, l.group);
        if (!conv_is_pointwise(s)) { /* the group's im2col */
            const size_t cols = s->in_channels * kk * n * l.group + COPY_BLOCK;
            if (cols > l.col) l.col = cols;
            if (conv_padded_plane(s) * l.group > l.padded) l.padded = conv_padded_plane(s) * l.group;
        }
        const size_t grad_rows = bf16_nt_rows_size(s->out_channels * kk, s->in_channels, s->in_h * s->in_w, 1);
        if (conv_input_grad_is_conv(s) && grad_rows > l.rows) l.rows = grad_rows;
    }
    l.per_thread = l.col + l.dcol + l.dw + l.padded + l.rows;
    return l;
}

/* The kernel the input gradient's GEMMs multiply: Winograd's U, or the
 * flipped, transposed kernel of conv_input_grad_is_conv, or in bf16 W^T
 * packed (bf16_pack) for a GEMM that takes it as A. */
static size_t grad_kernel_size(const ConvShape *s, int bf16) {
    const int m = s->out_channels, c = s->in_channels, kk = s->kernel_h * s->kernel_w;
    if (conv_is_winograd(s)) { /* F(4x4)'s 36 U, or F(2x2)'s 16 and in bf16 their U^T packed */
        const size_t u2 = (size_t)16 * m * c + (bf16 ? 16 * bf16_packed_size(c, m) : 0);
        return u2 > (size_t)36 * m * c ? u2 : (size_t)36 * m * c;
    }
    if (conv_input_grad_is_conv(s)) return (size_t)m * c * kk + (bf16 ? bf16_packed_size(c, m * kk) : 0);
    return bf16 ? bf16_packed_size(c * kk, m) : 0;
}

/* after the threads' blocks: the input gradient's kernel, shared */
size_t conv_scratch_size(const ConvShape *s, int bf16) {
    int threads = omp_get_max_threads();
    return (size_t)threads * conv_scratch_layout(s, threads, bf16).per_thread + grad_kernel_size(s, bf16);
}

/* Output columns [lo, hi) whose input column ow*stride - pad + kw is inside the image. */
static void conv_valid_columns(const ConvShape *s, int kw, int *lo, int *hi) {
    int a = s->pad - kw, b = s->in_w + s->pad - kw;
    *lo = a <= 0 ? 0 : (a + s->stride - 1) / s->stride;
    *hi = b <= 0 ? 0 : (b + s->stride - 1) / s->stride;
    if (*hi > s->out_w) *hi = s->out_w;
    if (*lo > *hi) *lo = *hi;
}

/* The phases of the kernel's columns that a stride reads: a kernel narrower
 * than the stride reads only some of them (and only some rows). */
static int conv_phase_count(const ConvShape *s) { return s->kernel_w < s->stride ? s->kernel_w : s->stride; }

/* fill_phase_planes for stride 2 and rows shorter than two blocks (14 or 7
 * pixels; the vector loop of fill_phase_planes would not run): the plane's
 * rows copied first between zeros (a load right after a row's copy would
 * wait on its stores), then each phase row one block of evens, which past
 * the row's end holds zeros: the border, the next row's start (written
 * after it) or the slack. */
#define SHORT_PLANE_ROWS 16
static void fill_short_phase_planes(float *restrict mine, const float *plane, const ConvShape *s) {
    const int pad = s->pad, w = s->in_w;
    const Phases ph = conv_phases(s);
    _Alignas(32) float rows[SHORT_PLANE_ROWS][3 * COPY_BLOCK];
    for (int h = 0; h < s->in_h; h++) {
        const Block zero = {0};
        for (int i = 0; i < 3; i++) STORE(rows[h] + i * COPY_BLOCK, zero);
        copy_row(rows[h] + 1, plane + (size_t)h * w, w); /* input column x at 1 + x */
    }
    for (int p = 0; p < conv_phase_count(s); p++) {
        const int lo = p >= pad ? 0 : (pad - p + 1) / 2, off = p - pad; /* 2 lo + off is 0 or 1 */
        float *to = mine + (size_t)p * ph.plane + (size_t)pad * ph.cols;
        for (int h = 0, r = pad % 2; h < s->in_h; h++, to += ph.cols, r ^= 1) {
            if (r >= s->kernel_h) continue; /* padded row h + pad is read by no tap */
            const float *from = rows[h] + 1 + 2 * lo + off;
            STORE(to + lo, EVENS(LOAD(from), LOAD(from + COPY_BLOCK)));
        }
    }
}

/* One input plane into `mine`, inside a zero border and split into its
 * column phases (conv_phases): phase p's column j is input column
 * j * stride + p - pad. Only what the kernel reads is written (and zeros,
 * fill_short_phase_planes); the border must be zero already. */
static void fill_phase_planes(float *restrict mine, const float *plane, const ConvShape *s) {
    const int stride = s->stride, pad = s->pad, w = s->in_w;
    const Phases ph = conv_phases(s);
    if (stride == 1) {
        for (int h = 0; h < s->in_h; h++)
            memcpy(mine + (size_t)(h + pad) * ph.cols + pad, plane + (size_t)h * w, sizeof(float) * w);
        return;
    }
    if (stride == 2 && w < 2 * COPY_BLOCK && s->in_h <= SHORT_PLANE_ROWS) {
        fill_short_phase_planes(mine, plane, s);
        return;
    }
    for (int p = 0; p < conv_phase_count(s); p++) {
        const int lo = p >= pad ? 0 : (pad - p + stride - 1) / stride;
        const int last = w - 1 + pad - p, hi = last < 0 ? -1 : last / stride;
        float *to = mine + (size_t)p * ph.plane + (size_t)pad * ph.cols;
        for (int h = 0, r = pad % stride; h < s->in_h; h++, to += ph.cols, r = r + 1 == stride ? 0 : r + 1) {
            if (r >= s->kernel_h) continue; /* padded row h + pad is read by no tap */
            const float *src = plane + (size_t)h * w;
            const int off = p - pad; /* phase column j is input column j * stride + off */
            int j = lo;
            if (stride == 2) { /* the evens of two blocks, while their loads stay inside the row */
                for (; j + COPY_BLOCK - 1 <= hi && 2 * j + off + 2 * COPY_BLOCK <= w; j += COPY_BLOCK)
                    STORE(to + j, EVENS(LOAD(src + 2 * j + off), LOAD(src + 2 * j + off + COPY_BLOCK)));
                if (j <= hi && hi - lo + 1 >= COPY_BLOCK) {
                    /* the last block overlaps the one before; its second load, one float
                     * earlier, ends on the row's last column read (2 hi + off <= w - 1) */
                    j = hi - COPY_BLOCK + 1;
                    const float *from = src + 2 * j + off;
                    STORE(to + j, LAST_EVENS(LOAD(from), LOAD(from + COPY_BLOCK - 1)));
                    j = hi + 1;
                }
            }
            for (; j <= hi; j++) to[j] = src[j * stride + off];
        }
    }
}

/* Where kernel tap (kh, kw) reads the phase planes `mine` for output pixel (0, 0). */
static const float *phase_tap(const float *mine, const ConvShape *s, int kh, int kw) {
    const Phases ph = conv_phases(s);
    return mine + (size_t)(kw % s->stride) * ph.plane + (size_t)kh * ph.cols + kw / s->stride;
}

/* The phase planes of every channel of one image into `planes`, and in
 * rows[r] where tap r = (c, kh, kw) reads them: B of bf16_gemm_rows. */
static void plane_rows(const float **rows, float *planes, const float *img, const ConvShape *s) {
    const size_t size = conv_padded_plane(s), plane = (size_t)s->in_h * s->in_w;
    for (int c = 0; c < s->in_channels; c++) {
        float *mine = planes + c * size;
        memset(mine, 0, conv_phase_count(s) * conv_phases(s).plane * sizeof(float));
        fill_phase_planes(mine, img + c * plane, s);
        for (int kh = 0; kh < s->kernel_h; kh++)
            for (int kw = 0; kw < s->kernel_w; kw++) *rows++ = phase_tap(mine, s, kh, kw);
    }
}

/* col: (Cin*KH*KW, count*Ho*Wo) from `count` consecutive images (Cin, H, W),
 * side by side. Each plane is first copied inside a zero border into its
 * phase planes (`padded`, count * conv_padded_plane floats), then every row
 * of col is a run of contiguous copies, written in order (see COPY_BLOCK).
 * gcc would turn each row's block loop back into a call to memcpy, which
 * costs more than the copy for rows this short, hence the pragma. */
#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-distribute-patterns")
static void im2col(float *restrict col, const float *img, int count, const ConvShape *s, float *restrict padded) {
    const int ho = s->out_h, wo = s->out_w, stride = s->stride;
    const Phases ph = conv_phases(s);
    const size_t planes = conv_padded_plane(s), in_size = (size_t)s->in_channels * s->in_h * s->in_w;
    for (int g = 0; g < count; g++) memset(padded + g * planes, 0, conv_phase_count(s) * ph.plane * sizeof(float));
    float *dst = col;
    for (int c = 0; c < s->in_channels; c++) {
        for (int g = 0; g < count; g++)
            fill_phase_planes(padded + g * planes, img + g * in_size + (size_t)c * s->in_h * s->in_w, s);
        for (int kh = 0; kh < s->kernel_h; kh++)
            for (int kw = 0; kw < s->kernel_w; kw++)
                for (int g = 0; g < count; g++) {
                    const float *src = phase_tap(padded + g * planes, s, kh, kw);
                    for (int oh = 0; oh < ho; oh++, dst += wo) {
                        const float *from = src + (size_t)oh * stride * ph.cols;
                        for (int i = 0; i < wo; i += COPY_BLOCK) *(Block *)(dst + i) = *(const Block *)(from + i);
                    }
                }
    }
}

/* Output rows [oh0, oh1) of one image's im2col, (k, (oh1 - oh0) * Wo), from
 * the phase planes that plane_rows filled and pointed `rows` at. */
static void im2col_band(float *restrict col, const float *const *rows, const ConvShape *s, int oh0, int oh1) {
    const int wo = s->out_w;
    const size_t between = (size_t)s->stride * conv_phases(s).cols; /* floats between output rows in the planes */
    float *dst = col;
    for (int r = 0; r < s->in_channels * s->kernel_h * s->kernel_w; r++)
        for (int oh = oh0; oh < oh1; oh++, dst += wo) {
            const float *from = rows[r] + oh * between;
            for (int i = 0; i < wo; i += COPY_BLOCK) *(Block *)(dst + i) = *(const Block *)(from + i);
        }
}

#pragma GCC pop_options

/* col2im_add for a 3x3 stride-2 pad-1 kernel: per input row, the three
 * taps of a column row land interleaved, input column 2q from tap 1 of
 * output column q, 2q+1 from tap 2 of q and tap 0 of q+1; so a row is built
 * in `row` (2 * out_w rounded up, plus COPY_BLOCK) with whole vectors and
 * added to the image in one contiguous pass, where the general loop adds
 * one float at a stride of two. Reads round up into the next column row or
 * col's slack; tap 0 read past a row's end is masked off (first_lanes). */
static void col2im_add_3x3_stride2(float *img, const float *col, size_t ld, const ConvShape *s, float *restrict row) {
    const int ho = s->out_h, wo = s->out_w, w = s->in_w;
    for (int c = 0; c < s->in_channels; c++) {
        float *plane = img + (size_t)c * s->in_h * w;
        for (int kh = 0; kh < 3; kh++) {
            const float *taps = col + (size_t)(c * 3 + kh) * 3 * ld;
            for (int oh = 0; oh < ho; oh++) {
                const int ih = 2 * oh - 1 + kh;
                if (ih < 0 || ih >= s->in_h) continue;
                const float *t0 = taps + (size_t)oh * wo, *t1 = t0 + ld, *t2 = t1 + ld;
                for (int q = 0; q < wo; q += COPY_BLOCK) {
                    const Block tap0 = first_lanes(LOAD(t0 + q + 1), wo - 1 - q); /* none of column wo */
                    const Block even = LOAD(t1 + q), odd = LOAD(t2 + q) + tap0;
                    STORE(row + 2 * q, ZIP_LO(even, odd)), STORE(row + 2 * q + COPY_BLOCK, ZIP_HI(even, odd));
                }
                float *dst = plane + (size_t)ih * w;
                int x = 0;
                for (; x + COPY_BLOCK <= w; x += COPY_BLOCK) STORE(dst + x, LOAD(dst + x) + LOAD(row + x));
                for (; x < w; x++) dst[x] += row[x];
            }
        }
    }
}

/* img = (or, when accumulate, +=) col2im(col) for a 1x1 stride-2 pad-0
 * kernel: output pixel (oh, ow) is input pixel (2 oh, 2 ow), so an even
 * input row is a column row with zeros between, built in `row` with whole
 * vectors (as col2im_add_3x3_stride2), and an odd row gets nothing. Where
 * the general loop cleared the image and added one float at a stride of
 * two. Measured on one thread, bf16 backward, µs per image (median of 5):
 * 16 -> 32 channels at 28x28 14.1 -> 8.7, 32 -> 64 at 14x14 9.2 -> 7.2,
 * 64 -> 128 at 7x7 9.4 -> 7.6. */
static void col2im_1x1_stride2(float *img, const float *col, size_t ld, const ConvShape *s, int accumulate,
                               float *restrict row) {
    const int wo = s->out_w, w = s->in_w;
    const Block zero = {0};
    for (int c = 0; c < s->in_channels; c++)
        for (int ih = 0; ih < s->in_h; ih++) {
            float *dst = img + ((size_t)c * s->in_h + ih) * w;
            if (ih % 2) {
                if (!accumulate) memset(dst, 0, (size_t)w * sizeof(float));
                continue;
            }
            const float *src = col + (size_t)c * ld + (size_t)(ih / 2) * wo;
            for (int q = 0; q < wo; q += COPY_BLOCK) {
                const Block v = LOAD(src + q);
                STORE(row + 2 * q, ZIP_LO(v, zero)), STORE(row + 2 * q + COPY_BLOCK, ZIP_HI(v, zero));
            }
            put_row(dst, row, w, accumulate);
        }
}

/* img += col2im(col), col's rows ld floats apart */
static void col2im_add(float *img, const float *col, size_t ld, const ConvShape *s) {
    const int ho = s->out_h, wo = s->out_w, stride = s->stride;
    for (int c = 0; c < s->in_channels; c++) {
        float *plane = img + (size_t)c * s->in_h * s->in_w;
        for (int kh = 0; kh < s->kernel_h; kh++) {
            for (int kw = 0; kw < s->kernel_w; kw++) {
                const float *row = col + (((size_t)c * s->kernel_h + kh) * s->kernel_w + kw) * ld;
                int lo, hi;
                conv_valid_columns(s, kw, &lo, &hi);
                for (int oh = 0; oh < ho; oh++) {
                    int ih = oh * stride - s->pad + kh;
                    if (ih < 0 || ih >= s->in_h) continue;
                    const float *src = row + (size_t)oh * wo;
                    float *dst = plane + (size_t)ih * s->in_w - s->pad + kw;
                    for (int ow = lo; ow < hi; ow++) dst[ow * stride] += src[ow];
                }
            }
        }
    }
}

/* --------------------------------------------------- Winograd transforms */

/* The 3x3 kernels w[o][i .. i + 7] as nine rows of eight lanes, one row per tap. */
static void kernel_lanes(float lanes[9][COPY_BLOCK], const float *w, int o, int c, int i) {
    for (int l = 0; l < COPY_BLOCK; l++)
        for (int k = 0; k < 9; k++) lanes[k][l] = w[((size_t)o * c + i + l) * 9 + k];
}

/* F(2x2, 3x3)'s G applied to three values: G's rows (1, 0, 0),
 * (1, 1, 1)/2, (1, -1, 1)/2, (0, 0, 1) */
static inline void g_2(Block *u, Block g0, Block g1, Block g2) {
    u[0] = g0, u[1] = 0.5f * (g0 + g1 + g2), u[2] = 0.5f * (g0 - g1 + g2), u[3] = g2;
}

/* F(2x2, 3x3)'s U[xi] (m, c) = (G w G^T)[xi], for eight input channels at
 * a time as wino4_weights: each U row's eight floats stored at once (one at
 * a time, the 16 rows' stores 64 KB apart made it 4x slower) */
static void wino2_weights(float *U, const float *w, int m, int c) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < m; o++)
        for (int i0 = 0; i0 < c; i0 += COPY_BLOCK) {
            const int i = i0 + COPY_BLOCK <= c ? i0 : c - COPY_BLOCK;
            float lanes[9][COPY_BLOCK];
            kernel_lanes(lanes, w, o, c, i);
            Block t[3][4], u[4];
            for (int k = 0; k < 3; k++) g_2(t[k], LOAD(lanes[k]), LOAD(lanes[3 + k]), LOAD(lanes[6 + k]));
            for (int r = 0; r < 4; r++) {
                g_2(u, t[0][r], t[1][r], t[2][r]);
                for (int b = 0; b < 4; b++) STORE(U + ((size_t)(4 * r + b) * m + o) * c + i, u[b]);
            }
        }
}

/* The weight gradients' transforms take the (o, i) pairs [lo, hi) eight at
 * a time, the last eight overlapping the eight before (m * c >= 64): the
 * block from p0 starts at pair_block(p0, hi), its dU summed over `parts`
 * (sum_parts: d[x] for each of the `mats` matrices), and add_pairs adds
 * only its new pairs' nine kernel taps g to dw. */
static size_t pair_block(size_t p0, size_t hi) {
    return p0 + COPY_BLOCK <= hi || hi < COPY_BLOCK ? p0 : hi - COPY_BLOCK;
}

static void sum_parts(Block *d, int mats, const float *const *parts, int nparts, size_t mc, size_t p) {
    for (int x = 0; x < mats; x++) {
        d[x] = LOAD(parts[0] + x * mc + p);
        for (int u = 1; u < nparts; u++) d[x] += LOAD(parts[u] + x * mc + p);
    }
}

static void add_pairs(float *dw, float g[9][COPY_BLOCK], size_t p0, size_t p, size_t hi) {
    for (size_t l = p0 - p; l < COPY_BLOCK && p + l < hi; l++)
        for (int k = 0; k < 9; k++) dw[(p + l) * 9 + k] += g[k][l];
}

/* dw[o][i] += G^T dU[o][i] G for the (o, i) pairs [lo, hi), dU summed over
 * `parts`: eight pairs at a time, as wino4_weight_grad (one pair at a time,
 * its 16 loads 16 KB apart on 64 channels, it was a fifth of a bf16
 * backward pass of 64 channels at 7x7) */
static void wino2_weight_grad(float *dw, const float *const *parts, int nparts, int m, int c, size_t lo, size_t hi) {
    for (size_t p0 = lo; p0 < hi; p0 += COPY_BLOCK) {
        const size_t p = pair_block(p0, hi);
        Block d[16], t[3][4];
        sum_parts(d, 16, parts, nparts, (size_t)m * c, p);
        for (int k = 0; k < 4; k++) {
            t[0][k] = d[k] + 0.5f * (d[4 + k] + d[8 + k]);
            t[1][k] = 0.5f * (d[4 + k] - d[8 + k]);
            t[2][k] = 0.5f * (d[4 + k] + d[8 + k]) + d[12 + k];
        }
        float g[9][COPY_BLOCK];
        for (int r = 0; r < 3; r++) {
            STORE(g[3 * r], t[r][0] + 0.5f * (t[r][1] + t[r][2]));
            STORE(g[3 * r + 1], 0.5f * (t[r][1] - t[r][2]));
            STORE(g[3 * r + 2], 0.5f * (t[r][1] + t[r][2]) + t[r][3]);
        }
        add_pairs(dw, g, p0, p, hi);
    }
}

/* F(4x4, 3x3)'s G applied to three values: G's rows (1/4, 0, 0),
 * -(1, 1, 1)/6, -(1, -1, 1)/6, (1/24, 1/12, 1/6), (1/24, -1/12, 1/6), (0, 0, 1) */
static inline void g_4(Block *u, Block g0, Block g1, Block g2) {
    const float sixth = 1.0f / 6.0f;
    const Block even = g0 + g2, p = (1.0f / 24.0f) * g0 + sixth * g2, q = (1.0f / 12.0f) * g1;
    u[0] = 0.25f * g0, u[1] = -sixth * (even + g1), u[2] = -sixth * (even - g1), u[3] = p + q, u[4] = p - q;
    u[5] = g2;
}

/* and G^T to six: the three sums dW takes from a row or column of dU */
static inline void gt_4(Block *e, const Block *d, int step) {
    const Block s12 = d[step] + d[2 * step], d12 = d[2 * step] - d[step];
    const Block s34 = d[3 * step] + d[4 * step], d34 = d[3 * step] - d[4 * step];
    e[0] = 0.25f * d[0] - (1.0f / 6.0f) * s12 + (1.0f / 24.0f) * s34;
    e[1] = (1.0f / 6.0f) * d12 + (1.0f / 12.0f) * d34;
    e[2] = (1.0f / 6.0f) * (s34 - s12) + d[5 * step];
}

/* F(4x4, 3x3)'s U[xi] (m, c) = (G w G^T)[xi], for eight input channels at
 * a time (the last eight overlapping the eight before: c >= 8) */
static void wino4_weights(float *U, const float *w, int m, int c) {
#pragma omp parallel for schedule(static)
    for (int o = 0; o < m; o++)
        for (int i0 = 0; i0 < c; i0 += COPY_BLOCK) {
            const int i = i0 + COPY_BLOCK <= c ? i0 : c - COPY_BLOCK;
            float lanes[9][COPY_BLOCK];
            kernel_lanes(lanes, w, o, c, i);
            Block t[3][6], u[6];
            for (int k = 0; k < 3; k++) g_4(t[k], LOAD(lanes[k]), LOAD(lanes[3 + k]), LOAD(lanes[6 + k]));
            for (int r = 0; r < 6; r++) {
                g_4(u, t[0][r], t[1][r], t[2][r]);
                for (int b = 0; b < 6; b++) STORE(U + ((size_t)(6 * r + b) * m + o) * c + i, u[b]);
            }
        }
}

/* dw[o][i] += G^T dU[o][i] G for the (o, i) pairs [lo, hi), dU summed over
 * `parts`: eight pairs at a time (pair_block) */
static void wino4_weight_grad(float *dw, const float *const *parts, int nparts, int m, int c, size_t lo, size_t hi) {
    for (size_t p0 = lo; p0 < hi; p0 += COPY_BLOCK) {
        const size_t p = pair_block(p0, hi);
        Block d[36], t[3][6], e[3];
        sum_parts(d, 36, parts, nparts, (size_t)m * c, p);
        for (int k = 0; k < 6; k++) { /* down column k */
            gt_4(e, d + k, 6);
            t[0][k] = e[0], t[1][k] = e[1], t[2][k] = e[2];
        }
        float g[9][COPY_BLOCK];
        for (int r = 0; r < 3; r++) { /* along row r */
            gt_4(e, t[r], 1);
            STORE(g[3 * r], e[0]), STORE(g[3 * r + 1], e[1]), STORE(g[3 * r + 2], e[2]);
        }
        add_pairs(dw, g, p0, p, hi);
    }
}

#pragma GCC push_options
#pragma GCC optimize("no-tree-loop-distribute-patterns")
/* V[xi] (c, count*tiles), xi's matrices `sv` floats apart, from `count`
 * images (c, h, w): each plane copied inside a zero border (all its rows
 * first: a row read right after it is copied would wait on the copy's
 * stores, the reads straddling them), then per padded row the column
 * transform (B^T along the row) into planes C[k][row parity], then per
 * plane pair the row transform. */
static void wino2_input(float *restrict V, size_t sv, const float *img, int count, const ConvShape *s,
                        float *restrict work) {
    const Tiles t = wino_tiles(s, 1);
    const int c = s->in_channels, h = s->in_h, w = s->in_w, tw = t.tw, n = count * t.tiles;
    float *C = work, *padded = work + 8 * t.plane; /* padded row r at r * t.row: 0, input row r - 1, 0... */
    memset(padded, 0, (size_t)(2 * t.th + 2) * t.row * sizeof(float));
    for (int ci = 0; ci < c; ci++)
        for (int g = 0; g < count; g++) {
            const float *plane = img + ((size_t)g * c + ci) * h * w;
            for (int y = 0; y < h; y++) copy_row(padded + (size_t)(y + 1) * t.row + 1, plane + (size_t)y * w, w);
            for (int r = 0; r < 2 * t.th + 2; r++) {
                float *dst = C + (size_t)(r & 1) * t.plane + (size_t)(r >> 1) * tw;
                const size_t k1 = 2 * t.plane, k2 = 4 * t.plane, k3 = 6 * t.plane;
                for (int j = 0; j < tw; j += COPY_BLOCK) {
                    const float *p = padded + (size_t)r * t.row + 2 * j;
                    const Block a = LOAD(p), b = LOAD(p + COPY_BLOCK), a2 = LOAD(p + 2), b2 = LOAD(p + 2 + COPY_BLOCK);
                    const Block e = EVENS(a, b), o = ODDS(a, b), e2 = EVENS(a2, b2), o2 = ODDS(a2, b2);
                    STORE(dst + j, e - e2), STORE(dst + k1 + j, o + e2);
                    STORE(dst + k2 + j, e2 - o), STORE(dst + k3 + j, o - o2);
                }
            }
            float *v = V + (size_t)ci * n + (size_t)g * t.tiles;
            for (int k = 0; k < 4; k++) {
                const float *ce = C + (size_t)2 * k * t.plane, *co = ce + t.plane;
                float *v0 = v + k * sv, *v1 = v0 + 4 * sv, *v2 = v1 + 4 * sv, *v3 = v2 + 4 * sv;
                for (int u = 0; u < t.tiles; u += COPY_BLOCK) {
                    const Block e0 = LOAD(ce + u), e1 = LOAD(ce + u + tw), o0 = LOAD(co + u), o1 = LOAD(co + u + tw);
                    STORE(v0 + u, e0 - e1), STORE(v1 + u, o0 + e1), STORE(v2 + u, e1 - o0), STORE(v3 + u, o0 - o1);
                }
            }
        }
}

/* out (count images of (m, h, w)) = or += A^T M A: the row sums into eight
 * tile planes, then per row of tiles the column sums, interleaved into a
 * row buffer and copied or added to the two output rows. */
static void wino2_output(float *out, const float *M, size_t sm, int count, const ConvShape *s, int accumulate,
                         float *restrict work) {
    const Tiles t = wino_tiles(s, 1);
    const int m = s->out_channels, h = s->out_h, w = s->out_w, tw = t.tw, n = count * t.tiles;
    float *S = work, *row = work + 8 * t.plane;
    for (int o = 0; o < m; o++)
        for (int g = 0; g < count; g++) {
            const float *q = M + (size_t)o * n + (size_t)g * t.tiles;
            for (int k = 0; k < 4; k++) { /* S[k] = rows 0+1+2, S[4+k] = rows 1-2-3 */
                const float *q0 = q + k * sm, *q1 = q0 + 4 * sm, *q2 = q1 + 4 * sm, *q3 = q2 + 4 * sm;
                float *s0 = S + k * t.plane, *s1 = S + (4 + k) * t.plane;
                for (int u = 0; u < t.tiles; u += COPY_BLOCK) {
                    const Block a1 = LOAD(q1 + u), a2 = LOAD(q2 + u);
                    STORE(s0 + u, LOAD(q0 + u) + a1 + a2), STORE(s1 + u, a1 - a2 - LOAD(q3 + u));
                }
            }
            float *plane = out + ((size_t)g * m + o) * h * w;
            for (int i = 0; i < t.th; i++)
                for (int half = 0; half < 2 && 2 * i + half < h; half++) {
                    const float *s0 = S + (size_t)4 * half * t.plane + (size_t)i * tw;
                    const float *s1 = s0 + t.plane, *s2 = s1 + t.plane, *s3 = s2 + t.plane;
                    for (int j = 0; j < tw; j += COPY_BLOCK) {
                        const Block b1 = LOAD(s1 + j), b2 = LOAD(s2 + j);
                        const Block even = LOAD(s0 + j) + b1 + b2, odd = b1 - b2 - LOAD(s3 + j);
                        STORE(row + 2 * j, ZIP_LO(even, odd)), STORE(row + 2 * j + COPY_BLOCK, ZIP_HI(even, odd));
                    }
                    put_row(plane + (size_t)(2 * i + half) * w, row, w, accumulate);
                }
        }
}

/* dM[xi] (m, count*tiles) = A dout_tile A^T, from `count` images of dout (m, h, w) */
static void wino2_output_grad(float *restrict D, size_t sm, const float *dout, int count, const ConvShape *s,
                              float *restrict work) {
    const Tiles t = wino_tiles(s, 1);
    const int m = s->out_channels, h = s->out_h, w = s->out_w, tw = t.tw, n = count * t.tiles;
    float *r0 = work + 8 * t.plane, *r1 = r0 + t.row;
    memset(r0, 0, 2 * t.row * sizeof(float));
    for (int o = 0; o < m; o++)
        for (int g = 0; g < count; g++) {
            const float *plane = dout + ((size_t)g * m + o) * h * w;
            float *d = D + (size_t)o * n + (size_t)g * t.tiles;
            for (int i = 0; i < t.th; i++) {
                copy_row(r0, plane + (size_t)2 * i * w, w);
                if (2 * i + 1 < h)
                    copy_row(r1, plane + (size_t)(2 * i + 1) * w, w);
                else
                    memset(r1, 0, w * sizeof(float));
                float *di = d + (size_t)i * tw;
                for (int j = 0; j < tw; j += COPY_BLOCK) {
                    const Block a0 = LOAD(r0 + 2 * j), b0 = LOAD(r0 + 2 * j + COPY_BLOCK);
                    const Block a1 = LOAD(r1 + 2 * j), b1 = LOAD(r1 + 2 * j + COPY_BLOCK);
                    const Block p0 = EVENS(a0, b0), q0 = ODDS(a0, b0), p1 = EVENS(a1, b1), q1 = ODDS(a1, b1);
                    const Block P[4] = {p0, p0 + p1, p0 - p1, -p1}, Q[4] = {q0, q0 + q1, q0 - q1, -q1};
                    for (int r = 0; r < 4; r++) {
                        float *x = di + (size_t)4 * r * sm + j;
                        STORE(x, P[r]), STORE(x + sm, P[r] + Q[r]), STORE(x + 2 * sm, P[r] - Q[r]);
                        STORE(x + 3 * sm, -Q[r]);
                    }
                }
            }
        }
}

/* din (count images of (c, h, w)) += (or, not accumulating, =) B dV B^T,
 * patches overlapping: per padded row, the row sums of the tile rows that
 * cover it (padded row 2i takes row 0 of tile row i and row 2 of tile row
 * i-1; 2i+1 rows 1 and 3) into four zero-bordered rows z[k], one per tile
 * column k; then, once all rows have theirs (reads right after the stores
 * would straddle them and wait), per row the column sums, interleaved into
 * a row buffer and added to (or copied into) the image. */
static void wino2_input_grad(float *din, const float *dV, size_t sv, int count, const ConvShape *s, int accumulate,
                             float *restrict work) {
    const Tiles t = wino_tiles(s, 1);
    const int c = s->in_channels, h = s->in_h, w = s->in_w, tw = t.tw, n = count * t.tiles;
    /* input row y's z[k] at z + (4 y + k) zs + 1, half a row buffer apart: z[k][-1] = z[k][tw] = 0 */
    const int zs = t.row / 2;
    float *row = work + 8 * t.plane, *z = row + t.row;
    memset(z, 0, (size_t)4 * h * zs * sizeof(float));
    for (int ci = 0; ci < c; ci++)
        for (int g = 0; g < count; g++) {
            const float *x = dV + (size_t)ci * n + (size_t)g * t.tiles;
            for (int y = 0; y < h; y++) {
                const int r = y + 1, i = r >> 1; /* padded row r is row r - 2i of tile row i */
                const size_t cur = (size_t)i * tw, prev = cur - tw;
                for (int k = 0; k < 4; k++) {
                    const float *x0 = x + k * sv, *x1 = x0 + 4 * sv, *x2 = x1 + 4 * sv, *x3 = x2 + 4 * sv;
                    float *zk = z + (size_t)(4 * y + k) * zs + 1;
                    for (int j = 0; j < tw; j += COPY_BLOCK) {
                        Block v = {0};
                        if (r & 1) { /* row 1 of tile row i: x1 - x2 + x3; row 3 of i-1: -x3 */
                            v = LOAD(x1 + cur + j) - LOAD(x2 + cur + j) + LOAD(x3 + cur + j);
                            if (i > 0) v = v - LOAD(x3 + prev + j);
                        } else { /* row 0 of tile row i: x0; row 2 of i-1: x1 + x2 - x0 */
                            if (i < t.th) v = LOAD(x0 + cur + j);
                            v = v + LOAD(x1 + prev + j) + LOAD(x2 + prev + j) - LOAD(x0 + prev + j);
                        }
                        STORE(zk + j, first_lanes(v, tw - j)); /* zk[tw] stays 0 */
                    }
                }
            }
            float *plane = din + ((size_t)g * c + ci) * h * w;
            for (int y = 0; y < h; y++) {
                /* input column 2q: col1 of tile q + col3 of tile q-1; 2q+1: col2 of tile q + col0 of tile q+1 */
                const float *z0 = z + (size_t)4 * y * zs + 1, *z1 = z0 + zs, *z2 = z1 + zs, *z3 = z2 + zs;
                for (int q = 0; q < tw; q += COPY_BLOCK) {
                    const Block a0 = LOAD(z0 + q), a1 = LOAD(z1 + q), a2 = LOAD(z2 + q);
                    const Block even = a1 - a2 + LOAD(z3 + q) - LOAD(z3 + q - 1);
                    const Block odd = LOAD(z0 + q + 1) - a0 + a1 + a2;
                    STORE(row + 2 * q, ZIP_LO(even, odd)), STORE(row + 2 * q + COPY_BLOCK, ZIP_HI(even, odd));
                }
                put_row(plane + (size_t)y * w, row, w, accumulate);
            }
        }
}

/* F(4x4, 3x3)'s transforms, on rows of eight tiles: B^T of six values
 * d0..d5 (BT_4), A^T of six (AT_4: four), A of four (A_4: six) and B of six
 * (B_4: six). B^T's rows (4, 0, -5, 0, 1, 0), (0, -4, -4, 1, 1, 0),
 * (0, 4, -4, -1, 1, 0), (0, -2, -1, 2, 1, 0), (0, 2, -1, -2, 1, 0),
 * (0, 4, 0, -5, 0, 1); A^T's (1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0),
 * (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1). */
static inline void bt_4(Block *t, Block d0, Block d1, Block d2, Block d3, Block d4, Block d5) {
    const Block a = d4 - d2, b = d3 - d1;
    t[0] = 4.0f * (d0 - d2) + a;
    t[1] = (d3 + d4) - 4.0f * (d1 + d2);
    t[2] = (d4 - d3) + 4.0f * (d1 - d2);
    t[3] = a + 2.0f * b;
    t[4] = a - 2.0f * b;
    t[5] = 4.0f * (d1 - d3) + (d5 - d3);
}

static inline void at_4(Block *y, Block m0, Block m1, Block m2, Block m3, Block m4, Block m5) {
    const Block s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    y[0] = m0 + s12 + s34;
    y[1] = d12 + 2.0f * d34;
    y[2] = s12 + 4.0f * s34;
    y[3] = d12 + 8.0f * d34 + m5;
}

static inline void a_4(Block *z, Block g0, Block g1, Block g2, Block g3) {
    const Block s02 = g0 + g2, s13 = g1 + g3, p = g0 + 4.0f * g2, q = 2.0f * (g1 + 4.0f * g3);
    z[0] = g0, z[1] = s02 + s13, z[2] = s02 - s13, z[3] = p + q, z[4] = p - q, z[5] = g3;
}

static inline void b_4(Block *w, const Block *v) {
    const Block d12 = v[1] - v[2], s12 = v[1] + v[2], d34 = v[3] - v[4], s34 = v[3] + v[4];
    w[0] = 4.0f * v[0];
    w[1] = 4.0f * (v[5] - d12) - 2.0f * d34;
    w[2] = -5.0f * v[0] - 4.0f * s12 - s34;
    w[3] = d12 + 2.0f * d34 - 5.0f * v[5];
    w[4] = v[0] + s12 + s34;
    w[5] = v[5];
}

/* 32 floats of a row as its four column phases: q[k][j] = p[4j + k] */
static inline void phases_4(Block q[4], const float *p) {
    const Block a = LOAD(p), b = LOAD(p + COPY_BLOCK), c = LOAD(p + 2 * COPY_BLOCK), d = LOAD(p + 3 * COPY_BLOCK);
    const Block e = EVENS(a, b), f = EVENS(c, d), o = ODDS(a, b), g = ODDS(c, d);
    q[0] = EVENS(e, f), q[1] = EVENS(o, g), q[2] = ODDS(e, f), q[3] = ODDS(o, g);
}

/* the inverse: p[4j + k] = q[k][j] */
static inline void interleave_4(float *p, Block q0, Block q1, Block q2, Block q3) {
    const Block x02 = ZIP_LO(q0, q2), x13 = ZIP_LO(q1, q3), y02 = ZIP_HI(q0, q2), y13 = ZIP_HI(q1, q3);
    STORE(p, ZIP_LO(x02, x13)), STORE(p + COPY_BLOCK, ZIP_HI(x02, x13));
    STORE(p + 2 * COPY_BLOCK, ZIP_LO(y02, y13)), STORE(p + 3 * COPY_BLOCK, ZIP_HI(y02, y13));
}

/* V[xi] (c, count*tiles), as wino2_input: each plane copied inside a zero
 * border, then per padded row r B^T along it (column k of tile j reads
 * padded column 4j + k: phases 0-3, and phases 0 and 1 one tile on) into
 * planes C[k][r % 4], then per plane B^T down the tiles' six rows. */
static void wino4_input(float *restrict V, size_t sv, const float *img, int count, const ConvShape *s,
                        float *restrict work) {
    const Tiles t = wino_tiles(s, 0);
    const int c = s->in_channels, h = s->in_h, w = s->in_w, tw = t.tw, n = count * t.tiles, rows = 4 * t.th + 2;
    float *C = work, *padded = work + 24 * t.plane; /* padded row r at r * t.row: 0, input row r - 1, 0... */
    memset(padded, 0, (size_t)rows * t.row * sizeof(float));
    for (int ci = 0; ci < c; ci++)
        for (int g = 0; g < count; g++) {
            const float *plane = img + ((size_t)g * c + ci) * h * w;
            for (int y = 0; y < h; y++) copy_row(padded + (size_t)(y + 1) * t.row + 1, plane + (size_t)y * w, w);
            for (int r = 0; r < rows; r++) {
                float *dst = C + (size_t)(r & 3) * t.plane + (size_t)(r >> 2) * tw;
                for (int j = 0; j < tw; j += COPY_BLOCK) {
                    const float *p = padded + (size_t)r * t.row + 4 * j;
                    Block q[4], x[6];
                    phases_4(q, p);
                    const Block next = LOAD(p + 4 * COPY_BLOCK); /* the next tiles' phases 0 and 1 */
                    const Block d4 = __builtin_shuffle(q[0], next, (BlockMask){1, 2, 3, 4, 5, 6, 7, 8});
                    const Block d5 = __builtin_shuffle(q[1], next, (BlockMask){1, 2, 3, 4, 5, 6, 7, 9});
                    bt_4(x, q[0], q[1], q[2], q[3], d4, d5);
                    for (int k = 0; k < 6; k++) STORE(dst + (size_t)4 * k * t.plane + j, x[k]);
                }
            }
            float *v = V + (size_t)ci * n + (size_t)g * t.tiles;
            for (int k = 0; k < 6; k++) {
                const float *ck = C + (size_t)4 * k * t.plane;
                for (int u = 0; u < t.tiles; u += COPY_BLOCK) {
                    const float *e = ck + u;
                    Block x[6];
                    bt_4(x, LOAD(e), LOAD(e + t.plane), LOAD(e + 2 * t.plane), LOAD(e + 3 * t.plane), LOAD(e + tw),
                         LOAD(e + t.plane + tw));
                    for (int b = 0; b < 6; b++) STORE(v + (6 * b + k) * sv + u, x[b]);
                }
            }
        }
}

/* out (count images of (m, h, w)) = or += A^T M A: down the tiles' rows
 * into 24 planes S[r][k], then per output row along it, the four columns
 * interleaved into a row buffer and copied or added to the image. */
static void wino4_output(float *out, const float *M, size_t sm, int count, const ConvShape *s, int accumulate,
                         float *restrict work) {
    const Tiles t = wino_tiles(s, 0);
    const int m = s->out_channels, h = s->out_h, w = s->out_w, tw = t.tw, n = count * t.tiles;
    float *S = work, *row = work + 24 * t.plane;
    for (int o = 0; o < m; o++)
        for (int g = 0; g < count; g++) {
            const float *q = M + (size_t)o * n + (size_t)g * t.tiles;
            for (int k = 0; k < 6; k++) {
                const float *qk = q + k * sm;
                for (int u = 0; u < t.tiles; u += COPY_BLOCK) {
                    Block y[4];
                    at_4(y, LOAD(qk + u), LOAD(qk + 6 * sm + u), LOAD(qk + 12 * sm + u), LOAD(qk + 18 * sm + u),
                         LOAD(qk + 24 * sm + u), LOAD(qk + 30 * sm + u));
                    for (int r = 0; r < 4; r++) STORE(S + (size_t)(6 * r + k) * t.plane + u, y[r]);
                }
            }
            float *plane = out + ((size_t)g * m + o) * h * w;
            for (int i = 0; i < t.th; i++)
                for (int r = 0; r < 4 && 4 * i + r < h; r++) {
                    const float *z = S + (size_t)6 * r * t.plane + (size_t)i * tw;
                    for (int j = 0; j < tw; j += COPY_BLOCK) {
                        Block y[4];
                        at_4(y, LOAD(z + j), LOAD(z + t.plane + j), LOAD(z + 2 * t.plane + j),
                             LOAD(z + 3 * t.plane + j), LOAD(z + 4 * t.plane + j), LOAD(z + 5 * t.plane + j));
                        interleave_4(row + 4 * j, y[0], y[1], y[2], y[3]);
                    }
                    put_row(plane + (size_t)(4 * i + r) * w, row, w, accumulate);
                }
        }
}

/* dM[xi] (m, count*tiles) = A dout_tile A^T, from `count` images of dout
 * (m, h, w): per row of tiles its four output rows (zero past the image),
 * split into column phases, A along them, then A down. */
static void wino4_output_grad(float *restrict D, size_t sm, const float *dout, int count, const ConvShape *s,
                              float *restrict work) {
    const Tiles t = wino_tiles(s, 0);
    const int m = s->out_channels, h = s->out_h, w = s->out_w, tw = t.tw, n = count * t.tiles;
    float *rows = work + 24 * t.plane;
    memset(rows, 0, 4 * (size_t)t.row * sizeof(float));
    for (int o = 0; o < m; o++)
        for (int g = 0; g < count; g++) {
            const float *plane = dout + ((size_t)g * m + o) * h * w;
            float *d = D + (size_t)o * n + (size_t)g * t.tiles;
            for (int i = 0; i < t.th; i++) {
                for (int r = 0; r < 4; r++)
                    if (4 * i + r < h)
                        copy_row(rows + (size_t)r * t.row, plane + (size_t)(4 * i + r) * w, w);
                    else
                        memset(rows + (size_t)r * t.row, 0, w * sizeof(float));
                float *di = d + (size_t)i * tw;
                for (int j = 0; j < tw; j += COPY_BLOCK) {
                    Block q[4][4], e[4][6];
                    for (int r = 0; r < 4; r++) {
                        phases_4(q[r], rows + (size_t)r * t.row + 4 * j);
                        a_4(e[r], q[r][0], q[r][1], q[r][2], q[r][3]);
                    }
                    for (int b = 0; b < 6; b++) {
                        Block z[6];
                        a_4(z, e[0][b], e[1][b], e[2][b], e[3][b]);
                        for (int a = 0; a < 6; a++) STORE(di + (6 * a + b) * sm + j, z[a]);
                    }
                }
            }
        }
}

/* din (count images of (c, h, w)) += (or =) B dV B^T, patches overlapping by two:
 * per row of tiles and tile column k, B down the tiles' six rows, into the
 * zero-bordered rows z[k] of the six padded rows they cover (the first two
 * added to what the row of tiles before left there); once all rows have
 * theirs, per row B along it (padded column 4j + k takes column k of tile
 * j, and for k < 2 column k + 4 of tile j - 1), interleaved into a row
 * buffer and added to (or copied into) the image. */
static void wino4_input_grad(float *din, const float *dV, size_t sv, int count, const ConvShape *s, int accumulate,
                             float *restrict work) {
    const Tiles t = wino_tiles(s, 0);
    const int c = s->in_channels, h = s->in_h, w = s->in_w, tw = t.tw, n = count * t.tiles;
    const size_t zs = wino4_zs(&t); /* padded row r's z[k] at z + (6 (r - 1) + k) zs + 1: z[k][-1] = z[k][tw] = 0 */
    float *row = work + 24 * t.plane, *z = row + t.row;
    memset(z, 0, (size_t)6 * h * zs * sizeof(float));
    for (int ci = 0; ci < c; ci++)
        for (int g = 0; g < count; g++) {
            const float *x = dV + (size_t)ci * n + (size_t)g * t.tiles;
            for (int i = 0; i < t.th; i++)
                for (int k = 0; k < 6; k++) {
                    const float *xk = x + k * sv + (size_t)i * tw;
                    for (int j = 0; j < tw; j += COPY_BLOCK) {
                        Block a[6], b[6];
                        for (int l = 0; l < 6; l++) a[l] = LOAD(xk + 6 * l * sv + j);
                        b_4(b, a);
                        for (int p = 0; p < 6; p++) {
                            const int y = 4 * i + p - 1;
                            if (y < 0 || y >= h) continue;
                            float *zr = z + (size_t)(6 * y + k) * zs + 1 + j;
                            STORE(zr, first_lanes(p < 2 && i > 0 ? (Block)(LOAD(zr) + b[p]) : b[p], tw - j));
                        }
                    }
                }
            float *plane = din + ((size_t)g * c + ci) * h * w;
            for (int y = 0; y < h; y++) {
                const float *zy = z + (size_t)6 * y * zs + 1;
                for (int j = 0; j <= tw; j += COPY_BLOCK) {
                    Block v[6], b[6], before[6];
                    for (int k = 0; k < 6; k++) v[k] = LOAD(zy + k * zs + j), before[k] = LOAD(zy + k * zs + j - 1);
                    b_4(b, v);
                    const Block p0 = b[0] + (before[0] + before[1] + before[2] + before[3] + before[4]);
                    interleave_4(row + 4 * j, p0, b[1] + before[5], b[2], b[3]);
                }
                put_row(plane + (size_t)y * w, row + 1, w, accumulate);
            }
        }
}
#pragma GCC pop_options

/* out (m, n) = w (m, k) . col (k, n), or += when accumulate: through sgemm,
 * or the bf16 GEMM when the weights come packed for it */
static void forward_gemm(float *out, int ldo, const float *w, const uint32_t *packed, const float *col, int m, int n,
                         int k, int accumulate) {
    if (packed)
        bf16_gemm(out, ldo, packed, col, n, m, n, k, accumulate);
    else
        blas_sgemm(0, 0, m, n, k, w, k, col, n, accumulate ? 1.0f : 0.0f, out, ldo);
}

/* U (Winograd's kernel transform) for F(tile x tile, 3x3) */
static void wino_weights(float *U, const float *w, const ConvShape *s, int tile) {
    if (tile == 4)
        wino4_weights(U, w, s->out_channels, s->in_channels);
    else
        wino2_weights(U, w, s->out_channels, s->in_channels);
}

/* floats of a Winograd conv's (tile+2)^2 matrices (Cout, Cin): U, or dU */
static size_t wino_matrices(const ConvShape *s, int bf16) {
    const int tile = conv_winograd_tile(s, bf16);
    return tile ? (size_t)(tile + 2) * (tile + 2) * s->out_channels * s->in_channels : 0;
}

size_t conv_winograd_u_size(const ConvShape *s) {
    return wino_matrices(s, 0);
}

void conv_winograd_u(float *u, const float *w, const ConvShape *s) {
    wino_weights(u, w, s, conv_winograd_tile(s, 0));
}

static void wino_forward(float *out, const float *in, const float *w, const float *u, const uint32_t *packed,
                         const ConvShape *s, int accumulate, float *scratch) {
    const int m = s->out_channels, c = s->in_channels, threads = omp_get_max_threads(), bf16 = packed != NULL;
    const size_t in_size = (size_t)c * s->in_h * s->in_w, out_size = (size_t)m * s->out_h * s->out_w;
    const ConvScratch layout = conv_scratch_layout(s, threads, 0);
    const Tiles t = wino_tiles(s, bf16);
    const size_t sv = wino_stride(s, c, bf16), sm = wino_stride(s, m, bf16), su = bf16 ? bf16_packed_size(m, c) : 0;
    const float *U = u;
    if (!bf16 && !u) {
        float *own = scratch + (size_t)threads * layout.per_thread;
        wino_weights(own, w, s, t.m);
        U = own;
    }
    const int group = conv_group(s, threads, bf16), groups = (s->batch + group - 1) / group;
#pragma omp parallel for schedule(static)
    for (int gi = 0; gi < groups; gi++) {
        float *V = scratch + (size_t)omp_get_thread_num() * layout.per_thread, *M = V + layout.col;
        float *work = M + layout.dcol + layout.dw;
        const int b0 = gi * group, count = s->batch - b0 < group ? s->batch - b0 : group, n = count * t.tiles;
        if (t.m == 2)
            wino2_input(V, sv, in + b0 * in_size, count, s, work);
        else
            wino4_input(V, sv, in + b0 * in_size, count, s, work);
        for (int x = 0; x < t.mats; x++)
            forward_gemm(M + x * sm, n, U + (size_t)x * m * c, bf16 ? packed + x * su : NULL, V + x * sv, m, n, c, 0);
        if (t.m == 2)
            wino2_output(out + b0 * out_size, M, sm, count, s, accumulate, work);
        else
            wino4_output(out + b0 * out_size, M, sm, count, s, accumulate, work);
    }
}

/* dw += G^T dU G for the (o, i) pairs [lo, hi), dU summed over `parts` */
static void wino_weight_grad(float *dw, const float *const *parts, int nparts, const ConvShape *s, int bf16,
                             size_t lo, size_t hi) {
    if (conv_winograd_tile(s, bf16) == 2)
        wino2_weight_grad(dw, parts, nparts, s->out_channels, s->in_channels, lo, hi);
    else
        wino4_weight_grad(dw, parts, nparts, s->out_channels, s->in_channels, lo, hi);
}

/* As conv2d_backward: a contiguous chunk of images per thread, dU summed
 * privately, the partials added in thread order, into dw or (du, not NULL)
 * into du, on one thread directly (conv2d_backward_du). F(4x4, 3x3) in
 * float, F(2x2, 3x3) in bf16. */
static void wino_backward(float *din, float *dw, float *du, const float *dout, const float *in, const float *w,
                          const float *u, const ConvShape *s, int accumulate, int bf16, float *scratch) {
    const int m = s->out_channels, c = s->in_channels, threads = omp_get_max_threads();
    const size_t in_size = (size_t)c * s->in_h * s->in_w, out_size = (size_t)m * s->out_h * s->out_w;
    const ConvScratch layout = conv_scratch_layout(s, threads, bf16);
    const Tiles t = wino_tiles(s, bf16);
    const size_t sv = wino_stride(s, c, bf16), sm = wino_stride(s, m, bf16), su = bf16_packed_size(c, m);
    const int used = threads < s->batch ? threads : s->batch;
    float *own = scratch + (size_t)threads * layout.per_thread;
    uint32_t *ut = (uint32_t *)(own + (size_t)16 * m * c); /* bf16: the 16 U^T, packed */
    const float *U = u && !bf16 ? u : own;
    if (din && U == own) wino_weights(own, w, s, t.m);
    if (din && bf16) {
#pragma omp parallel for schedule(static)
        for (int x = 0; x < 16; x++) bf16_pack(ut + x * su, U + (size_t)x * m * c, c, m, 1, c);
    }
    const int group = bf16 ? conv_bf16_dw_group(s) : conv_group(s, 1, 0);
#pragma omp parallel num_threads(used)
    {
        const int tid = omp_get_thread_num();
        float *V = scratch + (size_t)tid * layout.per_thread, *D = V + layout.col, *own_du = D + layout.dcol;
        float *work = own_du + layout.dw;
        uint32_t *rows = (uint32_t *)(work + layout.padded);
        const int b0 = (int)((long)s->batch * tid / used), b1 = (int)((long)s->batch * (tid + 1) / used);
        const int into_du = du && used == 1; /* the GEMMs add to du itself */
        float *dU = into_du ? du : own_du;
        if (bf16 && !into_du) memset(dU, 0, (size_t)t.mats * m * c * sizeof(float)); /* float: the first GEMMs set it */
        for (int b = b0; b < b1; b += group) {
            const int count = b1 - b < group ? b1 - b : group, n = count * t.tiles;
            if (t.m == 2) {
                wino2_input(V, sv, in + b * in_size, count, s, work);
                wino2_output_grad(D, sm, dout + b * out_size, count, s, work);
            } else {
                wino4_input(V, sv, in + b * in_size, count, s, work);
                wino4_output_grad(D, sm, dout + b * out_size, count, s, work);
            }
            for (int x = 0; x < t.mats; x++) {
                /* dU (m, c) += dM (m, n) . V^T (n, c); then V (c, n) = U^T (c, m) . dM (m, n) */
                if (bf16) {
                    const Bf16Runs dm = {D + x * sm, n, 0}, v = {V + x * sv, n, 0};
                    bf16_gemm_nt(dU + (size_t)x * m * c, c, dm, m, v, c, n, 1, rows);
                    if (din) bf16_gemm(V + x * sv, n, ut + x * su, D + x * sm, n, c, n, m, 0);
                    continue;
                }
                const float beta = into_du || b > b0 ? 1.0f : 0.0f;
                blas_sgemm(0, 1, m, c, n, D + x * sm, n, V + x * sv, n, beta, dU + (size_t)x * m * c, c);
                if (din)
                    blas_sgemm(1, 0, c, n, m, U + (size_t)x * m * c, c, D + x * sm, n, 0.0f, V + x * sv, n);
            }
            if (din && t.m == 2)
                wino2_input_grad(din + b * in_size, V, sv, count, s, accumulate, work);
            else if (din)
                wino4_input_grad(din + b * in_size, V, sv, count, s, accumulate, work);
        }
#pragma omp barrier
        const float *parts[used];
        for (int u = 0; u < used; u++) parts[u] = scratch + (size_t)u * layout.per_thread + layout.col + layout.dcol;
        const size_t pairs = (size_t)m * c, lo = pairs * tid / used, hi = pairs * (tid + 1) / used;
        if (du && !into_du) /* the threads' dU added to du, in thread order */
            for (int x = 0; x < t.mats; x++)
                for (size_t k = x * pairs + lo; k < x * pairs + hi; k++)
                    for (int p = 0; p < used; p++) du[k] += parts[p][k];
        else if (!du)
            wino_weight_grad(dw, parts, used, s, bf16, lo, hi);
    }
}

void conv2d_backward_du(float *din, float *du, const float *dout, const float *in, const float *w, const float *u,
                        const ConvShape *s, int accumulate, int bf16, float *scratch) {
    wino_backward(din, NULL, du, dout, in, w, u, s, accumulate, bf16, scratch);
}

size_t conv_winograd_du_size(const ConvShape *s, int bf16) {
    return wino_matrices(s, bf16);
}

void conv_winograd_dw(float *dw, const float *du, const ConvShape *s, int bf16) {
    const float *parts[1] = {du};
    wino_weight_grad(dw, parts, 1, s, bf16, 0, (size_t)s->out_channels * s->in_channels);
}

/* to (rows, count*n) = `count` consecutive images (rows, n) side by side */
static const float *side_by_side(float *to, const float *img, int count, int rows, int n) {
    for (int r = 0; r < rows; r++)
        for (int g = 0; g < count; g++) copy_row(to + ((size_t)r * count + g) * n, img + ((size_t)g * rows + r) * n, n);
    return to;
}

/* The inverse: `count` consecutive images (rows, n) = (or += when accumulate)
 * their columns of grouped (rows, count*n) */
static void to_images(float *img, const float *grouped, int count, int rows, int n, int accumulate) {
    for (int g = 0; g < count; g++)
        for (int r = 0; r < rows; r++)
            put_row(img + ((size_t)g * rows + r) * n, grouped + ((size_t)r * count + g) * n, n, accumulate);
}

/* conv2d_forward with float weights w, or conv2d_forward_bf16 with packed ones */
static void conv_forward_any(float *out, const float *in, const float *w, const float *u, const uint32_t *packed,
                             const ConvShape *s, int accumulate, float *scratch) {
    if (conv_is_winograd(s)) {
        wino_forward(out, in, w, u, packed, s, accumulate, scratch);
        return;
    }
    const int m = s->out_channels, n = s->out_h * s->out_w;
    const int k = s->in_channels * s->kernel_h * s->kernel_w;
    const size_t in_size = (size_t)s->in_channels * s->in_h * s->in_w;
    const ConvScratch layout = conv_scratch_layout(s, omp_get_max_threads(), 0);
    const int group = conv_group(s, omp_get_max_threads(), 0), groups = (s->batch + group - 1) / group;
#pragma omp parallel for schedule(static)
    for (int gi = 0; gi < groups; gi++) {
        float *mine = scratch + (size_t)omp_get_thread_num() * layout.per_thread;
        const int b0 = gi * group, count = s->batch - b0 < group ? s->batch - b0 : group, nn = count * n;
        const float *col = in + b0 * in_size;
        float *out_b = out + (size_t)b0 * m * n;
        if (packed && conv_gemm_reads_planes(s)) { /* image by image, B read from the phase planes */
            const float *rows[PLANE_ROWS];
            const int between = s->stride * conv_phases(s).cols; /* floats between output rows in the planes */
            for (int g = 0; g < count; g++) {
                plane_rows(rows, mine + layout.col + layout.dcol + layout.dw, col + g * in_size, s);
                bf16_gemm_rows(out_b + (size_t)g * m * n, n, packed, rows, s->out_w, between, m, n, k, accumulate);
            }
            continue;
        }
        if (!packed && conv_band_rows(s)) { /* image by image, a band of rows at a time (conv_band_rows) */
            const float *rows[PLANE_ROWS];
            const int band = conv_band_rows(s), wo = s->out_w;
            for (int g = 0; g < count; g++) {
                plane_rows(rows, mine + layout.col + layout.dcol + layout.dw, col + g * in_size, s);
                for (int oh = 0; oh < s->out_h; oh += band) {
                    const int oh1 = oh + band < s->out_h ? oh + band : s->out_h;
                    im2col_band(mine, rows, s, oh, oh1);
                    forward_gemm(out_b + (size_t)g * m * n + (size_t)oh * wo, n, w, NULL, mine, m, (oh1 - oh) * wo, k,
                                 accumulate);
                }
            }
            continue;
        }
        if (!conv_is_pointwise(s)) {
            im2col(mine, col, count, s, mine + layout.col + layout.dcol + layout.dw);
            col = mine;
        } else if (count > 1) {
            col = side_by_side(mine, col, count, s->in_channels, n);
        }
        if (count == 1) {
            forward_gemm(out_b, n, w, packed, col, m, n, k, accumulate);
            continue;
        }
        /* the group's output (m, count*n), then to its images */
        float *res = mine + layout.col;
        forward_gemm(res, nn, w, packed, col, m, nn, k, 0);
        to_images(out_b, res, count, m, n, accumulate);
    }
}

void conv2d_forward(float *out, const float *in, const float *w, const float *u, const ConvShape *s, int accumulate,
                    float *scratch) {
    conv_forward_any(out, in, w, u, NULL, s, accumulate, scratch);
}

size_t conv_bf16_packed_size(const ConvShape *s) {
    if (conv_is_winograd(s)) return 16 * bf16_packed_size(s->out_channels, s->in_channels);
    return bf16_packed_size(s->out_channels, s->in_channels * s->kernel_h * s->kernel_w);
}

void conv_bf16_pack(uint32_t *packed, const float *w, const ConvShape *s, float *scratch) {
    const int m = s->out_channels, c = s->in_channels;
    if (!conv_is_winograd(s)) {
        bf16_pack(packed, w, m, c * s->kernel_h * s->kernel_w, (size_t)c * s->kernel_h * s->kernel_w, 1);
        return;
    }
    wino2_weights(scratch, w, m, c); /* U: 16 matrices (m, c) */
#pragma omp parallel for schedule(static)
    for (int x = 0; x < 16; x++)
        bf16_pack(packed + x * bf16_packed_size(m, c), scratch + (size_t)x * m * c, m, c, c, 1);
}

void conv2d_forward_bf16(float *out, const float *in, const uint32_t *packed, const ConvShape *s, int accumulate,
                         float *scratch) {
    conv_forward_any(out, in, NULL, NULL, packed, s, accumulate, scratch);
}

/* The din of `count` consecutive images += (or, not accumulating, =) their
 * input gradients, W^T (k, m) . dout (m, count*n), dout holding the images'
 * columns side by side: for one image of a pointwise conv straight into
 * din, else into dcol (k, count*n) and then to each image, its rows copied
 * (pointwise) or scattered by col2im. In bf16 with wt, W^T packed
 * (bf16_pack). */
static void input_grad(float *din, const float *dout, int count, const float *w, const uint32_t *wt,
                       const ConvShape *s, int accumulate, float *dcol, float *padded) {
    const int m = s->out_channels, n = s->out_h * s->out_w, k = s->in_channels * s->kernel_h * s->kernel_w;
    const int cn = count * n, pointwise = conv_is_pointwise(s), direct = pointwise && count == 1;
    const size_t in_size = (size_t)s->in_channels * s->in_h * s->in_w;
    float *to = direct ? din : dcol;
    const int add = direct && accumulate;
    if (wt)
        bf16_gemm(to, cn, wt, dout, cn, k, cn, m, add);
    else
        blas_sgemm(1, 0, k, cn, m, w, k, dout, cn, add ? 1.0f : 0.0f, to, cn);
    if (direct) return;
    if (pointwise) {
        to_images(din, dcol, count, k, n, accumulate);
        return;
    }
    for (int g = 0; g < count; g++) {
        float *img = din + g * in_size;
        const float *col = dcol + (size_t)g * n;
        if (conv_is_1x1_stride2(s)) {
            col2im_1x1_stride2(img, col, cn, s, accumulate, padded);
            continue;
        }
        if (!accumulate) memset(img, 0, in_size * sizeof(float));
        if (conv_is_3x3_stride2(s))
            col2im_add_3x3_stride2(img, col, cn, s, padded);
        else
            col2im_add(img, col, cn, s);
    }
}

/* Images are split into one contiguous chunk per thread; each thread sums its
 * chunk's dW privately and the partial sums are added in thread order, so the
 * result depends only on the thread count. */
void conv2d_backward(float *din, float *dw, const float *dout, const float *in, const float *w, const float *u,
                     const ConvShape *s, int accumulate, int bf16, float *scratch) {
    if (conv_is_winograd(s)) {
        wino_backward(din, dw, NULL, dout, in, w, u, s, accumulate, bf16, scratch);
        return;
    }
    const int m = s->out_channels, n = s->out_h * s->out_w, cin = s->in_channels, hw = s->in_h * s->in_w;
    const int kk = s->kernel_h * s->kernel_w, k = cin * kk;
    const size_t in_size = (size_t)cin * hw, w_size = (size_t)m * k;
    const int pointwise = conv_is_pointwise(s), grad_conv = din && conv_input_grad_is_conv(s);
    const int transposed = !bf16 && conv_dw_transposed(s), group = conv_group(s, 1, 0);
    const int threads = omp_get_max_threads() < s->batch ? omp_get_max_threads() : s->batch;
    const ConvScratch layout = conv_scratch_layout(s, omp_get_max_threads(), bf16);
    const ConvShape t = conv_input_grad_shape(s);
    float *flipped = scratch + (size_t)omp_get_max_threads() * layout.per_thread;
    uint32_t *wt = (uint32_t *)(flipped + (grad_conv ? w_size : 0)); /* bf16: flipped or W^T, packed */
    if (grad_conv) /* flipped[c][o][i] = w[o][c][kk-1-i] */
        for (int o = 0; o < m; o++)
            for (int c = 0; c < cin; c++)
                for (int i = 0; i < kk; i++)
                    flipped[((size_t)c * m + o) * kk + i] = w[((size_t)o * cin + c) * kk + kk - 1 - i];
    if (din && bf16) {
        if (grad_conv)
            bf16_pack(wt, flipped, cin, m * kk, (size_t)m * kk, 1);
        else
            bf16_pack(wt, w, k, m, 1, k);
    }
#pragma omp parallel num_threads(threads)
    {
        const int tid = omp_get_thread_num();
        float *mine = scratch + (size_t)tid * layout.per_thread;
        float *col = mine, *dcol = mine + layout.col, *padded = mine + layout.col + layout.dcol + layout.dw;
        float *dw_mine = layout.dw ? mine + layout.col + layout.dcol : dw;
        uint32_t *rows = (uint32_t *)(padded + layout.padded);
        if (layout.dw) memset(dw_mine, 0, w_size * sizeof(float));
        const int b0 = (int)((long)s->batch * tid / threads), b1 = (int)((long)s->batch * (tid + 1) / threads);
        for (int b = b0, count = 1; b < b1; b += count) {
            const float *dout_b = dout + (size_t)b * m * n, *in_b = in + b * in_size;
            float *din_b = din ? din + b * in_size : NULL;
            if (bf16 && !grad_conv) {
                /* dW (m, k) += the count images' dout (m, n) . col^T (n, k), in one GEMM */
                count = b1 - b < layout.group ? b1 - b : layout.group;
                Bf16Runs cols = {in_b, n, in_size};
                if (!pointwise) {
                    im2col(col, in_b, count, s, padded);
                    cols = (Bf16Runs){col, (size_t)count * n, n};
                }
                bf16_gemm_nt(dw_mine, k, (Bf16Runs){dout_b, n, (size_t)m * n}, m, cols, k, n, count, rows);
                for (int g = 0; din && g < count; g += group) { /* as many images as the float GEMMs take */
                    const int c = count - g < group ? count - g : group;
                    const float *dout_g = dout_b + (size_t)g * m * n;
                    if (c > 1) dout_g = side_by_side(dcol + (size_t)k * c * n, dout_g, c, m, n);
                    input_grad(din_b + g * in_size, dout_g, c, w, wt, s, accumulate, dcol, padded);
                }
                continue;
            }
            if (grad_conv) {
                /* both gradients from one im2col, of dout with the flipped
                 * kernel: its row (o, kk-1-i) is dout shifted back by tap i */
                im2col(dcol, dout_b, 1, &t, padded);
                /* dW as (m, kk reversed, cin) += dcol (m*kk, hw) . in_b^T (hw, cin) */
                if (bf16)
                    bf16_gemm_nt(dw_mine, cin, (Bf16Runs){dcol, hw, 0}, m * kk, (Bf16Runs){in_b, hw, 0}, cin, hw, 1,
                                 rows);
                else
                    blas_sgemm(0, 1, m * kk, cin, hw, dcol, hw, in_b, hw, 1.0f, dw_mine, cin);
                /* din_b (cin, hw) += (or =) flipped (cin, m*kk) . dcol (m*kk, hw) */
                if (bf16)
                    bf16_gemm(din_b, hw, wt, dcol, hw, cin, hw, m * kk, accumulate);
                else
                    blas_sgemm(0, 0, cin, hw, m * kk, flipped, m * kk, dcol, hw, accumulate ? 1.0f : 0.0f, din_b, hw);
                continue;
            }
            if (conv_band_rows(s)) { /* dW a band of output rows at a time (conv_band_rows), din whole */
                const float *rows[PLANE_ROWS];
                const int band = conv_band_rows(s), wo = s->out_w;
                count = 1;
                plane_rows(rows, padded, in_b, s);
                for (int oh = 0; oh < s->out_h; oh += band) {
                    const int bn = ((oh + band < s->out_h ? oh + band : s->out_h) - oh) * wo;
                    const float *dout_band = dout_b + (size_t)oh * wo;
                    im2col_band(col, rows, s, oh, oh + bn / wo);
                    if (transposed)
                        blas_sgemm(0, 1, k, m, bn, col, bn, dout_band, n, 1.0f, dw_mine, m);
                    else
                        blas_sgemm(0, 1, m, k, bn, dout_band, n, col, bn, 1.0f, dw_mine, k);
                }
                if (din) input_grad(din_b, dout_b, 1, w, NULL, s, accumulate, dcol, padded);
                continue;
            }
            /* images of few output pixels go several to a GEMM, as in the
             * forward pass: their columns, and dout's, side by side */
            count = b1 - b < group ? b1 - b : group;
            const int cn = count * n;
            const float *col_b = in_b, *dout_g = dout_b;
            if (!pointwise) {
                im2col(col, in_b, count, s, padded);
                col_b = col;
            } else if (count > 1) {
                col_b = side_by_side(col, in_b, count, cin, n);
            }
            if (count > 1) dout_g = side_by_side(dcol + (size_t)k * cn, dout_b, count, m, n);
            /* dW (m, k) += dout_g (m, cn) . col_b^T (cn, k), or its transpose */
            if (transposed)
                blas_sgemm(0, 1, k, m, cn, col_b, cn, dout_g, cn, 1.0f, dw_mine, m);
            else
                blas_sgemm(0, 1, m, k, cn, dout_g, cn, col_b, cn, 1.0f, dw_mine, k);
            if (din) input_grad(din_b, dout_g, count, w, NULL, s, accumulate, dcol, padded);
        }
        if (layout.dw) {
#pragma omp barrier
            /* reduce: thread tid adds slice tid of every partial, in thread order */
            const size_t lo = w_size * tid / threads, hi = w_size * (tid + 1) / threads;
            for (int u = 0; u < threads; u++) {
                const float *part = scratch + (size_t)u * layout.per_thread + layout.col + layout.dcol;
                if (grad_conv) /* part is (m, kk reversed, cin) */
                    for (size_t i = lo; i < hi; i++)
                        dw[i] += part[(i / k * kk + kk - 1 - i % kk) * cin + i % k / kk];
                else if (transposed) /* part is (k, m) */
                    for (size_t i = lo; i < hi; i++) dw[i] += part[i % k * m + i / k];
                else
                    for (size_t i = lo; i < hi; i++) dw[i] += part[i];
            }
        }
    }
}

/* ------------------------------------------------- weight standardization */

/* Both parallel over the output channels when there are enough floats to
 * pay for the threads. */
#define WS_PARALLEL_FLOATS 16384

void weight_standardize_forward(float *w_hat, float *rstd, const float *w, int out_channels, int fan_in) {
#pragma omp parallel for schedule(static) if ((size_t)out_channels * fan_in >= WS_PARALLEL_FLOATS)
    for (int o = 0; o < out_channels; o++) {
        const float *row = w + (size_t)o * fan_in;
        double sum = 0.0, sumsq = 0.0;
        for (int i = 0; i < fan_in; i++) sum += row[i];
        double mean = sum / fan_in;
        for (int i = 0; i < fan_in; i++) sumsq += (row[i] - mean) * (row[i] - mean);
        double r = 1.0 / sqrt(sumsq / fan_in + WS_EPS);
        rstd[o] = (float)r;
        float *out = w_hat + (size_t)o * fan_in;
        for (int i = 0; i < fan_in; i++) out[i] = (float)((row[i] - mean) * r);
    }
}

void weight_standardize_backward(float *dw, const float *dw_hat, const float *w_hat, const float *rstd,
                                 int out_channels, int fan_in) {
#pragma omp parallel for schedule(static) if ((size_t)out_channels * fan_in >= WS_PARALLEL_FLOATS)
    for (int o = 0; o < out_channels; o++) {
        const float *g = dw_hat + (size_t)o * fan_in, *wh = w_hat + (size_t)o * fan_in;
        double sum_g = 0.0, sum_gw = 0.0;
        for (int i = 0; i < fan_in; i++) {
            sum_g += g[i];
            sum_gw += (double)g[i] * wh[i];
        }
        double mean_g = sum_g / fan_in, mean_gw = sum_gw / fan_in;
        float *d = dw + (size_t)o * fan_in;
        for (int i = 0; i < fan_in; i++) d[i] += (float)(rstd[o] * (g[i] - mean_g - wh[i] * mean_gw));
    }
}

/* ------------------------------------------------------------- GroupNorm */

/* A group's channels are contiguous. Its sums are float partial sums over
 * whole channels, added in double: one channel at a time, or as many as
 * fit in GN_CHUNK floats (per channel, the horizontal add of a 16-pixel
 * plane cost more than its sum). */
#define GN_CHUNK 256

/* The float sum of c[0..n) - mu (squared when square): four
 * vectors of partial sums, whose adds do not wait on one another. */
static float chunk_sum(const float *c, size_t n, float mu, int square) {
    const Block m = {mu, mu, mu, mu, mu, mu, mu, mu}, one = {1, 1, 1, 1, 1, 1, 1, 1};
    Block acc[4] = {{0}};
    size_t i = 0;
    for (; i + 4 * COPY_BLOCK <= n; i += 4 * COPY_BLOCK)
        for (int k = 0; k < 4; k++) {
            const Block d = LOAD(c + i + k * COPY_BLOCK) - m;
            acc[k] += d * (square ? d : one);
        }
    for (; i + COPY_BLOCK <= n; i += COPY_BLOCK) {
        const Block d = LOAD(c + i) - m;
        acc[0] += d * (square ? d : one);
    }
    const Block all = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    float part = 0.0f;
    for (int k = 0; k < COPY_BLOCK; k++) part += all[k];
    for (; i < n; i++) part += square ? (c[i] - mu) * (c[i] - mu) : c[i] - mu;
    return part;
}

/* The sum over a group of n floats (squared deviations from mu when square),
 * chunk by chunk in float, the chunks' sums added in double. */
static double group_sum(const float *x, size_t n, size_t chunk, float mu, int square) {
    double sum = 0.0;
    for (size_t at = 0; at < n; at += chunk) sum += chunk_sum(x + at, chunk, mu, square);
    return sum;
}

void groupnorm_forward(float *out, float *mean, float *rstd, const float *in, const float *gamma,
                       const float *beta, int batch, int channels, int hw, int groups, int relu) {
    const int cpg = channels / groups;
    const size_t group_size = (size_t)cpg * hw;
    int per_chunk = hw >= GN_CHUNK ? 1 : GN_CHUNK / hw; /* channels, dividing cpg */
    while (cpg % per_chunk) per_chunk--;
    const size_t chunk = (size_t)per_chunk * hw;
#pragma omp parallel for schedule(static)
    for (int bg = 0; bg < batch * groups; bg++) {
        const int b = bg / groups, g = bg % groups;
        const size_t base = ((size_t)b * channels + (size_t)g * cpg) * hw;
        const float *x = in + base;
        /* two passes: the mean, then the squared deviations from it */
        const float mu = (float)(group_sum(x, group_size, chunk, 0.0f, 0) / group_size); /* mu 0: the plain sum */
        const double sumsq = group_sum(x, group_size, chunk, mu, 1);
        const float r = (float)(1.0 / sqrt(sumsq / group_size + GN_EPS));
        mean[bg] = mu;
        rstd[bg] = r;
        for (int c = 0; c < cpg; c++) {
            const float scale = r * gamma[g * cpg + c];
            const float shift = beta[g * cpg + c] - mu * scale;
            const float *xc = x + (size_t)c * hw;
            float *yc = out + base + (size_t)c * hw;
            if (relu)
                for (int i = 0; i < hw; i++) {
                    float y = xc[i] * scale + shift;
                    yc[i] = y > 0.0f ? y : 0.0f;
                }
            else
                for (int i = 0; i < hw; i++) yc[i] = xc[i] * scale + shift;
        }
    }
}

/* Parallel over (image, group), as the forward and the convolutions split the
 * batch. Each image's sums for dgamma and dbeta go to `sums` and are added up
 * afterwards, channel by channel, image by image in order: the same bytes on
 * any number of threads. */
void groupnorm_backward(float *din, float *dgamma, float *dbeta, const float *dout, const float *in,
                        const float *mean, const float *rstd, const float *gamma, int batch, int channels, int hw,
                        int groups, const float *relu_out, int accumulate, float *sums) {
    const int cpg = channels / groups;
    const size_t group_size = (size_t)cpg * hw;
    float *sum_dy_xhat_of = sums, *sum_dy_of = sums + (size_t)batch * channels; /* (B, C) each */
#pragma omp parallel
    {
#pragma omp for schedule(static)
        for (int bg = 0; bg < batch * groups; bg++) {
            const int b = bg / groups, g = bg % groups;
            const size_t base = ((size_t)b * channels + (size_t)g * cpg) * hw;
            const float mu = mean[bg], r = rstd[bg];
            double sum_dxhat = 0.0, sum_dxhat_xhat = 0.0;
            for (int c = 0; c < cpg; c++) {
                const size_t off = base + (size_t)c * hw;
                const float *xc = in + off, *dy = dout + off, *y = relu_out ? relu_out + off : NULL;
                float sum_dy = 0.0f, sum_dy_xhat = 0.0f;
                if (y) {
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
                    for (int i = 0; i < hw; i++) {
                        const float g = dy[i]; /* loaded whatever the mask: no masked load */
                        float d = y[i] > 0.0f ? g : 0.0f;
                        sum_dy += d;
                        sum_dy_xhat += d * (xc[i] - mu) * r;
                    }
                } else {
#pragma omp simd reduction(+ : sum_dy, sum_dy_xhat)
                    for (int i = 0; i < hw; i++) {
                        sum_dy += dy[i];
                        sum_dy_xhat += dy[i] * (xc[i] - mu) * r;
                    }
                }
                const int ch = g * cpg + c;
                sum_dy_xhat_of[(size_t)b * channels + ch] = sum_dy_xhat;
                sum_dy_of[(size_t)b * channels + ch] = sum_dy;
                sum_dxhat += (double)sum_dy * gamma[ch];
                sum_dxhat_xhat += (double)sum_dy_xhat * gamma[ch];
            }
            if (!din) continue;
            const float mean_dxhat = (float)(sum_dxhat / group_size);
            const float mean_dxhat_xhat = (float)(sum_dxhat_xhat / group_size);
            for (int c = 0; c < cpg; c++) {
                const int ch = g * cpg + c;
                const size_t off = base + (size_t)c * hw;
                const float *xc = in + off, *dy = dout + off, *y = relu_out ? relu_out + off : NULL;
                float *dx = din + off;
                const float gm = gamma[ch];
                for (int i = 0; i < hw; i++) {
                    const float g = dy[i];
                    float d = (!y || y[i] > 0.0f) ? g : 0.0f;
                    float xhat = (xc[i] - mu) * r;
                    dx[i] = (accumulate ? dx[i] : 0.0f) + r * (d * gm - mean_dxhat - xhat * mean_dxhat_xhat);
                }
            }
        }
#pragma omp for schedule(static)
        for (int ch = 0; ch < channels; ch++)
            for (int b = 0; b < batch; b++) {
                dgamma[ch] += sum_dy_xhat_of[(size_t)b * channels + ch];
                dbeta[ch] += sum_dy_of[(size_t)b * channels + ch];
            }
    }
}

/* ------------------------------------------------------------------ ReLU */

void relu_forward(float *out, const float *in, size_t n) {
    for (size_t i = 0; i < n; i++) out[i] = in[i] > 0.0f ? in[i] : 0.0f;
}

void relu_backward(float *din, const float *dout, const float *out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const float g = dout[i]; /* loaded whatever the mask: no masked load */
        din[i] += out[i] > 0.0f ? g : 0.0f;
    }
}

/* -------------------------------------------------------------- max-pool */

int pool_shape_init(PoolShape *s) {
    s->out_h = (s->in_h + 2 * s->pad - s->kernel) / s->stride + 1;
    s->out_w = (s->in_w + 2 * s->pad - s->kernel) / s->stride + 1;
    if (s->in_h + 2 * s->pad < s->kernel || s->in_w + 2 * s->pad < s->kernel) return -1;
    return s->out_h > 0 && s->out_w > 0 ? 0 : -1;
}

/* The 3x3 stride-2 pad-1 pool of BiT's stem, output columns [lo, hi) of row
 * oh, whose windows lie inside the image's columns: the general loop's
 * result (the first largest value in window order, zero padding rows
 * included) without its bounds checks or branches. A padding row's base is
 * far below zero, so its index comes out negative and is stored as -1. */
static Block pick(BlockMask m, Block a, Block b) { return (Block)(((BlockMask)a & m) | ((BlockMask)b & ~m)); }

/* COPY_BLOCK outputs from column ow: their taps are the evens and odds of
 * two loads from input column 2 * ow - 1, and the odds of two from 2 * ow,
 * which read up to column 2 * ow + 2 * COPY_BLOCK - 1 */
static void maxpool_block(float *out, int32_t *argmax, const float *const rows[3], const int base[3], int ow) {
    Block best = {0};
    BlockMask where = {0}, lane = {0};
    for (int l = 0; l < COPY_BLOCK; l++) best[l] = -FLT_MAX, where[l] = -1, lane[l] = 2 * l;
    for (int kh = 0; kh < 3; kh++) {
        const float *r = rows[kh] + 2 * ow - 1;
        const Block a = LOAD(r), b = LOAD(r + COPY_BLOCK), a1 = LOAD(r + 1), b1 = LOAD(r + 1 + COPY_BLOCK);
        const Block taps[3] = {EVENS(a, b), ODDS(a, b), ODDS(a1, b1)};
        for (int kw = 0; kw < 3; kw++) {
            const BlockMask larger = taps[kw] > best;
            where = (larger & (lane + (base[kh] + 2 * ow - 1 + kw))) | (~larger & where);
            best = pick(larger, taps[kw], best);
        }
    }
    STORE(out + ow, best);
    where |= where < 0; /* -1 where negative */
    memcpy(argmax + ow, &where, sizeof where);
}

static void maxpool_3x3_stride2_row(float *out, int32_t *argmax, const float *x, const PoolShape *s, int oh, int lo,
                                    int hi) {
    static const float zeros[4096];
    const float *rows[3];
    int base[3];
    for (int kh = 0; kh < 3; kh++) {
        const int ih = 2 * oh - 1 + kh, inside = ih >= 0 && ih < s->in_h && s->in_w <= 4096;
        rows[kh] = inside ? x + (size_t)ih * s->in_w : zeros;
        base[kh] = inside ? ih * s->in_w : -(1 << 30);
    }
    /* blocks, the last one ending at hi (overlapping the one before it): the
     * loads end at column 2 * hi - 1, inside the row; a narrower row, one
     * column at a time */
    int ow = lo;
    if (hi - lo >= COPY_BLOCK) {
        for (; ow + COPY_BLOCK <= hi; ow += COPY_BLOCK) maxpool_block(out, argmax, rows, base, ow);
        if (ow < hi) maxpool_block(out, argmax, rows, base, hi - COPY_BLOCK);
        ow = hi;
    }
    for (; ow < hi; ow++) {
        float best = -FLT_MAX;
        int32_t where = -1;
        for (int kh = 0; kh < 3; kh++)
            for (int kw = 0; kw < 3; kw++) {
                const int iw = 2 * ow - 1 + kw;
                const float v = rows[kh][iw];
                const int larger = v > best;
                where = larger ? base[kh] + iw : where;
                best = larger ? v : best;
            }
        out[ow] = best;
        argmax[ow] = where < 0 ? -1 : where;
    }
}

void maxpool_forward(float *out, int32_t *argmax, const float *in, const PoolShape *s) {
    const long planes = (long)s->batch * s->channels;
    const int stem_pool = s->kernel == 3 && s->stride == 2 && s->pad == 1 && s->in_w <= 4096;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < planes; p++) {
        const float *x = in + p * s->in_h * s->in_w;
        for (int oh = 0; oh < s->out_h; oh++) {
            /* columns 1 .. (in_w - 2) / 2 have all three taps inside the image */
            const int lo = 1, hi = stem_pool ? (s->in_w - 2) / 2 + 1 : 0;
            if (hi > lo) {
                const size_t o = (p * s->out_h + oh) * s->out_w;
                maxpool_3x3_stride2_row(out + o, argmax + o, x, s, oh, lo, hi);
            }
            for (int ow = 0; ow < s->out_w; ow++) {
                if (ow >= lo && ow < hi) continue;
                float best = -FLT_MAX;
                int32_t where = -1;
                for (int kh = 0; kh < s->kernel; kh++) {
                    int ih = oh * s->stride - s->pad + kh;
                    for (int kw = 0; kw < s->kernel; kw++) {
                        int iw = ow * s->stride - s->pad + kw;
                        int inside = ih >= 0 && ih < s->in_h && iw >= 0 && iw < s->in_w;
                        float v = inside ? x[ih * s->in_w + iw] : 0.0f; /* zero padding */
                        if (v > best) {
                            best = v;
                            where = inside ? ih * s->in_w + iw : -1;
                        }
                    }
                }
                size_t o = (p * s->out_h + oh) * s->out_w + ow;
                out[o] = best;
                argmax[o] = where;
            }
        }
    }
}

void maxpool_backward(float *din, const float *dout, const int32_t *argmax, const PoolShape *s) {
    const long planes = (long)s->batch * s->channels;
    const size_t out_plane = (size_t)s->out_h * s->out_w, in_plane = (size_t)s->in_h * s->in_w;
#pragma omp parallel for schedule(static)
    for (long p = 0; p < planes; p++)
        for (size_t o = 0; o < out_plane; o++) {
            int32_t a = argmax[p * out_plane + o];
            if (a >= 0) din[p * in_plane + a] += dout[p * out_plane + o];
        }
}

/* ------------------------------------------------------ global avg pool */

void avgpool_forward(float *out, const float *in, int batch, int channels, int hw) {
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)batch * channels; p++) {
        double sum = 0.0;
        for (int i = 0; i < hw; i++) sum += in[p * hw + i];
        out[p] = (float)(sum / hw);
    }
}

void avgpool_backward(float *din, const float *dout, int batch, int channels, int hw) {
#pragma omp parallel for schedule(static)
    for (long p = 0; p < (long)batch * channels; p++) {
        float g = dout[p] / hw;
        for (int i = 0; i < hw; i++) din[p * hw + i] += g;
    }
}

/* --------------------------------------------------------------- dense */

void dense_forward(float *out, const float *in, const float *w, const float *bias, int batch,
                   int in_features, int out_features) {
    for (int b = 0; b < batch; b++) memcpy(out + (size_t)b * out_features, bias, sizeof(float) * out_features);
    blas_sgemm(0, 1, batch, out_features, in_features, in, in_features, w, in_features, 1.0f, out, out_features);
}

void dense_backward(float *din, float *dw, float *dbias, const float *dout, const float *in, const float *w,
                    int batch, int in_features, int out_features) {
    if (din)
        blas_sgemm(0, 0, batch, in_features, out_features, dout, out_features, w, in_features, 1.0f, din, in_features);
    blas_sgemm(1, 0, out_features, in_features, batch, dout, out_features, in, in_features, 1.0f, dw, in_features);
    for (int b = 0; b < batch; b++)
        for (int k = 0; k < out_features; k++) dbias[k] += dout[(size_t)b * out_features + k];
}

/* -------------------------------------------------------------- losses */

void softmax_rows(float *out, const float *logits, int rows, int cols, float temperature) {
    for (int r = 0; r < rows; r++) {
        const float *x = logits + (size_t)r * cols;
        float *y = out + (size_t)r * cols;
        float mx = -FLT_MAX;
        for (int c = 0; c < cols; c++) mx = fmaxf(mx, x[c]);
        double sum = 0.0;
        for (int c = 0; c < cols; c++) {
            y[c] = expf((x[c] - mx) / temperature);
            sum += y[c];
        }
        for (int c = 0; c < cols; c++) y[c] = (float)(y[c] / sum);
    }
}

/* log-sum-exp of x/T over one row, stable */
static double row_logsumexp(const float *x, int cols, float temperature) {
    float mx = -FLT_MAX;
    for (int j = 0; j < cols; j++) mx = fmaxf(mx, x[j]);
    double sum = 0.0;
    for (int j = 0; j < cols; j++) sum += exp(((double)x[j] - mx) / temperature);
    return (double)mx / temperature + log(sum);
}

float cross_entropy_forward(float *probs, const float *logits, const float *targets, int batch, int classes) {
    softmax_rows(probs, logits, batch, classes, 1.0f);
    double loss = 0.0;
    for (int b = 0; b < batch; b++) {
        const float *x = logits + (size_t)b * classes;
        double lse = row_logsumexp(x, classes, 1.0f);
        for (int c = 0; c < classes; c++) {
            float t = targets[(size_t)b * classes + c];
            if (t != 0.0f) loss -= t * ((double)x[c] - lse);
        }
    }
    return (float)(loss / batch);
}

void cross_entropy_backward(float *dlogits, const float *probs, const float *targets, int batch, int classes) {
    const float scale = 1.0f / batch;
    for (size_t i = 0; i < (size_t)batch * classes; i++) dlogits[i] += (probs[i] - targets[i]) * scale;
}

float distill_loss_forward(float *student_probs, float *teacher_probs, const float *student_logits,
                           const float *teacher_logits, int batch, int classes, float temperature) {
    softmax_rows(student_probs, student_logits, batch, classes, temperature);
    softmax_rows(teacher_probs, teacher_logits, batch, classes, temperature);
    double loss = 0.0;
    for (int b = 0; b < batch; b++) {
        const float *s = student_logits + (size_t)b * classes, *t = teacher_logits + (size_t)b * classes;
        double lse_s = row_logsumexp(s, classes, temperature), lse_t = row_logsumexp(t, classes, temperature);
        for (int c = 0; c < classes; c++) {
            float p = teacher_probs[(size_t)b * classes + c];
            /* log p - log q, each as x/T - lse */
            if (p > 0.0f) loss += p * (((double)t[c] - s[c]) / temperature - lse_t + lse_s);
        }
    }
    return (float)(temperature * temperature * loss / batch);
}

void distill_loss_backward(float *dlogits, const float *student_probs, const float *teacher_probs, int batch,
                           int classes, float temperature) {
    /* d/ds of T^2 KL = T^2 * (q - p) / T, averaged over the batch */
    const float scale = temperature / batch;
    for (size_t i = 0; i < (size_t)batch * classes; i++)
        dlogits[i] += (student_probs[i] - teacher_probs[i]) * scale;
}
