#pragma once

// Training datasets (JSONL files) uploaded by tenants: content-addressed files
// under DATA_DIR/datasets and their records in the JobRegistry.
//
//   datasets/blobs/<sha256>.jsonl   file contents, read-only, shared by
//                                   identical uploads
//   datasets/uploads/<upload_id>    uploads in progress (removed on open)
//
// A dataset becomes visible only once every declared byte arrived and the
// sha256 matched: temp file → fsync → rename into blobs/ → fsync(dir) →
// record inserted. Open() removes uploads a crash interrupted and blobs no
// record references. The content is not parsed here: the engine reads it
// per the dataset policy when a job is validated (engine/api/training.h).
//
// Thread-safe.

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "adapters_store/job_registry.h"

namespace adapterd {

struct DatasetStoreOptions {
  std::string root;                              // The data directory.
  int64_t max_dataset_bytes = int64_t{1} << 30;  // One dataset.
  int64_t max_tenant_bytes = int64_t{10} << 30;  // All of a tenant's datasets; 0: unlimited.
  int max_open_uploads = 16;
};

class DatasetStore {
 public:
  // Opens the layout under options.root and cleans up after a crash.
  // `registry` is not owned and must outlive the store.
  static absl::StatusOr<std::unique_ptr<DatasetStore>> Open(DatasetStoreOptions options,
                                                            JobRegistry* registry);
  ~DatasetStore();

  // Starts an upload of `size` bytes with digest `sha256`. INVALID_ARGUMENT
  // for a bad name or digest; RESOURCE_EXHAUSTED over a size limit or with
  // too many uploads open.
  absl::StatusOr<std::string> BeginUpload(const std::string& owner, const std::string& name,
                                          int64_t size, const std::string& sha256);
  // INVALID_ARGUMENT for a wrong offset or bytes past the declared size (the
  // upload is aborted); NOT_FOUND for an unknown upload.
  absl::Status Append(const std::string& upload_id, int64_t offset, absl::string_view data);
  // FAILED_PRECONDITION when bytes are missing; INVALID_ARGUMENT "checksum
  // mismatch ..."; RESOURCE_EXHAUSTED over the tenant's limit. The upload
  // is consumed whatever the outcome.
  absl::StatusOr<DatasetRecord> Commit(const std::string& upload_id);
  void Abort(const std::string& upload_id);  // OK if unknown.

  // NOT_FOUND "dataset <id> not found". No ownership check: callers compare owners.
  absl::StatusOr<DatasetRecord> Get(const std::string& id);
  absl::StatusOr<DatasetPage> List(const DatasetQuery& query);
  // FAILED_PRECONDITION while a QUEUED or RUNNING job uses it; NOT_FOUND.
  absl::Status Delete(const std::string& id);

  // The dataset's file.
  std::string PathOf(const DatasetRecord& dataset) const;

 private:
  struct Upload;
  DatasetStore(DatasetStoreOptions options, JobRegistry* registry);
  absl::Status Recover();
  std::shared_ptr<Upload> Take(const std::string& upload_id);

  const DatasetStoreOptions options_;
  JobRegistry* const registry_;
  const std::string blobs_dir_;
  const std::string uploads_dir_;

  // Serialises commits and deletes, so that a delete never removes a blob a
  // commit just adopted and two commits never overshoot a tenant's limit.
  absl::Mutex commit_mu_;
  absl::Mutex mu_;  // Guards uploads_.
  std::map<std::string, std::shared_ptr<Upload>> uploads_ ABSL_GUARDED_BY(mu_);
};

}  // namespace adapterd
