//! The mail port ([`gradient_domain::ports::Mailer`]) over SMTP with lettre.
//!
//! * Port 465 speaks TLS from the first byte; any other port starts in plain text and must upgrade with
//!   STARTTLS, except on a loopback host (a relay on the same machine), where STARTTLS is used when offered.
//!   Certificates are checked against the webpki roots; credentials therefore never cross a network in clear.
//! * AUTH (PLAIN or LOGIN, whichever the server offers) when a username is configured.
//! * Each message is plain UTF-8 text, base64 in transit (any line length, no dot or `From ` mangling), from
//!   the configured sender to one recipient, with its own `Message-ID` in the sender's domain.
//! * A 4xx answer or a connection problem is [`MailError::Unavailable`] (worth retrying); 5xx is `Rejected`.

use gradient_domain::ports::mail::{Mail, MailError, Mailer, Sending};
use lettre::message::header::{ContentTransferEncoding, ContentType};
use lettre::message::{Body, Mailbox};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::time::Duration;

/// Where and as whom mail is sent (`email.*`).
#[derive(Clone, PartialEq, Eq)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub username: Option<String>,
    pub password: Option<String>,
    pub from_address: String,
    pub from_name: String,
    /// The name this client gives in `EHLO` (the server's domain).
    pub hello_name: String,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<hidden>"))
            .field("from_address", &self.from_address)
            .field("from_name", &self.from_name)
            .finish()
    }
}

/// Why the settings cannot work (an address that does not parse, a TLS setup that fails).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidSettings(pub String);

impl std::fmt::Display for InvalidSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidSettings {}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// The SMTP mailer. Cheap to clone.
#[derive(Clone)]
pub struct SmtpMailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// The domain of the sender's address, for `Message-ID`s.
    from_domain: String,
}

impl SmtpMailer {
    pub fn new(s: &SmtpSettings) -> Result<Self, InvalidSettings> {
        let address: lettre::Address = s
            .from_address
            .parse()
            .map_err(|e| InvalidSettings(format!("the sender address '{}' is not valid: {e}", s.from_address)))?;
        let name = s.from_name.replace(['\r', '\n'], " ");
        let from = Mailbox::new(Some(name).filter(|n| !n.trim().is_empty()), address);
        let from_domain = from.email.domain().to_owned();
        let tls_params = || {
            TlsParameters::new(s.host.clone())
                .map_err(|e| InvalidSettings(format!("TLS for {} cannot be set up: {e}", s.host)))
        };
        let tls = if s.port == 465 {
            Tls::Wrapper(tls_params()?)
        } else if is_loopback(&s.host) {
            Tls::Opportunistic(tls_params()?)
        } else {
            Tls::Required(tls_params()?)
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(s.host.clone())
            .port(s.port)
            .tls(tls)
            .hello_name(match s.hello_name.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(a)) => ClientId::Ipv4(a),
                Ok(std::net::IpAddr::V6(a)) => ClientId::Ipv6(a),
                Err(_) if s.hello_name.is_empty() => ClientId::Domain("localhost".into()),
                Err(_) => ClientId::Domain(s.hello_name.clone()),
            })
            .timeout(Some(Duration::from_secs(30)));
        if let Some(user) = &s.username {
            builder = builder.credentials(Credentials::new(user.clone(), s.password.clone().unwrap_or_default()));
        }
        Ok(Self {
            transport: builder.build(),
            from,
            from_domain,
        })
    }

    fn message(&self, mail: &Mail) -> Result<Message, MailError> {
        let to = Mailbox::new(
            Some(mail.to_name.replace(['\r', '\n'], " ")).filter(|n| !n.trim().is_empty()),
            mail.to
                .as_str()
                .parse()
                .map_err(|e| MailError::Rejected(format!("the address '{}' is not valid: {e}", mail.to)))?,
        );
        let body = Body::new_with_encoding(
            mail.body.replace("\r\n", "\n").replace('\n', "\r\n"),
            ContentTransferEncoding::Base64,
        )
        .map_err(|_| MailError::Rejected("the body cannot be encoded".into()))?;
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.replace(['\r', '\n'], " "))
            .message_id(Some(format!(
                "<{}@{}>",
                uuid::Uuid::new_v4().simple(),
                self.from_domain
            )))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| MailError::Rejected(format!("the message cannot be built: {e}")))
    }
}

impl Mailer for SmtpMailer {
    fn send(&self, mail: Mail) -> Sending<'_> {
        Box::pin(async move {
            let message = self.message(&mail)?;
            match self.transport.send(message).await {
                Ok(_) => Ok(()),
                Err(e) if e.is_permanent() => Err(MailError::Rejected(e.to_string())),
                Err(e) => Err(MailError::Unavailable(e.to_string())),
            }
        })
    }
}
