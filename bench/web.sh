#!/usr/bin/env bash
# Web UI benchmark, in Debian's chromium: the initial JavaScript (gzipped) of the first page, and an
# evaluation of 5,000 builds: time until its builds list shows, and frame times while scrolling it from top to
# bottom. The API is a stand-in answering with synthetic data (web/e2e/bench.mjs), so only the UI is measured.
# Prints figures; asserts nothing. Targets: initial JS <= 250 KB gzipped; scrolling without long frames.
# Usage: bench/web.sh [number of builds]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

ensure_web
ensure_chromium
node web/e2e/bench.mjs "${1:-5000}"
