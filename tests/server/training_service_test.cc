// The Training service over real loopback gRPC, in front of the fake
// engine's trainer (tests/server/fake_engine.h) and a real data dir:
// datasets, create/watch/cancel, validation before a job exists, the
// concurrent-jobs quota, idempotent creates, tenancy, failures, shutdown and
// restart recovery.

#include "server/training_service.h"

#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "tests/server/auth_test_util.h"

namespace adapterd::testing {
namespace {

std::string Rows(int n, int first_bad_line = 0, int empty_line = 0) {
  std::string out;
  for (int i = 1; i <= n; ++i) {
    if (i == first_bad_line) {
      out += "{not json\n";
    } else if (i == empty_line) {
      out += R"({"prompt": "123", "completion": ""})"
             "\n";
    } else {
      out += R"({"prompt": ")" + std::to_string(100 + i) + R"(", "completion": ")" +
             (i % 2 == 0 ? " even" : " odd") + "\"}\n";
    }
  }
  return out;
}

// A server with a data dir (authentication off: every caller is the admin
// tenant "default"), the fake engine and a client.
struct TrainingServer {
  explicit TrainingServer(absl::Duration step = absl::Milliseconds(2), int max_jobs = 1,
                          std::string root = "") {
    data = root.empty() ? tmp / "data" : root;
    Start(step, max_jobs);
  }
  ~TrainingServer() { Stop(); }

  void Start(absl::Duration step, int max_jobs) {
    FakeEngineOptions engine_options;
    engine_options.train_step_delay = step;
    engine = std::make_unique<FakeEngine>(engine_options);
    ServerOptions options;
    options.listen = "127.0.0.1:0";
    options.adapter_store.root = data;
    options.training.max_jobs = max_jobs;
    options.training.max_dataset_bytes = 1 << 20;
    options.training.progress_interval = absl::Milliseconds(20);
    options.training.memory_budget_bytes = 64 << 20;
    absl::StatusOr<std::unique_ptr<Server>> started = Server::Start(options, engine.get());
    ASSERT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
    ClientOptions client_options;
    client_options.target = server->address();
    client_options.timeout = std::chrono::seconds(30);
    client = std::make_unique<Client>(client_options);
  }

  void Stop() {
    if (server == nullptr) return;
    server->BeginShutdown();
    engine->Shutdown(absl::ZeroDuration());
    server->Shutdown(absl::Seconds(5));
    server.reset();
    engine.reset();
  }

  std::string Dataset(const std::string& text, const std::string& name = "digits") {
    const std::string path = tmp / ("ds" + std::to_string(counter++) + ".jsonl");
    std::ofstream(path, std::ios::binary) << text;
    v1::DatasetInfo info;
    grpc::Status status = client->UploadDataset(path, name, &info, nullptr, 64);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return info.dataset_id();
  }

  grpc::Status Create(v1::CreateTrainingJobRequest request, v1::TrainingJob* job) {
    return client->CreateTrainingJob(request, job);
  }

  // Watches `job_id` to its end; returns every state seen.
  std::vector<v1::TrainingJob> Watch(const std::string& job_id) {
    std::vector<v1::TrainingJob> seen;
    grpc::Status status = client->WatchTrainingJob(job_id, [&](const v1::TrainingJob& j) {
      seen.push_back(j);
      return true;
    });
    EXPECT_TRUE(status.ok()) << status.error_message();
    return seen;
  }

  // Polls until `done` holds for the job or 20 s pass.
  v1::TrainingJob WaitFor(const std::string& job_id,
                          const std::function<bool(const v1::TrainingJob&)>& done) {
    v1::TrainingJob job;
    const absl::Time deadline = absl::Now() + absl::Seconds(20);
    while (absl::Now() < deadline) {
      if (client->GetTrainingJob(job_id, &job).ok() && done(job)) return job;
      absl::SleepFor(absl::Milliseconds(5));
    }
    ADD_FAILURE() << "job " << job_id << " never reached the expected state: " << job.DebugString();
    return job;
  }

  TempDir tmp;
  std::string data;
  int counter = 0;
  std::unique_ptr<FakeEngine> engine;
  std::unique_ptr<Server> server;
  std::unique_ptr<Client> client;
};

v1::CreateTrainingJobRequest LoraJob(const std::string& dataset_id, const std::string& output,
                                     int64_t max_steps = 0) {
  v1::CreateTrainingJobRequest r;
  r.set_output_adapter(output);
  r.set_dataset_id(dataset_id);
  r.mutable_lora()->set_rank(8);
  r.mutable_lora()->add_target_modules("q_proj");
  r.mutable_lora()->add_target_modules("v_proj");
  r.mutable_hyperparameters()->set_learning_rate(0.02);
  r.mutable_hyperparameters()->set_batch_size(4);
  r.mutable_hyperparameters()->set_max_steps(max_steps);
  return r;
}

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

TEST(TrainingServiceTest, AJobRunsToSuccessAndItsAdapterIsRegisteredForTheTenant) {
  TrainingServer s;
  const std::string ds = s.Dataset(Rows(40));
  v1::TrainingJob job;
  v1::CreateTrainingJobRequest request = LoraJob(ds, "parity", 0);
  request.mutable_hyperparameters()->set_epochs(2);
  ASSERT_TRUE(s.Create(request, &job).ok());
  EXPECT_EQ(job.state(), v1::TRAINING_JOB_STATE_QUEUED);
  EXPECT_EQ(job.method(), "lora");
  EXPECT_EQ(job.dataset_report().rows_used(), 40);
  EXPECT_EQ(job.request().lora().alpha(), 0);  // Stored as sent; defaults apply in the engine spec.
  const std::vector<v1::TrainingJob> seen = s.Watch(job.job_id());
  ASSERT_FALSE(seen.empty());
  const v1::TrainingJob& last = seen.back();
  EXPECT_EQ(last.state(), v1::TRAINING_JOB_STATE_SUCCEEDED) << last.DebugString();
  EXPECT_EQ(last.result_adapter(), "parity@1");
  EXPECT_EQ(last.progress().step(), 20);  // 2 epochs × 40 rows / batch 4.
  EXPECT_EQ(last.progress().total_steps(), 20);
  EXPECT_GT(last.progress().loss(), 0);
  EXPECT_TRUE(last.has_finished_at());
  bool saw_running = false;
  for (const v1::TrainingJob& j : seen) saw_running |= j.state() == v1::TRAINING_JOB_STATE_RUNNING;
  EXPECT_TRUE(saw_running);
  // Registered in the caller's namespace, servable, and the work dir is gone.
  v1::AdapterInfo adapter;
  ASSERT_TRUE(s.client->GetAdapter("parity@1", &adapter).ok());
  EXPECT_EQ(adapter.owner(), "default");
  EXPECT_EQ(adapter.method(), "lora");
  EXPECT_FALSE(Exists(s.data + "/jobs/" + job.job_id()));
  // A second job publishes version 2 of the same name.
  ASSERT_TRUE(s.Create(LoraJob(ds, "parity", 3), &job).ok());
  EXPECT_EQ(s.Watch(job.job_id()).back().result_adapter(), "parity@2");
  // The stored record agrees with the stream.
  v1::TrainingJob got;
  ASSERT_TRUE(s.client->GetTrainingJob(job.job_id(), &got).ok());
  EXPECT_EQ(got.state(), v1::TRAINING_JOB_STATE_SUCCEEDED);
  EXPECT_EQ(got.progress().step(), 3);
  EXPECT_EQ(got.attempts(), 1);
}

TEST(TrainingServiceTest, BadSpecsAndDatasetsAreRefusedBeforeAJobExists) {
  TrainingServer s;
  const std::string good = s.Dataset(Rows(10));
  const std::string bad = s.Dataset(Rows(10, /*first_bad_line=*/3, /*empty_line=*/5));
  v1::TrainingJob job;
  grpc::Status st = s.Create(LoraJob(bad, "x"), &job);
  EXPECT_EQ(st.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("line 3"), std::string::npos) << st.error_message();
  // With skip_invalid_rows the bad line is skipped and counted, as is the empty completion.
  v1::CreateTrainingJobRequest skipping = LoraJob(bad, "x", 2);
  skipping.mutable_hyperparameters()->set_skip_invalid_rows(true);
  ASSERT_TRUE(s.Create(skipping, &job).ok());
  EXPECT_EQ(job.dataset_report().skipped_malformed(), 1);
  EXPECT_EQ(job.dataset_report().skipped_empty(), 1);
  EXPECT_EQ(job.dataset_report().rows_used(), 8);
  const std::string kept = job.job_id();

  v1::CreateTrainingJobRequest bogus = LoraJob(good, "x");
  bogus.mutable_lora()->add_target_modules("bogus");
  EXPECT_EQ(s.Create(bogus, &job).error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(s.Create(LoraJob("ds_missing", "x"), &job).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::CreateTrainingJobRequest no_method = LoraJob(good, "x");
  no_method.clear_lora();
  EXPECT_EQ(s.Create(no_method, &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.Create(LoraJob(good, "../escape"), &job).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  v1::CreateTrainingJobRequest negative = LoraJob(good, "x");
  negative.mutable_hyperparameters()->set_learning_rate(-1);
  EXPECT_EQ(s.Create(negative, &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::CreateTrainingJobRequest missing_init = LoraJob(good, "x");
  missing_init.set_init_adapter("nope");
  EXPECT_EQ(s.Create(missing_init, &job).error_code(), grpc::StatusCode::NOT_FOUND);
  v1::CreateTrainingJobRequest one_child;
  one_child.set_output_adapter("f");
  one_child.set_dataset_id(good);
  one_child.mutable_fusion()->add_adapters("a");
  EXPECT_EQ(s.Create(one_child, &job).error_code(), grpc::StatusCode::INVALID_ARGUMENT);

  // Only the valid job exists.
  v1::ListTrainingJobsResponse list;
  ASSERT_TRUE(s.client->ListTrainingJobs(v1::ListTrainingJobsRequest(), &list).ok());
  ASSERT_EQ(list.jobs_size(), 1);
  EXPECT_EQ(list.jobs(0).job_id(), kept);
}

TEST(TrainingServiceTest, CancelEndsAQueuedJobAtOnceAndARunningOneWithinAStep) {
  TrainingServer s(absl::Milliseconds(20), /*max_jobs=*/1);
  const std::string ds = s.Dataset(Rows(8));
  v1::TrainingJob running, queued;
  ASSERT_TRUE(s.Create(LoraJob(ds, "long", 100000), &running).ok());
  ASSERT_TRUE(s.Create(LoraJob(ds, "later", 100000), &queued).ok());
  s.WaitFor(running.job_id(), [](const v1::TrainingJob& j) { return j.progress().step() >= 2; });
  v1::TrainingJob got;
  ASSERT_TRUE(s.client->GetTrainingJob(queued.job_id(), &got).ok());
  EXPECT_EQ(got.state(), v1::TRAINING_JOB_STATE_QUEUED);
  ASSERT_TRUE(s.client->CancelTrainingJob(queued.job_id(), &got).ok());
  EXPECT_EQ(got.state(), v1::TRAINING_JOB_STATE_CANCELLED);

  // A watcher of the running job sees the cancellation as its last message.
  std::vector<v1::TrainingJob> seen;
  std::thread watcher([&] { seen = s.Watch(running.job_id()); });
  s.WaitFor(running.job_id(), [](const v1::TrainingJob& j) { return j.progress().step() >= 4; });
  ASSERT_TRUE(s.client->CancelTrainingJob(running.job_id(), &got).ok());
  EXPECT_TRUE(got.cancel_requested());
  watcher.join();
  ASSERT_FALSE(seen.empty());
  EXPECT_EQ(seen.back().state(), v1::TRAINING_JOB_STATE_CANCELLED);
  EXPECT_LT(seen.back().progress().step(), 100000);
  EXPECT_FALSE(Exists(s.data + "/jobs/" + running.job_id()));
  // Cancel of a finished job returns it unchanged; the cancelled ones made no adapter.
  ASSERT_TRUE(s.client->CancelTrainingJob(queued.job_id(), &got).ok());
  EXPECT_EQ(got.state(), v1::TRAINING_JOB_STATE_CANCELLED);
  v1::AdapterInfo adapter;
  EXPECT_EQ(s.client->GetAdapter("long", &adapter).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(s.engine->train_resumes().size(), 1u);  // The queued one never ran.
}

TEST(TrainingServiceTest, AFailingJobIsFailedWithTheEnginesErrorAndKeepsItsCheckpoint) {
  TrainingServer s;
  const std::string ds = s.Dataset(Rows(8));
  v1::CreateTrainingJobRequest diverging = LoraJob(ds, "boom", 50);
  diverging.mutable_hyperparameters()->set_learning_rate(10);
  diverging.mutable_hyperparameters()->set_checkpoint_every(1);
  v1::TrainingJob job;
  ASSERT_TRUE(s.Create(diverging, &job).ok());
  const v1::TrainingJob last = s.Watch(job.job_id()).back();
  EXPECT_EQ(last.state(), v1::TRAINING_JOB_STATE_FAILED);
  EXPECT_EQ(last.error_code(), "INTERNAL");
  EXPECT_NE(last.error().find("step 3"), std::string::npos) << last.error();
  EXPECT_TRUE(Exists(s.data + "/jobs/" + job.job_id() + "/checkpoint/step"));
}

TEST(TrainingServiceTest, TheDefaultRowLengthIsCappedAtTheModelsContextAndTheMemoryBudgetApplies) {
  TrainingServer s;  // The fake model's context is 256 tokens.
  const std::string ds = s.Dataset(Rows(4));
  v1::TrainingJob job;
  ASSERT_TRUE(s.Create(LoraJob(ds, "short", 1), &job).ok());
  EXPECT_EQ(s.engine->last_validated_spec().hyper.max_seq_length, 256);
  EXPECT_EQ(s.engine->last_validated_spec().memory_budget_bytes, 64 << 20);  // The server's.
  s.Watch(job.job_id());  // Its trainer validates too: let it finish first.
  v1::CreateTrainingJobRequest explicit_length = LoraJob(ds, "short", 1);
  explicit_length.mutable_hyperparameters()->set_max_seq_length(1024);
  ASSERT_TRUE(s.Create(explicit_length, &job).ok());
  EXPECT_EQ(s.engine->last_validated_spec().hyper.max_seq_length, 1024);  // The engine decides.
}

TEST(TrainingServiceTest, ARetriedCreateWithTheSameClientRequestIdMakesOneJob) {
  TrainingServer s;
  const std::string ds = s.Dataset(Rows(8));
  v1::CreateTrainingJobRequest request = LoraJob(ds, "once", 2);
  request.set_client_request_id("retry-me-1");
  v1::TrainingJob first, second;
  ASSERT_TRUE(s.Create(request, &first).ok());
  ASSERT_TRUE(s.Create(request, &second).ok());
  EXPECT_EQ(first.job_id(), second.job_id());
  v1::ListTrainingJobsResponse list;
  ASSERT_TRUE(s.client->ListTrainingJobs(v1::ListTrainingJobsRequest(), &list).ok());
  EXPECT_EQ(list.jobs_size(), 1);
  request.set_output_adapter("other");
  EXPECT_EQ(s.Create(request, &second).error_code(), grpc::StatusCode::ALREADY_EXISTS);
  request.set_client_request_id("bad id with spaces");
  EXPECT_EQ(s.Create(request, &second).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST(TrainingServiceTest, ListingIsPagedNewestFirstAndFiltersByState) {
  TrainingServer s;
  const std::string ds = s.Dataset(Rows(4));
  std::vector<std::string> ids;
  for (int i = 0; i < 5; ++i) {
    v1::TrainingJob job;
    ASSERT_TRUE(s.Create(LoraJob(ds, "p" + std::to_string(i), 1), &job).ok());
    ids.push_back(job.job_id());
  }
  for (const std::string& id : ids) s.Watch(id);
  std::vector<std::string> listed;
  v1::ListTrainingJobsRequest request;
  request.set_page_size(2);
  do {
    v1::ListTrainingJobsResponse page;
    ASSERT_TRUE(s.client->ListTrainingJobs(request, &page).ok());
    EXPECT_LE(page.jobs_size(), 2);
    for (const v1::TrainingJob& j : page.jobs()) listed.push_back(j.job_id());
    request.set_page_token(page.next_page_token());
  } while (!request.page_token().empty());
  EXPECT_EQ(listed, std::vector<std::string>(ids.rbegin(), ids.rend()));
  v1::ListTrainingJobsRequest failed;
  failed.set_state(v1::TRAINING_JOB_STATE_FAILED);
  v1::ListTrainingJobsResponse none;
  ASSERT_TRUE(s.client->ListTrainingJobs(failed, &none).ok());
  EXPECT_EQ(none.jobs_size(), 0);
}

TEST(TrainingServiceTest, DatasetsAreChecksummedLimitedSharedAndProtectedWhileInUse) {
  TrainingServer s(absl::Milliseconds(20));
  const std::string path = s.tmp / "d.jsonl";
  std::ofstream(path, std::ios::binary) << Rows(6);
  v1::DatasetInfo a, b;
  ASSERT_TRUE(s.client->UploadDataset(path, "d", &a).ok());
  ASSERT_TRUE(s.client->UploadDataset(path, "d-again", &b).ok());
  EXPECT_NE(a.dataset_id(), b.dataset_id());
  EXPECT_EQ(a.sha256(), b.sha256());
  EXPECT_EQ(a.lines(), 6);
  // A wrong checksum, bytes past the declared size, and too large a file.
  auto raw_upload = [&](const std::string& data, int64_t size, const std::string& sha) {
    grpc::ClientContext context;
    v1::DatasetInfo info;
    auto stub = v1::Training::NewStub(s.client->channel());
    auto writer = stub->UploadDataset(&context, &info);
    v1::UploadDatasetRequest header;
    header.mutable_header()->set_name("raw");
    header.mutable_header()->set_size(size);
    header.mutable_header()->set_sha256(sha);
    writer->Write(header);
    v1::UploadDatasetRequest chunk;
    chunk.mutable_chunk()->set_data(data);
    writer->Write(chunk);
    writer->WritesDone();
    return writer->Finish();
  };
  const std::string rows = Rows(2);
  EXPECT_EQ(raw_upload(rows, static_cast<int64_t>(rows.size()), std::string(64, 'a')).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(raw_upload(rows, 3, Sha256::Hex(rows)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(raw_upload(rows, rows.size() + 10, Sha256::Hex(rows)).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(raw_upload(rows, 2 << 20, Sha256::Hex(rows)).error_code(),
            grpc::StatusCode::RESOURCE_EXHAUSTED);
  // In use by a job: not deletable; then it is, and the shared bytes stay for the other.
  v1::TrainingJob job;
  ASSERT_TRUE(s.Create(LoraJob(a.dataset_id(), "uses-a", 100000), &job).ok());
  v1::DatasetInfo deleted;
  EXPECT_EQ(s.client->DeleteDataset(a.dataset_id(), &deleted).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  v1::TrainingJob cancelled;
  ASSERT_TRUE(s.client->CancelTrainingJob(job.job_id(), &cancelled).ok());
  s.WaitFor(job.job_id(),
            [](const v1::TrainingJob& j) { return j.state() == v1::TRAINING_JOB_STATE_CANCELLED; });
  ASSERT_TRUE(s.client->DeleteDataset(a.dataset_id(), &deleted).ok());
  EXPECT_EQ(s.client->DeleteDataset(a.dataset_id(), &deleted).error_code(),
            grpc::StatusCode::NOT_FOUND);
  EXPECT_TRUE(Exists(s.data + "/datasets/blobs/" + b.sha256() + ".jsonl"));
  ASSERT_TRUE(s.client->DeleteDataset(b.dataset_id(), &deleted).ok());
  EXPECT_FALSE(Exists(s.data + "/datasets/blobs/" + b.sha256() + ".jsonl"));
  v1::ListDatasetsResponse list;
  ASSERT_TRUE(s.client->ListDatasets(v1::ListDatasetsRequest(), &list).ok());
  EXPECT_EQ(list.datasets_size(), 0);
}

// SIGTERM path: a running job is stopped at a checkpoint and stays QUEUED;
// a restart resumes it. A job a crash left RUNNING resumes too, and one
// whose work dir is gone is FAILED with the reason; none stays RUNNING.
TEST(TrainingServiceTest, ShutdownKeepsARunningJobQueuedAndARestartResumesOrFailsEveryJob) {
  TempDir root;
  std::string resumed_id, lost_id;
  {
    TrainingServer s(absl::Milliseconds(10), 1, root / "data");
    const std::string ds = s.Dataset(Rows(8));
    v1::CreateTrainingJobRequest request = LoraJob(ds, "resumable", 40);
    request.mutable_hyperparameters()->set_checkpoint_every(2);
    v1::TrainingJob job;
    ASSERT_TRUE(s.Create(request, &job).ok());
    resumed_id = job.job_id();
    ASSERT_TRUE(s.Create(LoraJob(ds, "lost", 40), &job).ok());
    lost_id = job.job_id();
    s.WaitFor(resumed_id, [](const v1::TrainingJob& j) { return j.progress().step() >= 5; });
    s.Stop();
  }
  {
    absl::StatusOr<std::unique_ptr<JobRegistry>> registry =
        JobRegistry::Open(root / "data/training.db");
    ASSERT_TRUE(registry.ok());
    absl::StatusOr<JobRecord> stopped = (*registry)->GetJob(resumed_id);
    ASSERT_TRUE(stopped.ok());
    EXPECT_EQ(stopped->state, JobState::kQueued);
    EXPECT_GE(stopped->progress.step, 4);
    // As a kill -9 would leave them: both RUNNING; the second's work dir gone.
    for (const std::string& id : {resumed_id, lost_id}) {
      absl::StatusOr<JobRecord> job = (*registry)->GetJob(id);
      ASSERT_TRUE(job.ok());
      job->state = JobState::kRunning;
      ASSERT_TRUE((*registry)->UpdateJob(*job).ok());
    }
    std::filesystem::remove_all(root / ("data/jobs/" + lost_id));
  }
  TrainingServer s(absl::Milliseconds(2), 1, root / "data");
  v1::TrainingJob lost;
  ASSERT_TRUE(s.client->GetTrainingJob(lost_id, &lost).ok());
  EXPECT_EQ(lost.state(), v1::TRAINING_JOB_STATE_FAILED);
  EXPECT_NE(lost.error().find("work dir is gone"), std::string::npos) << lost.error();
  const v1::TrainingJob done = s.WaitFor(resumed_id, [](const v1::TrainingJob& j) {
    return j.state() == v1::TRAINING_JOB_STATE_SUCCEEDED;
  });
  EXPECT_EQ(done.progress().step(), 40);
  EXPECT_GE(done.progress().resumed_from_step(), 4);
  EXPECT_EQ(done.attempts(), 2);
  ASSERT_EQ(s.engine->train_resumes().size(), 1u);
  EXPECT_GE(s.engine->train_resumes()[0], 4);
  v1::ListTrainingJobsRequest running;
  running.set_state(v1::TRAINING_JOB_STATE_RUNNING);
  v1::ListTrainingJobsResponse none;
  ASSERT_TRUE(s.client->ListTrainingJobs(running, &none).ok());
  EXPECT_EQ(none.jobs_size(), 0);
}

TEST(TrainingServiceTest, ShutdownEndsOpenWatchesWithUnavailableAndKeepsTheJobQueued) {
  TrainingServer s(absl::Milliseconds(20));
  const std::string ds = s.Dataset(Rows(8));
  v1::TrainingJob job;
  ASSERT_TRUE(s.Create(LoraJob(ds, "stopped", 100000), &job).ok());
  grpc::Status watched;
  std::thread watcher([&] {
    watched = s.client->WatchTrainingJob(job.job_id(), [](const v1::TrainingJob&) { return true; });
  });
  s.WaitFor(job.job_id(), [](const v1::TrainingJob& j) { return j.progress().step() >= 2; });
  s.server->BeginShutdown();
  watcher.join();
  EXPECT_EQ(watched.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(watched.error_message(), "server is shutting down");
  absl::StatusOr<JobRecord> stored = s.server->job_registry()->GetJob(job.job_id());
  ASSERT_TRUE(stored.ok());
  EXPECT_EQ(stored->state, JobState::kQueued);
  EXPECT_GE(stored->progress.step, 2);
}

TEST(TrainingServiceTest, SeveralRunnersTrainJobsAtOnce) {
  TrainingServer s(absl::Milliseconds(20), /*max_jobs=*/2);
  const std::string ds = s.Dataset(Rows(8));
  v1::TrainingJob a, b;
  ASSERT_TRUE(s.Create(LoraJob(ds, "a", 100000), &a).ok());
  ASSERT_TRUE(s.Create(LoraJob(ds, "b", 100000), &b).ok());
  for (const v1::TrainingJob* j : {&a, &b}) {
    s.WaitFor(j->job_id(),
              [](const v1::TrainingJob& x) { return x.state() == v1::TRAINING_JOB_STATE_RUNNING; });
  }
  // Both trainers run at once (RUNNING is stored just before Train is called).
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  while (s.engine->trains_running() < 2 && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(5));
  }
  EXPECT_EQ(s.engine->trains_running(), 2);
  v1::TrainingJob c;
  for (const v1::TrainingJob* j : {&a, &b})
    ASSERT_TRUE(s.client->CancelTrainingJob(j->job_id(), &c).ok());
}

TEST(TrainingServiceTest, ATenantAtItsJobQuotaIsRefusedWithARetryHint) {
  TenantQuotas quotas;
  quotas.max_concurrent_jobs = 1;
  FakeEngineOptions engine_options;
  engine_options.train_step_delay = absl::Milliseconds(20);
  AuthServer s(engine_options, quotas);
  std::unique_ptr<Client> a = s.ClientFor(s.key_a);
  const std::string path = s.tmp / "q.jsonl";
  std::ofstream(path, std::ios::binary) << Rows(8);
  v1::DatasetInfo ds;
  ASSERT_TRUE(a->UploadDataset(path, "q", &ds).ok());
  v1::TrainingJob first, second;
  ASSERT_TRUE(a->CreateTrainingJob(LoraJob(ds.dataset_id(), "q1", 100000), &first).ok());
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer " + s.key_a);
  auto stub = v1::Training::NewStub(s.channel);
  grpc::Status refused =
      stub->CreateTrainingJob(&context, LoraJob(ds.dataset_id(), "q2", 1), &second);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(refused.error_message().find("training job quota"), std::string::npos);
  const auto& trailers = context.GetServerTrailingMetadata();
  auto hint = trailers.find(kRetryAfterMetadata);
  ASSERT_NE(hint, trailers.end());
  EXPECT_EQ(std::string(hint->second.data(), hint->second.size()), "30000");
  // Tenant b is not affected by a's quota.
  ASSERT_TRUE(s.ClientFor(s.key_b)->UploadDataset(path, "q", &ds).ok());
  ASSERT_TRUE(
      s.ClientFor(s.key_b)->CreateTrainingJob(LoraJob(ds.dataset_id(), "b1", 1), &second).ok());
  // Once a's job is over, a may create again.
  v1::TrainingJob cancelled;
  ASSERT_TRUE(a->CancelTrainingJob(first.job_id(), &cancelled).ok());
  const absl::Time deadline = absl::Now() + absl::Seconds(20);
  grpc::Status again;
  v1::DatasetInfo a_ds;
  ASSERT_TRUE(a->UploadDataset(path, "q", &a_ds).ok());
  do {
    again = a->CreateTrainingJob(LoraJob(a_ds.dataset_id(), "q3", 1), &second);
    if (!again.ok()) absl::SleepFor(absl::Milliseconds(20));
  } while (!again.ok() && absl::Now() < deadline);
  EXPECT_TRUE(again.ok()) << again.error_message();
}

// Another tenant's job or dataset answers exactly like a missing one; an
// admin sees every tenant's.
TEST(TrainingServiceTest, AnotherTenantsJobsAndDatasetsAnswerLikeMissingOnes) {
  FakeEngineOptions engine_options;
  engine_options.train_step_delay = absl::Milliseconds(20);
  AuthServer s(engine_options);
  std::unique_ptr<Client> a = s.ClientFor(s.key_a);
  std::unique_ptr<Client> b = s.ClientFor(s.key_b);
  std::unique_ptr<Client> admin = s.ClientFor(s.admin_key);
  const std::string path = s.tmp / "t.jsonl";
  std::ofstream(path, std::ios::binary) << Rows(8);
  v1::DatasetInfo ds;
  ASSERT_TRUE(a->UploadDataset(path, "secret-data", &ds).ok());
  v1::TrainingJob job;
  ASSERT_TRUE(a->CreateTrainingJob(LoraJob(ds.dataset_id(), "secret-out", 100000), &job).ok());

  // Each answer's code and message, the id asked for replaced by "<id>".
  auto probe = [&](Client& c, const std::string& job_id, const std::string& dataset_id) {
    std::vector<std::pair<int, std::string>> answers;
    auto add = [&](const grpc::Status& st, const std::string& id) {
      std::string m = st.error_message();
      if (size_t p = m.find(id); p != std::string::npos) m.replace(p, id.size(), "<id>");
      answers.emplace_back(st.error_code(), m);
    };
    v1::TrainingJob out;
    add(c.GetTrainingJob(job_id, &out), job_id);
    add(c.CancelTrainingJob(job_id, &out), job_id);
    add(c.WatchTrainingJob(job_id, [](const v1::TrainingJob&) { return true; }), job_id);
    v1::DatasetInfo info;
    add(c.DeleteDataset(dataset_id, &info), dataset_id);
    add(c.CreateTrainingJob(LoraJob(dataset_id, "steal", 1), &out), dataset_id);
    return answers;
  };
  const auto theirs = probe(*b, job.job_id(), ds.dataset_id());
  EXPECT_EQ(theirs, probe(*b, "job_00000000000000000000", "ds_00000000000000000000"));
  for (const auto& [code, message] : theirs)
    EXPECT_EQ(code, grpc::StatusCode::NOT_FOUND) << message;
  EXPECT_EQ(theirs[0].second, "training job <id> not found");
  EXPECT_EQ(theirs[3].second, "dataset <id> not found");
  v1::TrainingJob out;
  v1::ListTrainingJobsResponse b_jobs;
  ASSERT_TRUE(b->ListTrainingJobs(v1::ListTrainingJobsRequest(), &b_jobs).ok());
  EXPECT_EQ(b_jobs.jobs_size(), 0);
  v1::ListDatasetsResponse b_sets;
  ASSERT_TRUE(b->ListDatasets(v1::ListDatasetsRequest(), &b_sets).ok());
  EXPECT_EQ(b_sets.datasets_size(), 0);
  v1::ListTrainingJobsRequest all;
  all.set_all_tenants(true);
  EXPECT_EQ(b->ListTrainingJobs(all, &b_jobs).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  // The admin sees and may cancel a's job.
  v1::ListTrainingJobsResponse every;
  ASSERT_TRUE(admin->ListTrainingJobs(all, &every).ok());
  ASSERT_EQ(every.jobs_size(), 1);
  EXPECT_EQ(every.jobs(0).owner(), "a");
  ASSERT_TRUE(admin->GetTrainingJob(job.job_id(), &out).ok());
  ASSERT_TRUE(admin->CancelTrainingJob(job.job_id(), &out).ok());
  EXPECT_TRUE(out.cancel_requested() || out.state() == v1::TRAINING_JOB_STATE_CANCELLED);
}

}  // namespace
}  // namespace adapterd::testing
