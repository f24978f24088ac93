#pragma once

// Conversions between the public protobuf API (adapterd.v1) and the engine's
// plain structs, and validation of requests before they reach the engine.
// The only place where both sides' types are seen together.

#include "absl/status/statusor.h"
#include "adapterd/v1/admin.pb.h"
#include "adapterd/v1/inference.pb.h"
#include "engine/api/engine.h"

namespace adapterd {

// Limits of the request fields the engine does not check itself.
inline constexpr size_t kMaxRequestIdBytes = 128;
inline constexpr size_t kMaxAdapterRefBytes = 256;

// Validates `request` against `limits` and the vocabulary and converts it.
// Returns INVALID_ARGUMENT with a stable message naming the field: empty
// prompt, prompt over max_prompt_bytes, a prompt token id outside the
// vocabulary, sampling values or stop sequences out of range (through
// ValidateSampling, with its messages), an over-long request_id or adapter.
// ensemble_adapters need `adapter` set, at most max_batch_size - 1 entries,
// none empty or over-long. `request_id` must already be
// filled in by the caller (the proto's or a generated one).
absl::StatusOr<GenerateRequest> GenerateRequestFromProto(const v1::GenerateRequest& request,
                                                         const EngineLimits& limits,
                                                         int64_t vocab_size);

// Same for Score: empty prompt, no continuations, more than
// max_continuations, an empty continuation, top_logprobs out of range.
absl::StatusOr<ScoreRequest> ScoreRequestFromProto(const v1::ScoreRequest& request,
                                                   const EngineLimits& limits);

v1::FinishReason FinishReasonToProto(FinishReason reason);

// Fills `out` from an engine token; the logprobs only when `with_logprobs`.
void TokenToProto(const GeneratedToken& token, bool with_logprobs, v1::Token* out);

void ScoreResultToProto(const ScoreResult& result, v1::ScoreResponse* out);

void ModelInfoToProto(const ModelInfo& info, v1::ModelInfo* out);
void LimitsToProto(const EngineLimits& limits, int64_t max_message_bytes, v1::Limits* out);
void StatsToProto(const EngineStats& stats, double uptime_seconds, v1::ServerStats* out);

}  // namespace adapterd
