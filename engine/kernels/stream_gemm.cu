// The streaming GEMM for decode row counts behind LoraLinear's kStream:
// y[m, n] = x[m, k] · W[n, k]ᵀ (+ the LoRA deltas) for m <= 32, fp16/bf16,
// W streamed from HBM through a deep shared-memory pipeline fed by the
// Tensor Memory Accelerator.
//
// Why: at m <= 32 a projection is a stream of its weight bytes. The
// register-streaming decode GEMM (decode_gemm.cu) keeps too few bytes in
// flight and falls behind cuBLAS at 32 rows; cuBLAS's kernel for 4096x4096
// at 32 rows (scripts/gpu/cublas_probe.py) is a warp-specialised TMA pipeline
// with split-k 2 plus a separate split-k reduction kernel. This kernel is
// that design in one launch, with the LoRA expand in its epilogue:
//   - grid: n/64 column tiles × `splits` k-ranges; the CTAs of one tile form
//     a thread-block cluster and add their partial sums through distributed
//     shared memory (no workspace, no second kernel); one CTA per SM;
//   - one producer warp issues, per stage, two 2-D TMA copies (a 64-row ×
//     64-k W box and the x box of 16 or 32 rows, rows past m zero-filled by
//     the TMA) into 128-byte-swizzled shared memory, `stages` ahead, each
//     stage signalled by an mbarrier's transaction count;
//   - four consumer warps (16 W rows each) read their fragments with
//     ldmatrix (conflict-free under the swizzle) and multiply with
//     mma.sync.m16n8k16 (W is the A operand, x the B operand, fp32
//     accumulation), then release the stage to the producer;
//   - LoRA (gemm_lora_epilogue.cuh): the shrink runs just before on the
//     stream and lets this kernel launch at once (programmatic dependent
//     launch); rows' adapters are staged and the B rows prefetched into L2
//     before the main loop; only the epilogue waits for v, adds the deltas
//     in fp32 and rounds once.

#include <cooperative_groups.h>
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "engine/kernels/cuda_common.cuh"
#include "engine/kernels/gemm_lora_epilogue.cuh"
#include "engine/kernels/lora_launch.h"

namespace adapterd::lora_internal {
namespace {

constexpr int kBK = 64;  // k per stage: one 128-byte swizzle row.
// Dynamic shared memory: the 227 KB an SM gives one CTA less the kernel's
// static arrays (mbarriers and staged adapters, 3 KB).
constexpr int kMaxSmem = 223 * 1024;
// Every launch takes more than half an SM's shared memory: one CTA per SM.
// (With several CTAs of clusters > 1 per SM and more CTAs than fit at once,
// some results came out wrong on the H200: not understood, so not allowed.)
constexpr int kMinSmem = 116 * 1024;

// BN: W rows (output columns) per CTA, 16 per consumer warp.
template <int BN>
__host__ __device__ constexpr int Threads() {
  return (BN / 16 + 1) * 32;
}
__host__ __device__ constexpr int StageBytes(int bn, int nx) { return (bn + 16 * nx) * kBK * 2; }

__device__ __forceinline__ void MbarInit(uint64_t* bar, int count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(SmemAddr(bar)), "r"(count)
               : "memory");
}

__device__ __forceinline__ void MbarArriveExpectTx(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(SmemAddr(bar)),
               "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void MbarArrive(uint64_t* bar) {
  asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(SmemAddr(bar)) : "memory");
}

// Waits until the phase of `parity` has completed (a fresh barrier counts its
// phase "1" as completed: the producer's first pass does not wait).
__device__ __forceinline__ void MbarWait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra WAIT;\n"
      "}\n" ::"r"(SmemAddr(bar)),
      "r"(parity)
      : "memory");
}

// A 2-D box of `map` at (inner coordinate c0, row c1) into shared memory,
// completing `bytes` of `bar`'s transaction count.
__device__ __forceinline__ void TmaLoad2d(void* dst, const CUtensorMap* map, int c0, int c1,
                                          uint64_t* bar) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, "
      "%3}], [%4];\n" ::"r"(SmemAddr(dst)),
      "l"(reinterpret_cast<uint64_t>(map)), "r"(c0), "r"(c1), "r"(SmemAddr(bar))
      : "memory");
}

__device__ __forceinline__ void LdMatrixX4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// Shared address of (row, 16-byte chunk) in a box of 128-byte rows at `base`
// (1024-byte aligned) written by the TMA with CU_TENSOR_MAP_SWIZZLE_128B:
// address bits 4-6 are XORed with bits 7-9.
__device__ __forceinline__ uint32_t Swizzled(uint32_t base, int row, int chunk) {
  const uint32_t a = base + static_cast<uint32_t>(row * 128 + chunk * 16);
  return a ^ ((a >> 3) & 0x70);
}

constexpr int kMaxStages = 16;

// grid: (n / BN * splits), clusters of `splits` along x (p.splits; p.depth
// = stages). NX: 16-row groups of x (m <= 16 * NX).
template <typename T, int BN, int NX>
__global__ void __launch_bounds__(Threads<BN>(), 1)
    StreamGemmKernel(const __grid_constant__ CUtensorMap wmap,
                     const __grid_constant__ CUtensorMap xmap, const DecodeGemmArgs p) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  namespace cg = cooperative_groups;
  extern __shared__ __align__(1024) unsigned char smem_raw[];
  __shared__ uint64_t full[kMaxStages], empty[kMaxStages];
  __shared__ GemmLora gl;
  // The swizzle pattern follows absolute address bits: stages start 1024-aligned.
  unsigned char* smem = smem_raw + ((1024 - (SmemAddr(smem_raw) & 1023)) & 1023);
  constexpr int kStage = StageBytes(BN, NX);
  constexpr int kConsumerWarps = BN / 16;
  constexpr int kThreads = Threads<BN>();
  constexpr int kRows = 16 * NX;
  constexpr int kPartStride = BN + 4;  // Floats per token row of partial sums.
  const int stages = p.depth;
  const int splits = p.splits;
  const int split = static_cast<int>(blockIdx.x) % splits;
  const int tile0 = (static_cast<int>(blockIdx.x) / splits) * BN;
  const int kper = p.k / splits;
  const int k0 = split * kper;
  const int iters = kper / kBK;
  const int tid = static_cast<int>(threadIdx.x);
  const int warp = tid >> 5;
  const int lane = tid & 31;
  if (tid == 0) {
    for (int s = 0; s < stages; ++s) {
      MbarInit(&full[s], 1);
      MbarInit(&empty[s], kConsumerWarps);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();  // The mbarriers are initialised.
  const bool lora = p.lora.meta != nullptr;
  const int rp = BN / splits;         // Columns this CTA finishes:
  const int n0 = tile0 + split * rp;  // [n0, n0 + rp).

  float acc[2 * NX][4];
#pragma unroll
  for (int j = 0; j < 2 * NX; ++j)
#pragma unroll
    for (int q = 0; q < 4; ++q) acc[j][q] = 0.0f;

  if (warp == kConsumerWarps) {
    // Producer: one lane issues both boxes of a stage.
    if (lane == 0) {
      for (int it = 0; it < iters; ++it) {
        const int s = it % stages;
        MbarWait(&empty[s], ((it / stages) & 1) ^ 1);
        unsigned char* st = smem + s * kStage;
        MbarArriveExpectTx(&full[s], kStage);
        const int kk = k0 + it * kBK;
        TmaLoad2d(st, &wmap, kk, tile0, &full[s]);
        TmaLoad2d(st + BN * 128, &xmap, kk, 0, &full[s]);
      }
    }
  } else {
    // LoRA: the consumers stage the rows' adapters and prefetch the B rows
    // into L2 while the producer fills the pipeline (the index and the table
    // were written before the shrink ran).
    if (lora) {
      StageGemmLora<T>(p, n0, min(p.n, n0 + rp), tid, kConsumerWarps * 32, gl, [] {
        asm volatile("bar.sync 1, %0;\n" ::"n"(kConsumerWarps * 32) : "memory");
      });
    }
    // ldmatrix row addresses. W (A operand, 16x16 per k16 step): matrices
    // (rows 0-7, k 0-7), (rows 8-15, k 0-7), (rows 0-7, k 8-15), (rows 8-15,
    // k 8-15). x (B operand, two n8 tiles per x4): (tokens 0-7, k 0-7),
    // (tokens 0-7, k 8-15), (tokens 8-15, k 0-7), (tokens 8-15, k 8-15).
    const int a_row = warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
    const int a_half = lane >> 4;
    const int b_row = (lane & 7) + (lane >> 4) * 8;
    const int b_half = (lane >> 3) & 1;
    for (int it = 0; it < iters; ++it) {
      const int s = it % stages;
      MbarWait(&full[s], (it / stages) & 1);
      const uint32_t st = SmemAddr(smem + s * kStage);
#pragma unroll
      for (int ks = 0; ks < kBK / 16; ++ks) {
        uint32_t a[4];
        LdMatrixX4(a, Swizzled(st, a_row, ks * 2 + a_half));
#pragma unroll
        for (int g = 0; g < NX; ++g) {
          uint32_t b[4];
          LdMatrixX4(b, Swizzled(st + BN * 128, g * 16 + b_row, ks * 2 + b_half));
          Mma<T>::Run(acc[2 * g], a[0], a[1], a[2], a[3], b[0], b[1]);
          Mma<T>::Run(acc[2 * g + 1], a[0], a[1], a[2], a[3], b[2], b[3]);
        }
      }
      __syncwarp();
      if (lane == 0) MbarArrive(&empty[s]);
    }
  }

  // Partial sums part[t][row] into the (reused) stage memory, at the start of
  // the dynamic shared memory: the same offset in every CTA (the stages'
  // alignment pad may differ between CTAs, and distributed shared memory maps
  // an address to the same offset in another CTA). Then the cluster's CTAs
  // each finish rp columns over every CTA's partials, add the LoRA deltas and
  // store.
  __syncthreads();  // Every stage consumed: the TMA writes have all landed.
  float* part = reinterpret_cast<float*>(smem_raw);
  if (warp < kConsumerWarps) {
    const int r = warp * 16 + (lane >> 2);
#pragma unroll
    for (int j = 0; j < 2 * NX; ++j) {
      const int t = j * 8 + 2 * (lane & 3);
      part[t * kPartStride + r] = acc[j][0];
      part[(t + 1) * kPartStride + r] = acc[j][1];
      part[t * kPartStride + r + 8] = acc[j][2];
      part[(t + 1) * kPartStride + r + 8] = acc[j][3];
    }
  }
  cg::cluster_group cluster = cg::this_cluster();
  cluster.sync();
  float* sums = part + kRows * kPartStride;  // [m][rp]
  const int count = p.m * rp;
  SumClusterPartials<kThreads, 8>(part, kPartStride, splits, split, rp, count, sums, tid);
  ClusterArrive();                    // Done reading the other CTAs' shared memory.
  __syncthreads();                    // sums complete.
  float* vstage = sums + kRows * rp;  // [2][kRows][v_width]
  StoreWithLora<T, kThreads, 8>(p, sums, count, rp, n0, kRows, lora, gl, vstage, tid);
  ClusterWait();
#endif
}

PFN_cuTensorMapEncodeTiled_v12000 EncodeFn() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* f = nullptr;
    cudaDriverEntryPointQueryResult q;
    if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &f, 12000, cudaEnableDefault,
                                         &q) != cudaSuccess ||
        q != cudaDriverEntryPointSuccess) {
      cudaGetLastError();
      f = nullptr;
    }
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(f);
  }();
  return fn;
}

// A row-major [rows, cols] matrix (row stride ld elements) read in boxes of
// box_rows × kBK, 128-byte swizzled; rows past `rows` read as zeros.
bool MakeMap(CUtensorMap* map, LoraDType dtype, const void* ptr, int64_t rows, int64_t cols,
             int64_t ld, int box_rows) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = EncodeFn();
  if (encode == nullptr) return false;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(cols), static_cast<cuuint64_t>(rows)};
  const cuuint64_t strides[1] = {static_cast<cuuint64_t>(ld) * 2};
  const cuuint32_t box[2] = {kBK, static_cast<cuuint32_t>(box_rows)};
  const cuuint32_t elem[2] = {1, 1};
  return encode(map,
                dtype == LoraDType::kBFloat16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16
                                              : CU_TENSOR_MAP_DATA_TYPE_FLOAT16,
                2, const_cast<void*>(ptr), dims, strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE,
                CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
                CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE) == CUDA_SUCCESS;
}

bool ClustersRun() {
  static int cached[64] = {};
  return Sm90KernelRuns(reinterpret_cast<const void*>(&StreamGemmKernel<__nv_bfloat16, 64, 2>),
                        cached);
}

// Splits that bring the grid closest to one CTA per SM without passing it.
int AutoSplits(int tiles, int k) {
  int best = 1;
  for (int s : {2, 4, 8}) {
    if (k % (s * kBK) != 0 || static_cast<int64_t>(tiles) * s > NumSms()) break;
    best = s;
  }
  return best;
}

// The stages and 1024 bytes of alignment slack, at least kMinSmem (the
// mbarriers are static). The epilogue reuses the stages' memory.
size_t SmemBytes(int bn, int nx, int stages) {
  return std::max<size_t>(static_cast<size_t>(stages) * StageBytes(bn, nx) + 1024, kMinSmem);
}

int MaxStages(int bn, int nx) {
  return std::min(kMaxStages, (kMaxSmem - 1024) / StageBytes(bn, nx));
}

// Auto: 8 stages (the best on the H200 at 4096x4096 and 4096x11008; more
// stages did not help), as many as fit up to that.
constexpr int kAutoStages = 8;

template <typename T, int BN, int NX>
std::string Launch(const DecodeGemmArgs& a, cudaStream_t stream) {
  CUtensorMap wmap, xmap;
  if (!MakeMap(&wmap, a.dtype, a.w, a.n, a.k, a.k, BN) ||
      !MakeMap(&xmap, a.dtype, a.x, a.m, a.k, a.ld_x, 16 * NX)) {
    return "cuTensorMapEncodeTiled failed";
  }
  DecodeGemmArgs p = a;
  p.splits = a.splits > 0 ? a.splits : AutoSplits(a.n / BN, a.k);
  if (p.splits > 8 || a.k % (p.splits * kBK) != 0) return "k does not split evenly";
  p.depth = std::clamp(a.depth > 0 ? a.depth : kAutoStages, 2, MaxStages(BN, NX));
  // The epilogue's partial sums, sums and staged v reuse the stages' memory.
  const int rows = 16 * NX;
  const size_t epilogue =
      sizeof(float) * (static_cast<size_t>(rows) * (BN + 4) + static_cast<size_t>(rows) * BN +
                       2 * static_cast<size_t>(rows) * (a.lora.meta ? a.lora.v_width : 0));
  const size_t smem = std::max(SmemBytes(BN, NX, p.depth), epilogue);
  if (smem > static_cast<size_t>(kMaxSmem)) return "the epilogue does not fit shared memory";
  auto kernel = StreamGemmKernel<T, BN, NX>;
  static bool opted_in[64] = {};
  if (std::string err = AllowDynamicSmem(reinterpret_cast<const void*>(kernel), kMaxSmem, opted_in);
      !err.empty()) {
    return err;
  }
  cudaLaunchConfig_t config = {};
  config.gridDim = dim3(static_cast<unsigned>(a.n / BN * p.splits));
  config.blockDim = dim3(Threads<BN>());
  config.dynamicSmemBytes = smem;
  config.stream = stream;
  // With LoRA: a programmatic dependent of the shrink launched just before
  // (the main loop runs beside it; the epilogue waits for it).
  LaunchAttrs attrs(static_cast<unsigned>(p.splits), p.lora.meta != nullptr && p.lora.after_shrink);
  attrs.ApplyTo(config);
  const cudaError_t e = cudaLaunchKernelEx(&config, kernel, wmap, xmap, p);
  if (e != cudaSuccess) {
    cudaGetLastError();
    return cudaGetErrorString(e);
  }
  return LastError();
}

template <typename T>
std::string LaunchTile(const DecodeGemmArgs& a, cudaStream_t stream) {
  // 64 W rows per CTA unless asked otherwise (128 measured slower at every
  // shape but the wide ones at one row: docs/kernels.md).
  const int tile = a.tile_cols > 0 ? a.tile_cols : 64;
  if (tile == 128 && a.n % 128 == 0) {
    return a.m > 16 ? Launch<T, 128, 2>(a, stream) : Launch<T, 128, 1>(a, stream);
  }
  if (tile != 64) return "tile_cols must be 64 or 128 (dividing n)";
  return a.m > 16 ? Launch<T, 64, 2>(a, stream) : Launch<T, 64, 1>(a, stream);
}

}  // namespace

bool StreamGemmFits(int m, int n, int k) {
  return m >= 1 && m <= 32 && n % kStreamGemmTileCols == 0 && k % kBK == 0 &&
         EncodeFn() != nullptr && ClustersRun();
}

std::string LaunchStreamGemmCuda(const DecodeGemmArgs& args, void* stream) {
  const auto s = static_cast<cudaStream_t>(stream);
  if (args.dtype == LoraDType::kBFloat16) return LaunchTile<__nv_bfloat16>(args, s);
  if (args.dtype == LoraDType::kFloat16) return LaunchTile<__half>(args, s);
  return "fp16 or bf16 only";
}

}  // namespace adapterd::lora_internal
