//! Real parts for the knowledge base's tests: flowbot-store's embedded vector store (in
//! memory, or on a fresh SQLite file for keyword search), counted; a deterministic embedder
//! (hashed bag of words); and tiny PDFs written by hand.
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowbot_core::async_trait;
use flowbot_core::llm::{Embedder, ModelError, ModelErrorKind};
use flowbot_core::vector::{
    CollectionInfo, CollectionSpec, Filter, Hit, MAX_LIMIT, Point, TextQuery, VectorError,
    VectorQuery, VectorStore,
};
use flowbot_store::vectors::{EmbeddedVectors, IndexOptions};
use flowbot_store::{SqliteOptions, SqliteStore};
use sha2::{Digest, Sha256};

/// A directory removed when dropped.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "flowbot-kb-{name}-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// flowbot-store's [`EmbeddedVectors`], counting the calls to `upsert`.
pub(crate) struct Vectors {
    inner: EmbeddedVectors,
    /// Calls to `upsert`.
    pub(crate) upserts: AtomicUsize,
    /// The SQLite store and its folder, when on a file (the store is dropped first).
    _db: Option<(SqliteStore, TempDir)>,
}

impl Vectors {
    /// Collections in memory: no keyword search.
    pub(crate) fn memory() -> Self {
        Vectors {
            inner: EmbeddedVectors::memory(IndexOptions::default()).unwrap(),
            upserts: AtomicUsize::new(0),
            _db: None,
        }
    }

    /// Collections in a fresh SQLite file (removed on drop), with FTS5 keyword search.
    pub(crate) async fn sqlite() -> Self {
        let dir = TempDir::new("vectors");
        let store = SqliteStore::open_with(SqliteOptions::new(dir.0.join("kb.db")))
            .await
            .unwrap();
        Vectors {
            inner: EmbeddedVectors::sqlite(&store, IndexOptions::default()).unwrap(),
            upserts: AtomicUsize::new(0),
            _db: Some((store, dir)),
        }
    }

    /// Every point of a collection (none when it does not exist).
    pub(crate) async fn points(&self, name: &str) -> Vec<Point> {
        let Some(info) = self.inner.collection(name).await.unwrap() else {
            return Vec::new();
        };
        let mut probe = vec![0.0; info.spec.dimension];
        probe[0] = 1.0;
        let hits = self
            .inner
            .search(name, &VectorQuery::new(probe, MAX_LIMIT))
            .await
            .unwrap();
        assert_eq!(hits.len() as u64, info.points, "every point listed");
        let ids: Vec<String> = hits.into_iter().map(|h| h.id).collect();
        self.inner.get(name, &ids).await.unwrap()
    }
}

#[async_trait]
impl VectorStore for Vectors {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        self.inner.create_collection(spec).await
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, VectorError> {
        self.inner.collection(name).await
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        self.inner.collections().await
    }

    async fn delete_collection(&self, name: &str) -> Result<bool, VectorError> {
        self.inner.delete_collection(name).await
    }

    async fn upsert(&self, collection: &str, points: &[Point]) -> Result<(), VectorError> {
        self.upserts.fetch_add(1, Ordering::SeqCst);
        self.inner.upsert(collection, points).await
    }

    async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, VectorError> {
        self.inner.delete(collection, ids).await
    }

    async fn delete_where(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        self.inner.delete_where(collection, filter).await
    }

    async fn search(&self, collection: &str, query: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        self.inner.search(collection, query).await
    }

    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        self.inner.count(collection, filter).await
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<Vec<Point>, VectorError> {
        self.inner.get(collection, ids).await
    }

    async fn search_text(
        &self,
        collection: &str,
        query: &TextQuery,
    ) -> Result<Option<Vec<Hit>>, VectorError> {
        self.inner.search_text(collection, query).await
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// A deterministic embedder: each word (lowercased) adds ±1 to a component picked by its
/// SHA-256, and the vector is normalised; texts sharing words point the same way.
pub(crate) struct HashEmbedder {
    dimension: usize,
    /// Texts holding this word fail with a connection error (a service going away).
    fail_on: Mutex<Option<String>>,
    /// Calls to `embed`.
    pub(crate) calls: AtomicUsize,
    /// Texts embedded.
    pub(crate) texts: AtomicUsize,
}

impl HashEmbedder {
    pub(crate) fn new(dimension: usize) -> Self {
        HashEmbedder {
            dimension,
            fail_on: Mutex::new(None),
            calls: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
        }
    }

    pub(crate) fn fail_on(&self, word: Option<&str>) {
        *self.fail_on.lock().unwrap() = word.map(str::to_lowercase);
    }

    pub(crate) fn vector(&self, text: &str) -> Vec<f32> {
        let mut v = vec![0.0f32; self.dimension];
        for w in words(text) {
            let h = Sha256::digest(w.as_bytes());
            let i = u32::from_le_bytes([h[0], h[1], h[2], h[3]]) as usize % self.dimension;
            v[i] += if h[4] & 1 == 0 { 1.0 } else { -1.0 };
        }
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if norm > 0.0 {
            v.iter_mut().for_each(|x| *x /= norm);
        }
        v
    }
}

#[async_trait]
impl Embedder for HashEmbedder {
    fn name(&self) -> &str {
        "hash-bow"
    }

    fn dimension(&self) -> Option<usize> {
        Some(self.dimension)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let fail = self.fail_on.lock().unwrap().clone();
        if let Some(word) = fail
            && texts.iter().any(|t| words(t).contains(&word))
        {
            return Err(ModelError::new(
                ModelErrorKind::Connection,
                "hash-bow",
                "the embedding service went away",
            ));
        }
        self.texts.fetch_add(texts.len(), Ordering::SeqCst);
        Ok(texts.iter().map(|t| self.vector(t)).collect())
    }
}

/// A valid PDF of one page per text, in Helvetica, its cross-reference table computed.
pub(crate) fn pdf(pages: &[&str]) -> Vec<u8> {
    pdf_with(pages, None)
}

/// A PDF whose trailer names an encryption dictionary that no empty password opens.
pub(crate) fn encrypted_pdf() -> Vec<u8> {
    pdf_with(
        &["secret"],
        Some(
            "<< /Filter /Standard /V 2 /R 3 /Length 128 /P -3904 \
             /O <0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef> \
             /U <fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210> >>",
        ),
    )
}

fn pdf_with(pages: &[&str], encrypt: Option<&str>) -> Vec<u8> {
    let n = pages.len();
    let font = 3 + 2 * n;
    let mut objects: Vec<String> = Vec::new();
    objects.push("<< /Type /Catalog /Pages 2 0 R >>".into());
    let kids: Vec<String> = (0..n).map(|i| format!("{} 0 R", 3 + 2 * i)).collect();
    objects.push(format!(
        "<< /Type /Pages /Kids [{}] /Count {n} >>",
        kids.join(" ")
    ));
    for (i, text) in pages.iter().enumerate() {
        objects.push(format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 {font} 0 R >> >> /Contents {} 0 R >>",
            4 + 2 * i
        ));
        let stream = format!("BT /F1 18 Tf 72 700 Td ({text}) Tj ET");
        objects.push(format!(
            "<< /Length {} >>\nstream\n{stream}\nendstream",
            stream.len()
        ));
    }
    objects.push("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".into());
    if let Some(e) = encrypt {
        objects.push(e.into());
    }
    let mut out = b"%PDF-1.4\n".to_vec();
    let mut offsets = Vec::new();
    for (i, body) in objects.iter().enumerate() {
        offsets.push(out.len());
        out.extend(format!("{} 0 obj\n{body}\nendobj\n", i + 1).bytes());
    }
    let xref = out.len();
    out.extend(format!("xref\n0 {}\n0000000000 65535 f \n", objects.len() + 1).bytes());
    for o in offsets {
        out.extend(format!("{o:010} 00000 n \n").bytes());
    }
    let encrypt = match encrypt {
        Some(_) => format!(
            " /Encrypt {} 0 R /ID [<00112233445566778899aabbccddeeff> <00112233445566778899aabbccddeeff>]",
            objects.len()
        ),
        None => String::new(),
    };
    out.extend(
        format!(
            "trailer\n<< /Size {} /Root 1 0 R{encrypt} >>\nstartxref\n{xref}\n%%EOF\n",
            objects.len() + 1
        )
        .bytes(),
    );
    out
}
