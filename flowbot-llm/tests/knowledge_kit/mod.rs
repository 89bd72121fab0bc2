//! Real parts for the knowledge base's tests: an exact-search vector store (brute force over
//! a map, honouring filters, thresholds and, when asked, a keyword search), a deterministic
//! embedder (hashed bag of words), and tiny PDFs written by hand.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use flowbot_core::async_trait;
use flowbot_core::llm::{Embedder, ModelError, ModelErrorKind};
use flowbot_core::vector::{
    CollectionInfo, CollectionSpec, Filter, Hit, Point, TEXT_KEY, TextQuery, VectorError,
    VectorQuery, VectorStore,
};
use sha2::{Digest, Sha256};

type Collection = (CollectionSpec, BTreeMap<String, Point>);

/// Exact nearest-neighbour search over every point of a collection.
#[derive(Default)]
pub(crate) struct ExactStore {
    collections: Mutex<HashMap<String, Collection>>,
    /// With a keyword index: `search_text` ranks points by the query words they hold.
    keyword: bool,
    /// Calls to `upsert`.
    pub(crate) upserts: AtomicUsize,
}

impl ExactStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    pub(crate) fn with_keywords() -> Self {
        ExactStore {
            keyword: true,
            ..Self::default()
        }
    }

    /// Every point of a collection, by id.
    pub(crate) fn points(&self, name: &str) -> Vec<Point> {
        let all = self.collections.lock().unwrap();
        all.get(name)
            .map(|(_, p)| p.values().cloned().collect())
            .unwrap_or_default()
    }

    fn with<T>(
        &self,
        name: &str,
        f: impl FnOnce(&mut Collection) -> Result<T, VectorError>,
    ) -> Result<T, VectorError> {
        let mut all = self.collections.lock().unwrap();
        let c = all
            .get_mut(name)
            .ok_or_else(|| VectorError::UnknownCollection(name.to_owned()))?;
        f(c)
    }
}

fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

#[async_trait]
impl VectorStore for ExactStore {
    fn backend(&self) -> &'static str {
        "exact"
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        spec.check()?;
        let mut all = self.collections.lock().unwrap();
        match all.get(&spec.name) {
            Some((existing, _)) if existing == spec => Ok(()),
            Some(_) => Err(VectorError::Conflict(spec.name.clone())),
            None => {
                all.insert(spec.name.clone(), (spec.clone(), BTreeMap::new()));
                Ok(())
            }
        }
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, VectorError> {
        let all = self.collections.lock().unwrap();
        Ok(all.get(name).map(|(spec, points)| CollectionInfo {
            spec: spec.clone(),
            points: points.len() as u64,
        }))
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        let all = self.collections.lock().unwrap();
        let mut out: Vec<CollectionInfo> = all
            .values()
            .map(|(spec, points)| CollectionInfo {
                spec: spec.clone(),
                points: points.len() as u64,
            })
            .collect();
        out.sort_by(|a, b| a.spec.name.cmp(&b.spec.name));
        Ok(out)
    }

    async fn delete_collection(&self, name: &str) -> Result<bool, VectorError> {
        Ok(self.collections.lock().unwrap().remove(name).is_some())
    }

    async fn upsert(&self, collection: &str, points: &[Point]) -> Result<(), VectorError> {
        self.upserts.fetch_add(1, Ordering::SeqCst);
        self.with(collection, |(spec, stored)| {
            // All or none: check every point before writing one.
            for p in points {
                p.check(spec)?;
            }
            for p in points {
                stored.insert(p.id.clone(), p.clone());
            }
            Ok(())
        })
    }

    async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, VectorError> {
        self.with(collection, |(_, stored)| {
            Ok(ids.iter().filter(|id| stored.remove(*id).is_some()).count() as u64)
        })
    }

    async fn delete_where(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        if filter.is_empty() {
            return Err(VectorError::Invalid(
                "an empty filter deletes nothing".into(),
            ));
        }
        filter.check()?;
        self.with(collection, |(_, stored)| {
            let before = stored.len();
            stored.retain(|_, p| !filter.test(&p.payload));
            Ok((before - stored.len()) as u64)
        })
    }

    async fn search(&self, collection: &str, query: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        self.with(collection, |(spec, stored)| {
            query.check(spec)?;
            let mut hits: Vec<Hit> = stored
                .values()
                .filter(|p| query.filter.test(&p.payload))
                .map(|p| Hit {
                    id: p.id.clone(),
                    score: spec.distance.score(&query.vector, &p.vector),
                    payload: p.payload.clone(),
                })
                .filter(|h| query.threshold.is_none_or(|t| h.score >= t))
                .collect();
            hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
            hits.truncate(query.limit);
            Ok(hits)
        })
    }

    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        filter.check()?;
        self.with(collection, |(_, stored)| {
            Ok(stored.values().filter(|p| filter.test(&p.payload)).count() as u64)
        })
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<Vec<Point>, VectorError> {
        self.with(collection, |(_, stored)| {
            Ok(ids
                .iter()
                .filter_map(|id| stored.get(id).cloned())
                .collect())
        })
    }

    async fn search_text(
        &self,
        collection: &str,
        query: &TextQuery,
    ) -> Result<Option<Vec<Hit>>, VectorError> {
        if !self.keyword {
            return Ok(None);
        }
        query.check()?;
        let wanted = words(&query.text);
        self.with(collection, |(_, stored)| {
            let mut hits: Vec<Hit> = stored
                .values()
                .filter(|p| query.filter.test(&p.payload))
                .filter_map(|p| {
                    let text = p.payload.get(TEXT_KEY)?.as_str()?;
                    let held = words(text);
                    let score = wanted.iter().filter(|w| held.contains(w)).count();
                    (score > 0).then(|| Hit {
                        id: p.id.clone(),
                        score: score as f32,
                        payload: p.payload.clone(),
                    })
                })
                .collect();
            hits.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.id.cmp(&b.id)));
            hits.truncate(query.limit);
            Ok(Some(hits))
        })
    }
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
