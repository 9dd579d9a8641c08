#include "config/config_loader.hpp"

#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <unistd.h>

using namespace isthmus::config;

namespace {

const char* kGood = R"({
  // comments are allowed
  "instance": "t1",
  "listeners": [ { "name": "imap", "protocol": "imap", "address": "127.0.0.1", "port": 1143 } ],
  "islands": [
    { "name": "a", "policy": "balance", "nodes": [
      { "name": "a-left", "host": "127.0.0.1", "ports": { "imap": 21143 } },
      { "name": "a-right", "host": "127.0.0.1", "ports": { "imap": 22143, "lmtp": 22024 } } ] }
  ],
  /* block comments too */
  "directory": { "type": "static", "file": "users.map" },
  "timeouts": { "idle": "30m", "connect": 2, "auth_failure_delay": "0s" }
})";

std::string error_of(const std::string& text) {
  try {
    parse_config(text, "test.json", "/etc/isthmus");
  } catch (const ConfigError& e) {
    return e.what();
  }
  return "";
}

std::string with_in(std::string text, const std::string& from, const std::string& to) {
  auto pos = text.find(from);
  REQUIRE(pos != std::string::npos);
  return text.replace(pos, from.size(), to);
}

std::string with(const std::string& from, const std::string& to) { return with_in(kGood, from, to); }

}  // namespace

TEST_CASE("a good config loads") {
  Config c = parse_config(kGood, "test.json", "/etc/isthmus");
  CHECK(c.instance == "t1");
  REQUIRE(c.islands.size() == 1);
  CHECK(c.islands[0].nodes[1].port_for(Protocol::lmtp) == 22024);
  CHECK_FALSE(c.islands[0].nodes[0].port_for(Protocol::lmtp));
  CHECK(c.directory.file == "/etc/isthmus/users.map");
  CHECK(c.timeouts.idle == std::chrono::minutes(30));
  CHECK(c.timeouts.connect == std::chrono::seconds(2));
  CHECK(c.timeouts.auth_failure_delay == std::chrono::milliseconds(0));
  CHECK(c.limits.max_line == 8192);
}

TEST_CASE("syntax errors name line and column") {
  auto e = error_of("{\n  \"instance\": \"x\",\n  oops\n}");
  CHECK(e.find("test.json:3:") == 0);
}

TEST_CASE("unknown keys are errors, named by JSON pointer") {
  auto e = error_of(with("\"policy\": \"balance\"", "\"policy\": \"balance\", \"polcy\": 1"));
  CHECK(e == "test.json: /islands/0/polcy: unknown key");
  e = error_of(with("\"imap\": 21143", "\"imap\": 21143, \"imaps\": 1"));
  CHECK(e == "test.json: /islands/0/nodes/0/ports/imaps: unknown key");
}

TEST_CASE("duplicate keys are errors") {
  auto e = error_of(with("\"port\": 1143", "\"port\": 1143, \"port\": 1144"));
  CHECK(e == "test.json: /listeners/0/port: duplicate key");
}

TEST_CASE("wrong values say what is expected, all problems at once") {
  auto e = error_of(with("\"port\": 1143", "\"port\": 70000"));
  CHECK(e == "test.json: /listeners/0/port: must be an integer from 0 to 65535");
  e = error_of(with("\"address\": \"127.0.0.1\"", "\"address\": \"localhost\""));
  CHECK(e == "test.json: /listeners/0/address: must be an IPv4 or IPv6 address");
  e = error_of(with("\"idle\": \"30m\"", "\"idle\": \"30 minutes\""));
  CHECK(e.find("test.json: /timeouts/idle: must be a duration") == 0);
  e = error_of(with("\"name\": \"a-right\"", "\"name\": \"a-left\""));
  CHECK(e.find("/islands/0/nodes/1/name: node \"a-left\" is defined twice") != std::string::npos);
  e = error_of(with("\"port\": 1143", "\"port\": -1, \"protocol2\": 1"));
  CHECK(e.find("/listeners/0/port") != std::string::npos);
  CHECK(e.find("/listeners/0/protocol2: unknown key") != std::string::npos);
}

TEST_CASE("missing required keys") {
  auto e = error_of("{ \"listeners\": [], \"directory\": {\"type\": \"static\"} }");
  CHECK(e.find("test.json: /listeners: must be a non-empty array") != std::string::npos);
  CHECK(e.find("missing required key \"islands\"") != std::string::npos);
  CHECK(e.find("a static directory needs \"file\"") != std::string::npos);
}

TEST_CASE("a node must serve every protocol a listener offers") {
  auto e = error_of(with("\"ports\": { \"imap\": 21143 }", "\"ports\": { \"lmtp\": 21024 }"));
  CHECK(e == "test.json: /islands/0/nodes/0/ports: node \"a-left\" has no imap port, but "
             "listener \"imap\" serves imap");
}

TEST_CASE("names must be plain") {
  auto e = error_of(with("\"name\": \"a\",", "\"name\": \"a b\","));
  CHECK(e.find("/islands/0/name: must be 1-64 characters") != std::string::npos);
}

TEST_CASE("TLS, trust and PROXY protocol keys") {
  auto text = with("\"port\": 1143 }",
                   "\"port\": 1143, \"tls\": \"starttls\", \"proxy_protocol\": [\"10.0.0.0/8\"] }");
  text = with_in(text, "/* block comments too */",
                 "\"tls\": { \"certificate\": \"c.pem\", \"key\": \"/k.pem\" },"
                 "\"trusted_networks\": [\"127.0.0.1\", \"192.0.2.0/24\"], \"proxy_ttl\": 3,");
  Config c = parse_config(text, "test.json", "/etc/isthmus");
  CHECK(c.listeners[0].tls == TlsMode::starttls);
  REQUIRE(c.listeners[0].proxy_protocol.size() == 1);
  CHECK(c.listeners[0].proxy_protocol[0].prefix == 8);
  REQUIRE(c.tls);
  CHECK(c.tls->certificate == "/etc/isthmus/c.pem");
  CHECK(c.tls->key == "/k.pem");
  CHECK(c.trusted_networks.size() == 2);
  CHECK(c.proxy_ttl == 3);
}

TEST_CASE("TLS and trust errors") {
  auto e = error_of(with("\"port\": 1143 }", "\"port\": 1143, \"tls\": \"implicit\" }"));
  CHECK(e == "test.json: /listeners/0/tls: a TLS listener needs the \"tls\" section (certificate "
             "and key)");
  e = error_of(with("\"port\": 1143 }", "\"port\": 1143, \"tls\": \"yes\" }"));
  CHECK(e.find("/listeners/0/tls: must be \"none\", \"starttls\" or \"implicit\"") !=
        std::string::npos);
  e = error_of(with("\"port\": 1143 }", "\"port\": 1143, \"proxy_protocol\": [\"10.0.0.0/33\"] }"));
  CHECK(e.find("/listeners/0/proxy_protocol/0: must be an IP address or a network") !=
        std::string::npos);
  e = error_of(with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"tls\": { \"key\": \"k\" },"));
  CHECK(e.find("/tls: missing required key \"certificate\"") != std::string::npos);
  e = error_of(with("\"host\": \"127.0.0.1\", \"ports\": { \"imap\": 21143 }",
                    "\"host\": \"127.0.0.1\", \"tls\": \"sometimes\", \"ports\": { \"imap\": 21143 }"));
  CHECK(e.find("/islands/0/nodes/0/tls: must be") != std::string::npos);
}

namespace {

std::string with_directory(const std::string& directory) {
  return with(R"("directory": { "type": "static", "file": "users.map" })",
              "\"directory\": " + directory);
}

struct TempSecret {
  std::string path = "/tmp/isthmus-config-test-secret-" + std::to_string(::getpid());
  explicit TempSecret(const std::string& text) {
    FILE* f = std::fopen(path.c_str(), "w");
    std::fputs(text.c_str(), f);
    std::fclose(f);
  }
  ~TempSecret() { std::remove(path.c_str()); }
};

}  // namespace

TEST_CASE("an LDAP directory: defaults, secrets from a file, the cache on") {
  TempSecret secret("s3cret\n");
  auto c = parse_config(with_directory(R"({ "type": "ldap", "ldap": {
      "uris": ["ldap://10.0.0.1", "ldaps://10.0.0.2:636"], "base": "ou=people,dc=example,dc=org",
      "bind_dn": "cn=isthmus,dc=example,dc=org", "bind_password_file": ")" + secret.path + R"(",
      "attributes": { "island": "mailHost" } },
      "cache": { "positive_ttl": "10m", "stale_if_error": "2h" } })"),
                        "t.json", "/etc");
  CHECK(c.directory.type == "ldap");
  CHECK(c.directory.ldap.uris.size() == 2);
  CHECK(c.directory.ldap.bind_password == "s3cret");
  CHECK(c.directory.ldap.island_attribute == "mailHost");
  CHECK(c.directory.ldap.state_attribute == "mailAccountState");
  CHECK(c.directory.ldap.filter == "(&(objectClass=mailIslandUser)(uid=%{user}))");
  CHECK(c.directory.cache.enabled);
  CHECK(c.directory.cache.positive_ttl == std::chrono::minutes(10));
  CHECK(c.directory.cache.stale_if_error == std::chrono::hours(2));
}

TEST_CASE("an SQL directory: the CalMail query by default, placeholders checked") {
  auto c = parse_config(with_directory(R"({ "type": "sql", "sql": {
      "servers": ["10.0.0.5:3306", "[2001:db8::5]:3306"], "database": "mail", "user": "isthmus" } })"),
                        "t.json", "/etc");
  CHECK(c.directory.sql.query == default_sql_query());
  CHECK(c.directory.sql.servers.size() == 2);
  auto e = error_of(with_directory(R"({ "type": "sql", "sql": { "servers": ["db"],
      "database": "mail", "user": "u", "query": "SELECT island FROM t WHERE u = %{usr}" } })"));
  CHECK(e.find("/directory/sql/servers/0: must be host:port") != std::string::npos);
  CHECK(e.find("/directory/sql/query: unknown placeholder \"%{usr}\"") != std::string::npos);
  e = error_of(with_directory(R"({ "type": "sql", "sql": { "servers": ["db:3306"],
      "database": "mail", "user": "u", "query": "SELECT island FROM t WHERE u = ?" } })"));
  CHECK(e.find("/directory/sql/query: must contain %{user}") != std::string::npos);
}

TEST_CASE("directory writes: SQL statements with %{value} and the user, an LDAP bind DN") {
  auto c = parse_config(with_directory(R"({ "type": "sql", "sql": {
      "servers": ["db:3306"], "database": "mail", "user": "isthmus",
      "writes": { "set_state": "UPDATE a SET state = %{value} WHERE l = %{localpart} AND d = %{domain}",
                  "set_island": "UPDATE a SET island = %{value} WHERE u = %{user}" } } })"),
                        "t.json", "/etc");
  CHECK(c.directory.sql.writes());
  CHECK(c.directory.sql.write_user.empty());
  c = parse_config(with_directory(R"({ "type": "sql", "sql": {
      "servers": ["db:3306"], "database": "mail", "user": "isthmus",
      "writes": { "set_state": "UPDATE a SET state = %{value} WHERE l = %{localpart} AND d = %{domain}",
                  "set_island": "UPDATE a SET island = %{value} WHERE u = %{user}" } } })"),
                   "t.json", "/etc");
  CHECK(c.directory.sql.writes());
  CHECK(!parse_config(with_directory(R"({ "type": "sql", "sql": { "servers": ["db:3306"],
      "database": "mail", "user": "u" } })"), "t.json", "/etc").directory.sql.writes());
  auto e = error_of(with_directory(R"({ "type": "sql", "sql": { "servers": ["db:3306"],
      "database": "mail", "user": "u", "writes": {
      "set_state": "UPDATE a SET state = 'moving' WHERE l = %{localpart}",
      "set_island": "UPDATE a SET island = %{value}", "user": "writer" } } })"));
  CHECK(e.find("/directory/sql/writes/set_state: must contain %{value}") != std::string::npos);
  CHECK(e.find("/directory/sql/writes/set_island: must name the whole user") !=
        std::string::npos);
  CHECK(e.find("/directory/sql/writes/user: a user needs \"password_file\"") !=
        std::string::npos);
  e = error_of(with_directory(R"({ "type": "sql", "sql": { "servers": ["db:3306"],
      "database": "mail", "user": "u", "writes": {
      "set_state": "UPDATE a SET state = %{value} WHERE l = %{localpart}",
      "set_island": "UPDATE a SET island = %{value} WHERE l = %{localpart} AND d = %{domain}" }
      } })"));
  CHECK(e.find("/directory/sql/writes/set_state: must name the whole user") !=
        std::string::npos);
  CHECK(e.find("set_island") == std::string::npos);
  e = error_of(with_directory(R"({ "type": "sql", "sql": { "servers": ["db:3306"],
      "database": "mail", "user": "u", "query": "SELECT i FROM t WHERE u = %{value}" } })"));
  CHECK(e.find("/directory/sql/query: unknown placeholder \"%{value}\"") != std::string::npos);
  e = error_of(with_directory(R"({ "type": "ldap", "ldap": { "uris": ["ldap://x"],
      "base": "o=x", "writes": { "bind_dn": "cn=writer" } } })"));
  CHECK(e.find("/directory/ldap/writes/bind_dn: a bind DN needs \"bind_password_file\"") !=
        std::string::npos);
}

TEST_CASE("directory and auth errors name their place") {
  auto e = error_of(with_directory(R"({ "type": "ldap", "ldap": { "uris": ["http://x"],
      "bind_dn": "cn=x", "filter": "uid=x" } })"));
  CHECK(e.find("/directory/ldap/uris/0: must start with ldap:// or ldaps://") != std::string::npos);
  CHECK(e.find("/directory/ldap: missing required key \"base\"") != std::string::npos);
  CHECK(e.find("/directory/ldap/bind_dn: a bind DN needs \"bind_password_file\"") !=
        std::string::npos);
  CHECK(e.find("/directory/ldap/filter: must contain %{user}") != std::string::npos);
  e = error_of(with_directory(R"({ "type": "ldap", "ldap": { "uris": ["ldap://x"], "base": "o=x",
      "bind_dn": "cn=x", "bind_password_file": "/nonexistent/secret" } })"));
  CHECK(e.find("/directory/ldap/bind_password_file: cannot read /nonexistent/secret") !=
        std::string::npos);
  e = error_of(with_directory(R"({ "type": "nis" })"));
  CHECK(e.find("/directory/type: must be \"static\", \"ldap\" or \"sql\"") != std::string::npos);
  e = error_of(with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"auth\": { \"mode\": \"directory\" },"));
  CHECK(e.find("/auth/mode: \"directory\" needs an ldap or sql directory") != std::string::npos);
  e = error_of(with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"auth\": { \"master_user\": \"m\" },"));
  CHECK(e.find("/auth/master_user: a master user needs \"master_password_file\"") !=
        std::string::npos);
  CHECK(e.find("/auth/master_user: only for mode \"directory\"") != std::string::npos);
}

TEST_CASE("health config: defaults, global keys, per-island overrides, drain") {
  Config d = parse_config(kGood, "test.json", "/etc/isthmus");
  CHECK(d.health.active);
  CHECK(d.health.interval == std::chrono::seconds(5));
  CHECK(d.health.down_interval == std::chrono::seconds(2));
  CHECK(d.health.timeout == std::chrono::seconds(2));
  CHECK(d.health.rise == 2);
  CHECK(d.health.fall == 2);
  CHECK_FALSE(d.health.lmtp_lhlo);
  CHECK(d.islands[0].health == d.health);
  CHECK_FALSE(d.islands[0].nodes[0].drain);

  auto text = with("\"instance\": \"t1\",",
                   "\"instance\": \"t1\", \"health\": { \"interval\": \"3s\", \"down_interval\": "
                   "\"500ms\", \"timeout\": 1, \"rise\": 3, \"fall\": 1, \"lmtp_lhlo\": true },");
  text = with_in(text, "\"policy\": \"balance\",",
                 "\"policy\": \"balance\", \"health\": { \"fall\": 4, \"active\": false },");
  text = with_in(text, "\"imap\": 21143 }", "\"imap\": 21143 }, \"drain\": true");
  Config c = parse_config(text, "test.json", "/etc/isthmus");
  CHECK(c.health.interval == std::chrono::seconds(3));
  CHECK(c.health.down_interval == std::chrono::milliseconds(500));
  CHECK(c.health.timeout == std::chrono::seconds(1));
  CHECK(c.health.rise == 3);
  CHECK(c.health.fall == 1);
  CHECK(c.health.lmtp_lhlo);
  // The island takes the global values and overrides what it names.
  const auto& ih = c.islands[0].health;
  CHECK(ih.interval == std::chrono::seconds(3));
  CHECK(ih.rise == 3);
  CHECK(ih.fall == 4);
  CHECK_FALSE(ih.active);
  CHECK(ih.lmtp_lhlo);
  CHECK(c.islands[0].nodes[0].drain);
  CHECK_FALSE(c.islands[0].nodes[1].drain);
}

TEST_CASE("health config errors name their place") {
  auto global = [](const std::string& keys) {
    return error_of(with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"health\": {" + keys + "},"));
  };
  CHECK(global("\"interval\": \"50ms\"") == "test.json: /health/interval: must be at least 100ms");
  CHECK(global("\"down_interval\": \"1 second\"") ==
        "test.json: /health/down_interval: must be a duration such as \"250ms\", \"30s\", \"5m\" "
        "or \"1h\"");
  CHECK(global("\"timeout\": \"5ms\"") == "test.json: /health/timeout: must be at least 10ms");
  CHECK(global("\"rise\": 0") == "test.json: /health/rise: must be an integer from 1 to 100");
  CHECK(global("\"fall\": -1") == "test.json: /health/fall: must be an integer from 1 to 100");
  CHECK(global("\"lmtp_lhlo\": \"yes\"") == "test.json: /health/lmtp_lhlo: must be true or false");
  CHECK(global("\"active\": 1") == "test.json: /health/active: must be true or false");
  CHECK(global("\"intervall\": \"5s\"") == "test.json: /health/intervall: unknown key");
  CHECK(error_of(with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"health\": 5,")) ==
        "test.json: /health: must be an object");
  auto island = error_of(with("\"policy\": \"balance\",",
                              "\"policy\": \"balance\", \"health\": { \"rise\": 101, "
                              "\"interval\": \"10ms\" },"));
  CHECK(island == "test.json: /islands/0/health/interval: must be at least 100ms\n"
                  "test.json: /islands/0/health/rise: must be an integer from 1 to 100");
  CHECK(error_of(with("\"imap\": 21143 }", "\"imap\": 21143 }, \"drain\": \"yes\"")) ==
        "test.json: /islands/0/nodes/0/drain: must be true or false");
}

TEST_CASE("active-passive islands: the initial holder is a node of the island") {
  auto c = parse_config(with("\"policy\": \"balance\"", "\"policy\": \"active-passive\""),
                        "t.json", "/etc");
  CHECK(c.islands[0].policy == IslandPolicy::active_passive);
  CHECK(c.islands[0].active == "a-left");
  c = parse_config(with("\"policy\": \"balance\"",
                        "\"policy\": \"active-passive\", \"active\": \"a-right\""),
                   "t.json", "/etc");
  CHECK(c.islands[0].active == "a-right");
  auto e = error_of(with("\"policy\": \"balance\"",
                         "\"policy\": \"active-passive\", \"active\": \"b-left\""));
  CHECK(e.find("/islands/0/active: \"b-left\" is not a node of island \"a\"") !=
        std::string::npos);
  e = error_of(with("\"policy\": \"balance\"", "\"policy\": \"balance\", \"active\": \"a-left\""));
  CHECK(e.find("/islands/0/active: only for policy \"active-passive\"") != std::string::npos);
  e = error_of(with("\"policy\": \"balance\"", "\"policy\": \"primary\""));
  CHECK(e.find("must be \"balance\" or \"active-passive\"") != std::string::npos);
}

TEST_CASE("roles config: local by default; sql needs its connection; hook and timings checked") {
  auto c = parse_config(kGood, "t.json", "/etc");
  CHECK(c.roles.store == RoleStoreKind::local);
  CHECK(c.roles.poll_interval == std::chrono::seconds(1));
  CHECK(c.roles.close_spread == std::chrono::seconds(5));
  CHECK(c.roles.hook.empty());
  auto roles = [](const std::string& keys) {
    return with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"roles\": {" + keys + "},");
  };
  c = parse_config(roles("\"store\": \"sql\", \"poll_interval\": \"500ms\", \"hook\": "
                         "[\"/usr/local/bin/move-ip\", \"--island\"], \"hook_timeout\": \"3s\", "
                         "\"sql\": { \"servers\": [\"10.0.0.5:3306\"], \"database\": \"mail\", "
                         "\"user\": \"isthmus\", \"pool\": 2 }"),
                   "t.json", "/etc");
  CHECK(c.roles.store == RoleStoreKind::sql);
  CHECK(c.roles.sql.servers == std::vector<std::string>{"10.0.0.5:3306"});
  CHECK(c.roles.sql.pool == 2);
  CHECK(c.roles.hook == std::vector<std::string>{"/usr/local/bin/move-ip", "--island"});
  CHECK(c.roles.hook_timeout == std::chrono::seconds(3));
  CHECK(error_of(roles("\"store\": \"sql\"")) ==
        "test.json: /roles: store \"sql\" needs \"sql\" (servers, database, user, password_file)");
  CHECK(error_of(roles("\"store\": \"etcd\"")) ==
        "test.json: /roles/store: must be \"local\" or \"sql\"");
  CHECK(error_of(roles("\"sql\": {}")) == "test.json: /roles/sql: only for store \"sql\"");
  CHECK(error_of(roles("\"hook\": [\"move-ip\"]")) ==
        "test.json: /roles/hook/0: must be an absolute path to the program to run");
  CHECK(error_of(roles("\"poll_interval\": \"2s\", \"instance_timeout\": \"3s\"")) ==
        "test.json: /roles/instance_timeout: must be at least twice poll_interval");
  CHECK(error_of(roles("\"store\": \"sql\", \"sql\": { \"servers\": [\"db\"], \"database\": "
                       "\"mail\", \"user\": \"u\" }"))
            .find("/roles/sql/servers/0: must be host:port") != std::string::npos);
}

TEST_CASE("admin config: TCP needs a token file; addresses checked") {
  auto c = parse_config(kGood, "t.json", "/etc");
  CHECK(c.admin.socket.empty());
  CHECK(c.admin.listen.empty());
  auto admin = [](const std::string& keys) {
    return with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"admin\": {" + keys + "},");
  };
  c = parse_config(admin("\"socket\": \"run/admin.sock\""), "t.json", "/etc/isthmus");
  CHECK(c.admin.socket == "/etc/isthmus/run/admin.sock");
  CHECK(error_of(admin("\"listen\": \"127.0.0.1:8025\"")) ==
        "test.json: /admin: \"listen\" (TCP) needs \"token_file\": the API acts on the instance "
        "and must not be open to anyone who can connect");
  CHECK(error_of(admin("\"listen\": \"localhost:8025\"")).find(
            "/admin/listen: must be an IP address and a port") != std::string::npos);
  CHECK(error_of(admin("\"listen\": \"127.0.0.1\"")).find("/admin/listen:") != std::string::npos);
  CHECK(error_of(admin("\"sock\": \"x\"")).find("/admin/sock: unknown key") != std::string::npos);
}

TEST_CASE("problems quote the config's bytes with control bytes escaped (fuzz finding)") {
  // An ESC in a key (written as \u001b) named in "unknown key", a DEL in
  // what the JSON parser last read: neither reaches the operator's
  // terminal as it is.
  std::string e = error_of(R"({"inst\u001b[31m": 1})");
  CHECK(e.find('\x1b') == std::string::npos);
  CHECK(e.find("\\x1b[31m") != std::string::npos);
  e = error_of(std::string("41//\xff\xff\xff\x7f\xff\n: 2"));
  CHECK(e.find('\x7f') == std::string::npos);
  for (char c : e) CHECK((static_cast<unsigned char>(c) >= 0x20 || c == '\n'));
}

TEST_CASE("a number too large for JSON is a config error, not another exception (fuzz finding)") {
  // nlohmann throws out_of_range (406), not parse_error, for it: that
  // escaped parse_config as something other than ConfigError.
  CHECK_THROWS_AS(parse_config(R"({"workers": 1e999})", "test.json", "/etc/isthmus"),
                  ConfigError);
  CHECK(error_of(R"({"workers": 1e999})") == "test.json: number overflow parsing");
}

TEST_CASE("lmtp.node_user and node_password_file: AUTH to the LMTP nodes") {
  const auto dir = std::filesystem::temp_directory_path() /
                   ("isthmus-config-test-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  const auto secret = dir / "lmtp.pw";
  {
    std::ofstream out(secret);
    out << "s3cret\n";
  }
  const std::string lmtp = "\"instance\": \"t1\", \"lmtp\": { \"node_user\": \"lmtp\", "
                           "\"node_password_file\": \"" + secret.string() + "\" },";
  Config c = parse_config(with("\"instance\": \"t1\",", lmtp), "test.json", "/etc/isthmus");
  CHECK(c.lmtp.node_user == "lmtp");
  CHECK(c.lmtp.node_password == "s3cret");
  CHECK(parse_config(kGood, "test.json", "/etc/isthmus").lmtp.node_user.empty());
  auto e = error_of(with("\"instance\": \"t1\",",
                         "\"instance\": \"t1\", \"lmtp\": { \"node_user\": \"lmtp\" },"));
  CHECK(e.find("/lmtp/node_user: a node user needs \"node_password_file\"") != std::string::npos);
  e = error_of(with("\"instance\": \"t1\",", "\"instance\": \"t1\", \"lmtp\": { "
                    "\"node_password_file\": \"" + secret.string() + "\" },"));
  CHECK(e.find("/lmtp/node_password_file: needs \"node_user\"") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a node's tls per protocol: IMAP over STARTTLS, LMTP in clear") {
  const std::string node = R"({ "name": "a-right", "host": "127.0.0.1", "ports": { "imap": 22143, "lmtp": 22024 } })";
  auto with_tls = [&](const std::string& tls) {
    return with(node, R"({ "name": "a-right", "host": "127.0.0.1", "tls": )" + tls +
                          R"(, "ports": { "imap": 22143, "lmtp": 22024 } })");
  };
  Config c = parse_config(with_tls(R"({ "imap": "starttls", "lmtp": "none" })"), "test.json",
                          "/etc/isthmus");
  const Node& n = c.islands[0].nodes[1];
  CHECK(n.tls_for(Protocol::imap) == TlsMode::starttls);
  CHECK(n.tls_for(Protocol::lmtp) == TlsMode::none);
  CHECK(n.tls_for(Protocol::pop3) == TlsMode::none);  // not named: none
  c = parse_config(with_tls(R"("implicit")"), "test.json", "/etc/isthmus");
  CHECK(c.islands[0].nodes[1].tls_for(Protocol::lmtp) == TlsMode::implicit);  // one for all
  CHECK(c.islands[0].nodes[1].tls_for(Protocol::imap) == TlsMode::implicit);
  auto e = error_of(with_tls(R"({ "imap": "maybe" })"));
  CHECK(e.find("/islands/0/nodes/1/tls/imap: must be \"none\", \"starttls\" or \"implicit\"") !=
        std::string::npos);
  e = error_of(with_tls(R"({ "smtp": "starttls" })"));
  CHECK(e.find("/islands/0/nodes/1/tls/smtp: unknown key") != std::string::npos);
}

TEST_CASE("moves config: off without the section; the store follows roles; timings checked") {
  CHECK_FALSE(parse_config(kGood, "t.json", "/etc").moves.enabled);
  auto moves = [](const std::string& keys, const std::string& roles = "") {
    return with("\"instance\": \"t1\",",
                "\"instance\": \"t1\", " + roles + "\"moves\": {" + keys + "},");
  };
  auto c = parse_config(moves("\"mover_config\": \"isthmusctl.json\""), "t.json", "/etc/isthmus");
  CHECK(c.moves.enabled);
  CHECK(c.moves.store == MoveStoreKind::file);
  CHECK(c.moves.mover_config == "/etc/isthmus/isthmusctl.json");
  CHECK(c.moves.mover == "/usr/lib/isthmus/isthmus-move");
  CHECK(c.moves.lease == std::chrono::seconds(30));
  c = parse_config(moves("\"mover_config\": \"/etc/m.json\", \"lease\": \"10s\"",
                         "\"roles\": {\"store\": \"sql\", \"sql\": { \"servers\": "
                         "[\"10.0.0.5:3306\"], \"database\": \"mail\", \"user\": \"i\" }}, "),
                   "t.json", "/etc");
  CHECK(c.moves.store == MoveStoreKind::sql);
  CHECK(error_of(moves("")) == "test.json: /moves: missing required key \"mover_config\"");
  CHECK(error_of(moves("\"mover_config\": \"m.json\", \"store\": \"sql\"")).find(
            "/moves/store: \"sql\" keeps the jobs in the role store's database") !=
        std::string::npos);
  CHECK(error_of(moves("\"mover_config\": \"m.json\", \"lease\": \"1s\"")) ==
        "test.json: /moves/lease: must be at least three times poll_interval");
  CHECK(error_of(moves("\"mover_config\": \"m.json\", \"max_running\": 0")).find(
            "/moves/max_running") != std::string::npos);
}
