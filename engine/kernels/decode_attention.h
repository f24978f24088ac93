#pragma once

// Decode attention on CUDA over the KV cache read in place: each row (one
// query token) attends to its own slot's keys 0..position (and with a
// sliding window only those > position - window), so rows of different
// lengths cost what their own keys cost: no gather of the slots, no mask and
// no padding to the longest row. Query heads share KV heads in groups (GQA).
// Scores and softmax in fp32; the output is rounded once. Long rows are split
// over several CTAs and combined by a second kernel. The launch depends only
// on the shapes and `max_len_hint`, so a decode step that calls it can be
// captured in a CUDA graph and replayed with slots and positions rewritten in
// place.
//
// Engine-internal: holds at::Tensor. The functions keep no state.

#include <ATen/core/Tensor.h>

#include <cstdint>

#include "absl/status/statusor.h"

namespace adapterd {

struct DecodeAttentionInputs {
  at::Tensor q;          // [rows, heads, head_dim], last dim contiguous.
  at::Tensor k_cache;    // [slots, kv_heads, max_len, head_dim], contiguous.
  at::Tensor v_cache;    // Same shape.
  at::Tensor slots;      // int64 [rows]: each row's slot.
  at::Tensor positions;  // int64 [rows]: each query's position (< max_len).
  // Optional [rows, kv_heads, head_dim] (last dim contiguous): the step's new
  // keys and values. Given, they are used for each row's own position and
  // stored into the cache there (the cache write and the attention in one
  // launch); absent, the cache must already hold them.
  at::Tensor new_k, new_v;
  // Optional rotary tables [rows, head_dim] (last dim contiguous, q's dtype;
  // transformers' cos and sin with the attention scaling folded in): given,
  // q and new_k arrive unrotated and are rotated here as transformers'
  // apply_rotary_pos_emb does, each product rounded to the dtype as the
  // engine's eager RoPE is (so the stored key is the one it would store).
  // Requires new_k.
  at::Tensor rope_cos, rope_sin;
  double scale = 1.0;
  int64_t window = 0;  // > 0: sliding window.
  // An upper bound on position + 1 over the rows (for the split count; must
  // be the same at capture and replay). 0: the cache's max_len.
  int64_t max_len_hint = 0;
};

// Whether DecodeAttention serves these inputs: CUDA, fp32/fp16/bf16 shared by
// q and the cache, head_dim 16/32/64/96/128/256, heads a multiple of
// kv_heads, aligned rows, no autograd.
bool DecodeAttentionServes(const DecodeAttentionInputs& in);

// Whether the model should take it over SDPA: where DecodeAttentionServes and
// every query head has its own KV head. Measured on the H200
// (attention_gpu_bench, docs/kernels.md): with MHA it is 1.3-2.4x faster than
// SDPA at decode lengths (<= 192 keys, and whenever row lengths differ) and
// 0.87-0.97x on long uniform rows; with GQA it is 0.5x (a CTA's lane groups
// share one key's loads, leaving a quarter of the bytes in flight), so GQA
// models keep SDPA.
bool DecodeAttentionPreferred(const DecodeAttentionInputs& in);

// Returns [rows, heads * head_dim] in q's dtype. INVALID_ARGUMENT where the
// shapes do not fit, UNIMPLEMENTED where !DecodeAttentionServes, INTERNAL
// on a CUDA error. Positions and slots are not checked on the device:
// REQUIRES: 0 <= slots < cache slots, 0 <= positions < max_len.
absl::StatusOr<at::Tensor> DecodeAttention(const DecodeAttentionInputs& in);

}  // namespace adapterd
