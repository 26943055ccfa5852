//! The peers file: one `peer_id:token` per line (`*` answers for any peer), blank lines and `#` comments
//! ignored. A malformed line stops start-up naming the file and the line.

use gradient_domain::PeerId;
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Peers {
    pub tokens: BTreeMap<PeerId, String>,
    /// The `*` entry's token, answering for any peer.
    pub any: Option<String>,
}

pub fn parse(text: &str, file: &Path) -> Result<Peers, String> {
    let mut peers = Peers::default();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{}:{}", file.display(), n + 1);
        let (peer, token) = line
            .split_once(':')
            .ok_or_else(|| format!("{}: expected peer_id:token", at()))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("{}: the token is empty", at()));
        }
        match peer.trim() {
            "*" => peers.any = Some(token.to_owned()),
            id => {
                let id = uuid::Uuid::parse_str(id)
                    .map_err(|_| format!("{}: '{id}' is not a peer id (a UUID) or *", at()))?;
                peers.tokens.insert(PeerId(id), token.to_owned());
            }
        }
    }
    Ok(peers)
}

pub fn load(file: &Path) -> Result<Peers, String> {
    let text = std::fs::read_to_string(file).map_err(|e| format!("{}: cannot read: {e}", file.display()))?;
    if let Some(mode) = readable_by_others(file) {
        tracing::warn!(
            "{} holds worker tokens but its mode is {mode:o} (readable by others); chmod 600 it",
            file.display()
        );
    }
    parse(&text, file)
}

/// The file's permission bits when its group or others may read it (tokens are credentials).
fn readable_by_others(file: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(file).ok()?.permissions().mode() & 0o777;
    (mode & 0o044 != 0).then_some(mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peers_file_readable_by_others_is_noticed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("peers");
        std::fs::write(&f, "*:tok\n").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(readable_by_others(&f), Some(0o644));
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(readable_by_others(&f), None);
    }

    #[test]
    fn parses_entries_comments_and_the_wildcard() {
        let text = "# registrations\n\n550e8400-e29b-41d4-a716-446655440001:tok1\n*:tok-any\n";
        let p = parse(text, Path::new("peers")).unwrap();
        assert_eq!(p.tokens.len(), 1);
        assert_eq!(p.any.as_deref(), Some("tok-any"));
    }

    #[test]
    fn malformed_lines_name_file_and_line() {
        let table = [
            ("ok\n", "peers:1: expected peer_id:token"),
            ("# c\nnot-a-uuid:tok\n", "peers:2: 'not-a-uuid' is not a peer id"),
            ("*:\n", "peers:1: the token is empty"),
        ];
        for (text, want) in table {
            let e = parse(text, Path::new("peers")).unwrap_err();
            assert!(e.starts_with(want), "{e}");
        }
    }
}
