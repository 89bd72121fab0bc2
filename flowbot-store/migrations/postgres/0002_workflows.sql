-- Workflows, PostgreSQL: versioned definitions, runs and node executions. Times are
-- milliseconds since the Unix epoch (UTC); JSON values are stored as text.
CREATE TABLE flowbot_workflows (
    name       TEXT    NOT NULL,
    version    BIGINT  NOT NULL,
    definition TEXT    NOT NULL,
    created_at BIGINT  NOT NULL,
    deleted    BOOLEAN NOT NULL DEFAULT FALSE,
    PRIMARY KEY (name, version)
);

CREATE TABLE flowbot_workflow_runs (
    id              TEXT    PRIMARY KEY,
    workflow        TEXT    NOT NULL,
    version         BIGINT  NOT NULL,
    status          TEXT    NOT NULL,
    inputs          TEXT    NOT NULL,
    trigger         TEXT    NOT NULL,
    output          TEXT,
    error           TEXT,
    parent_run      TEXT,
    parent_node     TEXT,
    max_concurrency BIGINT,
    created_at      BIGINT  NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT
);
-- Listings, newest first: every run, by workflow (also analytics over a time window), by
-- status, by both.
CREATE INDEX flowbot_workflow_runs_recent ON flowbot_workflow_runs (created_at, id);
CREATE INDEX flowbot_workflow_runs_workflow ON flowbot_workflow_runs (workflow, created_at, id);
CREATE INDEX flowbot_workflow_runs_status ON flowbot_workflow_runs (status, created_at, id);
-- Running runs per workflow (max concurrency), the oldest queued run of a workflow.
CREATE INDEX flowbot_workflow_runs_slots ON flowbot_workflow_runs (workflow, status, created_at, id);

-- One row per node of a run (its latest attempt); `seq` is the order rows were queued in.
CREATE TABLE flowbot_workflow_nodes (
    run_id      TEXT    NOT NULL,
    node        TEXT    NOT NULL,
    seq         BIGINT GENERATED ALWAYS AS IDENTITY,
    status      TEXT    NOT NULL,
    attempt     BIGINT  NOT NULL DEFAULT 0,
    input       TEXT,
    output      TEXT,
    error       TEXT,
    queued_at   BIGINT  NOT NULL,
    started_at  BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, node)
);
CREATE INDEX flowbot_workflow_nodes_order ON flowbot_workflow_nodes (run_id, seq);
