#pragma once
// Logging: spdlog, one line per event. Remote strings (login names, node
// replies, client IDs) go through sanitize() before they reach a log line.
//
// Where lines go: the configured file; else, when standard error is the
// systemd journal (a service started by systemd), the journal's native
// socket, with the key=value words of our lines (session=, user=, island=,
// node=) as the journal fields SESSION=, USER=, ISLAND=, NODE=; else
// standard error.

#include <spdlog/spdlog.h>

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace isthmus {

// Printable ASCII is kept; anything else becomes \xNN; longer input is cut
// at `max_len` and marked with "...".
std::string sanitize(std::string_view remote, std::size_t max_len = 200);

struct LogSettings {
  spdlog::level::level_enum level = spdlog::level::info;
  std::string file;  // empty: the journal when stderr is connected to it, else standard error
};

// Installs the process-wide logger. Throws std::runtime_error if the file
// cannot be opened.
void setup_logging(const LogSettings& settings);

// True when $JOURNAL_STREAM names standard error's device and inode, as
// systemd sets it for a service whose stderr goes to the journal
// (systemd.exec(5)). A stderr redirected elsewhere by the service does not
// match, and its lines stay there.
bool stderr_is_journal();

constexpr const char* kJournalSocket = "/run/systemd/journal/socket";

// A sink writing each line as one datagram of the journal's native protocol
// (systemd-journald.socket(8)): MESSAGE, PRIORITY, SYSLOG_IDENTIFIER and the
// fields of journal_fields(). Throws std::runtime_error if the socket cannot
// be reached. A line the socket refuses later goes to standard error.
std::shared_ptr<spdlog::sinks::sink> make_journal_sink(const std::string& socket_path = kJournalSocket);

// The journal fields one of our lines carries: "session=s1 login ok
// user=alice island=a node=a-left: ..." gives SESSION=s1, USER=alice,
// ISLAND=a, NODE=a-left (a trailing ':', ',' or ';' is not part of a value).
std::vector<std::pair<std::string, std::string>> journal_fields(std::string_view line);

// The native protocol's encoding of fields (exposed for tests).
std::string journal_datagram(const std::vector<std::pair<std::string, std::string>>& fields);

}  // namespace isthmus
