#include "server/server_config.h"

#include <CLI/CLI.hpp>

#include <cstdio>
#include <cstdlib>
#include <fstream>

#include "absl/strings/ascii.h"
#include "adapters_store/tenant_registry.h"

namespace adapterd {

std::optional<ServerConfig> ParseServerConfig(int argc, const char* const* argv, int* exit_code) {
  ServerConfig c;
  CLI::App app{"adapterd: serves one base LLM and its adapters over gRPC", "adapterd"};
  app.add_option("--listen", c.listen, "Address to listen on, host:port (port 0: any free port)")
      ->envname("ADAPTERD_LISTEN")
      ->capture_default_str();
  app.add_option("--model", c.model_dir,
                 "HF model directory (config.json, *.safetensors, tokenizer.json); empty: the "
                 "embedded default demo model, materialised under --data-dir")
      ->envname("ADAPTERD_MODEL");
  app.add_option("--data-dir", c.data_dir, "Server data directory")
      ->envname("ADAPTERD_DATA_DIR")
      ->capture_default_str();
  app.add_option("--device", c.device, "cpu, cuda or cuda:N")
      ->envname("ADAPTERD_DEVICE")
      ->capture_default_str();
  app.add_option("--dtype", c.dtype, "float32, float16 or bfloat16 (default: the model's own)")
      ->envname("ADAPTERD_DTYPE")
      ->check(CLI::IsMember({"", "float32", "float16", "bfloat16"}));
  app.add_option("--max-batch-size", c.max_batch_size, "Sequences decoded together in one step")
      ->envname("ADAPTERD_MAX_BATCH_SIZE")
      ->check(CLI::Range(1, 4096))
      ->capture_default_str();
  app.add_option("--max-queue", c.max_queue,
                 "Requests waiting for a slot before RESOURCE_EXHAUSTED")
      ->envname("ADAPTERD_MAX_QUEUE")
      ->check(CLI::Range(0, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-tokens", c.max_tokens, "Largest max_tokens a request may ask for")
      ->envname("ADAPTERD_MAX_TOKENS")
      ->check(CLI::Range(1, 1 << 20))
      ->capture_default_str();
  app.add_option("--max-context", c.max_context,
                 "Tokens per sequence (0: the model's max_position_embeddings, capped at 4096)")
      ->envname("ADAPTERD_MAX_CONTEXT")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 24))
      ->capture_default_str();
  app.add_option("--threads", c.threads, "CPU intra-op threads (0: torch's default)")
      ->envname("ADAPTERD_THREADS")
      ->check(CLI::Range(0, 1024))
      ->capture_default_str();
  app.add_option("--max-message-bytes", c.max_message_bytes,
                 "Largest gRPC message received or sent")
      ->envname("ADAPTERD_MAX_MESSAGE_BYTES")
      ->check(CLI::Range(int64_t{1} << 10, int64_t{1} << 30))
      ->capture_default_str();
  app.add_option("--log-level", c.log_level, "trace, debug, info, warn, error or off")
      ->envname("ADAPTERD_LOG_LEVEL")
      ->check(CLI::IsMember({"trace", "debug", "info", "warn", "error", "critical", "off"}))
      ->capture_default_str();
  app.add_option("--drain-timeout", c.drain_timeout_seconds,
                 "Seconds running requests may take to finish on SIGTERM/SIGINT")
      ->envname("ADAPTERD_DRAIN_TIMEOUT")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--allowed-adapter-root", c.allowed_adapter_roots,
                 "Directory RegisterAdapter may read adapters from (repeatable; none: "
                 "registration from server paths is disabled)")
      ->envname("ADAPTERD_ALLOWED_ADAPTER_ROOT")
      ->delimiter(',')
      ->check(CLI::ExistingDirectory);
  app.add_option("--max-adapter-bytes", c.max_adapter_bytes,
                 "Largest adapter (all files of one version) accepted by upload or register")
      ->envname("ADAPTERD_MAX_ADAPTER_BYTES")
      ->check(CLI::Range(int64_t{1} << 10, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--adapter-cache-bytes", c.adapter_cache_bytes,
                 "Device-tier budget of the loaded-adapter cache (on the CPU: the CPU tensors); "
                 "only adapters in use by requests or pinned are never evicted")
      ->envname("ADAPTERD_ADAPTER_CACHE_BYTES")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 44))
      ->capture_default_str();
  app.add_option("--adapter-host-cache-bytes", c.adapter_host_cache_bytes,
                 "Host-tier budget of the loaded-adapter cache (pinned host memory on CUDA): "
                 "evicted adapters stay here and go back up without reading the disk")
      ->envname("ADAPTERD_ADAPTER_HOST_CACHE_BYTES")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 44))
      ->capture_default_str();
  std::vector<std::string> adapters;
  app.add_option("--adapter", adapters,
                 "An adapter to serve, NAME=DIR (HF PEFT or AdapterHub directory, safetensors "
                 "only); repeatable. Requests select it as NAME or NAME@1. A bad adapter fails "
                 "start-up")
      ->envname("ADAPTERD_ADAPTERS")
      ->delimiter(',')
      ->check([](const std::string& v) -> std::string {
        const size_t eq = v.find('=');
        if (eq == std::string::npos || eq == 0 || eq + 1 == v.size()) {
          return "expected NAME=DIR, got '" + v + "'";
        }
        if (v.substr(0, eq).find('@') != std::string::npos) return "adapter names cannot contain '@'";
        return "";
      });
  app.add_option("--merge-adapter", c.merge_adapter,
                 "Merge this LoRA adapter (one of --adapter) into the weights: a dedicated "
                 "single-adapter deployment where every request must name it")
      ->envname("ADAPTERD_MERGE_ADAPTER");
  app.add_option("--max-training-jobs", c.max_training_jobs,
                 "Training jobs that run at once (each on its own thread); more wait QUEUED")
      ->envname("ADAPTERD_MAX_TRAINING_JOBS")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  app.add_option("--max-dataset-bytes", c.max_dataset_bytes, "Largest training dataset upload")
      ->envname("ADAPTERD_MAX_DATASET_BYTES")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40))
      ->capture_default_str();
  app.add_option("--max-tenant-dataset-bytes", c.max_tenant_dataset_bytes,
                 "Bytes of datasets one tenant may store (0: unlimited)")
      ->envname("ADAPTERD_MAX_TENANT_DATASET_BYTES")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 44))
      ->capture_default_str();
  app.add_option("--training-progress-interval", c.training_progress_interval_seconds,
                 "Seconds between writes of a running job's progress to the database (watchers "
                 "see every step)")
      ->envname("ADAPTERD_TRAINING_PROGRESS_INTERVAL")
      ->check(CLI::Range(0.0, 3600.0))
      ->capture_default_str();
  app.add_option("--keep-failed-job-dirs", c.keep_failed_job_dirs_hours,
                 "Hours a failed job's work dir (its last checkpoint) is kept under "
                 "DATA_DIR/jobs")
      ->envname("ADAPTERD_KEEP_FAILED_JOB_DIRS")
      ->check(CLI::Range(0.0, 24.0 * 365))
      ->capture_default_str();
  app.add_option("--training-memory-bytes", c.training_memory_bytes,
                 "Activations and optimizer state one training job may use (0: the engine's "
                 "default); a job that cannot fit is refused at create")
      ->envname("ADAPTERD_TRAINING_MEMORY_BYTES")
      ->check(CLI::Range(int64_t{0}, int64_t{1} << 44))
      ->capture_default_str();
  app.add_flag("--insecure-no-auth", c.insecure_no_auth,
               "Turn authentication off: every caller is the tenant \"default\" with the admin "
               "role (local trials only)")
      ->envname("ADAPTERD_INSECURE_NO_AUTH");
  std::string admin_key_file;
  app.add_option("--admin-key-file", admin_key_file,
                 "File whose first line is a bootstrap admin API key (32-256 characters of "
                 "[A-Za-z0-9._~+/=-]); ADAPTERD_ADMIN_KEY may hold the key itself. Neither: a "
                 "fresh data dir gets a generated admin key, logged once")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-cert", c.tls_cert, "PEM certificate chain of the server (TLS)")
      ->envname("ADAPTERD_TLS_CERT")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-key", c.tls_key, "PEM private key of the server (TLS)")
      ->envname("ADAPTERD_TLS_KEY")
      ->check(CLI::ExistingFile);
  app.add_option("--tls-client-ca", c.tls_client_ca,
                 "PEM CA bundle: require client certificates signed by it (mutual TLS)")
      ->envname("ADAPTERD_TLS_CLIENT_CA")
      ->check(CLI::ExistingFile);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    *exit_code = app.exit(e);
    return std::nullopt;
  }
  for (const std::string& a : adapters) {
    const size_t eq = a.find('=');
    c.adapters.push_back({a.substr(0, eq), a.substr(eq + 1)});
  }
  if (!admin_key_file.empty()) {
    std::ifstream in(admin_key_file);
    std::getline(in, c.admin_key);
    c.admin_key = std::string(absl::StripAsciiWhitespace(c.admin_key));
    if (c.admin_key.empty()) {
      std::fprintf(stderr, "--admin-key-file: %s holds no key\n", admin_key_file.c_str());
      *exit_code = 2;
      return std::nullopt;
    }
  } else if (const char* env = std::getenv("ADAPTERD_ADMIN_KEY"); env != nullptr) {
    c.admin_key = std::string(absl::StripAsciiWhitespace(env));
  }
  if (!c.admin_key.empty() && !IsWellFormedKey(c.admin_key)) {
    std::fprintf(stderr,
                 "the bootstrap admin key must be 32 to 256 characters of [A-Za-z0-9._~+/=-]\n");
    *exit_code = 2;
    return std::nullopt;
  }
  *exit_code = 0;
  return c;
}

EngineOptions ToEngineOptions(const ServerConfig& config) {
  EngineOptions options;
  options.model_dir = config.model_dir;
  options.data_dir = config.data_dir;
  options.device = config.device;
  options.dtype = config.dtype;
  options.num_threads = config.threads;
  options.max_context = config.max_context;
  options.limits.max_batch_size = config.max_batch_size;
  options.limits.max_queue = config.max_queue;
  options.limits.max_tokens = config.max_tokens;
  options.adapters = config.adapters;
  options.merge_adapter = config.merge_adapter;
  options.max_adapter_bytes = config.max_adapter_bytes;
  options.adapter_cache_bytes = config.adapter_cache_bytes;
  options.adapter_host_cache_bytes = config.adapter_host_cache_bytes;
  // A prompt must fit in a message with room for the other fields.
  options.limits.max_prompt_bytes =
      std::min<int64_t>(options.limits.max_prompt_bytes, config.max_message_bytes);
  return options;
}

ServerOptions ToServerOptions(const ServerConfig& config) {
  ServerOptions options;
  options.listen = config.listen;
  options.max_message_bytes = config.max_message_bytes;
  options.adapter_store.root = config.data_dir;
  options.adapter_store.allowed_roots = config.allowed_adapter_roots;
  options.adapter_store.max_adapter_bytes = config.max_adapter_bytes;
  options.training.max_jobs = config.max_training_jobs;
  options.training.max_dataset_bytes = config.max_dataset_bytes;
  options.training.max_tenant_dataset_bytes = config.max_tenant_dataset_bytes;
  options.training.progress_interval = absl::Seconds(config.training_progress_interval_seconds);
  options.training.keep_failed_work_dirs = absl::Hours(config.keep_failed_job_dirs_hours);
  options.training.memory_budget_bytes = config.training_memory_bytes;
  options.auth_enabled = !config.insecure_no_auth;
  options.admin_key = config.admin_key;
  options.tls_cert_file = config.tls_cert;
  options.tls_key_file = config.tls_key;
  options.tls_client_ca_file = config.tls_client_ca;
  return options;
}

}  // namespace adapterd
