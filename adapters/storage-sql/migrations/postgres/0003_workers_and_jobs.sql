-- Workers registered under organizations, and the persistent job queue. Constraint names match the SQLite
-- schema; PostgreSQL checks unique constraints in declaration order (primary key first).

CREATE TABLE worker_registrations (
    peer_id UUID NOT NULL PRIMARY KEY,
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    worker_id UUID NOT NULL,
    token_hash TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    -- one registration per worker per organization
    CONSTRAINT worker_registrations_worker_key UNIQUE (org_id, worker_id)
);
CREATE INDEX worker_registrations_worker_id ON worker_registrations (worker_id);

-- One row per job. The kind's fields are columns (NULL when the kind has no such field); the state is a name
-- plus the worker and time of an assignment, set exactly when assigned.
CREATE TABLE jobs (
    id UUID NOT NULL PRIMARY KEY,
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    kind TEXT NOT NULL CHECK (kind IN ('evaluate', 'build')),
    evaluation_id UUID,
    -- the derivation's store path
    derivation TEXT,
    system TEXT,
    -- JSON array of system feature names, in the derivation's order
    required_features TEXT,
    state TEXT NOT NULL CHECK (state IN ('queued', 'assigned', 'done', 'failed')),
    worker_id UUID,
    assigned_at TIMESTAMPTZ,
    attempts BIGINT NOT NULL CHECK (attempts BETWEEN 0 AND 4294967295),
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT jobs_kind_fields CHECK (
        (kind = 'evaluate' AND evaluation_id IS NOT NULL AND derivation IS NULL AND system IS NULL
            AND required_features IS NULL)
        OR (kind = 'build' AND evaluation_id IS NULL AND derivation IS NOT NULL AND system IS NOT NULL
            AND required_features IS NOT NULL)
    ),
    CONSTRAINT jobs_assignment CHECK (
        (state = 'assigned') = (worker_id IS NOT NULL) AND (worker_id IS NULL) = (assigned_at IS NULL)
    )
);
-- build-once: at most one active (queued or assigned) job per organization and derivation, or evaluation
CREATE UNIQUE INDEX jobs_active_build ON jobs (org_id, derivation) WHERE state IN ('queued', 'assigned');
CREATE UNIQUE INDEX jobs_active_evaluation ON jobs (org_id, evaluation_id) WHERE state IN ('queued', 'assigned');
-- the queue, oldest first
CREATE INDEX jobs_queued ON jobs (created_at, id) WHERE state = 'queued';
-- a worker's jobs
CREATE INDEX jobs_assigned ON jobs (worker_id) WHERE state = 'assigned';
-- deleting an organization
CREATE INDEX jobs_org_id ON jobs (org_id);
