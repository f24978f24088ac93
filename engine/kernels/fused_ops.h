#pragma once

// Fused elementwise steps of the Llama decoder: one CUDA kernel each where two
// or three ATen kernels ran, rounding where the ATen sequence rounds (the
// CUDA graph of a decode step pays a few microseconds per kernel whatever its
// bytes). On other devices the same ATen sequence runs. Engine-internal
// (holds at::Tensor). Throw c10::Error on bad arguments or a CUDA error.

#include <ATen/core/Tensor.h>

#include <utility>

namespace adapterd {

// {x + f, rms_norm(x + f) · weight}: the residual stream after a sub-layer and
// the next sub-layer's normalised input (fp32 inside, the mean square over the
// rounded sum, rounded once). x, f: [T, H] with contiguous columns; weight [H].
std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& f,
                                             const at::Tensor& weight, double eps);

// silu(gate) · up for gate_up = [gate | up], [T, 2I] with contiguous columns:
// [T, I], rounded after the silu and after the product (at::silu, then mul).
at::Tensor SiluMul(const at::Tensor& gate_up);

// Rotary embedding: qk · cos + flip_halves(qk) · signed_sin for qk [T, heads,
// D] (the last dim contiguous, e.g. a view into a fused q/k/v output), cos and
// signed_sin [T, 1, D] contiguous (the sine's first half negated). Returns
// [T, heads, D] contiguous, rounded after the product and after the sum (a
// product, then addcmul).
at::Tensor RotaryQk(const at::Tensor& qk, const at::Tensor& cos, const at::Tensor& signed_sin);

}  // namespace adapterd
