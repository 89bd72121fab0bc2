//! # flowbot-core
//!
//! The types and traits every FlowBot crate meets through, and the parts that need nothing
//! external:
//!
//! - platform-neutral [`Message`], [`Event`] and [`Outbound`];
//! - channels: [`ChannelListener`] (inbound, onto the [`Inbox`]) and [`ChannelSender`]
//!   (outbound), and the [`InProcess`] channel for tests and embedding;
//! - the [`Pipeline`]: middleware ([`Dedupe`], [`RateLimit`]), inbound persistence, the
//!   session, the [`Router`] (Rust [`Handlers`] with typed state, or a rules engine), delivery,
//!   and an `on_error` hook;
//! - the [`ActionRegistry`] with JSON-Schema-checked input and output;
//! - the durable task scheduler's executor side in [`task`]: handlers, the [`WorkerPool`](task::WorkerPool)
//!   with leases and heartbeats, retries, dead letters, concurrency limits and cron;
//! - the [`Bot`] builder that puts it together;
//! - the AI traits other crates implement: [`ChatModel`] and [`Embedder`] (in [`llm`]) and
//!   [`Classifier`];
//! - with the `net` feature, the outbound network guard in the `net` module: what HTTP
//!   calls from runtime-editable URLs may reach.
//!
//! With the `jwt` feature, [`jwt`] verifies JSON Web Tokens (shared secrets or a JWKS URL).
//! With the `secrets` feature, `secrets` keeps named secrets AES-256-GCM encrypted in the
//! store, for workflows' `{{ secrets.NAME }}`, under a key ring that rotates.
//!
//! Storage backends live in `flowbot-store`.
//!
//! ## Task delivery guarantees
//!
//! At least once: a claimed task is leased to one worker, which extends the lease while the
//! handler runs. If the worker dies, the lease expires and any worker's recovery returns the
//! task to the queue (counting the attempt); a worker whose process ends where other pools
//! see its liveness lock (the same host) has its tasks returned at once (see
//! [`WorkerConfig::liveness`](task::WorkerConfig::liveness)). Completion is fenced by the lease, so a task is
//! recorded done once. Handlers get the attempt number and an idempotency key.
#![cfg_attr(docsrs, feature(doc_cfg))]

mod action;
mod ai;
pub mod auth;
mod bot;
mod channel;
pub mod clock;
mod commands;
mod draft;
mod error;
pub mod extract;
mod in_process;
#[cfg(feature = "jwt")]
pub mod jwt;
pub mod lease;
pub mod llm;
mod message;
pub mod metrics;
mod middleware;
#[cfg(feature = "net")]
pub mod net;
mod notify;
mod pipeline;
mod router;
#[cfg(feature = "secrets")]
pub mod secrets;
mod session;
mod signals;
pub mod store;
pub mod task;
pub mod templates;
pub mod vector;
pub mod workflow;

pub use action::{Action, ActionContext, ActionInfo, ActionRegistry};
pub use ai::{Classifier, Label};
pub use bot::{Bot, BotBuilder};
pub use channel::{Capabilities, Channel, ChannelListener, ChannelSender, Inbox, Senders, SentId};
pub use commands::{CommandInfo, CommandParam};
pub use draft::{DEFAULT_EDIT_INTERVAL, Draft, DraftRef, Streaming};
pub use error::{
    BoxError, Error, HandlerError, HandlerResult, Permanent, Refusal, Result, SettingsError,
    StoreError, TaskError, Transient,
};
pub use in_process::{InProcess, InProcessHandle};
pub use llm::{Assistant, ChatModel, Embedder, ModelError};
pub use message::{
    Attachment, Button, ChannelName, ConversationId, Event, Format, Interaction, Message,
    MessageId, Outbound, Role, Sender, Target, UserId,
};
pub use middleware::{Dedupe, Flow, Middleware, RateLimit};
pub use notify::{Notification, Notifier, Priority};
pub use pipeline::{
    DELIVER_TASK, ErrorHook, FailureReply, HandleFailure, INBOUND_TASK, Pipeline, PipelineError,
    PipelineStats, Stage,
};
pub use router::{FromArgs, HandlerCx, Handlers, Reply, Router, Services, Turn};
pub use session::{DialogState, Session, SessionHandle, SessionKey};
pub use signals::{cancel_on_signals, stop_on_signals};
pub use store::{Bus, BusMessage, ChannelStore, SharedKv, Store};
pub use vector::{VectorError, VectorStore};

/// Re-exported so users name the same versions FlowBot uses.
pub use async_trait::async_trait;
pub use tokio_util::sync::CancellationToken;
