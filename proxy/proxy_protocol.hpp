#pragma once
// The HAProxy PROXY protocol, versions 1 (text) and 2 (binary), as a pure
// function over the first bytes of a connection (the header, the client's
// first command and a TLS ClientHello may all arrive in one segment; only
// the header is consumed).
// Spec: https://www.haproxy.org/download/2.8/doc/proxy-protocol.txt

#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace isthmus::proxy {

struct ProxyHeader {
  // False for LOCAL (v2) and UNKNOWN (v1): a health check or a connection
  // the balancer made itself; the connection's own addresses stand.
  bool has_addresses = false;
  boost::asio::ip::tcp::endpoint source;       // the client
  boost::asio::ip::tcp::endpoint destination;  // what the client connected to
  // v2 TLVs (section 2.2.7), as the balancer sent them (raw bytes: escape
  // before logging). Empty when absent.
  std::string alpn;         // PP2_TYPE_ALPN: what the client negotiated with the balancer
  std::string authority;    // PP2_TYPE_AUTHORITY: the SNI host name
  bool ssl = false;         // PP2_TYPE_SSL with PP2_CLIENT_SSL: TLS ended at the balancer
  std::string ssl_version;  // PP2_SUBTYPE_SSL_VERSION
  std::string ssl_cipher;   // PP2_SUBTYPE_SSL_CIPHER
  std::string ssl_cn;       // PP2_SUBTYPE_SSL_CN (a client certificate's CN)
  bool crc_checked = false; // a PP2_TYPE_CRC32C TLV was present and matched

  // "alpn=imap authority=mail.example.org ssl=TLSv1.3" for log lines
  // (escaped); empty when the header carried none of these.
  std::string describe() const;
};

struct ProxyParse {
  enum class Status : std::uint8_t { need_more, ok, invalid };
  Status status = Status::need_more;
  ProxyHeader header;
  std::size_t consumed = 0;  // header bytes, when ok
  std::string error;         // when invalid
};

// The largest header we accept (v2 allows 64 KiB of TLVs; balancers send
// far less). Reading more than this without a complete header is invalid.
inline constexpr std::size_t kMaxProxyHeader = 4096;

// Every v2 TLV is parsed: their lengths must add up to the header's length
// exactly, a CRC32C TLV must match, an SSL TLV's sub-TLVs must add up too;
// anything else is invalid (the connection is closed). Unknown TLV types
// are skipped, as the spec requires.
ProxyParse parse_proxy_header(std::string_view bytes);

// CRC-32C (Castagnoli), as PP2_TYPE_CRC32C uses it. Exposed for tests.
std::uint32_t crc32c(std::string_view bytes);

// Whether `bytes` begin with a PROXY header's signature ("PROXY " or the
// 12-byte v2 signature): used to refuse headers from sources that are not
// allowed to send one.
bool begins_with_proxy_signature(std::string_view bytes);

}  // namespace isthmus::proxy
