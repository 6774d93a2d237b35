#pragma once
// A pool of idle connections (or any per-thread resource) for a backend's readers. Thread-safe.

#include <functional>
#include <memory>
#include <mutex>
#include <vector>

#include "keel/status.hpp"

namespace keel::detail {

template <class T>
class Pool {
public:
    using Factory = std::function<Result<std::unique_ptr<T>>()>;

    // Keeps at most `max_idle` idle resources; more are made on demand and destroyed when returned.
    Pool(Factory factory, size_t max_idle) : factory_(std::move(factory)), max_idle_(max_idle) {}

    // A borrowed resource, returned to the pool on destruction unless Discard()ed (e.g. a broken connection).
    class Lease {
    public:
        Lease(Pool* pool, std::unique_ptr<T> item) : pool_(pool), item_(std::move(item)) {}
        Lease(Lease&& o) noexcept : pool_(o.pool_), item_(std::move(o.item_)) {}
        Lease& operator=(Lease&&) = delete;
        ~Lease() {
            if (item_) pool_->Release(std::move(item_));
        }
        T* operator->() { return item_.get(); }
        T& operator*() { return *item_; }
        void Discard() { item_.reset(); }

    private:
        Pool* pool_;
        std::unique_ptr<T> item_;
    };

    Result<Lease> Acquire() {
        {
            std::lock_guard lock(mu_);
            if (!idle_.empty()) {
                auto item = std::move(idle_.back());
                idle_.pop_back();
                return Lease(this, std::move(item));
            }
        }
        auto made = factory_();
        if (!made.ok()) return made.status();
        return Lease(this, std::move(*made));
    }

    // Drops every idle resource (after a server restart, say).
    void Clear() {
        std::lock_guard lock(mu_);
        idle_.clear();
    }

private:
    void Release(std::unique_ptr<T> item) {
        std::lock_guard lock(mu_);
        if (idle_.size() < max_idle_) idle_.push_back(std::move(item));
    }

    Factory factory_;
    size_t max_idle_;
    std::mutex mu_;
    std::vector<std::unique_ptr<T>> idle_;
};

}  // namespace keel::detail
