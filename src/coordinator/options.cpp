#include <nlohmann/json.hpp>

#include "coordinator/storage.hpp"

namespace keel::coordinator {

std::string EncodeOptions(const TransOptions& o) {
    nlohmann::json j = {{"wait_result", o.wait_result},         {"timeout_to_fail", o.timeout_to_fail},
                        {"retry_interval", o.retry_interval},   {"request_timeout", o.request_timeout},
                        {"retry_limit", o.retry_limit},         {"concurrent", o.concurrent},
                        {"branch_headers", o.branch_headers}};
    // Replace rather than throw on invalid UTF-8 (request parsing rejects it; this is the last line of defence).
    return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

TransOptions DecodeOptions(std::string_view text) {
    TransOptions o;
    auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object()) return o;
    auto num = [&](const char* k) -> int64_t {
        auto it = j.find(k);
        return it != j.end() && it->is_number_integer() ? it->get<int64_t>() : 0;
    };
    auto flag = [&](const char* k) {
        auto it = j.find(k);
        return it != j.end() && it->is_boolean() && it->get<bool>();
    };
    o.wait_result = flag("wait_result");
    o.concurrent = flag("concurrent");
    o.timeout_to_fail = num("timeout_to_fail");
    o.retry_interval = num("retry_interval");
    o.request_timeout = num("request_timeout");
    o.retry_limit = num("retry_limit");
    if (auto it = j.find("branch_headers"); it != j.end() && it->is_object()) {
        for (auto& [k, v] : it->items()) {
            if (v.is_string()) o.branch_headers[k] = v.get<std::string>();
        }
    }
    return o;
}

}  // namespace keel::coordinator
