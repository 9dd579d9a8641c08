#include "common/session_id.hpp"

#include <random>

namespace isthmus {

std::string new_session_id() {
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz234567";
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::uint64_t bits = rng();
  std::string id(12, 'a');
  for (auto& c : id) {
    c = kAlphabet[bits & 31U];
    bits >>= 5;
  }
  return id;
}

}  // namespace isthmus

namespace isthmus {

const std::string& instance_token() {
  static const std::string token = "isthmus-" + new_session_id() + new_session_id();
  return token;
}

}  // namespace isthmus
