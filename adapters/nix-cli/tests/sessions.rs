//! `NixCli::max_sessions`: never more Nix processes at once than the bound, counted by the processes
//! themselves. A `nix-store` on a directory of its own writes `+` to a log when it starts and `-` when it
//! ends, lingering in between, so processes that overlap are seen overlapping.

#![allow(clippy::unwrap_used)]

use futures_util::StreamExt;
use gradient_domain::ports::nix::Nix;
use gradient_nix_cli::NixCli;
use std::path::Path;
use std::time::Duration;

const PATH: &str = "/nix/store/00000000000000000000000000000000-x";

/// A `nix-store` that counts itself: queries linger 300 ms, exports until killed.
fn fake_nix(dir: &Path) -> std::path::PathBuf {
    let log = dir.join("log");
    let script = format!(
        "#!/bin/sh\necho + >> {log}\ncase \"$1\" in --export) exec /usr/bin/sleep 60;; esac\n\
         /usr/bin/sleep 0.3\necho - >> {log}\n",
        log = log.display()
    );
    let bin = dir.join("nix-store");
    std::fs::write(&bin, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    log
}

/// The most processes that ran at once, from the log's `+` and `-` lines in order.
fn most_at_once(log: &Path) -> usize {
    let (mut now, mut most) = (0i32, 0i32);
    for line in std::fs::read_to_string(log).unwrap().lines() {
        now += if line == "+" { 1 } else { -1 };
        most = most.max(now);
    }
    most as usize
}

async fn queries_at_once(nix: NixCli, n: usize) {
    let runs = (0..n).map(|_| {
        let nix = nix.clone();
        async move { nix.requisites(&[PATH.to_owned()]).await.unwrap() }
    });
    futures_util::future::join_all(runs).await;
}

#[tokio::test]
async fn never_more_nix_processes_than_the_bound_over_all_clones() {
    let dir = tempfile::tempdir().unwrap();
    let log = fake_nix(dir.path());
    // Without a bound, six queries run together (the measurement can see overlap).
    queries_at_once(NixCli::new().with_bin_dir(dir.path()), 6).await;
    assert_eq!(most_at_once(&log), 6);
    std::fs::remove_file(&log).unwrap();
    // Bound to 2: two at a time, whichever clone asks.
    queries_at_once(NixCli::new().with_bin_dir(dir.path()).max_sessions(2), 6).await;
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().filter(|l| *l == "+").count(), 6, "every query ran");
    assert_eq!(most_at_once(&log), 2);
}

#[tokio::test]
async fn an_export_stream_holds_its_session_until_dropped() {
    let dir = tempfile::tempdir().unwrap();
    fake_nix(dir.path());
    let nix = NixCli::new().with_bin_dir(dir.path()).max_sessions(1);
    let mut stream = nix.export(&[PATH.to_owned()]).await.unwrap();
    // The export runs (and writes nothing yet): a query waits for the one session.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), stream.next())
            .await
            .is_err()
    );
    let waiting = tokio::time::timeout(Duration::from_secs(1), nix.requisites(&[PATH.to_owned()])).await;
    assert!(waiting.is_err(), "a second Nix process started beside the export");
    drop(stream);
    let ran = tokio::time::timeout(Duration::from_secs(5), nix.requisites(&[PATH.to_owned()])).await;
    assert!(ran.is_ok(), "the dropped export gave its session back");
}
