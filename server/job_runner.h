#pragma once

// Runs training jobs: a FIFO queue of QUEUED jobs and `max_jobs` runner
// threads, each calling Engine::Train for one job at a time on its own
// thread. Owns the lifecycle of a job once it exists:
//
//   QUEUED ──runner──▶ RUNNING ──Train ok + adapter registered──▶ SUCCEEDED
//     │                  ├──Train error / registration error──▶ FAILED
//     └─Cancel─▶ CANCELLED ◀──Cancel (token fired, Train returned)
//
// Progress reports update an in-memory snapshot (what Get/Subscribe see) at
// once and the registry at most every `persist_interval` (and at every state
// change). The result (work_dir/output) is published through
// AdapterStore::PublishDirectory as a new version of the output name owned by
// the job's tenant (its storage quota applies); then the work dir is removed.
//
// Work dirs: DATA_DIR/jobs/<job_id>/ (checkpoint/ and output/ are the
// engine's). A FAILED job keeps its work dir (its checkpoint) for
// `keep_failed_work_dirs`, a CANCELLED or SUCCEEDED one is removed at once;
// start-up removes expired ones and dirs without a job.
//
// Restart (Start): a job a crash or kill left RUNNING is QUEUED again to
// resume from its checkpoint when its work dir is there, else FAILED with
// the reason; none stays RUNNING. Shutdown: running jobs are cancelled (the
// trainer checkpoints and returns) and go back to QUEUED for the next start;
// queued ones stay QUEUED.
//
// Thread-safe. Does not own the engine, registry or store (all must outlive it).

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters_store/adapter_store.h"
#include "adapters_store/job_registry.h"
#include "engine/api/engine.h"
#include "engine/api/training.h"

namespace adapterd {

struct JobRunnerOptions {
  int max_jobs = 1;      // Runner threads: jobs training at once.
  std::string jobs_dir;  // DATA_DIR/jobs.
  absl::Duration persist_interval = absl::Seconds(2);
  absl::Duration keep_failed_work_dirs = absl::Hours(72);
};

// What a job needs to run, made from its record when a runner takes it.
struct PreparedJob {
  TrainingSpec spec;  // work_dir and job_id are set by the runner.
  // Store pins (init adapter, fusion children) held while the job runs.
  std::vector<std::shared_ptr<const void>> pins;
};

class JobRunner {
 public:
  // Builds the spec of a job from its record (resolving its dataset and
  // adapters). An error fails the job with it.
  using Preparer = std::function<absl::StatusOr<PreparedJob>(const JobRecord&)>;
  // The storage quota of a tenant, read when a job's adapter is registered.
  using QuotaLookup = std::function<StorageQuota(const std::string& owner)>;
  // Receives every update of a watched job, on the thread that made it. Must
  // not block.
  using Listener = std::function<void(const JobRecord&)>;

  JobRunner(Engine* engine, JobRegistry* registry, AdapterStore* store, Preparer prepare,
            QuotaLookup quota, JobRunnerOptions options);
  ~JobRunner();  // Shutdown().

  // Recovers the jobs of the last run (see the file comment), queues every
  // QUEUED job in creation order and starts the runner threads.
  absl::Status Start();

  // Queues a job the registry just inserted (state QUEUED).
  void Enqueue(const JobRecord& job);

  // The job: the live snapshot while a runner has it, else the registry's.
  absl::StatusOr<JobRecord> Get(const std::string& job_id);

  // Cancels a job (see the file comment) and returns it as it is now: a
  // QUEUED one CANCELLED, a RUNNING one with cancel_requested, a final one
  // unchanged. NOT_FOUND as the registry.
  absl::StatusOr<JobRecord> Cancel(const std::string& job_id);

  // Calls `listener` with every later update of the job and returns the
  // subscription id; `*current` gets the snapshot at subscription time, so
  // that no update falls between the two.
  absl::StatusOr<int64_t> Subscribe(const std::string& job_id, Listener listener,
                                    JobRecord* current);
  void Unsubscribe(const std::string& job_id, int64_t subscription);

  // Cancels running jobs, waits for their trainers to return, marks them
  // QUEUED and joins the threads. Idempotent.
  void Shutdown();

  // Jobs training now (tests).
  int running() const;

 private:
  struct Active {
    JobRecord record;
    std::shared_ptr<CancellationToken> cancel;
    absl::Time last_persist = absl::InfinitePast();
  };

  void Loop();
  void RunJob(JobRecord job);
  // Stores `job` (when `persist`), updates the live snapshot and notifies.
  void Update(const JobRecord& job, bool persist);
  void Notify(const JobRecord& job);
  std::string WorkDir(const std::string& job_id) const;
  void SweepWorkDirs();

  Engine* const engine_;
  JobRegistry* const registry_;
  AdapterStore* const store_;
  const Preparer prepare_;
  const QuotaLookup quota_;
  const JobRunnerOptions options_;

  mutable absl::Mutex mu_;  // Guards everything below.
  std::deque<std::string> queue_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Active> active_ ABSL_GUARDED_BY(mu_);  // Jobs a runner holds.
  std::map<std::string, std::map<int64_t, Listener>> listeners_ ABSL_GUARDED_BY(mu_);
  int64_t next_subscription_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace adapterd
