#pragma once

// Fine-tuning on the served base model: plain C++ types only (no torch, no
// protobuf). The server's job runner (server/training_*) drives a job through
// Engine::Train (engine/api/engine.h); engine/training implements it.
//
// A job trains one adapter of one method on the frozen, shared base weights
// (never copied, never modified) with libtorch autograd, and writes the
// result in the ecosystem format (HF PEFT or AdapterHub) into
// `TrainingSpec::work_dir + "/output"`, ready for the adapter store.

#include <cstdint>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace adapterd {

enum class TrainingMethod {
  kLora = 0,
  kBottleneck = 1,    // AdapterHub bottleneck adapter, Houlsby or Pfeiffer.
  kFusion = 2,        // AdapterFusion over existing Pfeiffer bottleneck adapters.
  kPrefixTuning = 3,  // PEFT PREFIX_TUNING (optionally with the MLP reparameterisation).
  kPTuning = 4,       // PEFT P_TUNING (MLP or LSTM prompt encoder).
  kPromptTuning = 5,  // PEFT PROMPT_TUNING (random or text init).
};

// "lora", "bottleneck", "fusion", "prefix_tuning", "p_tuning", "prompt_tuning"
// (the method names AdapterInfo::method uses).
const char* TrainingMethodName(TrainingMethod method);

struct LoraTrainConfig {
  // Module names relative to a block, as PEFT's target_modules matches them
  // by suffix: "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
  // "down_proj" (Llama) or "c_attn", "c_proj", "c_fc" (GPT-2); "all-linear".
  std::vector<std::string> target_modules = {"q_proj", "v_proj"};
  int rank = 8;
  double alpha = 16;
  double dropout = 0.0;  // On the LoRA branch's input, training only.
  bool use_rslora = false;  // scaling alpha/sqrt(r) instead of alpha/r.
};

struct BottleneckTrainConfig {
  std::string config = "pfeiffer";  // "pfeiffer" (FFN output site) or "houlsby" (both sites).
  int reduction_factor = 16;        // Bottleneck width = hidden / reduction_factor.
  std::string activation;           // Empty: the preset's (pfeiffer relu, houlsby swish).
  std::string init_weights = "bert";  // "bert", "houlsby" or "mam_adapter" (AdapterHub's).
};

// One adapter to fuse, resolved by the server through the store.
struct FusionChild {
  std::string name;  // The subdirectory name in the output (an adapter name, no version).
  std::string dir;   // Its AdapterHub files.
  std::shared_ptr<const void> pin;  // Keeps `dir` on disk while the job runs.
};

struct FusionTrainConfig {
  // The Pfeiffer bottleneck adapters to fuse (two or more); frozen during
  // training. The output directory holds copies of them as the AdapterHub
  // fusion layout requires (output/<name>/adapter_config.json, ...).
  std::vector<FusionChild> children;
};

struct PrefixTrainConfig {
  int num_virtual_tokens = 20;
  bool prefix_projection = true;  // Train through Embedding → Linear → Tanh → Linear.
  int encoder_hidden_size = 0;    // 0: PEFT's default, token_dim (the KV width H_kv * head_dim).
};

struct PTuningTrainConfig {
  int num_virtual_tokens = 20;
  std::string encoder_type = "MLP";  // "MLP" or "LSTM".
  int encoder_hidden_size = 0;       // 0: the model's hidden size.
  int encoder_num_layers = 2;        // LSTM layers.
  double encoder_dropout = 0.0;
};

struct PromptTuningTrainConfig {
  int num_virtual_tokens = 20;
  std::string init = "RANDOM";  // "RANDOM", "SAMPLE_VOCAB" or "TEXT".
  std::string init_text;        // Required for TEXT.
};

struct TrainingHyperparams {
  int epochs = 1;
  int64_t max_steps = 0;  // > 0: stop after this many optimizer steps (overrides epochs).
  int batch_size = 8;     // Rows per micro-batch.
  int gradient_accumulation = 1;  // Micro-batches per optimizer step.
  double learning_rate = 1e-4;
  std::string lr_scheduler = "linear";  // "constant", "linear" or "cosine" (transformers').
  int64_t warmup_steps = 0;
  double warmup_ratio = 0.0;  // Used when warmup_steps is 0.
  double weight_decay = 0.0;  // AdamW, decoupled.
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  double max_grad_norm = 1.0;  // 0: no clipping.
  uint64_t seed = 42;          // Init, data order, dropout.
  int max_seq_length = 512;    // Tokens per row (prompt + completion).
  double eval_fraction = 0.0;  // Rows held out for eval loss, [0, 0.5].
  int64_t eval_every = 0;      // Steps between eval passes; 0: at the end only.
  int64_t checkpoint_every = 100;  // Steps between checkpoints; 0: none.
  bool shuffle = true;
};

// How a dataset file is read. JSONL, one object per line, either
// {"prompt": str, "completion": str} (loss on the completion tokens only) or
// {"text": str} (loss on every token). Blank lines are ignored.
//
// Policy (documented for users in docs/training.md):
//  - A line that is not valid UTF-8, not a JSON object, or lacks both
//    schemas' fields (or has non-string values) is malformed. By default the
//    dataset is refused with INVALID_ARGUMENT naming the first few line
//    numbers; with skip_invalid_rows those lines are skipped and counted.
//  - A row whose completion (or text) is empty is skipped and counted.
//  - A row longer than max_seq_length tokens is truncated (the prompt loses
//    tokens from its start, then the completion from its end) and counted;
//    if no completion token is left it is skipped and counted.
//  - No usable row left: INVALID_ARGUMENT.
struct DatasetOptions {
  bool skip_invalid_rows = false;
  int64_t max_rows = 1'000'000;
  int64_t max_bytes = int64_t{1} << 30;
};

struct DatasetReport {
  int64_t lines = 0;            // Non-blank lines read.
  int64_t rows_used = 0;        // Train + eval rows.
  int64_t train_rows = 0;
  int64_t eval_rows = 0;
  int64_t skipped_malformed = 0;  // Only with skip_invalid_rows.
  int64_t skipped_empty = 0;
  int64_t truncated = 0;
  int64_t skipped_too_long = 0;
  int64_t tokens = 0;  // Tokens of the rows used (prompt + completion).
  std::vector<std::string> first_errors;  // "line N: reason", at most 5.
};

struct TrainingSpec {
  std::string job_id;           // For messages and file names.
  std::string adapter_name;     // The output adapter's name (metadata only).
  TrainingMethod method = TrainingMethod::kLora;
  LoraTrainConfig lora;
  BottleneckTrainConfig bottleneck;
  FusionTrainConfig fusion;
  PrefixTrainConfig prefix;
  PTuningTrainConfig p_tuning;
  PromptTuningTrainConfig prompt_tuning;
  TrainingHyperparams hyper;
  DatasetOptions dataset_options;

  std::string dataset_path;  // JSONL on the server.
  // Optional: start from this adapter's weights instead of a fresh init (the
  // same method and shapes; for P-tuning its encoder checkpoint
  // kPTuningEncoderFile must be there too).
  std::string init_adapter_dir;
  // The job's own directory (created by the caller): checkpoints under
  // work_dir/checkpoint (replaced atomically), the result under
  // work_dir/output. A checkpoint found there is resumed from.
  std::string work_dir;
  // Bytes of activations and optimizer state the job may use; 0: the
  // engine's default. A spec that cannot fit is refused before training.
  int64_t memory_budget_bytes = 0;
};

// P-tuning's prompt encoder (MLP/LSTM) in safetensors, saved beside the
// PEFT files so that training can continue from the output.
inline constexpr char kPTuningEncoderFile[] = "prompt_encoder.safetensors";

enum class TrainingPhase { kPreparing = 0, kTraining = 1, kEvaluating = 2, kSaving = 3 };

struct TrainingProgress {
  TrainingPhase phase = TrainingPhase::kPreparing;
  int64_t step = 0;  // Optimizer steps done.
  int64_t total_steps = 0;
  int epoch = 0;     // 0-based epoch of the current step.
  double loss = std::numeric_limits<double>::quiet_NaN();  // Mean over the last step's tokens.
  double eval_loss = std::numeric_limits<double>::quiet_NaN();  // Last eval pass.
  double learning_rate = 0.0;
  double tokens_per_second = 0.0;  // Trained tokens per second, recent average.
  double eta_seconds = 0.0;
  int64_t tokens_seen = 0;
  int64_t resumed_from_step = 0;  // > 0 when resumed from a checkpoint.
};

struct TrainingResult {
  std::string output_dir;  // work_dir/output: the adapter files.
  std::string method;      // TrainingMethodName.
  int64_t steps = 0;
  double final_loss = std::numeric_limits<double>::quiet_NaN();
  double eval_loss = std::numeric_limits<double>::quiet_NaN();
  int64_t trainable_parameters = 0;
  DatasetReport dataset;
  int64_t resumed_from_step = 0;
};

using TrainingProgressCallback = std::function<void(const TrainingProgress&)>;

}  // namespace adapterd
