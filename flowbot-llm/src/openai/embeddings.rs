//! Embeddings: `POST {base}/embeddings`, at most 2048 inputs a request.

use std::sync::OnceLock;

use async_trait::async_trait;
use flowbot_core::llm::{Embedder, ModelError, ModelErrorKind};
use serde_json::{Value, json};

use super::{classify, endpoint};
use crate::config::ProviderConfig;
use crate::transport::Endpoint;

/// The most inputs OpenAI takes in one embeddings request.
const MAX_BATCH: usize = 2048;

/// OpenAI's embeddings (and every server that speaks the same API).
#[derive(Debug)]
pub struct OpenAiEmbedder {
    endpoint: Endpoint,
    name: String,
    model: String,
    /// Known after the first answer.
    dimension: OnceLock<usize>,
}

impl OpenAiEmbedder {
    /// The embedder `config` describes: its `embedding_model` at its base URL.
    pub fn new(config: &ProviderConfig) -> Result<Self, ModelError> {
        let Some(model) = config
            .embedding_model
            .clone()
            .filter(|m| !m.trim().is_empty())
        else {
            return Err(ModelError::new(
                ModelErrorKind::Config,
                config.name(),
                "embedding_model is not set: name the provider's embedding model (e.g. text-embedding-3-small)",
            ));
        };
        let mut endpoint = endpoint(config)?;
        let name = format!("openai/{model}");
        endpoint.name = name.clone();
        Ok(OpenAiEmbedder {
            endpoint,
            name,
            model,
            dimension: OnceLock::new(),
        })
    }

    fn protocol(&self, message: String) -> ModelError {
        ModelError::new(ModelErrorKind::Protocol, &self.name, message)
    }

    /// One request's vectors, in the order of `texts`.
    async fn batch(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let body = json!({
            "model": self.model,
            "input": texts,
            "encoding_format": "float",
        });
        let answer = self
            .endpoint
            .post_json("/embeddings", &[], &body, classify)
            .await?;
        let data = answer
            .get("data")
            .and_then(Value::as_array)
            .ok_or_else(|| self.protocol("the answer has no 'data' list".into()))?;
        let mut vectors: Vec<Option<Vec<f32>>> = vec![None; texts.len()];
        for (n, item) in data.iter().enumerate() {
            let index = item
                .get("index")
                .and_then(Value::as_u64)
                .and_then(|i| usize::try_from(i).ok())
                .ok_or_else(|| self.protocol(format!("data[{n}] has no index")))?;
            let slot = vectors.get_mut(index).ok_or_else(|| {
                self.protocol(format!(
                    "data[{n}] has index {index}, but {} texts were sent",
                    texts.len()
                ))
            })?;
            if slot.is_some() {
                return Err(self.protocol(format!("index {index} appears twice")));
            }
            let embedding = item
                .get("embedding")
                .and_then(Value::as_array)
                .ok_or_else(|| {
                    self.protocol(format!(
                        "data[{n}]: 'embedding' is not a list of numbers (base64?)"
                    ))
                })?;
            let vector = embedding
                .iter()
                .map(|x| x.as_f64().map(|x| x as f32))
                .collect::<Option<Vec<f32>>>()
                .ok_or_else(|| self.protocol(format!("data[{n}]: an element is not a number")))?;
            if vector.is_empty() {
                return Err(self.protocol(format!("data[{n}]: the vector is empty")));
            }
            *slot = Some(vector);
        }
        vectors
            .into_iter()
            .enumerate()
            .map(|(i, v)| v.ok_or_else(|| self.protocol(format!("no vector for text {i}"))))
            .collect()
    }
}

#[async_trait]
impl Embedder for OpenAiEmbedder {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> Option<usize> {
        self.dimension.get().copied()
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        let mut out = Vec::with_capacity(texts.len());
        for (b, batch) in texts.chunks(MAX_BATCH).enumerate() {
            let vectors = self.batch(batch).await?;
            let first = b.saturating_mul(MAX_BATCH);
            for (i, v) in vectors.iter().enumerate() {
                let known = *self.dimension.get_or_init(|| v.len());
                if v.len() != known {
                    return Err(self.protocol(format!(
                        "the vector for text {} has {} dimensions, not {known}",
                        first.saturating_add(i),
                        v.len()
                    )));
                }
            }
            out.extend(vectors);
        }
        Ok(out)
    }
}
