//! Forge webhooks as pure code: which forge, whether a delivery is signed with the organization's secret,
//! whether it is a push and what it pushed, and when two repository URLs name the same repository.
//!
//! | Forge           | Event header                        | Signature                                          |
//! |-----------------|-------------------------------------|----------------------------------------------------|
//! | Gitea / Forgejo | `X-Gitea-Event` / `X-Forgejo-Event` | `X-Gitea-Signature` / `X-Forgejo-Signature`: hex HMAC-SHA256 of the body |
//! | GitLab          | `X-Gitlab-Event: Push Hook`         | `X-Gitlab-Token`: the secret itself                |
//! | GitHub          | `X-GitHub-Event`                    | `X-Hub-Signature-256`: `sha256=` + hex HMAC-SHA256 |

use crate::auth::secrets_equal;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;

/// A forge that sends webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    Gitea,
    Forgejo,
    GitLab,
    GitHub,
}

impl Forge {
    pub const ALL: [Forge; 4] = [Forge::Gitea, Forge::Forgejo, Forge::GitLab, Forge::GitHub];

    /// The forge named by a webhook URL's path segment (`gitea`, `forgejo`, `gitlab`, `github`).
    pub fn parse(segment: &str) -> Option<Forge> {
        Self::ALL.into_iter().find(|f| f.as_str() == segment)
    }

    /// The path segment of the forge's webhook URL.
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Gitea => "gitea",
            Forge::Forgejo => "forgejo",
            Forge::GitLab => "gitlab",
            Forge::GitHub => "github",
        }
    }
}

/// The request headers a webhook delivery is judged by (absent headers are `None`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HookHeaders {
    /// `X-Gitea-Event`
    pub gitea_event: Option<String>,
    /// `X-Forgejo-Event`
    pub forgejo_event: Option<String>,
    /// `X-Gitlab-Event`
    pub gitlab_event: Option<String>,
    /// `X-GitHub-Event`
    pub github_event: Option<String>,
    /// `X-Gitea-Signature`
    pub gitea_signature: Option<String>,
    /// `X-Forgejo-Signature`
    pub forgejo_signature: Option<String>,
    /// `X-Gitlab-Token`
    pub gitlab_token: Option<String>,
    /// `X-Hub-Signature-256`
    pub hub_signature_256: Option<String>,
}

fn hmac_sha256_hex(secret: &[u8], body: &[u8]) -> Option<String> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).ok()?;
    mac.update(body);
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// Compares a presented hex HMAC with the expected one (case-insensitively, in constant time).
fn hex_signature_matches(presented: &str, secret: &[u8], body: &[u8]) -> bool {
    let Some(expected) = hmac_sha256_hex(secret, body) else {
        return false;
    };
    secrets_equal(presented.trim().to_ascii_lowercase().as_bytes(), expected.as_bytes())
}

/// Whether the delivery carries a valid signature made with `secret` over exactly `body`. A missing
/// signature is not valid.
pub fn verify_signature(forge: Forge, headers: &HookHeaders, secret: &[u8], body: &[u8]) -> bool {
    match forge {
        Forge::Gitea | Forge::Forgejo => {
            // Forgejo sends both headers; Gitea only its own.
            let presented = match forge {
                Forge::Forgejo => headers.forgejo_signature.as_ref().or(headers.gitea_signature.as_ref()),
                _ => headers.gitea_signature.as_ref().or(headers.forgejo_signature.as_ref()),
            };
            presented.is_some_and(|sig| hex_signature_matches(sig, secret, body))
        }
        Forge::GitLab => headers
            .gitlab_token
            .as_ref()
            .is_some_and(|token| secrets_equal(token.as_bytes(), secret)),
        Forge::GitHub => headers
            .hub_signature_256
            .as_ref()
            .and_then(|sig| sig.trim().strip_prefix("sha256="))
            .is_some_and(|sig| hex_signature_matches(sig, secret, body)),
    }
}

/// Whether the delivery is a push event (anything else, pings included, is ignored).
pub fn is_push(forge: Forge, headers: &HookHeaders) -> bool {
    let event = match forge {
        Forge::Gitea => headers.gitea_event.as_ref().or(headers.forgejo_event.as_ref()),
        Forge::Forgejo => headers.forgejo_event.as_ref().or(headers.gitea_event.as_ref()),
        Forge::GitLab => return headers.gitlab_event.as_deref().map(str::trim) == Some("Push Hook"),
        Forge::GitHub => headers.github_event.as_ref(),
    };
    event.is_some_and(|e| e.trim().eq_ignore_ascii_case("push"))
}

/// What a push event pushed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// The branch's new head (lowercase hex).
    pub commit: String,
    /// The branch pushed to (`refs/heads/<branch>` without the prefix).
    pub branch: String,
    /// The repository's default branch, when the payload says.
    pub default_branch: Option<String>,
    /// Every URL the payload gives for the repository (clone, ssh, web).
    pub repository_urls: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid payload: {0}")]
pub struct PayloadError(pub String);

#[derive(Deserialize)]
struct PushPayload {
    #[serde(rename = "ref")]
    git_ref: Option<String>,
    after: Option<String>,
    checkout_sha: Option<String>,
    repository: Option<RepositoryUrls>,
    project: Option<RepositoryUrls>,
}

/// The URL fields of Gitea's, GitHub's and GitLab's `repository` and GitLab's `project`.
#[derive(Deserialize)]
struct RepositoryUrls {
    clone_url: Option<String>,
    ssh_url: Option<String>,
    html_url: Option<String>,
    git_url: Option<String>,
    git_http_url: Option<String>,
    git_ssh_url: Option<String>,
    http_url: Option<String>,
    web_url: Option<String>,
    homepage: Option<String>,
    default_branch: Option<String>,
}

impl RepositoryUrls {
    fn urls(&self) -> impl Iterator<Item = &String> {
        [
            &self.clone_url,
            &self.ssh_url,
            &self.html_url,
            &self.git_url,
            &self.git_http_url,
            &self.git_ssh_url,
            &self.http_url,
            &self.web_url,
            &self.homepage,
        ]
        .into_iter()
        .flatten()
    }
}

/// A full commit hash: SHA-1 (40 hex digits) or SHA-256 (64).
pub fn is_commit(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.chars().all(|c| c.is_ascii_hexdigit())
}

/// Reads a push event's payload. `Ok(None)` for pushes that queue nothing: a deleted branch (the new head
/// is all zeros) or a ref that is not a branch (tags).
pub fn parse_push(forge: Forge, body: &[u8]) -> Result<Option<Push>, PayloadError> {
    let p: PushPayload = serde_json::from_slice(body).map_err(|e| PayloadError(e.to_string()))?;
    let commit = match forge {
        Forge::GitLab => p.checkout_sha.clone().or(p.after.clone()),
        _ => p.after.clone(),
    }
    .unwrap_or_default()
    .trim()
    .to_ascii_lowercase();
    if commit.is_empty() || commit.chars().all(|c| c == '0') {
        return Ok(None);
    }
    if !is_commit(&commit) {
        return Err(PayloadError(format!("'{commit}' is not a commit hash")));
    }
    let git_ref = p.git_ref.ok_or_else(|| PayloadError("no ref".into()))?;
    let Some(branch) = git_ref.strip_prefix("refs/heads/") else {
        return Ok(None);
    };
    let sources = [p.repository.as_ref(), p.project.as_ref()];
    let mut repository_urls: Vec<String> = Vec::new();
    for url in sources.iter().flatten().flat_map(|r| r.urls()) {
        if !url.is_empty() && !repository_urls.contains(url) {
            repository_urls.push(url.clone());
        }
    }
    if repository_urls.is_empty() {
        return Err(PayloadError("no repository URL".into()));
    }
    let default_branch = sources.iter().flatten().find_map(|r| r.default_branch.clone());
    Ok(Some(Push {
        commit,
        branch: branch.to_owned(),
        default_branch,
        repository_urls,
    }))
}

/// A repository URL reduced to `host/owner/repo`, lowercased, so https, ssh (`ssh://git@host/owner/repo.git`,
/// `git@host:owner/repo.git`), `git://` and web URLs of one repository compare equal. Users, ports, a `.git`
/// suffix and trailing slashes are dropped. `None` when nothing is left to compare.
pub fn normalize_repository_url(url: &str) -> Option<String> {
    let url = url.trim();
    let (authority, path) = if let Some((_, rest)) = url.split_once("://") {
        rest.split_once('/').unwrap_or((rest, ""))
    } else {
        // scp-like: [user@]host:path
        let (authority, path) = url.split_once(':')?;
        if authority.contains('/') {
            return None;
        }
        (authority, path)
    };
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if host.starts_with('[') {
        // [IPv6]:port
        host.split_once(']').map_or(host, |(h, _)| h).trim_start_matches('[')
    } else {
        host.split_once(':').map_or(host, |(h, _)| h)
    };
    let path = path.split(['?', '#']).next().unwrap_or_default().trim_matches('/');
    let path = path.strip_suffix(".git").unwrap_or(path).trim_end_matches('/');
    if path.is_empty() {
        return None;
    }
    Some(format!("{}/{}", host.to_ascii_lowercase(), path.to_ascii_lowercase()))
}

/// Whether two repository URLs name the same repository (see [`normalize_repository_url`]).
pub fn same_repository(a: &str, b: &str) -> bool {
    match (normalize_repository_url(a), normalize_repository_url(b)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";
    const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

    fn sig() -> String {
        hmac_sha256_hex(SECRET, BODY).expect("hmac")
    }

    #[test]
    fn forges_parse_from_their_path_segment() {
        for f in Forge::ALL {
            assert_eq!(Forge::parse(f.as_str()), Some(f));
        }
        assert_eq!(Forge::parse("bitbucket"), None);
        assert_eq!(Forge::parse("GitHub"), None);
    }

    #[test]
    fn hmac_matches_a_known_vector() {
        // RFC 4231 test case 2.
        assert_eq!(
            hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?").as_deref(),
            Some("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
        );
    }

    #[test]
    fn signatures_are_checked_per_forge() {
        let good = sig();
        let bad = hmac_sha256_hex(b"other", BODY).expect("hmac");
        let h = |f: fn(&mut HookHeaders, String), v: &str| {
            let mut headers = HookHeaders::default();
            f(&mut headers, v.to_owned());
            headers
        };
        let gitea = |h: &mut HookHeaders, v| h.gitea_signature = Some(v);
        let forgejo = |h: &mut HookHeaders, v| h.forgejo_signature = Some(v);
        let gitlab = |h: &mut HookHeaders, v| h.gitlab_token = Some(v);
        let github = |h: &mut HookHeaders, v| h.hub_signature_256 = Some(v);
        let upper = good.to_ascii_uppercase();
        let prefixed = format!("sha256={good}");
        let prefixed_bad = format!("sha256={bad}");
        let cases: &[(Forge, HookHeaders, bool)] = &[
            (Forge::Gitea, h(gitea, &good), true),
            (Forge::Gitea, h(gitea, &upper), true),
            (Forge::Gitea, h(gitea, &bad), false),
            (Forge::Gitea, h(gitea, ""), false),
            (Forge::Gitea, HookHeaders::default(), false),
            (Forge::Gitea, h(github, &prefixed), false),
            (Forge::Forgejo, h(forgejo, &good), true),
            (Forge::Forgejo, h(gitea, &good), true),
            (Forge::Forgejo, h(forgejo, &bad), false),
            (Forge::Gitea, h(forgejo, &good), true),
            (Forge::GitLab, h(gitlab, "s3cret"), true),
            (Forge::GitLab, h(gitlab, "s3cre"), false),
            (Forge::GitLab, h(gitlab, &good), false),
            (Forge::GitLab, HookHeaders::default(), false),
            (Forge::GitLab, h(gitea, &good), false),
            (Forge::GitHub, h(github, &prefixed), true),
            (Forge::GitHub, h(github, &prefixed_bad), false),
            (Forge::GitHub, h(github, &good), false),
            (Forge::GitHub, HookHeaders::default(), false),
            (Forge::GitHub, h(gitea, &good), false),
        ];
        for (i, (forge, headers, valid)) in cases.iter().enumerate() {
            assert_eq!(
                verify_signature(*forge, headers, SECRET, BODY),
                *valid,
                "case {i}: {forge:?} {headers:?}"
            );
        }
        let mut other_body = BODY.to_vec();
        other_body.push(b' ');
        assert!(
            !verify_signature(Forge::Gitea, &h(gitea, &good), SECRET, &other_body),
            "the body is signed"
        );
    }

    #[test]
    fn push_events_are_recognized_per_forge() {
        let s = |v: &str| Some(v.to_owned());
        let cases = [
            (
                Forge::Gitea,
                HookHeaders {
                    gitea_event: s("push"),
                    ..Default::default()
                },
                true,
            ),
            (
                Forge::Gitea,
                HookHeaders {
                    gitea_event: s("ping"),
                    ..Default::default()
                },
                false,
            ),
            (
                Forge::Gitea,
                HookHeaders {
                    gitea_event: s("pull_request"),
                    ..Default::default()
                },
                false,
            ),
            (
                Forge::Forgejo,
                HookHeaders {
                    forgejo_event: s("push"),
                    ..Default::default()
                },
                true,
            ),
            (
                Forge::Forgejo,
                HookHeaders {
                    gitea_event: s("push"),
                    ..Default::default()
                },
                true,
            ),
            (
                Forge::GitLab,
                HookHeaders {
                    gitlab_event: s("Push Hook"),
                    ..Default::default()
                },
                true,
            ),
            (
                Forge::GitLab,
                HookHeaders {
                    gitlab_event: s("Tag Push Hook"),
                    ..Default::default()
                },
                false,
            ),
            (
                Forge::GitLab,
                HookHeaders {
                    gitea_event: s("push"),
                    ..Default::default()
                },
                false,
            ),
            (
                Forge::GitHub,
                HookHeaders {
                    github_event: s("push"),
                    ..Default::default()
                },
                true,
            ),
            (
                Forge::GitHub,
                HookHeaders {
                    github_event: s("ping"),
                    ..Default::default()
                },
                false,
            ),
            (Forge::GitHub, HookHeaders::default(), false),
        ];
        for (forge, headers, push) in cases {
            assert_eq!(is_push(forge, &headers), push, "{forge:?} {headers:?}");
        }
    }

    const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn gitea_and_github_pushes_parse() {
        let body = serde_json::json!({
            "ref": "refs/heads/main",
            "before": "0000000000000000000000000000000000000000",
            "after": COMMIT.to_uppercase(),
            "repository": {
                "clone_url": "https://git.example.com/acme/web.git",
                "ssh_url": "git@git.example.com:acme/web.git",
                "html_url": "https://git.example.com/acme/web",
                "default_branch": "main"
            }
        });
        let push = parse_push(Forge::Gitea, body.to_string().as_bytes())
            .expect("parses")
            .expect("a push");
        assert_eq!(push.commit, COMMIT);
        assert_eq!(push.branch, "main");
        assert_eq!(push.default_branch.as_deref(), Some("main"));
        assert_eq!(
            push.repository_urls,
            [
                "https://git.example.com/acme/web.git",
                "git@git.example.com:acme/web.git",
                "https://git.example.com/acme/web"
            ]
        );
        assert_eq!(
            parse_push(Forge::GitHub, body.to_string().as_bytes()).expect("parses"),
            Some(push)
        );
    }

    #[test]
    fn gitlab_pushes_parse() {
        let body = serde_json::json!({
            "object_kind": "push",
            "ref": "refs/heads/dev",
            "after": "1111111111111111111111111111111111111111",
            "checkout_sha": COMMIT,
            "project": {
                "git_http_url": "https://gitlab.example.com/acme/web.git",
                "git_ssh_url": "git@gitlab.example.com:acme/web.git",
                "web_url": "https://gitlab.example.com/acme/web",
                "default_branch": "main"
            }
        });
        let push = parse_push(Forge::GitLab, body.to_string().as_bytes())
            .expect("parses")
            .expect("a push");
        assert_eq!(push.commit, COMMIT);
        assert_eq!(push.branch, "dev");
        assert_eq!(push.repository_urls.len(), 3);
        // Without checkout_sha, `after`.
        let body =
            serde_json::json!({"ref": "refs/heads/dev", "after": COMMIT, "project": {"web_url": "https://x/a/b"}});
        let push = parse_push(Forge::GitLab, body.to_string().as_bytes())
            .expect("parses")
            .expect("a push");
        assert_eq!(push.commit, COMMIT);
    }

    #[test]
    fn pushes_that_queue_nothing_and_bad_payloads() {
        let repo = serde_json::json!({"clone_url": "https://git.example.com/acme/web.git"});
        let deleted = serde_json::json!({"ref": "refs/heads/main", "after": "0".repeat(40), "repository": repo});
        assert_eq!(
            parse_push(Forge::Gitea, deleted.to_string().as_bytes()),
            Ok(None),
            "deleted branch"
        );
        let gitlab_deleted = serde_json::json!({"ref": "refs/heads/main", "after": "0".repeat(40), "checkout_sha": null, "project": repo});
        assert_eq!(
            parse_push(Forge::GitLab, gitlab_deleted.to_string().as_bytes()),
            Ok(None)
        );
        let tag = serde_json::json!({"ref": "refs/tags/v1", "after": COMMIT, "repository": repo});
        assert_eq!(parse_push(Forge::Gitea, tag.to_string().as_bytes()), Ok(None), "tags");
        let no_repo = serde_json::json!({"ref": "refs/heads/main", "after": COMMIT});
        assert!(parse_push(Forge::Gitea, no_repo.to_string().as_bytes()).is_err());
        let not_a_commit = serde_json::json!({"ref": "refs/heads/main", "after": "main", "repository": repo});
        assert!(parse_push(Forge::Gitea, not_a_commit.to_string().as_bytes()).is_err());
        assert!(parse_push(Forge::Gitea, b"not json").is_err());
    }

    #[test]
    fn repository_urls_normalize() {
        let cases = [
            ("https://git.example.com/acme/web.git", Some("git.example.com/acme/web")),
            ("https://git.example.com/acme/web", Some("git.example.com/acme/web")),
            ("https://git.example.com/acme/web/", Some("git.example.com/acme/web")),
            (
                "https://Git.Example.com/Acme/Web.git/",
                Some("git.example.com/acme/web"),
            ),
            (
                "http://user:pw@git.example.com:8443/acme/web.git",
                Some("git.example.com/acme/web"),
            ),
            (
                "ssh://git@git.example.com/acme/web.git",
                Some("git.example.com/acme/web"),
            ),
            (
                "ssh://git@git.example.com:2222/acme/web.git",
                Some("git.example.com/acme/web"),
            ),
            ("git@git.example.com:acme/web.git", Some("git.example.com/acme/web")),
            ("git.example.com:acme/web", Some("git.example.com/acme/web")),
            ("git://git.example.com/acme/web.git", Some("git.example.com/acme/web")),
            (
                "git+https://git.example.com/acme/web?ref=main",
                Some("git.example.com/acme/web"),
            ),
            (
                "https://gitlab.example.com/group/sub/web.git",
                Some("gitlab.example.com/group/sub/web"),
            ),
            ("ssh://git@[::1]:22/acme/web.git", Some("::1/acme/web")),
            ("https://git.example.com/", None),
            ("https://git.example.com", None),
            ("acme/web", None),
            ("", None),
        ];
        for (url, normalized) in cases {
            assert_eq!(normalize_repository_url(url).as_deref(), normalized, "{url}");
        }
    }

    #[test]
    fn same_repository_compares_normalized_urls() {
        assert!(same_repository(
            "https://git.example.com/acme/web.git",
            "git@git.example.com:acme/web.git"
        ));
        assert!(same_repository(
            "ssh://git@git.example.com/acme/web",
            "https://git.example.com/acme/web/"
        ));
        assert!(!same_repository(
            "https://git.example.com/acme/web",
            "https://git.example.com/acme/webapp"
        ));
        assert!(!same_repository(
            "https://git.example.com/acme/web",
            "https://other.example.com/acme/web"
        ));
        assert!(!same_repository("https://git.example.com/", "https://git.example.com/"));
    }
}
