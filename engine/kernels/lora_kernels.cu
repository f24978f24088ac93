// CUDA kernels behind engine/kernels/lora_kernels.h. At serving ranks these
// are latency-bound: every adapter weight is read from HBM once per token tile
// of its segment, activations come from L2, and the work per launch is a few
// MB. So: no memset and no atomics (each shrink CTA reduces a whole K row
// block for a few tokens), 16-byte loads issued together without branches in
// the loops, and the expand launched as a programmatic dependent of the
// shrink so that its prologue and first weight loads overlap the shrink.
// After a base GEMM (LoraLaunchArgs::after_producer) the first kernel is
// itself the GEMM's programmatic dependent. Every CTA of a kernel that may run
// as a dependent waits for its primary (WaitForPrimary: a no-op otherwise)
// before it writes, touches y, or exits, so that the grid's completion
// implies its primary's and the stream's order holds for what follows.

#include <cooperative_groups.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "engine/kernels/cuda_common.cuh"
#include "engine/kernels/lora_launch.h"

namespace adapterd::lora_internal {
namespace {

constexpr int kThreads = 128;  // Expand.
constexpr int kShrinkThreads = 256;
constexpr int kCols = 4;        // Expand: output columns per thread.
constexpr int kShrinkRows = 4;  // Rank rows per shrink CTA.
constexpr int kMaxSmemBytes = 48 * 1024;
constexpr int kPre = 2;          // Expand: B vectors per column kept in registers.
constexpr int kClusterCtas = 8;  // Fused: CTAs per (segment, slice), one cluster.
constexpr int kFusedRows = 4;    // Fused shrink: rank rows per warp pass.

// grid: (mtiles * rtiles, num_slices, max_segments). Each CTA reduces the whole
// K for BM tokens and RT rank rows: no atomics, and v needs no clearing.
template <typename T, int BM>
__global__ void __launch_bounds__(kShrinkThreads) ShrinkKernel(const LoraLaunchArgs p, int rtiles) {
  LaunchDependents();
  constexpr int RT = kShrinkRows;
  constexpr int VEC = kVec<T>;
  constexpr int kWarps = kShrinkThreads / 32;
  const int seg = blockIdx.z;
  const int slice = blockIdx.y;
  const int rt = blockIdx.x % rtiles;
  const int mt = blockIdx.x / rtiles;
  const int slot = p.segment_slot[seg];
  const int s0 = p.segment_start[seg];
  const int s1 = p.segment_start[seg + 1];
  if (slot < 0) return WaitForPrimary();
  const int m0 = s0 + mt * BM;
  if (m0 >= s1) return WaitForPrimary();
  const int mcount = min(BM, s1 - m0);
  const int64_t* meta = p.meta + (static_cast<int64_t>(slice) * p.num_slots + slot) * kMetaFields;
  const T* a_ptr = reinterpret_cast<const T*>(meta[kMetaA]);
  const int rank = static_cast<int>(meta[kMetaRank]);
  const int r0 = rt * RT;
  if (a_ptr == nullptr || r0 >= rank) return WaitForPrimary();
  const int rcount = min(RT, rank - r0);
  const int K = p.in_features;
  const T* x = static_cast<const T*>(p.x);

  // Rows past the segment or the rank repeat the last valid one (valid
  // addresses, no branches in the loop); their sums are never stored.
  const T* xrow[BM];
#pragma unroll
  for (int m = 0; m < BM; ++m)
    xrow[m] = x + static_cast<int64_t>(p.sorted_tokens[m0 + min(m, mcount - 1)]) * p.ld_x;
  const T* arow[RT];
#pragma unroll
  for (int r = 0; r < RT; ++r) arow[r] = a_ptr + static_cast<int64_t>(r0 + min(r, rcount - 1)) * K;

  float acc[BM][RT];
#pragma unroll
  for (int m = 0; m < BM; ++m)
#pragma unroll
    for (int r = 0; r < RT; ++r) acc[m][r] = 0.0f;

  const bool vec_ok =
      (K % VEC == 0) && (p.ld_x % VEC == 0) &&
      ((reinterpret_cast<uintptr_t>(a_ptr) | reinterpret_cast<uintptr_t>(x)) & 15) == 0;
  if (vec_ok) {
#pragma unroll(BM <= 4 ? 2 : 1)
    for (int k = threadIdx.x * VEC; k < K; k += kShrinkThreads * VEC) {
      uint4 av[RT];
      uint4 xv[BM];
#pragma unroll
      for (int r = 0; r < RT; ++r) av[r] = Ld16(arow[r] + k);
#pragma unroll
      for (int m = 0; m < BM; ++m) xv[m] = Ld16(xrow[m] + k);
      float af[RT][VEC];
#pragma unroll
      for (int r = 0; r < RT; ++r) ToFloats<T>(av[r], af[r]);
#pragma unroll
      for (int m = 0; m < BM; ++m) {
        float xf[VEC];
        ToFloats<T>(xv[m], xf);
#pragma unroll
        for (int r = 0; r < RT; ++r)
#pragma unroll
          for (int j = 0; j < VEC; ++j) acc[m][r] = fmaf(af[r][j], xf[j], acc[m][r]);
      }
    }
  } else {
    for (int k = threadIdx.x; k < K; k += kShrinkThreads) {
      float a[RT];
#pragma unroll
      for (int r = 0; r < RT; ++r) a[r] = ToF(arow[r][k]);
#pragma unroll
      for (int m = 0; m < BM; ++m) {
        const float xv = ToF(xrow[m][k]);
#pragma unroll
        for (int r = 0; r < RT; ++r) acc[m][r] = fmaf(a[r], xv, acc[m][r]);
      }
    }
  }

  __shared__ float red[kWarps][BM * RT];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
#pragma unroll
  for (int m = 0; m < BM; ++m)
#pragma unroll
    for (int r = 0; r < RT; ++r) {
      float s = acc[m][r];
#pragma unroll
      for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
      if (lane == 0) red[warp][m * RT + r] = s;
    }
  __syncthreads();
  WaitForPrimary();  // v may be memory the base GEMM before this kernel still reads.
  const int i = threadIdx.x;
  if (i < BM * RT) {
    const int m = i / RT;
    const int r = i % RT;
    if (m < mcount && r < rcount) {
      float s = 0.0f;
#pragma unroll
      for (int w = 0; w < kWarps; ++w) s += red[w][i];
      const int tok = p.sorted_tokens[m0 + m];
      p.v[(static_cast<int64_t>(slice) * p.num_tokens + tok) * p.v_width + r0 + r] = s;
    }
  }
}

// ExpandTile (below) in two steps: ExpandAcc computes the products (no y
// access), ExpandStore adds them to y (after a base GEMM: once it is done).
template <typename T, int BM>
__device__ __forceinline__ void ExpandAcc(const T* const (&brow)[kCols], int rank, bool vec_ok,
                                          const uint4 (&bpre)[kCols][kPre], const float* vs,
                                          int mcount, float (&acc)[BM][kCols]) {
  constexpr int VEC = kVec<T>;
  constexpr int C = kCols;
  const int nvec = rank / VEC;
#pragma unroll
  for (int m = 0; m < BM; ++m)
#pragma unroll
    for (int c = 0; c < C; ++c) acc[m][c] = 0.0f;
  if (vec_ok) {
    for (int i = 0; i < nvec; ++i) {
      float b[C][VEC];
#pragma unroll
      for (int c = 0; c < C; ++c) {
        uint4 bv;
        if (i < kPre) {
          bv = i == 0 ? bpre[c][0] : bpre[c][kPre - 1];
        } else {
          bv = Ld16(brow[c] + i * VEC);
        }
        ToFloats<T>(bv, b[c]);
      }
#pragma unroll
      for (int m = 0; m < BM; ++m) {
        const float4* vrow =
            reinterpret_cast<const float4*>(vs + min(m, mcount - 1) * rank + i * VEC);
#pragma unroll
        for (int q = 0; q < VEC / 4; ++q) {
          const float4 vv = vrow[q];
#pragma unroll
          for (int c = 0; c < C; ++c) {
            acc[m][c] = fmaf(vv.x, b[c][4 * q], acc[m][c]);
            acc[m][c] = fmaf(vv.y, b[c][4 * q + 1], acc[m][c]);
            acc[m][c] = fmaf(vv.z, b[c][4 * q + 2], acc[m][c]);
            acc[m][c] = fmaf(vv.w, b[c][4 * q + 3], acc[m][c]);
          }
        }
      }
    }
  } else {
    for (int r = 0; r < rank; ++r) {
#pragma unroll
      for (int c = 0; c < C; ++c) {
        const float b = ToF(brow[c][r]);
#pragma unroll
        for (int m = 0; m < BM; ++m)
          acc[m][c] = fmaf(vs[min(m, mcount - 1) * rank + r], b, acc[m][c]);
      }
    }
  }
}

template <typename T, int BM>
__device__ __forceinline__ void ExpandStore(const float (&acc)[BM][kCols], const int (&o)[kCols],
                                            int out, int mcount, const int* stok, T* y,
                                            int64_t ld, float scale, const float (&bb)[kCols]) {
  constexpr int C = kCols;
  float yv[BM][C];
#pragma unroll
  for (int m = 0; m < BM; ++m)
#pragma unroll
    for (int c = 0; c < C; ++c)
      yv[m][c] = ToF(y[static_cast<int64_t>(stok[min(m, mcount - 1)]) * ld + min(o[c], out - 1)]);
#pragma unroll
  for (int m = 0; m < BM; ++m)
#pragma unroll
    for (int c = 0; c < C; ++c)
      if (m < mcount && o[c] < out)
        y[static_cast<int64_t>(stok[m]) * ld + o[c]] =
            FromF<T>(yv[m][c] + scale * (acc[m][c] + bb[c]));
}

// One token tile of the expand for one CTA: each thread's kCols output
// columns o[c] (B rows brow[c]; bpre holds their first kPre 16-byte vectors
// when vec_ok) for the tile's mcount tokens stok[m], whose act(v + a_bias)
// rows are staged in shared memory (vs, row stride rank):
// y[stok[m], o[c]] += scale · (vs[m] · B[o[c]]ᵀ + bb[c]).
template <typename T, int BM>
__device__ __forceinline__ void ExpandTile(const T* const (&brow)[kCols], const int (&o)[kCols],
                                           int out, int rank, bool vec_ok,
                                           const uint4 (&bpre)[kCols][kPre], const float* vs,
                                           int mcount, const int* stok, T* y, int64_t ld,
                                           float scale, const float (&bb)[kCols]) {
  float acc[BM][kCols];
  ExpandAcc<T, BM>(brow, rank, vec_ok, bpre, vs, mcount, acc);
  ExpandStore<T, BM>(acc, o, out, mcount, stok, y, ld, scale, bb);
}

// grid: (mgroups * otiles, num_slices, max_segments). Each thread owns kCols
// output columns (kThreads apart, so warps stay coalesced) for `mt_per_cta`
// token tiles of BM; its first B vectors stay in registers across tiles.
// Launched as a programmatic dependent of the shrink where both run back to
// back: the weight table, the index and the first B vectors are read before
// griddepcontrol.wait, v and y after it.
template <typename T, int BM>
__global__ void __launch_bounds__(kThreads)
    ExpandKernel(const LoraLaunchArgs p, int mgroups, int mt_per_cta) {
  constexpr int VEC = kVec<T>;
  constexpr int C = kCols;
  extern __shared__ __align__(16) float vs[];  // [mcount][rank]
  __shared__ int stok[BM];
  const int seg = blockIdx.z;
  const int slice = blockIdx.y;
  const int mg = blockIdx.x % mgroups;
  const int ot = blockIdx.x / mgroups;
  const int slot = p.segment_slot[seg];
  const int s0 = p.segment_start[seg];
  const int s1 = p.segment_start[seg + 1];
  if (slot < 0) return WaitForPrimary();
  const int mt_begin = mg * mt_per_cta;
  if (s0 + mt_begin * BM >= s1) return WaitForPrimary();
  const int mt_end = min(mt_begin + mt_per_cta, (s1 - s0 + BM - 1) / BM);
  const int64_t* meta = p.meta + (static_cast<int64_t>(slice) * p.num_slots + slot) * kMetaFields;
  if (meta[kMetaA] == 0) return WaitForPrimary();
  const T* b_ptr = reinterpret_cast<const T*>(meta[kMetaB]);
  const int rank = static_cast<int>(meta[kMetaRank]);
  const int out = static_cast<int>(meta[kMetaOut]);
  const int o_base = ot * kThreads * C;
  if (o_base >= out) return WaitForPrimary();
  const T* a_bias = reinterpret_cast<const T*>(meta[kMetaABias]);
  const T* b_bias = reinterpret_cast<const T*>(meta[kMetaBBias]);
  const int act = static_cast<int>(meta[kMetaAct]);
  const float scale = ScaleOf(meta);
  int o[C];
  const T* brow[C];
#pragma unroll
  for (int c = 0; c < C; ++c) {
    o[c] = o_base + c * kThreads + threadIdx.x;
    brow[c] = b_ptr + static_cast<int64_t>(min(o[c], out - 1)) * rank;
  }
  const bool vec_ok = rank % VEC == 0 && (reinterpret_cast<uintptr_t>(b_ptr) & 15) == 0;
  const int nvec = rank / VEC;
  uint4 bpre[C][kPre];
  if (vec_ok) {
#pragma unroll
    for (int c = 0; c < C; ++c)
#pragma unroll
      for (int i = 0; i < kPre; ++i) bpre[c][i] = Ld16(brow[c] + min(i, nvec - 1) * VEC);
  }
  float bb[C];
#pragma unroll
  for (int c = 0; c < C; ++c) bb[c] = b_bias != nullptr ? ToF(b_bias[min(o[c], out - 1)]) : 0.0f;
  T* y = static_cast<T*>(p.y[slice]);
  const int64_t ld = p.ld_y[slice];

  WaitForPrimary();
  for (int mt = mt_begin; mt < mt_end; ++mt) {
    const int m0 = s0 + mt * BM;
    const int mcount = min(BM, s1 - m0);
    if (mt != mt_begin) __syncthreads();  // The previous tile is done with vs and stok.
    if (threadIdx.x < BM)
      stok[threadIdx.x] = p.sorted_tokens[m0 + min(static_cast<int>(threadIdx.x), mcount - 1)];
    for (int i = threadIdx.x; i < mcount * rank; i += kThreads) {
      const int m = i / rank;
      const int r = i - m * rank;
      float val =
          p.v[(static_cast<int64_t>(slice) * p.num_tokens + p.sorted_tokens[m0 + m]) * p.v_width +
              r];
      if (a_bias != nullptr) val += ToF(a_bias[r]);
      vs[i] = Activate(val, act);
    }
    __syncthreads();

    ExpandTile<T, BM>(brow, o, out, rank, vec_ok, bpre, vs, mcount, stok, y, ld, scale, bb);
  }
}

// Floats of the fused kernel's partial-v block in shared memory (a multiple
// of 4, so that the staged rows after it stay 16-byte aligned).
__host__ __device__ __forceinline__ int FusedPartFloats(int bm, int max_rank) {
  return (bm * (max_rank > 1 ? max_rank : 1) + 3) & ~3;
}

// Shrink and expand in one launch, for the decode shape (every segment at
// most BM tokens). grid: (kClusterCtas, num_slices, max_segments), launched in
// thread-block clusters of kClusterCtas CTAs along x: one cluster per
// (segment, slice). CTA j reduces x·Aᵀ over its 1/kClusterCtas of K (one
// warp per kFusedRows rank rows) into shared memory; after a cluster barrier
// each CTA sums the kClusterCtas partials through distributed shared memory,
// so v never goes to HBM and no CTA waits on another launch, then expands
// output tiles j, j + kClusterCtas, ... Every weight byte is read once, as
// in the two launches, and B's first vectors are in flight across the
// barrier. The second half of the cluster barrier is waited for only at the
// end: no CTA leaves while another may still read its shared memory.
template <typename T, int BM>
__global__ void __launch_bounds__(kThreads) FusedKernel(const LoraLaunchArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  constexpr int VEC = kVec<T>;
  constexpr int C = kCols;
  constexpr int RW = kFusedRows;
  constexpr int kWarps = kThreads / 32;
  extern __shared__ __align__(16) float smem[];
  __shared__ int stok[BM];
  const int crank = blockIdx.x;  // The grid's x extent is one cluster.
  const int slice = blockIdx.y;
  const int seg = blockIdx.z;
  // Every CTA of a cluster reads the same (segment, slice) and takes the same
  // exit, before the cluster barrier: none waits there for one that left.
  const int slot = p.segment_slot[seg];
  const int s0 = p.segment_start[seg];
  const int s1 = p.segment_start[seg + 1];
  if (slot < 0 || s1 <= s0) return WaitForPrimary();
  const int64_t* meta = p.meta + (static_cast<int64_t>(slice) * p.num_slots + slot) * kMetaFields;
  const T* a_ptr = reinterpret_cast<const T*>(meta[kMetaA]);
  if (a_ptr == nullptr) return WaitForPrimary();
  const T* b_ptr = reinterpret_cast<const T*>(meta[kMetaB]);
  const int rank = static_cast<int>(meta[kMetaRank]);
  const int out = static_cast<int>(meta[kMetaOut]);
  const T* a_bias = reinterpret_cast<const T*>(meta[kMetaABias]);
  const T* b_bias = reinterpret_cast<const T*>(meta[kMetaBBias]);
  const int act = static_cast<int>(meta[kMetaAct]);
  const float scale = ScaleOf(meta);
  const int mcount = min(BM, s1 - s0);
  const int K = p.in_features;
  const T* x = static_cast<const T*>(p.x);
  float* part = smem;                                  // [BM][rank] partial sums.
  float* vs = smem + FusedPartFloats(BM, p.max_rank);  // [mcount][rank] act(v + a_bias).
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (threadIdx.x < BM)
    stok[threadIdx.x] = p.sorted_tokens[s0 + min(static_cast<int>(threadIdx.x), mcount - 1)];

  // This CTA's K range: chunks are whole 16-byte vectors, so vector loads stay aligned.
  const int chunk = ((K + kClusterCtas - 1) / kClusterCtas + VEC - 1) / VEC * VEC;
  const int k0 = min(K, crank * chunk);
  const int k1 = min(K, k0 + chunk);
  const bool a_vec =
      (K % VEC == 0) && (p.ld_x % VEC == 0) &&
      ((reinterpret_cast<uintptr_t>(a_ptr) | reinterpret_cast<uintptr_t>(x)) & 15) == 0;
  const T* xrow[BM];
#pragma unroll
  for (int m = 0; m < BM; ++m)
    xrow[m] = x + static_cast<int64_t>(p.sorted_tokens[s0 + min(m, mcount - 1)]) * p.ld_x;
  for (int rg = warp * RW; rg < rank; rg += kWarps * RW) {
    const T* arow[RW];
#pragma unroll
    for (int r = 0; r < RW; ++r) arow[r] = a_ptr + static_cast<int64_t>(min(rg + r, rank - 1)) * K;
    float acc[BM][RW];
#pragma unroll
    for (int m = 0; m < BM; ++m)
#pragma unroll
      for (int r = 0; r < RW; ++r) acc[m][r] = 0.0f;
    if (a_vec) {
      for (int k = k0 + lane * VEC; k < k1; k += 32 * VEC) {
        uint4 av[RW];
        uint4 xv[BM];
#pragma unroll
        for (int r = 0; r < RW; ++r) av[r] = Ld16(arow[r] + k);
#pragma unroll
        for (int m = 0; m < BM; ++m) xv[m] = Ld16(xrow[m] + k);
        float af[RW][VEC];
#pragma unroll
        for (int r = 0; r < RW; ++r) ToFloats<T>(av[r], af[r]);
#pragma unroll
        for (int m = 0; m < BM; ++m) {
          float xf[VEC];
          ToFloats<T>(xv[m], xf);
#pragma unroll
          for (int r = 0; r < RW; ++r)
#pragma unroll
            for (int j = 0; j < VEC; ++j) acc[m][r] = fmaf(af[r][j], xf[j], acc[m][r]);
        }
      }
    } else {
      for (int k = k0 + lane; k < k1; k += 32) {
        float a[RW];
#pragma unroll
        for (int r = 0; r < RW; ++r) a[r] = ToF(arow[r][k]);
#pragma unroll
        for (int m = 0; m < BM; ++m) {
          const float xv = ToF(xrow[m][k]);
#pragma unroll
          for (int r = 0; r < RW; ++r) acc[m][r] = fmaf(a[r], xv, acc[m][r]);
        }
      }
    }
#pragma unroll
    for (int m = 0; m < BM; ++m)
#pragma unroll
      for (int r = 0; r < RW; ++r) {
        float s = acc[m][r];
#pragma unroll
        for (int off = 16; off > 0; off >>= 1) s += __shfl_xor_sync(0xffffffffu, s, off);
        if (lane == 0 && m < mcount && rg + r < rank) part[m * rank + rg + r] = s;
      }
  }

  // The first output tile's B vectors and bias do not depend on v: load them
  // before the barrier.
  const T* brow[C];
  int o[C];
  const bool b_vec = rank % VEC == 0 && (reinterpret_cast<uintptr_t>(b_ptr) & 15) == 0;
  const int nvec = rank / VEC;
  uint4 bpre[C][kPre];
  float bb[C];
  auto load_tile = [&](int ot) {
#pragma unroll
    for (int c = 0; c < C; ++c) {
      o[c] = ot * kThreads * C + c * kThreads + threadIdx.x;
      brow[c] = b_ptr + static_cast<int64_t>(min(o[c], out - 1)) * rank;
      bb[c] = b_bias != nullptr ? ToF(b_bias[min(o[c], out - 1)]) : 0.0f;
    }
    if (b_vec) {
#pragma unroll
      for (int c = 0; c < C; ++c)
#pragma unroll
        for (int i = 0; i < kPre; ++i) bpre[c][i] = Ld16(brow[c] + min(i, nvec - 1) * VEC);
    }
  };
  const int otiles = (out + kThreads * C - 1) / (kThreads * C);
  if (crank < otiles) load_tile(crank);

  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();  // Every CTA's partial sums are written and visible.
  for (int i = threadIdx.x; i < mcount * rank; i += kThreads) {
    float s = 0.0f;
#pragma unroll
    for (int j = 0; j < kClusterCtas; ++j) s += cluster.map_shared_rank(part, j)[i];
    if (a_bias != nullptr) s += ToF(a_bias[i % rank]);
    vs[i] = Activate(s, act);
  }
  __syncthreads();  // vs and stok are complete (and every warp converged for the arrive).
  ClusterArrive();  // Done reading the other CTAs' shared memory.

  // The first tile's products before waiting for a base GEMM (beside it, the
  // GEMM may still be running): after the wait only y is read and written.
  float acc[BM][C];
  if (crank < otiles) ExpandAcc<T, BM>(brow, rank, b_vec, bpre, vs, mcount, acc);
  WaitForPrimary();  // After a base GEMM: y is written.
  T* y = static_cast<T*>(p.y[slice]);
  const int64_t ld = p.ld_y[slice];
  if (crank < otiles) ExpandStore<T, BM>(acc, o, out, mcount, stok, y, ld, scale, bb);
  for (int ot = crank + kClusterCtas; ot < otiles; ot += kClusterCtas) {
    load_tile(ot);
    ExpandTile<T, BM>(brow, o, out, rank, b_vec, bpre, vs, mcount, stok, y, ld, scale, bb);
  }
  ClusterWait();
#endif
}

template <typename T, int BM>
void LaunchShrink(const LoraLaunchArgs& p, cudaStream_t stream) {
  const int rtiles = (p.max_rank + kShrinkRows - 1) / kShrinkRows;
  const int mtiles = (p.max_segment_tokens + BM - 1) / BM;
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(static_cast<int64_t>(mtiles) * rtiles),
                        p.num_slices, p.max_segments);
  config.blockDim = dim3(kShrinkThreads);
  config.stream = stream;
  LaunchAttrs attrs(0, p.after_producer && !p.producer_edge);
  attrs.ApplyTo(config);
  (void)cudaLaunchKernelEx(&config, ShrinkKernel<T, BM>, p, rtiles);  // LastError() reports it.
}

template <typename T>
void DispatchShrink(const LoraLaunchArgs& p, cudaStream_t stream) {
  // Few, long segments: smaller token tiles give more CTAs to fill the chip.
  const int64_t rtiles = (p.max_rank + kShrinkRows - 1) / kShrinkRows;
  const int64_t ctas8 = static_cast<int64_t>(p.num_slices) * p.max_segments * rtiles *
                        ((p.max_segment_tokens + 7) / 8);
  if (p.max_segment_tokens <= 1) {
    LaunchShrink<T, 1>(p, stream);
  } else if (p.max_segment_tokens <= 4 || ctas8 < NumSms()) {
    LaunchShrink<T, 4>(p, stream);
  } else {
    LaunchShrink<T, 8>(p, stream);
  }
}

template <typename T, int BM>
std::string LaunchExpand(const LoraLaunchArgs& p, cudaStream_t stream) {
  const int mtiles = (p.max_segment_tokens + BM - 1) / BM;
  const int otiles = (p.max_out + kThreads * kCols - 1) / (kThreads * kCols);
  // Long segments: several token tiles per CTA, keeping about 8 CTAs per SM.
  const int64_t ctas = static_cast<int64_t>(mtiles) * otiles * p.num_slices * p.max_segments;
  const int64_t target = 8LL * NumSms();
  const int mt_per_cta = static_cast<int>(std::clamp<int64_t>(ctas / target, 1, mtiles));
  const int mgroups = (mtiles + mt_per_cta - 1) / mt_per_cta;
  const size_t smem = static_cast<size_t>(BM) * std::max(p.max_rank, 1) * sizeof(float);
  if (smem > kMaxSmemBytes) {
    const cudaError_t e = cudaFuncSetAttribute(
        ExpandKernel<T, BM>, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return cudaGetErrorString(e);
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(static_cast<int64_t>(mgroups) * otiles), p.num_slices,
                        p.max_segments);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  LaunchAttrs attrs(0, p.after_shrink);
  attrs.ApplyTo(config);
  const cudaError_t e = cudaLaunchKernelEx(&config, ExpandKernel<T, BM>, p, mgroups, mt_per_cta);
  if (e != cudaSuccess) return cudaGetErrorString(e);
  return std::string();
}

template <typename T>
std::string DispatchExpand(const LoraLaunchArgs& p, cudaStream_t stream) {
  if (p.max_segment_tokens <= 1) return LaunchExpand<T, 1>(p, stream);
  if (p.max_segment_tokens <= 4) return LaunchExpand<T, 4>(p, stream);
  return LaunchExpand<T, 8>(p, stream);
}

// The fused kernel's token tile for a shape: 0 where it does not apply.
int FusedTile(int max_segment_tokens) {
  if (max_segment_tokens <= 1) return 1;
  if (max_segment_tokens <= 4) return 4;
  if (max_segment_tokens <= kFusedMaxTokens) return 8;
  return 0;
}

size_t FusedSmemBytes(int bm, int max_rank) {
  return sizeof(float) * (static_cast<size_t>(FusedPartFloats(bm, max_rank)) +
                          static_cast<size_t>(bm) * std::max(max_rank, 1));
}

// Clusters need sm_90 in the device and sm_90 code in this binary.
bool ClustersAvailable() {
  static int cached[64] = {};
  return Sm90KernelRuns(reinterpret_cast<const void*>(&FusedKernel<float, 1>), cached);
}

template <typename T, int BM>
std::string LaunchFused(const LoraLaunchArgs& p, cudaStream_t stream) {
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(kClusterCtas, p.num_slices, p.max_segments);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = FusedSmemBytes(BM, p.max_rank);
  config.stream = stream;
  LaunchAttrs attrs(kClusterCtas, p.after_producer && !p.producer_edge);
  attrs.ApplyTo(config);
  const cudaError_t e = cudaLaunchKernelEx(&config, FusedKernel<T, BM>, p);
  if (e != cudaSuccess) return cudaGetErrorString(e);
  return std::string();
}

template <typename T>
std::string DispatchFused(const LoraLaunchArgs& p, cudaStream_t stream) {
  switch (FusedTile(p.max_segment_tokens)) {
    case 1:
      return LaunchFused<T, 1>(p, stream);
    case 4:
      return LaunchFused<T, 4>(p, stream);
    default:
      return LaunchFused<T, 8>(p, stream);
  }
}

}  // namespace

std::string LaunchLoraShrinkCuda(const LoraLaunchArgs& args, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  switch (args.dtype) {
    case LoraDType::kFloat32:
      DispatchShrink<float>(args, s);
      break;
    case LoraDType::kFloat16:
      DispatchShrink<__half>(args, s);
      break;
    case LoraDType::kBFloat16:
      DispatchShrink<__nv_bfloat16>(args, s);
      break;
  }
  return LastError();
}

std::string LaunchLoraExpandCuda(const LoraLaunchArgs& args, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  std::string err;
  switch (args.dtype) {
    case LoraDType::kFloat32:
      err = DispatchExpand<float>(args, s);
      break;
    case LoraDType::kFloat16:
      err = DispatchExpand<__half>(args, s);
      break;
    case LoraDType::kBFloat16:
      err = DispatchExpand<__nv_bfloat16>(args, s);
      break;
  }
  if (!err.empty()) return err;
  return LastError();
}

bool LoraFusedFits(const LoraLaunchArgs& args) {
  const int bm = FusedTile(args.max_segment_tokens);
  return bm > 0 && FusedSmemBytes(bm, args.max_rank) <= static_cast<size_t>(kMaxSmemBytes) &&
         ClustersAvailable();
}

std::string LaunchLoraFusedCuda(const LoraLaunchArgs& args, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  std::string err;
  switch (args.dtype) {
    case LoraDType::kFloat32:
      err = DispatchFused<float>(args, s);
      break;
    case LoraDType::kFloat16:
      err = DispatchFused<__half>(args, s);
      break;
    case LoraDType::kBFloat16:
      err = DispatchFused<__nv_bfloat16>(args, s);
      break;
  }
  if (!err.empty()) return err;
  return LastError();
}

}  // namespace adapterd::lora_internal
