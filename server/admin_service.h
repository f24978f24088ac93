#pragma once

// The Admin service: what the server serves (model, limits), its counters,
// and the management of tenants, API keys and public adapters. GetServerInfo
// answers any authenticated caller (start-up adapter paths only to admins);
// everything else needs the admin role.

#include <cstdint>

#include "absl/time/time.h"
#include "adapterd/v1/admin.grpc.pb.h"
#include "adapters_store/adapter_store.h"
#include "adapters_store/tenant_registry.h"
#include "engine/api/engine.h"
#include "server/auth.h"

namespace adapterd {

// Thread-safe. Does not own `engine`, `auth`, `tenants` or `store`, which
// must outlive the service. A null `tenants` (no authentication) makes the
// tenant and key RPCs fail with FAILED_PRECONDITION; a null store does the
// same for SetAdapterVisibility.
class AdminService final : public v1::Admin::CallbackService {
 public:
  AdminService(Engine* engine, int64_t max_message_bytes, const Authenticator* auth,
               TenantRegistry* tenants, AdapterStore* store);

  grpc::ServerUnaryReactor* GetServerInfo(grpc::CallbackServerContext* context,
                                          const v1::GetServerInfoRequest* request,
                                          v1::ServerInfo* response) override;
  grpc::ServerUnaryReactor* GetStats(grpc::CallbackServerContext* context,
                                     const v1::GetStatsRequest* request,
                                     v1::ServerStats* response) override;
  grpc::ServerUnaryReactor* CreateTenant(grpc::CallbackServerContext* context,
                                         const v1::CreateTenantRequest* request,
                                         v1::Tenant* response) override;
  grpc::ServerUnaryReactor* ListTenants(grpc::CallbackServerContext* context,
                                        const v1::ListTenantsRequest* request,
                                        v1::ListTenantsResponse* response) override;
  grpc::ServerUnaryReactor* GetTenant(grpc::CallbackServerContext* context,
                                      const v1::GetTenantRequest* request,
                                      v1::Tenant* response) override;
  grpc::ServerUnaryReactor* UpdateTenant(grpc::CallbackServerContext* context,
                                         const v1::UpdateTenantRequest* request,
                                         v1::Tenant* response) override;
  grpc::ServerUnaryReactor* CreateApiKey(grpc::CallbackServerContext* context,
                                         const v1::CreateApiKeyRequest* request,
                                         v1::CreateApiKeyResponse* response) override;
  grpc::ServerUnaryReactor* ListApiKeys(grpc::CallbackServerContext* context,
                                        const v1::ListApiKeysRequest* request,
                                        v1::ListApiKeysResponse* response) override;
  grpc::ServerUnaryReactor* RevokeApiKey(grpc::CallbackServerContext* context,
                                         const v1::RevokeApiKeyRequest* request,
                                         v1::ApiKeyInfo* response) override;
  grpc::ServerUnaryReactor* SetAdapterVisibility(
      grpc::CallbackServerContext* context, const v1::SetAdapterVisibilityRequest* request,
      v1::SetAdapterVisibilityResponse* response) override;

 private:
  // Authorizes an admin-only call and runs `work` with the caller; finishes
  // the call with the result.
  grpc::ServerUnaryReactor* AdminOnly(grpc::CallbackServerContext* context, const char* method,
                                      const std::function<absl::Status(const Principal&)>& work);

  Engine* const engine_;
  const int64_t max_message_bytes_;
  const Authenticator* const auth_;
  TenantRegistry* const tenants_;
  AdapterStore* const store_;
  const absl::Time start_;
};

}  // namespace adapterd
