#include "adapters_store/dataset_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <set>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "adapters_store/adapter_ref.h"
#include "adapters_store/file_util.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace adapterd {

struct DatasetStore::Upload {
  ~Upload() {
    if (fd >= 0) ::close(fd);
  }
  std::string id;
  std::string owner;
  std::string name;
  int64_t size = 0;
  std::string sha256;
  std::string path;
  absl::Mutex mu;  // Guards the fields below: one append or commit at a time.
  int fd ABSL_GUARDED_BY(mu) = -1;
  int64_t written ABSL_GUARDED_BY(mu) = 0;
  int64_t lines ABSL_GUARDED_BY(mu) = 0;
  Sha256 sha ABSL_GUARDED_BY(mu);
};

DatasetStore::DatasetStore(DatasetStoreOptions options, JobRegistry* registry)
    : options_(std::move(options)),
      registry_(registry),
      blobs_dir_(absl::StrCat(options_.root, "/datasets/blobs")),
      uploads_dir_(absl::StrCat(options_.root, "/datasets/uploads")) {}

DatasetStore::~DatasetStore() {
  absl::MutexLock lock(&mu_);
  for (auto& [id, upload] : uploads_) RemoveAll(upload->path).IgnoreError();
}

absl::StatusOr<std::unique_ptr<DatasetStore>> DatasetStore::Open(DatasetStoreOptions options,
                                                                 JobRegistry* registry) {
  if (options.root.empty()) return absl::InvalidArgumentError("the dataset store needs a root");
  std::unique_ptr<DatasetStore> store(new DatasetStore(std::move(options), registry));
  RETURN_IF_ERROR(store->Recover());
  return store;
}

absl::Status DatasetStore::Recover() {
  RETURN_IF_ERROR(RemoveAll(uploads_dir_));
  RETURN_IF_ERROR(MakeDirs(uploads_dir_));
  RETURN_IF_ERROR(MakeDirs(blobs_dir_));
  // A crash between the rename into blobs/ and the record insert leaves a
  // blob nobody references.
  std::vector<std::string> names;
  if (DIR* d = ::opendir(blobs_dir_.c_str())) {
    while (dirent* e = ::readdir(d)) {
      if (e->d_name[0] != '.') names.emplace_back(e->d_name);
    }
    ::closedir(d);
  }
  for (const std::string& name : names) {
    const std::string sha = name.substr(0, name.find('.'));
    bool referenced = false;
    if (absl::EndsWith(name, ".jsonl") && Sha256::IsHexDigest(sha)) {
      ASSIGN_OR_RETURN(const int64_t n, registry_->CountDatasetsWithSha(sha));
      referenced = n > 0;
    }
    if (!referenced) RETURN_IF_ERROR(RemoveAll(absl::StrCat(blobs_dir_, "/", name)));
  }
  return absl::OkStatus();
}

std::string DatasetStore::PathOf(const DatasetRecord& dataset) const {
  return absl::StrCat(blobs_dir_, "/", dataset.sha256, ".jsonl");
}

absl::StatusOr<std::string> DatasetStore::BeginUpload(const std::string& owner,
                                                      const std::string& name, int64_t size,
                                                      const std::string& sha256) {
  if (absl::Status s = ValidateAdapterName(name); !s.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset name: ", absl::StripPrefix(s.message(), "adapter name ")));
  }
  if (!Sha256::IsHexDigest(sha256)) {
    return absl::InvalidArgumentError("sha256 must be 64 lowercase hex characters");
  }
  if (size <= 0) return absl::InvalidArgumentError("a dataset must not be empty");
  if (size > options_.max_dataset_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the dataset is ", size, " bytes; the limit is ", options_.max_dataset_bytes));
  }
  if (options_.max_tenant_bytes > 0) {
    ASSIGN_OR_RETURN(const int64_t used, registry_->DatasetBytes(owner));
    if (size > options_.max_tenant_bytes - used) {
      return absl::ResourceExhaustedError(
          absl::StrCat("dataset quota: the tenant stores ", used, " bytes of datasets; ", size,
                       " more would exceed its limit of ", options_.max_tenant_bytes,
                       " bytes; delete some first"));
    }
  }
  auto upload = std::make_shared<Upload>();
  upload->id = RandomHexId();
  upload->owner = owner;
  upload->name = name;
  upload->size = size;
  upload->sha256 = sha256;
  upload->path = absl::StrCat(uploads_dir_, "/", upload->id);
  {
    absl::MutexLock lock(&mu_);
    if (static_cast<int>(uploads_.size()) >= options_.max_open_uploads) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "too many dataset uploads in progress (limit ", options_.max_open_uploads, ")"));
    }
    uploads_[upload->id] = upload;
  }
  absl::MutexLock lock(&upload->mu);
  upload->fd = ::open(upload->path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (upload->fd < 0) {
    absl::Status status = StorageError(absl::StrCat("create ", upload->path), errno);
    absl::MutexLock map_lock(&mu_);
    uploads_.erase(upload->id);
    return status;
  }
  return upload->id;
}

std::shared_ptr<DatasetStore::Upload> DatasetStore::Take(const std::string& upload_id) {
  absl::MutexLock lock(&mu_);
  auto it = uploads_.find(upload_id);
  if (it == uploads_.end()) return nullptr;
  std::shared_ptr<Upload> upload = std::move(it->second);
  uploads_.erase(it);
  return upload;
}

absl::Status DatasetStore::Append(const std::string& upload_id, int64_t offset,
                                  absl::string_view data) {
  std::shared_ptr<Upload> upload;
  {
    absl::MutexLock lock(&mu_);
    auto it = uploads_.find(upload_id);
    if (it != uploads_.end()) upload = it->second;
  }
  if (upload == nullptr) return absl::NotFoundError("unknown dataset upload");
  absl::Status status;
  {
    absl::MutexLock lock(&upload->mu);
    if (offset != upload->written) {
      status = absl::InvalidArgumentError(
          absl::StrCat("write offset ", offset, ", expected ", upload->written));
    } else if (static_cast<int64_t>(data.size()) > upload->size - upload->written) {
      status = absl::InvalidArgumentError(
          absl::StrCat("the dataset is longer than its declared size of ", upload->size, " bytes"));
    } else {
      status = WriteAll(upload->fd, data, "dataset upload");
      if (status.ok()) {
        upload->sha.Update(data);
        upload->written += static_cast<int64_t>(data.size());
        upload->lines += std::count(data.begin(), data.end(), '\n');
      }
    }
  }
  if (!status.ok()) Abort(upload_id);
  return status;
}

void DatasetStore::Abort(const std::string& upload_id) {
  std::shared_ptr<Upload> upload = Take(upload_id);
  if (upload == nullptr) return;
  absl::MutexLock lock(&upload->mu);
  if (upload->fd >= 0) ::close(upload->fd);
  upload->fd = -1;
  ::unlink(upload->path.c_str());
}

absl::StatusOr<DatasetRecord> DatasetStore::Commit(const std::string& upload_id) {
  std::shared_ptr<Upload> upload = Take(upload_id);
  if (upload == nullptr) return absl::NotFoundError("unknown dataset upload");
  absl::MutexLock lock(&upload->mu);
  auto fail = [&](absl::Status status) {
    if (upload->fd >= 0) ::close(upload->fd);
    upload->fd = -1;
    ::unlink(upload->path.c_str());
    return status;
  };
  if (upload->written != upload->size) {
    return fail(absl::FailedPreconditionError(absl::StrCat(
        "upload incomplete: ", upload->written, " of ", upload->size, " bytes arrived")));
  }
  const std::string digest = upload->sha.HexDigest();
  if (digest != upload->sha256) {
    return fail(absl::InvalidArgumentError(
        absl::StrCat("checksum mismatch: got ", digest, ", expected ", upload->sha256)));
  }
  if (absl::Status s = FsyncFd(upload->fd, "dataset upload"); !s.ok()) return fail(s);
  ::close(upload->fd);
  upload->fd = -1;
  ::chmod(upload->path.c_str(), 0444);
  DatasetRecord record;
  record.owner = upload->owner;
  record.name = upload->name;
  record.sha256 = digest;
  record.size = upload->size;
  record.lines = upload->lines;
  record.created_at = absl::Now();
  absl::MutexLock commit(&commit_mu_);
  if (options_.max_tenant_bytes > 0) {
    absl::StatusOr<int64_t> used = registry_->DatasetBytes(record.owner);
    if (!used.ok()) return fail(used.status());
    if (record.size > options_.max_tenant_bytes - *used) {
      return fail(absl::ResourceExhaustedError(
          absl::StrCat("dataset quota: the tenant stores ", *used, " bytes of datasets; ",
                       record.size, " more would exceed its limit of ", options_.max_tenant_bytes,
                       " bytes; delete some first")));
    }
  }
  const std::string blob = PathOf(record);
  struct stat st;
  if (::stat(blob.c_str(), &st) == 0 && st.st_size == record.size) {
    ::unlink(upload->path.c_str());  // Identical bytes are stored already.
  } else {
    if (::rename(upload->path.c_str(), blob.c_str()) != 0) {
      return fail(StorageError(absl::StrCat("rename into ", blob), errno));
    }
    if (absl::Status s = FsyncDir(blobs_dir_); !s.ok()) return fail(s);
  }
  return registry_->InsertDataset(std::move(record));
}

absl::StatusOr<DatasetRecord> DatasetStore::Get(const std::string& id) {
  return registry_->GetDataset(id);
}

absl::StatusOr<DatasetPage> DatasetStore::List(const DatasetQuery& query) {
  return registry_->ListDatasets(query);
}

absl::Status DatasetStore::Delete(const std::string& id) {
  absl::MutexLock commit(&commit_mu_);
  ASSIGN_OR_RETURN(const DatasetRecord record, registry_->GetDataset(id));
  ASSIGN_OR_RETURN(const int64_t users, registry_->CountActiveJobsUsing(id));
  if (users > 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("dataset ", id, " is used by ", users, " queued or running job(s)"));
  }
  RETURN_IF_ERROR(registry_->DeleteDataset(id));
  ASSIGN_OR_RETURN(const int64_t sharing, registry_->CountDatasetsWithSha(record.sha256));
  if (sharing == 0) RETURN_IF_ERROR(RemoveAll(PathOf(record)));
  return absl::OkStatus();
}

}  // namespace adapterd
