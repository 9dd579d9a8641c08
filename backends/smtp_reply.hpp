#pragma once
// SMTP/LMTP replies (RFC 5321 section 4.2, RFC 3463 enhanced codes) as
// pure functions, and reading one (possibly multi-line) reply from a node.

#include "common/deadline.hpp"
#include "common/failure.hpp"
#include "common/line_reader.hpp"

#include <optional>
#include <string>
#include <vector>

namespace isthmus::backends {

struct SmtpReply {
  int code = 0;          // 0: no reply (see the failure that came with it)
  std::string enhanced;  // "2.1.5" when the reply carries one
  std::string text;      // the first line's text, after the codes
  std::vector<std::string> lines;  // every line's text (LHLO: the extensions)

  bool ok() const { return code >= 200 && code < 300; }
  bool intermediate() const { return code >= 300 && code < 400; }
  bool temporary() const { return code >= 400 && code < 500; }
  bool permanent() const { return code >= 500 && code < 600; }
  // "250 2.1.5 text" for a client (text sanitised, bounded); a multi-line
  // reply as every line with the code on each, joined by CR LF (at most 10).
  std::string format() const;
  // One line for a log: the code and every line's text, " / " between.
  std::string describe() const;
};

// One reply line: "250-text" (more follow) or "250 text" (last).
struct ReplyLine {
  int code = 0;
  bool last = true;
  std::string text;
};
std::optional<ReplyLine> parse_reply_line(std::string_view line);

// Takes the enhanced code ("2.1.5 rest") from the reply's lines: the last
// line that carries one gives it, and every line loses its copy.
void split_enhanced(SmtpReply& reply);

// Reads one reply; on failure returns nullopt and sets `failure`/`detail`.
boost::asio::awaitable<std::optional<SmtpReply>> read_smtp_reply(Transport& transport,
                                                                 LineReader& reader,
                                                                 Deadline deadline,
                                                                 Failure& failure,
                                                                 std::string& detail);

}  // namespace isthmus::backends
