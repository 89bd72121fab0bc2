//! `[knowledge]`: the knowledge base — collections of document chunks in the database's
//! embedded vector store, embedded by a local model or a provider's API, searched by the
//! `llm` action's `knowledge`, the `kb_search` action and the REST API (docs/knowledge.md).

use std::path::PathBuf;

use serde::Deserialize;

use super::{ConfigError, err};

/// `[knowledge]`. Off until `embedder` names one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KnowledgeConfig {
    /// Where embeddings come from: `local` (the `[gpu]` model, in a server built with the
    /// `gpu` feature) or the name of a model under `[llm.models]` whose provider embeds
    /// (its `embedding_model`). None: no knowledge base.
    pub embedder: Option<String>,
    /// The collection `kb ingest`, `kb eval` and `kb_search` use when none is named, and
    /// that the assistant searches for every answer when `always` is on.
    pub collection: String,
    /// Ground every answer of the assistant in `collection` (not only the `llm` actions that
    /// name one).
    pub always: bool,
    /// The folder files given to the API and to chat commands must lie in (the CLI reads any
    /// path it is given). None: the API ingests inline text and URLs only.
    pub root: Option<PathBuf>,
    /// Passages per answer.
    pub limit: usize,
    /// The least cosine similarity the best passage must reach; under it the bot says it
    /// does not know (0 disables the check).
    pub threshold: f32,
    /// Fuse keyword search with vector search.
    pub hybrid: bool,
    /// Most tokens the passages may take in a prompt.
    pub max_tokens: usize,
    /// The answer when nothing relevant is found.
    pub dont_know: Option<String>,
    /// Largest document, in bytes.
    pub max_file_bytes: u64,
    /// Tokens per chunk.
    pub chunk_tokens: usize,
    /// Tokens a chunk repeats from the one before it.
    pub chunk_overlap: usize,
    /// Texts per embedder call.
    pub batch_size: usize,
    /// Below this many chunks a collection is searched exactly, above it through the HNSW
    /// graph.
    pub exact_below: usize,
    /// Candidates the graph keeps while searching (more: slower, finds more).
    pub ef_search: usize,
    /// Keep the collections in Qdrant instead of the database's embedded vector store.
    pub qdrant: Option<QdrantConfig>,
}

/// `[knowledge.qdrant]`: the knowledge base's vectors in a Qdrant server (its gRPC port). The
/// documents' records and the ingestion jobs stay in the database.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QdrantConfig {
    /// Qdrant's gRPC endpoint: `http://host:6334`, or `https://…` for TLS.
    pub url: String,
    /// Its API key, if it wants one; write it `{{ secrets.NAME }}`.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for QdrantConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QdrantConfig")
            .field("url", &flowbot_store::redact_url(&self.url))
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for KnowledgeConfig {
    fn default() -> Self {
        KnowledgeConfig {
            embedder: None,
            collection: "docs".into(),
            always: false,
            root: None,
            limit: 5,
            threshold: 0.0,
            hybrid: true,
            max_tokens: 4_000,
            dont_know: None,
            max_file_bytes: 20 * 1024 * 1024,
            chunk_tokens: 256,
            chunk_overlap: 32,
            batch_size: 64,
            exact_below: 10_000,
            ef_search: 128,
            qdrant: None,
        }
    }
}

impl KnowledgeConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        flowbot_core::vector::check_collection_name(&self.collection)
            .map_err(|e| err("knowledge.collection", e.to_string()))?;
        let ranges = [
            ("knowledge.limit", self.limit, 1, 100),
            ("knowledge.max_tokens", self.max_tokens, 100, 1_000_000),
            ("knowledge.chunk_tokens", self.chunk_tokens, 16, 8_192),
            ("knowledge.batch_size", self.batch_size, 1, 2_048),
            ("knowledge.ef_search", self.ef_search, 1, 10_000),
        ];
        for (key, value, low, high) in ranges {
            if !(low..=high).contains(&value) {
                return Err(err(key, format!("{value}: must be from {low} to {high}")));
            }
        }
        if !(1..=1 << 30).contains(&self.max_file_bytes) {
            return Err(err(
                "knowledge.max_file_bytes",
                format!("{}: must be from 1 to 1073741824", self.max_file_bytes),
            ));
        }
        if self.chunk_overlap >= self.chunk_tokens {
            return Err(err(
                "knowledge.chunk_overlap",
                format!(
                    "{}: must be less than chunk_tokens ({})",
                    self.chunk_overlap, self.chunk_tokens
                ),
            ));
        }
        if !(self.threshold.is_finite() && (-1.0..=1.0).contains(&self.threshold)) {
            return Err(err(
                "knowledge.threshold",
                format!("{}: must be from -1 to 1", self.threshold),
            ));
        }
        if self
            .embedder
            .as_deref()
            .is_some_and(|e| e.trim().is_empty())
        {
            return Err(err(
                "knowledge.embedder",
                "must be `local` or the name of a model under [llm.models]",
            ));
        }
        if let Some(q) = &self.qdrant
            && !(q.url.starts_with("http://") || q.url.starts_with("https://"))
        {
            return Err(err(
                "knowledge.qdrant.url",
                format!(
                    "{:?}: must be Qdrant's gRPC endpoint, http://host:6334 or https://…",
                    flowbot_store::redact_url(&q.url)
                ),
            ));
        }
        Ok(())
    }
}
