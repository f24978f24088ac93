// Step time of a decode batch whose rows use 32 distinct LoRA adapters
// (heterogeneous ranks, every linear layer targeted) against the same batch
// on the base model alone, measured side by side; prints the ratio.
//
//   lora_bench [--model DIR] [--data-dir DIR] [--rows 32] [--adapters 32]
//              [--past 64] [--steps 50] [--threads N] [--dtype float32]
//
// Without --model it uses the embedded default model (Llama-shaped, 4 layers,
// hidden 256). CPU; the numbers are for this machine only.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "bench/model_dir.h"
#include "engine/model/causal_lm.h"
#include "engine/peft/adapter.h"
#include "engine/runtime/kv_cache.h"

namespace adapterd {
namespace {

struct Flags {
  std::string model, data_dir = "/tmp/adapterd-bench", dtype = "float32";
  int rows = 32, adapters = 32, past = 64, steps = 50, threads = 0;
};

Flags Parse(int argc, char** argv) {
  Flags f;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--model")
      f.model = v;
    else if (k == "--data-dir")
      f.data_dir = v;
    else if (k == "--dtype")
      f.dtype = v;
    else if (k == "--rows")
      f.rows = std::atoi(v.c_str());
    else if (k == "--adapters")
      f.adapters = std::atoi(v.c_str());
    else if (k == "--past")
      f.past = std::atoi(v.c_str());
    else if (k == "--steps")
      f.steps = std::atoi(v.c_str());
    else if (k == "--threads")
      f.threads = std::atoi(v.c_str());
  }
  return f;
}

// A synthetic LoRA adapter on every linear layer, rank 4..16 by index.
std::shared_ptr<Adapter> MakeAdapter(CausalLM& model, int index) {
  auto a = std::make_shared<Adapter>();
  a->name = "bench" + std::to_string(index);
  const int64_t rank = 4 + (index % 4) * 4;
  const int layers = static_cast<int>(model.config().num_layers);
  const int modules = static_cast<int>(LinearModuleNames(model).size());
  a->lora.assign(layers, std::vector<std::optional<LoraWeights>>(modules));
  for (int l = 0; l < layers; ++l) {
    for (int m = 0; m < modules; ++m) {
      LinearRef ref = model.Linear(l, m);
      const int64_t in = ref.fan_in_fan_out ? ref.weight->size(0) : ref.weight->size(1);
      const int64_t out = ref.fan_in_fan_out ? ref.weight->size(1) : ref.weight->size(0);
      LoraWeights w;
      w.rank = rank;
      w.a = at::randn({rank, in}) * 0.02;
      w.b = at::randn({out, rank}) * 0.02;
      w.scaling = 2.0;
      a->lora[l][m] = std::move(w);
    }
  }
  return a;
}

double TimeSteps(CausalLM& model, KvCache& cache, const ForwardBatch& batch, int steps) {
  model.Forward(batch, cache);  // Warm-up.
  const auto start = std::chrono::steady_clock::now();
  for (int s = 0; s < steps; ++s) model.Forward(batch, cache);
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / steps;
}

int Main(int argc, char** argv) {
  Flags f = Parse(argc, argv);
  if (f.threads > 0) at::set_num_threads(f.threads);
  const std::string dir = bench::ModelDirOrDefault(f.model, f.data_dir);
  if (dir.empty()) return 1;
  ModelLoadOptions options;
  options.dtype = f.dtype;
  auto model = CausalLM::Load(dir, options);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return 1;
  }
  at::manual_seed(7);
  std::vector<std::shared_ptr<Adapter>> adapters;
  for (int i = 0; i < f.adapters; ++i) adapters.push_back(MakeAdapter(**model, i));
  auto cache = (*model)->NewCache(f.rows, f.past + 8);

  // Prefill every slot (base), then time one decode step of all rows.
  ForwardBatch prefill;
  for (int r = 0; r < f.rows; ++r) {
    prefill.slots.push_back(r);
    prefill.past_lens.push_back(0);
    prefill.tokens.push_back(std::vector<int32_t>(f.past, (r * 7) % 200 + 1));
  }
  (*model)->Forward(prefill, *cache);
  ForwardBatch base;
  for (int r = 0; r < f.rows; ++r) {
    base.slots.push_back(r);
    base.past_lens.push_back(f.past);
    base.tokens.push_back({(r * 13) % 200 + 1});
  }
  ForwardBatch lora = base;
  for (int r = 0; r < f.rows; ++r) lora.adapters.push_back(adapters[r % f.adapters].get());

  const double t_base = TimeSteps(**model, *cache, base, f.steps);
  const double t_lora = TimeSteps(**model, *cache, lora, f.steps);
  const double t_base2 = TimeSteps(**model, *cache, base, f.steps);
  const double base_s = std::min(t_base, t_base2);
  const ModelConfig& c = (*model)->config();
  std::printf("model: %s (%lld layers, hidden %lld), %s, %d threads\n", dir.c_str(),
              static_cast<long long>(c.num_layers), static_cast<long long>(c.hidden_size),
              f.dtype.c_str(), at::get_num_threads());
  std::printf(
      "decode step, %d rows (past %d), %d distinct LoRA adapters (ranks 4-16, all linears)\n",
      f.rows, f.past, f.adapters);
  std::printf("  base model alone : %8.3f ms/step\n", base_s * 1e3);
  std::printf("  32 LoRA adapters : %8.3f ms/step\n", t_lora * 1e3);
  std::printf("  ratio lora/base  : %8.2fx\n", t_lora / base_s);
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) { return adapterd::Main(argc, argv); }
