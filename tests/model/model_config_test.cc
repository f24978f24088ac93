#include "engine/model/model_config.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace adapterd {
namespace {

using ::testing::HasSubstr;

constexpr char kLlamaV4[] = R"({
  "architectures": ["LlamaForCausalLM"], "model_type": "llama",
  "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
  "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8,
  "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
  "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                   "original_max_position_embeddings": 8192, "rope_type": "llama3"},
  "tie_word_embeddings": true, "bos_token_id": 128000,
  "eos_token_id": [128001, 128008, 128009], "torch_dtype": "bfloat16", "hidden_act": "silu"
})";

TEST(ModelConfigTest, ParsesLlama3WithV4RopeScaling) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(kLlamaV4);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kLlama);
  EXPECT_EQ(c->vocab_size, 128256);
  EXPECT_EQ(c->num_kv_heads, 8);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_DOUBLE_EQ(c->rope_theta, 500000.0);
  EXPECT_EQ(c->rope_scaling.type, "llama3");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 32.0);
  EXPECT_EQ(c->rope_scaling.original_max_position_embeddings, 8192);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{128001, 128008, 128009}));
  EXPECT_EQ(c->bos_token_id, 128000);
  EXPECT_EQ(c->torch_dtype, "bfloat16");
  EXPECT_DOUBLE_EQ(c->norm_eps, 1e-5);
  EXPECT_FALSE(c->attention_bias);
  EXPECT_EQ(c->sliding_window, 0);
}

TEST(ModelConfigTest, ParsesV5RopeParametersAndDtype) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(R"({
    "model_type": "llama", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": null,
    "rope_parameters": {"rope_type": "linear", "rope_theta": 20000.0, "factor": 2.0},
    "dtype": "float16", "eos_token_id": 7})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_kv_heads, 4);
  EXPECT_DOUBLE_EQ(c->rope_theta, 20000.0);
  EXPECT_EQ(c->rope_scaling.type, "linear");
  EXPECT_DOUBLE_EQ(c->rope_scaling.factor, 2.0);
  EXPECT_EQ(c->torch_dtype, "float16");
  EXPECT_EQ(c->eos_token_ids, (std::vector<int32_t>{7}));
}

TEST(ModelConfigTest, AcceptsTypeAsAliasOfRopeTypeAndExplicitHeadDim) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(R"({
    "model_type": "mistral", "vocab_size": 100, "hidden_size": 5120, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "rope_scaling": {"type": "dynamic", "factor": 4.0}, "sliding_window": 4096})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->head_dim, 128);
  EXPECT_EQ(c->rope_scaling.type, "dynamic");
  EXPECT_EQ(c->sliding_window, 4096);
  EXPECT_EQ(c->sliding_layers, (std::vector<bool>{true, true}));
}

TEST(ModelConfigTest, ParsesYarnFieldsInBothForms) {
  const std::string head = R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 4096, )";
  const std::string yarn =
      R"({"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024,
    "beta_fast": 16, "beta_slow": 2, "truncate": false, "mscale": 0.7, "mscale_all_dim": 0.7})";
  for (const std::string& key : {"rope_scaling", "rope_parameters"}) {
    absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(head + "\"" + key + "\": " + yarn + "}");
    ASSERT_TRUE(c.ok()) << c.status();
    const RopeScaling& r = c->rope_scaling;
    EXPECT_EQ(r.type, "yarn");
    EXPECT_DOUBLE_EQ(r.factor, 4.0);
    EXPECT_EQ(r.original_max_position_embeddings, 1024);
    EXPECT_DOUBLE_EQ(r.beta_fast, 16);
    EXPECT_DOUBLE_EQ(r.beta_slow, 2);
    EXPECT_FALSE(r.truncate);
    EXPECT_EQ(r.mscale, 0.7);
    EXPECT_EQ(r.mscale_all_dim, 0.7);
    EXPECT_FALSE(r.attention_factor.has_value());
  }
  absl::StatusOr<ModelConfig> defaults =
      ModelConfig::FromJson(head + R"("rope_scaling": {"rope_type": "yarn", "factor": 2.0}})");
  ASSERT_TRUE(defaults.ok()) << defaults.status();
  EXPECT_EQ(defaults->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(defaults->rope_scaling.beta_fast, 32);
  EXPECT_DOUBLE_EQ(defaults->rope_scaling.beta_slow, 1);
  EXPECT_TRUE(defaults->rope_scaling.truncate);
}

TEST(ModelConfigTest, LongropeTakesTheTopLevelOriginalLengthAndDerivesFactor) {
  const std::string head = R"({"model_type": "llama", "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
    "max_position_embeddings": 4096, )";
  const std::string factors = R"("short_factor": [1, 1, 1, 1, 1, 1, 1, 1],
    "long_factor": [1, 2, 3, 4, 5, 6, 7, 8.5])";
  absl::StatusOr<ModelConfig> phi3 =
      ModelConfig::FromJson(head + R"("original_max_position_embeddings": 1024,
      "rope_scaling": {"type": "longrope", "factor": 2.0, )" +
                            factors + "}}");
  ASSERT_TRUE(phi3.ok()) << phi3.status();
  EXPECT_EQ(phi3->rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(phi3->rope_scaling.factor, 4.0);
  EXPECT_EQ(phi3->rope_scaling.long_factor.back(), 8.5);
  // transformers 4.57 ignores the v4 dict's original_max_position_embeddings for longrope.
  absl::StatusOr<ModelConfig> v4 =
      ModelConfig::FromJson(head + R"("rope_scaling": {"rope_type": "longrope", "factor": 2.0,
      "original_max_position_embeddings": 1024, )" +
                            factors + "}}");
  ASSERT_TRUE(v4.ok()) << v4.status();
  EXPECT_EQ(v4->rope_scaling.original_max_position_embeddings, 4096);
  EXPECT_DOUBLE_EQ(v4->rope_scaling.factor, 2.0);
  absl::StatusOr<ModelConfig> v5 = ModelConfig::FromJson(
      head + R"("rope_parameters": {"rope_type": "longrope", "rope_theta": 10000.0,
      "original_max_position_embeddings": 1024, )" +
      factors + "}}");
  ASSERT_TRUE(v5.ok()) << v5.status();
  EXPECT_EQ(v5->rope_scaling.original_max_position_embeddings, 1024);
  EXPECT_DOUBLE_EQ(v5->rope_scaling.factor, 4.0);
  absl::StatusOr<ModelConfig> short_list =
      ModelConfig::FromJson(head + R"("rope_scaling": {"rope_type": "longrope", "short_factor": [1],
      "long_factor": [1]}})");
  EXPECT_EQ(short_list.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, Qwen2HasQkvBiasAndNoWindowUnlessEnabled) {
  const std::string base = R"({"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4,
    "num_key_value_heads": 2, "sliding_window": 32, "max_window_layers": 2, )";
  absl::StatusOr<ModelConfig> off = ModelConfig::FromJson(base + R"("use_sliding_window": false})");
  ASSERT_TRUE(off.ok()) << off.status();
  EXPECT_TRUE(off->attention_bias);
  EXPECT_FALSE(off->attention_out_bias);
  EXPECT_EQ(off->sliding_window, 0);
  absl::StatusOr<ModelConfig> on = ModelConfig::FromJson(base + R"("use_sliding_window": true})");
  ASSERT_TRUE(on.ok()) << on.status();
  EXPECT_EQ(on->sliding_window, 32);
  EXPECT_EQ(on->sliding_layers, (std::vector<bool>{false, false, true, true}));
}

TEST(ModelConfigTest, ParsesGpt2FieldNames) {
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(R"({
    "model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12,
    "n_positions": 1024, "n_inner": null, "layer_norm_epsilon": 1e-05,
    "activation_function": "gelu_new", "bos_token_id": 50256, "eos_token_id": 50256})");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->architecture, Architecture::kGpt2);
  EXPECT_EQ(c->hidden_size, 768);
  EXPECT_EQ(c->intermediate_size, 3072);
  EXPECT_EQ(c->num_layers, 12);
  EXPECT_EQ(c->num_kv_heads, 12);
  EXPECT_EQ(c->head_dim, 64);
  EXPECT_EQ(c->max_position_embeddings, 1024);
  EXPECT_TRUE(c->tie_word_embeddings);
  EXPECT_EQ(c->hidden_act, "gelu_new");
}

TEST(ModelConfigTest, UnknownModelTypeIsUnimplementedAndNamed) {
  absl::StatusOr<ModelConfig> c =
      ModelConfig::FromJson(R"({"model_type": "bert", "vocab_size": 3})");
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("'bert'"));
}

TEST(ModelConfigTest, UnknownRopeTypeIsUnimplemented) {
  std::string json = kLlamaV4;
  json.replace(json.find("\"llama3\""), 8, "\"su\"");
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(json);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("'su'"));
}

TEST(ModelConfigTest, MalformedConfigsAreInvalidArgument) {
  EXPECT_EQ(ModelConfig::FromJson("{not json").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ModelConfig::FromJson("[]").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ModelConfig::FromJson(R"({"vocab_size": 3})").status().code(),
            absl::StatusCode::kInvalidArgument);
  std::string missing = kLlamaV4;
  missing.replace(missing.find("\"hidden_size\""), 13, "\"hidden_sizeX\"");
  absl::StatusOr<ModelConfig> c = ModelConfig::FromJson(missing);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(c.status().message()), HasSubstr("hidden_size"));
  std::string gqa = kLlamaV4;
  gqa.replace(gqa.find("\"num_key_value_heads\": 8"), 24, "\"num_key_value_heads\": 5");
  EXPECT_EQ(ModelConfig::FromJson(gqa).status().code(), absl::StatusCode::kInvalidArgument);
  std::string string_size = kLlamaV4;
  string_size.replace(string_size.find("128256"), 6, "\"big\"");
  EXPECT_EQ(ModelConfig::FromJson(string_size).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ModelConfigTest, MissingFileIsNotFound) {
  EXPECT_EQ(ModelConfig::FromFile("/nonexistent/config.json").status().code(),
            absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace adapterd
