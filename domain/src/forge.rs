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

/// Whether the delivery is a pull request event: GitHub's and Gitea's/Forgejo's `pull_request` (Gitea also
/// names its synchronize deliveries `pull_request_sync`), GitLab's `Merge Request Hook`.
pub fn is_pull_request(forge: Forge, headers: &HookHeaders) -> bool {
    let event = match forge {
        Forge::Gitea => headers.gitea_event.as_ref().or(headers.forgejo_event.as_ref()),
        Forge::Forgejo => headers.forgejo_event.as_ref().or(headers.gitea_event.as_ref()),
        Forge::GitLab => return headers.gitlab_event.as_deref().map(str::trim) == Some("Merge Request Hook"),
        Forge::GitHub => return headers.github_event.as_deref().map(str::trim) == Some("pull_request"),
    };
    event.is_some_and(|e| matches!(e.trim(), "pull_request" | "pull_request_sync"))
}

/// What a pull request event asks of the pull request's evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullRequestAction {
    /// Opened, reopened or new commits pushed: evaluate its commit (superseding its running evaluation).
    Evaluate,
    /// Closed or merged: abort its running evaluation.
    Close,
}

/// A pull request (a GitLab merge request) as its event describes it. Which commit is evaluated and where the
/// worker finds it:
///
/// | Forge  | commit evaluated                                                   | ref fetched from the base repository |
/// |--------|--------------------------------------------------------------------|--------------------------------------|
/// | GitHub | the test merge commit when `mergeable` is `true`, else the head     | `refs/pull/N/merge`, else `refs/pull/N/head` |
/// | Gitea, Forgejo | the head                                                    | `refs/pull/N/head`                   |
/// | GitLab | the head (`last_commit`)                                           | `refs/merge-requests/N/head`          |
///
/// Commit statuses always go on the head commit: it is the one the forge shows on the pull request (a status
/// on GitHub's test merge commit would be seen by nobody).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequestEvent {
    pub action: PullRequestAction,
    /// The pull request's number (GitLab: the merge request's `iid`).
    pub number: u64,
    /// The commit to evaluate (lowercase hex).
    pub commit: String,
    /// The ref of the base repository that holds `commit`.
    pub fetch_ref: String,
    /// The pull request's head commit, where statuses go.
    pub head_commit: String,
    /// The branch of the head repository the pull request comes from.
    pub head_branch: String,
    /// The head repository's clone (or web) URL; `None` when the forge no longer knows it (a deleted fork).
    pub head_repository: Option<String>,
    /// Whether the head repository is another repository than the base one (a fork); a deleted head
    /// repository counts as a fork.
    pub fork: bool,
    /// The branch the pull request asks to merge into.
    pub base_branch: String,
    /// The base repository's default branch, when the payload says.
    pub default_branch: Option<String>,
    /// Every URL the payload gives for the base repository.
    pub repository_urls: Vec<String>,
}

#[derive(Deserialize)]
struct PrEnd {
    #[serde(rename = "ref")]
    branch: Option<String>,
    sha: Option<String>,
    repo: Option<RepositoryUrls>,
}

#[derive(Deserialize)]
struct PrBody {
    number: Option<u64>,
    mergeable: Option<bool>,
    merge_commit_sha: Option<String>,
    head: Option<PrEnd>,
    base: Option<PrEnd>,
}

/// GitHub's and Gitea's `pull_request` payload.
#[derive(Deserialize)]
struct PrPayload {
    action: Option<String>,
    number: Option<u64>,
    pull_request: Option<PrBody>,
    repository: Option<RepositoryUrls>,
}

#[derive(Deserialize)]
struct MrCommit {
    id: Option<String>,
}

#[derive(Deserialize)]
struct MrAttributes {
    iid: Option<u64>,
    action: Option<String>,
    oldrev: Option<String>,
    source_branch: Option<String>,
    target_branch: Option<String>,
    source_project_id: Option<u64>,
    target_project_id: Option<u64>,
    last_commit: Option<MrCommit>,
    source: Option<RepositoryUrls>,
    target: Option<RepositoryUrls>,
}

/// GitLab's `Merge Request Hook` payload.
#[derive(Deserialize)]
struct MrPayload {
    object_attributes: Option<MrAttributes>,
    project: Option<RepositoryUrls>,
}

fn commit_field(value: Option<&String>, what: &str) -> Result<String, PayloadError> {
    let c = value
        .ok_or_else(|| PayloadError(format!("no {what}")))?
        .trim()
        .to_ascii_lowercase();
    if !is_commit(&c) {
        return Err(PayloadError(format!("'{c}' is not a commit hash ({what})")));
    }
    Ok(c)
}

fn branch_field(value: Option<&String>, what: &str) -> Result<String, PayloadError> {
    let b = value.ok_or_else(|| PayloadError(format!("no {what}")))?;
    crate::names::check_branch(b).map_err(|m| PayloadError(format!("{what}: {m}")))?;
    Ok(b.clone())
}

fn collect_urls<'a>(sources: impl IntoIterator<Item = Option<&'a RepositoryUrls>>) -> Vec<String> {
    let mut urls: Vec<String> = Vec::new();
    for url in sources.into_iter().flatten().flat_map(|r| r.urls()) {
        if !url.is_empty() && !urls.contains(url) {
            urls.push(url.clone());
        }
    }
    urls
}

/// The URL a head repository is named by: its clone URL, else any other.
fn head_url(repo: &RepositoryUrls) -> Option<String> {
    let url = repo
        .clone_url
        .as_ref()
        .or(repo.git_http_url.as_ref())
        .or_else(|| repo.urls().next())?;
    let url = url.trim();
    (!url.is_empty() && url.len() <= 2048 && !url.chars().any(char::is_control)).then(|| url.to_owned())
}

fn is_fork(head: Option<&RepositoryUrls>, base_urls: &[String]) -> bool {
    let Some(head) = head else { return true };
    !head.urls().any(|h| base_urls.iter().any(|b| same_repository(h, b)))
}

/// Reads a pull request event's payload (see [`PullRequestEvent`]). `Ok(None)` for actions that change no
/// commit: labels, assignees, reviews, edits of the title or description (GitLab's `update` without
/// `oldrev`), and everything else that is neither opened, reopened, new commits, closed nor merged.
pub fn parse_pull_request(forge: Forge, body: &[u8]) -> Result<Option<PullRequestEvent>, PayloadError> {
    match forge {
        Forge::GitLab => parse_merge_request(body),
        _ => parse_github_like(forge, body),
    }
}

fn parse_github_like(forge: Forge, body: &[u8]) -> Result<Option<PullRequestEvent>, PayloadError> {
    let p: PrPayload = serde_json::from_slice(body).map_err(|e| PayloadError(e.to_string()))?;
    let action = match p.action.as_deref().map(str::trim).unwrap_or_default() {
        "opened" | "reopened" | "synchronize" | "synchronized" => PullRequestAction::Evaluate,
        "closed" => PullRequestAction::Close,
        _ => return Ok(None),
    };
    let pr = p.pull_request.ok_or_else(|| PayloadError("no pull_request".into()))?;
    let number = p
        .number
        .or(pr.number)
        .filter(|n| *n > 0 && i64::try_from(*n).is_ok())
        .ok_or_else(|| PayloadError("no pull request number".into()))?;
    let head = pr.head.ok_or_else(|| PayloadError("no pull_request.head".into()))?;
    let base = pr.base.ok_or_else(|| PayloadError("no pull_request.base".into()))?;
    let head_commit = commit_field(head.sha.as_ref(), "pull_request.head.sha")?;
    let head_branch = branch_field(head.branch.as_ref(), "pull_request.head.ref")?;
    let base_branch = branch_field(base.branch.as_ref(), "pull_request.base.ref")?;
    let repository_urls = collect_urls([p.repository.as_ref(), base.repo.as_ref()]);
    if repository_urls.is_empty() {
        return Err(PayloadError("no repository URL".into()));
    }
    let default_branch = [p.repository.as_ref(), base.repo.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|r| r.default_branch.clone());
    let merge = match (forge, pr.mergeable, pr.merge_commit_sha.as_ref()) {
        (Forge::GitHub, Some(true), Some(sha)) => Some(commit_field(Some(sha), "pull_request.merge_commit_sha")?),
        _ => None,
    };
    let (commit, fetch_ref) = match merge {
        Some(merge) => (merge, format!("refs/pull/{number}/merge")),
        None => (head_commit.clone(), format!("refs/pull/{number}/head")),
    };
    Ok(Some(PullRequestEvent {
        action,
        number,
        commit,
        fetch_ref,
        head_commit,
        head_branch,
        head_repository: head.repo.as_ref().and_then(head_url),
        fork: is_fork(head.repo.as_ref(), &repository_urls),
        base_branch,
        default_branch,
        repository_urls,
    }))
}

fn parse_merge_request(body: &[u8]) -> Result<Option<PullRequestEvent>, PayloadError> {
    let p: MrPayload = serde_json::from_slice(body).map_err(|e| PayloadError(e.to_string()))?;
    let a = p
        .object_attributes
        .ok_or_else(|| PayloadError("no object_attributes".into()))?;
    let action = match a.action.as_deref().map(str::trim).unwrap_or_default() {
        "open" | "reopen" => PullRequestAction::Evaluate,
        // An update with `oldrev` brought new commits; without, it changed the title, labels, ...
        "update" if a.oldrev.as_deref().is_some_and(|r| !r.trim().is_empty()) => PullRequestAction::Evaluate,
        "close" | "merge" => PullRequestAction::Close,
        _ => return Ok(None),
    };
    let number = a
        .iid
        .filter(|n| *n > 0 && i64::try_from(*n).is_ok())
        .ok_or_else(|| PayloadError("no object_attributes.iid".into()))?;
    let head_commit = commit_field(
        a.last_commit.as_ref().and_then(|c| c.id.as_ref()),
        "object_attributes.last_commit.id",
    )?;
    let head_branch = branch_field(a.source_branch.as_ref(), "object_attributes.source_branch")?;
    let base_branch = branch_field(a.target_branch.as_ref(), "object_attributes.target_branch")?;
    let repository_urls = collect_urls([p.project.as_ref(), a.target.as_ref()]);
    if repository_urls.is_empty() {
        return Err(PayloadError("no repository URL".into()));
    }
    let default_branch = [p.project.as_ref(), a.target.as_ref()]
        .into_iter()
        .flatten()
        .find_map(|r| r.default_branch.clone());
    let fork = match (a.source_project_id, a.target_project_id) {
        (Some(source), Some(target)) => source != target,
        _ => is_fork(a.source.as_ref(), &repository_urls),
    };
    Ok(Some(PullRequestEvent {
        action,
        number,
        commit: head_commit.clone(),
        fetch_ref: format!("refs/merge-requests/{number}/head"),
        head_commit,
        head_branch,
        head_repository: a.source.as_ref().and_then(head_url),
        fork,
        base_branch,
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
    // Where a URL parser (git's, the network policy's) ends the host: an authority holding one of these is not
    // one host, and must never be read as the part after its last `@` (`https://evil.example?@github.com/o/r`
    // connects to evil.example).
    if authority.contains(['?', '#', '\\']) {
        return None;
    }
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

    #[test]
    fn an_authority_that_is_not_one_host_names_no_repository() {
        for url in [
            "https://evil.example.com?@github.com/acme/web",
            "https://evil.example.com#@github.com/acme/web",
            "https://evil.example.com\\@github.com/acme/web",
        ] {
            assert_eq!(normalize_repository_url(url), None, "{url}");
        }
        assert_eq!(
            normalize_repository_url("https://x-access-token@github.com/acme/web.git?x#y").as_deref(),
            Some("github.com/acme/web")
        );
    }

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

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/forge/{name}.json", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    #[test]
    fn pull_request_events_are_recognized_per_forge() {
        let s = |v: &str| Some(v.to_owned());
        let gitea = |e: &str| HookHeaders {
            gitea_event: s(e),
            ..Default::default()
        };
        assert!(is_pull_request(Forge::Gitea, &gitea("pull_request")));
        assert!(is_pull_request(Forge::Forgejo, &gitea("pull_request_sync")));
        assert!(!is_pull_request(Forge::Gitea, &gitea("pull_request_comment")));
        assert!(!is_pull_request(Forge::Gitea, &gitea("push")));
        let gitlab = HookHeaders {
            gitlab_event: s("Merge Request Hook"),
            ..Default::default()
        };
        assert!(is_pull_request(Forge::GitLab, &gitlab));
        assert!(!is_push(Forge::GitLab, &gitlab));
        let github = HookHeaders {
            github_event: s("pull_request"),
            ..Default::default()
        };
        assert!(is_pull_request(Forge::GitHub, &github));
        assert!(!is_push(Forge::GitHub, &github));
        let review = HookHeaders {
            github_event: s("pull_request_review"),
            ..Default::default()
        };
        assert!(!is_pull_request(Forge::GitHub, &review));
    }

    #[test]
    fn a_github_pull_request_from_the_same_repository_evaluates_its_head() {
        let pr = parse_pull_request(Forge::GitHub, &fixture("github_pull_request_opened"))
            .expect("parses")
            .expect("acted on");
        assert_eq!(pr.action, PullRequestAction::Evaluate);
        assert_eq!(pr.number, 12);
        // `mergeable` is null while GitHub computes it: the head, by its ref.
        assert_eq!(pr.commit, "3f786850e387550fdab836ed7e6dc881de23001b");
        assert_eq!(pr.head_commit, pr.commit);
        assert_eq!(pr.fetch_ref, "refs/pull/12/head");
        assert_eq!(pr.head_branch, "docs-theme");
        assert_eq!(pr.head_repository.as_deref(), Some("https://github.com/acme/web.git"));
        assert!(!pr.fork);
        assert_eq!(pr.base_branch, "main");
        assert_eq!(pr.default_branch.as_deref(), Some("main"));
        assert!(
            pr.repository_urls
                .iter()
                .any(|u| same_repository(u, "git@github.com:acme/web.git"))
        );
    }

    #[test]
    fn a_mergeable_github_fork_pull_request_evaluates_the_test_merge_with_statuses_on_its_head() {
        let pr = parse_pull_request(Forge::GitHub, &fixture("github_pull_request_synchronize_fork"))
            .expect("parses")
            .expect("acted on");
        assert_eq!(pr.action, PullRequestAction::Evaluate);
        assert!(pr.fork);
        assert_eq!(pr.commit, "c3499c2729730a7f807efb8676a92dcb6f8a3f8f");
        assert_eq!(pr.fetch_ref, "refs/pull/12/merge");
        assert_eq!(pr.head_commit, "a94a8fe5ccb19ba61c4c0873d391e987982fbbd3");
        assert_eq!(
            pr.head_repository.as_deref(),
            Some("https://github.com/mallory/web.git")
        );
        // The base repository is the one named, never the fork.
        assert!(
            pr.repository_urls
                .iter()
                .all(|u| !same_repository(u, "https://github.com/mallory/web"))
        );
        // Gitea has no merge ref: the same payload from Gitea evaluates the head.
        let gitea = parse_pull_request(Forge::Gitea, &fixture("github_pull_request_synchronize_fork"))
            .expect("parses")
            .expect("acted on");
        assert_eq!(gitea.commit, gitea.head_commit);
        assert_eq!(gitea.fetch_ref, "refs/pull/12/head");
    }

    #[test]
    fn closed_and_other_github_actions() {
        let closed = parse_pull_request(Forge::GitHub, &fixture("github_pull_request_closed"))
            .expect("parses")
            .expect("acted on");
        assert_eq!(closed.action, PullRequestAction::Close);
        assert_eq!(closed.number, 12);
        assert_eq!(
            parse_pull_request(Forge::GitHub, &fixture("github_pull_request_labeled")),
            Ok(None),
            "labels change no commit"
        );
        let mut reopened: serde_json::Value =
            serde_json::from_slice(&fixture("github_pull_request_closed")).expect("json");
        reopened["action"] = "reopened".into();
        let reopened = parse_pull_request(Forge::GitHub, reopened.to_string().as_bytes())
            .expect("parses")
            .expect("acted on");
        assert_eq!(reopened.action, PullRequestAction::Evaluate);
        for action in [
            "edited",
            "assigned",
            "review_requested",
            "ready_for_review",
            "converted_to_draft",
        ] {
            let mut v: serde_json::Value =
                serde_json::from_slice(&fixture("github_pull_request_opened")).expect("json");
            v["action"] = action.into();
            assert_eq!(
                parse_pull_request(Forge::GitHub, v.to_string().as_bytes()),
                Ok(None),
                "{action}"
            );
        }
    }

    #[test]
    fn a_gitea_synchronized_pull_request_evaluates_its_head() {
        let pr = parse_pull_request(Forge::Gitea, &fixture("gitea_pull_request_synchronized"))
            .expect("parses")
            .expect("acted on");
        assert_eq!(pr.action, PullRequestAction::Evaluate);
        assert_eq!(pr.number, 3);
        assert_eq!(pr.commit, "de9f2c7fd25e1b3afad3e85a0bd17d9b100db4b3");
        assert_eq!(pr.fetch_ref, "refs/pull/3/head");
        assert_eq!(pr.head_branch, "faster-checks");
        assert!(!pr.fork);
        assert!(
            pr.repository_urls
                .iter()
                .any(|u| same_repository(u, "https://git.example.com/acme/web"))
        );
    }

    #[test]
    fn gitlab_merge_requests_evaluate_new_commits_only() {
        let pr = parse_pull_request(Forge::GitLab, &fixture("gitlab_merge_request_update_fork"))
            .expect("parses")
            .expect("acted on");
        assert_eq!(pr.action, PullRequestAction::Evaluate);
        assert_eq!(pr.number, 7);
        assert_eq!(pr.commit, "0beec7b5ea3f0fdbc95d0dd47f3c5bc275da8a33");
        assert_eq!(pr.head_commit, pr.commit);
        assert_eq!(pr.fetch_ref, "refs/merge-requests/7/head");
        assert_eq!(pr.head_branch, "pin-nixpkgs");
        assert!(pr.fork, "source project 31, target 14");
        assert_eq!(
            pr.head_repository.as_deref(),
            Some("https://gitlab.example.com/carol/web.git")
        );
        assert!(
            pr.repository_urls
                .iter()
                .any(|u| same_repository(u, "git@gitlab.example.com:acme/web.git"))
        );
        assert!(
            !pr.repository_urls
                .iter()
                .any(|u| same_repository(u, "https://gitlab.example.com/carol/web"))
        );
        // An update without `oldrev` (here: a label added) changed no commit.
        assert_eq!(
            parse_pull_request(Forge::GitLab, &fixture("gitlab_merge_request_update_labels")),
            Ok(None)
        );
        let with_action = |action: &str| {
            let mut v: serde_json::Value =
                serde_json::from_slice(&fixture("gitlab_merge_request_update_labels")).expect("json");
            v["object_attributes"]["action"] = action.into();
            parse_pull_request(Forge::GitLab, v.to_string().as_bytes()).map(|p| p.map(|p| p.action))
        };
        assert_eq!(with_action("open"), Ok(Some(PullRequestAction::Evaluate)));
        assert_eq!(with_action("reopen"), Ok(Some(PullRequestAction::Evaluate)));
        assert_eq!(with_action("close"), Ok(Some(PullRequestAction::Close)));
        assert_eq!(with_action("merge"), Ok(Some(PullRequestAction::Close)));
        assert_eq!(with_action("approved"), Ok(None));
    }

    #[test]
    fn bad_pull_request_payloads_are_refused() {
        let opened: serde_json::Value = serde_json::from_slice(&fixture("github_pull_request_opened")).expect("json");
        let broken = |f: &dyn Fn(&mut serde_json::Value)| {
            let mut v = opened.clone();
            f(&mut v);
            parse_pull_request(Forge::GitHub, v.to_string().as_bytes())
        };
        assert!(broken(&|v| v["pull_request"]["head"]["sha"] = "main".into()).is_err());
        assert!(broken(&|v| v["pull_request"]["head"]["ref"] = "a b".into()).is_err());
        assert!(broken(&|v| v["pull_request"]["head"]["ref"] = "x".repeat(300).into()).is_err());
        assert!(
            broken(&|v| {
                v["number"] = 0.into();
                v["pull_request"]["number"] = 0.into();
            })
            .is_err()
        );
        assert!(
            broken(&|v| {
                v["repository"] = serde_json::Value::Null;
                v["pull_request"]["base"]["repo"] = serde_json::Value::Null;
            })
            .is_err()
        );
        // A deleted fork: its repository is null; it counts as a fork.
        let gone = broken(&|v| v["pull_request"]["head"]["repo"] = serde_json::Value::Null)
            .expect("parses")
            .expect("acted on");
        assert!(gone.fork);
        assert_eq!(gone.head_repository, None);
        assert!(parse_pull_request(Forge::GitLab, b"[]").is_err());
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
