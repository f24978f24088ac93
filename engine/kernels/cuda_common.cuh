#pragma once

// Device helpers shared by the CUDA kernels of engine/kernels (lora_kernels.cu,
// decode_gemm.cu): dtype conversion, 16-byte loads, bottleneck activations,
// the weight-table scale, programmatic dependent launch and split cluster
// barriers, and two host queries. Included only from .cu files (no ATen).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <string>
#include <type_traits>

#include "engine/kernels/lora_launch.h"

namespace adapterd::lora_internal {

__device__ __forceinline__ float ToF(float x) { return x; }
__device__ __forceinline__ float ToF(__half x) { return __half2float(x); }
__device__ __forceinline__ float ToF(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T FromF(float x);
template <>
__device__ __forceinline__ float FromF<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half FromF<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromF<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <typename T>
constexpr int kVec = 16 / sizeof(T);

template <typename T>
__device__ __forceinline__ void Load16(const T* p, float (&out)[kVec<T>]) {
  const uint4 u = __ldg(reinterpret_cast<const uint4*>(p));
  const T* e = reinterpret_cast<const T*>(&u);
#pragma unroll
  for (int i = 0; i < kVec<T>; ++i) out[i] = ToF(e[i]);
}

__device__ __forceinline__ float Activate(float x, int act) {
  switch (act) {
    case 1:
      return fmaxf(x, 0.0f);
    case 2:
      return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    case 3:
      return 0.5f * x * (1.0f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case 4:
      return x / (1.0f + expf(-x));
    default:
      return x;
  }
}

__device__ __forceinline__ float ScaleOf(const int64_t* meta) {
  return __int_as_float(static_cast<int>(static_cast<uint32_t>(meta[kMetaScale])));
}

template <typename T>
struct Pair;
template <>
struct Pair<__half> {
  using type = __half2;
  static __device__ __forceinline__ float2 ToF2(__half2 v) { return __half22float2(v); }
};
template <>
struct Pair<__nv_bfloat16> {
  using type = __nv_bfloat162;
  static __device__ __forceinline__ float2 ToF2(__nv_bfloat162 v) { return __bfloat1622float2(v); }
};

template <typename T>
__device__ __forceinline__ void ToFloats(const uint4& v, float (&out)[kVec<T>]) {
  if constexpr (std::is_same_v<T, float>) {
    out[0] = __uint_as_float(v.x);
    out[1] = __uint_as_float(v.y);
    out[2] = __uint_as_float(v.z);
    out[3] = __uint_as_float(v.w);
  } else {
    using P = typename Pair<T>::type;
    const P* pv = reinterpret_cast<const P*>(&v);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 f = Pair<T>::ToF2(pv[i]);
      out[2 * i] = f.x;
      out[2 * i + 1] = f.y;
    }
  }
}

__device__ __forceinline__ uint4 Ld16(const void* p) {
  return __ldg(reinterpret_cast<const uint4*>(p));
}

// d += a · b on tensor cores: mma.sync.m16n8k16 with fp32 accumulation
// (a: the 16x16 row-major A fragment, b: the 16x8 column-major B fragment).
template <typename T>
struct Mma;
template <>
struct Mma<__nv_bfloat16> {
  static __device__ __forceinline__ void Run(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                             uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};
template <>
struct Mma<__half> {
  static __device__ __forceinline__ void Run(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                             uint32_t a3, uint32_t b0, uint32_t b1) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
};

// A generic pointer into shared memory as a shared-window address.
__device__ __forceinline__ uint32_t SmemAddr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void LaunchDependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void WaitForPrimary() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

__device__ __forceinline__ void ClusterArrive() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;" ::: "memory");
#endif
}

__device__ __forceinline__ void ClusterWait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// Whether `kernel` runs with sm_90 features (thread-block clusters,
// programmatic dependent launch) on the current device: an sm_90+ device and
// sm_90 code for the kernel in this binary. `cache` holds one answer per
// device (0 unknown, 1 yes, 2 no).
inline bool Sm90KernelRuns(const void* kernel, int (&cache)[64]) {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return false;
  if (cache[dev] == 0) {
    int major = 0;
    cudaFuncAttributes attr = {};
    const bool ok =
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
        major >= 9 && cudaFuncGetAttributes(&attr, kernel) == cudaSuccess &&
        attr.binaryVersion >= 90;
    cudaGetLastError();  // A failed query leaves no sticky error.
    cache[dev] = ok ? 1 : 2;
  }
  return cache[dev] == 1;
}

// Launch attributes for cudaLaunchKernelEx: a thread-block cluster of
// `cluster_x` CTAs along x (0: none) and, with `pdl`, programmatic stream
// serialization (the kernel may start before the one queued before it on the
// stream finishes; it waits for it with griddepcontrol.wait). Keep the object
// alive until the launch: the config points into it.
struct LaunchAttrs {
  cudaLaunchAttribute attr[2];
  unsigned count = 0;
  LaunchAttrs(unsigned cluster_x, bool pdl) {
    if (cluster_x > 0) {
      attr[count].id = cudaLaunchAttributeClusterDimension;
      attr[count].val.clusterDim.x = cluster_x;
      attr[count].val.clusterDim.y = 1;
      attr[count].val.clusterDim.z = 1;
      ++count;
    }
    if (pdl) {
      attr[count].id = cudaLaunchAttributeProgrammaticStreamSerialization;
      attr[count].val.programmaticStreamSerializationAllowed = 1;
      ++count;
    }
  }
  void ApplyTo(cudaLaunchConfig_t& config) {
    config.attrs = attr;
    config.numAttrs = count;
  }
};

// Lets `kernel` take up to `bytes` of dynamic shared memory, once per device
// (`done` remembers; one array per kernel). Returns the CUDA error text, or
// empty.
inline std::string AllowDynamicSmem(const void* kernel, int bytes, bool (&done)[64]) {
  int dev = 0;
  if (cudaGetDevice(&dev) == cudaSuccess && dev >= 0 && dev < 64 && done[dev]) return {};
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // Not left behind for the next launch check to find.
    return cudaGetErrorString(e);
  }
  if (dev >= 0 && dev < 64) done[dev] = true;
  return {};
}

inline std::string LastError() {
  const cudaError_t e = cudaGetLastError();
  return e == cudaSuccess ? std::string() : std::string(cudaGetErrorString(e));
}

inline int NumSms() {
  static int cached[64] = {};
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= 64) return 132;
  if (cached[dev] == 0) {
    int n = 0;
    cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, dev);
    cached[dev] = n > 0 ? n : 132;
  }
  return cached[dev];
}

}  // namespace adapterd::lora_internal
