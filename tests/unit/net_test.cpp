#include "common/net.hpp"

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
