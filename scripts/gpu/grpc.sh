#!/usr/bin/env bash
# On the GPU machine (run from the repo root, through the device tool): issue
# 8's decode benchmark through the real gRPC server. Builds adapterd (with the
# server) and the benchmarks, writes the Llama-7B-shaped bf16 model with 32
# rank-16 q/k/v/o LoRA adapters, runs the in-process benchmark (cases a: base,
# c: 32 distinct adapters), then starts adapterd on cuda/bf16 with the same 32
# start-up adapters and drives it with bench/grpc_load_bench (32 concurrent
# clients, each its own channel and thread, GenerateStream, ignore_eos), and
# prints gRPC / in-process tokens/s for each case. Logs go to $OUT.
#   carry: [".gpu-tree", ".deps/debs", ".deps/grpc-debs"]
#   command: bash scripts/gpu/grpc.sh [FIXTURES_DIR] [REQUESTS_PER_CLIENT, default 4]
# The debs: DESIGN.md §8 (gRPC 1.51, protobuf 3.21, CLI11, SQLite and spdlog
# headers from Debian 12, unpacked over /).
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
fixtures=$(realpath "${1:-fixtures}")
requests=${2:-4}
clients=32
for f in .deps/debs/*.deb ../.deps/debs/*.deb .deps/grpc-debs/*.deb ../.deps/grpc-debs/*.deb; do
  [[ -f $f ]] && dpkg -x "$f" /
done
ldconfig
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
build=/tmp/bg
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DADAPTERD_BUILD_SERVER=ON \
  -DADAPTERD_BUILD_TESTS=OFF \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
  -DPython3_EXECUTABLE="$(which python3)" > "$OUT/configure.log" 2>&1 \
  || { tail -40 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
ninja -C "$build" -j16 adapterd gpu_decode_bench grpc_load_bench > "$OUT/build.log" 2>&1 \
  || { grep -m5 -A12 -E "error|Error" "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
model=/tmp/l7
if [[ ! -f $model/model/model.safetensors ]]; then
  start=$(date +%s)
  python3 scripts/gpu/make_llama7b.py "$model" "$fixtures/models/llama/tokenizer.json" \
    --adapters $clients || exit 1
  echo "model: $(( $(date +%s) - start )) s"
fi

echo "== in process (bench/gpu_decode_bench, one round of $clients requests)"
"$build/bench/gpu_decode_bench" --model "$model/model" --adapters "$model/adapters" \
  --batch $clients --registered $clients --cases ac 2>&1 | tee "$OUT/inprocess.log"

echo "== through gRPC (adapterd on loopback; $clients clients x $requests requests each)"
adapter_flags=()
for ((k = 0; k < clients; ++k)); do adapter_flags+=(--adapter "a$k=$model/adapters/a$k"); done
"$build/server/adapterd" --model "$model/model" --device cuda --dtype bfloat16 \
  --insecure-no-auth --listen 127.0.0.1:50151 --data-dir /tmp/adata \
  --max-batch-size $clients --max-context 192 "${adapter_flags[@]}" > "$OUT/adapterd.log" 2>&1 &
server=$!
for ((i = 0; i < 300; ++i)); do
  grep -q "listening on" "$OUT/adapterd.log" && break
  kill -0 $server 2>/dev/null || break
  sleep 0.5
done
if ! grep -q "listening on" "$OUT/adapterd.log"; then
  echo "adapterd did not start:"; tail -20 "$OUT/adapterd.log"; kill $server 2>/dev/null; exit 1
fi
printf "%-5s%-28s %10s %8s %9s %9s %9s %9s %9s\n" "" "case" "tokens/s" "requests" \
  "p50_ms" "p99_ms" "ttft_p50" "ttft_p99" "tpot_p50" | tee "$OUT/grpc.log"
bench=("$build/bench/grpc_load_bench" --target 127.0.0.1:50151 --clients $clients
       --requests "$requests" --prompt 128 --new 64)
"${bench[@]}" --adapters base --label "(a) base" | tee -a "$OUT/grpc.log"
"${bench[@]}" --adapters distinct --label "(c) $clients distinct adapters" | tee -a "$OUT/grpc.log"
kill -TERM $server
wait $server
echo "adapterd exit: $?"

echo "== gRPC / in-process tokens/s"
for c in "(a)" "(c)"; do
  ours=$(grep -F "ours $c" "$OUT/inprocess.log" | awk '{print $(NF-5)}')
  grpc=$(grep -F "grpc $c" "$OUT/grpc.log" | awk '{print $(NF-6)}')
  awk -v c="$c" -v a="$grpc" -v b="$ours" \
    'BEGIN { printf "%s grpc %s / in-process %s = %.2fx\n", c, a, b, (b > 0 ? a / b : 0) }'
done
