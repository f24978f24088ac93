#pragma once

// The optimizer side of training: AdamW with torch.optim.AdamW's exact
// arithmetic, transformers' learning-rate schedules, and
// torch.nn.utils.clip_grad_norm_. Engine-internal header (uses ATen).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/training/trainable.h"

namespace adapterd {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double epsilon = 1e-8;
  double weight_decay = 0.0;  // Applied only to parameters with weight_decay set.
};

// AdamW over fp32 leaf tensors, as torch.optim.AdamW (single-tensor path,
// amsgrad off): p *= 1 - lr·wd; m = lerp(m, g, 1 - β1); v = β2·v + (1 - β2)·g²;
// p -= lr / (1 - β1^t) · m / (sqrt(v) / sqrt(1 - β2^t) + ε).
// Not thread-safe; owned by one training job.
class AdamW {
 public:
  AdamW(std::vector<NamedParameter> params, const AdamWOptions& options);

  // One update with learning rate `lr` from the parameters' .grad()
  // (a parameter without a gradient is skipped, as torch does).
  void Step(double lr);

  int64_t steps() const { return steps_; }
  const std::vector<NamedParameter>& params() const { return params_; }
  // The first and second moments, one per parameter (zeros before the first step).
  std::vector<at::Tensor>& exp_avg() { return exp_avg_; }
  std::vector<at::Tensor>& exp_avg_sq() { return exp_avg_sq_; }
  // For resuming: the moments and step count of a checkpoint.
  void set_steps(int64_t steps) { steps_ = steps; }

 private:
  std::vector<NamedParameter> params_;
  AdamWOptions options_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_;
  int64_t steps_ = 0;
};

// Scales the gradients of `params` in place so that their total L2 norm is at
// most `max_norm`, exactly as torch.nn.utils.clip_grad_norm_ (coefficient
// max_norm / (norm + 1e-6), clamped to 1, always applied). Returns the norm
// before clipping. `max_norm` <= 0: only measures.
double ClipGradNorm(const std::vector<NamedParameter>& params, double max_norm);

// transformers' get_scheduler(name, warmup, total) as a LambdaLR factor for
// optimizer step `step` (0-based: the first update uses step 0):
//   warmup: step / max(1, warmup) while step < warmup; then
//   "constant": 1 (transformers' constant_with_warmup; with no warmup, constant),
//   "linear":   max(0, (total - step) / max(1, total - warmup)),
//   "cosine":   max(0, 0.5 (1 + cos(π · (step - warmup) / max(1, total - warmup)))).
double LearningRateFactor(const std::string& scheduler, int64_t step, int64_t warmup,
                          int64_t total);

// Warmup steps of a job: warmup_steps if > 0, else ceil(warmup_ratio · total).
int64_t WarmupSteps(int64_t warmup_steps, double warmup_ratio, int64_t total);

// INVALID_ARGUMENT unless `name` is one of "constant", "linear", "cosine".
absl::Status CheckScheduler(const std::string& name);

}  // namespace adapterd
