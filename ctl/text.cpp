#include "ctl/text.hpp"

#include "common/strings.hpp"

#include <fmt/format.h>
#include <unicode/uchar.h>

#include <charconv>
#include <cmath>

namespace isthmus::ctl {

namespace {

// Decodes one UTF-8 sequence at text[i]; returns the code point and moves i,
// or nullopt (i unchanged) for a byte that does not start a valid one.
std::optional<char32_t> next_code_point(std::string_view text, std::size_t& i) {
  auto byte = [&](std::size_t k) { return static_cast<unsigned char>(text[k]); };
  unsigned char b = byte(i);
  if (b < 0x80) {
    ++i;
    return b;
  }
  std::size_t length = 0;
  char32_t cp = 0;
  char32_t minimum = 0;
  if ((b & 0xE0) == 0xC0) length = 2, cp = b & 0x1F, minimum = 0x80;
  else if ((b & 0xF0) == 0xE0) length = 3, cp = b & 0x0F, minimum = 0x800;
  else if ((b & 0xF8) == 0xF0) length = 4, cp = b & 0x07, minimum = 0x10000;
  else return std::nullopt;
  if (i + length > text.size()) return std::nullopt;
  for (std::size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return std::nullopt;
    cp = (cp << 6) | (byte(i + k) & 0x3F);
  }
  if (cp < minimum || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return std::nullopt;
  i += length;
  return cp;
}

// Python's str.isprintable(): not in categories Cc, Cf, Cs, Co, Cn, Zl, Zp,
// Zs, except the ASCII space.
bool printable(char32_t cp) {
  if (cp == U' ') return true;
  switch (u_charType(static_cast<UChar32>(cp))) {
    case U_CONTROL_CHAR:
    case U_FORMAT_CHAR:
    case U_SURROGATE:
    case U_PRIVATE_USE_CHAR:
    case U_UNASSIGNED:
    case U_LINE_SEPARATOR:
    case U_PARAGRAPH_SEPARATOR:
    case U_SPACE_SEPARATOR:
      return false;
    default:
      return true;
  }
}

// A double as Python's str() shows it: 2.0, 3725.5, 1e+20.
std::string python_float(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  std::string text = fmt::format("{}", value);
  if (text.find_first_of(".e") == std::string::npos) text += ".0";
  return text;
}

}  // namespace

std::string clean(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t start = i;
    auto cp = next_code_point(text, i);
    if (!cp) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned char>(text[i]));
      ++i;
    } else if (printable(*cp)) {
      out.append(text.substr(start, i - start));
    } else if (*cp == U'\n') {
      out += "\\n";
    } else if (*cp < 0x100) {
      out += fmt::format("\\x{:02x}", static_cast<unsigned>(*cp));
    } else if (*cp < 0x10000) {
      out += fmt::format("\\u{:04x}", static_cast<unsigned>(*cp));
    } else {
      out += fmt::format("\\U{:08x}", static_cast<unsigned>(*cp));
    }
  }
  return out;
}

bool valid_utf8(std::string_view text) {
  std::size_t i = 0;
  while (i < text.size())
    if (!next_code_point(text, i)) return false;
  return true;
}

std::string repair_utf8(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  std::size_t i = 0;
  while (i < text.size()) {
    std::size_t start = i;
    if (next_code_point(text, i)) {
      out.append(text.substr(start, i - start));
    } else {
      out += "\xEF\xBF\xBD";
      ++i;
    }
  }
  return out;
}

std::string cell(const Json& value) {
  switch (value.type()) {
    case Json::value_t::null:
    case Json::value_t::discarded:
      return "-";
    case Json::value_t::boolean:
      return value.get<bool>() ? "yes" : "no";
    case Json::value_t::string:
      return clean(value.get_ref<const std::string&>());
    case Json::value_t::number_integer:
      return std::to_string(value.get<std::int64_t>());
    case Json::value_t::number_unsigned:
      return std::to_string(value.get<std::uint64_t>());
    case Json::value_t::number_float:
      return python_float(value.get<double>());
    default:  // a list or an object where a scalar belongs: shown as JSON
      return clean(value.dump(-1, ' ', false, Json::error_handler_t::replace));
  }
}

std::size_t display_width(std::string_view text) {
  std::size_t width = 0;
  for (char c : text) width += (static_cast<unsigned char>(c) & 0xC0) != 0x80;
  return width;
}

std::string show_duration(double seconds) {
  if (!std::isfinite(seconds) || std::fabs(seconds) > 1e15) return "?";
  if (seconds < 1 && seconds > 0) return fmt::format("{:.0f}ms", seconds * 1000);
  if (seconds < 10) return fmt::format("{:.1f}s", seconds);
  auto s = static_cast<long long>(seconds);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02d}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02d}m", s / 3600, s % 3600 / 60);
  return fmt::format("{}d{:02d}h", s / 86400, s % 86400 / 3600);
}

std::string show_duration(const Json& seconds) {
  if (!seconds.is_number()) return "?";
  return show_duration(seconds.get<double>());
}

double parse_duration(const Json& value, std::string_view what) {
  auto bad = [&] {
    std::string shown = value.is_string() ? repr(value.get_ref<const std::string&>())
                        : value.is_boolean() ? (value.get<bool>() ? "True" : "False")
                                             : cell(value);
    return UsageError(
        fmt::format("{}: expected a duration like \"5s\" or \"250ms\", got {}", what, shown));
  };
  double seconds = 0;
  if (value.is_number()) {
    seconds = value.get<double>();
  } else if (value.is_string()) {
    std::string_view text = trim(value.get_ref<const std::string&>());
    // digits [ "." digits ] [ spaces ] [ ms | s | m | h ]
    std::size_t i = 0;
    auto digits = [&] {
      std::size_t from = i;
      while (i < text.size() && text[i] >= '0' && text[i] <= '9') ++i;
      return i > from;
    };
    if (!digits()) throw bad();
    if (i < text.size() && text[i] == '.') {
      ++i;
      if (!digits()) throw bad();
    }
    std::string number(text.substr(0, i));
    while (i < text.size() && (text[i] == ' ' || text[i] == '\t')) ++i;
    std::string_view unit = text.substr(i);
    double scale = 0;
    if (unit.empty() || unit == "s") scale = 1;
    else if (unit == "ms") scale = 0.001;
    else if (unit == "m") scale = 60;
    else if (unit == "h") scale = 3600;
    else throw bad();
    auto [end, ec] = std::from_chars(number.data(), number.data() + number.size(), seconds);
    if (ec != std::errc() || end != number.data() + number.size()) throw bad();
    seconds *= scale;
  } else {
    throw bad();
  }
  if (!std::isfinite(seconds) || seconds > 1e9) throw bad();
  if (seconds <= 0) throw UsageError(fmt::format("{}: must be more than zero", what));
  return seconds;
}

std::string table(const std::vector<std::string>& headers,
                  const std::vector<std::vector<std::string>>& rows,
                  const std::set<std::string>& right) {
  std::vector<std::size_t> widths;
  for (const auto& h : headers) widths.push_back(display_width(h));
  for (const auto& row : rows)
    for (std::size_t i = 0; i < row.size() && i < widths.size(); ++i)
      widths[i] = std::max(widths[i], display_width(row[i]));
  auto line = [&](const std::vector<std::string>& values) {
    std::string out;
    for (std::size_t i = 0; i < values.size() && i < widths.size(); ++i) {
      if (i > 0) out += "  ";
      std::string pad(widths[i] - display_width(values[i]), ' ');
      out += right.contains(headers[i]) ? pad + values[i] : values[i] + pad;
    }
    out.erase(out.find_last_not_of(' ') + 1);
    return out;
  };
  std::string out = line(headers);
  for (const auto& row : rows) out += "\n" + line(row);
  return out;
}

std::string plural(long long n, std::string_view word) {
  return fmt::format("{} {}{}", n, word, n == 1 ? "" : "s");
}

std::string percent_encode(std::string_view text) {
  std::string out;
  for (char c : text) {
    auto b = static_cast<unsigned char>(c);
    bool unreserved = (b >= 'A' && b <= 'Z') || (b >= 'a' && b <= 'z') || (b >= '0' && b <= '9') ||
                      b == '_' || b == '.' || b == '-' || b == '~';
    if (unreserved) out += c;
    else out += fmt::format("%{:02X}", b);
  }
  return out;
}

std::string repr(std::string_view text) { return "'" + clean(text) + "'"; }

}  // namespace isthmus::ctl
