// The loaded-adapter cache (engine/peft/adapter_cache.h) with a fake loader:
// adapters of a given byte size, no files. Engine-level behaviour with real
// adapters is in tests/runtime/engine_adapter_cache_test.cc.

#include "engine/peft/adapter_cache.h"

#include <gtest/gtest.h>

#include <atomic>
#include <random>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"

namespace adapterd {
namespace {

AdapterHandle Handle(const std::string& id, int64_t bytes, int64_t version = 1) {
  AdapterHandle h;
  h.name = id;
  h.adapter_id = id;
  h.version = version;
  h.size_bytes = bytes;
  return h;
}

class AdapterCacheTest : public ::testing::Test {
 protected:
  // device_growth > 0: a host → device copy step (to_device) whose copies are
  // that many times the host bytes, as the LoRA kernels' dtype copies make them.
  std::unique_ptr<AdapterCache> MakeCache(int64_t device_budget, int64_t host_budget = 0,
                                          int workers = 1, double device_growth = 0) {
    AdapterCacheOptions options;
    options.device_budget_bytes = device_budget;
    options.host_budget_bytes = host_budget;
    options.workers = workers;
    if (device_growth > 0) {
      options.to_device = [device_growth](const Adapter& host)
          -> absl::StatusOr<std::shared_ptr<const Adapter>> {
        auto copy = std::make_shared<Adapter>(host);
        copy->num_bytes = static_cast<int64_t>(host.num_bytes * device_growth);
        return copy;
      };
    }
    options.load = [this](const AdapterHandle& h)
        -> absl::StatusOr<std::shared_ptr<const Adapter>> {
      ++loads_;
      if (gate_ != nullptr) gate_->WaitForNotification();
      if (h.size_bytes < 0) return absl::InvalidArgumentError("bad adapter");
      auto a = std::make_shared<Adapter>();
      a->name = absl::StrCat(h.adapter_id, "@", h.version);
      a->num_bytes = h.size_bytes;
      return a;
    };
    return std::make_unique<AdapterCache>(std::move(options));
  }

  // Acquires and waits until resident.
  AdapterLease Ready(AdapterCache& cache, const AdapterHandle& h) {
    absl::StatusOr<AdapterLease> lease = cache.Acquire(h);
    EXPECT_TRUE(lease.ok()) << lease.status();
    cache.WaitIdle();
    EXPECT_TRUE(lease->ready());
    EXPECT_TRUE(lease->status().ok()) << lease->status();
    return *std::move(lease);
  }

  std::atomic<int> loads_{0};
  absl::Notification* gate_ = nullptr;
};

TEST_F(AdapterCacheTest, LoadsAColdAdapterAsynchronouslyAndHitsAfterwards) {
  auto cache = MakeCache(1000);
  absl::Notification gate;
  gate_ = &gate;
  absl::StatusOr<AdapterLease> lease = cache->Acquire(Handle("a", 100));
  ASSERT_TRUE(lease.ok());
  EXPECT_FALSE(lease->ready());  // The load waits on the gate: Acquire did not block.
  gate.Notify();
  cache->WaitIdle();
  ASSERT_TRUE(lease->ready());
  EXPECT_EQ(lease->adapter()->name, "a@1");
  AdapterLease again = Ready(*cache, Handle("a", 100));
  EXPECT_EQ(again.adapter().get(), lease->adapter().get());
  const AdapterCacheStats s = cache->Stats();
  EXPECT_EQ(s.misses, 1);
  EXPECT_EQ(s.device_hits, 1);
  EXPECT_EQ(s.loads, 1);
  EXPECT_EQ(s.device_bytes, 100);
  EXPECT_GT(s.load_ms_max, 0.0);
}

TEST_F(AdapterCacheTest, NeverEvictsAnAdapterUsedByARunningSequence) {
  auto cache = MakeCache(300);
  AdapterLease a = Ready(*cache, Handle("a", 100));
  AdapterLease b = Ready(*cache, Handle("b", 100));
  AdapterLease c = Ready(*cache, Handle("c", 100));
  absl::StatusOr<AdapterLease> d = cache->Acquire(Handle("d", 100));
  ASSERT_TRUE(d.ok());
  cache->WaitIdle();
  EXPECT_FALSE(d->ready());  // Waits for room: every resident adapter is leased.
  for (const char* id : {"a", "b", "c"}) {
    EXPECT_EQ(cache->State({id, 1}).residency, AdapterResidency::kDevice) << id;
  }
  EXPECT_EQ(a.adapter()->name, "a@1");
  b = AdapterLease();  // Release b: d takes its room.
  cache->WaitIdle();
  ASSERT_TRUE(d->ready());
  EXPECT_EQ(d->adapter()->name, "d@1");
  EXPECT_EQ(cache->State({"b", 1}).residency, AdapterResidency::kDisk);
  EXPECT_EQ(cache->State({"a", 1}).residency, AdapterResidency::kDevice);
  EXPECT_EQ(cache->Stats().device_bytes, 300);
}

TEST_F(AdapterCacheTest, EvictsTheLeastRecentlyUsedIdleAdapterFirst) {
  auto cache = MakeCache(300);
  for (const char* id : {"a", "b", "c"}) Ready(*cache, Handle(id, 100));
  Ready(*cache, Handle("a", 100));  // a is now the most recent; b the least.
  Ready(*cache, Handle("d", 100));
  EXPECT_EQ(cache->State({"b", 1}).residency, AdapterResidency::kDisk);
  for (const char* id : {"a", "c", "d"}) {
    EXPECT_EQ(cache->State({id, 1}).residency, AdapterResidency::kDevice) << id;
  }
  Ready(*cache, Handle("e", 100));
  EXPECT_EQ(cache->State({"c", 1}).residency, AdapterResidency::kDisk);
  EXPECT_EQ(cache->Stats().evictions, 2);
}

TEST_F(AdapterCacheTest, HostTierServesAnEvictedAdapterWithoutReadingTheDisk) {
  auto cache = MakeCache(100, /*host_budget=*/1000);
  Ready(*cache, Handle("a", 100));
  Ready(*cache, Handle("b", 100));  // Evicts a from the device tier into the host tier.
  EXPECT_EQ(cache->State({"a", 1}).residency, AdapterResidency::kHost);
  const int loads = loads_;
  Ready(*cache, Handle("a", 100));
  EXPECT_EQ(loads_, loads);
  EXPECT_EQ(cache->Stats().host_hits, 1);
  EXPECT_LE(cache->Stats().host_bytes, 1000);
}

// The device tier counts the device copy's own bytes (1.5x the host's here),
// not the host's: three 100-byte adapters whose copies are 150 bytes each do
// not all fit 400 bytes, and the budget holds after every load.
TEST_F(AdapterCacheTest, DeviceTierCountsTheDeviceCopysBytes) {
  auto cache = MakeCache(400, /*host_budget=*/1000, /*workers=*/1, /*device_growth=*/1.5);
  Ready(*cache, Handle("a", 100));
  EXPECT_EQ(cache->Stats().device_bytes, 150);
  Ready(*cache, Handle("b", 100));
  EXPECT_EQ(cache->Stats().device_bytes, 300);
  {
    AdapterLease c = Ready(*cache, Handle("c", 100));
    // Reserved at the host size (the copy's is not known before it is made),
    // then the least recently used idle adapter made room for the real size.
    EXPECT_EQ(cache->State({"a", 1}).residency, AdapterResidency::kHost);
    EXPECT_EQ(cache->Stats().device_bytes, 300);
  }
  // Known now: a comes back at 150 bytes and b (least recent, idle) leaves first.
  Ready(*cache, Handle("a", 100));
  EXPECT_EQ(cache->State({"b", 1}).residency, AdapterResidency::kHost);
  EXPECT_EQ(cache->Stats().device_bytes, 300);
  EXPECT_LE(cache->Stats().device_bytes, 400);
}

TEST_F(AdapterCacheTest, KeysOnAdapterIdAndVersionNeverTheName) {
  auto cache = MakeCache(1000);
  AdapterHandle v1 = Handle("id1", 10, 1);
  AdapterHandle v2 = Handle("id1", 10, 2);
  AdapterHandle other = Handle("id2", 10, 1);
  v2.name = other.name = v1.name;  // One name, three cache entries.
  AdapterLease a = Ready(*cache, v1);
  AdapterLease b = Ready(*cache, v2);
  AdapterLease c = Ready(*cache, other);
  EXPECT_EQ(a.adapter()->name, "id1@1");
  EXPECT_EQ(b.adapter()->name, "id1@2");
  EXPECT_EQ(c.adapter()->name, "id2@1");
  EXPECT_EQ(loads_, 3);
}

TEST_F(AdapterCacheTest, DeleteWhileInUseFreesTheMemoryAfterTheLastRelease) {
  auto cache = MakeCache(1000, 1000);
  AdapterLease a = Ready(*cache, Handle("a", 100));
  AdapterLease a2 = Ready(*cache, Handle("a", 100));
  cache->Evict("a", 1);
  EXPECT_EQ(a.adapter()->name, "a@1");  // Running requests keep their weights.
  EXPECT_EQ(cache->Stats().device_bytes, 100);
  a = AdapterLease();
  EXPECT_EQ(cache->Stats().device_bytes, 100);
  a2 = AdapterLease();
  EXPECT_EQ(cache->Stats().device_bytes, 0);
  EXPECT_EQ(cache->Stats().host_bytes, 0);
  EXPECT_EQ(cache->State({"a", 1}).residency, AdapterResidency::kDisk);
}

TEST_F(AdapterCacheTest, EvictingAllVersionsOfAnIdDropsEachIdleOneAtOnce) {
  auto cache = MakeCache(1000, 1000);
  Ready(*cache, Handle("a", 100, 1));
  Ready(*cache, Handle("a", 100, 2));
  Ready(*cache, Handle("b", 100, 1));
  cache->Evict("a", 0);
  EXPECT_EQ(cache->Stats().device_bytes, 100);
  EXPECT_EQ(cache->State({"b", 1}).residency, AdapterResidency::kDevice);
}

TEST_F(AdapterCacheTest, ResourceExhaustedOnlyWhenPinnedAdaptersFillTheBudget) {
  auto cache = MakeCache(250);
  for (const char* id : {"a", "b", "c"}) Ready(*cache, Handle(id, 100));  // Sizes now known.
  ASSERT_TRUE(cache->Prefetch(Handle("a", 100), /*pin=*/true).ok());
  ASSERT_TRUE(cache->Prefetch(Handle("b", 100), /*pin=*/true).ok());
  cache->WaitIdle();
  absl::Status pin_c = cache->Prefetch(Handle("c", 100), /*pin=*/true);
  EXPECT_EQ(pin_c.code(), absl::StatusCode::kResourceExhausted) << pin_c;
  absl::StatusOr<AdapterLease> c = cache->Acquire(Handle("c", 100));
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  // A small one still fits beside the pins, and unpinning makes room again.
  AdapterLease small = Ready(*cache, Handle("s", 50));
  small = AdapterLease();
  cache->Unpin({"b", 1});
  AdapterLease c2 = Ready(*cache, Handle("c", 100));
  EXPECT_EQ(c2.adapter()->name, "c@1");
  EXPECT_EQ(cache->State({"a", 1}).residency, AdapterResidency::kDevice);
  EXPECT_TRUE(cache->State({"a", 1}).pinned);
}

TEST_F(AdapterCacheTest, AnAdapterLargerThanTheBudgetFailsItsLeaseWithResourceExhausted) {
  auto cache = MakeCache(100);
  absl::StatusOr<AdapterLease> big = cache->Acquire(Handle("big", 500));
  ASSERT_TRUE(big.ok());
  cache->WaitIdle();
  ASSERT_TRUE(big->ready());
  EXPECT_EQ(big->status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(cache->Stats().device_bytes, 0);
}

TEST_F(AdapterCacheTest, ALoadFailureReachesTheLeaseAndIsRetriedLater) {
  auto cache = MakeCache(100);
  absl::StatusOr<AdapterLease> bad = cache->Acquire(Handle("bad", -1));
  ASSERT_TRUE(bad.ok());
  cache->WaitIdle();
  ASSERT_TRUE(bad->ready());
  EXPECT_EQ(bad->status().code(), absl::StatusCode::kInvalidArgument);
  *bad = AdapterLease();
  AdapterLease good = Ready(*cache, Handle("bad", 10));
  EXPECT_EQ(good.adapter()->num_bytes, 10);
}

TEST_F(AdapterCacheTest, BudgetIsNeverExceededUnderConcurrentChurn) {
  constexpr int64_t kBudget = 1600;
  auto cache = MakeCache(kBudget, 800, /*workers=*/2);
  std::atomic<bool> stop{false};
  std::atomic<int64_t> max_seen{0};
  std::thread watcher([&] {
    while (!stop) {
      const AdapterCacheStats s = cache->Stats();
      int64_t m = max_seen;
      while (s.device_bytes > m && !max_seen.compare_exchange_weak(m, s.device_bytes)) {}
      EXPECT_LE(s.host_bytes, 800 + kBudget);  // Host copies needed by waiting loads may overshoot.
    }
  });
  std::vector<std::thread> clients;
  std::atomic<int> wrong{0};
  for (int t = 0; t < 4; ++t) {
    clients.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 300; ++i) {
        const int k = static_cast<int>(rng() % 64);
        const std::string id = absl::StrCat("x", k);
        absl::StatusOr<AdapterLease> lease = cache->Acquire(Handle(id, 50 + 10 * (k % 7)));
        ASSERT_TRUE(lease.ok()) << lease.status();
        while (!lease->ready()) std::this_thread::yield();
        ASSERT_TRUE(lease->status().ok()) << lease->status();
        if (lease->adapter()->name != absl::StrCat(id, "@1")) ++wrong;
        if (rng() % 8 == 0) cache->Evict(id, 1);
      }
    });
  }
  for (auto& c : clients) c.join();
  stop = true;
  watcher.join();
  EXPECT_EQ(wrong, 0);
  EXPECT_LE(max_seen, kBudget);
  EXPECT_GT(max_seen, 0);
  EXPECT_GT(cache->Stats().evictions, 0);
}

}  // namespace
}  // namespace adapterd
