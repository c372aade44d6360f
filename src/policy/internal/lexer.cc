#include "policy/internal/lexer.h"

#include <cerrno>
#include <cstdlib>
#include <limits>

#include "absl/strings/str_cat.h"
#include "core/strings.h"
#include "core/utf8.h"

namespace quell::policy::internal {
namespace {

bool IsIdentStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool IsDigit(char c) { return c >= '0' && c <= '9'; }
bool IsHex(char c) { return IsDigit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F'); }
int HexValue(char c) {
  if (IsDigit(c)) return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return c - 'A' + 10;
}

void AppendUtf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// The length of the valid UTF-8 sequence of two or more bytes `s` starts with, else 0.
size_t Utf8Length(std::string_view s) {
  const auto lead = static_cast<unsigned char>(s.empty() ? 0 : s[0]);
  const size_t n = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC2 ? 2 : 0;
  if (n == 0 || s.size() < n || core::FindInvalidUtf8(s.substr(0, n)).has_value()) return 0;
  return n;
}

class Lexer {
 public:
  Lexer(std::string_view src, std::vector<LexError>* errors) : src_(src), errors_(errors) {}

  std::vector<Token> Run() {
    std::vector<Token> out;
    while (true) {
      SkipSpaceAndComments();
      Token t;
      t.pos = pos_;
      if (i_ >= src_.size()) {
        t.kind = Tok::kEnd;
        out.push_back(std::move(t));
        return out;
      }
      if (LexOne(&t)) out.push_back(std::move(t));
    }
  }

 private:
  char Peek(size_t ahead = 0) const { return i_ + ahead < src_.size() ? src_[i_ + ahead] : '\0'; }
  // Advances one byte, keeping line/column (columns count code points).
  void Advance() {
    char c = src_[i_++];
    if (c == '\n') {
      ++pos_.line;
      pos_.column = 1;
    } else if ((static_cast<unsigned char>(c) & 0xC0) != 0x80) {
      ++pos_.column;  // count lead bytes only, so columns are code points
    }
  }
  void Error(Pos p, std::string msg) { errors_->push_back({p, std::move(msg)}); }

  void SkipSpaceAndComments() {
    while (i_ < src_.size()) {
      char c = src_[i_];
      if (c == ' ' || c == '\t' || c == '\n' || c == '\r') {
        Advance();
      } else if (c == '/' && Peek(1) == '/') {
        while (i_ < src_.size() && src_[i_] != '\n') Advance();
      } else {
        break;
      }
    }
  }

  bool LexOne(Token* t) {
    char c = Peek();
    if (IsIdentStart(c)) {
      if ((c == 'r' || c == 'R') && (Peek(1) == '"' || Peek(1) == '\'')) {
        Advance();
        return LexString(t, /*raw=*/true);
      }
      if ((c == 'b' || c == 'B') && (Peek(1) == '"' || Peek(1) == '\'')) {
        Error(pos_, "bytes literals are not supported");
        Advance();
        return LexString(t, false) && false;
      }
      size_t start = i_;
      while (i_ < src_.size() && (IsIdentStart(src_[i_]) || IsDigit(src_[i_]))) Advance();
      std::string_view word = src_.substr(start, i_ - start);
      if (word == "true") {
        t->kind = Tok::kTrue;
      } else if (word == "false") {
        t->kind = Tok::kFalse;
      } else if (word == "null") {
        t->kind = Tok::kNull;
      } else if (word == "in") {
        t->kind = Tok::kIn;
      } else {
        t->kind = Tok::kIdent;
        t->text = std::string(word);
      }
      return true;
    }
    if (IsDigit(c) || (c == '.' && IsDigit(Peek(1)))) return LexNumber(t);
    if (c == '"' || c == '\'') return LexString(t, /*raw=*/false);
    Pos p = pos_;
    auto one = [&](Tok k) {
      Advance();
      t->kind = k;
      return true;
    };
    auto two = [&](Tok k) {
      Advance();
      Advance();
      t->kind = k;
      return true;
    };
    switch (c) {
      case '(':
        return one(Tok::kLParen);
      case ')':
        return one(Tok::kRParen);
      case '[':
        return one(Tok::kLBracket);
      case ']':
        return one(Tok::kRBracket);
      case '{':
        return one(Tok::kLBrace);
      case '}':
        return one(Tok::kRBrace);
      case '.':
        return one(Tok::kDot);
      case ',':
        return one(Tok::kComma);
      case '?':
        return one(Tok::kQuestion);
      case ':':
        return one(Tok::kColon);
      case '+':
        return one(Tok::kPlus);
      case '-':
        return one(Tok::kMinus);
      case '*':
        return one(Tok::kStar);
      case '/':
        return one(Tok::kSlash);
      case '%':
        return one(Tok::kPercent);
      case '!':
        return Peek(1) == '=' ? two(Tok::kNe) : one(Tok::kNot);
      case '<':
        return Peek(1) == '=' ? two(Tok::kLe) : one(Tok::kLt);
      case '>':
        return Peek(1) == '=' ? two(Tok::kGe) : one(Tok::kGt);
      case '=':
        if (Peek(1) == '=') return two(Tok::kEq);
        Error(p, "unexpected '=' — use == to compare");
        return one(Tok::kEq);  // recover as ==
      case '&':
        if (Peek(1) == '&') return two(Tok::kAnd);
        Error(p, "unexpected '&' — use && for logical and");
        return one(Tok::kAnd);
      case '|':
        if (Peek(1) == '|') return two(Tok::kOr);
        Error(p, "unexpected '|' — use || for logical or");
        return one(Tok::kOr);
      default:
        break;
    }
    unsigned char uc = static_cast<unsigned char>(c);
    if (uc >= 0x20 && uc < 0x7F) {
      Error(p, absl::StrCat("unexpected character '", std::string(1, c), "'"));
    } else if (size_t n = Utf8Length(src_.substr(i_)); n > 1) {
      // One error for the character, not one per byte ("é" read as 0xc3 then 0xa9).
      // (A C1 control is named by its bytes: messages reach terminals.)
      const std::string_view ch = src_.substr(i_, n);
      Error(p,
            core::HasControlCharacter(ch)
                ? absl::StrCat("unexpected control character 0x", absl::Hex(uc, absl::kZeroPad2),
                               " 0x", absl::Hex(static_cast<unsigned char>(ch[1]), absl::kZeroPad2))
                : absl::StrCat("unexpected character '", AV(ch), "'"));
      for (size_t k = 1; k < n; ++k) Advance();
    } else {
      Error(p, absl::StrCat("unexpected byte 0x", absl::Hex(uc, absl::kZeroPad2)));
    }
    Advance();
    return false;
  }

  bool LexNumber(Token* t) {
    Pos p = pos_;
    size_t start = i_;
    if (Peek() == '0' && (Peek(1) == 'x' || Peek(1) == 'X')) {
      Advance();
      Advance();
      size_t digits = i_;
      while (IsHex(Peek())) Advance();
      std::string text(src_.substr(digits, i_ - digits));
      if (text.empty()) {
        Error(p, "malformed hexadecimal literal");
        return false;
      }
      if (Peek() == 'u' || Peek() == 'U') {
        Advance();
        Error(p, "unsigned integer literals are not supported");
        return false;
      }
      errno = 0;
      unsigned long long v = std::strtoull(text.c_str(), nullptr, 16);
      if (errno == ERANGE ||
          v > static_cast<unsigned long long>(std::numeric_limits<int64_t>::max())) {
        Error(p, "integer literal out of range");
        return false;
      }
      t->kind = Tok::kInt;
      t->int_value = static_cast<int64_t>(v);
      return true;
    }
    bool is_double = false;
    while (IsDigit(Peek())) Advance();
    if (Peek() == '.' && IsDigit(Peek(1))) {
      is_double = true;
      Advance();
      while (IsDigit(Peek())) Advance();
    }
    if (Peek() == 'e' || Peek() == 'E') {
      size_t save_i = i_;
      Pos save_pos = pos_;
      Advance();
      if (Peek() == '+' || Peek() == '-') Advance();
      if (IsDigit(Peek())) {
        is_double = true;
        while (IsDigit(Peek())) Advance();
      } else {
        i_ = save_i;
        pos_ = save_pos;
      }
    }
    std::string text(src_.substr(start, i_ - start));
    if (Peek() == 'u' || Peek() == 'U') {
      Advance();
      Error(p, "unsigned integer literals are not supported");
      return false;
    }
    if (IsIdentStart(Peek())) {
      // "1h" and friends: durations are written as strings in this language.
      size_t s = i_;
      while (IsIdentStart(Peek()) || IsDigit(Peek())) Advance();
      Error(p, absl::StrCat("malformed number ", text, AV(src_.substr(s, i_ - s)),
                            " — write durations as strings, e.g. \"", text,
                            AV(src_.substr(s, i_ - s)), "\""));
      return false;
    }
    if (is_double) {
      errno = 0;
      double d = std::strtod(text.c_str(), nullptr);
      if (errno == ERANGE && (d > 1 || d < -1)) {
        Error(p, "double literal out of range");
        return false;
      }
      t->kind = Tok::kDouble;
      t->double_value = d;
      return true;
    }
    errno = 0;
    unsigned long long v = std::strtoull(text.c_str(), nullptr, 10);
    constexpr unsigned long long kMax = std::numeric_limits<int64_t>::max();
    if (errno == ERANGE || v > kMax + 1) {
      Error(p, "integer literal out of range");
      return false;
    }
    t->kind = Tok::kInt;
    if (v == kMax + 1) {
      t->int_value = std::numeric_limits<int64_t>::min();
      t->int_is_min = true;
    } else {
      t->int_value = static_cast<int64_t>(v);
    }
    return true;
  }

  bool LexString(Token* t, bool raw) {
    Pos p = pos_;
    char quote = Peek();
    bool triple = Peek(1) == quote && Peek(2) == quote;
    Advance();
    if (triple) {
      Advance();
      Advance();
    }
    std::string out;
    bool ok = true;
    while (true) {
      if (i_ >= src_.size()) {
        Error(p, "unterminated string literal");
        return false;
      }
      char c = Peek();
      if (c == quote && (!triple || (Peek(1) == quote && Peek(2) == quote))) {
        Advance();
        if (triple) {
          Advance();
          Advance();
        }
        break;
      }
      if (c == '\n' && !triple) {
        Error(p, "unterminated string literal (newline in string)");
        return false;
      }
      if (c == '\\' && !raw) {
        Pos esc = pos_;
        Advance();
        if (i_ >= src_.size()) continue;
        char e = Peek();
        Advance();
        switch (e) {
          case 'n':
            out.push_back('\n');
            break;
          case 'r':
            out.push_back('\r');
            break;
          case 't':
            out.push_back('\t');
            break;
          case 'a':
            out.push_back('\a');
            break;
          case 'b':
            out.push_back('\b');
            break;
          case 'f':
            out.push_back('\f');
            break;
          case 'v':
            out.push_back('\v');
            break;
          case '\\':
            out.push_back('\\');
            break;
          case '"':
            out.push_back('"');
            break;
          case '\'':
            out.push_back('\'');
            break;
          case '`':
            out.push_back('`');
            break;
          case '?':
            out.push_back('?');
            break;
          case 'x':
          case 'X':
          case 'u':
          case 'U': {
            int n = (e == 'x' || e == 'X') ? 2 : (e == 'u' ? 4 : 8);
            uint32_t cp = 0;
            for (int k = 0; k < n; ++k) {
              if (!IsHex(Peek())) {
                Error(esc, absl::StrCat("malformed \\", std::string(1, e), " escape: expected ", n,
                                        " hex digits"));
                ok = false;
                break;
              }
              cp = cp * 16 + static_cast<uint32_t>(HexValue(Peek()));
              Advance();
            }
            if (!ok) break;
            if (n == 2) {
              AppendUtf8(cp, &out);
            } else if (cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
              Error(esc, "invalid Unicode code point in escape");
              ok = false;
            } else {
              AppendUtf8(cp, &out);
            }
            break;
          }
          default:
            if (e >= '0' && e <= '3' && Peek() >= '0' && Peek() <= '7' && Peek(1) >= '0' &&
                Peek(1) <= '7') {
              int v = (e - '0') * 64 + (Peek() - '0') * 8 + (Peek(1) - '0');
              Advance();
              Advance();
              AppendUtf8(static_cast<uint32_t>(v), &out);
            } else {
              Error(esc, absl::StrCat("unknown escape sequence \\", std::string(1, e)));
              ok = false;
            }
        }
        continue;
      }
      out.push_back(c);
      Advance();
    }
    if (!ok) return false;
    t->kind = Tok::kString;
    t->text = std::move(out);
    return true;
  }

  std::string_view src_;
  std::vector<LexError>* errors_;
  size_t i_ = 0;
  Pos pos_;
};

}  // namespace

const char* TokName(Tok kind) {
  switch (kind) {
    case Tok::kEnd:
      return "end of expression";
    case Tok::kInt:
      return "integer";
    case Tok::kDouble:
      return "number";
    case Tok::kString:
      return "string";
    case Tok::kIdent:
      return "identifier";
    case Tok::kTrue:
      return "true";
    case Tok::kFalse:
      return "false";
    case Tok::kNull:
      return "null";
    case Tok::kIn:
      return "in";
    case Tok::kLParen:
      return "'('";
    case Tok::kRParen:
      return "')'";
    case Tok::kLBracket:
      return "'['";
    case Tok::kRBracket:
      return "']'";
    case Tok::kLBrace:
      return "'{'";
    case Tok::kRBrace:
      return "'}'";
    case Tok::kDot:
      return "'.'";
    case Tok::kComma:
      return "','";
    case Tok::kQuestion:
      return "'?'";
    case Tok::kColon:
      return "':'";
    case Tok::kNot:
      return "'!'";
    case Tok::kEq:
      return "'=='";
    case Tok::kNe:
      return "'!='";
    case Tok::kLt:
      return "'<'";
    case Tok::kLe:
      return "'<='";
    case Tok::kGt:
      return "'>'";
    case Tok::kGe:
      return "'>='";
    case Tok::kAnd:
      return "'&&'";
    case Tok::kOr:
      return "'||'";
    case Tok::kPlus:
      return "'+'";
    case Tok::kMinus:
      return "'-'";
    case Tok::kStar:
      return "'*'";
    case Tok::kSlash:
      return "'/'";
    case Tok::kPercent:
      return "'%'";
  }
  return "?";
}

std::vector<Token> Lex(std::string_view source, std::vector<LexError>* errors) {
  return Lexer(source, errors).Run();
}

}  // namespace quell::policy::internal
