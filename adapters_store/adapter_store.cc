#include "adapters_store/adapter_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <optional>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "adapters_store/file_util.h"
#include "adapters_store/sqlite_registry.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace adapterd {
namespace {

constexpr int64_t kCopyChunk = 1 << 20;

absl::Status ValidateOwner(const std::string& owner) {
  if (!ValidateAdapterName(owner).ok()) return absl::InvalidArgumentError("bad tenant id");
  return absl::OkStatus();
}

// realpath(3); nullopt if it fails (errno set).
std::optional<std::string> RealPath(const std::string& path) {
  char buffer[PATH_MAX];
  if (::realpath(path.c_str(), buffer) == nullptr) return std::nullopt;
  return std::string(buffer);
}

bool IsUnder(const std::string& path, const std::string& root) {
  if (root == "/") return true;
  return path == root || (path.size() > root.size() && path.compare(0, root.size(), root) == 0 &&
                          path[root.size()] == '/');
}

// Creates `dir/file` for writing; `file` may be "<sub>/<name>"
// (ValidateAdapterFileName allows one level), whose directory is made first.
int CreateUnder(const std::string& dir, const std::string& file) {
  const size_t slash = file.find('/');
  if (slash != std::string::npos && !MakeDirs(absl::StrCat(dir, "/", file.substr(0, slash))).ok()) {
    return -1;
  }
  return ::open(absl::StrCat(dir, "/", file).c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC,
                0644);
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  std::string data;
  RETURN_IF_ERROR(ReadFile(from, &data));
  const int fd = ::open(to.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (fd < 0) return StorageError(absl::StrCat("create ", to), errno);
  absl::Status status = WriteAll(fd, data, to);
  if (status.ok()) status = FsyncFd(fd, to);
  ::close(fd);
  return status;
}

}  // namespace

struct AdapterStore::Upload {
  struct File {
    int fd = -1;
    int64_t written = 0;
    Sha256 sha;
  };

  ~Upload() {
    for (auto& [name, file] : files) {
      if (file.fd >= 0) ::close(file.fd);
    }
  }

  UploadSpec spec;
  std::string id;
  std::string dir;
  absl::Mutex mu;  // Guards the fields below: one append or commit at a time.
  std::map<std::string, File> files ABSL_GUARDED_BY(mu);
  absl::Time last_active ABSL_GUARDED_BY(mu) = absl::Now();
};

AdapterStore::AdapterStore(StoreOptions options, std::unique_ptr<BlobStore> blobs,
                           std::unique_ptr<Registry> registry)
    : options_(std::move(options)),
      blobs_(std::move(blobs)),
      registry_(std::move(registry)),
      uploads_dir_(absl::StrCat(options_.root, "/uploads")),
      versions_dir_(absl::StrCat(options_.root, "/adapters")) {}

AdapterStore::~AdapterStore() = default;

absl::StatusOr<std::unique_ptr<AdapterStore>> AdapterStore::Open(StoreOptions options,
                                                                 OpenReport* report) {
  if (options.root.empty()) return absl::InvalidArgumentError("the store needs a root directory");
  if (!options.validator) return absl::InvalidArgumentError("the store needs a validator");
  RETURN_IF_ERROR(MakeDirs(options.root));
  std::optional<std::string> root = RealPath(options.root);
  if (!root) return StorageError(absl::StrCat("resolve ", options.root), errno);
  options.root = *root;
  std::vector<std::string> roots;
  for (const std::string& allowed : options.allowed_roots) {
    std::optional<std::string> real = RealPath(allowed);
    if (!real) {
      return absl::InvalidArgumentError(
          absl::StrCat("allowed adapter root ", allowed, " does not exist"));
    }
    roots.push_back(*real);
  }
  options.allowed_roots = roots;
  ASSIGN_OR_RETURN(std::unique_ptr<BlobStore> blobs, BlobStore::Open(options.root + "/blobs"));
  ASSIGN_OR_RETURN(std::unique_ptr<SqliteRegistry> registry,
                   SqliteRegistry::Open(options.root + "/registry.db"));
  std::unique_ptr<AdapterStore> store(
      new AdapterStore(std::move(options), std::move(blobs), std::move(registry)));
  OpenReport local;
  RETURN_IF_ERROR(store->Recover(report != nullptr ? report : &local));
  return store;
}

std::string AdapterStore::VersionDir(const std::string& adapter_id, int64_t version) const {
  return absl::StrCat(versions_dir_, "/", adapter_id, "/", version);
}

bool AdapterStore::VersionDirComplete(const AdapterRecord& record) const {
  const std::string dir = VersionDir(record.adapter_id, record.version);
  for (const AdapterFile& f : record.files) {
    struct stat st;
    if (::lstat(absl::StrCat(dir, "/", f.name).c_str(), &st) != 0 || !S_ISREG(st.st_mode) ||
        st.st_size != f.size) {
      return false;
    }
  }
  return true;
}

absl::Status AdapterStore::BuildVersionDir(const AdapterRecord& record) {
  const std::string parent = absl::StrCat(versions_dir_, "/", record.adapter_id);
  const std::string dir = VersionDir(record.adapter_id, record.version);
  const std::string temp = dir + ".tmp";
  RETURN_IF_ERROR(RemoveAll(temp));
  RETURN_IF_ERROR(MakeDirs(temp));
  for (const AdapterFile& f : record.files) {
    const std::string blob = blobs_->PathOf(f.sha256);
    const std::string target = absl::StrCat(temp, "/", f.name);
    if (const size_t slash = f.name.find('/'); slash != std::string::npos) {
      RETURN_IF_ERROR(MakeDirs(absl::StrCat(temp, "/", f.name.substr(0, slash))));
    }
    if (::link(blob.c_str(), target.c_str()) != 0) {
      if (errno == ENOENT) {
        return absl::DataLossError(
            absl::StrCat("blob of ", record.name, "@", record.version, "/", f.name, " is missing"));
      }
      RETURN_IF_ERROR(CopyFile(blob, target));
    }
  }
  RETURN_IF_ERROR(FsyncDir(temp));
  RETURN_IF_ERROR(RemoveAll(dir));
  if (::rename(temp.c_str(), dir.c_str()) != 0) {
    return StorageError(absl::StrCat("rename ", temp), errno);
  }
  RETURN_IF_ERROR(FsyncDir(parent));
  return FsyncDir(versions_dir_);
}

absl::Status AdapterStore::Recover(OpenReport* report) {
  // Uploads do not survive a restart: the client retries from the start.
  if (DIR* d = ::opendir(uploads_dir_.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ++report->uploads_removed;
    }
    ::closedir(d);
  }
  RETURN_IF_ERROR(RemoveAll(uploads_dir_));
  RETURN_IF_ERROR(MakeDirs(uploads_dir_));
  RETURN_IF_ERROR(MakeDirs(versions_dir_));

  ASSIGN_OR_RETURN(std::vector<AdapterRecord> pending, registry_->RemoveAllPending());
  report->pending_removed = static_cast<int>(pending.size());

  ASSIGN_OR_RETURN(std::vector<AdapterRecord> ready, registry_->ListByState(AdapterState::kReady));
  std::set<std::string> live;  // "<adapter_id>/<version>"
  for (const AdapterRecord& r : ready) {
    live.insert(absl::StrCat(r.adapter_id, "/", r.version));
    if (!VersionDirComplete(r)) {
      absl::Status built = BuildVersionDir(r);
      if (built.ok()) {
        ++report->dirs_rebuilt;
      } else {
        report->damaged.push_back(absl::StrCat(r.name, "@", r.version, ": ", built.message()));
      }
    }
    if (options_.verify_on_open) {
      absl::Status verified = VerifyFiles(r);
      if (!verified.ok()) {
        report->damaged.push_back(absl::StrCat(r.name, "@", r.version, ": ", verified.message()));
      }
    }
  }

  // Version directories that no READY record owns: interrupted commits,
  // deletes, and their temp directories.
  if (DIR* d = ::opendir(versions_dir_.c_str())) {
    std::vector<std::string> ids;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') ids.emplace_back(e->d_name);
    }
    ::closedir(d);
    for (const std::string& id : ids) {
      const std::string id_dir = absl::StrCat(versions_dir_, "/", id);
      std::vector<std::string> versions;
      if (DIR* vd = ::opendir(id_dir.c_str())) {
        while (dirent* e = ::readdir(vd)) {
          if (e->d_name[0] != '.') versions.emplace_back(e->d_name);
        }
        ::closedir(vd);
      }
      int kept = 0;
      for (const std::string& v : versions) {
        if (live.count(absl::StrCat(id, "/", v)) > 0) {
          ++kept;
          continue;
        }
        RETURN_IF_ERROR(RemoveAll(absl::StrCat(id_dir, "/", v)));
        ++report->dirs_removed;
      }
      if (kept == 0) RETURN_IF_ERROR(RemoveAll(id_dir));
    }
  }
  RETURN_IF_ERROR(FsyncDir(versions_dir_));
  ASSIGN_OR_RETURN(report->blobs_removed, CollectGarbage());
  return absl::OkStatus();
}

absl::StatusOr<int> AdapterStore::CollectGarbage() {
  absl::MutexLock gc(&gc_mu_);
  ASSIGN_OR_RETURN(std::set<std::string> referenced, registry_->ReferencedBlobs());
  ASSIGN_OR_RETURN(std::vector<std::string> present, blobs_->List());
  int removed = 0;
  for (const std::string& sha : present) {
    if (referenced.count(sha) > 0) continue;
    RETURN_IF_ERROR(blobs_->Remove(sha));
    ++removed;
  }
  return removed;
}

void AdapterStore::DropExpiredUploads() {
  std::vector<std::shared_ptr<Upload>> expired;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time now = absl::Now();
    for (auto it = uploads_.begin(); it != uploads_.end();) {
      Upload& u = *it->second;
      bool idle = false;
      if (u.mu.TryLock()) {
        idle = now - u.last_active > options_.upload_ttl;
        u.mu.Unlock();
      }
      if (idle) {
        expired.push_back(it->second);
        it = uploads_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& u : expired) RemoveAll(u->dir).IgnoreError();
}

absl::StatusOr<std::string> AdapterStore::BeginUpload(const UploadSpec& spec) {
  RETURN_IF_ERROR(ValidateOwner(spec.owner));
  RETURN_IF_ERROR(ValidateAdapterName(spec.name));
  if (spec.version < 0) return absl::InvalidArgumentError("version must not be negative");
  if (spec.files.empty()) return absl::InvalidArgumentError("an upload needs at least one file");
  if (!spec.sha256.empty() && !Sha256::IsHexDigest(spec.sha256)) {
    return absl::InvalidArgumentError("sha256 must be 64 lowercase hex characters");
  }
  std::set<std::string> names;
  int64_t total = 0;
  for (const UploadFileSpec& f : spec.files) {
    RETURN_IF_ERROR(ValidateAdapterFileName(f.name));
    if (!names.insert(f.name).second) {
      return absl::InvalidArgumentError(absl::StrCat("file ", f.name, " is declared twice"));
    }
    if (!Sha256::IsHexDigest(f.sha256)) {
      return absl::InvalidArgumentError(
          absl::StrCat("file ", f.name, ": sha256 must be 64 lowercase hex characters"));
    }
    if (f.size < 0) return absl::InvalidArgumentError(absl::StrCat("file ", f.name, ": size < 0"));
    if (absl::EndsWith(f.name, ".json") && f.size > options_.max_config_bytes) {
      return absl::ResourceExhaustedError(
          absl::StrCat(f.name, " is ", f.size, " bytes; the limit is ", options_.max_config_bytes));
    }
    if (f.size > options_.max_adapter_bytes - total) {
      return absl::ResourceExhaustedError(absl::StrCat("the adapter exceeds the size limit of ",
                                                       options_.max_adapter_bytes, " bytes"));
    }
    total += f.size;
  }
  if (std::none_of(names.begin(), names.end(),
                   [](const std::string& n) { return IsTopLevelConfigFile(n); })) {
    return absl::InvalidArgumentError(
        "an adapter needs adapter_config.json (or adapter_fusion_config.json)");
  }
  RETURN_IF_ERROR(CheckQuota(spec.owner, spec.quota, total));
  if (spec.version > 0) {
    absl::StatusOr<AdapterRecord> existing = registry_->Get(spec.owner, spec.name, spec.version);
    if (existing.ok()) {
      return absl::AlreadyExistsError(
          absl::StrCat("adapter ", spec.name, "@", spec.version, " already exists"));
    }
  }
  DropExpiredUploads();
  auto upload = std::make_shared<Upload>();
  upload->spec = spec;
  upload->id = RandomHexId();
  upload->dir = absl::StrCat(uploads_dir_, "/", upload->id);
  {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(uploads_.size()) >= options_.max_open_uploads) {
      return absl::ResourceExhaustedError(
          absl::StrCat("too many uploads in progress (limit ", options_.max_open_uploads, ")"));
    }
    uploads_[upload->id] = upload;
  }
  absl::Status made = MakeDirs(upload->dir);
  if (!made.ok()) {
    AbortUpload(upload->id);
    return made;
  }
  return upload->id;
}

std::shared_ptr<AdapterStore::Upload> AdapterStore::FindUpload(const std::string& upload_id) {
  absl::MutexLock lock(&mu_);
  auto it = uploads_.find(upload_id);
  return it == uploads_.end() ? nullptr : it->second;
}

std::shared_ptr<AdapterStore::Upload> AdapterStore::TakeUpload(const std::string& upload_id) {
  absl::MutexLock lock(&mu_);
  auto it = uploads_.find(upload_id);
  if (it == uploads_.end()) return nullptr;
  std::shared_ptr<Upload> upload = std::move(it->second);
  uploads_.erase(it);
  return upload;
}

absl::Status AdapterStore::AppendUpload(const std::string& upload_id, const std::string& file,
                                        int64_t offset, absl::string_view data) {
  std::shared_ptr<Upload> upload = FindUpload(upload_id);
  if (upload == nullptr) return absl::NotFoundError("unknown or expired upload");
  absl::Status status;
  {
    absl::MutexLock lock(&upload->mu);
    upload->last_active = absl::Now();
    const UploadFileSpec* spec = nullptr;
    for (const UploadFileSpec& f : upload->spec.files) {
      if (f.name == file) spec = &f;
    }
    if (spec == nullptr) {
      status = absl::InvalidArgumentError(absl::StrCat("file ", file, " was not declared"));
    } else {
      Upload::File& f = upload->files[file];
      if (offset != f.written) {
        status = absl::InvalidArgumentError(
            absl::StrCat("write offset ", offset, " for ", file, ", expected ", f.written));
      } else if (static_cast<int64_t>(data.size()) > spec->size - f.written) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "file ", file, " is longer than its declared size of ", spec->size, " bytes"));
      } else {
        if (f.fd < 0) {
          f.fd = CreateUnder(upload->dir, file);
          if (f.fd < 0) status = StorageError(absl::StrCat("create ", file), errno);
        }
        if (status.ok()) status = WriteAll(f.fd, data, file);
        if (status.ok()) {
          f.sha.Update(data);
          f.written += static_cast<int64_t>(data.size());
        }
      }
    }
  }
  if (!status.ok()) AbortUpload(upload_id);
  return status;
}

void AdapterStore::AbortUpload(const std::string& upload_id) {
  std::shared_ptr<Upload> upload = TakeUpload(upload_id);
  if (upload == nullptr) return;
  absl::MutexLock lock(&upload->mu);
  for (auto& [name, file] : upload->files) {
    if (file.fd >= 0) ::close(file.fd);
    file.fd = -1;
  }
  RemoveAll(upload->dir).IgnoreError();
}

absl::StatusOr<AdapterRecord> AdapterStore::CommitUpload(const std::string& upload_id) {
  std::shared_ptr<Upload> upload = TakeUpload(upload_id);
  if (upload == nullptr) return absl::NotFoundError("unknown or expired upload");
  absl::StatusOr<AdapterRecord> result;
  {
    absl::MutexLock lock(&upload->mu);
    absl::Status status;
    std::vector<AdapterFile> files;
    for (const UploadFileSpec& spec : upload->spec.files) {
      Upload::File& f = upload->files[spec.name];
      if (f.written != spec.size) {
        status = absl::FailedPreconditionError(absl::StrCat(
            "upload incomplete: ", spec.name, " has ", f.written, " of ", spec.size, " bytes"));
        break;
      }
      if (f.fd < 0) {  // An empty file never saw an append.
        f.fd = CreateUnder(upload->dir, spec.name);
        if (f.fd < 0) {
          status = StorageError(absl::StrCat("create ", spec.name), errno);
          break;
        }
      }
      const std::string digest = f.sha.HexDigest();
      if (digest != spec.sha256) {
        status = absl::InvalidArgumentError(absl::StrCat(
            "checksum mismatch for ", spec.name, ": got ", digest, ", expected ", spec.sha256));
        break;
      }
      status = FsyncFd(f.fd, spec.name);
      ::close(f.fd);
      f.fd = -1;
      if (!status.ok()) break;
      files.push_back({spec.name, spec.sha256, spec.size});
    }
    if (status.ok() && !upload->spec.sha256.empty() &&
        ManifestDigest(files) != upload->spec.sha256) {
      status = absl::InvalidArgumentError("checksum mismatch for the adapter (manifest sha256)");
    }
    result = status.ok() ? Publish(*upload) : absl::StatusOr<AdapterRecord>(status);
    for (auto& [name, file] : upload->files) {
      if (file.fd >= 0) ::close(file.fd);
      file.fd = -1;
    }
  }
  RemoveAll(upload->dir).IgnoreError();
  return result;
}

absl::StatusOr<AdapterRecord> AdapterStore::Publish(Upload& upload) {
  const UploadSpec& spec = upload.spec;
  absl::StatusOr<AdapterMeta> meta = options_.validator(upload.dir);
  if (!meta.ok()) return meta.status();
  if (!spec.method_hint.empty() && meta->method != spec.method_hint) {
    return absl::InvalidArgumentError(absl::StrCat("the adapter is ", meta->method,
                                                   ", not the declared method ", spec.method_hint));
  }
  AdapterRecord record;
  record.owner = spec.owner;
  record.name = spec.name;
  record.version = spec.version;
  record.method = meta->method;
  record.base_fingerprint = meta->base_fingerprint;
  for (const UploadFileSpec& f : spec.files) record.files.push_back({f.name, f.sha256, f.size});
  std::sort(record.files.begin(), record.files.end(),
            [](const AdapterFile& a, const AdapterFile& b) { return a.name < b.name; });
  for (const AdapterFile& f : record.files) record.size += f.size;
  record.sha256 = ManifestDigest(record.files);
  record.created_at = absl::Now();

  absl::Status status;
  {
    absl::ReaderMutexLock gc(&gc_mu_);
    absl::StatusOr<AdapterRecord> inserted;
    {
      absl::MutexLock quota(&quota_mu_);
      RETURN_IF_ERROR(CheckQuota(record.owner, spec.quota, record.size));
      inserted = registry_->InsertPending(record, RandomHexId());
    }
    if (!inserted.ok()) return inserted.status();
    record = *std::move(inserted);
    CrashPoint("commit.after_pending");
    for (const AdapterFile& f : record.files) {
      status = blobs_->Adopt(absl::StrCat(upload.dir, "/", f.name), f.sha256);
      if (!status.ok()) break;
    }
    CrashPoint("commit.after_blobs");
    if (status.ok()) status = BuildVersionDir(record);
    CrashPoint("commit.after_version_dir");
    if (status.ok()) status = registry_->MarkReady(record.owner, record.name, record.version);
    CrashPoint("commit.after_ready");
    if (!status.ok()) {
      registry_->AbortPending(record.owner, record.name, record.version).IgnoreError();
      RemoveAll(VersionDir(record.adapter_id, record.version)).IgnoreError();
    }
  }
  if (!status.ok()) {
    CollectGarbage().IgnoreError();
    return status;
  }
  record.state = AdapterState::kReady;
  return record;
}

absl::StatusOr<AdapterRecord> AdapterStore::RegisterFromPath(
    const std::string& owner, const std::string& name, int64_t version, const std::string& path,
    const std::string& method_hint, const StorageQuota& quota) {
  if (options_.allowed_roots.empty()) {
    return absl::FailedPreconditionError(
        "registration from a server path is disabled (start adapterd with "
        "--allowed-adapter-root)");
  }
  RETURN_IF_ERROR(ValidateOwner(owner));
  RETURN_IF_ERROR(ValidateAdapterName(name));
  if (path.empty() || path[0] != '/' || path.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError("path must be an absolute server path");
  }
  const absl::Status outside =
      absl::PermissionDeniedError("path is outside the allowed adapter roots");
  const std::string lexical = std::filesystem::path(path).lexically_normal().string();
  bool lexically_under = false;
  for (const std::string& root : options_.allowed_roots) {
    lexically_under = lexically_under || IsUnder(lexical, root);
  }
  // Roots are stored resolved; a configured root that is itself reached
  // through a symlink is matched after resolution below.
  std::optional<std::string> real = RealPath(path);
  if (!real) {
    if (!lexically_under) return outside;
    return absl::NotFoundError("path not found");
  }
  std::string root_of;
  for (const std::string& root : options_.allowed_roots) {
    if (IsUnder(*real, root)) root_of = root;
  }
  if (root_of.empty()) return outside;
  struct stat st;
  if (::stat(real->c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError("path is not a directory");
  }

  UploadSpec spec;
  spec.owner = owner;
  spec.quota = quota;
  spec.name = name;
  spec.version = version;
  spec.method_hint = method_hint;
  std::vector<std::string> sources;
  RETURN_IF_ERROR(CollectAdapterFiles(*real, &root_of, spec, sources));
  bool has_weights = false, has_pickle = false;
  for (const UploadFileSpec& f : spec.files) has_weights |= !IsTopLevelConfigFile(f.name);
  if (DIR* d = ::opendir(real->c_str())) {
    while (dirent* e = ::readdir(d)) has_pickle |= IsPickleFileName(e->d_name);
    ::closedir(d);
  }
  if (!has_weights && has_pickle) {
    return absl::InvalidArgumentError(
        "pickle/TorchScript weight files (.bin, .pt, ...) are not accepted; use safetensors");
  }
  return CopyAndCommit(spec, sources);
}

absl::StatusOr<AdapterRecord> AdapterStore::CopyAndCommit(const UploadSpec& spec,
                                                          const std::vector<std::string>& sources) {
  ASSIGN_OR_RETURN(std::string upload_id, BeginUpload(spec));
  for (size_t i = 0; i < spec.files.size(); ++i) {
    const int fd = ::open(sources[i].c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) {
      AbortUpload(upload_id);
      return StorageError(absl::StrCat("open ", sources[i]), errno);
    }
    std::string buffer(kCopyChunk, '\0');
    int64_t offset = 0;
    absl::Status status;
    while (status.ok()) {
      const ssize_t n = ::read(fd, buffer.data(), buffer.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) status = StorageError(absl::StrCat("read ", sources[i]), errno);
      if (n <= 0) break;
      // A file that grew since it was hashed fails here; one that changed fails the checksum.
      status = AppendUpload(upload_id, spec.files[i].name, offset,
                            absl::string_view(buffer.data(), static_cast<size_t>(n)));
      offset += n;
    }
    ::close(fd);
    if (!status.ok()) {
      AbortUpload(upload_id);
      return status;
    }
  }
  return CommitUpload(upload_id);
}

absl::StatusOr<AdapterRecord> AdapterStore::PublishDirectory(const std::string& owner,
                                                             const std::string& name,
                                                             const std::string& dir,
                                                             const std::string& method_hint,
                                                             const StorageQuota& quota) {
  RETURN_IF_ERROR(ValidateOwner(owner));
  RETURN_IF_ERROR(ValidateAdapterName(name));
  UploadSpec spec;
  spec.owner = owner;
  spec.quota = quota;
  spec.name = name;
  spec.method_hint = method_hint;
  std::vector<std::string> sources;
  RETURN_IF_ERROR(CollectAdapterFiles(dir, nullptr, spec, sources));
  return CopyAndCommit(spec, sources);
}

absl::Status AdapterStore::CollectAdapterFiles(const std::string& dir, const std::string* root,
                                               UploadSpec& spec,
                                               std::vector<std::string>& sources) {
  const absl::Status outside =
      absl::PermissionDeniedError("path is outside the allowed adapter roots");
  std::function<absl::Status(const std::string&, const std::string&, int)> scan =
      [&](const std::string& path, const std::string& prefix, int depth) -> absl::Status {
    DIR* d = ::opendir(path.c_str());
    if (d == nullptr) return StorageError(absl::StrCat("open ", path), errno);
    std::vector<std::string> entries;
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') entries.emplace_back(e->d_name);
    }
    ::closedir(d);
    std::sort(entries.begin(), entries.end());
    for (const std::string& entry : entries) {
      std::string full = absl::StrCat(path, "/", entry);
      const std::string file = prefix + entry;
      const bool subdir_name = depth == 0 && ValidateAdapterName(entry).ok();
      const bool file_name = ValidateAdapterFileName(file).ok();
      if (!subdir_name && !file_name) continue;
      struct stat st;
      if (::lstat(full.c_str(), &st) != 0) return StorageError(absl::StrCat("stat ", full), errno);
      if (root != nullptr && S_ISLNK(st.st_mode)) {
        // Followed, but only to a place under the root.
        std::optional<std::string> resolved = RealPath(full);
        if (!resolved || !IsUnder(*resolved, *root)) return outside;
        full = *resolved;
        if (::stat(full.c_str(), &st) != 0) return StorageError(absl::StrCat("stat ", full), errno);
      }
      if (S_ISDIR(st.st_mode) && subdir_name) {
        RETURN_IF_ERROR(scan(full, file + "/", depth + 1));
      } else if (S_ISREG(st.st_mode) && file_name) {
        ASSIGN_OR_RETURN(FileDigest digest, DigestFile(full));
        spec.files.push_back({file, digest.size, digest.sha256});
        sources.push_back(full);
      }
    }
    return absl::OkStatus();
  };
  return scan(dir, "", 0);
}

absl::Status AdapterStore::CheckQuota(const std::string& owner, const StorageQuota& quota,
                                      int64_t bytes) {
  if (quota.max_adapters <= 0 && quota.max_bytes <= 0) return absl::OkStatus();
  ASSIGN_OR_RETURN(StorageUsage usage, registry_->Usage(owner));
  if (quota.max_adapters > 0 && usage.adapters + 1 > quota.max_adapters) {
    return absl::ResourceExhaustedError(
        absl::StrCat("storage quota: the tenant stores ", usage.adapters, " of at most ",
                     quota.max_adapters, " adapter versions; delete some first"));
  }
  if (quota.max_bytes > 0 && bytes > quota.max_bytes - usage.bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("storage quota: the tenant stores ", usage.bytes, " bytes; ", bytes,
                     " more would exceed its limit of ", quota.max_bytes, " bytes"));
  }
  return absl::OkStatus();
}

absl::StatusOr<AdapterRecord> AdapterStore::Lookup(const std::string& owner,
                                                   const AdapterRef& ref) {
  absl::StatusOr<AdapterRecord> own = registry_->Get(owner, ref.name, ref.version);
  if (!absl::IsNotFound(own.status())) return own;
  return registry_->GetPublic(ref.name, ref.version);
}

absl::StatusOr<AdapterRecord> AdapterStore::Get(const std::string& owner, absl::string_view ref) {
  ASSIGN_OR_RETURN(AdapterRef parsed, ParseAdapterRef(ref));
  return Lookup(owner, parsed);
}

absl::Status AdapterStore::SetVisibility(const std::string& owner, const std::string& name,
                                         AdapterVisibility visibility) {
  RETURN_IF_ERROR(ValidateAdapterName(name));
  return registry_->SetVisibility(owner, name, visibility);
}

absl::StatusOr<StorageUsage> AdapterStore::Usage(const std::string& owner) {
  return registry_->Usage(owner);
}

absl::StatusOr<ListPage> AdapterStore::List(const ListQuery& query) {
  if (!query.name.empty()) RETURN_IF_ERROR(ValidateAdapterName(query.name));
  return registry_->List(query);
}

absl::StatusOr<std::vector<AdapterRecord>> AdapterStore::Delete(const std::string& owner,
                                                                const std::string& name,
                                                                int64_t version) {
  RETURN_IF_ERROR(ValidateAdapterName(name));
  if (version < 0) return absl::InvalidArgumentError("version must not be negative");
  ASSIGN_OR_RETURN(std::vector<AdapterRecord> deleted,
                   registry_->MarkDeleted(owner, name, version));
  CrashPoint("delete.after_commit");
  std::vector<VersionKey> remove_now;
  std::vector<DeleteListener> listeners;
  {
    absl::MutexLock lock(&mu_);
    listeners = listeners_;
    for (const AdapterRecord& r : deleted) {
      VersionKey key(r.adapter_id, r.version);
      if (pins_.count(key) > 0) {
        deferred_.insert(key);
      } else {
        remove_now.push_back(key);
      }
    }
  }
  for (const VersionKey& key : remove_now)
    RemoveAll(VersionDir(key.first, key.second)).IgnoreError();
  CrashPoint("delete.after_unlink");
  // The delete is durable already; a failed collection is retried on the next open.
  if (!remove_now.empty()) CollectGarbage().IgnoreError();
  for (const AdapterRecord& r : deleted) {
    for (const DeleteListener& listener : listeners) listener(r);
  }
  return deleted;
}

absl::StatusOr<ResolvedAdapter> AdapterStore::Resolve(const std::string& owner,
                                                      absl::string_view ref) {
  ASSIGN_OR_RETURN(AdapterRef parsed, ParseAdapterRef(ref));
  ASSIGN_OR_RETURN(AdapterRecord record, Lookup(owner, parsed));
  const VersionKey key(record.adapter_id, record.version);
  {
    absl::MutexLock lock(&mu_);
    ++pins_[key];
  }
  ResolvedAdapter out;
  out.pin = std::shared_ptr<const void>(static_cast<const void*>(this),
                                        [this, key](const void*) { Unpin(key); });
  // Pinned first, then checked again: a delete that committed before the
  // check is seen here; one after it sees the pin and defers the removal.
  ASSIGN_OR_RETURN(AdapterRecord again, registry_->Get(record.owner, record.name, record.version));
  out.record = std::move(again);
  out.dir = VersionDir(record.adapter_id, record.version);
  if (!VersionDirComplete(out.record)) {
    return absl::InternalError(
        absl::StrCat("storage error: files of ", record.name, "@", record.version, " are missing"));
  }
  return out;
}

void AdapterStore::Unpin(const VersionKey& key) {
  bool remove = false;
  {
    absl::MutexLock lock(&mu_);
    auto it = pins_.find(key);
    if (it == pins_.end()) return;
    if (--it->second > 0) return;
    pins_.erase(it);
    remove = deferred_.erase(key) > 0;
  }
  if (remove) RemoveVersionFiles(key);
}

void AdapterStore::RemoveVersionFiles(const VersionKey& key) {
  RemoveAll(VersionDir(key.first, key.second)).IgnoreError();
  CollectGarbage().IgnoreError();
}

void AdapterStore::AddDeleteListener(DeleteListener listener) {
  absl::MutexLock lock(&mu_);
  listeners_.push_back(std::move(listener));
}

absl::Status AdapterStore::VerifyFiles(const AdapterRecord& record) const {
  for (const AdapterFile& f : record.files) {
    absl::Status status = blobs_->Verify(f.sha256, f.size);
    if (!status.ok()) {
      return absl::DataLossError(absl::StrCat(record.name, "@", record.version, "/", f.name,
                                              " fails its checksum (", status.message(), ")"));
    }
  }
  return absl::OkStatus();
}

StoreStats AdapterStore::Stats() const {
  absl::MutexLock lock(&mu_);
  StoreStats stats;
  stats.open_uploads = static_cast<int64_t>(uploads_.size());
  stats.pinned_versions = static_cast<int64_t>(pins_.size());
  return stats;
}

}  // namespace adapterd
