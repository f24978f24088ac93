#pragma once

// Plain-C++ launch parameters shared by lora_kernels.cc and the CUDA kernels in
// lora_kernels.cu. No torch and no CUDA header here, so that nvcc compiles the
// kernels without ATen.

#include <cstdint>
#include <string>

namespace adapterd::lora_internal {

// Fields of one (slice, slot) record in LoraWeightTable::meta (int64 each).
enum LoraMetaField : int {
  kMetaA = 0,      // const T* A [rank, in], row-major; 0 = slice not adapted.
  kMetaB = 1,      // const T* B [out, rank], row-major.
  kMetaABias = 2,  // const T* bias [rank] added to v before the activation; 0 = none.
  kMetaBBias = 3,  // const T* bias [out] added before scaling; 0 = none.
  kMetaRank = 4,
  kMetaOut = 5,
  kMetaScale = 6,  // float bit pattern in the low 32 bits.
  kMetaAct = 7,    // LoraActivation.
  kMetaFields = 8,
};

enum class LoraDType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

inline constexpr int kMaxLoraSlices = 8;
// The fused single-launch kernel serves segments of at most this many tokens.
inline constexpr int kFusedMaxTokens = 8;

struct LoraLaunchArgs {
  LoraDType dtype = LoraDType::kFloat32;
  int num_tokens = 0;
  int in_features = 0;
  int64_t ld_x = 0;
  const void* x = nullptr;
  float* v = nullptr;  // [num_slices, num_tokens, v_width]
  int v_width = 0;
  int max_rank = 0;
  const int64_t* meta = nullptr;  // [num_slices, num_slots, kMetaFields]
  int num_slots = 0;
  const int32_t* sorted_tokens = nullptr;  // [num_tokens]
  const int32_t* segment_start = nullptr;  // [max_segments + 1]
  const int32_t* segment_slot = nullptr;   // [max_segments]
  int max_segments = 0;
  int max_segment_tokens = 0;
  int num_slices = 0;
  void* y[kMaxLoraSlices] = {};
  int64_t ld_y[kMaxLoraSlices] = {};
  int max_out = 0;
  // Expand directly follows this call's shrink on the stream: it may start
  // early (programmatic dependent launch) and read weights and the index
  // before the shrink finishes.
  bool after_shrink = false;
  // The kernel before on the stream (the base GEMM writing y) writes none of
  // x, v, the index, the table or the weights: the first kernel (shrink or
  // fused) is launched as its programmatic dependent, so that its launch,
  // index and weight reads overlap that kernel's tail, and waits for it
  // (griddepcontrol.wait) before it writes v or touches y, and before it exits.
  bool after_producer = false;
  // With after_producer: the capture already holds the programmatic edge from
  // the producer to this launch (LoraApplyOptions::beside_base_gemm), so the
  // first kernel is launched without the stream attribute.
  bool producer_edge = false;
};

// Both return an empty string on success, else the CUDA error text.
std::string LaunchLoraShrinkCuda(const LoraLaunchArgs& args, void* stream);
std::string LaunchLoraExpandCuda(const LoraLaunchArgs& args, void* stream);

// Whether the fused shrink+expand kernel serves `args` (every segment at most
// kFusedMaxTokens tokens, the ranks' staging within 48 KB of shared memory,
// and thread-block clusters: an sm_90+ device running sm_90 code).
bool LoraFusedFits(const LoraLaunchArgs& args);
// Shrink and expand in one launch (v stays on chip); args.v is not used.
// Call only where LoraFusedFits(args).
std::string LaunchLoraFusedCuda(const LoraLaunchArgs& args, void* stream);

// The decode GEMM (decode_gemm.cu): y[m, n] = x[m, k] · W[n, k]ᵀ for a few
// rows (m <= kDecodeGemmMaxRows), on tensor cores, W streamed from HBM once,
// with the LoRA expand of `lora` optionally added in its epilogue. fp16/bf16.
inline constexpr int kDecodeGemmMaxRows = 32;
inline constexpr int kDecodeGemmTileCols = 256;  // Output columns per CTA.
inline constexpr int kDecodeGemmChunk = 32;      // k per warp step: k % kDecodeGemmChunk == 0.

struct DecodeGemmArgs {
  LoraDType dtype = LoraDType::kBFloat16;
  int m = 0;
  int n = 0;
  int k = 0;
  const void* x = nullptr;  // [m, k], row stride ld_x (elements, a multiple of 8).
  int64_t ld_x = 0;
  const void* w = nullptr;  // [n, k], contiguous.
  void* y = nullptr;        // [m, n], row stride ld_y.
  int64_t ld_y = 0;
  int splits = 0;  // K splits per output tile (a thread-block cluster): 1, 2, 4 or 8; 0: auto.
  int depth = 0;   // W chunks each warp keeps in flight: 2 or 4; 0: 2.
  int tile_cols = 0;  // Stream GEMM: W rows per CTA, 64 or 128; 0: its rule.
  // LoRA in the epilogue (lora.meta == nullptr: none). lora.v holds the
  // shrink's output ([slices, m, v_width], written by the kernel launched
  // just before on the stream); slice s covers y's columns
  // [slice_begin[s], slice_begin[s + 1]).
  LoraLaunchArgs lora;
  int slice_begin[kMaxLoraSlices + 1] = {};
};

// Whether the decode GEMM serves this shape on the current device (sm_90+
// running sm_90 code, m <= kDecodeGemmMaxRows, k a multiple of
// kDecodeGemmChunk, the x slice within shared memory for some split).
bool DecodeGemmFits(int m, int n, int k);
// The split count the decode GEMM takes for a shape when args.splits is 0.
int DecodeGemmAutoSplits(int m, int n, int k);
// Returns an empty string on success, else the CUDA error text.
std::string LaunchDecodeGemmCuda(const DecodeGemmArgs& args, void* stream);

// The streaming GEMM (stream_gemm.cu): the same product and LoRA epilogue
// for m <= 32 rows, W fed through a TMA shared-memory pipeline (`depth` =
// stages, 0: auto; `splits` k-ranges per tile, 0: auto; `tile_cols` 64 or
// 128, 0: 64). Needs n % kStreamGemmTileCols == 0, k % 64 == 0, x and w
// 16-byte aligned with row strides a multiple of 8 elements, sm_90.
inline constexpr int kStreamGemmTileCols = 64;
bool StreamGemmFits(int m, int n, int k);
std::string LaunchStreamGemmCuda(const DecodeGemmArgs& args, void* stream);

// y = x · wᵀ by cuBLASLt (blaslt_gemm.cc) for args' shape (fp16/bf16; lora,
// splits, depth and tile_cols unused), asking it to use at most `sm_count`
// SMs (CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET; 0: all), so that kernels on the
// other SMs can run beside it. Torch's handle and workspace for the current
// device and stream.
std::string LaunchBlasLtGemm(const DecodeGemmArgs& args, int sm_count, void* stream);

}  // namespace adapterd::lora_internal
