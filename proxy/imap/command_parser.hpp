#pragma once
// The IMAP command grammar Isthmus speaks before login (RFC 3501 section 9,
// RFC 7888 for non-synchronising literals), as a pure function over the
// bytes the client sent so far. The session owns the bytes and the socket;
// the parser says what to do next: wait for more, send a continuation for a
// synchronising literal, run a command, or answer BAD.

#include <cstdint>
#include <string>
#include <vector>

namespace isthmus::proxy::imap {

struct Token {
  enum class Kind : std::uint8_t { atom, quoted, literal, list_open, list_close };
  Kind kind = Kind::atom;
  std::string value;

  // astring = atom / string (RFC 3501)
  bool is_astring() const { return kind == Kind::atom || kind == Kind::quoted || kind == Kind::literal; }
  bool is_string() const { return kind == Kind::quoted || kind == Kind::literal; }
  bool is_nil() const;  // the atom NIL, any case
};

struct Command {
  std::string tag;
  std::string name;  // upper-cased
  std::vector<Token> args;
};

// The longest tag Isthmus echoes; a longer one is answered "* BAD".
inline constexpr std::size_t kMaxTag = 64;

struct ParseLimits {
  std::size_t max_line = 8192;     // one command without its literal data
  std::size_t max_literal = 8192;  // one literal; a command's literals together: 4x this
};

enum class ParseEvent : std::uint8_t {
  need_more,        // read more bytes, then call again
  continuation,     // a synchronising literal waits for "+": send one, then read more
  command,          // a complete command, removed from the buffer
  bad,              // a line that is not a valid command, removed: answer `tag` BAD `message`
  literal_refused,  // a synchronising literal too large: answer `tag` BAD; the client sends no data
  fatal,            // cannot go on (line or non-synchronising literal too long): BYE and close
};

struct ParseResult {
  ParseEvent event = ParseEvent::need_more;
  Command command;      // event == command
  std::string tag;      // bad, literal_refused: the tag to answer under ("*" if none)
  std::string message;  // bad, literal_refused, fatal: what is wrong, for the client
};

class CommandParser {
 public:
  explicit CommandParser(ParseLimits limits) : limits_(limits) {}

  // Parses the next command from the front of `buffer`.
  ParseResult parse(std::string& buffer);

  // For AUTHENTICATE: one raw line from the front of `buffer`, without its
  // line ending, in `result.message` with event == command; or need_more;
  // or fatal when it grows past the line limit.
  ParseResult parse_line(std::string& buffer);

 private:
  ParseLimits limits_;
  std::size_t literals_acknowledged_ = 0;  // of the command being read
  bool discarding_ = false;                // skipping the rest of a bad line
};

}  // namespace isthmus::proxy::imap
