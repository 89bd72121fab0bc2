//! `[llm]`: the language model that answers free text and calls actions as tools.

use std::collections::BTreeMap;
use std::path::PathBuf;

use flowbot_llm::{BreakerConfig, Dialect, Limits, PricesConfig, ProviderConfig, RetryConfig};
use serde::Deserialize;

use super::{ConfigError, err};

/// How the history is filtered before each answer (`[llm] relevance`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relevance {
    /// Every turn that fits the context window.
    #[default]
    None,
    /// Older turns sharing no keyword with the new message are left out (the two latest
    /// always stay).
    Keywords,
}

/// `[llm]`. Without any `[llm.models.*]` the bot has no model, unless the environment names
/// an OpenAI-compatible endpoint (see [`LlmConfig::from_openai_env`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmConfig {
    /// The models, by name: each a provider, a model and its settings.
    pub models: BTreeMap<String, ProviderConfig>,
    /// The model used when a rule names none. Default: the only one, or `default`.
    pub default: Option<String>,
    /// The system prompt: the name of a prompt in the library, or the text itself.
    pub prompt: Option<String>,
    /// A folder of prompt files (`<name>.toml`), merged into the prompts stored in the
    /// database at start: a file that is new or changed since it was last applied becomes
    /// its prompt's active version.
    pub prompts_dir: Option<PathBuf>,
    /// Values every prompt template sees as `vars` (`{{ vars.bot }}`).
    pub vars: BTreeMap<String, serde_json::Value>,
    /// Actions the model may call unless a rule names its own.
    pub tools: Vec<String>,
    /// Actions that need a person's approval before each call.
    pub approval: Vec<String>,
    /// Messages no rule matched go to the model.
    pub unmatched: bool,
    /// A newer message in the conversation stops an answer still being written.
    pub stop_on_new_message: bool,
    /// Leave older history turns unrelated to the new message out of the prompt: `none`
    /// (the default) or `keywords`.
    pub relevance: Relevance,
    /// Budgets of a run and per day.
    pub limits: Limits,
    /// Models tried, in order, when a model fails (names under `[llm.models]`).
    pub fallbacks: Vec<String>,
    /// Retries of each model (attempts, backoff, the longest `Retry-After` waited).
    pub retry: RetryConfig,
    /// The circuit breaker of each model.
    pub breaker: BreakerConfig,
    /// Prices per model, over the built-in ones (`[llm.prices.models."openai/gpt-4o"]`).
    pub prices: PricesConfig,
}

impl Default for LlmConfig {
    fn default() -> Self {
        LlmConfig {
            models: BTreeMap::new(),
            default: None,
            prompt: None,
            prompts_dir: None,
            vars: BTreeMap::new(),
            tools: vec!["send_later".into()],
            approval: Vec::new(),
            unmatched: true,
            stop_on_new_message: true,
            relevance: Relevance::None,
            limits: Limits::default(),
            fallbacks: Vec::new(),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            prices: PricesConfig::default(),
        }
    }
}

impl LlmConfig {
    /// Whether a model is configured.
    pub fn enabled(&self) -> bool {
        !self.models.is_empty()
    }

    /// The name of the default model.
    pub fn default_name(&self) -> Option<&str> {
        match &self.default {
            Some(d) => Some(d.as_str()),
            None if self.models.len() == 1 => self.models.keys().next().map(String::as_str),
            None => self.models.contains_key("default").then_some("default"),
        }
    }

    /// The quick start: with no model configured, `OPENAI_BASE_URL` (any OpenAI-compatible
    /// server: Ollama, vLLM, llama.cpp, LiteLLM…) or `OPENAI_API_KEY` (OpenAI itself) adds a
    /// model named `default`; `OPENAI_MODEL` names the model (default: the server's first
    /// model for a base URL, `gpt-4o-mini` for OpenAI).
    pub fn from_openai_env(&mut self, env: &BTreeMap<String, String>) {
        if !self.models.is_empty() {
            return;
        }
        let get = |k: &str| env.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let (base, key) = (get("OPENAI_BASE_URL"), get("OPENAI_API_KEY"));
        if base.is_none() && key.is_none() {
            return;
        }
        let model = get("OPENAI_MODEL").unwrap_or(if base.is_some() { "" } else { "gpt-4o-mini" });
        let mut p = ProviderConfig::new(Dialect::Openai, model);
        p.base_url = base.map(str::to_owned);
        if key.is_some() {
            p.api_key_env = Some("OPENAI_API_KEY".into());
        }
        self.models.insert("default".into(), p);
    }

    /// Check the section, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(dir) = &self.prompts_dir
            && dir.as_os_str().is_empty()
        {
            return Err(err(
                "llm.prompts_dir",
                "must be a directory path, not empty",
            ));
        }
        if self.models.is_empty() {
            return Ok(());
        }
        for (name, m) in &self.models {
            let at = format!("llm.models.{name}");
            m.timeouts().map_err(|e| err(&at, e.message))?;
            if let Some(var) = &m.api_key_env
                && m.api_key.is_some()
            {
                return Err(err(
                    format!("{at}.api_key"),
                    format!("set api_key or api_key_env ({var}), not both"),
                ));
            }
        }
        match self.default_name() {
            Some(d) if self.models.contains_key(d) => {}
            Some(d) => {
                return Err(err(
                    "llm.default",
                    format!("no model named '{d}' under [llm.models]"),
                ));
            }
            None => {
                return Err(err(
                    "llm.default",
                    "several models are configured: name the default one",
                ));
            }
        }
        self.limits.check().map_err(|e| err("llm.limits", e.0))?;
        for f in &self.fallbacks {
            if !self.models.contains_key(f) {
                return Err(err(
                    "llm.fallbacks",
                    format!("no model named '{f}' under [llm.models]"),
                ));
            }
        }
        self.retry
            .policy("retry")
            .map_err(|e| err("llm.retry", e.0))?;
        self.breaker
            .policy("breaker")
            .map_err(|e| err("llm.breaker", e.0))?;
        flowbot_llm::PriceTable::from_config(&self.prices)
            .map_err(|e| err(format!("llm.prices.{}", e.key), e.message))?;
        Ok(())
    }
}
