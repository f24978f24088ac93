#pragma once

// The subset of a Hugging Face config.json that builds our decoders. Torch-free.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace adapterd {

enum class Architecture { kLlama, kGpt2 };

// Rotary scaling as transformers 4.57 reads it (modeling_rope_utils.py).
struct RopeScaling {
  std::string type = "default";  // default | linear | dynamic | llama3 | yarn | longrope
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3 and yarn: the rope dict's value, else max_position_embeddings.
  // longrope: the top-level config field (or, in the v5 `rope_parameters`
  // form, the dict's), else max_position_embeddings; when given, `factor` is
  // max_position_embeddings / it, as transformers computes it.
  int64_t original_max_position_embeddings = 0;
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
  // yarn and longrope: multiplies cos and sin; inferred when absent.
  std::optional<double> attention_factor;
  // longrope: one factor per rotary frequency (head_dim / 2 each).
  std::vector<double> short_factor;
  std::vector<double> long_factor;
};

struct ModelConfig {
  Architecture architecture = Architecture::kLlama;
  std::string model_type;  // As written: llama, mistral, qwen2, gpt2.
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  int64_t max_position_embeddings = 0;
  double norm_eps = 1e-5;  // rms_norm_eps or layer_norm_epsilon.
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool attention_bias = false;      // q/k/v(/o) bias; always true for qwen2's q/k/v.
  bool attention_out_bias = false;  // o_proj bias: attention_bias on llama, false on qwen2.
  bool mlp_bias = false;
  // Sliding-window attention: a query at position p sees keys at positions
  // > p - sliding_window. 0 = none. Applies to layers with sliding_layers[i].
  int64_t sliding_window = 0;
  std::vector<bool> sliding_layers;  // Size num_layers.
  // GPT-2 only.
  bool scale_attn_weights = true;
  bool scale_attn_by_inverse_layer_idx = false;
  std::string hidden_act = "silu";
  std::optional<int32_t> bos_token_id;
  std::optional<int32_t> pad_token_id;
  std::vector<int32_t> eos_token_ids;
  std::string torch_dtype;  // "float32", "float16", "bfloat16" or empty.

  // INVALID_ARGUMENT on malformed JSON or missing/inconsistent fields;
  // UNIMPLEMENTED for an unknown model_type or rope type.
  static absl::StatusOr<ModelConfig> FromJson(std::string_view json);
  static absl::StatusOr<ModelConfig> FromFile(const std::string& path);
};

}  // namespace adapterd
