#include "engine/training/dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "engine/model/tokenizer.h"

namespace adapterd {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Not;

std::string FixturesDir() {
  const char* dir = std::getenv("ADAPTERD_FIXTURES_DIR");
  return dir == nullptr ? std::string() : std::string(dir);
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream buf;
  buf << in.rdbuf();
  return buf.str();
}

std::unique_ptr<Tokenizer> LoadTokenizer(const std::string& kind) {
  auto tok =
      Tokenizer::FromFile(absl::StrCat(FixturesDir(), "/tokenizers/", kind, "/tokenizer.json"));
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? std::move(*tok) : nullptr;
}

std::vector<int32_t> Concat(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// The Llama-2 style fixture tokenizer adds <s> and has </s>; GPT-2's adds
// nothing and has <|endoftext|>.
class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    llama_ = LoadTokenizer("llama2");
    gpt2_ = LoadTokenizer("gpt2");
    ASSERT_NE(llama_, nullptr);
    ASSERT_NE(gpt2_, nullptr);
    bos_ = *llama_->TokenToId("<s>");
    eos_ = *llama_->TokenToId("</s>");
  }
  void TearDown() override {
    for (const std::string& p : files_) unlink(p.c_str());
  }

  std::string Write(const std::string& content) {
    std::string path = absl::StrCat(::testing::TempDir(), "/dataset_test_", getpid(), "_",
                                    files_.size(), ".jsonl");
    std::ofstream(path, std::ios::binary) << content;
    files_.push_back(path);
    return path;
  }

  absl::StatusOr<TrainingDataset> Read(const std::string& content,
                                       const DatasetReadOptions& options = {},
                                       const Tokenizer* tokenizer = nullptr) {
    return ReadTrainingDataset(Write(content), tokenizer ? *tokenizer : *llama_, options);
  }

  std::vector<int32_t> Enc(const std::string& s, bool special) const {
    return llama_->Encode(s, special);
  }

  std::unique_ptr<Tokenizer> llama_, gpt2_;
  int32_t bos_ = -1, eos_ = -1;
  std::vector<std::string> files_;
};

TEST_F(DatasetTest, PromptCompletionRowIsPromptWithSpecialTokensThenCompletionThenEos) {
  auto ds = Read(R"({"prompt": "Hello there", "completion": " general Kenobi"})"
                 "\n");
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->train.size(), 1u);
  const TrainingRow& row = ds->train[0];
  const std::vector<int32_t> prompt = Enc("Hello there", true);
  ASSERT_EQ(prompt.front(), bos_);
  std::vector<int32_t> want = Concat(prompt, Enc(" general Kenobi", false));
  want.push_back(eos_);
  EXPECT_EQ(row.ids, want);
  EXPECT_EQ(row.loss_begin, static_cast<int64_t>(prompt.size()));
  EXPECT_EQ(row.line, 1);
  EXPECT_EQ(ds->report.lines, 1);
  EXPECT_EQ(ds->report.rows_used, 1);
  EXPECT_EQ(ds->report.train_rows, 1);
  EXPECT_EQ(ds->report.eval_rows, 0);
  EXPECT_EQ(ds->report.tokens, static_cast<int64_t>(want.size()));
}

TEST_F(DatasetTest, TextRowHasLossOnEveryTokenAfterTheFirst) {
  auto ds = Read(R"({"text": "one two three"})"
                 "\n");
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::vector<int32_t> want = Enc("one two three", true);
  want.push_back(eos_);
  EXPECT_EQ(ds->train[0].ids, want);
  EXPECT_EQ(ds->train[0].loss_begin, 1);
}

TEST_F(DatasetTest, EmptyPromptWithoutBosStillPredictsFromTheFirstToken) {
  auto ds = Read(R"({"prompt": "", "completion": "abc"})"
                 "\n",
                 {}, gpt2_.get());
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::vector<int32_t> want = gpt2_->Encode("abc", false);
  want.push_back(*gpt2_->TokenToId("<|endoftext|>"));
  EXPECT_EQ(ds->train[0].ids, want);
  EXPECT_EQ(ds->train[0].loss_begin, 1);
}

TEST_F(DatasetTest, EosIsFoundByCommonNamesOrGivenExplicitly) {
  auto llama3 = LoadTokenizer("llama3");
  ASSERT_NE(llama3, nullptr);
  auto ds = Read(R"({"text": "abc"})"
                 "\n",
                 {}, llama3.get());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->train[0].ids.back(), *llama3->TokenToId("<|end_of_text|>"));

  DatasetReadOptions options;
  options.eos_token = "<|eot_id|>";
  ds = Read(R"({"text": "abc"})"
            "\n",
            options, llama3.get());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->train[0].ids.back(), *llama3->TokenToId("<|eot_id|>"));

  options.eos_token = "<|no such token|>";
  ds = Read(R"({"text": "abc"})"
            "\n",
            options, llama3.get());
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("<|no such token|>"));
}

TEST_F(DatasetTest, TokenizerWithoutEosAppendsNothing) {
  // The GPT-2 fixture with its end-of-text tokens renamed.
  std::string json = ReadFile(absl::StrCat(FixturesDir(), "/tokenizers/gpt2/tokenizer.json"));
  json = absl::StrReplaceAll(json, {{"<|endoftext|>", "<|pad|>"}, {"<|im_end|>", "<|im_stop|>"}});
  auto no_eos = Tokenizer::FromJson(json);
  ASSERT_TRUE(no_eos.ok()) << no_eos.status();
  auto ds = Read(R"({"prompt": "a", "completion": "bc"})"
                 "\n",
                 {}, no_eos->get());
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->train[0].ids, Concat((*no_eos)->Encode("a", true), (*no_eos)->Encode("bc", false)));
}

TEST_F(DatasetTest, MalformedLinesRefuseTheDatasetNamingTheFirstFive) {
  const std::string content =
      absl::StrCat(R"({"prompt": "a", "completion": "b"})", "\n",  // 1: good
                   "{not json\n",                                  // 2
                   "[1, 2]\n",                                     // 3
                   R"({"prompt": "a"})", "\n",                     // 4
                   R"({"prompt": "a", "completion": 7})", "\n",    // 5
                   R"({"other": "x"})", "\n",                      // 6
                   "{\"text\": \"caf\xC3\"}\n",                    // 7: truncated UTF-8
                   "{\"text\": \"never reported\"\n");             // 8
  auto ds = Read(content);
  ASSERT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string msg(ds.status().message());
  EXPECT_THAT(msg, HasSubstr("line 2: not valid JSON"));
  EXPECT_THAT(msg, HasSubstr("line 3: not a JSON object"));
  EXPECT_THAT(msg, HasSubstr("line 4: has \"prompt\" without \"completion\""));
  EXPECT_THAT(msg, HasSubstr("line 5: \"completion\" is not a string"));
  EXPECT_THAT(msg, HasSubstr("line 6: has neither"));
  EXPECT_THAT(msg, Not(HasSubstr("line 7")));
  EXPECT_THAT(msg, Not(HasSubstr("line 8")));
}

TEST_F(DatasetTest, SkipInvalidRowsCountsThemAndKeepsTheFirstErrors) {
  const std::string content = absl::StrCat("{\"text\": \"\xC0\x80 overlong\"}\n",            // 1
                                           "{\"text\": \"\xED\xA0\x80 surrogate\"}\n",       // 2
                                           "{\"text\": \"\x80 lone continuation\"}\n",       // 3
                                           "{\"text\": \"\xF4\x90\x80\x80 > U+10FFFF\"}\n",  // 4
                                           R"({"text": "good \u00e9 row"})", "\n",           // 5
                                           "{\"text\": \"caf\xC3\xA9 fine\"}\n",             // 6
                                           "\"just a string\"\n",                            // 7
                                           R"({"text": ["x"]})", "\n");                      // 8
  DatasetReadOptions options;
  options.policy.skip_invalid_rows = true;
  auto ds = Read(content, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->report.lines, 8);
  EXPECT_EQ(ds->report.skipped_malformed, 6);
  EXPECT_EQ(ds->report.rows_used, 2);
  EXPECT_EQ(ds->train[0].line, 5);
  EXPECT_EQ(ds->train[1].line, 6);
  EXPECT_THAT(ds->report.first_errors,
              ElementsAre("line 1: invalid UTF-8 at byte 11", "line 2: invalid UTF-8 at byte 11",
                          "line 3: invalid UTF-8 at byte 11", "line 4: invalid UTF-8 at byte 11",
                          "line 7: not a JSON object"));
}

TEST_F(DatasetTest, EmptyCompletionsAndTextsAreSkippedAndCounted) {
  auto ds = Read(absl::StrCat(R"({"prompt": "a", "completion": ""})", "\n", R"({"text": ""})", "\n",
                              R"({"prompt": "", "completion": "x"})", "\n"));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->report.skipped_empty, 2);
  EXPECT_EQ(ds->report.rows_used, 1);
  EXPECT_EQ(ds->train[0].line, 3);
}

TEST_F(DatasetTest, NoUsableRowIsInvalidArgument) {
  auto ds = Read(R"({"prompt": "a", "completion": ""})"
                 "\n\n");
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("no usable row"));
  ds = Read("\n  \r\n");
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(DatasetTest, LongRowsLoseThePromptStartThenTheCompletionEnd) {
  const std::string prompt_text = "the quick brown fox jumps over the lazy dog";
  const std::vector<int32_t> prompt = Enc(prompt_text, true);
  std::vector<int32_t> completion = Enc(" and runs away", false);
  completion.push_back(eos_);
  ASSERT_GT(prompt.size(), 4u);
  ASSERT_GT(completion.size(), 3u);
  const std::string line =
      absl::StrCat(R"({"prompt": ")", prompt_text, R"(", "completion": " and runs away"})", "\n");

  // Three prompt tokens survive: the prompt's last three.
  DatasetReadOptions options;
  options.reserved_tokens = 5;
  options.max_seq_length = static_cast<int>(completion.size() + 3 + 5);
  auto ds = Read(line, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  std::vector<int32_t> want(prompt.end() - 3, prompt.end());
  want.insert(want.end(), completion.begin(), completion.end());
  EXPECT_EQ(ds->train[0].ids, want);
  EXPECT_EQ(ds->train[0].loss_begin, 3);
  EXPECT_EQ(ds->report.truncated, 1);

  // No prompt token survives: the completion loses its end (EOS first).
  options.reserved_tokens = 0;
  options.max_seq_length = 3;
  ds = Read(line, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->train[0].ids, std::vector<int32_t>(completion.begin(), completion.begin() + 3));
  EXPECT_EQ(ds->train[0].loss_begin, 1);
  EXPECT_EQ(ds->report.truncated, 1);
  EXPECT_EQ(ds->report.skipped_too_long, 0);
}

TEST_F(DatasetTest, RowCutToNothingToPredictIsSkippedAsTooLong) {
  DatasetReadOptions options;
  options.max_seq_length = 4;
  options.reserved_tokens = 3;
  auto ds = Read(absl::StrCat(R"({"prompt": "abc", "completion": "def"})", "\n",
                              R"({"text": "ghi jkl"})", "\n"),
                 options);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);

  options.max_seq_length = 5;  // Two tokens: one predicts the other.
  ds = Read(
      absl::StrCat(R"({"prompt": "abc", "completion": "def"})", "\n", R"({"text": "ghi"})", "\n"),
      options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->report.rows_used, 2);
  EXPECT_EQ(ds->report.skipped_too_long, 0);
  for (const TrainingRow& row : ds->train) EXPECT_EQ(row.ids.size(), 2u);

  options.max_seq_length = 4;
  ds = Read(absl::StrCat(R"({"prompt": "abc", "completion": "def"})", "\n", R"({"text": "ghi"})",
                         "\n", R"({"text": "x"})", "\n"),
            options);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("3 too long"));
}

TEST_F(DatasetTest, NoRoomAfterReservedTokensIsInvalidArgument) {
  DatasetReadOptions options;
  options.max_seq_length = 20;
  options.reserved_tokens = 20;
  auto ds = Read(R"({"text": "abc"})"
                 "\n",
                 options);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("leaves no room"));
}

TEST_F(DatasetTest, CrlfBlankLinesAndBomReadAsPlainLines) {
  const std::string plain =
      absl::StrCat(R"({"prompt": "a b", "completion": "c d"})", "\n", R"({"text": "e f g"})", "\n");
  auto want = Read(plain);
  ASSERT_TRUE(want.ok()) << want.status();
  auto got =
      Read(absl::StrCat("\xEF\xBB\xBF", R"({"prompt": "a b", "completion": "c d"})",
                        "\r\n\r\n   \t\r\n\n", R"({"text": "e f g"})"));  // No final newline.
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->train.size(), 2u);
  EXPECT_EQ(got->train[0].ids, want->train[0].ids);
  EXPECT_EQ(got->train[1].ids, want->train[1].ids);
  EXPECT_EQ(got->train[1].line, 5);  // Blank lines keep their numbers.
  EXPECT_EQ(got->report.lines, 2);
}

TEST_F(DatasetTest, HugeLineIsMalformedAndReadingResumesAfterIt) {
  const std::string huge =
      absl::StrCat(R"({"text": ")", std::string(kMaxDatasetLineBytes, 'a'), R"("})", "\n");
  const std::string content = absl::StrCat(huge, R"({"text": "after the huge line"})", "\n");
  auto ds = Read(content);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("line 1: longer than 4194304 bytes"));

  DatasetReadOptions options;
  options.policy.skip_invalid_rows = true;
  ds = Read(content, options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->report.skipped_malformed, 1);
  ASSERT_EQ(ds->train.size(), 1u);
  EXPECT_EQ(ds->train[0].line, 2);
}

TEST_F(DatasetTest, LongLinesAcrossReadBuffersAreTruncatedRows) {
  // 300 KB of text spans several read buffers; the row keeps the first tokens.
  std::string text;
  for (int i = 0; i < 30000; ++i) absl::StrAppend(&text, "word", i % 10, " ");
  DatasetReadOptions options;
  options.max_seq_length = 16;
  auto ds = Read(absl::StrCat(R"({"text": ")", text, R"("})", "\n", R"({"text": "next"})", "\n"),
                 options);
  ASSERT_TRUE(ds.ok()) << ds.status();
  ASSERT_EQ(ds->train.size(), 2u);
  const std::vector<int32_t> all = Enc(text, true);
  EXPECT_EQ(ds->train[0].ids, std::vector<int32_t>(all.begin(), all.begin() + 16));
  EXPECT_EQ(ds->report.truncated, 1);
  EXPECT_EQ(ds->train[1].line, 2);
}

TEST_F(DatasetTest, MaxRowsAndMaxBytesRefuseTheFile) {
  const std::string three = absl::StrCat(R"({"text": "a b"})", "\n", R"({"text": "c d"})", "\n",
                                         R"({"text": "e f"})", "\n");
  DatasetReadOptions options;
  options.policy.max_rows = 3;
  EXPECT_TRUE(Read(three, options).ok());
  options.policy.max_rows = 2;
  auto ds = Read(three, options);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("max_rows"));

  options = {};
  options.policy.max_bytes = static_cast<int64_t>(three.size());
  EXPECT_TRUE(Read(three, options).ok());
  options.policy.max_bytes = static_cast<int64_t>(three.size()) - 1;
  ds = Read(three, options);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("max_bytes"));
}

TEST_F(DatasetTest, MissingFileIsNotFoundAndADirectoryIsInvalid) {
  auto ds = ReadTrainingDataset(absl::StrCat(::testing::TempDir(), "/no_such_dataset.jsonl"),
                                *llama_, {});
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kNotFound);
  ds = ReadTrainingDataset(::testing::TempDir(), *llama_, {});
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(ds.status().message(), HasSubstr("not a readable file"));
}

TEST_F(DatasetTest, EvalSplitIsSeededAndKeepsFileOrder) {
  std::string content;
  for (int i = 0; i < 40; ++i) absl::StrAppend(&content, R"({"text": "row )", i, R"("})", "\n");
  const std::string path = Write(content);
  auto eval_lines = [&](uint64_t seed, double fraction) {
    DatasetReadOptions options;
    options.seed = seed;
    options.eval_fraction = fraction;
    auto ds = ReadTrainingDataset(path, *llama_, options);
    EXPECT_TRUE(ds.ok()) << ds.status();
    std::vector<int64_t> lines;
    for (const TrainingRow& row : ds->eval) lines.push_back(row.line);
    EXPECT_TRUE(std::is_sorted(lines.begin(), lines.end()));
    EXPECT_EQ(ds->report.train_rows + ds->report.eval_rows, 40);
    EXPECT_EQ(ds->report.eval_rows, static_cast<int64_t>(lines.size()));
    return lines;
  };
  const std::vector<int64_t> a = eval_lines(7, 0.25);
  EXPECT_EQ(a.size(), 10u);
  EXPECT_EQ(eval_lines(7, 0.25), a);
  EXPECT_NE(eval_lines(8, 0.25), a);
  EXPECT_EQ(eval_lines(7, 0.01).size(), 1u);  // At least one eval row.
  EXPECT_TRUE(eval_lines(7, 0.0).empty());

  DatasetReadOptions options;
  options.eval_fraction = 0.6;
  EXPECT_EQ(ReadTrainingDataset(path, *llama_, options).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adapterd
