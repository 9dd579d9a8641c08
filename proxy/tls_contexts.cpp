#include "proxy/tls_contexts.hpp"

#include "common/transport.hpp"

#include <fmt/format.h>
#include <openssl/err.h>
#include <openssl/ssl.h>

namespace isthmus::proxy {

namespace ssl = boost::asio::ssl;

namespace {

std::string openssl_reason(const boost::system::error_code& ec) {
  std::string why = ec.message();
  if (unsigned long e = ERR_peek_last_error(); e != 0) {
    char buffer[256];
    ERR_error_string_n(e, buffer, sizeof buffer);
    why = buffer;
  }
  ERR_clear_error();
  return why;
}

// TLS 1.2 at least; no compression, no renegotiation by the peer, server's
// cipher order. OpenSSL 3's default cipher list is kept: it is sound.
void harden(ssl::context& context, const std::string& min_version) {
  SSL_CTX* ctx = context.native_handle();
  SSL_CTX_set_min_proto_version(ctx, min_version == "1.3" ? TLS1_3_VERSION : TLS1_2_VERSION);
  SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
  SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
}

}  // namespace

std::shared_ptr<ssl::context> make_server_tls(const config::ServerTls& tls,
                                              const std::string& source) {
  auto context = std::make_shared<ssl::context>(ssl::context::tls_server);
  harden(*context, tls.min_version);
  boost::system::error_code ec;
  context->use_certificate_chain_file(tls.certificate.string(), ec);
  if (ec)
    throw config::ConfigError(fmt::format("{}: /tls/certificate: cannot load {}: {}", source,
                                          tls.certificate.string(), openssl_reason(ec)));
  context->use_private_key_file(tls.key.string(), ssl::context::pem, ec);
  if (ec)
    throw config::ConfigError(fmt::format("{}: /tls/key: cannot load {}: {}", source,
                                          tls.key.string(), openssl_reason(ec)));
  if (SSL_CTX_check_private_key(context->native_handle()) != 1)
    throw config::ConfigError(fmt::format("{}: /tls/key: {} does not match the certificate {}",
                                          source, tls.key.string(), tls.certificate.string()));
  install_alpn_check(*context);
  return context;
}

std::shared_ptr<ssl::context> make_node_tls(const config::NodeTls& tls, const std::string& source) {
  auto context = std::make_shared<ssl::context>(ssl::context::tls_client);
  harden(*context, "1.2");
  boost::system::error_code ec;
  if (tls.ca.empty()) {
    context->set_default_verify_paths(ec);
  } else {
    context->load_verify_file(tls.ca.string(), ec);
  }
  if (ec)
    throw config::ConfigError(fmt::format("{}: /node_tls/ca: cannot load {}: {}", source,
                                          tls.ca.empty() ? "the system CAs" : tls.ca.string(),
                                          openssl_reason(ec)));
  return context;
}

}  // namespace isthmus::proxy
