#!/bin/sh
# ONNX export: model_check writes random-weight models (kernels, GroupNorm
# gamma/beta and the head all random) for a stem=bit 3x64x64 config and a
# stem=small 1x28x28 config, two stages of two units each (a projection unit
# and an identity unit per stage), and the same with basic units (stage 1 all
# identity shortcuts); `distilld export` turns each into ONNX;
# tests/onnx_check.py checks the files with onnx.checker, runs them with
# OpenCV's dnn on random images against `distilld predict` (1e-4 relative),
# and fetches the same export over HTTP. Bad arguments fail with a message
# that names the problem. Exits non-zero when a check fails.
BUILD=${BUILD:-build}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
passed=0
failed=0
pass() { passed=$((passed + 1)); echo "ok   $1"; }
fail() { failed=$((failed + 1)); echo "FAIL $1"; }

export_case() {
    name=$1
    config=$2
    mkdir -p "$dir/$name"
    if ! "$BUILD/tests/model_check" "$dir/$name" "$config" > "$dir/$name.log" 2>&1; then
        fail "$name:model_check: $(cat "$dir/$name.log")"
        return
    fi
    if "$BUILD/distilld" export --weights "$dir/$name/weights.safetensors" --onnx "$dir/$name/model.onnx" \
        > "$dir/$name.log" 2>&1 && [ -s "$dir/$name/model.onnx" ]; then
        pass "$name:export"
        cases="$cases $dir/$name"
    else
        fail "$name:export: $(cat "$dir/$name.log")"
    fi
}

# expect_refusal NAME WANTED_TEXT ARGS...: non-zero exit, WANTED_TEXT in the message, no file written
expect_refusal() {
    name=$1
    wanted=$2
    shift 2
    if "$BUILD/distilld" export "$@" > "$dir/refusal.log" 2>&1; then
        fail "$name: exit 0"
    elif ! grep -q -- "$wanted" "$dir/refusal.log"; then
        fail "$name: the message does not name $wanted: $(cat "$dir/refusal.log")"
    elif [ -e "$dir/refused.onnx" ]; then
        fail "$name: an ONNX file was written anyway"
    else
        pass "$name  ($(head -n 1 "$dir/refusal.log"))"
    fi
}

cases=""
export_case bit '{"depth":[2,2],"base_width":8,"width":1,"gn_groups":4,"stem":"bit","in_channels":3,"num_classes":7,"image_size":64,"batch":2,"opt_steps":0,"seed":21}'
export_case small '{"depth":[2,2],"base_width":4,"width":2,"gn_groups":2,"stem":"small","in_channels":1,"num_classes":10,"image_size":28,"batch":2,"opt_steps":0,"seed":22}'
export_case basic '{"depth":[2,2],"block":"basic","base_width":4,"width":2,"gn_groups":2,"stem":"small","in_channels":1,"num_classes":10,"image_size":28,"batch":2,"opt_steps":0,"seed":23}'

expect_refusal "missing weights file" "$dir/missing.safetensors" \
    --weights "$dir/missing.safetensors" --onnx "$dir/refused.onnx"
printf 'not a safetensors file' > "$dir/garbage.safetensors"
expect_refusal "unreadable weights file" "$dir/garbage.safetensors" \
    --weights "$dir/garbage.safetensors" --onnx "$dir/refused.onnx"
expect_refusal "no --onnx" "--onnx" --weights "$dir/bit/weights.safetensors"
expect_refusal "unwritable output" "$dir/no-such-dir" \
    --weights "$dir/bit/weights.safetensors" --onnx "$dir/no-such-dir/model.onnx"

if [ -n "$cases" ]; then
    # shellcheck disable=SC2086 # one argument per case directory
    /usr/bin/python3 tests/onnx_check.py "$BUILD" $cases > "$dir/check.out" 2>&1
    sed '$d' "$dir/check.out"
    set -- $(tail -n 1 "$dir/check.out" | sed -n 's/^\([0-9]*\) passed, \([0-9]*\) failed$/\1 \2/p')
    if [ -z "$1" ]; then
        tail -n 1 "$dir/check.out"
        fail "onnx_check.py did not finish"
    else
        passed=$((passed + $1))
        failed=$((failed + $2))
    fi
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
