//! The knowledge base (feature `knowledge`): documents loaded, chunked, embedded into a
//! vector store, and found again for a question, with citations.
//!
//! - **Loading** ([`Document::load`], [`Document::from_bytes`], [`walk`],
//!   [`Knowledge::fetch`] for URLs through a network policy, feature `urls`): Markdown (sections
//!   at its headings), HTML (the visible text, title and headings), PDF (the text of each
//!   page, feature `pdf`) and plain text. Binary content in a text type, empty documents,
//!   documents over [`LoadOptions::max_bytes`], damaged and encrypted PDFs are each a
//!   [`KnowledgeError`] naming the document.
//! - **Chunking** ([`chunk_document`]): by structure and size in tokens (the crate's
//!   [`TokenCounter`]), with overlap; each chunk keeps its heading and page.
//! - **Ingestion** ([`Knowledge::ingest`]): a document whose bytes have not changed is
//!   skipped; a changed one is embedded in batches and all its chunks are written in one
//!   upsert before the previous version's are deleted, so a search never sees half a
//!   document and a failure leaves the previous version in place. [`Knowledge::ingest_all`]
//!   runs a list of sources (files, folders, inline texts) and goes on past a failing one;
//!   [`register_ingest`] and [`enqueue_ingest`] make that a durable job on the task queue,
//!   its progress kept in the store ([`Knowledge::job`]).
//! - **Retrieval** ([`Knowledge::search`]): vector search fused with the store's keyword
//!   search (when it has one) by reciprocal rank fusion, under metadata filters, with an
//!   optional score threshold below which nothing is returned, and an optional
//!   [`Reranker`].
//! - **Evaluation** ([`Knowledge::evaluate`], [`eval`]): recall@k and MRR of a question set
//!   whose expected sources are known.
//! - **Evaluation** ([`Knowledge::evaluate`], [`eval`]): recall@k and MRR of a question set
//!   whose expected sources are known.
//! - **Answers**: an [`Agent`](crate::Agent) given a knowledge base
//!   ([`AgentBuilder::knowledge`](crate::AgentBuilder::knowledge)) puts the passages found
//!   for an ask's collection into the system prompt as numbered sources, asks the model to
//!   cite them as `[n]`, and appends the cited ones to the answer.
//!
//! ```no_run
//! # async fn demo(
//! #     vectors: std::sync::Arc<dyn flowbot_core::vector::VectorStore>,
//! #     embedder: std::sync::Arc<dyn flowbot_core::llm::Embedder>,
//! #     kv: std::sync::Arc<dyn flowbot_core::store::KvStore>,
//! # ) -> Result<(), flowbot_llm::knowledge::KnowledgeError> {
//! use flowbot_llm::knowledge::{Knowledge, SearchOptions, Source};
//! let kb = Knowledge::new(vectors, embedder, kv);
//! let report = kb
//!     .ingest_all("docs", &[Source::path("handbook/")], false, |p| {
//!         println!("{}/{} {}", p.done, p.total, p.current)
//!     })
//!     .await?;
//! println!("{} failed", report.failed().count());
//! let passages = kb.search("docs", "how do I reset my password?", &SearchOptions::default()).await?;
//! println!("{}", Knowledge::format_hits(&passages));
//! # Ok(()) }
//! ```

mod chunk;
mod cite;
mod error;
pub mod eval;
mod fetch;
mod ingest;
mod job;
mod load;
mod search;
mod search_action;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use flowbot_core::llm::Embedder;
use flowbot_core::store::KvStore;
use flowbot_core::vector::VectorStore;
use serde::{Deserialize, Serialize};

use crate::context::{TokenCounter, counter_for};

pub use chunk::{Chunk, ChunkOptions, chunk_document, chunk_id};
pub use cite::{
    CITE_INSTRUCTIONS, Citation, DEFAULT_DONT_KNOW, KnowledgeOptions, cited, sources_prompt,
    sources_reply,
};
pub use error::KnowledgeError;
pub use eval::{EvalQuestion, EvalReport, EvalResult, parse_questions};
pub use fetch::DEFAULT_FETCH_TIMEOUT;
pub use ingest::{DocRecord, IngestOutcome, IngestReport, Progress, Source, SourceResult};
pub use job::{
    INGEST_TASK, IngestJob, JOBS, JobState, JobStatus, enqueue_ingest, ingest_handler,
    register_ingest,
};
pub use load::{DEFAULT_MAX_BYTES, DocKind, Document, Folder, LoadOptions, Section, walk};
pub use search::{Passage, RRF_K, Reranker, SearchOptions};
pub use search_action::SearchAction;

/// The key-value namespace of a collection's document records.
pub fn docs_namespace(collection: &str) -> String {
    format!("kb.docs.{collection}")
}

/// How documents are read, cut and embedded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestOptions {
    /// Reading.
    pub load: LoadOptions,
    /// Chunking.
    pub chunk: ChunkOptions,
    /// Chunks per call to the embedder (default 64).
    pub batch_size: usize,
    /// The folder the files of [`Knowledge::ingest_all`] and of ingestion jobs must lie in
    /// (links resolved); `None`: any file the process can read. Set it when sources come
    /// from users (an API, a chat command).
    pub root: Option<std::path::PathBuf>,
}

impl Default for IngestOptions {
    fn default() -> Self {
        IngestOptions {
            load: LoadOptions::default(),
            chunk: ChunkOptions::default(),
            batch_size: 64,
            root: None,
        }
    }
}

impl IngestOptions {
    /// Check the ranges; the error names the field.
    pub fn check(&self) -> Result<(), KnowledgeError> {
        self.chunk.check()?;
        if self.batch_size == 0 || self.batch_size > 2048 {
            return Err(KnowledgeError::Options(format!(
                "batch_size = {}: must be 1 to 2048",
                self.batch_size
            )));
        }
        if self.load.max_bytes == 0 {
            return Err(KnowledgeError::Options(
                "max_bytes must be more than 0".into(),
            ));
        }
        Ok(())
    }
}

/// A knowledge base: documents in collections of a vector store, embedded by one embedder,
/// with their records (hash, title, chunks) and ingestion jobs in a key-value store.
pub struct Knowledge {
    vectors: Arc<dyn VectorStore>,
    embedder: Arc<dyn Embedder>,
    kv: Arc<dyn KvStore>,
    options: IngestOptions,
    counter: Arc<dyn TokenCounter>,
    reranker: Option<Arc<dyn Reranker>>,
    #[cfg(feature = "urls")]
    net: Option<fetch::Net>,
    fetch_timeout: std::time::Duration,
    /// Bumped each time this handle saves a job's state (what [`Knowledge::wait_job`] wakes on).
    job_saved: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Knowledge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Knowledge")
            .field("vectors", &self.vectors.backend())
            .field("embedder", &self.embedder.name())
            .field("options", &self.options)
            .field("counter", &self.counter.encoding())
            .field("reranker", &self.reranker.is_some())
            .field("fetch_timeout", &self.fetch_timeout)
            .finish_non_exhaustive()
    }
}

impl Knowledge {
    /// A knowledge base over these stores and embedder, with the default options and
    /// chunks measured in `o200k_base` tokens (an estimate without the `tiktoken` feature).
    pub fn new(
        vectors: Arc<dyn VectorStore>,
        embedder: Arc<dyn Embedder>,
        kv: Arc<dyn KvStore>,
    ) -> Self {
        Knowledge {
            vectors,
            embedder,
            kv,
            options: IngestOptions::default(),
            counter: counter_for("gpt-4o"),
            reranker: None,
            #[cfg(feature = "urls")]
            net: None,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            job_saved: tokio::sync::watch::Sender::new(0),
        }
    }

    /// Other options, checked.
    pub fn with_options(mut self, options: IngestOptions) -> Result<Self, KnowledgeError> {
        options.check()?;
        self.options = options;
        Ok(self)
    }

    /// Measure chunks with `counter` (the embedding model's tokenizer, when it differs).
    pub fn with_counter(mut self, counter: Arc<dyn TokenCounter>) -> Self {
        self.counter = counter;
        self
    }

    /// Reorder the passages of every search with `reranker` (a cross-encoder, a model).
    pub fn with_reranker(mut self, reranker: Arc<dyn Reranker>) -> Self {
        self.reranker = Some(reranker);
        self
    }

    /// The options.
    pub fn options(&self) -> &IngestOptions {
        &self.options
    }

    /// The vector store.
    pub fn vectors(&self) -> &Arc<dyn VectorStore> {
        &self.vectors
    }

    /// The embedder.
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.embedder
    }
}
