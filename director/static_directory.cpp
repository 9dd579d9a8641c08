#include "director/static_directory.hpp"

#include "common/log.hpp"
#include "common/strings.hpp"
#include "director/login_name.hpp"

#include <fmt/format.h>

#include <fstream>
#include <sstream>

namespace isthmus::director {

std::shared_ptr<StaticDirectory> StaticDirectory::load(const std::filesystem::path& file,
                                                       const config::LoginNames& rules,
                                                       const IslandCheck& known_island) {
  std::ifstream in(file, std::ios::binary);
  if (!in) throw config::ConfigError(fmt::format("{}: cannot read the file", file.string()));
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), file.string(), rules, known_island);
}

std::shared_ptr<StaticDirectory> StaticDirectory::parse(std::string_view text,
                                                        const std::string& source,
                                                        const config::LoginNames& rules,
                                                        const IslandCheck& known_island) {
  auto directory = std::make_shared<StaticDirectory>();
  std::string problems;
  auto problem = [&](std::size_t line, const std::string& what) {
    problems += fmt::format("{}:{}: {}\n", source, line, what);
  };
  std::size_t number = 0;
  while (!text.empty()) {
    ++number;
    auto lf = text.find('\n');
    std::string_view line = text.substr(0, lf);
    text = lf == std::string_view::npos ? std::string_view() : text.substr(lf + 1);
    if (auto hash = line.find('#'); hash != std::string_view::npos) line = line.substr(0, hash);
    line = trim(line);
    if (line.empty()) continue;

    std::vector<std::string_view> fields;
    while (!line.empty()) {
      auto end = line.find_first_of(" \t");
      fields.push_back(line.substr(0, end));
      line = end == std::string_view::npos ? std::string_view() : trim(line.substr(end));
    }
    if (fields.size() < 2) {
      problem(number, fmt::format("expected \"LOGIN-NAME ISLAND [state=...] [node_login=...]\", "
                                  "found {} field{}", fields.size(), fields.size() == 1 ? "" : "s"));
      continue;
    }
    std::string_view key = fields[0];
    std::string island(fields[1]);
    UserEntry entry;
    entry.island = island;
    bool attributes_ok = true;
    for (std::size_t f = 2; f < fields.size(); ++f) {
      auto eq = fields[f].find('=');
      std::string_view name = fields[f].substr(0, eq);
      std::string_view value = eq == std::string_view::npos ? "" : fields[f].substr(eq + 1);
      if (name == "state" && account_state_from(value)) {
        entry.state = *account_state_from(value);
      } else if (name == "node_login" && !value.empty()) {
        entry.node_login = std::string(value);
      } else {
        problem(number, fmt::format("\"{}\": expected state=active|disabled|moving or "
                                    "node_login=NAME", sanitize(fields[f], 60)));
        attributes_ok = false;
      }
    }
    if (!attributes_ok) continue;
    if (fields.size() > 2 && (key == "*" || key.substr(0, 2) == "*@")) {
      problem(number, "attributes are for single users, not \"*\" or \"*@domain\" rules");
      continue;
    }
    if (!known_island(island)) {
      problem(number, fmt::format("island \"{}\" is not in the config", sanitize(island)));
      continue;
    }
    if (key == "*") {
      if (directory->fallback_) problem(number, "a second default (\"*\") rule");
      else directory->fallback_ = island;
    } else if (key.size() > 2 && key.substr(0, 2) == "*@") {
      std::string domain(key.substr(2));
      if (rules.lowercase) domain = ascii_lowercase(domain);
      // Lookups take the domain after a login name's last '@': a domain
      // that no acceptable login name can end with is a mistake.
      auto probe = normalise_login("x@" + domain, rules);
      if (!probe || probe->substr(probe->rfind('@') + 1) != domain)
        problem(number, fmt::format("\"*@{}\": no login name can have this domain",
                                    sanitize(domain)));
      else if (!directory->domains_.emplace(domain, island).second)
        problem(number, fmt::format("a second rule for domain \"{}\"", sanitize(domain)));
    } else if (key.find('*') != std::string_view::npos) {
      problem(number, "wildcards are only \"*\" (default) and \"*@domain\"");
    } else {
      auto name = normalise_login(key, rules);
      if (!name) {
        problem(number, fmt::format("\"{}\" is not an acceptable login name", sanitize(key)));
      } else if (!directory->users_.emplace(*name, std::move(entry)).second) {
        problem(number, fmt::format("\"{}\" is listed twice", sanitize(*name)));
      }
    }
  }
  if (!problems.empty()) {
    problems.pop_back();
    throw config::ConfigError(problems);
  }
  return directory;
}

LookupResult StaticDirectory::find(std::string_view user) const {
  LookupResult result;
  std::string key(user);
  if (auto it = users_.find(key); it != users_.end()) {
    result.status = LookupStatus::found;
    result.entry = it->second;
    result.detail = "user";
    return result;
  }
  if (auto at = user.rfind('@'); at != std::string_view::npos) {
    if (auto it = domains_.find(std::string(user.substr(at + 1))); it != domains_.end()) {
      result.status = LookupStatus::found;
      result.entry.island = it->second;
      result.detail = "domain";
      return result;
    }
  }
  if (fallback_) {
    result.status = LookupStatus::found;
    result.entry.island = *fallback_;
    result.detail = "default";
    return result;
  }
  result.status = LookupStatus::not_found;
  result.detail = "no rule";
  return result;
}

boost::asio::awaitable<LookupResult> StaticDirectory::lookup(std::string user) {
  co_return find(user);
}

}  // namespace isthmus::director
