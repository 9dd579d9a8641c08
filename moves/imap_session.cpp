#include "moves/imap_session.hpp"

#include "backends/imap_node_login.hpp"
#include "backends/imap_reply.hpp"
#include "common/log.hpp"
#include "common/net.hpp"
#include "common/strings.hpp"

#include <boost/asio/ip/tcp.hpp>
#include <algorithm>
#include <boost/asio/this_coro.hpp>
#include <fmt/format.h>

namespace isthmus::moves::imap {

namespace asio = boost::asio;

namespace {

// A line that ends like a literal's count ("{...}") that literal_at_end
// could not read (no digits, over 2^32): the bytes after it cannot be told
// from responses, so the session stops.
bool unreadable_literal(std::string_view line) {
  return !line.empty() && line.back() == '}' && line.rfind('{') != std::string_view::npos &&
         !literal_at_end(line);
}

}  // namespace

std::string Endpoint::describe() const { return fmt::format("{} ({}:{})", name, host, port); }

std::unique_ptr<asio::ssl::context> make_node_tls_context(const std::string& ca_file) {
  auto context = std::make_unique<asio::ssl::context>(asio::ssl::context::tls_client);
  context->set_options(asio::ssl::context::default_workarounds | asio::ssl::context::no_sslv2 |
                       asio::ssl::context::no_sslv3 | asio::ssl::context::no_tlsv1 |
                       asio::ssl::context::no_tlsv1_1);
  if (ca_file.empty()) {
    context->set_default_verify_paths();
  } else {
    boost::system::error_code ec;
    context->load_verify_file(ca_file, ec);
    if (ec) throw ImapError(fmt::format("cannot read the CA file {}: {}", ca_file, ec.message()));
  }
  return context;
}

Session::Session(Endpoint endpoint, std::unique_ptr<Transport> transport, Clock::duration timeout)
    : endpoint_(std::move(endpoint)), transport_(std::move(transport)), timeout_(timeout) {}

Session::~Session() {
  if (transport_) transport_->close();
}

void Session::abort(std::string why) {
  if (broken_.empty()) broken_ = std::move(why);
  if (transport_) transport_->close();
}

void Session::fail(std::string_view what) const {
  // A session that failed is not used again: its stream may be anywhere
  // in a response.
  if (broken_.empty()) broken_ = std::string(what);
  throw ImapError(fmt::format("node {}: {}", endpoint_.describe(), what));
}

void Session::check_usable() const {
  if (!broken_.empty())
    throw ImapError(fmt::format("node {}: the session ended earlier ({})", endpoint_.describe(),
                                broken_));
}

bool Session::has(std::string_view capability) const {
  for (const auto& c : caps_)
    if (iequals(c, capability)) return true;
  return false;
}

std::string Session::next_tag() { return fmt::format("m{}", ++tag_counter_); }

asio::awaitable<void> Session::send(std::string_view bytes) {
  check_usable();
  auto [ec, n] = co_await transport_->write_all(asio::buffer(bytes), deadline());
  if (ec)
    fail(ec == asio::error::timed_out ? "no progress writing to the node in time"
                                      : "writing failed: " + ec.message());
}

asio::awaitable<std::string> Session::read_line() {
  check_usable();
  std::size_t scanned = 0;
  for (;;) {
    auto lf = buffer_.find('\n', scanned);
    if (lf != std::string::npos && lf > kMaxResponse) fail("a line longer than 1 MiB");
    if (lf != std::string::npos) {
      std::string line = buffer_.substr(0, lf);
      buffer_.erase(0, lf + 1);
      if (!line.empty() && line.back() == '\r') line.pop_back();
      co_return line;
    }
    scanned = buffer_.size();
    if (buffer_.size() > kMaxResponse) fail("a line longer than 1 MiB");
    const auto old = buffer_.size();
    buffer_.resize(old + kChunk);
    auto [ec, n] = co_await transport_->read_some(asio::buffer(buffer_.data() + old, kChunk),
                                                  deadline());
    buffer_.resize(old + n);
    if (ec == asio::error::timed_out) fail("no answer in time");
    if (ec == asio::error::eof) fail("the node closed the connection");
    if (ec) fail("reading failed: " + ec.message());
  }
}

// Bytes into buffer_ until it holds at least WANT of them.
#define ISTHMUS_FILL(want)                                                                       \
  while (buffer_.size() < (want)) {                                                              \
    const auto old_ = buffer_.size();                                                            \
    buffer_.resize(old_ + kChunk);                                                               \
    auto [ec_, n_] = co_await transport_->read_some(asio::buffer(buffer_.data() + old_, kChunk), \
                                                    deadline());                                 \
    buffer_.resize(old_ + n_);                                                                   \
    if (ec_ == asio::error::timed_out) fail("no answer in time");                                \
    if (ec_ == asio::error::eof) fail("the node closed the connection");                         \
    if (ec_) fail("reading failed: " + ec_.message());                                           \
  }

asio::awaitable<std::string> Session::read_response() {
  std::string wire = co_await read_line();
  for (;;) {
    auto literal = literal_at_end(wire);
    if (!literal && unreadable_literal(wire)) fail("a literal whose size cannot be read");
    if (!literal) co_return wire;
    if (wire.size() + *literal > kMaxResponse) fail("a response longer than 1 MiB");
    const auto n = static_cast<std::size_t>(*literal);
    wire += "\r\n";
    ISTHMUS_FILL(n);
    wire.append(buffer_, 0, n);
    buffer_.erase(0, n);
    wire += co_await read_line();
    if (wire.size() > kMaxResponse) fail("a response longer than 1 MiB");
  }
}

namespace {

// "[UIDVALIDITY 123]" at the start of TEXT: ("UIDVALIDITY", "123").
std::pair<std::string, std::string> response_code(std::string_view text) {
  if (text.empty() || text.front() != '[') return {};
  auto close = text.find(']');
  if (close == std::string_view::npos) return {};
  auto inside = text.substr(1, close - 1);
  auto space = inside.find(' ');
  if (space == std::string_view::npos) return {ascii_uppercase(inside), {}};
  return {ascii_uppercase(inside.substr(0, space)), std::string(trim(inside.substr(space + 1)))};
}

// The memory a parsed response holds, roughly: a Value per item and its text.
std::uint64_t footprint(const std::vector<Value>& values) {
  std::uint64_t n = 0;
  for (const auto& v : values) n += sizeof(Value) + v.text.size() + footprint(v.items);
  return n;
}

}  // namespace

void Session::note_untagged(const std::vector<Value>& values) {
  if (values.size() >= 2 && values[1].is_atom("EXISTS")) {
    if (auto n = parse_number(values[0].text)) {
      selected_.exists = *n;
      selected_.exists_seen = true;
    }
  }
}

asio::awaitable<Tagged> Session::run(std::string_view what, std::string_view text, bool want_ok,
                                     std::uint64_t budget, const Untagged* each) {
  if (text.find_first_of("\r\n") != std::string_view::npos)
    fail(fmt::format("{}: a command with a line break was not sent", what));
  const std::string tag = next_tag();
  co_await send(fmt::format("{} {}\r\n", tag, text));
  Tagged out;
  std::uint64_t used = 0;
  for (;;) {
    std::string wire = co_await read_response();
    used += wire.size() + 2;
    if (used > budget)
      fail(fmt::format("{}: the answer runs over {} MiB", what, budget / (1024 * 1024)));
    if (wire.starts_with("* ")) {
      std::string_view rest = std::string_view(wire).substr(2);
      // Status responses carry response codes the folder state needs.
      if (istarts_with(rest, "OK [")) {
        auto [code, value] = response_code(rest.substr(3));
        auto number = parse_number(value);
        if (code == "UIDVALIDITY") selected_.uidvalidity = number;
        if (code == "UIDNEXT") selected_.uidnext = number;
        if (code == "HIGHESTMODSEQ") selected_.highestmodseq = number;
        continue;
      }
      if (istarts_with(rest, "OK") || istarts_with(rest, "NO") || istarts_with(rest, "BAD") ||
          istarts_with(rest, "BYE"))
        continue;  // BYE: the read that follows fails, naming the close
      auto values = parse_values(rest);
      if (!values) fail(fmt::format("{}: a response that does not parse: {}", what, sanitize(wire)));
      note_untagged(*values);
      if (each != nullptr) {
        (*each)(*values);
      } else {
        // Kept responses cost more than their bytes (a Value per atom):
        // the budget counts what they hold.
        used += footprint(*values);
        if (used > budget)
          fail(fmt::format("{}: the answer runs over {} MiB", what, budget / (1024 * 1024)));
        out.untagged.push_back(Response{std::move(*values)});
      }
      continue;
    }
    if (wire.starts_with(tag + " ")) {
      std::string_view rest = std::string_view(wire).substr(tag.size() + 1);
      auto space = rest.find(' ');
      out.status = ascii_uppercase(sanitize(rest.substr(0, space), 16));
      out.text = space == std::string_view::npos ? "" : sanitize(rest.substr(space + 1), 300);
      if (want_ok && out.status != "OK")
        fail(fmt::format("{}: {} {}", what, out.status, out.text));
      co_return out;
    }
    fail(fmt::format("{}: an unexpected line: {}", what, sanitize(wire)));
  }
}

asio::awaitable<std::unique_ptr<Transport>> connect_node(const Endpoint& endpoint,
                                                         asio::ssl::context* tls_context,
                                                         Deadline deadline) {
  auto executor = co_await asio::this_coro::executor;
  auto fail_open = [&endpoint](std::string_view what) {
    throw ImapError(fmt::format("node {}: {}", endpoint.describe(), what));
  };
  // The address: a literal IP, or a name resolved now.
  std::vector<asio::ip::tcp::endpoint> addresses;
  boost::system::error_code parse_ec;
  auto ip = asio::ip::make_address(endpoint.host, parse_ec);
  if (!parse_ec) {
    addresses.emplace_back(ip, endpoint.port);
  } else {
    asio::ip::tcp::resolver resolver(executor);
    auto resolve = [&resolver, &endpoint](auto token) {
      return resolver.async_resolve(endpoint.host, std::to_string(endpoint.port), token);
    };
    auto [ec, results] = co_await until(deadline, resolve);
    if (ec || results.empty())
      fail_open(fmt::format("cannot resolve {}: {}", endpoint.host, ec.message()));
    for (const auto& r : results) addresses.push_back(r.endpoint());
  }
  // Each address in turn, as a client would.
  std::unique_ptr<Transport> transport;
  std::string refused;
  for (const auto& address : addresses) {
    auto attempt = std::make_unique<Transport>(asio::ip::tcp::socket(executor));
    auto connect = [&attempt, address](auto token) {
      return attempt->socket().async_connect(address, token);
    };
    auto [connect_ec] = co_await until(deadline, connect);
    if (!connect_ec) {
      transport = std::move(attempt);
      break;
    }
    refused += fmt::format("{}{}: {}", refused.empty() ? "" : "; ", format_endpoint(address),
                           connect_ec.message());
  }
  if (!transport) fail_open("cannot connect: " + refused);
  boost::system::error_code ignored;
  transport->socket().set_option(asio::ip::tcp::no_delay(true), ignored);
  if (endpoint.tls != config::TlsMode::none && tls_context == nullptr)
    fail_open("TLS is configured but there is no TLS context");
  if (endpoint.tls == config::TlsMode::implicit) {
    auto ec = co_await transport->start_tls_as_client(*tls_context, tls_name_of(endpoint),
                                                      endpoint.verify, deadline);
    if (ec) fail_open("TLS handshake failed: " + transport->tls_failure_reason(ec));
  }
  co_return transport;
}

std::string tls_name_of(const Endpoint& endpoint) {
  return endpoint.tls_name.empty() ? endpoint.host : endpoint.tls_name;
}

backends::Credentials master_credentials(const MasterLogin& login, const std::string& login_user) {
  backends::Credentials credentials;
  if (login.dovecot_style) {
    credentials.user = login_user + login.separator + login.user;
  } else {
    credentials.user = login.user;
    credentials.authzid = login_user;
  }
  credentials.password = login.password;
  return credentials;
}

backends::ForwardedClient forwarded_self(Transport& transport, std::string session_id) {
  boost::system::error_code ignored;
  backends::ForwardedClient me;
  const auto local = transport.socket().local_endpoint(ignored);
  me.ip = unmapped(local.address()).to_string();
  me.port = local.port();
  me.connected_ip = me.ip;
  me.connected_port = me.port;
  me.session_id = std::move(session_id);
  me.ttl = 1;
  return me;
}

asio::awaitable<std::unique_ptr<Session>> Session::open(const Endpoint& endpoint,
                                                        asio::ssl::context* tls_context,
                                                        const MasterLogin& login,
                                                        const std::string& login_user,
                                                        Clock::duration timeout,
                                                        std::string session_id) {
  const Deadline deadline = Deadline::after(timeout);
  auto fail_open = [&endpoint](std::string_view what) {
    throw ImapError(fmt::format("node {}: {}", endpoint.describe(), what));
  };
  auto transport = co_await connect_node(endpoint, tls_context, deadline);
  const auto credentials = master_credentials(login, login_user);
  backends::NodeTlsSetup tls{endpoint.tls, tls_context, tls_name_of(endpoint), endpoint.verify};
  backends::NodeLoginParams params{credentials, forwarded_self(*transport, std::move(session_id)),
                                   tls, deadline, deadline};
  auto result = co_await backends::log_in_imap(*transport, params);
  if (result.failure != Failure::none)
    fail_open(fmt::format("the master login for {} failed ({}): {}", login_user,
                          name_of(result.failure), result.detail));
  std::unique_ptr<Session> session(new Session(endpoint, std::move(transport), timeout));
  session->buffer_ = std::move(result.pending);
  session->caps_ = backends::split_capabilities(result.capabilities);
  co_await session->learn();
  co_return session;
}

asio::awaitable<void> Session::learn() {
  // Without the namespaces, other users' and shared folders would be taken
  // for the user's own: no guessing, the node is not used.
  auto ns = co_await run("NAMESPACE", "NAMESPACE");
  bool seen = false, personal_seen = false;
  for (const auto& response : ns.untagged) {
    const auto& v = response.values;
    if (v.empty() || !v[0].is_atom("NAMESPACE")) continue;
    seen = true;
    for (std::size_t group = 1; group < v.size() && group <= 3; ++group) {
      if (v[group].kind != Value::Kind::list) continue;
      for (const auto& space : v[group].items) {
        if (space.kind != Value::Kind::list || space.items.empty() || !space.items[0].is_text())
          continue;
        if (group == 1) {
          // The first personal namespace is the one the user's folders are in.
          if (!personal_seen) personal_prefix_ = space.items[0].text;
          personal_seen = true;
          if (delimiter_.empty() && space.items.size() > 1 && space.items[1].is_text())
            delimiter_ = space.items[1].text;
        } else if (!space.items[0].text.empty()) {
          other_prefixes_.push_back(space.items[0].text);
        }
      }
    }
  }
  if (!seen) fail("NAMESPACE: no namespace in the answer");
  // A personal prefix that does not end with the delimiter ("INBOX"
  // rather than "INBOX."): its levels cannot be told apart from the
  // prefix, so names are taken as they are (no prefix swapped).
  if (!personal_prefix_.empty() &&
      (delimiter_.empty() || !personal_prefix_.ends_with(delimiter_)))
    personal_prefix_.clear();
  if (caps_.empty()) {
    auto caps = co_await run("CAPABILITY", "CAPABILITY");
    for (const auto& response : caps.untagged) {
      const auto& v = response.values;
      if (v.empty() || !v[0].is_atom("CAPABILITY")) continue;
      for (std::size_t i = 1; i < v.size(); ++i)
        if (v[i].kind == Value::Kind::atom) caps_.push_back(v[i].text);
    }
  }
  // RFC 7162: SELECT and EXAMINE then answer HIGHESTMODSEQ.
  if (has("CONDSTORE")) {
    auto enabled = co_await run("ENABLE CONDSTORE", "ENABLE CONDSTORE", false);
    condstore_ = enabled.status == "OK";
  }
}

asio::awaitable<std::vector<std::pair<std::string, std::vector<std::string>>>> Session::list(
    bool subscribed) {
  const char* verb = subscribed ? "LSUB" : "LIST";
  auto answer = co_await run(verb, fmt::format("{} \"\" \"*\"", verb));
  std::vector<std::pair<std::string, std::vector<std::string>>> out;
  for (const auto& response : answer.untagged) {
    const auto& v = response.values;
    if (v.size() < 4 || !v[0].is_atom(verb) || v[1].kind != Value::Kind::list) continue;
    if (!v[3].is_text()) continue;
    std::vector<std::string> flags;
    for (const auto& f : v[1].items)
      if (f.is_text()) flags.push_back(f.text);
    if (delimiter_.empty() && v[2].is_text()) delimiter_ = v[2].text;
    const std::string& name = v[3].text;
    bool other = false;
    for (const auto& prefix : other_prefixes_)
      if (name.starts_with(prefix)) other = true;
    // With a personal prefix (Cyrus' "INBOX."), what is neither INBOX nor
    // under it belongs to another namespace (Cyrus' shared one has prefix "").
    if (!personal_prefix_.empty() && !iequals(name, "INBOX") &&
        !under_prefix(name, personal_prefix_))
      other = true;
    if (!other) out.emplace_back(name, std::move(flags));
  }
  co_return out;
}

asio::awaitable<Selected> Session::select(const std::string& folder, bool read_only) {
  auto q = imap::quoted(folder);
  if (!q)
    fail(fmt::format("folder {} cannot be named in an IMAP command safely (CR, LF, NUL or 8-bit)",
                     sanitize(folder)));
  selected_ = Selected{};
  selected_.name = folder;
  const std::string verb = read_only ? "EXAMINE" : "SELECT";
  const std::string what = fmt::format("{} {}", verb, sanitize(folder));
  const Tagged answer = co_await run(what, fmt::format("{} {}", verb, *q), false);
  if (answer.status == "NO") {
    // No folder is selected now (RFC 3501 6.3.1); the stream is at a
    // command boundary, so the session is not broken.
    selected_ = Selected{};
    throw FolderRefused(
        fmt::format("node {}: {}: {} {}", endpoint_.describe(), what, answer.status, answer.text));
  }
  if (answer.status != "OK") fail(fmt::format("{}: {} {}", what, answer.status, answer.text));
  // Without them an answer would read as an empty folder (its messages
  // then copied again, or expunged as extra): no guessing.
  if (!selected_.exists_seen || !selected_.uidvalidity)
    fail(fmt::format("{} {}: no {} in the answer", verb, sanitize(folder),
                     selected_.exists_seen ? "UIDVALIDITY" : "EXISTS"));
  co_return selected_;
}

asio::awaitable<std::vector<std::uint32_t>> Session::fetch_bodies(
    const std::vector<std::uint32_t>& uids, BodySink& sink) {
  std::vector<std::uint32_t> got;
  if (uids.empty()) co_return got;
  const std::string tag = next_tag();
  co_await send(fmt::format("{} UID FETCH {} (UID BODY.PEEK[])\r\n", tag, uid_set(uids)));
  const std::string what = fmt::format("FETCH bodies in {}", sanitize(selected_.name));
  std::vector<std::uint32_t> wanted = uids;
  std::sort(wanted.begin(), wanted.end());
  // Responses that are not bodies (EXISTS, another session's flag change):
  // a few per message asked for, not an endless stream.
  const std::size_t kMaxOtherResponses = 1000 + 10 * uids.size();
  std::size_t others = 0;
  for (;;) {
    std::string line = co_await read_line();
    if (line.starts_with(tag + " ")) {
      std::string_view rest = std::string_view(line).substr(tag.size() + 1);
      if (!istarts_with(rest, "OK")) fail(fmt::format("{}: {}", what, sanitize(rest, 300)));
      co_return got;
    }
    if (!line.starts_with("* ")) fail(fmt::format("{}: an unexpected line: {}", what, sanitize(line)));
    if (unreadable_literal(line)) fail(what + ": a literal whose size cannot be read");
    auto literal = literal_at_end(line);
    std::string_view head = std::string_view(line).substr(0, literal ? line.rfind('{') : line.size());
    const std::string_view trimmed = trim(head);
    const bool body = literal && trimmed.size() >= 6 &&
                      iequals(trimmed.substr(trimmed.size() - 6), "BODY[]");
    if (!body) {
      // Anything else (an EXISTS, another session's flag change), its
      // literals read and bounded like any response.
      std::string wire = line;
      while (auto n = literal_at_end(wire)) {
        if (wire.size() + *n > kMaxResponse) fail(what + ": a response longer than 1 MiB");
        wire += "\r\n";
        ISTHMUS_FILL(static_cast<std::size_t>(*n));
        wire.append(buffer_, 0, static_cast<std::size_t>(*n));
        buffer_.erase(0, static_cast<std::size_t>(*n));
        wire += co_await read_line();
        if (unreadable_literal(wire)) fail(what + ": a literal whose size cannot be read");
      }
      if (++others > kMaxOtherResponses) fail(what + ": too many responses that are not bodies");
      auto values = parse_values(std::string_view(wire).substr(2));
      if (!values) fail(fmt::format("{}: a response that does not parse: {}", what, sanitize(wire)));
      note_untagged(*values);
      continue;
    }
    // "* 12 FETCH (UID 5 BODY[] {N}": the UID must come before the body.
    auto values = parse_values(head.substr(2));
    std::optional<std::uint64_t> uid;
    if (values) {
      auto items = fetch_items(*values);
      if (auto it = items.find("UID"); it != items.end() && it->second.is_text())
        uid = parse_number(it->second.text);
    }
    if (!uid || !std::binary_search(wanted.begin(), wanted.end(), *uid))
      fail(fmt::format("{}: a body without the UID asked for before it: {}", what,
                       sanitize(head)));
    if (std::find(got.begin(), got.end(), *uid) != got.end())
      fail(fmt::format("{}: UID {} sent twice", what, *uid));
    got.push_back(static_cast<std::uint32_t>(*uid));
    co_await sink.begin(static_cast<std::uint32_t>(*uid), *literal);
    std::uint64_t left = *literal;
    while (left > 0) {
      if (buffer_.empty()) {
        ISTHMUS_FILL(1);
      }
      const auto take = static_cast<std::size_t>(std::min<std::uint64_t>(left, buffer_.size()));
      co_await sink.chunk(std::string_view(buffer_).substr(0, take));
      buffer_.erase(0, take);
      left -= take;
    }
    co_await sink.end();
    // The rest of the response: ")" (or more items, without literals).
    std::string rest = co_await read_line();
    if (literal_at_end(rest) || unreadable_literal(rest) || !trim(rest).ends_with(")"))
      fail(fmt::format("{}: the response after the body of UID {} is not understood: {}", what,
                       *uid, sanitize(rest)));
  }
}

asio::awaitable<void> Session::append_begin(const std::string& folder, const Msg& msg,
                                            std::uint64_t size) {
  if (append_left_ != 0) fail("APPEND: a message begun before the last one ended");
  std::string args;
  for (const auto& flag : msg.flags) {
    if (!valid_flag(flag))
      fail(fmt::format("message UID {} has a flag that is not a valid IMAP flag ({}): it cannot "
                       "be copied with it; remove it on the source and run again",
                       msg.uid, sanitize(flag)));
    args += args.empty() ? "(" : " ";
    args += flag;
  }
  if (!args.empty()) args += ") ";
  if (!msg.date.empty()) {
    if (!valid_internaldate(msg.date))
      fail(fmt::format("message UID {} has an INTERNALDATE that is not understood: {}", msg.uid,
                       sanitize(msg.date)));
    args += "\"" + msg.date + "\" ";
  }
  // MULTIAPPEND: synchronizing literals, so that a NO in the middle of the
  // command stops the bodies at once (no message text is ever sent where
  // the node could take it for commands). One APPEND per message: LITERAL+
  // where offered, a bounded number unanswered.
  const bool multi = multi_open_ || has("MULTIAPPEND");
  const bool literal_plus = !multi && has("LITERAL+");
  const std::string literal = fmt::format("{{{}{}}}\r\n", size, literal_plus ? "+" : "");
  std::string command;
  if (multi_open_) {
    command = " " + args + literal;  // the next message of the same command
  } else {
    auto q = imap::quoted(folder);
    if (!q) fail(fmt::format("folder {} cannot be named in an IMAP command safely", sanitize(folder)));
    while (appends_.size() >= kMaxUnanswered) co_await read_append_answer(false);
    const std::string tag = next_tag();
    appends_.push_back(tag);
    command = fmt::format("{} APPEND {} {}{}", tag, *q, args, literal);
    multi_open_ = multi;
    append_folder_ = folder;
  }
  co_await send(command);
  if (!literal_plus) {
    // Wait for "+" (answers to earlier APPENDs may come first; a NO to
    // this one fails the pass).
    for (;;) {
      const bool go_on = co_await read_append_answer(true);
      if (go_on) break;
    }
  }
  append_left_ = size;
}

asio::awaitable<void> Session::append_write(std::string_view data) {
  if (data.size() > append_left_) fail("APPEND: more bytes than the literal announced");
  append_left_ -= data.size();
  co_await send(data);
}

asio::awaitable<void> Session::append_end() {
  if (append_left_ != 0) fail("APPEND: fewer bytes than the literal announced");
  if (!multi_open_) co_await send("\r\n");
}

void Session::take_append_answer(std::string_view line) {
  auto space = line.find(' ');
  const std::string tag(line.substr(0, space));
  auto it = std::find(appends_.begin(), appends_.end(), tag);
  if (it == appends_.end() || space == std::string_view::npos)
    fail(fmt::format("APPEND: an unexpected line: {}", sanitize(line)));
  appends_.erase(it);
  std::string_view rest = line.substr(space + 1);
  if (!istarts_with(rest, "OK"))
    fail(fmt::format("APPEND to {}: {}", sanitize(append_folder_), sanitize(rest, 300)));
}

asio::awaitable<void> Session::append_results() {
  if (append_left_ != 0) fail("APPEND: fewer bytes than the literal announced");
  if (multi_open_) {
    multi_open_ = false;
    co_await send("\r\n");
  }
  while (!appends_.empty()) co_await read_append_answer(false);
}

asio::awaitable<bool> Session::read_append_answer(bool continuation_wanted) {
  std::string wire = co_await read_response();
  if (wire.starts_with("+")) {
    if (!continuation_wanted) fail("APPEND: a continuation request nobody asked for");
    co_return true;
  }
  if (wire.starts_with("* ")) {
    std::string_view rest = std::string_view(wire).substr(2);
    if (istarts_with(rest, "OK") || istarts_with(rest, "NO") || istarts_with(rest, "BAD") ||
        istarts_with(rest, "BYE"))
      co_return false;  // BYE: the read that follows fails, naming the close
    auto values = parse_values(rest);
    if (!values) fail(fmt::format("APPEND: a response that does not parse: {}", sanitize(wire)));
    note_untagged(*values);
    co_return false;
  }
  take_append_answer(wire);
  co_return false;
}

asio::awaitable<void> Session::logout() {
  try {
    co_await run("LOGOUT", "LOGOUT", false);
  } catch (const ImapError&) {
    // The node may close before it answers: nothing is lost.
  }
  transport_->close();
}

#undef ISTHMUS_FILL

}  // namespace isthmus::moves::imap
