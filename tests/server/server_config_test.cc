#include "server/server_config.h"

#include <cstdlib>
#include <vector>

#include "gtest/gtest.h"

namespace adapterd {
namespace {

std::optional<ServerConfig> Parse(std::vector<const char*> args, int* exit_code) {
  args.insert(args.begin(), "adapterd");
  return ParseServerConfig(static_cast<int>(args.size()), args.data(), exit_code);
}

TEST(ServerConfigTest, DefaultsMatchTheDocumentation) {
  int exit_code = -1;
  std::optional<ServerConfig> c = Parse({}, &exit_code);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(exit_code, 0);
  EXPECT_EQ(c->listen, "127.0.0.1:50051");
  EXPECT_EQ(c->model_dir, "");
  EXPECT_EQ(c->data_dir, "./data");
  EXPECT_EQ(c->device, "cpu");
  EXPECT_EQ(c->log_level, "info");
}

TEST(ServerConfigTest, FlagsAreParsedAndReachTheEngineOptions) {
  int exit_code = -1;
  std::optional<ServerConfig> c = Parse({"--listen",
                                         "0.0.0.0:9000",
                                         "--model",
                                         "/m",
                                         "--data-dir",
                                         "/d",
                                         "--device",
                                         "cuda:1",
                                         "--dtype",
                                         "bfloat16",
                                         "--max-batch-size",
                                         "8",
                                         "--max-queue",
                                         "3",
                                         "--threads",
                                         "2",
                                         "--max-message-bytes",
                                         "2048",
                                         "--log-level",
                                         "debug",
                                         "--drain-timeout",
                                         "1.5"},
                                        &exit_code);
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->drain_timeout_seconds, 1.5);
  const EngineOptions e = ToEngineOptions(*c);
  EXPECT_EQ(e.model_dir, "/m");
  EXPECT_EQ(e.data_dir, "/d");
  EXPECT_EQ(e.device, "cuda:1");
  EXPECT_EQ(e.dtype, "bfloat16");
  EXPECT_EQ(e.num_threads, 2);
  EXPECT_EQ(e.limits.max_batch_size, 8);
  EXPECT_EQ(e.limits.max_queue, 3);
  EXPECT_EQ(e.limits.max_prompt_bytes, 2048);
  const ServerOptions s = ToServerOptions(*c);
  EXPECT_EQ(s.listen, "0.0.0.0:9000");
  EXPECT_EQ(s.max_message_bytes, 2048);
}

TEST(ServerConfigTest, EnvironmentVariablesApplyAndFlagsWin) {
  setenv("ADAPTERD_MAX_QUEUE", "77", 1);
  setenv("ADAPTERD_LISTEN", "127.0.0.1:1234", 1);
  int exit_code = -1;
  std::optional<ServerConfig> c = Parse({"--listen", "127.0.0.1:5678"}, &exit_code);
  unsetenv("ADAPTERD_MAX_QUEUE");
  unsetenv("ADAPTERD_LISTEN");
  ASSERT_TRUE(c.has_value());
  EXPECT_EQ(c->max_queue, 77);
  EXPECT_EQ(c->listen, "127.0.0.1:5678");
}

TEST(ServerConfigTest, TrainingFlagsAndTheirEnvironmentVariablesReachTheServerOptions) {
  setenv("ADAPTERD_MAX_TRAINING_JOBS", "3", 1);
  setenv("ADAPTERD_KEEP_FAILED_JOB_DIRS", "5", 1);
  int exit_code = -1;
  std::optional<ServerConfig> c =
      Parse({"--max-dataset-bytes", "1000", "--max-tenant-dataset-bytes", "5000",
             "--training-progress-interval", "0.5", "--training-memory-bytes", "123456"},
            &exit_code);
  unsetenv("ADAPTERD_MAX_TRAINING_JOBS");
  unsetenv("ADAPTERD_KEEP_FAILED_JOB_DIRS");
  ASSERT_TRUE(c.has_value());
  const ServerOptions s = ToServerOptions(*c);
  EXPECT_EQ(s.training.max_jobs, 3);
  EXPECT_EQ(s.training.max_dataset_bytes, 1000);
  EXPECT_EQ(s.training.max_tenant_dataset_bytes, 5000);
  EXPECT_EQ(s.training.progress_interval, absl::Milliseconds(500));
  EXPECT_EQ(s.training.keep_failed_work_dirs, absl::Hours(5));
  EXPECT_EQ(s.training.memory_budget_bytes, 123456);
  std::optional<ServerConfig> d = Parse({}, &exit_code);
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(ToServerOptions(*d).training.max_jobs, 1);
  EXPECT_FALSE(Parse({"--max-training-jobs", "0"}, &exit_code).has_value());
}

TEST(ServerConfigTest, BadValuesStopWithANonZeroExitCode) {
  int exit_code = 0;
  EXPECT_FALSE(Parse({"--dtype", "int3"}, &exit_code).has_value());
  EXPECT_NE(exit_code, 0);
  exit_code = 0;
  EXPECT_FALSE(Parse({"--max-batch-size", "0"}, &exit_code).has_value());
  EXPECT_NE(exit_code, 0);
  exit_code = 0;
  EXPECT_FALSE(Parse({"--no-such-flag"}, &exit_code).has_value());
  EXPECT_NE(exit_code, 0);
}

TEST(ServerConfigTest, HelpExitsWithZero) {
  int exit_code = -1;
  EXPECT_FALSE(Parse({"--help"}, &exit_code).has_value());
  EXPECT_EQ(exit_code, 0);
}

}  // namespace
}  // namespace adapterd
