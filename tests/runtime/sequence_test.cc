#include "engine/runtime/sequence.h"

#include <cstdlib>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

std::unique_ptr<Tokenizer> Gpt2Tokenizer() {
  const char* dir = std::getenv("ADAPTERD_FIXTURES_DIR");
  if (dir == nullptr) return nullptr;
  auto tok = Tokenizer::FromFile(std::string(dir) + "/tokenizers/gpt2/tokenizer.json");
  return tok.ok() ? std::move(*tok) : nullptr;
}

class NullSink : public GenerateSink {
 public:
  void OnTokens(std::vector<GeneratedToken>) override {}
  void OnFinish(absl::Status, const GenerateResult&) override {}
};

struct FedRun {
  std::string text;
  std::vector<std::string> pieces;
  std::optional<FinishReason> reason;
  int tokens_fed = 0;
};

// Feeds `completion`'s ids to a sequence as if the model had chosen them.
FedRun Feed(const Tokenizer& tok, const std::string& completion, SamplingParams params,
         std::vector<int32_t> eos = {}, int64_t max_len = 1000) {
  GenerateRequest req;
  req.sampling = params;
  Sequence seq(req, std::make_shared<NullSink>(), tok.Encode("Prompt:", false), &tok, eos,
               max_len, 1);
  FedRun run;
  for (int32_t id : tok.Encode(completion, false)) {
    SampledToken t;
    t.id = id;
    ++run.tokens_fed;
    const bool done = seq.Append(t);
    for (const GeneratedToken& g : seq.TakeOutput()) {
      run.text += g.text;
      run.pieces.push_back(g.text);
    }
    if (done) break;
  }
  run.reason = seq.finish_reason();
  return run;
}

SamplingParams Params(int max_tokens, std::vector<std::string> stop = {}) {
  SamplingParams p;
  p.max_tokens = max_tokens;
  p.stop = std::move(stop);
  return p;
}

bool IsValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = s[i];
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (int k = 1; k < n; ++k) {
      if ((static_cast<unsigned char>(s[i + k]) >> 6) != 2) return false;
    }
    i += n;
  }
  return true;
}

class SequenceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tok_ = Gpt2Tokenizer();
    ASSERT_NE(tok_, nullptr) << "fixture tokenizer missing (ADAPTERD_FIXTURES_DIR)";
  }
  std::unique_ptr<Tokenizer> tok_;
};

TEST_F(SequenceTest, StreamsTheWholeTextWhenNothingStopsIt) {
  const std::string text = " Hello world, and more";
  FedRun run = Feed(*tok_, text, Params(1000));
  EXPECT_EQ(run.text, text);
  EXPECT_FALSE(run.reason.has_value());  // Still running: max_tokens not reached.
}

TEST_F(SequenceTest, StopsBeforeTheStopSequenceAndHoldsBackItsPrefix) {
  FedRun run = Feed(*tok_, " Hello world, the END is near", Params(1000, {"END"}));
  EXPECT_EQ(run.text, " Hello world, the ");
  EXPECT_EQ(run.reason, FinishReason::kStop);
  // A negative control: without the stop the text runs on.
  FedRun free_run = Feed(*tok_, " Hello world, the END is near", Params(1000));
  EXPECT_NE(free_run.text.find("END is near"), std::string::npos);
}

TEST_F(SequenceTest, StopSequenceSplitAcrossTokensIsFound) {
  // "\n\n" or a multi-token stop: the match spans token boundaries.
  FedRun run = Feed(*tok_, " alpha beta gamma delta", Params(1000, {"a gam"}));
  EXPECT_EQ(run.text, " alpha bet");
  EXPECT_EQ(run.reason, FinishReason::kStop);
}

TEST_F(SequenceTest, EmitsOnlyValidUtf8PiecesForEmoji) {
  const std::string text = " smile 😀🎉 café 日本語";
  FedRun run = Feed(*tok_, text, Params(1000));
  EXPECT_EQ(run.text, text);
  for (const std::string& piece : run.pieces) EXPECT_TRUE(IsValidUtf8(piece)) << piece;
}

TEST_F(SequenceTest, FinishesOnMaxTokensEosAndContext) {
  FedRun length = Feed(*tok_, " one two three four five six", Params(2));
  EXPECT_EQ(length.reason, FinishReason::kLength);
  EXPECT_EQ(length.tokens_fed, 2);

  const std::vector<int32_t> ids = tok_->Encode(" one two three", false);
  FedRun eos = Feed(*tok_, " one two three", Params(1000), {ids[1]});
  EXPECT_EQ(eos.reason, FinishReason::kEos);
  EXPECT_EQ(eos.tokens_fed, 2);
  EXPECT_EQ(eos.text, tok_->Decode({ids[0]}));

  const int64_t prompt = tok_->Encode("Prompt:", false).size();
  FedRun context = Feed(*tok_, " one two three four five six", Params(1000), {}, prompt + 3);
  EXPECT_EQ(context.reason, FinishReason::kContextLength);
  EXPECT_EQ(context.tokens_fed, 3);
}

}  // namespace
}  // namespace adapterd
