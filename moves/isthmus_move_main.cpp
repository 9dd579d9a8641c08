// isthmus-move: move a user's mailbox to another island (moves/mover.hpp,
// docs/move.md). The command line (that of the Python mover it replaced):
//
//   isthmus-move [--config FILE] move USER --to ISLAND [--force] [--events [--events-ack]]
//                                          [--journal-file PATH]
//   isthmus-move [--config FILE] move USER --resume | --abort
//   isthmus-move [--config FILE] status USER
//
// Exit codes: 0 done (or nothing to do), 1 usage or config, 2 an instance
// could not be reached, 3 a step failed (--resume continues; --abort goes
// back before the switch), 7 verification failed (the user is active on
// the source island again).

#include "moves/mover.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <csignal>
#include <cstdlib>
#include <iostream>

using namespace isthmus::moves::mover;

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction action {};
    action.sa_handler = [](int) { interrupt(); };
    ::sigaction(sig, &action, nullptr);  // no SA_RESTART: a blocking wait returns EINTR
  }
  CLI::App app{"isthmus-move: move a user's mailbox to another island, journaled and resumable"};
  app.set_version_flag("--version", std::string("isthmus-move ") + kVersion);
  app.require_subcommand(1);
  std::string config_path;
  app.add_option("--config", config_path,
                 "the config file (default $ISTHMUSCTL_CONFIG, else /etc/isthmus/isthmusctl.json)");
  std::string user;
  std::optional<std::string> to, mover, journal_file;
  bool resume = false, abort = false, force = false, events = false, events_ack = false;
  auto* move = app.add_subcommand("move", "move USER to --to ISLAND (or --resume, --abort)");
  move->add_option("user", user, "the user")->required();
  move->add_option("--to", to, "the destination island");
  move->add_flag("--resume", resume, "continue the unfinished move");
  move->add_flag("--abort", abort,
                 "give up an unfinished move before its switch has started: the user is set "
                 "active on the source island again");
  move->add_option("--mover", mover, "how the mail is copied: imap (any node, new UIDs) or dsync (Dovecot nodes, UIDs kept)")
      ->check(CLI::IsMember({"imap", "dsync"}));
  move->add_flag("--force", force,
                 "start even if the user is in state moving already or the destination mailbox "
                 "is not empty");
  move->add_flag("--events", events, "one JSON object per line (events), for the daemon's move job");
  move->add_flag("--events-ack", events_ack,
                 "with --events: after each journal event wait for a line \"stored\" on standard "
                 "input");
  move->add_option("--journal-file", journal_file, "the journal file of this move");
  move->add_option("--config", config_path, "the config file");
  auto* status = app.add_subcommand("status", "show the journal of USER's move");
  status->alias("move-status");
  status->add_option("user", user, "the user")->required();
  status->add_option("--config", config_path, "the config file");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? kExitOk : kExitUsage;
  }
  if (config_path.empty()) {
    const char* env = std::getenv("ISTHMUSCTL_CONFIG");
    config_path = env != nullptr && *env != '\0' ? env : kDefaultConfig;
  }
  std::optional<Events> out;
  if (move->parsed() && events) out.emplace(events_ack);
  std::unique_ptr<Mover> run;
  const auto finish = [&](int code, const std::optional<std::string>& problem) {
    if (problem) {
      std::cerr << "isthmus-move: " << *problem << '\n' << std::flush;
      if (out) out->emit(Json{{"event", "say"}, {"text", "isthmus-move: " + *problem}, {"stream", "stderr"}});
    }
    if (out) {
      std::string text = problem ? *problem
                         : run && run->summary() ? *run->summary()
                         : code == kExitOk        ? std::string("done")
                                                  : fmt::format("exit {}", code);
      out->finish(code, text, run ? run->interruption() : Json(nullptr));
    }
    return code;
  };
  try {
    Config config = load_config(config_path);
    run = std::make_unique<Mover>(std::move(config), out ? &*out : nullptr);
    if (status->parsed()) return run->status(user);
    if (resume && abort) throw UsageError("--resume and --abort exclude each other");
    return finish(run->move(user, to, resume, abort, force, mover, journal_file), std::nullopt);
  } catch (const MoveError& e) {
    return finish(e.code, std::string(e.what()));
  } catch (const std::exception& e) {
    return finish(kExitStep, fmt::format("unexpected error: {}; `isthmus-move status USER` shows "
                                         "where the move stands",
                                         e.what()));
  }
}
