#include "engine/kernels/lora_kernels.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#ifdef ADAPTERD_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace adapterd {
namespace {

constexpr int64_t kRanks[] = {4, 8, 16, 32, 64, 128};

struct CaseSpec {
  int64_t tokens = 16;
  int64_t in = 344;
  std::vector<int64_t> outs = {200};
  int64_t adapters = 4;
  double none_fraction = 0.2;
  bool bottleneck = false;
  int64_t x_pad = 0;         // Extra columns in x's row stride.
  bool use_apply = false;    // LoraApply instead of LoraShrink + LoraExpand (v is not checked).
  bool blocked = false;      // Each adapter's tokens form one consecutive run.
  bool round_robin = false;  // Adapted token t uses adapter t % adapters (decode-like spread).
  LoraPath path = LoraPath::kAuto;  // With use_apply.
  // LoraLinear over a random base weight instead: y = x·Wᵀ + the deltas
  // (v is not checked; rows without an adapter must equal the same GEMM's
  // output without adapters bit for bit).
  bool linear = false;
  LoraLinearOptions linear_options;
};

// A case of t tokens over `adapters` adapters, x [t, in] (row stride in + pad),
// outputs of `outs` columns, a fraction `none` of the tokens unadapted.
CaseSpec MakeCase(int64_t t, int64_t in, std::vector<int64_t> outs, int64_t adapters,
                  double none = 0.2, int64_t pad = 0) {
  CaseSpec c;
  c.tokens = t;
  c.in = in;
  c.outs = std::move(outs);
  c.adapters = adapters;
  c.none_fraction = none;
  c.x_pad = pad;
  return c;
}

// One adapter's weights in the kernel dtype plus their exact float64 values.
struct SliceRef {
  bool adapted = false;
  LoraSliceWeights w;
  at::Tensor a64, b64, ab64, bb64;
};

struct Errors {
  double v = 0;  // ||v - v_ref|| / ||v_ref||
  double y = 0;  // ||y - ref|| / ||ref - y0||
  bool v_finite = true;
  bool untouched_rows_exact = true;
  bool padding_untouched = true;
};

double RelErr(const at::Tensor& got, const at::Tensor& want, const at::Tensor& scale) {
  const double denom = scale.norm().item<double>();
  const double num = (got - want).norm().item<double>();
  if (std::isnan(num)) return std::numeric_limits<double>::infinity();
  return denom == 0 ? num : num / denom;
}

double YTolerance(at::ScalarType dtype) {
  if (dtype == at::kFloat) return 1e-5;
  if (dtype == at::kHalf) return 2e-3;
  return 1.2e-2;
}

at::Tensor Activation64(const at::Tensor& t, LoraActivation act) {
  switch (act) {
    case LoraActivation::kRelu:
      return at::relu(t);
    case LoraActivation::kGelu:
      return at::gelu(t, "none");
    case LoraActivation::kGeluTanh:
      return at::gelu(t, "tanh");
    case LoraActivation::kSilu:
      return at::silu(t);
    case LoraActivation::kNone:
      break;
  }
  return t;
}

// Columns of slice s of a fused output.
at::Tensor SliceOf(const at::Tensor& fused, const std::vector<int64_t>& outs, int64_t s) {
  int64_t off = 0;
  for (int64_t i = 0; i < s; ++i) off += outs[i];
  return fused.narrow(1, off, outs[s]);
}

// Builds a random batch, runs shrink + expand on `device`, and measures the
// outputs against a float64 reference computed on the same device.
// Sabotage for negative controls: the kernels get a wrong scale, or one
// adapted token is dropped from the index; the reference does not change.
enum class Sabotage { kNone, kWrongScale, kDropToken };

Errors RunCase(const CaseSpec& c, at::ScalarType dtype, at::Device device, uint32_t seed,
               Sabotage sabotage = Sabotage::kNone) {
  std::mt19937 rng(seed);
  at::manual_seed(seed);
  const int64_t num_slices = static_cast<int64_t>(c.outs.size());
  const int64_t num_slots = 2 * c.adapters + 1;  // Sparse slot ids: adapter i lives in slot 2i+1.
  const auto f64 = at::TensorOptions().dtype(at::kDouble).device(device);
  const auto kdt = at::TensorOptions().dtype(dtype).device(device);

  std::vector<std::vector<SliceRef>> refs(c.adapters, std::vector<SliceRef>(num_slices));
  LoraWeightTableBuilder builder(num_slices, num_slots);
  const LoraActivation acts[] = {LoraActivation::kRelu, LoraActivation::kGelu,
                                 LoraActivation::kGeluTanh, LoraActivation::kSilu};
  const int64_t rank_offset = rng() % 6;
  for (int64_t i = 0; i < c.adapters; ++i) {
    const int64_t rank = kRanks[(i + rank_offset) % 6];
    for (int64_t s = 0; s < num_slices; ++s) {
      if (num_slices > 1 && s == num_slices - 1 && i % 7 == 3) continue;  // Slice not targeted.
      SliceRef& r = refs[i][s];
      r.adapted = true;
      r.w.a = (at::randn({rank, c.in}, f64) / std::sqrt(static_cast<double>(c.in))).to(dtype);
      r.w.b = (at::randn({c.outs[s], rank}, f64) / std::sqrt(static_cast<double>(rank))).to(dtype);
      r.w.scale = 0.5f + static_cast<float>(rng() % 1000) / 666.0f;
      if (c.bottleneck) {
        r.w.a_bias = (at::randn({rank}, f64) * 0.5).to(dtype);
        r.w.b_bias = (at::randn({c.outs[s]}, f64) * 0.5).to(dtype);
        r.w.activation = acts[(i + s) % 4];
        r.ab64 = r.w.a_bias.to(at::kDouble);
        r.bb64 = r.w.b_bias.to(at::kDouble);
      }
      r.a64 = r.w.a.to(at::kDouble);
      r.b64 = r.w.b.to(at::kDouble);
      LoraSliceWeights run = r.w;
      if (sabotage == Sabotage::kWrongScale) run.scale *= 1.01f;
      EXPECT_TRUE(builder.Set(s, 2 * i + 1, run).ok());
    }
  }
  absl::StatusOr<LoraWeightTable> table = builder.Build();
  EXPECT_TRUE(table.ok()) << table.status();

  std::vector<int32_t> token_slot(c.tokens);
  std::uniform_real_distribution<double> unit(0, 1);
  for (int64_t t = 0; t < c.tokens; ++t) {
    const int64_t adapter = c.round_robin ? t % c.adapters : rng() % c.adapters;
    token_slot[t] = unit(rng) < c.none_fraction ? -1 : static_cast<int32_t>(2 * adapter + 1);
  }
  if (c.blocked) std::sort(token_slot.begin(), token_slot.end());
  std::vector<int32_t> run_slot = token_slot;
  if (sabotage == Sabotage::kDropToken) {
    for (int32_t& s : run_slot) {
      if (s >= 0) {
        s = -1;
        break;
      }
    }
  }
  absl::StatusOr<LoraBatchIndex> index =
      BuildLoraBatchIndex(run_slot, num_slots, c.adapters, device);
  EXPECT_TRUE(index.ok()) << index.status();

  const at::Tensor x_full = at::randn({c.tokens, c.in + c.x_pad}, f64).to(dtype);
  const at::Tensor x = x_full.narrow(1, 0, c.in);
  const at::Tensor x64 = x.to(at::kDouble);

  // Fused output with NaN padding after the slices; y0 is the base output
  // (LoraLinear: x·Wᵀ in float64, y left NaN for the call to write).
  int64_t width = 0;
  for (int64_t o : c.outs) width += o;
  at::Tensor fused = at::full({c.tokens, width + 8}, std::numeric_limits<double>::quiet_NaN(), kdt);
  at::Tensor base_w, base_ref;
  if (c.linear) {
    base_w = (at::randn({width, c.in}, f64) / std::sqrt(static_cast<double>(c.in))).to(dtype);
    base_ref = at::matmul(x64, base_w.to(at::kDouble).t());
  }
  std::vector<at::Tensor> ys, y0s;
  int64_t off = 0;
  for (int64_t s = 0; s < num_slices; ++s) {
    ys.push_back(fused.narrow(1, off, c.outs[s]));
    if (c.linear) {
      y0s.push_back(base_ref.narrow(1, off, c.outs[s]));
    } else {
      y0s.push_back(at::randn({c.tokens, c.outs[s]}, f64).to(dtype));
      ys.back().copy_(y0s.back());
    }
    off += c.outs[s];
  }

  at::Tensor v = at::full({num_slices, c.tokens, std::max<int64_t>(table->max_rank, 1)},
                          std::numeric_limits<float>::quiet_NaN(), kdt.dtype(at::kFloat));
  at::Tensor base_only;  // LoraLinear without adapters, same GEMM.
  if (c.linear) {
    const at::Tensor y = fused.narrow(1, 0, width);
    const absl::Status st = LoraLinear(x, base_w, y, &*table, &*index, c.linear_options);
    EXPECT_TRUE(st.ok()) << st;
    base_only = at::empty_like(y);
    const absl::Status st0 = LoraLinear(x, base_w, base_only, nullptr, nullptr, c.linear_options);
    EXPECT_TRUE(st0.ok()) << st0;
  } else if (c.use_apply) {
    const absl::Status st = LoraApply(x, *table, *index, ys, c.path);
    EXPECT_TRUE(st.ok()) << st;
  } else {
    absl::Status st = LoraShrink(x, *table, *index, v);
    EXPECT_TRUE(st.ok()) << st;
    st = LoraExpand(v, *table, *index, ys);
    EXPECT_TRUE(st.ok()) << st;
  }

  // Reference.
  at::Tensor v_ref = at::zeros(v.sizes(), f64);
  at::Tensor v_mask = at::zeros(v.sizes(), f64.dtype(at::kBool));
  std::vector<at::Tensor> y_ref;
  for (const at::Tensor& y0 : y0s) y_ref.push_back(y0.to(at::kDouble).clone());
  const at::Tensor slots = at::tensor(token_slot, at::kInt).to(device);
  for (int64_t i = 0; i < c.adapters; ++i) {
    const at::Tensor rows = (slots == static_cast<int32_t>(2 * i + 1)).nonzero().squeeze(1);
    if (rows.numel() == 0) continue;
    const at::Tensor xr = x64.index_select(0, rows);
    for (int64_t s = 0; s < num_slices; ++s) {
      const SliceRef& r = refs[i][s];
      if (!r.adapted) continue;
      at::Tensor vr = at::matmul(xr, r.a64.t());
      v_ref.select(0, s).narrow(1, 0, vr.size(1)).index_copy_(0, rows, vr);
      v_mask.select(0, s).narrow(1, 0, vr.size(1)).index_fill_(0, rows, true);
      if (r.ab64.defined()) vr = vr + r.ab64;
      vr = Activation64(vr, r.w.activation);
      at::Tensor d = at::matmul(vr, r.b64.t());
      if (r.bb64.defined()) d = d + r.bb64;
      y_ref[s].index_add_(0, rows, d * static_cast<double>(r.w.scale));
    }
  }

  Errors e;
  if (c.use_apply || c.linear) {
    v_mask.zero_();
    v_ref.zero_();
  }
  // Only entries of adapted tokens within their rank are specified.
  const at::Tensor v_written = at::where(v_mask, v.to(at::kDouble), at::zeros_like(v_ref));
  e.v_finite = at::isfinite(v_written).all().item<bool>();
  e.v = RelErr(v_written, v_ref, v_ref);
  const at::Tensor none_rows = (slots < 0).nonzero().squeeze(1);
  double num = 0, den = 0;
  for (int64_t s = 0; s < num_slices; ++s) {
    const at::Tensor got = ys[s].to(at::kDouble);
    num += (got - y_ref[s]).pow(2).sum().item<double>();
    den += (y_ref[s] - y0s[s].to(at::kDouble)).pow(2).sum().item<double>();
    const at::Tensor y0_rows = c.linear ? SliceOf(base_only, c.outs, s) : y0s[s];
    if (none_rows.numel() > 0 &&
        !at::equal(ys[s].index_select(0, none_rows), y0_rows.index_select(0, none_rows))) {
      e.untouched_rows_exact = false;
    }
  }
  e.y = std::isnan(num) ? std::numeric_limits<double>::infinity()
                        : std::sqrt(num / std::max(den, 1e-300));
  e.padding_untouched = at::isnan(fused.narrow(1, width, 8)).all().item<bool>();
  return e;
}

std::string Name(at::ScalarType t) { return std::string(c10::toString(t)); }

void ExpectGood(const CaseSpec& c, at::ScalarType dtype, at::Device device, uint32_t seed) {
  SCOPED_TRACE(::testing::Message() << Name(dtype) << " tokens=" << c.tokens << " in=" << c.in
                                    << " adapters=" << c.adapters << " seed=" << seed);
  const Errors e = RunCase(c, dtype, device, seed);
  std::printf(
      "  %-4s %-9s T=%-5ld in=%-5ld slices=%zu adapters=%-4ld%s%s%s  |v-ref|/|ref|=%.2e  "
      "|y-ref|/|delta|=%.2e\n",
      device.is_cpu() ? "cpu" : "cuda", Name(dtype).c_str(), c.tokens, c.in, c.outs.size(),
      c.adapters, c.bottleneck ? " bottleneck" : "", c.use_apply ? " apply" : "",
      c.use_apply && c.path == LoraPath::kFused ? " fused"
      : c.linear                                ? " linear"
                                                : "",
      e.v, e.y);
  EXPECT_TRUE(e.v_finite);
  EXPECT_LT(e.v, 1e-5);
  EXPECT_LT(e.y, YTolerance(dtype));
  EXPECT_TRUE(e.untouched_rows_exact);
  EXPECT_TRUE(e.padding_untouched);
}

const at::ScalarType kDtypes[] = {at::kFloat, at::kHalf, at::kBFloat16};

TEST(LoraKernelsCpuTest, MixedRanksAndSlicesMatchFloat64) {
  CaseSpec c;
  c.tokens = 64;
  c.in = 3424;
  c.outs = {3424, 856, 856};
  c.adapters = 24;
  uint32_t seed = 1;
  for (at::ScalarType t : kDtypes) ExpectGood(c, t, at::kCPU, seed++);
}

TEST(LoraKernelsCpuTest, LargeHiddenSizesWithFewTokens) {
  CaseSpec down;
  down.tokens = 5;
  down.in = 14336;
  down.outs = {5120};
  down.adapters = 3;
  CaseSpec gate_up;
  gate_up.tokens = 6;
  gate_up.in = 5120;
  gate_up.outs = {14336, 14336};
  gate_up.adapters = 6;
  for (at::ScalarType t : kDtypes) {
    ExpectGood(down, t, at::kCPU, 11);
    ExpectGood(gate_up, t, at::kCPU, 12);
  }
}

TEST(LoraKernelsCpuTest, FiveHundredTwelveAdaptersInOneBatch) {
  CaseSpec c;
  c.tokens = 700;
  c.in = 344;
  c.outs = {200, 72};
  c.adapters = 512;
  c.none_fraction = 0.1;
  ExpectGood(c, at::kBFloat16, at::kCPU, 21);
}

TEST(LoraKernelsCpuTest, SingleTokenAndStridedInput) {
  CaseSpec c;
  c.tokens = 1;
  c.in = 3424;
  c.outs = {3424};
  c.adapters = 1;
  c.none_fraction = 0;
  c.x_pad = 3;
  for (at::ScalarType t : kDtypes) ExpectGood(c, t, at::kCPU, 31);
}

TEST(LoraKernelsCpuTest, BottleneckAdaptersWithBiasesAndActivations) {
  CaseSpec c;
  c.tokens = 40;
  c.in = 520;
  c.outs = {520};
  c.adapters = 8;
  c.bottleneck = true;
  for (at::ScalarType t : kDtypes) ExpectGood(c, t, at::kCPU, 41);
}

TEST(LoraKernelsCpuTest, ApplyMatchesFloat64WithRunsAndScatteredTokens) {
  CaseSpec c;
  c.tokens = 96;
  c.in = 3424;
  c.outs = {3424, 856};
  c.adapters = 12;
  c.use_apply = true;
  uint32_t seed = 71;
  for (const bool blocked : {false, true}) {
    c.blocked = blocked;
    for (at::ScalarType t : kDtypes) ExpectGood(c, t, at::kCPU, seed++);
  }
  c.bottleneck = true;
  ExpectGood(c, at::kBFloat16, at::kCPU, seed++);
}

TEST(LoraKernelsCpuTest, BatchWithoutAdaptersLeavesOutputUntouched) {
  CaseSpec c;
  c.tokens = 9;
  c.none_fraction = 1.0;
  ExpectGood(c, at::kFloat, at::kCPU, 51);
}

TEST(LoraKernelsCpuTest, NegativeControlsAreDetected) {
  CaseSpec c;
  c.tokens = 32;
  c.adapters = 4;
  c.none_fraction = 0;
  EXPECT_LT(RunCase(c, at::kFloat, at::kCPU, 61).y, YTolerance(at::kFloat));
  EXPECT_GT(RunCase(c, at::kFloat, at::kCPU, 61, Sabotage::kWrongScale).y,
            10 * YTolerance(at::kFloat));
  const Errors dropped = RunCase(c, at::kFloat, at::kCPU, 61, Sabotage::kDropToken);
  EXPECT_GT(dropped.y, 10 * YTolerance(at::kFloat));
  EXPECT_GT(dropped.v, 1e-3);
}

TEST(LoraKernelsCpuTest, RejectsBadArguments) {
  LoraWeightTableBuilder builder(2, 3);
  LoraSliceWeights w;
  w.a = at::randn({8, 64});
  w.b = at::randn({32, 4});
  EXPECT_EQ(builder.Set(0, 0, w).code(), absl::StatusCode::kInvalidArgument);  // Rank mismatch.
  w.b = at::randn({32, 8});
  EXPECT_EQ(builder.Set(2, 0, w).code(),
            absl::StatusCode::kInvalidArgument);  // Slice out of range.
  EXPECT_EQ(builder.Build().status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(builder.Set(0, 0, w).ok());
  LoraSliceWeights other = w;
  other.a = at::randn({8, 65});
  EXPECT_EQ(builder.Set(1, 1, other).code(),
            absl::StatusCode::kInvalidArgument);  // in_features differ.
  absl::StatusOr<LoraWeightTable> table = builder.Build();
  ASSERT_TRUE(table.ok());

  const std::vector<int32_t> slots = {0, 1, 2, -1};
  EXPECT_EQ(BuildLoraBatchIndex(slots, 3, 2, at::kCPU).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(BuildLoraBatchIndex(std::vector<int32_t>{3}, 3, 4, at::kCPU).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::StatusOr<LoraBatchIndex> index =
      BuildLoraBatchIndex(std::vector<int32_t>{0, -1, 0}, 3, 2, at::kCPU);
  ASSERT_TRUE(index.ok());
  EXPECT_EQ(index->max_segment_tokens, 2);
  EXPECT_EQ(index->host_sorted_tokens, (std::vector<int32_t>{0, 2, 1}));

  const at::Tensor v = at::empty({2, 3, 8});
  EXPECT_EQ(LoraShrink(at::randn({3, 63}), *table, *index, v).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoraShrink(at::randn({3, 64}, at::kDouble), *table, *index, v).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(LoraShrink(at::randn({4, 64}), *table, *index, v).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LoraShrink(at::randn({3, 64}), *table, *index, v).ok());
  std::vector<at::Tensor> ys = {at::zeros({3, 32}), at::zeros({3, 31})};
  EXPECT_EQ(LoraExpand(v, *table, *index, ys).code(), absl::StatusCode::kInvalidArgument);
}

TEST(LoraKernelsCpuTest, LinearAddsTheDeltasToTheBaseGemm) {
  CaseSpec c;
  c.tokens = 24;
  c.in = 96;
  c.outs = {64, 32, 32};
  c.adapters = 5;
  c.linear = true;
  uint32_t seed = 400;
  for (at::ScalarType t : kDtypes) ExpectGood(c, t, at::kCPU, seed++);
  c.bottleneck = true;
  ExpectGood(c, at::kFloat, at::kCPU, seed++);
  // Negative control: the same check fails when one adapted token is dropped.
  c.bottleneck = false;
  c.none_fraction = 0;
  EXPECT_GT(RunCase(c, at::kFloat, at::kCPU, seed, Sabotage::kDropToken).y,
            10 * YTolerance(at::kFloat));
}

TEST(LoraKernelsCpuTest, LinearRejectsBadArguments) {
  LoraWeightTableBuilder builder(2, 1);
  LoraSliceWeights w;
  w.a = at::randn({4, 64});
  w.b = at::randn({32, 4});
  ASSERT_TRUE(builder.Set(0, 0, w).ok());
  w.b = at::randn({16, 4});
  ASSERT_TRUE(builder.Set(1, 0, w).ok());
  absl::StatusOr<LoraWeightTable> table = builder.Build();
  ASSERT_TRUE(table.ok());
  absl::StatusOr<LoraBatchIndex> index =
      BuildLoraBatchIndex(std::vector<int32_t>{0, -1, 0}, 1, 1, at::kCPU);
  ASSERT_TRUE(index.ok());
  const at::Tensor x = at::randn({3, 64});
  const at::Tensor y = at::empty({3, 48});
  EXPECT_TRUE(LoraLinear(x, at::randn({48, 64}), y, &*table, &*index).ok());
  EXPECT_EQ(LoraLinear(x, at::randn({40, 64}), at::empty({3, 40}), &*table, &*index).code(),
            absl::StatusCode::kInvalidArgument);  // Slices cover 48 outputs.
  EXPECT_EQ(LoraLinear(x, at::randn({48, 63}), y, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // K differs.
  EXPECT_EQ(LoraLinear(x, at::randn({48, 64}), y, &*table, nullptr).code(),
            absl::StatusCode::kInvalidArgument);  // Table without index.
  EXPECT_EQ(LoraLinear(x, at::randn({48, 64}, at::kDouble), y, nullptr, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  LoraLinearOptions decode;
  decode.gemm = LinearGemm::kDecode;
  EXPECT_EQ(LoraLinear(x, at::randn({48, 64}), y, nullptr, nullptr, decode).code(),
            absl::StatusCode::kInvalidArgument);  // Not on the CPU.
  EXPECT_FALSE(DecodeGemmServes(x, at::randn({48, 64})));
}

#ifdef ADAPTERD_WITH_CUDA
bool HaveGpu() { return at::hasCUDA() && at::cuda::device_count() > 0; }

TEST(LoraKernelsCudaTest, MatchesFloat64AcrossShapesAndDtypes) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const at::Device gpu(at::kCUDA, 0);
  std::vector<CaseSpec> cases;
  auto add = [&](int64_t t, int64_t in, std::vector<int64_t> outs, int64_t adapters,
                 double none = 0.2, int64_t pad = 0) {
    cases.push_back(MakeCase(t, in, std::move(outs), adapters, none, pad));
  };
  add(1, 3424, {3424}, 1, 0.0);
  add(7, 5120, {5120, 1024, 1024}, 5);
  add(256, 3424, {3424, 856, 856}, 64);
  add(4096, 5120, {5120, 1024, 1024}, 512, 0.1);
  add(512, 14336, {5120}, 32);
  add(300, 5120, {14336, 14336}, 17);
  add(2048, 3424, {3424}, 1, 0.05);
  add(4096, 4096, {4096}, 8, 0.2, 8);
  add(96, 3424, {3424}, 12, 0.2, 1);  // Misaligned rows: the scalar path.
  uint32_t seed = 100;
  for (const CaseSpec& c : cases)
    for (at::ScalarType t : kDtypes) ExpectGood(c, t, gpu, seed++);
  // LoraApply: the expand as a programmatic dependent launch of the shrink.
  for (CaseSpec c : cases) {
    c.use_apply = true;
    c.blocked = (seed % 2) == 0;
    for (at::ScalarType t : kDtypes) ExpectGood(c, t, gpu, seed++);
  }
}

TEST(LoraKernelsCudaTest, BottleneckAdaptersMatchFloat64) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  CaseSpec c;
  c.tokens = 333;
  c.in = 3424;
  c.outs = {3424};
  c.adapters = 20;
  c.bottleneck = true;
  uint32_t seed = 200;
  for (at::ScalarType t : kDtypes) ExpectGood(c, t, at::Device(at::kCUDA, 0), seed++);
}

// The decode GEMM (LoraLinear's CUDA path for T <= 32) with the LoRA expand in
// its epilogue, against float64: both 16-bit dtypes, every split count and
// pipeline depth, row counts around the 8-row tiles, K from one chunk to the
// down projection's, column counts that are not multiples of the 128-column
// tile, q/k/v slices, bottleneck adapters; and where it does not serve.
TEST(LoraKernelsCudaTest, DecodeGemmMatchesFloat64) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const at::Device gpu(at::kCUDA, 0);
  std::vector<CaseSpec> cases;
  auto add = [&](int64_t t, int64_t in, std::vector<int64_t> outs, int64_t adapters, int splits,
                 int depth, double none = 0.2) {
    CaseSpec c = MakeCase(t, in, std::move(outs), adapters, none);
    c.linear = true;
    c.round_robin = true;
    c.linear_options.gemm = LinearGemm::kDecode;
    c.linear_options.splits = splits;
    c.linear_options.depth = depth;
    cases.push_back(c);
  };
  add(32, 4096, {4096}, 32, 0, 0, 0.0);         // The benchmark's shape, auto splits.
  add(32, 4096, {4096, 1024, 1024}, 32, 4, 2);  // q/k/v with GQA.
  add(1, 4096, {4096}, 1, 1, 2, 0.0);           // One row.
  add(5, 3424, {3424, 856, 856}, 3, 2, 4);      // 3424: 107 chunks, uneven splits.
  add(8, 11008, {4096}, 8, 8, 2);               // Down projection's K.
  add(13, 96, {200}, 4, 2, 4);                  // 3 chunks over 2 splits; 200 columns.
  add(16, 32, {1000, 24}, 6, 1, 2);             // One chunk; ragged last tile.
  add(32, 5120, {14336, 14336}, 17, 0, 0);      // gate/up.
  add(17, 1024, {520}, 9, 8, 4, 0.5);           // Half the rows without an adapter.
  uint32_t seed = 500;
  for (const CaseSpec& c : cases)
    for (at::ScalarType t : {at::kHalf, at::kBFloat16}) ExpectGood(c, t, gpu, seed++);
  CaseSpec bottleneck = cases[3];
  bottleneck.bottleneck = true;
  for (at::ScalarType t : {at::kHalf, at::kBFloat16}) ExpectGood(bottleneck, t, gpu, seed++);
  // kAuto where the decode GEMM does not serve: fp32, 64 rows, misaligned x.
  CaseSpec fallback = cases[1];
  fallback.linear_options = LoraLinearOptions{};
  ExpectGood(fallback, at::kFloat, gpu, seed++);
  fallback.tokens = 64;
  ExpectGood(fallback, at::kBFloat16, gpu, seed++);
  fallback.tokens = 7;
  fallback.x_pad = 1;
  ExpectGood(fallback, at::kBFloat16, gpu, seed++);

  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(gpu);
  EXPECT_TRUE(DecodeGemmServes(at::randn({32, 4096}, opts), at::randn({128, 4096}, opts)));
  EXPECT_FALSE(DecodeGemmServes(at::randn({33, 4096}, opts), at::randn({128, 4096}, opts)));
  EXPECT_FALSE(DecodeGemmServes(at::randn({8, 100}, opts), at::randn({128, 100}, opts)));
  LoraLinearOptions decode;
  decode.gemm = LinearGemm::kDecode;
  EXPECT_EQ(LoraLinear(at::randn({33, 64}, opts), at::randn({16, 64}, opts),
                       at::empty({33, 16}, opts), nullptr, nullptr, decode)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// Captures one call into a CUDA graph, then rewrites the index in place and
// replays. Split: LoraShrink + LoraExpand, any number of tokens per adapter;
// fused: LoraApply(kFused), at most 4 tokens per adapter (the bound);
// linear: LoraLinear's decode GEMM with the expand in its epilogue (32 rows);
// cublas split / fused: LoraLinear's cuBLAS GEMM, then LoraApply (kAuto) as
// its programmatic dependent, any number of tokens per adapter (the split
// kernels) or at most 4 (the fused one).
// stream: LoraLinear's stream GEMM with the expand in its epilogue (32 rows).
// overlap split / fused: LoraLinear's cuBLASLt GEMM leaving SMs free, then
// LoraApply beside it (the fused kernel depends on the GEMM's launch, not its
// completion, and must still add to y only after the GEMM wrote it).
enum class GraphMode {
  kSplit,
  kFused,
  kLinear,
  kCublasSplit,
  kCublasFused,
  kStream,
  kOverlapSplit,
  kOverlapFused
};

void ExpectGraphReplayFollowsIndex(GraphMode mode) {
  const at::Device gpu(at::kCUDA, 0);
  const c10::cuda::CUDAGuard guard(gpu);
  const bool fused = mode == GraphMode::kFused || mode == GraphMode::kCublasFused ||
                     mode == GraphMode::kOverlapFused;
  const bool cublas = mode == GraphMode::kCublasSplit || mode == GraphMode::kCublasFused;
  const bool stream_gemm = mode == GraphMode::kStream;
  const bool overlap = mode == GraphMode::kOverlapSplit || mode == GraphMode::kOverlapFused;
  const bool linear = mode == GraphMode::kLinear || cublas || stream_gemm || overlap;
  const int64_t kTokens = linear ? 32 : 64;
  // The stream GEMM needs K a multiple of 64.
  const int64_t kIn = stream_gemm ? 3456 : 3424;
  constexpr int64_t kOut = 1024, kSlots = 16, kMaxSeg = 16;
  at::manual_seed(7);
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(gpu);
  LoraWeightTableBuilder builder(1, kSlots);
  std::vector<LoraSliceWeights> ws(kSlots);
  for (int64_t i = 0; i < kSlots; ++i) {
    const int64_t r = kRanks[i % 6];
    ws[i].a = at::randn({r, kIn}, opts) / 58.0;
    ws[i].b = at::randn({kOut, r}, opts) / 4.0;
    ws[i].scale = 1.0f + 0.1f * i;
    ASSERT_TRUE(builder.Set(0, i, ws[i]).ok());
  }
  absl::StatusOr<LoraWeightTable> table = builder.Build();
  ASSERT_TRUE(table.ok());
  std::mt19937 rng(3);
  auto make_slots = [&] {
    std::vector<int32_t> s(kTokens);
    if (fused) {
      // Each slot (and "none") ceil(64 / 17) = 4 times at most, in random order.
      for (int64_t t = 0; t < kTokens; ++t) s[t] = static_cast<int32_t>(t % (kSlots + 1)) - 1;
      std::shuffle(s.begin(), s.end(), rng);
    } else {
      for (auto& v : s) v = static_cast<int32_t>(rng() % (kSlots + 1)) - 1;
    }
    return s;
  };
  const int64_t bound = fused ? 4 : kTokens;
  absl::StatusOr<LoraBatchIndex> index =
      BuildLoraBatchIndex(make_slots(), kSlots, kMaxSeg, gpu, bound);
  ASSERT_TRUE(index.ok());
  const at::Tensor x = at::randn({kTokens, kIn}, opts);
  const at::Tensor y = at::zeros({kTokens, kOut}, opts);
  const at::Tensor v = at::empty({1, kTokens, table->max_rank}, opts.dtype(at::kFloat));
  const std::vector<at::Tensor> ys = {y};
  const at::Tensor w_base = linear ? at::randn({kOut, kIn}, opts) / 58.0 : at::Tensor();
  LoraLinearOptions decode;
  decode.gemm = cublas        ? LinearGemm::kTorch
                : stream_gemm ? LinearGemm::kStream
                : overlap     ? LinearGemm::kOverlap
                              : LinearGemm::kDecode;

  const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  at::cuda::CUDAGraph graph(/*keep_graph=*/overlap);  // Overlap: its edges are inspected.
  {
    const c10::cuda::CUDAStreamGuard sg(stream);
    // Warm-up outside capture.
    ASSERT_TRUE(linear  ? LoraLinear(x, w_base, y, &*table, &*index, decode).ok()
                : fused ? LoraApply(x, *table, *index, ys, LoraPath::kFused).ok()
                        : LoraShrink(x, *table, *index, v).ok());
    stream.synchronize();
    graph.capture_begin();
    absl::Status s1, s2;
    if (linear) {
      s1 = LoraLinear(x, w_base, y, &*table, &*index, decode);
    } else if (fused) {
      s1 = LoraApply(x, *table, *index, ys, LoraPath::kFused);
    } else {
      s1 = LoraShrink(x, *table, *index, v);
      s2 = LoraExpand(v, *table, *index, ys);
    }
    graph.capture_end();
    ASSERT_TRUE(s1.ok() && s2.ok()) << s1 << s2;
  }
  if (overlap) {
    // The LoRA's first kernel hangs off the GEMM's launch-completion port
    // (it runs beside the GEMM), and nothing else does.
    size_t num_edges = 0;
    ASSERT_EQ(cudaGraphGetEdges(graph.raw_cuda_graph(), nullptr, nullptr, nullptr, &num_edges),
              cudaSuccess);
    std::vector<cudaGraphNode_t> from(num_edges), to(num_edges);
    std::vector<cudaGraphEdgeData> data(num_edges);
    ASSERT_EQ(
        cudaGraphGetEdges(graph.raw_cuda_graph(), from.data(), to.data(), data.data(), &num_edges),
        cudaSuccess);
    int launch_edges = 0;
    for (const cudaGraphEdgeData& e : data) {
      if (e.from_port == cudaGraphKernelNodePortLaunchCompletion) {
        EXPECT_EQ(e.type, cudaGraphDependencyTypeProgrammatic);
        ++launch_edges;
      }
    }
    EXPECT_EQ(launch_edges, 1) << num_edges << " edges";
    graph.instantiate();
  }
  for (int round = 0; round < 3; ++round) {
    const std::vector<int32_t> slots = make_slots();
    absl::StatusOr<LoraBatchIndex> fresh = BuildLoraBatchIndex(slots, kSlots, kMaxSeg, gpu, bound);
    ASSERT_TRUE(fresh.ok());
    index->sorted_tokens.copy_(fresh->sorted_tokens);
    index->segment_start.copy_(fresh->segment_start);
    index->segment_slot.copy_(fresh->segment_slot);
    if (linear) {
      y.fill_(std::numeric_limits<double>::quiet_NaN());
    } else {
      y.zero_();
    }
    graph.replay();
    at::Tensor want =
        linear ? at::matmul(x.to(at::kDouble), w_base.to(at::kDouble).t())
               : at::zeros({kTokens, kOut}, at::TensorOptions().dtype(at::kDouble).device(gpu));
    const at::Tensor delta_base = want.clone();
    for (int64_t t = 0; t < kTokens; ++t) {
      if (slots[t] < 0) continue;
      const LoraSliceWeights& w = ws[slots[t]];
      want[t] += at::matmul(at::matmul(x[t].to(at::kDouble), w.a.to(at::kDouble).t()),
                            w.b.to(at::kDouble).t()) *
                 static_cast<double>(w.scale);
    }
    const double err = RelErr(y.to(at::kDouble), want, want - delta_base);
    EXPECT_LT(err, YTolerance(at::kBFloat16)) << "round " << round;
  }
}

TEST(LoraKernelsCudaTest, GraphReplayFollowsIndexRewrittenInPlace) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectGraphReplayFollowsIndex(GraphMode::kSplit);
}

TEST(LoraKernelsCudaTest, FusedGraphReplayFollowsIndexRewrittenInPlace) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectGraphReplayFollowsIndex(GraphMode::kFused);
}

TEST(LoraKernelsCudaTest, DecodeGemmGraphReplayFollowsIndexRewrittenInPlace) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectGraphReplayFollowsIndex(GraphMode::kLinear);
}

TEST(LoraKernelsCudaTest, StreamGemmGraphReplayFollowsIndexRewrittenInPlace) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectGraphReplayFollowsIndex(GraphMode::kStream);
}

TEST(LoraKernelsCudaTest, AfterBaseGemmGraphReplayFollowsIndexRewrittenInPlace) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectGraphReplayFollowsIndex(GraphMode::kCublasSplit);
  ExpectGraphReplayFollowsIndex(GraphMode::kCublasFused);
}

TEST(LoraKernelsCudaTest, OverlapGemmGraphReplayFollowsIndexRewrittenInPlace) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  ExpectGraphReplayFollowsIndex(GraphMode::kOverlapSplit);
  ExpectGraphReplayFollowsIndex(GraphMode::kOverlapFused);
}

// LinearGemm::kOverlap (cuBLASLt leaving SMs free, then LoraApply beside it)
// called eagerly, against float64 (graph capture: the replay test above): both
// 16-bit dtypes, decode and prefill shapes, q/k/v and gate/up slices, rows
// without an adapter (bit-equal to the GEMM alone), bottleneck adapters,
// every SM split; and where it does not serve.
TEST(LoraKernelsCudaTest, OverlapGemmMatchesFloat64) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const at::Device gpu(at::kCUDA, 0);
  std::vector<CaseSpec> cases;
  auto add = [&](int64_t t, int64_t in, std::vector<int64_t> outs, int64_t adapters,
                 double none = 0.2, int overlap_sms = 0) {
    CaseSpec c = MakeCase(t, in, std::move(outs), adapters, none);
    c.linear = true;
    c.round_robin = true;
    c.linear_options.gemm = LinearGemm::kOverlap;
    c.linear_options.overlap_sms = overlap_sms;
    cases.push_back(c);
  };
  add(32, 4096, {4096}, 32, 0.0);              // The benchmark's decode shape.
  add(32, 4096, {4096, 1024, 1024}, 8, 0.1);   // q/k/v with GQA.
  add(1, 4096, {4096}, 1, 0.0, 8);             // One row, 8 SMs left.
  add(8, 3424, {3424, 856, 856}, 3, 0.2, 64);  // Odd hidden size, half the device left.
  add(32, 5120, {14336, 14336}, 17, 0.2, -1);  // gate/up, the GEMM on the whole device.
  add(300, 4096, {4096}, 5, 0.3);              // Prefill: long segments.
  add(17, 1024, {520}, 9, 0.5);                // Half the rows without an adapter.
  uint32_t seed = 900;
  for (const CaseSpec& c : cases)
    for (at::ScalarType t : {at::kHalf, at::kBFloat16}) ExpectGood(c, t, gpu, seed++);
  CaseSpec bottleneck = cases[3];
  bottleneck.bottleneck = true;
  for (at::ScalarType t : {at::kHalf, at::kBFloat16}) ExpectGood(bottleneck, t, gpu, seed++);

  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(gpu);
  EXPECT_TRUE(OverlapGemmServes(at::randn({32, 4096}, opts), at::randn({128, 4096}, opts)));
  LoraLinearOptions overlap;
  overlap.gemm = LinearGemm::kOverlap;
  // fp32, and x rows not 16-byte aligned: INVALID_ARGUMENT, nothing written.
  EXPECT_EQ(LoraLinear(at::randn({4, 64}, opts.dtype(at::kFloat)),
                       at::randn({16, 64}, opts.dtype(at::kFloat)),
                       at::empty({4, 16}, opts.dtype(at::kFloat)), nullptr, nullptr, overlap)
                .code(),
            absl::StatusCode::kInvalidArgument);
  const at::Tensor wide = at::randn({4, 65}, opts);
  EXPECT_EQ(LoraLinear(wide.narrow(1, 1, 64), at::randn({16, 64}, opts), at::empty({4, 16}, opts),
                       nullptr, nullptr, overlap)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// The streaming GEMM (LinearGemm::kStream: TMA pipeline, cluster split-k)
// with the LoRA expand in its epilogue, against float64: both 16-bit dtypes, row
// counts around its 16-row x boxes, one k stage to the down projection's K,
// every split count, 2 to 16 stages, both tile widths, q/k/v and gate/up
// slices, grids of several waves; and where it does not serve.
TEST(LoraKernelsCudaTest, StreamGemmMatchesFloat64) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const at::Device gpu(at::kCUDA, 0);
  struct Shape {
    int64_t t, in;
    std::vector<int64_t> outs;
    int64_t adapters;
    int splits, stages, tile;
  };
  const Shape shapes[] = {
      {1, 4096, {4096}, 1, 0, 0, 0},
      {7, 64, {64}, 3, 1, 2, 64},
      {16, 4096, {4096}, 8, 2, 4, 128},
      {17, 1024, {512, 128, 128}, 5, 4, 2, 0},
      {32, 4096, {4096}, 32, 0, 0, 0},
      {32, 4096, {4096}, 32, 2, 8, 64},
      {32, 11008, {4096}, 8, 4, 16, 64},
      {32, 4096, {11008, 11008}, 16, 8, 3, 64},
      {24, 4096, {11008, 11008}, 16, 2, 5, 128},
      {13, 5120, {5120, 1024, 1024}, 6, 1, 0, 0},
      {32, 1024, {320}, 4, 0, 0, 0},  // 320 columns: 64-column tiles under auto.
  };
  uint32_t seed = 600;
  for (const Shape& sh : shapes) {
    CaseSpec c = MakeCase(sh.t, sh.in, sh.outs, sh.adapters);
    c.linear = true;
    c.linear_options.gemm = LinearGemm::kStream;
    c.linear_options.splits = sh.splits;
    c.linear_options.depth = sh.stages;
    c.linear_options.tile_cols = sh.tile;
    for (at::ScalarType t : {at::kHalf, at::kBFloat16}) ExpectGood(c, t, gpu, seed++);
  }
  CaseSpec bottleneck = MakeCase(5, 1024, {512, 128, 128}, 3);
  bottleneck.bottleneck = true;
  bottleneck.linear = true;
  bottleneck.linear_options.gemm = LinearGemm::kStream;
  for (at::ScalarType t : {at::kHalf, at::kBFloat16}) ExpectGood(bottleneck, t, gpu, seed++);
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(gpu);
  LoraLinearOptions stream;
  stream.gemm = LinearGemm::kStream;
  EXPECT_FALSE(StreamGemmServes(at::randn({33, 64}, opts), at::randn({64, 64}, opts)));
  EXPECT_FALSE(StreamGemmServes(at::randn({8, 96}, opts), at::randn({64, 96}, opts)));
  EXPECT_FALSE(StreamGemmServes(at::randn({8, 64}, opts), at::randn({72, 64}, opts)));
  EXPECT_FALSE(StreamGemmServes(at::randn({8, 64}), at::randn({64, 64})));
  EXPECT_EQ(LoraLinear(at::randn({33, 64}, opts), at::randn({64, 64}, opts),
                       at::empty({33, 64}, opts), nullptr, nullptr, stream)
                .code(),
            absl::StatusCode::kInvalidArgument);
  stream.splits = 8;  // k = 64 does not split in 8.
  EXPECT_EQ(LoraLinear(at::randn({8, 64}, opts), at::randn({64, 64}, opts),
                       at::empty({8, 64}, opts), nullptr, nullptr, stream)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

// LoraLinear's cuBLAS path: the base GEMM writes y, LoraApply's first kernel
// (the split shrink or the fused kernel, as kAuto picks) is launched as the
// GEMM's programmatic dependent and must wait for it before touching y.
// Against float64, every dtype, with y NaN before the GEMM and the rows
// without an adapter bit-equal to the GEMM alone.
TEST(LoraKernelsCudaTest, AfterBaseGemmMatchesFloat64) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const at::Device gpu(at::kCUDA, 0);
  std::vector<CaseSpec> cases;
  auto add = [&](int64_t t, int64_t in, std::vector<int64_t> outs, int64_t adapters,
                 double none = 0.2, bool round_robin = false) {
    CaseSpec c = MakeCase(t, in, std::move(outs), adapters, none);
    c.linear = true;
    c.linear_options.gemm = LinearGemm::kTorch;
    c.round_robin = round_robin;
    cases.push_back(c);
  };
  add(32, 4096, {4096}, 32, 0.0, true);             // The benchmark's decode shape: fused.
  add(32, 4096, {4096, 1024, 1024}, 8, 0.0, true);  // q/k/v, 4 tokens per adapter: fused.
  add(32, 14336, {4096}, 4);                        // Long K, 8 tokens per adapter: split.
  add(512, 5120, {5120, 1024, 1024}, 128, 0.1);     // Prefill-like: split.
  add(7, 3424, {3424}, 3);
  uint32_t seed = 500;
  for (const CaseSpec& c : cases)
    for (at::ScalarType t : kDtypes) ExpectGood(c, t, gpu, seed++);
}

// The fused single-launch kernel (decode shape: at most 8 tokens per adapter)
// against float64 in every dtype, asked for explicitly; kAuto on the decode
// benchmark's shape; and the batches it refuses.
TEST(LoraKernelsCudaTest, FusedKernelMatchesFloat64) {
  if (!HaveGpu()) GTEST_SKIP() << "no CUDA device";
  const at::Device gpu(at::kCUDA, 0);
  std::vector<CaseSpec> cases;
  auto add = [&](int64_t t, int64_t in, std::vector<int64_t> outs, int64_t adapters,
                 double none = 0.2, int64_t pad = 0) {
    CaseSpec c = MakeCase(t, in, std::move(outs), adapters, none, pad);
    c.use_apply = true;
    c.round_robin = true;
    c.path = LoraPath::kFused;
    cases.push_back(c);
  };
  add(1, 3424, {3424}, 1, 0.0);
  add(32, 4096, {4096}, 32, 0.0);            // The decode benchmark's shape.
  add(7, 5120, {5120, 1024, 1024}, 5);       // q/k/v with GQA.
  add(64, 3424, {3424, 856, 856}, 16);       // 4 tokens per adapter; ranks 4..128.
  add(512, 5120, {14336, 14336}, 128, 0.1);  // gate/up: more output tiles than a cluster's CTAs.
  add(24, 14336, {5120}, 3, 0.0);            // 8 tokens per adapter: the largest tile.
  add(12, 3424, {3424}, 6, 0.2, 1);          // Misaligned rows: scalar loads.
  add(5, 40, {72}, 2, 0.0);                  // K shorter than the cluster: idle shrink CTAs.
  add(9, 100, {36}, 3, 0.0);                 // K not a multiple of the 16-bit vector.
  uint32_t seed = 300;
  for (CaseSpec c : cases) {
    c.blocked = (seed % 2) == 0;
    for (at::ScalarType t : kDtypes) ExpectGood(c, t, gpu, seed++);
  }
  CaseSpec bottleneck = cases[0];
  bottleneck.tokens = 20;
  bottleneck.in = 520;
  bottleneck.outs = {520};
  bottleneck.adapters = 8;
  bottleneck.bottleneck = true;
  for (at::ScalarType t : kDtypes) ExpectGood(bottleneck, t, gpu, seed++);
  CaseSpec automatic = cases[1];
  automatic.path = LoraPath::kAuto;
  ExpectGood(automatic, at::kBFloat16, gpu, seed++);

  // Nine tokens on one adapter: kFused refuses, kAuto takes the split kernels.
  const auto opts = at::TensorOptions().dtype(at::kBFloat16).device(gpu);
  LoraWeightTableBuilder builder(1, 1);
  LoraSliceWeights w;
  w.a = at::randn({4, 64}, opts);
  w.b = at::randn({32, 4}, opts);
  ASSERT_TRUE(builder.Set(0, 0, w).ok());
  absl::StatusOr<LoraWeightTable> table = builder.Build();
  ASSERT_TRUE(table.ok());
  absl::StatusOr<LoraBatchIndex> index = BuildLoraBatchIndex(std::vector<int32_t>(9, 0), 1, 1, gpu);
  ASSERT_TRUE(index.ok());
  const at::Tensor x = at::randn({9, 64}, opts);
  const std::vector<at::Tensor> ys = {at::zeros({9, 32}, opts)};
  EXPECT_EQ(LoraApply(x, *table, *index, ys, LoraPath::kFused).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(LoraApply(x, *table, *index, ys, LoraPath::kAuto).ok());
  const at::Tensor want =
      at::matmul(at::matmul(x.to(at::kDouble), w.a.to(at::kDouble).t()), w.b.to(at::kDouble).t());
  EXPECT_LT(RelErr(ys[0].to(at::kDouble), want, want), YTolerance(at::kBFloat16));
}
#endif

}  // namespace
}  // namespace adapterd
