-- FlowBot schema, PostgreSQL. Times are milliseconds since the Unix epoch (UTC).
CREATE TABLE flowbot_tasks (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue           TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    state           TEXT    NOT NULL,
    priority        BIGINT  NOT NULL DEFAULT 0,
    run_at          BIGINT  NOT NULL,
    attempts        BIGINT  NOT NULL DEFAULT 0,
    max_attempts    BIGINT,
    retry           TEXT,
    dedupe_key      TEXT,
    concurrency_key TEXT,
    lease_owner     TEXT,
    lease_until     BIGINT,
    created_at      BIGINT  NOT NULL,
    finished_at     BIGINT,
    last_error      TEXT
);
CREATE INDEX flowbot_tasks_claim ON flowbot_tasks (queue, priority, run_at, id) WHERE state = 'queued';
CREATE INDEX flowbot_tasks_lease ON flowbot_tasks (lease_until) WHERE state = 'running';
CREATE UNIQUE INDEX flowbot_tasks_dedupe ON flowbot_tasks (dedupe_key) WHERE state IN ('queued', 'running');
CREATE INDEX flowbot_tasks_key_order ON flowbot_tasks (concurrency_key, id) WHERE state IN ('queued', 'running') AND concurrency_key IS NOT NULL;
CREATE INDEX flowbot_tasks_finished ON flowbot_tasks (finished_at) WHERE state IN ('done', 'cancelled');

CREATE TABLE flowbot_task_errors (
    seq     BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_id BIGINT  NOT NULL,
    attempt BIGINT  NOT NULL,
    error   TEXT    NOT NULL,
    at      BIGINT  NOT NULL
);
CREATE INDEX flowbot_task_errors_task ON flowbot_task_errors (task_id, seq);

CREATE TABLE flowbot_dead_letters (
    task_id BIGINT  PRIMARY KEY,
    reason  TEXT    NOT NULL,
    died_at BIGINT  NOT NULL
);

-- One row per concurrency key held by a running task.
CREATE TABLE flowbot_task_keys (
    key     TEXT    PRIMARY KEY,
    task_id BIGINT  NOT NULL
);
CREATE INDEX flowbot_task_keys_task ON flowbot_task_keys (task_id);

CREATE TABLE flowbot_schedules (
    name         TEXT    PRIMARY KEY,
    cron         TEXT    NOT NULL,
    timezone     TEXT    NOT NULL,
    queue        TEXT    NOT NULL,
    kind         TEXT    NOT NULL,
    payload      TEXT    NOT NULL,
    retry        TEXT,
    misfire      TEXT    NOT NULL,
    next_fire_at BIGINT  NOT NULL,
    last_fire_at BIGINT,
    paused       BOOLEAN NOT NULL DEFAULT FALSE,
    created_at   BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL
);
CREATE INDEX flowbot_schedules_due ON flowbot_schedules (next_fire_at) WHERE NOT paused;

CREATE TABLE flowbot_schedule_fires (
    schedule TEXT    NOT NULL,
    fire_at  BIGINT  NOT NULL,
    task_id  BIGINT,
    fired_at BIGINT  NOT NULL,
    PRIMARY KEY (schedule, fire_at)
);

CREATE TABLE flowbot_messages (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel      TEXT    NOT NULL,
    conversation TEXT    NOT NULL,
    direction    TEXT    NOT NULL,
    message_id   TEXT    NOT NULL,
    sender       TEXT,
    text         TEXT    NOT NULL,
    body         TEXT    NOT NULL,
    at           BIGINT  NOT NULL
);
CREATE UNIQUE INDEX flowbot_messages_dedupe ON flowbot_messages (channel, direction, message_id);
CREATE INDEX flowbot_messages_conversation ON flowbot_messages (channel, conversation, seq);

CREATE TABLE flowbot_conversations (
    channel         TEXT    NOT NULL,
    conversation    TEXT    NOT NULL,
    started_at      BIGINT  NOT NULL,
    last_message_at BIGINT  NOT NULL,
    message_count   BIGINT  NOT NULL,
    PRIMARY KEY (channel, conversation)
);
CREATE INDEX flowbot_conversations_recent ON flowbot_conversations (last_message_at, channel, conversation);

CREATE TABLE flowbot_sessions (
    channel      TEXT    NOT NULL,
    conversation TEXT    NOT NULL,
    user_id      TEXT    NOT NULL,
    data         TEXT    NOT NULL,
    version      BIGINT  NOT NULL,
    updated_at   BIGINT  NOT NULL,
    PRIMARY KEY (channel, conversation, user_id)
);

CREATE TABLE flowbot_kv (
    namespace  TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      TEXT    NOT NULL,
    updated_at BIGINT  NOT NULL,
    PRIMARY KEY (namespace, key)
);

-- Wake idle workers: one notification per INSERT statement on the tasks table, on a channel
-- named after the schema so several FlowBot schemas can share a database.
CREATE FUNCTION flowbot_notify_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('flowbot_tasks_' || TG_TABLE_SCHEMA, '');
    RETURN NULL;
END
$$;
CREATE TRIGGER flowbot_tasks_notify AFTER INSERT ON flowbot_tasks
    FOR EACH STATEMENT EXECUTE FUNCTION flowbot_notify_tasks();
