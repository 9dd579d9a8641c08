#include "proxy/imap/command_parser.hpp"

#include "common/strings.hpp"

#include <charconv>

namespace isthmus::proxy::imap {

bool Token::is_nil() const { return kind == Kind::atom && iequals(value, "NIL"); }

namespace {

bool is_ctl(unsigned char c) { return c < 0x20 || c == 0x7f; }

// ATOM-CHAR (RFC 3501 section 9): any CHAR except atom-specials. Octets
// above 0x7f are accepted too (UTF-8 user names sent as atoms).
bool is_atom_char(unsigned char c) {
  if (c == 0 || is_ctl(c)) return false;
  switch (c) {
    case '(': case ')': case '{': case ' ': case '%': case '*': case '"': case '\\': case ']':
      return false;
    default:
      return true;
  }
}
bool is_astring_char(unsigned char c) { return is_atom_char(c) || c == ']'; }
// Tags are ASCII (RFC 3501: tag is made of CHARs) and short enough to echo.
bool is_tag_char(unsigned char c) { return c < 0x80 && is_astring_char(c) && c != '+'; }

// Why a scan stopped.
enum class Scan : std::uint8_t { ok, incomplete, bad, too_large_sync, too_large_nonsync };

struct Cursor {
  explicit Cursor(const std::string& input) : in(input) {}
  const std::string& in;
  std::size_t pos = 0;
  std::size_t text_bytes = 0;     // bytes outside literal data
  std::size_t literal_bytes = 0;  // literal data
  std::size_t literal_index = 0;  // synchronising literals seen in this command
  std::size_t pending_literal = 0;  // data of an incomplete literal, already here
  std::size_t decided = 0;  // bad: the bytes it took to know (pos + 1 + look-ahead)
  std::string message;

  bool at_end() const { return pos >= in.size(); }
  unsigned char peek() const { return static_cast<unsigned char>(in[pos]); }

  // `look_ahead`: bytes after `pos` that decided it (an escape's second
  // byte, the byte after a CR).
  Scan bad(std::string why, std::size_t look_ahead = 0) {
    decided = pos + 1 + look_ahead;
    message = std::move(why);
    return Scan::bad;
  }
};

// After a token: a line ending here? (CRLF or a bare LF.) Returns the bytes
// it takes, 0 if the next byte does not end the line, npos if undecided.
std::size_t line_ending_at(const Cursor& c) {
  if (c.at_end()) return std::string::npos;
  if (c.peek() == '\n') return 1;
  if (c.peek() == '\r') {
    if (c.pos + 1 >= c.in.size()) return std::string::npos;
    return c.in[c.pos + 1] == '\n' ? 2 : 0;
  }
  return 0;
}

Scan scan_atom(Cursor& c, bool (*allowed)(unsigned char), std::string& out) {
  std::size_t start = c.pos;
  while (!c.at_end() && allowed(c.peek())) ++c.pos;
  if (c.at_end()) return Scan::incomplete;
  if (c.pos == start) return c.bad("Expected an atom");
  out.assign(c.in, start, c.pos - start);
  c.text_bytes += c.pos - start;
  return Scan::ok;
}

Scan scan_quoted(Cursor& c, std::string& out) {
  const std::size_t start = c.pos;
  ++c.pos;  // the opening quote
  out.clear();
  for (;;) {
    if (c.at_end()) return Scan::incomplete;
    unsigned char ch = c.peek();
    if (ch == '"') {
      ++c.pos;
      c.text_bytes += c.pos - start;  // bytes on the wire, escapes included
      return Scan::ok;
    }
    if (ch == '\\') {
      if (c.pos + 1 >= c.in.size()) return Scan::incomplete;
      unsigned char next = static_cast<unsigned char>(c.in[c.pos + 1]);
      if (next != '"' && next != '\\') return c.bad("Invalid escape in quoted string", 1);
      out += static_cast<char>(next);
      c.pos += 2;
      continue;
    }
    if (ch == '\r' || ch == '\n' || ch == 0) return c.bad("Invalid character in quoted string");
    out += static_cast<char>(ch);
    ++c.pos;
  }
}

// {n} CRLF data, or {n+} CRLF data (RFC 7888).
Scan scan_literal(Cursor& c, const ParseLimits& limits, std::size_t acknowledged,
                  bool& wants_continuation, std::string& out) {
  std::size_t start = c.pos++;
  std::size_t digits_start = c.pos;
  while (!c.at_end() && c.peek() >= '0' && c.peek() <= '9') ++c.pos;
  if (c.at_end()) return Scan::incomplete;
  if (c.pos == digits_start || c.pos - digits_start > 10) return c.bad("Invalid literal size");
  std::uint64_t size = 0;
  std::from_chars(c.in.data() + digits_start, c.in.data() + c.pos, size);
  bool non_sync = false;
  if (c.peek() == '+') {
    non_sync = true;
    ++c.pos;
    if (c.at_end()) return Scan::incomplete;
  }
  if (c.peek() != '}') return c.bad("Invalid literal");
  ++c.pos;
  std::size_t ending = line_ending_at(c);
  if (ending == std::string::npos) return Scan::incomplete;
  if (ending == 0) return c.bad("Literal must end its line", c.peek() == '\r' ? 1 : 0);
  c.pos += ending;
  c.text_bytes += c.pos - start;
  if (size > limits.max_literal || c.literal_bytes + size > 4 * limits.max_literal) {
    c.message = "Literal too large";
    return non_sync ? Scan::too_large_nonsync : Scan::too_large_sync;
  }
  if (!non_sync) {
    if (c.literal_index >= acknowledged && c.in.size() - c.pos < size) {
      wants_continuation = true;
      c.pending_literal = c.in.size() - c.pos;
      return Scan::incomplete;
    }
    ++c.literal_index;
  }
  if (c.in.size() - c.pos < size) {
    c.pending_literal = c.in.size() - c.pos;
    return Scan::incomplete;
  }
  out.assign(c.in, c.pos, static_cast<std::size_t>(size));
  if (out.find('\0') != std::string::npos) return c.bad("NUL in literal");
  c.pos += static_cast<std::size_t>(size);
  c.literal_bytes += static_cast<std::size_t>(size);
  return Scan::ok;
}

// The whole command from the start of the buffer; `c.pos` ends after its
// line ending when ok.
Scan scan_command(Cursor& c, const ParseLimits& limits, std::size_t acknowledged,
                  bool& wants_continuation, Command& command) {
  Scan s = scan_atom(c, is_tag_char, command.tag);
  if (s != Scan::ok) {
    if (s == Scan::bad) c.message = "Invalid tag";
    return s;
  }
  // A tag that is malformed (a byte no tag may hold follows it) or too
  // long is never echoed: the answer goes out untagged ("* BAD").
  if (command.tag.size() > kMaxTag) {
    command.tag.clear();
    return c.bad("Tag too long");
  }
  if (c.peek() != ' ') {
    if (c.peek() != '\r' && c.peek() != '\n') command.tag.clear();
    return c.bad(command.tag.empty() ? "Invalid tag" : "Missing command");
  }
  ++c.pos;
  ++c.text_bytes;
  s = scan_atom(c, is_atom_char, command.name);
  if (s != Scan::ok) {
    if (s == Scan::bad) c.message = "Invalid command name";
    return s;
  }
  for (auto& ch : command.name) ch = static_cast<char>(ch >= 'a' && ch <= 'z' ? ch - 32 : ch);

  int depth = 0;
  bool need_separator = true;  // after the name or a token: SP, ")" or end of line
  for (;;) {
    if (c.text_bytes > limits.max_line) return Scan::incomplete;  // the caller reports it
    std::size_t ending = line_ending_at(c);
    if (ending == std::string::npos) return Scan::incomplete;
    if (ending > 0) {
      if (depth != 0) return c.bad("Unbalanced parentheses", ending - 1);
      c.pos += ending;
      return Scan::ok;
    }
    unsigned char ch = c.peek();
    bool separated = false;  // `ch` follows a separator (no line end was looked for there)
    if (ch == ')') {
      if (depth == 0) return c.bad("Unbalanced parentheses");
      --depth;
      ++c.pos;
      ++c.text_bytes;
      command.args.push_back({Token::Kind::list_close, {}});
      need_separator = true;
      continue;
    }
    if (need_separator) {
      // (A CR here is one not followed by LF: that took a byte more.)
      if (ch != ' ') return c.bad("Expected a space between arguments", ch == '\r' ? 1 : 0);
      ++c.pos;
      ++c.text_bytes;
      need_separator = false;
      if (c.at_end()) return Scan::incomplete;
      ch = c.peek();
      separated = true;
    }
    Token token;
    if (ch == '(') {
      ++depth;
      ++c.pos;
      ++c.text_bytes;
      command.args.push_back({Token::Kind::list_open, {}});
      continue;  // no separator after "("
    }
    if (ch == '"') {
      token.kind = Token::Kind::quoted;
      s = scan_quoted(c, token.value);
    } else if (ch == '{') {
      token.kind = Token::Kind::literal;
      s = scan_literal(c, limits, acknowledged, wants_continuation, token.value);
    } else if (is_astring_char(ch)) {
      token.kind = Token::Kind::atom;
      s = scan_atom(c, is_astring_char, token.value);
    } else {
      return c.bad("Invalid character in arguments", ch == '\r' && !separated ? 1 : 0);
    }
    if (s != Scan::ok) return s;
    command.args.push_back(std::move(token));
    need_separator = true;
  }
}

}  // namespace

ParseResult CommandParser::parse(std::string& buffer) {
  ParseResult result;
  if (discarding_) {
    auto lf = buffer.find('\n');
    if (lf == std::string::npos) {
      buffer.clear();
      return result;  // need_more
    }
    buffer.erase(0, lf + 1);
    discarding_ = false;
  }
  // Empty lines between commands are ignored, as most servers do.
  std::size_t skip = 0;
  while (skip < buffer.size() && (buffer[skip] == '\r' || buffer[skip] == '\n')) {
    if (buffer[skip] == '\r' && (skip + 1 >= buffer.size() || buffer[skip + 1] != '\n')) break;
    skip += buffer[skip] == '\r' ? 2 : 1;
  }
  buffer.erase(0, skip);
  if (buffer.empty() || buffer == "\r") return result;  // need_more

  Cursor c(buffer);
  bool wants_continuation = false;
  Command command;
  Scan s = scan_command(c, limits_, literals_acknowledged_, wants_continuation, command);
  // A literal too large is known at the LF after "{n}": the line before it
  // may already be too long, which cut smaller would have closed first.
  if ((s == Scan::too_large_sync || s == Scan::too_large_nonsync) &&
      c.pos - 1 - c.literal_bytes > limits_.max_line + 2) {
    result.event = ParseEvent::fatal;
    result.message = "Line too long";
    return result;
  }
  switch (s) {
    case Scan::ok:
      buffer.erase(0, c.pos);
      literals_acknowledged_ = 0;
      result.event = ParseEvent::command;
      result.command = std::move(command);
      return result;
    case Scan::incomplete:
      // Everything here but literal data counts, wherever the scan
      // stopped (at the end, or before a last "\\" or CR it cannot judge
      // yet): the verdict must not depend on how the stream was cut.
      if (c.text_bytes > limits_.max_line ||
          buffer.size() - c.literal_bytes - c.pending_literal > limits_.max_line + 2) {
        result.event = ParseEvent::fatal;
        result.message = "Line too long";
        return result;
      }
      if (wants_continuation) {
        literals_acknowledged_ = c.literal_index + 1;
        result.event = ParseEvent::continuation;
      }
      return result;  // need_more
    case Scan::bad: {
      // A line that was already too long before its bad byte is fatal, as
      // it is when the same bytes arrive in smaller segments (the limit is
      // then hit while the line is incomplete): the verdict must not
      // depend on how TCP cut the stream.
      if (c.text_bytes > limits_.max_line ||
          c.decided - 1 - c.literal_bytes > limits_.max_line + 2) {
        result.event = ParseEvent::fatal;
        result.message = "Line too long";
        return result;
      }
      result.event = ParseEvent::bad;
      result.tag = command.tag.empty() ? "*" : command.tag;
      result.message = c.message;
      literals_acknowledged_ = 0;
      // Skip the rest of the line, which may not have arrived yet.
      auto lf = buffer.find('\n', c.pos > 0 ? c.pos - 1 : 0);
      if (lf == std::string::npos) {
        buffer.clear();
        discarding_ = true;
      } else {
        buffer.erase(0, lf + 1);
      }
      return result;
    }
    case Scan::too_large_sync:
      // The client waits for "+" that never comes; it reads our BAD and
      // sends no literal data (RFC 3501 section 7.5). Drop the line so far.
      result.event = ParseEvent::literal_refused;
      result.tag = command.tag.empty() ? "*" : command.tag;
      result.message = c.message;
      buffer.erase(0, c.pos);
      literals_acknowledged_ = 0;
      return result;
    case Scan::too_large_nonsync:
      result.event = ParseEvent::fatal;
      result.tag = command.tag.empty() ? "*" : command.tag;
      result.message = c.message;
      return result;
  }
  return result;
}

ParseResult CommandParser::parse_line(std::string& buffer) {
  ParseResult result;
  auto lf = buffer.find('\n');
  if (lf == std::string::npos) {
    if (buffer.size() > limits_.max_line) {
      result.event = ParseEvent::fatal;
      result.message = "Line too long";
    }
    return result;
  }
  std::size_t end = (lf > 0 && buffer[lf - 1] == '\r') ? lf - 1 : lf;
  if (end > limits_.max_line) {
    result.event = ParseEvent::fatal;
    result.message = "Line too long";
    return result;
  }
  result.event = ParseEvent::command;
  result.message.assign(buffer, 0, end);
  buffer.erase(0, lf + 1);
  return result;
}

}  // namespace isthmus::proxy::imap
