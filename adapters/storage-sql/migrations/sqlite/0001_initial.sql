-- Gradient's schema on SQLite: UUIDs are 16-byte BLOBs, timestamps RFC 3339 TEXT (always `+00:00`, so they
-- sort as text), booleans INTEGER 0/1, JSON documents TEXT. Constraint names match the PostgreSQL schema;
-- the adapter maps unique violations to conflicts by them. SQLite checks a table's unique constraints
-- last-declared first, so they are declared here in reverse (primary key last): a row colliding on several
-- reports the same one as on PostgreSQL, which checks them in declaration order (primary key first).

CREATE TABLE users (
    id BLOB NOT NULL,
    username TEXT NOT NULL,
    name TEXT NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT,
    email_verified INTEGER NOT NULL,
    created_at TEXT NOT NULL,
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_username_key UNIQUE (username),
    PRIMARY KEY (id)
);

CREATE TABLE sessions (
    id BLOB NOT NULL PRIMARY KEY,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);

CREATE TABLE api_keys (
    id BLOB NOT NULL,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    hash TEXT NOT NULL,
    -- JSON of the domain's KeyScope
    scope TEXT NOT NULL,
    created_at TEXT NOT NULL,
    last_used_at TEXT,
    CONSTRAINT api_keys_hash_key UNIQUE (hash),
    PRIMARY KEY (id)
);
CREATE INDEX api_keys_user_id ON api_keys (user_id, created_at);

CREATE TABLE orgs (
    id BLOB NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    public INTEGER NOT NULL,
    created_by BLOB NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL,
    CONSTRAINT orgs_name_key UNIQUE (name),
    PRIMARY KEY (id)
);

CREATE TABLE roles (
    id BLOB NOT NULL,
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    -- name in ASCII lowercase: custom role names are unique per organization case-insensitively
    name_key TEXT NOT NULL,
    -- JSON array of permission names
    permissions TEXT NOT NULL,
    managed INTEGER NOT NULL,
    CONSTRAINT roles_org_id_id_key UNIQUE (org_id, id),
    CONSTRAINT roles_name_key UNIQUE (org_id, name_key),
    PRIMARY KEY (id)
);

CREATE TABLE memberships (
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    builtin_role TEXT CHECK (builtin_role IN ('Admin', 'Write', 'View')),
    role_id BLOB,
    PRIMARY KEY (org_id, user_id),
    -- a custom role of the same organization; NO ACTION (checked at the end of the statement) so deleting
    -- the organization can cascade to both memberships and roles, while deleting a held role fails
    CONSTRAINT memberships_role_fkey FOREIGN KEY (org_id, role_id) REFERENCES roles (org_id, id),
    CONSTRAINT memberships_one_role CHECK ((builtin_role IS NULL) <> (role_id IS NULL))
);
CREATE INDEX memberships_user_id ON memberships (user_id);
CREATE INDEX memberships_role ON memberships (org_id, role_id);

CREATE TABLE projects (
    id BLOB NOT NULL,
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    repository TEXT NOT NULL,
    branch TEXT,
    wildcard TEXT NOT NULL,
    -- JSON object: input name -> override
    flake_input_overrides TEXT NOT NULL,
    keep_evaluations INTEGER,
    poll_interval_secs INTEGER,
    active INTEGER NOT NULL,
    created_by BLOB NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL,
    CONSTRAINT projects_name_key UNIQUE (org_id, name),
    PRIMARY KEY (id)
);

CREATE TABLE caches (
    id BLOB NOT NULL,
    name TEXT NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    public INTEGER NOT NULL,
    priority INTEGER NOT NULL,
    local_priority INTEGER,
    compression TEXT NOT NULL CHECK (compression IN ('zstd', 'xz', 'none')),
    created_by BLOB NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL,
    CONSTRAINT caches_name_key UNIQUE (name),
    PRIMARY KEY (id)
);

CREATE TABLE subscriptions (
    org_id BLOB NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    cache_id BLOB NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    PRIMARY KEY (org_id, cache_id)
);
CREATE INDEX subscriptions_cache_id ON subscriptions (cache_id);

CREATE TABLE meta (
    name TEXT NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
