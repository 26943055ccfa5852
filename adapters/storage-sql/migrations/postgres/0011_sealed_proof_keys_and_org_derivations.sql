-- Worker registrations hold their proof key sealed with the crypt secret, never the key itself: a copy of the
-- database is no worker login. Rows written before hold SHA-256(token) as hex; the server seals them at
-- start-up (Gradient::seal_worker_proof_keys), and until then they do not verify.
ALTER TABLE worker_registrations RENAME COLUMN token_hash TO proof_key;

-- What a worker reports about a derivation (system, features, outputs, inputs) is kept per organization: one
-- organization's worker can no longer decide what another organization's build of the same .drv path shows or
-- needs. `derivations` stays as the set of known paths, which builds and entry points refer to.
CREATE TABLE org_derivations (
    org_id UUID NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    drv_path TEXT COLLATE "C" NOT NULL REFERENCES derivations (drv_path),
    system TEXT NOT NULL,
    -- JSON array of system feature names
    required_features TEXT NOT NULL,
    -- JSON object: output name -> store path
    outputs TEXT NOT NULL,
    -- JSON array of input .drv paths
    inputs TEXT NOT NULL,
    PRIMARY KEY (org_id, drv_path)
);

-- Each organization gets the stored derivations its builds and entry points use, and their inputs' closure (an
-- evaluation reported before the upgrade and not yet planned finds all of its derivations).
WITH RECURSIVE used (org_id, drv_path) AS (
    SELECT org_id, drv_path FROM builds
    UNION
    SELECT p.org_id, e.drv_path
    FROM entry_points e
    JOIN evaluations v ON v.id = e.evaluation_id
    JOIN projects p ON p.id = v.project_id
    UNION
    SELECT used.org_id, i.value COLLATE "C"
    FROM used
    JOIN derivations d ON d.drv_path = used.drv_path
    CROSS JOIN LATERAL jsonb_array_elements_text(d.inputs::jsonb) AS i(value)
)
INSERT INTO org_derivations (org_id, drv_path, system, required_features, outputs, inputs)
SELECT used.org_id, d.drv_path, d.system, d.required_features, d.outputs, d.inputs
FROM derivations d
JOIN used ON used.drv_path = d.drv_path;

ALTER TABLE derivations DROP COLUMN system;
ALTER TABLE derivations DROP COLUMN required_features;
ALTER TABLE derivations DROP COLUMN outputs;
ALTER TABLE derivations DROP COLUMN inputs;
