#pragma once

// The stages of a Hugging Face tokenizer pipeline around the model, built from
// the matching `tokenizer.json` sections, with the semantics of `tokenizers`
// 0.22: normalizers, pre-tokenizers, post-processors and decoders.
// Engine-internal; torch-free. All stages are immutable after parsing and
// thread-safe.
//
// Supported types: normalizers NFC, NFD, Prepend, Replace, Strip, ByteLevel,
// Sequence; pre-tokenizers ByteLevel, Split, Metaspace, Digits, Whitespace,
// WhitespaceSplit, Sequence; post-processors TemplateProcessing (single
// sequence), ByteLevel, Sequence; decoders ByteLevel, Replace, ByteFallback,
// Fuse, Strip, Metaspace, Sequence.
// Parse* return INVALID_ARGUMENT naming the component for an unsupported
// `type` ("unsupported normalizer type 'Lowercase'") and for malformed fields.

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adapterd {

// Debian's abseil has its own absl::string_view; this bridges std::string_view.
inline absl::string_view AbslView(std::string_view s) { return {s.data(), s.size()}; }

// Field accessors for tokenizer.json objects; a missing or mistyped field is
// INVALID_ARGUMENT "malformed tokenizer.json: <where>.<key>: ...".
absl::StatusOr<const nlohmann::json*> JsonField(const nlohmann::json& j, std::string_view key,
                                                std::string_view where);
absl::StatusOr<std::string> JsonString(const nlohmann::json& j, std::string_view key,
                                       std::string_view where);
// A missing or null field gives `fallback`.
absl::StatusOr<bool> JsonBool(const nlohmann::json& j, std::string_view key, std::string_view where,
                              bool fallback);
absl::StatusOr<int64_t> JsonInt(const nlohmann::json& j, std::string_view key,
                                std::string_view where);
absl::Status MalformedError(std::string_view where, std::string_view what);

// A PCRE2 pattern (UTF, Unicode properties) searched like `tokenizers`'
// Oniguruma SysRegex. `\s`/`\S` are rewritten to Oniguruma's White_Space set.
class TokenizerRegex {
 public:
  // `literal` escapes `pattern` (a `{"String": ...}` pattern).
  static absl::StatusOr<std::shared_ptr<const TokenizerRegex>> Compile(std::string_view pattern,
                                                                       bool literal);
  ~TokenizerRegex();
  TokenizerRegex(const TokenizerRegex&) = delete;
  TokenizerRegex& operator=(const TokenizerRegex&) = delete;

  // Match ranges [start, end) in `text`, like onig's find_iter (an empty
  // match right after the previous match is skipped).
  std::vector<std::pair<size_t, size_t>> FindAll(std::string_view text) const;

  // (range, is_match) covering all of non-empty `text`, like Pattern::find_matches.
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> Segments(std::string_view text) const;

 private:
  explicit TokenizerRegex(void* code) : code_(code) {}
  void* code_;  // pcre2_code_8*, owned.
};

// GPT-2's byte -> printable character table, as UTF-8 strings.
const std::array<std::string, 256>& ByteLevelChars();
// Inverse of ByteLevelChars: code point -> byte, or -1.
int ByteLevelByte(char32_t cp);

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // REQUIRES: `text` is valid UTF-8; it stays valid UTF-8.
  virtual void Normalize(std::string* text) const = 0;
};
absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const nlohmann::json& j);

// A piece of text between pre-tokenization steps.
struct PreToken {
  std::string text;
  bool at_start;  // Starts at offset 0 of the original input (Metaspace "first").
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Replaces `pieces` by their splits; empty pieces are dropped.
  virtual void PreTokenize(std::vector<PreToken>* pieces) const = 0;
};
absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const nlohmann::json& j);

class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  // Single-sequence processing of the ids of an encoding.
  virtual void Process(std::vector<int32_t>* ids, bool add_special_tokens) const = 0;
};
absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const nlohmann::json& j);

class TokenDecoder {
 public:
  virtual ~TokenDecoder() = default;
  // `tokenizers`' decode_chain. With `raw_bytes`, byte-producing steps
  // (ByteLevel, ByteFallback) keep invalid UTF-8 as bytes instead of U+FFFD,
  // so that a caller can hold back an incomplete character.
  virtual void DecodeChain(std::vector<std::string>* tokens, bool raw_bytes) const = 0;
};
absl::StatusOr<std::unique_ptr<TokenDecoder>> ParseDecoder(const nlohmann::json& j);

}  // namespace adapterd
