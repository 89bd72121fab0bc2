//! [`Error`]: the crate's one error type, returned by every channel's constructor and
//! [`ChannelSpec::build`](crate::ChannelSpec::build).

use std::time::Duration;

use flowbot_core::{BoxError, Permanent, SettingsError, StoreError, Transient};

/// Why a channel could not be built or could not do what it was asked (declare the bot's
/// commands, say). It names the channel, keeps its cause as [`source`](std::error::Error::source),
/// and says whether another attempt can help ([`is_permanent`](Error::is_permanent)).
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
    /// [`Permanent`](flowbot_core::Permanent) or [`Transient`](flowbot_core::Transient) error
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
    /// [`Permanent`](flowbot_core::Permanent) or [`Transient`](flowbot_core::Transient) to
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

    /// Whether trying again cannot help: wrong settings, or a platform's refusal that will
    /// not change (an unknown chat, a token the platform rejects for good).
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
    /// Core's channel error, keeping this one as its source, so core's classification
    /// (permanent, transient, `Retry-After`) agrees with [`Error::is_permanent`].
    fn from(e: Error) -> Self {
        match e {
            Error::Settings { ref channel, .. } => {
                flowbot_core::Error::channel(channel.clone(), Permanent::new(e))
            }
            Error::Store { source, .. } => flowbot_core::Error::Store(source),
            Error::Platform { ref channel, .. } => flowbot_core::Error::channel(channel.clone(), e),
        }
    }
}
