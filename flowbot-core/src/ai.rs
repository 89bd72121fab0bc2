//! Traits for models that other crates implement, so that the rules engine, the LLM crate and
//! the GPU crate meet without depending on each other.

use std::collections::BTreeMap;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::Result;

/// One label a [`Classifier`] gives a text, with its confidence in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// The label, e.g. an intent name such as `greeting`.
    pub label: String,
    /// How sure the classifier is, from 0 to 1.
    pub confidence: f32,
}

/// Labels a text, e.g. with the intent behind a message. `flowbot-gpu` implements it with
/// local models; rules use it through the `intent` condition.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot classifier",
    note = "implement `Classifier::classify`, returning labels with confidences"
)]
pub trait Classifier: Send + Sync + 'static {
    /// The labels for `text`, in any order. Labels the classifier does not know of are
    /// simply absent.
    async fn classify(&self, text: &str) -> Result<Vec<Label>>;

    /// Learn the labels from example texts (label → texts): the rules engine calls it with
    /// the examples its `intent` conditions declare, each time the rules load, before the
    /// rules are put in force; an error keeps the previous rules and model. The provided
    /// method ignores the examples, for classifiers whose labels are fixed (a remote
    /// service, a model trained elsewhere).
    async fn learn(&self, examples: &BTreeMap<String, Vec<String>>) -> Result<()> {
        let _ = examples;
        Ok(())
    }
}
