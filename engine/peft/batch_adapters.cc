#include "engine/peft/batch_adapters.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>

#include "absl/strings/str_cat.h"
#include "engine/kernels/lora_launch.h"
#include "engine/model/causal_lm.h"
#include "engine/runtime/kv_cache.h"

namespace adapterd {
namespace {

at::Tensor LongTensor(const std::vector<int64_t>& values, at::Device device) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  if (!values.empty()) {
    std::memcpy(t.data_ptr<int64_t>(), values.data(), values.size() * sizeof(int64_t));
  }
  return t.to(device);
}

at::Tensor Activate(const at::Tensor& x, const std::string& name) {
  if (name == "relu") return at::relu(x);
  if (name == "swish" || name == "silu") return at::silu(x);
  if (name == "gelu") return at::gelu(x);
  if (name == "gelu_new") return at::gelu(x, "tanh");
  if (name == "tanh") return at::tanh(x);
  return at::leaky_relu(x, 0.01);  // leakyrelu.
}

// up(act(down(h))) * scaling, in fp32.
at::Tensor Bottleneck(const at::Tensor& h, const BottleneckWeights& w) {
  at::Tensor down = Activate(at::linear(h, w.down_w, w.down_b), w.activation);
  return at::linear(down, w.up_w, w.up_b) * w.scaling;
}

int64_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return static_cast<int64_t>(u);
}

int64_t Ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<int64_t>(t.data_ptr()) : 0;
}

// The ATen path of ApplyLoraDelta for one module; with skip_kernel_groups the
// groups the kernels handled are left out.
void ApplyLoraGroups(const at::Tensor& x, const at::Tensor& y, const BatchAdapters& adapters,
                     int layer, int module, const at::Tensor& base_bias, bool skip_kernel_groups) {
  for (const BatchAdapters::Group& g : adapters.groups()) {
    if (skip_kernel_groups && g.kernel_slot >= 0) continue;
    const Adapter& a = *g.adapter;
    if (a.lora.empty()) continue;
    const std::optional<LoraWeights>& w = a.lora[layer][module];
    if (!w.has_value()) continue;
    // As PEFT: the adapter branch in fp32 on the fp32 input, added in fp32,
    // then rounded to the model dtype.
    at::Tensor xr = x.index_select(0, g.rows).to(at::kFloat);
    if (w->train_dropout > 0) xr = at::dropout(xr, w->train_dropout, /*train=*/true);
    at::Tensor lora = at::linear(at::linear(xr, w->a), w->b, w->b_bias);
    if (!w->dora_scale.defined() && y.scalar_type() == at::kFloat) {
      y.index_add_(0, g.rows, lora.mul_(w->scaling));  // The same single fp32 add per element.
      continue;
    }
    at::Tensor yr = y.index_select(0, g.rows).to(at::kFloat);
    at::Tensor out;
    if (w->dora_scale.defined()) {
      at::Tensor base = base_bias.defined() ? yr - base_bias.to(at::kFloat) : yr;
      out = yr + ((w->dora_scale - 1) * base + w->dora_scale * lora * w->scaling);
    } else {
      out = yr + lora * w->scaling;
    }
    y.index_copy_(0, g.rows, out.to(y.scalar_type()));
  }
}

// Whether autograd may need to flow into the adapter's LoRA weights (then the
// ATen path applies it: the kernels compute no gradient).
bool LoraRequiresGrad(const Adapter& a) {
  for (const auto& layer : a.lora) {
    for (const std::optional<LoraWeights>& w : layer) {
      if (w.has_value() && (w->a.requires_grad() || w->b.requires_grad() ||
                            (w->b_bias.defined() && w->b_bias.requires_grad()))) {
        return true;
      }
    }
  }
  return false;
}

}  // namespace

std::shared_ptr<const Adapter> WithLoraKernels(std::shared_ptr<const Adapter> adapter,
                                               at::ScalarType dtype) {
  namespace li = lora_internal;
  const Adapter& a = *adapter;
  if (a.lora.empty()) return adapter;
  constexpr int64_t kModules = lora_module::kMaxModules;
  auto k = std::make_shared<LoraKernelWeights>();
  k->dtype = dtype;
  k->num_layers = static_cast<int64_t>(a.lora.size());
  k->rank.assign(k->num_layers * kModules, 0);
  std::vector<int64_t> meta(k->num_layers * kModules * li::kMetaFields, 0);
  int64_t extra_bytes = 0;
  at::Device device = at::kCPU;
  for (int64_t l = 0; l < k->num_layers; ++l) {
    for (int64_t m = 0; m < static_cast<int64_t>(a.lora[l].size()) && m < kModules; ++m) {
      const std::optional<LoraWeights>& w = a.lora[l][m];
      if (!w.has_value()) continue;
      if (w->dora_scale.defined() || !w->a.is_cuda()) return adapter;
      device = w->a.device();
      const at::Tensor wa = w->a.to(dtype).contiguous();
      const at::Tensor wb = w->b.to(dtype).contiguous();
      const at::Tensor bias = w->b_bias.defined() ? w->b_bias.to(dtype).contiguous() : at::Tensor();
      for (const at::Tensor* t : {&wa, &wb, &bias}) {
        if (!t->defined()) continue;
        k->held.push_back(*t);
        if (!t->is_same(w->a) && !t->is_same(w->b) && !t->is_same(w->b_bias)) {
          extra_bytes += t->numel() * static_cast<int64_t>(t->element_size());
        }
      }
      int64_t* r = meta.data() + (l * kModules + m) * li::kMetaFields;
      r[li::kMetaA] = Ptr(wa);
      r[li::kMetaB] = Ptr(wb);
      r[li::kMetaBBias] = Ptr(bias);
      r[li::kMetaRank] = wa.size(0);
      r[li::kMetaOut] = wb.size(0);
      r[li::kMetaScale] = FloatBits(static_cast<float>(w->scaling));
      r[li::kMetaAct] = static_cast<int64_t>(LoraActivation::kNone);
      k->rank[l * kModules + m] = wa.size(0);
    }
  }
  if (k->held.empty()) return adapter;
  at::Tensor host = at::empty({k->num_layers, kModules, li::kMetaFields}, at::kLong);
  std::memcpy(host.data_ptr<int64_t>(), meta.data(), meta.size() * sizeof(int64_t));
  k->meta = host.to(device);
  auto out = std::make_shared<Adapter>(a);
  out->lora_kernels = std::move(k);
  out->num_bytes += extra_bytes;
  return out;
}

BatchAdapters BatchAdapters::Build(const ForwardBatch& batch, const AttentionStep& step,
                                   at::Device device) {
  BatchAdapters out;
  const size_t n = step.lens.size();
  TORCH_CHECK(batch.adapters.empty() || batch.adapters.size() == n,
              "ForwardBatch: adapters and sequences differ in length");
  TORCH_CHECK(batch.virtual_tokens.empty() || batch.virtual_tokens.size() == n,
              "ForwardBatch: virtual_tokens and sequences differ in length");
  std::map<const Adapter*, size_t> index;
  std::vector<int64_t> virtual_rows, output_rows;
  std::vector<at::Tensor> virtual_values;
  for (size_t i = 0; i < n; ++i) {
    const Adapter* a = batch.adapters.empty() ? nullptr : batch.adapters[i];
    const int v = batch.virtual_tokens.empty() ? 0 : batch.virtual_tokens[i];
    if (v > 0) {
      TORCH_CHECK(a != nullptr && a->prompt.defined(), "sequence ", i,
                  " has virtual tokens but no prompt adapter");
      TORCH_CHECK(v <= step.lens[i] && step.past_lens[i] + v <= a->prompt.size(0), "sequence ", i,
                  ": ", v, " virtual tokens do not fit its prompt adapter");
      for (int64_t j = 0; j < v; ++j) virtual_rows.push_back(step.offsets[i] + j);
      virtual_values.push_back(a->prompt.narrow(0, step.past_lens[i], v));
    }
    for (int64_t j = v; j < step.lens[i]; ++j) output_rows.push_back(step.offsets[i] + j);
    if (a == nullptr || (a->lora.empty() && a->attn_site.empty() && a->fusion.empty())) continue;
    auto [it, inserted] = index.emplace(a, out.groups_.size());
    if (inserted) out.groups_.push_back(Group{a, at::Tensor(), {}});
    std::vector<int64_t>& rows = out.groups_[it->second].host_rows;
    for (int64_t j = 0; j < step.lens[i]; ++j) rows.push_back(step.offsets[i] + j);
  }
  for (Group& g : out.groups_) g.rows = LongTensor(g.host_rows, device);
  if (device.is_cuda()) {
    // One kernel slot per LoRA group with kernel weights in one dtype; the
    // index and the table serve every layer of the step.
    std::vector<int32_t> token_slot(step.num_tokens, -1);
    std::vector<at::Tensor> metas;
    std::vector<const LoraKernelWeights*> weights;
    const bool grad = c10::GradMode::is_enabled();
    for (Group& g : out.groups_) {
      const LoraKernelWeights* k = g.adapter->lora_kernels.get();
      if (k == nullptr || (!weights.empty() && k->dtype != weights[0]->dtype)) continue;
      if (grad && LoraRequiresGrad(*g.adapter)) continue;
      g.kernel_slot = static_cast<int>(metas.size());
      metas.push_back(k->meta);
      weights.push_back(k);
      for (int64_t r : g.host_rows) token_slot[r] = g.kernel_slot;
    }
    if (!metas.empty()) {
      const int64_t n = static_cast<int64_t>(metas.size());
      absl::StatusOr<LoraBatchIndex> index = BuildLoraBatchIndex(token_slot, n, n, device);
      TORCH_CHECK(index.ok(), index.status().ToString());
      out.kernel_index_ = *std::move(index);
      out.kernel_meta_ = at::stack(metas, 2);  // [layers, modules, slots, fields]
      out.kernel_slots_ = static_cast<int>(n);
      out.kernel_dtype_ = weights[0]->dtype;
      out.kernel_max_rank_.assign(weights[0]->rank.size(), 0);
      for (const LoraKernelWeights* k : weights) {
        for (size_t i = 0; i < k->rank.size(); ++i) {
          out.kernel_max_rank_[i] = std::max(out.kernel_max_rank_[i], k->rank[i]);
        }
      }
    }
  }
  if (!virtual_rows.empty()) {
    out.has_virtual_ = true;
    out.virtual_rows_ = LongTensor(virtual_rows, device);
    out.virtual_values_ = at::cat(virtual_values, 0);
    out.output_rows_ = LongTensor(output_rows, device);
  }
  return out;
}

void BatchAdapters::ApplyPromptRows(at::Tensor& x) const {
  if (!has_virtual_) return;
  x.index_copy_(0, virtual_rows_, virtual_values_.to(x.scalar_type()));
}

BatchAdapters BatchAdapters::ForKernels(LoraBatchIndex index, at::Tensor meta, int num_slots,
                                        std::vector<int64_t> max_rank, at::ScalarType dtype) {
  BatchAdapters out;
  out.kernel_index_ = std::move(index);
  out.kernel_meta_ = std::move(meta);
  out.kernel_slots_ = num_slots;
  out.kernel_max_rank_ = std::move(max_rank);
  out.kernel_dtype_ = dtype;
  return out;
}

bool BatchAdapters::UsesKernels(const at::Tensor& x) const {
  return kernel_slots_ > 0 && x.scalar_type() == kernel_dtype_ &&
         !(c10::GradMode::is_enabled() && x.requires_grad());
}

LoraWeightTable BatchAdapters::KernelTable(int layer, int first_module,
                                           std::span<const int64_t> out_features,
                                           int64_t in_features) const {
  constexpr int64_t kModules = lora_module::kMaxModules;
  const int64_t n = static_cast<int64_t>(out_features.size());
  LoraWeightTable table;
  for (int64_t i = 0; i < n; ++i) {
    table.max_rank =
        std::max(table.max_rank, kernel_max_rank_[layer * kModules + first_module + i]);
  }
  if (table.max_rank == 0) return table;  // No kernel-slot adapter has LoRA on these modules.
  table.meta = kernel_meta_.select(0, layer).narrow(0, first_module, n);
  table.num_slices = n;
  table.num_slots = kernel_slots_;
  table.in_features = in_features;
  table.dtype = kernel_dtype_;
  table.out_features.assign(out_features.begin(), out_features.end());
  return table;
}

void BatchAdapters::ApplyKernels(const at::Tensor& x, std::span<const at::Tensor> ys, int layer,
                                 int first_module, bool after_base_gemm) const {
  std::vector<int64_t> outs;
  for (const at::Tensor& y : ys) outs.push_back(y.size(1));
  const LoraWeightTable table = KernelTable(layer, first_module, outs, x.size(1));
  if (table.max_rank == 0) return;
  // A copy making x contiguous would be the last kernel queued, writing x.
  const bool strided = x.stride(-1) != 1;
  const absl::Status status =
      LoraApply(strided ? x.contiguous() : x, table, kernel_index_, ys,
                LoraApplyOptions{.after_base_gemm = after_base_gemm && !strided});
  TORCH_CHECK(status.ok(), "batched LoRA kernels: ", status.ToString());
}

at::Tensor BatchAdapters::DecodeLinear(const at::Tensor& x, const at::Tensor& weight,
                                       std::span<const int64_t> out_features, int layer,
                                       int first_module, LinearGemm gemm) const {
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  LoraWeightTable table;
  if (UsesKernels(x)) table = KernelTable(layer, first_module, out_features, x.size(1));
  const bool lora = table.max_rank > 0;
  const absl::Status status = LoraLinear(x, weight, y, lora ? &table : nullptr,
                                         lora ? &kernel_index_ : nullptr, {.gemm = gemm});
  TORCH_CHECK(status.ok(), "projection with LoRA: ", status.ToString());
  return y;
}

void ApplyLoraDelta(const at::Tensor& x, at::Tensor& y, const BatchAdapters& adapters, int layer,
                    int module, const at::Tensor& base_bias, bool after_base_gemm) {
  const bool kernels = adapters.UsesKernels(x);
  if (kernels) {
    adapters.ApplyKernels(x, std::span<const at::Tensor>(&y, 1), layer, module, after_base_gemm);
  }
  ApplyLoraGroups(x, y, adapters, layer, module, base_bias, kernels);
}

void ApplyLoraDeltas(const at::Tensor& x, std::span<const at::Tensor> ys,
                     const BatchAdapters& adapters, int layer, int first_module,
                     std::span<const at::Tensor> base_biases) {
  const bool kernels = adapters.UsesKernels(x);
  if (kernels) adapters.ApplyKernels(x, ys, layer, first_module);
  for (size_t i = 0; i < ys.size(); ++i) {
    ApplyLoraGroups(x, ys[i], adapters, layer, first_module + static_cast<int>(i), base_biases[i],
                    kernels);
  }
}

namespace {

// The GEMM a projection with kernel-slot groups runs through LoraLinear
// (LinearWithLora's comment), or nullopt: at::linear, then the kernels.
std::optional<LinearGemm> FusedLinearGemm(const at::Tensor& x, const at::Tensor& weight,
                                          const BatchAdapters& adapters, bool any_bias,
                                          bool decode_gemm) {
  if (any_bias || !adapters.UsesKernels(x)) return std::nullopt;
  if (decode_gemm && DecodeGemmPreferred(x, weight, /*lora=*/true)) return LinearGemm::kDecode;
  if (OverlapGemmPreferred(x, weight, /*lora=*/true)) return LinearGemm::kOverlap;
  return std::nullopt;
}

// at::linear(x, weight, bias), through cuBLASLt on the whole device where
// LoraLinear's kAuto would take it for a projection without adapters
// (BlasLtPreferred, no bias).
at::Tensor PlainLinear(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  if (bias.defined() || !BlasLtPreferred(x, weight)) return at::linear(x, weight, bias);
  at::Tensor y = at::empty({x.size(0), weight.size(0)}, x.options());
  const absl::Status status =
      LoraLinear(x, weight, y, nullptr, nullptr, {.gemm = LinearGemm::kOverlap, .overlap_sms = -1});
  TORCH_CHECK(status.ok(), "projection: ", status.ToString());
  return y;
}

}  // namespace

at::Tensor LinearWithLora(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias,
                          const BatchAdapters& adapters, int layer, int module, bool decode_gemm) {
  if (const std::optional<LinearGemm> gemm =
          FusedLinearGemm(x, weight, adapters, bias.defined(), decode_gemm)) {
    const int64_t out = weight.size(0);
    at::Tensor y =
        adapters.DecodeLinear(x, weight, std::span<const int64_t>(&out, 1), layer, module, *gemm);
    ApplyLoraGroups(x, y, adapters, layer, module, bias, adapters.UsesKernels(x));
    return y;
  }
  at::Tensor y = PlainLinear(x, weight, bias);
  ApplyLoraDelta(x, y, adapters, layer, module, bias, /*after_base_gemm=*/true);
  return y;
}

at::Tensor LinearWithLoraDeltas(const at::Tensor& x, const at::Tensor& weight,
                                std::span<const int64_t> out_features,
                                std::span<const at::Tensor> biases, const BatchAdapters& adapters,
                                int layer, int first_module, bool decode_gemm) {
  const bool any_bias = std::any_of(biases.begin(), biases.end(),
                                    [](const at::Tensor& b) { return b.defined(); });
  const std::optional<LinearGemm> gemm =
      FusedLinearGemm(x, weight, adapters, any_bias, decode_gemm);
  at::Tensor y = gemm ? adapters.DecodeLinear(x, weight, out_features, layer, first_module, *gemm)
                      : PlainLinear(x, weight, at::Tensor());
  std::vector<at::Tensor> ys;
  int64_t off = 0;
  for (size_t i = 0; i < out_features.size(); ++i) {
    ys.push_back(y.narrow(1, off, out_features[i]));
    off += out_features[i];
    if (biases[i].defined()) ys.back().add_(biases[i]);
  }
  const bool kernels = adapters.UsesKernels(x);
  if (kernels && !gemm) adapters.ApplyKernels(x, ys, layer, first_module, /*after_base_gemm=*/true);
  for (size_t i = 0; i < ys.size(); ++i) {
    ApplyLoraGroups(x, ys[i], adapters, layer, first_module + static_cast<int>(i), biases[i],
                    kernels);
  }
  return y;
}

at::Tensor AddSubLayerOutput(const BatchAdapters& adapters, int layer, AdapterSite site,
                             const at::Tensor& x, const at::Tensor& f) {
  at::Tensor out = x + f;
  for (const BatchAdapters::Group& g : adapters.groups()) {
    const Adapter& a = *g.adapter;
    if (a.method == AdapterMethod::kBottleneck) {
      const auto& sites = site == AdapterSite::kAttention ? a.attn_site : a.ffn_site;
      if (!sites[layer].has_value()) continue;
      at::Tensor xr = x.index_select(0, g.rows);
      at::Tensor fr = f.index_select(0, g.rows);
      at::Tensor h = a.input_includes_residual ? xr + fr : fr;
      // AdapterHub: (up + f) then + x.
      at::Tensor res =
          (Bottleneck(h.to(at::kFloat), *sites[layer]) + fr.to(at::kFloat)) + xr.to(at::kFloat);
      out.index_copy_(0, g.rows, res.to(out.scalar_type()));
    } else if (a.method == AdapterMethod::kFusion && site == AdapterSite::kFfn) {
      if (a.fusion.empty() || !a.fusion[layer].has_value()) continue;
      const FusionLayer& fl = *a.fusion[layer];
      at::Tensor xr = x.index_select(0, g.rows).to(at::kFloat);
      at::Tensor fr = f.index_select(0, g.rows).to(at::kFloat);
      at::Tensor h = xr + fr;  // Pfeiffer children: input and query are x + f.
      std::vector<at::Tensor> ups;
      for (const auto& child : a.children) ups.push_back(Bottleneck(h, *child->ffn_site[layer]));
      at::Tensor up = at::stack(ups, 1);                                               // [n, N, d]
      at::Tensor q = at::linear(h, fl.query_w, fl.query_b);                            // [n, d]
      at::Tensor k = at::linear(up, fl.key_w, fl.key_b);                               // [n, N, d]
      at::Tensor v = at::linear(up, fl.value_w);                                       // [n, N, d]
      at::Tensor scores = at::matmul(q.unsqueeze(1), k.transpose(-2, -1)).squeeze(1);  // [n, N]
      at::Tensor probs = at::softmax(scores, -1);
      at::Tensor context = at::matmul(probs.unsqueeze(1), v).squeeze(1);  // [n, d]
      at::Tensor res = (context + fr) + xr;
      out.index_copy_(0, g.rows, res.to(out.scalar_type()));
    }
  }
  return out;
}

void PrefillPrefix(KvCache& cache, int slot, const Adapter& adapter) {
  TORCH_CHECK(!adapter.prefix_keys.empty(), "adapter ", adapter.name, " is not a prefix adapter");
  TORCH_CHECK(static_cast<int>(adapter.prefix_keys.size()) == cache.num_layers(),
              "prefix layers do not match the cache");
  const int64_t p = adapter.prefix_keys[0].size(1);
  TORCH_CHECK(p <= cache.max_len(), "prefix longer than the cache");
  for (int l = 0; l < cache.num_layers(); ++l) {
    cache.keys(l)[slot].narrow(1, 0, p).copy_(adapter.prefix_keys[l]);
    cache.values(l)[slot].narrow(1, 0, p).copy_(adapter.prefix_values[l]);
  }
}

absl::StatusOr<LoraMerge> LoraMerge::Merge(CausalLM& model, const Adapter& adapter) {
  if (adapter.lora.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("adapter \"", adapter.name, "\" is a ", AdapterMethodName(adapter.method),
                     " adapter; only LoRA adapters can be merged"));
  }
  LoraMerge merge;
  for (size_t l = 0; l < adapter.lora.size(); ++l) {
    for (size_t m = 0; m < adapter.lora[l].size(); ++m) {
      const std::optional<LoraWeights>& w = adapter.lora[l][m];
      if (!w.has_value()) continue;
      LinearRef ref = model.Linear(static_cast<int>(l), static_cast<int>(m));
      Kept kept{ref.weight, ref.weight->clone(), ref.bias,
                ref.bias->defined() ? ref.bias->clone() : at::Tensor()};
      at::Tensor weight = ref.weight->to(at::kFloat);
      if (ref.fan_in_fan_out) weight = weight.t();
      at::Tensor merged = weight + at::matmul(w->b, w->a) * w->scaling;
      if (w->dora_scale.defined()) merged = w->dora_scale.unsqueeze(1) * merged;
      if (ref.fan_in_fan_out) merged = merged.t();
      ref.weight->copy_(merged.to(ref.weight->scalar_type()));
      if (w->b_bias.defined()) {
        at::Tensor add = w->b_bias * w->scaling;
        if (ref.bias->defined()) {
          ref.bias->copy_((ref.bias->to(at::kFloat) + add).to(ref.bias->scalar_type()));
        } else {
          *ref.bias = add.to(ref.weight->scalar_type());
        }
      }
      merge.kept_.push_back(std::move(kept));
    }
  }
  return merge;
}

void LoraMerge::Unmerge() {
  for (Kept& k : kept_) {
    k.weight->copy_(k.original_weight);
    if (k.original_bias.defined()) {
      k.bias->copy_(k.original_bias);
    } else {
      *k.bias = at::Tensor();
    }
  }
  kept_.clear();
}

}  // namespace adapterd
