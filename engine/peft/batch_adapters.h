#pragma once

// Per-row application of adapters in one mixed batch: the decoders compute
// the base model once for all tokens and call these hooks, which add each
// adapter's contribution on its own rows (tokens grouped by adapter; no
// padding, heterogeneous ranks). On CUDA, LoRA runs through the batched
// kernels of engine/kernels when autograd is not recording; the ATen path
// serves the CPU, autograd, DoRA and adapters without kernel weights.
// Engine-internal header (uses ATen). Not thread-safe; built and used on the
// engine thread for one step.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "engine/kernels/lora_kernels.h"
#include "engine/peft/adapter.h"

namespace adapterd {

struct ForwardBatch;
struct AttentionStep;
class KvCache;

enum class AdapterSite { kAttention, kFfn };

// One LoRA adapter's weights as the batched CUDA kernels read them, built once
// when the adapter becomes device-resident (WithLoraKernels) and held by the
// Adapter, so by every lease on it: copies of A and B (and lora_bias) in the
// model's dtype (the fp32 tensors themselves on an fp32 model) and their
// kernel records.
struct LoraKernelWeights {
  at::ScalarType dtype = at::kFloat;
  int64_t num_layers = 0;
  // int64 [num_layers, lora_module::kMaxModules, kMetaFields] on the device:
  // one kernel record per (layer, module), A pointer 0 where there is no LoRA.
  at::Tensor meta;
  std::vector<int64_t> rank;     // [num_layers * kMaxModules]; 0 where there is no LoRA.
  std::vector<at::Tensor> held;  // What the records point to.
};

// `adapter` with kernel weights for a model of `dtype`, when it is a LoRA
// adapter on a CUDA device without DoRA (DoRA, other methods and CPU adapters
// come back unchanged: the ATen path applies them). The copies add to
// num_bytes. Throws c10::Error on a failed copy.
std::shared_ptr<const Adapter> WithLoraKernels(std::shared_ptr<const Adapter> adapter,
                                               at::ScalarType dtype);

// The adapters of one Forward step, grouped by adapter.
class BatchAdapters {
 public:
  struct Group {
    const Adapter* adapter;
    at::Tensor rows;  // [n] int64 on the device: the group's token rows, ascending.
    std::vector<int64_t> host_rows;
    int kernel_slot = -1;  // The group's slot in the kernels' tables; -1: ATen path.
  };

  // Groups `batch.adapters` over the step's token rows. On CUDA, LoRA groups
  // with kernel weights (WithLoraKernels) also get a slot in one per-step
  // kernel index and weight table, shared by every layer, unless autograd is
  // on and their LoRA weights require grad (training: the ATen path). Throws c10::Error if
  // the adapter or virtual-token lists do not match the batch.
  static BatchAdapters Build(const ForwardBatch& batch, const AttentionStep& step,
                             at::Device device);

  // True when this step's kernel-slot groups go through the batched kernels
  // for input `x` (autograd not recording through x); ApplyLoraDeltas then
  // leaves them to the kernels.
  bool UsesKernels(const at::Tensor& x) const;
  int num_kernel_slots() const { return kernel_slots_; }

  // The kernels' half of ApplyLoraDeltas: ys[i] += the LoRA delta of module
  // first_module + i for every kernel-slot group, in one launch pair.
  // `after_base_gemm`: the last kernel queued wrote ys (the base GEMM, or a
  // bias add after it), not x (LoraApplyOptions::after_base_gemm).
  // REQUIRES: UsesKernels(x). Throws c10::Error on a kernel error.
  void ApplyKernels(const at::Tensor& x, std::span<const at::Tensor> ys, int layer,
                    int first_module, bool after_base_gemm = false) const;

  // y = x · weightᵀ through LoraLinear (`gemm`), with the LoRA deltas of
  // modules first_module, first_module + 1, ... (y's consecutive column
  // slices of out_features[i] columns) for every kernel-slot group when
  // UsesKernels(x). Throws c10::Error on a kernel error.
  at::Tensor DecodeLinear(const at::Tensor& x, const at::Tensor& weight,
                          std::span<const int64_t> out_features, int layer, int first_module,
                          LinearGemm gemm = LinearGemm::kAuto) const;

  // A step whose adapted rows all take the kernels, their index and table in
  // caller-owned device buffers (CUDA-graph decode steps): `meta` int64
  // [layers, kMaxModules, num_slots, kMetaFields]; max_rank[layer *
  // kMaxModules + module] bounds the ranks there (0: no launch).
  static BatchAdapters ForKernels(LoraBatchIndex index, at::Tensor meta, int num_slots,
                                  std::vector<int64_t> max_rank, at::ScalarType dtype);

  bool empty() const { return groups_.empty() && !has_virtual_ && kernel_slots_ == 0; }
  const std::vector<Group>& groups() const { return groups_; }

  // Replaces the embedding rows of virtual tokens with their adapter's prompt
  // rows (x: [T, hidden], the model's dtype).
  void ApplyPromptRows(at::Tensor& x) const;

  // Rows of the step's tokens whose logits are returned with all_logits
  // (every non-virtual row); undefined when every row is returned.
  const at::Tensor& output_rows() const { return output_rows_; }

 private:
  std::vector<Group> groups_;
  bool has_virtual_ = false;
  at::Tensor virtual_rows_;    // [V] rows of x to replace.
  at::Tensor virtual_values_;  // [V, hidden] their prompt rows.
  at::Tensor output_rows_;

  // Batched kernels (CUDA only; kernel_slots_ == 0 otherwise).
  int kernel_slots_ = 0;
  at::ScalarType kernel_dtype_ = at::kFloat;
  LoraBatchIndex kernel_index_;
  at::Tensor kernel_meta_;  // int64 [layers, kMaxModules, kernel_slots_, kMetaFields].
  std::vector<int64_t> kernel_max_rank_;  // [layers * kMaxModules] over the slots.

  // The kernels' table for `out_features.size()` modules from first_module
  // of `layer` (views into kernel_meta_); max_rank 0 when no kernel-slot
  // adapter has LoRA there.
  LoraWeightTable KernelTable(int layer, int first_module, std::span<const int64_t> out_features,
                              int64_t in_features) const;
};

// y += the LoRA deltas of layer `layer`'s `module` for every adapter of the
// batch, on its rows: y_rows = round(y_rows.float() + s·(x_rows.float() Aᵀ) Bᵀ
// (+ s·b_B)), and DoRA as PEFT does: (f−1)·(y − bias) + f·s·B A x.
// x: [T, in] (the module's input), y: [T, out] (its base output incl. bias),
// base_bias: the module's bias or undefined. The one place LoRA is applied;
// the batched kernels of engine/kernels may replace its body.
// `after_base_gemm`: the last kernel queued wrote y, not x (the base GEMM or
// a bias add after it): BatchAdapters::ApplyKernels.
void ApplyLoraDelta(const at::Tensor& x, at::Tensor& y, const BatchAdapters& adapters, int layer,
                    int module, const at::Tensor& base_bias, bool after_base_gemm = false);

// ApplyLoraDelta for modules first_module, first_module + 1, ... that share
// the input x (q/k/v, gate/up), ys[i] the base output of module
// first_module + i (views into one fused output are fine) and base_biases[i]
// its bias (or undefined): one kernel launch pair for all of them on CUDA.
void ApplyLoraDeltas(const at::Tensor& x, std::span<const at::Tensor> ys,
                     const BatchAdapters& adapters, int layer, int first_module,
                     std::span<const at::Tensor> base_biases);

// at::linear(x, weight, bias) followed by ApplyLoraDelta. With no bias and
// kernel-slot groups, a decode step runs through LoraLinear instead, then the
// other groups as ApplyLoraDelta applies them: with `decode_gemm` where
// DecodeGemmPreferred, the decode GEMM with those groups' LoRA in its
// epilogue (base and delta rounded once); else where OverlapGemmPreferred,
// cuBLASLt with the LoRA beside it (LinearGemm::kOverlap).
at::Tensor LinearWithLora(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const BatchAdapters& adapters, int layer, int module,
                          bool decode_gemm = false);

// The same for modules first_module, first_module + 1, ... fused in one
// weight (q/k/v, gate/up): returns x · weightᵀ [T, sum of out_features], each
// module's slice plus its bias (or undefined) plus its LoRA deltas, as
// at::linear, adding the biases and ApplyLoraDeltas compute it.
at::Tensor LinearWithLoraDeltas(const at::Tensor& x, const at::Tensor& weight,
                                std::span<const int64_t> out_features,
                                std::span<const at::Tensor> biases, const BatchAdapters& adapters,
                                int layer, int first_module, bool decode_gemm = false);

// The residual add after a sub-layer: x + f, plus per row the bottleneck
// adapter or AdapterFusion at `site` (x: residual input, f: sub-layer output).
at::Tensor AddSubLayerOutput(const BatchAdapters& adapters, int layer, AdapterSite site,
                             const at::Tensor& x, const at::Tensor& f);

// Writes a prefix-tuning adapter's keys and values into cache positions
// 0..P-1 of `slot`. REQUIRES: adapter.method == kPrefixTuning, P <= max_len.
void PrefillPrefix(KvCache& cache, int slot, const Adapter& adapter);

// Merges `adapter`'s LoRA deltas into the model's weights for a dedicated
// single-adapter deployment; Unmerge restores the kept originals exactly.
class LoraMerge {
 public:
  // FAILED_PRECONDITION unless the adapter is a LoRA adapter (DoRA included).
  static absl::StatusOr<LoraMerge> Merge(CausalLM& model, const Adapter& adapter);
  void Unmerge();

 private:
  struct Kept {
    at::Tensor* weight;
    at::Tensor original_weight;
    at::Tensor* bias;
    at::Tensor original_bias;
  };
  std::vector<Kept> kept_;
};

}  // namespace adapterd
