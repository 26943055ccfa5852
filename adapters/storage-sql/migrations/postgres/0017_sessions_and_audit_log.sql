-- What a user's list of sessions shows: when each was last used and the user agent of its login.
ALTER TABLE sessions ADD COLUMN last_used_at TIMESTAMPTZ;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;

-- Organizations' audit logs (docs/audit.md): the newest entries of each organization, deleted with it.
CREATE TABLE audit_log (
    seq BIGSERIAL PRIMARY KEY,
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    at TIMESTAMPTZ NOT NULL,
    -- No reference: an entry outlives the user who acted (their username is kept in `actor`).
    actor_id UUID,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_org_seq ON audit_log (org_id, seq);
