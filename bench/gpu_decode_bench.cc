// Decode throughput of the engine on a GPU, through the public engine API
// (continuous batching, adapter cache, sampler included), on a Llama-7B-shaped
// model (scripts/gpu/make_llama7b.py writes one with random bf16 weights and
// rank-16 q/k/v/o LoRA adapters a0..aN-1):
//   (a) the base model, (b) every row on one adapter, (c) every row on its own
//   adapter, (d) rows over --registered adapters served through the adapter
//   cache with a device tier of --tier adapters;
// and the bandwidth floor of a decode step (weight bytes / measured copy
// bandwidth). Case p first profiles Forward alone (host enqueue time against
// step time; the LoRA kernels against the ATen path). Run by
// scripts/gpu/decode.sh beside HF transformers + PEFT.
//
//   gpu_decode_bench --model DIR --adapters DIR [--batch 32] [--prompt 128]
//                    [--new 64] [--registered 128] [--tier 16] [--cases pabcd]
// (p: the forward alone at the batch size; q: the same at batch 8)
//
// tokens/s counts every generated token over the whole round (prefill
// included, as `generate` is timed); ms/step is the decode step time,
// (t(new) - t(1)) / (steps(new) - steps(1)).

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAFunctions.h>

#include <dlfcn.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/counting_sink.h"
#include "engine/api/engine.h"
#include "engine/model/causal_lm.h"
#include "engine/peft/adapter.h"
#include "engine/peft/batch_adapters.h"
#include "engine/runtime/kv_cache.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using bench::Round;

// One request per entry of `adapters` ("" = base; "@K" = store adapter K
// through the cache; else a start-up adapter's name).
Round RunRound(Engine& engine, const std::vector<std::string>& adapters, const std::string& dir,
               int prompt_tokens, int new_tokens) {
  std::vector<GenerateRequest> requests;
  for (size_t b = 0; b < adapters.size(); ++b) {
    GenerateRequest req;
    for (int i = 0; i < prompt_tokens; ++i) {
      req.prompt_ids.push_back(static_cast<int32_t>((b * 31 + i * 7) % 500 + 3));
    }
    req.sampling.max_tokens = new_tokens;
    req.sampling.ignore_eos = true;
    const std::string& a = adapters[b];
    if (!a.empty() && a[0] == '@') {
      AdapterHandle h;
      h.name = "a" + a.substr(1);
      h.adapter_id = h.name;
      h.version = 1;
      h.dir = dir + "/" + h.name;
      h.method = "lora";
      req.adapter = h.name;
      req.adapter_handle = h;
    } else {
      req.adapter = a;
    }
    requests.push_back(std::move(req));
  }
  return bench::SubmitAndWait(engine, std::move(requests));
}

// Device-to-device copy bandwidth (bytes read + written per second).
double CopyBandwidth() {
  const int64_t n = int64_t{1} << 30;  // 1 GiB each way.
  at::Tensor a = at::empty({n}, at::TensorOptions().dtype(at::kByte).device(at::kCUDA)).fill_(1);
  at::Tensor b = at::empty_like(a);
  for (int i = 0; i < 3; ++i) b.copy_(a);
  c10::cuda::device_synchronize();
  const int iters = 20;
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < iters; ++i) b.copy_(a);
  c10::cuda::device_synchronize();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 2.0 * static_cast<double>(n) * iters / s;
}

// Brings the GPU out of its idle clocks: ~1 s of large bf16 GEMMs (the first
// case after an idle period otherwise runs slower, whatever it is).
void WarmGpu() {
  const auto options = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  at::Tensor a = at::randn({8192, 8192}, options);
  at::Tensor b = at::randn({8192, 8192}, options);
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::seconds(1)) {
    for (int i = 0; i < 10; ++i) at::mm(a, b);
    c10::cuda::device_synchronize();
  }
}

// cudaProfilerStart/Stop from the CUDA runtime torch loaded (no link-time
// dependency on cudart here).
void CallCudart(const char* name) {
  using Fn = int (*)();
  if (auto fn = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, name))) fn();
}

// Where a decode step's time goes, on the model alone (no engine): per step,
// the host time to enqueue Forward and the time until the GPU is done, for
// the base model, distinct adapters through the batched kernels, and the same
// adapters through the ATen grouped path; the projections through cuBLAS (with
// LoraApply after each) and through the decode GEMM (LoRA in its epilogue).
void ProfileForward(const std::string& model_dir, const std::string& adapter_dir, int batch,
                    int prompt) {
  ModelLoadOptions load;
  load.device = "cuda";
  load.dtype = "bfloat16";
  auto model = CausalLM::Load(model_dir, load);
  if (!model.ok()) {
    std::fprintf(stderr, "%s\n", model.status().ToString().c_str());
    return;
  }
  std::vector<std::shared_ptr<const Adapter>> aten, kernels;
  for (int k = 0; k < batch; ++k) {
    auto a = LoadAdapter(absl::StrCat("a", k), absl::StrCat(adapter_dir, "/a", k), **model);
    if (!a.ok()) {
      std::fprintf(stderr, "%s\n", a.status().ToString().c_str());
      return;
    }
    aten.push_back(*a);
    kernels.push_back(WithLoraKernels(*a, (*model)->dtype()));
  }
  const c10::NoGradGuard no_grad;
  const char* profile_mode = std::getenv("ADAPTERD_PROFILE_MODE");
  std::printf("%-40s %12s %12s %8s  (batch %d)\n", "forward only (decode step)", "enqueue_ms",
              "step_ms", "graphs", batch);
  struct Mode {
    const char* name;
    int adapters;  // 0 base, 1 kernels, 2 ATen path.
    bool graphs;
    bool decode_gemm;  // The projections through the decode GEMM (LoRA in its epilogue).
  };
  const Mode modes[] = {{"warm-up: base, eager (first use is slow)", 0, false, false},
                        {"base, eager, cuBLAS", 0, false, false},
                        {"base, CUDA graph, cuBLAS", 0, true, false},
                        {"base, eager, decode GEMM", 0, false, true},
                        {"base, CUDA graph, decode GEMM", 0, true, true},
                        {"adapters, kernels, eager, cuBLAS", 1, false, false},
                        {"adapters, kernels, CUDA graph, cuBLAS", 1, true, false},
                        {"adapters, kernels, eager, decode GEMM", 1, false, true},
                        {"adapters, kernels, CUDA graph, dec GEMM", 1, true, true},
                        {"adapters, ATen path (eager)", 2, false, false}};
  for (const Mode& mode : modes) {
    (*model)->set_cuda_graphs(mode.graphs);
    (*model)->set_decode_gemm(mode.decode_gemm);
    WarmGpu();
    auto cache = (*model)->NewCache(batch, prompt + 64);
    ForwardBatch b;
    for (int r = 0; r < batch; ++r) {
      b.slots.push_back(r);
      b.past_lens.push_back(0);
      std::vector<int32_t> ids;
      for (int i = 0; i < prompt; ++i) ids.push_back((r * 31 + i * 7) % 500 + 3);
      b.tokens.push_back(std::move(ids));
      if (mode.adapters > 0) {
        b.adapters.push_back(mode.adapters == 1 ? kernels[r].get() : aten[r].get());
      }
    }
    (*model)->Forward(b, *cache);
    c10::cuda::device_synchronize();
    double enqueue = 0, total = 0;
    const int steps = 24, warm = 4;
    const int64_t replays = (*model)->decode_graph_replays();
    for (int s = 0; s < steps; ++s) {
      for (int r = 0; r < batch; ++r) {
        b.past_lens[r] = prompt + s;
        b.tokens[r] = {static_cast<int32_t>((r + s) % 500 + 3)};
      }
      // ADAPTERD_PROFILE_MODE=<part of a mode's name>: a profiler started with
      // profiling off (ncu --profile-from-start off) sees this one step.
      const bool profile = s == warm && profile_mode != nullptr &&
                           std::strstr(mode.name, profile_mode) != nullptr;
      if (profile) CallCudart("cudaProfilerStart");
      const auto t0 = std::chrono::steady_clock::now();
      (*model)->Forward(b, *cache);
      const auto t1 = std::chrono::steady_clock::now();
      c10::cuda::device_synchronize();
      const auto t2 = std::chrono::steady_clock::now();
      if (profile) CallCudart("cudaProfilerStop");
      if (s < warm) continue;
      enqueue += std::chrono::duration<double>(t1 - t0).count();
      total += std::chrono::duration<double>(t2 - t0).count();
    }
    std::printf("%-40s %12.2f %12.2f %8lld\n", mode.name, 1e3 * enqueue / (steps - warm),
                1e3 * total / (steps - warm),
                static_cast<long long>((*model)->decode_graph_replays() - replays));
  }
  std::printf("\n");
}

struct Shape {
  int64_t layers, hidden, heads, kv_heads, head_dim, inter, vocab;
};

Shape ReadShape(const std::string& model_dir) {
  std::ifstream in(model_dir + "/config.json");
  nlohmann::json j = nlohmann::json::parse(in);
  Shape s;
  s.layers = j["num_hidden_layers"];
  s.hidden = j["hidden_size"];
  s.heads = j["num_attention_heads"];
  s.kv_heads = j.value("num_key_value_heads", s.heads);
  s.head_dim = j.value("head_dim", s.hidden / s.heads);
  s.inter = j["intermediate_size"];
  s.vocab = j["vocab_size"];
  return s;
}

int Main(int argc, char** argv) {
  std::string model_dir, adapter_dir, cases = "abcd";
  int batch = 32, prompt = 128, new_tokens = 64, registered = 128, tier = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model")
      model_dir = value;
    else if (flag == "--adapters")
      adapter_dir = value;
    else if (flag == "--cases")
      cases = value;
    else if (flag == "--batch")
      batch = std::atoi(value.c_str());
    else if (flag == "--prompt")
      prompt = std::atoi(value.c_str());
    else if (flag == "--new")
      new_tokens = std::atoi(value.c_str());
    else if (flag == "--registered")
      registered = std::atoi(value.c_str());
    else if (flag == "--tier")
      tier = std::atoi(value.c_str());
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (model_dir.empty() || adapter_dir.empty() || new_tokens < 2) {
    std::fprintf(stderr, "usage: gpu_decode_bench --model DIR --adapters DIR [--new N>=2] ...\n");
    return 2;
  }
  const Shape sh = ReadShape(model_dir);
  const int64_t q_out = sh.heads * sh.head_dim, kv_out = sh.kv_heads * sh.head_dim;
  const double weight_bytes =
      2.0 * (sh.layers * (sh.hidden * (q_out + 2 * kv_out) + q_out * sh.hidden +
                          3 * sh.hidden * sh.inter + 2 * sh.hidden) +
             sh.vocab * sh.hidden + sh.hidden);
  // Rank-16 A and B on q/k/v/o, bf16, per adapter.
  const double adapter_bytes =
      2.0 * sh.layers * 16 * ((sh.hidden + q_out) + 2 * (sh.hidden + kv_out) + (q_out + sh.hidden));
  // Keys and values read per decode step at the mean cache length.
  const double kv_bytes = 2.0 * 2 * sh.layers * kv_out * batch * (prompt + new_tokens / 2.0);
  const double bw = CopyBandwidth();
  const double floor_ms = 1e3 * weight_bytes / bw;
  std::printf(
      "copy bandwidth %.0f GB/s; weights %.2f GB/step -> floor %.3f ms/step = %.0f tokens/s"
      " at batch %d\n",
      bw / 1e9, weight_bytes / 1e9, floor_ms, batch / floor_ms * 1e3, batch);
  std::printf(
      "(also read per step: KV cache %.2f GB at the mean length; LoRA %.3f GB per distinct "
      "adapter)\n\n",
      kv_bytes / 1e9, adapter_bytes / 1e9);

  if (cases.find('p') != std::string::npos) ProfileForward(model_dir, adapter_dir, batch, prompt);
  // A small batch, where the decode GEMM takes the adapted projections.
  if (cases.find('q') != std::string::npos) ProfileForward(model_dir, adapter_dir, 8, prompt);

  EngineOptions options;
  options.model_dir = model_dir;
  options.device = "cuda";
  options.dtype = "bfloat16";
  options.limits.max_batch_size = batch;
  options.max_context = prompt + new_tokens;
  for (int k = 0; k < batch; ++k) {
    options.adapters.push_back({absl::StrCat("a", k), absl::StrCat(adapter_dir, "/a", k)});
  }
  // Device tier of `tier` adapters as the cache counts them (fp32 LoRA bytes),
  // host tier for all.
  const int64_t cache_bytes_per_adapter = static_cast<int64_t>(adapter_bytes) * 2;
  options.adapter_cache_bytes = cache_bytes_per_adapter * tier;
  options.adapter_host_cache_bytes = cache_bytes_per_adapter * (registered + 1);
  auto engine = CreateEngine(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  std::printf("batch %d, prompt %d, %d new tokens; %d start-up adapters; cache tier %d of %d\n\n",
              batch, prompt, new_tokens, batch, tier, registered);
  std::printf("%-5s%-28s %10s %10s %10s %6s %8s %9s\n", "", "case", "tokens/s", "ms/step",
              "prefill_ms", "steps", "floor", "vs_base");
  double base_ms = 0;
  std::mt19937 rng(42);
  for (char c : cases) {
    std::vector<std::string> rows(batch);
    std::string name;
    if (c == 'a') {
      name = "(a) base";
    } else if (c == 'b') {
      name = "(b) one adapter";
      for (auto& r : rows) r = "a0";
    } else if (c == 'c') {
      name = absl::StrCat("(c) ", batch, " distinct adapters");
      for (int k = 0; k < batch; ++k) rows[k] = absl::StrCat("a", k);
    } else if (c == 'd') {
      name = absl::StrCat("(d) ", registered, " adapters, tier ", tier);
      for (auto& r : rows) r = absl::StrCat("@", rng() % registered);
    } else {
      continue;
    }
    RunRound(**engine, rows, adapter_dir, prompt, 2);  // Warm-up (and host-tier loads).
    WarmGpu();
    const Round one = RunRound(**engine, rows, adapter_dir, prompt, 1);
    const Round full = RunRound(**engine, rows, adapter_dir, prompt, new_tokens);
    const double ms =
        1e3 * (full.seconds - one.seconds) / std::max<int64_t>(1, full.steps - one.steps);
    if (c == 'a') base_ms = ms;
    std::printf("ours %-28s %10.1f %10.2f %10.1f %6lld %7.0f%% %8.2fx\n", name.c_str(),
                full.tokens / full.seconds, ms, 1e3 * one.seconds,
                static_cast<long long>(full.steps), 100.0 * floor_ms / ms,
                base_ms > 0 ? base_ms / ms : 0.0);
    std::fflush(stdout);
  }
  const EngineStats stats = (*engine)->Stats();
  std::printf(
      "\nadapter cache: device hits %lld, host hits %lld, misses %lld, loads %lld, "
      "evictions %lld\n",
      static_cast<long long>(stats.adapter_cache.device_hits),
      static_cast<long long>(stats.adapter_cache.host_hits),
      static_cast<long long>(stats.adapter_cache.misses),
      static_cast<long long>(stats.adapter_cache.loads),
      static_cast<long long>(stats.adapter_cache.evictions));
  (*engine)->Shutdown(absl::ZeroDuration());
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) { return adapterd::Main(argc, argv); }
