#pragma once
// Pure functions over the lines an IMAP server sends (RFC 3501 section 7):
// what kind of response a line is, its status, response code and text.

#include <string>
#include <string_view>
#include <vector>

namespace isthmus::backends {

struct ImapReply {
  enum class Kind : std::uint8_t { untagged, continuation, tagged, garbage };
  enum class Status : std::uint8_t { ok, no, bad, bye, preauth, data };

  Kind kind = Kind::garbage;
  std::string tag;     // tagged only
  Status status = Status::data;
  std::string code;    // inside [...] of a status response, e.g. "CAPABILITY IMAP4rev1 ..."
  std::string text;    // human-readable rest (or the data of an untagged non-status line)
};

ImapReply parse_imap_reply(std::string_view line);

// The atom a response code starts with, upper-cased ("AUTHENTICATIONFAILED").
std::string code_name(const ImapReply& reply);

// The capability list a reply carries: from an [CAPABILITY ...] response
// code or from untagged "* CAPABILITY ..." data. Empty if it carries none.
std::vector<std::string> capabilities_in(const ImapReply& reply);

// The capability list as one string ("IMAP4rev1 SASL-IR ..."), or "".
std::string capability_text(const ImapReply& reply);

std::vector<std::string> split_capabilities(std::string_view text);

bool has_capability(const std::vector<std::string>& caps, std::string_view name);

}  // namespace isthmus::backends
