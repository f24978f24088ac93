#pragma once

// The embedded Registry: one SQLite database file (WAL journal,
// synchronous=FULL, so a committed transaction survives kill -9 and power
// loss), schema versioned through PRAGMA user_version. Thread-safe: one
// connection, serialised by a mutex.

#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "adapters_store/registry.h"

struct sqlite3;

namespace adapterd {

class SqliteRegistry final : public Registry {
 public:
  static constexpr int kSchemaVersion = 2;

  // Opens or creates the database at `path`. FAILED_PRECONDITION if it was
  // written by a newer schema; INTERNAL if it cannot be opened.
  static absl::StatusOr<std::unique_ptr<SqliteRegistry>> Open(const std::string& path);
  ~SqliteRegistry() override;

  absl::StatusOr<AdapterRecord> InsertPending(AdapterRecord record,
                                              const std::string& new_adapter_id) override;
  absl::Status MarkReady(const std::string& owner, const std::string& name,
                         int64_t version) override;
  absl::Status AbortPending(const std::string& owner, const std::string& name,
                            int64_t version) override;
  absl::StatusOr<AdapterRecord> Get(const std::string& owner, const std::string& name,
                                    int64_t version) override;
  absl::StatusOr<ListPage> List(const ListQuery& query) override;
  absl::StatusOr<std::vector<AdapterRecord>> MarkDeleted(const std::string& owner,
                                                         const std::string& name,
                                                         int64_t version) override;
  absl::StatusOr<AdapterRecord> GetPublic(const std::string& name, int64_t version) override;
  absl::Status SetVisibility(const std::string& owner, const std::string& name,
                             AdapterVisibility visibility) override;
  absl::StatusOr<StorageUsage> Usage(const std::string& owner) override;
  absl::StatusOr<std::vector<AdapterRecord>> ListByState(AdapterState state) override;
  absl::StatusOr<std::vector<AdapterRecord>> RemoveAllPending() override;
  absl::StatusOr<std::set<std::string>> ReferencedBlobs() override;

 private:
  explicit SqliteRegistry(sqlite3* db) : db_(db) {}

  absl::Status Exec(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status LoadFiles(AdapterRecord* record) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::vector<AdapterRecord>> Select(const std::string& where_sql,
                                                    const std::vector<std::string>& args)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  absl::Mutex mu_;  // Serialises every use of db_.
  sqlite3* const db_ ABSL_PT_GUARDED_BY(mu_);
};

}  // namespace adapterd
