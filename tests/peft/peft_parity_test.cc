// Parity of every adapter method with the reference libraries (HF PEFT,
// AdapterHub), mixed-batch equivalence, merge/unmerge, and the bad-adapter
// catalog. Fixtures: scripts/fixtures/make_adapters.py.

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/model/causal_lm.h"
#include "engine/model/safetensors.h"
#include "engine/peft/adapter.h"
#include "engine/peft/batch_adapters.h"
#include "engine/runtime/kv_cache.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/common/fixtures.h"

namespace adapterd {
namespace {

using ::adapterd::testing::FixturesDir;
using ::adapterd::testing::ReadFile;

using ::testing::HasSubstr;

constexpr double kTolerance = 1e-5;

std::string ModelDir(const std::string& base) { return FixturesDir() + "/models/" + base; }
std::string AdapterDir(const std::string& base, const std::string& name) {
  return FixturesDir() + "/adapters/" + base + "/" + name;
}

struct Reference {
  std::vector<std::vector<int32_t>> prompts;
  std::vector<at::Tensor> logits;
};

Reference LoadReference(const std::string& dir) {
  Reference ref;
  nlohmann::json j = nlohmann::json::parse(ReadFile(dir + "/reference.json"));
  ref.prompts = j["prompts"].get<std::vector<std::vector<int32_t>>>();
  auto file = SafetensorsFile::Open(dir + "/reference.safetensors");
  EXPECT_TRUE(file.ok()) << file.status();
  if (!file.ok()) return ref;
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    const SafetensorsTensorInfo* info = (*file)->Find("logits." + std::to_string(i));
    EXPECT_NE(info, nullptr);
    if (info == nullptr) return ref;
    at::Tensor t = at::empty(info->shape, at::kFloat);
    std::string_view bytes = (*file)->Data(*info);
    std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
    ref.logits.push_back(t);
  }
  return ref;
}

std::unique_ptr<CausalLM> LoadModel(const std::string& base, const std::string& dtype = "") {
  ModelLoadOptions options;
  options.dtype = dtype;
  auto model = CausalLM::Load(ModelDir(base), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? *std::move(model) : nullptr;
}

// One request of the batch: a prompt under an adapter (nullptr: base).
struct Row {
  const Adapter* adapter;
  std::vector<int32_t> prompt;
};

// Runs `rows` as one batch (each in its own cache slot, prefix adapters
// pre-filled, prompt adapters as leading virtual rows) and returns each
// row's logits of its real tokens.
std::vector<at::Tensor> RunBatch(CausalLM& model, const std::vector<Row>& rows) {
  auto cache = model.NewCache(static_cast<int>(rows.size()), 128);
  ForwardBatch batch;
  batch.all_logits = true;
  for (size_t i = 0; i < rows.size(); ++i) {
    const Adapter* a = rows[i].adapter;
    std::vector<int32_t> tokens = rows[i].prompt;
    int virtual_rows = 0;
    int64_t past = 0;
    if (a != nullptr && a->prompt.defined()) {
      virtual_rows = static_cast<int>(a->virtual_tokens());
      tokens.insert(tokens.begin(), virtual_rows, 0);
    } else if (a != nullptr && !a->prefix_keys.empty()) {
      PrefillPrefix(*cache, static_cast<int>(i), *a);
      past = a->virtual_tokens();
    }
    batch.slots.push_back(static_cast<int>(i));
    batch.past_lens.push_back(past);
    batch.tokens.push_back(std::move(tokens));
    batch.adapters.push_back(a);
    batch.virtual_tokens.push_back(virtual_rows);
  }
  at::Tensor logits = model.Forward(batch, *cache).cpu();
  std::vector<at::Tensor> out;
  int64_t offset = 0;
  for (const Row& r : rows) {
    const int64_t n = static_cast<int64_t>(r.prompt.size());
    out.push_back(logits.narrow(0, offset, n));
    offset += n;
  }
  EXPECT_EQ(offset, logits.size(0));
  return out;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  EXPECT_EQ(a.sizes(), b.sizes());
  if (a.sizes() != b.sizes()) return 1e30;
  return (a - b).abs().max().item<double>();
}

struct Case {
  std::string base;
  std::string adapter;
};

std::string CaseName(const ::testing::TestParamInfo<Case>& info) {
  return info.param.base + "_" + info.param.adapter;
}

const std::vector<std::string> kAdapters = {"lora",          "lora_all_rslora_patterns",
                                            "lora_regex",    "lora_layers",
                                            "lora_dora",     "lora_bias",
                                            "prefix",        "p_tuning",
                                            "prompt_tuning", "houlsby",
                                            "pfeiffer",      "fusion"};

std::vector<Case> AllCases() {
  std::vector<Case> cases;
  for (const char* base : {"llama", "gpt2"}) {
    for (const std::string& a : kAdapters) cases.push_back({base, a});
  }
  return cases;
}

class PeftParityTest : public ::testing::TestWithParam<Case> {};

TEST_P(PeftParityTest, Fp32LogitsMatchTheReferenceLibrary) {
  const Case& c = GetParam();
  auto model = LoadModel(c.base);
  ASSERT_NE(model, nullptr);
  auto adapter = LoadAdapter(c.adapter, AdapterDir(c.base, c.adapter), *model);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  Reference ref = LoadReference(AdapterDir(c.base, c.adapter));
  ASSERT_FALSE(ref.prompts.empty());
  double worst = 0, base_diff = 1e30;
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    at::Tensor got = RunBatch(*model, {{adapter->get(), ref.prompts[i]}})[0];
    worst = std::max(worst, MaxAbsDiff(got, ref.logits[i]));
    at::Tensor base = RunBatch(*model, {{nullptr, ref.prompts[i]}})[0];
    base_diff = std::min(base_diff, MaxAbsDiff(base, ref.logits[i]));
  }
  std::printf("PARITY %s/%s (%s): max |diff| %.3g over %zu prompts; base vs reference %.3g\n",
              c.base.c_str(), c.adapter.c_str(), AdapterMethodName((*adapter)->method), worst,
              ref.prompts.size(), base_diff);
  EXPECT_LT(worst, kTolerance);
  // Negative control: the adapter must matter.
  EXPECT_GT(base_diff, 1e-2);
}

TEST_P(PeftParityTest, Bf16AgreesInArgmax) {
  const Case& c = GetParam();
  auto model = LoadModel(c.base, "bfloat16");
  ASSERT_NE(model, nullptr);
  auto adapter = LoadAdapter(c.adapter, AdapterDir(c.base, c.adapter), *model);
  ASSERT_TRUE(adapter.ok()) << adapter.status();
  Reference ref = LoadReference(AdapterDir(c.base, c.adapter));
  int checked = 0, agree = 0;
  for (size_t i = 0; i < ref.prompts.size(); ++i) {
    at::Tensor got = RunBatch(*model, {{adapter->get(), ref.prompts[i]}})[0];
    at::Tensor top2 = std::get<0>(at::topk(ref.logits[i], 2, -1));
    at::Tensor margin = top2.select(1, 0) - top2.select(1, 1);
    at::Tensor same = got.argmax(-1).eq(ref.logits[i].argmax(-1));
    for (int64_t r = 0; r < got.size(0); ++r) {
      if (margin[r].item<double>() < 0.05) continue;  // A near tie: bf16 may flip it.
      ++checked;
      agree += same[r].item<bool>();
    }
  }
  EXPECT_GT(checked, 0);
  EXPECT_EQ(agree, checked);
}

INSTANTIATE_TEST_SUITE_P(AllMethods, PeftParityTest, ::testing::ValuesIn(AllCases()), CaseName);

class MixedBatchTest : public ::testing::TestWithParam<std::string> {};

TEST_P(MixedBatchTest, EveryMethodAndTheBaseInOneBatchEqualEachAlone) {
  const std::string base = GetParam();
  auto model = LoadModel(base);
  ASSERT_NE(model, nullptr);
  std::vector<std::shared_ptr<const Adapter>> held;
  for (const std::string& name : kAdapters) {
    auto a = LoadAdapter(name, AdapterDir(base, name), *model);
    ASSERT_TRUE(a.ok()) << a.status();
    held.push_back(*a);
  }
  Reference ref = LoadReference(AdapterDir(base, "lora"));
  std::vector<Row> rows;
  for (size_t k = 0; k <= held.size(); ++k) {
    // Base rows interleaved; prompts of different lengths.
    const Adapter* a = k < held.size() ? held[k].get() : nullptr;
    rows.push_back({a, ref.prompts[k % ref.prompts.size()]});
    if (k % 4 == 0) rows.push_back({nullptr, ref.prompts[(k + 1) % ref.prompts.size()]});
  }
  rows.push_back({held[0].get(), ref.prompts[2]});  // An adapter twice in the batch.
  std::vector<at::Tensor> mixed = RunBatch(*model, rows);
  double worst = 0;
  for (size_t r = 0; r < rows.size(); ++r) {
    at::Tensor alone = RunBatch(*model, {rows[r]})[0];
    const double d = MaxAbsDiff(mixed[r], alone);
    EXPECT_LT(d, kTolerance) << "row " << r << " ("
                             << (rows[r].adapter ? rows[r].adapter->name : "base") << ")";
    worst = std::max(worst, d);
  }
  std::printf("MIXED %s: %zu rows of %zu adapters + base, max |diff| vs alone %.3g\n", base.c_str(),
              rows.size(), held.size(), worst);
}

TEST_P(MixedBatchTest, DecodingWithTheCacheMatchesTheFullForward) {
  const std::string base = GetParam();
  auto model = LoadModel(base);
  ASSERT_NE(model, nullptr);
  for (const char* name : {"lora_dora", "prefix", "prompt_tuning", "houlsby", "fusion"}) {
    auto a = LoadAdapter(name, AdapterDir(base, name), *model);
    ASSERT_TRUE(a.ok()) << a.status();
    Reference ref = LoadReference(AdapterDir(base, name));
    const std::vector<int32_t>& prompt = ref.prompts[0];
    const Adapter& adapter = **a;
    auto cache = model->NewCache(1, 128);
    const int64_t p = adapter.virtual_tokens();
    std::vector<at::Tensor> rows;
    for (size_t j = 0; j < prompt.size(); ++j) {
      ForwardBatch batch;
      batch.slots = {0};
      batch.adapters = {&adapter};
      std::vector<int32_t> tokens = {prompt[j]};
      int virtual_rows = 0;
      if (j == 0 && adapter.prompt.defined()) {
        tokens.insert(tokens.begin(), p, 0);
        virtual_rows = static_cast<int>(p);
      }
      if (j == 0 && !adapter.prefix_keys.empty()) PrefillPrefix(*cache, 0, adapter);
      batch.past_lens = {j == 0 && adapter.prompt.defined() ? 0 : static_cast<int64_t>(j) + p};
      batch.tokens = {tokens};
      batch.virtual_tokens = {virtual_rows};
      rows.push_back(model->Forward(batch, *cache).cpu());
    }
    EXPECT_LT(MaxAbsDiff(at::cat(rows, 0), ref.logits[0]), kTolerance) << name;
  }
}

INSTANTIATE_TEST_SUITE_P(Bases, MixedBatchTest, ::testing::Values("llama", "gpt2"));

TEST(LoraMergeTest, MergedWeightsGiveTheAdapterAndUnmergeRestoresExactly) {
  for (const char* base : {"llama", "gpt2"}) {
    for (const char* name : {"lora_all_rslora_patterns", "lora_dora", "lora_bias"}) {
      auto model = LoadModel(base);
      ASSERT_NE(model, nullptr);
      auto a = LoadAdapter(name, AdapterDir(base, name), *model);
      ASSERT_TRUE(a.ok()) << a.status();
      Reference ref = LoadReference(AdapterDir(base, name));
      at::Tensor before = RunBatch(*model, {{nullptr, ref.prompts[0]}})[0];
      auto merge = LoraMerge::Merge(*model, **a);
      ASSERT_TRUE(merge.ok()) << merge.status();
      at::Tensor merged = RunBatch(*model, {{nullptr, ref.prompts[0]}})[0];
      EXPECT_LT(MaxAbsDiff(merged, ref.logits[0]), 1e-4) << base << "/" << name;
      merge->Unmerge();
      at::Tensor after = RunBatch(*model, {{nullptr, ref.prompts[0]}})[0];
      EXPECT_TRUE(at::equal(before, after)) << base << "/" << name;
    }
  }
}

TEST(LoraMergeTest, RefusesNonLoraAdapters) {
  auto model = LoadModel("llama");
  ASSERT_NE(model, nullptr);
  auto a = LoadAdapter("p", AdapterDir("llama", "prompt_tuning"), *model);
  ASSERT_TRUE(a.ok()) << a.status();
  auto merge = LoraMerge::Merge(*model, **a);
  EXPECT_EQ(merge.status().code(), absl::StatusCode::kFailedPrecondition);
}

struct BadCase {
  std::string dir;
  absl::StatusCode code;
  std::string message;
};

class BadAdapterTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(BadAdapterTest, IsRefusedWithAClearError) {
  const BadCase& c = GetParam();
  auto model = LoadModel("llama");
  ASSERT_NE(model, nullptr);
  auto a = LoadAdapter("bad", FixturesDir() + "/adapters/bad/" + c.dir, *model);
  ASSERT_FALSE(a.ok()) << c.dir << " was accepted";
  std::printf("BAD %s: %s\n", c.dir.c_str(), a.status().ToString().c_str());
  EXPECT_EQ(a.status().code(), c.code) << a.status();
  EXPECT_THAT(std::string(a.status().message()), HasSubstr(c.message));
  EXPECT_THAT(std::string(a.status().message()), HasSubstr("adapter \"bad\""));
}

INSTANTIATE_TEST_SUITE_P(
    Catalog, BadAdapterTest,
    ::testing::Values(
        BadCase{"wrong_shape", absl::StatusCode::kFailedPrecondition,
                "lora_A of layers.0.self_attn.q_proj has shape [4, 48]"},
        BadCase{"rank_mismatch", absl::StatusCode::kInvalidArgument,
                "rank in config (8) does not match"},
        BadCase{"nan_weights", absl::StatusCode::kInvalidArgument, "non-finite values"},
        BadCase{"truncated", absl::StatusCode::kInvalidArgument, "bad safetensors file"},
        BadCase{"missing_config", absl::StatusCode::kNotFound, "no adapter_config.json"},
        BadCase{"unknown_peft_type", absl::StatusCode::kInvalidArgument,
                "unsupported peft_type \"SUPER_TUNING\""},
        BadCase{"pickle_bin", absl::StatusCode::kInvalidArgument,
                "adapter_model.bin is a pickle file"},
        BadCase{"modules_to_save", absl::StatusCode::kInvalidArgument, "modules_to_save"},
        BadCase{"embedding_lora", absl::StatusCode::kInvalidArgument, "embedding LoRA"},
        BadCase{"pissa_init", absl::StatusCode::kInvalidArgument, "init_lora_weights=\"pissa\""},
        BadCase{"no_tensors_match", absl::StatusCode::kInvalidArgument, "do not target"},
        BadCase{"gpt2_adapter_on_llama", absl::StatusCode::kInvalidArgument, "fan_in_fan_out"},
        BadCase{"does_not_exist", absl::StatusCode::kNotFound, "not found"}),
    [](const ::testing::TestParamInfo<BadCase>& info) { return info.param.dir; });

}  // namespace
}  // namespace adapterd
