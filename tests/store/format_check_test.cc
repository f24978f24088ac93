#include "adapters_store/format_check.h"

#include "gtest/gtest.h"
#include "tests/store/store_test_util.h"

namespace adapterd {
namespace {

using testing::LoraFiles;
using testing::MakeSafetensors;
using testing::TempDir;
using testing::WriteFiles;

TEST(FormatCheckTest, AcceptsAPeftLoraAdapter) {
  TempDir tmp;
  WriteFiles(tmp.path(), LoraFiles(1));
  absl::StatusOr<AdapterMeta> meta = CheckAdapterFormat(tmp.path());
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->method, "lora");
}

TEST(FormatCheckTest, NamesTheMethodOfPeftAndAdapterHubConfigs) {
  EXPECT_EQ(*AdapterMethodFromConfig(R"({"peft_type":"PREFIX_TUNING"})"), "prefix_tuning");
  EXPECT_EQ(*AdapterMethodFromConfig(R"({"peft_type":"P_TUNING"})"), "p_tuning");
  EXPECT_EQ(*AdapterMethodFromConfig(R"({"peft_type":"PROMPT_TUNING"})"), "prompt_tuning");
  EXPECT_EQ(
      *AdapterMethodFromConfig(R"({"config":{"architecture":null},"version":"adapters.1.2.0"})"),
      "bottleneck");
  EXPECT_EQ(*AdapterMethodFromConfig(R"({"config":{"architecture":"lora"}})"), "lora");
  for (const char* bad : {"", "[]", "{", R"({"peft_type":"IA3"})", R"({"peft_type":3})",
                          R"({"r":8})", R"({"config":{"architecture":"reft"}})"}) {
    EXPECT_EQ(AdapterMethodFromConfig(bad).status().code(), absl::StatusCode::kInvalidArgument)
        << bad;
  }
}

TEST(FormatCheckTest, AdapterHubLayoutNeedsAdapterSafetensors) {
  TempDir tmp;
  WriteFiles(tmp.path(), {{"adapter_config.json", R"({"config":{"architecture":null}})"}});
  EXPECT_EQ(CheckAdapterFormat(tmp.path()).status().code(), absl::StatusCode::kInvalidArgument);
  WriteFiles(tmp.path(), {{"adapter.safetensors", MakeSafetensors({{"w", {2, 2}}}, 3)}});
  absl::StatusOr<AdapterMeta> meta = CheckAdapterFormat(tmp.path());
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->method, "bottleneck");
}

// Each case breaks one safetensors rule; the well-formed file passes (the
// negative control that the checker is not rejecting everything).
TEST(FormatCheckTest, RejectsMalformedSafetensors) {
  const std::string good = MakeSafetensors({{"a", {2, 3}}, {"b", {3}}}, 7);
  auto header_of = [](const std::string& json, const std::string& data) {
    std::string out(8, '\0');
    for (int i = 0; i < 8; ++i) out[i] = static_cast<char>((json.size() >> (8 * i)) & 0xff);
    return out + json + data;
  };
  const std::string bad[] = {
      "",
      "1234567",
      std::string(8, '\0'),
      good.substr(0, good.size() - 1),  // truncated data
      good + "x",                       // trailing bytes
      header_of("[]", ""),
      header_of("not json", ""),
      header_of(R"({"a":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}})", std::string(8, 'x')),
      header_of(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}})", std::string(4, 'x')),
      header_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", std::string(8, 'x')),
      header_of(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}})", std::string(8, 'x')),
      header_of(R"({"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}})", std::string(4, 'x')),
      header_of(R"({"a":{"dtype":"F32","shape":[1]}})", std::string(4, 'x')),
      header_of(R"({})", ""),
      header_of(
          R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,4]}})",
          std::string(4, 'x')),
  };
  TempDir tmp;
  const std::string path = tmp / "w.safetensors";
  std::ofstream(path, std::ios::binary) << good;
  ASSERT_TRUE(CheckSafetensorsFile(path).ok());
  int i = 0;
  for (const std::string& bytes : bad) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bytes;
    EXPECT_EQ(CheckSafetensorsFile(path).code(), absl::StatusCode::kInvalidArgument)
        << "case " << i;
    ++i;
  }
}

TEST(FormatCheckTest, AMissingWeightsFileIsInvalid) {
  TempDir tmp;
  WriteFiles(tmp.path(), {{"adapter_config.json", testing::LoraConfig()}});
  absl::Status s = CheckAdapterFormat(tmp.path()).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(s.message().find("adapter_model.safetensors"), std::string::npos) << s;
}

}  // namespace
}  // namespace adapterd
