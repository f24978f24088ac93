#pragma once

// The BPE model of a Hugging Face `tokenizer.json` ("model": {"type": "BPE"}),
// with the merge algorithm of `tokenizers` 0.22 (models/bpe): lowest merge
// rank first, leftmost among equal ranks; `ignore_merges`, `byte_fallback`
// (`<0xAB>` tokens), `unk_token`/`fuse_unk`, `continuing_subword_prefix` and
// `end_of_word_suffix`. Dropout is not supported (it is random).
// Engine-internal; torch-free. Immutable after construction; thread-safe.

#include <array>
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace adapterd {

class BpeModel {
 public:
  // `model` is the "model" object. INVALID_ARGUMENT for another model type,
  // malformed vocab/merges, merges over unknown tokens, or dropout > 0.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model);

  // Appends the ids of one pre-token (`tokenizers`' Model::tokenize).
  // Characters with no token, no byte fallback and no unk are dropped.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // Null if `id` is not in the vocab.
  const std::string* IdToToken(int32_t id) const;
  int32_t max_id() const { return static_cast<int32_t>(id_to_token_.size()) - 1; }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }

  BpeModel() = default;
  void MergeWord(std::vector<int32_t>* symbols) const;

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> has_id_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  std::array<int32_t, 256> byte_ids_{};  // Id of "<0xAB>" or -1.
};

}  // namespace adapterd
