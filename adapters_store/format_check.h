#pragma once

// A torch-free check of an adapter directory's format, used as the store's
// validator until the engine provides one that checks adapters against the
// base model: adapter_config.json is a JSON object that names a known HF PEFT
// peft_type or an AdapterHub config, and the matching weights file
// (adapter_model.safetensors for PEFT, adapter.safetensors for AdapterHub) has
// a well-formed safetensors header (the rules of the Rust crate: size bounds,
// a JSON object, known dtypes, offsets tiling the data exactly).

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "adapters_store/adapter_validator.h"

namespace adapterd {

// The method named by an adapter_config.json. INVALID_ARGUMENT if the text is
// not a JSON object or names no supported method.
absl::StatusOr<std::string> AdapterMethodFromConfig(absl::string_view config_json);

// Validates the safetensors file at `path` (header and sizes; the tensor
// bytes are not read). INVALID_ARGUMENT with the first broken rule.
absl::Status CheckSafetensorsFile(const std::string& path);

// The validator: both checks above over `dir`. The fingerprint stays empty.
absl::StatusOr<AdapterMeta> CheckAdapterFormat(const std::string& dir);

}  // namespace adapterd
