//! The knowledge base's error.

use flowbot_core::StoreError;
use flowbot_core::llm::ModelError;
use flowbot_core::vector::VectorError;

/// What went wrong in the knowledge base. Every variant about one document names it (its
/// path or URL as given).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KnowledgeError {
    /// The file could not be read.
    #[error("{source_name}: cannot read it: {error}")]
    Io {
        /// The document.
        source_name: String,
        /// Why.
        #[source]
        error: std::io::Error,
    },
    /// A file outside the folder sources must lie in.
    #[error("{source_name}: outside the knowledge base's folder {root}")]
    OutsideRoot {
        /// The document.
        source_name: String,
        /// The folder.
        root: String,
    },
    /// The file's type is not one the knowledge base reads.
    #[error(
        "{source_name}: unsupported document type {kind:?} (use .md, .markdown, .html, .htm, .txt{})",
        if cfg!(feature = "pdf") { " or .pdf" } else { "" }
    )]
    Unsupported {
        /// The document.
        source_name: String,
        /// Its extension or declared kind (empty for none).
        kind: String,
    },
    /// A text document holds binary content (NUL bytes or invalid UTF-8).
    #[error("{source_name}: not a {kind} document: {detail}")]
    Binary {
        /// The document.
        source_name: String,
        /// The type it was read as.
        kind: &'static str,
        /// What gave it away.
        detail: String,
    },
    /// No text is left after extraction.
    #[error("{source_name}: the document has no text{hint}")]
    Empty {
        /// The document.
        source_name: String,
        /// A hint on why (a scanned PDF has no text layer).
        hint: &'static str,
    },
    /// The document is larger than the configured limit.
    #[error("{source_name}: {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        /// The document.
        source_name: String,
        /// Its size (at least, when reading stopped at the limit).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A PDF that cannot be parsed.
    #[error("{source_name}: damaged or unreadable PDF: {detail}")]
    CorruptPdf {
        /// The document.
        source_name: String,
        /// The parser's words.
        detail: String,
    },
    /// A PDF that needs a password.
    #[error("{source_name}: the PDF is encrypted; decrypt it before adding it")]
    EncryptedPdf {
        /// The document.
        source_name: String,
    },
    /// The embedder failed on a document's chunks (or on a query).
    #[error("{source_name}: embedding failed: {error}")]
    Embed {
        /// The document, or `query` for a search.
        source_name: String,
        /// The model's error.
        #[source]
        error: ModelError,
    },
    /// The embedder's vectors do not fit the collection.
    #[error(
        "{source_name}: the embedder gives vectors of dimension {got}, but collection {collection:?} holds dimension {expected}"
    )]
    Dimension {
        /// The document, or `query` for a search.
        source_name: String,
        /// The collection.
        collection: String,
        /// The collection's dimension.
        expected: usize,
        /// The embedder's.
        got: usize,
    },
    /// The vector store failed.
    #[error("{context}: vector store: {error}")]
    Vectors {
        /// The document or collection it was working on.
        context: String,
        /// The store's error.
        #[source]
        error: VectorError,
    },
    /// The key-value store failed.
    #[error("{context}: store: {error}")]
    Store {
        /// What it was reading or writing.
        context: String,
        /// The store's error.
        #[source]
        error: StoreError,
    },
    /// The task queue refused the ingestion job.
    #[error("ingestion job {job}: {error}")]
    Queue {
        /// The job's id.
        job: String,
        /// The queue's error.
        #[source]
        error: flowbot_core::Error,
    },
    /// Options out of their range.
    #[error("knowledge options: {0}")]
    Options(String),
    /// A line of an evaluation's questions (JSONL) that cannot be read.
    #[error("questions, line {line}: {detail}")]
    Questions {
        /// The line, from 1.
        line: usize,
        /// What is wrong with it.
        detail: String,
    },
    /// A URL could not be fetched: not a URL, a connection or read error, a timeout, or a
    /// status other than 2xx.
    #[error("{source_name}: {detail}")]
    Fetch {
        /// The URL.
        source_name: String,
        /// The HTTP status, when the server answered with one other than 2xx.
        status: Option<u16>,
        /// What went wrong.
        detail: String,
        /// Whether another attempt may work (a timeout, a connection error, a 5xx or 429).
        transient: bool,
    },
    /// A URL the network policy refuses (its address, scheme, port or a redirect).
    #[error("{source_name}: refused by the network policy: {detail}")]
    Refused {
        /// The URL.
        source_name: String,
        /// The guard's words.
        detail: String,
    },
    /// A URL given to a knowledge base without a network policy.
    #[error(
        "{source_name}: fetching URLs needs a network policy: give the knowledge base one with Knowledge::with_net_policy"
    )]
    NoNetPolicy {
        /// The URL.
        source_name: String,
    },
}

impl KnowledgeError {
    /// Whether another attempt may work (the embedder or a store was unavailable), as opposed
    /// to a document that will never load.
    pub fn is_transient(&self) -> bool {
        match self {
            KnowledgeError::Embed { error, .. } => error.is_transient(),
            KnowledgeError::Vectors { error, .. } => {
                matches!(error, VectorError::Unavailable(_) | VectorError::Store(_))
            }
            KnowledgeError::Store { .. } => true,
            KnowledgeError::Fetch { transient, .. } => *transient,
            _ => false,
        }
    }

    pub(crate) fn vectors(context: impl Into<String>) -> impl FnOnce(VectorError) -> Self {
        let context = context.into();
        move |error| KnowledgeError::Vectors { context, error }
    }

    pub(crate) fn store(context: impl Into<String>) -> impl FnOnce(StoreError) -> Self {
        let context = context.into();
        move |error| KnowledgeError::Store { context, error }
    }
}
