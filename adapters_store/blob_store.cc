#include "adapters_store/blob_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "adapters_store/file_util.h"
#include "common/sha256.h"

namespace adapterd {

absl::StatusOr<FileDigest> DigestFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no file ", path));
    return StorageError(absl::StrCat("open ", path), errno);
  }
  Sha256 sha;
  FileDigest digest;
  std::string buffer(1 << 20, '\0');
  while (true) {
    const ssize_t n = ::read(fd, buffer.data(), buffer.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return StorageError(absl::StrCat("read ", path), err);
    }
    if (n == 0) break;
    sha.Update(absl::string_view(buffer.data(), static_cast<size_t>(n)));
    digest.size += n;
  }
  ::close(fd);
  digest.sha256 = sha.HexDigest();
  return digest;
}

absl::StatusOr<std::unique_ptr<BlobStore>> BlobStore::Open(const std::string& dir) {
  absl::Status status = MakeDirs(dir);
  if (!status.ok()) return status;
  std::unique_ptr<BlobStore> store(new BlobStore(dir));
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) return StorageError(absl::StrCat("open ", dir), errno);
  std::vector<std::string> temps;
  while (dirent* entry = ::readdir(d)) {
    if (absl::EndsWith(entry->d_name, ".tmp")) temps.emplace_back(entry->d_name);
  }
  ::closedir(d);
  for (const std::string& name : temps) ::unlink(absl::StrCat(dir, "/", name).c_str());
  if (!temps.empty()) {
    status = FsyncDir(dir);
    if (!status.ok()) return status;
  }
  return store;
}

std::string BlobStore::PathOf(absl::string_view sha256) const {
  return absl::StrCat(dir_, "/", sha256);
}

bool BlobStore::Contains(absl::string_view sha256) const {
  struct stat st;
  return Sha256::IsHexDigest(sha256) && ::lstat(PathOf(sha256).c_str(), &st) == 0 &&
         S_ISREG(st.st_mode);
}

absl::StatusOr<std::string> BlobStore::Put(absl::string_view data) {
  const std::string sha = Sha256::Hex(data);
  if (Contains(sha)) return sha;
  const std::string temp = absl::StrCat(dir_, "/", RandomHexId(), ".tmp");
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd < 0) return StorageError(absl::StrCat("create ", temp), errno);
  absl::Status status = WriteAll(fd, data, temp);
  if (status.ok()) status = FsyncFd(fd, temp);
  ::close(fd);
  if (status.ok()) status = Adopt(temp, sha);
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return sha;
}

absl::Status BlobStore::Adopt(const std::string& file, const std::string& sha256) {
  if (!Sha256::IsHexDigest(sha256)) return absl::InvalidArgumentError("not a sha256 digest");
  const std::string target = PathOf(sha256);
  ::chmod(file.c_str(), 0444);
  if (Contains(sha256)) {
    ::unlink(file.c_str());
  } else if (::rename(file.c_str(), target.c_str()) != 0) {
    return StorageError(absl::StrCat("rename into ", target), errno);
  }
  return FsyncDir(dir_);
}

absl::StatusOr<std::string> BlobStore::Read(absl::string_view sha256) const {
  if (!Sha256::IsHexDigest(sha256)) return absl::InvalidArgumentError("not a sha256 digest");
  std::string data;
  absl::Status status = ReadFile(PathOf(sha256), &data);
  if (absl::IsNotFound(status)) return absl::NotFoundError(absl::StrCat("no blob ", sha256));
  if (!status.ok()) return status;
  if (Sha256::Hex(data) != sha256) {
    return absl::DataLossError(absl::StrCat("blob ", sha256, " fails its checksum"));
  }
  return data;
}

absl::Status BlobStore::Verify(absl::string_view sha256, int64_t expected_size) const {
  if (!Sha256::IsHexDigest(sha256)) return absl::InvalidArgumentError("not a sha256 digest");
  absl::StatusOr<FileDigest> digest = DigestFile(PathOf(sha256));
  if (absl::IsNotFound(digest.status())) {
    return absl::NotFoundError(absl::StrCat("no blob ", sha256));
  }
  if (!digest.ok()) return digest.status();
  if (digest->sha256 != sha256 || (expected_size >= 0 && digest->size != expected_size)) {
    return absl::DataLossError(absl::StrCat("blob ", sha256, " fails its checksum"));
  }
  return absl::OkStatus();
}

absl::Status BlobStore::Remove(absl::string_view sha256) {
  if (!Sha256::IsHexDigest(sha256)) return absl::InvalidArgumentError("not a sha256 digest");
  if (::unlink(PathOf(sha256).c_str()) != 0) {
    if (errno == ENOENT) return absl::OkStatus();
    return StorageError(absl::StrCat("remove blob ", sha256), errno);
  }
  return FsyncDir(dir_);
}

absl::StatusOr<std::vector<std::string>> BlobStore::List() const {
  DIR* d = ::opendir(dir_.c_str());
  if (d == nullptr) return StorageError(absl::StrCat("open ", dir_), errno);
  std::vector<std::string> out;
  while (dirent* entry = ::readdir(d)) {
    if (Sha256::IsHexDigest(entry->d_name)) out.emplace_back(entry->d_name);
  }
  ::closedir(d);
  return out;
}

}  // namespace adapterd
