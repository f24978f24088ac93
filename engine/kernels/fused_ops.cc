#include "engine/kernels/fused_ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include "engine/kernels/fused_launch.h"

#ifdef ADAPTERD_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace adapterd {
namespace {

using lora_internal::LoraDType;

bool FusedDtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

LoraDType LaunchDtype(at::ScalarType t) {
  if (t == at::kHalf) return LoraDType::kFloat16;
  if (t == at::kBFloat16) return LoraDType::kBFloat16;
  return LoraDType::kFloat32;
}

#ifdef ADAPTERD_WITH_CUDA
void* Stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

}  // namespace

std::pair<at::Tensor, at::Tensor> AddRmsNorm(const at::Tensor& x, const at::Tensor& f,
                                             const at::Tensor& weight, double eps) {
  TORCH_CHECK(x.dim() == 2 && f.sizes() == x.sizes() && weight.dim() == 1 &&
                  weight.size(0) == x.size(1),
              "AddRmsNorm: x and f [T, H], weight [H]");
#ifdef ADAPTERD_WITH_CUDA
  if (x.is_cuda() && FusedDtype(x.scalar_type()) && f.scalar_type() == x.scalar_type() &&
      weight.scalar_type() == x.scalar_type() && x.stride(1) == 1 && f.stride(1) == 1 &&
      weight.is_contiguous() && f.device() == x.device() && weight.device() == x.device()) {
    const c10::cuda::CUDAGuard guard(x.device());
    at::Tensor res = at::empty(x.sizes(), x.options());
    at::Tensor out = at::empty(x.sizes(), x.options());
    const std::string err = fused_internal::LaunchAddRmsNorm(
        LaunchDtype(x.scalar_type()), x.const_data_ptr(), x.stride(0), f.const_data_ptr(),
        f.stride(0), weight.const_data_ptr(), res.data_ptr(), out.data_ptr(),
        static_cast<int>(x.size(0)), static_cast<int>(x.size(1)), static_cast<float>(eps),
        Stream());
    TORCH_CHECK(err.empty(), "AddRmsNorm: ", err);
    return {res, out};
  }
#endif
  at::Tensor res = x + f;
  return {res, at::rms_norm(res, {res.size(-1)}, weight, eps)};
}

at::Tensor SiluMul(const at::Tensor& gate_up) {
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.size(1) % 2 == 0, "SiluMul: gate_up [T, 2I]");
  const int64_t inter = gate_up.size(1) / 2;
#ifdef ADAPTERD_WITH_CUDA
  if (gate_up.is_cuda() && FusedDtype(gate_up.scalar_type()) && gate_up.stride(1) == 1) {
    const c10::cuda::CUDAGuard guard(gate_up.device());
    at::Tensor out = at::empty({gate_up.size(0), inter}, gate_up.options());
    const std::string err = fused_internal::LaunchSiluMul(
        LaunchDtype(gate_up.scalar_type()), gate_up.const_data_ptr(), gate_up.stride(0),
        out.data_ptr(), static_cast<int>(gate_up.size(0)), static_cast<int>(inter), Stream());
    TORCH_CHECK(err.empty(), "SiluMul: ", err);
    return out;
  }
#endif
  return at::silu(gate_up.narrow(1, 0, inter)).mul_(gate_up.narrow(1, inter, inter));
}

at::Tensor RotaryQk(const at::Tensor& qk, const at::Tensor& cos, const at::Tensor& signed_sin) {
  TORCH_CHECK(qk.dim() == 3 && qk.size(2) % 2 == 0 && cos.dim() == 3 &&
                  cos.size(0) == qk.size(0) && cos.size(1) == 1 && cos.size(2) == qk.size(2) &&
                  signed_sin.sizes() == cos.sizes(),
              "RotaryQk: qk [T, heads, D], cos and signed_sin [T, 1, D]");
  const int64_t t = qk.size(0), heads = qk.size(1), dim = qk.size(2);
#ifdef ADAPTERD_WITH_CUDA
  if (qk.is_cuda() && FusedDtype(qk.scalar_type()) && qk.stride(2) == 1 &&
      cos.scalar_type() == qk.scalar_type() && signed_sin.scalar_type() == qk.scalar_type() &&
      cos.is_contiguous() && signed_sin.is_contiguous()) {
    const c10::cuda::CUDAGuard guard(qk.device());
    at::Tensor out = at::empty({t, heads, dim}, qk.options());
    const std::string err = fused_internal::LaunchRotary(
        LaunchDtype(qk.scalar_type()), qk.const_data_ptr(), qk.stride(0), qk.stride(1),
        cos.const_data_ptr(), signed_sin.const_data_ptr(), out.data_ptr(), static_cast<int>(t),
        static_cast<int>(heads), static_cast<int>(dim), Stream());
    TORCH_CHECK(err.empty(), "RotaryQk: ", err);
    return out;
  }
#endif
  const at::Tensor flipped =
      qk.reshape({t, heads, 2, dim / 2}).flip(2).reshape({t, heads, dim});
  return at::addcmul(qk * cos, flipped, signed_sin);
}

}  // namespace adapterd
