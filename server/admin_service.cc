#include "server/admin_service.h"

#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "server/proto_convert.h"
#include "server/status_convert.h"
#include "spdlog/spdlog.h"

#ifndef ADAPTERD_VERSION
#define ADAPTERD_VERSION "0.0.0"
#endif

namespace adapterd {

AdminService::AdminService(Engine* engine, int64_t max_message_bytes, const Authenticator* auth,
                           TenantRegistry* tenants, AdapterStore* store)
    : engine_(engine),
      max_message_bytes_(max_message_bytes),
      auth_(auth),
      tenants_(tenants),
      store_(store),
      start_(absl::Now()) {}

grpc::ServerUnaryReactor* AdminService::GetServerInfo(grpc::CallbackServerContext* context,
                                                      const v1::GetServerInfoRequest* /*request*/,
                                                      v1::ServerInfo* response) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Principal> who = auth_->Authorize(*context, "GetServerInfo", false);
  if (!who.ok()) {
    reactor->Finish(ToGrpcStatus(who.status()));
    return reactor;
  }
  response->set_version(ADAPTERD_VERSION);
  ModelInfoToProto(engine_->info(), response->mutable_model());
  LimitsToProto(engine_->limits(), max_message_bytes_, response->mutable_limits());
  response->set_auth_enabled(auth_->enabled());
  for (const AdapterInfo& a : engine_->info().adapters) {
    v1::LoadedAdapter* out = response->add_adapters();
    out->set_name(a.name);
    out->set_version(a.version);
    out->set_method(a.method);
    if (who->is_admin()) out->set_path(a.path);  // Server paths are for operators.
    out->set_bytes(a.bytes);
  }
  response->set_merged_adapter(engine_->info().merged_adapter);
  reactor->Finish(grpc::Status::OK);
  return reactor;
}

namespace {

v1::Role RoleToProto(TenantRole role) {
  return role == TenantRole::kAdmin ? v1::ROLE_ADMIN : v1::ROLE_TENANT;
}

void QuotasToProto(const TenantQuotas& q, v1::Quotas* out) {
  out->set_max_adapters(q.max_adapters);
  out->set_max_adapter_bytes(q.max_adapter_bytes);
  out->set_max_concurrent_requests(q.max_concurrent_requests);
  out->set_requests_per_second(q.requests_per_second);
  out->set_tokens_per_minute(q.tokens_per_minute);
  out->set_max_concurrent_jobs(q.max_concurrent_jobs);
}

TenantQuotas QuotasFromProto(const v1::Quotas& q) {
  TenantQuotas out;
  out.max_adapters = q.max_adapters();
  out.max_adapter_bytes = q.max_adapter_bytes();
  out.max_concurrent_requests = q.max_concurrent_requests();
  out.requests_per_second = q.requests_per_second();
  out.tokens_per_minute = q.tokens_per_minute();
  out.max_concurrent_jobs = q.max_concurrent_jobs();
  return out;
}

void TenantToProto(const Tenant& t, v1::Tenant* out) {
  out->set_id(t.id);
  out->set_name(t.name);
  out->set_role(RoleToProto(t.role));
  QuotasToProto(t.quotas, out->mutable_quotas());
  out->set_created_at_unix_ms(absl::ToUnixMillis(t.created_at));
  out->set_disabled(t.disabled);
}

void KeyToProto(const ApiKey& k, v1::ApiKeyInfo* out) {
  out->set_id(k.id);
  out->set_tenant(k.tenant);
  out->set_prefix(k.prefix);
  out->set_description(k.description);
  out->set_created_at_unix_ms(absl::ToUnixMillis(k.created_at));
  out->set_revoked(k.revoked);
}

constexpr char kNoTenants[] =
    "tenants and keys are not managed by this server (it runs with --insecure-no-auth)";

}  // namespace

grpc::ServerUnaryReactor* AdminService::AdminOnly(
    grpc::CallbackServerContext* context, const char* method,
    const std::function<absl::Status(const Principal&)>& work) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::StatusOr<Principal> who = auth_->Authorize(*context, method, /*admin_only=*/true);
  absl::Status status = who.ok() ? work(*who) : who.status();
  if (who.ok()) {
    spdlog::info("{} tenant={} {}", method, who->tenant,
                 status.ok() ? "ok" : absl::StrCat("failed: ", status.ToString()));
  }
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::GetStats(grpc::CallbackServerContext* context,
                                                 const v1::GetStatsRequest* /*request*/,
                                                 v1::ServerStats* response) {
  return AdminOnly(context, "GetStats", [&](const Principal&) {
    StatsToProto(engine_->Stats(), absl::ToDoubleSeconds(absl::Now() - start_), response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::CreateTenant(grpc::CallbackServerContext* context,
                                                     const v1::CreateTenantRequest* request,
                                                     v1::Tenant* response) {
  return AdminOnly(context, "CreateTenant", [&](const Principal&) -> absl::Status {
    if (tenants_ == nullptr) return absl::FailedPreconditionError(kNoTenants);
    Tenant t;
    t.id = request->id();
    t.name = request->name();
    t.role = request->role() == v1::ROLE_ADMIN ? TenantRole::kAdmin : TenantRole::kTenant;
    t.quotas = QuotasFromProto(request->quotas());
    absl::StatusOr<Tenant> created = tenants_->CreateTenant(std::move(t));
    if (!created.ok()) return created.status();
    TenantToProto(*created, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::ListTenants(grpc::CallbackServerContext* context,
                                                    const v1::ListTenantsRequest* /*request*/,
                                                    v1::ListTenantsResponse* response) {
  return AdminOnly(context, "ListTenants", [&](const Principal&) -> absl::Status {
    if (tenants_ == nullptr) return absl::FailedPreconditionError(kNoTenants);
    absl::StatusOr<std::vector<Tenant>> all = tenants_->ListTenants();
    if (!all.ok()) return all.status();
    for (const Tenant& t : *all) TenantToProto(t, response->add_tenants());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::GetTenant(grpc::CallbackServerContext* context,
                                                  const v1::GetTenantRequest* request,
                                                  v1::Tenant* response) {
  return AdminOnly(context, "GetTenant", [&](const Principal&) -> absl::Status {
    if (tenants_ == nullptr) return absl::FailedPreconditionError(kNoTenants);
    absl::StatusOr<Tenant> t = tenants_->GetTenant(request->id());
    if (!t.ok()) return t.status();
    TenantToProto(*t, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::UpdateTenant(grpc::CallbackServerContext* context,
                                                     const v1::UpdateTenantRequest* request,
                                                     v1::Tenant* response) {
  return AdminOnly(context, "UpdateTenant", [&](const Principal& who) -> absl::Status {
    if (tenants_ == nullptr) return absl::FailedPreconditionError(kNoTenants);
    absl::StatusOr<Tenant> t = tenants_->GetTenant(request->id());
    if (!t.ok()) return t.status();
    std::set<std::string> paths(request->update_paths().begin(), request->update_paths().end());
    for (const std::string& p : paths) {
      if (p != "name" && p != "quotas" && p != "disabled") {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown update path \"", p, "\" (name, quotas, disabled)"));
      }
    }
    const bool all = paths.empty();
    if (all || paths.count("name")) t->name = request->name();
    if (all || paths.count("quotas")) t->quotas = QuotasFromProto(request->quotas());
    if (all || paths.count("disabled")) {
      if (request->disabled() && t->id == who.tenant) {
        return absl::FailedPreconditionError("an admin cannot disable its own tenant");
      }
      t->disabled = request->disabled();
    }
    absl::StatusOr<Tenant> updated = tenants_->UpdateTenant(*t);
    if (!updated.ok()) return updated.status();
    TenantToProto(*updated, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::CreateApiKey(grpc::CallbackServerContext* context,
                                                     const v1::CreateApiKeyRequest* request,
                                                     v1::CreateApiKeyResponse* response) {
  return AdminOnly(context, "CreateApiKey", [&](const Principal&) -> absl::Status {
    if (tenants_ == nullptr) return absl::FailedPreconditionError(kNoTenants);
    const std::string key = NewApiKey();
    absl::StatusOr<ApiKey> added = tenants_->AddKey(request->tenant(), key, request->description());
    if (!added.ok()) return added.status();
    KeyToProto(*added, response->mutable_info());
    response->set_key(key);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::ListApiKeys(grpc::CallbackServerContext* context,
                                                    const v1::ListApiKeysRequest* request,
                                                    v1::ListApiKeysResponse* response) {
  return AdminOnly(context, "ListApiKeys", [&](const Principal&) -> absl::Status {
    if (tenants_ == nullptr) return absl::FailedPreconditionError(kNoTenants);
    absl::StatusOr<std::vector<ApiKey>> keys = tenants_->ListKeys(request->tenant());
    if (!keys.ok()) return keys.status();
    for (const ApiKey& k : *keys) KeyToProto(k, response->add_keys());
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::RevokeApiKey(grpc::CallbackServerContext* context,
                                                     const v1::RevokeApiKeyRequest* request,
                                                     v1::ApiKeyInfo* response) {
  return AdminOnly(context, "RevokeApiKey", [&](const Principal&) -> absl::Status {
    if (tenants_ == nullptr) return absl::FailedPreconditionError(kNoTenants);
    absl::StatusOr<ApiKey> k = tenants_->RevokeKey(request->id());
    if (!k.ok()) return k.status();
    KeyToProto(*k, response);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* AdminService::SetAdapterVisibility(
    grpc::CallbackServerContext* context, const v1::SetAdapterVisibilityRequest* request,
    v1::SetAdapterVisibilityResponse* /*response*/) {
  return AdminOnly(context, "SetAdapterVisibility", [&](const Principal& who) -> absl::Status {
    if (store_ == nullptr) return absl::FailedPreconditionError("this server has no adapter store");
    const std::string owner = request->tenant().empty() ? who.tenant : request->tenant();
    return store_->SetVisibility(
        owner, request->adapter(),
        request->make_public() ? AdapterVisibility::kPublic : AdapterVisibility::kPrivate);
  });
}

}  // namespace adapterd
