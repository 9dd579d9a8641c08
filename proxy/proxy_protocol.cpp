#include "proxy/proxy_protocol.hpp"

#include "common/log.hpp"

#include <array>
#include <charconv>
#include <cstring>

namespace isthmus::proxy {
namespace {

namespace ip = boost::asio::ip;
using Status = ProxyParse::Status;

constexpr std::string_view kV1Prefix = "PROXY ";
constexpr std::size_t kV1MaxLine = 107;  // spec, section 2.1, CRLF included
constexpr std::array<unsigned char, 12> kV2Signature = {0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D,
                                                        0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A};

ProxyParse invalid(std::string why) {
  ProxyParse p;
  p.status = Status::invalid;
  p.error = std::move(why);
  return p;
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
  if (text.empty() || text.size() > 5 || (text.size() > 1 && text[0] == '0')) return std::nullopt;
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || end != text.data() + text.size() || value > 65535) return std::nullopt;
  return static_cast<std::uint16_t>(value);
}

ProxyParse parse_v1(std::string_view bytes) {
  auto crlf = bytes.find("\r\n");
  if (crlf == std::string_view::npos) {
    if (bytes.size() >= kV1MaxLine) return invalid("v1 header line too long");
    return {};
  }
  if (crlf + 2 > kV1MaxLine) return invalid("v1 header line too long");
  std::string_view line = bytes.substr(kV1Prefix.size(), crlf - kV1Prefix.size());
  ProxyParse p;
  p.consumed = crlf + 2;
  if (line == "UNKNOWN" || line.substr(0, 8) == "UNKNOWN ") {
    p.status = Status::ok;
    return p;
  }
  std::array<std::string_view, 5> fields;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    auto sp = line.find(' ');
    if ((i < 4) != (sp != std::string_view::npos)) return invalid("v1 header: wrong number of fields");
    fields[i] = line.substr(0, sp);
    line = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  }
  const bool v4 = fields[0] == "TCP4";
  if (!v4 && fields[0] != "TCP6") return invalid("v1 header: protocol must be TCP4, TCP6 or UNKNOWN");
  // An IPv6 zone index ("fe80::1%2", "::%eth0") is not a PROXY address
  // (the spec's addresses are RFC 4291's; v2 cannot carry one), and what
  // it names is an interface of the sender, not of this host.
  if (fields[1].find('%') != std::string_view::npos || fields[2].find('%') != std::string_view::npos)
    return invalid("v1 header: bad address (an IPv6 zone index)");
  boost::system::error_code ec1, ec2;
  auto src = ip::make_address(std::string(fields[1]), ec1);
  auto dst = ip::make_address(std::string(fields[2]), ec2);
  if (ec1 || ec2 || src.is_v4() != v4 || dst.is_v4() != v4)
    return invalid("v1 header: bad address");
  auto sport = parse_port(fields[3]);
  auto dport = parse_port(fields[4]);
  if (!sport || !dport) return invalid("v1 header: bad port");
  p.status = Status::ok;
  p.header.has_addresses = true;
  p.header.source = {src, *sport};
  p.header.destination = {dst, *dport};
  return p;
}

std::uint16_t be16(const unsigned char* p) { return static_cast<std::uint16_t>(p[0] << 8 | p[1]); }
std::uint32_t be32(const unsigned char* p) {
  return static_cast<std::uint32_t>(p[0]) << 24 | static_cast<std::uint32_t>(p[1]) << 16 |
         static_cast<std::uint32_t>(p[2]) << 8 | p[3];
}

// TLV types (section 2.2.7) and the SSL TLV's sub-types (section 2.2.5).
constexpr unsigned char kTlvAlpn = 0x01;
constexpr unsigned char kTlvAuthority = 0x02;
constexpr unsigned char kTlvCrc32c = 0x03;
constexpr unsigned char kTlvUniqueId = 0x05;
constexpr unsigned char kTlvSsl = 0x20;
constexpr unsigned char kSubSslVersion = 0x21;
constexpr unsigned char kSubSslCn = 0x22;
constexpr unsigned char kSubSslCipher = 0x23;
constexpr unsigned char kClientSsl = 0x01;

// Walks a run of TLVs; `each(type, value)` returns an error or "". The
// lengths must add up to the run exactly.
template <typename Each>
std::string walk_tlvs(std::string_view run, Each each) {
  std::size_t i = 0;
  while (i < run.size()) {
    if (run.size() - i < 3) return "stray bytes after the last TLV";
    auto* t = reinterpret_cast<const unsigned char*>(run.data() + i);
    const std::size_t length = be16(t + 1);
    if (run.size() - i - 3 < length) return "a TLV longer than the header";
    if (auto error = each(t[0], run.substr(i + 3, length)); !error.empty()) return error;
    i += 3 + length;
  }
  return "";
}

// The TLVs after the address block: what they say goes into `header`.
std::string parse_tlvs(std::string_view whole, std::size_t tlv_start, ProxyHeader& header) {
  return walk_tlvs(whole.substr(tlv_start), [&](unsigned char type, std::string_view value) {
    switch (type) {
      case kTlvAlpn:
        header.alpn = value;
        return std::string();
      case kTlvAuthority:
        header.authority = value;
        return std::string();
      case kTlvCrc32c: {
        if (value.size() != 4) return std::string("a CRC32C TLV that is not 4 bytes");
        // The checksum covers the whole header with its own field zeroed.
        std::string copy(whole);
        const std::size_t at = static_cast<std::size_t>(value.data() - whole.data());
        std::memset(copy.data() + at, 0, 4);
        if (crc32c(copy) != be32(reinterpret_cast<const unsigned char*>(value.data())))
          return std::string("the CRC32C TLV does not match the header");
        header.crc_checked = true;
        return std::string();
      }
      case kTlvUniqueId:
        if (value.size() > 128) return std::string("a UNIQUE_ID TLV over 128 bytes");
        return std::string();
      case kTlvSsl: {
        if (value.size() < 5) return std::string("a short SSL TLV");
        auto* v = reinterpret_cast<const unsigned char*>(value.data());
        header.ssl = (v[0] & kClientSsl) != 0;
        return walk_tlvs(value.substr(5), [&](unsigned char sub, std::string_view text) {
          if (sub == kSubSslVersion) header.ssl_version = text;
          else if (sub == kSubSslCipher) header.ssl_cipher = text;
          else if (sub == kSubSslCn) header.ssl_cn = text;
          return std::string();
        });
      }
      default:  // NOOP, NETNS, custom and unknown types: skipped (section 2.2.7)
        return std::string();
    }
  });
}

ProxyParse parse_v2(std::string_view bytes) {
  if (bytes.size() < 16) return {};
  auto* b = reinterpret_cast<const unsigned char*>(bytes.data());
  const unsigned version = b[12] >> 4;
  const unsigned command = b[12] & 0x0F;
  const unsigned family = b[13];
  const std::size_t length = be16(b + 14);
  if (version != 2) return invalid("v2 header: version is not 2");
  if (command > 1) return invalid("v2 header: unknown command");
  if (16 + length > kMaxProxyHeader) return invalid("v2 header: too long");
  if (bytes.size() < 16 + length) return {};
  ProxyParse p;
  p.consumed = 16 + length;
  p.status = Status::ok;
  if (command == 0) return p;  // LOCAL: the balancer's own connection (health check)
  const unsigned char* a = b + 16;
  std::size_t block = 0;  // the address block's length
  switch (family) {
    case 0x11: {  // TCP over IPv4
      block = 12;
      if (length < block) return invalid("v2 header: short IPv4 address block");
      ip::address_v4::bytes_type src, dst;
      std::memcpy(src.data(), a, 4);
      std::memcpy(dst.data(), a + 4, 4);
      p.header.source = {ip::address_v4(src), be16(a + 8)};
      p.header.destination = {ip::address_v4(dst), be16(a + 10)};
      p.header.has_addresses = true;
      break;
    }
    case 0x21: {  // TCP over IPv6
      block = 36;
      if (length < block) return invalid("v2 header: short IPv6 address block");
      ip::address_v6::bytes_type src, dst;
      std::memcpy(src.data(), a, 16);
      std::memcpy(dst.data(), a + 16, 16);
      p.header.source = {ip::address_v6(src), be16(a + 32)};
      p.header.destination = {ip::address_v6(dst), be16(a + 34)};
      p.header.has_addresses = true;
      break;
    }
    case 0x00:  // UNSPEC with PROXY: addresses unknown, keep the connection's
      break;
    default:
      return invalid("v2 header: only TCP over IPv4 or IPv6 is supported");
  }
  if (auto error = parse_tlvs(bytes.substr(0, 16 + length), 16 + block, p.header);
      !error.empty())
    return invalid("v2 header: " + error);
  return p;
}

}  // namespace

namespace {

// `bytes` are a prefix of a header signature (more bytes may complete it).
bool prefix_of_signature(std::string_view bytes) {
  std::size_t n = std::min(bytes.size(), kV1Prefix.size());
  if (bytes.substr(0, n) == kV1Prefix.substr(0, n)) return true;
  n = std::min(bytes.size(), kV2Signature.size());
  return std::memcmp(bytes.data(), kV2Signature.data(), n) == 0;
}

}  // namespace

std::uint32_t crc32c(std::string_view bytes) {
  static const auto table = [] {
    std::array<std::uint32_t, 256> t{};
    for (std::uint32_t i = 0; i < 256; ++i) {
      std::uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78U : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  std::uint32_t crc = 0xFFFFFFFFU;
  for (char ch : bytes) crc = table[(crc ^ static_cast<unsigned char>(ch)) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFFU;
}

std::string ProxyHeader::describe() const {
  std::string out;
  auto add = [&out](std::string_view key, const std::string& value) {
    if (value.empty()) return;
    if (!out.empty()) out += ' ';
    out += key;
    out += '=';
    out += sanitize(value, 100);
  };
  add("alpn", alpn);
  add("authority", authority);
  if (ssl) add("ssl", ssl_version.empty() ? std::string("yes") : ssl_version);
  add("cipher", ssl_cipher);
  add("cn", ssl_cn);
  return out;
}

bool begins_with_proxy_signature(std::string_view bytes) {
  return (bytes.size() >= kV1Prefix.size() && bytes.substr(0, kV1Prefix.size()) == kV1Prefix) ||
         (bytes.size() >= kV2Signature.size() &&
          std::memcmp(bytes.data(), kV2Signature.data(), kV2Signature.size()) == 0);
}

ProxyParse parse_proxy_header(std::string_view bytes) {
  if (bytes.empty()) return {};
  if (bytes.size() >= kV2Signature.size() &&
      std::memcmp(bytes.data(), kV2Signature.data(), kV2Signature.size()) == 0)
    return parse_v2(bytes);
  if (bytes.size() >= kV1Prefix.size() && bytes.substr(0, kV1Prefix.size()) == kV1Prefix)
    return parse_v1(bytes);
  if (prefix_of_signature(bytes)) return {};  // a prefix of either: wait for more
  return invalid("no PROXY protocol header");
}

}  // namespace isthmus::proxy
