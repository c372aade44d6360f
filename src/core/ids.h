// Identifiers: time-ordered, random, URL-safe ids ("m_01JD...") for mitigations,
// reviews, batches and keys.
//
// Thread-safety: thread-safe.
#ifndef QUELL_CORE_IDS_H_
#define QUELL_CORE_IDS_H_

#include <string>
#include <string_view>

#include "absl/time/time.h"

namespace quell::core {

// `prefix` + 26 characters of Crockford base32: 48 bits of milliseconds since the
// epoch then 80 random bits (a per-thread generator seeded from the OS), so ids sort by
// creation time and never collide in practice. Ids are not secrets: use RandomHex for those.
std::string NewId(std::string_view prefix, absl::Time now);

// Whether `id` is `prefix` + 26 characters of NewId's alphabet: for ids that come back
// from clients (pagination cursors), which must not be read as "nothing after this".
bool IsId(std::string_view id, std::string_view prefix);

// `n` random bytes from the OS CSPRNG, as lowercase hex (2n characters). For secrets.
std::string RandomHex(size_t n);

}  // namespace quell::core

#endif  // QUELL_CORE_IDS_H_
