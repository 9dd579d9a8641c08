#include "common/line_reader.hpp"

#include <array>

namespace isthmus {

bool take_line(std::string& buffer, std::size_t max_line, std::string& line, bool& too_long) {
  too_long = false;
  auto lf = buffer.find('\n');
  if (lf == std::string::npos) {
    // A line of exactly max_line bytes may be waiting for the LF of its CR LF.
    too_long = buffer.size() > max_line + 1;
    return false;
  }
  std::size_t end = (lf > 0 && buffer[lf - 1] == '\r') ? lf - 1 : lf;
  if (end > max_line) {
    too_long = true;
    return false;
  }
  line.assign(buffer, 0, end);
  buffer.erase(0, lf + 1);
  return true;
}

std::optional<std::string> LineReader::pop_line() {
  auto lf = buffer_.find('\n');
  if (lf == std::string::npos) return std::nullopt;
  std::size_t end = (lf > 0 && buffer_[lf - 1] == '\r') ? lf - 1 : lf;
  std::string line = buffer_.substr(0, end);
  buffer_.erase(0, lf + 1);
  return line;
}

boost::asio::awaitable<ReadStatus> LineReader::fill(Transport& transport, Deadline deadline,
                                                    boost::system::error_code& error) {
  std::array<char, 4096> chunk;
  auto [ec, n] = co_await transport.read_some(boost::asio::buffer(chunk), deadline);
  error = ec;
  if (ec == boost::asio::error::timed_out) co_return ReadStatus::timeout;
  if (ec == boost::asio::error::eof) co_return ReadStatus::closed;
  if (ec) co_return ReadStatus::error;
  buffer_.append(chunk.data(), n);
  co_return ReadStatus::ok;
}

boost::asio::awaitable<LineResult> LineReader::read_line(Transport& transport, Deadline deadline) {
  LineResult result;
  for (;;) {
    if (auto line = pop_line()) {
      if (line->size() > max_line_) result.status = ReadStatus::too_long;
      result.line = std::move(*line);
      co_return result;
    }
    if (buffer_.size() > max_line_ + 1) {
      result.status = ReadStatus::too_long;
      co_return result;
    }
    result.status = co_await fill(transport, deadline, result.error);
    if (result.status != ReadStatus::ok) co_return result;
  }
}

}  // namespace isthmus
