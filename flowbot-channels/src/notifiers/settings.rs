//! [`NotifierSettings`]: a notifier as a configuration file describes it.

use std::sync::Arc;

use flowbot_core::Notifier;
use serde::Deserialize;

use super::{Email, EmailSettings, JsonWebhook, Ntfy, Pushover, SlackWebhook};
use crate::SettingsError;

/// A notifier for the `notify` action as a configuration file describes it
/// (`[notifiers.<name>]` in the server's file), by `kind`; [`notifier`](Self::notifier) makes
/// it.
///
/// ```
/// let settings: flowbot_channels::notifiers::NotifierSettings = serde_json::from_value(
///     serde_json::json!({ "kind": "ntfy", "topic": "deploys" }),
/// )?;
/// assert_eq!(settings.url(), "https://ntfy.sh");
/// let notifier = settings.notifier()?;
/// # let _ = notifier;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum NotifierSettings {
    /// ntfy: `base_url` (default `https://ntfy.sh`), `topic`, optional `token`.
    Ntfy {
        /// The server.
        #[serde(default = "ntfy_url")]
        base_url: String,
        /// The topic.
        topic: String,
        /// Access token for a protected topic.
        #[serde(default)]
        token: Option<String>,
    },
    /// A Slack incoming webhook: `url`.
    SlackWebhook {
        /// The webhook URL Slack gave.
        url: String,
    },
    /// Pushover: `token` (application), `user` (user or group key), `base_url` (default
    /// `https://api.pushover.net`).
    Pushover {
        /// The API.
        #[serde(default = "pushover_url")]
        base_url: String,
        /// Application token.
        token: String,
        /// User or group key.
        user: String,
    },
    /// E-mail over SMTP: `host`, `port`, `tls` (`starttls`, `tls` or `none`), `username`,
    /// `password`, `from`, `to` (a list), `ca_file`.
    Email(EmailSettings),
    /// A JSON `POST` to `url`, signed with `secret` when given.
    Webhook {
        /// Where.
        url: String,
        /// HMAC secret.
        #[serde(default)]
        secret: Option<String>,
    },
}

fn ntfy_url() -> String {
    "https://ntfy.sh".into()
}

fn pushover_url() -> String {
    "https://api.pushover.net".into()
}

impl NotifierSettings {
    /// The URL it posts to (empty for e-mail).
    pub fn url(&self) -> &str {
        match self {
            NotifierSettings::Ntfy { base_url, .. }
            | NotifierSettings::Pushover { base_url, .. } => base_url,
            NotifierSettings::SlackWebhook { url } | NotifierSettings::Webhook { url, .. } => url,
            NotifierSettings::Email(_) => "",
        }
    }

    /// The notifier; an error names the setting that is wrong.
    pub fn notifier(&self) -> Result<Arc<dyn Notifier>, SettingsError> {
        let url = self.url();
        let is_web = url.starts_with("http://") || url.starts_with("https://");
        if !is_web && !matches!(self, NotifierSettings::Email(_)) {
            // The URL may be a secret (a Slack webhook's): not repeated here.
            return Err("the URL must start with http:// or https://".into());
        }
        #[cfg(not(feature = "webhook"))]
        if let NotifierSettings::Webhook {
            secret: Some(_), ..
        } = self
        {
            return Err(
                "secret: signing needs flowbot-channels' webhook feature, which this build leaves out"
                    .into(),
            );
        }
        Ok(match self {
            NotifierSettings::Ntfy {
                base_url,
                topic,
                token,
            } => Arc::new(Ntfy::new(base_url, topic, token.clone())),
            NotifierSettings::SlackWebhook { url } => Arc::new(SlackWebhook::new(url)),
            NotifierSettings::Pushover {
                base_url,
                token,
                user,
            } => Arc::new(Pushover::new(base_url, token, user)),
            NotifierSettings::Webhook { url, secret } => {
                Arc::new(JsonWebhook::new(url, secret.clone()))
            }
            NotifierSettings::Email(settings) => Arc::new(Email::new(settings)?),
        })
    }
}

impl std::fmt::Debug for NotifierSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens and webhook URLs are secrets: only the kind is shown.
        let kind = match self {
            NotifierSettings::Ntfy { .. } => "ntfy",
            NotifierSettings::SlackWebhook { .. } => "slack_webhook",
            NotifierSettings::Pushover { .. } => "pushover",
            NotifierSettings::Webhook { .. } => "webhook",
            NotifierSettings::Email(_) => "email",
        };
        f.debug_struct("NotifierSettings")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}
