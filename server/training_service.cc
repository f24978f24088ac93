#include "server/training_service.h"

#include <algorithm>
#include <optional>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/quota.h"
#include "server/request_id.h"
#include "server/status_convert.h"
#include "server/training_convert.h"
#include "server/upload_reactor.h"
#include "spdlog/spdlog.h"

namespace adapterd {
namespace {

constexpr char kShuttingDown[] = "server is shutting down";
// How long a tenant at its concurrent-jobs quota is told to wait: jobs take
// minutes, so polling faster only adds load.
constexpr absl::Duration kJobQuotaRetry = absl::Seconds(30);

std::string ForLog(const std::string& s) { return absl::CEscape(s.substr(0, 160)); }

absl::Status CheckClientRequestId(const std::string& id) {
  if (id.size() > 128)
    return absl::InvalidArgumentError("client_request_id is over 128 characters");
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) {
      return absl::InvalidArgumentError("client_request_id must be printable ASCII");
    }
  }
  return absl::OkStatus();
}

absl::Status CheckJobQuota(JobRegistry* registry, const Principal& who) {
  if (who.quotas.max_concurrent_jobs <= 0) return absl::OkStatus();
  absl::StatusOr<int64_t> active = registry->CountActiveJobs(who.tenant);
  if (!active.ok()) return active.status();
  if (*active >= who.quotas.max_concurrent_jobs) {
    return WithRetryAfter(
        absl::ResourceExhaustedError(absl::StrCat(
            "training job quota: the tenant has ", *active, " queued or running jobs of at most ",
            who.quotas.max_concurrent_jobs, "; retry after ", absl::ToInt64Seconds(kJobQuotaRetry),
            "s or when one finishes")),
        kJobQuotaRetry);
  }
  return absl::OkStatus();
}

}  // namespace

// One UploadDataset stream (see StreamingUploadReactor).
class TrainingService::UploadCall final : public StreamingUploadReactor<v1::UploadDatasetRequest> {
 public:
  UploadCall(TrainingService* service, grpc::CallbackServerContext* context,
             v1::DatasetInfo* response)
      : StreamingUploadReactor(
            context, &service->pool_, "a DatasetHeader",
            [datasets = service->datasets_](const std::string& id) { datasets->Abort(id); }),
        service_(service),
        response_(response) {}

 private:
  absl::StatusOr<std::string> BeginUpload(const v1::DatasetHeader& header) override {
    request_id_ = header.request_id().empty() ? NewRequestId() : ForLog(header.request_id());
    name_ = ForLog(header.name());
    return service_->datasets_->BeginUpload(who().tenant, header.name(), header.size(),
                                            absl::AsciiStrToLower(header.sha256()));
  }

  absl::Status AppendChunk(const std::string& upload_id, const v1::DatasetChunk& chunk) override {
    return service_->datasets_->Append(upload_id, chunk.offset(), chunk.data());
  }

  absl::Status CommitUpload(const std::string& upload_id) override {
    absl::StatusOr<DatasetRecord> record = service_->datasets_->Commit(upload_id);
    if (!record.ok()) return record.status();
    DatasetToProto(*record, response_);
    spdlog::info("UploadDataset request_id={} tenant={} dataset={} name={} ok bytes={} lines={}",
                 request_id_, who().tenant, record->id, record->name, record->size, record->lines);
    return absl::OkStatus();
  }

  void LogFailure(const absl::Status& status) override {
    spdlog::info("UploadDataset request_id={} tenant={} name={} failed: {}", request_id_,
                 who().tenant, name_, status.ToString());
  }

  TrainingService* const service_;
  v1::DatasetInfo* const response_;
  // Touched by one hook at a time (see StreamingUploadReactor).
  std::string request_id_;
  std::string name_;
};

// One WatchTrainingJob stream. The runner's listener and the reactor share a
// Core: the listener may still run after the reactor is gone, and the core
// says so. Only Pump starts writes or the finish, one write in flight, the
// latest state replacing an unwritten older one; OnDone comes only after
// the finish Pump started, so Pump never touches a deleted reactor.
class TrainingService::WatchCall final : public grpc::ServerWriteReactor<v1::TrainingJob> {
 public:
  struct Core {
    absl::Mutex mu;  // Guards the fields below and out while no write is in flight.
    WatchCall* call ABSL_GUARDED_BY(mu) = nullptr;  // Valid until finish_started.
    std::optional<JobRecord> pending ABSL_GUARDED_BY(mu);
    bool write_in_flight ABSL_GUARDED_BY(mu) = false;
    bool final_written ABSL_GUARDED_BY(mu) = false;  // The last write carried a final state.
    bool finish_started ABSL_GUARDED_BY(mu) = false;
    std::optional<absl::Status> abort ABSL_GUARDED_BY(mu);  // Finish with this instead.
    bool done ABSL_GUARDED_BY(mu) = false;                  // OnDone ran.
    int64_t subscription ABSL_GUARDED_BY(mu) = 0;
    v1::TrainingJob out;  // Owned by gRPC from StartWrite to OnWriteDone.
  };

  WatchCall(TrainingService* service, grpc::CallbackServerContext* context, std::string job_id)
      : service_(service),
        context_(context),
        job_id_(std::move(job_id)),
        core_(std::make_shared<Core>()) {
    absl::MutexLock lock(&core_->mu);
    core_->call = this;
  }

  void Start() {
    absl::StatusOr<Principal> who =
        service_->auth_->Authorize(*context_, "WatchTrainingJob", /*admin_only=*/false);
    absl::Status admit = who.ok() ? service_->Admit() : who.status();
    if (!admit.ok()) {
      Pump(core_, std::nullopt, admit);
      return;
    }
    {
      absl::MutexLock lock(&service_->watches_mu_);
      service_->watches_[core_.get()] = [core = core_](const absl::Status& status) {
        Pump(core, std::nullopt, status);
      };
    }
    // The subscription reads the registry: on a worker. The task holds only
    // the core, as the reactor may be gone by the time it runs.
    service_->pool_.Schedule(
        [core = core_, runner = service_->runner_, job_id = job_id_, who = *std::move(who)] {
          JobRecord current;
          absl::StatusOr<int64_t> sub = runner->Subscribe(
              job_id, [core](const JobRecord& job) { Pump(core, job, std::nullopt); }, &current);
          if (!sub.ok()) {
            Pump(core, std::nullopt, sub.status());
            return;
          }
          bool done = false;
          {
            absl::MutexLock lock(&core->mu);
            done = core->done;
            core->subscription = *sub;
          }
          if (done) {
            runner->Unsubscribe(job_id, *sub);
            return;
          }
          if (current.owner != who.tenant && !who.is_admin()) {
            Pump(core, std::nullopt,
                 absl::NotFoundError(absl::StrCat("training job ", job_id, " not found")));
            return;
          }
          Pump(core, current, std::nullopt);
        });
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&core_->mu);
      core_->write_in_flight = false;
      if (!ok && !core_->abort.has_value()) {
        core_->abort = absl::CancelledError("the client went away");
      }
    }
    Pump(core_, std::nullopt, std::nullopt);
  }

  void OnCancel() override {
    Pump(core_, std::nullopt, absl::CancelledError("the client cancelled the watch"));
  }

  void OnDone() override {
    int64_t subscription = 0;
    {
      absl::MutexLock lock(&core_->mu);
      core_->done = true;
      core_->call = nullptr;
      subscription = core_->subscription;
    }
    if (subscription != 0) service_->runner_->Unsubscribe(job_id_, subscription);
    {
      absl::MutexLock lock(&service_->watches_mu_);
      service_->watches_.erase(core_.get());
    }
    delete this;
  }

 private:
  // Adds `update` or `abort` and starts the next write or the finish, if due.
  // gRPC may run a reaction inline inside StartWrite/Finish: called without
  // the core's lock.
  static void Pump(const std::shared_ptr<Core>& core, std::optional<JobRecord> update,
                   std::optional<absl::Status> abort) {
    enum class Action { kNone, kWrite, kFinish } action = Action::kNone;
    grpc::Status final_status;
    WatchCall* call = nullptr;
    {
      absl::MutexLock lock(&core->mu);
      if (core->finish_started) return;
      if (update.has_value()) core->pending = std::move(update);
      if (abort.has_value() && !core->abort.has_value()) core->abort = std::move(abort);
      if (core->write_in_flight) return;
      call = core->call;
      if (core->abort.has_value()) {
        action = Action::kFinish;
        final_status = ToGrpcStatus(*core->abort);
      } else if (core->final_written) {
        action = Action::kFinish;
      } else if (core->pending.has_value()) {
        core->out.Clear();
        JobToProto(*core->pending, &core->out);
        core->final_written = IsFinal(core->pending->state);
        core->pending.reset();
        core->write_in_flight = true;
        action = Action::kWrite;
      }
      if (action == Action::kFinish) core->finish_started = true;
    }
    if (call == nullptr) return;
    if (action == Action::kWrite) call->StartWrite(&core->out);
    if (action == Action::kFinish) call->Finish(final_status);
  }

  TrainingService* const service_;
  grpc::CallbackServerContext* const context_;
  const std::string job_id_;
  const std::shared_ptr<Core> core_;
};

TrainingService::TrainingService(Engine* engine, AdapterStore* store, JobRegistry* registry,
                                 DatasetStore* datasets, JobRunner* runner,
                                 const Authenticator* auth, int64_t memory_budget_bytes,
                                 int workers)
    : engine_(engine),
      store_(store),
      registry_(registry),
      datasets_(datasets),
      runner_(runner),
      auth_(auth),
      memory_budget_bytes_(memory_budget_bytes),
      pool_(workers) {}

TrainingService::~TrainingService() = default;

void TrainingService::StopAccepting() {
  accepting_.store(false);
  std::vector<std::function<void(const absl::Status&)>> stoppers;
  {
    absl::MutexLock lock(&watches_mu_);
    for (const auto& [core, stop] : watches_) stoppers.push_back(stop);
  }
  for (const auto& stop : stoppers) stop(absl::UnavailableError(kShuttingDown));
}

absl::Status TrainingService::Admit() const {
  if (!accepting_.load()) return absl::UnavailableError(kShuttingDown);
  if (store_ == nullptr || registry_ == nullptr || datasets_ == nullptr || runner_ == nullptr) {
    return absl::FailedPreconditionError("this server has no data dir for training");
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* TrainingService::RunUnary(
    grpc::CallbackServerContext* context, const char* method,
    std::function<absl::Status(const Principal&)> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Principal> who = auth_->Authorize(*context, method, /*admin_only=*/false);
  absl::Status admit = who.ok() ? Admit() : who.status();
  if (!admit.ok()) {
    reactor->Finish(ToGrpcStatus(admit));
    return reactor;
  }
  pool_.Schedule([reactor, context, work = std::move(work), who = *std::move(who)] {
    const absl::Status status = work(who);
    AddRetryHint(context, status);
    reactor->Finish(ToGrpcStatus(status));
  });
  return reactor;
}

absl::StatusOr<TrainingSpec> TrainingService::SpecFor(
    const v1::CreateTrainingJobRequest& request) const {
  absl::StatusOr<TrainingSpec> spec = TrainingSpecFromProto(request);
  // The default row length is capped at the served model's context, so that
  // a job that does not ask for a length fits any model.
  if (spec.ok() && request.hyperparameters().max_seq_length() == 0 &&
      engine_->info().context_length > 0) {
    spec->hyper.max_seq_length = static_cast<int>(
        std::min<int64_t>(spec->hyper.max_seq_length, engine_->info().context_length));
  }
  if (spec.ok()) spec->memory_budget_bytes = memory_budget_bytes_;
  return spec;
}

absl::StatusOr<JobRecord> TrainingService::JobFor(const Principal& who, const std::string& job_id) {
  absl::StatusOr<JobRecord> job = runner_->Get(job_id);
  if (job.ok() && job->owner != who.tenant && !who.is_admin()) {
    return absl::NotFoundError(absl::StrCat("training job ", job_id, " not found"));
  }
  return job;
}

absl::StatusOr<DatasetRecord> TrainingService::DatasetFor(const Principal& who,
                                                          const std::string& dataset_id) {
  absl::StatusOr<DatasetRecord> dataset = datasets_->Get(dataset_id);
  if (dataset.ok() && dataset->owner != who.tenant && !who.is_admin()) {
    return absl::NotFoundError(absl::StrCat("dataset ", dataset_id, " not found"));
  }
  return dataset;
}

absl::StatusOr<PreparedJob> TrainingService::Prepare(const JobRecord& job) const {
  absl::StatusOr<v1::CreateTrainingJobRequest> request = ParseRequest(job.spec);
  if (!request.ok()) return request.status();
  absl::StatusOr<TrainingSpec> spec = SpecFor(*request);
  if (!spec.ok()) return spec.status();
  PreparedJob prepared;
  prepared.spec = *std::move(spec);
  absl::StatusOr<DatasetRecord> dataset = datasets_->Get(job.dataset_id);
  if (!dataset.ok()) return dataset.status();
  prepared.spec.dataset_path = datasets_->PathOf(*dataset);
  if (!request->init_adapter().empty()) {
    absl::StatusOr<ResolvedAdapter> init = store_->Resolve(job.owner, request->init_adapter());
    if (!init.ok()) return init.status();
    prepared.spec.init_adapter_dir = init->dir;
    prepared.pins.push_back(init->pin);
  }
  for (const std::string& ref : request->fusion().adapters()) {
    absl::StatusOr<ResolvedAdapter> child = store_->Resolve(job.owner, ref);
    if (!child.ok()) return child.status();
    prepared.spec.fusion.children.push_back({child->record.name, child->dir, child->pin});
  }
  return prepared;
}

absl::Status TrainingService::Create(const Principal& who,
                                     const v1::CreateTrainingJobRequest& request,
                                     v1::TrainingJob* response) {
  if (absl::Status s = CheckClientRequestId(request.client_request_id()); !s.ok()) return s;
  if (!request.client_request_id().empty()) {
    absl::StatusOr<std::optional<JobRecord>> existing =
        registry_->FindByClientRequestId(who.tenant, request.client_request_id());
    if (!existing.ok()) return existing.status();
    if (existing->has_value()) {
      const JobRecord& job = **existing;
      if (job.output_name != request.output_adapter() || job.dataset_id != request.dataset_id() ||
          job.method != MethodOf(request)) {
        return absl::AlreadyExistsError(absl::StrCat("client_request_id ",
                                                     ForLog(request.client_request_id()),
                                                     " was used for another job (", job.id, ")"));
      }
      absl::StatusOr<JobRecord> live = runner_->Get(job.id);
      JobToProto(live.ok() ? *live : job, response);
      return absl::OkStatus();
    }
  }
  absl::StatusOr<TrainingSpec> spec = SpecFor(request);
  if (!spec.ok()) return spec.status();
  absl::StatusOr<DatasetRecord> dataset = DatasetFor(who, request.dataset_id());
  if (!dataset.ok()) return dataset.status();
  spec->dataset_path = datasets_->PathOf(*dataset);

  // Adapters are pinned to the version found now, in the stored request too,
  // so that the job trains from what its creator saw.
  v1::CreateTrainingJobRequest stored = request;
  std::vector<std::shared_ptr<const void>> pins;
  if (!request.init_adapter().empty()) {
    absl::StatusOr<ResolvedAdapter> init = store_->Resolve(who.tenant, request.init_adapter());
    if (!init.ok()) return init.status();
    spec->init_adapter_dir = init->dir;
    stored.set_init_adapter(absl::StrCat(init->record.name, "@", init->record.version));
    pins.push_back(init->pin);
  }
  for (int i = 0; i < request.fusion().adapters_size(); ++i) {
    absl::StatusOr<ResolvedAdapter> child =
        store_->Resolve(who.tenant, request.fusion().adapters(i));
    if (!child.ok()) return child.status();
    spec->fusion.children.push_back({child->record.name, child->dir, child->pin});
    stored.mutable_fusion()->set_adapters(
        i, absl::StrCat(child->record.name, "@", child->record.version));
  }
  if (absl::Status s = CheckJobQuota(registry_, who); !s.ok()) return s;
  absl::StatusOr<DatasetReport> report = engine_->ValidateTraining(*spec);
  if (!report.ok()) return report.status();

  JobRecord job;
  job.owner = who.tenant;
  job.method = MethodOf(request);
  job.output_name = request.output_adapter();
  job.dataset_id = request.dataset_id();
  job.client_request_id = request.client_request_id();
  job.spec = SerializeRequest(stored);
  job.dataset_report = SerializeReport(*report);
  job.created_at = absl::Now();
  bool existed = false;
  {
    absl::MutexLock lock(&create_mu_);
    if (absl::Status s = CheckJobQuota(registry_, who); !s.ok()) return s;
    absl::StatusOr<JobRecord> inserted = registry_->InsertJob(std::move(job), &existed);
    if (!inserted.ok()) return inserted.status();
    job = *std::move(inserted);
  }
  if (!existed) {
    runner_->Enqueue(job);
    spdlog::info("CreateTrainingJob tenant={} job={} method={} output={} dataset={} rows={}",
                 who.tenant, job.id, job.method, job.output_name, job.dataset_id,
                 report->rows_used);
  }
  JobToProto(job, response);
  return absl::OkStatus();
}

grpc::ServerReadReactor<v1::UploadDatasetRequest>* TrainingService::UploadDataset(
    grpc::CallbackServerContext* context, v1::DatasetInfo* response) {
  auto* call = new UploadCall(this, context, response);
  call->Start(*auth_, "UploadDataset", [this] { return Admit(); });
  return call;
}

grpc::ServerUnaryReactor* TrainingService::ListDatasets(grpc::CallbackServerContext* context,
                                                        const v1::ListDatasetsRequest* request,
                                                        v1::ListDatasetsResponse* response) {
  return RunUnary(context, "ListDatasets", [this, request, response](const Principal& who) {
    if (request->all_tenants()) {
      if (absl::Status s = RequireAdmin(who, "ListDatasets with all_tenants"); !s.ok()) return s;
    }
    DatasetQuery query;
    query.owner = request->all_tenants() ? "" : who.tenant;
    query.page_size = request->page_size() == 0 ? 100 : request->page_size();
    query.page_token = request->page_token();
    absl::StatusOr<DatasetPage> page = datasets_->List(query);
    if (!page.ok()) return page.status();
    for (const DatasetRecord& d : page->datasets) DatasetToProto(d, response->add_datasets());
    response->set_next_page_token(page->next_page_token);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainingService::DeleteDataset(grpc::CallbackServerContext* context,
                                                         const v1::DeleteDatasetRequest* request,
                                                         v1::DatasetInfo* response) {
  return RunUnary(context, "DeleteDataset", [this, request, response](const Principal& who) {
    absl::StatusOr<DatasetRecord> dataset = DatasetFor(who, request->dataset_id());
    if (!dataset.ok()) return dataset.status();
    if (absl::Status s = datasets_->Delete(dataset->id); !s.ok()) return s;
    DatasetToProto(*dataset, response);
    spdlog::info("DeleteDataset tenant={} dataset={}", who.tenant, dataset->id);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainingService::CreateTrainingJob(
    grpc::CallbackServerContext* context, const v1::CreateTrainingJobRequest* request,
    v1::TrainingJob* response) {
  return RunUnary(context, "CreateTrainingJob", [this, request, response](const Principal& who) {
    absl::Status status = Create(who, *request, response);
    if (!status.ok()) {
      spdlog::info("CreateTrainingJob tenant={} output={} failed: {}", who.tenant,
                   ForLog(request->output_adapter()), status.ToString());
    }
    return status;
  });
}

grpc::ServerUnaryReactor* TrainingService::GetTrainingJob(grpc::CallbackServerContext* context,
                                                          const v1::GetTrainingJobRequest* request,
                                                          v1::TrainingJob* response) {
  return RunUnary(context, "GetTrainingJob", [this, request, response](const Principal& who) {
    absl::StatusOr<JobRecord> job = JobFor(who, request->job_id());
    if (!job.ok()) return job.status();
    JobToProto(*job, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainingService::ListTrainingJobs(
    grpc::CallbackServerContext* context, const v1::ListTrainingJobsRequest* request,
    v1::ListTrainingJobsResponse* response) {
  return RunUnary(context, "ListTrainingJobs", [this, request, response](const Principal& who) {
    if (request->all_tenants()) {
      if (absl::Status s = RequireAdmin(who, "ListTrainingJobs with all_tenants"); !s.ok()) {
        return s;
      }
    }
    JobQuery query;
    query.owner = request->all_tenants() ? "" : who.tenant;
    query.page_size = request->page_size() == 0 ? 50 : request->page_size();
    query.page_token = request->page_token();
    if (request->state() != v1::TRAINING_JOB_STATE_UNSPECIFIED) {
      if (!v1::TrainingJobState_IsValid(request->state())) {
        return absl::InvalidArgumentError("unknown state");
      }
      query.state = static_cast<JobState>(request->state());
    }
    absl::StatusOr<JobPage> page = registry_->ListJobs(query);
    if (!page.ok()) return page.status();
    for (const JobRecord& job : page->jobs) {
      // A running job's live progress is newer than the stored one.
      absl::StatusOr<JobRecord> live =
          job.state == JobState::kRunning ? runner_->Get(job.id) : absl::StatusOr<JobRecord>(job);
      JobToProto(live.ok() ? *live : job, response->add_jobs());
    }
    response->set_next_page_token(page->next_page_token);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* TrainingService::CancelTrainingJob(
    grpc::CallbackServerContext* context, const v1::CancelTrainingJobRequest* request,
    v1::TrainingJob* response) {
  return RunUnary(context, "CancelTrainingJob", [this, request, response](const Principal& who) {
    absl::StatusOr<JobRecord> job = JobFor(who, request->job_id());
    if (!job.ok()) return job.status();
    absl::StatusOr<JobRecord> cancelled = runner_->Cancel(job->id);
    if (!cancelled.ok()) return cancelled.status();
    JobToProto(*cancelled, response);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::TrainingJob>* TrainingService::WatchTrainingJob(
    grpc::CallbackServerContext* context, const v1::WatchTrainingJobRequest* request) {
  auto* call = new WatchCall(this, context, request->job_id());
  call->Start();
  return call;
}

}  // namespace adapterd
