// ManageSieve syntax (common/managesieve), both directions: a client's
// command lines before login (proxy/sieve) and a node's greeting and
// responses (backends/sieve_node_login).
//
// Invariants: a complete line's consumed length never exceeds the input,
// and the same line cut one byte short is incomplete; an empty line is
// only its line end; a line's items
// written back (atoms as they are, strings with string_item, lists in
// parentheses) parse to the same items and consume exactly what was
// written; to_command's arguments are the line's strings; to_response never
// accepts a line that is not a capability, challenge or OK/NO/BYE; a
// string_item of any text reads back as that text; parsing gated by
// ParseGate (as the sessions do) gives the same lines however the bytes
// are cut.

#include <vector>

#include "backends/sieve_node_login.hpp"
#include "common/managesieve.hpp"
#include "fuzz_check.hpp"

using namespace isthmus::managesieve;
using isthmus::fuzz::as_view;

namespace {

constexpr std::size_t kMax = 4096;

bool same(const std::vector<Item>& a, const std::vector<Item>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].kind != b[i].kind || a[i].text != b[i].text || !same(a[i].items, b[i].items))
      return false;
  }
  return true;
}

std::string write(const std::vector<Item>& items) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ' ';
    switch (item.kind) {
      case Item::Kind::atom: out += item.text; break;
      case Item::Kind::string: out += string_item(item.text, true); break;
      case Item::Kind::list: out += "(" + write(item.items) + ")"; break;
    }
  }
  return out;
}

void check_line(std::string_view buffer, const Parsed& parsed) {
  FUZZ_CHECK(parsed.consumed <= buffer.size());
  FUZZ_CHECK(parsed.consumed > 0);
  const Parsed shorter = parse_line(buffer.substr(0, parsed.consumed - 1), kMax);
  FUZZ_CHECK(shorter.status != Status::complete);
  if (parsed.status != Status::complete) return;
  if (parsed.items.empty()) {  // an empty line: only its line end
    FUZZ_CHECK(parsed.consumed <= 2);
    return;
  }
  const std::string again = write(parsed.items) + "\r\n";
  const Parsed reparsed = parse_line(again, 4 * kMax);
  FUZZ_CHECK(reparsed.status == Status::complete);
  FUZZ_CHECK(reparsed.consumed == again.size());
  FUZZ_CHECK(same(reparsed.items, parsed.items));
  if (auto command = to_command(parsed.items)) {
    FUZZ_CHECK(command->arguments.size() + 1 == parsed.items.size());
    for (std::size_t i = 0; i < command->arguments.size(); ++i)
      FUZZ_CHECK(command->arguments[i] == parsed.items[i + 1].text);
  }
  if (auto response = to_response(parsed.items)) {
    if (parsed.items[0].kind == Item::Kind::atom) {
      FUZZ_CHECK(response->kind == Response::Kind::ok || response->kind == Response::Kind::no ||
                 response->kind == Response::Kind::bye);
      const auto failure = isthmus::backends::classify_sieve_refusal(response->code);
      (void)failure;
    } else {
      FUZZ_CHECK(response->kind == Response::Kind::capability ||
                 response->kind == Response::Kind::challenge);
    }
  }
}

// The lines of `input` (up to the first that is incomplete or too long),
// parsed as a session does: bytes arriving in `chunks`, the buffer parsed
// again only when the ParseGate says it can give a new answer.
std::vector<std::vector<Item>> gated_lines(std::string_view input,
                                           const std::vector<std::size_t>& chunks) {
  std::vector<std::vector<Item>> lines;
  std::string buffer;
  ParseGate gate;
  std::size_t at = 0;
  for (auto n : chunks) {
    buffer.append(input.substr(at, n));
    at += n;
    for (;;) {
      if (!gate.worth_parsing(buffer)) break;
      Parsed p = parse_line(buffer, kMax);
      if (p.status == Status::need_more) {
        gate.waiting(p, buffer.size());
        break;
      }
      if (p.status == Status::too_long) return lines;
      buffer.erase(0, p.consumed);
      gate.reset();
      lines.push_back(p.status == Status::complete ? std::move(p.items) : std::vector<Item>{});
    }
  }
  return lines;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  std::string_view rest = input;
  std::vector<std::vector<Item>> whole;
  for (int lines = 0; lines < 64 && !rest.empty(); ++lines) {
    const Parsed parsed = parse_line(rest, kMax);
    if (parsed.status == Status::need_more || parsed.status == Status::too_long) break;
    check_line(rest, parsed);
    whole.push_back(parsed.status == Status::complete ? parsed.items : std::vector<Item>{});
    rest.remove_prefix(parsed.consumed);
  }
  // The gate never changes what is parsed, only how often: the same lines
  // whichever way the bytes arrive (one at a time, random chunks).
  if (whole.size() < 64) {
    for (const auto& chunks :
         {std::vector<std::size_t>(size, 1),
          isthmus::fuzz::chunk_sizes(size, isthmus::fuzz::hash_bytes(input), 64)}) {
      const auto gated = gated_lines(input, chunks);
      FUZZ_CHECK(gated.size() == whole.size());
      for (std::size_t i = 0; i < gated.size() && i < whole.size(); ++i)
        FUZZ_CHECK(same(gated[i], whole[i]));
    }
  }
  // Any text as a string item reads back as itself.
  const std::string text(input.substr(0, std::min<std::size_t>(size, 2 * kMax)));
  if (text.find('\0') == std::string::npos) {
    for (bool from_client : {true, false}) {
      const std::string line = "X " + string_item(text, from_client) + "\r\n";
      const Parsed parsed = parse_line(line, 4 * kMax);
      FUZZ_CHECK(parsed.status == Status::complete);
      FUZZ_CHECK(parsed.items.size() == 2 && parsed.items[1].text == text);
    }
  }
  return 0;
}
