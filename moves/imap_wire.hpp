#pragma once
// The pure side of the C++ mailbox copy (docs/move.md, "The copy engine"):
// IMAP responses as a node sends them (RFC 3501 section 9 grammar, the
// subset a copy reads: atoms, quoted strings, literals, NIL, parenthesised
// lists, FETCH items), the arguments a copy writes (folder names, flags,
// dates, UID sets), and the plan of one pass over one folder (which source
// messages to copy, which destination flags to set, which destination
// messages to expunge). No I/O: unit-tested and fuzzed (fuzz_imap_wire).
//
// Everything here reads bytes a node sent: a broken or hostile node may
// send anything. Parsing never throws on bad input (it returns nullopt or
// skips), never recurses deeper than kMaxDepth, and never reads past the
// input.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::moves::imap {

inline constexpr std::size_t kMaxDepth = 32;  // list nesting in one response

// One parsed value of a response.
struct Value {
  enum class Kind : std::uint8_t { atom, string, nil, list };
  Kind kind = Kind::nil;
  std::string text;          // atom (as sent) or string bytes (quoted: unescaped; literal: raw)
  std::vector<Value> items;  // list

  bool is_atom(std::string_view upper) const;  // an atom equal to UPPER, ignoring ASCII case
  bool is_text() const { return kind == Kind::atom || kind == Kind::string; }
};

// The values of one response, from the bytes after "* " (or after the tag
// and a space) up to and excluding the final CRLF. Literals are inline as
// on the wire: "{N}\r\n" (or "{N+}\r\n") then exactly N bytes. An atom
// runs to a space, "(", ")" or the end; "[" after BODY, BODY.PEEK, BINARY,
// BINARY.PEEK or BINARY.SIZE (any case) opens a section that runs to its
// matching "]" (spaces and parentheses inside belong to the atom:
// `BODY[HEADER.FIELDS (MESSAGE-ID)]` is one atom); elsewhere "[" and "]"
// are atom characters. NIL (any case) is Kind::nil. An unclosed list is
// closed at the end; a stray ")" is skipped; a literal whose count runs
// past the input, or a count over 2^32, makes the whole parse nullopt, as
// does nesting deeper than kMaxDepth. A quoted string without its closing
// quote runs to the end.
std::optional<std::vector<Value>> parse_values(std::string_view wire);

// A line (without CRLF) that ends with a literal count "{N}" or "{N+}":
// N. Otherwise nullopt (also for N over 2^32 or no digits).
std::optional<std::uint64_t> literal_at_end(std::string_view line);

// The items of a FETCH response's list: `* 12 FETCH (UID 5 FLAGS (\Seen))`
// parsed (values "12", "FETCH", list) -> {"UID": atom 5, "FLAGS": list}.
// Keys upper-cased; a key that is not an atom is skipped; a later
// duplicate key replaces the earlier one. Empty unless values[1] is the
// atom FETCH and values[2] a list.
std::map<std::string, Value> fetch_items(const std::vector<Value>& values);

// A decimal number of at most 20 digits that fits in 64 bits, nothing
// else (no sign, no spaces).
std::optional<std::uint64_t> parse_number(std::string_view text);

// A flag as RFC 3501 allows it: an atom, or "\" and an atom (ATOM-CHAR: a
// printable ASCII character other than ( ) { % * " \ ] and space).
bool valid_flag(std::string_view flag);

// The flags of a FLAGS item, sorted, without \Recent (any case), each a
// valid flag; nullopt if the value is not a list or holds an item that is
// not a valid flag.
std::optional<std::vector<std::string>> flags_of(const Value& value);

// An INTERNALDATE as RFC 3501 writes it: "dd-Mon-yyyy hh:mm:ss +zzzz"
// (day of one or two digits, a leading space allowed for one digit).
bool valid_internaldate(std::string_view date);
// Seconds since the epoch, or nullopt if not a valid date.
std::optional<std::int64_t> internaldate_epoch(std::string_view date);

// The Message-ID header's value in a header block (unfolded; the first
// one; surrounding white space removed); nullopt when there is none or it
// is empty.
std::optional<std::string> message_id_of(std::string_view header);

// A folder name or other string as an IMAP quoted string ("a \"b\" c"),
// or nullopt if it holds CR, LF or NUL (it cannot be sent safely) or a
// byte over 0x7F (it must then go as a literal; folder names from LIST
// are modified UTF-7, so 7-bit).
std::optional<std::string> quoted(std::string_view text);

// UIDs (any order, duplicates allowed) as a sequence set: {1,2,3,5} ->
// "1:3,5". Empty input: "".
std::string uid_set(std::vector<std::uint32_t> uids);

// A folder name in the source's hierarchy written with the destination's
// delimiter; nullopt when a level of it holds the destination's delimiter
// (it cannot be named there). An empty delimiter on either side: NAME.
std::optional<std::string> map_name(std::string_view name, std::string_view from_delimiter,
                                    std::string_view to_delimiter);

// A node's personal namespace (RFC 2342): its prefix ("" on Dovecot by
// default, "INBOX." on Cyrus without altnamespace) and hierarchy delimiter.
struct PersonalNamespace {
  std::string prefix;
  std::string delimiter;
};

// NAME starts with PREFIX (never with ""); "INBOX" compares in any case.
bool under_prefix(std::string_view name, std::string_view prefix);

// A folder of the source's personal namespace as the destination names
// it: the source's prefix taken off, the delimiter translated (map_name),
// the destination's prefix put on, so that Cyrus' "INBOX.Sent" is
// Dovecot's "Sent" and back. INBOX is INBOX on both sides. The mapping
// is one-to-one: Dovecot's "INBOX/Sent" (a child of INBOX) becomes
// "INBOX.INBOX.Sent", not "INBOX.Sent" (which "Sent" becomes), and
// Cyrus' "INBOX.INBOX" (the parent of such a child) is "INBOX" towards a
// node without a prefix (the caller refuses it beside INBOX if it holds
// messages). nullopt when map_name cannot name it, or when it is outside
// the source's prefix (not the user's: another namespace).
// A prefix is expected to end with its delimiter (Session::personal()
// gives "" for one that does not).
std::optional<std::string> map_folder(std::string_view name, const PersonalNamespace& from,
                                      const PersonalNamespace& to);

// Whether a LIST response's flags let the folder be selected (no
// \Noselect, no \NonExistent, any case).
bool selectable(const std::vector<std::string>& flags);

// A longer Message-ID (over a header line's 998 bytes, RFC 5322) is no
// key a listing keeps: its message pairs by the body's SHA-256 instead.
inline constexpr std::size_t kMaxMessageId = 998;

// One message of a folder listing.
struct Msg {
  std::uint32_t uid = 0;
  std::uint64_t size = 0;                // RFC822.SIZE
  std::optional<std::string> message_id;  // at most kMaxMessageId bytes
  std::vector<std::string> flags;        // sorted, no \Recent
  std::string date;                      // INTERNALDATE as sent, "" if none
  std::string sha256;                    // hex of the body, for a message without Message-ID

  // What identifies the message across servers: "SIZE id MESSAGE-ID", or
  // "SIZE sha256 HEX" (the body's hash must be filled in first).
  std::string key() const;
};

// One listing response turned into a Msg: the FETCH items of
// `UID FETCH ... (UID RFC822.SIZE FLAGS INTERNALDATE
// BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])`. nullopt, and `unsolicited`
// set, for a FETCH that carries none of RFC822.SIZE, INTERNALDATE and a
// BODY[HEADER...] item (another session's flag change); nullopt with
// `error` set when UID or RFC822.SIZE is missing or unreadable, the flags
// are not valid, or the date is not a valid INTERNALDATE.
struct ListedMsg {
  std::optional<Msg> msg;
  bool unsolicited = false;
  std::string error;
};
ListedMsg listed_message(const std::map<std::string, Value>& items);

// What one pass does to one folder: the source's and the destination's
// messages paired by key, as multisets and in UID order, so that a message
// that is in a folder twice is copied twice and a message copied earlier is
// never copied again (the rules of the Python mover this replaced).
struct FolderPlan {
  std::vector<Msg> todo;  // source messages without a partner, in source order
  // Partners whose flags differ: (the source's flags, destination UIDs
  // ascending), groups ordered by flags.
  std::vector<std::pair<std::vector<std::string>, std::vector<std::uint32_t>>> restore;
  std::vector<std::uint32_t> extra;  // destination UIDs without a partner, ascending
  std::size_t already = 0;           // pairs

  std::size_t flag_changes() const;
};
FolderPlan plan_folder(const std::vector<Msg>& source, const std::vector<Msg>& destination);

}  // namespace isthmus::moves::imap
