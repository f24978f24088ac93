// y = x · wᵀ through cuBLASLt with an SM count target (lora_launch.h,
// LaunchBlasLtGemm): the base GEMM of LinearGemm::kOverlap, which leaves SMs
// free for the LoRA running beside it on another stream. Uses torch's cuBLASLt
// handle and workspace for the current device and stream (so that it is
// capture-safe as torch's own GEMMs are); the heuristic's choice is cached per
// shape, alignment and SM target.

#include <ATen/cuda/CUDAContextLight.h>
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "engine/kernels/lora_launch.h"

namespace adapterd::lora_internal {
namespace {

// The largest power of two (up to 256) dividing the address: what the
// heuristic may assume of the buffer's alignment.
uint32_t AlignmentOf(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && (a % static_cast<uintptr_t>(align)) != 0) align /= 2;
  return align;
}

// One cached plan: the descriptors (never destroyed; bounded by the shapes
// a process runs) and the heuristic's algorithm.
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr;  // w as column-major [k, n] (transposed in the op)
  cublasLtMatrixLayout_t b = nullptr;  // x as column-major [k, m]
  cublasLtMatrixLayout_t c = nullptr;  // y as column-major [n, m]
  cublasLtMatmulAlgo_t algo = {};
};

using PlanKey = std::tuple<int, int, int, int, int, int64_t, int64_t, int, uint32_t, uint32_t,
                           uint32_t, size_t>;

std::string LtError(const char* what, cublasStatus_t s) {
  return absl::StrCat(what, ": ", cublasLtGetStatusString(s));
}

// The heuristic's assumptions about the buffers' alignment: w, x, and y
// (the input and the output).
struct Alignments {
  uint32_t a, b, c;
};

void DestroyPlan(Plan& plan) {
  if (plan.c != nullptr) cublasLtMatrixLayoutDestroy(plan.c);
  if (plan.b != nullptr) cublasLtMatrixLayoutDestroy(plan.b);
  if (plan.a != nullptr) cublasLtMatrixLayoutDestroy(plan.a);
  if (plan.desc != nullptr) cublasLtMatmulDescDestroy(plan.desc);
  plan = Plan();
}

// Builds the plan for args' shape (its descriptors and the heuristic's
// algorithm); empty string on success. On failure `plan` may hold some
// descriptors: DestroyPlan.
std::string MakePlan(cublasLtHandle_t handle, const DecodeGemmArgs& args, int sm_count,
                     const Alignments& align, size_t workspace_bytes, Plan& plan) {
  const cudaDataType_t type = args.dtype == LoraDType::kBFloat16 ? CUDA_R_16BF : CUDA_R_16F;
  cublasStatus_t s = cublasLtMatmulDescCreate(&plan.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F);
  if (s != CUBLAS_STATUS_SUCCESS) return LtError("cublasLtMatmulDescCreate", s);
  const cublasOperation_t trans = CUBLAS_OP_T;
  const cublasOperation_t no_trans = CUBLAS_OP_N;
  cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans, sizeof(trans));
  cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_TRANSB, &no_trans,
                                 sizeof(no_trans));
  if (sm_count > 0) {
    const int32_t target = sm_count;
    s = cublasLtMatmulDescSetAttribute(plan.desc, CUBLASLT_MATMUL_DESC_SM_COUNT_TARGET, &target,
                                       sizeof(target));
    if (s != CUBLAS_STATUS_SUCCESS) return LtError("SM_COUNT_TARGET", s);
  }
  if ((s = cublasLtMatrixLayoutCreate(&plan.a, type, args.k, args.n, args.k)) !=
          CUBLAS_STATUS_SUCCESS ||
      (s = cublasLtMatrixLayoutCreate(&plan.b, type, args.k, args.m, args.ld_x)) !=
          CUBLAS_STATUS_SUCCESS ||
      (s = cublasLtMatrixLayoutCreate(&plan.c, type, args.n, args.m, args.ld_y)) !=
          CUBLAS_STATUS_SUCCESS) {
    return LtError("cublasLtMatrixLayoutCreate", s);
  }
  cublasLtMatmulPreference_t pref = nullptr;
  if ((s = cublasLtMatmulPreferenceCreate(&pref)) != CUBLAS_STATUS_SUCCESS) {
    return LtError("cublasLtMatmulPreferenceCreate", s);
  }
  const uint64_t ws = workspace_bytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws,
                                       sizeof(ws));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &align.a,
                                       sizeof(align.a));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &align.b,
                                       sizeof(align.b));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &align.c,
                                       sizeof(align.c));
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &align.c,
                                       sizeof(align.c));
  cublasLtMatmulHeuristicResult_t result = {};
  int found = 0;
  s = cublasLtMatmulAlgoGetHeuristic(handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, 1,
                                     &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  if (s != CUBLAS_STATUS_SUCCESS) return LtError("cublasLtMatmulAlgoGetHeuristic", s);
  if (found < 1) return "cublasLt has no algorithm for this shape";
  plan.algo = result.algo;
  return std::string();
}

}  // namespace

std::string LaunchBlasLtGemm(const DecodeGemmArgs& args, int sm_count, void* stream) {
  if (args.dtype == LoraDType::kFloat32) return "the cuBLASLt GEMM takes fp16 or bf16";
  int device = 0;
  if (const cudaError_t e = cudaGetDevice(&device); e != cudaSuccess) {
    return cudaGetErrorString(e);
  }
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  void* workspace = at::cuda::getCUDABlasLtWorkspace();
  const size_t workspace_bytes = at::cuda::getCUDABlasLtWorkspaceSize();
  const Alignments align{AlignmentOf(args.w), AlignmentOf(args.x), AlignmentOf(args.y)};
  const PlanKey key(device, static_cast<int>(args.dtype), args.m, args.n, args.k, args.ld_x,
                    args.ld_y, sm_count, align.a, align.b, align.c, workspace_bytes);
  static std::mutex mu;
  static auto* plans = new std::map<PlanKey, Plan>();  // Never destroyed (see Plan).
  Plan plan;
  {
    const std::lock_guard<std::mutex> lock(mu);
    auto it = plans->find(key);
    if (it == plans->end()) {
      if (std::string err = MakePlan(handle, args, sm_count, align, workspace_bytes, plan);
          !err.empty()) {
        DestroyPlan(plan);
        return err;
      }
      it = plans->emplace(key, plan).first;
    }
    plan = it->second;
  }
  const float alpha = 1.0f;
  const float beta = 0.0f;
  const cublasStatus_t s = cublasLtMatmul(
      handle, plan.desc, &alpha, args.w, plan.a, args.x, plan.b, &beta, args.y, plan.c, args.y,
      plan.c, &plan.algo, workspace, workspace_bytes, static_cast<cudaStream_t>(stream));
  if (s != CUBLAS_STATUS_SUCCESS) return LtError("cublasLtMatmul", s);
  return std::string();
}

}  // namespace adapterd::lora_internal
