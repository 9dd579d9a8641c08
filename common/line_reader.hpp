#pragma once
// Reads CRLF-terminated lines from a Transport with a length bound and a
// deadline. Bytes read past a line stay buffered: take_buffered() hands them
// on (e.g. to the relay) so nothing the peer sent is lost or reordered.

#include "common/deadline.hpp"
#include "common/transport.hpp"

#include <string>

namespace isthmus {

enum class ReadStatus : std::uint8_t { ok, closed, timeout, too_long, error };

// One line from the front of `buffer`, without its ending (CR LF or a bare
// LF): `line` is set and true returned; false if no complete line is there
// yet. `too_long` is set when the line (complete or not) exceeds max_line.
bool take_line(std::string& buffer, std::size_t max_line, std::string& line, bool& too_long);

struct LineResult {
  ReadStatus status = ReadStatus::ok;
  std::string line;  // without the line ending
  boost::system::error_code error;
};

class LineReader {
 public:
  explicit LineReader(std::size_t max_line) : max_line_(max_line) {}

  // One line, ended by LF (a CR before it is dropped).
  boost::asio::awaitable<LineResult> read_line(Transport& transport, Deadline deadline);

  // Reads more bytes into the buffer (at least one, unless the peer closed,
  // the deadline passed, or an error occurred).
  boost::asio::awaitable<ReadStatus> fill(Transport& transport, Deadline deadline,
                                          boost::system::error_code& error);

  std::string& buffer() { return buffer_; }
  std::string take_buffered() { return std::exchange(buffer_, std::string()); }
  void consume(std::size_t n) { buffer_.erase(0, n); }

  // A line that is complete in the buffer already, if any; nullopt if not.
  std::optional<std::string> pop_line();

 private:
  std::size_t max_line_;
  std::string buffer_;
};

}  // namespace isthmus
