#pragma once
// The admin API's routing as a pure function (docs/operations.md): which
// action a request names, with its path parts, query and JSON body. The
// server (admin_server.cpp) runs the action; tests and the fuzz target
// (tests/fuzz/fuzz_admin_request.cpp) call this without sockets.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::admin {

enum class AdminAction : std::uint8_t {
  metrics,           // GET /metrics
  status,            // GET /v1/status
  nodes,             // GET /v1/nodes
  islands,           // GET /v1/islands
  sessions,          // GET /v1/sessions?user=&node=&island=
  user,              // GET /v1/users/NAME (parts[2])
  account,           // POST /v1/users/NAME/account {"island": ..., "state": ...} (parts[2])
  kick,              // POST /v1/kick {"user"|"node"|"island": ...}
  drain,             // POST /v1/nodes/NODE/drain (parts[2])
  undrain,           // POST /v1/nodes/NODE/undrain (parts[2])
  promote,           // POST /v1/islands/ISLAND/promote {"node": ...} (parts[2])
  reload,            // POST /v1/reload
  cache_invalidate,  // POST /v1/cache/invalidate {"user": ...}
  moves,             // GET /v1/moves
  move_start,        // POST /v1/moves {"user": ..., "to": ..., "mover": ...}
  move,              // GET /v1/moves/ID (parts[2])
  move_abort,        // POST /v1/moves/ID/abort (parts[2])
  move_resume,       // POST /v1/moves/ID/resume (parts[2])
  malformed_path,    // 400: a bad percent escape
  not_v1,            // 404: not under /v1 (nor /metrics)
  bad_body,          // 400: a POST body that is not a JSON object
  not_found,         // 404: no such resource under /v1
};

struct AdminRequest {
  AdminAction action = AdminAction::not_found;
  std::vector<std::string> parts;                  // the path, split at '/', each percent-decoded
  std::string query;                               // after '?', raw
  nlohmann::json body = nlohmann::json::object();  // POST only; always an object

  // A string member of the body, or "".
  std::string text(const char* key) const;
};

// `get`/`post`: the request's method. `body` is parsed only for POST.
AdminRequest route_admin_request(bool get, bool post, std::string_view target,
                                 std::string_view body);

// "/v1/nodes/a-left/drain" -> {"v1", "nodes", "a-left", "drain"}, each
// percent-decoded; nullopt for a malformed escape.
std::optional<std::vector<std::string>> split_path(std::string_view target, std::string& query);

// The value of `key` in a query string (percent-decoded; '+' is a space).
std::string query_value(const std::string& query, std::string_view key);

}  // namespace isthmus::admin
