#include "common/net.hpp"
#include "common/transport.hpp"
#include "proxy/session.hpp"

#include <doctest/doctest.h>

using namespace isthmus;
namespace ip = boost::asio::ip;

TEST_CASE("CIDR blocks: parse and contain") {
  auto v4 = Cidr::parse("10.0.0.0/8");
  REQUIRE(v4);
  CHECK(v4->contains(ip::make_address("10.255.1.2")));
  CHECK_FALSE(v4->contains(ip::make_address("11.0.0.1")));
  CHECK_FALSE(v4->contains(ip::make_address("::1")));
  // A dual-stack listener sees IPv4 clients as IPv4-mapped IPv6 addresses.
  CHECK(v4->contains(ip::make_address("::ffff:10.1.2.3")));

  auto odd = Cidr::parse("192.168.10.0/23");
  REQUIRE(odd);
  CHECK(odd->contains(ip::make_address("192.168.11.255")));
  CHECK_FALSE(odd->contains(ip::make_address("192.168.12.0")));

  auto host = Cidr::parse("192.0.2.7");
  REQUIRE(host);
  CHECK(host->prefix == 32);
  CHECK(host->contains(ip::make_address("192.0.2.7")));
  CHECK_FALSE(host->contains(ip::make_address("192.0.2.8")));

  auto v6 = Cidr::parse("2001:db8::/32");
  REQUIRE(v6);
  CHECK(v6->contains(ip::make_address("2001:db8:ffff::1")));
  CHECK_FALSE(v6->contains(ip::make_address("2001:db9::1")));
  CHECK(Cidr::parse("::/0")->contains(ip::make_address("2001:db8::1")));
  CHECK(Cidr::parse("0.0.0.0/0")->contains(ip::make_address("203.0.113.1")));

  for (const char* bad : {"10.0.0.0/33", "10.0.0.0/", "10.0.0/8", "::/129", "x", "10.0.0.0/8x",
                          ""}) {
    CAPTURE(bad);
    CHECK_FALSE(Cidr::parse(bad));
  }
  CHECK(any_contains({*v4, *v6}, ip::make_address("2001:db8::5")));
  CHECK_FALSE(any_contains({}, ip::make_address("10.0.0.1")));
}

TEST_CASE("ALPN: the listener's protocol must be offered, or nothing at all") {
  using isthmus::alpn_select;
  auto wire = [](std::initializer_list<std::string_view> names) {
    std::string out;
    for (auto n : names) {
      out += static_cast<char>(n.size());
      out += n;
    }
    return out;
  };
  // `chosen` points into the offered list: keep the list alive while it is
  // read (a temporary here was a stack-use-after-scope under ASan).
  std::string_view chosen;
  const std::string one = wire({"imap"});
  CHECK(alpn_select(one, "imap", chosen));
  CHECK(chosen == "imap");
  const std::string two = wire({"http/1.1", "imap"});
  CHECK(alpn_select(two, "imap", chosen));
  CHECK(chosen == "imap");
  // ALPACA: a browser offers http/1.1 (and h2) only.
  CHECK_FALSE(alpn_select(wire({"http/1.1"}), "imap", chosen));
  CHECK_FALSE(alpn_select(wire({"h2", "http/1.1"}), "pop3", chosen));
  CHECK_FALSE(alpn_select(wire({"imap"}), "pop3", chosen));
  // Malformed lists: a zero length, a length past the end.
  CHECK_FALSE(alpn_select(std::string("\0imap", 5), "imap", chosen));
  CHECK_FALSE(alpn_select(std::string("\x09imap", 5), "imap", chosen));
}

TEST_CASE("HTTP request lines are recognised on a mail port (ALPACA)") {
  using isthmus::proxy::is_http_request_line;
  CHECK(is_http_request_line("GET / HTTP/1.1\r"));
  CHECK(is_http_request_line("POST /x?y=1 HTTP/1.0"));
  CHECK(is_http_request_line("PRI * HTTP/2.0\r"));
  CHECK(is_http_request_line("OPTIONS * HTTP/1.1"));
  // IMAP and POP3 lines are not.
  CHECK_FALSE(is_http_request_line("a1 LOGIN alice secret\r"));
  CHECK_FALSE(is_http_request_line("GET BAD"));
  CHECK_FALSE(is_http_request_line("USER alice"));
  CHECK_FALSE(is_http_request_line("get / http/1.1"));
  CHECK_FALSE(is_http_request_line("GET / HTTP/x.y"));
}
