// SMTP/LMTP replies from a node (backends/smtp_reply): reply lines,
// multi-line replies, enhanced status codes, and the one line a client is
// then given.
//
// Invariants: a reply line has a code of 200-599 matching its first three
// bytes and a text that is the rest of the line; an enhanced code is
// class.subject.detail with the reply's class; what goes to the client is
// one line per line of the node's reply (at most 10), joined by CR LF, each
// without other control bytes, bounded, starting with the code and "-"
// (more follow) or " " (the last); describe() is one line.

#include "backends/smtp_reply.hpp"
#include "fuzz_check.hpp"

#include <algorithm>
#include <vector>

using namespace isthmus::backends;
using isthmus::fuzz::as_view;

namespace {

void check_format(const SmtpReply& reply) {
  const std::string out = reply.format();
  std::vector<std::string_view> lines;
  std::string_view rest = out;
  for (;;) {
    auto crlf = rest.find("\r\n");
    lines.push_back(rest.substr(0, crlf));
    if (crlf == std::string_view::npos) break;
    rest.remove_prefix(crlf + 2);
  }
  FUZZ_CHECK(lines.size() <= 10);
  FUZZ_CHECK(lines.size() == 1 || lines.size() == std::min<std::size_t>(reply.lines.size(), 10));
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const auto line = lines[i];
    // code, enhanced code (at most 9), text (300 bytes, each at most \xNN, "...").
    FUZZ_CHECK(line.size() <= 3 + 1 + 9 + 1 + 300 * 4 + 3);
    FUZZ_CHECK(line.size() >= 3 && line.substr(0, 3) == std::to_string(reply.code));
    if (line.size() > 3) FUZZ_CHECK(line[3] == (i + 1 < lines.size() ? '-' : ' '));
    for (unsigned char c : line) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
  }
  for (unsigned char c : reply.describe()) FUZZ_CHECK(c >= 0x20 && c != 0x7f);
}

void check_enhanced(const SmtpReply& reply) {
  if (reply.enhanced.empty()) return;
  int dots = 0;
  for (char c : reply.enhanced) {
    if (c == '.')
      ++dots;
    else
      FUZZ_CHECK(c >= '0' && c <= '9');
  }
  FUZZ_CHECK(dots == 2);
  FUZZ_CHECK(reply.enhanced[0] - '0' == reply.code / 100);
  // RFC 3463 section 2: class "." subject "." detail, subject and detail
  // of 1 to 3 digits.
  const auto first = reply.enhanced.find('.');
  const auto second = reply.enhanced.find('.', first + 1);
  FUZZ_CHECK(first == 1);
  FUZZ_CHECK(second - first - 1 >= 1 && second - first - 1 <= 3);
  FUZZ_CHECK(reply.enhanced.size() - second - 1 >= 1 && reply.enhanced.size() - second - 1 <= 3);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input = as_view(data, size);
  SmtpReply reply;  // the multi-line reply being read, as read_smtp_reply does
  while (!input.empty()) {
    auto lf = input.find('\n');
    std::string_view line = input.substr(0, lf);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    auto r = parse_reply_line(line);
    if (r) {
      FUZZ_CHECK(r->code >= 200 && r->code <= 599);
      FUZZ_CHECK(std::to_string(r->code) == line.substr(0, 3));
      FUZZ_CHECK(line.size() == 3 ? r->text.empty() : r->text == line.substr(4));
      if (reply.code != 0 && r->code != reply.code) {
        reply = SmtpReply{};  // malformed: the node's reply is refused
      } else {
        if (reply.code == 0) {
          reply.code = r->code;
          reply.text = r->text;
        }
        reply.lines.push_back(r->text);
        if (r->last) {
          const std::string before = reply.text;
          split_enhanced(reply);
          FUZZ_CHECK(reply.text.size() <= before.size());
          check_enhanced(reply);
          check_format(reply);
          reply = SmtpReply{};
        }
      }
    } else {
      reply = SmtpReply{};
    }
    // Any code with this text, as a reply of its own.
    SmtpReply single;
    single.code = 200 + static_cast<int>(size % 400);
    single.text = std::string(line);
    split_enhanced(single);
    check_enhanced(single);
    check_format(single);
    if (lf == std::string_view::npos) break;
    input.remove_prefix(lf + 1);
  }
  return 0;
}
