// The loaded-adapter cache, through the public engine API:
//  1. cold load latency (disk → ready in the device tier) as a function of
//     the adapter's size (LoRA rank on q_proj and o_proj of every layer);
//  2. generation throughput over many registered adapters with a device tier
//     that holds 1/64 of them, against one that holds them all (prefetched),
//     for uniform and zipf(1.1) popularity, printed side by side.
//
//   adapter_cache_bench [--model DIR] [--data-dir DIR] [--device cpu] [--threads N]
//                       [--adapters 256] [--requests 512] [--new-tokens 16]
//
// Without --model it uses the embedded default model (Llama-shaped, 4 layers,
// hidden 256). Adapter files are written under DATA_DIR/bench-adapters and
// read back through the page cache: "disk" here is what the OS has cached.

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "bench/counting_sink.h"
#include "engine/api/engine.h"

namespace adapterd {
namespace {

using Clock = std::chrono::steady_clock;

// A random LoRA (F32) on q_proj and o_proj of every layer, written with our
// own minimal safetensors writer.
void WriteLora(const std::string& dir, int layers, int hidden, int rank, uint32_t seed) {
  std::filesystem::create_directories(dir);
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.05f, 0.05f);
  std::string header = "{";
  std::vector<float> data;
  auto add = [&](const std::string& name, int rows, int cols) {
    const size_t begin = data.size() * 4;
    for (int i = 0; i < rows * cols; ++i) data.push_back(u(rng));
    if (header.size() > 1) header += ",";
    header += absl::StrCat("\"", name, "\":{\"dtype\":\"F32\",\"shape\":[", rows, ",", cols,
                           "],\"data_offsets\":[", begin, ",", data.size() * 4, "]}");
  };
  for (int l = 0; l < layers; ++l) {
    for (const char* m : {"q_proj", "o_proj"}) {
      const std::string p = absl::StrCat("base_model.model.model.layers.", l, ".self_attn.", m);
      add(p + ".lora_A.weight", rank, hidden);
      add(p + ".lora_B.weight", hidden, rank);
    }
  }
  header += "}";
  while (header.size() % 8 != 0) header += " ";
  std::ofstream w(dir + "/adapter_model.safetensors", std::ios::binary);
  const uint64_t n = header.size();
  w.write(reinterpret_cast<const char*>(&n), 8);
  w.write(header.data(), static_cast<std::streamsize>(header.size()));
  w.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size() * 4));
  std::ofstream c(dir + "/adapter_config.json");
  c << "{\"peft_type\":\"LORA\",\"task_type\":\"CAUSAL_LM\",\"r\":" << rank
    << ",\"lora_alpha\":" << 2 * rank << ",\"target_modules\":[\"q_proj\",\"o_proj\"]}";
}

AdapterHandle Handle(const std::string& dir, const std::string& id) {
  AdapterHandle h;
  h.name = id;
  h.adapter_id = id;
  h.version = 1;
  h.dir = dir;
  return h;
}

bool WaitResident(Engine& engine, const std::string& id) {
  for (int i = 0; i < 2000000; ++i) {
    if (engine.CachedAdapterState(id, 1).residency == AdapterResidency::kDevice) return true;
    if (engine.Stats().adapter_cache.load_failures > 0) return false;
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  return false;
}

struct Throughput {
  double tokens_per_s = 0;
  AdapterCacheStats cache;
};

Throughput RunWorkload(Engine& engine, const std::vector<std::string>& dirs,
                       const std::vector<int>& picks, int new_tokens) {
  std::vector<GenerateRequest> requests;
  for (int k : picks) {
    GenerateRequest req;
    req.prompt = "Adapters served from a cache of loaded weights, ";
    req.sampling.max_tokens = new_tokens;
    req.sampling.ignore_eos = true;
    req.adapter_handle = Handle(dirs[k], absl::StrCat("a", k));
    requests.push_back(std::move(req));
  }
  const bench::Round r =
      bench::SubmitAndWait(engine, std::move(requests), bench::OnRefused::kSkip);
  return {static_cast<double>(r.tokens) / r.seconds, engine.Stats().adapter_cache};
}

int Main(int argc, char** argv) {
  EngineOptions options;
  options.data_dir = "./bench-data";
  options.limits.max_batch_size = 16;
  options.limits.max_queue = 1 << 16;
  int num_adapters = 256, requests = 512, new_tokens = 16;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model") {
      options.model_dir = value;
    } else if (flag == "--data-dir") {
      options.data_dir = value;
    } else if (flag == "--device") {
      options.device = value;
    } else if (flag == "--threads") {
      options.num_threads = std::stoi(value);
    } else if (flag == "--adapters") {
      num_adapters = std::stoi(value);
    } else if (flag == "--requests") {
      requests = std::stoi(value);
    } else if (flag == "--new-tokens") {
      new_tokens = std::stoi(value);
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  absl::StatusOr<std::unique_ptr<Engine>> probe = CreateEngine(options);
  if (!probe.ok()) {
    std::fprintf(stderr, "engine: %s\n", probe.status().ToString().c_str());
    return 1;
  }
  const ModelInfo info = (*probe)->info();
  (*probe)->Shutdown(absl::ZeroDuration());
  probe->reset();
  const int layers = static_cast<int>(info.num_layers), hidden = static_cast<int>(info.hidden_size);
  const std::string root = options.data_dir + "/bench-adapters";
  std::printf("model %s (%d layers, hidden %d) on %s\n\n", info.name.c_str(), layers, hidden,
              info.device.c_str());

  // 1. Cold load latency vs size.
  std::printf("cold load (disk -> ready), LoRA on q_proj+o_proj of every layer, 8 loads each:\n");
  std::printf("%8s %12s %12s %12s %12s\n", "rank", "bytes", "p50 ms", "max ms", "MB/s");
  {
    auto engine = CreateEngine(options);
    if (!engine.ok()) return 1;
    for (int rank : {4, 16, 64, 256, 1024}) {
      std::vector<double> ms;
      int64_t bytes = 0;
      for (int k = 0; k < 8; ++k) {
        const std::string id = absl::StrCat("cold-r", rank, "-", k);
        const std::string dir = root + "/" + id;
        WriteLora(dir, layers, hidden, rank, 100 + k);
        const auto t0 = Clock::now();
        if (!(*engine)->LoadAdapter(Handle(dir, id), /*pin=*/false).ok() ||
            !WaitResident(**engine, id)) {
          std::fprintf(stderr, "load of %s failed\n", id.c_str());
          return 1;
        }
        ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
        bytes = (*engine)->CachedAdapterState(id, 1).bytes;
        (*engine)->EvictAdapter(id, 1);
      }
      std::sort(ms.begin(), ms.end());
      std::printf("%8d %12lld %12.3f %12.3f %12.1f\n", rank, static_cast<long long>(bytes),
                  ms[ms.size() / 2], ms.back(), bytes / 1e6 / (ms[ms.size() / 2] / 1e3));
    }
    (*engine)->Shutdown(absl::Seconds(5));
  }

  // 2. Throughput: cache of 1/64 of the adapters vs all resident.
  std::vector<std::string> dirs;
  for (int k = 0; k < num_adapters; ++k) {
    dirs.push_back(absl::StrCat(root, "/tp-", k));
    WriteLora(dirs.back(), layers, hidden, 8, 1000 + k);
  }
  int64_t adapter_bytes = 0;
  {
    auto engine = CreateEngine(options);
    if (!engine.ok()) return 1;
    (*engine)->LoadAdapter(Handle(dirs[0], "a0"), false).IgnoreError();
    WaitResident(**engine, "a0");
    adapter_bytes = (*engine)->CachedAdapterState("a0", 1).bytes;
    (*engine)->Shutdown(absl::Seconds(5));
  }
  std::mt19937 rng(7);
  std::vector<int> uniform, zipf;
  std::vector<double> w;
  for (int k = 0; k < num_adapters; ++k) w.push_back(1.0 / std::pow(k + 1, 1.1));
  std::discrete_distribution<int> zd(w.begin(), w.end());
  std::uniform_int_distribution<int> ud(0, num_adapters - 1);
  for (int i = 0; i < requests; ++i) {
    uniform.push_back(ud(rng));
    zipf.push_back(zd(rng));
  }
  std::printf("\nthroughput: %d LoRA adapters (rank 8, %lld bytes each), %d requests x %d new "
              "tokens, batch %d\n",
              num_adapters, static_cast<long long>(adapter_bytes), requests, new_tokens,
              options.limits.max_batch_size);
  std::printf("%-10s %16s %16s %8s %10s %10s %10s\n", "workload", "all resident tok/s",
              "1/64 cached tok/s", "ratio", "misses", "evictions", "load p50");
  for (const auto& [label, picks] : {std::pair{"uniform", uniform}, std::pair{"zipf1.1", zipf}}) {
    EngineOptions all = options;
    all.adapter_cache_bytes = adapter_bytes * num_adapters;
    auto full = CreateEngine(all);
    if (!full.ok()) return 1;
    for (int k = 0; k < num_adapters; ++k) {
      (*full)->LoadAdapter(Handle(dirs[k], absl::StrCat("a", k)), false).IgnoreError();
    }
    for (int k = 0; k < num_adapters; ++k) WaitResident(**full, absl::StrCat("a", k));
    const Throughput t_all = RunWorkload(**full, dirs, picks, new_tokens);
    (*full)->Shutdown(absl::Seconds(5));

    EngineOptions small = options;
    small.adapter_cache_bytes = adapter_bytes * std::max(1, num_adapters / 64);
    small.adapter_host_cache_bytes = 0;
    auto cached = CreateEngine(small);
    if (!cached.ok()) return 1;
    const Throughput t_small = RunWorkload(**cached, dirs, picks, new_tokens);
    (*cached)->Shutdown(absl::Seconds(5));
    std::printf("%-10s %16.0f %16.0f %8.2f %10lld %10lld %8.2fms\n", label, t_all.tokens_per_s,
                t_small.tokens_per_s, t_small.tokens_per_s / t_all.tokens_per_s,
                static_cast<long long>(t_small.cache.misses),
                static_cast<long long>(t_small.cache.evictions), t_small.cache.load_ms_p50);
  }
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) { return adapterd::Main(argc, argv); }
