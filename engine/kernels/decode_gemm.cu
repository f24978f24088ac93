// The decode GEMM behind LoraLinear (engine/kernels/lora_kernels.h):
// y[m, n] = x[m, k] · W[n, k]ᵀ for the few rows of a decode step, with the
// LoRA expand optionally added in the epilogue.
//
// At m <= 32 a projection is a stream of its weight bytes, so the kernel is
// built to keep HBM busy. Each CTA (8 warps) owns 256 output columns (W rows;
// two m16 tiles per warp) and one k-range; the CTAs of one column tile that
// split k form a thread-block cluster and add their partial sums through
// distributed shared memory (no atomics, no workspace, no memset). Each warp
// streams its 32 W rows straight from HBM into registers, `depth` 32-wide
// k-chunks ahead (16-byte loads that bypass L1, issued unconditionally so
// that the compiler can count them in flight), and multiplies them by the x
// slice staged once per CTA in shared memory (cp.async, four groups, so the
// first chunks start before the whole slice has arrived) with mma.sync
// m16n8k16: W is the A operand (16 columns), x the B operand (8 rows per
// n-tile). The k order inside a chunk is permuted the same way for both
// operands (a lane's 16-byte vector feeds two mma k-steps), so neither needs
// a shuffle or ldmatrix. The split count is chosen from how many clusters run
// at once (cudaOccupancyMaxActiveClusters), so that the grid fills its waves.
//
// LoRA in the epilogue: the shrink (v = x·Aᵀ, lora_kernels.cu) runs just
// before on the stream and lets this kernel launch early (programmatic
// dependent launch); the GEMM's main loop does not read v, so it overlaps the
// shrink, and only the epilogue waits (griddepcontrol.wait). Each row's
// adapter record is staged in shared memory before the main loop, v after the
// wait; each output element then adds scale · (act(v[t] + a_bias) · B[col] +
// b_bias) for its row's adapter, in fp32, before the single rounding to the
// output dtype. The B rows the epilogue reads are prefetched into L2 at
// kernel start.
//
// Measured on the H200 (docs/kernels.md): as fast as cuBLAS for a 4096x4096
// projection at <= 8 rows and the LoRA add-on there 19-30% of the base GEMM
// (LoraApply after cuBLAS: 44-67%); at 32 rows it is slower than cuBLAS
// (20.7 against 13.8 us), which is why the model does not use it by default.

#include <cooperative_groups.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <mutex>
#include <tuple>

#include "engine/kernels/cuda_common.cuh"
#include "engine/kernels/gemm_lora_epilogue.cuh"
#include "engine/kernels/lora_launch.h"

namespace adapterd::lora_internal {
namespace {

constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kMTiles = 2;                  // m16 tiles (W row blocks) per warp.
constexpr int kTile = kDecodeGemmTileCols;  // Output columns per CTA: 16 * kMTiles per warp.
constexpr int kChunk = kDecodeGemmChunk;    // k per warp step: two m16n8k16 k-steps.
constexpr int kXGroups = 4;                 // cp.async groups the x slice arrives in.
constexpr int kPartStride = kTile + 4;      // Floats per row of partial sums (bank spread).
constexpr int kMaxSmem = 200 * 1024;
constexpr int kDefaultDepth = 2;  // W chunks in flight per warp (LoraLinearOptions::depth 0).
constexpr int kMaxVWidth = 128;   // v staged for ranks up to this (larger: LoraLinear falls back).
static_assert(kTile == kWarps * 16 * kMTiles, "kMTiles m16 tiles per warp");

// A weight vector read once: no L1 allocation, and a 256-byte L2 fetch (the
// next chunks of the row follow).
__device__ __forceinline__ uint4 LdStream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// 16 bytes global → shared without registers; zeros where !valid.
__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(SmemAddr(smem)), "l"(gmem),
               "r"(valid ? 16 : 0)
               : "memory");
}

__device__ __forceinline__ void CpAsyncCommit() {
  asm volatile("cp.async.commit_group;\n" ::: "memory");
}

// Waits until at most `pending` (0..kXGroups-1) groups are still in flight.
__device__ __forceinline__ void CpAsyncWait(int pending) {
  switch (pending) {
    case 3:
      asm volatile("cp.async.wait_group 3;\n" ::: "memory");
      break;
    case 2:
      asm volatile("cp.async.wait_group 2;\n" ::: "memory");
      break;
    case 1:
      asm volatile("cp.async.wait_group 1;\n" ::: "memory");
      break;
    default:
      asm volatile("cp.async.wait_group 0;\n" ::: "memory");
      break;
  }
}
static_assert(kXGroups == 4, "CpAsyncWait spells out wait_group 0..3");

__host__ __device__ __forceinline__ int RowsFor(int m) { return m <= 8 ? 8 : m <= 16 ? 16 : 32; }

// Elements per row of the staged x slice: the slice plus a pad that puts
// consecutive rows 16 banks apart (conflict-free 16-byte reads of 8 lanes).
__host__ __device__ __forceinline__ int XStride(int chunks_per_split) {
  return chunks_per_split * kChunk + ((chunks_per_split & 1) ? 64 : 32);
}

__host__ __device__ __forceinline__ int ChunksPerSplit(int k, int splits) {
  return (k / kChunk + splits - 1) / splits;
}

// The x slice, then (reusing it) the partial sums, this CTA's sums and, with
// LoRA (v_width > 0), v of every row on two slices.
size_t SmemBytes(int m, int k, int splits, int elem_bytes, int v_width = 0) {
  const size_t rows = static_cast<size_t>(RowsFor(m));
  const size_t xs = rows * static_cast<size_t>(XStride(ChunksPerSplit(k, splits))) * elem_bytes;
  const size_t epilogue =
      (rows * kPartStride + rows * (kTile / splits) + 2 * rows * v_width) * sizeof(float);
  return std::max(xs, epilogue);
}

// grid: (splits, ceil(n / kTile)), clusters of (splits, 1, 1). NT n-tiles of
// 8 rows (m <= 8 * NT); D chunks of W in flight per warp.
// Depth 2 fits two CTAs per SM (<= 128 registers), depth 4 one: thread-block
// clusters are placed within a GPC, so CTAs per SM decide how many clusters
// run at once (measured: the same grid 1.6x slower at one CTA per SM).
template <typename T, int NT, int D>
__global__ void __launch_bounds__(kThreads, D == 2 ? 2 : 1) DecodeGemmKernel(const DecodeGemmArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int splits = static_cast<int>(gridDim.x);  // The grid's x extent is one cluster.
  const int crank = static_cast<int>(blockIdx.x);
  const int tile = static_cast<int>(blockIdx.y);
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  const int lane = tid & 31;
  const int g = lane >> 2;  // mma groupID: W row (A) and x row (B) within the tile.
  const int c = lane & 3;   // mma thread-in-group: which 16-byte vector of the chunk.
  const int kc = p.k / kChunk;
  const int cps = ChunksPerSplit(p.k, splits);
  const int c0 = min(kc, crank * cps);
  const int nchunks = min(kc, c0 + cps) - c0;
  const int64_t k0 = static_cast<int64_t>(c0) * kChunk;
  const int xstride = XStride(cps);
  T* xs = reinterpret_cast<T*>(smem_raw);

  // 1. This warp's W rows (rows past n repeat the last one: valid addresses,
  //    never stored); the first D chunks go in flight before anything else.
  //    Every load is unconditional (a chunk index past the range reloads the
  //    last chunk): predicated loads leave the compiler unable to count the
  //    loads in flight, and it then waits for all of them at each use.
  //    Rows h of the warp: mt * 16 + g (h = 2 mt) and mt * 16 + g + 8 (h = 2 mt + 1).
  constexpr int kH = 2 * kMTiles;
  const T* w = static_cast<const T*>(p.w);
  const int64_t kw = nchunks > 0 ? k0 : 0;  // A CTA without chunks reads (and drops) chunk 0.
  const int last = max(nchunks - 1, 0);
  const T* wr[kH];
#pragma unroll
  for (int h = 0; h < kH; ++h) {
    const int row = tile * kTile + warp * 16 * kMTiles + (h / 2) * 16 + (h % 2) * 8 + g;
    wr[h] = w + static_cast<int64_t>(min(row, p.n - 1)) * p.k + kw + 8 * c;
  }
  uint4 wb[D][kH];
#pragma unroll
  for (int d = 0; d < D; ++d)
#pragma unroll
    for (int h = 0; h < kH; ++h) wb[d][h] = LdStream(wr[h] + min(d, last) * kChunk);

  // 2. The x slice into shared memory in kXGroups groups of whole D-chunk
  //    steps (rows past m are zeros).
  constexpr int kRows = NT * 8;
  const int group_chunks = ((nchunks + kXGroups - 1) / kXGroups + D - 1) / D * D;
  const T* x = static_cast<const T*>(p.x);
#pragma unroll
  for (int gi = 0; gi < kXGroups; ++gi) {
    const int g0 = min(nchunks, gi * group_chunks);
    const int nv = (min(nchunks, g0 + group_chunks) - g0) * (kChunk / 8);
    for (int i = tid; i < kRows * nv; i += kThreads) {
      const int r = i / nv;
      const int col = g0 * kChunk + (i % nv) * 8;
      const bool valid = r < p.m;
      const T* src = valid ? x + static_cast<int64_t>(r) * p.ld_x + k0 + col : x;
      CpAsync16(xs + r * xstride + col, src, valid);
    }
    CpAsyncCommit();
  }

  // 3. LoRA: each row's slot and adapters, and the epilogue's B rows
  //    prefetched into L2. The index and the table were written before the
  //    shrink ran.
  const bool lora = p.lora.meta != nullptr;
  const int rp = kTile / splits;  // Columns this CTA finishes: [n0, n0 + rp).
  const int n0 = tile * kTile + crank * rp;
  __shared__ GemmLora gl;
  if (lora) StageGemmLora<T>(p, n0, min(p.n, n0 + rp), tid, kThreads, gl, [] { __syncthreads(); });

  // 4. Main loop: chunk i uses register slot i % D, refilled with chunk i + D.
  float acc[kMTiles][NT][4];
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
      acc[mt][nt][0] = acc[mt][nt][1] = acc[mt][nt][2] = acc[mt][nt][3] = 0.0f;
  for (int gi = 0; gi < kXGroups; ++gi) {
    const int g0 = min(nchunks, gi * group_chunks);
    const int g1 = min(nchunks, g0 + group_chunks);
    CpAsyncWait(kXGroups - 1 - gi);
    __syncthreads();
    for (int i = g0; i < g1; i += D) {
#pragma unroll
      for (int d = 0; d < D; ++d) {
        const int ci = i + d;
        uint4 a[kH];
#pragma unroll
        for (int h = 0; h < kH; ++h) {
          a[h] = wb[d][h];
          wb[d][h] = LdStream(wr[h] + min(ci + D, last) * kChunk);
        }
        if (ci < g1) {
          const T* xk = xs + ci * kChunk + 8 * c;
#pragma unroll
          for (int nt = 0; nt < NT; ++nt) {
            const uint4 b = *reinterpret_cast<const uint4*>(xk + (nt * 8 + g) * xstride);
#pragma unroll
            for (int mt = 0; mt < kMTiles; ++mt) {
              const uint4& a0 = a[2 * mt];
              const uint4& a1 = a[2 * mt + 1];
              Mma<T>::Run(acc[mt][nt], a0.x, a1.x, a0.y, a1.y, b.x, b.y);
              Mma<T>::Run(acc[mt][nt], a0.z, a1.z, a0.w, a1.w, b.z, b.w);
            }
          }
        }
      }
    }
  }

  // 5. Partial sums to shared memory ([row][column]), then each CTA of the
  //    cluster adds up its rp columns over the cluster's partials.
  __syncthreads();  // Every warp is done with xs.
  float* part = reinterpret_cast<float*>(smem_raw);
#pragma unroll
  for (int mt = 0; mt < kMTiles; ++mt)
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      const int t0 = nt * 8 + 2 * c;
      const int r0 = warp * 16 * kMTiles + mt * 16 + g;
      part[t0 * kPartStride + r0] = acc[mt][nt][0];
      part[(t0 + 1) * kPartStride + r0] = acc[mt][nt][1];
      part[t0 * kPartStride + r0 + 8] = acc[mt][nt][2];
      part[(t0 + 1) * kPartStride + r0 + 8] = acc[mt][nt][3];
    }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  float* sums = part + kRows * kPartStride;  // [m][rp], this thread's elements only.
  const int count = p.m * rp;
  SumClusterPartials<kThreads>(part, kPartStride, splits, crank, rp, count, sums, tid);
  ClusterArrive();  // Done reading the other CTAs' shared memory.

  // 6. Epilogue: + LoRA (after the shrink has finished), one rounding, store.
  float* vstage = sums + kRows * rp;  // [2][kRows][v_width]
  StoreWithLora<T, kThreads>(p, sums, count, rp, n0, kRows, lora, gl, vstage, tid);
  ClusterWait();
#endif
}

bool DecodeGemmAvailable() {
  static int cached[64] = {};
  return Sm90KernelRuns(reinterpret_cast<const void*>(&DecodeGemmKernel<__nv_bfloat16, 1, 2>),
                        cached);
}

template <typename T, int NT, int D>
std::string Launch(const DecodeGemmArgs& p, int splits, cudaStream_t stream) {
  auto* kernel = DecodeGemmKernel<T, NT, D>;
  const size_t smem =
      SmemBytes(p.m, p.k, splits, sizeof(T), p.lora.meta != nullptr ? p.lora.v_width : 0);
  static bool opted_in[64] = {};
  if (smem > 48 * 1024) {
    if (std::string err =
            AllowDynamicSmem(reinterpret_cast<const void*>(kernel), kMaxSmem, opted_in);
        !err.empty()) {
      return err;
    }
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(splits),
                        static_cast<unsigned>((p.n + kTile - 1) / kTile));
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  LaunchAttrs attrs(static_cast<unsigned>(splits), p.lora.meta != nullptr && p.lora.after_shrink);
  attrs.ApplyTo(config);
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, p);
  if (e != cudaSuccess) return cudaGetErrorString(e);
  return std::string();
}

template <typename T, int NT>
std::string DispatchDepth(const DecodeGemmArgs& p, int splits, cudaStream_t stream) {
  const int depth = p.depth > 0 ? p.depth : kDefaultDepth;
  return depth == 4 ? Launch<T, NT, 4>(p, splits, stream) : Launch<T, NT, 2>(p, splits, stream);
}

template <typename T>
std::string DispatchRows(const DecodeGemmArgs& p, int splits, cudaStream_t stream) {
  switch (RowsFor(p.m)) {
    case 8:
      return DispatchDepth<T, 1>(p, splits, stream);
    case 16:
      return DispatchDepth<T, 2>(p, splits, stream);
    default:
      return DispatchDepth<T, 4>(p, splits, stream);
  }
}

bool SplitFits(int m, int k, int splits) {
  return k / kChunk >= splits &&
         SmemBytes(m, k, splits, 2, kMaxVWidth) <= static_cast<size_t>(kMaxSmem);
}

// How many CTAs of `kernel` in clusters of `splits` run at once on this
// device (clusters are placed within a GPC); 0 if the query fails.
template <typename T, int NT, int D>
int ConcurrentCtas(int splits, size_t smem) {
  auto* kernel = DecodeGemmKernel<T, NT, D>;
  if (smem > 48 * 1024 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kMaxSmem) !=
          cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(splits), 1024);
  config.blockDim = dim3(kThreads);
  config.dynamicSmemBytes = smem;
  LaunchAttrs attrs(static_cast<unsigned>(splits), false);
  attrs.ApplyTo(config);
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &config) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return clusters * splits;
}

int ConcurrentCtasFor(int m, int depth, int splits, size_t smem) {
  // Occupancy does not depend on the dtype (same registers, same shared memory).
  const bool deep = depth == 4;
  switch (RowsFor(m)) {
    case 8:
      return deep ? ConcurrentCtas<__nv_bfloat16, 1, 4>(splits, smem)
                  : ConcurrentCtas<__nv_bfloat16, 1, 2>(splits, smem);
    case 16:
      return deep ? ConcurrentCtas<__nv_bfloat16, 2, 4>(splits, smem)
                  : ConcurrentCtas<__nv_bfloat16, 2, 2>(splits, smem);
    default:
      return deep ? ConcurrentCtas<__nv_bfloat16, 4, 4>(splits, smem)
                  : ConcurrentCtas<__nv_bfloat16, 4, 2>(splits, smem);
  }
}

}  // namespace

bool DecodeGemmFits(int m, int n, int k) {
  if (m < 1 || m > kDecodeGemmMaxRows || n < 1 || k < kChunk || k % kChunk != 0) return false;
  if (!SplitFits(m, k, 8) && !SplitFits(m, k, 4) && !SplitFits(m, k, 2) && !SplitFits(m, k, 1))
    return false;
  return DecodeGemmAvailable();
}

// The split count whose grid fills the slots of the clusters that run at once
// best over its waves (the weights are the cost: every slot should stream
// until the end), the fewest splits among equals. Cached per shape.
int DecodeGemmAutoSplits(int m, int n, int k) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, int, int>, int> cache;
  int dev = 0;
  cudaGetDevice(&dev);
  const auto key = std::make_tuple(dev, RowsFor(m), n, k);
  {
    const std::lock_guard<std::mutex> lock(mu);
    if (auto it = cache.find(key); it != cache.end()) return it->second;
  }
  const int tiles = (n + kTile - 1) / kTile;
  int best = 0;
  double best_fill = -1.0;
  for (int splits : {1, 2, 4, 8}) {
    if (!SplitFits(m, k, splits)) continue;
    const int slots = ConcurrentCtasFor(m, kDefaultDepth, splits, SmemBytes(m, k, splits, 2));
    if (slots <= 0) continue;
    const double ctas = static_cast<double>(tiles) * splits;
    const double fill = ctas / (std::ceil(ctas / slots) * slots);
    if (fill > best_fill + 0.02) {
      best_fill = fill;
      best = splits;
    }
  }
  if (best == 0) best = 4;
  const std::lock_guard<std::mutex> lock(mu);
  cache[key] = best;
  return best;
}

std::string LaunchDecodeGemmCuda(const DecodeGemmArgs& args, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  int splits = args.splits > 0 ? args.splits : DecodeGemmAutoSplits(args.m, args.n, args.k);
  if (splits != 1 && splits != 2 && splits != 4 && splits != 8) return "decode gemm: bad splits";
  if (!SplitFits(args.m, args.k, splits)) return "decode gemm: the x slice exceeds shared memory";
  std::string err;
  switch (args.dtype) {
    case LoraDType::kFloat16:
      err = DispatchRows<__half>(args, splits, s);
      break;
    case LoraDType::kBFloat16:
      err = DispatchRows<__nv_bfloat16>(args, splits, s);
      break;
    case LoraDType::kFloat32:
      return "decode gemm: fp16 or bf16 only";
  }
  if (!err.empty()) return err;
  return LastError();
}

}  // namespace adapterd::lora_internal
