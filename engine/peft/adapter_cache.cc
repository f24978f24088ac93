#include "engine/peft/adapter_cache.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace adapterd {

constexpr size_t kLatencyWindow = 1024;

struct AdapterCacheEntry {
  AdapterKey key;
  AdapterHandle handle;  // Its store pin is dropped once the files are read.
  int64_t leases = 0;
  bool pinned = false;     // Explicit (Prefetch with pin).
  bool prefetch = false;   // Wanted resident without a lease.
  bool forgotten = false;  // Evicted by delete: no longer in entries_.
  bool queued = false;     // In jobs_ or on a worker.
  bool waiting = false;    // In waiting_.
  bool reserved = false;   // Device bytes reserved for a copy in flight.
  bool failed = false;
  absl::Status error;
  int64_t bytes = -1;  // Host copy; unknown until loaded.
  // The device copy's bytes once made (to_device may add to the host bytes:
  // the LoRA kernels' copies in the model's dtype); 0 = not known yet.
  int64_t device_size = 0;
  // Bytes this entry holds in device_bytes_: its resident copy or the
  // reservation for a copy in flight.
  int64_t device_held = 0;
  // What the device tier needs for this adapter: its device copy's size once
  // seen, its host size before.
  int64_t DeviceSize() const { return device_size > 0 ? device_size : bytes; }
  std::shared_ptr<const Adapter> host, device;
  bool in_device_lru = false, in_host_lru = false;
  std::list<std::shared_ptr<AdapterCacheEntry>>::iterator device_pos, host_pos;
  // Disk read (+ host → device copy) time of the last load, waiting for
  // room or for a worker excluded; recorded when the copy is resident.
  absl::Duration load_time = absl::ZeroDuration();
  bool load_open = false;
};

// ---- AdapterLease ----

AdapterLease::AdapterLease(AdapterCache* cache, std::shared_ptr<AdapterCacheEntry> entry)
    : cache_(cache), entry_(std::move(entry)) {}

AdapterLease::AdapterLease(AdapterLease&& other) noexcept
    : cache_(other.cache_), entry_(std::move(other.entry_)) {
  other.cache_ = nullptr;
}

AdapterLease& AdapterLease::operator=(AdapterLease&& other) noexcept {
  if (this != &other) {
    Reset();
    cache_ = other.cache_;
    entry_ = std::move(other.entry_);
    other.cache_ = nullptr;
  }
  return *this;
}

AdapterLease::~AdapterLease() { Reset(); }

void AdapterLease::Reset() {
  if (entry_ != nullptr && cache_ != nullptr) cache_->Release(entry_);
  entry_.reset();
  cache_ = nullptr;
}

bool AdapterLease::ready() const {
  std::lock_guard<std::mutex> lock(cache_->mu_);
  return cache_->IsReady(*entry_);
}

absl::Status AdapterLease::status() const {
  std::lock_guard<std::mutex> lock(cache_->mu_);
  return entry_->failed ? entry_->error : absl::OkStatus();
}

std::shared_ptr<const Adapter> AdapterLease::adapter() const {
  std::lock_guard<std::mutex> lock(cache_->mu_);
  return entry_->device;
}

const AdapterKey& AdapterLease::key() const { return entry_->key; }

// ---- AdapterCache ----

AdapterCache::AdapterCache(AdapterCacheOptions options) : options_(std::move(options)) {
  stats_.device_budget_bytes = options_.device_budget_bytes;
  stats_.host_budget_bytes = options_.host_budget_bytes;
  for (int i = 0; i < std::max(1, options_.workers); ++i) {
    workers_.emplace_back([this] { WorkerLoop(); });
  }
}

AdapterCache::~AdapterCache() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
  }
  work_cv_.notify_all();
  for (std::thread& t : workers_) t.join();
}

bool AdapterCache::IsReady(const Entry& e) const { return e.device != nullptr || e.failed; }

bool AdapterCache::Idle(const Entry& e) const { return e.leases == 0 && !e.pinned && !e.reserved; }

int64_t AdapterCache::ExplicitPinnedBytes() const {
  int64_t total = 0;
  for (const auto& [key, e] : entries_) {
    if (e->pinned && e->bytes > 0) total += e->DeviceSize();
  }
  return total;
}

std::shared_ptr<AdapterCacheEntry> AdapterCache::FindOrCreate(const AdapterHandle& handle) {
  AdapterKey key{handle.adapter_id, handle.version};
  auto it = entries_.find(key);
  if (it == entries_.end()) {
    auto e = std::make_shared<Entry>();
    e->key = key;
    e->handle = handle;
    it = entries_.emplace(key, std::move(e)).first;
  } else if (it->second->host == nullptr && it->second->device == nullptr &&
             !it->second->queued) {
    it->second->handle = handle;  // A fresh pin on the files for the next load.
  }
  return it->second;
}

void AdapterCache::Touch(const std::shared_ptr<Entry>& e) {
  if (e->in_device_lru) device_lru_.splice(device_lru_.begin(), device_lru_, e->device_pos);
  if (e->in_host_lru) host_lru_.splice(host_lru_.begin(), host_lru_, e->host_pos);
}

absl::StatusOr<AdapterLease> AdapterCache::Acquire(const AdapterHandle& handle) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<Entry> e = FindOrCreate(handle);
  if (e->bytes > 0 && !e->pinned &&
      e->DeviceSize() + ExplicitPinnedBytes() > options_.device_budget_bytes) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "adapter \"", handle.name, "\" (", e->DeviceSize(), " bytes) does not fit the adapter cache (",
        options_.device_budget_bytes, " bytes, ", ExplicitPinnedBytes(), " pinned)"));
  }
  if (e->failed && e->leases == 0) {  // A past failure is retried.
    e->failed = false;
    e->error = absl::OkStatus();
  }
  ++e->leases;
  if (e->device != nullptr) {
    ++stats_.device_hits;
  } else if (e->host != nullptr) {
    ++stats_.host_hits;
  } else {
    ++stats_.misses;
  }
  Touch(e);
  Want(e);
  return AdapterLease(this, std::move(e));
}

absl::Status AdapterCache::Prefetch(const AdapterHandle& handle, bool pin) {
  std::lock_guard<std::mutex> lock(mu_);
  std::shared_ptr<Entry> e = FindOrCreate(handle);
  if (pin && !e->pinned) {
    if (e->bytes > 0 && e->DeviceSize() + ExplicitPinnedBytes() > options_.device_budget_bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "pinning adapter \"", handle.name, "\" (", e->DeviceSize(),
          " bytes) would make pinned adapters exceed the adapter cache (",
          options_.device_budget_bytes, " bytes, ", ExplicitPinnedBytes(), " pinned)"));
    }
    e->pinned = true;
  }
  if (e->failed && e->leases == 0) {
    e->failed = false;
    e->error = absl::OkStatus();
  }
  e->prefetch = true;
  Touch(e);
  Want(e);
  return absl::OkStatus();
}

void AdapterCache::Unpin(const AdapterKey& key) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = entries_.find(key);
  if (it == entries_.end()) return;
  it->second->pinned = false;
  RetryWaiting();
}

void AdapterCache::Evict(const std::string& adapter_id, int64_t version) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::shared_ptr<Entry>> doomed;
  for (const auto& [key, e] : entries_) {
    if (key.adapter_id == adapter_id && (version == 0 || key.version == version)) {
      doomed.push_back(e);
    }
  }
  for (const auto& e : doomed) Forget(e);
  RetryWaiting();
}

void AdapterCache::Forget(const std::shared_ptr<Entry>& e) {
  entries_.erase(e->key);
  e->forgotten = true;
  e->pinned = false;
  e->prefetch = false;
  if (e->waiting) {
    std::erase(waiting_, e);
    e->waiting = false;
  }
  if (e->leases == 0 && !e->reserved) {
    DropDevice(*e);
    DropHost(*e);
  }
}

void AdapterCache::Release(const std::shared_ptr<Entry>& e) {
  std::lock_guard<std::mutex> lock(mu_);
  if (--e->leases > 0) return;
  if (e->forgotten) {
    if (!e->reserved) {
      DropDevice(*e);
      DropHost(*e);
    }
  } else if (e->failed) {
    if (!e->pinned && !e->prefetch) entries_.erase(e->key);
  } else if (e->waiting && !e->pinned && !e->prefetch) {
    std::erase(waiting_, e);
    e->waiting = false;
    EnforceHostBudget();
  }
  RetryWaiting();
}

void AdapterCache::DropDevice(Entry& e) {
  if (e.device == nullptr) return;
  e.device.reset();
  device_bytes_ -= e.device_held;
  e.device_held = 0;
  if (e.in_device_lru) {
    device_lru_.erase(e.device_pos);
    e.in_device_lru = false;
  }
}

void AdapterCache::DropHost(Entry& e) {
  if (e.host == nullptr) return;
  e.host.reset();
  host_bytes_ -= e.bytes;
  if (e.in_host_lru) {
    host_lru_.erase(e.host_pos);
    e.in_host_lru = false;
  }
}

bool AdapterCache::MakeDeviceRoom(int64_t bytes) {
  const int64_t budget = options_.device_budget_bytes;
  if (device_bytes_ + bytes <= budget) return true;
  int64_t evictable = 0;
  for (const auto& e : device_lru_) {
    if (Idle(*e)) evictable += e->device_held;
  }
  if (device_bytes_ - evictable + bytes > budget) return false;
  for (auto it = device_lru_.end(); device_bytes_ + bytes > budget && it != device_lru_.begin();) {
    --it;
    std::shared_ptr<Entry> e = *it;
    if (!Idle(*e)) continue;
    // The host tier keeps a copy (on the CPU: the same tensors) while its budget allows.
    if (e->host == nullptr && options_.host_budget_bytes > 0) {
      e->host = e->device;
      host_bytes_ += e->bytes;
      host_lru_.push_front(e);
      e->host_pos = host_lru_.begin();
      e->in_host_lru = true;
    }
    it = device_lru_.erase(it);
    e->in_device_lru = false;
    e->device.reset();
    device_bytes_ -= e->device_held;
    e->device_held = 0;
    ++stats_.evictions;
  }
  EnforceHostBudget();
  return device_bytes_ + bytes <= budget;
}

void AdapterCache::EnforceHostBudget() {
  for (auto it = host_lru_.end();
       host_bytes_ > options_.host_budget_bytes && it != host_lru_.begin();) {
    --it;
    std::shared_ptr<Entry> e = *it;
    const bool needed = e->reserved || e->queued ||
                        (e->device == nullptr && (e->leases > 0 || e->pinned || e->waiting));
    if (needed) continue;
    it = host_lru_.erase(it);
    e->in_host_lru = false;
    e->host.reset();
    host_bytes_ -= e->bytes;
    if (e->device == nullptr && e->leases == 0 && !e->pinned && !e->forgotten) {
      entries_.erase(e->key);
    }
  }
}

void AdapterCache::Want(const std::shared_ptr<Entry>& e) {
  if (e->device != nullptr || e->failed || e->reserved || e->queued) return;
  if (e->host == nullptr) {
    e->queued = true;
    jobs_.push_back(e);
    work_cv_.notify_one();
    return;
  }
  if (!MakeDeviceRoom(e->DeviceSize())) {
    if (!e->waiting && (e->leases > 0 || e->pinned || e->prefetch)) {
      e->waiting = true;
      waiting_.push_back(e);
    }
    return;
  }
  if (e->waiting) {
    std::erase(waiting_, e);
    e->waiting = false;
  }
  if (options_.to_device) {
    e->reserved = true;
    e->device_held = e->DeviceSize();
    device_bytes_ += e->device_held;
    e->queued = true;
    jobs_.push_back(e);
    work_cv_.notify_one();
    return;
  }
  e->device = e->host;
  e->device_size = e->bytes;
  e->device_held = e->bytes;
  device_bytes_ += e->device_held;
  device_lru_.push_front(e);
  e->device_pos = device_lru_.begin();
  e->in_device_lru = true;
  e->prefetch = false;
  if (e->load_open) {
    RecordLoad(e->load_time);
    e->load_open = false;
  }
  EnforceHostBudget();
}

void AdapterCache::RetryWaiting() {
  while (!waiting_.empty()) {
    std::shared_ptr<Entry> e = waiting_.front();
    if (e->leases == 0 && !e->pinned && !e->prefetch) {
      waiting_.pop_front();
      e->waiting = false;
      continue;
    }
    Want(e);
    if (e->waiting) break;  // FIFO: later loads do not overtake it.
  }
}

void AdapterCache::RecordLoad(absl::Duration latency) {
  const double ms = absl::ToDoubleMilliseconds(latency);
  if (load_ms_.size() < kLatencyWindow) {
    load_ms_.push_back(ms);
  } else {
    load_ms_[load_next_] = ms;
  }
  load_next_ = (load_next_ + 1) % kLatencyWindow;
  stats_.load_ms_max = std::max(stats_.load_ms_max, ms);
}

void AdapterCache::WorkerLoop() {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    work_cv_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
    if (stopping_) return;
    std::shared_ptr<Entry> e = jobs_.front();
    jobs_.pop_front();
    ++busy_workers_;
    if (e->host == nullptr) {
      // Disk → host.
      const AdapterHandle handle = e->handle;
      lock.unlock();
      absl::StatusOr<std::shared_ptr<const Adapter>> loaded =
          absl::InternalError("no adapter loader configured");
      const absl::Time t0 = absl::Now();
      if (options_.load) loaded = options_.load(handle);
      const absl::Duration took = absl::Now() - t0;
      lock.lock();
      e->queued = false;
      e->handle.pin.reset();
      if (!loaded.ok()) {
        e->failed = true;
        e->error = loaded.status();
        ++stats_.load_failures;
      } else {
        ++stats_.loads;
        e->load_time = took;
        e->load_open = true;
        e->bytes = (*loaded)->num_bytes;
        if (!e->forgotten || e->leases > 0) {
          e->host = *std::move(loaded);
          host_bytes_ += e->bytes;
          host_lru_.push_front(e);
          e->host_pos = host_lru_.begin();
          e->in_host_lru = true;
        }
        int64_t others_pinned = ExplicitPinnedBytes() - (e->pinned ? e->DeviceSize() : 0);
        if (e->DeviceSize() + others_pinned > options_.device_budget_bytes) {
          e->failed = true;
          e->pinned = false;
          e->error = absl::ResourceExhaustedError(absl::StrCat(
              "adapter \"", e->handle.name, "\" (", e->DeviceSize(),
              " bytes) does not fit the adapter cache (", options_.device_budget_bytes,
              " bytes, ", others_pinned, " pinned)"));
          e->load_open = false;
        } else if (e->leases > 0 || e->pinned || e->prefetch) {
          Want(e);
        }
        EnforceHostBudget();
      }
    } else if (e->reserved) {
      // Host → device.
      std::shared_ptr<const Adapter> host = e->host;
      lock.unlock();
      const absl::Time t0 = absl::Now();
      absl::StatusOr<std::shared_ptr<const Adapter>> copied = options_.to_device(*host);
      const absl::Duration took = absl::Now() - t0;
      lock.lock();
      e->queued = false;
      e->reserved = false;
      device_bytes_ -= e->device_held;
      e->device_held = 0;
      if (!copied.ok()) {
        e->failed = true;
        e->error = copied.status();
        ++stats_.load_failures;
      } else if (!e->forgotten || e->leases > 0) {
        e->device = *std::move(copied);
        // The copy's own size (the reservation was the host size the first
        // time); idle adapters make room where it came out larger.
        e->device_size = std::max<int64_t>(e->device->num_bytes, 1);
        e->device_held = e->device_size;
        device_bytes_ += e->device_held;
        device_lru_.push_front(e);
        e->device_pos = device_lru_.begin();
        e->in_device_lru = true;
        if (device_bytes_ > options_.device_budget_bytes) MakeDeviceRoom(0);
        e->prefetch = false;
        if (e->load_open) {
          RecordLoad(e->load_time + took);
          e->load_open = false;
        }
      }
      if (e->forgotten && e->leases == 0) DropHost(*e);
      EnforceHostBudget();
    } else {
      e->queued = false;
    }
    RetryWaiting();
    --busy_workers_;
    const bool idle = jobs_.empty() && busy_workers_ == 0;
    lock.unlock();
    if (options_.on_ready) options_.on_ready();
    if (idle) idle_cv_.notify_all();
    lock.lock();
  }
}

void AdapterCache::WaitIdle() {
  std::unique_lock<std::mutex> lock(mu_);
  idle_cv_.wait(lock, [this] { return jobs_.empty() && busy_workers_ == 0; });
}

AdapterCacheState AdapterCache::State(const AdapterKey& key) const {
  std::lock_guard<std::mutex> lock(mu_);
  AdapterCacheState state;
  auto it = entries_.find(key);
  if (it == entries_.end()) return state;
  const Entry& e = *it->second;
  state.residency = e.device != nullptr ? AdapterResidency::kDevice
                    : e.host != nullptr ? AdapterResidency::kHost
                                        : AdapterResidency::kDisk;
  state.pinned = e.pinned;
  state.leases = e.leases;
  state.bytes = std::max<int64_t>(0, e.bytes);
  return state;
}

AdapterCacheStats AdapterCache::Stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  AdapterCacheStats s = stats_;
  s.device_bytes = device_bytes_;
  s.host_bytes = host_bytes_;
  s.device_adapters = static_cast<int64_t>(device_lru_.size());
  s.host_adapters = static_cast<int64_t>(host_lru_.size());
  for (const auto& [key, e] : entries_) {
    if (e->pinned) ++s.pinned_adapters;
    if (e->leases > 0) ++s.leased_adapters;
  }
  if (!load_ms_.empty()) {
    std::vector<double> sorted = load_ms_;
    std::sort(sorted.begin(), sorted.end());
    s.load_ms_p50 = sorted[sorted.size() / 2];
    s.load_ms_p99 = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
  }
  return s;
}

}  // namespace adapterd
