#pragma once

// One generation request while it runs: its tokens, its cache slot, its
// sampler, and the text it has streamed so far (incomplete UTF-8 and
// possible stop-sequence prefixes held back). Torch-free.
// Not thread-safe; owned by the engine thread.

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "engine/api/engine.h"
#include "engine/model/tokenizer.h"
#include "engine/runtime/sampler.h"

namespace adapterd {

class Sequence {
 public:
  // `tokenizer` must outlive the sequence. `max_len` is the slot's capacity.
  Sequence(GenerateRequest request, std::shared_ptr<GenerateSink> sink,
           std::vector<int32_t> prompt_ids, const Tokenizer* tokenizer,
           std::vector<int32_t> eos_ids, int64_t max_len, uint64_t seed);

  const GenerateRequest& request() const { return request_; }
  int slot() const { return slot_; }
  void set_slot(int slot) { slot_ = slot; }

  // Tokens already in the KV cache, and the ones to run next (the whole
  // prompt before the first step, then the last sampled token).
  int64_t cached_tokens() const { return cached_; }
  std::vector<int32_t> PendingTokens() const;
  // Records that PendingTokens() went through the model.
  void MarkCached();

  // Takes the token chosen from this step's logits; returns true when the
  // sequence has finished (then finish_reason() is set).
  bool Append(const SampledToken& token);
  std::optional<FinishReason> finish_reason() const { return finish_reason_; }

  // The output produced since the last call, ready for GenerateSink::OnTokens.
  std::vector<GeneratedToken> TakeOutput();

  Sampler& sampler() { return sampler_; }
  GenerateResult result() const;

  // Whether the request was cancelled or its deadline passed; the status to finish with.
  absl::Status CheckAlive(absl::Time now) const;

  GenerateSink* sink() { return sink_.get(); }

 private:
  // Releases text up to the point no stop sequence could still start.
  void ReleaseText(bool final);

  GenerateRequest request_;
  std::shared_ptr<GenerateSink> sink_;
  std::vector<int32_t> prompt_ids_;
  std::vector<int32_t> generated_;
  std::vector<int32_t> eos_ids_;
  int64_t max_len_;
  int slot_ = -1;
  int64_t cached_ = 0;
  Sampler sampler_;
  StreamDecoder decoder_;
  std::string text_;         // Decoded completion text so far.
  size_t released_ = 0;      // Bytes of text_ already given to the sink.
  std::vector<GeneratedToken> output_;
  std::optional<FinishReason> finish_reason_;
};

}  // namespace adapterd
