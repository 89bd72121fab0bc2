//! The `kb_search` action: a knowledge base search without a model, for a `/kb <query>`
//! command, a workflow node or a tool.

use std::sync::Arc;

use async_trait::async_trait;
use flowbot_core::vector::Filter;
use flowbot_core::{Action, ActionContext, BoxError};
use serde_json::{Value, json};

use super::{Knowledge, SearchOptions};

/// Most passages one call may ask for.
const MAX_PASSAGES: u64 = 20;

/// The `kb_search` action over a [`Knowledge`] base: finds passages for a query in a
/// collection (its default unless the input names one) and answers them as a plain list
/// (`text`, [`Knowledge::format_hits`]) and as data (`passages`).
pub struct SearchAction {
    knowledge: Arc<Knowledge>,
    collection: String,
    options: SearchOptions,
}

impl std::fmt::Debug for SearchAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchAction")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

impl SearchAction {
    /// Search `collection` of `knowledge` unless the input names another, with `options`
    /// (its limit unless the input gives one).
    pub fn new(
        knowledge: Arc<Knowledge>,
        collection: impl Into<String>,
        options: SearchOptions,
    ) -> Self {
        SearchAction {
            knowledge,
            collection: collection.into(),
            options,
        }
    }
}

#[async_trait]
impl Action for SearchAction {
    fn name(&self) -> &str {
        "kb_search"
    }

    fn description(&self) -> &str {
        "Search the knowledge base for passages about a query; answers them with their sources"
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "query": {"type": "string", "minLength": 1, "maxLength": 2000, "description": "what to look for"},
                "collection": {"type": "string", "description": "the collection (default: the configured one)"},
                "limit": {"type": "integer", "minimum": 1, "maximum": MAX_PASSAGES},
                "filter": {"type": "object", "description": "metadata conditions: {\"must\": [{\"key\": \"source\", \"value\": \"a.md\"}]}"}
            },
            "required": ["query"],
            "additionalProperties": false
        })
    }

    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "passages": {"type": "array", "items": {"type": "object"}}
            },
            "required": ["text", "passages"]
        })
    }

    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let query = input["query"].as_str().unwrap_or_default();
        let collection = input["collection"].as_str().unwrap_or(&self.collection);
        let mut options = self.options.clone();
        if let Some(limit) = input["limit"].as_u64() {
            options.limit = limit.clamp(1, MAX_PASSAGES) as usize;
        }
        if let Some(filter) = input.get("filter") {
            options.filter = serde_json::from_value::<Filter>(filter.clone())
                .map_err(|e| format!("kb_search: filter: {e}"))?;
        }
        let passages = self
            .knowledge
            .search(collection, query, &options)
            .await
            .map_err(|e| format!("kb_search: {e}"))?;
        Ok(json!({
            "text": Knowledge::format_hits(&passages),
            "passages": passages,
        }))
    }
}
