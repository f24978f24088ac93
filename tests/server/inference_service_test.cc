#include "server/inference_service.h"

#include <atomic>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "tests/server/test_server.h"

namespace adapterd::testing {
namespace {

struct StreamResult {
  grpc::Status status;
  std::vector<v1::GenerateStreamResponse> chunks;
  std::string text() const {
    std::string t;
    for (const auto& c : chunks) t += c.text();
    return t;
  }
  std::vector<int> ids() const {
    std::vector<int> out;
    for (const auto& c : chunks) {
      for (const auto& token : c.tokens()) out.push_back(token.id());
    }
    return out;
  }
};

StreamResult Stream(Client& client, const v1::GenerateRequest& request) {
  StreamResult result;
  result.status = client.GenerateStream(request, [&](const v1::GenerateStreamResponse& chunk) {
    result.chunks.push_back(chunk);
    return true;
  });
  return result;
}

TEST(InferenceServiceTest, GenerateReturnsTheEnginesTokensTextAndUsage) {
  TestServer t;
  v1::GenerateResponse response;
  grpc::Status status = t.client->Generate(MakeRequest("hello", 5), &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.text(), FakeEngine::ExpectedText("", "hello", 5, t.vocab()));
  ASSERT_EQ(response.tokens_size(), 5);
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(response.tokens(i).id(), FakeEngine::TokenFor("", "hello", i, t.vocab()).id);
    EXPECT_FALSE(response.tokens(i).has_logprob());
  }
  EXPECT_EQ(response.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(response.usage().prompt_tokens(), 6);  // 5 bytes + BOS in the fake.
  EXPECT_EQ(response.usage().completion_tokens(), 5);
  EXPECT_EQ(response.request_id().rfind("req-", 0), 0u) << response.request_id();
}

TEST(InferenceServiceTest, RequestIdsAreEchoedAndSentToTheEngine) {
  TestServer t;
  v1::GenerateRequest request = MakeRequest("hello", 1, "demo");
  request.set_request_id("my-id-1");
  v1::GenerateResponse response;
  ASSERT_TRUE(t.client->Generate(request, &response).ok());
  EXPECT_EQ(response.request_id(), "my-id-1");
  EXPECT_EQ(response.adapter(), "demo");
  ASSERT_EQ(t.engine->requests().size(), 1u);
  EXPECT_EQ(t.engine->requests()[0].request_id, "my-id-1");
  EXPECT_EQ(t.engine->requests()[0].adapter, "demo");
}

TEST(InferenceServiceTest, LogprobsAreReturnedWhenAskedFor) {
  TestServer t;
  v1::GenerateRequest request = MakeRequest("hello", 2);
  request.mutable_sampling()->set_top_logprobs(3);
  v1::GenerateResponse response;
  ASSERT_TRUE(t.client->Generate(request, &response).ok());
  ASSERT_EQ(response.tokens_size(), 2);
  EXPECT_FLOAT_EQ(response.tokens(1).logprob(), -0.2f);
  EXPECT_EQ(response.tokens(1).top_logprobs_size(), 3);
}

TEST(InferenceServiceTest, BadRequestsAreInvalidArgumentAndNeverReachTheEngine) {
  TestServer t;
  struct Case {
    v1::GenerateRequest request;
    std::string message;
  };
  std::vector<Case> cases;
  cases.push_back({MakeRequest("", 5), "prompt is empty"});
  cases.push_back({MakeRequest("x", 0), "max_tokens must be in [1, 4096], got 0"});
  cases.push_back({MakeRequest("x", 5000), "max_tokens must be in [1, 4096], got 5000"});
  Case temperature{MakeRequest("x", 1), "temperature must be in [0, 100], got -0.5"};
  temperature.request.mutable_sampling()->set_temperature(-0.5f);
  cases.push_back(temperature);
  Case top_p{MakeRequest("x", 1), "top_p must be in (0, 1], got 2"};
  top_p.request.mutable_sampling()->set_top_p(2.0f);
  cases.push_back(top_p);
  Case top_k{MakeRequest("x", 1), "top_k must be in [0, 1000], got -3"};
  top_k.request.mutable_sampling()->set_top_k(-3);
  cases.push_back(top_k);
  for (const Case& c : cases) {
    v1::GenerateResponse response;
    grpc::Status status = t.client->Generate(c.request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_EQ(status.error_message(), c.message);
    StreamResult streamed = Stream(*t.client, c.request);
    EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << c.message;
    EXPECT_EQ(streamed.status.error_message(), c.message);
    EXPECT_TRUE(streamed.chunks.empty());
  }
  EXPECT_EQ(t.engine->submitted(), 0);
}

TEST(InferenceServiceTest, EngineErrorsKeepTheirCodeAndMessage) {
  TestServer t;
  v1::GenerateResponse response;
  grpc::Status status = t.client->Generate(MakeRequest("x", 1, "nope"), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(status.error_message(), "adapter \"nope\" not found");

  // A prompt longer than the context: the engine's check, the engine's words.
  status = t.client->Generate(MakeRequest(std::string(300, 'a'), 1), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  t.engine->FailNextSubmit(absl::ResourceExhaustedError("the request queue is full"));
  status = t.client->Generate(MakeRequest("x", 1), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(status.error_message(), "the request queue is full");

  t.engine->FailNextSubmit(absl::UnavailableError("the engine is shutting down"));
  StreamResult streamed = Stream(*t.client, MakeRequest("x", 1));
  EXPECT_EQ(streamed.status.error_code(), grpc::StatusCode::UNAVAILABLE);

  v1::ScoreRequest score;
  score.set_prompt("p");
  score.add_continuations("c");
  score.set_adapter("nope");
  v1::ScoreResponse score_response;
  EXPECT_EQ(t.client->Score(score, &score_response).error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST(InferenceServiceTest, AFullQueueIsResourceExhausted) {
  FakeEngineOptions options;
  options.limits.max_batch_size = 1;
  options.limits.max_queue = 0;
  options.step_delay = absl::Milliseconds(20);
  TestServer t(options);
  std::thread first([&] {
    v1::GenerateResponse response;
    EXPECT_TRUE(t.client->Generate(MakeRequest("a", 20), &response).ok());
  });
  ASSERT_TRUE(t.engine->WaitForSubmitted(1, absl::Seconds(5)));
  v1::GenerateResponse response;
  EXPECT_EQ(t.client->Generate(MakeRequest("b", 1), &response).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  first.join();
}

TEST(InferenceServiceTest, StreamDeliversEveryTokenInOrderAndEndsWithTheFinishReason) {
  TestServer t;
  v1::GenerateRequest request = MakeRequest("stream me", 20);
  request.set_request_id("s-1");
  StreamResult streamed = Stream(*t.client, request);
  ASSERT_TRUE(streamed.status.ok()) << streamed.status.error_message();
  ASSERT_FALSE(streamed.chunks.empty());
  std::vector<int> expected_ids;
  for (int i = 0; i < 20; ++i) {
    expected_ids.push_back(FakeEngine::TokenFor("", "stream me", i, t.vocab()).id);
  }
  EXPECT_EQ(streamed.ids(), expected_ids);
  EXPECT_EQ(streamed.text(), FakeEngine::ExpectedText("", "stream me", 20, t.vocab()));
  for (size_t i = 0; i + 1 < streamed.chunks.size(); ++i) {
    EXPECT_EQ(streamed.chunks[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED);
    EXPECT_FALSE(streamed.chunks[i].has_usage());
  }
  for (const auto& chunk : streamed.chunks) EXPECT_EQ(chunk.request_id(), "s-1");
  const v1::GenerateStreamResponse& last = streamed.chunks.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().completion_tokens(), 20);
  EXPECT_EQ(last.usage().prompt_tokens(), 10);

  v1::GenerateResponse unary;
  ASSERT_TRUE(t.client->Generate(request, &unary).ok());
  EXPECT_EQ(unary.text(), streamed.text());
}

TEST(InferenceServiceTest, StreamReportsEosAndContextLength) {
  FakeEngineOptions options;
  options.eos_after = 3;
  TestServer t(options);
  StreamResult streamed = Stream(*t.client, MakeRequest("x", 10));
  ASSERT_TRUE(streamed.status.ok());
  EXPECT_EQ(streamed.chunks.back().finish_reason(), v1::FINISH_REASON_EOS);
  EXPECT_EQ(streamed.ids().size(), 3u);

  FakeEngineOptions small;
  small.context_length = 8;
  TestServer u(small);
  streamed = Stream(*u.client, MakeRequest("abc", 100));  // 4 prompt tokens + 4 new.
  ASSERT_TRUE(streamed.status.ok());
  EXPECT_EQ(streamed.chunks.back().finish_reason(), v1::FINISH_REASON_CONTEXT_LENGTH);
  EXPECT_EQ(streamed.ids().size(), 4u);
}

TEST(InferenceServiceTest, ASlowReaderGetsEveryTokenInFewerMessages) {
  FakeEngineOptions options;
  options.step_delay = absl::ZeroDuration();
  TestServer t(options);
  StreamResult result;
  result.status = t.client->GenerateStream(
      MakeRequest("slow", 200), [&](const v1::GenerateStreamResponse& chunk) {
        result.chunks.push_back(chunk);
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        return true;
      });
  ASSERT_TRUE(result.status.ok());
  EXPECT_EQ(result.ids().size(), 200u);
  EXPECT_EQ(result.text(), FakeEngine::ExpectedText("", "slow", 200, t.vocab()));
  EXPECT_LT(result.chunks.size(), 200u) << "tokens arriving during a write are batched";
}

TEST(InferenceServiceTest, CancellingAStreamCancelsTheEngineRequest) {
  FakeEngineOptions options;
  options.step_delay = absl::Milliseconds(10);
  TestServer t(options);
  int seen = 0;
  grpc::Status status = t.client->GenerateStream(
      MakeRequest("long", 4000), [&](const v1::GenerateStreamResponse&) { return ++seen < 3; });
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(t.engine->WaitForCancellations(1, absl::Seconds(5)));
  EXPECT_TRUE(t.engine->WaitForIdle(absl::Seconds(5)));
  EXPECT_EQ(t.engine->Stats().running, 0);
}

TEST(InferenceServiceTest, CancellingAUnaryGenerateCancelsTheEngineRequest) {
  FakeEngineOptions options;
  options.step_delay = absl::Milliseconds(10);
  TestServer t(options);
  grpc::ClientContext context;
  v1::GenerateResponse response;
  std::thread canceller([&] {
    t.engine->WaitForSubmitted(1, absl::Seconds(5));
    context.TryCancel();
  });
  grpc::Status status = t.inference->Generate(&context, MakeRequest("long", 4000), &response);
  canceller.join();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(t.engine->WaitForCancellations(1, absl::Seconds(5)));
}

TEST(InferenceServiceTest, APassedDeadlineIsDeadlineExceededAndFreesTheSlot) {
  FakeEngineOptions options;
  options.step_delay = absl::Milliseconds(10);
  TestServer t(options);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  v1::GenerateResponse response;
  grpc::Status status = t.inference->Generate(&context, MakeRequest("long", 4000), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  ASSERT_EQ(t.engine->requests().size(), 1u);
  EXPECT_NE(t.engine->requests()[0].deadline, absl::InfiniteFuture())
      << "the client's deadline reaches the engine";
  EXPECT_TRUE(t.engine->WaitForIdle(absl::Seconds(5)));

  grpc::ClientContext stream_context;
  stream_context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  auto reader = t.inference->GenerateStream(&stream_context, MakeRequest("long", 4000));
  v1::GenerateStreamResponse chunk;
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(t.engine->WaitForIdle(absl::Seconds(5)));
}

TEST(InferenceServiceTest, ConcurrentStreamsGetIndependentOutputs) {
  FakeEngineOptions options;
  options.step_delay = absl::Milliseconds(2);
  TestServer t(options);
  constexpr int kStreams = 8;
  std::vector<StreamResult> results(kStreams);
  std::vector<std::thread> threads;
  for (int i = 0; i < kStreams; ++i) {
    threads.emplace_back([&, i] {
      results[i] = Stream(*t.client,
                          MakeRequest("prompt " + std::to_string(i), 30, i % 2 == 0 ? "" : "demo"));
    });
  }
  for (auto& thread : threads) thread.join();
  for (int i = 0; i < kStreams; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << results[i].status.error_message();
    EXPECT_EQ(results[i].text(),
              FakeEngine::ExpectedText(i % 2 == 0 ? "" : "demo", "prompt " + std::to_string(i), 30,
                                       t.vocab()));
    EXPECT_EQ(results[i].chunks.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  }
}

TEST(InferenceServiceTest, ScoreReturnsOneScorePerContinuation) {
  TestServer t;
  v1::ScoreRequest request;
  request.set_prompt("the cat");
  request.add_continuations("ab");
  request.add_continuations("xyz");
  v1::ScoreResponse response;
  grpc::Status status = t.client->Score(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.scores_size(), 2);
  EXPECT_DOUBLE_EQ(response.scores(0).logprob(), -1.0);
  EXPECT_TRUE(response.scores(0).is_greedy());
  EXPECT_EQ(response.scores(1).tokens_size(), 3);
  EXPECT_FALSE(response.scores(1).is_greedy());
  EXPECT_EQ(response.usage().prompt_tokens(), 8);
  EXPECT_EQ(response.usage().completion_tokens(), 5);
  EXPECT_FALSE(response.request_id().empty());

  request.clear_continuations();
  EXPECT_EQ(t.client->Score(request, &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(InferenceServiceTest, AfterBeginShutdownNewCallsAreUnavailable) {
  TestServer t;
  t.server->BeginShutdown();
  v1::GenerateResponse response;
  grpc::Status status = t.client->Generate(MakeRequest("x", 1), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "server is shutting down");
  EXPECT_EQ(Stream(*t.client, MakeRequest("x", 1)).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(t.engine->submitted(), 0);
}

TEST(InferenceServiceTest, RunningStreamsFailUnavailableWhenTheEngineStopsWithoutDrain) {
  FakeEngineOptions options;
  options.step_delay = absl::Milliseconds(10);
  TestServer t(options);
  StreamResult result;
  std::thread reader([&] { result = Stream(*t.client, MakeRequest("long", 4000)); });
  ASSERT_TRUE(t.engine->WaitForSubmitted(1, absl::Seconds(5)));
  t.server->BeginShutdown();
  t.engine->Shutdown(absl::ZeroDuration());
  reader.join();
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::UNAVAILABLE);
}

TEST(InferenceServiceTest, DrainingLetsRunningStreamsFinish) {
  FakeEngineOptions options;
  options.step_delay = absl::Milliseconds(5);
  TestServer t(options);
  StreamResult result;
  std::thread reader([&] { result = Stream(*t.client, MakeRequest("short", 20)); });
  ASSERT_TRUE(t.engine->WaitForSubmitted(1, absl::Seconds(5)));
  t.server->BeginShutdown();
  t.engine->Shutdown(absl::Seconds(10));
  reader.join();
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.ids().size(), 20u);
}

}  // namespace
}  // namespace adapterd::testing
