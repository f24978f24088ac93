#include "engine/runtime/sequence.h"

#include <algorithm>

namespace adapterd {

Sequence::Sequence(GenerateRequest request, std::shared_ptr<GenerateSink> sink,
                   std::vector<int32_t> prompt_ids, const Tokenizer* tokenizer,
                   std::vector<int32_t> eos_ids, int64_t max_len, uint64_t seed)
    : request_(std::move(request)),
      sink_(std::move(sink)),
      prompt_ids_(std::move(prompt_ids)),
      eos_ids_(std::move(eos_ids)),
      max_len_(max_len),
      sampler_(request_.sampling, seed),
      decoder_(tokenizer, prompt_ids_, /*skip_special_tokens=*/true) {}

std::vector<int32_t> Sequence::PendingTokens() const {
  if (cached_ == 0) return prompt_ids_;
  return {generated_.back()};
}

void Sequence::MarkCached() {
  cached_ = static_cast<int64_t>(prompt_ids_.size() + generated_.size());
}

bool Sequence::Append(const SampledToken& token) {
  generated_.push_back(token.id);
  GeneratedToken out;
  out.id = token.id;
  out.logprob = token.logprob;
  out.top = token.top;
  const SamplingParams& params = request_.sampling;
  const bool is_eos =
      std::find(eos_ids_.begin(), eos_ids_.end(), token.id) != eos_ids_.end();
  if (is_eos && !params.ignore_eos) {
    finish_reason_ = FinishReason::kEos;
  } else {
    text_ += decoder_.Push(token.id);
  }
  const size_t before = released_;
  const bool length_done = static_cast<int>(generated_.size()) >= params.max_tokens;
  const bool context_done =
      static_cast<int64_t>(prompt_ids_.size() + generated_.size()) >= max_len_;
  const bool final = finish_reason_.has_value() || length_done || context_done;
  if (final && !finish_reason_) text_ += decoder_.Flush();
  ReleaseText(final);
  out.text = text_.substr(before, released_ - before);
  output_.push_back(std::move(out));
  if (!finish_reason_ && length_done) finish_reason_ = FinishReason::kLength;
  if (!finish_reason_ && context_done) finish_reason_ = FinishReason::kContextLength;
  return finish_reason_.has_value();
}

void Sequence::ReleaseText(bool final) {
  const std::vector<std::string>& stops = request_.sampling.stop;
  // A stop sequence may straddle earlier text that was held back; search from
  // the earliest byte where a new match could begin.
  size_t longest = 0;
  for (const std::string& s : stops) longest = std::max(longest, s.size());
  const size_t search_from = released_ >= longest ? released_ - longest + 1 : 0;
  size_t first_match = std::string::npos;
  for (const std::string& s : stops) {
    const size_t pos = text_.find(s, search_from);
    if (pos != std::string::npos && pos >= released_) first_match = std::min(first_match, pos);
  }
  if (first_match != std::string::npos) {
    text_.resize(first_match);
    released_ = first_match;
    finish_reason_ = FinishReason::kStop;
    return;
  }
  if (final) {
    released_ = text_.size();
    return;
  }
  // Hold back the longest suffix that is a proper prefix of a stop sequence.
  size_t hold = 0;
  for (const std::string& s : stops) {
    for (size_t len = std::min(s.size() - 1, text_.size() - released_); len > hold; --len) {
      if (text_.compare(text_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  released_ = text_.size() - hold;
}

std::vector<GeneratedToken> Sequence::TakeOutput() {
  std::vector<GeneratedToken> out;
  out.swap(output_);
  return out;
}

GenerateResult Sequence::result() const {
  GenerateResult r;
  r.finish_reason = finish_reason_.value_or(FinishReason::kLength);
  r.prompt_tokens = static_cast<int>(prompt_ids_.size());
  r.completion_tokens = static_cast<int>(generated_.size());
  return r;
}

absl::Status Sequence::CheckAlive(absl::Time now) const {
  if (request_.cancel && request_.cancel->cancelled()) {
    return absl::CancelledError("request cancelled by the client");
  }
  if (now >= request_.deadline) return absl::DeadlineExceededError("deadline exceeded");
  return absl::OkStatus();
}

}  // namespace adapterd
