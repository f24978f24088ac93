// AdapterHub bottleneck adapters (Houlsby, Pfeiffer) and AdapterFusion as
// TrainableAdapters, served through the engine's BottleneckWeights and
// FusionLayer (engine/peft) as inference is.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/model/causal_lm.h"
#include "engine/peft/adapter.h"
#include "engine/training/checkpoint.h"
#include "engine/training/trainable.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using Json = nlohmann::json;

constexpr char kHubVersion[] = "adapters.1.3.0";

bool Gpt2(const CausalLM& model) { return model.config().architecture == Architecture::kGpt2; }

std::string LayerKey(const CausalLM& model, int64_t l) {
  return absl::StrCat(Gpt2(model) ? "transformer.h." : "model.layers.", l);
}

// The name inside the weight keys (".adapters.<name>."): the adapter's name
// when it is a plain identifier, else "adapter".
std::string KeyName(const TrainingSpec& spec) {
  const std::string& n = spec.adapter_name;
  bool plain = !n.empty();
  for (char c : n) plain = plain && (std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-');
  return plain ? n : "adapter";
}

// The fields of adapter_config.json around "config", as AdapterHub writes them.
Json HubRoot(const CausalLM& model, const std::string& name) {
  return Json{{"hidden_size", model.config().hidden_size},
              {"model_class", Gpt2(model) ? "GPT2LMHeadModel" : "LlamaForCausalLM"},
              {"model_name", nullptr},
              {"model_type", model.config().model_type},
              {"name", name},
              {"version", kHubVersion}};
}

// nn.init.trunc_normal_(mean 0, std, a, b) as torch computes it.
at::Tensor TruncNormal(std::vector<int64_t> shape, double std, double a, double b,
                       at::Generator& gen) {
  auto cdf = [](double x) { return (1.0 + std::erf(x / std::sqrt(2.0))) / 2.0; };
  const double l = cdf(a / std), u = cdf(b / std);
  at::Tensor t = at::empty(shape, at::kFloat).uniform_(2 * l - 1, 2 * u - 1, gen);
  t.erfinv_().mul_(std * std::sqrt(2.0));
  return t.clamp_(a, b);
}

at::Tensor Leaf(at::Tensor t, at::Device device) {
  return t.to(device, at::kFloat).clone().set_requires_grad(true);
}

struct Site {
  int layer = 0;
  bool attention = false;  // Else the FFN output site.
  at::Tensor down_w, down_b, up_w, up_b;
};

class BottleneckTrainable final : public TrainableAdapter {
 public:
  BottleneckTrainable(const TrainContext& ctx, std::vector<Site> sites, bool pfeiffer,
                      std::string activation, Json config)
      : ctx_(ctx),
        sites_(std::move(sites)),
        pfeiffer_(pfeiffer),
        activation_(std::move(activation)),
        config_(std::move(config)),
        name_(KeyName(*ctx.spec)) {}

  std::vector<NamedParameter> parameters() override {
    std::vector<NamedParameter> out;
    for (const Site& s : sites_) {
      const std::string key = absl::StrCat(LayerKey(*ctx_.model, s.layer), ".",
                                           s.attention ? "attention" : "output", "_adapters.adapters.",
                                           name_, ".");
      out.push_back({key + "adapter_down.0.weight", s.down_w, true});
      out.push_back({key + "adapter_down.0.bias", s.down_b, false});
      out.push_back({key + "adapter_up.weight", s.up_w, true});
      out.push_back({key + "adapter_up.bias", s.up_b, false});
    }
    return out;
  }

  std::shared_ptr<const Adapter> Build(bool /*training*/) override {
    auto adapter = std::make_shared<Adapter>();
    adapter->name = ctx_.spec->adapter_name;
    adapter->method = AdapterMethod::kBottleneck;
    const int64_t layers = ctx_.model->config().num_layers;
    adapter->attn_site.resize(layers);
    adapter->ffn_site.resize(layers);
    adapter->input_includes_residual = pfeiffer_;
    for (const Site& s : sites_) {
      BottleneckWeights w{s.down_w, s.down_b, s.up_w, s.up_b, activation_, 1.0};
      (s.attention ? adapter->attn_site : adapter->ffn_site)[s.layer] = std::move(w);
    }
    return adapter;
  }

  absl::Status Export(const std::string& dir) override {
    std::vector<SafetensorsTensor> tensors;
    for (const NamedParameter& p : parameters()) tensors.push_back(ToSafetensorsF32(p.name, p.tensor));
    ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors));
    RETURN_IF_ERROR(WriteFileSynced(dir + "/adapter.safetensors", bytes));
    Json root = HubRoot(*ctx_.model, name_);
    root["config"] = config_;
    return WriteFileSynced(dir + "/adapter_config.json", root.dump(2));
  }

 private:
  TrainContext ctx_;
  std::vector<Site> sites_;
  bool pfeiffer_;
  std::string activation_;
  Json config_;
  std::string name_;
};

// AdapterHub's BnConfig fields for the seq_bn (Pfeiffer) and double_seq_bn
// (Houlsby) presets, as adapter_config.json carries them.
Json BnConfig(bool pfeiffer, int reduction_factor, const std::string& activation,
              const std::string& init) {
  return Json{{"adapter_residual_before_ln", false},
              {"cross_adapter", false},
              {"dropout", 0.0},
              {"factorized_phm_W", true},
              {"factorized_phm_rule", false},
              {"hypercomplex_nonlinearity", "glorot-uniform"},
              {"init_weights", init},
              {"init_weights_seed", nullptr},
              {"inv_adapter", nullptr},
              {"inv_adapter_reduction_factor", nullptr},
              {"is_parallel", false},
              {"learn_phm", true},
              {"leave_out", Json::array()},
              {"ln_after", false},
              {"ln_before", false},
              {"mh_adapter", !pfeiffer},
              {"non_linearity", activation},
              {"original_ln_after", true},
              {"original_ln_before", pfeiffer},
              {"output_adapter", true},
              {"phm_bias", true},
              {"phm_c_init", "normal"},
              {"phm_dim", 4},
              {"phm_init_range", 0.0001},
              {"phm_layer", false},
              {"phm_rank", 1},
              {"reduction_factor", reduction_factor},
              {"residual_before_ln", true},
              {"scaling", 1.0},
              {"shared_W_phm", false},
              {"shared_phm_rule", true},
              {"stochastic_depth", 0.0},
              {"use_gating", false}};
}

absl::StatusOr<Json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream text;
  text << in.rdbuf();
  Json j = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat("cannot parse ", path));
  return j;
}

absl::StatusOr<std::unique_ptr<TrainableAdapter>> BottleneckFromInitDir(const TrainContext& ctx) {
  const std::string& dir = ctx.spec->init_adapter_dir;
  ASSIGN_OR_RETURN(std::shared_ptr<const Adapter> init,
                   LoadAdapter("init", dir, *ctx.model, AdapterLoadOptions()));
  if (init->method != AdapterMethod::kBottleneck) {
    return absl::InvalidArgumentError(absl::StrCat("init_adapter_dir holds a ",
                                                   AdapterMethodName(init->method),
                                                   " adapter, not a bottleneck adapter"));
  }
  ASSIGN_OR_RETURN(Json root, ReadJsonFile(dir + "/adapter_config.json"));
  const at::Device device = ctx.model->device();
  std::vector<Site> sites;
  std::string activation;
  for (size_t l = 0; l < init->ffn_site.size(); ++l) {
    for (bool attention : {true, false}) {
      const auto& w = (attention ? init->attn_site : init->ffn_site)[l];
      if (!w.has_value()) continue;
      if (w->scaling != 1.0) {
        return absl::InvalidArgumentError("init_adapter_dir: scaled bottleneck adapters cannot be trained");
      }
      activation = w->activation;
      sites.push_back(Site{static_cast<int>(l), attention, Leaf(w->down_w, device),
                           Leaf(w->down_b, device), Leaf(w->up_w, device), Leaf(w->up_b, device)});
    }
  }
  return std::unique_ptr<TrainableAdapter>(new BottleneckTrainable(
      ctx, std::move(sites), init->input_includes_residual, activation, root["config"]));
}

// One FusionLayer per layer where every child has an output-site adapter.
struct FusionParams {
  int layer = 0;
  at::Tensor query_w, query_b, key_w, key_b, value_w;
};

class FusionTrainable final : public TrainableAdapter {
 public:
  FusionTrainable(const TrainContext& ctx, std::vector<std::shared_ptr<const Adapter>> children,
                  std::vector<FusionParams> layers)
      : ctx_(ctx), children_(std::move(children)), layers_(std::move(layers)) {
    for (const FusionChild& c : ctx.spec->fusion.children) names_.push_back(c.name);
  }

  std::vector<NamedParameter> parameters() override {
    std::vector<NamedParameter> out;
    const std::string fusion = absl::StrJoin(names_, ",");
    for (const FusionParams& f : layers_) {
      const std::string key = absl::StrCat(LayerKey(*ctx_.model, f.layer),
                                           ".output_adapters.adapter_fusion_layer.", fusion, ".");
      out.push_back({key + "query.weight", f.query_w, true});
      out.push_back({key + "query.bias", f.query_b, false});
      out.push_back({key + "key.weight", f.key_w, true});
      out.push_back({key + "key.bias", f.key_b, false});
      out.push_back({key + "value.weight", f.value_w, true});
    }
    return out;
  }

  std::shared_ptr<const Adapter> Build(bool /*training*/) override {
    auto adapter = std::make_shared<Adapter>();
    adapter->name = ctx_.spec->adapter_name;
    adapter->method = AdapterMethod::kFusion;
    adapter->children = children_;
    adapter->fusion.resize(ctx_.model->config().num_layers);
    for (const FusionParams& f : layers_) {
      adapter->fusion[f.layer] = FusionLayer{f.query_w, f.query_b, f.key_w, f.key_b, f.value_w};
    }
    return adapter;
  }

  // AdapterHub's get_fusion_regularization_loss: 0.01 · Σ_layers ||I − V||².
  // (AdapterHub's trainer back-propagates it in on_step_end, after the
  // optimizer step, so its gradient lands in the next step; here it is part
  // of the step's own loss, as the AdapterFusion paper defines it.)
  at::Tensor ExtraLoss() override {
    if (layers_.empty()) return at::Tensor();
    const int64_t d = ctx_.model->config().hidden_size;
    at::Tensor eye = at::eye(d, at::TensorOptions().dtype(at::kFloat).device(ctx_.model->device()));
    at::Tensor total;
    for (const FusionParams& f : layers_) {
      at::Tensor term = (eye - f.value_w).pow(2).sum() * 0.01;
      total = total.defined() ? total + term : term;
    }
    return total;
  }

  absl::Status Export(const std::string& dir) override {
    std::vector<SafetensorsTensor> tensors;
    for (const NamedParameter& p : parameters()) tensors.push_back(ToSafetensorsF32(p.name, p.tensor));
    ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors));
    RETURN_IF_ERROR(WriteFileSynced(dir + "/model_adapter_fusion.safetensors", bytes));
    Json root = HubRoot(*ctx_.model, absl::StrJoin(names_, ","));
    root["adapter_names"] = names_;
    root["config"] = Json{{"dropout_prob", nullptr},       {"key", true},
                          {"query", true},                 {"query_before_ln", false},
                          {"regularization", true},        {"residual_before", false},
                          {"temperature", false},          {"value", true},
                          {"value_before_softmax", true},  {"value_initialized", true}};
    RETURN_IF_ERROR(WriteFileSynced(dir + "/adapter_fusion_config.json", root.dump(2)));
    for (const FusionChild& c : ctx_.spec->fusion.children) {
      RETURN_IF_ERROR(CopyFlatDir(c.dir, dir + "/" + c.name));
    }
    return SyncDir(dir);
  }

 private:
  TrainContext ctx_;
  std::vector<std::shared_ptr<const Adapter>> children_;
  std::vector<FusionParams> layers_;
  std::vector<std::string> names_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeBottleneckTrainable(const TrainContext& ctx) {
  if (!ctx.spec->init_adapter_dir.empty()) return BottleneckFromInitDir(ctx);
  const BottleneckTrainConfig& c = ctx.spec->bottleneck;
  if (c.config != "pfeiffer" && c.config != "houlsby") {
    return absl::InvalidArgumentError(absl::StrCat("unknown bottleneck config \"", c.config,
                                                   "\" (expected pfeiffer or houlsby)"));
  }
  const bool pfeiffer = c.config == "pfeiffer";
  const int64_t d = ctx.model->config().hidden_size;
  if (c.reduction_factor < 1 || c.reduction_factor > d) {
    return absl::InvalidArgumentError(absl::StrCat("reduction_factor must be in [1, ", d,
                                                   "], got ", c.reduction_factor));
  }
  const std::string activation = c.activation.empty() ? (pfeiffer ? "relu" : "swish") : c.activation;
  static const char* const kActivations[] = {"relu", "swish", "gelu", "gelu_new", "tanh", "leakyrelu"};
  bool known = false;
  for (const char* a : kActivations) known |= activation == a;
  if (!known) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown activation \"", activation, "\" (relu, swish, gelu, gelu_new, tanh, leakyrelu)"));
  }
  if (c.init_weights != "bert" && c.init_weights != "houlsby" && c.init_weights != "mam_adapter") {
    return absl::InvalidArgumentError(absl::StrCat("unknown init_weights \"", c.init_weights,
                                                   "\" (bert, houlsby or mam_adapter)"));
  }
  const int64_t m = std::max<int64_t>(1, d / c.reduction_factor);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(ctx.spec->hyper.seed);
  const at::Device device = ctx.model->device();
  std::vector<Site> sites;
  for (int64_t l = 0; l < ctx.model->config().num_layers; ++l) {
    for (bool attention : {true, false}) {
      if (attention && pfeiffer) continue;
      Site s;
      s.layer = static_cast<int>(l);
      s.attention = attention;
      s.down_b = at::zeros({m}, at::kFloat);
      s.up_b = at::zeros({d}, at::kFloat);
      if (c.init_weights == "bert") {
        s.down_w = at::empty({m, d}, at::kFloat).normal_(0.0, 0.02, gen);
        s.up_w = at::empty({d, m}, at::kFloat).normal_(0.0, 0.02, gen);
      } else if (c.init_weights == "houlsby") {
        s.down_w = TruncNormal({m, d}, 1e-2, -2e-2, 2e-2, gen);
        s.up_w = TruncNormal({d, m}, 1e-2, -2e-2, 2e-2, gen);
      } else {  // mam_adapter: kaiming_uniform_(a=sqrt(5)) down, zero up.
        const double bound = 1.0 / std::sqrt(static_cast<double>(d));
        s.down_w = at::empty({m, d}, at::kFloat).uniform_(-bound, bound, gen);
        s.up_w = at::zeros({d, m}, at::kFloat);
      }
      for (at::Tensor* t : {&s.down_w, &s.down_b, &s.up_w, &s.up_b}) *t = Leaf(*t, device);
      sites.push_back(std::move(s));
    }
  }
  return std::unique_ptr<TrainableAdapter>(new BottleneckTrainable(
      ctx, std::move(sites), pfeiffer, activation,
      BnConfig(pfeiffer, c.reduction_factor, activation, c.init_weights)));
}

absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeFusionTrainable(const TrainContext& ctx) {
  const FusionTrainConfig& c = ctx.spec->fusion;
  if (c.children.size() < 2) {
    return absl::InvalidArgumentError("fusion needs two or more adapters to fuse");
  }
  std::vector<std::shared_ptr<const Adapter>> children;
  for (const FusionChild& child : c.children) {
    if (child.name.empty() || child.name.find_first_of("/,") != std::string::npos ||
        child.name == "." || child.name == "..") {
      return absl::InvalidArgumentError(absl::StrCat("bad fused adapter name \"", child.name, "\""));
    }
    absl::StatusOr<std::shared_ptr<const Adapter>> a =
        LoadAdapter(child.name, child.dir, *ctx.model, AdapterLoadOptions());
    if (!a.ok()) {
      return absl::Status(a.status().code(), absl::StrCat("fused adapter \"", child.name,
                                                          "\": ", a.status().message()));
    }
    bool attention_sites = false;
    for (const auto& s : (*a)->attn_site) attention_sites |= s.has_value();
    if ((*a)->method != AdapterMethod::kBottleneck || !(*a)->input_includes_residual ||
        attention_sites) {
      return absl::FailedPreconditionError(
          absl::StrCat("fused adapter \"", child.name,
                       "\" is not a Pfeiffer (output-site) bottleneck adapter"));
    }
    children.push_back(std::move(*a));
  }
  const at::Device device = ctx.model->device();
  const int64_t d = ctx.model->config().hidden_size;
  std::shared_ptr<const Adapter> init;
  if (!ctx.spec->init_adapter_dir.empty()) {
    ASSIGN_OR_RETURN(init, LoadAdapter("init", ctx.spec->init_adapter_dir, *ctx.model,
                                       AdapterLoadOptions()));
    if (init->method != AdapterMethod::kFusion) {
      return absl::InvalidArgumentError("init_adapter_dir does not hold an AdapterFusion");
    }
  }
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(ctx.spec->hyper.seed);
  std::vector<FusionParams> layers;
  for (int64_t l = 0; l < ctx.model->config().num_layers; ++l) {
    bool all = true;
    for (const auto& child : children) all = all && child->ffn_site[l].has_value();
    if (!all) continue;
    FusionParams f;
    f.layer = static_cast<int>(l);
    if (init != nullptr) {
      if (init->fusion.size() <= static_cast<size_t>(l) || !init->fusion[l].has_value()) {
        return absl::FailedPreconditionError(
            absl::StrCat("init_adapter_dir has no AdapterFusion weights at layer ", l));
      }
      const FusionLayer& fl = *init->fusion[l];
      f.query_w = fl.query_w, f.query_b = fl.query_b, f.key_w = fl.key_w, f.key_b = fl.key_b;
      f.value_w = fl.value_w;
    } else {
      // AdapterHub's "dynamic" fusion: query and key N(0, 0.02) with zero
      // bias; value the identity plus 1e-6 off the diagonal.
      f.query_w = at::empty({d, d}, at::kFloat).normal_(0.0, 0.02, gen);
      f.query_b = at::zeros({d}, at::kFloat);
      f.key_w = at::empty({d, d}, at::kFloat).normal_(0.0, 0.02, gen);
      f.key_b = at::zeros({d}, at::kFloat);
      f.value_w = at::full({d, d}, 1e-6, at::kFloat).fill_diagonal_(1.0);
    }
    for (at::Tensor* t : {&f.query_w, &f.query_b, &f.key_w, &f.key_b, &f.value_w}) *t = Leaf(*t, device);
    layers.push_back(std::move(f));
  }
  if (layers.empty()) {
    return absl::FailedPreconditionError("the fused adapters share no layer");
  }
  return std::unique_ptr<TrainableAdapter>(
      new FusionTrainable(ctx, std::move(children), std::move(layers)));
}

}  // namespace adapterd
