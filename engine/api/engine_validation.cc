// Request validation shared by the engine and the server (torch-free).

#include <cmath>

#include "absl/strings/str_cat.h"
#include "engine/api/engine.h"

namespace adapterd {

absl::Status ValidateSampling(const SamplingParams& params, const EngineLimits& limits,
                              int64_t vocab_size) {
  if (!std::isfinite(params.temperature) || params.temperature < 0.0f ||
      params.temperature > 100.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("temperature must be in [0, 100], got ", params.temperature));
  }
  if (!std::isfinite(params.top_p) || params.top_p <= 0.0f || params.top_p > 1.0f) {
    return absl::InvalidArgumentError(absl::StrCat("top_p must be in (0, 1], got ", params.top_p));
  }
  if (params.top_k < 0 || params.top_k > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be in [0, ", vocab_size, "], got ", params.top_k));
  }
  if (params.max_tokens < 1 || params.max_tokens > limits.max_tokens) {
    return absl::InvalidArgumentError(absl::StrCat("max_tokens must be in [1, ", limits.max_tokens,
                                                   "], got ", params.max_tokens));
  }
  if (params.top_logprobs < 0 || params.top_logprobs > limits.max_top_logprobs) {
    return absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [0, ",
                                                   limits.max_top_logprobs, "], got ",
                                                   params.top_logprobs));
  }
  if (static_cast<int>(params.stop.size()) > limits.max_stop_sequences) {
    return absl::InvalidArgumentError(absl::StrCat("at most ", limits.max_stop_sequences,
                                                   " stop sequences, got ", params.stop.size()));
  }
  for (const std::string& stop : params.stop) {
    if (stop.empty()) return absl::InvalidArgumentError("stop sequences must not be empty");
    if (static_cast<int>(stop.size()) > limits.max_stop_length) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop sequences are limited to ", limits.max_stop_length, " bytes"));
    }
  }
  return absl::OkStatus();
}

const char* FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kContextLength:
      return "context_length";
  }
  return "unknown";
}

}  // namespace adapterd
