-- Commit statuses: where an organization's statuses go, and the outbox of statuses to deliver.

CREATE TABLE org_forge_connections (
    org_id BLOB NOT NULL PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    forge TEXT NOT NULL,
    api_url TEXT NOT NULL,
    -- sealed with the crypt secret (`v1:` + base64)
    token TEXT NOT NULL,
    updated_at TEXT NOT NULL
);

-- No foreign key to evaluations: a pruned evaluation's final status is still delivered.
CREATE TABLE status_reports (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id BLOB NOT NULL UNIQUE,
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    evaluation_id BLOB NOT NULL,
    repository TEXT NOT NULL,
    commit_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    target_url TEXT NOT NULL,
    description TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    next_attempt_at TEXT NOT NULL,
    last_error TEXT,
    delivered BOOLEAN NOT NULL,
    created_at TEXT NOT NULL
);

CREATE INDEX status_reports_due ON status_reports (delivered, next_attempt_at);
CREATE INDEX status_reports_evaluation ON status_reports (evaluation_id);
