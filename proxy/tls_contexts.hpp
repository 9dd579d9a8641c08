#pragma once
// TLS contexts built from the config: one for clients (Isthmus as the
// server) and one for nodes (Isthmus as the client). Built on the main
// thread with each runtime snapshot, so SIGHUP reloads certificates.

#include "config/config.hpp"

#include <boost/asio/ssl/context.hpp>

#include <memory>

namespace isthmus::proxy {

// Throws config::ConfigError naming the file and OpenSSL's reason.
std::shared_ptr<boost::asio::ssl::context> make_server_tls(const config::ServerTls& tls,
                                                           const std::string& source);
std::shared_ptr<boost::asio::ssl::context> make_node_tls(const config::NodeTls& tls,
                                                         const std::string& source);

}  // namespace isthmus::proxy
