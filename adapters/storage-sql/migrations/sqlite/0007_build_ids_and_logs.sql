-- Builds get an id (the API's /builds/{id}); evaluations and builds keep every status they took and when
-- (JSON array of {"status": …, "at": RFC 3339 with microseconds}); build logs move out of the builds table into
-- their own, compressed (zstd) and capped by the domain.

ALTER TABLE evaluations ADD COLUMN transitions TEXT NOT NULL DEFAULT '[]';

ALTER TABLE builds ADD COLUMN id BLOB;
UPDATE builds SET id = randomblob(16) WHERE id IS NULL;
CREATE UNIQUE INDEX builds_id ON builds (id);
ALTER TABLE builds ADD COLUMN transitions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE builds DROP COLUMN log;

CREATE TABLE build_logs (
    build_id BLOB NOT NULL PRIMARY KEY REFERENCES builds (id) ON DELETE CASCADE,
    compressed BLOB NOT NULL,
    -- the stored text's length, and how much of what the build printed was left out
    size INTEGER NOT NULL,
    omitted INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
