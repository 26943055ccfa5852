-- Declarative state (docs/state.md): what the server's state document created or adopted is "managed"; the API
-- refuses to change or delete it. Roles have had the flag since 0001. Rows written before are not managed.
ALTER TABLE users ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE orgs ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE projects ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE caches ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE api_keys ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE worker_registrations ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
-- An organization's integrations: the webhook secret (inbound) and the forge connection (outbound).
ALTER TABLE org_webhook_secrets ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE org_forge_connections ADD COLUMN managed INTEGER NOT NULL DEFAULT 0;
