// Training for real, end to end through the Engine API: LoRA, prefix tuning
// and prompt tuning adapters learn a small deterministic task (a three-digit
// number → " even" / " odd" by its last digit) on the tiny llama fixture, and
// the engine serving the exported adapter answers held-out numbers. The
// hyperparameters here are the ones docs/training.md recommends for quick
// tests; scripts/peft_even_odd.py trains the same rows with HF PEFT.

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
#include "tests/common/fixtures.h"
#include "tests/runtime/collecting_sink.h"

namespace adapterd {
namespace {

using ::adapterd::testing::FixturesDir;

// The completions of even and odd numbers.
struct Task {
  std::string even = " even", odd = " odd";
  std::string Completion(int n) const { return n % 2 == 0 ? even : odd; }
};

// Fraction of `numbers` whose greedy continuation under `adapter` is exactly
// the completion's tokens.
double ExactMatch(Engine& engine, const Tokenizer& tokenizer, const Task& task,
                  const std::vector<int>& numbers, const std::string& adapter) {
  std::vector<std::shared_ptr<testing::CollectingSink>> sinks;
  std::vector<std::vector<int32_t>> want;
  for (int n : numbers) {
    GenerateRequest r;
    r.prompt = std::to_string(n);
    r.adapter = adapter;
    want.push_back(tokenizer.Encode(task.Completion(n), /*add_special_tokens=*/false));
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

struct Learned {
  double base = 0, learned = 0;
};

// Trains `spec` (method and hyperparameters; the rest is filled in here) on
// 300 numbers of the even/odd task with `model` and serves the result on 100
// held-out numbers.
Learned TrainAndServe(const std::string& model, const Task& task, TrainingSpec spec) {
  Learned out;
  std::string pattern = ::testing::TempDir() + "/learn_XXXXXX";
  if (mkdtemp(pattern.data()) == nullptr) {
    ADD_FAILURE() << "mkdtemp " << pattern;
    return out;
  }
  const std::string root = pattern;
  const std::string work = root + "/work", data = root + "/data";
  EXPECT_EQ(::mkdir(work.c_str(), 0755), 0);

  std::vector<int> numbers;
  for (int n = 100; n < 1000; ++n) numbers.push_back(n);
  std::mt19937 rng(3);
  std::shuffle(numbers.begin(), numbers.end(), rng);
  const std::vector<int> train(numbers.begin(), numbers.begin() + 300);
  const std::vector<int> held_out(numbers.begin() + 300, numbers.begin() + 400);
  {
    std::ofstream f(root + "/train.jsonl");
    for (int n : train) {
      f << "{\"prompt\": \"" << n << "\", \"completion\": \"" << task.Completion(n) << "\"}\n";
    }
  }

  EngineOptions options;
  options.model_dir = FixturesDir() + "/models/" + model;
  options.data_dir = data;
  if (const char* device = std::getenv("ADAPTERD_TEST_DEVICE")) options.device = device;
  auto engine = CreateEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  if (!engine.ok()) return out;
  auto tokenizer = Tokenizer::FromFile(options.model_dir + "/tokenizer.json");
  EXPECT_TRUE(tokenizer.ok());
  if (!tokenizer.ok()) return out;
  out.base = ExactMatch(**engine, **tokenizer, task, held_out, "");

  spec.adapter_name = "even_odd";
  spec.dataset_path = root + "/train.jsonl";
  spec.work_dir = work;
  CancellationToken cancel;
  TrainingProgress last;
  auto result = (*engine)->Train(
      spec, [&](const TrainingProgress& p) { last = p; }, cancel);
  EXPECT_TRUE(result.ok()) << result.status();
  (*engine)->Shutdown(absl::Seconds(1));
  if (!result.ok()) return out;

  options.adapters.push_back({"learned", result->output_dir});
  auto serving = CreateEngine(options);
  EXPECT_TRUE(serving.ok()) << serving.status();
  if (!serving.ok()) return out;
  out.learned = ExactMatch(**serving, **tokenizer, task, held_out, "learned");
  std::printf(
      "%s on %s: held-out exact match base %.2f, learned %.2f after %lld steps (loss %.4f, %.0f "
      "tokens/s)\n",
      TrainingMethodName(spec.method), model.c_str(), out.base, out.learned,
      static_cast<long long>(result->steps), result->final_loss, last.tokens_per_second);
  (*serving)->Shutdown(absl::Seconds(1));
  (void)RemoveTree(root);
  return out;
}

TEST(LearningTest, LoraLearnsEvenOrOddOfHeldOutNumbers) {
  TrainingSpec spec;
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
  const Learned r = TrainAndServe("llama", Task{}, spec);
  EXPECT_GE(r.learned, 0.9);
  EXPECT_GE(r.learned, r.base + 0.5);
}

// Prompt learning on the same fixture needs the task phrased so that the
// first token that tells even from odd is predicted at the last digit: with
// " even" / " odd" this tokenizer (llama2-style, dummy "▁" prefix) writes
// "▁ ▁ even" / "▁ ▁o d d", so the deciding token comes one position after the
// number and the frozen random attention must carry the digit there; prefix,
// P- and prompt tuning then stay at chance here, and HF PEFT 0.21.2 does the
// same (held-out 0.32-0.34 prefix tuning, 0.34 prompt tuning, 0.32 P-tuning).
// With "even" / "odd" ("▁ even" / "▁o d d") the decision is made at the digit
// itself and both learn it (PEFT prefix tuning 1.00, prompt tuning 0.68).
const Task kDecideAtTheDigit{"even", "odd"};

TrainingHyperparams PromptLearningHyper(int epochs, double learning_rate) {
  TrainingHyperparams hyper;
  hyper.epochs = epochs;
  hyper.batch_size = 16;
  hyper.learning_rate = learning_rate;
  hyper.lr_scheduler = "linear";
  hyper.warmup_steps = 5;
  hyper.max_seq_length = 64;
  hyper.checkpoint_every = 0;
  return hyper;
}

TEST(LearningTest, PrefixTuningLearnsEvenOrOddOnTheLlamaFixture) {
  TrainingSpec spec;
  spec.method = TrainingMethod::kPrefixTuning;
  spec.prefix.num_virtual_tokens = 16;  // With the MLP reparameterisation (the default).
  spec.hyper = PromptLearningHyper(20, 1e-2);
  const Learned r = TrainAndServe("llama", kDecideAtTheDigit, spec);
  EXPECT_GE(r.learned, 0.9);
  EXPECT_GE(r.learned, r.base + 0.5);
}

TEST(LearningTest, PromptTuningLearnsEvenOrOddOnTheLlamaFixture) {
  TrainingSpec spec;
  spec.method = TrainingMethod::kPromptTuning;
  spec.prompt_tuning.num_virtual_tokens = 16;
  spec.hyper = PromptLearningHyper(30, 1e-1);
  const Learned r = TrainAndServe("llama", kDecideAtTheDigit, spec);
  // 0.89-0.94 over seeds and learning rates (0.80-0.91 in 20 epochs); PEFT
  // reaches 0.68 here.
  EXPECT_GE(r.learned, 0.8);
  EXPECT_GE(r.learned, r.base + 0.5);
}

}  // namespace
}  // namespace adapterd
