#pragma once
// One POP3 client connection, from greeting to login: PROXY header and
// implicit TLS (Session::begin), greeting, the AUTHORIZATION state (CAPA,
// USER/PASS, AUTH PLAIN, STLS, NOOP, QUIT), login through the island's
// node; then the session is handed to the relay.
//
// APOP is not offered: it proves knowledge of the password without sending
// it, so a proxy cannot log in to the node on the user's behalf.

#include "proxy/login_proxy.hpp"
#include "proxy/session.hpp"

namespace isthmus::proxy::pop3 {

class Pop3Session final : public Session {
 public:
  Pop3Session(SessionRegistry& registry, boost::asio::ip::tcp::socket client,
              std::shared_ptr<const Runtime> runtime,
              std::shared_ptr<const config::Listener> listener);

  // True when logged in to a node and ready to relay; false when over.
  boost::asio::awaitable<bool> run();

 private:
  enum class Next : std::uint8_t { keep_going, logged_in, end };

  std::string capabilities() const;
  boost::asio::awaitable<Next> serve_preauth();
  boost::asio::awaitable<Next> handle_auth(const std::string& argument);
  boost::asio::awaitable<Next> handle_stls();
  boost::asio::awaitable<Next> log_in(std::string user, std::string authzid, std::string password,
                                      SaslMechanism mechanism = SaslMechanism::plain);
  // One line from the client (for AUTH continuations), or nullopt if the
  // session ended.
  boost::asio::awaitable<std::optional<std::string>> read_line();
  boost::asio::awaitable<Next> read_client();
  boost::asio::awaitable<Next> answer(std::string text);
  boost::asio::awaitable<Next> goodbye(std::string text, std::string ended);
  boost::asio::awaitable<bool> reply(std::string_view text) { return send(text, preauth_deadline_); }

  const config::Config& config_;
  std::size_t commands_ = 0;
  std::string user_;       // from USER, until PASS
  std::string from_node_;  // what the node sent after its login answer
};

}  // namespace isthmus::proxy::pop3
