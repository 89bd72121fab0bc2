//! Chunking documents by structure and size in tokens, with overlap.

use std::sync::Arc;

use flowbot_core::vector::MAX_POINT_ID;
use serde::{Deserialize, Serialize};
use text_splitter::{ChunkConfig, ChunkSizer, MarkdownSplitter, TextSplitter};

use super::KnowledgeError;
use super::load::{DocKind, Document, sha256_hex};
use crate::context::TokenCounter;

/// How documents are cut into chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChunkOptions {
    /// Most tokens in one chunk (default 256).
    pub max_tokens: usize,
    /// Tokens a chunk repeats from the end of the one before it (default 32); less than
    /// `max_tokens`.
    pub overlap: usize,
}

impl Default for ChunkOptions {
    fn default() -> Self {
        ChunkOptions {
            max_tokens: 256,
            overlap: 32,
        }
    }
}

impl ChunkOptions {
    /// Check the sizes.
    pub fn check(&self) -> Result<(), KnowledgeError> {
        if self.max_tokens == 0 || self.max_tokens > 8192 {
            return Err(KnowledgeError::Options(format!(
                "chunk max_tokens = {}: must be 1 to 8192",
                self.max_tokens
            )));
        }
        if self.overlap >= self.max_tokens {
            return Err(KnowledgeError::Options(format!(
                "chunk overlap = {} must be less than max_tokens = {}",
                self.overlap, self.max_tokens
            )));
        }
        Ok(())
    }
}

/// A piece of a document, as embedded and stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Stable for the same document content: `{source}#{hash prefix}#{index}` (a digest
    /// of the source stands in for a source too long for a point id).
    pub id: String,
    /// Its position in the document, from 0.
    pub index: usize,
    /// Its text.
    pub text: String,
    /// The heading of its section.
    pub heading: Option<String>,
    /// Its page (PDFs).
    pub page: Option<u32>,
}

/// Measures chunks with the crate's token counter.
struct Tokens<'a>(&'a dyn TokenCounter);

impl ChunkSizer for Tokens<'_> {
    fn size(&self, chunk: &str) -> usize {
        self.0.count_text(chunk)
    }
}

/// The id of chunk `index` of a document.
pub fn chunk_id(source: &str, hash: &str, index: usize) -> String {
    let prefix = &hash[..hash.len().min(12)];
    let id = format!("{source}#{prefix}#{index}");
    if id.len() <= MAX_POINT_ID && !source.contains('\0') {
        id
    } else {
        format!("{}#{prefix}#{index}", &sha256_hex(source.as_bytes())[..32])
    }
}

/// Cut `doc` into chunks of at most `options.max_tokens` tokens as `counter` counts them,
/// within its sections (a chunk never spans two headings or pages), at the largest
/// structural boundary that fits: Markdown blocks, paragraphs, sentences, words.
pub fn chunk_document(
    doc: &Document,
    options: &ChunkOptions,
    counter: &Arc<dyn TokenCounter>,
) -> Result<Vec<Chunk>, KnowledgeError> {
    options.check()?;
    let config = || {
        ChunkConfig::new(options.max_tokens)
            .with_overlap(options.overlap)
            .map(|c| c.with_sizer(Tokens(&**counter)))
            .map_err(|e| KnowledgeError::Options(e.to_string()))
    };
    let mut chunks = Vec::new();
    let mut push = |text: &str, heading: &Option<String>, page: Option<u32>| {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        let index = chunks.len();
        chunks.push(Chunk {
            id: chunk_id(&doc.source, &doc.hash, index),
            index,
            text: text.to_owned(),
            heading: heading.clone(),
            page,
        });
    };
    if doc.kind == DocKind::Markdown {
        let splitter = MarkdownSplitter::new(config()?);
        for section in &doc.sections {
            for piece in splitter.chunks(&section.text) {
                push(piece, &section.heading, section.page);
            }
        }
    } else {
        let splitter = TextSplitter::new(config()?);
        for section in &doc.sections {
            for piece in splitter.chunks(&section.text) {
                push(piece, &section.heading, section.page);
            }
        }
    }
    Ok(chunks)
}
