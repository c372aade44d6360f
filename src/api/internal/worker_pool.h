// A small fixed pool of threads for work that may block on storage (store reads for
// lists, timelines, snapshots), so the HTTP event loops never wait on disk.
//
// Thread-safety: Post is thread-safe. Tasks run on pool threads.
#ifndef QUELL_API_INTERNAL_WORKER_POOL_H_
#define QUELL_API_INTERNAL_WORKER_POOL_H_

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/any_invocable.h"

namespace quell::api::internal {

class WorkerPool {
 public:
  explicit WorkerPool(int threads);
  // Runs the tasks still queued, then joins.
  ~WorkerPool();

  //! Queues `task`. Returns false (and drops it) once the pool is stopping or when
  //! `max_queue` tasks are already waiting, so callers can shed load with 503.
  bool Post(absl::AnyInvocable<void()> task);

 private:
  void Run();

  static constexpr size_t kMaxQueue = 10000;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<absl::AnyInvocable<void()>> queue_;  // guarded by mu_
  bool stop_ = false;                             // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace quell::api::internal

#endif  // QUELL_API_INTERNAL_WORKER_POOL_H_
