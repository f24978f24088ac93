// GPT-2: learned positions, LayerNorm, Conv1D weights stored (in, out),
// gelu_new MLP, lm_head tied to wte. Mirrors transformers' modeling_gpt2.py.

#include <ATen/ATen.h>

#include <cmath>
#include <utility>

#include "absl/strings/str_cat.h"
#include "engine/model/causal_lm.h"
#include "engine/model/weights.h"
#include "engine/peft/batch_adapters.h"
#include "engine/runtime/kv_cache.h"

namespace adapterd {
namespace {

struct Gpt2Layer {
  at::Tensor ln1_w, ln1_b, ln2_w, ln2_b;
  at::Tensor attn_w, attn_b, attn_proj_w, attn_proj_b;  // Conv1D: [in, out].
  at::Tensor fc_w, fc_b, mlp_proj_w, mlp_proj_b;
};

at::Tensor Activation(const at::Tensor& x, const std::string& name) {
  if (name == "relu") return at::relu(x);
  if (name == "silu") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  return at::gelu(x, "tanh");  // gelu_new, gelu_pytorch_tanh.
}

class Gpt2Model final : public CausalLM {
 public:
  explicit Gpt2Model(const ModelContext& context) : context_(context) {}

  absl::Status LoadWeights(const ModelWeights& weights) {
    const ModelConfig& c = context_.config;
    TensorLoader get(weights, context_.dtype, context_.device);
    const int64_t h = c.hidden_size, inner = c.intermediate_size;
    wte_ = get("wte.weight", {c.vocab_size, h});
    wpe_ = get("wpe.weight", {c.max_position_embeddings, h});
    ln_f_w_ = get("ln_f.weight", {h});
    ln_f_b_ = get("ln_f.bias", {h});
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const std::string p = absl::StrCat("h.", i, ".");
      Gpt2Layer l;
      l.ln1_w = get(p + "ln_1.weight", {h});
      l.ln1_b = get(p + "ln_1.bias", {h});
      l.attn_w = get(p + "attn.c_attn.weight", {h, 3 * h});
      l.attn_b = get(p + "attn.c_attn.bias", {3 * h});
      l.attn_proj_w = get(p + "attn.c_proj.weight", {h, h});
      l.attn_proj_b = get(p + "attn.c_proj.bias", {h});
      l.ln2_w = get(p + "ln_2.weight", {h});
      l.ln2_b = get(p + "ln_2.bias", {h});
      l.fc_w = get(p + "mlp.c_fc.weight", {h, inner});
      l.fc_b = get(p + "mlp.c_fc.bias", {inner});
      l.mlp_proj_w = get(p + "mlp.c_proj.weight", {inner, h});
      l.mlp_proj_b = get(p + "mlp.c_proj.bias", {h});
      layers_.push_back(std::move(l));
    }
    return get.status();
  }

  const ModelConfig& config() const override { return context_.config; }
  at::ScalarType dtype() const override { return context_.dtype; }
  at::Device device() const override { return context_.device; }
  const std::string& fingerprint() const override { return context_.fingerprint; }
  const at::Tensor& input_embeddings() const override { return wte_; }

  LinearRef Linear(int layer, int module) override {
    if (layer < 0 || layer >= static_cast<int>(layers_.size())) return {};
    Gpt2Layer& l = layers_[layer];
    switch (module) {
      case lora_module::kCAttn: return {&l.attn_w, &l.attn_b, true};
      case lora_module::kAttnCProj: return {&l.attn_proj_w, &l.attn_proj_b, true};
      case lora_module::kCFc: return {&l.fc_w, &l.fc_b, true};
      case lora_module::kMlpCProj: return {&l.mlp_proj_w, &l.mlp_proj_b, true};
      default: return {};
    }
  }

  std::unique_ptr<KvCache> NewCache(int num_slots, int64_t max_len) const override {
    const ModelConfig& c = context_.config;
    return std::make_unique<KvCache>(static_cast<int>(c.num_layers), num_slots, max_len,
                                     c.num_heads, c.head_dim, context_.dtype, context_.device);
  }

  at::Tensor Forward(const ForwardBatch& batch, KvCache& cache) override {
    const ModelConfig& c = context_.config;
    TORCH_CHECK(cache.num_layers() == c.num_layers && cache.kv_heads() == c.num_heads &&
                    cache.head_dim() == c.head_dim,
                "KV cache does not belong to this model");
    const int64_t max_len = std::min<int64_t>(cache.max_len(), c.max_position_embeddings);
    const AttentionStep step =
        AttentionStep::Build(batch, cache.num_slots(), max_len, c.vocab_size, 0, context_.device);
    const int64_t t = step.num_tokens, h = c.hidden_size;
    double scale = c.scale_attn_weights ? 1.0 / std::sqrt(static_cast<double>(c.head_dim)) : 1.0;

    const BatchAdapters adapters = BatchAdapters::Build(batch, step, context_.device);
    at::Tensor x = wte_.index_select(0, step.token_ids);
    adapters.ApplyPromptRows(x);
    x = x + wpe_.index_select(0, step.token_positions);
    for (int64_t i = 0; i < c.num_layers; ++i) {
      const Gpt2Layer& l = layers_[i];
      const int li = static_cast<int>(i);
      at::Tensor a = at::layer_norm(x, {h}, l.ln1_w, l.ln1_b, c.norm_eps);
      at::Tensor qkv = at::addmm(l.attn_b, a, l.attn_w);
      ApplyLoraDelta(a, qkv, adapters, li, lora_module::kCAttn, l.attn_b);
      at::Tensor q = qkv.narrow(1, 0, h).view({t, c.num_heads, c.head_dim});
      at::Tensor k = qkv.narrow(1, h, h).view({t, c.num_heads, c.head_dim});
      at::Tensor v = qkv.narrow(1, 2 * h, h).view({t, c.num_heads, c.head_dim});
      const double layer_scale =
          c.scale_attn_by_inverse_layer_idx ? scale / static_cast<double>(i + 1) : scale;
      at::Tensor attn = cache.WriteAndAttend(li, step, k, v, q, layer_scale, false);
      at::Tensor proj = at::addmm(l.attn_proj_b, attn, l.attn_proj_w);
      ApplyLoraDelta(attn, proj, adapters, li, lora_module::kAttnCProj, l.attn_proj_b);
      x = AddSubLayerOutput(adapters, li, AdapterSite::kAttention, x, proj);
      at::Tensor m = at::layer_norm(x, {h}, l.ln2_w, l.ln2_b, c.norm_eps);
      at::Tensor fc = at::addmm(l.fc_b, m, l.fc_w);
      ApplyLoraDelta(m, fc, adapters, li, lora_module::kCFc, l.fc_b);
      m = Activation(fc, c.hidden_act);
      at::Tensor out = at::addmm(l.mlp_proj_b, m, l.mlp_proj_w);
      ApplyLoraDelta(m, out, adapters, li, lora_module::kMlpCProj, l.mlp_proj_b);
      x = AddSubLayerOutput(adapters, li, AdapterSite::kFfn, x, out);
    }
    if (!batch.all_logits) {
      x = x.index_select(0, step.last_rows);
    } else if (adapters.output_rows().defined()) {
      x = x.index_select(0, adapters.output_rows());
    }
    x = at::layer_norm(x, {h}, ln_f_w_, ln_f_b_, c.norm_eps);
    return at::linear(x, wte_).to(at::kFloat);
  }

 private:
  ModelContext context_;
  at::Tensor wte_, wpe_, ln_f_w_, ln_f_b_;
  std::vector<Gpt2Layer> layers_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<CausalLM>> BuildGpt2(const ModelContext& context,
                                                    const ModelWeights& weights) {
  auto model = std::make_unique<Gpt2Model>(context);
  absl::Status status = model->LoadWeights(weights);
  if (!status.ok()) return status;
  return std::unique_ptr<CausalLM>(std::move(model));
}

}  // namespace adapterd
