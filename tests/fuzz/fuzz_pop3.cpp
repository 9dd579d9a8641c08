// POP3 before login, both directions: the client's lines and commands
// (proxy/pop3/pop3_command) and a node's refusals
// (backends/pop3_node_login.cpp, classify_pop3_refusal).
//
// Invariants: lines are the same however the stream is cut; a line holds no
// LF; the bytes taken never exceed the line plus its ending; a command is
// its keyword (1-8 letters, upper-cased) and the rest of the line after one
// space, exactly; a refusal is classified as one of the known failures, and
// a line without a [CODE] is always a plain authentication failure.

#include <vector>

#include "backends/pop3_node_login.hpp"
#include "common/failure.hpp"
#include "common/strings.hpp"
#include "fuzz_check.hpp"
#include "proxy/pop3/pop3_command.hpp"

using namespace isthmus::proxy::pop3;
using isthmus::Failure;
using isthmus::fuzz::as_view;

namespace {

constexpr std::size_t kMaxLine = 255;

struct Lines {
  std::vector<std::string> lines;
  bool too_long = false;
};

Lines split(std::string_view input, const std::vector<std::size_t>& chunks) {
  Lines out;
  std::string buffer;
  std::size_t at = 0;
  for (auto n : chunks) {
    buffer.append(input.substr(at, n));
    at += n;
    for (;;) {
      const std::size_t before = buffer.size();
      Pop3Line line = take_line(buffer, kMaxLine);
      if (line.status == Pop3Line::Status::too_long) {
        out.too_long = true;
        return out;
      }
      if (line.status == Pop3Line::Status::need_more) {
        FUZZ_CHECK(buffer.size() == before);
        break;
      }
      FUZZ_CHECK(line.text.find('\n') == std::string::npos);
      FUZZ_CHECK(line.text.size() <= kMaxLine);
      FUZZ_CHECK(before - buffer.size() >= line.text.size() + 1);
      FUZZ_CHECK(before - buffer.size() <= line.text.size() + 2);
      out.lines.push_back(std::move(line.text));
    }
  }
  return out;
}

void check_command(const std::string& line) {
  auto command = parse_command(line);
  if (!command) return;
  FUZZ_CHECK(!command->keyword.empty() && command->keyword.size() <= 8);
  for (char c : command->keyword) FUZZ_CHECK(c >= 'A' && c <= 'Z');
  std::string again = command->keyword;
  if (line.size() > command->keyword.size()) again += " " + command->argument;
  FUZZ_CHECK(isthmus::iequals(again, line));
  FUZZ_CHECK(line.compare(line.size() - command->argument.size(), std::string::npos,
                          command->argument) == 0);
}

void check_refusal(const std::string& line) {
  Failure f = isthmus::backends::classify_pop3_refusal(line);
  FUZZ_CHECK(f == Failure::auth_failed || f == Failure::mailbox_in_use ||
             f == Failure::login_delay || f == Failure::node_unavailable);
  if (line.find('[') == std::string::npos) FUZZ_CHECK(f == Failure::auth_failed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  Lines whole = split(input, {size});
  Lines bytewise = split(input, std::vector<std::size_t>(size, 1));
  Lines chunked =
      split(input, isthmus::fuzz::chunk_sizes(size, isthmus::fuzz::hash_bytes(input), 32));
  // A too-long line may be noticed earlier when bytes come one at a time,
  // but every line taken before is the same.
  for (const Lines* other : {&bytewise, &chunked}) {
    std::size_t n = std::min(other->lines.size(), whole.lines.size());
    for (std::size_t i = 0; i < n; ++i) FUZZ_CHECK(other->lines[i] == whole.lines[i]);
    if (!whole.too_long && !other->too_long) FUZZ_CHECK(other->lines.size() == whole.lines.size());
  }
  for (const auto& line : whole.lines) {
    check_command(line);
    check_refusal(line);
  }
  return 0;
}
