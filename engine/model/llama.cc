// The Llama family (Llama 2/3, Mistral, Qwen2): RMSNorm, RoPE (half-split
// layout), GQA, gated MLP. Mirrors transformers' modeling_llama.py.

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/causal_lm.h"
#include "engine/model/weights.h"
#include "engine/peft/batch_adapters.h"
#include "engine/runtime/kv_cache.h"

namespace adapterd {
namespace {

struct LlamaLayer {
  at::Tensor input_norm, post_norm;
  at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
  at::Tensor gate_w, gate_b, up_w, up_b, down_w, down_b;
};

at::Tensor Activation(const at::Tensor& x, const std::string& name) {
  if (name == "silu") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "relu") return at::relu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh.
}

at::Tensor RopeExponents(int64_t dim) {
  return at::arange(0, dim, 2, at::kLong).to(at::kFloat) / static_cast<double>(dim);
}

// transformers' _compute_dynamic_ntk_parameters for seq_len > max_position_embeddings,
// where transformers gets seq_len as a tensor and so computes the base in float32.
at::Tensor DynamicInverseFrequencies(const ModelConfig& c, int64_t seq_len) {
  const int64_t dim = c.head_dim;
  const double factor = c.rope_scaling.factor;
  at::Tensor len = at::maximum(at::scalar_tensor(seq_len, at::kLong),
                               at::scalar_tensor(c.max_position_embeddings, at::kLong));
  at::Tensor base = at::pow(len * factor / c.max_position_embeddings - (factor - 1),
                            static_cast<double>(dim) / static_cast<double>(dim - 2)) *
                    c.rope_theta;
  return at::reciprocal(at::pow(base, RopeExponents(dim)));
}

// The frequencies a rope type uses at load. "dynamic" swaps in
// DynamicInverseFrequencies and "longrope" long_inv_freq per sequence length.
struct RopeTables {
  at::Tensor inv_freq;       // [D/2] float32; dynamic and longrope: at short lengths.
  at::Tensor long_inv_freq;  // longrope: beyond original_max_position_embeddings.
  double attention_scaling = 1.0;
};

// transformers' _compute_*_rope_parameters at init (seq_len None), in float32
// like the reference.
absl::StatusOr<RopeTables> ComputeRope(const ModelConfig& c) {
  const int64_t dim = c.head_dim;
  at::Tensor exponents = RopeExponents(dim);
  RopeTables t;
  t.inv_freq = at::reciprocal(at::pow(c.rope_theta, exponents));
  const RopeScaling& r = c.rope_scaling;
  if (r.type == "default") return t;
  if (r.type == "linear") {
    t.inv_freq = t.inv_freq / r.factor;
    return t;
  }
  if (r.type == "dynamic") {
    // seq_len None: python floats, so the base is computed in double.
    const double max_pos = static_cast<double>(c.max_position_embeddings);
    const double base =
        c.rope_theta * std::pow(r.factor * max_pos / max_pos - (r.factor - 1),
                                static_cast<double>(dim) / static_cast<double>(dim - 2));
    t.inv_freq = at::reciprocal(at::pow(base, exponents));
    return t;
  }
  if (r.type == "llama3") {
    const at::Tensor& inv_freq = t.inv_freq;
    const double old_len = static_cast<double>(r.original_max_position_embeddings);
    const double low_wavelen = old_len / r.low_freq_factor;
    const double high_wavelen = old_len / r.high_freq_factor;
    at::Tensor wavelen = at::reciprocal(inv_freq) * (2 * M_PI);
    at::Tensor scaled = at::where(wavelen > low_wavelen, inv_freq / r.factor, inv_freq);
    at::Tensor smooth = (at::reciprocal(wavelen) * old_len - r.low_freq_factor) /
                        (r.high_freq_factor - r.low_freq_factor);
    at::Tensor smoothed = (1 - smooth) * scaled / r.factor + smooth * scaled;
    at::Tensor medium =
        at::logical_not(wavelen < high_wavelen) * at::logical_not(wavelen > low_wavelen);
    t.inv_freq = at::where(medium, smoothed, scaled);
    return t;
  }
  if (r.type == "yarn") {
    auto get_mscale = [](double scale, double mscale) {
      return scale <= 1 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
    };
    if (r.attention_factor.has_value()) {
      t.attention_scaling = *r.attention_factor;
    } else if (r.mscale.value_or(0) != 0 && r.mscale_all_dim.value_or(0) != 0) {
      t.attention_scaling =
          get_mscale(r.factor, *r.mscale) / get_mscale(r.factor, *r.mscale_all_dim);
    } else {
      t.attention_scaling = get_mscale(r.factor, 1.0);
    }
    const double d = static_cast<double>(dim);
    const double orig = static_cast<double>(r.original_max_position_embeddings);
    auto correction_dim = [&](double rotations) {
      return (d * std::log(orig / (rotations * 2 * M_PI))) / (2 * std::log(c.rope_theta));
    };
    double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
    if (r.truncate) {
      low = std::floor(low);
      high = std::ceil(high);
    }
    low = std::max(low, 0.0);
    high = std::min(high, d - 1);
    if (low == high) high += 0.001;
    at::Tensor ramp = at::clamp((at::arange(dim / 2, at::kFloat) - low) / (high - low), 0, 1);
    at::Tensor extrapolation_factor = 1 - ramp;
    at::Tensor pos_freqs = at::pow(c.rope_theta, exponents);
    at::Tensor extrapolation = at::reciprocal(pos_freqs);
    at::Tensor interpolation = at::reciprocal(pos_freqs * r.factor);
    t.inv_freq = interpolation * (1 - extrapolation_factor) + extrapolation * extrapolation_factor;
    return t;
  }
  if (r.type == "longrope") {
    if (r.attention_factor.has_value()) {
      t.attention_scaling = *r.attention_factor;
    } else if (r.factor > 1.0) {
      t.attention_scaling =
          std::sqrt(1 + std::log(r.factor) /
                            std::log(static_cast<double>(r.original_max_position_embeddings)));
    }
    at::Tensor pos_freqs = at::pow(c.rope_theta, exponents);
    t.inv_freq = at::reciprocal(at::tensor(r.short_factor, at::kDouble).to(at::kFloat) * pos_freqs);
    t.long_inv_freq =
        at::reciprocal(at::tensor(r.long_factor, at::kDouble).to(at::kFloat) * pos_freqs);
    return t;
  }
  return absl::UnimplementedError(absl::StrCat("rope type '", r.type, "' is not implemented"));
}

at::Tensor RotateHalf(const at::Tensor& x) {
  const int64_t half = x.size(-1) / 2;
  return at::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

class LlamaModel final : public CausalLM {
 public:
  LlamaModel(const ModelContext& context) : context_(context) {}

  absl::Status LoadWeights(const ModelWeights& weights) {
    const ModelConfig& c = context_.config;
    TensorLoader get(weights, context_.dtype, context_.device);
    const int64_t h = c.hidden_size, q_out = c.num_heads * c.head_dim,
                  kv_out = c.num_kv_heads * c.head_dim, inter = c.intermediate_size;
    embed_ = get("embed_tokens.weight", {c.vocab_size, h});
    norm_ = get("norm.weight", {h});
    if (c.tie_word_embeddings) {
      lm_head_ = embed_;  // As transformers ties them, even if lm_head.weight is stored.
    } else {
      lm_head_ = get("lm_head.weight", {c.vocab_size, h});
    }
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat("layers.", i, ".");
      LlamaLayer l;
      l.input_norm = get(p + "input_layernorm.weight", {h});
      l.post_norm = get(p + "post_attention_layernorm.weight", {h});
      l.q_w = get(p + "self_attn.q_proj.weight", {q_out, h});
      l.k_w = get(p + "self_attn.k_proj.weight", {kv_out, h});
      l.v_w = get(p + "self_attn.v_proj.weight", {kv_out, h});
      l.o_w = get(p + "self_attn.o_proj.weight", {h, q_out});
      if (c.attention_bias) {
        l.q_b = get(p + "self_attn.q_proj.bias", {q_out});
        l.k_b = get(p + "self_attn.k_proj.bias", {kv_out});
        l.v_b = get(p + "self_attn.v_proj.bias", {kv_out});
      }
      if (c.attention_out_bias) l.o_b = get(p + "self_attn.o_proj.bias", {h});
      l.gate_w = get(p + "mlp.gate_proj.weight", {inter, h});
      l.up_w = get(p + "mlp.up_proj.weight", {inter, h});
      l.down_w = get(p + "mlp.down_proj.weight", {h, inter});
      if (c.mlp_bias) {
        l.gate_b = get(p + "mlp.gate_proj.bias", {inter});
        l.up_b = get(p + "mlp.up_proj.bias", {inter});
        l.down_b = get(p + "mlp.down_proj.bias", {h});
      }
      layers_.push_back(std::move(l));
    }
    if (!get.status().ok()) return get.status();
    absl::StatusOr<RopeTables> rope = ComputeRope(c);
    if (!rope.ok()) return rope.status();
    inv_freq_ = rope->inv_freq.to(context_.device);
    if (rope->long_inv_freq.defined()) long_inv_freq_ = rope->long_inv_freq.to(context_.device);
    attention_scaling_ = rope->attention_scaling;
    return absl::OkStatus();
  }

  const ModelConfig& config() const override { return context_.config; }
  at::ScalarType dtype() const override { return context_.dtype; }
  at::Device device() const override { return context_.device; }
  const std::string& fingerprint() const override { return context_.fingerprint; }
  const at::Tensor& input_embeddings() const override { return embed_; }

  LinearRef Linear(int layer, int module) override {
    if (layer < 0 || layer >= static_cast<int>(layers_.size())) return {};
    LlamaLayer& l = layers_[layer];
    switch (module) {
      case lora_module::kQ: return {&l.q_w, &l.q_b, false};
      case lora_module::kK: return {&l.k_w, &l.k_b, false};
      case lora_module::kV: return {&l.v_w, &l.v_b, false};
      case lora_module::kO: return {&l.o_w, &l.o_b, false};
      case lora_module::kGate: return {&l.gate_w, &l.gate_b, false};
      case lora_module::kUp: return {&l.up_w, &l.up_b, false};
      case lora_module::kDown: return {&l.down_w, &l.down_b, false};
      default: return {};
    }
  }

  std::unique_ptr<KvCache> NewCache(int num_slots, int64_t max_len) const override {
    const ModelConfig& c = context_.config;
    return std::make_unique<KvCache>(static_cast<int>(c.num_layers), num_slots, max_len,
                                     c.num_kv_heads, c.head_dim, context_.dtype, context_.device);
  }

  at::Tensor Forward(const ForwardBatch& batch, KvCache& cache) override {
    const ModelConfig& c = context_.config;
    TORCH_CHECK(cache.num_layers() == c.num_layers && cache.kv_heads() == c.num_kv_heads &&
                    cache.head_dim() == c.head_dim,
                "KV cache does not belong to this model");
    const AttentionStep step = AttentionStep::Build(
        batch, cache.num_slots(), cache.max_len(), c.vocab_size, c.sliding_window, context_.device);
    const int64_t t = step.num_tokens;

    at::Tensor freqs =
        step.token_positions.to(at::kFloat).unsqueeze(1) * TokenInverseFrequencies(step);
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    at::Tensor cos = (emb.cos() * attention_scaling_).to(context_.dtype).unsqueeze(1);  // [T, 1, D]
    at::Tensor sin = (emb.sin() * attention_scaling_).to(context_.dtype).unsqueeze(1);
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));

    const BatchAdapters adapters = BatchAdapters::Build(batch, step, context_.device);
    at::Tensor x = embed_.index_select(0, step.token_ids);  // [T, H]
    adapters.ApplyPromptRows(x);
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const LlamaLayer& l = layers_[i];
      const int li = static_cast<int>(i);
      at::Tensor h = RmsNorm(x, l.input_norm);
      at::Tensor q = LinearWithLora(h, l.q_w, l.q_b, adapters, li, lora_module::kQ)
                         .view({t, c.num_heads, c.head_dim});
      at::Tensor k = LinearWithLora(h, l.k_w, l.k_b, adapters, li, lora_module::kK)
                         .view({t, c.num_kv_heads, c.head_dim});
      at::Tensor v = LinearWithLora(h, l.v_w, l.v_b, adapters, li, lora_module::kV)
                         .view({t, c.num_kv_heads, c.head_dim});
      q = q * cos + RotateHalf(q) * sin;
      k = k * cos + RotateHalf(k) * sin;
      cache.Write(li, step, k, v);
      at::Tensor attn = cache.Attend(li, step, q, scale, c.sliding_layers[i]);
      x = AddSubLayerOutput(adapters, li, AdapterSite::kAttention, x,
                            LinearWithLora(attn, l.o_w, l.o_b, adapters, li, lora_module::kO));
      h = RmsNorm(x, l.post_norm);
      at::Tensor mlp =
          Activation(LinearWithLora(h, l.gate_w, l.gate_b, adapters, li, lora_module::kGate),
                     c.hidden_act) *
          LinearWithLora(h, l.up_w, l.up_b, adapters, li, lora_module::kUp);
      x = AddSubLayerOutput(adapters, li, AdapterSite::kFfn, x,
                            LinearWithLora(mlp, l.down_w, l.down_b, adapters, li,
                                           lora_module::kDown));
    }
    if (!batch.all_logits) {
      x = x.index_select(0, step.last_rows);
    } else if (adapters.output_rows().defined()) {
      x = x.index_select(0, adapters.output_rows());
    }
    x = RmsNorm(x, norm_);
    return at::linear(x, lm_head_).to(at::kFloat);
  }

 private:
  // [T, D/2], or [D/2] where every token uses the same frequencies.
  //
  // transformers' dynamic_rope_update picks "dynamic" and "longrope"
  // frequencies for a whole forward call from seq_len = max(position_ids) + 1,
  // and for "dynamic" also from the calls before (it only grows the length it
  // scales for, until a call is back within max_position_embeddings). With a
  // KV cache that history is not the engine's to reproduce, so each sequence
  // uses its own length after this step, past_len + new tokens: the same as
  // transformers for a full-sequence forward and for its generate() (whose
  // lengths only grow), with the rotary state fresh per sequence. Keys already
  // cached keep the frequencies they were written with, as in transformers
  // with a cache; so a prompt fed in chunks that cross the threshold differs
  // from one full forward of it, in transformers as here.
  at::Tensor TokenInverseFrequencies(const AttentionStep& step) {
    const ModelConfig& c = context_.config;
    const std::string& type = c.rope_scaling.type;
    if (type != "dynamic" && type != "longrope") return inv_freq_;
    std::vector<at::Tensor> rows;
    bool all_base = true;
    for (size_t b = 0; b < step.lens.size(); ++b) {
      const int64_t seq_len = step.past_lens[b] + step.lens[b];
      at::Tensor row = inv_freq_;
      if (type == "longrope" && seq_len > c.rope_scaling.original_max_position_embeddings) {
        row = long_inv_freq_;
      } else if (type == "dynamic" && seq_len > c.max_position_embeddings) {
        // Training jobs run Forward on their own threads beside the engine's.
        std::lock_guard<std::mutex> lock(dynamic_inv_freq_mu_);
        auto it = dynamic_inv_freq_.find(seq_len);
        if (it == dynamic_inv_freq_.end()) {
          it = dynamic_inv_freq_
                   .emplace(seq_len, DynamicInverseFrequencies(c, seq_len).to(context_.device))
                   .first;
        }
        row = it->second;
      }
      all_base = all_base && row.is_same(inv_freq_);
      rows.push_back(row.unsqueeze(0).expand({step.lens[b], row.size(0)}));
    }
    if (all_base) return inv_freq_;
    return at::cat(rows, 0);
  }

  at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight) const {
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
    return weight * (xf * at::rsqrt(variance + context_.config.norm_eps)).to(x.scalar_type());
  }

  ModelContext context_;
  at::Tensor embed_, norm_, lm_head_, inv_freq_, long_inv_freq_;
  double attention_scaling_ = 1.0;
  std::mutex dynamic_inv_freq_mu_;  // Guards dynamic_inv_freq_ (Forward runs on several threads).
  std::map<int64_t, at::Tensor> dynamic_inv_freq_;  // "dynamic": by sequence length.
  std::vector<LlamaLayer> layers_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CausalLM>> BuildLlama(const ModelContext& context,
                                                     const ModelWeights& weights) {
  auto model = std::make_unique<LlamaModel>(context);
  absl::Status status = model->LoadWeights(weights);
  if (!status.ok()) return status;
  return std::unique_ptr<CausalLM>(std::move(model));
}

}  // namespace adapterd
