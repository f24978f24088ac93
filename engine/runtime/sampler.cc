#include "engine/runtime/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace adapterd {
namespace {

// log(sum(exp(x))) computed stably in double.
double LogSumExp(const float* x, int64_t n) {
  float max = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) max = std::max(max, x[i]);
  if (!std::isfinite(max)) return max;
  double sum = 0.0;
  for (int64_t i = 0; i < n; ++i) sum += std::exp(static_cast<double>(x[i]) - max);
  return max + std::log(sum);
}

// Orders by logit descending, then id ascending: a stable, total order.
bool Better(const std::pair<float, int32_t>& a, const std::pair<float, int32_t>& b) {
  return a.first > b.first || (a.first == b.first && a.second < b.second);
}

}  // namespace

Sampler::Sampler(const SamplingParams& params, uint64_t seed) : params_(params), rng_(seed) {}

int32_t Sampler::Argmax(const float* logits, int64_t vocab_size) {
  int32_t best = 0;
  for (int64_t i = 1; i < vocab_size; ++i) {
    if (logits[i] > logits[best]) best = static_cast<int32_t>(i);
  }
  return best;
}

float Sampler::Logprob(const float* logits, int64_t vocab_size, int32_t id) {
  return static_cast<float>(logits[id] - LogSumExp(logits, vocab_size));
}

std::vector<TokenLogprob> Sampler::TopLogprobs(const float* logits, int64_t vocab_size, int k) {
  std::vector<TokenLogprob> out;
  if (k <= 0) return out;
  k = static_cast<int>(std::min<int64_t>(k, vocab_size));
  std::vector<std::pair<float, int32_t>> cand(vocab_size);
  for (int64_t i = 0; i < vocab_size; ++i) cand[i] = {logits[i], static_cast<int32_t>(i)};
  std::partial_sort(cand.begin(), cand.begin() + k, cand.end(), Better);
  const double lse = LogSumExp(logits, vocab_size);
  out.reserve(k);
  for (int i = 0; i < k; ++i) {
    out.push_back({cand[i].second, static_cast<float>(cand[i].first - lse)});
  }
  return out;
}

int32_t Sampler::Draw(const float* logits, int64_t vocab_size) {
  const float inv_t = 1.0f / params_.temperature;
  scratch_.resize(vocab_size);
  for (int64_t i = 0; i < vocab_size; ++i) {
    scratch_[i] = {logits[i] * inv_t, static_cast<int32_t>(i)};
  }
  size_t n = scratch_.size();
  if (params_.top_k > 0 && params_.top_k < static_cast<int>(n)) {
    std::nth_element(scratch_.begin(), scratch_.begin() + params_.top_k, scratch_.end(), Better);
    n = params_.top_k;
  }
  // Candidates sorted best first: top-p keeps the smallest prefix whose mass
  // reaches p (always at least one token), as in HF's TopPLogitsWarper.
  std::sort(scratch_.begin(), scratch_.begin() + n, Better);
  const float max = scratch_[0].first;
  std::vector<double> weights(n);
  double total = 0.0;
  for (size_t i = 0; i < n; ++i) {
    weights[i] = std::exp(static_cast<double>(scratch_[i].first) - max);
    total += weights[i];
  }
  if (params_.top_p < 1.0f) {
    double mass = 0.0;
    size_t keep = 0;
    while (keep < n) {
      mass += weights[keep] / total;
      ++keep;
      if (mass >= params_.top_p) break;
    }
    n = keep;
    weights.resize(n);
    total = 0.0;
    for (double w : weights) total += w;
  }
  std::uniform_real_distribution<double> uniform(0.0, total);
  double r = uniform(rng_);
  for (size_t i = 0; i < n; ++i) {
    r -= weights[i];
    if (r < 0.0) return scratch_[i].second;
  }
  return scratch_[n - 1].second;
}

SampledToken Sampler::Sample(const float* logits, int64_t vocab_size) {
  return Sample(logits, vocab_size, LogSumExp(logits, vocab_size));
}

SampledToken Sampler::Sample(const float* logits, int64_t vocab_size, double log_sum_exp) {
  SampledToken out;
  out.id = params_.temperature == 0.0f ? Argmax(logits, vocab_size) : Draw(logits, vocab_size);
  out.logprob = static_cast<float>(logits[out.id] - log_sum_exp);
  out.top = TopLogprobs(logits, vocab_size, params_.top_logprobs);
  return out;
}

}  // namespace adapterd
