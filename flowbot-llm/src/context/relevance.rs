//! Relevance filtering of history: which older turns a prompt about the latest user message
//! still needs.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use flowbot_core::llm::{Embedder, ModelError, ModelErrorKind};

/// Picks the older turns that matter for the latest user message. The context manager asks
/// it after trimming to the budget, about the older turns that fit (never the latest turn):
/// those it leaves out are reported as [`DropReason::Irrelevant`](super::DropReason) and stay
/// in the history, since a later question may need them again.
///
/// Two are here: [`KeywordFilter`] (shared words) and [`EmbeddingFilter`] (cosine similarity
/// of sentence embeddings from any core [`Embedder`], e.g. OpenAI's, Gemini's or
/// flowbot-gpu's). Implement the trait for anything else (a classifier, a reranker).
#[async_trait]
pub trait RelevanceFilter: Send + Sync + fmt::Debug {
    /// For each turn (its transcript, oldest first), whether to keep it for a prompt that
    /// answers `latest`. The answer has exactly one entry per turn.
    async fn relevant(&self, latest: &str, turns: &[String]) -> Result<Vec<bool>, ModelError>;
}

/// Words too common to say two texts are about the same thing.
const STOPWORDS: &[&str] = &[
    "about",
    "after",
    "again",
    "all",
    "also",
    "and",
    "any",
    "are",
    "assistant",
    "because",
    "been",
    "before",
    "but",
    "can",
    "could",
    "did",
    "does",
    "doing",
    "for",
    "from",
    "had",
    "has",
    "have",
    "her",
    "here",
    "him",
    "his",
    "how",
    "its",
    "just",
    "like",
    "more",
    "most",
    "not",
    "now",
    "off",
    "once",
    "only",
    "other",
    "our",
    "out",
    "over",
    "please",
    "same",
    "she",
    "should",
    "some",
    "such",
    "than",
    "thank",
    "thanks",
    "that",
    "the",
    "their",
    "them",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "too",
    "under",
    "until",
    "user",
    "very",
    "was",
    "way",
    "were",
    "what",
    "when",
    "where",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "would",
    "yes",
    "you",
    "your",
];

/// The keywords of a text: lowercased runs of letters and digits, at least 3 characters
/// long (or any length when not ASCII, e.g. CJK), stop words left out.
pub fn keywords(text: &str) -> HashSet<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| !w.is_ascii() || w.len() >= 3)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// Keeps the turns that share at least `min_shared` keywords ([`keywords`]) with the latest
/// user message, and always the `keep_recent` most recent ones (a short answer such as "yes,
/// do it" needs the turn before it). A latest message without keywords keeps everything.
#[derive(Debug, Clone)]
pub struct KeywordFilter {
    /// The most recent older turns kept whatever they say (default 2).
    pub keep_recent: usize,
    /// Keywords a turn must share with the latest message (default 1).
    pub min_shared: usize,
}

impl Default for KeywordFilter {
    fn default() -> Self {
        KeywordFilter {
            keep_recent: 2,
            min_shared: 1,
        }
    }
}

/// Whether turn `i` of `n` is one of the `keep` most recent.
fn recent(i: usize, n: usize, keep: usize) -> bool {
    n.saturating_sub(i) <= keep
}

#[async_trait]
impl RelevanceFilter for KeywordFilter {
    async fn relevant(&self, latest: &str, turns: &[String]) -> Result<Vec<bool>, ModelError> {
        let wanted = keywords(latest);
        let n = turns.len();
        Ok(turns
            .iter()
            .enumerate()
            .map(|(i, turn)| {
                wanted.is_empty()
                    || recent(i, n, self.keep_recent)
                    || keywords(turn).intersection(&wanted).count() >= self.min_shared.max(1)
            })
            .collect())
    }
}

/// Keeps the turns whose embedding is at least `threshold` cosine-similar to the latest user
/// message's, and always the `keep_recent` most recent. One call to the embedder embeds the
/// latest message and every turn.
#[derive(Clone)]
pub struct EmbeddingFilter {
    embedder: Arc<dyn Embedder>,
    /// Least cosine similarity kept (default 0.3; depends on the model: measure).
    pub threshold: f32,
    /// The most recent older turns kept whatever they say (default 2).
    pub keep_recent: usize,
    /// Each text is cut to this many characters before embedding (default 4000), within
    /// what embedding models take.
    pub max_chars: usize,
}

impl fmt::Debug for EmbeddingFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmbeddingFilter")
            .field("embedder", &self.embedder.name())
            .field("threshold", &self.threshold)
            .field("keep_recent", &self.keep_recent)
            .finish()
    }
}

impl EmbeddingFilter {
    /// A filter over `embedder` with the defaults.
    pub fn new(embedder: Arc<dyn Embedder>) -> Self {
        EmbeddingFilter {
            embedder,
            threshold: 0.3,
            keep_recent: 2,
            max_chars: 4000,
        }
    }
}

/// Cosine similarity; 0 for a zero vector or vectors of different lengths.
fn cosine(a: &[f32], b: &[f32]) -> f32 {
    if a.len() != b.len() {
        return 0.0;
    }
    let (mut dot, mut na, mut nb) = (0.0f64, 0.0f64, 0.0f64);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (f64::from(*x), f64::from(*y));
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 || !dot.is_finite() {
        return 0.0;
    }
    (dot / (na.sqrt() * nb.sqrt())) as f32
}

#[async_trait]
impl RelevanceFilter for EmbeddingFilter {
    async fn relevant(&self, latest: &str, turns: &[String]) -> Result<Vec<bool>, ModelError> {
        if turns.is_empty() {
            return Ok(Vec::new());
        }
        let cut = |s: &str| s.chars().take(self.max_chars).collect::<String>();
        let mut texts = Vec::with_capacity(turns.len() + 1);
        texts.push(cut(latest));
        texts.extend(turns.iter().map(|t| cut(t)));
        let vectors = self.embedder.embed(&texts).await?;
        if vectors.len() != texts.len() {
            return Err(ModelError::new(
                ModelErrorKind::Protocol,
                self.embedder.name(),
                format!(
                    "asked for {} embeddings, got {}",
                    texts.len(),
                    vectors.len()
                ),
            ));
        }
        let (query, rest) = vectors.split_at(1);
        let n = turns.len();
        Ok(rest
            .iter()
            .enumerate()
            .map(|(i, v)| recent(i, n, self.keep_recent) || cosine(&query[0], v) >= self.threshold)
            .collect())
    }
}
