#!/bin/sh
# make results: the paper's central claim at small scale, from the committed
# recipes. Trains the Fashion-MNIST teacher on all 60k images, then the
# function-matching student and the label-only baseline on the same fixed
# 1,020-image subset with the same budget, and writes docs/RESULTS.md and the
# learning curves in docs/results/. Each run uses one thread, so on two cores
# the label baseline (which needs no teacher) runs beside the teacher, and
# the function-matching student after it: about three hours (teacher 1 h 30,
# student 1 h 30 on this 2-core AMD EPYC machine). Each run resumes
# from its checkpoint if the script is stopped and started again; delete
# runs/ to start over.
set -e
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
mkdir -p runs docs/results

run() {
    dir=runs/$1
    if [ -f "$dir/weights.safetensors" ]; then
        echo "== $1: done already ($dir)"
        return 0
    fi
    echo "== $1 (follow with: tail -f $dir.log)"
    "$BUILD/distilld" run "recipes/$1.json" --run-dir "$dir" --threads 1 --resume > "$dir.log" 2>&1 ||
        { echo "== $1 FAILED:"; tail -n 20 "$dir.log"; return 1; }
    tail -n 1 "$dir.log"
}

run fmnist-labels-1k &
labels=$!
run fmnist-teacher
run fmnist-fm-1k
wait $labels
/usr/bin/python3 tools/results.py runs docs
