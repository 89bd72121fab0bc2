//! `[telegram.<name>]`, `[slack.<name>]`, `[discord.<name>]` and `[tailchat.<name>]`: the
//! platform channels' settings, each turned into its adapter's configuration (and checked
//! there, so an error names the section).

use serde::Deserialize;

/// `[discord.<name>]`: a Discord application, the channel `<name>`: over the gateway, the
/// HTTP interactions endpoint, or both.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordEntry {
    /// The bot token.
    pub bot_token: String,
    /// The application id.
    pub application_id: String,
    /// The application's public key (hex): with it, `/hooks/discord/<name>/interactions` is
    /// served.
    #[serde(default)]
    pub public_key: Option<String>,
    /// API base URL (default `https://discord.com/api/v10`); the gateway's URL comes from its
    /// `GET /gateway/bot`.
    #[serde(default = "discord_api")]
    pub api_base: String,
    /// Connect to the gateway (default true).
    #[serde(default = "yes")]
    pub gateway: bool,
    /// How many shards the bot runs in all (default 1).
    #[serde(default = "one")]
    pub gateway_shards: u32,
    /// The gateway intents, by Discord's names in lower case (default: guilds,
    /// guild_members, guild_messages, guild_message_reactions, direct_messages,
    /// direct_message_reactions, message_content).
    #[serde(default)]
    pub gateway_intents: Option<Vec<String>>,
    /// Seconds a dead server keeps a shard's lease before another takes over (default 15,
    /// 3 to 3600; renewed every third of it).
    #[serde(default = "lease_ttl")]
    pub lease_ttl_secs: u64,
}

fn discord_api() -> String {
    flowbot_channels::discord::DEFAULT_API_BASE.into()
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl std::fmt::Debug for DiscordEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret.
        f.debug_struct("DiscordEntry")
            .field("application_id", &self.application_id)
            .field("api_base", &self.api_base)
            .field("gateway", &self.gateway)
            .field("gateway_shards", &self.gateway_shards)
            .finish_non_exhaustive()
    }
}

impl DiscordEntry {
    /// Settings for an application served over the interactions endpoint only.
    pub fn interactions_only(
        bot_token: String,
        application_id: String,
        public_key: String,
        api_base: String,
    ) -> DiscordEntry {
        DiscordEntry {
            bot_token,
            application_id,
            public_key: Some(public_key),
            api_base,
            gateway: false,
            gateway_shards: 1,
            gateway_intents: None,
            lease_ttl_secs: lease_ttl(),
        }
    }

    /// Settings for an application served over the gateway only (one shard, the default
    /// intents).
    pub fn gateway_only(bot_token: String, application_id: String, api_base: String) -> Self {
        DiscordEntry {
            public_key: None,
            gateway: true,
            ..Self::interactions_only(bot_token, application_id, String::new(), api_base)
        }
    }

    /// The channel's settings; the error names the key that is wrong.
    pub fn channel_config(
        &self,
        name: &str,
    ) -> Result<flowbot_channels::discord::DiscordConfig, flowbot_channels::SettingsError> {
        use flowbot_channels::discord::gateway;
        let gateway = if self.gateway {
            let lease = lease_timing(self.lease_ttl_secs)?;
            let intents = match &self.gateway_intents {
                Some(names) => gateway::intents(names),
                None => gateway::intents(gateway::DEFAULT_INTENTS),
            }
            .map_err(|e| format!("gateway_intents: {e}"))?;
            Some(gateway::GatewayConfig {
                shards: self.gateway_shards,
                intents,
                lease,
            })
        } else if self.public_key.is_none() {
            return Err(
                "the bot would receive nothing: set gateway = true, public_key, or both".into(),
            );
        } else {
            None
        };
        Ok(flowbot_channels::discord::DiscordConfig {
            name: name.to_owned(),
            bot_token: self.bot_token.clone(),
            application_id: self.application_id.clone(),
            public_key: self.public_key.clone(),
            api_base: self.api_base.clone(),
            gateway,
        })
    }
}

/// `[slack.<name>]`: a Slack app, the channel `<name>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackEntry {
    /// The bot token (`xoxb-…`).
    pub bot_token: String,
    /// The app's signing secret.
    pub signing_secret: String,
    /// Web API base URL (default `https://slack.com/api`).
    #[serde(default = "slack_api")]
    pub api_base: String,
    /// The app-level token (`xapp-…`): the app also receives over Socket Mode.
    #[serde(default)]
    pub app_token: Option<String>,
}

fn slack_api() -> String {
    flowbot_channels::slack::DEFAULT_API_BASE.into()
}

impl std::fmt::Debug for SlackEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and the signing secret are secrets.
        f.debug_struct("SlackEntry")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl SlackEntry {
    /// The channel's settings.
    pub fn channel_config(&self, name: &str) -> flowbot_channels::slack::SlackConfig {
        flowbot_channels::slack::SlackConfig {
            name: name.to_owned(),
            bot_token: self.bot_token.clone(),
            signing_secret: self.signing_secret.clone(),
            api_base: self.api_base.clone(),
            app_token: self.app_token.clone(),
        }
    }
}

/// `[tailchat.<name>]`: a Tailchat open-platform bot, the channel `<name>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailchatEntry {
    /// The Tailchat server.
    pub api_base: String,
    /// The open app's id.
    pub app_id: String,
    /// The open app's secret.
    pub app_secret: String,
    /// The `token` query parameter of the callback URL given to Tailchat.
    pub callback_token: String,
    /// Most messages sent per second (default 10).
    #[serde(default = "tailchat_sends")]
    pub sends_per_second: u32,
}

fn tailchat_sends() -> u32 {
    10
}

impl std::fmt::Debug for TailchatEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the callback token are secrets.
        f.debug_struct("TailchatEntry")
            .field("api_base", &self.api_base)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl TailchatEntry {
    /// The channel's settings.
    pub fn channel_config(&self, name: &str) -> flowbot_channels::tailchat::TailchatConfig {
        flowbot_channels::tailchat::TailchatConfig {
            name: name.to_owned(),
            api_base: self.api_base.clone(),
            app_id: self.app_id.clone(),
            app_secret: self.app_secret.clone(),
            callback_token: self.callback_token.clone(),
            sends_per_second: self.sends_per_second,
        }
    }
}

/// How a Telegram bot receives updates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TelegramMode {
    /// `getUpdates` long polling (one server at a time in distributed mode).
    #[default]
    Polling,
    /// Telegram POSTs to `/hooks/telegram/<name>`.
    Webhook,
}

/// `[telegram.<name>]`: a Telegram bot, the channel `<name>`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelegramEntry {
    /// The bot token from @BotFather.
    pub token: String,
    /// `polling` (default) or `webhook`.
    #[serde(default)]
    pub mode: TelegramMode,
    /// Bot API base URL (default `https://api.telegram.org`).
    #[serde(default = "telegram_api")]
    pub api_base: String,
    /// Seconds one `getUpdates` call waits (polling; default 30, at most 50).
    #[serde(default = "telegram_poll_timeout")]
    pub poll_timeout_secs: u64,
    /// The webhook's secret token (webhook mode; required there).
    pub secret_token: Option<String>,
    /// The server's public base URL: the webhook is registered at start when given.
    pub public_url: Option<String>,
    /// Most messages sent per second (default 25).
    #[serde(default = "telegram_sends")]
    pub sends_per_second: u32,
    /// Polling: seconds a dead server keeps the polling lease before another takes over
    /// (default 15, 3 to 3600; renewed every third of it).
    #[serde(default = "lease_ttl")]
    pub lease_ttl_secs: u64,
}

fn telegram_api() -> String {
    flowbot_channels::telegram::DEFAULT_API_BASE.into()
}

fn telegram_poll_timeout() -> u64 {
    30
}

fn telegram_sends() -> u32 {
    25
}

fn lease_ttl() -> u64 {
    15
}

/// The longest `lease_ttl_secs`: 1 hour.
const MAX_LEASE_TTL_SECS: u64 = 3600;

/// A platform lease of `ttl_secs` (3 to 3600), renewed every third of it.
fn lease_timing(ttl_secs: u64) -> Result<flowbot_core::lease::LeaseTiming, String> {
    if !(3..=MAX_LEASE_TTL_SECS).contains(&ttl_secs) {
        return Err(format!(
            "lease_ttl_secs must be from 3 to {MAX_LEASE_TTL_SECS} (1 hour), got {ttl_secs}"
        ));
    }
    let ttl = std::time::Duration::from_secs(ttl_secs);
    Ok(flowbot_core::lease::LeaseTiming {
        ttl,
        every: ttl / 3,
    })
}

impl std::fmt::Debug for TelegramEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token and the secret token are secrets.
        f.debug_struct("TelegramEntry")
            .field("mode", &self.mode)
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl TelegramEntry {
    /// The channel's settings, checked; the error names the offending field.
    pub fn channel_config(
        &self,
        name: &str,
    ) -> Result<flowbot_channels::telegram::TelegramConfig, flowbot_channels::SettingsError> {
        use flowbot_channels::telegram::{Mode, TelegramConfig};
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
            lease: lease_timing(self.lease_ttl_secs)?,
        };
        config.validate()?;
        Ok(config)
    }
}
