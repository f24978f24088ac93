#include "engine/model/tokenizer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "tests/common/fixtures.h"

namespace adapterd {
namespace {

using ::adapterd::testing::FixturesDir;
using ::adapterd::testing::ReadFile;

using json = nlohmann::json;
using ::testing::HasSubstr;

std::string TokenizerDir(const std::string& kind) {
  return absl::StrCat(FixturesDir(), "/tokenizers/", kind);
}

json LoadJson(const std::string& path) {
  return json::parse(ReadFile(path), nullptr, /*allow_exceptions=*/false);
}

std::string Show(const std::vector<int32_t>& ids) { return absl::StrJoin(ids, ","); }

// Compares `tokenizer` with the golden data of `kind`; returns the number of
// mismatching checks and records up to `max_report` of them in `report`.
int CountGoldenMismatches(const Tokenizer& tokenizer, const json& golden, int* checks,
                          std::string* report, int max_report = 15) {
  int mismatches = 0;
  auto fail = [&](const std::string& what) {
    if (mismatches++ < max_report) absl::StrAppend(report, what, "\n");
  };
  for (const json& c : golden["cases"]) {
    const std::string text = c["text"].get<std::string>();
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    const auto ids_no_special = c["ids_no_special"].get<std::vector<int32_t>>();
    const auto ids_no_parse = c["ids_no_parse_special"].get<std::vector<int32_t>>();
    const std::string quoted = json(text).dump();
    auto got = tokenizer.Encode(text, true);
    if (got != ids)
      fail(absl::StrCat("encode ", quoted, ": got [", Show(got), "] want [", Show(ids), "]"));
    got = tokenizer.Encode(text, false);
    if (got != ids_no_special) {
      fail(absl::StrCat("encode(no special) ", quoted, ": got [", Show(got), "] want [",
                        Show(ids_no_special), "]"));
    }
    got = tokenizer.Encode(text, true, /*parse_special=*/false);
    if (got != ids_no_parse) {
      fail(absl::StrCat("encode(parse_special=false) ", quoted, ": got [", Show(got), "] want [",
                        Show(ids_no_parse), "]"));
    }
    std::string dec = tokenizer.Decode(ids, false);
    if (dec != c["decoded"].get<std::string>()) {
      fail(absl::StrCat("decode ", quoted, ": got ", json(dec).dump()));
    }
    dec = tokenizer.Decode(ids, true);
    if (dec != c["decoded_skip_special"].get<std::string>()) {
      fail(absl::StrCat("decode(skip special) ", quoted, ": got ", json(dec).dump()));
    }
    *checks += 5;
  }
  for (const json& d : golden["decodes"]) {
    const auto ids = d["ids"].get<std::vector<int32_t>>();
    std::string dec = tokenizer.Decode(ids, false);
    if (dec != d["decoded"].get<std::string>()) {
      fail(absl::StrCat("decode [", Show(ids), "]: got ", json(dec).dump(), " want ",
                        d["decoded"].dump()));
    }
    dec = tokenizer.Decode(ids, true);
    if (dec != d["decoded_skip_special"].get<std::string>()) {
      fail(absl::StrCat("decode(skip special) [", Show(ids), "]: got ", json(dec).dump(), " want ",
                        d["decoded_skip_special"].dump()));
    }
    *checks += 2;
  }
  return mismatches;
}

class GoldenTest : public ::testing::TestWithParam<std::string> {};

TEST_P(GoldenTest, MatchesHuggingFaceTokenizersOnEveryString) {
  const std::string dir = TokenizerDir(GetParam());
  auto tokenizer = Tokenizer::FromFile(dir + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const json golden = LoadJson(dir + "/golden.json");
  ASSERT_TRUE(golden.is_object());
  ASSERT_GE(golden["cases"].size(), 300u);
  EXPECT_EQ((*tokenizer)->vocab_size(), golden["vocab_size"].get<int64_t>());
  int checks = 0;
  std::string report;
  const int mismatches = CountGoldenMismatches(**tokenizer, golden, &checks, &report);
  EXPECT_EQ(mismatches, 0) << mismatches << " of " << checks << " checks differ:\n" << report;
  std::cout << GetParam() << ": " << golden["cases"].size() << " strings, " << checks << " checks, "
            << mismatches << " mismatches\n";
}

// The four model families, then variants of their pipelines (see
// scripts/fixtures/make_tokenizers.py: Metaspace, Split behaviours, added-token
// flags, a continuing-subword prefix with an end-of-word suffix and unk).
INSTANTIATE_TEST_SUITE_P(Kinds, GoldenTest,
                         ::testing::Values("gpt2", "llama3", "qwen2", "llama2", "mistral",
                                           "metaspace_split", "split_behaviors",
                                           "added_token_flags", "bpe_suffix"),
                         [](const auto& info) { return info.param; });

// Negative controls: the golden comparison must notice a broken pipeline.
int MismatchesAfterEdit(const std::string& kind, const std::function<void(json*)>& edit) {
  const std::string dir = TokenizerDir(kind);
  json j = LoadJson(dir + "/tokenizer.json");
  edit(&j);
  auto tokenizer = Tokenizer::FromJson(j.dump());
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!tokenizer.ok()) return -1;
  int checks = 0;
  std::string report;
  return CountGoldenMismatches(**tokenizer, LoadJson(dir + "/golden.json"), &checks, &report);
}

TEST(GoldenNegativeControlTest, DetectsMissingNfcNormalizer) {
  EXPECT_GT(MismatchesAfterEdit("qwen2", [](json* j) { (*j)["normalizer"] = nullptr; }), 0);
}

TEST(GoldenNegativeControlTest, DetectsChangedMergeOrder) {
  EXPECT_GT(MismatchesAfterEdit("gpt2",
                                [](json* j) {
                                  auto& merges = (*j)["model"]["merges"];
                                  std::reverse(merges.begin(), merges.end());
                                }),
            0);
}

TEST(GoldenNegativeControlTest, DetectsMissingIgnoreMerges) {
  // Dropping merges makes BPE fail to reach whole-word tokens; ignore_merges
  // still finds them, so only the flag hides the difference.
  EXPECT_GT(MismatchesAfterEdit("llama3",
                                [](json* j) {
                                  (*j)["model"]["ignore_merges"] = false;
                                  auto& merges = (*j)["model"]["merges"];
                                  merges.erase(merges.begin() + merges.size() / 2, merges.end());
                                }),
            0);
}

TEST(GoldenNegativeControlTest, DetectsMissingByteFallback) {
  EXPECT_GT(MismatchesAfterEdit("llama2", [](json* j) { (*j)["model"]["byte_fallback"] = false; }),
            0);
}

TEST(TokenizerTest, KeepsSpecialTokenTextAsTextWithoutParseSpecial) {
  auto tokenizer = Tokenizer::FromFile(TokenizerDir("gpt2") + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& t = **tokenizer;
  const auto eot = t.TokenToId("<|endoftext|>");
  ASSERT_TRUE(eot.has_value());
  EXPECT_TRUE(t.IsSpecial(*eot));
  EXPECT_EQ(t.Encode("<|endoftext|>", false), std::vector<int32_t>{*eot});
  const auto as_text = t.Encode("<|endoftext|>", false, /*parse_special=*/false);
  EXPECT_GT(as_text.size(), 1u);
  EXPECT_THAT(as_text, ::testing::Not(::testing::Contains(*eot)));
  EXPECT_EQ(t.Decode(as_text), "<|endoftext|>");
  // Non-special added tokens are matched either way.
  const auto user = t.TokenToId("[USER]");
  ASSERT_TRUE(user.has_value());
  EXPECT_FALSE(t.IsSpecial(*user));
  EXPECT_EQ(t.Encode("[USER]", false, /*parse_special=*/false), std::vector<int32_t>{*user});
}

TEST(TokenizerTest, AddsBosOnlyWithSpecialTokensAndSkipsItOnDecode) {
  auto tokenizer = Tokenizer::FromFile(TokenizerDir("llama3") + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const Tokenizer& t = **tokenizer;
  const int32_t bos = t.TokenToId("<|begin_of_text|>").value();
  const auto with = t.Encode("Hello world", true);
  const auto without = t.Encode("Hello world", false);
  ASSERT_EQ(with.size(), without.size() + 1);
  EXPECT_EQ(with[0], bos);
  EXPECT_EQ(t.Decode(with, /*skip_special_tokens=*/true), "Hello world");
  EXPECT_EQ(t.Decode(with, /*skip_special_tokens=*/false), "<|begin_of_text|>Hello world");
  EXPECT_EQ(t.IdToToken(bos), "<|begin_of_text|>");
}

TEST(TokenizerTest, EncodesKilobytesQuickly) {
  auto tokenizer = Tokenizer::FromFile(TokenizerDir("llama3") + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  std::string text;
  while (text.size() < 200000) text += "The quick brown fox, 12345 jumps!\n\tÜber 😀 straße ";
  const auto ids = (*tokenizer)->Encode(text, false);
  EXPECT_GT(ids.size(), 10000u);
  EXPECT_EQ((*tokenizer)->Decode(ids), text);
}

TEST(TokenizerTest, MissingFileIsNotFound) {
  auto t = Tokenizer::FromFile("/nonexistent/dir/tokenizer.json");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
}

TEST(TokenizerTest, InvalidJsonIsInvalidArgument) {
  auto t = Tokenizer::FromJson("{\"model\": ");
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr("malformed tokenizer.json"));
}

constexpr char kMinimal[] = R"({
  "added_tokens": [],
  "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
  "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<unk>": 3},
            "merges": ["a b"], "unk_token": "<unk>"}
})";

json Minimal() { return json::parse(kMinimal); }

absl::Status StatusOf(const json& j) { return Tokenizer::FromJson(j.dump()).status(); }

TEST(TokenizerTest, MinimalBpeWithUnkAndLegacyMerges) {
  auto t = Tokenizer::FromJson(kMinimal);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ((*t)->Encode("abzab"), (std::vector<int32_t>{2, 3, 2}));
  EXPECT_EQ((*t)->Decode({2, 3, 0}), "ab <unk> a");  // No decoder: joined by spaces.
  EXPECT_EQ((*t)->vocab_size(), 4);
}

TEST(TokenizerTest, UnsupportedComponentsAreInvalidArgumentNamingThem) {
  struct Case {
    const char* field;
    json value;
    const char* expected;
  };
  const std::vector<Case> cases = {
      {"normalizer", {{"type", "Lowercase"}}, "unsupported normalizer type 'Lowercase'"},
      {"pre_tokenizer",
       {{"type", "BertPreTokenizer"}},
       "unsupported pre_tokenizer type 'BertPreTokenizer'"},
      {"post_processor",
       {{"type", "RobertaProcessing"}},
       "unsupported post_processor type 'RobertaProcessing'"},
      {"decoder", {{"type", "WordPiece"}}, "unsupported decoder type 'WordPiece'"},
  };
  for (const Case& c : cases) {
    json j = Minimal();
    j[c.field] = c.value;
    const absl::Status s = StatusOf(j);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(s.message(), HasSubstr(c.expected));
  }
  json j = Minimal();
  j["model"]["type"] = "Unigram";
  EXPECT_THAT(StatusOf(j).message(), HasSubstr("unsupported model type 'Unigram'"));
}

TEST(TokenizerTest, MalformedFieldsAreInvalidArgumentNamingThem) {
  json j = Minimal();
  j["model"]["merges"] = json::array({"a b c"});
  EXPECT_EQ(StatusOf(j).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(StatusOf(j).message(), HasSubstr("bad merge line 1"));

  j = Minimal();
  j["model"]["merges"] = json::array({json::array({"a", "zz"})});
  EXPECT_THAT(StatusOf(j).message(), HasSubstr("not in vocab"));

  j = Minimal();
  j["model"].erase("vocab");
  EXPECT_THAT(StatusOf(j).message(), HasSubstr("model: missing field 'vocab'"));

  j = Minimal();
  j["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"Regex", "(unclosed"}}},
                        {"behavior", "Isolated"},
                        {"invert", false}};
  EXPECT_EQ(StatusOf(j).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(StatusOf(j).message(), HasSubstr("pre_tokenizer.Split: unsupported regex"));

  j = Minimal();
  j["pre_tokenizer"] = {{"type", "Split"},
                        {"pattern", {{"Regex", "a"}}},
                        {"behavior", "Sideways"},
                        {"invert", false}};
  EXPECT_THAT(StatusOf(j).message(), HasSubstr("pre_tokenizer.Split"));

  j = Minimal();
  j["added_tokens"] = json::array({{{"content", "x"}}});
  EXPECT_THAT(StatusOf(j).message(), HasSubstr("added_tokens: missing field 'id'"));
}

TEST(TokenizerTest, SplitBehaviorsMatchTokenizers) {
  // Expected pieces from tokenizers' split.rs tests on "How are you doing?"
  // with pattern " ". With ignore_merges every piece in the vocab is one id,
  // so the ids show the pieces.
  struct Case {
    std::string behavior, text, want;
  };
  const std::vector<Case> cases = {
      {"Removed", "How are you doing?", "How|are|you|doing?"},
      {"Isolated", "How are you doing?", "How| |are| |you| |doing?"},
      {"MergedWithPrevious", "How are you doing?", "How |are |you |doing?"},
      {"MergedWithNext", "How are you doing?", "How| are| you| doing?"},
      {"Contiguous", "How are you doing?", "How| |are| |you| |doing?"},
      {"Removed", "a  b ", "a|b"},
      {"Isolated", "a  b ", "a| | |b| "},
      {"MergedWithPrevious", "a  b ", "a | |b "},
      {"MergedWithNext", "a  b ", "a| | b| "},
      {"Contiguous", "a  b ", "a|  |b| "},
  };
  json vocab = json::object();
  for (const auto& [behavior, text, want] : cases) {
    const std::vector<std::string> pieces = absl::StrSplit(want, '|');
    for (const std::string& piece : pieces) {
      if (!vocab.contains(piece)) vocab[piece] = static_cast<int>(vocab.size());
    }
  }
  for (const auto& [behavior, text, want] : cases) {
    json j = Minimal();
    j["model"] = {
        {"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}, {"ignore_merges", true}};
    j["pre_tokenizer"] = {{"type", "Split"},
                          {"pattern", {{"String", " "}}},
                          {"behavior", behavior},
                          {"invert", false}};
    auto t = Tokenizer::FromJson(j.dump());
    ASSERT_TRUE(t.ok()) << t.status();
    std::vector<std::string> pieces;
    for (int32_t id : (*t)->Encode(text)) pieces.push_back(*(*t)->IdToToken(id));
    EXPECT_EQ(absl::StrJoin(pieces, "|"), want) << behavior;
  }
}

}  // namespace
}  // namespace adapterd
