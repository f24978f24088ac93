#pragma once

// Adapter names, references ("name[@version]") and the file names an adapter
// may hold. These rules keep tenant input from ever shaping a path: a name is
// [A-Za-z0-9._-]{1,128}, never starts with '.', and never contains "..".

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace adapterd {

inline constexpr size_t kMaxAdapterNameLength = 128;

// A parsed "name[@version]". version 0 means "the latest READY version".
struct AdapterRef {
  std::string name;
  int64_t version = 0;

  std::string ToString() const;
};

// OK, or INVALID_ARGUMENT naming the broken rule.
absl::Status ValidateAdapterName(absl::string_view name);

// Parses "name" or "name@N" (N a positive decimal integer). INVALID_ARGUMENT
// for a bad name or version.
absl::StatusOr<AdapterRef> ParseAdapterRef(absl::string_view ref);

// The files an adapter may consist of (HF PEFT and AdapterHub layouts).
inline constexpr char kAdapterConfigFile[] = "adapter_config.json";
inline constexpr char kPeftWeightsFile[] = "adapter_model.safetensors";
inline constexpr char kAdapterHubWeightsFile[] = "adapter.safetensors";
// AdapterFusion (AdapterHub's save_adapter_fusion layout): these two at the
// top, and each fused adapter's files in a subdirectory named after it.
inline constexpr char kAdapterFusionConfigFile[] = "adapter_fusion_config.json";
inline constexpr char kAdapterFusionWeightsFile[] = "model_adapter_fusion.safetensors";
// P-tuning's prompt encoder, kept so that training can continue
// (engine/api/training.h kPTuningEncoderFile).
inline constexpr char kPromptEncoderFile[] = "prompt_encoder.safetensors";

// OK if `file_name` is one of the accepted adapter files — adapter_config.json,
// adapter_model.safetensors, adapter.safetensors, prompt_encoder.safetensors,
// adapter_fusion_config.json, model_adapter_fusion.safetensors — or
// "<adapter-name>/<file>" with an adapter name (ValidateAdapterName) and one of
// adapter_config.json, adapter.safetensors, adapter_model.safetensors (a fused
// adapter's files). Nothing else, so no name can escape its directory.
// INVALID_ARGUMENT otherwise, with a dedicated message for pickle/TorchScript
// files (.bin/.pt/.pth/.pkl/.ckpt), which are never accepted.
absl::Status ValidateAdapterFileName(absl::string_view file_name);

// True for adapter_config.json or adapter_fusion_config.json at the top: an
// adapter needs one of them.
bool IsTopLevelConfigFile(absl::string_view file_name);

// True for a name with a pickle-style extension.
bool IsPickleFileName(absl::string_view file_name);

}  // namespace adapterd
