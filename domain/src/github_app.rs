//! The GitHub App as pure code: what a delivery to the App's webhook (`/hooks/github`, signed with the App's
//! webhook secret like any GitHub delivery, see [`crate::forge`]) means, and which repositories the App's
//! installations cover.
//!
//! | `X-GitHub-Event`           | action                                              | meaning                  |
//! |----------------------------|-----------------------------------------------------|--------------------------|
//! | `installation`             | `created`, `new_permissions_accepted`, `unsuspend`  | store the installation   |
//! | `installation`             | `deleted`, `suspend`                                | forget the installation  |
//! | `installation_repositories`| any (`added`, `removed`)                            | store the installation   |
//! | `push`                     | —                                                   | store the installation named by `installation.id` for the repository's owner, then queue evaluations |
//! | `pull_request`             | `opened`, `reopened`, `synchronize`; `closed`       | as a push, then evaluate the pull request (see [`crate::forge::PullRequestEvent`]); closed: abort its evaluations |
//! | anything else (`ping`, …)  | —                                                   | ignored                  |
//!
//! An installation belongs to one GitHub account (organization or user), named by its login; logins are
//! compared ignoring case, so they are kept lowercase.

use crate::forge::{self, Forge, PayloadError, PullRequestEvent, Push};
use crate::ports::forge::InstallationAccess;
use serde::Deserialize;

/// GitHub's API, where the App's tokens and statuses go unless configured otherwise.
pub const DEFAULT_API_URL: &str = "https://api.github.com";

/// The host of GitHub's repositories.
pub const GITHUB_HOST: &str = "github.com";

/// An installation of the App, as a delivery names it: its id and the account it is installed on (lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallationRef {
    pub id: u64,
    pub account: String,
}

/// What a delivery to the App's webhook means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppEvent {
    /// The installation exists and may be used: store it (replacing what was stored for its id or account).
    Installed(InstallationRef),
    /// The installation was deleted or suspended: forget it.
    Removed { id: u64 },
    /// A push: the installation that delivered it, when the payload names one, and what was pushed (`None`
    /// for a deleted branch or a tag, which queue nothing).
    Push {
        installation: Option<InstallationRef>,
        push: Option<Push>,
    },
    /// A pull request event: the installation that delivered it, when the payload names one, and what it asks
    /// (`None` for actions that change no commit: labels, edits, reviews, ...).
    PullRequest {
        installation: Option<InstallationRef>,
        pull_request: Option<PullRequestEvent>,
    },
    /// Pings and every other event or action.
    Ignored,
}

#[derive(Deserialize)]
struct Account {
    login: Option<String>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct Installation {
    id: Option<serde_json::Value>,
    account: Option<Account>,
}

#[derive(Deserialize)]
struct Repository {
    owner: Option<Account>,
}

#[derive(Deserialize)]
struct Payload {
    action: Option<String>,
    installation: Option<Installation>,
    repository: Option<Repository>,
}

/// A GitHub login, lowercase: 1–100 letters, digits, `-`, `_` or `.` (GitHub Enterprise allows `_`).
fn login(raw: &str) -> Result<String, PayloadError> {
    let l = raw.trim();
    if l.is_empty()
        || l.len() > 100
        || !l
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(PayloadError(format!("'{raw}' is not a GitHub login")));
    }
    Ok(l.to_ascii_lowercase())
}

/// An installation id: a positive integer that fits the database's signed 64 bits.
fn installation_id(v: &serde_json::Value) -> Result<u64, PayloadError> {
    v.as_u64()
        .filter(|&id| id > 0 && i64::try_from(id).is_ok())
        .ok_or_else(|| PayloadError(format!("'{v}' is not an installation id")))
}

fn required_installation(payload: &Payload) -> Result<InstallationRef, PayloadError> {
    let id = required_installation_id(payload)?;
    let account = payload
        .installation
        .as_ref()
        .and_then(|i| i.account.as_ref())
        .and_then(|a| a.login.as_deref())
        .ok_or_else(|| PayloadError("no installation account".into()))?;
    Ok(InstallationRef {
        id,
        account: login(account)?,
    })
}

fn required_installation_id(payload: &Payload) -> Result<u64, PayloadError> {
    let id = payload
        .installation
        .as_ref()
        .and_then(|i| i.id.as_ref())
        .ok_or_else(|| PayloadError("no installation id".into()))?;
    installation_id(id)
}

/// Reads a delivery to the App's webhook, given its `X-GitHub-Event` header (see the module's table). The
/// signature is checked before: this only reads.
pub fn parse_event(event: Option<&str>, body: &[u8]) -> Result<AppEvent, PayloadError> {
    let event = event.map(str::trim).unwrap_or_default().to_ascii_lowercase();
    if !matches!(
        event.as_str(),
        "installation" | "installation_repositories" | "push" | "pull_request"
    ) {
        return Ok(AppEvent::Ignored);
    }
    let payload: Payload = serde_json::from_slice(body).map_err(|e| PayloadError(e.to_string()))?;
    match event.as_str() {
        "installation" => match payload.action.as_deref().map(str::trim).unwrap_or_default() {
            "created" | "new_permissions_accepted" | "unsuspend" => {
                Ok(AppEvent::Installed(required_installation(&payload)?))
            }
            "deleted" | "suspend" => Ok(AppEvent::Removed {
                id: required_installation_id(&payload)?,
            }),
            _ => Ok(AppEvent::Ignored),
        },
        "installation_repositories" => Ok(AppEvent::Installed(required_installation(&payload)?)),
        "pull_request" => {
            let pull_request = forge::parse_pull_request(Forge::GitHub, body)?;
            let installation = repository_installation(&payload)?;
            Ok(AppEvent::PullRequest {
                installation,
                pull_request,
            })
        }
        _ => {
            let push = forge::parse_push(Forge::GitHub, body)?;
            let installation = repository_installation(&payload)?;
            Ok(AppEvent::Push { installation, push })
        }
    }
}

/// The installation a repository's event (push, pull request) was delivered by, when it names one.
fn repository_installation(payload: &Payload) -> Result<Option<InstallationRef>, PayloadError> {
    let Some(id) = payload.installation.as_ref().and_then(|i| i.id.as_ref()) else {
        return Ok(None);
    };
    let id = installation_id(id)?;
    // Such an event's installation names no account: it is the repository's owner's.
    let owner = payload
        .repository
        .as_ref()
        .and_then(|r| r.owner.as_ref())
        .and_then(|o| o.login.as_deref().or(o.name.as_deref()))
        .ok_or_else(|| PayloadError("no repository owner".into()))?;
    Ok(Some(InstallationRef {
        id,
        account: login(owner)?,
    }))
}

/// The host of a URL (`https://user@Host:443/path` → `host`), lowercase.
fn url_host(url: &str) -> Option<String> {
    let rest = url.trim().split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = host.split_once(':').map_or(host, |(h, _)| h);
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// The account (lowercase login) owning a repository the App's installations can cover, or `None`. A
/// repository is GitHub's when its host is `github.com`, the host of the App's API URL, or that host without
/// a leading `api.`: so `https://api.github.com` covers `github.com`, and a GitHub Enterprise Server at
/// `https://ghe.example.com/api/v3` covers `ghe.example.com`. Its path must be exactly `owner/repo` (https,
/// ssh and `.git` forms alike).
pub fn repository_owner(repository_url: &str, api_url: &str) -> Option<String> {
    let normalized = forge::normalize_repository_url(repository_url)?;
    let (host, path) = normalized.split_once('/')?;
    let api_host = url_host(api_url);
    let covered = host == GITHUB_HOST
        || api_host
            .as_deref()
            .is_some_and(|a| host == a || a.strip_prefix("api.").is_some_and(|bare| host == bare));
    if !covered {
        return None;
    }
    let (owner, repo) = path.split_once('/')?;
    if owner.is_empty() || repo.is_empty() || repo.contains('/') {
        return None;
    }
    login(owner).ok()
}

/// Whether a GitHub user may link the App's installation to a Gradient organization: the installation's
/// account must be the user's own, or an organization the user administers. Members of the organization who
/// merely see the installation (they can read one of its repositories) may not: a link makes the App act for
/// the Gradient organization on the account's commits.
pub fn may_link(access: &InstallationAccess) -> bool {
    if access.account_is_org {
        access.org_role.as_deref() == Some("admin")
    } else {
        access.user == access.account
    }
}

/// Checks an OAuth code as GitHub hands it to the setup URL: 1–256 letters, digits, `-` or `_`.
pub fn valid_oauth_code(code: &str) -> bool {
    !code.is_empty()
        && code.len() <= 256
        && code
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
}

/// Checks an installation id given by a user: positive and within the database's signed 64 bits.
pub fn valid_installation_id(id: u64) -> bool {
    id > 0 && i64::try_from(id).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    fn parse(event: &str, body: serde_json::Value) -> Result<AppEvent, PayloadError> {
        parse_event(Some(event), body.to_string().as_bytes())
    }

    fn installation(action: &str) -> serde_json::Value {
        json!({
            "action": action,
            "installation": {"id": 42, "account": {"login": "Acme", "type": "Organization"}},
            "sender": {"login": "alice"}
        })
    }

    #[test]
    fn installation_lifecycle() {
        let acme = InstallationRef {
            id: 42,
            account: "acme".into(),
        };
        for action in ["created", "new_permissions_accepted", "unsuspend"] {
            assert_eq!(
                parse("installation", installation(action)),
                Ok(AppEvent::Installed(acme.clone())),
                "{action}"
            );
        }
        for action in ["deleted", "suspend"] {
            assert_eq!(
                parse("installation", installation(action)),
                Ok(AppEvent::Removed { id: 42 }),
                "{action}"
            );
        }
        // A deletion needs no account.
        assert_eq!(
            parse("installation", json!({"action": "deleted", "installation": {"id": 42}})),
            Ok(AppEvent::Removed { id: 42 })
        );
        assert_eq!(
            parse("installation", installation("some_future_action")),
            Ok(AppEvent::Ignored)
        );
        for action in ["added", "removed"] {
            assert_eq!(
                parse("installation_repositories", installation(action)),
                Ok(AppEvent::Installed(acme.clone())),
                "{action}"
            );
        }
    }

    #[test]
    fn bad_installation_payloads_are_refused() {
        let cases = [
            json!({"action": "created"}),
            json!({"action": "created", "installation": {"id": 42}}),
            json!({"action": "created", "installation": {"id": "42", "account": {"login": "acme"}}}),
            json!({"action": "created", "installation": {"id": 0, "account": {"login": "acme"}}}),
            json!({"action": "created", "installation": {"id": -1, "account": {"login": "acme"}}}),
            json!({"action": "created", "installation": {"id": 9_223_372_036_854_775_808u64, "account": {"login": "acme"}}}),
            json!({"action": "created", "installation": {"id": 42, "account": {"login": "a/b"}}}),
            json!({"action": "created", "installation": {"id": 42, "account": {"login": ""}}}),
            json!({"action": "deleted", "installation": {}}),
        ];
        for body in cases {
            assert!(parse("installation", body.clone()).is_err(), "{body}");
        }
        assert!(parse_event(Some("installation"), b"not json").is_err());
    }

    fn push_body(after: &str, git_ref: &str) -> serde_json::Value {
        json!({
            "ref": git_ref,
            "before": "0".repeat(40),
            "after": after,
            "repository": {
                "name": "web",
                "full_name": "Acme/web",
                "owner": {"name": "Acme", "login": "Acme"},
                "clone_url": "https://github.com/Acme/web.git",
                "ssh_url": "git@github.com:Acme/web.git",
                "html_url": "https://github.com/Acme/web",
                "default_branch": "main"
            },
            "installation": {"id": 42, "node_id": "MDIz"}
        })
    }

    #[test]
    fn pushes_name_their_installation_and_what_they_pushed() {
        let Ok(AppEvent::Push { installation, push }) = parse("push", push_body(COMMIT, "refs/heads/main")) else {
            panic!("a push");
        };
        assert_eq!(
            installation,
            Some(InstallationRef {
                id: 42,
                account: "acme".into()
            })
        );
        let push = push.expect("a branch push");
        assert_eq!(push.commit, COMMIT);
        assert_eq!(push.branch, "main");
        assert_eq!(
            push.repository_urls,
            [
                "https://github.com/Acme/web.git",
                "git@github.com:Acme/web.git",
                "https://github.com/Acme/web"
            ]
        );

        // Deleted branches and tags queue nothing, but still name their installation.
        for body in [
            push_body(&"0".repeat(40), "refs/heads/main"),
            push_body(COMMIT, "refs/tags/v1"),
        ] {
            let event = parse("push", body).expect("parses");
            assert!(
                matches!(&event, AppEvent::Push { installation: Some(i), push: None } if i.id == 42),
                "{event:?}"
            );
        }

        // Without an installation (a repository webhook of the App's owner), nothing to store.
        let mut body = push_body(COMMIT, "refs/heads/main");
        body.as_object_mut().expect("object").remove("installation");
        let event = parse("push", body).expect("parses");
        assert!(
            matches!(
                &event,
                AppEvent::Push {
                    installation: None,
                    push: Some(_)
                }
            ),
            "{event:?}"
        );

        // The push itself must parse.
        let mut body = push_body("main", "refs/heads/main");
        assert!(parse("push", body.clone()).is_err());
        body["after"] = json!(COMMIT);
        body["repository"]["owner"] = json!({});
        assert!(parse("push", body).is_err(), "an installation without an owner");
    }

    #[test]
    fn pull_requests_name_their_installation_and_what_they_ask() {
        let path = format!(
            "{}/tests/fixtures/forge/github_pull_request_opened.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut body: serde_json::Value = serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json");
        match parse("pull_request", body.clone()) {
            Ok(AppEvent::PullRequest {
                installation: None,
                pull_request: Some(pr),
            }) => assert_eq!(pr.number, 12),
            other => panic!("{other:?}"),
        }
        body["installation"] = json!({"id": 7});
        match parse("pull_request", body.clone()) {
            Ok(AppEvent::PullRequest {
                installation: Some(i),
                pull_request: Some(_),
            }) => assert_eq!(
                i,
                InstallationRef {
                    id: 7,
                    account: "acme".into()
                }
            ),
            other => panic!("{other:?}"),
        }
        body["action"] = json!("labeled");
        assert!(matches!(
            parse("pull_request", body),
            Ok(AppEvent::PullRequest {
                installation: Some(_),
                pull_request: None
            })
        ));
        assert!(parse_event(Some("pull_request"), b"not json").is_err());
    }

    #[test]
    fn other_events_are_ignored_unread() {
        for event in [Some("ping"), Some("pull_request_review"), Some("check_suite"), None] {
            assert_eq!(parse_event(event, b"not even json"), Ok(AppEvent::Ignored), "{event:?}");
        }
        assert_eq!(
            parse("Installation", installation("created")).map(|e| matches!(e, AppEvent::Installed(_))),
            Ok(true),
            "event names ignore case"
        );
    }

    #[test]
    fn repository_owners_on_github() {
        let api = DEFAULT_API_URL;
        let cases = [
            ("https://github.com/Acme/web", api, Some("acme")),
            ("https://github.com/acme/web.git", api, Some("acme")),
            ("git@github.com:acme/web.git", api, Some("acme")),
            ("ssh://git@github.com/acme/web", api, Some("acme")),
            ("git+https://github.com/acme/web?ref=main", api, Some("acme")),
            ("https://gitlab.com/acme/web", api, None),
            ("https://git.example.com/acme/web", api, None),
            ("https://github.com/acme", api, None),
            ("https://github.com/acme/web/tree/main", api, None),
            ("file:///srv/acme/web", api, None),
            // GitHub Enterprise Server: the API's host.
            (
                "https://ghe.example.com/acme/web",
                "https://ghe.example.com/api/v3",
                Some("acme"),
            ),
            (
                "https://ghe.example.com/acme/web",
                "https://api.ghe.example.com",
                Some("acme"),
            ),
            ("https://ghe.example.com/acme/web", api, None),
            // github.com stays covered whatever the API URL (a test's fake GitHub on loopback).
            ("https://github.com/acme/web", "http://127.0.0.1:8080", Some("acme")),
            ("https://127.0.0.1/acme/web", "http://127.0.0.1:8080", Some("acme")),
        ];
        for (repository, api_url, owner) in cases {
            assert_eq!(
                repository_owner(repository, api_url).as_deref(),
                owner,
                "{repository} with {api_url}"
            );
        }
    }

    #[test]
    fn only_the_accounts_admins_may_link_its_installation() {
        let access = |user: &str, account: &str, org: bool, role: Option<&str>| InstallationAccess {
            user: user.into(),
            account: account.into(),
            account_is_org: org,
            org_role: role.map(Into::into),
        };
        assert!(may_link(&access("alice", "alice", false, None)), "one's own account");
        assert!(
            !may_link(&access("mallory", "alice", false, None)),
            "someone else's account"
        );
        assert!(
            may_link(&access("alice", "acme", true, Some("admin"))),
            "an admin of the organization"
        );
        assert!(!may_link(&access("bob", "acme", true, Some("member"))), "a member");
        assert!(!may_link(&access("bob", "acme", true, None)), "no active membership");
        assert!(
            !may_link(&access("acme", "acme", true, None)),
            "an organization is nobody's login"
        );
        assert!(valid_oauth_code("0123abcd_EF-9"));
        for code in ["", "a b", "a/b", "é", &"a".repeat(257)] {
            assert!(!valid_oauth_code(code), "{code}");
        }
        assert!(valid_installation_id(1) && valid_installation_id(i64::MAX as u64));
        assert!(!valid_installation_id(0) && !valid_installation_id(i64::MAX as u64 + 1));
    }
}
