//! The Qdrant vector store (feature `qdrant`): core's [`VectorStore`] over Qdrant's gRPC API,
//! through `qdrant-client`.
//!
//! How FlowBot's model maps onto Qdrant's:
//!
//! - **Collections** are Qdrant collections with one unnamed dense vector, of the spec's size
//!   and distance (`Cosine`, `Dot`, `Euclid`). Collections that FlowBot did not create (named
//!   vectors, other distances) are left out of [`VectorStore::collections`] and refused by the
//!   other calls.
//! - **Point ids.** Qdrant takes only unsigned integers and UUIDs, so each FlowBot id (any
//!   string) is stored under the UUID v5 of the id's bytes in a FlowBot namespace
//!   ([`point_uuid`]; the namespace is the UUID v5 of `flowbot:qdrant:point-id` in the URL
//!   namespace). The original id is kept in the payload under [`ID_KEY`]; payloads come back
//!   without it.
//! - **Cosine vectors.** Qdrant normalises a cosine collection's vectors when it stores them.
//!   The backend keeps each vector's length in the payload under [`NORM_KEY`] and scales the
//!   vectors [`VectorStore::get`] returns back, so they equal what was stored up to float
//!   rounding (a relative error near 1e-7).
//! - **Scores.** Qdrant's Euclid score is the distance, lower being closer; the backend
//!   negates it (core's "higher is closer"), and turns a query threshold `t` into Qdrant's
//!   bound on the distance, `-t`.
//! - **Filters** become Qdrant filters of field conditions: `match` keyword, integer or bool
//!   for one value, `any` over keywords or integers for a list (a list mixing kinds, or with
//!   booleans, becomes a `should` of one condition per kind). Qdrant matches an array field
//!   when one of its elements matches, as core's filters do.
//! - **Writes wait** (`wait: true`): when [`VectorStore::upsert`] and the deletions return, the
//!   points are searchable, or gone.
//! - **Counts are exact** (`exact: true`). [`VectorStore::delete`] and
//!   [`VectorStore::delete_where`] count the points they are about to delete first, so a
//!   writer working on the same points at the same time can make the count they return
//!   differ from what was deleted.
//! - **Keyword search** is not offered: [`VectorStore::search_text`] returns `Ok(None)`.
//!   Qdrant's full-text match filters points by words but does not rank them by how well
//!   they match, which is what the knowledge base's hybrid retrieval needs; callers then
//!   search by vector alone.
//!
//! Limits: the backend creates no payload indexes, so filters scan (fine for a knowledge
//! base's sizes; a server in strict mode that demands indexes for filtered keys refuses such
//! filters, as [`VectorError::Invalid`]); each request times out after qdrant-client's
//! default of 5 seconds (connecting too).
//!
//! Every call on a collection first reads its configuration (one more round trip), so a
//! vector of the wrong length is [`VectorError::DimensionMismatch`] and a missing collection
//! [`VectorError::UnknownCollection`], whatever the server's own messages say. Errors: the
//! server unreachable, timing out, failing inside, refusing the API key or locked for writes
//! is [`VectorError::Unavailable`]; input it refuses is [`VectorError::Invalid`] with its
//! message. The API key never appears in `Debug` output, logs or errors.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::OnceLock;

use async_trait::async_trait;
use flowbot_core::vector::{
    CollectionInfo, CollectionSpec, Condition, Distance, Filter, Hit, Match, Point, TextQuery,
    VectorError, VectorQuery, VectorStore, check_collection_name,
};
use qdrant_client::qdrant::{
    self as q, CountPoints, CreateCollection, DeleteCollection, DeletePoints,
    GetCollectionInfoRequest, GetPoints, PointId, PointStruct, PointsIdsList, PointsSelector,
    QueryPoints, UpsertPoints, VectorParams, VectorsConfig, WithPayloadSelector,
    WithVectorsSelector,
};
use qdrant_client::{Qdrant, QdrantError};
use serde_json::{Map, Value};
use uuid::Uuid;

#[cfg(feature = "test-util")]
pub mod fake;

/// The payload key holding a point's FlowBot id (Qdrant's own id is [`point_uuid`] of it).
pub const ID_KEY: &str = "_flowbot_id";

/// The payload key holding the length of a cosine collection's vector before Qdrant
/// normalised it.
pub const NORM_KEY: &str = "_flowbot_norm";

/// Payload keys starting with this are the backend's own; points may not use them.
pub const RESERVED_PREFIX: &str = "_flowbot_";

/// The Qdrant point id (a UUID v5) that a FlowBot point id is stored under.
pub fn point_uuid(id: &str) -> Uuid {
    static NAMESPACE: OnceLock<Uuid> = OnceLock::new();
    let ns =
        NAMESPACE.get_or_init(|| Uuid::new_v5(&Uuid::NAMESPACE_URL, b"flowbot:qdrant:point-id"));
    Uuid::new_v5(ns, id.as_bytes())
}

/// Core's [`VectorStore`] on a Qdrant server, over gRPC (see the [module](self) docs).
#[derive(Clone)]
pub struct QdrantVectors {
    client: Qdrant,
    url: String,
    has_key: bool,
}

impl fmt::Debug for QdrantVectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QdrantVectors")
            .field("url", &self.url)
            .field("api_key", &if self.has_key { "***" } else { "none" })
            .finish()
    }
}

impl QdrantVectors {
    /// Connect to Qdrant's gRPC endpoint (`http://host:6334`, or `https://…` for TLS), with an
    /// API key if the server wants one, and check that it answers (a health check).
    pub async fn connect(url: &str, api_key: Option<String>) -> Result<Self, VectorError> {
        let shown = crate::redact_url(url);
        let has_key = api_key.is_some();
        let client = Qdrant::from_url(url)
            .api_key(api_key)
            .skip_compatibility_check()
            .build()
            .map_err(|e| match e {
                QdrantError::InvalidUri(e) => {
                    VectorError::Invalid(format!("invalid Qdrant URL {shown:?}: {e}"))
                }
                other => error(other, None),
            })?;
        let store = QdrantVectors {
            client,
            url: shown,
            has_key,
        };
        store
            .client
            .health_check()
            .await
            .map_err(|e| error(e, None))?;
        tracing::debug!(url = %store.url, "connected to Qdrant");
        Ok(store)
    }

    /// The collection's spec, or `None` when it does not exist; an error when it is not one
    /// this backend can use.
    async fn spec(&self, name: &str) -> Result<Option<CollectionSpec>, VectorError> {
        check_collection_name(name)?;
        let info = match self
            .client
            .collection_info(GetCollectionInfoRequest {
                collection_name: name.to_owned(),
            })
            .await
        {
            Ok(reply) => reply.result,
            Err(QdrantError::ResponseError { status })
                if status.code() == tonic::Code::NotFound =>
            {
                return Ok(None);
            }
            Err(e) => return Err(error(e, Some(name))),
        };
        let params = info
            .and_then(|i| i.config)
            .and_then(|c| c.params)
            .and_then(|p| p.vectors_config)
            .and_then(|v| v.config);
        let Some(q::vectors_config::Config::Params(params)) = params else {
            return Err(VectorError::Invalid(format!(
                "Qdrant collection {name:?} has named vectors; FlowBot uses collections of one unnamed vector"
            )));
        };
        let distance = match q::Distance::try_from(params.distance) {
            Ok(q::Distance::Cosine) => Distance::Cosine,
            Ok(q::Distance::Dot) => Distance::Dot,
            Ok(q::Distance::Euclid) => Distance::Euclid,
            _ => {
                return Err(VectorError::Invalid(format!(
                    "Qdrant collection {name:?} uses a distance FlowBot does not know (cosine, dot and euclid only)"
                )));
            }
        };
        let dimension = usize::try_from(params.size).unwrap_or(usize::MAX);
        Ok(Some(CollectionSpec::new(name, dimension, distance)))
    }

    /// The collection's spec, or [`VectorError::UnknownCollection`].
    async fn existing(&self, name: &str) -> Result<CollectionSpec, VectorError> {
        self.spec(name)
            .await?
            .ok_or_else(|| VectorError::UnknownCollection(name.to_owned()))
    }

    async fn count_points(
        &self,
        name: &str,
        filter: Option<q::Filter>,
    ) -> Result<u64, VectorError> {
        let reply = self
            .client
            .count(CountPoints {
                collection_name: name.to_owned(),
                filter,
                exact: Some(true),
                ..Default::default()
            })
            .await
            .map_err(|e| error(e, Some(name)))?;
        Ok(reply.result.map_or(0, |r| r.count))
    }

    async fn info(&self, spec: CollectionSpec) -> Result<CollectionInfo, VectorError> {
        let points = self.count_points(&spec.name, None).await?;
        Ok(CollectionInfo { spec, points })
    }

    async fn delete_selected(
        &self,
        name: &str,
        selector: PointsSelector,
    ) -> Result<(), VectorError> {
        self.client
            .delete_points(DeletePoints {
                collection_name: name.to_owned(),
                wait: Some(true),
                points: Some(selector),
                ..Default::default()
            })
            .await
            .map_err(|e| error(e, Some(name)))?;
        Ok(())
    }
}

#[async_trait]
impl VectorStore for QdrantVectors {
    fn backend(&self) -> &'static str {
        "qdrant"
    }

    async fn create_collection(&self, spec: &CollectionSpec) -> Result<(), VectorError> {
        spec.check()?;
        let same = |found: Option<CollectionSpec>| match found {
            Some(found) if found == *spec => Some(Ok(())),
            Some(_) => Some(Err(VectorError::Conflict(spec.name.clone()))),
            None => None,
        };
        if let Some(done) = same(self.spec(&spec.name).await?) {
            return done;
        }
        let distance = match spec.distance {
            Distance::Cosine => q::Distance::Cosine,
            Distance::Dot => q::Distance::Dot,
            Distance::Euclid => q::Distance::Euclid,
        };
        let created = self
            .client
            .create_collection(CreateCollection {
                collection_name: spec.name.clone(),
                vectors_config: Some(VectorsConfig {
                    config: Some(q::vectors_config::Config::Params(VectorParams {
                        size: spec.dimension as u64,
                        distance: distance.into(),
                        ..Default::default()
                    })),
                }),
                ..Default::default()
            })
            .await;
        match created {
            Ok(_) => Ok(()),
            // Someone created it since we looked: the same spec is fine.
            Err(e) => match same(self.spec(&spec.name).await?) {
                Some(done) => done,
                None => Err(error(e, Some(&spec.name))),
            },
        }
    }

    async fn collection(&self, name: &str) -> Result<Option<CollectionInfo>, VectorError> {
        match self.spec(name).await? {
            Some(spec) => Ok(Some(self.info(spec).await?)),
            None => Ok(None),
        }
    }

    async fn collections(&self) -> Result<Vec<CollectionInfo>, VectorError> {
        let listed = self
            .client
            .list_collections()
            .await
            .map_err(|e| error(e, None))?;
        let mut names: Vec<String> = listed.collections.into_iter().map(|c| c.name).collect();
        names.sort();
        let mut out = Vec::with_capacity(names.len());
        for name in names {
            match self.spec(&name).await {
                Ok(Some(spec)) => out.push(self.info(spec).await?),
                // Deleted since the listing.
                Ok(None) => {}
                // Not a collection FlowBot made (its name, vectors or distance).
                Err(VectorError::Invalid(why)) => {
                    tracing::debug!(collection = %name, %why, "Qdrant collection left out");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    async fn delete_collection(&self, name: &str) -> Result<bool, VectorError> {
        check_collection_name(name)?;
        match self
            .client
            .delete_collection(DeleteCollection {
                collection_name: name.to_owned(),
                timeout: None,
            })
            .await
        {
            Ok(reply) => Ok(reply.result),
            Err(QdrantError::ResponseError { status })
                if status.code() == tonic::Code::NotFound =>
            {
                Ok(false)
            }
            Err(e) => Err(error(e, Some(name))),
        }
    }

    async fn upsert(&self, collection: &str, points: &[Point]) -> Result<(), VectorError> {
        let spec = self.existing(collection).await?;
        // Everything is checked before anything is sent: all or none.
        let mut structs = Vec::with_capacity(points.len());
        for point in points {
            point.check(&spec)?;
            if let Some(key) = point
                .payload
                .keys()
                .find(|k| k.starts_with(RESERVED_PREFIX))
            {
                return Err(VectorError::Invalid(format!(
                    "point {:?}: payload key {key:?} is reserved (keys starting with {RESERVED_PREFIX:?} are the Qdrant backend's)",
                    point.id
                )));
            }
            let mut payload: HashMap<String, q::Value> = point
                .payload
                .iter()
                .map(|(k, v)| (k.clone(), to_qdrant(v)))
                .collect();
            payload.insert(
                ID_KEY.to_owned(),
                to_qdrant(&Value::from(point.id.as_str())),
            );
            if spec.distance == Distance::Cosine {
                let norm = point
                    .vector
                    .iter()
                    .map(|x| f64::from(*x) * f64::from(*x))
                    .sum::<f64>()
                    .sqrt();
                payload.insert(NORM_KEY.to_owned(), to_qdrant(&Value::from(norm)));
            }
            structs.push(PointStruct {
                id: Some(uuid_id(&point.id)),
                payload,
                vectors: Some(q::Vector::from(point.vector.clone()).into()),
            });
        }
        if structs.is_empty() {
            return Ok(());
        }
        self.client
            .upsert_points(UpsertPoints {
                collection_name: collection.to_owned(),
                wait: Some(true),
                points: structs,
                ..Default::default()
            })
            .await
            .map_err(|e| error(e, Some(collection)))?;
        Ok(())
    }

    async fn delete(&self, collection: &str, ids: &[String]) -> Result<u64, VectorError> {
        self.existing(collection).await?;
        let ids: Vec<PointId> = unique(ids).into_iter().map(uuid_id).collect();
        if ids.is_empty() {
            return Ok(0);
        }
        let found = self
            .client
            .get_points(GetPoints {
                collection_name: collection.to_owned(),
                ids: ids.clone(),
                with_payload: Some(enable_payload(false)),
                with_vectors: Some(enable_vectors(false)),
                ..Default::default()
            })
            .await
            .map_err(|e| error(e, Some(collection)))?
            .result;
        if found.is_empty() {
            return Ok(0);
        }
        let found_ids: Vec<PointId> = found.into_iter().filter_map(|p| p.id).collect();
        let n = found_ids.len() as u64;
        let selector = PointsSelector {
            points_selector_one_of: Some(q::points_selector::PointsSelectorOneOf::Points(
                PointsIdsList { ids: found_ids },
            )),
        };
        self.delete_selected(collection, selector).await?;
        Ok(n)
    }

    async fn delete_where(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        if filter.is_empty() {
            return Err(VectorError::Invalid(
                "delete_where needs a filter with at least one condition (the empty filter would delete every point; delete the collection instead)".into(),
            ));
        }
        filter.check()?;
        let qfilter = to_filter(filter)?;
        self.existing(collection).await?;
        let n = self.count_points(collection, qfilter.clone()).await?;
        if n == 0 {
            return Ok(0);
        }
        let selector = PointsSelector {
            points_selector_one_of: qfilter.map(q::points_selector::PointsSelectorOneOf::Filter),
        };
        self.delete_selected(collection, selector).await?;
        Ok(n)
    }

    async fn search(&self, collection: &str, query: &VectorQuery) -> Result<Vec<Hit>, VectorError> {
        let spec = self.existing(collection).await?;
        query.check(&spec)?;
        let filter = to_filter(&query.filter)?;
        let euclid = spec.distance == Distance::Euclid;
        let score_threshold = match query.threshold {
            // No distance is negative: no point scores above 0.
            Some(t) if euclid && t > 0.0 => return Ok(Vec::new()),
            Some(t) if euclid => Some(-t),
            other => other,
        };
        let reply = self
            .client
            .query(QueryPoints {
                collection_name: collection.to_owned(),
                query: Some(q::Query {
                    variant: Some(q::query::Variant::Nearest(q::VectorInput::new_dense(
                        query.vector.clone(),
                    ))),
                }),
                filter,
                score_threshold,
                limit: Some(query.limit as u64),
                with_payload: Some(enable_payload(true)),
                with_vectors: Some(enable_vectors(false)),
                ..Default::default()
            })
            .await
            .map_err(|e| error(e, Some(collection)))?;
        Ok(reply
            .result
            .into_iter()
            .map(|p| {
                let (id, payload) = from_payload(p.id.as_ref(), p.payload);
                let score = if euclid { -p.score } else { p.score };
                Hit { id, score, payload }
            })
            .collect())
    }

    async fn count(&self, collection: &str, filter: &Filter) -> Result<u64, VectorError> {
        filter.check()?;
        let qfilter = to_filter(filter)?;
        self.existing(collection).await?;
        self.count_points(collection, qfilter).await
    }

    async fn get(&self, collection: &str, ids: &[String]) -> Result<Vec<Point>, VectorError> {
        let spec = self.existing(collection).await?;
        let asked = unique(ids);
        if asked.is_empty() {
            return Ok(Vec::new());
        }
        let reply = self
            .client
            .get_points(GetPoints {
                collection_name: collection.to_owned(),
                ids: asked.iter().map(|id| uuid_id(id)).collect(),
                with_payload: Some(enable_payload(true)),
                with_vectors: Some(enable_vectors(true)),
                ..Default::default()
            })
            .await
            .map_err(|e| error(e, Some(collection)))?;
        let mut found: HashMap<String, Point> = HashMap::new();
        for p in reply.result {
            let norm = match p.payload.get(NORM_KEY).map(from_qdrant) {
                Some(Value::Number(n)) => n.as_f64(),
                _ => None,
            };
            let (id, payload) = from_payload(p.id.as_ref(), p.payload);
            let mut vector = dense(p.vectors);
            if let (Distance::Cosine, Some(norm)) = (spec.distance, norm) {
                for x in &mut vector {
                    *x = (f64::from(*x) * norm) as f32;
                }
            }
            found.insert(
                id.clone(),
                Point {
                    id,
                    vector,
                    payload,
                },
            );
        }
        Ok(asked
            .into_iter()
            .filter_map(|id| found.remove(id))
            .collect())
    }

    /// Always `Ok(None)`: Qdrant's full-text match filters points by words without ranking
    /// them, so the backend offers no keyword search and callers search by vector alone.
    async fn search_text(
        &self,
        collection: &str,
        query: &TextQuery,
    ) -> Result<Option<Vec<Hit>>, VectorError> {
        let _ = (collection, query);
        Ok(None)
    }
}

/// `ids` without repeats, in their order.
fn unique(ids: &[String]) -> Vec<&str> {
    let mut seen = HashSet::new();
    ids.iter()
        .map(String::as_str)
        .filter(|id| seen.insert(*id))
        .collect()
}

fn uuid_id(id: &str) -> PointId {
    PointId {
        point_id_options: Some(q::point_id::PointIdOptions::Uuid(
            point_uuid(id).to_string(),
        )),
    }
}

fn enable_payload(on: bool) -> WithPayloadSelector {
    WithPayloadSelector {
        selector_options: Some(q::with_payload_selector::SelectorOptions::Enable(on)),
    }
}

fn enable_vectors(on: bool) -> WithVectorsSelector {
    WithVectorsSelector {
        selector_options: Some(q::with_vectors_selector::SelectorOptions::Enable(on)),
    }
}

/// The FlowBot id and payload of a stored point: the id from [`ID_KEY`] (or, for a point
/// FlowBot did not write, Qdrant's id), the payload without the backend's keys.
fn from_payload(
    id: Option<&PointId>,
    payload: HashMap<String, q::Value>,
) -> (String, Map<String, Value>) {
    let mut out = Map::new();
    let mut flowbot_id = None;
    for (k, v) in payload {
        if k == ID_KEY {
            if let Value::String(s) = from_qdrant(&v) {
                flowbot_id = Some(s);
            }
        } else if !k.starts_with(RESERVED_PREFIX) {
            out.insert(k, from_qdrant(&v));
        }
    }
    let id = flowbot_id.unwrap_or_else(|| match id.and_then(|i| i.point_id_options.as_ref()) {
        Some(q::point_id::PointIdOptions::Uuid(u)) => u.clone(),
        Some(q::point_id::PointIdOptions::Num(n)) => n.to_string(),
        None => String::new(),
    });
    (id, out)
}

/// The unnamed dense vector of a retrieved point.
#[allow(deprecated)] // servers before 1.16 answer with the deprecated `data` field
fn dense(vectors: Option<q::VectorsOutput>) -> Vec<f32> {
    match vectors.and_then(|v| v.vectors_options) {
        Some(q::vectors_output::VectorsOptions::Vector(v)) => match v.vector {
            Some(q::vector_output::Vector::Dense(d)) => d.data,
            _ => v.data,
        },
        _ => Vec::new(),
    }
}

fn to_qdrant(v: &Value) -> q::Value {
    use q::value::Kind;
    let kind = match v {
        Value::Null => Kind::NullValue(0),
        Value::Bool(b) => Kind::BoolValue(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Kind::IntegerValue(i),
            None => Kind::DoubleValue(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Kind::StringValue(s.clone()),
        Value::Array(items) => Kind::ListValue(q::ListValue {
            values: items.iter().map(to_qdrant).collect(),
        }),
        Value::Object(fields) => Kind::StructValue(q::Struct {
            fields: fields
                .iter()
                .map(|(k, v)| (k.clone(), to_qdrant(v)))
                .collect(),
        }),
    };
    q::Value { kind: Some(kind) }
}

fn from_qdrant(v: &q::Value) -> Value {
    use q::value::Kind;
    match &v.kind {
        None | Some(Kind::NullValue(_)) => Value::Null,
        Some(Kind::BoolValue(b)) => Value::Bool(*b),
        Some(Kind::IntegerValue(i)) => Value::from(*i),
        Some(Kind::DoubleValue(d)) => {
            serde_json::Number::from_f64(*d).map_or(Value::Null, Value::Number)
        }
        Some(Kind::StringValue(s)) => Value::String(s.clone()),
        Some(Kind::ListValue(l)) => Value::Array(l.values.iter().map(from_qdrant).collect()),
        Some(Kind::StructValue(s)) => Value::Object(
            s.fields
                .iter()
                .map(|(k, v)| (k.clone(), from_qdrant(v)))
                .collect(),
        ),
    }
}

/// Core's filter as Qdrant's (`None` for the empty filter). Call [`Filter::check`] first.
fn to_filter(filter: &Filter) -> Result<Option<q::Filter>, VectorError> {
    if filter.is_empty() {
        return Ok(None);
    }
    let conditions = |cs: &[Condition]| cs.iter().map(to_condition).collect::<Result<Vec<_>, _>>();
    Ok(Some(q::Filter {
        must: conditions(&filter.must)?,
        must_not: conditions(&filter.must_not)?,
        ..Default::default()
    }))
}

fn field(key: &str, value: q::r#match::MatchValue) -> q::Condition {
    q::Condition {
        condition_one_of: Some(q::condition::ConditionOneOf::Field(q::FieldCondition {
            key: key.to_owned(),
            r#match: Some(q::Match {
                match_value: Some(value),
            }),
            ..Default::default()
        })),
    }
}

fn to_condition(c: &Condition) -> Result<q::Condition, VectorError> {
    use q::r#match::MatchValue;
    let integer = |v: &Value| {
        v.as_i64().ok_or_else(|| {
            VectorError::Invalid(format!(
                "filter on {:?}: Qdrant matches integers from {} to {} only",
                c.key,
                i64::MIN,
                i64::MAX
            ))
        })
    };
    let values = match &c.matches {
        Match::Value(v) => std::slice::from_ref(v),
        Match::Any(vs) => vs.as_slice(),
    };
    let mut strings = Vec::new();
    let mut integers = Vec::new();
    let mut bools = Vec::new();
    for v in values {
        match v {
            Value::String(s) => strings.push(s.clone()),
            Value::Bool(b) => bools.push(*b),
            Value::Number(_) => integers.push(integer(v)?),
            _ => {
                return Err(VectorError::Invalid(format!(
                    "filter on {:?}: match strings, integers or booleans",
                    c.key
                )));
            }
        }
    }
    let mut alternatives = Vec::new();
    match strings.len() {
        0 => {}
        1 => alternatives.push(field(&c.key, MatchValue::Keyword(strings.remove(0)))),
        _ => alternatives.push(field(
            &c.key,
            MatchValue::Keywords(q::RepeatedStrings { strings }),
        )),
    }
    match integers.len() {
        0 => {}
        1 => alternatives.push(field(&c.key, MatchValue::Integer(integers[0]))),
        _ => alternatives.push(field(
            &c.key,
            MatchValue::Integers(q::RepeatedIntegers { integers }),
        )),
    }
    bools.sort_unstable();
    bools.dedup();
    for b in bools {
        alternatives.push(field(&c.key, MatchValue::Boolean(b)));
    }
    if alternatives.len() == 1 {
        return Ok(alternatives.remove(0));
    }
    Ok(q::Condition {
        condition_one_of: Some(q::condition::ConditionOneOf::Filter(q::Filter {
            should: alternatives,
            ..Default::default()
        })),
    })
}

/// A client error as the trait's. `collection` names the collection a "not found" is about.
/// Messages carry the status code and the server's message, never the request's metadata
/// (where the API key travels).
fn error(e: QdrantError, collection: Option<&str>) -> VectorError {
    use tonic::Code;
    match e {
        QdrantError::ResponseError { status } => match status.code() {
            Code::NotFound => match collection {
                Some(name) => VectorError::UnknownCollection(name.to_owned()),
                None => VectorError::Invalid(format!("Qdrant: {}", status.message())),
            },
            Code::InvalidArgument
            | Code::OutOfRange
            | Code::AlreadyExists
            | Code::Unimplemented => VectorError::Invalid(format!("Qdrant: {}", status.message())),
            Code::Unauthenticated | Code::PermissionDenied => VectorError::Unavailable(
                format!(
                    "Qdrant refused the request ({:?}): check the API key",
                    status.code()
                )
                .into(),
            ),
            code => {
                VectorError::Unavailable(format!("Qdrant ({code:?}): {}", status.message()).into())
            }
        },
        QdrantError::ResourceExhaustedError {
            status,
            retry_after_seconds,
        } => VectorError::Unavailable(
            format!(
                "Qdrant is overloaded (retry after {retry_after_seconds} s): {}",
                status.message()
            )
            .into(),
        ),
        QdrantError::ConversionError(why) => VectorError::Invalid(format!("Qdrant: {why}")),
        QdrantError::InvalidUri(e) => VectorError::Invalid(format!("invalid Qdrant URL: {e}")),
        QdrantError::Io(e) => VectorError::Unavailable(e.into()),
        other => VectorError::Unavailable(format!("Qdrant: {other}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_map_to_stable_uuids() {
        let a = point_uuid("doc-1#0");
        assert_eq!(a, point_uuid("doc-1#0"));
        assert_ne!(a, point_uuid("doc-1#1"));
        assert_eq!(a.get_version_num(), 5);
    }

    #[test]
    fn payloads_round_trip() {
        let v = json!({"s": "x", "i": -3, "f": 1.5, "b": true, "n": null, "a": [1, "y"], "o": {"k": [false]}});
        assert_eq!(from_qdrant(&to_qdrant(&v)), v);
    }

    #[test]
    fn mixed_any_becomes_should() {
        let c = Condition::any("k", [json!("a"), json!(1), json!(true)]);
        let q = to_condition(&c).expect("condition");
        let Some(q::condition::ConditionOneOf::Filter(f)) = q.condition_one_of else {
            panic!("not a nested filter: {q:?}");
        };
        assert_eq!(f.should.len(), 3);
        let big = Condition::eq("k", u64::MAX);
        assert!(matches!(to_condition(&big), Err(VectorError::Invalid(_))));
    }
}
