#include "common/smtp_data.hpp"

namespace isthmus {

std::size_t DataDecoder::feed(std::string_view input, std::string& out) {
  std::size_t i = 0;
  auto emit = [&](std::string_view bytes) {
    out.append(bytes);
    content_ += bytes.size();
  };
  for (; i < input.size() && state_ != State::done; ++i) {
    char c = input[i];
    switch (state_) {
      case State::line_start:
        if (c == '.') state_ = State::dot;
        else if (c == '\r') state_ = State::cr;
        else if (c == '\n') emit("\r\n"), state_ = State::mid_line;  // bare LF: not a line start
        else emit(std::string_view(&c, 1)), state_ = State::mid_line;
        break;
      case State::mid_line:
        if (c == '\r') state_ = State::cr;
        else if (c == '\n') emit("\r\n");  // bare LF, normalised; still not a line start
        else emit(std::string_view(&c, 1));
        break;
      case State::cr:
        if (c == '\n') {
          emit("\r\n");
          state_ = State::line_start;
        } else if (c == '\r') {
          emit("\r\n");  // the first CR was bare; this one may start a CR LF
        } else {
          emit("\r\n");  // a bare CR, normalised like a bare LF; not a line start
          emit(std::string_view(&c, 1));
          state_ = State::mid_line;
        }
        break;
      case State::dot:
        // A line that starts with "." : ".\r\n" ends the data; otherwise the
        // first dot is removed (it was added by the sender's stuffing).
        if (c == '\r') {
          state_ = State::dot_cr;
        } else if (c == '\n') {
          emit("\r\n");
          state_ = State::mid_line;
        } else {
          emit(std::string_view(&c, 1));
          state_ = State::mid_line;
        }
        break;
      case State::dot_cr:
        if (c == '\n') {
          state_ = State::done;
        } else if (c == '\r') {
          emit("\r\n");
          state_ = State::cr;
        } else {
          emit("\r\n");
          emit(std::string_view(&c, 1));
          state_ = State::mid_line;
        }
        break;
      case State::done:
        break;
    }
  }
  return i;
}

void DataStuffer::stuff(std::string_view content, std::string& out) {
  out.reserve(out.size() + content.size() + content.size() / 64);
  for (char c : content) {
    if (line_start_ && c == '.') out += '.';
    out += c;
    line_start_ = after_cr_ && c == '\n';
    after_cr_ = c == '\r';
  }
}

}  // namespace isthmus
