#pragma once

// A GenerateSink for engine tests: collects a generation's tokens and lets
// the test wait for them.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "engine/api/engine.h"

namespace adapterd::testing {

struct Output {
  int64_t first_token_order = -1;  // Global order in which first tokens arrived.
  absl::Status status;
  GenerateResult result;
  std::vector<int32_t> ids;
  std::vector<float> logprobs;
  std::string text;
};

inline std::atomic<int64_t> first_token_counter{0};

// Collects a generation; Wait() blocks until OnFinish. Thread-safe.
class CollectingSink : public GenerateSink {
 public:
  void OnTokens(std::vector<GeneratedToken> tokens) override {
    std::lock_guard<std::mutex> lock(mu_);
    if (out_.first_token_order < 0) out_.first_token_order = first_token_counter++;
    for (auto& t : tokens) {
      out_.ids.push_back(t.id);
      out_.logprobs.push_back(t.logprob);
      out_.text += t.text;
    }
    cv_.notify_all();
  }
  void OnFinish(absl::Status status, const GenerateResult& result) override {
    std::lock_guard<std::mutex> lock(mu_);
    out_.status = status;
    out_.result = result;
    done_ = true;
    cv_.notify_all();
  }
  Output Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_; });
    return out_;
  }
  // Blocks until at least `n` tokens arrived (or the request ended).
  void WaitTokens(size_t n) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [&] { return done_ || out_.ids.size() >= n; });
  }
  size_t tokens() {
    std::lock_guard<std::mutex> lock(mu_);
    return out_.ids.size();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  Output out_;
  bool done_ = false;
};

}  // namespace adapterd::testing
