// Prefix tuning, P-tuning and prompt tuning as trainables, against HF PEFT
// 0.21.2 (references from scripts/fixtures/make_training_prompt.py): the loss
// and the gradient of every parameter for one batch, run through the serving
// Forward; one AdamW step; the exported files and their reload.

#include <ATen/ATen.h>
#include <ATen/core/grad_mode.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/model/causal_lm.h"
#include "engine/model/safetensors.h"
#include "engine/model/tokenizer.h"
#include "engine/peft/adapter.h"
#include "engine/peft/batch_adapters.h"
#include "engine/runtime/kv_cache.h"
#include "engine/training/optim.h"
#include "engine/training/trainable.h"

namespace adapterd {
namespace {

using json = nlohmann::json;
using ::testing::HasSubstr;

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

json ReadJson(const std::string& path) { return json::parse(ReadFile(path)); }

std::map<std::string, at::Tensor> ReadTensors(const std::string& path) {
  auto file = SafetensorsFile::Open(path);
  EXPECT_TRUE(file.ok()) << path << ": " << file.status();
  std::map<std::string, at::Tensor> out;
  if (!file.ok()) return out;
  for (const SafetensorsTensorInfo& info : (*file)->tensors()) {
    EXPECT_EQ(info.dtype, "F32") << info.name;
    std::string_view data = (*file)->Data(info);
    out[info.name] = at::from_blob(const_cast<char*>(data.data()), info.shape, at::kFloat).clone();
  }
  return out;
}

double MaxAbsDiff(const at::Tensor& a, const at::Tensor& b) {
  return (a.detach().to(at::kFloat) - b.detach().to(at::kFloat)).abs().max().item<double>();
}

// max |a - b| / (atol + rtol |b|): <= 1 is "close", like torch.allclose.
double CloseRatio(const at::Tensor& a, const at::Tensor& b, double rtol, double atol) {
  at::Tensor bf = b.detach().to(at::kFloat);
  return ((a.detach().to(at::kFloat) - bf).abs() / (bf.abs() * rtol + atol)).max().item<double>();
}

struct Row {
  std::vector<int32_t> ids;
  int64_t loss_begin = 1;
};

// One prompt-learning case of the fixture.
struct Case {
  std::string name;
  std::string dir;  // training_prompt/<name>.
  json reference;
  std::unique_ptr<CausalLM> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::vector<Row> rows;
  std::map<std::string, at::Tensor> expected;  // reference.safetensors.
  std::map<std::string, at::Tensor> init;      // init.safetensors.
  TrainingSpec spec;

  absl::StatusOr<std::unique_ptr<TrainableAdapter>> Make() const {
    TrainContext ctx{model.get(), tokenizer.get(), &spec};
    switch (spec.method) {
      case TrainingMethod::kPrefixTuning:
        return MakePrefixTrainable(ctx);
      case TrainingMethod::kPTuning:
        return MakePTuningTrainable(ctx);
      default:
        return MakePromptTuningTrainable(ctx);
    }
  }
};

std::unique_ptr<Case> LoadCase(const std::string& name) {
  auto c = std::make_unique<Case>();
  c->name = name;
  c->dir = absl::StrCat(FixturesDir(), "/training_prompt/", name);
  c->reference = ReadJson(c->dir + "/reference.json");
  const std::string model_dir =
      absl::StrCat(FixturesDir(), "/models/", c->reference["model"].get<std::string>());
  auto model = CausalLM::Load(model_dir, {});
  EXPECT_TRUE(model.ok()) << model.status();
  auto tokenizer = Tokenizer::FromFile(model_dir + "/tokenizer.json");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  if (!model.ok() || !tokenizer.ok()) return nullptr;
  c->model = std::move(*model);
  c->tokenizer = std::move(*tokenizer);
  for (const json& r : c->reference["rows"]) {
    c->rows.push_back({r["ids"].get<std::vector<int32_t>>(), r["loss_begin"].get<int64_t>()});
  }
  c->expected = ReadTensors(c->dir + "/reference.safetensors");
  c->init = ReadTensors(c->dir + "/init.safetensors");

  const json& cfg = c->reference["config"];
  const std::string type = cfg["peft_type"].get<std::string>();
  const int p = cfg["num_virtual_tokens"].get<int>();
  TrainingSpec& spec = c->spec;
  spec.adapter_name = name;
  spec.init_adapter_dir = c->dir + "/peft_export";
  if (type == "PREFIX_TUNING") {
    spec.method = TrainingMethod::kPrefixTuning;
    spec.prefix.num_virtual_tokens = p;
    spec.prefix.prefix_projection = cfg["prefix_projection"].get<bool>();
    spec.prefix.encoder_hidden_size = 0;  // The fixture uses PEFT's default.
  } else if (type == "P_TUNING") {
    spec.method = TrainingMethod::kPTuning;
    spec.p_tuning.num_virtual_tokens = p;
    spec.p_tuning.encoder_type = cfg["encoder_reparameterization_type"].get<std::string>();
    spec.p_tuning.encoder_hidden_size = cfg["encoder_hidden_size"].get<int>();
    spec.p_tuning.encoder_num_layers = cfg["encoder_num_layers"].get<int>();
    spec.p_tuning.encoder_dropout = cfg["encoder_dropout"].get<double>();
  } else {
    spec.method = TrainingMethod::kPromptTuning;
    spec.prompt_tuning.num_virtual_tokens = p;
  }
  return c;
}

// The rows as one Forward batch, fed as the engine feeds them
// (runtime/torch_engine.cc AddRow): prompt rows as leading virtual tokens at
// positions 0..P-1, prefixes written into cache positions 0..P-1 with
// PrefillPrefix. Returns the logits of every real token, rows in order.
at::Tensor ForwardRows(CausalLM& model, const Adapter& adapter, const std::vector<Row>& rows) {
  const int64_t p = adapter.virtual_tokens();
  const bool prefix = !adapter.prefix_keys.empty();
  int64_t max_len = 0;
  for (const Row& r : rows) max_len = std::max<int64_t>(max_len, r.ids.size());
  std::unique_ptr<KvCache> cache = model.NewCache(static_cast<int>(rows.size()), p + max_len);
  ForwardBatch batch;
  batch.all_logits = true;
  for (size_t i = 0; i < rows.size(); ++i) {
    std::vector<int32_t> tokens = rows[i].ids;
    int virtual_rows = 0;
    if (prefix) {
      PrefillPrefix(*cache, static_cast<int>(i), adapter);
    } else {
      tokens.insert(tokens.begin(), p, 0);
      virtual_rows = static_cast<int>(p);
    }
    batch.slots.push_back(static_cast<int>(i));
    batch.past_lens.push_back(prefix ? p : 0);
    batch.tokens.push_back(std::move(tokens));
    batch.adapters.push_back(&adapter);
    batch.virtual_tokens.push_back(virtual_rows);
  }
  return model.Forward(batch, *cache);
}

// HF's causal-LM loss: the mean cross entropy over every label position.
at::Tensor Loss(const at::Tensor& logits, const std::vector<Row>& rows) {
  at::Tensor total = at::zeros({}, logits.options());
  int64_t offset = 0, count = 0;
  for (const Row& r : rows) {
    const int64_t n = static_cast<int64_t>(r.ids.size());
    at::Tensor x = logits.narrow(0, offset + r.loss_begin - 1, n - r.loss_begin);
    std::vector<int64_t> target(r.ids.begin() + r.loss_begin, r.ids.end());
    at::Tensor t = at::tensor(target, at::kLong).unsqueeze(1);
    total = total - at::log_softmax(x, -1).gather(1, t).sum();
    offset += n;
    count += n - r.loss_begin;
  }
  return total / static_cast<double>(count);
}

std::string TempDir(const std::string& tag) {
  std::string dir = absl::StrCat(::testing::TempDir(), "/prompt_trainables_", getpid(), "_", tag);
  EXPECT_EQ(std::system(absl::StrCat("rm -rf '", dir, "' && mkdir -p '", dir, "'").c_str()), 0);
  return dir;
}

class PromptTrainableParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    c_ = LoadCase(GetParam());
    ASSERT_NE(c_, nullptr);
  }
  std::unique_ptr<Case> c_;
};

TEST_P(PromptTrainableParityTest, StartsFromTheGivenWeightsUnderPeftNames) {
  auto t = c_->Make();
  ASSERT_TRUE(t.ok()) << t.status();
  std::vector<NamedParameter> params = (*t)->parameters();
  ASSERT_EQ(params.size(), c_->init.size());
  for (const NamedParameter& p : params) {
    ASSERT_EQ(c_->init.count(p.name), 1u) << p.name;
    EXPECT_TRUE(p.tensor.requires_grad() && p.tensor.is_leaf()) << p.name;
    EXPECT_EQ(p.tensor.scalar_type(), at::kFloat);
    EXPECT_TRUE(at::equal(p.tensor, c_->init[p.name])) << p.name;
    const bool decays = p.name.find("bias") == std::string::npos && p.name != "embedding.weight";
    EXPECT_EQ(p.weight_decay, decays) << p.name;
  }
  EXPECT_EQ((*t)->virtual_tokens(), c_->reference["config"]["num_virtual_tokens"].get<int>());
}

TEST_P(PromptTrainableParityTest, LossAndGradientsMatchPeft) {
  auto t = c_->Make();
  ASSERT_TRUE(t.ok()) << t.status();
  std::shared_ptr<const Adapter> adapter = (*t)->Build(/*training=*/true);
  at::Tensor logits = ForwardRows(*c_->model, *adapter, c_->rows);
  int64_t offset = 0;
  for (size_t i = 0; i < c_->rows.size(); ++i) {
    const int64_t n = static_cast<int64_t>(c_->rows[i].ids.size());
    const double diff =
        MaxAbsDiff(logits.narrow(0, offset, n), c_->expected[absl::StrCat("logits.", i)]);
    EXPECT_LT(diff, 1e-4) << "logits of row " << i;
    offset += n;
  }
  at::Tensor loss = Loss(logits, c_->rows);
  const double want = c_->expected["loss"].item<double>();
  std::cout << c_->name << ": loss " << loss.item<double>() << " vs PEFT " << want << " (diff "
            << std::abs(loss.item<double>() - want) << ")\n";
  EXPECT_NEAR(loss.item<double>(), want, 1e-5);

  loss.backward();
  for (const NamedParameter& p : (*t)->parameters()) {
    ASSERT_TRUE(p.tensor.grad().defined()) << p.name << " got no gradient";
    const at::Tensor& ref = c_->expected["grad." + p.name];
    ASSERT_EQ(p.tensor.grad().sizes(), ref.sizes()) << p.name;
    ASSERT_GT(ref.abs().max().item<double>(), 0.0) << p.name << ": the reference gradient is zero";
    const double ratio = CloseRatio(p.tensor.grad(), ref, 1e-4, 1e-7);
    std::cout << "  grad " << p.name << ": max |diff| " << MaxAbsDiff(p.tensor.grad(), ref)
              << ", max |ref| " << ref.abs().max().item<double>() << ", allclose ratio " << ratio
              << "\n";
    EXPECT_LE(ratio, 1.0) << p.name;
  }
}

// One step of the training loop's AdamW (engine/training/optim.h) with the
// reference's settings (reference.json "optimizer": weight_decay 0, no
// clipping), so that this test compares the loop's own update with PEFT's.
void AdamWStep(std::vector<NamedParameter>& params, const json& opt) {
  AdamW(params, AdamWOptions{opt["betas"][0], opt["betas"][1], opt["eps"], 0.0}).Step(opt["lr"]);
}

TEST_P(PromptTrainableParityTest, WeightsAfterOneAdamWStepMatchPeft) {
  auto t = c_->Make();
  ASSERT_TRUE(t.ok()) << t.status();
  Loss(ForwardRows(*c_->model, *(*t)->Build(true), c_->rows), c_->rows).backward();
  std::vector<NamedParameter> params = (*t)->parameters();
  AdamWStep(params, c_->reference["optimizer"]);
  for (const NamedParameter& p : params) {
    const at::Tensor& ref = c_->expected["step." + p.name];
    // Relative to the tensor: Adam's first step is lr * g / (|g| + eps), so
    // an element whose gradient is near eps (1e-8) moves by a different
    // amount for gradient differences far below the parity of the gradients;
    // elementwise closeness is not a meaningful bound there.
    const double rel = (p.tensor.detach() - ref).norm().item<double>() / ref.norm().item<double>();
    std::cout << "  step " << p.name << ": max |diff| " << MaxAbsDiff(p.tensor, ref)
              << ", |diff| / |ref| " << rel << "\n";
    EXPECT_LE(rel, 1e-5) << p.name;
    EXPECT_FALSE(at::equal(p.tensor, c_->init[p.name])) << p.name << " did not move";
  }
}

TEST_P(PromptTrainableParityTest, ExportIsPeftsFilesAndLoadsBackToTheSameLogits) {
  auto t = c_->Make();
  ASSERT_TRUE(t.ok()) << t.status();
  const std::string out = TempDir(c_->name);
  ASSERT_TRUE((*t)->Export(out).ok());

  json ours = ReadJson(out + "/adapter_config.json");
  json peft = ReadJson(c_->dir + "/peft_export/adapter_config.json");
  peft["base_model_name_or_path"] = nullptr;  // PEFT records the fixture's path.
  EXPECT_EQ(ours, peft) << "ours: " << ours.dump() << "\nPEFT: " << peft.dump();

  auto ours_w = ReadTensors(out + "/adapter_model.safetensors");
  auto peft_w = ReadTensors(c_->dir + "/peft_export/adapter_model.safetensors");
  ASSERT_EQ(ours_w.size(), 1u);
  ASSERT_EQ(ours_w.count("prompt_embeddings"), 1u);
  ASSERT_EQ(ours_w["prompt_embeddings"].sizes(), peft_w["prompt_embeddings"].sizes());
  EXPECT_LT(MaxAbsDiff(ours_w["prompt_embeddings"], peft_w["prompt_embeddings"]), 1e-6);

  const bool has_encoder = c_->init.size() > 1;
  EXPECT_EQ(std::ifstream(absl::StrCat(out, "/", kPTuningEncoderFile)).good(), has_encoder);
  if (has_encoder) {
    auto encoder = ReadTensors(absl::StrCat(out, "/", kPTuningEncoderFile));
    ASSERT_EQ(encoder.size(), c_->init.size());
    for (const auto& [name, value] : c_->init) EXPECT_TRUE(at::equal(encoder[name], value)) << name;
  }

  auto loaded = LoadAdapter("reloaded", out, *c_->model);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  at::NoGradGuard no_grad;
  at::Tensor built = ForwardRows(*c_->model, *(*t)->Build(false), c_->rows);
  at::Tensor reloaded = ForwardRows(*c_->model, **loaded, c_->rows);
  EXPECT_LT(MaxAbsDiff(built, reloaded), 1e-6);

  // Training continues from the export: the same parameters.
  TrainingSpec again = c_->spec;
  again.init_adapter_dir = out;
  TrainContext ctx{c_->model.get(), c_->tokenizer.get(), &again};
  auto resumed = c_->spec.method == TrainingMethod::kPrefixTuning ? MakePrefixTrainable(ctx)
                 : c_->spec.method == TrainingMethod::kPTuning    ? MakePTuningTrainable(ctx)
                                                                  : MakePromptTuningTrainable(ctx);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  std::vector<NamedParameter> a = (*t)->parameters(), b = (*resumed)->parameters();
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(a[i].name, b[i].name);
    EXPECT_TRUE(at::equal(a[i].tensor, b[i].tensor)) << a[i].name;
  }
  EXPECT_EQ(std::system(absl::StrCat("rm -rf '", out, "'").c_str()), 0);
}

// Negative control for the logits check above: the same adapter with its
// prefix keys and values swapped, or its prompt rows rotated, is far from PEFT.
TEST_P(PromptTrainableParityTest, NegativeControlAMisplacedAdapterIsFarFromPeft) {
  auto t = c_->Make();
  ASSERT_TRUE(t.ok()) << t.status();
  at::NoGradGuard no_grad;
  Adapter wrong = *(*t)->Build(false);
  if (wrong.prefix_keys.empty()) {
    wrong.prompt = wrong.prompt.roll(1, 0);
  } else {
    std::swap(wrong.prefix_keys, wrong.prefix_values);
  }
  at::Tensor logits = ForwardRows(*c_->model, wrong, c_->rows);
  EXPECT_GT(MaxAbsDiff(logits.narrow(0, 0, c_->rows[0].ids.size()), c_->expected["logits.0"]),
            1e-3);
}

TEST_P(PromptTrainableParityTest, FreshInitIsSeededAndShapedLikePeft) {
  c_->spec.init_adapter_dir.clear();
  c_->spec.hyper.seed = 7;
  auto a = c_->Make();
  auto b = c_->Make();
  c_->spec.hyper.seed = 8;
  auto other = c_->Make();
  ASSERT_TRUE(a.ok() && b.ok() && other.ok()) << a.status();
  std::vector<NamedParameter> pa = (*a)->parameters(), pb = (*b)->parameters(),
                              po = (*other)->parameters();
  ASSERT_EQ(pa.size(), c_->init.size());
  for (size_t i = 0; i < pa.size(); ++i) {
    const at::Tensor& peft = c_->init[pa[i].name];
    ASSERT_TRUE(peft.defined()) << pa[i].name;
    EXPECT_EQ(pa[i].tensor.sizes(), peft.sizes()) << pa[i].name;
    EXPECT_TRUE(at::equal(pa[i].tensor, pb[i].tensor)) << pa[i].name;
    EXPECT_FALSE(at::equal(pa[i].tensor, po[i].tensor)) << pa[i].name;
    // The same distribution as PEFT's default init: N(0, 1) embeddings,
    // U(±bound) Linear/LSTM tensors whose bound PEFT's values respect.
    const double bound = peft.abs().max().item<double>();
    if (pa[i].name == "embedding.weight") {
      EXPECT_GT(pa[i].tensor.abs().max().item<double>(), 1.0) << "not N(0, 1)";
    } else {
      EXPECT_LE(pa[i].tensor.abs().max().item<double>(), bound * 1.25 + 1e-6) << pa[i].name;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Cases, PromptTrainableParityTest,
                         ::testing::Values("prefix_projection_llama", "prefix_gpt2",
                                           "p_tuning_mlp_llama", "p_tuning_lstm_llama",
                                           "prompt_tuning_gpt2", "prompt_tuning_llama"));

class PromptTrainableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    c_ = LoadCase("prompt_tuning_llama");
    ASSERT_NE(c_, nullptr);
    c_->spec.init_adapter_dir.clear();
  }
  std::unique_ptr<Case> c_;
};

TEST_F(PromptTrainableTest, TextInitTakesTheTextsEmbeddingsRepeatedAsPeftDoes) {
  const std::string dir = absl::StrCat(FixturesDir(), "/training_prompt/prompt_tuning_text");
  json text = ReadJson(dir + "/text_init.json");
  c_->spec.prompt_tuning.init = "TEXT";
  c_->spec.prompt_tuning.init_text = text["init_text"].get<std::string>();
  c_->spec.prompt_tuning.num_virtual_tokens = text["num_virtual_tokens"].get<int>();
  EXPECT_EQ(c_->tokenizer->Encode(c_->spec.prompt_tuning.init_text, true),
            text["ids"].get<std::vector<int32_t>>());
  auto t = c_->Make();
  ASSERT_TRUE(t.ok()) << t.status();
  at::Tensor rows = ReadTensors(dir + "/reference.safetensors")["rows"];
  EXPECT_TRUE(at::equal((*t)->parameters()[0].tensor, rows));

  c_->spec.prompt_tuning.init_text.clear();
  t = c_->Make();
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PromptTrainableTest, SampleVocabInitTakesRowsOfTheEmbeddingMatrix) {
  c_->spec.prompt_tuning.init = "SAMPLE_VOCAB";
  auto t = c_->Make();
  ASSERT_TRUE(t.ok()) << t.status();
  const at::Tensor& words = c_->model->input_embeddings();
  at::Tensor rows = (*t)->parameters()[0].tensor.detach();
  for (int64_t i = 0; i < rows.size(0); ++i) {
    at::Tensor dist = (words.to(at::kFloat) - rows[i]).abs().amax(1);
    EXPECT_EQ(dist.min().item<double>(), 0.0) << "row " << i << " is not a vocabulary row";
  }
}

TEST_F(PromptTrainableTest, BadConfigsAreInvalidArgument) {
  TrainingSpec spec = c_->spec;
  TrainContext ctx{c_->model.get(), c_->tokenizer.get(), &spec};
  spec.prompt_tuning.init = "ZEROS";
  EXPECT_THAT(MakePromptTuningTrainable(ctx).status().message(), HasSubstr("ZEROS"));
  spec.p_tuning.encoder_type = "GRU";
  EXPECT_EQ(MakePTuningTrainable(ctx).status().code(), absl::StatusCode::kInvalidArgument);
  spec.p_tuning.encoder_type = "LSTM";
  spec.p_tuning.encoder_num_layers = 0;
  EXPECT_EQ(MakePTuningTrainable(ctx).status().code(), absl::StatusCode::kInvalidArgument);
  spec.prefix.num_virtual_tokens = 0;
  EXPECT_EQ(MakePrefixTrainable(ctx).status().code(), absl::StatusCode::kInvalidArgument);
  spec.prefix.num_virtual_tokens = spec.hyper.max_seq_length;
  EXPECT_THAT(MakePrefixTrainable(ctx).status().message(), HasSubstr("leaves no room"));
}

TEST_F(PromptTrainableTest, PTuningCannotContinueFromPeftFilesAlone) {
  // PEFT keeps only the encoder's output; without adapterd's encoder
  // checkpoint the MLP cannot be restored.
  const std::string src =
      absl::StrCat(FixturesDir(), "/training_prompt/p_tuning_mlp_llama/peft_export");
  const std::string dir = TempDir("peft_only");
  ASSERT_EQ(std::system(absl::StrCat("cp '", src, "/adapter_config.json' '", src,
                                     "/adapter_model.safetensors' '", dir, "/'")
                            .c_str()),
            0);
  TrainingSpec spec;
  spec.method = TrainingMethod::kPTuning;
  spec.p_tuning.num_virtual_tokens = 3;
  spec.p_tuning.encoder_hidden_size = 16;
  spec.init_adapter_dir = dir;
  TrainContext ctx{c_->model.get(), c_->tokenizer.get(), &spec};
  auto t = MakePTuningTrainable(ctx);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(t.status().message(), HasSubstr(kPTuningEncoderFile));
  // A prefix adapter's directory is not a P-tuning start either.
  spec.init_adapter_dir =
      absl::StrCat(FixturesDir(), "/training_prompt/prefix_projection_llama/peft_export");
  EXPECT_THAT(MakePTuningTrainable(ctx).status().message(), HasSubstr("PREFIX_TUNING"));
  EXPECT_EQ(std::system(absl::StrCat("rm -rf '", dir, "'").c_str()), 0);
}

}  // namespace
}  // namespace adapterd
