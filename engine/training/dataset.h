#pragma once

// Training datasets: JSONL rows tokenised for causal-LM training, with the
// policy of engine/api/training.h (DatasetOptions). Torch-free (engine_base),
// so the server's tests and ValidateTraining can use it without a model.

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/api/training.h"

namespace adapterd {

class Tokenizer;

// One training row: ids = tokens of prompt (with the tokenizer's special
// tokens, e.g. BOS) + tokens of completion (without) + EOS when the
// tokenizer has one. The loss covers positions [loss_begin, ids.size()):
// the completion and EOS, or for {"text"} rows every token after the first.
// The label of position j is ids[j] predicted from ids[0..j-1].
struct TrainingRow {
  std::vector<int32_t> ids;
  int64_t loss_begin = 1;  // >= 1.
  int64_t line = 0;        // 1-based line in the file.
};

// A line longer than this is malformed (its bytes are never held at once).
inline constexpr int64_t kMaxDatasetLineBytes = int64_t{4} << 20;

// Rows in file order. The eval rows are floor(eval_fraction * rows) of the
// usable rows (at least one when eval_fraction > 0 and there are two rows or
// more): the first ones of a Fisher-Yates permutation drawn from
// std::mt19937_64(seed), so the split depends only on the file and the seed.
struct TrainingDataset {
  std::vector<TrainingRow> train;
  std::vector<TrainingRow> eval;
  DatasetReport report;
};

struct DatasetReadOptions {
  DatasetOptions policy;
  int max_seq_length = 512;
  // Tokens the method adds in front of every row (prompt/P-tuning virtual
  // tokens, prefix length): rows are truncated to max_seq_length - reserved.
  int reserved_tokens = 0;
  double eval_fraction = 0.0;
  uint64_t seed = 42;
  std::string eos_token;  // Empty: the tokenizer's "</s>", "<|endoftext|>", ... if any.
};

// Reads and tokenises `path` (JSONL; see DatasetOptions for the policy).
// NOT_FOUND for a missing file; INVALID_ARGUMENT for malformed rows (unless
// skipped), a file over max_bytes/max_rows, or no usable row.
absl::StatusOr<TrainingDataset> ReadTrainingDataset(const std::string& path,
                                                    const Tokenizer& tokenizer,
                                                    const DatasetReadOptions& options);

}  // namespace adapterd
