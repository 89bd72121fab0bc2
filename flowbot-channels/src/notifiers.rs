//! Notifiers (send-only channels) for the `notify` action: ntfy, Slack incoming webhooks,
//! Pushover, and a generic signed JSON webhook. Each takes its base URL from configuration,
//! so tests (and self-hosted services) point it anywhere.
//!
//! Errors name the service's answer: the HTTP status and what the service said, and for a
//! 429 the `Retry-After` it asked for. A workflow node retries them under its retry policy.

mod settings;
pub use settings::NotifierSettings;

use std::time::Duration;

use async_trait::async_trait;
use flowbot_core::{BoxError, Notification, Notifier, Priority};
use serde_json::{Value, json};

/// Longest a notifier waits for the service.
pub const TIMEOUT: Duration = Duration::from_secs(15);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(TIMEOUT)
        .user_agent(concat!("flowbot/", env!("CARGO_PKG_VERSION")))
        .build()
        .unwrap_or_default()
}

/// `e` with its words changed by `reword`, still permanent or transient (with its wait).
fn reworded(e: &BoxError, reword: impl FnOnce(String) -> String) -> BoxError {
    let words = reword(e.to_string());
    if e.is::<flowbot_core::Permanent>() {
        return Box::new(flowbot_core::Permanent::new(words));
    }
    let wait = e
        .downcast_ref::<flowbot_core::Transient>()
        .and_then(flowbot_core::Transient::requested_delay);
    Box::new(flowbot_core::Transient::new(words).retry_after_opt(wait))
}

/// Send `req`; the body of a 2xx answer, or an error naming the status and the service's
/// words.
async fn send(service: &str, req: reqwest::RequestBuilder) -> Result<String, BoxError> {
    let resp = req.send().await.map_err(|e| {
        crate::retry_after::classified(
            None,
            None,
            format!("{service} unreachable: {}", e.without_url()),
        )
    })?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = resp.text().await.unwrap_or_default();
    if status.is_success() {
        return Ok(body);
    }
    let said: String = body.chars().take(300).collect();
    // The service's Retry-After, at most an hour (`crate::retry_after`).
    let retry_after =
        retry_after.and_then(|v| crate::retry_after::parse_header(&v, flowbot_core::clock::now()));
    let detail = match (status.as_u16(), retry_after) {
        (429, Some(after)) => {
            format!(
                "{service} rate limit (HTTP 429): retry after {} s: {said}",
                after.as_secs()
            )
        }
        (code, _) => format!("{service} refused the notification (HTTP {code}): {said}"),
    };
    Err(crate::retry_after::classified(
        Some(status.as_u16()),
        retry_after,
        detail,
    ))
}

/// [ntfy](https://docs.ntfy.sh/publish/): `POST <base_url>/<topic>` with the message as the
/// body and the title, priority, tags and click URL as headers.
#[derive(Debug, Clone)]
pub struct Ntfy {
    base_url: String,
    topic: String,
    token: Option<String>,
    client: reqwest::Client,
}

impl Ntfy {
    /// Publish to `topic` on the server at `base_url` (e.g. `https://ntfy.sh`), with an access
    /// token when the topic is protected.
    pub fn new(base_url: &str, topic: &str, token: Option<String>) -> Self {
        Ntfy {
            base_url: base_url.trim_end_matches('/').to_owned(),
            topic: topic.to_owned(),
            token,
            client: client(),
        }
    }
}

#[async_trait]
impl Notifier for Ntfy {
    fn kind(&self) -> &str {
        "ntfy"
    }

    async fn notify(&self, n: &Notification) -> Result<Value, BoxError> {
        let priority = match n.priority {
            Priority::Low => "2",
            Priority::Normal => "3",
            Priority::High => "4",
            Priority::Urgent => "5",
        };
        let mut req = self
            .client
            .post(format!("{}/{}", self.base_url, self.topic))
            .header("Priority", priority)
            .body(n.message.clone());
        if let Some(t) = &n.title {
            req = req.header("Title", t);
        }
        if !n.tags.is_empty() {
            req = req.header("Tags", n.tags.join(","));
        }
        if let Some(u) = &n.url {
            req = req.header("Click", u);
        }
        if let Some(token) = &self.token {
            req = req.bearer_auth(token);
        }
        let body = send("ntfy", req).await?;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        Ok(json!({"id": answer.get("id")}))
    }
}

/// A Slack [incoming webhook](https://api.slack.com/messaging/webhooks): `POST` of
/// `{"text": …}` to the webhook URL, which answers `ok`.
#[derive(Debug, Clone)]
pub struct SlackWebhook {
    url: String,
    client: reqwest::Client,
}

impl SlackWebhook {
    /// Post to the incoming webhook at `url`.
    pub fn new(url: &str) -> Self {
        SlackWebhook {
            url: url.to_owned(),
            client: client(),
        }
    }
}

#[async_trait]
impl Notifier for SlackWebhook {
    fn kind(&self) -> &str {
        "slack_webhook"
    }

    async fn notify(&self, n: &Notification) -> Result<Value, BoxError> {
        // Slack's mrkdwn: a bold title line, the message, a link; urgency as an emoji prefix,
        // since an incoming webhook has no priority.
        let mark = match n.priority {
            Priority::High => ":warning: ",
            Priority::Urgent => ":rotating_light: ",
            _ => "",
        };
        let mut text = match &n.title {
            Some(t) => format!("{mark}*{t}*\n{}", n.message),
            None => format!("{mark}{}", n.message),
        };
        if let Some(u) = &n.url {
            text.push_str(&format!("\n<{u}>"));
        }
        let body = send(
            "Slack",
            self.client.post(&self.url).json(&json!({"text": text})),
        )
        .await?;
        if body.trim() != "ok" {
            return Err(format!("Slack answered '{body}' instead of 'ok'").into());
        }
        Ok(json!({"ok": true}))
    }
}

/// [Pushover](https://pushover.net/api): `POST <base_url>/1/messages.json` with the
/// application token and the user key.
#[derive(Debug, Clone)]
pub struct Pushover {
    base_url: String,
    token: String,
    user: String,
    client: reqwest::Client,
}

impl Pushover {
    /// The API at `base_url` (`https://api.pushover.net`) with an application `token` and a
    /// user or group key.
    pub fn new(base_url: &str, token: &str, user: &str) -> Self {
        Pushover {
            base_url: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            user: user.to_owned(),
            client: client(),
        }
    }
}

#[async_trait]
impl Notifier for Pushover {
    fn kind(&self) -> &str {
        "pushover"
    }

    async fn notify(&self, n: &Notification) -> Result<Value, BoxError> {
        let mut form: Vec<(&str, String)> = vec![
            ("token", self.token.clone()),
            ("user", self.user.clone()),
            ("message", n.message.clone()),
        ];
        // Pushover's emergency priority (2) repeats until acknowledged: every 60 s for an hour.
        let priority = match n.priority {
            Priority::Low => "-1",
            Priority::Normal => "0",
            Priority::High => "1",
            Priority::Urgent => "2",
        };
        form.push(("priority", priority.into()));
        if n.priority == Priority::Urgent {
            form.push(("retry", "60".into()));
            form.push(("expire", "3600".into()));
        }
        if let Some(t) = &n.title {
            form.push(("title", t.clone()));
        }
        if let Some(u) = &n.url {
            form.push(("url", u.clone()));
        }
        let req = self
            .client
            .post(format!("{}/1/messages.json", self.base_url))
            .form(&form);
        let body = send("Pushover", req).await.map_err(|e| {
            // Pushover explains refusals in `errors`; keep the token out of the message.
            reworded(&e, |words| words.replace(&self.token, "[token]"))
        })?;
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if answer["status"] != 1 {
            return Err(format!("Pushover answered {answer}").into());
        }
        Ok(json!({"request": answer["request"], "receipt": answer.get("receipt")}))
    }
}

/// A generic JSON webhook: `POST` of the notification as JSON, signed with
/// `X-FlowBot-Signature` (as the webhook channel's callbacks) when a secret is set.
#[derive(Debug, Clone)]
pub struct JsonWebhook {
    url: String,
    secret: Option<String>,
    client: reqwest::Client,
}

impl JsonWebhook {
    /// Post to `url`, signing with `secret` when given.
    pub fn new(url: &str, secret: Option<String>) -> Self {
        JsonWebhook {
            url: url.to_owned(),
            secret,
            client: client(),
        }
    }
}

#[async_trait]
impl Notifier for JsonWebhook {
    fn kind(&self) -> &str {
        "webhook"
    }

    async fn notify(&self, n: &Notification) -> Result<Value, BoxError> {
        let body = serde_json::to_vec(n)?;
        let mut req = self
            .client
            .post(&self.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        #[cfg(feature = "webhook")]
        if let Some(secret) = &self.secret {
            req = req.header(
                crate::webhook::SIGNATURE_HEADER,
                crate::webhook::sign(secret, flowbot_core::clock::now().timestamp(), &body),
            );
        }
        #[cfg(not(feature = "webhook"))]
        if self.secret.is_some() {
            return Err("signing needs the `webhook` feature of flowbot-channels".into());
        }
        req = req.body(body);
        send("webhook", req).await?;
        Ok(json!({"ok": true}))
    }
}

/// How an [`Email`] notifier secures its SMTP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain SMTP, upgraded with STARTTLS (required): port 587.
    #[default]
    Starttls,
    /// TLS from the first byte ("SMTPS"): port 465.
    Tls,
    /// No TLS at all: for a relay on the same host or network only.
    None,
}

/// E-mail over SMTP ([lettre](https://docs.rs/lettre)): the title is the subject, the message
/// the plain-text body; high and urgent notifications are marked important.
#[derive(Clone)]
pub struct Email {
    transport: lettre::AsyncSmtpTransport<lettre::Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl std::fmt::Debug for Email {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Email")
            .field("from", &self.from.to_string())
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

/// What an [`Email`] notifier connects to and sends as, with the keys of a configuration
/// file.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmailSettings {
    /// SMTP server.
    pub host: String,
    /// Its port (default by `tls`: 587, 465 or 25).
    #[serde(default)]
    pub port: Option<u16>,
    /// Connection security.
    #[serde(default)]
    pub tls: SmtpTls,
    /// Login, when the server needs one.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for `username`.
    #[serde(default)]
    pub password: Option<String>,
    /// Sender, e.g. `FlowBot <bot@example.com>`.
    pub from: String,
    /// Recipients.
    pub to: Vec<String>,
    /// A PEM file of root certificates to trust besides the public ones (a relay whose
    /// certificate a private CA signed).
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for EmailSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password is a secret.
        f.debug_struct("EmailSettings")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from)
            .field("to", &self.to.len())
            .finish_non_exhaustive()
    }
}

impl Email {
    /// An e-mail notifier; an error names the setting that is wrong.
    pub fn new(s: &EmailSettings) -> Result<Self, crate::SettingsError> {
        use lettre::transport::smtp::authentication::Credentials;
        let mailbox = |what: &str, a: &str| {
            a.parse::<lettre::message::Mailbox>()
                .map_err(|e| format!("{what}: '{a}' is not an e-mail address ({e})"))
        };
        let from = mailbox("from", &s.from)?;
        if s.to.is_empty() {
            return Err("to: give at least one recipient".into());
        }
        let to =
            s.to.iter()
                .map(|a| mailbox("to", a))
                .collect::<Result<Vec<_>, _>>()?;
        use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
        type Transport = lettre::AsyncSmtpTransport<lettre::Tokio1Executor>;
        if s.host.trim().is_empty() {
            return Err("host: give the SMTP server's name".into());
        }
        let tls = || {
            let mut params = TlsParameters::builder(s.host.clone());
            if let Some(path) = &s.ca_file {
                let file = |e: &dyn std::fmt::Display| format!("ca_file: {}: {e}", path.display());
                let pem = std::fs::read(path).map_err(|e| file(&e))?;
                if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                    return Err(file(&"no PEM certificate in it"));
                }
                let ca = Certificate::from_pem(&pem).map_err(|e| file(&e))?;
                params = params.add_root_certificate(ca);
            }
            params.build().map_err(|e| format!("tls: {e}"))
        };
        let (security, port) = match s.tls {
            SmtpTls::Starttls => (Tls::Required(tls()?), 587),
            SmtpTls::Tls => (Tls::Wrapper(tls()?), 465),
            SmtpTls::None => (Tls::None, 25),
        };
        let mut builder = Transport::builder_dangerous(&s.host)
            .tls(security)
            .port(port)
            .timeout(Some(TIMEOUT));
        if let Some(port) = s.port {
            builder = builder.port(port);
        }
        match (&s.username, &s.password) {
            (Some(u), Some(p)) => {
                builder = builder.credentials(Credentials::new(u.clone(), p.clone()))
            }
            (None, None) => {}
            _ => return Err("username and password: give both or neither".into()),
        }
        Ok(Email {
            transport: builder.build(),
            from,
            to,
        })
    }
}

#[async_trait]
impl Notifier for Email {
    fn kind(&self) -> &str {
        "email"
    }

    async fn notify(&self, n: &Notification) -> Result<Value, BoxError> {
        use lettre::AsyncTransport;
        use lettre::message::header::ContentType;
        let subject = n.title.clone().unwrap_or_else(|| {
            n.message
                .lines()
                .next()
                .unwrap_or_default()
                .chars()
                .take(80)
                .collect()
        });
        let mut body = n.message.clone();
        if let Some(u) = &n.url {
            body.push_str(&format!("\n\n{u}"));
        }
        let mut message = lettre::Message::builder()
            .from(self.from.clone())
            .subject(subject)
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            message = message.to(to.clone());
        }
        if n.priority >= Priority::High {
            message = message.header(Importance);
        }
        let message = message
            .body(body)
            .map_err(|e| format!("building the e-mail: {e}"))?;
        let response = self
            .transport
            .send(message)
            .await
            .map_err(|e| match e.status() {
                Some(code) => format!("the SMTP server refused the e-mail ({code}): {e}"),
                None => format!("SMTP: {e}"),
            })?;
        Ok(json!({
            "code": response.code().to_string(),
            "message": response.message().collect::<Vec<_>>().join(" "),
        }))
    }
}

/// `Importance: high` (RFC 2156), which mail clients show as a flag.
#[derive(Debug, Clone, Copy)]
struct Importance;

impl lettre::message::header::Header for Importance {
    fn name() -> lettre::message::header::HeaderName {
        lettre::message::header::HeaderName::new_from_ascii_str("Importance")
    }

    fn parse(_: &str) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        Ok(Importance)
    }

    fn display(&self) -> lettre::message::header::HeaderValue {
        lettre::message::header::HeaderValue::new(Self::name(), "high".to_owned())
    }
}
