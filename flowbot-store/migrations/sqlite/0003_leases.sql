-- Named leases: a platform connection that must exist once (Telegram long polling, a Discord
-- gateway shard, Slack Socket Mode) is run by the process holding its lease. `token` grows
-- with every new holder (fencing); `expires_at` is milliseconds since the Unix epoch (UTC).
CREATE TABLE flowbot_leases (
    name       TEXT    NOT NULL PRIMARY KEY,
    owner      TEXT    NOT NULL,
    token      INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
