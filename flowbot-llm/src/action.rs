//! The `llm` action: one question to the model, with an optional JSON Schema the answer must
//! match, optionally grounded in a knowledge base collection (input `knowledge`). Workflows
//! call it through their `llm` node; rules and applications can call it by name like any
//! action.

use std::sync::Arc;

use async_trait::async_trait;
use flowbot_core::llm::{ChatMessage, ChatRequest};
use flowbot_core::{Action, ActionContext, BoxError};
use serde_json::{Value, json};

use crate::Agent;

/// How many times a structured answer that does not match its schema is asked for again.
const SCHEMA_RETRIES: usize = 1;

/// The `llm` action over an [`Agent`]'s models.
///
/// With a knowledge base (the agent's, or one given with [`LlmAction::with_knowledge`]), an
/// input naming a collection (`knowledge`, else the options' default collection) is
/// answered from the passages found for the question: they go into the system prompt as
/// numbered sources ([`sources_prompt`](crate::knowledge::sources_prompt)), the answer's
/// text gets the list of those it cites ([`sources_reply`](crate::knowledge::sources_reply);
/// not for a structured answer, whose text stays JSON), and the output's `sources` holds
/// them. When no passage is found (or none reaches the threshold), the output's text is the
/// options' "don't know" answer and the model is not called.
#[derive(Debug)]
pub struct LlmAction {
    agent: Arc<Agent>,
    #[cfg(feature = "knowledge")]
    knowledge: Option<(
        Arc<crate::knowledge::Knowledge>,
        crate::knowledge::KnowledgeOptions,
    )>,
}

impl LlmAction {
    /// Ask `agent`'s models (its default one unless the input names another), grounded in
    /// the agent's knowledge base when it has one.
    pub fn new(agent: Arc<Agent>) -> Self {
        LlmAction {
            #[cfg(feature = "knowledge")]
            knowledge: agent
                .knowledge_base()
                .map(|(kb, options)| (kb.clone(), options.clone())),
            agent,
        }
    }

    /// Answer inputs naming a collection (or every input, with
    /// [`KnowledgeOptions::collection`](crate::knowledge::KnowledgeOptions)) from
    /// `knowledge`, searched and cited as `options` say, in place of the agent's.
    #[cfg(feature = "knowledge")]
    #[cfg_attr(docsrs, doc(cfg(feature = "knowledge")))]
    pub fn with_knowledge(
        mut self,
        knowledge: Arc<crate::knowledge::Knowledge>,
        options: crate::knowledge::KnowledgeOptions,
    ) -> Self {
        self.knowledge = Some((knowledge, options));
        self
    }
}

/// What the knowledge base gives a call.
#[cfg_attr(not(feature = "knowledge"), allow(dead_code))]
enum Grounding {
    /// No collection named.
    None,
    /// The sources block for the system prompt and the citations.
    #[cfg(feature = "knowledge")]
    Sources(String, Vec<crate::knowledge::Citation>),
    /// Nothing found: this answer, without the model.
    DontKnow(String),
}

impl LlmAction {
    /// The knowledge base's part of the call, when the input (or the options) names a
    /// collection.
    async fn ground(
        &self,
        input: &Value,
        question: &str,
        system: Option<&str>,
        model: &dyn flowbot_core::llm::ChatModel,
    ) -> Result<Grounding, BoxError> {
        let named = input["knowledge"].as_str().filter(|c| !c.is_empty());
        #[cfg(not(feature = "knowledge"))]
        {
            let _ = (question, system, model);
            match named {
                Some(c) => Err(format!(
                    "llm: the input names knowledge collection '{c}', but flowbot-llm was built without its 'knowledge' feature"
                )
                .into()),
                None => Ok(Grounding::None),
            }
        }
        #[cfg(feature = "knowledge")]
        {
            let collection = match (named, &self.knowledge) {
                (Some(c), _) => c,
                (None, Some((_, options))) => match &options.collection {
                    Some(c) => c.as_str(),
                    None => return Ok(Grounding::None),
                },
                (None, None) => return Ok(Grounding::None),
            };
            let Some((kb, options)) = &self.knowledge else {
                return Err(format!(
                    "llm: the input names knowledge collection '{collection}', but the action has no knowledge base"
                )
                .into());
            };
            let passages = kb
                .search(collection, question, &options.search)
                .await
                .map_err(|e| format!("llm knowledge: {e}"))?;
            if passages.is_empty() {
                tracing::info!(
                    collection,
                    "no passage found: answering that the action does not know"
                );
                return Ok(Grounding::DontKnow(options.dont_know.clone()));
            }
            let window = self.agent.context(model, &[]);
            let counter = window.counter().clone();
            let mut asked = vec![ChatMessage::user(question.to_owned())];
            if let Some(p) = system {
                asked.push(ChatMessage::system(p.to_owned()));
            }
            let used = counter.count_messages(&asked);
            let room = window.budget().saturating_sub(used).min(options.max_tokens);
            let (block, citations) = crate::knowledge::sources_prompt(&passages, &*counter, room);
            if citations.is_empty() {
                tracing::warn!(
                    collection,
                    room,
                    "no passage fits the context window: answering that the action does not know"
                );
                return Ok(Grounding::DontKnow(options.dont_know.clone()));
            }
            Ok(Grounding::Sources(block, citations))
        }
    }
}

/// The cited sources of an answer as the output's `sources`.
#[cfg(feature = "knowledge")]
fn cited_sources(text: &str, citations: &[crate::knowledge::Citation]) -> Value {
    let numbers = crate::knowledge::cited(text, citations.len());
    Value::Array(
        citations
            .iter()
            .filter(|c| numbers.contains(&c.n))
            .map(|c| {
                json!({
                    "n": c.n,
                    "title": c.title,
                    "source": c.source,
                    "url": c.url,
                    "page": c.page,
                })
            })
            .collect(),
    )
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
                "knowledge": {"type": "string", "minLength": 1, "description": "a knowledge base collection: the answer is grounded in its passages and cites them"},
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
                "usage": {"type": "object"},
                "sources": {
                    "type": "array",
                    "description": "the knowledge base's sources the answer cites, when it was grounded in a collection",
                    "items": {
                        "type": "object",
                        "properties": {
                            "n": {"type": "integer", "minimum": 1},
                            "title": {"type": "string"},
                            "source": {"type": "string"},
                            "url": {"type": ["string", "null"]},
                            "page": {"type": ["integer", "null"]}
                        },
                        "required": ["n", "title", "source"]
                    }
                }
            },
            "required": ["text", "usage"]
        })
    }

    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let model = self.agent.chat_model(input["model"].as_str())?;
        let question = input["text"].as_str().unwrap_or_default();
        let prompt = input["prompt"].as_str();
        #[cfg_attr(not(feature = "knowledge"), allow(unused_mut))]
        let mut system = prompt.map(str::to_owned);
        #[cfg(feature = "knowledge")]
        let mut citations: Option<Vec<crate::knowledge::Citation>> = None;
        match self.ground(&input, question, prompt, &*model).await? {
            Grounding::None => {}
            #[cfg(feature = "knowledge")]
            Grounding::Sources(block, cites) => {
                system = Some(match system {
                    Some(p) => format!("{p}\n\n{block}"),
                    None => block,
                });
                citations = Some(cites);
            }
            Grounding::DontKnow(text) => {
                return Ok(json!({
                    "text": text,
                    "usage": flowbot_core::llm::Usage::default(),
                    "sources": [],
                }));
            }
        }
        let mut messages = Vec::new();
        if let Some(p) = system {
            messages.push(ChatMessage::system(p));
        }
        messages.push(ChatMessage::user(question));
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
                #[cfg_attr(not(feature = "knowledge"), allow(unused_mut))]
                let mut out = json!({"text": answer.text, "usage": usage});
                #[cfg(feature = "knowledge")]
                if let Some(cites) = &citations {
                    out["sources"] = cited_sources(&answer.text, cites);
                    out["text"] = crate::knowledge::sources_reply(&answer.text, cites).into();
                }
                return Ok(out);
            };
            let problem = match serde_json::from_str::<Value>(answer.text.trim()) {
                Err(e) => format!("it is not JSON ({e})"),
                Ok(data) => match validator.iter_errors(&data).next() {
                    None => {
                        #[cfg_attr(not(feature = "knowledge"), allow(unused_mut))]
                        let mut out = json!({"text": answer.text, "data": data, "usage": usage});
                        #[cfg(feature = "knowledge")]
                        if let Some(cites) = &citations {
                            out["sources"] = cited_sources(&answer.text, cites);
                        }
                        return Ok(out);
                    }
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
