//! The outgoing webhook contract: what every `WebhookSender` must do, as scenarios. A sender is checked together
//! with a receiver it can reach (for the HTTP adapter, a small HTTP server the test runs on loopback).
//!
//! The scenario list lives in one place: the `webhook_contract!` macro below.

use gradient_domain::ports::webhook::{Outgoing, OutgoingError, WebhookSender};
use std::future::Future;

/// One request as a receiver got it: its headers (names lowercase) and its body.
pub type Received = (Vec<(String, String)>, Vec<u8>);

/// A sender together with a receiver it may reach.
pub trait Receiving: WebhookSender {
    /// The URL of a new receiver that answers every POST with `status`.
    fn target(&self, status: u16) -> impl Future<Output = String> + Send;
    /// What the receivers got, oldest first: each request's headers (names lowercase) and body.
    fn received(&self) -> impl Future<Output = Vec<Received>> + Send;
    /// A URL whose address the sender's network policy forbids (nothing is sent there).
    fn forbidden(&self) -> String;
    /// A URL where nothing answers.
    fn nowhere(&self) -> String;
}

/// Runs the webhook contract suite: one `#[tokio::test]` per scenario, each on a fresh sender.
#[macro_export]
macro_rules! webhook_contract {
    ($fresh:expr) => {
        $crate::__webhook_contract_tests!(
            $fresh;
            a_post_arrives_with_its_headers_and_body,
            an_error_status_is_answered_not_hidden,
            a_forbidden_address_is_refused_unsent,
            an_unreachable_target_is_unavailable,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __webhook_contract_tests {
    ($fresh:expr; $($scenario:ident),+ $(,)?) => {
        $(
            #[tokio::test]
            async fn $scenario() {
                let sender = ($fresh)().await;
                $crate::webhook::contract::$scenario(&sender).await;
            }
        )+
    };
}

fn request(url: String) -> Outgoing {
    Outgoing {
        url,
        headers: vec![
            ("Content-Type".into(), "application/json".into()),
            ("X-Gradient-Signature".into(), "sha256=00ff".into()),
        ],
        body: br#"{"event":"failed","project":"web"}"#.to_vec(),
    }
}

pub async fn a_post_arrives_with_its_headers_and_body<R: Receiving>(r: &R) {
    let url = r.target(200).await;
    let sent = request(url);
    assert_eq!(r.post(&sent).await, Ok(200));
    let got = r.received().await;
    assert_eq!(got.len(), 1, "one request sent, one received");
    assert_eq!(got[0].1, sent.body, "the body arrives byte for byte");
    let header = |name: &str| got[0].0.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(header("x-gradient-signature").as_deref(), Some("sha256=00ff"));
    assert_eq!(header("content-type").as_deref(), Some("application/json"));
}

pub async fn an_error_status_is_answered_not_hidden<R: Receiving>(r: &R) {
    let url = r.target(500).await;
    assert_eq!(r.post(&request(url)).await, Ok(500));
    assert_eq!(r.received().await.len(), 1);
}

pub async fn a_forbidden_address_is_refused_unsent<R: Receiving>(r: &R) {
    let answer = r.post(&request(r.forbidden())).await;
    assert!(matches!(answer, Err(OutgoingError::Refused(_))), "{answer:?}");
    assert!(r.received().await.is_empty());
}

pub async fn an_unreachable_target_is_unavailable<R: Receiving>(r: &R) {
    let answer = r.post(&request(r.nowhere())).await;
    assert!(matches!(answer, Err(OutgoingError::Unavailable(_))), "{answer:?}");
}
