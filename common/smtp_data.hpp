#pragma once
// The SMTP/LMTP DATA encoding (RFC 5321 section 4.5.2), both ways, as pure
// functions: decoding what an MTA sends (finding the end, undoing
// dot-stuffing) and encoding it again for a node.

#include <cstdint>
#include <string>
#include <string_view>

namespace isthmus {

// Finds the end of DATA and undoes dot-stuffing (RFC 5321 section 4.5.2).
// Only CR LF . CR LF ends the data: a bare LF or a bare CR never does (SMTP
// smuggling), and both are delivered as CR LF, so that no node downstream
// (some treat a lone CR or LF as a line end) can read an end of data that
// Isthmus did not. The line after one is not a line start here either, so
// a dot there is content. Everything else passes unchanged. (Postfix's
// smtpd_forbid_bare_newline refuses such input instead; an LMTP front
// door behind the MTA normalises, since the MTA accepted it already.)
class DataDecoder {
 public:
  // Decodes from `input`, appending content to `out`; returns the number of
  // input bytes consumed. Once done(), the rest of `input` is the next
  // command and is not consumed.
  std::size_t feed(std::string_view input, std::string& out);
  bool done() const { return state_ == State::done; }
  std::uint64_t content_size() const { return content_; }

 private:
  enum class State : std::uint8_t { line_start, mid_line, cr, dot, dot_cr, done };
  State state_ = State::line_start;
  std::uint64_t content_ = 0;
};

// Whether `bytes` hold an octet over 127 (8-bit content, RFC 6152), a word
// at a time.
bool has_eight_bit(std::string_view bytes);

// Dot-stuffing for the way to a node, chunk by chunk: a line (after CR LF)
// that starts with "." gets another one. The node's copy then decodes to
// exactly the content Isthmus decoded. The caller ends the data with
// ".\r\n" (the content already ends with CR LF).
class DataStuffer {
 public:
  void stuff(std::string_view content, std::string& out);

 private:
  bool line_start_ = true;
  bool after_cr_ = false;
};

}  // namespace isthmus
