#!/bin/sh
# The dashboard in Debian's headless Chromium, driven by playwright-core from
# web/node_modules (make web-deps installs it): tests/test_browser.js.
# BUILD names the build directory (default build). Ends with "N passed, N failed".
BUILD=${BUILD:-build}
cd "$(dirname "$0")/.." || exit 2
missing=""
command -v node >/dev/null 2>&1 || missing="node (Node.js 18 or later)"
[ -x /usr/bin/chromium ] || missing="$missing${missing:+, }/usr/bin/chromium (Debian's chromium: make test-deps)"
[ -d web/node_modules/playwright-core ] || missing="$missing${missing:+, }web/node_modules/playwright-core (make web-deps)"
if [ -n "$missing" ]; then
    echo "FAIL setup: missing $missing"
    echo "0 passed, 1 failed"
    exit 1
fi
exec node tests/test_browser.js "$BUILD"
