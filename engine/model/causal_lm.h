#pragma once

// Decoder-only causal LMs loaded from a Hugging Face model directory:
// the Llama family (Llama 2/3, Mistral, Qwen2) and GPT-2. Engine-internal
// header (uses ATen); never include it from engine/api or outside engine/.
//
// Owned by the engine. Forward may run on several threads at once (the engine
// thread serving, training jobs on theirs), each with its own KvCache: the
// weights are only read, and the one lazily filled table (llama.cc's dynamic
// RoPE frequencies) is guarded. Linear() gives mutable access for merging,
// which must not overlap any Forward. Forward may throw c10::Error, which the
// engine catches at its API boundary.

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/model_config.h"

namespace adapterd {

class KvCache;
struct Adapter;

struct ModelLoadOptions {
  std::string device = "cpu";  // "cpu", "cuda", "cuda:N".
  std::string dtype;           // Empty: config's torch_dtype/dtype (float32 if absent).
  // CUDA: run decode steps (one new token per sequence, no autograd) as CUDA
  // graph replays where the decoder supports it (Llama family).
  bool cuda_graphs = true;
  // CUDA, fp16/bf16 (Llama family): projections with LoRA adapters in small
  // decode steps (DecodeGemmPreferred) run through the decode GEMM of
  // engine/kernels, the batched LoRA in its epilogue, instead of the default
  // (cuBLAS + the LoRA kernels; from 8 rows LinearGemm::kOverlap, the LoRA
  // beside cuBLASLt). Off by default: on the H200 the whole decode step
  // measured slower with it (docs/gpu.md); benchmarks compare both.
  bool decode_gemm = false;
};

// One step's work: for each sequence, the new tokens that extend what its
// cache slot already holds.
struct ForwardBatch {
  std::vector<int> slots;                    // Cache slot per sequence (distinct).
  std::vector<int64_t> past_lens;            // Tokens already cached in that slot.
  std::vector<std::vector<int32_t>> tokens;  // New tokens per sequence (non-empty).
  bool all_logits = false;  // true: a row per new token; false: the last token's only.
  // Empty, or per sequence: its adapter (nullptr: the base model). Not owned;
  // must outlive the call.
  std::vector<const Adapter*> adapters;
  // Empty, or per sequence: how many leading entries of tokens[i] are the
  // adapter's prompt rows (prompt/P-tuning; their ids are ignored) at
  // positions past_lens[i]...; their logits are not returned.
  std::vector<int> virtual_tokens;
};

// A decoder's linear layer as stored: the weight is [out, in], or [in, out]
// when fan_in_fan_out (GPT-2's Conv1D). Pointers into the model; bias may
// point to an undefined tensor.
struct LinearRef {
  at::Tensor* weight = nullptr;
  at::Tensor* bias = nullptr;
  bool fan_in_fan_out = false;
};

class CausalLM {
 public:
  // NOT_FOUND: missing directory/config.json/weights; INVALID_ARGUMENT: corrupt
  // or inconsistent files (bad safetensors header, missing or mis-shaped
  // tensors); UNIMPLEMENTED: unknown model_type; FAILED_PRECONDITION: device
  // not available.
  static absl::StatusOr<std::unique_ptr<CausalLM>> Load(const std::string& dir,
                                                        const ModelLoadOptions& options);
  virtual ~CausalLM() = default;

  virtual const ModelConfig& config() const = 0;
  virtual at::ScalarType dtype() const = 0;
  virtual at::Device device() const = 0;
  // sha256 (hex) over config.json and every safetensors header.
  virtual const std::string& fingerprint() const = 0;

  // A cache for `num_slots` sequences of up to `max_len` tokens each.
  virtual std::unique_ptr<KvCache> NewCache(int num_slots, int64_t max_len) const = 0;

  // Runs the batch, appending the new tokens' keys/values to the cache.
  // Returns float32 logits on the CPU-or-model device: [sum of new tokens, V]
  // in batch order when all_logits, else [num sequences, V].
  // REQUIRES: past_lens[i] + tokens[i].size() <= the cache's max_len.
  // Rows of virtual tokens are left out of all_logits output; the adapters
  // of engine/peft apply per row.
  //
  // On CUDA a decode step may run as a replay of a CUDA graph captured over
  // `cache` (the first step of a shape captures it): every cache slot is a
  // row of the graph, and rows of slots not in the batch write only to the
  // cache's scratch slot.
  virtual at::Tensor Forward(const ForwardBatch& batch, KvCache& cache) = 0;

  // Decode steps run as CUDA graph replays so far (tests, benchmarks).
  virtual int64_t decode_graph_replays() const { return 0; }
  // Turns ModelLoadOptions::cuda_graphs on or off (benchmarks compare both).
  virtual void set_cuda_graphs(bool on) {}
  // Turns ModelLoadOptions::decode_gemm on or off (benchmarks compare both;
  // captured decode graphs are dropped).
  virtual void set_decode_gemm(bool on) {}

  // Layer `layer`'s linear module `module` (engine/peft/adapter.h
  // lora_module); weight nullptr if out of range. For adapter checks and
  // merging; never modify while Forward runs.
  virtual LinearRef Linear(int layer, int module) = 0;

  // The input token embeddings [vocab, hidden] in the model's dtype (Llama's
  // embed_tokens, GPT-2's wte), e.g. for prompt tuning's vocabulary init.
  virtual const at::Tensor& input_embeddings() const = 0;
};

}  // namespace adapterd
