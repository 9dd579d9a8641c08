#include "proxy/lmtp/lmtp_session.hpp"

#include "common/line_reader.hpp"
#include "common/log.hpp"
#include "common/net.hpp"
#include "common/session_id.hpp"
#include "common/strings.hpp"
#include "director/login_name.hpp"
#include "director/router.hpp"
#include "proxy/lmtp/smtp_command.hpp"
#include "proxy/login_proxy.hpp"

#include <boost/asio/co_spawn.hpp>
#include <boost/asio/deferred.hpp>
#include <boost/asio/experimental/parallel_group.hpp>
#include <boost/asio/this_coro.hpp>
#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <ctime>

namespace isthmus::proxy::lmtp {
namespace {

namespace asio = boost::asio;
using backends::SmtpReply;

SmtpReply make_reply(int code, std::string enhanced, std::string text) {
  SmtpReply r;
  r.code = code;
  r.enhanced = std::move(enhanced);
  r.text = std::move(text);
  return r;
}

std::size_t next_spin() {
  static std::atomic<std::size_t> spin{0};
  return spin.fetch_add(1, std::memory_order_relaxed);
}

// Too many protocol errors in a row: the peer is not a working MTA.
constexpr std::size_t kMaxErrors = 20;

// The Received: lines of a message's header (up to its first empty line,
// and at most the first 256 KiB).
unsigned count_received(const MessageSpool& spool) {
  std::string head;
  if (!spool.read(0, 256 * 1024, head)) return 0;
  const auto end = head.find("\r\n\r\n");
  if (end != std::string::npos) head.resize(end + 2);
  unsigned count = 0;
  std::size_t at = 0;
  while (at < head.size()) {
    if (istarts_with(std::string_view(head).substr(at), "received:")) ++count;
    const auto eol = head.find("\r\n", at);
    if (eol == std::string::npos) break;
    at = eol + 2;
  }
  return count;
}

}  // namespace

LmtpSession::LmtpSession(SessionRegistry& registry, asio::ip::tcp::socket client,
                         std::shared_ptr<const Runtime> runtime,
                         std::shared_ptr<const config::Listener> listener)
    : Session(registry, std::move(client), std::move(runtime), std::move(listener)),
      config_(*runtime_->config),
      spool_(config_.lmtp.spool_dir, config_.lmtp.memory_spool) {}

LmtpSession::~LmtpSession() { reset_transaction(); }

asio::awaitable<bool> LmtpSession::run() {
  bool ready = co_await begin();
  if (!ready) co_return false;
  const auto& allowed = listener_->allow.empty() ? config_.trusted_networks : listener_->allow;
  if (!any_contains(allowed, client_info_.remote.address())) {
    spdlog::warn("session={} lmtp client={} is not allowed to deliver; refused", record_.id,
                 record_.client);
    co_await goodbye("554 5.7.1 Access denied", "client not allowed");
    co_return false;
  }
  // The instance token lets an Isthmus that reaches itself as a node see so.
  bool greeted = co_await reply(fmt::format("220 {} LMTP Isthmus ready ({})", config_.lmtp.hostname,
                                            instance_token()));
  if (!greeted) co_return false;
  co_await serve();
  co_return false;
}

asio::awaitable<bool> LmtpSession::serve() {
  for (;;) {
    if (stop_requested() != StopKind::none)
      co_return co_await goodbye("421 4.3.2 Service shutting down", "shutdown");
    if (untrusted_proxy_header()) co_return false;
    auto line = co_await read_command();
    if (!line) co_return false;
    auto command = parse_smtp_command(*line);
    bool ok = true;
    if (!command) {
      ok = co_await reply("500 5.5.2 Syntax error, command unrecognized");
      ++errors_;
    } else if (command->verb == "LHLO") {
      ok = co_await handle_lhlo(command->argument);
    } else if (command->verb == "MAIL") {
      ok = co_await handle_mail(command->argument);
    } else if (command->verb == "RCPT") {
      ok = co_await handle_rcpt(command->argument);
    } else if (command->verb == "DATA") {
      ok = co_await handle_data();
    } else if (command->verb == "RSET") {
      reset_transaction(/*keep_nodes=*/true);
      ok = co_await reply("250 2.0.0 OK");
    } else if (command->verb == "NOOP") {
      ok = co_await reply("250 2.0.0 OK");
    } else if (command->verb == "QUIT") {
      co_await goodbye(fmt::format("221 2.0.0 {} closing connection", config_.lmtp.hostname),
                       "client quit");
      co_return true;
    } else if (command->verb == "VRFY") {
      ok = co_await reply("252 2.5.0 Cannot VRFY; send the message and see");
    } else if (command->verb == "HELO" || command->verb == "EHLO") {
      ok = co_await reply("500 5.5.1 This is LMTP: use LHLO (RFC 2033)");
      ++errors_;
    } else if (command->verb == "BDAT" || command->verb == "STARTTLS" ||
               command->verb == "AUTH" || command->verb == "ETRN") {
      ok = co_await reply("502 5.5.1 Command not implemented");
      ++errors_;
    } else {
      ok = co_await reply("500 5.5.2 Command unrecognized");
      ++errors_;
    }
    if (!ok) co_return false;
    if (errors_ >= kMaxErrors)
      co_return co_await goodbye("421 4.7.0 Too many errors, closing connection",
                                 "too many protocol errors");
  }
}

asio::awaitable<bool> LmtpSession::handle_lhlo(const std::string& argument) {
  if (argument.empty()) {
    ++errors_;
    co_return co_await reply("501 5.5.4 LHLO needs a host name");
  }
  helo_ = argument.substr(0, 255);
  reset_transaction();
  // Nothing the nodes may lack: no CHUNKING (accepting BDAT and failing to
  // relay it would lose mail), no DSN, no SMTPUTF8.
  co_return co_await reply(fmt::format(
      "250-{}\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {}",
      config_.lmtp.hostname, config_.limits.max_message_size));
}

asio::awaitable<bool> LmtpSession::handle_mail(const std::string& argument) {
  if (helo_.empty()) co_return co_await reply("503 5.5.1 LHLO first");
  if (have_mail_) co_return co_await reply("503 5.5.1 Nested MAIL command");
  std::string error;
  auto path = parse_path_argument(argument, "FROM:", error);
  if (!path) {
    ++errors_;
    co_return co_await reply("501 5.5.4 " + error);
  }
  declared_size_ = 0;
  eight_bit_ = false;
  for (const auto& p : path->parameters) {
    if (p.keyword == "SIZE") {
      std::uint64_t size = 0;
      auto [end, ec] = std::from_chars(p.value.data(), p.value.data() + p.value.size(), size);
      if (ec != std::errc() || end != p.value.data() + p.value.size()) {
        ++errors_;
        co_return co_await reply("501 5.5.4 Bad SIZE parameter");
      }
      if (size > config_.limits.max_message_size)
        co_return co_await reply(fmt::format("552 5.3.4 Message size exceeds the limit of {} bytes",
                                             config_.limits.max_message_size));
      declared_size_ = size;
    } else if (p.keyword == "BODY") {
      if (!iequals(p.value, "7BIT") && !iequals(p.value, "8BITMIME")) {
        ++errors_;
        co_return co_await reply("501 5.5.4 BODY must be 7BIT or 8BITMIME");
      }
      eight_bit_ = iequals(p.value, "8BITMIME");
    } else {
      ++errors_;
      co_return co_await reply("555 5.5.4 Unsupported parameter " + sanitize(p.keyword, 20));
    }
  }
  have_mail_ = true;
  mail_from_ = path->address;
  co_return co_await reply("250 2.1.0 Sender OK");
}

asio::awaitable<bool> LmtpSession::handle_rcpt(const std::string& argument) {
  if (!have_mail_) co_return co_await reply("503 5.5.1 MAIL first");
  std::string error;
  auto path = parse_path_argument(argument, "TO:", error);
  if (!path || path->address.empty()) {
    ++errors_;
    if (path) error = "Empty recipient";
    co_return co_await reply("501 5.5.4 " + error);
  }
  if (!path->parameters.empty())
    co_return co_await reply("555 5.5.4 RCPT parameters are not supported here");
  const std::string& address = path->address;
  const std::string shown = "<" + sanitize(address, 200) + ">";
  if (recipients_.size() >= config_.limits.max_recipients)
    co_return co_await reply("452 4.5.3 Too many recipients");
  auto user = director::normalise_login(address, config_.login_names);
  if (!user) co_return co_await reply("550 5.1.3 " + shown + " Bad recipient address syntax");

  set_phase(Phase::login);
  auto found = co_await runtime_->directory->lookup(*user);
  set_phase(Phase::preauth);
  if (found.status == director::LookupStatus::not_found) {
    spdlog::info("session={} lmtp rcpt={} unknown: {}", record_.id, sanitize(*user, 100),
                 sanitize(found.detail));
    co_return co_await reply("550 5.1.1 " + shown + " User unknown");
  }
  if (found.status == director::LookupStatus::unavailable) {
    spdlog::warn("session={} lmtp rcpt={}: directory unavailable: {}", record_.id,
                 sanitize(*user, 100), sanitize(found.detail));
    co_return co_await reply("451 4.3.0 " + shown +
                             " Directory temporarily unavailable, try again later");
  }
  if (found.entry.state == director::AccountState::disabled) {
    spdlog::info("session={} lmtp rcpt={}: the account is disabled", record_.id,
                 sanitize(*user, 100));
    co_return co_await reply("550 5.2.1 " + shown + " Mailbox disabled");
  }
  if (found.entry.state == director::AccountState::moving) {
    spdlog::info("session={} lmtp rcpt={}: the account is being moved; deferred", record_.id,
                 sanitize(*user, 100));
    co_return co_await reply("451 4.2.1 " + shown +
                             " Mailbox is being moved, try again later");
  }
  if (!runtime_->topology->island(found.entry.island)) {
    spdlog::error("session={} lmtp rcpt={}: island \"{}\" is not configured", record_.id,
                  sanitize(*user, 100), sanitize(found.entry.island));
    co_return co_await reply("451 4.3.0 " + shown + " Routing problem, try again later");
  }
  set_phase(Phase::login);
  // The node is told the directory's spelling of the name (as for logins).
  const std::string& node_user = !found.entry.node_login.empty() ? found.entry.node_login
                                 : !found.entry.login.empty()    ? found.entry.login
                                                                 : *user;
  IslandTxn* txn = co_await island_txn(found.entry.island);
  std::optional<SmtpReply> answer;
  if (txn) answer = co_await rcpt_on_node(*txn, node_user);
  set_phase(Phase::preauth);
  if (!txn || !answer) {
    for (const auto& t : txns_) {
      if (t.island != found.entry.island) continue;
      if (t.refusal) co_return co_await reply(t.refusal->format());
      if (t.congested)
        co_return co_await reply(fmt::format("451 4.4.5 {} The nodes of island {} are busy, try "
                                             "again later",
                                             shown, found.entry.island));
    }
    co_return co_await reply(fmt::format("451 4.4.1 {} No node of island {} is reachable, try "
                                         "again later",
                                         shown, found.entry.island));
  }
  if (answer->ok()) {
    std::size_t index = recipients_.size();
    recipients_.push_back({address, node_user, static_cast<std::size_t>(txn - txns_.data()), {}});
    txn->recipients.push_back(index);
  }
  co_return co_await reply(answer->format());
}

asio::awaitable<LmtpSession::IslandTxn*> LmtpSession::island_txn(const std::string& island) {
  for (auto& txn : txns_) {
    if (txn.island != island) continue;
    if (txn.failed) co_return nullptr;
    if (txn.client) co_return &txn;
    bool opened = co_await open_txn(txn);
    co_return opened ? &txn : nullptr;
  }
  txns_.push_back(IslandTxn{island, {}, {}, {}, {}, {}, {}, false, 0, {}, false, true, false});
  IslandTxn& txn = txns_.back();
  bool opened = co_await open_txn(txn);
  co_return opened ? &txns_.back() : nullptr;
}

// Connects to the island's next untried node and starts the transaction
// there: greeting, LHLO, MAIL, and again every recipient this island had
// accepted on a node that was lost (those the new node refuses get its
// answer as their final one).
asio::awaitable<backends::NodeStep> LmtpSession::send_mail(backends::LmtpNodeClient& client) {
  // MAIL with only the parameters this node said it understands.
  std::string mail = "MAIL FROM:<" + mail_from_ + ">";
  if (declared_size_ > 0 && client.offers("SIZE")) mail += fmt::format(" SIZE={}", declared_size_);
  if (eight_bit_ && client.offers("8BITMIME")) mail += " BODY=8BITMIME";
  co_return co_await client.command(mail, config_.timeouts.lmtp_command);
}

asio::awaitable<bool> LmtpSession::open_txn(IslandTxn& txn) {
  const auto* island = runtime_->topology->island(txn.island);
  auto executor = co_await asio::this_coro::executor;
  auto candidates = director::candidates(*island, config::Protocol::lmtp, Clock::now(), next_spin());
  backends::LmtpPeer peer{unmapped(client_info_.remote.address()).to_string(),
                          client_info_.remote.port(), helo_, record_.id, config_.proxy_ttl - 1};
  // The connection the previous transaction left, if its node is still one
  // to use (up, not draining, and for active-passive the holder under the
  // same epoch): RSET if that transaction did not end cleanly, then MAIL.
  // Anything unexpected closes it and a fresh connection is made, without
  // blaming the node (an idle connection may just have timed out there).
  auto idle = std::find_if(idle_.begin(), idle_.end(),
                           [&txn](const IdleNode& i) { return i.island == txn.island; });
  if (idle != idle_.end()) {
    IdleNode kept = std::move(*idle);
    idle_.erase(idle);
    const bool still_a_candidate =
        std::any_of(candidates.begin(), candidates.end(),
                    [&kept](const auto& node) { return node->name == kept.node; });
    const auto holder = island->role ? island->role->current() : nullptr;
    const bool same_role = !holder || (holder->node == kept.node && holder->epoch == kept.epoch);
    if (still_a_candidate && same_role && txn.recipients.empty() && txn.tried.empty()) {
      backends::NodeStep step;
      if (kept.needs_rset) step = co_await kept.client->command("RSET", config_.timeouts.lmtp_command);
      if (step.answered() && (!kept.needs_rset || step.reply.ok())) step = co_await send_mail(*kept.client);
      if (step.answered() && step.reply.ok()) {
        txn.client = std::move(kept.client);
        txn.node = kept.node;
        txn.lease = std::move(kept.lease);
        txn.slot = std::move(kept.slot);
        txn.epoch = kept.epoch;
        record_.island = txn.island;
        record_.node = txn.node;
        co_return true;
      }
    }
    kept.client->close();
  }
  bool busy = false;
  for (const auto& node : candidates) {
    if (std::find(txn.tried.begin(), txn.tried.end(), node->name) != txn.tried.end()) continue;
    txn.tried.push_back(node->name);
    // However the faults line up, one transaction never turns into a storm
    // of connections to one node.
    if (!node->state->take_lmtp_connection(config_.lmtp.max_node_connections)) {
      busy = true;
      spdlog::warn("session={} lmtp island={} node={}: {} LMTP connections from this instance "
                   "already (lmtp.max_node_connections); trying the next node",
                   record_.id, txn.island, node->name, config_.lmtp.max_node_connections);
      continue;
    }
    NodeSlot slot(node->state);
    backends::NodeLease lease(node->state);
    Transport connection{asio::ip::tcp::socket(executor)};
    const Deadline greeting = Deadline::after(config_.timeouts.connect);
    auto endpoint = *node->endpoint(config::Protocol::lmtp);
    auto connect = [&connection, endpoint](auto token) {
      return connection.socket().async_connect(endpoint, token);
    };
    auto [ec] = co_await until(greeting, connect);
    backends::NodeStep step;
    const config::TlsMode tls_mode = node->tls_for(config::Protocol::lmtp);
    backends::NodeTlsSetup tls{tls_mode, runtime_->node_tls.get(), node->tls_name,
                               config_.node_tls.verify};
    std::unique_ptr<backends::LmtpNodeClient> client;
    if (ec) {
      step.failure = ec == asio::error::timed_out ? Failure::node_timeout : Failure::node_refused;
      step.detail = fmt::format("connect to {}: {}", format_endpoint(endpoint), ec.message());
    } else {
      boost::system::error_code ignored;
      connection.socket().set_option(asio::ip::tcp::no_delay(true), ignored);
      if (tls_mode == config::TlsMode::implicit) {
        auto tls_ec = co_await connection.start_tls_as_client(*tls.context, tls.name, tls.verify,
                                                              Deadline::after(config_.timeouts.connect));
        if (tls_ec) {
          step.failure = Failure::node_tls;
          step.detail =
              "TLS handshake with the node failed: " + connection.tls_failure_reason(tls_ec);
        }
      }
      if (step.failure == Failure::none) {
        client = std::make_unique<backends::LmtpNodeClient>(std::move(connection));
        // A named object, not a temporary in the co_await (GCC 12 and
        // temporaries across a suspension: docs/development.md).
        const backends::LmtpNodeAuth auth{config_.lmtp.node_user, config_.lmtp.node_password};
        step = co_await client->open(config_.lmtp.hostname, tls, peer,
                                     Deadline::after(config_.timeouts.connect),
                                     config_.timeouts.lmtp_command, auth);
      }
      if (step.failure == Failure::none) {
        step = co_await send_mail(*client);
        if (step.answered() && step.reply.permanent()) {
          // The node refuses this transaction for good (552 5.3.4 for the
          // size, ...): that is its recipients' answer, not a node fault.
          spdlog::info("session={} lmtp island={} node={}: MAIL refused for good: {}",
                       record_.id, txn.island, node->name, step.reply.describe());
          client->close();
          txn.refusal = step.reply;
          txn.failed = true;
          for (std::size_t index : txn.recipients)
            if (!recipients_[index].final) recipients_[index].final = step.reply;
          txn.recipients.clear();
          co_return false;
        }
        if (step.answered() && !step.reply.ok()) {
          step.failure = Failure::node_unavailable;
          step.detail = "MAIL refused: " + step.reply.describe();
        }
      }
    }
    if (step.failure != Failure::none) {
      const auto& policy = policy_of(step.failure);
      report_node_failure(*runtime_, *node, config::Protocol::lmtp, step.failure);
      spdlog::warn("session={} lmtp island={} node={}: {} ({}); trying the next node", record_.id,
                   txn.island, node->name, policy.description, step.detail);
      if (client) client->close();
      continue;
    }
    node->state->report_success();
    txn.client = std::move(client);
    txn.node = node->name;
    txn.slot = std::move(slot);
    if (island->role) {
      auto holder = island->role->current();
      txn.epoch = holder->node == node->name ? holder->epoch : 0;
    }
    txn.lease = std::move(lease);
    record_.island = txn.island;
    record_.node = node->name;
    // Recipients accepted on a node that was lost: ask the new one.
    std::vector<std::size_t> previous = std::move(txn.recipients);
    txn.recipients.clear();
    bool node_lost = false;
    for (std::size_t index : previous) {
      auto& r = recipients_[index];
      if (node_lost) {
        r.final = make_reply(451, "4.4.2", "<" + sanitize(r.address, 200) + "> Node lost, try again later");
        continue;
      }
      auto again = co_await txn.client->command("RCPT TO:<" + r.user + ">",
                                                 config_.timeouts.lmtp_command);
      if (again.node_lost()) {
        node_lost = true;
        r.final = make_reply(451, "4.4.2", "<" + sanitize(r.address, 200) + "> Node lost, try again later");
      } else if (again.reply.ok()) {
        txn.recipients.push_back(index);
      } else {
        r.final = again.reply;
      }
    }
    if (node_lost) {
      txn.client->close();
      txn.client.reset();
      txn.lease.release();
      txn.slot.release();
      continue;
    }
    co_return true;
  }
  txn.failed = true;
  txn.congested = busy;
  for (std::size_t index : txn.recipients) {
    auto& r = recipients_[index];
    if (!r.final)
      r.final = make_reply(451, "4.4.1", "<" + sanitize(r.address, 200) + "> No node reachable, try again later");
  }
  txn.recipients.clear();
  spdlog::warn("session={} lmtp island={}: no node could take the transaction (tried {})",
               record_.id, txn.island, fmt::join(txn.tried, ", "));
  co_return false;
}

// RCPT on the island's node; if the node is lost before it answers, the
// transaction moves to the island's next node (open_txn) and asks there.
asio::awaitable<std::optional<SmtpReply>> LmtpSession::rcpt_on_node(IslandTxn& txn,
                                                                   const std::string& user) {
  for (;;) {
    auto step = co_await txn.client->command("RCPT TO:<" + user + ">", config_.timeouts.lmtp_command);
    if (!step.node_lost()) co_return step.reply;
    spdlog::warn("session={} lmtp island={} node={}: lost at RCPT ({}); moving to the next node",
                 record_.id, txn.island, txn.node,
                 step.answered() ? step.reply.describe() : step.detail);
    txn.client->close();
    txn.client.reset();
    txn.lease.release();
    txn.slot.release();
    bool reopened = co_await open_txn(txn);
    if (!reopened) co_return std::nullopt;
  }
}

asio::awaitable<bool> LmtpSession::handle_data() {
  if (!have_mail_) co_return co_await reply("503 5.5.1 MAIL first");
  if (recipients_.empty()) co_return co_await reply("503 5.5.1 No valid recipients");
  bool asked = co_await reply("354 Start mail input; end with <CRLF>.<CRLF>");
  if (!asked) co_return false;

  DataDecoder decoder;
  std::string content;
  bool too_big = false;
  std::string spool_error;
  const Deadline deadline = Deadline::after(config_.timeouts.lmtp_data);
  for (;;) {
    std::size_t used = decoder.feed(in_, content);
    in_.erase(0, used);
    if (decoder.content_size() > config_.limits.max_message_size) too_big = true;
    if (!content_8bit_) content_8bit_ = has_eight_bit(content);
    if (!too_big && spool_error.empty() && !content.empty()) spool_.append(content, spool_error);
    content.clear();
    if (decoder.done()) break;
    auto ec = co_await read_more(deadline, 64 * 1024);
    if (ec) {
      // The MTA went away (or stalled) in the middle of the message:
      // nothing was delivered, and it will retry.
      set_ended(ec == asio::error::timed_out ? "timed out in DATA" : "client lost in DATA");
      reset_transaction();
      co_return false;
    }
  }
  ++messages_;
  if (in_.capacity() > 16 * 1024) std::string(in_).swap(in_);  // no 64 KiB kept between messages
  if (too_big || !spool_error.empty()) {
    if (!spool_error.empty())
      spdlog::error("session={} lmtp: {}", record_.id, spool_error);
    SmtpReply r = too_big ? make_reply(552, "5.3.4", "Message too big")
                          : make_reply(451, "4.3.0", "Local error in processing, try again later");
    std::string all;
    for (std::size_t i = 0; i < recipients_.size(); ++i) all += r.format() + "\r\n";
    all.resize(all.size() - 2);
    reset_transaction();
    co_return co_await reply(all);
  }
  // A message that has passed this many hops is in a loop (RFC 5321
  // section 6.3): refused for good, not passed round again.
  const unsigned hops = count_received(spool_);
  if (hops >= config_.lmtp.max_hops) {
    spdlog::error("session={} lmtp: a message with {} Received: lines (lmtp.max_hops is {}): a "
                  "routing loop; refused",
                  record_.id, hops, config_.lmtp.max_hops);
    SmtpReply r = make_reply(554, "5.4.6", "Too many hops (a routing loop?)");
    std::string all;
    for (std::size_t i = 0; i < recipients_.size(); ++i) all += r.format() + "\r\n";
    all.resize(all.size() - 2);
    if (runtime_->metrics) {
      runtime_->metrics->lmtp_recipients(LmtpResult::permanent, recipients_.size());
      runtime_->metrics->lmtp_message(LmtpResult::permanent);
    }
    reset_transaction();
    co_return co_await reply(all);
  }
  received_ = received_line();
  set_phase(Phase::login);
  bool answered = co_await deliver_and_answer();
  set_phase(Phase::preauth);
  std::size_t delivered = 0, deferred = 0, rejected = 0;
  for (const auto& r : recipients_) {
    const SmtpReply& final = *r.final;
    if (final.ok()) ++delivered;
    else if (final.temporary()) ++deferred;
    else ++rejected;
  }
  if (auto& metrics = runtime_->metrics) {
    metrics->lmtp_recipients(LmtpResult::delivered, delivered);
    metrics->lmtp_recipients(LmtpResult::temporary, deferred);
    metrics->lmtp_recipients(LmtpResult::permanent, rejected);
    metrics->lmtp_message(deferred > 0    ? LmtpResult::temporary
                          : rejected > 0 ? LmtpResult::permanent
                                         : LmtpResult::delivered);
  }
  spdlog::info("session={} lmtp message from=<{}> size={} rcpts={} delivered={} deferred={} "
               "rejected={} islands={}",
               record_.id, sanitize(mail_from_, 100), spool_.size(), recipients_.size(), delivered,
               deferred, rejected, txns_.size());
  reset_transaction(/*keep_nodes=*/answered);
  co_return answered;
}

std::string LmtpSession::received_line() const {
  // RFC 5322 date in UTC: "Thu, 03 Dec 2026 13:21:17 +0000".
  const std::time_t now = std::time(nullptr);
  std::tm utc{};
  gmtime_r(&now, &utc);
  char date[64];
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S +0000", &utc);
  auto host_name = [](std::string_view name) {
    // Only plain host-name characters from the MTA's LHLO reach the header.
    std::string out;
    for (char c : name.substr(0, 255))
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
          c == '.' || c == '-' || c == '_' || c == '[' || c == ']' || c == ':')
        out += c;
    return out.empty() ? std::string("unknown") : out;
  };
  return fmt::format("Received: from {} ({})\r\n\tby {} (Isthmus) with LMTP id {};\r\n\t{}\r\n",
                     host_name(helo_), unmapped(client_info_.remote.address()).to_string(),
                     host_name(config_.lmtp.hostname), record_.id, date);
}

void LmtpSession::settle(IslandTxn& txn, const backends::DataOutcome& outcome) {
  for (std::size_t k = 0; k < txn.recipients.size(); ++k) {
    auto& r = recipients_[txn.recipients[k]];
    if (k < outcome.replies.size()) {
      r.final = outcome.replies[k];
    } else {
      r.final = make_reply(451, "4.4.2",
                           "<" + sanitize(r.address, 200) +
                               "> Connection to the mailbox node lost during delivery, try "
                               "again later");
    }
  }
  if (outcome.failure != Failure::none) {
    spdlog::warn("session={} lmtp island={} node={}: failed during DATA: {}; {} recipients "
                 "deferred",
                 record_.id, txn.island, txn.node, outcome.detail,
                 txn.recipients.size() - std::min(txn.recipients.size(), outcome.replies.size()));
    if (auto state = runtime_->topology->state_of(txn.node)) state->report_failure(Clock::now());
  }
}

// Each island's delivery runs on its own; the writer sends the replies in
// RCPT order (RFC 2033 section 4.2) as soon as each prefix of them is known:
// a recipient on a fast island is not held for a slow one (every second
// held widens the window in which an MTA that gives up re-sends a message
// already delivered).
asio::awaitable<bool> LmtpSession::deliver_and_answer() {
  auto executor = co_await asio::this_coro::executor;
  asio::steady_timer wake(executor, Clock::time_point::max());
  std::size_t running = 0;
  std::uint64_t events = 0;
  for (auto& txn : txns_) {
    if (!txn.client || txn.recipients.empty()) continue;
    ++running;
    IslandTxn* t = &txn;
    asio::co_spawn(executor, deliver_to(txn),
                   [this, t, &running, &events, &wake](std::exception_ptr e,
                                                        backends::DataOutcome outcome) {
                     if (e) {  // a bug: that island failed, never delivered
                       outcome = {};
                       outcome.failure = Failure::node_protocol;
                       outcome.detail = "internal error";
                       outcome.message_started = true;
                     }
                     settle(*t, outcome);
                     // Only a node that took part in a complete exchange
                     // (no failure, not fenced) serves the next message.
                     t->reusable = outcome.failure == Failure::none && fenced(*t).empty() &&
                                   t->client != nullptr;
                     t->clean = outcome.message_started &&
                                outcome.replies.size() == t->recipients.size();
                     --running;
                     ++events;
                     wake.cancel();
                   });
  }
  std::size_t next = 0;
  bool client_ok = true;
  std::uint64_t seen = 0;
  for (;;) {
    seen = events;
    if (running == 0)
      for (auto& r : recipients_)
        if (!r.final)
          r.final = make_reply(451, "4.3.0", "<" + sanitize(r.address, 200) +
                                                 "> Not delivered, try again later");
    std::string batch;
    while (next < recipients_.size() && recipients_[next].final) {
      batch += recipients_[next].final->format() + "\r\n";
      ++next;
    }
    if (!batch.empty() && client_ok) {
      batch.resize(batch.size() - 2);
      client_ok = co_await reply(std::move(batch));
    }
    if (running == 0 && next == recipients_.size()) break;
    if (events != seen) continue;  // something finished while we wrote
    wake.expires_at(Clock::time_point::max());
    co_await wake.async_wait(use_tuple);
  }
  co_return client_ok;
}

// One island's delivery. A node lost before any byte of the message reached
// it (it closed while the MTA was still sending, or refused DATA with 421)
// is replaced like a node lost between RCPTs: nothing can be delivered
// twice. Once the message has started, there is no second try.
asio::awaitable<backends::DataOutcome> LmtpSession::deliver_to(IslandTxn& txn) {
  // Fencing (active-passive islands): a node that lost the role since the
  // transaction opened gets no message, and its answers after the message
  // are not believed: 451 for every recipient, the MTA retries and reaches
  // the new holder. Never 250 from a fenced node.
  auto fence = [this, &txn](backends::DataOutcome outcome, bool sent) {
    const std::string why = fenced(txn);
    if (why.empty()) return outcome;
    spdlog::warn("session={} lmtp island={} node={}: fenced {} DATA: {}; {} recipients deferred{}",
                 record_.id, txn.island, txn.node, sent ? "after" : "before", why,
                 txn.recipients.size(),
                 sent ? " (the old holder may have stored a copy: a retry can duplicate it)" : "");
    backends::DataOutcome fenced_outcome;
    fenced_outcome.message_started = sent;
    for (std::size_t k = 0; k < txn.recipients.size(); ++k)
      fenced_outcome.replies.push_back(make_reply(
          451, "4.4.0",
          "<" + sanitize(recipients_[txn.recipients[k]].address, 200) +
              "> The mailbox node lost its island's active role, try again later"));
    return fenced_outcome;
  };
  // What the node said it takes: a message over its SIZE (RFC 1870) is
  // refused for its recipients here (Cyrus answers one 552 for all of
  // them, breaking RFC 2033); 8-bit content to a node without 8BITMIME
  // cannot go unconverted (RFC 6152): 554 5.6.3.
  auto refuse_all = [this, &txn](int code, const char* enhanced, std::string_view why) {
    backends::DataOutcome refused;
    for (std::size_t k = 0; k < txn.recipients.size(); ++k)
      refused.replies.push_back(make_reply(
          code, enhanced,
          "<" + sanitize(recipients_[txn.recipients[k]].address, 200) + "> " + std::string(why)));
    return refused;
  };
  for (;;) {
    if (!fenced(txn).empty()) co_return fence({}, false);
    if (const auto limit = txn.client->size_limit();
        limit != 0 && spool_.size() + received_.size() > limit)
      co_return refuse_all(552, "5.3.4", fmt::format("Message too big for the mailbox node "
                                                     "(its limit is {} bytes)", limit));
    if ((eight_bit_ || content_8bit_) && !txn.client->offers("8BITMIME"))
      co_return refuse_all(554, "5.6.3", "8-bit message, and the mailbox node takes 7-bit only");
    auto outcome = co_await txn.client->send_data(spool_, received_, txn.recipients.size(),
                                                  config_.timeouts.lmtp_command,
                                                  config_.timeouts.lmtp_final);
    if (outcome.message_started) outcome = fence(std::move(outcome), true);
    if (outcome.failure == Failure::none || outcome.message_started) co_return outcome;
    spdlog::warn("session={} lmtp island={} node={}: lost before the message ({}); moving to the "
                 "next node",
                 record_.id, txn.island, txn.node, outcome.detail);
    txn.client->close();
    txn.client.reset();
    txn.lease.release();
    txn.slot.release();
    bool reopened = co_await open_txn(txn);
    if (!reopened) co_return backends::DataOutcome{};  // open_txn gave every recipient a 451
    if (txn.recipients.empty()) co_return backends::DataOutcome{};
  }
}

std::string LmtpSession::fenced(const IslandTxn& txn) const {
  const auto* island = runtime_->topology->island(txn.island);
  if (!island || !island->role) return "";
  auto holder = island->role->current();
  if (holder->node == txn.node && holder->epoch == txn.epoch && txn.epoch != 0) return "";
  return fmt::format("island {}'s active role is {} at epoch {}; this transaction opened on {} "
                     "at epoch {}",
                     txn.island, holder->node, holder->epoch, txn.node, txn.epoch);
}

void LmtpSession::reset_transaction(bool keep_nodes) {
  for (auto& txn : txns_) {
    if (!txn.client) continue;
    if (keep_nodes && txn.reusable && !txn.failed) {
      std::erase_if(idle_, [&txn](const IdleNode& i) { return i.island == txn.island; });
      idle_.push_back(IdleNode{txn.island, txn.node, std::move(txn.client), std::move(txn.lease),
                               std::move(txn.slot), txn.epoch, !txn.clean});
    } else {
      txn.client->close();
    }
  }
  if (!keep_nodes) {
    for (auto& i : idle_) i.client->close();
    idle_.clear();
  }
  txns_.clear();
  recipients_.clear();
  have_mail_ = false;
  mail_from_.clear();
  declared_size_ = 0;
  eight_bit_ = false;
  content_8bit_ = false;
  received_.clear();
  spool_.clear();
}

asio::awaitable<std::optional<std::string>> LmtpSession::read_command() {
  const Deadline deadline = Deadline::after(config_.timeouts.lmtp_idle);
  for (;;) {
    std::string line;
    bool too_long = false;
    if (take_line(in_, config_.limits.max_line, line, too_long)) co_return line;
    if (too_long) {
      co_await goodbye("500 5.5.6 Line too long", "client protocol error: Line too long");
      co_return std::nullopt;
    }
    auto ec = co_await read_more(deadline);
    if (ec) {
      if (stop_requested() != StopKind::none) {
        co_await goodbye("421 4.3.2 Service shutting down", "shutdown");
      } else if (ec == asio::error::timed_out) {
        co_await goodbye("421 4.4.2 Idle too long, closing connection", "idle timeout");
      } else {
        set_ended(ec == asio::error::eof ? "client closed" : "client connection lost");
      }
      co_return std::nullopt;
    }
  }
}

asio::awaitable<bool> LmtpSession::reply(std::string text) {
  text += "\r\n";
  co_return co_await send(text, Deadline::after(config_.timeouts.lmtp_command));
}

asio::awaitable<bool> LmtpSession::goodbye(std::string text, std::string ended) {
  set_ended(std::move(ended));
  co_await reply(std::move(text));
  co_return false;
}

}  // namespace isthmus::proxy::lmtp
