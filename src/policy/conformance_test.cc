// Conformance cases for the policy expression language: values, compile errors (with
// positions and messages) and runtime errors, each with its defined result.
//
// A case's `want` is either the Value::DebugString() of the result, or "ERR " followed by
// every expected diagnostic ("line:column: message"), joined with " | ".
#include <atomic>
#include <cstdlib>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "policy/expr.h"

#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

// Allocation counter for the no-allocation test. Counting only; behaviour unchanged.
namespace {
std::atomic<long> g_allocations{0};
}
void* operator new(std::size_t n) {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void* operator new[](std::size_t n) { return operator new(n); }
void* operator new(std::size_t n, const std::nothrow_t&) noexcept {
  g_allocations.fetch_add(1, std::memory_order_relaxed);
  return std::malloc(n == 0 ? 1 : n);
}
void* operator new[](std::size_t n, const std::nothrow_t& t) noexcept { return operator new(n, t); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete[](void* p, std::size_t) noexcept { std::free(p); }

namespace quell::policy {
namespace {

enum class In { kDet, kSparse, kEvent };

struct Case {
  In in;
  const char* expr;
  const char* want;
};

// clang-format off
const Case kCases[] = {
    // ---- literals and arithmetic
    {In::kDet, "1", "1"},
    {In::kDet, "-7", "-7"},
    {In::kDet, "1.5", "1.5"},
    {In::kDet, "2.0", "2.0"},
    {In::kDet, "1e3", "1000.0"},
    {In::kDet, "0x10 + 1", "17"},
    {In::kDet, "\"a\\tb\"", "\"a\tb\""},
    {In::kDet, "'single'", "\"single\""},
    {In::kDet, "r\"\\d+\"", "\"\\d+\""},
    {In::kDet, "\"\\u00e5\"", "\"\xc3\xa5\""},
    {In::kDet, "true", "true"},
    {In::kDet, "false", "false"},
    {In::kDet, "null", "null"},
    {In::kDet, "1 + 2 * 3", "7"},
    {In::kDet, "(1 + 2) * 3", "9"},
    {In::kDet, "7 / 2", "3"},
    {In::kDet, "-7 / 2", "-3"},
    {In::kDet, "7 % 3", "1"},
    {In::kDet, "-7 % 3", "-1"},
    {In::kDet, "7.0 / 2", "3.5"},
    {In::kDet, "1 + 0.5", "1.5"},
    {In::kDet, "2 * 0.25", "0.5"},
    {In::kDet, "10 - 20", "-10"},
    {In::kDet, "3 - 1.5", "1.5"},
    {In::kDet, "-(2 + 3)", "-5"},
    {In::kDet, "- -5", "5"},
    {In::kDet, "-9223372036854775808", "-9223372036854775808"},
    {In::kDet, "9223372036854775807 + 1", "error(overflow)"},
    {In::kDet, "-9223372036854775808 - 1", "error(overflow)"},
    {In::kDet, "-(-9223372036854775808)", "error(overflow)"},
    {In::kDet, "-9223372036854775808 / -1", "error(overflow)"},
    {In::kDet, "-9223372036854775808 % -1", "error(overflow)"},
    {In::kDet, "4611686018427387904 * 2", "error(overflow)"},
    {In::kDet, "1 / 0", "error(division_by_zero)"},
    {In::kDet, "1 % 0", "error(division_by_zero)"},
    {In::kDet, "1.0 / 0.0", "error(division_by_zero)"},
    {In::kDet, "1 / 0.0", "error(division_by_zero)"},
    {In::kDet, "(1 / 0) + 1", "error(division_by_zero)"},
    {In::kDet, "1 / 0 > 1", "error(division_by_zero)"},
    {In::kDet, "(9223372036854775807 + 1) * 0", "error(overflow)"},
    // ---- comparison
    {In::kDet, "1 < 2", "true"},
    {In::kDet, "2 <= 2", "true"},
    {In::kDet, "3 > 4", "false"},
    {In::kDet, "3 >= 3.0", "true"},
    {In::kDet, "1 == 1.0", "true"},
    {In::kDet, "1 != 2", "true"},
    {In::kDet, "1.5 > 1", "true"},
    {In::kDet, "0.1 + 0.2 == 0.3", "false"},
    {In::kDet, "\"a\" < \"b\"", "true"},
    {In::kDet, "\"b\" <= \"a\"", "false"},
    {In::kDet, "\"Z\" < \"a\"", "true"},
    {In::kDet, "\"abc\" == \"abc\"", "true"},
    {In::kDet, "\"abc\" != \"abd\"", "true"},
    {In::kDet, "true == false", "false"},
    {In::kDet, "true != false", "true"},
    {In::kDet, "null == null", "true"},
    {In::kDet, "detection.observed_at < \"2027-01-01T00:00:00Z\"", "true"},
    // ---- logic
    {In::kDet, "true && false", "false"},
    {In::kDet, "true && true", "true"},
    {In::kDet, "false && true", "false"},
    {In::kDet, "true || false", "true"},
    {In::kDet, "false || false", "false"},
    {In::kDet, "!true", "false"},
    {In::kDet, "!!true", "true"},
    {In::kDet, "!(1 > 2)", "true"},
    {In::kDet, "1 < 2 && 2 < 3 || false", "true"},
    // ---- ternary
    {In::kDet, "true ? 1 : 2", "1"},
    {In::kDet, "false ? 1 : 2.5", "2.5"},
    // Typed double (an int branch, a double one): the int is promoted, as the type says.
    {In::kDet, "(true ? 1 : 2.5) / 2", "0.5"},
    {In::kDet, "1 < 2 ? \"yes\" : \"no\"", "\"yes\""},
    {In::kDet, "false ? 1 : true ? 2 : 3", "2"},
    {In::kDet, "true ? 1 : 1 / 0", "1"},
    {In::kDet, "false ? 1 / 0 : 7", "7"},
    // ---- in
    {In::kDet, "\"a\" in [\"a\", \"b\"]", "true"},
    {In::kDet, "\"c\" in [\"a\", \"b\"]", "false"},
    {In::kDet, "\"k\" in [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\", \"j\", \"k\"]", "true"},
    {In::kDet, "\"z\" in [\"a\", \"b\", \"c\", \"d\", \"e\", \"f\", \"g\", \"h\", \"i\", \"j\", \"k\"]", "false"},
    {In::kDet, "2 in [1, 2, 3]", "true"},
    {In::kDet, "2.0 in [1, 2]", "true"},
    {In::kDet, "4 in [1, 2.5]", "false"},
    {In::kDet, "5 in []", "false"},
    {In::kDet, "true in [false, true]", "true"},
    {In::kDet, "detection.type in [\"artificial_streaming\", \"ato\"]", "true"},
    {In::kDet, "detection.entity in detection.related", "false"},
    {In::kDet, "\"ip:10.1.2.3\" in detection.related", "true"},
    {In::kDet, "\"asn\" in detection.evidence", "true"},
    {In::kDet, "\"nope\" in detection.evidence", "false"},
    {In::kDet, "\"vpn\" in detection.evidence.tags", "true"},
    {In::kDet, "\"x\" in detection.evidence.tags", "false"},
    {In::kDet, "\"a\" in detection.evidence.country", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.nope in [\"a\"]", "error(missing)"},
    {In::kDet, "detection.evidence.asn in [64500, 1]", "true"},
    {In::kDet, "detection.evidence.country in [\"SE\", \"NO\"]", "true"},
    {In::kDet, "detection.evidence.asn in [\"SE\", \"NO\"]", "false"},
    {In::kDet, "detection.evidence.asn in detection.evidence", "error(type_mismatch)"},
    {In::kDet, "\"a\" in detection.evidence.nope", "error(missing)"},
    // an array with other items than strings (list<dyn>): == item by item
    {In::kDet, "3 in detection.evidence.hours", "true"},
    {In::kDet, "3.0 in detection.evidence.hours", "true"},
    {In::kDet, "4.5 in detection.evidence.hours", "true"},
    {In::kDet, "\"3\" in detection.evidence.hours", "false"},
    {In::kDet, "detection.evidence.asn in detection.evidence.hours", "false"},
    {In::kDet, "detection.evidence.geo in detection.evidence.hours", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.nope in detection.evidence.hours", "error(missing)"},
    {In::kDet, "1 / 0 in [1]", "error(division_by_zero)"},
    {In::kDet, "1 in [1 / 0, 1]", "true"},
    {In::kDet, "2 in [1 / 0, 1]", "error(division_by_zero)"},
    {In::kDet, "entity in [detection.entity, \"x\"]", "true"},
    // ---- detection fields
    {In::kDet, "detection.id", "\"d1\""},
    {In::kDet, "detection.source", "\"bot-v3\""},
    {In::kDet, "detection.type", "\"artificial_streaming\""},
    {In::kDet, "detection.score", "0.97"},
    {In::kDet, "detection.observed_at", "\"2026-11-28T12:00:00Z\""},
    {In::kDet, "detection.entity", "\"user:u1\""},
    {In::kDet, "detection.related", "[\"device:d1\", \"ip:10.1.2.3\"]"},
    {In::kDet, "entity", "\"user:u1\""},
    {In::kDet, "entity.type", "\"user\""},
    {In::kDet, "entity.id", "\"u1\""},
    {In::kDet, "entity.type == \"user\" && entity.id == \"u1\"", "true"},
    {In::kDet, "detection.related[1]", "\"ip:10.1.2.3\""},
    {In::kDet, "detection.related[2]", "error(missing)"},
    {In::kDet, "detection.related[-1]", "error(missing)"},
    {In::kDet, "detection.score >= 0.9", "true"},
    {In::kDet, "detection.score > 0.97", "false"},
    {In::kDet, "detection.score >= 1", "false"},
    {In::kDet, "detection.score * 100 > 96", "true"},
    {In::kDet, "detection.type == \"artificial_streaming\" && detection.score >= 0.9", "true"},
    {In::kDet, "detection.type != \"artificial_streaming\"", "false"},
    {In::kDet, "\"artificial_streaming\" == detection.type", "true"},
    // ---- evidence (dyn)
    {In::kDet, "detection.evidence.asn", "64500"},
    {In::kDet, "detection.evidence.country", "\"SE\""},
    {In::kDet, "detection.evidence[\"country\"]", "\"SE\""},
    {In::kDet, "detection.evidence.geo.city", "\"Ume\xc3\xa5\""},
    {In::kDet, "detection.evidence.geo[\"asn\"]", "1"},
    {In::kDet, "detection.evidence.geo", "{\"city\": \"Ume\xc3\xa5\", \"asn\": 1}"},
    {In::kDet, "detection.evidence.nothing", "null"},
    {In::kDet, "detection.evidence.flag", "true"},
    {In::kDet, "detection.evidence.ratio", "0.5"},
    {In::kDet, "detection.evidence.nope", "error(missing)"},
    {In::kDet, "detection.evidence.geo.nope", "error(missing)"},
    {In::kDet, "detection.evidence.nope.deeper", "error(missing)"},
    {In::kDet, "detection.evidence.country.x", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.tags[0]", "\"vpn\""},
    {In::kDet, "detection.evidence.tags[5]", "error(missing)"},
    {In::kDet, "detection.evidence.tags[\"a\"]", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.hours[1]", "4.5"},
    {In::kDet, "detection.evidence.hours[2].asn", "1"},
    {In::kDet, "detection.evidence.hours[3]", "error(missing)"},
    {In::kDet, "detection.evidence.hours[\"a\"]", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.hours", "[3, 4.5, {\"city\": \"Ume\xc3\xa5\", \"asn\": 1}]"},
    {In::kDet, "detection.evidence.country[0]", "error(type_mismatch)"},
    {In::kDet, "detection.evidence[detection.evidence.country]", "error(missing)"},
    {In::kDet, "detection.evidence.asn == 64500", "true"},
    {In::kDet, "detection.evidence.asn == 64500.0", "true"},
    {In::kDet, "detection.evidence.asn > 60000", "true"},
    {In::kDet, "detection.evidence.asn + 1", "64501"},
    {In::kDet, "detection.evidence.ratio * 2", "1.0"},
    {In::kDet, "detection.evidence.asn % 7", "2"},
    {In::kDet, "detection.evidence.ms > 10", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.ms + 1", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.ms == 12", "false"},
    {In::kDet, "detection.evidence.ms != 12", "true"},
    {In::kDet, "detection.evidence.ms == \"12\"", "true"},
    {In::kDet, "detection.evidence.nothing == null", "true"},
    {In::kDet, "detection.evidence.country == null", "false"},
    {In::kDet, "detection.evidence.nope == null", "error(missing)"},
    {In::kDet, "detection.evidence.flag && true", "true"},
    {In::kDet, "detection.evidence.country && true", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.country && false", "false"},
    {In::kDet, "!detection.evidence.flag", "false"},
    {In::kDet, "!detection.evidence.country", "error(type_mismatch)"},
    {In::kDet, "-detection.evidence.asn", "-64500"},
    {In::kDet, "-detection.evidence.ratio", "-0.5"},
    {In::kDet, "-detection.evidence.country", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.big + 1", "error(overflow)"},
    {In::kDet, "10 / detection.evidence.zero", "error(division_by_zero)"},
    {In::kDet, "10 % detection.evidence.zero", "error(division_by_zero)"},
    {In::kDet, "detection.evidence.country < \"Z\"", "true"},
    {In::kDet, "detection.evidence.country < 5", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.geo == detection.evidence.geo", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.tags == detection.evidence.tags", "true"},
    {In::kDet, "detection.evidence.hours == detection.evidence.hours", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.hours == detection.evidence.tags", "false"},
    {In::kDet, "detection.evidence.hours < 1", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.flag ? \"on\" : \"off\"", "\"on\""},
    {In::kDet, "detection.evidence.country ? 1 : 2", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.nope ? 1 : 2", "error(missing)"},
    // ---- error propagation through && / || (commutative, CEL)
    {In::kDet, "detection.evidence.nope == 1 && detection.score > 0.9", "error(missing)"},
    {In::kDet, "detection.evidence.nope == 1 && detection.score < 0.5", "false"},
    {In::kDet, "detection.score < 0.5 && detection.evidence.nope == 1", "false"},
    {In::kDet, "detection.evidence.nope == 1 || detection.score > 0.9", "true"},
    {In::kDet, "detection.evidence.nope == 1 || detection.score < 0.5", "error(missing)"},
    {In::kDet, "1 / 0 == 1 || 1 % 0 == 0", "error(division_by_zero)"},
    {In::kDet, "1 / 0 == 1 && 9223372036854775807 + 1 > 0", "error(division_by_zero)"},
    {In::kDet, "!(detection.evidence.nope == 1)", "error(missing)"},
    {In::kDet, "!(detection.evidence.nope == 1) || true", "true"},
    // ---- sparse detection: absent score and observed_at, empty evidence
    {In::kSparse, "detection.score", "error(missing)"},
    {In::kSparse, "detection.score > 0.5", "error(missing)"},
    {In::kSparse, "detection.observed_at", "error(missing)"},
    {In::kSparse, "detection.observed_at == \"\"", "error(missing)"},
    {In::kSparse, "has(detection.score)", "false"},
    {In::kSparse, "has(detection.observed_at)", "false"},
    {In::kSparse, "has(detection.id)", "true"},
    {In::kSparse, "detection.score > 0.5 || true", "true"},
    {In::kSparse, "true || detection.score > 0.5", "true"},
    {In::kSparse, "detection.score > 0.5 && false", "false"},
    {In::kSparse, "false && detection.score > 0.5", "false"},
    {In::kSparse, "detection.score > 0.5 && true", "error(missing)"},
    {In::kSparse, "detection.score > 0.5 || false", "error(missing)"},
    {In::kSparse, "!(detection.score > 0.5)", "error(missing)"},
    {In::kSparse, "detection.score > 0.5 ? 1 : 2", "error(missing)"},
    {In::kSparse, "true ? 1 : detection.score", "1.0"},  // typed double: promoted
    {In::kSparse, "detection.score == detection.score", "error(missing)"},
    {In::kSparse, "has(detection.score) && detection.score > 0.5", "false"},
    {In::kSparse, "!has(detection.score) || detection.score > 0.5", "true"},
    {In::kSparse, "size(detection.related)", "0"},
    {In::kSparse, "size(detection.evidence)", "0"},
    {In::kSparse, "detection.evidence.x == 1", "error(missing)"},
    {In::kSparse, "has(detection.evidence.x)", "false"},
    {In::kSparse, "detection.type in [\"ato\"]", "true"},
    {In::kSparse, "entity.type", "\"user\""},
    // ---- has()
    {In::kDet, "has(detection.evidence.asn)", "true"},
    {In::kDet, "has(detection.evidence.nope)", "false"},
    {In::kDet, "has(detection.evidence.geo.city)", "true"},
    {In::kDet, "has(detection.evidence.geo.zip)", "false"},
    {In::kDet, "has(detection.evidence.nope.x)", "false"},
    {In::kDet, "has(detection.evidence.country.x)", "false"},
    {In::kDet, "has(detection.evidence[\"asn\"])", "true"},
    {In::kDet, "has(detection.evidence.nothing)", "true"},
    {In::kDet, "has(detection.score)", "true"},
    {In::kDet, "has(detection.related)", "true"},
    {In::kDet, "has(entity.type)", "true"},
    // ---- size()
    {In::kDet, "size(\"abc\")", "3"},
    {In::kDet, "size(\"Ume\xc3\xa5\")", "4"},
    {In::kDet, "\"abc\".size()", "3"},
    {In::kDet, "size(\"\")", "0"},
    {In::kDet, "size([1, 2, 3])", "3"},
    {In::kDet, "size(detection.related)", "2"},
    {In::kDet, "detection.related.size()", "2"},
    {In::kDet, "size(detection.evidence)", "12"},
    {In::kDet, "size(detection.evidence.tags)", "2"},
    {In::kDet, "size(detection.evidence.hours)", "3"},
    {In::kDet, "size(detection.evidence.geo)", "2"},
    {In::kDet, "size(detection.evidence.country)", "2"},
    {In::kDet, "size(detection.evidence.asn)", "error(type_mismatch)"},
    {In::kDet, "size(detection.evidence.nope)", "error(missing)"},
    // ---- string methods
    {In::kDet, "detection.type.startsWith(\"artificial\")", "true"},
    {In::kDet, "detection.type.startsWith(\"x\")", "false"},
    {In::kDet, "detection.type.endsWith(\"streaming\")", "true"},
    {In::kDet, "detection.type.contains(\"_str\")", "true"},
    {In::kDet, "\"\".startsWith(\"\")", "true"},
    {In::kDet, "\"ab\".endsWith(\"abc\")", "false"},
    {In::kDet, "\"ab\".contains(\"\")", "true"},
    {In::kDet, "detection.evidence.country.startsWith(\"S\")", "true"},
    {In::kDet, "detection.evidence.asn.startsWith(\"6\")", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.nope.contains(\"a\")", "error(missing)"},
    {In::kDet, "detection.type.contains(detection.evidence.country)", "false"},
    {In::kDet, "detection.entity.startsWith(entity.type)", "true"},
    {In::kDet, "detection.type.matches(\"^art.*ing$\")", "true"},
    {In::kDet, "detection.type.matches(\"stream\")", "true"},
    {In::kDet, "detection.type.matches(\"^stream\")", "false"},
    {In::kDet, "matches(detection.id, \"^d[0-9]+$\")", "true"},
    {In::kDet, "detection.id.matches(r\"\\d\")", "true"},
    {In::kDet, "entity.matches(\"^device:\")", "false"},
    {In::kDet, "detection.evidence.asn.matches(\"1\")", "error(type_mismatch)"},
    {In::kDet, "detection.evidence.geo.city.matches(\"^Ume\")", "true"},
    // ---- in_cidr()
    {In::kDet, "in_cidr(\"10.1.2.3\", \"10.0.0.0/8\")", "true"},
    {In::kDet, "in_cidr(\"ip:10.1.2.3\", \"10.0.0.0/8\")", "true"},
    {In::kDet, "in_cidr(\"11.1.2.3\", \"10.0.0.0/8\")", "false"},
    {In::kDet, "in_cidr(\"2001:db8::1\", \"2001:db8::/32\")", "true"},
    {In::kDet, "in_cidr(\"ip:2001:db8::1\", \"2001:db8::/32\")", "true"},
    {In::kDet, "in_cidr(\"2001:db9::1\", \"2001:db8::/32\")", "false"},
    {In::kDet, "in_cidr(\"10.1.2.3\", \"2001:db8::/32\")", "false"},
    {In::kDet, "in_cidr(\"2001:db8::1\", \"10.0.0.0/8\")", "false"},
    {In::kDet, "in_cidr(\"::ffff:10.1.2.3\", \"10.0.0.0/8\")", "true"},
    {In::kDet, "in_cidr(\"10.1.2.3\", \"0.0.0.0/0\")", "true"},
    {In::kDet, "in_cidr(\"10.1.2.3\", \"10.1.2.3\")", "true"},
    {In::kDet, "in_cidr(\"10.1.2.4\", \"10.1.2.3/32\")", "false"},
    {In::kDet, "in_cidr(\"203.0.113.200\", \"203.0.113.128/25\")", "true"},
    {In::kDet, "in_cidr(\"203.0.113.100\", \"203.0.113.128/25\")", "false"},
    {In::kDet, "in_cidr(\"10.1.2.3\", \"cidr:10.0.0.0/8\")", "true"},
    {In::kDet, "in_cidr(\"not-an-ip\", \"10.0.0.0/8\")", "error(invalid_argument)"},
    {In::kDet, "in_cidr(\"10.1.2\", \"10.0.0.0/8\")", "error(invalid_argument)"},
    {In::kDet, "in_cidr(detection.evidence.ip, \"203.0.113.0/24\")", "true"},
    {In::kDet, "in_cidr(detection.evidence.nope, \"10.0.0.0/8\")", "error(missing)"},
    {In::kDet, "in_cidr(detection.evidence.asn, \"10.0.0.0/8\")", "error(type_mismatch)"},
    {In::kDet, "in_cidr(detection.related[1], \"10.0.0.0/8\")", "true"},
    // ---- environment functions
    {In::kEvent, "count(\"plays\", entity, \"1h\")", "301"},
    {In::kEvent, "count(\"plays\", entity, \"60m\")", "301"},
    {In::kEvent, "count(\"plays\", entity, \"1m\")", "7"},
    {In::kEvent, "count(\"plays\", entity, \"24h\")", "1000"},
    {In::kEvent, "count(\"plays\", \"user:nobody\", \"1h\")", "0"},
    {In::kEvent, "count(\"plays\", entity, \"1h\") > 300 && event.attrs.ms_played < 35000", "true"},
    {In::kEvent, "distinct(\"accounts_per_ip\", event.attrs.ip, \"1h\") > 20", "true"},
    {In::kEvent, "distinct(\"tracks_per_ip\", event.attrs.ip, \"1h\")", "3"},
    {In::kEvent, "count(\"plays\", event.attrs.nope, \"1h\")", "error(missing)"},
    // A number or a boolean keys a counter by its text, as POST /v1/events counts it.
    {In::kEvent, "count(\"plays\", event.attrs.ms_played, \"1h\")", "0"},
    {In::kEvent, "count(\"plays\", 7, \"1h\")", "0"},
    {In::kEvent, "count(\"plays\", entity, \"1h\") / 0", "error(division_by_zero)"},
    {In::kDet, "in_list(\"verified_artists\", detection.entity)", "false"},
    {In::kDet, "in_list(\"protected\", entity)", "true"},
    {In::kDet, "in_list(\"verified_artists\", \"artist:42\")", "true"},
    {In::kDet, "in_list(\"protected\", detection.evidence.nope)", "error(missing)"},
    {In::kDet, "active(entity, \"flag\")", "true"},
    {In::kDet, "active(entity, \"suspend\")", "false"},
    {In::kDet, "active(detection.related[0], \"flag\")", "false"},
    {In::kDet, "prior(entity, \"exclude_royalties\", \"90d\")", "2"},
    {In::kDet, "prior(entity, \"exclude_royalties\", \"1d\")", "1"},
    {In::kDet, "prior(entity, \"exclude_royalties\", \"90d\") >= 2 ? \"suspend\" : \"exclude_royalties\"", "\"suspend\""},
    {In::kDet, "prior(detection.evidence.nope, \"flag\", \"1d\")", "error(missing)"},
    {In::kDet, "detection.type == \"artificial_streaming\" && detection.score >= 0.9 && !in_list(\"verified_artists\", detection.entity)", "true"},
    // ---- event fields
    {In::kEvent, "event.type", "\"play\""},
    {In::kEvent, "event.at", "\"2026-11-28T12:00:01Z\""},
    {In::kEvent, "event.entity", "\"user:u2\""},
    {In::kEvent, "entity", "\"user:u2\""},
    {In::kEvent, "entity.id", "\"u2\""},
    {In::kEvent, "event.attrs.ms_played", "31000"},
    {In::kEvent, "event.attrs.ms_played < 35000", "true"},
    {In::kEvent, "event.attrs.ms_played / 1000.0", "31.0"},
    {In::kEvent, "event.attrs.track.startsWith(\"track:\")", "true"},
    {In::kEvent, "event.attrs[\"device\"]", "\"device:d1\""},
    {In::kEvent, "has(event.attrs.country)", "true"},
    {In::kEvent, "has(event.attrs.referrer)", "false"},
    {In::kEvent, "event.attrs.country in [\"NO\", \"SE\"]", "true"},
    {In::kEvent, "in_cidr(event.attrs.ip, \"203.0.113.0/24\")", "true"},
    {In::kEvent, "event.attrs.referrer == \"x\" || event.type == \"play\"", "true"},
    // ---- compile errors: names, with suggestions
    {In::kDet, "detection.scor > 0.9", "ERR 1:11: unknown field detection.scor — did you mean detection.score?"},
    {In::kDet, "detecton.score > 0.9", "ERR 1:1: unknown variable detecton — did you mean detection?"},
    {In::kDet, "detection.bogusfield", "ERR 1:11: unknown field detection.bogusfield (fields of detection: id, source, type, score, observed_at, entity, related, evidence)"},
    {In::kDet, "score > 0.9", "ERR 1:1: unknown variable score — did you mean detection.score?"},
    {In::kDet, "foo == 1", "ERR 1:1: unknown variable foo (available: detection.*, entity)"},
    {In::kDet, "entiy == \"x\"", "ERR 1:1: unknown variable entiy — did you mean entity?"},
    {In::kDet, "entity.name", "ERR 1:8: unknown field entity.name (fields of entity: type, id)"},
    {In::kDet, "event.type == \"play\"", "ERR 1:1: event is not available in a detection policy (use detection.* or entity)"},
    {In::kEvent, "detection.score > 0.5", "ERR 1:1: detection is not available in an event policy (use event.* or entity)"},
    {In::kEvent, "event.atrs.ip", "ERR 1:7: unknown field event.atrs — did you mean event.attrs?"},
    {In::kDet, "detection", "ERR 1:1: detection is not a value; select one of its fields, e.g. detection.type"},
    {In::kDet, "detection.scor > 0.9 && detection.typ == \"x\"", "ERR 1:11: unknown field detection.scor — did you mean detection.score? | 1:35: unknown field detection.typ — did you mean detection.type?"},
    {In::kDet, "detection.type == \"x\" &&\n  detection.scor > 1", "ERR 2:13: unknown field detection.scor — did you mean detection.score?"},
    // ---- compile errors: types
    {In::kDet, "detection.score > \"high\"", "ERR 1:17: cannot compare double with string"},
    {In::kDet, "detection.type == 1", "ERR 1:16: cannot compare string with int"},
    {In::kDet, "detection.type == null", "ERR 1:16: cannot compare string with null — use has() to test whether a field is present"},
    {In::kDet, "detection.type && true", "ERR 1:11: operator && expects bool operands, got string"},
    {In::kDet, "1 || 2", "ERR 1:1: operator || expects bool operands, got int | 1:6: operator || expects bool operands, got int"},
    {In::kDet, "1 + \"a\"", "ERR 1:5: operator + expects numbers, got string (string concatenation is not supported)"},
    {In::kDet, "\"a\" + \"b\"", "ERR 1:1: operator + expects numbers, got string (string concatenation is not supported) | 1:7: operator + expects numbers, got string (string concatenation is not supported)"},
    {In::kDet, "true * 2", "ERR 1:1: operator * expects numbers, got bool"},
    {In::kDet, "1.5 % 2", "ERR 1:5: operator % expects int operands, got double"},
    {In::kDet, "!1", "ERR 1:1: operator ! expects a bool, got int"},
    {In::kDet, "-\"a\"", "ERR 1:1: unary - expects a number, got string"},
    {In::kDet, "true ? 1 : \"a\"", "ERR 1:6: branches of ?: have different types int and string"},
    {In::kDet, "1 ? 2 : 3", "ERR 1:1: condition of ?: must be a bool, got int"},
    {In::kDet, "[1, \"a\"]", "ERR 1:1: list literals are only supported on the right of in and in size() | 1:5: list elements must have one type: int and string"},
    {In::kDet, "1 in [\"a\"]", "ERR 1:3: cannot look for int in list<string>"},
    {In::kDet, "1 in 2", "ERR 1:6: right side of in must be a list or a map, got int"},
    {In::kDet, "detection.related in [\"a\"]", "ERR 1:11: left side of in must be a single value, got list<string>"},
    {In::kDet, "\"a\" in [[\"a\"]]", "ERR 1:9: list literals are only supported on the right of in and in size()"},
    {In::kDet, "detection.type < true", "ERR 1:16: operator < is not defined for bool"},
    {In::kDet, "1 < 2 < 3", "ERR 1:7: operator < is not defined for bool"},
    {In::kDet, "null < 1", "ERR 1:6: operator < is not defined for null"},
    {In::kDet, "detection.type < 1", "ERR 1:16: cannot compare string with int"},
    {In::kDet, "detection.evidence == detection.evidence", "ERR 1:20: values of type map cannot be compared"},
    {In::kDet, "detection.type.x", "ERR 1:16: cannot select field x of a string"},
    {In::kDet, "detection.type[0]", "ERR 1:15: cannot index a string"},
    {In::kDet, "detection.related[\"a\"]", "ERR 1:19: list index must be an int, got string"},
    {In::kDet, "detection.evidence[1]", "ERR 1:20: map keys are strings, got int"},
    // ---- compile errors: functions and methods
    {In::kDet, "sise(detection.type)", "ERR 1:1: unknown function sise — did you mean size?"},
    {In::kDet, "frobnicate(1)", "ERR 1:1: unknown function frobnicate"},
    {In::kDet, "startsWith(detection.type, \"a\")", "ERR 1:1: startsWith is a method — write x.startsWith(...)"},
    {In::kDet, "detection.type.startswith(\"a\")", "ERR 1:16: unknown method startswith — did you mean startsWith?"},
    {In::kDet, "detection.type.in_cidr(\"10.0.0.0/8\")", "ERR 1:16: in_cidr is a function, not a method — write in_cidr(...)"},
    {In::kDet, "detection.type.startsWith(1)", "ERR 1:27: the argument of startsWith() must be a string, got int"},
    {In::kDet, "detection.type.contains()", "ERR 1:16: contains() takes 1 argument, got 0"},
    {In::kDet, "detection.type.matches(detection.id)", "ERR 1:34: the pattern of matches() must be a string literal"},
    {In::kDet, "detection.type.matches(\"(\")", "ERR 1:24: invalid regular expression: missing ): ("},
    {In::kDet, "matches(detection.type)", "ERR 1:1: matches() takes 2 arguments, got 1 — usage: matches(text, \"regex\")"},
    {In::kDet, "in_cidr(\"1.2.3.4\", \"10.0.0.1/8\")", "ERR 1:20: network \"10.0.0.1/8\" has host bits set — did you mean \"10.0.0.0/8\"?"},
    {In::kDet, "in_cidr(\"1.2.3.4\", \"10.0.0.0/33\")", "ERR 1:20: invalid prefix length in \"10.0.0.0/33\" (0-32)"},
    {In::kDet, "in_cidr(\"1.2.3.4\", \"banana\")", "ERR 1:20: invalid network \"banana\" — expected e.g. \"10.0.0.0/8\""},
    {In::kDet, "in_cidr(\"1.2.3.4\", detection.type)", "ERR 1:30: the network of in_cidr() must be a string literal"},
    {In::kDet, "in_cidr(detection.score, \"10.0.0.0/8\")", "ERR 1:19: the address of in_cidr() must be a string, got double"},
    {In::kDet, "in_cidr(\"1.2.3.4\")", "ERR 1:1: in_cidr() takes 2 arguments, got 1 — usage: in_cidr(ip, \"10.0.0.0/8\")"},
    {In::kEvent, "count(\"plyas\", entity, \"1h\") > 3", "ERR 1:7: unknown counter plyas — did you mean plays?"},
    {In::kEvent, "count(\"views\", entity, \"1h\") > 3", "ERR 1:7: unknown counter views (declared: plays, tracks_per_ip, accounts_per_ip)"},
    {In::kEvent, "count(\"plays\", entity, \"2h\")", "ERR 1:24: counter plays has no window 2h (declared: 1m, 1h, 24h)"},
    {In::kEvent, "count(\"plays\", entity, \"soon\")", "ERR 1:24: invalid window \"soon\" — expected a duration such as \"1h\" or \"30d\""},
    {In::kEvent, "count(\"tracks_per_ip\", event.attrs.ip, \"1h\")", "ERR 1:7: counter tracks_per_ip counts distinct values — use distinct()"},
    {In::kEvent, "distinct(\"plays\", entity, \"1h\")", "ERR 1:10: counter plays has no distinct: field — use count()"},
    {In::kEvent, "count(event.type, entity, \"1h\")", "ERR 1:13: the counter name must be a string literal"},
    {In::kEvent, "count(\"plays\", event.attrs, \"1h\")", "ERR 1:22: the counter key must be a string, a number or a boolean, got map"},
    {In::kEvent, "count(\"plays\", entity)", "ERR 1:1: count() takes 3 arguments, got 2 — usage: count(\"counter\", key, \"1h\")"},
    {In::kDet, "in_list(\"verifed_artists\", entity)", "ERR 1:9: unknown list verifed_artists — did you mean verified_artists?"},
    {In::kDet, "in_list(\"vip\", entity)", "ERR 1:9: unknown list vip (declared: verified_artists, protected)"},
    {In::kDet, "in_list(\"protected\", 42)", "ERR 1:22: the entity must be a string, got int"},
    {In::kDet, "active(entity, \"suspnd\")", "ERR 1:16: unknown action suspnd — did you mean suspend?"},
    {In::kDet, "prior(entity, \"suspend\", \"forever\")", "ERR 1:26: invalid window \"forever\" — expected a duration such as \"1h\" or \"30d\""},
    {In::kDet, "has(detection)", "ERR 1:5: has() takes a field selection such as has(detection.evidence.asn)"},
    {In::kDet, "has(1)", "ERR 1:5: has() takes a field selection such as has(detection.evidence.asn)"},
    {In::kDet, "has(detection.related[0])", "ERR 1:22: has() takes a field selection, not a list index"},
    {In::kDet, "size(1)", "ERR 1:6: size() expects a string, list or map, got int"},
    {In::kDet, "size(1, 2)", "ERR 1:1: size() takes 1 argument, got 2 — usage: size(x)"},
    // ---- compile errors: syntax and lexing
    {In::kDet, "", "ERR 1:1: empty expression"},
    {In::kDet, "{}", "ERR 1:1: map literals are not supported"},
    {In::kDet, "detection.type == ", "ERR 1:19: unexpected end of expression"},
    {In::kDet, "1 = 1", "ERR 1:3: unexpected '=' — use == to compare"},
    {In::kDet, "x > 1h", "ERR 1:5: malformed number 1h — write durations as strings, e.g. \"1h\""},
    {In::kDet, "\"abc", "ERR 1:1: unterminated string literal"},
    {In::kDet, "detection.type == \"a\" detection.score > 1", "ERR 1:23: unexpected identifier 'detection' after a complete expression — missing && or ||?"},
    {In::kDet, "1u", "ERR 1:1: unsigned integer literals are not supported"},
    {In::kDet, "b\"bytes\"", "ERR 1:1: bytes literals are not supported"},
};
// clang-format on

class FakeEnvironment : public Environment {
 public:
  int64_t Count(std::string_view counter, std::string_view key, absl::Duration w) override {
    ++calls;
    if (counter != "plays") return -1;
    if (key == "user:u2") {
      if (w == absl::Minutes(1)) return 7;
      if (w == absl::Hours(24)) return 1000;
      return 301;
    }
    return key == "user:u1" ? 5 : 0;
  }
  int64_t Distinct(std::string_view counter, std::string_view key, absl::Duration) override {
    ++calls;
    if (key != "ip:203.0.113.7") return 0;
    return counter == "accounts_per_ip" ? 25 : 3;
  }
  bool InList(std::string_view list, std::string_view entity) override {
    ++calls;
    return (list == "verified_artists" && entity == "artist:42") ||
           (list == "protected" && entity == "user:u1");
  }
  bool Active(std::string_view entity, std::string_view action) override {
    ++calls;
    return entity == "user:u1" && action == "flag";
  }
  int64_t Prior(std::string_view entity, std::string_view action, absl::Duration w) override {
    ++calls;
    if (entity != "user:u1" || action != "exclude_royalties") return 0;
    return w >= absl::Hours(24 * 30) ? 2 : 1;
  }
  int calls = 0;
};

struct Fixture {
  Fixture() {
    geo_entries = {MapEntry{"city", Value::String("Ume\xc3\xa5")}, MapEntry{"asn", Value::Int(1)}};
    geo = MapView{geo_entries.data(), geo_entries.size()};
    evidence_entries = {
        MapEntry{"asn", Value::Int(64500)},
        MapEntry{"country", Value::String("SE")},
        MapEntry{"ratio", Value::Double(0.5)},
        MapEntry{"tags", Value::List(tags, 2)},
        MapEntry{"geo", Value::Map(&geo)},
        MapEntry{"flag", Value::Bool(true)},
        MapEntry{"nothing", Value::Null()},
        MapEntry{"ms", Value::String("12")},
        MapEntry{"zero", Value::Int(0)},
        MapEntry{"big", Value::Int(INT64_MAX)},
        MapEntry{"ip", Value::String("203.0.113.9")},
        MapEntry{"hours", Value::Array(hours, 3)},
    };
    det.id = "d1";
    det.source = "bot-v3";
    det.type = "artificial_streaming";
    det.score = 0.97;
    det.observed_at = "2026-11-28T12:00:00Z";
    det.entity = "user:u1";
    det.related = absl::MakeConstSpan(related, 2);
    det.evidence = MapView{evidence_entries.data(), evidence_entries.size()};

    sparse.id = "d2";
    sparse.source = "s";
    sparse.type = "ato";
    sparse.entity = "user:u9";

    attrs_entries = {
        MapEntry{"ip", Value::String("ip:203.0.113.7")},
        MapEntry{"track", Value::String("track:t1")},
        MapEntry{"ms_played", Value::Int(31000)},
        MapEntry{"device", Value::String("device:d1")},
        MapEntry{"country", Value::String("NO")},
    };
    event.type = "play";
    event.at = "2026-11-28T12:00:01Z";
    event.entity = "user:u2";
    event.attrs = MapView{attrs_entries.data(), attrs_entries.size()};

    decls.counters = {{"plays", {"1m", "1h", "24h"}, false},
                      {"tracks_per_ip", {"1h"}, true},
                      {"accounts_per_ip", {"1h"}, true}};
    decls.lists = {"verified_artists", "protected"};
    decls.actions = {"exclude_royalties", "challenge", "suspend", "flag"};
  }

  Input InputFor(In in) const {
    switch (in) {
      case In::kDet:
        return Input::ForDetection(det);
      case In::kSparse:
        return Input::ForDetection(sparse);
      case In::kEvent:
        return Input::ForEvent(event);
    }
    return {};
  }
  static Schema SchemaFor(In in) {
    return in == In::kEvent ? Schema::Event() : Schema::Detection();
  }

  std::string_view tags[2] = {"vpn", "dc"};
  Value hours[3] = {Value::Int(3), Value::Double(4.5), Value::Map(&geo)};
  std::string_view related[2] = {"device:d1", "ip:10.1.2.3"};
  std::vector<MapEntry> geo_entries;
  MapView geo;
  std::vector<MapEntry> evidence_entries;
  std::vector<MapEntry> attrs_entries;
  DetectionInput det;
  DetectionInput sparse;
  EventInput event;
  Declarations decls;
};

std::string RunCase(const Fixture& fx, const Case& c, FakeEnvironment& env) {
  Compilation comp = CompileExpressionWithDiagnostics(c.expr, Fixture::SchemaFor(c.in), fx.decls);
  if (comp.program == nullptr) {
    std::string out = "ERR ";
    for (size_t i = 0; i < comp.errors.size(); ++i) {
      if (i > 0) out += " | ";
      out += comp.errors[i].ToString();
    }
    return out;
  }
  Input input = fx.InputFor(c.in);
  Value v = comp.program->Evaluate(input, env);
  // A bool-typed program must agree with Eval()'s outcome.
  if (comp.program->type_name() == "bool") {
    Result r = comp.program->Eval(input, env);
    if (v.is_error()) {
      EXPECT_EQ(r.outcome, Outcome::kError) << c.expr;
      EXPECT_EQ(r.error, v.error()) << c.expr;
    } else {
      EXPECT_EQ(r.outcome, v.bool_value() ? Outcome::kTrue : Outcome::kFalse) << c.expr;
    }
  }
  return v.DebugString();
}

class ConformanceTest : public ::testing::TestWithParam<Case> {};

TEST_P(ConformanceTest, Case) {
  static const Fixture* fx = new Fixture();
  FakeEnvironment env;
  EXPECT_EQ(RunCase(*fx, GetParam(), env), GetParam().want) << "expression: " << GetParam().expr;
}

INSTANTIATE_TEST_SUITE_P(All, ConformanceTest, ::testing::ValuesIn(kCases));

TEST(ConformanceCount, AtLeast200Cases) { EXPECT_GE(std::size(kCases), 200u); }

// ---- The public API around the cases.

TEST(CompileTest, WhenMustBeBool) {
  Fixture fx;
  Compilation c = CompileWithDiagnostics("  detection.score", Schema::Detection(), fx.decls);
  ASSERT_EQ(c.errors.size(), 1u);
  EXPECT_EQ(c.errors[0].ToString(), "1:3: condition must be a bool, got double");
  EXPECT_EQ(c.program, nullptr);
  // dyn is accepted and checked at run time.
  c = CompileWithDiagnostics("detection.evidence.flag", Schema::Detection(), fx.decls);
  ASSERT_NE(c.program, nullptr);
  FakeEnvironment env;
  EXPECT_EQ(c.program->Eval(fx.InputFor(In::kDet), env).outcome, Outcome::kTrue);
  c = CompileWithDiagnostics("detection.evidence.country", Schema::Detection(), fx.decls);
  ASSERT_NE(c.program, nullptr);
  Result r = c.program->Eval(fx.InputFor(In::kDet), env);
  EXPECT_EQ(r.outcome, Outcome::kError);
  EXPECT_EQ(r.error, EvalError::kTypeMismatch);
  EXPECT_FALSE(r.matched());
}

TEST(CompileTest, BasePositionShiftsDiagnostics) {
  Fixture fx;
  Position base{.line = 12, .column = 11, .continuation_indent = 4};
  Compilation c = CompileWithDiagnostics("detection.scor > 1 &&\n  detection.tpye == \"x\"",
                                         Schema::Detection(), fx.decls, base);
  ASSERT_EQ(c.errors.size(), 2u);
  EXPECT_EQ(c.errors[0].ToString(),
            "12:21: unknown field detection.scor — did you mean detection.score?");
  EXPECT_EQ(c.errors[1].ToString(),
            "13:17: unknown field detection.tpye — did you mean detection.type?");
}

TEST(CompileTest, StatusOrJoinsAllErrors) {
  Fixture fx;
  auto p = Compile("detection.scor > 1 || foo", Schema::Detection(), fx.decls);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.status().message(),
            "1:11: unknown field detection.scor — did you mean detection.score?\n"
            "1:23: unknown variable foo (available: detection.*, entity)");
  auto ok = Compile("detection.score > 0.5", Schema::Detection(), fx.decls);
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ((*ok)->type_name(), "bool");
}

TEST(CompileTest, TooLongSourceIsRejected) {
  Fixture fx;
  std::string big(kMaxSourceBytes + 1, ' ');
  big += "true";
  Compilation c = CompileWithDiagnostics(big, Schema::Detection(), fx.decls);
  ASSERT_EQ(c.errors.size(), 1u);
  EXPECT_NE(c.errors[0].message.find("longer than"), std::string::npos);
}

TEST(CompileTest, DetectionTypeGuard) {
  Fixture fx;
  auto types = [&](const char* src) -> std::string {
    auto p = Compile(src, Schema::Detection(), fx.decls);
    EXPECT_TRUE(p.ok()) << p.status();
    if (!p.ok() || !(*p)->detection_types().has_value()) return "none";
    std::string out;
    for (const auto& t : *(*p)->detection_types()) out += t + ";";
    return out;
  };
  EXPECT_EQ(types("detection.type == \"bot\" && detection.score > 0.5"), "bot;");
  EXPECT_EQ(types("detection.score > 0.5 && \"bot\" == detection.type"), "bot;");
  EXPECT_EQ(types("detection.type in [\"b\", \"a\", \"b\"]"), "a;b;");
  EXPECT_EQ(types("detection.type in [\"a\", \"b\"] && (detection.type == \"b\" && true)"), "b;");
  EXPECT_EQ(types("detection.type == \"a\" && detection.type == \"b\""), "");
  EXPECT_EQ(types("detection.type == \"a\" || detection.score > 0.5"), "none");
  EXPECT_EQ(types("detection.type != \"a\""), "none");
  EXPECT_EQ(types("!(detection.type == \"a\")"), "none");
  EXPECT_EQ(types("detection.score > 0.5"), "none");
}

TEST(EvalTest, MissingInputRecordIsAnError) {
  Fixture fx;
  auto p = Compile("detection.type == \"x\"", Schema::Detection(), fx.decls);
  ASSERT_TRUE(p.ok());
  FakeEnvironment env;
  Input empty;  // no detection at all
  Result r = (*p)->Eval(empty, env);
  EXPECT_EQ(r.outcome, Outcome::kError);
  EXPECT_EQ(r.error, EvalError::kMissing);
}

TEST(EvalTest, ShortCircuitSkipsEnvironmentCalls) {
  Fixture fx;
  auto p = Compile("detection.score < 0.5 && in_list(\"protected\", entity)", Schema::Detection(),
                   fx.decls);
  ASSERT_TRUE(p.ok());
  FakeEnvironment env;
  EXPECT_EQ((*p)->Eval(fx.InputFor(In::kDet), env).outcome, Outcome::kFalse);
  EXPECT_EQ(env.calls, 0);
  auto q = Compile("detection.score > 0.5 && in_list(\"protected\", entity)", Schema::Detection(),
                   fx.decls);
  ASSERT_TRUE(q.ok());
  EXPECT_EQ((*q)->Eval(fx.InputFor(In::kDet), env).outcome, Outcome::kTrue);
  EXPECT_EQ(env.calls, 1);
}

TEST(EvalTest, EmptyEnvironmentCountsNothing) {
  Fixture fx;
  auto p = Compile(
      "count(\"plays\", entity, \"1h\") == 0 && !in_list(\"protected\", entity) && "
      "!active(entity, \"flag\") && prior(entity, \"flag\", \"30d\") == 0",
      Schema::Event(), fx.decls);
  ASSERT_TRUE(p.ok()) << p.status();
  EmptyEnvironment env;
  EXPECT_TRUE((*p)->Eval(fx.InputFor(In::kEvent), env).matched());
}

TEST(EvalTest, EvaluationDoesNotAllocate) {
  Fixture fx;
  std::vector<std::shared_ptr<const Program>> programs;
  std::vector<In> inputs;
  for (const Case& c : kCases) {
    Compilation comp = CompileExpressionWithDiagnostics(c.expr, Fixture::SchemaFor(c.in), fx.decls);
    if (comp.program == nullptr) continue;
    programs.push_back(comp.program);
    inputs.push_back(c.in);
  }
  ASSERT_GT(programs.size(), 150u);
  FakeEnvironment env;
  // Warm up once: RE2 builds its DFA lazily on first use.
  for (size_t i = 0; i < programs.size(); ++i) programs[i]->Evaluate(fx.InputFor(inputs[i]), env);
  long before = g_allocations.load();
  for (size_t i = 0; i < programs.size(); ++i) programs[i]->Evaluate(fx.InputFor(inputs[i]), env);
  long after = g_allocations.load();
  EXPECT_EQ(after - before, 0);
}

TEST(EvalTest, ProgramIsSharedAcrossThreads) {
  Fixture fx;
  auto p = Compile(
      "detection.type.matches(\"^art\") && detection.score >= 0.9 && "
      "in_cidr(detection.related[1], \"10.0.0.0/8\")",
      Schema::Detection(), fx.decls);
  ASSERT_TRUE(p.ok());
  std::shared_ptr<const Program> program = *p;
  std::atomic<int> matched{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      EmptyEnvironment env;
      Input in = fx.InputFor(In::kDet);
      for (int i = 0; i < 1000; ++i) matched += program->Eval(in, env).matched();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(matched.load(), 4000);
}

}  // namespace
}  // namespace quell::policy
