//! The assistant of `[llm]`: its models, prompt library, tools and limits, as an [`Agent`].

use std::collections::BTreeMap;
use std::sync::Arc;

use flowbot_core::ChatModel;
use flowbot_llm::prompt::SharedPrompts;
use flowbot_llm::{
    Agent, BreakerConfig, ChainConfig, ChainModelConfig, LlmMetrics, ModelChain, PriceTable,
    RetryConfig,
};

use crate::config::LlmConfig;
use crate::run::RunError;

/// The assistant of `[llm]` and the metrics of its model calls.
#[derive(Clone)]
pub struct Assistant {
    /// The agent.
    pub agent: Arc<Agent>,
    /// Calls, tokens, costs, latencies and errors per model (rendered at `/metrics`).
    pub metrics: Arc<LlmMetrics>,
    /// The prompt library the agent renders from (and the REST API manages).
    pub prompts: Arc<SharedPrompts>,
}

/// The prompt library of `[llm]`: the files of `prompts_dir` (read now, so a bad file stops
/// the start with its path), merged into the database's prompts at the first use.
pub async fn prompts(config: &LlmConfig) -> Result<Arc<SharedPrompts>, RunError> {
    let Some(dir) = config.prompts_dir.clone() else {
        return Ok(Arc::new(SharedPrompts::default()));
    };
    let shown = dir.display().to_string();
    let shared = tokio::task::spawn_blocking(move || SharedPrompts::from_dir(&dir))
        .await
        .map_err(|e| RunError::Llm(format!("llm.prompts_dir: {e}")))?
        .map_err(|e| RunError::Llm(format!("llm.prompts_dir ({shown}): {e}")))?;
    let names: Vec<&str> = shared.files().names().collect();
    tracing::info!(dir = %shown, prompts = ?names, "prompt files loaded");
    Ok(Arc::new(shared))
}

/// The agent `[llm]` describes, or `None` when no model is configured. Each model is a
/// chain: the model, then `llm.fallbacks`, each with retries and a circuit breaker, every
/// call measured. A model configured with only a base URL (the quick start) gets the
/// server's first model.
pub async fn assistant(
    config: &LlmConfig,
    knowledge: Option<&crate::knowledge::KnowledgeBase>,
) -> Result<Option<Assistant>, RunError> {
    let Some(default) = config.default_name() else {
        return Ok(None);
    };
    let failed =
        |name: &str, e: flowbot_core::ModelError| RunError::Llm(format!("llm.models.{name}: {e}"));
    let mut providers = BTreeMap::new();
    for (name, provider) in &config.models {
        let mut provider = provider.clone();
        if provider.model.trim().is_empty() {
            let listed = flowbot_llm::list_models(&provider)
                .await
                .map_err(|e| failed(name, e))?;
            let Some(first) = listed.into_iter().next() else {
                return Err(RunError::Llm(format!(
                    "llm.models.{name}: the server at {} lists no models; set OPENAI_MODEL or llm.models.{name}.model",
                    provider.base_url.as_deref().unwrap_or_default()
                )));
            };
            tracing::info!(model = %first, "llm: using the server's first model");
            provider.model = first;
        }
        providers.insert(name.clone(), provider);
    }
    let prices = PriceTable::from_config(&config.prices)
        .map_err(|e| RunError::Llm(format!("llm.prices.{}: {}", e.key, e.message)))?;
    let metrics = LlmMetrics::new(prices);
    let mut chains: Vec<(String, Arc<dyn ChatModel>)> = Vec::new();
    for name in providers.keys() {
        let order = std::iter::once(name).chain(config.fallbacks.iter().filter(|f| *f != name));
        let chain = ChainConfig {
            name: Some(name.clone()),
            retry: config.retry.clone(),
            breaker: config.breaker.clone(),
            models: order
                .filter_map(|n| providers.get(n))
                .map(|p| ChainModelConfig {
                    provider: p.clone(),
                    retry: RetryConfig::default(),
                    breaker: BreakerConfig::default(),
                })
                .collect(),
        };
        let model = ModelChain::from_config(&chain, Some(&metrics)).map_err(|e| failed(name, e))?;
        tracing::info!(name = %name, models = ?chain.models.iter().map(|m| m.provider.name()).collect::<Vec<_>>(), "llm model configured");
        chains.push((name.clone(), Arc::new(model)));
    }
    let Some((_, main)) = chains.iter().find(|(n, _)| n == default) else {
        return Err(RunError::Llm(format!(
            "llm.default: no model named '{default}'"
        )));
    };
    let prompts = prompts(config).await?;
    let mut builder = Agent::builder(main.clone())
        .prompts(prompts.clone())
        .prompt_vars(config.vars.clone().into_iter().collect())
        .prices(metrics.prices().clone())
        .tools(config.tools.iter().cloned())
        .approval(config.approval.iter().cloned())
        .limits(config.limits.clone())
        .stop_when_overtaken(config.stop_on_new_message);
    if config.relevance == crate::config::Relevance::Keywords {
        builder = builder.relevance(Arc::new(flowbot_llm::context::KeywordFilter::default()));
    }
    if let Some(prompt) = &config.prompt {
        builder = builder.prompt(prompt.clone());
    }
    if let Some(kb) = knowledge {
        builder = builder
            .knowledge(kb.knowledge.clone())
            .knowledge_options(kb.answers.clone());
    }
    for (name, model) in chains {
        // Prompt variants and prices go by the chain's first model, `dialect/model`.
        if let Some(p) = providers.get(&name) {
            builder = builder.model_id(name.clone(), p.name());
        }
        builder = builder.model(name, model);
    }
    Ok(Some(Assistant {
        agent: Arc::new(builder.build()?),
        metrics,
        prompts,
    }))
}

/// Fail at start when `[llm]` names a tool the bot does not have.
pub fn check_tools(
    config: &LlmConfig,
    actions: &flowbot_core::ActionRegistry,
) -> Result<(), RunError> {
    for (key, list) in [
        ("llm.tools", &config.tools),
        ("llm.approval", &config.approval),
    ] {
        for t in list {
            if !actions.contains(t) {
                let known: Vec<String> = actions.list().into_iter().map(|a| a.name).collect();
                return Err(RunError::Llm(format!(
                    "{key}: no action named '{t}' (actions: {})",
                    known.join(", ")
                )));
            }
        }
    }
    Ok(())
}
