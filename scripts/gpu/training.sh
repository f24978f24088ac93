#!/usr/bin/env bash
# On the GPU machine (run from the repo root, through the device tool): build
# the trainer's tests and benchmark, run them on CUDA against fixtures made on
# the dev machine (the GPU machine has no transformers/peft), then the
# training benchmark on the fixture llama and the default model. Logs to $OUT.
#   carry: [".deps/debs", ".deps/fixtures"]   (.deps/fixtures: models/ and training/
#          from build-*/fixtures, copied with symlinks resolved)
#   command: bash scripts/gpu/training.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
for f in .deps/debs/*.deb; do dpkg -x "$f" /; done
ldconfig
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
build=/tmp/b
cmake -S . -B "$build" -G Ninja -DADAPTERD_BUILD_SERVER=OFF \
  -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
  -DPython3_EXECUTABLE="$(which python3)" > "$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
start=$(date +%s)
ninja -C "$build" -j16 trainer_test training_learning_test train_bench > "$OUT/build.log" 2>&1 \
  || { grep -m5 -A12 error "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - start )) s"
export ADAPTERD_FIXTURES_DIR=$PWD/.deps/fixtures ADAPTERD_TEST_DEVICE=cuda
"$build/tests/training/trainer_test" > "$OUT/trainer_test.log" 2>&1
echo "trainer_test (cuda) rc=$?"
grep -E "^\[  (FAILED|PASSED) |Failure|differ|error" -A2 "$OUT/trainer_test.log" | head -60
"$build/tests/training/training_learning_test" > "$OUT/learning_test.log" 2>&1
echo "training_learning_test (cuda) rc=$?"
grep -E "held-out|FAILED|PASSED" "$OUT/learning_test.log"
python3 - "$OUT/bench.jsonl" <<'PY'
import json, random, sys
random.seed(7)
words = "the a cat dog sat ran over under model token adapter train serve fast slow red blue one two three".split()
with open(sys.argv[1], "w") as f:
    for _ in range(256):
        p = " ".join(random.choice(words) for _ in range(random.randint(6, 14)))
        c = " " + " ".join(random.choice(words) for _ in range(random.randint(3, 8)))
        f.write(json.dumps({"prompt": p, "completion": c}) + "\n")
PY
for dev in cuda cpu; do
  echo "train_bench default model $dev batch 8: $("$build/bench/train_bench" --device $dev --data "$OUT/bench.jsonl" --data-dir /tmp/tb --steps 30 --batch 8 2>&1 | tail -1)"
done
echo "train_bench default model cuda batch 32: $("$build/bench/train_bench" --device cuda --data "$OUT/bench.jsonl" --data-dir /tmp/tb --steps 30 --batch 32 2>&1 | tail -1)"
