#!/usr/bin/env bash
# On the GPU machine (run from the repo root, through the device tool): build
# the engine without the server, run the decode attention test and benchmark
# (ADAPTERD_ATTENTION_BENCH=0 skips the benchmark), the CUDA parity test
# (model on CUDA vs CPU on the tiny fixtures), write a Llama-7B-shaped bf16
# model with 128 rank-16 LoRA adapters, and run the decode benchmark (ours:
# base, one adapter, 32 distinct, 32 rows over 128 with a device tier of 16)
# and HF transformers + PEFT on the same shapes. Logs go to $OUT.
#   carry: [".gpu-tree" (or the repo), ".deps/debs", ".whl" (peft wheel)]
#   command: bash scripts/gpu/decode.sh [FIXTURES_DIR] [bench cases, default pabcd] [hf|nohf]
# FIXTURES_DIR: the tiny fixtures made by ctest (build-*/fixtures), carried.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
fixtures=$(realpath "${1:-fixtures}")
cases=${2:-pabcd}
hf=${3:-hf}
for f in .deps/debs/*.deb ../.deps/debs/*.deb; do [[ -f $f ]] && dpkg -x "$f" /; done
ldconfig
if ! python3 -c 'import peft' 2>/dev/null; then
  whl=$(ls .whl/peft-*.whl ../.whl/peft-*.whl 2>/dev/null | head -1)
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$whl" \
    && export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv,noheader
build=${ADAPTERD_GPU_BUILD:-/tmp/b}  # Kept between calls when it is an ignored repo path.
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADAPTERD_BUILD_SERVER=OFF \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
  -DPython3_EXECUTABLE="$(which python3)" > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
ninja -C "$build" -j16 cuda_parity_test gpu_decode_bench decode_attention_test attention_gpu_bench \
  > "$OUT/build.log" 2>&1 || { grep -m5 -A12 error "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
# The decode attention kernel: float64 reference, graph replay, through the
# cache; then its speed against SDPA over the same caches.
timeout 120 "$build/tests/kernels/decode_attention_test" > "$OUT/attention_test.log" 2>&1
echo "decode_attention_test rc=$?"
grep -E "max err|FAILED|PASSED|Failure|error" "$OUT/attention_test.log" | head -60
[[ ${ADAPTERD_ATTENTION_BENCH:-1} == 1 ]] && timeout 120 "$build/bench/attention_gpu_bench" 2>&1 \
  | tee "$OUT/attention_bench.log"
ADAPTERD_FIXTURES_DIR="$fixtures" timeout 120 "$build/tests/peft/cuda_parity_test" > "$OUT/test.log" 2>&1
echo "cuda_parity_test rc=$?"
grep -E "^CUDA |FAILED|PASSED|SKIPPED|Failure|error" "$OUT/test.log" | head -40
model=/tmp/l7
if [[ ! -f $model/model/model.safetensors ]]; then
  start=$(date +%s)
  python3 scripts/gpu/make_llama7b.py "$model" "$fixtures/models/llama/tokenizer.json" --adapters 128 \
    || exit 1
  echo "model: $(( $(date +%s) - start )) s"
fi
timeout 240 "$build/bench/gpu_decode_bench" --model "$model/model" --adapters "$model/adapters" \
  --cases "$cases" 2>&1 | tee "$OUT/bench.log"
[[ $hf == hf ]] || exit 0
PYTHONUNBUFFERED=1 python3 scripts/gpu/hf_peft_decode.py "$model/model" "$model/adapters" 2>&1 \
  | grep -v Warning | tee "$OUT/hf.log"
