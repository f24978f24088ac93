// The real engine with store adapters served through its loaded-adapter cache
// (AdapterHandle on requests), on the tiny Llama fixture and the adapters of
// scripts/fixtures/make_adapters.py. Through engine/api only.

#include <atomic>
#include <chrono>
#include <map>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "engine/api/engine.h"
#include "tests/runtime/collecting_sink.h"
#include "gtest/gtest.h"
#include "tests/common/fixtures.h"

namespace adapterd {
namespace {

using ::adapterd::testing::FixturesDir;

std::string AdapterDir(const std::string& name) {
  return FixturesDir() + "/adapters/llama/" + name;
}

using Sink = testing::CollectingSink;
using testing::Output;

AdapterHandle Handle(const std::string& fixture, const std::string& id, int64_t version = 1) {
  AdapterHandle h;
  h.name = fixture;
  h.adapter_id = id;
  h.version = version;
  h.dir = AdapterDir(fixture);
  return h;
}

GenerateRequest Greedy(int max_tokens) {
  GenerateRequest req;
  req.prompt = "The adapter cache keeps";
  req.sampling.max_tokens = max_tokens;
  req.sampling.ignore_eos = true;
  return req;
}

std::unique_ptr<Engine> MakeEngine(int64_t cache_bytes, std::vector<AdapterSpec> statics = {}) {
  EngineOptions options;
  options.model_dir = FixturesDir() + "/models/llama";
  options.limits.max_batch_size = 4;
  options.limits.max_queue = 64;
  options.adapter_cache_bytes = cache_bytes;
  options.adapter_host_cache_bytes = 0;
  options.adapters = std::move(statics);
  absl::StatusOr<std::unique_ptr<Engine>> engine = CreateEngine(options);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return engine.ok() ? *std::move(engine) : nullptr;
}

Output RunAlone(Engine& engine, GenerateRequest req) {
  auto sink = std::make_shared<Sink>();
  absl::Status s = engine.Submit(std::move(req), sink);
  if (!s.ok()) {
    Output failed;
    failed.status = s;
    return failed;
  }
  return sink->Wait();
}

const std::vector<std::string> kFixtures = {"lora", "lora_dora", "prompt_tuning", "prefix",
                                            "houlsby", "pfeiffer"};

TEST(EngineAdapterCacheTest, AStoreAdapterGivesTheSameTokensAsTheStaticAdapter) {
  std::vector<AdapterSpec> statics;
  for (const std::string& f : kFixtures) statics.push_back({f, AdapterDir(f)});
  auto engine = MakeEngine(int64_t{1} << 30, statics);
  ASSERT_NE(engine, nullptr);
  const Output base = RunAlone(*engine, Greedy(8));
  ASSERT_TRUE(base.status.ok()) << base.status;
  for (const std::string& f : kFixtures) {
    GenerateRequest by_name = Greedy(8);
    by_name.adapter = f;
    const Output expected = RunAlone(*engine, by_name);
    GenerateRequest by_handle = Greedy(8);
    by_handle.adapter = f;
    by_handle.adapter_handle = Handle(f, "id-" + f);
    const Output got = RunAlone(*engine, by_handle);
    ASSERT_TRUE(got.status.ok()) << f << ": " << got.status;
    EXPECT_EQ(got.ids, expected.ids) << f;
    EXPECT_NE(got.ids, base.ids) << f << " (negative control: the adapter changes the output)";
  }
  const AdapterCacheStats s = engine->Stats().adapter_cache;
  EXPECT_EQ(s.misses, static_cast<int64_t>(kFixtures.size()));
  EXPECT_EQ(s.loads, static_cast<int64_t>(kFixtures.size()));
  EXPECT_EQ(s.static_adapters, static_cast<int64_t>(kFixtures.size()));
  EXPECT_GT(s.device_bytes, 0);
  engine->Shutdown(absl::Seconds(5));
}

TEST(EngineAdapterCacheTest, ValidatesAgainstTheBaseModel) {
  auto engine = MakeEngine(int64_t{1} << 30);
  ASSERT_NE(engine, nullptr);
  absl::StatusOr<AdapterValidation> ok = engine->ValidateAdapter(AdapterDir("lora"));
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->method, "lora");
  EXPECT_EQ(ok->base_fingerprint, engine->info().fingerprint);
  EXPECT_GT(ok->weight_bytes, 0);
  absl::StatusOr<AdapterValidation> bad =
      engine->ValidateAdapter(FixturesDir() + "/adapters/bad/gpt2_adapter_on_llama");
  EXPECT_FALSE(bad.ok());
  absl::StatusOr<AdapterValidation> rank =
      engine->ValidateAdapter(FixturesDir() + "/adapters/bad/rank_mismatch");
  EXPECT_FALSE(rank.ok());
  engine->Shutdown(absl::Seconds(5));
}

// A cache that holds about one adapter: requests over several adapters, many
// in flight, each equal to that adapter run alone, none failing, and the
// device tier never above its budget.
TEST(EngineAdapterCacheTest, ASmallCacheServesEveryAdapterCorrectlyWithinItsBudget) {
  auto solo_engine = MakeEngine(int64_t{1} << 30);
  ASSERT_NE(solo_engine, nullptr);
  std::map<std::string, std::vector<int32_t>> solo;
  int64_t largest = 0;
  for (const std::string& f : kFixtures) {
    GenerateRequest req = Greedy(6);
    req.adapter_handle = Handle(f, "id-" + f);
    const Output out = RunAlone(*solo_engine, req);
    ASSERT_TRUE(out.status.ok()) << out.status;
    solo[f] = out.ids;
    largest = std::max(largest, solo_engine->CachedAdapterState("id-" + f, 1).bytes);
  }
  solo_engine->Shutdown(absl::Seconds(5));
  ASSERT_GT(largest, 0);

  const int64_t budget = largest + largest / 2;
  auto engine = MakeEngine(budget);
  ASSERT_NE(engine, nullptr);
  std::vector<std::pair<std::string, std::shared_ptr<Sink>>> calls;
  for (int i = 0; i < 24; ++i) {
    const std::string& f = kFixtures[(i * 7) % kFixtures.size()];
    GenerateRequest req = Greedy(6);
    req.adapter_handle = Handle(f, "id-" + f);
    auto sink = std::make_shared<Sink>();
    ASSERT_TRUE(engine->Submit(std::move(req), sink).ok());
    calls.emplace_back(f, sink);
    const AdapterCacheStats s = engine->Stats().adapter_cache;
    EXPECT_LE(s.device_bytes, budget);
  }
  std::atomic<bool> stop{false};
  std::atomic<int64_t> max_seen{0};
  std::thread watcher([&] {
    while (!stop) {
      max_seen = std::max<int64_t>(max_seen, engine->Stats().adapter_cache.device_bytes);
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  for (auto& [f, sink] : calls) {
    const Output out = sink->Wait();
    ASSERT_TRUE(out.status.ok()) << f << ": " << out.status;
    EXPECT_EQ(out.ids, solo[f]) << f;
  }
  stop = true;
  watcher.join();
  EXPECT_LE(max_seen, budget);
  EXPECT_GT(max_seen, 0);
  const AdapterCacheStats s = engine->Stats().adapter_cache;
  EXPECT_GT(s.evictions, 0);
  EXPECT_GT(s.misses, static_cast<int64_t>(kFixtures.size()));  // Evicted ones came back.
  engine->Shutdown(absl::Seconds(5));
}

TEST(EngineAdapterCacheTest, ARunningRequestFinishesOnAnAdapterDeletedUnderIt) {
  auto engine = MakeEngine(int64_t{1} << 30);
  ASSERT_NE(engine, nullptr);
  GenerateRequest solo_req = Greedy(24);
  solo_req.adapter_handle = Handle("lora", "id-lora");
  const Output solo = RunAlone(*engine, solo_req);
  ASSERT_TRUE(solo.status.ok());
  engine->EvictAdapter("id-lora", 1);

  GenerateRequest req = Greedy(24);
  req.adapter_handle = Handle("lora", "id-lora");
  auto sink = std::make_shared<Sink>();
  ASSERT_TRUE(engine->Submit(std::move(req), sink).ok());
  sink->WaitTokens(2);
  engine->EvictAdapter("id-lora", 1);
  EXPECT_GT(engine->Stats().adapter_cache.device_bytes, 0);  // Still held by the request.
  const Output out = sink->Wait();
  ASSERT_TRUE(out.status.ok()) << out.status;
  EXPECT_EQ(out.ids, solo.ids);
  for (int i = 0; i < 200 && engine->Stats().adapter_cache.device_bytes > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(engine->Stats().adapter_cache.device_bytes, 0);  // Returned after the release.
  engine->Shutdown(absl::Seconds(5));
}

TEST(EngineAdapterCacheTest, LoadPinsAndUnloadReleases) {
  auto engine = MakeEngine(int64_t{1} << 30);
  ASSERT_NE(engine, nullptr);
  ASSERT_TRUE(engine->LoadAdapter(Handle("lora", "id-lora"), /*pin=*/true).ok());
  for (int i = 0; i < 500; ++i) {
    if (engine->CachedAdapterState("id-lora", 1).residency == AdapterResidency::kDevice) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  AdapterCacheState state = engine->CachedAdapterState("id-lora", 1);
  EXPECT_EQ(state.residency, AdapterResidency::kDevice);
  EXPECT_TRUE(state.pinned);
  EXPECT_EQ(engine->Stats().adapter_cache.pinned_adapters, 1);
  ASSERT_TRUE(engine->UnloadAdapter("id-lora", 1).ok());
  EXPECT_FALSE(engine->CachedAdapterState("id-lora", 1).pinned);
  EXPECT_EQ(engine->Stats().adapter_cache.pinned_adapters, 0);
  engine->Shutdown(absl::Seconds(5));
}

TEST(EngineAdapterCacheTest, ABadAdapterFailsItsRequestNotTheEngine) {
  auto engine = MakeEngine(int64_t{1} << 30);
  ASSERT_NE(engine, nullptr);
  GenerateRequest req = Greedy(4);
  req.adapter_handle = Handle("lora", "id-bad");
  req.adapter_handle->dir = FixturesDir() + "/adapters/bad/nan_weights";
  const Output out = RunAlone(*engine, req);
  EXPECT_FALSE(out.status.ok());
  const Output base = RunAlone(*engine, Greedy(4));
  EXPECT_TRUE(base.status.ok()) << base.status;
  EXPECT_EQ(engine->Stats().adapter_cache.load_failures, 1);
  engine->Shutdown(absl::Seconds(5));
}

}  // namespace
}  // namespace adapterd
