#include "engine/kernels/lora_kernels.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/gelu.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/silu.h>
#include <c10/core/GradMode.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "engine/kernels/lora_launch.h"

#ifdef ADAPTERD_WITH_CUDA
#include <ATen/cuda/CUDAContextLight.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#endif

namespace adapterd {
namespace {

using lora_internal::LoraDType;
using lora_internal::LoraLaunchArgs;

bool IsSupportedDtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

int64_t FloatBits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return static_cast<int64_t>(u);
}

float BitsFloat(int64_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits);
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

int64_t Ptr(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<int64_t>(t.data_ptr()) : 0;
}

at::Tensor ApplyActivation(const at::Tensor& t, int act) {
  switch (static_cast<LoraActivation>(act)) {
    case LoraActivation::kNone:
      return t;
    case LoraActivation::kRelu:
      return at::relu(t);
    case LoraActivation::kGelu:
      return at::gelu(t, "none");
    case LoraActivation::kGeluTanh:
      return at::gelu(t, "tanh");
    case LoraActivation::kSilu:
      return at::silu(t);
  }
  return t;
}

absl::Status CheckIndex(const LoraBatchIndex& index, int64_t num_tokens, const at::Device& device) {
  if (index.num_tokens != num_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora: index has ", index.num_tokens, " tokens, input has ", num_tokens));
  }
  if (!index.sorted_tokens.defined() || index.sorted_tokens.device() != device) {
    return absl::InvalidArgumentError("lora: index is not on the input's device");
  }
  return absl::OkStatus();
}

absl::Status CheckTable(const LoraWeightTable& table, const at::Device& device,
                        at::ScalarType dtype) {
  if (!table.meta.defined() || table.meta.device() != device) {
    return absl::InvalidArgumentError("lora: weight table is not on the input's device");
  }
  if (table.dtype != dtype) {
    return absl::InvalidArgumentError("lora: weight dtype differs from the activations'");
  }
  if (table.num_slices > lora_internal::kMaxLoraSlices) {
    return absl::InvalidArgumentError("lora: too many slices");
  }
  return absl::OkStatus();
}

LoraDType ToLaunchDtype(at::ScalarType t) {
  if (t == at::kHalf) return LoraDType::kFloat16;
  if (t == at::kBFloat16) return LoraDType::kBFloat16;
  return LoraDType::kFloat32;
}

// The tokens of one segment, as rows to gather: a narrow view when the
// segment is one token or a run of consecutive tokens (no gather, no scatter).
struct SegmentRows {
  int64_t first = 0;  // Valid when `index` is undefined.
  int64_t count = 0;
  at::Tensor index;  // int64 [count], or undefined for a contiguous run.

  at::Tensor Gather(const at::Tensor& t) const {
    return index.defined() ? t.index_select(0, index) : t.narrow(0, first, count);
  }
  // t[rows] = values (values already in t's dtype).
  void Scatter(const at::Tensor& t, const at::Tensor& values) const {
    if (index.defined()) {
      t.index_copy_(0, index, values);
    } else {
      t.narrow(0, first, count).copy_(values);
    }
  }
};

SegmentRows RowsOf(const LoraBatchIndex& index, int64_t seg) {
  const int32_t b = index.host_segment_start[seg];
  const int32_t e = index.host_segment_start[seg + 1];
  SegmentRows rows;
  rows.count = e - b;
  rows.first = index.host_sorted_tokens[b];
  bool contiguous = true;
  for (int32_t i = b + 1; i < e && contiguous; ++i) {
    contiguous = index.host_sorted_tokens[i] == index.host_sorted_tokens[i - 1] + 1;
  }
  if (!contiguous) {
    rows.index = at::empty({rows.count}, at::kLong);
    int64_t* p = rows.index.data_ptr<int64_t>();
    for (int32_t i = b; i < e; ++i) p[i - b] = index.host_sorted_tokens[i];
  }
  return rows;
}

const int64_t* HostMeta(const LoraWeightTable& table, int64_t slice, int64_t slot) {
  return table.meta.const_data_ptr<int64_t>() +
         (slice * table.num_slots + slot) * lora_internal::kMetaFields;
}

at::Tensor HostWeight(int64_t ptr, at::IntArrayRef sizes, at::ScalarType dtype) {
  const at::Tensor t =
      at::from_blob(reinterpret_cast<void*>(ptr), sizes, at::TensorOptions().dtype(dtype));
  return dtype == at::kFloat ? t : t.to(at::kFloat);
}

// y_rows += scale * (act(vs + a_bias) · Bᵀ + b_bias) for one segment and slice.
void ExpandSegmentCpu(at::Tensor vs, const int64_t* m, const LoraWeightTable& table,
                      const SegmentRows& rows, const at::Tensor& y) {
  const int64_t rank = m[lora_internal::kMetaRank];
  const int64_t out = m[lora_internal::kMetaOut];
  if (m[lora_internal::kMetaABias] != 0)
    vs = vs + HostWeight(m[lora_internal::kMetaABias], {rank}, table.dtype);
  vs = ApplyActivation(vs, static_cast<int>(m[lora_internal::kMetaAct]));
  at::Tensor delta = at::mm(vs, HostWeight(m[lora_internal::kMetaB], {out, rank}, table.dtype).t());
  if (m[lora_internal::kMetaBBias] != 0) {
    delta.add_(HostWeight(m[lora_internal::kMetaBBias], {out}, table.dtype));
  }
  const float scale = BitsFloat(m[lora_internal::kMetaScale]);
  if (table.dtype == at::kFloat && !rows.index.defined()) {
    y.narrow(0, rows.first, rows.count).add_(delta, scale);
  } else if (table.dtype == at::kFloat) {
    y.index_add_(0, rows.index, delta, scale);
  } else {
    // Round once: y + delta in fp32, then to the dtype (as the CUDA kernels do).
    rows.Scatter(y, rows.Gather(y).to(at::kFloat).add_(delta, scale).to(table.dtype));
  }
}

void ShrinkCpu(const at::Tensor& x, const LoraWeightTable& table, const LoraBatchIndex& index,
               const at::Tensor& v) {
  v.zero_();
  for (int64_t seg = 0; seg < index.max_segments; ++seg) {
    const int32_t slot = index.host_segment_slot[seg];
    if (slot < 0 || index.host_segment_start[seg] == index.host_segment_start[seg + 1]) continue;
    const SegmentRows rows = RowsOf(index, seg);
    const at::Tensor xs = rows.Gather(x).to(at::kFloat);
    for (int64_t s = 0; s < table.num_slices; ++s) {
      const int64_t* m = HostMeta(table, s, slot);
      if (m[lora_internal::kMetaA] == 0) continue;
      const int64_t rank = m[lora_internal::kMetaRank];
      const at::Tensor a =
          HostWeight(m[lora_internal::kMetaA], {rank, table.in_features}, table.dtype);
      rows.Scatter(v.select(0, s).narrow(1, 0, rank), at::mm(xs, a.t()));
    }
  }
}

void ExpandCpu(const at::Tensor& v, const LoraWeightTable& table, const LoraBatchIndex& index,
               std::span<const at::Tensor> y) {
  for (int64_t seg = 0; seg < index.max_segments; ++seg) {
    const int32_t slot = index.host_segment_slot[seg];
    if (slot < 0 || index.host_segment_start[seg] == index.host_segment_start[seg + 1]) continue;
    const SegmentRows rows = RowsOf(index, seg);
    for (int64_t s = 0; s < table.num_slices; ++s) {
      const int64_t* m = HostMeta(table, s, slot);
      if (m[lora_internal::kMetaA] == 0) continue;
      const at::Tensor vs = rows.Gather(v.select(0, s)).narrow(1, 0, m[lora_internal::kMetaRank]);
      ExpandSegmentCpu(vs, m, table, rows, y[s]);
    }
  }
}

// Shrink and expand per segment without materialising v.
void ApplyCpu(const at::Tensor& x, const LoraWeightTable& table, const LoraBatchIndex& index,
              std::span<const at::Tensor> y) {
  for (int64_t seg = 0; seg < index.max_segments; ++seg) {
    const int32_t slot = index.host_segment_slot[seg];
    if (slot < 0 || index.host_segment_start[seg] == index.host_segment_start[seg + 1]) continue;
    const SegmentRows rows = RowsOf(index, seg);
    const at::Tensor xs = rows.Gather(x).to(at::kFloat);
    for (int64_t s = 0; s < table.num_slices; ++s) {
      const int64_t* m = HostMeta(table, s, slot);
      if (m[lora_internal::kMetaA] == 0) continue;
      const at::Tensor a = HostWeight(
          m[lora_internal::kMetaA], {m[lora_internal::kMetaRank], table.in_features}, table.dtype);
      ExpandSegmentCpu(at::mm(xs, a.t()), m, table, rows, y[s]);
    }
  }
}

#ifdef ADAPTERD_WITH_CUDA
// Where LoraPath::kAuto takes the fused launch: where it beat the split
// kernels on the H200 (docs/kernels.md, 2026-11-29): at most 4 tokens per
// adapter over 8..32 (segment, slice) clusters (T=32 over 8 or 32 adapters,
// T=128 over 32: 3-7% faster). Outside that it was slower or even: one
// segment leaves 8 CTAs to stream the weights (T=8 on one adapter: 10.9
// against 8.4 us), and at 128 clusters (T=128 or 512 over 128 adapters; in
// the model, q/k/v over 32 adapters) it lost 1-6% (not profiled why).
bool FusedPreferred(const LoraLaunchArgs& args) {
  const int64_t clusters = int64_t{args.num_slices} * args.max_segments;
  return args.max_segment_tokens <= 4 && clusters >= 8 && clusters <= 32;
}

LoraLaunchArgs MakeLaunchArgs(const LoraWeightTable& table, const LoraBatchIndex& index) {
  LoraLaunchArgs args;
  args.dtype = ToLaunchDtype(table.dtype);
  args.num_tokens = static_cast<int>(index.num_tokens);
  args.in_features = static_cast<int>(table.in_features);
  args.max_rank = static_cast<int>(table.max_rank);
  args.meta = table.meta.const_data_ptr<int64_t>();
  args.num_slots = static_cast<int>(table.num_slots);
  args.sorted_tokens = index.sorted_tokens.const_data_ptr<int32_t>();
  args.segment_start = index.segment_start.const_data_ptr<int32_t>();
  args.segment_slot = index.segment_slot.const_data_ptr<int32_t>();
  args.max_segments = static_cast<int>(index.max_segments);
  args.max_segment_tokens = static_cast<int>(index.max_segment_tokens);
  args.num_slices = static_cast<int>(table.num_slices);
  for (int64_t out : table.out_features) args.max_out = std::max<int>(args.max_out, out);
  return args;
}
#endif

absl::Status ValidateShrink(const at::Tensor& x, const LoraWeightTable& table,
                            const LoraBatchIndex& index, const at::Tensor& v) {
  if (!x.defined() || x.dim() != 2 || (x.size(0) > 1 && x.stride(1) != 1) ||
      !IsSupportedDtype(x.scalar_type())) {
    return absl::InvalidArgumentError(
        "lora: x must be a 2-D fp32/fp16/bf16 tensor with contiguous rows");
  }
  if (x.size(1) != table.in_features) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora: x has ", x.size(1), " features, adapters expect ", table.in_features));
  }
  if (auto s = CheckTable(table, x.device(), x.scalar_type()); !s.ok()) return s;
  if (auto s = CheckIndex(index, x.size(0), x.device()); !s.ok()) return s;
  if (v.scalar_type() != at::kFloat || !v.is_contiguous() || v.dim() != 3 ||
      v.size(0) != table.num_slices || v.size(1) != x.size(0) || v.size(2) < table.max_rank ||
      v.device() != x.device()) {
    return absl::InvalidArgumentError(
        "lora: v must be float32 contiguous [num_slices, num_tokens, >= max_rank] on x's device");
  }
  return absl::OkStatus();
}

#ifdef ADAPTERD_WITH_CUDA
// While `stream` is being captured and its one last node is a kernel node
// (the base GEMM): makes the next node captured on it depend on that kernel
// through its launch-completion port (a programmatic edge: the next kernel
// is dispatched once every CTA of the GEMM has begun, and its
// griddepcontrol.wait still waits for the GEMM's completion). Returns whether
// it did; false outside a capture, after anything else, or where the driver
// refuses the edge (the launch then takes the plain programmatic attribute).
bool DependOnLastKernelsLaunch(cudaStream_t stream) {
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  const cudaGraphNode_t* deps = nullptr;
  size_t num_deps = 0;
  if (cudaStreamGetCaptureInfo(stream, &capture, nullptr, nullptr, &deps, nullptr, &num_deps) !=
      cudaSuccess) {
    cudaGetLastError();  // Not left for the next launch check to find.
    return false;
  }
  if (capture != cudaStreamCaptureStatusActive || num_deps != 1) return false;
  cudaGraphNodeType type = cudaGraphNodeTypeEmpty;
  if (cudaGraphNodeGetType(deps[0], &type) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  if (type != cudaGraphNodeTypeKernel) return false;
  cudaGraphNode_t gemm = deps[0];
  cudaGraphEdgeData edge = {};
  edge.from_port = cudaGraphKernelNodePortLaunchCompletion;
  edge.type = cudaGraphDependencyTypeProgrammatic;
  if (cudaStreamUpdateCaptureDependencies(stream, &gemm, &edge, 1,
                                          cudaStreamSetCaptureDependencies) != cudaSuccess) {
    cudaGetLastError();
    return false;
  }
  return true;
}

#endif

// after_producer / beside: LoraApplyOptions::after_base_gemm / beside_base_gemm.
absl::Status ShrinkImpl(const at::Tensor& x, const LoraWeightTable& table,
                        const LoraBatchIndex& index, const at::Tensor& v,
                        bool after_producer = false, bool beside = false) {
  if (auto s = ValidateShrink(x, table, index, v); !s.ok()) return s;
  if (x.is_cpu()) {
    ShrinkCpu(x, table, index, v);
    return absl::OkStatus();
  }
#ifdef ADAPTERD_WITH_CUDA
  if (x.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.device());
    if (index.num_tokens == 0 || index.max_segment_tokens == 0) return absl::OkStatus();
    LoraLaunchArgs args = MakeLaunchArgs(table, index);
    args.x = x.const_data_ptr();
    args.ld_x = x.stride(0);
    args.v = v.mutable_data_ptr<float>();
    args.v_width = static_cast<int>(v.size(2));
    args.after_producer = after_producer;
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
    args.producer_edge = after_producer && beside && DependOnLastKernelsLaunch(stream);
    const std::string err = lora_internal::LaunchLoraShrinkCuda(args, stream);
    if (!err.empty()) return absl::InternalError(absl::StrCat("lora shrink: ", err));
    return absl::OkStatus();
  }
#endif
  return absl::InvalidArgumentError("lora: unsupported device " + x.device().str());
}

absl::Status ValidateExpand(const at::Tensor& v, const LoraWeightTable& table,
                            const LoraBatchIndex& index, std::span<const at::Tensor> y) {
  if (!v.defined()) return absl::InvalidArgumentError("lora: v is undefined");
  if (auto s = CheckTable(table, v.device(), table.dtype); !s.ok()) return s;
  if (v.scalar_type() != at::kFloat || !v.is_contiguous() || v.dim() != 3 ||
      v.size(0) != table.num_slices || v.size(2) < table.max_rank) {
    return absl::InvalidArgumentError(
        "lora: v must be float32 contiguous [num_slices, num_tokens, >= max_rank]");
  }
  if (auto s = CheckIndex(index, v.size(1), v.device()); !s.ok()) return s;
  if (static_cast<int64_t>(y.size()) != table.num_slices) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora: ", y.size(), " outputs for ", table.num_slices, " slices"));
  }
  for (int64_t s = 0; s < table.num_slices; ++s) {
    const at::Tensor& ys = y[s];
    if (!ys.defined() || ys.dim() != 2 || ys.size(0) != v.size(1) ||
        ys.size(1) != table.out_features[s] || (ys.size(1) > 1 && ys.stride(1) != 1) ||
        ys.scalar_type() != table.dtype || ys.device() != v.device()) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora: output ", s, " must be [num_tokens, ", table.out_features[s],
                       "] with contiguous columns, in the adapters' dtype, on v's device"));
    }
  }
  return absl::OkStatus();
}

absl::Status ExpandImpl(const at::Tensor& v, const LoraWeightTable& table,
                        const LoraBatchIndex& index, std::span<const at::Tensor> y,
                        bool after_shrink) {
  if (auto s = ValidateExpand(v, table, index, y); !s.ok()) return s;
  if (v.is_cpu()) {
    ExpandCpu(v, table, index, y);
    return absl::OkStatus();
  }
#ifdef ADAPTERD_WITH_CUDA
  if (v.is_cuda()) {
    const c10::cuda::CUDAGuard guard(v.device());
    if (index.num_tokens == 0 || index.max_segment_tokens == 0) return absl::OkStatus();
    LoraLaunchArgs args = MakeLaunchArgs(table, index);
    args.v = const_cast<float*>(v.const_data_ptr<float>());
    args.v_width = static_cast<int>(v.size(2));
    args.after_shrink = after_shrink;
    for (int64_t s = 0; s < table.num_slices; ++s) {
      args.y[s] = y[s].data_ptr();
      args.ld_y[s] = y[s].stride(0);
    }
    const std::string err =
        lora_internal::LaunchLoraExpandCuda(args, c10::cuda::getCurrentCUDAStream().stream());
    if (!err.empty()) return absl::InternalError(absl::StrCat("lora expand: ", err));
    return absl::OkStatus();
  }
#endif
  return absl::InvalidArgumentError("lora: unsupported device " + v.device().str());
}

}  // namespace

LoraWeightTableBuilder::LoraWeightTableBuilder(int64_t num_slices, int64_t num_slots)
    : num_slices_(num_slices),
      num_slots_(num_slots),
      out_features_(std::max<int64_t>(num_slices, 0), -1),
      meta_(std::max<int64_t>(num_slices * num_slots, 0) * lora_internal::kMetaFields, 0) {}

absl::Status LoraWeightTableBuilder::Set(int64_t slice, int64_t slot, const LoraSliceWeights& w) {
  if (slice < 0 || slice >= num_slices_ || slot < 0 || slot >= num_slots_) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora: slice ", slice, " / slot ", slot, " out of range"));
  }
  if (!w.a.defined() || !w.b.defined() || w.a.dim() != 2 || w.b.dim() != 2 ||
      !w.a.is_contiguous() || !w.b.is_contiguous()) {
    return absl::InvalidArgumentError("lora: A and B must be contiguous 2-D tensors");
  }
  const int64_t rank = w.a.size(0);
  if (rank <= 0 || w.b.size(1) != rank) {
    return absl::InvalidArgumentError(
        absl::StrCat("lora: A has rank ", rank, ", B has rank ", w.b.size(1)));
  }
  if (!IsSupportedDtype(w.a.scalar_type()) || w.b.scalar_type() != w.a.scalar_type()) {
    return absl::InvalidArgumentError("lora: A and B must share one of fp32, fp16, bf16");
  }
  if (w.b.device() != w.a.device())
    return absl::InvalidArgumentError("lora: A and B on different devices");
  for (const at::Tensor* bias : {&w.a_bias, &w.b_bias}) {
    if (bias->defined() &&
        (bias->dim() != 1 || !bias->is_contiguous() || bias->scalar_type() != w.a.scalar_type() ||
         bias->device() != w.a.device())) {
      return absl::InvalidArgumentError("lora: biases must be contiguous 1-D tensors like A");
    }
  }
  if (w.a_bias.defined() && w.a_bias.size(0) != rank)
    return absl::InvalidArgumentError("lora: a_bias size != rank");
  if (w.b_bias.defined() && w.b_bias.size(0) != w.b.size(0)) {
    return absl::InvalidArgumentError("lora: b_bias size != out_features");
  }
  if (any_) {
    if (w.a.scalar_type() != dtype_ || w.a.device() != device_) {
      return absl::InvalidArgumentError("lora: all adapters must share one dtype and device");
    }
    if (w.a.size(1) != in_features_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lora: A has ", w.a.size(1), " input features, earlier adapters ", in_features_));
    }
  }
  if (out_features_[slice] >= 0 && out_features_[slice] != w.b.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lora: slice ", slice, " has ", out_features_[slice], " outputs, B has ", w.b.size(0)));
  }
  any_ = true;
  dtype_ = w.a.scalar_type();
  device_ = w.a.device();
  in_features_ = w.a.size(1);
  out_features_[slice] = w.b.size(0);
  max_rank_ = std::max(max_rank_, rank);
  int64_t* m = meta_.data() + (slice * num_slots_ + slot) * lora_internal::kMetaFields;
  m[lora_internal::kMetaA] = Ptr(w.a);
  m[lora_internal::kMetaB] = Ptr(w.b);
  m[lora_internal::kMetaABias] = Ptr(w.a_bias);
  m[lora_internal::kMetaBBias] = Ptr(w.b_bias);
  m[lora_internal::kMetaRank] = rank;
  m[lora_internal::kMetaOut] = w.b.size(0);
  m[lora_internal::kMetaScale] = FloatBits(w.scale);
  m[lora_internal::kMetaAct] = static_cast<int64_t>(w.activation);
  return absl::OkStatus();
}

absl::StatusOr<LoraWeightTable> LoraWeightTableBuilder::Build() const {
  if (!any_) return absl::FailedPreconditionError("lora: no adapter weights set");
  try {
    LoraWeightTable table;
    table.num_slices = num_slices_;
    table.num_slots = num_slots_;
    table.in_features = in_features_;
    table.max_rank = max_rank_;
    table.dtype = dtype_;
    table.out_features = out_features_;
    for (int64_t& o : table.out_features) o = std::max<int64_t>(o, 0);
    at::Tensor host = at::empty({num_slices_, num_slots_, lora_internal::kMetaFields}, at::kLong);
    std::memcpy(host.data_ptr<int64_t>(), meta_.data(), meta_.size() * sizeof(int64_t));
    table.meta = device_.is_cpu() ? host : host.to(device_);
    return table;
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("lora: ", e.what_without_backtrace()));
  }
}

absl::StatusOr<LoraBatchIndex> BuildLoraBatchIndex(std::span<const int32_t> token_slot,
                                                   int64_t num_slots, int64_t max_segments,
                                                   at::Device device,
                                                   int64_t max_segment_tokens_bound) {
  if (max_segments < 1) return absl::InvalidArgumentError("lora: max_segments must be >= 1");
  const int64_t t_count = static_cast<int64_t>(token_slot.size());
  std::vector<int32_t> count(num_slots, 0);
  for (const int32_t s : token_slot) {
    if (s < -1 || s >= num_slots) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora: token slot ", s, " out of [-1, ", num_slots, ")"));
    }
    if (s >= 0) ++count[s];
  }
  LoraBatchIndex index;
  index.num_tokens = t_count;
  index.max_segments = max_segments;
  index.host_segment_start.assign(max_segments + 1, 0);
  index.host_segment_slot.assign(max_segments, -1);
  std::vector<int32_t> offset(num_slots, 0);
  int64_t segments = 0;
  int32_t pos = 0;
  int64_t longest = 0;
  for (int64_t s = 0; s < num_slots; ++s) {
    if (count[s] == 0) continue;
    if (segments == max_segments) {
      return absl::InvalidArgumentError(
          absl::StrCat("lora: more than ", max_segments, " distinct adapters in one batch"));
    }
    index.host_segment_slot[segments] = static_cast<int32_t>(s);
    index.host_segment_start[segments] = pos;
    offset[s] = pos;
    pos += count[s];
    longest = std::max<int64_t>(longest, count[s]);
    ++segments;
  }
  for (int64_t i = segments; i <= max_segments; ++i) index.host_segment_start[i] = pos;
  if (max_segment_tokens_bound > 0 && max_segment_tokens_bound < longest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lora: an adapter has ", longest, " tokens, over the bound ", max_segment_tokens_bound));
  }
  index.max_segment_tokens = max_segment_tokens_bound > 0 ? max_segment_tokens_bound : longest;
  index.host_sorted_tokens.assign(t_count, 0);
  int32_t tail = pos;
  for (int64_t t = 0; t < t_count; ++t) {
    const int32_t s = token_slot[t];
    index.host_sorted_tokens[s >= 0 ? offset[s]++ : tail++] = static_cast<int32_t>(t);
  }
  try {
    at::Tensor packed = at::empty({t_count + 2 * max_segments + 1}, at::kInt);
    int32_t* p = packed.data_ptr<int32_t>();
    std::copy(index.host_sorted_tokens.begin(), index.host_sorted_tokens.end(), p);
    std::copy(index.host_segment_start.begin(), index.host_segment_start.end(), p + t_count);
    std::copy(index.host_segment_slot.begin(), index.host_segment_slot.end(),
              p + t_count + max_segments + 1);
    if (!device.is_cpu()) packed = packed.to(device);
    index.sorted_tokens = packed.narrow(0, 0, t_count);
    index.segment_start = packed.narrow(0, t_count, max_segments + 1);
    index.segment_slot = packed.narrow(0, t_count + max_segments + 1, max_segments);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("lora: ", e.what_without_backtrace()));
  }
  return index;
}

absl::Status LoraShrink(const at::Tensor& x, const LoraWeightTable& table,
                        const LoraBatchIndex& index, const at::Tensor& v) {
  try {
    return ShrinkImpl(x, table, index, v);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("lora shrink: ", e.what_without_backtrace()));
  }
}

absl::Status LoraExpand(const at::Tensor& v, const LoraWeightTable& table,
                        const LoraBatchIndex& index, std::span<const at::Tensor> y) {
  try {
    return ExpandImpl(v, table, index, y, /*after_shrink=*/false);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("lora expand: ", e.what_without_backtrace()));
  }
}

absl::Status LoraApply(const at::Tensor& x, const LoraWeightTable& table,
                       const LoraBatchIndex& index, std::span<const at::Tensor> y,
                       const LoraApplyOptions& options) {
  if (x.defined() && x.is_cpu()) {
    // Validate through the two-step path's checks on an empty v, then fuse.
    try {
      const at::Tensor v0 =
          at::empty({table.num_slices, x.dim() == 2 ? x.size(0) : 0, table.max_rank});
      if (auto s = ValidateShrink(x, table, index, v0); !s.ok()) return s;
      if (auto s = ValidateExpand(v0, table, index, y); !s.ok()) return s;
      ApplyCpu(x, table, index, y);
      return absl::OkStatus();
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("lora: ", e.what_without_backtrace()));
    }
  }
  at::Tensor v;
  try {
    v = at::empty({table.num_slices, x.size(0), std::max<int64_t>(table.max_rank, 1)},
                  x.options().dtype(at::kFloat));
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("lora: ", e.what_without_backtrace()));
  }
#ifdef ADAPTERD_WITH_CUDA
  const LoraPath path = options.path;
  if (path != LoraPath::kSplit && x.defined() && x.is_cuda()) {
    try {
      if (auto s = ValidateShrink(x, table, index, v); !s.ok()) return s;
      if (auto s = ValidateExpand(v, table, index, y); !s.ok()) return s;
      const c10::cuda::CUDAGuard guard(x.device());
      if (index.num_tokens == 0 || index.max_segment_tokens == 0) return absl::OkStatus();
      const cudaStream_t stream = c10::cuda::getCurrentCUDAStream().stream();
      LoraLaunchArgs args = MakeLaunchArgs(table, index);
      args.x = x.const_data_ptr();
      args.ld_x = x.stride(0);
      for (int64_t s = 0; s < table.num_slices; ++s) {
        args.y[s] = y[s].data_ptr();
        args.ld_y[s] = y[s].stride(0);
      }
      args.after_producer = options.after_base_gemm;
      // Beside the GEMM the fused kernel does everything but the add to y
      // while the GEMM runs: taken wherever it serves.
      const bool beside = options.after_base_gemm && options.beside_base_gemm;
      const bool fused = (path == LoraPath::kFused || beside || FusedPreferred(args)) &&
                         lora_internal::LoraFusedFits(args);
      if (fused) {
        args.producer_edge = beside && DependOnLastKernelsLaunch(stream);
        const std::string err = lora_internal::LaunchLoraFusedCuda(args, stream);
        if (!err.empty()) return absl::InternalError(absl::StrCat("lora fused: ", err));
        return absl::OkStatus();
      }
      if (path == LoraPath::kFused) {
        return absl::InvalidArgumentError(absl::StrCat(
            "lora: the fused kernel does not serve this batch (", index.max_segment_tokens,
            " tokens for one adapter, at most ", lora_internal::kFusedMaxTokens, "; max rank ",
            table.max_rank, "; it needs an sm_90+ device)"));
      }
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("lora: ", e.what_without_backtrace()));
    }
  }
#endif
  try {
    if (auto s = ShrinkImpl(x, table, index, v, options.after_base_gemm, options.beside_base_gemm);
        !s.ok()) {
      return s;
    }
    return ExpandImpl(v, table, index, y, /*after_shrink=*/true);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("lora: ", e.what_without_backtrace()));
  }
}

namespace {

#ifdef ADAPTERD_WITH_CUDA
// Operands the tensor-core decode GEMMs take: CUDA fp16/bf16 without autograd,
// w contiguous, x with contiguous columns and rows 8-element strided, both
// 16-byte aligned, sizes within int.
bool FastGemmOperands(const at::Tensor& x, const at::Tensor& w) {
  if (!x.defined() || !w.defined() || !x.is_cuda() || w.device() != x.device()) return false;
  if (x.dim() != 2 || w.dim() != 2 || x.size(1) != w.size(1) || x.size(0) < 1) return false;
  const at::ScalarType dtype = x.scalar_type();
  if ((dtype != at::kHalf && dtype != at::kBFloat16) || w.scalar_type() != dtype) return false;
  if (c10::GradMode::is_enabled() && (x.requires_grad() || w.requires_grad())) return false;
  if (!w.is_contiguous() || x.stride(1) != 1 || (x.size(0) > 1 && x.stride(0) % 8 != 0)) {
    return false;
  }
  if (((reinterpret_cast<uintptr_t>(x.const_data_ptr()) |
        reinterpret_cast<uintptr_t>(w.const_data_ptr())) &
       15) != 0) {
    return false;
  }
  return w.size(0) <= std::numeric_limits<int>::max() &&
         x.size(1) <= std::numeric_limits<int>::max();
}
#endif

enum class FastGemm { kDecode, kStream };

// Whether the operands suit the tensor-core GEMMs and the GEMM serves the
// shape on x's device.
bool FastGemmServes(const at::Tensor& x, const at::Tensor& w, FastGemm which) {
#ifdef ADAPTERD_WITH_CUDA
  if (!FastGemmOperands(x, w)) return false;
  const c10::cuda::CUDAGuard guard(x.device());
  const int m = static_cast<int>(x.size(0));
  const int n = static_cast<int>(w.size(0));
  const int k = static_cast<int>(x.size(1));
  return which == FastGemm::kDecode ? lora_internal::DecodeGemmFits(m, n, k)
                                    : lora_internal::StreamGemmFits(m, n, k);
#else
  (void)x;
  (void)w;
  (void)which;
  return false;
#endif
}

}  // namespace

bool DecodeGemmServes(const at::Tensor& x, const at::Tensor& w) {
  return FastGemmServes(x, w, FastGemm::kDecode);
}

bool StreamGemmServes(const at::Tensor& x, const at::Tensor& w) {
  return FastGemmServes(x, w, FastGemm::kStream);
}

bool OverlapGemmServes(const at::Tensor& x, const at::Tensor& w) {
#ifdef ADAPTERD_WITH_CUDA
  return FastGemmOperands(x, w);
#else
  (void)x;
  (void)w;
  return false;
#endif
}

bool OverlapGemmPreferred(const at::Tensor& x, const at::Tensor& w, bool lora) {
  return lora && x.defined() && x.dim() == 2 && x.size(0) >= kOverlapAutoMinRows &&
         x.size(0) <= kOverlapAutoRows && OverlapGemmServes(x, w);
}

bool BlasLtPreferred(const at::Tensor& x, const at::Tensor& w) {
  return x.defined() && x.dim() == 2 && x.size(0) <= kBlasLtAutoRows && OverlapGemmServes(x, w);
}

bool DecodeGemmPreferred(const at::Tensor& x, const at::Tensor& w, bool lora) {
  return lora && x.defined() && w.defined() && x.dim() == 2 && w.dim() == 2 &&
         x.size(0) <= kDecodeGemmAutoRows && w.size(0) <= kDecodeGemmAutoCols &&
         DecodeGemmServes(x, w);
}

namespace {

absl::Status ValidateLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                            const LoraWeightTable* table, const LoraBatchIndex* index) {
  if (!x.defined() || !w.defined() || !y.defined() || x.dim() != 2 || w.dim() != 2 ||
      y.dim() != 2) {
    return absl::InvalidArgumentError("lora linear: x, w and y must be 2-D tensors");
  }
  if (w.size(1) != x.size(1) || y.size(0) != x.size(0) || y.size(1) != w.size(0)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "lora linear: x [", x.size(0), ", ", x.size(1), "], w [", w.size(0), ", ", w.size(1),
        "] and y [", y.size(0), ", ", y.size(1), "] do not fit y = x·wᵀ"));
  }
  if (w.scalar_type() != x.scalar_type() || y.scalar_type() != x.scalar_type() ||
      !IsSupportedDtype(x.scalar_type()) || w.device() != x.device() || y.device() != x.device()) {
    return absl::InvalidArgumentError(
        "lora linear: x, w and y must share one of fp32, fp16, bf16 and one device");
  }
  if ((x.size(0) > 1 && x.stride(1) != 1) || (y.size(0) > 0 && y.stride(1) != 1)) {
    return absl::InvalidArgumentError("lora linear: x and y need contiguous columns");
  }
  if ((table == nullptr) != (index == nullptr)) {
    return absl::InvalidArgumentError("lora linear: give both the table and the index, or neither");
  }
  if (table != nullptr) {
    int64_t total = 0;
    for (int64_t o : table->out_features) total += o;
    if (total != w.size(0) || table->in_features != w.size(1)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lora linear: the table's slices cover ", total, " outputs of ", table->in_features,
          " inputs; w is [", w.size(0), ", ", w.size(1), "]"));
    }
    if (auto s = CheckTable(*table, x.device(), x.scalar_type()); !s.ok()) return s;
    if (auto s = CheckIndex(*index, x.size(0), x.device()); !s.ok()) return s;
  }
  return absl::OkStatus();
}

std::vector<at::Tensor> Slices(const at::Tensor& y, const LoraWeightTable& table) {
  std::vector<at::Tensor> ys;
  int64_t off = 0;
  for (int64_t o : table.out_features) {
    ys.push_back(y.narrow(1, off, o));
    off += o;
  }
  return ys;
}

#ifdef ADAPTERD_WITH_CUDA
// The product y = x · wᵀ as the GEMM launchers take it (no LoRA, auto tuning).
lora_internal::DecodeGemmArgs GemmArgsOf(const at::Tensor& x, const at::Tensor& w,
                                         const at::Tensor& y) {
  lora_internal::DecodeGemmArgs gemm;
  gemm.dtype = ToLaunchDtype(x.scalar_type());
  gemm.m = static_cast<int>(x.size(0));
  gemm.n = static_cast<int>(w.size(0));
  gemm.k = static_cast<int>(x.size(1));
  gemm.x = x.const_data_ptr();
  gemm.ld_x = x.size(0) > 1 ? x.stride(0) : x.size(1);
  gemm.w = w.const_data_ptr();
  gemm.y = y.data_ptr();
  gemm.ld_y = y.size(0) > 1 ? y.stride(0) : y.size(1);
  return gemm;
}

// LinearGemm::kOverlap (LoraLinear has validated the operands): the cuBLASLt
// GEMM on all but `overlap_sms` SMs, then LoraApply beside it.
absl::Status OverlapLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                           const LoraWeightTable* table, const LoraBatchIndex* index,
                           const LoraLinearOptions& options) {
  const c10::cuda::CUDAGuard guard(x.device());
  const lora_internal::DecodeGemmArgs gemm = GemmArgsOf(x, w, y);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  const int free_sms =
      options.overlap_sms < 0
          ? 0
          : std::clamp(options.overlap_sms > 0 ? options.overlap_sms : kOverlapSms, 1, sms - 1);
  const std::string err = lora_internal::LaunchBlasLtGemm(
      gemm, free_sms > 0 ? sms - free_sms : 0, c10::cuda::getCurrentCUDAStream().stream());
  if (!err.empty()) return absl::InternalError(absl::StrCat("lora linear: ", err));
  if (table == nullptr) return absl::OkStatus();
  return LoraApply(x, *table, *index, Slices(y, *table),
                   LoraApplyOptions{.after_base_gemm = true, .beside_base_gemm = true});
}
#endif

}  // namespace

absl::Status LoraLinear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& y,
                        const LoraWeightTable* table, const LoraBatchIndex* index,
                        const LoraLinearOptions& options) {
  try {
    if (auto s = ValidateLinear(x, w, y, table, index); !s.ok()) return s;
    const bool auto_gemm = options.gemm == LinearGemm::kAuto;
    // kAuto without adapters: cuBLASLt on the whole device where preferred.
    // (Both rules imply OverlapGemmServes.)
    const bool plain_lt = auto_gemm && table == nullptr && BlasLtPreferred(x, w);
    if (options.gemm == LinearGemm::kOverlap || plain_lt ||
        (auto_gemm && OverlapGemmPreferred(x, w, table != nullptr))) {
      if (options.gemm == LinearGemm::kOverlap && !OverlapGemmServes(x, w)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "lora linear: the overlap GEMM does not serve x [", x.size(0), ", ", x.size(1), "] on ",
            x.device().str(), " (CUDA, fp16/bf16, w contiguous, aligned rows)"));
      }
#ifdef ADAPTERD_WITH_CUDA
      LoraLinearOptions overlap_options = options;
      if (plain_lt) overlap_options.overlap_sms = -1;  // The whole device.
      return OverlapLinear(x, w, y, table, index, overlap_options);
#endif
    }
    // The decode GEMM stages v of ranks up to 128 in shared memory.
    const bool decode =
        (options.gemm == LinearGemm::kDecode ||
         (options.gemm == LinearGemm::kAuto && DecodeGemmPreferred(x, w, table != nullptr))) &&
        DecodeGemmServes(x, w) && (table == nullptr || table->max_rank <= 128);
    if (options.gemm == LinearGemm::kDecode && !decode) {
      return absl::InvalidArgumentError(absl::StrCat(
          "lora linear: the decode GEMM does not serve x [", x.size(0), ", ", x.size(1),
          "] on ", x.device().str(), " (CUDA sm_90, fp16/bf16, at most ",
          lora_internal::kDecodeGemmMaxRows, " rows, K a multiple of ",
          lora_internal::kDecodeGemmChunk, ", aligned rows)"));
    }
    const bool stream = options.gemm == LinearGemm::kStream;
    if (stream) {
      const int splits = std::max(options.splits, 1);
      if (!StreamGemmServes(x, w) || y.stride(1) != 1 || splits > 8 || (splits & (splits - 1)) ||
          x.size(1) % (64 * splits) != 0 || (table != nullptr && table->max_rank > 128)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "lora linear: the stream GEMM does not serve x [", x.size(0), ", ", x.size(1),
            "] and w [", w.size(0), ", ", w.size(1), "] on ", x.device().str(),
            " (CUDA sm_90, fp16/bf16, at most 32 rows, N and K multiples of 64, aligned rows; K a"
            " multiple of 64 × splits, splits 1, 2, 4 or 8; ranks up to 128)"));
      }
    }
    if (!decode && !stream) {
      if (y.is_contiguous()) {
        at::Tensor out = y;
        at::mm_out(out, x, w.t());
      } else {
        y.copy_(at::mm(x, w.t()));
      }
      if (table == nullptr) return absl::OkStatus();
      return LoraApply(x, *table, *index, Slices(y, *table),
                       LoraApplyOptions{.after_base_gemm = true});
    }
#ifdef ADAPTERD_WITH_CUDA
    const c10::cuda::CUDAGuard guard(x.device());
    const cudaStream_t cuda_stream = c10::cuda::getCurrentCUDAStream().stream();
    lora_internal::DecodeGemmArgs args = GemmArgsOf(x, w, y);
    args.splits = options.splits;
    args.depth = options.depth;
    args.tile_cols = options.tile_cols;
    at::Tensor v;  // Lives until both launches are queued (stream-ordered reuse).
    if (table != nullptr && table->max_rank > 0 && index->num_tokens > 0 &&
        index->max_segment_tokens > 0) {
      const int64_t width = (table->max_rank + 3) / 4 * 4;
      v = at::empty({table->num_slices, x.size(0), width}, x.options().dtype(at::kFloat));
      if (auto s = ValidateShrink(x, *table, *index, v); !s.ok()) return s;
      LoraLaunchArgs lora = MakeLaunchArgs(*table, *index);
      lora.x = x.const_data_ptr();
      lora.ld_x = args.ld_x;
      lora.v = v.mutable_data_ptr<float>();
      lora.v_width = static_cast<int>(width);
      const std::string err = lora_internal::LaunchLoraShrinkCuda(lora, cuda_stream);
      if (!err.empty()) return absl::InternalError(absl::StrCat("lora shrink: ", err));
      lora.after_shrink = true;
      args.lora = lora;
      int64_t off = 0;
      for (int64_t s = 0; s < table->num_slices; ++s) {
        args.slice_begin[s] = static_cast<int>(off);
        off += table->out_features[s];
      }
      args.slice_begin[table->num_slices] = static_cast<int>(off);
    }
    const std::string err = stream ? lora_internal::LaunchStreamGemmCuda(args, cuda_stream)
                                   : lora_internal::LaunchDecodeGemmCuda(args, cuda_stream);
    if (!err.empty()) {
      return absl::InternalError(absl::StrCat(stream ? "stream gemm: " : "decode gemm: ", err));
    }
    return absl::OkStatus();
#else
    return absl::InternalError("lora linear: built without CUDA");
#endif
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("lora linear: ", e.what_without_backtrace()));
  }
}

}  // namespace adapterd
