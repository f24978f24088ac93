#pragma once

// Builds and runs the gRPC server: the Inference, Admin, Adapters and Training services, the
// standard health service (grpc.health.v1) and server reflection, with message
// size limits and keepalive settings. Shutdown is two-phase so that the caller
// can drain the engine in between:
//   server->BeginShutdown();      // health NOT_SERVING, new calls UNAVAILABLE
//   engine->Shutdown(drain);      // running requests finish or fail
//   server->Shutdown(grace);      // stop the listener, wait for the calls

#include <grpcpp/server.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters_store/adapter_store.h"
#include "adapters_store/dataset_store.h"
#include "adapters_store/job_registry.h"
#include "adapters_store/tenant_registry.h"
#include "engine/api/engine.h"
#include "server/adapter_resolver.h"
#include "server/auth.h"
#include "server/job_runner.h"
#include "server/quota.h"

namespace adapterd {

class AdaptersService;
class AdminService;
class InferenceService;
class TrainingService;

// Fine-tuning jobs and datasets (server/training_service.h, job_runner.h),
// under the adapter store's data dir.
struct TrainingOptions {
  int max_jobs = 1;                                      // Jobs training at once (runner threads).
  int64_t max_dataset_bytes = int64_t{1} << 30;          // One dataset.
  int64_t max_tenant_dataset_bytes = int64_t{10} << 30;  // A tenant's datasets; 0: unlimited.
  absl::Duration progress_interval = absl::Seconds(2);   // Progress persisted at most this often.
  absl::Duration keep_failed_work_dirs = absl::Hours(72);
  // Activations and optimizer state one job may use; 0: the engine's default.
  int64_t memory_budget_bytes = 0;
};

struct ServerOptions {
  std::string listen = "127.0.0.1:50051";  // host:port; port 0 picks a free one.
  int64_t max_message_bytes = 4 << 20;     // Largest message received or sent.
  int max_concurrent_streams = 1024;       // Per HTTP/2 connection.
  int max_metadata_bytes = 16 << 10;
  absl::Duration keepalive_time = absl::Minutes(2);  // Server pings an idle connection.
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // Clients may ping at most this often without being told "too_many_pings".
  absl::Duration min_client_ping_interval = absl::Seconds(10);
  // Authentication (server/auth.h): false is the explicit insecure mode in
  // which every caller is the tenant "default" with the admin role. True
  // needs the adapter store (its registry holds tenants and keys).
  bool auth_enabled = false;
  // A bootstrap admin key (from --admin-key-file or ADAPTERD_ADMIN_KEY): made
  // a key of the tenant "admin" if not stored yet. Empty: when no admin key
  // exists (a fresh data dir), Start makes one and logs it once.
  std::string admin_key;
  // TLS: both set → TLS; with client_ca_file too → mutual TLS (clients must
  // present a certificate signed by that CA). PEM files.
  std::string tls_cert_file;
  std::string tls_key_file;
  std::string tls_client_ca_file;
  // The adapter store the server opens when Start is given none: its root
  // (the data dir), allowed roots and size limits. An empty root leaves the
  // Adapters service without a store (its calls fail with
  // FAILED_PRECONDITION). Without a validator, the torch-free format check
  // (adapters_store/format_check.h) validates adapters.
  StoreOptions adapter_store;
  // Training (needs the adapter store's data dir; without it the Training
  // service answers FAILED_PRECONDITION).
  TrainingOptions training;
};

// Thread-safe. Does not own the engine, which must outlive the server.
class Server {
 public:
  // Starts serving on `options.listen`. UNAVAILABLE if the address cannot be
  // bound. `store` (not owned; must outlive the server) serves the Adapters
  // service; when null, the server opens and owns one from
  // options.adapter_store, and fails with that open's error.
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options, Engine* engine,
                                                       AdapterStore* store = nullptr);
  ~Server();

  // The bound address, with the real port when 0 was asked for.
  const std::string& address() const { return address_; }
  int port() const { return port_; }

  // Marks every health entry NOT_SERVING and makes new calls fail with
  // UNAVAILABLE; cancels running training jobs (they checkpoint and stay
  // QUEUED for the next start) and waits for their trainers to return, so
  // call it before the engine's Shutdown. Idempotent.
  void BeginShutdown();

  // BeginShutdown, then stops the listener and waits up to `grace` for calls
  // in flight, cancelling those still running afterwards. Idempotent.
  void Shutdown(absl::Duration grace);

  // Health service names this server reports (besides "").
  static const char* const kServiceNames[4];

  // The store the Adapters service uses (null if none).
  AdapterStore* adapter_store() const { return store_; }
  // Tenants and keys (null in insecure mode).
  TenantRegistry* tenant_registry() const { return tenants_.get(); }
  QuotaManager* quotas() const { return quotas_.get(); }
  // Training jobs (null without a data dir).
  JobRegistry* job_registry() const { return job_registry_.get(); }
  JobRunner* job_runner() const { return job_runner_.get(); }

 private:
  Server() = default;

  // Sets up tenants_ and auth_ (see ServerOptions::auth_enabled).
  absl::Status StartAuth(const ServerOptions& options);
  // Opens the job registry and dataset store and starts the job runner.
  absl::Status StartTraining(const ServerOptions& options, Engine* engine);

  std::unique_ptr<AdapterStore> owned_store_;  // When Start opened it.
  AdapterStore* store_ = nullptr;
  std::unique_ptr<TenantRegistry> tenants_;
  std::unique_ptr<Authenticator> auth_;
  std::unique_ptr<QuotaManager> quotas_;
  std::unique_ptr<AdapterResolver> resolver_;  // Store → AdapterHandle for the engine.
  // The engine the store's delete listener evicts from; cleared when the
  // server goes, as the store (when not owned) may outlive it.
  std::shared_ptr<std::atomic<Engine*>> evict_target_;
  std::unique_ptr<InferenceService> inference_;
  std::unique_ptr<AdminService> admin_;
  std::unique_ptr<AdaptersService> adapters_;
  std::unique_ptr<JobRegistry> job_registry_;
  std::unique_ptr<DatasetStore> datasets_;
  std::unique_ptr<TrainingService> training_;
  // After training_: destroyed (joined) before the service its preparer calls.
  std::unique_ptr<JobRunner> job_runner_;
  std::unique_ptr<grpc::Server> server_;  // Declared last: destroyed first.
  std::string address_;
  int port_ = 0;
  absl::Mutex mu_;  // Guards the two flags below and serialises shutdown.
  bool began_shutdown_ ABSL_GUARDED_BY(mu_) = false;
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace adapterd
