-- What caches hold: the NAR files received and the store paths (narinfos) that refer to them. Sizes are
-- BIGINT (the adapter refuses values that do not fit), references a JSON array of basenames (TEXT, as the
-- other JSON documents). Keys collate "C" so ties sort bytewise, as on SQLite.

-- The cache's signing key, sealed with the crypt secret; '' for caches created before this migration.
ALTER TABLE caches ADD COLUMN signing_key TEXT NOT NULL DEFAULT '';

CREATE TABLE nar_files (
    cache_id UUID NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    url TEXT COLLATE "C" NOT NULL,
    compression TEXT NOT NULL CHECK (compression IN ('zstd', 'xz', 'none')),
    file_hash TEXT NOT NULL,
    file_size BIGINT NOT NULL,
    nar_hash TEXT NOT NULL,
    nar_size BIGINT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (cache_id, url)
);
-- orphan collection scans the oldest files first
CREATE INDEX nar_files_created_at ON nar_files (created_at);

CREATE TABLE cached_paths (
    cache_id UUID NOT NULL REFERENCES caches (id) ON DELETE CASCADE,
    hash_part TEXT COLLATE "C" NOT NULL,
    store_path TEXT NOT NULL,
    url TEXT COLLATE "C" NOT NULL,
    compression TEXT NOT NULL CHECK (compression IN ('zstd', 'xz', 'none')),
    file_hash TEXT NOT NULL,
    file_size BIGINT NOT NULL,
    nar_hash TEXT NOT NULL,
    nar_size BIGINT NOT NULL,
    -- JSON array of the referenced paths' basenames, in the stored order
    refs TEXT NOT NULL,
    deriver TEXT,
    system TEXT,
    ca TEXT,
    created_at TIMESTAMPTZ NOT NULL,
    last_fetched_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (cache_id, hash_part)
);
CREATE INDEX cached_paths_last_fetched_at ON cached_paths (last_fetched_at);
CREATE INDEX cached_paths_url ON cached_paths (cache_id, url);
