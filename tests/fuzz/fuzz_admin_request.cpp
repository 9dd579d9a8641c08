// The admin API's front: raw HTTP bytes through Beast's request parser with
// the server's limits, then the routing and JSON bodies
// (admin/admin_request: route_admin_request, split_path, query_value).
//
// Invariants: routing is a function of method, target and body (the same
// request routes the same way again); an action that names a resource has
// exactly the path parts it needs; a POST body that routes is a JSON object;
// the path parts, percent-encoded again, route to the same action and parts;
// a query value, percent-encoded again, decodes to itself.

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "admin/admin_request.hpp"
#include "fuzz_check.hpp"

namespace beast = boost::beast;
namespace http = beast::http;
using namespace isthmus::admin;
using isthmus::fuzz::as_view;

namespace {

std::string percent_encode(std::string_view raw, bool plus_for_space) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : raw) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out += static_cast<char>(c);
    } else if (c == ' ' && plus_for_space) {
      out += '+';
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

std::size_t parts_needed(AdminAction a) {
  switch (a) {
    case AdminAction::metrics:
      return 1;
    case AdminAction::status:
    case AdminAction::nodes:
    case AdminAction::islands:
    case AdminAction::sessions:
    case AdminAction::kick:
    case AdminAction::reload:
      return 2;
    case AdminAction::user:
    case AdminAction::cache_invalidate:
      return 3;
    case AdminAction::drain:
    case AdminAction::undrain:
    case AdminAction::promote:
      return 4;
    default:
      return 0;
  }
}

void check_route(bool get, bool post, std::string_view target, std::string_view body) {
  const AdminRequest r = route_admin_request(get, post, target, body);
  const AdminRequest again = route_admin_request(get, post, target, body);
  FUZZ_CHECK(r.action == again.action && r.parts == again.parts && r.query == again.query &&
             r.body == again.body);
  FUZZ_CHECK(r.body.is_object());
  if (!post) FUZZ_CHECK(r.body.empty());
  for (const auto& part : r.parts) FUZZ_CHECK(!part.empty());
  if (const std::size_t n = parts_needed(r.action)) {
    FUZZ_CHECK(r.parts.size() == n);
    FUZZ_CHECK(get != post);
  }
  if (r.action == AdminAction::malformed_path) return;
  std::string encoded;
  for (const auto& part : r.parts) encoded += "/" + percent_encode(part, false);
  if (target.find('?') != std::string_view::npos) encoded += "?" + r.query;
  const AdminRequest re = route_admin_request(get, post, encoded, body);
  FUZZ_CHECK(re.action == r.action && re.parts == r.parts && re.query == r.query);
  for (const char* key : {"user", "node", "island"}) {
    const std::string value = query_value(r.query, key);
    const std::string q = std::string(key) + "=" + percent_encode(value, true);
    FUZZ_CHECK(query_value(q, key) == value);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view input = as_view(data, size);
  // As the server reads it: Beast's parser with the server's limits.
  http::request_parser<http::string_body> parser;
  parser.body_limit(64 * 1024);
  parser.header_limit(16 * 1024);
  parser.eager(true);
  beast::error_code ec;
  std::size_t used = parser.put(boost::asio::buffer(input.data(), input.size()), ec);
  FUZZ_CHECK(used <= size);
  if (!ec && parser.is_header_done() && !parser.is_done() &&
      parser.content_length_remaining() == boost::none) {
    parser.put_eof(ec);
  }
  if (!ec && parser.is_done()) {
    const auto& req = parser.get();
    check_route(req.method() == http::verb::get, req.method() == http::verb::post,
                std::string_view(req.target().data(), req.target().size()), req.body());
  }
  // The raw input as a target and as a body, whatever Beast would accept.
  const auto nl = input.find('\n');
  const std::string_view target = input.substr(0, nl);
  const std::string_view body = nl == std::string_view::npos ? "" : input.substr(nl + 1);
  check_route(true, false, target, body);
  check_route(false, true, target, body);
  check_route(false, false, target, body);
  return 0;
}
