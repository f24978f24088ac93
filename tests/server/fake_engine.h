#pragma once

// A deterministic stand-in for the engine behind engine/api/engine.h, for
// testing the gRPC frontend without a model. It runs one engine thread that,
// like the real one, advances every running request by one token per step
// (continuous batching), honours cancellation tokens and deadlines, queues
// beyond max_batch_size and refuses beyond max_queue. It records what it saw.
//
// Training (ValidateTraining/Train) is a stand-in too: it reads the JSONL
// dataset per the dataset policy of engine/api/training.h (malformed lines,
// empty completions), steps on the calling thread with a delay per step,
// reports progress, honours the cancellation token, checkpoints its step
// into work_dir/checkpoint every checkpoint_every steps and resumes from it,
// and writes a real small PEFT LoRA adapter into work_dir/output. A lora
// target named "bogus" is FAILED_PRECONDITION; a learning rate >= 10 fails
// the job at step 3 with INTERNAL (a diverging loss).

#include <cstdint>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "engine/api/engine.h"

namespace adapterd::testing {

struct FakeEngineOptions {
  int64_t vocab_size = 1000;
  int64_t context_length = 256;  // A prompt costs one token per byte (+1 for BOS).
  absl::Duration step_delay = absl::Milliseconds(1);
  int eos_after = -1;                         // Finish with kEos after this many tokens; -1: never.
  std::set<std::string> adapters = {"demo"};  // Known adapter names.
  EngineLimits limits;
  absl::Duration train_step_delay = absl::Milliseconds(2);
};

// Thread-safe.
class FakeEngine final : public Engine {
 public:
  explicit FakeEngine(FakeEngineOptions options = {});
  ~FakeEngine() override;

  // The i-th (0-based) token every request for (`adapter`, `prompt`) produces.
  static GeneratedToken TokenFor(const std::string& adapter, const std::string& prompt, int i,
                                 int64_t vocab_size);
  // The text of the first `n` tokens.
  static std::string ExpectedText(const std::string& adapter, const std::string& prompt, int n,
                                  int64_t vocab_size);

  // The next Submit/SubmitScore returns `status` without queueing.
  void FailNextSubmit(absl::Status status);
  void set_step_delay(absl::Duration delay);

  int submitted() const;                          // Requests accepted (generate and score).
  int cancellations() const;                      // Requests ended by their CancellationToken.
  int deadlines_exceeded() const;                 // Requests ended by their deadline.
  std::vector<GenerateRequest> requests() const;  // Accepted generate requests, in order.
  bool WaitForSubmitted(int n, absl::Duration timeout) const;
  bool WaitForCancellations(int n, absl::Duration timeout) const;
  bool WaitForIdle(absl::Duration timeout) const;  // No running or queued request.

  const ModelInfo& info() const override { return info_; }
  const EngineLimits& limits() const override { return options_.limits; }
  absl::Status Submit(GenerateRequest request, std::shared_ptr<GenerateSink> sink) override;
  absl::Status SubmitScore(ScoreRequest request, ScoreCallback done) override;
  EngineStats Stats() const override;
  void Shutdown(absl::Duration drain) override;
  absl::StatusOr<DatasetReport> ValidateTraining(const TrainingSpec& spec) const override;
  absl::StatusOr<TrainingResult> Train(const TrainingSpec& spec,
                                       const TrainingProgressCallback& progress,
                                       const CancellationToken& cancel) override;

  // Train calls so far, and the resumed_from_step of each.
  std::vector<int64_t> train_resumes() const;
  int trains_running() const;
  // The last spec ValidateTraining saw.
  TrainingSpec last_validated_spec() const;

 private:
  struct Job {
    GenerateRequest request;
    std::shared_ptr<GenerateSink> sink;  // Null for a score job.
    ScoreRequest score;
    ScoreCallback score_done;
    int prompt_tokens = 0;
    int produced = 0;
  };

  absl::Status Admit(const std::string& adapter) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Run();
  // One step over the running jobs; returns the finished ones' callbacks to run.
  void Step(std::vector<std::function<void()>>* calls) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const FakeEngineOptions options_;
  ModelInfo info_;

  mutable absl::Mutex mu_;                      // Guards everything below.
  std::vector<Job> jobs_ ABSL_GUARDED_BY(mu_);  // Running first, then queued.
  std::vector<GenerateRequest> requests_ ABSL_GUARDED_BY(mu_);
  absl::Status fail_next_ ABSL_GUARDED_BY(mu_);
  absl::Duration step_delay_ ABSL_GUARDED_BY(mu_);
  bool accepting_ ABSL_GUARDED_BY(mu_) = true;
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_) = absl::InfiniteFuture();
  int submitted_ ABSL_GUARDED_BY(mu_) = 0;
  int cancellations_ ABSL_GUARDED_BY(mu_) = 0;
  int deadlines_exceeded_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<int64_t> train_resumes_ ABSL_GUARDED_BY(mu_);
  int trains_running_ ABSL_GUARDED_BY(mu_) = 0;
  mutable TrainingSpec last_validated_spec_ ABSL_GUARDED_BY(mu_);
  EngineStats stats_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace adapterd::testing
