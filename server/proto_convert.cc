#include "server/proto_convert.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace adapterd {
namespace {

absl::Status CheckCommon(const std::string& request_id, const std::string& adapter,
                         const std::string& prompt, const EngineLimits& limits) {
  if (request_id.size() > kMaxRequestIdBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id is longer than ", kMaxRequestIdBytes, " bytes"));
  }
  if (adapter.size() > kMaxAdapterRefBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter is longer than ", kMaxAdapterRefBytes, " bytes"));
  }
  if (static_cast<int64_t>(prompt.size()) > limits.max_prompt_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt is longer than ", limits.max_prompt_bytes, " bytes"));
  }
  return absl::OkStatus();
}

// Prompt ensembling: further adapters run as parallel rows beside `adapter`.
absl::Status CheckEnsemble(const std::string& adapter,
                           const google::protobuf::RepeatedPtrField<std::string>& ensemble,
                           const EngineLimits& limits) {
  if (ensemble.empty()) return absl::OkStatus();
  if (adapter.empty()) {
    return absl::InvalidArgumentError("ensemble_adapters needs adapter (the first prompt) set");
  }
  if (ensemble.size() + 1 > limits.max_batch_size) {
    return absl::InvalidArgumentError(absl::StrCat("ensemble_adapters has more than ",
                                                   limits.max_batch_size - 1, " entries"));
  }
  for (const std::string& a : ensemble) {
    if (a.empty()) return absl::InvalidArgumentError("ensemble_adapters contains an empty name");
    if (a.size() > kMaxAdapterRefBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat("ensemble_adapters entry is longer than ", kMaxAdapterRefBytes, " bytes"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GenerateRequest> GenerateRequestFromProto(const v1::GenerateRequest& request,
                                                         const EngineLimits& limits,
                                                         int64_t vocab_size) {
  RETURN_IF_ERROR(CheckCommon(request.request_id(), request.adapter(), request.prompt(), limits));
  RETURN_IF_ERROR(CheckEnsemble(request.adapter(), request.ensemble_adapters(), limits));
  if (request.prompt().empty() && request.prompt_token_ids().empty()) {
    return absl::InvalidArgumentError("prompt is empty");
  }
  if (request.prompt_token_ids_size() > limits.max_prompt_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt_token_ids has more than ", limits.max_prompt_bytes, " ids"));
  }
  for (int32_t id : request.prompt_token_ids()) {
    if (id < 0 || id >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt_token_ids contains ", id, ", outside the vocabulary [0, ", vocab_size, ")"));
    }
  }

  GenerateRequest out;
  out.request_id = request.request_id();
  out.adapter = request.adapter();
  out.ensemble_adapters.assign(request.ensemble_adapters().begin(),
                               request.ensemble_adapters().end());
  out.prompt_ids.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  if (out.prompt_ids.empty()) out.prompt = request.prompt();
  out.add_special_tokens = request.has_add_special_tokens() ? request.add_special_tokens() : true;
  out.parse_special_tokens = !request.escape_special_tokens();

  const v1::SamplingParams& s = request.sampling();
  SamplingParams& p = out.sampling;
  if (s.has_temperature()) p.temperature = s.temperature();
  p.top_k = s.top_k();
  if (s.has_top_p()) p.top_p = s.top_p();
  if (s.has_seed()) p.seed = s.seed();
  if (s.has_max_tokens()) p.max_tokens = s.max_tokens();
  p.stop.assign(s.stop().begin(), s.stop().end());
  p.top_logprobs = s.top_logprobs();
  p.logprobs = s.logprobs() || s.top_logprobs() > 0;
  p.ignore_eos = s.ignore_eos();
  RETURN_IF_ERROR(ValidateSampling(p, limits, vocab_size));
  return out;
}

absl::StatusOr<ScoreRequest> ScoreRequestFromProto(const v1::ScoreRequest& request,
                                                   const EngineLimits& limits) {
  RETURN_IF_ERROR(CheckCommon(request.request_id(), request.adapter(), request.prompt(), limits));
  RETURN_IF_ERROR(CheckEnsemble(request.adapter(), request.ensemble_adapters(), limits));
  const bool by_ids = request.prompt_token_ids_size() > 0;
  if (by_ids) {
    if (request.continuation_token_ids().empty()) {
      return absl::InvalidArgumentError("continuation_token_ids is empty");
    }
    if (request.continuation_token_ids_size() > limits.max_continuations) {
      return absl::InvalidArgumentError(absl::StrCat("continuation_token_ids has more than ",
                                                     limits.max_continuations, " entries"));
    }
    for (const v1::TokenIds& c : request.continuation_token_ids()) {
      if (c.ids().empty()) {
        return absl::InvalidArgumentError("continuation_token_ids contains an empty list");
      }
    }
  } else {
    if (request.prompt().empty()) return absl::InvalidArgumentError("prompt is empty");
    if (request.continuations().empty()) {
      return absl::InvalidArgumentError("continuations is empty");
    }
    if (request.continuations_size() > limits.max_continuations) {
      return absl::InvalidArgumentError(
          absl::StrCat("continuations has more than ", limits.max_continuations, " entries"));
    }
    int64_t total = static_cast<int64_t>(request.prompt().size());
    for (const std::string& c : request.continuations()) {
      if (c.empty()) return absl::InvalidArgumentError("continuations contains an empty string");
      total += static_cast<int64_t>(c.size());
    }
    if (total > limits.max_prompt_bytes) {
      return absl::InvalidArgumentError(absl::StrCat("prompt and continuations are longer than ",
                                                     limits.max_prompt_bytes, " bytes"));
    }
  }
  if (request.top_logprobs() < 0 || request.top_logprobs() > limits.max_top_logprobs) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_logprobs must be in [0, ", limits.max_top_logprobs, "]"));
  }

  ScoreRequest out;
  out.request_id = request.request_id();
  out.adapter = request.adapter();
  out.ensemble_adapters.assign(request.ensemble_adapters().begin(),
                               request.ensemble_adapters().end());
  out.prompt = request.prompt();
  out.continuations.assign(request.continuations().begin(), request.continuations().end());
  out.prompt_ids.assign(request.prompt_token_ids().begin(), request.prompt_token_ids().end());
  for (const v1::TokenIds& c : request.continuation_token_ids()) {
    out.continuation_ids.emplace_back(c.ids().begin(), c.ids().end());
  }
  out.top_logprobs = request.top_logprobs();
  return out;
}

v1::FinishReason FinishReasonToProto(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return v1::FINISH_REASON_LENGTH;
    case FinishReason::kStop:
      return v1::FINISH_REASON_STOP;
    case FinishReason::kEos:
      return v1::FINISH_REASON_EOS;
    case FinishReason::kContextLength:
      return v1::FINISH_REASON_CONTEXT_LENGTH;
  }
  return v1::FINISH_REASON_UNSPECIFIED;
}

void TokenToProto(const GeneratedToken& token, bool with_logprobs, v1::Token* out) {
  out->set_id(token.id);
  out->set_text(token.text);
  if (!with_logprobs) return;
  out->set_logprob(token.logprob);
  for (const TokenLogprob& alt : token.top) {
    v1::TopLogprob* t = out->add_top_logprobs();
    t->set_token_id(alt.id);
    t->set_text(alt.text);
    t->set_logprob(alt.logprob);
  }
}

void ScoreResultToProto(const ScoreResult& result, v1::ScoreResponse* out) {
  int completion_tokens = 0;
  for (const ContinuationScore& score : result.scores) {
    v1::ContinuationScore* s = out->add_scores();
    s->set_logprob(score.logprob);
    s->set_is_greedy(score.greedy);
    for (const GeneratedToken& token : score.tokens) TokenToProto(token, true, s->add_tokens());
    completion_tokens += static_cast<int>(score.tokens.size());
  }
  out->mutable_usage()->set_prompt_tokens(result.prompt_tokens);
  out->mutable_usage()->set_completion_tokens(completion_tokens);
}

void ModelInfoToProto(const ModelInfo& info, v1::ModelInfo* out) {
  out->set_name(info.name);
  out->set_architecture(info.architecture);
  out->set_model_type(info.model_type);
  out->set_dtype(info.dtype);
  out->set_device(info.device);
  out->set_fingerprint(info.fingerprint);
  out->set_vocab_size(info.vocab_size);
  out->set_context_length(info.context_length);
  out->set_num_layers(info.num_layers);
  out->set_hidden_size(info.hidden_size);
  out->set_num_heads(info.num_heads);
  out->set_num_kv_heads(info.num_kv_heads);
  out->set_is_default_model(info.is_default_model);
}

void LimitsToProto(const EngineLimits& limits, int64_t max_message_bytes, v1::Limits* out) {
  out->set_max_batch_size(limits.max_batch_size);
  out->set_max_queue(limits.max_queue);
  out->set_max_tokens(limits.max_tokens);
  out->set_max_stop_sequences(limits.max_stop_sequences);
  out->set_max_top_logprobs(limits.max_top_logprobs);
  out->set_max_continuations(limits.max_continuations);
  out->set_max_prompt_bytes(limits.max_prompt_bytes);
  out->set_max_message_bytes(max_message_bytes);
}

void StatsToProto(const EngineStats& stats, double uptime_seconds, v1::ServerStats* out) {
  out->set_running(stats.running);
  out->set_queued(stats.queued);
  out->set_free_slots(stats.free_slots);
  out->set_steps(stats.steps);
  out->set_generated_tokens(stats.generated_tokens);
  out->set_prompt_tokens(stats.prompt_tokens);
  out->set_requests_finished(stats.requests_finished);
  out->set_requests_cancelled(stats.requests_cancelled);
  out->set_uptime_seconds(uptime_seconds);
  const AdapterCacheStats& c = stats.adapter_cache;
  v1::AdapterCacheStats* o = out->mutable_adapter_cache();
  o->set_device_budget_bytes(c.device_budget_bytes);
  o->set_host_budget_bytes(c.host_budget_bytes);
  o->set_device_bytes(c.device_bytes);
  o->set_host_bytes(c.host_bytes);
  o->set_device_adapters(c.device_adapters);
  o->set_host_adapters(c.host_adapters);
  o->set_pinned_adapters(c.pinned_adapters);
  o->set_leased_adapters(c.leased_adapters);
  o->set_device_hits(c.device_hits);
  o->set_host_hits(c.host_hits);
  o->set_misses(c.misses);
  o->set_loads(c.loads);
  o->set_load_failures(c.load_failures);
  o->set_evictions(c.evictions);
  o->set_waiting_requests(c.waiting_requests);
  o->set_load_ms_p50(c.load_ms_p50);
  o->set_load_ms_p99(c.load_ms_p99);
  o->set_load_ms_max(c.load_ms_max);
  o->set_static_adapters(c.static_adapters);
  o->set_static_bytes(c.static_bytes);
}

}  // namespace adapterd
