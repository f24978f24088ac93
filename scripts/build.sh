#!/usr/bin/env bash
# Configures and builds adapterd with Ninja and ccache into $ADAPTERD_BUILD_DIR
# (default build/). Extra arguments are Ninja targets (default: everything).
#   scripts/build.sh [target...]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
py="$ADAPTERD_VENV/bin/python"
torch_prefix=$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')
if [[ ! -f "$ADAPTERD_BUILD_DIR/build.ninja" ]]; then
  mkdir -p "$ADAPTERD_BUILD_DIR"
  cmake -S . -B "$ADAPTERD_BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DCMAKE_PREFIX_PATH="$torch_prefix" -DPython3_EXECUTABLE="$py" \
    ${ADAPTERD_CMAKE_ARGS:-} > "$ADAPTERD_BUILD_DIR/configure.log" 2>&1 \
    || { cat "$ADAPTERD_BUILD_DIR/configure.log"; exit 1; }
fi
cmake --build "$ADAPTERD_BUILD_DIR" -- "$@"
