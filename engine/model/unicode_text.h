#pragma once

// UTF-8 helpers and Unicode canonical normalization (NFC/NFD) for the
// tokenizer. Self-contained: the tables are generated from Unicode 14.0 data
// (unicode_text_data.inc). Torch-free. Thread-safe (stateless).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace adapterd {

// Appends the UTF-8 encoding of `cp` to `out`.
void AppendUtf8(char32_t cp, std::string* out);

// Length of the well-formed UTF-8 sequence at `s[i]`, or 0 if the bytes there
// do not start one (invalid or truncated).
size_t ValidSequenceLength(std::string_view s, size_t i);

// Decodes the character at `s[*i]` and advances `*i`. REQUIRES: `s` is valid
// UTF-8 at `*i`.
char32_t NextCodePoint(std::string_view s, size_t* i);

// Code points of valid UTF-8 `s`.
std::vector<char32_t> ToCodePoints(std::string_view s);

bool IsValidUtf8(std::string_view s);

// Like Rust's String::from_utf8_lossy: each maximal invalid subpart becomes
// one U+FFFD.
std::string ToValidUtf8Lossy(std::string_view s);

// Number of bytes at the end of `s` that form a proper prefix of a valid UTF-8
// sequence (an incomplete character that more bytes may complete); 0 if none.
size_t IncompleteUtf8Suffix(std::string_view s);

// Unicode White_Space property.
bool IsWhiteSpace(char32_t cp);

// Canonical composition / decomposition of valid UTF-8 text.
std::string Nfc(std::string_view s);
std::string Nfd(std::string_view s);

}  // namespace adapterd
