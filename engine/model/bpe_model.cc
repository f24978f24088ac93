#include "engine/model/bpe_model.h"

#include <nlohmann/json.hpp>
#include <queue>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"
#include "engine/model/tokenizer_pipeline.h"
#include "engine/model/unicode_text.h"

namespace adapterd {

using json = nlohmann::json;

namespace {

constexpr std::string_view kWhere = "model";

absl::StatusOr<std::optional<std::string>> OptionalString(const json& j, std::string_view key) {
  auto it = j.find(std::string(key));
  if (it == j.end() || it->is_null()) return std::optional<std::string>();
  if (!it->is_string())
    return MalformedError(kWhere, absl::StrCat("'", AbslView(key), "' is not a string"));
  return std::optional<std::string>(it->get<std::string>());
}

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const json& model) {
  if (!model.is_object()) return MalformedError(kWhere, "expected an object");
  if (auto t = model.find("type"); t != model.end()) {
    if (!t->is_string()) return MalformedError(kWhere, "'type' is not a string");
    if (t->get<std::string>() != "BPE") {
      return absl::InvalidArgumentError(
          absl::StrCat("unsupported model type '", t->get<std::string>(), "'"));
    }
  }
  if (auto d = model.find("dropout"); d != model.end() && !d->is_null()) {
    if (!d->is_number()) return MalformedError(kWhere, "'dropout' is not a number");
    if (d->get<double>() != 0.0) {
      return absl::InvalidArgumentError("unsupported model option 'dropout' (BPE dropout)");
    }
  }
  std::unique_ptr<BpeModel> m(new BpeModel());
  ASSIGN_OR_RETURN(std::optional<std::string> unk, OptionalString(model, "unk_token"));
  ASSIGN_OR_RETURN(std::optional<std::string> prefix,
                   OptionalString(model, "continuing_subword_prefix"));
  ASSIGN_OR_RETURN(std::optional<std::string> suffix, OptionalString(model, "end_of_word_suffix"));
  m->continuing_subword_prefix_ = prefix.value_or("");
  m->end_of_word_suffix_ = suffix.value_or("");
  ASSIGN_OR_RETURN(m->fuse_unk_, JsonBool(model, "fuse_unk", kWhere, false));
  ASSIGN_OR_RETURN(m->byte_fallback_, JsonBool(model, "byte_fallback", kWhere, false));
  ASSIGN_OR_RETURN(m->ignore_merges_, JsonBool(model, "ignore_merges", kWhere, false));

  ASSIGN_OR_RETURN(const json* vocab, JsonField(model, "vocab", kWhere));
  if (!vocab->is_object()) return MalformedError(kWhere, "'vocab' is not a map");
  m->vocab_.reserve(vocab->size());
  int32_t max_id = -1;
  for (auto it = vocab->begin(); it != vocab->end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX / 2) {
      return MalformedError(kWhere, absl::StrCat("vocab id of '", it.key(), "' is not valid"));
    }
    const auto id = it.value().get<int32_t>();
    m->vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  m->id_to_token_.resize(max_id + 1);
  m->has_id_.assign(max_id + 1, false);
  for (const auto& [token, id] : m->vocab_) {
    m->id_to_token_[id] = token;
    m->has_id_[id] = true;
  }

  ASSIGN_OR_RETURN(const json* merges, JsonField(model, "merges", kWhere));
  if (!merges->is_array()) return MalformedError(kWhere, "'merges' is not a list");
  m->merges_.reserve(merges->size());
  int32_t rank = 0;
  for (const json& merge : *merges) {
    std::string a, b;
    if (merge.is_string()) {
      const std::string& line = merge.get_ref<const std::string&>();
      if (line.rfind("#version", 0) == 0) continue;
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return MalformedError(kWhere, absl::StrCat("bad merge line ", rank + 1, ": '", line, "'"));
      }
      a = line.substr(0, space);
      b = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() &&
               merge[1].is_string()) {
      a = merge[0].get<std::string>();
      b = merge[1].get<std::string>();
    } else {
      return MalformedError(kWhere, absl::StrCat("bad merge ", rank + 1));
    }
    auto ia = m->vocab_.find(a), ib = m->vocab_.find(b);
    const size_t prefix_len = m->continuing_subword_prefix_.size();
    if (ia == m->vocab_.end() || ib == m->vocab_.end() || b.size() < prefix_len) {
      return MalformedError(kWhere, absl::StrCat("merge ", rank + 1, " uses a token not in vocab"));
    }
    auto inew = m->vocab_.find(a + b.substr(prefix_len));
    if (inew == m->vocab_.end()) {
      return MalformedError(kWhere,
                            absl::StrCat("merge ", rank + 1, " makes a token not in vocab"));
    }
    m->merges_[PairKey(ia->second, ib->second)] = Merge{rank, inew->second};
    ++rank;
  }

  if (unk.has_value()) {
    auto it = m->vocab_.find(*unk);
    if (it == m->vocab_.end()) {
      return MalformedError(kWhere, absl::StrCat("unk_token '", *unk, "' is not in vocab"));
    }
    m->unk_id_ = it->second;
  }
  for (int b = 0; b < 256; ++b) {
    auto it = m->vocab_.find(absl::StrFormat("<0x%02X>", b));
    m->byte_ids_[b] = it == m->vocab_.end() ? -1 : it->second;
  }
  return m;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(AbslView(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= static_cast<int32_t>(id_to_token_.size()) || !has_id_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    if (auto it = vocab_.find(AbslView(word)); it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  std::vector<int32_t> symbols;
  symbols.reserve(word.size());
  int32_t pending_unk = -1;  // An unk id not yet added (fuse_unk extends it).
  std::string piece;
  for (size_t i = 0; i < word.size();) {
    const size_t start = i;
    const size_t len = ValidSequenceLength(word, i);
    i += len == 0 ? 1 : len;
    piece.clear();
    if (start != 0) piece.append(continuing_subword_prefix_);
    piece.append(word.substr(start, i - start));
    if (i == word.size()) piece.append(end_of_word_suffix_);
    if (auto it = vocab_.find(piece); it != vocab_.end()) {
      if (pending_unk >= 0) symbols.push_back(pending_unk);
      pending_unk = -1;
      symbols.push_back(it->second);
      continue;
    }
    if (byte_fallback_) {
      bool all = true;
      for (unsigned char c : piece) all = all && byte_ids_[c] >= 0;
      if (all) {
        // Like `tokenizers`, a pending unk stays pending across byte tokens.
        for (unsigned char c : piece) symbols.push_back(byte_ids_[c]);
        continue;
      }
    }
    if (unk_id_.has_value()) {
      if (pending_unk >= 0 && !fuse_unk_) symbols.push_back(pending_unk);
      pending_unk = *unk_id_;
    }
  }
  if (pending_unk >= 0) symbols.push_back(pending_unk);
  MergeWord(&symbols);
  ids->insert(ids->end(), symbols.begin(), symbols.end());
}

void BpeModel::MergeWord(std::vector<int32_t>* ids) const {
  const int n = static_cast<int>(ids->size());
  if (n < 2) return;
  struct Symbol {
    int32_t id;
    int prev;
    int next;
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int pos;
    int32_t new_id;
  };
  auto later = [](const Candidate& x, const Candidate& y) {
    return x.rank != y.rank ? x.rank > y.rank : x.pos > y.pos;
  };
  std::vector<Symbol> sym(n);
  for (int i = 0; i < n; ++i) sym[i] = Symbol{(*ids)[i], i - 1, i + 1 < n ? i + 1 : -1, true};
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(later)> queue(later);
  for (int i = 0; i + 1 < n; ++i) {
    if (auto it = merges_.find(PairKey(sym[i].id, sym[i + 1].id)); it != merges_.end()) {
      queue.push(Candidate{it->second.rank, i, it->second.new_id});
    }
  }
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& cur = sym[top.pos];
    if (!cur.alive || cur.next < 0) continue;
    const int next_pos = cur.next;
    auto it = merges_.find(PairKey(cur.id, sym[next_pos].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.next = sym[next_pos].next;
    sym[next_pos].alive = false;
    if (cur.next >= 0) sym[cur.next].prev = top.pos;
    if (cur.prev >= 0) {
      if (auto m = merges_.find(PairKey(sym[cur.prev].id, cur.id)); m != merges_.end()) {
        queue.push(Candidate{m->second.rank, cur.prev, m->second.new_id});
      }
    }
    if (cur.next >= 0) {
      if (auto m = merges_.find(PairKey(cur.id, sym[cur.next].id)); m != merges_.end()) {
        queue.push(Candidate{m->second.rank, top.pos, m->second.new_id});
      }
    }
  }
  ids->clear();
  for (int i = 0; i >= 0; i = sym[i].next) ids->push_back(sym[i].id);
}

}  // namespace adapterd
