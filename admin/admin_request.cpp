#include "admin/admin_request.hpp"

#include <cctype>

namespace isthmus::admin {

std::optional<std::vector<std::string>> split_path(std::string_view target, std::string& query) {
  auto q = target.find('?');
  query = q == std::string_view::npos ? "" : std::string(target.substr(q + 1));
  std::string_view path = target.substr(0, q);
  std::vector<std::string> parts;
  std::string part;
  auto flush = [&] {
    if (!part.empty()) parts.push_back(std::move(part));
    part.clear();
  };
  for (std::size_t i = 0; i < path.size(); ++i) {
    char c = path[i];
    if (c == '/') {
      flush();
    } else if (c == '%') {
      if (i + 2 >= path.size() || !std::isxdigit(static_cast<unsigned char>(path[i + 1])) ||
          !std::isxdigit(static_cast<unsigned char>(path[i + 2])))
        return std::nullopt;
      part += static_cast<char>(std::stoi(std::string(path.substr(i + 1, 2)), nullptr, 16));
      i += 2;
    } else {
      part += c;
    }
  }
  flush();
  return parts;
}

std::string query_value(const std::string& query, std::string_view key) {
  std::size_t start = 0;
  while (start <= query.size()) {
    auto end = query.find('&', start);
    if (end == std::string::npos) end = query.size();
    std::string_view item(query.data() + start, end - start);
    auto eq = item.find('=');
    if (item.substr(0, eq) == key && eq != std::string_view::npos) {
      std::string value;
      auto raw = item.substr(eq + 1);
      for (std::size_t i = 0; i < raw.size(); ++i) {
        if (raw[i] == '+')
          value += ' ';
        else if (raw[i] == '%' && i + 2 < raw.size() &&
                 std::isxdigit(static_cast<unsigned char>(raw[i + 1])) &&
                 std::isxdigit(static_cast<unsigned char>(raw[i + 2]))) {
          value += static_cast<char>(std::stoi(std::string(raw.substr(i + 1, 2)), nullptr, 16));
          i += 2;
        } else {
          value += raw[i];
        }
      }
      return value;
    }
    start = end + 1;
  }
  return "";
}

std::string AdminRequest::text(const char* key) const {
  auto it = body.find(key);
  return it != body.end() && it->is_string() ? it->get<std::string>() : "";
}

AdminRequest route_admin_request(bool get, bool post, std::string_view target,
                                 std::string_view body) {
  AdminRequest r;
  auto parts = split_path(target, r.query);
  if (!parts) {
    r.action = AdminAction::malformed_path;
    return r;
  }
  r.parts = std::move(*parts);
  const auto& p = r.parts;
  if (p.size() == 1 && p[0] == "metrics" && get) {
    r.action = AdminAction::metrics;
    return r;
  }
  if (p.empty() || p[0] != "v1") {
    r.action = AdminAction::not_v1;
    return r;
  }
  if (post && !body.empty()) {
    r.body = nlohmann::json::parse(body, nullptr, false);
    if (r.body.is_discarded() || !r.body.is_object()) {
      r.body = nlohmann::json::object();
      r.action = AdminAction::bad_body;
      return r;
    }
  }
  const std::string what = p.size() > 1 ? p[1] : "";
  using A = AdminAction;
  if (get && p.size() == 2 && what == "status")
    r.action = A::status;
  else if (get && p.size() == 2 && what == "nodes")
    r.action = A::nodes;
  else if (get && p.size() == 2 && what == "islands")
    r.action = A::islands;
  else if (get && p.size() == 2 && what == "sessions")
    r.action = A::sessions;
  else if (get && p.size() == 3 && what == "users")
    r.action = A::user;
  else if (post && p.size() == 4 && what == "users" && p[3] == "account")
    r.action = A::account;
  else if (post && p.size() == 2 && what == "kick")
    r.action = A::kick;
  else if (post && p.size() == 4 && what == "nodes" && p[3] == "drain")
    r.action = A::drain;
  else if (post && p.size() == 4 && what == "nodes" && p[3] == "undrain")
    r.action = A::undrain;
  else if (post && p.size() == 4 && what == "islands" && p[3] == "promote")
    r.action = A::promote;
  else if (post && p.size() == 2 && what == "reload")
    r.action = A::reload;
  else if (post && p.size() == 3 && what == "cache" && p[2] == "invalidate")
    r.action = A::cache_invalidate;
  else if (get && p.size() == 2 && what == "moves")
    r.action = A::moves;
  else if (post && p.size() == 2 && what == "moves")
    r.action = A::move_start;
  else if (get && p.size() == 3 && what == "moves")
    r.action = A::move;
  else if (post && p.size() == 4 && what == "moves" && p[3] == "abort")
    r.action = A::move_abort;
  else if (post && p.size() == 4 && what == "moves" && p[3] == "resume")
    r.action = A::move_resume;
  else
    r.action = A::not_found;
  return r;
}

}  // namespace isthmus::admin
