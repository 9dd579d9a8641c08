#pragma once
// The static directory: a text file mapping login names to islands.
//
//   # comment
//   alice@example.org   a        exact user
//   bob@example.org     b  state=moving  node_login=bob  (optional attributes)
//   *@example.com       b        every user of a domain
//   *                   a        the default island (optional)
//
// Keys are normalised like login names. Lookups are a hash-map probe on an
// immutable table; a reload builds a new directory and swaps it in.

#include "config/config.hpp"
#include "director/directory.hpp"

#include <filesystem>
#include <functional>
#include <optional>
#include <unordered_map>

namespace isthmus::director {

class StaticDirectory final : public Directory {
 public:
  using IslandCheck = std::function<bool(std::string_view island)>;

  // Throws config::ConfigError ("FILE:LINE: what is wrong") for unreadable
  // files, bad lines, duplicate keys and islands `known_island` rejects.
  static std::shared_ptr<StaticDirectory> load(const std::filesystem::path& file,
                                               const config::LoginNames& rules,
                                               const IslandCheck& known_island);
  static std::shared_ptr<StaticDirectory> parse(std::string_view text, const std::string& source,
                                                const config::LoginNames& rules,
                                                const IslandCheck& known_island);

  LookupResult find(std::string_view user) const;
  boost::asio::awaitable<LookupResult> lookup(std::string user) override;
  std::string_view kind() const override { return "static"; }

  std::size_t size() const { return users_.size() + domains_.size() + (fallback_ ? 1 : 0); }

 private:
  std::unordered_map<std::string, UserEntry> users_;      // login name -> entry
  std::unordered_map<std::string, std::string> domains_;  // domain -> island
  std::optional<std::string> fallback_;
};

}  // namespace isthmus::director
