#pragma once

// What validation says about an adapter directory, and the validator type the
// store calls before an adapter becomes visible. The server injects the
// validator: the engine's (which checks the adapter against the served base
// model) or, without one, the torch-free format check (format_check.h).

#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace adapterd {

struct AdapterMeta {
  std::string method;  // "lora", "prefix_tuning", "p_tuning", "prompt_tuning", "bottleneck".
  std::string base_fingerprint;  // The base model it was validated against; empty if unchecked.
};

// Called with a directory holding the adapter's files under their own names
// (adapter_config.json, ...). Returns the metadata, or INVALID_ARGUMENT for a
// malformed adapter and FAILED_PRECONDITION for one that does not fit the
// base model. Must be thread-safe; may be slow (it runs on a worker thread).
using AdapterValidator = std::function<absl::StatusOr<AdapterMeta>(const std::string& dir)>;

}  // namespace adapterd
