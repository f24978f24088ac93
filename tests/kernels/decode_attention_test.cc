#include "engine/kernels/decode_attention.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "engine/model/causal_lm.h"
#include "engine/runtime/kv_cache.h"

#ifdef ADAPTERD_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace adapterd {
namespace {

bool HaveGpu() { return at::hasCUDA() && at::cuda::device_count() > 0; }

const double kNaN = std::numeric_limits<double>::quiet_NaN();

struct Shape {
  int64_t rows = 4;
  int64_t heads = 8;
  int64_t kv_heads = 8;
  int64_t head_dim = 128;
  int64_t slots = 6;
  int64_t max_len = 300;
  int64_t window = 0;
  bool strided_q = false;  // q is a narrow of a [rows, heads + kv_heads, d] tensor.
  bool new_kv = false;     // The step's keys/values passed in (the kernel stores them).
  bool rope = false;       // q and the new keys unrotated, with rotary tables (needs new_kv).
  std::vector<int64_t> positions;  // Per row; empty: random in [0, max_len).
  std::string name;
};

// float64 attention of each row over its slot's keys in [first, pos]
// (`drop_tail`: without the last eighth of them, at least one key).
at::Tensor Reference(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                     const std::vector<int64_t>& slots, const std::vector<int64_t>& positions,
                     double scale, int64_t window, bool drop_tail = false) {
  const int64_t rows = q.size(0), heads = q.size(1), d = q.size(2), kv = k_cache.size(1);
  const at::Tensor qd = q.to(at::kCPU, at::kDouble);
  const at::Tensor kd = k_cache.to(at::kCPU, at::kDouble);
  const at::Tensor vd = v_cache.to(at::kCPU, at::kDouble);
  std::vector<at::Tensor> outs;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t pos = positions[r];
    const int64_t first = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
    const int64_t all = pos + 1 - first;
    const int64_t len = all - (drop_tail && all > 1 ? std::max<int64_t>(1, all / 8) : 0);
    const at::Tensor k = kd[slots[r]].narrow(1, first, len).unsqueeze(1);  // [kv, 1, L, d]
    const at::Tensor v = vd[slots[r]].narrow(1, first, len).unsqueeze(1);
    const at::Tensor qr = qd[r].reshape({kv, heads / kv, 1, d});
    const at::Tensor p = at::softmax(at::matmul(qr, k.transpose(-1, -2)) * scale, -1);
    outs.push_back(at::matmul(p, v).reshape({heads * d}));
  }
  return at::stack(outs, 0);
}

double Tolerance(at::ScalarType t) {
  return t == at::kBFloat16 ? 8e-3 : t == at::kHalf ? 1e-3 : 2e-5;
}

// Largest |got - want| / (1 + |want|).
double MaxError(const at::Tensor& got, const at::Tensor& want) {
  const at::Tensor g = got.to(at::kCPU, at::kDouble);
  EXPECT_TRUE(g.isfinite().all().item<bool>()) << "non-finite output";
  return ((g - want).abs() / (want.abs() + 1.0)).max().item<double>();
}

// x [rows, heads, d] rotated as the engine's eager RoPE does on CUDA (in x's
// dtype: x·cos rounded, then + flip(x halves)·(−sin | sin) rounded once).
at::Tensor RotateLikeEager(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t rows = x.size(0), heads = x.size(1), d = x.size(2), half = d / 2;
  const at::Tensor xc = x.contiguous();
  const at::Tensor signed_sin =
      at::cat({-sin.narrow(1, 0, half), sin.narrow(1, half, half)}, 1).unsqueeze(1);
  const at::Tensor flipped = xc.view({rows, heads, 2, half}).flip(2).view(xc.sizes());
  return at::addcmul(xc * cos.unsqueeze(1), flipped, signed_sin);
}

// Rotary tables [rows, d] in `dtype` for the positions (theta 10000).
std::pair<at::Tensor, at::Tensor> RopeTables(const std::vector<int64_t>& positions, int64_t d,
                                             at::ScalarType dtype) {
  const at::Tensor inv =
      at::pow(10000.0, -at::arange(0, d, 2, at::kDouble) / static_cast<double>(d));
  const at::Tensor freqs = at::tensor(positions, at::kDouble).unsqueeze(1) * inv.unsqueeze(0);
  const at::Tensor emb = at::cat({freqs, freqs}, 1);
  return {emb.cos().to(dtype), emb.sin().to(dtype)};
}

#ifdef ADAPTERD_WITH_CUDA

struct Case {
  DecodeAttentionInputs in;
  std::vector<int64_t> slots, positions;
  at::Tensor k_cpu, v_cpu;  // The caches the reference reads (new keys in place).
  at::Tensor q_ref;         // The q the reference reads (rotated where the kernel rotates).
  at::Tensor k_stored;      // The new keys the cache must hold after the call.
};

// Random caches with every key outside a row's range NaN-poisoned (a kernel
// that reads past a row's position or before its window fails), slots
// spread and out of order.
Case MakeCase(const Shape& s, at::ScalarType dtype, std::mt19937& rng) {
  const at::Device gpu(at::kCUDA, 0);
  const auto opts = at::TensorOptions().dtype(dtype).device(gpu);
  Case c;
  EXPECT_LE(s.rows, s.slots);
  std::vector<int64_t> all(s.slots);
  for (int64_t i = 0; i < s.slots; ++i) all[i] = i;
  std::shuffle(all.begin(), all.end(), rng);
  c.slots.assign(all.begin(), all.begin() + s.rows);
  std::uniform_int_distribution<int64_t> pos(0, s.max_len - 1);
  for (int64_t r = 0; r < s.rows; ++r) {
    c.positions.push_back(r < static_cast<int64_t>(s.positions.size()) ? s.positions[r] : pos(rng));
  }
  at::Tensor k = at::randn({s.slots, s.kv_heads, s.max_len, s.head_dim}, at::kDouble);
  at::Tensor v = at::randn({s.slots, s.kv_heads, s.max_len, s.head_dim}, at::kDouble);
  at::Tensor k_poisoned = k.clone(), v_poisoned = v.clone();
  for (int64_t r = 0; r < s.rows; ++r) {
    const int64_t p = c.positions[r];
    const int64_t first = s.window > 0 ? std::max<int64_t>(0, p - s.window + 1) : 0;
    // With new_kv the cache's entry at the position is stale until written.
    const int64_t end = s.new_kv ? p : p + 1;
    k_poisoned[c.slots[r]].narrow(1, end, s.max_len - end).fill_(kNaN);
    v_poisoned[c.slots[r]].narrow(1, end, s.max_len - end).fill_(kNaN);
    k_poisoned[c.slots[r]].narrow(1, 0, first).fill_(kNaN);
    v_poisoned[c.slots[r]].narrow(1, 0, first).fill_(kNaN);
  }
  c.in.k_cache = k_poisoned.to(opts);
  c.in.v_cache = v_poisoned.to(opts);
  c.k_cpu = k.to(dtype);  // Rounded as the device holds them.
  c.v_cpu = v.to(dtype);
  if (s.strided_q) {
    c.in.q = at::randn({s.rows, s.heads + s.kv_heads, s.head_dim}, opts).narrow(1, 0, s.heads);
  } else {
    c.in.q = at::randn({s.rows, s.heads, s.head_dim}, opts);
  }
  c.q_ref = c.in.q.cpu();
  if (s.new_kv) {
    c.in.new_k = at::randn({s.rows, s.kv_heads, s.head_dim}, opts);
    c.in.new_v = at::randn({s.rows, s.kv_heads, s.head_dim}, opts);
    c.k_stored = c.in.new_k.cpu();
    if (s.rope) {
      const auto [cos, sin] = RopeTables(c.positions, s.head_dim, dtype);
      c.in.rope_cos = cos.to(gpu);
      c.in.rope_sin = sin.to(gpu);
      c.q_ref = RotateLikeEager(c.q_ref, cos, sin);
      c.k_stored = RotateLikeEager(c.k_stored, cos, sin);
    }
    for (int64_t r = 0; r < s.rows; ++r) {
      c.k_cpu[c.slots[r]].select(1, c.positions[r]).copy_(c.k_stored[r]);
      c.v_cpu[c.slots[r]].select(1, c.positions[r]).copy_(c.in.new_v[r].cpu());
    }
  }
  c.in.slots = at::tensor(c.slots, at::kLong).to(gpu);
  c.in.positions = at::tensor(c.positions, at::kLong).to(gpu);
  c.in.scale = 1.0 / std::sqrt(static_cast<double>(s.head_dim));
  c.in.window = s.window;
  c.in.max_len_hint = *std::max_element(c.positions.begin(), c.positions.end()) + 1;
  return c;
}

std::vector<Shape> Shapes() {
  std::vector<Shape> out;
  auto add = [&](Shape s, std::string name) {
    s.name = std::move(name);
    out.push_back(s);
  };
  // clang-format off
  add({.rows = 5, .heads = 32, .kv_heads = 32, .head_dim = 128, .slots = 8, .max_len = 300,
       .positions = {0, 299, 17, 128, 255}}, "7B MHA, one key and a full row");
  add({.rows = 6, .heads = 8, .kv_heads = 2, .head_dim = 64, .max_len = 200}, "GQA 4:1");
  add({.rows = 3, .heads = 16, .kv_heads = 2, .head_dim = 128, .max_len = 260}, "GQA 8:1");
  add({.rows = 2, .heads = 4, .kv_heads = 4, .head_dim = 128, .slots = 3, .max_len = 4000,
       .positions = {3999, 1000}}, "4000 keys over splits");
  add({.rows = 3, .heads = 4, .kv_heads = 2, .head_dim = 128, .slots = 3, .max_len = 3000,
       .window = 200, .positions = {2999, 150, 1200}}, "sliding window over splits");
  add({.rows = 4, .heads = 8, .kv_heads = 8, .head_dim = 64, .max_len = 100, .window = 7},
      "short sliding window");
  add({.rows = 3, .heads = 4, .kv_heads = 1, .head_dim = 256, .max_len = 150}, "256-dim heads");
  add({.rows = 4, .heads = 6, .kv_heads = 3, .head_dim = 96, .max_len = 90}, "96-dim heads");
  add({.rows = 7, .heads = 4, .kv_heads = 2, .head_dim = 32, .slots = 9, .max_len = 70},
      "32-dim heads");
  add({.rows = 3, .heads = 6, .kv_heads = 2, .head_dim = 64, .max_len = 500}, "GQA 3:1 over splits");
  add({.rows = 5, .heads = 4, .kv_heads = 4, .head_dim = 16, .slots = 5, .max_len = 40},
      "16-dim heads (the tiny parity models)");
  add({.rows = 4, .heads = 32, .kv_heads = 8, .head_dim = 128, .max_len = 300, .strided_q = true},
      "q a narrow of q|k");
  add({.rows = 5, .heads = 8, .kv_heads = 2, .head_dim = 128, .max_len = 2500, .strided_q = true,
       .new_kv = true, .positions = {0, 2499, 700, 3, 1999}},
      "new keys stored by the kernel, over splits");
  add({.rows = 4, .heads = 4, .kv_heads = 4, .head_dim = 64, .max_len = 80, .window = 5,
       .new_kv = true}, "new keys with a sliding window");
  add({.rows = 5, .heads = 32, .kv_heads = 32, .head_dim = 128, .slots = 8, .max_len = 300,
       .strided_q = true, .new_kv = true, .rope = true, .positions = {0, 299, 17, 128, 255}},
      "RoPE in the kernel, 7B MHA");
  add({.rows = 3, .heads = 8, .kv_heads = 2, .head_dim = 64, .max_len = 2000, .window = 300,
       .new_kv = true, .rope = true, .positions = {1999, 5, 900}},
      "RoPE in the kernel, GQA, window, splits");
  add({.rows = 5, .heads = 4, .kv_heads = 4, .head_dim = 16, .slots = 5, .max_len = 40,
       .strided_q = true, .new_kv = true, .rope = true}, "RoPE in the kernel, 16-dim heads");
  // clang-format on
  return out;
}

TEST(DecodeAttentionCudaTest, MatchesFloat64) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(20261129);
  for (const at::ScalarType dtype : {at::kFloat, at::kHalf, at::kBFloat16}) {
    for (const Shape& s : Shapes()) {
      SCOPED_TRACE(s.name + " " + std::string(at::toString(dtype)));
      at::manual_seed(rng());
      Case c = MakeCase(s, dtype, rng);
      ASSERT_TRUE(DecodeAttentionServes(c.in));
      absl::StatusOr<at::Tensor> out = DecodeAttention(c.in);
      ASSERT_TRUE(out.ok()) << out.status();
      const at::Tensor want =
          Reference(c.q_ref, c.k_cpu, c.v_cpu, c.slots, c.positions, c.in.scale, s.window);
      const double err = MaxError(*out, want);
      EXPECT_LE(err, Tolerance(dtype));
      // Negative control: the same check fails without the tail of each row's keys.
      const at::Tensor short_ref = Reference(c.q_ref, c.k_cpu, c.v_cpu, c.slots, c.positions,
                                             c.in.scale, s.window, /*drop_tail=*/true);
      bool any_longer = false;
      for (int64_t p : c.positions) {
        any_longer |= p + 1 - (s.window > 0 ? std::max<int64_t>(0, p - s.window + 1) : 0) > 1;
      }
      if (any_longer) EXPECT_GT(MaxError(*out, short_ref), Tolerance(dtype));
      if (s.new_kv) {
        // Rotated keys: as the eager RoPE rounds them, within one unit in the
        // last place (CPU and GPU may contract x·cos + partner·sin differently).
        const double ulp = dtype == at::kBFloat16 ? 1.0 / 128
                           : dtype == at::kHalf   ? 1.0 / 1024
                                                  : 1e-6;
        for (int64_t r = 0; r < s.rows; ++r) {
          const at::Tensor stored_k = c.in.k_cache[c.slots[r]].select(1, c.positions[r]).cpu();
          const at::Tensor stored_v = c.in.v_cache[c.slots[r]].select(1, c.positions[r]).cpu();
          const at::Tensor want_k = c.k_stored[r].to(at::kDouble);
          EXPECT_TRUE(((stored_k.to(at::kDouble) - want_k).abs() <= want_k.abs() * ulp + 1e-30)
                          .all()
                          .item<bool>())
              << "row " << r;
          EXPECT_TRUE(stored_v.equal(c.in.new_v[r].cpu())) << "row " << r;
        }
      }
      std::printf("  %-45s %-9s max err %.2e\n", s.name.c_str(), at::toString(dtype), err);
    }
  }
}

TEST(DecodeAttentionCudaTest, RejectsWhatItDoesNotServe) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(7);
  Case c = MakeCase({.rows = 2, .heads = 4, .kv_heads = 4, .head_dim = 64, .max_len = 16},
                    at::kHalf, rng);
  EXPECT_TRUE(DecodeAttentionPreferred(c.in));  // MHA.
  DecodeAttentionInputs gqa = c.in;
  gqa.k_cache = c.in.k_cache.narrow(1, 0, 2).contiguous();
  gqa.v_cache = c.in.v_cache.narrow(1, 0, 2).contiguous();
  EXPECT_TRUE(DecodeAttentionServes(gqa));
  EXPECT_FALSE(DecodeAttentionPreferred(gqa));  // GQA keeps SDPA (docs/kernels.md).
  DecodeAttentionInputs bad = c.in;
  bad.q = c.in.q.narrow(1, 0, 3);  // 3 heads over 4 KV heads.
  EXPECT_EQ(DecodeAttention(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = c.in;
  bad.new_k = at::zeros({2, 4, 64}, c.in.q.options());  // new_k without new_v.
  EXPECT_EQ(DecodeAttention(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = c.in;
  bad.positions = c.in.positions.to(at::kInt);
  EXPECT_EQ(DecodeAttention(bad).status().code(), absl::StatusCode::kInvalidArgument);
  bad = c.in;
  bad.q = at::zeros({2, 4, 48}, c.in.q.options());
  bad.k_cache = bad.v_cache = at::zeros({4, 4, 16, 48}, c.in.q.options());
  EXPECT_FALSE(DecodeAttentionServes(bad));  // 48-dim heads are not served.
  EXPECT_EQ(DecodeAttention(bad).status().code(), absl::StatusCode::kUnimplemented);
  bad = c.in;
  bad.q = c.in.q.cpu();
  EXPECT_FALSE(DecodeAttentionServes(bad));
}

// Captured once, replayed with slots and positions rewritten in place.
TEST(DecodeAttentionCudaTest, GraphReplayFollowsPositionsRewrittenInPlace) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  std::mt19937 rng(11);
  const Shape s{.rows = 6, .heads = 8, .kv_heads = 2, .head_dim = 128, .slots = 8, .max_len = 1024};
  // Poisoning depends on positions: start from clean caches for every round.
  Case c = MakeCase(s, at::kBFloat16, rng);
  const at::Tensor k_clean = c.k_cpu.to(c.in.k_cache.device());
  const at::Tensor v_clean = c.v_cpu.to(c.in.k_cache.device());
  c.in.k_cache.copy_(k_clean);
  c.in.v_cache.copy_(v_clean);
  c.in.max_len_hint = s.max_len;
  const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  at::cuda::CUDAGraph graph;
  at::Tensor out;
  {
    const c10::cuda::CUDAStreamGuard guard(stream);
    ASSERT_TRUE(DecodeAttention(c.in).ok());
    stream.synchronize();
    graph.capture_begin();
    absl::StatusOr<at::Tensor> captured = DecodeAttention(c.in);
    graph.capture_end();
    ASSERT_TRUE(captured.ok()) << captured.status();
    out = *captured;
  }
  std::uniform_int_distribution<int64_t> pos(0, s.max_len - 1);
  for (int round = 0; round < 3; ++round) {
    std::vector<int64_t> slots(s.slots), positions;
    for (int64_t i = 0; i < s.slots; ++i) slots[i] = i;
    std::shuffle(slots.begin(), slots.end(), rng);
    slots.resize(s.rows);
    for (int64_t r = 0; r < s.rows; ++r) positions.push_back(pos(rng));
    c.in.slots.copy_(at::tensor(slots, at::kLong));
    c.in.positions.copy_(at::tensor(positions, at::kLong));
    out.fill_(kNaN);
    graph.replay();
    stream.synchronize();
    const at::Tensor want =
        Reference(c.in.q, c.k_cpu, c.v_cpu, slots, positions, c.in.scale, s.window);
    EXPECT_LE(MaxError(out, want), Tolerance(at::kBFloat16)) << "round " << round;
  }
}

// Through the cache: WriteAndAttend on CUDA (the kernel) against the CPU
// cache's matmul path on the same step, spread slots and a sliding layer.
TEST(DecodeAttentionCudaTest, KvCacheWriteAndAttendMatchesTheCpuPath) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const at::Device gpu(at::kCUDA, 0);
  constexpr int kLayers = 2, kSlots = 5;
  // MHA: the cache takes the kernel where it is preferred (GQA keeps SDPA).
  constexpr int64_t kMaxLen = 64, kKv = 8, kHeads = 8, kDim = 64, kWindow = 9;
  KvCache cpu(kLayers, kSlots, kMaxLen, kKv, kDim, at::kFloat, at::kCPU);
  KvCache cuda(kLayers, kSlots, kMaxLen, kKv, kDim, at::kFloat, gpu);
  for (int l = 0; l < kLayers; ++l) {
    cpu.keys(l).copy_(at::randn(cpu.keys(l).sizes()));
    cpu.values(l).copy_(at::randn(cpu.values(l).sizes()));
    cuda.keys(l).narrow(0, 0, kSlots).copy_(cpu.keys(l));
    cuda.values(l).narrow(0, 0, kSlots).copy_(cpu.values(l));
  }
  ForwardBatch batch;
  batch.slots = {3, 0, 4};
  batch.past_lens = {40, 0, 63};
  batch.tokens = {{1}, {2}, {3}};
  const AttentionStep on_cpu = AttentionStep::Build(batch, kSlots, kMaxLen, 10, kWindow, at::kCPU);
  const AttentionStep on_gpu = AttentionStep::Build(batch, kSlots, kMaxLen, 10, kWindow, gpu);
  const at::Tensor q = at::randn({3, kHeads, kDim});
  const at::Tensor k = at::randn({3, kKv, kDim});
  const at::Tensor v = at::randn({3, kKv, kDim});
  for (int l = 0; l < kLayers; ++l) {
    const bool sliding = l == 1;
    const at::Tensor want = cpu.WriteAndAttend(l, on_cpu, k, v, q, 0.125, sliding);
    const at::Tensor got =
        cuda.WriteAndAttend(l, on_gpu, k.to(gpu), v.to(gpu), q.to(gpu), 0.125, sliding);
    EXPECT_LE((got.cpu() - want).abs().max().item<double>(), 1e-5) << "layer " << l;
    EXPECT_TRUE(cuda.keys(l).narrow(0, 0, kSlots).cpu().equal(cpu.keys(l))) << "layer " << l;
    EXPECT_TRUE(cuda.values(l).narrow(0, 0, kSlots).cpu().equal(cpu.values(l))) << "layer " << l;
    const at::Tensor again = cuda.Attend(l, on_gpu, q.to(gpu), 0.125, sliding);
    EXPECT_LE((again.cpu() - want).abs().max().item<double>(), 1e-5) << "layer " << l;
  }
  // Unrotated q and k with the step's rotary tables: the kernel rotates, the
  // CPU cache gets them rotated by the eager code.
  std::vector<int64_t> positions;
  for (size_t i = 0; i < batch.slots.size(); ++i) positions.push_back(batch.past_lens[i]);
  const auto [cos, sin] = RopeTables(positions, kDim, at::kFloat);
  const AttentionStep next_cpu =
      AttentionStep::Build(batch, kSlots, kMaxLen, 10, kWindow, at::kCPU);
  const AttentionStep next_gpu = AttentionStep::Build(batch, kSlots, kMaxLen, 10, kWindow, gpu);
  for (int l = 0; l < kLayers; ++l) {
    const bool sliding = l == 0;
    const at::Tensor want = cpu.WriteAndAttend(l, next_cpu, RotateLikeEager(k, cos, sin), v,
                                               RotateLikeEager(q, cos, sin), 0.125, sliding);
    EXPECT_FALSE(cpu.TryRotateWriteAndAttend(l, next_cpu, k, v, q, cos, sin, 0.125, sliding)
                     .defined());  // Not a CUDA step: nothing done.
    const at::Tensor got = cuda.TryRotateWriteAndAttend(
        l, next_gpu, k.to(gpu), v.to(gpu), q.to(gpu), cos.to(gpu), sin.to(gpu), 0.125, sliding);
    ASSERT_TRUE(got.defined());
    EXPECT_LE((got.cpu() - want).abs().max().item<double>(), 1e-5) << "layer " << l;
    EXPECT_LE((cuda.keys(l).narrow(0, 0, kSlots).cpu() - cpu.keys(l)).abs().max().item<double>(),
              1e-6)
        << "layer " << l;
  }
}

#endif  // ADAPTERD_WITH_CUDA

// CPU: the function declines and says why (CI has no GPU).
TEST(DecodeAttentionTest, DeclinesCpuTensors) {
  DecodeAttentionInputs in;
  in.q = at::zeros({1, 2, 16});
  in.k_cache = in.v_cache = at::zeros({1, 2, 4, 16});
  in.slots = at::zeros({1}, at::kLong);
  in.positions = at::zeros({1}, at::kLong);
  EXPECT_FALSE(DecodeAttentionServes(in));
  EXPECT_EQ(DecodeAttention(in).status().code(), absl::StatusCode::kUnimplemented);
  in.q = at::zeros({1, 3, 16});
  EXPECT_EQ(DecodeAttention(in).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adapterd
