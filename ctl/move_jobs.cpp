#include "ctl/move_jobs.hpp"

#include "ctl/commands.hpp"

#include "common/strings.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <thread>

#include <sys/ioctl.h>
#include <unistd.h>

namespace isthmus::ctl {

namespace {

constexpr std::size_t kMaxTextChars = 2000;  // one history line or result, as printed
constexpr auto kPollInterval = std::chrono::seconds(1);
// Following gives up when no instance has answered for this long.
constexpr auto kNobodyAnswersLimit = std::chrono::minutes(2);

const char* const kNotConfiguredHint =
    "configure \"moves\" in the daemon's config (docs/move.md), or run the mover here with "
    "isthmusctl move --local";

// Set by SIGINT while following: the follow loop detaches. (A signal
// handler can only reach a flag like this one.)
volatile std::sig_atomic_t g_interrupted = 0;

extern "C" void note_interrupt(int) { g_interrupted = 1; }

const Json& field(const Json& obj, const char* key) {
  static const Json null_value;
  if (!obj.is_object()) return null_value;
  auto it = obj.find(key);
  return it == obj.end() ? null_value : *it;
}

std::optional<double> number(const Json& value) {
  if (!value.is_number()) return std::nullopt;
  double n = value.get<double>();
  if (!std::isfinite(n)) return std::nullopt;
  return n;
}

// A string field as cleaned text ("" when missing or not a string), cut to
// kMaxTextChars.
std::string text_of(const Json& value) {
  if (!value.is_string()) return value.is_null() ? "" : cell(value);
  std::string out = clean(value.get_ref<const std::string&>());
  if (out.size() > kMaxTextChars) {
    out.resize(kMaxTextChars);
    while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
    if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xC0) out.pop_back();
    out += "...";
  }
  return out;
}

// The first `width` characters (code points) of a UTF-8 string.
std::string cut_to_width(const std::string& text, std::size_t width) {
  std::size_t chars = 0;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) == 0x80) continue;
    if (chars == width) return text.substr(0, i);
    ++chars;
  }
  return text;
}

void print_line(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

void complain(const Instance* inst, std::string_view message) {
  std::string head = inst != nullptr ? fmt::format("isthmusctl: {}: ", inst->label())
                                     : std::string("isthmusctl: ");
  std::string out = head + clean(trim(message)) + "\n";
  std::fflush(stdout);
  std::fputs(out.c_str(), stderr);
}


bool moves_not_configured(const Reply& reply) {
  return reply.status == 503 && reply.message.has_value();
}

// Asks the instances in order, from `start`, until one answers (a 503 with
// the daemon's own "error" counts as an answer: moves not configured, or
// their store down); those that do not are reported on stderr. Nothing
// when none answered (the last failure's exit code in `code`).
std::optional<Reply> first_answer(const std::vector<Instance>& instances,
                                  const AdminRequest& request, int& code,
                                  std::size_t start = 0, bool quiet = false) {
  code = kExitUnreachable;
  for (std::size_t k = 0; k < instances.size(); ++k) {
    const Instance& inst = instances[(start + k) % instances.size()];
    Reply reply = ask(inst, request);
    bool skip = reply.kind == ReplyKind::unreachable || reply.kind == ReplyKind::auth ||
                (reply.kind == ReplyKind::server && !moves_not_configured(reply));
    if (!skip) return reply;
    if (!quiet) complain(&inst, reply.error);
    code = exit_code_of(reply.kind);
  }
  return std::nullopt;
}

// Prints an answer that is not 2xx; returns its exit code.
int report_failure(const Reply& reply) {
  if (moves_not_configured(reply)) {
    complain(reply.instance, *reply.message);
    complain(nullptr, kNotConfiguredHint);
    return kExitUsage;
  }
  complain(reply.instance, reply.error);
  return exit_code_of(reply.kind);
}

std::size_t terminal_width() {
  winsize size{};
  if (::ioctl(STDOUT_FILENO, TIOCGWINSZ, &size) == 0 && size.ws_col >= 20) return size.ws_col;
  return 80;
}

void print_json(const Json& value) {
  print_line(value.dump(2, ' ', true, Json::error_handler_t::replace));
}

// ---------------------------------------------------------------- following a job

class Follower {
 public:
  Follower(const std::vector<Instance>& instances, std::string id, bool json)
      : instances_(instances), id_(std::move(id)), json_(json), tty_(::isatty(STDOUT_FILENO)) {}

  // Follows until the job ends (its exit code), Ctrl-C (kExitDetached) or
  // no instance answering (kExitUnreachable). `known`: the job as the
  // start answered it, or null.
  int run(const Json& known, std::size_t instance_index) {
    current_ = instance_index;
    struct sigaction action {};
    action.sa_handler = note_interrupt;
    sigemptyset(&action.sa_mask);
    struct sigaction previous {};
    ::sigaction(SIGINT, &action, &previous);
    int code = loop(known);
    ::sigaction(SIGINT, &previous, nullptr);
    return code;
  }

 private:
  int loop(const Json& known) {
    if (known.is_object())
      if (auto code = show(known)) return *code;
    auto last_answer = std::chrono::steady_clock::now();
    const std::string path = "/v1/moves/" + percent_encode(id_);
    while (true) {
      if (g_interrupted) return detach();
      int code = kExitUnreachable;
      auto reply = first_answer(instances_, {"GET", path, std::nullopt, true}, code, current_,
                                /*quiet=*/true);
      if (g_interrupted) return detach();
      if (!reply) {
        if (!lost_)
          note(fmt::format("no instance answers about move {}; still trying", clean(id_)));
        lost_ = true;
        if (std::chrono::steady_clock::now() - last_answer > kNobodyAnswersLimit) {
          clear_bar();
          complain(nullptr, fmt::format("no instance answered for {}: stopped following move {}"
                                        " (it may go on: isthmusctl move --follow {})",
                                        show_duration(std::chrono::duration<double>(
                                                          kNobodyAnswersLimit)
                                                          .count()),
                                        id_, id_));
          return kExitUnreachable;
        }
      } else if (!reply->ok()) {
        clear_bar();
        return report_failure(*reply);
      } else {
        last_answer = std::chrono::steady_clock::now();
        std::size_t index = static_cast<std::size_t>(reply->instance - instances_.data());
        if (index != current_ || lost_)
          note(fmt::format("following move {} through {}", clean(id_),
                           clean(reply->instance->name)));
        current_ = index;
        lost_ = false;
        if (auto ended = show(reply->body)) return *ended;
      }
      for (int i = 0; i < 10 && !g_interrupted; ++i)
        std::this_thread::sleep_for(kPollInterval / 10);
    }
  }

  // Shows what is new in JOB; its exit code when it has ended.
  std::optional<int> show(const Json& job) {
    const Json& owner = field(job, "owner");
    if (!owner.is_null() && last_owner_ && *last_owner_ != owner)
      note(fmt::format("move {} taken over by {} (epoch {})", clean(id_), text_of(owner),
                       cell(field(job, "epoch"))));
    if (!owner.is_null()) last_owner_ = owner;
    auto code = move_exit_code(job);
    if (code) bar_job_.reset();  // lines above no bar now
    else bar_job_ = job;
    if (!json_)
      for (const auto& line : history_.new_lines(field(job, "history"))) above_bar(line);
    if (!code) {
      if (tty_ && !json_) draw_bar(job);
      return std::nullopt;
    }
    clear_bar();
    if (json_) {
      print_json(job);
    } else {
      std::string result = text_of(field(job, "result"));
      print_line(fmt::format("move {} {}{}", clean(id_), text_of(field(job, "state")),
                             result.empty() ? "" : ": " + result));
    }
    return code;
  }

  int detach() {
    clear_bar();
    std::string message = fmt::format(
        "isthmusctl: detached; move {} goes on (re-attach: isthmusctl move --follow {})\n",
        clean(id_), clean(id_));
    std::fflush(stdout);
    std::fputs(message.c_str(), stderr);
    return kExitDetached;
  }

  // A line of its own: above the progress bar on a terminal, else plain.
  void above_bar(const std::string& line) {
    clear_bar();
    print_line(line);
    if (tty_ && bar_job_) draw_bar(*bar_job_);
  }

  // A note of isthmusctl's own (a take-over, another instance): above the
  // bar on a terminal, on stderr otherwise (stdout keeps only the history).
  void note(const std::string& text) {
    if (json_) return;
    if (tty_) {
      above_bar("isthmusctl: " + text);
    } else {
      std::fflush(stdout);
      std::fputs(("isthmusctl: " + text + "\n").c_str(), stderr);
    }
  }

  void draw_bar(const Json& job) {
    bar_job_ = job;
    std::string line = move_progress_line(job, terminal_width() - 1);
    std::fputs(("\r\x1b[K" + line).c_str(), stdout);
    std::fflush(stdout);
    bar_shown_ = true;
  }

  void clear_bar() {
    if (!bar_shown_) return;
    std::fputs("\r\x1b[K", stdout);
    std::fflush(stdout);
    bar_shown_ = false;
  }

  const std::vector<Instance>& instances_;
  std::string id_;
  bool json_;
  bool tty_;
  std::size_t current_ = 0;
  bool lost_ = false;
  bool bar_shown_ = false;
  std::optional<Json> bar_job_;
  std::optional<Json> last_owner_;
  HistoryCursor history_;
};

// ---------------------------------------------------------------- the commands

int cmd_move_start(const Command& command, const std::vector<Instance>& instances) {
  Json body = {{"user", *command.user}, {"to", *command.island}};
  if (command.mover) body["mover"] = *command.mover;
  int code = kExitUnreachable;
  auto reply = first_answer(instances, {"POST", "/v1/moves", body, true}, code);
  if (!reply) {
    complain(nullptr, fmt::format("no instance answered: the move of {} was not started",
                                  *command.user));
    return code;
  }
  if (!reply->ok()) {
    int failed = report_failure(*reply);
    const Json& running = field(reply->body, "id");
    if (reply->status == 409 && running.is_string())
      complain(nullptr, fmt::format("follow it with: isthmusctl move --follow {}",
                                    text_of(running)));
    return failed;
  }
  const Json& job = reply->body;
  std::string id = field(job, "id").is_string() ? field(job, "id").get<std::string>() : "";
  if (id.empty()) {
    complain(reply->instance, "answered the move without a job id");
    return kExitUnreachable;
  }
  if (!command.json)
    print_line(fmt::format("move {} started on {}", clean(id), clean(reply->instance->name)));
  if (command.detach) {
    if (command.json) print_json(job);
    else print_line(fmt::format("follow it with: isthmusctl move --follow {}", clean(id)));
    return kExitOk;
  }
  std::size_t index = static_cast<std::size_t>(reply->instance - instances.data());
  return Follower(instances, id, command.json).run(job, index);
}

int cmd_moves(const Command& command, const std::vector<Instance>& instances) {
  int code = kExitUnreachable;
  auto reply = first_answer(instances, {"GET", "/v1/moves", std::nullopt, true}, code);
  if (!reply) {
    complain(nullptr, "no instance answered");
    return code;
  }
  if (!reply->ok()) return report_failure(*reply);
  const Json& moves = field(reply->body, "moves");
  if (command.json) {
    Json out;
    out["command"] = "moves";
    out["via"] = reply->instance->name;
    out["moves"] = moves.is_array() ? moves : Json::array();
    print_json(out);
  } else {
    print_line(moves_table(moves));
  }
  return kExitOk;
}

int cmd_move_verb(const Command& command, const std::vector<Instance>& instances,
                  const char* verb) {
  const std::string& id = *command.job;
  int code = kExitUnreachable;
  auto reply = first_answer(
      instances, {"POST", "/v1/moves/" + percent_encode(id) + "/" + verb, Json::object(), true},
      code);
  if (!reply) {
    complain(nullptr, fmt::format("no instance answered: move {} was not told to {}", id, verb));
    return code;
  }
  if (!reply->ok()) return report_failure(*reply);
  if (command.json) {
    print_json(reply->body);
  } else {
    const Json& job = reply->body;
    print_line(fmt::format("move {}: {} asked (through {}); state {}, step {}", clean(id), verb,
                           clean(reply->instance->name), text_of(field(job, "state")),
                           text_of(field(job, "step"))));
    print_line(fmt::format("follow it with: isthmusctl move --follow {}", clean(id)));
  }
  return kExitOk;
}

}  // namespace

std::optional<int> move_exit_code(const Json& job) {
  const Json& state = field(job, "state");
  if (state == "done") return kExitOk;
  if (state == "verify_failed") return kExitVerifyFailed;
  if (state == "failed" || state == "aborted") return kExitRefused;
  if (state == "running" || state == "waiting" || state == "aborting") return std::nullopt;
  if (!field(job, "finished").is_null()) return kExitRefused;  // a state this version lacks
  return std::nullopt;
}

std::string show_bytes(double bytes) {
  if (!std::isfinite(bytes) || bytes < 0) return "?";
  const char* units[] = {"B", "kB", "MB", "GB", "TB"};
  std::size_t unit = 0;
  while (bytes >= 1000 && unit + 1 < std::size(units)) {
    bytes /= 1000;
    ++unit;
  }
  return unit == 0 ? fmt::format("{:.0f} B", bytes) : fmt::format("{:.1f} {}", bytes, units[unit]);
}

std::string move_progress_line(const Json& job, std::size_t width) {
  const Json& progress = field(job, "progress");
  std::string step = text_of(field(job, "step"));
  auto number_of_step = number(field(job, "step_number"));
  auto steps = number(field(job, "steps"));
  std::string line;
  if (number_of_step && steps)
    line = fmt::format("[{:.0f}/{:.0f}] ", *number_of_step, *steps);
  line += step.empty() ? text_of(field(job, "state")) : step;
  auto bytes = number(field(progress, "bytes"));
  auto total = number(field(progress, "bytes_total"));
  if (bytes && total && *total > 0) {
    double fraction = std::clamp(*bytes / *total, 0.0, 1.0);
    constexpr int kBar = 20;
    int filled = static_cast<int>(fraction * kBar);
    line += fmt::format(" [{}{}] {:.0f}% {}/{}", std::string(filled, '#'),
                        std::string(kBar - filled, '-'), fraction * 100, show_bytes(*bytes),
                        show_bytes(*total));
  } else if (bytes && *bytes > 0) {
    line += " " + show_bytes(*bytes);
  }
  if (auto pass = number(field(progress, "pass")); pass && *pass > 0)
    line += fmt::format(" pass {:.0f}", *pass);
  auto done = number(field(progress, "folders_done"));
  auto folders = number(field(progress, "folders"));
  if (done && folders && *folders > 0)
    line += fmt::format(" {:.0f}/{:.0f} folders", *done, *folders);
  if (auto rate = number(field(progress, "rate")); rate && *rate > 0)
    line += " " + show_bytes(*rate) + "/s";
  if (auto eta = number(field(progress, "eta_seconds")); eta && *eta >= 0)
    line += " ETA " + show_duration(*eta);
  std::string state = text_of(field(job, "state"));
  if (state == "waiting" || state == "aborting") line += " (" + state + ")";
  return cut_to_width(line, width);
}

std::string moves_table(const Json& moves) {
  if (!moves.is_array() || moves.empty()) return "no moves";
  std::vector<std::vector<std::string>> rows;
  for (const auto& job : moves) {
    if (!job.is_object()) continue;
    const Json& progress = field(job, "progress");
    auto bytes = number(field(progress, "bytes"));
    auto total = number(field(progress, "bytes_total"));
    std::string percent = "-";
    if (bytes && total && *total > 0)
      percent = fmt::format("{:.0f}%", std::clamp(*bytes / *total, 0.0, 1.0) * 100);
    std::vector<std::string> row;
    for (const char* key : {"id", "user", "from", "to", "mover", "state", "step"})
      row.push_back(cell(field(job, key)));
    row.push_back(percent);
    row.push_back(cell(field(job, "owner")));
    row.push_back(cell(field(job, "updated")));
    rows.push_back(std::move(row));
  }
  if (rows.empty()) return "no moves";
  return table({"ID", "USER", "FROM", "TO", "MOVER", "STATE", "STEP", "PROGRESS", "OWNER",
                "UPDATED"},
               rows, {"PROGRESS"});
}

std::vector<std::string> HistoryCursor::new_lines(const Json& history) {
  std::vector<std::string> lines;
  if (!history.is_array()) return lines;
  std::size_t start = 0;
  if (last_) {
    start = history.size();  // nothing new unless the last one shown is found
    for (std::size_t i = history.size(); i-- > 0;) {
      if (history[i] == *last_) {
        start = i + 1;
        break;
      }
    }
    if (start == history.size() && !history.empty() && history.back() != *last_) {
      // The last line shown is gone (the history was cut): show what is
      // newer than it by time, if it says when.
      const Json& last_at = field(*last_, "at");
      start = 0;
      if (last_at.is_string())
        while (start < history.size() && field(history[start], "at").is_string() &&
               field(history[start], "at").get<std::string>() <= last_at.get<std::string>())
          ++start;
    }
  }
  for (std::size_t i = start; i < history.size(); ++i) {
    const Json& entry = history[i];
    std::string at = text_of(field(entry, "at"));
    std::string text = entry.is_string() ? text_of(entry) : text_of(field(entry, "text"));
    lines.push_back(at.empty() ? text : at + "  " + text);
  }
  if (!history.empty()) last_ = history.back();
  return lines;
}

int run_move_job(const Command& command, const std::vector<Instance>& instances) {
  if (command.name == "moves") return cmd_moves(command, instances);
  if (command.name == "move-abort") return cmd_move_verb(command, instances, "abort");
  if (command.name == "move-resume") return cmd_move_verb(command, instances, "resume");
  if (command.job) {
    Json known;
    return Follower(instances, *command.job, command.json).run(known, 0);
  }
  return cmd_move_start(command, instances);
}

}  // namespace isthmus::ctl
