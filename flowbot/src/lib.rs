//! # FlowBot
//!
//! Chatbots and workflow automation for Rust applications, in one crate: the parts you need
//! are picked by feature.
//!
//! | feature | what it adds |
//! |---|---|
//! | `sqlite` (default) | the embedded SQLite store ([`store::SqliteStore`]) |
//! | `postgres` | the PostgreSQL store |
//! | `telegram`, `slack`, `discord`, `tailchat` | those platforms' channels ([`channels`]) |
//! | `web`, `webhook`, `console` | web chat, generic webhooks, the terminal |
//! | `notifiers` | ntfy, Pushover, Slack webhooks, JSON webhooks, e-mail |
//! | `http` | the `http_request` action, through the outbound network guard |
//! | `workflows` | DAG workflows: definitions in YAML or JSON, the engine on the task queue, triggers ([`core::workflow`]) |
//! | `rules` | rule files: conditions, templates, dialogs |
//! | `scripts` | rhai scripts in rule files (with `rules`), and in workflow nodes with `workflows` |
//! | `routes` | the HTTP routes of a channel of your own ([`channels::Built`]); every HTTP-fed platform enables it |
//! | `llm` | language models, tools and the assistant |
//! | `knowledge` | the knowledge base: documents chunked and embedded into the embedded vector store, hybrid search, cited answers (`flowbot::llm::knowledge`; docs/knowledge.md) |
//! | `qdrant` | the Qdrant vector store (`flowbot::store::qdrant`) |
//! | `gpu` | local inference on libtorch: sentence embeddings, the intent classifier, dynamic batching, CUDA (`flowbot::gpu`; needs libtorch 2.11, see docs/gpu.md) |
//! | `server` | what `flowbot-server` runs, as a library: the HTTP API, channels from a configuration file, metrics, the embedded agent |
//!
//! A Telegram bot with one Rust command (`cargo add flowbot -F telegram`; compiled in the
//! repository as `examples/telegram.rs`):
//!
//! ```ignore
//! use std::sync::Arc;
//!
//! use flowbot::prelude::*;
//!
//! #[tokio::main]
//! async fn main() -> Result<(), BoxError> {
//!     let store = Arc::new(SqliteStore::open_in_dir("data").await?);
//!     let config = TelegramConfig::polling("telegram", std::env::var("TELEGRAM_TOKEN")?);
//!     let (_telegram, channel) = Telegram::connect(store.clone(), config).await?;
//!     let handlers = Handlers::new(()).command("ping", |_cx| async { Ok(Reply::text("pong")) });
//!     let bot = Bot::builder().store(store).channel(channel).router(handlers).build()?;
//!     bot.run(flowbot::stop_on_signals()).await?;
//!     Ok(())
//! }
//! ```
//!
//! The guides are in the repository's `docs/`: embedding (handlers, errors, the server as a
//! library), the configuration file, rules, workflows, the task queue, each channel.
#![cfg_attr(docsrs, feature(doc_cfg))]

pub use flowbot_core as core;
pub use flowbot_core::{
    Bot, BotBuilder, BoxError, CancellationToken, Channel, ChannelListener, ChannelSender, Error,
    Event, FromArgs, HandlerCx, HandlerError, HandlerResult, Handlers, InProcess, Message,
    Outbound, Permanent, Refusal, Reply, Router, Store, Transient, Turn, stop_on_signals,
};

/// Storage backends: SQLite (`sqlite`) and PostgreSQL (`postgres`).
pub use flowbot_store as store;

/// Channels: each platform behind its feature.
pub use flowbot_channels as channels;

/// Rule files (`rules`).
#[cfg(feature = "rules")]
#[cfg_attr(docsrs, doc(cfg(feature = "rules")))]
pub use flowbot_rules as rules;

/// Language models, tools and the assistant (`llm`).
#[cfg(feature = "llm")]
#[cfg_attr(docsrs, doc(cfg(feature = "llm")))]
pub use flowbot_llm as llm;

/// Local inference on libtorch (`gpu`): encoders, the intent classifier, dynamic batching.
#[cfg(feature = "gpu")]
#[cfg_attr(docsrs, doc(cfg(feature = "gpu")))]
pub use flowbot_gpu as gpu;

/// What `flowbot-server` runs, as a library (`server`): see `server::run::Server`.
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub use flowbot_server as server;

/// What a bot program usually needs, in one `use flowbot::prelude::*;`.
pub mod prelude {
    pub use flowbot_core::{
        Bot, BoxError, CancellationToken, Channel, Event, HandlerCx, HandlerResult, Handlers,
        Outbound, Permanent, Refusal, Reply, Store, Transient,
    };

    pub use flowbot_channels::{Built, ChannelSpec, Setup};
    pub use flowbot_core::extract::{Args, Db, Session, State, Text, handler};

    #[cfg(feature = "sqlite")]
    pub use flowbot_store::SqliteStore;

    #[cfg(feature = "postgres")]
    pub use flowbot_store::PostgresStore;

    #[cfg(feature = "telegram")]
    pub use flowbot_channels::telegram::{Telegram, TelegramConfig};

    #[cfg(feature = "slack")]
    pub use flowbot_channels::slack::{Slack, SlackConfig};

    #[cfg(feature = "discord")]
    pub use flowbot_channels::discord::{Discord, DiscordConfig};

    #[cfg(feature = "tailchat")]
    pub use flowbot_channels::tailchat::{Tailchat, TailchatConfig};

    #[cfg(feature = "web")]
    pub use flowbot_channels::web::WebChat;
}
