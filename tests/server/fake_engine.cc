#include "tests/server/fake_engine.h"

#include <algorithm>
#include <fstream>
#include <functional>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "adapters_store/file_util.h"
#include "tests/store/store_test_util.h"

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

namespace adapterd::testing {
namespace {

std::string Slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

}  // namespace

std::vector<int64_t> FakeEngine::train_resumes() const {
  absl::MutexLock lock(&mu_);
  return train_resumes_;
}

int FakeEngine::trains_running() const {
  absl::MutexLock lock(&mu_);
  return trains_running_;
}

TrainingSpec FakeEngine::last_validated_spec() const {
  absl::MutexLock lock(&mu_);
  return last_validated_spec_;
}

absl::StatusOr<DatasetReport> FakeEngine::ValidateTraining(const TrainingSpec& spec) const {
  {
    absl::MutexLock lock(&mu_);
    last_validated_spec_ = spec;
  }
  for (const std::string& target : spec.lora.target_modules) {
    if (spec.method == TrainingMethod::kLora && target == "bogus") {
      return absl::FailedPreconditionError("lora target module \"bogus\" is not in the model");
    }
  }
  if (spec.hyper.batch_size <= 0) return absl::InvalidArgumentError("batch_size must be >= 1");
  std::ifstream in(spec.dataset_path, std::ios::binary);
  if (!in) return absl::NotFoundError("dataset file not found");
  DatasetReport report;
  std::string line;
  int64_t number = 0;
  std::vector<std::string> malformed;
  while (std::getline(in, line)) {
    ++number;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    ++report.lines;
    // nlohmann's parser refuses invalid UTF-8 inside strings.
    const nlohmann::json row = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool pair = row.is_object() && row.contains("prompt") && row["prompt"].is_string() &&
                      row.contains("completion") && row["completion"].is_string();
    const bool text = row.is_object() && row.contains("text") && row["text"].is_string();
    if (!pair && !text) {
      malformed.push_back(absl::StrCat("line ", number,
                                       ": not a {prompt, completion} or {text} "
                                       "JSON object"));
      continue;
    }
    const std::string target =
        pair ? row["completion"].get<std::string>() : row["text"].get<std::string>();
    if (target.empty()) {
      ++report.skipped_empty;
      continue;
    }
    ++report.rows_used;
    report.tokens += static_cast<int64_t>(line.size());
  }
  for (size_t i = 0; i < malformed.size() && i < 5; ++i)
    report.first_errors.push_back(malformed[i]);
  if (!malformed.empty() && !spec.dataset_options.skip_invalid_rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("the dataset has ", malformed.size(),
                     " malformed lines: ", absl::StrJoin(report.first_errors, "; ")));
  }
  report.skipped_malformed = static_cast<int64_t>(malformed.size());
  if (report.rows_used == 0) return absl::InvalidArgumentError("the dataset has no usable rows");
  report.eval_rows =
      static_cast<int64_t>(static_cast<double>(report.rows_used) * spec.hyper.eval_fraction);
  report.train_rows = report.rows_used - report.eval_rows;
  return report;
}

absl::StatusOr<TrainingResult> FakeEngine::Train(const TrainingSpec& spec,
                                                 const TrainingProgressCallback& progress,
                                                 const CancellationToken& cancel) {
  absl::StatusOr<DatasetReport> report = ValidateTraining(spec);
  if (!report.ok()) return report.status();
  const std::string checkpoint = spec.work_dir + "/checkpoint";
  int64_t step = 0;
  const absl::Duration delay = options_.train_step_delay;
  {
    absl::MutexLock lock(&mu_);
    if (!accepting_) return absl::UnavailableError("the engine is shutting down");
    const std::string saved = Slurp(checkpoint + "/step");
    if (!saved.empty() && !absl::SimpleAtoi(saved, &step)) step = 0;
    train_resumes_.push_back(step);
    ++trains_running_;
  }
  struct Running {
    FakeEngine* engine;
    ~Running() {
      absl::MutexLock lock(&engine->mu_);
      --engine->trains_running_;
    }
  } running{this};
  const int64_t batches = (report->train_rows + spec.hyper.batch_size - 1) / spec.hyper.batch_size;
  const int64_t total = spec.hyper.max_steps > 0
                            ? spec.hyper.max_steps
                            : std::max<int64_t>(1, spec.hyper.epochs * batches);
  TrainingProgress p;
  p.total_steps = total;
  p.resumed_from_step = step;
  p.phase = TrainingPhase::kTraining;
  while (step < total) {
    if (cancel.cancelled()) {
      return absl::CancelledError(absl::StrCat("training cancelled at step ", step));
    }
    absl::SleepFor(delay);
    ++step;
    if (spec.hyper.learning_rate >= 10 && step == 3) {
      return absl::InternalError("step 3: the loss is not finite");
    }
    p.step = step;
    p.epoch = static_cast<int>((step - 1) / std::max<int64_t>(1, batches));
    p.loss = 2.0 / static_cast<double>(step + 1);
    p.learning_rate = spec.hyper.learning_rate;
    p.tokens_seen += report->tokens / std::max<int64_t>(1, batches);
    p.tokens_per_second = 1000.0;
    p.eta_seconds = absl::ToDoubleSeconds(delay) * static_cast<double>(total - step);
    if (spec.hyper.checkpoint_every > 0 && step % spec.hyper.checkpoint_every == 0) {
      absl::Status made = MakeDirs(checkpoint);
      if (made.ok()) made = WriteFileAtomically(checkpoint + "/step", absl::StrCat(step));
      if (!made.ok()) return made;
    }
    progress(p);
  }
  p.phase = TrainingPhase::kSaving;
  progress(p);
  TrainingResult result;
  result.output_dir = spec.work_dir + "/output";
  WriteFiles(result.output_dir, LoraFiles(spec.hyper.seed));
  result.method = "lora";
  result.steps = step;
  result.final_loss = p.loss;
  result.dataset = *report;
  result.resumed_from_step = p.resumed_from_step;
  return result;
}

}  // namespace adapterd::testing
