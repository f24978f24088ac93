#include "server/job_runner.h"

#include <dirent.h>
#include <sys/stat.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters_store/file_util.h"
#include "spdlog/spdlog.h"

namespace adapterd {
namespace {

bool IsDir(const std::string& path) {
  struct stat st;
  return ::lstat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

JobProgress ToJobProgress(const TrainingProgress& p) {
  JobProgress out;
  out.phase = static_cast<int>(p.phase);
  out.step = p.step;
  out.total_steps = p.total_steps;
  out.epoch = p.epoch;
  out.loss = p.loss;
  out.eval_loss = p.eval_loss;
  out.learning_rate = p.learning_rate;
  out.tokens_per_second = p.tokens_per_second;
  out.eta_seconds = p.eta_seconds;
  out.tokens_seen = p.tokens_seen;
  out.resumed_from_step = p.resumed_from_step;
  return out;
}

void SetError(JobRecord& job, const absl::Status& status) {
  job.error_code = absl::StatusCodeToString(status.code());
  job.error = std::string(status.message());
}

}  // namespace

JobRunner::JobRunner(Engine* engine, JobRegistry* registry, AdapterStore* store, Preparer prepare,
                     QuotaLookup quota, JobRunnerOptions options)
    : engine_(engine),
      registry_(registry),
      store_(store),
      prepare_(std::move(prepare)),
      quota_(std::move(quota)),
      options_(std::move(options)) {}

JobRunner::~JobRunner() { Shutdown(); }

std::string JobRunner::WorkDir(const std::string& job_id) const {
  return absl::StrCat(options_.jobs_dir, "/", job_id);
}

absl::Status JobRunner::Start() {
  if (absl::Status s = MakeDirs(options_.jobs_dir); !s.ok()) return s;
  absl::StatusOr<std::vector<JobRecord>> running = registry_->JobsInState(JobState::kRunning);
  if (!running.ok()) return running.status();
  for (JobRecord& job : *running) {
    job.cancel_requested = false;
    if (IsDir(WorkDir(job.id))) {
      job.state = JobState::kQueued;
      spdlog::info("training job {} was RUNNING when the server stopped: queued to resume", job.id);
    } else {
      job.state = JobState::kFailed;
      job.finished_at = absl::Now();
      job.error_code = "ABORTED";
      job.error = "the server stopped while the job ran and its work dir is gone";
      spdlog::warn("training job {}: {}", job.id, job.error);
    }
    if (absl::Status s = registry_->UpdateJob(job); !s.ok()) return s;
  }
  absl::StatusOr<std::vector<JobRecord>> queued = registry_->JobsInState(JobState::kQueued);
  if (!queued.ok()) return queued.status();
  SweepWorkDirs();
  absl::MutexLock lock(&mu_);
  for (const JobRecord& job : *queued) queue_.push_back(job.id);
  started_ = true;
  for (int i = 0; i < std::max(1, options_.max_jobs); ++i) {
    threads_.emplace_back([this] { Loop(); });
  }
  return absl::OkStatus();
}

void JobRunner::SweepWorkDirs() {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(options_.jobs_dir.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    }
    ::closedir(d);
  }
  const absl::Time now = absl::Now();
  for (const std::string& name : names) {
    absl::StatusOr<JobRecord> job = registry_->GetJob(name);
    bool remove = absl::IsNotFound(job.status());
    if (job.ok()) {
      remove = job->state == JobState::kSucceeded || job->state == JobState::kCancelled ||
               (job->state == JobState::kFailed &&
                job->finished_at + options_.keep_failed_work_dirs < now);
    }
    if (remove) RemoveAll(WorkDir(name)).IgnoreError();
  }
}

void JobRunner::Enqueue(const JobRecord& job) {
  absl::MutexLock lock(&mu_);
  queue_.push_back(job.id);
}

int JobRunner::running() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(active_.size());
}

absl::StatusOr<JobRecord> JobRunner::Get(const std::string& job_id) {
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(job_id);
    if (it != active_.end()) return it->second.record;
  }
  return registry_->GetJob(job_id);
}

absl::StatusOr<JobRecord> JobRunner::Cancel(const std::string& job_id) {
  JobRecord snapshot;
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(job_id);
    if (it != active_.end()) {
      it->second.cancel->Cancel();
      it->second.record.cancel_requested = true;
      snapshot = it->second.record;
    }
  }
  if (!snapshot.id.empty()) {
    spdlog::info("training job {} tenant={}: cancel requested", job_id, snapshot.owner);
    // Only while still RUNNING: the runner may have stored the final state meanwhile.
    registry_->UpdateJobIf(snapshot, JobState::kRunning).IgnoreError();
    Notify(snapshot);
    return snapshot;
  }
  absl::StatusOr<bool> cancelled = registry_->CancelIfQueued(job_id, absl::Now());
  if (!cancelled.ok()) return cancelled.status();
  absl::StatusOr<JobRecord> job = registry_->GetJob(job_id);
  if (!job.ok()) return job.status();
  if (*cancelled) {
    {
      absl::MutexLock lock(&mu_);
      std::erase(queue_, job_id);
    }
    spdlog::info("training job {} tenant={}: cancelled while queued", job_id, job->owner);
    Notify(*job);
  } else if (job->state == JobState::kQueued || job->state == JobState::kRunning) {
    // Taken by a runner between the two reads: it is active now.
    return Cancel(job_id);
  }
  return job;
}

absl::StatusOr<int64_t> JobRunner::Subscribe(const std::string& job_id, Listener listener,
                                             JobRecord* current) {
  absl::MutexLock lock(&mu_);
  auto it = active_.find(job_id);
  if (it != active_.end()) {
    *current = it->second.record;
  } else {
    absl::StatusOr<JobRecord> job = registry_->GetJob(job_id);
    if (!job.ok()) return job.status();
    *current = *std::move(job);
  }
  const int64_t id = next_subscription_++;
  listeners_[job_id][id] = std::move(listener);
  return id;
}

void JobRunner::Unsubscribe(const std::string& job_id, int64_t subscription) {
  absl::MutexLock lock(&mu_);
  auto it = listeners_.find(job_id);
  if (it == listeners_.end()) return;
  it->second.erase(subscription);
  if (it->second.empty()) listeners_.erase(it);
}

void JobRunner::Notify(const JobRecord& job) {
  std::vector<Listener> listeners;
  {
    absl::MutexLock lock(&mu_);
    auto it = listeners_.find(job.id);
    if (it == listeners_.end()) return;
    for (const auto& [id, listener] : it->second) listeners.push_back(listener);
  }
  for (const Listener& listener : listeners) listener(job);
}

void JobRunner::Update(const JobRecord& job, bool persist) {
  {
    absl::MutexLock lock(&mu_);
    auto it = active_.find(job.id);
    if (it != active_.end()) {
      it->second.record = job;
      if (persist) it->second.last_persist = absl::Now();
    }
  }
  if (persist) {
    absl::Status stored = registry_->UpdateJob(job);
    if (!stored.ok())
      spdlog::error("training job {}: cannot store its state: {}", job.id, stored.ToString());
  }
  Notify(job);
}

void JobRunner::Loop() {
  while (true) {
    std::string job_id;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](JobRunner* r) { return r->stopping_ || !r->queue_.empty(); }, this));
      if (stopping_) return;
      job_id = queue_.front();
      queue_.pop_front();
    }
    absl::StatusOr<JobRecord> job = registry_->GetJob(job_id);
    if (!job.ok()) {
      spdlog::error("training job {}: {}", job_id, job.status().ToString());
      continue;
    }
    if (job->state != JobState::kQueued) continue;  // Cancelled meanwhile.
    RunJob(*std::move(job));
  }
}

void JobRunner::RunJob(JobRecord job) {
  auto cancel = std::make_shared<CancellationToken>();
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    active_[job.id] = Active{job, cancel};
  }
  job.state = JobState::kRunning;
  job.attempts += 1;
  if (job.started_at == absl::UnixEpoch()) job.started_at = absl::Now();
  job.error_code.clear();
  job.error.clear();
  // Only from QUEUED: a Cancel that found the job not yet active has made it
  // CANCELLED in the registry meanwhile, and that must stand.
  absl::StatusOr<bool> started = registry_->UpdateJobIf(job, JobState::kQueued);
  if (!started.ok() || !*started) {
    if (!started.ok()) {
      spdlog::error("training job {}: cannot start: {}", job.id, started.status().ToString());
    }
    absl::MutexLock lock(&mu_);
    active_.erase(job.id);
    return;
  }
  Update(job, /*persist=*/false);
  spdlog::info("training job {} tenant={} method={} output={}: running (attempt {})", job.id,
               job.owner, job.method, job.output_name, job.attempts);

  absl::StatusOr<TrainingResult> result = absl::UnknownError("not run");
  absl::StatusOr<PreparedJob> prepared = prepare_(job);
  const std::string work_dir = WorkDir(job.id);
  if (!prepared.ok()) {
    result = prepared.status();
  } else if (absl::Status made = MakeDirs(work_dir); !made.ok()) {
    result = made;
  } else {
    prepared->spec.job_id = job.id;
    prepared->spec.work_dir = work_dir;
    result = engine_->Train(
        prepared->spec,
        [this, &job](const TrainingProgress& p) {
          bool persist = false;
          {
            absl::MutexLock lock(&mu_);
            auto it = active_.find(job.id);
            if (it != active_.end()) {
              // Cancel may have set this flag on the live snapshot.
              job.cancel_requested = it->second.record.cancel_requested;
              persist = absl::Now() - it->second.last_persist >= options_.persist_interval;
            }
          }
          job.progress = ToJobProgress(p);
          Update(job, persist);
        },
        *cancel);
  }

  bool user_cancel = false;
  bool stopping = false;
  {
    absl::MutexLock lock(&mu_);
    user_cancel = active_[job.id].record.cancel_requested;
    stopping = stopping_;
  }
  job.cancel_requested = user_cancel;
  const bool cancelled = cancel->cancelled() && !result.ok();
  if (cancelled && stopping && !user_cancel) {
    // Shutdown: the checkpoint stays; the next start resumes the job.
    job.state = JobState::kQueued;
    spdlog::info("training job {}: stopped by shutdown at step {}; queued for the next start",
                 job.id, job.progress.step);
  } else if (cancelled || absl::IsCancelled(result.status())) {
    job.state = JobState::kCancelled;
    job.finished_at = absl::Now();
    RemoveAll(work_dir).IgnoreError();
    spdlog::info("training job {}: cancelled at step {}", job.id, job.progress.step);
  } else if (!result.ok()) {
    job.state = JobState::kFailed;
    job.finished_at = absl::Now();
    SetError(job, result.status());
    spdlog::warn("training job {}: failed: {}", job.id, result.status().ToString());
  } else {
    job.progress.phase = static_cast<int>(TrainingPhase::kSaving);
    job.progress.step = result->steps;
    job.progress.loss = result->final_loss;
    job.progress.eval_loss = result->eval_loss;
    job.progress.eta_seconds = 0;
    job.progress.resumed_from_step = result->resumed_from_step;
    absl::StatusOr<AdapterRecord> published = store_->PublishDirectory(
        job.owner, job.output_name, result->output_dir, /*method_hint=*/"", quota_(job.owner));
    job.finished_at = absl::Now();
    if (published.ok()) {
      job.state = JobState::kSucceeded;
      job.result_adapter = published->name;
      job.result_version = published->version;
      RemoveAll(work_dir).IgnoreError();
      spdlog::info("training job {} tenant={}: succeeded after {} steps, loss {:.4f}: {}@{}",
                   job.id, job.owner, result->steps, result->final_loss, published->name,
                   published->version);
    } else {
      job.state = JobState::kFailed;
      SetError(job, absl::Status(published.status().code(),
                                 absl::StrCat("registering the trained adapter: ",
                                              published.status().message())));
      spdlog::warn("training job {}: {}", job.id, job.error);
    }
  }
  absl::Status stored = registry_->UpdateJob(job);
  if (!stored.ok()) {
    spdlog::error("training job {}: cannot store its state: {}", job.id, stored.ToString());
  }
  {
    absl::MutexLock lock(&mu_);
    active_.erase(job.id);
  }
  Notify(job);
}

void JobRunner::Shutdown() {
  std::vector<std::thread> threads;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
    for (auto& [id, active] : active_) active.cancel->Cancel();
    threads.swap(threads_);
  }
  for (std::thread& t : threads) t.join();
}

}  // namespace adapterd
