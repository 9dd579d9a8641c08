// The user's Sieve scripts over ManageSieve, for a move (sieve_session.hpp).

#include "moves/sieve_session.hpp"

#include "backends/sieve_node_login.hpp"
#include "common/log.hpp"
#include "common/strings.hpp"

#include <fmt/format.h>

#include <set>

namespace asio = boost::asio;
namespace ms = isthmus::managesieve;

namespace isthmus::moves::sieve {

SieveSession::SieveSession(imap::Endpoint endpoint, std::unique_ptr<Transport> transport,
                           Clock::duration timeout)
    : endpoint_(std::move(endpoint)), transport_(std::move(transport)), timeout_(timeout) {}

SieveSession::~SieveSession() = default;

void SieveSession::abort(std::string why) {
  if (broken_.empty()) broken_ = std::move(why);
  if (transport_) transport_->close();
}

void SieveSession::fail(std::string_view what) const {
  if (!broken_.empty())
    throw imap::ImapError(fmt::format("ManageSieve on {}: {} ({})", endpoint_.describe(), what,
                                      broken_));
  throw imap::ImapError(fmt::format("ManageSieve on {}: {}", endpoint_.describe(), what));
}

asio::awaitable<std::unique_ptr<SieveSession>> SieveSession::open(
    const imap::Endpoint& endpoint, asio::ssl::context* tls_context, const imap::MasterLogin& login,
    const std::string& login_user, Clock::duration timeout, std::string session_id) {
  const Deadline deadline = Deadline::after(timeout);
  auto transport = co_await imap::connect_node(endpoint, tls_context, deadline);
  const auto credentials = imap::master_credentials(login, login_user);
  backends::NodeTlsSetup tls{endpoint.tls, tls_context, imap::tls_name_of(endpoint),
                             endpoint.verify};
  backends::NodeLoginParams params{credentials,
                                   imap::forwarded_self(*transport, std::move(session_id)), tls,
                                   deadline, deadline};
  auto result = co_await backends::log_in_managesieve(*transport, params);
  if (result.failure != Failure::none)
    throw imap::ImapError(fmt::format("ManageSieve on {}: the master login for {} failed ({}): {}",
                                      endpoint.describe(), sanitize(login_user),
                                      name_of(result.failure), result.detail));
  std::unique_ptr<SieveSession> session(new SieveSession(endpoint, std::move(transport), timeout));
  session->buffer_ = std::move(result.pending);
  co_return session;
}

asio::awaitable<std::vector<ms::Item>> SieveSession::read_line() {
  const Deadline deadline = Deadline::after(timeout_);
  ms::ParseGate gate;
  for (;;) {
    if (gate.worth_parsing(buffer_)) {
      auto parsed = ms::parse_line(buffer_, kMaxSieveResponse);
      if (parsed.status == ms::Status::complete) {
        buffer_.erase(0, parsed.consumed);
        co_return std::move(parsed.items);
      }
      if (parsed.status == ms::Status::bad) fail("an answer that does not parse: " + parsed.error);
      if (parsed.status == ms::Status::too_long)
        fail(fmt::format("an answer over {} bytes", kMaxSieveResponse));
      gate.waiting(parsed, buffer_.size());
    }
    const auto old = buffer_.size();
    buffer_.resize(old + imap::kChunk);
    auto [ec, n] =
        co_await transport_->read_some(asio::buffer(buffer_.data() + old, imap::kChunk), deadline);
    buffer_.resize(old + n);
    if (ec == asio::error::timed_out) fail("no answer in time");
    if (ec == asio::error::eof) fail("the node closed the connection");
    if (ec) fail("reading failed: " + ec.message());
  }
}

asio::awaitable<std::vector<std::vector<ms::Item>>> SieveSession::run(const std::string& what,
                                                                     const std::string& line) {
  auto [ec, n] = co_await transport_->write_all(asio::buffer(line), Deadline::after(timeout_));
  if (ec) fail(what + ": writing failed: " + ec.message());
  std::vector<std::vector<ms::Item>> data;
  std::size_t bytes = 0;  // what this command's answer added up to
  for (;;) {
    auto items = co_await read_line();
    for (const auto& item : items) bytes += item.text.size() + 8;
    if (bytes > kMaxScriptBytes + kMaxSieveResponse)
      fail(fmt::format("{}: an answer over {} bytes", what, kMaxScriptBytes + kMaxSieveResponse));
    if (!items.empty() && items[0].kind == ms::Item::Kind::atom) {
      const std::string word = ascii_uppercase(items[0].text);
      if (word == "OK") co_return data;
      if (word == "NO" || word == "BYE") {
        std::string text;
        for (std::size_t i = 1; i < items.size(); ++i)
          if (items[i].kind == ms::Item::Kind::string) text = items[i].text;
        fail(fmt::format("{}: {} {}", what, word, sanitize(text, 200)));
      }
    }
    if (data.size() > kMaxScripts) fail(what + ": an answer of too many lines");
    data.push_back(std::move(items));
  }
}

asio::awaitable<SieveSession::Listing> SieveSession::scripts() {
  Listing out;
  auto lines = co_await run("LISTSCRIPTS", "LISTSCRIPTS\r\n");
  std::vector<std::string> names;
  for (const auto& items : lines) {
    if (items.empty() || items[0].kind != ms::Item::Kind::string)
      fail("LISTSCRIPTS: a line that is not a script name");
    names.push_back(items[0].text);
    if (items.size() > 1 && items[1].kind == ms::Item::Kind::atom &&
        iequals(items[1].text, "ACTIVE")) {
      if (out.active) fail("LISTSCRIPTS: two active scripts");
      out.active = items[0].text;
    }
  }
  if (names.size() > kMaxScripts)
    fail(fmt::format("LISTSCRIPTS: {} scripts, more than {}", names.size(), kMaxScripts));
  std::size_t total = 0;
  for (const auto& name : names) {
    auto got = co_await run("GETSCRIPT " + sanitize(name),
                            "GETSCRIPT " + ms::string_item(name, true) + "\r\n");
    if (got.size() != 1 || got[0].size() != 1 || got[0][0].kind != ms::Item::Kind::string)
      fail("GETSCRIPT " + sanitize(name) + ": not one string");
    total += got[0][0].text.size();
    if (total > kMaxScriptBytes)
      fail(fmt::format("the scripts add up to more than {} bytes", kMaxScriptBytes));
    if (!out.scripts.emplace(name, std::move(got[0][0].text)).second)
      fail("LISTSCRIPTS: a script named twice: " + sanitize(name));
  }
  co_return out;
}

asio::awaitable<void> SieveSession::put(const std::string& name, const std::string& content) {
  co_await run("PUTSCRIPT " + sanitize(name), fmt::format("PUTSCRIPT {} {{{}+}}\r\n{}\r\n",
                                                          ms::string_item(name, true),
                                                          content.size(), content));
}

asio::awaitable<void> SieveSession::set_active(const std::optional<std::string>& name) {
  co_await run("SETACTIVE " + sanitize(name.value_or("")),
               "SETACTIVE " + ms::string_item(name.value_or(""), true) + "\r\n");
}

asio::awaitable<void> SieveSession::logout() {
  try {
    co_await run("LOGOUT", "LOGOUT\r\n");
  } catch (const imap::ImapError&) {
    // The node may close at once: the session is over either way.
  }
}

asio::awaitable<CopyResult> copy_scripts(SieveSession& source, SieveSession& destination) {
  auto from = co_await source.scripts();
  auto to = co_await destination.scripts();
  CopyResult out;
  for (const auto& [name, content] : from.scripts) {
    auto it = to.scripts.find(name);
    if (it != to.scripts.end() && it->second == content) {
      out.unchanged.push_back(name);
      continue;
    }
    co_await destination.put(name, content);
    out.copied.push_back(name);
  }
  if (from.active != to.active) co_await destination.set_active(from.active);
  out.active = from.active;
  for (const auto& [name, content] : to.scripts)
    if (!from.scripts.contains(name)) out.extra.push_back(name);
  co_return out;
}

asio::awaitable<std::vector<std::string>> same_scripts(SieveSession& source,
                                                       SieveSession& destination) {
  auto from = co_await source.scripts();
  auto to = co_await destination.scripts();
  std::vector<std::string> problems;
  for (const auto& [name, content] : from.scripts) {
    auto it = to.scripts.find(name);
    if (it == to.scripts.end())
      problems.push_back(fmt::format("script {} missing on the destination", sanitize(name)));
    else if (it->second != content)
      problems.push_back(fmt::format("script {} differs on the destination", sanitize(name)));
  }
  if (from.active != to.active)
    problems.push_back(fmt::format("active script '{}' on the source, '{}' on the destination",
                                   sanitize(from.active.value_or("None")),
                                   sanitize(to.active.value_or("None"))));
  co_return problems;
}

}  // namespace isthmus::moves::sieve
