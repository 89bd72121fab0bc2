//! # flowbot-channels
//!
//! Chat platform adapters for FlowBot, one feature-gated module each:
//!
//! - [`web`] (feature `web`): web chat — a page at `/chat` and a WebSocket at `/ws/chat`;
//! - [`webhook`] (feature `webhook`): the generic webhook channel —
//!   `POST /hooks/webhook/{channel}`, acknowledged once durably stored, replies POSTed to a
//!   callback URL through the task queue, optional HMAC-SHA256 signatures both ways;
//! - [`console`] (feature `console`): stdin and stdout, for trying a bot in a terminal;
//! - [`telegram`] (feature `telegram`): Telegram's Bot API, by long polling or webhook;
//! - [`tailchat`] (feature `tailchat`): Tailchat's open platform bots;
//! - [`slack`] (feature `slack`): Slack's Events API, interactivity and slash commands;
//! - [`discord`] (feature `discord`): Discord over the gateway (sharded, resumable) or HTTP
//!   interactions: messages, slash commands, buttons, member joins, reactions;
//! - [`http_action`] (feature `http`): the `http_request` action for rules and workflows;
//! - [`notifiers`] (feature `notifiers`): send-only notifiers (ntfy, Slack incoming webhooks,
//!   Pushover, e-mail, signed webhooks) for the `notify` action.
//!
//! Every feature builds alone; the default enables all of them.
//!
//! Every channel is built the same way: its settings implement [`ChannelSpec`], whose
//! [`build`](ChannelSpec::build) gives a [`Built`] — the channel for the bot, the HTTP routes
//! it receives on (an axum `Router`, feature `routes`), its counters and its command menu.
//! `flowbot-server` builds and mounts any spec, a third party's as well as the built-in ones.
//! Building a channel, or asking it for anything outside sending, fails with an [`Error`];
//! a send fails with core's error, which the crate's converts into.
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(
    feature = "telegram",
    feature = "tailchat",
    feature = "slack",
    feature = "discord"
))]
mod adapter;
#[cfg(feature = "console")]
pub mod console;
#[cfg(feature = "discord")]
pub mod discord;
#[cfg(feature = "http")]
pub mod http_action;
#[cfg(feature = "notifiers")]
pub mod notifiers;
#[cfg(any(
    feature = "web",
    feature = "webhook",
    feature = "telegram",
    feature = "tailchat",
    feature = "slack",
    feature = "discord"
))]
pub mod problem;
#[cfg(feature = "slack")]
pub mod slack;
#[cfg(feature = "tailchat")]
pub mod tailchat;
#[cfg(feature = "telegram")]
pub mod telegram;
#[cfg(feature = "web")]
pub mod web;
#[cfg(feature = "webhook")]
pub mod webhook;

pub mod retry_after;

mod error;
mod spec;

pub use error::Error;
pub use spec::{Built, ChannelSpec, CommandMenu, Ready, Setup};

/// Settings a channel cannot work with: the message names the setting. Returned by the
/// settings' `validate` and `channel_config`; a constructor returns it inside
/// [`Error::Settings`], with the channel's name.
pub use flowbot_core::SettingsError;

/// What a platform adapter counts.
#[derive(Debug, Default)]
pub struct AdapterCounters {
    /// Inbound events stored for the pipeline.
    pub accepted: std::sync::atomic::AtomicU64,
    /// Inbound traffic ignored, by reason (update kind, event type, …).
    pub ignored: flowbot_core::metrics::LabeledCounter,
    /// Failed calls to the platform's API.
    pub api_errors: std::sync::atomic::AtomicU64,
}

/// A platform adapter's counters, for the server's metrics.
pub trait AdapterStats: Send + Sync {
    /// The channel's name.
    fn channel(&self) -> &str;
    /// What it counted.
    fn counters(&self) -> &AdapterCounters;
}

/// Checks an identifier that arrives from outside (a user or conversation id): 1 to `max`
/// characters of `A-Z a-z 0-9 _ - . : @`.
pub fn valid_id(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':' | '@'))
}
