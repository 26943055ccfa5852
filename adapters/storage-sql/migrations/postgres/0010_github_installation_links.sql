-- Links of the GitHub App's installations to the organizations that may use them: only linked organizations'
-- projects get evaluations from the App's pushes and statuses through the App. No foreign key to
-- github_installations: a link may be made before the installation's webhook arrives, and it outlives a
-- suspension.

CREATE TABLE github_installation_links (
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    installation_id BIGINT NOT NULL,
    -- the installation's account's login, lowercase
    account TEXT NOT NULL,
    -- the GitHub login that proved control of the installation, lowercase
    linked_by TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (org_id, installation_id)
);

CREATE INDEX github_installation_links_installation ON github_installation_links (installation_id);
