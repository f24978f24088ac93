// Decode attention over the KV cache in place (see decode_attention.h).
//
// One CTA of four warps per (head block, row, split), a head block being HG =
// 1, 2 or 4 query heads of one KV head (GQA: each key is read once for them).
// Eight lanes per (key, head), each lane holding head_dim / 8 dimensions of
// q, of the key and of the output; a warp's four lane groups take 4 / HG keys
// for HG heads per step, each group keeping its own online softmax (running
// max, sum and weighted V), merged across the warp by shuffles and across
// the warps in shared memory. Scores and softmax in fp32 (exp2 with log2(e)
// folded into the scale).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <string>
#include <type_traits>

#include "engine/kernels/cuda_common.cuh"
#include "engine/kernels/decode_attention_launch.h"

namespace adapterd::attention_internal {
namespace {

using lora_internal::LastError;
using lora_internal::ToF;

constexpr int kWarps = 4;
constexpr int kThreads = kWarps * 32;
constexpr int kLanesPerKey = 8;
constexpr int kGroupsPerWarp = 32 / kLanesPerKey;

// D consecutive elements of T held by one lane: loaded as raw words with the
// widest aligned vector the row slice allows, converted to fp32 on use.
template <typename T, int D>
struct Slice {
  static constexpr int kBytes = D * static_cast<int>(sizeof(T));
  static constexpr int kWidth = kBytes % 16 == 0 ? 16 : kBytes % 8 == 0 ? 8 : 4;
  static constexpr int kWords = kBytes / 4;
  uint32_t w[kWords];

  __device__ __forceinline__ void Load(const T* p) {
    if constexpr (kWidth == 16) {
#pragma unroll
      for (int i = 0; i < kWords / 4; ++i) {
        const uint4 u = __ldg(reinterpret_cast<const uint4*>(p) + i);
        w[4 * i] = u.x;
        w[4 * i + 1] = u.y;
        w[4 * i + 2] = u.z;
        w[4 * i + 3] = u.w;
      }
    } else if constexpr (kWidth == 8) {
#pragma unroll
      for (int i = 0; i < kWords / 2; ++i) {
        const uint2 u = __ldg(reinterpret_cast<const uint2*>(p) + i);
        w[2 * i] = u.x;
        w[2 * i + 1] = u.y;
      }
    } else {
#pragma unroll
      for (int i = 0; i < kWords; ++i) w[i] = __ldg(reinterpret_cast<const uint32_t*>(p) + i);
    }
  }

  __device__ __forceinline__ void Store(T* p) const {
    if constexpr (kWidth == 16) {
#pragma unroll
      for (int i = 0; i < kWords / 4; ++i) {
        reinterpret_cast<uint4*>(p)[i] =
            make_uint4(w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]);
      }
    } else if constexpr (kWidth == 8) {
#pragma unroll
      for (int i = 0; i < kWords / 2; ++i) {
        reinterpret_cast<uint2*>(p)[i] = make_uint2(w[2 * i], w[2 * i + 1]);
      }
    } else {
#pragma unroll
      for (int i = 0; i < kWords; ++i) reinterpret_cast<uint32_t*>(p)[i] = w[i];
    }
  }

  __device__ __forceinline__ float At(int i) const {
    const T* e = reinterpret_cast<const T*>(w);
    return ToF(e[i]);
  }

  __device__ __forceinline__ void Set(int i, float v) {
    reinterpret_cast<T*>(w)[i] = lora_internal::FromF<T>(v);
  }
};

// Rotary embedding of one lane's slice of a head (dims sub*D ...), as
// transformers applies it and the engine's eager path computes it:
// round(round(x·cos) + rotate_half(x)·sin), rotate_half(x)[d] = −x[d + half]
// for d < half, else x[d − half]. The partner dims live in lane sub ^ 4 of
// the same lane group; every lane of the warp must call this.
template <typename T, int D>
__device__ __forceinline__ void Rotate(Slice<T, D>& x, const T* cos, const T* sin, int sub) {
  Slice<T, D> c, s;
  c.Load(cos);
  s.Load(sin);
  const bool low = sub < kLanesPerKey / 2;
  float out[D];
#pragma unroll
  for (int i = 0; i < D; ++i) {
    const float xi = x.At(i);
    const float partner = __shfl_xor_sync(0xffffffffu, xi, kLanesPerKey / 2);
    const float rounded = ToF(lora_internal::FromF<T>(xi * c.At(i)));
    out[i] = fmaf(partner, low ? -s.At(i) : s.At(i), rounded);
  }
#pragma unroll
  for (int i = 0; i < D; ++i) x.Set(i, out[i]);
}

// Keys each lane group takes per loop step (loads issued together).
template <int D>
constexpr int kUnroll = D >= 32   ? 1
                        : D >= 16 ? 2
                                  : 4;

__device__ __forceinline__ float SafeMax(float m) { return m == -INFINITY ? 0.0f : m; }

// HG query heads of one KV head per CTA: lane group g takes head g % HG and
// key offset g / HG, so the groups of one key ask for the same addresses and
// each key is read once per CTA for its HG heads.
template <typename T, int D, int HG>
__global__ void __launch_bounds__(kThreads) DecodeAttentionKernel(DecodeAttentionArgs a) {
  constexpr int kHeadDim = D * kLanesPerKey;
  constexpr int kUn = kUnroll<D>;
  constexpr int kKeysPerStep = kGroupsPerWarp / HG;  // Keys per warp per unrolled slot.
  const int split = blockIdx.z;
  const int row = blockIdx.y;
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int lane_group = lane / kLanesPerKey;
  const int sub = lane % kLanesPerKey;
  const int head = blockIdx.x * HG + lane_group % HG;
  const int key_offset = lane_group / HG;
  const int group = a.heads / a.kv_heads;
  const int kv_head = blockIdx.x * HG / group;

  const int64_t slot = a.slots[row];
  const int64_t pos = a.positions[row];
  const int64_t first = a.window > 0 && pos - a.window + 1 > 0 ? pos - a.window + 1 : 0;
  const int64_t begin = max(first, split * a.chunk);
  // Exclusive; the last split takes whatever lies beyond the chunks.
  const int64_t end = split + 1 == a.splits ? pos + 1 : min(pos + 1, (split + 1) * a.chunk);

  const int64_t kv_base = (slot * a.kv_heads + kv_head) * a.max_len * kHeadDim + sub * D;
  const T* k_cache = static_cast<const T*>(a.k_cache) + kv_base;
  const T* v_cache = static_cast<const T*>(a.v_cache) + kv_base;
  const T* rope_cos = nullptr;
  const T* rope_sin = nullptr;
  if (a.rope_cos != nullptr) {
    rope_cos = static_cast<const T*>(a.rope_cos) + row * a.rope_cos_row_stride + sub * D;
    rope_sin = static_cast<const T*>(a.rope_sin) + row * a.rope_sin_row_stride + sub * D;
  }
  // The step's own key (rotated where tables are given), held by every lane
  // for its slice; the key at `pos` is taken from here, not the cache.
  const bool has_new = a.new_k != nullptr;
  const T* new_v = nullptr;
  Slice<T, D> fresh_k;
  if (has_new) {
    fresh_k.Load(static_cast<const T*>(a.new_k) + row * a.new_k_row_stride +
                 kv_head * a.new_k_head_stride + sub * D);
    if (rope_cos != nullptr) Rotate(fresh_k, rope_cos, rope_sin, sub);
    new_v = static_cast<const T*>(a.new_v) + row * a.new_v_row_stride +
            kv_head * a.new_v_head_stride + sub * D;
    // The CTA of the KV head's first query heads stores the new key and value.
    if (blockIdx.x * HG % group == 0 && split == 0 && warp == 0 && lane_group == 0) {
      fresh_k.Store(static_cast<T*>(a.k_cache) + kv_base + pos * kHeadDim);
      Slice<T, D> s;
      s.Load(new_v);
      s.Store(static_cast<T*>(a.v_cache) + kv_base + pos * kHeadDim);
    }
  }

  // q (rotated where tables are given), pre-scaled so that exp2 gives the
  // softmax's exp.
  float q[D];
  {
    Slice<T, D> s;
    s.Load(static_cast<const T*>(a.q) + row * a.q_row_stride + head * a.q_head_stride + sub * D);
    if (rope_cos != nullptr) Rotate(s, rope_cos, rope_sin, sub);
    const float qs = a.scale * 1.4426950408889634f;
#pragma unroll
    for (int i = 0; i < D; ++i) q[i] = s.At(i) * qs;
  }

  float m = -INFINITY;
  float l = 0.0f;
  float acc[D];
#pragma unroll
  for (int i = 0; i < D; ++i) acc[i] = 0.0f;

  constexpr int kWarpKeys = kKeysPerStep * kUn;
  for (int64_t base = begin + warp * kWarpKeys; base < end; base += kWarpKeys * kWarps) {
    Slice<T, D> ks[kUn], vs[kUn];
    bool valid[kUn];
#pragma unroll
    for (int u = 0; u < kUn; ++u) {
      const int64_t key = base + u * kKeysPerStep + key_offset;
      valid[u] = key < end;
      const int64_t at = valid[u] ? key : begin;  // Clamped: every load is issued.
      const bool fresh = has_new && at == pos;
      if (fresh) {
        ks[u] = fresh_k;
      } else {
        ks[u].Load(k_cache + at * kHeadDim);
      }
      vs[u].Load(fresh ? new_v : v_cache + at * kHeadDim);
    }
    float s[kUn];
    float step_max = -INFINITY;
#pragma unroll
    for (int u = 0; u < kUn; ++u) {
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < D; ++i) dot = fmaf(q[i], ks[u].At(i), dot);
#pragma unroll
      for (int o = kLanesPerKey / 2; o > 0; o /= 2) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      s[u] = valid[u] ? dot : -INFINITY;
      step_max = fmaxf(step_max, s[u]);
    }
    const float m_new = fmaxf(m, step_max);
    const float ref = SafeMax(m_new);
    const float corr = exp2f(m - ref);
    l *= corr;
#pragma unroll
    for (int i = 0; i < D; ++i) acc[i] *= corr;
#pragma unroll
    for (int u = 0; u < kUn; ++u) {
      const float p = exp2f(s[u] - ref);
      l += p;
#pragma unroll
      for (int i = 0; i < D; ++i) acc[i] = fmaf(p, vs[u].At(i), acc[i]);
    }
    m = m_new;
  }

  // Merge the lane groups of one head within the warp (lanes 8 * HG apart).
#pragma unroll
  for (int o = kLanesPerKey * HG; o < 32; o *= 2) {
    const float m_o = __shfl_xor_sync(0xffffffffu, m, o);
    const float l_o = __shfl_xor_sync(0xffffffffu, l, o);
    const float m_n = fmaxf(m, m_o);
    const float c = exp2f(m - SafeMax(m_n));
    const float c_o = exp2f(m_o - SafeMax(m_n));
    l = l * c + l_o * c_o;
#pragma unroll
    for (int i = 0; i < D; ++i) {
      const float acc_o = __shfl_xor_sync(0xffffffffu, acc[i], o);
      acc[i] = acc[i] * c + acc_o * c_o;
    }
    m = m_n;
  }

  // Merge the warps.
  __shared__ float s_acc[kWarps][HG][kHeadDim];
  __shared__ float s_m[kWarps][HG];
  __shared__ float s_l[kWarps][HG];
  if (key_offset == 0) {
#pragma unroll
    for (int i = 0; i < D; ++i) s_acc[warp][lane_group][sub * D + i] = acc[i];
    if (sub == 0) {
      s_m[warp][lane_group] = m;
      s_l[warp][lane_group] = l;
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < HG * kHeadDim; e += kThreads) {
    const int h = e / kHeadDim;
    const int d = e % kHeadDim;
    float m_all = -INFINITY;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) m_all = fmaxf(m_all, s_m[w][h]);
    float l_all = 0.0f;
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      const float weight = exp2f(s_m[w][h] - SafeMax(m_all));
      l_all = fmaf(s_l[w][h], weight, l_all);
      o = fmaf(s_acc[w][h][d], weight, o);
    }
    const int64_t rh = static_cast<int64_t>(row) * a.heads + blockIdx.x * HG + h;
    if (a.splits == 1) {
      // The key at `pos` is always seen: l_all >= 1.
      static_cast<T*>(a.out)[rh * kHeadDim + d] = lora_internal::FromF<T>(o / l_all);
    } else {
      a.partial_acc[(rh * a.splits + split) * kHeadDim + d] = o;
      if (d == 0) {
        a.partial_ml[(rh * a.splits + split) * 2] = m_all;
        a.partial_ml[(rh * a.splits + split) * 2 + 1] = l_all;
      }
    }
  }
}

// Combines the splits of one (row, head): grid (heads, rows), head_dim threads.
template <typename T>
__global__ void DecodeAttentionCombineKernel(DecodeAttentionArgs a) {
  const int64_t rh = static_cast<int64_t>(blockIdx.y) * a.heads + blockIdx.x;
  const float* ml = a.partial_ml + rh * a.splits * 2;
  float m_all = -INFINITY;
  for (int s = 0; s < a.splits; ++s) m_all = fmaxf(m_all, ml[2 * s]);
  const float ref = SafeMax(m_all);
  float l_all = 0.0f;
  float o = 0.0f;
  const float* part = a.partial_acc + rh * a.splits * a.head_dim + threadIdx.x;
  for (int s = 0; s < a.splits; ++s) {
    const float w = exp2f(ml[2 * s] - ref);
    l_all += ml[2 * s + 1] * w;
    o = fmaf(part[s * a.head_dim], w, o);
  }
  static_cast<T*>(a.out)[rh * a.head_dim + threadIdx.x] = lora_internal::FromF<T>(o / l_all);
}

template <typename T, int D>
std::string LaunchTyped(const DecodeAttentionArgs& a, cudaStream_t stream) {
  const int hg = HeadsPerCta(a.heads, a.kv_heads);
  const dim3 grid(a.heads / hg, a.rows, a.splits);
  if (hg == 4) {
    DecodeAttentionKernel<T, D, 4><<<grid, kThreads, 0, stream>>>(a);
  } else if (hg == 2) {
    DecodeAttentionKernel<T, D, 2><<<grid, kThreads, 0, stream>>>(a);
  } else {
    DecodeAttentionKernel<T, D, 1><<<grid, kThreads, 0, stream>>>(a);
  }
  if (a.splits > 1) {
    DecodeAttentionCombineKernel<T><<<dim3(a.heads, a.rows), a.head_dim, 0, stream>>>(a);
  }
  return LastError();
}

template <typename T>
std::string LaunchForDim(const DecodeAttentionArgs& a, cudaStream_t stream) {
  switch (a.head_dim) {
    case 16:
      return LaunchTyped<T, 2>(a, stream);
    case 32:
      return LaunchTyped<T, 4>(a, stream);
    case 64:
      return LaunchTyped<T, 8>(a, stream);
    case 96:
      return LaunchTyped<T, 12>(a, stream);
    case 128:
      return LaunchTyped<T, 16>(a, stream);
    case 256:
      return LaunchTyped<T, 32>(a, stream);
    default:
      return "decode attention: head_dim " + std::to_string(a.head_dim) + " not served";
  }
}

}  // namespace

bool DecodeAttentionHeadDimServed(int head_dim) {
  return head_dim == 16 || head_dim == 32 || head_dim == 64 || head_dim == 96 || head_dim == 128 ||
         head_dim == 256;
}

int DecodeAttentionSms() { return lora_internal::NumSms(); }

std::string LaunchDecodeAttentionCuda(const DecodeAttentionArgs& args, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (args.dtype) {
    case LoraDType::kFloat32:
      return LaunchForDim<float>(args, s);
    case LoraDType::kFloat16:
      return LaunchForDim<__half>(args, s);
    case LoraDType::kBFloat16:
      return LaunchForDim<__nv_bfloat16>(args, s);
  }
  return "decode attention: unknown dtype";
}

}  // namespace adapterd::attention_internal
