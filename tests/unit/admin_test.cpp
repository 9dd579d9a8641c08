// The admin API's routing (admin/admin_request.hpp), without sockets.

#include "admin/admin_request.hpp"

#include <doctest/doctest.h>

using isthmus::admin::AdminAction;
using isthmus::admin::route_admin_request;

TEST_CASE("admin routing: a user's account is written by POST only, with a JSON object") {
  auto r = route_admin_request(false, true, "/v1/users/alice%40example.org/account",
                               R"({"island": "b", "state": "active"})");
  CHECK(r.action == AdminAction::account);
  REQUIRE(r.parts.size() == 4);
  CHECK(r.parts[2] == "alice@example.org");
  CHECK(r.text("island") == "b");
  CHECK(r.text("state") == "active");
  CHECK(route_admin_request(true, false, "/v1/users/alice/account", "").action ==
        AdminAction::not_found);
  CHECK(route_admin_request(false, true, "/v1/users/alice/account", "[1]").action ==
        AdminAction::bad_body);
  CHECK(route_admin_request(false, true, "/v1/users/alice/accounts", "{}").action ==
        AdminAction::not_found);
  CHECK(route_admin_request(true, false, "/v1/users/alice", "").action == AdminAction::user);
}
