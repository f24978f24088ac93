#pragma once

// The front door of the engine: plain C++ types only (no torch, no protobuf).
// server/ talks to the model exclusively through this header.

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/api/training.h"

namespace adapterd {

// A loaded adapter, reported by Admin.GetServerInfo.
struct AdapterInfo {
  std::string name;
  int version = 1;
  std::string method;  // lora, prefix_tuning, p_tuning, prompt_tuning, bottleneck, fusion.
  std::string path;
  int64_t bytes = 0;  // Weight bytes held.
};

// What the engine serves, reported by Admin.GetServerInfo.
struct ModelInfo {
  std::string name;          // Directory base name, or "adapterd-default-tiny".
  std::string architecture;  // "llama" (also mistral/qwen2) or "gpt2".
  std::string model_type;    // config.json model_type as written.
  std::string dtype;         // "float32", "float16" or "bfloat16".
  std::string device;        // "cpu" or "cuda:0".
  std::string path;          // Model directory on the server.
  std::string fingerprint;   // sha256 over config.json and the safetensors headers.
  int64_t vocab_size = 0;
  int64_t context_length = 0;  // Max tokens per sequence (prompt + generated).
  int64_t num_layers = 0;
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  bool is_default_model = false;  // The embedded seeded demo model.
  std::vector<AdapterInfo> adapters;  // Loaded at start, in name order.
  std::string merged_adapter;          // Set in a --merge-adapter deployment.
};

// Limits the engine enforces; the server reports them and validates against them.
struct EngineLimits {
  int max_batch_size = 32;       // Sequences decoded together in one step.
  int max_queue = 1024;          // Requests waiting for a slot.
  int max_tokens = 4096;         // Upper bound for SamplingParams::max_tokens.
  int max_stop_sequences = 8;
  int max_stop_length = 256;     // Bytes per stop sequence.
  int max_top_logprobs = 20;
  int max_continuations = 64;    // Per Score request.
  int64_t max_prompt_bytes = 1 << 20;
};

// An adapter loaded at start-up (until the adapter store serves them).
struct AdapterSpec {
  std::string name;  // Requests select it as "name" or "name@1".
  std::string dir;   // HF PEFT or AdapterHub adapter directory (safetensors only).
};

struct EngineOptions {
  std::string model_dir;  // Empty: materialise the default model under data_dir.
  std::string data_dir = "./data";
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N".
  std::string dtype;           // Empty: the model's own dtype; else float32/float16/bfloat16.
  int num_threads = 0;         // Intra-op threads for the CPU; 0 = torch default.
  // Max tokens per sequence. 0 = the model's max_position_embeddings, capped
  // at 4096; set, it may exceed that for rotary models (not for GPT-2).
  int64_t max_context = 0;
  uint64_t default_model_seed = 1234;
  EngineLimits limits;
  // Adapters loaded and validated at start; a bad one fails CreateEngine
  // with a message naming it. Names must be unique.
  std::vector<AdapterSpec> adapters;
  // Non-empty: merge this LoRA adapter (one of `adapters`) into the weights
  // for a dedicated single-adapter deployment. Every request must then name
  // it; other adapters and the base model are refused (FAILED_PRECONDITION).
  std::string merge_adapter;
  int64_t max_adapter_bytes = int64_t{1} << 30;  // Per adapter weights file.
  // The loaded-adapter cache for store adapters: the device tier's budget
  // (on the CPU, the CPU tensors) and the host tier's (pinned host memory on
  // CUDA). Adapters of `adapters` above are outside both (a static tier).
  int64_t adapter_cache_bytes = int64_t{1} << 30;
  int64_t adapter_host_cache_bytes = int64_t{2} << 30;
  int adapter_load_workers = 1;
  // Activation and optimizer bytes a training job may use when its spec sets
  // no memory_budget_bytes (the estimate of engine/training/trainer.h).
  int64_t training_memory_bytes = int64_t{4} << 30;
};

struct SamplingParams {
  float temperature = 0.0f;  // 0 = greedy. Range [0, 100].
  int top_k = 0;             // 0 = off. Range [0, vocab].
  float top_p = 1.0f;        // Range (0, 1]; 1 = off.
  std::optional<uint64_t> seed;  // Set: reproducible sampling for this request.
  int max_tokens = 16;           // New tokens to generate, >= 1.
  std::vector<std::string> stop;  // Generation ends before the first match; not returned.
  bool logprobs = false;          // Return the chosen token's log-prob.
  int top_logprobs = 0;           // Also return this many alternatives per step.
  bool ignore_eos = false;        // Keep generating past EOS (benchmarks).
};

struct TokenLogprob {
  int32_t id = 0;
  float logprob = 0.0f;
  std::string text;  // The token decoded alone (may hold U+FFFD for a partial character).
};

// One generated (or scored) token. `text` is the token's contribution to the
// UTF-8 text stream: possibly empty while a multi-byte character is incomplete.
struct GeneratedToken {
  int32_t id = 0;
  std::string text;
  float logprob = 0.0f;  // Under the unmodified (temperature 1) distribution.
  std::vector<TokenLogprob> top;
};

enum class FinishReason {
  kLength = 0,         // max_tokens reached.
  kStop = 1,           // A stop sequence matched.
  kEos = 2,            // The model emitted an end-of-sequence token.
  kContextLength = 3,  // The sequence filled the context window.
};

struct GenerateResult {
  FinishReason finish_reason = FinishReason::kLength;
  int prompt_tokens = 0;
  int completion_tokens = 0;
};

// Set by the frontend to stop a request; the engine checks it every step and
// frees the slot. Thread-safe.
class CancellationToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_release); }
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }

 private:
  std::atomic<bool> cancelled_{false};
};

// Receives a generation's output. Called on the engine thread, in order:
// any number of OnTokens, then exactly one OnFinish. Implementations must not
// block (queue and return).
class GenerateSink {
 public:
  virtual ~GenerateSink() = default;
  virtual void OnTokens(std::vector<GeneratedToken> tokens) = 0;
  // `status` is OK, CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE (shutdown) or
  // INTERNAL. `result` is meaningful for OK and carries usage otherwise.
  virtual void OnFinish(absl::Status status, const GenerateResult& result) = 0;
};

// An adapter version the server resolved through the adapter store, handed
// to the engine with a request. The engine's cache keys on (adapter_id,
// version), never the name; `pin` keeps the version's files on disk while the
// engine may still read them (a version deleted meanwhile is removed when the
// last pin goes). A handle with an empty adapter_id names a start-up adapter
// (--adapter NAME=DIR) by `name` ("name" or "name@1").
struct AdapterHandle {
  std::string name;        // For messages and logs.
  std::string adapter_id;  // Stable across versions of a name.
  int64_t version = 0;
  std::string dir;     // The version's files under their own names.
  std::string sha256;  // The store's manifest digest.
  std::string method;
  int64_t size_bytes = 0;  // Bytes of the files.
  std::shared_ptr<const void> pin;
};

// What Engine::ValidateAdapter found.
struct AdapterValidation {
  std::string method;
  std::string base_fingerprint;  // ModelInfo::fingerprint of the engine's base model.
  int64_t weight_bytes = 0;      // Bytes the adapter's tensors take once loaded.
};

// Where an adapter version is in the engine's cache tiers.
enum class AdapterResidency { kDisk = 0, kHost = 1, kDevice = 2 };

struct AdapterCacheState {
  AdapterResidency residency = AdapterResidency::kDisk;
  bool pinned = false;  // Pinned by LoadAdapter(pin=true).
  int64_t leases = 0;   // Requests (queued or running) holding it.
  int64_t bytes = 0;    // Weight bytes, once loaded.
};

struct GenerateRequest {
  std::string request_id;
  std::string tenant;
  std::string adapter;  // "name[@version]"; empty = the base model.
  // Set by the server when `adapter` was resolved through the store: then
  // the engine uses the handle and `adapter` only names it in messages.
  std::optional<AdapterHandle> adapter_handle;
  // Non-empty: the resolved ensemble_adapters, one handle each, in order.
  std::vector<AdapterHandle> ensemble_handles;
  // Prompt ensembling: further prompt adapters of the same task, run as
  // parallel rows beside `adapter`; each step samples from the mean of the
  // rows' next-token probability distributions and feeds the chosen token
  // to every row (logprobs are of that mean distribution).
  std::vector<std::string> ensemble_adapters;
  std::string prompt;   // Used when prompt_ids is empty.
  std::vector<int32_t> prompt_ids;
  bool add_special_tokens = true;   // BOS etc. per the tokenizer's post-processor.
  bool parse_special_tokens = true;  // false: "<|endoftext|>" in text stays text.
  SamplingParams sampling;
  absl::Time deadline = absl::InfiniteFuture();
  std::shared_ptr<CancellationToken> cancel;  // May be null.
};

struct ScoreRequest {
  std::string request_id;
  std::string tenant;
  std::string adapter;
  std::optional<AdapterHandle> adapter_handle;  // As GenerateRequest.
  std::vector<AdapterHandle> ensemble_handles;
  // Prompt ensembling: further adapters run as parallel rows beside
  // `adapter`; each token's probability is the mean over the rows.
  std::vector<std::string> ensemble_adapters;
  std::string prompt;  // Tokenised with add_special_tokens.
  std::vector<std::string> continuations;  // Each tokenised without special tokens.
  // Token ids instead of text (for clients with their own tokenizer): used
  // when prompt_ids is non-empty, and then continuation_ids replace continuations.
  std::vector<int32_t> prompt_ids;
  std::vector<std::vector<int32_t>> continuation_ids;
  int top_logprobs = 0;
  absl::Time deadline = absl::InfiniteFuture();
  std::shared_ptr<CancellationToken> cancel;
};

struct ContinuationScore {
  double logprob = 0.0;  // Sum over the continuation's tokens.
  std::vector<GeneratedToken> tokens;
  bool greedy = false;  // Every token was the argmax.
};

struct ScoreResult {
  std::vector<ContinuationScore> scores;  // One per continuation, in order.
  int prompt_tokens = 0;
};

using ScoreCallback = std::function<void(absl::StatusOr<ScoreResult>)>;

// The loaded-adapter cache (engine/peft/adapter_cache.h). Hits and misses
// count Acquire calls: a device hit finds the adapter resident; a host hit
// finds it in the host tier (copied up without reading the disk); a miss
// reads it from disk.
struct AdapterCacheStats {
  int64_t device_budget_bytes = 0;
  int64_t host_budget_bytes = 0;
  int64_t device_bytes = 0;  // Resident in the device tier (incl. reserved for loads).
  int64_t host_bytes = 0;
  int64_t device_adapters = 0;
  int64_t host_adapters = 0;
  int64_t pinned_adapters = 0;   // Explicit pins (LoadAdapter pin=true).
  int64_t leased_adapters = 0;   // Held by queued or running requests.
  int64_t device_hits = 0;
  int64_t host_hits = 0;
  int64_t misses = 0;
  int64_t loads = 0;  // Disk loads finished.
  int64_t load_failures = 0;
  int64_t evictions = 0;  // Device-tier evictions.
  int64_t waiting_requests = 0;  // Queued requests whose adapters are not resident yet.
  // Load time (disk read and checks, + the host → device copy on a GPU),
  // without time queued for a worker or for room; over the last 1024 loads.
  double load_ms_p50 = 0;
  double load_ms_p99 = 0;
  double load_ms_max = 0;
  int64_t static_adapters = 0;  // --adapter NAME=DIR, resident outside the budget.
  int64_t static_bytes = 0;
};

struct EngineStats {
  AdapterCacheStats adapter_cache;
  int64_t running = 0;  // Sequences holding a slot.
  int64_t queued = 0;
  int64_t free_slots = 0;
  int64_t steps = 0;
  int64_t generated_tokens = 0;
  int64_t prompt_tokens = 0;
  int64_t requests_finished = 0;
  int64_t requests_cancelled = 0;
};

// The inference engine: owns the model, the KV cache and one engine thread
// that runs continuous batching. Thread-safe: Submit/SubmitScore may be called
// from any thread.
class Engine {
 public:
  virtual ~Engine() = default;

  virtual const ModelInfo& info() const = 0;
  virtual const EngineLimits& limits() const = 0;

  // Queues a generation. Returns INVALID_ARGUMENT for a bad request (empty
  // prompt, out-of-range sampling values, prompt longer than the context),
  // NOT_FOUND for an unknown adapter, RESOURCE_EXHAUSTED when the queue is
  // full, UNAVAILABLE after Shutdown; then `sink` is never called. On OK the
  // sink receives the output on the engine thread.
  virtual absl::Status Submit(GenerateRequest request, std::shared_ptr<GenerateSink> sink) = 0;

  // Queues a scoring request: log-probs of each continuation after the prompt.
  // Same synchronous errors as Submit; on OK `done` runs once on the engine thread.
  virtual absl::Status SubmitScore(ScoreRequest request, ScoreCallback done) = 0;

  virtual EngineStats Stats() const = 0;

  // Checks the adapter directory `dir` against the served base model (all
  // the checks of request-time loading: format, options, shapes, dtypes,
  // finite values, sizes). INVALID_ARGUMENT for bad files,
  // FAILED_PRECONDITION for an adapter that does not fit the model. Thread-safe
  // and slow (reads the files): call it from a worker.
  virtual absl::StatusOr<AdapterValidation> ValidateAdapter(const std::string& /*dir*/) const {
    return absl::UnimplementedError("this engine cannot validate adapters");
  }

  // Makes the version resident in the device tier (asynchronously; returns
  // once the load is queued) and, with `pin`, keeps it there until
  // UnloadAdapter. RESOURCE_EXHAUSTED if pinned adapters would exceed the
  // budget.
  virtual absl::Status LoadAdapter(const AdapterHandle& /*adapter*/, bool /*pin*/) {
    return absl::FailedPreconditionError("the engine has no adapter cache");
  }
  // Drops the explicit pin (the adapter stays cached until evicted). OK if
  // it was not pinned.
  virtual absl::Status UnloadAdapter(const std::string& /*adapter_id*/, int64_t /*version*/) {
    return absl::FailedPreconditionError("the engine has no adapter cache");
  }
  // The version was deleted: drop it from every tier; memory held by running
  // requests returns when the last of them releases it. version 0: all versions.
  virtual void EvictAdapter(const std::string& /*adapter_id*/, int64_t /*version*/) {}
  virtual AdapterCacheState CachedAdapterState(const std::string& /*adapter_id*/,
                                         int64_t /*version*/) const {
    return {};
  }

  // Checks a training spec against the served model and reads its dataset
  // (engine/api/training.h: method options, targets, sizes, memory budget,
  // the dataset policy). INVALID_ARGUMENT for bad options or data,
  // FAILED_PRECONDITION for a spec the model cannot train (e.g. a merged
  // deployment, unknown target modules), NOT_FOUND for a missing dataset or
  // fusion child. Thread-safe and slow (tokenises the dataset).
  virtual absl::StatusOr<DatasetReport> ValidateTraining(const TrainingSpec& /*spec*/) const {
    return absl::UnimplementedError("this engine cannot train adapters");
  }

  // Runs the job on the calling thread until it finishes, fails or `cancel`
  // fires (then CANCELLED; the last checkpoint stays in work_dir). Resumes
  // from work_dir/checkpoint when one is there. Shares the served weights
  // and yields to serving (a lower priority than the engine thread);
  // `progress` is called on the calling thread after every step and phase
  // change. Errors as ValidateTraining, RESOURCE_EXHAUSTED when the job does
  // not fit its memory budget, INTERNAL for a failure mid-job (the message
  // says which step), UNAVAILABLE after Shutdown. Thread-safe: several jobs
  // may run at once, each on its own thread.
  virtual absl::StatusOr<TrainingResult> Train(const TrainingSpec& /*spec*/,
                                               const TrainingProgressCallback& /*progress*/,
                                               const CancellationToken& /*cancel*/) {
    return absl::UnimplementedError("this engine cannot train adapters");
  }

  // Stops accepting work, lets running requests finish for up to `drain`, then
  // fails the rest with UNAVAILABLE and joins the engine thread. Idempotent.
  virtual void Shutdown(absl::Duration drain) = 0;
};

// Loads the model named by `options` (or materialises the default model) and
// starts the engine thread. Errors: NOT_FOUND (missing dir or file),
// INVALID_ARGUMENT (corrupt or inconsistent files), UNIMPLEMENTED (unknown
// architecture), FAILED_PRECONDITION (device unavailable).
absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options);

// Validates sampling values against the limits and vocabulary size; the
// server calls it before Submit so that both report the same message.
absl::Status ValidateSampling(const SamplingParams& params, const EngineLimits& limits,
                              int64_t vocab_size);

const char* FinishReasonName(FinishReason reason);

}  // namespace adapterd
