#include "moves/imap_wire.hpp"

#include <algorithm>
#include <array>
#include <deque>
#include <limits>
#include <utility>

namespace isthmus::moves::imap {

namespace {

constexpr std::uint64_t kMaxLiteral = std::uint64_t{1} << 32;  // RFC 3501 number: 32 bits

char upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }

bool equals_upper(std::string_view text, std::string_view upper_text) {
  if (text.size() != upper_text.size()) return false;
  for (std::size_t i = 0; i < text.size(); ++i)
    if (upper(text[i]) != upper_text[i]) return false;
  return true;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// A literal count "{N}" or "{N+}" at the very end of TEXT: where its "{"
// is and N (saturated just above kMaxLiteral, so any number of digits
// reads in one pass without overflow).
struct Marker {
  std::size_t start = 0;
  std::uint64_t count = 0;
};

std::optional<Marker> marker_at_end(std::string_view text) {
  if (text.empty() || text.back() != '}') return std::nullopt;
  std::size_t end = text.size() - 1;  // the "}"
  if (end > 0 && text[end - 1] == '+') --end;
  std::size_t first = end;
  while (first > 0 && is_digit(text[first - 1])) --first;
  if (first == end || first == 0 || text[first - 1] != '{') return std::nullopt;
  Marker m;
  m.start = first - 1;
  for (std::size_t i = first; i < end; ++i) {
    m.count = m.count * 10 + static_cast<std::uint64_t>(text[i] - '0');
    if (m.count > kMaxLiteral) m.count = kMaxLiteral + 1;  // stays small enough not to overflow
  }
  return m;
}

// "[" opens a section only right after one of these (RFC 3501 section 7.4.2
// and RFC 3516): BODY[HEADER.FIELDS (MESSAGE-ID)] is one item name.
bool is_section_atom(std::string_view atom) {
  static constexpr std::array<std::string_view, 5> kSectionAtoms = {
      "BODY", "BODY.PEEK", "BINARY", "BINARY.PEEK", "BINARY.SIZE"};
  for (auto s : kSectionAtoms)
    if (equals_upper(atom, s)) return true;
  return false;
}

using Stack = std::vector<std::vector<Value>>;

void close_list(Stack& stack) {
  Value list;
  list.kind = Value::Kind::list;
  list.items = std::move(stack.back());
  stack.pop_back();
  stack.back().push_back(std::move(list));
}

// The tokens of one stretch of text between literals (the Python mover's
// imap_parse on one piece): false when a list opens deeper than kMaxDepth.
bool scan_text(std::string_view text, Stack& stack) {
  std::size_t i = 0;
  const std::size_t n = text.size();
  while (i < n) {
    const char c = text[i];
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      ++i;
    } else if (c == '(') {
      if (stack.size() > kMaxDepth) return false;  // stack[0] is the response itself
      stack.emplace_back();
      ++i;
    } else if (c == ')') {
      if (stack.size() > 1) close_list(stack);  // a stray ")" is skipped
      ++i;
    } else if (c == '"') {
      Value v;
      v.kind = Value::Kind::string;
      std::size_t j = i + 1;
      while (j < n && text[j] != '"') {
        if (text[j] == '\\' && j + 1 < n) ++j;
        v.text.push_back(text[j]);
        ++j;
      }
      stack.back().push_back(std::move(v));
      i = j + 1;  // past the closing quote, or past the end when there is none
    } else {
      std::size_t j = i;
      std::size_t depth = 0;  // brackets open in a section
      while (j < n) {
        const char ch = text[j];
        if (depth == 0 && ch == '[' && is_section_atom(text.substr(i, j - i))) {
          depth = 1;
        } else if (depth > 0 && ch == '[') {
          ++depth;
        } else if (depth > 0 && ch == ']') {
          --depth;
        } else if (depth == 0 && (ch == ' ' || ch == '(' || ch == ')')) {
          break;
        }
        ++j;
      }
      Value v;
      const auto atom = text.substr(i, j - i);
      if (equals_upper(atom, "NIL")) {
        v.kind = Value::Kind::nil;
      } else {
        v.kind = Value::Kind::atom;
        v.text.assign(atom);
      }
      stack.back().push_back(std::move(v));
      i = j;
    }
  }
  return true;
}

bool is_space(char c) { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view s) {
  while (!s.empty() && (is_space(s.front()) || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (is_space(s.back()) || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

// Two digits at TEXT[AT], or -1.
int two_digits(std::string_view text, std::size_t at) {
  if (at + 2 > text.size() || !is_digit(text[at]) || !is_digit(text[at + 1])) return -1;
  return (text[at] - '0') * 10 + (text[at + 1] - '0');
}

bool is_leap(std::int64_t y) { return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0; }

int days_in_month(std::int64_t y, int m) {
  static constexpr std::array<int, 12> kDays = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m == 2 && is_leap(y) ? 29 : kDays[static_cast<std::size_t>(m - 1)];
}

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
// days_from_civil), independent of the local time zone.
std::int64_t days_from_civil(std::int64_t y, int m, int d) {
  y -= m <= 2 ? 1 : 0;
  const std::int64_t era = (y >= 0 ? y : y - 399) / 400;
  const std::int64_t yoe = y - era * 400;                                    // [0, 399]
  const std::int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;  // [0, 365]
  const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           // [0, 146096]
  return era * 146097 + doe - 719468;
}

bool is_recent(std::string_view flag) { return equals_upper(flag, "\\RECENT"); }

}  // namespace

bool Value::is_atom(std::string_view upper_text) const {
  return kind == Kind::atom && equals_upper(text, upper_text);
}

std::optional<std::vector<Value>> parse_values(std::string_view wire) {
  // The wire is cut like the session reads it: text up to a CRLF that
  // follows a literal count, the literal's bytes, text again. A CRLF that
  // follows no count is only white space in the text.
  Stack stack(1);
  std::size_t piece = 0;   // where the current text starts
  std::size_t search = 0;  // where to look for the next CRLF
  for (;;) {
    const auto crlf = wire.find("\r\n", search);
    if (crlf == std::string_view::npos) {
      auto rest = wire.substr(piece);
      if (!rest.empty() && rest.back() == '\r') rest.remove_suffix(1);
      if (marker_at_end(rest)) return std::nullopt;  // a literal count without its bytes
      if (!scan_text(wire.substr(piece), stack)) return std::nullopt;
      break;
    }
    const auto text = wire.substr(piece, crlf - piece);
    const auto marker = marker_at_end(text);
    if (!marker) {
      search = crlf + 2;
      continue;
    }
    const std::size_t data = crlf + 2;
    if (marker->count > kMaxLiteral || marker->count > wire.size() - data) return std::nullopt;
    if (!scan_text(text.substr(0, marker->start), stack)) return std::nullopt;
    Value literal;
    literal.kind = Value::Kind::string;
    literal.text.assign(wire.substr(data, static_cast<std::size_t>(marker->count)));
    stack.back().push_back(std::move(literal));
    piece = search = data + static_cast<std::size_t>(marker->count);
  }
  while (stack.size() > 1) close_list(stack);  // an unclosed list ends with the response
  return std::move(stack.front());
}

std::optional<std::uint64_t> literal_at_end(std::string_view line) {
  auto m = marker_at_end(line);
  if (!m || m->count > kMaxLiteral) return std::nullopt;
  return m->count;
}

std::map<std::string, Value> fetch_items(const std::vector<Value>& values) {
  std::map<std::string, Value> items;
  if (values.size() < 3 || !values[1].is_atom("FETCH") || values[2].kind != Value::Kind::list)
    return items;
  const auto& list = values[2].items;
  for (std::size_t k = 0; k + 1 < list.size(); k += 2) {
    if (list[k].kind != Value::Kind::atom) continue;
    std::string key;
    key.reserve(list[k].text.size());
    for (char c : list[k].text) key.push_back(upper(c));
    items.insert_or_assign(std::move(key), list[k + 1]);
  }
  return items;
}

std::optional<std::uint64_t> parse_number(std::string_view text) {
  if (text.empty() || text.size() > 20) return std::nullopt;
  std::uint64_t n = 0;
  constexpr auto kMax = std::numeric_limits<std::uint64_t>::max();
  for (char c : text) {
    if (!is_digit(c)) return std::nullopt;
    const auto d = static_cast<std::uint64_t>(c - '0');
    if (n > (kMax - d) / 10) return std::nullopt;
    n = n * 10 + d;
  }
  return n;
}

bool valid_flag(std::string_view flag) {
  if (!flag.empty() && flag.front() == '\\') flag.remove_prefix(1);
  if (flag.empty()) return false;
  for (char c : flag) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x21 || u > 0x7e) return false;
    if (std::string_view("(){%*\"\\]").find(c) != std::string_view::npos) return false;
  }
  return true;
}

std::optional<std::vector<std::string>> flags_of(const Value& value) {
  if (value.kind != Value::Kind::list) return std::nullopt;
  std::vector<std::string> flags;
  for (const auto& item : value.items) {
    if (!item.is_text() || !valid_flag(item.text)) return std::nullopt;
    if (!is_recent(item.text)) flags.push_back(item.text);
  }
  std::sort(flags.begin(), flags.end());
  return flags;
}

bool valid_internaldate(std::string_view date) { return internaldate_epoch(date).has_value(); }

std::optional<std::int64_t> internaldate_epoch(std::string_view date) {
  // date-time = DQUOTE date-day-fixed "-" date-month "-" date-year SP time
  //             SP zone DQUOTE (RFC 3501 section 9), here without the quotes;
  // date-day-fixed = (SP DIGIT) / 2DIGIT, and one DIGIT alone as servers
  // send it too.
  int day = 0;
  if (date.size() >= 2 && date[0] == ' ' && is_digit(date[1])) {
    day = date[1] - '0';
    date.remove_prefix(2);
  } else if (date.size() >= 2 && is_digit(date[0]) && is_digit(date[1])) {
    day = two_digits(date, 0);
    date.remove_prefix(2);
  } else if (!date.empty() && is_digit(date[0])) {
    day = date[0] - '0';
    date.remove_prefix(1);
  } else {
    return std::nullopt;
  }
  // "-Mon-yyyy hh:mm:ss +zzzz"
  if (date.size() != 24 || date[0] != '-' || date[4] != '-' || date[9] != ' ' ||
      date[12] != ':' || date[15] != ':' || date[18] != ' ' ||
      (date[19] != '+' && date[19] != '-'))
    return std::nullopt;
  static constexpr std::array<std::string_view, 12> kMonths = {
      "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
  int month = 0;
  for (std::size_t m = 0; m < kMonths.size(); ++m)
    if (equals_upper(date.substr(1, 3), kMonths[m])) month = static_cast<int>(m) + 1;
  const int y_hi = two_digits(date, 5);
  const int y_lo = two_digits(date, 7);
  const int hour = two_digits(date, 10);
  const int minute = two_digits(date, 13);
  const int second = two_digits(date, 16);
  const int zone_h = two_digits(date, 20);
  const int zone_m = two_digits(date, 22);
  if (month == 0 || y_hi < 0 || y_lo < 0 || hour < 0 || minute < 0 || second < 0 || zone_h < 0 ||
      zone_m < 0)
    return std::nullopt;
  const std::int64_t year = y_hi * 100 + y_lo;
  if (year < 1 || day < 1 || day > days_in_month(year, month) || hour > 23 || minute > 59 ||
      second > 60 || zone_h > 23 || zone_m > 59)
    return std::nullopt;
  const std::int64_t offset = (zone_h * 60 + zone_m) * 60 * (date[19] == '-' ? -1 : 1);
  return days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second - offset;
}

namespace {

// The Message-ID in one unfolded header line: nullopt if the line is some
// other field, an empty optional if it is a Message-ID without a value.
std::optional<std::optional<std::string>> message_id_field(std::string_view line) {
  const auto colon = line.find(':');
  if (colon == std::string_view::npos) return std::nullopt;
  if (!equals_upper(trim(line.substr(0, colon)), "MESSAGE-ID")) return std::nullopt;
  const auto value = trim(line.substr(colon + 1));
  if (value.empty()) return std::optional<std::string>();
  return std::optional<std::string>(std::string(value));
}

}  // namespace

std::optional<std::string> message_id_of(std::string_view header) {
  // RFC 5322 section 2.2.3: a line that starts with white space continues
  // the one before (joined here with one space, as the Python mover does).
  // The first Message-ID field decides, even an empty one.
  std::optional<std::string> current;
  std::size_t pos = 0;
  for (;;) {
    const auto lf = header.find('\n', pos);
    auto line = header.substr(pos, lf == std::string_view::npos ? lf : lf - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (current && !line.empty() && is_space(line.front())) {
      while (!line.empty() && is_space(line.front())) line.remove_prefix(1);
      current->push_back(' ');
      current->append(line);
    } else {
      if (current) {
        if (auto found = message_id_field(*current)) return std::move(*found);
      }
      current.emplace(line);
    }
    if (lf == std::string_view::npos) break;
    pos = lf + 1;
  }
  if (auto found = message_id_field(*current)) return std::move(*found);
  return std::nullopt;
}

std::optional<std::string> quoted(std::string_view text) {
  std::string out;
  out.reserve(text.size() + 2);
  out.push_back('"');
  for (char c : text) {
    if (c == '\r' || c == '\n' || c == '\0' || static_cast<unsigned char>(c) > 0x7f)
      return std::nullopt;
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string uid_set(std::vector<std::uint32_t> uids) {
  std::sort(uids.begin(), uids.end());
  uids.erase(std::unique(uids.begin(), uids.end()), uids.end());
  std::string out;
  for (std::size_t i = 0; i < uids.size();) {
    std::size_t j = i;
    while (j + 1 < uids.size() && uids[j + 1] == uids[j] + 1) ++j;
    if (!out.empty()) out.push_back(',');
    out += std::to_string(uids[i]);
    if (j > i) {
      out.push_back(':');
      out += std::to_string(uids[j]);
    }
    i = j + 1;
  }
  return out;
}

std::optional<std::string> map_name(std::string_view name, std::string_view from_delimiter,
                                    std::string_view to_delimiter) {
  if (from_delimiter.empty() || to_delimiter.empty() || from_delimiter == to_delimiter)
    return std::string(name);
  std::string out;
  out.reserve(name.size());
  for (;;) {
    const auto at = name.find(from_delimiter);
    const auto level = name.substr(0, at);
    if (level.find(to_delimiter) != std::string_view::npos) return std::nullopt;
    out.append(level);
    if (at == std::string_view::npos) break;
    out.append(to_delimiter);
    name.remove_prefix(at + from_delimiter.size());
  }
  return out;
}

// NAME starts with PREFIX; "INBOX" in either compares in any case.
bool under_prefix(std::string_view name, std::string_view prefix) {
  if (prefix.empty() || name.size() < prefix.size()) return false;
  constexpr std::string_view kInbox = "INBOX";
  std::size_t from = 0;
  if (prefix.size() >= kInbox.size() && equals_upper(prefix.substr(0, kInbox.size()), kInbox)) {
    if (!equals_upper(name.substr(0, kInbox.size()), kInbox)) return false;
    from = kInbox.size();
  }
  return name.substr(from, prefix.size() - from) == prefix.substr(from);
}

std::optional<std::string> map_folder(std::string_view name, const PersonalNamespace& from,
                                      const PersonalNamespace& to) {
  if (equals_upper(name, "INBOX")) return std::string("INBOX");
  // Outside the source's prefix, when it has one: not the user's folder
  // (Session::list leaves such names out), and no one-to-one name for it.
  if (!from.prefix.empty() && !under_prefix(name, from.prefix)) return std::nullopt;
  const std::string_view relative = name.substr(from.prefix.size());
  if (relative.empty()) return std::nullopt;
  auto level = map_name(relative, from.delimiter, to.delimiter);
  if (!level) return std::nullopt;
  std::string out = to.prefix + *level;
  // Cyrus' INBOX.INBOX (the parent of a child of Dovecot's INBOX) towards
  // a node without a prefix: that node's INBOX.
  if (equals_upper(out, "INBOX")) return std::string("INBOX");
  return out;
}

bool selectable(const std::vector<std::string>& flags) {
  for (const auto& f : flags)
    if (equals_upper(f, "\\NOSELECT") || equals_upper(f, "\\NONEXISTENT")) return false;
  return true;
}

std::string Msg::key() const {
  std::string out = std::to_string(size);
  if (message_id) {
    out += " id ";
    out += *message_id;
  } else {
    out += " sha256 ";
    out += sha256;
  }
  return out;
}

ListedMsg listed_message(const std::map<std::string, Value>& items) {
  ListedMsg out;
  const Value* header = nullptr;
  for (const auto& [key, value] : items) {
    if (key.compare(0, 11, "BODY[HEADER") == 0) {
      header = &value;
      break;
    }
  }
  const auto size_it = items.find("RFC822.SIZE");
  const auto date_it = items.find("INTERNALDATE");
  if (size_it == items.end() && date_it == items.end() && header == nullptr) {
    // Another session changed flags (RFC 3501 section 7.4.2: a server may
    // send FETCH at any time): not a message of the listing.
    out.unsolicited = true;
    return out;
  }
  Msg msg;
  const auto uid_it = items.find("UID");
  std::optional<std::uint64_t> uid;
  if (uid_it != items.end() && uid_it->second.is_text()) uid = parse_number(uid_it->second.text);
  if (!uid || *uid == 0 || *uid > std::numeric_limits<std::uint32_t>::max()) {
    out.error = "a FETCH response without a readable UID";
    return out;
  }
  msg.uid = static_cast<std::uint32_t>(*uid);
  std::optional<std::uint64_t> size;
  if (size_it != items.end() && size_it->second.is_text())
    size = parse_number(size_it->second.text);
  if (!size) {
    out.error = "a FETCH response without a readable RFC822.SIZE";
    return out;
  }
  msg.size = *size;
  if (const auto flags_it = items.find("FLAGS"); flags_it != items.end()) {
    auto flags = flags_of(flags_it->second);
    if (!flags) {
      out.error = "a FETCH response with FLAGS that are not valid IMAP flags";
      return out;
    }
    msg.flags = std::move(*flags);
  }
  if (date_it != items.end() && date_it->second.kind != Value::Kind::nil) {
    if (!date_it->second.is_text() || !valid_internaldate(date_it->second.text)) {
      out.error = "a FETCH response with an INTERNALDATE that is not understood";
      return out;
    }
    msg.date = date_it->second.text;
  }
  if (header != nullptr && header->is_text()) msg.message_id = message_id_of(header->text);
  if (msg.message_id && msg.message_id->size() > kMaxMessageId) msg.message_id.reset();
  out.msg = std::move(msg);
  return out;
}

std::size_t FolderPlan::flag_changes() const {
  std::size_t n = 0;
  for (const auto& group : restore) n += group.second.size();
  return n;
}

FolderPlan plan_folder(const std::vector<Msg>& source, const std::vector<Msg>& destination) {
  // Each key's destination messages wait in destination order; each source
  // message takes the first one still waiting under its key.
  std::map<std::string, std::deque<const Msg*>> waiting;
  for (const auto& m : destination) waiting[m.key()].push_back(&m);
  FolderPlan plan;
  std::map<std::vector<std::string>, std::vector<std::uint32_t>> groups;
  for (const auto& m : source) {
    auto it = waiting.find(m.key());
    if (it == waiting.end() || it->second.empty()) {
      plan.todo.push_back(m);
      continue;
    }
    const Msg* d = it->second.front();
    it->second.pop_front();
    ++plan.already;
    auto want = m.flags;
    auto have = d->flags;
    std::sort(want.begin(), want.end());
    std::sort(have.begin(), have.end());
    if (want != have) groups[std::move(want)].push_back(d->uid);
  }
  for (auto& [flags, uids] : groups) {
    std::sort(uids.begin(), uids.end());
    plan.restore.emplace_back(flags, std::move(uids));
  }
  for (const auto& [key, queue] : waiting)
    for (const Msg* d : queue) plan.extra.push_back(d->uid);
  std::sort(plan.extra.begin(), plan.extra.end());
  return plan;
}

}  // namespace isthmus::moves::imap
