// Request ids: the id an access log line, the X-Request-Id response header and every
// log line about one request share.
//
// Thread-safety: pure functions and a per-thread generator; thread-safe.
#ifndef QUELL_OBS_REQUEST_ID_H_
#define QUELL_OBS_REQUEST_ID_H_

#include <string>
#include <string_view>

namespace quell::obs {

// Longest incoming X-Request-Id accepted.
inline constexpr std::size_t kMaxRequestIdBytes = 128;

//! A new id: 16 lowercase hex characters (64 random bits). Not a secret.
std::string NewRequestId();

//! True if an incoming X-Request-Id may be reused as ours: 1..kMaxRequestIdBytes
//! characters from [A-Za-z0-9._:-] (nothing that could break a log line or a header,
//! nothing long enough to carry a payload).
bool IsSaneRequestId(std::string_view id);

//! The incoming id when sane, otherwise a new one.
std::string RequestIdFrom(std::string_view incoming);

}  // namespace quell::obs

#endif  // QUELL_OBS_REQUEST_ID_H_
