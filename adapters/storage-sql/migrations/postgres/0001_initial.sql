-- Gradient's schema on PostgreSQL: native UUID, TIMESTAMPTZ and BOOLEAN; JSON documents are TEXT so the same
-- queries and binds serve both engines. Names collate "C" so lists sort bytewise, as on SQLite.
-- Constraint names match the SQLite schema; the adapter maps unique violations to conflicts by them.

CREATE TABLE users (
    id UUID NOT NULL PRIMARY KEY,
    username TEXT COLLATE "C" NOT NULL,
    name TEXT COLLATE "C" NOT NULL,
    email TEXT NOT NULL,
    password_hash TEXT,
    email_verified BOOLEAN NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT users_username_key UNIQUE (username),
    CONSTRAINT users_email_key UNIQUE (email)
);

CREATE TABLE sessions (
    id UUID NOT NULL PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_user_id ON sessions (user_id);

CREATE TABLE api_keys (
    id UUID NOT NULL PRIMARY KEY,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    hash TEXT NOT NULL,
    -- JSON of the domain's KeyScope
    scope TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    last_used_at TIMESTAMPTZ,
    CONSTRAINT api_keys_hash_key UNIQUE (hash)
);
CREATE INDEX api_keys_user_id ON api_keys (user_id, created_at);

CREATE TABLE orgs (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    public BOOLEAN NOT NULL,
    created_by UUID NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT orgs_name_key UNIQUE (name)
);

CREATE TABLE roles (
    id UUID NOT NULL PRIMARY KEY,
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    -- name in ASCII lowercase: custom role names are unique per organization case-insensitively
    name_key TEXT COLLATE "C" NOT NULL,
    -- JSON array of permission names
    permissions TEXT NOT NULL,
    managed BOOLEAN NOT NULL,
    CONSTRAINT roles_name_key UNIQUE (org_id, name_key),
    CONSTRAINT roles_org_id_id_key UNIQUE (org_id, id)
);

CREATE TABLE memberships (
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    builtin_role TEXT CHECK (builtin_role IN ('Admin', 'Write', 'View')),
    role_id UUID,
    PRIMARY KEY (org_id, user_id),
    -- a custom role of the same organization; NO ACTION (checked at the end of the statement) so deleting
    -- the organization can cascade to both memberships and roles, while deleting a held role fails
    CONSTRAINT memberships_role_fkey FOREIGN KEY (org_id, role_id) REFERENCES roles (org_id, id),
    CONSTRAINT memberships_one_role CHECK ((builtin_role IS NULL) <> (role_id IS NULL))
);
CREATE INDEX memberships_user_id ON memberships (user_id);
CREATE INDEX memberships_role ON memberships (org_id, role_id);

CREATE TABLE projects (
    id UUID NOT NULL PRIMARY KEY,
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name TEXT COLLATE "C" NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    repository TEXT NOT NULL,
    branch TEXT,
    wildcard TEXT NOT NULL,
    -- JSON object: input name -> override
    flake_input_overrides TEXT NOT NULL,
    keep_evaluations BIGINT,
    poll_interval_secs BIGINT,
    active BOOLEAN NOT NULL,
    created_by UUID NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT projects_name_key UNIQUE (org_id, name)
);

CREATE TABLE caches (
    id UUID NOT NULL PRIMARY KEY,
    name TEXT COLLATE "C" NOT NULL,
    display_name TEXT NOT NULL,
    description TEXT NOT NULL,
    public BOOLEAN NOT NULL,
    priority INTEGER NOT NULL,
    local_priority INTEGER,
    compression TEXT NOT NULL CHECK (compression IN ('zstd', 'xz', 'none')),
    created_by UUID NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    CONSTRAINT caches_name_key UNIQUE (name)
);

CREATE TABLE subscriptions (
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    cache_id UUID NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    PRIMARY KEY (org_id, cache_id)
);
CREATE INDEX subscriptions_cache_id ON subscriptions (cache_id);

CREATE TABLE meta (
    name TEXT COLLATE "C" NOT NULL PRIMARY KEY,
    value TEXT NOT NULL
);
