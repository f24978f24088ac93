#pragma once

// Batched heterogeneous LoRA (and bottleneck-adapter) kernels: one base
// projection, many adapters in one batch, every token with its own adapter.
//
//   shrink:  v[s, t, :r]  = x[t] · A_{s,a(t)}ᵀ                  (wide → rank)
//   expand:  y_s[t]      += scale · (act(v[s, t] + a_bias) · Bᵀ + b_bias)  (rank → wide)
//
// a(t) is the token's adapter slot (−1: none, the row is left untouched). Tokens
// are grouped by a sorted index, never physically reordered. Every adapter has
// its own rank, scaling and weight pointers (no padding to the maximum rank);
// several output slices (q/k/v, gate/up) share one launch. On CUDA the launch
// grid depends only on the bounds in LoraBatchIndex, so that a decode step can
// be captured in a CUDA graph and replayed after the index tensors are
// overwritten in place. On the CPU a grouped path (one at::mm per adapter and
// slice) computes the same function. x, weights and y share one dtype (fp32,
// fp16 or bf16); v and all accumulation are fp32.
//
// Engine-internal: holds at::Tensor. Not thread-safe per call; the functions
// keep no state.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adapterd {

enum class LoraActivation : int { kNone = 0, kRelu = 1, kGelu = 2, kGeluTanh = 3, kSilu = 4 };

// One adapter's weights for one slice (one target module).
struct LoraSliceWeights {
  at::Tensor a;        // [rank, in_features], contiguous.
  at::Tensor b;        // [out_features, rank], contiguous.
  float scale = 1.0f;  // alpha / rank (rsLoRA: alpha / sqrt(rank)).
  at::Tensor a_bias;   // Optional [rank]: bottleneck down-projection bias.
  at::Tensor b_bias;   // Optional [out_features]: bottleneck up-projection bias.
  LoraActivation activation = LoraActivation::kNone;  // Bottleneck non-linearity.
};

// Weight pointers, ranks and scales per (slice, slot). Does not own the
// weights: whoever built it keeps them alive (the adapter cache's lease) while
// the table is used.
struct LoraWeightTable {
  at::Tensor meta;  // int64 [num_slices, num_slots, 8], on the compute device.
  int64_t num_slices = 0;
  int64_t num_slots = 0;
  int64_t in_features = 0;
  int64_t max_rank = 0;
  std::vector<int64_t> out_features;  // Per slice.
  at::ScalarType dtype = at::kFloat;
};

// Builds a LoraWeightTable. Not thread-safe.
class LoraWeightTableBuilder {
 public:
  LoraWeightTableBuilder(int64_t num_slices, int64_t num_slots);

  // Sets the weights of `slot` for `slice` (slots left unset have no adapter on
  // that slice). Returns INVALID_ARGUMENT on a bad index, shape, dtype, device
  // or layout, or when the dims disagree with earlier calls.
  absl::Status Set(int64_t slice, int64_t slot, const LoraSliceWeights& weights);

  // Returns the table with `meta` on the weights' device. FAILED_PRECONDITION
  // if no weights were set.
  absl::StatusOr<LoraWeightTable> Build() const;

 private:
  int64_t num_slices_;
  int64_t num_slots_;
  int64_t in_features_ = -1;
  int64_t max_rank_ = 0;
  std::vector<int64_t> out_features_;
  std::vector<int64_t> meta_;
  at::ScalarType dtype_ = at::kFloat;
  bool any_ = false;
  at::Device device_ = at::kCPU;
};

// Which tokens use which slot, grouped by slot without reordering the tokens.
// Segment i covers sorted_tokens[segment_start[i] : segment_start[i+1]] and
// uses slot segment_slot[i] (−1: unused segment). Tokens with no adapter come
// after the last segment and are never read.
struct LoraBatchIndex {
  at::Tensor sorted_tokens;  // int32 [num_tokens], on the compute device.
  at::Tensor segment_start;  // int32 [max_segments + 1].
  at::Tensor segment_slot;   // int32 [max_segments].
  int64_t num_tokens = 0;
  int64_t max_segments = 0;        // Fixes the launch grid.
  int64_t max_segment_tokens = 0;  // Upper bound on one segment's tokens; fixes the grid.
  // Host copies of the above (the CPU path and validation read them).
  std::vector<int32_t> host_sorted_tokens;
  std::vector<int32_t> host_segment_start;
  std::vector<int32_t> host_segment_slot;
};

// Groups tokens by slot (`token_slot[t]` in [−1, num_slots)); stable within a
// slot. `max_segments` bounds the number of distinct slots;
// `max_segment_tokens_bound` (0: the actual maximum) bounds one slot's tokens;
// give both fixed values for CUDA-graph capture. INVALID_ARGUMENT if more than
// `max_segments` distinct slots occur or a slot is out of range.
absl::StatusOr<LoraBatchIndex> BuildLoraBatchIndex(std::span<const int32_t> token_slot,
                                                   int64_t num_slots, int64_t max_segments,
                                                   at::Device device,
                                                   int64_t max_segment_tokens_bound = 0);

// v = x · Aᵀ per token and slice. x: [num_tokens, in_features] (rows may be
// strided, columns contiguous). v: float32 contiguous
// [num_slices, num_tokens, >= max_rank]; written where a token has an adapter
// on that slice, in its first `rank` columns; other entries are unspecified
// (no memset on the GPU). INVALID_ARGUMENT on mismatched shapes, dtypes or
// devices.
absl::Status LoraShrink(const at::Tensor& x, const LoraWeightTable& table,
                        const LoraBatchIndex& index, const at::Tensor& v);

// y[s] += scale · (act(v[s] + a_bias) · Bᵀ + b_bias) for every token with an
// adapter. y: one tensor per slice, [num_tokens, out_features[s]] with
// contiguous columns (views into a fused q/k/v output are fine), dtype of the
// table. Rows without an adapter are not touched.
absl::Status LoraExpand(const at::Tensor& v, const LoraWeightTable& table,
                        const LoraBatchIndex& index, std::span<const at::Tensor> y);

// Which CUDA kernels LoraApply runs. The CPU has one path whatever is asked.
enum class LoraPath : int {
  // The fused kernel where it serves the batch and measured faster (a few
  // tokens per adapter over 8..32 adapter-slice pairs), else the split one.
  kAuto = 0,
  // Shrink, then expand as a programmatic dependent launch (its prologue
  // overlaps the shrink's tail), through a temporary v in HBM.
  kSplit = 1,
  // One launch for the decode shape: every adapter has at most 8 tokens in
  // the batch (index.max_segment_tokens <= 8); the shrink's partial sums meet
  // in a thread-block cluster's shared memory (sm_90+). INVALID_ARGUMENT
  // where it does not serve the batch.
  kFused = 2,
};

struct LoraApplyOptions {
  LoraPath path = LoraPath::kAuto;
  // CUDA: the last kernel queued on the stream is the base GEMM that wrote y
  // (or an add into y after it) and writes none of x, the index, the table
  // and the adapters' weights. LoraApply's first kernel is then launched as
  // its programmatic dependent: its launch, index, weight and x reads and
  // the shrink's arithmetic overlap the GEMM's tail, and it waits for the
  // GEMM before it writes or touches y. Wrong where that kernel writes x
  // (e.g. a copy making x contiguous); ignored on the CPU.
  bool after_base_gemm = false;
  // With after_base_gemm, while a CUDA graph is being captured and the
  // GEMM is the capture's one last node: the first kernel depends on the
  // GEMM's kernel node through its launch-completion port instead, so that
  // it is dispatched as soon as every GEMM CTA has begun and runs beside the
  // GEMM on the SMs it leaves free (everything but touching y; it still waits
  // for the GEMM before that). Only worth it after a GEMM that leaves SMs
  // free (LinearGemm::kOverlap); elsewhere as after_base_gemm alone.
  bool beside_base_gemm = false;
};

// y[s] += shrink-then-expand of x, as LoraShrink followed by LoraExpand
// computes it (v is not returned): prefer this over the two calls above.
absl::Status LoraApply(const at::Tensor& x, const LoraWeightTable& table,
                       const LoraBatchIndex& index, std::span<const at::Tensor> y,
                       const LoraApplyOptions& options);
inline absl::Status LoraApply(const at::Tensor& x, const LoraWeightTable& table,
                              const LoraBatchIndex& index, std::span<const at::Tensor> y,
                              LoraPath path = LoraPath::kAuto) {
  return LoraApply(x, table, index, y, LoraApplyOptions{.path = path});
}

// Which GEMM LoraLinear runs. The CPU and shapes the decode GEMM does not
// serve always take at::mm.
// kStream: the TMA-pipelined streaming GEMM (stream_gemm.cu) for at most 32
// rows, with the deltas in its epilogue as the decode GEMM; never chosen by
// kAuto (docs/kernels.md, round 5).
// kOverlap: the base GEMM by cuBLASLt told to leave `overlap_sms` SMs free,
// then LoraApply beside it (LoraApplyOptions::beside_base_gemm): captured in
// a CUDA graph, the LoRA runs on the SMs the GEMM leaves free while the GEMM
// runs, and only adds its deltas to y after it (docs/kernels.md, round 6).
// CUDA fp16/bf16; without adapters, the same cuBLASLt GEMM alone (so that
// rows without an adapter come out the same).
enum class LinearGemm : int { kAuto = 0, kTorch = 1, kDecode = 2, kStream = 3, kOverlap = 4 };

struct LoraLinearOptions {
  LinearGemm gemm = LinearGemm::kAuto;
  int splits = 0;     // Decode/stream GEMM: k splits per column tile (1, 2, 4, 8); 0: its rule.
  int depth = 0;      // Decode GEMM: 32-wide W chunks in flight per warp (2 or 4); 0: 2.
                      // Stream GEMM: pipeline stages (2..16); 0: 8.
  int tile_cols = 0;  // Stream GEMM: output columns per CTA, 64 or 128; 0: 64.
  int overlap_sms = 0;  // kOverlap: SMs the GEMM leaves to the LoRA; 0: kOverlapSms;
                        // negative: none (the GEMM on the whole device).
};

// SMs LinearGemm::kOverlap leaves to the LoRA by default (of the H200's 132).
inline constexpr int kOverlapSms = 32;

// Whether LinearGemm::kOverlap serves y = x · wᵀ: CUDA fp16/bf16 without
// autograd recording through x or w, w contiguous, x with contiguous columns
// and 16-byte aligned rows.
bool OverlapGemmServes(const at::Tensor& x, const at::Tensor& w);

// Whether LoraLinear's kAuto takes kOverlap: with adapters in the batch
// (`lora`), kOverlapAutoMinRows..kOverlapAutoRows rows (decode steps), where
// it serves. Measured on the H200 (docs/kernels.md, round 6; rank 16, one
// adapter per row up to 32): 4096x4096 at 32 rows 15.0 us against 19.9 for
// cuBLAS then LoraApply; the four Llama-7B projections of a layer at 8 rows
// 142.6 against 149.8 us, at 32 rows 134.5 against 158.5; at 1 row 136.4
// against 135.1 (the SM target makes cuBLASLt slower there).
inline constexpr int64_t kOverlapAutoMinRows = 8;
inline constexpr int64_t kOverlapAutoRows = 32;
bool OverlapGemmPreferred(const at::Tensor& x, const at::Tensor& w, bool lora);

// Whether LoraLinear's kAuto runs a projection without adapters through
// cuBLASLt on the whole device (kOverlap's GEMM) instead of at::mm: at most
// kBlasLtAutoRows rows, where kOverlap serves. Measured on the H200 over the
// Llama-7B projections at 1-32 rows (docs/kernels.md, round 6): within
// 0.1 us of at::mm's cuBLAS everywhere, 1.9 us faster on o (4096x4096) and
// 2.3 us on down (4096x11008) at 32 rows.
inline constexpr int64_t kBlasLtAutoRows = 32;
bool BlasLtPreferred(const at::Tensor& x, const at::Tensor& w);

// Whether the decode GEMM can run y = x · wᵀ for x [T, K] and w [N, K]:
// CUDA on an sm_90+ device, fp16/bf16, T <= 32, K a multiple of 32, w
// contiguous, 16-byte aligned rows, autograd not recording through either.
bool DecodeGemmServes(const at::Tensor& x, const at::Tensor& w);
// The same for the streaming GEMM (LinearGemm::kStream): T <= 32, N a
// multiple of 64, K a multiple of 64.
bool StreamGemmServes(const at::Tensor& x, const at::Tensor& w);

// Whether LoraLinear's kAuto takes the decode GEMM: where it serves and
// measured faster than cuBLAS followed by LoraApply on the H200
// (docs/kernels.md): with adapters in the batch (`lora`), at most
// kDecodeGemmAutoRows rows and kDecodeGemmAutoCols output columns (4096x4096
// at 8 rows: 16.6-18.6 against 19.2-21.9 us). Without adapters cuBLAS is as
// fast or faster (13.1 against 13.8 us at 8 rows); at 16-32 rows, and for
// wider weights (q/k/v fused: 35 against 28 us base), the decode GEMM's
// streaming falls behind cuBLAS's.
inline constexpr int64_t kDecodeGemmAutoRows = 8;
inline constexpr int64_t kDecodeGemmAutoCols = 4096;
bool DecodeGemmPreferred(const at::Tensor& x, const at::Tensor& w, bool lora);

// y = x · wᵀ, then, with `table` and `index` (both or neither), the LoRA
// deltas of every token with an adapter added to y's column slices: the
// table's slices in order (q | k | v), their out_features summing to w's
// rows. x: [T, K] with contiguous columns; w: [N, K] contiguous; y: [T, N]
// with contiguous columns (written, not read); one dtype.
// kAuto: kOverlap where OverlapGemmPreferred, else the decode GEMM where
// DecodeGemmPreferred, else at::mm then LoraApply (without adapters:
// cuBLASLt where BlasLtPreferred, else at::mm).
// With the decode GEMM (kDecode, or kAuto where DecodeGemmPreferred) or the
// stream GEMM (kStream; INVALID_ARGUMENT where it does not serve): one
// tensor-core GEMM that streams w once and adds the deltas in its epilogue,
// after the shrink launched just before it; base and delta are summed in fp32
// and rounded once (LoraApply adds to an already rounded base output).
// Otherwise: at::mm, then LoraApply (its first kernel a programmatic
// dependent of the GEMM: LoraApplyOptions::after_base_gemm).
// INVALID_ARGUMENT on mismatched shapes, dtypes or devices, or kDecode where
// the decode GEMM does not serve; INTERNAL on a CUDA or torch error.
absl::Status LoraLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                        const LoraWeightTable* table, const LoraBatchIndex* index,
                        const LoraLinearOptions& options = {});

}  // namespace adapterd
