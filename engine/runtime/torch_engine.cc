// The Engine implementation: one engine thread owns the model, the KV cache
// and the running batch, and runs continuous batching: between two steps,
// queued requests take free cache slots and join the batch.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <condition_variable>
#include <deque>
#include <filesystem>
#include <mutex>
#include <random>
#include <thread>
#include <variant>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "engine/api/engine.h"
#include "engine/model/causal_lm.h"
#include "engine/model/tokenizer.h"
#include "engine/runtime/default_model.h"
#include "engine/runtime/kv_cache.h"
#include "engine/runtime/sampler.h"
#include "engine/runtime/sequence.h"

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
struct ScoreJob {
  ScoreRequest request;
  ScoreCallback done;
  std::vector<int32_t> prompt_ids;
  std::vector<std::vector<int32_t>> continuation_ids;
  size_t next = 0;     // First continuation not yet run.
  size_t finished = 0;  // Continuations scored.
  ScoreResult result;
};

struct PendingGenerate {
  std::unique_ptr<Sequence> sequence;
};

using Pending = std::variant<PendingGenerate, std::shared_ptr<ScoreJob>>;

class TorchEngine final : public Engine {
 public:
  TorchEngine(EngineOptions options, std::unique_ptr<CausalLM> model,
              std::unique_ptr<Tokenizer> tokenizer, ModelInfo info)
      : options_(std::move(options)),
        model_(std::move(model)),
        tokenizer_(std::move(tokenizer)),
        info_(std::move(info)) {
    cache_ = model_->NewCache(options_.limits.max_batch_size, info_.context_length);
    for (int s = options_.limits.max_batch_size - 1; s >= 0; --s) free_slots_.push_back(s);
    eos_ids_ = model_->config().eos_token_ids;
    thread_ = std::thread([this] { Loop(); });
  }

  ~TorchEngine() override { Shutdown(absl::ZeroDuration()); }

  const ModelInfo& info() const override { return info_; }
  const EngineLimits& limits() const override { return options_.limits; }

  absl::Status Submit(GenerateRequest request, std::shared_ptr<GenerateSink> sink) override {
    RETURN_IF_ERROR(ValidateSampling(request.sampling, options_.limits, info_.vocab_size));
    RETURN_IF_ERROR(CheckAdapter(request.adapter));
    std::vector<int32_t> ids;
    if (!request.prompt_ids.empty()) {
      RETURN_IF_ERROR(CheckIds(request.prompt_ids));
      ids = request.prompt_ids;
    } else {
      RETURN_IF_ERROR(CheckPromptText(request.prompt));
      ids = tokenizer_->Encode(request.prompt, request.add_special_tokens,
                               request.parse_special_tokens);
    }
    RETURN_IF_ERROR(CheckPromptLength(ids.size(), 1));
    const uint64_t seed = request.sampling.seed ? *request.sampling.seed : std::random_device{}();
    auto sequence = std::make_unique<Sequence>(std::move(request), std::move(sink), std::move(ids),
                                               tokenizer_.get(), eos_ids_, info_.context_length,
                                               seed);
    return Enqueue(PendingGenerate{std::move(sequence)});
  }

  absl::Status SubmitScore(ScoreRequest request, ScoreCallback done) override {
    RETURN_IF_ERROR(CheckAdapter(request.adapter));
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
    auto job = std::make_shared<ScoreJob>();
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
    RETURN_IF_ERROR(CheckPromptLength(job->prompt_ids.size(), 1));
    for (const std::vector<int32_t>& ids : job->continuation_ids) {
      if (ids.empty()) return absl::InvalidArgumentError("continuations must not be empty");
      RETURN_IF_ERROR(CheckIds(ids));
      RETURN_IF_ERROR(CheckPromptLength(job->prompt_ids.size() + ids.size(), 0));
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
    return s;
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
  absl::Status CheckAdapter(const std::string& adapter) const {
    if (adapter.empty()) return absl::OkStatus();
    return absl::NotFoundError(absl::StrCat("adapter \"", adapter, "\" not found"));
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

  // Moves queued work into free slots, FIFO. Engine thread only.
  void Admit() {
    std::lock_guard<std::mutex> lock(mu_);
    while (!queue_.empty() && !free_slots_.empty()) {
      Pending& front = queue_.front();
      if (auto* gen = std::get_if<PendingGenerate>(&front)) {
        gen->sequence->set_slot(TakeSlot());
        running_.push_back(std::move(gen->sequence));
        queue_.pop_front();
        continue;
      }
      auto& job = std::get<std::shared_ptr<ScoreJob>>(front);
      while (job->next < job->continuation_ids.size() && !free_slots_.empty()) {
        scoring_.push_back({job, job->next++, TakeSlot()});
      }
      if (job->next == job->continuation_ids.size()) queue_.pop_front();
    }
    stats_.running = static_cast<int64_t>(running_.size() + scoring_.size());
    stats_.free_slots = static_cast<int64_t>(free_slots_.size());
  }

  int TakeSlot() {
    const int slot = free_slots_.back();
    free_slots_.pop_back();
    return slot;
  }

  void ReleaseSlot(int slot) {
    std::lock_guard<std::mutex> lock(mu_);
    free_slots_.push_back(slot);
    stats_.free_slots = static_cast<int64_t>(free_slots_.size());
  }

  void Loop() {
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] {
          return shutting_down_ || !queue_.empty() || !running_.empty() || !scoring_.empty();
        });
        if (shutting_down_) {
          const bool idle = queue_.empty() && running_.empty() && scoring_.empty();
          if (idle || absl::Now() >= drain_deadline_) break;
        }
      }
      Admit();
      DropDead();
      try {
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
        gen->sequence->sink()->OnFinish(status, gen->sequence->result());
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
    {
      // Counted before the sink hears of it, so that a client that saw its
      // request end never reads it as still running.
      std::lock_guard<std::mutex> lock(mu_);
      stats_.running = std::max<int64_t>(0, stats_.running - 1);
    }
    seq.sink()->OnFinish(status, seq.result());
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.requests_finished;
    if (absl::IsCancelled(status)) ++stats_.requests_cancelled;
  }

  // Calls the job's callback once; later calls (other rows of a failed job) do nothing.
  void FinishScore(ScoreJob& job, const absl::Status& status) {
    if (!job.done) return;
    ScoreCallback done = std::move(job.done);
    job.done = nullptr;
    if (status.ok()) {
      done(std::move(job.result));
    } else {
      done(status);
    }
    std::lock_guard<std::mutex> lock(mu_);
    ++stats_.requests_finished;
    if (absl::IsCancelled(status)) ++stats_.requests_cancelled;
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
    for (auto& seq : running_) {
      batch.slots.push_back(seq->slot());
      batch.past_lens.push_back(seq->cached_tokens());
      batch.tokens.push_back(seq->PendingTokens());
      if (seq->cached_tokens() == 0) prompt_tokens += batch.tokens.back().size();
    }
    at::Tensor logits = model_->Forward(batch, *cache_).to(at::kCPU).contiguous();
    const int64_t vocab = logits.size(1);
    const float* data = logits.data_ptr<float>();
    int64_t generated = 0;
    for (size_t i = 0; i < running_.size(); ++i) {
      Sequence& seq = *running_[i];
      seq.MarkCached();
      SampledToken token = seq.sampler().Sample(data + i * vocab, vocab);
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
      batch.slots.push_back(row.slot);
      batch.past_lens.push_back(0);
      batch.tokens.push_back(std::move(tokens));
    }
    at::Tensor logits = model_->Forward(batch, *cache_).to(at::kCPU).contiguous();
    const int64_t vocab = logits.size(1);
    const float* data = logits.data_ptr<float>();
    int64_t offset = 0;
    for (size_t r = 0; r < scoring_.size(); ++r) {
      ScoreJob& job = *scoring_[r].job;
      const size_t n_prompt = job.prompt_ids.size();
      const auto& cont = job.continuation_ids[scoring_[r].index];
      ContinuationScore& score = job.result.scores[scoring_[r].index];
      score.greedy = true;
      StreamDecoder decoder(tokenizer_.get(), job.prompt_ids, /*skip_special_tokens=*/false);
      for (size_t j = 0; j < cont.size(); ++j) {
        const float* row = data + (offset + n_prompt - 1 + j) * vocab;
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
      offset += static_cast<int64_t>(n_prompt + cont.size());
      ReleaseSlot(scoring_[r].slot);
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

  const EngineOptions options_;
  std::unique_ptr<CausalLM> model_;
  std::unique_ptr<Tokenizer> tokenizer_;
  const ModelInfo info_;
  std::vector<int32_t> eos_ids_;

  // Engine thread only.
  std::unique_ptr<KvCache> cache_;
  std::vector<std::unique_ptr<Sequence>> running_;
  std::vector<ScoreRow> scoring_;

  mutable std::mutex mu_;  // Guards queue_, free_slots_, stats_, accepting_ and the shutdown fields.
  std::condition_variable cv_;
  std::deque<Pending> queue_;
  std::vector<int> free_slots_;
  EngineStats stats_;
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
  return std::unique_ptr<Engine>(
      new TorchEngine(std::move(options), std::move(model), std::move(tokenizer), std::move(info)));
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
