#!/usr/bin/env bash
# On the GPU machine (run from the repo root, through the device tool): build
# the LoRA kernels' test and GPU benchmark, run the test (CUDA cases included),
# then the benchmark. Logs go to $OUT. If .deps/kern-src.tar.gz exists (a
# snapshot of the tree, carried), that is built instead of the working tree.
# The benchmark prints the split kernels and the fused single launch side by
# side. The test and the benchmark run under a time limit, so that a hang
# (a cluster barrier never met) still returns the logs.
#   carry: [".deps/debs", ".deps/kern-src.tar.gz"] (or [".gpu-tree", ".deps/debs"], run
#   from .gpu-tree)
#   command: bash scripts/gpu/lora_kernels.sh [--quick | --decode | --tables] (passed to lora_gpu_bench)
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .deps/debs/*.deb ../.deps/debs/*.deb; do [[ -f $f ]] && dpkg -x "$f" /; done
ldconfig
src=.
if [[ -f .deps/kern-src.tar.gz ]]; then
  src=/tmp/kern-src
  mkdir -p "$src" && tar -xzf .deps/kern-src.tar.gz -C "$src"
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
build=${ADAPTERD_GPU_BUILD:-/tmp/b}  # Kept between calls when it is an ignored repo path.
cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADAPTERD_BUILD_SERVER=OFF \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
  -DPython3_EXECUTABLE="$(which python3)" > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
ninja -C "$build" -j16 lora_kernels_test lora_gpu_bench lora_cpu_bench > "$OUT/build.log" 2>&1 \
  || { grep -m5 -A12 error "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
timeout 120 "$build/tests/kernels/lora_kernels_test" > "$OUT/test.log" 2>&1
echo "lora_kernels_test rc=$?"
grep -E "^\s+(cpu|cuda) |FAILED|PASSED|SKIPPED|Failure|error" "$OUT/test.log" | head -80
timeout 300 "$build/bench/lora_gpu_bench" "$@" 2>&1 | tee "$OUT/bench.log"
