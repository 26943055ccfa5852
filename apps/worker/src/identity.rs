//! The worker's id: `GRADIENT_WORKER_ID`, else `<stateDir>/worker-id`, else a new v4 UUID written there.

use gradient_domain::WorkerId;
use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

pub fn resolve(configured: Option<uuid::Uuid>, state_dir: &Path) -> Result<WorkerId, String> {
    if let Some(id) = configured {
        return Ok(WorkerId(id));
    }
    let file = state_dir.join("worker-id");
    match std::fs::read_to_string(&file) {
        Ok(text) => match uuid::Uuid::parse_str(text.trim()) {
            Ok(id) if id.get_version_num() == 4 => Ok(WorkerId(id)),
            _ => Err(format!("{}: does not hold a v4 UUID", file.display())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Owner-only (0700) when created here: job credentials (netrc files) are written below it.
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(state_dir)
                .map_err(|e| format!("{}: cannot create: {e}", state_dir.display()))?;
            let id = uuid::Uuid::new_v4();
            std::fs::write(&file, format!("{id}\n")).map_err(|e| format!("{}: cannot write: {e}", file.display()))?;
            Ok(WorkerId(id))
        }
        Err(e) => Err(format!("{}: cannot read: {e}", file.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_then_reused_unless_configured() {
        let dir = tempfile::tempdir().unwrap();
        let a = resolve(None, dir.path()).unwrap();
        assert_eq!(resolve(None, dir.path()).unwrap(), a);
        let fixed = uuid::Uuid::new_v4();
        assert_eq!(resolve(Some(fixed), dir.path()).unwrap(), WorkerId(fixed));
        std::fs::write(dir.path().join("worker-id"), "garbage").unwrap();
        assert!(resolve(None, dir.path()).unwrap_err().contains("worker-id"));
    }

    #[test]
    fn a_state_dir_created_here_is_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        resolve(None, &state).unwrap();
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }
}
