#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/tokenizer.h"
#include "engine/model/tokenizer_pipeline.h"
#include "engine/model/unicode_text.h"

namespace adapterd {
namespace {

std::unique_ptr<Tokenizer> Load(const std::string& kind) {
  const char* dir = std::getenv("ADAPTERD_FIXTURES_DIR");
  if (dir == nullptr) return nullptr;
  auto t = Tokenizer::FromFile(absl::StrCat(dir, "/tokenizers/", kind, "/tokenizer.json"));
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// Streams `ids` one at a time; checks every piece is valid UTF-8 and returns
// the pieces (the last one from Flush).
std::vector<std::string> Stream(const Tokenizer& t, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& ids, bool skip_special = true) {
  StreamDecoder decoder(&t, prompt, skip_special);
  std::vector<std::string> pieces;
  for (int32_t id : ids) {
    pieces.push_back(decoder.Push(id));
    EXPECT_TRUE(IsValidUtf8(pieces.back())) << "piece " << pieces.size();
  }
  pieces.push_back(decoder.Flush());
  EXPECT_TRUE(IsValidUtf8(pieces.back()));
  return pieces;
}

std::string Join(const std::vector<std::string>& pieces) {
  std::string out;
  for (const auto& p : pieces) out += p;
  return out;
}

class StreamDecoderTest : public ::testing::TestWithParam<std::string> {};

TEST_P(StreamDecoderTest, EmitsValidUtf8WhoseConcatenationEqualsDecode) {
  auto t = Load(GetParam());
  ASSERT_NE(t, nullptr) << "ADAPTERD_FIXTURES_DIR is not set or the fixture is missing";
  const std::vector<std::string> texts = {
      "Hello world! 😀 emoji 👨‍👩‍👧‍👦 family, 🇫🇷 flag.",
      "日本語のテキスト and Русский текст, ẞ ǅ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
      "  leading spaces\n\ttabs\r\nand 12345 digits 😀😀😀",
      "😀",
  };
  for (const std::string& text : texts) {
    const std::vector<int32_t> ids = t->Encode(text, false);
    const std::vector<std::string> pieces = Stream(*t, {}, ids);
    EXPECT_EQ(Join(pieces), t->Decode(ids, true)) << text;
    EXPECT_EQ(Join(pieces), text);
  }
}

TEST_P(StreamDecoderTest, UsesThePromptAsContext) {
  auto t = Load(GetParam());
  ASSERT_NE(t, nullptr);
  const std::vector<int32_t> prompt = t->Encode("Say it:", true);
  // SentencePiece-style normalizers prepend the word boundary themselves.
  const std::vector<int32_t> tail =
      t->Encode(GetParam() == "llama2" ? "hello there 😀 friend" : " hello there 😀 friend", false);
  std::vector<int32_t> all = prompt;
  all.insert(all.end(), tail.begin(), tail.end());
  const std::string full = t->Decode(all, true);
  const std::string head = t->Decode(prompt, true);
  ASSERT_EQ(full.compare(0, head.size(), head), 0) << full;
  const std::string streamed = Join(Stream(*t, prompt, tail));
  EXPECT_EQ(streamed, full.substr(head.size()));
  // Without the prompt, a SentencePiece-style decoder would drop the space.
  EXPECT_EQ(streamed.substr(0, 6), " hello") << GetParam();
}

INSTANTIATE_TEST_SUITE_P(Kinds, StreamDecoderTest,
                         ::testing::Values("gpt2", "llama3", "qwen2", "llama2"),
                         [](const auto& info) { return info.param; });

TEST(StreamDecoderTest, HoldsBackAnEmojiSplitAcrossByteTokens) {
  auto t = Load("llama2");
  ASSERT_NE(t, nullptr);
  // In the Llama-2 style fixture, 😀 is not in the vocab: byte fallback gives
  // <0xF0><0x9F><0x98><0x80>.
  const std::vector<int32_t> ids = t->Encode("a😀", false);
  std::vector<int32_t> bytes;
  for (const char* b : {"<0xF0>", "<0x9F>", "<0x98>", "<0x80>"}) {
    auto id = t->TokenToId(b);
    ASSERT_TRUE(id.has_value());
    bytes.push_back(*id);
  }
  ASSERT_GE(ids.size(), 4u);
  ASSERT_TRUE(std::equal(bytes.begin(), bytes.end(), ids.end() - 4));
  StreamDecoder decoder(t.get(), {});
  std::vector<std::string> pieces;
  for (int32_t id : ids) pieces.push_back(decoder.Push(id));
  // The three bytes before the last are held back, then the whole emoji comes.
  EXPECT_EQ(pieces[pieces.size() - 4], "");
  EXPECT_EQ(pieces[pieces.size() - 3], "");
  EXPECT_EQ(pieces[pieces.size() - 2], "");
  EXPECT_EQ(pieces.back(), "😀");
  EXPECT_EQ(decoder.Flush(), "");
  EXPECT_EQ(Join(pieces), t->Decode(ids));
}

TEST(StreamDecoderTest, HoldsBackAnEmojiSplitAcrossByteLevelTokens) {
  auto t = Load("gpt2");
  ASSERT_NE(t, nullptr);
  // Byte-level tokens for the four bytes of 😀, one token each.
  std::vector<int32_t> ids = t->Encode("ok", false);
  const size_t head = ids.size();
  for (unsigned char b : std::string("😀")) {
    auto id = t->TokenToId(ByteLevelChars()[b]);
    ASSERT_TRUE(id.has_value());
    ids.push_back(*id);
  }
  StreamDecoder decoder(t.get(), {});
  std::string out;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = decoder.Push(ids[i]);
    EXPECT_TRUE(IsValidUtf8(piece));
    if (i >= head && i + 1 < ids.size()) EXPECT_EQ(piece, "") << i;
    out += piece;
  }
  out += decoder.Flush();
  EXPECT_EQ(out, "ok😀");
  EXPECT_EQ(out, t->Decode(ids));
}

TEST(StreamDecoderTest, FlushReplacesAnUnfinishedCharacter) {
  auto t = Load("llama2");
  ASSERT_NE(t, nullptr);
  StreamDecoder decoder(t.get(), {});
  EXPECT_EQ(decoder.Push(*t->TokenToId("<0xF0>")), "");
  EXPECT_EQ(decoder.Push(*t->TokenToId("<0x9F>")), "");
  EXPECT_EQ(decoder.Flush(), "\xEF\xBF\xBD");
}

TEST(StreamDecoderTest, NegativeControlNaiveTokenDecodingBreaksUtf8) {
  // Decoding token by token (what StreamDecoder avoids) yields invalid text
  // pieces for a split emoji; this proves the fixture exercises the case.
  auto t = Load("llama2");
  ASSERT_NE(t, nullptr);
  const std::string piece = t->DecodeBytes({*t->TokenToId("<0xF0>")});
  EXPECT_FALSE(IsValidUtf8(piece));
}

}  // namespace
}  // namespace adapterd
