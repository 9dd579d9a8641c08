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

namespace {

// "2.1.5 rest" -> ("2.1.5", "rest") when the line starts with an enhanced
// code of the reply's class (RFC 3463: class.subject.detail).
std::optional<std::pair<std::string, std::string>> enhanced_of(std::string_view text, int code) {
  auto sp = text.find(' ');
  std::string_view word = text.substr(0, sp);
  int dots = 0;
  for (char c : word) {
    if (c == '.') ++dots;
    else if (c < '0' || c > '9') return std::nullopt;
  }
  // RFC 3463 section 2: one class digit, then subject and detail of 1 to 3
  // digits each (a longer "code" is text: passing it on as our enhanced
  // code would break RFC 2034 for the client).
  const auto first = word.find('.');
  const auto second = word.find('.', first + 1);
  if (dots != 2 || first != 1 || second - first - 1 < 1 || second - first - 1 > 3 ||
      word.size() - second - 1 < 1 || word.size() - second - 1 > 3 || word[0] - '0' != code / 100)
    return std::nullopt;
  return std::pair{std::string(word),
                   sp == std::string_view::npos ? std::string() : std::string(text.substr(sp + 1))};
}

// Lines of a multi-line reply passed on to an MTA, at most.
constexpr std::size_t kMaxFormattedLines = 10;

}  // namespace

void split_enhanced(SmtpReply& reply) {
  // Every line may carry the code (RFC 2034 section 4 puts it on each);
  // some servers put it only on the last (Cyrus: "550-..." then
  // "550 5.1.1 User unknown"). The last line that has one gives it; every
  // line loses its own copy.
  if (reply.lines.empty()) reply.lines.push_back(reply.text);
  for (auto& line : reply.lines) {
    if (auto split = enhanced_of(line, reply.code)) {
      reply.enhanced = split->first;
      line = split->second;
    }
  }
  reply.text = reply.lines.front();
}

std::string SmtpReply::format() const {
  // We advertise ENHANCEDSTATUSCODES: a reply without one gets its class's.
  const std::string code_text =
      std::to_string(code) + (!enhanced.empty() ? " " + enhanced
                              : code >= 200 && code < 600 ? fmt::format(" {}.0.0", code / 100)
                                                          : std::string());
  if (lines.size() <= 1) return text.empty() ? code_text : code_text + " " + sanitize(text, 300);
  // Every line passed on (bounded), the code on each: "550-5.1.1 a" ... "550 5.1.1 b".
  std::string out;
  const std::size_t n = std::min(lines.size(), kMaxFormattedLines);
  for (std::size_t i = 0; i < n; ++i) {
    std::string line = code_text;
    if (i + 1 < n) line[3] = '-';
    const std::string& t = i + 1 < n ? lines[i] : lines.back();
    if (!t.empty()) line += " " + sanitize(t, 300);
    out += line;
    if (i + 1 < n) out += "\r\n";
  }
  return out;
}

std::string SmtpReply::describe() const {
  std::string out = std::to_string(code);
  if (!enhanced.empty()) out += " " + enhanced;
  for (std::size_t i = 0; i < lines.size() && i < kMaxFormattedLines; ++i)
    out += (i ? " / " : " ") + sanitize(lines[i], 200);
  if (lines.empty() && !text.empty()) out += " " + sanitize(text, 200);
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
