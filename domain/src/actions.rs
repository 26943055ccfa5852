//! Actions: what a project does when its evaluations fail, are fixed or complete — a signed outgoing webhook or
//! mail to a list of addresses. Pure: when an action fires, what it sends, how it is signed, how often it is
//! tried. The use cases are in `service/actions.rs`.
//!
//! * An action follows some of the events [`ActionEvent`]: by default `failed` and `fixed` (a change of the
//!   project's health, as [`crate::mail::health_change`] decides it), `completed` (every completed evaluation)
//!   only when asked.
//! * A webhook is `POST <url>` with a JSON body ([`webhook_body`]) and the headers of [`webhook_headers`]:
//!   `X-Gradient-Signature: sha256=<hex>` is the HMAC-SHA256 of the body under the action's secret.
//! * A delivery is tried up to [`MAX_ATTEMPTS`] times, [`retry_delay`] apart; only a 2xx answer delivers it.
//! * Each action keeps its newest [`DELIVERY_LOG_KEEP`] deliveries.

use crate::mail::HealthChange;
use crate::model::{ActionEvent, Evaluation, Org, Project, Timestamp};
use crate::status::EvaluationStatus;
use chrono::TimeDelta;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Attempts of one webhook delivery before it is given up.
pub const MAX_ATTEMPTS: u32 = 5;
/// Deliveries kept per action (the newest; older ones are deleted as new ones come).
pub const DELIVERY_LOG_KEEP: u32 = 50;
/// Actions per project.
pub const MAX_ACTIONS_PER_PROJECT: usize = 20;
/// Addresses per mail action.
pub const MAX_RECIPIENTS: usize = 20;
/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "X-Gradient-Signature";
/// The header naming the event (`failed`, `fixed`, `completed`, or `test`).
pub const EVENT_HEADER: &str = "X-Gradient-Event";
/// The header carrying the delivery's id (the same on every attempt).
pub const DELIVERY_HEADER: &str = "X-Gradient-Delivery";
/// Smallest and largest secret a caller may give.
pub const SECRET_LEN: std::ops::RangeInclusive<usize> = 16..=256;

/// The delay after `attempts` failed attempts: 5 s, 10 s, 20 s, 40 s.
pub fn retry_delay(attempts: u32) -> TimeDelta {
    TimeDelta::seconds(5) * (1i32 << attempts.saturating_sub(1).min(10))
}

/// The event an evaluation that ended with `status` is, for an action following `events`, given the change of
/// health it made (`change`). A change of health wins over `completed`: an evaluation that fixes the project is
/// `fixed` to an action following both, and `completed` to one following only `completed`.
pub fn fired(events: &[ActionEvent], status: EvaluationStatus, change: Option<HealthChange>) -> Option<ActionEvent> {
    let by_change = match change {
        Some(HealthChange::Failing) => Some(ActionEvent::Failed),
        Some(HealthChange::Fixed) => Some(ActionEvent::Fixed),
        None => None,
    };
    if let Some(e) = by_change
        && events.contains(&e)
    {
        return Some(e);
    }
    (status == EvaluationStatus::Completed && events.contains(&ActionEvent::Completed))
        .then_some(ActionEvent::Completed)
}

/// Sorts and deduplicates events; the default when none are given; `Err` naming an unknown one.
pub fn parse_events(names: Option<&[String]>) -> Result<Vec<ActionEvent>, String> {
    let Some(names) = names else {
        return Ok(ActionEvent::DEFAULT.to_vec());
    };
    let mut events = names
        .iter()
        .map(|n| {
            ActionEvent::parse(n.trim()).ok_or_else(|| format!("'{n}' is not an event (failed, fixed, completed)"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    events.sort();
    events.dedup();
    if events.is_empty() {
        return Err("give at least one event (failed, fixed, completed)".into());
    }
    Ok(events)
}

/// The hex HMAC-SHA256 of `body` under `secret`, as the signature header carries it (`sha256=<hex>`).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    // HMAC takes keys of any length: this never fails.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// The headers of one webhook attempt, body signature included.
pub fn webhook_headers(secret: &[u8], body: &[u8], event: &str, delivery: crate::DeliveryId) -> Vec<(String, String)> {
    vec![
        ("Content-Type".into(), "application/json".into()),
        (EVENT_HEADER.into(), event.into()),
        (DELIVERY_HEADER.into(), delivery.0.to_string()),
        (SIGNATURE_HEADER.into(), signature(secret, body)),
    ]
}

/// The JSON body a webhook sends for `event` of evaluation `e`.
pub fn webhook_body(
    public_url: &str,
    org: &Org,
    project: &Project,
    e: &Evaluation,
    event: ActionEvent,
    at: Timestamp,
) -> String {
    let base = public_url.trim_end_matches('/');
    serde_json::json!({
        "event": event.as_str(),
        "organization": org.name.as_str(),
        "project": project.name.as_str(),
        "repository": without_userinfo(&project.repository),
        "evaluation": {
            "id": e.id.0.to_string(),
            "commit": e.commit,
            "branch": e.branch,
            "status": e.status.as_str(),
            "url": format!("{base}/evals/{}", e.id.0),
        },
        "sent_at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string()
}

/// The JSON body of a test delivery.
pub fn test_body(org: &Org, project: &Project, action: &str, at: Timestamp) -> String {
    serde_json::json!({
        "event": "test",
        "organization": org.name.as_str(),
        "project": project.name.as_str(),
        "action": action,
        "sent_at": at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    })
    .to_string()
}

/// The subject and body of an action's mail for `event` of evaluation `e` (the members' health mail's words).
pub fn mail_text(
    public_url: &str,
    org: &Org,
    project: &Project,
    e: &Evaluation,
    event: ActionEvent,
) -> (String, String) {
    let what = match event {
        ActionEvent::Failed => "is failing",
        ActionEvent::Fixed => "is fixed",
        ActionEvent::Completed => "completed an evaluation",
    };
    let detail = match event {
        ActionEvent::Failed => "The evaluation or one of its builds failed.",
        ActionEvent::Fixed => "Every build of this evaluation succeeded after an evaluation that failed.",
        ActionEvent::Completed => "Every build of this evaluation succeeded.",
    };
    let short: String = e.commit.chars().take(12).collect();
    let branch = e.branch.as_deref().map(|b| format!(" on {b}")).unwrap_or_default();
    (
        format!("{}/{} {what}", org.name, project.name),
        format!(
            "Hello,\n\nthe project {}/{} {what} with commit {short}{branch}. {detail}\n\n{}/evals/{}\n\nYou get this \
             mail because an action of the project lists your address; its administrators can change that.\n",
            org.name,
            project.name,
            public_url.trim_end_matches('/'),
            e.id.0,
        ),
    )
}

/// A repository URL without the user and password it may carry (`https://user:token@host/…`): a webhook's body
/// goes to a third party and into the delivery log.
fn without_userinfo(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if let Some((_, host)) = authority.rsplit_once('@') {
            return format!("{scheme}://{host}{tail}");
        }
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_webhook_never_carries_the_repository_credentials() {
        assert_eq!(
            without_userinfo("https://bot:s3cret@git.example.com/acme/web.git"),
            "https://git.example.com/acme/web.git"
        );
        assert_eq!(without_userinfo("git@github.com:acme/web"), "git@github.com:acme/web");
        assert_eq!(
            without_userinfo("https://github.com/acme/web"),
            "https://github.com/acme/web"
        );
    }
    use crate::mail::health_change;
    use ActionEvent::*;
    use EvaluationStatus as S;

    /// The events a default action (failed, fixed) and one with `completed` too see along a project's history.
    #[test]
    fn actions_fire_on_changes_of_health_by_default() {
        let history = [
            S::Completed,
            S::Failed,
            S::Failed,
            S::Completed,
            S::Completed,
            S::Aborted,
            S::Failed,
        ];
        let mut previous = None;
        let mut default_saw = Vec::new();
        let mut all_saw = Vec::new();
        for status in history {
            let change = health_change(previous, status);
            default_saw.push(fired(&ActionEvent::DEFAULT, status, change));
            all_saw.push(fired(&ActionEvent::ALL, status, change));
            if crate::mail::tells_health(status) {
                previous = Some(status);
            }
        }
        assert_eq!(
            default_saw,
            [None, Some(Failed), None, Some(Fixed), None, None, Some(Failed)]
        );
        assert_eq!(
            all_saw,
            [
                Some(Completed),
                Some(Failed),
                None,
                Some(Fixed),
                Some(Completed),
                None,
                Some(Failed)
            ]
        );
        assert_eq!(
            fired(&[Completed], S::Completed, Some(HealthChange::Fixed)),
            Some(Completed)
        );
        assert_eq!(fired(&[Fixed], S::Completed, None), None);
    }

    #[test]
    fn events_parse_sorted_with_a_default() {
        assert_eq!(parse_events(None).unwrap(), vec![Failed, Fixed]);
        let given = ["completed".to_owned(), "failed".to_owned(), "failed".to_owned()];
        assert_eq!(parse_events(Some(&given)).unwrap(), vec![Failed, Completed]);
        assert!(parse_events(Some(&[])).is_err());
        assert!(parse_events(Some(&["broken".to_owned()])).is_err());
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn retries_back_off() {
        assert_eq!(retry_delay(1), TimeDelta::seconds(5));
        assert_eq!(retry_delay(2), TimeDelta::seconds(10));
        assert_eq!(retry_delay(4), TimeDelta::seconds(40));
    }
}
