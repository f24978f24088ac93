#pragma once

// Authentication and the roles: every RPC of adapterd's services starts by
// asking the Authenticator who the caller is. The caller sends
// "authorization: Bearer <api key>"; the key is looked up by its prefix and
// verified against its salted SHA-256 (adapters_store/tenant_registry.h).
//
// Answers (stable text; tests assert it):
//   no authorization header, or not "Bearer <token>" with a well-formed
//   token → UNAUTHENTICATED "missing or malformed bearer token"
//   unknown or revoked key → UNAUTHENTICATED "invalid API key" (one message)
//   a disabled tenant → PERMISSION_DENIED "tenant is disabled"
//   a role too low → PERMISSION_DENIED "<method> needs the admin role"
// Health and reflection are separate services and stay open.
//
// Without a registry (--insecure-no-auth) every caller is the tenant
// "default" with the admin role.

#include <grpcpp/server_context.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "adapters_store/tenant_registry.h"

namespace adapterd {

// The authenticated caller.
struct Principal {
  std::string tenant;  // Owner of its adapters; GenerateRequest::tenant.
  TenantRole role = TenantRole::kTenant;
  TenantQuotas quotas;
  std::string key_id;  // Empty in insecure mode.

  bool is_admin() const { return role == TenantRole::kAdmin; }
};

inline constexpr char kDefaultTenantId[] = "default";
inline constexpr char kAdminTenantId[] = "admin";  // Made by the server at start.
inline constexpr char kMissingToken[] = "missing or malformed bearer token";
inline constexpr char kInvalidKey[] = "invalid API key";
inline constexpr char kTenantDisabled[] = "tenant is disabled";

// Thread-safe. Does not own the registry, which must outlive it.
class Authenticator {
 public:
  // `registry` null: insecure mode (see the file comment).
  explicit Authenticator(TenantRegistry* registry) : registry_(registry) {}

  bool enabled() const { return registry_ != nullptr; }

  // The caller of `context`, or the errors of the file comment.
  absl::StatusOr<Principal> Authenticate(const grpc::ServerContextBase& context) const;

  // The caller if it may call `method` (a short RPC name, for the message):
  // admin-only methods need the admin role.
  absl::StatusOr<Principal> Authorize(const grpc::ServerContextBase& context, const char* method,
                                      bool admin_only) const;

 private:
  TenantRegistry* const registry_;
};

// PERMISSION_DENIED "<method> needs the admin role" unless `who` is an admin.
absl::Status RequireAdmin(const Principal& who, const char* method);

}  // namespace adapterd
