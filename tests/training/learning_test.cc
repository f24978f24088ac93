// Training for real, end to end through the Engine API: a LoRA adapter
// learns a small deterministic task (a three-digit number → " even" / " odd"
// by its last digit) on the tiny llama fixture, and the engine serving the
// exported adapter answers held-out numbers. The hyperparameters here are the
// ones docs/training.md recommends for quick tests.

#include <stdlib.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "engine/api/engine.h"
#include "engine/model/tokenizer.h"
#include "engine/training/checkpoint.h"
#include "gtest/gtest.h"
#include "tests/runtime/collecting_sink.h"

namespace adapterd {
namespace {

std::string FixturesDir() {
  const char* dir = std::getenv("ADAPTERD_FIXTURES_DIR");
  return dir != nullptr ? dir : "fixtures";
}

std::string Completion(int n) { return n % 2 == 0 ? " even" : " odd"; }

// Fraction of `numbers` whose greedy continuation under `adapter` is exactly
// the completion's tokens.
double ExactMatch(Engine& engine, const Tokenizer& tokenizer, const std::vector<int>& numbers,
                  const std::string& adapter) {
  std::vector<std::shared_ptr<testing::CollectingSink>> sinks;
  std::vector<std::vector<int32_t>> want;
  for (int n : numbers) {
    GenerateRequest r;
    r.prompt = std::to_string(n);
    r.adapter = adapter;
    want.push_back(tokenizer.Encode(Completion(n), /*add_special_tokens=*/false));
    r.sampling.max_tokens = static_cast<int>(want.back().size());
    sinks.push_back(std::make_shared<testing::CollectingSink>());
    EXPECT_TRUE(engine.Submit(std::move(r), sinks.back()).ok());
  }
  int hits = 0;
  for (size_t i = 0; i < sinks.size(); ++i) {
    testing::Output out = sinks[i]->Wait();
    EXPECT_TRUE(out.status.ok()) << out.status;
    hits += out.ids == want[i];
  }
  return static_cast<double>(hits) / static_cast<double>(numbers.size());
}

TEST(LearningTest, LoraLearnsEvenOrOddOfHeldOutNumbers) {
  std::string pattern = ::testing::TempDir() + "/learn_XXXXXX";
  ASSERT_NE(mkdtemp(pattern.data()), nullptr);
  const std::string root = pattern;
  const std::string work = root + "/work", data = root + "/data";
  ASSERT_EQ(::mkdir(work.c_str(), 0755), 0);

  std::vector<int> numbers;
  for (int n = 100; n < 1000; ++n) numbers.push_back(n);
  std::mt19937 rng(3);
  std::shuffle(numbers.begin(), numbers.end(), rng);
  const std::vector<int> train(numbers.begin(), numbers.begin() + 300);
  const std::vector<int> held_out(numbers.begin() + 300, numbers.begin() + 400);
  {
    std::ofstream f(root + "/train.jsonl");
    for (int n : train) {
      f << "{\"prompt\": \"" << n << "\", \"completion\": \"" << Completion(n) << "\"}\n";
    }
  }

  EngineOptions options;
  options.model_dir = FixturesDir() + "/models/llama";
  options.data_dir = data;
  if (const char* device = std::getenv("ADAPTERD_TEST_DEVICE")) options.device = device;
  auto engine = CreateEngine(options);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto tokenizer = Tokenizer::FromFile(options.model_dir + "/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  const double base = ExactMatch(**engine, **tokenizer, held_out, "");

  TrainingSpec spec;
  spec.adapter_name = "even_odd";
  spec.method = TrainingMethod::kLora;
  spec.lora.target_modules = {"all-linear"};
  spec.lora.rank = 8;
  spec.lora.alpha = 16;
  spec.hyper.epochs = 6;
  spec.hyper.batch_size = 16;
  spec.hyper.learning_rate = 1e-2;
  spec.hyper.lr_scheduler = "linear";
  spec.hyper.warmup_steps = 5;
  spec.hyper.max_seq_length = 32;
  spec.hyper.checkpoint_every = 0;
  spec.dataset_path = root + "/train.jsonl";
  spec.work_dir = work;
  CancellationToken cancel;
  TrainingProgress last;
  auto result = (*engine)->Train(spec, [&](const TrainingProgress& p) { last = p; }, cancel);
  ASSERT_TRUE(result.ok()) << result.status();
  (*engine)->Shutdown(absl::Seconds(1));

  options.adapters.push_back({"learned", result->output_dir});
  auto serving = CreateEngine(options);
  ASSERT_TRUE(serving.ok()) << serving.status();
  const double learned = ExactMatch(**serving, **tokenizer, held_out, "learned");
  std::printf("held-out exact match: base %.2f, learned %.2f after %lld steps (loss %.4f, %.0f tokens/s)\n",
              base, learned, static_cast<long long>(result->steps), result->final_loss,
              last.tokens_per_second);
  EXPECT_GE(learned, 0.9);
  EXPECT_GE(learned, base + 0.5);
  (*serving)->Shutdown(absl::Seconds(1));
  (void)RemoveTree(root);
}

}  // namespace
}  // namespace adapterd
