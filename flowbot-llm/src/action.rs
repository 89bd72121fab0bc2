//! The `llm` action: one question to the model, with an optional JSON Schema the answer must
//! match. Workflows call it through their `llm` node; rules and applications can call it by
//! name like any action.

use std::sync::Arc;

use async_trait::async_trait;
use flowbot_core::llm::{ChatMessage, ChatRequest};
use flowbot_core::{Action, ActionContext, BoxError};
use serde_json::{Value, json};

use crate::Agent;

/// How many times a structured answer that does not match its schema is asked for again.
const SCHEMA_RETRIES: usize = 1;

/// The `llm` action over an [`Agent`]'s models.
#[derive(Debug)]
pub struct LlmAction {
    agent: Arc<Agent>,
}

impl LlmAction {
    /// Ask `agent`'s models (its default one unless the input names another).
    pub fn new(agent: Arc<Agent>) -> Self {
        LlmAction { agent }
    }
}

#[async_trait]
impl Action for LlmAction {
    fn name(&self) -> &str {
        "llm"
    }

    fn description(&self) -> &str {
        "Ask the language model a question; with a JSON Schema, the answer is JSON checked against it"
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1, "description": "the question"},
                "prompt": {"type": "string", "description": "the system prompt"},
                "model": {"type": "string", "description": "a model name from [llm.models]"},
                "schema": {"type": "object", "description": "a JSON Schema the answer must match"},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": 1000000}
            },
            "required": ["text"],
            "additionalProperties": false
        })
    }

    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "text": {"type": "string"},
                "data": {"description": "the answer parsed, when a schema was given"},
                "usage": {"type": "object"}
            },
            "required": ["text", "usage"]
        })
    }

    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let model = self.agent.chat_model(input["model"].as_str())?;
        let mut messages = Vec::new();
        if let Some(p) = input["prompt"].as_str() {
            messages.push(ChatMessage::system(p));
        }
        messages.push(ChatMessage::user(
            input["text"].as_str().unwrap_or_default(),
        ));
        let schema = input.get("schema").filter(|s| s.is_object()).cloned();
        let validator = match &schema {
            Some(s) => Some(
                jsonschema::validator_for(s)
                    .map_err(|e| format!("schema is not a valid JSON Schema: {e}"))?,
            ),
            None => None,
        };
        let mut usage = flowbot_core::llm::Usage::default();
        for attempt in 0..=SCHEMA_RETRIES {
            let mut request = ChatRequest::new(messages.clone());
            if let Some(s) = &schema {
                request = request.with_output_schema("answer", s.clone());
            }
            if let Some(n) = input["max_tokens"].as_u64() {
                request = request.with_max_tokens(u32::try_from(n).unwrap_or(u32::MAX));
            }
            let answer = model.complete(&request).await?;
            if let Some(u) = answer.usage {
                usage.input_tokens = usage.input_tokens.saturating_add(u.input_tokens);
                usage.output_tokens = usage.output_tokens.saturating_add(u.output_tokens);
            }
            let Some(validator) = &validator else {
                return Ok(json!({"text": answer.text, "usage": usage}));
            };
            let problem = match serde_json::from_str::<Value>(answer.text.trim()) {
                Err(e) => format!("it is not JSON ({e})"),
                Ok(data) => match validator.iter_errors(&data).next() {
                    None => return Ok(json!({"text": answer.text, "data": data, "usage": usage})),
                    Some(e) => format!("at '{}': {e}", e.instance_path()),
                },
            };
            tracing::warn!(attempt, %problem, "the model's structured answer does not match its schema");
            if attempt == SCHEMA_RETRIES {
                return Err(
                    format!("the model's answer does not match the schema: {problem}").into(),
                );
            }
            messages.push(ChatMessage::assistant(answer.text));
            messages.push(ChatMessage::user(format!(
                "That answer does not match the JSON Schema: {problem}. Answer again with JSON only."
            )));
        }
        Err("the model gave no answer".into())
    }
}
