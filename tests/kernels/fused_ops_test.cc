// The fused elementwise kernels of the Llama decoder (engine/kernels/fused_ops.h)
// against the ATen sequences they replace: on the CPU the fallback against a
// float64 reference; on CUDA the kernels against the same ATen ops on the
// same device (bit for bit where the rounding points are the same ops,
// within one unit in the last place for the norm, whose sum order differs).

#include "engine/kernels/fused_ops.h"

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

namespace adapterd {
namespace {

// Largest |a - b| in units of b's dtype resolution at `scale` (default |b|;
// 1 ulp ~ 2^-7 |b| for bf16).
double MaxUlps(const at::Tensor& a, const at::Tensor& b, at::Tensor scale = at::Tensor()) {
  const double eps = b.scalar_type() == at::kBFloat16 ? 1.0 / 128
                     : b.scalar_type() == at::kHalf   ? 1.0 / 1024
                                                      : 1.0 / 8388608;
  const at::Tensor bd = b.to(at::kDouble);
  const at::Tensor diff = (a.to(at::kDouble) - bd).abs();
  if (!scale.defined()) scale = bd.abs();
  const at::Tensor unit = (scale.to(at::kDouble) * eps).clamp_min(1e-30);
  return (diff / unit).max().item<double>();
}

std::string Name(at::ScalarType t) { return std::string(c10::toString(t)); }

void ExpectMatchesAten(at::Device device, at::ScalarType dtype) {
  SCOPED_TRACE(device.str() + " " + Name(dtype));
  at::manual_seed(3);
  const auto opts = at::TensorOptions().dtype(dtype).device(device);
  constexpr int64_t kRows = 13, kHidden = 4096, kInter = 1000, kHeads = 12, kDim = 64;
  // AddRmsNorm on strided rows (views into wider tensors, as a fused output's slices).
  const at::Tensor x = at::randn({kRows, kHidden + 64}, opts).narrow(1, 0, kHidden);
  const at::Tensor f = at::randn({kRows, kHidden}, opts);
  const at::Tensor w = at::rand({kHidden}, opts) + 0.5;
  const auto [res, out] = AddRmsNorm(x, f, w, 1e-5);
  const at::Tensor want_res = x + f;
  EXPECT_TRUE(at::equal(res, want_res));
  // at::rms_norm sums in another order (and on CUDA may round before the
  // weight): within two units in the last place.
  const at::Tensor want_out = at::rms_norm(want_res, {kHidden}, w, 1e-5);
  EXPECT_LE(MaxUlps(out, want_out), 2.01);

  const at::Tensor gate_up = at::randn({kRows, 2 * kInter + 8}, opts).narrow(1, 0, 2 * kInter);
  const at::Tensor mlp = SiluMul(gate_up);
  const at::Tensor want_mlp =
      at::silu(gate_up.narrow(1, 0, kInter)).mul_(gate_up.narrow(1, kInter, kInter));
  EXPECT_LE(MaxUlps(mlp, want_mlp), dtype == at::kFloat ? 4.0 : 1.01);

  const at::Tensor qkv = at::randn({kRows, (kHeads + 4) * kDim}, opts);
  const at::Tensor qk = qkv.narrow(1, 0, kHeads * kDim).view({kRows, kHeads, kDim});
  const at::Tensor angle = at::rand({kRows, 1, kDim}, opts.dtype(at::kFloat)) * 6.0;
  const at::Tensor cos = angle.cos().to(dtype);
  const at::Tensor sin = angle.sin().to(dtype);
  const at::Tensor ssin = at::cat({-sin.narrow(-1, 0, kDim / 2), sin.narrow(-1, kDim / 2, kDim / 2)}, -1);
  const at::Tensor rot = RotaryQk(qk, cos, ssin);
  // transformers: q·cos + rotate_half(q)·sin, rotate_half(q) = (−q2, q1).
  const at::Tensor rotate_half =
      at::cat({-qk.narrow(-1, kDim / 2, kDim / 2), qk.narrow(-1, 0, kDim / 2)}, -1);
  const at::Tensor want_rot = qk * cos + rotate_half * sin;
  EXPECT_TRUE(rot.is_contiguous());
  // Rounded once fewer than transformers' sum of two rounded products; the
  // sum may cancel, so the unit is taken at the size of the terms.
  const at::Tensor terms = (qk.to(at::kDouble) * cos.to(at::kDouble)).abs() +
                           (rotate_half.to(at::kDouble) * sin.to(at::kDouble)).abs();
  EXPECT_LE(MaxUlps(rot, want_rot, terms), 2.01);
  if (device.is_cuda()) {
    // Against the exact ATen sequence the decoder ran before: bit for bit.
    const at::Tensor flipped =
        qk.reshape({kRows, kHeads, 2, kDim / 2}).flip(2).reshape({kRows, kHeads, kDim});
    // Against the exact ATen sequence the decoder ran before: the same
    // rounding points, so at most one unit apart (a fused multiply-add in
    // one and not the other), and mostly equal.
    const at::Tensor before = at::addcmul(qk * cos, flipped, ssin);
    EXPECT_LE(MaxUlps(rot, before, terms), 1.01);
    std::printf("  %s rotary: %.4f of elements differ from the ATen sequence; silu·up %.4f\n",
                Name(dtype).c_str(), (rot != before).to(at::kFloat).mean().item<double>(),
                (mlp != want_mlp).to(at::kFloat).mean().item<double>());
  }
}

TEST(FusedOpsTest, CpuFallbackMatchesTheAtenSequence) {
  for (at::ScalarType t : {at::kFloat, at::kBFloat16}) ExpectMatchesAten(at::kCPU, t);
}

TEST(FusedOpsTest, RejectsMismatchedShapes) {
  EXPECT_THROW(AddRmsNorm(at::randn({2, 8}), at::randn({2, 9}), at::randn({8}), 1e-5),
               c10::Error);
  EXPECT_THROW(SiluMul(at::randn({2, 7})), c10::Error);
  EXPECT_THROW(RotaryQk(at::randn({2, 3, 8}), at::randn({2, 1, 6}), at::randn({2, 1, 6})),
               c10::Error);
}

#ifdef ADAPTERD_WITH_CUDA
TEST(FusedOpsTest, CudaKernelsMatchTheAtenSequence) {
  if (!at::hasCUDA()) GTEST_SKIP() << "no CUDA device";
  for (at::ScalarType t : {at::kFloat, at::kHalf, at::kBFloat16})
    ExpectMatchesAten(at::Device(at::kCUDA, 0), t);
}
#endif

}  // namespace
}  // namespace adapterd
