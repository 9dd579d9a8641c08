#include "ctl/instances.hpp"

#include "common/strings.hpp"
#include "ctl/text.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <set>

#include <fcntl.h>
#include <unistd.h>

namespace isthmus::ctl {

namespace {

const std::set<std::string> kConfigKeys = {"instances", "timeout", "move"};  // "move": isthmus-move
const std::set<std::string> kInstanceKeys = {"name", "socket", "url", "token_file", "timeout"};

// The whole of a small file (the config, a token), or the errno of the
// failure: EISDIR for a folder, EFBIG past 16 MiB (not a config: /dev/zero).
std::optional<std::string> read_file(const std::string& path, int& error) {
  constexpr std::size_t kMaxFile = 16 * 1024 * 1024;
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    error = errno;
    return std::nullopt;
  }
  std::string text;
  char buffer[8192];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 || text.size() + static_cast<std::size_t>(n) > kMaxFile) {
      error = n < 0 ? errno : EFBIG;
      ::close(fd);
      return std::nullopt;
    }
    if (n == 0) break;
    text.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return text;
}

std::string describe_errno(int error) { return std::strerror(error); }

std::string unknown_keys(const Json& object, const std::set<std::string>& known) {
  std::set<std::string> unknown;
  for (const auto& [key, value] : object.items())
    if (!known.contains(key)) unknown.insert(key);
  std::string out;
  for (const auto& key : unknown) out += (out.empty() ? "" : ", ") + repr(key);
  return out;
}

struct Configured {
  Instance instance;
  std::optional<double> timeout;
};

struct ConfigFile {
  std::vector<Configured> instances;
  std::optional<double> timeout;
};

ConfigFile load_config(const std::string& path, bool must_exist) {
  int error = 0;
  auto text = read_file(path, error);
  if (!text) {
    if (error == ENOENT) {
      if (!must_exist) return {};
      throw UsageError(fmt::format(
          "config file {} does not exist (name instances with --instance, or see "
          "docs/isthmusctl.md for the file)",
          path));
    }
    throw UsageError(fmt::format("cannot read config file {}: {}", path, describe_errno(error)));
  }
  Json conf;
  try {
    conf = Json::parse(*text);
  } catch (const Json::parse_error& e) {
    // "[json.exception.parse_error.101] parse error at line 1, column 17: ..."
    std::string what = e.what();
    if (auto end = what.find("] "); what.starts_with("[json.exception") && end != std::string::npos)
      what.erase(0, end + 2);
    throw UsageError(fmt::format("{}: not valid JSON: {}", path, what));
  }
  if (!conf.is_object())
    throw UsageError(fmt::format("{}: expected a JSON object with \"instances\"", path));
  if (auto unknown = unknown_keys(conf, kConfigKeys); !unknown.empty())
    throw UsageError(fmt::format("{}: unknown key {} (known: instances, timeout, move)", path,
                                 unknown));
  ConfigFile file;
  if (conf.contains("timeout"))
    file.timeout = parse_duration(conf["timeout"], fmt::format("{}: timeout", path));
  Json raw = conf.contains("instances") ? conf["instances"] : Json::array();
  if (!raw.is_array()) throw UsageError(fmt::format("{}: \"instances\" must be a list", path));
  std::error_code absolute_error;
  auto base_dir = std::filesystem::absolute(path, absolute_error).parent_path();
  std::set<std::string> names;
  std::size_t index = 0;
  for (const auto& item : raw) {
    std::string where = fmt::format("{}: instance {}", path, ++index);
    if (!item.is_object())
      throw UsageError(fmt::format(
          "{}: expected an object like {{\"name\": \"i1\", \"socket\": \"...\"}}", where));
    if (auto unknown = unknown_keys(item, kInstanceKeys); !unknown.empty())
      throw UsageError(fmt::format(
          "{}: unknown key {} (known: name, socket, url, token_file, timeout)", where, unknown));
    if (!item.contains("name") || !item["name"].is_string() || item["name"].get<std::string>().empty())
      throw UsageError(fmt::format("{}: \"name\" (a string) is required", where));
    std::string name = item["name"].get<std::string>();
    where = fmt::format("{}: instance {}", path, name);
    if (!names.insert(name).second)
      throw UsageError(fmt::format("{}: the name is used twice", where));
    auto present = [&](const char* key) { return item.contains(key) && !item[key].is_null(); };
    if (present("socket") == present("url"))
      throw UsageError(fmt::format("{}: give exactly one of \"socket\" and \"url\"", where));
    std::map<std::string, std::string> strings;
    for (const char* key : {"socket", "url", "token_file"}) {
      if (!present(key)) continue;
      if (!item[key].is_string() || item[key].get<std::string>().empty())
        throw UsageError(fmt::format("{}: \"{}\" must be a non-empty string", where, key));
      strings[key] = item[key].get<std::string>();
    }
    std::optional<std::string> token_file;
    if (strings.contains("token_file")) {
      std::filesystem::path token_path(strings["token_file"]);
      token_file = token_path.is_absolute() ? token_path.string() : (base_dir / token_path).string();
    }
    std::optional<double> timeout;
    if (item.contains("timeout"))
      timeout = parse_duration(item["timeout"], fmt::format("{}: timeout", where));
    if (strings.contains("socket"))
      file.instances.push_back({Instance::with_socket(name, strings["socket"]), timeout});
    else
      file.instances.push_back({Instance::with_url(name, strings["url"], token_file), timeout});
  }
  return file;
}

}  // namespace

Instance Instance::with_socket(std::string name, std::string path) {
  Instance inst;
  inst.name = std::move(name);
  inst.socket_path = std::move(path);
  return inst;
}

Instance Instance::with_url(std::string name, std::string url,
                            std::optional<std::string> token_file) {
  Instance inst;
  inst.name = std::move(name);
  inst.url = url;
  inst.token_file = std::move(token_file);
  auto bad = [&] {
    return UsageError(fmt::format("instance {}: url must look like http://HOST:PORT, got {}",
                                  inst.name, repr(url)));
  };
  auto scheme_end = url.find("://");
  if (scheme_end == std::string::npos) throw bad();
  inst.scheme = ascii_lowercase(std::string_view(url).substr(0, scheme_end));
  if (inst.scheme != "http" && inst.scheme != "https") throw bad();
  std::string_view rest = std::string_view(url).substr(scheme_end + 3);
  auto authority_end = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, authority_end);
  std::string_view tail = authority_end == std::string_view::npos ? "" : rest.substr(authority_end);
  if (tail.find_first_of("?#") != std::string_view::npos ||
      authority.find('@') != std::string_view::npos)
    throw UsageError(fmt::format(
        "instance {}: url {}: no query, fragment or user:password please (the token goes in "
        "token_file)",
        inst.name, repr(url)));
  std::string_view host = authority;
  std::string_view port;
  if (authority.starts_with("[")) {  // [IPv6]:port
    auto close = authority.find(']');
    if (close == std::string_view::npos) throw bad();
    host = authority.substr(1, close - 1);
    std::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') throw bad();
      port = after.substr(1);
    }
  } else if (auto colon = authority.rfind(':'); colon != std::string_view::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty()) throw bad();
  inst.host = ascii_lowercase(host);
  unsigned number = 0;
  if (!port.empty()) {
    bool digits = port.size() <= 5 && port.find_first_not_of("0123456789") == std::string_view::npos;
    if (digits) number = static_cast<unsigned>(std::stoul(std::string(port)));
    if (!digits || number > 65535)
      throw UsageError(fmt::format("instance {}: url {}: bad port", inst.name, repr(url)));
  }
  inst.port = number != 0 ? std::to_string(number) : (inst.scheme == "https" ? "443" : "80");
  std::string_view path = tail;
  while (path.ends_with("/")) path.remove_suffix(1);
  inst.prefix = std::string(path);
  return inst;
}

std::string Instance::label() const {
  if (name == address()) return clean(name);
  return fmt::format("{} ({})", clean(name), clean(address()));
}

void Instance::load_token() {
  if (!url || !token_file) return;
  int error = 0;
  auto text = read_file(*token_file, error);
  if (!text)
    throw UsageError(fmt::format("instance {}: cannot read token_file {}: {}", name, *token_file,
                                 describe_errno(error)));
  std::string_view value = trim(*text);
  if (!valid_utf8(*text))
    throw UsageError(fmt::format("instance {}: token_file {} is not text", name, *token_file));
  if (value.empty())
    throw UsageError(fmt::format("instance {}: token_file {} is empty", name, *token_file));
  for (char c : value) {
    auto b = static_cast<unsigned char>(c);
    if (b <= 0x20 || b >= 0x7f)
      throw UsageError(fmt::format(
          "instance {}: token_file {} must hold the token alone on one line", name, *token_file));
  }
  token = std::string(value);
}

std::vector<Instance> select_instances(const Selection& selection,
                                       const std::string& environment_config) {
  std::string config_path = selection.config && !selection.config->empty() ? *selection.config
                            : !environment_config.empty()                  ? environment_config
                                                                           : kDefaultConfig;
  bool explicit_config = selection.config && !selection.config->empty();
  auto file = load_config(config_path, explicit_config || selection.instances.empty());
  std::optional<double> cli_timeout;
  if (selection.timeout) cli_timeout = parse_duration(Json(*selection.timeout), "--timeout");
  double timeout = cli_timeout ? *cli_timeout : file.timeout ? *file.timeout : kDefaultTimeout;
  for (auto& configured : file.instances)
    configured.instance.timeout = cli_timeout          ? *cli_timeout
                                  : configured.timeout ? *configured.timeout
                                                       : timeout;

  std::vector<Instance> chosen;
  if (selection.instances.empty()) {
    for (const auto& configured : file.instances) chosen.push_back(configured.instance);
    if (chosen.empty())
      throw UsageError(fmt::format("{} lists no instances (add some, or use --instance)",
                                   config_path));
  }
  for (const auto& spec : selection.instances) {
    std::error_code exists_error;
    const Instance* known = nullptr;
    for (const auto& configured : file.instances)
      if (configured.instance.name == spec) known = &configured.instance;
    if (known == nullptr)  // a configured URL or socket: keep its name and token
      for (const auto& configured : file.instances)
        if (configured.instance.address() == spec) known = &configured.instance;
    if (known != nullptr) {
      chosen.push_back(*known);
    } else if (auto scheme_end = spec.find("://"); scheme_end != std::string::npos) {
      auto scheme = ascii_lowercase(std::string_view(spec).substr(0, scheme_end));
      if (scheme != "http" && scheme != "https")
        throw UsageError(fmt::format(
            "--instance {}: only http:// and https:// URLs (or a unix socket path)", spec));
      chosen.push_back(Instance::with_url(spec, spec, selection.token_file));
      chosen.back().timeout = timeout;
    } else if (spec.find('/') != std::string::npos || std::filesystem::exists(spec, exists_error)) {
      chosen.push_back(Instance::with_socket(spec, spec));
      chosen.back().timeout = timeout;
    } else {
      std::string names;
      for (const auto& configured : file.instances)
        names += (names.empty() ? "" : ", ") + configured.instance.name;
      std::string listed = names.empty() ? fmt::format("{} names none", config_path)
                                         : fmt::format("the config names {}", names);
      throw UsageError(fmt::format(
          "--instance {}: not an instance of the config ({}), nor a socket path (write ./{} for a "
          "file here), nor a URL",
          spec, listed, spec));
    }
  }
  std::vector<Instance> unique;
  std::set<std::string> seen;
  for (auto& inst : chosen)
    if (seen.insert(inst.address()).second) unique.push_back(std::move(inst));
  for (auto& inst : unique) inst.load_token();
  return unique;
}

}  // namespace isthmus::ctl
