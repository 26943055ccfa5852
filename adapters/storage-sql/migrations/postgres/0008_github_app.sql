-- The GitHub App's installations: one per GitHub account, belonging to the whole instance (no organization).

CREATE TABLE github_installations (
    installation_id BIGINT NOT NULL PRIMARY KEY,
    -- the account's login, lowercase
    account TEXT NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT github_installations_account_key UNIQUE (account)
);
