-- Reading a cache and writing it are different rights (issue #11).
-- granted: the subscription was made by the cache's owner, so the org reads the cache even when it is private.
-- push: the org's jobs push here; at most one per org, and only a granted subscription.
ALTER TABLE subscriptions ADD COLUMN granted BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE subscriptions ADD COLUMN push BOOLEAN NOT NULL DEFAULT FALSE;

-- Existing subscriptions keep granting reads where the cache's owner is a member of the org; the others read
-- the cache only while it is public.
UPDATE subscriptions SET granted = TRUE WHERE EXISTS (
    SELECT 1 FROM caches c JOIN memberships m ON m.user_id = c.created_by
    WHERE c.id = subscriptions.cache_id AND m.org_id = subscriptions.org_id);

-- Jobs pushed to the org's first subscribed cache by name: that cache, when granted, becomes the push cache.
UPDATE subscriptions SET push = TRUE WHERE granted AND cache_id = (
    SELECT s.cache_id FROM subscriptions s JOIN caches c ON c.id = s.cache_id
    WHERE s.org_id = subscriptions.org_id ORDER BY c.name LIMIT 1);

CREATE UNIQUE INDEX subscriptions_push ON subscriptions (org_id) WHERE push;
