-- Organizations' forge integrations: the sealed secret their webhooks are signed with.

CREATE TABLE org_webhook_secrets (
    org_id UUID NOT NULL PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    -- sealed with the crypt secret (`v1:` + base64)
    secret TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL
);
