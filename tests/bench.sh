#!/bin/bash
# bench.sh - distilld against PyTorch on this CPU (run by `make bench`; see docs/PERFORMANCE.md).
#
#   BUILD=build tests/bench.sh          from the repository root, after building $BUILD/tests/bench
#
# Every measurement (one kind of step, one model, one thread count) runs in its own process, so
# the peak RSS reported is that measurement's. distilld runs as it is (it picks its own OpenBLAS
# core, or keeps the environment's OPENBLAS_CORETYPE); PyTorch runs with OPENBLAS_NUM_THREADS=1
# and, when installed, jemalloc with decay off. When the environment pins OpenBLAS's core
# (OPENBLAS_CORETYPE), distilld is also timed without the pin (OPENBLAS_CORETYPE and
# OPENBLAS_L2_SIZE unset for that process alone), in two more columns: PyTorch's oneDNN never
# reads the pin, so those columns compare the same instruction set on both sides.
# Each row's processes run BENCH_ROUNDS times (default 3), taking turns, and each side's median
# round counts: the machine's speed drifts over minutes, and one slow stretch under one process
# would otherwise decide a ratio.
# Environment: BENCH_THREADS (default "1 2"), BENCH_BATCH (default 128), BENCH_ROUNDS (default 3),
# BENCH_QUICK=1 (one round, one warm-up and one timed step each: a smoke test of the script, not a
# measurement).
# Raw JSON lines go to $BUILD/bench/results.jsonl. Exits 1 if any measurement process failed.
set -u

BUILD=${BUILD:-build}
PY=/usr/bin/python3
THREADS=${BENCH_THREADS:-1 2}
BATCH=${BENCH_BATCH:-128}
QUICK=${BENCH_QUICK:-0}
ROUNDS=${BENCH_ROUNDS:-3}
[ "$QUICK" = 1 ] && ROUNDS=1
cd "$(dirname "$0")/.." || exit 2
BENCH=$BUILD/tests/bench
OUT=$BUILD/bench
for f in "$BENCH" "$BUILD/distilld"; do
    [ -x "$f" ] || { echo "bench.sh: $f is missing: run make bench" >&2; exit 2; }
done
[ -x "$PY" ] && "$PY" -c 'import torch' 2>/dev/null || { echo "bench.sh: $PY with torch is needed" >&2; exit 2; }
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

TORCH_ENV=(OPENBLAS_NUM_THREADS=1)
JEMALLOC=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
if [ -e "$JEMALLOC" ]; then
    TORCH_ENV+=("LD_PRELOAD=$JEMALLOC${LD_PRELOAD:+:$LD_PRELOAD}" "MALLOC_CONF=dirty_decay_ms:-1,muzzy_decay_ms:-1")
    ALLOC="jemalloc (decay off)"
else
    ALLOC="glibc malloc (libjemalloc2 not installed)"
fi

FM_T='{"depth":[2,2,2,2],"base_width":16,"width":1,"gn_groups":8,"stem":"small","in_channels":1,"num_classes":10,"image_size":28}'
FM_S='{"depth":[1,1,1,1],"base_width":16,"width":1,"gn_groups":8,"stem":"small","block":"basic","in_channels":1,"num_classes":10,"image_size":28}'
BIT_T='{"depth":[2,2,2,2],"base_width":32,"width":1,"gn_groups":8,"stem":"bit","in_channels":3,"num_classes":102,"image_size":128}'
BIT_S='{"depth":[1,1,1,1],"base_width":16,"width":1,"gn_groups":8,"stem":"bit","in_channels":3,"num_classes":102,"image_size":128}'

# label | kind | model | teacher (or -) | warm-up | timed iterations [| flags]
# Iterations are sized so that a whole run takes ~12 minutes on a quiet 2-core machine; the slow
# 128 px measurements get fewer. bf16 rows run on both sides, with --bf16, the teacher (distill) or
# the model (infer) in bfloat16 - distilld's "teacher_precision": "bfloat16" or
# `predict --precision bfloat16`, PyTorch's torch.bfloat16 - or the trained model (train; distill with --bf16-student) in mixed precision -
# distilld's "precision": "bfloat16", PyTorch's autocast(bfloat16).
PLAN=(
    "fmnist R26 teacher|train|$FM_T|-|2|5"
    "fmnist R26 teacher bf16|train|$FM_T|-|2|5|--bf16"
    "fmnist R10 student|train|$FM_S|-|2|9"
    "fmnist R10 student bf16|train|$FM_S|-|2|9|--bf16"
    "fmnist R26 teacher|infer|$FM_T|-|2|9"
    "fmnist R26 teacher bf16|infer|$FM_T|-|2|9|--bf16"
    "fmnist R10 student|infer|$FM_S|-|2|11"
    "fmnist R10 student bf16|infer|$FM_S|-|2|11|--bf16"
    "fmnist R26 -> R10|distill|$FM_S|$FM_T|2|5"
    "fmnist R26 bf16 -> R10|distill|$FM_S|$FM_T|2|5|--bf16"
    "fmnist R26 bf16 -> R10 bf16|distill|$FM_S|$FM_T|2|5|--bf16 --bf16-student"
    "bit128 R26 teacher|train|$BIT_T|-|1|3"
    "bit128 R26 teacher bf16|train|$BIT_T|-|1|3|--bf16"
    "bit128 R14 student|train|$BIT_S|-|1|5"
    "bit128 R14 student bf16|train|$BIT_S|-|1|5|--bf16"
    "bit128 R26 teacher|infer|$BIT_T|-|1|5"
    "bit128 R26 teacher bf16|infer|$BIT_T|-|1|5|--bf16"
    "bit128 R14 student|infer|$BIT_S|-|1|7"
    "bit128 R14 student bf16|infer|$BIT_S|-|1|7|--bf16"
    "bit128 R26 -> R14|distill|$BIT_S|$BIT_T|1|3"
    "bit128 R26 bf16 -> R14|distill|$BIT_S|$BIT_T|1|3|--bf16"
    "bit128 R26 bf16 -> R14 bf16|distill|$BIT_S|$BIT_T|1|3|--bf16 --bf16-student"
)

failed=0
start=$(date +%s)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
read -r _ u0 n0 s0 i0 w0 q0 sq0 st0 _ < /proc/stat

PINNED=${OPENBLAS_CORETYPE:-}

# run LABEL IMPL THREADS CMD...: one measurement process; its JSON line, tagged, into $RESULTS
run() {
    local label=$1 impl=$2 threads=$3
    shift 3
    local log=$OUT/last.err out line
    printf '  %-20s %-8s %-9s %s thread(s), round %s ... ' "$label" "$kind" "$impl" "$threads" "$round" >&2
    if out=$("$@" 2>"$log") && line=$(printf '%s\n' "$out" | tail -n 1) && [ "${line:0:1}" = "{" ]; then
        echo "${line%\}}, \"label\": \"$label\", \"run\": \"$impl\", \"round\": $round}" >> "$RESULTS"
        echo "$line" | sed -n 's/.*"images_per_second": \([0-9.]*\).*/\1 img\/s/p' >&2
    else
        echo "FAILED" >&2
        sed 's/^/    /' "$log" >&2
        echo "{\"impl\": \"$impl\", \"run\": \"$impl\", \"kind\": \"$kind\", \"threads\": $threads, \"label\": \"$label\", \"round\": $round, \"failed\": true}" >> "$RESULTS"
        failed=1
    fi
}

echo "make bench: batch $BATCH, threads $THREADS, $ROUNDS round(s); each line is one process (distilld, then PyTorch)" >&2
for threads in $THREADS; do
    for entry in "${PLAN[@]}"; do
        IFS='|' read -r label kind model teacher warmup iters flags <<< "$entry"
        [ "$QUICK" = 1 ] && warmup=1 iters=1
        args=("$kind" "$model")
        [ "$teacher" != "-" ] && args+=("$teacher")
        args+=(--batch "$BATCH" --threads "$threads" --iters "$iters" --warmup "$warmup" $flags)
        for ((round = 1; round <= ROUNDS; round++)); do
            run "$label" distilld "$threads" "$BENCH" "${args[@]}"
            [ -n "$PINNED" ] && run "$label" unpinned "$threads" env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$BENCH" "${args[@]}"
            # PyTorch in both memory formats: the peer is the faster of the two
            run "$label" pytorch "$threads" env "${TORCH_ENV[@]}" "$PY" tests/bench_torch.py "${args[@]}"
            run "$label" pytorch-cl "$threads" env "${TORCH_ENV[@]}" "$PY" tests/bench_torch.py "${args[@]}" --channels-last
        done
    done
done

# sgemm ceiling: OpenBLAS on a large square, with the core distilld uses (best of 5: a ceiling)
BLAS_LINE=$("$BUILD/distilld" version 2>/dev/null | grep -m1 'OpenBLAS' || true)
CORE=$(echo "$BLAS_LINE" | sed -n 's/.*OpenBLAS core \([A-Za-z0-9_]*\).*/\1/p')
cat > "$OUT/sgemm_ceiling.c" <<'EOF'
/* generated by tests/bench.sh: best GFLOP/s of cblas_sgemm on an n x n x n product */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
void openblas_set_num_threads(int);
char *openblas_get_corename(void);
int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 2048, reps = 5;
    float *a = malloc(sizeof(float) * n * n), *b = malloc(sizeof(float) * n * n), *c = malloc(sizeof(float) * n * n);
    for (long i = 0; i < (long)n * n; i++) a[i] = (float)(i % 7) * 0.1f, b[i] = (float)(i % 5) * 0.1f;
    printf("core %s", openblas_get_corename());
    for (int t = 1; t <= 2; t++) {
        openblas_set_num_threads(t);
        double best = 1e30;
        for (int r = -1; r < reps; r++) {
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
            clock_gettime(CLOCK_MONOTONIC, &t1);
            double t = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
            if (r >= 0 && t < best) best = t;
        }
        printf(" %.1f", 2.0 * n * n * n / best * 1e-9);
    }
    printf("\n");
    return c[0] == 12345.0f;
}
EOF
CEILING="not measured (could not compile $OUT/sgemm_ceiling.c)"
if ${CC:-cc} -O2 -o "$OUT/sgemm_ceiling" "$OUT/sgemm_ceiling.c" -lopenblas 2>"$OUT/last.err"; then
    if c=$(env ${CORE:+OPENBLAS_CORETYPE=$CORE} "$OUT/sgemm_ceiling" 2048); then
        set -- $c
        CEILING="$3 GFLOP/s on 1 thread, $4 on 2 (OpenBLAS core $2, 2048^3, best of 5)"
    else
        CEILING="not measured (sgemm_ceiling failed)"
        failed=1
    fi
else
    sed 's/^/    /' "$OUT/last.err" >&2
fi
if [ -n "$PINNED" ] && [ -x "$OUT/sgemm_ceiling" ]; then
    if c=$(env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$OUT/sgemm_ceiling" 2048); then
        set -- $c
        CEILING="$CEILING; unpinned $3 on 1 thread, $4 on 2 (core $2)"
    fi
fi

# the core's peak arithmetic, of which the GEMMs' rates are a share: independent FMAs on the widest
# vector and (AVX512-BF16) bf16 dot products, in registers (best of 3, on 1 and 2 threads)
cat > "$OUT/core_peak.c" <<'EOF'
/* generated by tests/bench.sh: GFLOP/s of 16 independent FMA chains on the widest float vector
 * and, with AVX512-BF16, of 16 independent vdpbf16ps chains: "fma<bits> 1t 2t [dpbf16 1t 2t]" */
#include <stdio.h>
#include <time.h>
#ifdef __AVX512BF16__
#include <immintrin.h>
#endif
#ifdef __AVX512F__
#define WIDTH 16
#else
#define WIDTH 8
#endif
typedef float Vec __attribute__((vector_size(WIDTH * sizeof(float))));
#define X16(S) S(0) S(1) S(2) S(3) S(4) S(5) S(6) S(7) S(8) S(9) S(10) S(11) S(12) S(13) S(14) S(15)
enum { STEPS = 50000000 };
static volatile float sink;

static void fma_loop(void) {
#define INIT(i) Vec a##i = (Vec){0} + (float)i;
    X16(INIT)
    Vec x = (Vec){0} + 0.999f, y = (Vec){0} + 0.001f;
    __asm__ volatile("" : "+x"(x), "+x"(y));
    for (long n = 0; n < STEPS; n++) {
#define STEP(i) a##i = a##i * x + y;
        X16(STEP)
    }
    Vec s = (Vec){0};
#define SUM(i) s += a##i;
    X16(SUM)
    sink = s[0];
}

#ifdef __AVX512BF16__
static void dot_loop(void) {
#define DINIT(i) __m512 d##i = _mm512_set1_ps((float)i);
    X16(DINIT)
    __m512bh p = (__m512bh)_mm512_set1_epi32(0x3f803f80), q = (__m512bh)_mm512_set1_epi32(0x3a803a80);
    __asm__ volatile("" : "+v"(p), "+v"(q));
    for (long n = 0; n < STEPS; n++) {
#define DSTEP(i) d##i = _mm512_dpbf16_ps(d##i, p, q);
        X16(DSTEP)
    }
    __m512 s = _mm512_setzero_ps();
#define DSUM(i) s = _mm512_add_ps(s, d##i);
    X16(DSUM)
    sink = _mm512_reduce_add_ps(s);
}
#endif

/* best of 3: `threads` copies of loop side by side; flops per step and copy */
static double rate(void (*loop)(void), double flops, int threads) {
    double best = 1e30;
    for (int r = 0; r < 3; r++) {
        struct timespec t0, t1;
        clock_gettime(CLOCK_MONOTONIC, &t0);
#pragma omp parallel num_threads(threads)
        loop();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        double t = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
        if (t < best) best = t;
    }
    return flops * STEPS * threads / best * 1e-9;
}

int main(void) {
    /* an FMA: 2 flops a lane; a bf16 dot product: 4 a 32-bit lane (two multiply-adds) */
    printf("fma%d %.1f %.1f", WIDTH * 32, rate(fma_loop, 16.0 * 2 * WIDTH, 1), rate(fma_loop, 16.0 * 2 * WIDTH, 2));
#ifdef __AVX512BF16__
    printf(" dpbf16 %.1f %.1f", rate(dot_loop, 16.0 * 4 * 16, 1), rate(dot_loop, 16.0 * 4 * 16, 2));
#endif
    printf("\n");
    return 0;
}
EOF
PEAK="not measured (could not compile $OUT/core_peak.c)"
if ${CC:-cc} -O2 -march=native -fopenmp -o "$OUT/core_peak" "$OUT/core_peak.c" 2>"$OUT/last.err"; then
    if c=$("$OUT/core_peak"); then
        set -- $c
        PEAK="$1 $2 GFLOP/s on 1 thread, $3 on 2${4:+; bf16 dot products (vdpbf16ps) $5 on 1, $6 on 2}"
    else
        PEAK="not measured (core_peak failed)"
        failed=1
    fi
else
    sed 's/^/    /' "$OUT/last.err" >&2
fi

# how busy the machine was with other work: all CPU time spent minus this script's children
read -r _ u1 n1 s1 i1 w1 q1 sq1 st1 _ < /proc/stat
busy=$(( (u1 + n1 + s1 + q1 + sq1 + st1) - (u0 + n0 + s0 + q0 + sq0 + st0) ))
total=$(( busy + (i1 + w1) - (i0 + w0) ))
times > "$OUT/times"
ours=$(tail -n 1 "$OUT/times" | awk '{ t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] } print t }')
OTHERS=$(awk -v b="$busy" -v t="$total" -v o="$ours" -v hz="$(getconf CLK_TCK)" \
    'BEGIN { x = t > 0 ? 100 * (b - o * hz) / t : 0; if (x < 0) x = 0; printf "%.0f", x }')
CPU=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')
FLAGS=$(grep -m1 '^flags' /proc/cpuinfo | grep -o -w 'avx512f\|avx512_bf16\|avx2\|fma' | sort -u | tr '\n' ' ')
FAMILY=$(awk -F': ' '/^cpu family/ { f = $2 } /^model\t/ { m = $2 } END { if (f != "") printf "family %s model %s", f, m }' /proc/cpuinfo)
end=$(date +%s)

RESULTS=$RESULTS "$PY" - <<'EOF'
import json, os
rows = [json.loads(l) for l in open(os.environ["RESULTS"]) if l.strip()]
keys, rounds = [], {}
for r in rows:
    k = (r["label"], r["kind"], r["threads"])
    if k not in rounds:
        keys.append(k)
        rounds[k] = {}
    rounds[k].setdefault(r.get("run", r["impl"]), []).append(r)
def median(runs):
    """the median round (the lower of the middle two); a failed round fails the measurement"""
    if any(r.get("failed") for r in runs):
        return next(r for r in runs if r.get("failed"))
    return sorted(runs, key=lambda r: r["images_per_second"])[(len(runs) - 1) // 2]
by = {k: {run: median(v) for run, v in runs.items()} for k, runs in rounds.items()}
def f(r, key, fmt):
    if r is None or r.get("failed"):
        return "FAIL"
    return fmt % r[key]
def ratio(d, t):
    ok = d and t and not d.get("failed") and not t.get("failed")
    return "%.2f" % (d["images_per_second"] / t["images_per_second"]) if ok else "-"
unpinned = any("unpinned" in v for v in by.values())
hdr = ["config", "kind", "thr", "distilld img/s", "PyTorch img/s", "layout", "ratio", "distilld GFLOP/s",
       "sgemm GFLOP/s", "% of sgemm", "distilld MB", "PyTorch MB"]
if unpinned:
    hdr += ["unpinned img/s", "ratio"]
table = []
def faster(a, b):
    ok = [r for r in (a, b) if r and not r.get("failed")]
    return max(ok, key=lambda r: r["images_per_second"]) if ok else a
for k in keys:
    d, u = by[k].get("distilld"), by[k].get("unpinned")
    t = faster(by[k].get("pytorch"), by[k].get("pytorch-cl"))
    if " bf16" in k[0]:  # PyTorch's fastest way to the same result: its bf16 runs, or its float ones
        f32 = by.get((k[0].replace(" bf16", ""), k[1], k[2]), {})
        t = faster(t, faster(f32.get("pytorch"), f32.get("pytorch-cl")))
    share = "%.0f" % (100 * d["gemm_share"]) if d and not d.get("failed") else "-"
    layout = {"NCHW": "NCHW", "channels_last": "NHWC"}.get(t.get("format"), "-") if t else "-"
    if t and t.get("precision") == "bfloat16":
        layout += " bf16"
    table.append([k[0], k[1], str(k[2]), f(d, "images_per_second", "%.1f"), f(t, "images_per_second", "%.1f"),
                  layout, ratio(d, t), f(d, "gflops", "%.1f"), f(d, "sgemm_gflops", "%.1f"), share, f(d, "peak_rss_mb", "%.0f"),
                  f(t, "peak_rss_mb", "%.0f")])
    if unpinned:
        table[-1] += [f(u, "images_per_second", "%.1f"), ratio(u, t)]

w = [max([len(hdr[i])] + [len(r[i]) for r in table]) for i in range(len(hdr))]
line = lambda cells: "| " + " | ".join(c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(cells)) + " |"
print()
print(line(hdr))
print("|" + "|".join(("-" * (w[i] + 1) + ":") if i >= 2 else "-" * (w[i] + 2) for i in range(len(hdr))) + "|")
for r in table:
    print(line(r))
blas = sorted({r["blas"] for r in rows if r.get("run") == "unpinned" and "blas" in r})
if blas:
    print("\nunpinned runs: " + "; ".join(blas))
EOF

echo
echo "images/s: median over the timed steps, and of $ROUNDS round(s) of processes taking turns; ratio > 1 means distilld"
echo "          is faster. batch $BATCH."
echo "PyTorch:  the faster of its two memory formats (layout: NCHW, or NHWC = channels_last), each run separately."
echo "bf16:     those rows run the teacher (distill) or the model (infer) in bfloat16, and a trained model marked"
echo "          bf16 (train; the student of a distill) in mixed precision: bf16 convolutions, float weights and"
echo "          optimizer. PyTorch ran it both so (torch.bfloat16; autocast) and in float (the row without bf16):"
echo "          its faster run is the peer (layout says which)."
echo "GFLOP/s: conv + head multiply-adds x2 (x3 for a training step, + teacher forward for distill), counted as"
echo "  direct convolution: Winograd 3x3 convs do 1/4 of them (on images 4 px wide: 4/9), so this is an effective rate."
echo "sgemm GFLOP/s: the FLOPs of the step's conv GEMMs over the time OpenBLAS alone takes for them at their own"
echo "  shapes and threading (bench.c, best of 3); % of sgemm = that time over the step's: the share of the step"
echo "  the GEMMs alone would take (100 = nothing but GEMMs). In bf16 rows the bfloat16 models' GEMMs are timed with"
echo "  distilld's bf16 GEMMs (core/bf16.c), which is why their rate exceeds sgemm's."
echo "machine:  $CPU${FAMILY:+ ($FAMILY)}, $(nproc) cores ($FLAGS), $(uname -r)"
echo "distilld: ${BLAS_LINE:-OpenBLAS core unknown}"
[ -n "$PINNED" ] && echo "unpinned: distilld with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE unset (the environment sets OPENBLAS_CORETYPE=$PINNED)"
echo "PyTorch:  $("$PY" -c 'import torch; print(torch.__version__)'), OPENBLAS_NUM_THREADS=1, $ALLOC"
echo "sgemm:    $CEILING"
echo "peak:     $PEAK (independent chains in registers, best of 3)"
echo "load avg: $load_start at start, $(cut -d' ' -f1-3 /proc/loadavg) at end; other processes used ~$OTHERS % of the CPU time during the run"
echo "date:     $(date -u '+%Y-%m-%d %H:%M UTC'); took $((end - start)) s"
echo "raw:      $RESULTS"
[ "$failed" = 0 ] || { echo "bench.sh: some measurements FAILED (see above)" >&2; exit 1; }
exit 0
