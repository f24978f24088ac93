// Fused elementwise kernels of the Llama decoder on CUDA (fused_ops.h): each
// replaces two or three ATen kernels of a layer with one launch and rounds
// where the ATen sequence rounds. A decode step's layer is ~20 small kernels
// around four GEMMs; in a CUDA graph each costs a few microseconds whatever
// its bytes, so fewer launches is the lever (docs/gpu.md).

#include "engine/kernels/cuda_common.cuh"
#include "engine/kernels/fused_launch.h"

namespace adapterd::fused_internal {
namespace {

using lora_internal::FromF;
using lora_internal::LastError;
using lora_internal::ToF;

constexpr int kNormThreads = 256;

// One CTA per row: res = x + f (rounded), then the row's mean square over the
// rounded res in fp32, then out = res · rsqrt(ms + eps) · w, rounded once.
template <typename T>
__global__ void __launch_bounds__(kNormThreads)
    AddRmsNormKernel(const T* x, int64_t ld_x, const T* f, int64_t ld_f, const T* w, T* res,
                     T* out, int h, float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * ld_x;
  const T* fr = f + row * ld_f;
  T* rr = res + row * h;
  float ss = 0.0f;
  for (int j = threadIdx.x; j < h; j += kNormThreads) {
    const T r = FromF<T>(ToF(xr[j]) + ToF(fr[j]));
    rr[j] = r;
    const float rf = ToF(r);
    ss = fmaf(rf, rf, ss);
  }
  __shared__ float warp_sums[kNormThreads / 32];
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, off);
  if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = ss;
  __syncthreads();
  float total = 0.0f;
#pragma unroll
  for (int i = 0; i < kNormThreads / 32; ++i) total += warp_sums[i];
  const float rstd = rsqrtf(total / static_cast<float>(h) + eps);
  T* orow = out + row * h;
  for (int j = threadIdx.x; j < h; j += kNormThreads) {
    // Each thread reads back its own writes of res.
    orow[j] = FromF<T>(ToF(rr[j]) * rstd * ToF(w[j]));
  }
}

template <typename T>
__global__ void SiluMulKernel(const T* gate_up, int64_t ld, T* out, int rows, int inter) {
  const int64_t total = static_cast<int64_t>(rows) * inter;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = i / inter;
    const int64_t j = i % inter;
    const float g = ToF(gate_up[t * ld + j]);
    const T s = FromF<T>(g / (1.0f + expf(-g)));
    out[i] = FromF<T>(ToF(s) * ToF(gate_up[t * ld + inter + j]));
  }
}

template <typename T>
__global__ void RotaryKernel(const T* qk, int64_t ld_row, int64_t ld_head, const T* cos,
                             const T* ssin, T* out, int rows, int heads, int dim) {
  const int64_t total = static_cast<int64_t>(rows) * heads * dim;
  const int half = dim / 2;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int d = static_cast<int>(i % dim);
    const int64_t hh = (i / dim) % heads;
    const int64_t t = i / (static_cast<int64_t>(dim) * heads);
    const T* src = qk + t * ld_row + hh * ld_head;
    const T prod = FromF<T>(ToF(src[d]) * ToF(cos[t * dim + d]));
    const float rot = ToF(src[d < half ? d + half : d - half]);
    out[i] = FromF<T>(ToF(prod) + rot * ToF(ssin[t * dim + d]));
  }
}

int ElementwiseBlocks(int64_t total) {
  const int64_t blocks = (total + 255) / 256;
  return static_cast<int>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

}  // namespace

std::string LaunchAddRmsNorm(LoraDType dtype, const void* x, int64_t ld_x, const void* f,
                             int64_t ld_f, const void* w, void* res, void* out, int rows, int h,
                             float eps, void* stream) {
  if (rows <= 0) return std::string();
  const auto s = static_cast<cudaStream_t>(stream);
  switch (dtype) {
    case LoraDType::kFloat32:
      AddRmsNormKernel<float><<<rows, kNormThreads, 0, s>>>(
          static_cast<const float*>(x), ld_x, static_cast<const float*>(f), ld_f,
          static_cast<const float*>(w), static_cast<float*>(res), static_cast<float*>(out), h, eps);
      break;
    case LoraDType::kFloat16:
      AddRmsNormKernel<__half><<<rows, kNormThreads, 0, s>>>(
          static_cast<const __half*>(x), ld_x, static_cast<const __half*>(f), ld_f,
          static_cast<const __half*>(w), static_cast<__half*>(res), static_cast<__half*>(out), h,
          eps);
      break;
    case LoraDType::kBFloat16:
      AddRmsNormKernel<__nv_bfloat16><<<rows, kNormThreads, 0, s>>>(
          static_cast<const __nv_bfloat16*>(x), ld_x, static_cast<const __nv_bfloat16*>(f), ld_f,
          static_cast<const __nv_bfloat16*>(w), static_cast<__nv_bfloat16*>(res),
          static_cast<__nv_bfloat16*>(out), h, eps);
      break;
  }
  return LastError();
}

std::string LaunchSiluMul(LoraDType dtype, const void* gate_up, int64_t ld, void* out, int rows,
                          int inter, void* stream) {
  const int64_t total = static_cast<int64_t>(rows) * inter;
  if (total == 0) return std::string();
  const auto s = static_cast<cudaStream_t>(stream);
  const int blocks = ElementwiseBlocks(total);
  switch (dtype) {
    case LoraDType::kFloat32:
      SiluMulKernel<float><<<blocks, 256, 0, s>>>(static_cast<const float*>(gate_up), ld,
                                                  static_cast<float*>(out), rows, inter);
      break;
    case LoraDType::kFloat16:
      SiluMulKernel<__half><<<blocks, 256, 0, s>>>(static_cast<const __half*>(gate_up), ld,
                                                   static_cast<__half*>(out), rows, inter);
      break;
    case LoraDType::kBFloat16:
      SiluMulKernel<__nv_bfloat16><<<blocks, 256, 0, s>>>(
          static_cast<const __nv_bfloat16*>(gate_up), ld, static_cast<__nv_bfloat16*>(out), rows,
          inter);
      break;
  }
  return LastError();
}

std::string LaunchRotary(LoraDType dtype, const void* qk, int64_t ld_row, int64_t ld_head,
                         const void* cos, const void* signed_sin, void* out, int rows, int heads,
                         int dim, void* stream) {
  const int64_t total = static_cast<int64_t>(rows) * heads * dim;
  if (total == 0) return std::string();
  const auto s = static_cast<cudaStream_t>(stream);
  const int blocks = ElementwiseBlocks(total);
  switch (dtype) {
    case LoraDType::kFloat32:
      RotaryKernel<float><<<blocks, 256, 0, s>>>(
          static_cast<const float*>(qk), ld_row, ld_head, static_cast<const float*>(cos),
          static_cast<const float*>(signed_sin), static_cast<float*>(out), rows, heads, dim);
      break;
    case LoraDType::kFloat16:
      RotaryKernel<__half><<<blocks, 256, 0, s>>>(
          static_cast<const __half*>(qk), ld_row, ld_head, static_cast<const __half*>(cos),
          static_cast<const __half*>(signed_sin), static_cast<__half*>(out), rows, heads, dim);
      break;
    case LoraDType::kBFloat16:
      RotaryKernel<__nv_bfloat16><<<blocks, 256, 0, s>>>(
          static_cast<const __nv_bfloat16*>(qk), ld_row, ld_head,
          static_cast<const __nv_bfloat16*>(cos), static_cast<const __nv_bfloat16*>(signed_sin),
          static_cast<__nv_bfloat16*>(out), rows, heads, dim);
      break;
  }
  return LastError();
}

}  // namespace adapterd::fused_internal
