// The prompt-learning trainables: prefix tuning, P-tuning and prompt tuning,
// mirroring HF PEFT 0.21.2 (tuners/prefix_tuning/model.py PrefixEncoder,
// tuners/p_tuning/model.py PromptEncoder, tuners/prompt_tuning/model.py
// PromptEmbedding, peft_model.py get_prompt): the same parameters under the
// same names, the same forward, and the files PEFT writes. See
// docs/training.md.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/core/grad_mode.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/model/causal_lm.h"
#include "engine/model/safetensors.h"
#include "engine/model/tokenizer.h"
#include "engine/peft/adapter.h"
#include "engine/training/trainable.h"

namespace adapterd {
namespace {

using json = nlohmann::json;

// The PEFT release whose files the exports reproduce.
constexpr char kPeftVersion[] = "0.21.2";
constexpr char kAdapterConfigFile[] = "adapter_config.json";
constexpr char kAdapterWeightsFile[] = "adapter_model.safetensors";

// How a fresh parameter is drawn, as torch.nn initialises the module that
// owns it in PEFT.
enum class InitKind {
  kNormal,   // nn.Embedding: N(0, 1).
  kUniform,  // nn.Linear (kaiming_uniform a=√5 and its bias), nn.LSTM: U(-bound, bound).
};

struct ParamSpec {
  std::string name;  // PEFT's, below prompt_encoder.<adapter>.
  std::vector<int64_t> shape;
  InitKind init = InitKind::kNormal;
  double bound = 0.0;  // kUniform.
  bool weight_decay = true;
};

ParamSpec Embedding(std::string name, int64_t rows, int64_t dim) {
  return {std::move(name), {rows, dim}, InitKind::kNormal, 0.0, false};
}

// nn.Linear(in, out) as "<prefix>.weight" and "<prefix>.bias": both
// U(±1/√in).
void AddLinear(std::vector<ParamSpec>& specs, const std::string& prefix, int64_t in, int64_t out) {
  const double bound = 1.0 / std::sqrt(static_cast<double>(in));
  specs.push_back({prefix + ".weight", {out, in}, InitKind::kUniform, bound, true});
  specs.push_back({prefix + ".bias", {out}, InitKind::kUniform, bound, false});
}

at::Tensor Linear(const at::Tensor& x, const std::map<std::string, at::Tensor>& p,
                  const std::string& prefix) {
  return at::linear(x, p.at(prefix + ".weight"), p.at(prefix + ".bias"));
}

absl::Status Invalid(const std::string& what) { return absl::InvalidArgumentError(what); }

// Every tensor of a safetensors file, as float32 on the CPU.
absl::StatusOr<std::map<std::string, at::Tensor>> ReadFloatTensors(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file, SafetensorsFile::Open(path));
  std::map<std::string, at::Tensor> out;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    at::ScalarType type;
    if (info.dtype == "F32") {
      type = at::kFloat;
    } else if (info.dtype == "F16") {
      type = at::kHalf;
    } else if (info.dtype == "BF16") {
      type = at::kBFloat16;
    } else if (info.dtype == "F64") {
      type = at::kDouble;
    } else {
      return Invalid(absl::StrCat(path, ": tensor '", info.name, "' has dtype ", info.dtype,
                                  " (F32, F16, BF16 or F64 expected)"));
    }
    std::string_view bytes = file->Data(info);
    at::Tensor t =
        at::from_blob(const_cast<char*>(bytes.data()), info.shape, at::TensorOptions().dtype(type))
            .to(at::kFloat, /*non_blocking=*/false, /*copy=*/true);
    if (!at::isfinite(t).all().item<bool>()) {
      return Invalid(absl::StrCat(path, ": tensor '", info.name, "' has non-finite values"));
    }
    out.emplace(info.name, std::move(t));
  }
  return out;
}

absl::StatusOr<json> ReadJsonFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, " does not exist or cannot be read"));
  std::ostringstream buf;
  buf << in.rdbuf();
  json j = json::parse(buf.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return Invalid(absl::StrCat(path, " is not a JSON object"));
  return j;
}

SafetensorsTensor ToSafetensors(const std::string& name, const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  SafetensorsTensor out;
  out.name = name;
  out.dtype = "F32";
  out.shape = c.sizes().vec();
  out.data.assign(static_cast<const char*>(c.data_ptr()), c.numel() * sizeof(float));
  return out;
}

bool FileExists(const std::string& path) { return std::ifstream(path).good(); }

// What the three methods share: named fp32 leaves, an encoder that maps them
// to the virtual tokens' values E [P, width] (PEFT's prompt_encoder(arange(P))
// with batch 1), and PEFT's export of E as prompt_embeddings.
class PromptLearningTrainable : public TrainableAdapter {
 public:
  std::vector<NamedParameter> parameters() override { return params_; }
  int virtual_tokens() const override { return static_cast<int>(num_virtual_tokens_); }

  std::shared_ptr<const Adapter> Build(bool training) override {
    auto adapter = std::make_shared<Adapter>();
    adapter->name = spec().adapter_name;
    adapter->method = method_;
    const at::Tensor e = Encode(training);
    const ModelConfig& c = model_->config();
    const at::ScalarType dtype = model_->dtype();
    if (method_ == AdapterMethod::kPrefixTuning) {
      // peft_model.get_prompt's view(B, P, L*2, H_kv, D).permute(2, 0, 3, 1, 4)
      // for B = 1: per layer [H_kv, P, D], keys at 2l and values at 2l+1.
      const at::Tensor pkv = e.view({num_virtual_tokens_, c.num_layers * 2, kv_heads_, c.head_dim})
                                 .permute({1, 2, 0, 3});
      for (int64_t l = 0; l < c.num_layers; ++l) {
        adapter->prefix_keys.push_back(pkv[2 * l].to(dtype));
        adapter->prefix_values.push_back(pkv[2 * l + 1].to(dtype));
      }
    } else {
      adapter->prompt = e.to(dtype);
    }
    adapter->num_bytes = e.numel() * at::elementSize(dtype);
    return adapter;
  }

  absl::Status Export(const std::string& dir) override {
    try {
      at::NoGradGuard no_grad;
      const at::Tensor e = Encode(/*training=*/false);
      RETURN_IF_ERROR(WriteSafetensors(absl::StrCat(dir, "/", kAdapterWeightsFile),
                                       {ToSafetensors("prompt_embeddings", e)},
                                       {{"format", "pt"}}));
      if (has_encoder_) {
        std::vector<SafetensorsTensor> tensors;
        for (const NamedParameter& p : params_) tensors.push_back(ToSafetensors(p.name, p.tensor));
        RETURN_IF_ERROR(WriteSafetensors(absl::StrCat(dir, "/", kPTuningEncoderFile), tensors,
                                         {{"format", "pt"}, {"peft_type", peft_type_}}));
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(
          absl::StrCat("exporting the adapter: ", e.what_without_backtrace()));
    }
    const std::string path = absl::StrCat(dir, "/", kAdapterConfigFile);
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << PeftConfig().dump(2) << "\n";
    out.close();
    if (!out) return absl::InternalError(absl::StrCat("cannot write ", path));
    return absl::OkStatus();
  }

 protected:
  PromptLearningTrainable(const TrainContext& ctx, AdapterMethod method, std::string peft_type,
                          int64_t num_virtual_tokens)
      : ctx_(ctx),
        model_(ctx.model),
        method_(method),
        peft_type_(std::move(peft_type)),
        num_virtual_tokens_(num_virtual_tokens) {
    const ModelConfig& c = model_->config();
    // PEFT's _prepare_prompt_learning_config: prefixes live in the KV cache,
    // so on models with num_key_value_heads their width is H_kv * head_dim.
    kv_heads_ = c.architecture == Architecture::kGpt2 ? c.num_heads : c.num_kv_heads;
  }

  const TrainingSpec& spec() const { return *ctx_.spec; }

  // E [P, width] in fp32 from the parameters; differentiable.
  virtual at::Tensor Encode(bool training) = 0;
  // The method's fields of adapter_config.json.
  virtual json MethodConfig() const = 0;

  json PeftConfig() const {
    const ModelConfig& c = model_->config();
    json cfg = {
        {"auto_mapping", nullptr},
        {"base_model_name_or_path", nullptr},
        {"inference_mode", true},
        {"modules_to_save", nullptr},
        {"num_attention_heads", c.num_heads},
        {"num_layers", c.num_layers},
        {"num_transformer_submodules", 1},
        {"num_virtual_tokens", num_virtual_tokens_},
        {"peft_type", peft_type_},
        {"peft_version", kPeftVersion},
        {"revision", nullptr},
        {"task_type", "CAUSAL_LM"},
        {"token_dim", c.hidden_size},
    };
    cfg.update(MethodConfig());
    return cfg;
  }

  // Creates the parameters: fresh from the seed, or from spec.init_adapter_dir
  // (the encoder checkpoint when `has_encoder`, else its prompt_embeddings as
  // the one parameter).
  absl::Status InitParameters(std::vector<ParamSpec> specs, bool has_encoder) {
    has_encoder_ = has_encoder;
    std::map<std::string, at::Tensor> given;
    const std::string& dir = spec().init_adapter_dir;
    if (!dir.empty()) {
      ASSIGN_OR_RETURN(json cfg, ReadJsonFile(absl::StrCat(dir, "/", kAdapterConfigFile)));
      if (cfg.value("peft_type", std::string()) != peft_type_) {
        return Invalid(
            absl::StrCat("init_adapter_dir ", dir, " holds a ",
                         cfg.contains("peft_type") ? cfg["peft_type"].dump() : "non-PEFT",
                         " adapter, not ", peft_type_));
      }
      if (has_encoder) {
        const std::string path = absl::StrCat(dir, "/", kPTuningEncoderFile);
        if (!FileExists(path)) {
          return Invalid(absl::StrCat(
              "init_adapter_dir ", dir, " has no ", kPTuningEncoderFile,
              ": PEFT's files keep only the encoder's output, so training can continue only from "
              "an adapter that adapterd trained"));
        }
        ASSIGN_OR_RETURN(given, ReadFloatTensors(path));
      } else {
        ASSIGN_OR_RETURN(auto weights,
                         ReadFloatTensors(absl::StrCat(dir, "/", kAdapterWeightsFile)));
        auto it = weights.find("prompt_embeddings");
        if (it == weights.end()) {
          return Invalid(absl::StrCat("init_adapter_dir ", dir, " has no prompt_embeddings"));
        }
        given.emplace(specs.at(0).name, it->second);
      }
      if (given.size() != specs.size()) {
        std::vector<std::string> names;
        for (const auto& [name, t] : given) names.push_back(name);
        return Invalid(absl::StrCat("init_adapter_dir ", dir, " has the tensors [",
                                    absl::StrJoin(names, ", "), "]; expected ", specs.size(),
                                    " for this configuration"));
      }
    }
    at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(spec().hyper.seed);
    for (const ParamSpec& s : specs) {
      at::Tensor t;
      if (!dir.empty()) {
        auto it = given.find(s.name);
        if (it == given.end()) {
          return Invalid(absl::StrCat("init_adapter_dir ", dir, " lacks tensor '", s.name, "'"));
        }
        if (it->second.sizes().vec() != s.shape) {
          return Invalid(absl::StrCat("init_adapter_dir ", dir, ": tensor '", s.name, "' is [",
                                      absl::StrJoin(it->second.sizes(), ", "), "], expected [",
                                      absl::StrJoin(s.shape, ", "), "] for this configuration"));
        }
        t = it->second;
      } else {
        t = at::empty(s.shape, at::kFloat);
        if (s.init == InitKind::kNormal) {
          t.normal_(0.0, 1.0, gen);
        } else {
          t.uniform_(-s.bound, s.bound, gen);
        }
      }
      SetParam(s, std::move(t));
    }
    return absl::OkStatus();
  }

  // Adds (or replaces, for a computed init) the leaf `s.name` = `value`.
  void SetParam(const ParamSpec& s, at::Tensor value) {
    at::Tensor leaf = value.detach()
                          .to(model_->device(), at::kFloat, /*non_blocking=*/false, /*copy=*/true)
                          .requires_grad_(true);
    for (NamedParameter& p : params_) {
      if (p.name == s.name) {
        p.tensor = leaf;
        by_name_[s.name] = leaf;
        return;
      }
    }
    params_.push_back({s.name, leaf, s.weight_decay});
    by_name_[s.name] = leaf;
  }

  TrainContext ctx_;
  CausalLM* model_;
  AdapterMethod method_;
  std::string peft_type_;
  int64_t num_virtual_tokens_;
  int64_t kv_heads_ = 0;
  bool has_encoder_ = false;
  std::vector<NamedParameter> params_;
  std::map<std::string, at::Tensor> by_name_;
};

// PEFT's PrefixEncoder: an Embedding [P, L*2*token_dim], or with
// prefix_projection Embedding(P, token_dim) → Linear(token_dim, hidden) →
// Tanh → Linear(hidden, L*2*token_dim), where token_dim is the KV width.
class PrefixTrainable final : public PromptLearningTrainable {
 public:
  static absl::StatusOr<std::unique_ptr<TrainableAdapter>> Make(const TrainContext& ctx) {
    const PrefixTrainConfig& cfg = ctx.spec->prefix;
    if (cfg.encoder_hidden_size < 0) {
      return Invalid(
          absl::StrCat("prefix encoder_hidden_size ", cfg.encoder_hidden_size, " is negative"));
    }
    auto t = std::unique_ptr<PrefixTrainable>(new PrefixTrainable(ctx));
    const int64_t p = cfg.num_virtual_tokens, l = ctx.model->config().num_layers;
    std::vector<ParamSpec> specs;
    if (cfg.prefix_projection) {
      specs.push_back(Embedding("embedding.weight", p, t->token_dim_));
      AddLinear(specs, "transform.0", t->token_dim_, t->encoder_hidden_);
      AddLinear(specs, "transform.2", t->encoder_hidden_, l * 2 * t->token_dim_);
    } else {
      specs.push_back(Embedding("embedding.weight", p, l * 2 * t->token_dim_));
    }
    RETURN_IF_ERROR(t->InitParameters(std::move(specs), /*has_encoder=*/cfg.prefix_projection));
    return std::unique_ptr<TrainableAdapter>(std::move(t));
  }

 private:
  explicit PrefixTrainable(const TrainContext& ctx)
      : PromptLearningTrainable(ctx, AdapterMethod::kPrefixTuning, "PREFIX_TUNING",
                                ctx.spec->prefix.num_virtual_tokens) {
    token_dim_ = kv_heads_ * model_->config().head_dim;
    encoder_hidden_ = ctx.spec->prefix.encoder_hidden_size > 0
                          ? ctx.spec->prefix.encoder_hidden_size
                          : token_dim_;  // PEFT's default: token_dim.
  }

  at::Tensor Encode(bool /*training*/) override {
    const at::Tensor& emb = by_name_.at("embedding.weight");
    if (!has_encoder_) return emb;
    return Linear(at::tanh(Linear(emb, by_name_, "transform.0")), by_name_, "transform.2");
  }

  json MethodConfig() const override {
    return {{"encoder_hidden_size", encoder_hidden_},
            {"init_weights", nullptr},
            {"num_attention_heads", kv_heads_},
            {"prefix_projection", spec().prefix.prefix_projection},
            {"token_dim", token_dim_}};
  }

  int64_t token_dim_ = 0;
  int64_t encoder_hidden_ = 0;
};

// PEFT's PromptEncoder: Embedding(P, hidden), then MLP (Linear-ReLU-Linear-
// ReLU-Linear) or a bidirectional LSTM with an MLP head
// (Linear(2h, 2h)-ReLU-Linear(2h, hidden)).
class PTuningTrainable final : public PromptLearningTrainable {
 public:
  static absl::StatusOr<std::unique_ptr<TrainableAdapter>> Make(const TrainContext& ctx) {
    const PTuningTrainConfig& cfg = ctx.spec->p_tuning;
    if (cfg.encoder_type != "MLP" && cfg.encoder_type != "LSTM") {
      return Invalid(
          absl::StrCat("p_tuning encoder_type \"", cfg.encoder_type, "\" is not MLP or LSTM"));
    }
    if (cfg.encoder_hidden_size < 0) {
      return Invalid(
          absl::StrCat("p_tuning encoder_hidden_size ", cfg.encoder_hidden_size, " is negative"));
    }
    if (cfg.encoder_type == "LSTM" && cfg.encoder_num_layers < 1) {
      return Invalid(absl::StrCat("p_tuning encoder_num_layers ", cfg.encoder_num_layers,
                                  " must be at least 1"));
    }
    if (!(cfg.encoder_dropout >= 0.0 && cfg.encoder_dropout < 1.0)) {
      return Invalid(
          absl::StrCat("p_tuning encoder_dropout ", cfg.encoder_dropout, " is outside [0, 1)"));
    }
    auto t = std::unique_ptr<PTuningTrainable>(new PTuningTrainable(ctx));
    const int64_t d = ctx.model->config().hidden_size, h = t->hidden_;
    std::vector<ParamSpec> specs = {Embedding("embedding.weight", cfg.num_virtual_tokens, d)};
    if (t->lstm_) {
      // nn.LSTM's parameters in its order (layer, then direction), all
      // U(±1/√h); at::lstm takes them in the same order.
      const double bound = 1.0 / std::sqrt(static_cast<double>(h));
      for (int l = 0; l < cfg.encoder_num_layers; ++l) {
        for (const char* dir : {"", "_reverse"}) {
          const std::string sfx = absl::StrCat("_l", l, dir);
          const int64_t in = l == 0 ? d : 2 * h;
          specs.push_back(
              {"lstm_head.weight_ih" + sfx, {4 * h, in}, InitKind::kUniform, bound, true});
          specs.push_back(
              {"lstm_head.weight_hh" + sfx, {4 * h, h}, InitKind::kUniform, bound, true});
          specs.push_back({"lstm_head.bias_ih" + sfx, {4 * h}, InitKind::kUniform, bound, false});
          specs.push_back({"lstm_head.bias_hh" + sfx, {4 * h}, InitKind::kUniform, bound, false});
        }
      }
      AddLinear(specs, "mlp_head.0", 2 * h, 2 * h);
      AddLinear(specs, "mlp_head.2", 2 * h, d);
    } else {
      AddLinear(specs, "mlp_head.0", d, h);
      AddLinear(specs, "mlp_head.2", h, h);
      AddLinear(specs, "mlp_head.4", h, d);
    }
    RETURN_IF_ERROR(t->InitParameters(std::move(specs), /*has_encoder=*/true));
    for (const NamedParameter& p : t->params_) {
      if (p.name.rfind("lstm_head.", 0) == 0) t->lstm_params_.push_back(p.tensor);
    }
    return std::unique_ptr<TrainableAdapter>(std::move(t));
  }

 private:
  explicit PTuningTrainable(const TrainContext& ctx)
      : PromptLearningTrainable(ctx, AdapterMethod::kPTuning, "P_TUNING",
                                ctx.spec->p_tuning.num_virtual_tokens),
        lstm_(ctx.spec->p_tuning.encoder_type == "LSTM"),
        hidden_(ctx.spec->p_tuning.encoder_hidden_size > 0 ? ctx.spec->p_tuning.encoder_hidden_size
                                                           : ctx.model->config().hidden_size) {}

  at::Tensor Encode(bool training) override {
    const at::Tensor& emb = by_name_.at("embedding.weight");
    if (!lstm_) {
      at::Tensor x = at::relu(Linear(emb, by_name_, "mlp_head.0"));
      x = at::relu(Linear(x, by_name_, "mlp_head.2"));
      return Linear(x, by_name_, "mlp_head.4");
    }
    const PTuningTrainConfig& cfg = spec().p_tuning;
    const int64_t layers = cfg.encoder_num_layers;
    const at::Tensor h0 = at::zeros({2 * layers, 1, hidden_}, emb.options());
    // batch_first [1, P, hidden] → outputs [1, P, 2h] (forward ‖ reverse).
    at::Tensor out = std::get<0>(at::lstm(emb.unsqueeze(0), {h0, h0}, lstm_params_,
                                          /*has_biases=*/true, layers, cfg.encoder_dropout,
                                          /*train=*/training, /*bidirectional=*/true,
                                          /*batch_first=*/true))
                         .squeeze(0);
    return Linear(at::relu(Linear(out, by_name_, "mlp_head.0")), by_name_, "mlp_head.2");
  }

  json MethodConfig() const override {
    const PTuningTrainConfig& cfg = spec().p_tuning;
    return {{"encoder_dropout", cfg.encoder_dropout},
            {"encoder_hidden_size", hidden_},
            {"encoder_num_layers", cfg.encoder_num_layers},
            {"encoder_reparameterization_type", cfg.encoder_type}};
  }

  bool lstm_;
  int64_t hidden_;
  std::vector<at::Tensor> lstm_params_;
};

// PEFT's PromptEmbedding: Embedding(P, hidden) initialised RANDOM (N(0, 1)),
// SAMPLE_VOCAB (rows of random vocabulary ids) or TEXT (rows of the init
// text's ids, with special tokens, cut or repeated to P).
class PromptTuningTrainable final : public PromptLearningTrainable {
 public:
  static absl::StatusOr<std::unique_ptr<TrainableAdapter>> Make(const TrainContext& ctx) {
    const PromptTuningTrainConfig& cfg = ctx.spec->prompt_tuning;
    if (cfg.init != "RANDOM" && cfg.init != "SAMPLE_VOCAB" && cfg.init != "TEXT") {
      return Invalid(absl::StrCat("prompt_tuning init \"", cfg.init,
                                  "\" is not RANDOM, SAMPLE_VOCAB or TEXT"));
    }
    auto t = std::unique_ptr<PromptTuningTrainable>(new PromptTuningTrainable(ctx));
    const ParamSpec emb =
        Embedding("embedding.weight", cfg.num_virtual_tokens, ctx.model->config().hidden_size);
    RETURN_IF_ERROR(t->InitParameters({emb}, /*has_encoder=*/false));
    if (ctx.spec->init_adapter_dir.empty() && cfg.init != "RANDOM") {
      const int64_t p = cfg.num_virtual_tokens;
      const at::Tensor& words = ctx.model->input_embeddings();
      at::Tensor ids;
      if (cfg.init == "SAMPLE_VOCAB") {
        at::Generator gen = at::make_generator<at::CPUGeneratorImpl>(ctx.spec->hyper.seed);
        ids = at::randint(words.size(0), {p}, gen, at::TensorOptions().dtype(at::kLong));
      } else {
        std::vector<int32_t> text =
            ctx.tokenizer->Encode(cfg.init_text, /*add_special_tokens=*/true);
        if (cfg.init_text.empty() || text.empty()) {
          return Invalid("prompt_tuning init TEXT needs an init_text that has tokens");
        }
        std::vector<int64_t> cut;
        for (int64_t i = 0; i < p; ++i) cut.push_back(text[i % text.size()]);
        for (int64_t id : cut) {
          if (id >= words.size(0)) {
            return Invalid(
                absl::StrCat("init_text token id ", id, " is outside the model's embeddings"));
          }
        }
        ids = at::tensor(cut, at::kLong);
      }
      t->SetParam(emb, words.index_select(0, ids.to(words.device())).to(at::kFloat));
    }
    return std::unique_ptr<TrainableAdapter>(std::move(t));
  }

 private:
  explicit PromptTuningTrainable(const TrainContext& ctx)
      : PromptLearningTrainable(ctx, AdapterMethod::kPromptTuning, "PROMPT_TUNING",
                                ctx.spec->prompt_tuning.num_virtual_tokens) {}

  at::Tensor Encode(bool /*training*/) override { return by_name_.at("embedding.weight"); }

  json MethodConfig() const override {
    const PromptTuningTrainConfig& cfg = spec().prompt_tuning;
    // PEFT refuses a TEXT config without tokenizer_name_or_path when it loads
    // the files, and the init matters only at creation: TEXT is recorded as
    // RANDOM (see docs/training.md).
    const bool text = cfg.init == "TEXT";
    return {{"prompt_tuning_init", text ? "RANDOM" : cfg.init},
            {"prompt_tuning_init_text", nullptr},
            {"tokenizer_kwargs", nullptr},
            {"tokenizer_name_or_path", nullptr}};
  }
};

absl::Status CheckContext(const TrainContext& ctx, int num_virtual_tokens) {
  if (ctx.model == nullptr || ctx.tokenizer == nullptr || ctx.spec == nullptr) {
    return Invalid("training context lacks the model, tokenizer or spec");
  }
  if (num_virtual_tokens < 1) {
    return Invalid(absl::StrCat("num_virtual_tokens ", num_virtual_tokens, " must be at least 1"));
  }
  if (num_virtual_tokens >= ctx.spec->hyper.max_seq_length) {
    return Invalid(absl::StrCat("num_virtual_tokens ", num_virtual_tokens,
                                " leaves no room in max_seq_length ",
                                ctx.spec->hyper.max_seq_length));
  }
  return absl::OkStatus();
}

template <typename T>
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeGuarded(const TrainContext& ctx,
                                                              int num_virtual_tokens) {
  RETURN_IF_ERROR(CheckContext(ctx, num_virtual_tokens));
  try {
    return T::Make(ctx);
  } catch (const c10::Error& e) {
    return absl::InternalError(e.what_without_backtrace());
  }
}

}  // namespace

absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakePrefixTrainable(const TrainContext& ctx) {
  return MakeGuarded<PrefixTrainable>(ctx, ctx.spec ? ctx.spec->prefix.num_virtual_tokens : 0);
}

absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakePTuningTrainable(const TrainContext& ctx) {
  return MakeGuarded<PTuningTrainable>(ctx, ctx.spec ? ctx.spec->p_tuning.num_virtual_tokens : 0);
}

absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakePromptTuningTrainable(
    const TrainContext& ctx) {
  return MakeGuarded<PromptTuningTrainable>(
      ctx, ctx.spec ? ctx.spec->prompt_tuning.num_virtual_tokens : 0);
}

}  // namespace adapterd
