#include <gtest/gtest.h>

#include <sys/wait.h>
#include <unistd.h>

#include <set>

#include "keel/event.hpp"
#include "keel/status.hpp"
#include "keel/uuid.hpp"
#include "store/registry.hpp"

namespace keel {
namespace {

TEST(Status, OkAndErrors) {
    EXPECT_TRUE(Status::Ok().ok());
    Status s = Status::InvalidArgument("stream id is empty");
    EXPECT_FALSE(s.ok());
    EXPECT_EQ(s.code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(s.ToString(), "invalid_argument: stream id is empty");
    EXPECT_EQ(s.WithContext("event 2").message(), "event 2: stream id is empty");
    EXPECT_FALSE(s.actual_version().has_value());
    Status w = Status::WrongExpectedVersion("conflict", 7);
    EXPECT_EQ(w.actual_version(), 7);
}

TEST(Result, ValueAndError) {
    Result<int> good = 5;
    ASSERT_TRUE(good.ok());
    EXPECT_EQ(*good, 5);
    EXPECT_EQ(good.value(), 5);
    Result<int> bad = Status::NotFound("nope");
    EXPECT_FALSE(bad.ok());
    EXPECT_EQ(bad.status().code(), StatusCode::kNotFound);
    EXPECT_EQ(bad.value_or(9), 9);
    EXPECT_THROW((void)bad.value(), StatusError);
    Result<int> from_ok = Status::Ok();  // a caller bug becomes kInternal, never a "value"
    EXPECT_EQ(from_ok.status().code(), StatusCode::kInternal);
}

TEST(Uuid, GenerateIsVersion7UniqueAndOrdered) {
    std::set<Uuid> seen;
    Uuid prev;
    for (int i = 0; i < 1000; ++i) {
        Uuid u = Uuid::Generate();
        EXPECT_FALSE(u.is_nil());
        EXPECT_EQ(u.bytes()[6] >> 4, 7);
        EXPECT_EQ(u.bytes()[8] >> 6, 2);
        EXPECT_TRUE(seen.insert(u).second);
        // The first 48 bits are milliseconds: never decreasing.
        EXPECT_GE(std::string(u.bytes_view().substr(0, 6)), std::string(prev.bytes_view().substr(0, 6)));
        prev = u;
    }
}

// Regression: a forked child inherited its parent's generator state and produced the same ids as its sibling.
TEST(Uuid, ForkedChildrenGenerateDistinctIds) {
    (void)Uuid::Generate();  // seed the parent's generator before forking
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    std::vector<pid_t> kids;
    for (int k = 0; k < 2; ++k) {
        const pid_t pid = ::fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
            const Uuid u = Uuid::Generate();
            (void)!::write(fds[1], u.bytes().data(), 16);
            ::_exit(0);
        }
        kids.push_back(pid);
    }
    ::close(fds[1]);
    std::array<uint8_t, 16> a{}, b{};
    ASSERT_EQ(::read(fds[0], a.data(), 16), 16);
    ASSERT_EQ(::read(fds[0], b.data(), 16), 16);
    ::close(fds[0]);
    for (pid_t pid : kids) ::waitpid(pid, nullptr, 0);
    EXPECT_NE(Uuid(a), Uuid(b));
}

TEST(Uuid, ParseRoundTripAndErrors) {
    const std::string text = "0191f3c2-8e4b-7a3d-9c1e-2f4a5b6c7d8e";
    auto u = Uuid::Parse(text);
    ASSERT_TRUE(u.ok()) << u.status().ToString();
    EXPECT_EQ(u->ToString(), text);
    EXPECT_EQ(Uuid::Parse("{0191F3C2-8E4B-7A3D-9C1E-2F4A5B6C7D8E}")->ToString(), text);
    for (const char* bad : {"", "0191f3c2", "0191f3c2-8e4b-7a3d-9c1e-2f4a5b6c7d8", "0191f3c2x8e4b-7a3d-9c1e-2f4a5b6c7d8e",
                            "0191f3c2-8e4b-7a3d-9c1e-2f4a5b6c7d8g"}) {
        auto r = Uuid::Parse(bad);
        EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument) << bad;
        EXPECT_NE(r.status().message().find("malformed UUID"), std::string::npos);
    }
    EXPECT_EQ(Uuid::FromBytes("short").status().code(), StatusCode::kInvalidArgument);
}

TEST(Event, CategoryAndExpectedVersion) {
    EXPECT_EQ(StreamCategory("User-123"), "User");
    EXPECT_EQ(StreamCategory("User-123-x"), "User");
    EXPECT_EQ(StreamCategory("config"), "config");
    EXPECT_TRUE(ExpectedVersion::Any().Matches(-1));
    EXPECT_TRUE(ExpectedVersion::NoStream().Matches(-1));
    EXPECT_FALSE(ExpectedVersion::NoStream().Matches(0));
    EXPECT_TRUE(ExpectedVersion::StreamExists().Matches(0));
    EXPECT_FALSE(ExpectedVersion::StreamExists().Matches(-1));
    EXPECT_TRUE(ExpectedVersion::Exact(3).Matches(3));
    EXPECT_FALSE(ExpectedVersion::Exact(3).Matches(4));
    EXPECT_EQ(ExpectedVersion::Exact(-1), ExpectedVersion::NoStream());
    EXPECT_EQ(ExpectedVersion::Exact(12).ToString(), "12");
}

TEST(Registry, UnknownSchemeListsKnownOnes) {
    auto r = OpenStore("cassandra://x");
    EXPECT_EQ(r.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(r.status().message().find("sqlite"), std::string::npos);
    EXPECT_NE(r.status().message().find("memory"), std::string::npos);
    EXPECT_EQ(OpenStore("no-scheme").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(OpenStore("memory:extra").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(OpenStore("sqlite:").status().code(), StatusCode::kInvalidArgument);
    EXPECT_EQ(OpenStore("sqlite:///tmp/x.db?fsync=yes").status().code(), StatusCode::kInvalidArgument);
    auto parsed = detail::ParseUri("sqlite:///a/b.db?durability=normal");
    ASSERT_TRUE(parsed.ok());
    EXPECT_EQ(parsed->scheme, "sqlite");
    EXPECT_EQ(parsed->rest, "///a/b.db");
    ASSERT_NE(parsed->Find("durability"), nullptr);
    EXPECT_EQ(*parsed->Find("durability"), "normal");
}

}  // namespace
}  // namespace keel
