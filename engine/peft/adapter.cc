// Parsing and validation of adapter directories (HF PEFT and AdapterHub).

#include "engine/peft/adapter.h"

#include <ATen/ATen.h>
#include <sys/stat.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "engine/model/causal_lm.h"
#include "engine/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using Json = nlohmann::ordered_json;

bool IsFile(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool IsDir(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int64_t FileSize(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? static_cast<int64_t>(st.st_size) : -1;
}

absl::StatusOr<Json> ReadJson(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat(path, " not found"));
  std::stringstream text;
  text << in.rdbuf();
  Json j = Json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, " is not a JSON object"));
  }
  return j;
}

// null, false, an empty list/dict/string: the option is off.
bool IsOff(const Json& j) {
  return j.is_null() || (j.is_boolean() && !j.get<bool>()) ||
         ((j.is_array() || j.is_object() || j.is_string()) && j.empty());
}

std::string Dump(const Json& j) { return j.dump(); }

struct Context {
  CausalLM& model;
  const ModelConfig& config;
  const AdapterLoadOptions& options;
  std::string dir;
  bool gpt2 = false;
};

// Opens `dir/file` (safetensors only; a pickle sibling is refused by name).
absl::StatusOr<std::unique_ptr<SafetensorsFile>> OpenWeights(const Context& ctx,
                                                             const std::string& dir,
                                                             const std::string& file,
                                                             const std::string& pickle) {
  const std::string path = dir + "/" + file;
  if (!IsFile(path)) {
    if (IsFile(dir + "/" + pickle)) {
      return absl::InvalidArgumentError(absl::StrCat(
          dir, "/", pickle,
          " is a pickle file, which adapterd never loads: only safetensors is accepted (save with "
          "safe_serialization=True / use_safetensors=True, or convert the file)"));
    }
    return absl::NotFoundError(absl::StrCat("no ", file, " in ", dir));
  }
  const int64_t size = FileSize(path);
  if (size > ctx.options.max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " has ", size, " bytes; the limit is ", ctx.options.max_bytes));
  }
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  if (!f.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("bad safetensors file: ", f.status().message()));
  }
  return f;
}

// The tensor in fp32 on the CPU; refuses non-float dtypes and non-finite values.
absl::StatusOr<at::Tensor> ReadTensor(const SafetensorsFile& file,
                                      const SafetensorsTensorInfo& info) {
  at::ScalarType source;
  if (info.dtype == "F32") {
    source = at::kFloat;
  } else if (info.dtype == "F16") {
    source = at::kHalf;
  } else if (info.dtype == "BF16") {
    source = at::kBFloat16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", info.name, "' has dtype ",
                                                   info.dtype, "; expected F32, F16 or BF16"));
  }
  at::Tensor t = at::empty(info.shape, at::TensorOptions().dtype(source));
  const std::string_view bytes = file.Data(info);
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  t = t.to(at::kFloat);
  if (!at::isfinite(t).all().item<bool>()) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", info.name, "' has non-finite values (NaN or Inf)"));
  }
  return t;
}

std::string ShapeString(const at::Tensor& t) {
  return absl::StrCat("[", absl::StrJoin(t.sizes(), ", "), "]");
}

absl::Status ExpectShape(const at::Tensor& t, const std::vector<int64_t>& shape,
                         const std::string& what) {
  if (t.sizes().vec() != shape) {
    return absl::FailedPreconditionError(absl::StrCat(what, " has shape ", ShapeString(t),
                                                      " but the base model needs [",
                                                      absl::StrJoin(shape, ", "), "]"));
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------- HF PEFT LoRA

// PEFT's module naming, relative to the transformers CausalLM.
std::string FullModuleName(const Context& ctx, int64_t layer, const std::string& module) {
  return ctx.gpt2 ? absl::StrCat("transformer.h.", layer, ".", module)
                  : absl::StrCat("model.layers.", layer, ".", module);
}

absl::StatusOr<bool> TargetMatches(const Json& targets, const std::string& name,
                                   const char* option) {
  if (targets.is_string()) {
    try {
      return std::regex_match(name, std::regex(targets.get<std::string>()));
    } catch (const std::regex_error&) {
      return absl::InvalidArgumentError(
          absl::StrCat(option, " ", Dump(targets), " is not a valid regular expression"));
    }
  }
  if (targets.is_array()) {
    for (const Json& t : targets) {
      if (!t.is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(option, " must hold strings"));
      }
      const std::string e = t.get<std::string>();
      if (name == e || absl::EndsWith(name, "." + e)) return true;
    }
    return false;
  }
  if (targets.is_null()) return false;
  return absl::InvalidArgumentError(absl::StrCat(option, " must be a list or a regex string"));
}

// PEFT's get_pattern_key: the first key k (in file order) with
// re.match(rf"(.*\.)?({k})$", name).
absl::StatusOr<std::optional<double>> PatternValue(const Json& patterns, const std::string& name,
                                                   const char* option) {
  if (patterns.is_null()) return std::nullopt;
  if (!patterns.is_object())
    return absl::InvalidArgumentError(absl::StrCat(option, " must be a dict"));
  for (auto it = patterns.begin(); it != patterns.end(); ++it) {
    try {
      if (std::regex_match(name, std::regex("(.*\\.)?(" + it.key() + ")"))) {
        if (!it.value().is_number()) {
          return absl::InvalidArgumentError(absl::StrCat(option, " values must be numbers"));
        }
        return it.value().get<double>();
      }
    } catch (const std::regex_error&) {
      return absl::InvalidArgumentError(
          absl::StrCat(option, " key '", it.key(), "' is not a valid regular expression"));
    }
  }
  return std::nullopt;
}

// Options PEFT writes with these defaults; any other value is refused.
constexpr const char* kLoraOffOptions[] = {
    "layer_replication", "use_qalora",         "target_parameters",       "alora_invocation_tokens",
    "arrow_config",      "use_bdlora",         "velora_config",           "kasa_config",
    "monteclora_config", "megatron_config",    "trainable_token_indices", "modules_to_save",
    "lora_ga_config",    "ensure_weight_tying"};

absl::Status LoadLora(const Context& ctx, const Json& cfg, Adapter& adapter) {
  for (const char* option : kLoraOffOptions) {
    if (cfg.contains(option) && !IsOff(cfg[option])) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported LoRA option ", option, "=", Dump(cfg[option])));
    }
  }
  if (cfg.contains("bias") && cfg["bias"] != "none") {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported LoRA option bias=", Dump(cfg["bias"]),
                     " (trained base biases); only \"none\""));
  }
  if (cfg.contains("loftq_config") && !IsOff(cfg["loftq_config"])) {
    return absl::InvalidArgumentError(
        "unsupported LoRA option loftq_config (changes base weights)");
  }
  if (cfg.contains("init_lora_weights")) {
    const Json& init = cfg["init_lora_weights"];
    bool ok = init.is_boolean();
    if (init.is_string()) {
      const std::string s = init.get<std::string>();
      ok = s == "gaussian" || s == "eva" || s == "orthogonal";
    }
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported LoRA option init_lora_weights=", Dump(init),
                       " (an init that changes the base weights or the forward pass)"));
    }
  }
  const bool use_dora = cfg.value("use_dora", false);
  const bool lora_bias = cfg.value("lora_bias", false);
  const bool rslora = cfg.value("use_rslora", false);
  if (use_dora && lora_bias) {
    return absl::InvalidArgumentError("unsupported LoRA option lora_bias together with use_dora");
  }
  const bool fan_in_fan_out = cfg.value("fan_in_fan_out", false);
  if (fan_in_fan_out && !ctx.gpt2) {
    return absl::InvalidArgumentError(
        "LoRA option fan_in_fan_out=true does not fit the base model's Linear layers");
  }
  if (!cfg.contains("r") || !cfg["r"].is_number_integer() || cfg["r"].get<int64_t>() < 1) {
    if (cfg.contains("r")) return absl::InvalidArgumentError("LoRA r must be a positive integer");
  }
  const int64_t r = cfg.value("r", int64_t{8});
  const double alpha = cfg.contains("lora_alpha") ? cfg["lora_alpha"].get<double>() : 8.0;
  Json targets = cfg.contains("target_modules") ? cfg["target_modules"] : Json();
  if (targets.is_null()) {
    targets = ctx.gpt2 ? Json::array({"c_attn"}) : Json::array({"q_proj", "v_proj"});
  }
  if (targets.is_string() && targets.get<std::string>() == "all-linear") {
    return absl::InvalidArgumentError(
        "target_modules \"all-linear\" must be expanded (PEFT saves the list)");
  }
  const Json exclude = cfg.contains("exclude_modules") ? cfg["exclude_modules"] : Json();
  std::set<int64_t> layers;
  bool all_layers = true;
  if (cfg.contains("layers_to_transform") && !cfg["layers_to_transform"].is_null()) {
    if (targets.is_array()) {
      all_layers = false;
      const Json& l = cfg["layers_to_transform"];
      if (l.is_number_integer()) {
        layers.insert(l.get<int64_t>());
      } else if (l.is_array()) {
        for (const Json& v : l) layers.insert(v.get<int64_t>());
      } else {
        return absl::InvalidArgumentError("layers_to_transform must be an int or a list of ints");
      }
    }
  }
  if (cfg.contains("layers_pattern") && !IsOff(cfg["layers_pattern"])) {
    const std::string want = ctx.gpt2 ? "h" : "layers";
    const Json& p = cfg["layers_pattern"];
    const bool ok = (p.is_string() && p.get<std::string>() == want) ||
                    (p.is_array() && p.size() == 1 && p[0] == want);
    if (!ok) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported LoRA option layers_pattern=", Dump(p)));
    }
  }
  // Modules the base model has beyond the block's linears.
  for (const char* other :
       {"lm_head", "model.embed_tokens", "transformer.wte", "transformer.wpe"}) {
    ASSIGN_OR_RETURN(bool hit, TargetMatches(targets, other, "target_modules"));
    if (hit) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unsupported LoRA target '", other, "' in target_modules (",
          absl::StrContains(other, "lm_head") ? "LoRA on the output layer" : "embedding LoRA",
          " is not supported)"));
    }
  }

  // The file's tensors by (layer, module, part).
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   OpenWeights(ctx, ctx.dir, "adapter_model.safetensors", "adapter_model.bin"));
  const std::vector<std::string>& modules = LinearModuleNames(ctx.model);
  const int64_t num_layers = ctx.config.num_layers;
  std::map<std::string, std::pair<int64_t, int>> module_index;
  for (int64_t l = 0; l < num_layers; ++l) {
    for (size_t m = 0; m < modules.size(); ++m) {
      module_index[absl::StrCat(ctx.gpt2 ? "h." : "layers.", l, ".", modules[m])] = {
          l, static_cast<int>(m)};
    }
  }
  static const char* kParts[] = {".lora_A.weight", ".lora_B.weight", ".lora_B.bias",
                                 ".lora_magnitude_vector"};
  std::map<std::pair<int64_t, int>, std::map<int, at::Tensor>> found;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    std::string key = info.name;
    if (absl::StartsWith(key, "base_model.model.")) key = key.substr(17);
    // Third-party files sometimes keep the adapter name.
    key = absl::StrReplaceAll(key, {{".default.", "."}});
    if (absl::EndsWith(key, ".default")) key = key.substr(0, key.size() - 8);
    for (const char* prefix : {"model.", "transformer."}) {
      if (absl::StartsWith(key, prefix)) {
        key = key.substr(std::strlen(prefix));
        break;
      }
    }
    int part = -1;
    for (int p = 0; p < 4; ++p) {
      if (absl::EndsWith(key, kParts[p])) {
        part = p;
        key = key.substr(0, key.size() - std::strlen(kParts[p]));
        break;
      }
    }
    auto it = module_index.find(key);
    if (part < 0 || it == module_index.end()) {
      if (absl::StrContains(info.name, "lora_embedding")) {
        return absl::InvalidArgumentError(
            absl::StrCat("unsupported tensor '", info.name, "' (embedding LoRA is not supported)"));
      }
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected tensor '", info.name,
                       "' (not a LoRA weight of the base model's attention/MLP linear layers)"));
    }
    ASSIGN_OR_RETURN(at::Tensor t, ReadTensor(*file, info));
    found[it->second][part] = t;
  }

  adapter.lora.assign(num_layers, std::vector<std::optional<LoraWeights>>(modules.size()));
  int targeted = 0;
  for (int64_t l = 0; l < num_layers; ++l) {
    for (size_t m = 0; m < modules.size(); ++m) {
      const std::string name = FullModuleName(ctx, l, modules[m]);
      const std::string short_name = absl::StrCat(ctx.gpt2 ? "h." : "layers.", l, ".", modules[m]);
      ASSIGN_OR_RETURN(bool hit, TargetMatches(targets, name, "target_modules"));
      ASSIGN_OR_RETURN(bool excluded, TargetMatches(exclude, name, "exclude_modules"));
      hit = hit && !excluded && (all_layers || layers.count(l) > 0);
      auto f = found.find({l, static_cast<int>(m)});
      if (!hit) {
        if (f != found.end()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "the file has LoRA weights for ", short_name,
              ", which the config's target_modules/layers_to_transform do not target"));
        }
        continue;
      }
      if (f == found.end() || !f->second.count(0) || !f->second.count(1)) {
        return absl::InvalidArgumentError(
            absl::StrCat("missing lora_A/lora_B weights for targeted module ", short_name));
      }
      ++targeted;
      LoraWeights w;
      w.a = f->second[0];
      w.b = f->second[1];
      ASSIGN_OR_RETURN(std::optional<double> pr,
                       PatternValue(cfg.value("rank_pattern", Json()), name, "rank_pattern"));
      ASSIGN_OR_RETURN(std::optional<double> pa,
                       PatternValue(cfg.value("alpha_pattern", Json()), name, "alpha_pattern"));
      const int64_t rank = pr ? static_cast<int64_t>(*pr) : r;
      const double a = pa ? *pa : alpha;
      if (w.a.dim() != 2 || w.b.dim() != 2) {
        return absl::InvalidArgumentError(
            absl::StrCat("LoRA weights of ", short_name, " must be 2-D"));
      }
      if (w.a.size(0) != rank || w.b.size(1) != rank) {
        return absl::InvalidArgumentError(
            absl::StrCat("rank in config (", rank, ") does not match the tensor shapes of ",
                         short_name, ": lora_A ", ShapeString(w.a), ", lora_B ", ShapeString(w.b)));
      }
      LinearRef ref = ctx.model.Linear(static_cast<int>(l), static_cast<int>(m));
      const at::Tensor& base = *ref.weight;
      const int64_t in = ref.fan_in_fan_out ? base.size(0) : base.size(1);
      const int64_t out = ref.fan_in_fan_out ? base.size(1) : base.size(0);
      RETURN_IF_ERROR(ExpectShape(w.a, {rank, in}, absl::StrCat("lora_A of ", short_name)));
      RETURN_IF_ERROR(ExpectShape(w.b, {out, rank}, absl::StrCat("lora_B of ", short_name)));
      w.rank = rank;
      w.scaling = rslora ? a / std::sqrt(static_cast<double>(rank)) : a / static_cast<double>(rank);
      if (lora_bias != (f->second.count(2) > 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat(lora_bias ? "lora_bias is set but the file has no lora_B.bias for "
                                   : "the file has lora_B.bias but lora_bias is not set, for ",
                         short_name));
      }
      if (lora_bias) {
        w.b_bias = f->second[2];
        RETURN_IF_ERROR(ExpectShape(w.b_bias, {out}, absl::StrCat("lora_B.bias of ", short_name)));
      }
      if (use_dora != (f->second.count(3) > 0)) {
        return absl::InvalidArgumentError(absl::StrCat(
            use_dora ? "use_dora is set but the file has no lora_magnitude_vector for "
                     : "the file has lora_magnitude_vector but use_dora is not set, for ",
            short_name));
      }
      const at::Device device = ctx.model.device();
      if (use_dora) {
        at::Tensor m_vec = f->second[3];
        RETURN_IF_ERROR(
            ExpectShape(m_vec, {out}, absl::StrCat("lora_magnitude_vector of ", short_name)));
        at::Tensor wf = base.to(at::kCPU, at::kFloat);
        if (ref.fan_in_fan_out) wf = wf.t();
        at::Tensor norm = at::linalg_vector_norm(wf + w.scaling * at::matmul(w.b, w.a), 2, {1});
        w.dora_scale = (m_vec / norm).to(device);
      }
      w.a = w.a.to(device).contiguous();
      w.b = w.b.to(device).contiguous();
      if (w.b_bias.defined()) w.b_bias = w.b_bias.to(device);
      adapter.num_bytes += (w.a.numel() + w.b.numel()) * 4;
      adapter.lora[l][m] = std::move(w);
    }
  }
  if (targeted == 0) {
    return absl::InvalidArgumentError("target_modules matches no module of the base model");
  }
  return absl::OkStatus();
}

// ------------------------------------------------------ HF PEFT prompt learning

absl::Status LoadPrompt(const Context& ctx, const Json& cfg, Adapter& adapter) {
  if (cfg.contains("modules_to_save") && !IsOff(cfg["modules_to_save"])) {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported option modules_to_save=", Dump(cfg["modules_to_save"])));
  }
  const int64_t submodules = cfg.value("num_transformer_submodules", int64_t{1});
  if (submodules != 1) {
    return absl::InvalidArgumentError(absl::StrCat("num_transformer_submodules=", submodules,
                                                   " (encoder-decoder prompts) is not supported"));
  }
  const Json& nv = cfg.contains("num_virtual_tokens") ? cfg["num_virtual_tokens"] : Json();
  if (!nv.is_number_integer() || nv.get<int64_t>() < 1) {
    return absl::InvalidArgumentError("num_virtual_tokens must be a positive integer");
  }
  const int64_t p = nv.get<int64_t>();
  if (p > ctx.options.max_virtual_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("num_virtual_tokens ", p, " exceeds the limit ",
                                                   ctx.options.max_virtual_tokens));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   OpenWeights(ctx, ctx.dir, "adapter_model.safetensors", "adapter_model.bin"));
  at::Tensor emb;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    if (info.name != "prompt_embeddings") {
      return absl::InvalidArgumentError(absl::StrCat("unexpected tensor '", info.name, "' in a ",
                                                     cfg["peft_type"].get<std::string>(),
                                                     " adapter (only prompt_embeddings)"));
    }
    ASSIGN_OR_RETURN(emb, ReadTensor(*file, info));
  }
  if (!emb.defined()) return absl::InvalidArgumentError("missing tensor 'prompt_embeddings'");
  const ModelConfig& c = ctx.config;
  const at::ScalarType dtype = ctx.model.dtype();
  const at::Device device = ctx.model.device();
  if (adapter.method == AdapterMethod::kPrefixTuning) {
    const int64_t kv = ctx.gpt2 ? c.num_heads : c.num_kv_heads;
    const int64_t d = c.head_dim;
    if (cfg.contains("num_layers") && cfg["num_layers"].is_number() &&
        cfg["num_layers"].get<int64_t>() != c.num_layers) {
      return absl::FailedPreconditionError(absl::StrCat(
          "prefix num_layers ", Dump(cfg["num_layers"]), " but the base model has ", c.num_layers));
    }
    if (cfg.contains("token_dim") && cfg["token_dim"].is_number() &&
        cfg["token_dim"].get<int64_t>() != kv * d) {
      return absl::FailedPreconditionError(absl::StrCat(
          "prefix token_dim ", Dump(cfg["token_dim"]), " but the base model's KV width is ", kv * d,
          " (", kv, " KV heads x ", d, "; PEFT < 0.12 prefixes on GQA models are not supported)"));
    }
    RETURN_IF_ERROR(ExpectShape(emb, {p, c.num_layers * 2 * kv * d}, "prompt_embeddings"));
    at::Tensor pkv = emb.view({p, c.num_layers * 2, kv, d}).permute({1, 2, 0, 3});
    for (int64_t l = 0; l < c.num_layers; ++l) {
      adapter.prefix_keys.push_back(pkv[2 * l].to(device, dtype).contiguous());
      adapter.prefix_values.push_back(pkv[2 * l + 1].to(device, dtype).contiguous());
    }
  } else {
    if (cfg.contains("token_dim") && cfg["token_dim"].is_number() &&
        cfg["token_dim"].get<int64_t>() != c.hidden_size) {
      return absl::FailedPreconditionError(absl::StrCat("token_dim ", Dump(cfg["token_dim"]),
                                                        " but the base model's hidden size is ",
                                                        c.hidden_size));
    }
    RETURN_IF_ERROR(ExpectShape(emb, {p, c.hidden_size}, "prompt_embeddings"));
    adapter.prompt = emb.to(device, dtype).contiguous();
  }
  adapter.num_bytes += emb.numel() * at::elementSize(dtype);
  return absl::OkStatus();
}

// -------------------------------------------------------------- AdapterHub

absl::StatusOr<std::string> HubActivation(const Json& root, const Json& cfg) {
  std::string act = cfg.value("non_linearity", std::string("relu"));
  const std::string version = root.value("version", std::string());
  if (!absl::StartsWith(version, "adapters.")) {  // adapter-transformers naming.
    if (act == "gelu") {
      act = "gelu_new";
    } else if (act == "gelu_orig") {
      act = "gelu";
    }
  }
  for (const char* ok : {"relu", "swish", "silu", "gelu", "gelu_new", "tanh", "leakyrelu"}) {
    if (act == ok) return act;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported bottleneck non_linearity \"", act, "\""));
}

absl::Status CheckHubBase(const Context& ctx, const Json& root) {
  const std::string model_type = root.value("model_type", std::string());
  if (!model_type.empty() && model_type != ctx.config.model_type) {
    return absl::FailedPreconditionError(absl::StrCat("the adapter was made for model_type \"",
                                                      model_type, "\" but the base model is \"",
                                                      ctx.config.model_type, "\""));
  }
  if (root.contains("hidden_size") && root["hidden_size"].is_number() &&
      root["hidden_size"].get<int64_t>() != ctx.config.hidden_size) {
    return absl::FailedPreconditionError(
        absl::StrCat("the adapter was made for hidden_size ", Dump(root["hidden_size"]),
                     " but the base model has ", ctx.config.hidden_size));
  }
  return absl::OkStatus();
}

// Strips "model."/"transformer." and parses "{layers|h}.{i}.REST".
bool ParseHubKey(const Context& ctx, std::string key, int64_t* layer, std::string* rest) {
  for (const char* prefix : {"model.", "transformer."}) {
    if (absl::StartsWith(key, prefix)) {
      key = key.substr(std::strlen(prefix));
      break;
    }
  }
  const std::string block = ctx.gpt2 ? "h." : "layers.";
  if (!absl::StartsWith(key, block)) return false;
  key = key.substr(block.size());
  const size_t dot = key.find('.');
  if (dot == std::string::npos || !absl::SimpleAtoi(key.substr(0, dot), layer)) return false;
  if (*layer < 0 || *layer >= ctx.config.num_layers) return false;
  *rest = key.substr(dot + 1);
  return true;
}

absl::Status LoadBottleneck(const Context& ctx, const std::string& dir, const Json& root,
                            Adapter& adapter) {
  RETURN_IF_ERROR(CheckHubBase(ctx, root));
  if (!root["config"].is_object()) {
    return absl::InvalidArgumentError(
        "AdapterHub adapter_config.json: \"config\" must be an object");
  }
  const Json& cfg = root["config"];
  if (cfg.contains("architecture") && !cfg["architecture"].is_null()) {
    return absl::InvalidArgumentError(absl::StrCat("unsupported AdapterHub architecture ",
                                                   Dump(cfg["architecture"]),
                                                   " (bottleneck adapters and AdapterFusion only; "
                                                   "use the HF PEFT format for LoRA and prompts)"));
  }
  for (const char* option : {"ln_before", "ln_after", "use_gating", "is_parallel", "inv_adapter",
                             "phm_layer", "cross_adapter", "adapter_residual_before_ln"}) {
    if (cfg.contains(option) && !IsOff(cfg[option])) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported bottleneck option ", option, "=", Dump(cfg[option])));
    }
  }
  if (cfg.contains("residual_before_ln") && cfg["residual_before_ln"] != true) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported bottleneck option residual_before_ln=", Dump(cfg["residual_before_ln"])));
  }
  double scaling = 1.0;
  if (cfg.contains("scaling")) {
    if (!cfg["scaling"].is_number()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported bottleneck option scaling=", Dump(cfg["scaling"])));
    }
    scaling = cfg["scaling"].get<double>();
  }
  if (IsFile(dir + "/head_config.json")) {
    ASSIGN_OR_RETURN(Json head, ReadJson(dir + "/head_config.json"));
    if (head.contains("config") && !head["config"].is_null()) {
      return absl::InvalidArgumentError(
          "AdapterHub prediction heads (head_config.json) are not supported");
    }
  }
  ASSIGN_OR_RETURN(std::string act, HubActivation(root, cfg));
  adapter.input_includes_residual = cfg.value("original_ln_before", false);
  const bool mh = cfg.value("mh_adapter", false), out = cfg.value("output_adapter", false);
  const std::string name = root.value("name", std::string());
  if (name.empty()) return absl::InvalidArgumentError("AdapterHub adapter_config.json has no name");
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   OpenWeights(ctx, dir, "adapter.safetensors", "pytorch_adapter.bin"));
  const int64_t num_layers = ctx.config.num_layers;
  const int64_t d = ctx.config.hidden_size;
  std::vector<std::map<std::string, at::Tensor>> attn(num_layers), ffn(num_layers);
  const std::string infix = ".adapters." + name + ".";
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    int64_t layer = 0;
    std::string rest;
    bool ok = ParseHubKey(ctx, info.name, &layer, &rest);
    std::map<std::string, at::Tensor>* site = nullptr;
    if (ok && absl::StartsWith(rest, "attention_adapters" + infix) && mh) {
      site = &attn[layer];
      rest = rest.substr(std::strlen("attention_adapters") + infix.size());
    } else if (ok && absl::StartsWith(rest, "output_adapters" + infix) && out) {
      site = &ffn[layer];
      rest = rest.substr(std::strlen("output_adapters") + infix.size());
    }
    static const std::set<std::string> kParts = {"adapter_down.0.weight", "adapter_down.0.bias",
                                                 "adapter_up.weight", "adapter_up.bias"};
    if (site == nullptr || !kParts.count(rest)) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected tensor '", info.name, "' in bottleneck adapter \"", name,
                       "\" (learned scaling, gating, layer norms, phm and invertible adapters are "
                       "not supported)"));
    }
    ASSIGN_OR_RETURN((*site)[rest], ReadTensor(*file, info));
  }
  const at::Device device = ctx.model.device();
  auto build = [&](std::map<std::string, at::Tensor>& t, int64_t layer,
                   const char* where) -> absl::StatusOr<std::optional<BottleneckWeights>> {
    if (t.empty()) return std::nullopt;
    if (t.size() != 4) {
      return absl::InvalidArgumentError(
          absl::StrCat("incomplete bottleneck weights at layer ", layer, " ", where));
    }
    BottleneckWeights w;
    w.down_w = t["adapter_down.0.weight"];
    const int64_t m = w.down_w.dim() == 2 ? w.down_w.size(0) : -1;
    const std::string what = absl::StrCat("bottleneck ", where, " layer ", layer, " ");
    RETURN_IF_ERROR(ExpectShape(w.down_w, {m, d}, what + "adapter_down weight"));
    w.down_b = t["adapter_down.0.bias"];
    RETURN_IF_ERROR(ExpectShape(w.down_b, {m}, what + "adapter_down bias"));
    w.up_w = t["adapter_up.weight"];
    RETURN_IF_ERROR(ExpectShape(w.up_w, {d, m}, what + "adapter_up weight"));
    w.up_b = t["adapter_up.bias"];
    RETURN_IF_ERROR(ExpectShape(w.up_b, {d}, what + "adapter_up bias"));
    for (at::Tensor* p : {&w.down_w, &w.down_b, &w.up_w, &w.up_b}) *p = p->to(device).contiguous();
    w.activation = act;
    w.scaling = scaling;
    adapter.num_bytes += (2 * m * d + m + d) * 4;
    return w;
  };
  int sites = 0;
  adapter.attn_site.resize(num_layers);
  adapter.ffn_site.resize(num_layers);
  for (int64_t l = 0; l < num_layers; ++l) {
    ASSIGN_OR_RETURN(adapter.attn_site[l], build(attn[l], l, "attention"));
    ASSIGN_OR_RETURN(adapter.ffn_site[l], build(ffn[l], l, "output"));
    sites += adapter.attn_site[l].has_value() + adapter.ffn_site[l].has_value();
  }
  if (sites == 0)
    return absl::InvalidArgumentError(
        absl::StrCat("bottleneck adapter \"", name, "\" has no weights"));
  return absl::OkStatus();
}

absl::Status LoadFusion(const Context& ctx, const Json& root, Adapter& adapter) {
  RETURN_IF_ERROR(CheckHubBase(ctx, root));
  const Json& cfg = root.value("config", Json::object());
  auto flag = [&](const char* k, bool def) {
    return cfg.contains(k) && cfg[k].is_boolean() ? cfg[k].get<bool>() : def;
  };
  if (!flag("query", true) || !flag("key", true) || !flag("value", true) ||
      !flag("value_before_softmax", true) || flag("temperature", false) ||
      flag("residual_before", false) || flag("query_before_ln", false)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "unsupported AdapterFusion config ", Dump(cfg),
        " (only query, key and value, value_before_softmax, no temperature, residual after)"));
  }
  if (!root.contains("adapter_names") || !root["adapter_names"].is_array() ||
      root["adapter_names"].size() < 2) {
    return absl::InvalidArgumentError(
        "adapter_fusion_config.json needs adapter_names (two or more)");
  }
  std::vector<std::string> names;
  for (const Json& n : root["adapter_names"]) names.push_back(n.get<std::string>());
  for (const std::string& n : names) {
    if (n.empty() || n.find('/') != std::string::npos || n == "." || n == "..") {
      return absl::InvalidArgumentError(absl::StrCat("bad fused adapter name \"", n, "\""));
    }
    const std::string child_dir = ctx.dir + "/" + n;
    if (!IsDir(child_dir)) {
      return absl::NotFoundError(absl::StrCat("AdapterFusion needs its adapter \"", n,
                                              "\" in the subdirectory ", child_dir));
    }
    ASSIGN_OR_RETURN(Json child_root, ReadJson(child_dir + "/adapter_config.json"));
    auto child = std::make_shared<Adapter>();
    child->name = n;
    child->method = AdapterMethod::kBottleneck;
    child->dir = child_dir;
    absl::Status s = LoadBottleneck(ctx, child_dir, child_root, *child);
    if (!s.ok())
      return absl::Status(s.code(), absl::StrCat("fused adapter \"", n, "\": ", s.message()));
    for (const auto& site : child->attn_site) {
      if (site.has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("fused adapter \"", n,
                         "\" has attention-site adapters; AdapterFusion is supported over "
                         "Pfeiffer (output-site) adapters only"));
      }
    }
    if (!child->input_includes_residual) {
      return absl::InvalidArgumentError(absl::StrCat(
          "fused adapter \"", n, "\" is not Pfeiffer-configured (original_ln_before=false)"));
    }
    adapter.num_bytes += child->num_bytes;
    adapter.children.push_back(std::move(child));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                   OpenWeights(ctx, ctx.dir, "model_adapter_fusion.safetensors",
                               "pytorch_model_adapter_fusion.bin"));
  const int64_t num_layers = ctx.config.num_layers, d = ctx.config.hidden_size;
  const std::string fusion_name = absl::StrJoin(names, ",");
  std::vector<std::map<std::string, at::Tensor>> layers(num_layers);
  const std::string infix = "output_adapters.adapter_fusion_layer." + fusion_name + ".";
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    int64_t layer = 0;
    std::string rest;
    static const std::set<std::string> kParts = {"query.weight", "query.bias", "key.weight",
                                                 "key.bias", "value.weight"};
    if (!ParseHubKey(ctx, info.name, &layer, &rest) || !absl::StartsWith(rest, infix) ||
        !kParts.count(rest.substr(infix.size()))) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected tensor '", info.name,
                                                     "' in AdapterFusion \"", fusion_name, "\""));
    }
    ASSIGN_OR_RETURN(layers[layer][rest.substr(infix.size())], ReadTensor(*file, info));
  }
  const at::Device device = ctx.model.device();
  adapter.fusion.resize(num_layers);
  for (int64_t l = 0; l < num_layers; ++l) {
    bool children_here = false;
    for (const auto& c : adapter.children) children_here |= c->ffn_site[l].has_value();
    if (layers[l].empty() && !children_here) continue;
    if (layers[l].size() != 5) {
      return absl::InvalidArgumentError(
          absl::StrCat("incomplete AdapterFusion weights at layer ", l));
    }
    for (const auto& c : adapter.children) {
      if (!c->ffn_site[l].has_value()) {
        return absl::InvalidArgumentError(
            absl::StrCat("fused adapter \"", c->name, "\" has no weights at layer ", l));
      }
    }
    FusionLayer f;
    const std::string what = absl::StrCat("AdapterFusion layer ", l, " ");
    f.query_w = layers[l]["query.weight"];
    f.query_b = layers[l]["query.bias"];
    f.key_w = layers[l]["key.weight"];
    f.key_b = layers[l]["key.bias"];
    f.value_w = layers[l]["value.weight"];
    RETURN_IF_ERROR(ExpectShape(f.query_w, {d, d}, what + "query weight"));
    RETURN_IF_ERROR(ExpectShape(f.key_w, {d, d}, what + "key weight"));
    RETURN_IF_ERROR(ExpectShape(f.value_w, {d, d}, what + "value weight"));
    RETURN_IF_ERROR(ExpectShape(f.query_b, {d}, what + "query bias"));
    RETURN_IF_ERROR(ExpectShape(f.key_b, {d}, what + "key bias"));
    for (at::Tensor* p : {&f.query_w, &f.query_b, &f.key_w, &f.key_b, &f.value_w}) {
      *p = p->to(device).contiguous();
    }
    adapter.num_bytes += (3 * d * d + 2 * d) * 4;
    adapter.fusion[l] = std::move(f);
  }
  return absl::OkStatus();
}

absl::Status LoadInto(const Context& ctx, Adapter& adapter) {
  if (!IsDir(ctx.dir))
    return absl::NotFoundError(absl::StrCat("adapter directory not found: ", ctx.dir));
  if (IsFile(ctx.dir + "/adapter_fusion_config.json")) {
    ASSIGN_OR_RETURN(Json root, ReadJson(ctx.dir + "/adapter_fusion_config.json"));
    adapter.method = AdapterMethod::kFusion;
    return LoadFusion(ctx, root, adapter);
  }
  const std::string config_path = ctx.dir + "/adapter_config.json";
  if (!IsFile(config_path)) {
    return absl::NotFoundError(absl::StrCat("no adapter_config.json in ", ctx.dir));
  }
  ASSIGN_OR_RETURN(Json root, ReadJson(config_path));
  if (root.contains("peft_type")) {
    if (!root["peft_type"].is_string())
      return absl::InvalidArgumentError("peft_type must be a string");
    const std::string type = root["peft_type"].get<std::string>();
    const Json task = root.value("task_type", Json());
    if (!task.is_null() && task != "CAUSAL_LM") {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported task_type ", Dump(task), " (CAUSAL_LM only)"));
    }
    if (type == "LORA") {
      adapter.method = AdapterMethod::kLora;
      return LoadLora(ctx, root, adapter);
    }
    if (type == "PREFIX_TUNING" || type == "P_TUNING" || type == "PROMPT_TUNING") {
      adapter.method = type == "PREFIX_TUNING" ? AdapterMethod::kPrefixTuning
                       : type == "P_TUNING"    ? AdapterMethod::kPTuning
                                               : AdapterMethod::kPromptTuning;
      return LoadPrompt(ctx, root, adapter);
    }
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported peft_type \"", type,
                     "\" (LORA, PREFIX_TUNING, P_TUNING and PROMPT_TUNING are supported)"));
  }
  if (root.contains("config") && root.contains("version")) {
    adapter.method = AdapterMethod::kBottleneck;
    return LoadBottleneck(ctx, ctx.dir, root, adapter);
  }
  return absl::InvalidArgumentError(
      "adapter_config.json is neither HF PEFT (no peft_type) nor AdapterHub (no config/version)");
}

}  // namespace

const char* AdapterMethodName(AdapterMethod method) {
  switch (method) {
    case AdapterMethod::kLora:
      return "lora";
    case AdapterMethod::kPrefixTuning:
      return "prefix_tuning";
    case AdapterMethod::kPTuning:
      return "p_tuning";
    case AdapterMethod::kPromptTuning:
      return "prompt_tuning";
    case AdapterMethod::kBottleneck:
      return "bottleneck";
    case AdapterMethod::kFusion:
      return "fusion";
  }
  return "unknown";
}

int64_t Adapter::virtual_tokens() const {
  if (prompt.defined()) return prompt.size(0);
  if (!prefix_keys.empty()) return prefix_keys[0].size(1);
  return 0;
}

const std::vector<std::string>& LinearModuleNames(const CausalLM& model) {
  static const std::vector<std::string> kLlama = {
      "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
      "mlp.gate_proj",    "mlp.up_proj",      "mlp.down_proj"};
  static const std::vector<std::string> kGpt2 = {"attn.c_attn", "attn.c_proj", "mlp.c_fc",
                                                 "mlp.c_proj"};
  return model.config().architecture == Architecture::kGpt2 ? kGpt2 : kLlama;
}

absl::StatusOr<std::shared_ptr<const Adapter>> LoadAdapter(const std::string& name,
                                                           const std::string& dir, CausalLM& model,
                                                           const AdapterLoadOptions& options) {
  auto adapter = std::make_shared<Adapter>();
  adapter->name = name;
  adapter->dir = dir;
  Context ctx{model, model.config(), options, dir,
              model.config().architecture == Architecture::kGpt2};
  absl::Status status;
  try {
    status = LoadInto(ctx, *adapter);
  } catch (const std::exception& e) {
    status = absl::InvalidArgumentError(absl::StrCat("cannot load: ", e.what()));
  }
  if (!status.ok()) {
    return absl::Status(status.code(),
                        absl::StrCat("adapter \"", name, "\" (", dir, "): ", status.message()));
  }
  return std::shared_ptr<const Adapter>(std::move(adapter));
}

}  // namespace adapterd
