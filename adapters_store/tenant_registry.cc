#include "adapters_store/tenant_registry.h"

#include <sqlite3.h>
#include <sys/random.h>

#include <cerrno>
#include <utility>
#include <variant>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/sha256.h"
#include "adapters_store/sqlite_registry.h"
#include "adapters_store/sqlite_stmt.h"
#include "common/status_macros.h"

namespace adapterd {
namespace {

using sqlite::Arg;
using sqlite::DbError;
using sqlite::Stmt;

constexpr char kTenantColumns[] =
    "id, name, role, max_adapters, max_adapter_bytes, max_concurrent_requests, "
    "requests_per_second, tokens_per_minute, max_concurrent_jobs, created_at_us, disabled";

Tenant RowToTenant(const Stmt& s) {
  Tenant t;
  t.id = s.Text(0);
  t.name = s.Text(1);
  t.role = s.Int(2) == 1 ? TenantRole::kAdmin : TenantRole::kTenant;
  t.quotas.max_adapters = s.Int(3);
  t.quotas.max_adapter_bytes = s.Int(4);
  t.quotas.max_concurrent_requests = s.Int(5);
  t.quotas.requests_per_second = s.Double(6);
  t.quotas.tokens_per_minute = s.Int(7);
  t.quotas.max_concurrent_jobs = s.Int(8);
  t.created_at = absl::FromUnixMicros(s.Int(9));
  t.disabled = s.Int(10) != 0;
  return t;
}

constexpr char kKeyColumns[] = "id, tenant, prefix, description, created_at_us, revoked_at_us";

ApiKey RowToKey(const Stmt& s) {
  ApiKey k;
  k.id = s.Text(0);
  k.tenant = s.Text(1);
  k.prefix = s.Text(2);
  k.description = s.Text(3);
  k.created_at = absl::FromUnixMicros(s.Int(4));
  k.revoked = s.Int(5) != 0;
  k.revoked_at = absl::FromUnixMicros(s.Int(5));
  return k;
}

std::string KeyHash(const std::string& salt_hex, const std::string& key) {
  Sha256 sha;
  sha.Update(salt_hex);
  sha.Update(key);
  return sha.HexDigest();
}

bool IsKeyChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '~' || c == '+' || c == '/' || c == '=' || c == '-';
}

absl::Status QuotasValid(const TenantQuotas& q) {
  if (q.max_adapters < 0 || q.max_adapter_bytes < 0 || q.max_concurrent_requests < 0 ||
      !(q.requests_per_second >= 0) || q.requests_per_second > 1e9 || q.tokens_per_minute < 0 ||
      q.max_concurrent_jobs < 0) {
    return absl::InvalidArgumentError("quotas must be >= 0 (0 means unlimited)");
  }
  return absl::OkStatus();
}

}  // namespace

const char* TenantRoleName(TenantRole role) {
  return role == TenantRole::kAdmin ? "admin" : "tenant";
}

absl::Status ValidateTenantId(const std::string& id) {
  bool ok = !id.empty() && id.size() <= 63;
  for (size_t i = 0; ok && i < id.size(); ++i) {
    const char c = id[i];
    const bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
    ok = alnum || (i > 0 && (c == '_' || c == '-'));
  }
  if (!ok) {
    return absl::InvalidArgumentError(
        "a tenant id is 1 to 63 characters of [a-z0-9_-], starting with a letter or digit");
  }
  return absl::OkStatus();
}

bool IsWellFormedKey(const std::string& key) {
  if (key.size() < kMinKeyChars || key.size() > kMaxKeyChars) return false;
  for (char c : key) {
    if (!IsKeyChar(c)) return false;
  }
  return true;
}

std::string SecureRandomBytes(size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(out.data() + got, n - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) std::abort();  // No entropy source: never hand out a weak key.
    got += static_cast<size_t>(r);
  }
  return out;
}

std::string NewApiKey() {
  std::string encoded = absl::WebSafeBase64Escape(SecureRandomBytes(45));  // 60 characters.
  return absl::StrCat("adk_", encoded);
}

bool ConstantTimeEquals(const std::string& a, const std::string& b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

absl::StatusOr<std::unique_ptr<TenantRegistry>> TenantRegistry::Open(const std::string& path) {
  {
    // Creates or migrates the schema (tenants arrive in version 2).
    ASSIGN_OR_RETURN(std::unique_ptr<SqliteRegistry> migrated, SqliteRegistry::Open(path));
  }
  ASSIGN_OR_RETURN(sqlite3 * db, sqlite::OpenDatabase(path, "registry", /*create=*/false));
  std::unique_ptr<TenantRegistry> registry(new TenantRegistry(db));
  return registry;
}

TenantRegistry::~TenantRegistry() {
  Checkpoint().IgnoreError();
  sqlite3_close(db_);
}

absl::Status TenantRegistry::Checkpoint() {
  absl::MutexLock lock(&mu_);
  if (sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_PASSIVE, nullptr, nullptr) !=
      SQLITE_OK) {
    return DbError(db_, "checkpoint");
  }
  return absl::OkStatus();
}

absl::StatusOr<Tenant> TenantRegistry::CreateTenant(Tenant tenant) {
  RETURN_IF_ERROR(ValidateTenantId(tenant.id));
  RETURN_IF_ERROR(QuotasValid(tenant.quotas));
  if (tenant.name.size() > 256) return absl::InvalidArgumentError("name is over 256 bytes");
  if (tenant.name.empty()) tenant.name = tenant.id;
  tenant.created_at = absl::FromUnixMicros(absl::ToUnixMicros(absl::Now()));
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("INSERT INTO tenants (", kTenantColumns,
                           ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
  RETURN_IF_ERROR(s.Prepared());
  const TenantQuotas& q = tenant.quotas;
  s.Bind({tenant.id, tenant.name, static_cast<int64_t>(tenant.role == TenantRole::kAdmin),
          q.max_adapters, q.max_adapter_bytes, q.max_concurrent_requests, q.requests_per_second,
          q.tokens_per_minute, q.max_concurrent_jobs, absl::ToUnixMicros(tenant.created_at),
          static_cast<int64_t>(tenant.disabled)});
  const int rc = s.Step();
  if (rc == SQLITE_CONSTRAINT) {
    return absl::AlreadyExistsError(absl::StrCat("tenant ", tenant.id, " already exists"));
  }
  if (rc != SQLITE_DONE) return DbError(db_, "insert tenant");
  return tenant;
}

absl::StatusOr<Tenant> TenantRegistry::GetTenantLocked(const std::string& id) {
  Stmt s(db_, absl::StrCat("SELECT ", kTenantColumns, " FROM tenants WHERE id = ?"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({id});
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return RowToTenant(s);
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("tenant ", id, " not found"));
  return DbError(db_, "get tenant");
}

absl::StatusOr<Tenant> TenantRegistry::GetTenant(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return GetTenantLocked(id);
}

absl::StatusOr<std::vector<Tenant>> TenantRegistry::ListTenants() {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kTenantColumns, " FROM tenants ORDER BY id"));
  RETURN_IF_ERROR(s.Prepared());
  std::vector<Tenant> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(RowToTenant(s));
  if (rc != SQLITE_DONE) return DbError(db_, "list tenants");
  return out;
}

absl::StatusOr<Tenant> TenantRegistry::UpdateTenant(const Tenant& tenant) {
  RETURN_IF_ERROR(QuotasValid(tenant.quotas));
  if (tenant.name.size() > 256) return absl::InvalidArgumentError("name is over 256 bytes");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Tenant current, GetTenantLocked(tenant.id));
  Stmt s(db_,
         "UPDATE tenants SET name = ?, max_adapters = ?, max_adapter_bytes = ?, "
         "max_concurrent_requests = ?, requests_per_second = ?, tokens_per_minute = ?, "
         "max_concurrent_jobs = ?, disabled = ? WHERE id = ?");
  RETURN_IF_ERROR(s.Prepared());
  const TenantQuotas& q = tenant.quotas;
  s.Bind({tenant.name.empty() ? current.name : tenant.name, q.max_adapters, q.max_adapter_bytes,
          q.max_concurrent_requests, q.requests_per_second, q.tokens_per_minute,
          q.max_concurrent_jobs, static_cast<int64_t>(tenant.disabled), tenant.id});
  RETURN_IF_ERROR(s.Run());
  return GetTenantLocked(tenant.id);
}

absl::StatusOr<ApiKey> TenantRegistry::AddKey(const std::string& tenant, const std::string& key,
                                              const std::string& description) {
  if (!IsWellFormedKey(key)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "an API key is ", kMinKeyChars, " to ", kMaxKeyChars, " characters of [A-Za-z0-9._~+/=-]"));
  }
  if (description.size() > 256) return absl::InvalidArgumentError("description is over 256 bytes");
  ApiKey out;
  out.id = absl::BytesToHexString(SecureRandomBytes(16));
  out.tenant = tenant;
  out.prefix = key.substr(0, kKeyPrefixChars);
  out.description = description;
  out.created_at = absl::FromUnixMicros(absl::ToUnixMicros(absl::Now()));
  const std::string salt = absl::BytesToHexString(SecureRandomBytes(16));
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(GetTenantLocked(tenant).status());
  Stmt s(db_,
         "INSERT INTO api_keys (id, tenant, prefix, salt, hash, description, created_at_us) "
         "VALUES (?, ?, ?, ?, ?, ?, ?)");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({out.id, tenant, out.prefix, salt, KeyHash(salt, key), description,
          absl::ToUnixMicros(out.created_at)});
  const int rc = s.Step();
  if (rc == SQLITE_CONSTRAINT) {
    return absl::AlreadyExistsError("a key with the same prefix already exists");
  }
  if (rc != SQLITE_DONE) return DbError(db_, "insert key");
  return out;
}

absl::StatusOr<std::vector<ApiKey>> TenantRegistry::ListKeys(const std::string& tenant) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         absl::StrCat("SELECT ", kKeyColumns,
                      " FROM api_keys WHERE ?1 = '' OR tenant = ?1 ORDER BY created_at_us, id"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({tenant});
  std::vector<ApiKey> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(RowToKey(s));
  if (rc != SQLITE_DONE) return DbError(db_, "list keys");
  return out;
}

absl::StatusOr<ApiKey> TenantRegistry::RevokeKey(const std::string& key_id) {
  absl::MutexLock lock(&mu_);
  {
    Stmt s(db_, "UPDATE api_keys SET revoked_at_us = ? WHERE id = ? AND revoked_at_us = 0");
    RETURN_IF_ERROR(s.Prepared());
    s.Bind({absl::ToUnixMicros(absl::Now()), key_id});
    RETURN_IF_ERROR(s.Run());
  }
  Stmt s(db_, absl::StrCat("SELECT ", kKeyColumns, " FROM api_keys WHERE id = ?"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({key_id});
  const int rc = s.Step();
  if (rc == SQLITE_ROW) return RowToKey(s);
  if (rc == SQLITE_DONE) return absl::NotFoundError(absl::StrCat("key ", key_id, " not found"));
  return DbError(db_, "revoke key");
}

absl::StatusOr<std::pair<ApiKey, Tenant>> TenantRegistry::Verify(const std::string& key) {
  const absl::Status unknown = absl::NotFoundError("unknown key");
  if (!IsWellFormedKey(key)) return unknown;
  absl::MutexLock lock(&mu_);
  Stmt s(db_, absl::StrCat("SELECT ", kKeyColumns, ", salt, hash FROM api_keys WHERE prefix = ?"));
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({key.substr(0, kKeyPrefixChars)});
  const int rc = s.Step();
  if (rc == SQLITE_DONE) {
    KeyHash("00000000000000000000000000000000", key);  // Same work as a hit.
    return unknown;
  }
  if (rc != SQLITE_ROW) return DbError(db_, "verify key");
  ApiKey k = RowToKey(s);
  const bool match = ConstantTimeEquals(KeyHash(s.Text(6), key), s.Text(7));
  if (!match || k.revoked) return unknown;
  ASSIGN_OR_RETURN(Tenant tenant, GetTenantLocked(k.tenant));
  return std::make_pair(std::move(k), std::move(tenant));
}

absl::StatusOr<bool> TenantRegistry::HasLiveKey(const std::string& tenant, const std::string& key) {
  absl::StatusOr<std::pair<ApiKey, Tenant>> found = Verify(key);
  if (absl::IsNotFound(found.status())) return false;
  if (!found.ok()) return found.status();
  return found->first.tenant == tenant;
}

absl::StatusOr<int64_t> TenantRegistry::CountLiveAdminKeys() {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "SELECT COUNT(*) FROM api_keys k JOIN tenants t ON k.tenant = t.id WHERE t.role = 1 AND "
         "k.revoked_at_us = 0 AND t.disabled = 0");
  RETURN_IF_ERROR(s.Prepared());
  if (s.Step() != SQLITE_ROW) return DbError(db_, "count admin keys");
  return s.Int(0);
}

}  // namespace adapterd
