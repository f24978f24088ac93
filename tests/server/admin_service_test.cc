#include "server/admin_service.h"

#include "gtest/gtest.h"
#include "tests/server/test_server.h"

namespace adapterd::testing {
namespace {

TEST(AdminServiceTest, ServerInfoDescribesTheModelAndTheLimits) {
  FakeEngineOptions options;
  options.limits.max_batch_size = 7;
  options.limits.max_tokens = 99;
  TestServer t(options);
  v1::ServerInfo info;
  grpc::Status status = t.client->GetServerInfo(&info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_FALSE(info.version().empty());
  EXPECT_EQ(info.model().name(), "fake");
  EXPECT_EQ(info.model().architecture(), "llama");
  EXPECT_EQ(info.model().vocab_size(), 1000);
  EXPECT_EQ(info.model().context_length(), 256);
  EXPECT_EQ(info.model().num_kv_heads(), 2);
  EXPECT_EQ(info.model().fingerprint(), "fake-fingerprint");
  EXPECT_EQ(info.limits().max_batch_size(), 7);
  EXPECT_EQ(info.limits().max_tokens(), 99);
  EXPECT_EQ(info.limits().max_message_bytes(), 4 << 20);
  EXPECT_FALSE(info.auth_enabled());
}

TEST(AdminServiceTest, StatsCountFinishedAndCancelledRequests) {
  TestServer t;
  v1::GenerateResponse response;
  ASSERT_TRUE(t.client->Generate(MakeRequest("abc", 4), &response).ok());
  ASSERT_TRUE(t.engine->WaitForIdle(absl::Seconds(5)));
  v1::ServerStats stats;
  ASSERT_TRUE(t.client->GetStats(&stats).ok());
  EXPECT_EQ(stats.requests_finished(), 1);
  EXPECT_EQ(stats.generated_tokens(), 4);
  EXPECT_EQ(stats.prompt_tokens(), 4);
  EXPECT_EQ(stats.running(), 0);
  EXPECT_EQ(stats.free_slots(), 32);
  EXPECT_GT(stats.uptime_seconds(), 0.0);
}

}  // namespace
}  // namespace adapterd::testing
