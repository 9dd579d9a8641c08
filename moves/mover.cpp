// isthmus-move: the journal, the events, the directories and the steps of
// a move (mover.hpp; the steps and texts of the Python mover it replaced).

#include "moves/mover.hpp"

#include "common/json_nesting.hpp"
#include "common/log.hpp"
#include "common/strings.hpp"
#include "ctl/text.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/ssl/context.hpp>
#include <fmt/format.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <set>
#include <sstream>
#include <thread>

namespace fs = std::filesystem;
namespace asio = boost::asio;

namespace isthmus::moves::mover {

namespace {

using steady = std::chrono::steady_clock;

constexpr int kMaxJournalDepth = 64;  // a journal nests 5 deep

std::string clean(std::string_view text) { return ctl::clean(text); }

double seconds_since(steady::time_point t0) {
  return std::chrono::duration<double>(steady::now() - t0).count();
}

double round3(double x) { return std::round(x * 1000) / 1000; }

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

int step_number(const std::string& name) {
  for (std::size_t i = 0; i < kSteps.size(); ++i)
    if (kSteps[i] == name) return static_cast<int>(i);
  return -1;
}
const int kLastStep = static_cast<int>(kSteps.size()) - 1;

std::string errno_text(int error) {
  std::string text = std::strerror(error);
  if (!text.empty()) text[0] = static_cast<char>(std::tolower(static_cast<unsigned char>(text[0])));
  return text;
}

// DATA to PATH: a temporary file in the same folder, fsync, rename, fsync
// of the folder. LIKE: that file's mode (and owner, as root).
void write_atomic(const std::string& path, const std::string& data, const std::string& like = {}) {
  const fs::path target(path);
  const fs::path folder = fs::absolute(target).parent_path();
  std::string tmpl = (folder / ("." + target.filename().string() + ".XXXXXX")).string();
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  const int fd = ::mkstemp(name.data());
  if (fd < 0) throw StepFailed(fmt::format("cannot write {}: {}", path, errno_text(errno)));
  const std::string tmp(name.data());
  bool good = true;
  std::size_t done = 0;
  while (good && done < data.size()) {
    const auto n = ::write(fd, data.data() + done, data.size() - done);
    if (n <= 0) good = false;
    else done += static_cast<std::size_t>(n);
  }
  const int error = errno;
  good = good && ::fsync(fd) == 0;
  struct stat st {};
  if (!like.empty() && ::stat(like.c_str(), &st) == 0) {
    ::fchmod(fd, st.st_mode & 07777);
    if (::geteuid() == 0 && ::fchown(fd, st.st_uid, st.st_gid) != 0) good = false;
  } else {
    ::fchmod(fd, 0600);
  }
  ::close(fd);
  if (!good || ::rename(tmp.c_str(), path.c_str()) != 0) {
    const int why = good ? errno : error;
    ::unlink(tmp.c_str());
    throw StepFailed(fmt::format("cannot write {}: {}", path, errno_text(why)));
  }
  const int dfd = ::open(folder.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw StepFailed(fmt::format("cannot read {}: {}", path, errno_text(errno)));
  std::vector<std::string> lines;
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(line);
  }
  return lines;
}

std::string read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// Ctrl-C or SIGTERM: the step under way fails as "interrupted" (journaled,
// resumable), as the Python mover's KeyboardInterrupt did.
volatile std::sig_atomic_t g_interrupted = 0;

void check_interrupted() {
  if (g_interrupted) throw StepFailed("interrupted");
}

// A pause that an interruption ends.
void pause_for(std::chrono::duration<double> how_long) {
  const auto until = steady::now() + std::chrono::duration_cast<steady::duration>(how_long);
  while (steady::now() < until) {
    check_interrupted();
    std::this_thread::sleep_for(std::min<steady::duration>(until - steady::now(),
                                                           std::chrono::milliseconds(100)));
  }
  check_interrupted();
}

// The test hooks of docs/move.md, "Testing" (never set in production).
void test_pause(const std::string& tag) {
  const char* base = std::getenv("ISTHMUS_MOVE_TEST_PAUSE_AT");
  if (base == nullptr || *base == '\0') return;
  const std::string gate = std::string(base) + "." + tag;
  std::ofstream(gate + ".waiting") << ::getpid();
  const auto deadline = steady::now() + std::chrono::seconds(120);
  while (!fs::exists(gate) && steady::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
}

std::uint64_t num(const Json& obj, const char* key) {
  auto it = obj.find(key);
  return it != obj.end() && it->is_number_unsigned() ? it->get<std::uint64_t>()
         : it != obj.end() && it->is_number_integer() && it->get<long long>() > 0
             ? static_cast<std::uint64_t>(it->get<long long>())
             : 0;
}

Json new_totals() {
  return Json{{"messages", 0}, {"bytes", 0},      {"flags", 0},   {"expunged", 0},
              {"vanished", 0}, {"kept_extra", 0}, {"already", 0}, {"folders", 0},
              {"created", 0},  {"subscribed", 0}};
}

std::uint64_t changes(const Json& t) {
  // A folder skipped (gone or busy on the source) makes another pass worth it.
  return num(t, "messages") + num(t, "flags") + num(t, "expunged") + num(t, "deleted_folders") +
         num(t, "skipped_folders");
}

std::string describe_pass(const Json& t) {
  std::string text = fmt::format("{} ({}) copied, {}, {}", plural(num(t, "messages"), "message"),
                                 show_bytes(num(t, "bytes")), plural(num(t, "flags"), "flag change"),
                                 plural(num(t, "expunged"), "expunge"));
  if (num(t, "unchanged"))
    text += fmt::format(", {} unchanged (CONDSTORE)", plural(num(t, "unchanged"), "folder"));
  if (num(t, "deleted_folders"))
    text += fmt::format(", {} deleted", plural(num(t, "deleted_folders"), "folder"));
  if (num(t, "vanished"))
    text += fmt::format(", {} expunged on the source while being copied", num(t, "vanished"));
  if (num(t, "skipped_folders"))
    text += fmt::format(", {} skipped for this pass (renamed, deleted or busy on the source)",
                        plural(num(t, "skipped_folders"), "folder"));
  if (num(t, "kept_extra"))
    text += fmt::format(", {} messages on the destination that are not on the source kept (a "
                        "--force merge)",
                        num(t, "kept_extra"));
  return text;
}

std::vector<std::string> strings_of(const Json& value) {
  std::vector<std::string> out;
  if (!value.is_array()) return out;
  for (const auto& v : value)
    if (v.is_string()) out.push_back(v.get<std::string>());
  return out;
}

// ------------------------------------------------------------------ directories

class InstanceDirectory : public Directory {
 public:
  explicit InstanceDirectory(const Config& config) {
    for (const auto& i : config.instances)
      if (config.directory.instance.empty() || i.name == config.directory.instance) {
        instance_ = i;
        break;
      }
    // A write is up to three directory round trips on the instance (look
    // up, write, read back): more time than a read.
    instance_.timeout = std::max(instance_.timeout, 30.0);
  }
  std::string kind() const override { return "isthmus"; }
  std::string describe() const override {
    return fmt::format("the directory of instance {}, written through its admin API", instance_.name);
  }
  std::string preflight(const std::string&) override {
    // Nothing is written here: the first write (state moving) is where a
    // missing right shows, and the user then stays active where they are.
    auto [status, body] = mover_->ask(instance_, "GET", "/v1/status");
    if (status != 200)
      throw StepFailed(fmt::format("instance {}: GET /v1/status answered HTTP {}", instance_.name,
                                   status));
    const std::string directory =
        body.contains("directory") && body["directory"].is_string() ? body["directory"].get<std::string>()
                                                                   : "?";
    if (!body.value("directory_writes", false))
      throw StepFailed(fmt::format(
          "instance {} does not write its {} directory (configure directory.sql.writes or "
          "directory.ldap.writes there, or use another directory type here)",
          instance_.name, clean(directory)));
    return fmt::format("instance {} writes its {} directory", instance_.name, clean(directory));
  }
  // The island too: a resumed run whose switch wrote the destination's
  // island before it failed puts the user back on the source, moving.
  std::string set_state(const std::string& user, const std::string& state,
                        const std::string& island, Json&) override {
    return fmt::format("island {} and state {} ({})", island, state,
                       write(user, Json{{"island", island}, {"state", state}}));
  }
  std::string switch_to(const std::string& user, const std::string& island, Json&) override {
    return fmt::format("island {} and state active ({})", island,
                       write(user, Json{{"island", island}, {"state", "active"}}));
  }
  std::string after_change(Mover& mover) override { return mover.invalidate_everywhere(); }

  Mover* mover_ = nullptr;

 private:
  std::string write(const std::string& user, const Json& body) {
    std::string path = "/v1/users/";
    for (char ch : user) {
      const auto b = static_cast<unsigned char>(ch);
      if (std::isalnum(b) || ch == '_' || ch == '.' || ch == '-' || ch == '~' || ch == '@')
        path += ch;
      else
        path += fmt::format("%{:02X}", b);
    }
    path += "/account";
    auto [status, answer] = mover_->ask(instance_, "POST", path, body);
    if (status != 200)
      throw StepFailed(fmt::format("instance {} did not write {} for {} (HTTP {}): {}",
                                   instance_.name, body.dump(), user, status,
                                   clean(answer.value("error", std::string()))));
    return clean(answer.contains("written") && answer["written"].is_string()
                     ? answer["written"].get<std::string>()
                     : std::string());
  }
  ctl::Instance instance_;
};

class StaticDirectory : public Directory {
 public:
  explicit StaticDirectory(const Config& config) : spec_(config.directory) {}
  std::string kind() const override { return "static"; }
  std::string describe() const override { return fmt::format("static directory ({})", files()); }
  std::string preflight(const std::string&) override {
    for (const auto& path : spec_.files) {
      read_lines(path);
      const auto folder = fs::absolute(path).parent_path();
      if (::access(folder.c_str(), W_OK) != 0)
        throw StepFailed(fmt::format("cannot write in the folder of {} (the map is replaced by a "
                                     "rename)",
                                     path));
    }
    return "the user map is writable";
  }
  std::string set_state(const std::string& user, const std::string& state,
                        const std::string& island, Json& journal) override {
    rewrite(user, island, state, journal);
    return fmt::format("{} {} state={} in {}", user, island, state, files());
  }
  std::string switch_to(const std::string& user, const std::string& island, Json& journal) override {
    rewrite(user, island, "active", journal);
    return fmt::format("{} {} in {}", user, island, files());
  }
  std::string after_change(Mover& mover) override {
    std::vector<Json> generations;
    try {
      generations = mover.reload_everywhere();
    } catch (const StepFailed&) {
      // An instance refused the new map: the old one goes back.
      for (const auto& [path, old] : undo_) write_atomic(path, old, path);
      try {
        mover.reload_everywhere();
      } catch (const MoveError&) {
      }
      throw;
    }
    return fmt::format("reloaded on {}; {}", plural(static_cast<long long>(generations.size()), "instance"),
                       mover.invalidate_everywhere());
  }

 private:
  std::string files() const {
    std::string out;
    for (const auto& f : spec_.files) out += (out.empty() ? "" : ", ") + f;
    return out;
  }
  void rewrite(const std::string& user, const std::string& island, const std::string& state,
               Json& journal) {
    // A name or island that would not read back as one field of its line
    // (a blank, a comment sign, a control character) is not written.
    for (const std::string* field : {&user, &island})
      for (char ch : *field)
        if (static_cast<unsigned char>(ch) <= 0x20 || ch == '#' || ch == 0x7f)
          throw StepFailed(fmt::format("{} cannot be written to a users.map line as it is "
                                       "(a blank, '#' or a control character)",
                                       ctl::repr(*field)));
    Json& saved = journal["static_original_lines"];
    if (!saved.is_object()) saved = Json::object();
    undo_.clear();
    for (const auto& path : spec_.files) {
      auto lines = read_lines(path);
      const std::string old = read_all(path);
      if (!saved.contains(path)) {
        auto i = find_user_line(lines, spec_, user);
        saved[path] = i ? Json(lines[*i]) : Json(nullptr);
      }
      std::optional<std::string> original;
      if (saved[path].is_string()) original = saved[path].get<std::string>();
      lines = edit_user_map(std::move(lines), spec_, user, island, state, original,
                            journal.value("from", std::string()));
      std::string text;
      for (const auto& l : lines) text += l + "\n";
      write_atomic(path, text, path);
      undo_.emplace_back(path, old);
    }
  }
  DirectorySpec spec_;
  std::vector<std::pair<std::string, std::string>> undo_;
};

}  // namespace

void interrupt() { g_interrupted = 1; }

// ------------------------------------------------------------------ events

void Events::emit(const Json& event) {
  const std::string line = encode_event(event);
  std::cout << line << std::flush;
}

void Events::journal_saved(const Json& data) {
  emit(Json{{"event", "journal"}, {"data", data}});
  if (ack_) wait_for_ack();
}

void Events::wait_for_ack() {
  const auto deadline = steady::now() + std::chrono::duration<double>(kAckTimeout);
  std::string why;
  while (ack_buffer_.find('\n') == std::string::npos) {
    const double left = std::chrono::duration<double>(deadline - steady::now()).count();
    if (left <= 0) {
      why = "no answer in " + show_seconds(kAckTimeout);
      break;
    }
    pollfd p{0, POLLIN, 0};
    const int ready = ::poll(&p, 1, static_cast<int>(std::ceil(left * 1000)));
    if (ready < 0 && errno != EINTR) {
      why = "its input failed";
      break;
    }
    if (ready <= 0) continue;
    char chunk[4096];
    const auto n = ::read(0, chunk, sizeof chunk);
    if (n <= 0) {
      why = "its input ended";
      break;
    }
    ack_buffer_.append(chunk, static_cast<std::size_t>(n));
  }
  const auto end = ack_buffer_.find('\n');
  const std::string line = ack_buffer_.substr(0, end);
  ack_buffer_.erase(0, end == std::string::npos ? ack_buffer_.size() : end + 1);
  if (!why.empty() || !line.starts_with("stored"))
    throw StepFailed(fmt::format(
        "the daemon did not confirm that it stored the journal ({}); stopping here so that a "
        "take-over resumes from where this run is",
        why.empty() ? "it answered something else" : why));
}

void Events::finish(int code, const std::string& text, const Json& interruption) {
  if (finished_) return;
  finished_ = true;
  emit(Json{{"event", "finished"}, {"exit", code}, {"text", text},
            {"interruption_seconds", interruption}});
}

// ------------------------------------------------------------------ the journal

Journal::Journal(const std::string& directory, const std::string& user,
                 const std::optional<std::string>& file) {
  if (file) {
    directory_ = fs::absolute(*file).parent_path().string();
    path_ = *file;
    lock_path_ = *file + ".lock";
    return;
  }
  directory_ = directory;
  std::string safe;  // as Python's urllib.parse.quote(user, safe="@.-_+")
  for (char ch : user) {
    const auto b = static_cast<unsigned char>(ch);
    if (std::isalnum(b) || std::strchr("@.-_+~", ch) != nullptr) safe += ch;
    else safe += fmt::format("%{:02X}", b);
  }
  path_ = (fs::path(directory) / (safe + ".json")).string();
  lock_path_ = (fs::path(directory) / (safe + ".lock")).string();
}

Journal::~Journal() {
  if (lock_fd_ >= 0) ::close(lock_fd_);
}

void Journal::open() {
  std::error_code error;
  const bool created = fs::create_directories(directory_, error);
  if (error)
    throw UsageError(fmt::format("cannot create the journal folder {}: {}", directory_,
                                 error.message()));
  if (created) ::chmod(directory_.c_str(), 0700);  // a folder that was there keeps its mode
  const int fd = ::open(lock_path_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0)
    throw UsageError(fmt::format("cannot open {}: {}", lock_path_, errno_text(errno)));
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    const int why = errno;
    ::close(fd);
    if (why == EWOULDBLOCK)
      throw StepFailed(fmt::format("another move of this user is running (it holds {})",
                                   lock_path_));
    throw StepFailed(fmt::format("cannot lock {}: {}", lock_path_, errno_text(why)));
  }
  lock_fd_ = fd;
  auto loaded = load();
  data = loaded ? *loaded : Json(nullptr);
}

std::optional<Json> Journal::load() const {
  std::ifstream in(path_, std::ios::binary);
  if (!in) {
    if (errno == ENOENT || !fs::exists(path_)) return std::nullopt;
    throw UsageError(fmt::format("the journal {} cannot be read ({}); move it away to start over",
                                 path_, errno_text(errno)));
  }
  std::ostringstream text;
  text << in.rdbuf();
  const std::string body = text.str();
  // The journal is ours, but a damaged or planted one must not crash the
  // mover: nlohmann's parser and every copy of the result recurse per level.
  Json parsed = json_nesting_within(body, kMaxJournalDepth) ? Json::parse(body, nullptr, false)
                                                            : Json(Json::value_t::discarded);
  if (parsed.is_discarded() || !parsed.is_object())
    throw UsageError(fmt::format("the journal {} cannot be read (not a JSON object); move it away "
                                 "to start over",
                                 path_));
  return parsed;
}

void Journal::save() {
  data["updated"] = now_iso();
  write_atomic(path_, data.dump(2, ' ', false, Json::error_handler_t::replace) + "\n");
  if (on_save) on_save(data);
}

// ------------------------------------------------------------------ the mover

// Open node sessions are known to the watchdog (run) while they live.
template <class S>
struct Mover::SessionPair {
  std::set<S*>* live = nullptr;  // the watchdog's registry these sessions are in
  std::unique_ptr<S> src, dst;
  SessionPair() = default;
  SessionPair(SessionPair&&) = default;
  SessionPair& operator=(SessionPair&&) = delete;
  ~SessionPair() {
    if (live == nullptr) return;
    live->erase(src.get());
    live->erase(dst.get());
  }
};

struct Mover::Compared {
  std::vector<std::string> problems;
  Json entry;
  std::uint64_t bytes = 0;
  std::optional<imap::Signature> src_signature, dst_signature;
};

Mover::Mover(Config config, Events* events) : config_(std::move(config)), events_(events) {
  if (config_.directory.type == "static") {
    directory_ = std::make_unique<StaticDirectory>(config_);
  } else {
    auto d = std::make_unique<InstanceDirectory>(config_);
    d->mover_ = this;
    directory_ = std::move(d);
  }
}

Mover::~Mover() = default;

// The io_context runs until the task is done, not until it has no work
// left: the deadline wheel (common/deadline.hpp) ticks every 50 ms while a
// guard waits, and waiting for its last tick would add up to 50 ms to every
// step. What became ready meanwhile (cancelled waits) runs before return.
void Mover::finish_io() {
  io_.restart();
  io_.poll();
}

// Every node call runs under a watchdog: a call that reports no progress
// (activity_: its start, then each batch and folder of a copy pass) for
// twice imap_timeout plus 30 s aborts every open node session, so a node
// that trickles a byte a minute (each read within imap_timeout) cannot keep
// a user locked out. The io_context runs until the task is done.
template <class T>
T Mover::run(asio::awaitable<T> task) {
  const double silence = 2 * config_.imap_timeout + 30;
  std::optional<T> out;
  std::exception_ptr error;
  bool done = false, hung = false;
  activity_ = steady::now();
  asio::steady_timer timer(io_);
  std::function<void()> arm = [&] {
    timer.expires_after(std::chrono::seconds(1));
    timer.async_wait([&](boost::system::error_code ec) {
      if (ec || done) return;
      if (g_interrupted) {
        for (auto* s : live_imap_) s->abort("interrupted");
        for (auto* s : live_sieve_) s->abort("interrupted");
        return;
      }
      if (seconds_since(activity_) > silence) {
        hung = true;
        const std::string why = fmt::format("no progress for {}: stopped", show_seconds(silence));
        for (auto* s : live_imap_) s->abort(why);
        for (auto* s : live_sieve_) s->abort(why);
        return;
      }
      arm();
    });
  };
  io_.restart();
  arm();
  asio::co_spawn(io_, std::move(task), [&](std::exception_ptr e, T value) {
    done = true;
    timer.cancel();
    if (e) error = e;
    else out = std::move(value);
    io_.stop();
  });
  io_.run();
  finish_io();  // the cancelled watchdog's wait ends here, while its captures live
  check_interrupted();
  if (hung)
    throw StepFailed(fmt::format("no progress from the nodes for {} (a node that stopped "
                                 "answering, or answers too slowly): stopped",
                                 show_seconds(silence)));
  if (error) std::rethrow_exception(error);
  return std::move(*out);
}

namespace {
asio::awaitable<bool> as_bool(asio::awaitable<void> task) {
  co_await std::move(task);
  co_return true;
}
}  // namespace

void Mover::run(asio::awaitable<void> task) { run(as_bool(std::move(task))); }

asio::ssl::context* Mover::tls_for(const imap::Endpoint& endpoint) {
  if (endpoint.tls == config::TlsMode::none) return nullptr;
  auto& ctx = tls_[endpoint.name];
  if (!ctx) {
    try {
      ctx = imap::make_node_tls_context(endpoint.ca_file);
    } catch (const std::exception& e) {
      throw StepFailed(fmt::format("node {}: TLS: {}", endpoint.describe(), e.what()));
    }
  }
  return ctx.get();
}

Json Mover::interruption() const {
  if (!journal_ || !journal_->data.is_object()) return nullptr;
  return journal_->data.value("interruption_seconds", Json(nullptr));
}

// -- output

void Mover::say(const std::string& text) {
  if (events_ != nullptr) events_->emit(Json{{"event", "say"}, {"text", text}});
  else std::cout << text << '\n' << std::flush;
}

void Mover::complain(const std::string& text) {
  if (events_ != nullptr) {
    std::size_t start = 0;
    while (true) {
      const auto end = text.find('\n', start);
      events_->emit(Json{{"event", "say"},
                         {"text", text.substr(start, end == std::string::npos ? end : end - start)},
                         {"stream", "stderr"}});
      if (end == std::string::npos) break;
      start = end + 1;
    }
  } else {
    std::cerr << text << '\n' << std::flush;
  }
  std::string first = text.substr(0, text.find('\n'));
  if (first.starts_with("isthmus-move: ")) first = first.substr(14);
  summary_ = first;
}

void Mover::event(const Json& e) {
  if (events_ != nullptr) events_->emit(e);
}

void Mover::announce(bool resume, bool abort) {
  const Json& data = journal_->data;
  Json e{{"event", "started"},
         {"user", user_},
         {"from", data.value("from", Json("")).is_string() ? data.value("from", std::string()) : ""},
         {"to", data.value("to", Json(nullptr))},
         {"mover", data.value("mover", std::string("imap"))},
         {"resume", resume}};
  if (abort) e["abort"] = true;
  event(e);
}

void Mover::progress(int pass, const imap::PassProgress& p, bool last) {
  if (events_ == nullptr) return;
  const auto now = steady::now();
  if (!last && seconds_since(last_progress_event_) < kProgressInterval) return;
  last_progress_event_ = now;
  events_->emit(Json{{"event", "progress"},
                     {"step", journal_->data.value("current_step", Json(nullptr))},
                     {"pass", pass},
                     {"folders_done", p.folders_done},
                     {"folders", p.folders},
                     {"messages", p.messages},
                     {"bytes", p.bytes},
                     {"bytes_total", p.bytes_total}});
}

// -- instances

std::pair<int, Json> Mover::ask(const ctl::Instance& instance, const std::string& method,
                                const std::string& path, const std::optional<Json>& body) {
  ctl::AdminRequest request{method, path, body, true};
  auto reply = ctl::ask(instance, request);
  if (!reply.status || reply.kind == ctl::ReplyKind::auth)
    throw Unreachable(fmt::format("instance {}: {}", instance.label(), reply.error));
  Json answer = reply.body.is_object() ? reply.body : Json::object();
  if (!reply.ok() && !answer.contains("error") && reply.message)
    answer["error"] = *reply.message;
  if (!reply.ok() && !answer.contains("error")) answer["error"] = reply.error;
  return {*reply.status, answer};
}

std::vector<std::pair<int, Json>> Mover::ask_all(const std::string& method,
                                                 const std::string& path,
                                                 const std::optional<Json>& body) {
  ctl::AdminRequest request{method, path, body, true};
  auto replies = ctl::ask_all(config_.instances, request);
  std::vector<std::string> problems;
  std::vector<std::pair<int, Json>> out;
  for (const auto& reply : replies) {
    if (!reply.status || reply.kind == ctl::ReplyKind::auth) {
      problems.push_back(fmt::format("instance {}: {}", reply.instance->label(), reply.error));
      continue;
    }
    Json answer = reply.body.is_object() ? reply.body : Json::object();
    if (!reply.ok() && !answer.contains("error"))
      answer["error"] = reply.message ? *reply.message : reply.error;
    out.emplace_back(*reply.status, answer);
  }
  if (!problems.empty()) {
    std::sort(problems.begin(), problems.end());
    std::string text;
    for (const auto& p : problems) text += (text.empty() ? "" : "; ") + p;
    throw Unreachable(text);
  }
  return out;
}

std::string Mover::invalidate_everywhere() {
  auto replies = ask_all("POST", "/v1/cache/invalidate", Json{{"user", user_}});
  std::string bad;
  std::size_t cached = 0;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    const auto& [status, body] = replies[i];
    if (status == 200) ++cached;
    else if (status != 409)
      bad += fmt::format("{}{}: HTTP {} {}", bad.empty() ? "" : "; ", config_.instances[i].name,
                         status, clean(body.value("error", std::string())));
  }
  if (!bad.empty()) throw StepFailed("cache invalidation refused: " + bad);
  return cached ? fmt::format("cache entry dropped on {}", plural(static_cast<long long>(cached), "instance"))
                : "no instance caches the directory";
}

std::vector<Json> Mover::reload_everywhere() {
  auto replies = ask_all("POST", "/v1/reload");
  std::string bad;
  std::vector<Json> generations;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    const auto& [status, body] = replies[i];
    if (status != 200)
      bad += fmt::format("{}{}: {}", bad.empty() ? "" : "; ", config_.instances[i].name,
                         clean(body.value("error", fmt::format("HTTP {}", status))));
    generations.push_back(body.value("config_generation", Json(nullptr)));
  }
  if (!bad.empty()) throw StepFailed("reload refused (the old map stays): " + bad);
  return generations;
}

std::vector<Json> Mover::user_everywhere() {
  auto replies = ask_all("GET", "/v1/users/" + ctl::percent_encode(user_));
  std::vector<Json> out;
  for (auto& [status, body] : replies) {
    if (status == 200) out.push_back(body);
    else out.push_back(Json{{"error", body.value("error", fmt::format("HTTP {}", status))},
                            {"status", status}});
  }
  return out;
}

std::string Mover::confirm(const std::string& island, const std::string& state) {
  const auto deadline = steady::now() + std::chrono::duration<double>(config_.confirm_timeout);
  while (true) {
    auto answers = user_everywhere();
    std::string detail;
    for (std::size_t i = 0; i < answers.size(); ++i) {
      const Json& a = answers[i];
      if (a.value("island", Json()) == Json(island) && a.value("state", Json()) == Json(state))
        continue;
      detail += (detail.empty() ? "" : "; ") + config_.instances[i].name + ": " +
                (a.contains("error") ? clean(a["error"].is_string() ? a["error"].get<std::string>()
                                                                    : a["error"].dump())
                                     : fmt::format("island {}, state {}",
                                                   clean(a.value("island", Json()).dump()),
                                                   clean(a.value("state", Json()).dump())));
    }
    if (detail.empty())
      return fmt::format("every instance answers island {}, state {}", island, state);
    if (steady::now() >= deadline)
      throw StepFailed(fmt::format("instances do not answer island {}, state {} after {}: {}",
                                   island, state, show_seconds(config_.confirm_timeout), detail));
    pause_for(std::chrono::milliseconds(200));
    invalidate_everywhere();
  }
}

// -- nodes

std::vector<const Node*> Mover::candidates(const std::string& island) {
  Json islands, nodes;
  std::vector<std::string> problems;
  bool got = false;
  for (const auto& inst : config_.instances) {
    try {
      auto a = ask(inst, "GET", "/v1/islands");
      auto b = ask(inst, "GET", "/v1/nodes");
      islands = a.second;
      nodes = b.second;
      got = true;
      break;
    } catch (const Unreachable& e) {
      problems.push_back(e.what());
    }
  }
  if (!got) {
    std::string text;
    for (const auto& p : problems) text += (text.empty() ? "" : "; ") + p;
    throw Unreachable("no instance answers: " + text);
  }
  const Json* info = nullptr;
  std::string names;
  const Json island_list = islands.value("islands", Json::array());  // info points into it
  for (const auto& i : island_list) {
    if (!i.is_object()) continue;
    names += (names.empty() ? "" : ", ") + clean(i.value("name", std::string("?")));
    if (i.value("name", Json()) == Json(island)) info = &i;
  }
  if (info == nullptr)
    throw UsageError(fmt::format("island {} is not in the instances' config (islands: {})",
                                 ctl::repr(island), names));
  const Json holder = info->value("holder", Json());
  std::vector<std::pair<std::array<int, 3>, std::string>> order;
  for (const auto& n : nodes.value("nodes", Json::array())) {
    if (!n.is_object() || n.value("island", Json()) != Json(island) ||
        n.value("state", Json()) == Json("down") || !n.contains("name") || !n["name"].is_string())
      continue;
    std::array<int, 3> rank{
        n["name"] == holder || n.value("role", Json()) == Json("active") ? 0 : 1,
        n.value("draining", false) ? 1 : 0, n.value("state", Json()) == Json("up") ? 0 : 1};
    order.emplace_back(rank, n["name"].get<std::string>());
  }
  std::sort(order.begin(), order.end());
  std::vector<const Node*> out;
  std::string missing;
  for (const auto& [rank, name] : order) {
    auto it = config_.nodes.find(name);
    if (it != config_.nodes.end()) out.push_back(&it->second);
    else missing += (missing.empty() ? "" : ", ") + clean(name);
  }
  if (out.empty()) {
    if (!missing.empty()) throw UsageError(fmt::format("no IMAP address for {} in move.nodes", missing));
    throw StepFailed(fmt::format("island {} has no node up", island));
  }
  return out;
}

std::unique_ptr<imap::Session> Mover::connect(const std::string& island) {
  std::string problems;
  const std::string login = journal_->data.value("node_login", user_);
  const auto timeout = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config_.imap_timeout));
  for (const Node* node : candidates(island)) {
    try {
      return run(imap::Session::open(node->imap, tls_for(node->imap), config_.login, login, timeout,
                                     "isthmus-move"));
    } catch (const imap::ImapError& e) {
      problems += (problems.empty() ? "" : "; ") + std::string(e.what());
    } catch (const StepFailed& e) {
      problems += (problems.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  throw StepFailed(fmt::format("no node of island {} could be used: {}", island, problems));
}

std::unique_ptr<sieve::SieveSession> Mover::sieve_connect(const std::string& island,
                                                          const std::vector<const Node*>& nodes) {
  std::string problems;
  bool any = false;
  const std::string login = journal_->data.value("node_login", user_);
  const auto timeout = std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(config_.imap_timeout));
  for (const Node* node : nodes) {
    if (!node->sieve) continue;
    any = true;
    try {
      return run(sieve::SieveSession::open(*node->sieve, tls_for(*node->sieve), config_.login,
                                           login, timeout, "isthmus-move"));
    } catch (const imap::ImapError& e) {
      problems += (problems.empty() ? "" : "; ") + std::string(e.what());
    } catch (const StepFailed& e) {
      problems += (problems.empty() ? "" : "; ") + std::string(e.what());
    }
  }
  if (!any) return nullptr;
  throw StepFailed(fmt::format("no node of island {} could be used for the Sieve scripts: {}",
                               island, problems));
}

namespace {

bool any_sieve(const std::vector<const Node*>& nodes) {
  return std::any_of(nodes.begin(), nodes.end(), [](const Node* n) { return n->sieve.has_value(); });
}

// Scripts are moved when both islands' nodes have a managesieve address,
// and not at all when neither has one; with one side only, they would be
// left behind silently: refused.
void check_sieve_sides(const std::string& from, const std::vector<const Node*>& src,
                       const std::string& to, const std::vector<const Node*>& dst) {
  const bool s = any_sieve(src), d = any_sieve(dst);
  if (s == d) return;
  throw StepFailed(fmt::format(
      "the Sieve scripts cannot be moved: in move.nodes, the nodes of island {} have a "
      "managesieve address and those of island {} do not. Give both islands' nodes one (or "
      "neither: then no script moves)",
      s ? from : to, s ? to : from));
}

}  // namespace

std::optional<Mover::SievePair> Mover::sieve_pair() {
  const std::string from = journal_->data.value("from", std::string());
  const std::string to = journal_->data.value("to", std::string());
  const auto src_nodes = candidates(from);
  const auto dst_nodes = candidates(to);
  check_sieve_sides(from, src_nodes, to, dst_nodes);
  SievePair pair;
  pair.live = &live_sieve_;
  pair.src = sieve_connect(from, src_nodes);
  if (!pair.src) return std::nullopt;
  live_sieve_.insert(pair.src.get());
  pair.dst = sieve_connect(to, dst_nodes);
  if (!pair.dst) return std::nullopt;
  live_sieve_.insert(pair.dst.get());
  return pair;
}

Json Mover::copy_sieve() {
  auto pair = sieve_pair();
  if (!pair)
    return Json{{"copied", nullptr},
                {"text", "Sieve scripts not moved (no managesieve address in move.nodes)"}};
  sieve::CopyResult done;
  try {
    done = run(sieve::copy_scripts(*pair->src, *pair->dst));
    run(pair->src->logout());
    run(pair->dst->logout());
  } catch (const imap::ImapError& e) {
    throw StepFailed(fmt::format("copying the Sieve scripts: {}", e.what()));
  }
  std::string text = fmt::format("Sieve: {} ({} written), active: {}",
                                 plural(static_cast<long long>(done.copied.size() + done.unchanged.size()), "script"),
                                 done.copied.size(), clean(done.active.value_or("none")));
  if (!done.extra.empty()) {
    std::string extra;
    for (const auto& e : done.extra) extra += (extra.empty() ? "" : ", ") + clean(e);
    text += ", left alone on the destination: " + extra;
  }
  return Json{{"copied", done.copied},
              {"unchanged", done.unchanged},
              {"active", done.active ? Json(*done.active) : Json(nullptr)},
              {"extra", done.extra},
              {"text", text}};
}

Mover::Pair Mover::open_pair() {
  Pair pair;
  pair.live = &live_imap_;
  pair.src = connect(journal_->data["from"].get<std::string>());
  live_imap_.insert(pair.src.get());
  pair.dst = connect(journal_->data["to"].get<std::string>());
  live_imap_.insert(pair.dst.get());
  return pair;
}

// -- journal helpers

// The journal entry of step NAME, looked up again at each use: a reference
// kept across a change of the journal (an ordered JSON object) would dangle.
Json& Mover::step_entry(const std::string& name) { return journal_->data["steps"][name]; }

void Mover::step_start(const std::string& name) {
  Json& steps = journal_->data["steps"];
  if (!steps.contains(name)) steps[name] = Json{{"status", "pending"}};
  Json& step = steps[name];
  step["status"] = "running";
  step["started"] = now_iso();
  step["attempts"] = step.value("attempts", 0) + 1;
  step.erase("error");
  step.erase("ended");
  t0_[name] = steady::now();
  journal_->data["current_step"] = name;
  journal_->save();
  const int n = step_number(name);
  event(Json{{"event", "step"}, {"number", n}, {"name", name}, {"status", "started"},
             {"text", fmt::format("[{}/{}] {}", n, kLastStep, name)}, {"seconds", 0.0}});
}

void Mover::step_end(const std::string& name, const std::string& detail, const Json& extra) {
  Json& step = journal_->data["steps"][name];
  step["status"] = "done";
  step["ended"] = now_iso();
  step["seconds"] = round3(seconds_since(t0_[name]));
  t0_.erase(name);
  step["detail"] = detail;
  if (extra.is_object())
    for (const auto& [k, v] : extra.items()) step[k] = v;
  journal_->save();
  const int n = step_number(name);
  const double seconds = journal_->data["steps"][name]["seconds"].get<double>();
  const std::string text =
      fmt::format("[{}/{}] {}: {} ({})", n, kLastStep, name, detail, show_seconds(seconds));
  if (events_ != nullptr)
    events_->emit(Json{{"event", "step"}, {"number", n}, {"name", name}, {"status", "done"},
                       {"text", text}, {"seconds", seconds}});
  else
    say(text);
}

void Mover::step_fail(const std::string& name, const std::string& error) {
  Json& steps = journal_->data["steps"];
  // A step that never started (its resumed run's re-assertion failed) is
  // not added: a "switch" entry would make the move look unabortable.
  Json absent = Json::object();
  Json& step = steps.contains(name) ? steps[name] : absent;
  step["status"] = "failed";
  step["ended"] = now_iso();
  if (t0_.contains(name)) {
    step["seconds"] = round3(seconds_since(t0_[name]));
    t0_.erase(name);
  }
  step["error"] = error;
  const double seconds = step.value("seconds", 0.0);
  journal_->save();
  const int n = step_number(name);
  event(Json{{"event", "step"}, {"number", n}, {"name", name}, {"status", "failed"},
             {"text", fmt::format("[{}/{}] {}: FAILED: {}", n, kLastStep, name, error)},
             {"seconds", seconds}});
}

// -- entry points

Json Mover::lookup(const std::string& raw_user) {
  std::vector<std::string> problems;
  for (const auto& inst : config_.instances) {
    std::pair<int, Json> answer;
    try {
      answer = ask(inst, "GET", "/v1/users/" + ctl::percent_encode(raw_user));
    } catch (const Unreachable& e) {
      problems.push_back(e.what());
      continue;
    }
    auto& [status, body] = answer;
    if (status == 404) throw StepFailed(fmt::format("the directory does not know {}", clean(raw_user)));
    if (status != 200 || !body.contains("user") || !body["user"].is_string())
      throw StepFailed(fmt::format("cannot look {} up: {}", clean(raw_user),
                                   clean(body.value("error", fmt::format("HTTP {}", status)))));
    return body;
  }
  std::string text;
  for (const auto& p : problems) text += (text.empty() ? "" : "; ") + p;
  throw Unreachable("no instance answers: " + text);
}

int Mover::status(const std::string& raw_user) {
  std::string user = raw_user;
  try {
    user = lookup(raw_user)["user"].get<std::string>();
  } catch (const MoveError&) {
  }
  Journal journal(config_.journal_dir, user, std::nullopt);
  auto data = journal.load();
  if (!data) {
    say(fmt::format("no move of {} is journaled in {}", clean(user), config_.journal_dir));
    return kExitOk;
  }
  say(fmt::format("move of {}: {} -> {}, {}, {} mover (journal {})", clean(user),
                  clean(data->value("from", Json()).dump()), clean(data->value("to", Json()).dump()),
                  clean(data->value("status", Json()).dump()),
                  clean(data->value("mover", std::string("imap"))), journal.path()));
  const Json steps = data->value("steps", Json::object());
  for (const auto& name : kSteps) {
    if (!steps.contains(name) || !steps[name].is_object()) continue;
    const Json& s = steps[name];
    std::string note = s.contains("error")    ? clean(s["error"].dump())
                       : s.contains("detail") ? clean(s.value("detail", std::string()))
                                              : "";
    say(fmt::format("  {} {:<9} {:<8} {:>7}  {}", step_number(name), name,
                    clean(s.value("status", std::string())),
                    s.contains("seconds") ? show_seconds(s["seconds"]) : "", note));
  }
  return kExitOk;
}

int Mover::move(const std::string& raw_user, const std::optional<std::string>& to, bool resume,
                bool abort, bool force, const std::optional<std::string>& mover,
                const std::optional<std::string>& journal_file) {
  const Json entry = lookup(raw_user);
  user_ = entry["user"].get<std::string>();
  journal_ = std::make_unique<Journal>(config_.journal_dir, user_, journal_file);
  if (events_ != nullptr) journal_->on_save = [this](const Json& d) { events_->journal_saved(d); };
  journal_->open();
  const Json& data = journal_->data;
  if (journal_file && data.is_object() && data.value("user", Json()) != Json(user_))
    throw UsageError(fmt::format("the journal {} is of a move of {}, not of {}", *journal_file,
                                 clean(data.value("user", Json()).dump()), user_));
  return do_move(entry, to, resume, abort, force, mover);
}

int Mover::do_move(const Json& entry, const std::optional<std::string>& to, bool resume,
                   bool abort, bool force, const std::optional<std::string>& mover) {
  Json& data = journal_->data;
  const std::string& user = user_;
  const std::string status = data.is_object() ? data.value("status", std::string()) : "";
  if (status == "running" || status == "rolling-back" || status == "aborting") {
    const std::string kind = data.value("mover", std::string("imap"));
    if (mover && *mover != kind)
      throw UsageError(fmt::format("the unfinished move of {} runs with the {} mover (journal {}): "
                                   "resume it without --mover",
                                   user, kind, journal_->path()));
    const std::string dest = data.value("to", std::string());
    if (to && *to != dest)
      throw UsageError(fmt::format(
          "a move of {} to island {} is unfinished (journal {}): {}", user, dest, journal_->path(),
          status == "aborting" ? std::string("finish its abort with --abort first")
                               : std::string("resume it with --resume") +
                                     (abortable() ? ", or --abort it first" : "")));
    if (status == "aborting") {
      if (resume)
        throw UsageError(fmt::format(
            "the move of {} is being aborted (an earlier --abort did not finish): it cannot be "
            "resumed; finish the abort with --abort, then start a new move with --to {} (journal "
            "{})",
            user, dest, journal_->path()));
      announce(resume, true);
      say(fmt::format("finishing the abort of the move of {} (journal {})", user, journal_->path()));
      return abort_move();
    }
    if (abort) {
      announce(false, true);
      return abort_move();
    }
    if (status == "rolling-back") {
      announce(true);
      say(fmt::format("finishing the rollback of the move of {} (journal {})", user,
                      journal_->path()));
      return rollback(data.value("rollback_reason", std::string("an earlier run")));
    }
    std::string first;
    for (const auto& s : kSteps)
      if (!data["steps"].contains(s) || data["steps"][s].value("status", std::string()) != "done") {
        first = s;
        break;
      }
    if (first.empty()) first = kSteps.back();
    announce(true);
    say(fmt::format("resuming the move of {} from island {} to {} at step {} (journal {})", user,
                    data.value("from", std::string()), dest, first, journal_->path()));
    data["runs"] = data.value("runs", 1) + 1;
    data["pid"] = ::getpid();
    // The user may have been set active meanwhile: state moving again,
    // confirmed, sessions kicked before copying, verifying or switching.
    const bool reassert = first == "kick" || first == "copy" || first == "verify" || first == "switch";
    return run_steps(first, reassert);
  }
  if (abort)
    throw UsageError(fmt::format("no unfinished move of {} to abort{}", user,
                                 data.is_object() ? fmt::format(" (the last one is {})", status) : ""));
  if (data.is_object() && status == "done" && (!to || *to == data.value("to", std::string())) &&
      entry.value("island", Json()) == data.value("to", Json()) &&
      entry.value("state", Json()) == Json("active")) {
    summary_ = fmt::format("{} was moved to island {} already (finished {}): nothing to do", user,
                           data.value("to", std::string()), data.value("finished", std::string("?")));
    say(*summary_);
    return kExitOk;
  }
  if (resume) {
    if (!data.is_object())
      throw UsageError(fmt::format("no move of {} to resume (no journal in {})", user,
                                   config_.journal_dir));
    throw UsageError(fmt::format("the last move of {} is {}, not unfinished: start a new one with "
                                 "--to ISLAND",
                                 user, status));
  }
  if (!to) throw UsageError("say where to: --to ISLAND");
  if (entry.value("island", Json()) == Json(*to) && entry.value("state", Json()) == Json("active")) {
    summary_ = fmt::format("{} is on island {} already: nothing to do", user, *to);
    say(*summary_);
    return kExitOk;
  }
  Json history = Json::array();
  if (data.is_object()) {
    if (data.contains("history") && data["history"].is_array()) history = data["history"];
    Json past = Json::object();
    for (const char* k : {"from", "to", "status", "created", "finished", "error", "mover"})
      past[k] = data.value(k, Json(nullptr));
    history.push_back(past);
  }
  const std::string kind = mover.value_or(config_.mover);
  if (kind == "dsync" && !config_.copier.empty())
    throw UsageError("the dsync mover and move.copier exclude each other");
  const Json from = entry.value("island", Json(nullptr));
  const std::string node_login = entry.contains("node_login") && entry["node_login"].is_string() &&
                                         !entry["node_login"].get_ref<const std::string&>().empty()
                                     ? entry["node_login"].get<std::string>()
                                     : user;
  journal_->data = Json{{"version", 1},
                        {"user", user},
                        {"from", from},
                        {"to", *to},
                        {"mover", kind},
                        {"node_login", node_login},
                        {"directory", directory_->kind()},
                        {"status", "running"},
                        {"created", now_iso()},
                        {"pid", ::getpid()},
                        {"runs", 1},
                        {"force", force},
                        {"steps", Json::object()},
                        {"copy", Json{{"messages", 0}, {"bytes", 0}, {"folders", Json::object()}}},
                        {"history", history},
                        {"program", "isthmus-move"}};
  announce(false);
  say(fmt::format("moving {} from island {} to {} with the {} mover (isthmus-move, {}, {})", user,
                  from.is_string() ? from.get<std::string>() : from.dump(), *to, kind,
                  directory_->describe(),
                  plural(static_cast<long long>(config_.instances.size()), "instance")));
  return run_steps("preflight", false);
}

int Mover::run_steps(const std::string& first, bool reassert) {
  Json& data = journal_->data;
  for (int n = step_number(first); n <= kLastStep; ++n) {
    const std::string name = kSteps[static_cast<std::size_t>(n)];
    try {
      check_interrupted();
      if (reassert) {
        // Before step_start: a failure here has not started the step.
        reassert = false;
        reassert_moving();
      }
      step_start(name);
      if (name == "preflight") step_preflight();
      else if (name == "precopy") step_precopy();
      else if (name == "moving") step_moving();
      else if (name == "kick") step_kick();
      else if (name == "copy") step_copy();
      else if (name == "verify") step_verify();
      else if (name == "switch") step_switch();
      else step_report();
    } catch (const VerifyFailed& e) {
      step_fail(name, e.what());
      data["verify_report"] = e.report;
      if (events_ == nullptr) say(fmt::format("[{}/{}] {}: FAILED: {}", n, kLastStep, name, e.what()));
      return rollback(e.what());
    } catch (const MoveError& e) {
      fail_run(name, e.what());
      return e.code;
    } catch (const imap::ImapError& e) {
      fail_run(name, e.what());
      return kExitStep;
    } catch (const std::exception& e) {
      fail_run(name, fmt::format("unexpected error: {}", e.what()));
      return kExitStep;
    }
  }
  return kExitOk;
}

bool Mover::abortable() const {
  return !journal_->data.value("steps", Json::object()).contains("switch");
}

void Mover::fail_run(const std::string& name, const std::string& error_in) {
  std::string error = error_in;
  Json& data = journal_->data;
  try {
    step_fail(name, error);
  } catch (const std::exception& e) {
    error += fmt::format(" (and the journal could not be written: {})", e.what());
  }
  if (name == "preflight") {
    try {
      data["status"] = "refused";
      data["error"] = error;
      journal_->save();
    } catch (const std::exception&) {
    }
    complain("isthmus-move: preflight failed, nothing was changed: " + error);
    return;
  }
  const std::string source = data.value("from", std::string()), dest = data.value("to", std::string());
  std::string where;
  if (!abortable()) {
    where = fmt::format("the directory may already route {} to island {}: run --resume to finish "
                        "(it cannot be aborted any more)",
                        user_, dest);
  } else if (name == "precopy") {
    where = fmt::format("{} is still active on island {} (the pre-copy does not interrupt them): "
                        "fix the cause and run again with --resume (the pre-copy starts over, "
                        "without copying anything twice), or --abort to give the move up",
                        user_, source);
  } else if (name == "moving") {
    where = fmt::format("{} may be in state moving on island {} (logins refused, mail queued): fix "
                        "the cause and run again with --resume, or --abort to put the user back "
                        "(active on island {})",
                        user_, source, source);
  } else {
    where = fmt::format("{} stays in state moving on island {} (logins refused, mail queued): fix "
                        "the cause and run again with --resume, or --abort to put the user back "
                        "(active on island {})",
                        user_, source, source);
  }
  complain(fmt::format("isthmus-move: step {} failed: {}\nisthmus-move: {}; journal {}", name,
                       error, where, journal_->path()));
}

void Mover::reassert_moving() {
  Json& data = journal_->data;
  const std::string from = data.value("from", std::string());
  const std::string what = directory_->set_state(user_, "moving", from, data);
  journal_->save();
  directory_->after_change(*this);
  confirm(from, "moving");
  const auto kicked = kick_sessions();
  say(fmt::format("      resumed: {}; {} closed; none left on any instance", what,
                  plural(static_cast<long long>(kicked), "session")));
}

// -- the steps

void Mover::step_preflight() {
  Json& data = journal_->data;
  const std::string source = data["from"].is_string() ? data["from"].get<std::string>() : "";
  const std::string dest = data["to"].get<std::string>();
  invalidate_everywhere();
  auto answers = user_everywhere();
  for (std::size_t i = 0; i < answers.size(); ++i) {
    const Json& a = answers[i];
    if (a.contains("error"))
      throw StepFailed(fmt::format("instance {} cannot look {} up: {}", config_.instances[i].name,
                                   user_, clean(a["error"].dump())));
    if (a.value("island", Json()) != data["from"])
      throw StepFailed(fmt::format("the instances disagree on {}'s island: {} says {}, another {}",
                                   user_, config_.instances[i].name,
                                   clean(a.value("island", Json()).dump()), source));
  }
  const std::string state = answers.front().value("state", Json()).is_string()
                                ? answers.front()["state"].get<std::string>()
                                : "";
  if (state == "disabled")
    throw StepFailed(fmt::format("{} is disabled: a disabled account is not moved (the move would "
                                 "end with it active)",
                                 user_));
  if (state == "moving" && !data.value("force", false))
    throw StepFailed(fmt::format(
        "{} is in state moving already, but no unfinished move is journaled here: another move "
        "(by hand, or from another journal folder) may be running. If not, run again with --force",
        user_));
  if (source == dest) throw StepFailed(fmt::format("{} is on island {} already", user_, dest));
  auto src_nodes = candidates(source);
  auto dst_nodes = candidates(dest);
  check_sieve_sides(source, src_nodes, dest, dst_nodes);
  const std::string directory = directory_->preflight(user_);
  auto pair = open_pair();
  // Saturating sums: a node's EXISTS is its own number, and a wrapped sum
  // would make a full destination look empty (and turn expunging on there).
  std::uint64_t counts = 0, total = 0;
  const auto add = [](std::uint64_t& sum, std::uint64_t n) {
    sum = n > std::numeric_limits<std::uint64_t>::max() - sum
              ? std::numeric_limits<std::uint64_t>::max()
              : sum + n;
  };
  for (const auto& [name, flags] : run(pair.dst->list()))
    if (imap::selectable(flags)) add(counts, run(pair.dst->select(name, true)).exists);
  for (const auto& [name, flags] : run(pair.src->list()))
    if (imap::selectable(flags)) add(total, run(pair.src->select(name, true)).exists);
  run(pair.src->logout());
  run(pair.dst->logout());
  bool earlier = false;
  for (const auto& h : data.value("history", Json::array()))
    earlier = earlier || (h.is_object() && h.value("to", Json()) == Json(dest));
  if (counts && !earlier && !data.value("force", false))
    throw StepFailed(fmt::format(
        "the destination mailbox of {} on island {} holds {} already (a leftover of an earlier "
        "move?): remove them, or run again with --force to merge (the verification will then "
        "fail on messages not on the source)",
        user_, dest, plural(static_cast<long long>(counts), "message")));
  // Messages on the destination that are not on the source are removed by
  // the copy passes (expunged on the source after being copied), unless
  // the destination held mail of its own before the move (--force).
  std::string dsync;
  if (kind() == "dsync") {
    dsync = dsync_preflight(counts);
    step_entry("preflight")["dsync"] = dsync;
  }
  data["expunge_on_destination"] = !(counts && !earlier);
  Json src_names = Json::array(), dst_names = Json::array();
  for (const Node* n : src_nodes) src_names.push_back(n->imap.name);
  for (const Node* n : dst_nodes) dst_names.push_back(n->imap.name);
  step_entry("preflight")["source_nodes"] = src_names;
  step_entry("preflight")["destination_nodes"] = dst_names;
  step_end("preflight",
           fmt::format("{} is {} on island {}; source {}, destination {}; {} to move; destination "
                       "holds {}; {}",
                       user_, state, source, src_nodes.front()->imap.describe(),
                       dst_nodes.front()->imap.describe(),
                       plural(static_cast<long long>(total), "message"),
                       plural(static_cast<long long>(counts), "message"), directory) +
               (dsync.empty() ? "" : "; " + dsync),
           Json{{"source_messages", total}, {"destination_messages", counts}});
}

void Mover::copy_pass(Pair& pair, Json& totals, int pass_no, bool tolerant) {
  Json& data = journal_->data;
  imap::CopyState state;
  state.created_folders = strings_of(data.value("created_folders", Json::array()));
  state.added_subscriptions = strings_of(data.value("added_subscriptions", Json::array()));
  imap::PassOptions options;
  options.tolerant = tolerant;
  options.expunge_allowed = data.value("expunge_on_destination", false);
  options.batch_bytes = config_.batch_bytes;
  options.batch_messages = config_.batch_messages;
  if (const char* delay = std::getenv("ISTHMUS_MOVE_TEST_COPY_DELAY"); delay && *delay)
    options.delay = std::chrono::milliseconds(static_cast<long>(std::atof(delay) * 1000));
  const auto record_state = [this, &state] {
    Json& d = journal_->data;
    d["created_folders"] = state.created_folders;
    d["added_subscriptions"] = state.added_subscriptions;
  };
  options.on_state = [this, &record_state] {
    activity_ = steady::now();
    // At once: a pass that dies later must not forget a folder it made.
    record_state();
    journal_->save();
    activity_ = steady::now();  // the save may have waited for the daemon's "stored"
  };
  std::uint64_t last_messages = 0, last_bytes = 0;
  options.progress = [this, pass_no, &last_messages, &last_bytes](const imap::PassProgress& p) {
    activity_ = steady::now();
    Json& copy = journal_->data["copy"];
    copy["messages"] = num(copy, "messages") + p.messages - last_messages;
    copy["bytes"] = num(copy, "bytes") + p.bytes - last_bytes;
    last_messages = p.messages;
    last_bytes = p.bytes;
    save_progress(false);
    progress(pass_no, p, false);
    activity_ = steady::now();
  };
  imap::PassTotals t;
  try {
    t = run(imap::copy_pass(*pair.src, *pair.dst, state, copy_cache_, options));
  } catch (...) {
    record_state();
    try {
      save_progress(true);
    } catch (const std::exception&) {
      // The pass's own error is the one to report.
    }
    throw;
  }
  record_state();
  save_progress(true);
  const auto add = [&totals](const char* key, std::uint64_t value) {
    totals[key] = num(totals, key) + value;
  };
  totals["folders"] = t.folders;
  add("created", t.created);
  add("subscribed", t.subscribed);
  add("unsubscribed", t.unsubscribed);
  add("deleted_folders", t.deleted_folders);
  add("messages", t.messages);
  add("bytes", t.bytes);
  add("flags", t.flags);
  add("expunged", t.expunged);
  add("kept_extra", t.kept_extra);
  add("vanished", t.vanished);
  add("unchanged", t.unchanged);
  add("skipped_folders", t.skipped_folders);
  if (pass_no == 1) add("already", t.already);  // the first pass's pairs
  totals["engine"] = "isthmus-move";
  progress(pass_no,
           imap::PassProgress{t.folders, t.folders, t.messages, t.bytes, t.bytes}, true);
}

void Mover::save_progress(bool force) {
  if (!force && seconds_since(last_progress_save_) < 0.5) return;
  journal_->save();
  last_progress_save_ = steady::now();
}

void Mover::step_precopy() {
  if (kind() == "dsync") return dsync_precopy();
  if (!config_.copier.empty()) {
    step_end("precopy",
             "none: the external copier runs in step copy, while the user is locked out",
             Json{{"passes", Json::array()}});
    return;
  }
  if (config_.precopy_passes == 0) {
    step_end("precopy",
             "none (precopy_passes is 0): the whole copy runs in step copy, while the user is "
             "locked out",
             Json{{"passes", Json::array()}});
    return;
  }
  step_entry("precopy")["passes"] = Json::array();
  {
    auto pair = open_pair();
    for (int n = 1; n <= config_.precopy_passes; ++n) {
      const auto t0 = steady::now();
      Json totals = new_totals();
      copy_pass(pair, totals, n, true);
      totals["seconds"] = round3(seconds_since(t0));
      journal_->data["steps"]["precopy"]["passes"].push_back(totals);
      journal_->save();
      say(fmt::format("      pre-copy pass {}: {} ({})", n, describe_pass(totals),
                      show_seconds(totals["seconds"])));
      if (n == 1) test_pause("pass1");
      if (changes(totals) <= config_.precopy_threshold) break;
    }
    run(pair.src->logout());
    run(pair.dst->logout());
  }
  const Json passes = journal_->data["steps"]["precopy"]["passes"];
  double copy_seconds = 0;
  std::uint64_t later_messages = 0, later_flags = 0, later_expunged = 0, all_messages = 0,
                all_bytes = 0;
  for (std::size_t i = 0; i < passes.size(); ++i) {
    copy_seconds += passes[i]["seconds"].get<double>();
    all_messages += num(passes[i], "messages");
    all_bytes += num(passes[i], "bytes");
    if (i == 0) continue;
    later_messages += num(passes[i], "messages");
    later_flags += num(passes[i], "flags");
    later_expunged += num(passes[i], "expunged");
  }
  const Json& first = passes[0];
  const std::string checked = try_precheck();
  test_pause("moving");
  step_end("precopy",
           fmt::format("{} while the user stayed active: {}, {} ({}) copied, {} already on the "
                       "destination; then {}, {}, {}; {} copying; {}",
                       plural(static_cast<long long>(passes.size()), "pass", "passes"),
                       plural(num(first, "folders"), "folder"),
                       plural(num(first, "messages"), "message"), show_bytes(num(first, "bytes")),
                       num(first, "already"), plural(later_messages, "message"),
                       plural(later_flags, "flag change"), plural(later_expunged, "expunge"),
                       show_seconds(round3(copy_seconds)), checked),
           Json{{"copy_seconds", round3(copy_seconds)},
                {"messages", all_messages},
                {"bytes", all_bytes},
                {"precheck_seconds", precheck_seconds_}});
}

void Mover::step_moving() {
  Json& data = journal_->data;
  // The interruption starts here (kept by a resumed run).
  if (!data.contains("moving_at")) data["moving_at"] = unix_now();
  const std::string from = data.value("from", std::string());
  const std::string what = directory_->set_state(user_, "moving", from, data);
  journal_->save();
  const std::string after = directory_->after_change(*this);
  const std::string confirmed = confirm(from, "moving");
  step_end("moving", fmt::format("{}; {}; {}", what, after, confirmed));
}

void Mover::step_kick() {
  const auto kicked = kick_sessions();
  if (config_.settle > 0)  // deliveries whose RCPT was accepted before the state changed end now
    pause_for(std::chrono::duration<double>(config_.settle));
  step_end("kick",
           fmt::format("{} closed; none left on any instance (then {} for deliveries under way)",
                       plural(static_cast<long long>(kicked), "session"), show_seconds(config_.settle)),
           Json{{"kicked", kicked}});
}

std::uint64_t Mover::kick_sessions() {
  const auto deadline = steady::now() + std::chrono::duration<double>(config_.kick_timeout);
  std::uint64_t kicked = 0;
  steady::time_point last_kick{};
  const std::string path = "/v1/sessions?user=" + ctl::percent_encode(user_);
  bool first = true;
  while (true) {
    if (first || seconds_since(last_kick) >= 2.0) {
      first = false;
      auto replies = ask_all("POST", "/v1/kick", Json{{"user", user_}});
      for (std::size_t i = 0; i < replies.size(); ++i) {
        const auto& [status, body] = replies[i];
        if (status != 200)
          throw StepFailed(fmt::format("instance {} refused the kick: {}", config_.instances[i].name,
                                       clean(body.value("error", fmt::format("HTTP {}", status)))));
        kicked += num(body, "kicked");
      }
      last_kick = steady::now();
    }
    std::string left;
    auto listed = ask_all("GET", path);
    for (std::size_t i = 0; i < listed.size(); ++i) {
      const auto& [status, body] = listed[i];
      if (status != 200)
        throw StepFailed(fmt::format("instance {} cannot list sessions: {}", config_.instances[i].name,
                                     clean(body.value("error", fmt::format("HTTP {}", status)))));
      std::size_t open = 0;
      for (const auto& s : body.value("sessions", Json::array()))
        if (s.is_object() && s.value("protocol", Json()) != Json("lmtp")) ++open;
      if (open) left += fmt::format("{}{} on {}", left.empty() ? "" : ", ", open, config_.instances[i].name);
    }
    if (left.empty()) break;
    if (steady::now() >= deadline)
      throw StepFailed(fmt::format("sessions of {} still open after {}: {}", user_,
                                   show_seconds(config_.kick_timeout), left));
    pause_for(std::chrono::milliseconds(200));
  }
  return kicked;
}

void Mover::step_copy() {
  if (kind() == "dsync") return dsync_copy();
  if (!config_.copier.empty()) return copy_with_command();
  const auto t0 = steady::now();
  Json totals = new_totals();
  {
    auto pair = open_pair();
    // Passes until one finds nothing to do: a delivery under way when the
    // state changed is caught by the next pass; anything later fails the
    // verification (it stays on the source).
    for (int n = 1; n <= config_.copy_passes; ++n) {
      const auto before = changes(totals);
      copy_pass(pair, totals, n, false);
      totals["passes"] = n;
      if (changes(totals) == before) break;
    }
    run(pair.src->logout());
    run(pair.dst->logout());
  }
  const double seconds = seconds_since(t0);
  const double rate = seconds > 0 ? static_cast<double>(num(totals, "bytes")) / seconds / 1e6 : 0.0;
  step_entry("copy")["throughput_mb_s"] = std::round(rate * 100) / 100;
  const Json sieve = copy_sieve();
  step_end("copy",
           fmt::format("{}: {}, {} already on the destination; {} folders created, {} "
                       "subscriptions added; {}",
                       plural(num(totals, "folders"), "folder"), describe_pass(totals),
                       num(totals, "already"), num(totals, "created"), num(totals, "subscribed"),
                       sieve["text"].get<std::string>()),
           Json{{"copied", totals}, {"sieve", sieve}});
}

// -- the dsync mover

namespace {

// doveadm sync's exit code when the mailbox changed during the sync (run it
// again); the others are failures, named for the operator.
constexpr int kDsyncChanged = 2;
// A pre-copy pass this short, with no change during it, ends the pre-copy.
constexpr double kDsyncQuick = 1.0;

std::string dsync_code(int code) {
  switch (code) {
    case 64: return "usage (EX_USAGE)";
    case 65: return "data error (EX_DATAERR)";
    case 66: return "cannot open input (EX_NOINPUT)";
    case 67: return "no such user on the node (EX_NOUSER)";
    case 68: return "unknown host (EX_NOHOST)";
    case 69: return "service unavailable (EX_UNAVAILABLE)";
    case 70: return "internal error (EX_SOFTWARE)";
    case 73: return "cannot create (EX_CANTCREAT)";
    case 75: return "temporary failure, e.g. a lock (EX_TEMPFAIL)";
    case 77: return "permission denied (EX_NOPERM)";
    case 78: return "configuration error (EX_CONFIG)";
    default: return "see the node log";
  }
}

std::string dsync_destination(const Node& node) {
  const auto& [host, port] = *node.doveadm;
  return host.find(':') != std::string::npos ? fmt::format("tcp:[{}]:{}", host, port)
                                             : fmt::format("tcp:{}:{}", host, port);
}

std::string api_label(const Node& node) {
  const auto& api = *node.doveadm_http;
  return fmt::format("{} ({}://{}:{})", node.imap.name, api.scheme, api.host, api.port);
}

std::string snippet(const Json& value) { return clean(value.dump().substr(0, 200)); }

}  // namespace

std::string Mover::kind() const { return journal_->data.value("mover", std::string("imap")); }

std::pair<const Node*, const Node*> Mover::dsync_pair() {
  const std::string from = journal_->data.value("from", std::string());
  const std::string to = journal_->data.value("to", std::string());
  const Node* src = nullptr;
  for (const Node* n : candidates(from))
    if (n->doveadm_http && src == nullptr) src = n;
  if (src == nullptr)
    throw StepFailed(fmt::format("no node of island {} that is up has a doveadm_http address in "
                                 "move.nodes (the dsync mover needs one)",
                                 from));
  const Node* dst = nullptr;
  for (const Node* n : candidates(to))
    if (n->doveadm && dst == nullptr) dst = n;
  if (dst == nullptr)
    throw StepFailed(fmt::format("no node of island {} that is up has a doveadm address in "
                                 "move.nodes (the dsync mover needs one)",
                                 to));
  if (!config_.doveadm_auth)
    throw UsageError("move.dsync: password_file (doveadm_password) or api_key_file "
                     "(doveadm_api_key) is required by the dsync mover");
  return {src, dst};
}

Json Mover::doveadm_request(const Node& node, const std::string& method,
                            const std::optional<Json>& body, double timeout) {
  ctl::Instance api = *node.doveadm_http;
  api.timeout = timeout;
  api.authorization = config_.doveadm_auth;
  ctl::AdminRequest request{method, "/doveadm/v1", body, true};
  request.any_json = true;
  auto reply = ctl::ask(api, request);
  const std::string label = api_label(node);
  if (reply.status && (*reply.status == 401 || *reply.status == 403))
    throw StepFailed(fmt::format("doveadm HTTP API of {} refused the credentials (HTTP {}): check "
                                 "move.dsync and the node's doveadm_password / doveadm_api_key",
                                 label, *reply.status));
  if (!reply.status) throw StepFailed(fmt::format("doveadm HTTP API of {}: {}", label, reply.error));
  if (!reply.ok())
    throw StepFailed(fmt::format("doveadm HTTP API of {}: {}", label, clean(reply.error)));
  return reply.body;
}

int Mover::doveadm_run(const Node& node, const std::string& command, const Json& parameters,
                       double timeout) {
  const std::string tag = fmt::format("isthmus-move-{}", ::getpid());
  const Json answer = doveadm_request(node, "POST", Json::array({Json::array({command, parameters, tag})}),
                                      timeout);
  const std::string label = api_label(node);
  if (!answer.is_array() || answer.size() != 1 || !answer[0].is_array() || answer[0].size() != 3)
    throw StepFailed(fmt::format("doveadm HTTP API of {}: unexpected answer to {}: {}", label,
                                 command, snippet(answer)));
  const Json& kind_of = answer[0][0];
  const Json& result = answer[0][1];
  if (answer[0][2] != Json(tag))
    throw StepFailed(fmt::format("doveadm HTTP API of {}: an answer to another request", label));
  if (kind_of == Json("doveadmResponse")) return 0;
  if (kind_of == Json("error") && result.is_object()) {
    const Json code = result.value("exitCode", Json());
    if (code.is_number_integer() && code.get<long long>() > 0 && code.get<long long>() < 256)
      return static_cast<int>(code.get<long long>());
    throw StepFailed(fmt::format("doveadm on {}: {} failed: {}", node.imap.name, command,
                                 snippet(result)));
  }
  throw StepFailed(fmt::format("doveadm HTTP API of {}: unexpected answer to {}: {}", label,
                               command, snippet(answer)));
}

std::string Mover::dsync_preflight(std::uint64_t counts) {
  if (counts)
    // A one-way dsync into a mailbox with messages of its own keeps them and
    // gives the source's messages new UIDs.
    throw StepFailed(fmt::format(
        "the destination mailbox holds {}: the dsync mover keeps UIDs only into an empty "
        "mailbox; empty it (a leftover of an earlier move?), or merge with --mover imap --force",
        plural(static_cast<long long>(counts), "message")));
  auto [api, dst] = dsync_pair();
  const Json commands = doveadm_request(*api, "GET", std::nullopt, config_.imap_timeout);
  bool has_sync = false;
  if (commands.is_array())
    for (const auto& c : commands)
      has_sync = has_sync || (c.is_object() && c.value("command", Json()) == Json("sync"));
  else
    throw StepFailed(fmt::format("doveadm HTTP API of {}: the command list is not a list",
                                 api_label(*api)));
  if (!has_sync)
    throw StepFailed(fmt::format("the doveadm HTTP API of {} offers no sync command", api_label(*api)));
  return fmt::format("dsync: doveadm sync -1 run by {} to {} ({})", api_label(*api), dst->imap.name,
                     dsync_destination(*dst));
}

std::pair<int, double> Mover::dsync_pass(const Node& api, const Node& dst, double timeout,
                                         int pass_no, bool full) {
  const auto t0 = steady::now();
  progress(pass_no, imap::PassProgress{}, true);
  Json parameters{{"user", journal_->data.value("node_login", user_)},
                  {"onewaySync", true},
                  {"destination", Json::array({dsync_destination(dst)})}};
  if (full) parameters["fullSync"] = true;  // -f: compare everything, not the logs
  int code = 0;
  try {
    code = doveadm_run(api, "sync", parameters, timeout);
  } catch (const StepFailed& e) {
    if (std::string(e.what()).find("no answer") != std::string::npos)
      throw StepFailed(fmt::format("{} after {}: the dsync may still be running on {} (see its "
                                   "log) before this step is resumed",
                                   e.what(), show_seconds(timeout), api.imap.name));
    throw;
  }
  const double seconds = round3(seconds_since(t0));
  if (code != 0 && code != kDsyncChanged)
    throw StepFailed(fmt::format("doveadm sync on {} to {} exited {}: {}", api.imap.name,
                                 dst.imap.name, code, dsync_code(code)));
  progress(pass_no, imap::PassProgress{}, true);  // dsync tells no more
  return {code, seconds};
}

void Mover::dsync_precopy() {
  if (config_.precopy_passes == 0) {
    step_end("precopy",
             "none (precopy_passes is 0): the whole dsync runs in step copy, while the user is "
             "locked out",
             Json{{"passes", Json::array()}, {"copy_seconds", 0}});
    return;
  }
  auto [api, dst] = dsync_pair();
  step_entry("precopy")["passes"] = Json::array();
  std::string each;
  double copy_seconds = 0;
  int count = 0;
  for (int n = 1; n <= config_.precopy_passes; ++n) {
    auto [code, seconds] = dsync_pass(*api, *dst, config_.dsync_timeout, n, false);
    step_entry("precopy")["passes"].push_back(
        Json{{"seconds", seconds}, {"changed", code == kDsyncChanged}});
    journal_->save();
    copy_seconds += seconds;
    ++count;
    each += (each.empty() ? "" : ", ") + show_seconds(seconds);
    say(fmt::format("      pre-copy pass {}: doveadm sync -1 {} -> {} in {}{}", n, api->imap.name,
                    dst->imap.name, show_seconds(seconds),
                    code == kDsyncChanged ? " (the mailbox changed meanwhile)" : ""));
    if (n == 1) test_pause("pass1");
    if (code == 0 && seconds <= kDsyncQuick) break;
  }
  const std::string checked = try_precheck();
  test_pause("moving");
  step_end("precopy",
           fmt::format("{} while the user stayed active ({} -> {}): {}; {}",
                       plural(count, "dsync pass", "dsync passes"), api->imap.name, dst->imap.name,
                       each, checked),
           Json{{"copy_seconds", round3(copy_seconds)}, {"precheck_seconds", precheck_seconds_}});
}

void Mover::dsync_copy() {
  auto [api, dst] = dsync_pair();
  const auto t0 = steady::now();
  int n = 1;
  for (;; ++n) {
    auto [code, seconds] = dsync_pass(*api, *dst, config_.dsync_copy_timeout, n, false);
    (void)seconds;
    if (code == 0) break;
    if (n == config_.copy_passes)
      throw StepFailed(fmt::format("the mailbox still changed during each of {} dsync passes while "
                                   "the user was locked out",
                                   n));
  }
  const double seconds = round3(seconds_since(t0));
  const Json sieve = copy_sieve();
  step_end("copy",
           fmt::format("{} ({} -> {}) in {}; {}", plural(n, "dsync pass", "dsync passes"),
                       api->imap.name, dst->imap.name, show_seconds(seconds),
                       sieve["text"].get<std::string>()),
           Json{{"copied", Json{{"mover", "dsync"}, {"passes", n}, {"seconds", seconds}}},
                {"sieve", sieve}});
}

// -- an external copier

void Mover::copy_with_command() {
  const Json& data = journal_->data;
  const Node* src = candidates(data.value("from", std::string())).front();
  const Node* dst = candidates(data.value("to", std::string())).front();
  const std::vector<std::pair<std::string, std::string>> values = {
      {"user", user_},
      {"node_login", data.value("node_login", user_)},
      {"from_island", data.value("from", std::string())},
      {"to_island", data.value("to", std::string())},
      {"from_node", src->imap.name},
      {"to_node", dst->imap.name},
      {"from_host", src->imap.host},
      {"to_host", dst->imap.host},
      {"from_port", std::to_string(src->imap.port)},
      {"to_port", std::to_string(dst->imap.port)},
      {"from_address", fmt::format("{}:{}", src->imap.host, src->imap.port)},
      {"to_address", fmt::format("{}:{}", dst->imap.host, dst->imap.port)}};
  std::vector<std::string> argv;
  for (const auto& arg : config_.copier) {
    std::string out;  // %{name} replaced; an unknown one left as it is
    std::size_t i = 0;
    while (i < arg.size()) {
      const auto open = arg.find("%{", i);
      const auto close = open == std::string::npos ? open : arg.find('}', open);
      if (close == std::string::npos) {
        out += arg.substr(i);
        break;
      }
      const std::string name = arg.substr(open + 2, close - open - 2);
      out += arg.substr(i, open - i);
      auto it = std::find_if(values.begin(), values.end(),
                             [&name](const auto& v) { return v.first == name; });
      out += it != values.end() ? it->second : arg.substr(open, close - open + 1);
      i = close + 1;
    }
    argv.push_back(out);
  }
  std::vector<std::string> env;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string var = *e;
    const std::string key = var.substr(0, var.find('='));
    bool replaced = key == "ISTHMUS_MOVE_USER" || key == "USER";
    for (const auto& [k, v] : values) replaced = replaced || key == ascii_uppercase(k);
    if (!replaced) env.push_back(var);
  }
  env.push_back("ISTHMUS_MOVE_USER=" + user_);
  env.push_back("USER=" + user_);
  for (const auto& [k, v] : values)
    if (k != "user") env.push_back(ascii_uppercase(k) + "=" + v);
  std::string shown;
  for (const auto& a : argv) shown += (shown.empty() ? "" : " ") + a;
  say("      copier: " + clean(shown));
  std::vector<char*> args, envp;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  for (auto& e : env) envp.push_back(e.data());
  envp.push_back(nullptr);
  int ready[2];
  if (::pipe2(ready, O_CLOEXEC) != 0)
    throw StepFailed(fmt::format("the copier cannot be started: {}", errno_text(errno)));
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) throw StepFailed(fmt::format("the copier cannot be started: {}", errno_text(errno)));
  if (pid == 0) {
    // Its own process group (killed whole on a timeout), dying with the
    // mover, its output on the mover's standard error.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);
    ::signal(SIGPIPE, SIG_DFL);  // the mover ignores it; a copier's pipelines must not
    const int null = ::open("/dev/null", O_RDONLY);  // never the daemon's ack channel
    if (null >= 0) ::dup2(null, 0);
    ::dup2(2, 1);
    ::execvpe(args[0], args.data(), envp.data());
    const int why = errno;
    (void)!::write(ready[1], &why, sizeof why);
    ::_exit(127);
  }
  ::setpgid(pid, pid);  // as the child does: whichever runs first
  ::close(ready[1]);
  int exec_error = 0;
  const bool not_started = ::read(ready[0], &exec_error, sizeof exec_error) == sizeof exec_error;
  ::close(ready[0]);
  const auto deadline = steady::now() + std::chrono::duration<double>(config_.copier_timeout);
  int status = 0;
  for (;;) {
    const pid_t done = ::waitpid(pid, &status, WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR)
      throw StepFailed(fmt::format("waiting for the copier: {}", errno_text(errno)));
    if (steady::now() >= deadline) {
      ::kill(-pid, SIGKILL);
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &status, 0);
      throw StepFailed(fmt::format("the copier did not finish within {} (it was killed)",
                                   show_seconds(config_.copier_timeout)));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  if (not_started)
    throw StepFailed(exec_error == ENOENT
                         ? fmt::format("the copier {} does not exist", clean(argv[0]))
                         : fmt::format("the copier {} cannot be run: {}", clean(argv[0]),
                                       errno_text(exec_error)));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw StepFailed(WIFEXITED(status)
                         ? fmt::format("the copier exited with status {}", WEXITSTATUS(status))
                         : fmt::format("the copier was killed by signal {}", WTERMSIG(status)));
  const Json sieve = copy_sieve();
  step_end("copy",
           fmt::format("the copier {} finished ({} -> {}); {}",
                       clean(fs::path(argv[0]).filename().string()), src->imap.name, dst->imap.name,
                       sieve["text"].get<std::string>()),
           Json{{"copier", argv}, {"sieve", sieve}});
}

// -- the verification

namespace {

// What the verification compares: key (size + Message-ID, or size + body
// hash), flags, INTERNALDATE; as a multiset.
std::map<std::string, std::size_t> fingerprint(const std::vector<imap::Msg>& msgs) {
  std::map<std::string, std::size_t> out;
  for (const auto& m : msgs) {
    std::string flags;
    for (const auto& f : m.flags) flags += (flags.empty() ? "" : " ") + f;
    const auto date = imap::internaldate_epoch(m.date);
    ++out[m.key() + '\0' + flags + '\0' + std::to_string(date ? *date : 0)];
  }
  return out;
}

std::string describe_print(const std::string& print) {
  const auto a = print.find('\0');
  const auto b = print.find('\0', a + 1);
  return fmt::format("size+id {}, flags {}", ctl::repr(print.substr(0, a)),
                     ctl::repr(print.substr(a + 1, b - a - 1)));
}

}  // namespace

Mover::Compared Mover::compare_folder(Pair& pair, const std::string& name,
                                      const std::string& target) {
  Compared out;
  auto a = run(imap::list_folder(*pair.src, name, false, &verify_cache_, &out.src_signature, true));
  const auto a_validity = pair.src->selected().uidvalidity;
  auto b = run(imap::list_folder(*pair.dst, target, false, &verify_cache_, &out.dst_signature, true));
  const auto b_validity = pair.dst->selected().uidvalidity;
  if (kind() == "dsync") {
    // dsync keeps UIDs: a client's cache stays valid.
    std::vector<std::uint32_t> a_uids, b_uids;
    for (const auto& m : a) a_uids.push_back(m.uid);
    for (const auto& m : b) b_uids.push_back(m.uid);
    if (a_validity != b_validity)
      out.problems.push_back(fmt::format("folder {}: UIDVALIDITY {} on the source, {} on the "
                                         "destination",
                                         clean(name), a_validity.value_or(0), b_validity.value_or(0)));
    else if (a_uids != b_uids)
      out.problems.push_back(fmt::format("folder {}: the UIDs differ between the source and the "
                                         "destination",
                                         clean(name)));
  }
  a = run(imap::hash_bodies(*pair.src, std::move(a), config_.batch_bytes));
  b = run(imap::hash_bodies(*pair.dst, std::move(b), config_.batch_bytes));
  auto fa = fingerprint(a), fb = fingerprint(b);
  std::size_t missing = 0, extra = 0;
  std::string example;
  for (const auto& [print, count] : fa) {
    auto it = fb.find(print);
    const std::size_t there = it == fb.end() ? 0 : it->second;
    if (count > there) {
      missing += count - there;
      if (example.empty()) example = print;
    }
  }
  std::string extra_example;
  for (const auto& [print, count] : fb) {
    auto it = fa.find(print);
    const std::size_t here = it == fa.end() ? 0 : it->second;
    if (count > here) {
      extra += count - here;
      if (extra_example.empty()) extra_example = print;
    }
  }
  if (example.empty()) example = extra_example;
  out.entry = Json{{"source", a.size()}, {"destination", b.size()}, {"missing", missing},
                   {"extra", extra}};
  if (missing || extra)
    out.problems.push_back(fmt::format(
        "folder {}: {} on the source, {} on the destination, {} missing or different there, {} "
        "extra (e.g. {})",
        clean(name), a.size(), b.size(), missing, extra, describe_print(example)));
  for (const auto& m : a) out.bytes += m.size;
  return out;
}

std::string Mover::precheck() {
  checked_.clear();
  precheck_seconds_ = 0;
  auto pair = open_pair();
  const auto t0 = steady::now();
  if (!(pair.src->condstore() && pair.dst->condstore()))
    return "no check before the switch (a node without CONDSTORE)";
  std::set<std::string> dst_folders;
  for (const auto& [name, flags] : run(pair.dst->list()))
    if (imap::selectable(flags)) dst_folders.insert(name);
  std::size_t total = 0;
  for (const auto& [name, flags] : run(pair.src->list())) {
    if (!imap::selectable(flags)) continue;
    ++total;
    auto target = imap::map_folder(name, pair.src->personal(), pair.dst->personal());
    if (!target || !dst_folders.contains(*target)) continue;
    Compared found;
    try {
      found = compare_folder(pair, name, *target);
    } catch (const imap::ImapError& e) {
      // The user changed it meanwhile (or a listing failed): verified in
      // full later. A broken session ends the check.
      if (std::string(e.what()).find("the session ended earlier") != std::string::npos) throw;
      continue;
    }
    if (found.problems.empty() && found.src_signature && found.dst_signature)
      checked_[name] = Json{{"src", std::vector<std::uint64_t>(found.src_signature->begin(),
                                                               found.src_signature->end())},
                            {"dst", std::vector<std::uint64_t>(found.dst_signature->begin(),
                                                               found.dst_signature->end())},
                            {"entry", found.entry},
                            {"bytes", found.bytes},
                            {"nodes", Json::array({pair.src->endpoint().describe(),
                                                   pair.dst->endpoint().describe()})}};
  }
  run(pair.src->logout());
  run(pair.dst->logout());
  const double seconds = seconds_since(t0);
  precheck_seconds_ = round3(seconds);
  return fmt::format("checked before the switch: {} of {} the same on both sides ({})",
                     checked_.size(), plural(static_cast<long long>(total), "folder"),
                     show_seconds(seconds));
}

std::string Mover::try_precheck() {
  try {
    return precheck();
  } catch (const imap::ImapError& e) {
    checked_.clear();
    return fmt::format("no check before the switch ({}): every folder is verified", e.what());
  } catch (const StepFailed& e) {
    checked_.clear();
    return fmt::format("no check before the switch ({}): every folder is verified", e.what());
  }
}

void Mover::step_verify() {
  if (const char* pause = std::getenv("ISTHMUS_MOVE_TEST_PAUSE_BEFORE_VERIFY"); pause && *pause) {
    std::ofstream(std::string(pause) + ".waiting") << ::getpid();
    const auto deadline = steady::now() + std::chrono::seconds(120);
    while (!fs::exists(pause) && steady::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  auto pair = open_pair();
  std::vector<std::string> problems;
  Json report{{"folders", Json::object()}};
  std::uint64_t messages = 0, size = 0, skipped = 0;
  std::set<std::string> dst_folders;
  for (const auto& [name, flags] : run(pair.dst->list()))
    if (imap::selectable(flags)) dst_folders.insert(name);
  for (const auto& [name, flags] : run(pair.src->list())) {
    if (!imap::selectable(flags)) continue;
    auto target = imap::map_folder(name, pair.src->personal(), pair.dst->personal());
    if (!target || !dst_folders.contains(*target)) {
      problems.push_back(fmt::format("folder {}: missing on the destination", clean(name)));
      report["folders"][name] = Json{{"missing_folder", true}};
      continue;
    }
    auto known = checked_.find(name);
    if (known != checked_.end() &&
        known->second["nodes"] == Json::array({pair.src->endpoint().describe(),
                                               pair.dst->endpoint().describe()})) {
      // Found the same on both sides before the switch, and neither side
      // changed since (CONDSTORE signatures).
      run(pair.src->select(name, true));
      auto a = imap::signature_of(*pair.src);
      run(pair.dst->select(*target, true));
      auto b = imap::signature_of(*pair.dst);
      if (a && b &&
          known->second["src"] == Json(std::vector<std::uint64_t>(a->begin(), a->end())) &&
          known->second["dst"] == Json(std::vector<std::uint64_t>(b->begin(), b->end()))) {
        Json entry = known->second["entry"];
        entry["unchanged"] = true;
        report["folders"][name] = entry;
        messages += num(entry, "source");
        size += num(known->second, "bytes");
        ++skipped;
        continue;
      }
    }
    auto found = compare_folder(pair, name, *target);
    problems.insert(problems.end(), found.problems.begin(), found.problems.end());
    report["folders"][name] = found.entry;
    messages += num(found.entry, "source");
    size += found.bytes;
  }
  std::set<std::string> dst_subs;
  for (const auto& [name, flags] : run(pair.dst->list(true))) dst_subs.insert(name);
  std::set<std::string> missing_subs;
  for (const auto& [name, flags] : run(pair.src->list(true))) {
    auto target = imap::map_folder(name, pair.src->personal(), pair.dst->personal());
    const std::string t = target ? *target : name;
    if (!dst_subs.contains(t)) missing_subs.insert(t);
  }
  if (!missing_subs.empty()) {
    std::string list;
    for (const auto& s : missing_subs) list += (list.empty() ? "" : ", ") + clean(s);
    problems.push_back("subscriptions missing on the destination: " + list);
  }
  run(pair.src->logout());
  run(pair.dst->logout());
  if (auto sieve_sessions = sieve_pair()) {
    try {
      auto found = run(sieve::same_scripts(*sieve_sessions->src, *sieve_sessions->dst));
      problems.insert(problems.end(), found.begin(), found.end());
      report["sieve"] = "compared";
      run(sieve_sessions->src->logout());
      run(sieve_sessions->dst->logout());
    } catch (const imap::ImapError& e) {
      problems.push_back(fmt::format("comparing the Sieve scripts: {}", e.what()));
    }
  }
  if (!problems.empty() && kind() == "dsync" && !full_sync_done_) {
    // An incremental dsync can miss a change made just before the kick
    // (seen with flags): one full one-way sync, then verify again.
    full_sync_done_ = true;
    say(fmt::format("      verify: {} after the dsync passes ({}); one full dsync (-f), then "
                    "verify again",
                    plural(static_cast<long long>(problems.size()), "difference"), problems.front()));
    auto [api, dst] = dsync_pair();
    dsync_pass(*api, *dst, config_.dsync_copy_timeout, 1, true);
    checked_.clear();
    return step_verify();
  }
  if (!problems.empty()) {
    std::string text;
    for (const auto& p : problems) text += (text.empty() ? "" : "; ") + p;
    throw VerifyFailed("verification failed: " + text, report);
  }
  step_end("verify",
           fmt::format("{}, {} ({}) the same on both islands, subscriptions included{}{}",
                       plural(static_cast<long long>(report["folders"].size()), "folder"),
                       plural(static_cast<long long>(messages), "message"), show_bytes(size),
                       kind() == "dsync" ? ", UIDVALIDITY and UIDs too" : "",
                       skipped ? fmt::format(" ({} unchanged since the check before the switch, "
                                             "on both sides)",
                                             skipped)
                               : ""),
           Json{{"messages", messages},
                {"bytes", size},
                {"folders", report["folders"].size()},
                {"unchanged", skipped}});
}

void Mover::step_switch() {
  Json& data = journal_->data;
  const std::string to = data.value("to", std::string());
  const std::string what = directory_->switch_to(user_, to, data);
  journal_->save();
  const std::string after = directory_->after_change(*this);
  const std::string confirmed = confirm(to, "active");
  data["active_at"] = unix_now();
  if (data.contains("moving_at") && data["moving_at"].is_number())
    data["interruption_seconds"] =
        round3(data["active_at"].get<double>() - data["moving_at"].get<double>());
  step_end("switch", fmt::format("{}; {}; {}", what, after, confirmed));
}

void Mover::step_report() {
  Json& data = journal_->data;
  data["status"] = "done";
  data["finished"] = now_iso();
  data.erase("current_step");
  const std::string from = data.value("from", std::string()), to = data.value("to", std::string());
  step_end("report", fmt::format("{} is on island {}", user_, to));
  const Json steps = data["steps"];
  say();
  summary_ = fmt::format("moved {} from island {} to {}", user_, from, to);
  say(*summary_);
  double total = 0;
  for (const auto& name : kSteps) {
    const Json s = steps.value(name, Json::object());
    const double seconds = s.value("seconds", 0.0);
    total += seconds;
    const int attempts = s.value("attempts", 1);
    say(fmt::format("  {} {:<9} {:>8}{}", step_number(name), name, show_seconds(seconds),
                    attempts > 1 ? fmt::format("  ({} runs)", attempts) : ""));
  }
  say(fmt::format("    total     {:>8}", show_seconds(total)));
  const Json verify = steps.value("verify", Json::object());
  say(fmt::format("  folders {}, messages {} ({})",
                  verify.contains("folders") ? verify["folders"].dump() : "?",
                  verify.contains("messages") ? verify["messages"].dump() : "?",
                  show_bytes(num(verify, "bytes"))));
  const Json precopy = steps.value("precopy", Json::object());
  const Json passes = precopy.value("passes", Json::array());
  if (kind() == "dsync") {
    std::string each;
    for (const auto& p : passes) each += (each.empty() ? "" : "; ") + show_seconds(p.value("seconds", Json()));
    say(fmt::format("  pre-copy, the user active: {} in {} ({})",
                    show_seconds(precopy.value("copy_seconds", Json())),
                    plural(static_cast<long long>(passes.size()), "dsync pass", "dsync passes"), each));
  } else if (!passes.empty()) {
    std::string each;
    for (const auto& p : passes)
      each += (each.empty() ? "" : "; ") +
              fmt::format("{} in {}", describe_pass(p), show_seconds(p.value("seconds", Json())));
    say(fmt::format("  pre-copy, the user active: {} in {} ({})",
                    show_seconds(precopy.value("copy_seconds", Json())),
                    plural(static_cast<long long>(passes.size()), "pass", "passes"), each));
  } else {
    say("  pre-copy: none");
  }
  std::string parts;
  for (const auto& name : kInterruptionSteps)
    parts += (parts.empty() ? "" : ", ") + name + " " +
             show_seconds(steps.value(name, Json::object()).value("seconds", Json()));
  const Json copied = steps.value("copy", Json::object()).value("copied", Json::object());
  say(fmt::format("  interruption (state moving until active on island {}): {} ({}); the last "
                  "copy: {}",
                  to, show_seconds(data.value("interruption_seconds", Json())), parts,
                  kind() == "dsync"
                      ? fmt::format("{} in {}; UIDs and UIDVALIDITY kept",
                                    plural(copied.value("passes", 0), "dsync pass", "dsync passes"),
                                    show_seconds(copied.value("seconds", Json())))
                      : describe_pass(copied)));
  say(fmt::format("  the mailbox on island {} is left in place (delete it once you are satisfied)",
                  from));
}

// -- going back

int Mover::rollback(const std::string& reason) {
  Json& data = journal_->data;
  const std::string from = data.value("from", std::string());
  std::string what, after, confirmed;
  try {
    data["status"] = "rolling-back";
    data["rollback_reason"] = reason;
    if (data.contains("moving_at") && data["moving_at"].is_number())
      data["interruption_seconds"] = round3(unix_now() - data["moving_at"].get<double>());
    journal_->save();
    what = directory_->set_state(user_, "active", from, data);
    journal_->save();
    after = directory_->after_change(*this);
    confirmed = confirm(from, "active");
  } catch (const std::exception& e) {
    const auto* move_error = dynamic_cast<const MoveError*>(&e);
    complain(fmt::format(
        "isthmus-move: {}\nisthmus-move: the rollback failed too: {}\nisthmus-move: {} may still "
        "be in state moving on island {} (logins refused, mail queued); run again with --resume "
        "(or --abort) to finish the rollback; journal {}",
        reason, move_error ? std::string(e.what()) : fmt::format("unexpected error: {}", e.what()),
        user_, from, journal_->path()));
    return dynamic_cast<const Unreachable*>(&e) ? kExitUnreachable : kExitStep;
  }
  data["status"] = "failed";
  data["error"] = reason;
  data["finished"] = now_iso();
  journal_->save();
  say(fmt::format("rolled back: {}; {}; {}", what, after, confirmed));
  complain(fmt::format("isthmus-move: {}\nisthmus-move: nothing was switched: {} is active on "
                       "island {} again; the partial copy on island {} is left there; journal {}",
                       reason, user_, from, data.value("to", std::string()), journal_->path()));
  return kExitVerify;
}

int Mover::abort_move() {
  Json& data = journal_->data;
  const std::string from = data.value("from", std::string()), to = data.value("to", std::string());
  if (!abortable()) {
    const Json sw = data["steps"]["switch"];
    throw StepFailed(fmt::format(
        "the switch of the move of {} has started (status {}, {}): the directory may already "
        "route {} to island {}, so the move cannot be aborted; run --resume to finish it (then "
        "move the user back with --to {} if need be)",
        user_, clean(sw.value("status", std::string())),
        plural(sw.value("attempts", 1), "attempt"), user_, to, from));
  }
  std::string what, after, confirmed;
  try {
    // Journaled first: a failed abort is finished by the next run, never
    // taken for a move to resume.
    data["status"] = "aborting";
    data.erase("current_step");
    journal_->save();
    what = directory_->set_state(user_, "active", from, data);
    journal_->save();
    after = directory_->after_change(*this);
    confirmed = confirm(from, "active");
  } catch (const std::exception& e) {
    const auto* move_error = dynamic_cast<const MoveError*>(&e);
    complain(fmt::format(
        "isthmus-move: the abort of the move of {} failed: {}\nisthmus-move: {} may still be in "
        "state moving on island {} (logins refused, mail queued); run --abort again to finish the "
        "abort; journal {}",
        user_, move_error ? std::string(e.what()) : fmt::format("unexpected error: {}", e.what()),
        user_, from, journal_->path()));
    return move_error ? move_error->code : kExitStep;
  }
  data["status"] = "aborted";
  data["finished"] = now_iso();
  journal_->save();
  summary_ = fmt::format("aborted the move of {}: {}; {}; {}", user_, what, after, confirmed);
  say(*summary_);
  return kExitOk;
}

}  // namespace isthmus::moves::mover
