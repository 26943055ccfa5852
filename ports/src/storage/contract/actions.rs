//! Projects' actions, their deliveries (bounded per action, the webhook outbox) and schedule anchors.

use super::support::{now, org, project, seconds, user};
use gradient_domain::crypt::Sealed;
use gradient_domain::model::{Action, ActionEvent, ActionKind, Delivery, DeliveryState};
use gradient_domain::ports::{Storage, StorageError};
use gradient_domain::{ActionId, DeliveryId, Email, ProjectId};

fn webhook(org: gradient_domain::OrgId, project: ProjectId, name: &str) -> Action {
    Action {
        id: ActionId::new(),
        org_id: org,
        project_id: project,
        name: name.to_owned(),
        kind: ActionKind::Webhook {
            url: "https://hooks.example.com/ci".to_owned(),
            secret: Sealed("v1:c2VjcmV0".to_owned()),
        },
        events: vec![ActionEvent::Failed, ActionEvent::Fixed],
        enabled: true,
        created_at: now(),
    }
}

fn delivery(action: ActionId, age_secs: i64) -> Delivery {
    let at = now() - seconds(age_secs);
    Delivery {
        id: DeliveryId::new(),
        action_id: action,
        evaluation_id: None,
        event: Some(ActionEvent::Failed),
        body: "{\"event\":\"failed\"}".to_owned(),
        state: DeliveryState::Pending,
        attempts: 0,
        status_code: None,
        last_error: None,
        next_attempt_at: at,
        created_at: at,
        updated_at: at,
    }
}

/// Actions read back as written, are listed by name, have unique names in their project, change and go away with
/// their deliveries and with their project.
pub async fn actions_round_trip_and_go_with_their_project<S: Storage>(s: &S) {
    let ada = user(s, "ada").await;
    let acme = org(s, "acme", ada.id, false).await;
    let p = project(s, acme.id, "app", ada.id).await;
    let hook = webhook(acme.id, p.id, "hook");
    let mail = Action {
        id: ActionId::new(),
        name: "a-mail".to_owned(),
        kind: ActionKind::Mail {
            recipients: vec![Email::parse("ops@example.com").expect("email")],
        },
        events: vec![ActionEvent::Completed],
        enabled: false,
        ..webhook(acme.id, p.id, "")
    };
    s.create_action(&hook).await.expect("create_action");
    s.create_action(&mail).await.expect("create_action");
    assert_eq!(
        s.create_action(&webhook(acme.id, p.id, "hook")).await,
        Err(StorageError::Conflict("action name".into())),
        "names are unique in a project"
    );
    assert_eq!(
        s.create_action(&webhook(acme.id, ProjectId::new(), "x")).await,
        Err(StorageError::NotFound),
        "an unknown project has no actions"
    );
    assert_eq!(
        s.actions_of(p.id).await.expect("actions_of"),
        vec![mail.clone(), hook.clone()]
    );
    let changed = Action {
        name: "renamed".to_owned(),
        events: vec![ActionEvent::Failed],
        enabled: false,
        ..hook.clone()
    };
    s.update_action(&changed).await.expect("update_action");
    assert_eq!(s.action(hook.id).await.expect("action"), Some(changed.clone()));
    s.add_delivery(&delivery(hook.id, 5), 10).await.expect("add_delivery");
    assert!(s.delete_action(mail.id).await.expect("delete_action"));
    assert!(!s.delete_action(mail.id).await.expect("delete_action again"));
    assert!(s.delete_project(p.id).await.expect("delete_project"));
    assert_eq!(s.action(hook.id).await.expect("action"), None, "gone with the project");
    assert_eq!(s.deliveries_of(hook.id, 10).await.expect("deliveries_of"), vec![]);
}

/// Deliveries: newest first, only the newest `keep` per action; due ones oldest first; updates read back.
pub async fn deliveries_are_bounded_and_due_in_order<S: Storage>(s: &S) {
    let ada = user(s, "ada").await;
    let acme = org(s, "acme", ada.id, false).await;
    let p = project(s, acme.id, "app", ada.id).await;
    let hook = webhook(acme.id, p.id, "hook");
    s.create_action(&hook).await.expect("create_action");
    let all: Vec<Delivery> = (0..4).map(|i| delivery(hook.id, 100 - i)).collect();
    for d in &all {
        s.add_delivery(d, 3).await.expect("add_delivery");
    }
    let kept = s.deliveries_of(hook.id, 10).await.expect("deliveries_of");
    assert_eq!(
        kept.iter().map(|d| d.id).collect::<Vec<_>>(),
        vec![all[3].id, all[2].id, all[1].id],
        "the newest three, newest first"
    );
    let mut done = all[1].clone();
    done.state = DeliveryState::Delivered;
    done.attempts = 2;
    done.status_code = Some(200);
    done.last_error = Some("the target answered HTTP 500".into());
    done.updated_at = now();
    s.update_delivery(&done).await.expect("update_delivery");
    let mut later = all[2].clone();
    later.next_attempt_at = now() + seconds(60);
    later.attempts = 1;
    s.update_delivery(&later).await.expect("update_delivery");
    let due = s.due_deliveries(now(), 10).await.expect("due_deliveries");
    let ours: Vec<DeliveryId> = due.iter().filter(|d| d.action_id == hook.id).map(|d| d.id).collect();
    assert_eq!(ours, vec![all[3].id], "pending and due only");
    assert_eq!(
        s.deliveries_of(hook.id, 10).await.expect("deliveries_of")[2],
        done,
        "an update reads back"
    );
    assert_eq!(
        s.update_delivery(&delivery(hook.id, 1)).await,
        Err(StorageError::NotFound)
    );
    assert_eq!(
        s.add_delivery(&delivery(ActionId::new(), 1), 3).await,
        Err(StorageError::NotFound)
    );
}

/// Scheduled projects are the active ones with a schedule, each with its anchor, which only
/// `set_schedule_anchor` changes.
pub async fn schedule_anchors_are_kept_apart_from_updates<S: Storage>(s: &S) {
    let ada = user(s, "ada").await;
    let acme = org(s, "acme", ada.id, false).await;
    let p = project(s, acme.id, "app", ada.id).await;
    let anchor = |list: Vec<(gradient_domain::model::Project, Option<chrono::DateTime<chrono::Utc>>)>| {
        list.into_iter().find(|(q, _)| q.id == p.id).map(|(_, a)| a)
    };
    assert_eq!(anchor(s.scheduled_projects().await.expect("scheduled")), Some(None));
    let at = now();
    assert!(s.set_schedule_anchor(p.id, Some(at)).await.expect("set anchor"));
    s.update_project(&p).await.expect("update_project");
    assert_eq!(anchor(s.scheduled_projects().await.expect("scheduled")), Some(Some(at)));
    let mut off = p.clone();
    off.schedule = None;
    s.update_project(&off).await.expect("update_project");
    assert_eq!(
        anchor(s.scheduled_projects().await.expect("scheduled")),
        None,
        "no schedule"
    );
    assert!(!s.set_schedule_anchor(ProjectId::new(), None).await.expect("unknown"));
}
