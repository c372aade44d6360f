// Text helpers shared by the metrics renderer and the JSON logger: UTF-8
// repair, Prometheus escaping, JSON string escaping and number formatting.
//
// Thread-safety: pure functions.
#ifndef QUELL_OBS_INTERNAL_TEXT_H_
#define QUELL_OBS_INTERNAL_TEXT_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace quell::obs::internal {

// Appends `in` with every byte that is not part of a well-formed UTF-8
// sequence (overlong forms, surrogates and code points above U+10FFFF count as
// ill-formed) replaced by U+FFFD, one replacement per offending byte.
void AppendValidUtf8(std::string& out, std::string_view in);
bool IsValidUtf8(std::string_view in);

// Prometheus 0.0.4: label values escape \ " and newline; HELP escapes \ and
// newline. Both assume `in` is valid UTF-8.
void AppendEscapedLabelValue(std::string& out, std::string_view in);
void AppendEscapedHelp(std::string& out, std::string_view in);

// A Prometheus sample value: shortest round-trip decimal, or +Inf/-Inf/NaN.
void AppendPrometheusDouble(std::string& out, double v);

// A JSON string literal (with quotes): escapes " \ and every control
// character, and repairs invalid UTF-8 as AppendValidUtf8 does.
void AppendJsonString(std::string& out, std::string_view in);
// A JSON number (shortest round-trip); NaN and infinities become the strings
// "NaN", "+Inf", "-Inf" since JSON has no literal for them.
void AppendJsonDouble(std::string& out, double v);

void AppendUint(std::string& out, uint64_t v);
void AppendInt(std::string& out, int64_t v);

}  // namespace quell::obs::internal

#endif  // QUELL_OBS_INTERNAL_TEXT_H_
