//! The embedded vector store: collections kept durably in the SQL store (SQLite or
//! PostgreSQL), searched in memory — exactly below a size threshold, through an HNSW graph
//! of our own above it — and kept in step between every process sharing the database.
//!
//! Each process holds the collections it has used in memory. Every write takes the
//! collection's next sequence number in the database and is announced on the store's
//! [`Bus`]; a process that hears of a write it has not seen reads the rows written since its
//! own number. Before each search it also compares its number with the database's (one
//! primary-key read), so a write made by a process it cannot hear (the `kb ingest` command
//! beside a SQLite server) is seen by the next search.

mod hnsw;
mod index;

use std::collections::HashMap;
use std::sync::{Arc, RwLock, Weak};

use async_trait::async_trait;
use flowbot_core::vector::{
    CollectionInfo, CollectionSpec, Filter, Hit, Point, TEXT_KEY, TextQuery, VectorQuery,
    VectorStore, check_collection_name,
};
use flowbot_core::{Bus, VectorError};
use serde_json::{Map, Value};

pub(crate) use index::Index;
pub use index::IndexOptions;

/// The bus topic of vector writes.
const TOPIC: &str = "vectors";

/// Most words of a keyword query.
const MAX_TERMS: usize = 32;

/// A collection as the database has it.
#[derive(Debug, Clone)]
pub(crate) struct Head {
    pub(crate) spec: CollectionSpec,
    pub(crate) generation: String,
    pub(crate) seq: i64,
}

/// A point's row: its latest seq, and its vector and payload unless it was deleted.
pub(crate) struct Change {
    pub(crate) id: String,
    pub(crate) seq: i64,
    pub(crate) point: Option<(Vec<f32>, Map<String, Value>)>,
}

/// Where the embedded store keeps its collections: a SQL store's tables.
#[async_trait]
pub(crate) trait Table: Send + Sync + 'static {
    /// Create the collection unless one has the name; returns the collection's head.
    async fn create(&self, spec: &CollectionSpec, generation: &str) -> Result<Head, VectorError>;
    async fn head(&self, name: &str) -> Result<Option<Head>, VectorError>;
    async fn heads(&self) -> Result<Vec<Head>, VectorError>;
    async fn drop_collection(&self, name: &str) -> Result<bool, VectorError>;
    /// Write points and tombstones in one transaction under the collection's next seq;
    /// returns it and how many of `deletes` were live. `None`: the collection is gone.
    async fn write(
        &self,
        name: &str,
        upserts: &[Point],
        deletes: &[String],
    ) -> Result<Option<(i64, u64)>, VectorError>;
    /// Rows with a seq above `after`, by seq.
    async fn changes(&self, name: &str, after: i64) -> Result<Vec<Change>, VectorError>;
    /// Keyword search: ids with their relevance, best first. `points` is the collection's
    /// size (the backend may trade exactness for speed in large collections).
    async fn text(
        &self,
        name: &str,
        terms: &[String],
        limit: usize,
        points: usize,
    ) -> Result<Vec<(String, f32)>, VectorError>;
}

/// The embedded [`VectorStore`]: see the module's documentation. Cheap to clone.
#[derive(Clone)]
pub struct EmbeddedVectors {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for EmbeddedVectors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedVectors")
            .field("durable", &self.inner.table.is_some())
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

type Loaded = Arc<RwLock<Index>>;

struct Inner {
    table: Option<Arc<dyn Table>>,
    bus: Option<Arc<dyn Bus>>,
    options: IndexOptions,
    collections: RwLock<HashMap<String, Loaded>>,
    /// One load or catch-up at a time, so rows are applied in order.
    sync: tokio::sync::Mutex<()>,
}

/// A poisoned lock only means a panic elsewhere while it was held; the index inside is
/// still consistent for reading (every change is applied whole or not at all).
fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

impl EmbeddedVectors {
    /// Collections in this process's memory only (tests, examples, applications without a
    /// database).
    pub fn memory(options: IndexOptions) -> Result<Self, VectorError> {
        Self::build(None, None, options)
    }

    /// Collections in `store`'s database (SQLite).
    #[cfg(feature = "sqlite")]
    pub fn sqlite(store: &crate::SqliteStore, options: IndexOptions) -> Result<Self, VectorError> {
        let store = Arc::new(store.clone());
        Self::build(Some(store.clone()), Some(store), options)
    }

    /// Collections in `store`'s database (PostgreSQL), in step between servers.
    #[cfg(feature = "postgres")]
    pub fn postgres(
        store: &crate::PostgresStore,
        options: IndexOptions,
    ) -> Result<Self, VectorError> {
        let store = Arc::new(store.clone());
        Self::build(Some(store.clone()), Some(store), options)
    }

    fn build(
        table: Option<Arc<dyn Table>>,
        bus: Option<Arc<dyn Bus>>,
        options: IndexOptions,
    ) -> Result<Self, VectorError> {
        options.check()?;
        let inner = Arc::new(Inner {
            table,
            bus,
            options,
            collections: RwLock::new(HashMap::new()),
            sync: tokio::sync::Mutex::new(()),
        });
        if let (Some(bus), Ok(runtime)) = (&inner.bus, tokio::runtime::Handle::try_current()) {
            runtime.spawn(listen(Arc::downgrade(&inner), bus.subscribe()));
        }
        Ok(EmbeddedVectors { inner })
    }

    /// Bytes a collection's index holds in this process's memory (`None` when it is not
    /// loaded here).
    pub fn memory_bytes(&self, collection: &str) -> Option<usize> {
        let loaded = read(&self.inner.collections).get(collection).cloned()?;
        let bytes = read(&loaded).memory_bytes();
        Some(bytes)
    }
}

/// Catch up with the writes other processes announce.
async fn listen(
    inner: Weak<Inner>,
    mut rx: tokio::sync::broadcast::Receiver<flowbot_core::BusMessage>,
) {
    loop {
        let names: Vec<String> = match rx.recv().await {
            Ok(m) if &*m.topic == TOPIC => {
                match serde_json::from_str::<Value>(&m.payload)
                    .ok()
                    .and_then(|v| v.get("c").and_then(Value::as_str).map(str::to_owned))
                {
                    Some(name) => vec![name],
                    None => continue,
                }
            }
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                let Some(inner) = inner.upgrade() else { return };
                read(&inner.collections).keys().cloned().collect()
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let Some(inner) = inner.upgrade() else { return };
        for name in names {
            if read(&inner.collections).contains_key(&name)
                && let Err(e) = inner.fresh(&name).await
            {
                tracing::warn!(collection = %name, error = %e, "vector store: catching up failed");
            }
        }
    }
}

impl Inner {
    fn cached(&self, name: &str) -> Option<Loaded> {
        read(&self.collections).get(name).cloned()
    }

    /// The collection, loaded and in step with the database.
    async fn fresh(&self, name: &str) -> Result<Loaded, VectorError> {
        let Some(table) = &self.table else {
            return self
                .cached(name)
                .ok_or_else(|| VectorError::UnknownCollection(name.to_owned()));
        };
        let head = table.head(name).await?;
        if let (Some(loaded), Some(head)) = (self.cached(name), &head) {
            let index = read(&loaded);
            if index.generation == head.generation && index.seq >= head.seq {
                drop(index);
                return Ok(loaded);
            }
        }
        let _sync = self.sync.lock().await;
        let Some(head) = head else {
            write(&self.collections).remove(name);
            return Err(VectorError::UnknownCollection(name.to_owned()));
        };
        let loaded = match self.cached(name) {
            Some(loaded) if read(&loaded).generation == head.generation => loaded,
            _ => {
                let index = Index::new(head.spec.clone(), head.generation.clone(), 0, self.options);
                let loaded = Arc::new(RwLock::new(index));
                write(&self.collections).insert(name.to_owned(), loaded.clone());
                loaded
            }
        };
        let after = read(&loaded).seq;
        let changes = table.changes(name, after).await?;
        let mut index = write(&loaded);
        apply(&mut index, changes)?;
        drop(index);
        Ok(loaded)
    }

    fn announce(&self, name: &str, generation: &str, seq: i64) {
        if let Some(bus) = self.bus.clone() {
            let payload = serde_json::json!({"c": name, "g": generation, "s": seq}).to_string();
            tokio::spawn(async move {
                if let Err(e) = bus.publish(TOPIC, &payload).await {
                    tracing::debug!(error = %e, "vector store: announcing a write failed");
                }
            });
        }
    }

    /// Write upserts and deletions; returns how many deleted points were live.
    async fn write(
        &self,
        name: &str,
        upserts: Vec<Point>,
        deletes: Vec<String>,
    ) -> Result<u64, VectorError> {
        let loaded = self.fresh(name).await?;
        {
            let index = read(&loaded);
            for p in &upserts {
                p.check(&index.spec)?;
            }
        }
        let Some(table) = &self.table else {
            let mut index = write(&loaded);
            let mut removed = 0;
            for id in &deletes {
                removed += u64::from(index.remove(id)?);
            }
            index.upsert_many(upserts)?;
            index.seq += 1;
            return Ok(removed);
        };
        let (seq, removed) = table
            .write(name, &upserts, &deletes)
            .await?
            .ok_or_else(|| VectorError::UnknownCollection(name.to_owned()))?;
        let generation = {
            let mut index = write(&loaded);
            if index.seq + 1 == seq {
                for id in &deletes {
                    index.remove(id)?;
                }
                index.upsert_many(upserts)?;
                index.seq = seq;
                None
            } else {
                Some(index.generation.clone())
            }
        };
        // Another process wrote in between: read every row since ours.
        if generation.is_some() {
            self.fresh(name).await?;
        }
        let generation = read(&loaded).generation.clone();
        self.announce(name, &generation, seq);
        Ok(removed)
    }
}

fn apply(index: &mut Index, changes: Vec<Change>) -> Result<(), VectorError> {
    // Rows come by seq; runs of upserts go into the index together (in parallel).
    let mut batch = Vec::new();
    for change in changes {
        index.seq = index.seq.max(change.seq);
        match change.point {
            Some((vector, payload)) => {
                let point = Point {
                    id: change.id,
                    vector,
                    payload,
                };
                point.check(&index.spec).map_err(|e| {
                    VectorError::Store(flowbot_core::StoreError::Corrupt(format!(
                        "vector point {:?}: {e}",
                        point.id
                    )))
                })?;
                batch.push(point);
            }
            None => {
                index.upsert_many(std::mem::take(&mut batch))?;
                index.remove(&change.id)?;
            }
        }
    }
    index.upsert_many(batch)
}

/// English words too common to say what a text is about: left out of keyword queries
/// (unless the query holds nothing else), so "how do I reset my password" looks for "reset"
/// and "password" instead of scoring every chunk that holds "I".
const STOPWORDS: &[&str] = &[
    "a", "about", "after", "all", "also", "am", "an", "and", "any", "are", "as", "at", "be",
    "been", "but", "by", "can", "could", "did", "do", "does", "for", "from", "had", "has", "have",
    "how", "i", "if", "in", "into", "is", "it", "its", "me", "my", "no", "not", "of", "on", "or",
    "our", "should", "so", "than", "that", "the", "their", "them", "then", "there", "these",
    "they", "this", "to", "up", "us", "was", "we", "were", "what", "when", "where", "which", "who",
    "why", "will", "with", "would", "you", "your",
];

/// The words of a keyword query: letters and digits, lowercased, without [`STOPWORDS`]
/// (unless nothing else is left), at most [`MAX_TERMS`].
pub(crate) fn terms(text: &str) -> Vec<String> {
    let mut all: Vec<String> = Vec::new();
    for word in text.split(|c: char| !c.is_alphanumeric()) {
        if word.is_empty() {
            continue;
        }
        let word = word.to_lowercase();
        if !all.contains(&word) {
            all.push(word);
        }
    }
    let content: Vec<String> = all
        .iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .cloned()
        .collect();
    let mut out = if content.is_empty() { all } else { content };
    out.truncate(MAX_TERMS);
    out
}

/// The text a point's keyword index holds.
pub(crate) fn body(payload: &Map<String, Value>) -> &str {
    payload.get(TEXT_KEY).and_then(Value::as_str).unwrap_or("")
}

/// A vector as stored: little-endian `f32`s.
pub(crate) fn encode(vector: &[f32]) -> Vec<u8> {
    vector.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(crate) fn decode(bytes: &[u8], id: &str) -> Result<Vec<f32>, VectorError> {
    if !bytes.len().is_multiple_of(4) {
        return Err(VectorError::Store(flowbot_core::StoreError::Corrupt(
            format!(
                "vector point {id:?}: {} bytes is not a whole number of f32",
                bytes.len()
            ),
        )));
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

pub(crate) fn new_generation() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

#[async_trait]
impl VectorStore for EmbeddedVectors {
    fn backend(&self) -> &'static str {
        "embedded"
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        spec.check()?;
        let inner = &self.inner;
        let head = match &inner.table {
            Some(table) => table.create(spec, &new_generation()).await?,
            None => {
                let _sync = inner.sync.lock().await;
                let existing = inner.cached(&spec.name).map(|l| read(&l).spec.clone());
                match existing {
                    Some(existing) => Head {
                        spec: existing,
                        generation: String::new(),
                        seq: 0,
                    },
                    None => {
                        let index = Index::new(spec.clone(), new_generation(), 0, inner.options);
                        write(&inner.collections)
                            .insert(spec.name.clone(), Arc::new(RwLock::new(index)));
                        return Ok(());
                    }
                }
            }
        };
        if head.spec != *spec {
            return Err(VectorError::Conflict(spec.name.clone()));
        }
        Ok(())
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, VectorError> {
        check_collection_name(name)?;
        match self.inner.fresh(name).await {
            Ok(loaded) => {
                let index = read(&loaded);
                Ok(Some(CollectionInfo {
                    spec: index.spec.clone(),
                    points: index.len() as u64,
                }))
            }
            Err(VectorError::UnknownCollection(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        let names: Vec<String> = match &self.inner.table {
            Some(table) => table
                .heads()
                .await?
                .into_iter()
                .map(|h| h.spec.name)
                .collect(),
            None => read(&self.inner.collections).keys().cloned().collect(),
        };
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            if let Some(info) = self.collection(&name).await? {
                out.push(info);
            }
        }
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    async fn delete_collection(&self, name: &str) -> Result<bool, VectorError> {
        check_collection_name(name)?;
        let inner = &self.inner;
        let _sync = inner.sync.lock().await;
        let existed = match &inner.table {
            Some(table) => table.drop_collection(name).await?,
            None => inner.cached(name).is_some(),
        };
        write(&inner.collections).remove(name);
        if existed {
            inner.announce(name, "", 0);
        }
        Ok(existed)
    }

    async fn upsert(&self, collection: &str, points: &[Point]) -> Result<(), VectorError> {
        check_collection_name(collection)?;
        if points.is_empty() {
            return Ok(());
        }
        // The last of two points with one id wins, as if written one after the other.
        let mut seen = std::collections::HashSet::new();
        let mut unique: Vec<Point> = points
            .iter()
            .rev()
            .filter(|p| seen.insert(p.id.as_str()))
            .cloned()
            .collect();
        unique.reverse();
        self.inner.write(collection, unique, Vec::new()).await?;
        Ok(())
    }

    async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, VectorError> {
        check_collection_name(collection)?;
        if ids.is_empty() {
            return Ok(0);
        }
        self.inner.write(collection, Vec::new(), ids.to_vec()).await
    }

    async fn delete_where(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        check_collection_name(collection)?;
        filter.check()?;
        if filter.is_empty() {
            return Err(VectorError::Invalid(
                "delete_where needs a filter (delete the collection to remove every point)".into(),
            ));
        }
        let loaded = self.inner.fresh(collection).await?;
        let ids = read(&loaded).matching(filter);
        if ids.is_empty() {
            return Ok(0);
        }
        self.inner.write(collection, Vec::new(), ids).await
    }

    async fn search(&self, collection: &str, query: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        check_collection_name(collection)?;
        let loaded = self.inner.fresh(collection).await?;
        let index = read(&loaded);
        query.check(&index.spec)?;
        index.search(query)
    }

    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        check_collection_name(collection)?;
        filter.check()?;
        let loaded = self.inner.fresh(collection).await?;
        let count = read(&loaded).count(filter);
        Ok(count)
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<Vec<Point>, VectorError> {
        check_collection_name(collection)?;
        let loaded = self.inner.fresh(collection).await?;
        let index = read(&loaded);
        Ok(ids.iter().filter_map(|id| index.get(id)).collect())
    }

    async fn search_text(
        &self,
        collection: &str,
        query: &TextQuery,
    ) -> Result<Option<Vec<Hit>>, VectorError> {
        check_collection_name(collection)?;
        query.check()?;
        let Some(table) = &self.inner.table else {
            return Ok(None);
        };
        let loaded = self.inner.fresh(collection).await?;
        let terms = terms(&query.text);
        if terms.is_empty() {
            return Ok(Some(Vec::new()));
        }
        // A filter drops rows after ranking: ask for more.
        let fetch = if query.filter.is_empty() {
            query.limit
        } else {
            query
                .limit
                .saturating_mul(10)
                .min(flowbot_core::vector::MAX_LIMIT * 10)
        };
        let points = read(&loaded).len();
        let ranked = table.text(collection, &terms, fetch, points).await?;
        let index = read(&loaded);
        Ok(Some(
            ranked
                .into_iter()
                .filter_map(|(id, score)| {
                    let payload = index.payload(&id)?;
                    (query.filter.is_empty() || query.filter.test(payload)).then(|| Hit {
                        id,
                        score,
                        payload: payload.clone(),
                    })
                })
                .take(query.limit)
                .collect(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::terms;

    #[test]
    fn keyword_queries_keep_the_words_that_matter() {
        assert_eq!(terms("How do I reset my password?"), ["reset", "password"]);
        assert_eq!(terms("the THE of"), ["the", "of"]);
        assert_eq!(
            terms("\"queue\" OR (NEAR* -crash:"),
            ["queue", "near", "crash"]
        );
        assert!(terms("  ,;  ").is_empty());
        assert_eq!(terms(&"w ".repeat(100)), ["w"]);
        let many: String = (0..50).map(|i| format!("x{i} ")).collect();
        assert_eq!(terms(&many).len(), 32);
    }
}
