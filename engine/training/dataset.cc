#include "engine/training/dataset.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"
#include "engine/model/tokenizer.h"

namespace adapterd {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxReportedErrors = 5;
constexpr char kBom[] = "\xEF\xBB\xBF";

// Reads a file line by line through a fixed buffer, so that memory stays
// bounded by kMaxDatasetLineBytes whatever the file size. A line longer than
// that is reported as such and its bytes are discarded, not kept.
class LineReader {
 public:
  explicit LineReader(int fd) : fd_(fd), buffer_(size_t{1} << 16) {}
  ~LineReader() { close(fd_); }
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  // Next line without its '\n'; false at the end of the file. `too_long` is
  // set (and `line` left empty) when the line exceeded the limit.
  absl::StatusOr<bool> Next(std::string& line, bool& too_long) {
    line.clear();
    too_long = false;
    bool any = false;
    while (true) {
      if (pos_ == end_) {
        ssize_t n;
        do {
          n = read(fd_, buffer_.data(), buffer_.size());
        } while (n < 0 && errno == EINTR);
        if (n < 0) return absl::InternalError(absl::StrCat("read: ", std::strerror(errno)));
        if (n == 0) return any;
        bytes_ += n;
        pos_ = 0;
        end_ = static_cast<size_t>(n);
      }
      any = true;
      const char* start = buffer_.data() + pos_;
      const void* nl = std::memchr(start, '\n', end_ - pos_);
      const size_t take = nl ? static_cast<const char*>(nl) - start : end_ - pos_;
      if (!too_long) {
        if (line.size() + take > static_cast<size_t>(kMaxDatasetLineBytes)) {
          too_long = true;
          line.clear();
          line.shrink_to_fit();
        } else {
          line.append(start, take);
        }
      }
      pos_ += take;
      if (nl) {
        ++pos_;
        return true;
      }
    }
  }

  int64_t bytes() const { return bytes_; }

 private:
  int fd_;
  std::vector<char> buffer_;
  size_t pos_ = 0, end_ = 0;
  int64_t bytes_ = 0;
};

// Strict UTF-8 (no overlong forms, surrogates or code points past U+10FFFF).
// Returns the byte offset of the first invalid sequence, or nullopt.
std::optional<size_t> FirstInvalidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;  // Bounds of the second byte.
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return i;
    }
    if (i + len > s.size()) return i;
    for (size_t k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xBF)) return i;
    }
    i += len;
  }
  return std::nullopt;
}

bool IsBlank(std::string_view s) {
  return std::all_of(s.begin(), s.end(), [](char c) { return c == ' ' || c == '\t' || c == '\r'; });
}

struct ParsedRow {
  bool has_prompt = false;  // {"prompt", "completion"}; else {"text"}.
  std::string prompt, completion;
};

// Parses one non-blank line; the error is the reason for "line N: reason".
absl::StatusOr<ParsedRow> ParseRow(std::string_view line) {
  if (auto bad = FirstInvalidUtf8(line)) {
    return absl::InvalidArgumentError(absl::StrCat("invalid UTF-8 at byte ", *bad + 1));
  }
  json row = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (row.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!row.is_object()) return absl::InvalidArgumentError("not a JSON object");
  auto string_field = [&](const char* key, std::string& out) -> absl::Status {
    const json& v = row[key];
    if (!v.is_string())
      return absl::InvalidArgumentError(absl::StrCat("\"", key, "\" is not a string"));
    out = v.get<std::string>();
    return absl::OkStatus();
  };
  ParsedRow parsed;
  if (row.contains("prompt") || row.contains("completion")) {
    if (!row.contains("prompt") || !row.contains("completion")) {
      return absl::InvalidArgumentError(
          absl::StrCat("has \"", row.contains("prompt") ? "prompt" : "completion", "\" without \"",
                       row.contains("prompt") ? "completion" : "prompt", "\""));
    }
    parsed.has_prompt = true;
    RETURN_IF_ERROR(string_field("prompt", parsed.prompt));
    RETURN_IF_ERROR(string_field("completion", parsed.completion));
  } else if (row.contains("text")) {
    RETURN_IF_ERROR(string_field("text", parsed.completion));
  } else {
    return absl::InvalidArgumentError(
        "has neither \"prompt\" and \"completion\" nor \"text\" fields");
  }
  return parsed;
}

absl::StatusOr<std::optional<int32_t>> FindEos(const Tokenizer& tokenizer,
                                               const std::string& eos_token) {
  if (!eos_token.empty()) {
    std::optional<int32_t> id = tokenizer.TokenToId(eos_token);
    if (!id) {
      return absl::InvalidArgumentError(
          absl::StrCat("eos_token \"", eos_token, "\" is not in the tokenizer's vocabulary"));
    }
    return id;
  }
  for (const char* name : {"</s>", "<|endoftext|>", "<|end_of_text|>", "<|im_end|>", "<eos>"}) {
    if (std::optional<int32_t> id = tokenizer.TokenToId(name)) return id;
  }
  return std::optional<int32_t>();
}

// Indices [0, n) in an order that depends only on `seed`: Fisher-Yates over
// mt19937_64 (whose output the standard fixes), unlike std::shuffle and the
// std distributions, whose results differ between standard libraries.
std::vector<size_t> SeededPermutation(size_t n, uint64_t seed) {
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::mt19937_64 rng(seed);
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[rng() % i]);
  return order;
}

}  // namespace

absl::StatusOr<TrainingDataset> ReadTrainingDataset(const std::string& path,
                                                    const Tokenizer& tokenizer,
                                                    const DatasetReadOptions& options) {
  const DatasetOptions& policy = options.policy;
  const int64_t budget = int64_t{options.max_seq_length} - options.reserved_tokens;
  if (options.reserved_tokens < 0 || budget < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "max_seq_length ", options.max_seq_length, " leaves no room for a token after the ",
        options.reserved_tokens, " virtual tokens of the method"));
  }
  if (!(options.eval_fraction >= 0.0 && options.eval_fraction <= 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("eval_fraction ", options.eval_fraction, " is outside [0, 0.5]"));
  }
  if (policy.max_rows < 1 || policy.max_bytes < 1) {
    return absl::InvalidArgumentError("max_rows and max_bytes must be positive");
  }
  ASSIGN_OR_RETURN(const std::optional<int32_t> eos, FindEos(tokenizer, options.eos_token));

  int fd;
  do {
    fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const std::string why = absl::StrCat("dataset ", path, ": ", std::strerror(errno));
    return errno == ENOENT ? absl::NotFoundError(why) : absl::InvalidArgumentError(why);
  }
  LineReader reader(fd);
  struct stat st;
  if (fstat(fd, &st) != 0 || S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat("dataset ", path, " is not a readable file"));
  }
  auto too_big = [&] {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path, " is larger than max_bytes (", policy.max_bytes, ")"));
  };
  if (S_ISREG(st.st_mode) && st.st_size > policy.max_bytes) return too_big();

  TrainingDataset out;
  DatasetReport& report = out.report;
  std::vector<TrainingRow> rows;
  std::string line;
  bool too_long = false;
  int64_t line_no = 0;
  while (true) {
    ASSIGN_OR_RETURN(const bool more, reader.Next(line, too_long));
    if (!more) break;
    // A file that grows while it is read (or a pipe) is held to the limit too.
    if (reader.bytes() > policy.max_bytes) return too_big();
    ++line_no;
    std::string_view text(line);
    if (line_no == 1 && text.substr(0, 3) == kBom) text.remove_prefix(3);
    if (!too_long && IsBlank(text)) continue;
    if (++report.lines > policy.max_rows) {
      return absl::InvalidArgumentError(
          absl::StrCat("dataset ", path, " has more than max_rows (", policy.max_rows, ") rows"));
    }
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);

    absl::StatusOr<ParsedRow> parsed = too_long
                                           ? absl::InvalidArgumentError(absl::StrCat(
                                                 "longer than ", kMaxDatasetLineBytes, " bytes"))
                                           : ParseRow(text);
    if (!parsed.ok()) {
      if (report.first_errors.size() < kMaxReportedErrors) {
        report.first_errors.push_back(
            absl::StrCat("line ", line_no, ": ", parsed.status().message()));
      }
      if (!policy.skip_invalid_rows) {
        if (report.first_errors.size() < kMaxReportedErrors) continue;
        break;
      }
      ++report.skipped_malformed;
      continue;
    }
    if (parsed->completion.empty()) {
      ++report.skipped_empty;
      continue;
    }
    // The dataset is refused anyway: only the remaining errors matter.
    if (!policy.skip_invalid_rows && !report.first_errors.empty()) continue;

    std::vector<int32_t> prompt;
    if (parsed->has_prompt) prompt = tokenizer.Encode(parsed->prompt, /*add_special_tokens=*/true);
    std::vector<int32_t> completion =
        tokenizer.Encode(parsed->completion, /*add_special_tokens=*/!parsed->has_prompt);
    if (eos) completion.push_back(*eos);
    // A {"text"} row is all completion: its loss starts at its second token.
    const int64_t total = static_cast<int64_t>(prompt.size() + completion.size());
    if (total > budget) {
      ++report.truncated;
      int64_t excess = total - budget;
      const int64_t from_prompt = std::min<int64_t>(excess, prompt.size());
      prompt.erase(prompt.begin(), prompt.begin() + from_prompt);
      excess -= from_prompt;
      completion.resize(completion.size() - excess);
    }
    TrainingRow row;
    row.line = line_no;
    row.loss_begin = std::max<int64_t>(1, prompt.size());
    row.ids = std::move(prompt);
    row.ids.insert(row.ids.end(), completion.begin(), completion.end());
    if (row.loss_begin >= static_cast<int64_t>(row.ids.size())) {
      // Nothing left to predict: the row was cut to one token, or its
      // completion tokenised to nothing on a tokenizer without EOS.
      ++(total > budget ? report.skipped_too_long : report.skipped_empty);
      continue;
    }
    report.tokens += static_cast<int64_t>(row.ids.size());
    rows.push_back(std::move(row));
  }

  if (!policy.skip_invalid_rows && !report.first_errors.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "dataset ", path, " has malformed rows: ", absl::StrJoin(report.first_errors, "; ")));
  }
  if (rows.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("dataset ", path, " has no usable row (", report.lines, " lines; ",
                     report.skipped_malformed, " malformed, ", report.skipped_empty, " empty, ",
                     report.skipped_too_long, " too long)"));
  }

  const size_t n = rows.size();
  size_t n_eval = static_cast<size_t>(options.eval_fraction * static_cast<double>(n));
  if (options.eval_fraction > 0 && n_eval == 0 && n >= 2) n_eval = 1;
  std::vector<bool> is_eval(n, false);
  const std::vector<size_t> order = SeededPermutation(n, options.seed);
  for (size_t i = 0; i < n_eval; ++i) is_eval[order[i]] = true;
  for (size_t i = 0; i < n; ++i) {
    (is_eval[i] ? out.eval : out.train).push_back(std::move(rows[i]));
  }
  report.rows_used = static_cast<int64_t>(n);
  report.train_rows = static_cast<int64_t>(out.train.size());
  report.eval_rows = static_cast<int64_t>(out.eval.size());
  return out;
}

}  // namespace adapterd
