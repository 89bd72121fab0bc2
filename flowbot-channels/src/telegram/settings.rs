//! [`TelegramSettings`]: a bot's settings with the keys of a configuration file.

use serde::Deserialize;

use super::{DEFAULT_API_BASE, Mode, TelegramConfig};
use crate::SettingsError;

/// How a Telegram bot receives updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TelegramMode {
    /// `getUpdates` long polling (one process at a time among those sharing a database).
    #[default]
    Polling,
    /// Telegram POSTs each update to the bot's webhook route.
    Webhook,
}

/// A Telegram bot as a configuration file describes it (`[telegram.<name>]` in the server's
/// file): deserialize it with serde from any format, then [`channel_config`] checks it and
/// names the key that is wrong.
///
/// ```
/// let settings: flowbot_channels::telegram::TelegramSettings =
///     serde_json::from_value(serde_json::json!({ "token": "123456:ABCDEFGHIJKLMNOP" }))?;
/// let config = settings.channel_config("support")?;
/// assert_eq!(config.name, "support");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// [`channel_config`]: TelegramSettings::channel_config
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramSettings {
    /// The bot token from @BotFather.
    pub token: String,
    /// `polling` (default) or `webhook`.
    #[serde(default)]
    pub mode: TelegramMode,
    /// Bot API base URL (default `https://api.telegram.org`).
    #[serde(default = "api_base")]
    pub api_base: String,
    /// Seconds one `getUpdates` call waits (polling; default 30, at most 50).
    #[serde(default = "poll_timeout")]
    pub poll_timeout_secs: u64,
    /// The webhook's secret token (webhook mode; required there).
    #[serde(default)]
    pub secret_token: Option<String>,
    /// The server's public base URL: the webhook is registered at start when given.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Most messages sent per second (default 25).
    #[serde(default = "sends")]
    pub sends_per_second: u32,
    /// Polling: seconds a dead process keeps the polling lease before another takes over
    /// (default 15, 3 to 3600; renewed every third of it).
    #[serde(default = "crate::adapter::default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
}

fn api_base() -> String {
    DEFAULT_API_BASE.into()
}

fn poll_timeout() -> u64 {
    30
}

fn sends() -> u32 {
    25
}

impl std::fmt::Debug for TelegramSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and the secret token are secrets.
        f.debug_struct("TelegramSettings")
            .field("mode", &self.mode)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl TelegramSettings {
    /// The channel `name`'s configuration, checked; the error names the offending key.
    pub fn channel_config(&self, name: &str) -> Result<TelegramConfig, SettingsError> {
        let mode = match self.mode {
            TelegramMode::Polling => Mode::Polling {
                timeout: std::time::Duration::from_secs(self.poll_timeout_secs),
            },
            TelegramMode::Webhook => Mode::Webhook {
                secret_token: self
                    .secret_token
                    .clone()
                    .ok_or("secret_token is required in webhook mode")?,
                public_url: self.public_url.clone(),
            },
        };
        let config = TelegramConfig {
            name: name.to_owned(),
            token: self.token.clone(),
            api_base: self.api_base.clone(),
            mode,
            sends_per_second: self.sends_per_second,
            lease: crate::adapter::lease_from_secs(self.lease_ttl_secs)?,
        };
        config.validate()?;
        Ok(config)
    }
}
