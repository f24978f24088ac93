#pragma once

// Adapters loaded for serving: HF PEFT (LoRA incl. rsLoRA/DoRA/lora_bias,
// prefix tuning, P-tuning, prompt tuning) and AdapterHub (bottleneck
// adapters in the Houlsby and Pfeiffer configurations, AdapterFusion),
// parsed from their ecosystem files and checked against the base model.
// Engine-internal header (uses ATen). See ../shared/reference/peft-formats.md
// for the formats and the exact math this mirrors.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace adapterd {

class CausalLM;
struct LoraKernelWeights;  // engine/peft/batch_adapters.h

enum class AdapterMethod {
  kLora,
  kPrefixTuning,
  kPTuning,
  kPromptTuning,
  kBottleneck,
  kFusion,
};

const char* AdapterMethodName(AdapterMethod method);

// The LoRA-targetable linear layers of a decoder block, by index (the
// `module` argument of CausalLM::Linear and ApplyLoraDelta).
namespace lora_module {
inline constexpr int kQ = 0, kK = 1, kV = 2, kO = 3, kGate = 4, kUp = 5, kDown = 6;  // Llama.
inline constexpr int kCAttn = 0, kAttnCProj = 1, kCFc = 2, kMlpCProj = 3;            // GPT-2.
inline constexpr int kMaxModules = 7;
}  // namespace lora_module

// One LoRA pair on one module, in fp32 on the model's device.
struct LoraWeights {
  at::Tensor a;           // [r, in] (Linear orientation, also for GPT-2 Conv1D).
  at::Tensor b;           // [out, r].
  at::Tensor b_bias;      // [out] (lora_bias) or undefined.
  at::Tensor dora_scale;  // DoRA: m / ||W + s·BA||_row, [out]; undefined otherwise.
  double scaling = 1.0;   // alpha / r, or alpha / sqrt(r) with rsLoRA.
  int64_t rank = 0;
  double train_dropout = 0.0;  // Training only: dropout on the branch input (PEFT lora_dropout).
};

// One bottleneck adapter at one site: up(act(down(h))) * scaling.
struct BottleneckWeights {
  at::Tensor down_w, down_b, up_w, up_b;  // fp32: [m, d], [m], [d, m], [d].
  std::string activation;                 // relu, swish, gelu, gelu_new, tanh, leakyrelu.
  double scaling = 1.0;
};

// AdapterFusion's attention at one layer's output site (fp32).
struct FusionLayer {
  at::Tensor query_w, query_b, key_w, key_b, value_w;
};

// A loaded adapter. Immutable after LoadAdapter; shared (read-only) by every
// sequence that uses it, so thread-safe to read.
struct Adapter {
  std::string name;
  int version = 1;
  AdapterMethod method = AdapterMethod::kLora;
  std::string dir;
  int64_t num_bytes = 0;  // Tensor bytes held.

  // LoRA: [layer][module]; nullopt where the module has no LoRA.
  std::vector<std::vector<std::optional<LoraWeights>>> lora;
  // LoRA on CUDA: the batched kernels' copy of `lora` (WithLoraKernels), or
  // null (the ATen path).
  std::shared_ptr<const LoraKernelWeights> lora_kernels;

  // Prompt tuning / P-tuning: [P, hidden] in the model dtype, the input
  // rows at positions 0..P-1.
  at::Tensor prompt;
  // Prefix tuning: per layer [kv_heads, P, head_dim] in the model dtype,
  // unrotated keys and values that fill cache positions 0..P-1.
  std::vector<at::Tensor> prefix_keys, prefix_values;

  // Bottleneck: per layer, at the attention and the FFN output sites.
  // Input h = f (the sub-layer output) unless input_includes_residual (the
  // Pfeiffer configuration: h = x + f); the block adds x + f + A(h).
  std::vector<std::optional<BottleneckWeights>> attn_site, ffn_site;
  bool input_includes_residual = false;

  // AdapterFusion over `children` (Pfeiffer-configured bottleneck adapters)
  // at the FFN output site.
  std::vector<std::shared_ptr<const Adapter>> children;
  std::vector<std::optional<FusionLayer>> fusion;

  // Leading cache positions the adapter occupies (prompt rows or prefix).
  int64_t virtual_tokens() const;
  bool has_lora() const { return !lora.empty(); }
};

struct AdapterLoadOptions {
  int64_t max_bytes = int64_t{1} << 30;  // Largest weights file accepted.
  int64_t max_virtual_tokens = 512;      // Prompt / prefix length limit.
};

// Loads the adapter in `dir` for `model`: detects the format (HF PEFT
// adapter_config.json with peft_type; AdapterHub adapter_config.json or
// adapter_fusion_config.json), reads only safetensors weights, refuses
// options it cannot honour with a message naming the option, and checks
// architecture, shapes, dtypes, finite values and size limits.
// Errors: NOT_FOUND (no directory, config or weights file), INVALID_ARGUMENT
// (bad or unsupported files and options), FAILED_PRECONDITION (the adapter
// does not fit the base model). May be called from any thread while the
// model is not being modified (merge).
absl::StatusOr<std::shared_ptr<const Adapter>> LoadAdapter(const std::string& name,
                                                           const std::string& dir, CausalLM& model,
                                                           const AdapterLoadOptions& options = {});

// The module names (relative to a block) of a decoder's LoRA-targetable
// linear layers, by lora_module index: "self_attn.q_proj", ... / "attn.c_attn", ...
const std::vector<std::string>& LinearModuleNames(const CausalLM& model);

}  // namespace adapterd
