-- Isthmus SQL directory: a CalMail-style account schema (MariaDB / MySQL).
--
-- UC Berkeley's CalMail kept its accounts in MySQL Cluster: a `domain` table
-- and an `account` table joined on domain_id, looked up by local part and
-- domain name, with a state column (their Exim router matched only
-- state = 'active'). Isthmus reads the same shape and adds the island (which
-- backend group serves the mailbox), the login name to use on the island's
-- nodes, and a password hash for authentication mode "directory".
--
-- Load into the database of your choice:
--     mariadb mail < calmail-schema.sql
-- (the test lab does exactly that: tests/lab/mariadb.py).
--
-- ---------------------------------------------------------------------------
-- The lookup Isthmus runs by default (config: directory.sql.query), one round
-- trip, a prepared statement; %{localpart}, %{domain} and %{user} (the whole
-- normalised login name) are bound as parameters (Isthmus turns each into a
-- `?`), never spliced into the text:
--
--     SELECT a.island, a.state, a.password,
--            COALESCE(a.node_login, CONCAT(a.localpart, '@', d.name)) AS node_login
--       FROM account a
--       JOIN domain d ON d.id = a.domain_id
--      WHERE a.localpart = %{localpart} AND d.name = %{domain}
--
-- Columns, by position: island, state ('active' | 'disabled' | 'moving'),
-- password (a crypt(3) string, optionally with a Dovecot {SCHEME} prefix:
-- $6$ SHA512-CRYPT, $2b$/$2y$ BLF-CRYPT, $y$ yescrypt; NULL when the
-- deployment authenticates on the nodes), node_login (the name to log in
-- to the node with). No row: unknown user. The unique keys below make more
-- than one row impossible; it uses account_address and domain_name.
--
-- The connection must use utf8mb4 (MYSQL_SET_CHARSET_NAME "utf8mb4"): with
-- the server's default latin1 connection charset a non-ASCII local part
-- would be converted before the comparison and never match.
-- ---------------------------------------------------------------------------

-- Domain names in ASCII (IDNs as A-labels, xn--...), compared case-
-- insensitively; NOPAD so 'example.org ' is not 'example.org'.
CREATE TABLE domain (
  id    INT UNSIGNED NOT NULL AUTO_INCREMENT,
  name  VARCHAR(253) CHARACTER SET ascii COLLATE ascii_general_nopad_ci NOT NULL,
  PRIMARY KEY (id),
  UNIQUE KEY domain_name (name)
) ENGINE=InnoDB;

-- localpart and node_login compare byte for byte (utf8mb4_nopad_bin): a case-
-- or accent-insensitive collation would make 'zoe' find 'zoë' and 'Alice'
-- find 'alice' (Isthmus normalises case itself, by config), and a PAD SPACE
-- collation would make 'alice ' find 'alice'. 64 characters: RFC 5321
-- allows 64 octets, RFC 6531 local parts are UTF-8.
--
-- state is an ENUM here for self-documentation; CalMail avoided enums
-- (changing one is a schema change) -- a VARCHAR(12) holding the same words
-- works with the same query.
CREATE TABLE account (
  id          INT UNSIGNED NOT NULL AUTO_INCREMENT,
  localpart   VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
  domain_id   INT UNSIGNED NOT NULL,
  state       ENUM('active', 'disabled', 'moving') NOT NULL DEFAULT 'active',
  island      VARCHAR(64) CHARACTER SET ascii COLLATE ascii_general_nopad_ci NOT NULL,
  password    VARCHAR(255) CHARACTER SET ascii COLLATE ascii_bin NULL,
  node_login  VARCHAR(320) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NULL,
  PRIMARY KEY (id),
  UNIQUE KEY account_address (localpart, domain_id),
  KEY account_domain (domain_id),
  KEY account_island (island, state),
  CONSTRAINT account_domain_fk FOREIGN KEY (domain_id) REFERENCES domain (id)
) ENGINE=InnoDB;

-- The account Isthmus connects as: reads both tables; UPDATE on account
-- for `isthmusctl move` (state 'moving', then the new island, then
-- 'active'). With --skip-name-resolve, 'u'@'localhost' matches only unix
-- socket connections: TCP from 127.0.0.1 needs its own 'u'@'127.0.0.1'.
--
--   CREATE USER 'isthmus'@'10.0.0.%' IDENTIFIED BY '...';
--   GRANT SELECT ON mail.* TO 'isthmus'@'10.0.0.%';
--   GRANT UPDATE ON mail.account TO 'isthmus'@'10.0.0.%';
