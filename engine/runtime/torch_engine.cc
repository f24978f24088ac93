// The Engine implementation: one engine thread owns the model, the KV cache
// and the running batch, and runs continuous batching: between two steps,
// queued requests take free cache slots and join the batch.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/core/GradMode.h>
#ifdef ADAPTERD_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <optional>
#include <mutex>
#include <random>
#include <thread>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/api/engine.h"
#include "engine/model/causal_lm.h"
#include "engine/model/tokenizer.h"
#include "engine/peft/adapter.h"
#include "engine/peft/adapter_cache.h"
#include "engine/peft/batch_adapters.h"
#include "engine/runtime/default_model.h"
#include "engine/runtime/kv_cache.h"
#include "engine/runtime/sampler.h"
#include "engine/runtime/sequence.h"
#include "engine/training/trainer.h"

namespace adapterd {
namespace {

constexpr int64_t kMaxDefaultContext = 4096;

const char* DTypeName(at::ScalarType t) {
  switch (t) {
    case at::kFloat:
      return "float32";
    case at::kHalf:
      return "float16";
    case at::kBFloat16:
      return "bfloat16";
    default:
      return "unknown";
  }
}

// A Score request in flight: its continuations run as rows of the batch, as
// many per step as there are free slots.
// The adapters a request runs with: one per row (ensembles have several;
// nullptr = the base model).
using AdapterRows = std::vector<std::shared_ptr<const Adapter>>;

// Per row: a lease on a store adapter (filled into AdapterRows once the
// cache has made it resident), or an invalid lease for the base model and
// start-up adapters.
using AdapterLeases = std::vector<AdapterLease>;

struct ScoreJob {
  ScoreRequest request;
  ScoreCallback done;
  AdapterRows adapters;
  AdapterLeases leases;
  bool prepared = false;  // Adapters resident and lengths checked.
  // Ensembles: per continuation, the sum of the rows' probabilities
  // ([len * V]) and how many rows have finished.
  std::vector<std::vector<float>> prob_sum;
  std::vector<size_t> rows_done;
  std::vector<int32_t> prompt_ids;
  std::vector<std::vector<int32_t>> continuation_ids;
  size_t next = 0;     // First row not yet run (continuation-major over adapters).
  size_t finished = 0;  // Continuations scored.
  ScoreResult result;
};

struct PendingGenerate {
  std::unique_ptr<Sequence> sequence;  // Made once the adapters are resident.
  AdapterRows adapters;
  AdapterLeases leases;
  // Until `sequence` exists:
  GenerateRequest request;
  std::shared_ptr<GenerateSink> sink;
  std::vector<int32_t> ids;
  uint64_t seed = 0;
};

// Copies every tensor of `a` through `fn` (host ↔ device copies of the cache).
std::shared_ptr<const Adapter> MapTensors(const Adapter& a,
                                          const std::function<at::Tensor(const at::Tensor&)>& fn) {
  auto f = [&fn](const at::Tensor& t) { return t.defined() ? fn(t) : t; };
  auto out = std::make_shared<Adapter>(a);
  out->lora_kernels.reset();  // Points into a's tensors; WithLoraKernels makes new ones.
  for (auto& layer : out->lora) {
    for (auto& w : layer) {
      if (!w.has_value()) continue;
      w->a = f(w->a);
      w->b = f(w->b);
      w->b_bias = f(w->b_bias);
      w->dora_scale = f(w->dora_scale);
    }
  }
  out->prompt = f(out->prompt);
  for (auto& t : out->prefix_keys) t = f(t);
  for (auto& t : out->prefix_values) t = f(t);
  for (auto* sites : {&out->attn_site, &out->ffn_site}) {
    for (auto& w : *sites) {
      if (!w.has_value()) continue;
      w->down_w = f(w->down_w);
      w->down_b = f(w->down_b);
      w->up_w = f(w->up_w);
      w->up_b = f(w->up_b);
    }
  }
  for (auto& child : out->children) child = MapTensors(*child, fn);
  for (auto& l : out->fusion) {
    if (!l.has_value()) continue;
    l->query_w = f(l->query_w);
    l->query_b = f(l->query_b);
    l->key_w = f(l->key_w);
    l->key_b = f(l->key_b);
    l->value_w = f(l->value_w);
  }
  return out;
}

using Pending = std::variant<PendingGenerate, std::shared_ptr<ScoreJob>>;

class TorchEngine final : public Engine {
 public:
  TorchEngine(EngineOptions options, std::unique_ptr<CausalLM> model,
              std::unique_ptr<Tokenizer> tokenizer, ModelInfo info,
              std::map<std::string, std::shared_ptr<const Adapter>> adapters,
              std::optional<LoraMerge> merge)
      : options_(std::move(options)),
        model_(std::move(model)),
        tokenizer_(std::move(tokenizer)),
        info_(std::move(info)),
        adapters_(std::move(adapters)),
        merge_(std::move(merge)) {
    adapter_options_.max_bytes = options_.max_adapter_bytes;
    adapter_options_.max_virtual_tokens = std::max<int64_t>(1, info_.context_length / 2);
    for (const auto& [name, a] : adapters_) {
      ++static_adapters_;
      static_bytes_ += a->num_bytes;
    }
    AdapterCacheOptions cache;
    cache.device_budget_bytes = options_.adapter_cache_bytes;
    cache.host_budget_bytes = options_.adapter_host_cache_bytes;
    cache.workers = std::max(1, options_.adapter_load_workers);
    const bool on_device = model_->device().type() != at::kCPU;
    cache.load = [this, on_device](const AdapterHandle& h)
        -> absl::StatusOr<std::shared_ptr<const Adapter>> {
      try {
        ASSIGN_OR_RETURN(std::shared_ptr<const Adapter> a,
                         adapterd::LoadAdapter(h.name, h.dir, *model_, adapter_options_));
        if (!on_device) return a;
        // The host tier's copy in pinned memory; the device copy is made from it.
        return MapTensors(*a, [](const at::Tensor& t) { return t.to(at::kCPU).pin_memory(); });
      } catch (const std::exception& e) {
        return absl::InternalError(absl::StrCat("loading adapter \"", h.name, "\": ", e.what()));
      }
    };
    if (on_device) {
      const at::Device device = model_->device();
      const at::ScalarType dtype = model_->dtype();
      cache.to_device =
          [device, dtype](const Adapter& a) -> absl::StatusOr<std::shared_ptr<const Adapter>> {
        try {
#ifdef ADAPTERD_WITH_CUDA
          if (device.is_cuda()) {
            // Copies on a side stream from the pinned host copy, so that they
            // overlap the engine's compute on the default stream; the adapter
            // is resident only once its bytes have arrived. Its memory is freed
            // only after the last lease is gone, i.e. after the engine's step
            // (which ends in a host sync) that used it.
            c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool(false, device.index());
            c10::cuda::CUDAStreamGuard guard(stream);
            auto copied = MapTensors(a, [device](const at::Tensor& t) {
              return t.to(device, /*non_blocking=*/true);
            });
            auto copy = WithLoraKernels(std::move(copied), dtype);
            stream.synchronize();
            return copy;
          }
#endif
          return MapTensors(a, [device](const at::Tensor& t) { return t.to(device); });
        } catch (const std::exception& e) {
          return absl::InternalError(absl::StrCat("copying adapter \"", a.name,
                                                  "\" to the device: ", e.what()));
        }
      };
    }
    cache.on_ready = [this] {
      { std::lock_guard<std::mutex> lock(mu_); }
      cv_.notify_all();
    };
    adapter_cache_ = std::make_unique<AdapterCache>(std::move(cache));
    slot_adapter_.resize(options_.limits.max_batch_size);
    cache_ = model_->NewCache(options_.limits.max_batch_size, info_.context_length);
    for (int s = options_.limits.max_batch_size - 1; s >= 0; --s) free_slots_.push_back(s);
    eos_ids_ = model_->config().eos_token_ids;
    thread_ = std::thread([this] { Loop(); });
  }

  ~TorchEngine() override {
    Shutdown(absl::ZeroDuration());
    running_leases_.clear();
    adapter_cache_.reset();  // Joins the loaders while the engine is whole.
    if (merge_.has_value()) merge_->Unmerge();
  }

  const ModelInfo& info() const override { return info_; }
  const EngineLimits& limits() const override { return options_.limits; }

  absl::Status Submit(GenerateRequest request, std::shared_ptr<GenerateSink> sink) override {
    RETURN_IF_ERROR(ValidateSampling(request.sampling, options_.limits, info_.vocab_size));
    PendingGenerate pending;
    RETURN_IF_ERROR(ResolveAdapters(request.adapter, request.adapter_handle,
                                    request.ensemble_adapters, request.ensemble_handles,
                                    pending.adapters, pending.leases));
    std::vector<int32_t> ids;
    if (!request.prompt_ids.empty()) {
      RETURN_IF_ERROR(CheckIds(request.prompt_ids));
      ids = request.prompt_ids;
    } else {
      RETURN_IF_ERROR(CheckPromptText(request.prompt));
      ids = tokenizer_->Encode(request.prompt, request.add_special_tokens,
                               request.parse_special_tokens);
    }
    if (ids.empty()) return absl::InvalidArgumentError("prompt is empty after tokenization");
    pending.seed = request.sampling.seed ? *request.sampling.seed : std::random_device{}();
    pending.request = std::move(request);
    pending.sink = std::move(sink);
    pending.ids = std::move(ids);
    // Resident adapters (the usual case): length errors are synchronous.
    // Otherwise they are checked, and reported to the sink, on admission.
    if (LeasesReady(pending.leases)) RETURN_IF_ERROR(PrepareGenerate(pending));
    return Enqueue(std::move(pending));
  }

  // Fills the leased rows and makes the Sequence. Errors: the lease's load
  // error; INVALID_ARGUMENT if the prompt and the adapters' virtual tokens
  // do not fit the context.
  absl::Status PrepareGenerate(PendingGenerate& p) {
    RETURN_IF_ERROR(FillRows(p.adapters, p.leases));
    const int64_t virtual_tokens = VirtualTokens(p.adapters);
    RETURN_IF_ERROR(CheckPromptLength(p.ids.size(), 1 + virtual_tokens));
    p.sequence = std::make_unique<Sequence>(std::move(p.request), p.sink, std::move(p.ids),
                                            tokenizer_.get(), eos_ids_,
                                            info_.context_length - virtual_tokens, p.seed);
    p.sink.reset();
    return absl::OkStatus();
  }

  absl::Status PrepareScore(ScoreJob& job) {
    RETURN_IF_ERROR(FillRows(job.adapters, job.leases));
    const int64_t virtual_tokens = VirtualTokens(job.adapters);
    RETURN_IF_ERROR(CheckPromptLength(job.prompt_ids.size(), 1 + virtual_tokens));
    for (const std::vector<int32_t>& ids : job.continuation_ids) {
      RETURN_IF_ERROR(CheckPromptLength(job.prompt_ids.size() + ids.size(), virtual_tokens));
    }
    job.prepared = true;
    return absl::OkStatus();
  }

  static bool LeasesReady(const AdapterLeases& leases) {
    for (const AdapterLease& l : leases) {
      if (l.valid() && !l.ready()) return false;
    }
    return true;
  }

  static absl::Status FillRows(AdapterRows& rows, const AdapterLeases& leases) {
    for (size_t i = 0; i < leases.size(); ++i) {
      if (!leases[i].valid()) continue;
      RETURN_IF_ERROR(leases[i].status());
      rows[i] = leases[i].adapter();
    }
    return absl::OkStatus();
  }

  absl::Status SubmitScore(ScoreRequest request, ScoreCallback done) override {
    auto job = std::make_shared<ScoreJob>();
    RETURN_IF_ERROR(ResolveAdapters(request.adapter, request.adapter_handle,
                                    request.ensemble_adapters, request.ensemble_handles,
                                    job->adapters, job->leases));
    const bool by_ids = !request.prompt_ids.empty();
    if (!by_ids) RETURN_IF_ERROR(CheckPromptText(request.prompt));
    const size_t count = by_ids ? request.continuation_ids.size() : request.continuations.size();
    if (count == 0) return absl::InvalidArgumentError("at least one continuation is required");
    if (static_cast<int>(count) > options_.limits.max_continuations) {
      return absl::InvalidArgumentError(absl::StrCat("at most ", options_.limits.max_continuations,
                                                     " continuations per request, got ", count));
    }
    if (request.top_logprobs < 0 || request.top_logprobs > options_.limits.max_top_logprobs) {
      return absl::InvalidArgumentError(absl::StrCat("top_logprobs must be in [0, ",
                                                     options_.limits.max_top_logprobs, "], got ",
                                                     request.top_logprobs));
    }
    if (by_ids) {
      RETURN_IF_ERROR(CheckIds(request.prompt_ids));
      job->prompt_ids = request.prompt_ids;
      job->continuation_ids = request.continuation_ids;
    } else {
      job->prompt_ids = tokenizer_->Encode(request.prompt, /*add_special_tokens=*/true);
      for (const std::string& c : request.continuations) {
        job->continuation_ids.push_back(tokenizer_->Encode(c, /*add_special_tokens=*/false));
      }
    }
    if (job->prompt_ids.empty()) {
      return absl::InvalidArgumentError("prompt is empty after tokenization");
    }
    for (const std::vector<int32_t>& ids : job->continuation_ids) {
      if (ids.empty()) return absl::InvalidArgumentError("continuations must not be empty");
      RETURN_IF_ERROR(CheckIds(ids));
    }
    if (LeasesReady(job->leases)) RETURN_IF_ERROR(PrepareScore(*job));
    if (job->adapters.size() > 1) {
      job->prob_sum.resize(job->continuation_ids.size());
      job->rows_done.assign(job->continuation_ids.size(), 0);
    }
    job->result.prompt_tokens = static_cast<int>(job->prompt_ids.size());
    job->result.scores.resize(job->continuation_ids.size());
    job->request = std::move(request);
    job->done = std::move(done);
    return Enqueue(std::move(job));
  }

  EngineStats Stats() const override {
    std::lock_guard<std::mutex> lock(mu_);
    EngineStats s = stats_;
    s.queued = static_cast<int64_t>(queue_.size());
    s.adapter_cache = adapter_cache_->Stats();
    s.adapter_cache.static_adapters = static_adapters_;
    s.adapter_cache.static_bytes = static_bytes_;
    s.adapter_cache.waiting_requests = waiting_requests_;
    return s;
  }

  absl::StatusOr<AdapterValidation> ValidateAdapter(const std::string& dir) const override {
    try {
      ASSIGN_OR_RETURN(std::shared_ptr<const Adapter> a,
                       adapterd::LoadAdapter("adapter", dir, *model_, adapter_options_));
      AdapterValidation v;
      v.method = AdapterMethodName(a->method);
      v.base_fingerprint = info_.fingerprint;
      v.weight_bytes = a->num_bytes;
      return v;
    } catch (const std::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat("cannot load the adapter: ", e.what()));
    }
  }

  // Training (engine/training): jobs run on their callers' threads over the
  // shared model; serving goes on meanwhile on the engine thread.
  absl::StatusOr<DatasetReport> ValidateTraining(const TrainingSpec& spec) const override {
    RETURN_IF_ERROR(CheckTrainable());
    return ValidateTrainingJob(TrainContext{model_.get(), tokenizer_.get(), &spec}, TrainOptions());
  }

  absl::StatusOr<TrainingResult> Train(const TrainingSpec& spec,
                                       const TrainingProgressCallback& progress,
                                       const CancellationToken& cancel) override {
    RETURN_IF_ERROR(CheckTrainable());
    return RunTraining(TrainContext{model_.get(), tokenizer_.get(), &spec}, progress, cancel,
                       TrainOptions());
  }

  absl::Status LoadAdapter(const AdapterHandle& adapter, bool pin) override {
    if (adapter.adapter_id.empty()) {
      return absl::InvalidArgumentError("LoadAdapter needs a store adapter (adapter_id)");
    }
    return adapter_cache_->Prefetch(adapter, pin);
  }

  absl::Status UnloadAdapter(const std::string& adapter_id, int64_t version) override {
    adapter_cache_->Unpin({adapter_id, version});
    return absl::OkStatus();
  }

  void EvictAdapter(const std::string& adapter_id, int64_t version) override {
    adapter_cache_->Evict(adapter_id, version);
  }

  AdapterCacheState CachedAdapterState(const std::string& adapter_id, int64_t version) const override {
    return adapter_cache_->State({adapter_id, version});
  }

  void Shutdown(absl::Duration drain) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!accepting_ && !thread_.joinable()) return;
      accepting_ = false;
      drain_deadline_ = absl::Now() + drain;
      shutting_down_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable() && thread_.get_id() != std::this_thread::get_id()) thread_.join();
  }

 private:
  // "name" or "name@1" (only version 1 exists until the adapter store).
  absl::StatusOr<std::shared_ptr<const Adapter>> ResolveAdapter(const std::string& ref) const {
    if (!info_.merged_adapter.empty()) {
      std::string name = ref.substr(0, ref.find('@'));
      if (ref.empty() || name != info_.merged_adapter ||
          (ref.size() > name.size() && ref.substr(name.size()) != "@1")) {
        return absl::FailedPreconditionError(absl::StrCat(
            "this server is dedicated to adapter \"", info_.merged_adapter,
            "\" (merged into the weights); requests must name it"));
      }
      return std::shared_ptr<const Adapter>();  // Its weights are in the model.
    }
    if (ref.empty()) return std::shared_ptr<const Adapter>();
    const size_t at = ref.find('@');
    const std::string name = ref.substr(0, at);
    auto it = adapters_.find(name);
    if (it == adapters_.end() || (at != std::string::npos && ref.substr(at + 1) != "1")) {
      return absl::NotFoundError(absl::StrCat("adapter \"", ref, "\" not found"));
    }
    return it->second;
  }

  // One row: a store adapter through the cache (a lease), else a start-up
  // adapter or the base model by name.
  absl::Status AddAdapterRow(const std::string& ref, const AdapterHandle* handle, AdapterRows& rows,
                             AdapterLeases& leases) {
    if (handle != nullptr && !handle->adapter_id.empty() && info_.merged_adapter.empty()) {
      ASSIGN_OR_RETURN(AdapterLease lease, adapter_cache_->Acquire(*handle));
      if (lease.ready()) RETURN_IF_ERROR(lease.status());
      rows.push_back(nullptr);
      leases.push_back(std::move(lease));
      return absl::OkStatus();
    }
    ASSIGN_OR_RETURN(std::shared_ptr<const Adapter> a,
                     ResolveAdapter(handle != nullptr ? handle->name : ref));
    rows.push_back(std::move(a));
    leases.emplace_back();
    return absl::OkStatus();
  }

  absl::Status ResolveAdapters(const std::string& adapter,
                               const std::optional<AdapterHandle>& handle,
                               const std::vector<std::string>& ensemble,
                               const std::vector<AdapterHandle>& ensemble_handles,
                               AdapterRows& rows, AdapterLeases& leases) {
    RETURN_IF_ERROR(AddAdapterRow(adapter, handle ? &*handle : nullptr, rows, leases));
    const size_t n = std::max(ensemble.size(), ensemble_handles.size());
    if (n > 0) {
      if (static_cast<int>(n) + 1 > options_.limits.max_batch_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "an ensemble of ", n + 1, " rows exceeds the batch size ",
            options_.limits.max_batch_size));
      }
      if (!info_.merged_adapter.empty()) {
        return absl::FailedPreconditionError("ensemble_adapters cannot be used with a merged adapter");
      }
      for (size_t i = 0; i < n; ++i) {
        const AdapterHandle* h = i < ensemble_handles.size() ? &ensemble_handles[i] : nullptr;
        RETURN_IF_ERROR(AddAdapterRow(i < ensemble.size() ? ensemble[i] : std::string(), h, rows,
                                      leases));
      }
    }
    return absl::OkStatus();
  }

  static int64_t VirtualTokens(const AdapterRows& rows) {
    int64_t v = 0;
    for (const auto& a : rows) v = std::max<int64_t>(v, a ? a->virtual_tokens() : 0);
    return v;
  }

  // Adds `tokens` of the sequence in `slot` (with `cached` real tokens
  // already cached) to the batch, with its adapter's virtual tokens.
  void AddRow(ForwardBatch& batch, int slot, int64_t cached, std::vector<int32_t> tokens) {
    const Adapter* a = slot_adapter_[slot].get();
    const int64_t p = a ? a->virtual_tokens() : 0;
    int virtual_rows = 0;
    int64_t past = cached + p;
    if (cached == 0 && p > 0) {
      if (a->prompt.defined()) {
        tokens.insert(tokens.begin(), p, 0);
        virtual_rows = static_cast<int>(p);
        past = 0;
      } else {
        PrefillPrefix(*cache_, slot, *a);
      }
    }
    batch.slots.push_back(slot);
    batch.past_lens.push_back(past);
    batch.tokens.push_back(std::move(tokens));
    batch.adapters.push_back(a);
    batch.virtual_tokens.push_back(virtual_rows);
  }

  absl::Status CheckIds(const std::vector<int32_t>& ids) const {
    for (int32_t id : ids) {
      if (id < 0 || id >= info_.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", id, " is outside the vocabulary [0, ", info_.vocab_size, ")"));
      }
    }
    return absl::OkStatus();
  }

  absl::Status CheckPromptText(const std::string& prompt) const {
    if (prompt.empty()) return absl::InvalidArgumentError("prompt is empty");
    if (static_cast<int64_t>(prompt.size()) > options_.limits.max_prompt_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt has ", prompt.size(), " bytes; the limit is ", options_.limits.max_prompt_bytes));
    }
    return absl::OkStatus();
  }

  // `room` tokens must remain free after `n` prompt tokens.
  absl::Status CheckPromptLength(size_t n, int64_t room) const {
    if (n == 0) return absl::InvalidArgumentError("prompt is empty after tokenization");
    if (static_cast<int64_t>(n) + room > info_.context_length) {
      return absl::InvalidArgumentError(absl::StrCat("prompt has ", n,
                                                     " tokens; the context window holds ",
                                                     info_.context_length));
    }
    return absl::OkStatus();
  }

  absl::Status Enqueue(Pending pending) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!accepting_) return absl::UnavailableError("the engine is shutting down");
      if (static_cast<int>(queue_.size()) >= options_.limits.max_queue) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "the request queue is full (", options_.limits.max_queue, " waiting); retry later"));
      }
      queue_.push_back(std::move(pending));
    }
    cv_.notify_one();
    return absl::OkStatus();
  }

  // Whether a queued item may leave the queue: its adapters are resident
  // (or failed to load), or it was cancelled or expired.
  static bool Admissible(Pending& p, absl::Time now) {
    if (auto* gen = std::get_if<PendingGenerate>(&p)) {
      if (gen->sequence != nullptr) return true;
      const GenerateRequest& r = gen->request;
      if ((r.cancel && r.cancel->cancelled()) || now >= r.deadline) return true;
      return LeasesReady(gen->leases);
    }
    ScoreJob& job = *std::get<std::shared_ptr<ScoreJob>>(p);
    if (job.prepared) return true;
    if ((job.request.cancel && job.request.cancel->cancelled()) || now >= job.request.deadline) {
      return true;
    }
    return LeasesReady(job.leases);
  }

  // Queued work whose adapters became resident is prepared (or failed, as
  // are cancelled and expired requests still waiting for their adapters).
  // Engine thread only.
  void PrepareQueued() {
    std::vector<Pending> failed;
    std::vector<absl::Status> errors;
    int64_t waiting = 0;
    const absl::Time now = absl::Now();
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto it = queue_.begin(); it != queue_.end();) {
        absl::Status status = absl::OkStatus();
        if (auto* gen = std::get_if<PendingGenerate>(&*it)) {
          if (gen->sequence == nullptr) {
            const GenerateRequest& r = gen->request;
            if (r.cancel && r.cancel->cancelled()) {
              status = absl::CancelledError("request cancelled by the client");
            } else if (now >= r.deadline) {
              status = absl::DeadlineExceededError("deadline exceeded");
            } else if (LeasesReady(gen->leases)) {
              status = PrepareGenerate(*gen);
            } else {
              ++waiting;
            }
          }
        } else {
          ScoreJob& job = *std::get<std::shared_ptr<ScoreJob>>(*it);
          if (!job.prepared) {
            if (job.request.cancel && job.request.cancel->cancelled()) {
              status = absl::CancelledError("request cancelled by the client");
            } else if (now >= job.request.deadline) {
              status = absl::DeadlineExceededError("deadline exceeded");
            } else if (LeasesReady(job.leases)) {
              status = PrepareScore(job);
            } else {
              ++waiting;
            }
          }
        }
        if (status.ok()) {
          ++it;
          continue;
        }
        failed.push_back(std::move(*it));
        errors.push_back(status);
        it = queue_.erase(it);
      }
      waiting_requests_ = waiting;
    }
    for (size_t i = 0; i < failed.size(); ++i) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++stats_.requests_finished;
        if (absl::IsCancelled(errors[i])) ++stats_.requests_cancelled;
      }
      if (auto* gen = std::get_if<PendingGenerate>(&failed[i])) {
        std::shared_ptr<GenerateSink> sink =
            gen->sink;  // Set: failed items were never prepared.
        GenerateResult result;
        result.prompt_tokens = static_cast<int>(gen->ids.size());
        sink->OnFinish(errors[i], result);
      } else {
        ScoreJob& job = *std::get<std::shared_ptr<ScoreJob>>(failed[i]);
        ScoreCallback done = std::move(job.done);
        job.done = nullptr;
        if (done) done(errors[i]);
      }
    }
  }

  // Moves prepared queued work into free slots, FIFO among the prepared;
  // work still waiting for its adapters stays queued without holding the
  // others back. Engine thread only.
  static const std::string& TenantOf(const Pending& p) {
    if (const auto* gen = std::get_if<PendingGenerate>(&p)) {
      return gen->sequence != nullptr ? gen->sequence->request().tenant : gen->request.tenant;
    }
    return std::get<std::shared_ptr<ScoreJob>>(p)->request.tenant;
  }

  // Moves queued work into free slots. Fair across tenants: each free slot
  // goes to the oldest ready request of the tenant holding the fewest slots,
  // so a tenant that floods the queue cannot starve another. Engine thread only.
  void Admit() {
    PrepareQueued();
    std::lock_guard<std::mutex> lock(mu_);
    std::map<std::string, int64_t> held;
    for (const auto& seq : running_) {
      const auto extra = ensemble_slots_.find(seq.get());
      held[seq->request().tenant] +=
          1 + (extra == ensemble_slots_.end() ? 0 : static_cast<int64_t>(extra->second.size()));
    }
    for (const ScoreRow& row : scoring_) ++held[row.job->request.tenant];
    // Per tenant, the queue positions of its requests, oldest first.
    std::map<std::string, std::deque<size_t>> candidates;
    for (size_t i = 0; i < queue_.size(); ++i) candidates[TenantOf(queue_[i])].push_back(i);
    std::vector<char> admitted(queue_.size(), 0);
    while (!free_slots_.empty() && !candidates.empty()) {
      auto pick = candidates.begin();
      for (auto it = candidates.begin(); it != candidates.end(); ++it) {
        const int64_t h = held[it->first], best = held[pick->first];
        if (h < best || (h == best && it->second.front() < pick->second.front())) pick = it;
      }
      const size_t index = pick->second.front();
      const std::string tenant = pick->first;
      bool blocked = false;
      bool done = false;
      const int64_t used = AdmitOne(queue_[index], &done, &blocked);
      if (blocked) break;  // Not enough slots for it: keep the order, wait for slots.
      held[tenant] += used;
      admitted[index] = done;
      if (done || used == 0) pick->second.pop_front();
      if (pick->second.empty()) candidates.erase(pick);
    }
    std::deque<Pending> rest;
    for (size_t i = 0; i < queue_.size(); ++i) {
      if (!admitted[i]) rest.push_back(std::move(queue_[i]));
    }
    queue_.swap(rest);
    stats_.running = static_cast<int64_t>(running_.size() + scoring_.size());
    stats_.free_slots = static_cast<int64_t>(free_slots_.size());
  }

  // Gives `p` the slots it can take now; returns how many. Sets *done when
  // `p` has nothing left to admit, *blocked when it needs more slots than
  // are free. A request not ready yet (adapter loading) takes none.
  int64_t AdmitOne(Pending& p, bool* done, bool* blocked) {
    if (auto* gen = std::get_if<PendingGenerate>(&p)) {
      if (gen->sequence == nullptr) return 0;
      // An ensemble's rows start together.
      if (free_slots_.size() < gen->adapters.size()) {
        *blocked = true;
        return 0;
      }
      const int slot = TakeSlot();
      slot_adapter_[slot] = gen->adapters[0];
      gen->sequence->set_slot(slot);
      std::vector<int> extra;
      for (size_t k = 1; k < gen->adapters.size(); ++k) {
        extra.push_back(TakeSlot());
        slot_adapter_[extra.back()] = gen->adapters[k];
      }
      if (!extra.empty()) ensemble_slots_[gen->sequence.get()] = std::move(extra);
      running_leases_[gen->sequence.get()] = std::move(gen->leases);
      running_.push_back(std::move(gen->sequence));
      *done = true;
      return static_cast<int64_t>(gen->adapters.size());
    }
    auto& job = std::get<std::shared_ptr<ScoreJob>>(p);
    if (!job->prepared) return 0;
    const size_t k = job->adapters.size();
    const size_t total = job->continuation_ids.size() * k;
    int64_t used = 0;
    // One row per turn, so that a large Score request shares slots too.
    if (job->next < total && !free_slots_.empty()) {
      const int slot = TakeSlot();
      slot_adapter_[slot] = job->adapters[job->next % k];
      scoring_.push_back({job, job->next / k, slot});
      ++job->next;
      ++used;
    }
    *done = job->next == total;
    return used;
  }

  int TakeSlot() {
    const int slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }

  void ReleaseSlot(int slot) {
    slot_adapter_[slot].reset();
    std::lock_guard<std::mutex> lock(mu_);
    free_slots_.push_back(slot);
    stats_.free_slots = static_cast<int64_t>(free_slots_.size());
  }

  void Loop() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        // Work waiting for an adapter load is woken by the cache's on_ready;
        // the timeout also catches its deadline and cancellation.
        cv_.wait_for(lock, std::chrono::milliseconds(20), [this] {
          if (shutting_down_ || !running_.empty() || !scoring_.empty()) return true;
          const absl::Time now = absl::Now();
          for (Pending& p : queue_) {
            if (Admissible(p, now)) return true;
          }
          return false;
        });
        if (shutting_down_) {
          const bool idle = queue_.empty() && running_.empty() && scoring_.empty();
          if (idle || absl::Now() >= drain_deadline_) break;
        }
      }
      Admit();
      DropDead();
      try {
        // Serving records no autograd graph (the LoRA kernels need none, and
        // the dispatcher does less per op).
        const c10::NoGradGuard no_grad;
        if (!scoring_.empty()) StepScore();
        if (!running_.empty()) StepGenerate();
      } catch (const std::exception& e) {
        FailAll(absl::InternalError(absl::StrCat("engine step failed: ", e.what())));
      }
      std::lock_guard<std::mutex> lock(mu_);
      stats_.running = static_cast<int64_t>(running_.size() + scoring_.size());
    }
    FailAll(absl::UnavailableError("the server is shutting down"));
    std::deque<Pending> rest;
    {
      std::lock_guard<std::mutex> lock(mu_);
      rest.swap(queue_);
    }
    for (Pending& p : rest) {
      const absl::Status status = absl::UnavailableError("the server is shutting down");
      if (auto* gen = std::get_if<PendingGenerate>(&p)) {
        if (gen->sequence != nullptr) {
          gen->sequence->sink()->OnFinish(status, gen->sequence->result());
        } else {
          gen->sink->OnFinish(status, GenerateResult{});
        }
      } else {
        FinishScore(*std::get<std::shared_ptr<ScoreJob>>(p), status);
      }
    }
  }

  // Frees the slots of cancelled and expired requests before the step runs.
  void DropDead() {
    const absl::Time now = absl::Now();
    for (auto it = running_.begin(); it != running_.end();) {
      absl::Status alive = (*it)->CheckAlive(now);
      if (alive.ok()) {
        ++it;
        continue;
      }
      FinishSequence(**it, alive);
      it = running_.erase(it);
    }
    for (auto it = scoring_.begin(); it != scoring_.end();) {
      ScoreJob& job = *it->job;
      absl::Status alive = absl::OkStatus();
      if (job.request.cancel && job.request.cancel->cancelled()) {
        alive = absl::CancelledError("request cancelled by the client");
      } else if (now >= job.request.deadline) {
        alive = absl::DeadlineExceededError("deadline exceeded");
      }
      if (alive.ok()) {
        ++it;
        continue;
      }
      ReleaseSlot(it->slot);
      FinishScore(job, alive);
      it = scoring_.erase(it);
    }
  }

  void NameAlternatives(std::vector<TokenLogprob>& alternatives) const {
    for (TokenLogprob& alt : alternatives) alt.text = tokenizer_->Decode({alt.id});
  }

  void FinishSequence(Sequence& seq, const absl::Status& status) {
    ReleaseSlot(seq.slot());
    running_leases_.erase(&seq);  // The adapters may be evicted from now on.
    auto extra = ensemble_slots_.find(&seq);
    if (extra != ensemble_slots_.end()) {
      for (int slot : extra->second) ReleaseSlot(slot);
      ensemble_slots_.erase(extra);
    }
    {
      // Counted before the sink hears of it, so that a client that saw its
      // request end never reads it as still running.
      std::lock_guard<std::mutex> lock(mu_);
      stats_.running = std::max<int64_t>(0, stats_.running - 1);
      ++stats_.requests_finished;
      if (absl::IsCancelled(status)) ++stats_.requests_cancelled;
    }
    seq.sink()->OnFinish(status, seq.result());
  }

  // Calls the job's callback once; later calls (other rows of a failed job) do nothing.
  void FinishScore(ScoreJob& job, const absl::Status& status) {
    if (!job.done) return;
    ScoreCallback done = std::move(job.done);
    job.done = nullptr;
    {
      // Counted before the caller hears of it (see FinishSequence).
      std::lock_guard<std::mutex> lock(mu_);
      ++stats_.requests_finished;
      if (absl::IsCancelled(status)) ++stats_.requests_cancelled;
    }
    if (status.ok()) {
      done(std::move(job.result));
    } else {
      done(status);
    }
  }

  void FailAll(const absl::Status& status) {
    for (auto& seq : running_) FinishSequence(*seq, status);
    running_.clear();
    for (auto& row : scoring_) {
      ReleaseSlot(row.slot);
      FinishScore(*row.job, status);
    }
    scoring_.clear();
  }

  void StepGenerate() {
    ForwardBatch batch;
    int64_t prompt_tokens = 0;
    std::vector<size_t> first_row;  // Per sequence: its first batch row.
    for (auto& seq : running_) {
      first_row.push_back(batch.slots.size());
      std::vector<int32_t> pending = seq->PendingTokens();
      if (seq->cached_tokens() == 0) prompt_tokens += pending.size();
      auto extra = ensemble_slots_.find(seq.get());
      if (extra != ensemble_slots_.end()) {
        for (int slot : extra->second) AddRow(batch, slot, seq->cached_tokens(), pending);
      }
      AddRow(batch, seq->slot(), seq->cached_tokens(), std::move(pending));
    }
    const at::Tensor device_logits = model_->Forward(batch, *cache_);
    // On a GPU, when every sequence is greedy with no alternatives and no
    // ensemble, the argmax and its log-prob are taken there and only two
    // numbers per row come back; else the logits do, with the rows'
    // log-sum-exp (one device pass instead of a host pass per row).
    bool host_sampling = device_logits.is_cpu();
    for (size_t i = 0; i < running_.size() && !host_sampling; ++i) {
      const SamplingParams& p = running_[i]->request().sampling;
      host_sampling = p.temperature != 0.0f || p.top_logprobs > 0 ||
                      ensemble_slots_.count(running_[i].get()) > 0;
    }
    at::Tensor logits, lse, greedy;
    if (host_sampling) {
      logits = device_logits.to(at::kCPU).contiguous();
      if (!device_logits.is_cpu()) {
        lse = at::logsumexp(device_logits, -1).to(at::kCPU, at::kDouble);
      }
    } else {
      const auto [best, id] = device_logits.max(-1);
      greedy = at::stack({id.to(at::kDouble),
                          best.to(at::kDouble) - at::logsumexp(device_logits, -1).to(at::kDouble)},
                         1)
                   .cpu();  // [rows, 2]: id, log-prob.
    }
    const int64_t vocab = device_logits.size(1);
    int64_t generated = 0;
    for (size_t i = 0; i < running_.size(); ++i) {
      Sequence& seq = *running_[i];
      const size_t rows =
          (i + 1 < running_.size() ? first_row[i + 1] : batch.slots.size()) - first_row[i];
      seq.MarkCached();
      SampledToken token;
      if (greedy.defined()) {
        const double* g = greedy.const_data_ptr<double>() + 2 * first_row[i];
        token.id = static_cast<int32_t>(g[0]);
        token.logprob = static_cast<float>(g[1]);
      } else {
        at::Tensor row = logits[first_row[i] + rows - 1];  // The sequence's own row.
        if (rows > 1) {
          // Prompt ensembling: the mean of the rows' distributions, as log-probs.
          row = at::log(at::softmax(logits.narrow(0, first_row[i], rows), -1).mean(0));
        }
        row = row.contiguous();
        token = lse.defined() && rows == 1
                    ? seq.sampler().Sample(row.data_ptr<float>(), vocab,
                                           lse.data_ptr<double>()[first_row[i]])
                    : seq.sampler().Sample(row.data_ptr<float>(), vocab);
      }
      NameAlternatives(token.top);
      const bool done = seq.Append(token);
      ++generated;
      std::vector<GeneratedToken> out = seq.TakeOutput();
      if (!out.empty()) seq.sink()->OnTokens(std::move(out));
      if (done) FinishSequence(seq, absl::OkStatus());
    }
    std::erase_if(running_, [](const std::unique_ptr<Sequence>& s) {
      return s->finish_reason().has_value();
    });
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
    stats_.generated_tokens += generated;
    stats_.prompt_tokens += prompt_tokens;
  }

  void StepScore() {
    ForwardBatch batch;
    batch.all_logits = true;
    for (const ScoreRow& row : scoring_) {
      std::vector<int32_t> tokens = row.job->prompt_ids;
      const auto& cont = row.job->continuation_ids[row.index];
      tokens.insert(tokens.end(), cont.begin(), cont.end());
      AddRow(batch, row.slot, 0, std::move(tokens));
    }
    at::Tensor logits = model_->Forward(batch, *cache_).to(at::kCPU).contiguous();
    const int64_t vocab = logits.size(1);
    const float* data = logits.data_ptr<float>();
    int64_t offset = 0;
    for (size_t r = 0; r < scoring_.size(); ++r) {
      ScoreJob& job = *scoring_[r].job;
      const size_t n_prompt = job.prompt_ids.size();
      const auto& cont = job.continuation_ids[scoring_[r].index];
      const float* rows = data + (offset + n_prompt - 1) * vocab;
      std::vector<float> combined;
      if (job.adapters.size() > 1) {
        // Prompt ensembling: mean of the rows' probabilities per token.
        const int64_t n = static_cast<int64_t>(cont.size());
        at::Tensor probs = at::softmax(logits.narrow(0, offset + n_prompt - 1, n), -1).contiguous();
        std::vector<float>& sum = job.prob_sum[scoring_[r].index];
        if (sum.empty()) sum.assign(n * vocab, 0.0f);
        const float* p = probs.data_ptr<float>();
        for (int64_t e = 0; e < n * vocab; ++e) sum[e] += p[e];
        offset += static_cast<int64_t>(n_prompt + cont.size());
        ReleaseSlot(scoring_[r].slot);
        if (++job.rows_done[scoring_[r].index] < job.adapters.size()) continue;
        combined.resize(sum.size());
        const float k = static_cast<float>(job.adapters.size());
        for (size_t e = 0; e < sum.size(); ++e) combined[e] = std::log(sum[e] / k);
        sum.clear();
        rows = combined.data();
      }
      ContinuationScore& score = job.result.scores[scoring_[r].index];
      score.greedy = true;
      StreamDecoder decoder(tokenizer_.get(), job.prompt_ids, /*skip_special_tokens=*/false);
      for (size_t j = 0; j < cont.size(); ++j) {
        const float* row = rows + j * vocab;
        GeneratedToken token;
        token.id = cont[j];
        token.logprob = Sampler::Logprob(row, vocab, cont[j]);
        token.top = Sampler::TopLogprobs(row, vocab, job.request.top_logprobs);
        NameAlternatives(token.top);
        token.text = decoder.Push(cont[j]);
        if (j + 1 == cont.size()) token.text += decoder.Flush();
        score.logprob += token.logprob;
        if (Sampler::Argmax(row, vocab) != cont[j]) score.greedy = false;
        score.tokens.push_back(std::move(token));
      }
      if (combined.empty()) {
        offset += static_cast<int64_t>(n_prompt + cont.size());
        ReleaseSlot(scoring_[r].slot);
      }
      if (++job.finished == job.continuation_ids.size()) FinishScore(job, absl::OkStatus());
    }
    scoring_.clear();
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.steps;
    stats_.prompt_tokens += offset;
  }

  struct ScoreRow {
    std::shared_ptr<ScoreJob> job;
    size_t index;
    int slot;
  };

  absl::Status CheckTrainable() const {
    if (!info_.merged_adapter.empty()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "this server is dedicated to adapter \"", info_.merged_adapter,
          "\" (merged into the weights); it cannot train adapters"));
    }
    std::lock_guard<std::mutex> lock(mu_);
    if (!accepting_) return absl::UnavailableError("the server is shutting down");
    return absl::OkStatus();
  }

  TrainerOptions TrainOptions() const {
    TrainerOptions t;
    t.memory_budget_bytes = options_.training_memory_bytes;
    t.context_length = info_.context_length;
    t.serving_busy = [this] {
      std::lock_guard<std::mutex> lock(mu_);
      return !queue_.empty() || stats_.running > 0;
    };
    return t;
  }

  const EngineOptions options_;
  std::unique_ptr<CausalLM> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  const ModelInfo info_;
  std::vector<int32_t> eos_ids_;

  const std::map<std::string, std::shared_ptr<const Adapter>> adapters_;  // --adapter: static tier.
  int64_t static_adapters_ = 0;
  int64_t static_bytes_ = 0;
  std::optional<LoraMerge> merge_;
  AdapterLoadOptions adapter_options_;
  // Store adapters. Destroyed explicitly in ~TorchEngine, after the engine
  // thread and every lease.
  std::unique_ptr<AdapterCache> adapter_cache_;

  // Engine thread only.
  std::unique_ptr<KvCache> cache_;
  std::vector<std::shared_ptr<const Adapter>> slot_adapter_;  // Per cache slot.
  std::map<const Sequence*, std::vector<int>> ensemble_slots_;  // Ensemble rows beyond the first.
  std::map<const Sequence*, AdapterLeases> running_leases_;    // Store adapters of running sequences.
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<ScoreRow> scoring_;

  mutable std::mutex mu_;  // Guards queue_, free_slots_, stats_, accepting_ and the shutdown fields.
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  std::vector<int> free_slots_;
  EngineStats stats_;
  int64_t waiting_requests_ = 0;  // Queued, adapters not resident yet.
  bool accepting_ = true;
  bool shutting_down_ = false;
  absl::Time drain_deadline_ = absl::InfiniteFuture();

  std::thread thread_;
};

absl::StatusOr<std::unique_ptr<Engine>> CreateEngineImpl(const EngineOptions& in) {
  EngineOptions options = in;
  if (options.limits.max_batch_size < 1) {
    return absl::InvalidArgumentError("max_batch_size must be at least 1");
  }
  bool is_default = false;
  if (options.model_dir.empty()) {
    ASSIGN_OR_RETURN(options.model_dir,
                     MaterializeDefaultModel(options.data_dir, options.default_model_seed));
    is_default = true;
  }
  if (options.num_threads > 0) at::set_num_threads(options.num_threads);

  ModelLoadOptions load;
  load.device = options.device;
  load.dtype = options.dtype;
  ASSIGN_OR_RETURN(std::unique_ptr<CausalLM> model, CausalLM::Load(options.model_dir, load));
  const std::filesystem::path dir(options.model_dir);
  ASSIGN_OR_RETURN(std::unique_ptr<Tokenizer> tokenizer,
                   Tokenizer::FromFile((dir / "tokenizer.json").string()));

  const ModelConfig& config = model->config();
  ModelInfo info;
  info.name = is_default ? std::string(kDefaultModelName)
                         : std::filesystem::absolute(dir).lexically_normal().filename().string();
  if (info.name.empty()) info.name = std::filesystem::absolute(dir).parent_path().filename().string();
  info.architecture = config.architecture == Architecture::kGpt2 ? "gpt2" : "llama";
  info.model_type = config.model_type;
  info.dtype = DTypeName(model->dtype());
  info.device = model->device().str();
  info.path = std::filesystem::absolute(dir).string();
  info.fingerprint = model->fingerprint();
  info.vocab_size = config.vocab_size;
  int64_t context = config.max_position_embeddings;
  if (context <= 0) context = kMaxDefaultContext;
  if (options.max_context > 0) {
    // Rotary models may be run past max_position_embeddings on request (that is
    // what dynamic NTK scaling is for); learned positions (GPT-2) cannot.
    const bool learned_positions = config.architecture == Architecture::kGpt2;
    context = learned_positions ? std::min(context, options.max_context) : options.max_context;
  } else {
    context = std::min(context, kMaxDefaultContext);
  }
  info.context_length = context;
  info.num_layers = config.num_layers;
  info.hidden_size = config.hidden_size;
  info.num_heads = config.num_heads;
  info.num_kv_heads = config.num_kv_heads;
  info.is_default_model = is_default;
  if (tokenizer->vocab_size() > config.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer.json has ", tokenizer->vocab_size(),
                                                   " tokens but the model's vocab_size is ",
                                                   config.vocab_size));
  }
  std::map<std::string, std::shared_ptr<const Adapter>> adapters;
  AdapterLoadOptions adapter_options;
  adapter_options.max_bytes = options.max_adapter_bytes;
  adapter_options.max_virtual_tokens = std::max<int64_t>(1, context / 2);
  for (const AdapterSpec& spec : options.adapters) {
    if (spec.name.empty() || spec.name.find('@') != std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("bad adapter name \"", spec.name, "\" (non-empty, no '@')"));
    }
    if (adapters.count(spec.name)) {
      return absl::InvalidArgumentError(absl::StrCat("adapter \"", spec.name, "\" given twice"));
    }
    ASSIGN_OR_RETURN(std::shared_ptr<const Adapter> adapter,
                     LoadAdapter(spec.name, spec.dir, *model, adapter_options));
    adapter = WithLoraKernels(std::move(adapter), model->dtype());
    AdapterInfo a;
    a.name = spec.name;
    a.method = AdapterMethodName(adapter->method);
    a.path = spec.dir;
    a.bytes = adapter->num_bytes;
    info.adapters.push_back(std::move(a));
    adapters.emplace(spec.name, std::move(adapter));
  }
  std::optional<LoraMerge> merge;
  if (!options.merge_adapter.empty()) {
    auto it = adapters.find(options.merge_adapter);
    if (it == adapters.end()) {
      return absl::InvalidArgumentError(absl::StrCat("--merge-adapter \"", options.merge_adapter,
                                                     "\" is not one of the loaded adapters"));
    }
    ASSIGN_OR_RETURN(merge, LoraMerge::Merge(*model, *it->second));
    info.merged_adapter = options.merge_adapter;
  }
  return std::unique_ptr<Engine>(new TorchEngine(std::move(options), std::move(model),
                                                 std::move(tokenizer), std::move(info),
                                                 std::move(adapters), std::move(merge)));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> CreateEngine(const EngineOptions& options) {
  try {
    return CreateEngineImpl(options);
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("engine start-up failed: ", e.what()));
  }
}

}  // namespace adapterd
