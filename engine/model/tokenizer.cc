#include "engine/model/tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/model/bpe_model.h"
#include "engine/model/tokenizer_pipeline.h"
#include "engine/model/unicode_text.h"

namespace adapterd {
namespace {

using json = nlohmann::json;

struct AddedToken {
  std::string content;
  int32_t id = -1;
  bool special = false;
  bool lstrip = false;
  bool rstrip = false;
  bool single_word = false;
  bool normalized = true;
};

// Leftmost-longest, non-overlapping matching of a set of strings, like the
// aho-corasick crate with MatchKind::LeftmostLongest.
class LiteralMatcher {
 public:
  void Add(std::string_view pattern, int index) {
    if (pattern.empty()) return;
    int node = 0;
    for (unsigned char c : pattern) {
      auto [it, inserted] = nodes_[node].next.try_emplace(c, static_cast<int>(nodes_.size()));
      if (inserted) nodes_.emplace_back();
      node = it->second;
    }
    if (nodes_[node].index < 0) nodes_[node].index = index;
    first_bytes_[static_cast<unsigned char>(pattern[0])] = true;
  }

  // The leftmost-longest match starting at or after `from`: (start, end, index).
  std::optional<std::tuple<size_t, size_t, int>> Find(std::string_view text, size_t from) const {
    for (size_t start = from; start < text.size(); ++start) {
      if (!first_bytes_[static_cast<unsigned char>(text[start])]) continue;
      int node = 0;
      std::optional<std::tuple<size_t, size_t, int>> best;
      for (size_t i = start; i < text.size(); ++i) {
        auto it = nodes_[node].next.find(static_cast<unsigned char>(text[i]));
        if (it == nodes_[node].next.end()) break;
        node = it->second;
        if (nodes_[node].index >= 0) best = std::make_tuple(start, i + 1, nodes_[node].index);
      }
      if (best.has_value()) return best;
    }
    return std::nullopt;
  }

 private:
  struct Node {
    absl::flat_hash_map<unsigned char, int> next;
    int index = -1;
  };
  std::vector<Node> nodes_ = std::vector<Node>(1);
  std::array<bool, 256> first_bytes_{};
};

// A piece of the input between added tokens, or an added token (id >= 0).
struct Segment {
  std::string text;
  int32_t id;
  bool at_start;
};

bool IsWordChar(char32_t cp) {
  // Rust regex `\w`: Alphabetic, marks, decimal numbers, connector punctuation,
  // join controls (PCRE2 property names).
  static const std::shared_ptr<const TokenizerRegex> re =
      TokenizerRegex::Compile(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\x{200C}\x{200D}])", false)
          .value();
  std::string s;
  AppendUtf8(cp, &s);
  return !re->FindAll(s).empty();
}

char32_t LastCodePoint(std::string_view s) {
  size_t i = s.size() - 1;
  while (i > 0 && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) --i;
  return NextCodePoint(s, &i);
}

class HfTokenizer : public Tokenizer {
 public:
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Build(const json& j);

  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens,
                              bool parse_special) const override;
  std::string DecodeBytes(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  std::string Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const override;
  int64_t vocab_size() const override { return vocab_size_; }
  std::optional<int32_t> TokenToId(std::string_view token) const override;
  std::optional<std::string> IdToToken(int32_t id) const override;
  bool IsSpecial(int32_t id) const override;

 private:
  // AddedVocabulary::find_matches + split_with_indices on `text`.
  void SplitOnAdded(const std::string& text, bool at_start, const LiteralMatcher& matcher,
                    const std::vector<int>& token_of_pattern, bool parse_special,
                    std::vector<Segment>* out) const;
  std::vector<std::string> IdsToTokens(const std::vector<int32_t>& ids, bool skip_special) const;
  std::string RunDecoder(std::vector<std::string> tokens, bool raw_bytes) const;

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<TokenDecoder> decoder_;

  std::vector<AddedToken> added_;
  absl::flat_hash_map<int32_t, int> added_by_id_;
  absl::flat_hash_map<std::string, int32_t> added_by_content_;
  absl::flat_hash_set<std::string> special_contents_;
  LiteralMatcher raw_matcher_;         // Tokens with normalized=false, on raw text.
  std::vector<int> raw_patterns_;      // Pattern index -> added_ index.
  LiteralMatcher normalized_matcher_;  // Normalized contents, on normalized text.
  std::vector<int> normalized_patterns_;
  int64_t vocab_size_ = 0;
};

absl::StatusOr<std::unique_ptr<Tokenizer>> HfTokenizer::Build(const json& j) {
  if (!j.is_object()) return MalformedError("top level", "expected an object");
  auto t = std::unique_ptr<HfTokenizer>(new HfTokenizer());
  ASSIGN_OR_RETURN(const json* model, JsonField(j, "model", "top level"));
  ASSIGN_OR_RETURN(t->model_, BpeModel::FromJson(*model));
  if (auto it = j.find("normalizer"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(t->normalizer_, ParseNormalizer(*it));
  }
  if (auto it = j.find("pre_tokenizer"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(t->pre_tokenizer_, ParsePreTokenizer(*it));
  }
  if (auto it = j.find("post_processor"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(t->post_processor_, ParsePostProcessor(*it));
  }
  if (auto it = j.find("decoder"); it != j.end() && !it->is_null()) {
    ASSIGN_OR_RETURN(t->decoder_, ParseDecoder(*it));
  }

  int64_t max_id = t->model_->max_id();
  if (auto it = j.find("added_tokens"); it != j.end() && !it->is_null()) {
    if (!it->is_array()) return MalformedError("added_tokens", "expected a list");
    for (const json& e : *it) {
      AddedToken a;
      ASSIGN_OR_RETURN(int64_t id, JsonInt(e, "id", "added_tokens"));
      ASSIGN_OR_RETURN(a.content, JsonString(e, "content", "added_tokens"));
      if (id < 0 || id > INT32_MAX / 2) return MalformedError("added_tokens", "bad id");
      a.id = static_cast<int32_t>(id);
      ASSIGN_OR_RETURN(a.special, JsonBool(e, "special", "added_tokens", false));
      ASSIGN_OR_RETURN(a.lstrip, JsonBool(e, "lstrip", "added_tokens", false));
      ASSIGN_OR_RETURN(a.rstrip, JsonBool(e, "rstrip", "added_tokens", false));
      ASSIGN_OR_RETURN(a.single_word, JsonBool(e, "single_word", "added_tokens", false));
      ASSIGN_OR_RETURN(a.normalized, JsonBool(e, "normalized", "added_tokens", !a.special));
      if (a.content.empty() || !IsValidUtf8(a.content)) continue;
      if (t->added_by_content_.contains(a.content)) continue;
      max_id = std::max<int64_t>(max_id, a.id);
      if (a.special) t->special_contents_.insert(a.content);
      const int index = static_cast<int>(t->added_.size());
      t->added_by_id_[a.id] = index;
      t->added_by_content_[a.content] = a.id;
      t->added_.push_back(std::move(a));
    }
  }
  // Same pattern order as refresh_added_tokens: special tokens, then the others.
  for (bool special : {true, false}) {
    for (int i = 0; i < static_cast<int>(t->added_.size()); ++i) {
      const AddedToken& a = t->added_[i];
      if (a.special != special) continue;
      if (a.normalized) {
        std::string content = a.content;
        if (t->normalizer_ != nullptr) t->normalizer_->Normalize(&content);
        t->normalized_matcher_.Add(content, static_cast<int>(t->normalized_patterns_.size()));
        t->normalized_patterns_.push_back(i);
      } else {
        t->raw_matcher_.Add(a.content, static_cast<int>(t->raw_patterns_.size()));
        t->raw_patterns_.push_back(i);
      }
    }
  }
  t->vocab_size_ = max_id + 1;
  return t;
}

void HfTokenizer::SplitOnAdded(const std::string& text, bool at_start,
                               const LiteralMatcher& matcher,
                               const std::vector<int>& token_of_pattern, bool parse_special,
                               std::vector<Segment>* out) const {
  auto emit = [&](size_t b, size_t e, int32_t id) {
    if (b >= e) return;
    out->push_back(Segment{text.substr(b, e - b), id, at_start && b == 0});
  };
  size_t start_offset = 0;
  size_t from = 0;
  while (auto m = matcher.Find(text, from)) {
    auto [start, stop, pattern] = *m;
    from = stop;
    const AddedToken& a = added_[token_of_pattern[pattern]];
    if (!parse_special && a.special) continue;
    if (a.single_word) {
      const bool start_space = start == 0 || !IsWordChar(LastCodePoint(text.substr(0, start)));
      size_t after = stop;
      const bool stop_space = stop == text.size() || !IsWordChar(NextCodePoint(text, &after));
      if (!start_space || !stop_space) continue;
    }
    if (a.lstrip) {
      size_t s = start;
      while (s > 0) {
        size_t p = s - 1;
        while (p > 0 && (static_cast<unsigned char>(text[p]) & 0xC0) == 0x80) --p;
        size_t q = p;
        if (!IsWhiteSpace(NextCodePoint(text, &q))) break;
        s = p;
      }
      start = std::max(s, start_offset);
    }
    if (a.rstrip) {
      while (stop < text.size()) {
        size_t q = stop;
        if (!IsWhiteSpace(NextCodePoint(text, &q))) break;
        stop = q;
      }
    }
    emit(start_offset, start, -1);
    out->push_back(Segment{text.substr(start, stop - start), a.id, at_start && start == 0});
    start_offset = stop;
  }
  emit(start_offset, text.size(), -1);
}

std::vector<int32_t> HfTokenizer::Encode(std::string_view input, bool add_special_tokens,
                                         bool parse_special) const {
  const std::string text = ToValidUtf8Lossy(input);
  std::vector<Segment> raw;
  SplitOnAdded(text, true, raw_matcher_, raw_patterns_, parse_special, &raw);
  std::vector<Segment> segments;
  for (Segment& s : raw) {
    if (s.id >= 0) {
      segments.push_back(std::move(s));
      continue;
    }
    if (normalizer_ != nullptr) normalizer_->Normalize(&s.text);
    SplitOnAdded(s.text, s.at_start, normalized_matcher_, normalized_patterns_, parse_special,
                 &segments);
  }
  std::vector<int32_t> ids;
  std::vector<PreToken> pieces;
  for (Segment& s : segments) {
    if (s.id >= 0) {
      ids.push_back(s.id);
      continue;
    }
    pieces.clear();
    pieces.push_back(PreToken{std::move(s.text), s.at_start});
    if (pre_tokenizer_ != nullptr) pre_tokenizer_->PreTokenize(&pieces);
    for (const PreToken& p : pieces) model_->Tokenize(p.text, &ids);
  }
  if (post_processor_ != nullptr) post_processor_->Process(&ids, add_special_tokens);
  return ids;
}

std::vector<std::string> HfTokenizer::IdsToTokens(const std::vector<int32_t>& ids,
                                                  bool skip_special) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) {
    const std::string* token = nullptr;
    if (auto it = added_by_id_.find(id); it != added_by_id_.end()) {
      token = &added_[it->second].content;
    } else {
      token = model_->IdToToken(id);
    }
    if (token == nullptr) continue;
    if (skip_special && special_contents_.contains(*token)) continue;
    tokens.push_back(*token);
  }
  return tokens;
}

std::string HfTokenizer::RunDecoder(std::vector<std::string> tokens, bool raw_bytes) const {
  if (decoder_ == nullptr) return absl::StrJoin(tokens, " ");
  decoder_->DecodeChain(&tokens, raw_bytes);
  return absl::StrJoin(tokens, "");
}

std::string HfTokenizer::DecodeBytes(const std::vector<int32_t>& ids,
                                     bool skip_special_tokens) const {
  return RunDecoder(IdsToTokens(ids, skip_special_tokens), /*raw_bytes=*/true);
}

std::string HfTokenizer::Decode(const std::vector<int32_t>& ids, bool skip_special_tokens) const {
  return ToValidUtf8Lossy(RunDecoder(IdsToTokens(ids, skip_special_tokens), /*raw_bytes=*/false));
}

std::optional<int32_t> HfTokenizer::TokenToId(std::string_view token) const {
  if (auto it = added_by_content_.find(AbslView(token)); it != added_by_content_.end())
    return it->second;
  return model_->TokenToId(token);
}

std::optional<std::string> HfTokenizer::IdToToken(int32_t id) const {
  if (auto it = added_by_id_.find(id); it != added_by_id_.end()) return added_[it->second].content;
  if (const std::string* t = model_->IdToToken(id)) return *t;
  return std::nullopt;
}

bool HfTokenizer::IsSpecial(int32_t id) const {
  auto it = added_by_id_.find(id);
  return it != added_by_id_.end() && added_[it->second].special;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return absl::NotFoundError(absl::StrCat("tokenizer file not found: ", path));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file: ", path));
  std::ostringstream buf;
  buf << in.rdbuf();
  return FromJson(buf.str());
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return MalformedError("top level", "not valid JSON");
  try {
    return HfTokenizer::Build(j);
  } catch (const std::exception& e) {  // Defensive: nlohmann accessors on odd input.
    return MalformedError("top level", e.what());
  }
}

}  // namespace adapterd
