//! [`Error`]: the crate's one error type, returned by every channel's constructor and
//! [`ChannelSpec::build`](crate::ChannelSpec::build).

use std::time::Duration;

use flowbot_core::{BoxError, Permanent, SettingsError, StoreError, Transient};

/// Why a channel could not be built or could not do what it was asked (declare the bot's
/// commands, say). It names the channel, keeps its cause as [`source`](std::error::Error::source),
/// and says whether another attempt can help ([`is_permanent`](Error::is_permanent)). What a
/// channel's sender returns while the bot runs is core's [`flowbot_core::Error`], into which
/// this one converts.
///
/// The platform's own error (Telegram's [`ApiError`](crate::telegram::ApiError), Slack's
/// [`SlackApiError`](crate::slack::SlackApiError)) is in the chain of a
/// [`Platform`](Error::Platform) error, where `downcast_ref` finds it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The channel's settings cannot work (the message names the setting). Permanent: the
    /// same settings fail the same way.
    #[error("channel '{channel}': {source}")]
    Settings {
        /// The channel.
        channel: String,
        /// What is wrong.
        #[source]
        source: SettingsError,
    },
    /// A call to the platform failed: at start (Telegram's `getMe` with a wrong token, its
    /// `setWebhook`), or declaring the bot's commands. The source is a
    /// [`Permanent`] or [`Transient`] error
    /// (with the platform's `Retry-After`) around the platform's own error.
    #[error("channel '{channel}': {call}: {source}")]
    Platform {
        /// The channel.
        channel: String,
        /// The call that failed (`getMe`, `setMyCommands`, `PUT commands`).
        call: String,
        /// What the platform answered, or that it did not.
        #[source]
        source: BoxError,
    },
    /// The store failed (reading the web chat's token secret, say).
    #[error("channel '{channel}': {source}")]
    Store {
        /// The channel.
        channel: String,
        /// The store's error.
        #[source]
        source: StoreError,
    },
}

impl Error {
    /// Settings of `channel` that cannot work, `message` naming the setting.
    pub fn settings(channel: impl Into<String>, message: impl Into<SettingsError>) -> Self {
        Error::Settings {
            channel: channel.into(),
            source: message.into(),
        }
    }

    /// A failed `call` to `channel`'s platform; wrap `source` in
    /// [`Permanent`] or [`Transient`] to
    /// say whether another attempt can help.
    pub fn platform(
        channel: impl Into<String>,
        call: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Platform {
            channel: channel.into(),
            call: call.into(),
            source: source.into(),
        }
    }

    /// The channel the error is about.
    pub fn channel(&self) -> &str {
        match self {
            Error::Settings { channel, .. }
            | Error::Platform { channel, .. }
            | Error::Store { channel, .. } => channel,
        }
    }

    /// Whether trying again cannot help: wrong settings, or a platform's refusal of the
    /// request itself (a 4xx other than 401, 408, 409, 425 and 429). A token the platform
    /// does not accept (401) is not permanent: an operator can fix it.
    pub fn is_permanent(&self) -> bool {
        match self {
            Error::Settings { .. } => true,
            Error::Platform { source, .. } => {
                chain(source.as_ref()).any(|l| l.downcast_ref::<Permanent>().is_some())
            }
            Error::Store { source, .. } => {
                matches!(source, StoreError::Invalid(_) | StoreError::Corrupt(_))
            }
        }
    }

    /// How long the platform asked to wait before the next attempt, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Error::Platform { source, .. } => chain(source.as_ref()).find_map(|l| {
                l.downcast_ref::<Transient>()
                    .and_then(Transient::requested_delay)
            }),
            _ => None,
        }
    }
}

/// `e` and its sources, outermost first.
fn chain<'a>(
    e: &'a (dyn std::error::Error + Send + Sync + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    let first: &(dyn std::error::Error + 'static) = e;
    std::iter::successors(Some(first), |l| l.source())
}

impl From<Error> for flowbot_core::Error {
    /// Core's channel error for the same channel, its source this error's cause (so the
    /// channel is named once), classified as [`Error::is_permanent`] says.
    fn from(e: Error) -> Self {
        match e {
            Error::Settings { channel, source } => {
                flowbot_core::Error::channel(channel, Permanent::new(source))
            }
            Error::Platform {
                channel,
                call,
                source,
            } => flowbot_core::Error::channel(channel, Call { call, source }),
            Error::Store { channel, source } => flowbot_core::Error::channel(channel, source),
        }
    }
}

/// A failed call to a platform, as the source of core's channel error.
#[derive(Debug, thiserror::Error)]
#[error("{call}: {source}")]
struct Call {
    call: String,
    #[source]
    source: BoxError,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification_survives_the_conversion_into_core_and_names_the_channel_once() {
        let settings = Error::settings("tg", "token is empty");
        assert!(settings.is_permanent());
        assert_eq!(settings.retry_after(), None);
        let core = flowbot_core::Error::from(settings);
        assert!(core.is_permanent());
        assert_eq!(core.to_string(), "channel 'tg': token is empty");

        let wait = Duration::from_secs(120);
        let limited = Error::platform(
            "tg",
            "getMe",
            Transient::new("Telegram answered 429").retry_after(wait),
        );
        assert!(!limited.is_permanent());
        assert_eq!(limited.retry_after(), Some(wait));
        assert_eq!(
            limited.to_string(),
            "channel 'tg': getMe: Telegram answered 429"
        );
        let core = flowbot_core::Error::from(limited);
        assert!(core.is_transient() && !core.is_permanent());
        assert_eq!(core.retry_after(), Some(wait));
        assert_eq!(
            core.to_string(),
            "channel 'tg': getMe: Telegram answered 429"
        );

        let refused = Error::platform(
            "sl",
            "chat.postMessage",
            Permanent::new("channel_not_found"),
        );
        assert!(refused.is_permanent());
        assert!(flowbot_core::Error::from(refused).is_permanent());

        let store = Error::Store {
            channel: "web".into(),
            source: StoreError::Unavailable("connection refused".into()),
        };
        assert!(!store.is_permanent());
        assert!(flowbot_core::Error::from(store).is_transient());
    }
}
