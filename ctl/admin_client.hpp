#pragma once
// HTTP/1.1 requests to the admin API of Isthmus instances: over a unix
// socket, or TCP (optionally TLS) with the bearer token. One Asio
// io_context per batch, one coroutine per instance, so several instances
// are asked at once; each request is bounded by its instance's timeout
// (connect, send and answer together) and its answer by kMaxAnswerBytes.
// What an instance answers is untrusted: nothing it sends can crash or hang
// isthmusctl.

#include "ctl/instances.hpp"
#include "ctl/text.hpp"

#include <optional>
#include <string>
#include <vector>

namespace isthmus::ctl {

inline constexpr const char* kVersion = "0.1.0";
inline constexpr std::size_t kMaxAnswerBytes = 32 * 1024 * 1024;

// How a request went; each kind but ok maps to one exit code (commands.cpp).
enum class ReplyKind { ok, unreachable, server, auth, refused, not_found };

struct AdminRequest {
  std::string method;            // "GET" or "POST"
  std::string path;              // "/v1/nodes", percent-encoded already
  std::optional<Json> body;      // sent as application/json
  bool want_json = true;         // false: the answer is text (/metrics)
  bool any_json = false;         // a JSON array is an answer too (not only an object)
};

// One instance's answer to one request.
struct Reply {
  const Instance* instance = nullptr;
  std::optional<int> status;
  Json body;                     // the JSON object, or the text (want_json false); for an
                                 // error, the JSON object the instance answered, if any
  std::string error;             // the whole message for stderr
  ReplyKind kind = ReplyKind::ok;
  std::optional<std::string> message;  // the server's own "error" text, if any

  bool ok() const { return kind == ReplyKind::ok; }
  // {"instance", "address", "ok", "http_status", "response", "error"}
  Json as_json() const;
};

// The same request to one instance; never throws for network or HTTP
// trouble.
Reply ask(const Instance& instance, const AdminRequest& request);

// The same request to every instance at once; replies in instance order.
std::vector<Reply> ask_all(const std::vector<Instance>& instances, const AdminRequest& request);
std::vector<Reply> ask_all(const std::vector<const Instance*>& instances,
                           const AdminRequest& request);

// The reply an HTTP answer makes (status, reason phrase, body): pure, for
// tests and for ask().
Reply classify_answer(const Instance& instance, const AdminRequest& request, int status,
                      std::string_view reason, std::string_view raw_body);

}  // namespace isthmus::ctl
