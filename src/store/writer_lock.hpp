#pragma once
// A mutex with a timed lock, built on a condition variable. Used instead of std::timed_mutex, whose try_lock_for
// goes through pthread_mutex_clocklock, which GCC 12's ThreadSanitizer does not intercept (false "unlock of an
// unlocked mutex" reports). Meets Lockable and TimedLockable, so std::unique_lock works with it.

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace keel::detail {

class WriterLock {
public:
    void lock() {
        std::unique_lock guard(mu_);
        cv_.wait(guard, [this] { return !held_; });
        held_ = true;
    }
    bool try_lock() {
        std::lock_guard guard(mu_);
        if (held_) return false;
        held_ = true;
        return true;
    }
    template <class Rep, class Period>
    bool try_lock_for(std::chrono::duration<Rep, Period> timeout) {
        std::unique_lock guard(mu_);
        if (!cv_.wait_for(guard, timeout, [this] { return !held_; })) return false;
        held_ = true;
        return true;
    }
    void unlock() {
        {
            std::lock_guard guard(mu_);
            held_ = false;
        }
        cv_.notify_one();
    }

private:
    std::mutex mu_;
    std::condition_variable cv_;
    bool held_ = false;
};

}  // namespace keel::detail
