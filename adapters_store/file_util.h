#pragma once

// Small POSIX file helpers for the store: durable writes (fsync of files and
// directories), errno → Status, and named crash points for crash tests.
// Thread-compatible free functions.

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace adapterd {

// A failed storage call: RESOURCE_EXHAUSTED for ENOSPC/EDQUOT ("storage full"),
// INTERNAL "storage error: <what>: <strerror>" otherwise.
absl::Status StorageError(absl::string_view what, int err);

// Creates `dir` and its parents (mode 0755). OK if it exists.
absl::Status MakeDirs(const std::string& dir);

// fsync(2) of an open descriptor / of a directory, so that a rename or a new
// entry in it is durable. A failure is final (never retried: fsyncgate).
absl::Status FsyncFd(int fd, absl::string_view what);
absl::Status FsyncDir(const std::string& dir);

// Writes all of `data` to `fd`, retrying short writes and EINTR.
absl::Status WriteAll(int fd, absl::string_view data, absl::string_view what);

// Removes a file or directory tree; OK if it does not exist.
absl::Status RemoveAll(const std::string& path);

// Writes `data` to `path` atomically and durably: temp file in the same
// directory → fsync → rename → fsync(dir).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view data);

// Reads a whole regular file (O_NOFOLLOW).
absl::Status ReadFile(const std::string& path, std::string* out);

// 32 random hex characters (128 bits from /dev/urandom-seeded generator).
std::string RandomHexId();

// If the environment variable ADAPTERD_CRASH_POINT equals `name`, the process
// ends at once with _exit(137), as if killed: the crash-consistency tests name
// the points (reliability.md §7), e.g. "upload.after_blobs".
void CrashPoint(const char* name);

}  // namespace adapterd
