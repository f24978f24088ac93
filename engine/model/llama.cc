// The Llama family (Llama 2/3, Mistral, Qwen2): RMSNorm, RoPE (half-split
// layout), GQA, gated MLP. Mirrors transformers' modeling_llama.py.

#include <ATen/ATen.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
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

#ifdef ADAPTERD_WITH_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/core/GradMode.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "engine/kernels/lora_launch.h"
#endif

namespace adapterd {
namespace {

struct LlamaLayer {
  at::Tensor input_norm, post_norm;
  at::Tensor q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b;
  at::Tensor gate_w, gate_b, up_w, up_b, down_w, down_b;
  // On CUDA: q/k/v and gate/up stored as one matrix each (one GEMM instead of
  // three and two); q_w, k_w, v_w, gate_w and up_w are views into them.
  at::Tensor qkv_w, gate_up_w;
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

#ifdef ADAPTERD_WITH_CUDA
// A decode step captured as a CUDA graph over one KvCache: every cache slot is
// a row; its inputs, LoRA index and table live in fixed device buffers that
// each replay reads.
struct DecodeGraph {
  at::cuda::CUDAGraph graph;
  at::Tensor lora_index;  // int32 [S + 2 * segments + 1]: sorted rows, segment starts, slots.
  at::Tensor logits;      // float32 [S, V], written by each replay.
};

// What fixes a decode graph's kernels and launch grids.
struct DecodeGraphKey {
  int64_t kv_len = 0;          // Keys attended: the step's longest, rounded up.
  int modules = 0;             // Bit m: some row has LoRA on module m (its kernels launch).
  int64_t rank = 0;            // Rank bound (power of two).
  int64_t segments = 0;        // Distinct adapters bound (power of two; 0: none).
  int64_t segment_tokens = 0;  // Rows per adapter bound (power of two).
  auto operator<=>(const DecodeGraphKey&) const = default;
};

int64_t NextPow2(int64_t v) {
  int64_t p = 1;
  while (p < v) p *= 2;
  return p;
}

constexpr int64_t kGraphKvBlock = 128;  // Keys attended grow in blocks (one graph per block).
#endif

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
    if (context_.device.is_cuda()) {
      for (LlamaLayer& l : layers_) {
        l.qkv_w = at::cat({l.q_w, l.k_w, l.v_w}, 0);
        l.q_w = l.qkv_w.narrow(0, 0, q_out);
        l.k_w = l.qkv_w.narrow(0, q_out, kv_out);
        l.v_w = l.qkv_w.narrow(0, q_out + kv_out, kv_out);
        l.gate_up_w = at::cat({l.gate_w, l.up_w}, 0);
        l.gate_w = l.gate_up_w.narrow(0, 0, inter);
        l.up_w = l.gate_up_w.narrow(0, inter, inter);
      }
    }
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
#ifdef ADAPTERD_WITH_CUDA
    if (at::Tensor logits; TryDecodeGraph(batch, cache, logits)) return logits;
#endif
    const AttentionStep step = AttentionStep::Build(
        batch, cache.num_slots(), cache.max_len(), c.vocab_size, c.sliding_window, context_.device);
    const BatchAdapters adapters = BatchAdapters::Build(batch, step, context_.device);
    at::Tensor x = embed_.index_select(0, step.token_ids);  // [T, H]
    adapters.ApplyPromptRows(x);
    x = Layers(x, step, adapters, cache);
    if (!batch.all_logits) {
      x = x.index_select(0, step.last_rows);
    } else if (adapters.output_rows().defined()) {
      x = x.index_select(0, adapters.output_rows());
    }
    return Logits(x);
  }

  int64_t decode_graph_replays() const override { return graph_replays_; }
  void set_cuda_graphs(bool on) override { context_.cuda_graphs = on; }
  void set_decode_gemm(bool on) override {
    std::lock_guard<std::mutex> lock(graph_mu_);
    if (context_.decode_gemm != on) graphs_.clear();  // Captured with the other GEMM.
    context_.decode_gemm = on;
  }

 private:
  // The decoder blocks over the step's rows x [T, H].
  at::Tensor Layers(at::Tensor x, const AttentionStep& step, const BatchAdapters& adapters,
                    KvCache& cache) {
    const ModelConfig& c = context_.config;
    const int64_t t = step.num_tokens;
    at::Tensor freqs =
        step.token_positions.to(at::kFloat).unsqueeze(1) * TokenInverseFrequencies(step);
    at::Tensor emb = at::cat({freqs, freqs}, -1);
    at::Tensor cos = (emb.cos() * attention_scaling_).to(context_.dtype).unsqueeze(1);  // [T, 1, D]
    at::Tensor sin = (emb.sin() * attention_scaling_).to(context_.dtype).unsqueeze(1);
    // CUDA: rotate_half(x)·sin as flip(x halves)·(−sin | sin), the sign folded
    // into the table once per step (three kernels per layer instead of five).
    at::Tensor signed_sin, cos_rows, sin_rows;
    if (context_.device.is_cuda()) {
      const int64_t half = c.head_dim / 2;
      signed_sin = at::cat({-sin.narrow(-1, 0, half), sin.narrow(-1, half, half)}, -1);
      cos_rows = cos.squeeze(1);  // [T, D], for the decode attention kernel.
      sin_rows = sin.squeeze(1);
    }
    const double scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
    const int64_t q_out = c.num_heads * c.head_dim, kv_out = c.num_kv_heads * c.head_dim;
    const bool gemm = context_.decode_gemm;
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const LlamaLayer& l = layers_[i];
      const int li = static_cast<int>(i);
      at::Tensor h = RmsNorm(x, l.input_norm);
      at::Tensor q, k, v, attn;
      if (l.qkv_w.defined()) {
        const std::array<int64_t, 3> outs = {q_out, kv_out, kv_out};
        const std::array<at::Tensor, 3> biases = {l.q_b, l.k_b, l.v_b};
        at::Tensor qkv = LinearWithLoraDeltas(h, l.qkv_w, outs, biases, adapters, li,
                                              lora_module::kQ, gemm);  // [T, q_out + 2 kv_out]
        at::Tensor qk =
            qkv.narrow(1, 0, q_out + kv_out).view({t, c.num_heads + c.num_kv_heads, c.head_dim});
        v = qkv.narrow(1, q_out + kv_out, kv_out).view({t, c.num_kv_heads, c.head_dim});
        // CUDA decode steps: the decode attention kernel rotates q and k itself.
        attn = cache.TryRotateWriteAndAttend(li, step, qk.narrow(1, c.num_heads, c.num_kv_heads), v,
                                             qk.narrow(1, 0, c.num_heads), cos_rows, sin_rows,
                                             scale, c.sliding_layers[i]);
        if (!attn.defined()) {
          // q and k are adjacent in qkv: rotate both heads in one pass.
          const int64_t half = c.head_dim / 2;
          at::Tensor flipped =
              qk.view({t, c.num_heads + c.num_kv_heads, 2, half}).flip(2).view(qk.sizes());
          qk = at::addcmul(qk * cos, flipped, signed_sin);
          q = qk.narrow(1, 0, c.num_heads);
          k = qk.narrow(1, c.num_heads, c.num_kv_heads);
        }
      } else {
        q = LinearWithLora(h, l.q_w, l.q_b, adapters, li, lora_module::kQ)
                .view({t, c.num_heads, c.head_dim});
        k = LinearWithLora(h, l.k_w, l.k_b, adapters, li, lora_module::kK)
                .view({t, c.num_kv_heads, c.head_dim});
        v = LinearWithLora(h, l.v_w, l.v_b, adapters, li, lora_module::kV)
                .view({t, c.num_kv_heads, c.head_dim});
        q = q * cos + RotateHalf(q) * sin;
        k = k * cos + RotateHalf(k) * sin;
      }
      if (!attn.defined())
        attn = cache.WriteAndAttend(li, step, k, v, q, scale, c.sliding_layers[i]);
      x = AddSubLayerOutput(adapters, li, AdapterSite::kAttention, x,
                            LinearWithLora(attn, l.o_w, l.o_b, adapters, li, lora_module::kO,
                                           gemm));
      h = RmsNorm(x, l.post_norm);
      at::Tensor mlp;
      if (l.gate_up_w.defined()) {
        const int64_t inter = c.intermediate_size;
        const std::array<int64_t, 2> outs = {inter, inter};
        const std::array<at::Tensor, 2> biases = {l.gate_b, l.up_b};
        const at::Tensor gate_up = LinearWithLoraDeltas(h, l.gate_up_w, outs, biases, adapters, li,
                                                        lora_module::kGate, gemm);  // [T, 2 inter]
        mlp = Activation(gate_up.narrow(1, 0, inter), c.hidden_act)
                  .mul_(gate_up.narrow(1, inter, inter));
      } else {
        mlp = Activation(LinearWithLora(h, l.gate_w, l.gate_b, adapters, li, lora_module::kGate),
                         c.hidden_act) *
              LinearWithLora(h, l.up_w, l.up_b, adapters, li, lora_module::kUp);
      }
      x = AddSubLayerOutput(adapters, li, AdapterSite::kFfn, x,
                            LinearWithLora(mlp, l.down_w, l.down_b, adapters, li,
                                           lora_module::kDown, gemm));
    }
    return x;
  }

  at::Tensor Logits(const at::Tensor& x) const {
    return at::linear(RmsNorm(x, norm_), lm_head_).to(at::kFloat);
  }

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
    if (x.is_cuda()) {
      // One fused kernel (fp32 inside). In fp16/bf16 the weight is applied
      // before the one rounding, where transformers rounds, multiplies and
      // rounds again: within the bf16 argmax parity of docs/gpu.md.
      return at::rms_norm(x, {x.size(-1)}, weight, context_.config.norm_eps);
    }
    at::Tensor xf = x.to(at::kFloat);
    at::Tensor variance = xf.pow(2).mean(-1, /*keepdim=*/true);
    return weight * (xf * at::rsqrt(variance + context_.config.norm_eps)).to(x.scalar_type());
  }

#ifdef ADAPTERD_WITH_CUDA
  // Runs a decode step as a CUDA graph replay when it can: CUDA, no autograd,
  // one new token per sequence, LoRA only through the batched kernels, rotary
  // frequencies fixed at load. Returns false (nothing run) otherwise, and
  // for anything the eager path must reject with its own error.
  bool TryDecodeGraph(const ForwardBatch& batch, KvCache& cache, at::Tensor& logits) {
    namespace li = lora_internal;
    const ModelConfig& c = context_.config;
    constexpr int64_t kModules = lora_module::kMaxModules;
    if (!context_.cuda_graphs || !context_.device.is_cuda() || c10::GradMode::is_enabled()) {
      return false;
    }
    if (c.rope_scaling.type == "dynamic" || c.rope_scaling.type == "longrope") return false;
    const int64_t slots = cache.num_slots();
    const size_t n = batch.slots.size();
    if (n == 0 || batch.past_lens.size() != n || batch.tokens.size() != n ||
        (!batch.adapters.empty() && batch.adapters.size() != n) ||
        (!batch.virtual_tokens.empty() && batch.virtual_tokens.size() != n)) {
      return false;
    }
    // Host inputs: [4, S] ids, positions, cache slot written, and (first n)
    // the rows returned in batch order. Padded rows: token 0 at position 0,
    // written to the scratch slot S.
    at::Tensor host =
        at::empty({4, slots}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
    int64_t* ids = host.data_ptr<int64_t>();
    int64_t* pos = ids + slots;
    int64_t* kv_slot = pos + slots;
    int64_t* rows = kv_slot + slots;
    std::fill(ids, ids + 4 * slots, 0);
    std::fill(kv_slot, kv_slot + slots, slots);
    std::vector<int32_t> token_slot(slots, -1);
    std::vector<const LoraKernelWeights*> kernels;
    std::vector<int64_t> kernel_rows;
    int64_t max_past = 0;
    for (size_t i = 0; i < n; ++i) {
      const int64_t slot = batch.slots[i];
      if (slot < 0 || slot >= slots || kv_slot[slot] != slots || batch.tokens[i].size() != 1 ||
          (!batch.virtual_tokens.empty() && batch.virtual_tokens[i] != 0)) {
        return false;
      }
      const int64_t past = batch.past_lens[i];
      const int32_t id = batch.tokens[i][0];
      if (past < 0 || past + 1 > cache.max_len() || id < 0 || id >= c.vocab_size) return false;
      const Adapter* a = batch.adapters.empty() ? nullptr : batch.adapters[i];
      if (a != nullptr && !(a->lora.empty() && a->attn_site.empty() && a->fusion.empty())) {
        const LoraKernelWeights* k = a->lora_kernels.get();
        if (k == nullptr || k->dtype != context_.dtype || !a->attn_site.empty() ||
            !a->fusion.empty()) {
          return false;
        }
        auto it = std::find(kernels.begin(), kernels.end(), k);
        if (it == kernels.end()) {
          kernels.push_back(k);
          kernel_rows.push_back(0);
          it = kernels.end() - 1;
        }
        const int64_t ks = it - kernels.begin();
        token_slot[slot] = static_cast<int32_t>(ks);
        ++kernel_rows[ks];
      }
      ids[slot] = id;
      pos[slot] = past;
      kv_slot[slot] = slot;
      rows[i] = slot;
      max_past = std::max(max_past, past);
    }
    DecodeGraphKey key;
    key.kv_len = std::min(cache.max_len(), (max_past / kGraphKvBlock + 1) * kGraphKvBlock);
    int64_t max_rank = 0;
    for (size_t ks = 0; ks < kernels.size(); ++ks) {
      for (size_t r = 0; r < kernels[ks]->rank.size(); ++r) {
        if (kernels[ks]->rank[r] == 0) continue;
        key.modules |= 1 << (r % kModules);
        max_rank = std::max(max_rank, kernels[ks]->rank[r]);
      }
      key.segment_tokens = std::max(key.segment_tokens, NextPow2(kernel_rows[ks]));
    }
    if (key.modules != 0) {
      key.rank = NextPow2(max_rank);
      key.segments = NextPow2(static_cast<int64_t>(kernels.size()));
    } else {
      key.segment_tokens = 0;
    }

    const at::TensorOptions on_device = at::TensorOptions().device(context_.device);
    // The graphs and their input buffers are one set per model; Forward may
    // run on a training thread too (never a decode graph there: autograd or
    // multi-token rows), but the state stays consistent whoever gets here.
    std::lock_guard<std::mutex> lock(graph_mu_);
    if (graph_cache_id_ != cache.id()) {
      graphs_.clear();
      graph_inputs_ = at::zeros({4, slots}, on_device.dtype(at::kLong));
      graph_meta_ =
          at::zeros({c.num_layers, kModules, slots, li::kMetaFields}, on_device.dtype(at::kLong));
      graph_cache_id_ = cache.id();
    }
    graph_inputs_.copy_(host, /*non_blocking=*/true);
    at::Tensor host_index;
    if (key.segments > 0) {
      absl::StatusOr<LoraBatchIndex> index =
          BuildLoraBatchIndex(token_slot, static_cast<int64_t>(kernels.size()), key.segments,
                              at::kCPU, key.segment_tokens);
      TORCH_CHECK(index.ok(), index.status().ToString());
      host_index = at::empty({slots + 2 * key.segments + 1},
                             at::TensorOptions().dtype(at::kInt).pinned_memory(true));
      int32_t* p = host_index.data_ptr<int32_t>();
      p = std::copy(index->host_sorted_tokens.begin(), index->host_sorted_tokens.end(), p);
      p = std::copy(index->host_segment_start.begin(), index->host_segment_start.end(), p);
      std::copy(index->host_segment_slot.begin(), index->host_segment_slot.end(), p);
      std::vector<at::Tensor> metas;
      for (const LoraKernelWeights* k : kernels) metas.push_back(k->meta);
      graph_meta_.narrow(2, 0, static_cast<int64_t>(metas.size())).copy_(at::stack(metas, 2));
    }
    auto it = graphs_.find(key);
    if (it == graphs_.end()) it = graphs_.emplace(key, CaptureDecodeGraph(key, cache)).first;
    DecodeGraph& g = *it->second;
    if (host_index.defined()) g.lora_index.copy_(host_index, /*non_blocking=*/true);
    g.graph.replay();
    ++graph_replays_;
    logits = g.logits.index_select(0, graph_inputs_[3].narrow(0, 0, static_cast<int64_t>(n)));
    return true;
  }

  // Captures the decode step of `key` over `cache`, reading graph_inputs_,
  // graph_meta_ and its own LoRA index (filled before each replay).
  std::unique_ptr<DecodeGraph> CaptureDecodeGraph(const DecodeGraphKey& key, KvCache& cache) {
    const ModelConfig& c = context_.config;
    constexpr int64_t kModules = lora_module::kMaxModules;
    const int64_t slots = cache.num_slots();
    auto g = std::make_unique<DecodeGraph>();
    AttentionStep step;
    step.num_tokens = slots;
    step.all_decode = true;
    step.max_kv_len = key.kv_len;
    step.sliding_window = c.sliding_window;
    step.consecutive_first_slot = 0;
    step.lens.assign(slots, 1);
    step.token_ids = graph_inputs_[0];
    step.token_positions = graph_inputs_[1];
    step.token_slots = graph_inputs_[2];
    BatchAdapters adapters;
    if (key.segments > 0) {
      g->lora_index = at::zeros({slots + 2 * key.segments + 1},
                                at::TensorOptions().dtype(at::kInt).device(context_.device));
      LoraBatchIndex index;
      index.sorted_tokens = g->lora_index.narrow(0, 0, slots);
      index.segment_start = g->lora_index.narrow(0, slots, key.segments + 1);
      index.segment_slot = g->lora_index.narrow(0, slots + key.segments + 1, key.segments);
      index.num_tokens = slots;
      index.max_segments = key.segments;
      index.max_segment_tokens = key.segment_tokens;
      std::vector<int64_t> max_rank(c.num_layers * kModules, 0);
      for (size_t r = 0; r < max_rank.size(); ++r) {
        if (key.modules & (1 << (r % kModules))) max_rank[r] = key.rank;
      }
      adapters = BatchAdapters::ForKernels(std::move(index), graph_meta_, static_cast<int>(slots),
                                           std::move(max_rank), context_.dtype);
    }
    auto body = [&] {
      at::Tensor k_pos =
          at::arange(key.kv_len, at::TensorOptions().dtype(at::kLong).device(context_.device))
              .unsqueeze(0);
      at::Tensor q_pos = step.token_positions.unsqueeze(1);
      // Additive masks in the model dtype, made once per step (a boolean mask
      // is converted by every layer's attention call).
      const double neg_inf = -std::numeric_limits<double>::infinity();
      at::Tensor allowed = k_pos.le(q_pos).view({slots, 1, 1, key.kv_len});
      auto bias = [&](const at::Tensor& ok) {
        return at::zeros(ok.sizes(), at::TensorOptions().dtype(context_.dtype).device(ok.device()))
            .masked_fill_(ok.logical_not(), neg_inf);
      };
      step.decode_allowed = bias(allowed);
      if (c.sliding_window > 0) {
        step.decode_allowed_sliding = bias(allowed.logical_and(
            k_pos.gt(q_pos - c.sliding_window).view({slots, 1, 1, key.kv_len})));
      }
      return Logits(Layers(embed_.index_select(0, step.token_ids), step, adapters, cache));
    };
    // Inputs of this step are in place: the warm-up run on the capture
    // stream computes and writes what the first replay writes again.
    c10::cuda::device_synchronize();
    c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, context_.device.index());
    {
      c10::cuda::CUDAStreamGuard guard(stream);
      body();
      stream.synchronize();
      // Thread-local capture: a training job's CUDA calls on its own
      // thread and stream must neither break nor join this capture.
      g->graph.capture_begin({0, 0}, cudaStreamCaptureModeThreadLocal);
      g->logits = body();
      g->graph.capture_end();
    }
    c10::cuda::device_synchronize();
    return g;
  }

  uint64_t graph_cache_id_ = 0;  // The KvCache the graphs were captured over.
  at::Tensor graph_inputs_;      // int64 [4, S] on the device; see TryDecodeGraph.
  at::Tensor graph_meta_;        // int64 [layers, kMaxModules, S, kMetaFields].
  std::map<DecodeGraphKey, std::unique_ptr<DecodeGraph>> graphs_;
#endif
  int64_t graph_replays_ = 0;

  ModelContext context_;
  at::Tensor embed_, norm_, lm_head_, inv_freq_, long_inv_freq_;
  double attention_scaling_ = 1.0;
  std::mutex graph_mu_;  // Guards the decode graphs and their buffers.
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
