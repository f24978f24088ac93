#include "engine/model/safetensors.h"

#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace adapterd {
namespace {

using ::testing::HasSubstr;

// A file with header `json` (unpadded) and `data_len` zero bytes of data.
std::string File(const std::string& json, size_t data_len, uint64_t claimed_len = UINT64_MAX) {
  uint64_t n = claimed_len == UINT64_MAX ? json.size() : claimed_len;
  std::string out;
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += json;
  out.append(data_len, '\0');
  return out;
}

std::string Floats(std::initializer_list<float> values) {
  std::string out(values.size() * sizeof(float), '\0');
  std::memcpy(out.data(), values.begin(), out.size());
  return out;
}

void ExpectInvalid(const std::string& bytes, const std::string& fragment) {
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(bytes);
  ASSERT_FALSE(header.ok());
  EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument) << header.status();
  EXPECT_THAT(std::string(header.status().message()), HasSubstr(fragment));
}

const char kTwoTensors[] = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})";

TEST(SafetensorsTest, HandCraftedValidHeaderParses) {
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(File(kTwoTensors, 16));
  ASSERT_TRUE(header.ok()) << header.status();
  ASSERT_EQ(header->tensors.size(), 2u);
  EXPECT_EQ(header->tensors[1].name, "b");
  EXPECT_EQ(header->tensors[1].begin, 8u);
}

TEST(SafetensorsTest, OverlappingOffsetsAreRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                     12),
                "overlap or hole");
}

TEST(SafetensorsTest, HoleBetweenTensorsIsRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                     20),
                "overlap or hole");
}

TEST(SafetensorsTest, FirstTensorNotAtZeroIsRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", 12),
                "overlap or hole");
}

TEST(SafetensorsTest, SizeDisagreeingWithShapeIsRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8),
                "needs 12 bytes");
}

TEST(SafetensorsTest, EndBeforeBeginIsRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[0,0]},)"
                     R"("b":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})",
                     8),
                "overlap or hole");
}

TEST(SafetensorsTest, HeaderLengthBeyondFileIsRejected) {
  ExpectInvalid(File(kTwoTensors, 16, 1000), "runs past the end");
}

TEST(SafetensorsTest, HugeHeaderLengthIsRejected) {
  ExpectInvalid(File(kTwoTensors, 16, uint64_t{1} << 62), "exceeds the limit");
}

TEST(SafetensorsTest, FileShorterThanLengthPrefixIsRejected) {
  ExpectInvalid(std::string("\x05\x00\x00", 3), "shorter than");
}

TEST(SafetensorsTest, NonJsonHeaderIsRejected) {
  ExpectInvalid(File("{this is not json}", 0), "not valid JSON");
  ExpectInvalid(File("[1, 2, 3]", 0), "does not start with '{'");
}

TEST(SafetensorsTest, DuplicateKeysAreRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                     R"("a":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                     16),
                "duplicate key 'a'");
  ExpectInvalid(File(R"({"a":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", 8),
                "duplicate key 'dtype'");
}

TEST(SafetensorsTest, UnknownDtypeIsRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F99","shape":[2],"data_offsets":[0,8]}})", 8),
                "unknown dtype");
}

TEST(SafetensorsTest, BadShapesAndOffsetsAreRejected) {
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), "bad shape");
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", 8), "not an array");
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8),
                "bad data_offsets");
  ExpectInvalid(File(R"({"a":{"dtype":"F32","shape":[2]}})", 8), "needs");
  ExpectInvalid(File(R"({"a":{"dtype":"U8","shape":[4294967296,4294967296,4294967296],)"
                     R"("data_offsets":[0,8]}})",
                     8),
                "overflows");
}

TEST(SafetensorsTest, TrailingBytesAreRejected) {
  ExpectInvalid(File(kTwoTensors, 17), "data buffer has 17");
}

TEST(SafetensorsTest, MetadataMustBeStrings) {
  ExpectInvalid(File(R"({"__metadata__":{"format":1}})", 0), "not a string");
  absl::StatusOr<SafetensorsHeader> ok =
      ParseSafetensorsHeader(File(R"({"__metadata__":{"format":"pt"}})", 0));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->metadata.at("format"), "pt");
}

TEST(SafetensorsTest, SubByteDtypesMustFillWholeBytes) {
  ExpectInvalid(File(R"({"a":{"dtype":"F4","shape":[3],"data_offsets":[0,2]}})", 2), "whole bytes");
  EXPECT_TRUE(
      ParseSafetensorsHeader(File(R"({"a":{"dtype":"F4","shape":[4],"data_offsets":[0,2]}})", 2))
          .ok());
}

TEST(SafetensorsTest, SerializeRoundTripsAndPadsHeader) {
  std::vector<SafetensorsTensor> tensors = {
      {"w", "F32", {2, 2}, Floats({1, 2, 3, 4})},
      {"b", "BF16", {}, std::string("\x80\x3f", 2)},
      {"empty", "F16", {0, 5}, ""},
      {"i", "I64", {1}, std::string(8, '\x07')},
  };
  absl::StatusOr<std::string> bytes = SerializeSafetensors(tensors, {{"format", "pt"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(*bytes);
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_EQ(header->header_size % 8, 0u);
  EXPECT_EQ(header->metadata.at("format"), "pt");
  // Sorted by dtype alignment descending, then name: i (I64), w (F32), b, empty.
  EXPECT_EQ(header->tensors.front().name, "i");
  ASSERT_EQ(header->tensors.size(), 4u);

  const std::string path = ::testing::TempDir() + "/roundtrip.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const SafetensorsTensorInfo* w = (*file)->Find("w");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ((*file)->Data(*w), Floats({1, 2, 3, 4}));
  const SafetensorsTensorInfo* b = (*file)->Find("b");
  ASSERT_NE(b, nullptr);
  EXPECT_TRUE(b->shape.empty());
  EXPECT_EQ((*file)->Data(*b), std::string("\x80\x3f", 2));
  EXPECT_EQ((*file)->Find("empty")->numel(), 0);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

TEST(SafetensorsTest, SerializeRejectsBadInput) {
  EXPECT_FALSE(SerializeSafetensors({{"a", "F32", {3}, Floats({1, 2})}}).ok());
  EXPECT_FALSE(SerializeSafetensors({{"a", "Q8", {1}, "x"}}).ok());
  EXPECT_FALSE(SerializeSafetensors({{"a", "U8", {1}, "x"}, {"a", "U8", {1}, "y"}}).ok());
}

TEST(SafetensorsTest, OpenReportsMissingAndLyingFiles) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> missing =
      SafetensorsFile::Open(::testing::TempDir() + "/does-not-exist.safetensors");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);

  const std::string path = ::testing::TempDir() + "/lying.safetensors";
  {
    std::ofstream out(path, std::ios::binary);
    const std::string bytes = File(kTwoTensors, 12);  // Claims 16 bytes of data.
    out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> lying = SafetensorsFile::Open(path);
  ASSERT_FALSE(lying.ok());
  EXPECT_EQ(lying.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(lying.status().message()), HasSubstr("lying.safetensors"));

  const std::string empty = ::testing::TempDir() + "/empty.safetensors";
  { std::ofstream out(empty, std::ios::binary); }
  EXPECT_EQ(SafetensorsFile::Open(empty).status().code(), absl::StatusCode::kInvalidArgument);
}

// Random corruption of a valid file: the reader either rejects it or returns
// tensors that lie inside the buffer; it never crashes.
TEST(SafetensorsTest, MutatedFilesNeverEscapeTheBuffer) {
  absl::StatusOr<std::string> valid = SerializeSafetensors({
      {"alpha", "F32", {2, 3}, Floats({1, 2, 3, 4, 5, 6})},
      {"beta", "I32", {2}, std::string(8, '\x01')},
      {"gamma", "U8", {3}, "xyz"},
  });
  ASSERT_TRUE(valid.ok());
  std::mt19937 rng(42);
  int rejected = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    std::string bytes = *valid;
    const int edits = 1 + static_cast<int>(rng() % 3);
    for (int e = 0; e < edits && !bytes.empty(); ++e) {
      const size_t pos = rng() % bytes.size();
      switch (rng() % 3) {
        case 0:
          bytes[pos] = static_cast<char>(rng());
          break;
        case 1:
          bytes[pos] = "0123456789{}[],:\""[rng() % 17];
          break;
        default:
          bytes.resize(pos);
          break;
      }
    }
    absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(bytes);
    if (!header.ok()) {
      ++rejected;
      EXPECT_EQ(header.status().code(), absl::StatusCode::kInvalidArgument);
      continue;
    }
    for (const SafetensorsTensorInfo& t : header->tensors) {
      EXPECT_LE(header->data_start() + t.end, bytes.size());
    }
  }
  EXPECT_GT(rejected, 1000);
}

}  // namespace
}  // namespace adapterd
