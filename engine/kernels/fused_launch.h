#pragma once

// Plain-C++ launch functions of the fused elementwise kernels (fused_ops.cu),
// called by fused_ops.cc. No torch and no CUDA header here.

#include <cstdint>
#include <string>

#include "engine/kernels/lora_launch.h"

namespace adapterd::fused_internal {

using lora_internal::LoraDType;

// res = x + f; out = rms_norm(res) · w, per row of h elements (fp32 inside).
std::string LaunchAddRmsNorm(LoraDType dtype, const void* x, int64_t ld_x, const void* f,
                             int64_t ld_f, const void* w, void* res, void* out, int rows, int h,
                             float eps, void* stream);

// out[t, j] = silu(gate_up[t, j]) · gate_up[t, inter + j], rounded after the
// silu and after the product.
std::string LaunchSiluMul(LoraDType dtype, const void* gate_up, int64_t ld, void* out, int rows,
                          int inter, void* stream);

// out[t, h, :] = qk[t, h, :] · cos[t, :] + flip_halves(qk[t, h, :]) · signed_sin[t, :],
// rounded after the product and after the sum; out contiguous [rows, heads, dim].
std::string LaunchRotary(LoraDType dtype, const void* qk, int64_t ld_row, int64_t ld_head,
                         const void* cos, const void* signed_sin, void* out, int rows, int heads,
                         int dim, void* stream);

}  // namespace adapterd::fused_internal
