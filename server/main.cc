// adapterd: the server binary. Loads the model into the engine, serves gRPC,
// and on SIGTERM/SIGINT drains: health NOT_SERVING, new calls UNAVAILABLE,
// running requests finish for up to --drain-timeout, then the server stops.

#include <signal.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "absl/time/time.h"
#include "engine/api/engine.h"
#include "server/adapter_resolver.h"
#include "server/server.h"
#include "server/server_config.h"
#include "spdlog/sinks/stdout_color_sinks.h"
#include "spdlog/spdlog.h"

#ifndef ADAPTERD_VERSION
#define ADAPTERD_VERSION "0.0.0"
#endif

int main(int argc, char** argv) {
  int exit_code = 0;
  std::optional<adapterd::ServerConfig> config =
      adapterd::ParseServerConfig(argc, argv, &exit_code);
  if (!config.has_value()) return exit_code;

  spdlog::set_default_logger(spdlog::stderr_color_mt("adapterd"));
  spdlog::set_level(spdlog::level::from_str(config->log_level));

  // Signals are taken synchronously by sigwait below; block them before any
  // thread starts so that every thread inherits the mask.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  adapterd::EngineOptions engine_options = adapterd::ToEngineOptions(*config);
  if (engine_options.model_dir.empty()) {
    spdlog::info("no --model given: using the embedded default demo model under {}",
                 engine_options.data_dir);
  } else {
    spdlog::info("loading model from {}", engine_options.model_dir);
  }
  absl::StatusOr<std::unique_ptr<adapterd::Engine>> engine = adapterd::CreateEngine(engine_options);
  if (!engine.ok()) {
    const bool adapter_error = engine.status().message().rfind("adapter \"", 0) == 0 ||
                               engine.status().message().rfind("--merge-adapter", 0) == 0;
    spdlog::error("{}: {}", adapter_error ? "cannot load an adapter" : "cannot load the model",
                  engine.status().ToString());
    return 1;
  }
  const adapterd::ModelInfo& info = (*engine)->info();
  spdlog::info("model {} ({} / {}) on {} as {}, context {}, vocab {}{}", info.name,
               info.architecture, info.model_type, info.device, info.dtype, info.context_length,
               info.vocab_size,
               info.is_default_model ? " [default demo model, not for quality]" : "");

  for (const adapterd::AdapterInfo& a : info.adapters) {
    spdlog::info("adapter {}@{} ({}, {} bytes) from {}", a.name, a.version, a.method, a.bytes,
                 a.path);
  }
  if (!info.merged_adapter.empty()) {
    spdlog::info("adapter {} is merged into the weights: a dedicated deployment",
                 info.merged_adapter);
  }
  adapterd::ServerOptions server_options = adapterd::ToServerOptions(*config);
  // The store validates adapters with the engine's real check (shapes against
  // this base model), so a request never meets an adapter that does not fit.
  server_options.adapter_store.validator = adapterd::EngineAdapterValidator(engine->get());
  spdlog::info("adapter cache: device tier {} bytes, host tier {} bytes",
               engine_options.adapter_cache_bytes, engine_options.adapter_host_cache_bytes);
  absl::StatusOr<std::unique_ptr<adapterd::Server>> server =
      adapterd::Server::Start(server_options, engine->get());
  if (!server.ok()) {
    spdlog::error("cannot start the server: {}", server.status().ToString());
    (*engine)->Shutdown(absl::ZeroDuration());
    return 1;
  }
  spdlog::info("adapterd {} listening on {}", ADAPTERD_VERSION, (*server)->address());
  spdlog::info("training: up to {} job(s) at once; jobs and datasets under {}",
               server_options.training.max_jobs, server_options.adapter_store.root);

  int signal_number = 0;
  sigwait(&signals, &signal_number);
  const absl::Duration drain = absl::Seconds(config->drain_timeout_seconds);
  spdlog::info("received {}: draining for up to {}", strsignal(signal_number),
               absl::FormatDuration(drain));
  (*server)->BeginShutdown();
  (*engine)->Shutdown(drain);
  (*server)->Shutdown(absl::Seconds(5));
  spdlog::info("stopped");
  return 0;
}
