#pragma once
// What isthmusctl prints: terminal-safe text, table cells, durations, the
// aligned plain tables of every command. Pure functions over strings and
// JSON values (what the instances answered is untrusted: a name may carry
// escape sequences).

#include <nlohmann/json.hpp>

#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::ctl {

using Json = nlohmann::ordered_json;

// A problem with the command line or the config: exit 1, nothing sent.
class UsageError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Text fit for a terminal: control and other unprintable characters (as
// Python's str.isprintable() sees them) shown escaped, "\n" as \n, a byte
// that is not UTF-8 as \xNN.
std::string clean(std::string_view text);

// Whether `text` is well-formed UTF-8.
bool valid_utf8(std::string_view text);

// `text` with each byte that is not part of valid UTF-8 replaced by U+FFFD
// (as Python's decode(errors="replace") does).
std::string repair_utf8(std::string_view text);

// A JSON value as a table cell: null "-", true "yes", false "no", a string
// cleaned, a number as Python prints it (3, 2.0, 3725.5).
std::string cell(const Json& value);

// How many characters (code points) a UTF-8 string shows.
std::size_t display_width(std::string_view text);

// Seconds as a short human duration: 300ms, 5.0s, 12s, 1m01s, 3h05m, 2d04h;
// "?" when not a number.
std::string show_duration(const Json& seconds);
std::string show_duration(double seconds);

// "5s", "250ms", "2m", "1h", "1.5s" or a plain number of seconds (a JSON
// number, or a string of digits) -> seconds, more than zero. Looser than the
// daemon's config::parse_duration (decimals, spaces, bare numbers), as
// isthmusctl has always accepted. Throws UsageError naming `what`.
double parse_duration(const Json& value, std::string_view what);

// An aligned table: two spaces between columns; columns whose header is
// in `right` right-aligned; trailing blanks dropped.
std::string table(const std::vector<std::string>& headers,
                  const std::vector<std::vector<std::string>>& rows,
                  const std::set<std::string>& right = {});

// "1 session", "3 sessions".
std::string plural(long long n, std::string_view word);

// Percent-encoding of everything but A-Z a-z 0-9 _ . - ~ (a path segment or
// a query value).
std::string percent_encode(std::string_view text);

// Python-like repr of a string, for messages: 'text'.
std::string repr(std::string_view text);

}  // namespace isthmus::ctl
