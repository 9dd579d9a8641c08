#include "moves/move_job.hpp"

#include "common/json_nesting.hpp"
#include "common/log.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <openssl/rand.h>

#include <array>
#include <chrono>

namespace isthmus::moves {

using json = nlohmann::json;

namespace {

constexpr std::array kTerminal = {"done", "failed", "verify_failed", "aborted"};
constexpr std::array kStates = {"running", "waiting", "aborting", "done",
                                "failed",  "verify_failed", "aborted"};
constexpr std::size_t kMaxText = 2000;  // one history line, sanitized
constexpr int kMaxDepth = 64;

}  // namespace

json parse_bounded_json(std::string_view text) {
  if (!json_nesting_within(text, kMaxDepth)) return json(json::value_t::discarded);
  return json::parse(text.begin(), text.end(), nullptr, false);
}

bool valid_job_id(std::string_view id) {
  // 20261203T225500Z-3f2a9c
  if (id.size() != 23 || id[8] != 'T' || id[15] != 'Z' || id[16] != '-') return false;
  for (std::size_t i = 0; i < id.size(); ++i) {
    if (i == 8 || i == 15 || i == 16) continue;
    const char c = id[i];
    const bool digit = c >= '0' && c <= '9';
    if (i < 16 ? !digit : !(digit || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

namespace {

std::string string_of(const json& o, const char* key) {
  auto it = o.find(key);
  return it != o.end() && it->is_string() ? it->get<std::string>() : std::string();
}

std::uint64_t count_of(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end()) return 0;
  if (it->is_number_unsigned()) return it->get<std::uint64_t>();
  if (it->is_number_integer()) return static_cast<std::uint64_t>(std::max<std::int64_t>(0, it->get<std::int64_t>()));
  return 0;
}

std::optional<double> number_of(const json& o, const char* key) {
  auto it = o.find(key);
  if (it == o.end() || !it->is_number()) return std::nullopt;
  return it->get<double>();
}

// History and result text: the mover's UTF-8 kept (folder names are often
// not ASCII), ASCII control characters replaced by spaces, cut at `max`
// bytes on a character boundary. Idempotent, so a job read back from the
// store and written again is the same. (What is printed to a terminal is
// escaped again by isthmusctl; invalid UTF-8 is replaced when the job is
// serialised.)
std::string clean_text(std::string_view text, std::size_t max) {
  // Valid UTF-8 first, exactly as the store's serialisation would make it
  // (an invalid sequence becomes U+FFFD): then a job read back from the
  // store is what was written, and the cut below is stable.
  // (Only what can survive the cut is looked at: a character is at most 4 bytes.)
  const std::string head(text.substr(0, 4 * max));
  const std::string valid =
      json::parse(json(head).dump(-1, ' ', false, json::error_handler_t::replace))
          .get<std::string>();
  std::string_view view = valid;
  if (view.size() > max) {
    std::size_t cut = max;
    while (cut > 0 && (static_cast<unsigned char>(view[cut]) & 0xC0) == 0x80) --cut;
    view = view.substr(0, cut);
  }
  std::string out(view);
  for (char& c : out) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) c = ' ';
  }
  return out;
}

json progress_json(const Progress& p) {
  json eta = p.eta_seconds ? json(*p.eta_seconds) : json(nullptr);
  return json{{"pass", p.pass},
              {"folders_done", p.folders_done},
              {"folders", p.folders},
              {"messages", p.messages},
              {"bytes", p.bytes},
              {"bytes_total", p.bytes_total},
              {"rate", p.rate},
              {"eta_seconds", eta}};
}

}  // namespace

bool is_terminal(std::string_view state) {
  for (auto s : kTerminal)
    if (state == s) return true;
  return false;
}

bool is_known_state(std::string_view state) {
  for (auto s : kStates)
    if (state == s) return true;
  return false;
}

void Job::say(std::string at, std::string text) {
  history.push_back({clean_text(at, 40), clean_text(text, kMaxText)});
  while (history.size() > kMaxHistory) history.pop_front();
}

json to_api_json(const Job& job, bool with_history) {
  json out{{"id", job.id},
           {"user", job.user},
           {"from", job.from},
           {"to", job.to},
           {"mover", job.mover.empty() ? json(nullptr) : json(job.mover)},
           {"state", job.state},
           {"step", job.step},
           {"step_number", job.step_number},
           {"steps", kSteps},
           {"owner", job.owner},
           {"epoch", job.epoch},
           {"created", job.created},
           {"updated", job.updated},
           {"finished", job.finished.empty() ? json(nullptr) : json(job.finished)},
           {"progress", progress_json(job.progress)},
           {"exit_code", job.exit_code ? json(*job.exit_code) : json(nullptr)},
           {"result", job.result},
           {"interruption_seconds",
            job.interruption_seconds ? json(*job.interruption_seconds) : json(nullptr)},
           {"abort_requested", job.abort_requested}};
  if (with_history) {
    json lines = json::array();
    for (const auto& line : job.history) lines.push_back({{"at", line.at}, {"text", line.text}});
    out["history"] = std::move(lines);
  }
  return out;
}

json to_stored_json(const Job& job) {
  json out = to_api_json(job, true);
  out["journal"] = job.journal;
  return out;
}

std::optional<Job> from_stored_json(const json& doc) {
  if (!doc.is_object()) return std::nullopt;
  Job job;
  job.id = string_of(doc, "id");
  job.user = string_of(doc, "user");
  job.to = string_of(doc, "to");
  job.state = string_of(doc, "state");
  // The id names files; the user and island go into the mover's arguments.
  auto plain = [](const std::string& text, std::size_t max) {
    if (text.empty() || text.size() > max || text.front() == '-') return false;
    for (char c : text) {
      const auto u = static_cast<unsigned char>(c);
      if (u < 0x20 || u == 0x7f) return false;
    }
    return true;
  };
  if (!valid_job_id(job.id) || !plain(job.user, 320) || !plain(job.to, 128) ||
      !is_known_state(job.state))
    return std::nullopt;
  job.from = string_of(doc, "from");
  job.mover = string_of(doc, "mover");
  job.step = string_of(doc, "step");
  if (auto n = number_of(doc, "step_number"); n && *n >= -1 && *n <= kSteps)
    job.step_number = static_cast<int>(*n);
  job.owner = string_of(doc, "owner");
  job.epoch = count_of(doc, "epoch");
  job.created = string_of(doc, "created");
  job.updated = string_of(doc, "updated");
  job.finished = string_of(doc, "finished");
  if (auto it = doc.find("progress"); it != doc.end() && it->is_object()) {
    auto& p = job.progress;
    p.pass = count_of(*it, "pass");
    p.folders_done = count_of(*it, "folders_done");
    p.folders = count_of(*it, "folders");
    p.messages = count_of(*it, "messages");
    p.bytes = count_of(*it, "bytes");
    p.bytes_total = count_of(*it, "bytes_total");
    p.rate = number_of(*it, "rate").value_or(0);
    p.eta_seconds = number_of(*it, "eta_seconds");
  }
  if (auto n = number_of(doc, "exit_code"); n && *n >= -1 && *n <= 255)
    job.exit_code = static_cast<int>(*n);
  job.result = clean_text(string_of(doc, "result"), kMaxText);
  job.interruption_seconds = number_of(doc, "interruption_seconds");
  if (auto it = doc.find("history"); it != doc.end() && it->is_array()) {
    for (const auto& line : *it) {
      if (line.is_object()) job.say(string_of(line, "at"), string_of(line, "text"));
    }
  }
  if (auto it = doc.find("journal"); it != doc.end() && it->is_object()) job.journal = *it;
  if (auto it = doc.find("abort_requested"); it != doc.end() && it->is_boolean())
    job.abort_requested = it->get<bool>();
  return job;
}

std::string now_iso() {
  return fmt::format("{:%Y-%m-%dT%H:%M:%SZ}",
                     std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()));
}

std::string new_job_id() {
  std::array<unsigned char, 3> random{};
  if (RAND_bytes(random.data(), static_cast<int>(random.size())) != 1)
    throw std::runtime_error("RAND_bytes failed");
  return fmt::format("{:%Y%m%dT%H%M%SZ}-{:02x}{:02x}{:02x}",
                     std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()),
                     random[0], random[1], random[2]);
}

bool apply_mover_line(Job& job, std::string_view line, Clock::time_point now, PassClock& clock) {
  while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.remove_suffix(1);
  if (line.empty()) return false;
  const json event = line.front() == '{' ? parse_bounded_json(line) : json(json::value_t::discarded);
  const std::string kind = event.is_object() ? string_of(event, "event") : std::string();
  if (kind.empty()) {
    job.say(now_iso(), "mover: " + std::string(line.substr(0, kMaxText)));
    return true;
  }
  if (kind == "progress") {
    auto& p = job.progress;
    const auto pass = count_of(event, "pass");
    const auto step = string_of(event, "step");
    if (pass != clock.pass || step != clock.step) {
      clock.pass = pass;
      clock.step = step;
      clock.started = now;
    }
    p.pass = pass;
    p.folders_done = count_of(event, "folders_done");
    p.folders = count_of(event, "folders");
    p.messages = count_of(event, "messages");
    p.bytes = count_of(event, "bytes");
    p.bytes_total = count_of(event, "bytes_total");
    const double seconds = std::chrono::duration<double>(now - clock.started).count();
    p.rate = seconds > 0.5 ? static_cast<double>(p.bytes) / seconds : 0;
    if (p.rate > 0 && p.bytes_total >= p.bytes)
      p.eta_seconds = static_cast<double>(p.bytes_total - p.bytes) / p.rate;
    else
      p.eta_seconds.reset();
    return false;
  }
  if (kind == "started") {
    if (auto from = string_of(event, "from"); !from.empty()) job.from = clean_text(from, 128);
    if (auto mover = string_of(event, "mover"); mover == "imap" || mover == "dsync")
      job.mover = mover;
    return true;
  }
  if (kind == "step") {
    const auto name = string_of(event, "name");
    const auto status = string_of(event, "status");
    if (auto n = number_of(event, "number"); n && *n >= 0 && *n <= kSteps) {
      job.step_number = static_cast<int>(*n);
      job.step = clean_text(name, 32);
    }
    if (status == "started") job.progress = Progress{};
    if (auto text = string_of(event, "text"); !text.empty()) job.say(now_iso(), text);
    return true;
  }
  if (kind == "say") {
    job.say(now_iso(), string_of(event, "text"));
    return true;
  }
  if (kind == "journal") {
    if (auto it = event.find("data"); it != event.end() && it->is_object()) {
      job.journal = *it;
      ++clock.journal_events;
    } else {
      clock.journal_unusable = true;
    }
    return true;
  }
  if (kind == "finished") {
    if (auto n = number_of(event, "exit"); n && *n >= -1 && *n <= 255)
      job.exit_code = static_cast<int>(*n);
    if (auto text = string_of(event, "text"); !text.empty()) job.result = clean_text(text, kMaxText);
    if (auto seconds = number_of(event, "interruption_seconds")) job.interruption_seconds = seconds;
    return true;
  }
  job.say(now_iso(), fmt::format("mover: an event of an unknown kind: {}", clean_text(kind, 40)));
  return true;
}

std::string state_after_exit(int exit_code) {
  if (exit_code == 0) return "done";
  if (exit_code == 7) return "verify_failed";
  return "failed";
}

}  // namespace isthmus::moves
