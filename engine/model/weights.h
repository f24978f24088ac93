#pragma once

// The tensors of a Hugging Face model directory (model.safetensors or a
// sharded model.safetensors.index.json), and the decoder builders that
// consume them. Engine-internal header (uses ATen).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/causal_lm.h"
#include "engine/model/model_config.h"
#include "engine/model/safetensors.h"

namespace adapterd {

// Memory-mapped weight files of one model directory, looked up by canonical
// name: the stored name without a leading "model." or "transformer.".
// Immutable after Open; thread-safe.
class ModelWeights {
 public:
  // NOT_FOUND if the directory has neither model.safetensors nor
  // model.safetensors.index.json (or a shard it names is missing);
  // INVALID_ARGUMENT for a corrupt file or index, or a name stored twice.
  static absl::StatusOr<std::unique_ptr<ModelWeights>> Open(const std::string& dir);

  bool Has(const std::string& name) const { return index_.count(name) > 0; }

  // The tensor `name` converted to `dtype` on `device`. INVALID_ARGUMENT
  // naming the tensor if it is missing, has another shape than `shape`, or is
  // not a floating-point tensor (F32, F16, BF16, F64).
  absl::StatusOr<at::Tensor> Get(const std::string& name, const std::vector<int64_t>& shape,
                                 at::ScalarType dtype, at::Device device) const;

  // The files in name order (for fingerprints).
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  struct Entry {
    const SafetensorsFile* file;
    const SafetensorsTensorInfo* info;
  };
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, Entry> index_;
};

// Loads tensors one after another, keeping the first error: check status()
// once after the last call. Not thread-safe.
class TensorLoader {
 public:
  TensorLoader(const ModelWeights& weights, at::ScalarType dtype, at::Device device)
      : weights_(weights), dtype_(dtype), device_(device) {}
  // An undefined tensor after an error.
  at::Tensor operator()(const std::string& name, const std::vector<int64_t>& shape);
  const absl::Status& status() const { return status_; }

 private:
  const ModelWeights& weights_;
  at::ScalarType dtype_;
  at::Device device_;
  absl::Status status_;
};

// What every decoder is built from.
struct ModelContext {
  ModelConfig config;
  at::ScalarType dtype = at::kFloat;
  at::Device device = at::kCPU;
  std::string fingerprint;
  bool cuda_graphs = true;  // ModelLoadOptions::cuda_graphs.
  bool decode_gemm = false;  // ModelLoadOptions::decode_gemm.
};

// Builders of the concrete decoders (llama.cc, gpt2.cc), called by
// CausalLM::Load. Errors as for CausalLM::Load; may throw c10::Error.
absl::StatusOr<std::unique_ptr<CausalLM>> BuildLlama(const ModelContext& context,
                                                     const ModelWeights& weights);
absl::StatusOr<std::unique_ptr<CausalLM>> BuildGpt2(const ModelContext& context,
                                                    const ModelWeights& weights);

}  // namespace adapterd
