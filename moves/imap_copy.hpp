#pragma once
// One copy pass of a mailbox from a source node to a destination node,
// both as the master user (docs/move.md, "The copy engine"): folders and
// subscriptions added, messages missing on the destination copied with
// their flags and INTERNALDATE (streamed: each body goes from the source's
// FETCH into the destination's APPEND as it arrives; MULTIAPPEND batches
// where offered, so a batch is saved whole or not at all), flags that
// differ set to the source's, and, when allowed, messages no longer on the
// source expunged from the destination (UID EXPUNGE: only those). The same
// rules as the Python mover's copy pass had:
// messages are paired by size and Message-ID (or the body's SHA-256), as
// multisets, so a pass can be repeated at will and never copies a message
// twice.

#include "moves/imap_session.hpp"

#include <array>
#include <functional>
#include <map>
#include <set>

namespace isthmus::moves::imap {

// What the passes of one move added (kept by the caller between passes,
// in the move's journal): only these are ever removed again.
struct CopyState {
  std::vector<std::string> created_folders;
  std::vector<std::string> added_subscriptions;
};

struct PassTotals {
  std::uint64_t folders = 0, created = 0, subscribed = 0, unsubscribed = 0, deleted_folders = 0;
  std::uint64_t messages = 0, bytes = 0, flags = 0, expunged = 0, kept_extra = 0;
  std::uint64_t vanished = 0, already = 0;
  std::uint64_t unchanged = 0;  // folders skipped: the same CONDSTORE signature as after the last pass
  std::uint64_t skipped_folders = 0;  // tolerant pass: source folders refused or never listed whole
};

// (UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ, EXISTS) of a selected folder: with
// CONDSTORE, a folder whose signature is that of its last pass has not
// changed since.
using Signature = std::array<std::uint64_t, 4>;
std::optional<Signature> signature_of(const Session& session);

// What the passes of one run remember (in memory; lost on a restart, which
// only makes the next pass list in full): each node's last listing of each
// folder with its UIDVALIDITY and HIGHESTMODSEQ, so that the next listing
// reads the UIDs, the flags changed since (CHANGEDSINCE, RFC 7162) and the
// new messages only (sizes, Message-IDs and dates do not change under a
// UID); the source folders' signatures after a pass that brought the
// destination up to them; and each folder's UIDVALIDITY at its last
// listing (with or without CONDSTORE), so that a pass does not remove from
// the destination what a source folder recreated since no longer holds.
struct Listing {
  std::uint64_t validity = 0, modseq = 0;
  std::map<std::uint32_t, Msg> msgs;
};
struct PassCache {
  std::map<std::string, Listing> listings;  // key: node name, NUL, folder
  std::map<std::string, Signature> synced;  // source folder -> signature
  std::map<std::string, std::uint64_t> validities;  // key as listings: UIDVALIDITY when listed
  std::set<std::string> refused;  // source folders a tolerant pass skipped as refused
};

struct PassProgress {
  std::uint64_t folders_done = 0, folders = 0, messages = 0, bytes = 0, bytes_total = 0;
};

struct PassOptions {
  bool tolerant = false;         // the user active: a message expunged while read is skipped
  bool expunge_allowed = false;  // remove what the source no longer has (and folders we added)
  std::uint64_t batch_bytes = 16 * 1024 * 1024;
  std::size_t batch_messages = 500;
  std::function<void(const PassProgress&)> progress;  // after each batch and folder
  std::chrono::milliseconds delay{0};  // a test hook: slept after each message copied
  // After each folder or subscription the pass added or removed (CopyState
  // changed): the caller records it at once (a pass that dies later must
  // not forget what it made).
  std::function<void()> on_state;
};

// Throws ImapError (from either session, or the pass's own checks).
boost::asio::awaitable<PassTotals> copy_pass(Session& source, Session& destination,
                                             CopyState& state, PassCache& cache,
                                             const PassOptions& options);

// Every message of the folder, listed again (up to 5 times) when it changed
// while it was read. Selects it (EXAMINE, or SELECT when WRITE). CACHE:
// listed incrementally when this node listed it before (see PassCache).
// AT_SELECT: the folder's signature when it was selected for the listing
// that was kept. ALL_FLAGS: an incremental listing reads every message's
// flags, not only those changed since (the verification: it does not trust
// what the node's modseqs say).
boost::asio::awaitable<std::vector<Msg>> list_folder(Session& session, const std::string& folder,
                                                     bool write, PassCache* cache = nullptr,
                                                     std::optional<Signature>* at_select = nullptr,
                                                     bool all_flags = false);

// MSGS (a listing of the selected folder) with the SHA-256 of the body of
// each message without a Message-ID filled in, the bodies read in batches
// of at most BATCH_BYTES. Throws ImapError when a body does not come.
boost::asio::awaitable<std::vector<Msg>> hash_bodies(Session& session, std::vector<Msg> msgs,
                                                     std::uint64_t batch_bytes);

}  // namespace isthmus::moves::imap
