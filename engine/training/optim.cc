#include "engine/training/optim.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <cmath>

#include "absl/strings/str_cat.h"

namespace adapterd {

AdamW::AdamW(std::vector<NamedParameter> params, const AdamWOptions& options)
    : params_(std::move(params)), options_(options) {
  for (const NamedParameter& p : params_) {
    exp_avg_.push_back(at::zeros_like(p.tensor, at::MemoryFormat::Preserve));
    exp_avg_sq_.push_back(at::zeros_like(p.tensor, at::MemoryFormat::Preserve));
  }
}

void AdamW::Step(double lr) {
  c10::NoGradGuard no_grad;
  ++steps_;
  // torch keeps the step count as a float32 tensor and reads it back with
  // .item(); for counts below 2^24 that is the same number.
  const double t = static_cast<double>(steps_);
  const double bias_correction1 = 1 - std::pow(options_.beta1, t);
  const double bias_correction2 = 1 - std::pow(options_.beta2, t);
  const double step_size = lr / bias_correction1;
  const double bias_correction2_sqrt = std::sqrt(bias_correction2);
  for (size_t i = 0; i < params_.size(); ++i) {
    at::Tensor& p = params_[i].tensor;
    const at::Tensor& grad = p.grad();
    if (!grad.defined()) continue;
    const double wd = params_[i].weight_decay ? options_.weight_decay : 0.0;
    if (wd != 0) p.mul_(1 - lr * wd);
    exp_avg_[i].lerp_(grad, 1 - options_.beta1);
    exp_avg_sq_[i].mul_(options_.beta2).addcmul_(grad, grad, 1 - options_.beta2);
    at::Tensor denom = (exp_avg_sq_[i].sqrt() / bias_correction2_sqrt).add_(options_.epsilon);
    p.addcdiv_(exp_avg_[i], denom, -step_size);
  }
}

double ClipGradNorm(const std::vector<NamedParameter>& params, double max_norm) {
  c10::NoGradGuard no_grad;
  std::vector<at::Tensor> norms;
  for (const NamedParameter& p : params) {
    if (p.tensor.grad().defined()) norms.push_back(at::linalg_vector_norm(p.tensor.grad(), 2));
  }
  if (norms.empty()) return 0.0;
  at::Tensor total = at::linalg_vector_norm(at::stack(norms), 2);
  if (max_norm > 0) {
    at::Tensor coef = at::clamp_max(max_norm / (total + 1e-6), 1.0);
    for (const NamedParameter& p : params) {
      if (p.tensor.grad().defined()) p.tensor.mutable_grad().mul_(coef);
    }
  }
  return total.item<double>();
}

double LearningRateFactor(const std::string& scheduler, int64_t step, int64_t warmup,
                          int64_t total) {
  if (step < warmup) {
    return static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, warmup));
  }
  if (scheduler == "constant") return 1.0;
  const double span = static_cast<double>(std::max<int64_t>(1, total - warmup));
  if (scheduler == "linear") {
    return std::max(0.0, static_cast<double>(total - step) / span);
  }
  const double progress = static_cast<double>(step - warmup) / span;
  // transformers: 0.5 * (1 + cos(pi * num_cycles * 2 * progress)), num_cycles 0.5.
  return std::max(0.0, 0.5 * (1.0 + std::cos(M_PI * 0.5 * 2.0 * progress)));
}

int64_t WarmupSteps(int64_t warmup_steps, double warmup_ratio, int64_t total) {
  if (warmup_steps > 0) return warmup_steps;
  return static_cast<int64_t>(std::ceil(static_cast<double>(total) * warmup_ratio));
}

absl::Status CheckScheduler(const std::string& name) {
  if (name == "constant" || name == "linear" || name == "cosine") return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown lr_scheduler \"", name, "\" (expected constant, linear or cosine)"));
}

}  // namespace adapterd
