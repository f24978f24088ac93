#include "engine/kernels/decode_attention.h"

#include <ATen/ops/empty.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"
#include "engine/kernels/decode_attention_launch.h"

#ifdef ADAPTERD_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace adapterd {
namespace {

namespace ai = attention_internal;

// The vector width the kernel loads one lane's slice of a row with.
int64_t LaneBytes(int64_t head_dim, int64_t elem) {
  const int64_t bytes = head_dim / 8 * elem;
  return bytes % 16 == 0 ? 16 : bytes % 8 == 0 ? 8 : 4;
}

bool Aligned(const at::Tensor& t, int64_t bytes) {
  if (reinterpret_cast<uintptr_t>(t.const_data_ptr()) % bytes != 0) return false;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) {
    if (t.size(d) > 1 && t.stride(d) * t.element_size() % bytes != 0) return false;
  }
  return t.stride(t.dim() - 1) == 1;
}

absl::Status CheckShapes(const DecodeAttentionInputs& in) {
  const auto& q = in.q;
  const auto& k = in.k_cache;
  if (!q.defined() || !k.defined() || !in.v_cache.defined() || !in.slots.defined() ||
      !in.positions.defined() || q.dim() != 3 || k.dim() != 4 ||
      !in.v_cache.sizes().equals(k.sizes())) {
    return absl::InvalidArgumentError(
        "decode attention: q [rows, heads, head_dim] and caches [slots, kv_heads, max_len, "
        "head_dim] of one shape are required");
  }
  const int64_t rows = q.size(0), heads = q.size(1), d = q.size(2), kv_heads = k.size(1);
  if (k.size(3) != d || kv_heads < 1 || heads % kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("decode attention: q has ", heads, " heads of ",
                                                   d, ", the cache ", kv_heads, " of ", k.size(3)));
  }
  if (in.slots.numel() != rows || in.positions.numel() != rows ||
      in.slots.scalar_type() != at::kLong || in.positions.scalar_type() != at::kLong) {
    return absl::InvalidArgumentError("decode attention: slots and positions must be int64 [rows]");
  }
  if (in.new_k.defined() != in.new_v.defined()) {
    return absl::InvalidArgumentError("decode attention: give both new_k and new_v, or neither");
  }
  for (const at::Tensor* t : {&in.new_k, &in.new_v}) {
    if (t->defined() && (t->dim() != 3 || t->size(0) != rows || t->size(1) != kv_heads ||
                         t->size(2) != d || t->scalar_type() != q.scalar_type())) {
      return absl::InvalidArgumentError(
          "decode attention: new_k/new_v must be [rows, kv_heads, head_dim]");
    }
  }
  if (in.rope_cos.defined() != in.rope_sin.defined() ||
      (in.rope_cos.defined() && !in.new_k.defined())) {
    return absl::InvalidArgumentError(
        "decode attention: rotary tables come as cos and sin together, with new_k");
  }
  for (const at::Tensor* t : {&in.rope_cos, &in.rope_sin}) {
    if (t->defined() && (t->dim() != 2 || t->size(0) != rows || t->size(1) != d ||
                         t->scalar_type() != q.scalar_type())) {
      return absl::InvalidArgumentError("decode attention: rotary tables must be [rows, head_dim]");
    }
  }
  return absl::OkStatus();
}

// DecodeAttentionServes for inputs whose shapes CheckShapes accepted.
bool ServesCheckedShapes(const DecodeAttentionInputs& in) {
#ifdef ADAPTERD_WITH_CUDA
  const auto& q = in.q;
  const at::ScalarType t = q.scalar_type();
  if (!q.is_cuda() || (t != at::kFloat && t != at::kHalf && t != at::kBFloat16)) return false;
  if (in.k_cache.scalar_type() != t || in.v_cache.scalar_type() != t) return false;
  for (const at::Tensor* o : {&in.k_cache, &in.v_cache, &in.slots, &in.positions, &in.new_k,
                              &in.new_v, &in.rope_cos, &in.rope_sin}) {
    if (o->defined() && o->device() != q.device()) return false;
  }
  if (c10::GradMode::is_enabled() && q.requires_grad()) return false;
  if (!ai::DecodeAttentionHeadDimServed(static_cast<int>(q.size(2)))) return false;
  if (!in.k_cache.is_contiguous() || !in.v_cache.is_contiguous() || !in.slots.is_contiguous() ||
      !in.positions.is_contiguous()) {
    return false;
  }
  const int64_t width = LaneBytes(q.size(2), q.element_size());
  for (const at::Tensor* o :
       {&in.q, &in.k_cache, &in.v_cache, &in.new_k, &in.new_v, &in.rope_cos, &in.rope_sin}) {
    if (o->defined() && !Aligned(*o, width)) return false;
  }
  return q.size(0) > 0 && q.size(0) < 65536 && in.k_cache.size(2) > 0;
#else
  (void)in;
  return false;
#endif
}

}  // namespace

bool DecodeAttentionServes(const DecodeAttentionInputs& in) {
  return CheckShapes(in).ok() && ServesCheckedShapes(in);
}

bool DecodeAttentionPreferred(const DecodeAttentionInputs& in) {
  return DecodeAttentionServes(in) && in.q.size(1) == in.k_cache.size(1);
}

absl::StatusOr<at::Tensor> DecodeAttention(const DecodeAttentionInputs& in) {
  if (auto s = CheckShapes(in); !s.ok()) return s;
  if (!ServesCheckedShapes(in)) {
    return absl::UnimplementedError(
        "decode attention: these inputs are not served (see DecodeAttentionServes)");
  }
#ifdef ADAPTERD_WITH_CUDA
  try {
    const c10::cuda::CUDAGuard guard(in.q.device());
    const at::Tensor& q = in.q;
    const int64_t rows = q.size(0), heads = q.size(1), d = q.size(2);
    const int64_t max_len = in.k_cache.size(2);
    ai::DecodeAttentionArgs a;
    a.dtype = q.scalar_type() == at::kHalf       ? ai::LoraDType::kFloat16
              : q.scalar_type() == at::kBFloat16 ? ai::LoraDType::kBFloat16
                                                 : ai::LoraDType::kFloat32;
    a.rows = static_cast<int>(rows);
    a.heads = static_cast<int>(heads);
    a.kv_heads = static_cast<int>(in.k_cache.size(1));
    a.head_dim = static_cast<int>(d);
    a.q = q.const_data_ptr();
    a.q_row_stride = q.stride(0);
    a.q_head_stride = q.stride(1);
    a.k_cache = in.k_cache.data_ptr();
    a.v_cache = in.v_cache.data_ptr();
    a.max_len = max_len;
    a.slots = in.slots.const_data_ptr<int64_t>();
    a.positions = in.positions.const_data_ptr<int64_t>();
    if (in.new_k.defined()) {
      a.new_k = in.new_k.const_data_ptr();
      a.new_v = in.new_v.const_data_ptr();
      a.new_k_row_stride = in.new_k.stride(0);
      a.new_k_head_stride = in.new_k.stride(1);
      a.new_v_row_stride = in.new_v.stride(0);
      a.new_v_head_stride = in.new_v.stride(1);
    }
    if (in.rope_cos.defined()) {
      a.rope_cos = in.rope_cos.const_data_ptr();
      a.rope_sin = in.rope_sin.const_data_ptr();
      a.rope_cos_row_stride = in.rope_cos.stride(0);
      a.rope_sin_row_stride = in.rope_sin.stride(0);
    }
    a.scale = static_cast<float>(in.scale);
    a.window = in.window;
    // Split the keys where the CTAs (one per row and block of up to four
    // query heads of a KV head) would not give every SM four, and the rows
    // are long: at least 128 keys per split.
    const int64_t bound = in.max_len_hint > 0 ? std::min(in.max_len_hint, max_len) : max_len;
    const int64_t ctas = rows * heads / ai::HeadsPerCta(a.heads, a.kv_heads);
    const int64_t want = 4 * static_cast<int64_t>(ai::DecodeAttentionSms());
    int64_t splits = 1;
    if (ctas < want && bound > 256) {
      splits = std::min((want + ctas - 1) / ctas, (bound + 127) / 128);
    }
    a.chunk = (bound + splits - 1) / splits;
    a.chunk = (a.chunk + 15) / 16 * 16;
    splits = (bound + a.chunk - 1) / a.chunk;
    a.splits = static_cast<int>(splits);
    at::Tensor partial_acc, partial_ml;  // Live until the launches are queued.
    if (splits > 1) {
      const auto f32 = q.options().dtype(at::kFloat);
      partial_acc = at::empty({rows, heads, splits, d}, f32);
      partial_ml = at::empty({rows, heads, splits, 2}, f32);
      a.partial_acc = partial_acc.mutable_data_ptr<float>();
      a.partial_ml = partial_ml.mutable_data_ptr<float>();
    }
    at::Tensor out = at::empty({rows, heads * d}, q.options());
    a.out = out.data_ptr();
    const std::string err =
        ai::LaunchDecodeAttentionCuda(a, c10::cuda::getCurrentCUDAStream().stream());
    if (!err.empty()) return absl::InternalError(absl::StrCat("decode attention: ", err));
    return out;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("decode attention: ", e.what_without_backtrace()));
  }
#else
  return absl::UnimplementedError("decode attention: built without CUDA");
#endif
}

}  // namespace adapterd
