// AdamW, gradient clipping and learning-rate schedules against the values
// torch and transformers give (end-to-end parity is in trainer_test.cc).

#include "engine/training/optim.h"

#include <ATen/ATen.h>

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

// transformers 4.57 get_scheduler(name, warmup=3, total=10): LambdaLR's lr
// with base lr 1 before the optimizer steps 0..10.
TEST(OptimTest, SchedulesMatchTransformers) {
  const std::vector<double> linear = {0.0, 0.3333333333333333, 0.6666666666666666, 1.0,
                                      0.8571428571428571, 0.7142857142857143, 0.5714285714285714,
                                      0.42857142857142855, 0.2857142857142857, 0.14285714285714285,
                                      0.0};
  const std::vector<double> cosine = {0.0, 0.3333333333333333, 0.6666666666666666, 1.0,
                                      0.9504844339512095, 0.8117449009293668, 0.6112604669781572,
                                      0.38873953302184283, 0.18825509907063326,
                                      0.04951556604879048, 0.0};
  for (int step = 0; step <= 10; ++step) {
    EXPECT_NEAR(LearningRateFactor("linear", step, 3, 10), linear[step], 1e-15) << step;
    EXPECT_NEAR(LearningRateFactor("cosine", step, 3, 10), cosine[step], 1e-15) << step;
    EXPECT_EQ(LearningRateFactor("constant", step, 3, 10), step < 3 ? step / 3.0 : 1.0) << step;
  }
  EXPECT_EQ(WarmupSteps(0, 0.25, 10), 3);  // ceil, as transformers' get_warmup_steps.
  EXPECT_EQ(WarmupSteps(4, 0.25, 10), 4);
  EXPECT_TRUE(CheckScheduler("cosine").ok());
  EXPECT_EQ(CheckScheduler("polynomial").code(), absl::StatusCode::kInvalidArgument);
}

NamedParameter WithGrad(std::vector<float> value, std::vector<float> grad, bool decay = true) {
  at::Tensor p = at::tensor(value).set_requires_grad(true);
  p.mutable_grad() = at::tensor(grad);
  return {"p", p, decay};
}

TEST(OptimTest, ClipGradNormScalesLikeTorch) {
  std::vector<NamedParameter> params = {WithGrad({0, 0}, {3, 0}), WithGrad({0}, {4})};
  EXPECT_DOUBLE_EQ(ClipGradNorm(params, 1.0), 5.0);
  const float coef = static_cast<float>(1.0 / (5.0f + 1e-6));  // max_norm / (norm + 1e-6).
  EXPECT_FLOAT_EQ(params[0].tensor.grad()[0].item<float>(), 3 * coef);
  EXPECT_FLOAT_EQ(params[1].tensor.grad()[0].item<float>(), 4 * coef);
  // Under the limit the coefficient clamps to 1: gradients unchanged.
  std::vector<NamedParameter> small = {WithGrad({0}, {0.5})};
  EXPECT_DOUBLE_EQ(ClipGradNorm(small, 1.0), 0.5);
  EXPECT_FLOAT_EQ(small[0].tensor.grad()[0].item<float>(), 0.5f);
}

TEST(OptimTest, AdamWTwoStepsByHand) {
  const double lr = 0.1, wd = 0.5, b1 = 0.9, b2 = 0.999, eps = 1e-8;
  std::vector<NamedParameter> params = {WithGrad({1.0f}, {0.2f}), WithGrad({1.0f}, {0.2f}, false)};
  AdamW adam(params, {b1, b2, eps, wd});
  double p = 1, p_nodecay = 1, m = 0, v = 0;
  for (int t = 1; t <= 2; ++t) {
    const double g = t == 1 ? 0.2 : -0.3;
    if (t == 2) {
      for (NamedParameter& n : params) n.tensor.mutable_grad() = at::tensor({static_cast<float>(g)});
    }
    adam.Step(lr);
    m = b1 * m + (1 - b1) * g;
    v = b2 * v + (1 - b2) * g * g;
    const double update = lr / (1 - std::pow(b1, t)) * m / (std::sqrt(v) / std::sqrt(1 - std::pow(b2, t)) + eps);
    p = p * (1 - lr * wd) - update;
    p_nodecay -= update;
  }
  EXPECT_EQ(adam.steps(), 2);
  EXPECT_NEAR(params[0].tensor.item<double>(), p, 1e-6);
  EXPECT_NEAR(params[1].tensor.item<double>(), p_nodecay, 1e-6);  // No decay where it is off.
}

}  // namespace
}  // namespace adapterd
