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
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace adapterd {
namespace sqlite {

using Arg = std::variant<std::string, int64_t, double>;

inline absl::Status DbError(sqlite3* db, absl::string_view what) {
  return absl::InternalError(absl::StrCat("registry error: ", what, ": ", sqlite3_errmsg(db)));
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
