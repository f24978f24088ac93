// Decode throughput of the engine on this machine: tokens/s and time per
// decode step for several batch sizes, through the public engine API.
//
//   decode_bench [--model DIR] [--data-dir DIR] [--device cpu] [--dtype float32]
//                [--batches 1,8,32] [--prompt-tokens 32] [--new-tokens 64] [--threads N]
//
// Without --model it uses the embedded default model (Llama-shaped, 4 layers,
// hidden 256). Each batch size runs once to warm up, then is timed.

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/counting_sink.h"
#include "engine/api/engine.h"

namespace adapterd {
namespace {

using bench::Round;

Round RunRound(Engine& engine, int batch, int prompt_tokens, int new_tokens) {
  std::vector<GenerateRequest> requests;
  for (int b = 0; b < batch; ++b) {
    GenerateRequest req;
    for (int i = 0; i < prompt_tokens; ++i) req.prompt_ids.push_back((b * 31 + i * 7) % 200 + 1);
    req.sampling.max_tokens = new_tokens;
    req.sampling.ignore_eos = true;
    requests.push_back(std::move(req));
  }
  return bench::SubmitAndWait(engine, std::move(requests));
}

int Main(int argc, char** argv) {
  EngineOptions options;
  options.data_dir = "./data";
  std::vector<int> batches = {1, 8, 32};
  int prompt_tokens = 32;
  int new_tokens = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const std::string value = argv[i + 1];
    if (flag == "--model") {
      options.model_dir = value;
    } else if (flag == "--data-dir") {
      options.data_dir = value;
    } else if (flag == "--device") {
      options.device = value;
    } else if (flag == "--dtype") {
      options.dtype = value;
    } else if (flag == "--threads") {
      options.num_threads = std::atoi(value.c_str());
    } else if (flag == "--prompt-tokens") {
      prompt_tokens = std::atoi(value.c_str());
    } else if (flag == "--new-tokens") {
      new_tokens = std::atoi(value.c_str());
    } else if (flag == "--batches") {
      batches.clear();
      for (absl::string_view part : absl::StrSplit(value, ',')) {
        int b = 0;
        if (absl::SimpleAtoi(part, &b) && b > 0) batches.push_back(b);
      }
    } else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  int max_batch = 1;
  for (int b : batches) max_batch = std::max(max_batch, b);
  options.limits.max_batch_size = max_batch;
  auto engine = CreateEngine(options);
  if (!engine.ok()) {
    std::fprintf(stderr, "%s\n", engine.status().ToString().c_str());
    return 1;
  }
  const ModelInfo& info = (*engine)->info();
  std::printf("model %s (%s, %lld layers, hidden %lld, vocab %lld) dtype %s device %s\n",
              info.name.c_str(), info.architecture.c_str(),
              static_cast<long long>(info.num_layers), static_cast<long long>(info.hidden_size),
              static_cast<long long>(info.vocab_size), info.dtype.c_str(), info.device.c_str());
  std::printf("prompt %d tokens, %d new tokens per request\n\n", prompt_tokens, new_tokens);
  std::printf("%6s %12s %12s %12s %14s\n", "batch", "tokens/s", "ms/step", "steps", "vs batch 1");
  double base_tps = 0;
  for (int batch : batches) {
    RunRound(**engine, batch, prompt_tokens, std::min(new_tokens, 8));  // Warm-up.
    const Round r = RunRound(**engine, batch, prompt_tokens, new_tokens);
    const double tps = r.tokens / r.seconds;
    if (base_tps == 0) base_tps = tps;
    std::printf("%6d %12.1f %12.2f %12lld %13.2fx\n", batch, tps,
                1000.0 * r.seconds / std::max<int64_t>(1, r.steps), static_cast<long long>(r.steps),
                tps / base_tps);
  }
  (*engine)->Shutdown(absl::ZeroDuration());
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) { return adapterd::Main(argc, argv); }
