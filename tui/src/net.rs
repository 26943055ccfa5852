//! The network side: polls the overview every [`POLL`], follows the open evaluation and log over the
//! server's event streams, and sends [`Update`]s to the UI. Runs on its own thread; the UI never waits for it.

use crate::state::{Action, BuildRow, EvaluationDetail, EvaluationRow, QueueRow, Update, WorkerRow, is_finished};
use gradient_client::events::{self, LogEvent};
use gradient_client::{Client, Failure};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// The overview is read again at every change an organization's event stream reports, and at least this often.
pub const POLL: Duration = Duration::from_secs(10);
/// The evaluations of each project the overview reads.
const PER_PROJECT: usize = 10;

/// Runs until the UI goes away (its receiver is dropped).
pub async fn run(client: Client, tx: UnboundedSender<Update>, mut actions: UnboundedReceiver<Action>) {
    let mut follower: Option<tokio::task::JoinHandle<()>> = None;
    let mut log: Option<tokio::task::JoinHandle<()>> = None;
    let mut known_user = false;
    let mut tick = tokio::time::interval(POLL);
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut followed = std::collections::HashSet::new();
    loop {
        tokio::select! {
            _ = refresh_due(&mut tick, &mut changed) => {
                if let Ok(orgs) = client.list_orgs().await {
                    for org in orgs.into_inner().message {
                        if followed.insert(org.name.clone()) {
                            tokio::spawn(follow_org(client.clone(), org.name, changed_tx.clone()));
                        }
                    }
                }
                if !known_user && let Ok(u) = client.get_user().await {
                    known_user = true;
                    let _ = tx.send(Update::Identity { user: u.into_inner().message.username });
                }
                match overview(&client).await {
                    Ok(updates) => {
                        let _ = tx.send(Update::Connected(true));
                        for u in updates {
                            if tx.send(u).is_err() {
                                return;
                            }
                        }
                    }
                    Err(Failure::Unreachable(_)) => {
                        if tx.send(Update::Connected(false)).is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        if tx.send(Update::Error(e.to_string())).is_err() {
                            return;
                        }
                    }
                }
            }
            action = actions.recv() => match action {
                None | Some(Action::Quit) => return,
                Some(Action::None) => {}
                Some(Action::OpenEvaluation(id)) => {
                    if let Some(f) = follower.take() {
                        f.abort();
                    }
                    follower = Some(tokio::spawn(follow_evaluation(client.clone(), id, tx.clone())));
                }
                Some(Action::OpenLog { build, .. }) => {
                    if let Some(f) = log.take() {
                        f.abort();
                    }
                    log = Some(tokio::spawn(follow_log(client.clone(), build, tx.clone())));
                }
            },
        }
    }
}

/// Waits for the next poll, or for a change reported by an organization's stream (several at once count once).
async fn refresh_due(tick: &mut tokio::time::Interval, changed: &mut UnboundedReceiver<()>) {
    tokio::select! {
        _ = tick.tick() => {}
        Some(()) = changed.recv() => {
            // Let a burst of changes settle, then read once.
            tokio::time::sleep(Duration::from_millis(200)).await;
            while changed.try_recv().is_ok() {}
        }
    }
}

/// Follows one organization's event stream for as long as the monitor runs, signalling every change.
async fn follow_org(client: Client, org: String, changed: UnboundedSender<()>) {
    loop {
        let _ = events::follow_org(&client, &org, |_| {
            let _ = changed.send(());
        })
        .await;
        if changed.is_closed() {
            return;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Workers, evaluations and the queue of every organization the caller sees.
async fn overview(client: &Client) -> Result<Vec<Update>, Failure> {
    let orgs = client.list_orgs().await?.into_inner().message;
    let mut workers = Vec::new();
    let mut queue = Vec::new();
    let mut evaluations = Vec::new();
    for org in &orgs {
        let fleet = client.get_org_overview(&org.name).await?.into_inner().message;
        workers.extend(fleet.workers.into_iter().map(|w| {
            WorkerRow {
                org: org.name.clone(),
                peer_id: w.peer_id.to_string(),
                worker_id: w.worker_id.to_string(),
                connected: w.connected,
                registered_at: w.registered_at,
                systems: w.systems,
                features: w.features,
                build_slots: w.build_slots,
                jobs: w
                    .jobs
                    .iter()
                    .map(|j| match j.kind.as_str() {
                        "build" => crate::ui::drv_name(&j.subject).to_owned(),
                        other => other.to_owned(),
                    })
                    .collect(),
            }
        }));
        queue.extend(fleet.queue.systems.into_iter().map(|s| QueueRow {
            org: org.name.clone(),
            system: s.system,
            queued: s.queued as usize,
            building: s.running as usize,
            oldest_waiting: s.oldest_queued_at,
        }));
        let projects = client.list_projects(&org.name).await?.into_inner().message;
        for p in projects {
            let list = client
                .list_project_evaluations(&org.name, &p.name)
                .await?
                .into_inner()
                .message;
            for e in list.into_iter().take(PER_PROJECT) {
                let builds = builds_of(client, e.id).await?;
                let done = builds.iter().filter(|b| is_finished(&b.status)).count();
                evaluations.push(EvaluationRow {
                    id: e.id,
                    org: org.name.clone(),
                    project: p.name.clone(),
                    commit: e.commit,
                    status: e.status,
                    created_at: e.created_at,
                    done,
                    total: builds.len(),
                });
            }
        }
    }
    evaluations.sort_by_key(|e| std::cmp::Reverse(e.created_at));
    Ok(vec![
        Update::Workers(workers),
        Update::Queue(queue),
        Update::Evaluations(evaluations),
    ])
}

async fn builds_of(client: &Client, evaluation: uuid::Uuid) -> Result<Vec<BuildRow>, Failure> {
    let list = client.list_evaluation_builds(&evaluation).await?.into_inner().message;
    Ok(list
        .into_iter()
        .map(|b| BuildRow {
            id: b.id,
            drv_path: b.drv_path,
            status: b.status,
            broken_by: None,
            created_at: b.created_at,
            started_at: b.started_at,
            finished_at: b.finished_at,
        })
        .collect())
}

async fn evaluation_detail(client: &Client, id: uuid::Uuid) -> Result<EvaluationDetail, Failure> {
    let detail = client.get_evaluation(&id).await?.into_inner().message;
    let e = detail.evaluation;
    let mut builds = builds_of(client, id).await?;
    broken_by(client, &mut builds).await;
    let done = builds.iter().filter(|b| is_finished(&b.status)).count();
    Ok(EvaluationDetail {
        row: EvaluationRow {
            id,
            org: String::new(),
            project: String::new(),
            commit: e.commit,
            status: e.status,
            created_at: e.created_at,
            done,
            total: builds.len(),
        },
        errors: e
            .errors
            .into_iter()
            .map(|x| {
                if x.attribute.is_empty() {
                    x.message
                } else {
                    format!("{}: {}", x.attribute, x.message)
                }
            })
            .collect(),
        builds,
    })
}

/// Finds, for each build whose dependency failed, the failed input among the evaluation's builds that broke
/// it (directly, or through inputs that themselves failed for a dependency).
async fn broken_by(client: &Client, builds: &mut [BuildRow]) {
    let failed: std::collections::HashSet<String> = builds
        .iter()
        .filter(|b| matches!(b.status.as_str(), "Failed" | "Aborted"))
        .map(|b| b.drv_path.clone())
        .collect();
    let mut inputs: std::collections::HashMap<String, Vec<String>> = std::collections::HashMap::new();
    for b in builds.iter().filter(|b| b.status == "DependencyFailed") {
        if let Ok(detail) = client.get_build(&b.id).await
            && let Some(d) = detail.into_inner().message.derivation
        {
            inputs.insert(b.drv_path.clone(), d.inputs);
        }
    }
    for b in builds.iter_mut().filter(|b| b.status == "DependencyFailed") {
        b.broken_by = culprit(&b.drv_path, &inputs, &failed, 0);
    }
}

/// The failed build under `drv`, following inputs that failed for a dependency (at most a few levels).
fn culprit(
    drv: &str,
    inputs: &std::collections::HashMap<String, Vec<String>>,
    failed: &std::collections::HashSet<String>,
    depth: usize,
) -> Option<String> {
    let direct = inputs.get(drv)?;
    if let Some(f) = direct.iter().find(|i| failed.contains(*i)) {
        return Some(f.clone());
    }
    if depth >= 8 {
        return None;
    }
    direct.iter().find_map(|i| culprit(i, inputs, failed, depth + 1))
}

/// Reads the evaluation again at every change its event stream reports.
async fn follow_evaluation(client: Client, id: uuid::Uuid, tx: UnboundedSender<Update>) {
    let refresh = |client: Client, tx: UnboundedSender<Update>| async move {
        if let Ok(d) = evaluation_detail(&client, id).await {
            let _ = tx.send(Update::Evaluation(d));
        }
    };
    refresh(client.clone(), tx.clone()).await;
    let (changed_tx, mut changed) = tokio::sync::mpsc::unbounded_channel::<()>();
    let streamed = client.clone();
    let stream = async move {
        // The sender goes with the stream: the refresher below ends when the stream does.
        let _ = events::follow_evaluation(&streamed, id, move |_| {
            let _ = changed_tx.send(());
        })
        .await;
    };
    let refresher = async {
        while changed.recv().await.is_some() {
            while changed.try_recv().is_ok() {}
            refresh(client.clone(), tx.clone()).await;
        }
    };
    tokio::join!(stream, refresher);
}

async fn follow_log(client: Client, build: uuid::Uuid, tx: UnboundedSender<Update>) {
    let result = events::follow_log(&client, build, |e| {
        let _ = tx.send(match e {
            LogEvent::Text(text) => Update::LogText { build, text },
            LogEvent::End(status) => Update::LogEnd { build, status },
        });
    })
    .await;
    if let Err(e) = result {
        let _ = tx.send(Update::Error(format!("the log: {e}")));
    }
}
