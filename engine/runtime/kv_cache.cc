#include "engine/runtime/kv_cache.h"

#include <ATen/ATen.h>
#include <ATen/TensorIndexing.h>

#include <atomic>
#include <cstring>
#include <limits>
#include <unordered_set>

#include "engine/kernels/decode_attention.h"
#include "engine/model/causal_lm.h"

namespace adapterd {
namespace {

at::Tensor LongTensor(const std::vector<int64_t>& values, at::Device device) {
  at::Tensor t = at::empty({static_cast<int64_t>(values.size())}, at::kLong);
  if (!values.empty()) {
    std::memcpy(t.data_ptr<int64_t>(), values.data(), values.size() * sizeof(int64_t));
  }
  return t.to(device);
}

// true where key position k must not be seen by query position q.
at::Tensor Blocked(const at::Tensor& q_pos, const at::Tensor& k_pos, int64_t window) {
  at::Tensor blocked = k_pos.gt(q_pos);
  if (window > 0) blocked.logical_or_(k_pos.le(q_pos - window));
  return blocked;
}

}  // namespace

AttentionStep AttentionStep::Build(const ForwardBatch& batch, int num_slots, int64_t max_len,
                                   int64_t vocab_size, int64_t sliding_window, at::Device device) {
  const size_t n = batch.slots.size();
  TORCH_CHECK(n > 0, "empty batch");
  TORCH_CHECK(batch.past_lens.size() == n && batch.tokens.size() == n,
              "ForwardBatch: slots, past_lens and tokens differ in length");
  AttentionStep step;
  step.sliding_window = sliding_window;
  std::unordered_set<int64_t> seen;
  std::vector<int64_t> ids, positions, token_slots, last_rows;
  step.all_decode = true;
  for (size_t i = 0; i < n; ++i) {
    const int64_t slot = batch.slots[i];
    const int64_t past = batch.past_lens[i];
    const int64_t len = static_cast<int64_t>(batch.tokens[i].size());
    TORCH_CHECK(slot >= 0 && slot < num_slots, "slot ", slot, " out of range [0, ", num_slots, ")");
    TORCH_CHECK(seen.insert(slot).second, "slot ", slot, " appears twice in one batch");
    TORCH_CHECK(len > 0, "sequence ", i, " has no new tokens");
    TORCH_CHECK(past >= 0 && past + len <= max_len, "sequence ", i, ": ", past, " + ", len,
                " tokens exceed the cache length ", max_len);
    step.slots.push_back(slot);
    step.past_lens.push_back(past);
    step.lens.push_back(len);
    step.offsets.push_back(step.num_tokens);
    for (int64_t j = 0; j < len; ++j) {
      const int32_t id = batch.tokens[i][j];
      TORCH_CHECK(id >= 0 && id < vocab_size, "token id ", id, " out of range [0, ", vocab_size,
                  ")");
      ids.push_back(id);
      positions.push_back(past + j);
      token_slots.push_back(slot);
    }
    step.num_tokens += len;
    last_rows.push_back(step.num_tokens - 1);
    step.max_kv_len = std::max(step.max_kv_len, past + len);
    if (len != 1) step.all_decode = false;
  }
  step.token_ids = LongTensor(ids, device);
  step.token_positions = LongTensor(positions, device);
  step.token_slots = LongTensor(token_slots, device);
  step.last_rows = LongTensor(last_rows, device);
  step.slots_tensor = LongTensor(step.slots, device);

  const at::Tensor k_pos =
      at::arange(step.max_kv_len, at::TensorOptions().dtype(at::kLong).device(device));
  if (step.all_decode) {
    at::Tensor q_pos = step.token_positions.unsqueeze(1);  // [B, 1]
    step.blocked.push_back(Blocked(q_pos, k_pos.unsqueeze(0), 0).view({-1, 1, 1, step.max_kv_len}));
    if (sliding_window > 0) {
      step.blocked_sliding.push_back(
          Blocked(q_pos, k_pos.unsqueeze(0), sliding_window).view({-1, 1, 1, step.max_kv_len}));
    }
    if (device.is_cuda()) {
      step.decode_allowed = step.blocked[0].logical_not();
      if (sliding_window > 0) step.decode_allowed_sliding = step.blocked_sliding[0].logical_not();
      bool consecutive = true;
      for (size_t i = 1; i < n && consecutive; ++i) {
        consecutive = step.slots[i] == step.slots[0] + static_cast<int64_t>(i);
      }
      if (consecutive) step.consecutive_first_slot = step.slots[0];
    }
  } else {
    for (size_t i = 0; i < n; ++i) {
      const int64_t kv_len = step.past_lens[i] + step.lens[i];
      at::Tensor q_pos = step.token_positions.narrow(0, step.offsets[i], step.lens[i]).unsqueeze(1);
      at::Tensor keys = k_pos.narrow(0, 0, kv_len).unsqueeze(0);
      step.blocked.push_back(Blocked(q_pos, keys, 0));
      if (sliding_window > 0) step.blocked_sliding.push_back(Blocked(q_pos, keys, sliding_window));
    }
  }
  return step;
}

KvCache::KvCache(int num_layers, int num_slots, int64_t max_len, int64_t kv_heads, int64_t head_dim,
                 at::ScalarType dtype, at::Device device)
    : num_slots_(num_slots), max_len_(max_len), kv_heads_(kv_heads), head_dim_(head_dim) {
  static std::atomic<uint64_t> next_id{1};
  id_ = next_id++;
  const auto options = at::TensorOptions().dtype(dtype).device(device);
  const int64_t slots = device.is_cuda() ? num_slots + 1 : num_slots;
  for (int i = 0; i < num_layers; ++i) {
    keys_.push_back(at::zeros({slots, kv_heads, max_len, head_dim}, options));
    values_.push_back(at::zeros({slots, kv_heads, max_len, head_dim}, options));
  }
}

void KvCache::Write(int layer, const AttentionStep& step, const at::Tensor& k,
                    const at::Tensor& v) {
  using at::indexing::Slice;
  keys_[layer].index_put_({step.token_slots, Slice(), step.token_positions}, k);
  values_[layer].index_put_({step.token_slots, Slice(), step.token_positions}, v);
}

namespace {

DecodeAttentionInputs DecodeInputs(const at::Tensor& keys, const at::Tensor& values,
                                   const AttentionStep& step, const at::Tensor& q, double scale,
                                   bool sliding) {
  DecodeAttentionInputs in;
  in.q = q;
  in.k_cache = keys;
  in.v_cache = values;
  in.slots = step.token_slots;
  in.positions = step.token_positions;
  in.scale = scale;
  in.window = sliding ? step.sliding_window : 0;
  in.max_len_hint = step.max_kv_len;
  return in;
}

at::Tensor ValueOrThrow(absl::StatusOr<at::Tensor> out) {
  TORCH_CHECK(out.ok(), out.status().ToString());
  return *std::move(out);
}

}  // namespace

at::Tensor KvCache::WriteAndAttend(int layer, const AttentionStep& step, const at::Tensor& k,
                                   const at::Tensor& v, const at::Tensor& q, double scale,
                                   bool sliding) {
  at::Tensor out = TryRotateWriteAndAttend(layer, step, k, v, q, {}, {}, scale, sliding);
  if (out.defined()) return out;
  Write(layer, step, k, v);
  return Attend(layer, step, q, scale, sliding);
}

at::Tensor KvCache::TryRotateWriteAndAttend(int layer, const AttentionStep& step,
                                            const at::Tensor& k, const at::Tensor& v,
                                            const at::Tensor& q, const at::Tensor& cos,
                                            const at::Tensor& sin, double scale, bool sliding) {
  if (!step.all_decode || !q.is_cuda()) return at::Tensor();
  DecodeAttentionInputs in = DecodeInputs(keys_[layer], values_[layer], step, q, scale, sliding);
  in.new_k = k;
  in.new_v = v;
  in.rope_cos = cos;
  in.rope_sin = sin;
  if (!DecodeAttentionPreferred(in)) return at::Tensor();
  return ValueOrThrow(DecodeAttention(in));
}

at::Tensor KvCache::Attend(int layer, const AttentionStep& step, const at::Tensor& q, double scale,
                           bool sliding) const {
  if (step.all_decode && q.is_cuda()) {
    const DecodeAttentionInputs in =
        DecodeInputs(keys_[layer], values_[layer], step, q, scale, sliding);
    if (DecodeAttentionPreferred(in)) return ValueOrThrow(DecodeAttention(in));
  }
  const int64_t heads = q.size(1);
  const int64_t group = heads / kv_heads_;
  const int64_t d = head_dim_;
  const auto& blocked =
      sliding && !step.blocked_sliding.empty() ? step.blocked_sliding : step.blocked;
  const double neg_inf = -std::numeric_limits<double>::infinity();

  if (step.all_decode && q.is_cuda()) {
    // Fused attention over the cache (read in place when the slots are
    // consecutive); scores and softmax in fp32 inside the kernel.
    const int64_t b = q.size(0);
    const int64_t len = step.max_kv_len;
    at::Tensor k = keys_[layer].narrow(2, 0, len);
    at::Tensor v = values_[layer].narrow(2, 0, len);
    if (step.consecutive_first_slot >= 0) {
      k = k.narrow(0, step.consecutive_first_slot, b);
      v = v.narrow(0, step.consecutive_first_slot, b);
    } else {
      k = k.index_select(0, step.slots_tensor);
      v = v.index_select(0, step.slots_tensor);
    }
    const at::Tensor& allowed = sliding && step.decode_allowed_sliding.defined()
                                    ? step.decode_allowed_sliding
                                    : step.decode_allowed;
    at::Tensor out = at::scaled_dot_product_attention(q.unsqueeze(2), k, v, allowed, 0.0,
                                                      /*is_causal=*/false, scale,
                                                      /*enable_gqa=*/group > 1);
    return out.reshape({b, heads * d});  // [B, H, 1, D]
  }
  if (step.all_decode) {
    const int64_t b = q.size(0);
    const int64_t len = step.max_kv_len;
    at::Tensor k = keys_[layer].narrow(2, 0, len).index_select(0, step.slots_tensor);
    at::Tensor v = values_[layer].narrow(2, 0, len).index_select(0, step.slots_tensor);
    at::Tensor qg = q.reshape({b, kv_heads_, group, d});
    at::Tensor scores = at::matmul(qg, k.transpose(-1, -2)).to(at::kFloat).mul_(scale);
    scores.masked_fill_(blocked[0], neg_inf);
    at::Tensor probs = at::softmax(scores, -1).to(q.scalar_type());
    return at::matmul(probs, v).reshape({b, heads * d});  // [B, kv, g, D]
  }

  std::vector<at::Tensor> outs;
  outs.reserve(step.slots.size());
  for (size_t i = 0; i < step.slots.size(); ++i) {
    const int64_t n = step.lens[i];
    const int64_t len = step.past_lens[i] + n;
    if (q.is_cuda() && step.past_lens[i] == 0 && n > 1 && !sliding) {
      // A prompt from position 0: plain causal attention over its own keys,
      // which the fused kernels (flash for fp16/bf16) do without a mask.
      at::Tensor qi = q.narrow(0, step.offsets[i], n).transpose(0, 1).unsqueeze(0);  // [1, H, n, D]
      at::Tensor k = keys_[layer][step.slots[i]].narrow(1, 0, n).unsqueeze(0);  // [1, kv, n, D]
      at::Tensor v = values_[layer][step.slots[i]].narrow(1, 0, n).unsqueeze(0);
      at::Tensor out = at::scaled_dot_product_attention(qi, k, v, std::nullopt, 0.0,
                                                        /*is_causal=*/true, scale,
                                                        /*enable_gqa=*/group > 1);
      outs.push_back(out.squeeze(0).transpose(0, 1).reshape({n, heads * d}));
      continue;
    }
    at::Tensor qi =
        q.narrow(0, step.offsets[i], n).transpose(0, 1).reshape({kv_heads_, group, n, d});
    at::Tensor k = keys_[layer][step.slots[i]].narrow(1, 0, len).unsqueeze(1);    // [kv, 1, L, D]
    at::Tensor v = values_[layer][step.slots[i]].narrow(1, 0, len).unsqueeze(1);  // [kv, 1, L, D]
    at::Tensor scores = at::matmul(qi, k.transpose(-1, -2)).to(at::kFloat).mul_(scale);
    scores.masked_fill_(blocked[i], neg_inf);
    at::Tensor probs = at::softmax(scores, -1).to(q.scalar_type());
    at::Tensor out = at::matmul(probs, v);  // [kv, g, n, D]
    outs.push_back(out.permute({2, 0, 1, 3}).reshape({n, heads * d}));
  }
  return outs.size() == 1 ? outs[0] : at::cat(outs, 0);
}

}  // namespace adapterd
