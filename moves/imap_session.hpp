#pragma once
// One IMAP session on a node as the nodes' master user, for the copy of a
// mailbox (docs/move.md, "The copy engine"): connect (TLS as configured),
// log in with the daemon's own node login code (backends/imap_node_login:
// SASL PLAIN, the master user as Dovecot's "user*master" or as SASL
// authorization), learn the namespaces and capabilities, then commands
// and their responses, literals included.
//
// Bodies are never held whole: fetch_bodies() hands each message's body to
// a sink in chunks as it arrives (the copy streams it into an APPEND on the
// destination, with LITERAL+ where offered), so memory stays bounded by
// the chunk size, whatever the mailbox holds. Everything else a node sends
// is bounded too (kMaxResponse per response, kCommandBudget per command,
// more for a listing, in proportion to the folder).
//
// A copy pass is one unit of work: any failure (the node closed, timed out,
// answered NO or something that does not parse) ends it. The session
// throws ImapError with the reason; the pass turns it into a value
// (imap_copy.hpp).

#include "backends/node_login.hpp"
#include "common/deadline.hpp"
#include "common/transport.hpp"
#include "config/config.hpp"
#include "moves/imap_wire.hpp"

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ssl/context.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace isthmus::moves::imap {

inline constexpr std::size_t kMaxResponse = 1024 * 1024;  // one response, literals included
// What one command's responses may add up to (a listing gets more: see
// Session::run's `budget`).
inline constexpr std::uint64_t kCommandBudget = 64ull * 1024 * 1024;
// Unanswered APPENDs (each a LITERAL+ message) before the session reads an
// answer: the node's answers never fill the socket buffers.
inline constexpr std::size_t kMaxUnanswered = 32;
inline constexpr std::size_t kChunk = 64 * 1024;           // body bytes moved at a time

class ImapError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A SELECT or EXAMINE the node answered NO (the folder is gone, renamed,
// or in use): the session is at a command boundary and stays usable.
class FolderRefused : public ImapError {
 public:
  using ImapError::ImapError;
};

// Where a node's IMAP service is, for the copy (the mover's "nodes").
struct Endpoint {
  std::string name;
  std::string host;
  std::uint16_t port = 143;
  config::TlsMode tls = config::TlsMode::none;
  std::string tls_name;  // the name its certificate must carry (default: host)
  bool verify = true;
  std::string ca_file;   // CAs for the node's certificate ("" = the system's)

  std::string describe() const;  // "a-left (127.0.0.1:10143)"
};

// The nodes' master user (the mover's "login").
struct MasterLogin {
  std::string user;
  std::string password;
  bool dovecot_style = true;  // "USER*MASTER" as the login name; else SASL authzid = USER
  std::string separator = "*";
};

struct Response {
  std::vector<Value> values;  // after "* "
};

struct Tagged {
  std::string status;  // OK, NO, BAD (upper case)
  std::string text;    // the rest of the line, sanitized
  std::vector<Response> untagged;
};

// What the folder just SELECTed or EXAMINEd said.
struct Selected {
  std::string name;
  std::uint64_t exists = 0;
  bool exists_seen = false;
  std::optional<std::uint64_t> uidvalidity, uidnext, highestmodseq;
};

// Receives the bodies of fetch_bodies(), one message at a time.
class BodySink {
 public:
  virtual ~BodySink() = default;
  virtual boost::asio::awaitable<void> begin(std::uint32_t uid, std::uint64_t size) = 0;
  virtual boost::asio::awaitable<void> chunk(std::string_view data) = 0;
  virtual boost::asio::awaitable<void> end() = 0;
};

class Session {
 public:
  // Connects and logs in as the master user for LOGIN_USER (the user's
  // login name on the nodes); NAMESPACE, CAPABILITY, ENABLE CONDSTORE
  // where offered. TLS_CONTEXT: for tls starttls/implicit (its CAs are
  // the node's; see make_node_tls_context). Throws ImapError.
  static boost::asio::awaitable<std::unique_ptr<Session>> open(
      const Endpoint& endpoint, boost::asio::ssl::context* tls_context, const MasterLogin& login,
      const std::string& login_user, Clock::duration timeout, std::string session_id);

  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  const Endpoint& endpoint() const { return endpoint_; }
  const std::string& delimiter() const { return delimiter_; }  // "" when the node has none
  // The personal namespace's prefix ("" or e.g. Cyrus' "INBOX.") and delimiter.
  PersonalNamespace personal() const { return {personal_prefix_, delimiter_}; }
  bool has(std::string_view capability) const;                 // e.g. "UIDPLUS", "LITERAL+"
  bool condstore() const { return condstore_; }

  // The command TEXT (no tag, no CRLF; it must not hold CR or LF), its
  // untagged responses and tagged answer. Throws ImapError on I/O errors,
  // on a response that does not parse or is too long, on responses that
  // add up to more than BUDGET bytes, and, with `want_ok`, on anything but
  // OK (naming WHAT).
  // EACH: every untagged response (but status responses) is handed to it
  // as it arrives instead of being kept in Tagged::untagged (a listing of
  // a large folder then costs what the caller keeps, not every response).
  using Untagged = std::function<void(std::vector<Value>&)>;
  boost::asio::awaitable<Tagged> run(std::string_view what, std::string_view text,
                                     bool want_ok = true, std::uint64_t budget = kCommandBudget,
                                     const Untagged* each = nullptr);

  // LIST "" "*" (or LSUB): (name, flags) of the user's own folders (other
  // users' and shared namespaces left out).
  // SELECT or EXAMINE: the answer must carry EXISTS and UIDVALIDITY.
  boost::asio::awaitable<std::vector<std::pair<std::string, std::vector<std::string>>>> list(
      bool subscribed = false);
  boost::asio::awaitable<Selected> select(const std::string& folder, bool read_only);
  const Selected& selected() const { return selected_; }
  // The folder's message count now (an EXISTS during a later command
  // updates it).
  std::uint64_t exists_now() const { return selected_.exists; }

  // UID FETCH UIDS (UID BODY.PEEK[]) with each body handed to SINK as it
  // arrives. Returns the UIDs whose body came; a UID not asked for, or a
  // body without its UID before it, is an ImapError.
  boost::asio::awaitable<std::vector<std::uint32_t>> fetch_bodies(
      const std::vector<std::uint32_t>& uids, BodySink& sink);

  // APPEND streamed: append_begin() sends the command up to the literal,
  // append_write() the body's bytes (exactly SIZE in all), append_end()
  // the final CRLF. With MULTIAPPEND (RFC 3502) the messages until
  // append_results() are one command, each literal synchronizing (a NO in
  // the middle stops the bodies at once); without it, one APPEND per
  // message, with LITERAL+ where offered (at most kMaxUnanswered
  // unanswered). The tagged answers are read by append_results(): every
  // APPEND sent since the last call must have been answered OK.
  boost::asio::awaitable<void> append_begin(const std::string& folder, const Msg& msg,
                                            std::uint64_t size);
  boost::asio::awaitable<void> append_write(std::string_view data);
  boost::asio::awaitable<void> append_end();
  boost::asio::awaitable<void> append_results();

  boost::asio::awaitable<void> logout();

  // Ends the session at once (a watchdog's doing): what it waits for
  // fails, and so does everything after, naming WHY.
  void abort(std::string why);

 private:
  Session(Endpoint endpoint, std::unique_ptr<Transport> transport, Clock::duration timeout);

  std::string next_tag();
  boost::asio::awaitable<void> send(std::string_view bytes);
  // One response: a line, with the literals it announces inline as on the
  // wire, without the final CRLF.
  boost::asio::awaitable<std::string> read_response();
  boost::asio::awaitable<std::string> read_line();
  void note_untagged(const std::vector<Value>& values);
  boost::asio::awaitable<void> learn();
  void take_append_answer(std::string_view line);
  // One response while APPENDs wait: untagged ones noted, a tagged one
  // checked (take_append_answer). True for a continuation request "+",
  // which only CONTINUATION_WANTED allows.
  boost::asio::awaitable<bool> read_append_answer(bool continuation_wanted);
  [[noreturn]] void fail(std::string_view what) const;
  void check_usable() const;  // throws once the session failed
  Deadline deadline() const { return Deadline::after(timeout_); }

  Endpoint endpoint_;
  std::unique_ptr<Transport> transport_;
  Clock::duration timeout_;
  std::string buffer_;  // bytes read, not used yet
  mutable std::string broken_;  // why the session failed ("" while it works)
  std::vector<std::string> caps_;
  std::string delimiter_;
  std::vector<std::string> other_prefixes_;
  std::string personal_prefix_;
  bool condstore_ = false;
  unsigned tag_counter_ = 0;
  Selected selected_;
  std::vector<std::string> appends_;  // tags of APPENDs sent and not answered yet
  std::uint64_t append_left_ = 0;
  bool multi_open_ = false;     // a MULTIAPPEND (RFC 3502) command open: more messages may follow
  std::string append_folder_;
};

// The pieces of a master login, shared with the ManageSieve session
// (sieve_session.hpp): a connection to ENDPOINT (its host resolved; TLS
// first for tls implicit), throwing ImapError; the credentials of the
// master user for LOGIN_USER; this side of TRANSPORT as the client the
// node is told about.
boost::asio::awaitable<std::unique_ptr<Transport>> connect_node(const Endpoint& endpoint,
                                                                boost::asio::ssl::context* tls_context,
                                                                Deadline deadline);
std::string tls_name_of(const Endpoint& endpoint);
backends::Credentials master_credentials(const MasterLogin& login, const std::string& login_user);
backends::ForwardedClient forwarded_self(Transport& transport, std::string session_id);

// A client TLS context for the nodes of a copy: the CA file's CAs, or the
// system's when empty.
std::unique_ptr<boost::asio::ssl::context> make_node_tls_context(const std::string& ca_file);

}  // namespace isthmus::moves::imap
