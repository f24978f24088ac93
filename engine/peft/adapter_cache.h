#pragma once

// The engine's loaded-adapter cache: adapters of the store, keyed by
// (adapter_id, version) — never by name — in two tiers under their own byte
// budgets, with the disk (the store's version directory) underneath:
//   device tier: the tensors the model reads (on the CPU, the CPU tensors);
//   host tier:   host copies (pinned memory on CUDA) that go back up
//                without reading the disk.
// Both tiers evict least recently used first, and only what no lease and no
// explicit pin holds: a lease (one per request, queued or running) pins its
// adapter until the lease is destroyed, so eviction and delete never pull
// weights from under a request. Loads run on worker threads; a request for a
// cold adapter holds a lease that becomes ready() when the adapter is
// resident, and the engine admits it then. A load that cannot find room
// (everything resident is leased) waits until a lease is released.
// Engine-internal header (uses ATen through adapter.h).
//
// Thread-safe.

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "engine/api/engine.h"
#include "engine/peft/adapter.h"

namespace adapterd {

struct AdapterKey {
  std::string adapter_id;
  int64_t version = 0;
  auto operator<=>(const AdapterKey&) const = default;
};

struct AdapterCacheOptions {
  int64_t device_budget_bytes = int64_t{1} << 30;
  int64_t host_budget_bytes = int64_t{1} << 30;
  // Reads the adapter from disk into host memory (called on a worker).
  std::function<absl::StatusOr<std::shared_ptr<const Adapter>>(const AdapterHandle&)> load;
  // Copies a host adapter to the device (called on a worker). Null: the host
  // copy is what the model reads (the CPU), and the two tiers share it.
  std::function<absl::StatusOr<std::shared_ptr<const Adapter>>(const Adapter&)> to_device;
  // Called on a worker, with no cache lock held, after a load finished or
  // failed (the engine wakes its thread to admit waiting requests).
  std::function<void()> on_ready;
  int workers = 1;
};

class AdapterCache;
struct AdapterCacheEntry;  // adapter_cache.cc

// Holds one adapter for one request; unpins on destruction. Movable.
class AdapterLease {
 public:
  AdapterLease() = default;
  AdapterLease(AdapterLease&& other) noexcept;
  AdapterLease& operator=(AdapterLease&& other) noexcept;
  AdapterLease(const AdapterLease&) = delete;
  AdapterLease& operator=(const AdapterLease&) = delete;
  ~AdapterLease();

  // True once the adapter is in the device tier or its load failed.
  bool ready() const;
  // The load's error, or OK. REQUIRES: ready().
  absl::Status status() const;
  // The device copy. REQUIRES: ready() && status().ok().
  std::shared_ptr<const Adapter> adapter() const;
  const AdapterKey& key() const;
  bool valid() const { return entry_ != nullptr; }

 private:
  friend class AdapterCache;
  AdapterLease(AdapterCache* cache, std::shared_ptr<AdapterCacheEntry> entry);
  void Reset();

  AdapterCache* cache_ = nullptr;
  std::shared_ptr<AdapterCacheEntry> entry_;
};

class AdapterCache {
 public:
  explicit AdapterCache(AdapterCacheOptions options);
  // Stops the workers. REQUIRES: every lease was destroyed.
  ~AdapterCache();

  // Pins `handle`'s version for the returned lease and starts loading it if
  // it is not resident. RESOURCE_EXHAUSTED if its size (once known) and the
  // explicitly pinned adapters exceed the device budget.
  absl::StatusOr<AdapterLease> Acquire(const AdapterHandle& handle);

  // Starts loading (prefetch) and with `pin` keeps the version resident until
  // Unpin. RESOURCE_EXHAUSTED if explicitly pinned adapters alone would
  // exceed the device budget.
  absl::Status Prefetch(const AdapterHandle& handle, bool pin);
  void Unpin(const AdapterKey& key);

  // Drops the version (deleted from the store): new Acquires of that key
  // load it again; memory held by leases returns when the last is released.
  // version 0: every version of adapter_id.
  void Evict(const std::string& adapter_id, int64_t version);

  AdapterCacheState State(const AdapterKey& key) const;
  AdapterCacheStats Stats() const;

  // Blocks until no load is queued or running (tests, benchmarks).
  void WaitIdle();

 private:
  friend class AdapterLease;
  using Entry = AdapterCacheEntry;

  std::shared_ptr<Entry> FindOrCreate(const AdapterHandle& handle);
  void Release(const std::shared_ptr<Entry>& entry);
  bool IsReady(const Entry& entry) const;
  // Makes the entry resident in the device tier, loading or copying as needed.
  void Want(const std::shared_ptr<Entry>& entry);
  // Room for `bytes` in the device tier by evicting idle entries, LRU first.
  bool MakeDeviceRoom(int64_t bytes);
  void EnforceHostBudget();
  void DropDevice(Entry& entry);
  void DropHost(Entry& entry);
  void Forget(const std::shared_ptr<Entry>& entry);
  void RetryWaiting();
  void Touch(const std::shared_ptr<Entry>& entry);
  bool Idle(const Entry& entry) const;
  int64_t ExplicitPinnedBytes() const;
  void WorkerLoop();
  void RecordLoad(absl::Duration latency);

  const AdapterCacheOptions options_;

  mutable std::mutex mu_;  // Guards everything below.
  std::condition_variable work_cv_;
  std::condition_variable idle_cv_;
  std::map<AdapterKey, std::shared_ptr<Entry>> entries_;
  std::list<std::shared_ptr<Entry>> device_lru_;  // Front: most recent.
  std::list<std::shared_ptr<Entry>> host_lru_;
  std::deque<std::shared_ptr<Entry>> jobs_;     // Loads or copies to run.
  std::deque<std::shared_ptr<Entry>> waiting_;  // Loaded, waiting for device room.
  int busy_workers_ = 0;
  int64_t device_bytes_ = 0;  // Resident + reserved for copies in flight.
  int64_t host_bytes_ = 0;
  AdapterCacheStats stats_;
  std::vector<double> load_ms_;  // Ring of the last kLatencyWindow loads.
  size_t load_next_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace adapterd
