// LoRA training throughput of engine/training (RunTraining: Forward over the
// packed rows, autograd, clipping, AdamW) on a model and a JSONL dataset.
// scripts/bench_train.sh runs it beside scripts/bench_train_peft.py (HF
// PEFT + torch on the same model, data, batch shapes and optimizer) and
// prints the ratio.
//
//   train_bench [--model DIR] [--data FILE] [--data-dir DIR] [--batch 8]
//               [--steps 30] [--warmup 3] [--rank 8] [--targets all-linear]
//               [--max-seq 128] [--threads N] [--device cpu|cuda]
//
// Without --model it uses the embedded default model. Prints one JSON line:
// {"tokens_per_second": ..., "step_ms": ..., "steps": ..., "tokens": ...},
// timed over the steps after the first `warmup` ones.

#include <ATen/Parallel.h>
#include <stdlib.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench/model_dir.h"
#include "engine/api/engine.h"
#include "engine/model/causal_lm.h"
#include "engine/model/tokenizer.h"
#include "engine/training/checkpoint.h"
#include "engine/training/trainer.h"

namespace adapterd {
namespace {

struct Flags {
  std::string model, data, data_dir = "/tmp/adapterd-bench", targets = "all-linear", device = "cpu";
  int batch = 8, steps = 30, warmup = 3, rank = 8, max_seq = 128, threads = 0;
};

Flags Parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") f.model = v;
    else if (k == "--data") f.data = v;
    else if (k == "--data-dir") f.data_dir = v;
    else if (k == "--targets") f.targets = v;
    else if (k == "--device") f.device = v;
    else if (k == "--batch") f.batch = std::atoi(v.c_str());
    else if (k == "--steps") f.steps = std::atoi(v.c_str());
    else if (k == "--warmup") f.warmup = std::atoi(v.c_str());
    else if (k == "--rank") f.rank = std::atoi(v.c_str());
    else if (k == "--max-seq") f.max_seq = std::atoi(v.c_str());
    else if (k == "--threads") f.threads = std::atoi(v.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", k.c_str());
      std::exit(2);
    }
  }
  return f;
}

int Main(int argc, char** argv) {
  const Flags f = Parse(argc, argv);
  if (f.threads > 0) at::set_num_threads(f.threads);
  const std::string dir = bench::ModelDirOrDefault(f.model, f.data_dir);
  if (dir.empty()) return 1;
  ModelLoadOptions load;
  load.device = f.device;
  auto model = CausalLM::Load(dir, load);
  auto tokenizer = Tokenizer::FromFile(dir + "/tokenizer.json");
  if (!model.ok() || !tokenizer.ok()) {
    std::fprintf(stderr, "cannot load %s\n", dir.c_str());
    return 1;
  }
  std::string work = f.data_dir + "/train_bench_XXXXXX";
  if (mkdtemp(work.data()) == nullptr) return 1;

  TrainingSpec spec;
  spec.method = TrainingMethod::kLora;
  spec.lora.rank = f.rank;
  spec.lora.alpha = 2.0 * f.rank;
  spec.lora.target_modules = {f.targets};
  spec.hyper.max_steps = f.steps;
  spec.hyper.batch_size = f.batch;
  spec.hyper.learning_rate = 1e-4;
  spec.hyper.lr_scheduler = "constant";
  spec.hyper.shuffle = false;
  spec.hyper.checkpoint_every = 0;
  spec.hyper.max_seq_length = f.max_seq;
  spec.dataset_path = f.data;
  spec.work_dir = work;
  spec.memory_budget_bytes = int64_t{64} << 30;

  using Clock = std::chrono::steady_clock;
  Clock::time_point timed_start;
  int64_t tokens_at_start = 0, tokens_at_end = 0;
  Clock::time_point timed_end;
  auto progress = [&](const TrainingProgress& p) {
    if (p.phase != TrainingPhase::kTraining) return;
    if (p.step == f.warmup) {
      timed_start = Clock::now();
      tokens_at_start = p.tokens_seen;
    }
    if (p.step == f.steps) {
      timed_end = Clock::now();
      tokens_at_end = p.tokens_seen;
    }
  };
  TrainerOptions options;
  options.context_length = model->get()->config().max_position_embeddings;
  CancellationToken cancel;
  auto result = RunTraining(TrainContext{model->get(), tokenizer->get(), &spec}, progress, cancel,
                            options);
  (void)RemoveTree(work);
  if (!result.ok()) {
    std::fprintf(stderr, "%s\n", result.status().ToString().c_str());
    return 1;
  }
  const double seconds = std::chrono::duration<double>(timed_end - timed_start).count();
  const int timed_steps = f.steps - f.warmup;
  std::printf("{\"tokens_per_second\": %.1f, \"step_ms\": %.2f, \"steps\": %d, \"tokens\": %lld, "
              "\"final_loss\": %.5f}\n",
              static_cast<double>(tokens_at_end - tokens_at_start) / seconds,
              1000.0 * seconds / timed_steps, timed_steps,
              static_cast<long long>(tokens_at_end - tokens_at_start), result->final_loss);
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) { return adapterd::Main(argc, argv); }
