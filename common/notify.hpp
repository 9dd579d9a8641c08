#pragma once
// systemd's service notification protocol (sd_notify(3)), written directly
// to $NOTIFY_SOCKET: no libsystemd. Without $NOTIFY_SOCKET (not started by
// systemd with Type=notify) every call does nothing.

#include <string>
#include <string_view>

namespace isthmus::notify {

// Sends one notification ("READY=1\nSTATUS=..."). False if $NOTIFY_SOCKET is
// unset or the datagram could not be sent (never fatal for the caller).
bool send(std::string_view state);

// The states Isthmus sends: READY=1 once every listener is bound and the
// directory answers (or is optional); RELOADING=1 and READY=1 around every
// reload (SIGHUP or the admin API); STOPPING=1 when a stop begins.
bool ready(std::string_view status);
bool reloading();
bool stopping(std::string_view status);
bool status(std::string_view status);

// A STATUS= value fit for one line.
std::string one_line(std::string_view text, std::size_t max_len = 200);

}  // namespace isthmus::notify
