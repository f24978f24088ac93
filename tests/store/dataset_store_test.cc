// Dataset uploads: checksums, limits, content addressing, deletes and crash
// leftovers, on a real temp directory.

#include "adapters_store/dataset_store.h"

#include "adapters_store/file_util.h"
#include "tests/store/store_test_util.h"

namespace adapterd::testing {
namespace {

struct Fixture {
  Fixture(int64_t max_dataset = 1 << 20, int64_t max_tenant = 1 << 20) {
    registry = *JobRegistry::Open(tmp / "training.db");
    DatasetStoreOptions options;
    options.root = tmp.path();
    options.max_dataset_bytes = max_dataset;
    options.max_tenant_bytes = max_tenant;
    store = *DatasetStore::Open(options, registry.get());
  }

  absl::StatusOr<DatasetRecord> Upload(const std::string& owner, const std::string& data,
                                       size_t chunk = 5) {
    absl::StatusOr<std::string> id = store->BeginUpload(owner, "d", data.size(), Sha256::Hex(data));
    if (!id.ok()) return id.status();
    for (size_t off = 0; off < data.size(); off += chunk) {
      absl::Status s = store->Append(*id, off, absl::string_view(data).substr(off, chunk));
      if (!s.ok()) return s;
    }
    return store->Commit(*id);
  }

  TempDir tmp;
  std::unique_ptr<JobRegistry> registry;
  std::unique_ptr<DatasetStore> store;
};

const std::string kRows = "{\"text\": \"a\"}\n{\"text\": \"b\"}\n";

TEST(DatasetStoreTest, AnUploadIsVerifiedStoredByDigestAndCountsLines) {
  Fixture f;
  absl::StatusOr<DatasetRecord> d = f.Upload("t", kRows);
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->lines, 2);
  EXPECT_EQ(d->size, static_cast<int64_t>(kRows.size()));
  std::string stored;
  ASSERT_TRUE(ReadFile(f.store->PathOf(*d), &stored).ok());
  EXPECT_EQ(stored, kRows);
  EXPECT_EQ(f.store->PathOf(*d), f.tmp / ("datasets/blobs/" + Sha256::Hex(kRows) + ".jsonl"));
  EXPECT_TRUE(FilesUnder(f.tmp / "datasets/uploads").empty());
}

TEST(DatasetStoreTest, BadUploadsAreRefusedAndLeaveNothing) {
  Fixture f(/*max_dataset=*/64, /*max_tenant=*/80);
  // Wrong digest.
  absl::StatusOr<std::string> id =
      f.store->BeginUpload("t", "d", kRows.size(), std::string(64, 'a'));
  ASSERT_TRUE(id.ok());
  ASSERT_TRUE(f.store->Append(*id, 0, kRows).ok());
  absl::StatusOr<DatasetRecord> committed = f.store->Commit(*id);
  EXPECT_EQ(committed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(committed.status().message().find("checksum mismatch"), std::string::npos);
  // Missing bytes, a wrong offset, bytes past the declared size.
  id = f.store->BeginUpload("t", "d", kRows.size(), Sha256::Hex(kRows));
  ASSERT_TRUE(f.store->Append(*id, 0, kRows.substr(0, 3)).ok());
  EXPECT_EQ(f.store->Commit(*id).status().code(), absl::StatusCode::kFailedPrecondition);
  id = f.store->BeginUpload("t", "d", kRows.size(), Sha256::Hex(kRows));
  EXPECT_EQ(f.store->Append(*id, 1, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.store->Commit(*id).status().code(), absl::StatusCode::kNotFound);  // Aborted.
  id = f.store->BeginUpload("t", "d", 2, Sha256::Hex("ab"));
  EXPECT_EQ(f.store->Append(*id, 0, "abc").code(), absl::StatusCode::kInvalidArgument);
  // Limits and names.
  EXPECT_EQ(f.store->BeginUpload("t", "d", 65, Sha256::Hex("x")).status().code(),
            absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(f.store->BeginUpload("t", "../d", 5, Sha256::Hex("x")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(f.store->BeginUpload("t", "d", 0, Sha256::Hex("")).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(FilesUnder(f.tmp / "datasets/uploads").empty());
  EXPECT_TRUE(FilesUnder(f.tmp / "datasets/blobs").empty());
  // The tenant limit: 28 + 29 bytes fit in 80, 30 more do not; another tenant has its own.
  ASSERT_TRUE(f.Upload("t", kRows).ok());
  ASSERT_TRUE(f.Upload("t", kRows + " ").ok());
  absl::StatusOr<DatasetRecord> over = f.Upload("t", kRows + "  ");
  EXPECT_EQ(over.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(over.status().message().find("dataset quota"), std::string::npos);
  EXPECT_TRUE(f.Upload("u", kRows).ok());
}

TEST(DatasetStoreTest, IdenticalUploadsShareBytesUntilTheLastIsDeleted) {
  Fixture f;
  DatasetRecord a = *f.Upload("t", kRows);
  DatasetRecord b = *f.Upload("u", kRows);
  EXPECT_NE(a.id, b.id);
  EXPECT_EQ(f.store->PathOf(a), f.store->PathOf(b));
  ASSERT_TRUE(f.store->Delete(a.id).ok());
  EXPECT_EQ(f.store->Delete(a.id).code(), absl::StatusCode::kNotFound);
  std::string data;
  EXPECT_TRUE(ReadFile(f.store->PathOf(b), &data).ok());
  ASSERT_TRUE(f.store->Delete(b.id).ok());
  EXPECT_FALSE(ReadFile(f.store->PathOf(b), &data).ok());
}

TEST(DatasetStoreTest, ADatasetAnActiveJobUsesCannotBeDeleted) {
  Fixture f;
  DatasetRecord d = *f.Upload("t", kRows);
  JobRecord job;
  job.owner = "t";
  job.dataset_id = d.id;
  bool existed = false;
  JobRecord inserted = *f.registry->InsertJob(job, &existed);
  EXPECT_EQ(f.store->Delete(d.id).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(*f.registry->CancelIfQueued(inserted.id, absl::Now()));
  EXPECT_TRUE(f.store->Delete(d.id).ok());
}

TEST(DatasetStoreTest, OpenRemovesInterruptedUploadsAndUnreferencedFiles) {
  TempDir tmp;
  std::string kept_path;
  {
    Fixture f;
    DatasetRecord kept = *f.Upload("t", kRows);
    // A crash after the rename into blobs/ but before the record, and one mid-upload.
    WriteFiles(f.tmp / "datasets/blobs", {{Sha256::Hex("orphan") + ".jsonl", "orphan"}});
    ASSERT_TRUE(f.store->BeginUpload("t", "d", 10, Sha256::Hex("0123456789")).ok());
    std::filesystem::copy(f.tmp.path(), tmp / "copy", std::filesystem::copy_options::recursive);
    kept_path = "datasets/blobs/" + kept.sha256 + ".jsonl";
  }
  auto registry = JobRegistry::Open(tmp / "copy/training.db");
  ASSERT_TRUE(registry.ok());
  DatasetStoreOptions options;
  options.root = tmp / "copy";
  ASSERT_TRUE(DatasetStore::Open(options, registry->get()).ok());
  EXPECT_EQ(FilesUnder(tmp / "copy/datasets"), std::vector<std::string>{kept_path.substr(9)});
}

}  // namespace
}  // namespace adapterd::testing
