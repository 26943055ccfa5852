//! Fetching: the repository at the commit through `nix flake metadata` (which locks the flake, applying input
//! overrides), then, if the lock names inputs, `nix flake archive` so every input is in the store before
//! evaluation starts.
//! Overridden inputs are pinned to the locked references Nix chose, so later calls see the same inputs.

use crate::{NixCli, process};
use gradient_domain::deploy_key::RepositoryCredential;
use gradient_domain::model::InputOverride;
use gradient_domain::ports::nix::{FetchedFlake, NixError, Result};
use gradient_process::git_access::GitAccess;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

pub async fn fetch(
    cli: &NixCli,
    repository: &str,
    git_ref: Option<&str>,
    commit: &str,
    overrides: &BTreeMap<String, InputOverride>,
    credential: Option<&RepositoryCredential>,
) -> Result<FetchedFlake> {
    let url = flake_url(repository, git_ref, commit)?;
    // The credential reaches the git Nix runs through the environment, for these two commands only; its files
    // go when `access` is dropped, on every path out of this function.
    let access = match credential {
        Some(RepositoryCredential::SshKey { private_key }) if gradient_domain::deploy_key::uses_ssh(repository) => {
            GitAccess::ssh_key(private_key, "")
                .map_err(|e| NixError::Unavailable(format!("cannot write the repository's SSH key: {e}")))?
        }
        Some(RepositoryCredential::HttpsToken { token }) => {
            GitAccess::https_token_for(repository, token).unwrap_or_else(GitAccess::none)
        }
        _ => GitAccess::none(),
    };
    let mut override_args = vec!["--no-write-lock-file".to_owned()];
    for (input, o) in overrides {
        match o {
            InputOverride::Url(to) => override_args.extend(["--override-input".into(), input.clone(), to.clone()]),
            InputOverride::KeepUrl => override_args.extend(["--update-input".into(), input.clone()]),
        }
    }

    let mut cmd = cli.nix();
    cmd.args(["flake", "metadata", "--json", &url]).args(&override_args);
    cmd.envs(access.env().iter().map(|(k, v)| (k, v)));
    // Locking reads `flake.nix`: an error located in one is the flake's fault, anything else is fetching's.
    let classify = |message: String| {
        if message.contains("/flake.nix:") {
            NixError::Eval(message)
        } else {
            NixError::Fetch(message)
        }
    };
    let out = process::output(cmd).await?.success_or(classify)?;
    let meta: Value = serde_json::from_slice(&out)
        .map_err(|e| NixError::Unavailable(format!("nix flake metadata answered something else than JSON: {e}")))?;

    // Fetches every input (with `--dry-run`, Nix would only compute where they would go). A flake whose lock
    // names no input is whole in the store already (`path`): no second Nix process for it.
    let has_inputs = meta["locks"]["nodes"].as_object().is_none_or(|nodes| nodes.len() > 1);
    if has_inputs {
        let mut cmd = cli.nix();
        cmd.args(["flake", "archive", "--json", &url]).args(&override_args);
        cmd.envs(access.env().iter().map(|(k, v)| (k, v)));
        process::output(cmd).await?.success_or(classify)?;
    }

    let text = |v: &Value| v.as_str().map(str::to_owned);
    let flake_ref = text(&meta["lockedUrl"])
        .or_else(|| text(&meta["url"]))
        .ok_or_else(|| NixError::Unavailable("nix flake metadata gave no locked URL".into()))?;
    let store_path =
        text(&meta["path"]).ok_or_else(|| NixError::Unavailable("nix flake metadata gave no store path".into()))?;
    let mut input_pins = BTreeMap::new();
    let mut input_updates = Vec::new();
    for (input, o) in overrides {
        let segments: Vec<&str> = input.split('/').collect();
        match lock_node(&meta["locks"], &segments, 0)
            .and_then(|node| node["locked"].as_object())
            .and_then(locked_url)
        {
            Some(pinned) => {
                input_pins.insert(input.clone(), pinned);
            }
            None => match o {
                InputOverride::Url(to) => {
                    input_pins.insert(input.clone(), to.clone());
                }
                InputOverride::KeepUrl => input_updates.push(input.clone()),
            },
        }
    }
    Ok(FetchedFlake {
        flake_ref,
        store_path,
        rev: text(&meta["revision"]).or_else(|| text(&meta["locked"]["rev"])),
        nar_hash: text(&meta["locked"]["narHash"]),
        last_modified: meta["lastModified"]
            .as_i64()
            .or_else(|| meta["locked"]["lastModified"].as_i64()),
        input_pins,
        input_updates,
    })
}

/// The arguments that make a later call see the inputs [`fetch`] resolved.
pub fn input_args(flake: &FetchedFlake) -> Vec<String> {
    let mut args = vec!["--no-write-lock-file".to_owned()];
    for (input, url) in &flake.input_pins {
        args.extend(["--override-input".into(), input.clone(), url.clone()]);
    }
    for input in &flake.input_updates {
        args.extend(["--update-input".into(), input.clone()]);
    }
    args
}

/// The flake reference of a git repository at a commit: `git+https://host/repo?ref=main&rev=<sha>`.
pub fn flake_url(repository: &str, git_ref: Option<&str>, commit: &str) -> Result<String> {
    let invalid = |why: String| Err(NixError::InvalidRequest(why));
    if !(matches!(commit.len(), 40 | 64) && commit.bytes().all(|b| b.is_ascii_hexdigit())) {
        return invalid(format!("'{commit}' is not a full commit hash"));
    }
    if let Some(r) = git_ref
        && (r.is_empty()
            || r.chars()
                .any(|c| c.is_whitespace() || c.is_control() || "?&#%\\".contains(c)))
    {
        return invalid(format!("'{r}' is not a git ref"));
    }
    let repo = repository.trim();
    if repo.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return invalid(format!("'{repo}' is not a repository URL"));
    }
    let base = if repo.starts_with("git+") || repo.starts_with("git://") {
        repo.to_owned()
    } else if ["https://", "http://", "ssh://", "file://"]
        .iter()
        .any(|s| repo.starts_with(s))
    {
        format!("git+{repo}")
    } else if repo.starts_with('/') {
        format!("git+file://{repo}")
    } else if let Some((host, path)) = repo.split_once(':')
        && host.contains('@')
        && !host.contains('/')
        && !path.is_empty()
        && !path.starts_with("//")
    {
        // scp-like `git@host:owner/repo.git`: the path is taken from the root, as forges serve it.
        format!("git+ssh://{host}/{}", path.trim_start_matches('/'))
    } else {
        return invalid(format!("'{repo}' is not a repository URL"));
    };
    let (base, query) = base.split_once('?').unwrap_or((&base, ""));
    let mut params: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("ref=") && !p.starts_with("rev="))
        .map(str::to_owned)
        .collect();
    match git_ref {
        Some(r) => params.push(format!("ref={}", percent_encode(r))),
        // Without a ref Nix 2.8 fetches `master` from a remote, which may not hold the commit: fetch every
        // ref instead. A local repository is read directly.
        None if !base.starts_with("git+file://") && !params.iter().any(|p| p.starts_with("allRefs=")) => {
            params.push("allRefs=1".to_owned())
        }
        None => {}
    }
    params.push(format!("rev={commit}"));
    Ok(format!("{base}?{}", params.join("&")))
}

/// The lock file node an input path (`["dep", "nixpkgs"]`) resolves to, following `follows` links.
fn lock_node<'a>(locks: &'a Value, path: &[&str], depth: usize) -> Option<&'a Value> {
    if depth > 32 {
        return None;
    }
    let nodes = &locks["nodes"];
    let mut node = &nodes[locks["root"].as_str()?];
    for segment in path {
        node = match &node["inputs"][*segment] {
            Value::String(name) => &nodes[name.as_str()],
            Value::Array(follows) => {
                let follows: Vec<&str> = follows.iter().filter_map(Value::as_str).collect();
                lock_node(locks, &follows, depth + 1)?
            }
            _ => return None,
        };
    }
    node.is_object().then_some(node)
}

/// A flake reference that names exactly a lock file's `locked` entry, for the input types whose URL form Nix
/// 2.8 and later all parse.
fn locked_url(locked: &Map<String, Value>) -> Option<String> {
    let text = |key: &str| locked.get(key).and_then(Value::as_str);
    let query = |keys: &[&str]| -> String {
        let params: Vec<String> = keys
            .iter()
            .filter_map(|k| {
                let v = match locked.get(*k)? {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    Value::Bool(b) => if *b { "1" } else { "0" }.to_owned(),
                    _ => return None,
                };
                Some(format!("{k}={}", percent_encode(&v)))
            })
            .collect();
        if params.is_empty() {
            String::new()
        } else {
            format!("?{}", params.join("&"))
        }
    };
    let join = |url: &str, q: String| match (url.contains('?'), q.strip_prefix('?')) {
        (true, Some(rest)) => format!("{url}&{rest}"),
        _ => format!("{url}{q}"),
    };
    match text("type")? {
        "git" => {
            let url = text("url")?;
            let url = if url.starts_with("git://") {
                url.to_owned()
            } else {
                format!("git+{url}")
            };
            text("rev")?;
            Some(join(
                &url,
                query(&["ref", "rev", "narHash", "submodules", "shallow", "dir"]),
            ))
        }
        "hg" => Some(join(
            &format!("hg+{}", text("url")?),
            query(&["ref", "rev", "narHash", "dir"]),
        )),
        kind @ ("github" | "gitlab" | "sourcehut") => {
            let (owner, repo, rev) = (text("owner")?, text("repo")?, text("rev")?);
            Some(format!(
                "{kind}:{owner}/{repo}/{rev}{}",
                query(&["host", "narHash", "dir"])
            ))
        }
        "path" => Some(format!(
            "path:{}{}",
            text("path")?,
            query(&["narHash", "rev", "revCount", "lastModified", "dir"])
        )),
        "tarball" => {
            let url = text("url")?;
            let archive = [".zip", ".tar", ".tgz", ".tar.gz", ".tar.xz", ".tar.bz2", ".tar.zst"];
            let path = url.split('?').next().unwrap_or(url);
            archive
                .iter()
                .any(|ext| path.ends_with(ext))
                .then(|| join(url, query(&["narHash", "dir"])))
        }
        _ => None,
    }
}

/// Percent-encodes everything but unreserved characters, for a URL query value.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SHA: &str = "5608f2631f7f73b3ee4c1c0a0cf4e058200d2fca";

    #[test]
    fn repository_urls_become_git_flake_refs() {
        let table = [
            (
                "https://github.com/a/b",
                Some("main"),
                "git+https://github.com/a/b?ref=main&rev=SHA",
            ),
            ("git+file:///srv/r?dir=sub", None, "git+file:///srv/r?dir=sub&rev=SHA"),
            (
                "file:///srv/r",
                Some("feature/x"),
                "git+file:///srv/r?ref=feature%2Fx&rev=SHA",
            ),
            (
                "git@github.com:a/b.git",
                None,
                "git+ssh://git@github.com/a/b.git?allRefs=1&rev=SHA",
            ),
            (
                "ssh://git@host/a.git",
                None,
                "git+ssh://git@host/a.git?allRefs=1&rev=SHA",
            ),
            ("git://host/a.git", None, "git://host/a.git?allRefs=1&rev=SHA"),
            ("http://h/o/r.git", None, "git+http://h/o/r.git?allRefs=1&rev=SHA"),
            ("/srv/repo", None, "git+file:///srv/repo?rev=SHA"),
            (
                "git+https://h/r?ref=old&rev=old",
                Some("new"),
                "git+https://h/r?ref=new&rev=SHA",
            ),
        ];
        for (repo, r, want) in table {
            assert_eq!(flake_url(repo, r, SHA).unwrap(), want.replace("SHA", SHA), "{repo}");
        }
        for (repo, r, commit) in [
            ("https://h/r", None, "main"),
            ("https://h/r", None, &SHA[..12]),
            ("https://h/r", Some("a b"), SHA),
            ("https://h/r", Some("x&rev=y"), SHA),
            ("ftp://h/r", None, SHA),
            ("h/r", None, SHA),
        ] {
            assert!(
                matches!(flake_url(repo, r, commit), Err(NixError::InvalidRequest(_))),
                "{repo} {r:?}"
            );
        }
    }

    #[test]
    fn locked_entries_become_urls() {
        let table = [
            (
                json!({"type": "git", "url": "file:///tmp/dep", "ref": "main", "rev": SHA, "narHash": "sha256-a+b/c=",
                       "lastModified": 1, "revCount": 2}),
                Some(format!(
                    "git+file:///tmp/dep?ref=main&rev={SHA}&narHash=sha256-a%2Bb%2Fc%3D"
                )),
            ),
            (
                json!({"type": "github", "owner": "NixOS", "repo": "nixpkgs", "rev": SHA, "narHash": "sha256-x",
                       "lastModified": 1}),
                Some(format!("github:NixOS/nixpkgs/{SHA}?narHash=sha256-x")),
            ),
            (
                json!({"type": "path", "path": "/srv/x", "narHash": "sha256-x", "lastModified": 5}),
                Some("path:/srv/x?narHash=sha256-x&lastModified=5".to_owned()),
            ),
            (
                json!({"type": "tarball", "url": "https://h/x.tar.gz", "narHash": "sha256-x"}),
                Some("https://h/x.tar.gz?narHash=sha256-x".to_owned()),
            ),
            (json!({"type": "tarball", "url": "https://h/download"}), None),
            (json!({"type": "git", "url": "https://h/r"}), None),
            (json!({"type": "indirect", "id": "nixpkgs"}), None),
        ];
        for (locked, want) in table {
            assert_eq!(locked_url(locked.as_object().unwrap()), want, "{locked}");
        }
    }

    #[test]
    fn input_paths_follow_the_lock_graph() {
        let locks = json!({
            "root": "root",
            "nodes": {
                "root": {"inputs": {"dep": "dep_2", "nixpkgs": "nixpkgs"}},
                "dep_2": {"inputs": {"nixpkgs": ["nixpkgs"], "util": "util"}},
                "nixpkgs": {"locked": {"type": "github"}},
                "util": {"locked": {"type": "path"}},
            }
        });
        assert_eq!(
            lock_node(&locks, &["dep", "nixpkgs"], 0).unwrap()["locked"]["type"],
            "github"
        );
        assert_eq!(
            lock_node(&locks, &["dep", "util"], 0).unwrap()["locked"]["type"],
            "path"
        );
        assert!(lock_node(&locks, &["nope"], 0).is_none());
    }
}
