#pragma once
// POP3 commands before login (RFC 1939, RFC 2449 CAPA, RFC 5034 AUTH,
// RFC 2595 STLS) as pure functions over the client's bytes.

#include <cstdint>
#include <optional>
#include <string>

namespace isthmus::proxy::pop3 {

struct Pop3Line {
  enum class Status : std::uint8_t { need_more, line, too_long };
  Status status = Status::need_more;
  std::string text;  // without CRLF (a bare LF ends a line too)
};

// Takes one line from the front of `buffer`.
Pop3Line take_line(std::string& buffer, std::size_t max_line);

struct Pop3Command {
  std::string keyword;    // upper-cased
  std::string argument;   // everything after the first space (may contain spaces: PASS)
};

// "USER alice" -> {"USER", "alice"}; nullopt for an empty line or a
// keyword that is not 1-8 letters.
std::optional<Pop3Command> parse_command(const std::string& line);

}  // namespace isthmus::proxy::pop3
