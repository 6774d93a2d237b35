#include <gtest/gtest.h>

#include "coordinator/request.hpp"

namespace keel::coordinator {
namespace {

TEST(ParseTransRequest, SagaBodyBuildsCompensateActionRowsWithIds) {
    auto r = ParseTransRequest(
        R"({"gid":"g1","trans_type":"saga","steps":[{"action":"http://127.0.0.1:1/a","compensate":"http://127.0.0.1:1/c"},
            {"action":"http://127.0.0.1:1/b","compensate":""}],"payloads":["{\"amount\":30}","x"],
            "wait_result":true,"retry_limit":3,"branch_headers":{"h":"v"},"unknown":[1,2]})",
        Limits{});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    ASSERT_EQ(r->branches.size(), 4u);
    EXPECT_EQ(r->branches[0].op, "compensate");
    EXPECT_EQ(r->branches[0].branch_id, "01");
    EXPECT_EQ(r->branches[1].op, "action");
    EXPECT_EQ(r->branches[1].bin_data, R"({"amount":30})");
    EXPECT_EQ(r->branches[3].branch_id, "02");
    EXPECT_EQ(r->branches[3].url, "http://127.0.0.1:1/b");
    EXPECT_TRUE(r->global.options.wait_result);
    EXPECT_EQ(r->global.options.retry_limit, 3);
    EXPECT_EQ(r->global.options.branch_headers.at("h"), "v");
}

TEST(ParseTransRequest, LenientLikeDtm) {
    // Python's body: nulls, extra keys; keys in another case.
    auto r = ParseTransRequest(
        R"({"Gid":"p1\n;","TRANS_TYPE":"msg","custom_data":null,"steps":[{"action":"http://127.0.0.1:5/in"}],
            "payloads":["{\"amount\": 30}"],"query_prepared":null,"protocol":null,"wait_result":false,
            "timeout_to_fail":0,"request_timeout":8,"retry_interval":0,"passthrough_headers":[],
            "branch_headers":{},"concurrent":false})",
        Limits{});
    ASSERT_TRUE(r.ok()) << r.status().ToString();
    EXPECT_EQ(r->global.gid, "p1");
    EXPECT_EQ(r->global.options.request_timeout, 8);
    ASSERT_EQ(r->branches.size(), 1u);
    EXPECT_EQ(r->branches[0].op, "action");
    // Legacy steps[i].data payloads.
    r = ParseTransRequest(R"({"gid":"g","trans_type":"saga","steps":[{"action":"http://127.0.0.1:1/a","data":"d"}]})",
                          Limits{});
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(r->branches[1].bin_data, "d");
}

TEST(ParseTransRequest, LimitsAndUnsupportedModesNameTheReason) {
    Limits l;
    auto r = ParseTransRequest(R"({"gid":")" + std::string(129, 'g') + R"(","trans_type":"saga"})", l);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("128"), std::string::npos);
    std::string steps = "[";
    for (int i = 0; i < 101; ++i) steps += std::string(i ? "," : "") + R"({"action":""})";
    r = ParseTransRequest(R"({"gid":"g","trans_type":"saga","steps":)" + steps + "]}", l);
    EXPECT_NE(r.status().message().find("limit of 100"), std::string::npos) << r.status().ToString();
    std::string deep = R"({"gid":"g","trans_type":"saga","x":)" + std::string(40, '[') + std::string(40, ']') + "}";
    r = ParseTransRequest(deep, l);
    EXPECT_NE(r.status().message().find("deeper than the limit of 32"), std::string::npos) << r.status().ToString();
    r = ParseTransRequest(R"({"gid":"g","trans_type":"xa"})", l);
    EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
    EXPECT_NE(r.status().message().find("'xa'"), std::string::npos);
    r = ParseTransRequest(R"({"gid":"g","trans_type":"msg","steps":[{"action":"topic://t"}]})", l);
    EXPECT_EQ(r.status().code(), StatusCode::kNotSupported);
    r = ParseTransRequest(R"({"gid":"g","trans_type":"saga","steps":[{"action":"a"},{"action":"b"}],"payloads":["1"]})", l);
    EXPECT_NE(r.status().message().find("payloads"), std::string::npos);
    r = ParseTransRequest(R"({"trans_type":"saga"})", l);
    EXPECT_NE(r.status().message().find("gid"), std::string::npos);
    r = ParseTransRequest("not json", l);
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
}

TEST(SagaLayout, ParsesNodeStyleCustomData) {
    auto l = ParseSagaLayout(R"({"concurrent":true,"orders":{"1":[0],"2":[0,1]}})");
    EXPECT_TRUE(l.concurrent);
    EXPECT_EQ(l.orders[1], std::vector<size_t>{0});
    EXPECT_EQ(l.orders[2], (std::vector<size_t>{0, 1}));
    EXPECT_EQ(ParseMsgDelay(R"({"Delay":10})"), 10);
    EXPECT_EQ(ParseMsgDelay(""), 0);
}

}  // namespace
}  // namespace keel::coordinator
