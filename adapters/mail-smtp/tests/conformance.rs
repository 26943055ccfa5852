#![allow(clippy::unwrap_used)]
//! The SMTP mailer passes the mail contract against a small SMTP server run by the test on loopback, which
//! keeps each message as its recipient would read it (subject and body decoded). The end-to-end tests
//! (`tests/e2e/email.rs`) send through a real one, aiosmtpd.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use gradient_domain::Email;
use gradient_domain::ports::mail::{Mail, Mailer, Sending};
use gradient_mail_smtp::{SmtpMailer, SmtpSettings};
use gradient_ports::mail::Mailbox;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

struct Sink {
    mailer: SmtpMailer,
    inbox: Arc<Mutex<Vec<Mail>>>,
}

impl Mailer for Sink {
    fn send(&self, mail: Mail) -> Sending<'_> {
        self.mailer.send(mail)
    }
}

impl Mailbox for Sink {
    async fn delivered(&self, at_least: usize) -> Vec<Mail> {
        for _ in 0..100 {
            let got = self.inbox.lock().unwrap().clone();
            if got.len() >= at_least {
                return got;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        self.inbox.lock().unwrap().clone()
    }
}

/// `=?utf-8?b?…?=` words decoded (the rest kept), the whitespace between two encoded words dropped (RFC 2047).
fn decode_header(value: &str) -> String {
    let mut bytes = Vec::new();
    let mut previous_was_word = None;
    for part in value.split_whitespace() {
        let word = part
            .strip_prefix("=?")
            .and_then(|r| r.strip_suffix("?="))
            .and_then(|r| {
                let mut it = r.splitn(3, '?');
                let (_charset, enc, text) = (it.next()?, it.next()?, it.next()?);
                enc.eq_ignore_ascii_case("b")
                    .then(|| STANDARD.decode(text).ok())
                    .flatten()
            });
        let is_word = word.is_some();
        if previous_was_word.is_some() && !(previous_was_word == Some(true) && is_word) {
            bytes.push(b' ');
        }
        match word {
            Some(w) => bytes.extend(w),
            None => bytes.extend(part.as_bytes()),
        }
        previous_was_word = Some(is_word);
    }
    String::from_utf8(bytes).expect("UTF-8 subject")
}

fn parse(rcpt: &str, data: &str) -> Mail {
    let (head, body) = data.split_once("\r\n\r\n").expect("headers and body");
    let unfolded = head.replace("\r\n ", " ").replace("\r\n\t", " ");
    let header = |name: &str| {
        unfolded.lines().find_map(|l| {
            l.split_once(':')
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.trim().to_owned())
        })
    };
    assert_eq!(
        header("Content-Transfer-Encoding").as_deref(),
        Some("base64"),
        "bodies travel as base64"
    );
    let body = STANDARD.decode(body.replace("\r\n", "").trim()).expect("a base64 body");
    Mail {
        to: Email::parse(rcpt).expect("recipient"),
        to_name: String::new(),
        subject: decode_header(&header("Subject").expect("a subject")),
        body: String::from_utf8(body).expect("UTF-8 body").replace("\r\n", "\n"),
    }
}

async fn serve(listener: TcpListener, inbox: Arc<Mutex<Vec<Mail>>>) {
    loop {
        let Ok((conn, _)) = listener.accept().await else { return };
        let inbox = inbox.clone();
        tokio::spawn(async move {
            let (r, mut w) = conn.into_split();
            let mut r = BufReader::new(r);
            w.write_all(b"220 sink ESMTP\r\n").await.unwrap();
            let mut rcpt = String::new();
            let mut line = String::new();
            loop {
                line.clear();
                if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                    return;
                }
                let cmd = line.trim_end().to_ascii_uppercase();
                if cmd.starts_with("EHLO") {
                    w.write_all(b"250-sink\r\n250 8BITMIME\r\n").await.unwrap();
                } else if let Some(to) = cmd.strip_prefix("RCPT TO:") {
                    rcpt = to.trim().trim_matches(['<', '>']).to_ascii_lowercase();
                    w.write_all(b"250 OK\r\n").await.unwrap();
                } else if cmd == "DATA" {
                    w.write_all(b"354 go on\r\n").await.unwrap();
                    let mut data = String::new();
                    loop {
                        line.clear();
                        r.read_line(&mut line).await.unwrap();
                        if line == ".\r\n" {
                            break;
                        }
                        data.push_str(line.strip_prefix('.').unwrap_or(&line));
                    }
                    inbox.lock().unwrap().push(parse(&rcpt, &data));
                    w.write_all(b"250 OK\r\n").await.unwrap();
                } else if cmd == "QUIT" {
                    w.write_all(b"221 bye\r\n").await.unwrap();
                    return;
                } else {
                    w.write_all(b"250 OK\r\n").await.unwrap();
                }
            }
        });
    }
}

async fn fresh_smtp() -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let inbox = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve(listener, inbox.clone()));
    let mailer = SmtpMailer::new(&SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        from_address: "gradient@example.com".into(),
        from_name: "Gradient".into(),
        hello_name: "ci.example.com".into(),
    })
    .unwrap();
    Sink { mailer, inbox }
}

mod smtp {
    gradient_ports::mail_contract!(crate::fresh_smtp);
}

#[tokio::test]
async fn a_server_that_is_down_is_unavailable() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mailer = SmtpMailer::new(&SmtpSettings {
        host: "127.0.0.1".into(),
        port,
        username: None,
        password: None,
        from_address: "gradient@example.com".into(),
        from_name: "Gradient".into(),
        hello_name: "ci.example.com".into(),
    })
    .unwrap();
    let mail = Mail {
        to: Email::parse("a@example.com").unwrap(),
        to_name: String::new(),
        subject: "s".into(),
        body: "b".into(),
    };
    let e = mailer.send(mail).await.unwrap_err();
    assert!(
        matches!(e, gradient_domain::ports::mail::MailError::Unavailable(_)),
        "nothing listens: {e:?}"
    );
}
