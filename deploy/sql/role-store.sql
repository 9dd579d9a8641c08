-- Names compare byte for byte (utf8mb4_bin), as Isthmus compares them.
-- The shared role store of Isthmus instances (config "roles": {"store": "sql"}).
-- docs/health.md explains how the rows are used. MySQL 5.7+/MariaDB 10.3+
-- (InnoDB; NDB works too: ENGINE=NDBCLUSTER).
--
-- Grants for the instances' account (say 'isthmus_roles'@'10.0.0.%'):
--   GRANT SELECT, INSERT, UPDATE ON mail.isthmus_roles      TO ...;
--   GRANT SELECT, INSERT, UPDATE ON mail.isthmus_instances  TO ...;
--   GRANT SELECT, INSERT, UPDATE ON mail.isthmus_node_views TO ...;
--   GRANT SELECT, INSERT, UPDATE, DELETE ON mail.isthmus_moves TO ...;  (with "moves")

-- Who holds each active-passive island's active role. Changed only by
-- compare-and-set on epoch (UPDATE ... WHERE island = ? AND epoch = ?); a
-- missing row is added by the first instance, with its config's "active".
-- An operator may move a role by hand the same way:
--   UPDATE isthmus_roles SET node = 'a-right', epoch = epoch + 1,
--          changed_by = 'dba', changed_at = NOW(6) WHERE island = 'a';
CREATE TABLE IF NOT EXISTS isthmus_roles (
  island     VARCHAR(128) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
  node       VARCHAR(128) COLLATE utf8mb4_bin NOT NULL,
  epoch      BIGINT UNSIGNED NOT NULL,
  changed_by VARCHAR(128) NOT NULL,    -- the instance (config "instance") or operator
  changed_at DATETIME(6) NOT NULL
) DEFAULT CHARSET = utf8mb4;

-- One row per instance, its heartbeat written every poll_interval. An
-- instance whose heartbeat is older than instance_timeout is not counted.
CREATE TABLE IF NOT EXISTS isthmus_instances (
  instance     VARCHAR(128) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
  heartbeat_at DATETIME(6) NOT NULL
) DEFAULT CHARSET = utf8mb4;

-- What each instance's health checks say about each node of an
-- active-passive island.
CREATE TABLE IF NOT EXISTS isthmus_node_views (
  instance VARCHAR(128) COLLATE utf8mb4_bin NOT NULL,
  node     VARCHAR(128) COLLATE utf8mb4_bin NOT NULL,
  down     TINYINT(1) NOT NULL,
  seen_at  DATETIME(6) NOT NULL,
  PRIMARY KEY (instance, node),
  KEY by_node (node, down, seen_at)
) DEFAULT CHARSET = utf8mb4;

-- Move jobs ("moves": {"store": "sql"}, docs/move.md "Moves as jobs of
-- the daemon"): one row per job. Its owner renews lease_until with every
-- write (compare-and-set on id, owner, epoch); an instance takes over a job
-- whose lease ran out by raising its epoch. active_user is the user while
-- the job is unfinished (NULL after): one unfinished move per user.
-- Grants: GRANT SELECT, INSERT, UPDATE, DELETE ON mail.isthmus_moves TO ...;
CREATE TABLE IF NOT EXISTS isthmus_moves (
  id              VARCHAR(64) COLLATE utf8mb4_bin NOT NULL PRIMARY KEY,
  user_name       VARCHAR(320) COLLATE utf8mb4_bin NOT NULL,
  active_user     VARCHAR(320) COLLATE utf8mb4_bin NULL,
  state           VARCHAR(16) NOT NULL,
  owner           VARCHAR(128) COLLATE utf8mb4_bin NOT NULL,
  epoch           BIGINT UNSIGNED NOT NULL,
  lease_until     DATETIME(6) NOT NULL,
  abort_requested TINYINT(1) NOT NULL DEFAULT 0,
  doc             MEDIUMTEXT NOT NULL,   -- the job (JSON): steps, progress, history, the mover's journal
  created_at      DATETIME(6) NOT NULL,
  updated_at      DATETIME(6) NOT NULL,
  UNIQUE KEY one_per_user (active_user),
  KEY by_created (created_at)
) DEFAULT CHARSET = utf8mb4;
