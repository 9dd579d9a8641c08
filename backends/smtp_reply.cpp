#include "backends/smtp_reply.hpp"

#include "common/log.hpp"

#include <fmt/format.h>

namespace isthmus::backends {

std::optional<ReplyLine> parse_reply_line(std::string_view line) {
  if (line.size() < 3) return std::nullopt;
  for (int i = 0; i < 3; ++i)
    if (line[static_cast<std::size_t>(i)] < '0' || line[static_cast<std::size_t>(i)] > '9')
      return std::nullopt;
  if (line[0] < '2' || line[0] > '5') return std::nullopt;
  ReplyLine r;
  r.code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
  if (line.size() == 3) return r;
  if (line[3] != ' ' && line[3] != '-') return std::nullopt;
  r.last = line[3] == ' ';
  r.text = std::string(line.substr(4));
  return r;
}

void split_enhanced(SmtpReply& reply) {
  // class.subject.detail, the class matching the reply's first digit.
  const std::string& t = reply.text;
  auto sp = t.find(' ');
  std::string_view word = std::string_view(t).substr(0, sp);
  int dots = 0;
  for (char c : word) {
    if (c == '.') ++dots;
    else if (c < '0' || c > '9') return;
  }
  // RFC 3463 section 2: one class digit, then subject and detail of 1 to 3
  // digits each (a longer "code" is text: passing it on as our enhanced
  // code would break RFC 2034 for the client).
  const auto first = word.find('.');
  const auto second = word.find('.', first + 1);
  if (dots != 2 || first != 1 || second - first - 1 < 1 || second - first - 1 > 3 ||
      word.size() - second - 1 < 1 || word.size() - second - 1 > 3 ||
      word[0] - '0' != reply.code / 100)
    return;
  reply.enhanced = std::string(word);
  reply.text = sp == std::string::npos ? std::string() : t.substr(sp + 1);
}

std::string SmtpReply::format() const {
  std::string out = std::to_string(code);
  // We advertise ENHANCEDSTATUSCODES: a reply without one gets its class's.
  if (!enhanced.empty()) out += " " + enhanced;
  else if (code >= 200 && code < 600) out += fmt::format(" {}.0.0", code / 100);
  if (!text.empty()) out += " " + sanitize(text, 300);
  return out;
}

boost::asio::awaitable<std::optional<SmtpReply>> read_smtp_reply(Transport& transport,
                                                                 LineReader& reader,
                                                                 Deadline deadline,
                                                                 Failure& failure,
                                                                 std::string& detail) {
  SmtpReply reply;
  for (int lines = 0; lines < 200; ++lines) {
    auto read = co_await reader.read_line(transport, deadline);
    if (read.status != ReadStatus::ok) {
      failure = read.status == ReadStatus::timeout    ? Failure::node_timeout
                : read.status == ReadStatus::too_long ? Failure::node_protocol
                                                      : Failure::node_closed;
      detail = read.status == ReadStatus::timeout ? "no answer in time" : "connection closed";
      co_return std::nullopt;
    }
    auto line = parse_reply_line(read.line);
    if (!line || (reply.code != 0 && line->code != reply.code)) {
      failure = Failure::node_protocol;
      detail = "malformed reply: " + sanitize(read.line, 80);
      co_return std::nullopt;
    }
    if (reply.code == 0) {
      reply.code = line->code;
      reply.text = line->text;
    }
    reply.lines.push_back(std::move(line->text));
    if (line->last) {
      split_enhanced(reply);
      co_return reply;
    }
  }
  failure = Failure::node_protocol;
  detail = "reply with too many lines";
  co_return std::nullopt;
}

}  // namespace isthmus::backends
