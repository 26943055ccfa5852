-- Pull requests: whether a project evaluates them (its own repository's, and forks'), and the pull request an
-- evaluation is of (JSON: number, fork, head repository and branch, head commit, fetched ref; NULL for a branch).
ALTER TABLE projects ADD COLUMN pull_requests INTEGER NOT NULL DEFAULT 1;
ALTER TABLE projects ADD COLUMN fork_pull_requests INTEGER NOT NULL DEFAULT 0;
ALTER TABLE evaluations ADD COLUMN pull_request TEXT;
