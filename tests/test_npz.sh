#!/bin/sh
# BiT .npz checkpoints as teachers: tests/npz_check.py writes random BiT
# ResNetV2 weights with numpy (np.savez: stored members; np.savez_compressed:
# deflated, convs named standardized_conv2d_N; a zip64 archive written by
# hand) and PyTorch's logits for them; `distilld predict` on each .npz must
# give the same logits. Broken checkpoints must be refused naming the
# tensor, and a Fashion-MNIST distill job must run with an .npz teacher
# (a 7x7-stem one, which runs at the student's 28 px).
BUILD=${BUILD:-build}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }

# Runs the python checker, shows its lines, adds its "N passed, N failed".
checker() {
    /usr/bin/python3 tests/npz_check.py "$@" > "$dir/checker.out" 2>&1
    sed '$d' "$dir/checker.out"
    set -- $(tail -n 1 "$dir/checker.out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
    if [ -z "$1" ]; then
        tail -n 5 "$dir/checker.out"
        fail "npz_check.py did not finish"
    else
        passed=$((passed + $1))
        failed=$((failed + $2))
    fi
}

checker write "$dir"

for name in A_stored A_deflated_variants B_zip64; do
    label=${name%%_*}
    if "$BUILD/distilld" predict --threads 1 --weights "$dir/$name.npz" --input "$dir/${label}_x.npy" \
        --output "$dir/$name.predicted.npy" > "$dir/predict.out" 2>&1; then
        ok "$name.npz: distilld predict runs"
    else
        fail "$name.npz: distilld predict runs: $(cat "$dir/predict.out")"
    fi
done
checker compare "$dir"

# Refused, with a message naming the problem and the tensor or member.
refused() {
    name=$1
    shift
    if "$BUILD/distilld" predict --threads 1 --weights "$dir/$name.npz" --input "$dir/A_x.npy" \
        --output "$dir/$name.predicted.npy" > "$dir/refused.out" 2>&1; then
        fail "$name.npz is refused: distilld predict succeeded"
        return
    fi
    for needle in "$dir/$name.npz" "$@"; do
        if ! grep -qF -- "$needle" "$dir/refused.out"; then
            fail "$name.npz is refused: the message lacks '$needle': $(cat "$dir/refused.out")"
            return
        fi
    done
    ok "$name.npz is refused: $(sed 's|^distilld: [^:]*: ||' "$dir/refused.out")"
}
refused A_missing "missing tensor resnet/block1/unit02/b/group_norm/beta"
refused A_misshaped "resnet/block2/unit01/b/standardized_conv2d/kernel has shape [3,3,64,32]" "needs [3,3,64,64]"
refused A_extra "unexpected tensor resnet/block1/unit01/d/standardized_conv2d/kernel"
refused A_crc "CRC-32 mismatch"

# teacher.weights in a job spec: a short distill job on 16 Fashion-MNIST test images.
cat > "$dir/distill.json" <<SPEC
{"kind": "distill", "teacher": {"weights": "$dir/C_teacher.npz"},
 "dataset": {"name": "fashion-mnist", "test_size": 16},
 "model": {"depth": [1], "base_width": 8, "width": 1, "gn_groups": 4, "stem": "small"},
 "batch_size": 8, "steps": 2, "threads": 1, "seed": 0}
SPEC
if "$BUILD/distilld" run "$dir/distill.json" --run-dir "$dir/run" > "$dir/run.out" 2>&1 &&
    grep -q "teacher" "$dir/run/metrics.jsonl"; then
    ok "distill job with teacher.weights = a BiT .npz: $(grep '^done' "$dir/run.out")"
else
    fail "distill job with teacher.weights = a BiT .npz: $(tail -n 3 "$dir/run.out")"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
