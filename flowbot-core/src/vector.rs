//! Vector stores: collections of vectors with a JSON payload each, searched by similarity
//! under metadata filters. The knowledge base of `flowbot-llm` keeps its chunks in one;
//! `flowbot-store` implements it (an embedded index over the SQL store, and Qdrant).
//!
//! Scores are "higher is closer" for every distance: cosine similarity, the dot product, and
//! the negated Euclidean distance. A query's `threshold` keeps the hits scoring at least it.
//!
//! Payload values that filters match are strings, integers and booleans, at the payload's
//! top level (what every backend can index). The payload key [`TEXT_KEY`] holds a point's
//! text, which backends with a keyword index search with [`VectorStore::search_text`].

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{BoxError, StoreError};

/// The payload key whose string the keyword index of a backend reads.
pub const TEXT_KEY: &str = "text";

/// Longest collection name.
pub const MAX_COLLECTION_NAME: usize = 64;

/// Longest point id, in bytes.
pub const MAX_POINT_ID: usize = 256;

/// Largest vector dimension a collection may have.
pub const MAX_DIMENSION: usize = 16_384;

/// Most hits one search may ask for.
pub const MAX_LIMIT: usize = 1_000;

/// How a collection measures closeness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Distance {
    /// Cosine similarity (vectors are compared by angle; the score is in -1..=1).
    #[default]
    Cosine,
    /// The dot product.
    Dot,
    /// Euclidean distance; the score is its negation, so closer is still higher.
    Euclid,
}

impl Distance {
    /// The distance's name in configuration and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Distance::Cosine => "cosine",
            Distance::Dot => "dot",
            Distance::Euclid => "euclid",
        }
    }

    /// Parse [`Distance::as_str`]'s spelling.
    pub fn parse(s: &str) -> Option<Distance> {
        match s {
            "cosine" => Some(Distance::Cosine),
            "dot" => Some(Distance::Dot),
            "euclid" => Some(Distance::Euclid),
            _ => None,
        }
    }

    /// The score of `a` against `b` (same length), higher is closer.
    pub fn score(self, a: &[f32], b: &[f32]) -> f32 {
        match self {
            Distance::Dot => dot(a, b),
            Distance::Cosine => {
                let norms = (dot(a, a) * dot(b, b)).sqrt();
                if norms == 0.0 { 0.0 } else { dot(a, b) / norms }
            }
            Distance::Euclid => {
                let mut sum = 0.0f32;
                for (x, y) in a.iter().zip(b) {
                    let d = x - y;
                    sum += d * d;
                }
                -sum.sqrt()
            }
        }
    }
}

/// The dot product of two slices (the shorter length).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    // Four accumulators let the compiler vectorise the loop.
    let mut acc = [0.0f32; 4];
    let chunks = a.len().min(b.len()) / 4;
    for i in 0..chunks {
        for (lane, slot) in acc.iter_mut().enumerate() {
            *slot += a[i * 4 + lane] * b[i * 4 + lane];
        }
    }
    let mut sum = acc.iter().sum::<f32>();
    for i in chunks * 4..a.len().min(b.len()) {
        sum += a[i] * b[i];
    }
    sum
}

/// A collection's shape: its name, the length of its vectors and its distance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectionSpec {
    /// Letters, digits, `-`, `_` and `.`, 1 to [`MAX_COLLECTION_NAME`] characters.
    pub name: String,
    /// The length of every vector, 1 to [`MAX_DIMENSION`].
    pub dimension: usize,
    /// How closeness is measured.
    #[serde(default)]
    pub distance: Distance,
}

impl CollectionSpec {
    /// A spec.
    pub fn new(name: impl Into<String>, dimension: usize, distance: Distance) -> Self {
        CollectionSpec {
            name: name.into(),
            dimension,
            distance,
        }
    }

    /// Check the name and the dimension.
    pub fn check(&self) -> Result<(), VectorError> {
        check_collection_name(&self.name)?;
        if self.dimension == 0 || self.dimension > MAX_DIMENSION {
            return Err(VectorError::Invalid(format!(
                "collection {:?}: dimension {} must be from 1 to {MAX_DIMENSION}",
                self.name, self.dimension
            )));
        }
        Ok(())
    }
}

/// Check a collection name: letters, digits, `-`, `_` and `.`, 1 to
/// [`MAX_COLLECTION_NAME`] characters, not starting with `.`.
pub fn check_collection_name(name: &str) -> Result<(), VectorError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_COLLECTION_NAME
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(VectorError::Invalid(format!(
            "collection name {name:?}: use 1 to {MAX_COLLECTION_NAME} letters, digits, '-', '_' or '.', not starting with '.'"
        )))
    }
}

/// A collection and how many points it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CollectionInfo {
    /// Its shape.
    #[serde(flatten)]
    pub spec: CollectionSpec,
    /// Its points.
    pub points: u64,
}

/// One vector with its id and payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Unique within the collection; 1 to [`MAX_POINT_ID`] bytes.
    pub id: String,
    /// As long as the collection's dimension; finite numbers.
    pub vector: Vec<f32>,
    /// Metadata (and the text, under [`TEXT_KEY`]).
    #[serde(default)]
    pub payload: Map<String, Value>,
}

impl Point {
    /// Check the id and the vector against `spec`; the error names the point.
    pub fn check(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        if self.id.is_empty() || self.id.len() > MAX_POINT_ID || self.id.contains('\0') {
            return Err(VectorError::Invalid(format!(
                "point id {:?}: must be 1 to {MAX_POINT_ID} bytes without NUL",
                self.id
            )));
        }
        if self.vector.len() != spec.dimension {
            return Err(VectorError::DimensionMismatch {
                collection: spec.name.clone(),
                expected: spec.dimension,
                got: self.vector.len(),
            });
        }
        if let Some(i) = self.vector.iter().position(|x| !x.is_finite()) {
            return Err(VectorError::Invalid(format!(
                "point {:?}: component {i} is not a finite number",
                self.id
            )));
        }
        Ok(())
    }
}

/// What a payload field must hold for a [`Condition`] to match.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Match {
    /// Exactly this value (a string, an integer or a boolean).
    Value(Value),
    /// One of these values.
    Any(Vec<Value>),
}

/// A condition on one top-level payload field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// The payload key.
    pub key: String,
    /// What it must hold.
    #[serde(flatten)]
    pub matches: Match,
}

impl Condition {
    /// `key` holds `value`.
    pub fn eq(key: impl Into<String>, value: impl Into<Value>) -> Self {
        Condition {
            key: key.into(),
            matches: Match::Value(value.into()),
        }
    }

    /// `key` holds one of `values`.
    pub fn any(key: impl Into<String>, values: impl IntoIterator<Item = Value>) -> Self {
        Condition {
            key: key.into(),
            matches: Match::Any(values.into_iter().collect()),
        }
    }

    /// Whether `payload` meets the condition. A field holding an array matches when one of
    /// its elements does (a document's tags).
    pub fn test(&self, payload: &Map<String, Value>) -> bool {
        let Some(field) = payload.get(&self.key) else {
            return false;
        };
        let one = |held: &Value| match &self.matches {
            Match::Value(v) => held == v,
            Match::Any(vs) => vs.contains(held),
        };
        match field {
            Value::Array(items) => items.iter().any(one),
            other => one(other),
        }
    }

    fn check(&self) -> Result<(), VectorError> {
        let scalar = |v: &Value| v.is_string() || v.is_i64() || v.is_u64() || v.is_boolean();
        let ok = !self.key.is_empty()
            && match &self.matches {
                Match::Value(v) => scalar(v),
                Match::Any(vs) => !vs.is_empty() && vs.iter().all(scalar),
            };
        if ok {
            Ok(())
        } else {
            Err(VectorError::Invalid(format!(
                "filter on {:?}: match a non-empty key against strings, integers or booleans",
                self.key
            )))
        }
    }
}

/// Metadata conditions: every `must` holds and no `must_not` does. The empty filter keeps
/// everything.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// Conditions that must all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must: Vec<Condition>,
    /// Conditions none of which may hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub must_not: Vec<Condition>,
}

impl Filter {
    /// The filter keeping everything.
    pub fn all() -> Self {
        Filter::default()
    }

    /// A filter with one `must` condition.
    pub fn must(condition: Condition) -> Self {
        Filter {
            must: vec![condition],
            must_not: Vec::new(),
        }
    }

    /// Whether it keeps everything.
    pub fn is_empty(&self) -> bool {
        self.must.is_empty() && self.must_not.is_empty()
    }

    /// Whether `payload` passes.
    pub fn test(&self, payload: &Map<String, Value>) -> bool {
        self.must.iter().all(|c| c.test(payload)) && !self.must_not.iter().any(|c| c.test(payload))
    }

    /// Check every condition.
    pub fn check(&self) -> Result<(), VectorError> {
        self.must
            .iter()
            .chain(&self.must_not)
            .try_for_each(Condition::check)
    }
}

/// A similarity search.
#[derive(Debug, Clone, PartialEq)]
pub struct VectorQuery {
    /// The query vector (the collection's dimension).
    pub vector: Vec<f32>,
    /// Most hits, 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// Metadata conditions.
    pub filter: Filter,
    /// Keep only hits scoring at least this.
    pub threshold: Option<f32>,
}

impl VectorQuery {
    /// The `limit` nearest points to `vector`, unfiltered.
    pub fn new(vector: Vec<f32>, limit: usize) -> Self {
        VectorQuery {
            vector,
            limit,
            filter: Filter::default(),
            threshold: None,
        }
    }

    /// Check the limit, the vector and the filter against `spec`.
    pub fn check(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        check_limit(self.limit)?;
        if self.vector.len() != spec.dimension {
            return Err(VectorError::DimensionMismatch {
                collection: spec.name.clone(),
                expected: spec.dimension,
                got: self.vector.len(),
            });
        }
        if self.vector.iter().any(|x| !x.is_finite()) {
            return Err(VectorError::Invalid(
                "the query vector holds a number that is not finite".into(),
            ));
        }
        if self.threshold.is_some_and(|t| !t.is_finite()) {
            return Err(VectorError::Invalid("the threshold is not finite".into()));
        }
        self.filter.check()
    }
}

/// A keyword search over the points' text ([`TEXT_KEY`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TextQuery {
    /// Words to look for; any of them may match, and points with more (and rarer) of them
    /// rank higher.
    pub text: String,
    /// Most hits, 1 to [`MAX_LIMIT`].
    pub limit: usize,
    /// Metadata conditions.
    pub filter: Filter,
}

impl TextQuery {
    /// Check the limit and the filter.
    pub fn check(&self) -> Result<(), VectorError> {
        check_limit(self.limit)?;
        self.filter.check()
    }
}

fn check_limit(limit: usize) -> Result<(), VectorError> {
    if limit == 0 || limit > MAX_LIMIT {
        return Err(VectorError::Invalid(format!(
            "limit {limit}: must be from 1 to {MAX_LIMIT}"
        )));
    }
    Ok(())
}

/// A point a search found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The point's id.
    pub id: String,
    /// Higher is closer (vector search) or more relevant (keyword search; scores of the two
    /// kinds are not comparable).
    pub score: f32,
    /// The point's payload.
    pub payload: Map<String, Value>,
}

/// A vector store's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VectorError {
    /// No collection has this name.
    #[error("no collection named {0:?}")]
    UnknownCollection(String),
    /// A vector's length is not the collection's dimension.
    #[error("collection {collection:?} holds vectors of dimension {expected}, not {got}")]
    DimensionMismatch {
        /// The collection.
        collection: String,
        /// Its dimension.
        expected: usize,
        /// The vector's length.
        got: usize,
    },
    /// A collection exists with another dimension or distance.
    #[error("collection {0:?} already exists with another dimension or distance")]
    Conflict(String),
    /// Input the store refuses (a name, a limit, a filter).
    #[error("{0}")]
    Invalid(String),
    /// The store could not be reached or failed; another attempt may work.
    #[error("vector store unavailable: {0}")]
    Unavailable(#[source] BoxError),
    /// The store's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Collections of vectors with payloads, searched by similarity. `flowbot-store` has the
/// embedded backend (over the SQL store) and Qdrant; the conformance suite in
/// `flowbot_store::conformance::vectors` checks a backend of your own.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot vector store",
    note = "use a backend from `flowbot-store`, or implement `VectorStore` for your own"
)]
pub trait VectorStore: Send + Sync + 'static {
    /// A short name of the backend (`embedded`, `qdrant`), for logs.
    fn backend(&self) -> &'static str;

    /// Create a collection. Creating one that exists with the same dimension and distance
    /// does nothing; with another, it is [`VectorError::Conflict`].
    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError>;

    /// A collection, if it exists.
    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, VectorError>;

    /// Every collection, by name.
    async fn collections(&self) -> Result<Vec<CollectionInfo>, VectorError>;

    /// Delete a collection and its points; returns whether it existed.
    async fn delete_collection(&self, name: &str) -> Result<bool, VectorError>;

    /// Insert or replace points, all or none: on an error nothing was written.
    async fn upsert(&self, collection: &str, points: &[Point]) -> Result<(), VectorError>;

    /// Delete points by id; returns how many existed.
    async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, VectorError>;

    /// Delete the points that pass `filter` (never every point: an empty filter is
    /// refused); returns how many.
    async fn delete_where(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError>;

    /// The nearest points, best first.
    async fn search(&self, collection: &str, query: &VectorQuery) -> Result<Vec<Hit>, VectorError>;

    /// How many points pass `filter`.
    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError>;

    /// Points by id (those that exist), in the order asked.
    async fn get(&self, collection: &str, ids: &[String]) -> Result<Vec<Point>, VectorError>;

    /// A keyword search over the points' text, best first; `None` when the backend has no
    /// keyword index (the caller then searches by vector alone).
    async fn search_text(
        &self,
        collection: &str,
        query: &TextQuery,
    ) -> Result<Option<Vec<Hit>>, VectorError> {
        let _ = (collection, query);
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn scores_are_higher_when_closer() {
        let a = [1.0, 0.0];
        let b = [0.6, 0.8];
        let c = [-1.0, 0.0];
        for d in [Distance::Cosine, Distance::Dot, Distance::Euclid] {
            assert!(d.score(&a, &b) > d.score(&a, &c), "{d:?}");
        }
        assert!((Distance::Cosine.score(&a, &b) - 0.6).abs() < 1e-6);
        assert!((Distance::Euclid.score(&a, &c) + 2.0).abs() < 1e-6);
        assert_eq!(Distance::Cosine.score(&a, &[0.0, 0.0]), 0.0);
        let long: Vec<f32> = (0..13).map(|i| i as f32).collect();
        let naive: f32 = long.iter().map(|x| x * x).sum();
        assert_eq!(dot(&long, &long), naive);
    }

    #[test]
    fn names_points_and_filters_are_checked() {
        assert!(check_collection_name("docs-v1.2_en").is_ok());
        for bad in ["", ".hidden", "a b", "é", &"x".repeat(65)] {
            assert!(check_collection_name(bad).is_err(), "{bad:?}");
        }
        let spec = CollectionSpec::new("c", 2, Distance::Cosine);
        assert!(CollectionSpec::new("c", 0, Distance::Dot).check().is_err());
        let p = |id: &str, v: Vec<f32>| Point {
            id: id.into(),
            vector: v,
            payload: Map::new(),
        };
        assert!(p("a", vec![1.0, 2.0]).check(&spec).is_ok());
        assert!(matches!(
            p("a", vec![1.0]).check(&spec),
            Err(VectorError::DimensionMismatch {
                expected: 2,
                got: 1,
                ..
            })
        ));
        assert!(p("a", vec![f32::NAN, 1.0]).check(&spec).is_err());
        assert!(p("", vec![1.0, 1.0]).check(&spec).is_err());
        assert!(Filter::must(Condition::eq("k", 1.5)).check().is_err());
        assert!(Filter::must(Condition::any("k", [])).check().is_err());
        assert!(Filter::must(Condition::eq("k", "v")).check().is_ok());
    }

    #[test]
    fn filters_match_scalars_and_arrays() {
        let payload = json!({"source": "a.md", "page": 3, "tags": ["x", "y"], "draft": false});
        let payload = payload.as_object().expect("object");
        assert!(Filter::must(Condition::eq("source", "a.md")).test(payload));
        assert!(Filter::must(Condition::eq("page", 3)).test(payload));
        assert!(Filter::must(Condition::eq("tags", "y")).test(payload));
        assert!(Filter::must(Condition::any("page", [json!(1), json!(3)])).test(payload));
        assert!(!Filter::must(Condition::eq("missing", 1)).test(payload));
        let not = Filter {
            must: vec![],
            must_not: vec![Condition::eq("draft", false)],
        };
        assert!(!not.test(payload));
        assert!(Filter::all().test(payload));
        let parsed: Filter =
            serde_json::from_value(json!({"must": [{"key": "tags", "any": ["x"]}]})).expect("json");
        assert!(parsed.test(payload));
    }
}
