//! What Gradient mails, and when: the texts of the verification, password reset and evaluation mails (with
//! links to the web UI's pages under the public URL), whether an evaluation changed its project's health, and
//! who hears about it. Pure: the use cases in `service/email.rs` store and send.

use crate::model::{Evaluation, Org, Project, User};
use crate::ports::Mail;
use crate::status::EvaluationStatus;
use chrono::TimeDelta;

/// How long a verification link works.
pub const VERIFY_LIFETIME: TimeDelta = TimeDelta::hours(24);
/// How long a password reset link works.
pub const RESET_LIFETIME: TimeDelta = TimeDelta::hours(1);
/// At most one mail of each kind (verification, reset) per account in this time; further requests send none.
pub const RESEND_INTERVAL: TimeDelta = TimeDelta::minutes(1);

/// A project's health moved: its evaluations started failing, or pass again after failing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthChange {
    Failing,
    Fixed,
}

/// Whether an evaluation ending with `now` changes its project's health, given how the project's previous ended
/// evaluation ended (`None`: it has none that completed or failed; aborted ones say nothing about health). A
/// first evaluation that fails is a change; one that completes is not (nothing was broken).
pub fn health_change(previous: Option<EvaluationStatus>, now: EvaluationStatus) -> Option<HealthChange> {
    match (previous, now) {
        (Some(EvaluationStatus::Failed), EvaluationStatus::Failed) => None,
        (_, EvaluationStatus::Failed) => Some(HealthChange::Failing),
        (Some(EvaluationStatus::Failed), EvaluationStatus::Completed) => Some(HealthChange::Fixed),
        _ => None,
    }
}

/// Whether an ended evaluation says something about its project's health.
pub fn tells_health(status: EvaluationStatus) -> bool {
    matches!(status, EvaluationStatus::Completed | EvaluationStatus::Failed)
}

/// Who gets a mail about an organization's evaluation: its members who did not opt out (`wants`), and, when the
/// server requires verified addresses, only those whose address is verified.
pub fn recipients(members: Vec<(User, bool)>, require_verified: bool) -> Vec<User> {
    members
        .into_iter()
        .filter(|(u, wants)| *wants && (u.email_verified || !require_verified))
        .map(|(u, _)| u)
        .collect()
}

fn base(public_url: &str) -> &str {
    public_url.trim_end_matches('/')
}

/// The web UI page that verifies an address with `token`.
pub fn verify_link(public_url: &str, token: &str) -> String {
    format!("{}/verify-email?token={token}", base(public_url))
}

/// The web UI page that sets a new password with `token`.
pub fn reset_link(public_url: &str, token: &str) -> String {
    format!("{}/reset-password?token={token}", base(public_url))
}

fn greeting(user: &User) -> String {
    let name = if user.name.trim().is_empty() {
        user.username.as_str()
    } else {
        user.name.trim()
    };
    format!("Hello {name},")
}

/// The verification mail.
pub fn verification_mail(user: &User, public_url: &str, token: &str) -> Mail {
    Mail {
        to: user.email.clone(),
        to_name: user.name.clone(),
        subject: "Confirm your email address for Gradient".into(),
        body: format!(
            "{}\n\nplease confirm that {} is your address for the Gradient account '{}' by opening this link \
             within 24 hours:\n\n{}\n\nIf you did not create this account, ignore this mail.\n",
            greeting(user),
            user.email,
            user.username,
            verify_link(public_url, token)
        ),
    }
}

/// The password reset mail.
pub fn reset_mail(user: &User, public_url: &str, token: &str) -> Mail {
    Mail {
        to: user.email.clone(),
        to_name: user.name.clone(),
        subject: "Reset your Gradient password".into(),
        body: format!(
            "{}\n\nsomeone asked to reset the password of the Gradient account '{}'. To choose a new password, \
             open this link within an hour (it works once):\n\n{}\n\nSetting a new password logs the account out \
             everywhere. If you did not ask for this, ignore this mail: the password stays as it is.\n",
            greeting(user),
            user.username,
            reset_link(public_url, token)
        ),
    }
}

/// The mail telling `user` that the project's health changed with evaluation `e`.
pub fn health_mail(
    user: &User,
    public_url: &str,
    org: &Org,
    project: &Project,
    e: &Evaluation,
    change: HealthChange,
) -> Mail {
    let what = match change {
        HealthChange::Failing => "is failing",
        HealthChange::Fixed => "is fixed",
    };
    let detail = match change {
        HealthChange::Failing => "The evaluation or one of its builds failed.",
        HealthChange::Fixed => "Every build of this evaluation succeeded after an evaluation that failed.",
    };
    let short: String = e.commit.chars().take(12).collect();
    let branch = e.branch.as_deref().map(|b| format!(" on {b}")).unwrap_or_default();
    Mail {
        to: user.email.clone(),
        to_name: user.name.clone(),
        subject: format!("{}/{} {what}", org.name, project.name),
        body: format!(
            "{}\n\nthe project {}/{} {what} with commit {short}{branch}. {detail}\n\n{}/evals/{}\n\nYou get this \
             mail as a member of the organization '{}'. To stop mail about evaluations, turn it off on your \
             account page: {}/account\n",
            greeting(user),
            org.name,
            project.name,
            base(public_url),
            e.id.0,
            org.name,
            base(public_url)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::EvaluationStatus::*;

    #[test]
    fn only_a_change_of_health_is_news() {
        assert_eq!(health_change(None, Failed), Some(HealthChange::Failing));
        assert_eq!(health_change(Some(Completed), Failed), Some(HealthChange::Failing));
        assert_eq!(health_change(Some(Failed), Failed), None);
        assert_eq!(health_change(Some(Failed), Completed), Some(HealthChange::Fixed));
        assert_eq!(health_change(Some(Completed), Completed), None);
        assert_eq!(health_change(None, Completed), None);
        assert_eq!(health_change(Some(Failed), Aborted), None);
    }

    #[test]
    fn links_point_at_the_web_ui_under_the_public_url() {
        assert_eq!(
            verify_link("https://ci.example.com/", "abc"),
            "https://ci.example.com/verify-email?token=abc"
        );
        assert_eq!(
            reset_link("https://ci.example.com", "xyz"),
            "https://ci.example.com/reset-password?token=xyz"
        );
    }
}
