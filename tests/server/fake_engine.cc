#include "tests/server/fake_engine.h"

#include <algorithm>
#include <functional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace adapterd::testing {
namespace {

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

int PromptTokens(const GenerateRequest& r) {
  const int n = r.prompt_ids.empty() ? static_cast<int>(r.prompt.size())
                                     : static_cast<int>(r.prompt_ids.size());
  return n + (r.add_special_tokens ? 1 : 0);
}

}  // namespace

FakeEngine::FakeEngine(FakeEngineOptions options)
    : options_(std::move(options)), step_delay_(options_.step_delay) {
  info_.name = "fake";
  info_.architecture = "llama";
  info_.model_type = "llama";
  info_.dtype = "float32";
  info_.device = "cpu";
  info_.fingerprint = "fake-fingerprint";
  info_.vocab_size = options_.vocab_size;
  info_.context_length = options_.context_length;
  info_.num_layers = 2;
  info_.hidden_size = 64;
  info_.num_heads = 4;
  info_.num_kv_heads = 2;
  info_.is_default_model = false;
  stats_.free_slots = options_.limits.max_batch_size;
  thread_ = std::thread([this] { Run(); });
}

FakeEngine::~FakeEngine() { Shutdown(absl::ZeroDuration()); }

GeneratedToken FakeEngine::TokenFor(const std::string& adapter, const std::string& prompt, int i,
                                    int64_t vocab_size) {
  GeneratedToken token;
  token.id = static_cast<int32_t>((Fnv1a(adapter + "|" + prompt) + 31ull * i) % vocab_size);
  token.text = absl::StrCat(" t", token.id);
  token.logprob = -0.1f * static_cast<float>(i + 1);
  return token;
}

std::string FakeEngine::ExpectedText(const std::string& adapter, const std::string& prompt, int n,
                                     int64_t vocab_size) {
  std::string text;
  for (int i = 0; i < n; ++i) text += TokenFor(adapter, prompt, i, vocab_size).text;
  return text;
}

void FakeEngine::FailNextSubmit(absl::Status status) {
  absl::MutexLock lock(&mu_);
  fail_next_ = std::move(status);
}

void FakeEngine::set_step_delay(absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  step_delay_ = delay;
}

int FakeEngine::submitted() const {
  absl::MutexLock lock(&mu_);
  return submitted_;
}

int FakeEngine::cancellations() const {
  absl::MutexLock lock(&mu_);
  return cancellations_;
}

int FakeEngine::deadlines_exceeded() const {
  absl::MutexLock lock(&mu_);
  return deadlines_exceeded_;
}

std::vector<GenerateRequest> FakeEngine::requests() const {
  absl::MutexLock lock(&mu_);
  return requests_;
}

bool FakeEngine::WaitForSubmitted(int n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return submitted_ >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

bool FakeEngine::WaitForCancellations(int n, absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return cancellations_ >= n; };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

bool FakeEngine::WaitForIdle(absl::Duration timeout) const {
  absl::MutexLock lock(&mu_);
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return jobs_.empty(); };
  return mu_.AwaitWithTimeout(absl::Condition(&done), timeout);
}

absl::Status FakeEngine::Admit(const std::string& adapter) const {
  if (!accepting_) return absl::UnavailableError("the engine is shutting down");
  if (!adapter.empty() && options_.adapters.count(adapter) == 0) {
    return absl::NotFoundError(absl::StrCat("adapter \"", adapter, "\" not found"));
  }
  if (static_cast<int>(jobs_.size()) >=
      options_.limits.max_batch_size + options_.limits.max_queue) {
    return absl::ResourceExhaustedError("the request queue is full");
  }
  return absl::OkStatus();
}

absl::Status FakeEngine::Submit(GenerateRequest request, std::shared_ptr<GenerateSink> sink) {
  absl::MutexLock lock(&mu_);
  if (!fail_next_.ok()) return std::exchange(fail_next_, absl::OkStatus());
  if (absl::Status s = Admit(request.adapter); !s.ok()) return s;
  if (request.prompt.empty() && request.prompt_ids.empty()) {
    return absl::InvalidArgumentError("prompt is empty");
  }
  if (absl::Status s = ValidateSampling(request.sampling, options_.limits, options_.vocab_size);
      !s.ok()) {
    return s;
  }
  const int prompt_tokens = PromptTokens(request);
  if (prompt_tokens >= options_.context_length) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prompt has ", prompt_tokens, " tokens; the context holds ", options_.context_length));
  }
  ++submitted_;
  requests_.push_back(request);
  Job job;
  job.request = std::move(request);
  job.sink = std::move(sink);
  job.prompt_tokens = prompt_tokens;
  jobs_.push_back(std::move(job));
  return absl::OkStatus();
}

absl::Status FakeEngine::SubmitScore(ScoreRequest request, ScoreCallback done) {
  absl::MutexLock lock(&mu_);
  if (!fail_next_.ok()) return std::exchange(fail_next_, absl::OkStatus());
  if (absl::Status s = Admit(request.adapter); !s.ok()) return s;
  ++submitted_;
  Job job;
  job.prompt_tokens = static_cast<int>(request.prompt.size()) + 1;
  job.score = std::move(request);
  job.score_done = std::move(done);
  jobs_.push_back(std::move(job));
  return absl::OkStatus();
}

EngineStats FakeEngine::Stats() const {
  absl::MutexLock lock(&mu_);
  return stats_;
}

void FakeEngine::Shutdown(absl::Duration drain) {
  {
    absl::MutexLock lock(&mu_);
    if (!thread_.joinable()) return;
    accepting_ = false;
    drain_deadline_ = absl::Now() + drain;
  }
  thread_.join();
}

void FakeEngine::Step(std::vector<std::function<void()>>* calls) {
  const absl::Time now = absl::Now();
  const bool force_stop = !accepting_ && now >= drain_deadline_;
  const size_t running = std::min<size_t>(jobs_.size(), options_.limits.max_batch_size);
  std::vector<bool> finished(jobs_.size(), false);
  for (size_t i = 0; i < running; ++i) {
    Job& job = jobs_[i];
    const bool is_score = job.sink == nullptr;
    const std::shared_ptr<CancellationToken>& cancel =
        is_score ? job.score.cancel : job.request.cancel;
    const absl::Time deadline = is_score ? job.score.deadline : job.request.deadline;
    absl::Status end = absl::OkStatus();
    if (force_stop) {
      end = absl::UnavailableError("the server is shutting down");
    } else if (cancel != nullptr && cancel->cancelled()) {
      end = absl::CancelledError("request cancelled by the client");
      ++cancellations_;
      ++stats_.requests_cancelled;
    } else if (now > deadline) {
      end = absl::DeadlineExceededError("deadline exceeded");
      ++deadlines_exceeded_;
    }
    GenerateResult result;
    result.prompt_tokens = job.prompt_tokens;
    result.completion_tokens = job.produced;
    if (!end.ok()) {
      finished[i] = true;
      if (is_score) {
        calls->push_back([done = std::move(job.score_done), end] { done(end); });
      } else {
        calls->push_back([sink = job.sink, end, result] { sink->OnFinish(end, result); });
      }
      continue;
    }
    if (is_score) {
      ScoreResult score;
      score.prompt_tokens = job.prompt_tokens;
      for (const std::string& c : job.score.continuations) {
        ContinuationScore cs;
        for (unsigned char ch : c) {
          GeneratedToken t;
          t.id = ch;
          t.text = std::string(1, static_cast<char>(ch));
          t.logprob = -0.5f;
          cs.logprob += t.logprob;
          cs.tokens.push_back(std::move(t));
        }
        cs.greedy = !c.empty() && c[0] == 'a';
        score.scores.push_back(std::move(cs));
      }
      stats_.prompt_tokens += job.prompt_tokens;
      ++stats_.requests_finished;
      finished[i] = true;
      calls->push_back([done = std::move(job.score_done), score = std::move(score)]() mutable {
        done(std::move(score));
      });
      continue;
    }
    GeneratedToken token =
        TokenFor(job.request.adapter, job.request.prompt, job.produced, options_.vocab_size);
    for (int k = 0; k < job.request.sampling.top_logprobs; ++k) {
      token.top.push_back({static_cast<int32_t>((token.id + k) % options_.vocab_size),
                           token.logprob - static_cast<float>(k)});
    }
    ++job.produced;
    ++stats_.generated_tokens;
    result.completion_tokens = job.produced;
    const bool eos = options_.eos_after >= 0 && job.produced >= options_.eos_after;
    const bool length = job.produced >= job.request.sampling.max_tokens;
    const bool context = job.prompt_tokens + job.produced >= options_.context_length;
    calls->push_back([sink = job.sink, token = std::move(token)]() mutable {
      std::vector<GeneratedToken> tokens;
      tokens.push_back(std::move(token));
      sink->OnTokens(std::move(tokens));
    });
    if (eos || length || context) {
      result.finish_reason = eos      ? FinishReason::kEos
                             : length ? FinishReason::kLength
                                      : FinishReason::kContextLength;
      finished[i] = true;
      stats_.prompt_tokens += job.prompt_tokens;
      ++stats_.requests_finished;
      calls->push_back([sink = job.sink, result] { sink->OnFinish(absl::OkStatus(), result); });
    }
  }
  std::vector<Job> remaining;
  for (size_t i = 0; i < jobs_.size(); ++i) {
    if (!finished[i]) remaining.push_back(std::move(jobs_[i]));
  }
  jobs_ = std::move(remaining);
  ++stats_.steps;
  stats_.running = std::min<int64_t>(jobs_.size(), options_.limits.max_batch_size);
  stats_.queued = static_cast<int64_t>(jobs_.size()) - stats_.running;
  stats_.free_slots = options_.limits.max_batch_size - stats_.running;
}

void FakeEngine::Run() {
  while (true) {
    std::vector<std::function<void()>> calls;
    absl::Duration delay;
    {
      absl::MutexLock lock(&mu_);
      auto ready = [&]()
                       ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !jobs_.empty() || !accepting_; };
      mu_.Await(absl::Condition(&ready));
      if (jobs_.empty() && !accepting_) return;
      Step(&calls);
      delay = step_delay_;
    }
    // Sinks run on this thread, outside the lock, as in the real engine.
    for (auto& call : calls) call();
    absl::SleepFor(delay);
  }
}

}  // namespace adapterd::testing
