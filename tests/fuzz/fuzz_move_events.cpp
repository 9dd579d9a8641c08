// The mover's event lines as a daemon move job reads them
// (moves/move_job.hpp apply_mover_line), and the job document the store
// keeps (to_stored_json / from_stored_json).
//
// Input: lines (LF-separated) of the mover's output; the first byte picks
// the time step between lines (for the progress rate).
//
// Invariants:
// - the history never holds more than kMaxHistory lines, nor a line with an
//   ASCII control character, nor one longer than its bound;
// - the step number stays in -1..kSteps; rate and ETA are finite and not
//   negative;
// - the job read back from its stored document, and written again, is the
//   same document (nothing is lost or escaped twice on the way through the
//   store), also after a trip through the JSON text;
// - the whole input read as a stored document (a row of the move store):
//   accepted only with a well-formed id and a user and island that cannot
//   pass for an option, and then it too writes back unchanged.

#include "fuzz_check.hpp"
#include "moves/move_job.hpp"

#include <cmath>

using namespace isthmus;
using namespace isthmus::moves;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  auto input = fuzz::as_view(data, size);
  if (input.empty()) return 0;
  if (auto stored = from_stored_json(parse_bounded_json(input))) {
    FUZZ_CHECK(valid_job_id(stored->id));
    FUZZ_CHECK(!stored->user.empty() && stored->user.front() != '-');
    FUZZ_CHECK(!stored->to.empty() && stored->to.front() != '-');
    const auto doc = to_stored_json(*stored);
    auto again = from_stored_json(doc);
    FUZZ_CHECK(again);
    FUZZ_CHECK(to_stored_json(*again) == doc);
  }
  const auto step = std::chrono::milliseconds(static_cast<unsigned char>(input[0]) * 10);
  input.remove_prefix(1);
  Job job;
  job.id = "20261203T000000Z-000000";
  job.user = "alice@example.org";
  job.to = "b";
  job.owner = "i1";
  job.epoch = 1;
  PassClock clock;
  auto now = Clock::time_point{} + std::chrono::hours(1);
  while (!input.empty()) {
    auto nl = input.find('\n');
    auto line = input.substr(0, nl);
    input.remove_prefix(nl == std::string_view::npos ? input.size() : nl + 1);
    apply_mover_line(job, line, now, clock);
    now += step;
  }
  FUZZ_CHECK(job.history.size() <= kMaxHistory);
  for (const auto& h : job.history) {
    FUZZ_CHECK(h.text.size() <= 2000);
    for (char c : h.text) {
      const auto u = static_cast<unsigned char>(c);
      FUZZ_CHECK(u >= 0x20 && u != 0x7f);
    }
  }
  FUZZ_CHECK(job.step_number >= -1 && job.step_number <= kSteps);
  FUZZ_CHECK(std::isfinite(job.progress.rate) && job.progress.rate >= 0);
  if (job.progress.eta_seconds)
    FUZZ_CHECK(std::isfinite(*job.progress.eta_seconds) && *job.progress.eta_seconds >= 0);
  const auto stored = to_stored_json(job);
  auto back = from_stored_json(stored);
  FUZZ_CHECK(back);
  FUZZ_CHECK(to_stored_json(*back) == stored);
  const auto text = stored.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  auto parsed = nlohmann::json::parse(text, nullptr, false);
  FUZZ_CHECK(!parsed.is_discarded());
  auto again = from_stored_json(parsed);
  FUZZ_CHECK(again);
  FUZZ_CHECK(to_stored_json(*again).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) ==
             text);
  return 0;
}
