#pragma once

// Content-addressed files: blob `<sha256>` lives at DIR/<sha256>, read-only,
// and its bytes always hash to its name. New blobs are written to a temp file
// in DIR, fsynced, renamed into place and the directory fsynced, so a crash
// leaves either the whole blob or only a "*.tmp" file that Open removes.
// Thread-safe: concurrent writers of the same content both succeed.

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adapterd {

class BlobStore {
 public:
  // Creates DIR if needed and removes temp files left by a crash.
  static absl::StatusOr<std::unique_ptr<BlobStore>> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }
  // Where blob `sha256` lives (whether or not it exists).
  std::string PathOf(absl::string_view sha256) const;
  bool Contains(absl::string_view sha256) const;

  // Writes `data` as a blob and returns its sha256.
  absl::StatusOr<std::string> Put(absl::string_view data);

  // Moves `file` (already fsynced, on the same file system, whose content the
  // caller has hashed to `sha256`) into the store; when the blob already
  // exists the file is removed instead. The directory is fsynced before OK.
  absl::Status Adopt(const std::string& file, const std::string& sha256);

  // Reads blob `sha256` and checks its content: NOT_FOUND if absent,
  // DATA_LOSS "blob <sha> fails its checksum" if the bytes changed.
  absl::StatusOr<std::string> Read(absl::string_view sha256) const;
  // Streams blob `sha256` through SHA-256 and checks the hash and, if
  // `expected_size` >= 0, the size. Same codes as Read.
  absl::Status Verify(absl::string_view sha256, int64_t expected_size = -1) const;

  // Removes blob `sha256` (OK if absent) and fsyncs the directory.
  absl::Status Remove(absl::string_view sha256);
  // The sha256 of every blob present.
  absl::StatusOr<std::vector<std::string>> List() const;

 private:
  explicit BlobStore(std::string dir) : dir_(std::move(dir)) {}

  const std::string dir_;
};

// Hashes the regular file at `path` (opened with O_NOFOLLOW): its sha256 and size.
struct FileDigest {
  std::string sha256;
  int64_t size = 0;
};
absl::StatusOr<FileDigest> DigestFile(const std::string& path);

}  // namespace adapterd
