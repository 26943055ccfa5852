-- Reading a cache and writing it are different rights (issue #11).
-- granted: the subscription was made by the cache's owner, so the org reads the cache even when it is private.
-- push: the org's jobs push here; at most one per org, and only a granted subscription.
ALTER TABLE subscriptions ADD COLUMN granted BOOLEAN NOT NULL DEFAULT FALSE;
ALTER TABLE subscriptions ADD COLUMN push BOOLEAN NOT NULL DEFAULT FALSE;

-- Existing subscriptions keep granting reads only where nothing but the cache's owner could have made them: the
-- owner created the organization and is still its Admin. (Membership alone proves nothing: anyone could add the
-- owner to an organization of theirs and subscribe it before this migration.) The others read the cache only while
-- it is public; an owner grants them again with POST /orgs/{org}/subscribe/{cache}.
UPDATE subscriptions SET granted = TRUE WHERE EXISTS (
    SELECT 1 FROM caches c
    JOIN orgs o ON o.id = subscriptions.org_id AND o.created_by = c.created_by
    JOIN memberships m ON m.org_id = o.id AND m.user_id = c.created_by AND m.builtin_role = 'Admin'
    WHERE c.id = subscriptions.cache_id);

-- Jobs pushed to the org's first subscribed cache by name: that cache, when granted, becomes the push cache.
UPDATE subscriptions SET push = TRUE WHERE granted AND cache_id = (
    SELECT s.cache_id FROM subscriptions s JOIN caches c ON c.id = s.cache_id
    WHERE s.org_id = subscriptions.org_id ORDER BY c.name LIMIT 1);

CREATE UNIQUE INDEX subscriptions_push ON subscriptions (org_id) WHERE push;
