// The LMTP server's command grammar (proxy/lmtp/smtp_command): command
// lines, and MAIL FROM / RCPT TO paths with their parameters.
//
// Invariants: a command is its verb (1-10 letters, upper-cased) and the rest
// of the line after one space, exactly; a parsed path has no control
// characters in its address, non-empty upper-case parameter keywords
// without spaces or '=', values without spaces; and the path, written out
// again, parses back to the same path.

#include "common/strings.hpp"
#include "fuzz_check.hpp"
#include "proxy/lmtp/smtp_command.hpp"

using namespace isthmus::proxy::lmtp;
using isthmus::fuzz::as_view;

namespace {

bool same(const PathArgument& a, const PathArgument& b) {
  if (a.address != b.address || a.parameters.size() != b.parameters.size()) return false;
  for (std::size_t i = 0; i < a.parameters.size(); ++i)
    if (a.parameters[i].keyword != b.parameters[i].keyword ||
        a.parameters[i].value != b.parameters[i].value)
      return false;
  return true;
}

void check_path(std::string_view argument, std::string_view prefix) {
  std::string error;
  auto path = parse_path_argument(argument, prefix, error);
  if (!path) {
    FUZZ_CHECK(!error.empty());
    return;
  }
  for (unsigned char c : path->address) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
  std::string again = std::string(prefix) + "<" + path->address + ">";
  for (const auto& p : path->parameters) {
    FUZZ_CHECK(!p.keyword.empty());
    FUZZ_CHECK(p.keyword.find(' ') == std::string::npos &&
               p.keyword.find('=') == std::string::npos);
    FUZZ_CHECK(p.value.find(' ') == std::string::npos);
    for (char c : p.keyword) FUZZ_CHECK(!(c >= 'a' && c <= 'z'));
    again += " " + p.keyword;
    if (!p.value.empty()) again += "=" + p.value;
  }
  std::string error2;
  auto reparsed = parse_path_argument(again, prefix, error2);
  FUZZ_CHECK(reparsed.has_value());
  FUZZ_CHECK(same(*reparsed, *path));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input = as_view(data, size);
  while (!input.empty()) {
    auto lf = input.find('\n');
    std::string_view line = input.substr(0, lf);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (auto command = parse_smtp_command(line)) {
      FUZZ_CHECK(!command->verb.empty() && command->verb.size() <= 10);
      for (char c : command->verb) FUZZ_CHECK(c >= 'A' && c <= 'Z');
      std::string again = command->verb;
      if (line.size() > command->verb.size()) again += " " + command->argument;
      FUZZ_CHECK(isthmus::iequals(again, line));
      if (command->verb == "MAIL") check_path(command->argument, "FROM:");
      if (command->verb == "RCPT") check_path(command->argument, "TO:");
    }
    // Any line as a path argument too, whatever its verb.
    check_path(line, "FROM:");
    check_path(line, "TO:");
    if (lf == std::string_view::npos) break;
    input.remove_prefix(lf + 1);
  }
  return 0;
}
