// Per-tenant quotas over real loopback gRPC: requests per second, requests in
// flight, tokens per minute and storage, each answered RESOURCE_EXHAUSTED
// with a "retry-after-ms" trailer; and a noisy-neighbour measurement.

#include "server/quota.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "tests/server/auth_test_util.h"

namespace adapterd::testing {
namespace {

struct Result {
  grpc::Status status;
  int64_t retry_after_ms = -1;  // -1: no trailer.
  double ms = 0;
};

Result Generate(AuthServer& s, const std::string& key, int max_tokens = 2) {
  grpc::ClientContext context;
  Attach(&context, Bearer("k", key));
  v1::GenerateRequest r;
  r.set_prompt("hi");
  r.mutable_sampling()->set_max_tokens(max_tokens);
  v1::GenerateResponse response;
  const absl::Time start = absl::Now();
  Result out;
  out.status = s.inference->Generate(&context, r, &response);
  out.ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  const auto& trailers = context.GetServerTrailingMetadata();
  auto it = trailers.find(kRetryAfterMetadata);
  if (it != trailers.end()) {
    int64_t v = 0;
    if (absl::SimpleAtoi(absl::string_view(it->second.data(), it->second.size()), &v)) {
      out.retry_after_ms = v;
    }
  }
  return out;
}

TEST(QuotaTest, RequestsPerSecondIsATokenBucketWithARetryHint) {
  TenantQuotas a;
  a.requests_per_second = 2;  // Burst 2.
  AuthServer s({}, a);
  EXPECT_TRUE(Generate(s, s.key_a).status.ok());
  EXPECT_TRUE(Generate(s, s.key_a).status.ok());
  Result over = Generate(s, s.key_a);
  ASSERT_EQ(over.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(over.status.error_message().find("requests per second; retry after"), std::string::npos)
      << over.status.error_message();
  EXPECT_GT(over.retry_after_ms, 0);
  EXPECT_LE(over.retry_after_ms, 500);
  // Tenant b is not limited by a's quota.
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(Generate(s, s.key_b).status.ok());
  // After the hinted delay a's next request is admitted.
  absl::SleepFor(absl::Milliseconds(over.retry_after_ms + 20));
  EXPECT_TRUE(Generate(s, s.key_a).status.ok());
}

TEST(QuotaTest, RequestsInFlightAreCappedPerTenantAndFreedWhenTheyFinish) {
  TenantQuotas a;
  a.max_concurrent_requests = 1;
  FakeEngineOptions engine;
  engine.step_delay = absl::Milliseconds(5);
  AuthServer s(engine, a);
  grpc::ClientContext long_context;
  Attach(&long_context, Bearer("a", s.key_a));
  v1::GenerateRequest r;
  r.set_prompt("long");
  r.mutable_sampling()->set_max_tokens(200);  // ~1 s.
  auto reader = s.inference->GenerateStream(&long_context, r);
  v1::GenerateStreamResponse chunk;
  ASSERT_TRUE(reader->Read(&chunk));  // Running now.
  Result over = Generate(s, s.key_a);
  ASSERT_EQ(over.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(over.status.error_message().find("requests in flight (limit 1)"), std::string::npos);
  EXPECT_GT(over.retry_after_ms, 0);
  EXPECT_TRUE(Generate(s, s.key_b).status.ok());  // Another tenant is unaffected.
  long_context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  reader->Finish().IgnoreError();
  // The slot comes back once the engine has finished with the cancelled request.
  const absl::Time until = absl::Now() + absl::Seconds(5);
  while (s.server->quotas()->InFlight("a") > 0 && absl::Now() < until) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(s.server->quotas()->InFlight("a"), 0);
  EXPECT_TRUE(Generate(s, s.key_a).status.ok());
}

TEST(QuotaTest, TokensPerMinuteCountsPromptAndCompletionTokens) {
  TenantQuotas a;
  a.tokens_per_minute = 30;
  AuthServer s({}, a);
  // 3 prompt tokens (BOS + "hi") + 40 completion tokens: overdraws the bucket.
  Result first = Generate(s, s.key_a, 40);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  Result over = Generate(s, s.key_a);
  ASSERT_EQ(over.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(over.status.error_message().find("30 tokens per minute; retry after"),
            std::string::npos)
      << over.status.error_message();
  // The debt is ~13 tokens at 0.5 tokens/s: about 28 s.
  EXPECT_GT(over.retry_after_ms, 20000);
  EXPECT_LT(over.retry_after_ms, 40000);
  EXPECT_TRUE(Generate(s, s.key_b, 40).status.ok());
}

TEST(QuotaTest, StorageQuotasRefuseTheUploadThatWouldExceedThem) {
  TenantQuotas a;
  a.max_adapters = 2;
  TenantQuotas b;
  b.max_adapter_bytes = 1500;  // One small LoRA is 750..1500 bytes: room for one.
  AuthServer s({}, a, b);
  v1::AdapterInfo info;
  ASSERT_TRUE(s.Upload(s.key_a, "one", &info).ok());
  ASSERT_TRUE(s.Upload(s.key_a, "two", &info).ok());
  grpc::Status third = s.Upload(s.key_a, "three", &info);
  EXPECT_EQ(third.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(third.error_message().find("storage quota"), std::string::npos);
  ASSERT_TRUE(s.Upload(s.key_b, "one", &info).ok()) << "size " << info.size_bytes();
  ASSERT_LT(info.size_bytes(), 1500);
  ASSERT_GT(info.size_bytes(), 750);
  grpc::Status big = s.Upload(s.key_b, "two", &info);
  EXPECT_EQ(big.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(big.error_message().find("bytes"), std::string::npos);
  // Deleting makes room; nothing of the refused uploads is visible.
  v1::ListAdaptersResponse listed;
  ASSERT_TRUE(s.ClientFor(s.key_a)->ListAdapters(v1::ListAdaptersRequest(), &listed).ok());
  EXPECT_EQ(listed.adapters_size(), 2);
  v1::DeleteAdapterRequest dr;
  dr.set_adapter("one");
  dr.set_all_versions(true);
  v1::DeleteAdapterResponse dresp;
  ASSERT_TRUE(s.ClientFor(s.key_a)->DeleteAdapter(dr, &dresp).ok());
  EXPECT_TRUE(s.Upload(s.key_a, "three", &info).ok());
}

TEST(QuotaTest, UpdatedQuotasApplyToTheNextRequest) {
  AuthServer s;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(Generate(s, s.key_a).status.ok());
  grpc::ClientContext context;
  Attach(&context, Bearer("admin", s.admin_key));
  v1::UpdateTenantRequest r;
  r.set_id("a");
  r.mutable_quotas()->set_requests_per_second(1);
  r.add_update_paths("quotas");
  v1::Tenant t;
  ASSERT_TRUE(s.admin->UpdateTenant(&context, r, &t).ok());
  EXPECT_EQ(t.quotas().requests_per_second(), 1);
  EXPECT_TRUE(Generate(s, s.key_a).status.ok());
  EXPECT_EQ(Generate(s, s.key_a).status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size())))];
}

// Tenant B at half its rate quota, alone and then beside tenant A sending
// 5× A's quota. Prints B's p50/p99 both ways and their ratio, and A's
// accepted rate; asserts only what does not depend on the machine's speed:
// B is never refused and A's excess is.
TEST(QuotaTest, NoisyNeighbourAtFiveTimesItsQuota) {
  TenantQuotas a, b;
  a.requests_per_second = 20;
  a.max_concurrent_requests = 4;
  b.requests_per_second = 20;
  b.max_concurrent_requests = 4;
  FakeEngineOptions engine;
  engine.step_delay = absl::Milliseconds(2);
  engine.limits.max_batch_size = 8;
  AuthServer s(engine, a, b);
  const absl::Duration kRun = absl::Seconds(4);
  constexpr int kTokens = 8;

  auto run_b = [&s](absl::Duration duration, std::vector<double>* latencies, int* refused) {
    const absl::Time end = absl::Now() + duration;
    absl::Time next = absl::Now();
    while (absl::Now() < end) {  // 10 rps: 50% of B's quota.
      Result r = Generate(s, s.key_b, kTokens);
      if (r.status.ok()) {
        latencies->push_back(r.ms);
      } else {
        ++*refused;
      }
      next += absl::Milliseconds(100);
      absl::SleepFor(next - absl::Now());
    }
  };
  std::vector<double> solo, noisy;
  int refused_solo = 0, refused_noisy = 0;
  run_b(kRun, &solo, &refused_solo);

  std::atomic<bool> stop{false};
  std::atomic<int> a_ok{0}, a_refused{0}, a_other{0};
  std::vector<std::thread> flood;
  for (int t = 0; t < 4; ++t) {  // 4 × 25 rps = 100 rps: 5× A's quota.
    flood.emplace_back([&] {
      absl::Time next = absl::Now();
      while (!stop.load()) {
        Result r = Generate(s, s.key_a, kTokens);
        if (r.status.ok()) {
          ++a_ok;
        } else if (r.status.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) {
          ++a_refused;
        } else {
          ++a_other;
        }
        next += absl::Milliseconds(40);
        absl::SleepFor(next - absl::Now());
      }
    });
  }
  absl::SleepFor(absl::Milliseconds(200));
  const int a_ok_before = a_ok.load();
  run_b(kRun, &noisy, &refused_noisy);
  const int a_ok_during = a_ok.load() - a_ok_before;
  stop.store(true);
  for (std::thread& t : flood) t.join();

  const double solo_p99 = Percentile(solo, 0.99), noisy_p99 = Percentile(noisy, 0.99);
  std::printf(
      "noisy neighbour: B solo p50 %.2f ms p99 %.2f ms (n=%zu); beside A at 5x quota p50 %.2f ms "
      "p99 %.2f ms (n=%zu); p99 ratio %.2f; A accepted %.1f rps of 20 (refused %d)\n",
      Percentile(solo, 0.5), solo_p99, solo.size(), Percentile(noisy, 0.5), noisy_p99, noisy.size(),
      noisy_p99 / solo_p99, a_ok_during / absl::ToDoubleSeconds(kRun), a_refused.load());
  EXPECT_EQ(refused_solo, 0);
  EXPECT_EQ(refused_noisy, 0);
  EXPECT_EQ(a_other.load(), 0);
  EXPECT_GT(a_refused.load(), 0);
  // The bucket admits at most rate × time + burst.
  EXPECT_LE(a_ok_during, 20 * absl::ToDoubleSeconds(kRun) + 20 + 5);
}

}  // namespace
}  // namespace adapterd::testing
