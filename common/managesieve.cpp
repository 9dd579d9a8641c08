#include "common/managesieve.hpp"

#include "common/strings.hpp"

#include <fmt/format.h>

namespace isthmus::managesieve {
namespace {

// RFC 5804 ATOM-CHAR: printable ASCII but SP, '"', '(', ')', '\' and '{'.
bool atom_char(char c) {
  return c > ' ' && c < 0x7f && c != '"' && c != '(' && c != ')' && c != '\\' && c != '{';
}

// A quoted string longer than this goes as a literal (RFC 5804 section 4:
// servers take quoted strings of at least 1024 octets).
constexpr std::size_t kMaxQuoted = 1024;
constexpr std::size_t kMaxItems = 64;

class Parser {
 public:
  Parser(std::string_view buffer, std::size_t max) : buffer_(buffer), max_(max) {}

  Parsed run() {
    Parsed out;
    out.status = items(out.items, 0);
    if (out.status == Status::complete) {
      out.consumed = at_;
    } else if (out.status == Status::bad) {
      out.error = std::move(error_);
      // Skip to the end of the line; without its end yet, wait for it.
      const auto lf = buffer_.find('\n', at_);
      if (lf == std::string_view::npos) {
        out.status = buffer_.size() > max_ ? Status::too_long : Status::need_more;
      } else {
        out.consumed = lf + 1;
      }
    }
    if (out.status == Status::need_more && buffer_.size() > max_) out.status = Status::too_long;
    if (out.status == Status::need_more) out.wanted = wanted_;
    if (out.status != Status::complete) out.items.clear();
    return out;
  }

 private:
  Status bad(std::string why) {
    error_ = std::move(why);
    return Status::bad;
  }
  bool at_end() const { return at_ >= buffer_.size(); }

  // Items up to the end of the line (depth 0) or the closing parenthesis.
  Status items(std::vector<Item>& out, int depth) {
    for (;;) {
      if (at_end()) return Status::need_more;
      if (at_ > max_) return Status::too_long;
      const char c = buffer_[at_];
      if (depth == 0 && (c == '\r' || c == '\n')) {
        if (c == '\r') {
          if (at_ + 1 >= buffer_.size()) return Status::need_more;
          if (buffer_[at_ + 1] != '\n') return bad("CR without LF");
          ++at_;
        }
        ++at_;
        return Status::complete;
      }
      if (depth > 0 && c == ')') {
        ++at_;
        return Status::complete;
      }
      if (!out.empty()) {
        if (c != ' ') return bad("items must be separated by one space");
        ++at_;
        if (at_end()) return Status::need_more;
      }
      if (out.size() >= kMaxItems || ++total_items_ > kMaxItems * 2) return bad("too many items");
      Item item;
      const Status status = one(item, depth);
      if (status != Status::complete) return status;
      out.push_back(std::move(item));
    }
  }

  Status one(Item& item, int depth) {
    const char c = buffer_[at_];
    if (c == '"') return quoted_string(item);
    if (c == '{') return literal(item);
    if (c == '(') {
      if (depth > 0) return bad("lists nest once at most");
      ++at_;
      item.kind = Item::Kind::list;
      return items(item.items, depth + 1);
    }
    if (!atom_char(c)) return bad(fmt::format("unexpected character 0x{:02x}",
                                              static_cast<unsigned char>(c)));
    item.kind = Item::Kind::atom;
    const std::size_t start = at_;
    while (!at_end() && atom_char(buffer_[at_])) ++at_;
    if (at_end()) return Status::need_more;
    item.text = std::string(buffer_.substr(start, at_ - start));
    if (item.text.size() > kMaxQuoted) return bad("atom too long");
    return Status::complete;
  }

  Status quoted_string(Item& item) {
    item.kind = Item::Kind::string;
    ++at_;
    for (;;) {
      if (at_end()) return Status::need_more;
      const char c = buffer_[at_];
      if (c == '"') {
        ++at_;
        return Status::complete;
      }
      if (c == '\r' || c == '\n' || c == '\0') return bad("CR, LF or NUL in a quoted string");
      if (c == '\\') {
        if (at_ + 1 >= buffer_.size()) return Status::need_more;
        const char next = buffer_[at_ + 1];
        if (next != '"' && next != '\\') return bad("only \\\" and \\\\ are escapes");
        item.text += next;
        at_ += 2;
      } else {
        item.text += c;
        ++at_;
      }
      if (item.text.size() > max_) return Status::too_long;
    }
  }

  Status literal(Item& item) {
    item.kind = Item::Kind::string;
    ++at_;
    std::size_t size = 0;
    std::size_t digits = 0;
    while (!at_end() && buffer_[at_] >= '0' && buffer_[at_] <= '9') {
      if (++digits > 10) return bad("literal size too long");
      size = size * 10 + static_cast<std::size_t>(buffer_[at_] - '0');
      ++at_;
    }
    if (at_end()) return Status::need_more;
    if (digits == 0) return bad("literal without a size");
    if (buffer_[at_] == '+') {
      ++at_;
      if (at_end()) return Status::need_more;
    }
    if (buffer_[at_] != '}') return bad("literal size not closed by }");
    ++at_;
    if (at_end()) return Status::need_more;
    if (buffer_[at_] == '\r') {
      ++at_;
      if (at_end()) return Status::need_more;
    }
    if (buffer_[at_] != '\n') return bad("literal size not followed by CRLF");
    ++at_;
    if (size > max_) return Status::too_long;
    if (buffer_.size() - at_ < size) {
      wanted_ = at_ + size;
      return Status::need_more;
    }
    item.text = std::string(buffer_.substr(at_, size));
    if (item.text.find('\0') != std::string::npos) return bad("NUL in a literal");
    at_ += size;
    return Status::complete;
  }

  std::string_view buffer_;
  std::size_t max_;
  std::size_t at_ = 0;
  std::size_t wanted_ = 0;  // a pending literal's end (need_more)
  std::size_t total_items_ = 0;
  std::string error_;
};

}  // namespace

Parsed parse_line(std::string_view buffer, std::size_t max) { return Parser(buffer, max).run(); }

std::string quoted(std::string_view text) {
  std::string out = "\"";
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  out += '"';
  return out;
}

std::string string_item(std::string_view text, bool from_client) {
  if (text.size() <= kMaxQuoted && text.find_first_of(std::string_view("\r\n\0", 3)) ==
                                       std::string_view::npos)
    return quoted(text);
  return fmt::format("{{{}{}}}\r\n{}", text.size(), from_client ? "+" : "", text);
}

std::optional<Command> to_command(const std::vector<Item>& items) {
  if (items.empty() || items[0].kind != Item::Kind::atom) return std::nullopt;
  Command command;
  command.name = ascii_uppercase(items[0].text);
  for (std::size_t i = 1; i < items.size(); ++i) {
    if (items[i].kind != Item::Kind::string) return std::nullopt;
    command.arguments.push_back(items[i].text);
  }
  return command;
}

std::optional<Response> to_response(const std::vector<Item>& items) {
  if (items.empty()) return std::nullopt;
  Response response;
  if (items[0].kind == Item::Kind::string) {
    // A capability line: "NAME" [SP "value"]; a lone string after a
    // command is a SASL challenge instead (the caller knows which).
    if (items.size() > 2 || (items.size() == 2 && items[1].kind != Item::Kind::string))
      return std::nullopt;
    response.kind = items.size() == 1 ? Response::Kind::challenge : Response::Kind::capability;
    response.name = ascii_uppercase(items[0].text);
    response.text = items.size() == 2 ? items[1].text : items[0].text;
    return response;
  }
  if (items[0].kind != Item::Kind::atom) return std::nullopt;
  const std::string word = ascii_uppercase(items[0].text);
  if (word == "OK") response.kind = Response::Kind::ok;
  else if (word == "NO") response.kind = Response::Kind::no;
  else if (word == "BYE") response.kind = Response::Kind::bye;
  else return std::nullopt;
  std::size_t next = 1;
  if (next < items.size() && items[next].kind == Item::Kind::list) {
    const auto& code = items[next].items;
    if (code.empty() || code[0].kind != Item::Kind::atom) return std::nullopt;
    response.code = ascii_uppercase(code[0].text);
    for (std::size_t i = 1; i < code.size(); ++i) {
      if (code[i].kind == Item::Kind::list) return std::nullopt;
      response.code_args.push_back(code[i].text);
    }
    ++next;
  }
  if (next < items.size()) {
    if (items[next].kind != Item::Kind::string) return std::nullopt;
    response.text = items[next].text;
    ++next;
  }
  if (next != items.size()) return std::nullopt;
  return response;
}

}  // namespace isthmus::managesieve
