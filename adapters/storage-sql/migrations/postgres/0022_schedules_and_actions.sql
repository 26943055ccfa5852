-- Project schedules: a cron expression, and when the schedule last ran or was first seen (its anchor).
ALTER TABLE projects ADD COLUMN schedule TEXT;
ALTER TABLE projects ADD COLUMN schedule_anchor TIMESTAMPTZ;
-- A scheduled evaluation: stored with trigger_kind 'Poll' (the column's CHECK predates schedules) and this flag.
ALTER TABLE evaluations ADD COLUMN scheduled BOOLEAN NOT NULL DEFAULT FALSE;

-- Projects' actions: an outgoing webhook (url, sealed secret) or mail (recipients, a JSON array of addresses).
CREATE TABLE actions (
    id UUID NOT NULL PRIMARY KEY,
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    project_id UUID NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('webhook', 'mail')),
    url TEXT,
    secret TEXT,
    recipients TEXT,
    -- JSON array of event names
    events TEXT NOT NULL,
    enabled BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT actions_name_key UNIQUE (project_id, name)
);

-- Deliveries of actions (the bounded log and the webhook outbox).
CREATE TABLE action_deliveries (
    id UUID NOT NULL PRIMARY KEY,
    action_id UUID NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    evaluation_id UUID,
    event TEXT,
    body TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts BIGINT NOT NULL,
    status_code BIGINT,
    last_error TEXT,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX action_deliveries_due ON action_deliveries (state, next_attempt_at);
CREATE INDEX action_deliveries_action ON action_deliveries (action_id, created_at, id);
