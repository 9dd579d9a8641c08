#include "proxy/proxy_protocol.hpp"

#include <doctest/doctest.h>

using namespace isthmus::proxy;
using Status = ProxyParse::Status;

namespace {

std::string v2(unsigned char ver_cmd, unsigned char family, std::string body) {
  std::string h("\x0D\x0A\x0D\x0A\x00\x0D\x0A\x51\x55\x49\x54\x0A", 12);
  h += static_cast<char>(ver_cmd);
  h += static_cast<char>(family);
  h += static_cast<char>(body.size() >> 8);
  h += static_cast<char>(body.size() & 0xff);
  return h + body;
}

std::string tcp4_body() {
  // 10.1.2.3:5555 -> 192.0.2.1:143, plus a TLV that must be skipped
  return std::string("\x0a\x01\x02\x03\xc0\x00\x02\x01\x15\xb3\x00\x8f", 12) +
         std::string("\x05\x00\x02xy", 5);
}

}  // namespace

TEST_CASE("PROXY v1, TCP4 and TCP6, with the client's first command behind it") {
  std::string bytes = "PROXY TCP4 10.1.2.3 192.0.2.1 5555 143\r\na LOGIN x y\r\n";
  auto p = parse_proxy_header(bytes);
  REQUIRE(p.status == Status::ok);
  CHECK(p.header.has_addresses);
  CHECK(p.header.source.address().to_string() == "10.1.2.3");
  CHECK(p.header.source.port() == 5555);
  CHECK(p.header.destination.port() == 143);
  CHECK(bytes.substr(p.consumed) == "a LOGIN x y\r\n");

  auto six = parse_proxy_header("PROXY TCP6 2001:db8::1 2001:db8::2 40000 993\r\n");
  REQUIRE(six.status == Status::ok);
  CHECK(six.header.source.address().to_string() == "2001:db8::1");

  auto unknown = parse_proxy_header("PROXY UNKNOWN\r\n");
  CHECK(unknown.status == Status::ok);
  CHECK_FALSE(unknown.header.has_addresses);
}

TEST_CASE("PROXY v1 split anywhere waits for more") {
  std::string full = "PROXY TCP4 10.1.2.3 192.0.2.1 5555 143\r\n";
  for (std::size_t n = 1; n < full.size(); ++n) {
    CAPTURE(n);
    CHECK(parse_proxy_header(full.substr(0, n)).status == Status::need_more);
  }
}

TEST_CASE("malformed PROXY v1 headers are invalid") {
  for (std::string bad : {"PROXY TCP4 10.1.2.3 192.0.2.1 5555\r\n",
                          "PROXY TCP4 10.1.2.3 192.0.2.1 5555 143 x\r\n",
                          "PROXY TCP4 2001:db8::1 192.0.2.1 5555 143\r\n",
                          "PROXY TCP4 10.1.2.3 192.0.2.1 65536 143\r\n",
                          "PROXY TCP4 10.1.2.3 192.0.2.1 0555 143\r\n",
                          "PROXY TCP5 10.1.2.3 192.0.2.1 5555 143\r\n",
                          "PROXY TCP4 10.1.2.3  192.0.2.1 5555 143\r\n",
                          "PROXY TCP4 x y 1 2\r\n",
                          // An IPv6 zone index (fuzz finding 14).
                          "PROXY TCP6 2001:db8::1 ::%1 40000 110\r\n",
                          "PROXY TCP6 fe80::1%lo 2001:db8::2 40000 110\r\n",
                          "a LOGIN x y\r\n",
                          "GET / HTTP/1.0\r\n"}) {
    CAPTURE(bad);
    CHECK(parse_proxy_header(bad).status == Status::invalid);
  }
  CHECK(parse_proxy_header("PROXY TCP4 " + std::string(200, '1')).status == Status::invalid);
}

TEST_CASE("PROXY v2: IPv4 with TLVs, IPv6, LOCAL") {
  std::string bytes = v2(0x21, 0x11, tcp4_body()) + std::string("\x16\x03\x01", 3);  // + ClientHello
  auto p = parse_proxy_header(bytes);
  REQUIRE(p.status == Status::ok);
  CHECK(p.header.source.address().to_string() == "10.1.2.3");
  CHECK(p.header.source.port() == 5555);
  CHECK(p.header.destination.address().to_string() == "192.0.2.1");
  CHECK(p.header.destination.port() == 143);
  CHECK(bytes.substr(p.consumed) == std::string("\x16\x03\x01", 3));

  std::string six_body(36, '\0');
  six_body[0] = '\x20';
  six_body[1] = '\x01';
  six_body[32] = '\x01';  // port 256
  auto six = parse_proxy_header(v2(0x21, 0x21, six_body));
  REQUIRE(six.status == Status::ok);
  CHECK(six.header.source.address().to_string() == "2001::");
  CHECK(six.header.source.port() == 256);

  auto local = parse_proxy_header(v2(0x20, 0x00, ""));
  REQUIRE(local.status == Status::ok);
  CHECK_FALSE(local.header.has_addresses);
}

TEST_CASE("PROXY v2 split anywhere waits for more; bad ones are invalid") {
  std::string full = v2(0x21, 0x11, tcp4_body());
  for (std::size_t n = 1; n < full.size(); ++n) {
    CAPTURE(n);
    CHECK(parse_proxy_header(full.substr(0, n)).status == Status::need_more);
  }
  CHECK(parse_proxy_header(v2(0x31, 0x11, tcp4_body())).status == Status::invalid);  // version 3
  CHECK(parse_proxy_header(v2(0x22, 0x11, tcp4_body())).status == Status::invalid);  // command 2
  CHECK(parse_proxy_header(v2(0x21, 0x11, "short")).status == Status::invalid);
  CHECK(parse_proxy_header(v2(0x21, 0x12, tcp4_body())).status == Status::invalid);  // UDP
  CHECK(parse_proxy_header(v2(0x21, 0x11, std::string(5000, 'x'))).status == Status::invalid);
}

TEST_CASE("what begins with a PROXY signature") {
  CHECK(begins_with_proxy_signature("PROXY TCP4"));
  CHECK(begins_with_proxy_signature(v2(0x21, 0x11, tcp4_body())));
  CHECK_FALSE(begins_with_proxy_signature("PRO"));
  CHECK_FALSE(begins_with_proxy_signature("\r\n"));
  CHECK_FALSE(begins_with_proxy_signature("a LOGIN"));
  CHECK_FALSE(begins_with_proxy_signature("\x16\x03\x01"));
}

namespace {
std::string tlv(unsigned char type, std::string_view value) {
  std::string t;
  t += static_cast<char>(type);
  t += static_cast<char>(value.size() >> 8);
  t += static_cast<char>(value.size() & 0xff);
  t += value;
  return t;
}
std::string addresses4() { return std::string("\x0a\x01\x02\x03\xc0\x00\x02\x01\x15\xb3\x00\x8f", 12); }
}  // namespace

TEST_CASE("PROXY v2 TLVs: parsed, kept, and their lengths must add up exactly") {
  std::string ssl_value = std::string("\x01\x00\x00\x00\x00", 5) + tlv(0x21, "TLSv1.3") +
                          tlv(0x23, "TLS_AES_256_GCM_SHA384") + tlv(0x22, "alice");
  auto p = parse_proxy_header(v2(0x21, 0x11, addresses4() + tlv(0x01, "imap") +
                                                 tlv(0x02, "mail.example.org") +
                                                 tlv(0x20, ssl_value) + tlv(0x04, "pad")));
  REQUIRE(p.status == Status::ok);
  CHECK(p.header.alpn == "imap");
  CHECK(p.header.authority == "mail.example.org");
  CHECK(p.header.ssl);
  CHECK(p.header.ssl_version == "TLSv1.3");
  CHECK(p.header.ssl_cipher == "TLS_AES_256_GCM_SHA384");
  CHECK(p.header.ssl_cn == "alice");
  CHECK(p.header.describe() ==
        "alpn=imap authority=mail.example.org ssl=TLSv1.3 cipher=TLS_AES_256_GCM_SHA384 cn=alice");
  // Stray bytes after the last TLV (fewer than a TLV header), a TLV longer
  // than what is left, an SSL TLV whose sub-TLVs do not add up.
  CHECK(parse_proxy_header(v2(0x21, 0x11, addresses4() + tlv(0x01, "imap") + "xy")).status ==
        Status::invalid);
  CHECK(parse_proxy_header(v2(0x21, 0x11, addresses4() + std::string("\x01\x00\x09imap", 7)))
            .status == Status::invalid);
  CHECK(parse_proxy_header(v2(0x21, 0x11,
                              addresses4() + tlv(0x20, std::string("\x01\x00\x00\x00\x00", 5) +
                                                           std::string("\x21\x00\x09v", 4))))
            .status == Status::invalid);
  // Escaped for the log.
  auto odd = parse_proxy_header(v2(0x21, 0x11, addresses4() + tlv(0x02, "a\r\nb")));
  REQUIRE(odd.status == Status::ok);
  CHECK(odd.header.describe() == "authority=a\\x0d\\x0ab");
}

TEST_CASE("PROXY v2 CRC32C: verified over the whole header") {
  CHECK(crc32c("123456789") == 0xE3069283U);  // the standard check value
  std::string body = addresses4() + tlv(0x01, "imap") + tlv(0x03, std::string(4, '\0'));
  std::string header = v2(0x21, 0x11, body);
  const auto crc = crc32c(header);  // computed with the field zeroed, as the spec says
  std::string good = header;
  for (int i = 0; i < 4; ++i)
    good[good.size() - 4 + static_cast<std::size_t>(i)] =
        static_cast<char>((crc >> (24 - 8 * i)) & 0xff);
  auto p = parse_proxy_header(good);
  REQUIRE(p.status == Status::ok);
  CHECK(p.header.crc_checked);
  std::string bad = good;
  bad[20] ^= 1;  // the source port changed in transit
  CHECK(parse_proxy_header(bad).status == Status::invalid);
  CHECK(parse_proxy_header(v2(0x21, 0x11, addresses4() + tlv(0x03, "abc"))).status ==
        Status::invalid);
}
