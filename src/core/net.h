// Opening a TCP connection to HOST:PORT within a deadline, name resolution included: the
// one connect step of Quell's small HTTP clients (webhooks, OTLP export, the importer's
// and mirror's client, serve's start-up probes); and their one wait for a socket.
//
// getaddrinfo has no timeout of its own: a resolver that does not answer would hold the
// caller (a webhook delivery, an import) for as long as the system's resolver retries.
// A name that is not an address literal is resolved on a helper thread that the call
// stops waiting for at the deadline; the thread ends when the resolver answers.
//
// Thread-safety: thread-safe; each call has its own socket and resolution.
#ifndef QUELL_CORE_NET_H_
#define QUELL_CORE_NET_H_

#include <atomic>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

struct addrinfo;

namespace quell::core {

//! A connected TCP socket to `host` (a name, an IPv4 or an IPv6 literal without brackets)
//! on `port`, non-blocking and close-on-exec: every address `host` resolves to is tried in
//! order until one connects. Errors: kUnavailable ("resolve HOST: ...", or the last
//! address's "connect HOST:PORT: <reason>"), kDeadlineExceeded when `deadline` passes
//! while resolving or connecting (the message says which), kCancelled soon after *cancel
//! (may be null; e.g. set by a signal handler) is set.
absl::StatusOr<int> ConnectTcp(const std::string& host, int port, absl::Time deadline,
                               const std::atomic<bool>* cancel = nullptr);

//! Waits until `fd` is ready for `events` (poll(2) flags) or `deadline` passes, retrying
//! on EINTR: OK when ready (or in error: the next read or write says which; a deadline
//! already past still looks once), kDeadlineExceeded "timed out" once `deadline` has
//! passed ("timed out <doing>" when `doing` is given, e.g. "sending"), kUnavailable
//! "poll: <reason>". Blocks at most a minute per poll(2).
absl::Status WaitFd(int fd, short events, absl::Time deadline, std::string_view doing = "");

namespace internal {
// Test-only: the resolver names go to (getaddrinfo's signature; nullptr: getaddrinfo).
// A resolution already started keeps the one it started with.
using ResolverFn = int (*)(const char*, const char*, const addrinfo*, addrinfo**);
void SetResolverForTest(ResolverFn fn);
}  // namespace internal

}  // namespace quell::core

#endif  // QUELL_CORE_NET_H_
