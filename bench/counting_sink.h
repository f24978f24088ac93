#pragma once

// What the engine benchmarks count per request: tokens, and finished requests
// a round waits for. Torch-free (engine/api only).

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <mutex>
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

}  // namespace adapterd::bench
