// The IMAP command parser (proxy/imap/command_parser) as a client's byte
// stream: pipelined commands, quoted strings, synchronising and LITERAL+
// literals, bad lines, AUTHENTICATE continuation lines.
//
// Invariants:
// - the parser only ever removes bytes from the front of its buffer;
// - the same stream in different chunks gives the same events (leaving out
//   "+" continuations, which only a partial literal asks for);
// - a continuation is asked for at most once per literal of a command;
// - every command, serialised again, parses back to the same command;
// - tags and messages for the client hold no CR/LF (no reply injection).

#include <string>
#include <vector>

#include "fuzz_check.hpp"
#include "proxy/imap/command_parser.hpp"

using namespace isthmus::proxy::imap;
using isthmus::fuzz::as_view;

namespace {

const ParseLimits kLimits{200, 100};

struct Event {
  ParseEvent event;
  Command command;
  std::string tag;
  std::string message;
};

bool same_command(const Command& a, const Command& b) {
  if (a.tag != b.tag || a.name != b.name || a.args.size() != b.args.size()) return false;
  for (std::size_t i = 0; i < a.args.size(); ++i)
    if (a.args[i].kind != b.args[i].kind || a.args[i].value != b.args[i].value) return false;
  return true;
}

bool same_event(const Event& a, const Event& b) {
  return a.event == b.event && same_command(a.command, b.command) && a.tag == b.tag &&
         a.message == b.message;
}

// Parses everything `buffer` holds; appends the events. Returns false after
// a fatal event (the session closes).
bool drain(CommandParser& parser, std::string& buffer, std::vector<Event>& events) {
  for (int guard = 0; guard < 100000; ++guard) {
    const std::string before = buffer;
    ParseResult r = parser.parse(buffer);
    // Only bytes from the front are taken.
    FUZZ_CHECK(buffer.size() <= before.size());
    FUZZ_CHECK(before.compare(before.size() - buffer.size(), buffer.size(), buffer) == 0);
    FUZZ_CHECK(!isthmus::fuzz::has_ctl_line_break(r.tag));
    FUZZ_CHECK(!isthmus::fuzz::has_ctl_line_break(r.message));
    if (r.event == ParseEvent::command) {
      FUZZ_CHECK(!r.command.tag.empty() && !r.command.name.empty());
      FUZZ_CHECK(!isthmus::fuzz::has_ctl_line_break(r.command.tag));
      FUZZ_CHECK(buffer.size() < before.size());
    }
    events.push_back({r.event, std::move(r.command), std::move(r.tag), std::move(r.message)});
    if (r.event == ParseEvent::fatal) return false;
    if (r.event == ParseEvent::need_more || r.event == ParseEvent::continuation) return true;
  }
  FUZZ_CHECK(!"parser made no progress");
  return false;
}

std::vector<Event> run(std::string_view input, const std::vector<std::size_t>& chunks) {
  CommandParser parser(kLimits);
  std::string buffer;
  std::vector<Event> events;
  std::size_t at = 0;
  for (auto n : chunks) {
    buffer.append(input.substr(at, n));
    at += n;
    if (!drain(parser, buffer, events)) break;
  }
  return events;
}

// The events that do not depend on how the bytes were cut.
std::vector<Event> significant(const std::vector<Event>& events) {
  std::vector<Event> out;
  for (const auto& e : events)
    if (e.event != ParseEvent::need_more && e.event != ParseEvent::continuation) out.push_back(e);
  return out;
}

std::string serialise(const Command& command) {
  std::string out = command.tag + " " + command.name;
  bool after_open = false;
  for (const auto& token : command.args) {
    if (token.kind != Token::Kind::list_close && !after_open) out += ' ';
    after_open = token.kind == Token::Kind::list_open;
    switch (token.kind) {
      case Token::Kind::atom:
        out += token.value;
        break;
      case Token::Kind::quoted:
        out += '"';
        for (char c : token.value) {
          if (c == '"' || c == '\\') out += '\\';
          out += c;
        }
        out += '"';
        break;
      case Token::Kind::literal:
        out += "{" + std::to_string(token.value.size()) + "+}\r\n" + token.value;
        break;
      case Token::Kind::list_open:
        out += '(';
        break;
      case Token::Kind::list_close:
        out += ')';
        break;
    }
  }
  return out + "\r\n";
}

void check_round_trip(const Command& command) {
  std::string wire = serialise(command);
  CommandParser parser(ParseLimits{1 << 20, 1 << 20});
  ParseResult r = parser.parse(wire);
  FUZZ_CHECK(r.event == ParseEvent::command);
  FUZZ_CHECK(wire.empty());
  FUZZ_CHECK(same_command(r.command, command));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  const auto whole = run(input, {size});
  // Byte by byte costs size^2 (the parser rescans its buffer): small inputs
  // only; larger ones in chunks of 1-3 bytes.
  const auto bytewise = size <= 512 ? run(input, std::vector<std::size_t>(size, 1))
                                    : run(input, isthmus::fuzz::chunk_sizes(size, size, 3));
  const auto chunked =
      run(input, isthmus::fuzz::chunk_sizes(size, isthmus::fuzz::hash_bytes(input), 16));

  const auto reference = significant(whole);
  for (const auto* other : {&bytewise, &chunked}) {
    const auto s = significant(*other);
    FUZZ_CHECK(s.size() == reference.size());
    for (std::size_t i = 0; i < s.size(); ++i) FUZZ_CHECK(same_event(s[i], reference[i]));
  }

  // At most one continuation per literal of the command it belongs to.
  std::size_t continuations = 0;
  for (const auto& e : bytewise) {
    if (e.event == ParseEvent::continuation) {
      ++continuations;
    } else if (e.event == ParseEvent::command) {
      std::size_t literals = 0;
      for (const auto& t : e.command.args) literals += t.kind == Token::Kind::literal;
      FUZZ_CHECK(continuations <= literals);
      continuations = 0;
    } else if (e.event != ParseEvent::need_more) {
      continuations = 0;
    }
  }

  for (const auto& e : reference)
    if (e.event == ParseEvent::command) check_round_trip(e.command);

  // AUTHENTICATE's raw lines: each taken line is what came before its LF.
  CommandParser lines(kLimits);
  std::string buffer(input);
  for (;;) {
    const std::size_t before = buffer.size();
    ParseResult r = lines.parse_line(buffer);
    if (r.event != ParseEvent::command) break;
    FUZZ_CHECK(r.message.find('\n') == std::string::npos);
    FUZZ_CHECK(before - buffer.size() >= r.message.size() + 1);
    FUZZ_CHECK(before - buffer.size() <= r.message.size() + 2);
  }
  return 0;
}
