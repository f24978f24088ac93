#pragma once

// A thin RAII wrapper over a prepared SQLite statement, shared by the
// registry's SQLite tables. Internal to adapters_store. Not thread-safe; used
// under the owning registry's lock.

#include <sqlite3.h>

#include <cstdint>
#include <string>
#include <variant>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace adapterd {
namespace sqlite {

using Arg = std::variant<std::string, int64_t, double>;

inline absl::Status DbError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(absl::StrCat("registry error: ", what, ": ", sqlite3_errmsg(db)));
}

// Runs statements that return no rows. INTERNAL "registry error: ... in SQL".
inline absl::Status Exec(sqlite3* db, const char* sql) {
  char* error = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &error) != SQLITE_OK) {
    absl::Status status =
        absl::InternalError(absl::StrCat("registry error: ", error ? error : "?", " in ", sql));
    sqlite3_free(error);
    return status;
  }
  return absl::OkStatus();
}

// Opens the registry database at `path` the way every registry table needs it:
// serialized connections (FULLMUTEX), a 5 s busy timeout, WAL, synchronous=FULL
// and foreign keys on; `create` makes the file if it is missing. The caller
// owns the handle (sqlite3_close). INTERNAL "cannot open the `what` PATH: ...".
inline absl::StatusOr<sqlite3*> OpenDatabase(const std::string& path, absl::string_view what,
                                             bool create) {
  sqlite3* db = nullptr;
  const int flags = SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX | (create ? SQLITE_OPEN_CREATE : 0);
  if (sqlite3_open_v2(path.c_str(), &db, flags, nullptr) != SQLITE_OK) {
    absl::Status status = absl::InternalError(absl::StrCat(
        "cannot open the ", what, " ", path, ": ", db ? sqlite3_errmsg(db) : "out of memory"));
    sqlite3_close(db);
    return status;
  }
  sqlite3_busy_timeout(db, 5000);
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL", "PRAGMA foreign_keys=ON"}) {
    if (absl::Status status = Exec(db, pragma); !status.ok()) {
      sqlite3_close(db);
      return status;
    }
  }
  return db;
}

// A prepared statement, finalized on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, absl::string_view sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt_, nullptr);
  }
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  absl::Status Prepared() const {
    return rc_ == SQLITE_OK ? absl::OkStatus() : DbError(db_, "prepare");
  }
  void Bind(const std::vector<Arg>& args) {
    for (size_t i = 0; i < args.size(); ++i) {
      const int index = static_cast<int>(i) + 1;
      if (const auto* s = std::get_if<std::string>(&args[i])) {
        sqlite3_bind_text(stmt_, index, s->data(), static_cast<int>(s->size()), SQLITE_TRANSIENT);
      } else if (const auto* d = std::get_if<double>(&args[i])) {
        sqlite3_bind_double(stmt_, index, *d);
      } else {
        sqlite3_bind_int64(stmt_, index, std::get<int64_t>(args[i]));
      }
    }
  }
  int Step() { return sqlite3_step(stmt_); }
  absl::Status Run() {
    const int rc = Step();
    return rc == SQLITE_DONE || rc == SQLITE_ROW ? absl::OkStatus() : DbError(db_, "step");
  }
  std::string Text(int col) const {
    const unsigned char* t = sqlite3_column_text(stmt_, col);
    return t == nullptr ? std::string()
                        : std::string(reinterpret_cast<const char*>(t),
                                      static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) const { return sqlite3_column_double(stmt_, col); }

 private:
  sqlite3* const db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_ = SQLITE_ERROR;
};

}  // namespace sqlite
}  // namespace adapterd
