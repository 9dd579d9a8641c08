#include "director/password_hash.hpp"

#include "common/strings.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <openssl/crypto.h>

#include <crypt.h>

#include <array>
#include <cstring>
#include <memory>

namespace isthmus::director {

namespace asio = boost::asio;

namespace {

// Schemes whose payload is a crypt(3) string, as Dovecot names them.
constexpr std::array<std::string_view, 7> kCryptSchemes = {
    "CRYPT", "SHA512-CRYPT", "SHA256-CRYPT", "BLF-CRYPT", "MD5-CRYPT", "DES-CRYPT", "YESCRYPT"};

// crypt(3) prefixes we accept without a scheme: SHA-512/256, bcrypt, yescrypt.
bool looks_like_crypt(std::string_view text) {
  static constexpr std::array<std::string_view, 7> prefixes = {"$6$",  "$5$",  "$2b$", "$2y$",
                                                               "$2a$", "$y$", "$gy$"};
  for (auto p : prefixes)
    if (text.substr(0, p.size()) == p) return true;
  return false;
}

asio::thread_pool& hashing_pool() {
  // Two threads: enough to keep logins flowing, never all cores for hashing.
  static asio::thread_pool pool(2);
  return pool;
}

asio::awaitable<PasswordCheck> verify_on_pool(std::string stored, std::string password) {
  auto result = verify_password_hash(stored, password);
  OPENSSL_cleanse(password.data(), password.size());
  co_return result;
}

}  // namespace

std::string_view crypt_string_of(std::string_view stored) {
  if (!stored.empty() && stored.front() == '{') {
    auto close = stored.find('}');
    if (close == std::string_view::npos) return {};
    auto scheme = stored.substr(1, close - 1);
    bool known = false;
    for (auto s : kCryptSchemes) known |= iequals(scheme, s);
    if (!known) return {};
    stored.remove_prefix(close + 1);
    // {CRYPT} and friends may hold any crypt(3) string, including old DES.
    return stored.size() >= 13 ? stored : std::string_view();
  }
  return looks_like_crypt(stored) ? stored : std::string_view();
}

PasswordCheck verify_password_hash(std::string_view stored, std::string_view password) {
  auto setting = crypt_string_of(stored);
  if (setting.empty()) return PasswordCheck::unsupported;
  if (password.empty() || password.find('\0') != std::string_view::npos)
    return PasswordCheck::rejected;
  auto data = std::make_unique<crypt_data>();
  std::string setting_z(setting);
  std::string password_z(password);
  const char* out = crypt_rn(password_z.c_str(), setting_z.c_str(), data.get(), sizeof *data);
  OPENSSL_cleanse(password_z.data(), password_z.size());
  // crypt_rn returns null, or a string starting with '*', for a setting it
  // cannot use: that is a broken hash in the directory, not a wrong password.
  if (!out || out[0] == '*') return PasswordCheck::unsupported;
  std::size_t length = std::strlen(out);
  // A complete hash reproduces its own length; anything else is a setting
  // (salt only) or a truncated value: broken, whatever the password.
  if (length != setting.size()) {
    OPENSSL_cleanse(data.get(), sizeof *data);
    return PasswordCheck::unsupported;
  }
  bool same = CRYPTO_memcmp(out, setting.data(), length) == 0;
  OPENSSL_cleanse(data.get(), sizeof *data);
  return same ? PasswordCheck::accepted : PasswordCheck::rejected;
}

asio::awaitable<PasswordCheck> verify_password_hash_async(std::string stored,
                                                          std::string password) {
  co_return co_await asio::co_spawn(hashing_pool(),
                                    verify_on_pool(std::move(stored), std::move(password)),
                                    asio::use_awaitable);
}

}  // namespace isthmus::director
