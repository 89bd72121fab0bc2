-- The audit log: every change through the API and every failed authentication (`subject`
-- NULL). `at` is milliseconds since the Unix epoch (UTC); `outcome` the answer's HTTP status.
-- Listed newest first by (at, id), and pruned by `at`, both through the one index.
CREATE TABLE flowbot_audit (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    subject    TEXT,
    role       TEXT,
    method     TEXT    NOT NULL,
    route      TEXT    NOT NULL,
    path       TEXT    NOT NULL,
    resource   TEXT,
    outcome    INTEGER NOT NULL,
    request_id TEXT    NOT NULL,
    client     TEXT,
    detail     TEXT
);
CREATE INDEX flowbot_audit_at ON flowbot_audit (at, id);
