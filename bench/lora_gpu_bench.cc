// Batched heterogeneous LoRA on the GPU, side by side in one run: for a
// 4096x4096 bf16 projection with T tokens over N distinct rank-16 adapters,
// the base GEMM, our shrink+expand, and torch gather+bmm, each timed as CUDA
// graph replays over rotating inputs (so that weights come from HBM, not L2),
// and our achieved fraction of measured copy bandwidth. Ours twice, side by
// side: the split kernels (shrink, then expand as a dependent launch) and the
// fused single launch where it serves the shape (<= 8 tokens per adapter).
// Then the decode GEMM (LoraLinear): for decode row counts, the projection
// itself on tensor cores with the LoRA expand in its epilogue, against the
// base cuBLAS GEMM plus LoraApply; and a sweep of the Llama-7B projection
// shapes over its split counts and pipeline depths against cuBLAS.
//   lora_gpu_bench [--quick | --decode | --tables | --stream-check]
// (--tables: every table at full size, without the GEMM sweeps)

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_graph_timer.h"
#include "engine/kernels/lora_kernels.h"
#include "engine/kernels/lora_launch.h"

namespace adapterd {
namespace {

constexpr int64_t kHidden = 4096;
constexpr int64_t kRank = 16;
constexpr int64_t kPool = 2048;  // Adapters resident on the device (512 MiB of bf16).

using bench::CopyBandwidth;
using bench::TimeGraph;

// Per iteration i: inputs x [T, hidden] and T tokens spread over n adapters
// (slots i·n ... i·n + n − 1 of the pool, shuffled), as the kernels' index and
// as int64 slot ids for the torch baseline.
struct Batches {
  std::vector<at::Tensor> xs;
  std::vector<LoraBatchIndex> indexes;
  std::vector<at::Tensor> slot_ids;
};

std::optional<Batches> MakeBatches(int iters, int64_t t_count, int64_t n, std::mt19937& rng) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  Batches b;
  for (int i = 0; i < iters; ++i) {
    b.xs.push_back(at::randn({t_count, kHidden}, bf16));
    std::vector<int32_t> slots(t_count);
    for (int64_t t = 0; t < t_count; ++t) slots[t] = static_cast<int32_t>((i * n + t % n) % kPool);
    std::shuffle(slots.begin(), slots.end(), rng);
    absl::StatusOr<LoraBatchIndex> index = BuildLoraBatchIndex(slots, kPool, n, at::kCUDA);
    if (!index.ok()) return std::nullopt;
    b.indexes.push_back(*std::move(index));
    b.slot_ids.push_back(
        at::tensor(std::vector<int64_t>(slots.begin(), slots.end()), at::kLong).to(at::kCUDA));
  }
  return b;
}

// Weight copies that together exceed L2 several times, so that replays read HBM.
std::vector<at::Tensor> WeightCopies(int64_t n, int64_t k, const at::TensorOptions& opts) {
  const int64_t bytes = n * k * 2;
  const int64_t copies = std::clamp<int64_t>((int64_t{400} << 20) / bytes + 1, 2, 8);
  std::vector<at::Tensor> out;
  for (int64_t i = 0; i < copies; ++i) out.push_back(at::randn({n, k}, opts) / 64.0);
  return out;
}

// The Llama-7B projections the GEMM sweeps run (W is [n, k]).
struct ProjectionShape {
  const char* name;
  int64_t n, k;
};
constexpr ProjectionShape kProjectionShapes[] = {{"o 4096x4096", 4096, 4096},
                                                 {"qkv 12288x4096", 12288, 4096},
                                                 {"gate_up 22016x4096", 22016, 4096},
                                                 {"down 4096x11008", 4096, 11008},
                                                 {"lm_head 32000x4096", 32000, 4096}};

// The decode GEMM against cuBLAS at the Llama-7B projection shapes, M rows:
// every split count and depth, and the rule's choice (auto).
void SweepDecodeGemm(double copy_bw) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  std::printf(
      "\ndecode GEMM sweep (bf16, us per call, W from HBM; bw = W bytes / time / copy bw)\n");
  std::printf("%-20s %3s | %8s %5s | %8s %5s | %s\n", "shape", "M", "cublas", "bw", "auto", "bw",
              "splits/depth: us");
  for (const ProjectionShape& sh : kProjectionShapes) {
    const std::vector<at::Tensor> ws = WeightCopies(sh.n, sh.k, bf16);
    const int nw = static_cast<int>(ws.size());
    for (int64_t m : {8, 32}) {
      const at::Tensor x = at::randn({m, sh.k}, bf16);
      at::Tensor y = at::empty({m, sh.n}, bf16);
      const int iters = 4 * nw;
      const double wbytes = static_cast<double>(sh.n) * sh.k * 2;
      const double cublas = TimeGraph(iters, [&](int i) { at::mm_out(y, x, ws[i % nw].t()); });
      auto run = [&](int splits, int depth) {
        LoraLinearOptions o;
        o.gemm = LinearGemm::kDecode;
        o.splits = splits;
        o.depth = depth;
        if (!LoraLinear(x, ws[0], y, nullptr, nullptr, o).ok()) return -1.0;
        return TimeGraph(iters,
                         [&](int i) { (void)LoraLinear(x, ws[i % nw], y, nullptr, nullptr, o); });
      };
      const double autot = run(0, 0);
      std::printf("%-20s %3ld | %8.2f %4.0f%% | %8.2f %4.0f%% s=%d |", sh.name, m, cublas * 1e3,
                  100 * wbytes / (cublas * 1e-3) / copy_bw, autot * 1e3,
                  100 * wbytes / (autot * 1e-3) / copy_bw,
                  lora_internal::DecodeGemmAutoSplits(static_cast<int>(m), static_cast<int>(sh.n),
                                                      static_cast<int>(sh.k)));
      for (int splits : {1, 2, 4, 8}) {
        for (int depth : {2, 4}) {
          const double t = run(splits, depth);
          if (t < 0) {
            std::printf(" %d/%d: -", splits, depth);
          } else {
            std::printf(" %d/%d: %.2f", splits, depth, t * 1e3);
          }
        }
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
}

// The Llama-7B projections (LoRA on o, qkv, gate_up, down) with M rows over
// min(M, 32) distinct rank-16 adapters, every way LoraLinear runs them, each
// against the faster plain GEMM (at::mm's cuBLAS or cuBLASLt on the whole
// device): which path kAuto should take. lm_head: the plain GEMMs only.
void SweepProjections(double copy_bw) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  std::printf(
      "\nprojections (bf16, us per call, W and adapters from HBM): mm = at::mm, lt = cuBLASLt on "
      "the whole device,\nlt_c = cuBLASLt leaving kOverlapSms SMs free, +apply = kTorch (mm, "
      "then LoraApply after it), ov = kOverlap,\ndg = kDecode (- where it does not serve), auto = "
      "kAuto; % = add-on against b = min(mm, lt); bw of copy bw\n");
  std::printf("%-20s %3s %3s | %8s %5s %8s %8s | %8s %5s | %8s %5s | %8s %5s | %8s %5s\n", "shape",
              "M", "N", "mm", "bw", "lt", "lt_c", "+apply", "%", "ov", "%", "dg", "%", "auto", "%");
  constexpr int64_t kShapePool = 128;
  std::mt19937 rng(11);
  for (const ProjectionShape& sh : kProjectionShapes) {
    const bool lora = sh.n != 32000;
    const std::vector<at::Tensor> ws = WeightCopies(sh.n, sh.k, bf16);
    const int nw = static_cast<int>(ws.size());
    std::optional<LoraWeightTable> table;
    at::Tensor a_pool, b_pool;
    if (lora) {
      a_pool = at::randn({kShapePool, kRank, sh.k}, bf16) / 64.0;
      b_pool = at::randn({kShapePool, sh.n, kRank}, bf16) / 4.0;
      LoraWeightTableBuilder builder(1, kShapePool);
      for (int64_t i = 0; i < kShapePool; ++i) {
        LoraSliceWeights w;
        w.a = a_pool[i];
        w.b = b_pool[i];
        w.scale = 2.0f;
        if (!builder.Set(0, i, w).ok()) return;
      }
      absl::StatusOr<LoraWeightTable> built = builder.Build();
      if (!built.ok()) return;
      table = *std::move(built);
    }
    for (int64_t m : {1, 8, 16, 32}) {
      const int64_t n = std::min<int64_t>(m, 32);
      const int iters = std::max(4 * nw, 16);
      const double wbytes = static_cast<double>(sh.n) * sh.k * 2;
      const at::Tensor x = at::randn({m, sh.k}, bf16);
      at::Tensor y = at::empty({m, sh.n}, bf16);
      std::vector<LoraBatchIndex> indexes;
      for (int i = 0; lora && i < iters; ++i) {
        std::vector<int32_t> slots(m);
        for (int64_t t = 0; t < m; ++t)
          slots[t] = static_cast<int32_t>((i * n + t % n) % kShapePool);
        std::shuffle(slots.begin(), slots.end(), rng);
        absl::StatusOr<LoraBatchIndex> index = BuildLoraBatchIndex(slots, kShapePool, n, at::kCUDA);
        if (!index.ok()) return;
        indexes.push_back(*std::move(index));
      }
      bool ok = true;
      auto time = [&](LinearGemm gemm, int overlap_sms, bool with_lora) {
        LoraLinearOptions o;
        o.gemm = gemm;
        o.overlap_sms = overlap_sms;
        if (with_lora && !LoraLinear(x, ws[0], y, &*table, &indexes[0], o).ok()) {
          return -1.0;
        }
        return TimeGraph(iters, [&](int i) {
          ok &= with_lora ? LoraLinear(x, ws[i % nw], y, &*table, &indexes[i], o).ok()
                          : LoraLinear(x, ws[i % nw], y, nullptr, nullptr, o).ok();
        });
      };
      const double mm = TimeGraph(iters, [&](int i) { at::mm_out(y, x, ws[i % nw].t()); });
      const double lt = time(LinearGemm::kOverlap, -1, false);
      const double lt_c = time(LinearGemm::kOverlap, 0, false);
      const double b = std::min(mm, lt);
      auto col = [&](double t) {
        char buf[32];
        if (t < 0) {
          std::snprintf(buf, sizeof(buf), "%8s %5s", "-", "-");
        } else {
          std::snprintf(buf, sizeof(buf), "%8.2f %4.0f%%", t * 1e3, 100 * (t - b) / b);
        }
        return std::string(buf);
      };
      std::string cols;
      if (lora) {
        cols = col(time(LinearGemm::kTorch, 0, true)) + " | " +
               col(time(LinearGemm::kOverlap, 0, true)) + " | " +
               col(time(LinearGemm::kDecode, 0, true)) + " | " +
               col(time(LinearGemm::kAuto, 0, true));
      }
      std::printf("%-20s %3ld %3ld | %8.2f %4.0f%% %8.2f %8.2f | %s%s\n", sh.name, m, lora ? n : 0,
                  mm * 1e3, 100 * wbytes / (mm * 1e-3) / copy_bw, lt * 1e3, lt_c * 1e3,
                  cols.c_str(), ok ? "" : " (failed)");
      std::fflush(stdout);
    }
  }
}

// The streaming GEMM (TMA pipeline) against cuBLAS at the Llama-7B projection
// shapes, M rows: its rule's choice (auto) and tile widths x splits x stages.
void SweepStreamGemm(double copy_bw) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  std::printf(
      "\nstream GEMM sweep (bf16, us per call, W from HBM; bw = W bytes / time / copy bw)\n");
  std::printf("%-20s %3s | %8s %5s | %8s %5s | %s\n", "shape", "M", "cublas", "bw", "auto", "bw",
              "t<tile cols> splits/stages: us");
  for (const ProjectionShape& sh : kProjectionShapes) {
    const std::vector<at::Tensor> ws = WeightCopies(sh.n, sh.k, bf16);
    const int nw = static_cast<int>(ws.size());
    for (int64_t m : {1, 8, 32}) {
      const at::Tensor x = at::randn({m, sh.k}, bf16);
      at::Tensor y = at::empty({m, sh.n}, bf16);
      const int iters = 4 * nw;
      const double wbytes = static_cast<double>(sh.n) * sh.k * 2;
      const double cublas = TimeGraph(iters, [&](int i) { at::mm_out(y, x, ws[i % nw].t()); });
      auto run = [&](int tile, int splits, int stages) {
        LoraLinearOptions o;
        o.gemm = LinearGemm::kStream;
        o.tile_cols = tile;
        o.splits = splits;
        o.depth = stages;
        if (!LoraLinear(x, ws[0], y, nullptr, nullptr, o).ok()) return -1.0;
        return TimeGraph(iters,
                         [&](int i) { (void)LoraLinear(x, ws[i % nw], y, nullptr, nullptr, o); });
      };
      const double autot = run(0, 0, 0);
      const at::Tensor want = at::mm(x, ws[0].t());
      LoraLinearOptions o;
      o.gemm = LinearGemm::kStream;
      (void)LoraLinear(x, ws[0], y, nullptr, nullptr, o);
      const double err =
          ((y.to(at::kFloat) - want.to(at::kFloat)).norm() / want.to(at::kFloat).norm())
              .item<double>();
      std::printf("%-20s %3ld | %8.2f %4.0f%% | %8.2f %4.0f%% err %.1e |", sh.name, m, cublas * 1e3,
                  100 * wbytes / (cublas * 1e-3) / copy_bw, autot * 1e3,
                  100 * wbytes / (autot * 1e-3) / copy_bw, err);
      for (int tile : {64, 128}) {
        std::printf(" t%d", tile);
        for (int splits : {1, 2, 4, 8}) {
          for (int stages : {4, 8, 12}) {
            const double t = run(tile, splits, stages);
            if (t < 0) {
              std::printf(" %d/%d: -", splits, stages);
            } else {
              std::printf(" %d/%d: %.2f", splits, stages, t * 1e3);
            }
          }
        }
      }
      std::printf("\n");
      std::fflush(stdout);
    }
  }
}

// The streaming GEMM's determinism and error against fp32 at::mm over split
// counts and stage counts (few stages: several CTAs per SM; many tiles:
// several waves): lora_gpu_bench --stream-check
int StreamCheck() {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  struct Case {
    int64_t m, n, k;
    int splits, stages, tile;
  };
  const Case cases[] = {{32, 22016, 4096, 8, 3, 64},  {32, 22016, 4096, 8, 16, 64},
                        {32, 22016, 4096, 4, 3, 128}, {32, 22016, 4096, 2, 3, 64},
                        {32, 22016, 4096, 1, 3, 128}, {32, 4096, 4096, 8, 3, 128},
                        {32, 4096, 4096, 2, 3, 64},   {8, 22016, 4096, 8, 3, 64},
                        {8, 22016, 4096, 8, 5, 128},  {32, 12288, 4096, 1, 4, 0}};
  int bad = 0;
  for (const Case& c : cases) {
    const at::Tensor x = at::randn({c.m, c.k}, bf16);
    const at::Tensor w = at::randn({c.n, c.k}, bf16) / 64.0;
    const at::Tensor want = at::mm(x.to(at::kFloat), w.to(at::kFloat).t());
    LoraLinearOptions o;
    o.gemm = LinearGemm::kStream;
    o.splits = c.splits;
    o.depth = c.stages;
    o.tile_cols = c.tile;
    at::Tensor y1 = at::full({c.m, c.n}, std::nan(""), bf16);
    at::Tensor y2 = at::full({c.m, c.n}, std::nan(""), bf16);
    const bool ok = LoraLinear(x, w, y1, nullptr, nullptr, o).ok() &&
                    LoraLinear(x, w, y2, nullptr, nullptr, o).ok();
    const at::Tensor d = (y1.to(at::kFloat) - want).abs();
    const int64_t differ = (y1 != y2).sum().item<int64_t>();
    const int64_t far = (d > 0.02 * (want.abs() + 0.1)).sum().item<int64_t>();
    const at::Tensor rows_far = (d > 0.02 * (want.abs() + 0.1)).any(1).nonzero().flatten();
    const at::Tensor cols_far = (d > 0.02 * (want.abs() + 0.1)).any(0).nonzero().flatten();
    std::printf(
        "stream check m=%ld n=%ld k=%ld splits=%d stages=%d tile=%d: ok=%d differ=%ld far=%ld "
        "max=%.3e rows=%ld cols=%ld first col %ld\n",
        c.m, c.n, c.k, c.splits, c.stages, c.tile, ok, differ, far, d.max().item<double>(),
        rows_far.numel(), cols_far.numel(), cols_far.numel() ? cols_far[0].item<int64_t>() : -1);
    bad += !ok || differ > 0 || far > 0;
  }
  return bad == 0 ? 0 : 1;
}

// Issue 4's decode shape with the LoRA in the GEMM: a 4096x4096 projection,
// T rows over N distinct rank-16 adapters. cublas = at::mm alone; +apply =
// at::mm then LoraApply (kAuto); dg = the decode GEMM alone; dg+lora =
// LoraLinear with the adapters (shrink, then the GEMM with the expand in its
// epilogue). add = (dg+lora - dg): the LoRA's cost, against both bases.
int DecodeLora(const LoraWeightTable& table, const at::Tensor& a_pool, const at::Tensor& b_pool,
               float scale, double copy_bw, bool quick) {
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const std::vector<at::Tensor> ws = WeightCopies(kHidden, kHidden, bf16);
  const int nw = static_cast<int>(ws.size());
  std::printf(
      "\nLoRA in the decode GEMM's epilogue (4096x4096, rank 16; us per call; add = dg+lora - "
      "dg)\n");
  std::printf(
      "(+apply = LoraLinear(kTorch): cuBLAS, then LoraApply as its programmatic dependent; st = "
      "the stream GEMM,\nst+lora = LoraLinear(kStream) with the adapters, st+l/cb = (st+lora - "
      "cublas) / cublas)\n");
  std::printf(
      "(lt = cuBLASLt alone on the whole device (kOverlap, overlap_sms -1); ov+lora = "
      "kOverlap with them: cuBLASLt\non all but kOverlapSms SMs, the LoRA beside it on a forked "
      "stream, then the delta add; ov/b = (ov+lora - b) / b,\nb = the faster of cublas and lt; "
      "ov_err = its error against fp32)\n");
  std::printf(
      "%4s %4s | %8s %8s %7s | %8s %5s %8s | %7s %6s %6s | %8s %8s %7s | %8s %8s %6s %8s | %8s\n",
      "T", "N", "cublas", "+apply", "apply/b", "dg", "dg_bw", "dg+lora", "add", "add/cb", "add/dg",
      "st", "st+lora", "st+l/cb", "lt", "ov+lora", "ov/b", "ov_err", "relerr");
  std::mt19937 rng(5);
  const std::vector<int64_t> token_counts =
      quick ? std::vector<int64_t>{32} : std::vector<int64_t>{1, 8, 16, 32};
  for (int64_t t_count : token_counts) {
    for (int64_t n : {1, 8, 32}) {
      if (n > t_count) continue;
      const int iters = 64;
      const std::optional<Batches> batches = MakeBatches(iters, t_count, n, rng);
      if (!batches) return 1;
      const auto& [xs, indexes, slot_ids] = *batches;
      at::Tensor y = at::empty({t_count, kHidden}, bf16);
      const std::vector<at::Tensor> ys = {y};
      LoraLinearOptions decode;
      decode.gemm = LinearGemm::kDecode;
      LoraLinearOptions torch_gemm;
      torch_gemm.gemm = LinearGemm::kTorch;
      LoraLinearOptions stream;
      stream.gemm = LinearGemm::kStream;
      LoraLinearOptions overlap;
      overlap.gemm = LinearGemm::kOverlap;
      bool ok = true;
      const double cublas = TimeGraph(iters, [&](int i) { at::mm_out(y, xs[i], ws[i % nw].t()); });
      const double apply = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], ws[i % nw], y, &table, &indexes[i], torch_gemm).ok();
      });
      const double st = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], ws[i % nw], y, nullptr, nullptr, stream).ok();
      });
      const double stl = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], ws[i % nw], y, &table, &indexes[i], stream).ok();
      });
      const double dg = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], ws[i % nw], y, nullptr, nullptr, decode).ok();
      });
      const double dgl = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], ws[i % nw], y, &table, &indexes[i], decode).ok();
      });
      LoraLinearOptions lt_full = overlap;
      lt_full.overlap_sms = -1;
      const double lt = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], ws[i % nw], y, nullptr, nullptr, lt_full).ok();
      });
      const double ovl = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], ws[i % nw], y, &table, &indexes[i], overlap).ok();
      });
      if (!ok) {
        std::printf("decode gemm call failed\n");
        return 1;
      }
      // One call against fp32 torch: base + gathered LoRA.
      y.fill_(std::nan(""));
      ok &= LoraLinear(xs[0], ws[0], y, &table, &indexes[0], overlap).ok();
      const at::Tensor y_overlap = y.to(at::kFloat);
      ok &= LoraLinear(xs[0], ws[0], y, &table, &indexes[0], decode).ok();
      const at::Tensor xf = xs[0].to(at::kFloat);
      const at::Tensor want =
          at::mm(xf, ws[0].to(at::kFloat).t()) +
          at::bmm(at::bmm(xf.unsqueeze(1),
                          a_pool.index_select(0, slot_ids[0]).to(at::kFloat).transpose(1, 2)),
                  b_pool.index_select(0, slot_ids[0]).to(at::kFloat).transpose(1, 2))
                  .squeeze(1) *
              scale;
      const double err = ((y.to(at::kFloat) - want).norm() / want.norm()).item<double>();
      const double ov_err = ((y_overlap - want).norm() / want.norm()).item<double>();
      const double wbytes = static_cast<double>(kHidden) * kHidden * 2;
      const double add = dgl - dg;
      const double best_base = std::min(cublas, lt);
      std::printf(
          "%4ld %4ld | %8.2f %8.2f %6.0f%% | %8.2f %4.0f%% %8.2f | %7.2f %5.0f%% %5.0f%% | "
          "%8.2f %8.2f %6.0f%% | %8.2f %8.2f %5.0f%% %8.1e | %8.1e\n",
          t_count, n, cublas * 1e3, apply * 1e3, 100 * (apply - cublas) / cublas, dg * 1e3,
          100 * wbytes / (dg * 1e-3) / copy_bw, dgl * 1e3, add * 1e3, 100 * add / cublas,
          100 * add / dg, st * 1e3, stl * 1e3, 100 * (stl - cublas) / cublas, lt * 1e3, ovl * 1e3,
          100 * (ovl - best_base) / best_base, ov_err, err);
      if (t_count == 32 && n == 32) {  // The SMs left to the LoRA, swept.
        std::printf("       overlap_sms sweep (ov+lora us, ov/b):");
        for (int sms : {8, 16, 24, 32, 48, 64}) {
          LoraLinearOptions o = overlap;
          o.overlap_sms = sms;
          const double t = TimeGraph(iters, [&](int i) {
            ok &= LoraLinear(xs[i], ws[i % nw], y, &table, &indexes[i], o).ok();
          });
          std::printf(" %d: %.2f %.0f%%", sms, t * 1e3, 100 * (t - best_base) / best_base);
        }
        std::printf("\n");
      }
      std::fflush(stdout);
      if (!ok) return 1;
    }
  }
  return 0;
}

int Main(bool quick, bool decode_only, bool sweeps) {
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
  if (int rc = DecodeLora(*table, a_pool, b_pool, scale, copy_bw, quick); rc != 0) return rc;
  SweepProjections(copy_bw);
  if (sweeps) {  // The sweeps take a minute.
    SweepStreamGemm(copy_bw);
    SweepDecodeGemm(copy_bw);
  }
  if (decode_only) return 0;
  std::vector<at::Tensor> base_w;
  for (int i = 0; i < 8; ++i) base_w.push_back(at::randn({kHidden, kHidden}, bf16) / 64.0);

  const std::vector<int64_t> token_counts =
      quick ? std::vector<int64_t>{32, 512} : std::vector<int64_t>{1, 8, 32, 128, 512, 2048};
  const std::vector<int64_t> adapter_counts =
      quick ? std::vector<int64_t>{32, 128} : std::vector<int64_t>{1, 8, 32, 128};
  std::printf(
      "\nlora = LoraApply(kSplit): shrink, then expand as a dependent launch; fused = "
      "LoraApply(kFused),\none launch (- where it does not serve the shape: > 8 tokens per "
      "adapter);\nseq = base GEMM then LoraApply(kAuto) in one graph, seq_add = (seq - base) / "
      "base; "
      "pdl = the same with\nLoraApply's first kernel a programmatic dependent of the GEMM "
      "(after_base_gemm), pdl_add = (pdl - base) / base;\nlt = cuBLASLt alone, ovl = "
      "LoraLinear(kOverlap): the LoRA beside a cuBLASLt GEMM leaving SMs free, ovl_add = (ovl - "
      "b) / b,\nb = the faster of base and lt; bw_frac = of the faster of lora and fused\n");
  std::printf(
      "\n%6s %5s %5s | %9s %9s %7s | %9s %7s | %9s %7s | %9s %7s | %8s %8s %7s | %9s %7s | "
      "%8s %7s | %9s %9s | %8s %8s\n",
      "T", "N", "Neff", "base_us", "lora_us", "lora/b", "fused_us", "fused/b", "seq_us", "seq_add",
      "pdl_us", "pdl_add", "lt_us", "ovl_us", "ovl_add", "torch_us", "torch/b", "MB", "bw_frac",
      "shrink_us", "expand_us", "relerr", "f_relerr");
  std::mt19937 rng(1);
  for (int64_t t_count : token_counts) {
    for (int64_t n : adapter_counts) {
      const int64_t n_eff = std::min(n, t_count);
      const int iters = static_cast<int>(std::clamp<int64_t>(kPool / n_eff, 8, 256));
      const std::optional<Batches> batches = MakeBatches(iters, t_count, n_eff, rng);
      if (!batches) return 1;
      const auto& [xs, indexes, slot_ids] = *batches;
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
      // The projection as the model runs it: the base GEMM, then LoraApply
      // (kAuto) queued after it, plain (seq) and with its first kernel a
      // programmatic dependent of the GEMM (pdl: launch, index and weight
      // reads overlap the GEMM's tail; y is touched after the GEMM is done).
      auto projection = [&](bool pdl) {
        return TimeGraph(iters, [&](int i) {
          at::mm_out(y, xs[i], base_w[i % 8].t());
          ok &= LoraApply(xs[i], *table, indexes[i], ys, LoraApplyOptions{.after_base_gemm = pdl})
                    .ok();
        });
      };
      const double seq_ms = projection(false);
      const double pdl_ms = projection(true);
      // LinearGemm::kOverlap: cuBLASLt leaving SMs free, the LoRA beside it
      // (ovl), and the cuBLASLt GEMM alone on the whole device (lt).
      LoraLinearOptions overlap;
      overlap.gemm = LinearGemm::kOverlap;
      LoraLinearOptions lt_full = overlap;
      lt_full.overlap_sms = -1;
      const double lt_ms = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], base_w[i % 8], y, nullptr, nullptr, lt_full).ok();
      });
      const double ovl_ms = TimeGraph(iters, [&](int i) {
        ok &= LoraLinear(xs[i], base_w[i % 8], y, &*table, &indexes[i], overlap).ok();
      });
      const double best_base_ms = std::min(base_ms, lt_ms);
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
          "%8.2f %6.0f%% | %9.2f %6.0f%% | %8.2f %6.0f%% | %9.2f %9.2f | %8.1e %s\n",
          t_count, n, n_eff, base_ms * 1e3, lora_ms * 1e3, 100 * lora_ms / base_ms, fused_cols,
          seq_ms * 1e3, 100 * (seq_ms - base_ms) / base_ms, pdl_ms * 1e3,
          100 * (pdl_ms - base_ms) / base_ms, lt_ms * 1e3, ovl_ms * 1e3,
          100 * (ovl_ms - best_base_ms) / best_base_ms, torch_ms * 1e3, 100 * torch_ms / base_ms,
          bytes / 1e6, 100 * frac, shrink_ms * 1e3, expand_ms * 1e3, err, fused_err_col);
      std::fflush(stdout);
    }
  }
  return 0;
}

// One decode GEMM call of a given shape, for a profiler:
//   lora_gpu_bench --one M N K SPLITS DEPTH
int ProfileOne(int m, int n, int k, int splits, int depth) {
  const c10::cuda::CUDAGuard device_guard(at::Device(at::kCUDA, 0));
  const auto bf16 = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const at::Tensor x = at::randn({m, k}, bf16);
  const at::Tensor w = at::randn({n, k}, bf16);
  const at::Tensor y = at::empty({m, n}, bf16);
  LoraLinearOptions o;
  o.gemm = LinearGemm::kDecode;
  o.splits = splits;
  o.depth = depth;
  for (int i = 0; i < 3; ++i) {
    if (!LoraLinear(x, w, y, nullptr, nullptr, o).ok()) return 1;
  }
  c10::cuda::device_synchronize();
  return 0;
}

}  // namespace
}  // namespace adapterd

int main(int argc, char** argv) {
  if (argc == 7 && std::strcmp(argv[1], "--one") == 0) {
    return adapterd::ProfileOne(std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]),
                                std::atoi(argv[5]), std::atoi(argv[6]));
  }
  if (argc == 2 && std::strcmp(argv[1], "--stream-check") == 0) {
    const c10::cuda::CUDAGuard device_guard(at::Device(at::kCUDA, 0));
    return adapterd::StreamCheck();
  }
  const bool quick = argc > 1 && std::strcmp(argv[1], "--quick") == 0;
  const bool decode = argc > 1 && std::strcmp(argv[1], "--decode") == 0;
  const bool tables = argc > 1 && std::strcmp(argv[1], "--tables") == 0;
  return adapterd::Main(quick, decode, /*sweeps=*/!quick && !tables);
}
