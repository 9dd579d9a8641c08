#pragma once
// Network address helpers: CIDR blocks for trusted-network lists.

#include <boost/asio/ip/address.hpp>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus {

// An IPv4-mapped IPv6 address (::ffff:10.1.2.3, as seen on a dual-stack
// listener) becomes the IPv4 address it carries; others are unchanged.
boost::asio::ip::address unmapped(const boost::asio::ip::address& address);

struct Cidr {
  boost::asio::ip::address network;
  unsigned prefix = 0;

  // "10.0.0.0/8", "2001:db8::/32", or a single address ("192.0.2.7").
  static std::optional<Cidr> parse(std::string_view text);
  bool contains(const boost::asio::ip::address& address) const;
  std::string to_string() const;
};

bool any_contains(const std::vector<Cidr>& networks, const boost::asio::ip::address& address);

}  // namespace isthmus
