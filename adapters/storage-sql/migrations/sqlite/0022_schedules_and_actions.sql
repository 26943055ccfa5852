-- Project schedules: a cron expression, and when the schedule last ran or was first seen (its anchor).
ALTER TABLE projects ADD COLUMN schedule TEXT;
ALTER TABLE projects ADD COLUMN schedule_anchor TEXT;
-- A scheduled evaluation: stored with trigger_kind 'Poll' (the column's CHECK predates schedules) and this flag.
ALTER TABLE evaluations ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 0;

-- Projects' actions: an outgoing webhook (url, sealed secret) or mail (recipients, a JSON array of addresses).
CREATE TABLE actions (
    id BLOB NOT NULL PRIMARY KEY,
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    project_id BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'mail')),
    url TEXT,
    secret TEXT,
    recipients TEXT,
    -- JSON array of event names
    events TEXT NOT NULL,
    enabled INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    CONSTRAINT actions_name_key UNIQUE (project_id, name)
);

-- Deliveries of actions (the bounded log and the webhook outbox).
CREATE TABLE action_deliveries (
    id BLOB NOT NULL PRIMARY KEY,
    action_id BLOB NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    evaluation_id BLOB,
    event TEXT,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL,
    status_code INTEGER,
    last_error TEXT,
    next_attempt_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX action_deliveries_due ON action_deliveries (state, next_attempt_at);
CREATE INDEX action_deliveries_action ON action_deliveries (action_id, created_at, id);
