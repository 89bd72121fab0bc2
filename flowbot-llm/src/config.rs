//! How a provider is configured: one struct for every dialect, readable from TOML.

use std::collections::BTreeMap;
use std::time::Duration;

use flowbot_core::llm::{ModelError, ModelErrorKind};
use serde::Deserialize;

use crate::transport::{DEFAULT_MAX_RESPONSE_BYTES, Endpoint, Timeouts};

/// Which wire dialect a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Dialect {
    /// OpenAI Chat Completions, and every server that speaks it (Ollama, vLLM, llama.cpp's
    /// server, OpenRouter, LiteLLM, Azure OpenAI).
    #[serde(alias = "openai_chat")]
    Openai,
    /// The OpenAI Responses API.
    OpenaiResponses,
    /// Anthropic Messages.
    Anthropic,
    /// Google Gemini `generateContent`.
    Gemini,
}

impl Dialect {
    /// The name used in config and metrics.
    pub fn as_str(&self) -> &'static str {
        match self {
            Dialect::Openai => "openai",
            Dialect::OpenaiResponses => "openai_responses",
            Dialect::Anthropic => "anthropic",
            Dialect::Gemini => "gemini",
        }
    }

    /// The provider's public base URL.
    pub fn default_base_url(&self) -> &'static str {
        match self {
            Dialect::Openai | Dialect::OpenaiResponses => "https://api.openai.com/v1",
            Dialect::Anthropic => "https://api.anthropic.com/v1",
            Dialect::Gemini => "https://generativelanguage.googleapis.com/v1beta",
        }
    }
}

/// One model at one provider.
///
/// ```
/// # use flowbot_llm::ProviderConfig;
/// let config: ProviderConfig = toml::from_str(r#"
///     dialect = "openai"
///     model = "llama3.2"
///     base_url = "http://127.0.0.1:11434/v1"   # Ollama
/// "#).unwrap();
/// assert_eq!(config.model, "llama3.2");
/// ```
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// The wire dialect.
    pub dialect: Dialect,
    /// The model's name at the provider (`gpt-4o-mini`, `claude-sonnet-4-5`, …).
    pub model: String,
    /// Base URL, up to and including the version segment (`https://api.openai.com/v1`).
    /// Defaults to the dialect's public API.
    #[serde(default)]
    pub base_url: Option<String>,
    /// The API key. Prefer `api_key_env`: a key in a file is a key in backups.
    #[serde(default)]
    pub api_key: Option<String>,
    /// The environment variable that holds the API key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Extra headers (OpenRouter's `HTTP-Referer`, an Azure deployment's own headers).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Extra query parameters (Azure OpenAI's `api-version`).
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Send the key as Azure's `api-key` header instead of `Authorization: Bearer`.
    #[serde(default)]
    pub azure: bool,
    /// The embedding model, for providers that have one.
    #[serde(default)]
    pub embedding_model: Option<String>,
    /// Seconds to connect and receive the response headers (default 10).
    #[serde(default)]
    pub connect_timeout_secs: Option<f64>,
    /// Seconds to the first event of an answer (default 60).
    #[serde(default)]
    pub first_token_timeout_secs: Option<f64>,
    /// Seconds of silence between events (default 30).
    #[serde(default)]
    pub idle_timeout_secs: Option<f64>,
    /// Seconds for a whole call (default 300).
    #[serde(default)]
    pub total_timeout_secs: Option<f64>,
    /// The most bytes an answer may have (default 8 MiB).
    #[serde(default)]
    pub max_response_bytes: Option<usize>,
}

impl std::fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProviderConfig")
            .field("dialect", &self.dialect)
            .field("model", &self.model)
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "[redacted]"))
            .field("api_key_env", &self.api_key_env)
            .field("headers", &self.headers.keys().collect::<Vec<_>>())
            .field("query", &self.query)
            .finish_non_exhaustive()
    }
}

impl ProviderConfig {
    /// A config for `model` in `dialect`, everything else default.
    pub fn new(dialect: Dialect, model: impl Into<String>) -> Self {
        ProviderConfig {
            dialect,
            model: model.into(),
            base_url: None,
            api_key: None,
            api_key_env: None,
            headers: BTreeMap::new(),
            query: BTreeMap::new(),
            azure: false,
            embedding_model: None,
            connect_timeout_secs: None,
            first_token_timeout_secs: None,
            idle_timeout_secs: None,
            total_timeout_secs: None,
            max_response_bytes: None,
        }
    }

    /// At this base URL.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// With this key.
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.api_key = Some(key.into());
        self
    }

    /// The name for logs, metrics and prices: `dialect/model`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.dialect.as_str(), self.model)
    }

    /// The key: `api_key`, else the variable `api_key_env` names. `Ok(None)` when neither is
    /// set (local servers need none); an error when the variable is named but unset.
    pub fn key(&self) -> Result<Option<String>, ModelError> {
        if let Some(k) = &self.api_key {
            return Ok(Some(k.clone()));
        }
        match &self.api_key_env {
            None => Ok(None),
            Some(var) => match std::env::var(var) {
                Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
                _ => Err(ModelError::new(
                    ModelErrorKind::Config,
                    self.name(),
                    format!("the environment variable {var} (api_key_env) is not set"),
                )),
            },
        }
    }

    /// The timeouts, checked: each must be a positive, finite number of seconds, at most a
    /// day.
    pub fn timeouts(&self) -> Result<Timeouts, ModelError> {
        let d = Timeouts::default();
        let pick = |key: &str, v: Option<f64>, default: Duration| match v {
            None => Ok(default),
            Some(s) if s.is_finite() && s > 0.0 && s <= 86_400.0 => Ok(Duration::from_secs_f64(s)),
            Some(s) => Err(ModelError::new(
                ModelErrorKind::Config,
                self.name(),
                format!("{key} = {s}: must be more than 0 and at most 86400 seconds"),
            )),
        };
        Ok(Timeouts {
            connect: pick("connect_timeout_secs", self.connect_timeout_secs, d.connect)?,
            first_token: pick(
                "first_token_timeout_secs",
                self.first_token_timeout_secs,
                d.first_token,
            )?,
            idle: pick("idle_timeout_secs", self.idle_timeout_secs, d.idle)?,
            total: pick("total_timeout_secs", self.total_timeout_secs, d.total)?,
        })
    }

    /// The endpoint every dialect starts from: base URL, extra headers and query, timeouts
    /// and size limit. The dialect adds its own authentication header.
    pub(crate) fn endpoint(&self) -> Result<Endpoint, ModelError> {
        let base = self
            .base_url
            .as_deref()
            .unwrap_or_else(|| self.dialect.default_base_url());
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                self.name(),
                format!("base_url '{base}' must start with http:// or https://"),
            ));
        }
        let mut e = Endpoint::new(self.name(), base);
        for (k, v) in &self.headers {
            e.header(k, v, false)?;
        }
        e.query = self
            .query
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        e.timeouts = self.timeouts()?;
        e.max_response_bytes = self
            .max_response_bytes
            .unwrap_or(DEFAULT_MAX_RESPONSE_BYTES);
        if e.max_response_bytes == 0 {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                self.name(),
                "max_response_bytes must be more than 0",
            ));
        }
        if let Some(key) = self.key()? {
            e.secrets.push(key);
        }
        e.finish()?;
        Ok(e)
    }
}
