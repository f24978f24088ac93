// adapterd's server in front of the FakeEngine: the same flags, no model.
// Lets the client tools (adapterctl, the Python example) be tested end to end
// without torch. Extra environment: FAKE_ENGINE_STEP_MS (default 1),
// FAKE_TRAIN_STEP_MS (default 2; a training step of the fake trainer).

#include <signal.h>

#include <cstdlib>
#include <cstring>
#include <memory>

#include "server/server.h"
#include "server/server_config.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"
#include "tests/server/fake_engine.h"

int main(int argc, char** argv) {
  int exit_code = 0;
  std::optional<adapterd::ServerConfig> config =
      adapterd::ParseServerConfig(argc, argv, &exit_code);
  if (!config.has_value()) return exit_code;
  spdlog::set_default_logger(spdlog::stderr_color_mt("fake_adapterd"));
  spdlog::set_level(spdlog::level::from_str(config->log_level));
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  adapterd::testing::FakeEngineOptions options;
  const char* step = std::getenv("FAKE_ENGINE_STEP_MS");
  options.step_delay = absl::Milliseconds(step != nullptr ? std::atoi(step) : 1);
  const char* train_step = std::getenv("FAKE_TRAIN_STEP_MS");
  options.train_step_delay = absl::Milliseconds(train_step != nullptr ? std::atoi(train_step) : 2);
  options.limits = adapterd::ToEngineOptions(*config).limits;
  auto engine = std::make_unique<adapterd::testing::FakeEngine>(options);
  absl::StatusOr<std::unique_ptr<adapterd::Server>> server =
      adapterd::Server::Start(adapterd::ToServerOptions(*config), engine.get());
  if (!server.ok()) {
    spdlog::error("cannot start the server: {}", server.status().ToString());
    return 1;
  }
  spdlog::info("fake adapterd listening on {}", (*server)->address());
  int signal_number = 0;
  sigwait(&signals, &signal_number);
  spdlog::info("received {}: draining", strsignal(signal_number));
  (*server)->BeginShutdown();  // Also stops training jobs (they stay QUEUED).
  engine->Shutdown(absl::Seconds(config->drain_timeout_seconds));
  (*server)->Shutdown(absl::Seconds(5));
  spdlog::info("stopped");
  return 0;
}
