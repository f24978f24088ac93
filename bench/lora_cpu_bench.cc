// The grouped CPU LoRA path (one at::mm per adapter and slice) against a
// per-token loop (two at::mm per token), side by side in one run.
//   lora_cpu_bench

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <random>
#include <vector>

#include "engine/kernels/lora_kernels.h"

namespace adapterd {
namespace {

double MedianMs(const std::function<void()>& body, int reps = 5) {
  body();
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    body();
    ms.push_back(
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() / 2];
}

int Main() {
  constexpr int64_t kHidden = 4096, kRank = 16, kSlots = 64;
  at::manual_seed(0);
  std::vector<LoraSliceWeights> w(kSlots);
  LoraWeightTableBuilder builder(1, kSlots);
  for (int64_t i = 0; i < kSlots; ++i) {
    w[i].a = at::randn({kRank, kHidden}) / 64.0;
    w[i].b = at::randn({kHidden, kRank}) / 4.0;
    w[i].scale = 2.0f;
    if (!builder.Set(0, i, w[i]).ok()) return 1;
  }
  absl::StatusOr<LoraWeightTable> table = builder.Build();
  if (!table.ok()) return 1;
  std::printf("fp32, hidden %ld, rank %ld, threads %d\n%6s %4s | %10s %10s %8s\n", kHidden, kRank,
              at::get_num_threads(), "T", "N", "grouped_ms", "loop_ms", "speedup");
  std::mt19937 rng(1);
  for (int64_t t_count : {8, 64, 512}) {
    for (int64_t n : {1, 8, 64}) {
      std::vector<int32_t> slots(t_count);
      for (int64_t t = 0; t < t_count; ++t)
        slots[t] = static_cast<int32_t>(t % std::min(n, t_count));
      std::shuffle(slots.begin(), slots.end(), rng);
      absl::StatusOr<LoraBatchIndex> index = BuildLoraBatchIndex(slots, kSlots, n, at::kCPU);
      if (!index.ok()) return 1;
      const at::Tensor x = at::randn({t_count, kHidden});
      at::Tensor y = at::zeros({t_count, kHidden});
      const std::vector<at::Tensor> ys = {y};
      const double grouped = MedianMs([&] { (void)LoraApply(x, *table, *index, ys); });
      const double loop = MedianMs([&] {
        for (int64_t t = 0; t < t_count; ++t) {
          const LoraSliceWeights& a = w[slots[t]];
          const at::Tensor v = at::mm(x.narrow(0, t, 1), a.a.t());
          y.narrow(0, t, 1).add_(at::mm(v, a.b.t()), a.scale);
        }
      });
      std::printf("%6ld %4ld | %10.3f %10.3f %7.1fx\n", t_count, n, grouped, loop, loop / grouped);
    }
  }
  return 0;
}

}  // namespace
}  // namespace adapterd

int main() { return adapterd::Main(); }
