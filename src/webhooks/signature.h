// Webhook signatures: X-Quell-Signature: sha256=<lowercase hex HMAC-SHA256(secret, body)>.
//
// Thread-safety: pure functions.
#ifndef QUELL_WEBHOOKS_SIGNATURE_H_
#define QUELL_WEBHOOKS_SIGNATURE_H_

#include <string>
#include <string_view>

namespace quell::webhooks {

//! Lowercase hex HMAC-SHA256 of `body` keyed with `secret`.
std::string HmacSha256Hex(std::string_view secret, std::string_view body);
//! The X-Quell-Signature header value: "sha256=" + HmacSha256Hex(secret, body).
std::string SignatureHeader(std::string_view secret, std::string_view body);
//! Constant-time check of a header value against `body`.
bool VerifySignature(std::string_view secret, std::string_view body, std::string_view header);

}  // namespace quell::webhooks

#endif  // QUELL_WEBHOOKS_SIGNATURE_H_
