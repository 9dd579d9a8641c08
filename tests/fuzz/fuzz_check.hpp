#pragma once
// Shared by the libFuzzer targets: an invariant check that aborts with a
// message (libFuzzer saves the input as crash-*), and a way to cut the input
// into chunks that depends only on the input, so a finding replays exactly.

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace isthmus::fuzz {

inline std::string_view as_view(const std::uint8_t* data, std::size_t size) {
  return {reinterpret_cast<const char*>(data), size};
}

// Chunk lengths (1..max) covering `total` bytes, drawn from a small PRNG
// seeded by `seed` (a hash of the input, so the same input cuts the same way).
inline std::vector<std::size_t> chunk_sizes(std::size_t total, std::uint64_t seed,
                                            std::size_t max) {
  std::vector<std::size_t> sizes;
  std::uint64_t x = seed | 1;
  while (total > 0) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::size_t n = 1 + static_cast<std::size_t>(x % max);
    if (n > total) n = total;
    sizes.push_back(n);
    total -= n;
  }
  return sizes;
}

inline std::uint64_t hash_bytes(std::string_view bytes) {
  std::uint64_t h = 1469598103934665603ULL;  // FNV-1a
  for (unsigned char c : bytes) h = (h ^ c) * 1099511628211ULL;
  return h;
}

inline bool has_ctl_line_break(std::string_view s) {
  return s.find('\r') != std::string_view::npos || s.find('\n') != std::string_view::npos;
}

}  // namespace isthmus::fuzz
