//! Classifiers exported to TorchScript: a `model.pt` whose forward takes
//! `(input_ids, attention_mask)` and returns one row of logits per text, its labels in
//! `config.json` (`id2label`, as Hugging Face writes them) or `labels.json` (a list), loaded
//! and batched like an encoder.

use std::collections::BTreeMap;
use std::path::Path;

use async_trait::async_trait;
use flowbot_core::{Classifier, Label};

use crate::batcher::{BatchOptions, Batcher};
use crate::device::Options;
use crate::encoder::{Encoder, TORCHSCRIPT_FILE};
use crate::error::{Error, Result};

/// A TorchScript classifier behind a [`Batcher`]: its labels with softmax confidences.
/// Implements core's [`Classifier`] (its labels are fixed: [`Classifier::learn`] leaves it
/// as it is).
#[derive(Debug, Clone)]
pub struct ScriptClassifier {
    batcher: Batcher,
    labels: Vec<String>,
}

fn labels(dir: &Path) -> Result<Vec<String>> {
    let list = dir.join("labels.json");
    if list.is_file() {
        let text = std::fs::read_to_string(&list).map_err(|e| Error::load(&list, e))?;
        return serde_json::from_str(&text).map_err(|e| Error::load(&list, e));
    }
    let config = dir.join("config.json");
    let text = std::fs::read_to_string(&config).map_err(|_| {
        Error::load(
            dir,
            "no labels: give labels.json (a list) or config.json with id2label",
        )
    })?;
    #[derive(serde::Deserialize)]
    struct WithLabels {
        id2label: BTreeMap<String, String>,
    }
    let c: WithLabels = serde_json::from_str(&text).map_err(|e| Error::load(&config, e))?;
    let mut by_id = Vec::with_capacity(c.id2label.len());
    for (id, label) in c.id2label {
        let id: usize = id
            .parse()
            .map_err(|_| Error::load(&config, format!("id2label: '{id}' is not a number")))?;
        by_id.push((id, label));
    }
    by_id.sort();
    if by_id.iter().enumerate().any(|(i, (id, _))| i != *id) {
        return Err(Error::load(&config, "id2label: the ids are not 0, 1, 2, …"));
    }
    Ok(by_id.into_iter().map(|(_, l)| l).collect())
}

impl ScriptClassifier {
    /// Load `dir` (`model.pt`, `tokenizer.json`, the labels) and start its batcher.
    pub fn load(dir: impl AsRef<Path>, options: &Options, batch: BatchOptions) -> Result<Self> {
        let dir = dir.as_ref();
        let script = dir.join(TORCHSCRIPT_FILE);
        if !script.is_file() {
            return Err(Error::load(
                &script,
                "not found (a classifier is a TorchScript export)",
            ));
        }
        let labels = labels(dir)?;
        let encoder = Encoder::load(dir, options)?;
        if encoder.dimension() != labels.len() {
            return Err(Error::load(
                &script,
                format!(
                    "the model gives {} logits per text but {} labels are named",
                    encoder.dimension(),
                    labels.len()
                ),
            ));
        }
        Ok(ScriptClassifier {
            batcher: Batcher::start(encoder, batch)?,
            labels,
        })
    }

    /// The labels, in the model's order.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Its batcher (counters, name).
    pub fn batcher(&self) -> &Batcher {
        &self.batcher
    }

    /// Every label with its confidence for `text`, most confident first.
    pub async fn label(&self, text: &str) -> Result<Vec<Label>> {
        let logits = self.batcher.embed_one(text).await?;
        Ok(crate::intent::ranked(
            &self.labels,
            crate::intent::softmax(&logits, 1.0),
        ))
    }
}

#[async_trait]
impl Classifier for ScriptClassifier {
    async fn classify(&self, text: &str) -> flowbot_core::Result<Vec<Label>> {
        self.label(text)
            .await
            .map_err(|e| flowbot_core::Error::Model(e.into_model_error(self.batcher.name())))
    }
}
