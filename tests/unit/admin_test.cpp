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

TEST_CASE("admin routing: move jobs") {
  auto r = route_admin_request(false, true, "/v1/moves", R"({"user": "alice", "to": "b"})");
  CHECK(r.action == AdminAction::move_start);
  CHECK(r.text("to") == "b");
  CHECK(route_admin_request(true, false, "/v1/moves", "").action == AdminAction::moves);
  r = route_admin_request(true, false, "/v1/moves/20261203T225500Z-3f2a9c", "");
  CHECK(r.action == AdminAction::move);
  REQUIRE(r.parts.size() == 3);
  CHECK(r.parts[2] == "20261203T225500Z-3f2a9c");
  CHECK(route_admin_request(false, true, "/v1/moves/X/abort", "").action ==
        AdminAction::move_abort);
  CHECK(route_admin_request(false, true, "/v1/moves/X/resume", "").action ==
        AdminAction::move_resume);
  // Reading is GET, acting is POST.
  CHECK(route_admin_request(true, false, "/v1/moves/X/abort", "").action == AdminAction::not_found);
  CHECK(route_admin_request(false, true, "/v1/moves/X", "").action == AdminAction::not_found);
  CHECK(route_admin_request(false, true, "/v1/moves/X/cancel", "").action ==
        AdminAction::not_found);
  CHECK(route_admin_request(false, true, "/v1/moves", "\"alice\"").action ==
        AdminAction::bad_body);
}
