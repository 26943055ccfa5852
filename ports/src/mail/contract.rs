//! The mail contract: what every `Mailer` must do, as scenarios. A mailer is checked together with the mailbox
//! its messages arrive in (for the SMTP adapter, a mail server the test runs): what arrives must be what was
//! sent, once, to its recipient only.
//!
//! The scenario list lives in one place: the `mail_contract!` macro below.

use gradient_domain::Email;
use gradient_domain::ports::mail::{Mail, Mailer};
use std::future::Future;

/// A mailer together with where its messages arrive.
pub trait Mailbox: Mailer {
    /// Every message delivered, oldest first, once at least `at_least` arrived or after a few seconds, as the
    /// recipient reads it: the address it was delivered to, the subject and the plain-text body (line ends as
    /// `\n`), decoded from however they travelled.
    fn delivered(&self, at_least: usize) -> impl Future<Output = Vec<Mail>> + Send;
}

/// Runs the mail contract suite: one `#[tokio::test]` per scenario, each on a fresh mailer and mailbox.
///
/// `$fresh` is an async function (or any expression callable with no arguments and returning a future) that
/// yields a new value implementing [`Mailbox`], with nothing delivered yet. The calling crate needs `tokio`
/// (features `macros` and `rt`) as a dev-dependency.
#[macro_export]
macro_rules! mail_contract {
    ($fresh:expr) => {
        $crate::__mail_contract_tests!(
            $fresh;
            a_message_arrives_once_as_sent,
            text_survives_the_trip,
            each_message_reaches_only_its_recipient,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __mail_contract_tests {
    ($fresh:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let mailbox = ($fresh)().await;
                $crate::mail::contract::$scenario(&mailbox).await;
            }
        )+
    };
}

fn mail(to: &str, subject: &str, body: &str) -> Mail {
    Mail {
        to: Email::parse(to).expect("a valid address"),
        to_name: "Ada Lovelace".into(),
        subject: subject.into(),
        body: body.into(),
    }
}

async fn arrived<M: Mailbox>(m: &M, n: usize) -> Vec<Mail> {
    m.delivered(n).await
}

fn same_text(a: &str, b: &str) -> bool {
    a.replace("\r\n", "\n").trim_end() == b.replace("\r\n", "\n").trim_end()
}

pub async fn a_message_arrives_once_as_sent<M: Mailbox>(m: &M) {
    let sent = mail(
        "ada@example.com",
        "Confirm your email address",
        "Hello Ada,\n\nopen https://ci.example.com/verify-email?token=abc_DEF-123\n",
    );
    m.send(sent.clone()).await.expect("the mailer accepts the message");
    let got = arrived(m, 1).await;
    assert_eq!(got.len(), 1, "one message sent, one delivered: {got:?}");
    assert_eq!(got[0].to, sent.to, "delivered to its recipient");
    assert_eq!(got[0].subject, sent.subject);
    assert!(
        same_text(&got[0].body, &sent.body),
        "body changed on the way: {:?}",
        got[0].body
    );
}

pub async fn text_survives_the_trip<M: Mailbox>(m: &M) {
    let long = "x".repeat(1200);
    let body = format!(
        "Grüße, 日本語 — ok\n.a line starting with a dot\nFrom the start of a line\n{long}\nhttps://ci.example.com/reset-password?token=aB-_9\n"
    );
    let sent = mail("bob@example.org", "Réinitialiser le mot de passe — 日本", &body);
    m.send(sent.clone()).await.expect("the mailer accepts the message");
    let got = arrived(m, 1).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0].subject, sent.subject, "the subject's non-ASCII text survives");
    assert!(
        same_text(&got[0].body, &body),
        "body changed on the way: {:?}",
        got[0].body
    );
}

pub async fn each_message_reaches_only_its_recipient<M: Mailbox>(m: &M) {
    m.send(mail("one@example.com", "For one", "one\n"))
        .await
        .expect("accepted");
    m.send(mail("two@example.com", "For two", "two\n"))
        .await
        .expect("accepted");
    let mut got = arrived(m, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    got.sort_by(|a, b| a.to.as_str().cmp(b.to.as_str()));
    assert_eq!(
        (got[0].to.as_str(), got[0].subject.as_str()),
        ("one@example.com", "For one")
    );
    assert_eq!(
        (got[1].to.as_str(), got[1].subject.as_str()),
        ("two@example.com", "For two")
    );
}
