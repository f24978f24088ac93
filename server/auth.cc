#include "server/auth.h"

#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace adapterd {

absl::StatusOr<Principal> Authenticator::Authenticate(
    const grpc::ServerContextBase& context) const {
  if (registry_ == nullptr) {
    Principal who;
    who.tenant = kDefaultTenantId;
    who.role = TenantRole::kAdmin;
    return who;
  }
  const auto& metadata = context.client_metadata();
  const auto range = metadata.equal_range("authorization");
  if (range.first == range.second || std::next(range.first) != range.second) {
    return absl::UnauthenticatedError(kMissingToken);
  }
  const std::string value(range.first->second.data(), range.first->second.size());
  constexpr absl::string_view kBearer = "Bearer ";
  if (!absl::StartsWith(value, kBearer)) return absl::UnauthenticatedError(kMissingToken);
  const std::string token = value.substr(kBearer.size());
  if (!IsWellFormedKey(token)) return absl::UnauthenticatedError(kMissingToken);
  absl::StatusOr<std::pair<ApiKey, Tenant>> found = registry_->Verify(token);
  if (absl::IsNotFound(found.status())) return absl::UnauthenticatedError(kInvalidKey);
  if (!found.ok()) {
    spdlog::error("authentication failed: {}", found.status().ToString());
    return absl::UnavailableError("cannot verify the API key now");
  }
  if (found->second.disabled) return absl::PermissionDeniedError(kTenantDisabled);
  Principal who;
  who.tenant = found->second.id;
  who.role = found->second.role;
  who.quotas = found->second.quotas;
  who.key_id = found->first.id;
  return who;
}

absl::StatusOr<Principal> Authenticator::Authorize(const grpc::ServerContextBase& context,
                                                   const char* method, bool admin_only) const {
  absl::StatusOr<Principal> who = Authenticate(context);
  if (!who.ok()) return who.status();
  if (admin_only) {
    if (absl::Status s = RequireAdmin(*who, method); !s.ok()) return s;
  }
  return who;
}

absl::Status RequireAdmin(const Principal& who, const char* method) {
  if (who.is_admin()) return absl::OkStatus();
  return absl::PermissionDeniedError(absl::StrCat(method, " needs the admin role"));
}

}  // namespace adapterd
