#include "adapters_store/adapter_ref.h"

#include <string>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

TEST(AdapterRefTest, AcceptsTheNameCharsetButNoDoubleDot) {
  for (const std::string name : {"a", "my-adapter_1", "v1.2", "A-b.c_d", "x..."}) {
    const bool has_dotdot = name.find("..") != std::string::npos;
    EXPECT_EQ(ValidateAdapterName(name).ok(), !has_dotdot) << name;
  }
  EXPECT_TRUE(ValidateAdapterName(std::string(128, 'a')).ok());
}

TEST(AdapterRefTest, RejectsPathShapesNulControlAndLongNames) {
  const std::string bad[] = {"",
                             ".",
                             "..",
                             "../etc",
                             "a/../b",
                             "/etc/passwd",
                             "model/",
                             "model/sub",
                             ".hidden",
                             "a..b",
                             " ",
                             "\t",
                             "a b",
                             "%2e%2e%2f",
                             "..\\",
                             "C:\\x",
                             std::string("a\0b", 3),
                             "caf\xc3\xa9",
                             std::string(129, 'a'),
                             std::string(300, 'x')};
  for (const std::string& name : bad) {
    absl::Status s = ValidateAdapterName(name);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << "[" << name << "]";
  }
}

TEST(AdapterRefTest, ParsesNameAndOptionalVersion) {
  absl::StatusOr<AdapterRef> ref = ParseAdapterRef("summarize");
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ref->name, "summarize");
  EXPECT_EQ(ref->version, 0);
  ref = ParseAdapterRef("summarize@12");
  ASSERT_TRUE(ref.ok());
  EXPECT_EQ(ref->version, 12);
  EXPECT_EQ(ref->ToString(), "summarize@12");
  for (const char* bad :
       {"x@", "x@0", "x@-1", "x@1.5", "x@v2", "@3", "x@1@2", "x@99999999999999999999"}) {
    EXPECT_EQ(ParseAdapterRef(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(AdapterRefTest, AcceptsOnlyAdapterFilesAndRefusesPickle) {
  EXPECT_TRUE(ValidateAdapterFileName("adapter_config.json").ok());
  EXPECT_TRUE(ValidateAdapterFileName("adapter_model.safetensors").ok());
  EXPECT_TRUE(ValidateAdapterFileName("adapter.safetensors").ok());
  absl::Status s = ValidateAdapterFileName("adapter_model.bin");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("pickle"), std::string::npos);
  for (const char* bad :
       {"pytorch_adapter.bin", "x.pt", "../adapter_config.json", "a/b", "config.json", "",
        "../adapter.safetensors", "./adapter.safetensors", "a/b/adapter.safetensors",
        "/adapter.safetensors", "a//adapter.safetensors", ".hidden/adapter.safetensors",
        "x/adapter_fusion_config.json", "x/prompt_encoder.safetensors", "x/pytorch_adapter.bin",
        "x/", "/"}) {
    EXPECT_EQ(ValidateAdapterFileName(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(AdapterRefTest, AcceptsTheFilesTrainingJobsWrite) {
  for (const char* good : {"prompt_encoder.safetensors", "adapter_fusion_config.json",
                           "model_adapter_fusion.safetensors", "sentiment/adapter_config.json",
                           "sentiment/adapter.safetensors", "nli-v2/adapter_model.safetensors"}) {
    EXPECT_TRUE(ValidateAdapterFileName(good).ok()) << good;
  }
  EXPECT_TRUE(IsTopLevelConfigFile("adapter_fusion_config.json"));
  EXPECT_FALSE(IsTopLevelConfigFile("x/adapter_config.json"));
}

}  // namespace
}  // namespace adapterd
