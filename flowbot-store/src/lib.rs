//! # flowbot-store
//!
//! Storage backends for FlowBot, each implementing every storage trait of `flowbot-core`
//! (conversations, sessions, key-value data, the durable task queue, schedules, workflow
//! definitions and runs, leases, the audit log), with its own migrations applied on open:
//!
//! - [`SqliteStore`] (feature `sqlite`, default): the embedded single-node store — one file
//!   under a data directory, WAL journal, one writer at a time (a writer thread group-commits
//!   the hot writes on its own connection, enqueues first: while they flood in, processing
//!   gets [`SqliteOptions::work_share`] of its time) and batched transactions;
//! - `PostgresStore` (feature `postgres`): many servers and agents sharing one database —
//!   batched claims with `FOR UPDATE SKIP LOCKED`, `LISTEN/NOTIFY` to wake idle workers (with
//!   polling as the fallback);
//! - [`MemoryStore`] (always built): everything in this process's memory, for tests, examples
//!   and single-process applications that need no durability.
//!
//! [`connect`] picks the backend from a URL.
//!
//! With neither database feature the crate builds with the in-memory backend alone, and
//! [`connect`] opens `memory:` only; the code the database backends share (row decoding,
//! error mapping, migrations) is then unused.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, unused_imports, unused_macros)
)]

use std::sync::Arc;

use flowbot_core::store::{Conversation, Direction, StoredMessage};
use flowbot_core::{ChannelName, ConversationId, Session, Store, StoreError};
use serde_json::Value;

mod audit;
mod common;
#[cfg(feature = "test-util")]
#[cfg_attr(docsrs, doc(cfg(feature = "test-util")))]
pub mod conformance;
mod memory;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "qdrant")]
#[cfg_attr(docsrs, doc(cfg(feature = "qdrant")))]
pub mod qdrant;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(feature = "vectors")]
#[cfg_attr(docsrs, doc(cfg(feature = "vectors")))]
pub mod vectors;
mod workflow;

pub use memory::MemoryStore;
#[cfg(feature = "postgres")]
pub use postgres::{PostgresOptions, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::{DEFAULT_WORK_SHARE, SqliteOptions, SqliteStore};

/// Errors opening a store. Errors of running operations are core's [`StoreError`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL names no backend this build supports, or is malformed.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// The database could not be opened or reached.
    #[error("cannot open database: {0}")]
    Open(String),
    /// An option is out of range (e.g. the SQLite `work_share` not from 0.01 to 1).
    #[error("invalid store option: {0}")]
    InvalidOption(String),
    /// A migration failed.
    #[error("migration {version} failed: {detail}")]
    Migration {
        /// The migration's version.
        version: i64,
        /// The database's error.
        detail: String,
    },
}

/// Open the store a URL names: `sqlite://path/to/file.db`, `postgres://…`
/// (`postgresql://` too), or `memory:` (`memory://` too) for a fresh, empty [`MemoryStore`]
/// (each call opens a new one; nothing is shared between two of them). Migrations are
/// applied.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>, Error> {
    let scheme = url.split_once(':').map(|(s, _)| s).unwrap_or_default();
    match scheme {
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(Arc::new(SqliteStore::open_url(url).await?)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(Arc::new(PostgresStore::connect(url).await?)),
        "memory" => match url.strip_prefix("memory:") {
            Some("" | "//") => Ok(Arc::new(MemoryStore::new())),
            _ => Err(Error::InvalidUrl(format!(
                "'{url}': an in-memory store is named 'memory:' alone"
            ))),
        },
        "" => Err(Error::InvalidUrl(format!(
            "'{url}' has no scheme (expected sqlite://, postgres:// or memory:)"
        ))),
        other => Err(Error::InvalidUrl(format!(
            "scheme '{other}' is not supported by this build (enabled: {})",
            enabled_backends()
        ))),
    }
}

fn enabled_backends() -> &'static str {
    match (cfg!(feature = "sqlite"), cfg!(feature = "postgres")) {
        (true, true) => "sqlite, postgres, memory",
        (true, false) => "sqlite, memory",
        (false, true) => "postgres, memory",
        (false, false) => "memory",
    }
}

/// A database URL fit for logs and error messages: the password (everything between `://`
/// and the last `@`) is replaced with `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***@{}", &url[..s], &url[at + 1..]),
        _ => url.to_owned(),
    }
}

pub(crate) fn check_bus_payload(payload: &str) -> Result<(), StoreError> {
    if payload.len() > flowbot_core::store::MAX_BUS_PAYLOAD {
        return Err(StoreError::Invalid(format!(
            "bus payload is {} bytes, over the limit of {}",
            payload.len(),
            flowbot_core::store::MAX_BUS_PAYLOAD
        )));
    }
    Ok(())
}

pub(crate) fn new_message_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub(crate) fn session_conflict(s: &Session) -> StoreError {
    StoreError::Conflict(format!(
        "session {}/{}/{} was saved by someone else (expected version {})",
        s.key.channel, s.key.conversation, s.key.user, s.version
    ))
}

#[allow(clippy::too_many_arguments)] // one row's columns, in one place
pub(crate) fn stored_message(
    channel: &ChannelName,
    conversation: &ConversationId,
    seq: i64,
    direction: &str,
    sender: Option<String>,
    message_id: String,
    text: String,
    body: &str,
    at: i64,
) -> Result<StoredMessage, StoreError> {
    let direction = match direction {
        "inbound" => Direction::Inbound,
        "outbound" => Direction::Outbound,
        other => {
            return Err(StoreError::Corrupt(format!(
                "unknown message direction '{other}'"
            )));
        }
    };
    Ok(StoredMessage {
        seq,
        channel: channel.clone(),
        conversation: conversation.clone(),
        direction,
        message_id,
        sender,
        text,
        body: common::parse_json(body, "message body")?,
        at: common::from_ms(at),
    })
}

type ConversationCursor = (Option<i64>, Option<String>, Option<String>);

pub(crate) fn conversation_cursor(cursor: Option<&str>) -> Result<ConversationCursor, StoreError> {
    let Some(c) = cursor else {
        return Ok((None, None, None));
    };
    let v = common::decode_cursor(c)?;
    match (
        v.get(0).and_then(Value::as_i64),
        v.get(1).and_then(Value::as_str),
        v.get(2).and_then(Value::as_str),
    ) {
        (Some(at), Some(ch), Some(conv)) => {
            Ok((Some(at), Some(ch.to_owned()), Some(conv.to_owned())))
        }
        _ => Err(StoreError::Invalid(format!("malformed cursor '{c}'"))),
    }
}

pub(crate) fn conversation_of(row: (String, String, i64, i64, i64)) -> Conversation {
    let (channel, conversation, started, last, count) = row;
    Conversation {
        channel: channel.into(),
        conversation: conversation.into(),
        started_at: common::from_ms(started),
        last_message_at: common::from_ms(last),
        message_count: count,
    }
}

pub(crate) fn conversation_cursor_of(c: &Conversation) -> Value {
    serde_json::json!([
        c.last_message_at.timestamp_millis(),
        c.channel.as_str(),
        c.conversation.as_str()
    ])
}
