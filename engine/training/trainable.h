#pragma once

// A trainable adapter of one method: its parameters (leaf tensors with
// grad) and how they become the engine's Adapter for a Forward, so that
// training runs the very code that serving runs (engine/model + engine/peft)
// and gradients flow through it. Engine-internal header (uses ATen).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "engine/api/training.h"

namespace adapterd {

class CausalLM;
class Tokenizer;
struct Adapter;

struct NamedParameter {
  std::string name;  // Stable: the optimizer state and checkpoints key on it.
  at::Tensor tensor;  // fp32 leaf on the model's device, requires_grad.
  bool weight_decay = true;  // false for biases, norms and embeddings of prompts.
};

struct TrainContext {
  CausalLM* model = nullptr;           // Frozen; never modified.
  const Tokenizer* tokenizer = nullptr;
  const TrainingSpec* spec = nullptr;
  // The job's memory budget; the Make*Trainable factories refuse a
  // configuration whose parameters alone exceed it before allocating them.
  // 0: unchecked.
  int64_t memory_budget_bytes = 0;
};

// RESOURCE_EXHAUSTED when `parameters` trainable fp32 parameters (with their
// gradients and two Adam moments: 16 bytes each) exceed
// ctx.memory_budget_bytes. A double, so that a tenant's absurd sizes cannot
// overflow the count.
absl::Status CheckParameterBudget(const TrainContext& ctx, double parameters);

class TrainableAdapter {
 public:
  virtual ~TrainableAdapter() = default;

  // The trainable leaves, in a fixed order.
  virtual std::vector<NamedParameter> parameters() = 0;

  // An Adapter whose tensors are computed from the parameters (autograd
  // flows back to them), for one Forward. `training`: dropout on.
  virtual std::shared_ptr<const Adapter> Build(bool training) = 0;

  // Leading positions each row gets (prompt rows for prompt/P-tuning, the
  // prefix length for prefix tuning); 0 for the others.
  virtual int virtual_tokens() const { return 0; }

  // A term added to the LM loss (e.g. AdapterFusion's value regulariser),
  // or an undefined tensor.
  virtual at::Tensor ExtraLoss() { return at::Tensor(); }

  // Writes the ecosystem files into the existing empty `dir`: HF PEFT
  // (adapter_config.json + adapter_model.safetensors) or AdapterHub
  // (adapter_config.json + adapter.safetensors; fusion: its own layout),
  // plus kPTuningEncoderFile where a reparameterisation encoder exists.
  virtual absl::Status Export(const std::string& dir) = 0;
};

// Per method: a fresh init from the spec's config and seed, or the weights of
// spec.init_adapter_dir. INVALID_ARGUMENT / FAILED_PRECONDITION as
// Engine::ValidateTraining.
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeLoraTrainable(const TrainContext& ctx);
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeBottleneckTrainable(const TrainContext& ctx);
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeFusionTrainable(const TrainContext& ctx);
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakePrefixTrainable(const TrainContext& ctx);
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakePTuningTrainable(const TrainContext& ctx);
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakePromptTuningTrainable(const TrainContext& ctx);

// Dispatches on spec->method.
absl::StatusOr<std::unique_ptr<TrainableAdapter>> MakeTrainable(const TrainContext& ctx);

}  // namespace adapterd
