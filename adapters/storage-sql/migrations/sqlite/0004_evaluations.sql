-- Evaluations, the derivations they find, their entry points, and the builds they need. Constraint names match
-- the PostgreSQL schema. Lists and maps are JSON text; statuses are the domain's names.

CREATE TABLE evaluations (
    id BLOB NOT NULL PRIMARY KEY,
    project_id BLOB NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    commit_hash TEXT NOT NULL,
    branch TEXT,
    trigger_kind TEXT NOT NULL CHECK (trigger_kind IN ('Manual', 'Poll', 'Webhook')),
    status TEXT NOT NULL CHECK (
        status IN ('Queued', 'Fetching', 'Evaluating', 'Building', 'Completed', 'Failed', 'Aborted')
    ),
    -- JSON array of {"attribute": …, "message": …}
    errors TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
-- a project's evaluations, newest first
CREATE INDEX evaluations_project ON evaluations (project_id, created_at, id);

-- Global: the same .drv path is the same content, whoever found it.
CREATE TABLE derivations (
    drv_path TEXT NOT NULL PRIMARY KEY,
    system TEXT NOT NULL,
    -- JSON array of system feature names
    required_features TEXT NOT NULL,
    -- JSON object: output name -> store path
    outputs TEXT NOT NULL,
    -- JSON array of input .drv paths
    inputs TEXT NOT NULL
);

CREATE TABLE entry_points (
    evaluation_id BLOB NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    attribute TEXT NOT NULL,
    drv_path TEXT NOT NULL REFERENCES derivations (drv_path),
    PRIMARY KEY (evaluation_id, attribute)
);

-- build-once: one build per organization and derivation
CREATE TABLE builds (
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    drv_path TEXT NOT NULL REFERENCES derivations (drv_path),
    status TEXT NOT NULL CHECK (
        status IN ('Queued', 'Building', 'Completed', 'Failed', 'Aborted', 'Substituted', 'DependencyFailed')
    ),
    log TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (org_id, drv_path)
);

-- which builds an evaluation needs
CREATE TABLE evaluation_builds (
    evaluation_id BLOB NOT NULL REFERENCES evaluations (id) ON DELETE CASCADE,
    org_id BLOB NOT NULL,
    drv_path TEXT NOT NULL,
    PRIMARY KEY (evaluation_id, drv_path),
    FOREIGN KEY (org_id, drv_path) REFERENCES builds (org_id, drv_path) ON DELETE CASCADE
);
-- the evaluations needing a build
CREATE INDEX evaluation_builds_build ON evaluation_builds (org_id, drv_path);
-- entry points and builds of a derivation (foreign key checks)
CREATE INDEX entry_points_drv_path ON entry_points (drv_path);
CREATE INDEX builds_drv_path ON builds (drv_path);
