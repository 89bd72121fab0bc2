//! Per user and conversation state, persisted through the store so any server can continue
//! a conversation.

use std::sync::{Arc, Mutex, MutexGuard};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::message::{ChannelName, ConversationId, UserId};

/// Identifies a session: one user in one conversation of one channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionKey {
    /// Channel.
    pub channel: ChannelName,
    /// Conversation.
    pub conversation: ConversationId,
    /// User.
    pub user: UserId,
}

/// The dialog a session is in, and its step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogState {
    /// Dialog name.
    pub name: String,
    /// Current step.
    pub step: String,
    /// Values collected so far.
    #[serde(default)]
    pub data: Map<String, Value>,
}

/// Session state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// Whose session it is.
    pub key: SessionKey,
    /// Variables set by handlers, rules and dialogs.
    #[serde(default)]
    pub vars: Map<String, Value>,
    /// The active dialog, if any.
    #[serde(default)]
    pub dialog: Option<DialogState>,
    /// Store version, for optimistic concurrency (0 = never saved).
    pub version: i64,
    /// Last time the session was saved.
    pub updated_at: DateTime<Utc>,
}

impl Session {
    /// A fresh, never-saved session.
    pub fn new(key: SessionKey) -> Self {
        Session {
            key,
            vars: Map::new(),
            dialog: None,
            version: 0,
            updated_at: crate::clock::now(),
        }
    }
}

/// A session shared between the pipeline and a handler for the length of one event.
///
/// Handlers read and change it through [`SessionHandle::lock`]; the pipeline saves it after
/// the handler returns if it changed.
#[derive(Debug, Clone)]
pub struct SessionHandle(Arc<Mutex<Session>>);

impl SessionHandle {
    /// Wrap a session.
    pub fn new(session: Session) -> Self {
        SessionHandle(Arc::new(Mutex::new(session)))
    }

    /// Lock the session. Do not hold the guard across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Session> {
        // A handler that panicked while holding the lock leaves plain data behind, which is
        // still consistent enough to save or discard; recover it instead of propagating.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Read a variable.
    pub fn var(&self, name: &str) -> Option<Value> {
        self.lock().vars.get(name).cloned()
    }

    /// Set a variable.
    pub fn set_var(&self, name: impl Into<String>, value: Value) {
        self.lock().vars.insert(name.into(), value);
    }

    /// A copy of the current state.
    pub fn snapshot(&self) -> Session {
        self.lock().clone()
    }
}
