#include "engine/model/causal_lm.h"

#include <ATen/ATen.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <sys/stat.h>

#include <exception>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "engine/model/weights.h"

namespace adapterd {
namespace {

absl::StatusOr<at::ScalarType> ParseDtype(const std::string& name, bool lenient) {
  if (name == "float32" || name == "fp32" || name == "float") return at::kFloat;
  if (name == "float16" || name == "fp16" || name == "half") return at::kHalf;
  if (name == "bfloat16" || name == "bf16") return at::kBFloat16;
  if (lenient) return at::kFloat;  // Absent or "auto" in config.json.
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "' (float32, float16 or bfloat16)"));
}

absl::StatusOr<at::Device> ParseDevice(const std::string& name) {
  if (name == "cpu") return at::Device(at::kCPU);
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (name != "cuda" && (!absl::SimpleAtoi(name.substr(5), &index) || index < 0)) {
      return absl::InvalidArgumentError(absl::StrCat("bad device '", name, "'"));
    }
    if (!at::hasCUDA()) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", name, "' requested but CUDA is not available"));
    }
    const int count = at::detail::getCUDAHooks().deviceCount();
    if (index >= count) {
      return absl::FailedPreconditionError(
          absl::StrCat("device '", name, "' requested but there are ", count, " CUDA devices"));
    }
    return at::Device(at::kCUDA, static_cast<c10::DeviceIndex>(index));
  }
  return absl::InvalidArgumentError(absl::StrCat("bad device '", name, "' (cpu, cuda or cuda:N)"));
}

absl::StatusOr<std::unique_ptr<CausalLM>> LoadOrThrow(const std::string& dir,
                                                      const ModelLoadOptions& options) {
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::NotFoundError(absl::StrCat("model directory not found: ", dir));
  }
  const std::string config_path = dir + "/config.json";
  std::ifstream in(config_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("no config.json in ", dir));
  std::stringstream text;
  text << in.rdbuf();
  const std::string config_json = text.str();

  ModelContext context;
  ASSIGN_OR_RETURN(context.config, ModelConfig::FromJson(config_json));
  if (options.dtype.empty()) {
    ASSIGN_OR_RETURN(context.dtype, ParseDtype(context.config.torch_dtype, /*lenient=*/true));
  } else {
    ASSIGN_OR_RETURN(context.dtype, ParseDtype(options.dtype, /*lenient=*/false));
  }
  ASSIGN_OR_RETURN(context.device, ParseDevice(options.device));
  context.cuda_graphs = options.cuda_graphs;
  context.decode_gemm = options.decode_gemm;
  ASSIGN_OR_RETURN(std::unique_ptr<ModelWeights> weights, ModelWeights::Open(dir));

  Sha256 sha;
  sha.Update(absl::string_view(config_json.data(), config_json.size()));
  for (const auto& file : weights->files()) {
    const std::string_view header = file->header_json();
    sha.Update(absl::string_view(header.data(), header.size()));
  }
  context.fingerprint = sha.HexDigest();

  switch (context.config.architecture) {
    case Architecture::kLlama:
      return BuildLlama(context, *weights);
    case Architecture::kGpt2:
      return BuildGpt2(context, *weights);
  }
  return absl::UnimplementedError("unknown architecture");
}

}  // namespace

absl::StatusOr<std::unique_ptr<CausalLM>> CausalLM::Load(const std::string& dir,
                                                         const ModelLoadOptions& options) {
  try {
    return LoadOrThrow(dir, options);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("loading ", dir, ": ", e.what()));
  }
}

}  // namespace adapterd
