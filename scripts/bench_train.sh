#!/usr/bin/env bash
# LoRA training throughput: bench/train_bench (engine/training) beside HF PEFT
# (scripts/bench_train_peft.py) on the same model, data and batch shapes, one
# after the other on the same cores; prints both and the ratio ours / PEFT.
#   scripts/bench_train.sh [--model DIR] [--batch 8] [--steps 30] [--threads 2] [--rows 256]
# Without --model: the embedded default model (materialised by train_bench).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh
py="$ADAPTERD_VENV/bin/python"
model="" batch=8 steps=30 threads=2 rows=256 targets=all-linear
while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) model="$2" ;; --batch) batch="$2" ;; --steps) steps="$2" ;;
    --threads) threads="$2" ;; --rows) rows="$2" ;; --targets) targets="$2" ;;
    *) echo "unknown flag $1" >&2; exit 2 ;;
  esac
  shift 2
done
bench="$ADAPTERD_BUILD_DIR/bench/train_bench"
[[ -x "$bench" ]] || { echo "build it first: scripts/build.sh train_bench" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if [[ -z "$model" ]]; then
  # train_bench materialises the default model into its data dir; run one step to get its path.
  "$bench" --data-dir "$tmp" --data /dev/null --steps 1 >/dev/null 2>&1 || true
  model=$(find "$tmp" -name config.json -printf '%h\n' | head -1)
fi
"$py" - "$tmp/data.jsonl" "$rows" <<'PY'
import json, random, sys
random.seed(7)
words = "the a cat dog sat ran over under model token adapter train serve fast slow red blue one two three".split()
with open(sys.argv[1], "w") as f:
    for _ in range(int(sys.argv[2])):
        p = " ".join(random.choice(words) for _ in range(random.randint(6, 14)))
        c = " " + " ".join(random.choice(words) for _ in range(random.randint(3, 8)))
        f.write(json.dumps({"prompt": p, "completion": c}) + "\n")
PY
args=(--batch "$batch" --steps "$steps" --threads "$threads" --targets "$targets")
ours=$("$bench" --model "$model" --data "$tmp/data.jsonl" --data-dir "$tmp" "${args[@]}")
peft=$("$py" scripts/bench_train_peft.py --model "$model" --data "$tmp/data.jsonl" "${args[@]}")
echo "model: $model  batch $batch  steps $steps (3 untimed)  threads $threads  targets $targets"
echo "ours: $ours"
echo "peft: $peft"
"$py" -c "import json,sys; o=json.loads(sys.argv[1]); p=json.loads(sys.argv[2]); print(f'tokens/s ratio ours/PEFT: {o[\"tokens_per_second\"]/p[\"tokens_per_second\"]:.2f}')" "$ours" "$peft"
