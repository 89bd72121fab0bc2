//! [`DiscordSettings`]: an application's settings with the keys of a configuration file.

use serde::Deserialize;

use super::{DEFAULT_API_BASE, DiscordConfig, gateway};
use crate::SettingsError;

/// A Discord application as a configuration file describes it (`[discord.<name>]` in the
/// server's file): over the gateway, the HTTP interactions endpoint, or both.
/// [`channel_config`](DiscordSettings::channel_config) checks it and names the key that is
/// wrong.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscordSettings {
    /// The bot token.
    pub bot_token: String,
    /// The application id.
    pub application_id: String,
    /// The application's public key (hex): with it, the interactions endpoint is served.
    #[serde(default)]
    pub public_key: Option<String>,
    /// API base URL (default `https://discord.com/api/v10`); the gateway's URL comes from its
    /// `GET /gateway/bot`.
    #[serde(default = "api_base")]
    pub api_base: String,
    /// Connect to the gateway (default true).
    #[serde(default = "yes")]
    pub gateway: bool,
    /// How many shards the bot runs in all (default 1).
    #[serde(default = "one")]
    pub gateway_shards: u32,
    /// The gateway intents, by Discord's names in lower case (default:
    /// [`gateway::DEFAULT_INTENTS`]).
    #[serde(default)]
    pub gateway_intents: Option<Vec<String>>,
    /// Seconds a dead process keeps a shard's lease before another takes over (default 15,
    /// 3 to 3600; renewed every third of it).
    #[serde(default = "crate::adapter::default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
}

fn api_base() -> String {
    DEFAULT_API_BASE.into()
}

fn yes() -> bool {
    true
}

fn one() -> u32 {
    1
}

impl std::fmt::Debug for DiscordSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret.
        f.debug_struct("DiscordSettings")
            .field("application_id", &self.application_id)
            .field("api_base", &self.api_base)
            .field("gateway", &self.gateway)
            .field("gateway_shards", &self.gateway_shards)
            .finish_non_exhaustive()
    }
}

impl DiscordSettings {
    /// Settings for an application served over the interactions endpoint only.
    pub fn interactions_only(
        bot_token: String,
        application_id: String,
        public_key: String,
        api_base: String,
    ) -> DiscordSettings {
        DiscordSettings {
            bot_token,
            application_id,
            public_key: Some(public_key),
            api_base,
            gateway: false,
            gateway_shards: 1,
            gateway_intents: None,
            lease_ttl_secs: crate::adapter::default_lease_ttl_secs(),
        }
    }

    /// Settings for an application served over the gateway only (one shard, the default
    /// intents).
    pub fn gateway_only(bot_token: String, application_id: String, api_base: String) -> Self {
        DiscordSettings {
            public_key: None,
            gateway: true,
            ..Self::interactions_only(bot_token, application_id, String::new(), api_base)
        }
    }

    /// The channel `name`'s configuration; the error names the key that is wrong.
    pub fn channel_config(&self, name: &str) -> Result<DiscordConfig, SettingsError> {
        let gateway = if self.gateway {
            let lease = crate::adapter::lease_from_secs(self.lease_ttl_secs)?;
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
        Ok(DiscordConfig {
            name: name.to_owned(),
            bot_token: self.bot_token.clone(),
            application_id: self.application_id.clone(),
            public_key: self.public_key.clone(),
            api_base: self.api_base.clone(),
            gateway,
        })
    }
}
