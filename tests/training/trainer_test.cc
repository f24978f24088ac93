// The training engine against the reference libraries: one (or three)
// optimizer steps of LoRA, Houlsby, Pfeiffer and AdapterFusion computed by
// HF PEFT / AdapterHub + torch.optim.AdamW (scripts/fixtures/make_training.py)
// must give the same loss and weights; checkpoints resume bit-exactly;
// cancellation, bad specs and the frozen base weights.

#include <ATen/ATen.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "engine/api/engine.h"
#include "engine/model/causal_lm.h"
#include "engine/model/safetensors.h"
#include "engine/model/tokenizer.h"
#include "engine/peft/adapter.h"
#include "engine/runtime/kv_cache.h"
#include "engine/training/checkpoint.h"
#include "engine/training/dataset.h"
#include "engine/training/trainer.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/runtime/collecting_sink.h"

namespace adapterd {
namespace {

using Json = nlohmann::json;

std::string FixturesDir() {
  const char* dir = std::getenv("ADAPTERD_FIXTURES_DIR");
  return dir != nullptr ? dir : "fixtures";
}

std::string CaseDir(const std::string& name) { return FixturesDir() + "/training/" + name; }

Json ReadJson(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return Json::parse(s.str());
}

// A fresh directory under the test's temp dir, removed on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/train_XXXXXX";
    path_ = mkdtemp(pattern.data()) != nullptr ? pattern : "";
  }
  ~TempDir() { (void)RemoveTree(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// ADAPTERD_TEST_DEVICE=cuda runs the tests on the GPU (scripts/gpu/training.sh).
std::string TestDevice() {
  const char* d = std::getenv("ADAPTERD_TEST_DEVICE");
  return d != nullptr ? d : "cpu";
}

std::unique_ptr<Engine> MakeEngine(const std::string& base, const std::string& data_dir,
                                   EngineOptions options = {}) {
  options.model_dir = FixturesDir() + "/models/" + base;
  options.device = TestDevice();
  options.data_dir = data_dir;
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? std::move(*engine) : nullptr;
}

TrainingMethod MethodOf(const std::string& m) {
  if (m == "lora") return TrainingMethod::kLora;
  if (m == "fusion") return TrainingMethod::kFusion;
  return TrainingMethod::kBottleneck;
}

// The spec that replays a fixture case: its data, initial adapter and hyperparameters.
TrainingSpec CaseSpec(const std::string& name, const std::string& work_dir) {
  const Json h = ReadJson(CaseDir(name) + "/hyper.json");
  TrainingSpec spec;
  spec.job_id = name;
  spec.adapter_name = h["adapter_name"];
  spec.method = MethodOf(h["method"]);
  spec.dataset_path = CaseDir(name) + "/data.jsonl";
  spec.init_adapter_dir = CaseDir(name) + "/init";
  spec.work_dir = work_dir;
  if (spec.method == TrainingMethod::kFusion) {
    for (const char* c : {"fa", "fb"}) {
      spec.fusion.children.push_back({c, spec.init_adapter_dir + "/" + c, nullptr});
    }
  }
  TrainingHyperparams& p = spec.hyper;
  p.max_steps = h["max_steps"];
  p.batch_size = h["batch_size"];
  p.gradient_accumulation = h["gradient_accumulation"];
  p.learning_rate = h["learning_rate"];
  p.lr_scheduler = h["lr_scheduler"];
  p.warmup_steps = h["warmup_steps"];
  p.weight_decay = h["weight_decay"];
  p.adam_beta1 = h["adam_beta1"];
  p.adam_beta2 = h["adam_beta2"];
  p.adam_epsilon = h["adam_epsilon"];
  p.max_grad_norm = h["max_grad_norm"];
  p.shuffle = false;
  p.checkpoint_every = 0;
  p.max_seq_length = 64;
  return spec;
}

std::vector<float> Floats(const SafetensorsFile& file, const SafetensorsTensorInfo& info) {
  std::vector<float> v(info.numel());
  const std::string_view d = file.Data(info);
  std::memcpy(v.data(), d.data(), d.size());
  return v;
}

// Every tensor of `reference` is in `ours` with the same shape and values
// (allclose: |a - b| <= atol + rtol |b|). Returns the number compared.
//
// Adam divides each gradient by its own magnitude (+ eps), so an element
// whose gradient is at the level of eps moves by an amount set by rounding
// noise in either implementation: elements with |gradient| < kIllConditioned
// in `grads` (the reference's last clipped gradients) are left out of the
// strict check. Only a few may be, unless the tensor's whole gradient is
// that small (AdapterFusion's key bias: the softmax over adapters is
// invariant to it, so its exact gradient is zero).
constexpr double kIllConditioned = 1e-6;  // 100 x adam_epsilon of the fixtures.

int ExpectSameTensors(const std::string& ours_path, const std::string& reference_path,
                      const std::string& grads_path, double rtol, double atol) {
  auto ours = SafetensorsFile::Open(ours_path);
  auto ref = SafetensorsFile::Open(reference_path);
  auto grads = SafetensorsFile::Open(grads_path);
  EXPECT_TRUE(ours.ok()) << ours.status();
  EXPECT_TRUE(ref.ok()) << ref.status();
  EXPECT_TRUE(grads.ok()) << grads.status();
  if (!ours.ok() || !ref.ok() || !grads.ok()) return 0;
  EXPECT_EQ((*ours)->tensors().size(), (*ref)->tensors().size());
  int compared = 0;
  for (const SafetensorsTensorInfo& r : (*ref)->tensors()) {
    const SafetensorsTensorInfo* o = (*ours)->Find(r.name);
    const SafetensorsTensorInfo* g = (*grads)->Find(r.name);
    EXPECT_NE(o, nullptr) << "missing " << r.name;
    EXPECT_NE(g, nullptr) << "no reference gradient for " << r.name;
    if (o == nullptr || g == nullptr) continue;
    EXPECT_EQ(o->dtype, "F32");
    EXPECT_EQ(o->shape, r.shape) << r.name;
    if (o->shape != r.shape) continue;
    const std::vector<float> a = Floats(**ours, *o), b = Floats(**ref, r), grad = Floats(**grads, *g);
    int bad = 0;
    size_t skipped = 0;
    double worst = 0, largest_grad = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      largest_grad = std::max(largest_grad, std::abs(static_cast<double>(grad[i])));
      if (std::abs(grad[i]) < kIllConditioned) {
        ++skipped;
        continue;
      }
      const double err = std::abs(static_cast<double>(a[i]) - b[i]);
      if (err > atol + rtol * std::abs(b[i])) ++bad;
      worst = std::max(worst, err);
    }
    EXPECT_EQ(bad, 0) << r.name << ": " << bad << " of " << a.size()
                      << " elements differ; worst abs error " << worst;
    if (largest_grad >= kIllConditioned) {
      EXPECT_LE(skipped, a.size() / 100 + 1) << r.name << ": too many near-zero gradients";
    }
    ++compared;
  }
  return compared;
}

std::string WeightsFile(const std::string& method) {
  if (method == "lora") return "adapter_model.safetensors";
  if (method == "fusion") return "model_adapter_fusion.safetensors";
  return "adapter.safetensors";
}

class ParityTest : public ::testing::TestWithParam<std::string> {};

TEST_P(ParityTest, LossAndUpdatedWeightsMatchTheReferenceLibrary) {
  const std::string name = GetParam();
  const Json h = ReadJson(CaseDir(name) + "/hyper.json");
  TempDir work, data;
  std::unique_ptr<Engine> engine = MakeEngine(h["base"], data.path());
  ASSERT_NE(engine, nullptr);
  const TrainingSpec spec = CaseSpec(name, work.path());

  // The rows the reference trained on are the rows our dataset reader makes.
  {
    auto tokenizer = Tokenizer::FromFile(FixturesDir() + "/models/" + std::string(h["base"]) +
                                         "/tokenizer.json");
    ASSERT_TRUE(tokenizer.ok());
    DatasetReadOptions read;
    read.max_seq_length = spec.hyper.max_seq_length;
    auto dataset = ReadTrainingDataset(spec.dataset_path, **tokenizer, read);
    ASSERT_TRUE(dataset.ok()) << dataset.status();
    const Json rows = ReadJson(CaseDir(name) + "/rows.json");
    ASSERT_EQ(dataset->train.size(), rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      EXPECT_EQ(dataset->train[i].ids, rows[i]["ids"].get<std::vector<int32_t>>()) << "row " << i;
      EXPECT_EQ(dataset->train[i].loss_begin, rows[i]["loss_begin"].get<int64_t>());
    }
  }

  std::vector<TrainingProgress> events;
  CancellationToken cancel;
  absl::StatusOr<TrainingResult> result =
      engine->Train(spec, [&](const TrainingProgress& p) { events.push_back(p); }, cancel);
  ASSERT_TRUE(result.ok()) << result.status();
  const std::vector<double> losses = h["losses"];
  EXPECT_EQ(result->steps, static_cast<int64_t>(losses.size()));
  EXPECT_NEAR(result->final_loss, losses.back(), 1e-5);
  std::vector<double> step_losses;
  for (const TrainingProgress& p : events) {
    if (p.phase == TrainingPhase::kTraining) step_losses.push_back(p.loss);
  }
  ASSERT_EQ(step_losses.size(), losses.size());
  for (size_t i = 0; i < losses.size(); ++i) EXPECT_NEAR(step_losses[i], losses[i], 1e-5) << i;

  const std::string file = WeightsFile(h["method"]);
  EXPECT_GT(ExpectSameTensors(result->output_dir + "/" + file, CaseDir(name) + "/after/" + file,
                              CaseDir(name) + "/grad/" + file, 1e-5, 1e-7),
            0);
  // A negative control: the reference step did move the weights.
  {
    auto init = SafetensorsFile::Open(CaseDir(name) + "/init/" + file);
    auto after = SafetensorsFile::Open(CaseDir(name) + "/after/" + file);
    ASSERT_TRUE(init.ok() && after.ok());
    int moved = 0;
    for (const auto& t : (*after)->tensors()) {
      const SafetensorsTensorInfo* i = (*init)->Find(t.name);
      ASSERT_NE(i, nullptr) << t.name;
      moved += Floats(**init, *i) != Floats(**after, t);
    }
    EXPECT_EQ(moved, static_cast<int>((*after)->tensors().size()));
  }
  // The export loads back as a servable adapter of the same method.
  absl::StatusOr<AdapterValidation> loaded = engine->ValidateAdapter(result->output_dir);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->method, h["method"] == "lora"     ? "lora"
                            : h["method"] == "fusion" ? "fusion"
                                                      : "bottleneck");
  engine->Shutdown(absl::Seconds(1));
}

INSTANTIATE_TEST_SUITE_P(Cases, ParityTest,
                         ::testing::Values("llama_lora", "gpt2_lora", "llama_houlsby",
                                           "llama_pfeiffer", "llama_fusion", "llama_lora_accum"));

// A LoRA job over the 12-row case with shuffling, 2 epochs and a schedule.
TrainingSpec ResumeSpec(const std::string& work_dir) {
  TrainingSpec spec = CaseSpec("llama_lora_accum", work_dir);
  spec.init_adapter_dir.clear();
  spec.adapter_name = "resume";
  spec.lora.target_modules = {"q_proj", "v_proj"};
  spec.lora.rank = 4;
  spec.hyper.shuffle = true;
  spec.hyper.batch_size = 3;
  spec.hyper.gradient_accumulation = 1;
  spec.hyper.max_steps = 6;  // 4 steps per epoch: crosses into the second epoch.
  spec.hyper.warmup_steps = 2;
  spec.hyper.lr_scheduler = "cosine";
  spec.hyper.seed = 11;
  return spec;
}

std::string ReadBytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST(TrainerTest, ResumingFromACheckpointGivesTheSameWeightsAsTrainingStraight) {
  TempDir data, straight, resumed;
  std::unique_ptr<Engine> engine = MakeEngine("llama", data.path());
  ASSERT_NE(engine, nullptr);
  CancellationToken never;
  auto full = engine->Train(ResumeSpec(straight.path()), nullptr, never);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ(full->resumed_from_step, 0);

  TrainingSpec spec = ResumeSpec(resumed.path());
  spec.hyper.checkpoint_every = 3;
  CancellationToken cancel;
  auto first = engine->Train(spec, [&](const TrainingProgress& p) {
    if (p.phase == TrainingPhase::kTraining && p.step == 3) cancel.Cancel();
  }, cancel);
  ASSERT_EQ(first.status().code(), absl::StatusCode::kCancelled) << first.status();
  EXPECT_TRUE(HasCheckpoint(resumed.path()));
  EXPECT_FALSE(IsDirectory(resumed.path() + "/output"));

  int64_t first_step = -1;
  auto second = engine->Train(spec, [&](const TrainingProgress& p) {
    if (p.phase == TrainingPhase::kTraining && first_step < 0) first_step = p.step;
  }, never);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_EQ(second->resumed_from_step, 3);
  EXPECT_EQ(first_step, 4);
  EXPECT_EQ(second->steps, 6);
  EXPECT_EQ(second->final_loss, full->final_loss);
  const std::string a = ReadBytes(full->output_dir + "/adapter_model.safetensors");
  ASSERT_FALSE(a.empty());
  EXPECT_EQ(a, ReadBytes(second->output_dir + "/adapter_model.safetensors"));
  EXPECT_FALSE(HasCheckpoint(resumed.path()));  // The output replaces it.
  engine->Shutdown(absl::Seconds(1));
}

TEST(TrainerTest, EvalLossIsReportedEveryEvalEveryStepsAndAtTheEnd) {
  TempDir data, work;
  std::unique_ptr<Engine> engine = MakeEngine("llama", data.path());
  ASSERT_NE(engine, nullptr);
  TrainingSpec spec = ResumeSpec(work.path());
  spec.hyper.eval_fraction = 0.25;
  spec.hyper.eval_every = 2;
  spec.hyper.max_steps = 4;
  spec.hyper.warmup_steps = 0;
  std::vector<int64_t> eval_steps;
  std::vector<TrainingProgress> events;
  CancellationToken cancel;
  auto result = engine->Train(spec, [&](const TrainingProgress& p) {
    if (p.phase == TrainingPhase::kEvaluating) eval_steps.push_back(p.step);
    events.push_back(p);
  }, cancel);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->dataset.eval_rows, 3);
  EXPECT_EQ(result->dataset.train_rows, 9);
  EXPECT_EQ(eval_steps, (std::vector<int64_t>{2, 4}));
  EXPECT_TRUE(std::isfinite(result->eval_loss));
  EXPECT_GT(result->eval_loss, 0);
  EXPECT_EQ(events.back().phase, TrainingPhase::kSaving);
  for (const TrainingProgress& p : events) {
    if (p.phase != TrainingPhase::kTraining) continue;
    EXPECT_EQ(p.total_steps, 4);
    EXPECT_GT(p.tokens_per_second, 0);
    EXPECT_GT(p.learning_rate, 0);
  }
  engine->Shutdown(absl::Seconds(1));
}

TEST(TrainerTest, LoraDropoutChangesTheTrainingLoss) {
  TempDir data, work;
  std::unique_ptr<Engine> engine = MakeEngine("llama", data.path());
  ASSERT_NE(engine, nullptr);
  TrainingSpec spec = CaseSpec("llama_lora", work.path());
  spec.lora.dropout = 0.5;
  spec.hyper.eval_fraction = 0.0;
  CancellationToken cancel;
  auto result = engine->Train(spec, nullptr, cancel);
  ASSERT_TRUE(result.ok()) << result.status();
  const double reference = ReadJson(CaseDir("llama_lora") + "/hyper.json")["losses"][0];
  EXPECT_GT(std::abs(result->final_loss - reference), 1e-4);  // Without dropout they agree to 1e-5.
  engine->Shutdown(absl::Seconds(1));
}

TEST(TrainerTest, CancellationMidEpochReturnsCancelledAndWritesNoOutput) {
  TempDir data, work;
  std::unique_ptr<Engine> engine = MakeEngine("llama", data.path());
  ASSERT_NE(engine, nullptr);
  TrainingSpec spec = ResumeSpec(work.path());
  spec.hyper.max_steps = 1000;
  CancellationToken cancel;
  int64_t last_step = 0;
  auto result = engine->Train(spec, [&](const TrainingProgress& p) {
    last_step = p.step;
    if (p.step == 2) cancel.Cancel();
  }, cancel);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled) << result.status();
  EXPECT_EQ(last_step, 2);  // Stopped before the next micro-batch.
  EXPECT_FALSE(IsDirectory(work.path() + "/output"));
  engine->Shutdown(absl::Seconds(1));
}

TEST(TrainerTest, BadSpecsAreRefusedWithTheRightCodes) {
  TempDir data, work;
  std::unique_ptr<Engine> engine = MakeEngine("llama", data.path());
  ASSERT_NE(engine, nullptr);
  auto code = [&](const TrainingSpec& spec) { return engine->ValidateTraining(spec).status().code(); };
  TrainingSpec good = ResumeSpec(work.path());
  auto report = engine->ValidateTraining(good);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->train_rows, 12);

  TrainingSpec s = good;
  s.lora.target_modules = {"c_attn"};
  EXPECT_EQ(code(s), absl::StatusCode::kFailedPrecondition);
  s = good;
  s.lora.rank = 0;
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.hyper.lr_scheduler = "exponential";
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.hyper.learning_rate = 0;
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.hyper.max_seq_length = 100000;
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.dataset_path = work.path() + "/missing.jsonl";
  EXPECT_EQ(code(s), absl::StatusCode::kNotFound);
  s = good;
  s.memory_budget_bytes = 1 << 20;
  EXPECT_EQ(code(s), absl::StatusCode::kResourceExhausted);
  s = good;
  s.method = TrainingMethod::kBottleneck;
  s.bottleneck.config = "parallel";
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.method = TrainingMethod::kFusion;
  s.fusion.children = {{"fa", CaseDir("llama_fusion") + "/init/fa", nullptr},
                       {"zz", work.path() + "/nowhere", nullptr}};
  EXPECT_EQ(code(s), absl::StatusCode::kNotFound);
  s.fusion.children.resize(1);
  EXPECT_EQ(code(s), absl::StatusCode::kInvalidArgument);
  s = good;
  s.work_dir = work.path() + "/absent";
  CancellationToken cancel;
  EXPECT_EQ(engine->Train(s, nullptr, cancel).status().code(), absl::StatusCode::kInvalidArgument);
  engine->Shutdown(absl::Seconds(1));

  // A --merge-adapter deployment serves one adapter baked into the weights.
  EngineOptions merged;
  merged.adapters.push_back({"m", CaseDir("llama_lora") + "/init"});
  merged.merge_adapter = "m";
  std::unique_ptr<Engine> dedicated = MakeEngine("llama", data.path(), merged);
  ASSERT_NE(dedicated, nullptr);
  EXPECT_EQ(dedicated->ValidateTraining(good).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(dedicated->Train(good, nullptr, cancel).status().code(),
            absl::StatusCode::kFailedPrecondition);
  dedicated->Shutdown(absl::Seconds(1));
}

std::vector<std::vector<int32_t>> GreedyOutputs(Engine& engine, int n) {
  std::vector<std::shared_ptr<testing::CollectingSink>> sinks;
  for (int i = 0; i < n; ++i) {
    GenerateRequest r;
    r.prompt = "the cat sat " + std::to_string(i);
    r.sampling.max_tokens = 12;
    r.sampling.ignore_eos = true;
    sinks.push_back(std::make_shared<testing::CollectingSink>());
    EXPECT_TRUE(engine.Submit(std::move(r), sinks.back()).ok());
  }
  std::vector<std::vector<int32_t>> out;
  for (auto& s : sinks) out.push_back(s->Wait().ids);
  return out;
}

TEST(TrainerTest, ServingGoesOnUnchangedWhileAJobTrains) {
  TempDir data, work;
  std::unique_ptr<Engine> engine = MakeEngine("llama", data.path());
  ASSERT_NE(engine, nullptr);
  const auto expected = GreedyOutputs(*engine, 6);
  TrainingSpec spec = ResumeSpec(work.path());
  spec.hyper.max_steps = 40;
  std::atomic<int64_t> steps{0};
  CancellationToken cancel;
  absl::StatusOr<TrainingResult> result = absl::UnknownError("not run");
  std::thread job([&] {
    result = engine->Train(spec, [&](const TrainingProgress& p) { steps = p.step; }, cancel);
  });
  int rounds = 0;
  while (steps.load() < 40 && rounds < 200) {
    EXPECT_EQ(GreedyOutputs(*engine, 6), expected) << "round " << rounds;
    ++rounds;
  }
  job.join();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_GT(rounds, 1);
  EXPECT_EQ(engine->Stats().requests_finished, 6 * (rounds + 1));
  engine->Shutdown(absl::Seconds(1));
}

// Sum over every linear weight and the logits of a fixed prompt.
double BaseChecksum(CausalLM& model) {
  double sum = 0;
  for (int l = 0; l < model.config().num_layers; ++l) {
    for (int m = 0; m < lora_module::kMaxModules; ++m) {
      LinearRef ref = model.Linear(l, m);
      if (ref.weight == nullptr) continue;
      sum += ref.weight->to(at::kDouble).abs().sum().item<double>() * (l + 1) * (m + 1);
    }
  }
  auto cache = model.NewCache(1, 16);
  ForwardBatch batch;
  batch.slots = {0};
  batch.past_lens = {0};
  batch.tokens = {{1, 5, 9, 13, 40}};
  batch.all_logits = true;
  return sum + model.Forward(batch, *cache).to(at::kDouble).abs().sum().item<double>();
}

TEST(TrainerTest, TrainingNeverChangesTheBaseWeights) {
  TempDir work;
  ModelLoadOptions load;
  load.device = TestDevice();
  auto model = CausalLM::Load(FixturesDir() + "/models/llama", load);
  ASSERT_TRUE(model.ok()) << model.status();
  auto tokenizer = Tokenizer::FromFile(FixturesDir() + "/models/llama/tokenizer.json");
  ASSERT_TRUE(tokenizer.ok());
  const double before = BaseChecksum(**model);
  for (const char* method : {"lora", "houlsby"}) {
    TrainingSpec spec = ResumeSpec(work.path());
    spec.hyper.max_steps = 2;
    spec.lora.target_modules = {"all-linear"};
    if (std::string(method) == "houlsby") {
      spec.method = TrainingMethod::kBottleneck;
      spec.bottleneck.config = "houlsby";
      spec.bottleneck.reduction_factor = 8;
    }
    TrainerOptions options;
    options.context_length = 128;
    CancellationToken cancel;
    auto result = RunTraining(TrainContext{model->get(), tokenizer->get(), &spec}, nullptr, cancel,
                              options);
    ASSERT_TRUE(result.ok()) << method << ": " << result.status();
    EXPECT_TRUE(std::isfinite(result->final_loss));
    EXPECT_EQ(BaseChecksum(**model), before) << method;
  }
}

}  // namespace
}  // namespace adapterd
