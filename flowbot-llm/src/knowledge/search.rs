//! Retrieval: vector search fused with keyword search, thresholds, reranking.

use std::collections::HashMap;

use async_trait::async_trait;
use flowbot_core::vector::{Filter, Hit, MAX_LIMIT, TEXT_KEY, TextQuery, VectorQuery};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{Knowledge, KnowledgeError};

/// The `k` of reciprocal rank fusion: a passage ranked `r` (from 1) in a list scores
/// `1 / (RRF_K + r)` from it.
pub const RRF_K: f32 = 60.0;

/// How [`Knowledge::search`] searches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SearchOptions {
    /// Most passages (default 5).
    pub limit: usize,
    /// Metadata conditions on the chunks' payload (`source`, `title`, `section`, `page`,
    /// `kind`, `url`, `hash`, `chunk`).
    pub filter: Filter,
    /// The least vector score (cosine similarity) the best passage must reach; under it,
    /// nothing is returned, and the bot says it does not know. Vector hits under it are
    /// left out of the fusion.
    pub threshold: Option<f32>,
    /// Fuse the store's keyword search (when it has one) with the vector search (default
    /// true).
    pub hybrid: bool,
    /// Hits taken from each search before fusion and reranking; `None`: 4 × `limit`.
    pub candidates: Option<usize>,
}

impl Default for SearchOptions {
    fn default() -> Self {
        SearchOptions {
            limit: 5,
            filter: Filter::default(),
            threshold: None,
            hybrid: true,
            candidates: None,
        }
    }
}

impl SearchOptions {
    fn candidates(&self) -> usize {
        self.candidates
            .unwrap_or(self.limit.saturating_mul(4))
            .max(self.limit)
            .clamp(1, MAX_LIMIT)
    }
}

/// A passage found: a chunk of a document, with where it comes from and how it scored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Passage {
    /// The chunk's id.
    pub id: String,
    /// Its text.
    pub text: String,
    /// Its document's title.
    pub title: String,
    /// Its document's path or URL.
    pub source: String,
    /// The heading it is under.
    pub section: Option<String>,
    /// Its page (PDFs).
    pub page: Option<u32>,
    /// Its document's URL, when the source is one.
    pub url: Option<String>,
    /// Its rank score: the reciprocal rank fusion of both searches when the keyword search
    /// took part, else the vector score (a reranker may set its own).
    pub score: f32,
    /// Its vector score, when the vector search found it.
    pub vector_score: Option<f32>,
    /// Its rank in the keyword search (from 1), when that found it.
    pub keyword_rank: Option<usize>,
}

impl Passage {
    fn from_payload(id: String, payload: &Map<String, Value>) -> Self {
        let s = |k: &str| payload.get(k).and_then(Value::as_str).map(str::to_owned);
        Passage {
            id,
            text: s(TEXT_KEY).unwrap_or_default(),
            title: s("title").unwrap_or_default(),
            source: s("source").unwrap_or_default(),
            section: s("section"),
            page: payload
                .get("page")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok()),
            url: s("url"),
            score: 0.0,
            vector_score: None,
            keyword_rank: None,
        }
    }
}

/// Reorders passages for a query (a cross-encoder, a model), best first; it may drop some
/// and set their scores.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a knowledge base reranker",
    note = "implement `Reranker::rerank`, returning the passages best first"
)]
pub trait Reranker: Send + Sync + 'static {
    /// The passages for `query`, best first.
    async fn rerank(
        &self,
        query: &str,
        passages: Vec<Passage>,
    ) -> Result<Vec<Passage>, KnowledgeError>;
}

/// Fuse a vector ranking and a keyword ranking by reciprocal rank fusion, best first (ties:
/// the higher vector score, then the id).
pub(crate) fn fuse(vector: &[Hit], keyword: Option<&[Hit]>) -> Vec<Passage> {
    let mut by_id: HashMap<&str, Passage> = HashMap::new();
    for (rank, hit) in vector.iter().enumerate() {
        let p = by_id
            .entry(hit.id.as_str())
            .or_insert_with(|| Passage::from_payload(hit.id.clone(), &hit.payload));
        p.vector_score = Some(hit.score);
        p.score = match keyword {
            Some(_) => 1.0 / (RRF_K + (rank + 1) as f32),
            None => hit.score,
        };
    }
    for (rank, hit) in keyword.unwrap_or_default().iter().enumerate() {
        let p = by_id
            .entry(hit.id.as_str())
            .or_insert_with(|| Passage::from_payload(hit.id.clone(), &hit.payload));
        p.keyword_rank = Some(rank + 1);
        p.score += 1.0 / (RRF_K + (rank + 1) as f32);
    }
    let mut all: Vec<Passage> = by_id.into_values().collect();
    all.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then_with(|| {
                b.vector_score
                    .unwrap_or(f32::NEG_INFINITY)
                    .total_cmp(&a.vector_score.unwrap_or(f32::NEG_INFINITY))
            })
            .then_with(|| a.id.cmp(&b.id))
    });
    all
}

impl Knowledge {
    /// The passages of `collection` that answer `query`, best first: the nearest chunks by
    /// vector, fused with the store's keyword search when `options.hybrid` and the store
    /// has one, reranked when the knowledge base has a [`Reranker`]. Empty when a
    /// threshold is set and no chunk reaches it.
    pub async fn search(
        &self,
        collection: &str,
        query: &str,
        options: &SearchOptions,
    ) -> Result<Vec<Passage>, KnowledgeError> {
        if options.limit == 0 || options.limit > MAX_LIMIT {
            return Err(KnowledgeError::Options(format!(
                "search limit = {}: must be 1 to {MAX_LIMIT}",
                options.limit
            )));
        }
        if query.trim().is_empty() {
            return Ok(Vec::new());
        }
        let candidates = options.candidates();
        let embed_error = |error| KnowledgeError::Embed {
            source_name: "query".into(),
            error,
        };
        let vector = self
            .embedder
            .embed(&[query.to_owned()])
            .await
            .map_err(embed_error)?
            .pop()
            .unwrap_or_default();
        let context = || format!("search in collection {collection}");
        let spec = self
            .vectors
            .collection(collection)
            .await
            .map_err(KnowledgeError::vectors(context()))?
            .ok_or_else(|| {
                KnowledgeError::vectors(context())(
                    flowbot_core::vector::VectorError::UnknownCollection(collection.to_owned()),
                )
            })?
            .spec;
        if vector.len() != spec.dimension {
            return Err(KnowledgeError::Dimension {
                source_name: "query".into(),
                collection: collection.to_owned(),
                expected: spec.dimension,
                got: vector.len(),
            });
        }
        let vq = VectorQuery {
            vector,
            limit: candidates,
            filter: options.filter.clone(),
            threshold: options.threshold,
        };
        // Both searches at once: the keyword query goes to the database (its own thread)
        // while the vector search runs here; it is polled first so it starts first.
        let keywords = async {
            if !options.hybrid {
                return Ok(None);
            }
            let tq = TextQuery {
                text: query.to_owned(),
                limit: candidates,
                filter: options.filter.clone(),
            };
            self.vectors.search_text(collection, &tq).await
        };
        let (keyword_hits, vector_hits) =
            tokio::join!(keywords, self.vectors.search(collection, &vq));
        let vector_hits = vector_hits.map_err(KnowledgeError::vectors(context()))?;
        if options.threshold.is_some() && vector_hits.is_empty() {
            return Ok(Vec::new());
        }
        let keyword_hits = keyword_hits.map_err(KnowledgeError::vectors(context()))?;
        let mut passages = fuse(&vector_hits, keyword_hits.as_deref());
        passages.truncate(candidates);
        if let Some(reranker) = &self.reranker {
            passages = reranker.rerank(query, passages).await?;
        }
        passages.truncate(options.limit);
        Ok(passages)
    }

    /// Passages as a plain list for a chat command (`/kb <query>`), without a model:
    /// numbered, with title, section, page and source, and the start of the text.
    pub fn format_hits(passages: &[Passage]) -> String {
        if passages.is_empty() {
            return "Nothing found in the knowledge base.".to_owned();
        }
        let mut out = String::new();
        for (i, p) in passages.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            out.push_str(&format!("{}. {}", i + 1, super::cite::label(p)));
            let snippet = snippet(&p.text, 200);
            if !snippet.is_empty() {
                out.push_str("\n   ");
                out.push_str(&snippet);
            }
        }
        out
    }
}

/// The first `max` characters of `text` on one line, cut at a word with "…".
pub(crate) fn snippet(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max).collect();
    if let Some(space) = cut.rfind(' ') {
        cut.truncate(space);
    }
    cut.push('…');
    cut
}
