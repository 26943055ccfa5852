-- What a user's list of sessions shows: when each was last used and the user agent of its login.
ALTER TABLE sessions ADD COLUMN last_used_at TEXT;
ALTER TABLE sessions ADD COLUMN user_agent TEXT;

-- Organizations' audit logs (docs/audit.md): the newest entries of each organization, deleted with it.
-- AUTOINCREMENT: a seq is never given twice, so a reader's cursor never points at a newer entry.
CREATE TABLE audit_log (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    at TEXT NOT NULL,
    -- No reference: an entry outlives the user who acted (their username is kept in `actor`).
    actor_id BLOB,
    actor TEXT NOT NULL,
    via TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX audit_log_org_seq ON audit_log (org_id, seq);
