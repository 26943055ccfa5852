//! Caches and organizations' subscriptions to them.

use super::support::{
    cache, cache_names, conflict, grant, name, new_cache, org, seconds, signing_key, subscribed_caches,
    subscriber_orgs, user,
};
use gradient_domain::crypt::Sealed;
use gradient_domain::model::{Compression, Membership, RoleRef, Subscription};
use gradient_domain::permissions::BuiltinRole;
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{CacheId, OrgId, UserId};

/// A cache reads back whole by id and name, with every compression, with or without a local priority, and
/// with its own signing key.
pub async fn cache_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let zstd = new_cache("zstd", alice.id, true);
    let mut xz = new_cache("xz", alice.id, false);
    xz.compression = Compression::Xz;
    xz.local_priority = None;
    xz.priority = -5;
    let mut plain = new_cache("plain", alice.id, false);
    plain.compression = Compression::None;
    plain.description = String::new();
    plain.local_priority = Some(0);
    // Storage keeps the sealed key as an opaque string, whatever it holds.
    plain.signing_key = Sealed("v1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8gISIjJCUmJygpKissLS4vMA==".to_owned());
    for cache in [&zstd, &xz, &plain] {
        s.create_cache(cache).await.expect("create_cache");
        assert_eq!(
            s.cache(cache.id).await.expect("cache"),
            Some(cache.clone()),
            "cache by id"
        );
        assert_eq!(
            s.cache_by_name(&cache.name).await.expect("cache_by_name"),
            Some(cache.clone()),
            "by name"
        );
    }
}

/// A taken cache name is refused with Conflict("cache name") and changes nothing.
pub async fn taken_cache_name_conflicts<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let original = cache(s, "main", alice.id, false).await;
    let mut copy = new_cache("copy", bob.id, true);
    copy.name = original.name.clone();
    assert_eq!(
        s.create_cache(&copy).await,
        Err(conflict("cache name")),
        "create_cache with a taken name"
    );
    assert_eq!(
        s.cache(copy.id).await.expect("cache"),
        None,
        "no row for the refused cache"
    );
    assert_eq!(
        s.cache_by_name(&original.name).await.expect("cache_by_name"),
        Some(original.clone()),
        "the name still finds the original cache"
    );
    assert_eq!(
        cache_names(
            &s.visible_caches(None).await.expect("visible_caches"),
            &[&original, &copy]
        ),
        vec![],
        "the refused public cache is not listed"
    );
}

/// A cache must be created by an existing user.
pub async fn cache_of_unknown_creator_is_not_found<S: Storage>(s: &S) {
    let cache = new_cache("orphan", UserId::new(), true);
    assert_eq!(
        s.create_cache(&cache).await,
        Err(StorageError::NotFound),
        "cache of an unknown creator"
    );
    assert_eq!(s.cache(cache.id).await.expect("cache"), None, "no row by id");
    assert_eq!(
        s.cache_by_name(&cache.name).await.expect("cache_by_name"),
        None,
        "no row by name"
    );
}

/// `update_cache` changes display name, description, visibility, priorities, compression and signing key,
/// nothing else.
pub async fn update_cache_changes_only_editable_fields<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let original = cache(s, "main", alice.id, false).await;
    let mut edit = original.clone();
    edit.display_name = "Main cache".to_owned();
    edit.description = "Everything we build".to_owned();
    edit.public = true;
    edit.priority = 41;
    edit.local_priority = None;
    edit.compression = Compression::Xz;
    edit.signing_key = signing_key();
    edit.name = name("renamed");
    edit.created_by = bob.id;
    edit.created_at = original.created_at - seconds(3600);
    s.update_cache(&edit).await.expect("update_cache");
    let mut expected = edit.clone();
    expected.name = original.name.clone();
    expected.created_by = original.created_by;
    expected.created_at = original.created_at;
    assert_eq!(
        s.cache(original.id).await.expect("cache"),
        Some(expected.clone()),
        "only editable fields"
    );
    assert_eq!(
        s.cache_by_name(&edit.name).await.expect("cache_by_name"),
        None,
        "the name is unchanged"
    );

    let mut again = expected;
    again.local_priority = Some(5);
    again.compression = Compression::None;
    again.signing_key = signing_key();
    s.update_cache(&again)
        .await
        .expect("update_cache setting a local priority");
    assert_eq!(
        s.cache(original.id).await.expect("cache"),
        Some(again),
        "local priority set again, signing key replaced again"
    );
}

/// Reads of a cache that does not exist are empty; updating it is NotFound, deleting it false.
pub async fn absent_caches_are_none<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let ghost = new_cache("ghost", alice.id, true);
    assert_eq!(s.cache(ghost.id).await.expect("cache"), None, "unknown cache id");
    assert_eq!(
        s.cache_by_name(&ghost.name).await.expect("cache_by_name"),
        None,
        "unknown cache name"
    );
    assert_eq!(
        s.update_cache(&ghost).await,
        Err(StorageError::NotFound),
        "update of an unknown cache"
    );
    assert_eq!(
        s.cache(ghost.id).await.expect("cache"),
        None,
        "a failed update creates nothing"
    );
    assert!(
        !s.delete_cache(ghost.id).await.expect("delete_cache"),
        "deleting an unknown cache"
    );
    assert_eq!(
        subscriber_orgs(s, ghost.id).await,
        vec![],
        "an unknown cache's subscribers"
    );
    assert_eq!(
        subscribed_caches(s, OrgId::new()).await,
        vec![],
        "unknown org's subscriptions"
    );
}

/// Subscribing reports whether it is new; unsubscribing whether there was one; both ends must exist.
pub async fn subscribe_and_unsubscribe<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let main = cache(s, "main", alice.id, false).await;
    assert!(
        s.subscribe(&grant(acme.id, main.id)).await.expect("subscribe"),
        "a new subscription"
    );
    assert!(
        !s.subscribe(&grant(acme.id, main.id)).await.expect("subscribe"),
        "subscribing twice reports false"
    );
    assert_eq!(
        subscribed_caches(s, acme.id).await,
        vec![main.clone()],
        "one subscription"
    );
    assert_eq!(subscriber_orgs(s, main.id).await, vec![acme.clone()], "one subscriber");
    assert!(
        s.unsubscribe(acme.id, main.id).await.expect("unsubscribe"),
        "unsubscribing"
    );
    assert!(
        !s.unsubscribe(acme.id, main.id).await.expect("unsubscribe"),
        "unsubscribing twice reports false"
    );
    assert_eq!(subscribed_caches(s, acme.id).await, vec![], "no subscription left");

    assert_eq!(
        s.subscribe(&grant(OrgId::new(), main.id)).await,
        Err(StorageError::NotFound),
        "unknown org"
    );
    assert_eq!(
        s.subscribe(&grant(acme.id, CacheId::new())).await,
        Err(StorageError::NotFound),
        "unknown cache"
    );
    assert_eq!(
        subscriber_orgs(s, main.id).await,
        vec![],
        "the refusals subscribed nothing"
    );
    assert_eq!(subscribed_caches(s, acme.id).await, vec![], "nor for the org");
}

/// An organization's subscriptions and a cache's subscribers are listed by name.
pub async fn subscriptions_and_subscribers_are_listed_by_name<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let zulu = org(s, "zulu", alice.id, false).await;
    let alpha = org(s, "alpha", alice.id, true).await;
    let mike = cache(s, "mike", alice.id, false).await;
    let bravo = cache(s, "bravo", alice.id, true).await;
    let unrelated = cache(s, "yankee", alice.id, true).await;
    for (org, cache) in [(&zulu, &mike), (&zulu, &bravo), (&alpha, &mike)] {
        assert!(
            s.subscribe(&grant(org.id, cache.id)).await.expect("subscribe"),
            "a new subscription"
        );
    }
    assert_eq!(
        subscribed_caches(s, zulu.id).await,
        vec![bravo.clone(), mike.clone()],
        "zulu's caches, by name"
    );
    assert_eq!(
        subscribed_caches(s, alpha.id).await,
        vec![mike.clone()],
        "alpha's caches"
    );
    assert_eq!(subscriber_orgs(s, mike.id).await, vec![alpha, zulu.clone()], "by name");
    assert_eq!(subscriber_orgs(s, bravo.id).await, vec![zulu], "bravo's subscribers");
    assert_eq!(
        subscriber_orgs(s, unrelated.id).await,
        vec![],
        "a cache without subscribers"
    );
}

/// Deleting a cache deletes its subscriptions too, and nothing else.
pub async fn delete_cache_removes_its_subscriptions<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let doomed = cache(s, "doomed", alice.id, false).await;
    let kept = cache(s, "kept", alice.id, false).await;
    for cache in [&doomed, &kept] {
        assert!(
            s.subscribe(&grant(acme.id, cache.id)).await.expect("subscribe"),
            "a new subscription"
        );
    }
    assert!(
        s.delete_cache(doomed.id).await.expect("delete_cache"),
        "deleting an existing cache"
    );
    assert_eq!(s.cache(doomed.id).await.expect("cache"), None, "the cache is gone");
    assert_eq!(
        s.cache_by_name(&doomed.name).await.expect("cache_by_name"),
        None,
        "its name is free"
    );
    assert_eq!(
        subscriber_orgs(s, doomed.id).await,
        vec![],
        "its subscriptions are gone"
    );
    assert_eq!(
        subscribed_caches(s, acme.id).await,
        vec![kept.clone()],
        "the other one stays"
    );
    assert!(
        !s.delete_cache(doomed.id).await.expect("delete_cache"),
        "deleting it again reports false"
    );
    assert_eq!(
        s.cache(kept.id).await.expect("cache"),
        Some(kept),
        "the other cache is untouched"
    );
    assert_eq!(
        s.org(acme.id).await.expect("org"),
        Some(acme),
        "the subscribing org is untouched"
    );
}

/// Without a user, only public caches are visible, by name.
pub async fn anonymous_sees_only_public_caches<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let zulu = cache(s, "zulu", alice.id, true).await;
    let secret = cache(s, "secret", alice.id, false).await;
    let alpha = cache(s, "alpha", alice.id, true).await;
    let listed = s.visible_caches(None).await.expect("visible_caches");
    assert_eq!(
        cache_names(&listed, &[&zulu, &secret, &alpha]),
        vec![alpha.name.clone(), zulu.name.clone()],
        "public caches, by name"
    );
    let listed_alpha = listed.iter().find(|c| c.id == alpha.id).cloned();
    assert_eq!(listed_alpha, Some(alpha), "listed caches are whole");
}

/// A user sees public caches, the caches they created, and those subscribed by an organization they are a
/// member of; by name.
pub async fn users_see_own_and_subscribed_caches<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let public = cache(s, "papa", alice.id, true).await;
    let bobs = cache(s, "zulu", bob.id, false).await;
    let subscribed = cache(s, "mike", alice.id, false).await;
    let hidden = cache(s, "alpha", alice.id, false).await;
    let member_of = org(s, "acme", alice.id, false).await;
    let not_member_of = org(s, "other", alice.id, false).await;
    let joined = Membership {
        org_id: member_of.id,
        user_id: bob.id,
        role: RoleRef::Builtin(BuiltinRole::View),
    };
    s.set_membership(&joined).await.expect("set_membership");
    assert!(
        s.subscribe(&grant(member_of.id, subscribed.id))
            .await
            .expect("subscribe"),
        "a new subscription"
    );
    assert!(
        s.subscribe(&grant(not_member_of.id, hidden.id))
            .await
            .expect("subscribe"),
        "a new subscription"
    );
    let followed = cache(s, "lima", alice.id, false).await;
    assert!(
        s.subscribe(&Subscription {
            granted: false,
            ..grant(member_of.id, followed.id)
        })
        .await
        .expect("subscribe"),
        "a subscription the owner did not make"
    );
    let ours = [&public, &bobs, &subscribed, &hidden, &followed];
    assert_eq!(
        cache_names(&s.visible_caches(Some(bob.id)).await.expect("visible_caches"), &ours),
        vec![subscribed.name.clone(), public.name.clone(), bobs.name.clone()],
        "bob's view: granted, public and own, by name (not a private cache his org follows without a grant)"
    );
    assert_eq!(
        cache_names(&s.visible_caches(Some(alice.id)).await.expect("visible_caches"), &ours),
        vec![
            hidden.name.clone(),
            followed.name.clone(),
            subscribed.name.clone(),
            public.name.clone()
        ],
        "alice's view: her own caches and the public ones"
    );
    assert!(
        s.delete_membership(member_of.id, bob.id)
            .await
            .expect("delete_membership"),
        "bob leaves"
    );
    assert_eq!(
        cache_names(&s.visible_caches(Some(bob.id)).await.expect("visible_caches"), &ours),
        vec![public.name.clone(), bobs.name.clone()],
        "after leaving, the subscribed cache is hidden from bob"
    );
}

/// A subscription is a grant when the cache's owner made it; a later grant upgrades a plain subscription and a
/// plain one never downgrades a grant. An organization has at most one push cache, only a granted one, and
/// setting another moves it.
pub async fn grants_and_the_push_cache<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let main = cache(s, "main", alice.id, false).await;
    let spare = cache(s, "spare", alice.id, false).await;
    let public = cache(s, "public", alice.id, true).await;
    let plain = |org: OrgId, cache: CacheId| Subscription {
        granted: false,
        ..grant(org, cache)
    };
    assert!(s.subscribe(&plain(acme.id, public.id)).await.expect("subscribe"));
    assert!(s.subscribe(&grant(acme.id, main.id)).await.expect("subscribe"));
    assert!(s.subscribe(&plain(acme.id, spare.id)).await.expect("subscribe"));
    assert!(s.subscribe(&grant(other.id, main.id)).await.expect("subscribe"));
    let label = |id: CacheId| {
        [(main.id, "main"), (spare.id, "spare"), (public.id, "public")]
            .into_iter()
            .find(|(c, _)| *c == id)
            .map_or("?".to_owned(), |(_, l)| l.to_owned())
    };
    let flags = |subs: Vec<gradient_domain::model::SubscribedCache>| {
        subs.into_iter()
            .map(|c| (label(c.cache.id), c.granted, c.push))
            .collect::<Vec<_>>()
    };
    let of = |org: OrgId| async move { flags(s.subscriptions(org).await.expect("subscriptions")) };
    assert_eq!(
        of(acme.id).await,
        vec![
            ("main".to_owned(), true, false),
            ("public".to_owned(), false, false),
            ("spare".to_owned(), false, false)
        ],
        "grants as made, no push cache yet"
    );
    assert!(
        !s.set_push_cache(acme.id, Some(spare.id)).await.expect("set_push_cache"),
        "a subscription that is not a grant cannot be the push cache"
    );
    assert!(
        !s.set_push_cache(acme.id, Some(CacheId::new()))
            .await
            .expect("set_push_cache"),
        "nor a cache the org does not subscribe to"
    );
    assert!(s.set_push_cache(acme.id, Some(main.id)).await.expect("set_push_cache"));
    assert!(
        !s.subscribe(&grant(acme.id, spare.id)).await.expect("subscribe"),
        "granting an existing subscription is not a new one"
    );
    assert!(
        !s.subscribe(&plain(acme.id, main.id)).await.expect("subscribe"),
        "subscribing again without a grant"
    );
    assert_eq!(
        of(acme.id).await,
        vec![
            ("main".to_owned(), true, true),
            ("public".to_owned(), false, false),
            ("spare".to_owned(), true, false)
        ],
        "the grant upgraded spare; a plain subscription did not downgrade main or end its push"
    );
    assert!(s.set_push_cache(acme.id, Some(spare.id)).await.expect("set_push_cache"));
    assert_eq!(
        of(acme.id)
            .await
            .iter()
            .filter(|(_, _, push)| *push)
            .collect::<Vec<_>>(),
        vec![&("spare".to_owned(), true, true)],
        "the push cache moved: one at a time"
    );
    assert_eq!(
        of(other.id).await,
        vec![("main".to_owned(), true, false)],
        "another org's subscriptions are its own"
    );
    let subscribers = s.subscribers(main.id).await.expect("subscribers");
    assert_eq!(
        subscribers
            .iter()
            .map(|sub| (sub.org.id, sub.granted, sub.push))
            .collect::<Vec<_>>(),
        {
            let mut want = vec![(acme.id, true, false), (other.id, true, false)];
            want.sort_by_key(|(id, _, _)| {
                if *id == acme.id {
                    acme.name.clone()
                } else {
                    other.name.clone()
                }
            });
            want
        },
        "the cache's subscribers, with their rights"
    );
    assert!(s.set_push_cache(acme.id, None).await.expect("set_push_cache"));
    assert!(of(acme.id).await.iter().all(|(_, _, push)| !push), "cleared");
}
