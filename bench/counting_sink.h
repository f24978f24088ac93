#pragma once

// What the engine benchmarks count per request: tokens, and finished requests
// a round waits for; a round submitted and waited for. Torch-free (engine/api
// only).

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "engine/api/engine.h"

namespace adapterd::bench {

// Counts a request's tokens; on finish, decrements `*remaining` under `*mu`
// and wakes `*cv` (the round waits for zero). Failures are printed.
class CountingSink : public GenerateSink {
 public:
  CountingSink(std::mutex* mu, std::condition_variable* cv, int* remaining)
      : mu_(mu), cv_(cv), remaining_(remaining) {}
  void OnTokens(std::vector<GeneratedToken> tokens) override { tokens_ += tokens.size(); }
  void OnFinish(absl::Status status, const GenerateResult&) override {
    if (!status.ok()) std::fprintf(stderr, "request failed: %s\n", status.ToString().c_str());
    std::lock_guard<std::mutex> lock(*mu_);
    --*remaining_;
    cv_->notify_all();
  }
  size_t tokens() const { return tokens_; }

 private:
  std::mutex* mu_;
  std::condition_variable* cv_;
  int* remaining_;
  size_t tokens_ = 0;
};

// One timed round of requests.
struct Round {
  double seconds = 0;
  int64_t steps = 0;
  int64_t tokens = 0;
};

// What SubmitAndWait does with a request the engine refuses: end the process
// (the round would measure fewer requests than it reports), or print it and
// go on without it.
enum class OnRefused { kExit, kSkip };

// Submits every request at once and waits until all have finished: the wall
// time, the engine steps taken and the tokens generated.
inline Round SubmitAndWait(Engine& engine, std::vector<GenerateRequest> requests,
                           OnRefused on_refused = OnRefused::kExit) {
  std::mutex mu;
  std::condition_variable cv;
  int remaining = static_cast<int>(requests.size());
  std::vector<std::shared_ptr<CountingSink>> sinks;
  const EngineStats before = engine.Stats();
  const auto start = std::chrono::steady_clock::now();
  for (GenerateRequest& req : requests) {
    auto sink = std::make_shared<CountingSink>(&mu, &cv, &remaining);
    sinks.push_back(sink);
    absl::Status s = engine.Submit(std::move(req), sink);
    if (!s.ok()) {
      std::fprintf(stderr, "submit failed: %s\n", s.ToString().c_str());
      if (on_refused == OnRefused::kExit) std::exit(1);
      std::lock_guard<std::mutex> guard(mu);
      --remaining;
    }
  }
  std::unique_lock<std::mutex> lock(mu);
  cv.wait(lock, [&] { return remaining == 0; });
  const auto end = std::chrono::steady_clock::now();
  const EngineStats after = engine.Stats();
  Round r;
  r.seconds = std::chrono::duration<double>(end - start).count();
  r.steps = after.steps - before.steps;
  for (auto& s : sinks) r.tokens += static_cast<int64_t>(s->tokens());
  return r;
}

}  // namespace adapterd::bench
