// LoRA as a TrainableAdapter: A [r, in] and B [out, r] per targeted module,
// served through the same LoraWeights (engine/peft) that inference uses.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <cmath>
#include <fstream>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
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

// PEFT's list form of target_modules: an entry matches a module whose full
// name equals it or ends with "." + entry; "all-linear" matches every linear
// layer of the blocks (the output head is never targeted).
bool Targets(const std::string& entry, const std::string& module_name) {
  if (entry == "all-linear") return true;
  return module_name == entry || absl::EndsWith(module_name, "." + entry);
}

// The PEFT key prefix of layer `l`'s module `name` ("self_attn.q_proj").
std::string PeftModuleKey(const CausalLM& model, int64_t l, const std::string& name) {
  const bool gpt2 = model.config().architecture == Architecture::kGpt2;
  return absl::StrCat(gpt2 ? "base_model.model.transformer.h." : "base_model.model.model.layers.",
                      l, ".", name);
}

struct Module {
  int layer = 0;
  int module = 0;
  at::Tensor a, b;
  double scaling = 1.0;
};

class LoraTrainable final : public TrainableAdapter {
 public:
  LoraTrainable(const TrainContext& ctx, std::vector<Module> modules, Json config)
      : ctx_(ctx), modules_(std::move(modules)), config_(std::move(config)) {}

  std::vector<NamedParameter> parameters() override {
    std::vector<NamedParameter> out;
    const auto& names = LinearModuleNames(*ctx_.model);
    for (const Module& m : modules_) {
      const std::string key = PeftModuleKey(*ctx_.model, m.layer, names[m.module]);
      out.push_back({key + ".lora_A.weight", m.a, true});
      out.push_back({key + ".lora_B.weight", m.b, true});
    }
    return out;
  }

  std::shared_ptr<const Adapter> Build(bool training) override {
    auto adapter = std::make_shared<Adapter>();
    adapter->name = ctx_.spec->adapter_name;
    adapter->method = AdapterMethod::kLora;
    adapter->lora.assign(ctx_.model->config().num_layers,
                         std::vector<std::optional<LoraWeights>>(lora_module::kMaxModules));
    for (const Module& m : modules_) {
      LoraWeights w;
      w.a = m.a;
      w.b = m.b;
      w.scaling = m.scaling;
      w.rank = m.a.size(0);
      w.train_dropout = training ? ctx_.spec->lora.dropout : 0.0;
      adapter->lora[m.layer][m.module] = std::move(w);
    }
    return adapter;
  }

  absl::Status Export(const std::string& dir) override {
    std::vector<SafetensorsTensor> tensors;
    for (const NamedParameter& p : parameters()) tensors.push_back(ToSafetensorsF32(p.name, p.tensor));
    ASSIGN_OR_RETURN(std::string bytes, SerializeSafetensors(tensors, {{"format", "pt"}}));
    RETURN_IF_ERROR(WriteFileSynced(dir + "/adapter_model.safetensors", bytes));
    return WriteFileSynced(dir + "/adapter_config.json", config_.dump(2));
  }

 private:
  TrainContext ctx_;
  std::vector<Module> modules_;
  Json config_;
};

// The adapter_config.json PEFT writes for a fresh LoraConfig (the fields
// PEFT 0.21 reads; the rest take its defaults). Like PEFT, "all-linear" is
// saved expanded to the module names it matched.
Json FreshConfig(const TrainContext& ctx, const std::vector<bool>& targeted) {
  const LoraTrainConfig& c = ctx.spec->lora;
  const bool gpt2 = ctx.model->config().architecture == Architecture::kGpt2;
  const std::vector<std::string>& names = LinearModuleNames(*ctx.model);
  Json targets = Json::array();
  bool all_linear = false;
  for (const std::string& t : c.target_modules) all_linear |= t == "all-linear";
  if (all_linear) {
    std::set<std::string> leaves;
    for (size_t m = 0; m < names.size(); ++m) {
      if (targeted[m]) leaves.insert(names[m].substr(names[m].rfind('.') + 1));
    }
    for (const std::string& leaf : leaves) targets.push_back(leaf);
  } else {
    for (const std::string& t : c.target_modules) targets.push_back(t);
  }
  return Json{{"peft_type", "LORA"},
              {"task_type", "CAUSAL_LM"},
              {"r", c.rank},
              {"lora_alpha", c.alpha},
              {"lora_dropout", c.dropout},
              {"use_rslora", c.use_rslora},
              {"use_dora", false},
              {"lora_bias", false},
              {"bias", "none"},
              {"fan_in_fan_out", gpt2},
              {"init_lora_weights", true},
              {"inference_mode", true},
              {"target_modules", targets},
              {"rank_pattern", Json::object()},
              {"alpha_pattern", Json::object()},
              {"modules_to_save", nullptr},
              {"layers_to_transform", nullptr},
              {"layers_pattern", nullptr}};
}

absl::StatusOr<std::unique_ptr<TrainableAdapter>> FromInitDir(const TrainContext& ctx) {
  const std::string& dir = ctx.spec->init_adapter_dir;
  ASSIGN_OR_RETURN(std::shared_ptr<const Adapter> init,
                   LoadAdapter("init", dir, *ctx.model, AdapterLoadOptions()));
  if (init->method != AdapterMethod::kLora) {
    return absl::InvalidArgumentError(absl::StrCat("init_adapter_dir holds a ",
                                                   AdapterMethodName(init->method),
                                                   " adapter, not a LoRA adapter"));
  }
  std::vector<Module> modules;
  for (size_t l = 0; l < init->lora.size(); ++l) {
    for (size_t m = 0; m < init->lora[l].size(); ++m) {
      const std::optional<LoraWeights>& w = init->lora[l][m];
      if (!w.has_value()) continue;
      if (w->dora_scale.defined() || w->b_bias.defined()) {
        return absl::InvalidArgumentError(
            "init_adapter_dir: training DoRA or lora_bias adapters is not supported");
      }
      Module mod;
      mod.layer = static_cast<int>(l);
      mod.module = static_cast<int>(m);
      mod.a = w->a.to(ctx.model->device(), at::kFloat).clone().set_requires_grad(true);
      mod.b = w->b.to(ctx.model->device(), at::kFloat).clone().set_requires_grad(true);
      mod.scaling = w->scaling;
      modules.push_back(std::move(mod));
    }
  }
  // The output keeps the initial adapter's configuration (targets, ranks, alphas).
  std::ifstream in(dir + "/adapter_config.json");
  std::stringstream text;
  text << in.rdbuf();
  Json config = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("init_adapter_dir: cannot parse ", dir, "/adapter_config.json"));
  }
  config["inference_mode"] = true;
  return std::unique_ptr<TrainableAdapter>(
      new LoraTrainable(ctx, std::move(modules), std::move(config)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeLoraTrainable(const TrainContext& ctx) {
  const LoraTrainConfig& c = ctx.spec->lora;
  if (!ctx.spec->init_adapter_dir.empty()) return FromInitDir(ctx);
  if (c.rank < 1 || c.rank > 1024) {
    return absl::InvalidArgumentError(absl::StrCat("lora rank must be in [1, 1024], got ", c.rank));
  }
  if (!(c.alpha > 0) || !std::isfinite(c.alpha)) {
    return absl::InvalidArgumentError("lora alpha must be positive");
  }
  if (!(c.dropout >= 0 && c.dropout < 1)) {
    return absl::InvalidArgumentError("lora dropout must be in [0, 1)");
  }
  if (c.target_modules.empty()) {
    return absl::InvalidArgumentError("lora target_modules is empty");
  }
  CausalLM& model = *ctx.model;
  const std::vector<std::string>& names = LinearModuleNames(model);
  std::vector<bool> targeted(names.size(), false);
  for (const std::string& entry : c.target_modules) {
    bool found = false;
    for (size_t m = 0; m < names.size(); ++m) {
      if (Targets(entry, names[m])) targeted[m] = found = true;
    }
    if (!found) {
      return absl::FailedPreconditionError(
          absl::StrCat("lora target module \"", entry, "\" is not in the model (its modules: ",
                       absl::StrJoin(names, ", "), ", or all-linear)"));
    }
  }
  const double scaling = c.use_rslora ? c.alpha / std::sqrt(static_cast<double>(c.rank))
                                      : c.alpha / static_cast<double>(c.rank);
  at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(ctx.spec->hyper.seed);
  std::vector<Module> modules;
  for (int64_t l = 0; l < model.config().num_layers; ++l) {
    for (size_t m = 0; m < names.size(); ++m) {
      if (!targeted[m]) continue;
      LinearRef ref = model.Linear(static_cast<int>(l), static_cast<int>(m));
      if (ref.weight == nullptr) continue;
      int64_t out = ref.weight->size(0), in = ref.weight->size(1);
      if (ref.fan_in_fan_out) std::swap(out, in);
      // kaiming_uniform_(a=sqrt(5)) on [r, in]: U(-1/sqrt(in), 1/sqrt(in)).
      const double bound = 1.0 / std::sqrt(static_cast<double>(in));
      Module mod;
      mod.layer = static_cast<int>(l);
      mod.module = static_cast<int>(m);
      mod.a = at::empty({c.rank, in}, at::kFloat).uniform_(-bound, bound, gen);
      mod.a = mod.a.to(model.device()).set_requires_grad(true);
      mod.b = at::zeros({out, c.rank}, at::TensorOptions().dtype(at::kFloat).device(model.device()))
                  .set_requires_grad(true);
      mod.scaling = scaling;
      modules.push_back(std::move(mod));
    }
  }
  return std::unique_ptr<TrainableAdapter>(new LoraTrainable(ctx, std::move(modules), FreshConfig(ctx, targeted)));
}

}  // namespace adapterd
