#pragma once

// The Training service (datasets and fine-tuning jobs) on gRPC's callback
// API. Store, registry and engine calls run on the service's worker pool,
// never on a gRPC thread; jobs themselves run on the JobRunner's threads.
//
// Every call is authenticated. Datasets and jobs belong to the caller's
// tenant; another tenant's dataset or job gives the NOT_FOUND of a missing
// one ("dataset <id> not found", "training job <id> not found"). An admin
// reads, cancels, watches and lists (all_tenants) every tenant's. Adapters a
// job names (init adapter, fusion children) resolve in the caller's
// namespace (public adapters included) and are pinned to their version at
// create.
//
// CreateTrainingJob: idempotency (client_request_id) → request checks →
// dataset and adapters resolved → per-tenant concurrent-jobs quota (QUEUED +
// RUNNING jobs against the tenant's max_concurrent_jobs: over it →
// RESOURCE_EXHAUSTED with a retry-after-ms hint; jobs are refused, not
// queued beyond the quota) → Engine::ValidateTraining (its errors, before
// any job exists) → the job is stored QUEUED and handed to the runner.
//
// Thread-safe. Does not own its collaborators (all must outlive it).

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "adapterd/v1/training.grpc.pb.h"
#include "adapters_store/adapter_store.h"
#include "adapters_store/dataset_store.h"
#include "adapters_store/job_registry.h"
#include "engine/api/engine.h"
#include "server/auth.h"
#include "server/job_runner.h"
#include "server/worker_pool.h"

namespace adapterd {

class TrainingService final : public v1::Training::CallbackService {
 public:
  // Any of `registry`, `datasets`, `runner`, `store` null: every call fails
  // with FAILED_PRECONDITION (a server without a data dir).
  // `memory_budget_bytes` goes into every job's TrainingSpec (0: the engine's default).
  TrainingService(Engine* engine, AdapterStore* store, JobRegistry* registry,
                  DatasetStore* datasets, JobRunner* runner, const Authenticator* auth,
                  int64_t memory_budget_bytes = 0, int workers = 2);
  ~TrainingService() override;

  // From now on new calls fail with UNAVAILABLE, and open WatchTrainingJob
  // streams end with UNAVAILABLE "server is shutting down". Idempotent.
  void StopAccepting();

  // The JobRunner's preparer: the engine spec of a stored job, with its
  // dataset path and its pinned adapters resolved again.
  absl::StatusOr<PreparedJob> Prepare(const JobRecord& job) const;

  grpc::ServerReadReactor<v1::UploadDatasetRequest>* UploadDataset(
      grpc::CallbackServerContext* context, v1::DatasetInfo* response) override;
  grpc::ServerUnaryReactor* ListDatasets(grpc::CallbackServerContext* context,
                                         const v1::ListDatasetsRequest* request,
                                         v1::ListDatasetsResponse* response) override;
  grpc::ServerUnaryReactor* DeleteDataset(grpc::CallbackServerContext* context,
                                          const v1::DeleteDatasetRequest* request,
                                          v1::DatasetInfo* response) override;
  grpc::ServerUnaryReactor* CreateTrainingJob(grpc::CallbackServerContext* context,
                                              const v1::CreateTrainingJobRequest* request,
                                              v1::TrainingJob* response) override;
  grpc::ServerUnaryReactor* GetTrainingJob(grpc::CallbackServerContext* context,
                                           const v1::GetTrainingJobRequest* request,
                                           v1::TrainingJob* response) override;
  grpc::ServerUnaryReactor* ListTrainingJobs(grpc::CallbackServerContext* context,
                                             const v1::ListTrainingJobsRequest* request,
                                             v1::ListTrainingJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelTrainingJob(grpc::CallbackServerContext* context,
                                              const v1::CancelTrainingJobRequest* request,
                                              v1::TrainingJob* response) override;
  grpc::ServerWriteReactor<v1::TrainingJob>* WatchTrainingJob(
      grpc::CallbackServerContext* context, const v1::WatchTrainingJobRequest* request) override;

 private:
  class UploadCall;
  class WatchCall;

  absl::Status Admit() const;
  grpc::ServerUnaryReactor* RunUnary(grpc::CallbackServerContext* context, const char* method,
                                     std::function<absl::Status(const Principal&)> work);
  absl::Status Create(const Principal& who, const v1::CreateTrainingJobRequest& request,
                      v1::TrainingJob* response);
  // TrainingSpecFromProto, with the default max_seq_length capped at the
  // served model's context length, and the server's memory budget.
  absl::StatusOr<TrainingSpec> SpecFor(const v1::CreateTrainingJobRequest& request) const;
  // The job if `who` may see it, else NOT_FOUND as for a missing one.
  absl::StatusOr<JobRecord> JobFor(const Principal& who, const std::string& job_id);
  absl::StatusOr<DatasetRecord> DatasetFor(const Principal& who, const std::string& dataset_id);

  Engine* const engine_;
  AdapterStore* const store_;
  JobRegistry* const registry_;
  DatasetStore* const datasets_;
  JobRunner* const runner_;
  const Authenticator* const auth_;
  const int64_t memory_budget_bytes_;
  std::atomic<bool> accepting_{true};
  // Serialises the quota count with the insert of a new job, so that
  // concurrent creates cannot overshoot a tenant's max_concurrent_jobs.
  absl::Mutex create_mu_;
  absl::Mutex watches_mu_;  // Guards watches_.
  // Open watch streams, by their core: each function ends its stream.
  std::map<const void*, std::function<void(const absl::Status&)>> watches_
      ABSL_GUARDED_BY(watches_mu_);
  WorkerPool pool_;  // Declared last: joined first.
};

}  // namespace adapterd
