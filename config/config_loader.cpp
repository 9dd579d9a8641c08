#include "config/config_loader.hpp"

#include "common/strings.hpp"
#include "config/duration.hpp"

#include <boost/asio/ip/address.hpp>
#include <boost/asio/ip/host_name.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <set>
#include <sstream>

namespace isthmus::config {
namespace {

using nlohmann::json;

std::string escape_pointer_token(std::string_view key) {
  std::string out;
  for (char c : key) {
    if (c == '~') out += "~0";
    else if (c == '/') out += "~1";
    else out += c;
  }
  return out;
}

// Collects problems; each names its place.
class Problems {
 public:
  explicit Problems(std::string source) : source_(std::move(source)) {}
  void add(const std::string& pointer, const std::string& what) {
    list_.push_back(fmt::format("{}: {}: {}", source_, pointer.empty() ? "/" : pointer, what));
  }
  void add_raw(std::string line) { list_.push_back(std::move(line)); }
  bool empty() const { return list_.empty(); }
  [[noreturn]] void raise() const {
    std::string all;
    // A problem may quote the config's own bytes (a key, a value, the JSON
    // parser's "last read"): control bytes are shown escaped, never sent
    // raw to the operator's terminal or log.
    for (const auto& p : list_) {
      for (char c : p) {
        auto u = static_cast<unsigned char>(c);
        if (u < 0x20 || u == 0x7f) all += fmt::format("\\x{:02x}", u);
        else all += c;
      }
      all += "\n";
    }
    if (!all.empty()) all.pop_back();
    throw ConfigError(all);
  }
  const std::string& source() const { return source_; }

 private:
  std::string source_;
  std::vector<std::string> list_;
};

// One JSON object being read: remembers which keys were taken, so the rest
// can be reported as unknown.
class Object {
 public:
  Object(const json& value, std::string pointer, Problems& problems)
      : value_(value), pointer_(std::move(pointer)), problems_(problems) {
    if (!value_.is_object()) {
      problems_.add(pointer_, "must be an object");
      ok_ = false;
    }
  }
  Object(const Object&) = delete;
  Object& operator=(const Object&) = delete;
  ~Object() {
    if (!ok_) return;
    for (const auto& [key, unused] : value_.items()) {
      if (!taken_.count(key)) problems_.add(pointer_of(key), "unknown key");
    }
  }

  bool has(std::string_view key) const { return ok_ && value_.contains(key); }

  std::string pointer_of(std::string_view key) const {
    return pointer_ + "/" + escape_pointer_token(key);
  }
  Problems& problems() { return problems_; }

  // The member `key`, or nullptr when absent (an error if `required`).
  const json* take(std::string_view key, bool required = false) {
    if (!ok_) return nullptr;
    taken_.insert(std::string(key));
    auto it = value_.find(key);
    if (it == value_.end()) {
      if (required) problems_.add(pointer_, fmt::format("missing required key \"{}\"", key));
      return nullptr;
    }
    return &*it;
  }

  void read_string(std::string_view key, std::string& out, bool required = false) {
    if (const json* v = take(key, required)) {
      if (v->is_string()) out = v->get<std::string>();
      else problems_.add(pointer_of(key), "must be a string");
    }
  }
  void read_bool(std::string_view key, bool& out) {
    if (const json* v = take(key)) {
      if (v->is_boolean()) out = v->get<bool>();
      else problems_.add(pointer_of(key), "must be true or false");
    }
  }
  template <typename T>
  void read_uint(std::string_view key, T& out, std::uint64_t min, std::uint64_t max,
                 bool required = false) {
    if (const json* v = take(key, required)) {
      if (v->is_number_unsigned() && v->get<std::uint64_t>() >= min &&
          v->get<std::uint64_t>() <= max) {
        out = static_cast<T>(v->get<std::uint64_t>());
      } else {
        problems_.add(pointer_of(key), fmt::format("must be an integer from {} to {}", min, max));
      }
    }
  }
  // A list of networks: ["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"].
  void read_cidrs(std::string_view key, std::vector<Cidr>& out) {
    if (const json* v = take(key)) {
      if (!v->is_array()) {
        problems_.add(pointer_of(key), "must be an array of networks such as \"10.0.0.0/8\"");
        return;
      }
      for (std::size_t i = 0; i < v->size(); ++i) {
        const json& item = (*v)[i];
        auto cidr = item.is_string() ? Cidr::parse(item.get<std::string>()) : std::nullopt;
        if (!cidr) {
          problems_.add(pointer_of(key) + "/" + std::to_string(i),
                        "must be an IP address or a network such as \"10.0.0.0/8\"");
        } else {
          out.push_back(*cidr);
        }
      }
    }
  }
  void read_tls_mode(std::string_view key, TlsMode& out) {
    std::string mode;
    read_string(key, mode);
    if (mode.empty()) return;
    if (mode == "none") out = TlsMode::none;
    else if (mode == "starttls") out = TlsMode::starttls;
    else if (mode == "implicit") out = TlsMode::implicit;
    else problems_.add(pointer_of(key), "must be \"none\", \"starttls\" or \"implicit\"");
  }
  // A file name, relative to the config file's folder unless absolute.
  void read_path(std::string_view key, std::filesystem::path& out, const std::filesystem::path& base,
                 bool required = false) {
    std::string text;
    read_string(key, text, required);
    if (!text.empty()) {
      std::filesystem::path p(text);
      out = p.is_absolute() ? p : base / p;
    }
  }

  // A duration: "250ms", "30s", "5m", "1h", or a number of seconds.
  void read_duration(std::string_view key, Duration& out) {
    if (const json* v = take(key)) {
      if (v->is_number_unsigned() && v->get<std::uint64_t>() <= 365ULL * 24 * 3600) {
        out = std::chrono::seconds(v->get<std::uint64_t>());
      } else if (v->is_string()) {
        if (auto d = parse_duration(v->get<std::string>())) out = *d;
        else problems_.add(pointer_of(key), "must be a duration such as \"250ms\", \"30s\", "
                                            "\"5m\" or \"1h\"");
      } else {
        problems_.add(pointer_of(key), "must be a duration such as \"30s\" (or seconds)");
      }
    }
  }

 private:
  const json& value_;
  std::string pointer_;
  Problems& problems_;
  std::set<std::string, std::less<>> taken_;
  bool ok_ = true;
};

// Duplicate keys are silently merged by JSON parsers; an operator who wrote
// "port" twice meant something, so they are an error here.
class DuplicateKeyCheck {
 public:
  struct Duplicate {
    std::string pointer;
  };
  bool operator()(int /*depth*/, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start: frames_.push_back({false, 0, {}, {}}); break;
      case json::parse_event_t::array_start: frames_.push_back({true, 0, {}, {}}); break;
      case json::parse_event_t::key: {
        auto key = parsed.get<std::string>();
        auto& top = frames_.back();
        if (!top.keys.insert(key).second) throw Duplicate{pointer() + "/" + escape_pointer_token(key)};
        top.key = key;
        break;
      }
      case json::parse_event_t::value:
        if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
        break;
      case json::parse_event_t::object_end:
      case json::parse_event_t::array_end:
        frames_.pop_back();
        if (!frames_.empty() && frames_.back().array) ++frames_.back().index;
        break;
    }
    return true;
  }

 private:
  struct Frame {
    bool array;
    std::size_t index;
    std::set<std::string> keys;
    std::string key;
  };
  std::string pointer() const {
    std::string out;
    for (std::size_t i = 0; i + 1 < frames_.size(); ++i) {
      out += "/";
      out += frames_[i].array ? std::to_string(frames_[i].index) : escape_pointer_token(frames_[i].key);
    }
    return out;
  }
  std::vector<Frame> frames_;
};

std::pair<std::size_t, std::size_t> line_and_column(std::string_view text, std::size_t byte) {
  std::size_t line = 1, column = 1;
  for (std::size_t i = 0; i < text.size() && i + 1 < byte; ++i) {
    if (text[i] == '\n') {
      ++line;
      column = 1;
    } else {
      ++column;
    }
  }
  return {line, column};
}

json parse_json(std::string_view text, Problems& problems) {
  try {
    DuplicateKeyCheck check;
    return json::parse(text.begin(), text.end(), std::ref(check), /*allow_exceptions=*/true,
                       /*ignore_comments=*/true);
  } catch (const json::parse_error& e) {
    auto [line, column] = line_and_column(text, e.byte);
    // nlohmann's text reads "[json.exception.parse_error.101] parse error at
    // line L, column C: WHAT"; keep WHAT, we print the place ourselves.
    std::string what = e.what();
    if (auto pos = what.find(": "); pos != std::string::npos) what = what.substr(pos + 2);
    problems.add_raw(fmt::format("{}:{}:{}: {}", problems.source(), line, column, what));
  } catch (const DuplicateKeyCheck::Duplicate& d) {
    problems.add(d.pointer, "duplicate key");
  } catch (const json::exception& e) {
    // Not a syntax error but still the text's fault, e.g. out_of_range 406
    // ("number overflow parsing '1e999'"), which has no place: say so
    // without the (possibly huge) number.
    std::string what = e.what();
    if (auto pos = what.find("] "); pos != std::string::npos) what = what.substr(pos + 2);
    if (auto quote = what.find(" '"); quote != std::string::npos) what = what.substr(0, quote);
    problems.add_raw(fmt::format("{}: {}", problems.source(), what));
  }
  problems.raise();
}

bool valid_ip(const std::string& text) {
  boost::system::error_code ec;
  boost::asio::ip::make_address(text, ec);
  return !ec;
}

bool valid_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '-' || c == '_' || c == '.';
  });
}
constexpr const char* kNameRule = "must be 1-64 characters of letters, digits, '-', '_' or '.'";

// A list of strings, none empty.
void read_string_list(Object& o, std::string_view key, std::vector<std::string>& out,
                      bool required) {
  const json* v = o.take(key, required);
  if (!v) return;
  if (!v->is_array() || v->empty()) {
    o.problems().add(o.pointer_of(key), "must be a non-empty array of strings");
    return;
  }
  for (std::size_t i = 0; i < v->size(); ++i) {
    const json& item = (*v)[i];
    if (item.is_string() && !item.get<std::string>().empty()) out.push_back(item.get<std::string>());
    else o.problems().add(o.pointer_of(key) + "/" + std::to_string(i), "must be a non-empty string");
  }
}

// A secret kept in its own file (mode 0600, outside the config): the file's
// content without one trailing newline, as `echo secret > file` writes it.
void read_secret_file(Object& o, std::string_view key, std::filesystem::path& path,
                      std::string& secret, const std::filesystem::path& base) {
  o.read_path(key, path, base);
  if (path.empty()) return;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    o.problems().add(o.pointer_of(key), fmt::format("cannot read {}", path.string()));
    return;
  }
  std::ostringstream text;
  text << in.rdbuf();
  secret = text.str();
  if (!secret.empty() && secret.back() == '\n') secret.pop_back();
  if (!secret.empty() && secret.back() == '\r') secret.pop_back();
  if (secret.find_first_of("\r\n") != std::string::npos || secret.find('\0') != std::string::npos)
    o.problems().add(o.pointer_of(key), fmt::format("{} must hold one line", path.string()));
}

void read_directory_tls(Object& o, std::string_view key, DirectoryTls& tls,
                        const std::filesystem::path& base) {
  if (const json* v = o.take(key)) {
    Object t(*v, o.pointer_of(key), o.problems());
    t.read_path("ca", tls.ca, base);
    t.read_bool("verify", tls.verify);
  }
}

bool has_placeholders_only(std::string_view text, std::string& bad, bool value = false) {
  for (std::size_t at = text.find("%{"); at != std::string_view::npos; at = text.find("%{", at + 2)) {
    auto end = text.find('}', at);
    auto name = text.substr(at + 2, end == std::string_view::npos ? 0 : end - at - 2);
    if (end == std::string_view::npos ||
        (name != "user" && name != "localpart" && name != "domain" && !(value && name == "value"))) {
      bad = std::string(text.substr(at, end == std::string_view::npos ? 2 : end - at + 1));
      return false;
    }
  }
  return true;
}

void read_ldap_directory(Object& l, LdapDirectory& ldap, const std::filesystem::path& base) {
  auto& problems = l.problems();
  read_string_list(l, "uris", ldap.uris, true);
  for (std::size_t i = 0; i < ldap.uris.size(); ++i) {
    const auto& uri = ldap.uris[i];
    if (uri.rfind("ldap://", 0) != 0 && uri.rfind("ldaps://", 0) != 0)
      problems.add(l.pointer_of("uris") + "/" + std::to_string(i),
                   "must start with ldap:// or ldaps://");
  }
  l.read_bool("starttls", ldap.starttls);
  read_directory_tls(l, "tls", ldap.tls, base);
  l.read_string("bind_dn", ldap.bind_dn);
  read_secret_file(l, "bind_password_file", ldap.bind_password_file, ldap.bind_password, base);
  if (!ldap.bind_dn.empty() && ldap.bind_password_file.empty())
    problems.add(l.pointer_of("bind_dn"), "a bind DN needs \"bind_password_file\"");
  l.read_string("base", ldap.base, true);
  l.read_string("scope", ldap.scope);
  if (ldap.scope != "base" && ldap.scope != "one" && ldap.scope != "sub")
    problems.add(l.pointer_of("scope"), "must be \"base\", \"one\" or \"sub\"");
  l.read_string("filter", ldap.filter);
  std::string bad;
  if (!has_placeholders_only(ldap.filter, bad))
    problems.add(l.pointer_of("filter"), fmt::format("unknown placeholder \"{}\" (use %{{user}}, "
                                                     "%{{localpart}} or %{{domain}})", bad));
  else if (ldap.filter.find("%{") == std::string::npos)
    problems.add(l.pointer_of("filter"), "must contain %{user}, %{localpart} or %{domain}");
  if (const json* attributes = l.take("attributes")) {
    Object a(*attributes, l.pointer_of("attributes"), problems);
    a.read_string("island", ldap.island_attribute);
    a.read_string("state", ldap.state_attribute);
    a.read_string("node_login", ldap.node_login_attribute);
    a.read_string("login", ldap.login_attribute);
    a.read_string("password", ldap.password_attribute);
    if (ldap.island_attribute.empty())
      problems.add(a.pointer_of("island"), "must name the attribute holding the island");
  }
  l.read_uint("pool", ldap.pool, 1, 64);
  l.read_duration("timeout", ldap.timeout);
  l.read_duration("connect_timeout", ldap.connect_timeout);
  l.read_duration("max_backoff", ldap.max_backoff);
  if (const json* writes = l.take("writes")) {
    Object w(*writes, l.pointer_of("writes"), problems);
    w.read_string("bind_dn", ldap.write_bind_dn, true);
    read_secret_file(w, "bind_password_file", ldap.write_bind_password_file,
                     ldap.write_bind_password, base);
    if (!ldap.write_bind_dn.empty() && ldap.write_bind_password_file.empty())
      problems.add(w.pointer_of("bind_dn"), "a bind DN needs \"bind_password_file\"");
    else if (!ldap.write_bind_password_file.empty() && ldap.write_bind_password.empty())
      problems.add(w.pointer_of("bind_password_file"),
                   "is empty (a simple bind without a password is anonymous)");
  }
}

void read_sql_connection(Object& q, SqlConnection& sql, const std::filesystem::path& base) {
  auto& problems = q.problems();
  read_string_list(q, "servers", sql.servers, true);
  for (std::size_t i = 0; i < sql.servers.size(); ++i) {
    const auto& server = sql.servers[i];
    auto colon = server.rfind(':');
    bool ok = colon != std::string::npos && colon > 0 && colon + 1 < server.size() &&
              server.find_first_not_of("0123456789", colon + 1) == std::string::npos &&
              server.size() - colon - 1 <= 5 && std::stoul(server.substr(colon + 1)) - 1 < 65535;
    if (!ok)
      problems.add(q.pointer_of("servers") + "/" + std::to_string(i),
                   "must be host:port, such as \"10.0.0.5:3306\" or \"[2001:db8::5]:3306\"");
  }
  q.read_string("database", sql.database, true);
  q.read_string("user", sql.user, true);
  read_secret_file(q, "password_file", sql.password_file, sql.password, base);
  q.read_bool("tls", sql.tls);
  read_directory_tls(q, "tls_options", sql.tls_options, base);
  q.read_uint("pool", sql.pool, 1, 64);
  q.read_duration("timeout", sql.timeout);
  q.read_duration("connect_timeout", sql.connect_timeout);
  q.read_duration("max_backoff", sql.max_backoff);
}

void read_sql_directory(Object& q, SqlDirectory& sql, const std::filesystem::path& base) {
  auto& problems = q.problems();
  read_sql_connection(q, sql, base);
  sql.query = std::string(default_sql_query());
  q.read_string("query", sql.query);
  std::string bad;
  if (!has_placeholders_only(sql.query, bad))
    problems.add(q.pointer_of("query"), fmt::format("unknown placeholder \"{}\" (use %{{user}}, "
                                                    "%{{localpart}} or %{{domain}})", bad));
  else if (sql.query.find("%{") == std::string::npos)
    problems.add(q.pointer_of("query"), "must contain %{user}, %{localpart} or %{domain}");
  if (sql.query.find('?') != std::string::npos)
    problems.add(q.pointer_of("query"), "use %{user}, %{localpart} and %{domain}, not ?");
  if (const json* writes = q.take("writes")) {
    Object w(*writes, q.pointer_of("writes"), problems);
    for (auto [key, statement] : {std::pair{"set_state", &sql.set_state},
                                  std::pair{"set_island", &sql.set_island}}) {
      w.read_string(key, *statement, true);
      if (statement->empty()) continue;  // missing: said; empty: no writes at all
      if (!has_placeholders_only(*statement, bad, true))
        problems.add(w.pointer_of(key), fmt::format("unknown placeholder \"{}\" (use %{{value}}, "
                                                    "%{{user}}, %{{localpart}} or %{{domain}})",
                                                    bad));
      else if (statement->find("%{value}") == std::string::npos)
        problems.add(w.pointer_of(key), "must contain %{value} (the new value)");
      else if (statement->find("%{user}") == std::string::npos &&
               (statement->find("%{localpart}") == std::string::npos ||
                statement->find("%{domain}") == std::string::npos))
        problems.add(w.pointer_of(key),
                     "must name the whole user: %{user}, or %{localpart} and %{domain}");
      if (statement->find('?') != std::string::npos)
        problems.add(w.pointer_of(key), "use %{value}, %{user}, %{localpart} and %{domain}, not ?");
    }
    w.read_string("user", sql.write_user);
    read_secret_file(w, "password_file", sql.write_password_file, sql.write_password, base);
    if (!sql.write_user.empty() && sql.write_password_file.empty())
      problems.add(w.pointer_of("user"), "a user needs \"password_file\"");
    if (sql.write_user.empty() && !sql.write_password_file.empty())
      problems.add(w.pointer_of("password_file"), "only with \"user\" (the writes' account)");
  }
}

void read_roles(Object& r, Roles& roles, const std::filesystem::path& base) {
  auto& problems = r.problems();
  std::string store = "local";
  r.read_string("store", store);
  if (store == "sql") roles.store = RoleStoreKind::sql;
  else if (store != "local") problems.add(r.pointer_of("store"), "must be \"local\" or \"sql\"");
  const json* sql = r.take("sql");
  if (roles.store == RoleStoreKind::sql && !sql)
    problems.add("/roles", "store \"sql\" needs \"sql\" (servers, database, user, password_file)");
  if (sql && roles.store != RoleStoreKind::sql)
    problems.add(r.pointer_of("sql"), "only for store \"sql\"");
  if (sql && roles.store == RoleStoreKind::sql) {
    Object q(*sql, r.pointer_of("sql"), problems);
    read_sql_connection(q, roles.sql, base);
  }
  r.read_duration("poll_interval", roles.poll_interval);
  r.read_duration("instance_timeout", roles.instance_timeout);
  if (roles.poll_interval < std::chrono::milliseconds(100))
    problems.add(r.pointer_of("poll_interval"), "must be at least 100ms");
  if (roles.instance_timeout < 2 * roles.poll_interval)
    problems.add(r.pointer_of("instance_timeout"), "must be at least twice poll_interval");
  r.read_duration("instance_expiry", roles.instance_expiry);
  if (roles.instance_expiry < roles.instance_timeout)
    problems.add(r.pointer_of("instance_expiry"), "must be at least instance_timeout");
  read_string_list(r, "hook", roles.hook, false);
  if (!roles.hook.empty() && (roles.hook.front().empty() || roles.hook.front()[0] != '/'))
    problems.add(r.pointer_of("hook") + "/0", "must be an absolute path to the program to run");
  r.read_duration("hook_timeout", roles.hook_timeout);
  if (roles.hook_timeout < std::chrono::milliseconds(10))
    problems.add(r.pointer_of("hook_timeout"), "must be at least 10ms");
  r.read_duration("close_spread", roles.close_spread);
}

void read_moves(Object& m, Moves& moves, const Roles& roles, const std::filesystem::path& base) {
  auto& problems = m.problems();
  moves.enabled = true;
  m.read_path("mover", moves.mover, base);
  m.read_path("mover_config", moves.mover_config, base, true);
  std::string store = roles.store == RoleStoreKind::sql ? "sql" : "file";
  m.read_string("store", store);
  if (store == "sql") moves.store = MoveStoreKind::sql;
  else if (store == "file") moves.store = MoveStoreKind::file;
  else problems.add(m.pointer_of("store"), "must be \"sql\" or \"file\"");
  if (moves.store == MoveStoreKind::sql && roles.store != RoleStoreKind::sql)
    problems.add(m.pointer_of("store"),
                 "\"sql\" keeps the jobs in the role store's database: needs roles.store \"sql\"");
  m.read_path("dir", moves.dir, base);
  m.read_duration("lease", moves.lease);
  m.read_duration("poll_interval", moves.poll_interval);
  m.read_duration("keep", moves.keep);
  m.read_uint("max_running", moves.max_running, 1, 64);
  if (moves.poll_interval < std::chrono::milliseconds(100))
    problems.add(m.pointer_of("poll_interval"), "must be at least 100ms");
  if (moves.lease < 3 * moves.poll_interval)
    problems.add(m.pointer_of("lease"), "must be at least three times poll_interval");
  if (moves.keep < std::chrono::minutes(1))
    problems.add(m.pointer_of("keep"), "must be at least 1m");
}

void read_directory(Object& d, DirectoryConfig& directory, const std::filesystem::path& base) {
  auto& problems = d.problems();
  d.read_string("type", directory.type, true);
  const auto& type = directory.type;
  if (type != "static" && type != "ldap" && type != "sql") {
    problems.add(d.pointer_of("type"), "must be \"static\", \"ldap\" or \"sql\"");
    return;
  }
  d.read_path("file", directory.file, base);
  d.read_bool("optional", directory.optional);
  if (type == "static" && directory.file.empty())
    problems.add("/directory", "a static directory needs \"file\"");
  if (type != "static" && !directory.file.empty())
    problems.add(d.pointer_of("file"), "only a static directory reads a file");
  const json* ldap = d.take("ldap");
  const json* sql = d.take("sql");
  if (type == "ldap" && !ldap) problems.add("/directory", "an ldap directory needs \"ldap\"");
  if (type == "sql" && !sql) problems.add("/directory", "an sql directory needs \"sql\"");
  if (ldap && type != "ldap") problems.add(d.pointer_of("ldap"), "only for type \"ldap\"");
  if (sql && type != "sql") problems.add(d.pointer_of("sql"), "only for type \"sql\"");
  if (ldap && type == "ldap") {
    Object l(*ldap, d.pointer_of("ldap"), problems);
    read_ldap_directory(l, directory.ldap, base);
  }
  if (sql && type == "sql") {
    Object q(*sql, d.pointer_of("sql"), problems);
    read_sql_directory(q, directory.sql, base);
  }
  // Static lookups are a hash probe already: no cache unless asked for.
  directory.cache.enabled = type != "static";
  if (const json* cache = d.take("cache")) {
    Object c(*cache, d.pointer_of("cache"), problems);
    c.read_bool("enabled", directory.cache.enabled);
    c.read_duration("positive_ttl", directory.cache.positive_ttl);
    c.read_duration("negative_ttl", directory.cache.negative_ttl);
    c.read_duration("stale_if_error", directory.cache.stale_if_error);
    c.read_uint("max_entries", directory.cache.max_entries, 1, 100000000);
    c.read_bool("close_on_island_change", directory.cache.close_on_island_change);
  }
}

void read_auth(Object& a, Auth& auth, const std::filesystem::path& base) {
  auto& problems = a.problems();
  std::string mode;
  a.read_string("mode", mode);
  if (mode == "directory") auth.mode = AuthMode::directory;
  else if (!mode.empty() && mode != "backend")
    problems.add(a.pointer_of("mode"), "must be \"backend\" or \"directory\"");
  a.read_string("master_user", auth.master_user);
  read_secret_file(a, "master_password_file", auth.master_password_file, auth.master_password,
                   base);
  if (!auth.master_user.empty() && auth.master_password_file.empty())
    problems.add(a.pointer_of("master_user"), "a master user needs \"master_password_file\"");
  if (!auth.master_user.empty() && auth.mode != AuthMode::directory)
    problems.add(a.pointer_of("master_user"),
                 "only for mode \"directory\" (nodes must not trust unverified logins)");
  std::string style;
  a.read_string("master_style", style);
  if (style == "dovecot") auth.master_style = MasterStyle::dovecot;
  else if (!style.empty() && style != "sasl")
    problems.add(a.pointer_of("master_style"), "must be \"sasl\" or \"dovecot\"");
  a.read_string("master_separator", auth.master_separator);
  if (auth.master_separator.empty())
    problems.add(a.pointer_of("master_separator"), "must not be empty");
  a.read_duration("outcome_cache_ttl", auth.outcome_cache_ttl);
  a.read_duration("max_failure_delay", auth.max_failure_delay);
  a.read_duration("failure_half_life", auth.failure_half_life);
  a.read_duration("max_throttle_wait", auth.max_throttle_wait);
  a.read_duration("known_good_ttl", auth.known_good_ttl);
  a.read_uint("ipv6_prefix", auth.ipv6_prefix, 32, 128);
  a.read_uint("throttle_entries", auth.throttle_entries, 64, 16U << 20);
  if (auth.failure_half_life < std::chrono::seconds(1))
    problems.add(a.pointer_of("failure_half_life"), "must be at least 1s");
  if (const json* oauth = a.take("oauth2")) {
    Object o(*oauth, a.pointer_of("oauth2"), problems);
    auto& settings = auth.oauth2;
    settings.enabled = true;
    if (const json* mechanisms = o.take("mechanisms")) {
      settings.oauthbearer = settings.xoauth2 = false;
      if (!mechanisms->is_array() || mechanisms->empty()) {
        problems.add(o.pointer_of("mechanisms"), "must be a non-empty list (\"oauthbearer\", "
                                                 "\"xoauth2\")");
      } else {
        for (const auto& m : *mechanisms) {
          const std::string name = m.is_string() ? ascii_lowercase(m.get<std::string>()) : "";
          if (name == "oauthbearer") settings.oauthbearer = true;
          else if (name == "xoauth2") settings.xoauth2 = true;
          else problems.add(o.pointer_of("mechanisms"), "knows \"oauthbearer\" and \"xoauth2\"");
        }
      }
    }
    o.read_string("introspection_url", settings.introspection_url);
    if (!settings.introspection_url.empty() &&
        settings.introspection_url.rfind("https://", 0) != 0)
      problems.add(o.pointer_of("introspection_url"), "must be an https:// URL (tokens are secrets)");
    o.read_string("client_id", settings.client_id);
    read_secret_file(o, "client_secret_file", settings.client_secret_file, settings.client_secret,
                     base);
    o.read_path("ca", settings.ca, base);
    o.read_bool("verify", settings.verify);
    o.read_string("user_claim", settings.user_claim);
    o.read_string("audience", settings.audience);
    o.read_string("scope", settings.scope);
    if (settings.scope.find(' ') != std::string::npos)
      problems.add(o.pointer_of("scope"), "one scope (no spaces)");
    if (settings.user_claim.empty()) problems.add(o.pointer_of("user_claim"), "must not be empty");
    o.read_duration("timeout", settings.timeout);
    o.read_duration("cache_ttl", settings.cache_ttl);
    o.read_uint("max_token", settings.max_token, 64, 65536);
    if (auth.mode == AuthMode::directory && settings.introspection_url.empty())
      problems.add(o.pointer_of("introspection_url"),
                   "auth.mode \"directory\" checks tokens itself: it needs the introspection "
                   "endpoint");
  }
}

void read_log(Object& o, LogSettings& log) {
  std::string level;
  o.read_string("level", level);
  if (!level.empty()) {
    auto parsed = spdlog::level::from_str(level);
    if (parsed == spdlog::level::off && level != "off") {
      o.problems().add(o.pointer_of("level"),
                       "must be one of trace, debug, info, warn, error, critical, off");
    } else {
      log.level = parsed;
    }
  }
  o.read_string("file", log.file);
}

void read_listeners(const json& array, const std::string& pointer, Problems& problems,
                    std::vector<Listener>& out) {
  if (!array.is_array() || array.empty()) {
    problems.add(pointer, "must be a non-empty array of listeners");
    return;
  }
  std::set<std::string> names;
  for (std::size_t i = 0; i < array.size(); ++i) {
    Object o(array[i], pointer + "/" + std::to_string(i), problems);
    Listener l;
    o.read_string("name", l.name, true);
    std::string protocol;
    o.read_string("protocol", protocol, true);
    o.read_string("address", l.address, true);
    o.read_uint("port", l.port, 0, 65535, true);
    o.read_tls_mode("tls", l.tls);
    o.read_cidrs("proxy_protocol", l.proxy_protocol);
    o.read_bool("allow_plaintext_auth", l.allow_plaintext_auth);
    o.read_cidrs("allow", l.allow);
    if (!l.name.empty()) {
      if (!valid_name(l.name)) problems.add(o.pointer_of("name"), kNameRule);
      else if (!names.insert(l.name).second)
        problems.add(o.pointer_of("name"), fmt::format("listener \"{}\" is defined twice", l.name));
    }
    if (!protocol.empty()) {
      auto p = protocol_from_name(protocol);
      if (!p) problems.add(o.pointer_of("protocol"), "must be \"imap\", \"pop3\" or \"lmtp\"");
      else l.protocol = *p;
    }
    if (!l.address.empty() && !valid_ip(l.address))
      problems.add(o.pointer_of("address"), "must be an IPv4 or IPv6 address");
    out.push_back(std::move(l));
  }
}

// "health" (global) or "islands[].health": `health` starts as the defaults
// it overrides. Only the keys present here are checked here, so a bad global
// value is reported once, at its own place.
void read_health(Object& h, Health& health) {
  auto& problems = h.problems();
  h.read_bool("active", health.active);
  for (auto [key, value, minimum] :
       {std::tuple{"interval", &health.interval, std::chrono::milliseconds(100)},
        {"down_interval", &health.down_interval, std::chrono::milliseconds(100)},
        {"timeout", &health.timeout, std::chrono::milliseconds(10)}}) {
    if (!h.has(key)) continue;
    Duration before = *value;
    h.read_duration(key, *value);
    if (*value < minimum) {
      problems.add(h.pointer_of(key), fmt::format("must be at least {}ms", minimum.count()));
      *value = before;
    }
  }
  h.read_uint("rise", health.rise, 1, 100);
  h.read_uint("fall", health.fall, 1, 100);
  h.read_bool("lmtp_lhlo", health.lmtp_lhlo);
}

// "tls": one mode for every protocol, or an object with a mode per
// protocol (those not named: none).
void read_node_tls(Object& o, Node& node) {
  if (o.has("tls") && o.take("tls")->is_object()) {
    const json& modes = *o.take("tls");
    Object t(modes, o.pointer_of("tls"), o.problems());
    for (const auto& [key, unused] : modes.items()) {
      auto protocol = protocol_from_name(key);
      if (!protocol) continue;  // not taken: reported as an unknown key
      TlsMode mode = TlsMode::none;
      t.read_tls_mode(key, mode);
      node.tls_by_protocol[*protocol] = mode;
    }
    return;
  }
  o.read_tls_mode("tls", node.tls);
}

void read_node(Object& o, Node& node) {
  o.read_string("name", node.name, true);
  o.read_string("host", node.host, true);
  read_node_tls(o, node);
  o.read_string("tls_name", node.tls_name);
  o.read_bool("drain", node.drain);
  if (!node.name.empty() && !valid_name(node.name))
    o.problems().add(o.pointer_of("name"), kNameRule);
  if (const json* ports = o.take("ports", true)) {
    Object p(*ports, o.pointer_of("ports"), o.problems());
    for (Protocol protocol :
         {Protocol::imap, Protocol::pop3, Protocol::lmtp, Protocol::managesieve}) {
      std::uint16_t port = 0;
      bool present = p.take(name_of(protocol)) != nullptr;
      p.read_uint(name_of(protocol), port, 1, 65535);
      if (present && port != 0) node.ports[protocol] = port;
    }
    if (ports->is_object() && ports->empty())
      o.problems().add(o.pointer_of("ports"),
                       "must name at least one of imap, pop3, lmtp, managesieve");
  }
}

void read_islands(const json& array, const std::string& pointer, Problems& problems,
                  const Health& health, std::vector<Island>& out) {
  if (!array.is_array() || array.empty()) {
    problems.add(pointer, "must be a non-empty array of islands");
    return;
  }
  std::set<std::string> island_names, node_names;
  for (std::size_t i = 0; i < array.size(); ++i) {
    Object o(array[i], pointer + "/" + std::to_string(i), problems);
    Island island;
    island.health = health;
    o.read_string("name", island.name, true);
    if (!island.name.empty()) {
      if (!valid_name(island.name)) problems.add(o.pointer_of("name"), kNameRule);
      else if (!island_names.insert(island.name).second)
        problems.add(o.pointer_of("name"), fmt::format("island \"{}\" is defined twice", island.name));
    }
    std::string policy = "balance";
    o.read_string("policy", policy);
    if (policy == "active-passive") island.policy = IslandPolicy::active_passive;
    else if (policy != "balance")
      problems.add(o.pointer_of("policy"), "must be \"balance\" or \"active-passive\"");
    o.read_string("active", island.active);
    if (!island.active.empty() && island.policy != IslandPolicy::active_passive)
      problems.add(o.pointer_of("active"), "only for policy \"active-passive\"");
    if (const json* h = o.take("health")) {
      Object ho(*h, o.pointer_of("health"), problems);
      read_health(ho, island.health);
    }
    if (const json* nodes = o.take("nodes", true)) {
      if (!nodes->is_array() || nodes->empty()) {
        problems.add(o.pointer_of("nodes"), "must be a non-empty array of nodes");
      } else {
        for (std::size_t k = 0; k < nodes->size(); ++k) {
          Object n((*nodes)[k], o.pointer_of("nodes") + "/" + std::to_string(k), problems);
          Node node;
          read_node(n, node);
          if (!node.name.empty() && !node_names.insert(node.name).second)
            problems.add(n.pointer_of("name"),
                         fmt::format("node \"{}\" is defined twice (node names are unique "
                                     "over all islands)", node.name));
          island.nodes.push_back(std::move(node));
        }
      }
    }
    if (island.policy == IslandPolicy::active_passive && !island.nodes.empty()) {
      if (island.active.empty()) island.active = island.nodes.front().name;
      bool known = false;
      for (const auto& node : island.nodes) known |= node.name == island.active;
      if (!known)
        problems.add(o.pointer_of("active"),
                     fmt::format("\"{}\" is not a node of island \"{}\"", island.active,
                                 island.name));
    }
    out.push_back(std::move(island));
  }
}

}  // namespace

Config parse_config(std::string_view text, const std::string& source,
                    const std::filesystem::path& base_dir) {
  Problems problems(source);
  json root = parse_json(text, problems);
  Config config;
  {
    Object o(root, "", problems);
    o.read_string("instance", config.instance);
    o.read_uint("workers", config.workers, 0, 256);
    if (const json* log = o.take("log")) {
      Object l(*log, "/log", problems);
      read_log(l, config.log);
    }
    if (const json* listeners = o.take("listeners", true))
      read_listeners(*listeners, "/listeners", problems, config.listeners);
    // Before the islands: they start from these defaults.
    if (const json* health = o.take("health")) {
      Object h(*health, "/health", problems);
      read_health(h, config.health);
    }
    if (const json* islands = o.take("islands", true))
      read_islands(*islands, "/islands", problems, config.health, config.islands);
    if (const json* admin = o.take("admin")) {
      Object a(*admin, "/admin", problems);
      auto& settings = config.admin;
      a.read_path("socket", settings.socket, base_dir);
      a.read_string("listen", settings.listen);
      read_secret_file(a, "token_file", settings.token_file, settings.token, base_dir);
      if (!settings.listen.empty()) {
        auto colon = settings.listen.rfind(':');
        bool port_ok = colon != std::string::npos && colon + 1 < settings.listen.size() &&
                       settings.listen.find_first_not_of("0123456789", colon + 1) ==
                           std::string::npos &&
                       settings.listen.size() - colon - 1 <= 5;
        std::string host = port_ok ? settings.listen.substr(0, colon) : "";
        if (host.size() > 2 && host.front() == '[' && host.back() == ']')
          host = host.substr(1, host.size() - 2);
        boost::system::error_code ec;
        if (port_ok) boost::asio::ip::make_address(host, ec);
        if (!port_ok || ec)
          problems.add("/admin/listen",
                       "must be an IP address and a port, such as \"127.0.0.1:8025\"");
        if (settings.token.empty())
          problems.add("/admin", "\"listen\" (TCP) needs \"token_file\": the API acts on the "
                                 "instance and must not be open to anyone who can connect");
      }
      if (settings.token.size() > 0 && settings.token.size() < 16)
        problems.add("/admin/token_file", "the token must be at least 16 characters");
    }
    if (const json* roles = o.take("roles")) {
      Object r(*roles, "/roles", problems);
      read_roles(r, config.roles, base_dir);
    }
    if (const json* moves = o.take("moves")) {
      Object m(*moves, "/moves", problems);
      read_moves(m, config.moves, config.roles, base_dir);
    }
    if (const json* directory = o.take("directory", true)) {
      Object d(*directory, "/directory", problems);
      read_directory(d, config.directory, base_dir);
    }
    if (const json* auth = o.take("auth")) {
      Object a(*auth, "/auth", problems);
      read_auth(a, config.auth, base_dir);
      // A static directory holds no passwords: in directory mode only
      // bearer tokens (checked at the introspection endpoint) can log in.
      if (config.auth.mode == AuthMode::directory && config.directory.type == "static" &&
          !config.auth.oauth2.enabled)
        problems.add("/auth/mode", "\"directory\" needs an ldap or sql directory (a static "
                                   "directory holds no passwords), or auth.oauth2 (tokens "
                                   "only)");
    }
    if (const json* names = o.take("login_names")) {
      Object n(*names, "/login_names", problems);
      n.read_bool("lowercase", config.login_names.lowercase);
      n.read_string("default_domain", config.login_names.default_domain);
      n.read_uint("max_length", config.login_names.max_length, 1, 1024);
      const auto& domain = config.login_names.default_domain;
      if (domain.find_first_of("@ \t\r\n") != std::string::npos)
        problems.add("/login_names/default_domain", "must be a bare domain such as example.org");
    }
    if (const json* timeouts = o.take("timeouts")) {
      Object t(*timeouts, "/timeouts", problems);
      auto& to = config.timeouts;
      t.read_duration("preauth", to.preauth);
      t.read_duration("proxy_header", to.proxy_header);
      t.read_duration("login", to.login);
      t.read_duration("connect", to.connect);
      t.read_duration("idle", to.idle);
      t.read_duration("half_closed", to.half_closed);
      t.read_duration("shutdown_grace", to.shutdown_grace);
      t.read_duration("auth_failure_delay", to.auth_failure_delay);
      t.read_duration("lmtp_idle", to.lmtp_idle);
      t.read_duration("lmtp_command", to.lmtp_command);
      t.read_duration("lmtp_data", to.lmtp_data);
      t.read_duration("lmtp_final", to.lmtp_final);
      for (auto [key, value] : {std::pair{"preauth", to.preauth}, {"login", to.login},
                                {"proxy_header", to.proxy_header},
                                {"half_closed", to.half_closed},
                                {"connect", to.connect}, {"idle", to.idle},
                                {"lmtp_idle", to.lmtp_idle}, {"lmtp_command", to.lmtp_command},
                                {"lmtp_data", to.lmtp_data}, {"lmtp_final", to.lmtp_final}}) {
        if (value < std::chrono::milliseconds(10))
          problems.add(std::string("/timeouts/") + key, "must be at least 10ms");
      }
    }
    o.read_cidrs("trusted_networks", config.trusted_networks);
    o.read_uint("proxy_ttl", config.proxy_ttl, 1, 50);
    if (const json* tls = o.take("tls")) {
      Object t(*tls, "/tls", problems);
      ServerTls server;
      t.read_path("certificate", server.certificate, base_dir, true);
      t.read_path("key", server.key, base_dir, true);
      t.read_string("min_version", server.min_version);
      if (server.min_version != "1.2" && server.min_version != "1.3")
        problems.add("/tls/min_version", "must be \"1.2\" or \"1.3\"");
      config.tls = server;
    }
    if (const json* node_tls = o.take("node_tls")) {
      Object t(*node_tls, "/node_tls", problems);
      t.read_path("ca", config.node_tls.ca, base_dir);
      t.read_bool("verify", config.node_tls.verify);
    }
    if (const json* limits = o.take("limits")) {
      Object l(*limits, "/limits", problems);
      l.read_uint("max_line", config.limits.max_line, 1024, 1 << 20);
      l.read_uint("max_literal", config.limits.max_literal, 256, 1 << 20);
      l.read_uint("max_preauth_commands", config.limits.max_preauth_commands, 1, 10000);
      l.read_uint("max_password", config.limits.max_password, 16, 8192);
      l.read_uint("max_preauth_per_address", config.limits.max_preauth_per_address, 0, 1000000);
      l.read_uint("max_connections", config.limits.max_connections, 0, 10000000);
      l.read_uint("max_message_size", config.limits.max_message_size, 1024, 4ULL << 30);
      l.read_uint("max_recipients", config.limits.max_recipients, 1, 100000);
    }
    if (const json* sieve = o.take("managesieve")) {
      Object l(*sieve, "/managesieve", problems);
      l.read_string("sieve_extensions", config.managesieve.sieve_extensions);
      l.read_string("notify_methods", config.managesieve.notify_methods);
      l.read_uint("max_redirects", config.managesieve.max_redirects, 0, 1000);
      for (const std::string* value :
           {&config.managesieve.sieve_extensions, &config.managesieve.notify_methods}) {
        if (value->find_first_of(std::string_view("\"\\\r\n\0", 5)) != std::string::npos)
          problems.add("/managesieve", "sieve_extensions and notify_methods must not hold "
                                       "quotes, backslashes, line breaks or NULs");
      }
    }
    if (const json* lmtp = o.take("lmtp")) {
      Object l(*lmtp, "/lmtp", problems);
      l.read_path("spool_dir", config.lmtp.spool_dir, base_dir);
      l.read_uint("memory_spool", config.lmtp.memory_spool, 0, 1ULL << 30);
      l.read_string("hostname", config.lmtp.hostname);
      l.read_uint("max_hops", config.lmtp.max_hops, 2, 1000);
      l.read_uint("max_node_connections", config.lmtp.max_node_connections, 1, 100000);
      l.read_string("node_user", config.lmtp.node_user);
      read_secret_file(l, "node_password_file", config.lmtp.node_password_file,
                       config.lmtp.node_password, base_dir);
      if (!config.lmtp.node_user.empty() && config.lmtp.node_password_file.empty())
        problems.add(l.pointer_of("node_user"), "a node user needs \"node_password_file\"");
      if (config.lmtp.node_user.empty() && !config.lmtp.node_password_file.empty())
        problems.add(l.pointer_of("node_password_file"), "needs \"node_user\"");
    }
  }
  // Cross-checks: TLS listeners need a certificate.
  for (std::size_t i = 0; i < config.listeners.size(); ++i) {
    if (config.listeners[i].protocol == Protocol::lmtp && config.listeners[i].tls != TlsMode::none)
      problems.add(fmt::format("/listeners/{}/tls", i),
                   "LMTP listeners serve MTAs on trusted networks in plaintext; TLS is not "
                   "supported there");
    else if (config.listeners[i].tls != TlsMode::none && !config.tls)
      problems.add(fmt::format("/listeners/{}/tls", i),
                   "a TLS listener needs the \"tls\" section (certificate and key)");
  }
  // Every node must serve each protocol that a listener offers.
  for (std::size_t i = 0; i < config.islands.size(); ++i) {
    const auto& island = config.islands[i];
    for (std::size_t k = 0; k < island.nodes.size(); ++k) {
      for (const auto& listener : config.listeners) {
        if (!island.nodes[k].name.empty() && !island.nodes[k].port_for(listener.protocol))
          problems.add(fmt::format("/islands/{}/nodes/{}/ports", i, k),
                       fmt::format("node \"{}\" has no {} port, but listener \"{}\" serves {}",
                                   island.nodes[k].name, name_of(listener.protocol),
                                   listener.name, name_of(listener.protocol)));
      }
    }
  }
  if (!problems.empty()) problems.raise();
  config.path = source;
  if (config.instance.empty()) config.instance = boost::asio::ip::host_name();
  if (config.lmtp.hostname.empty()) config.lmtp.hostname = boost::asio::ip::host_name();
  return config;
}

Config load_config(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw ConfigError(fmt::format("{}: cannot read the file", file.string()));
  std::ostringstream text;
  text << in.rdbuf();
  auto base = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
  Config config = parse_config(text.str(), file.string(), base);
  config.path = file;
  return config;
}

}  // namespace isthmus::config
