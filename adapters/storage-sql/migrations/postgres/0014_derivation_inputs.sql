-- Each organization's derivation → input edges as rows, so the builds depending on a failed one are found by
-- an index instead of reading every build of every evaluation needing it (quadratic when many builds fail).
-- `org_derivations.inputs` stays the list in its order; this table is written with it and never changed.
CREATE TABLE derivation_inputs (
    org_id UUID NOT NULL,
    drv_path TEXT COLLATE "C" NOT NULL,
    input TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (org_id, drv_path, input),
    FOREIGN KEY (org_id, drv_path) REFERENCES org_derivations (org_id, drv_path) ON DELETE CASCADE
);
-- the derivations taking an input
CREATE INDEX derivation_inputs_input ON derivation_inputs (org_id, input);

INSERT INTO derivation_inputs (org_id, drv_path, input)
SELECT d.org_id, d.drv_path, i.value
FROM org_derivations d
CROSS JOIN LATERAL jsonb_array_elements_text(d.inputs::jsonb) AS i(value)
ON CONFLICT DO NOTHING;
