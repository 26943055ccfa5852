-- Commit statuses: where an organization's statuses go, and the outbox of statuses to deliver.

CREATE TABLE org_forge_connections (
    org_id UUID NOT NULL PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    forge TEXT NOT NULL,
    api_url TEXT NOT NULL,
    -- sealed with the crypt secret (`v1:` + base64)
    token TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);

-- No foreign key to evaluations: a pruned evaluation's final status is still delivered.
CREATE TABLE status_reports (
    seq BIGSERIAL PRIMARY KEY,
    id UUID NOT NULL UNIQUE,
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    evaluation_id UUID NOT NULL,
    repository TEXT NOT NULL,
    commit_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    target_url TEXT NOT NULL,
    description TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    next_attempt_at TIMESTAMPTZ NOT NULL,
    last_error TEXT,
    delivered BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX status_reports_due ON status_reports (delivered, next_attempt_at);
CREATE INDEX status_reports_evaluation ON status_reports (evaluation_id);
