#!/bin/sh
# make results: the paper's central claim at small scale, from the committed
# recipes. Trains the Fashion-MNIST teacher on all 60k images, then the
# function-matching student and the label-only baseline on the same fixed
# 1,020-image subset with the same budget, and writes docs/RESULTS.md and the
# learning curves in docs/results/. Several hours of CPU on 2 cores; each run
# resumes from its checkpoint if the script is stopped and started again.
set -e
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.."
mkdir -p runs docs/results
for recipe in fmnist-teacher fmnist-fm-1k fmnist-labels-1k; do
    dir=runs/$recipe
    if [ -f "$dir/weights.safetensors" ]; then
        echo "== $recipe: done already ($dir)"
        continue
    fi
    echo "== $recipe"
    "$BUILD/distilld" run "recipes/$recipe.json" --run-dir "$dir" --resume
done
/usr/bin/python3 tools/results.py runs docs
