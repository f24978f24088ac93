#include "adapters_store/adapter_ref.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace adapterd {

std::string AdapterRef::ToString() const {
  return version > 0 ? absl::StrCat(name, "@", version) : name;
}

absl::Status ValidateAdapterName(absl::string_view name) {
  if (name.empty()) return absl::InvalidArgumentError("adapter name is empty");
  if (name.size() > kMaxAdapterNameLength) {
    return absl::InvalidArgumentError(
        absl::StrCat("adapter name is longer than ", kMaxAdapterNameLength, " characters"));
  }
  for (char c : name) {
    const bool ok =
        absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-';
    if (!ok) {
      return absl::InvalidArgumentError(
          "adapter name may contain only letters, digits, '.', '_' and '-'");
    }
  }
  if (name.front() == '.') return absl::InvalidArgumentError("adapter name may not start with '.'");
  if (name.find("..") != absl::string_view::npos) {
    return absl::InvalidArgumentError("adapter name may not contain \"..\"");
  }
  return absl::OkStatus();
}

absl::StatusOr<AdapterRef> ParseAdapterRef(absl::string_view ref) {
  AdapterRef out;
  const size_t at = ref.find('@');
  absl::string_view name = ref.substr(0, at);
  absl::Status status = ValidateAdapterName(name);
  if (!status.ok()) return status;
  out.name = std::string(name);
  if (at != absl::string_view::npos) {
    absl::string_view version = ref.substr(at + 1);
    int64_t v = 0;
    const bool digits = !version.empty() && version.size() <= 18 &&
                        version.find_first_not_of("0123456789") == absl::string_view::npos;
    if (!digits || !absl::SimpleAtoi(version, &v) || v <= 0) {
      return absl::InvalidArgumentError("adapter version must be a positive integer (name@N)");
    }
    out.version = v;
  }
  return out;
}

bool IsPickleFileName(absl::string_view file_name) {
  for (const char* ext : {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}) {
    if (absl::EndsWithIgnoreCase(file_name, ext)) {
      return true;
    }
  }
  return false;
}

bool IsTopLevelConfigFile(absl::string_view file_name) {
  return file_name == kAdapterConfigFile || file_name == kAdapterFusionConfigFile;
}

absl::Status ValidateAdapterFileName(absl::string_view file_name) {
  if (file_name == kAdapterConfigFile || file_name == kPeftWeightsFile ||
      file_name == kAdapterHubWeightsFile || file_name == kPromptEncoderFile ||
      file_name == kAdapterFusionConfigFile || file_name == kAdapterFusionWeightsFile) {
    return absl::OkStatus();
  }
  const size_t slash = file_name.find('/');
  if (slash != absl::string_view::npos && !IsPickleFileName(file_name)) {
    const absl::string_view dir = file_name.substr(0, slash);
    const absl::string_view leaf = file_name.substr(slash + 1);
    if (ValidateAdapterName(dir).ok() &&
        (leaf == kAdapterConfigFile || leaf == kAdapterHubWeightsFile ||
         leaf == kPeftWeightsFile)) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        "unexpected adapter file; a subdirectory may only be a fused adapter's "
        "<adapter-name>/adapter_config.json, adapter.safetensors or adapter_model.safetensors");
  }
  if (IsPickleFileName(file_name)) {
    return absl::InvalidArgumentError(
        "pickle/TorchScript weight files (.bin, .pt, ...) are not accepted; use safetensors");
  }
  return absl::InvalidArgumentError(
      "unexpected adapter file; accepted: adapter_config.json, adapter_model.safetensors, "
      "adapter.safetensors, prompt_encoder.safetensors, adapter_fusion_config.json, "
      "model_adapter_fusion.safetensors, <fused-adapter>/<adapter file>");
}

}  // namespace adapterd
