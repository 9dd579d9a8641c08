#pragma once
// After login: bytes both ways between client and node until either side
// closes, the idle deadline passes, or the session is stopped.
//
// Memory while idle is what matters with tens of thousands of mostly idle
// IMAP sessions. The relay is driven by completion handlers, not a
// coroutine chain: an idle session is the session object, this small relay
// state, two pending readiness waits and one timer. Each direction waits for
// readability without a buffer, then reads into the worker's scratch buffer
// and writes straight on; only when the receiver is slow is the unwritten
// rest copied aside, and that direction reads nothing more until it is
// written (bounded buffering, as nginx does).

#include "proxy/session.hpp"

#include <memory>

namespace isthmus::proxy {

// Takes over a logged-in session (its client and node connections are
// open) and relays until the end; then the session is destroyed, which
// writes its end-of-session log line.
void start_relay(std::unique_ptr<Session> session);

}  // namespace isthmus::proxy
