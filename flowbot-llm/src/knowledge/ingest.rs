//! Ingestion: documents embedded and written to a collection, replaced when they change,
//! removed when they are gone; many at a time with progress.

use std::collections::BTreeSet;
use std::path::PathBuf;

use chrono::{DateTime, Utc};
use flowbot_core::llm::{ModelError, ModelErrorKind};
use flowbot_core::vector::{
    CollectionSpec, Condition, Distance, Filter, Point, TEXT_KEY, check_collection_name,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::chunk::{Chunk, chunk_document};
use super::load::{DocKind, Document, walk};
use super::{Knowledge, KnowledgeError, docs_namespace};

/// What [`Knowledge::ingest`] did with a document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IngestOutcome {
    /// It was new.
    Added,
    /// An earlier version was replaced.
    Replaced,
    /// The same bytes were ingested before: nothing was done.
    Unchanged,
}

/// What the knowledge base keeps about an ingested document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DocRecord {
    /// Its path or URL, as given.
    pub source: String,
    /// The SHA-256 of its bytes.
    pub hash: String,
    /// Its title.
    pub title: String,
    /// Its type.
    pub kind: DocKind,
    /// How many chunks it has in the collection.
    pub chunks: usize,
    /// When this version was written.
    pub ingested_at: DateTime<Utc>,
}

/// A document to ingest: a file, a folder, a URL, or a text given inline (an upload, a page
/// fetched by the caller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Source {
    /// A file, or a folder: every supported file under it ([`walk`]).
    Path(PathBuf),
    /// A document at an `http` or `https` URL, fetched through the knowledge base's
    /// network policy ([`Knowledge::with_net_policy`]; feature `urls`).
    Url(String),
    /// A document given inline.
    Inline {
        /// Its name: a URL, or a name for it.
        source: String,
        /// Its type.
        kind: DocKind,
        /// Its content (a PDF cannot be given inline: give its path).
        text: String,
    },
}

impl Source {
    /// A file or folder.
    pub fn path(path: impl Into<PathBuf>) -> Self {
        Source::Path(path.into())
    }

    /// A document at a URL.
    pub fn url(url: impl Into<String>) -> Self {
        Source::Url(url.into())
    }

    /// A document given inline.
    pub fn inline(source: impl Into<String>, kind: DocKind, text: impl Into<String>) -> Self {
        Source::Inline {
            source: source.into(),
            kind,
            text: text.into(),
        }
    }

    /// The name it is reported and stored under.
    pub fn name(&self) -> String {
        match self {
            Source::Path(p) => p.display().to_string(),
            Source::Url(url) => url.clone(),
            Source::Inline { source, .. } => source.clone(),
        }
    }
}

/// Where a run of [`Knowledge::ingest_all`] stands, after each document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Documents finished (ingested, skipped or failed).
    pub done: usize,
    /// Documents in the run (folders counted by their files).
    pub total: usize,
    /// The document just finished.
    pub current: String,
    /// Chunks written so far in the run.
    pub chunks: usize,
}

/// How one document of a run ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceResult {
    /// The document.
    pub source: String,
    /// What was done, when it worked.
    pub outcome: Option<IngestOutcome>,
    /// Chunks written (0 when unchanged or failed).
    pub chunks: usize,
    /// Why it failed.
    pub error: Option<String>,
    /// Whether the failure may pass on another attempt (a service was unavailable).
    #[serde(default)]
    pub transient: bool,
    /// A file of a type the knowledge base does not read, found in a folder: passed over,
    /// named, and not a failure of the run (a file named on its own is).
    #[serde(default)]
    pub skipped: bool,
}

impl SourceResult {
    fn failed(source: String, e: &KnowledgeError) -> Self {
        SourceResult {
            source,
            outcome: None,
            chunks: 0,
            error: Some(e.to_string()),
            transient: e.is_transient(),
            skipped: false,
        }
    }
}

/// What a run of [`Knowledge::ingest_all`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestReport {
    /// Each document, in order.
    pub results: Vec<SourceResult>,
    /// Documents removed because they are no longer among the sources (with `sync`).
    pub removed: Vec<String>,
}

impl IngestReport {
    /// The documents that failed (not those skipped).
    pub fn failed(&self) -> impl Iterator<Item = &SourceResult> {
        self.results
            .iter()
            .filter(|r| r.error.is_some() && !r.skipped)
    }

    /// The files of unsupported types found in folders and passed over.
    pub fn skipped(&self) -> impl Iterator<Item = &SourceResult> {
        self.results.iter().filter(|r| r.skipped)
    }

    /// Chunks written.
    pub fn chunks(&self) -> usize {
        self.results.iter().map(|r| r.chunks).sum()
    }
}

/// Told after each document of a run.
#[async_trait::async_trait]
pub(crate) trait Steps: Send {
    async fn step(&mut self, progress: &Progress, result: &SourceResult);
}

struct ProgressFn<F>(F);

#[async_trait::async_trait]
impl<F: FnMut(&Progress) + Send> Steps for ProgressFn<F> {
    async fn step(&mut self, progress: &Progress, _: &SourceResult) {
        (self.0)(progress);
    }
}

/// One document of a run.
enum Item {
    File(PathBuf),
    Url(String),
    Inline {
        source: String,
        kind: DocKind,
        text: String,
    },
    Failed(SourceResult),
}

fn url_of(source: &str) -> Option<&str> {
    let lower = source.get(..8).unwrap_or(source).to_ascii_lowercase();
    (lower.starts_with("http://") || lower.starts_with("https://")).then_some(source)
}

impl Knowledge {
    /// Create `collection` for this embedder's vectors (cosine) unless it exists; an
    /// existing one of another dimension is [`KnowledgeError::Dimension`]. An embedder
    /// that does not know its dimension is asked for one vector to learn it.
    pub async fn ensure_collection(&self, name: &str) -> Result<CollectionSpec, KnowledgeError> {
        check_collection_name(name).map_err(KnowledgeError::vectors(name))?;
        let existing = self
            .vectors
            .collection(name)
            .await
            .map_err(KnowledgeError::vectors(name))?;
        if let Some(info) = existing {
            if let Some(d) = self.embedder.dimension()
                && d != info.spec.dimension
            {
                return Err(KnowledgeError::Dimension {
                    source_name: format!("embedder {}", self.embedder.name()),
                    collection: name.to_owned(),
                    expected: info.spec.dimension,
                    got: d,
                });
            }
            return Ok(info.spec);
        }
        let dimension = match self.embedder.dimension() {
            Some(d) => d,
            None => {
                let probe = self
                    .embedder
                    .embed(&["dimension probe".to_owned()])
                    .await
                    .map_err(|error| KnowledgeError::Embed {
                        source_name: format!("collection {name}"),
                        error,
                    })?;
                probe.first().map_or(0, Vec::len)
            }
        };
        let spec = CollectionSpec::new(name, dimension, Distance::Cosine);
        self.vectors
            .create_collection(&spec)
            .await
            .map_err(KnowledgeError::vectors(name))?;
        Ok(spec)
    }

    /// The record of a document, if it was ingested into `collection`.
    pub async fn document(
        &self,
        collection: &str,
        source: &str,
    ) -> Result<Option<DocRecord>, KnowledgeError> {
        let ns = docs_namespace(collection);
        let Some(value) = self
            .kv
            .kv_get(&ns, source)
            .await
            .map_err(KnowledgeError::store(source))?
        else {
            return Ok(None);
        };
        Ok(serde_json::from_value(value).ok())
    }

    /// The records of every document of `collection`, by source.
    pub async fn documents(&self, collection: &str) -> Result<Vec<DocRecord>, KnowledgeError> {
        let ns = docs_namespace(collection);
        let all = self
            .kv
            .kv_list(&ns)
            .await
            .map_err(KnowledgeError::store(format!("collection {collection}")))?;
        Ok(all
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v).ok())
            .collect())
    }

    /// Add `doc` to `collection` (created if needed), replacing its previous version; a
    /// document with the same hash as the one recorded is left alone.
    ///
    /// Every chunk is embedded first (in batches of
    /// [`IngestOptions::batch_size`](super::IngestOptions)), then all are written in one
    /// upsert, then the previous version's chunks are deleted and the record written: an
    /// error on the way leaves the previous version searchable.
    pub async fn ingest(
        &self,
        collection: &str,
        doc: &Document,
    ) -> Result<IngestOutcome, KnowledgeError> {
        self.ingest_counted(collection, doc).await.map(|(o, _)| o)
    }

    async fn ingest_counted(
        &self,
        collection: &str,
        doc: &Document,
    ) -> Result<(IngestOutcome, usize), KnowledgeError> {
        let mut previous = self.document(collection, &doc.source).await?;
        if previous.as_ref().is_some_and(|r| r.hash == doc.hash) {
            // Unless the collection was deleted since (its records outlive it).
            let exists = self
                .vectors
                .collection(collection)
                .await
                .map_err(KnowledgeError::vectors(collection))?
                .is_some();
            if exists {
                return Ok((IngestOutcome::Unchanged, 0));
            }
            previous = None;
        }
        let spec = self.ensure_collection(collection).await?;
        let chunks = chunk_document(doc, &self.options.chunk, &self.counter)?;
        let vectors = self.embed_chunks(&spec, doc, &chunks).await?;
        let points: Vec<Point> = chunks
            .iter()
            .zip(vectors)
            .map(|(chunk, vector)| Point {
                id: chunk.id.clone(),
                vector,
                payload: payload(doc, chunk),
            })
            .collect();
        let context = || format!("{} in collection {collection}", doc.source);
        self.vectors
            .upsert(collection, &points)
            .await
            .map_err(KnowledgeError::vectors(context()))?;
        let stale = Filter {
            must: vec![Condition::eq("source", doc.source.as_str())],
            must_not: vec![Condition::eq("hash", doc.hash.as_str())],
        };
        self.vectors
            .delete_where(collection, &stale)
            .await
            .map_err(KnowledgeError::vectors(context()))?;
        let record = DocRecord {
            source: doc.source.clone(),
            hash: doc.hash.clone(),
            title: doc.title.clone(),
            kind: doc.kind,
            chunks: points.len(),
            ingested_at: flowbot_core::clock::now(),
        };
        let value = serde_json::to_value(&record).unwrap_or(Value::Null);
        self.kv
            .kv_set(&docs_namespace(collection), &doc.source, &value)
            .await
            .map_err(KnowledgeError::store(context()))?;
        let outcome = if previous.is_some() {
            IngestOutcome::Replaced
        } else {
            IngestOutcome::Added
        };
        tracing::info!(collection, source = %doc.source, chunks = points.len(), ?outcome, "document ingested");
        Ok((outcome, points.len()))
    }

    async fn embed_chunks(
        &self,
        spec: &CollectionSpec,
        doc: &Document,
        chunks: &[Chunk],
    ) -> Result<Vec<Vec<f32>>, KnowledgeError> {
        let mut all = Vec::with_capacity(chunks.len());
        for batch in chunks.chunks(self.options.batch_size) {
            let texts: Vec<String> = batch
                .iter()
                .map(|c| match &c.heading {
                    Some(h) => format!("{h}\n{}", c.text),
                    None => c.text.clone(),
                })
                .collect();
            let embed_error = |error| KnowledgeError::Embed {
                source_name: doc.source.clone(),
                error,
            };
            let vectors = self.embedder.embed(&texts).await.map_err(embed_error)?;
            if vectors.len() != texts.len() {
                return Err(embed_error(ModelError::new(
                    ModelErrorKind::Protocol,
                    self.embedder.name(),
                    format!("{} vectors for {} texts", vectors.len(), texts.len()),
                )));
            }
            for v in &vectors {
                if v.len() != spec.dimension {
                    return Err(KnowledgeError::Dimension {
                        source_name: doc.source.clone(),
                        collection: spec.name.clone(),
                        expected: spec.dimension,
                        got: v.len(),
                    });
                }
            }
            all.extend(vectors);
        }
        Ok(all)
    }

    /// Remove a document and its chunks from `collection`; returns whether it was there.
    pub async fn remove(&self, collection: &str, source: &str) -> Result<bool, KnowledgeError> {
        let context = || format!("{source} in collection {collection}");
        let deleted = match self
            .vectors
            .delete_where(collection, &Filter::must(Condition::eq("source", source)))
            .await
        {
            Ok(n) => n,
            Err(flowbot_core::vector::VectorError::UnknownCollection(_)) => 0,
            Err(e) => return Err(KnowledgeError::vectors(context())(e)),
        };
        let recorded = self
            .kv
            .kv_delete(&docs_namespace(collection), source)
            .await
            .map_err(KnowledgeError::store(context()))?;
        Ok(recorded || deleted > 0)
    }

    /// Remove the documents of `collection` whose source is not in `present` (a folder
    /// ingested again after files were deleted); returns their sources.
    pub async fn sync_removed(
        &self,
        collection: &str,
        present: &[String],
    ) -> Result<Vec<String>, KnowledgeError> {
        let present: BTreeSet<&str> = present.iter().map(String::as_str).collect();
        let mut removed = Vec::new();
        for record in self.documents(collection).await? {
            if !present.contains(record.source.as_str()) {
                self.remove(collection, &record.source).await?;
                removed.push(record.source);
            }
        }
        Ok(removed)
    }

    /// Ingest every source into `collection`, telling `progress` after each document. A
    /// document that fails is reported in its [`SourceResult`] and the run goes on; files of
    /// unsupported types found in folders are reported by name. With `sync`, documents of
    /// the collection that are not among the sources are removed afterwards (not when a
    /// folder could not be listed). The error is for the collection as a whole (it cannot
    /// be created, or the embedder's dimension does not fit it).
    pub async fn ingest_all(
        &self,
        collection: &str,
        sources: &[Source],
        sync: bool,
        progress: impl FnMut(&Progress) + Send,
    ) -> Result<IngestReport, KnowledgeError> {
        self.run_sources(collection, sources, sync, &mut ProgressFn(progress))
            .await
    }

    pub(crate) async fn run_sources(
        &self,
        collection: &str,
        sources: &[Source],
        sync: bool,
        steps: &mut dyn Steps,
    ) -> Result<IngestReport, KnowledgeError> {
        self.ensure_collection(collection).await?;
        let (items, complete) = plan(sources).await;
        let present: Vec<String> = items.iter().map(Item::name).collect();
        let mut report = IngestReport::default();
        let mut progress = Progress {
            done: 0,
            total: items.len(),
            current: String::new(),
            chunks: 0,
        };
        for item in items {
            let result = self.run_item(collection, item).await;
            progress.done += 1;
            progress.chunks += result.chunks;
            progress.current.clone_from(&result.source);
            steps.step(&progress, &result).await;
            report.results.push(result);
        }
        if sync && complete {
            report.removed = self.sync_removed(collection, &present).await?;
        }
        Ok(report)
    }

    async fn run_item(&self, collection: &str, item: Item) -> SourceResult {
        let name = item.name();
        let options = self.options.load.clone();
        let loaded = match item {
            Item::Failed(result) => return result,
            Item::File(path) => {
                let root = self.options.root.clone();
                let load = move || {
                    if let Some(root) = root {
                        inside(&path, &root)?;
                    }
                    Document::load(&path, &options)
                };
                match tokio::task::spawn_blocking(load).await {
                    Ok(r) => r,
                    Err(e) => Err(KnowledgeError::CorruptPdf {
                        source_name: name.clone(),
                        detail: format!("the reader stopped: {e}"),
                    }),
                }
            }
            Item::Url(url) => self.fetch(&url).await,
            Item::Inline { source, kind, text } => {
                Document::from_bytes(&source, kind, text.as_bytes(), &options)
            }
        };
        let doc = match loaded {
            Ok(doc) => doc,
            Err(e) => {
                tracing::warn!(collection, source = %name, error = %e, "document not ingested");
                return SourceResult::failed(name, &e);
            }
        };
        match self.ingest_counted(collection, &doc).await {
            Ok((outcome, chunks)) => SourceResult {
                source: name,
                outcome: Some(outcome),
                chunks,
                error: None,
                transient: false,
                skipped: false,
            },
            Err(e) => {
                tracing::warn!(collection, source = %name, error = %e, "document not ingested");
                SourceResult::failed(name, &e)
            }
        }
    }
}

/// Check that `path` (links resolved) lies in the folder `root`.
fn inside(path: &std::path::Path, root: &std::path::Path) -> Result<(), KnowledgeError> {
    let source_name = path.display().to_string();
    let io = |error| KnowledgeError::Io {
        source_name: source_name.clone(),
        error,
    };
    let real = path.canonicalize().map_err(io)?;
    let root_real = root.canonicalize().map_err(|error| KnowledgeError::Io {
        source_name: root.display().to_string(),
        error,
    })?;
    if real.starts_with(&root_real) {
        Ok(())
    } else {
        Err(KnowledgeError::OutsideRoot {
            source_name,
            root: root.display().to_string(),
        })
    }
}

impl Item {
    fn name(&self) -> String {
        match self {
            Item::File(p) => p.display().to_string(),
            Item::Url(url) => url.clone(),
            Item::Inline { source, .. } => source.clone(),
            Item::Failed(r) => r.source.clone(),
        }
    }
}

/// The documents of `sources`, folders expanded; and whether every folder was listed.
async fn plan(sources: &[Source]) -> (Vec<Item>, bool) {
    let mut items = Vec::new();
    let mut complete = true;
    for source in sources {
        match source {
            Source::Url(url) => items.push(Item::Url(url.clone())),
            Source::Inline { source, kind, text } => items.push(Item::Inline {
                source: source.clone(),
                kind: *kind,
                text: text.clone(),
            }),
            Source::Path(path) => {
                let dir = path.clone();
                let listed =
                    tokio::task::spawn_blocking(
                        move || {
                            if dir.is_dir() { Some(walk(&dir)) } else { None }
                        },
                    )
                    .await
                    .unwrap_or(None);
                match listed {
                    None => items.push(Item::File(path.clone())),
                    Some(Ok(folder)) => {
                        items.extend(folder.files.into_iter().map(Item::File));
                        for path in folder.unsupported {
                            let name = path.display().to_string();
                            let e = KnowledgeError::Unsupported {
                                kind: path
                                    .extension()
                                    .map(|e| e.to_string_lossy().into_owned())
                                    .unwrap_or_default(),
                                source_name: name.clone(),
                            };
                            let mut result = SourceResult::failed(name, &e);
                            result.skipped = true;
                            items.push(Item::Failed(result));
                        }
                    }
                    Some(Err(e)) => {
                        complete = false;
                        items.push(Item::Failed(SourceResult::failed(source.name(), &e)));
                    }
                }
            }
        }
    }
    (items, complete)
}

/// The payload of a chunk: its text, and what a citation and a filter need.
fn payload(doc: &Document, chunk: &Chunk) -> Map<String, Value> {
    let mut p = Map::new();
    p.insert(TEXT_KEY.into(), json!(chunk.text));
    p.insert("source".into(), json!(doc.source));
    p.insert("title".into(), json!(doc.title));
    p.insert("kind".into(), json!(doc.kind.as_str()));
    if let Some(h) = &chunk.heading {
        p.insert("section".into(), json!(h));
    }
    if let Some(page) = chunk.page {
        p.insert("page".into(), json!(page));
    }
    p.insert("hash".into(), json!(doc.hash));
    p.insert("chunk".into(), json!(chunk.index));
    if let Some(url) = url_of(&doc.source) {
        p.insert("url".into(), json!(url));
    }
    p
}
