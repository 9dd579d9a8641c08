// isthmus-move: its config file, texts and events (mover.hpp).

#include "common/strings.hpp"
#include "ctl/text.hpp"
#include "moves/mover.hpp"

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace isthmus::moves::mover {

std::string show_seconds(double seconds) {
  if (seconds < 1) return fmt::format("{:.0f}ms", seconds * 1000);
  if (seconds < 60) return fmt::format("{:.1f}s", seconds);
  const auto s = static_cast<long long>(seconds);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  return fmt::format("{}h{:02d}m", s / 3600, s % 3600 / 60);
}

std::string show_seconds(const Json& seconds) {
  if (!seconds.is_number()) return "?";
  return show_seconds(seconds.get<double>());
}

std::string show_bytes(std::uint64_t n) {
  const double x = static_cast<double>(n);
  if (x >= 1e9) return fmt::format("{:.1f} GB", x / 1e9);
  if (x >= 1e6) return fmt::format("{:.1f} MB", x / 1e6);
  if (x >= 1e3) return fmt::format("{:.1f} kB", x / 1e3);
  return fmt::format("{} B", n);
}

std::string plural(long long n, std::string_view word, std::string_view words) {
  if (n == 1) return fmt::format("{} {}", n, word);
  if (words.empty()) return fmt::format("{} {}s", n, word);
  return fmt::format("{} {}", n, words);
}

std::string now_iso() {
  const auto now = std::chrono::system_clock::now();
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch());
  const std::time_t t = static_cast<std::time_t>(ms.count() / 1000);
  std::tm tm{};
  ::gmtime_r(&t, &tm);
  return fmt::format("{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}.{:03d}+00:00", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     static_cast<int>(ms.count() % 1000));
}

double parse_seconds(const Json& value, const std::string& what) {
  double seconds = 0;
  if (value.is_boolean()) {
    throw UsageError(fmt::format("{}: expected a duration like \"5s\", got {}", what, value.dump()));
  } else if (value.is_number()) {
    seconds = value.get<double>();
  } else if (value.is_string()) {
    static const std::regex pattern(R"(\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*)");
    std::smatch m;
    const std::string text = value.get<std::string>();
    if (!std::regex_match(text, m, pattern))
      throw UsageError(fmt::format("{}: expected a duration like \"5s\" or \"250ms\", got {}",
                                   what, ctl::repr(text)));
    seconds = std::stod(m[1].str());
    const std::string unit = m[2].str();
    seconds *= unit == "ms" ? 0.001 : unit == "m" ? 60 : unit == "h" ? 3600 : 1;
  } else {
    throw UsageError(fmt::format("{}: expected a duration like \"5s\", got {}", what, value.dump()));
  }
  if (seconds < 0 || !std::isfinite(seconds))
    throw UsageError(fmt::format("{}: must not be negative", what));
  return seconds;
}

// ------------------------------------------------------------------ events

namespace {

std::string line_of(const Json& obj) {
  return obj.dump(-1, ' ', false, Json::error_handler_t::replace) + "\n";
}

// TEXT cut to MAX code points (UTF-8), "..." at the end when cut.
std::string bounded_text(const std::string& text) {
  std::size_t points = 0, i = 0;
  for (; i < text.size(); ++i)
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) ++points;
  if (points <= kEventTextMax) return text;
  std::size_t keep = 0;
  points = 0;
  for (i = 0; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      if (points == kEventTextMax - 3) break;
      ++points;
    }
    keep = i + 1;
  }
  return text.substr(0, keep) + "...";
}

}  // namespace

std::string encode_event(const Json& input) {
  Json event = input;
  if (event.contains("text") && event["text"].is_string())
    event["text"] = bounded_text(event["text"].get<std::string>());
  std::string out = line_of(event);
  const bool journal = event.value("event", "") == "journal";
  if (out.size() < kEventLineMax) return out;
  if (!journal) return line_of(Json{{"event", event.value("event", Json())}, {"too_large", out.size()}});
  Json data = event.value("data", Json());
  Json shed = Json::array();
  const std::vector<std::vector<std::string>> sheddable = {
      {"copy", "folders"}, {"verify_report"}, {"history"}};
  for (const auto& path : sheddable) {
    Json* holder = &data;
    for (std::size_t k = 0; k + 1 < path.size() && holder != nullptr; ++k)
      holder = holder->is_object() && holder->contains(path[k]) ? &(*holder)[path[k]] : nullptr;
    if (holder == nullptr || !holder->is_object() || !holder->contains(path.back())) continue;
    holder->erase(path.back());
    std::string joined = path[0];
    for (std::size_t k = 1; k < path.size(); ++k) joined += "." + path[k];
    shed.push_back(joined);
    Json smaller = event;
    smaller["data"] = data;
    smaller["shed"] = shed;
    std::string line = line_of(smaller);
    if (line.size() < kEventLineMax) return line;
  }
  return line_of(Json{{"event", "journal"}, {"data", nullptr}, {"too_large", out.size()}});
}

// ------------------------------------------------------------------ config

namespace {

std::string read_text(const std::string& path, const std::string& what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw UsageError(fmt::format("{}: cannot read {}", what, path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

std::string read_secret(const std::string& path, const std::string& what) {
  const std::string text = read_text(path, what);
  std::string line = text.substr(0, text.find('\n'));
  if (!line.empty() && line.back() == '\r') line.pop_back();
  if (line.empty()) throw UsageError(fmt::format("{}: {} is empty", what, path));
  return line;
}

void check_keys(const Json& obj, const std::set<std::string>& known, const std::string& where) {
  if (!obj.is_object()) throw UsageError(where + ": expected a JSON object");
  std::string unknown;
  for (const auto& [key, value] : obj.items())
    if (!known.contains(key)) unknown += (unknown.empty() ? "" : ", ") + ctl::repr(key);
  if (unknown.empty()) return;
  std::string names;
  for (const auto& k : known) names += (names.empty() ? "" : ", ") + k;
  throw UsageError(fmt::format("{}: unknown key {} (known: {})", where, unknown, names));
}

std::optional<std::string> want_str(const Json& obj, const std::string& key,
                                    const std::string& where, bool required = false) {
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) {
    if (required) throw UsageError(fmt::format("{}: \"{}\" is required", where, key));
    return std::nullopt;
  }
  if (!it->is_string() || it->get_ref<const std::string&>().empty())
    throw UsageError(fmt::format("{}: \"{}\" must be a non-empty string", where, key));
  return it->get<std::string>();
}

// "host:port" or "[v6]:port".
std::pair<std::string, std::uint16_t> split_address(const std::string& text,
                                                    const std::string& what) {
  static const std::regex pattern(R"(\[([^\]]+)\]:(\d+)|([^:\[\]]+):(\d+))");
  std::smatch m;
  if (!std::regex_match(text, m, pattern))
    throw UsageError(fmt::format("{}: expected HOST:PORT, got {}", what, ctl::repr(text)));
  const std::string host = m[1].matched ? m[1].str() : m[3].str();
  const std::string port = m[1].matched ? m[2].str() : m[4].str();
  const unsigned long number = port.size() <= 5 ? std::stoul(port) : 0;
  if (number == 0 || number > 65535)
    throw UsageError(fmt::format("{}: bad port in {}", what, ctl::repr(text)));
  return {host, static_cast<std::uint16_t>(number)};
}

int want_int(const Json& move, const std::string& key, int fallback, long long low, long long high,
             const std::string& message) {
  auto it = move.find(key);
  if (it == move.end()) return fallback;
  if (!it->is_number_integer() || it->get<long long>() < low || it->get<long long>() > high)
    throw UsageError(message);
  return static_cast<int>(it->get<long long>());
}

config::TlsMode tls_mode(const Json& spec, const std::string& key, const std::string& where) {
  const Json value = spec.value(key, Json("none"));
  if (value == Json("none")) return config::TlsMode::none;
  if (value == Json("starttls")) return config::TlsMode::starttls;
  if (value == Json("implicit")) return config::TlsMode::implicit;
  throw UsageError(fmt::format("{}: {} must be none, starttls or implicit", where, key));
}

Node node_of(const std::string& name, const Json& raw, const std::string& where) {
  const Json spec = raw.is_string() ? Json{{"address", raw}} : raw;
  check_keys(spec, {"address", "tls", "ca", "verify", "tls_name", "managesieve", "managesieve_tls",
                    "doveadm", "doveadm_http"},
             where);
  Node node;
  auto& e = node.imap;
  e.name = name;
  auto [host, port] = split_address(*want_str(spec, "address", where, true), where + ": address");
  e.host = host;
  e.port = port;
  e.tls = tls_mode(spec, "tls", where);
  e.ca_file = want_str(spec, "ca", where).value_or("");
  if (auto it = spec.find("verify"); it != spec.end()) {
    if (!it->is_boolean()) throw UsageError(where + ": verify must be true or false");
    e.verify = it->get<bool>();
  }
  e.tls_name = want_str(spec, "tls_name", where).value_or(e.host);
  if (auto sieve = want_str(spec, "managesieve", where)) {
    imap::Endpoint se = e;
    auto [shost, sport] = split_address(*sieve, where + ": managesieve");
    se.host = shost;
    se.port = sport;
    se.tls = tls_mode(spec, "managesieve_tls", where);
    if (!spec.contains("tls_name")) se.tls_name = shost;
    node.sieve = se;
  }
  if (auto doveadm = want_str(spec, "doveadm", where))
    node.doveadm = split_address(*doveadm, where + ": doveadm");
  if (auto api = want_str(spec, "doveadm_http", where)) {
    std::string url = *api;
    if (url.find("://") == std::string::npos) url = "http://" + url;
    try {
      node.doveadm_http = ctl::Instance::with_url(name, url, std::nullopt);
    } catch (const ctl::UsageError&) {
      throw UsageError(where + ": doveadm_http must be http://HOST:PORT or https://HOST:PORT");
    }
    node.doveadm_http->ca_file = e.ca_file;
    node.doveadm_http->verify = e.verify;
  }
  return node;
}

std::string resolve(const std::string& base, const std::string& path) {
  if (fs::path(path).is_absolute()) return path;
  return (fs::path(base) / path).string();
}

}  // namespace

Config load_config(const std::string& path) {
  Config c;
  c.path = fs::absolute(path).string();
  const std::string base = fs::path(c.path).parent_path().string();
  try {
    ctl::Selection selection;
    selection.config = path;
    c.instances = ctl::select_instances(selection, "");
  } catch (const ctl::UsageError& e) {
    throw UsageError(e.what());
  }
  std::string text;
  try {
    text = read_text(path, "config");
  } catch (const UsageError&) {
    throw UsageError(fmt::format("config file {} does not exist or cannot be read", path));
  }
  const Json conf = Json::parse(text, nullptr, false, true);
  if (!conf.is_object()) throw UsageError(path + ": not valid JSON");
  if (!conf.contains("move")) throw UsageError(path + ": no \"move\" section (see docs/move.md)");
  const Json& move = conf["move"];
  const std::string where = path + ": move";
  check_keys(move,
             {"journal_dir", "directory", "login", "source_login", "nodes", "copier",
              "copier_timeout", "kick_timeout", "settle", "imap_timeout", "confirm_timeout",
              "copy_passes", "batch_bytes", "batch_messages", "precopy_passes",
              "precopy_threshold", "mover", "dsync", "copy_engine", "copy_program"},
             where);
  c.journal_dir = resolve(base, want_str(move, "journal_dir", where).value_or(kDefaultJournalDir));
  c.kick_timeout = parse_seconds(move.value("kick_timeout", Json("30s")), where + ": kick_timeout");
  c.settle = parse_seconds(move.value("settle", Json("2s")), where + ": settle");
  c.imap_timeout = parse_seconds(move.value("imap_timeout", Json("120s")), where + ": imap_timeout");
  if (c.imap_timeout <= 0) throw UsageError(where + ": imap_timeout must be more than 0");
  c.confirm_timeout =
      parse_seconds(move.value("confirm_timeout", Json("10s")), where + ": confirm_timeout");
  c.copy_passes = want_int(move, "copy_passes", 3, 1, 20,
                           where + ": copy_passes must be an integer from 1 to 20");
  c.precopy_passes = want_int(move, "precopy_passes", 5, 0, 20,
                              where + ": precopy_passes must be an integer from 0 to 20");
  if (auto it = move.find("precopy_threshold"); it != move.end()) {
    if (!it->is_number_integer() || it->get<long long>() < 0)
      throw UsageError(where + ": precopy_threshold must be a non-negative integer");
    c.precopy_threshold = it->get<std::uint64_t>();
  }
  if (auto it = move.find("batch_bytes"); it != move.end()) {
    if (!it->is_number_integer() || it->get<long long>() < 1024)
      throw UsageError(where + ": batch_bytes must be an integer of at least 1024");
    c.batch_bytes = it->get<std::uint64_t>();
  }
  c.batch_messages = static_cast<std::size_t>(want_int(
      move, "batch_messages", 500, 1, 100000, where + ": batch_messages must be an integer from 1 to 100000"));

  const Json* login = move.contains("login")          ? &move["login"]
                      : move.contains("source_login") ? &move["source_login"]
                                                      : nullptr;
  if (login == nullptr)
    throw UsageError(where + ": \"login\" (the nodes' master user) is required");
  const std::string lwhere = where + ": login";
  check_keys(*login, {"master_user", "master_password_file", "master_style", "separator"}, lwhere);
  c.login.user = *want_str(*login, "master_user", lwhere, true);
  c.login.password = read_secret(resolve(base, *want_str(*login, "master_password_file", lwhere, true)),
                                 lwhere + ": master_password_file");
  const std::string style = login->value("master_style", Json("dovecot")).is_string()
                                ? login->value("master_style", std::string("dovecot"))
                                : std::string("?");
  if (style != "dovecot" && style != "sasl")
    throw UsageError(lwhere + ": master_style must be \"dovecot\" or \"sasl\"");
  c.login.dovecot_style = style == "dovecot";
  c.login.separator = want_str(*login, "separator", lwhere).value_or("*");

  const Json nodes = move.value("nodes", Json());
  if (!nodes.is_object() || nodes.empty())
    throw UsageError(where + ": \"nodes\" must map node names to their IMAP address, e.g. "
                             "{\"a-left\": \"10.0.1.11:143\"}");
  for (const auto& [name, spec] : nodes.items())
    c.nodes.emplace(name, node_of(name, spec, where + ": nodes: " + name));

  c.mover = move.value("mover", Json("imap")).is_string() ? move.value("mover", std::string("imap"))
                                                           : std::string("?");
  if (c.mover != "imap" && c.mover != "dsync")
    throw UsageError(where + ": mover must be \"imap\" or \"dsync\"");
  const Json dsync = move.value("dsync", Json::object());
  const std::string swhere = where + ": dsync";
  check_keys(dsync, {"password_file", "api_key_file", "timeout", "copy_timeout"}, swhere);
  const auto password_file = want_str(dsync, "password_file", swhere);
  const auto api_key_file = want_str(dsync, "api_key_file", swhere);
  if (password_file && api_key_file)
    throw UsageError(swhere + ": give password_file (doveadm_password) or api_key_file "
                              "(doveadm_api_key), not both");
  if (password_file)
    c.doveadm_auth = "Basic " + encode_base64("doveadm:" + read_secret(resolve(base, *password_file),
                                                                      swhere + ": password_file"));
  else if (api_key_file)
    c.doveadm_auth = "X-Dovecot-API " + encode_base64(read_secret(resolve(base, *api_key_file),
                                                                  swhere + ": api_key_file"));
  // One dsync pass while the user works (the bulk copy may take hours),
  // and one while the user is locked out (short: a hung one must not keep
  // the user locked out for hours).
  c.dsync_timeout = parse_seconds(dsync.value("timeout", Json("6h")), swhere + ": timeout");
  c.dsync_copy_timeout =
      parse_seconds(dsync.value("copy_timeout", Json("10m")), swhere + ": copy_timeout");
  if (auto it = move.find("copier"); it != move.end()) {
    bool good = it->is_array() && !it->empty();
    for (const auto& a : good ? *it : Json::array()) good = good && a.is_string();
    if (!good)
      throw UsageError(where + ": copier must be a list of strings (a command and its arguments)");
    for (const auto& a : *it) c.copier.push_back(a.get<std::string>());
  }
  // A hung copier must not keep the user locked out for ever.
  c.copier_timeout =
      parse_seconds(move.value("copier_timeout", Json("6h")), where + ": copier_timeout");
  if (auto engine = move.find("copy_engine");
      engine != move.end() && *engine != Json("isthmus-copy"))
    throw UsageError(where + ": copy_engine: isthmus-move copies with its own C++ code only "
                             "(\"isthmus-copy\")");

  const Json directory = move.value("directory", Json());
  const std::string dwhere = where + ": directory";
  if (directory.is_null()) throw UsageError(where + ": \"directory\" is required");
  if (!directory.is_object()) throw UsageError(dwhere + ": expected a JSON object");
  const std::string type = directory.value("type", Json("")).is_string()
                               ? directory.value("type", std::string())
                               : std::string();
  c.directory.type = type;
  if (type == "isthmus") {
    check_keys(directory, {"type", "instance"}, dwhere);
    c.directory.instance = want_str(directory, "instance", dwhere).value_or("");
    if (!c.directory.instance.empty()) {
      bool found = false;
      std::string names;
      for (const auto& i : c.instances) {
        found = found || i.name == c.directory.instance;
        names += (names.empty() ? "" : ", ") + i.name;
      }
      if (!found)
        throw UsageError(fmt::format("{}: instance {} is not in \"instances\" ({})", dwhere,
                                     ctl::repr(c.directory.instance), names));
    }
  } else if (type == "static") {
    check_keys(directory, {"type", "file", "files", "lowercase", "default_domain"}, dwhere);
    Json files = directory.contains("files") ? directory["files"] : directory.value("file", Json());
    if (files.is_string()) files = Json::array({files});
    bool good = files.is_array() && !files.empty();
    for (const auto& f : good ? files : Json::array())
      good = good && f.is_string() && !f.get_ref<const std::string&>().empty();
    if (!good) throw UsageError(dwhere + ": \"file\" (the users.map path) is required");
    for (const auto& f : files) c.directory.files.push_back(resolve(base, f.get<std::string>()));
    if (auto it = directory.find("lowercase"); it != directory.end()) {
      if (!it->is_boolean()) throw UsageError(dwhere + ": lowercase must be true or false");
      c.directory.lowercase = it->get<bool>();
    }
    c.directory.default_domain = want_str(directory, "default_domain", dwhere).value_or("");
  } else if (type == "sql" || type == "ldap") {
    throw UsageError(fmt::format(
        "{}: type \"{}\" (written with the {} command-line client) is not supported by "
        "isthmus-move: use type \"isthmus\", which writes through an instance's admin API with "
        "the daemon's own {} client and credentials (directory.{}.writes)",
        dwhere, type, type == "sql" ? "mariadb" : "ldapmodify", type == "sql" ? "SQL" : "LDAP",
        type));
  } else {
    throw UsageError(dwhere + ": type must be \"isthmus\", \"static\", \"sql\" or \"ldap\"");
  }
  return c;
}

// ------------------------------------------------------------------ users.map

namespace {

std::vector<std::string> fields_of(std::string_view body) {
  std::vector<std::string> out;
  std::size_t i = 0;
  while (i < body.size()) {
    while (i < body.size() && std::isspace(static_cast<unsigned char>(body[i]))) ++i;
    std::size_t start = i;
    while (i < body.size() && !std::isspace(static_cast<unsigned char>(body[i]))) ++i;
    if (i > start) out.emplace_back(body.substr(start, i - start));
  }
  return out;
}

std::string key_of(std::string key, const DirectorySpec& spec) {
  if (spec.lowercase)
    for (auto& ch : key)
      if (ch >= 'A' && ch <= 'Z') ch = static_cast<char>(ch + 32);
  if (key.find('@') == std::string::npos && !spec.default_domain.empty()) {
    std::string domain = spec.default_domain;
    if (spec.lowercase)
      for (auto& ch : domain) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    key += "@" + domain;
  }
  return key;
}

}  // namespace

std::optional<std::size_t> find_user_line(const std::vector<std::string>& lines,
                                          const DirectorySpec& spec, const std::string& user) {
  for (std::size_t i = 0; i < lines.size(); ++i) {
    const std::string_view body = std::string_view(lines[i]).substr(0, lines[i].find('#'));
    auto fields = fields_of(body);
    if (fields.empty()) continue;
    if (fields[0] == "*" || fields[0].starts_with("*@")) continue;
    if (key_of(fields[0], spec) == user) return i;
  }
  return std::nullopt;
}

std::vector<std::string> edit_user_map(std::vector<std::string> lines, const DirectorySpec& spec,
                                       const std::string& user, const std::string& island,
                                       const std::string& state,
                                       const std::optional<std::string>& original,
                                       const std::string& from) {
  auto i = find_user_line(lines, spec, user);
  std::string key = user, comment;
  std::vector<std::string> attrs;
  if (i) {
    const std::string& line = lines[*i];
    const auto hash = line.find('#');
    if (hash != std::string::npos) comment = "  #" + line.substr(hash + 1);
    auto fields = fields_of(std::string_view(line).substr(0, hash));
    key = fields[0];
    for (std::size_t k = 2; k < fields.size(); ++k)
      if (!fields[k].starts_with("state=")) attrs.push_back(fields[k]);
  }
  if (state != "active") attrs.push_back("state=" + state);
  std::string new_line = key + " " + island;
  for (const auto& a : attrs) new_line += " " + a;
  new_line += comment;
  if (state == "active" && !original && i && island == from) {
    lines.erase(lines.begin() + static_cast<std::ptrdiff_t>(*i));  // a rollback: no line before
  } else if (!i) {
    lines.push_back(new_line);
  } else {
    lines[*i] = new_line;
  }
  return lines;
}

}  // namespace isthmus::moves::mover
