//! E-mail channels: the incident as a plain-text mail sent through an SMTP
//! relay (lettre), with the same attempt/retry outcome as HTTP notifiers.

use std::time::Duration;

use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use serde_json::Value;

use crate::notify::Attempt;
use crate::AlertError;

/// Where and as whom e-mail notifications are sent.
#[derive(Clone)]
pub struct SmtpConfig {
    /// The relay: `smtp://host:port` (plain; `?tls=required` for STARTTLS)
    /// or `smtps://host:port` (TLS from the first byte).
    pub url: String,
    /// The sender, e.g. `tend <tend@example.com>`.
    pub from: String,
    /// SMTP AUTH user name, if the relay wants one.
    pub username: Option<String>,
    /// SMTP AUTH password.
    pub password: Option<String>,
}

// By hand, so that the password never reaches a log line.
impl std::fmt::Debug for SmtpConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpConfig")
            .field("url", &self.url)
            .field("from", &self.from)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl SmtpConfig {
    /// Whether the relay URL and sender can be used (connects nothing).
    pub fn check(&self) -> Result<(), AlertError> {
        Mailer::new(self, Duration::from_secs(10)).map(|_| ())
    }
}

/// A ready SMTP transport and sender.
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl Mailer {
    /// Checks the settings and prepares the transport (connects nothing yet).
    pub fn new(cfg: &SmtpConfig, timeout: Duration) -> Result<Self, AlertError> {
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| AlertError::Config(format!("invalid SMTP sender `{}`: {e}", cfg.from)))?;
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::from_url(&cfg.url)
            .map_err(|e| {
                AlertError::Config(format!(
                    "invalid SMTP URL `{}` (expected smtp://host:port or smtps://host:port): {e}",
                    cfg.url
                ))
            })?
            .timeout(Some(timeout));
        if let Some(user) = &cfg.username {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                cfg.password.clone().unwrap_or_default(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }

    /// Sends the queued e-mail payload (`{"subject", "body"}`) to `to` once.
    pub async fn send_once(&self, to: &str, payload: &str) -> Attempt {
        let fail = |error: String, retryable: bool| Attempt {
            status: None,
            error: Some(error),
            retryable,
        };
        let to: Mailbox = match to.parse() {
            Ok(m) => m,
            Err(e) => return fail(format!("invalid recipient `{to}`: {e}"), false),
        };
        let v: Value = serde_json::from_str(payload).unwrap_or(Value::Null);
        let (Some(subject), Some(body)) = (v["subject"].as_str(), v["body"].as_str()) else {
            return fail("the queued e-mail has no subject or body".into(), false);
        };
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(subject)
            .header(ContentType::TEXT_PLAIN)
            .body(body.to_string());
        let message = match message {
            Ok(m) => m,
            Err(e) => return fail(format!("cannot build the e-mail: {e}"), false),
        };
        match self.transport.send(message).await {
            Ok(_) => Attempt {
                status: None,
                error: None,
                retryable: false,
            },
            // A 5xx reply will be the same next time; anything else (4xx,
            // connection refused, timeout) may pass later.
            Err(e) => {
                let retryable = !e.is_permanent();
                fail(format!("SMTP: {e}"), retryable)
            }
        }
    }
}
