-- Each organization's SSH deploy key: the public authorized_keys line, and the OpenSSH private key file
-- sealed with the crypt secret (never stored unsealed). Deleted with the organization.
CREATE TABLE org_ssh_keys (
    org_id BLOB PRIMARY KEY REFERENCES orgs (id) ON DELETE CASCADE,
    public_key TEXT NOT NULL,
    private_key TEXT NOT NULL,
    created_at TEXT NOT NULL
);
