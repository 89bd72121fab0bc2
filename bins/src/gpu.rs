//! Local inference (`[gpu]`, feature `gpu`): the sentence encoder on its batcher, and the
//! intent classifier the rules train.

use std::sync::Arc;

use flowbot_gpu::{BatchOptions, Batcher, Encoder, IntentClassifier, Options, TrainOptions};
use flowbot_rules::RuleLibrary;

use crate::config::GpuConfig;
use crate::run::RunError;

/// The models loaded from `[gpu]`.
#[derive(Debug, Clone)]
pub struct LocalModels {
    /// The sentence encoder behind its batcher (core's `Embedder`).
    pub embedder: Batcher,
    /// The intent classifier on it.
    pub classifier: Arc<IntentClassifier>,
}

/// Load the encoder of `config` (on a blocking thread: reading weights and the warm-up pass
/// take a moment) and start its batcher; `None` when `[gpu]` is off or names no model.
pub async fn load(config: &GpuConfig) -> Result<Option<LocalModels>, RunError> {
    if !config.enabled {
        return Ok(None);
    }
    let Some(dir) = config.model_dir() else {
        return Ok(None);
    };
    let mut options = Options::default().device(config.device.parse()?).precision(
        match config.precision.as_str() {
            "f16" => flowbot_gpu::Precision::F16,
            "bf16" => flowbot_gpu::Precision::Bf16,
            _ => flowbot_gpu::Precision::F32,
        },
    );
    if let Some(n) = config.threads {
        options = options.threads(n);
    }
    let started = tokio::time::Instant::now();
    let encoder = tokio::task::spawn_blocking(move || Encoder::load(dir, &options))
        .await
        .map_err(|e| RunError::Stopped(format!("loading the model: {e}")))??;
    tracing::info!(
        model = encoder.name(),
        device = %encoder.device(),
        dimension = encoder.dimension(),
        took_ms = started.elapsed().as_millis() as u64,
        "local model loaded"
    );
    let embedder = Batcher::start(
        encoder,
        BatchOptions::default()
            .max_batch(config.max_batch)
            .max_wait(config.max_wait)
            .queue(config.queue),
    )?;
    let classifier = Arc::new(IntentClassifier::new(
        embedder.clone(),
        TrainOptions::default(),
    ));
    Ok(Some(LocalModels {
        embedder,
        classifier,
    }))
}

/// Give `rules` the classifier, trained now with their examples.
pub async fn attach(models: &LocalModels, rules: &RuleLibrary) -> Result<(), RunError> {
    rules.set_classifier(models.classifier.clone()).await?;
    if let Some(t) = models.classifier.training() {
        tracing::info!(
            intents = t.labels.len(),
            examples = t.examples,
            held_out_accuracy = ?t.held_out_accuracy,
            "intent classifier trained"
        );
    }
    Ok(())
}
