//! [`TailchatSettings`]: a bot's settings with the keys of a configuration file.

use serde::Deserialize;

use super::TailchatConfig;

/// A Tailchat open-platform bot as a configuration file describes it (`[tailchat.<name>]` in
/// the server's file); [`channel_config`](TailchatSettings::channel_config) makes the
/// channel's configuration.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TailchatSettings {
    /// The Tailchat server.
    pub api_base: String,
    /// The open app's id.
    pub app_id: String,
    /// The open app's secret.
    pub app_secret: String,
    /// The `token` query parameter of the callback URL given to Tailchat.
    pub callback_token: String,
    /// Most messages sent per second (default 10).
    #[serde(default = "sends")]
    pub sends_per_second: u32,
}

fn sends() -> u32 {
    10
}

impl std::fmt::Debug for TailchatSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret and the callback token are secrets.
        f.debug_struct("TailchatSettings")
            .field("api_base", &self.api_base)
            .field("app_id", &self.app_id)
            .finish_non_exhaustive()
    }
}

impl TailchatSettings {
    /// The channel `name`'s configuration (checked by
    /// [`Tailchat::new`](super::Tailchat::new)).
    pub fn channel_config(&self, name: &str) -> TailchatConfig {
        TailchatConfig {
            name: name.to_owned(),
            api_base: self.api_base.clone(),
            app_id: self.app_id.clone(),
            app_secret: self.app_secret.clone(),
            callback_token: self.callback_token.clone(),
            sends_per_second: self.sends_per_second,
        }
    }
}
