// The job and dataset registry (training.db) on a real temp directory.

#include "adapters_store/job_registry.h"

#include <cmath>

#include "tests/store/store_test_util.h"

namespace adapterd::testing {
namespace {

JobRecord NewJob(const std::string& owner, const std::string& request_id = "") {
  JobRecord job;
  job.owner = owner;
  job.method = "lora";
  job.output_name = "out";
  job.dataset_id = "ds_1";
  job.client_request_id = request_id;
  job.spec = "{\"output_adapter\":\"out\"}";
  job.created_at = absl::FromUnixSeconds(100);
  return job;
}

TEST(JobRegistryTest, JobsPersistAcrossReopenWithEveryField) {
  TempDir tmp;
  std::string id;
  {
    auto registry = JobRegistry::Open(tmp / "training.db");
    ASSERT_TRUE(registry.ok()) << registry.status();
    bool existed = true;
    absl::StatusOr<JobRecord> job = (*registry)->InsertJob(NewJob("t"), &existed);
    ASSERT_TRUE(job.ok()) << job.status();
    EXPECT_FALSE(existed);
    EXPECT_EQ(job->state, JobState::kQueued);
    EXPECT_EQ(job->id.rfind("job_", 0), 0u);
    id = job->id;
    job->state = JobState::kSucceeded;
    job->progress.step = 12;
    job->progress.loss = 0.25;
    job->result_adapter = "out";
    job->result_version = 2;
    job->attempts = 2;
    job->started_at = absl::FromUnixSeconds(200);
    job->finished_at = absl::FromUnixSeconds(300);
    ASSERT_TRUE((*registry)->UpdateJob(*job).ok());
  }
  auto registry = JobRegistry::Open(tmp / "training.db");
  ASSERT_TRUE(registry.ok());
  absl::StatusOr<JobRecord> job = (*registry)->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->state, JobState::kSucceeded);
  EXPECT_EQ(job->progress.step, 12);
  EXPECT_EQ(job->progress.loss, 0.25);
  EXPECT_TRUE(std::isnan(job->progress.eval_loss));  // Unset stays NaN.
  EXPECT_EQ(job->result_version, 2);
  EXPECT_EQ(job->attempts, 2);
  EXPECT_EQ(job->finished_at, absl::FromUnixSeconds(300));
  EXPECT_EQ(job->spec, "{\"output_adapter\":\"out\"}");
  EXPECT_EQ((*registry)->GetJob("job_missing").status().message(),
            "training job job_missing not found");
}

// What the runner finds at start-up after a kill -9 in mid-job.
TEST(JobRegistryTest, ARunningJobIsFoundRunningAfterAnUncleanClose) {
  TempDir tmp;
  std::string id;
  {
    auto registry = JobRegistry::Open(tmp / "training.db");
    ASSERT_TRUE(registry.ok());
    bool existed = false;
    absl::StatusOr<JobRecord> job = (*registry)->InsertJob(NewJob("t"), &existed);
    ASSERT_TRUE(job.ok());
    id = job->id;
    job->state = JobState::kRunning;
    ASSERT_TRUE((*registry)->UpdateJobIf(*job, JobState::kQueued).value());
    // No checkpoint of the WAL: the handle just goes, as in a crash.
  }
  auto registry = JobRegistry::Open(tmp / "training.db");
  ASSERT_TRUE(registry.ok());
  absl::StatusOr<std::vector<JobRecord>> running = (*registry)->JobsInState(JobState::kRunning);
  ASSERT_TRUE(running.ok());
  ASSERT_EQ(running->size(), 1u);
  EXPECT_EQ(running->at(0).id, id);
}

TEST(JobRegistryTest, TransitionsAreConditionalAndCancelTakesOnlyQueuedJobs) {
  TempDir tmp;
  auto registry = JobRegistry::Open(tmp / "training.db");
  ASSERT_TRUE(registry.ok());
  bool existed = false;
  JobRecord job = *(*registry)->InsertJob(NewJob("t"), &existed);
  EXPECT_TRUE(*(*registry)->CancelIfQueued(job.id, absl::Now()));
  EXPECT_FALSE(*(*registry)->CancelIfQueued(job.id, absl::Now()));
  JobRecord running = job;
  running.state = JobState::kRunning;
  // The cancel stands: a runner cannot start a job that is no longer QUEUED.
  EXPECT_FALSE(*(*registry)->UpdateJobIf(running, JobState::kQueued));
  EXPECT_EQ((*registry)->GetJob(job.id)->state, JobState::kCancelled);
  EXPECT_TRUE((*registry)->GetJob(job.id)->cancel_requested);
}

TEST(JobRegistryTest, ClientRequestIdsAreUniquePerOwner) {
  TempDir tmp;
  auto registry = JobRegistry::Open(tmp / "training.db");
  ASSERT_TRUE(registry.ok());
  bool existed = false;
  JobRecord first = *(*registry)->InsertJob(NewJob("t", "k1"), &existed);
  EXPECT_FALSE(existed);
  JobRecord again = *(*registry)->InsertJob(NewJob("t", "k1"), &existed);
  EXPECT_TRUE(existed);
  EXPECT_EQ(again.id, first.id);
  JobRecord other = *(*registry)->InsertJob(NewJob("u", "k1"), &existed);
  EXPECT_FALSE(existed);
  EXPECT_NE(other.id, first.id);
  EXPECT_TRUE((*registry)->FindByClientRequestId("t", "k1").value().has_value());
  EXPECT_FALSE((*registry)->FindByClientRequestId("t", "k2").value().has_value());
  // Jobs without a key never collide.
  EXPECT_NE((*registry)->InsertJob(NewJob("t"), &existed)->id,
            (*registry)->InsertJob(NewJob("t"), &existed)->id);
}

TEST(JobRegistryTest, ListsArePagedNewestFirstPerOwnerAndCountActiveJobs) {
  TempDir tmp;
  auto registry = JobRegistry::Open(tmp / "training.db");
  ASSERT_TRUE(registry.ok());
  bool existed = false;
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) ids.push_back((*registry)->InsertJob(NewJob("t"), &existed)->id);
  (*registry)->InsertJob(NewJob("u"), &existed).IgnoreError();
  JobQuery query;
  query.owner = "t";
  query.page_size = 2;
  std::vector<std::string> seen;
  do {
    absl::StatusOr<JobPage> page = (*registry)->ListJobs(query);
    ASSERT_TRUE(page.ok());
    for (const JobRecord& j : page->jobs) seen.push_back(j.id);
    query.page_token = page->next_page_token;
  } while (!query.page_token.empty());
  EXPECT_EQ(seen, std::vector<std::string>(ids.rbegin(), ids.rend()));
  EXPECT_EQ(*(*registry)->CountActiveJobs("t"), 5);
  ASSERT_TRUE(*(*registry)->CancelIfQueued(ids[0], absl::Now()));
  EXPECT_EQ(*(*registry)->CountActiveJobs("t"), 4);
  EXPECT_EQ(*(*registry)->CountActiveJobsUsing("ds_1"), 5);  // 4 of t's and u's.
  query.page_token = "garbage";
  EXPECT_EQ((*registry)->ListJobs(query).status().code(), absl::StatusCode::kInvalidArgument);
  query.page_token = "";
  query.page_size = 0;
  EXPECT_EQ((*registry)->ListJobs(query).status().code(), absl::StatusCode::kInvalidArgument);
  JobQuery cancelled;
  cancelled.state = JobState::kCancelled;
  EXPECT_EQ((*registry)->ListJobs(cancelled)->jobs.size(), 1u);
}

}  // namespace
}  // namespace adapterd::testing
