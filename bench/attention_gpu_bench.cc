// Decode attention on the GPU, side by side in one run: our kernel
// (engine/kernels/decode_attention.h: each row's keys read in place up to its
// own position) against what the engine ran before it, SDPA over the
// consecutive slots' cache narrowed to the longest row with an additive mask
// (cuDNN/flash as torch picks). Each timed as CUDA graph replays rotating
// over 8 caches (so that keys come from HBM, not L2), bf16, with the bytes
// of keys and values each row must read over the measured copy bandwidth.
//   attention_gpu_bench

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "bench/cuda_graph_timer.h"
#include "engine/kernels/decode_attention.h"

namespace adapterd {
namespace {

constexpr int kCaches = 8;

using bench::TimeGraph;

struct Shape {
  int64_t rows, heads, kv_heads, head_dim, len;
  bool spread;  // Row lengths uniform in [1, len] instead of all len.
  std::string name;
};

void Run(const Shape& s, double copy_bps) {
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(at::kCUDA);
  const int64_t max_len = s.len;
  std::vector<at::Tensor> keys, values;
  for (int c = 0; c < kCaches; ++c) {
    keys.push_back(at::randn({s.rows, s.kv_heads, max_len, s.head_dim}, opts));
    values.push_back(at::randn({s.rows, s.kv_heads, max_len, s.head_dim}, opts));
  }
  std::mt19937 rng(42);
  std::uniform_int_distribution<int64_t> len(1, s.len);
  std::vector<int64_t> positions, slots;
  int64_t keys_read = 0;
  for (int64_t r = 0; r < s.rows; ++r) {
    const int64_t n = s.spread ? len(rng) : s.len;
    positions.push_back(n - 1);
    slots.push_back(r);
    keys_read += n;
  }
  const int64_t bound = *std::max_element(positions.begin(), positions.end()) + 1;
  const at::Tensor q = at::randn({s.rows, s.heads, s.head_dim}, opts);
  const at::Tensor pos = at::tensor(positions, at::kLong).to(at::kCUDA);
  const at::Tensor slot = at::tensor(slots, at::kLong).to(at::kCUDA);
  const double scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));

  // The engine's previous path: additive mask over [0, bound), SDPA.
  const at::Tensor k_pos = at::arange(bound, pos.options()).unsqueeze(0);
  const at::Tensor mask = at::zeros({s.rows, 1, 1, bound}, opts)
                              .masked_fill_(k_pos.gt(pos.unsqueeze(1)).view({s.rows, 1, 1, bound}),
                                            -std::numeric_limits<double>::infinity());
  auto sdpa = [&](int c) {
    return at::scaled_dot_product_attention(q.unsqueeze(2), keys[c].narrow(2, 0, bound),
                                            values[c].narrow(2, 0, bound), mask, 0.0, false, scale,
                                            s.heads != s.kv_heads);
  };
  auto ours = [&](int c) {
    DecodeAttentionInputs in;
    in.q = q;
    in.k_cache = keys[c];
    in.v_cache = values[c];
    in.slots = slot;
    in.positions = pos;
    in.scale = scale;
    in.max_len_hint = bound;
    return *DecodeAttention(in);
  };
  const double diff = (ours(0).to(at::kFloat) - sdpa(0).reshape({s.rows, -1}).to(at::kFloat))
                          .abs()
                          .max()
                          .item<double>();
  const double ours_ms = TimeGraph(kCaches * 4, [&](int i) { ours(i % kCaches); });
  const double sdpa_ms = TimeGraph(kCaches * 4, [&](int i) { sdpa(i % kCaches); });
  const double bytes = 2.0 * keys_read * s.kv_heads * s.head_dim * 2;
  const double floor_us = bytes / copy_bps * 1e6;
  std::printf("%-34s %7.1f MB | %8.2f us %5.0f%% | %8.2f us %5.0f%% | %5.2fx | %.1e\n",
              s.name.c_str(), bytes / 1e6, ours_ms * 1e3, floor_us / (ours_ms * 1e3) * 100,
              sdpa_ms * 1e3, floor_us / (sdpa_ms * 1e3) * 100, sdpa_ms / ours_ms, diff);
}

}  // namespace
}  // namespace adapterd

int main() {
  using adapterd::Shape;
  if (!at::hasCUDA()) {
    std::printf("attention_gpu_bench: no CUDA device\n");
    return 1;
  }
  const double copy = adapterd::bench::CopyBandwidth();
  std::printf(
      "bf16; %% = bytes of the keys and values each row reads over copy bandwidth / time\n");
  std::printf("%-34s %10s | %17s | %17s | %6s | %s\n", "shape", "KV bytes", "ours", "SDPA (before)",
              "speed", "max|diff|");
  const std::vector<Shape> shapes = {
      {32, 32, 32, 128, 160, false, "7B B=32 len 160"},
      {32, 32, 32, 128, 192, true, "7B B=32 len 1..192"},
      {32, 32, 32, 128, 512, false, "7B B=32 len 512"},
      {32, 32, 32, 128, 2048, false, "7B B=32 len 2048"},
      {32, 32, 32, 128, 2048, true, "7B B=32 len 1..2048"},
      {8, 32, 32, 128, 4096, false, "7B B=8 len 4096 (splits)"},
      {1, 32, 32, 128, 4096, false, "7B B=1 len 4096 (splits)"},
      {32, 32, 8, 128, 1024, false, "GQA 4:1 B=32 len 1024"},
      {32, 32, 4, 128, 1024, true, "GQA 8:1 B=32 len 1..1024"},
  };
  for (const Shape& s : shapes) adapterd::Run(s, copy);
  return 0;
}
