#include "engine/model/tokenizer_pipeline.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <nlohmann/json.hpp>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/model/unicode_text.h"

namespace adapterd {

using json = nlohmann::json;

absl::Status MalformedError(std::string_view where, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("malformed tokenizer.json: ", AbslView(where), ": ", AbslView(what)));
}

absl::StatusOr<const json*> JsonField(const json& j, std::string_view key, std::string_view where) {
  if (!j.is_object()) return MalformedError(where, "expected an object");
  auto it = j.find(std::string(key));
  if (it == j.end())
    return MalformedError(where, absl::StrCat("missing field '", AbslView(key), "'"));
  return &*it;
}

absl::StatusOr<std::string> JsonString(const json& j, std::string_view key,
                                       std::string_view where) {
  ASSIGN_OR_RETURN(const json* v, JsonField(j, key, where));
  if (!v->is_string())
    return MalformedError(where, absl::StrCat("'", AbslView(key), "' is not a string"));
  return v->get_ref<const std::string&>();
}

absl::StatusOr<bool> JsonBool(const json& j, std::string_view key, std::string_view where,
                              bool fallback) {
  if (!j.is_object()) return MalformedError(where, "expected an object");
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean())
    return MalformedError(where, absl::StrCat("'", AbslView(key), "' is not a bool"));
  return it->get<bool>();
}

absl::StatusOr<int64_t> JsonInt(const json& j, std::string_view key, std::string_view where) {
  ASSIGN_OR_RETURN(const json* v, JsonField(j, key, where));
  if (!v->is_number_integer()) {
    return MalformedError(where, absl::StrCat("'", AbslView(key), "' is not an integer"));
  }
  return v->get<int64_t>();
}

namespace {

absl::StatusOr<std::string> TypeOf(const json& j, std::string_view what) {
  if (!j.is_object()) return MalformedError(what, "expected an object");
  auto it = j.find("type");
  if (it == j.end() || !it->is_string()) return MalformedError(what, "missing string field 'type'");
  return it->get<std::string>();
}

absl::Status Unsupported(std::string_view what, std::string_view type) {
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported ", AbslView(what), " type '", AbslView(type), "'"));
}

// Oniguruma's \s is Unicode White_Space; PCRE2's also has U+180E.
constexpr std::string_view kWhiteSpaceClass =
    "\\t\\n\\x0B\\f\\r\\x20\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}"
    "\\x{202F}\\x{205F}\\x{3000}";

std::string RewriteForPcre2(std::string_view p) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\' && i + 1 < p.size()) {
      const char n = p[++i];
      if (n == 's') {
        absl::StrAppend(&out, in_class ? "" : "[", AbslView(kWhiteSpaceClass), in_class ? "" : "]");
      } else if (n == 'S' && !in_class) {
        absl::StrAppend(&out, "[^", AbslView(kWhiteSpaceClass), "]");
      } else {
        out.push_back(c);
        out.push_back(n);
      }
      continue;
    }
    if (c == '[' && !in_class) {
      in_class = true;
      out.push_back(c);
      if (i + 1 < p.size() && p[i + 1] == '^') out.push_back(p[++i]);
      if (i + 1 < p.size() && p[i + 1] == ']') out.push_back(p[++i]);
      continue;
    }
    if (c == '[' && in_class && i + 1 < p.size() && p[i + 1] == ':') {
      const size_t end = p.find(":]", i + 2);
      if (end != std::string_view::npos) {
        out.append(p.substr(i, end + 2 - i));
        i = end + 1;
        continue;
      }
    }
    if (c == ']' && in_class) in_class = false;
    out.push_back(c);
  }
  return out;
}

std::string EscapeLiteral(std::string_view s) {
  std::string out;
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace

absl::StatusOr<std::shared_ptr<const TokenizerRegex>> TokenizerRegex::Compile(
    std::string_view pattern, bool literal) {
  const std::string rewritten = literal ? EscapeLiteral(pattern) : RewriteForPcre2(pattern);
  int error = 0;
  PCRE2_SIZE offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(rewritten.data()), rewritten.size(),
                    PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &error, &offset, nullptr);
  if (code == nullptr) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(error, buf, sizeof(buf));
    return absl::InvalidArgumentError(absl::StrCat("unsupported regex '", AbslView(pattern),
                                                   "': ", reinterpret_cast<const char*>(buf),
                                                   " at ", offset));
  }
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);  // Falls back to the interpreter if unavailable.
  return std::shared_ptr<const TokenizerRegex>(new TokenizerRegex(code));
}

TokenizerRegex::~TokenizerRegex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

std::vector<std::pair<size_t, size_t>> TokenizerRegex::FindAll(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> out;
  auto* code = static_cast<pcre2_code*>(code_);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  size_t last_end = 0;
  bool have_last_match = false;
  size_t last_match_end = 0;
  while (last_end <= text.size()) {
    int rc = pcre2_match(code, subject, text.size(), last_end, 0, md, nullptr);
    if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
      // E.g. the JIT stack limit on a very long run: retry with the interpreter.
      rc = pcre2_match(code, subject, text.size(), last_end, PCRE2_NO_JIT, md, nullptr);
    }
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t s = ov[0], e = ov[1];
    if (s == e && have_last_match && last_match_end == e) {
      if (last_end >= text.size()) break;
      const size_t len = ValidSequenceLength(text, last_end);
      last_end += len == 0 ? 1 : len;
      continue;
    }
    last_end = e;
    have_last_match = true;
    last_match_end = e;
    out.emplace_back(s, e);
  }
  pcre2_match_data_free(md);
  return out;
}

std::vector<std::pair<std::pair<size_t, size_t>, bool>> TokenizerRegex::Segments(
    std::string_view text) const {
  std::vector<std::pair<std::pair<size_t, size_t>, bool>> out;
  if (text.empty()) {
    out.push_back({{0, 0}, false});
    return out;
  }
  size_t prev = 0;
  for (const auto& [s, e] : FindAll(text)) {
    if (prev != s) out.push_back({{prev, s}, false});
    out.push_back({{s, e}, true});
    prev = e;
  }
  if (prev != text.size()) out.push_back({{prev, text.size()}, false});
  return out;
}

const std::array<std::string, 256>& ByteLevelChars() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      AppendUtf8(printable ? static_cast<char32_t>(b) : static_cast<char32_t>(256 + n++), &t[b]);
    }
    return t;
  }();
  return table;
}

int ByteLevelByte(char32_t cp) {
  static const std::array<int16_t, 512> inverse = [] {
    std::array<int16_t, 512> inv;
    inv.fill(-1);
    const auto& chars = ByteLevelChars();
    for (int b = 0; b < 256; ++b) {
      size_t i = 0;
      inv[NextCodePoint(chars[b], &i)] = static_cast<int16_t>(b);
    }
    return inv;
  }();
  return cp < 512 ? inverse[cp] : -1;
}

namespace {

std::string ByteLevelMap(std::string_view s) {
  const auto& chars = ByteLevelChars();
  std::string out;
  out.reserve(s.size() * 2);
  for (unsigned char c : s) out.append(chars[c]);
  return out;
}

// Replaces every match of `re` in `text` by `content`.
std::string ReplaceAll(const TokenizerRegex& re, std::string_view text, std::string_view content) {
  std::string out;
  for (const auto& [range, is_match] : re.Segments(text)) {
    if (is_match) {
      out.append(content);
    } else {
      out.append(text.substr(range.first, range.second - range.first));
    }
  }
  return out;
}

absl::StatusOr<std::shared_ptr<const TokenizerRegex>> ParsePattern(const json& j,
                                                                   std::string_view where) {
  ASSIGN_OR_RETURN(const json* pattern, JsonField(j, "pattern", where));
  absl::StatusOr<std::shared_ptr<const TokenizerRegex>> re =
      MalformedError(where, "'pattern' must be {\"String\": s} or {\"Regex\": r}");
  if (pattern->is_object() && pattern->size() == 1) {
    if (pattern->contains("String") && (*pattern)["String"].is_string()) {
      re = TokenizerRegex::Compile((*pattern)["String"].get<std::string>(), /*literal=*/true);
    } else if (pattern->contains("Regex") && (*pattern)["Regex"].is_string()) {
      re = TokenizerRegex::Compile((*pattern)["Regex"].get<std::string>(), /*literal=*/false);
    }
  }
  if (!re.ok() && re.status().message().find("malformed") != 0) {
    return absl::InvalidArgumentError(absl::StrCat(AbslView(where), ": ", re.status().message()));
  }
  return re;
}

// ---- Normalizers ----

class NfcNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = Nfc(*text); }
};

class NfdNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = Nfd(*text); }
};

class PrependNormalizer : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prepend) : prepend_(std::move(prepend)) {}
  void Normalize(std::string* text) const override {
    if (!text->empty()) text->insert(0, prepend_);
  }

 private:
  std::string prepend_;
};

class ReplaceNormalizer : public Normalizer {
 public:
  ReplaceNormalizer(std::shared_ptr<const TokenizerRegex> re, std::string content)
      : re_(std::move(re)), content_(std::move(content)) {}
  void Normalize(std::string* text) const override { *text = ReplaceAll(*re_, *text, content_); }

 private:
  std::shared_ptr<const TokenizerRegex> re_;
  std::string content_;
};

class StripNormalizer : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  void Normalize(std::string* text) const override {
    std::vector<char32_t> cps = ToCodePoints(*text);
    size_t b = 0, e = cps.size();
    if (left_) {
      while (b < e && IsWhiteSpace(cps[b])) ++b;
    }
    if (right_) {
      while (e > b && IsWhiteSpace(cps[e - 1])) --e;
    }
    std::string out;
    for (size_t i = b; i < e; ++i) AppendUtf8(cps[i], &out);
    *text = std::move(out);
  }

 private:
  bool left_, right_;
};

class ByteLevelNormalizer : public Normalizer {
 public:
  void Normalize(std::string* text) const override { *text = ByteLevelMap(*text); }
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> parts)
      : parts_(std::move(parts)) {}
  void Normalize(std::string* text) const override {
    for (const auto& p : parts_) p->Normalize(text);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

// ---- Pre-tokenizers ----

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

absl::StatusOr<SplitBehavior> ParseBehavior(const json& j, std::string_view where) {
  ASSIGN_OR_RETURN(std::string b, JsonString(j, "behavior", where));
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  return MalformedError(where, absl::StrCat("unknown behavior '", b, "'"));
}

using Segment = std::pair<std::pair<size_t, size_t>, bool>;

// NormalizedString::split: applies `behavior` to find_matches output and
// appends the non-empty kept pieces of `piece` to `out`.
void SplitPiece(const PreToken& piece, std::vector<Segment> matches, SplitBehavior behavior,
                std::vector<PreToken>* out) {
  std::vector<Segment> splits;
  switch (behavior) {
    case SplitBehavior::kIsolated:
      for (auto& m : matches) splits.push_back({m.first, false});
      break;
    case SplitBehavior::kRemoved:
      splits = std::move(matches);
      break;
    case SplitBehavior::kContiguous: {
      bool previous_match = false;
      for (const auto& [off, is_match] : matches) {
        if (is_match == previous_match && !splits.empty()) {
          splits.back().first.second = off.second;
        } else {
          splits.push_back({off, false});
        }
        previous_match = is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool previous_match = false;
      for (const auto& [off, is_match] : matches) {
        if (is_match && !previous_match && !splits.empty()) {
          splits.back().first.second = off.second;
        } else {
          splits.push_back({off, false});
        }
        previous_match = is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool previous_match = false;
      for (auto it = matches.rbegin(); it != matches.rend(); ++it) {
        const auto& [off, is_match] = *it;
        if (is_match && !previous_match && !splits.empty()) {
          splits.back().first.first = off.first;
        } else {
          splits.push_back({off, false});
        }
        previous_match = is_match;
      }
      std::reverse(splits.begin(), splits.end());
      break;
    }
  }
  for (const auto& [off, remove] : splits) {
    if (remove || off.first == off.second) continue;
    out->push_back(PreToken{piece.text.substr(off.first, off.second - off.first),
                            piece.at_start && off.first == 0});
  }
}

class SplitPreTokenizer : public PreTokenizer {
 public:
  SplitPreTokenizer(std::shared_ptr<const TokenizerRegex> re, SplitBehavior behavior, bool invert)
      : re_(std::move(re)), behavior_(behavior), invert_(invert) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<PreToken> out;
    for (const PreToken& p : *pieces) {
      std::vector<Segment> m = re_->Segments(p.text);
      if (invert_) {
        for (auto& s : m) s.second = !s.second;
      }
      SplitPiece(p, std::move(m), behavior_, &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::shared_ptr<const TokenizerRegex> re_;
  SplitBehavior behavior_;
  bool invert_;
};

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

class ByteLevelPreTokenizer : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::shared_ptr<const TokenizerRegex> re)
      : add_prefix_space_(add_prefix_space), re_(std::move(re)) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<PreToken> split;
    for (PreToken& p : *pieces) {
      if (add_prefix_space_ && (p.text.empty() || p.text[0] != ' ')) p.text.insert(0, " ");
      if (re_ != nullptr) {
        SplitPiece(p, re_->Segments(p.text), SplitBehavior::kIsolated, &split);
      } else if (!p.text.empty()) {
        split.push_back(std::move(p));
      }
    }
    for (PreToken& p : split) p.text = ByteLevelMap(p.text);
    *pieces = std::move(split);
  }

 private:
  bool add_prefix_space_;
  std::shared_ptr<const TokenizerRegex> re_;  // Null without use_regex.
};

enum class PrependScheme { kFirst, kNever, kAlways };

class MetaspacePreTokenizer : public PreTokenizer {
 public:
  MetaspacePreTokenizer(std::string replacement, PrependScheme scheme, bool split)
      : replacement_(std::move(replacement)), scheme_(scheme), split_(split) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    std::vector<PreToken> out;
    for (PreToken& p : *pieces) {
      std::string text;
      for (char c : p.text) {
        if (c == ' ') {
          text.append(replacement_);
        } else {
          text.push_back(c);
        }
      }
      const bool starts = text.compare(0, replacement_.size(), replacement_) == 0;
      if (!starts &&
          (scheme_ == PrependScheme::kAlways || (scheme_ == PrependScheme::kFirst && p.at_start))) {
        text.insert(0, replacement_);
      }
      PreToken piece{std::move(text), p.at_start};
      if (!split_) {
        if (!piece.text.empty()) out.push_back(std::move(piece));
        continue;
      }
      std::vector<Segment> m;
      size_t last = 0;
      for (size_t pos = piece.text.find(replacement_); pos != std::string::npos;
           pos = piece.text.find(replacement_, pos + replacement_.size())) {
        if (last < pos) m.push_back({{last, pos}, false});
        m.push_back({{pos, pos + replacement_.size()}, true});
        last = pos + replacement_.size();
      }
      if (last < piece.text.size()) m.push_back({{last, piece.text.size()}, false});
      SplitPiece(piece, std::move(m), SplitBehavior::kMergedWithNext, &out);
    }
    *pieces = std::move(out);
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
  bool split_;
};

class SequencePreTokenizer : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> parts)
      : parts_(std::move(parts)) {}
  void PreTokenize(std::vector<PreToken>* pieces) const override {
    for (const auto& p : parts_) p->PreTokenize(pieces);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

absl::StatusOr<PrependScheme> ParseMetaspaceScheme(const json& j, std::string_view where) {
  PrependScheme scheme = PrependScheme::kAlways;
  if (j.contains("prepend_scheme") && !j["prepend_scheme"].is_null()) {
    ASSIGN_OR_RETURN(std::string s, JsonString(j, "prepend_scheme", where));
    if (s == "first") {
      scheme = PrependScheme::kFirst;
    } else if (s == "never") {
      scheme = PrependScheme::kNever;
    } else if (s == "always") {
      scheme = PrependScheme::kAlways;
    } else {
      return MalformedError(where, absl::StrCat("unknown prepend_scheme '", s, "'"));
    }
  }
  ASSIGN_OR_RETURN(bool add_prefix_space, JsonBool(j, "add_prefix_space", where, true));
  if (!add_prefix_space) scheme = PrependScheme::kNever;
  return scheme;
}

absl::StatusOr<std::string> ParseSingleChar(const json& j, std::string_view key,
                                            std::string_view where) {
  ASSIGN_OR_RETURN(std::string s, JsonString(j, key, where));
  if (!IsValidUtf8(s) || ToCodePoints(s).size() != 1) {
    return MalformedError(where, absl::StrCat("'", AbslView(key), "' must be one character"));
  }
  return s;
}

// ---- Post-processors ----

class NoOpPostProcessor : public PostProcessor {
 public:
  void Process(std::vector<int32_t>*, bool) const override {}
};

class TemplatePostProcessor : public PostProcessor {
 public:
  // An empty `ids` entry stands for the sequence ($A).
  explicit TemplatePostProcessor(std::vector<std::vector<int32_t>> pieces)
      : pieces_(std::move(pieces)) {}
  void Process(std::vector<int32_t>* ids, bool add_special_tokens) const override {
    if (!add_special_tokens) return;
    std::vector<int32_t> out;
    for (const auto& piece : pieces_) {
      if (piece.empty()) {
        out.insert(out.end(), ids->begin(), ids->end());
      } else {
        out.insert(out.end(), piece.begin(), piece.end());
      }
    }
    *ids = std::move(out);
  }

 private:
  std::vector<std::vector<int32_t>> pieces_;
};

class SequencePostProcessor : public PostProcessor {
 public:
  explicit SequencePostProcessor(std::vector<std::unique_ptr<PostProcessor>> parts)
      : parts_(std::move(parts)) {}
  void Process(std::vector<int32_t>* ids, bool add_special_tokens) const override {
    for (const auto& p : parts_) p->Process(ids, add_special_tokens);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

absl::StatusOr<std::unique_ptr<PostProcessor>> ParseTemplate(const json& j) {
  constexpr std::string_view kWhere = "post_processor.TemplateProcessing";
  ASSIGN_OR_RETURN(const json* single, JsonField(j, "single", kWhere));
  ASSIGN_OR_RETURN(const json* specials, JsonField(j, "special_tokens", kWhere));
  if (!single->is_array() || !specials->is_object()) {
    return MalformedError(kWhere, "'single' must be a list and 'special_tokens' a map");
  }
  std::vector<std::vector<int32_t>> pieces;
  int sequences = 0;
  for (const json& piece : *single) {
    if (piece.is_object() && piece.contains("Sequence")) {
      ASSIGN_OR_RETURN(std::string id, JsonString(piece["Sequence"], "id", kWhere));
      if (id != "A") return MalformedError(kWhere, "single template must use sequence A");
      ++sequences;
      pieces.emplace_back();
    } else if (piece.is_object() && piece.contains("SpecialToken")) {
      ASSIGN_OR_RETURN(std::string id, JsonString(piece["SpecialToken"], "id", kWhere));
      auto it = specials->find(id);
      if (it == specials->end()) {
        return MalformedError(kWhere, absl::StrCat("missing special token '", id, "'"));
      }
      ASSIGN_OR_RETURN(const json* ids, JsonField(*it, "ids", kWhere));
      if (!ids->is_array() || ids->empty()) {
        return MalformedError(kWhere, absl::StrCat("special token '", id, "' has no ids"));
      }
      std::vector<int32_t> v;
      for (const json& x : *ids) {
        if (!x.is_number_integer()) return MalformedError(kWhere, "ids must be integers");
        v.push_back(x.get<int32_t>());
      }
      pieces.push_back(std::move(v));
    } else {
      return MalformedError(kWhere, "template piece must be Sequence or SpecialToken");
    }
  }
  if (sequences != 1) return MalformedError(kWhere, "single template needs exactly one $A");
  return std::make_unique<TemplatePostProcessor>(std::move(pieces));
}

// ---- Decoders ----

void AppendToken(const std::string& token, std::string* out) {
  // A token made only of byte-level characters stands for those bytes;
  // any other token (e.g. an added token) for its own UTF-8.
  std::string bytes;
  for (size_t i = 0; i < token.size();) {
    const int b = ByteLevelByte(NextCodePoint(token, &i));
    if (b < 0) {
      out->append(token);
      return;
    }
    bytes.push_back(static_cast<char>(b));
  }
  out->append(bytes);
}

class ByteLevelDecoder : public TokenDecoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens, bool raw_bytes) const override {
    std::string bytes;
    for (const std::string& t : *tokens) AppendToken(t, &bytes);
    tokens->assign(1, raw_bytes ? std::move(bytes) : ToValidUtf8Lossy(bytes));
  }
};

class ReplaceDecoder : public TokenDecoder {
 public:
  ReplaceDecoder(std::shared_ptr<const TokenizerRegex> re, std::string content)
      : re_(std::move(re)), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens, bool) const override {
    for (std::string& t : *tokens) t = ReplaceAll(*re_, t, content_);
  }

 private:
  std::shared_ptr<const TokenizerRegex> re_;
  std::string content_;
};

int ParseByteToken(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  int v = 0;
  for (int i = 3; i < 5; ++i) {
    const char c = t[i];
    int d;
    if (c >= '0' && c <= '9') {
      d = c - '0';
    } else if (c >= 'a' && c <= 'f') {
      d = c - 'a' + 10;
    } else if (c >= 'A' && c <= 'F') {
      d = c - 'A' + 10;
    } else {
      return -1;
    }
    v = v * 16 + d;
  }
  return v;
}

class ByteFallbackDecoder : public TokenDecoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens, bool raw_bytes) const override {
    std::vector<std::string> out;
    std::string pending;
    auto flush = [&] {
      if (pending.empty()) return;
      if (raw_bytes || IsValidUtf8(pending)) {
        out.push_back(pending);
      } else {
        for (size_t i = 0; i < pending.size(); ++i) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
    };
    for (std::string& t : *tokens) {
      const int b = ParseByteToken(t);
      if (b >= 0) {
        pending.push_back(static_cast<char>(b));
      } else {
        flush();
        out.push_back(std::move(t));
      }
    }
    flush();
    *tokens = std::move(out);
  }
};

class FuseDecoder : public TokenDecoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens, bool) const override {
    tokens->assign(1, absl::StrJoin(*tokens, ""));
  }
};

class StripDecoder : public TokenDecoder {
 public:
  StripDecoder(std::string content, int64_t start, int64_t stop)
      : content_(std::move(content)), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens, bool) const override {
    const size_t n = content_.size();
    for (std::string& t : *tokens) {
      size_t b = 0, e = t.size();
      for (int64_t i = 0; i < start_ && e - b >= n && t.compare(b, n, content_) == 0; ++i) b += n;
      for (int64_t i = 0; i < stop_ && e - b >= n && t.compare(e - n, n, content_) == 0; ++i) {
        e -= n;
      }
      t = t.substr(b, e - b);
    }
  }

 private:
  std::string content_;
  int64_t start_, stop_;
};

class MetaspaceDecoder : public TokenDecoder {
 public:
  MetaspaceDecoder(std::string replacement, PrependScheme scheme)
      : replacement_(std::move(replacement)), scheme_(scheme) {}
  void DecodeChain(std::vector<std::string>* tokens, bool) const override {
    for (size_t i = 0; i < tokens->size(); ++i) {
      std::string& t = (*tokens)[i];
      const std::string_view with = (i == 0 && scheme_ != PrependScheme::kNever) ? "" : " ";
      std::string out;
      size_t last = 0;
      for (size_t pos = t.find(replacement_); pos != std::string::npos;
           pos = t.find(replacement_, last)) {
        out.append(t, last, pos - last);
        out.append(with);
        last = pos + replacement_.size();
      }
      out.append(t, last, std::string::npos);
      t = std::move(out);
    }
  }

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

class SequenceDecoder : public TokenDecoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<TokenDecoder>> parts)
      : parts_(std::move(parts)) {}
  void DecodeChain(std::vector<std::string>* tokens, bool raw_bytes) const override {
    for (const auto& p : parts_) p->DecodeChain(tokens, raw_bytes);
  }

 private:
  std::vector<std::unique_ptr<TokenDecoder>> parts_;
};

template <typename T, typename ParseFn>
absl::StatusOr<std::vector<std::unique_ptr<T>>> ParseList(const json& j, std::string_view key,
                                                          std::string_view where, ParseFn parse) {
  ASSIGN_OR_RETURN(const json* list, JsonField(j, key, where));
  if (!list->is_array())
    return MalformedError(where, absl::StrCat("'", AbslView(key), "' is not a list"));
  std::vector<std::unique_ptr<T>> parts;
  for (const json& item : *list) {
    ASSIGN_OR_RETURN(auto part, parse(item));
    parts.push_back(std::move(part));
  }
  return parts;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Normalizer>> ParseNormalizer(const json& j) {
  ASSIGN_OR_RETURN(std::string type, TypeOf(j, "normalizer"));
  const std::string where = absl::StrCat("normalizer.", AbslView(type));
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "NFD") return std::make_unique<NfdNormalizer>();
  if (type == "ByteLevel") return std::make_unique<ByteLevelNormalizer>();
  if (type == "Prepend") {
    ASSIGN_OR_RETURN(std::string prepend, JsonString(j, "prepend", where));
    return std::make_unique<PrependNormalizer>(std::move(prepend));
  }
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto re, ParsePattern(j, where));
    ASSIGN_OR_RETURN(std::string content, JsonString(j, "content", where));
    return std::make_unique<ReplaceNormalizer>(std::move(re), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(bool left, JsonBool(j, "strip_left", where, false));
    ASSIGN_OR_RETURN(bool right, JsonBool(j, "strip_right", where, false));
    return std::make_unique<StripNormalizer>(left, right);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto parts, ParseList<Normalizer>(j, "normalizers", where, ParseNormalizer));
    return std::make_unique<SequenceNormalizer>(std::move(parts));
  }
  return Unsupported("normalizer", type);
}

absl::StatusOr<std::unique_ptr<PreTokenizer>> ParsePreTokenizer(const json& j) {
  ASSIGN_OR_RETURN(std::string type, TypeOf(j, "pre_tokenizer"));
  const std::string where = absl::StrCat("pre_tokenizer.", AbslView(type));
  if (type == "ByteLevel") {
    ASSIGN_OR_RETURN(bool add_prefix_space, JsonBool(j, "add_prefix_space", where, true));
    ASSIGN_OR_RETURN(bool use_regex, JsonBool(j, "use_regex", where, true));
    std::shared_ptr<const TokenizerRegex> re;
    if (use_regex) {
      ASSIGN_OR_RETURN(re, TokenizerRegex::Compile(kGpt2Pattern, /*literal=*/false));
    }
    return std::make_unique<ByteLevelPreTokenizer>(add_prefix_space, std::move(re));
  }
  if (type == "Split") {
    ASSIGN_OR_RETURN(auto re, ParsePattern(j, where));
    ASSIGN_OR_RETURN(SplitBehavior behavior, ParseBehavior(j, where));
    ASSIGN_OR_RETURN(bool invert, JsonBool(j, "invert", where, false));
    return std::make_unique<SplitPreTokenizer>(std::move(re), behavior, invert);
  }
  if (type == "WhitespaceSplit") {
    ASSIGN_OR_RETURN(auto re, TokenizerRegex::Compile(R"(\s)", /*literal=*/false));
    return std::make_unique<SplitPreTokenizer>(std::move(re), SplitBehavior::kRemoved,
                                               /*invert=*/false);
  }
  if (type == "Whitespace") {
    // Rust regex `\w+|[^\w\s]+`, with Unicode \w spelled out for PCRE2.
    ASSIGN_OR_RETURN(
        auto re, TokenizerRegex::Compile(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}]+|)"
                                         R"([^\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}\s]+)",
                                         /*literal=*/false));
    return std::make_unique<SplitPreTokenizer>(std::move(re), SplitBehavior::kRemoved,
                                               /*invert=*/true);
  }
  if (type == "Digits") {
    // char::is_numeric (Nd, Nl, No), one char per match; Contiguous joins runs.
    ASSIGN_OR_RETURN(bool individual, JsonBool(j, "individual_digits", where, false));
    ASSIGN_OR_RETURN(auto re, TokenizerRegex::Compile(R"(\p{N})", /*literal=*/false));
    return std::make_unique<SplitPreTokenizer>(
        std::move(re), individual ? SplitBehavior::kIsolated : SplitBehavior::kContiguous,
        /*invert=*/false);
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement, ParseSingleChar(j, "replacement", where));
    ASSIGN_OR_RETURN(PrependScheme scheme, ParseMetaspaceScheme(j, where));
    ASSIGN_OR_RETURN(bool split, JsonBool(j, "split", where, true));
    return std::make_unique<MetaspacePreTokenizer>(std::move(replacement), scheme, split);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto parts,
                     ParseList<PreTokenizer>(j, "pretokenizers", where, ParsePreTokenizer));
    return std::make_unique<SequencePreTokenizer>(std::move(parts));
  }
  return Unsupported("pre_tokenizer", type);
}

absl::StatusOr<std::unique_ptr<PostProcessor>> ParsePostProcessor(const json& j) {
  ASSIGN_OR_RETURN(std::string type, TypeOf(j, "post_processor"));
  const std::string where = absl::StrCat("post_processor.", AbslView(type));
  if (type == "ByteLevel") return std::make_unique<NoOpPostProcessor>();
  if (type == "TemplateProcessing") return ParseTemplate(j);
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto parts,
                     ParseList<PostProcessor>(j, "processors", where, ParsePostProcessor));
    return std::make_unique<SequencePostProcessor>(std::move(parts));
  }
  return Unsupported("post_processor", type);
}

absl::StatusOr<std::unique_ptr<TokenDecoder>> ParseDecoder(const json& j) {
  ASSIGN_OR_RETURN(std::string type, TypeOf(j, "decoder"));
  const std::string where = absl::StrCat("decoder.", AbslView(type));
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Replace") {
    ASSIGN_OR_RETURN(auto re, ParsePattern(j, where));
    ASSIGN_OR_RETURN(std::string content, JsonString(j, "content", where));
    return std::make_unique<ReplaceDecoder>(std::move(re), std::move(content));
  }
  if (type == "Strip") {
    ASSIGN_OR_RETURN(std::string content, ParseSingleChar(j, "content", where));
    ASSIGN_OR_RETURN(int64_t start, JsonInt(j, "start", where));
    ASSIGN_OR_RETURN(int64_t stop, JsonInt(j, "stop", where));
    return std::make_unique<StripDecoder>(std::move(content), start, stop);
  }
  if (type == "Metaspace") {
    ASSIGN_OR_RETURN(std::string replacement, ParseSingleChar(j, "replacement", where));
    ASSIGN_OR_RETURN(PrependScheme scheme, ParseMetaspaceScheme(j, where));
    return std::make_unique<MetaspaceDecoder>(std::move(replacement), scheme);
  }
  if (type == "Sequence") {
    ASSIGN_OR_RETURN(auto parts, ParseList<TokenDecoder>(j, "decoders", where, ParseDecoder));
    return std::make_unique<SequenceDecoder>(std::move(parts));
  }
  return Unsupported("decoder", type);
}

}  // namespace adapterd
