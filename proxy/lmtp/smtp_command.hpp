#pragma once
// The LMTP server's command grammar (RFC 2033 over RFC 5321), as pure
// functions: command lines, MAIL/RCPT paths and parameters. The DATA
// encoding is in common/smtp_data.hpp.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::proxy::lmtp {

struct SmtpCommand {
  std::string verb;      // upper-cased: LHLO, MAIL, RCPT, DATA, ...
  std::string argument;  // the rest of the line
};
std::optional<SmtpCommand> parse_smtp_command(std::string_view line);

struct Parameter {
  std::string keyword;  // upper-cased
  std::string value;    // may be empty
};

struct PathArgument {
  std::string address;  // without the angle brackets; empty for the null path <>
  std::vector<Parameter> parameters;
};

// "FROM:<a@b> SIZE=123 BODY=8BITMIME" (after the verb) for MAIL with
// prefix "FROM:", RCPT with "TO:". nullopt (with `error`) when malformed.
std::optional<PathArgument> parse_path_argument(std::string_view argument, std::string_view prefix,
                                                std::string& error);

}  // namespace isthmus::proxy::lmtp
