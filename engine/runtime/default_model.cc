#include "engine/runtime/default_model.h"

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/safetensors.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Llama-shaped: GQA, SwiGLU, RoPE. Small enough to run anywhere.
constexpr int kVocab = 258;  // 256 byte tokens + BOS + EOS.
constexpr int kHidden = 256;
constexpr int kLayers = 4;
constexpr int kHeads = 8;
constexpr int kKvHeads = 4;
constexpr int kHeadDim = kHidden / kHeads;
constexpr int kIntermediate = 704;
constexpr int kContext = 2048;
constexpr int kBos = 256;
constexpr int kEos = 257;

// The GPT-2 byte-to-unicode table: printable bytes map to themselves, the
// other 68 to U+0100 onwards, in byte order.
std::vector<std::string> ByteLevelAlphabet() {
  std::vector<std::string> out(256);
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const uint32_t cp = printable ? b : 0x100 + next++;
    std::string utf8;
    if (cp < 0x80) {
      utf8.push_back(static_cast<char>(cp));
    } else {
      utf8.push_back(static_cast<char>(0xC0 | (cp >> 6)));
      utf8.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
    }
    out[b] = utf8;
  }
  return out;
}

json TokenizerJson() {
  json vocab = json::object();
  const std::vector<std::string> alphabet = ByteLevelAlphabet();
  for (int b = 0; b < 256; ++b) vocab[alphabet[b]] = b;
  auto added = [](int id, const char* content) {
    return json{{"id", id},         {"content", content}, {"single_word", false},
                {"lstrip", false},  {"rstrip", false},    {"normalized", false},
                {"special", true}};
  };
  json bos_ref = {{"SpecialToken", {{"id", "<|begin_of_text|>"}, {"type_id", 0}}}};
  return json{
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", {added(kBos, "<|begin_of_text|>"), added(kEos, "<|end_of_text|>")}},
      {"normalizer", nullptr},
      {"pre_tokenizer",
       {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
        {"use_regex", true}}},
      {"post_processor",
       {{"type", "TemplateProcessing"},
        {"single", {bos_ref, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
        {"pair",
         {bos_ref, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, bos_ref,
          {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
        {"special_tokens",
         {{"<|begin_of_text|>",
           {{"id", "<|begin_of_text|>"}, {"ids", {kBos}}, {"tokens", {"<|begin_of_text|>"}}}}}}}},
      {"decoder",
       {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
        {"use_regex", true}}},
      {"model",
       {{"type", "BPE"},
        {"dropout", nullptr},
        {"unk_token", nullptr},
        {"continuing_subword_prefix", nullptr},
        {"end_of_word_suffix", nullptr},
        {"fuse_unk", false},
        {"byte_fallback", false},
        {"ignore_merges", false},
        {"vocab", vocab},
        {"merges", json::array()}}}};
}

json ConfigJson(uint64_t seed) {
  return json{{"architectures", {"LlamaForCausalLM"}},
              {"model_type", "llama"},
              {"vocab_size", kVocab},
              {"hidden_size", kHidden},
              {"intermediate_size", kIntermediate},
              {"num_hidden_layers", kLayers},
              {"num_attention_heads", kHeads},
              {"num_key_value_heads", kKvHeads},
              {"head_dim", kHeadDim},
              {"hidden_act", "silu"},
              {"max_position_embeddings", kContext},
              {"rms_norm_eps", 1e-5},
              {"rope_theta", 10000.0},
              {"rope_scaling", nullptr},
              {"attention_bias", false},
              {"mlp_bias", false},
              {"tie_word_embeddings", false},
              {"bos_token_id", kBos},
              {"eos_token_id", kEos},
              {"torch_dtype", "float32"},
              {"adapterd_default_model_seed", seed}};
}

class Weights {
 public:
  explicit Weights(uint64_t seed) : rng_(seed) {}

  void Normal(const std::string& name, std::vector<int64_t> shape, float stddev) {
    std::normal_distribution<float> dist(0.0f, stddev);
    Add(name, std::move(shape), [&] { return dist(rng_); });
  }
  void Ones(const std::string& name, int64_t n) {
    Add(name, {n}, [] { return 1.0f; });
  }
  const std::vector<SafetensorsTensor>& tensors() const { return tensors_; }

 private:
  template <typename Fn>
  void Add(const std::string& name, std::vector<int64_t> shape, Fn next) {
    int64_t numel = 1;
    for (int64_t d : shape) numel *= d;
    std::vector<float> values(numel);
    for (float& v : values) v = next();
    SafetensorsTensor t{name, "F32", std::move(shape), std::string(numel * sizeof(float), '\0')};
    std::memcpy(t.data.data(), values.data(), t.data.size());
    tensors_.push_back(std::move(t));
  }

  std::mt19937_64 rng_;
  std::vector<SafetensorsTensor> tensors_;
};

absl::Status WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", path.string()));
  return absl::OkStatus();
}

absl::Status Materialize(const fs::path& dir, uint64_t seed) {
  Weights w(seed);
  // Deeper layers get smaller output projections so that activations stay tame.
  const float stddev = 0.02f;
  w.Normal("model.embed_tokens.weight", {kVocab, kHidden}, 1.0f);
  for (int i = 0; i < kLayers; ++i) {
    const std::string p = absl::StrCat("model.layers.", i, ".");
    w.Ones(p + "input_layernorm.weight", kHidden);
    w.Normal(p + "self_attn.q_proj.weight", {kHeads * kHeadDim, kHidden}, stddev * 4);
    w.Normal(p + "self_attn.k_proj.weight", {kKvHeads * kHeadDim, kHidden}, stddev * 4);
    w.Normal(p + "self_attn.v_proj.weight", {kKvHeads * kHeadDim, kHidden}, stddev * 4);
    w.Normal(p + "self_attn.o_proj.weight", {kHidden, kHeads * kHeadDim}, stddev);
    w.Ones(p + "post_attention_layernorm.weight", kHidden);
    w.Normal(p + "mlp.gate_proj.weight", {kIntermediate, kHidden}, stddev * 4);
    w.Normal(p + "mlp.up_proj.weight", {kIntermediate, kHidden}, stddev * 4);
    w.Normal(p + "mlp.down_proj.weight", {kHidden, kIntermediate}, stddev);
  }
  w.Ones("model.norm.weight", kHidden);
  w.Normal("lm_head.weight", {kVocab, kHidden}, stddev * 4);

  RETURN_IF_ERROR(WriteSafetensors((dir / "model.safetensors").string(), w.tensors(),
                                   {{"format", "pt"}}));
  RETURN_IF_ERROR(WriteText(dir / "config.json", ConfigJson(seed).dump(2)));
  RETURN_IF_ERROR(WriteText(dir / "tokenizer.json", TokenizerJson().dump(2)));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> MaterializeDefaultModel(const std::string& data_dir, uint64_t seed) {
  const fs::path dir = fs::path(data_dir) / absl::StrCat("default-model-seed", seed);
  std::error_code ec;
  if (fs::exists(dir / "tokenizer.json", ec)) return dir.string();
  fs::create_directories(data_dir, ec);
  if (ec) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create data dir ", data_dir, ": ", ec.message()));
  }
  const fs::path tmp = fs::path(data_dir) / absl::StrCat(".default-model-tmp-", ::getpid());
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot create ", tmp.string()));
  absl::Status status = Materialize(tmp, seed);
  if (status.ok()) {
    fs::rename(tmp, dir, ec);
    // Another process may have won the race; its copy is identical.
    if (ec && !fs::exists(dir / "tokenizer.json")) {
      status = absl::InternalError(absl::StrCat("cannot rename ", tmp.string(), ": ", ec.message()));
    }
  }
  fs::remove_all(tmp, ec);
  if (!status.ok()) return status;
  return dir.string();
}

}  // namespace adapterd
