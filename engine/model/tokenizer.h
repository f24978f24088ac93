#pragma once

// Tokenizer loaded from a Hugging Face `tokenizer.json`. Torch-free.
//
// Supported pipelines:
//  - byte-level BPE (GPT-2, Llama-3, Qwen2): ByteLevel / Split(regex) / Sequence
//    pre-tokenizers, NFC normalizer, BPE with optional ignore_merges;
//  - SentencePiece-style BPE with byte fallback (Llama-2, Mistral): Prepend /
//    Replace normalizers or Metaspace pre-tokenizer, `<0xAB>` byte tokens,
//    decoder Replace/ByteFallback/Fuse/Strip.
// Added/special tokens are matched leftmost-longest before the model runs.
// Thread-safe after construction (all methods are const).

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace adapterd {

class Tokenizer {
 public:
  // INVALID_ARGUMENT names the unsupported component or the malformed field;
  // NOT_FOUND if the file is missing.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path);
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json);

  virtual ~Tokenizer() = default;

  // Same ids as `tokenizers`' encode(text, add_special_tokens). With
  // `parse_special` false, special added tokens in the text are not matched
  // (encode_special_tokens=true in `tokenizers`).
  virtual std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens = true,
                                      bool parse_special = true) const = 0;

  // Raw bytes the ids stand for, through the tokenizer's decoder (may end
  // in an incomplete UTF-8 sequence). Special tokens are skipped when asked.
  virtual std::string DecodeBytes(const std::vector<int32_t>& ids,
                                  bool skip_special_tokens = false) const = 0;

  // DecodeBytes with invalid UTF-8 replaced by U+FFFD, like `tokenizers`' decode.
  virtual std::string Decode(const std::vector<int32_t>& ids,
                             bool skip_special_tokens = false) const = 0;

  virtual int64_t vocab_size() const = 0;  // Including added tokens (max id + 1).
  virtual std::optional<int32_t> TokenToId(std::string_view token) const = 0;
  virtual std::optional<std::string> IdToToken(int32_t id) const = 0;
  virtual bool IsSpecial(int32_t id) const = 0;
};

// Turns a stream of token ids into a stream of valid UTF-8 text pieces:
// bytes of an incomplete character are held back until it completes.
// Not thread-safe; one per sequence.
class StreamDecoder {
 public:
  // `tokenizer` must outlive the decoder. `prompt_ids` give context for
  // decoders that depend on the previous tokens (e.g. SentencePiece's leading space).
  StreamDecoder(const Tokenizer* tokenizer, std::vector<int32_t> prompt_ids,
                bool skip_special_tokens = true);

  // Appends `id` and returns the newly completed text (possibly empty).
  std::string Push(int32_t id);
  // Returns what is still held back, invalid bytes replaced by U+FFFD.
  std::string Flush();

 private:
  const Tokenizer* tokenizer_;
  bool skip_special_;
  std::vector<int32_t> ids_;
  size_t prefix_offset_ = 0;  // ids_[prefix_offset_, read_offset_) give the decode context.
  size_t read_offset_ = 0;    // Text for ids_ before this index has been emitted.
};

}  // namespace adapterd
