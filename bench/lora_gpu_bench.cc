// Batched heterogeneous LoRA on the GPU, side by side in one run: for a
// 4096x4096 bf16 projection with T tokens over N distinct rank-16 adapters,
// the base GEMM, our shrink+expand, and torch gather+bmm, each timed as CUDA
// graph replays over rotating inputs (so that weights come from HBM, not L2),
// and our achieved fraction of measured copy bandwidth. Ours twice, side by
// side: the split kernels (shrink, then expand as a dependent launch) and the
// fused single launch where it serves the shape (<= 8 tokens per adapter).
//   lora_gpu_bench [--quick]

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <vector>

#include "engine/kernels/lora_kernels.h"

namespace adapterd {
namespace {

constexpr int64_t kHidden = 4096;
constexpr int64_t kRank = 16;
constexpr int64_t kPool = 2048;  // Adapters resident on the device (512 MiB of bf16).

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median milliseconds per iteration of `body(i)` for i in [0, iters), captured
// into one CUDA graph.
double TimeGraph(int iters, const std::function<void(int)>& body, int replays = 10) {
  const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  const c10::cuda::CUDAStreamGuard guard(stream);
  body(0);  // Warm-up: handles, workspaces, lazy init.
  stream.synchronize();
  at::cuda::CUDAGraph graph;
  graph.capture_begin();
  for (int i = 0; i < iters; ++i) body(i);
  graph.capture_end();
  graph.replay();
  graph.replay();
  std::vector<double> ms;
  for (int r = 0; r < replays; ++r) {
    at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
    start.record(stream);
    graph.replay();
    end.record(stream);
    end.synchronize();
    ms.push_back(start.elapsed_time(end) / iters);
  }
  return Median(ms);
}

double CopyBandwidth() {
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  const int64_t bytes = int64_t{1} << 31;
  at::Tensor src = at::randn({bytes / 4}, opts);
  at::Tensor dst = at::empty({bytes / 4}, opts);
  // A graph's memcpy node may run on the copy engines; an elementwise kernel
  // streams through the SMs. The faster of the two is the ceiling.
  const double memcpy_ms = TimeGraph(8, [&](int) { dst.copy_(src); });
  const double kernel_ms = TimeGraph(8, [&](int) { at::neg_out(dst, src); });
  std::printf("copy: memcpy %.0f GB/s, elementwise kernel %.0f GB/s (read+write)\n",
              2.0 * bytes / (memcpy_ms * 1e-3) / 1e9, 2.0 * bytes / (kernel_ms * 1e-3) / 1e9);
  return 2.0 * bytes / (std::min(memcpy_ms, kernel_ms) * 1e-3);
}

int Main(bool quick) {
  if (!at::hasCUDA()) {
    std::printf("lora_gpu_bench: no CUDA device\n");
    return 0;
  }
  const c10::cuda::CUDAGuard device_guard(at::Device(at::kCUDA, 0));
  const double copy_bw = CopyBandwidth();
  std::printf("device copy bandwidth: %.0f GB/s (read+write)\n", copy_bw / 1e9);

  at::manual_seed(0);
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  // Adapter pool, stacked for the torch baseline; our table points into it.
  const at::Tensor a_pool = at::randn({kPool, kRank, kHidden}, bf16) / 64.0;
  const at::Tensor b_pool = at::randn({kPool, kHidden, kRank}, bf16) / 4.0;
  const float scale = 2.0f;
  LoraWeightTableBuilder builder(1, kPool);
  std::vector<LoraSliceWeights> weights(kPool);
  for (int64_t i = 0; i < kPool; ++i) {
    weights[i].a = a_pool[i];
    weights[i].b = b_pool[i];
    weights[i].scale = scale;
    if (!builder.Set(0, i, weights[i]).ok()) return 1;
  }
  absl::StatusOr<LoraWeightTable> table = builder.Build();
  if (!table.ok()) return 1;
  std::vector<at::Tensor> base_w;
  for (int i = 0; i < 8; ++i) base_w.push_back(at::randn({kHidden, kHidden}, bf16) / 64.0);

  const std::vector<int64_t> token_counts =
      quick ? std::vector<int64_t>{32, 512} : std::vector<int64_t>{1, 8, 32, 128, 512, 2048};
  const std::vector<int64_t> adapter_counts =
      quick ? std::vector<int64_t>{32, 128} : std::vector<int64_t>{1, 8, 32, 128};
  std::printf(
      "\nlora = LoraApply(kSplit): shrink, then expand as a dependent launch; fused = "
      "LoraApply(kFused),\none launch (- where it does not serve the shape: > 8 tokens per "
      "adapter); overlap = base GEMM\nwith the shrink on a side stream, then the expand; "
      "ovl_add = (overlap - base) / base;\nbw_frac = of the faster of lora and fused\n");
  std::printf(
      "\n%6s %5s %5s | %9s %9s %7s | %9s %7s | %9s %7s | %9s %7s | %8s %7s | %9s %9s | "
      "%8s %8s\n",
      "T", "N", "Neff", "base_us", "lora_us", "lora/b", "fused_us", "fused/b", "overlap", "ovl_add",
      "torch_us", "torch/b", "MB", "bw_frac", "shrink_us", "expand_us", "relerr", "f_relerr");
  std::mt19937 rng(1);
  for (int64_t t_count : token_counts) {
    for (int64_t n : adapter_counts) {
      const int64_t n_eff = std::min(n, t_count);
      const int iters = static_cast<int>(std::clamp<int64_t>(kPool / n_eff, 8, 256));
      std::vector<at::Tensor> xs, slot_ids;
      std::vector<LoraBatchIndex> indexes;
      for (int i = 0; i < iters; ++i) {
        xs.push_back(at::randn({t_count, kHidden}, bf16));
        std::vector<int32_t> slots(t_count);
        for (int64_t t = 0; t < t_count; ++t)
          slots[t] = static_cast<int32_t>((i * n_eff + t % n_eff) % kPool);
        std::shuffle(slots.begin(), slots.end(), rng);
        absl::StatusOr<LoraBatchIndex> index = BuildLoraBatchIndex(slots, kPool, n_eff, at::kCUDA);
        if (!index.ok()) return 1;
        indexes.push_back(*std::move(index));
        slot_ids.push_back(
            at::tensor(std::vector<int64_t>(slots.begin(), slots.end()), at::kLong).to(at::kCUDA));
      }
      at::Tensor y = at::zeros({t_count, kHidden}, bf16);
      at::Tensor v = at::empty({1, t_count, kRank}, bf16.dtype(at::kFloat));
      const std::vector<at::Tensor> ys = {y};

      const double base_ms =
          TimeGraph(iters, [&](int i) { at::mm_out(y, xs[i], base_w[i % 8].t()); });
      bool ok = true;
      const double lora_ms = TimeGraph(iters, [&](int i) {
        ok &= LoraApply(xs[i], *table, indexes[i], ys, LoraPath::kSplit).ok();
      });
      const bool fusable = LoraApply(xs[0], *table, indexes[0], ys, LoraPath::kFused).ok();
      const double fused_ms =
          fusable
              ? TimeGraph(iters,
                          [&](int i) {
                            ok &= LoraApply(xs[i], *table, indexes[i], ys, LoraPath::kFused).ok();
                          })
              : 0.0;
      // How the model runs it: the shrink on a side stream alongside the base
      // GEMM (it needs only x), the expand after the GEMM (it adds into y).
      std::vector<at::Tensor> vbufs;
      std::vector<at::cuda::CUDAEvent> events(2 * iters);
      for (int i = 0; i < iters; ++i)
        vbufs.push_back(at::empty({1, t_count, kRank}, bf16.dtype(at::kFloat)));
      const c10::cuda::CUDAStream side = c10::cuda::getStreamFromPool();
      const double overlap_ms = TimeGraph(iters, [&](int i) {
        const c10::cuda::CUDAStream main = c10::cuda::getCurrentCUDAStream();
        events[2 * i].record(main);
        events[2 * i].block(side);
        {
          const c10::cuda::CUDAStreamGuard g(side);
          ok &= LoraShrink(xs[i], *table, indexes[i], vbufs[i]).ok();
          events[2 * i + 1].record(side);
        }
        at::mm_out(y, xs[i], base_w[i % 8].t());
        events[2 * i + 1].block(main);
        ok &= LoraExpand(vbufs[i], *table, indexes[i], ys).ok();
      });
      const double shrink_ms =
          TimeGraph(iters, [&](int i) { ok &= LoraShrink(xs[i], *table, indexes[i], v).ok(); });
      const double expand_ms =
          TimeGraph(iters, [&](int i) { ok &= LoraExpand(v, *table, indexes[i], ys).ok(); });
      // The gathers are large at big T: fewer iterations keep the graph's pool small.
      const double torch_ms = TimeGraph(std::min(iters, 8), [&](int i) {
        const at::Tensor at_ = a_pool.index_select(0, slot_ids[i]);  // [T, r, H]
        const at::Tensor bt = b_pool.index_select(0, slot_ids[i]);   // [T, H, r]
        const at::Tensor vv = at::bmm(xs[i].unsqueeze(1), at_.transpose(1, 2));
        y.add_(at::bmm(vv, bt.transpose(1, 2)).squeeze(1), scale);
      });
      if (!ok) {
        std::printf("lora call failed\n");
        return 1;
      }
      // Correctness of one iteration against the torch path in fp32.
      const at::Tensor want =
          at::bmm(at::bmm(xs[0].unsqueeze(1).to(at::kFloat),
                          a_pool.index_select(0, slot_ids[0]).to(at::kFloat).transpose(1, 2)),
                  b_pool.index_select(0, slot_ids[0]).to(at::kFloat).transpose(1, 2))
              .squeeze(1) *
          scale;
      auto rel_err = [&](LoraPath path) {
        y.zero_();
        if (!LoraApply(xs[0], *table, indexes[0], ys, path).ok()) return -1.0;
        return ((y.to(at::kFloat) - want).norm() / want.norm()).item<double>();
      };
      const double err = rel_err(LoraPath::kSplit);
      const double fused_err = fusable ? rel_err(LoraPath::kFused) : 0.0;
      if (err < 0 || fused_err < 0) return 1;

      const double bytes =
          static_cast<double>(n_eff) * 2 * kRank * kHidden * 2 + 3.0 * t_count * kHidden * 2;
      const double best_ms = fusable ? std::min(lora_ms, fused_ms) : lora_ms;
      const double frac = bytes / (best_ms * 1e-3) / copy_bw;
      char fused_cols[64] = "        -       - ";
      char fused_err_col[16] = "       -";
      if (fusable) {
        std::snprintf(fused_cols, sizeof(fused_cols), "%9.2f %6.0f%%", fused_ms * 1e3,
                      100 * fused_ms / base_ms);
        std::snprintf(fused_err_col, sizeof(fused_err_col), "%8.1e", fused_err);
      }
      std::printf(
          "%6ld %5ld %5ld | %9.2f %9.2f %6.0f%% | %s | %9.2f %6.0f%% | %9.2f %6.0f%% | %8.2f "
          "%6.0f%% | %9.2f %9.2f | %8.1e %s\n",
          t_count, n, n_eff, base_ms * 1e3, lora_ms * 1e3, 100 * lora_ms / base_ms, fused_cols,
          overlap_ms * 1e3, 100 * (overlap_ms - base_ms) / base_ms, torch_ms * 1e3,
          100 * torch_ms / base_ms, bytes / 1e6, 100 * frac, shrink_ms * 1e3, expand_ms * 1e3, err,
          fused_err_col);
      std::fflush(stdout);
    }
  }
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) {
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  return adapterd::Main(quick);
}
