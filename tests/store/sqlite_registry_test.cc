#include "adapters_store/sqlite_registry.h"

#include <sqlite3.h>

#include "common/sha256.h"
#include "gtest/gtest.h"
#include "tests/store/store_test_util.h"

namespace adapterd {
namespace {

using testing::TempDir;

AdapterRecord Rec(const std::string& owner, const std::string& name, int64_t version = 0,
                  const std::string& method = "lora") {
  AdapterRecord r;
  r.owner = owner;
  r.name = name;
  r.version = version;
  r.method = method;
  r.files = {{"adapter_config.json", Sha256::Hex(name + std::to_string(version)), 10}};
  r.sha256 = ManifestDigest(r.files);
  r.size = 10;
  r.created_at = absl::FromUnixSeconds(1700000000);
  return r;
}

AdapterRecord InsertReady(Registry& reg, AdapterRecord r, const std::string& id = "id1") {
  absl::StatusOr<AdapterRecord> inserted = reg.InsertPending(std::move(r), id);
  EXPECT_TRUE(inserted.ok()) << inserted.status();
  EXPECT_TRUE(reg.MarkReady(inserted->owner, inserted->name, inserted->version).ok());
  return *inserted;
}

TEST(SqliteRegistryTest, VersionsCountUpAndTheNamePointsToTheLatestReady) {
  TempDir tmp;
  auto reg = *SqliteRegistry::Open(tmp / "r.db");
  EXPECT_EQ(InsertReady(*reg, Rec("t", "a")).version, 1);
  EXPECT_EQ(InsertReady(*reg, Rec("t", "a")).version, 2);
  EXPECT_EQ(reg->Get("t", "a", 0)->version, 2);
  EXPECT_EQ(reg->Get("t", "a", 1)->version, 1);
  EXPECT_EQ(reg->Get("t", "a", 1)->files.size(), 1u);
  // A PENDING version is invisible.
  auto pending = reg->InsertPending(Rec("t", "a"), "x");
  ASSERT_TRUE(pending.ok());
  EXPECT_EQ(pending->version, 3);
  EXPECT_EQ(reg->Get("t", "a", 0)->version, 2);
  EXPECT_EQ(reg->Get("t", "a", 3).status().code(), absl::StatusCode::kNotFound);
}

TEST(SqliteRegistryTest, DuplicateVersionIsAlreadyExistsEvenAfterDelete) {
  TempDir tmp;
  auto reg = *SqliteRegistry::Open(tmp / "r.db");
  InsertReady(*reg, Rec("t", "a", 5));
  EXPECT_EQ(reg->InsertPending(Rec("t", "a", 5), "x").status().code(),
            absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(reg->MarkDeleted("t", "a", 5).ok());
  EXPECT_EQ(reg->InsertPending(Rec("t", "a", 5), "x").status().code(),
            absl::StatusCode::kAlreadyExists);
  // Numbers are never reused: the next is 6.
  EXPECT_EQ(InsertReady(*reg, Rec("t", "a"), "new").version, 6);
}

TEST(SqliteRegistryTest, NamesLiveInTheirOwnersNamespace) {
  TempDir tmp;
  auto reg = *SqliteRegistry::Open(tmp / "r.db");
  InsertReady(*reg, Rec("alice", "a"));
  EXPECT_EQ(reg->Get("bob", "a", 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(reg->MarkDeleted("bob", "a", 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(InsertReady(*reg, Rec("bob", "a")).version, 1);
  ListQuery q;
  q.owner = "alice";
  EXPECT_EQ(reg->List(q)->records.size(), 1u);
}

TEST(SqliteRegistryTest, AdapterIdIsKeptAcrossVersionsAndNewAfterAFullDelete) {
  TempDir tmp;
  auto reg = *SqliteRegistry::Open(tmp / "r.db");
  const std::string id1 = InsertReady(*reg, Rec("t", "a"), "first").adapter_id;
  EXPECT_EQ(id1, "first");
  EXPECT_EQ(InsertReady(*reg, Rec("t", "a"), "second").adapter_id, "first");
  ASSERT_EQ(reg->MarkDeleted("t", "a", 0)->size(), 2u);
  EXPECT_EQ(InsertReady(*reg, Rec("t", "a"), "third").adapter_id, "third");
}

TEST(SqliteRegistryTest, ListPagesByNameAndVersionAndFiltersByMethod) {
  TempDir tmp;
  auto reg = *SqliteRegistry::Open(tmp / "r.db");
  for (int i = 0; i < 5; ++i)
    InsertReady(*reg, Rec("t", "n" + std::to_string(i), 0, i % 2 ? "prefix_tuning" : "lora"));
  InsertReady(*reg, Rec("t", "n0"));
  ListQuery q;
  q.owner = "t";
  q.page_size = 2;
  std::vector<std::string> seen;
  for (int pages = 0; pages < 10; ++pages) {
    ListPage page = *reg->List(q);
    for (const auto& r : page.records) seen.push_back(r.name + "@" + std::to_string(r.version));
    if (page.next_page_token.empty()) break;
    q.page_token = page.next_page_token;
  }
  EXPECT_EQ(seen, (std::vector<std::string>{"n0@1", "n0@2", "n1@1", "n2@1", "n3@1", "n4@1"}));
  q = ListQuery{.owner = "t", .method = "prefix_tuning"};
  EXPECT_EQ(reg->List(q)->records.size(), 2u);
  q = ListQuery{.owner = "t", .latest_only = true};
  EXPECT_EQ(reg->List(q)->records.size(), 5u);
  q = ListQuery{.owner = "t", .page_token = "garbage!"};
  EXPECT_EQ(reg->List(q).status().code(), absl::StatusCode::kInvalidArgument);
  q = ListQuery{.owner = "t", .page_size = 0};
  EXPECT_EQ(reg->List(q).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SqliteRegistryTest, RecordsSurviveReopenAndPendingOnesCanBeSwept) {
  TempDir tmp;
  {
    auto reg = *SqliteRegistry::Open(tmp / "r.db");
    InsertReady(*reg, Rec("t", "a"));
    ASSERT_TRUE(reg->InsertPending(Rec("t", "b"), "x").ok());
  }
  auto reg = *SqliteRegistry::Open(tmp / "r.db");
  EXPECT_TRUE(reg->Get("t", "a", 1).ok());
  EXPECT_EQ(reg->ReferencedBlobs()->size(), 2u);
  EXPECT_EQ(reg->RemoveAllPending()->size(), 1u);
  EXPECT_EQ(reg->ReferencedBlobs()->size(), 1u);
  EXPECT_TRUE(reg->ListByState(AdapterState::kPending)->empty());
}

TEST(SqliteRegistryTest, UsesWalAndRefusesANewerSchema) {
  TempDir tmp;
  { ASSERT_TRUE(SqliteRegistry::Open(tmp / "r.db").ok()); }
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open((tmp / "r.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  sqlite3_prepare_v2(db, "PRAGMA journal_mode", -1, &st, nullptr);
  ASSERT_EQ(sqlite3_step(st), SQLITE_ROW);
  EXPECT_STREQ(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)), "wal");
  sqlite3_finalize(st);
  sqlite3_exec(db, "PRAGMA user_version = 99", nullptr, nullptr, nullptr);
  sqlite3_close(db);
  EXPECT_EQ(SqliteRegistry::Open(tmp / "r.db").status().code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace adapterd
