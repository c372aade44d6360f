// Unit tests of the lexer and the Pratt parser (internal API).
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "policy/internal/lexer.h"
#include "policy/internal/parser.h"

// GCC 12 reports a false -Wrestrict inside std::string::operator+= (GCC PR 105329).
#pragma GCC diagnostic ignored "-Wrestrict"

namespace quell::policy::internal {
namespace {

using ::testing::ElementsAre;

std::vector<Tok> Kinds(std::string_view src) {
  std::vector<LexError> errors;
  std::vector<Tok> out;
  for (const Token& t : Lex(src, &errors)) out.push_back(t.kind);
  EXPECT_TRUE(errors.empty()) << errors[0].message;
  return out;
}

std::string LexErrors(std::string_view src) {
  std::vector<LexError> errors;
  Lex(src, &errors);
  std::string out;
  for (const auto& e : errors) {
    out += std::to_string(e.pos.line) + ":" + std::to_string(e.pos.column) + ": " + e.message + ";";
  }
  return out;
}

Token One(std::string_view src) {
  std::vector<LexError> errors;
  std::vector<Token> toks = Lex(src, &errors);
  EXPECT_TRUE(errors.empty()) << (errors.empty() ? "" : errors[0].message);
  EXPECT_EQ(toks.size(), 2u);
  return toks[0];
}

TEST(LexerTest, Operators) {
  EXPECT_THAT(
      Kinds("== != < <= > >= && || ! + - * / % ? : . , ( ) [ ] { }"),
      ElementsAre(Tok::kEq, Tok::kNe, Tok::kLt, Tok::kLe, Tok::kGt, Tok::kGe, Tok::kAnd, Tok::kOr,
                  Tok::kNot, Tok::kPlus, Tok::kMinus, Tok::kStar, Tok::kSlash, Tok::kPercent,
                  Tok::kQuestion, Tok::kColon, Tok::kDot, Tok::kComma, Tok::kLParen, Tok::kRParen,
                  Tok::kLBracket, Tok::kRBracket, Tok::kLBrace, Tok::kRBrace, Tok::kEnd));
}

TEST(LexerTest, KeywordsAndIdentifiers) {
  EXPECT_THAT(Kinds("true false null in inx _a1"),
              ElementsAre(Tok::kTrue, Tok::kFalse, Tok::kNull, Tok::kIn, Tok::kIdent, Tok::kIdent,
                          Tok::kEnd));
  EXPECT_EQ(One("detection").text, "detection");
}

TEST(LexerTest, Numbers) {
  EXPECT_EQ(One("42").int_value, 42);
  EXPECT_EQ(One("0x1F").int_value, 31);
  EXPECT_EQ(One("9223372036854775807").int_value, INT64_MAX);
  EXPECT_TRUE(One("9223372036854775808").int_is_min);
  EXPECT_EQ(One("1.5").kind, Tok::kDouble);
  EXPECT_DOUBLE_EQ(One("1.5").double_value, 1.5);
  EXPECT_DOUBLE_EQ(One("2e3").double_value, 2000);
  EXPECT_DOUBLE_EQ(One(".25").double_value, 0.25);
  EXPECT_DOUBLE_EQ(One("1.5E-1").double_value, 0.15);
}

TEST(LexerTest, NumberErrors) {
  EXPECT_EQ(LexErrors("99999999999999999999"), "1:1: integer literal out of range;");
  EXPECT_EQ(LexErrors("1u"), "1:1: unsigned integer literals are not supported;");
  EXPECT_EQ(LexErrors("x > 1h"),
            "1:5: malformed number 1h — write durations as strings, e.g. \"1h\";");
  EXPECT_EQ(LexErrors("0x"), "1:1: malformed hexadecimal literal;");
}

TEST(LexerTest, Strings) {
  EXPECT_EQ(One(R"("a\"b")").text, "a\"b");
  EXPECT_EQ(One(R"('it\'s')").text, "it's");
  EXPECT_EQ(One(R"("\n\t\\")").text, "\n\t\\");
  EXPECT_EQ(One(R"("\x41\u00e5\U0001F600")").text, "A\xc3\xa5\xf0\x9f\x98\x80");
  EXPECT_EQ(One(R"("\101")").text, "A");
  EXPECT_EQ(One(R"(r"\d+\.")").text, "\\d+\\.");
  EXPECT_EQ(One(R"("""a"b""")").text, "a\"b");
  EXPECT_EQ(One("''").text, "");
}

TEST(LexerTest, StringErrors) {
  EXPECT_EQ(LexErrors("\"abc"), "1:1: unterminated string literal;");
  EXPECT_EQ(LexErrors("\"a\nc\""),
            "1:1: unterminated string literal (newline in string);"
            "2:2: unterminated string literal;");
  EXPECT_EQ(LexErrors(R"("\q")"), "1:2: unknown escape sequence \\q;");
  EXPECT_EQ(LexErrors(R"("\x4")"), "1:2: malformed \\x escape: expected 2 hex digits;");
  EXPECT_EQ(LexErrors(R"("\uD800")"), "1:2: invalid Unicode code point in escape;");
}

TEST(LexerTest, PositionsCountLinesAndCodePoints) {
  std::vector<LexError> errors;
  std::vector<Token> t = Lex("a &&\n  \"å\" == b", &errors);
  ASSERT_EQ(t.size(), 6u);
  EXPECT_EQ(t[0].pos.line, 1);
  EXPECT_EQ(t[0].pos.column, 1);
  EXPECT_EQ(t[1].pos.column, 3);
  EXPECT_EQ(t[2].pos.line, 2);
  EXPECT_EQ(t[2].pos.column, 3);
  EXPECT_EQ(t[3].pos.column, 7);  // "å" is one column
  EXPECT_EQ(t[4].pos.column, 10);
}

TEST(LexerTest, CommentsAndBadCharacters) {
  EXPECT_THAT(Kinds("a // comment\n|| b"),
              ElementsAre(Tok::kIdent, Tok::kOr, Tok::kIdent, Tok::kEnd));
  EXPECT_EQ(LexErrors("a = b"), "1:3: unexpected '=' — use == to compare;");
  EXPECT_EQ(LexErrors("a & b"), "1:3: unexpected '&' — use && for logical and;");
  EXPECT_EQ(LexErrors("a # b"), "1:3: unexpected character '#';");
  EXPECT_EQ(LexErrors("a \x01"), "1:3: unexpected byte 0x01;");
  // A non-ASCII character is one error (it was one per byte), and the next column counts
  // it as one.
  EXPECT_EQ(LexErrors("a \xc3\xa9 \xe2\x82\xac b"),
            "1:3: unexpected character '\xc3\xa9';1:5: unexpected character '\xe2\x82\xac';");
  EXPECT_EQ(LexErrors("\xc3 \xff"), "1:1: unexpected byte 0xc3;1:3: unexpected byte 0xff;");
  EXPECT_EQ(LexErrors("a \xc2\x9b"), "1:3: unexpected control character 0xc2 0x9b;");
}

std::string P(std::string_view src) {
  std::vector<LexError> errors;
  std::unique_ptr<Expr> e = Parse(src, &errors);
  if (e == nullptr) {
    std::string out = "error:";
    for (const auto& x : errors) {
      out +=
          " " + std::to_string(x.pos.line) + ":" + std::to_string(x.pos.column) + " " + x.message;
    }
    return out;
  }
  return DebugString(*e);
}

TEST(ParserTest, Precedence) {
  EXPECT_EQ(P("a || b && c"), "(a || (b && c))");
  EXPECT_EQ(P("a && b || c"), "((a && b) || c)");
  EXPECT_EQ(P("1 + 2 * 3"), "(1 + (2 * 3))");
  EXPECT_EQ(P("1 - 2 - 3"), "((1 - 2) - 3)");
  EXPECT_EQ(P("a < b == c"), "((a < b) == c)");
  EXPECT_EQ(P("a + b < c * d"), "((a + b) < (c * d))");
  EXPECT_EQ(P("!a && !b"), "(!a && !b)");
  EXPECT_EQ(P("-a * b"), "(-a * b)");
  EXPECT_EQ(P("a in [1, 2] && b"), "((a in [1, 2]) && b)");
  EXPECT_EQ(P("(a || b) && c"), "((a || b) && c)");
  EXPECT_EQ(P("a % b / c"), "((a % b) / c)");
}

TEST(ParserTest, Ternary) {
  EXPECT_EQ(P("a ? b : c"), "(a ? b : c)");
  EXPECT_EQ(P("a ? b : c ? d : e"), "(a ? b : (c ? d : e))");
  EXPECT_EQ(P("a || b ? 1 : 2"), "((a || b) ? 1 : 2)");
}

TEST(ParserTest, PostfixAndCalls) {
  EXPECT_EQ(P("detection.evidence.asn"), "detection.evidence.asn");
  EXPECT_EQ(P("a[\"k\"].b[0]"), "a[\"k\"].b[0]");
  EXPECT_EQ(P("x.startsWith(\"a\")"), "x.startsWith(\"a\")");
  EXPECT_EQ(P("count(\"plays\", entity, \"1h\")"), "count(\"plays\", entity, \"1h\")");
  EXPECT_EQ(P("f()"), "f()");
  EXPECT_EQ(P("x.size()"), "x.size()");
  EXPECT_EQ(P("[\"a\", \"b\",]"), "[\"a\", \"b\"]");
  EXPECT_EQ(P("[]"), "[]");
}

TEST(ParserTest, NegativeLiterals) {
  EXPECT_EQ(P("-5"), "-5");
  EXPECT_EQ(P("-9223372036854775808"), "-9223372036854775808");
  EXPECT_EQ(P("- -5"), "--5");
  EXPECT_EQ(P("9223372036854775808"), "error: 1:1 integer literal out of range");
}

TEST(ParserTest, SyntaxErrors) {
  EXPECT_EQ(P(""), "error: 1:1 empty expression");
  EXPECT_EQ(P("a &&"), "error: 1:5 unexpected end of expression");
  EXPECT_EQ(P("(a || b"), "error: 1:8 expected ')' to close '(' at 1:1, found end of expression");
  EXPECT_EQ(P("a b"),
            "error: 1:3 unexpected identifier 'b' after a complete expression — missing && or ||?");
  EXPECT_EQ(P("a)"), "error: 1:2 unbalanced ')'");
  EXPECT_EQ(P("f(a b)"),
            "error: 1:5 expected ',' or ')' in function arguments, found identifier 'b'");
  EXPECT_EQ(P("a."),
            "error: 1:3 expected a field or method name after '.', found end of expression");
  EXPECT_EQ(P("{}"), "error: 1:1 map literals are not supported");
  EXPECT_EQ(P("a ? b"), "error: 1:6 expected ':' in conditional ?:, found end of expression");
  EXPECT_EQ(P("(a)(b)"), "error: 1:4 only named functions can be called");
  EXPECT_EQ(P("a[1"), "error: 1:4 expected ']' after index, found end of expression");
}

TEST(ParserTest, DepthIsBounded) {
  std::string deep(300, '(');
  deep += "1";
  deep += std::string(300, ')');
  EXPECT_EQ(P(deep).substr(0, 6), "error:");
  EXPECT_NE(P(deep).find("nested too deeply"), std::string::npos);
  std::string nots(500, '!');
  EXPECT_NE(P(nots + "a").find("nested too deeply"), std::string::npos);
  std::string chain = "a";
  for (int i = 0; i < 300; ++i) chain += ".b";
  EXPECT_NE(P(chain).find("nested too deeply"), std::string::npos);
  std::string sum = "1";
  for (int i = 0; i < 150; ++i) sum += " + 1";
  EXPECT_EQ(P(sum).substr(0, 1), "(");  // a long chain is fine...
  for (int i = 0; i < 100; ++i) sum += " + 1";
  EXPECT_NE(P(sum).find("nested too deeply"), std::string::npos);  // ...up to kMaxDepth
  std::string methods = "a";
  for (int i = 0; i < 250; ++i) methods += ".f(b.c.d.e.f.g.h)";
  EXPECT_NE(P(methods).find("nested too deeply"), std::string::npos);
}

TEST(ParserTest, LexErrorsAreAllReported) {
  EXPECT_EQ(P("a = 1 & b"),
            "error: 1:3 unexpected '=' — use == to compare 1:7 unexpected '&' — use && for "
            "logical and");
}

}  // namespace
}  // namespace quell::policy::internal
