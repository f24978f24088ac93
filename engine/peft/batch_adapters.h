#pragma once

// Per-row application of adapters in one mixed batch: the decoders compute
// the base model once for all tokens and call these hooks, which add each
// adapter's contribution on its own rows (tokens grouped by adapter; no
// padding, heterogeneous ranks). Engine-internal header (uses ATen).
// Not thread-safe; built and used on the engine thread for one step.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "engine/peft/adapter.h"

namespace adapterd {

struct ForwardBatch;
struct AttentionStep;
class KvCache;

enum class AdapterSite { kAttention, kFfn };

// The adapters of one Forward step, grouped by adapter.
class BatchAdapters {
 public:
  struct Group {
    const Adapter* adapter;
    at::Tensor rows;  // [n] int64 on the device: the group's token rows, ascending.
    std::vector<int64_t> host_rows;
  };

  // Groups `batch.adapters` over the step's token rows. Throws c10::Error if
  // the adapter or virtual-token lists do not match the batch.
  static BatchAdapters Build(const ForwardBatch& batch, const AttentionStep& step,
                             at::Device device);

  bool empty() const { return groups_.empty() && !has_virtual_; }
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
};

// y += the LoRA deltas of layer `layer`'s `module` for every adapter of the
// batch, on its rows: y_rows = round(y_rows.float() + s·(x_rows.float() Aᵀ) Bᵀ
// (+ s·b_B)), and DoRA as PEFT does: (f−1)·(y − bias) + f·s·B A x.
// x: [T, in] (the module's input), y: [T, out] (its base output incl. bias),
// base_bias: the module's bias or undefined. The one place LoRA is applied;
// the batched kernels of engine/kernels may replace its body.
void ApplyLoraDelta(const at::Tensor& x, at::Tensor& y, const BatchAdapters& adapters, int layer,
                    int module, const at::Tensor& base_bias);

// at::linear(x, weight, bias) followed by ApplyLoraDelta.
at::Tensor LinearWithLora(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const BatchAdapters& adapters, int layer, int module);

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
