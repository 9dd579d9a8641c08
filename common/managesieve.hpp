#pragma once
// ManageSieve (RFC 5804) syntax, both directions: a line of atoms, strings
// (quoted, or literals "{n}" / "{n+}" CRLF and n octets) and parenthesised
// lists (response codes), and the few shapes Isthmus needs from it: a
// client's command, a node's response, a capability line. Pure functions,
// fuzzed by tests/fuzz/fuzz_managesieve.cpp.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::managesieve {

struct Item {
  enum class Kind : std::uint8_t { atom, string, list };
  Kind kind = Kind::atom;
  std::string text;         // an atom or a string's value
  std::vector<Item> items;  // a list's items
};

enum class Status : std::uint8_t {
  complete,   // `items` holds the line
  need_more,  // the line (or a literal in it) is not complete yet
  bad,        // a syntax error: `consumed` skips the line
  too_long,   // over `max` bytes: the connection cannot recover
};

struct Parsed {
  Status status = Status::need_more;
  std::vector<Item> items;
  std::size_t consumed = 0;  // bytes of the buffer taken (complete or bad)
  std::string error;         // what is wrong (bad), for the answer and the log
  // need_more inside a literal: the buffer size before which parsing again
  // cannot give another answer (0: wait for a new line end instead).
  std::size_t wanted = 0;
};

// The line at the front of `buffer`: items separated by one space, ended by
// CRLF (a bare LF is taken too). Quoted strings allow only \" and \\ as
// escapes and no CR, LF or NUL; a literal's octets are taken as they are
// (a NUL in one is refused: no Sieve script or SASL message has one);
// lists nest at most once (a response code's arguments). `max` bounds the
// bytes of the line with its literals.
Parsed parse_line(std::string_view buffer, std::size_t max);

// Parsing a line costs its length; a peer that sends it a byte at a time
// must not make that quadratic. Says when parsing the buffer again can
// give a new answer: a new line end has arrived, or a pending literal is
// complete. Bytes only ever added at the end between parses; reset() after
// the buffer's front was consumed.
class ParseGate {
 public:
  bool worth_parsing(std::string_view buffer) const {
    if (buffer.size() < seen_) return true;  // consumed or cleared meanwhile
    if (buffer.size() < wanted_) return false;
    if (wanted_ != 0) return true;
    return buffer.find('\n', seen_) != std::string_view::npos;
  }
  // After a parse that said need_more.
  void waiting(const Parsed& parsed, std::size_t buffer_size) {
    seen_ = buffer_size;
    wanted_ = parsed.wanted;
  }
  void reset() { seen_ = 0; wanted_ = 0; }

 private:
  std::size_t seen_ = 0;    // buffer bytes the last parse saw
  std::size_t wanted_ = 0;  // a pending literal's end
};

// `text` as a quoted string ("\"" and "\\" escaped). For text without CR,
// LF or NUL; see string_item for anything else.
std::string quoted(std::string_view text);

// `text` as a quoted string when it is short and plain, else as a literal:
// "{n+}" CRLF from a client (non-synchronising, RFC 5804 section 4), "{n}"
// CRLF from a server.
std::string string_item(std::string_view text, bool from_client);

// A client command: its name (upper case) and its string arguments.
struct Command {
  std::string name;
  std::vector<std::string> arguments;
};
// Nullopt if the line is not a command (no atom first, or an argument
// that is not a string).
std::optional<Command> to_command(const std::vector<Item>& items);

// A server's response line, or its greeting's capability lines, or a SASL
// challenge (a lone string).
struct Response {
  enum class Kind : std::uint8_t { ok, no, bye, capability, challenge };
  Kind kind = Kind::ok;
  std::string code;                     // OK/NO/BYE: the response code's name, upper case
  std::vector<std::string> code_args;   // its arguments (strings and atoms)
  std::string text;                     // the human-readable string; a capability's value;
                                        // a challenge's base64
  std::string name;                     // a capability's name, upper case
};
std::optional<Response> to_response(const std::vector<Item>& items);

}  // namespace isthmus::managesieve
