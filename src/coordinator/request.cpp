#include "coordinator/request.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

namespace keel::coordinator {
namespace {

using nlohmann::json;

std::string Lower(std::string_view s) {
    std::string out(s);
    for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

// The value of `key` in `obj`, matched case-insensitively (an exact match wins); nullptr when absent.
const json* Field(const json& obj, std::string_view key) {
    if (!obj.is_object()) return nullptr;
    if (auto it = obj.find(std::string(key)); it != obj.end()) return &*it;
    std::string want = Lower(key);
    for (auto it = obj.begin(); it != obj.end(); ++it) {
        if (Lower(it.key()) == want) return &*it;
    }
    return nullptr;
}

Result<std::string> String(const json& obj, std::string_view key) {
    const json* v = Field(obj, key);
    if (v == nullptr || v->is_null()) return std::string();
    if (v->is_string()) {
        const auto& text = v->get_ref<const std::string&>();
        if (text.find('\0') != std::string::npos) {
            return Status::InvalidArgument(fmt::format("field '{}' contains a NUL character", key));
        }
        return text;
    }
    return Status::InvalidArgument(fmt::format("field '{}' must be a string", key));
}

Result<int64_t> Int(const json& obj, std::string_view key) {
    const json* v = Field(obj, key);
    if (v == nullptr || v->is_null()) return int64_t{0};
    if (v->is_number_integer()) return v->get<int64_t>();
    if (v->is_number_float()) return static_cast<int64_t>(v->get<double>());
    if (v->is_string()) {
        const std::string& s = v->get_ref<const std::string&>();
        if (s.empty()) return int64_t{0};
        try {
            size_t used = 0;
            int64_t n = std::stoll(s, &used);
            if (used == s.size()) return n;
        } catch (const std::exception&) {
        }
    }
    return Status::InvalidArgument(fmt::format("field '{}' must be an integer", key));
}

Result<bool> Bool(const json& obj, std::string_view key) {
    const json* v = Field(obj, key);
    if (v == nullptr || v->is_null()) return false;
    if (v->is_boolean()) return v->get<bool>();
    if (v->is_string()) return v->get<std::string>() == "true";
    return Status::InvalidArgument(fmt::format("field '{}' must be a boolean", key));
}

std::string StripGid(std::string gid) {
    std::erase_if(gid, [](char c) { return c == '\n' || c == '\r' || c == ';'; });
    return gid;
}

std::string BranchId(size_t index) { return fmt::format("{:02d}", index + 1); }

Status CheckUrl(const std::string& url, std::string_view field, const Limits& limits) {
    if (url.size() > limits.max_url_bytes) {
        return Status::InvalidArgument(
            fmt::format("{} is longer than the limit of {} bytes", field, limits.max_url_bytes));
    }
    if (url.starts_with("topic://")) {
        return Status::NotSupported(fmt::format("{} '{}': topics are not supported by keeld", field, url));
    }
    return Status::Ok();
}

}  // namespace

Result<json> ParseJsonBody(std::string_view body, int max_depth) {
    bool too_deep = false;
    json::parser_callback_t cb = [&](int depth, json::parse_event_t, json&) {
        if (depth > max_depth) too_deep = true;
        return !too_deep;
    };
    json j = json::parse(body, cb, /*allow_exceptions=*/false);
    if (too_deep) {
        return Status::InvalidArgument(fmt::format("JSON body is nested deeper than the limit of {}", max_depth));
    }
    if (j.is_discarded()) return Status::InvalidArgument("request body is not valid JSON");
    return j;
}

Result<TransRequest> ParseTransRequest(std::string_view body, const Limits& limits) {
    KEEL_ASSIGN_OR_RETURN(json j, ParseJsonBody(body, limits.max_json_depth));
    if (!j.is_object()) return Status::InvalidArgument("request body must be a JSON object");
    TransRequest r;
    Global& g = r.global;
    KEEL_ASSIGN_OR_RETURN(std::string gid, String(j, "gid"));
    g.gid = StripGid(std::move(gid));
    if (g.gid.empty()) return Status::InvalidArgument("field 'gid' is missing or empty");
    if (g.gid.size() > limits.max_gid_bytes) {
        return Status::InvalidArgument(
            fmt::format("field 'gid' is longer than the limit of {} bytes", limits.max_gid_bytes));
    }
    KEEL_ASSIGN_OR_RETURN(g.trans_type, String(j, "trans_type"));
    if (g.trans_type == "xa" || g.trans_type == "workflow") {
        return Status::NotSupported(fmt::format(
            "trans_type '{}' is not supported by keeld (supported: msg, saga, tcc); see docs/http-api.md",
            g.trans_type));
    }
    if (g.trans_type != "msg" && g.trans_type != "saga" && g.trans_type != "tcc") {
        return Status::InvalidArgument(fmt::format(
            "field 'trans_type' has the unknown value '{}' (supported: msg, saga, tcc)", g.trans_type));
    }
    KEEL_ASSIGN_OR_RETURN(g.query_prepared, String(j, "query_prepared"));
    KEEL_RETURN_IF_ERROR(CheckUrl(g.query_prepared, "query_prepared", limits));
    KEEL_ASSIGN_OR_RETURN(std::string protocol, String(j, "protocol"));
    if (!protocol.empty() && protocol != "http") {
        return Status::NotSupported(
            fmt::format("protocol '{}' is not supported by keeld (supported: http)", protocol));
    }
    KEEL_ASSIGN_OR_RETURN(g.custom_data, String(j, "custom_data"));
    if (g.custom_data.size() > 1024) {
        return Status::InvalidArgument("field 'custom_data' is longer than the limit of 1024 bytes");
    }
    KEEL_ASSIGN_OR_RETURN(g.rollback_reason, String(j, "rollback_reason"));
    TransOptions& o = g.options;
    KEEL_ASSIGN_OR_RETURN(o.wait_result, Bool(j, "wait_result"));
    KEEL_ASSIGN_OR_RETURN(o.concurrent, Bool(j, "concurrent"));
    KEEL_ASSIGN_OR_RETURN(o.timeout_to_fail, Int(j, "timeout_to_fail"));
    KEEL_ASSIGN_OR_RETURN(o.retry_interval, Int(j, "retry_interval"));
    KEEL_ASSIGN_OR_RETURN(o.request_timeout, Int(j, "request_timeout"));
    KEEL_ASSIGN_OR_RETURN(o.retry_limit, Int(j, "retry_limit"));
    for (auto [name, value] : {std::pair{"timeout_to_fail", o.timeout_to_fail},
                               std::pair{"retry_interval", o.retry_interval},
                               std::pair{"request_timeout", o.request_timeout},
                               std::pair{"retry_limit", o.retry_limit}}) {
        if (value < 0) return Status::InvalidArgument(fmt::format("field '{}' must not be negative", name));
    }
    if (const json* h = Field(j, "branch_headers"); h != nullptr && !h->is_null()) {
        if (!h->is_object()) return Status::InvalidArgument("field 'branch_headers' must be an object of strings");
        for (auto& [k, v] : h->items()) {
            if (!v.is_string()) {
                return Status::InvalidArgument(fmt::format("branch_headers['{}'] must be a string", k));
            }
            const auto& value = v.get_ref<const std::string&>();
            bool bad_name = k.empty() || std::any_of(k.begin(), k.end(), [](char c) {
                                return !std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_';
                            });
            if (bad_name || value.find_first_of(std::string("\r\n\0", 3)) != std::string::npos) {
                return Status::InvalidArgument(
                    "branch_headers: header names are letters, digits, '-' and '_', values have no line breaks");
            }
            o.branch_headers[k] = v.get<std::string>();
        }
    }

    const json* steps = Field(j, "steps");
    if (steps != nullptr && !steps->is_null()) {
        if (!steps->is_array()) return Status::InvalidArgument("field 'steps' must be an array");
        if (steps->size() > limits.max_steps) {
            return Status::InvalidArgument(
                fmt::format("field 'steps' has {} steps, more than the limit of {}", steps->size(), limits.max_steps));
        }
        r.has_steps = !steps->empty();
    }
    const json* payloads = Field(j, "payloads");
    if (payloads != nullptr && !payloads->is_null() && !payloads->is_array()) {
        return Status::InvalidArgument("field 'payloads' must be an array of strings");
    }
    size_t n = r.has_steps ? steps->size() : 0;
    if (n > 0 && (g.trans_type == "tcc")) {
        return Status::InvalidArgument("field 'steps' is not used by tcc; register branches with registerBranch");
    }
    if (payloads != nullptr && payloads->is_array() && !payloads->empty() && payloads->size() < n) {
        return Status::InvalidArgument(
            fmt::format("field 'payloads' has {} entries for {} steps", payloads->size(), n));
    }
    for (size_t i = 0; i < n; ++i) {
        const json& step = (*steps)[i];
        if (!step.is_object()) return Status::InvalidArgument(fmt::format("steps[{}] must be an object", i));
        for (auto& [k, v] : step.items()) {
            if (!v.is_string() && !v.is_null()) {
                return Status::InvalidArgument(fmt::format("steps[{}].{} must be a string", i, k));
            }
        }
        KEEL_ASSIGN_OR_RETURN(std::string action, String(step, "action"));
        KEEL_ASSIGN_OR_RETURN(std::string compensate, String(step, "compensate"));
        KEEL_RETURN_IF_ERROR(CheckUrl(action, fmt::format("steps[{}].action", i), limits));
        KEEL_RETURN_IF_ERROR(CheckUrl(compensate, fmt::format("steps[{}].compensate", i), limits));
        std::string payload;
        if (payloads != nullptr && payloads->is_array() && i < payloads->size()) {
            const json& p = (*payloads)[i];
            if (p.is_string()) {
                payload = p.get<std::string>();
            } else if (!p.is_null()) {
                return Status::InvalidArgument(fmt::format("payloads[{}] must be a string", i));
            }
        } else {
            KEEL_ASSIGN_OR_RETURN(payload, String(step, "data"));  // the legacy steps[i].data form
        }
        Branch b;
        b.gid = g.gid;
        b.branch_id = BranchId(i);
        b.bin_data = payload;
        if (g.trans_type == "saga") {
            b.url = compensate;
            b.op = "compensate";
            r.branches.push_back(b);
        }
        b.url = action;
        b.op = "action";
        r.branches.push_back(std::move(b));
    }
    return r;
}

Result<std::map<std::string, std::string>> ParseFlatBody(std::string_view body, const Limits& limits) {
    KEEL_ASSIGN_OR_RETURN(json j, ParseJsonBody(body, limits.max_json_depth));
    if (!j.is_object()) return Status::InvalidArgument("request body must be a JSON object");
    std::map<std::string, std::string> out;
    for (auto& [k, v] : j.items()) {
        std::string key = Lower(k);
        if (v.is_null()) {
            out[key] = "";
        } else if (v.is_string()) {
            out[key] = v.get<std::string>();
        } else {
            out[key] = v.dump();
        }
    }
    return out;
}

std::vector<std::string> UrlsOf(const TransRequest& request) {
    std::vector<std::string> urls;
    if (!request.global.query_prepared.empty()) urls.push_back(request.global.query_prepared);
    for (const auto& b : request.branches) {
        if (!b.url.empty()) urls.push_back(b.url);
    }
    return urls;
}

SagaLayout ParseSagaLayout(std::string_view custom_data) {
    SagaLayout layout;
    if (custom_data.empty()) return layout;
    json j = json::parse(custom_data, nullptr, false);
    if (!j.is_object()) return layout;
    if (const json* c = Field(j, "concurrent"); c != nullptr && c->is_boolean()) layout.concurrent = c->get<bool>();
    if (const json* o = Field(j, "orders"); o != nullptr && o->is_object()) {
        for (auto& [k, v] : o->items()) {
            size_t step = 0;
            try {
                step = static_cast<size_t>(std::stoul(k));
            } catch (const std::exception&) {
                continue;
            }
            if (!v.is_array()) continue;
            for (const auto& d : v) {
                if (d.is_number_integer() && d.get<int64_t>() >= 0) {
                    layout.orders[step].push_back(static_cast<size_t>(d.get<int64_t>()));
                }
            }
        }
    }
    return layout;
}

int64_t ParseMsgDelay(std::string_view custom_data) {
    if (custom_data.empty()) return 0;
    json j = json::parse(custom_data, nullptr, false);
    const json* d = Field(j, "delay");
    if (d == nullptr || !d->is_number()) return 0;
    return std::max<int64_t>(0, d->get<int64_t>());
}

}  // namespace keel::coordinator
