#include "server/server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_builder.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <limits>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters_store/format_check.h"
#include "server/adapters_service.h"
#include "server/admin_service.h"
#include "server/inference_service.h"
#include "server/training_service.h"
#include "spdlog/spdlog.h"

namespace adapterd {
namespace {

int ToMillis(absl::Duration d) { return static_cast<int>(absl::ToInt64Milliseconds(d)); }

// "host:port" with the port replaced.
std::string WithPort(const std::string& listen, int port) {
  const size_t colon = listen.rfind(':');
  return absl::StrCat(colon == std::string::npos ? listen : listen.substr(0, colon), ":", port);
}

absl::StatusOr<std::string> ReadPem(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  if (!in.good() && !in.eof()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " ", path));
  }
  if (buffer.str().find("-----BEGIN") == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat("the ", what, " ", path, " is not PEM"));
  }
  return buffer.str();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentialsFor(
    const ServerOptions& options) {
  const bool tls = !options.tls_cert_file.empty() || !options.tls_key_file.empty();
  if (!tls) {
    if (!options.tls_client_ca_file.empty()) {
      return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
    }
    return grpc::InsecureServerCredentials();
  }
  if (options.tls_cert_file.empty() || options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both --tls-cert and --tls-key");
  }
  grpc::SslServerCredentialsOptions ssl;
  absl::StatusOr<std::string> cert = ReadPem(options.tls_cert_file, "TLS certificate");
  if (!cert.ok()) return cert.status();
  absl::StatusOr<std::string> key = ReadPem(options.tls_key_file, "TLS key");
  if (!key.ok()) return key.status();
  ssl.pem_key_cert_pairs.push_back({*key, *cert});
  if (!options.tls_client_ca_file.empty()) {
    absl::StatusOr<std::string> ca = ReadPem(options.tls_client_ca_file, "client CA");
    if (!ca.ok()) return ca.status();
    ssl.pem_root_certs = *ca;
    ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
  }
  return grpc::SslServerCredentials(ssl);
}

}  // namespace

absl::Status Server::StartAuth(const ServerOptions& options) {
  if (!options.auth_enabled) {
    auth_ = std::make_unique<Authenticator>(nullptr);
    spdlog::warn("**************************************************************************");
    spdlog::warn("* AUTHENTICATION IS OFF (--insecure-no-auth): every caller is the tenant *");
    spdlog::warn("* \"default\" with the admin role. For local trials only.                 *");
    spdlog::warn("**************************************************************************");
    return absl::OkStatus();
  }
  if (store_ == nullptr) {
    return absl::FailedPreconditionError(
        "authentication needs the adapter store (--data-dir) for its tenants and keys");
  }
  absl::StatusOr<std::unique_ptr<TenantRegistry>> tenants =
      TenantRegistry::Open(store_->options().root + "/registry.db");
  if (!tenants.ok()) return tenants.status();
  tenants_ = *std::move(tenants);
  absl::StatusOr<Tenant> admin = tenants_->GetTenant(kAdminTenantId);
  if (absl::IsNotFound(admin.status())) {
    Tenant t;
    t.id = kAdminTenantId;
    t.name = "administrators";
    t.role = TenantRole::kAdmin;
    admin = tenants_->CreateTenant(std::move(t));
  }
  if (!admin.ok()) return admin.status();
  if (!options.admin_key.empty()) {
    absl::StatusOr<bool> known = tenants_->HasLiveKey(kAdminTenantId, options.admin_key);
    if (!known.ok()) return known.status();
    if (!*known) {
      absl::StatusOr<ApiKey> added =
          tenants_->AddKey(kAdminTenantId, options.admin_key, "bootstrap admin key");
      if (!added.ok()) {
        return absl::Status(added.status().code(),
                            absl::StrCat("the bootstrap admin key: ", added.status().message()));
      }
      spdlog::info("bootstrap admin key {}... stored for tenant {}", added->prefix, kAdminTenantId);
    }
  } else {
    absl::StatusOr<int64_t> admins = tenants_->CountLiveAdminKeys();
    if (!admins.ok()) return admins.status();
    if (*admins == 0) {
      const std::string key = NewApiKey();
      absl::StatusOr<ApiKey> added =
          tenants_->AddKey(kAdminTenantId, key, "generated on first start");
      if (!added.ok()) return added.status();
      spdlog::warn("no admin key existed: made one. It is shown ONCE; store it now:");
      spdlog::warn("  ADAPTERD_TOKEN={}", key);
    }
  }
  auth_ = std::make_unique<Authenticator>(tenants_.get());
  const bool tls = !options.tls_cert_file.empty();
  if (!tls && options.listen.rfind("127.0.0.1:", 0) != 0 &&
      options.listen.rfind("localhost:", 0) != 0 && options.listen.rfind("[::1]:", 0) != 0) {
    spdlog::warn("API keys travel in plaintext: {} is not loopback and TLS is off (--tls-cert)",
                 options.listen);
  }
  return absl::OkStatus();
}

const char* const Server::kServiceNames[4] = {"adapterd.v1.Inference", "adapterd.v1.Admin",
                                              "adapterd.v1.Adapters", "adapterd.v1.Training"};

absl::Status Server::StartTraining(const ServerOptions& options, Engine* engine) {
  if (store_ != nullptr) {
    const std::string root = store_->options().root;
    absl::StatusOr<std::unique_ptr<JobRegistry>> registry =
        JobRegistry::Open(root + "/training.db");
    if (!registry.ok()) return registry.status();
    job_registry_ = *std::move(registry);
    DatasetStoreOptions dataset_options;
    dataset_options.root = root;
    dataset_options.max_dataset_bytes = options.training.max_dataset_bytes;
    dataset_options.max_tenant_bytes = options.training.max_tenant_dataset_bytes;
    absl::StatusOr<std::unique_ptr<DatasetStore>> datasets =
        DatasetStore::Open(dataset_options, job_registry_.get());
    if (!datasets.ok()) return datasets.status();
    datasets_ = *std::move(datasets);
    JobRunnerOptions runner_options;
    runner_options.max_jobs = options.training.max_jobs;
    runner_options.jobs_dir = root + "/jobs";
    runner_options.persist_interval = options.training.progress_interval;
    runner_options.keep_failed_work_dirs = options.training.keep_failed_work_dirs;
    job_runner_ = std::make_unique<JobRunner>(
        engine, job_registry_.get(), store_,
        [this](const JobRecord& job) { return training_->Prepare(job); },
        [tenants = tenants_.get()](const std::string& owner) {
          StorageQuota quota;
          if (tenants == nullptr) return quota;
          absl::StatusOr<Tenant> tenant = tenants->GetTenant(owner);
          if (tenant.ok()) quota = {tenant->quotas.max_adapters, tenant->quotas.max_adapter_bytes};
          return quota;
        },
        runner_options);
  }
  training_ = std::make_unique<TrainingService>(engine, store_, job_registry_.get(),
                                                datasets_.get(), job_runner_.get(), auth_.get(),
                                                options.training.memory_budget_bytes);
  if (job_runner_ != nullptr) {
    if (absl::Status s = job_runner_->Start(); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options, Engine* engine,
                                                      AdapterStore* store) {
  std::unique_ptr<Server> server(new Server());
  server->store_ = store;
  if (store == nullptr && !options.adapter_store.root.empty()) {
    StoreOptions store_options = options.adapter_store;
    if (!store_options.validator) store_options.validator = CheckAdapterFormat;
    OpenReport report;
    absl::StatusOr<std::unique_ptr<AdapterStore>> opened =
        AdapterStore::Open(std::move(store_options), &report);
    if (!opened.ok()) return opened.status();
    server->owned_store_ = *std::move(opened);
    server->store_ = server->owned_store_.get();
    spdlog::info(
        "adapter store at {}: recovered pending={} uploads={} dirs_rebuilt={} dirs_removed={} "
        "blobs_removed={}",
        server->store_->options().root, report.pending_removed, report.uploads_removed,
        report.dirs_rebuilt, report.dirs_removed, report.blobs_removed);
    for (const std::string& damage : report.damaged) {
      spdlog::error("adapter store: damaged version {}", damage);
    }
  }
  if (absl::Status s = server->StartAuth(options); !s.ok()) return s;
  if (absl::Status s = server->StartTraining(options, engine); !s.ok()) return s;
  server->quotas_ = std::make_unique<QuotaManager>();
  server->adapters_ = std::make_unique<AdaptersService>(server->store_, server->auth_.get());
  server->inference_ =
      std::make_unique<InferenceService>(engine, server->auth_.get(), server->quotas_.get());
  server->resolver_ = std::make_unique<AdapterResolver>(server->store_, engine);
  server->inference_->set_adapter_resolver(server->resolver_.get());
  server->adapters_->set_engine(engine);
  if (server->store_ != nullptr) {
    // A deleted version leaves the engine's cache (memory returns once the
    // requests still using it finish).
    server->evict_target_ = std::make_shared<std::atomic<Engine*>>(engine);
    server->store_->AddDeleteListener(
        [target = server->evict_target_](const AdapterRecord& deleted) {
          if (Engine* e = target->load()) e->EvictAdapter(deleted.adapter_id, deleted.version);
        });
  }
  server->admin_ =
      std::make_unique<AdminService>(engine, options.max_message_bytes, server->auth_.get(),
                                     server->tenants_.get(), server->store_);
  absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> credentials =
      ServerCredentialsFor(options);
  if (!credentials.ok()) return credentials.status();

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();

  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort(options.listen, *credentials, &port);
  builder.RegisterService(server->inference_.get());
  builder.RegisterService(server->admin_.get());
  builder.RegisterService(server->adapters_.get());
  builder.RegisterService(server->training_.get());
  const int max_message = static_cast<int>(
      std::min<int64_t>(options.max_message_bytes, std::numeric_limits<int>::max()));
  builder.SetMaxReceiveMessageSize(max_message);
  builder.SetMaxSendMessageSize(max_message);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  builder.AddChannelArgument(GRPC_ARG_MAX_METADATA_SIZE, options.max_metadata_bytes);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, ToMillis(options.keepalive_time));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, ToMillis(options.keepalive_timeout));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS,
                             ToMillis(options.min_client_ping_interval));
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 2);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, 0);

  server->server_ = builder.BuildAndStart();
  if (server->server_ == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen));
  }
  server->port_ = port;
  server->address_ = WithPort(options.listen, port);

  grpc::HealthCheckServiceInterface* health = server->server_->GetHealthCheckService();
  health->SetServingStatus(true);
  for (const char* name : kServiceNames) health->SetServingStatus(name, true);
  return server;
}

Server::~Server() {
  Shutdown(absl::ZeroDuration());
  if (evict_target_ != nullptr) evict_target_->store(nullptr);
}

void Server::BeginShutdown() {
  absl::MutexLock lock(&mu_);
  if (began_shutdown_) return;
  began_shutdown_ = true;
  if (inference_ != nullptr) inference_->StopAccepting();
  if (adapters_ != nullptr) adapters_->StopAccepting();
  if (training_ != nullptr) training_->StopAccepting();
  if (job_runner_ != nullptr) job_runner_->Shutdown();
  if (server_ == nullptr) return;
  // Sets every service NOT_SERVING and keeps it so.
  server_->GetHealthCheckService()->Shutdown();
}

void Server::Shutdown(absl::Duration grace) {
  BeginShutdown();
  absl::MutexLock lock(&mu_);
  if (shut_down_) return;
  shut_down_ = true;
  if (server_ == nullptr) return;
  server_->Shutdown(absl::ToChronoTime(absl::Now() + grace));
  server_->Wait();
  // Every call is done: write the registry's WAL back before the files close.
  if (tenants_ != nullptr) tenants_->Checkpoint().IgnoreError();
  if (job_registry_ != nullptr) job_registry_->Checkpoint().IgnoreError();
}

}  // namespace adapterd
