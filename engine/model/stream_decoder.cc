#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "engine/model/tokenizer.h"
#include "engine/model/unicode_text.h"

namespace adapterd {
namespace {

// Tokens of the prompt kept as decode context (as TGI does).
constexpr size_t kPromptContext = 5;

}  // namespace

StreamDecoder::StreamDecoder(const Tokenizer* tokenizer, std::vector<int32_t> prompt_ids,
                             bool skip_special_tokens)
    : tokenizer_(tokenizer), skip_special_(skip_special_tokens), ids_(std::move(prompt_ids)) {
  read_offset_ = ids_.size();
  prefix_offset_ = ids_.size() > kPromptContext ? ids_.size() - kPromptContext : 0;
}

std::string StreamDecoder::Push(int32_t id) {
  ids_.push_back(id);
  const std::vector<int32_t> context(ids_.begin() + prefix_offset_, ids_.begin() + read_offset_);
  const std::vector<int32_t> window(ids_.begin() + prefix_offset_, ids_.end());
  const std::string prefix_text = tokenizer_->DecodeBytes(context, skip_special_);
  const std::string text = tokenizer_->DecodeBytes(window, skip_special_);
  if (text.size() <= prefix_text.size() || IncompleteUtf8Suffix(text) != 0) return std::string();
  std::string piece = ToValidUtf8Lossy(std::string_view(text).substr(prefix_text.size()));
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  return piece;
}

std::string StreamDecoder::Flush() {
  const std::vector<int32_t> context(ids_.begin() + prefix_offset_, ids_.begin() + read_offset_);
  const std::vector<int32_t> window(ids_.begin() + prefix_offset_, ids_.end());
  const std::string prefix_text = tokenizer_->DecodeBytes(context, skip_special_);
  const std::string text = tokenizer_->DecodeBytes(window, skip_special_);
  prefix_offset_ = read_offset_;
  read_offset_ = ids_.size();
  if (text.size() <= prefix_text.size()) return std::string();
  return ToValidUtf8Lossy(std::string_view(text).substr(prefix_text.size()));
}

}  // namespace adapterd
