#!/bin/sh
# Photo datasets (core/images.c): JPEG folders, the decoded-image cache,
# Flowers102 and its MAT files, against Pillow and scipy: tests/images_check.py.
# BUILD names the build directory (default build). Ends with "N passed, N failed".
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.." || exit 2
if [ ! -d ../shared/fixtures/flowers102 ]; then
    echo "FAIL setup: ../shared/fixtures/flowers102 (the real Flowers102 .mat files) is missing"
    echo "0 passed, 1 failed"
    exit 1
fi
exec /usr/bin/python3 tests/images_check.py "$BUILD"
