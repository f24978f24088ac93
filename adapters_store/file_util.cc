#include "adapters_store/file_util.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <random>

#include "absl/strings/str_cat.h"

namespace adapterd {

absl::Status StorageError(absl::string_view what, int err) {
  if (err == ENOSPC || err == EDQUOT) {
    return absl::ResourceExhaustedError(absl::StrCat("storage full: ", what));
  }
  return absl::InternalError(absl::StrCat("storage error: ", what, ": ", std::strerror(err)));
}

absl::Status MakeDirs(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return StorageError(absl::StrCat("create ", dir), ec.value());
  return absl::OkStatus();
}

absl::Status FsyncFd(int fd, absl::string_view what) {
  if (::fsync(fd) != 0) return StorageError(absl::StrCat("fsync ", what), errno);
  return absl::OkStatus();
}

absl::Status FsyncDir(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return StorageError(absl::StrCat("open ", dir), errno);
  absl::Status status = FsyncFd(fd, dir);
  ::close(fd);
  return status;
}

absl::Status WriteAll(int fd, absl::string_view data, absl::string_view what) {
  while (!data.empty()) {
    const ssize_t n = ::write(fd, data.data(), data.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return StorageError(absl::StrCat("write ", what), errno);
    }
    data.remove_prefix(static_cast<size_t>(n));
  }
  return absl::OkStatus();
}

absl::Status RemoveAll(const std::string& path) {
  std::error_code ec;
  std::filesystem::remove_all(path, ec);
  if (ec) return StorageError(absl::StrCat("remove ", path), ec.value());
  return absl::OkStatus();
}

absl::Status WriteFileAtomically(const std::string& path, absl::string_view data) {
  const std::string temp = absl::StrCat(path, ".", RandomHexId(), ".tmp");
  const int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) return StorageError(absl::StrCat("create ", temp), errno);
  absl::Status status = WriteAll(fd, data, temp);
  if (status.ok()) status = FsyncFd(fd, temp);
  ::close(fd);
  if (status.ok() && ::rename(temp.c_str(), path.c_str()) != 0) {
    status = StorageError(absl::StrCat("rename ", temp), errno);
  }
  if (!status.ok()) {
    ::unlink(temp.c_str());
    return status;
  }
  return FsyncDir(std::filesystem::path(path).parent_path().string());
}

absl::Status ReadFile(const std::string& path, std::string* out) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return absl::NotFoundError(absl::StrCat("no file ", path));
    return StorageError(absl::StrCat("open ", path), errno);
  }
  out->clear();
  char buffer[1 << 16];
  while (true) {
    const ssize_t n = ::read(fd, buffer, sizeof(buffer));
    if (n < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return StorageError(absl::StrCat("read ", path), err);
    }
    if (n == 0) break;
    out->append(buffer, static_cast<size_t>(n));
  }
  ::close(fd);
  return absl::OkStatus();
}

std::string RandomHexId() {
  thread_local std::mt19937_64 rng([] {
    std::random_device device;
    return (static_cast<uint64_t>(device()) << 32) ^ device();
  }());
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  for (int word = 0; word < 2; ++word) {
    uint64_t v = rng();
    for (int i = 0; i < 16; ++i, v >>= 4) out.push_back(kHex[v & 0xf]);
  }
  return out;
}

void CrashPoint(const char* name) {
  static const char* const kPoint = std::getenv("ADAPTERD_CRASH_POINT");
  if (kPoint != nullptr && std::strcmp(kPoint, name) == 0) _exit(137);
}

}  // namespace adapterd
