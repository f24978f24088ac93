#include "engine/runtime/sampler.h"

#include <cmath>
#include <map>
#include <vector>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

std::vector<float> Logits() { return {0.5f, 2.0f, -1.0f, 1.5f, 0.0f, 1.9f}; }

SamplingParams Params(float temperature, int top_k = 0, float top_p = 1.0f) {
  SamplingParams p;
  p.temperature = temperature;
  p.top_k = top_k;
  p.top_p = top_p;
  return p;
}

TEST(SamplerTest, GreedyTakesTheArgmaxAndItsLogSoftmax) {
  const std::vector<float> logits = Logits();
  Sampler sampler(Params(0.0f), 1);
  const SampledToken t = sampler.Sample(logits.data(), logits.size());
  EXPECT_EQ(t.id, 1);
  double z = 0;
  for (float l : logits) z += std::exp(l);
  EXPECT_NEAR(t.logprob, 2.0 - std::log(z), 1e-6);
}

TEST(SamplerTest, TopLogprobsAreSortedAndNormalised) {
  const std::vector<float> logits = Logits();
  const auto top = Sampler::TopLogprobs(logits.data(), logits.size(), 3);
  ASSERT_EQ(top.size(), 3u);
  EXPECT_EQ(top[0].id, 1);
  EXPECT_EQ(top[1].id, 5);
  EXPECT_EQ(top[2].id, 3);
  EXPECT_GT(top[0].logprob, top[1].logprob);
  EXPECT_NEAR(top[0].logprob, Sampler::Logprob(logits.data(), logits.size(), 1), 1e-6);
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDiffers) {
  const std::vector<float> logits = Logits();
  auto draw = [&](uint64_t seed) {
    Sampler s(Params(1.0f), seed);
    std::vector<int32_t> ids;
    for (int i = 0; i < 64; ++i) ids.push_back(s.Sample(logits.data(), logits.size()).id);
    return ids;
  };
  EXPECT_EQ(draw(7), draw(7));
  EXPECT_NE(draw(7), draw(8));
}

TEST(SamplerTest, TopKOneAndTinyTopPAreGreedy) {
  const std::vector<float> logits = Logits();
  Sampler k1(Params(1.0f, 1), 3);
  Sampler p0(Params(1.0f, 0, 0.01f), 3);
  for (int i = 0; i < 50; ++i) {
    EXPECT_EQ(k1.Sample(logits.data(), logits.size()).id, 1);
    EXPECT_EQ(p0.Sample(logits.data(), logits.size()).id, 1);
  }
}

TEST(SamplerTest, TopKNeverLeavesTheKBest) {
  const std::vector<float> logits = Logits();
  Sampler s(Params(5.0f, 2), 11);
  for (int i = 0; i < 500; ++i) {
    const int32_t id = s.Sample(logits.data(), logits.size()).id;
    EXPECT_TRUE(id == 1 || id == 5) << id;
  }
}

TEST(SamplerTest, TopPKeepsTheSmallestSetReachingP) {
  // probs ~ [0.5, 0.3, 0.2]: p=0.6 keeps {0, 1}; p=0.5 keeps {0}.
  const std::vector<float> logits = {std::log(0.5f), std::log(0.3f), std::log(0.2f)};
  Sampler two(Params(1.0f, 0, 0.6f), 5);
  std::map<int, int> seen;
  for (int i = 0; i < 2000; ++i) ++seen[two.Sample(logits.data(), logits.size()).id];
  EXPECT_GT(seen[0], 0);
  EXPECT_GT(seen[1], 0);
  EXPECT_EQ(seen.count(2), 0u);
  Sampler one(Params(1.0f, 0, 0.5f), 5);
  for (int i = 0; i < 200; ++i) EXPECT_EQ(one.Sample(logits.data(), logits.size()).id, 0);
}

TEST(SamplerTest, FrequenciesFollowTheSoftmaxAtTemperatureOne) {
  const std::vector<float> logits = Logits();
  std::vector<double> p(logits.size());
  double z = 0;
  for (float l : logits) z += std::exp(l);
  for (size_t i = 0; i < logits.size(); ++i) p[i] = std::exp(logits[i]) / z;
  Sampler s(Params(1.0f), 99);
  const int n = 40000;
  std::vector<int> counts(logits.size());
  for (int i = 0; i < n; ++i) ++counts[s.Sample(logits.data(), logits.size()).id];
  for (size_t i = 0; i < logits.size(); ++i) {
    const double sd = std::sqrt(p[i] * (1 - p[i]) / n);
    EXPECT_NEAR(counts[i] / static_cast<double>(n), p[i], 5 * sd) << "token " << i;
  }
}

TEST(ValidateSamplingTest, RejectsOutOfRangeValuesWithStableMessages) {
  EngineLimits limits;
  SamplingParams ok;
  EXPECT_TRUE(ValidateSampling(ok, limits, 100).ok());
  SamplingParams p;
  p.temperature = -0.1f;
  EXPECT_EQ(ValidateSampling(p, limits, 100).message(), "temperature must be in [0, 100], got -0.1");
  p = ok;
  p.top_p = 0.0f;
  EXPECT_EQ(ValidateSampling(p, limits, 100).code(), absl::StatusCode::kInvalidArgument);
  p = ok;
  p.top_k = 101;
  EXPECT_EQ(ValidateSampling(p, limits, 100).code(), absl::StatusCode::kInvalidArgument);
  p = ok;
  p.max_tokens = 0;
  EXPECT_EQ(ValidateSampling(p, limits, 100).message(), "max_tokens must be in [1, 4096], got 0");
  p = ok;
  p.top_logprobs = 21;
  EXPECT_EQ(ValidateSampling(p, limits, 100).code(), absl::StatusCode::kInvalidArgument);
  p = ok;
  p.stop = {""};
  EXPECT_EQ(ValidateSampling(p, limits, 100).message(), "stop sequences must not be empty");
  p = ok;
  p.temperature = std::nanf("");
  EXPECT_EQ(ValidateSampling(p, limits, 100).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace adapterd
