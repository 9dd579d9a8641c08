#include "common/transport.hpp"

#include "common/net.hpp"

#include <boost/asio/ssl/host_name_verification.hpp>
#include <boost/asio/write.hpp>
#include <fmt/format.h>
#include <openssl/ssl.h>

namespace isthmus {

namespace asio = boost::asio;

asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> Transport::read_some(
    asio::mutable_buffer buffer, Deadline deadline) {
  if (tls_) {
    auto read = [tls = tls_.get(), buffer](auto token) { return tls->async_read_some(buffer, token); };
    return until(deadline, read);
  }
  auto read = [this, buffer](auto token) { return socket_.async_read_some(buffer, token); };
  return until(deadline, read);
}

asio::awaitable<std::tuple<boost::system::error_code, std::size_t>> Transport::write_all(
    asio::const_buffer buffer, Deadline deadline) {
  if (tls_) {
    auto write = [tls = tls_.get(), buffer](auto token) { return asio::async_write(*tls, buffer, token); };
    return until(deadline, write);
  }
  auto write = [this, buffer](auto token) { return asio::async_write(socket_, buffer, token); };
  return until(deadline, write);
}

namespace {

// Where a server-side SSL object keeps the protocol its listener speaks.
int alpn_index() {
  static const int index = SSL_get_ex_new_index(0, nullptr, nullptr, nullptr, nullptr);
  return index;
}

int select_alpn(SSL* ssl, const unsigned char** out, unsigned char* out_length,
                const unsigned char* in, unsigned int in_length, void*) {
  const auto* want = static_cast<const char*>(SSL_get_ex_data(ssl, alpn_index()));
  if (want == nullptr) return SSL_TLSEXT_ERR_NOACK;  // no expectation: ALPN ignored
  std::string_view chosen;
  if (!alpn_select(std::string_view(reinterpret_cast<const char*>(in), in_length), want, chosen))
    return SSL_TLSEXT_ERR_ALERT_FATAL;  // OpenSSL sends no_application_protocol
  *out = reinterpret_cast<const unsigned char*>(chosen.data());
  *out_length = static_cast<unsigned char>(chosen.size());
  return SSL_TLSEXT_ERR_OK;
}

}  // namespace

bool alpn_select(std::string_view offered, std::string_view want, std::string_view& chosen) {
  bool found = false;
  std::size_t i = 0;
  while (i < offered.size()) {
    const std::size_t length = static_cast<unsigned char>(offered[i]);
    if (length == 0 || i + 1 + length > offered.size()) return false;  // malformed
    const auto name = offered.substr(i + 1, length);
    if (!found && name == want) {
      chosen = name;
      found = true;
    }
    i += 1 + length;
  }
  return found;
}

void install_alpn_check(asio::ssl::context& context) {
  SSL_CTX_set_alpn_select_cb(context.native_handle(), select_alpn, nullptr);
}

asio::awaitable<boost::system::error_code> Transport::start_tls_as_server(
    asio::ssl::context& context, Deadline deadline, std::string_view already_read,
    const char* alpn) {
  tls_ = std::make_unique<TlsStream>(std::move(socket_), context);
  // Nothing of the handshake's buffers is kept while the session is idle.
  SSL_set_mode(tls_->native_handle(), SSL_MODE_RELEASE_BUFFERS);
  // A string literal that outlives the handshake (alpn_protocol()).
  SSL_set_ex_data(tls_->native_handle(), alpn_index(), const_cast<char*>(alpn));
  auto handshake = [tls = tls_.get(), already_read](auto token) {
    return tls->async_handshake(asio::ssl::stream_base::server,
                                asio::buffer(already_read.data(), already_read.size()), token);
  };
  auto [ec, used] = co_await until(deadline, handshake);
  co_return ec;
}

asio::awaitable<boost::system::error_code> Transport::start_tls_as_client(
    asio::ssl::context& context, const std::string& server_name, bool verify, Deadline deadline) {
  tls_ = std::make_unique<TlsStream>(std::move(socket_), context);
  SSL_set_mode(tls_->native_handle(), SSL_MODE_RELEASE_BUFFERS);
  boost::system::error_code ip_ec;
  asio::ip::make_address(server_name, ip_ec);
  if (ip_ec && !server_name.empty())  // SNI carries names only (RFC 6066 section 3)
    // SSL_set_tlsext_host_name, without the macro's C cast.
    SSL_ctrl(tls_->native_handle(), SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
             const_cast<char*>(server_name.c_str()));
  if (verify) {
    // OpenSSL's own name check (RFC 6125), so a failure says which check
    // failed (X509_V_ERR_HOSTNAME_MISMATCH, ..._IP_ADDRESS_MISMATCH).
    tls_->set_verify_mode(asio::ssl::verify_peer);
    X509_VERIFY_PARAM* param = SSL_get0_param(tls_->native_handle());
    if (!ip_ec) X509_VERIFY_PARAM_set1_ip_asc(param, server_name.c_str());
    else SSL_set1_host(tls_->native_handle(), server_name.c_str());
  } else {
    tls_->set_verify_mode(asio::ssl::verify_none);
  }
  auto handshake = [tls = tls_.get()](auto token) {
    return tls->async_handshake(asio::ssl::stream_base::client, token);
  };
  auto [ec] = co_await until(deadline, handshake);
  co_return ec;
}

std::string Transport::tls_failure_reason(const boost::system::error_code& ec) const {
  if (ec == asio::error::timed_out) return "no answer in time";
  if (tls_) {
    const long result = SSL_get_verify_result(const_cast<TlsStream&>(*tls_).native_handle());
    if (result != X509_V_OK)
      return fmt::format("certificate verify failed: {}", X509_verify_cert_error_string(result));
  }
  return ec.message();
}

std::string Transport::tls_description() const {
  if (!tls_) return "plaintext";
  auto* ssl = const_cast<TlsStream&>(*tls_).native_handle();
  return fmt::format("{}/{}", SSL_get_version(ssl), SSL_get_cipher_name(ssl));
}

void Transport::cancel() {
  boost::system::error_code ignored;
  socket().cancel(ignored);
}

void Transport::close() {
  boost::system::error_code ignored;
  auto& s = socket();
  s.shutdown(asio::socket_base::shutdown_both, ignored);
  s.close(ignored);
}

std::string format_endpoint(const asio::ip::tcp::endpoint& endpoint) {
  const auto address = unmapped(endpoint.address());
  if (address.is_v6()) return fmt::format("[{}]:{}", address.to_string(), endpoint.port());
  return fmt::format("{}:{}", address.to_string(), endpoint.port());
}

std::string peer_of(const asio::ip::tcp::socket& socket) {
  boost::system::error_code ec;
  auto endpoint = socket.remote_endpoint(ec);
  return ec ? std::string("?") : format_endpoint(endpoint);
}

}  // namespace isthmus
