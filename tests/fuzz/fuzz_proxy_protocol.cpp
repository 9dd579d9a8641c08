// The PROXY protocol v1/v2 (proxy/proxy_protocol) over the first bytes of
// a connection, as a load balancer (or anyone) sends them.
//
// Invariants:
// - an accepted header is never longer than the input nor than
//   kMaxProxyHeader, and is self-delimiting: the same answer from exactly
//   its bytes, and "need more" (never ok or invalid) from any shorter prefix;
// - "invalid" is final: no longer input makes it valid;
// - "need more" only while the input is shorter than kMaxProxyHeader;
// - addresses are of one family; a header written out again from what was
//   parsed (v1 text, v2 binary) parses to the same addresses.

#include <algorithm>

#include "fuzz_check.hpp"
#include "proxy/proxy_protocol.hpp"

using namespace isthmus::proxy;
using isthmus::fuzz::as_view;
using Status = ProxyParse::Status;

namespace {

bool same(const ProxyParse& a, const ProxyParse& b) {
  return a.status == b.status && a.consumed == b.consumed &&
         a.header.has_addresses == b.header.has_addresses &&
         (!a.header.has_addresses ||
          (a.header.source == b.header.source && a.header.destination == b.header.destination));
}

std::string v1_of(const ProxyHeader& h) {
  const bool v4 = h.source.address().is_v4();
  return std::string("PROXY ") + (v4 ? "TCP4 " : "TCP6 ") + h.source.address().to_string() + " " +
         h.destination.address().to_string() + " " + std::to_string(h.source.port()) + " " +
         std::to_string(h.destination.port()) + "\r\n";
}

std::string v2_of(const ProxyHeader& h) {
  std::string out("\r\n\r\n\0\r\nQUIT\n", 12);
  const bool v4 = h.source.address().is_v4();
  out += '\x21';
  out += v4 ? '\x11' : '\x21';
  const std::size_t length = v4 ? 12 : 36;
  out += static_cast<char>(length >> 8);
  out += static_cast<char>(length & 0xff);
  auto put = [&out](const auto& bytes) {
    out.append(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  };
  if (v4) {
    put(h.source.address().to_v4().to_bytes());
    put(h.destination.address().to_v4().to_bytes());
  } else {
    put(h.source.address().to_v6().to_bytes());
    put(h.destination.address().to_v6().to_bytes());
  }
  for (auto port : {h.source.port(), h.destination.port()}) {
    out += static_cast<char>(port >> 8);
    out += static_cast<char>(port & 0xff);
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  const ProxyParse p = parse_proxy_header(input);
  switch (p.status) {
    case Status::need_more:
      FUZZ_CHECK(size < kMaxProxyHeader);
      FUZZ_CHECK(p.consumed == 0);
      break;
    case Status::invalid:
      FUZZ_CHECK(!p.error.empty());
      FUZZ_CHECK(p.error.find('\n') == std::string::npos);
      break;
    case Status::ok: {
      FUZZ_CHECK(p.consumed > 0 && p.consumed <= size && p.consumed <= kMaxProxyHeader);
      FUZZ_CHECK(begins_with_proxy_signature(input));
      FUZZ_CHECK(same(parse_proxy_header(input.substr(0, p.consumed)), p));
      if (p.header.has_addresses) {
        FUZZ_CHECK(p.header.source.address().is_v4() == p.header.destination.address().is_v4());
        ProxyParse v1 = parse_proxy_header(v1_of(p.header));
        FUZZ_CHECK(v1.status == Status::ok && v1.header.has_addresses);
        FUZZ_CHECK(v1.header.source == p.header.source &&
                   v1.header.destination == p.header.destination);
        ProxyParse v2 = parse_proxy_header(v2_of(p.header));
        FUZZ_CHECK(v2.status == Status::ok && v2.header.has_addresses);
        FUZZ_CHECK(v2.header.source == p.header.source &&
                   v2.header.destination == p.header.destination);
      }
      break;
    }
  }
  // Shorter prefixes: need more before an accepted header is complete; an
  // invalid prefix stays invalid.
  const std::size_t limit = p.status == Status::ok ? p.consumed : size;
  const std::size_t step = std::max<std::size_t>(1, limit / 64);
  for (std::size_t n = 1; n < limit; n += step) {
    const ProxyParse q = parse_proxy_header(input.substr(0, n));
    if (p.status == Status::ok) FUZZ_CHECK(q.status == Status::need_more);
    if (q.status == Status::invalid) FUZZ_CHECK(p.status == Status::invalid);
  }
  return 0;
}
