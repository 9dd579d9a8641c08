// Replays fuzz inputs through the fuzz targets' checks without libFuzzer,
// in the ordinary builds (GCC, and the ASan+UBSan one): the checked-in
// corpora and every reproducer of a fixed finding (tests/fuzz/regressions/)
// run as ctests, so a fixed bug that comes back fails the suite even where
// clang is not used.
//
//   isthmus_fuzz_replay TARGET FILE|DIR...

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#define ISTHMUS_FUZZ_TARGET(name) \
  extern "C" int isthmus_fuzz_##name(const std::uint8_t* data, std::size_t size);
#include "fuzz_targets.inc"
#undef ISTHMUS_FUZZ_TARGET

namespace {

struct Target {
  std::string_view name;
  int (*run)(const std::uint8_t*, std::size_t);
};

const Target kTargets[] = {
#define ISTHMUS_FUZZ_TARGET(name) {#name, &isthmus_fuzz_##name},
#include "fuzz_targets.inc"
#undef ISTHMUS_FUZZ_TARGET
};

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s TARGET FILE|DIR...\n", argv[0]);
    return 2;
  }
  const Target* target = nullptr;
  for (const auto& t : kTargets)
    if (t.name == argv[1]) target = &t;
  if (!target) {
    std::fprintf(stderr, "no fuzz target %s\n", argv[1]);
    return 2;
  }
  std::vector<std::filesystem::path> files;
  for (int i = 2; i < argc; ++i) {
    std::filesystem::path p(argv[i]);
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (std::filesystem::exists(p)) {
      files.push_back(p);
    }
  }
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::fprintf(stderr, "%s: %s (%zu bytes)\n", argv[1], f.string().c_str(), bytes.size());
    target->run(reinterpret_cast<const std::uint8_t*>(bytes.data()), bytes.size());
  }
  std::printf("%s: %zu inputs replayed, all checks held\n", argv[1], files.size());
  return 0;
}
