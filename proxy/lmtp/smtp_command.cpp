#include "proxy/lmtp/smtp_command.hpp"

#include "common/strings.hpp"

#include <algorithm>

namespace isthmus::proxy::lmtp {

std::optional<SmtpCommand> parse_smtp_command(std::string_view line) {
  auto sp = line.find(' ');
  std::string_view verb = line.substr(0, sp);
  if (verb.empty() || verb.size() > 10 ||
      !std::all_of(verb.begin(), verb.end(),
                   [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }))
    return std::nullopt;
  SmtpCommand command;
  command.verb = ascii_lowercase(verb);
  for (auto& c : command.verb) c = static_cast<char>(c - 32);
  if (sp != std::string_view::npos) command.argument = std::string(line.substr(sp + 1));
  return command;
}

std::optional<PathArgument> parse_path_argument(std::string_view argument, std::string_view prefix,
                                                std::string& error) {
  if (!istarts_with(argument, prefix)) {
    error = std::string("Syntax: expected ") + std::string(prefix) + "<address>";
    return std::nullopt;
  }
  argument.remove_prefix(prefix.size());
  while (!argument.empty() && argument.front() == ' ') argument.remove_prefix(1);  // lenient
  if (argument.empty() || argument.front() != '<') {
    error = "Syntax: the address must be in angle brackets";
    return std::nullopt;
  }
  // The path ends at the first '>' outside a quoted local part.
  bool quoted = false;
  std::size_t end = std::string_view::npos;
  for (std::size_t i = 1; i < argument.size(); ++i) {
    char c = argument[i];
    if (quoted && c == '\\') {
      ++i;
      continue;
    }
    if (c == '"') quoted = !quoted;
    else if (c == '>' && !quoted) {
      end = i;
      break;
    }
  }
  if (end == std::string_view::npos) {
    error = "Syntax: unterminated address";
    return std::nullopt;
  }
  PathArgument path;
  std::string_view address = argument.substr(1, end - 1);
  // A source route (RFC 5321 section 4.1.2: "@a,@b:user@c") is ignored.
  if (!address.empty() && address.front() == '@') {
    auto colon = address.find(':');
    // Domains hold no quotes: a ':' after one is inside the mailbox's
    // quoted local part, not the end of a route.
    if (colon == std::string_view::npos ||
        address.substr(0, colon).find('"') != std::string_view::npos) {
      error = "Syntax: bad source route";
      return std::nullopt;
    }
    address.remove_prefix(colon + 1);
    // "<@a:@b>": what is left must be a mailbox, not another route (it
    // would be refused without the route before it).
    if (!address.empty() && address.front() == '@') {
      error = "Syntax: bad source route";
      return std::nullopt;
    }
  }
  if (std::any_of(address.begin(), address.end(), [](char c) {
        auto u = static_cast<unsigned char>(c);
        return u < 0x20 || u == 0x7f;
      })) {
    error = "Syntax: control characters in the address";
    return std::nullopt;
  }
  path.address = std::string(address);
  std::string_view rest = argument.substr(end + 1);
  while (!rest.empty()) {
    if (rest.front() != ' ') {
      error = "Syntax: parameters must follow a space";
      return std::nullopt;
    }
    while (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    if (rest.empty()) break;
    auto sp = rest.find(' ');
    std::string_view word = rest.substr(0, sp);
    rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp);
    auto eq = word.find('=');
    Parameter p;
    p.keyword = ascii_lowercase(word.substr(0, eq));
    for (auto& c : p.keyword) c = static_cast<char>(c >= 'a' && c <= 'z' ? c - 32 : c);
    if (eq != std::string_view::npos) p.value = std::string(word.substr(eq + 1));
    if (p.keyword.empty()) {
      error = "Syntax: empty parameter";
      return std::nullopt;
    }
    path.parameters.push_back(std::move(p));
  }
  return path;
}

}  // namespace isthmus::proxy::lmtp
