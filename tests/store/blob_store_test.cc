#include "adapters_store/blob_store.h"

#include <fstream>

#include "common/sha256.h"
#include "gtest/gtest.h"
#include "tests/store/store_test_util.h"

namespace adapterd {
namespace {

using testing::TempDir;

TEST(BlobStoreTest, PutStoresContentUnderItsDigestAndReadVerifiesIt) {
  TempDir tmp;
  auto store = BlobStore::Open(tmp / "blobs");
  ASSERT_TRUE(store.ok()) << store.status();
  absl::StatusOr<std::string> sha = (*store)->Put("hello");
  ASSERT_TRUE(sha.ok());
  EXPECT_EQ(*sha, Sha256::Hex("hello"));
  EXPECT_TRUE((*store)->Contains(*sha));
  EXPECT_EQ(*(*store)->Read(*sha), "hello");
  EXPECT_TRUE((*store)->Verify(*sha, 5).ok());
  // The same content again is the same blob.
  EXPECT_EQ(*(*store)->Put("hello"), *sha);
  EXPECT_EQ((*store)->List()->size(), 1u);
}

TEST(BlobStoreTest, ABlobWhoseBytesChangedFailsWithDataLoss) {
  TempDir tmp;
  auto store = *BlobStore::Open(tmp / "blobs");
  const std::string sha = *store->Put("original content");
  const std::string path = store->PathOf(sha);
  ::chmod(path.c_str(), 0644);
  std::ofstream(path, std::ios::binary) << "originaX content";
  EXPECT_EQ(store->Read(sha).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(store->Verify(sha).code(), absl::StatusCode::kDataLoss);
  // Negative control: an intact blob verifies.
  const std::string other = *store->Put("intact");
  EXPECT_TRUE(store->Verify(other).ok());
}

TEST(BlobStoreTest, MissingBlobsAreNotFoundAndBadDigestsInvalid) {
  TempDir tmp;
  auto store = *BlobStore::Open(tmp / "blobs");
  EXPECT_EQ(store->Read(Sha256::Hex("absent")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->Read("../../etc/passwd").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(store->Remove(Sha256::Hex("absent")).ok());
}

TEST(BlobStoreTest, OpenRemovesTempFilesACrashLeftBehind) {
  TempDir tmp;
  std::string sha;
  {
    auto store = *BlobStore::Open(tmp / "blobs");
    sha = *store->Put("kept");
  }
  std::ofstream(tmp / "blobs/deadbeef.tmp") << "half written";
  auto store = *BlobStore::Open(tmp / "blobs");
  EXPECT_FALSE(std::filesystem::exists(tmp / "blobs/deadbeef.tmp"));
  EXPECT_TRUE(store->Contains(sha));
}

TEST(BlobStoreTest, AdoptMovesAFileInOrDropsItWhenTheBlobExists) {
  TempDir tmp;
  auto store = *BlobStore::Open(tmp / "blobs");
  std::ofstream(tmp / "f1") << "data";
  ASSERT_TRUE(store->Adopt(tmp / "f1", Sha256::Hex("data")).ok());
  EXPECT_FALSE(std::filesystem::exists(tmp / "f1"));
  std::ofstream(tmp / "f2") << "data";
  ASSERT_TRUE(store->Adopt(tmp / "f2", Sha256::Hex("data")).ok());
  EXPECT_FALSE(std::filesystem::exists(tmp / "f2"));
  EXPECT_EQ(*store->Read(Sha256::Hex("data")), "data");
}

}  // namespace
}  // namespace adapterd
