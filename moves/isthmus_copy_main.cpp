// isthmus-copy: one copy pass of a user's mailbox from one node to another
// with the daemon's C++ IMAP code (moves/imap_copy.hpp), for the mover
// by hand, as a move's external copier (move.copier) and for tests.
//
//   isthmus-copy --config MOVER.json --user NAME --from NODE --to NODE
//                [--state STATE.json] [--tolerant] [--expunge] [--serve]
//                [--parent-pid PID]
//
// --serve: a pass per line on standard input, until its end, each a JSON
// object {"tolerant": bool, "expunge": bool, "created_folders": [...],
// "added_subscriptions": [...]}; each answered like a single pass, the
// totals with the state after it. The passes of one process share what
// they learnt (imap_copy.hpp PassCache: CONDSTORE listings), so the passes
// after the first read what changed, not the whole mailbox.
// --parent-pid: the program dies with that process (PR_SET_PDEATHSIG), so
// a killed mover never leaves a copy running.
//
// The nodes, the master login, imap_timeout, batch_bytes and
// batch_messages come from the mover's config file (its "move" section).
// STATE holds the folders and subscriptions the passes of this move added
// ({"created_folders": [...], "added_subscriptions": [...]}); it is read
// (a missing file is an empty state) and written back after the pass
// (temporary file, fsync, rename).
//
// Output, one JSON object per line on stdout: {"event": "progress", ...}
// after each batch and folder, {"event": "state", "created_folders": [...],
// "added_subscriptions": [...]} after each folder or subscription the pass
// added or removed, then {"event": "totals", ...} (exit 0) or
// {"event": "error", "text": ...} (exit 1). Usage errors: exit 2.

#include "common/log.hpp"
#include "config/duration.hpp"
#include "moves/imap_copy.hpp"

#include <CLI/CLI.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/io_context.hpp>
#include <fcntl.h>
#include <sys/prctl.h>
#include <csignal>
#include <nlohmann/json.hpp>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>

namespace fs = std::filesystem;
namespace asio = boost::asio;
using nlohmann::json;
using namespace isthmus::moves::imap;

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::string read_file(const fs::path& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(fmt::format("{}: cannot read {}", what, path.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string read_secret(const fs::path& path, const std::string& what) {
  std::string text = read_file(path, what);
  std::string line = text.substr(0, text.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) throw UsageError(fmt::format("{}: {} is empty", what, path.string()));
  return line;
}

std::string str_of(const json& obj, const char* key, const std::string& where,
                   const std::string& fallback = {}, bool required = false) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (required) throw UsageError(fmt::format("{}: \"{}\" is required", where, key));
    return fallback;
  }
  if (!it->is_string()) throw UsageError(fmt::format("{}: \"{}\" must be a string", where, key));
  return it->get<std::string>();
}

Endpoint endpoint_of(const std::string& name, const json& spec, const std::string& where) {
  Endpoint e;
  e.name = name;
  json obj = spec.is_string() ? json{{"address", spec}} : spec;
  if (!obj.is_object()) throw UsageError(where + ": must be an address or an object");
  const std::string address = str_of(obj, "address", where, {}, true);
  auto colon = address.rfind(':');
  if (colon == std::string::npos) throw UsageError(where + ": address must be HOST:PORT");
  e.host = address.substr(0, colon);
  if (e.host.size() > 2 && e.host.front() == '[' && e.host.back() == ']')
    e.host = e.host.substr(1, e.host.size() - 2);
  auto port = parse_number(address.substr(colon + 1));
  if (!port || *port == 0 || *port > 65535) throw UsageError(where + ": bad port");
  e.port = static_cast<std::uint16_t>(*port);
  const std::string tls = str_of(obj, "tls", where, "none");
  if (tls == "none") e.tls = isthmus::config::TlsMode::none;
  else if (tls == "starttls") e.tls = isthmus::config::TlsMode::starttls;
  else if (tls == "implicit") e.tls = isthmus::config::TlsMode::implicit;
  else throw UsageError(where + ": tls must be none, starttls or implicit");
  e.ca_file = str_of(obj, "ca", where);
  if (auto it = obj.find("verify"); it != obj.end()) {
    if (!it->is_boolean()) throw UsageError(where + ": verify must be true or false");
    e.verify = it->get<bool>();
  }
  e.tls_name = str_of(obj, "tls_name", where, e.host);
  return e;
}

void write_atomic(const fs::path& path, const std::string& data) {
  const fs::path tmp = path.string() + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) throw std::runtime_error("cannot write " + tmp.string());
  const char* p = data.data();
  std::size_t left = data.size();
  while (left > 0) {
    auto n = ::write(fd, p, left);
    if (n <= 0) {
      ::close(fd);
      throw std::runtime_error("cannot write " + tmp.string());
    }
    p += n;
    left -= static_cast<std::size_t>(n);
  }
  ::fsync(fd);
  ::close(fd);
  fs::rename(tmp, path);
}

void emit(const json& event) {
  std::cout << event.dump(-1, ' ', false, json::error_handler_t::replace) << '\n' << std::flush;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"isthmus-copy: one copy pass of a mailbox between two nodes"};
  std::string config_path, user, from, to, state_path;
  bool tolerant = false, expunge = false, serve = false;
  long parent_pid = 0;
  double timeout_seconds = 0;
  app.add_option("--config", config_path, "the mover's config file")->required();
  app.add_option("--user", user, "the user's login name on the nodes")->required();
  app.add_option("--from", from, "the source node (a name in move.nodes)")->required();
  app.add_option("--to", to, "the destination node")->required();
  app.add_option("--state", state_path, "what this move's passes added (JSON)");
  app.add_flag("--tolerant", tolerant, "the user is active: skip messages expunged meanwhile");
  app.add_flag("--expunge", expunge, "remove what the source no longer has");
  app.add_flag("--serve", serve, "a pass per line of standard input (JSON)");
  app.add_option("--parent-pid", parent_pid, "die with this process");
  app.add_option("--timeout", timeout_seconds,
                 "seconds a node may take to answer (default: the config's imap_timeout)");
  CLI11_PARSE(app, argc, argv);
  if (parent_pid > 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent_pid) return 3;  // the parent is gone already
  }

  Endpoint source, destination;
  MasterLogin login;
  PassOptions options;
  CopyState state;
  std::chrono::milliseconds timeout{120'000};
  try {
    if (user.empty() || user.find_first_of(std::string("\r\n\0", 3)) != std::string::npos)
      throw UsageError("--user: an empty name or one with CR, LF or NUL");
    const fs::path config_file(config_path);
    json config = json::parse(read_file(config_file, "--config"), nullptr, false);
    if (!config.is_object() || !config.contains("move") || !config["move"].is_object())
      throw UsageError(config_path + ": not JSON with a \"move\" object");
    const json& move = config["move"];
    const json* login_obj = move.contains("login") ? &move["login"]
                            : move.contains("source_login") ? &move["source_login"]
                                                            : nullptr;
    if (login_obj == nullptr || !login_obj->is_object())
      throw UsageError("move: \"login\" (the nodes' master user) is required");
    login.user = str_of(*login_obj, "master_user", "move: login", {}, true);
    fs::path secret = str_of(*login_obj, "master_password_file", "move: login", {}, true);
    if (secret.is_relative()) secret = config_file.parent_path() / secret;
    login.password = read_secret(secret, "move: login: master_password_file");
    const std::string style = str_of(*login_obj, "master_style", "move: login", "dovecot");
    if (style != "dovecot" && style != "sasl")
      throw UsageError("move: login: master_style must be \"dovecot\" or \"sasl\"");
    login.dovecot_style = style == "dovecot";
    login.separator = str_of(*login_obj, "separator", "move: login", "*");
    if (!move.contains("nodes") || !move["nodes"].is_object())
      throw UsageError("move: \"nodes\" must map node names to their IMAP addresses");
    const json& nodes = move["nodes"];
    if (!nodes.contains(from)) throw UsageError("--from: no node " + from + " in move.nodes");
    if (!nodes.contains(to)) throw UsageError("--to: no node " + to + " in move.nodes");
    source = endpoint_of(from, nodes[from], "move: nodes: " + from);
    destination = endpoint_of(to, nodes[to], "move: nodes: " + to);
    if (timeout_seconds > 0) {
      timeout = std::chrono::milliseconds(static_cast<long>(timeout_seconds * 1000));
    } else if (auto it = move.find("imap_timeout"); it != move.end() && it->is_number()) {
      timeout = std::chrono::milliseconds(static_cast<long>(it->get<double>() * 1000));
    } else {
      auto parsed = isthmus::config::parse_duration(str_of(move, "imap_timeout", "move", "120s"));
      if (!parsed) throw UsageError("move: imap_timeout: a duration like \"120s\"");
      timeout = *parsed;
    }
    if (timeout.count() <= 0) throw UsageError("move: imap_timeout must be positive");
    if (auto it = move.find("batch_bytes"); it != move.end()) {
      if (!it->is_number_unsigned() || it->get<std::uint64_t>() < 1024)
        throw UsageError("move: batch_bytes must be an integer of at least 1024");
      options.batch_bytes = it->get<std::uint64_t>();
    }
    if (auto it = move.find("batch_messages"); it != move.end()) {
      if (!it->is_number_unsigned() || it->get<std::uint64_t>() < 1 ||
          it->get<std::uint64_t>() > 100000)
        throw UsageError("move: batch_messages must be an integer from 1 to 100000");
      options.batch_messages = it->get<std::size_t>();
    }
    if (!state_path.empty() && fs::exists(state_path)) {
      json saved = json::parse(read_file(state_path, "--state"), nullptr, false);
      if (!saved.is_object()) throw UsageError("--state: not a JSON object");
      for (const char* key : {"created_folders", "added_subscriptions"}) {
        auto it = saved.find(key);
        if (it == saved.end()) continue;
        if (!it->is_array()) throw UsageError(fmt::format("--state: {} must be a list", key));
        auto& list = std::string(key) == "created_folders" ? state.created_folders
                                                           : state.added_subscriptions;
        for (const auto& v : *it) {
          if (!v.is_string()) throw UsageError(fmt::format("--state: {} must hold strings", key));
          list.push_back(v.get<std::string>());
        }
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "isthmus-copy: " << e.what() << '\n';
    return 2;
  }
  options.on_state = [&state] {
    emit({{"event", "state"},
          {"created_folders", state.created_folders},
          {"added_subscriptions", state.added_subscriptions}});
  };
  options.progress = [](const PassProgress& p) {
    emit({{"event", "progress"}, {"folders_done", p.folders_done}, {"folders", p.folders},
          {"messages", p.messages}, {"bytes", p.bytes}, {"bytes_total", p.bytes_total}});
  };
  if (const char* delay = std::getenv("ISTHMUS_MOVE_TEST_COPY_DELAY"); delay && *delay) {
    // A test hook (as isthmus-move's): seconds slept after each message.
    options.delay = std::chrono::milliseconds(static_cast<long>(std::atof(delay) * 1000));
  }
  std::unique_ptr<asio::ssl::context> src_tls, dst_tls;
  try {
    if (source.tls != isthmus::config::TlsMode::none) src_tls = make_node_tls_context(source.ca_file);
    if (destination.tls != isthmus::config::TlsMode::none)
      dst_tls = make_node_tls_context(destination.ca_file);
  } catch (const std::exception& e) {
    std::cerr << "isthmus-copy: " << e.what() << '\n';
    return 2;
  }
  PassCache cache;
  asio::io_context io;
  // One pass: both sessions opened, the pass, both closed. Returns the
  // error's text, or "".
  auto one_pass = [&](PassTotals& totals) -> std::string {
    std::string error;
    auto run = [&]() -> asio::awaitable<void> {
      auto src = co_await Session::open(source, src_tls.get(), login, user, timeout, "isthmus-copy");
      auto dst = co_await Session::open(destination, dst_tls.get(), login, user, timeout,
                                        "isthmus-copy");
      totals = co_await copy_pass(*src, *dst, state, cache, options);
      co_await src->logout();
      co_await dst->logout();
    };
    io.restart();
    asio::co_spawn(io, run(), [&error](std::exception_ptr e) {
      if (!e) return;
      try {
        std::rethrow_exception(e);
      } catch (const std::exception& ex) {
        error = ex.what();
        if (error.empty()) error = "an unknown error";
      }
    });
    io.run();
    return error;
  };
  auto totals_event = [&state](const PassTotals& t) {
    return json{{"event", "totals"},       {"folders", t.folders},
                {"created", t.created},     {"subscribed", t.subscribed},
                {"unsubscribed", t.unsubscribed}, {"deleted_folders", t.deleted_folders},
                {"messages", t.messages},   {"bytes", t.bytes},
                {"flags", t.flags},         {"expunged", t.expunged},
                {"kept_extra", t.kept_extra}, {"vanished", t.vanished},
                {"already", t.already},     {"unchanged", t.unchanged},
                {"skipped_folders", t.skipped_folders},
                {"created_folders", state.created_folders},
                {"added_subscriptions", state.added_subscriptions}};
  };

  if (serve) {
    std::string line;
    while (std::getline(std::cin, line)) {
      if (line.empty()) continue;
      json command = json::parse(line, nullptr, false);
      if (!command.is_object()) {
        emit({{"event", "error"}, {"text", "a command that is not a JSON object"}});
        continue;
      }
      bool bad = false;
      for (const char* key : {"tolerant", "expunge"})
        if (command.contains(key) && !command[key].is_boolean()) bad = true;
      if (bad) {
        emit({{"event", "error"}, {"text", "tolerant and expunge must be true or false"}});
        continue;
      }
      options.tolerant = command.value("tolerant", false);
      options.expunge_allowed = command.value("expunge", false);
      state = CopyState{};
      for (const char* key : {"created_folders", "added_subscriptions"}) {
        auto it = command.find(key);
        if (it == command.end()) continue;
        auto& list = std::string(key) == "created_folders" ? state.created_folders
                                                           : state.added_subscriptions;
        if (!it->is_array()) bad = true;
        for (const auto& v : it->is_array() ? *it : json::array()) {
          if (v.is_string()) list.push_back(v.get<std::string>());
          else bad = true;
        }
      }
      if (bad) {
        emit({{"event", "error"}, {"text", "created_folders and added_subscriptions must be "
                                           "lists of strings"}});
        continue;
      }
      PassTotals totals;
      std::string error = one_pass(totals);
      if (!error.empty()) {
        emit({{"event", "error"}, {"text", isthmus::sanitize(error, 2000)},
              {"created_folders", state.created_folders},
              {"added_subscriptions", state.added_subscriptions}});
        continue;
      }
      emit(totals_event(totals));
    }
    return 0;
  }

  options.tolerant = tolerant;
  options.expunge_allowed = expunge;
  PassTotals totals;
  std::string error = one_pass(totals);
  if (!state_path.empty()) {
    json saved = {{"created_folders", state.created_folders},
                  {"added_subscriptions", state.added_subscriptions}};
    try {
      write_atomic(state_path, saved.dump(-1, ' ', false, json::error_handler_t::replace));
    } catch (const std::exception& e) {
      if (error.empty()) error = e.what();
    }
  }
  if (!error.empty()) {
    emit({{"event", "error"}, {"text", isthmus::sanitize(error, 2000)}});
    return 1;
  }
  emit(totals_event(totals));
  return 0;
}
