// The IMAP node reply parser (backends/imap_reply): greetings, CAPABILITY,
// tagged and untagged status lines as a node sends them, one line at a time.
//
// Invariants: a tagged reply has a non-empty tag without spaces and a
// status of OK, NO or BAD; the response code and the text are pieces of the
// line (never bytes it did not hold); capabilities are non-empty words;
// code_name is the code's first word, upper-cased.

#include "backends/imap_reply.hpp"
#include "common/strings.hpp"
#include "fuzz_check.hpp"

using namespace isthmus::backends;
using isthmus::fuzz::as_view;

namespace {

void check_line(std::string_view line) {
  ImapReply r = parse_imap_reply(line);
  FUZZ_CHECK(r.code.size() + r.text.size() + r.tag.size() <= line.size());
  FUZZ_CHECK(line.find(r.text) != std::string_view::npos);
  FUZZ_CHECK(line.find(r.code) != std::string_view::npos);
  FUZZ_CHECK(r.code.find(']') == std::string::npos);
  switch (r.kind) {
    case ImapReply::Kind::tagged:
      FUZZ_CHECK(!r.tag.empty() && r.tag.find(' ') == std::string::npos);
      FUZZ_CHECK(line.substr(0, r.tag.size()) == r.tag);
      FUZZ_CHECK(r.status == ImapReply::Status::ok || r.status == ImapReply::Status::no ||
                 r.status == ImapReply::Status::bad);
      break;
    case ImapReply::Kind::untagged:
      FUZZ_CHECK(line == "*" || line.substr(0, 2) == "* ");
      FUZZ_CHECK(r.tag.empty());
      break;
    case ImapReply::Kind::continuation:
      FUZZ_CHECK(line.front() == '+');
      break;
    case ImapReply::Kind::garbage:
      FUZZ_CHECK(r.tag.empty() && r.code.empty());
      break;
  }
  std::string name = code_name(r);
  FUZZ_CHECK(name.find(' ') == std::string::npos && name.size() <= r.code.size());
  for (char c : name) FUZZ_CHECK(!(c >= 'a' && c <= 'z'));
  auto caps = capabilities_in(r);
  std::string text = capability_text(r);
  FUZZ_CHECK(text.size() <= line.size());
  for (const auto& cap : caps) {
    FUZZ_CHECK(!cap.empty() && cap.find(' ') == std::string::npos);
    FUZZ_CHECK(has_capability(caps, cap));
    FUZZ_CHECK(has_capability(caps, isthmus::ascii_lowercase(cap)));
  }
  FUZZ_CHECK(split_capabilities(text).size() == caps.size());
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view input = as_view(data, size);
  // Lines as the node's line reader cuts them: at LF, a CR before it dropped.
  while (!input.empty()) {
    auto lf = input.find('\n');
    std::string_view line = input.substr(0, lf);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    check_line(line);
    if (lf == std::string_view::npos) break;
    input.remove_prefix(lf + 1);
  }
  return 0;
}
