#include "threadpool.h"

#include <pthread.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace sparsr {
namespace {

thread_local bool in_parallel_region = false;

int default_threads() {
  if (const char* env = std::getenv("SPARSR_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

// Concurrent callers: parallel_for calls from several threads are serialised
// (run_mutex_), each using every worker; a call inside a task runs serially.
// Which thread runs a task never changes its result, so neither changes any
// output. Fork: see the atfork handlers below.
class Pool {
 public:
  explicit Pool(int threads) : threads_(threads < 1 ? 1 : threads) { start_workers(); }

  int threads() const { return threads_.load(std::memory_order_relaxed); }

  void resize(int n) {
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    stop_workers();
    threads_ = n < 1 ? 1 : n;
    start_workers();
  }

  void run(size_t n, const std::function<void(size_t)>& fn) {
    if (n == 0) return;
    // A parallel_for inside a task runs serially instead of deadlocking the pool.
    if (threads() == 1 || n == 1 || in_parallel_region) {
      for (size_t i = 0; i < n; ++i) fn(i);
      return;
    }
    std::lock_guard<std::mutex> run_lock(run_mutex_);
    if (workers_.empty()) {  // resized to one thread meanwhile
      for (size_t i = 0; i < n; ++i) fn(i);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      pending_ = static_cast<int>(workers_.size());
      error_ = nullptr;
      ++generation_;
    }
    wake_.notify_all();
    in_parallel_region = true;
    work();
    in_parallel_region = false;
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [&] { return pending_ == 0; });
    fn_ = nullptr;
    if (error_) std::rethrow_exception(error_);
  }

  // Fork: the parent holds both locks across fork(), so that no parallel_for
  // is half-way and no worker holds mutex_ when the child's copy is made.
  void lock_for_fork() {
    run_mutex_.lock();
    mutex_.lock();
  }
  void unlock_after_fork() {
    mutex_.unlock();
    run_mutex_.unlock();
  }

 private:
  void start_workers() {
    quit_ = false;
    const uint64_t generation = generation_;
    for (int i = 1; i < threads(); ++i)
      workers_.emplace_back([this, generation] { loop(generation); });
  }

  void stop_workers() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      quit_ = true;
    }
    wake_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void work() {
    for (;;) {
      size_t i = next_.fetch_add(1);
      if (i >= n_) break;
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> lock(mutex_);
        if (!error_) error_ = std::current_exception();
      }
    }
  }

  void loop(uint64_t seen) {
    in_parallel_region = true;
    for (;;) {
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return quit_ || generation_ != seen; });
        if (quit_) return;
        seen = generation_;
      }
      work();
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::atomic<int> threads_;
  std::vector<std::thread> workers_;
  std::mutex run_mutex_;  // one parallel_for at a time
  std::mutex mutex_;
  std::condition_variable wake_, done_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> next_{0};
  int pending_ = 0;
  uint64_t generation_ = 0;
  bool quit_ = false;
  std::exception_ptr error_;
};

// The pool, made on first use. A child process of fork() has none of the
// parent's worker threads: its copy of the pool would wait for them forever.
// The child therefore abandons that copy (never destroyed: destroying a
// std::thread that was running terminates the process) and makes a new pool,
// with the same thread count, on its first parallel_for.
std::mutex pool_mutex;
std::atomic<Pool*> pool_ptr{nullptr};
int threads_after_fork = 0;  // the parent's count, for the child's new pool

void before_fork() {
  pool_mutex.lock();
  if (Pool* p = pool_ptr.load()) p->lock_for_fork();
}

void after_fork_in_parent() {
  if (Pool* p = pool_ptr.load()) p->unlock_after_fork();
  pool_mutex.unlock();
}

void after_fork_in_child() {
  if (Pool* p = pool_ptr.load()) {
    threads_after_fork = p->threads();
    pool_ptr.store(nullptr);  // leaked: its threads and locks belong to the parent
  }
  pool_mutex.unlock();
}

Pool& pool() {
  Pool* p = pool_ptr.load(std::memory_order_acquire);
  if (p) return *p;
  std::lock_guard<std::mutex> lock(pool_mutex);
  p = pool_ptr.load();
  if (!p) {
    static std::once_flag registered;
    std::call_once(registered, [] {
      pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
    });
    p = new Pool(threads_after_fork > 0 ? threads_after_fork : default_threads());
    pool_ptr.store(p, std::memory_order_release);
  }
  return *p;
}

}  // namespace

int num_threads() { return pool().threads(); }
void set_num_threads(int n) { pool().resize(n); }
void parallel_for(size_t n, const std::function<void(size_t)>& fn) { pool().run(n, fn); }

}  // namespace sparsr
