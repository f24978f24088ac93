#pragma once

// Training jobs and datasets: their durable records, in their own SQLite
// database (DATA_DIR/training.db, WAL, synchronous=FULL) beside the adapter
// registry, so that the adapter tables and their migrations stay untouched.
//
// A job's spec, dataset report and progress are written by the server; the
// spec and report are opaque text here (the server's own serialisation), the
// progress a plain struct. Every record belongs to a tenant (`owner`); the
// registry does not enforce who may read what: callers compare owners.
//
// Crash recovery is the caller's (the job runner's): JobsInState(kRunning)
// at start-up are the jobs a crash or kill left RUNNING.

#include <cstdint>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct sqlite3;

namespace adapterd {

enum class JobState {
  kQueued = 1,
  kRunning = 2,
  kSucceeded = 3,
  kFailed = 4,
  kCancelled = 5,
};
const char* JobStateName(JobState state);  // "QUEUED", "RUNNING", ...
inline bool IsFinal(JobState s) {
  return s == JobState::kSucceeded || s == JobState::kFailed || s == JobState::kCancelled;
}

// The last progress report of a running job (engine/api/training.h's
// TrainingProgress, without depending on the engine).
struct JobProgress {
  int phase = 0;  // TrainingPhase as an int.
  int64_t step = 0;
  int64_t total_steps = 0;
  int epoch = 0;
  double loss = std::numeric_limits<double>::quiet_NaN();
  double eval_loss = std::numeric_limits<double>::quiet_NaN();
  double learning_rate = 0;
  double tokens_per_second = 0;
  double eta_seconds = 0;
  int64_t tokens_seen = 0;
  int64_t resumed_from_step = 0;
};

struct JobRecord {
  std::string id;  // "job_" + 20 hex.
  std::string owner;
  JobState state = JobState::kQueued;
  std::string method;
  std::string output_name;
  std::string dataset_id;
  std::string client_request_id;  // Empty: none; else unique per owner.
  std::string spec;               // Opaque (the server's serialisation of the request).
  std::string dataset_report;     // Opaque.
  JobProgress progress;
  std::string
      error_code;  // "FAILED_PRECONDITION", ...; empty unless FAILED/CANCELLED with a reason.
  std::string error;
  std::string result_adapter;  // Name of the registered adapter (SUCCEEDED).
  int64_t result_version = 0;
  bool cancel_requested = false;
  int attempts = 0;
  absl::Time created_at = absl::UnixEpoch();
  absl::Time started_at = absl::UnixEpoch();   // Epoch: not started.
  absl::Time finished_at = absl::UnixEpoch();  // Epoch: not finished.
  int64_t seq = 0;  // Insertion order (newest = highest); set by the registry.
};

struct DatasetRecord {
  std::string id;  // "ds_" + 20 hex.
  std::string owner;
  std::string name;
  std::string sha256;  // The file's digest; also its blob name.
  int64_t size = 0;
  int64_t lines = 0;
  absl::Time created_at = absl::UnixEpoch();
  int64_t seq = 0;
};

struct JobQuery {
  std::string owner;  // Empty: every owner.
  std::optional<JobState> state;
  int page_size = 50;      // 1..1000.
  std::string page_token;  // From the previous page.
};

struct JobPage {
  std::vector<JobRecord> jobs;  // Newest first.
  std::string next_page_token;
};

struct DatasetQuery {
  std::string owner;  // Empty: every owner.
  int page_size = 100;
  std::string page_token;
};

struct DatasetPage {
  std::vector<DatasetRecord> datasets;  // Newest first.
  std::string next_page_token;
};

// Thread-safe: one connection, serialised by a mutex.
class JobRegistry {
 public:
  // Opens (or creates) the database at `path`.
  static absl::StatusOr<std::unique_ptr<JobRegistry>> Open(const std::string& path);
  ~JobRegistry();

  // Inserts a new job (state QUEUED) with a fresh id and returns it. When the
  // record has a client_request_id that `owner` used before, nothing is
  // inserted and the earlier job is returned with `*existed` = true.
  absl::StatusOr<JobRecord> InsertJob(JobRecord job, bool* existed);
  // NOT_FOUND "training job <id> not found".
  absl::StatusOr<JobRecord> GetJob(const std::string& id);
  // INVALID_ARGUMENT for a bad page token or size.
  absl::StatusOr<JobPage> ListJobs(const JobQuery& query);
  // Jobs of `owner` in QUEUED or RUNNING.
  absl::StatusOr<int64_t> CountActiveJobs(const std::string& owner);
  // QUEUED or RUNNING jobs that use `dataset_id`.
  absl::StatusOr<int64_t> CountActiveJobsUsing(const std::string& dataset_id);
  // Every job in `state`, oldest first.
  absl::StatusOr<std::vector<JobRecord>> JobsInState(JobState state);

  // Writes the mutable fields of `job` (state, progress, report, error,
  // result, cancel_requested, attempts, timestamps). NOT_FOUND if absent.
  absl::Status UpdateJob(const JobRecord& job);
  // UpdateJob, only if the stored state is `expected`; false otherwise.
  absl::StatusOr<bool> UpdateJobIf(const JobRecord& job, JobState expected);
  // The job `owner` created with `client_request_id`; nullopt if none.
  absl::StatusOr<std::optional<JobRecord>> FindByClientRequestId(
      const std::string& owner, const std::string& client_request_id);
  // QUEUED → CANCELLED in one statement; false if the job was not QUEUED.
  absl::StatusOr<bool> CancelIfQueued(const std::string& id, absl::Time now);

  // ALREADY_EXISTS never (ids are fresh); INTERNAL on database errors.
  absl::StatusOr<DatasetRecord> InsertDataset(DatasetRecord dataset);
  // NOT_FOUND "dataset <id> not found".
  absl::StatusOr<DatasetRecord> GetDataset(const std::string& id);
  absl::StatusOr<DatasetPage> ListDatasets(const DatasetQuery& query);
  absl::Status DeleteDataset(const std::string& id);
  // Bytes of `owner`'s datasets.
  absl::StatusOr<int64_t> DatasetBytes(const std::string& owner);
  // Records (any owner) whose file is `sha256`.
  absl::StatusOr<int64_t> CountDatasetsWithSha(const std::string& sha256);

  // Writes the WAL back into the database file (a clean close).
  absl::Status Checkpoint();

 private:
  explicit JobRegistry(sqlite3* db) : db_(db) {}
  absl::StatusOr<bool> UpdateLocked(const JobRecord& job, std::optional<JobState> expected)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;  // Serialises every use of db_.
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace adapterd
