#pragma once

// A fixed set of threads that run blocking work (disk I/O, database calls)
// so that gRPC threads never wait on it. Tasks run in FIFO order on any
// thread. Thread-safe.

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"

namespace adapterd {

class WorkerPool {
 public:
  explicit WorkerPool(int threads);
  // Runs the tasks still queued, then joins the threads.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Schedule(std::function<void()> task);

 private:
  void Run();

  absl::Mutex mu_;  // Guards tasks_ and stop_.
  std::deque<std::function<void()>> tasks_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace adapterd
