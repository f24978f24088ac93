#include "adapters_store/sqlite_registry.h"

#include <sqlite3.h>

#include <algorithm>
#include <utility>
#include <variant>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "adapters_store/sqlite_stmt.h"
#include "common/status_macros.h"

namespace adapterd {

const char* AdapterStateName(AdapterState state) {
  switch (state) {
    case AdapterState::kPending:
      return "PENDING";
    case AdapterState::kReady:
      return "READY";
    case AdapterState::kDeleted:
      return "DELETED";
  }
  return "UNKNOWN";
}

std::string ManifestDigest(const std::vector<AdapterFile>& files) {
  std::vector<const AdapterFile*> sorted;
  for (const AdapterFile& f : files) sorted.push_back(&f);
  std::sort(sorted.begin(), sorted.end(),
            [](const AdapterFile* a, const AdapterFile* b) { return a->name < b->name; });
  Sha256 sha;
  for (const AdapterFile* f : sorted)
    sha.Update(absl::StrCat(f->name, " ", f->size, " ", f->sha256, "\n"));
  return sha.HexDigest();
}

namespace {

using sqlite::Arg;
using sqlite::DbError;
using sqlite::Stmt;

constexpr char kColumns[] =
    "adapter_id, owner, name, version, method, base_fingerprint, sha256, size, state, "
    "visibility, created_at_us";

AdapterRecord RowToRecord(const Stmt& s) {
  AdapterRecord r;
  r.adapter_id = s.Text(0);
  r.owner = s.Text(1);
  r.name = s.Text(2);
  r.version = s.Int(3);
  r.method = s.Text(4);
  r.base_fingerprint = s.Text(5);
  r.sha256 = s.Text(6);
  r.size = s.Int(7);
  r.state = static_cast<AdapterState>(s.Int(8));
  r.visibility = static_cast<AdapterVisibility>(s.Int(9));
  r.created_at = absl::FromUnixMicros(s.Int(10));
  return r;
}

std::string EncodePageToken(const AdapterRecord& last) {
  return absl::WebSafeBase64Escape(absl::StrCat("p1|", last.name, "|", last.version));
}

absl::Status DecodePageToken(const std::string& token, std::string* name, int64_t* version) {
  std::string raw;
  const absl::Status bad = absl::InvalidArgumentError("bad page_token");
  if (!absl::WebSafeBase64Unescape(token, &raw) || raw.rfind("p1|", 0) != 0) return bad;
  const size_t bar = raw.rfind('|');
  if (bar <= 2 || !absl::SimpleAtoi(raw.substr(bar + 1), version)) return bad;
  *name = raw.substr(3, bar - 3);
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<SqliteRegistry>> SqliteRegistry::Open(const std::string& path) {
  ASSIGN_OR_RETURN(sqlite3 * db, sqlite::OpenDatabase(path, "registry", /*create=*/true));
  std::unique_ptr<SqliteRegistry> registry(new SqliteRegistry(db));
  absl::MutexLock lock(&registry->mu_);
  RETURN_IF_ERROR(registry->Migrate());
  return registry;
}

SqliteRegistry::~SqliteRegistry() { sqlite3_close(db_); }

absl::Status SqliteRegistry::Exec(const char* sql) { return sqlite::Exec(db_, sql); }

absl::Status SqliteRegistry::Migrate() {
  Stmt get(db_, "PRAGMA user_version");
  if (get.Step() != SQLITE_ROW) return DbError(db_, "read user_version");
  const int64_t version = get.Int(0);
  if (version == kSchemaVersion) return absl::OkStatus();
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat("the registry has schema version ", version,
                                                      ", newer than this server's ",
                                                      kSchemaVersion));
  }
  if (version < 1) {
    RETURN_IF_ERROR(Exec(R"sql(
    BEGIN IMMEDIATE;
    CREATE TABLE adapters (
      owner TEXT NOT NULL,
      name TEXT NOT NULL,
      version INTEGER NOT NULL,
      adapter_id TEXT NOT NULL,
      method TEXT NOT NULL,
      base_fingerprint TEXT NOT NULL,
      sha256 TEXT NOT NULL,
      size INTEGER NOT NULL,
      state INTEGER NOT NULL,
      visibility INTEGER NOT NULL DEFAULT 0,
      created_at_us INTEGER NOT NULL,
      PRIMARY KEY (owner, name, version)
    );
    CREATE INDEX adapters_by_state ON adapters(state);
    CREATE TABLE adapter_files (
      owner TEXT NOT NULL,
      name TEXT NOT NULL,
      version INTEGER NOT NULL,
      file_name TEXT NOT NULL,
      sha256 TEXT NOT NULL,
      size INTEGER NOT NULL,
      PRIMARY KEY (owner, name, version, file_name),
      FOREIGN KEY (owner, name, version) REFERENCES adapters(owner, name, version)
        ON DELETE CASCADE
    );
    CREATE INDEX adapter_files_by_sha ON adapter_files(sha256);
    PRAGMA user_version = 1;
    COMMIT;
  )sql"));
  }
  // Version 2: tenants and API keys (adapters_store/tenant_registry.h). The
  // tenant every adapter had before authentication existed is "default".
  return Exec(R"sql(
    BEGIN IMMEDIATE;
    CREATE TABLE tenants (
      id TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      role INTEGER NOT NULL,
      max_adapters INTEGER NOT NULL DEFAULT 0,
      max_adapter_bytes INTEGER NOT NULL DEFAULT 0,
      max_concurrent_requests INTEGER NOT NULL DEFAULT 0,
      requests_per_second REAL NOT NULL DEFAULT 0,
      tokens_per_minute INTEGER NOT NULL DEFAULT 0,
      max_concurrent_jobs INTEGER NOT NULL DEFAULT 0,
      created_at_us INTEGER NOT NULL,
      disabled INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE api_keys (
      id TEXT PRIMARY KEY,
      tenant TEXT NOT NULL REFERENCES tenants(id),
      prefix TEXT NOT NULL UNIQUE,
      salt TEXT NOT NULL,
      hash TEXT NOT NULL,
      description TEXT NOT NULL DEFAULT '',
      created_at_us INTEGER NOT NULL,
      revoked_at_us INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX api_keys_by_tenant ON api_keys(tenant);
    INSERT INTO tenants (id, name, role, created_at_us)
      VALUES ('default', 'default', 0, CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER));
    PRAGMA user_version = 2;
    COMMIT;
  )sql");
}

absl::Status SqliteRegistry::LoadFiles(AdapterRecord* record) {
  Stmt s(db_,
         "SELECT file_name, sha256, size FROM adapter_files WHERE owner = ? AND name = ? AND "
         "version = ? ORDER BY file_name");
  if (absl::Status st = s.Prepared(); !st.ok()) return st;
  s.Bind({record->owner, record->name, record->version});
  record->files.clear();
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) {
    record->files.push_back({s.Text(0), s.Text(1), s.Int(2)});
  }
  return rc == SQLITE_DONE ? absl::OkStatus() : DbError(db_, "read files");
}

absl::StatusOr<std::vector<AdapterRecord>> SqliteRegistry::Select(
    const std::string& where_sql, const std::vector<std::string>& args) {
  Stmt s(db_, absl::StrCat("SELECT ", kColumns, " FROM adapters ", where_sql));
  if (absl::Status st = s.Prepared(); !st.ok()) return st;
  std::vector<Arg> bound(args.begin(), args.end());
  s.Bind(bound);
  std::vector<AdapterRecord> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.push_back(RowToRecord(s));
  if (rc != SQLITE_DONE) return DbError(db_, "select");
  for (AdapterRecord& r : out) {
    if (absl::Status st = LoadFiles(&r); !st.ok()) return st;
  }
  return out;
}

absl::StatusOr<AdapterRecord> SqliteRegistry::InsertPending(AdapterRecord record,
                                                            const std::string& new_adapter_id) {
  absl::MutexLock lock(&mu_);
  if (absl::Status st = Exec("BEGIN IMMEDIATE"); !st.ok()) return st;
  auto fail = [this](absl::Status status) {
    Exec("ROLLBACK").IgnoreError();
    return status;
  };
  {
    Stmt s(db_,
           "SELECT COALESCE(MAX(version), 0), "
           "(SELECT adapter_id FROM adapters WHERE owner = ?1 AND name = ?2 AND state != 2 "
           "LIMIT 1) FROM adapters WHERE owner = ?1 AND name = ?2");
    if (absl::Status st = s.Prepared(); !st.ok()) return fail(st);
    s.Bind({record.owner, record.name});
    if (s.Step() != SQLITE_ROW) return fail(DbError(db_, "next version"));
    const int64_t max_version = s.Int(0);
    std::string live_id = s.Text(1);
    record.adapter_id = live_id.empty() ? new_adapter_id : live_id;
    if (record.version == 0) record.version = max_version + 1;
  }
  {
    Stmt s(db_, "SELECT 1 FROM adapters WHERE owner = ? AND name = ? AND version = ?");
    if (absl::Status st = s.Prepared(); !st.ok()) return fail(st);
    s.Bind({record.owner, record.name, record.version});
    if (s.Step() == SQLITE_ROW) {
      return fail(absl::AlreadyExistsError(
          absl::StrCat("adapter ", record.name, "@", record.version, " already exists")));
    }
  }
  record.state = AdapterState::kPending;
  {
    Stmt s(db_, absl::StrCat("INSERT INTO adapters (", kColumns,
                             ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"));
    if (absl::Status st = s.Prepared(); !st.ok()) return fail(st);
    s.Bind({record.adapter_id, record.owner, record.name, record.version, record.method,
            record.base_fingerprint, record.sha256, record.size, static_cast<int64_t>(record.state),
            static_cast<int64_t>(record.visibility), absl::ToUnixMicros(record.created_at)});
    if (absl::Status st = s.Run(); !st.ok()) return fail(st);
  }
  for (const AdapterFile& f : record.files) {
    Stmt s(db_,
           "INSERT INTO adapter_files (owner, name, version, file_name, sha256, size) VALUES "
           "(?, ?, ?, ?, ?, ?)");
    if (absl::Status st = s.Prepared(); !st.ok()) return fail(st);
    s.Bind({record.owner, record.name, record.version, f.name, f.sha256, f.size});
    if (absl::Status st = s.Run(); !st.ok()) return fail(st);
  }
  if (absl::Status st = Exec("COMMIT"); !st.ok()) return fail(st);
  return record;
}

absl::Status SqliteRegistry::MarkReady(const std::string& owner, const std::string& name,
                                       int64_t version) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "UPDATE adapters SET state = 1 WHERE owner = ? AND name = ? AND version = ? AND "
         "state = 0");
  if (absl::Status st = s.Prepared(); !st.ok()) return st;
  s.Bind({owner, name, version});
  if (absl::Status st = s.Run(); !st.ok()) return st;
  if (sqlite3_changes(db_) != 1) {
    return absl::NotFoundError(absl::StrCat("no pending adapter ", name, "@", version));
  }
  return absl::OkStatus();
}

absl::Status SqliteRegistry::AbortPending(const std::string& owner, const std::string& name,
                                          int64_t version) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_, "DELETE FROM adapters WHERE owner = ? AND name = ? AND version = ? AND state = 0");
  if (absl::Status st = s.Prepared(); !st.ok()) return st;
  s.Bind({owner, name, version});
  return s.Run();
}

absl::StatusOr<AdapterRecord> SqliteRegistry::Get(const std::string& owner, const std::string& name,
                                                  int64_t version) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::vector<AdapterRecord>> rows =
      version > 0
          ? Select("WHERE owner = ? AND name = ? AND version = ? AND state = 1",
                   {owner, name, std::to_string(version)})
          : Select("WHERE owner = ? AND name = ? AND state = 1 ORDER BY version DESC LIMIT 1",
                   {owner, name});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    return absl::NotFoundError(absl::StrCat(
        "adapter ", name, version > 0 ? absl::StrCat("@", version) : "", " not found"));
  }
  return std::move(rows->front());
}

absl::StatusOr<ListPage> SqliteRegistry::List(const ListQuery& query) {
  if (query.page_size < 1 || query.page_size > 1000) {
    return absl::InvalidArgumentError("page_size must be in [1, 1000]");
  }
  std::string after_name;
  int64_t after_version = 0;
  if (!query.page_token.empty()) {
    if (absl::Status st = DecodePageToken(query.page_token, &after_name, &after_version);
        !st.ok()) {
      return st;
    }
  }
  absl::MutexLock lock(&mu_);
  std::string sql =
      absl::StrCat("SELECT ", kColumns,
                   " FROM adapters a WHERE owner = ?1 AND state = 1 AND (?2 = '' OR name = ?2) AND "
                   "(?3 = '' OR method = ?3) AND (name > ?4 OR (name = ?4 AND version > ?5))");
  if (query.latest_only) {
    absl::StrAppend(&sql,
                    " AND version = (SELECT MAX(version) FROM adapters b WHERE b.owner = a.owner "
                    "AND b.name = a.name AND b.state = 1)");
  }
  absl::StrAppend(&sql, " ORDER BY name, version LIMIT ?6");
  Stmt s(db_, sql);
  if (absl::Status st = s.Prepared(); !st.ok()) return st;
  s.Bind({query.owner, query.name, query.method, after_name, after_version,
          static_cast<int64_t>(query.page_size) + 1});
  ListPage page;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) page.records.push_back(RowToRecord(s));
  if (rc != SQLITE_DONE) return DbError(db_, "list");
  if (static_cast<int>(page.records.size()) > query.page_size) {
    page.records.pop_back();
    page.next_page_token = EncodePageToken(page.records.back());
  }
  for (AdapterRecord& r : page.records) {
    if (absl::Status st = LoadFiles(&r); !st.ok()) return st;
  }
  return page;
}

absl::StatusOr<std::vector<AdapterRecord>> SqliteRegistry::MarkDeleted(const std::string& owner,
                                                                       const std::string& name,
                                                                       int64_t version) {
  absl::MutexLock lock(&mu_);
  if (absl::Status st = Exec("BEGIN IMMEDIATE"); !st.ok()) return st;
  auto fail = [this](absl::Status status) {
    Exec("ROLLBACK").IgnoreError();
    return status;
  };
  const std::string where = version > 0
                                ? "WHERE owner = ? AND name = ? AND version = ? AND state = 1"
                                : "WHERE owner = ? AND name = ? AND state = 1";
  std::vector<std::string> args = {owner, name};
  if (version > 0) args.push_back(std::to_string(version));
  absl::StatusOr<std::vector<AdapterRecord>> rows = Select(where, args);
  if (!rows.ok()) return fail(rows.status());
  if (rows->empty()) {
    return fail(absl::NotFoundError(absl::StrCat(
        "adapter ", name, version > 0 ? absl::StrCat("@", version) : "", " not found")));
  }
  for (const AdapterRecord& r : *rows) {
    Stmt u(db_, "UPDATE adapters SET state = 2 WHERE owner = ? AND name = ? AND version = ?");
    if (absl::Status st = u.Prepared(); !st.ok()) return fail(st);
    u.Bind({r.owner, r.name, r.version});
    if (absl::Status st = u.Run(); !st.ok()) return fail(st);
    // A tombstone keeps its version number but no longer references blobs.
    Stmt d(db_, "DELETE FROM adapter_files WHERE owner = ? AND name = ? AND version = ?");
    if (absl::Status st = d.Prepared(); !st.ok()) return fail(st);
    d.Bind({r.owner, r.name, r.version});
    if (absl::Status st = d.Run(); !st.ok()) return fail(st);
  }
  if (absl::Status st = Exec("COMMIT"); !st.ok()) return fail(st);
  for (AdapterRecord& r : *rows) r.state = AdapterState::kDeleted;
  return rows;
}

absl::StatusOr<AdapterRecord> SqliteRegistry::GetPublic(const std::string& name, int64_t version) {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::vector<AdapterRecord>> rows =
      version > 0
          ? Select("WHERE visibility = 1 AND name = ? AND version = ? AND state = 1",
                   {name, std::to_string(version)})
          : Select("WHERE visibility = 1 AND name = ? AND state = 1 ORDER BY version DESC LIMIT 1",
                   {name});
  if (!rows.ok()) return rows.status();
  if (rows->empty()) {
    return absl::NotFoundError(absl::StrCat(
        "adapter ", name, version > 0 ? absl::StrCat("@", version) : "", " not found"));
  }
  return std::move(rows->front());
}

absl::Status SqliteRegistry::SetVisibility(const std::string& owner, const std::string& name,
                                           AdapterVisibility visibility) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE"));
  auto fail = [this](absl::Status status) {
    Exec("ROLLBACK").IgnoreError();
    return status;
  };
  if (visibility == AdapterVisibility::kPublic) {
    Stmt s(db_,
           "SELECT 1 FROM adapters WHERE visibility = 1 AND name = ? AND owner != ? AND state = 1 "
           "LIMIT 1");
    if (absl::Status st = s.Prepared(); !st.ok()) return fail(st);
    s.Bind({name, owner});
    if (s.Step() == SQLITE_ROW) {
      return fail(absl::AlreadyExistsError(
          absl::StrCat("another tenant's adapter ", name, " is public already")));
    }
  }
  Stmt u(db_, "UPDATE adapters SET visibility = ? WHERE owner = ? AND name = ? AND state != 2");
  if (absl::Status st = u.Prepared(); !st.ok()) return fail(st);
  u.Bind({static_cast<int64_t>(visibility), owner, name});
  if (absl::Status st = u.Run(); !st.ok()) return fail(st);
  if (sqlite3_changes(db_) == 0) {
    return fail(absl::NotFoundError(absl::StrCat("adapter ", name, " not found")));
  }
  return Exec("COMMIT");
}

absl::StatusOr<StorageUsage> SqliteRegistry::Usage(const std::string& owner) {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "SELECT COALESCE(SUM(state = 1), 0), COALESCE(SUM(size), 0) FROM adapters WHERE "
         "owner = ? AND state IN (0, 1)");
  RETURN_IF_ERROR(s.Prepared());
  s.Bind({owner});
  if (s.Step() != SQLITE_ROW) return DbError(db_, "usage");
  return StorageUsage{s.Int(0), s.Int(1)};
}

absl::StatusOr<std::vector<AdapterRecord>> SqliteRegistry::ListByState(AdapterState state) {
  absl::MutexLock lock(&mu_);
  return Select("WHERE state = ? ORDER BY owner, name, version",
                {std::to_string(static_cast<int>(state))});
}

absl::StatusOr<std::vector<AdapterRecord>> SqliteRegistry::RemoveAllPending() {
  absl::MutexLock lock(&mu_);
  absl::StatusOr<std::vector<AdapterRecord>> rows = Select("WHERE state = 0", {});
  if (!rows.ok()) return rows.status();
  if (absl::Status st = Exec("DELETE FROM adapters WHERE state = 0"); !st.ok()) return st;
  return rows;
}

absl::StatusOr<std::set<std::string>> SqliteRegistry::ReferencedBlobs() {
  absl::MutexLock lock(&mu_);
  Stmt s(db_,
         "SELECT DISTINCT f.sha256 FROM adapter_files f JOIN adapters a USING (owner, name, "
         "version) WHERE a.state IN (0, 1)");
  if (absl::Status st = s.Prepared(); !st.ok()) return st;
  std::set<std::string> out;
  int rc;
  while ((rc = s.Step()) == SQLITE_ROW) out.insert(s.Text(0));
  if (rc != SQLITE_DONE) return DbError(db_, "referenced blobs");
  return out;
}

}  // namespace adapterd
