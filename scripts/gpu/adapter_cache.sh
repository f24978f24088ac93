#!/usr/bin/env bash
# On the GPU machine (run from the repo root, through the device tool): build
# the engine without the server, run the adapter cache unit test and the
# adapter cache benchmark on CUDA (default model: pinned host tier, device
# copies on the loader worker). Logs go to $OUT.
#   carry: [".deps/debs"]
#   command: bash scripts/gpu/adapter_cache.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .deps/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
build=/tmp/b
cmake -S . -B "$build" -G Ninja -DADAPTERD_BUILD_SERVER=OFF -DADAPTERD_BUILD_BENCH=ON \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
  -DPython3_EXECUTABLE="$(which python3)" > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
ninja -C "$build" -j16 adapter_cache_test adapter_cache_bench > "$OUT/build.log" 2>&1 \
  || { grep -m5 -A12 error "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
"$build/tests/peft/adapter_cache_test" 2>&1 | tail -3
"$build/bench/adapter_cache_bench" --device cuda --data-dir /tmp/acb "$@" 2>&1 | tee "$OUT/bench.log"
