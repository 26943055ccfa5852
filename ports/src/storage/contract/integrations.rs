//! Organizations' forge integrations: webhook secrets, forge connections and the commit status outbox; and the
//! GitHub App's installations.

use super::support::{now, org, seconds, user};
use gradient_domain::crypt::Sealed;
use gradient_domain::forge::Forge;
use gradient_domain::model::{
    CommitState, ForgeConnection, GithubInstallation, GithubInstallationLink, StatusReport, Timestamp,
};
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{EvaluationId, OrgId, StatusReportId};

/// A stored webhook secret reads back as written, per organization.
pub async fn webhook_secret_round_trips<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    assert_eq!(
        s.webhook_secret(acme.id).await.expect("webhook_secret"),
        None,
        "no secret before one is set"
    );
    let sealed = Sealed("v1:first".to_owned());
    s.set_webhook_secret(acme.id, &sealed, now())
        .await
        .expect("set_webhook_secret");
    assert_eq!(
        s.webhook_secret(acme.id).await.expect("webhook_secret"),
        Some(sealed),
        "the secret reads back"
    );
    assert_eq!(
        s.webhook_secret(other.id).await.expect("webhook_secret"),
        None,
        "other organizations have none"
    );
}

/// Setting a secret again replaces the previous one.
pub async fn set_webhook_secret_replaces<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    s.set_webhook_secret(acme.id, &Sealed("v1:first".to_owned()), now())
        .await
        .expect("set_webhook_secret");
    s.set_webhook_secret(acme.id, &Sealed("v1:second".to_owned()), now())
        .await
        .expect("set_webhook_secret replaces");
    assert_eq!(
        s.webhook_secret(acme.id).await.expect("webhook_secret"),
        Some(Sealed("v1:second".to_owned())),
        "the newer secret is kept"
    );
}

/// A secret of an unknown organization is NotFound, and nothing is stored.
pub async fn webhook_secret_of_unknown_org_is_not_found<S: Storage>(s: &S) {
    let ghost = OrgId::new();
    assert_eq!(
        s.set_webhook_secret(ghost, &Sealed("v1:x".to_owned()), now()).await,
        Err(StorageError::NotFound),
        "set_webhook_secret of an unknown org"
    );
    assert_eq!(s.webhook_secret(ghost).await.expect("webhook_secret"), None);
}

/// Deleting an organization deletes its webhook secret, and only its.
pub async fn delete_org_removes_its_webhook_secret<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let kept = org(s, "kept", alice.id, false).await;
    for o in [doomed.id, kept.id] {
        s.set_webhook_secret(o, &Sealed(format!("v1:{}", o.0)), now())
            .await
            .expect("set_webhook_secret");
    }
    assert!(s.delete_org(doomed.id).await.expect("delete_org"));
    assert_eq!(
        s.webhook_secret(doomed.id).await.expect("webhook_secret"),
        None,
        "the deleted org's secret is gone"
    );
    assert_eq!(
        s.webhook_secret(kept.id).await.expect("webhook_secret"),
        Some(Sealed(format!("v1:{}", kept.id.0))),
        "the other org's secret is kept"
    );
}

fn connection(org: OrgId, forge: Forge, token: &str) -> ForgeConnection {
    ForgeConnection {
        managed: false,
        org_id: org,
        forge,
        api_url: "https://git.example.com".to_owned(),
        token: Sealed(format!("v1:{token}")),
    }
}

fn report(org: OrgId, evaluation: EvaluationId, state: CommitState, due: Timestamp) -> StatusReport {
    StatusReport {
        id: StatusReportId::new(),
        org_id: org,
        evaluation_id: evaluation,
        repository: "https://git.example.com/acme/web.git".to_owned(),
        commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
        state,
        target_url: format!("https://ci.example.com/api/v1/evals/{}", evaluation.0),
        description: "The evaluation is running".to_owned(),
        attempts: 0,
        next_attempt_at: due,
        last_error: None,
        delivered: false,
        created_at: now(),
    }
}

/// A forge connection reads back as written and setting it again replaces it; an unknown organization is
/// NotFound.
pub async fn forge_connection_round_trips_and_is_replaced<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    assert_eq!(s.forge_connection(acme.id).await.expect("forge_connection"), None);
    let first = connection(acme.id, Forge::Gitea, "first");
    s.set_forge_connection(&first, now())
        .await
        .expect("set_forge_connection");
    assert_eq!(
        s.forge_connection(acme.id).await.expect("forge_connection"),
        Some(first)
    );
    let second = connection(acme.id, Forge::GitLab, "second");
    s.set_forge_connection(&second, now())
        .await
        .expect("set_forge_connection replaces");
    assert_eq!(
        s.forge_connection(acme.id).await.expect("forge_connection"),
        Some(second)
    );
    let ghost = OrgId::new();
    assert_eq!(
        s.set_forge_connection(&connection(ghost, Forge::GitHub, "x"), now())
            .await,
        Err(StorageError::NotFound),
        "set_forge_connection of an unknown org"
    );
    assert_eq!(s.forge_connection(ghost).await.expect("forge_connection"), None);
}

/// Due reports are the undelivered ones whose time has come, in the order they were enqueued, up to the limit;
/// a report reads back as written.
pub async fn due_statuses_are_undelivered_reports_whose_time_has_come<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let evaluation = EvaluationId::new();
    let t = now();
    let first = report(acme.id, evaluation, CommitState::Pending, t - seconds(10));
    let second = report(acme.id, evaluation, CommitState::Failure, t);
    let later = report(acme.id, EvaluationId::new(), CommitState::Success, t + seconds(60));
    for r in [&first, &second, &later] {
        s.enqueue_status(r).await.expect("enqueue_status");
    }
    let mine =
        |due: Vec<StatusReport>| -> Vec<StatusReport> { due.into_iter().filter(|r| r.org_id == acme.id).collect() };
    let due = mine(s.due_statuses(t, 10).await.expect("due_statuses"));
    assert_eq!(
        due,
        vec![first.clone(), second.clone()],
        "due reports, in order, as written"
    );
    let due = s.due_statuses(t, 1).await.expect("due_statuses");
    assert_eq!(due, vec![first.clone()], "the limit is kept");
    assert!(s.status_delivered(first.id).await.expect("status_delivered"));
    let due = mine(s.due_statuses(t + seconds(60), 10).await.expect("due_statuses"));
    assert_eq!(
        due.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![second.id, later.id],
        "delivered reports are not due"
    );
    assert_eq!(
        s.enqueue_status(&first).await,
        Err(StorageError::Conflict("status report id".to_owned())),
        "an id is enqueued once"
    );
    assert_eq!(
        s.enqueue_status(&report(OrgId::new(), evaluation, CommitState::Pending, t))
            .await,
        Err(StorageError::NotFound),
        "a report of an unknown org"
    );
}

/// A failed attempt counts, keeps the error and postpones the report; delivery marks it delivered. Both are
/// Ok(false) for an unknown report. An evaluation's reports read back in order.
pub async fn status_attempts_are_recorded<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let evaluation = EvaluationId::new();
    let t = now();
    let pending = report(acme.id, evaluation, CommitState::Pending, t);
    let success = report(acme.id, evaluation, CommitState::Success, t);
    let other = report(acme.id, EvaluationId::new(), CommitState::Pending, t);
    for r in [&pending, &success, &other] {
        s.enqueue_status(r).await.expect("enqueue_status");
    }
    for n in 1..=2 {
        assert!(
            s.status_failed(pending.id, &format!("HTTP 50{n}"), t + seconds(5 * n))
                .await
                .expect("status_failed")
        );
    }
    assert!(s.status_delivered(success.id).await.expect("status_delivered"));
    let statuses = s.statuses_of(evaluation).await.expect("statuses_of");
    assert_eq!(statuses.len(), 2, "only the evaluation's reports: {statuses:?}");
    assert_eq!(statuses[0].id, pending.id, "in the order they were enqueued");
    assert_eq!(statuses[0].attempts, 2);
    assert_eq!(statuses[0].last_error.as_deref(), Some("HTTP 502"));
    assert_eq!(statuses[0].next_attempt_at, t + seconds(10));
    assert!(!statuses[0].delivered);
    assert_eq!(statuses[1].id, success.id);
    assert!(statuses[1].delivered);
    assert_eq!(statuses[1].attempts, 0);
    assert!(
        s.due_statuses(t + seconds(9), 10)
            .await
            .expect("due")
            .iter()
            .all(|r| r.id != pending.id)
    );
    assert!(
        s.due_statuses(t + seconds(10), 10)
            .await
            .expect("due")
            .iter()
            .any(|r| r.id == pending.id)
    );
    let ghost = StatusReportId::new();
    assert!(!s.status_delivered(ghost).await.expect("status_delivered"));
    assert!(!s.status_failed(ghost, "x", t).await.expect("status_failed"));
}

/// Deleting an organization deletes its forge connection and its status reports, and only its.
pub async fn delete_org_removes_its_forge_connection_and_statuses<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let kept = org(s, "kept", alice.id, false).await;
    let (doomed_eval, kept_eval) = (EvaluationId::new(), EvaluationId::new());
    for (o, e) in [(doomed.id, doomed_eval), (kept.id, kept_eval)] {
        s.set_forge_connection(&connection(o, Forge::Forgejo, "t"), now())
            .await
            .expect("set_forge_connection");
        s.enqueue_status(&report(o, e, CommitState::Pending, now()))
            .await
            .expect("enqueue_status");
    }
    assert!(s.delete_org(doomed.id).await.expect("delete_org"));
    assert_eq!(s.forge_connection(doomed.id).await.expect("forge_connection"), None);
    assert!(s.statuses_of(doomed_eval).await.expect("statuses_of").is_empty());
    assert!(s.forge_connection(kept.id).await.expect("forge_connection").is_some());
    assert_eq!(s.statuses_of(kept_eval).await.expect("statuses_of").len(), 1);
}

/// A fresh installation of the GitHub App on a fresh account (a random id and login, so scenarios sharing a
/// store do not collide).
fn installation(prefix: &str) -> GithubInstallation {
    let raw = uuid::Uuid::new_v4().as_u64_pair().0 >> 1;
    GithubInstallation {
        id: raw.max(1),
        account: format!("{prefix}-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
        updated_at: now(),
    }
}

/// An installation reads back by its account, as written; storing it again with the same id replaces it
/// (a renamed account), and the old login finds nothing.
pub async fn github_installation_round_trips_and_is_replaced_by_id<S: Storage>(s: &S) {
    let acme = installation("acme");
    assert_eq!(
        s.github_installation(&acme.account).await.expect("github_installation"),
        None,
        "nothing before it is stored"
    );
    s.put_github_installation(&acme).await.expect("put_github_installation");
    assert_eq!(
        s.github_installation(&acme.account).await.expect("github_installation"),
        Some(acme.clone()),
        "it reads back"
    );
    assert_eq!(
        s.github_installation(&acme.account.to_uppercase())
            .await
            .expect("github_installation"),
        None,
        "accounts match exactly"
    );
    let renamed = GithubInstallation {
        account: format!("{}-renamed", acme.account),
        updated_at: now() + seconds(5),
        ..acme.clone()
    };
    s.put_github_installation(&renamed).await.expect("put again");
    assert_eq!(
        s.github_installation(&renamed.account)
            .await
            .expect("github_installation"),
        Some(renamed.clone())
    );
    assert_eq!(
        s.github_installation(&acme.account).await.expect("github_installation"),
        None,
        "one row per installation id"
    );
}

/// An account has one installation: a new one (the App was uninstalled and installed again) replaces the
/// previous, whose id is then unknown. Other accounts are untouched, and deleting an organization does not
/// touch installations.
pub async fn an_account_has_one_github_installation<S: Storage>(s: &S) {
    let old = installation("acme");
    let other = installation("other");
    for i in [&old, &other] {
        s.put_github_installation(i).await.expect("put_github_installation");
    }
    let new = GithubInstallation {
        account: old.account.clone(),
        ..installation("new")
    };
    assert_ne!(new.id, old.id);
    s.put_github_installation(&new).await.expect("put_github_installation");
    assert_eq!(
        s.github_installation(&old.account).await.expect("github_installation"),
        Some(new.clone()),
        "the newer installation"
    );
    assert!(
        !s.delete_github_installation(old.id)
            .await
            .expect("delete_github_installation"),
        "the replaced installation is gone"
    );
    let alice = user(s, "alice").await;
    let doomed = org(s, "doomed", alice.id, false).await;
    assert!(s.delete_org(doomed.id).await.expect("delete_org"));
    assert_eq!(
        s.github_installation(&other.account)
            .await
            .expect("github_installation"),
        Some(other),
        "other accounts are untouched, whatever happens to organizations"
    );
}

/// Deleting an installation forgets it, and only it; deleting it again is Ok(false).
pub async fn delete_github_installation_forgets_only_it<S: Storage>(s: &S) {
    let doomed = installation("doomed");
    let kept = installation("kept");
    for i in [&doomed, &kept] {
        s.put_github_installation(i).await.expect("put_github_installation");
    }
    assert!(
        s.delete_github_installation(doomed.id)
            .await
            .expect("delete_github_installation")
    );
    assert_eq!(
        s.github_installation(&doomed.account)
            .await
            .expect("github_installation"),
        None
    );
    assert!(
        !s.delete_github_installation(doomed.id)
            .await
            .expect("delete_github_installation"),
        "deleting it again reports false"
    );
    assert_eq!(
        s.github_installation(&kept.account).await.expect("github_installation"),
        Some(kept)
    );
}

fn link(org: OrgId, installation: u64, account: &str) -> GithubInstallationLink {
    GithubInstallationLink {
        org_id: org,
        installation_id: installation,
        account: account.to_owned(),
        linked_by: "octocat".to_owned(),
        created_at: now(),
    }
}

/// A link reads back from its organization and its installation; linking again replaces it; unlinking removes
/// only it; an unknown organization is NotFound; deleting the organization deletes its links; deleting the
/// installation leaves them.
pub async fn github_installation_links_belong_to_their_organization<S: Storage>(s: &S) {
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let doomed = org(s, "doomed", alice.id, false).await;
    let i = installation("acme");
    let j = installation("beta");
    s.put_github_installation(&i).await.expect("put_github_installation");
    assert!(s.github_installation_links(acme.id).await.expect("links").is_empty());
    assert!(s.github_installation_orgs(i.id).await.expect("orgs").is_empty());

    let first = link(acme.id, i.id, &i.account);
    s.link_github_installation(&first).await.expect("link");
    let again = GithubInstallationLink {
        linked_by: "hubot".to_owned(),
        created_at: now() + seconds(3),
        ..first.clone()
    };
    s.link_github_installation(&again).await.expect("link again");
    assert_eq!(
        s.github_installation_links(acme.id).await.expect("links"),
        std::slice::from_ref(&again),
        "one link per organization and installation, the newest"
    );
    let second = link(acme.id, j.id, &j.account);
    s.link_github_installation(&second).await.expect("link");
    for o in [other.id, doomed.id] {
        s.link_github_installation(&link(o, i.id, &i.account))
            .await
            .expect("link");
    }
    let mut links = s.github_installation_links(acme.id).await.expect("links");
    links.sort_by_key(|l| l.installation_id);
    let mut wanted = vec![again.clone(), second.clone()];
    wanted.sort_by_key(|l| l.installation_id);
    assert_eq!(links, wanted);
    let mut orgs = s.github_installation_orgs(i.id).await.expect("orgs");
    orgs.sort();
    let mut expected = vec![acme.id, other.id, doomed.id];
    expected.sort();
    assert_eq!(orgs, expected);
    assert_eq!(s.github_installation_orgs(j.id).await.expect("orgs"), [acme.id]);

    assert!(matches!(
        s.link_github_installation(&link(OrgId(uuid::Uuid::new_v4()), i.id, &i.account))
            .await,
        Err(StorageError::NotFound)
    ));

    assert!(s.delete_org(doomed.id).await.expect("delete_org"));
    assert!(s.unlink_github_installation(other.id, i.id).await.expect("unlink"));
    assert!(
        !s.unlink_github_installation(other.id, i.id).await.expect("unlink"),
        "unlinking again reports false"
    );
    assert_eq!(
        s.github_installation_orgs(i.id).await.expect("orgs"),
        [acme.id],
        "the deleted organization's and the removed link are gone"
    );
    assert!(s.delete_github_installation(i.id).await.expect("delete"));
    assert_eq!(
        s.github_installation_orgs(i.id).await.expect("orgs"),
        [acme.id],
        "links outlive a suspended installation"
    );
}

/// An organization's SSH deploy key: the first one stored is kept by `init` (a second `init` answers it),
/// `set` replaces it, other organizations have none, an unknown organization is NotFound, and deleting the
/// organization deletes it.
pub async fn org_ssh_keys_are_kept_once_replaced_and_deleted_with_their_org<S: Storage>(s: &S) {
    use gradient_domain::model::OrgSshKey;
    let alice = user(s, "alice").await;
    let acme = org(s, "acme", alice.id, false).await;
    let other = org(s, "other", alice.id, false).await;
    let key = |org: OrgId, n: &str| OrgSshKey {
        org_id: org,
        public_key: format!("ssh-ed25519 AAAA{n} gradient-acme"),
        private_key: Sealed(format!("v1:{n}")),
        created_at: now(),
    };
    assert_eq!(s.org_ssh_key(acme.id).await.expect("org_ssh_key"), None);
    let first = key(acme.id, "first");
    assert_eq!(s.init_org_ssh_key(&first).await.expect("init"), first);
    assert_eq!(
        s.init_org_ssh_key(&key(acme.id, "second")).await.expect("init again"),
        first,
        "a second init answers the key stored first"
    );
    assert_eq!(s.org_ssh_key(acme.id).await.expect("org_ssh_key"), Some(first));
    let rotated = key(acme.id, "rotated");
    s.set_org_ssh_key(&rotated).await.expect("set");
    assert_eq!(s.org_ssh_key(acme.id).await.expect("org_ssh_key"), Some(rotated));
    assert_eq!(s.org_ssh_key(other.id).await.expect("org_ssh_key"), None);
    let ghost = OrgId::new();
    assert_eq!(s.set_org_ssh_key(&key(ghost, "x")).await, Err(StorageError::NotFound));
    assert_eq!(s.init_org_ssh_key(&key(ghost, "x")).await, Err(StorageError::NotFound));
    assert!(s.delete_org(acme.id).await.expect("delete_org"));
    assert_eq!(s.org_ssh_key(acme.id).await.expect("org_ssh_key"), None);
}
