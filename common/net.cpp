#include "common/net.hpp"

#include <charconv>

namespace isthmus {

namespace ip = boost::asio::ip;

ip::address unmapped(const ip::address& address) {
  if (address.is_v6() && address.to_v6().is_v4_mapped())
    return ip::make_address_v4(ip::v4_mapped, address.to_v6());
  return address;
}

std::optional<Cidr> Cidr::parse(std::string_view text) {
  auto slash = text.find('/');
  boost::system::error_code ec;
  auto address = ip::make_address(std::string(text.substr(0, slash)), ec);
  if (ec) return std::nullopt;
  address = unmapped(address);
  const unsigned max = address.is_v4() ? 32 : 128;
  unsigned prefix = max;
  if (slash != std::string_view::npos) {
    auto digits = text.substr(slash + 1);
    auto [end, perr] = std::from_chars(digits.data(), digits.data() + digits.size(), prefix);
    if (digits.empty() || perr != std::errc() || end != digits.data() + digits.size() ||
        prefix > max)
      return std::nullopt;
  }
  return Cidr{address, prefix};
}

bool Cidr::contains(const ip::address& raw) const {
  ip::address address = unmapped(raw);
  if (address.is_v4() != network.is_v4()) return false;
  auto compare = [this](const auto& a, const auto& b) {
    unsigned bits = prefix;
    for (std::size_t i = 0; i < a.size() && bits > 0; ++i) {
      unsigned take = bits >= 8 ? 8 : bits;
      unsigned mask = (0xFFu << (8 - take)) & 0xFFu;
      if ((a[i] & mask) != (b[i] & mask)) return false;
      bits -= take;
    }
    return true;
  };
  if (address.is_v4()) return compare(address.to_v4().to_bytes(), network.to_v4().to_bytes());
  return compare(address.to_v6().to_bytes(), network.to_v6().to_bytes());
}

std::string Cidr::to_string() const { return network.to_string() + "/" + std::to_string(prefix); }

bool any_contains(const std::vector<Cidr>& networks, const ip::address& address) {
  for (const auto& n : networks)
    if (n.contains(address)) return true;
  return false;
}

}  // namespace isthmus
