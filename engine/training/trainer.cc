#include "engine/training/trainer.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifdef ADAPTERD_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <chrono>
#include <cmath>
#include <limits>
#include <optional>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/model/causal_lm.h"
#include "engine/model/model_config.h"
#include "engine/peft/adapter.h"
#include "engine/peft/batch_adapters.h"
#include "engine/runtime/kv_cache.h"
#include "engine/training/checkpoint.h"
#include "engine/training/dataset.h"
#include "engine/training/optim.h"

namespace adapterd {

const char* TrainingMethodName(TrainingMethod method) {
  switch (method) {
    case TrainingMethod::kLora: return "lora";
    case TrainingMethod::kBottleneck: return "bottleneck";
    case TrainingMethod::kFusion: return "fusion";
    case TrainingMethod::kPrefixTuning: return "prefix_tuning";
    case TrainingMethod::kPTuning: return "p_tuning";
    case TrainingMethod::kPromptTuning: return "prompt_tuning";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeTrainable(const TrainContext& ctx) {
  switch (ctx.spec->method) {
    case TrainingMethod::kLora: return MakeLoraTrainable(ctx);
    case TrainingMethod::kBottleneck: return MakeBottleneckTrainable(ctx);
    case TrainingMethod::kFusion: return MakeFusionTrainable(ctx);
    case TrainingMethod::kPrefixTuning: return MakePrefixTrainable(ctx);
    case TrainingMethod::kPTuning: return MakePTuningTrainable(ctx);
    case TrainingMethod::kPromptTuning: return MakePromptTuningTrainable(ctx);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown training method ", static_cast<int>(ctx.spec->method)));
}

namespace {

absl::Status CheckHyperparams(const TrainingSpec& spec, int64_t context_length) {
  const TrainingHyperparams& h = spec.hyper;
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (spec.dataset_path.empty()) return bad("dataset_path is empty");
  if (h.max_steps < 0) return bad("max_steps must be >= 0, got ", h.max_steps);
  if (h.max_steps == 0 && (h.epochs < 1 || h.epochs > 10000)) {
    return bad("epochs must be in [1, 10000], got ", h.epochs);
  }
  if (h.batch_size < 1 || h.batch_size > 1024) return bad("batch_size must be in [1, 1024], got ", h.batch_size);
  if (h.gradient_accumulation < 1 || h.gradient_accumulation > 1024) {
    return bad("gradient_accumulation must be in [1, 1024], got ", h.gradient_accumulation);
  }
  if (!(h.learning_rate > 0 && h.learning_rate <= 1)) {
    return bad("learning_rate must be in (0, 1], got ", h.learning_rate);
  }
  RETURN_IF_ERROR(CheckScheduler(h.lr_scheduler));
  if (h.warmup_steps < 0) return bad("warmup_steps must be >= 0");
  if (!(h.warmup_ratio >= 0 && h.warmup_ratio < 1)) return bad("warmup_ratio must be in [0, 1)");
  if (!(h.weight_decay >= 0 && h.weight_decay < 1)) return bad("weight_decay must be in [0, 1)");
  if (!(h.adam_beta1 >= 0 && h.adam_beta1 < 1) || !(h.adam_beta2 >= 0 && h.adam_beta2 < 1)) {
    return bad("adam betas must be in [0, 1)");
  }
  if (!(h.adam_epsilon > 0 && h.adam_epsilon < 1)) return bad("adam_epsilon must be in (0, 1)");
  if (!(h.max_grad_norm >= 0) || !std::isfinite(h.max_grad_norm)) {
    return bad("max_grad_norm must be >= 0 (0: no clipping)");
  }
  if (h.max_seq_length < 2 || (context_length > 0 && h.max_seq_length > context_length)) {
    return bad("max_seq_length must be in [2, ", context_length, "], got ", h.max_seq_length);
  }
  if (!(h.eval_fraction >= 0 && h.eval_fraction <= 0.5)) return bad("eval_fraction must be in [0, 0.5]");
  if (h.eval_every < 0) return bad("eval_every must be >= 0");
  if (h.checkpoint_every < 0) return bad("checkpoint_every must be >= 0");
  if (spec.memory_budget_bytes < 0) return bad("memory_budget_bytes must be >= 0");
  return absl::OkStatus();
}

int64_t CountParameters(TrainableAdapter& trainable) {
  int64_t n = 0;
  for (const NamedParameter& p : trainable.parameters()) n += p.tensor.numel();
  return n;
}

// Builds the trainable and checks what does not need the data.
absl::StatusOr<std::unique_ptr<TrainableAdapter>> Prepare(const TrainContext& ctx,
                                                          const TrainerOptions& options) {
  RETURN_IF_ERROR(CheckHyperparams(*ctx.spec, options.context_length));
  ASSIGN_OR_RETURN(std::unique_ptr<TrainableAdapter> trainable, MakeTrainable(ctx));
  const int64_t v = trainable->virtual_tokens();
  if (options.context_length > 0 && ctx.spec->hyper.max_seq_length + v > options.context_length) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_seq_length ", ctx.spec->hyper.max_seq_length, " + ", v,
                     " virtual tokens exceed the context length ", options.context_length));
  }
  const int64_t budget =
      ctx.spec->memory_budget_bytes > 0 ? ctx.spec->memory_budget_bytes : options.memory_budget_bytes;
  const int64_t need =
      EstimateTrainingBytes(*ctx.spec, ctx.model->config(), v, CountParameters(*trainable));
  if (need > budget) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the job needs about ", need >> 20, " MiB of activations and optimizer state; its budget is ",
        budget >> 20, " MiB (lower batch_size or max_seq_length)"));
  }
  return trainable;
}

absl::StatusOr<TrainingDataset> ReadDataset(const TrainContext& ctx, int64_t virtual_tokens) {
  DatasetReadOptions read;
  read.policy = ctx.spec->dataset_options;
  read.max_seq_length = ctx.spec->hyper.max_seq_length;
  read.reserved_tokens = static_cast<int>(virtual_tokens);
  read.eval_fraction = ctx.spec->hyper.eval_fraction;
  read.seed = ctx.spec->hyper.seed;
  return ReadTrainingDataset(ctx.spec->dataset_path, *ctx.tokenizer, read);
}

// The order of the training rows in `epoch`: a pure function of (seed, epoch),
// so that a resumed job sees the same data.
std::vector<int64_t> EpochOrder(int64_t rows, uint64_t seed, int epoch, bool shuffle) {
  std::vector<int64_t> order(rows);
  for (int64_t i = 0; i < rows; ++i) order[i] = i;
  if (!shuffle) return order;
  std::mt19937_64 rng(seed * 1000003ULL + static_cast<uint64_t>(epoch));
  for (int64_t i = rows - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[i], order[j]);
  }
  return order;
}

int64_t LabelTokens(const TrainingRow& row) {
  return static_cast<int64_t>(row.ids.size()) - row.loss_begin;
}

// Summed token cross-entropy of `rows` under `adapter`, with the batch laid
// out as serving lays it out (engine/runtime/torch_engine.cc AddRow).
at::Tensor SummedLoss(CausalLM& model, const Adapter& adapter,
                      const std::vector<const TrainingRow*>& rows) {
  const int64_t p = adapter.virtual_tokens();
  const bool prefix = p > 0 && !adapter.prompt.defined();
  int64_t longest = 0;
  for (const TrainingRow* r : rows) longest = std::max<int64_t>(longest, r->ids.size());
  std::unique_ptr<KvCache> cache = model.NewCache(static_cast<int>(rows.size()), longest + p);
  ForwardBatch batch;
  batch.all_logits = true;
  std::vector<int64_t> logit_rows, targets;
  int64_t offset = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const TrainingRow& r = *rows[i];
    batch.slots.push_back(static_cast<int>(i));
    batch.adapters.push_back(&adapter);
    std::vector<int32_t> tokens = r.ids;
    int virtual_rows = 0;
    int64_t past = 0;
    if (prefix) {
      PrefillPrefix(*cache, static_cast<int>(i), adapter);
      past = p;
    } else if (p > 0) {
      tokens.insert(tokens.begin(), p, 0);
      virtual_rows = static_cast<int>(p);
    }
    batch.past_lens.push_back(past);
    batch.tokens.push_back(std::move(tokens));
    batch.virtual_tokens.push_back(virtual_rows);
    // Logit row j (a real token) predicts token j + 1.
    for (int64_t j = r.loss_begin; j < static_cast<int64_t>(r.ids.size()); ++j) {
      logit_rows.push_back(offset + j - 1);
      targets.push_back(r.ids[j]);
    }
    offset += static_cast<int64_t>(r.ids.size());
  }
  at::Tensor logits = model.Forward(batch, *cache);
  const at::Device device = logits.device();
  at::Tensor index = at::tensor(logit_rows, at::kLong).to(device);
  at::Tensor target = at::tensor(targets, at::kLong).to(device);
  return at::cross_entropy_loss(logits.index_select(0, index), target, {}, at::Reduction::Sum);
}

// Mean token loss over `rows`, without gradients.
double EvalLoss(CausalLM& model, TrainableAdapter& trainable, const std::vector<TrainingRow>& rows,
                int batch_size) {
  c10::NoGradGuard no_grad;
  std::shared_ptr<const Adapter> adapter = trainable.Build(/*training=*/false);
  double sum = 0;
  int64_t tokens = 0;
  for (size_t b = 0; b < rows.size(); b += batch_size) {
    std::vector<const TrainingRow*> batch;
    for (size_t i = b; i < std::min(rows.size(), b + batch_size); ++i) {
      batch.push_back(&rows[i]);
      tokens += LabelTokens(rows[i]);
    }
    sum += SummedLoss(model, *adapter, batch).item<double>();
  }
  return tokens > 0 ? sum / static_cast<double>(tokens) : std::nan("");
}

// Lowers the calling thread's scheduling priority for the job's lifetime
// (best effort: restoring it may need privileges the server lacks).
class LowPriority {
 public:
  LowPriority() : tid_(static_cast<id_t>(::syscall(SYS_gettid))) {
    errno = 0;
    const int old = ::getpriority(PRIO_PROCESS, tid_);
    if (errno == 0) {
      old_ = old;
      ::setpriority(PRIO_PROCESS, tid_, std::min(19, old + 10));
    }
  }
  ~LowPriority() {
    if (old_.has_value()) ::setpriority(PRIO_PROCESS, tid_, *old_);
  }

 private:
  id_t tid_;
  std::optional<int> old_;
};

absl::Status Cancelled(int64_t step) {
  return absl::CancelledError(absl::StrCat("training cancelled at step ", step));
}

absl::StatusOr<TrainingResult> Run(const TrainContext& ctx, const TrainingProgressCallback& progress,
                                   const CancellationToken& cancel, const TrainerOptions& options) {
  const TrainingSpec& spec = *ctx.spec;
  const TrainingHyperparams& h = spec.hyper;
  if (spec.work_dir.empty() || !IsDirectory(spec.work_dir)) {
    return absl::InvalidArgumentError(
        absl::StrCat("work_dir \"", spec.work_dir, "\" is not an existing directory"));
  }
  TrainingProgress state;
  auto report = [&](TrainingPhase phase) {
    state.phase = phase;
    if (progress) progress(state);
  };
  report(TrainingPhase::kPreparing);
  ASSIGN_OR_RETURN(std::unique_ptr<TrainableAdapter> trainable, Prepare(ctx, options));
  ASSIGN_OR_RETURN(TrainingDataset data, ReadDataset(ctx, trainable->virtual_tokens()));
  if (data.train.empty()) return absl::InvalidArgumentError("the dataset has no training rows");

  const int64_t rows = static_cast<int64_t>(data.train.size());
  const int64_t micro_per_epoch = (rows + h.batch_size - 1) / h.batch_size;
  const int64_t steps_per_epoch =
      (micro_per_epoch + h.gradient_accumulation - 1) / h.gradient_accumulation;
  const int64_t total = h.max_steps > 0 ? h.max_steps : steps_per_epoch * h.epochs;
  const int64_t warmup = WarmupSteps(h.warmup_steps, h.warmup_ratio, total);
  state.total_steps = total;

  std::vector<NamedParameter> params = trainable->parameters();
  AdamWOptions adam;
  adam.beta1 = h.adam_beta1;
  adam.beta2 = h.adam_beta2;
  adam.epsilon = h.adam_epsilon;
  adam.weight_decay = h.weight_decay;
  AdamW optimizer(params, adam);

  CheckpointState pos;
  pos.method = TrainingMethodName(spec.method);
  pos.seed = h.seed;
  if (HasCheckpoint(spec.work_dir)) {
    ASSIGN_OR_RETURN(CheckpointState saved, LoadCheckpoint(spec.work_dir, optimizer));
    if (saved.method != pos.method || saved.seed != pos.seed) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the checkpoint in ", spec.work_dir, " is of another job (method ", saved.method,
          ", seed ", saved.seed, ")"));
    }
    pos = saved;
    state.resumed_from_step = pos.step;
  }
  state.step = pos.step;
  state.tokens_seen = pos.tokens_seen;

  std::vector<int64_t> order = EpochOrder(rows, h.seed, pos.epoch, h.shuffle);
  const auto start = std::chrono::steady_clock::now();
  const int64_t start_step = pos.step;
  int64_t run_tokens = 0;
  double last_loss = std::nan("");
  auto evaluate = [&]() {
    if (data.eval.empty()) return;
    report(TrainingPhase::kEvaluating);
    state.eval_loss = EvalLoss(*ctx.model, *trainable, data.eval, h.batch_size);
  };

  while (pos.step < total) {
    if (pos.position >= rows) {
      ++pos.epoch;
      pos.position = 0;
      order = EpochOrder(rows, h.seed, pos.epoch, h.shuffle);
    }
    // The step's micro-batches, within the epoch (its last step may be short).
    std::vector<std::vector<const TrainingRow*>> micro;
    int64_t label_tokens = 0, step_tokens = 0;
    int64_t cursor = pos.position;
    for (int k = 0; k < h.gradient_accumulation && cursor < rows; ++k) {
      std::vector<const TrainingRow*> batch;
      for (int64_t i = cursor; i < std::min(rows, cursor + h.batch_size); ++i) {
        const TrainingRow& r = data.train[order[i]];
        batch.push_back(&r);
        label_tokens += LabelTokens(r);
        step_tokens += static_cast<int64_t>(r.ids.size());
      }
      cursor += static_cast<int64_t>(batch.size());
      micro.push_back(std::move(batch));
    }
    double loss_sum = 0;
    for (const auto& batch : micro) {
      if (cancel.cancelled()) return Cancelled(pos.step);
      // Serving first: a short pause lets the engine thread take the cores.
      if (options.serving_busy && options.serving_busy()) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      std::shared_ptr<const Adapter> adapter = trainable->Build(/*training=*/true);
      at::Tensor loss = SummedLoss(*ctx.model, *adapter, batch);
      loss_sum += loss.item<double>();
      (loss / static_cast<double>(label_tokens)).backward();
    }
    at::Tensor extra = trainable->ExtraLoss();
    if (extra.defined()) extra.backward();
    for (const NamedParameter& p : params) {
      if (p.tensor.grad().defined() && !at::isfinite(p.tensor.grad()).all().item<bool>()) {
        return absl::InternalError(absl::StrCat("non-finite gradient of ", p.name, " at step ",
                                                pos.step + 1));
      }
    }
    ClipGradNorm(params, h.max_grad_norm);
    const double lr = h.learning_rate * LearningRateFactor(h.lr_scheduler, pos.step, warmup, total);
    optimizer.Step(lr);
    for (NamedParameter& p : params) p.tensor.mutable_grad().reset();
    ++pos.step;
    pos.position = cursor;
    pos.tokens_seen += step_tokens;
    run_tokens += step_tokens;
    last_loss = loss_sum / static_cast<double>(label_tokens);

    const double elapsed =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    state.step = pos.step;
    state.epoch = pos.epoch;
    state.loss = last_loss;
    state.learning_rate = lr;
    state.tokens_seen = pos.tokens_seen;
    state.tokens_per_second = elapsed > 0 ? static_cast<double>(run_tokens) / elapsed : 0.0;
    state.eta_seconds =
        elapsed / static_cast<double>(pos.step - start_step) * static_cast<double>(total - pos.step);
    report(TrainingPhase::kTraining);
    if (h.eval_every > 0 && pos.step % h.eval_every == 0 && pos.step < total) evaluate();
    if (h.checkpoint_every > 0 && pos.step % h.checkpoint_every == 0 && pos.step < total) {
      RETURN_IF_ERROR(SaveCheckpoint(spec.work_dir, optimizer, pos));
    }
  }
  evaluate();

  report(TrainingPhase::kSaving);
  const std::string output = spec.work_dir + "/output";
  const std::string tmp = output + ".tmp";
  RETURN_IF_ERROR(RemoveTree(tmp));
  if (::mkdir(tmp.c_str(), 0755) != 0) {
    return absl::InternalError(absl::StrCat("cannot create ", tmp));
  }
  RETURN_IF_ERROR(trainable->Export(tmp));
  RETURN_IF_ERROR(SyncDir(tmp));
  RETURN_IF_ERROR(RemoveTree(output));
  if (::rename(tmp.c_str(), output.c_str()) != 0) {
    return absl::InternalError(absl::StrCat("cannot rename ", tmp, " to ", output));
  }
  RETURN_IF_ERROR(SyncDir(spec.work_dir));
  RETURN_IF_ERROR(RemoveCheckpoint(spec.work_dir));

  TrainingResult result;
  result.output_dir = output;
  result.method = TrainingMethodName(spec.method);
  result.steps = pos.step;
  result.final_loss = last_loss;
  result.eval_loss = state.eval_loss;
  result.trainable_parameters = CountParameters(*trainable);
  result.dataset = data.report;
  result.resumed_from_step = state.resumed_from_step;
  return result;
}

}  // namespace

int64_t EstimateTrainingBytes(const TrainingSpec& spec, const ModelConfig& c, int64_t virtual_tokens,
                              int64_t trainable_parameters) {
  const double b = spec.hyper.batch_size;
  const double s = static_cast<double>(spec.hyper.max_seq_length + virtual_tokens);
  const double l = static_cast<double>(c.num_layers);
  const double activations =
      b * s * (l * (16.0 * c.hidden_size + 3.0 * c.intermediate_size) + 2.0 * c.vocab_size) * 4 +
      2.0 * b * l * c.num_heads * s * s * 4;
  const double optimizer = 4.0 * static_cast<double>(trainable_parameters) * 4;
  const double total = activations + optimizer;
  return total > 9e18 ? std::numeric_limits<int64_t>::max() : static_cast<int64_t>(total);
}

absl::StatusOr<DatasetReport> ValidateTrainingJob(const TrainContext& ctx,
                                                  const TrainerOptions& options) {
  try {
    ASSIGN_OR_RETURN(std::unique_ptr<TrainableAdapter> trainable, Prepare(ctx, options));
    ASSIGN_OR_RETURN(TrainingDataset data, ReadDataset(ctx, trainable->virtual_tokens()));
    return data.report;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training validation failed: ", e.what()));
  }
}

absl::StatusOr<TrainingResult> RunTraining(const TrainContext& ctx,
                                           const TrainingProgressCallback& progress,
                                           const CancellationToken& cancel,
                                           const TrainerOptions& options) {
  LowPriority low_priority;
  try {
#ifdef ADAPTERD_WITH_CUDA
    // Training kernels queue on a pool stream of their own, never ahead of
    // the engine thread's serving work on the current stream.
    std::optional<c10::cuda::CUDAStreamGuard> stream_guard;
    if (ctx.model->device().is_cuda()) {
      stream_guard.emplace(
          c10::cuda::getStreamFromPool(/*isHighPriority=*/false, ctx.model->device().index()));
    }
#endif
    c10::AutoGradMode grad(true);
    return Run(ctx, progress, cancel, options);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("training failed: ", e.what()));
  }
}

}  // namespace adapterd
