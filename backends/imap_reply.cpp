#include "backends/imap_reply.hpp"

#include "common/strings.hpp"

#include <algorithm>
#include <cctype>

namespace isthmus::backends {
namespace {

std::string_view next_word(std::string_view& rest) {
  auto sp = rest.find(' ');
  std::string_view word = rest.substr(0, sp);
  rest = sp == std::string_view::npos ? std::string_view() : rest.substr(sp + 1);
  return word;
}

void parse_status_rest(std::string_view rest, ImapReply& reply) {
  if (!rest.empty() && rest.front() == '[') {
    auto close = rest.find(']');
    if (close != std::string_view::npos) {
      reply.code = std::string(rest.substr(1, close - 1));
      rest = rest.substr(close + 1);
      if (!rest.empty() && rest.front() == ' ') rest.remove_prefix(1);
    }
  }
  reply.text = std::string(rest);
}

bool status_from_word(std::string_view word, ImapReply::Status& status) {
  if (iequals(word, "OK")) status = ImapReply::Status::ok;
  else if (iequals(word, "NO")) status = ImapReply::Status::no;
  else if (iequals(word, "BAD")) status = ImapReply::Status::bad;
  else if (iequals(word, "BYE")) status = ImapReply::Status::bye;
  else if (iequals(word, "PREAUTH")) status = ImapReply::Status::preauth;
  else return false;
  return true;
}

std::vector<std::string> split_words(std::string_view text) {
  std::vector<std::string> words;
  while (!text.empty()) {
    auto word = next_word(text);
    if (!word.empty()) words.emplace_back(word);
  }
  return words;
}

}  // namespace

ImapReply parse_imap_reply(std::string_view line) {
  ImapReply reply;
  if (line.empty()) return reply;
  if (line.front() == '+') {
    reply.kind = ImapReply::Kind::continuation;
    reply.text = std::string(trim(line.substr(1)));
    return reply;
  }
  std::string_view rest = line;
  std::string_view first = next_word(rest);
  if (first.empty()) return reply;
  std::string_view word = next_word(rest);
  if (first == "*") {
    reply.kind = ImapReply::Kind::untagged;
    if (status_from_word(word, reply.status)) {
      parse_status_rest(rest, reply);
    } else {
      reply.status = ImapReply::Status::data;
      // "*" alone has no data (substr(2) would throw out of the node login).
      reply.text = std::string(line.substr(std::min<std::size_t>(2, line.size())));
    }
    return reply;
  }
  ImapReply::Status status;
  if (!status_from_word(word, status) || status == ImapReply::Status::bye ||
      status == ImapReply::Status::preauth)
    return reply;  // garbage: a tagged line must be OK, NO or BAD
  reply.kind = ImapReply::Kind::tagged;
  reply.tag = std::string(first);
  reply.status = status;
  parse_status_rest(rest, reply);
  return reply;
}

std::string code_name(const ImapReply& reply) {
  std::string name = reply.code.substr(0, reply.code.find(' '));
  for (auto& c : name) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return name;
}

std::string capability_text(const ImapReply& reply) {
  std::string_view source;
  if (istarts_with(reply.code, "CAPABILITY ")) {
    source = std::string_view(reply.code).substr(11);
  } else if (reply.kind == ImapReply::Kind::untagged && reply.status == ImapReply::Status::data &&
             istarts_with(reply.text, "CAPABILITY ")) {
    source = std::string_view(reply.text).substr(11);
  }
  return std::string(trim(source));
}

std::vector<std::string> capabilities_in(const ImapReply& reply) {
  return split_words(capability_text(reply));
}

std::vector<std::string> split_capabilities(std::string_view text) { return split_words(text); }

bool has_capability(const std::vector<std::string>& caps, std::string_view name) {
  for (const auto& cap : caps)
    if (iequals(cap, name)) return true;
  return false;
}

}  // namespace isthmus::backends
