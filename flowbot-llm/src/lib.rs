//! # flowbot-llm
//!
//! Language models for FlowBot, over reqwest and an SSE parser, one feature per dialect:
//!
//! - `openai`: OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM,
//!   llama.cpp's server, OpenRouter, LiteLLM; Azure OpenAI through `base_url`, the
//!   `api-version` query and the `azure` key header), the OpenAI Responses API, and OpenAI
//!   embeddings;
//! - `anthropic`: Anthropic Messages;
//! - `gemini`: Google Gemini, with its embeddings;
//! - `knowledge` (default): the knowledge base ([`knowledge`]): documents loaded, chunked
//!   and embedded into a vector store, found again by hybrid search, cited in answers;
//! - `pdf` (default): PDF documents for the knowledge base;
//! - `urls` (default): URLs as knowledge base sources, fetched through flowbot-core's
//!   outbound network guard (`net`);
//! - `test-util`: `fake::FakeProvider`, a local server that speaks all four dialects from
//!   scripted turns, for testing bots without the internet.
//!
//! Each implements core's [`ChatModel`] (and [`Embedder`] where the provider has one):
//! streamed typed events, parallel tool calls, usage with cached and reasoning tokens,
//! structured output against a JSON Schema, errors classified by
//! [`ModelErrorKind`], and deadlines for connecting, the
//! first token, silence between tokens and the whole call.
//!
//! ```no_run
//! # async fn demo() -> Result<(), flowbot_core::ModelError> {
//! use flowbot_core::llm::{ChatMessage, ChatRequest};
//! use flowbot_llm::{Dialect, ProviderConfig};
//! let mut config = ProviderConfig::new(Dialect::Openai, "gpt-4o-mini");
//! config.api_key_env = Some("OPENAI_API_KEY".into());
//! let model = flowbot_llm::connect(&config)?;
//! let answer = model.complete(&ChatRequest::new(vec![ChatMessage::user("Hi!")])).await?;
//! println!("{}", answer.text);
//! # Ok(()) }
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]
// Built without any provider, the HTTP transport and the provider config have no user.
#![cfg_attr(
    not(any(feature = "openai", feature = "anthropic", feature = "gemini")),
    allow(dead_code)
)]

mod action;
pub mod agent;
mod chain;
mod config;
mod observe;
mod price;
mod transport;

#[cfg(feature = "anthropic")]
mod anthropic;
#[cfg(feature = "gemini")]
mod gemini;
#[cfg(feature = "openai")]
mod openai;

#[cfg(feature = "test-util")]
pub mod fake;

pub mod context;
#[cfg(feature = "knowledge")]
#[cfg_attr(docsrs, doc(cfg(feature = "knowledge")))]
pub mod knowledge;
pub mod prompt;

#[cfg(test)]
mod recorded;

use std::sync::Arc;

use flowbot_core::llm::{ChatModel, Embedder, ModelError, ModelErrorKind};

/// A setting out of its range: the message names the key (`models[0].retry.max_attempts`).
pub use flowbot_core::SettingsError;

pub use action::LlmAction;
pub use agent::{Agent, AgentBuilder, Limits};
pub use chain::{
    BreakerConfig, BreakerPolicy, BreakerState, ChainConfig, ChainEntry, ChainModelConfig,
    ModelChain, RetryConfig, RetryPolicy,
};
pub use config::{Dialect, ProviderConfig};
pub use observe::{LlmMetrics, LlmMetricsSnapshot, ModelMetrics, Observed};
pub use price::{
    Cost, Counting, DEFAULT_PRICES_AS_OF, MAX_PRICE_USD, ModelPrice, PriceConfig, PriceConfigError,
    PriceTable, PricesConfig,
};
pub use transport::{DEFAULT_MAX_RESPONSE_BYTES, Timeouts};

#[cfg(feature = "anthropic")]
pub use anthropic::Anthropic;
#[cfg(feature = "gemini")]
pub use gemini::{Gemini, GeminiEmbedder};
#[cfg(feature = "openai")]
pub use openai::{OpenAiChat, OpenAiEmbedder, OpenAiResponses};

fn not_built(config: &ProviderConfig, feature: &str) -> ModelError {
    ModelError::new(
        ModelErrorKind::Config,
        config.name(),
        format!("flowbot-llm was built without its '{feature}' feature"),
    )
}

/// The models an OpenAI-compatible server offers (`GET {base_url}/models`), in its order:
/// how a server started with only a base URL finds a model to use.
pub async fn list_models(config: &ProviderConfig) -> Result<Vec<String>, ModelError> {
    let mut endpoint = config.endpoint()?;
    if let Some(key) = config.key()? {
        if config.azure {
            endpoint.header("api-key", &key, true)?;
        } else {
            endpoint.header("authorization", &format!("Bearer {key}"), true)?;
        }
    }
    let list = endpoint.get_json("/models").await?;
    let ids = list
        .get("data")
        .and_then(serde_json::Value::as_array)
        .map(|items| {
            items
                .iter()
                .filter_map(|m| m.get("id").and_then(serde_json::Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(ids)
}

/// The chat model `config` describes.
pub fn connect(config: &ProviderConfig) -> Result<Arc<dyn ChatModel>, ModelError> {
    match config.dialect {
        #[cfg(feature = "openai")]
        Dialect::Openai => Ok(Arc::new(OpenAiChat::new(config)?)),
        #[cfg(feature = "openai")]
        Dialect::OpenaiResponses => Ok(Arc::new(OpenAiResponses::new(config)?)),
        #[cfg(feature = "anthropic")]
        Dialect::Anthropic => Ok(Arc::new(Anthropic::new(config)?)),
        #[cfg(feature = "gemini")]
        Dialect::Gemini => Ok(Arc::new(Gemini::new(config)?)),
        #[allow(unreachable_patterns)]
        other => Err(not_built(config, other.as_str())),
    }
}

/// The embedder `config` describes (its `embedding_model`). Anthropic has none.
pub fn connect_embedder(config: &ProviderConfig) -> Result<Arc<dyn Embedder>, ModelError> {
    match config.dialect {
        #[cfg(feature = "openai")]
        Dialect::Openai | Dialect::OpenaiResponses => Ok(Arc::new(OpenAiEmbedder::new(config)?)),
        #[cfg(feature = "gemini")]
        Dialect::Gemini => Ok(Arc::new(GeminiEmbedder::new(config)?)),
        Dialect::Anthropic => Err(ModelError::new(
            ModelErrorKind::Config,
            config.name(),
            "Anthropic has no embeddings API: use another provider or flowbot-gpu",
        )),
        #[allow(unreachable_patterns)]
        other => Err(not_built(config, other.as_str())),
    }
}
