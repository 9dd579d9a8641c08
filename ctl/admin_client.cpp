#include "ctl/admin_client.hpp"

#include "common/json_nesting.hpp"

#include "common/deadline.hpp"
#include "common/strings.hpp"
#include "common/transport.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/asio/ssl/error.hpp>
#include <boost/asio/write.hpp>
#include <boost/beast/http.hpp>
#include <fmt/format.h>

#include <array>
#include <chrono>
#include <sstream>

#include <sys/un.h>

namespace isthmus::ctl {

namespace asio = boost::asio;
namespace http = boost::beast::http;
using boost::system::error_code;

namespace {

// The admin socket, with the read_some/write_all of Transport (which
// carries the TCP and TLS connections), so one exchange() serves both.
class UnixConnection {
 public:
  explicit UnixConnection(asio::local::stream_protocol::socket socket)
      : socket_(std::move(socket)) {}

  asio::awaitable<std::tuple<error_code, std::size_t>> read_some(asio::mutable_buffer buffer,
                                                                 Deadline deadline) {
    auto read = [this, buffer](auto token) { return socket_.async_read_some(buffer, token); };
    co_return co_await until(deadline, read);
  }

  asio::awaitable<std::tuple<error_code, std::size_t>> write_all(asio::const_buffer buffer,
                                                                 Deadline deadline) {
    auto write = [this, buffer](auto token) { return asio::async_write(socket_, buffer, token); };
    co_return co_await until(deadline, write);
  }

 private:
  asio::local::stream_protocol::socket socket_;
};

// What came back at the HTTP level, or why nothing usable did.
struct Answer {
  error_code error;
  int status = 0;
  std::string reason;
  std::string body;
};

// Sends `wire` (a whole request), then reads one response, bounded by
// `deadline` and by kMaxAnswerBytes.
template <typename Connection>
asio::awaitable<Answer> exchange(Connection& connection, const std::string& wire,
                                 Deadline deadline) {
  Answer answer;
  auto [write_error, written] = co_await connection.write_all(asio::buffer(wire), deadline);
  if (write_error) {
    answer.error = write_error;
    co_return answer;
  }
  http::response_parser<http::string_body> parser;
  parser.body_limit(kMaxAnswerBytes);
  parser.header_limit(64 * 1024);
  parser.eager(true);
  std::string pending;  // read, not yet taken by the parser
  std::array<char, 16 * 1024> chunk{};
  while (!parser.is_done()) {
    auto [read_error, n] = co_await connection.read_some(asio::buffer(chunk), deadline);
    if (read_error == asio::error::eof || read_error == asio::ssl::error::stream_truncated) {
      if (!parser.got_some()) {
        answer.error = http::error::end_of_stream;
        co_return answer;
      }
      error_code eof_error;
      parser.put_eof(eof_error);  // fine for a body that ends with the connection
      if (eof_error) {
        answer.error = eof_error;
        co_return answer;
      }
      break;
    }
    if (read_error) {
      answer.error = read_error;
      co_return answer;
    }
    pending.append(chunk.data(), n);
    if (pending.size() > kMaxAnswerBytes + 64 * 1024) {
      answer.error = http::error::body_limit;
      co_return answer;
    }
    while (!pending.empty() && !parser.is_done()) {
      error_code parse_error;
      std::size_t used = parser.put(asio::buffer(pending), parse_error);
      pending.erase(0, used);
      if (parse_error == http::error::need_more) break;
      if (parse_error) {
        answer.error = parse_error;
        co_return answer;
      }
      if (used == 0) break;
    }
  }
  auto& response = parser.get();
  answer.status = static_cast<int>(response.result_int());
  answer.reason = std::string(response.reason());
  answer.body = std::move(response.body());
  co_return answer;
}

std::string request_wire(const Instance& inst, const AdminRequest& request) {
  http::request<http::string_body> message;
  message.method_string(request.method);
  message.target(inst.prefix + request.path);
  message.version(11);
  if (inst.is_unix()) {
    message.set(http::field::host, "localhost");
  } else {
    bool ipv6 = inst.host.find(':') != std::string::npos;
    std::string host = ipv6 ? "[" + inst.host + "]" : inst.host;
    bool default_port = inst.port == (inst.scheme == "https" ? "443" : "80");
    message.set(http::field::host, default_port ? host : host + ":" + inst.port);
  }
  message.set(http::field::accept, request.want_json ? "application/json" : "text/plain");
  message.set(http::field::user_agent, fmt::format("isthmusctl/{}", kVersion));
  message.set(http::field::connection, "close");
  if (request.body) {
    message.set(http::field::content_type, "application/json");
    message.body() = request.body->dump(-1, ' ', false, Json::error_handler_t::replace);
  }
  if (inst.url && inst.authorization)
    message.set(http::field::authorization, *inst.authorization);
  else if (inst.url && inst.token)
    message.set(http::field::authorization, "Bearer " + *inst.token);
  message.prepare_payload();
  if (request.method == "POST" && !request.body) message.set(http::field::content_length, "0");
  std::ostringstream wire;
  wire << message;
  return wire.str();
}

// The message for stderr when the request got no HTTP answer.
std::string transport_error(const Instance& inst, const error_code& ec) {
  bool unix_socket = inst.is_unix();
  if (ec == asio::error::timed_out) return fmt::format("no answer within {}", show_duration(inst.timeout));
  if (ec == asio::error::connection_refused)
    return unix_socket ? "connection refused (is isthmus running?)" : "connection refused";
  if (ec == boost::system::errc::no_such_file_or_directory && unix_socket)
    return "no such socket (is isthmus running, with its admin API on this socket?)";
  if (ec == boost::system::errc::permission_denied)
    return unix_socket ? "permission denied (run isthmusctl as a user allowed to use the socket)"
                       : "permission denied";
  if (ec == http::error::end_of_stream || ec == asio::error::eof ||
      ec == asio::ssl::error::stream_truncated)
    return "closed the connection without answering";
  if (ec == http::error::body_limit || ec == http::error::header_limit)
    return fmt::format("answered with more than {} MiB", kMaxAnswerBytes / (1024 * 1024));
  if (ec.category() == http::make_error_code(http::error::bad_version).category())
    return "did not answer HTTP: " + ec.message();
  return ascii_lowercase(ec.message());
}

// getaddrinfo's own words (gai_strerror), which Asio's names replace.
std::string resolver_error(const error_code& ec) {
  if (ec == asio::error::host_not_found) return "Name or service not known";
  if (ec == asio::error::host_not_found_try_again) return "Temporary failure in name resolution";
  if (ec == asio::error::no_data) return "No address associated with hostname";
  if (ec == asio::error::service_not_found) return "Servname not supported for ai_socktype";
  return ec.message();
}

Reply failed(const Instance& inst, std::string error) {
  Reply reply;
  reply.instance = &inst;
  reply.error = std::move(error);
  reply.kind = ReplyKind::unreachable;
  return reply;
}

asio::awaitable<Reply> fetch(const Instance& inst, const AdminRequest& request) {
  Deadline deadline = Deadline::after(std::chrono::duration_cast<Clock::duration>(
      std::chrono::duration<double>(inst.timeout)));
  std::string wire = request_wire(inst, request);
  auto executor = co_await asio::this_coro::executor;
  Answer answer;
  if (inst.is_unix()) {
    asio::local::stream_protocol::socket socket(executor);
    asio::local::stream_protocol::endpoint endpoint;
    if (inst.socket_path->size() >= sizeof(sockaddr_un::sun_path))
      co_return failed(inst, "the socket path is too long for a unix socket");
    endpoint = asio::local::stream_protocol::endpoint(*inst.socket_path);
    auto connect = [&socket, &endpoint](auto token) { return socket.async_connect(endpoint, token); };
    auto [connect_error] = co_await until(deadline, connect);
    if (connect_error) co_return failed(inst, transport_error(inst, connect_error));
    UnixConnection connection(std::move(socket));
    answer = co_await exchange(connection, wire, deadline);
  } else {
    asio::ip::tcp::resolver resolver(executor);
    auto resolve = [&resolver, &inst](auto token) {
      return resolver.async_resolve(inst.host, inst.port, token);
    };
    auto [resolve_error, endpoints] = co_await until(deadline, resolve);
    if (resolve_error == asio::error::timed_out)
      co_return failed(inst, transport_error(inst, resolve_error));
    if (resolve_error)
      co_return failed(inst, fmt::format("cannot resolve {}: {}", clean(inst.host),
                                         resolver_error(resolve_error)));
    asio::ip::tcp::socket socket(executor);
    auto connect = [&socket, &endpoints](auto token) {
      return asio::async_connect(socket, endpoints, token);
    };
    auto [connect_error, endpoint] = co_await until(deadline, connect);
    if (connect_error) co_return failed(inst, transport_error(inst, connect_error));
    Transport connection(std::move(socket));
    if (inst.scheme == "https") {
      asio::ssl::context context(asio::ssl::context::tls_client);
      boost::system::error_code ca_error;
      if (inst.ca_file.empty()) context.set_default_verify_paths(ca_error);
      else context.load_verify_file(inst.ca_file, ca_error);
      if (ca_error)
        co_return failed(inst, fmt::format("TLS: cannot load the CAs{}: {}",
                                           inst.ca_file.empty() ? "" : " of " + inst.ca_file,
                                           ca_error.message()));
      auto tls_error =
          co_await connection.start_tls_as_client(context, inst.host, inst.verify, deadline);
      if (tls_error == asio::error::timed_out)
        co_return failed(inst, transport_error(inst, tls_error));
      if (tls_error) co_return failed(inst, "TLS: " + connection.tls_failure_reason(tls_error));
    }
    answer = co_await exchange(connection, wire, deadline);
  }
  if (answer.error) co_return failed(inst, transport_error(inst, answer.error));
  co_return classify_answer(inst, request, answer.status, answer.reason, answer.body);
}

// The JSON in `text`, or a discarded value when it is not JSON or nests
// deeper than any answer of ours (printing it back must not recurse without
// bound).
Json parse_answer(std::string_view text) {
  constexpr int kMaxDepth = 100;
  // Counted first, outside strings: the parser's callback sees a level only
  // after the parser has grown its stacks for it (a 32 MiB "[[[[..." would
  // cost hundreds of MB before being refused).
  if (!json_nesting_within(text, kMaxDepth)) return Json(Json::value_t::discarded);
  bool too_deep = false;
  Json::parser_callback_t watch = [&too_deep](int depth, Json::parse_event_t, Json&) {
    too_deep |= depth > kMaxDepth;
    return !too_deep;
  };
  Json parsed = Json::parse(text.begin(), text.end(), watch, false);
  if (too_deep) return Json(Json::value_t::discarded);
  return parsed;
}

// Python's " ".join(text.split())[:200]: whitespace collapsed, cut at 200
// characters.
std::string snippet_of(std::string_view text) {
  std::string out;
  std::size_t characters = 0;
  bool space = false;
  for (char c : text) {
    bool blank = c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
    if (blank) {
      space = !out.empty();
      continue;
    }
    bool starts_character = (static_cast<unsigned char>(c) & 0xC0) != 0x80;
    if (starts_character && characters + (space ? 1 : 0) >= 200) break;
    if (space) {
      out += ' ';
      ++characters;
      space = false;
    }
    out += c;
    characters += starts_character;
  }
  return out;
}

}  // namespace

Json Reply::as_json() const {
  Json out;
  out["instance"] = instance->name;
  out["address"] = instance->address();
  out["ok"] = ok();
  out["http_status"] = status ? Json(*status) : Json();
  out["response"] = ok() ? body : Json();
  out["error"] = ok() ? Json() : Json(error);
  return out;
}

Reply classify_answer(const Instance& inst, const AdminRequest& request, int status,
                      std::string_view reason, std::string_view raw_body) {
  // Read as UTF-8, a broken sequence as U+FFFD (JSON must be UTF-8, and a
  // name with a stray byte still shows).
  std::string repaired;
  std::string_view body = raw_body;
  if (!valid_utf8(raw_body)) {
    repaired = repair_utf8(raw_body);
    body = repaired;
  }
  Reply reply;
  reply.instance = &inst;
  reply.status = status;
  if (status >= 200 && status < 300) {
    if (!request.want_json) {
      reply.body = std::string(body);
      return reply;
    }
    Json parsed = parse_answer(body);
    if (parsed.is_discarded()) {
      reply.kind = ReplyKind::server;
      reply.error = fmt::format("answered HTTP {} with a body that is not JSON", status);
    } else if (!parsed.is_object() && !(request.any_json && parsed.is_array())) {
      reply.kind = ReplyKind::server;
      reply.error = fmt::format("answered HTTP {} with JSON that is not an object", status);
    } else {
      reply.body = std::move(parsed);
    }
    return reply;
  }
  std::string message;
  Json parsed = parse_answer(body);
  if (parsed.is_object() && parsed.contains("error") && parsed["error"].is_string())
    message = std::string(trim(parsed["error"].get_ref<const std::string&>()));
  if (parsed.is_object()) reply.body = parsed;  // e.g. the "id" of a 409 of POST /v1/moves
  if (message.empty()) {
    std::string snippet = snippet_of(body);
    message = fmt::format("HTTP {} {}", status, reason) + (snippet.empty() ? "" : ": " + snippet);
  }
  if (status == 401) {
    std::string hint = !inst.url          ? "the admin socket should not need a token"
                       : !inst.token      ? "no token was sent: set token_file for this instance, "
                                            "or use --token-file"
                                          : fmt::format("check the token in {}", *inst.token_file);
    reply.kind = ReplyKind::auth;
    reply.error = fmt::format("authentication failed: {} ({})", message, hint);
    reply.message = message;
  } else if (status == 404) {
    reply.kind = ReplyKind::not_found;
    reply.error = "not found: " + message;
    reply.message = message;
  } else if (status >= 400 && status < 500) {
    reply.kind = ReplyKind::refused;
    reply.error = fmt::format("refused (HTTP {}): {}", status, message);
    reply.message = message;
  } else if (status >= 500) {
    reply.kind = ReplyKind::server;
    reply.error = fmt::format("server error (HTTP {}): {}", status, message);
    reply.message = message;
  } else {
    reply.kind = ReplyKind::server;
    reply.error = fmt::format("unexpected answer HTTP {} {}", status, reason);
  }
  return reply;
}

std::vector<Reply> ask_all(const std::vector<const Instance*>& instances,
                            const AdminRequest& request) {
  asio::io_context context;
  std::vector<Reply> replies(instances.size());
  std::size_t pending = instances.size();
  for (std::size_t i = 0; i < instances.size(); ++i) {
    const Instance& inst = *instances[i];
    auto done = [&replies, &inst, &pending, &context, i](std::exception_ptr error, Reply reply) {
      // The deadline wheel's coarse timer (common/deadline.hpp) would keep
      // run() going until its next tick: stop once every answer is in.
      if (--pending == 0) context.stop();
      if (!error) {
        replies[i] = std::move(reply);
        return;
      }
      try {
        std::rethrow_exception(error);
      } catch (const std::exception& e) {
        replies[i] = failed(inst, fmt::format("cannot send the request: {}", e.what()));
      } catch (...) {
        replies[i] = failed(inst, "cannot send the request");
      }
    };
    asio::co_spawn(context, fetch(inst, request), done);
  }
  context.run();
  return replies;
}

std::vector<Reply> ask_all(const std::vector<Instance>& instances, const AdminRequest& request) {
  std::vector<const Instance*> each;
  for (const auto& inst : instances) each.push_back(&inst);
  return ask_all(each, request);
}

Reply ask(const Instance& instance, const AdminRequest& request) {
  return std::move(ask_all(std::vector<const Instance*>{&instance}, request).front());
}

}  // namespace isthmus::ctl
