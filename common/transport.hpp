#pragma once
// A byte stream to a client or a node: a TCP socket, upgraded in place to
// TLS (implicit TLS at connect, or STARTTLS/STLS later). Protocol code reads
// and writes through it and does not care which it has.
//
// TLS costs memory: Asio's TLS stream keeps two 17 KiB record buffers and
// OpenSSL its own state, so a TLS session is tens of KiB where a plaintext
// one is about 2 KiB.

#include "common/deadline.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/stream.hpp>

#include <memory>
#include <string>

namespace isthmus {

class Transport {
 public:
  using TlsStream = boost::asio::ssl::stream<boost::asio::ip::tcp::socket>;

  explicit Transport(boost::asio::ip::tcp::socket socket) : socket_(std::move(socket)) {}

  // The TCP socket (inside the TLS stream once TLS is on).
  boost::asio::ip::tcp::socket& socket() { return tls_ ? tls_->next_layer() : socket_; }
  const boost::asio::ip::tcp::socket& socket() const { return tls_ ? tls_->next_layer() : socket_; }
  bool is_open() const { return socket().is_open(); }
  bool is_tls() const { return tls_ != nullptr; }
  TlsStream* tls() { return tls_.get(); }

  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> read_some(
      boost::asio::mutable_buffer buffer, Deadline deadline);
  boost::asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> write_all(
      boost::asio::const_buffer buffer, Deadline deadline);

  // TLS as the server (implicit TLS listener, or after STARTTLS/STLS).
  // `already_read` holds bytes of the client's handshake read before (past
  // a PROXY header in the same segment); they are fed to the handshake.
  // `alpn`: the listener's protocol ("imap", "pop3"); a client that offers
  // ALPN without it fails the handshake (see install_alpn_check).
  boost::asio::awaitable<boost::system::error_code> start_tls_as_server(
      boost::asio::ssl::context& context, Deadline deadline, std::string_view already_read = {},
      const char* alpn = nullptr);

  // TLS as the client, to a node. With `verify`, the node's certificate
  // must chain to the context's CAs and name `server_name` (a host name or
  // an IP address); `server_name` is also sent as SNI when it is a name.
  boost::asio::awaitable<boost::system::error_code> start_tls_as_client(
      boost::asio::ssl::context& context, const std::string& server_name, bool verify,
      Deadline deadline);

  // Why a TLS handshake as the client failed, naming the certificate check
  // that failed ("certificate verify failed: certificate has expired",
  // "... Hostname mismatch", "... unable to get local issuer certificate").
  std::string tls_failure_reason(const boost::system::error_code& ec) const;

  // The negotiated protocol and cipher, for log lines ("TLSv1.3/TLS_AES_...").
  std::string tls_description() const;

  // Cancels pending operations (they complete with operation_aborted).
  void cancel();
  void close();

 private:
  boost::asio::ip::tcp::socket socket_;  // moved into tls_ when TLS starts
  std::unique_ptr<TlsStream> tls_;
};

// Cross-protocol attacks (ALPACA): a server context so checked answers a
// ClientHello whose ALPN list lacks the listener's protocol (passed to
// start_tls_as_server) with the fatal alert no_application_protocol (RFC
// 7301 section 3.2); a client that offers no ALPN is served as before.
void install_alpn_check(boost::asio::ssl::context& context);

// The protocol's ALPN list a ClientHello offered would be answered with:
// true and `chosen` set when `offered` (RFC 7301 wire format) holds `want`;
// false when it does not, or is malformed. Pure; exposed for tests.
bool alpn_select(std::string_view offered, std::string_view want, std::string_view& chosen);

// "1.2.3.4:5678" / "[::1]:5678"; "?" when the socket has no peer.
std::string peer_of(const boost::asio::ip::tcp::socket& socket);
std::string format_endpoint(const boost::asio::ip::tcp::endpoint& endpoint);

}  // namespace isthmus
