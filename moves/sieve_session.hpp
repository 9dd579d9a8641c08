#pragma once
// The user's Sieve scripts on a node, over ManageSieve (RFC 5804), for a
// move (docs/move.md): the mail moves over IMAP, the filters (vacation
// replies, fileinto rules) must move with it or the user loses them on the
// new island. The login is the daemon's own (backends/sieve_node_login:
// TLS or STARTTLS as configured, AUTHENTICATE PLAIN as the nodes' master
// user in the IMAP copy's two styles). Then LISTSCRIPTS, GETSCRIPT,
// PUTSCRIPT and SETACTIVE, each answer bounded (kMaxSieveResponse).
//
// copy_scripts() makes the destination hold every script of the source
// with the same content, and the same script active (or none); scripts
// only on the destination are left alone and reported. same_scripts()
// lists the differences, for the verification.

#include "common/managesieve.hpp"
#include "moves/imap_session.hpp"

#include <map>

namespace isthmus::moves::sieve {

inline constexpr std::size_t kMaxSieveResponse = 16 * 1024 * 1024;  // one answer
// What a node's listing may add up to: a user has a few scripts of a few
// kB (Pigeonhole's default limits are far below these).
inline constexpr std::size_t kMaxScripts = 1000;
inline constexpr std::size_t kMaxScriptBytes = 64 * 1024 * 1024;  // all scripts together

class SieveSession {
 public:
  // ENDPOINT: the node's ManageSieve address and TLS. Throws
  // imap::ImapError.
  static boost::asio::awaitable<std::unique_ptr<SieveSession>> open(
      const imap::Endpoint& endpoint, boost::asio::ssl::context* tls_context,
      const imap::MasterLogin& login, const std::string& login_user, Clock::duration timeout,
      std::string session_id);
  ~SieveSession();
  SieveSession(const SieveSession&) = delete;
  SieveSession& operator=(const SieveSession&) = delete;

  struct Listing {
    std::map<std::string, std::string> scripts;  // name -> content
    std::optional<std::string> active;
  };
  // Every script with its content, and the active one.
  boost::asio::awaitable<Listing> scripts();
  boost::asio::awaitable<void> put(const std::string& name, const std::string& content);
  boost::asio::awaitable<void> set_active(const std::optional<std::string>& name);
  boost::asio::awaitable<void> logout();

  const imap::Endpoint& endpoint() const { return endpoint_; }
  // Ends the session at once (a watchdog's doing): what it waits for fails.
  void abort(std::string why);

 private:
  SieveSession(imap::Endpoint endpoint, std::unique_ptr<Transport> transport,
               Clock::duration timeout);
  [[noreturn]] void fail(std::string_view what) const;
  // Sends LINE (CRLF included); the data lines before the OK (a NO or BYE
  // is an ImapError naming WHAT).
  boost::asio::awaitable<std::vector<std::vector<managesieve::Item>>> run(const std::string& what,
                                                                         const std::string& line);
  boost::asio::awaitable<std::vector<managesieve::Item>> read_line();

  imap::Endpoint endpoint_;
  std::unique_ptr<Transport> transport_;
  Clock::duration timeout_;
  std::string buffer_;
  std::string broken_;  // why abort() ended it ("" while it works)
};

struct CopyResult {
  std::vector<std::string> copied, unchanged, extra;
  std::optional<std::string> active;
};
boost::asio::awaitable<CopyResult> copy_scripts(SieveSession& source, SieveSession& destination);
boost::asio::awaitable<std::vector<std::string>> same_scripts(SieveSession& source,
                                                              SieveSession& destination);

}  // namespace isthmus::moves::sieve
