#pragma once
// Password hashes as directories store them: crypt(3) strings, optionally
// behind a Dovecot-style {SCHEME} prefix ({SHA512-CRYPT}$6$..., {BLF-CRYPT}
// $2y$..., {CRYPT}$y$... for yescrypt). Checking one costs milliseconds of
// CPU (bcrypt, yescrypt: tens), so it never runs on a worker thread.

#include "director/directory.hpp"

#include <boost/asio/awaitable.hpp>

#include <string>
#include <string_view>

namespace isthmus::director {

// The crypt(3) string inside `stored`, or "" when the scheme is not one
// Isthmus can check ({PLAIN}, {SSHA}, an unknown one, or not a crypt string).
std::string_view crypt_string_of(std::string_view stored);

// Synchronous: accepted, rejected, or unsupported (nothing checkable).
PasswordCheck verify_password_hash(std::string_view stored, std::string_view password);

// The same on a small pool of hashing threads; resumes on the caller's executor.
boost::asio::awaitable<PasswordCheck> verify_password_hash_async(std::string stored,
                                                                 std::string password);

}  // namespace isthmus::director
