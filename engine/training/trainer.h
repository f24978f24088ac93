#pragma once

// The training loop: one job of engine/api/training.h on the frozen, shared
// model, through the very Forward that serving runs. Engine-internal header.
//
// Memory estimate (bytes, fp32 autograd; documented in docs/training.md):
//   activations = B · S · (L · (16·H + 3·I) + 2·V) · 4  +  2 · B · L · heads · S² · 4
//   optimizer   = 4 · P · 4     (parameter, gradient, two Adam moments)
// with B = batch_size, S = max_seq_length + virtual tokens, L layers, H hidden,
// I intermediate, V vocabulary, P trainable parameters. It is an upper-bound
// style estimate of what autograd keeps for backward, not a measurement.

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/api/engine.h"
#include "engine/api/training.h"
#include "engine/training/trainable.h"

namespace adapterd {

struct ModelConfig;

struct TrainerOptions {
  int64_t memory_budget_bytes = int64_t{4} << 30;  // When the spec gives none.
  int64_t context_length = 0;                      // The engine's max tokens per sequence.
  // true while the engine has running or queued requests: the loop then
  // yields between micro-batches. May be empty.
  std::function<bool()> serving_busy;
};

int64_t EstimateTrainingBytes(const TrainingSpec& spec, const ModelConfig& config,
                              int64_t virtual_tokens, int64_t trainable_parameters);

// Checks the spec's options against the model (hyperparameter ranges, the
// method's options and targets, memory) and reads the dataset: what
// Engine::ValidateTraining returns.
absl::StatusOr<DatasetReport> ValidateTrainingJob(const TrainContext& ctx,
                                                  const TrainerOptions& options);

// Runs the job on the calling thread (Engine::Train's contract): resumes from
// work_dir/checkpoint, trains, checkpoints, evaluates, exports to
// work_dir/output. Lowers the calling thread's priority while it runs.
absl::StatusOr<TrainingResult> RunTraining(const TrainContext& ctx,
                                           const TrainingProgressCallback& progress,
                                           const CancellationToken& cancel,
                                           const TrainerOptions& options);

}  // namespace adapterd
