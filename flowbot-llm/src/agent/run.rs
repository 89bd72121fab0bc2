//! A run's durable state: the conversation with the model, each tool call's result and the
//! approvals given, checkpointed in the store's key-value space after every model turn and
//! every tool call, so that a run interrupted by a crash resumes on any agent and no
//! completed call runs again.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use flowbot_core::StoreError;
use flowbot_core::llm::{ChatMessage, ToolCall, ToolResult, Usage};
use flowbot_core::store::KvStore;
use serde::{Deserialize, Serialize};

/// Key-value namespace of runs.
pub const RUNS: &str = "llm.runs";
/// Key-value namespace of conversation histories.
pub const HISTORIES: &str = "llm.history";
/// Key-value namespace of daily token counters.
pub const USAGE: &str = "llm.usage";

/// Where a run stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
#[non_exhaustive]
pub enum RunStatus {
    /// Working (or interrupted while working: it resumes when its event is handled again).
    Running,
    /// Waiting for a person to approve or deny a tool call.
    WaitingApproval {
        /// The call's id.
        call: String,
    },
    /// Answered.
    Done,
    /// Stopped by a budget, a cancellation or an error; `reason` says which.
    Stopped {
        /// Why, in words the user was shown.
        reason: String,
    },
}

/// One tool call of a run, as the REST API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CallRecord {
    /// The call.
    pub call: ToolCall,
    /// Its result, once it ran (or was refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ToolResult>,
    /// `Some(true)` approved, `Some(false)` denied, `None` not asked or not answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approved: Option<bool>,
    /// When it finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
}

/// Everything a run needs to continue anywhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunState {
    /// The run's id.
    pub id: String,
    /// Where it stands.
    pub status: RunStatus,
    /// The model chain's name.
    pub model: String,
    /// Channel, conversation and user it answers.
    pub channel: String,
    /// Conversation.
    pub conversation: String,
    /// User.
    pub user: String,
    /// The conversation with the model, system prompt first.
    pub messages: Vec<ChatMessage>,
    /// Tool calls by id, with their results.
    pub calls: BTreeMap<String, CallRecord>,
    /// Model turns taken.
    pub turns: u32,
    /// Tool calls in a row that failed validation or ran into an error.
    #[serde(default)]
    pub failed_calls: u32,
    /// Tokens used.
    pub usage: Usage,
    /// Cost so far in micro-dollars, when prices are known.
    #[serde(default)]
    pub cost_micros: u64,
    /// The final answer.
    #[serde(default)]
    pub answer: String,
    /// The library prompt that wrote the system message, when one did (runs stored before
    /// prompts were recorded have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptUse>,
    /// Milliseconds spent answering (model calls and tools; waits for an approval excluded).
    #[serde(default)]
    pub busy_ms: u64,
    /// The user's verdict on the answer, once given (`POST /api/v1/llm/runs/{id}/feedback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feedback: Option<bool>,
    /// The knowledge base's sources given to the model, numbered as in the prompt; the
    /// answer lists those it cites.
    #[cfg(feature = "knowledge")]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<crate::knowledge::Citation>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last checkpoint.
    pub updated_at: DateTime<Utc>,
}

/// Which version of a library prompt a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromptUse {
    /// The prompt's name.
    pub name: String,
    /// The version rendered (the active one, or the user's arm of a split).
    pub version: u32,
    /// The model variant rendered, if one matched the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl RunState {
    /// Results of calls that completed, by call id.
    pub fn result(&self, call_id: &str) -> Option<&ToolResult> {
        self.calls.get(call_id).and_then(|c| c.result.as_ref())
    }
}

/// Reads and writes runs and histories.
#[derive(Clone)]
pub struct Runs {
    store: Option<Arc<dyn KvStore>>,
}

impl std::fmt::Debug for Runs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runs")
            .field("kept", &self.store.is_some())
            .finish()
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(|e| corrupt(.., e))`
fn corrupt(what: &str, key: &str, e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(format!("{what} '{key}': {e}"))
}

impl Runs {
    /// Over `store`; without one, nothing is kept (runs live only in memory).
    pub fn new(store: Option<Arc<dyn KvStore>>) -> Self {
        Runs { store }
    }

    /// Whether runs are kept.
    pub fn durable(&self) -> bool {
        self.store.is_some()
    }

    /// A run by id.
    pub async fn load(&self, id: &str) -> Result<Option<RunState>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(None);
        };
        match store.kv_get(RUNS, id).await? {
            None => Ok(None),
            Some(v) => serde_json::from_value(v)
                .map(Some)
                .map_err(|e| corrupt("run", id, e)),
        }
    }

    /// Checkpoint a run.
    pub async fn save(&self, run: &mut RunState) -> Result<(), StoreError> {
        run.updated_at = flowbot_core::clock::now();
        let Some(store) = &self.store else {
            return Ok(());
        };
        let value = serde_json::to_value(&*run).map_err(|e| corrupt("run", &run.id, e))?;
        store.kv_set(RUNS, &run.id, &value).await
    }

    /// Every run, newest first.
    pub async fn list(&self) -> Result<Vec<RunState>, StoreError> {
        let Some(store) = &self.store else {
            return Ok(Vec::new());
        };
        let mut runs = Vec::new();
        for (key, value) in store.kv_list(RUNS).await? {
            match serde_json::from_value::<RunState>(value) {
                Ok(r) => runs.push(r),
                Err(e) => tracing::warn!(run = %key, error = %e, "unreadable run skipped"),
            }
        }
        runs.sort_by_key(|r| std::cmp::Reverse(r.created_at));
        Ok(runs)
    }

    /// The history of one user in one conversation.
    pub async fn history(&self, key: &str) -> Result<History, StoreError> {
        let Some(store) = &self.store else {
            return Ok(History::default());
        };
        match store.kv_get(HISTORIES, key).await? {
            None => Ok(History::default()),
            Some(v) => serde_json::from_value(v).map_err(|e| corrupt("history", key, e)),
        }
    }

    /// Store a history.
    pub async fn save_history(&self, key: &str, history: &History) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let value = serde_json::to_value(history).map_err(|e| corrupt("history", key, e))?;
        store.kv_set(HISTORIES, key, &value).await
    }
}

impl Runs {
    /// Tokens and cost counted under `key` (a user's or a conversation's day).
    pub async fn daily(&self, key: &str) -> Result<DailyUsage, StoreError> {
        let Some(store) = &self.store else {
            return Ok(DailyUsage::default());
        };
        Ok(store
            .kv_get(USAGE, key)
            .await?
            .and_then(|v| serde_json::from_value(v).ok())
            .unwrap_or_default())
    }

    /// Count `tokens` and `cost_micros` more under `key`. A read-modify-write: two processes
    /// adding at the same moment can lose one addition, so a budget is approximate by at
    /// most one run.
    pub async fn add_daily(
        &self,
        key: &str,
        tokens: u64,
        cost_micros: u64,
    ) -> Result<(), StoreError> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut used = self.daily(key).await?;
        used.tokens = used.tokens.saturating_add(tokens);
        used.cost_micros = used.cost_micros.saturating_add(cost_micros);
        let value = serde_json::to_value(used).map_err(|e| corrupt("usage", key, e))?;
        store.kv_set(USAGE, key, &value).await
    }
}

/// What a user or a conversation used in one day.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DailyUsage {
    /// Tokens, in and out.
    #[serde(default)]
    pub tokens: u64,
    /// Cost in micro-dollars, for models with a price.
    #[serde(default)]
    pub cost_micros: u64,
}

/// What the model remembers of a conversation: the latest exchanges, and a summary of what
/// came before them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct History {
    /// Summary of older turns.
    #[serde(default)]
    pub summary: Option<String>,
    /// The latest messages (user and assistant text), oldest first.
    #[serde(default)]
    pub messages: Vec<ChatMessage>,
}
