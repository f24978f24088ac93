#pragma once

// The durable adapter store: a facade over the blob store (file contents by
// sha256), the registry (names, versions, state) and per-version directories
// of the files under their own names, which is what loaders read.
//
// Layout under StoreOptions::root (the server's --data-dir):
//   blobs/<sha256>                     content, read-only
//   adapters/<adapter_id>/<version>/   hard links to the blobs, by file name
//   uploads/<upload_id>/               uploads in progress (removed on open)
//   registry.db                        SQLite (WAL, synchronous=FULL)
//
// An adapter becomes visible only after its files are complete, checksummed,
// validated (StoreOptions::validator) and durable: commit = registry PENDING
// → blobs renamed into place and fsynced → version directory built and
// fsynced → registry READY. Open() undoes whatever a crash left half done:
// uploads, PENDING records, partial version directories, unreferenced blobs.
// Delete is logical at once (new lookups get NOT_FOUND) and physical when the
// last ResolvedAdapter pin of that version is released.
//
// Thread-safe. Slow calls (uploads, commits, registration, delete) do disk
// I/O on the calling thread: callers on a gRPC thread hand them to a worker.

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "adapters_store/adapter_ref.h"
#include "adapters_store/adapter_validator.h"
#include "adapters_store/blob_store.h"
#include "adapters_store/registry.h"

namespace adapterd {

struct StoreOptions {
  std::string root;  // The data directory; created if missing.
  // Directories RegisterFromPath may read from (after realpath, symlinks
  // resolved). Empty: registration from a server path is disabled.
  std::vector<std::string> allowed_roots;
  int64_t max_adapter_bytes = int64_t{2} << 30;  // All files of one version.
  int64_t max_config_bytes = 1 << 20;            // adapter_config.json.
  int max_open_uploads = 64;
  absl::Duration upload_ttl = absl::Hours(1);  // An idle upload is dropped after this.
  // Required. Checks the files before the version becomes visible.
  AdapterValidator validator;
  // Re-hash every READY blob on Open (and quarantine nothing: a mismatch is
  // reported in OpenReport). Off: sizes only.
  bool verify_on_open = false;
};

// What Open found and repaired.
struct OpenReport {
  int pending_removed = 0;           // Commits a crash interrupted.
  int uploads_removed = 0;           // Uploads in progress at the crash.
  int dirs_rebuilt = 0;              // Version directories of READY records made again.
  int dirs_removed = 0;              // Version directories without a READY record.
  int blobs_removed = 0;             // Unreferenced blobs.
  std::vector<std::string> damaged;  // "name@version: reason" for READY versions with bad blobs.
};

struct UploadFileSpec {
  std::string name;    // One of the accepted file names (adapter_ref.h).
  int64_t size = 0;    // Exact size in bytes.
  std::string sha256;  // Hex digest of the file's bytes.
};

// A tenant's storage limits; 0 means unlimited.
struct StorageQuota {
  int64_t max_adapters = 0;  // READY versions.
  int64_t max_bytes = 0;     // Bytes of READY and committing versions.
};

struct UploadSpec {
  std::string owner;
  StorageQuota quota;  // Checked at BeginUpload (declared sizes) and again at commit.
  std::string name;
  int64_t version = 0;      // 0: the next version of the name.
  std::string method_hint;  // Non-empty: validation must find this method.
  std::vector<UploadFileSpec> files;
  std::string sha256;  // Optional: ManifestDigest of the files.
};

// A version resolved for use. While `pin` is held, the version's directory
// stays on disk even if the version is deleted meanwhile.
struct ResolvedAdapter {
  AdapterRecord record;
  std::string dir;                  // The files under their own names.
  std::shared_ptr<const void> pin;  // REQUIRES: released before the store is destroyed.
};

struct StoreStats {
  int64_t open_uploads = 0;
  int64_t pinned_versions = 0;
};

class AdapterStore {
 public:
  // Opens (or creates) the store under options.root and recovers from a
  // crash (see the file comment). INVALID_ARGUMENT if options lack a root or
  // a validator; INTERNAL for storage or database errors.
  static absl::StatusOr<std::unique_ptr<AdapterStore>> Open(StoreOptions options,
                                                            OpenReport* report = nullptr);
  ~AdapterStore();

  const StoreOptions& options() const { return options_; }

  // Starts an upload and returns its id. INVALID_ARGUMENT for a bad name,
  // file name (pickle files included), duplicate file, malformed sha256 or a
  // missing adapter_config.json; RESOURCE_EXHAUSTED if the declared sizes
  // exceed the limits or too many uploads are open; ALREADY_EXISTS if an
  // explicit version is taken.
  absl::StatusOr<std::string> BeginUpload(const UploadSpec& spec);

  // Appends `data` at `offset` of `file`. NOT_FOUND for an unknown upload id;
  // INVALID_ARGUMENT for an undeclared file, an offset other than the bytes
  // written so far, or more bytes than declared. Any error aborts the upload.
  absl::Status AppendUpload(const std::string& upload_id, const std::string& file, int64_t offset,
                            absl::string_view data);

  // Verifies and publishes the upload as a new READY version; the upload is
  // consumed whatever the outcome. FAILED_PRECONDITION if a file is
  // incomplete; INVALID_ARGUMENT "checksum mismatch ..." if a digest differs;
  // the validator's error; ALREADY_EXISTS if the version was taken meanwhile.
  absl::StatusOr<AdapterRecord> CommitUpload(const std::string& upload_id);

  // Drops an upload and its temp files. OK if unknown.
  void AbortUpload(const std::string& upload_id);

  // Copies the adapter in the server directory `path` into the store and
  // publishes it like an upload: the files PublishDirectory takes (the
  // AdapterFusion layout included), symlinks followed within the roots.
  // FAILED_PRECONDITION if no allowed roots are
  // configured; PERMISSION_DENIED if `path` or a file in it resolves outside
  // them (symlinks included); NOT_FOUND if it does not exist; INVALID_ARGUMENT
  // if it is not a directory or holds pickle weights only; then as CommitUpload.
  // RESOURCE_EXHAUSTED "storage quota ..." when `quota` would be exceeded.
  absl::StatusOr<AdapterRecord> RegisterFromPath(const std::string& owner, const std::string& name,
                                                 int64_t version, const std::string& path,
                                                 const std::string& method_hint,
                                                 const StorageQuota& quota = {});

  // Publishes the adapter files a server component wrote into `dir` (a
  // training job's output) as a new version of `owner`'s `name`: the files
  // are copied in and committed like an upload (validator, quota, crash
  // safety). For the server's own directories only: no allowed-roots check.
  // Takes regular files with accepted names (ValidateAdapterFileName) at the
  // top and in subdirectories one level down; symlinks and other names are
  // left behind. Errors as RegisterFromPath.
  absl::StatusOr<AdapterRecord> PublishDirectory(const std::string& owner, const std::string& name,
                                                 const std::string& dir,
                                                 const std::string& method_hint,
                                                 const StorageQuota& quota = {});

  // The READY version `ref` ("name" = latest, "name@N") of `owner`, or else
  // a public one of that name. INVALID_ARGUMENT for a malformed ref;
  // NOT_FOUND if absent, deleted or another tenant's private adapter (one
  // message for all three).
  absl::StatusOr<AdapterRecord> Get(const std::string& owner, absl::string_view ref);
  // Makes every version of `owner`'s `name` public or private (an admin
  // action). NOT_FOUND / ALREADY_EXISTS as Registry::SetVisibility.
  absl::Status SetVisibility(const std::string& owner, const std::string& name,
                             AdapterVisibility visibility);
  absl::StatusOr<StorageUsage> Usage(const std::string& owner);
  absl::StatusOr<ListPage> List(const ListQuery& query);

  // Deletes version `version` of `name`, or every version when 0. Returns the
  // versions deleted. NOT_FOUND if there is none.
  absl::StatusOr<std::vector<AdapterRecord>> Delete(const std::string& owner,
                                                    const std::string& name, int64_t version);

  // Get + the version's directory, pinned. Same errors as Get; INTERNAL if
  // the directory is missing.
  absl::StatusOr<ResolvedAdapter> Resolve(const std::string& owner, absl::string_view ref);

  // Calls `listener` with each version a Delete removes, after the delete is
  // durable, on the deleting thread, outside the store's locks (the engine's
  // cache drops its entry for (adapter_id, version) here). Listeners must not
  // block for long and must outlive the store.
  using DeleteListener = std::function<void(const AdapterRecord& deleted)>;
  void AddDeleteListener(DeleteListener listener);

  // Re-hashes the version's blobs: DATA_LOSS naming the first bad file.
  absl::Status VerifyFiles(const AdapterRecord& record) const;

  StoreStats Stats() const;

 private:
  struct Upload;
  using VersionKey = std::pair<std::string, int64_t>;  // (adapter_id, version).

  AdapterStore(StoreOptions options, std::unique_ptr<BlobStore> blobs,
               std::unique_ptr<Registry> registry);

  absl::Status Recover(OpenReport* report);
  std::string VersionDir(const std::string& adapter_id, int64_t version) const;
  absl::Status BuildVersionDir(const AdapterRecord& record);
  bool VersionDirComplete(const AdapterRecord& record) const;
  // Removes blobs no PENDING or READY record references.
  absl::StatusOr<int> CollectGarbage();
  void RemoveVersionFiles(const VersionKey& key);
  void Unpin(const VersionKey& key);
  std::shared_ptr<Upload> TakeUpload(const std::string& upload_id);
  std::shared_ptr<Upload> FindUpload(const std::string& upload_id);
  absl::StatusOr<AdapterRecord> Publish(Upload& upload);
  // The adapter files under `dir` into spec.files and `sources` (the paths to
  // copy from): accepted names (ValidateAdapterFileName) at the top and one
  // subdirectory level down (AdapterFusion's <adapter>/<file>), sorted;
  // hidden entries and other names are left behind. Without `root` (the
  // server's own directories) only regular files count and symlinks are
  // never followed; with `root` (a registration from a server path) symlinks
  // are followed, but every file taken must resolve under `root`, else
  // PERMISSION_DENIED.
  absl::Status CollectAdapterFiles(const std::string& dir, const std::string* root,
                                   UploadSpec& spec, std::vector<std::string>& sources);
  // Begins an upload of `spec`, copies sources[i] into spec.files[i] and commits.
  absl::StatusOr<AdapterRecord> CopyAndCommit(const UploadSpec& spec,
                                              const std::vector<std::string>& sources);
  // RESOURCE_EXHAUSTED if adding `bytes` (and one more adapter) to owner's
  // usage would exceed `quota`.
  absl::Status CheckQuota(const std::string& owner, const StorageQuota& quota, int64_t bytes);
  // Own READY version, else a public one.
  absl::StatusOr<AdapterRecord> Lookup(const std::string& owner, const AdapterRef& ref);
  void DropExpiredUploads();

  const StoreOptions options_;
  const std::unique_ptr<BlobStore> blobs_;
  const std::unique_ptr<Registry> registry_;
  const std::string uploads_dir_;
  const std::string versions_dir_;

  // Held shared by commits between their registry PENDING insert and READY,
  // and exclusively by garbage collection, so that GC never removes a blob a
  // commit is adopting.
  mutable absl::Mutex gc_mu_;

  // Serialises the storage-quota check with the registry insert of a commit.
  absl::Mutex quota_mu_;

  mutable absl::Mutex mu_;  // Guards uploads_, pins_, deferred_ and listeners_.
  std::map<std::string, std::shared_ptr<Upload>> uploads_ ABSL_GUARDED_BY(mu_);
  std::map<VersionKey, int> pins_ ABSL_GUARDED_BY(mu_);
  std::set<VersionKey> deferred_ ABSL_GUARDED_BY(mu_);  // Deleted while pinned.
  std::vector<DeleteListener> listeners_ ABSL_GUARDED_BY(mu_);
};

}  // namespace adapterd
