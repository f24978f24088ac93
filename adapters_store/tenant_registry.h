#pragma once

// Tenants and their API keys, in the same SQLite database as the adapter
// registry (registry.db, schema version 2 and later; SqliteRegistry migrates).
//
// A tenant is a namespace of adapters (and, later, jobs) with a role and
// quotas. An API key is a high-entropy random string handed out once; the
// database keeps only its public lookup prefix (the first kKeyPrefixChars
// characters), a random per-key salt and SHA-256(salt || key). Verification
// recomputes the digest and compares it in constant time. Nothing here can
// give a key back.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

struct sqlite3;

namespace adapterd {

enum class TenantRole {
  kTenant = 0,  // Its own adapters, jobs and inference.
  kAdmin = 1,   // Everything, plus tenants, keys, public adapters and server stats.
};
const char* TenantRoleName(TenantRole role);

// Per-tenant limits; 0 means unlimited.
struct TenantQuotas {
  int64_t max_adapters = 0;             // Stored READY adapter versions.
  int64_t max_adapter_bytes = 0;        // Their bytes together.
  int64_t max_concurrent_requests = 0;  // Inference requests in flight.
  double requests_per_second = 0;       // Token bucket; the burst is max(1, rate).
  int64_t tokens_per_minute = 0;        // Prompt + completion tokens.
  int64_t max_concurrent_jobs = 0;      // Training jobs (stored; jobs come later).
};

struct Tenant {
  std::string id;    // [a-z0-9][a-z0-9_-]{0,62}; the owner of its adapters.
  std::string name;  // Display name.
  TenantRole role = TenantRole::kTenant;
  TenantQuotas quotas;
  absl::Time created_at = absl::UnixEpoch();
  bool disabled = false;  // A disabled tenant's keys are refused.
};

struct ApiKey {
  std::string id;      // 32 hex; names the key in ListApiKeys/RevokeApiKey.
  std::string tenant;  // Tenant::id.
  std::string prefix;  // The key's first kKeyPrefixChars characters (public).
  std::string description;
  absl::Time created_at = absl::UnixEpoch();
  bool revoked = false;
  absl::Time revoked_at = absl::UnixEpoch();
};

inline constexpr size_t kKeyPrefixChars = 16;
inline constexpr size_t kMinKeyChars = 32;
inline constexpr size_t kMaxKeyChars = 256;

// INVALID_ARGUMENT unless `id` is [a-z0-9][a-z0-9_-]{0,62}.
absl::Status ValidateTenantId(const std::string& id);
// True if `key` has the shape of an API key: kMinKeyChars..kMaxKeyChars of
// [A-Za-z0-9._~+/=-]. Says nothing about whether it exists.
bool IsWellFormedKey(const std::string& key);
// A new key: "adk_" + 60 characters of base64url from getrandom (357 bits).
std::string NewApiKey();
// Cryptographically random bytes (getrandom).
std::string SecureRandomBytes(size_t n);
// Constant-time equality of two strings of the same length (false otherwise).
bool ConstantTimeEquals(const std::string& a, const std::string& b);

// Thread-safe: one connection, serialised by a mutex.
class TenantRegistry {
 public:
  // Opens `path` (migrating it through SqliteRegistry when needed).
  static absl::StatusOr<std::unique_ptr<TenantRegistry>> Open(const std::string& path);
  ~TenantRegistry();

  // ALREADY_EXISTS if the id is taken; INVALID_ARGUMENT for a bad id.
  absl::StatusOr<Tenant> CreateTenant(Tenant tenant);
  // NOT_FOUND if absent.
  absl::StatusOr<Tenant> GetTenant(const std::string& id);
  absl::StatusOr<std::vector<Tenant>> ListTenants();
  // Replaces name, quotas and disabled of an existing tenant (not its role or id).
  absl::StatusOr<Tenant> UpdateTenant(const Tenant& tenant);

  // Stores `key` (its hash) for `tenant`. NOT_FOUND for an unknown tenant;
  // INVALID_ARGUMENT for a malformed key; ALREADY_EXISTS if a key with the
  // same prefix exists.
  absl::StatusOr<ApiKey> AddKey(const std::string& tenant, const std::string& key,
                                const std::string& description);
  // Every key of `tenant` ("" = all tenants), revoked ones included.
  absl::StatusOr<std::vector<ApiKey>> ListKeys(const std::string& tenant);
  // Revokes key `key_id`. NOT_FOUND if absent. Idempotent.
  absl::StatusOr<ApiKey> RevokeKey(const std::string& key_id);
  // The live key matching `key` and its tenant. NOT_FOUND for an unknown,
  // revoked or malformed key (one answer for all three).
  absl::StatusOr<std::pair<ApiKey, Tenant>> Verify(const std::string& key);
  // True if `key` (its hash) is stored for `tenant` and not revoked.
  absl::StatusOr<bool> HasLiveKey(const std::string& tenant, const std::string& key);
  absl::StatusOr<int64_t> CountLiveAdminKeys();

  // Writes the WAL back into the database file (a clean close).
  absl::Status Checkpoint();

 private:
  explicit TenantRegistry(sqlite3* db) : db_(db) {}
  absl::StatusOr<Tenant> GetTenantLocked(const std::string& id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;  // Serialises every use of db_.
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace adapterd
