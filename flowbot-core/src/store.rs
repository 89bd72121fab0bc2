//! Storage traits for conversations, sessions, key-value data and the audit log.
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

/// One audited request: a change made through the API, or a failed authentication.
///
/// Times are kept to the millisecond. Every string round-trips as given (a long `detail`
/// too), except that none may contain a NUL character: stores refuse such an event with
/// [`StoreError::Invalid`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// When the request was made.
    pub at: DateTime<Utc>,
    /// Who made it (the authenticated identity); `None` for a failed authentication.
    pub subject: Option<String>,
    /// The role the request was made with.
    pub role: Option<String>,
    /// HTTP method, e.g. `PUT`.
    pub method: String,
    /// The route template, e.g. `/api/v1/rules/{name}`.
    pub route: String,
    /// The concrete path, e.g. `/api/v1/rules/greet`.
    pub path: String,
    /// The resource changed, e.g. `rule:greet`.
    pub resource: Option<String>,
    /// The answer's HTTP status (100 to 599).
    pub outcome: u16,
    /// The request's id, as logged and answered.
    pub request_id: String,
    /// The client's address.
    pub client: Option<String>,
    /// Anything else worth keeping (never a secret).
    pub detail: Option<String>,
}

/// A stored [`AuditEvent`] with the id its store gave it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Store-assigned id, increasing in insertion order.
    pub id: i64,
    /// The event.
    #[serde(flatten)]
    pub event: AuditEvent,
}

/// Which outcomes an [`AuditFilter`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    /// A class of statuses: `4` keeps 400 to 499 (1 to 5).
    Class(u8),
    /// One status, e.g. `403` (100 to 599).
    Status(u16),
}

impl AuditOutcome {
    /// Parse `4xx` (a class, `x` in either case) or `403` (a status). `None` for anything
    /// else, a class outside 1xx to 5xx or a status outside 100 to 599 included.
    pub fn parse(s: &str) -> Option<Self> {
        let b = s.as_bytes();
        match b {
            [c @ b'1'..=b'5', x, y]
                if x.eq_ignore_ascii_case(&b'x') && y.eq_ignore_ascii_case(&b'x') =>
            {
                Some(AuditOutcome::Class(c - b'0'))
            }
            [b'1'..=b'5', b'0'..=b'9', b'0'..=b'9'] => s.parse().ok().map(AuditOutcome::Status),
            _ => None,
        }
    }

    /// The statuses kept, from the first to before the second; `None` when out of range
    /// (a class outside 1 to 5, a status outside 100 to 599).
    pub fn range(self) -> Option<(u16, u16)> {
        match self {
            AuditOutcome::Class(c @ 1..=5) => Some((u16::from(c) * 100, u16::from(c) * 100 + 100)),
            AuditOutcome::Status(s @ 100..=599) => Some((s, s + 1)),
            _ => None,
        }
    }
}

/// Which audit entries [`AuditStore::list_audit`] returns; every field set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditFilter {
    /// Only entries of this subject.
    pub subject: Option<String>,
    /// Only entries with this outcome (a class or one status).
    pub outcome: Option<AuditOutcome>,
    /// Only entries at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Only entries before this time.
    pub until: Option<DateTime<Utc>>,
    /// Only entries whose route template starts with this, e.g. `/api/v1/rules`.
    pub route_prefix: Option<String>,
}

/// The audit log: every change through the API and every failed authentication.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot audit store",
    note = "use a backend from `flowbot-store`, or implement `AuditStore` for your own"
)]
pub trait AuditStore: Send + Sync + 'static {
    /// Store `events` in one transaction: all of them or, with an error, none. An event that
    /// is invalid (an outcome outside 100 to 599, a NUL character in a string) fails the
    /// batch with [`StoreError::Invalid`] naming the event and the field.
    async fn record_audit(&self, events: &[AuditEvent]) -> Result<(), StoreError>;
    /// Entries matching `filter`, newest first (by time, then by id), starting after
    /// `cursor`. A cursor that is not one this store gave, or a filter out of range, is
    /// [`StoreError::Invalid`].
    async fn list_audit(
        &self,
        filter: &AuditFilter,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<AuditEntry>, StoreError>;
    /// Remove the entries from before `before` (the retention limit); returns how many.
    /// Removes them in bounded batches, each its own transaction, so a large prune never
    /// holds the database's write lock for long.
    async fn prune_audit(&self, before: DateTime<Utc>) -> Result<u64, StoreError>;
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

/// What a channel that receives keeps in the store: the task queue its events go onto, the
/// leases that keep one process on each platform connection, key-value data (offsets,
/// identities), the conversation history and the bus (web chat shows the history and hears
/// replies sent by other processes). Any type with these five traits has it, and an
/// `Arc<dyn Store>` converts into an `Arc<dyn ChannelStore>` where it is passed.
pub trait ChannelStore:
    ConversationStore + KvStore + TaskQueue + crate::lease::LeaseStore + Bus
{
}

impl<T> ChannelStore for T where
    T: ConversationStore + KvStore + TaskQueue + crate::lease::LeaseStore + Bus + ?Sized
{
}

/// Key-value data whose changes every server hears of on the [`Bus`]: what a set of records
/// edited at run time (the rule library's stored rules) keeps in the store. Any type with
/// both traits has it; an `Arc<dyn Store>` converts where it is passed.
pub trait SharedKv: KvStore + Bus {}

impl<T: KvStore + Bus + ?Sized> SharedKv for T {}

/// Everything a FlowBot deployment persists, in one object-safe trait so a bot can hold one
/// `Arc<dyn Store>`. Each backend of `flowbot-store` implements it; the capability sets
/// [`ChannelStore`] and [`SharedKv`] come with it.
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
    + AuditStore
    + ChannelStore
    + SharedKv
{
    /// A short name of the backend (`sqlite`, `postgres`), for logs and metrics.
    fn backend(&self) -> &'static str;
    /// Check the database answers (for readiness probes).
    async fn ping(&self) -> Result<(), StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_parse_as_a_class_or_a_status() {
        assert_eq!(AuditOutcome::parse("4xx"), Some(AuditOutcome::Class(4)));
        assert_eq!(AuditOutcome::parse("5XX"), Some(AuditOutcome::Class(5)));
        assert_eq!(AuditOutcome::parse("1xX"), Some(AuditOutcome::Class(1)));
        assert_eq!(AuditOutcome::parse("403"), Some(AuditOutcome::Status(403)));
        assert_eq!(AuditOutcome::parse("599"), Some(AuditOutcome::Status(599)));
        for bad in [
            "", "6xx", "0xx", "4x", "4xxx", "099", "600", "40", "4034", "+43", "4 3", "é4x",
        ] {
            assert_eq!(AuditOutcome::parse(bad), None, "{bad:?}");
        }
        assert_eq!(AuditOutcome::Class(4).range(), Some((400, 500)));
        assert_eq!(AuditOutcome::Status(404).range(), Some((404, 405)));
        for out_of_range in [
            AuditOutcome::Class(0),
            AuditOutcome::Class(6),
            AuditOutcome::Status(99),
            AuditOutcome::Status(600),
        ] {
            assert_eq!(out_of_range.range(), None, "{out_of_range:?}");
        }
    }

    #[test]
    fn an_entry_is_one_flat_json_object() {
        let entry = AuditEntry {
            id: 7,
            event: AuditEvent {
                at: DateTime::from_timestamp_millis(1_772_359_200_123).expect("valid time"),
                subject: None,
                role: None,
                method: "POST".into(),
                route: "/api/v1/rules/{name}".into(),
                path: "/api/v1/rules/greet".into(),
                resource: Some("rule:greet".into()),
                outcome: 401,
                request_id: "req-1".into(),
                client: Some("127.0.0.1".into()),
                detail: None,
            },
        };
        let json = serde_json::to_value(&entry).expect("serialise");
        assert_eq!(json["id"], 7);
        assert_eq!(json["outcome"], 401);
        assert_eq!(json["route"], "/api/v1/rules/{name}");
        assert!(json["subject"].is_null());
        assert_eq!(
            serde_json::from_value::<AuditEntry>(json).expect("deserialise"),
            entry
        );
    }
}
