-- Email (docs/email.md): single-use tokens mailed to users (address verification, password reset), kept only as
-- the SHA-256 of the token the link carries; and the users who turned mail about evaluations off.
CREATE TABLE email_tokens (
    hash TEXT NOT NULL,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- verify_email or reset_password
    purpose TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    PRIMARY KEY (hash)
);
CREATE INDEX email_tokens_user ON email_tokens (user_id, purpose, created_at);

CREATE TABLE evaluation_mail_opt_outs (
    user_id BLOB NOT NULL PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE
);
