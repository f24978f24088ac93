#include "adapters_store/job_registry.h"

#include <sqlite3.h>

#include <cmath>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "adapters_store/file_util.h"
#include "adapters_store/sqlite_stmt.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"

namespace adapterd {
namespace {

using sqlite::Arg;
using sqlite::DbError;
using sqlite::Stmt;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS training_jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  owner TEXT NOT NULL,
  state INTEGER NOT NULL,
  method TEXT NOT NULL,
  output_name TEXT NOT NULL,
  dataset_id TEXT NOT NULL,
  client_request_id TEXT NOT NULL,
  spec TEXT NOT NULL,
  dataset_report TEXT NOT NULL,
  progress TEXT NOT NULL,
  error_code TEXT NOT NULL,
  error TEXT NOT NULL,
  result_adapter TEXT NOT NULL,
  result_version INTEGER NOT NULL,
  cancel_requested INTEGER NOT NULL,
  attempts INTEGER NOT NULL,
  created_at_us INTEGER NOT NULL,
  started_at_us INTEGER NOT NULL,
  finished_at_us INTEGER NOT NULL);
CREATE UNIQUE INDEX IF NOT EXISTS training_jobs_request
  ON training_jobs(owner, client_request_id) WHERE client_request_id != '';
CREATE INDEX IF NOT EXISTS training_jobs_owner ON training_jobs(owner, seq);
CREATE TABLE IF NOT EXISTS datasets (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  owner TEXT NOT NULL,
  name TEXT NOT NULL,
  sha256 TEXT NOT NULL,
  size INTEGER NOT NULL,
  lines INTEGER NOT NULL,
  created_at_us INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS datasets_owner ON datasets(owner, seq);
PRAGMA user_version = 1;
)sql";

constexpr char kJobColumns[] =
    "seq, id, owner, state, method, output_name, dataset_id, client_request_id, spec, "
    "dataset_report, progress, error_code, error, result_adapter, result_version, "
    "cancel_requested, attempts, created_at_us, started_at_us, finished_at_us";

constexpr char kDatasetColumns[] = "seq, id, owner, name, sha256, size, lines, created_at_us";

nlohmann::json Finite(double v) { return std::isfinite(v) ? nlohmann::json(v) : nullptr; }
double NumberOr(const nlohmann::json& j, const char* key, double fallback) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

std::string ProgressToJson(const JobProgress& p) {
  nlohmann::json j = {{"phase", p.phase},
                      {"step", p.step},
                      {"total_steps", p.total_steps},
                      {"epoch", p.epoch},
                      {"loss", Finite(p.loss)},
                      {"eval_loss", Finite(p.eval_loss)},
                      {"learning_rate", p.learning_rate},
                      {"tokens_per_second", p.tokens_per_second},
                      {"eta_seconds", p.eta_seconds},
                      {"tokens_seen", p.tokens_seen},
                      {"resumed_from_step", p.resumed_from_step}};
  return j.dump();
}

JobProgress ProgressFromJson(const std::string& text) {
  JobProgress p;
  const nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return p;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  p.phase = static_cast<int>(NumberOr(j, "phase", 0));
  p.step = static_cast<int64_t>(NumberOr(j, "step", 0));
  p.total_steps = static_cast<int64_t>(NumberOr(j, "total_steps", 0));
  p.epoch = static_cast<int>(NumberOr(j, "epoch", 0));
  p.loss = NumberOr(j, "loss", nan);
  p.eval_loss = NumberOr(j, "eval_loss", nan);
  p.learning_rate = NumberOr(j, "learning_rate", 0);
  p.tokens_per_second = NumberOr(j, "tokens_per_second", 0);
  p.eta_seconds = NumberOr(j, "eta_seconds", 0);
  p.tokens_seen = static_cast<int64_t>(NumberOr(j, "tokens_seen", 0));
  p.resumed_from_step = static_cast<int64_t>(NumberOr(j, "resumed_from_step", 0));
  return p;
}

JobRecord RowToJob(const Stmt& s) {
  JobRecord j;
  j.seq = s.Int(0);
  j.id = s.Text(1);
  j.owner = s.Text(2);
  j.state = static_cast<JobState>(s.Int(3));
  j.method = s.Text(4);
  j.output_name = s.Text(5);
  j.dataset_id = s.Text(6);
  j.client_request_id = s.Text(7);
  j.spec = s.Text(8);
  j.dataset_report = s.Text(9);
  j.progress = ProgressFromJson(s.Text(10));
  j.error_code = s.Text(11);
  j.error = s.Text(12);
  j.result_adapter = s.Text(13);
  j.result_version = s.Int(14);
  j.cancel_requested = s.Int(15) != 0;
  j.attempts = static_cast<int>(s.Int(16));
  j.created_at = absl::FromUnixMicros(s.Int(17));
  j.started_at = absl::FromUnixMicros(s.Int(18));
  j.finished_at = absl::FromUnixMicros(s.Int(19));
  return j;
}

DatasetRecord RowToDataset(const Stmt& s) {
  DatasetRecord d;
  d.seq = s.Int(0);
  d.id = s.Text(1);
  d.owner = s.Text(2);
  d.name = s.Text(3);
  d.sha256 = s.Text(4);
  d.size = s.Int(5);
  d.lines = s.Int(6);
  d.created_at = absl::FromUnixMicros(s.Int(7));
  return d;
}

// Page tokens are the seq of the last record returned (records come newest first).
absl::StatusOr<int64_t> ParsePageToken(const std::string& token) {
  if (token.empty()) return std::numeric_limits<int64_t>::max();
  int64_t seq = 0;
  if (!absl::SimpleAtoi(token, &seq) || seq <= 0) {
    return absl::InvalidArgumentError("bad page_token");
  }
  return seq;
}

absl::Status CheckPageSize(int size) {
  if (size < 1 || size > 1000) return absl::InvalidArgumentError("page_size must be 1..1000");
  return absl::OkStatus();
}

}  // namespace

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kQueued:
      return "QUEUED";
    case JobState::kRunning:
      return "RUNNING";
    case JobState::kSucceeded:
      return "SUCCEEDED";
    case JobState::kFailed:
      return "FAILED";
    case JobState::kCancelled:
      return "CANCELLED";
  }
  return "UNKNOWN";
}

absl::StatusOr<std::unique_ptr<JobRegistry>> JobRegistry::Open(const std::string& path) {
  ASSIGN_OR_RETURN(sqlite3 * db, sqlite::OpenDatabase(path, "job registry", /*create=*/true));
  std::unique_ptr<JobRegistry> registry(new JobRegistry(db));
  absl::MutexLock lock(&registry->mu_);
  RETURN_IF_ERROR(sqlite::Exec(db, kSchema));
  return registry;
}

JobRegistry::~JobRegistry() { sqlite3_close(db_); }

absl::StatusOr<JobRecord> JobRegistry::InsertJob(JobRecord job, bool* existed) {
  absl::MutexLock lock(&mu_);
  *existed = false;
  if (!job.client_request_id.empty()) {
    Stmt find(db_, absl::StrCat("SELECT ", kJobColumns,
                                " FROM training_jobs WHERE owner = ? AND client_request_id = ?"));
    RETURN_IF_ERROR(find.Prepared());
    find.Bind({job.owner, job.client_request_id});
    if (find.Step() == SQLITE_ROW) {
      *existed = true;
      return RowToJob(find);
    }
  }
  job.id = absl::StrCat("job_", RandomHexId().substr(0, 20));
  job.state = JobState::kQueued;
  Stmt insert(db_,
              "INSERT INTO training_jobs (id, owner, state, method, output_name, dataset_id, "
              "client_request_id, spec, dataset_report, progress, error_code, error, "
              "result_adapter, result_version, cancel_requested, attempts, created_at_us, "
              "started_at_us, finished_at_us) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, '', '', '', 0, "
              "0, 0, ?, 0, 0)");
  RETURN_IF_ERROR(insert.Prepared());
  insert.Bind({job.id, job.owner, int64_t{static_cast<int>(job.state)}, job.method, job.output_name,
               job.dataset_id, job.client_request_id, job.spec, job.dataset_report,
               ProgressToJson(job.progress), absl::ToUnixMicros(job.created_at)});
  if (insert.Step() != SQLITE_DONE) return DbError(db_, "insert job");
  job.seq = sqlite3_last_insert_rowid(db_);
  return job;
}

absl::StatusOr<JobRecord> JobRegistry::GetJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kJobColumns, " FROM training_jobs WHERE id = ?"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({id});
  if (s.Step() != SQLITE_ROW) {
    return absl::NotFoundError(absl::StrCat("training job ", id, " not found"));
  }
  return RowToJob(s);
}

absl::StatusOr<JobPage> JobRegistry::ListJobs(const JobQuery& query) {
  RETURN_IF_ERROR(CheckPageSize(query.page_size));
  ASSIGN_OR_RETURN(const int64_t before, ParsePageToken(query.page_token));
  absl::MutexLock lock(&mu_);
  std::string sql = absl::StrCat("SELECT ", kJobColumns, " FROM training_jobs WHERE seq < ?");
  std::vector<Arg> args = {before};
  if (!query.owner.empty()) {
    absl::StrAppend(&sql, " AND owner = ?");
    args.emplace_back(query.owner);
  }
  if (query.state.has_value()) {
    absl::StrAppend(&sql, " AND state = ?");
    args.emplace_back(int64_t{static_cast<int>(*query.state)});
  }
  absl::StrAppend(&sql, " ORDER BY seq DESC LIMIT ?");
  args.emplace_back(int64_t{query.page_size} + 1);
  Stmt s(db_, sql);
  RETURN_IF_ERROR(s.Prepared());
  s.Bind(args);
  JobPage page;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) page.jobs.push_back(RowToJob(s));
  if (rc != SQLITE_DONE) return DbError(db_, "list jobs");
  if (static_cast<int>(page.jobs.size()) > query.page_size) {
    page.jobs.pop_back();
    page.next_page_token = absl::StrCat(page.jobs.back().seq);
  }
  return page;
}

absl::StatusOr<int64_t> JobRegistry::CountActiveJobs(const std::string& owner) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM training_jobs WHERE owner = ? AND state IN (?, ?)");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({owner, int64_t{static_cast<int>(JobState::kQueued)},
          int64_t{static_cast<int>(JobState::kRunning)}});
  if (s.Step() != SQLITE_ROW) return DbError(db_, "count jobs");
  return s.Int(0);
}

absl::StatusOr<int64_t> JobRegistry::CountActiveJobsUsing(const std::string& dataset_id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM training_jobs WHERE dataset_id = ? AND state IN (?, ?)");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({dataset_id, int64_t{static_cast<int>(JobState::kQueued)},
          int64_t{static_cast<int>(JobState::kRunning)}});
  if (s.Step() != SQLITE_ROW) return DbError(db_, "count jobs");
  return s.Int(0);
}

absl::StatusOr<std::vector<JobRecord>> JobRegistry::JobsInState(JobState state) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kJobColumns,
                           " FROM training_jobs WHERE state = ? ORDER BY seq ASC"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({int64_t{static_cast<int>(state)}});
  std::vector<JobRecord> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(RowToJob(s));
  if (rc != SQLITE_DONE) return DbError(db_, "list jobs");
  return out;
}

absl::StatusOr<bool> JobRegistry::UpdateLocked(const JobRecord& job,
                                               std::optional<JobState> expected) {
  std::string sql =
      "UPDATE training_jobs SET state = ?, dataset_report = ?, progress = ?, error_code = ?, "
      "error = ?, result_adapter = ?, result_version = ?, cancel_requested = ?, attempts = ?, "
      "started_at_us = ?, finished_at_us = ? WHERE id = ?";
  std::vector<Arg> args = {int64_t{static_cast<int>(job.state)},
                           job.dataset_report,
                           ProgressToJson(job.progress),
                           job.error_code,
                           job.error,
                           job.result_adapter,
                           job.result_version,
                           int64_t{job.cancel_requested ? 1 : 0},
                           int64_t{job.attempts},
                           absl::ToUnixMicros(job.started_at),
                           absl::ToUnixMicros(job.finished_at),
                           job.id};
  if (expected.has_value()) {
    sql += " AND state = ?";
    args.emplace_back(int64_t{static_cast<int>(*expected)});
  }
  Stmt s(db_, sql);
  RETURN_IF_ERROR(s.Prepared());
  s.Bind(args);
  if (s.Step() != SQLITE_DONE) return DbError(db_, "update job");
  return sqlite3_changes(db_) > 0;
}

absl::Status JobRegistry::UpdateJob(const JobRecord& job) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(const bool changed, UpdateLocked(job, std::nullopt));
  if (!changed) return absl::NotFoundError(absl::StrCat("training job ", job.id, " not found"));
  return absl::OkStatus();
}

absl::StatusOr<bool> JobRegistry::UpdateJobIf(const JobRecord& job, JobState expected) {
  absl::MutexLock lock(&mu_);
  return UpdateLocked(job, expected);
}

absl::StatusOr<std::optional<JobRecord>> JobRegistry::FindByClientRequestId(
    const std::string& owner, const std::string& client_request_id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kJobColumns,
                           " FROM training_jobs WHERE owner = ? AND client_request_id = ?"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({owner, client_request_id});
  if (s.Step() != SQLITE_ROW) return std::optional<JobRecord>();
  return std::optional<JobRecord>(RowToJob(s));
}

absl::StatusOr<bool> JobRegistry::CancelIfQueued(const std::string& id, absl::Time now) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "UPDATE training_jobs SET state = ?, cancel_requested = 1, finished_at_us = ? "
         "WHERE id = ? AND state = ?");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({int64_t{static_cast<int>(JobState::kCancelled)}, absl::ToUnixMicros(now), id,
          int64_t{static_cast<int>(JobState::kQueued)}});
  if (s.Step() != SQLITE_DONE) return DbError(db_, "cancel job");
  return sqlite3_changes(db_) > 0;
}

absl::StatusOr<DatasetRecord> JobRegistry::InsertDataset(DatasetRecord dataset) {
  absl::MutexLock lock(&mu_);
  dataset.id = absl::StrCat("ds_", RandomHexId().substr(0, 20));
  Stmt s(db_,
         "INSERT INTO datasets (id, owner, name, sha256, size, lines, created_at_us) "
         "VALUES (?, ?, ?, ?, ?, ?, ?)");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({dataset.id, dataset.owner, dataset.name, dataset.sha256, dataset.size, dataset.lines,
          absl::ToUnixMicros(dataset.created_at)});
  if (s.Step() != SQLITE_DONE) return DbError(db_, "insert dataset");
  dataset.seq = sqlite3_last_insert_rowid(db_);
  return dataset;
}

absl::StatusOr<DatasetRecord> JobRegistry::GetDataset(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kDatasetColumns, " FROM datasets WHERE id = ?"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({id});
  if (s.Step() != SQLITE_ROW) {
    return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
  }
  return RowToDataset(s);
}

absl::StatusOr<DatasetPage> JobRegistry::ListDatasets(const DatasetQuery& query) {
  RETURN_IF_ERROR(CheckPageSize(query.page_size));
  ASSIGN_OR_RETURN(const int64_t before, ParsePageToken(query.page_token));
  absl::MutexLock lock(&mu_);
  std::string sql = absl::StrCat("SELECT ", kDatasetColumns, " FROM datasets WHERE seq < ?");
  std::vector<Arg> args = {before};
  if (!query.owner.empty()) {
    absl::StrAppend(&sql, " AND owner = ?");
    args.emplace_back(query.owner);
  }
  absl::StrAppend(&sql, " ORDER BY seq DESC LIMIT ?");
  args.emplace_back(int64_t{query.page_size} + 1);
  Stmt s(db_, sql);
  RETURN_IF_ERROR(s.Prepared());
  s.Bind(args);
  DatasetPage page;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) page.datasets.push_back(RowToDataset(s));
  if (rc != SQLITE_DONE) return DbError(db_, "list datasets");
  if (static_cast<int>(page.datasets.size()) > query.page_size) {
    page.datasets.pop_back();
    page.next_page_token = absl::StrCat(page.datasets.back().seq);
  }
  return page;
}

absl::Status JobRegistry::DeleteDataset(const std::string& id) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "DELETE FROM datasets WHERE id = ?");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({id});
  if (s.Step() != SQLITE_DONE) return DbError(db_, "delete dataset");
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(absl::StrCat("dataset ", id, " not found"));
  }
  return absl::OkStatus();
}

absl::StatusOr<int64_t> JobRegistry::DatasetBytes(const std::string& owner) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT COALESCE(SUM(size), 0) FROM datasets WHERE owner = ?");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({owner});
  if (s.Step() != SQLITE_ROW) return DbError(db_, "dataset bytes");
  return s.Int(0);
}

absl::StatusOr<int64_t> JobRegistry::CountDatasetsWithSha(const std::string& sha256) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "SELECT COUNT(*) FROM datasets WHERE sha256 = ?");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({sha256});
  if (s.Step() != SQLITE_ROW) return DbError(db_, "count datasets");
  return s.Int(0);
}

absl::Status JobRegistry::Checkpoint() {
  absl::MutexLock lock(&mu_);
  if (sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr) !=
      SQLITE_OK) {
    return DbError(db_, "checkpoint");
  }
  return absl::OkStatus();
}

}  // namespace adapterd
