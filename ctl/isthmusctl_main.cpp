// isthmusctl: the operator's command line for Isthmus instances.
//
// Talks to the admin API of one or more running instances (a unix socket,
// or HTTP with a bearer token) and prints what they say as plain tables, or
// as JSON with --json. `move` starts and follows the daemon's move jobs;
// `move --local` and `move-status` are handed over to isthmus-move
// (installed next to this program), which runs the move right here.
// Reference: docs/isthmusctl.md.

#include "ctl/commands.hpp"
#include "ctl/text.hpp"

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>

#include <unistd.h>

namespace {

using namespace isthmus::ctl;


const char* const kExitCodesHelp = R"(exit codes:
  0  success
  1  usage or config error (nothing was sent)
  2  an instance could not be reached, timed out or answered 5xx; the
     other instances were still asked and their results are printed
  3  the request was refused (HTTP 4xx other than 401/404), e.g. a promote
     refused or an invalid config on reload; move: a step failed (resume it)
  4  not found (HTTP 404): no such user, node or island
  5  instances disagree (islands: holder/epoch, or an island missing)
  6  authentication failed (HTTP 401): missing or wrong token
  7  move: the verification failed (the user is active on the source again)
  130  move: Ctrl-C while following (the move job goes on)
  When several apply, the first of 1, 6, 2, 3, 4, 5 is returned.)";

const char* const kMainHelp = R"(Operate running Isthmus instances through their admin API: where a user
is routed, kick sessions, drain nodes, promote an island's node, reload.

Instances come from the config file (--config, else $ISTHMUSCTL_CONFIG,
else /etc/isthmus/isthmusctl.json):

  {"instances": [{"name": "i1", "socket": "/run/isthmus/admin.sock"},
                 {"name": "i2", "url": "http://10.0.0.2:8025",
                  "token_file": "/etc/isthmus/admin.token"}],
   "timeout": "5s"}

Commands that change something (kick, drain, undrain, reload,
cache-invalidate) go to every instance; promote goes to the first that
answers; where and the listings ask every instance.)";

const char* const kMainExamples = R"(examples:
  isthmusctl where alice@example.org
  isthmusctl nodes
  isthmusctl drain a-left && isthmusctl kick --node a-left
  isthmusctl --instance /run/isthmus/admin.sock status
  isthmusctl --instance http://10.0.0.2:8025 --token-file /etc/isthmus/admin.token reload
  isthmusctl islands --json

reference: docs/isthmusctl.md)";

// Help laid out as argparse did (and as tests/tools/test_man_pages.py and
// the docs expect): "usage: isthmusctl CMD ...", the command's long
// description, its arguments, the commands indented by four, then the
// examples and exit codes.
class HelpFormatter : public CLI::Formatter {
 public:
  HelpFormatter() {
    label("Positionals", "positional arguments");
    label("REQUIRED", "");
    column_width(34);
  }

  void describe(const std::string& command, std::string text) {
    long_descriptions_[command] = std::move(text);
  }

  std::string make_usage(const CLI::App* app, std::string name) const override {
    std::string out = "usage: " + name;
    if (!app->get_options([](const CLI::Option* o) { return o->nonpositional(); }).empty())
      out += " [OPTIONS]";
    for (const CLI::Option* o : app->get_options([](const CLI::Option* o) { return o->get_positional(); }))
      out += o->get_required() ? " " + o->get_name() : " [" + o->get_name() + "]";
    if (!app->get_subcommands({}).empty()) out += " COMMAND ...";
    return out + "\n";
  }

  std::string make_subcommands(const CLI::App* app, CLI::AppFormatMode) const override {
    auto subs = app->get_subcommands({});
    if (subs.empty()) return "";
    std::string out = "commands:\n";
    for (const CLI::App* sub : subs)
      out += fmt::format("    {:<18}{}\n", sub->get_name(), sub->get_description());
    return out + "\n";
  }

  // The help sentence wrapped to 80 columns (CLI11 indents each line).
  std::string make_option_desc(const CLI::Option* option) const override {
    std::string text = CLI::Formatter::make_option_desc(option);
    std::string out;
    std::size_t line = 0;
    const std::size_t width = 80 - get_column_width();
    std::size_t start = 0;
    while (start < text.size()) {
      std::size_t end = text.find(' ', start);
      if (end == std::string::npos) end = text.size();
      std::string word = text.substr(start, end - start);
      if (line > 0 && line + 1 + word.size() > width) {
        out += '\n';
        line = 0;
      } else if (line > 0) {
        out += ' ';
        ++line;
      }
      out += word;
      line += word.size();
      start = end + 1;
    }
    return out;
  }

  // Sections (usage, description, arguments, options, commands, footer)
  // one blank line apart.
  std::string make_help(const CLI::App* app, std::string name,
                        CLI::AppFormatMode mode) const override {
    auto described = long_descriptions_.find(app->get_name());
    std::string description = app->get_parent() != nullptr && described != long_descriptions_.end()
                                  ? described->second
                                  : app->get_description();
    std::string out;
    for (std::string section : {make_usage(app, name), description, make_positionals(app),
                                make_groups(app, mode), make_subcommands(app, mode),
                                make_footer(app)}) {
      section.erase(0, section.find_first_not_of('\n'));
      section.erase(section.find_last_not_of('\n') + 1);
      if (!section.empty()) out += (out.empty() ? "" : "\n\n") + section;
    }
    return out + "\n";
  }

 private:
  std::map<std::string, std::string> long_descriptions_;
};

struct GlobalOptions {
  std::string config;
  std::vector<std::string> instances;
  std::string token_file;
  std::string timeout;
  bool json = false;
};

// --config, --instance, --token-file, --timeout, --json: accepted before
// and after the command name.
void add_global_options(CLI::App& app, GlobalOptions& options) {
  app.add_option("--config", options.config,
                 "the config file (default: $ISTHMUSCTL_CONFIG, else "
                 "/etc/isthmus/isthmusctl.json); not needed with --instance")
      ->type_name("FILE");
  app.add_option("-i,--instance", options.instances,
                 "only this instance: a name from the config, a unix socket path or an http:// "
                 "URL (repeatable; default: every instance of the config)")
      ->type_name("NAME|SOCKET|URL")
      ->allow_extra_args(false);
  app.add_option("--token-file", options.token_file,
                 "the bearer token for URLs given with --instance")
      ->type_name("FILE");
  app.add_option("--timeout", options.timeout,
                 "per request and instance, e.g. 5s or 250ms (default: the config's timeout, "
                 "else 5s)")
      ->type_name("DURATION");
  app.add_flag("--json", options.json,
               "print the combined JSON answers (with errors and exit_code) instead of tables");
}

// Options given after the command name join those given before it.
void merge(Command& command, const CLI::App& app, const GlobalOptions& top,
           const CLI::App* sub, const GlobalOptions& after) {
  auto pick = [&](const char* name, const std::string& before, const std::string& later)
      -> std::optional<std::string> {
    if (sub != nullptr && sub->count(name) > 0) return later;
    if (app.count(name) > 0) return before;
    return std::nullopt;
  };
  command.selection.config = pick("--config", top.config, after.config);
  command.selection.token_file = pick("--token-file", top.token_file, after.token_file);
  command.selection.timeout = pick("--timeout", top.timeout, after.timeout);
  command.selection.instances = top.instances;
  command.selection.instances.insert(command.selection.instances.end(), after.instances.begin(),
                                     after.instances.end());
  command.json = top.json || after.json;
}

bool takes_value(const std::string& arg) {
  return arg == "--instance" || arg == "-i" || arg == "--token-file" || arg == "--timeout" ||
         arg == "--config";
}

// The command word of argv (the first argument that is neither an option
// nor an option's value), or "".
std::string command_word(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") return i + 1 < argc ? argv[i + 1] : "";
    if (!arg.starts_with("-")) return arg;
    if (takes_value(arg)) ++i;
  }
  return "";
}

// The program's own directory (symbolic links resolved).
std::filesystem::path own_directory() {
  std::error_code error;
  auto self = std::filesystem::read_symlink("/proc/self/exe", error);
  if (error) return {};
  return self.parent_path();
}

// Whether `move` at argv[i] asks for the local mover: --local among its
// arguments (before a "--").
bool asks_local(int argc, char** argv, int i) {
  for (int k = i + 1; k < argc; ++k) {
    std::string arg = argv[k];
    if (arg == "--") return false;
    if (arg == "--local") return true;
  }
  return false;
}

// `isthmusctl [--config FILE] move --local ...` and `move-status USER` run
// isthmus-move, the mover, from isthmusctl's own folder (the package puts
// both in /usr/lib/isthmus): the same arguments (--local dropped) and
// environment; it reads the same config file (its "move" section).
// Returns only when this is another command, or when the mover cannot be
// started (exit 1).
std::optional<int> hand_over_move(int argc, char** argv) {
  std::vector<std::string> config;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "move" && !asks_local(argc, argv, i)) return std::nullopt;  // a move job
    if (arg == "move" || arg == "move-status") {
      const std::filesystem::path own = own_directory();
      if (own.empty() || !own.is_absolute()) {
        std::fputs("isthmusctl: cannot tell where isthmusctl is installed (/proc/self/exe), "
                   "so not where isthmus-move is\n",
                   stderr);
        return kExitUsage;
      }
      const std::filesystem::path program = own / "isthmus-move";
      std::vector<std::string> args = {program.string()};
      args.insert(args.end(), config.begin(), config.end());
      bool dropped = false;
      for (int k = i; k < argc; ++k) {
        if (!dropped && arg == "move" && std::string(argv[k]) == "--local") {
          dropped = true;  // the first one (asks_local saw it before any "--")
          continue;
        }
        args.emplace_back(argv[k]);
      }
      std::vector<char*> exec_args;
      for (auto& a : args) exec_args.push_back(a.data());
      exec_args.push_back(nullptr);
      ::execv(program.c_str(), exec_args.data());
      std::string message = fmt::format("isthmusctl: {}: cannot run {}: {}\n", arg,
                                        program.string(), std::strerror(errno));
      std::fputs(message.c_str(), stderr);
      return kExitUsage;
    }
    if (arg == "--config" && i + 1 < argc) {
      config = {arg, argv[i + 1]};
      ++i;
      continue;
    }
    if (arg.starts_with("--config=")) {
      config = {arg};
      continue;
    }
    if (!arg.starts_with("-")) return std::nullopt;  // another command
    // Other global options are ignored by move (it reads the config's
    // instances); skip their values.
    if (arg == "--instance" || arg == "-i" || arg == "--token-file" || arg == "--timeout") ++i;
  }
  return std::nullopt;
}

struct CommandSpec {
  const char* name;
  const char* summary;
  const char* description;
  const char* examples;
};

const CommandSpec kCommands[] = {
    {"where", "where a user is routed, and their live sessions",
     "Look USER up in the directory (through the first instance that answers):\n"
     "island, account state and the name used on the nodes; show the island's\n"
     "policy, role holder and nodes as that instance sees them; then list the\n"
     "user's live sessions on every instance.\n\n"
     "Exit 4 when the directory does not know the user (sessions are still\n"
     "listed: a deleted user may still be logged in).",
     "  isthmusctl where alice@example.org\n  isthmusctl where alice@example.org --json"},
    {"sessions", "list live sessions (all, or of a user, node or island)",
     "List the live sessions of every instance, with the instance each one is on.",
     "  isthmusctl sessions --node a-left\n  isthmusctl sessions --island b"},
    {"kick", "close the live sessions of a user, a node or an island",
     "Close live sessions on every instance: those of USER, or all those on a\n"
     "node (--node) or an island (--island). Clients see the connection close\n"
     "and normally reconnect at once (routed afresh: to another node if the\n"
     "node is draining or down). Prints how many each instance closed.",
     "  isthmusctl kick alice@example.org\n"
     "  isthmusctl drain a-left && isthmusctl kick --node a-left"},
    {"nodes", "every node: island, health, draining, sessions, role",
     "List the nodes as every instance sees them, one row per node and instance:\n"
     "health state (up, down, degraded (imap down) = down for some of its\n"
     "protocols only), draining (yes (config) when the config says\n"
     "\"drain\": true), sessions relayed by that instance, and the role in\n"
     "an active-passive island (active/standby).",
     "  isthmusctl nodes\n  isthmusctl nodes --json"},
    {"islands", "every island: policy, role holder, epoch; checks instances agree",
     "List the islands as every instance sees them: policy, role holder and\n"
     "epoch (active-passive islands), nodes, sessions. Warn on stderr and exit 5\n"
     "when instances disagree on an island's holder or epoch, or an island is\n"
     "configured on some instances only. Right after a promote or a role move a\n"
     "second of disagreement is normal (roles.poll_interval): run it again.",
     "  isthmusctl islands"},
    {"drain", "stop sending new sessions to a node (open sessions stay)",
     "Drain NODE on every instance: it gets no new sessions, not even when the\n"
     "island's other nodes are down; its open sessions go on until they end\n"
     "(close them with kick --node). Held in the running process: a restart\n"
     "forgets it; for a lasting drain set \"drain\": true on the node in the\n"
     "config. Undo with undrain.",
     "  isthmusctl drain a-left\n  isthmusctl drain a-left && isthmusctl kick --node a-left"},
    {"undrain", "let a drained node take new sessions again",
     "Undo a drain of NODE on every instance. A node drained by its config\n"
     "(\"drain\": true) stays drained until the config says otherwise.",
     "  isthmusctl undrain a-left"},
    {"promote", "make NODE the role holder of an active-passive island",
     "Move the role of active-passive ISLAND to NODE, through the first instance\n"
     "that answers; prints the new epoch. With a shared role store (roles.store\n"
     "\"sql\") the other instances follow within roles.poll_interval; with\n"
     "roles.store \"local\" each instance decides alone: promote on each, with\n"
     "--instance. Sessions on the old holder are closed, spread out. Exit 3\n"
     "when the instance refuses (e.g. NODE is down or not in ISLAND).",
     "  isthmusctl promote a a-right"},
    {"reload", "re-read the config on every instance (like SIGHUP)",
     "Have every instance re-read its config file; prints the new config\n"
     "generation of each. An invalid config is refused (exit 3) with its\n"
     "problems, one per line, and the instance keeps the config it had.",
     "  isthmusctl reload"},
    {"status", "one line per instance: version, uptime, config, sessions",
     "Show each instance's name, version, config generation (one more with\n"
     "each reload that took effect), uptime, live sessions per protocol and its\n"
     "config file.",
     "  isthmusctl status\n  isthmusctl --instance /run/isthmus/admin.sock status"},
    {"metrics", "print the Prometheus metrics of one instance",
     "Print GET /metrics (Prometheus text format) of the first instance, or of\n"
     "the one named with --instance.",
     "  isthmusctl metrics --instance i2 | grep isthmus_sessions"},
    {"cache-invalidate", "forget cached directory answers (one user, or all)",
     "Drop the directory cache entry of USER (or, without USER, every entry)\n"
     "on every instance, so the next login looks the user up afresh. Open\n"
     "sessions are not touched (kick them to re-route them).",
     "  isthmusctl cache-invalidate alice@example.org"},
    {"move", "move a user to another island (a move job of the daemon)",
     "Start a move job of USER to ISLAND on the first instance that answers\n"
     "(POST /v1/moves) and follow it: every second the job's new history lines\n"
     "and, on a terminal, one progress line (step, bytes, rate, ETA). The job\n"
     "goes on without isthmusctl: --detach only starts it, Ctrl-C only stops\n"
     "following (exit 130), and --follow ID follows it again, from another\n"
     "instance if need be (a job whose owner died is taken over). Ends with the\n"
     "job: exit 0 done, 7 the verification failed (the user is active on the\n"
     "source again), 3 failed or aborted.\n\n"
     "--local runs the mover here instead, without the daemon's move job\n"
     "(isthmus-move: `isthmusctl move --local --help` for --resume,\n"
     "--abort, --force; docs/move.md).",
     "  isthmusctl move alice@example.org --to b\n"
     "  isthmusctl move alice@example.org --to b --mover dsync --detach\n"
     "  isthmusctl move --follow 20261203T225500Z-3f2a9c\n"
     "  isthmusctl move --local alice@example.org --to b"},
    {"moves", "list the daemon's move jobs, newest first",
     "List the move jobs (GET /v1/moves on the first instance that answers):\n"
     "state, step, progress (percent of the bytes to copy), the instance that\n"
     "runs it (owner) and when it last changed.",
     "  isthmusctl moves\n  isthmusctl moves --json"},
    {"move-abort", "abort a move job (only before its switch started)",
     "Ask for the abort of move job ID: the user is set active on the source\n"
     "island again. Exit 3 when the job has finished or its switch has started\n"
     "(it can then only be resumed).",
     "  isthmusctl move-abort 20261203T225500Z-3f2a9c"},
    {"move-resume", "resume a failed or interrupted move job",
     "Ask the daemon to run move job ID again from where it stopped. Exit 3\n"
     "when it cannot be resumed (e.g. it has finished).",
     "  isthmusctl move-resume 20261203T225500Z-3f2a9c"},
    // Handed over to isthmus-move (hand_over_move); listed for --help.
    {"move-status", "show the journal of a local move (docs/move.md)",
     "The steps done, their times, and what is left, from the journal of\n"
     "`isthmusctl move --local` (move.journal_dir).",
     "  isthmusctl move-status alice@example.org"},
};

int usage_error(const std::string& message) {
  std::string out =
      fmt::format("isthmusctl: error: {}\n(try: isthmusctl --help)\n", clean(message));
  std::fputs(out.c_str(), stderr);
  return kExitUsage;
}

int run(int argc, char** argv) {
  if (auto moved = hand_over_move(argc, argv)) return *moved;
  // isthmusctl nodes | head: a closed pipe ends the output quietly
  // (EPIPE on write, exit status as if all was printed).
  std::signal(SIGPIPE, SIG_IGN);

  CLI::App app(kMainHelp, "isthmusctl");
  auto formatter = std::make_shared<HelpFormatter>();
  app.formatter(formatter);
  app.option_defaults()->group("options");
  app.footer(std::string(kExitCodesHelp) + "\n\n" + kMainExamples);
  app.set_version_flag("--version", std::string("isthmusctl ") + kVersion,
                       "print the version and exit");
  app.set_help_flag("-h,--help", "show this help and exit");
  GlobalOptions top;
  add_global_options(app, top);

  std::string choices;
  Command command;
  std::map<std::string, CLI::App*> subs;
  std::map<std::string, GlobalOptions> after;
  for (const auto& spec : kCommands) {
    choices += (choices.empty() ? "'" : ", '") + std::string(spec.name) + "'";
    CLI::App* sub = app.add_subcommand(spec.name, spec.summary);
    sub->set_help_flag("-h,--help", "show this help and exit");
    formatter->describe(spec.name, spec.description);
    sub->footer(fmt::format("examples:\n{}\n\n{}", spec.examples, kExitCodesHelp));
    add_global_options(*sub, after[spec.name]);
    subs[spec.name] = sub;
  }
  auto user = [&](CLI::App* sub, const char* help, bool required) {
    auto* option = sub->add_option("USER", command.user, help)->type_name("");
    if (required) option->required();
  };
  user(subs["where"], "the login name, as the user types it", true);
  user(subs["kick"], "the user whose sessions to close", false);
  user(subs["cache-invalidate"], "the user (default: every entry)", false);
  user(subs["move"], "the user to move", false);
  user(subs["move-status"], "the user whose move to show", true);
  subs["sessions"]->add_option("--user", command.user, "only this user's sessions")
      ->type_name("USER");
  subs["sessions"]->add_option("--node", command.node, "only the sessions relayed to this node")
      ->type_name("NODE");
  subs["sessions"]->add_option("--island", command.island, "only the sessions on this island")
      ->type_name("ISLAND");
  subs["kick"]->add_option("--node", command.node, "close every session relayed to this node")
      ->type_name("NODE");
  subs["kick"]->add_option("--island", command.island, "close every session on this island")
      ->type_name("ISLAND");
  for (const char* verb : {"drain", "undrain"})
    subs[verb]->add_option("NODE", command.node, "the node's name, as in the config")
        ->type_name("")
        ->required();
  subs["promote"]->add_option("ISLAND", command.island, "an active-passive island")
      ->type_name("")
      ->required();
  subs["promote"]->add_option("NODE", command.node, "the island's node to hold the role")
      ->type_name("")
      ->required();
  subs["move"]->add_option("--to", command.island, "the island to move the user to")
      ->type_name("ISLAND");
  subs["move"]->add_option("--mover", command.mover,
                           "how the mail is copied: imap or dsync (default: the daemon's "
                           "moves.mover)")
      ->type_name("imap|dsync");
  subs["move"]->add_flag("--detach", command.detach,
                         "start the move job and return (follow it later with --follow ID)");
  subs["move"]->add_option("--follow", command.job,
                           "follow move job ID (started earlier, or by someone else)")
      ->type_name("ID");
  bool local = false;  // never true here: hand_over_move() ran the mover
  subs["move"]->add_flag("--local", local,
                         "run the mover here (isthmus-move), not as a daemon move job: "
                         "see isthmusctl move --local --help");
  for (const char* verb : {"move-abort", "move-resume"})
    subs[verb]->add_option("ID", command.job, "the move job's id (isthmusctl moves)")
        ->type_name("")
        ->required();
  app.require_subcommand(0, 1);

  // argparse's messages for a missing or unknown command.
  std::string word = command_word(argc, argv);
  bool asks_help = false;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") break;
    asks_help |= arg == "-h" || arg == "--help" || arg == "--version";
    if (takes_value(arg)) ++i;
  }
  if (!word.empty() && !subs.contains(word))
    return usage_error(fmt::format("argument COMMAND: invalid choice: {} (choose from {})",
                                   repr(word), choices));
  if (word.empty() && !asks_help)
    return usage_error("the following arguments are required: COMMAND");
  if (word == "move")
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--") break;
      if (arg == "--resume" || arg == "--abort" || arg == "--force")
        return usage_error(fmt::format(
            "move: {} is an option of the local mover (isthmusctl move --local USER {}); a move "
            "job of the daemon is resumed or aborted with isthmusctl move-resume ID or "
            "move-abort ID",
            arg, arg));
    }

  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {  // --help, --version
    return app.exit(e) == 0 ? kExitOk : kExitUsage;
  } catch (const CLI::ParseError& e) {
    return usage_error(e.what());
  }
  const CLI::App* chosen = subs.contains(word) ? subs[word] : nullptr;
  if (chosen == nullptr) return usage_error("the following arguments are required: COMMAND");
  command.name = word;
  merge(command, app, top, chosen, after[word]);
  const char* environment_config = std::getenv("ISTHMUSCTL_CONFIG");
  int code = run_command(command, environment_config != nullptr ? environment_config : "");
  if (std::fflush(stdout) != 0 && errno == EPIPE) return kExitOk;
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // a bug: say so, with the documented code
    std::string message = fmt::format("isthmusctl: unexpected error: {}\n", e.what());
    std::fputs(message.c_str(), stderr);
    return kExitUnreachable;
  }
}
