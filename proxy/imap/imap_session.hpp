#pragma once
// One IMAP client connection, from greeting to login. run() reads like the
// protocol: PROXY header and implicit TLS (Session::begin), greeting, the
// pre-auth loop (CAPABILITY, NOOP, LOGOUT, ID, STARTTLS, LOGIN,
// AUTHENTICATE PLAIN), login through the island's node; then the session
// is handed to the relay.

#include "proxy/imap/command_parser.hpp"
#include "proxy/login_proxy.hpp"
#include "proxy/session.hpp"

namespace isthmus::proxy::imap {

class ImapSession final : public Session {
 public:
  ImapSession(SessionRegistry& registry, boost::asio::ip::tcp::socket client,
              std::shared_ptr<const Runtime> runtime,
              std::shared_ptr<const config::Listener> listener);

  // True when logged in to a node and ready to relay; false when the
  // session is over.
  boost::asio::awaitable<bool> run();

 private:
  enum class Next : std::uint8_t { keep_going, logged_in, end };

  // What Isthmus offers before login; it depends on TLS and trust.
  std::string capabilities() const;

  boost::asio::awaitable<Next> serve_preauth();
  boost::asio::awaitable<Next> dispatch(Command& command);
  boost::asio::awaitable<Next> handle_login(Command& command);
  boost::asio::awaitable<Next> handle_authenticate(Command& command);
  boost::asio::awaitable<Next> handle_id(Command& command);
  boost::asio::awaitable<Next> handle_starttls(Command& command);
  // A trusted proxy's ID fields about the client behind it (Dovecot's
  // x-originating-ip, x-originating-port, x-connected-ip, x-connected-port,
  // x-proxy-ttl) replace what Isthmus knows about the client.
  void adopt_forwarded_identity(const std::vector<Token>& args);
  boost::asio::awaitable<Next> log_in(const std::string& tag, std::string user,
                                      std::string authzid, std::string password,
                                      SaslMechanism mechanism = SaslMechanism::plain);

  // Reads more client bytes; Next::end (after a BYE where one is due) if
  // the client is gone, the pre-auth deadline passed or a stop was requested.
  boost::asio::awaitable<Next> read_client();
  // Sends `text`; keep_going if that worked, end if the client is gone.
  boost::asio::awaitable<Next> answer(std::string text);
  boost::asio::awaitable<Next> bye(std::string_view text, std::string ended);
  boost::asio::awaitable<bool> reply(std::string_view text) {
    return send(text, preauth_deadline_);
  }

  const config::Config& config_;
  CommandParser parser_;
  std::size_t commands_ = 0;
  std::string from_node_;  // what the node sent after its login answer
  unsigned ttl_ = 0;       // proxy TTL a trusted client told us (0: none)
};

}  // namespace isthmus::proxy::imap
