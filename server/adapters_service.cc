#include "server/adapters_service.h"

#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/adapter_resolver.h"
#include "server/request_id.h"
#include "server/status_convert.h"
#include "server/upload_reactor.h"
#include "spdlog/spdlog.h"

namespace adapterd {
namespace {

constexpr char kShuttingDown[] = "server is shutting down";
constexpr char kNoCache[] = "the engine has no adapter cache";

// A client-given string made safe for one log line: escaped and bounded.
std::string ForLog(const std::string& s) { return absl::CEscape(s.substr(0, 160)); }

v1::AdapterState StateToProto(AdapterState state) {
  switch (state) {
    case AdapterState::kPending:
      return v1::ADAPTER_STATE_PENDING;
    case AdapterState::kReady:
      return v1::ADAPTER_STATE_READY;
    case AdapterState::kDeleted:
      return v1::ADAPTER_STATE_DELETED;
  }
  return v1::ADAPTER_STATE_UNSPECIFIED;
}

absl::Status CheckVisibility(const Principal& who, v1::Visibility visibility) {
  if (visibility == v1::VISIBILITY_PUBLIC && !who.is_admin()) {
    return absl::PermissionDeniedError("only an admin may make an adapter public");
  }
  return absl::OkStatus();
}

StorageQuota QuotaOf(const Principal& who) {
  return {who.quotas.max_adapters, who.quotas.max_adapter_bytes};
}

}  // namespace

void AdapterRecordToProto(const AdapterRecord& record, v1::AdapterInfo* info) {
  info->set_name(record.name);
  info->set_version(record.version);
  info->set_adapter_id(record.adapter_id);
  info->set_method(record.method);
  info->set_base_model_fingerprint(record.base_fingerprint);
  info->set_sha256(record.sha256);
  info->set_size_bytes(record.size);
  info->set_state(StateToProto(record.state));
  info->set_owner(record.owner);
  const int64_t micros = absl::ToUnixMicros(record.created_at);
  info->mutable_created_at()->set_seconds(micros / 1000000);
  info->mutable_created_at()->set_nanos(static_cast<int32_t>(micros % 1000000) * 1000);
  for (const AdapterFile& f : record.files) {
    v1::AdapterFile* file = info->add_files();
    file->set_name(f.name);
    file->set_size(f.size);
    file->set_sha256(f.sha256);
  }
  info->set_visibility(record.visibility == AdapterVisibility::kPublic ? v1::VISIBILITY_PUBLIC
                                                                       : v1::VISIBILITY_PRIVATE);
}

// One UploadAdapter stream; see the class comment of AdaptersService.
class AdaptersService::UploadCall final : public StreamingUploadReactor<v1::UploadAdapterRequest> {
 public:
  UploadCall(AdaptersService* service, grpc::CallbackServerContext* context,
             v1::AdapterInfo* response)
      : StreamingUploadReactor(
            context, &service->pool_, "an UploadHeader",
            [store = service->store_](const std::string& id) { store->AbortUpload(id); }),
        service_(service),
        response_(response) {}

 private:
  absl::StatusOr<std::string> BeginUpload(const v1::UploadHeader& header) override {
    if (absl::Status s = CheckVisibility(who(), header.visibility()); !s.ok()) return s;
    make_public_ = header.visibility() == v1::VISIBILITY_PUBLIC;
    UploadSpec spec;
    spec.owner = who().tenant;
    spec.quota = QuotaOf(who());
    spec.name = header.name();
    spec.version = header.version();
    spec.method_hint = header.method();
    spec.sha256 = absl::AsciiStrToLower(header.sha256());
    int64_t total = 0;
    for (const v1::AdapterFile& f : header.files()) {
      spec.files.push_back({f.name(), f.size(), absl::AsciiStrToLower(f.sha256())});
      if (f.size() < 0 || f.size() > (int64_t{1} << 50)) {
        return absl::InvalidArgumentError("a file size is out of range");
      }
      total += f.size();
    }
    if (header.total_size() != total) {
      return absl::InvalidArgumentError(absl::StrCat(
          "total_size ", header.total_size(), " is not the sum of the file sizes (", total, ")"));
    }
    request_id_ = header.request_id().empty() ? NewRequestId() : ForLog(header.request_id());
    name_ = ForLog(header.name());
    return service_->store_->BeginUpload(spec);
  }

  absl::Status AppendChunk(const std::string& upload_id, const v1::FileChunk& chunk) override {
    absl::Status status =
        service_->store_->AppendUpload(upload_id, chunk.file(), chunk.offset(), chunk.data());
    bytes_ += static_cast<int64_t>(chunk.data().size());
    return status;
  }

  absl::Status CommitUpload(const std::string& upload_id) override {
    absl::StatusOr<AdapterRecord> record = service_->store_->CommitUpload(upload_id);
    if (!record.ok()) return record.status();
    if (make_public_) {
      absl::Status shared =
          service_->store_->SetVisibility(who().tenant, record->name, AdapterVisibility::kPublic);
      if (!shared.ok()) return shared;
      record->visibility = AdapterVisibility::kPublic;
    }
    AdapterRecordToProto(*record, response_);
    spdlog::info(
        "UploadAdapter request_id={} tenant={} adapter={}@{} ok bytes={} sha256={} ms={:.1f}",
        request_id_, who().tenant, record->name, record->version, record->size, record->sha256,
        absl::ToDoubleMilliseconds(absl::Now() - start_));
    return absl::OkStatus();
  }

  void LogFailure(const absl::Status& status) override {
    spdlog::info("UploadAdapter request_id={} tenant={} adapter={} failed: {} bytes={} ms={:.1f}",
                 request_id_, who().tenant, name_, status.ToString(), bytes_,
                 absl::ToDoubleMilliseconds(absl::Now() - start_));
  }

  AdaptersService* const service_;
  v1::AdapterInfo* const response_;
  const absl::Time start_ = absl::Now();
  // Touched by one hook at a time (see StreamingUploadReactor).
  bool make_public_ = false;
  std::string request_id_;
  std::string name_;
  int64_t bytes_ = 0;
};

AdaptersService::AdaptersService(AdapterStore* store, const Authenticator* auth, int workers)
    : store_(store), auth_(auth), pool_(workers) {}

AdaptersService::~AdaptersService() = default;

void AdaptersService::StopAccepting() { accepting_.store(false); }

void AdaptersService::AddResidency(v1::AdapterInfo* info) const {
  if (engine_ == nullptr) return;
  const AdapterCacheState state = engine_->CachedAdapterState(info->adapter_id(), info->version());
  switch (state.residency) {
    case AdapterResidency::kDevice:
      info->set_residency(v1::RESIDENCY_DEVICE);
      break;
    case AdapterResidency::kHost:
      info->set_residency(v1::RESIDENCY_HOST);
      break;
    case AdapterResidency::kDisk:
      info->set_residency(v1::RESIDENCY_DISK);
      break;
  }
  info->set_pinned(state.pinned);
}

absl::Status AdaptersService::Admit() const {
  if (!accepting_.load()) return absl::UnavailableError(kShuttingDown);
  if (store_ == nullptr) {
    return absl::FailedPreconditionError("this server has no adapter store");
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* AdaptersService::RunUnary(
    grpc::CallbackServerContext* context, const char* method, bool admin_only,
    std::function<absl::Status(const Principal&)> work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Principal> who = auth_->Authorize(*context, method, admin_only);
  absl::Status admit = who.ok() ? Admit() : who.status();
  if (!admit.ok()) {
    reactor->Finish(ToGrpcStatus(admit));
    return reactor;
  }
  pool_.Schedule([reactor, work = std::move(work), who = *std::move(who)] {
    reactor->Finish(ToGrpcStatus(work(who)));
  });
  return reactor;
}

grpc::ServerReadReactor<v1::UploadAdapterRequest>* AdaptersService::UploadAdapter(
    grpc::CallbackServerContext* context, v1::AdapterInfo* response) {
  auto* call = new UploadCall(this, context, response);
  call->Start(*auth_, "UploadAdapter", [this] { return Admit(); });
  return call;
}

grpc::ServerUnaryReactor* AdaptersService::RegisterAdapter(
    grpc::CallbackServerContext* context, const v1::RegisterAdapterRequest* request,
    v1::AdapterInfo* response) {
  return RunUnary(
      context, "RegisterAdapter", /*admin_only=*/true,
      [this, request, response](const Principal& who) -> absl::Status {
        const std::string& tenant = who.tenant;
        const absl::Time start = absl::Now();
        const std::string request_id =
            request->request_id().empty() ? NewRequestId() : ForLog(request->request_id());
        absl::StatusOr<AdapterRecord> record = absl::InternalError("unset");
        if (absl::Status s = CheckVisibility(who, request->visibility()); !s.ok()) {
          record = s;
        } else {
          record = store_->RegisterFromPath(tenant, request->name(), request->version(),
                                            request->path(), request->method(), QuotaOf(who));
          if (record.ok() && request->visibility() == v1::VISIBILITY_PUBLIC) {
            absl::Status shared =
                store_->SetVisibility(tenant, record->name, AdapterVisibility::kPublic);
            if (shared.ok()) {
              record->visibility = AdapterVisibility::kPublic;
            } else {
              record = shared;
            }
          }
        }
        if (!record.ok()) {
          spdlog::info("RegisterAdapter request_id={} tenant={} adapter={} failed: {}", request_id,
                       tenant, ForLog(request->name()), record.status().ToString());
          return record.status();
        }
        AdapterRecordToProto(*record, response);
        spdlog::info("RegisterAdapter request_id={} tenant={} adapter={}@{} ok bytes={} ms={:.1f}",
                     request_id, tenant, record->name, record->version, record->size,
                     absl::ToDoubleMilliseconds(absl::Now() - start));
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* AdaptersService::GetAdapter(grpc::CallbackServerContext* context,
                                                      const v1::GetAdapterRequest* request,
                                                      v1::AdapterInfo* response) {
  return RunUnary(context, "GetAdapter", /*admin_only=*/false,
                  [this, request, response](const Principal& who) -> absl::Status {
                    const std::string& tenant = who.tenant;
                    absl::StatusOr<AdapterRecord> record = store_->Get(tenant, request->adapter());
                    if (!record.ok()) return record.status();
                    AdapterRecordToProto(*record, response);
                    AddResidency(response);
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* AdaptersService::ListAdapters(grpc::CallbackServerContext* context,
                                                        const v1::ListAdaptersRequest* request,
                                                        v1::ListAdaptersResponse* response) {
  return RunUnary(context, "ListAdapters", /*admin_only=*/false,
                  [this, request, response](const Principal& who) -> absl::Status {
                    const std::string& tenant = who.tenant;
                    ListQuery query;
                    query.owner = tenant;
                    query.name = request->name();
                    query.method = request->method();
                    query.latest_only = request->latest_only();
                    query.page_size = request->page_size() == 0 ? 100 : request->page_size();
                    query.page_token = request->page_token();
                    absl::StatusOr<ListPage> page = store_->List(query);
                    if (!page.ok()) return page.status();
                    for (const AdapterRecord& r : page->records) {
                      v1::AdapterInfo* info = response->add_adapters();
                      AdapterRecordToProto(r, info);
                      AddResidency(info);
                    }
                    response->set_next_page_token(page->next_page_token);
                    return absl::OkStatus();
                  });
}

grpc::ServerUnaryReactor* AdaptersService::DeleteAdapter(grpc::CallbackServerContext* context,
                                                         const v1::DeleteAdapterRequest* request,
                                                         v1::DeleteAdapterResponse* response) {
  return RunUnary(
      context, "DeleteAdapter", /*admin_only=*/false,
      [this, request, response](const Principal& who) -> absl::Status {
        const std::string& tenant = who.tenant;
        absl::StatusOr<AdapterRef> ref = ParseAdapterRef(request->adapter());
        if (!ref.ok()) return ref.status();
        if (ref->version == 0 && !request->all_versions()) {
          return absl::InvalidArgumentError(
              "name one version (name@N) or set all_versions to delete every version");
        }
        if (ref->version > 0 && request->all_versions()) {
          return absl::InvalidArgumentError("all_versions goes with a bare name, not name@N");
        }
        absl::StatusOr<std::vector<AdapterRecord>> deleted =
            store_->Delete(tenant, ref->name, ref->version);
        if (!deleted.ok()) {
          spdlog::info("DeleteAdapter tenant={} adapter={} failed: {}", tenant,
                       ForLog(request->adapter()), deleted.status().ToString());
          return deleted.status();
        }
        for (const AdapterRecord& r : *deleted) AdapterRecordToProto(r, response->add_deleted());
        spdlog::info("DeleteAdapter tenant={} adapter={} ok versions={}", tenant,
                     request->adapter(), deleted->size());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* AdaptersService::LoadAdapter(grpc::CallbackServerContext* context,
                                                       const v1::LoadAdapterRequest* request,
                                                       v1::LoadAdapterResponse* response) {
  return RunUnary(
      context, "LoadAdapter", /*admin_only=*/false,
      [this, request, response](const Principal& who) -> absl::Status {
        const std::string& tenant = who.tenant;
        absl::StatusOr<ResolvedAdapter> resolved = store_->Resolve(tenant, request->adapter());
        if (!resolved.ok()) return resolved.status();
        if (engine_ == nullptr) return absl::FailedPreconditionError(kNoCache);
        const AdapterRecord record = resolved->record;
        absl::Status loaded = engine_->LoadAdapter(HandleOf(*std::move(resolved)), request->pin());
        if (!loaded.ok()) return loaded;
        AdapterRecordToProto(record, response->mutable_adapter());
        AddResidency(response->mutable_adapter());
        spdlog::info("LoadAdapter tenant={} adapter={}@{} pin={}", tenant, record.name,
                     record.version, request->pin());
        return absl::OkStatus();
      });
}

grpc::ServerUnaryReactor* AdaptersService::UnloadAdapter(grpc::CallbackServerContext* context,
                                                         const v1::UnloadAdapterRequest* request,
                                                         v1::UnloadAdapterResponse* response) {
  return RunUnary(context, "UnloadAdapter", /*admin_only=*/false,
                  [this, request, response](const Principal& who) -> absl::Status {
                    const std::string& tenant = who.tenant;
                    absl::StatusOr<AdapterRecord> record = store_->Get(tenant, request->adapter());
                    if (!record.ok()) return record.status();
                    if (engine_ == nullptr) return absl::FailedPreconditionError(kNoCache);
                    absl::Status unloaded =
                        engine_->UnloadAdapter(record->adapter_id, record->version);
                    if (!unloaded.ok()) return unloaded;
                    AdapterRecordToProto(*record, response->mutable_adapter());
                    AddResidency(response->mutable_adapter());
                    return absl::OkStatus();
                  });
}

}  // namespace adapterd
