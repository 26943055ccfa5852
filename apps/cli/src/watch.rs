//! Following an evaluation (`eval --watch`) and a build's log (`log --follow`) over the server's event
//! streams.

use crate::output::Out;
use crate::{Fail, Result, Session};
use gradient_client::events::{self, EvaluationChange, EvaluationEvent, LogEvent};
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};

/// Builds by status, as the bar and the summary show them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Tally {
    builds: BTreeMap<String, String>,
}

pub fn is_finished(status: &str) -> bool {
    !matches!(status, "Queued" | "Building")
}

impl Tally {
    /// Records a build's status; answers whether it just finished.
    pub fn record(&mut self, drv: &str, status: &str) -> bool {
        let before = self.builds.insert(drv.to_owned(), status.to_owned());
        is_finished(status) && before.as_deref().is_none_or(|b| !is_finished(b) || b != status)
    }

    fn count(&self, f: impl Fn(&str) -> bool) -> usize {
        self.builds.values().filter(|s| f(s)).count()
    }

    pub fn total(&self) -> usize {
        self.builds.len()
    }

    pub fn finished(&self) -> usize {
        self.count(is_finished)
    }

    /// `⏵ 1 building  ⏸ 2 queued  ✔ 3 done  ✗ 1 failed`, the legend of nix-output-monitor.
    pub fn summary(&self) -> String {
        let running = self.count(|s| s == "Building");
        let queued = self.count(|s| s == "Queued");
        let done = self.count(|s| matches!(s, "Completed" | "Substituted"));
        let failed = self.count(|s| matches!(s, "Failed" | "DependencyFailed" | "Aborted"));
        format!("⏵ {running} building  ⏸ {queued} queued  ✔ {done} done  ✗ {failed} failed")
    }
}

/// The name of a derivation without its store directory and hash: `/nix/store/abc…-hello-2.12.drv` → `hello-2.12`.
pub fn drv_name(drv: &str) -> &str {
    let base = drv.rsplit('/').next().unwrap_or(drv);
    let base = base.strip_suffix(".drv").unwrap_or(base);
    base.split_once('-').map_or(base, |(_, n)| n)
}

pub async fn evaluation(s: &Session, id: uuid::Uuid, out: Out) -> Result<u8> {
    let bar = (!out.json && std::io::stdout().is_terminal()).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        bar
    });
    let mut tally = Tally::default();
    let mut status = String::from("Queued");
    let mut errors = Vec::new();
    let mut ended = None;
    events::follow_evaluation(&s.client, id, |event| match event {
        EvaluationEvent::Change(EvaluationChange::Evaluation { status: st, errors: e }) => {
            status = st;
            errors = e;
            if let Some(bar) = &bar {
                bar.set_prefix(status.clone());
            }
        }
        EvaluationEvent::Change(EvaluationChange::Build { drv_path, status: st }) => {
            let finished = tally.record(&drv_path, &st);
            match &bar {
                Some(bar) => {
                    bar.set_length(tally.total() as u64);
                    bar.set_position(tally.finished() as u64);
                    bar.set_message(tally.summary());
                    if finished && st != "Completed" && st != "Substituted" {
                        bar.println(format!("✗ {st} {}", drv_name(&drv_path)));
                    }
                }
                None if finished => {
                    if out.json {
                        say!("{}", serde_json::json!({"drv_path": drv_path, "status": st}));
                    } else {
                        say!("{st}\t{drv_path}");
                    }
                    let _ = std::io::stdout().flush();
                }
                None => {}
            }
        }
        EvaluationEvent::End(st) => ended = Some(st),
    })
    .await?;
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let end = ended.unwrap_or(status);
    for e in &errors {
        let at = if e.attribute.is_empty() {
            "evaluation"
        } else {
            &e.attribute
        };
        eprintln!("error in {at}: {}", e.message);
    }
    if out.json {
        say!("{}", serde_json::json!({"evaluation": id, "status": end}));
    } else {
        say!("Evaluation {id} {}: {}", end.to_lowercase(), tally.summary());
    }
    Ok(if end == "Completed" { 0 } else { 1 })
}

pub async fn log(s: &Session, build: uuid::Uuid, follow: bool, out: Out) -> Result<u8> {
    if !follow {
        let body = s.client.get_build_log(&build).await?.into_inner();
        let bytes = collect(body).await?;
        let text = String::from_utf8_lossy(&bytes);
        if out.json {
            say!("{}", serde_json::json!({"build": build, "log": text}));
        } else {
            say_raw!("{text}");
        }
        return Ok(0);
    }
    let mut status = String::new();
    events::follow_log(&s.client, build, |event| match event {
        LogEvent::Text(t) => {
            if out.json {
                say!("{}", serde_json::json!({"text": t}));
            } else {
                say_raw!("{t}");
            }
            let _ = std::io::stdout().flush();
        }
        LogEvent::End(st) => status = st,
    })
    .await?;
    if out.json {
        say!("{}", serde_json::json!({"build": build, "status": status}));
    } else {
        eprintln!("Build {build} {}.", status.to_lowercase());
    }
    Ok(if matches!(status.as_str(), "Completed" | "Substituted") {
        0
    } else {
        1
    })
}

async fn collect(body: gradient_client::ByteStream) -> Result<Vec<u8>> {
    use futures_util::TryStreamExt;
    body.into_inner()
        .try_fold(Vec::new(), |mut acc, chunk| async move {
            acc.extend_from_slice(&chunk);
            Ok(acc)
        })
        .await
        .map_err(|e| Fail::failed(format!("The log stopped arriving: {e}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_build_is_counted_once_when_it_finishes() {
        let mut t = Tally::default();
        assert!(!t.record("/nix/store/a-x.drv", "Queued"));
        assert!(!t.record("/nix/store/a-x.drv", "Building"));
        assert!(t.record("/nix/store/a-x.drv", "Failed"));
        assert!(
            !t.record("/nix/store/a-x.drv", "Failed"),
            "a repeated event is no new finish"
        );
        assert!(t.record("/nix/store/b-y.drv", "Completed"));
        assert!(!t.record("/nix/store/c-z.drv", "Queued"));
        assert_eq!((t.total(), t.finished()), (3, 2));
        assert_eq!(t.summary(), "⏵ 0 building  ⏸ 1 queued  ✔ 1 done  ✗ 1 failed");
    }

    #[test]
    fn derivations_are_named_without_store_and_hash() {
        assert_eq!(drv_name("/nix/store/0123abcd-hello-2.12.drv"), "hello-2.12");
    }
}
