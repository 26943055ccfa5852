#![allow(clippy::unwrap_used)]
//! Organizations' SSH deploy keys over the in-memory storage: made with the organization, shown to members
//! only, rotated by those with `manage_integrations`, stored sealed, and handed to the Git port for the
//! organization's SSH repositories only.

mod common;

use gradient_domain::deploy_key::RepositoryCredential;
use gradient_domain::ports::clock::SystemClock;
use gradient_domain::ports::git::{Git, GitError, RemoteHead};
use gradient_domain::ports::storage::{Audit, Integrations};
use gradient_domain::service::{OrgChanges, ServiceError, Settings};
use std::sync::Mutex;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// A repository at `COMMIT` on `main`; records the credential of every question.
#[derive(Default)]
struct SeenGit(Mutex<Vec<Option<RepositoryCredential>>>);

impl Git for SeenGit {
    async fn head(
        &self,
        _: &str,
        _: Option<&str>,
        credential: Option<&RepositoryCredential>,
    ) -> Result<Option<String>, GitError> {
        self.0.lock().unwrap().push(credential.cloned());
        Ok(Some(COMMIT.into()))
    }

    async fn remote_head(
        &self,
        _: &str,
        credential: Option<&RepositoryCredential>,
    ) -> Result<Option<RemoteHead>, GitError> {
        self.0.lock().unwrap().push(credential.cloned());
        Ok(Some(RemoteHead {
            branch: Some("main".into()),
            commit: COMMIT.into(),
        }))
    }
}

#[tokio::test]
async fn members_read_the_key_admins_rotate_it_and_others_see_no_organization() {
    let app = common::app(SystemClock, Settings::default());
    let admin = common::signed_up(&app, "admin").await;
    let viewer = common::signed_up(&app, "viewer").await;
    let outsider = common::signed_up(&app, "outsider").await;
    let acme = common::org(&app, &admin, "acme").await;
    app.set_member(&admin, "acme", "viewer", "View").await.unwrap();

    // Made with the organization: stored before anyone asked.
    let stored = app
        .storage
        .org_ssh_key(acme.id)
        .await
        .unwrap()
        .expect("a key from creation");
    let key = app.org_ssh_key(&admin, "acme").await.unwrap();
    assert_eq!(key.public_key, stored.public_key);
    assert!(key.public_key.starts_with("ssh-ed25519 AAAA"), "{key:?}");
    assert!(key.public_key.ends_with(" gradient-acme"), "{key:?}");
    assert!(key.fingerprint.starts_with("SHA256:"), "{key:?}");
    assert_eq!(app.org_ssh_key(&viewer, "acme").await.unwrap(), key);

    // Sealed at rest; the crypt secret opens it to the private key of that public key.
    assert!(stored.private_key.0.starts_with("v1:"));
    assert!(!stored.private_key.0.contains("OPENSSH"));
    let private = String::from_utf8(app.crypt.open(&stored.private_key).unwrap()).unwrap();
    assert!(
        private.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n"),
        "opens to a key file"
    );

    // An outsider gets the missing organization's answer, also once the organization is public.
    for _ in 0..2 {
        let e = app.org_ssh_key(&outsider, "acme").await.unwrap_err();
        assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
        let e = app.rotate_org_ssh_key(&outsider, "acme").await.unwrap_err();
        assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");
        let public = OrgChanges {
            public: Some(true),
            ..OrgChanges::default()
        };
        app.update_org(&admin, "acme", public).await.unwrap();
    }
    let e = app.org_ssh_key(&outsider, "nope").await.unwrap_err();
    assert!(matches!(e, ServiceError::NotFound(_)), "{e:?}");

    // A View member may not rotate; the Admin may, and the new key replaces the old one for everyone.
    let e = app.rotate_org_ssh_key(&viewer, "acme").await.unwrap_err();
    assert!(matches!(e, ServiceError::Forbidden(_)), "{e:?}");
    let rotated = app.rotate_org_ssh_key(&admin, "acme").await.unwrap();
    assert_ne!(rotated.public_key, key.public_key);
    assert_ne!(rotated.fingerprint, key.fingerprint);
    assert_eq!(app.org_ssh_key(&viewer, "acme").await.unwrap(), rotated);
    let log = app.storage.audit_log(acme.id, None, 50).await.unwrap();
    let entry = log
        .iter()
        .find(|e| e.action.as_str() == "ssh_key.rotated")
        .expect("the rotation is audited");
    assert_eq!(
        entry.detail, rotated.fingerprint,
        "with the new fingerprint, never the key"
    );
}

#[tokio::test]
async fn an_organization_without_a_key_gets_one_at_first_use() {
    let app = common::app(SystemClock, Settings::default());
    let admin = common::signed_up(&app, "admin").await;
    // An organization older than keys: stored without one.
    let old = gradient_domain::model::Org {
        id: gradient_domain::OrgId::new(),
        name: gradient_domain::Name::parse("old").unwrap(),
        display_name: "old".into(),
        description: String::new(),
        public: false,
        created_by: admin.user_id().unwrap(),
        created_at: chrono::Utc::now(),
        managed: false,
    };
    gradient_domain::ports::storage::Orgs::create_org(&app.storage, &old)
        .await
        .unwrap();
    assert_eq!(app.storage.org_ssh_key(old.id).await.unwrap(), None);
    let key = app.org_ssh_key(&admin, "old").await.unwrap();
    let stored = app
        .storage
        .org_ssh_key(old.id)
        .await
        .unwrap()
        .expect("made at first use");
    assert_eq!(stored.public_key, key.public_key);
    assert_eq!(app.org_ssh_key(&admin, "old").await.unwrap(), key, "and kept");
}

#[tokio::test]
async fn the_git_port_gets_the_key_for_the_organizations_ssh_repositories_only() {
    let app = common::app(SystemClock, Settings::default());
    let admin = common::signed_up(&app, "admin").await;
    let acme = common::org(&app, &admin, "acme").await;
    let other = common::org(&app, &admin, "other").await;
    common::project(&app, &admin, "acme", "ssh", "ssh://git@git.example.com/acme/app.git").await;
    common::project(&app, &admin, "acme", "scp", "git@git.example.com:acme/app.git").await;
    common::project(&app, &admin, "acme", "web", "https://git.example.com/acme/app.git").await;
    common::project(&app, &admin, "other", "ssh", "ssh://git@git.example.com/acme/app.git").await;
    let git = SeenGit::default();
    for (org, project) in [("acme", "ssh"), ("acme", "scp"), ("acme", "web"), ("other", "ssh")] {
        let e = app.trigger_evaluation(&git, &admin, org, project, None).await.unwrap();
        assert_eq!(e.commit, COMMIT);
    }
    let key_of = |org| {
        let app = &app;
        async move {
            let sealed = app.storage.org_ssh_key(org).await.unwrap().unwrap().private_key;
            RepositoryCredential::SshKey {
                private_key: String::from_utf8(app.crypt.open(&sealed).unwrap()).unwrap(),
            }
        }
    };
    let seen = git.0.lock().unwrap().clone();
    assert_eq!(
        seen,
        [
            Some(key_of(acme.id).await),
            Some(key_of(acme.id).await),
            None,
            Some(key_of(other.id).await),
        ],
        "each organization's own key, for SSH URLs only"
    );
    assert_ne!(key_of(acme.id).await, key_of(other.id).await);
}
