#pragma once
/// keel::Status and keel::Result<T>: how every libkeel call reports success or failure.
///
/// Errors are values at the library boundary. A Status carries a code a caller can act on and a message meant for
/// a person (it names the field or object and the reason). Result<T> holds either a T or a non-OK Status, shaped
/// like std::expected. Both are [[nodiscard]].
///
/// Thread-safety: Status and Result are plain values; distinct objects may be used from distinct threads freely,
/// one object needs external synchronization like any std type.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace keel {

/// The codes a caller acts on. Values are stable (they appear in logs and in the CLI's JSON output).
enum class StatusCode : int {
    kOk = 0,
    kNotFound = 1,              ///< the stream, snapshot, checkpoint … does not exist
    kWrongExpectedVersion = 2,  ///< optimistic concurrency conflict; Status::actual_version() tells the real one
    kInvalidArgument = 3,       ///< the input is malformed or out of limits; nothing was written
    kUnavailable = 4,           ///< transient: the database is busy or unreachable; retrying may succeed
    kDeadlineExceeded = 5,      ///< the call ran out of time; its outcome may be unknown
    kCorruption = 6,            ///< stored data cannot be decoded or violates an invariant
    kNotSupported = 7,          ///< the backend or the build lacks this capability
    kStreamDeleted = 8,         ///< the stream was hard-deleted (tombstoned); it can never be written again
    kAlreadyExists = 9,         ///< the object exists and the call required it not to
    kFailedPrecondition = 10,   ///< the object is in a state that does not allow the call (e.g. a closed store)
    kInternal = 11,             ///< a bug or an unexpected failure of a dependency
    kCancelled = 12,            ///< the operation was stopped on request
};

/// The stable lower-case name of a code, e.g. "wrong_expected_version".
std::string_view StatusCodeName(StatusCode code) noexcept;

class [[nodiscard]] Status {
public:
    /// An OK status.
    Status() noexcept = default;
    Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}

    static Status Ok() noexcept { return {}; }
    static Status NotFound(std::string msg) { return {StatusCode::kNotFound, std::move(msg)}; }
    static Status InvalidArgument(std::string msg) { return {StatusCode::kInvalidArgument, std::move(msg)}; }
    static Status Unavailable(std::string msg) { return {StatusCode::kUnavailable, std::move(msg)}; }
    static Status DeadlineExceeded(std::string msg) { return {StatusCode::kDeadlineExceeded, std::move(msg)}; }
    static Status Corruption(std::string msg) { return {StatusCode::kCorruption, std::move(msg)}; }
    static Status NotSupported(std::string msg) { return {StatusCode::kNotSupported, std::move(msg)}; }
    static Status StreamDeleted(std::string msg) { return {StatusCode::kStreamDeleted, std::move(msg)}; }
    static Status AlreadyExists(std::string msg) { return {StatusCode::kAlreadyExists, std::move(msg)}; }
    static Status FailedPrecondition(std::string msg) { return {StatusCode::kFailedPrecondition, std::move(msg)}; }
    static Status Internal(std::string msg) { return {StatusCode::kInternal, std::move(msg)}; }
    static Status Cancelled(std::string msg) { return {StatusCode::kCancelled, std::move(msg)}; }
    /// A conflict: the stream's actual version (-1 when the stream does not exist) travels with the status.
    static Status WrongExpectedVersion(std::string msg, int64_t actual_version) {
        Status s(StatusCode::kWrongExpectedVersion, std::move(msg));
        s.actual_version_ = actual_version;
        return s;
    }

    bool ok() const noexcept { return code_ == StatusCode::kOk; }
    explicit operator bool() const noexcept { return ok(); }
    StatusCode code() const noexcept { return code_; }
    const std::string& message() const noexcept { return message_; }
    /// For kWrongExpectedVersion: the version the stream actually had. Empty for every other code.
    std::optional<int64_t> actual_version() const noexcept { return actual_version_; }

    /// "ok", or "<code name>: <message>".
    std::string ToString() const;

    /// Returns a copy whose message is prefixed with `context: `. OK stays OK.
    Status WithContext(std::string_view context) const;

    friend bool operator==(const Status& a, const Status& b) noexcept { return a.code_ == b.code_; }

private:
    StatusCode code_ = StatusCode::kOk;
    std::string message_;
    std::optional<int64_t> actual_version_;
};

/// Thrown only by Result<T>::value() and Status::Check() when called on an error: the convenient path for demos
/// and tests. Library calls never throw it themselves.
class StatusError : public std::runtime_error {
public:
    explicit StatusError(Status status) : std::runtime_error(status.ToString()), status_(std::move(status)) {}
    const Status& status() const noexcept { return status_; }

private:
    Status status_;
};

/// Throws StatusError when `s` is not OK.
inline void ThrowIfError(const Status& s) {
    if (!s.ok()) throw StatusError(s);
}

template <class T>
class [[nodiscard]] Result {
    static_assert(!std::is_same_v<std::remove_cv_t<T>, Status>, "Result<Status> makes no sense; use Status");

public:
    /// A value.
    Result(T value) : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
    /// An error; `status` must not be OK (an OK status becomes kInternal, a bug in the caller).
    Result(Status status)  // NOLINT(google-explicit-constructor)
        : v_(std::in_place_index<1>, status.ok() ? Status::Internal("Result constructed from an OK status")
                                                 : std::move(status)) {}
    template <class U>
        requires(std::is_constructible_v<T, U &&> && !std::is_same_v<std::decay_t<U>, T> &&
                 !std::is_same_v<std::decay_t<U>, Status> && !std::is_same_v<std::decay_t<U>, Result>)
    Result(U&& value) : v_(std::in_place_index<0>, T(std::forward<U>(value))) {}  // NOLINT

    bool ok() const noexcept { return v_.index() == 0; }
    explicit operator bool() const noexcept { return ok(); }

    /// The status: OK when a value is held.
    Status status() const { return ok() ? Status::Ok() : std::get<1>(v_); }

    /// The value; throws StatusError if this holds an error.
    T& value() & {
        Check();
        return std::get<0>(v_);
    }
    const T& value() const& {
        Check();
        return std::get<0>(v_);
    }
    /// On an rvalue the value is moved out and returned by value, so `for (auto& x : F().value())` is safe.
    T value() && {
        Check();
        return std::get<0>(std::move(v_));
    }
    template <class U>
    T value_or(U&& fallback) const& {
        return ok() ? std::get<0>(v_) : static_cast<T>(std::forward<U>(fallback));
    }

    /// Access without the StatusError: only after ok() returned true (on an error it throws
    /// std::bad_variant_access).
    T& operator*() & { return std::get<0>(v_); }
    const T& operator*() const& { return std::get<0>(v_); }
    T&& operator*() && { return std::get<0>(std::move(v_)); }
    T* operator->() { return &std::get<0>(v_); }
    const T* operator->() const { return &std::get<0>(v_); }

private:
    void Check() const {
        if (!ok()) throw StatusError(std::get<1>(v_));
    }
    std::variant<T, Status> v_;
};

}  // namespace keel

/// Returns from the enclosing function when `expr` (a Status) is not OK.
#define KEEL_RETURN_IF_ERROR(expr)                   \
    do {                                             \
        ::keel::Status keel_status_tmp_ = (expr);    \
        if (!keel_status_tmp_.ok()) return keel_status_tmp_; \
    } while (0)

#define KEEL_CONCAT_INNER_(a, b) a##b
#define KEEL_CONCAT_(a, b) KEEL_CONCAT_INNER_(a, b)
/// `KEEL_ASSIGN_OR_RETURN(auto x, MakeResult());` declares x from the value or returns the error status.
#define KEEL_ASSIGN_OR_RETURN(lhs, expr)                                      \
    auto KEEL_CONCAT_(keel_result_, __LINE__) = (expr);                       \
    if (!KEEL_CONCAT_(keel_result_, __LINE__).ok())                           \
        return KEEL_CONCAT_(keel_result_, __LINE__).status();                 \
    lhs = std::move(*KEEL_CONCAT_(keel_result_, __LINE__))
