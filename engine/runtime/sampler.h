#pragma once

// Chooses the next token from a row of logits: greedy, or temperature with
// top-k and top-p, from a per-sequence seeded generator. Torch-free: it works
// on a float row already on the host.
// Not thread-safe; one per sequence, used by the engine thread.

#include <cstdint>
#include <random>
#include <vector>

#include "engine/api/engine.h"

namespace adapterd {

struct SampledToken {
  int32_t id = 0;
  float logprob = 0.0f;            // log_softmax of the raw logits (temperature 1).
  std::vector<TokenLogprob> top;   // params.top_logprobs best, most likely first.
};

class Sampler {
 public:
  // REQUIRES: ValidateSampling(params) is OK.
  Sampler(const SamplingParams& params, uint64_t seed);

  SampledToken Sample(const float* logits, int64_t vocab_size);
  // The same, with log(sum(exp(logits))) of the row given (computed for the
  // whole batch on the GPU: the host pass over the vocabulary dominates a
  // GPU decode step otherwise).
  SampledToken Sample(const float* logits, int64_t vocab_size, double log_sum_exp);

  // The top `k` log-probs of a row, most likely first (ties: lower id first).
  static std::vector<TokenLogprob> TopLogprobs(const float* logits, int64_t vocab_size, int k);
  // log_softmax(logits)[id].
  static float Logprob(const float* logits, int64_t vocab_size, int32_t id);
  static int32_t Argmax(const float* logits, int64_t vocab_size);

 private:
  int32_t Draw(const float* logits, int64_t vocab_size);

  SamplingParams params_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int32_t>> scratch_;  // (logit, id) candidates.
};

}  // namespace adapterd
