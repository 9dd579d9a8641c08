#include "moves/imap_copy.hpp"

#include "common/log.hpp"
#include "common/strings.hpp"

#include <boost/asio/steady_timer.hpp>
#include <boost/asio/this_coro.hpp>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <exception>
#include <map>
#include <set>

namespace isthmus::moves::imap {

namespace asio = boost::asio;

namespace {

class ListingChanged : public ImapError {
 public:
  using ImapError::ImapError;
};

constexpr const char* kListItems =
    "(UID RFC822.SIZE FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])";

std::string cache_key(const Session& session, const std::string& folder) {
  return session.endpoint().name + std::string(1, '\0') + folder;
}

// What a listing's answer may add up to: the usual budget, and 8 KiB more
// per message the folder holds (a listing response is ~200 bytes).
std::uint64_t listing_budget(std::uint64_t exists) { return kCommandBudget + exists * 8192; }

// UIDs in slices whose sets keep command lines short (servers refuse long
// ones: Dovecot's imap_max_line_length is 64 KiB): 500 UIDs are at most
// ~5.5 kB of set.
std::vector<std::vector<std::uint32_t>> slices(const std::vector<std::uint32_t>& uids) {
  constexpr std::size_t kSlice = 500;
  std::vector<std::vector<std::uint32_t>> out;
  for (std::size_t i = 0; i < uids.size(); i += kSlice)
    out.emplace_back(uids.begin() + static_cast<std::ptrdiff_t>(i),
                     uids.begin() + static_cast<std::ptrdiff_t>(std::min(uids.size(), i + kSlice)));
  return out;
}

// The listing responses of one UID FETCH into BY_UID.
asio::awaitable<void> fetch_listing_into(Session& session, const std::string& what,
                                         const std::string& set, std::uint64_t limit,
                                         std::map<std::uint32_t, Msg>& by_uid) {
  const Session::Untagged each = [&session, &what, limit, &by_uid](std::vector<Value>& values) {
    auto items = fetch_items(values);
    if (items.empty()) return;  // not a FETCH (an EXISTS, a RECENT)
    auto listed = listed_message(items);
    if (listed.unsolicited) return;  // another session's flag change
    if (!listed.msg)
      throw ImapError(fmt::format("node {}: {}: {}", session.endpoint().describe(), what,
                                  listed.error));
    const auto uid = listed.msg->uid;
    // No more messages than the folder holds (EXISTS, as it grows) or than
    // were asked for: a node repeating new UIDs cannot grow the listing.
    const std::uint64_t most = std::max<std::uint64_t>(limit, session.exists_now());
    if (!by_uid.contains(uid) && by_uid.size() >= most)
      throw ImapError(fmt::format("node {}: {}: more messages listed than the folder holds ({})",
                                  session.endpoint().describe(), what, session.exists_now()));
    by_uid[uid] = std::move(*listed.msg);
  };
  co_await session.run(what, fmt::format("UID FETCH {} {}", set, kListItems), true,
                       listing_budget(session.exists_now()), &each);
}

// Messages delivered while the folder was being listed: EXISTS grew past
// what a `1:*` (or a UID list) could return, and the new messages hold UIDs
// above every one listed, so "UID FETCH <highest + 1>:*" brings them. A few
// rounds (deliveries go on meanwhile, each round is short); a listing still
// short after them is missing something else, and the caller's check fails
// it. Without this, a large INBOX that receives mail every few seconds
// never lists whole and is skipped by every pre-copy pass.
asio::awaitable<void> fetch_arrivals(Session& session, const std::string& what,
                                     std::map<std::uint32_t, Msg>& by_uid) {
  for (int round = 0; round < 3 && !by_uid.empty() && by_uid.size() < session.exists_now(); ++round) {
    const std::uint32_t highest = by_uid.rbegin()->first;
    if (highest == 0xFFFFFFFFu) break;
    const std::size_t before = by_uid.size();
    co_await fetch_listing_into(session, what, fmt::format("{}:*", highest + 1), 0, by_uid);
    if (by_uid.size() == before) break;  // nothing above the highest: not an arrival
  }
}

// The messages UIDS of the selected folder (nullopt: all of them; then
// there must be EXISTS of them, else exactly as many as asked for).
asio::awaitable<std::map<std::uint32_t, Msg>> fetch_listing(
    Session& session, const std::string& folder,
    const std::optional<std::vector<std::uint32_t>>& uids) {
  const std::string what = fmt::format("FETCH in {}", sanitize(folder));
  std::map<std::uint32_t, Msg> by_uid;
  if (!uids) {
    co_await fetch_listing_into(session, what, "1:*", 0, by_uid);
    co_await fetch_arrivals(session, what, by_uid);
  } else {
    for (const auto& slice : slices(*uids))
      co_await fetch_listing_into(session, what, uid_set(slice), uids->size(), by_uid);
  }
  const std::size_t expected = uids ? uids->size() : session.exists_now();
  if (by_uid.size() != expected)
    throw ListingChanged(fmt::format("node {}: {}: {} messages read, but {} {}: the listing is "
                                     "incomplete",
                                     session.endpoint().describe(), what, by_uid.size(),
                                     uids ? "asked for" : "the folder holds", expected));
  co_return by_uid;
}

// The listing from the last one: UIDs (UID SEARCH), flags changed since
// (CHANGEDSINCE), the new messages in full.
asio::awaitable<std::map<std::uint32_t, Msg>> listing_since(Session& session,
                                                            const std::string& folder,
                                                            const Listing& prev,
                                                            bool all_flags) {
  std::map<std::uint32_t, Msg> out;
  if (session.exists_now() == 0) co_return out;
  const std::string name = sanitize(folder);
  // The UIDs, one short response each (a SEARCH answer is one line, which
  // outgrows any line bound in a folder of 100,000s of messages).
  std::vector<std::uint32_t> uids;
  const Session::Untagged each_uid = [&session, &name, &uids](std::vector<Value>& values) {
    auto items = fetch_items(values);
    auto it = items.find("UID");
    if (it == items.end()) return;
    auto n = it->second.kind == Value::Kind::atom ? parse_number(it->second.text) : std::nullopt;
    if (!n || *n == 0 || *n > 0xFFFFFFFFu)
      throw ImapError(fmt::format("node {}: FETCH in {}: an unreadable UID",
                                  session.endpoint().describe(), name));
    uids.push_back(static_cast<std::uint32_t>(*n));
  };
  co_await session.run(fmt::format("FETCH UIDs in {}", name), "UID FETCH 1:* (UID)", true,
                       listing_budget(session.exists_now()), &each_uid);
  std::sort(uids.begin(), uids.end());
  uids.erase(std::unique(uids.begin(), uids.end()), uids.end());
  std::map<std::uint32_t, std::vector<std::string>> flags_now;
  const Session::Untagged each_change = [&session, &name, &flags_now](std::vector<Value>& values) {
    auto items = fetch_items(values);
    auto uid_it = items.find("UID");
    auto flags_it = items.find("FLAGS");
    if (uid_it == items.end() || flags_it == items.end()) return;
    auto uid = uid_it->second.is_text() ? parse_number(uid_it->second.text) : std::nullopt;
    auto flags = flags_of(flags_it->second);
    if (!uid || *uid > 0xFFFFFFFFu || !flags)
      throw ImapError(fmt::format("node {}: FETCH in {}: an unreadable UID or flags",
                                  session.endpoint().describe(), name));
    flags_now[static_cast<std::uint32_t>(*uid)] = std::move(*flags);
  };
  if (all_flags)
    co_await session.run(fmt::format("FETCH FLAGS in {}", name), "UID FETCH 1:* (UID FLAGS)", true,
                         listing_budget(session.exists_now()), &each_change);
  else
    co_await session.run(fmt::format("FETCH CHANGEDSINCE in {}", name),
                         fmt::format("UID FETCH 1:* (UID FLAGS) (CHANGEDSINCE {})", prev.modseq),
                         true, listing_budget(session.exists_now()), &each_change);
  std::vector<std::uint32_t> fresh_uids;
  for (auto uid : uids)
    if (!prev.msgs.contains(uid)) fresh_uids.push_back(uid);
  std::map<std::uint32_t, Msg> fresh;
  if (!fresh_uids.empty()) fresh = co_await fetch_listing(session, folder, fresh_uids);
  for (auto uid : uids) {
    if (auto it = fresh.find(uid); it != fresh.end()) {
      out[uid] = std::move(it->second);
      continue;
    }
    auto old = prev.msgs.find(uid);
    if (old == prev.msgs.end())
      throw ListingChanged(fmt::format("node {}: {}: message UID {} went away while it was listed",
                                       session.endpoint().describe(), name, uid));
    Msg m = old->second;
    if (auto f = flags_now.find(uid); f != flags_now.end()) m.flags = f->second;
    out[uid] = std::move(m);
  }
  co_await fetch_arrivals(session, fmt::format("FETCH in {}", name), out);
  if (out.size() != session.exists_now())
    throw ListingChanged(fmt::format("node {}: {}: {} UIDs, but the folder holds {} (EXISTS): the "
                                     "listing is incomplete",
                                     session.endpoint().describe(), name, out.size(),
                                     session.exists_now()));
  co_return out;
}

asio::awaitable<std::vector<Msg>> list_once(Session& session, const std::string& folder,
                                            bool write, PassCache* cache,
                                            std::optional<Signature>* at_select, bool all_flags) {
  co_await session.select(folder, !write);
  const auto signature = signature_of(session);
  if (at_select != nullptr) *at_select = signature;
  const Listing* prev = nullptr;
  const std::string key = cache_key(session, folder);
  if (cache != nullptr) {
    auto it = cache->listings.find(key);
    // A HIGHESTMODSEQ lower than the last listing's (an index rebuilt under
    // the same UIDVALIDITY) makes CHANGEDSINCE blind: list in full.
    if (it != cache->listings.end() && signature && it->second.validity == (*signature)[0] &&
        (*signature)[2] >= it->second.modseq)
      prev = &it->second;
  }
  std::map<std::uint32_t, Msg> by_uid;
  if (prev != nullptr)
    by_uid = co_await listing_since(session, folder, *prev, all_flags);
  else if (session.exists_now() > 0)
    by_uid = co_await fetch_listing(session, folder, std::nullopt);
  std::vector<Msg> out;
  out.reserve(by_uid.size());
  for (auto& [uid, msg] : by_uid) out.push_back(std::move(msg));
  if (cache != nullptr) {
    if (const auto validity = session.selected().uidvalidity)
      cache->validities[key] = *validity;
    else
      cache->validities.erase(key);
    if (signature) {
      Listing listing{(*signature)[0], (*signature)[2], {}};
      for (const auto& m : out) listing.msgs.emplace(m.uid, m);
      cache->listings[key] = std::move(listing);
    } else {
      cache->listings.erase(key);
    }
  }
  co_return out;
}

// Hashes filled in after a listing go into the cached listing too.
void remember_hashes(PassCache& cache, const Session& session, const std::string& folder,
                     const std::vector<Msg>& msgs) {
  auto it = cache.listings.find(cache_key(session, folder));
  if (it == cache.listings.end()) return;
  for (const auto& m : msgs) {
    if (m.sha256.empty()) continue;
    if (auto c = it->second.msgs.find(m.uid); c != it->second.msgs.end()) c->second.sha256 = m.sha256;
  }
}

// The SHA-256 of each body, for messages without a Message-ID.
class HashSink : public BodySink {
 public:
  explicit HashSink(std::map<std::uint32_t, std::string>& out) : out_(out) {}
  ~HashSink() override { EVP_MD_CTX_free(ctx_); }
  HashSink(const HashSink&) = delete;
  HashSink& operator=(const HashSink&) = delete;

  asio::awaitable<void> begin(std::uint32_t uid, std::uint64_t) override {
    uid_ = uid;
    if (ctx_ == nullptr || EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr) != 1)
      throw ImapError("SHA-256 unavailable");
    co_return;
  }
  asio::awaitable<void> chunk(std::string_view data) override {
    EVP_DigestUpdate(ctx_, data.data(), data.size());
    co_return;
  }
  asio::awaitable<void> end() override {
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int length = 0;
    EVP_DigestFinal_ex(ctx_, digest, &length);
    std::string hex;
    for (unsigned i = 0; i < length; ++i) hex += fmt::format("{:02x}", digest[i]);
    out_[uid_] = std::move(hex);
    co_return;
  }

 private:
  std::map<std::uint32_t, std::string>& out_;
  EVP_MD_CTX* ctx_ = EVP_MD_CTX_new();
  std::uint32_t uid_ = 0;
};

// Each body into an APPEND on the destination as it arrives.
class AppendSink : public BodySink {
 public:
  AppendSink(Session& destination, const std::string& folder,
             const std::map<std::uint32_t, const Msg*>& messages, std::chrono::milliseconds delay)
      : destination_(destination), folder_(folder), messages_(messages), delay_(delay) {}

  asio::awaitable<void> begin(std::uint32_t uid, std::uint64_t size) override {
    auto it = messages_.find(uid);
    if (it == messages_.end()) throw ImapError(fmt::format("a body for UID {} not asked for", uid));
    // A copy of another size would never be paired with its source
    // message: copied again by every pass.
    if (size != it->second->size)
      throw ImapError(fmt::format("{}: message UID {} has {} bytes, but its RFC822.SIZE says {}: "
                                  "it cannot be copied so that the move recognises it",
                                  sanitize(folder_), uid, size, it->second->size));
    bytes += size;
    co_await destination_.append_begin(folder_, *it->second, size);
  }
  asio::awaitable<void> chunk(std::string_view data) override {
    co_await destination_.append_write(data);
  }
  asio::awaitable<void> end() override {
    co_await destination_.append_end();
    if (delay_.count() > 0) {
      asio::steady_timer pause(co_await asio::this_coro::executor, delay_);
      co_await pause.async_wait(use_tuple);
    }
  }

  std::uint64_t bytes = 0;

 private:
  Session& destination_;
  const std::string& folder_;
  const std::map<std::uint32_t, const Msg*>& messages_;
  std::chrono::milliseconds delay_;
};

// Batches of at most BATCH_BYTES (by RFC822.SIZE; a bigger message goes
// alone) and BATCH_MESSAGES, in order.
std::vector<std::vector<const Msg*>> batches(const std::vector<const Msg*>& todo,
                                             const PassOptions& options) {
  std::vector<std::vector<const Msg*>> out;
  std::uint64_t size = 0;
  for (const Msg* m : todo) {
    if (out.empty() || out.back().size() >= options.batch_messages ||
        (!out.back().empty() && size + m->size > options.batch_bytes)) {
      out.emplace_back();
      size = 0;
    }
    out.back().push_back(m);
    size += m->size;
  }
  return out;
}

// Fills in the SHA-256 of messages without a Message-ID (the folder
// selected); returns the messages without those that went away meanwhile
// (TOLERANT), or throws.
asio::awaitable<std::vector<Msg>> fill_hashes(Session& session, std::vector<Msg> msgs,
                                              const PassOptions& options, bool tolerant) {
  std::vector<const Msg*> todo;
  for (const auto& m : msgs)
    if (!m.message_id && m.sha256.empty()) todo.push_back(&m);
  if (todo.empty()) co_return msgs;
  std::map<std::uint32_t, std::string> hashes;
  for (const auto& batch : batches(todo, options)) {
    std::vector<std::uint32_t> uids;
    for (const Msg* m : batch) uids.push_back(m->uid);
    HashSink sink(hashes);
    for (const auto& slice : slices(uids)) co_await session.fetch_bodies(slice, sink);
  }
  std::vector<Msg> out;
  out.reserve(msgs.size());
  for (auto& m : msgs) {
    if (!m.message_id && m.sha256.empty()) {
      auto it = hashes.find(m.uid);
      if (it == hashes.end()) {
        if (!tolerant)
          throw ImapError(fmt::format("node {}: {}: no body for UID {} (expunged meanwhile?)",
                                      session.endpoint().describe(),
                                      sanitize(session.selected().name), m.uid));
        continue;
      }
      m.sha256 = it->second;
    }
    out.push_back(std::move(m));
  }
  co_return out;
}

void remove_value(std::vector<std::string>& list, const std::string& value) {
  list.erase(std::remove(list.begin(), list.end(), value), list.end());
}

bool contains(const std::vector<std::string>& list, const std::string& value) {
  return std::find(list.begin(), list.end(), value) != list.end();
}

std::size_t depth_of(const std::string& name, const std::string& delimiter) {
  if (delimiter.empty()) return 0;
  std::size_t n = 0;
  for (std::size_t at = name.find(delimiter); at != std::string::npos;
       at = name.find(delimiter, at + delimiter.size()))
    ++n;
  return n;
}

std::string quote(const std::string& name) {
  auto q = imap::quoted(name);
  if (!q)
    throw ImapError(fmt::format("folder {} cannot be named in an IMAP command safely (CR, LF, NUL "
                                "or an 8-bit byte in its name); rename it and run again",
                                sanitize(name)));
  return *q;
}

// FOLDER's UIDVALIDITY on SESSION's node at this run's last listing of it.
std::optional<std::uint64_t> last_validity(const PassCache& cache, const Session& session,
                                           const std::string& folder) {
  auto it = cache.validities.find(cache_key(session, folder));
  if (it == cache.validities.end()) return std::nullopt;
  return it->second;
}

// A source folder whose UIDVALIDITY changed since this run listed it was
// recreated (or its node's index rebuilt, or its storage replaced: an
// unmounted mail store looks like a fresh, empty account). Messages are
// paired by size and Message-ID, not UID, so an index rebuilt over the
// same mail removes nothing; messages missing after such a change are not
// taken for the user's deletions: the pass stops before removing anything.
void refuse_after_recreation(const Session& source, const std::string& folder,
                             std::optional<std::uint64_t> before, std::optional<std::uint64_t> now,
                             const std::string& what) {
  if (!before || !now || *before == *now) return;
  throw ImapError(fmt::format(
      "node {}: folder {} changed its UIDVALIDITY from {} to {} since this run listed it (the "
      "folder was recreated, or the node's index rebuilt or its mail storage replaced), and {}: "
      "nothing was removed from the destination. Check the source node first: a resumed run "
      "compares with its own listings only, so it takes the source as it is then",
      source.endpoint().describe(), sanitize(folder), *before, *now, what));
}

// A destination name as the destination compares names: the INBOX level
// (INBOX itself, or the first level of a child of it) in any case.
std::string collision_key(const std::string& target, const std::string& delimiter) {
  constexpr std::size_t kInbox = 5;
  if (target.size() < kInbox || !iequals(std::string_view(target).substr(0, kInbox), "INBOX"))
    return target;
  if (target.size() == kInbox ||
      (!delimiter.empty() && std::string_view(target).substr(kInbox).starts_with(delimiter)))
    return "INBOX" + target.substr(kInbox);
  return target;
}

std::string mapped(const std::string& name, const Session& source, const Session& destination) {
  auto target = map_folder(name, source.personal(), destination.personal());
  if (!target)
    throw ImapError(fmt::format("folder {} cannot be named on the destination (a level of its "
                                "name holds the destination's hierarchy separator {})",
                                sanitize(name), sanitize(destination.delimiter())));
  return *target;
}

}  // namespace

std::optional<Signature> signature_of(const Session& session) {
  if (!session.condstore()) return std::nullopt;
  const auto& s = session.selected();
  if (!s.uidvalidity || !s.uidnext || !s.highestmodseq) return std::nullopt;
  return Signature{*s.uidvalidity, *s.uidnext, *s.highestmodseq, s.exists};
}

asio::awaitable<std::vector<Msg>> list_folder(Session& session, const std::string& folder,
                                              bool write, PassCache* cache,
                                              std::optional<Signature>* at_select,
                                              bool all_flags) {
  constexpr int kAttempts = 5;
  for (int attempt = 1;; ++attempt) {
    std::optional<std::vector<Msg>> listed;
    try {
      listed = co_await list_once(session, folder, write, cache, at_select, all_flags);
    } catch (const ListingChanged&) {
      if (attempt == kAttempts) throw;
    }
    if (listed) co_return std::move(*listed);
    asio::steady_timer pause(co_await asio::this_coro::executor,
                             std::chrono::milliseconds(50 * attempt));
    co_await pause.async_wait(use_tuple);
  }
}

asio::awaitable<std::vector<Msg>> hash_bodies(Session& session, std::vector<Msg> msgs,
                                              std::uint64_t batch_bytes) {
  PassOptions options;
  options.batch_bytes = batch_bytes;
  options.batch_messages = 50;
  auto out = co_await fill_hashes(session, std::move(msgs), options, false);
  co_return out;
}

asio::awaitable<PassTotals> copy_pass(Session& src, Session& dst, CopyState& state,
                                      PassCache& cache, const PassOptions& options) {
  PassTotals totals;
  auto src_folders = co_await src.list();
  auto dst_listing = co_await dst.list();
  std::set<std::string> dst_names;
  for (const auto& [name, flags] : dst_listing) dst_names.insert(name);
  std::vector<std::string> folders;
  for (const auto& [name, flags] : src_folders)
    if (selectable(flags)) folders.push_back(name);
  totals.folders = folders.size();
  // Two source folders holding messages that would be one on the
  // destination (Cyrus' INBOX.inbox.X and INBOX.INBOX.X, or INBOX and a
  // selectable INBOX.INBOX, towards a node without a prefix): refused
  // before anything is written, naming both. (\Noselect parents hold no
  // messages: Cyrus' INBOX.INBOX above INBOX.INBOX.X is Dovecot's INBOX.)
  {
    std::map<std::string, std::string> seen;
    for (const auto& name : folders) {
      const std::string target = mapped(name, src, dst);
      auto [at, added] = seen.emplace(collision_key(target, dst.delimiter()), name);
      if (!added && at->second != name)
        throw ImapError(fmt::format("folders {} and {} would both be {} on the destination: "
                                    "rename one of them on the source",
                                    sanitize(at->second), sanitize(name), sanitize(target)));
    }
  }

  if (options.expunge_allowed) {
    // Folders and subscriptions this move added that the user removed (or
    // renamed) on the source since go too, children first (never one the
    // destination had or made itself). Out of any folder first: a selected
    // folder may not be deletable.
    std::set<std::string> wanted;
    for (const auto& [name, flags] : src_folders) wanted.insert(mapped(name, src, dst));
    std::vector<std::string> gone;
    for (const auto& name : dst_names)
      if (!wanted.contains(name) && contains(state.created_folders, name)) gone.push_back(name);
    const std::string delimiter = dst.delimiter().empty() ? "/" : dst.delimiter();
    std::sort(gone.begin(), gone.end(), [&delimiter](const std::string& a, const std::string& b) {
      auto da = depth_of(a, delimiter), db = depth_of(b, delimiter);
      return da != db ? da > db : a < b;
    });
    if (!gone.empty()) {
      if (const auto before = last_validity(cache, src, "INBOX")) {
        co_await src.select("INBOX", true);
        refuse_after_recreation(
            src, "INBOX", before, src.selected().uidvalidity,
            fmt::format("{} folder{} this move created went away from it", gone.size(),
                        gone.size() == 1 ? "" : "s"));
      }
      co_await dst.select("INBOX", true);
    }
    for (const auto& name : gone) {
      co_await dst.run(fmt::format("DELETE {}", sanitize(name)),
                       fmt::format("DELETE {}", quote(name)));
      dst_names.erase(name);
      remove_value(state.created_folders, name);
      ++totals.deleted_folders;
      if (options.on_state) options.on_state();
    }
    std::set<std::string> wanted_subs;
    const auto src_subscribed = co_await src.list(true);
    for (const auto& [name, flags] : src_subscribed) wanted_subs.insert(mapped(name, src, dst));
    const auto dst_subscribed = co_await dst.list(true);
    for (const auto& [name, flags] : dst_subscribed) {
      if (wanted_subs.contains(name) || !contains(state.added_subscriptions, name)) continue;
      co_await dst.run(fmt::format("UNSUBSCRIBE {}", sanitize(name)),
                       fmt::format("UNSUBSCRIBE {}", quote(name)));
      remove_value(state.added_subscriptions, name);
      ++totals.unsubscribed;
      if (options.on_state) options.on_state();
    }
  }
  for (const auto& name : folders) {
    const std::string target = mapped(name, src, dst);
    if (dst_names.contains(target) || iequals(target, "INBOX")) continue;
    co_await dst.run(fmt::format("CREATE {}", sanitize(target)),
                     fmt::format("CREATE {}", quote(target)));
    dst_names.insert(target);
    state.created_folders.push_back(target);
    cache.synced.erase(name);  // a folder made now holds nothing yet, whatever the source's signature
    ++totals.created;
    if (options.on_state) options.on_state();
  }
  std::set<std::string> dst_subs;
  const auto dst_subscribed = co_await dst.list(true);
  for (const auto& [name, flags] : dst_subscribed) dst_subs.insert(name);
  const auto src_subscribed = co_await src.list(true);
  for (const auto& [name, flags] : src_subscribed) {
    const std::string target = mapped(name, src, dst);
    if (dst_subs.contains(target)) continue;
    auto q = imap::quoted(target);
    if (!q) continue;  // a name that cannot be sent is not subscribed (the folder check names it)
    co_await dst.run(fmt::format("SUBSCRIBE {}", sanitize(target)),
                     fmt::format("SUBSCRIBE {}", *q));
    dst_subs.insert(target);
    if (!contains(state.added_subscriptions, target)) state.added_subscriptions.push_back(target);
    ++totals.subscribed;
    if (options.on_state) options.on_state();
  }

  PassProgress progress;
  progress.folders = folders.size();
  auto report = [&options, &progress] {
    if (options.progress) options.progress(progress);
  };
  for (const auto& name : folders) {
    report();
    const std::string target = mapped(name, src, dst);
    // A source folder the node refuses to open now (renamed or deleted
    // since the listing, or in use), or whose listing did not add up in
    // any of its attempts (mail arriving or expunged all the time): with
    // the user active (a pre-copy pass) it is skipped, since the locked
    // pass copies (or fails on) whatever is left then. With the user
    // locked out it is an error.
    std::exception_ptr refused;
    bool refused_again = false;
    bool unchanged = false;
    std::optional<Signature> src_signature;
    std::vector<Msg> src_msgs;
    const auto validity_before = last_validity(cache, src, name);
    try {
      // Unchanged since the pass that brought the destination up to it.
      if (auto synced = cache.synced.find(name); synced != cache.synced.end()) {
        co_await src.select(name, true);
        const auto now = signature_of(src);
        unchanged = now && *now == synced->second;
        if (!unchanged) cache.synced.erase(synced);
      }
      if (!unchanged) src_msgs = co_await list_folder(src, name, false, &cache, &src_signature);
    } catch (const FolderRefused&) {
      refused = std::current_exception();
      // Refused in an earlier pass of this run too, and still listed: not
      // a rename in flight but a folder that cannot be read (no "r" right);
      // the pre-copy fails on it now, with the user still active, rather
      // than the locked pass later.
      refused_again = !cache.refused.insert(name).second;
    } catch (const ListingChanged&) {
      refused = std::current_exception();
    }
    if (refused) {
      if (!options.tolerant || refused_again) std::rethrow_exception(refused);
      ++totals.skipped_folders;
      ++progress.folders_done;
      continue;
    }
    if (unchanged) {
      ++totals.unchanged;
      ++progress.folders_done;
      continue;
    }
    const auto validity_now = src.selected().uidvalidity;
    const std::size_t listed = src_msgs.size();
    auto dst_msgs = co_await list_folder(dst, target, true, &cache);
    src_msgs = co_await fill_hashes(src, std::move(src_msgs), options, options.tolerant);
    std::size_t dropped = listed - src_msgs.size();  // expunged meanwhile (the pre-copy)
    dst_msgs = co_await fill_hashes(dst, std::move(dst_msgs), options, false);
    remember_hashes(cache, src, name, src_msgs);
    remember_hashes(cache, dst, target, dst_msgs);
    const FolderPlan plan = plan_folder(src_msgs, dst_msgs);
    totals.already += plan.already;
    for (const auto& [flags, uids] : plan.restore) {
      std::string list;
      for (const auto& f : flags) {
        if (!valid_flag(f))
          throw ImapError(fmt::format("{}: a flag that is not a valid IMAP flag ({}): it cannot "
                                      "be copied; remove it on the source and run again",
                                      sanitize(name), sanitize(f)));
        list += (list.empty() ? "" : " ") + f;
      }
      for (const auto& slice : slices(uids))
        co_await dst.run(fmt::format("STORE FLAGS in {}", sanitize(target)),
                         fmt::format("UID STORE {} FLAGS.SILENT ({})", uid_set(slice), list));
      totals.flags += uids.size();
    }
    if (!plan.extra.empty() && options.expunge_allowed) {
      refuse_after_recreation(
          src, name, validity_before, validity_now,
          fmt::format("{} message{} on the destination {} not on it now", plan.extra.size(),
                      plan.extra.size() == 1 ? "" : "s", plan.extra.size() == 1 ? "is" : "are"));
      if (!dst.has("UIDPLUS"))
        throw ImapError(fmt::format("node {} does not offer UIDPLUS (RFC 4315): messages expunged "
                                    "on the source cannot be removed from {} without touching "
                                    "others marked \\Deleted",
                                    dst.endpoint().describe(), sanitize(target)));
      for (const auto& slice : slices(plan.extra)) {
        const std::string set = uid_set(slice);
        co_await dst.run(fmt::format("STORE \\Deleted in {}", sanitize(target)),
                         fmt::format("UID STORE {} +FLAGS.SILENT (\\Deleted)", set));
        co_await dst.run(fmt::format("UID EXPUNGE in {}", sanitize(target)),
                         fmt::format("UID EXPUNGE {}", set));
      }
      totals.expunged += plan.extra.size();
    } else {
      totals.kept_extra += plan.extra.size();
    }
    std::vector<const Msg*> todo;
    for (const auto& m : plan.todo) {
      todo.push_back(&m);
      progress.bytes_total += m.size;
    }
    for (const auto& batch : batches(todo, options)) {
      std::vector<std::uint32_t> uids;
      std::map<std::uint32_t, const Msg*> by_uid;
      for (const Msg* m : batch) {
        uids.push_back(m->uid);
        by_uid[m->uid] = m;
      }
      AppendSink sink(dst, target, by_uid, options.delay);
      std::vector<std::uint32_t> got;
      for (const auto& slice : slices(uids)) {
        auto some = co_await src.fetch_bodies(slice, sink);
        got.insert(got.end(), some.begin(), some.end());
      }
      co_await dst.append_results();
      if (got.size() != uids.size() && !options.tolerant)
        throw ImapError(fmt::format("node {}: {}: {} of {} bodies came (expunged meanwhile?)",
                                    src.endpoint().describe(), sanitize(name), got.size(),
                                    uids.size()));
      totals.vanished += uids.size() - got.size();
      dropped += uids.size() - got.size();
      totals.messages += got.size();
      totals.bytes += sink.bytes;
      progress.messages += got.size();
      progress.bytes += sink.bytes;
      report();
    }
    // The destination now holds what the source held when it was listed
    // (the verification checks it all the same), unless messages went away
    // while they were read: then the next pass looks again.
    if (src_signature && dropped == 0) cache.synced[name] = *src_signature;
    ++progress.folders_done;
  }
  report();
  co_return totals;
}

}  // namespace isthmus::moves::imap
