#pragma once

// adapterd's command line. Every flag also reads an ADAPTERD_* environment
// variable (--max-batch-size ↔ ADAPTERD_MAX_BATCH_SIZE); a flag wins.

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/api/engine.h"
#include "server/server.h"

namespace adapterd {

struct ServerConfig {
  std::string listen = "127.0.0.1:50051";
  std::string model_dir;  // Empty: the embedded default model under data_dir.
  std::string data_dir = "./data";
  std::string device = "cpu";
  std::string dtype;  // Empty: the model's own.
  int max_batch_size = 32;
  int max_queue = 1024;
  int max_tokens = 4096;
  int64_t max_context = 0;
  int threads = 0;
  int64_t max_message_bytes = 4 << 20;
  std::string log_level = "info";
  double drain_timeout_seconds = 30.0;
  // The adapter store (under data_dir): RegisterAdapter reads only below these
  // roots; the size limit applies to all files of one adapter version.
  std::vector<std::string> allowed_adapter_roots;
  int64_t max_adapter_bytes = int64_t{2} << 30;
  // The engine's loaded-adapter cache: device-tier and host-tier budgets.
  int64_t adapter_cache_bytes = int64_t{1} << 30;
  int64_t adapter_host_cache_bytes = int64_t{2} << 30;
  // Adapters loaded at start-up (--adapter NAME=DIR, repeatable) and the one
  // merged into the weights for a dedicated deployment (--merge-adapter).
  std::vector<AdapterSpec> adapters;
  std::string merge_adapter;
  // Training: jobs training at once, dataset size limits, how often a
  // running job's progress is persisted, how long a failed job's work dir
  // (its checkpoint) is kept.
  int max_training_jobs = 1;
  int64_t max_dataset_bytes = int64_t{1} << 30;
  int64_t max_tenant_dataset_bytes = int64_t{10} << 30;
  double training_progress_interval_seconds = 2.0;
  double keep_failed_job_dirs_hours = 72.0;
  int64_t training_memory_bytes = 0;
  // Security: authentication is on unless --insecure-no-auth; the bootstrap
  // admin key comes from --admin-key-file (its first line) or
  // ADAPTERD_ADMIN_KEY; TLS from --tls-cert/--tls-key (+ --tls-client-ca: mTLS).
  bool insecure_no_auth = false;
  std::string admin_key;
  std::string tls_cert;
  std::string tls_key;
  std::string tls_client_ca;
};

// Parses `argv` and the environment. Returns nullopt when the process should
// exit instead of serving: after --help (exit code 0) or a usage error (its
// message printed, exit code non-zero); `*exit_code` says which.
std::optional<ServerConfig> ParseServerConfig(int argc, const char* const* argv, int* exit_code);

EngineOptions ToEngineOptions(const ServerConfig& config);
ServerOptions ToServerOptions(const ServerConfig& config);

}  // namespace adapterd
