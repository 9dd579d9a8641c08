// The pure side of the C++ mailbox copy (moves/imap_wire.hpp): what a node
// sends during a copy, and the arguments and plan the copy makes of it.
//
// Input: bytes as a node sends them: responses, each a line to CRLF, a line
// that ends with a literal count followed by that many bytes and the next
// line (cut as the session cuts them, with literal_at_end). The whole input
// also goes, as one string, to parse_values, literal_at_end,
// message_id_of, internaldate_epoch, quoted and valid_flag, and its bytes
// make up messages for plan_folder.
//
// Invariants:
// - parse_values never returns more string bytes than it was given;
// - literal_at_end finds a count only at the end of a line, at most 2^32;
// - a FETCH response is a message, an unsolicited FETCH or an error, never
//   two of them; a message has a UID, sorted valid flags without \Recent,
//   an empty or valid INTERNALDATE, a trimmed one-line Message-ID;
// - a date that reads writes back (in UTC) to the same instant;
// - quoted(x), when it succeeds, reads back as one string equal to x, and
//   fails only for CR, LF, NUL or 8-bit bytes; a valid flag reads back as
//   one atom (NIL: nil);
// - a folder name mapped to another one-character delimiter maps back;
// - uid_set of any UIDs reads back (a strict parser here) as the same set;
// - plan_folder: todo + already = source, extra + already = destination,
//   already = the sum over keys of the smaller count, todo in source order,
//   extra and each restore group ascending, groups ordered by flags.

#include "fuzz_check.hpp"
#include "moves/imap_wire.hpp"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>

using namespace isthmus;
using namespace isthmus::moves::imap;
namespace imap = isthmus::moves::imap;  // imap::quoted, not std::quoted found by ADL

namespace {

std::size_t text_bytes(const std::vector<Value>& values, std::size_t depth = 0) {
  FUZZ_CHECK(depth <= kMaxDepth);
  std::size_t n = 0;
  for (const auto& v : values) {
    n += v.text.size();
    if (v.kind == Value::Kind::list) n += text_bytes(v.items, depth + 1);
    if (v.kind != Value::Kind::list) FUZZ_CHECK(v.items.empty());
    if (v.kind == Value::Kind::nil || v.kind == Value::Kind::list) FUZZ_CHECK(v.text.empty());
  }
  return n;
}

std::optional<std::vector<Value>> parse_checked(std::string_view wire) {
  auto values = parse_values(wire);
  if (values) FUZZ_CHECK(text_bytes(*values) <= wire.size());
  return values;
}

// The responses as the session reads them.
std::vector<std::string_view> responses(std::string_view input) {
  std::vector<std::string_view> out;
  std::size_t start = 0;
  std::size_t pos = 0;
  while (start < input.size()) {
    const auto crlf = input.find("\r\n", pos);
    if (crlf == std::string_view::npos) {
      out.push_back(input.substr(start));
      break;
    }
    const auto n = literal_at_end(input.substr(pos, crlf - pos));
    if (!n) {
      out.push_back(input.substr(start, crlf - start));
      start = pos = crlf + 2;
      continue;
    }
    if (*n > input.size() - (crlf + 2)) {
      out.push_back(input.substr(start));
      break;
    }
    pos = crlf + 2 + static_cast<std::size_t>(*n);
  }
  return out;
}

const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                               "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

// EPOCH as "dd-Mon-yyyy hh:mm:ss +0000" (H. Hinnant's civil_from_days), or
// "" outside years 1..9999.
std::string utc_date(std::int64_t epoch) {
  std::int64_t days = epoch / 86400;
  std::int64_t secs = epoch % 86400;
  if (secs < 0) {
    secs += 86400;
    --days;
  }
  const std::int64_t z = days + 719468;
  const std::int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const std::int64_t doe = z - era * 146097;
  const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const std::int64_t mp = (5 * doy + 2) / 153;
  const std::int64_t d = doy - (153 * mp + 2) / 5 + 1;
  const std::int64_t m = mp < 10 ? mp + 3 : mp - 9;
  const std::int64_t y = yoe + era * 400 + (m <= 2 ? 1 : 0);
  if (y < 1 || y > 9999) return {};
  char buf[64];
  std::snprintf(buf, sizeof buf, "%02d-%s-%04d %02d:%02d:%02d +0000", static_cast<int>(d),
                kMonths[m - 1], static_cast<int>(y), static_cast<int>(secs / 3600),
                static_cast<int>(secs / 60 % 60), static_cast<int>(secs % 60));
  return buf;
}

void check_date(std::string_view date) {
  const auto epoch = internaldate_epoch(date);
  FUZZ_CHECK(valid_internaldate(date) == epoch.has_value());
  if (!epoch) return;
  const auto again = utc_date(*epoch);
  if (!again.empty()) FUZZ_CHECK(internaldate_epoch(again) == epoch);
}

bool is_recent(std::string_view flag) {
  constexpr std::string_view kRecent = "\\recent";
  if (flag.size() != kRecent.size()) return false;
  for (std::size_t i = 0; i < flag.size(); ++i)
    if ((flag[i] >= 'A' && flag[i] <= 'Z' ? flag[i] + 32 : flag[i]) != kRecent[i]) return false;
  return true;
}

bool blank(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

void check_message_id(std::string_view header) {
  const auto id = message_id_of(header);
  if (!id) return;
  FUZZ_CHECK(!id->empty() && id->size() <= header.size());
  FUZZ_CHECK(id->find('\n') == std::string::npos);
  FUZZ_CHECK(!blank(id->front()) && !blank(id->back()));
}

void check_quoted(std::string_view text) {
  const auto q = imap::quoted(text);
  bool sendable = true;
  for (char c : text)
    if (c == '\r' || c == '\n' || c == '\0' || static_cast<unsigned char>(c) > 0x7f)
      sendable = false;
  FUZZ_CHECK(q.has_value() == sendable);
  if (!q) return;
  const auto back = parse_checked(*q);
  FUZZ_CHECK(back && back->size() == 1);
  FUZZ_CHECK((*back)[0].kind == Value::Kind::string && (*back)[0].text == text);
}

void check_flag(std::string_view flag) {
  if (!valid_flag(flag)) return;
  const auto back = parse_checked(flag);
  FUZZ_CHECK(back && back->size() == 1);
  const auto& v = (*back)[0];
  if (v.kind == Value::Kind::nil) {
    FUZZ_CHECK(flag.size() == 3);
  } else {
    FUZZ_CHECK(v.kind == Value::Kind::atom && v.text == flag);
  }
  Value atom;
  atom.kind = Value::Kind::atom;
  atom.text.assign(flag);
  Value list;
  list.kind = Value::Kind::list;
  list.items.push_back(atom);
  const auto flags = flags_of(list);
  FUZZ_CHECK(flags && flags->size() == (is_recent(flag) ? 0u : 1u));
}

void check_msg(const ListedMsg& listed) {
  const int outcomes = (listed.msg ? 1 : 0) + (listed.unsolicited ? 1 : 0) +
                       (listed.error.empty() ? 0 : 1);
  FUZZ_CHECK(outcomes == 1);
  if (!listed.msg) return;
  const auto& m = *listed.msg;
  FUZZ_CHECK(m.uid > 0);
  FUZZ_CHECK(std::is_sorted(m.flags.begin(), m.flags.end()));
  for (const auto& f : m.flags) {
    FUZZ_CHECK(valid_flag(f));
    FUZZ_CHECK(!is_recent(f));
  }
  FUZZ_CHECK(m.date.empty() || valid_internaldate(m.date));
  if (!m.date.empty()) check_date(m.date);
  if (m.message_id) {
    FUZZ_CHECK(!m.message_id->empty() && m.message_id->find('\n') == std::string::npos);
    FUZZ_CHECK(m.message_id->size() <= kMaxMessageId);
    FUZZ_CHECK(!blank(m.message_id->front()) && !blank(m.message_id->back()));
  }
  FUZZ_CHECK(m.sha256.empty());
}

void check_list(const std::vector<Value>& values) {
  // LIST (flags) "delimiter" name
  if (values.size() < 4 || !(values[0].is_atom("LIST") || values[0].is_atom("LSUB"))) return;
  if (values[1].kind == Value::Kind::list) {
    std::vector<std::string> flags;
    for (const auto& f : values[1].items)
      if (f.is_text()) flags.push_back(f.text);
    (void)selectable(flags);
  }
  if (!values[3].is_text()) return;
  const std::string& name = values[3].text;
  check_quoted(name);
  const std::string from = values[2].is_text() ? values[2].text : std::string();
  const std::string to = from == "/" ? "." : "/";
  const auto mapped = map_name(name, from, to);
  if (!mapped) {
    FUZZ_CHECK(!from.empty() && from != to);
    return;
  }
  if (from.size() == 1) FUZZ_CHECK(map_name(*mapped, to, from) == name);
  if (from.empty()) FUZZ_CHECK(*mapped == name);
  // The personal prefix swapped ("" <-> Cyrus' "INBOX."): one to one, so
  // every name but INBOX (in any case) comes back as it was.
  if (from.size() != 1) return;
  const PersonalNamespace plain{"", from}, prefixed{"INBOX" + to, to};
  const auto there = map_folder(name, plain, prefixed);
  if (!there) return;
  FUZZ_CHECK(under_prefix(*there, prefixed.prefix) || *there == "INBOX");
  if (*there == "INBOX") return;
  FUZZ_CHECK(map_folder(*there, prefixed, plain) == name);
}

// A sequence set as uid_set writes it: ascending, ranges a:b with a < b,
// neighbours apart by at least two, numbers without leading zeros. nullopt
// if SET is anything else or holds more than LIMIT numbers.
std::optional<std::vector<std::uint32_t>> read_uid_set(std::string_view set, std::size_t limit) {
  std::vector<std::uint32_t> out;
  if (set.empty()) return out;
  auto number = [&](std::string_view& s) -> std::optional<std::uint32_t> {
    std::size_t n = 0;
    while (n < s.size() && s[n] >= '0' && s[n] <= '9') ++n;
    if (n == 0 || (n > 1 && s[0] == '0')) return std::nullopt;
    auto v = parse_number(s.substr(0, n));
    if (!v || *v > 0xffffffffu) return std::nullopt;
    s.remove_prefix(n);
    return static_cast<std::uint32_t>(*v);
  };
  for (;;) {
    auto a = number(set);
    if (!a) return std::nullopt;
    std::uint32_t b = *a;
    if (!set.empty() && set[0] == ':') {
      set.remove_prefix(1);
      auto hi = number(set);
      if (!hi || *hi <= *a) return std::nullopt;
      b = *hi;
    }
    if (!out.empty() && static_cast<std::uint64_t>(*a) <= std::uint64_t{out.back()} + 1)
      return std::nullopt;
    if (std::uint64_t{b} - *a + 1 > limit - out.size()) return std::nullopt;
    for (std::uint64_t u = *a; u <= b; ++u) out.push_back(static_cast<std::uint32_t>(u));
    if (set.empty()) return out;
    if (set[0] != ',') return std::nullopt;
    set.remove_prefix(1);
  }
}

void check_uid_set(const std::vector<std::uint32_t>& uids) {
  const auto text = uid_set(uids);
  std::vector<std::uint32_t> want(uids);
  std::sort(want.begin(), want.end());
  want.erase(std::unique(want.begin(), want.end()), want.end());
  const auto back = read_uid_set(text, want.size());
  FUZZ_CHECK(back && *back == want);
}

void check_plan(const std::vector<Msg>& source, const std::vector<Msg>& destination) {
  const auto plan = plan_folder(source, destination);
  FUZZ_CHECK(plan.todo.size() + plan.already == source.size());
  FUZZ_CHECK(plan.extra.size() + plan.already == destination.size());
  std::map<std::string, std::pair<std::size_t, std::size_t>> counts;
  for (const auto& m : source) ++counts[m.key()].first;
  for (const auto& m : destination) ++counts[m.key()].second;
  std::size_t pairs = 0;
  for (const auto& [key, c] : counts) pairs += std::min(c.first, c.second);
  FUZZ_CHECK(plan.already == pairs);
  // todo: a subsequence of the source
  std::size_t k = 0;
  for (const auto& m : source)
    if (k < plan.todo.size() && plan.todo[k].uid == m.uid && plan.todo[k].key() == m.key()) ++k;
  FUZZ_CHECK(k == plan.todo.size());
  FUZZ_CHECK(std::is_sorted(plan.extra.begin(), plan.extra.end()));
  std::multiset<std::uint32_t> dst_uids;
  for (const auto& m : destination) dst_uids.insert(m.uid);
  for (auto u : plan.extra) {
    auto it = dst_uids.find(u);
    FUZZ_CHECK(it != dst_uids.end());
    dst_uids.erase(it);
  }
  for (std::size_t g = 0; g < plan.restore.size(); ++g) {
    const auto& [flags, uids] = plan.restore[g];
    FUZZ_CHECK(!uids.empty() && std::is_sorted(uids.begin(), uids.end()));
    FUZZ_CHECK(std::is_sorted(flags.begin(), flags.end()));
    if (g > 0) FUZZ_CHECK(plan.restore[g - 1].first < flags);
    for (auto u : uids) {
      auto it = dst_uids.find(u);  // a paired destination message, each once
      FUZZ_CHECK(it != dst_uids.end());
      dst_uids.erase(it);
    }
  }
  FUZZ_CHECK(plan.flag_changes() <= plan.already);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto input = fuzz::as_view(data, size);

  // The whole input as one string.
  parse_checked(input);
  if (auto n = literal_at_end(input)) {
    FUZZ_CHECK(!input.empty() && input.back() == '}');
    FUZZ_CHECK(*n <= (std::uint64_t{1} << 32));
  }
  check_message_id(input);
  check_date(input);
  check_quoted(input);
  check_flag(input);

  // The input as responses.
  std::vector<Msg> listed;
  std::vector<std::uint32_t> numbers;
  for (auto response : responses(input)) {
    if (response.size() >= 2 && response[0] == '*' && response[1] == ' ') {
      response.remove_prefix(2);
    } else if (auto sp = response.find(' '); sp != std::string_view::npos) {
      response.remove_prefix(sp + 1);  // a tag
    }
    const auto values = parse_checked(response);
    if (!values) continue;
    for (const auto& v : *values) {
      if (!v.is_text()) continue;
      if (auto n = parse_number(v.text); n && *n <= 0xffffffffu)
        numbers.push_back(static_cast<std::uint32_t>(*n));
      if (v.text.size() <= 64) check_date(v.text);
    }
    check_list(*values);
    const auto items = fetch_items(*values);
    for (const auto& [key, value] : items)
      if (value.is_text() && key.compare(0, 4, "BODY") == 0) check_message_id(value.text);
    const auto msg = listed_message(items);
    check_msg(msg);
    if (msg.msg) {
      listed.push_back(*msg.msg);
      numbers.push_back(msg.msg->uid);
    }
  }

  // UID sets: the numbers read, and runs made of the input's bytes.
  std::uint32_t next = 1;
  for (std::size_t i = 0; i < input.size() && i < 128; ++i) {
    const auto b = static_cast<unsigned char>(input[i]);
    next += b & 0x80 ? (b & 7) : 1;
    numbers.push_back(b & 0x40 ? 0xffffffffu - next : next);
  }
  check_uid_set(numbers);

  // Folder plans: the messages read, and messages made of the input's bytes
  // (a few sizes, ids and hashes so that keys repeat on both sides).
  std::vector<Msg> source;
  std::vector<Msg> destination;
  for (std::size_t i = 0; i < listed.size(); ++i) {
    Msg m = listed[i];
    if (!m.message_id) m.sha256 = m.uid % 2 ? "aa" : "bb";
    (i % 2 ? destination : source).push_back(std::move(m));
  }
  for (std::size_t i = 0; i < input.size() && i < 128; ++i) {
    const auto b = static_cast<unsigned char>(input[i]);
    Msg m;
    m.uid = static_cast<std::uint32_t>(i + 1);
    m.size = b & 3;
    if (b & 4)
      m.message_id = (b & 8) ? "<a@x>" : "<b@x>";
    else
      m.sha256 = (b & 8) ? "aa" : "bb";
    if (b & 16) m.flags.push_back("$X");
    if (b & 32) m.flags.push_back("\\Seen");
    (b & 64 ? destination : source).push_back(std::move(m));
  }
  check_plan(source, destination);
  check_plan(destination, source);
  check_plan(source, source);
  return 0;
}
