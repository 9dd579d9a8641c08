// isthmusctl's pure parts (ctl/): what it prints, how it reads durations
// and URLs, how an HTTP answer becomes a reply and an exit code. The
// commands end to end: tests/tools/test_isthmusctl_cli.py.

#include "ctl/admin_client.hpp"
#include "ctl/instances.hpp"
#include "ctl/text.hpp"

#include <doctest/doctest.h>

using namespace isthmus::ctl;

TEST_CASE("ctl: clean() escapes what a terminal would interpret") {
  CHECK(clean("alice@example.org") == "alice@example.org");
  CHECK(clean("evil\x1b[31mnode") == "evil\\x1b[31mnode");
  CHECK(clean("two\nlines") == "two\\nlines");
  CHECK(clean("tab\there") == "tab\\x09here");
  CHECK(clean("c1 \xc2\x9b") == "c1 \\x9b");               // U+009B CSI
  CHECK(clean("rtl \xe2\x80\xae") == "rtl \\u202e");       // U+202E, format
  CHECK(clean("j\xc3\xbcrgen \xe6\x97\xa5") == "j\xc3\xbcrgen \xe6\x97\xa5");  // printable
  CHECK(clean("bad \xff byte") == "bad \\xff byte");
  CHECK(clean("cut \xe6\x97") == "cut \\xe6\\x97");
}

TEST_CASE("ctl: cells and durations read like the Python tool's") {
  CHECK(cell(Json()) == "-");
  CHECK(cell(Json(true)) == "yes");
  CHECK(cell(Json(false)) == "no");
  CHECK(cell(Json(3)) == "3");
  CHECK(cell(Json(2.0)) == "2.0");
  CHECK(cell(Json(3725.5)) == "3725.5");
  CHECK(cell(Json::array({1, 2})) == "[1,2]");
  CHECK(show_duration(Json(0.3)) == "300ms");
  CHECK(show_duration(Json(5.0)) == "5.0s");
  CHECK(show_duration(Json(0)) == "0.0s");
  CHECK(show_duration(Json(61.2)) == "1m01s");
  CHECK(show_duration(Json(3725.5)) == "1h02m");
  CHECK(show_duration(Json(190000)) == "2d04h");
  CHECK(show_duration(Json("soon")) == "?");
  CHECK(show_duration(Json(true)) == "?");
  CHECK(show_duration(1e300) == "?");
}

TEST_CASE("ctl: durations from the config and --timeout") {
  CHECK(parse_duration(Json("5s"), "t") == doctest::Approx(5));
  CHECK(parse_duration(Json("250ms"), "t") == doctest::Approx(0.25));
  CHECK(parse_duration(Json(" 2 m "), "t") == doctest::Approx(120));
  CHECK(parse_duration(Json("1.5h"), "t") == doctest::Approx(5400));
  CHECK(parse_duration(Json("7"), "t") == doctest::Approx(7));
  CHECK(parse_duration(Json(0.5), "t") == doctest::Approx(0.5));
  CHECK_THROWS_WITH_AS(parse_duration(Json("soon"), "--timeout"),
                       "--timeout: expected a duration like \"5s\" or \"250ms\", got 'soon'",
                       UsageError);
  CHECK_THROWS_WITH_AS(parse_duration(Json("0s"), "t"), "t: must be more than zero", UsageError);
  CHECK_THROWS_AS(parse_duration(Json(true), "t"), UsageError);
  CHECK_THROWS_AS(parse_duration(Json("5 s s"), "t"), UsageError);
  CHECK_THROWS_AS(parse_duration(Json(".5s"), "t"), UsageError);
  CHECK_THROWS_AS(parse_duration(Json::array(), "t"), UsageError);
}

TEST_CASE("ctl: tables align by characters, right-align named columns") {
  CHECK(table({"NODE", "SESSIONS"}, {{"a-left", "3"}, {"j\xc3\xbc", "12"}}, {"SESSIONS"}) ==
        "NODE    SESSIONS\n"
        "a-left         3\n"
        "j\xc3\xbc            12");
  CHECK(table({"A", "B"}, {{"x", ""}}) == "A  B\nx");  // trailing blanks dropped
  CHECK(plural(1, "session") == "1 session");
  CHECK(plural(0, "live session") == "0 live sessions");
  CHECK(percent_encode("no body/x@example.org") == "no%20body%2Fx%40example.org");
  CHECK(percent_encode("a-b_c.d~") == "a-b_c.d~");
  CHECK(repair_utf8("x\xff\xfey") == "x\xef\xbf\xbd\xef\xbf\xbdy");
}

TEST_CASE("ctl: instance URLs") {
  auto inst = Instance::with_url("i2", "http://10.0.0.2:8025/admin/", std::nullopt);
  CHECK(inst.host == "10.0.0.2");
  CHECK(inst.port == "8025");
  CHECK(inst.prefix == "/admin");
  CHECK(inst.label() == "i2 (http://10.0.0.2:8025/admin/)");
  CHECK(Instance::with_url("x", "HTTPS://Admin.Example.org", std::nullopt).port == "443");
  auto v6 = Instance::with_url("x", "http://[::1]:8025", std::nullopt);
  CHECK(v6.host == "::1");
  CHECK(v6.port == "8025");
  CHECK_THROWS_AS(Instance::with_url("x", "ftp://h:1", std::nullopt), UsageError);
  CHECK_THROWS_AS(Instance::with_url("x", "http://:1", std::nullopt), UsageError);
  CHECK_THROWS_AS(Instance::with_url("x", "http://h:99999", std::nullopt), UsageError);
  CHECK_THROWS_AS(Instance::with_url("x", "http://h:8o", std::nullopt), UsageError);
  CHECK_THROWS_AS(Instance::with_url("x", "http://u:p@h:1", std::nullopt), UsageError);
  CHECK_THROWS_AS(Instance::with_url("x", "http://h:1/?q", std::nullopt), UsageError);
  auto sock = Instance::with_socket("/run/isthmus/admin.sock", "/run/isthmus/admin.sock");
  CHECK(sock.label() == "/run/isthmus/admin.sock");
}

TEST_CASE("ctl: an HTTP answer becomes a reply of one kind") {
  auto inst = Instance::with_url("i2", "http://10.0.0.2:8025", std::string("/etc/t"));
  inst.token = "secret";
  AdminRequest get{"GET", "/v1/nodes", std::nullopt, true};
  auto ok = classify_answer(inst, get, 200, "OK", R"({"nodes": []})");
  CHECK(ok.ok());
  CHECK(ok.body["nodes"].is_array());
  CHECK(classify_answer(inst, get, 200, "OK", "<html>").kind == ReplyKind::server);
  CHECK(classify_answer(inst, get, 200, "OK", "[1]").error ==
        "answered HTTP 200 with JSON that is not an object");
  CHECK(classify_answer(inst, get, 200, "OK", std::string(1000, '[') + std::string(1000, ']'))
            .kind == ReplyKind::server);
  auto auth = classify_answer(inst, get, 401, "Unauthorized", R"({"error": "wrong token"})");
  CHECK(auth.kind == ReplyKind::auth);
  CHECK(auth.error == "authentication failed: wrong token (check the token in /etc/t)");
  auto missing = classify_answer(inst, get, 404, "Not Found", "");
  CHECK(missing.kind == ReplyKind::not_found);
  CHECK(missing.error == "not found: HTTP 404 Not Found");
  auto refused = classify_answer(inst, get, 409, "Conflict", "  node\n is   down  ");
  CHECK(refused.kind == ReplyKind::refused);
  CHECK(refused.error == "refused (HTTP 409): HTTP 409 Conflict: node is down");
  CHECK(classify_answer(inst, get, 503, "x", "").kind == ReplyKind::server);
  CHECK(classify_answer(inst, get, 302, "Found", "").error == "unexpected answer HTTP 302 Found");
  auto text = classify_answer(inst, {"GET", "/metrics", std::nullopt, false}, 200, "OK", "m 1\n");
  CHECK(text.body == "m 1\n");
  auto as_json = ok.as_json();
  CHECK(as_json["instance"] == "i2");
  CHECK(as_json["http_status"] == 200);
  CHECK(as_json["error"].is_null());
}
