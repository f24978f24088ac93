#pragma once

// The adapter registry: which adapters exist, their immutable versions and
// the files (blobs) each version consists of. An interface, so that a shared
// database can replace the embedded SQLite one (sqlite_registry.h).
//
// Names live in their owner's namespace: (owner, name, version) is unique.
// Version numbers count up per (owner, name) and are never reused, not even
// after a delete, so "name@3" always meant one content. A name keeps one
// adapter_id across its versions; a name deleted wholly and created again
// gets a new adapter_id, so caches keyed by (adapter_id, version) never
// confuse the two.

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace adapterd {

enum class AdapterState {
  kPending = 0,  // Being committed; never visible. Removed by recovery after a crash.
  kReady = 1,    // Validated, durable, visible.
  kDeleted = 2,  // A tombstone: keeps the version number used.
};
const char* AdapterStateName(AdapterState state);

enum class AdapterVisibility {
  kPrivate = 0,  // Only the owner sees and uses it.
  kPublic = 1,   // Every tenant may get and use it (set by an admin); only the owner lists,
                 // deletes or changes it.
};

struct AdapterFile {
  std::string name;    // "adapter_config.json", "adapter_model.safetensors", ...
  std::string sha256;  // Hex; also the blob's name.
  int64_t size = 0;
};

struct AdapterRecord {
  std::string adapter_id;  // 32 hex characters; see the file comment.
  std::string owner;       // The tenant.
  std::string name;
  int64_t version = 0;
  std::string method;            // "lora", "prefix_tuning", "bottleneck", ...
  std::string base_fingerprint;  // ModelInfo::fingerprint of the base it was validated for.
  std::string sha256;            // Digest of the manifest (ManifestDigest()).
  int64_t size = 0;              // Sum of the file sizes.
  AdapterState state = AdapterState::kPending;
  AdapterVisibility visibility = AdapterVisibility::kPrivate;
  absl::Time created_at = absl::UnixEpoch();
  std::vector<AdapterFile> files;  // Sorted by name.
};

// sha256 over "<file name> <size> <sha256>\n" for each file sorted by name:
// one digest that names the exact bytes of a whole adapter version.
std::string ManifestDigest(const std::vector<AdapterFile>& files);

struct ListQuery {
  std::string owner;
  std::string name;          // Non-empty: only versions of this name.
  std::string method;        // Non-empty: only this method.
  bool latest_only = false;  // Only the latest READY version of each name.
  int page_size = 100;       // 1..1000.
  std::string page_token;    // From the previous page; empty for the first.
};

// What a tenant stores: READY versions and the bytes of READY and PENDING ones.
struct StorageUsage {
  int64_t adapters = 0;
  int64_t bytes = 0;
};

struct ListPage {
  std::vector<AdapterRecord> records;  // READY only, by (name, version).
  std::string next_page_token;         // Empty on the last page.
};

// Thread-safe.
class Registry {
 public:
  virtual ~Registry() = default;

  // Inserts `record` in state PENDING and returns it completed. Version 0
  // takes the next number of (owner, name); the adapter_id is that of the
  // name's live versions, or `new_adapter_id` when it has none. ALREADY_EXISTS
  // if (owner, name, version) was ever used.
  virtual absl::StatusOr<AdapterRecord> InsertPending(AdapterRecord record,
                                                      const std::string& new_adapter_id) = 0;
  // PENDING → READY. NOT_FOUND if there is no such PENDING record.
  virtual absl::Status MarkReady(const std::string& owner, const std::string& name,
                                 int64_t version) = 0;
  // Drops a PENDING record (a commit that failed). OK if absent.
  virtual absl::Status AbortPending(const std::string& owner, const std::string& name,
                                    int64_t version) = 0;

  // The READY record; version 0 is the latest READY version. NOT_FOUND otherwise.
  virtual absl::StatusOr<AdapterRecord> Get(const std::string& owner, const std::string& name,
                                            int64_t version) = 0;
  // INVALID_ARGUMENT for a bad page token or size.
  virtual absl::StatusOr<ListPage> List(const ListQuery& query) = 0;

  // READY → DELETED for one version, or for every version when `version` is
  // 0, in one transaction. Returns the records deleted; NOT_FOUND if none.
  virtual absl::StatusOr<std::vector<AdapterRecord>> MarkDeleted(const std::string& owner,
                                                                 const std::string& name,
                                                                 int64_t version) = 0;

  // The READY public record of `name` (any owner); version 0 is the latest.
  // NOT_FOUND otherwise, with the same message as Get.
  virtual absl::StatusOr<AdapterRecord> GetPublic(const std::string& name, int64_t version) = 0;
  // Sets the visibility of every version of (owner, name). NOT_FOUND if the
  // name has no READY version; ALREADY_EXISTS when making it public while
  // another owner's adapter of the same name is public.
  virtual absl::Status SetVisibility(const std::string& owner, const std::string& name,
                                     AdapterVisibility visibility) = 0;
  virtual absl::StatusOr<StorageUsage> Usage(const std::string& owner) = 0;

  // Every record in `state`, of all owners (recovery, garbage collection).
  virtual absl::StatusOr<std::vector<AdapterRecord>> ListByState(AdapterState state) = 0;
  // Removes every PENDING record; returns them (recovery after a crash).
  virtual absl::StatusOr<std::vector<AdapterRecord>> RemoveAllPending() = 0;
  // The sha256 of every file of a PENDING or READY record.
  virtual absl::StatusOr<std::set<std::string>> ReferencedBlobs() = 0;
};

}  // namespace adapterd
