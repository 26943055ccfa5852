-- Declarative state (docs/state.md): what the server's state document created or adopted is "managed"; the API
-- refuses to change or delete it. Roles have had the flag since 0001. Rows written before are not managed.
ALTER TABLE users ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE orgs ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE projects ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE caches ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE api_keys ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE worker_registrations ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
-- An organization's integrations: the webhook secret (inbound) and the forge connection (outbound).
ALTER TABLE org_webhook_secrets ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE org_forge_connections ADD COLUMN managed BOOLEAN NOT NULL DEFAULT FALSE;
