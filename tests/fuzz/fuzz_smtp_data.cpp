// The SMTP/LMTP DATA state machine (common/smtp_data): an MTA's message
// after DATA, cut into chunks anywhere, with dot-stuffing, bare CR and LF.
//
// Invariants, against a plain reference model:
// - the data ends exactly at the first CR LF . CR LF (the DATA command's own
//   CR LF counts as the first CR LF), and never without one: a bare LF never
//   ends it;
// - the decoder never consumes more than it was given, nor anything after
//   the end;
// - the content is exactly the input before the end with one leading dot
//   removed from each line that has one and bare LFs as CR LF;
// - cutting the same input into different chunks gives the same result;
// - content_size() is what was emitted;
// - the content, dot-stuffed again (in any chunks) and ended with ".\r\n",
//   decodes back to the same content (what a node gets is what we read).

#include "common/smtp_data.hpp"
#include "fuzz_check.hpp"

using isthmus::DataDecoder;
using isthmus::DataStuffer;
using isthmus::fuzz::as_view;

namespace {

struct Decoded {
  std::string content;
  std::size_t consumed = 0;
  bool done = false;
};

Decoded decode(std::string_view input, const std::vector<std::size_t>& chunks) {
  DataDecoder decoder;
  Decoded d;
  std::size_t at = 0;
  for (auto n : chunks) {
    std::string_view chunk = input.substr(at, n);
    std::size_t used = decoder.feed(chunk, d.content);
    FUZZ_CHECK(used <= chunk.size());
    d.consumed += used;
    at += n;
    FUZZ_CHECK(decoder.content_size() == d.content.size());
    if (decoder.done()) break;
    FUZZ_CHECK(used == chunk.size());  // a decoder not done takes everything
  }
  d.done = decoder.done();
  return d;
}

// The reference: the content of `raw` (the bytes before the end), decoded.
// How a lone CR is treated is the one policy choice (here: like a bare LF,
// delivered as CR LF and not a line start).
std::string reference_content(std::string_view raw) {
  std::string out;
  bool line_start = true;
  for (std::size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (line_start && c == '.') {
      line_start = false;
      continue;  // the stuffed dot
    }
    if (c == '\r' && i + 1 < raw.size() && raw[i + 1] == '\n') {
      out += "\r\n";
      ++i;
      line_start = true;
      continue;
    }
    line_start = false;
    if (c == '\n' || c == '\r')
      out += "\r\n";  // a bare LF or a bare CR
    else
      out += c;
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  const Decoded whole = decode(input, {size});
  const Decoded bytewise = decode(input, std::vector<std::size_t>(size, 1));
  const Decoded chunked =
      decode(input, isthmus::fuzz::chunk_sizes(size, isthmus::fuzz::hash_bytes(input), 64));
  for (const Decoded* other : {&bytewise, &chunked}) {
    FUZZ_CHECK(other->done == whole.done);
    FUZZ_CHECK(other->consumed == whole.consumed);
    FUZZ_CHECK(other->content == whole.content);
  }

  const std::string prefixed = "\r\n" + std::string(input);
  const auto end = prefixed.find("\r\n.\r\n");
  if (end == std::string::npos) {
    FUZZ_CHECK(!whole.done);
    FUZZ_CHECK(whole.consumed == size);
    // What is out so far is a prefix of the decoded input; the decoder may
    // hold back a CR or a dot it cannot judge yet.
    const std::string ref = reference_content(input);
    FUZZ_CHECK(whole.content.size() <= ref.size() && ref.size() - whole.content.size() <= 2);
    FUZZ_CHECK(ref.compare(0, whole.content.size(), whole.content) == 0);
  } else {
    FUZZ_CHECK(whole.done);
    FUZZ_CHECK(whole.consumed == end + 3);
    FUZZ_CHECK(whole.content == reference_content(input.substr(0, end)));
  }

  // Back to a node: stuffed in chunks, ended, decoded again.
  std::string stuffed;
  DataStuffer stuffer;
  std::size_t at = 0;
  for (auto n : isthmus::fuzz::chunk_sizes(whole.content.size(), size * 7919 + 1, 8)) {
    stuffer.stuff(std::string_view(whole.content).substr(at, n), stuffed);
    at += n;
  }
  std::string once;
  DataStuffer().stuff(whole.content, once);
  FUZZ_CHECK(once == stuffed);
  if (whole.done) {
    stuffed += ".\r\n";
    DataDecoder again;
    std::string content;
    FUZZ_CHECK(again.feed(stuffed, content) == stuffed.size());
    FUZZ_CHECK(again.done());
    FUZZ_CHECK(content == whole.content);
  }
  return 0;
}
