#pragma once

// The LoRA epilogue shared by the decode GEMMs (decode_gemm.cu and
// stream_gemm.cu): y = round(x·Wᵀ + LoRA delta) for each output element,
// with v from the shrink launched just before on the stream (the GEMM is its
// programmatic dependent and waits for it only here). Before the main loop
// StageGemmLora stages each row's adapter for the (at most two) slices the
// CTA's columns touch and prefetches the B rows it will read into L2; after
// it StoreWithLora adds the deltas in fp32 and rounds once. Device code only:
// include from .cu files after cuda_common.cuh and lora_launch.h.

#include <cooperative_groups.h>

#include <cstdint>

#include "engine/kernels/cuda_common.cuh"
#include "engine/kernels/lora_launch.h"

namespace adapterd::lora_internal {

inline constexpr int kEpilogueBatch = 4;  // Default elements whose reads are issued together.

__device__ __forceinline__ void PrefetchL2(const void* p) {
  asm volatile("prefetch.global.L2 [%0];\n" ::"l"(p));
}

// One row's adapter on one slice, as the epilogue needs it (b == nullptr:
// no LoRA there). Staged in shared memory before the main loop, so that the
// epilogue's only global reads are B's rows (prefetched into L2) and v.
struct RowLora {
  const void* b;
  const void* a_bias;
  const void* b_bias;
  float scale;
  int rank;
  int act;
  int slice;
};

__device__ __forceinline__ RowLora RowLoraOf(const LoraLaunchArgs& l, int slice, int slot) {
  RowLora r = {nullptr, nullptr, nullptr, 0.0f, 0, 0, slice};
  if (slot < 0) return r;
  const int64_t* meta = l.meta + (static_cast<int64_t>(slice) * l.num_slots + slot) * kMetaFields;
  if (meta[kMetaA] == 0) return r;
  r.b = reinterpret_cast<const void*>(meta[kMetaB]);
  r.a_bias = reinterpret_cast<const void*>(meta[kMetaABias]);
  r.b_bias = reinterpret_cast<const void*>(meta[kMetaBBias]);
  r.scale = ScaleOf(meta);
  r.rank = static_cast<int>(meta[kMetaRank]);
  r.act = static_cast<int>(meta[kMetaAct]);
  return r;
}

__device__ __forceinline__ int SliceOf(const DecodeGemmArgs& p, int n) {
  int s = 0;
  while (s + 1 < p.lora.num_slices && n >= p.slice_begin[s + 1]) ++s;
  return s;
}

// The LoRA delta of output (t, n): scale · (act(v[t] + a_bias) · B[col] + b_bias)
// for row t's adapter on n's slice, col = n's column in that slice.
template <typename T>
__device__ __forceinline__ float LoraDelta(const RowLora& r, const DecodeGemmArgs& p, int t,
                                           int n) {
  if (r.b == nullptr) return 0.0f;
  const LoraLaunchArgs& l = p.lora;
  const int rank = r.rank;
  const int col = n - p.slice_begin[r.slice];
  const T* b = static_cast<const T*>(r.b) + static_cast<int64_t>(col) * rank;
  const T* a_bias = static_cast<const T*>(r.a_bias);
  const bool plain = a_bias == nullptr && r.act == 0;
  const float* v = l.v + (static_cast<int64_t>(r.slice) * l.num_tokens + t) * l.v_width;
  float acc = 0.0f;
  if (rank % 8 == 0 && (reinterpret_cast<uintptr_t>(b) & 15) == 0 && l.v_width % 4 == 0) {
    for (int j = 0; j < rank; j += 8) {
      float bf[8];
      ToFloats<T>(Ld16(b + j), bf);
      const float4 v0 = *reinterpret_cast<const float4*>(v + j);
      const float4 v1 = *reinterpret_cast<const float4*>(v + j + 4);
      float vv[8] = {v0.x, v0.y, v0.z, v0.w, v1.x, v1.y, v1.z, v1.w};
      if (!plain) {
#pragma unroll
        for (int q = 0; q < 8; ++q)
          vv[q] = Activate(vv[q] + (a_bias != nullptr ? ToF(a_bias[j + q]) : 0.0f), r.act);
      }
#pragma unroll
      for (int q = 0; q < 8; ++q) acc = fmaf(vv[q], bf[q], acc);
    }
  } else {
    for (int j = 0; j < rank; ++j) {
      float vj = v[j];
      if (!plain) vj = Activate(vj + (a_bias != nullptr ? ToF(a_bias[j]) : 0.0f), r.act);
      acc = fmaf(vj, ToF(b[j]), acc);
    }
  }
  if (r.b_bias != nullptr) acc += ToF(static_cast<const T*>(r.b_bias)[col]);
  return r.scale * acc;
}

// The split-k reduction through distributed shared memory: each CTA of the
// cluster holds its partial sums part[t * stride + col] for the tile's
// columns; CTA `crank` finishes columns [crank * rp, (crank + 1) * rp):
// sums[e] (e = t * rp + c, e < count) = the partials of (t, crank * rp + c)
// added over the cluster's `splits` CTAs in rank order. Remote reads cost
// hundreds of cycles each: a batch's (kEpilogueBatch elements × every CTA)
// are issued before any is added. Call after a cluster barrier.
template <int kThreads, int kBatch = kEpilogueBatch>
__device__ void SumClusterPartials(const float* part, int stride, int splits, int crank, int rp,
                                   int count, float* sums, int tid) {
  namespace cg = cooperative_groups;
  constexpr int kMaxSplits = 8;
  cg::cluster_group cluster = cg::this_cluster();
  const float* remote[kMaxSplits];
#pragma unroll
  for (int q = 0; q < kMaxSplits; ++q)
    remote[q] = q < splits ? cluster.map_shared_rank(part, q) : part;  // Unused: local.
  for (int e0 = tid; e0 < count; e0 += kThreads * kBatch) {
    float v[kBatch][kMaxSplits];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = min(e0 + u * kThreads, count - 1);
      const int off = (e / rp) * stride + crank * rp + e % rp;
#pragma unroll
      for (int q = 0; q < kMaxSplits; ++q) v[u][q] = remote[q][off];
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      float s = 0.0f;
#pragma unroll
      for (int q = 0; q < kMaxSplits; ++q) s += q < splits ? v[u][q] : 0.0f;
      if (e0 + u * kThreads < count) sums[e0 + u * kThreads] = s;
    }
  }
}

// A CTA's staged adapters: tslot[t] = row t's slot (−1: none); rows[ls][t] =
// row t's adapter on slice first_slice + ls for the (at most two) slices the
// CTA's columns touch (staged); more slices: looked up per element.
struct GemmLora {
  int tslot[kDecodeGemmMaxRows];
  RowLora rows[2][kDecodeGemmMaxRows];
  int first_slice;
  bool staged;
};

// Stages `gl` for the columns [n0, n1) and prefetches their B rows into L2.
// The `nthreads` threads numbered `tid` call it together; `sync()`
// synchronises exactly them (__syncthreads, or a named barrier where other
// warps are busy). Only with LoRA (p.lora.meta != nullptr).
template <typename T, typename Sync>
__device__ void StageGemmLora(const DecodeGemmArgs& p, int n0, int n1, int tid, int nthreads,
                              GemmLora& gl, Sync sync) {
  const LoraLaunchArgs& l = p.lora;
  const int first_slice = SliceOf(p, min(n0, p.n - 1));
  const bool staged = SliceOf(p, max(n1 - 1, 0)) <= first_slice + 1;
  if (tid == 0) {
    gl.first_slice = first_slice;
    gl.staged = staged;
  }
  if (tid < kDecodeGemmMaxRows) gl.tslot[tid] = -1;
  sync();
  for (int s = tid; s < l.max_segments; s += nthreads) {
    const int slot = l.segment_slot[s];
    if (slot < 0) continue;
    for (int i = l.segment_start[s]; i < l.segment_start[s + 1]; ++i)
      gl.tslot[l.sorted_tokens[i]] = slot;
  }
  sync();
  if (staged && tid < 2 * kDecodeGemmMaxRows) {
    const int t = tid % kDecodeGemmMaxRows;
    const int slice = first_slice + tid / kDecodeGemmMaxRows;
    gl.rows[tid / kDecodeGemmMaxRows][t] = RowLoraOf(
        l, min(slice, l.num_slices - 1), t < p.m && slice < l.num_slices ? gl.tslot[t] : -1);
  }
  for (int j = tid; j < l.max_segments * l.num_slices; j += nthreads) {
    const int seg = j % l.max_segments;
    const int s = j / l.max_segments;
    const int slot = l.segment_slot[seg];
    const int lo = max(n0, p.slice_begin[s]);
    const int hi = min(n1, p.slice_begin[s + 1]);
    if (slot < 0 || lo >= hi) continue;
    const int64_t* meta = l.meta + (static_cast<int64_t>(s) * l.num_slots + slot) * kMetaFields;
    if (meta[kMetaA] == 0) continue;
    const int64_t row_bytes = meta[kMetaRank] * static_cast<int64_t>(sizeof(T));
    const char* b = reinterpret_cast<const char*>(meta[kMetaB]);
    const char* end = b + (hi - p.slice_begin[s]) * row_bytes;
    for (uintptr_t q =
             reinterpret_cast<uintptr_t>(b + (lo - p.slice_begin[s]) * row_bytes) & ~uintptr_t{127};
         q < reinterpret_cast<uintptr_t>(end); q += 128)
      PrefetchL2(reinterpret_cast<const void*>(q));
  }
  sync();  // gl is complete.
}

// y[t, n] = round(sums[e] + LoRA delta) for e < count (t = e / rp, n = n0 +
// e % rp, n < p.n). With LoRA: waits for the shrink (griddepcontrol.wait),
// stages v of the staged slices in `vstage` ([2][kRows][v_width] floats of
// shared memory), then, kEpilogueBatch elements at a time, loads the B rows
// of plain rank-8/16 adapters together before any is used (other adapters:
// LoraDelta per element). Every thread of the CTA calls it.
template <typename T, int kThreads, int kBatch = kEpilogueBatch>
__device__ void StoreWithLora(const DecodeGemmArgs& p, const float* sums, int count, int rp, int n0,
                              int kRows, bool lora, const GemmLora& gl, float* vstage, int tid) {
  T* y = static_cast<T*>(p.y);
  const int vw = p.lora.v_width;
  const bool staged = lora && gl.staged;
  const int first_slice = lora ? gl.first_slice : 0;
  if (lora) {
    WaitForPrimary();
    if (staged) {
      const int vecs = 2 * kRows * vw / 4;
      for (int i = tid; i < vecs; i += kThreads) {
        const int ls = (4 * i) / (kRows * vw);
        const int t = ((4 * i) % (kRows * vw)) / vw;
        const int j = (4 * i) % vw;
        const int slice = first_slice + ls;
        float4 val = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (t < p.m && slice < p.lora.num_slices) {
          val = *reinterpret_cast<const float4*>(
              p.lora.v + (static_cast<int64_t>(slice) * p.lora.num_tokens + t) * vw + j);
        }
        *reinterpret_cast<float4*>(vstage + 4 * i) = val;
      }
      __syncthreads();
    }
  }
  const int split_col = staged ? p.slice_begin[first_slice + 1] : 0;
  for (int e0 = tid; e0 < count; e0 += kThreads * kBatch) {
    uint4 b_lo[kBatch], b_hi[kBatch];
    bool fast[kBatch];
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = min(e0 + u * kThreads, count - 1);
      const int t = e / rp;
      const int n = min(n0 + e % rp, p.n - 1);
      fast[u] = false;
      b_lo[u] = b_hi[u] = make_uint4(0, 0, 0, 0);
      if (!staged) continue;
      const RowLora& r = gl.rows[n >= split_col ? 1 : 0][t];
      const T* b =
          static_cast<const T*>(r.b) + static_cast<int64_t>(n - p.slice_begin[r.slice]) * r.rank;
      if (r.b != nullptr && (r.rank == 8 || r.rank == 16) && r.a_bias == nullptr && r.act == 0 &&
          (reinterpret_cast<uintptr_t>(b) & 15) == 0) {
        fast[u] = true;
        b_lo[u] = Ld16(b);
        b_hi[u] = Ld16(b + (r.rank == 16 ? 8 : 0));
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int e = e0 + u * kThreads;
      if (e >= count) break;
      const int t = e / rp;
      const int n = n0 + e % rp;
      if (n >= p.n) continue;
      float s = sums[e];
      if (fast[u]) {
        const int ls = n >= split_col ? 1 : 0;
        const RowLora& r = gl.rows[ls][t];
        const float* vv = vstage + (ls * kRows + t) * vw;
        float bf[8];
        float acc = 0.0f;
        ToFloats<T>(b_lo[u], bf);
#pragma unroll
        for (int j = 0; j < 8; ++j) acc = fmaf(vv[j], bf[j], acc);
        if (r.rank == 16) {
          ToFloats<T>(b_hi[u], bf);
#pragma unroll
          for (int j = 0; j < 8; ++j) acc = fmaf(vv[8 + j], bf[j], acc);
        }
        if (r.b_bias != nullptr)
          acc += ToF(static_cast<const T*>(r.b_bias)[n - p.slice_begin[r.slice]]);
        s += r.scale * acc;
      } else if (staged) {
        s += LoraDelta<T>(gl.rows[n >= split_col ? 1 : 0][t], p, t, n);
      } else if (lora) {
        s += LoraDelta<T>(RowLoraOf(p.lora, SliceOf(p, n), gl.tslot[t]), p, t, n);
      }
      y[static_cast<int64_t>(t) * p.ld_y + n] = FromF<T>(s);
    }
  }
}

}  // namespace adapterd::lora_internal
