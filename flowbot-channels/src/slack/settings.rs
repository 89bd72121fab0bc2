//! [`SlackSettings`]: an app's settings with the keys of a configuration file.

use serde::Deserialize;

use super::{DEFAULT_API_BASE, SlackConfig};

/// A Slack app as a configuration file describes it (`[slack.<name>]` in the server's file);
/// [`channel_config`](SlackSettings::channel_config) makes the channel's configuration.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackSettings {
    /// The bot token (`xoxb-…`).
    pub bot_token: String,
    /// The app's signing secret.
    pub signing_secret: String,
    /// Web API base URL (default `https://slack.com/api`).
    #[serde(default = "api_base")]
    pub api_base: String,
    /// The app-level token (`xapp-…`): the app also receives over Socket Mode.
    #[serde(default)]
    pub app_token: Option<String>,
}

fn api_base() -> String {
    DEFAULT_API_BASE.into()
}

impl std::fmt::Debug for SlackSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The tokens and the signing secret are secrets.
        f.debug_struct("SlackSettings")
            .field("api_base", &self.api_base)
            .finish_non_exhaustive()
    }
}

impl SlackSettings {
    /// The channel `name`'s configuration (checked by [`Slack::new`](super::Slack::new)).
    pub fn channel_config(&self, name: &str) -> SlackConfig {
        SlackConfig {
            name: name.to_owned(),
            bot_token: self.bot_token.clone(),
            signing_secret: self.signing_secret.clone(),
            api_base: self.api_base.clone(),
            app_token: self.app_token.clone(),
        }
    }
}
