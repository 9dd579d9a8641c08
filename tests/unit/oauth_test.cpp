#include "director/oauth_introspection.hpp"

#include <doctest/doctest.h>

using namespace isthmus;
using director::TokenCheck;
using director::interpret_introspection;

TEST_CASE("OAuth introspection answers: active, the user's, not expired") {
  config::OAuth2 settings;
  settings.cache_ttl = std::chrono::seconds(60);
  config::LoginNames names;
  names.lowercase = true;
  names.default_domain = "example.org";
  const std::int64_t now = 1'800'000'000;
  const std::string user = "alice@example.org";

  auto v = interpret_introspection(R"({"active": true, "username": "Alice"})", user, settings,
                                   names, now);
  CHECK(v.check == TokenCheck::accepted);  // normalised like a login name
  CHECK(v.valid_for == std::chrono::seconds(60));
  v = interpret_introspection(R"({"active": true, "username": "alice@example.org", "exp": 1800000010})",
                              user, settings, names, now);
  CHECK(v.check == TokenCheck::accepted);
  CHECK(v.valid_for == std::chrono::seconds(10));  // remembered at most until exp
  v = interpret_introspection(R"({"active": true, "username": "alice@example.org", "exp": 1799999999})",
                              user, settings, names, now);
  CHECK(v.check == TokenCheck::rejected);
  CHECK(v.detail.find("expired") != std::string::npos);
  v = interpret_introspection(R"({"active": false})", user, settings, names, now);
  CHECK(v.check == TokenCheck::rejected);
  v = interpret_introspection(R"({"active": true, "username": "bob@example.org"})", user,
                              settings, names, now);
  CHECK(v.check == TokenCheck::rejected);
  v = interpret_introspection(R"({"active": true})", user, settings, names, now);
  CHECK(v.check == TokenCheck::rejected);
  settings.user_claim = "email";
  v = interpret_introspection(R"({"active": true, "username": "x", "email": "alice@example.org"})",
                              user, settings, names, now);
  CHECK(v.check == TokenCheck::accepted);

  // What the endpoint cannot mean is its failure, not the user's.
  for (const char* body : {"", "not json", "[]", R"({"active": "yes"})", R"({"username": "a"})"}) {
    CAPTURE(body);
    CHECK(interpret_introspection(body, user, settings, names, now).check ==
          TokenCheck::unavailable);
  }
}

TEST_CASE("OAuth introspection: only our access tokens, times within reason") {
  config::OAuth2 settings;
  settings.cache_ttl = std::chrono::seconds(60);
  config::LoginNames names;
  const std::int64_t now = 1'800'000'000;
  const std::string user = "alice@example.org";
  auto check = [&](const char* body) {
    return interpret_introspection(body, user, settings, names, now).check;
  };
  CHECK(check(R"({"active": true, "username": "alice@example.org", "token_type": "Bearer"})") ==
        TokenCheck::accepted);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "token_type": "refresh_token"})") ==
        TokenCheck::rejected);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "nbf": 1800000100})") ==
        TokenCheck::rejected);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "nbf": 1799999000})") ==
        TokenCheck::accepted);
  // Absurd times are the endpoint's failure, never a token trusted for ever.
  CHECK(check(R"({"active": true, "username": "alice@example.org", "exp": 1e300})") ==
        TokenCheck::unavailable);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "exp": -9223372036854775807})") ==
        TokenCheck::unavailable);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "exp": 18446744073709551615})") ==
        TokenCheck::unavailable);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "exp": "soon"})") ==
        TokenCheck::unavailable);

  settings.audience = "imap.example.org";
  CHECK(check(R"({"active": true, "username": "alice@example.org"})") == TokenCheck::rejected);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "aud": "webshop"})") ==
        TokenCheck::rejected);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "aud": ["webshop", "imap.example.org"]})") ==
        TokenCheck::accepted);
  settings.scope = "mail";
  CHECK(check(R"({"active": true, "username": "alice@example.org", "aud": "imap.example.org", "scope": "openid email"})") ==
        TokenCheck::rejected);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "aud": "imap.example.org", "scope": "openid mail"})") ==
        TokenCheck::accepted);
  CHECK(check(R"({"active": true, "username": "alice@example.org", "aud": "imap.example.org", "scope": "mailx"})") ==
        TokenCheck::rejected);
}
