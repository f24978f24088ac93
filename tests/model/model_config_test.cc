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
  EXPECT_EQ(ModelConfig::FromJson(json).status().code(), absl::StatusCode::kUnimplemented);
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
