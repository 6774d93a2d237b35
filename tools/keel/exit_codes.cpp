#include "exit_codes.hpp"

#include <array>

namespace keel::cli {
namespace {

struct ExitRule {
    StatusCode code;
    int exit_code;
    std::string_view hint;
};

// The one table from Status codes to exit codes and default advice.
constexpr std::array<ExitRule, 13> kExitRules = {{
    {StatusCode::kOk, kExitOk, ""},
    {StatusCode::kInvalidArgument, kExitUsage, "check the arguments (keel <command> --help)"},
    {StatusCode::kWrongExpectedVersion, kExitConflict, "re-read the stream and retry with its current version"},
    {StatusCode::kStreamDeleted, kExitDeleted,
     "the stream is tombstoned and can never be written again; use another stream id"},
    {StatusCode::kNotFound, kExitNotFound, "check the name ('keel streams' lists the streams)"},
    {StatusCode::kAlreadyExists, kExitFailure, "choose another name or id"},
    {StatusCode::kUnavailable, kExitFailure, "the database is busy or unreachable; retry in a moment"},
    {StatusCode::kDeadlineExceeded, kExitFailure, "the outcome is unknown; check the store before retrying"},
    {StatusCode::kCorruption, kExitFailure, "the file is not a keel store or is damaged; check --store"},
    {StatusCode::kNotSupported, kExitFailure, "use a keel build or backend that supports it"},
    {StatusCode::kFailedPrecondition, kExitFailure, "run the command again (a new process reopens the store)"},
    {StatusCode::kCancelled, kExitFailure, "run the command again"},
    {StatusCode::kInternal, kExitFailure, "this is a bug in keel; please report it with the command line"},
}};

const ExitRule& RuleFor(StatusCode code) noexcept {
    for (const auto& rule : kExitRules) {
        if (rule.code == code) return rule;
    }
    return kExitRules.back();
}

}  // namespace

int ExitCodeFor(StatusCode code) noexcept {
    return RuleFor(code).exit_code;
}

std::string_view DefaultHint(StatusCode code) noexcept {
    return RuleFor(code).hint;
}

}  // namespace keel::cli
