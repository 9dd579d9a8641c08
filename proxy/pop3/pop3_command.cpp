#include "proxy/pop3/pop3_command.hpp"

#include "common/line_reader.hpp"

#include <algorithm>

namespace isthmus::proxy::pop3 {

Pop3Line take_line(std::string& buffer, std::size_t max_line) {
  Pop3Line result;
  bool too_long = false;
  if (isthmus::take_line(buffer, max_line, result.text, too_long)) {
    result.status = Pop3Line::Status::line;
  } else if (too_long) {
    result.status = Pop3Line::Status::too_long;
  }
  return result;
}

std::optional<Pop3Command> parse_command(const std::string& line) {
  auto sp = line.find(' ');
  std::string keyword = line.substr(0, sp);
  if (keyword.empty() || keyword.size() > 8 ||
      !std::all_of(keyword.begin(), keyword.end(), [](char c) {
        return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z');
      }))
    return std::nullopt;
  for (auto& c : keyword) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
  Pop3Command command{std::move(keyword), {}};
  if (sp != std::string::npos) command.argument = line.substr(sp + 1);
  return command;
}

}  // namespace isthmus::proxy::pop3
