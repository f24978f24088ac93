#include "adapters_store/tenant_registry.h"

#include <sqlite3.h>

#include <fstream>
#include <set>
#include <sstream>

#include "adapters_store/sqlite_registry.h"
#include "gtest/gtest.h"
#include "tests/store/store_test_util.h"

namespace adapterd {
namespace {

using testing::TempDir;

TEST(TenantRegistryTest, TenantsAreCreatedListedUpdatedAndValidated) {
  TempDir tmp;
  absl::StatusOr<std::unique_ptr<TenantRegistry>> reg = TenantRegistry::Open(tmp / "r.db");
  ASSERT_TRUE(reg.ok()) << reg.status();
  Tenant t;
  t.id = "acme";
  t.quotas.requests_per_second = 2.5;
  t.quotas.max_adapters = 7;
  ASSERT_TRUE((*reg)->CreateTenant(t).ok());
  EXPECT_EQ((*reg)->CreateTenant(t).status().code(), absl::StatusCode::kAlreadyExists);
  for (const char* bad : {"", "Acme", "-x", "a b", "../x", "a/b"}) {
    t.id = bad;
    EXPECT_EQ((*reg)->CreateTenant(t).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  t.id = "neg";
  t.quotas.max_adapters = -1;
  EXPECT_EQ((*reg)->CreateTenant(t).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<Tenant> got = (*reg)->GetTenant("acme");
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->name, "acme");
  EXPECT_EQ(got->role, TenantRole::kTenant);
  EXPECT_DOUBLE_EQ(got->quotas.requests_per_second, 2.5);
  EXPECT_EQ(got->quotas.max_adapters, 7);
  got->disabled = true;
  got->quotas.tokens_per_minute = 100;
  ASSERT_TRUE((*reg)->UpdateTenant(*got).ok());
  got = (*reg)->GetTenant("acme");
  EXPECT_TRUE(got->disabled);
  EXPECT_EQ(got->quotas.tokens_per_minute, 100);
  EXPECT_EQ((*reg)->GetTenant("nobody").status().code(), absl::StatusCode::kNotFound);
  std::set<std::string> ids;
  absl::StatusOr<std::vector<Tenant>> all = (*reg)->ListTenants();
  ASSERT_TRUE(all.ok());
  for (const Tenant& x : *all) ids.insert(x.id);
  EXPECT_EQ(ids, (std::set<std::string>{"acme", "default"}));  // "default" from the migration.
}

TEST(TenantRegistryTest, KeysVerifyByHashAndRevokedOrUnknownKeysAnswerAlike) {
  TempDir tmp;
  auto reg = *TenantRegistry::Open(tmp / "r.db");
  Tenant t;
  t.id = "acme";
  ASSERT_TRUE(reg->CreateTenant(t).ok());
  const std::string key = NewApiKey();
  EXPECT_TRUE(IsWellFormedKey(key));
  EXPECT_EQ(key.size(), 64u);
  absl::StatusOr<ApiKey> added = reg->AddKey("acme", key, "d");
  ASSERT_TRUE(added.ok());
  EXPECT_EQ(added->prefix, key.substr(0, kKeyPrefixChars));
  EXPECT_EQ(reg->AddKey("nobody", NewApiKey(), "").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg->AddKey("acme", "short", "").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(reg->AddKey("acme", key, "").status().code(), absl::StatusCode::kAlreadyExists);
  auto verified = reg->Verify(key);
  ASSERT_TRUE(verified.ok());
  EXPECT_EQ(verified->second.id, "acme");
  // Same prefix, different secret: refused.
  std::string forged = key;
  forged.back() = forged.back() == 'A' ? 'B' : 'A';
  const absl::Status unknown = reg->Verify(NewApiKey()).status();
  EXPECT_EQ(unknown.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg->Verify(forged).status(), unknown);
  EXPECT_EQ(reg->Verify("not a key").status(), unknown);
  ASSERT_TRUE(reg->RevokeKey(added->id).ok());
  ASSERT_TRUE(reg->RevokeKey(added->id).ok());  // Idempotent.
  EXPECT_EQ(reg->Verify(key).status(), unknown);
  auto keys = reg->ListKeys("acme");
  ASSERT_EQ(keys->size(), 1u);
  EXPECT_TRUE(keys->front().revoked);
  EXPECT_EQ(reg->RevokeKey("0123").status().code(), absl::StatusCode::kNotFound);
}

TEST(TenantRegistryTest, KeysAreRandomAndComparedInFull) {
  std::set<std::string> keys;
  for (int i = 0; i < 1000; ++i) keys.insert(NewApiKey());
  EXPECT_EQ(keys.size(), 1000u);
  EXPECT_TRUE(ConstantTimeEquals("abc", "abc"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abd"));
  EXPECT_FALSE(ConstantTimeEquals("abc", "abcd"));
  EXPECT_FALSE(IsWellFormedKey(std::string(31, 'a')));
  EXPECT_TRUE(IsWellFormedKey(std::string(32, 'a')));
  EXPECT_FALSE(IsWellFormedKey(std::string(257, 'a')));
  EXPECT_FALSE(IsWellFormedKey(std::string(40, 'a') + " "));
}

// A version-1 database (adapters, no tenants) opens as version 2 with its
// adapters intact and the tenant "default" that owned them.
TEST(TenantRegistryTest, MigratesAVersionOneRegistry) {
  TempDir tmp;
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((tmp / "r.db").c_str(), &db), SQLITE_OK);
  ASSERT_EQ(sqlite3_exec(db, R"sql(
    CREATE TABLE adapters (owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
      adapter_id TEXT NOT NULL, method TEXT NOT NULL, base_fingerprint TEXT NOT NULL,
      sha256 TEXT NOT NULL, size INTEGER NOT NULL, state INTEGER NOT NULL,
      visibility INTEGER NOT NULL DEFAULT 0, created_at_us INTEGER NOT NULL,
      PRIMARY KEY (owner, name, version));
    CREATE INDEX adapters_by_state ON adapters(state);
    CREATE TABLE adapter_files (owner TEXT NOT NULL, name TEXT NOT NULL, version INTEGER NOT NULL,
      file_name TEXT NOT NULL, sha256 TEXT NOT NULL, size INTEGER NOT NULL,
      PRIMARY KEY (owner, name, version, file_name),
      FOREIGN KEY (owner, name, version) REFERENCES adapters(owner, name, version) ON DELETE CASCADE);
    CREATE INDEX adapter_files_by_sha ON adapter_files(sha256);
    INSERT INTO adapters VALUES ('default', 'old', 1, 'id1', 'lora', '', 'x', 10, 1, 0, 0);
    PRAGMA user_version = 1;)sql",
                         nullptr, nullptr, nullptr),
            SQLITE_OK);
  sqlite3_close(db);
  auto reg = TenantRegistry::Open(tmp / "r.db");
  ASSERT_TRUE(reg.ok()) << reg.status();
  EXPECT_TRUE((*reg)->GetTenant("default").ok());
  auto adapters = *SqliteRegistry::Open(tmp / "r.db");
  absl::StatusOr<AdapterRecord> old = adapters->Get("default", "old", 0);
  ASSERT_TRUE(old.ok()) << old.status();
  EXPECT_EQ(old->adapter_id, "id1");
  auto usage = adapters->Usage("default");
  EXPECT_EQ(usage->adapters, 1);
  EXPECT_EQ(usage->bytes, 10);
}

}  // namespace
}  // namespace adapterd
