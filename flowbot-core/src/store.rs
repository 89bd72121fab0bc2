//! Storage traits for conversations, sessions and key-value data.
//!
//! The task queue's storage traits live in [`crate::task`]. Backends (SQLite, PostgreSQL)
//! are in the `flowbot-store` crate; anything implementing every trait is a [`Store`].

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Message;
use crate::error::StoreError;
use crate::message::{ChannelName, ConversationId, Outbound};
use crate::session::{Session, SessionKey};
use crate::task::{ScheduleStore, TaskAdmin, TaskQueue};

/// Direction of a stored message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Received from a user.
    Inbound,
    /// Sent by the bot.
    Outbound,
}

impl Direction {
    /// The name stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Inbound => "inbound",
            Direction::Outbound => "outbound",
        }
    }
}

/// A message as stored in a conversation's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Store-assigned sequence number, increasing in insertion order.
    pub seq: i64,
    /// Channel.
    pub channel: ChannelName,
    /// Conversation.
    pub conversation: ConversationId,
    /// Inbound or outbound.
    pub direction: Direction,
    /// Platform message id (inbound), or a generated id (outbound).
    pub message_id: String,
    /// Sender user id (inbound) or `None` (outbound).
    pub sender: Option<String>,
    /// Text.
    pub text: String,
    /// The full message as JSON ([`Message`] or [`Outbound`]).
    pub body: Value,
    /// When it was stored.
    pub at: DateTime<Utc>,
}

/// A conversation and its activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Conversation {
    /// Channel.
    pub channel: ChannelName,
    /// Conversation id.
    pub conversation: ConversationId,
    /// First message time.
    pub started_at: DateTime<Utc>,
    /// Latest message time.
    pub last_message_at: DateTime<Utc>,
    /// Number of stored messages.
    pub message_count: i64,
}

/// One page of a listing, with the cursor for the next page (`None` at the end).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<T> {
    /// Items of this page.
    pub items: Vec<T>,
    /// Opaque cursor for the next page.
    pub next_cursor: Option<String>,
}

/// Messages and conversations.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot conversation store",
    note = "use a backend from `flowbot-store`, or implement `ConversationStore` for your own"
)]
pub trait ConversationStore: Send + Sync + 'static {
    /// Store an inbound message. Returns `false`, storing nothing, when a message with the
    /// same channel and platform id is already stored (a redelivered event).
    async fn save_inbound(&self, message: &Message) -> Result<bool, StoreError>;
    /// Store an outbound message sent to `target`'s conversation.
    async fn save_outbound(&self, outbound: &Outbound) -> Result<(), StoreError>;
    /// Messages of a conversation in insertion order, starting after `cursor`.
    async fn list_messages(
        &self,
        channel: &ChannelName,
        conversation: &ConversationId,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<StoredMessage>, StoreError>;
    /// Conversations, most recently active first.
    async fn list_conversations(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Conversation>, StoreError>;
}

/// Sessions.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot session store",
    note = "use a backend from `flowbot-store`, or implement `SessionStore` for your own"
)]
pub trait SessionStore: Send + Sync + 'static {
    /// Load a session, or `None` if it was never saved.
    async fn load_session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError>;
    /// Save a session. Fails with [`StoreError::Conflict`] when the stored version is not
    /// `session.version` (someone else saved it meanwhile). Returns the new version.
    async fn save_session(&self, session: &Session) -> Result<i64, StoreError>;
    /// Delete a session.
    async fn delete_session(&self, key: &SessionKey) -> Result<bool, StoreError>;
}

/// Namespaced key-value data for actions and handlers.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot key-value store",
    note = "use a backend from `flowbot-store`, or implement `KvStore` for your own"
)]
pub trait KvStore: Send + Sync + 'static {
    /// Read a value.
    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError>;
    /// Write a value.
    async fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<(), StoreError>;
    /// Delete a value; returns whether it existed.
    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError>;
    /// Every key of `namespace` with its value, ordered by key.
    async fn kv_list(&self, namespace: &str) -> Result<Vec<(String, Value)>, StoreError>;
}

/// One message on the [`Bus`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    /// Topic, e.g. `web:deliver`.
    pub topic: std::sync::Arc<str>,
    /// Payload (usually JSON).
    pub payload: std::sync::Arc<str>,
}

/// Largest bus payload in bytes (PostgreSQL's `NOTIFY` limit, less room for the envelope).
pub const MAX_BUS_PAYLOAD: usize = 7000;

/// A broadcast bus between every process sharing the store: what one publishes, all
/// subscribers (in every process, the publisher's included) receive once. Delivery is best
/// effort: a subscriber that is not connected at the time misses the message, so use it for
/// wake-ups and live pushes whose content is also stored.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publish `payload` (at most [`MAX_BUS_PAYLOAD`] bytes) on `topic`.
    async fn publish(&self, topic: &str, payload: &str) -> Result<(), StoreError>;
    /// Receive every message published from now on.
    fn subscribe(&self) -> tokio::sync::broadcast::Receiver<BusMessage>;
}

/// Everything a FlowBot deployment persists, in one object-safe trait so a bot can hold one
/// `Arc<dyn Store>`. Each backend of `flowbot-store` implements it.
#[async_trait]
pub trait Store:
    ConversationStore
    + SessionStore
    + KvStore
    + TaskQueue
    + TaskAdmin
    + ScheduleStore
    + Bus
    + crate::workflow::WorkflowStore
    + crate::lease::LeaseStore
{
    /// A short name of the backend (`sqlite`, `postgres`), for logs and metrics.
    fn backend(&self) -> &'static str;
    /// Check the database answers (for readiness probes).
    async fn ping(&self) -> Result<(), StoreError>;
}
