// A small persistent thread pool for data-parallel loops. The calling thread
// takes part in the work, so a loop never waits on a busy pool; concurrent
// callers (the GIL is released) share the pool safely.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <unistd.h>

namespace wbc {

class ThreadPool {
public:
    // The process-wide pool. After fork() the child gets a fresh one: the
    // parent's worker threads do not exist there.
    static ThreadPool& instance() {
        static std::mutex mutex;
        static ThreadPool* pool = nullptr;
        static pid_t owner = 0;
        std::lock_guard<std::mutex> lock(mutex);
        if (pool == nullptr || owner != getpid()) {
            pool = new ThreadPool();  // never deleted: workers live as long as the process
            owner = getpid();
        }
        return *pool;
    }

    // Calls fn(i) for every i in [0, n) using up to `workers` threads, the
    // caller's included. Returns when all calls have finished; rethrows the
    // first exception one of them raised.
    void parallel_for(std::size_t n, int workers, std::function<void(std::size_t)> fn) {
        if (n == 0) return;
        if (workers > static_cast<int>(n)) workers = static_cast<int>(n);
        auto job = std::make_shared<Job>(std::move(fn), n);
        if (workers > 1) {
            ensure_threads(workers - 1);
            {
                std::lock_guard<std::mutex> lock(mutex_);
                for (int i = 0; i < workers - 1; ++i) queue_.push_back(job);
            }
            cv_.notify_all();
        }
        job->work();
        job->wait();
        if (job->error) std::rethrow_exception(job->error);
    }

private:
    struct Job {
        Job(std::function<void(std::size_t)> f, std::size_t count) : fn(std::move(f)), n(count) {}

        // Late helpers find no index left and return without touching fn.
        void work() {
            for (;;) {
                const std::size_t i = next.fetch_add(1);
                if (i >= n) return;
                try {
                    fn(i);
                } catch (...) {
                    std::lock_guard<std::mutex> lock(mutex);
                    if (!error) error = std::current_exception();
                }
                if (done.fetch_add(1) + 1 == n) {
                    std::lock_guard<std::mutex> lock(mutex);
                    cv.notify_all();
                }
            }
        }

        void wait() {
            std::unique_lock<std::mutex> lock(mutex);
            cv.wait(lock, [this] { return done.load() == n; });
        }

        std::function<void(std::size_t)> fn;
        const std::size_t n;
        std::atomic<std::size_t> next{0};
        std::atomic<std::size_t> done{0};
        std::mutex mutex;
        std::condition_variable cv;
        std::exception_ptr error;
    };

    void ensure_threads(int count) {
        std::lock_guard<std::mutex> lock(mutex_);
        while (static_cast<int>(threads_.size()) < count) {
            threads_.emplace_back([this] { worker_loop(); });
            threads_.back().detach();
        }
    }

    void worker_loop() {
        for (;;) {
            std::shared_ptr<Job> job;
            {
                std::unique_lock<std::mutex> lock(mutex_);
                cv_.wait(lock, [this] { return !queue_.empty(); });
                job = std::move(queue_.front());
                queue_.pop_front();
            }
            job->work();
        }
    }

    std::mutex mutex_;
    std::condition_variable cv_;
    std::deque<std::shared_ptr<Job>> queue_;
    std::vector<std::thread> threads_;
};

}  // namespace wbc
