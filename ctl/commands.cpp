#include "ctl/commands.hpp"

#include "common/strings.hpp"
#include "ctl/move_jobs.hpp"
#include "ctl/text.hpp"

#include <fmt/format.h>

#include <cstdio>
#include <map>
#include <set>

namespace isthmus::ctl {

namespace {

// ---------------------------------------------------------------- small helpers

// obj[key], or null when obj is not an object or has no such key: what the
// instances answer is untrusted and may lack anything.
const Json& get(const Json& obj, const char* key) {
  static const Json null_value;
  if (!obj.is_object()) return null_value;
  auto it = obj.find(key);
  return it == obj.end() ? null_value : *it;
}

// A list from an answer; an empty one when it is anything else.
const Json& list(const Json& value) {
  static const Json empty = Json::array();
  return value.is_array() ? value : empty;
}

bool truthy(const Json& value) {
  if (value.is_null()) return false;
  if (value.is_boolean()) return value.get<bool>();
  if (value.is_number()) return value.get<double>() != 0;
  if (value.is_string() || value.is_array() || value.is_object()) return !value.empty();
  return false;
}

void print_out(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  std::fputc('\n', stdout);
}

std::string join(const std::vector<std::string>& parts, std::string_view separator) {
  std::string out;
  for (const auto& part : parts) {
    if (!out.empty()) out += separator;
    out += part;
  }
  return out;
}

std::vector<std::string> split_lines(std::string_view text) {
  std::vector<std::string> lines;
  std::size_t start = 0;
  while (true) {
    auto end = text.find('\n', start);
    lines.emplace_back(text.substr(start, end == std::string_view::npos ? end : end - start));
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return lines;
}

Json replies_json(const std::vector<Reply>& replies) {
  Json out = Json::array();
  for (const auto& r : replies) out.push_back(r.as_json());
  return out;
}

// '' when every instance answered, else ' (on 1 of 2 instances; failed on i2)'.
std::string reached_summary(const std::vector<Reply>& replies) {
  std::vector<std::string> bad;
  for (const auto& r : replies)
    if (!r.ok()) bad.push_back(clean(r.instance->name));
  if (bad.empty()) return "";
  return fmt::format(" (on {} of {} instances; failed on {})", replies.size() - bad.size(),
                     replies.size(), join(bad, ", "));
}

bool any_ok(const std::vector<Reply>& replies) {
  for (const auto& r : replies)
    if (r.ok()) return true;
  return false;
}

// A node's state, with the protocols it is down for when it is degraded
// (down for some of them only: a dead imapd, a live pop3d).
std::string node_health(const Json& node) {
  std::string state = cell(get(node, "state"));
  const Json& protocols = get(node, "protocols");
  if (get(node, "state") == "degraded" && protocols.is_object()) {
    std::vector<std::string> down;
    for (const auto& [protocol, protocol_state] : protocols.items())
      if (protocol_state == "down") down.push_back(clean(protocol));
    std::sort(down.begin(), down.end());
    state += fmt::format(" ({} down)", join(down, ", "));
  }
  return state;
}

// ---------------------------------------------------------------- one run of a command

// Collects exit codes and errors; prints errors to stderr as they come.
class Run {
 public:
  explicit Run(bool json) : json_(json) {}

  bool json() const { return json_; }

  // Prints `message` (its later lines indented) and notes `code` (none: a
  // warning only).
  void fail(const Instance* inst, std::string_view message, std::optional<int> code,
            std::optional<int> status = std::nullopt) {
    auto lines = split_lines(trim(message));
    std::string head = inst != nullptr ? fmt::format("isthmusctl: {}: ", inst->label())
                                       : std::string("isthmusctl: ");
    std::string out = head + clean(lines[0]) + "\n";
    for (std::size_t i = 1; i < lines.size(); ++i) out += "    " + clean(lines[i]) + "\n";
    std::fflush(stdout);
    std::fputs(out.c_str(), stderr);
    if (code) codes_.insert(*code);
    Json entry;
    entry["instance"] = inst != nullptr ? Json(inst->name) : Json();
    entry["address"] = inst != nullptr ? Json(inst->address()) : Json();
    entry["http_status"] = status ? Json(*status) : Json();
    entry["error"] = std::string(message);
    entry["exit_code"] = code ? Json(*code) : Json();
    errors_.push_back(std::move(entry));
  }

  // True when the reply is good; else prints its error and notes the code.
  bool report(const Reply& reply) {
    if (reply.ok()) return true;
    fail(reply.instance, reply.error, exit_code_of(reply.kind), reply.status);
    return false;
  }

  void warn(std::string_view message, std::optional<int> code = std::nullopt) {
    fail(nullptr, message, code);
  }

  // A warning noted by fail() that turns out to be an error after all.
  void upgrade(std::size_t error_index, int code) {
    errors_[error_index]["exit_code"] = code;
    codes_.insert(code);
  }
  std::size_t error_count() const { return errors_.size(); }
  void add_code(int code) { codes_.insert(code); }

  int exit_code() const {
    for (int code : kExitPrecedence)
      if (codes_.contains(code)) return code;
    return kExitOk;
  }

  // Prints the result: JSON (with the errors and the exit code) or `text`.
  void emit(std::string_view command, const Json& data, const std::optional<std::string>& text) {
    if (json_) {
      Json out;
      out["command"] = command;
      for (const auto& [key, value] : data.items()) out[key] = value;
      out["errors"] = errors_;
      out["exit_code"] = exit_code();
      print_out(out.dump(2, ' ', true, Json::error_handler_t::replace));
    } else if (text && !text->empty()) {
      print_out(*text);
    }
  }

 private:
  bool json_;
  std::set<int> codes_;
  Json errors_ = Json::array();
};

struct FirstAnswer {
  std::optional<Reply> reply;
  std::vector<Reply> skipped;
};

// Asks the instances in turn until one answers (not 5xx, 401 or a network
// failure); those skipped are reported on stderr without changing the exit
// code, unless none answered.
FirstAnswer first_answer(Run& run, const std::vector<Instance>& instances,
                         const AdminRequest& request) {
  FirstAnswer result;
  std::vector<std::size_t> entries;
  for (const auto& inst : instances) {
    Reply reply = ask(inst, request);
    if (reply.kind == ReplyKind::unreachable || reply.kind == ReplyKind::server ||
        reply.kind == ReplyKind::auth) {
      run.fail(reply.instance, reply.error, std::nullopt, reply.status);  // a warning, for now
      entries.push_back(run.error_count() - 1);
      result.skipped.push_back(std::move(reply));
      continue;
    }
    result.reply = std::move(reply);
    return result;
  }
  for (std::size_t i = 0; i < entries.size(); ++i)  // nobody answered: errors after all
    run.upgrade(entries[i], exit_code_of(result.skipped[i].kind));
  return result;
}

// ---------------------------------------------------------------- sessions

const std::vector<std::string> kSessionHeaders = {"INSTANCE", "ID",    "PROTOCOL", "USER", "CLIENT",
                                                  "ISLAND",   "NODE",  "PHASE",    "SINCE", "AGE"};

std::string session_table(const Json& sessions, bool with_user) {
  std::vector<std::string> headers = kSessionHeaders;
  if (!with_user) headers.erase(headers.begin() + 3);
  std::vector<std::vector<std::string>> rows;
  for (const auto& s : sessions) {
    std::vector<std::string> row;
    for (const char* key : {"instance", "id", "protocol", "user", "client", "island", "node",
                            "phase", "since"})
      row.push_back(cell(get(s, key)));
    row.push_back(show_duration(get(s, "seconds")));
    if (!with_user) row.erase(row.begin() + 3);
    rows.push_back(std::move(row));
  }
  return table(headers, rows, {"AGE"});
}

Json collect_sessions(Run& run, const std::vector<Reply>& replies) {
  Json merged = Json::array();
  for (const auto& r : replies) {
    if (!run.report(r)) continue;
    for (const auto& s : list(get(r.body, "sessions"))) {
      if (!s.is_object()) continue;
      Json entry;
      entry["instance"] = r.instance->name;
      for (const auto& [key, value] : s.items()) entry[key] = value;
      merged.push_back(std::move(entry));
    }
  }
  return merged;
}

// ---------------------------------------------------------------- commands

void cmd_status(const Command&, const std::vector<Instance>& instances, Run& run) {
  auto replies = ask_all(instances, {"GET", "/v1/status", std::nullopt, true});
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : replies) {
    if (!run.report(r)) continue;
    const Json& b = r.body;
    const Json& sessions = get(b, "sessions");
    rows.push_back({cell(r.instance->name), cell(get(b, "instance")), cell(get(b, "version")),
                    cell(get(b, "config_generation")), show_duration(get(b, "uptime_seconds")),
                    cell(get(sessions, "imap")), cell(get(sessions, "pop3")),
                    cell(get(sessions, "lmtp")), cell(get(sessions, "managesieve")),
                    cell(get(b, "config_file"))});
  }
  std::optional<std::string> text;
  if (!rows.empty())
    text = table({"INSTANCE", "NAME", "VERSION", "GENERATION", "UPTIME", "IMAP", "POP3", "LMTP",
                  "SIEVE", "CONFIG FILE"},
                 rows, {"GENERATION", "UPTIME", "IMAP", "POP3", "LMTP", "SIEVE"});
  Json data;
  data["instances"] = replies_json(replies);
  run.emit("status", data, text);
}

void cmd_nodes(const Command&, const std::vector<Instance>& instances, Run& run) {
  auto replies = ask_all(instances, {"GET", "/v1/nodes", std::nullopt, true});
  // (island, node) -> the views of it, in the order first seen.
  std::vector<std::pair<Json, Json>> order;
  std::vector<std::vector<std::pair<std::string, const Json*>>> views;
  for (const auto& r : replies) {
    if (!run.report(r)) continue;
    for (const auto& n : list(get(r.body, "nodes"))) {
      if (!n.is_object()) continue;
      std::pair<Json, Json> key{get(n, "island"), get(n, "name")};
      auto it = std::find(order.begin(), order.end(), key);
      std::size_t index = static_cast<std::size_t>(it - order.begin());
      if (it == order.end()) {
        order.push_back(key);
        views.emplace_back();
      }
      views[index].emplace_back(r.instance->name, &n);
    }
  }
  std::vector<std::vector<std::string>> rows;
  for (const auto& node_views : views) {
    for (const auto& [inst_name, node] : node_views) {
      const Json& n = *node;
      std::string draining = cell(get(n, "draining"));
      if (truthy(get(n, "drain_config")))
        draining = truthy(get(n, "draining")) ? "yes (config)" : "no (config: yes)";
      rows.push_back({cell(get(n, "name")), cell(get(n, "island")), clean(inst_name),
                      node_health(n), draining, cell(get(n, "sessions")), cell(get(n, "role"))});
    }
  }
  std::optional<std::string> text;
  if (any_ok(replies))
    text = rows.empty() ? std::string("no nodes")
                        : table({"NODE", "ISLAND", "INSTANCE", "STATE", "DRAINING", "SESSIONS",
                                 "ROLE"},
                                rows, {"SESSIONS"});
  Json data;
  data["instances"] = replies_json(replies);
  run.emit("nodes", data, text);
}

void cmd_islands(const Command&, const std::vector<Instance>& instances, Run& run) {
  auto replies = ask_all(instances, {"GET", "/v1/islands", std::nullopt, true});
  std::vector<const Reply*> good;
  for (const auto& r : replies)
    if (run.report(r)) good.push_back(&r);
  // island name -> instance name -> the island as that instance sees it
  std::vector<Json> order;
  std::vector<std::vector<std::pair<std::string, const Json*>>> views;
  for (const Reply* r : good) {
    for (const auto& isl : list(get(r->body, "islands"))) {
      if (!isl.is_object()) continue;
      const Json& name = get(isl, "name");
      auto it = std::find(order.begin(), order.end(), name);
      std::size_t index = static_cast<std::size_t>(it - order.begin());
      if (it == order.end()) {
        order.push_back(name);
        views.emplace_back();
      }
      auto& seen = views[index];
      auto same = std::find_if(seen.begin(), seen.end(),
                               [&](const auto& view) { return view.first == r->instance->name; });
      if (same != seen.end()) same->second = &isl;  // the last one counts, as in a dict
      else seen.emplace_back(r->instance->name, &isl);
    }
  }
  std::vector<std::vector<std::string>> rows;
  Json disagreements = Json::array();
  for (std::size_t i = 0; i < order.size(); ++i) {
    const auto& seen = views[i];
    std::string name = cell(order[i]);
    auto view_of = [&](const std::string& inst_name) -> const Json* {
      for (const auto& [seen_name, isl] : seen)
        if (seen_name == inst_name) return isl;
      return nullptr;
    };
    std::vector<std::string> missing;
    for (const Reply* r : good) {
      const Json* isl = view_of(r->instance->name);
      if (isl == nullptr) {
        missing.push_back(r->instance->name);
        continue;
      }
      std::vector<std::string> node_names;
      for (const auto& n : list(get(*isl, "nodes")))
        node_names.push_back(n.is_string() ? n.get<std::string>() : cell(n));
      std::string nodes = join(node_names, ",");
      rows.push_back({name, clean(r->instance->name), cell(get(*isl, "policy")),
                      cell(get(*isl, "holder")), cell(get(*isl, "epoch")),
                      nodes.empty() ? std::string("-") : clean(nodes),
                      cell(get(*isl, "sessions"))});
    }
    std::set<std::pair<std::string, std::string>> roles;
    for (const auto& [inst_name, isl] : seen)
      roles.insert({get(*isl, "holder").dump(), get(*isl, "epoch").dump()});
    if (roles.size() > 1) {
      std::vector<std::string> parts;
      for (const auto& [inst_name, isl] : seen)
        parts.push_back(fmt::format("{} says holder {} epoch {}", inst_name,
                                    cell(get(*isl, "holder")), cell(get(*isl, "epoch"))));
      std::string detail = join(parts, "; ");
      disagreements.push_back({{"island", order[i]}, {"problem", "role"}, {"detail", detail}});
      run.warn(fmt::format("instances disagree on island {}: {}", name, detail), kExitDisagree);
    }
    if (!missing.empty()) {
      std::vector<std::string> present;
      for (const auto& [inst_name, isl] : seen) present.push_back(inst_name);
      std::string detail = fmt::format("configured on {} but not on {}", join(present, ", "),
                                       join(missing, ", "));
      disagreements.push_back(
          {{"island", order[i]}, {"problem", "configured"}, {"detail", detail}});
      run.warn(fmt::format("instances disagree on island {}: {}", name, detail), kExitDisagree);
    }
  }
  std::optional<std::string> text;
  if (!good.empty())
    text = rows.empty() ? std::string("no islands")
                        : table({"ISLAND", "INSTANCE", "POLICY", "HOLDER", "EPOCH", "NODES",
                                 "SESSIONS"},
                                rows, {"EPOCH", "SESSIONS"});
  Json data;
  data["instances"] = replies_json(replies);
  data["disagreements"] = disagreements;
  run.emit("islands", data, text);
}

// ?user=... / ?node=... / ?island=...: the filter given, if any.
Json session_filter(const Command& command) {
  Json filter = Json::object();
  if (command.user && !command.user->empty()) filter["user"] = *command.user;
  if (command.node && !command.node->empty()) filter["node"] = *command.node;
  if (command.island && !command.island->empty()) filter["island"] = *command.island;
  return filter;
}

std::string query_of(const Json& filter) {
  std::string query;
  for (const auto& [key, value] : filter.items())
    query += (query.empty() ? "?" : "&") + key + "=" + percent_encode(value.get<std::string>());
  return query;
}

void check_sessions(const Command& command) {
  if (session_filter(command).size() > 1)
    throw UsageError("sessions: give at most one of --user, --node, --island");
}

void cmd_sessions(const Command& command, const std::vector<Instance>& instances, Run& run) {
  Json filter = session_filter(command);
  auto replies = ask_all(instances, {"GET", "/v1/sessions" + query_of(filter), std::nullopt, true});
  Json merged = collect_sessions(run, replies);
  std::optional<std::string> text;
  if (any_ok(replies)) {
    std::string head = plural(static_cast<long long>(merged.size()), "live session") +
                       reached_summary(replies);
    text = merged.empty() ? head : session_table(merged, true) + "\n\n" + head;
  }
  Json data;
  data["filter"] = filter;
  data["sessions"] = merged;
  data["instances"] = replies_json(replies);
  run.emit("sessions", data, text);
}

std::string state_note(const Json& state) {
  if (state == "active") return "active";
  if (state == "disabled") return "disabled (logins refused as a wrong password; mail refused with 550)";
  if (state == "moving")
    return "moving (between islands: logins get a temporary failure, MTAs queue mail)";
  return cell(state);
}

void cmd_where(const Command& command, const std::vector<Instance>& instances, Run& run) {
  const std::string& user = *command.user;
  auto first = first_answer(run, instances,
                            {"GET", "/v1/users/" + percent_encode(user), std::nullopt, true});
  std::set<std::string> dead;
  for (const auto& r : first.skipped)
    if (r.kind == ReplyKind::unreachable || r.kind == ReplyKind::auth)
      dead.insert(r.instance->address());
  Json data;
  data["user"] = user;
  data["found"] = nullptr;
  data["asked"] = nullptr;
  data["directory"] = nullptr;
  data["island"] = nullptr;
  data["nodes"] = Json::array();
  data["sessions"] = Json::array();
  bool found = false;
  std::string canonical = user;
  const Reply* reply = first.reply ? &*first.reply : nullptr;
  if (reply == nullptr) {
    run.fail(nullptr,
             fmt::format("no instance could look up {} in the directory; listing the sessions the "
                         "instances know of",
                         user),
             kExitUnreachable);
  } else {
    data["asked"] = reply->instance->name;
    const Json& found_field = get(reply->body, "found");
    if (reply->ok() && !(found_field.is_boolean() && !found_field.get<bool>())) {
      found = true;
      data["directory"] = reply->body;
      const Json& name = get(reply->body, "user");
      if (truthy(name)) canonical = name.is_string() ? name.get<std::string>() : cell(name);
    } else if (reply->ok() || reply->kind == ReplyKind::not_found) {
      data["found"] = false;
      std::string detail = reply->message ? ": " + *reply->message : "";
      run.fail(reply->instance, fmt::format("{} is not known to the directory{}", user, detail),
               kExitNotFound, reply->status);
    } else {
      run.report(*reply);
    }
  }
  if (found) data["found"] = true;
  Json island_name = found ? get(data["directory"], "island") : Json();

  // The island's role and nodes, as the instance that answered sees them.
  if (found && !island_name.is_null()) {
    Reply islands_reply = ask(*reply->instance, {"GET", "/v1/islands", std::nullopt, true});
    Reply nodes_reply = ask(*reply->instance, {"GET", "/v1/nodes", std::nullopt, true});
    if (run.report(islands_reply)) {
      for (const auto& isl : list(get(islands_reply.body, "islands")))
        if (isl.is_object() && get(isl, "name") == island_name) data["island"] = isl;
      if (data["island"].is_null())
        run.fail(reply->instance,
                 fmt::format("the directory puts {} on island {}, which is not in this instance's "
                             "config",
                             user, cell(island_name)),
                 std::nullopt);
    }
    if (run.report(nodes_reply))
      for (const auto& n : list(get(nodes_reply.body, "nodes")))
        if (n.is_object() && get(n, "island") == island_name) data["nodes"].push_back(n);
  }

  // Live sessions, from every instance.
  std::vector<const Instance*> asked;
  for (const auto& inst : instances)
    if (!dead.contains(inst.address())) asked.push_back(&inst);
  std::vector<Reply> replies;
  if (!asked.empty())
    replies = ask_all(asked, {"GET", "/v1/sessions?user=" + percent_encode(canonical),
                              std::nullopt, true});
  data["sessions"] = collect_sessions(run, replies);
  data["instances"] = replies_json(replies);

  std::vector<std::string> lines;
  if (found) {
    const Json& d = data["directory"];
    const Json& isl = data["island"];
    std::string island_text = cell(island_name);
    if (!isl.is_null()) {
      if (get(isl, "policy") == "active-passive")
        island_text += fmt::format("  (active-passive: holder {}, epoch {})",
                                   cell(get(isl, "holder")), cell(get(isl, "epoch")));
      else if (truthy(get(isl, "policy")))
        island_text += fmt::format("  ({})", cell(get(isl, "policy")));
    }
    std::vector<std::pair<std::string, std::string>> info = {
        {"user", clean(canonical)}, {"island", island_text}, {"state", state_note(get(d, "state"))}};
    const Json& node_login = get(d, "node_login");
    if (!node_login.is_null() && node_login != canonical)
      info.emplace_back("node login", cell(node_login));
    Json node_names = list(get(isl, "nodes"));
    if (node_names.empty())
      for (const auto& n : data["nodes"]) node_names.push_back(get(n, "name"));
    if (!node_names.empty()) {
      std::vector<std::string> parts;
      for (const auto& name : node_names) {
        const Json* node = nullptr;
        for (const auto& n : data["nodes"])
          if (get(n, "name") == name) node = &n;
        if (node == nullptr) {
          parts.push_back(cell(name));
          continue;
        }
        std::vector<std::string> bits = {node_health(*node)};
        if (truthy(get(*node, "role"))) bits.push_back(cell(get(*node, "role")));
        if (truthy(get(*node, "draining"))) bits.emplace_back("draining");
        parts.push_back(fmt::format("{} ({})", cell(name), join(bits, ", ")));
      }
      info.emplace_back("nodes", join(parts, ", "));
    }
    info.emplace_back("asked", cell(data["asked"]));
    std::size_t width = 0;
    for (const auto& [key, value] : info) width = std::max(width, key.size());
    for (const auto& [key, value] : info)
      lines.push_back(key + std::string(width - key.size(), ' ') + "  " + value);
    lines.emplace_back();
  } else if (data["found"] == false) {
    lines.push_back(clean(user) + ": not known to the directory");
  }
  if (any_ok(replies)) {
    const Json& sessions = data["sessions"];
    if (!sessions.empty()) {
      lines.push_back(plural(static_cast<long long>(sessions.size()), "live session") +
                      reached_summary(replies) + ":");
      lines.push_back(session_table(sessions, false));
    } else {
      lines.push_back("no live sessions" + reached_summary(replies));
    }
  }
  std::string text = join(lines, "\n");
  text.erase(text.find_last_not_of(" \t\n") + 1);
  run.emit("where", data, text.empty() ? std::nullopt : std::optional<std::string>(text));
}

std::vector<std::pair<std::string, std::string>> kick_targets(const Command& command) {
  std::vector<std::pair<std::string, std::string>> targets;
  if (command.user && !command.user->empty()) targets.emplace_back("user", *command.user);
  if (command.node && !command.node->empty()) targets.emplace_back("node", *command.node);
  if (command.island && !command.island->empty()) targets.emplace_back("island", *command.island);
  return targets;
}

void check_kick(const Command& command) {
  if (kick_targets(command).size() != 1)
    throw UsageError("kick: name exactly one of USER, --node NODE, --island ISLAND");
}

void cmd_kick(const Command& command, const std::vector<Instance>& instances, Run& run) {
  auto targets = kick_targets(command);
  Json body = Json::object();
  for (const auto& [key, value] : targets) body[key] = value;
  auto replies = ask_all(instances, {"POST", "/v1/kick", body, true});
  std::vector<std::vector<std::string>> rows;
  long long total = 0;
  for (const auto& r : replies) {
    if (!run.report(r)) continue;
    const Json& kicked = get(r.body, "kicked");
    if (kicked.is_number_integer()) total += kicked.get<long long>();
    rows.push_back({clean(r.instance->name), cell(kicked)});
  }
  std::optional<std::string> text;
  if (!rows.empty()) {
    const auto& [what, name] = targets.front();
    std::string target = what != "user" ? what + " " + name : name;
    text = table({"INSTANCE", "KICKED"}, rows, {"KICKED"}) + "\n\n" +
           fmt::format("{}: {} closed{}", clean(target), plural(total, "session"),
                       reached_summary(replies));
  }
  Json data;
  data["target"] = body;
  data["total"] = total;
  data["instances"] = replies_json(replies);
  run.emit("kick", data, text);
}

void cmd_drain(const Command& command, const std::vector<Instance>& instances, Run& run,
               bool undrain) {
  std::string verb = undrain ? "undrain" : "drain";
  const std::string& node = *command.node;
  auto replies = ask_all(
      instances, {"POST", "/v1/nodes/" + percent_encode(node) + "/" + verb, std::nullopt, true});
  std::vector<std::vector<std::string>> rows;
  std::vector<std::string> still;
  for (const auto& r : replies) {
    if (!run.report(r)) continue;
    const Json& draining = get(r.body, "draining");
    const Json& answered_node = get(r.body, "node");
    rows.push_back({clean(r.instance->name),
                    r.body.contains("node") ? cell(answered_node) : clean(node), cell(draining)});
    if (undrain && truthy(draining)) still.push_back(r.instance->name);
  }
  std::optional<std::string> text;
  if (!rows.empty()) {
    std::vector<std::string> lines = {table({"INSTANCE", "NODE", "DRAINING"}, rows), ""};
    std::size_t n = rows.size();
    if (undrain) {
      lines.push_back(fmt::format("{} takes new sessions again on {} of {} instances", clean(node),
                                  n - still.size(), replies.size()));
      if (!still.empty())
        lines.push_back(fmt::format(
            "still draining on {}: probably \"drain\": true in its config (remove it and reload)",
            clean(join(still, ", "))));
    } else {
      lines.push_back(fmt::format(
          "{} gets no new sessions on {} of {} instances; its open sessions stay (close them "
          "with: isthmusctl kick --node {})",
          clean(node), n, replies.size(), clean(node)));
    }
    if (n < replies.size()) {
      std::vector<std::string> failed;
      for (const auto& r : replies)
        if (!r.ok()) failed.push_back(r.instance->name);
      lines.push_back(fmt::format("not done on {}: run it again when they answer",
                                  clean(join(failed, ", "))));
    }
    text = join(lines, "\n");
  }
  Json data;
  data["node"] = node;
  data["instances"] = replies_json(replies);
  run.emit(verb, data, text);
}

void cmd_promote(const Command& command, const std::vector<Instance>& instances, Run& run) {
  const std::string& island = *command.island;
  const std::string& node = *command.node;
  Json body = {{"node", node}};
  auto first = first_answer(
      run, instances, {"POST", "/v1/islands/" + percent_encode(island) + "/promote", body, true});
  Json data;
  data["island"] = island;
  data["node"] = node;
  data["via"] = nullptr;
  data["response"] = nullptr;
  std::optional<std::string> text;
  if (!first.reply) {
    run.fail(nullptr, fmt::format("no instance answered: island {} was not promoted", island),
             kExitUnreachable);
  } else if (!first.reply->ok()) {
    data["via"] = first.reply->instance->name;
    run.report(*first.reply);
  } else {
    const Reply& reply = *first.reply;
    data["via"] = reply.instance->name;
    data["response"] = reply.body;
    const Json& b = reply.body;
    text = fmt::format("island {}: {} holds the role now, epoch {} (through {})",
                       b.contains("island") ? cell(get(b, "island")) : clean(island),
                       b.contains("node") ? cell(get(b, "node")) : clean(node),
                       cell(get(b, "epoch")), clean(reply.instance->name));
    if (instances.size() > 1)
      *text +=
          "\nthe other instances follow it when they share the role store (roles.store \"sql\"); "
          "check with: isthmusctl islands";
  }
  run.emit("promote", data, text);
}

void cmd_reload(const Command&, const std::vector<Instance>& instances, Run& run) {
  auto replies = ask_all(instances, {"POST", "/v1/reload", std::nullopt, true});
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : replies) {
    if (r.ok()) {
      rows.push_back({clean(r.instance->name), cell(get(r.body, "config_generation"))});
    } else if (r.kind == ReplyKind::refused && r.status == 400) {
      run.fail(r.instance,
               "the new config is invalid; the old one stays in force:\n" + r.message.value_or(""),
               kExitRefused, r.status);
    } else {
      run.report(r);
    }
  }
  std::optional<std::string> text;
  if (!rows.empty())
    text = table({"INSTANCE", "GENERATION"}, rows, {"GENERATION"}) +
           fmt::format("\n\nreloaded on {} of {} instances", rows.size(), replies.size());
  Json data;
  data["instances"] = replies_json(replies);
  run.emit("reload", data, text);
}

void cmd_metrics(const Command& command, const std::vector<Instance>& instances, Run& run) {
  const Instance& inst = instances.front();
  if (instances.size() > 1 && !command.selection.instances.empty()) {
    std::string note = fmt::format("isthmusctl: metrics shows one instance: {}\n", inst.label());
    std::fputs(note.c_str(), stderr);
  }
  Reply reply = ask(inst, {"GET", "/metrics", std::nullopt, false});
  Json data;
  data["instances"] = Json::array({reply.as_json()});
  if (!run.report(reply) || run.json()) {
    run.emit("metrics", data, std::nullopt);
    return;
  }
  const std::string& body = reply.body.get_ref<const std::string&>();
  std::fwrite(body.data(), 1, body.size(), stdout);
  if (!body.empty() && body.back() != '\n') std::fputc('\n', stdout);
}

void cmd_cache_invalidate(const Command& command, const std::vector<Instance>& instances,
                          Run& run) {
  Json body = Json::object();
  bool one_user = command.user && !command.user->empty();
  if (one_user) body["user"] = *command.user;
  auto replies = ask_all(instances, {"POST", "/v1/cache/invalidate", body, true});
  std::vector<std::vector<std::string>> rows;
  for (const auto& r : replies)
    if (run.report(r)) rows.push_back({clean(r.instance->name), cell(get(r.body, "invalidated"))});
  std::optional<std::string> text;
  if (!rows.empty()) {
    std::string what = one_user ? "the cached entry of " + clean(*command.user)
                                : std::string("the whole directory cache");
    text = table({"INSTANCE", "INVALIDATED"}, rows) +
           fmt::format("\n\n{} dropped on {} of {} instances", what, rows.size(), replies.size());
  }
  Json data;
  data["user"] = command.user ? Json(*command.user) : Json();
  data["instances"] = replies_json(replies);
  run.emit("cache-invalidate", data, text);
}

void check_move(const Command& command) {
  bool user = command.user && !command.user->empty();
  if (command.job && (user || command.island || command.mover || command.detach))
    throw UsageError("move: --follow ID follows a move job; it takes no USER, --to, --mover or "
                     "--detach");
  if (!command.job && !user)
    throw UsageError("move: name the USER to move (with --to ISLAND), or --follow ID");
  if (!command.job && !command.island)
    throw UsageError("move: say where to: --to ISLAND");
  if (command.mover && *command.mover != "imap" && *command.mover != "dsync")
    throw UsageError("move: --mover is imap or dsync");
}

}  // namespace

int exit_code_of(ReplyKind kind) {
  switch (kind) {
    case ReplyKind::ok:
      return kExitOk;
    case ReplyKind::unreachable:
    case ReplyKind::server:
      return kExitUnreachable;
    case ReplyKind::auth:
      return kExitAuth;
    case ReplyKind::refused:
      return kExitRefused;
    case ReplyKind::not_found:
      return kExitNotFound;
  }
  return kExitUnreachable;
}

int run_command(const Command& command, const std::string& environment_config) {
  Run run(command.json);
  try {
    if (command.name == "sessions") check_sessions(command);
    if (command.name == "kick") check_kick(command);
    if (command.name == "move-status")
      // Reached only when the hand-over to isthmus-move did not see the
      // command (it always should): say so rather than pretend.
      throw UsageError("move-status: run it as `isthmusctl [--config FILE] move-status USER`");
    if (command.name == "move") check_move(command);
    auto instances = select_instances(command.selection, environment_config);
    const std::string& name = command.name;
    if (name == "move" || name == "moves" || name == "move-abort" || name == "move-resume")
      return run_move_job(command, instances);
    if (name == "status") cmd_status(command, instances, run);
    else if (name == "nodes") cmd_nodes(command, instances, run);
    else if (name == "islands") cmd_islands(command, instances, run);
    else if (name == "sessions") cmd_sessions(command, instances, run);
    else if (name == "where") cmd_where(command, instances, run);
    else if (name == "kick") cmd_kick(command, instances, run);
    else if (name == "drain") cmd_drain(command, instances, run, false);
    else if (name == "undrain") cmd_drain(command, instances, run, true);
    else if (name == "promote") cmd_promote(command, instances, run);
    else if (name == "reload") cmd_reload(command, instances, run);
    else if (name == "metrics") cmd_metrics(command, instances, run);
    else if (name == "cache-invalidate") cmd_cache_invalidate(command, instances, run);
    else throw UsageError("unknown command " + name);
  } catch (const UsageError& e) {
    std::string message = fmt::format("isthmusctl: {}\n", clean(e.what()));
    std::fputs(message.c_str(), stderr);
    return kExitUsage;
  }
  return run.exit_code();
}

}  // namespace isthmus::ctl
