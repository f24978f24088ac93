#include "engine/model/causal_lm.h"

#include <ATen/Context.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/argmax.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/topk.h>
#include <c10/util/Exception.h>
#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/safetensors.h"
#include "engine/runtime/kv_cache.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using ::testing::HasSubstr;

constexpr double kTolerance = 1e-5;

std::string ModelDir(const std::string& name) {
  const char* root = std::getenv("ADAPTERD_FIXTURES_DIR");
  return std::string(root ? root : "fixtures") + "/models/" + name;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// POSIX file helpers: libtorch.so exports its own std::filesystem symbols, and
// its remove_all crashes when called from here.
bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

void RemoveTree(const std::string& path) {
  ::nftw(
      path.c_str(), [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p); },
      16, FTW_DEPTH | FTW_PHYS);
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(path.c_str())) {
    while (struct dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.push_back(e->d_name);
    }
    ::closedir(d);
  }
  return names;
}

// What make_models.py recorded with transformers.
struct Reference {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<at::Tensor> logits;  // [n_i, V] float32 per prompt.
  // llama_rope_* only: [n_i, V], half the prompt in one call, then one token
  // per call with a cache.
  std::vector<at::Tensor> stepwise;
  std::vector<std::vector<int32_t>> generations;
  int max_new_tokens = 0;
};

Reference LoadReference(const std::string& dir) {
  Reference ref;
  nlohmann::json j = nlohmann::json::parse(ReadFile(dir + "/reference.json"));
  ref.prompts = j["prompts"].get<std::vector<std::vector<int32_t>>>();
  ref.generations = j["generations"].get<std::vector<std::vector<int32_t>>>();
  ref.max_new_tokens = j["max_new_tokens"].get<int>();
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
      SafetensorsFile::Open(dir + "/reference.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return ref;
  auto read = [&](const std::string& name) -> at::Tensor {
    const SafetensorsTensorInfo* info = (*file)->Find(name);
    if (info == nullptr || info->dtype != "F32") return at::Tensor();
    at::Tensor t = at::empty(info->shape, at::kFloat);
    std::string_view bytes = (*file)->Data(*info);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    return t;
  };
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    at::Tensor t = read("logits." + std::to_string(i));
    EXPECT_TRUE(t.defined()) << "logits." << i;
    if (!t.defined()) return ref;
    ref.logits.push_back(t);
    at::Tensor stepwise = read("stepwise." + std::to_string(i));
    if (stepwise.defined()) ref.stepwise.push_back(stepwise);
  }
  return ref;
}

std::unique_ptr<CausalLM> LoadModel(const std::string& name, const std::string& dtype = "") {
  ModelLoadOptions options;
  options.dtype = dtype;
  absl::StatusOr<std::unique_ptr<CausalLM>> model = CausalLM::Load(ModelDir(name), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a.cpu() - b.cpu()).abs().max().item<double>();
}

// The sequence length beyond which "dynamic" and "longrope" change the rotary
// frequencies of a whole forward call; no limit for the other types.
int64_t LengthDependentRopeThreshold(const ModelConfig& c) {
  if (c.rope_scaling.type == "dynamic") return c.max_position_embeddings;
  if (c.rope_scaling.type == "longrope") return c.rope_scaling.original_max_position_embeddings;
  return std::numeric_limits<int64_t>::max();
}

class ParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    model_ = LoadModel(GetParam());
    ASSERT_NE(model_, nullptr);
    ref_ = LoadReference(ModelDir(GetParam()));
    ASSERT_EQ(ref_.logits.size(), ref_.prompts.size());
  }

  std::unique_ptr<CausalLM> model_;
  Reference ref_;
};

TEST_P(ParityTest, BatchedPrefillOfDifferentLengthsMatchesHf) {
  const int n = static_cast<int>(ref_.prompts.size());
  std::unique_ptr<KvCache> cache = model_->NewCache(n + 2, 64);
  ForwardBatch batch;
  batch.all_logits = true;
  for (int i = 0; i < n; ++i) {
    batch.slots.push_back(n + 1 - i);  // Slots in a different order than the batch.
    batch.past_lens.push_back(0);
    batch.tokens.push_back(ref_.prompts[i]);
  }
  at::Tensor logits = model_->Forward(batch, *cache);
  ASSERT_EQ(logits.scalar_type(), at::kFloat);
  ASSERT_EQ(logits.dim(), 2);
  EXPECT_EQ(logits.size(1), model_->config().vocab_size);
  int64_t row = 0;
  double worst = 0;
  for (int i = 0; i < n; ++i) {
    const int64_t len = static_cast<int64_t>(ref_.prompts[i].size());
    worst = std::max(worst, MaxAbsDiff(logits.narrow(0, row, len), ref_.logits[i]));
    row += len;
  }
  EXPECT_EQ(row, logits.size(0));
  EXPECT_LT(worst, kTolerance);
  std::printf("[ %s ] batched prefill max |diff| = %.3g\n", GetParam().c_str(), worst);

  // Last-token logits only.
  batch.all_logits = false;
  std::unique_ptr<KvCache> cache2 = model_->NewCache(n + 2, 64);
  at::Tensor last = model_->Forward(batch, *cache2);
  ASSERT_EQ(last.size(0), n);
  for (int i = 0; i < n; ++i) {
    const int64_t len = ref_.logits[i].size(0);
    EXPECT_LT(MaxAbsDiff(last[i], ref_.logits[i][len - 1]), kTolerance) << "prompt " << i;
  }
}

// Prefill in chunks mixed with decode steps, then pure batched decode steps
// with sequences of different past lengths, comparing every row.
TEST_P(ParityTest, IncrementalChunksAndDecodeMatchHf) {
  const int n = static_cast<int>(ref_.prompts.size());
  std::unique_ptr<KvCache> cache = model_->NewCache(n, 64);
  std::vector<int64_t> done(n, 0);
  // Chunks crossing a length-dependent rope's threshold are not a full forward
  // (see LengthDependentRopeTest); prompts within it are compared.
  const int64_t threshold = LengthDependentRopeThreshold(model_->config());
  double worst = 0;
  int decode_only_steps = 0, mixed_steps = 0, compared_rows = 0;
  for (int step = 0;; ++step) {
    ForwardBatch batch;
    batch.all_logits = true;
    bool all_one = true;
    for (int i = 0; i < n; ++i) {
      const int64_t len = static_cast<int64_t>(ref_.prompts[i].size());
      const int64_t remaining = len - done[i];
      if (remaining == 0) continue;
      int64_t chunk = 1;
      if (step == 0) chunk = std::max<int64_t>(1, len / 2);
      if (step == 1 || step == 2) chunk = std::min<int64_t>(remaining, 1 + (i + step) % 3);
      chunk = std::min(chunk, remaining);
      all_one = all_one && chunk == 1;
      batch.slots.push_back(i);
      batch.past_lens.push_back(done[i]);
      batch.tokens.emplace_back(ref_.prompts[i].begin() + done[i],
                                ref_.prompts[i].begin() + done[i] + chunk);
    }
    if (batch.slots.empty()) break;
    (all_one ? decode_only_steps : mixed_steps) += 1;
    at::Tensor logits = model_->Forward(batch, *cache);
    int64_t row = 0;
    for (size_t b = 0; b < batch.slots.size(); ++b) {
      const int i = batch.slots[b];
      const int64_t chunk = static_cast<int64_t>(batch.tokens[b].size());
      if (static_cast<int64_t>(ref_.prompts[i].size()) <= threshold) {
        ++compared_rows;
        worst = std::max(worst, MaxAbsDiff(logits.narrow(0, row, chunk),
                                           ref_.logits[i].narrow(0, done[i], chunk)));
      }
      row += chunk;
      done[i] += chunk;
    }
  }
  EXPECT_GT(decode_only_steps, 2);
  EXPECT_GT(mixed_steps, 1);
  EXPECT_GT(compared_rows, 0);
  EXPECT_LT(worst, kTolerance);
  std::printf("[ %s ] incremental max |diff| = %.3g\n", GetParam().c_str(), worst);
}

TEST_P(ParityTest, GreedyGenerationMatchesHf) {
  const int n = static_cast<int>(ref_.prompts.size());
  std::unique_ptr<KvCache> cache = model_->NewCache(n, 64);
  ForwardBatch batch;
  for (int i = 0; i < n; ++i) {
    batch.slots.push_back(i);
    batch.past_lens.push_back(0);
    batch.tokens.push_back(ref_.prompts[i]);
  }
  std::vector<std::vector<int32_t>> generated(n);
  for (int t = 0; t < ref_.max_new_tokens; ++t) {
    at::Tensor next = model_->Forward(batch, *cache).argmax(-1).cpu();
    for (int i = 0; i < n; ++i) {
      const int32_t id = static_cast<int32_t>(next[i].item<int64_t>());
      generated[i].push_back(id);
      batch.past_lens[i] += static_cast<int64_t>(batch.tokens[i].size());
      batch.tokens[i] = {id};
    }
  }
  for (int i = 0; i < n; ++i) EXPECT_EQ(generated[i], ref_.generations[i]) << "prompt " << i;
}

// bf16 weights and activations: the argmax agrees with HF's fp32 wherever
// fp32's top-2 margin is clearly above bf16 noise.
TEST_P(ParityTest, Bfloat16AgreesInArgmax) {
  std::unique_ptr<CausalLM> bf16 = LoadModel(GetParam(), "bfloat16");
  ASSERT_NE(bf16, nullptr);
  EXPECT_EQ(bf16->dtype(), at::kBFloat16);
  const int n = static_cast<int>(ref_.prompts.size());
  std::unique_ptr<KvCache> cache = bf16->NewCache(n, 64);
  ForwardBatch batch;
  batch.all_logits = true;
  for (int i = 0; i < n; ++i) {
    batch.slots.push_back(i);
    batch.past_lens.push_back(0);
    batch.tokens.push_back(ref_.prompts[i]);
  }
  at::Tensor logits = bf16->Forward(batch, *cache);
  ASSERT_EQ(logits.scalar_type(), at::kFloat);
  at::Tensor ref = at::cat(ref_.logits, 0);
  at::Tensor top2 = std::get<0>(ref.topk(2, -1));
  at::Tensor margin = top2.select(1, 0) - top2.select(1, 1);
  at::Tensor ours = logits.argmax(-1), theirs = ref.argmax(-1);
  int compared = 0, agreed = 0;
  for (int64_t r = 0; r < ref.size(0); ++r) {
    if (margin[r].item<float>() < 0.08f) continue;
    ++compared;
    agreed += ours[r].item<int64_t>() == theirs[r].item<int64_t>();
  }
  EXPECT_GE(compared, ref.size(0) / 3);
  EXPECT_EQ(agreed, compared);
  const double diff = MaxAbsDiff(logits, ref);
  EXPECT_LT(diff, 0.5);
  EXPECT_GT(diff, kTolerance);  // bf16 really ran.
  std::printf("[ %s ] bf16 max |diff| = %.3g, argmax agrees on %d/%d rows\n", GetParam().c_str(),
              diff, agreed, compared);
}

// Negative control: the parity check notices positions that are off by one.
TEST_P(ParityTest, ShiftedPositionsAreDetected) {
  std::unique_ptr<KvCache> cache = model_->NewCache(1, 64);
  ForwardBatch batch;
  batch.all_logits = true;
  batch.slots = {0};
  batch.past_lens = {1};
  batch.tokens = {ref_.prompts[1]};
  at::Tensor logits = model_->Forward(batch, *cache);
  EXPECT_GT(MaxAbsDiff(logits, ref_.logits[1]), 1e-3);
}

// The rope dict of a config.json as transformers v4 (`rope_scaling`) or v5
// (`rope_parameters`) writes it; creates a v4 one when there is none.
nlohmann::json& RopeDict(nlohmann::json& config) {
  if (config.contains("rope_parameters") && config["rope_parameters"].is_object()) {
    return config["rope_parameters"];
  }
  if (!config.contains("rope_scaling") || !config["rope_scaling"].is_object()) {
    config["rope_scaling"] = nlohmann::json::object();
  }
  return config["rope_scaling"];
}

// Sets the rope type, whichever of `rope_type`/`type` the file used.
void SetRopeType(nlohmann::json& config, const std::string& type) {
  nlohmann::json& rope = RopeDict(config);
  rope.erase("type");
  rope["rope_type"] = type;
}

// Negative controls for the config-driven features: the fixtures only pass
// because the sliding window and the rope scaling are applied. Returns the
// max |diff| against HF of prompt 1 with `edit` applied to config.json.
double DiffWithEditedConfig(const std::string& model,
                            const std::function<void(nlohmann::json&)>& edit) {
  const std::string dir = ::testing::TempDir() + "/edited_" + model;
  RemoveTree(dir);
  ::mkdir(dir.c_str(), 0755);
  nlohmann::json config = nlohmann::json::parse(ReadFile(ModelDir(model) + "/config.json"));
  edit(config);
  WriteFile(dir + "/config.json", config.dump(2));
  WriteFile(dir + "/model.safetensors", ReadFile(ModelDir(model) + "/model.safetensors"));
  absl::StatusOr<std::unique_ptr<CausalLM>> edited = CausalLM::Load(dir, {});
  EXPECT_TRUE(edited.ok()) << edited.status();
  if (!edited.ok()) return 0;
  Reference ref = LoadReference(ModelDir(model));
  std::unique_ptr<KvCache> cache = (*edited)->NewCache(1, 64);
  at::Tensor logits = (*edited)->Forward({{0}, {0}, {ref.prompts[1]}, true}, *cache);
  RemoveTree(dir);
  const double diff = MaxAbsDiff(logits, ref.logits[1]);
  std::printf("[ %s ] edited config max |diff| = %.3g\n", model.c_str(), diff);
  return diff;
}

TEST(CausalLMTest, WithoutTheSlidingWindowParityBreaks) {
  EXPECT_GT(
      DiffWithEditedConfig("mistral_sw", [](nlohmann::json& c) { c["sliding_window"] = nullptr; }),
      1e-3);
}

TEST(CausalLMTest, WithoutLlama3RopeScalingParityBreaks) {
  EXPECT_GT(DiffWithEditedConfig("llama_tied_rope3",
                                 [](nlohmann::json& c) { SetRopeType(c, "default"); }),
            1e-3);
}

// The edited config itself still matches HF: the edit machinery is not what breaks parity.
TEST(CausalLMTest, AnUnchangedConfigRoundTripKeepsParity) {
  for (const char* model : {"llama_rope_yarn", "llama_rope_longrope", "llama_rope_dynamic"}) {
    EXPECT_LT(DiffWithEditedConfig(model, [](nlohmann::json&) {}), kTolerance) << model;
  }
}

TEST(CausalLMTest, WithoutYarnRopeScalingParityBreaks) {
  EXPECT_GT(
      DiffWithEditedConfig("llama_rope_yarn", [](nlohmann::json& c) { SetRopeType(c, "default"); }),
      1e-3);
  // Frequencies right but cos/sin not scaled by attention_factor (mscale).
  EXPECT_GT(DiffWithEditedConfig("llama_rope_yarn",
                                 [](nlohmann::json& c) { RopeDict(c)["attention_factor"] = 1.0; }),
            1e-3);
  // The ramp rounded to whole dimensions.
  EXPECT_GT(DiffWithEditedConfig("llama_rope_yarn",
                                 [](nlohmann::json& c) { RopeDict(c)["truncate"] = true; }),
            1e-3);
}

TEST(CausalLMTest, WithoutDynamicRopeScalingParityBreaks) {
  EXPECT_GT(DiffWithEditedConfig("llama_rope_dynamic",
                                 [](nlohmann::json& c) { SetRopeType(c, "default"); }),
            1e-3);
}

TEST(CausalLMTest, WithoutLongropeLongFactorsParityBreaks) {
  EXPECT_GT(DiffWithEditedConfig("llama_rope_longrope",
                                 [](nlohmann::json& c) {
                                   nlohmann::json& rope = RopeDict(c);
                                   rope["long_factor"] = rope["short_factor"];
                                 }),
            1e-3);
}

// "dynamic" and "longrope" choose frequencies from each sequence's length
// after the step (llama.cc says why): a prompt fed half at once and then a
// token at a time matches transformers fed the same way with its cache, and
// rows of one batch use their own sequence's length.
class LengthDependentRopeTest : public ParityTest {};

TEST_P(LengthDependentRopeTest, HalfPrefillThenDecodeMatchesHfStepByStep) {
  const int n = static_cast<int>(ref_.prompts.size());
  ASSERT_EQ(static_cast<int>(ref_.stepwise.size()), n);
  std::unique_ptr<KvCache> cache = model_->NewCache(n, 64);
  std::vector<int64_t> done(n, 0);
  double worst = 0, full_forward_gap = 0;
  for (int step = 0;; ++step) {
    ForwardBatch batch;
    batch.all_logits = true;
    for (int i = 0; i < n; ++i) {
      const int64_t len = static_cast<int64_t>(ref_.prompts[i].size());
      if (done[i] == len) continue;
      const int64_t chunk = step == 0 ? std::max<int64_t>(1, len / 2) : 1;
      batch.slots.push_back(i);
      batch.past_lens.push_back(done[i]);
      batch.tokens.emplace_back(ref_.prompts[i].begin() + done[i],
                                ref_.prompts[i].begin() + done[i] + chunk);
    }
    if (batch.slots.empty()) break;
    at::Tensor logits = model_->Forward(batch, *cache);
    int64_t row = 0;
    for (size_t b = 0; b < batch.slots.size(); ++b) {
      const int i = batch.slots[b];
      const int64_t chunk = static_cast<int64_t>(batch.tokens[b].size());
      worst = std::max(worst, MaxAbsDiff(logits.narrow(0, row, chunk),
                                         ref_.stepwise[i].narrow(0, done[i], chunk)));
      full_forward_gap = std::max(
          full_forward_gap,
          MaxAbsDiff(logits.narrow(0, row, chunk), ref_.logits[i].narrow(0, done[i], chunk)));
      row += chunk;
      done[i] += chunk;
    }
  }
  EXPECT_LT(worst, kTolerance);
  // The fixture crosses the threshold mid-prompt, so the schedule matters.
  EXPECT_GT(full_forward_gap, 1e-3);
  std::printf("[ %s ] stepwise max |diff| = %.3g (vs full forward %.3g)\n", GetParam().c_str(),
              worst, full_forward_gap);
}

INSTANTIATE_TEST_SUITE_P(Models, LengthDependentRopeTest,
                         ::testing::Values("llama_rope_dynamic", "llama_rope_longrope"));

INSTANTIATE_TEST_SUITE_P(Models, ParityTest,
                         ::testing::Values("llama", "llama_sharded", "llama_tied_rope3", "qwen2",
                                           "mistral_sw", "gpt2", "llama_rope_dynamic",
                                           "llama_rope_yarn", "llama_rope_longrope"));

TEST(CausalLMTest, FixturesAreWhatTheyClaim) {
  EXPECT_TRUE(Exists(ModelDir("llama_sharded") + "/model.safetensors.index.json"));
  EXPECT_FALSE(Exists(ModelDir("llama_sharded") + "/model.safetensors"));
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> tied =
      SafetensorsFile::Open(ModelDir("llama_tied_rope3") + "/model.safetensors");
  ASSERT_TRUE(tied.ok()) << tied.status();
  EXPECT_EQ((*tied)->Find("lm_head.weight"), nullptr);
  std::unique_ptr<CausalLM> model = LoadModel("llama_tied_rope3");
  ASSERT_NE(model, nullptr);
  EXPECT_EQ(model->config().rope_scaling.type, "llama3");
  EXPECT_TRUE(model->config().tie_word_embeddings);
  std::unique_ptr<CausalLM> mistral = LoadModel("mistral_sw");
  ASSERT_NE(mistral, nullptr);
  EXPECT_EQ(mistral->config().sliding_window, 5);
  for (const char* type : {"dynamic", "yarn", "longrope"}) {
    std::unique_ptr<CausalLM> rope = LoadModel(std::string("llama_rope_") + type);
    ASSERT_NE(rope, nullptr);
    EXPECT_EQ(rope->config().rope_scaling.type, type);
    // The prompts cross the length where the scaling starts to act.
    Reference ref = LoadReference(ModelDir(std::string("llama_rope_") + type));
    size_t longest = 0;
    for (const auto& p : ref.prompts) longest = std::max(longest, p.size());
    EXPECT_GT(static_cast<int64_t>(longest), 16 + 16);
  }
  EXPECT_EQ(
      LoadModel("llama_rope_longrope")->config().rope_scaling.original_max_position_embeddings, 16);
}

TEST(CausalLMTest, FingerprintIsStableAndDistinguishesModels) {
  std::unique_ptr<CausalLM> a = LoadModel("llama");
  std::unique_ptr<CausalLM> b = LoadModel("llama");
  std::unique_ptr<CausalLM> c = LoadModel("qwen2");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->fingerprint().size(), 64u);
  EXPECT_EQ(a->fingerprint(), b->fingerprint());
  EXPECT_NE(a->fingerprint(), c->fingerprint());
  EXPECT_EQ(a->device(), at::Device(at::kCPU));
  EXPECT_EQ(a->dtype(), at::kFloat);
}

TEST(CausalLMTest, Float16RunsAndStaysClose) {
  std::unique_ptr<CausalLM> model = LoadModel("gpt2", "float16");
  ASSERT_NE(model, nullptr);
  Reference ref = LoadReference(ModelDir("gpt2"));
  std::unique_ptr<KvCache> cache = model->NewCache(1, 32);
  ForwardBatch batch{{0}, {0}, {ref.prompts[0]}, true};
  at::Tensor logits = model->Forward(batch, *cache);
  EXPECT_LT(MaxAbsDiff(logits, ref.logits[0]), 0.1);
}

TEST(CausalLMTest, BadBatchesThrowInsteadOfCrashing) {
  std::unique_ptr<CausalLM> model = LoadModel("llama");
  ASSERT_NE(model, nullptr);
  std::unique_ptr<KvCache> cache = model->NewCache(2, 8);
  EXPECT_EQ(cache->num_slots(), 2);
  EXPECT_EQ(cache->max_len(), 8);
  const int32_t vocab = static_cast<int32_t>(model->config().vocab_size);
  EXPECT_THROW(model->Forward({{0}, {0}, {{vocab}}, false}, *cache), c10::Error);
  EXPECT_THROW(model->Forward({{0}, {0}, {{-1}}, false}, *cache), c10::Error);
  EXPECT_THROW(model->Forward({{2}, {0}, {{1}}, false}, *cache), c10::Error);
  EXPECT_THROW(model->Forward({{0}, {7}, {{1, 2}}, false}, *cache), c10::Error);
  EXPECT_THROW(model->Forward({{0, 0}, {0, 0}, {{1}, {2}}, false}, *cache), c10::Error);
  EXPECT_THROW(model->Forward({{0}, {0}, {{}}, false}, *cache), c10::Error);
  EXPECT_THROW(model->Forward({{}, {}, {}, false}, *cache), c10::Error);
  EXPECT_NO_THROW(model->Forward({{1}, {0}, {{1, 2, 3}}, false}, *cache));
}

class LoadErrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/load_error_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    RemoveTree(dir_);
    ::mkdir(dir_.c_str(), 0755);
    for (const char* f : {"config.json", "model.safetensors"}) {
      WriteFile(dir_ + "/" + f, ReadFile(ModelDir("llama") + "/" + f));
    }
  }
  void TearDown() override { RemoveTree(dir_); }

  absl::Status Load(const ModelLoadOptions& options = {}) {
    return CausalLM::Load(dir_, options).status();
  }

  std::string dir_;
};

TEST_F(LoadErrorTest, CopyLoads) { EXPECT_TRUE(Load().ok()) << Load(); }

TEST_F(LoadErrorTest, MissingDirectoryIsNotFound) {
  EXPECT_EQ(CausalLM::Load(dir_ + "/nope", {}).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(LoadErrorTest, MissingConfigIsNotFound) {
  ::unlink((dir_ + "/config.json").c_str());
  EXPECT_EQ(Load().code(), absl::StatusCode::kNotFound);
}

TEST_F(LoadErrorTest, MissingWeightsIsNotFound) {
  ::unlink((dir_ + "/model.safetensors").c_str());
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.safetensors"));
}

TEST_F(LoadErrorTest, MissingShardIsNotFound) {
  ::unlink((dir_ + "/model.safetensors").c_str());
  for (const std::string& name : ListDir(ModelDir("llama_sharded"))) {
    if (name.rfind("model", 0) == 0) {
      WriteFile(dir_ + "/" + name, ReadFile(ModelDir("llama_sharded") + "/" + name));
    }
  }
  EXPECT_TRUE(Load().ok());
  ::unlink((dir_ + "/model-00002-of-00009.safetensors").c_str());
  EXPECT_EQ(Load().code(), absl::StatusCode::kNotFound);
}

TEST_F(LoadErrorTest, UnknownArchitectureIsUnimplemented) {
  WriteFile(dir_ + "/config.json", R"({"model_type": "t5", "vocab_size": 10})");
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("t5"));
}

TEST_F(LoadErrorTest, TruncatedSafetensorsIsInvalidArgument) {
  const std::string bytes = ReadFile(dir_ + "/model.safetensors");
  WriteFile(dir_ + "/model.safetensors", bytes.substr(0, bytes.size() - 4));
  EXPECT_EQ(Load().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LoadErrorTest, LyingHeaderIsInvalidArgument) {
  std::string bytes = ReadFile(dir_ + "/model.safetensors");
  const size_t pos = bytes.find("\"data_offsets\":[0,");
  ASSERT_NE(pos, std::string::npos);
  bytes[pos + 16] = '4';  // The first tensor no longer starts at 0.
  WriteFile(dir_ + "/model.safetensors", bytes);
  EXPECT_EQ(Load().code(), absl::StatusCode::kInvalidArgument);
}

// Rewrites model.safetensors through our reader and writer, editing tensors.
void RewriteWeights(const std::string& path, const std::function<bool(SafetensorsTensor&)>& edit) {
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  std::vector<SafetensorsTensor> tensors;
  for (const SafetensorsTensorInfo& info : (*file)->tensors()) {
    SafetensorsTensor t{info.name, info.dtype, info.shape, std::string((*file)->Data(info))};
    if (edit(t)) tensors.push_back(std::move(t));
  }
  file->reset();
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
}

TEST_F(LoadErrorTest, MissingTensorIsInvalidArgumentNamingIt) {
  RewriteWeights(dir_ + "/model.safetensors", [](SafetensorsTensor& t) {
    return t.name != "model.layers.1.mlp.up_proj.weight";
  });
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("layers.1.mlp.up_proj.weight"));
}

TEST_F(LoadErrorTest, MisshapedTensorIsInvalidArgumentNamingIt) {
  RewriteWeights(dir_ + "/model.safetensors", [](SafetensorsTensor& t) {
    if (t.name == "model.norm.weight") {
      t.shape = {32};
      t.data.resize(32 * 4);
    }
    return true;
  });
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("model.norm.weight"));
}

TEST_F(LoadErrorTest, IntegerWeightsAreInvalidArgument) {
  RewriteWeights(dir_ + "/model.safetensors", [](SafetensorsTensor& t) {
    if (t.name == "model.norm.weight") t.dtype = "I32";
    return true;
  });
  EXPECT_EQ(Load().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(LoadErrorTest, Float16WeightsAreConvertedAndPrefixesAreOptional) {
  // Stored as F16 without the "model." prefix: loads as float32.
  RewriteWeights(dir_ + "/model.safetensors", [](SafetensorsTensor& t) {
    if (t.name.rfind("model.", 0) == 0) t.name = t.name.substr(6);
    at::Tensor f = at::empty(t.shape, at::kFloat);
    std::memcpy(f.data_ptr(), t.data.data(), t.data.size());
    at::Tensor h = f.to(at::kHalf).contiguous();
    t.dtype = "F16";
    t.data.assign(static_cast<const char*>(h.data_ptr()), h.numel() * 2);
    return true;
  });
  std::unique_ptr<CausalLM> full = LoadModel("llama");
  absl::StatusOr<std::unique_ptr<CausalLM>> half = CausalLM::Load(dir_, {});
  ASSERT_TRUE(half.ok()) << half.status();
  ASSERT_EQ((*half)->dtype(), at::kFloat);
  Reference ref = LoadReference(ModelDir("llama"));
  std::unique_ptr<KvCache> cache = (*half)->NewCache(1, 32);
  at::Tensor logits = (*half)->Forward({{0}, {0}, {ref.prompts[0]}, true}, *cache);
  const double diff = MaxAbsDiff(logits, ref.logits[0]);
  EXPECT_GT(diff, 0);
  EXPECT_LT(diff, 0.05);
}

TEST_F(LoadErrorTest, BadOptionsAreRejected) {
  ModelLoadOptions dtype;
  dtype.dtype = "int8";
  EXPECT_EQ(Load(dtype).code(), absl::StatusCode::kInvalidArgument);
  ModelLoadOptions device;
  device.device = "tpu";
  EXPECT_EQ(Load(device).code(), absl::StatusCode::kInvalidArgument);
  ModelLoadOptions cuda;
  cuda.device = "cuda:7";
  if (!at::hasCUDA()) {
    EXPECT_EQ(Load(cuda).code(), absl::StatusCode::kFailedPrecondition);
    cuda.device = "cuda";
    EXPECT_EQ(Load(cuda).code(), absl::StatusCode::kFailedPrecondition);
  }
}

TEST_F(LoadErrorTest, UnsupportedRopeTypeIsUnimplementedAtLoad) {
  // Edits the parsed JSON, so v4 (`rope_scaling`) and v5 (`rope_parameters`)
  // configs both work.
  nlohmann::json config = nlohmann::json::parse(ReadFile(dir_ + "/config.json"));
  SetRopeType(config, "made_up");
  RopeDict(config)["factor"] = 4.0;
  WriteFile(dir_ + "/config.json", config.dump(2));
  absl::Status s = Load();
  EXPECT_EQ(s.code(), absl::StatusCode::kUnimplemented);
  EXPECT_THAT(std::string(s.message()), HasSubstr("made_up"));
}

}  // namespace
}  // namespace adapterd
