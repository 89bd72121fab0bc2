//! Notifiers: send-only channels (push services, incoming webhooks, e-mail) reached through
//! the `notify` action from rules and workflows. Adapters live in `flowbot-channels`; the bot
//! builder registers them by name with `.notifier(name, notifier)`.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::action::{Action, ActionContext};
use crate::error::BoxError;

/// How urgent a notification is; each notifier maps it to its own scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    /// Quiet.
    Low,
    /// The default.
    #[default]
    Normal,
    /// Stands out.
    High,
    /// Needs someone now.
    Urgent,
}

/// One notification.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// The text.
    pub message: String,
    /// A title, where the service shows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<String>,
    /// Urgency.
    #[serde(default)]
    pub priority: Priority,
    /// A link to open from the notification.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Tags, where the service has them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// A send-only channel.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot notifier",
    note = "implement `Notifier` (see the adapters in flowbot-channels' `notifiers` module)"
)]
pub trait Notifier: Send + Sync + 'static {
    /// The service, for logs and errors (e.g. `ntfy`).
    fn kind(&self) -> &str;
    /// Deliver; the answer says what the service gave back (a message id, …). An error names
    /// the service's status and reason, so a retried workflow node shows why.
    async fn notify(&self, notification: &Notification) -> Result<Value, BoxError>;
}

/// The `notify` action over the configured notifiers.
pub(crate) struct Notify(pub(crate) BTreeMap<String, Arc<dyn Notifier>>);

#[async_trait]
impl Action for Notify {
    fn name(&self) -> &str {
        "notify"
    }

    fn description(&self) -> &str {
        "Send a notification through a configured notifier (push service, incoming webhook, …)"
    }

    fn input_schema(&self) -> Value {
        let names: Vec<&String> = self.0.keys().collect();
        json!({
            "type": "object",
            "properties": {
                "notifier": {"enum": names, "description": "a configured notifier"},
                "message": {"type": "string", "minLength": 1},
                "title": {"type": "string"},
                "priority": {"enum": ["low", "normal", "high", "urgent"], "default": "normal"},
                "url": {"type": "string"},
                "tags": {"type": "array", "items": {"type": "string"}}
            },
            "required": ["notifier", "message"],
            "additionalProperties": false
        })
    }

    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"notifier": {"type": "string"}, "kind": {"type": "string"}, "response": {}},
            "required": ["notifier", "kind"]
        })
    }

    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let name = input["notifier"].as_str().unwrap_or_default().to_owned();
        let notifier = self
            .0
            .get(&name)
            .ok_or_else(|| format!("no notifier named '{name}'"))?;
        let mut fields = input;
        if let Some(map) = fields.as_object_mut() {
            map.remove("notifier");
        }
        let notification: Notification = serde_json::from_value(fields)?;
        let response = notifier
            .notify(&notification)
            .await
            .map_err(|e| NotifyFailed {
                what: format!("{} notifier '{name}'", notifier.kind()),
                source: e,
            })?;
        Ok(json!({"notifier": name, "kind": notifier.kind(), "response": response}))
    }
}

/// A notifier's failure, its error kept as the source (whether it is permanent or transient,
/// and the service's `Retry-After`).
#[derive(Debug, thiserror::Error)]
#[error("{what}: {source}")]
struct NotifyFailed {
    what: String,
    #[source]
    source: BoxError,
}
