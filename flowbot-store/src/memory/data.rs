//! MemoryStore: conversations, messages, sessions, key-value data and leases.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ops::Bound;
use std::time::Duration;

use async_trait::async_trait;
use flowbot_core::lease::{Lease, LeaseStore};
use flowbot_core::store::{
    Conversation, ConversationStore, KvStore, Page, SessionStore, StoredMessage,
};
use flowbot_core::{
    ChannelName, ConversationId, Message, Outbound, Session, SessionKey, StoreError,
};
use serde_json::Value;

use super::{MemoryStore, fetch};
use crate::common::{self, ms, now_ms, page_limit, paginate, ttl_ms};

/// One stored message (its channel and conversation are its list's key).
#[derive(Debug)]
struct MessageRow {
    seq: i64,
    direction: &'static str,
    message_id: String,
    sender: Option<String>,
    text: String,
    /// The whole message as JSON text.
    body: String,
    at: i64,
}

/// A conversation's activity.
#[derive(Debug)]
struct ConversationRow {
    started_at: i64,
    last_message_at: i64,
    message_count: i64,
}

/// A session's stored part: its data as JSON text, version and time.
#[derive(Debug)]
struct SessionRow {
    data: String,
    version: i64,
    updated_at: i64,
}

#[derive(Debug)]
struct LeaseRow {
    owner: String,
    token: i64,
    expires_at: i64,
}

/// (channel, conversation).
type ConversationKey = (String, String);

/// Conversations, messages, sessions, key-value data and leases.
#[derive(Debug, Default)]
pub(super) struct Data {
    /// Each conversation's messages, in sequence order.
    messages: HashMap<ConversationKey, Vec<MessageRow>>,
    last_seq: i64,
    /// The inbound messages stored: (channel, platform message id).
    inbound: HashSet<(String, String)>,
    conversations: HashMap<ConversationKey, ConversationRow>,
    /// Conversations by latest activity: (last_message_at, channel, conversation).
    recent: BTreeSet<(i64, String, String)>,
    /// Sessions by (channel, conversation, user).
    sessions: HashMap<(String, String, String), SessionRow>,
    /// Values by namespace, then key.
    kv: HashMap<String, BTreeMap<String, Value>>,
    leases: HashMap<String, LeaseRow>,
}

impl Data {
    /// Append a message to its conversation and count it there.
    fn store(&mut self, channel: String, conversation: String, mut row: MessageRow) {
        self.last_seq += 1;
        row.seq = self.last_seq;
        let key = (channel, conversation);
        match self.conversations.get_mut(&key) {
            Some(c) => {
                let last = c.last_message_at.max(row.at);
                if last != c.last_message_at {
                    self.recent
                        .remove(&(c.last_message_at, key.0.clone(), key.1.clone()));
                    self.recent.insert((last, key.0.clone(), key.1.clone()));
                    c.last_message_at = last;
                }
                c.message_count += 1;
            }
            None => {
                self.recent.insert((row.at, key.0.clone(), key.1.clone()));
                self.conversations.insert(
                    key.clone(),
                    ConversationRow {
                        started_at: row.at,
                        last_message_at: row.at,
                        message_count: 1,
                    },
                );
            }
        }
        self.messages.entry(key).or_default().push(row);
    }
}

/// A message as stored in `body`.
fn message_json(m: &impl serde::Serialize) -> Result<String, StoreError> {
    serde_json::to_string(m).map_err(|e| StoreError::Invalid(format!("message: {e}")))
}

fn session_key(key: &SessionKey) -> (String, String, String) {
    (
        key.channel.to_string(),
        key.conversation.to_string(),
        key.user.to_string(),
    )
}

#[async_trait]
impl ConversationStore for MemoryStore {
    async fn save_inbound(&self, m: &Message) -> Result<bool, StoreError> {
        let row = MessageRow {
            seq: 0,
            direction: "inbound",
            message_id: m.id.to_string(),
            sender: Some(m.sender.id.to_string()),
            text: m.text.clone(),
            body: message_json(m)?,
            at: ms(m.received_at),
        };
        let mut d = self.data();
        if !d
            .inbound
            .insert((m.channel.to_string(), row.message_id.clone()))
        {
            return Ok(false);
        }
        d.store(m.channel.to_string(), m.conversation.to_string(), row);
        Ok(true)
    }

    async fn save_outbound(&self, o: &Outbound) -> Result<(), StoreError> {
        let target = o
            .target
            .as_ref()
            .ok_or_else(|| StoreError::Invalid("outbound message has no target".into()))?;
        let row = MessageRow {
            seq: 0,
            direction: "outbound",
            message_id: crate::new_message_id(),
            sender: None,
            text: o.text.clone(),
            body: message_json(o)?,
            at: now_ms(),
        };
        self.data().store(
            target.channel.to_string(),
            target.conversation.to_string(),
            row,
        );
        Ok(())
    }

    async fn list_messages(
        &self,
        channel: &ChannelName,
        conversation: &ConversationId,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<StoredMessage>, StoreError> {
        let limit = page_limit(limit);
        let after = common::int_cursor(cursor)?.unwrap_or(0);
        let d = self.data();
        let rows = d
            .messages
            .get(&(channel.to_string(), conversation.to_string()))
            .map(Vec::as_slice)
            .unwrap_or_default();
        let from = rows.partition_point(|r| r.seq <= after);
        let items = rows[from..]
            .iter()
            .take(fetch(limit))
            .map(|r| {
                crate::stored_message(
                    channel,
                    conversation,
                    r.seq,
                    r.direction,
                    r.sender.clone(),
                    r.message_id.clone(),
                    r.text.clone(),
                    &r.body,
                    r.at,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(paginate(items, limit, |m| Value::from(m.seq)))
    }

    async fn list_conversations(
        &self,
        cursor: Option<&str>,
        limit: u32,
    ) -> Result<Page<Conversation>, StoreError> {
        let limit = page_limit(limit);
        let before = match crate::conversation_cursor(cursor)? {
            (Some(at), Some(channel), Some(conversation)) => {
                Bound::Excluded((at, channel, conversation))
            }
            _ => Bound::Unbounded,
        };
        let d = self.data();
        let rows = d
            .recent
            .range((Bound::Unbounded, before))
            .rev()
            .take(fetch(limit))
            .filter_map(|(_, channel, conversation)| {
                let c = d
                    .conversations
                    .get(&(channel.clone(), conversation.clone()))?;
                Some(crate::conversation_of((
                    channel.clone(),
                    conversation.clone(),
                    c.started_at,
                    c.last_message_at,
                    c.message_count,
                )))
            })
            .collect();
        Ok(paginate(rows, limit, crate::conversation_cursor_of))
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    async fn load_session(&self, key: &SessionKey) -> Result<Option<Session>, StoreError> {
        self.data()
            .sessions
            .get(&session_key(key))
            .map(|r| common::session_from(key, &r.data, r.version, r.updated_at))
            .transpose()
    }

    async fn save_session(&self, s: &Session) -> Result<i64, StoreError> {
        let data = common::session_data(s)?;
        let now = now_ms();
        let key = session_key(&s.key);
        let mut d = self.data();
        match d.sessions.get_mut(&key) {
            None if s.version == 0 => {
                d.sessions.insert(
                    key,
                    SessionRow {
                        data,
                        version: 1,
                        updated_at: now,
                    },
                );
            }
            Some(row) if s.version != 0 && row.version == s.version => {
                *row = SessionRow {
                    data,
                    version: row.version + 1,
                    updated_at: now,
                };
            }
            _ => return Err(crate::session_conflict(s)),
        }
        Ok(s.version + 1)
    }

    async fn delete_session(&self, key: &SessionKey) -> Result<bool, StoreError> {
        Ok(self.data().sessions.remove(&session_key(key)).is_some())
    }
}

#[async_trait]
impl KvStore for MemoryStore {
    async fn kv_get(&self, namespace: &str, key: &str) -> Result<Option<Value>, StoreError> {
        Ok(self
            .data()
            .kv
            .get(namespace)
            .and_then(|ns| ns.get(key))
            .cloned())
    }

    async fn kv_set(&self, namespace: &str, key: &str, value: &Value) -> Result<(), StoreError> {
        self.data()
            .kv
            .entry(namespace.to_owned())
            .or_default()
            .insert(key.to_owned(), value.clone());
        Ok(())
    }

    async fn kv_delete(&self, namespace: &str, key: &str) -> Result<bool, StoreError> {
        let mut d = self.data();
        let Some(ns) = d.kv.get_mut(namespace) else {
            return Ok(false);
        };
        let existed = ns.remove(key).is_some();
        if ns.is_empty() {
            d.kv.remove(namespace);
        }
        Ok(existed)
    }

    async fn kv_list(&self, namespace: &str) -> Result<Vec<(String, Value)>, StoreError> {
        Ok(self
            .data()
            .kv
            .get(namespace)
            .map(|ns| ns.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
}

#[async_trait]
impl LeaseStore for MemoryStore {
    async fn acquire_lease(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Lease>, StoreError> {
        let now = now_ms();
        let expires_at = now.saturating_add(ttl_ms(ttl));
        let mut d = self.data();
        let token = match d.leases.get_mut(name) {
            None => {
                d.leases.insert(
                    name.to_owned(),
                    LeaseRow {
                        owner: owner.to_owned(),
                        token: 1,
                        expires_at,
                    },
                );
                1
            }
            // Its holder renewing keeps the token; a new holder (or the old one after
            // expiry) gets the next.
            Some(row) if row.owner == owner || row.expires_at <= now => {
                if row.owner != owner || row.expires_at <= now {
                    row.token += 1;
                }
                row.owner = owner.to_owned();
                row.expires_at = expires_at;
                row.token
            }
            Some(_) => return Ok(None),
        };
        Ok(Some(Lease {
            name: name.to_owned(),
            owner: owner.to_owned(),
            token,
        }))
    }

    async fn renew_lease(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        let now = now_ms();
        let mut d = self.data();
        match d.leases.get_mut(&lease.name) {
            Some(row)
                if row.owner == lease.owner && row.token == lease.token && row.expires_at > now =>
            {
                row.expires_at = now.saturating_add(ttl_ms(ttl));
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), StoreError> {
        // Expired rather than removed, so the next holder's token is still larger.
        if let Some(row) = self.data().leases.get_mut(&lease.name)
            && row.owner == lease.owner
            && row.token == lease.token
        {
            row.expires_at = 0;
        }
        Ok(())
    }
}
