#include "engine/model/model_config.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using nlohmann::json;

absl::Status Bad(const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat("config.json: ", what));
}

// The value of `key`, or nullptr when absent or null.
const json* Field(const json& j, const std::string& key) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<int64_t> GetInt(const json& j, const std::string& key, std::optional<int64_t> def) {
  const json* v = Field(j, key);
  if (v == nullptr) {
    if (def.has_value()) return *def;
    return Bad(absl::StrCat("missing \"", key, "\""));
  }
  if (!v->is_number_integer()) return Bad(absl::StrCat("\"", key, "\" is not an integer"));
  return v->get<int64_t>();
}

absl::StatusOr<double> GetDouble(const json& j, const std::string& key, double def) {
  const json* v = Field(j, key);
  if (v == nullptr) return def;
  if (!v->is_number()) return Bad(absl::StrCat("\"", key, "\" is not a number"));
  return v->get<double>();
}

absl::StatusOr<bool> GetBool(const json& j, const std::string& key, bool def) {
  const json* v = Field(j, key);
  if (v == nullptr) return def;
  if (!v->is_boolean()) return Bad(absl::StrCat("\"", key, "\" is not a boolean"));
  return v->get<bool>();
}

absl::StatusOr<std::string> GetString(const json& j, const std::string& key, std::string def) {
  const json* v = Field(j, key);
  if (v == nullptr) return def;
  if (!v->is_string()) return Bad(absl::StrCat("\"", key, "\" is not a string"));
  return v->get<std::string>();
}

absl::Status ParseTokenIds(const json& j, ModelConfig* c) {
  if (const json* v = Field(j, "bos_token_id")) {
    if (!v->is_number_integer()) return Bad("\"bos_token_id\" is not an integer");
    c->bos_token_id = v->get<int32_t>();
  }
  if (const json* v = Field(j, "pad_token_id")) {
    if (!v->is_number_integer()) return Bad("\"pad_token_id\" is not an integer");
    c->pad_token_id = v->get<int32_t>();
  }
  if (const json* v = Field(j, "eos_token_id")) {
    if (v->is_number_integer()) {
      c->eos_token_ids.push_back(v->get<int32_t>());
    } else if (v->is_array()) {
      for (const json& e : *v) {
        if (!e.is_number_integer()) return Bad("\"eos_token_id\" has a non-integer entry");
        c->eos_token_ids.push_back(e.get<int32_t>());
      }
    } else {
      return Bad("\"eos_token_id\" is neither an integer nor a list");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::optional<double>> GetOptionalDouble(const json& j, const std::string& key) {
  if (Field(j, key) == nullptr) return std::optional<double>();
  ASSIGN_OR_RETURN(double v, GetDouble(j, key, 0.0));
  return std::optional<double>(v);
}

absl::StatusOr<std::vector<double>> GetDoubles(const json& j, const std::string& key) {
  const json* v = Field(j, key);
  if (v == nullptr) return Bad(absl::StrCat("missing \"", key, "\""));
  if (!v->is_array()) return Bad(absl::StrCat("\"", key, "\" is not a list"));
  std::vector<double> out;
  for (const json& e : *v) {
    if (!e.is_number()) return Bad(absl::StrCat("\"", key, "\" has a non-number entry"));
    out.push_back(e.get<double>());
  }
  return out;
}

// transformers v4 (`rope_theta` + `rope_scaling`) or v5 (`rope_parameters`).
absl::Status ParseRope(const json& j, ModelConfig* c) {
  ASSIGN_OR_RETURN(c->rope_theta, GetDouble(j, "rope_theta", 10000.0));
  const json* scaling = Field(j, "rope_parameters");
  const bool v5 = scaling != nullptr;
  if (scaling == nullptr) scaling = Field(j, "rope_scaling");
  if (scaling == nullptr) return absl::OkStatus();
  if (!scaling->is_object()) return Bad("\"rope_scaling\"/\"rope_parameters\" is not an object");
  ASSIGN_OR_RETURN(c->rope_theta, GetDouble(*scaling, "rope_theta", c->rope_theta));
  RopeScaling& r = c->rope_scaling;
  ASSIGN_OR_RETURN(std::string type, GetString(*scaling, "rope_type", ""));
  if (type.empty()) {
    ASSIGN_OR_RETURN(type, GetString(*scaling, "type", "default"));
  }
  if (type != "default" && type != "linear" && type != "dynamic" && type != "llama3" &&
      type != "yarn" && type != "longrope") {
    return absl::UnimplementedError(absl::StrCat("unsupported rope type '", type, "'"));
  }
  r.type = type;
  ASSIGN_OR_RETURN(r.factor, GetDouble(*scaling, "factor", 1.0));
  ASSIGN_OR_RETURN(r.low_freq_factor, GetDouble(*scaling, "low_freq_factor", 1.0));
  ASSIGN_OR_RETURN(r.high_freq_factor, GetDouble(*scaling, "high_freq_factor", 4.0));
  ASSIGN_OR_RETURN(
      r.original_max_position_embeddings,
      GetInt(*scaling, "original_max_position_embeddings", c->max_position_embeddings));
  // transformers reads `beta_fast or 32`: 0 means the default too.
  ASSIGN_OR_RETURN(r.beta_fast, GetDouble(*scaling, "beta_fast", 32.0));
  if (r.beta_fast == 0) r.beta_fast = 32.0;
  ASSIGN_OR_RETURN(r.beta_slow, GetDouble(*scaling, "beta_slow", 1.0));
  if (r.beta_slow == 0) r.beta_slow = 1.0;
  ASSIGN_OR_RETURN(r.truncate, GetBool(*scaling, "truncate", true));
  ASSIGN_OR_RETURN(r.attention_factor, GetOptionalDouble(*scaling, "attention_factor"));
  ASSIGN_OR_RETURN(r.mscale, GetOptionalDouble(*scaling, "mscale"));
  ASSIGN_OR_RETURN(r.mscale_all_dim, GetOptionalDouble(*scaling, "mscale_all_dim"));
  if (type == "longrope") {
    ASSIGN_OR_RETURN(r.short_factor, GetDoubles(*scaling, "short_factor"));
    ASSIGN_OR_RETURN(r.long_factor, GetDoubles(*scaling, "long_factor"));
    // transformers 4.57 reads the top-level field only (Phi-3 keeps it there).
    const json* top = Field(j, "original_max_position_embeddings");
    const json* given =
        top != nullptr ? top : (v5 ? Field(*scaling, "original_max_position_embeddings") : nullptr);
    r.original_max_position_embeddings = c->max_position_embeddings;
    if (given != nullptr) {
      if (!given->is_number_integer() || given->get<int64_t>() <= 0) {
        return Bad("\"original_max_position_embeddings\" is not a positive integer");
      }
      r.original_max_position_embeddings = given->get<int64_t>();
      r.factor = static_cast<double>(c->max_position_embeddings) /
                 static_cast<double>(r.original_max_position_embeddings);
    }
    const size_t half = static_cast<size_t>(c->head_dim / 2);
    if (r.short_factor.size() != half || r.long_factor.size() != half) {
      return Bad("longrope short_factor and long_factor need head_dim / 2 entries each");
    }
  }
  if (type != "default" && r.factor <= 0) return Bad("rope scaling \"factor\" must be positive");
  if (type == "llama3" && (Field(*scaling, "original_max_position_embeddings") == nullptr ||
                           r.high_freq_factor <= r.low_freq_factor)) {
    return Bad(
        "llama3 rope scaling needs original_max_position_embeddings and "
        "high_freq_factor > low_freq_factor");
  }
  if (r.original_max_position_embeddings <= 0) {
    return Bad("\"original_max_position_embeddings\" must be positive");
  }
  return absl::OkStatus();
}

absl::Status ParseSliding(const json& j, ModelConfig* c) {
  c->sliding_layers.assign(c->num_layers, false);
  if (c->model_type == "llama") return absl::OkStatus();
  ASSIGN_OR_RETURN(int64_t window, GetInt(j, "sliding_window", 0));
  if (c->model_type == "qwen2") {
    ASSIGN_OR_RETURN(bool use, GetBool(j, "use_sliding_window", false));
    if (!use) window = 0;
  }
  if (window < 0) return Bad("\"sliding_window\" is negative");
  c->sliding_window = window;
  if (window == 0) return absl::OkStatus();
  if (const json* types = Field(j, "layer_types")) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != c->num_layers) {
      return Bad("\"layer_types\" must list one type per layer");
    }
    for (int64_t i = 0; i < c->num_layers; ++i) {
      c->sliding_layers[i] = (*types)[i] == "sliding_attention";
    }
  } else if (c->model_type == "qwen2") {
    ASSIGN_OR_RETURN(int64_t max_window_layers, GetInt(j, "max_window_layers", 28));
    for (int64_t i = max_window_layers; i < c->num_layers; ++i) c->sliding_layers[i] = true;
  } else {
    c->sliding_layers.assign(c->num_layers, true);
  }
  return absl::OkStatus();
}

absl::Status ParseLlama(const json& j, ModelConfig* c) {
  c->architecture = Architecture::kLlama;
  ASSIGN_OR_RETURN(c->vocab_size, GetInt(j, "vocab_size", std::nullopt));
  ASSIGN_OR_RETURN(c->hidden_size, GetInt(j, "hidden_size", std::nullopt));
  ASSIGN_OR_RETURN(c->intermediate_size, GetInt(j, "intermediate_size", std::nullopt));
  ASSIGN_OR_RETURN(c->num_layers, GetInt(j, "num_hidden_layers", std::nullopt));
  ASSIGN_OR_RETURN(c->num_heads, GetInt(j, "num_attention_heads", std::nullopt));
  ASSIGN_OR_RETURN(c->num_kv_heads, GetInt(j, "num_key_value_heads", c->num_heads));
  if (c->num_heads <= 0 || c->hidden_size <= 0) return Bad("sizes must be positive");
  if (Field(j, "head_dim") == nullptr && c->hidden_size % c->num_heads != 0) {
    return Bad("hidden_size is not a multiple of num_attention_heads");
  }
  ASSIGN_OR_RETURN(c->head_dim, GetInt(j, "head_dim", c->hidden_size / c->num_heads));
  ASSIGN_OR_RETURN(c->max_position_embeddings, GetInt(j, "max_position_embeddings", 2048));
  ASSIGN_OR_RETURN(c->norm_eps, GetDouble(j, "rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c->tie_word_embeddings, GetBool(j, "tie_word_embeddings", false));
  ASSIGN_OR_RETURN(c->hidden_act, GetString(j, "hidden_act", "silu"));
  if (c->model_type == "qwen2") {
    c->attention_bias = true;
    c->attention_out_bias = false;
  } else {
    ASSIGN_OR_RETURN(c->attention_bias, GetBool(j, "attention_bias", false));
    c->attention_out_bias = c->attention_bias;
  }
  ASSIGN_OR_RETURN(c->mlp_bias, GetBool(j, "mlp_bias", false));
  RETURN_IF_ERROR(ParseRope(j, c));
  RETURN_IF_ERROR(ParseSliding(j, c));
  if (c->head_dim <= 0 || c->head_dim % 2 != 0) return Bad("head_dim must be positive and even");
  return absl::OkStatus();
}

absl::Status ParseGpt2(const json& j, ModelConfig* c) {
  c->architecture = Architecture::kGpt2;
  // GPT2Config's attribute_map aliases the generic names.
  auto int_field = [&](const std::string& name, const std::string& alias,
                       int64_t def) -> absl::StatusOr<int64_t> {
    if (Field(j, name) != nullptr) return GetInt(j, name, def);
    return GetInt(j, alias, def);
  };
  ASSIGN_OR_RETURN(c->vocab_size, GetInt(j, "vocab_size", 50257));
  ASSIGN_OR_RETURN(c->hidden_size, int_field("n_embd", "hidden_size", 768));
  ASSIGN_OR_RETURN(c->num_layers, int_field("n_layer", "num_hidden_layers", 12));
  ASSIGN_OR_RETURN(c->num_heads, int_field("n_head", "num_attention_heads", 12));
  ASSIGN_OR_RETURN(c->max_position_embeddings,
                   int_field("n_positions", "max_position_embeddings", 1024));
  ASSIGN_OR_RETURN(c->intermediate_size, GetInt(j, "n_inner", 4 * c->hidden_size));
  if (c->num_heads <= 0 || c->hidden_size % c->num_heads != 0) {
    return Bad("n_embd is not a multiple of n_head");
  }
  c->num_kv_heads = c->num_heads;
  c->head_dim = c->hidden_size / c->num_heads;
  ASSIGN_OR_RETURN(c->norm_eps, GetDouble(j, "layer_norm_epsilon", 1e-5));
  ASSIGN_OR_RETURN(c->hidden_act, GetString(j, "activation_function", "gelu_new"));
  ASSIGN_OR_RETURN(c->scale_attn_weights, GetBool(j, "scale_attn_weights", true));
  ASSIGN_OR_RETURN(c->scale_attn_by_inverse_layer_idx,
                   GetBool(j, "scale_attn_by_inverse_layer_idx", false));
  c->tie_word_embeddings = true;  // GPT2LMHeadModel always ties lm_head to wte.
  c->attention_bias = true;
  c->attention_out_bias = true;
  c->mlp_bias = true;
  c->sliding_layers.assign(c->num_layers, false);
  if (!c->bos_token_id.has_value()) c->bos_token_id = 50256;
  if (c->eos_token_ids.empty() && Field(j, "eos_token_id") == nullptr) c->eos_token_ids = {50256};
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ModelConfig::FromJson(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Bad("not valid JSON");
  if (!j.is_object()) return Bad("not a JSON object");
  ModelConfig c;
  try {
    ASSIGN_OR_RETURN(c.model_type, GetString(j, "model_type", ""));
    if (c.model_type.empty()) return Bad("missing \"model_type\"");
    RETURN_IF_ERROR(ParseTokenIds(j, &c));
    ASSIGN_OR_RETURN(c.torch_dtype, GetString(j, "torch_dtype", ""));
    if (c.torch_dtype.empty()) {
      ASSIGN_OR_RETURN(c.torch_dtype, GetString(j, "dtype", ""));
    }
    if (c.model_type == "llama" || c.model_type == "mistral" || c.model_type == "qwen2") {
      RETURN_IF_ERROR(ParseLlama(j, &c));
    } else if (c.model_type == "gpt2") {
      RETURN_IF_ERROR(ParseGpt2(j, &c));
    } else {
      return absl::UnimplementedError(absl::StrCat("unsupported model_type '", c.model_type, "'"));
    }
  } catch (const json::exception& e) {
    return Bad(e.what());
  }
  if (c.vocab_size <= 0 || c.hidden_size <= 0 || c.intermediate_size <= 0 || c.num_layers <= 0 ||
      c.num_heads <= 0 || c.num_kv_heads <= 0 || c.max_position_embeddings <= 0) {
    return Bad("sizes must be positive");
  }
  if (c.num_heads % c.num_kv_heads != 0) {
    return Bad("num_attention_heads is not a multiple of num_key_value_heads");
  }
  const std::string& act = c.hidden_act;
  if (act != "silu" && act != "gelu" && act != "gelu_new" && act != "gelu_pytorch_tanh" &&
      act != "relu") {
    return absl::UnimplementedError(absl::StrCat("unsupported activation '", act, "'"));
  }
  return c;
}

absl::StatusOr<ModelConfig> ModelConfig::FromFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return FromJson(buffer.str());
}

}  // namespace adapterd
