#pragma once
// The SQL directory: one prepared statement against MySQL/MariaDB (or the
// SQL nodes of a MySQL Cluster), run by sql::Client on the directory thread.
//
// The query's columns, by position: island, state (NULL or empty: active),
// password hash (NULL: none), node login (NULL: the login name). One row:
// found; no row: not found; more than one row: unavailable (an ambiguous
// answer is never routed on); a server that cannot answer: unavailable.

#include "config/config.hpp"
#include "director/directory.hpp"
#include "sql/client.hpp"

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace isthmus::director {

std::shared_ptr<Directory> make_sql_directory(const config::SqlDirectory& settings);

// A query template as the server gets it: each %{user}, %{localpart} or
// %{domain} becomes a `?`, and `parameters` says which value is bound to
// each, in order.
struct SqlStatement {
  std::string text;
  std::vector<TemplatePiece::Field> parameters;
};
SqlStatement sql_statement_from_template(std::string_view query);

// The values to bind for `user` (a normalised login name), in order.
// `value`: what %{value} stands for (write statements; empty for lookups).
std::vector<std::string> sql_parameters(const SqlStatement& statement, std::string_view user,
                                        std::string_view value = {});

// The lookup's answer from what the query returned.
LookupResult lookup_result_from_rows(const sql::QueryResult& result);

}  // namespace isthmus::director
