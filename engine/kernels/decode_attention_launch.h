#pragma once

// Plain-C++ launch parameters shared by decode_attention.cc and the CUDA
// kernels in decode_attention.cu. No torch and no CUDA header here.

#include <cstdint>
#include <string>

#include "engine/kernels/lora_launch.h"

namespace adapterd::attention_internal {

using lora_internal::LoraDType;

// Every pointer is device memory; strides are in elements.
struct DecodeAttentionArgs {
  LoraDType dtype = LoraDType::kBFloat16;
  int rows = 0;  // One query token per row.
  int heads = 0;
  int kv_heads = 0;  // heads % kv_heads == 0.
  int head_dim = 0;
  const void* q = nullptr;  // [rows, heads, head_dim], strides below, last dim contiguous.
  int64_t q_row_stride = 0;
  int64_t q_head_stride = 0;
  // The cache, [slots, kv_heads, max_len, head_dim] contiguous, read in place.
  void* k_cache = nullptr;
  void* v_cache = nullptr;
  int64_t max_len = 0;
  const int64_t* slots = nullptr;      // [rows]: each row's cache slot.
  const int64_t* positions = nullptr;  // [rows]: the query's position; keys 0..position.
  // The step's new keys and values ([rows, kv_heads, head_dim], strides
  // below), or null where they are already in the cache. When given, the key
  // at each row's position is taken from here and also stored in the cache.
  const void* new_k = nullptr;
  const void* new_v = nullptr;
  int64_t new_k_row_stride = 0;
  int64_t new_k_head_stride = 0;
  int64_t new_v_row_stride = 0;
  int64_t new_v_head_stride = 0;
  // Rotary tables ([rows, head_dim], row strides below, q's dtype), or null:
  // given, q and new_k arrive unrotated and the kernels rotate them (new_k is
  // then required).
  const void* rope_cos = nullptr;
  const void* rope_sin = nullptr;
  int64_t rope_cos_row_stride = 0;
  int64_t rope_sin_row_stride = 0;
  float scale = 1.0f;
  int64_t window = 0;  // > 0: only keys k > position - window.
  // Key range split over `splits` CTAs per (row, head) of `chunk` positions
  // each; with splits > 1 the partial results go to `partial_acc`
  // ([rows, heads, splits, head_dim]) and `partial_ml` ([rows, heads, splits,
  // 2]: running max and sum), and a second kernel combines them.
  int splits = 1;
  int64_t chunk = 0;
  float* partial_acc = nullptr;
  float* partial_ml = nullptr;
  void* out = nullptr;  // [rows, heads * head_dim], contiguous, q's dtype.
};

// Query heads of one KV head that one CTA takes (they share its key loads):
// 4, 2 or 1, the largest dividing the group. The launch grid and the host's
// split count both follow it.
inline int HeadsPerCta(int heads, int kv_heads) {
  const int group = heads / kv_heads;
  return group % 4 == 0 ? 4 : group % 2 == 0 ? 2 : 1;
}

// Whether the kernels serve head_dim (16, 32, 64, 96, 128 or 256).
bool DecodeAttentionHeadDimServed(int head_dim);
// The number of SMs of the current device (for the split count).
int DecodeAttentionSms();
// Returns an empty string on success, else the CUDA error text.
std::string LaunchDecodeAttentionCuda(const DecodeAttentionArgs& args, void* stream);

}  // namespace adapterd::attention_internal
