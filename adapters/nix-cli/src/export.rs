//! What a push sends: a closure in dependency order (`nix-store --query --requisites`) and paths as one
//! `nix-store --export` stream, read as it is written.

use crate::build::check_store_path;
use crate::{NixCli, process};
use bytes::Bytes;
use gradient_domain::ports::nix::{ExportStream, MAX_EXPORT, NixError, Result};
use std::collections::HashSet;
use std::process::Stdio;
use tokio::io::AsyncReadExt;

/// Paths per command line, well under any argument-length limit.
const ARGS_CHUNK: usize = MAX_EXPORT;
/// Bytes read from `nix-store --export` at a time.
const READ_SIZE: usize = 256 * 1024;
/// Nix's error output kept for the message when it fails.
const STDERR_KEPT: usize = 16 * 1024;

pub async fn requisites(cli: &NixCli, paths: &[String]) -> Result<Vec<String>> {
    for path in paths {
        check_store_path(path)?;
    }
    let mut seen = HashSet::new();
    let mut closure = Vec::new();
    for chunk in paths.chunks(ARGS_CHUNK) {
        let mut cmd = cli.command("nix-store");
        cmd.args(["--query", "--requisites"]).args(chunk);
        let out = process::output(cmd).await?.success_or(NixError::Push)?;
        // Nix lists each path after those it refers to; a later chunk's paths already listed stay first.
        for line in String::from_utf8_lossy(&out).lines() {
            if seen.insert(line.to_owned()) {
                closure.push(line.to_owned());
            }
        }
    }
    Ok(closure)
}

pub async fn export(cli: &NixCli, paths: &[String]) -> Result<ExportStream> {
    for path in paths {
        check_store_path(path)?;
    }
    if paths.len() > ARGS_CHUNK {
        return Err(NixError::InvalidRequest(format!(
            "export at most {ARGS_CHUNK} paths at once"
        )));
    }
    let mut cmd = cli.command("nix-store");
    cmd.arg("--export")
        .args(paths)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    // Held by the stream until it is read to its end or dropped (`NixCli::max_sessions`).
    let session = cmd.session().await;
    let mut child = crate::spawn(&mut cmd)
        .await
        .map_err(|e| NixError::Unavailable(format!("cannot run nix-store: {e}")))?;
    let (Some(stdout), Some(mut stderr)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(NixError::Unavailable("nix-store: no pipes".into()));
    };
    // Read alongside, so Nix never blocks on a full stderr pipe.
    let errors = tokio::spawn(async move {
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf).await {
            if n == 0 {
                break;
            }
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > STDERR_KEPT {
                kept.drain(..kept.len() - STDERR_KEPT);
            }
        }
        String::from_utf8_lossy(&kept).trim().to_owned()
    });
    struct Reading {
        child: tokio::process::Child,
        stdout: tokio::process::ChildStdout,
        errors: tokio::task::JoinHandle<String>,
        _session: Option<tokio::sync::OwnedSemaphorePermit>,
    }
    let state = Some(Reading {
        child,
        stdout,
        errors,
        _session: session,
    });
    let stream = futures_util::stream::unfold(state, |state| async move {
        let mut reading = state?;
        let mut buf = vec![0u8; READ_SIZE];
        match reading.stdout.read(&mut buf).await {
            Ok(0) => {}
            Ok(n) => {
                buf.truncate(n);
                return Some((Ok(Bytes::from(buf)), Some(reading)));
            }
            Err(e) => return Some((Err(NixError::Push(format!("reading nix-store --export: {e}"))), None)),
        }
        let status = reading.child.wait().await;
        let message = reading.errors.await.unwrap_or_default();
        match status {
            Ok(s) if s.success() => None,
            Ok(s) => Some((
                Err(NixError::Push(format!("nix-store --export failed ({s}): {message}"))),
                None,
            )),
            Err(e) => Some((Err(NixError::Push(format!("nix-store --export: {e}"))), None)),
        }
    });
    Ok(Box::pin(stream))
}
