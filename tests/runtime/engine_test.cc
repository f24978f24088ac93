// The real engine (torch) on the tiny fixture models, through engine/api only.

#include "engine/api/engine.h"
#include "tests/runtime/collecting_sink.h"

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/fixtures.h"

namespace adapterd {
namespace {

using ::adapterd::testing::FixturesDir;

using testing::CollectingSink;
using testing::Output;

GenerateRequest Greedy(const std::string& prompt, int max_tokens) {
  GenerateRequest req;
  req.prompt = prompt;
  req.sampling.max_tokens = max_tokens;
  req.sampling.ignore_eos = true;
  return req;
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EngineOptions options;
    options.model_dir = FixturesDir() + "/models/llama";
    options.limits.max_batch_size = 4;
    options.limits.max_queue = 8;
    auto engine = CreateEngine(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }
  void TearDown() override {
    if (engine_) engine_->Shutdown(absl::Seconds(5));
  }

  std::shared_ptr<CollectingSink> Start(GenerateRequest req) {
    auto sink = std::make_shared<CollectingSink>();
    absl::Status s = engine_->Submit(std::move(req), sink);
    EXPECT_TRUE(s.ok()) << s;
    return sink;
  }
  Output Run(GenerateRequest req) { return Start(std::move(req))->Wait(); }

  void WaitIdle() {
    for (int i = 0; i < 500; ++i) {
      EngineStats s = engine_->Stats();
      if (s.running == 0 && s.queued == 0 &&
          s.free_slots == engine_->limits().max_batch_size) {
        return;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "engine did not become idle";
  }

  std::unique_ptr<Engine> engine_;
};

TEST_F(EngineTest, ReportsTheModel) {
  const ModelInfo& info = engine_->info();
  EXPECT_EQ(info.architecture, "llama");
  EXPECT_EQ(info.dtype, "float32");
  EXPECT_EQ(info.device, "cpu");
  EXPECT_EQ(info.fingerprint.size(), 64u);
  EXPECT_FALSE(info.is_default_model);
  EXPECT_GT(info.context_length, 0);
}

TEST_F(EngineTest, GreedyGenerationMatchesTransformers) {
  // Reference greedy generations written by scripts/fixtures/make_models.py with HF generate.
  std::ifstream in(FixturesDir() + "/models/llama/reference.json");
  ASSERT_TRUE(in.good()) << "missing reference.json";
  const nlohmann::json ref = nlohmann::json::parse(in);
  const auto& prompts = ref.at("prompts");
  const auto& generations = ref.at("generations");
  ASSERT_EQ(prompts.size(), generations.size());
  int checked = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerateRequest req;
    req.prompt_ids = prompts[i].get<std::vector<int32_t>>();
    const auto expected = generations[i].get<std::vector<int32_t>>();
    req.sampling.max_tokens = static_cast<int>(expected.size());
    req.sampling.ignore_eos = true;
    Output out = Run(std::move(req));
    ASSERT_TRUE(out.status.ok()) << out.status;
    EXPECT_EQ(out.ids, expected) << "prompt " << i;
    ++checked;
  }
  EXPECT_GT(checked, 0);
}

TEST_F(EngineTest, RequestsJoiningARunningBatchGetTheirSoloOutputs) {
  const std::vector<std::string> prompts = {"The quick brown fox", "Hello", "1 2 3 4 5 6 7",
                                            "Once upon a time, in a land far away"};
  std::vector<Output> solo;
  for (const auto& p : prompts) solo.push_back(Run(Greedy(p, 24)));
  // Start one, let it run a few steps, then the others join between steps.
  auto first = Start(Greedy(prompts[0], 24));
  first->WaitTokens(3);
  std::vector<std::shared_ptr<CollectingSink>> sinks = {first};
  for (size_t i = 1; i < prompts.size(); ++i) sinks.push_back(Start(Greedy(prompts[i], 24)));
  for (size_t i = 0; i < prompts.size(); ++i) {
    Output out = sinks[i]->Wait();
    ASSERT_TRUE(out.status.ok()) << out.status;
    EXPECT_EQ(out.ids, solo[i].ids) << "prompt " << i;
    EXPECT_EQ(out.text, solo[i].text);
    ASSERT_EQ(out.logprobs.size(), solo[i].logprobs.size());
    for (size_t k = 0; k < out.logprobs.size(); ++k) {
      EXPECT_NEAR(out.logprobs[k], solo[i].logprobs[k], 1e-4);
    }
  }
  WaitIdle();
}

TEST_F(EngineTest, MoreRequestsThanSlotsQueueAndAllFinish) {
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (int i = 0; i < 8; ++i) sinks.push_back(Start(Greedy("count " + std::to_string(i), 6)));
  for (auto& s : sinks) {
    Output out = s->Wait();
    EXPECT_TRUE(out.status.ok()) << out.status;
    EXPECT_EQ(out.ids.size(), 6u);
    EXPECT_EQ(out.result.finish_reason, FinishReason::kLength);
  }
  WaitIdle();
}

// Four slots, held by tenant A's four running requests, with A's fifth
// queued before B's only one: the first slot that frees goes to B, the tenant
// holding fewer slots, not to A's older request.
TEST_F(EngineTest, AFreedSlotGoesToTheTenantHoldingFewestSlots) {
  std::vector<std::shared_ptr<CollectingSink>> a;
  for (int i = 0; i < 4; ++i) {
    GenerateRequest req = Greedy("tenant a " + std::to_string(i), 8 + 12 * i);
    req.tenant = "a";
    a.push_back(Start(std::move(req)));
  }
  a[3]->WaitTokens(1);  // All four run.
  GenerateRequest fifth = Greedy("tenant a 4", 4);
  fifth.tenant = "a";
  auto a5 = Start(std::move(fifth));
  GenerateRequest only = Greedy("tenant b", 4);
  only.tenant = "b";
  auto b = Start(std::move(only));
  const Output b_out = b->Wait();
  const Output a5_out = a5->Wait();
  ASSERT_TRUE(b_out.status.ok()) << b_out.status;
  ASSERT_TRUE(a5_out.status.ok()) << a5_out.status;
  EXPECT_LT(b_out.first_token_order, a5_out.first_token_order);
  for (auto& s : a) EXPECT_TRUE(s->Wait().status.ok());
  WaitIdle();
}

TEST_F(EngineTest, CancellationFreesTheSlotWithinAStep) {
  GenerateRequest req = Greedy("cancel me", 4000);
  req.cancel = std::make_shared<CancellationToken>();
  auto token = req.cancel;
  auto sink = Start(std::move(req));
  sink->WaitTokens(2);
  token->Cancel();
  Output out = sink->Wait();
  EXPECT_EQ(out.status.code(), absl::StatusCode::kCancelled);
  EXPECT_LT(out.ids.size(), 4000u);
  WaitIdle();
  EXPECT_EQ(engine_->Stats().requests_cancelled, 1);
}

TEST_F(EngineTest, APassedDeadlineEndsTheRequestBeforeItRuns) {
  GenerateRequest req = Greedy("late", 8);
  req.deadline = absl::Now() - absl::Milliseconds(1);
  Output out = Run(std::move(req));
  EXPECT_EQ(out.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_TRUE(out.ids.empty());
  WaitIdle();
}

TEST_F(EngineTest, SameSeedSameSampleDifferentSeedDiffers) {
  auto sample = [&](uint64_t seed) {
    GenerateRequest req = Greedy("Sampling test", 32);
    req.sampling.temperature = 1.5f;
    req.sampling.seed = seed;
    return Run(std::move(req)).ids;
  };
  EXPECT_EQ(sample(1), sample(1));
  EXPECT_NE(sample(1), sample(2));
}

TEST_F(EngineTest, ScoreAgreesWithGenerationLogprobs) {
  GenerateRequest gen_req;
  gen_req.prompt_ids = {5, 17, 42, 99, 7};
  gen_req.sampling.max_tokens = 6;
  gen_req.sampling.ignore_eos = true;
  Output gen = Run(gen_req);
  ASSERT_TRUE(gen.status.ok());
  std::vector<int32_t> other = gen.ids;
  other.back() = (other.back() + 1) % static_cast<int32_t>(engine_->info().vocab_size);
  ScoreRequest req;
  req.prompt_ids = gen_req.prompt_ids;
  req.continuation_ids = {gen.ids, other};
  req.top_logprobs = 3;
  auto score = [&](ScoreRequest r) {
    std::promise<absl::StatusOr<ScoreResult>> promise;
    absl::Status s = engine_->SubmitScore(
        std::move(r), [&](absl::StatusOr<ScoreResult> res) { promise.set_value(std::move(res)); });
    EXPECT_TRUE(s.ok()) << s;
    return promise.get_future().get();
  };
  absl::StatusOr<ScoreResult> result = score(req);
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->scores.size(), 2u);
  const ContinuationScore& first = result->scores[0];
  ASSERT_EQ(first.tokens.size(), gen.ids.size());
  EXPECT_TRUE(first.greedy);
  double sum = 0;
  for (size_t i = 0; i < gen.ids.size(); ++i) {
    EXPECT_EQ(first.tokens[i].id, gen.ids[i]);
    EXPECT_NEAR(first.tokens[i].logprob, gen.logprobs[i], 1e-4);
    EXPECT_EQ(first.tokens[i].top[0].id, gen.ids[i]);
    sum += gen.logprobs[i];
  }
  EXPECT_NEAR(first.logprob, sum, 1e-3);
  // The second differs only in a non-greedy last token: lower score, not greedy.
  EXPECT_FALSE(result->scores[1].greedy);
  EXPECT_LT(result->scores[1].logprob, first.logprob);

  // By text: a prompt and continuations are tokenised by the engine.
  ScoreRequest text;
  text.prompt = "The weather today";
  text.continuations = {" is nice", " is nice and warm"};
  absl::StatusOr<ScoreResult> by_text = score(text);
  ASSERT_TRUE(by_text.ok()) << by_text.status();
  EXPECT_GT(by_text->scores[0].logprob, by_text->scores[1].logprob);
  WaitIdle();
}

TEST_F(EngineTest, RejectsBadRequestsWithClearErrors) {
  auto sink = std::make_shared<CollectingSink>();
  GenerateRequest empty = Greedy("", 4);
  EXPECT_EQ(engine_->Submit(empty, sink).message(), "prompt is empty");
  GenerateRequest adapter = Greedy("hi", 4);
  adapter.adapter = "nope@3";
  absl::Status s = engine_->Submit(adapter, sink);
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(s.message(), "adapter \"nope@3\" not found");
  GenerateRequest too_long;
  too_long.prompt_ids.assign(engine_->info().context_length, 5);
  EXPECT_EQ(engine_->Submit(too_long, sink).code(), absl::StatusCode::kInvalidArgument);
  GenerateRequest bad_id;
  bad_id.prompt_ids = {1, static_cast<int32_t>(engine_->info().vocab_size)};
  EXPECT_EQ(engine_->Submit(bad_id, sink).code(), absl::StatusCode::kInvalidArgument);
  GenerateRequest bad_sampling = Greedy("hi", 4);
  bad_sampling.sampling.top_p = 1.5f;
  EXPECT_EQ(engine_->Submit(bad_sampling, sink).code(), absl::StatusCode::kInvalidArgument);
  // The engine still serves.
  EXPECT_TRUE(Run(Greedy("still alive", 3)).status.ok());
}

TEST_F(EngineTest, ShutdownFailsQueuedWorkWithUnavailable) {
  std::vector<std::shared_ptr<CollectingSink>> sinks;
  for (int i = 0; i < 8; ++i) sinks.push_back(Start(Greedy("long " + std::to_string(i), 4000)));
  sinks[0]->WaitTokens(1);
  engine_->Shutdown(absl::ZeroDuration());
  for (auto& s : sinks) {
    Output out = s->Wait();
    EXPECT_EQ(out.status.code(), absl::StatusCode::kUnavailable) << out.status;
  }
  EXPECT_EQ(engine_->Submit(Greedy("after", 1), std::make_shared<CollectingSink>()).code(),
            absl::StatusCode::kUnavailable);
}

TEST(DefaultModelTest, MaterialisesOnceAndGeneratesDeterministically) {
  const std::string data = ::testing::TempDir() + "/adapterd_default_model_test";
  std::filesystem::remove_all(data);
  EngineOptions options;
  options.data_dir = data;
  std::vector<int32_t> first_ids;
  for (int round = 0; round < 2; ++round) {
    auto engine = CreateEngine(options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    EXPECT_TRUE((*engine)->info().is_default_model);
    EXPECT_EQ((*engine)->info().name, "adapterd-default-tiny");
    auto sink = std::make_shared<CollectingSink>();
    ASSERT_TRUE((*engine)->Submit(Greedy("Hello, adapterd!", 8), sink).ok());
    Output out = sink->Wait();
    ASSERT_TRUE(out.status.ok()) << out.status;
    ASSERT_EQ(out.ids.size(), 8u);
    if (round == 0) first_ids = out.ids;
    EXPECT_EQ(out.ids, first_ids);
    (*engine)->Shutdown(absl::Seconds(1));
  }
  std::filesystem::remove_all(data);
}

// The default model decodes slowly enough (thousands of tokens of context)
// for a deadline to fall in the middle of a generation.
TEST(EngineDeadlineTest, ADeadlineStopsARunningGenerationWithinAStep) {
  const std::string data = ::testing::TempDir() + "/adapterd_deadline_test";
  EngineOptions options;
  options.data_dir = data;
  auto engine = CreateEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  GenerateRequest req = Greedy("a long story", 2000);
  const absl::Time start = absl::Now();
  req.deadline = start + absl::Milliseconds(100);
  auto sink = std::make_shared<CollectingSink>();
  ASSERT_TRUE((*engine)->Submit(std::move(req), sink).ok());
  Output out = sink->Wait();
  const absl::Duration took = absl::Now() - start;
  EXPECT_EQ(out.status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_GT(out.ids.size(), 0u);
  EXPECT_LT(out.ids.size(), 2000u);
  // One step of this model takes about a millisecond; allow a loaded machine.
  EXPECT_LT(took, absl::Milliseconds(600)) << took;
  (*engine)->Shutdown(absl::Seconds(1));
  std::filesystem::remove_all(data);
}

TEST(EngineStartTest, BadModelDirsGiveClearErrors) {
  EngineOptions options;
  options.model_dir = "/nonexistent/model";
  EXPECT_EQ(CreateEngine(options).status().code(), absl::StatusCode::kNotFound);

  const std::string dir = ::testing::TempDir() + "/adapterd_bad_model";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"model_type": "bert", "vocab_size": 10})";
  options.model_dir = dir;
  absl::Status unknown = CreateEngine(options).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kUnimplemented) << unknown;
  EXPECT_NE(unknown.message().find("bert"), std::string::npos) << unknown;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace adapterd
