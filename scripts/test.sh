#!/usr/bin/env bash
# Installs what is missing, builds everything and runs every test (CTest:
# GoogleTest suites, parity fixtures made with the reference libraries,
# end-to-end tests against the real server on loopback).
#   scripts/test.sh [ctest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
scripts/build.sh
source scripts/env.sh
cd "$ADAPTERD_BUILD_DIR"
exec ctest --output-on-failure -j2 "$@"
