#include "common/smtp_data.hpp"

#include <cstring>

namespace isthmus {

std::size_t DataDecoder::feed(std::string_view input, std::string& out) {
  std::size_t i = 0;
  auto emit = [&](std::string_view bytes) {
    out.append(bytes);
    content_ += bytes.size();
  };
  for (; i < input.size() && state_ != State::done; ++i) {
    char c = input[i];
    // The common cases, in bulk (this runs over every byte of every message):
    // a whole line ending in CR LF with no other CR, or the text up to the
    // next CR or LF. A dot at a line start, a CR, a LF go the long way.
    if ((state_ == State::mid_line || (state_ == State::line_start && c != '.')) && c != '\r' &&
        c != '\n') {
      const char* begin = input.data() + i;
      const std::size_t avail = input.size() - i;
      const auto* lf = static_cast<const char*>(std::memchr(begin, '\n', avail));
      const std::size_t span = lf ? static_cast<std::size_t>(lf - begin) : avail;
      const auto* cr = static_cast<const char*>(std::memchr(begin, '\r', span));
      if (lf && cr == lf - 1) {
        emit(std::string_view(begin, span + 1));  // "text CR LF"
        state_ = State::line_start;
        i += span;  // the loop's ++i steps past the LF
        continue;
      }
      const std::size_t text = cr ? static_cast<std::size_t>(cr - begin) : span;
      emit(std::string_view(begin, text));
      state_ = State::mid_line;
      i += text - 1;  // text >= 1: c is neither CR nor LF
      continue;
    }
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

bool has_eight_bit(std::string_view bytes) {
  std::size_t i = 0;
  for (; i + 8 <= bytes.size(); i += 8) {
    std::uint64_t word;
    std::memcpy(&word, bytes.data() + i, 8);
    if (word & 0x8080808080808080ULL) return true;
  }
  for (; i < bytes.size(); ++i)
    if (static_cast<unsigned char>(bytes[i]) > 127) return true;
  return false;
}

void DataStuffer::stuff(std::string_view content, std::string& out) {
  out.reserve(out.size() + content.size() + content.size() / 64);
  std::size_t i = 0;
  while (i < content.size()) {
    if (line_start_ && content[i] == '.') out += '.';
    // Up to and including the next LF, in one piece; only what follows a
    // CR LF can start a line.
    const std::size_t lf = content.find('\n', i);
    const std::size_t end = lf == std::string_view::npos ? content.size() : lf + 1;
    out.append(content.data() + i, end - i);
    if (lf == std::string_view::npos) {
      line_start_ = false;
      after_cr_ = content[end - 1] == '\r';
    } else {
      line_start_ = lf > i ? content[lf - 1] == '\r' : after_cr_;
      after_cr_ = false;
    }
    i = end;
  }
}

}  // namespace isthmus
