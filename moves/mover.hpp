#pragma once
// isthmus-move: the move of a user's mailbox to another island in C++
// (docs/move.md), the successor of the Python mover (tools/isthmus_move.py,
// removed), with its command line, config file, journal, events and exit
// codes: the daemon's move job and `isthmusctl move --local` run it.
//
// The move is a journaled sequence of steps (STEPS below): a pre-copy while
// the user keeps working, then state "moving" (logins refused, LMTP 451),
// the user's sessions kicked, a last incremental copy, a verification, and
// the switch to the destination island. The copy and the verification use
// the daemon's own IMAP code (moves/imap_session, moves/imap_copy) in this
// process; the directory is written through an instance's admin API (the
// daemon's own LDAP or SQL client and credentials: directory type
// "isthmus") or, for a static users.map, by rewriting the file and
// reloading every instance.
//
// The user's Sieve scripts move over ManageSieve (moves/sieve_session);
// the dsync mover asks the source node's doveadm HTTP API to run a one-way
// `doveadm sync` to the destination (UIDs kept); an external copier
// (move.copier) replaces the IMAP copy when configured. The directory types
// "sql" and "ldap" of the Python mover (written with command-line clients)
// are refused: type "isthmus" writes through the daemon's own clients. A config that asks for
// one of them is refused with a message naming it.

#include "ctl/admin_client.hpp"
#include "moves/imap_copy.hpp"
#include "moves/sieve_session.hpp"

#include <boost/asio/io_context.hpp>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

namespace isthmus::moves::mover {

using Json = nlohmann::ordered_json;

inline constexpr const char* kVersion = "0.1.0";

enum Exit : int { kExitOk = 0, kExitUsage = 1, kExitUnreachable = 2, kExitStep = 3, kExitVerify = 7 };

inline constexpr const char* kDefaultConfig = "/etc/isthmus/isthmusctl.json";
inline constexpr const char* kDefaultJournalDir = "/var/lib/isthmus/moves";

inline const std::vector<std::string> kSteps = {"preflight", "precopy", "moving", "kick",
                                                "copy",      "verify",  "switch", "report"};
// The steps during which the user is locked out (state "moving").
inline const std::vector<std::string> kInterruptionSteps = {"moving", "kick", "copy", "verify",
                                                            "switch"};

// Events (`move --events`, for the daemon's move job): the format of the
// Python mover, documented in docs/move.md.
inline constexpr std::size_t kEventLineMax = 64 * 1024;
inline constexpr std::size_t kEventTextMax = 8 * 1024;  // characters of one "text"
inline constexpr double kProgressInterval = 0.5;          // seconds between progress events
inline constexpr double kAckTimeout = 600.0;              // seconds to wait for "stored"

// Every failure of a move: its message and the exit code it makes.
class MoveError : public std::runtime_error {
 public:
  MoveError(std::string message, int exit_code)
      : std::runtime_error(std::move(message)), code(exit_code) {}
  int code;
};
struct UsageError : MoveError {
  explicit UsageError(std::string m) : MoveError(std::move(m), kExitUsage) {}
};
struct Unreachable : MoveError {
  explicit Unreachable(std::string m) : MoveError(std::move(m), kExitUnreachable) {}
};
struct StepFailed : MoveError {
  explicit StepFailed(std::string m) : MoveError(std::move(m), kExitStep) {}
};
struct VerifyFailed : MoveError {
  VerifyFailed(std::string m, Json what)
      : MoveError(std::move(m), kExitVerify), report(std::move(what)) {}
  Json report;
};

// Texts as the Python mover writes them (tests and operators read them).
std::string show_seconds(double seconds);     // 250ms, 5.0s, 1m05s, 2h03m
std::string show_seconds(const Json& seconds);  // "?" when not a number
std::string show_bytes(std::uint64_t n);        // 12 B, 3.4 kB, 1.0 MB, 2.5 GB
std::string plural(long long n, std::string_view word, std::string_view words = {});
std::string now_iso();                          // 2026-12-04T06:33:15.123+00:00
// "5s", "250ms", "2m", "1h", or a number of seconds; >= 0. Throws UsageError.
double parse_seconds(const Json& value, const std::string& what);

// One event as one line (with its newline), shorter than kEventLineMax: a
// "text" cut to kEventTextMax characters; a journal event too long loses
// copy.folders, then verify_report, then history (named in "shed"), or
// else its data (null, "too_large": its size).
std::string encode_event(const Json& event);

// A node of move.nodes: its IMAP address for the copy, and what the
// Python-only features would use (kept to refuse them clearly).
struct Node {
  imap::Endpoint imap;
  std::optional<imap::Endpoint> sieve;  // its ManageSieve address, for the Sieve scripts
  // The dsync mover (Dovecot nodes): the node's doveadm server, where a
  // source node's dsync writes ("tcp:HOST:PORT"), and its doveadm HTTP API.
  std::optional<std::pair<std::string, std::uint16_t>> doveadm;
  std::optional<ctl::Instance> doveadm_http;
};

struct DirectorySpec {
  std::string type;       // "isthmus" or "static"
  std::string instance;   // isthmus: the instance that writes ("" = the first)
  std::vector<std::string> files;  // static: users.map paths (absolute)
  bool lowercase = true;
  std::string default_domain;
};

struct Config {
  std::string path;  // absolute
  std::vector<ctl::Instance> instances;
  std::string journal_dir;
  double kick_timeout = 30, settle = 2, imap_timeout = 120, confirm_timeout = 10;
  int copy_passes = 3, precopy_passes = 5;
  std::uint64_t precopy_threshold = 50;
  std::uint64_t batch_bytes = 16 * 1024 * 1024;
  std::size_t batch_messages = 500;
  imap::MasterLogin login;
  std::map<std::string, Node> nodes;
  std::string mover = "imap";
  std::vector<std::string> copier;  // an external copy command instead of the IMAP copy
  double copier_timeout = 6 * 3600;
  std::optional<std::string> doveadm_auth;  // the Authorization header for the doveadm HTTP API
  double dsync_timeout = 6 * 3600, dsync_copy_timeout = 600;
  DirectorySpec directory;
};

// The config file: the isthmusctl config with its "move" section (the
// keys of the Python mover). Throws UsageError, naming the key, for
// anything wrong, and for what only the Python mover did.
Config load_config(const std::string& path);

// The static directory's rewrite of users.map (pure, for tests): the index
// of USER's line (comments and "*" defaults skipped; keys compared as the
// daemon does: lowercase, default_domain), and LINES with that line set to
// "LOGIN ISLAND [attrs] [state=STATE]" (state left out when active), other
// lines kept. ORIGINAL is the user's line before the move (nullopt: the
// user had none): a rollback to FROM then drops the line again.
std::optional<std::size_t> find_user_line(const std::vector<std::string>& lines,
                                          const DirectorySpec& spec, const std::string& user);
std::vector<std::string> edit_user_map(std::vector<std::string> lines, const DirectorySpec& spec,
                                       const std::string& user, const std::string& island,
                                       const std::string& state,
                                       const std::optional<std::string>& original,
                                       const std::string& from);

class Mover;

// Writes the user's state and island.
class Directory {
 public:
  virtual ~Directory() = default;
  virtual std::string kind() const = 0;
  virtual std::string describe() const = 0;
  virtual std::string preflight(const std::string& user) = 0;
  virtual std::string set_state(const std::string& user, const std::string& state,
                                const std::string& island, Json& journal) = 0;
  virtual std::string switch_to(const std::string& user, const std::string& island,
                                Json& journal) = 0;
  // After a write: every instance sees it (caches dropped, maps reloaded).
  virtual std::string after_change(Mover& mover) = 0;
};

// The events of one run on standard output; with `ack`, each journal
// event waits for a line "stored" on standard input.
class Events {
 public:
  explicit Events(bool ack) : ack_(ack) {}
  void emit(const Json& event);
  void journal_saved(const Json& data);
  void finish(int code, const std::string& text, const Json& interruption);

 private:
  void wait_for_ack();
  bool ack_;
  bool finished_ = false;
  std::string ack_buffer_;
};

// The journal of one user's move: DIR/USER.json locked through
// DIR/USER.lock, or the file given (--journal-file) and PATH.lock.
class Journal {
 public:
  Journal(const std::string& directory, const std::string& user,
          const std::optional<std::string>& file);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  void open();                   // lock (StepFailed if held), then load
  std::optional<Json> load() const;  // UsageError if unreadable
  void save();                   // atomically; then on_save
  const std::string& path() const { return path_; }

  Json data;  // null until a move starts
  std::function<void(const Json&)> on_save;

 private:
  std::string directory_, path_, lock_path_;
  int lock_fd_ = -1;
};

class Mover {
 public:
  Mover(Config config, Events* events);
  ~Mover();

  int move(const std::string& raw_user, const std::optional<std::string>& to, bool resume,
           bool abort, bool force, const std::optional<std::string>& mover,
           const std::optional<std::string>& journal_file);
  int status(const std::string& raw_user);

  // What the run came to (the finished event's text).
  const std::optional<std::string>& summary() const { return summary_; }
  Json interruption() const;

  // The admin API of every instance (Unreachable naming those that are not).
  std::vector<std::pair<int, Json>> ask_all(const std::string& method, const std::string& path,
                                            const std::optional<Json>& body = std::nullopt);
  std::pair<int, Json> ask(const ctl::Instance& instance, const std::string& method,
                           const std::string& path, const std::optional<Json>& body = std::nullopt);
  std::string invalidate_everywhere();
  std::vector<Json> reload_everywhere();
  const Config& config() const { return config_; }
  void say(const std::string& text = "");

 private:
  template <class S>
  struct SessionPair;
  using Pair = SessionPair<imap::Session>;
  using SievePair = SessionPair<sieve::SieveSession>;

  void complain(const std::string& text);
  void event(const Json& event);
  void announce(bool resume, bool abort = false);
  void progress(int pass, const imap::PassProgress& p, bool last);
  Json lookup(const std::string& raw_user);
  std::vector<Json> user_everywhere();
  std::string confirm(const std::string& island, const std::string& state);
  std::vector<const Node*> candidates(const std::string& island);
  std::unique_ptr<imap::Session> connect(const std::string& island);
  std::unique_ptr<sieve::SieveSession> sieve_connect(const std::string& island,
                                                     const std::vector<const Node*>& nodes);
  std::optional<SievePair> sieve_pair();
  Json copy_sieve();
  Pair open_pair();

  void step_start(const std::string& name);
  Json& step_entry(const std::string& name);
  void step_end(const std::string& name, const std::string& detail, const Json& extra = {});
  void step_fail(const std::string& name, const std::string& error);
  int run_steps(const std::string& first, bool reassert);
  bool abortable() const;
  void fail_run(const std::string& name, const std::string& error);
  void reassert_moving();
  int do_move(const Json& entry, const std::optional<std::string>& to, bool resume, bool abort,
              bool force, const std::optional<std::string>& mover);

  void step_preflight();
  void step_precopy();
  void step_moving();
  void step_kick();
  void step_copy();
  void step_verify();
  void step_switch();
  void step_report();
  int rollback(const std::string& reason);
  int abort_move();
  std::uint64_t kick_sessions();
  std::string kind() const;

  // The dsync mover.
  std::pair<const Node*, const Node*> dsync_pair();
  Json doveadm_request(const Node& node, const std::string& method, const std::optional<Json>& body,
                       double timeout);
  int doveadm_run(const Node& node, const std::string& command, const Json& parameters,
                  double timeout);
  std::string dsync_preflight(std::uint64_t counts);
  std::pair<int, double> dsync_pass(const Node& api, const Node& dst, double timeout, int pass_no,
                                    bool full);
  void dsync_precopy();
  void dsync_copy();
  void copy_with_command();
  bool full_sync_done_ = false;

  void copy_pass(Pair& pair, Json& totals, int pass_no, bool tolerant);
  void save_progress(bool force);
  std::string try_precheck();
  std::string precheck();
  struct Compared;
  Compared compare_folder(Pair& pair, const std::string& name, const std::string& target);

  template <class T>
  T run(boost::asio::awaitable<T> task);
  void finish_io();
  std::chrono::steady_clock::time_point activity_{};  // the watchdog's (run)
  std::set<imap::Session*> live_imap_;
  std::set<sieve::SieveSession*> live_sieve_;
  void run(boost::asio::awaitable<void> task);
  boost::asio::ssl::context* tls_for(const imap::Endpoint& endpoint);

  Config config_;
  Events* events_;
  std::unique_ptr<Directory> directory_;
  std::unique_ptr<Journal> journal_;
  std::string user_;
  std::optional<std::string> summary_;
  std::map<std::string, std::chrono::steady_clock::time_point> t0_;
  std::chrono::steady_clock::time_point last_progress_event_{}, last_progress_save_{};
  std::int64_t progress_messages_ = 0, progress_bytes_ = 0;  // this pass, last reported
  boost::asio::io_context io_;
  std::map<std::string, std::unique_ptr<boost::asio::ssl::context>> tls_;
  imap::PassCache copy_cache_;    // the copy passes' listings (CONDSTORE)
  imap::PassCache verify_cache_;  // the verification's own listings
  std::map<std::string, Json> checked_;  // folders found the same before the switch
  double precheck_seconds_ = 0;
};

// From a SIGINT or SIGTERM handler (async-signal-safe): the step under way
// fails as "interrupted", journaled and resumable.
void interrupt();

// The command line (`move`, `status`); returns the exit code.
int main_with(int argc, char** argv);

}  // namespace isthmus::moves::mover
