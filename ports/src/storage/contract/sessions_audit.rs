//! A user's list of sessions, and organizations' audit logs.

use super::support::{new_session, now, org, seconds, user};
use gradient_domain::model::{AuditAction, AuditEntry, AuditVia, Session, SessionInfo};
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{OrgId, SessionId, UserId};

/// A user's live sessions are listed newest first with their last use and user agent; expired ones and other
/// users' are not.
pub async fn sessions_are_listed_newest_first_with_their_use<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let t = now();
    let at = |secs: i64, user: UserId, lifetime: i64| {
        let created_at = t + seconds(secs);
        Session {
            id: SessionId::new(),
            user_id: user,
            created_at,
            expires_at: created_at + seconds(lifetime),
        }
    };
    let older = at(-100, alice.id, 3600);
    let newer = at(-10, alice.id, 3600);
    let expired = at(-50, alice.id, 20);
    let bobs = at(-5, bob.id, 3600);
    for x in [&older, &newer, &expired, &bobs] {
        s.create_session(x).await.expect("create_session");
    }
    assert!(
        s.touch_session(older.id, t).await.expect("touch_session"),
        "touching a session"
    );
    assert!(
        s.set_session_user_agent(older.id, "Firefox/130")
            .await
            .expect("set_session_user_agent"),
        "setting a user agent"
    );
    assert!(
        !s.touch_session(SessionId::new(), t).await.expect("touch_session"),
        "an unknown session"
    );
    assert!(
        !s.set_session_user_agent(SessionId::new(), "x")
            .await
            .expect("set_session_user_agent"),
        "an unknown session has no user agent to set"
    );
    let listed = s.sessions_of(alice.id, t).await.expect("sessions_of");
    assert_eq!(
        listed,
        vec![
            SessionInfo {
                session: newer.clone(),
                last_used_at: None,
                user_agent: None
            },
            SessionInfo {
                session: older.clone(),
                last_used_at: Some(t),
                user_agent: Some("Firefox/130".into())
            },
        ],
        "alice's live sessions, newest first, with what is known of their use"
    );
    assert_eq!(
        s.session_info(older.id)
            .await
            .expect("session_info")
            .map(|i| i.last_used_at),
        Some(Some(t)),
        "session_info reads the last use"
    );
    assert_eq!(
        s.session(older.id).await.expect("session"),
        Some(older.clone()),
        "touching changes nothing else"
    );
    assert_eq!(s.session_info(SessionId::new()).await.expect("session_info"), None);
}

/// Deleting a user's sessions keeps the one asked for and every other user's.
pub async fn deleting_a_users_sessions_keeps_the_one_asked_for<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let bob = user(s, "bob").await;
    let (a1, a2, a3, b1) = (
        new_session(alice.id),
        new_session(alice.id),
        new_session(alice.id),
        new_session(bob.id),
    );
    for x in [&a1, &a2, &a3, &b1] {
        s.create_session(x).await.expect("create_session");
    }
    assert_eq!(
        s.delete_sessions_of(alice.id, Some(a2.id))
            .await
            .expect("delete_sessions_of"),
        2
    );
    assert_eq!(
        s.session(a1.id).await.expect("session"),
        None,
        "another session is gone"
    );
    assert_eq!(
        s.session(a2.id).await.expect("session"),
        Some(a2.clone()),
        "the kept one stays"
    );
    assert_eq!(
        s.session(b1.id).await.expect("session"),
        Some(b1.clone()),
        "bob's stays"
    );
    assert_eq!(
        s.delete_sessions_of(alice.id, None).await.expect("delete_sessions_of"),
        1
    );
    assert_eq!(
        s.session(a2.id).await.expect("session"),
        None,
        "all of alice's are gone"
    );
    assert_eq!(s.session(b1.id).await.expect("session"), Some(b1), "bob's still stays");
}

fn entry(org: OrgId, actor: &str, target: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        org_id: org,
        at: now(),
        actor_id: Some(UserId::new()),
        actor: actor.to_owned(),
        via: AuditVia::Session,
        action: AuditAction::ProjectCreated,
        target: target.to_owned(),
        detail: "fields: a, b".to_owned(),
    }
}

/// Entries read back whole, newest first, a page at a time below a cursor, only their organization's.
pub async fn audit_entries_read_back_newest_first_by_page<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let mut written = Vec::new();
    for i in 0..5 {
        let mut e = entry(acme.id, "alice", &format!("project 'p{i}'"));
        if i == 2 {
            e.actor_id = None;
            e.actor = "state".into();
            e.via = AuditVia::State;
            e.action = AuditAction::StateApplied;
        }
        e.seq = s.record_audit(&e, 100).await.expect("record_audit");
        written.push(e);
        s.record_audit(&entry(other.id, "alice", "elsewhere"), 100)
            .await
            .expect("record_audit in another organization");
    }
    assert!(written.windows(2).all(|w| w[0].seq < w[1].seq), "seq increases");
    written.reverse();
    let all = s.audit_log(acme.id, None, 100).await.expect("audit_log");
    assert_eq!(all, written, "acme's entries, newest first, whole");
    let first = s.audit_log(acme.id, None, 2).await.expect("audit_log");
    assert_eq!(first, written[..2], "the first page");
    let second = s.audit_log(acme.id, Some(first[1].seq), 2).await.expect("audit_log");
    assert_eq!(second, written[2..4], "the page below the cursor");
    let last = s.audit_log(acme.id, Some(second[1].seq), 2).await.expect("audit_log");
    assert_eq!(last, written[4..], "the last page");
    assert_eq!(
        s.audit_log(acme.id, Some(written[4].seq), 2).await.expect("audit_log"),
        vec![],
        "nothing below the oldest"
    );
}

/// An organization keeps its newest `keep` entries; another's are not trimmed by it; deleting the
/// organization deletes its log; an unknown organization has none to write.
pub async fn audit_log_is_bounded_and_deleted_with_its_organization<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    s.record_audit(&entry(other.id, "alice", "kept"), 3)
        .await
        .expect("record_audit");
    for i in 0..5 {
        s.record_audit(&entry(acme.id, "alice", &format!("t{i}")), 3)
            .await
            .expect("record_audit");
    }
    let targets: Vec<String> = s
        .audit_log(acme.id, None, 100)
        .await
        .expect("audit_log")
        .into_iter()
        .map(|e| e.target)
        .collect();
    assert_eq!(targets, ["t4", "t3", "t2"], "only the newest 3 are kept");
    assert_eq!(
        s.audit_log(other.id, None, 100).await.expect("audit_log").len(),
        1,
        "other org untouched"
    );
    assert!(s.delete_org(acme.id).await.expect("delete_org"));
    assert_eq!(
        s.audit_log(acme.id, None, 100).await.expect("audit_log"),
        vec![],
        "deleted with it"
    );
    assert_eq!(
        s.record_audit(&entry(acme.id, "alice", "late"), 3).await,
        Err(StorageError::NotFound),
        "no log for a missing organization"
    );
}
