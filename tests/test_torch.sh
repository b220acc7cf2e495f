#!/bin/sh
# The whole model against PyTorch on the same weights: for a stem=bit config
# on 3x64x64, a stem=small config on 1x28x28 (two units in a stage, width
# 2) and a basic-unit config on 1x28x28 (identity shortcuts in stage 1, a
# strided projection in stage 2), model_check writes weights, input, logits, loss, gradients and the
# weights after 5 optimizer steps; tests/torch_check.py recomputes all of it
# in PyTorch (float64) and compares. `distilld predict` on the same files
# must give the same logits, and `predict --precision bfloat16` logits
# within bfloat16's rounding of them.
BUILD=${BUILD:-build}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
passed=0
failed=0
check_run() {
    name=$1
    config=$2
    mkdir -p "$dir/$name"
    if ! "$BUILD/tests/model_check" "$dir/$name" "$config"; then
        echo "FAIL $name: model_check failed"
        failed=$((failed + 1))
        return
    fi
    if "$BUILD/distilld" predict --weights "$dir/$name/weights.safetensors" --input "$dir/$name/x.npy" \
        --output "$dir/$name/predicted.npy" > /dev/null; then
        passed=$((passed + 1))
        echo "ok   $name:predict runs"
    else
        failed=$((failed + 1))
        echo "FAIL $name:predict runs"
    fi
    # the same in bfloat16 (torch_check.py compares it with a bf16 tolerance)
    if "$BUILD/distilld" predict --precision bfloat16 --weights "$dir/$name/weights.safetensors" \
        --input "$dir/$name/x.npy" --output "$dir/$name/predicted_bf16.npy" > /dev/null 2> "$dir/$name/bf16.err"; then
        passed=$((passed + 1))
        echo "ok   $name:predict --precision bfloat16 runs"
    elif grep -q "no AVX512-BF16 kernel" "$dir/$name/bf16.err"; then
        echo "ok   $name:predict --precision bfloat16 refused on this build: $(cat "$dir/$name/bf16.err")"
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL $name:predict --precision bfloat16: $(cat "$dir/$name/bf16.err")"
    fi
}
check_run bit '{"depth":[2,1],"base_width":8,"width":2,"gn_groups":4,"stem":"bit","in_channels":3,"num_classes":7,"image_size":64,"batch":3,"lr":0.01,"weight_decay":0.001,"clip_norm":1.0,"warmup_steps":2,"total_steps":10,"opt_steps":5,"seed":11}'
check_run small '{"depth":[2],"base_width":8,"width":2,"gn_groups":4,"stem":"small","in_channels":1,"num_classes":10,"image_size":28,"batch":4,"lr":0.01,"weight_decay":0.001,"clip_norm":0.5,"warmup_steps":1,"total_steps":8,"opt_steps":5,"seed":12}'
check_run basic '{"depth":[2,1],"block":"basic","base_width":8,"width":2,"gn_groups":4,"stem":"small","in_channels":1,"num_classes":10,"image_size":28,"batch":4,"lr":0.01,"weight_decay":0.001,"clip_norm":0.5,"warmup_steps":1,"total_steps":8,"opt_steps":5,"seed":14}'
/usr/bin/python3 tests/torch_check.py "$dir/bit" "$dir/small" "$dir/basic" > "$dir/torch.out" 2>&1
sed '$d' "$dir/torch.out"
torch_status=$(tail -n 1 "$dir/torch.out")
set -- $(echo "$torch_status" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
if [ -z "$1" ]; then
    echo "FAIL torch_check did not finish"
    failed=$((failed + 1))
else
    passed=$((passed + $1))
    failed=$((failed + $2))
fi
echo "$passed passed, $failed failed"
