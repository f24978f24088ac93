#pragma once

// The embedded default base model: a small, seeded, Llama-shaped model with a
// byte-level tokenizer, written into the data dir on first start so that the
// server can be tried without downloading anything. Its output is noise; it
// exists to exercise the system, not for quality.

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace adapterd {

inline constexpr char kDefaultModelName[] = "adapterd-default-tiny";

// Returns the model directory under `data_dir`, creating it (atomically:
// temp dir, then rename) when absent. The same seed gives the same weights.
absl::StatusOr<std::string> MaterializeDefaultModel(const std::string& data_dir, uint64_t seed);

}  // namespace adapterd
