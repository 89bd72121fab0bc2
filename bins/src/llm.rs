//! The assistant of `[llm]`: its models, prompt, tools and limits, as an [`Agent`].

use std::sync::Arc;

use flowbot_llm::Agent;

use crate::config::LlmConfig;
use crate::run::RunError;

/// The agent `[llm]` describes, or `None` when no model is configured. A model configured
/// with only a base URL (the quick start) gets the server's first model.
pub async fn assistant(config: &LlmConfig) -> Result<Option<Arc<Agent>>, RunError> {
    let Some(default) = config.default_name() else {
        return Ok(None);
    };
    let failed = |name: &str, e: flowbot_core::ModelError| {
        RunError::Llm(format!("llm.models.{name}: {e}"))
    };
    let mut models = Vec::new();
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
        let model = flowbot_llm::connect(&provider).map_err(|e| failed(name, e))?;
        tracing::info!(name = %name, model = %model.name(), "llm model configured");
        models.push((name.clone(), model));
    }
    let Some((_, main)) = models.iter().find(|(n, _)| n == default) else {
        return Err(RunError::Llm(format!("llm.default: no model named '{default}'")));
    };
    let mut builder = Agent::builder(main.clone())
        .tools(config.tools.iter().cloned())
        .approval(config.approval.iter().cloned())
        .limits(config.limits.clone())
        .cancel_on_new_message(config.cancel_on_new_message);
    if let Some(prompt) = &config.prompt {
        builder = builder.prompt(prompt.clone());
    }
    for (name, model) in models {
        builder = builder.model(name, model);
    }
    Ok(Some(Arc::new(builder.build()?)))
}

/// Fail at start when `[llm]` names a tool the bot does not have.
pub fn check_tools(
    config: &LlmConfig,
    actions: &flowbot_core::ActionRegistry,
) -> Result<(), RunError> {
    for (key, list) in [("llm.tools", &config.tools), ("llm.approval", &config.approval)] {
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
