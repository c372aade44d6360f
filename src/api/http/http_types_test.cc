#include "api/http/http_types.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace quell::http {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

TEST(PercentDecodeTest, DecodesEscapes) {
  EXPECT_EQ(PercentDecode("user%3A1", false), "user:1");
  EXPECT_EQ(PercentDecode("%2f%2F", false), "//");
  EXPECT_EQ(PercentDecode("a%00b", false), std::string("a\0b", 3));
}

TEST(PercentDecodeTest, PlusIsSpaceOnlyWhenAsked) {
  EXPECT_EQ(PercentDecode("a+b", true), "a b");
  EXPECT_EQ(PercentDecode("a+b", false), "a+b");
  EXPECT_EQ(PercentDecode("a%2Bb", true), "a+b");
}

TEST(PercentDecodeTest, KeepsMalformedEscapes) {
  EXPECT_EQ(PercentDecode("%", true), "%");
  EXPECT_EQ(PercentDecode("%4", true), "%4");
  EXPECT_EQ(PercentDecode("%zz1", true), "%zz1");
  EXPECT_EQ(PercentDecode("100%", true), "100%");
  EXPECT_EQ(PercentDecode("%%41", true), "%A");
}

TEST(ParseQueryTest, SplitsDecodesAndKeepsOrderAndRepeats) {
  EXPECT_THAT(ParseQuery("entity=user%3A1&entity=ip%3A1.2.3.4&surface=pay+out"),
              ElementsAre(Pair("entity", "user:1"), Pair("entity", "ip:1.2.3.4"),
                          Pair("surface", "pay out")));
}

TEST(ParseQueryTest, EmptySegmentsAndMissingValues) {
  EXPECT_THAT(ParseQuery(""), ElementsAre());
  EXPECT_THAT(ParseQuery("&&a&b=&=c&"), ElementsAre(Pair("a", ""), Pair("b", ""), Pair("", "c")));
  EXPECT_THAT(ParseQuery("k=v=w"), ElementsAre(Pair("k", "v=w")));
  EXPECT_THAT(ParseQuery("a%26b=c%3Dd"), ElementsAre(Pair("a&b", "c=d")));
}

TEST(SplitTargetTest, OriginForm) {
  Request r;
  r.target = "/v1/entities/user%3A1?wait=5&x=a+b";
  SplitTarget(&r);
  EXPECT_EQ(r.path, "/v1/entities/user:1");
  EXPECT_THAT(r.query, ElementsAre(Pair("wait", "5"), Pair("x", "a b")));
  EXPECT_EQ(r.QueryParam("wait").value_or("none"), "5");
  EXPECT_FALSE(r.QueryParam("missing").has_value());
}

TEST(SplitTargetTest, PlusInPathIsLiteral) {
  Request r;
  r.target = "/a+b";
  SplitTarget(&r);
  EXPECT_EQ(r.path, "/a+b");
  EXPECT_TRUE(r.query.empty());
}

TEST(SplitTargetTest, AbsoluteFormAndOddTargets) {
  Request r;
  r.target = "http://example.com:8080/v1/check?entity=a";
  SplitTarget(&r);
  EXPECT_EQ(r.path, "/v1/check");
  EXPECT_THAT(r.query, ElementsAre(Pair("entity", "a")));

  r.target = "http://example.com";
  SplitTarget(&r);
  EXPECT_EQ(r.path, "/");

  r.target = "*";
  SplitTarget(&r);
  EXPECT_EQ(r.path, "*");

  r.target = "/x?";
  SplitTarget(&r);
  EXPECT_EQ(r.path, "/x");
  EXPECT_TRUE(r.query.empty());
}

TEST(RequestTest, HeaderLookupIsByLowerCaseName) {
  Request r;
  r.headers = {{"content-type", "text/plain"}, {"x-a", "1"}, {"x-a", "2"}};
  EXPECT_EQ(r.Header("x-a"), "1");
  EXPECT_EQ(r.Header("content-type"), "text/plain");
  EXPECT_EQ(r.Header("absent"), "");
}

TEST(ErrorResponseTest, SpecShapeWithEscaping) {
  Response r = ErrorResponse(413, "too_large", "body \"x\"\n\x01");
  EXPECT_EQ(r.status, 413);
  EXPECT_EQ(r.content_type, "application/json");
  EXPECT_EQ(r.body, R"({"error":{"code":"too_large","message":"body \"x\"\n\u0001"}})");
}

TEST(ReasonPhraseTest, KnownAndUnknown) {
  EXPECT_EQ(ReasonPhrase(200), "OK");
  EXPECT_EQ(ReasonPhrase(431), "Request Header Fields Too Large");
  EXPECT_EQ(ReasonPhrase(299), "Unknown");
}

}  // namespace
}  // namespace quell::http
