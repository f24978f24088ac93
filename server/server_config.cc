#include "server/server_config.h"

#include <CLI/CLI.hpp>

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
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    *exit_code = app.exit(e);
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
  // A prompt must fit in a message with room for the other fields.
  options.limits.max_prompt_bytes =
      std::min<int64_t>(options.limits.max_prompt_bytes, config.max_message_bytes);
  return options;
}

ServerOptions ToServerOptions(const ServerConfig& config) {
  ServerOptions options;
  options.listen = config.listen;
  options.max_message_bytes = config.max_message_bytes;
  return options;
}

}  // namespace adapterd
