#pragma once

// Timing helpers of the GPU benchmarks (lora_gpu_bench, attention_gpu_bench):
// a body captured into one CUDA graph and replayed, and the device's copy
// bandwidth measured the same way. Engine-internal (ATen, CUDA).

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <vector>

namespace adapterd::bench {

inline double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median milliseconds per iteration of `body(i)` for i in [0, iters), captured
// into one CUDA graph (after one eager warm-up call) and replayed `replays`
// times.
inline double TimeGraph(int iters, const std::function<void(int)>& body, int replays = 10) {
  const c10::cuda::CUDAStream stream = c10::cuda::getStreamFromPool();
  const c10::cuda::CUDAStreamGuard guard(stream);
  body(0);  // Warm-up: handles, workspaces, lazy init.
  stream.synchronize();
  at::cuda::CUDAGraph graph;
  graph.capture_begin();
  for (int i = 0; i < iters; ++i) body(i);
  graph.capture_end();
  graph.replay();
  graph.replay();
  std::vector<double> ms;
  for (int r = 0; r < replays; ++r) {
    at::cuda::CUDAEvent start(cudaEventDefault), end(cudaEventDefault);
    start.record(stream);
    graph.replay();
    end.record(stream);
    end.synchronize();
    ms.push_back(start.elapsed_time(end) / iters);
  }
  return Median(ms);
}

// Device copy bandwidth in bytes (read + written) per second over 2 GiB: a
// graph's memcpy node may run on the copy engines, an elementwise kernel
// streams through the SMs; the faster of the two is the ceiling. Prints both.
inline double CopyBandwidth() {
  const auto opts = at::TensorOptions().dtype(at::kFloat).device(at::kCUDA);
  const int64_t bytes = int64_t{1} << 31;
  at::Tensor src = at::randn({bytes / 4}, opts);
  at::Tensor dst = at::empty({bytes / 4}, opts);
  const double memcpy_ms = TimeGraph(8, [&](int) { dst.copy_(src); });
  const double kernel_ms = TimeGraph(8, [&](int) { at::neg_out(dst, src); });
  std::printf("copy: memcpy %.0f GB/s, elementwise kernel %.0f GB/s (read+write)\n",
              2.0 * bytes / (memcpy_ms * 1e-3) / 1e9, 2.0 * bytes / (kernel_ms * 1e-3) / 1e9);
  return 2.0 * bytes / (std::min(memcpy_ms, kernel_ms) * 1e-3);
}

}  // namespace adapterd::bench
