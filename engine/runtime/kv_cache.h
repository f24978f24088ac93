#pragma once

// The attention key/value cache of a decoder, and the attention over it.
// Engine-internal header (uses ATen).

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

namespace adapterd {

struct ForwardBatch;

// Where one Forward step's new tokens go: built once per step from the
// ForwardBatch and shared by every layer. Token rows are the sequences' new
// tokens concatenated in batch order.
struct AttentionStep {
  std::vector<int64_t> slots;      // Per sequence.
  std::vector<int64_t> past_lens;  // Per sequence: tokens already cached.
  std::vector<int64_t> lens;       // Per sequence: new tokens.
  std::vector<int64_t> offsets;    // Per sequence: first token row.
  int64_t num_tokens = 0;
  bool all_decode = false;     // Every sequence has exactly one new token.
  int64_t max_kv_len = 0;      // max(past_lens + lens).
  int64_t sliding_window = 0;  // The model's window for its sliding layers; 0 = none.

  at::Tensor token_ids;        // [T] int64 on the device.
  at::Tensor token_positions;  // [T] int64 on the device: past_len + j.
  at::Tensor token_slots;      // [T] int64 on the device.
  at::Tensor last_rows;        // [num sequences] int64: each sequence's last token row.
  // Per sequence (or one [B, 1, 1, max_kv_len] mask when all_decode): true
  // where a key must NOT be attended ([n, L] per sequence).
  std::vector<at::Tensor> blocked;
  std::vector<at::Tensor> blocked_sliding;  // Same, with the sliding window applied.
  at::Tensor slots_tensor;                  // [B] int64 on the device.
  // CUDA decode steps (fused attention): blocked and blocked_sliding negated
  // (true = attend; or an additive mask in the model dtype, 0 or -inf), and
  // the first slot when the slots are consecutive (the cache is read in
  // place), else -1.
  at::Tensor decode_allowed, decode_allowed_sliding;
  int64_t consecutive_first_slot = -1;

  // Validates the batch against the cache and the vocabulary (throws
  // c10::Error on a violated REQUIRES) and builds the step on `device`.
  // `sliding_window` > 0 also builds blocked_sliding.
  static AttentionStep Build(const ForwardBatch& batch, int num_slots, int64_t max_len,
                             int64_t vocab_size, int64_t sliding_window, at::Device device);
};

// Per-layer K and V for `num_slots` sequences of up to `max_len` tokens, in
// the model's dtype and device. Layout per layer: [num_slots, kv_heads,
// max_len, head_dim]; keys are stored after RoPE. A slot holds whatever its
// sequence wrote; the caller tracks how many positions are valid.
// Not thread-safe; owned by the engine thread.
class KvCache {
 public:
  KvCache(int num_layers, int num_slots, int64_t max_len, int64_t kv_heads, int64_t head_dim,
          at::ScalarType dtype, at::Device device);

  int num_layers() const { return static_cast<int>(keys_.size()); }
  int num_slots() const { return num_slots_; }
  int64_t max_len() const { return max_len_; }
  int64_t kv_heads() const { return kv_heads_; }
  int64_t head_dim() const { return head_dim_; }

  // [num_slots, kv_heads, max_len, head_dim] (on CUDA one more slot: a
  // scratch slot that padded rows of CUDA-graph decode steps write into);
  // writable (e.g. prefix KV).
  at::Tensor& keys(int layer) { return keys_[layer]; }
  at::Tensor& values(int layer) { return values_[layer]; }
  // Unique per cache object (CUDA graphs are captured over one cache).
  uint64_t id() const { return id_; }

  // Stores the step's new keys/values `k`, `v` ([T, kv_heads, head_dim]) at
  // their slots and positions.
  void Write(int layer, const AttentionStep& step, const at::Tensor& k, const at::Tensor& v);

  // Causal attention of the step's queries `q` ([T, heads, head_dim]) over
  // each sequence's cached prefix and new tokens (Write first). Scores and
  // softmax in float32. Returns [T, heads * head_dim] in q's dtype.
  // On CUDA decode steps (one token per sequence) the decode attention
  // kernel (engine/kernels/decode_attention.h) reads each row's keys in place
  // up to its own position where it is preferred (MHA); elsewhere SDPA or
  // matmul + softmax.
  at::Tensor Attend(int layer, const AttentionStep& step, const at::Tensor& q, double scale,
                    bool sliding) const;

  // Write, then Attend. On CUDA decode steps served by the decode attention
  // kernel, one launch does both (the new keys and values are stored by the
  // kernel that attends to them).
  at::Tensor WriteAndAttend(int layer, const AttentionStep& step, const at::Tensor& k,
                            const at::Tensor& v, const at::Tensor& q, double scale, bool sliding);

  // WriteAndAttend for unrotated q and k with the step's rotary tables
  // (`cos`, `sin`: [T, head_dim], the model dtype), rotating them inside the
  // decode attention kernel (one launch instead of the RoPE kernels, the
  // write and the attention). Only on CUDA decode steps that kernel takes
  // (see Attend): elsewhere returns an undefined tensor having done nothing,
  // and the caller rotates and calls WriteAndAttend. `cos` and `sin`
  // undefined: q and k come rotated (WriteAndAttend's kernel path).
  at::Tensor TryRotateWriteAndAttend(int layer, const AttentionStep& step, const at::Tensor& k,
                                     const at::Tensor& v, const at::Tensor& q,
                                     const at::Tensor& cos, const at::Tensor& sin, double scale,
                                     bool sliding);

 private:
  uint64_t id_;
  int num_slots_;
  int64_t max_len_;
  int64_t kv_heads_;
  int64_t head_dim_;
  std::vector<at::Tensor> keys_;
  std::vector<at::Tensor> values_;
};

}  // namespace adapterd
