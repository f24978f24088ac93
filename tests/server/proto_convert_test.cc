#include "server/proto_convert.h"

#include <string>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

constexpr int64_t kVocab = 1000;

absl::Status Convert(const v1::GenerateRequest& request, const EngineLimits& limits = {}) {
  return GenerateRequestFromProto(request, limits, kVocab).status();
}

v1::GenerateRequest Valid() {
  v1::GenerateRequest request;
  request.set_prompt("hello");
  return request;
}

void ExpectInvalid(const v1::GenerateRequest& request, const std::string& message) {
  const absl::Status status = Convert(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(status.message(), message);
}

TEST(ProtoConvertTest, UnsetFieldsTakeTheDocumentedDefaults) {
  absl::StatusOr<GenerateRequest> r = GenerateRequestFromProto(Valid(), EngineLimits{}, kVocab);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt, "hello");
  EXPECT_EQ(r->sampling.temperature, 0.0f);
  EXPECT_EQ(r->sampling.top_p, 1.0f);
  EXPECT_EQ(r->sampling.top_k, 0);
  EXPECT_EQ(r->sampling.max_tokens, 16);
  EXPECT_FALSE(r->sampling.seed.has_value());
  EXPECT_FALSE(r->sampling.logprobs);
  EXPECT_TRUE(r->add_special_tokens);
  EXPECT_TRUE(r->parse_special_tokens);
}

TEST(ProtoConvertTest, SetFieldsAreCarriedOver) {
  v1::GenerateRequest p = Valid();
  p.set_adapter("demo@2");
  p.set_add_special_tokens(false);
  p.set_escape_special_tokens(true);
  v1::SamplingParams* s = p.mutable_sampling();
  s->set_temperature(0.7f);
  s->set_top_p(0.9f);
  s->set_top_k(40);
  s->set_seed(7);
  s->set_max_tokens(5);
  s->add_stop("\n");
  s->set_top_logprobs(3);
  s->set_ignore_eos(true);
  absl::StatusOr<GenerateRequest> r = GenerateRequestFromProto(p, EngineLimits{}, kVocab);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->adapter, "demo@2");
  EXPECT_FALSE(r->add_special_tokens);
  EXPECT_FALSE(r->parse_special_tokens);
  EXPECT_FLOAT_EQ(r->sampling.temperature, 0.7f);
  EXPECT_FLOAT_EQ(r->sampling.top_p, 0.9f);
  EXPECT_EQ(r->sampling.top_k, 40);
  EXPECT_EQ(r->sampling.seed, 7u);
  EXPECT_EQ(r->sampling.max_tokens, 5);
  EXPECT_EQ(r->sampling.stop, std::vector<std::string>{"\n"});
  EXPECT_TRUE(r->sampling.logprobs) << "top_logprobs implies logprobs";
  EXPECT_EQ(r->sampling.top_logprobs, 3);
  EXPECT_TRUE(r->sampling.ignore_eos);
}

TEST(ProtoConvertTest, TokenIdsReplaceThePromptText) {
  v1::GenerateRequest p;
  p.set_prompt("ignored");
  p.add_prompt_token_ids(1);
  p.add_prompt_token_ids(999);
  absl::StatusOr<GenerateRequest> r = GenerateRequestFromProto(p, EngineLimits{}, kVocab);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->prompt_ids, (std::vector<int32_t>{1, 999}));
  EXPECT_TRUE(r->prompt.empty());
}

TEST(ProtoConvertTest, EmptyPromptIsInvalid) {
  ExpectInvalid(v1::GenerateRequest(), "prompt is empty");
}

TEST(ProtoConvertTest, TokenIdsOutsideTheVocabularyAreInvalid) {
  v1::GenerateRequest p;
  p.add_prompt_token_ids(1000);
  ExpectInvalid(p, "prompt_token_ids contains 1000, outside the vocabulary [0, 1000)");
  p.set_prompt_token_ids(0, -1);
  ExpectInvalid(p, "prompt_token_ids contains -1, outside the vocabulary [0, 1000)");
}

TEST(ProtoConvertTest, SamplingValuesOutOfRangeAreInvalid) {
  v1::GenerateRequest p = Valid();
  p.mutable_sampling()->set_temperature(-1.0f);
  ExpectInvalid(p, "temperature must be in [0, 100], got -1");
  p.mutable_sampling()->set_temperature(std::nanf(""));
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);
  p.mutable_sampling()->set_temperature(101.0f);
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);

  p = Valid();
  p.mutable_sampling()->set_top_p(0.0f);
  ExpectInvalid(p, "top_p must be in (0, 1], got 0");
  p.mutable_sampling()->set_top_p(1.5f);
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);

  p = Valid();
  p.mutable_sampling()->set_top_k(-1);
  ExpectInvalid(p, "top_k must be in [0, 1000], got -1");
  p.mutable_sampling()->set_top_k(1001);
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);

  p = Valid();
  p.mutable_sampling()->set_max_tokens(0);
  ExpectInvalid(p, "max_tokens must be in [1, 4096], got 0");
  p.mutable_sampling()->set_max_tokens(4097);
  ExpectInvalid(p, "max_tokens must be in [1, 4096], got 4097");

  p = Valid();
  p.mutable_sampling()->set_top_logprobs(21);
  ExpectInvalid(p, "top_logprobs must be in [0, 20], got 21");
}

TEST(ProtoConvertTest, StopSequencesAreLimited) {
  v1::GenerateRequest p = Valid();
  for (int i = 0; i < 9; ++i) p.mutable_sampling()->add_stop("x");
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);
  p = Valid();
  p.mutable_sampling()->add_stop("");
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);
  p = Valid();
  p.mutable_sampling()->add_stop(std::string(257, 'x'));
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ProtoConvertTest, SizeLimitsAreEnforced) {
  EngineLimits limits;
  limits.max_prompt_bytes = 10;
  v1::GenerateRequest p;
  p.set_prompt(std::string(11, 'a'));
  EXPECT_EQ(Convert(p, limits).message(), "prompt is longer than 10 bytes");
  p = Valid();
  p.set_request_id(std::string(129, 'r'));
  ExpectInvalid(p, "request_id is longer than 128 bytes");
  p = Valid();
  p.set_adapter(std::string(257, 'a'));
  ExpectInvalid(p, "adapter is longer than 256 bytes");
}

TEST(ProtoConvertTest, EnsemblesAreCarriedAndValidated) {
  v1::GenerateRequest p = Valid();
  p.add_ensemble_adapters("other");
  EXPECT_EQ(Convert(p).code(), absl::StatusCode::kInvalidArgument);  // No `adapter`.
  p.set_adapter("first");
  absl::StatusOr<GenerateRequest> r = GenerateRequestFromProto(p, EngineLimits(), 1000);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->ensemble_adapters, std::vector<std::string>{"other"});
  p.add_ensemble_adapters("");
  EXPECT_EQ(Convert(p).message(), "ensemble_adapters contains an empty name");
}

TEST(ProtoConvertTest, ScoreRequestsAreValidated) {
  const EngineLimits limits;
  v1::ScoreRequest p;
  p.set_prompt("the cat");
  EXPECT_EQ(ScoreRequestFromProto(p, limits).status().message(), "continuations is empty");
  p.add_continuations(" sat");
  absl::StatusOr<ScoreRequest> r = ScoreRequestFromProto(p, limits);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->continuations, std::vector<std::string>{" sat"});
  p.add_continuations("");
  EXPECT_EQ(ScoreRequestFromProto(p, limits).status().message(),
            "continuations contains an empty string");
  p.clear_continuations();
  for (int i = 0; i < 65; ++i) p.add_continuations("x");
  EXPECT_EQ(ScoreRequestFromProto(p, limits).status().code(), absl::StatusCode::kInvalidArgument);
  p.clear_continuations();
  p.add_continuations("x");
  p.set_top_logprobs(-1);
  EXPECT_EQ(ScoreRequestFromProto(p, limits).status().message(), "top_logprobs must be in [0, 20]");
  p.set_top_logprobs(0);
  p.clear_prompt();
  EXPECT_EQ(ScoreRequestFromProto(p, limits).status().message(), "prompt is empty");
}

TEST(ProtoConvertTest, FinishReasonsMapOneToOne) {
  EXPECT_EQ(FinishReasonToProto(FinishReason::kLength), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kStop), v1::FINISH_REASON_STOP);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kEos), v1::FINISH_REASON_EOS);
  EXPECT_EQ(FinishReasonToProto(FinishReason::kContextLength), v1::FINISH_REASON_CONTEXT_LENGTH);
}

TEST(ProtoConvertTest, LogprobsAppearOnlyWhenAskedFor) {
  GeneratedToken token;
  token.id = 5;
  token.text = "hi";
  token.logprob = -1.5f;
  token.top = {{5, -1.5f}, {6, -2.0f}};
  v1::Token without;
  TokenToProto(token, false, &without);
  EXPECT_EQ(without.id(), 5);
  EXPECT_EQ(without.text(), "hi");
  EXPECT_FALSE(without.has_logprob());
  EXPECT_EQ(without.top_logprobs_size(), 0);
  v1::Token with;
  TokenToProto(token, true, &with);
  EXPECT_FLOAT_EQ(with.logprob(), -1.5f);
  ASSERT_EQ(with.top_logprobs_size(), 2);
  EXPECT_EQ(with.top_logprobs(1).token_id(), 6);
}

}  // namespace
}  // namespace adapterd
