//! A PROTOCOL FAKE of Qdrant — NOT Qdrant. It speaks the subset of Qdrant's gRPC protocol
//! that `flowbot_store::qdrant::QdrantVectors` uses, through the server stubs that
//! `qdrant-client` ships (`qdrant_client::qdrant::{collections_server, points_server,
//! qdrant_server}`, generated without any feature), served by tonic on 127.0.0.1:0. Built with
//! the features `qdrant` and `test-util`, for the tests of applications that configure Qdrant.
//!
//! It keeps collections and points in memory and really does the work, following Qdrant's
//! documented behaviour: cosine collections normalise vectors when they are stored; search is
//! brute force with Qdrant's scores (cosine and dot: the dot product of the stored and query
//! vectors, higher first, `score_threshold` a lower bound; euclid: the distance, lower
//! first, `score_threshold` an upper bound); filters are `must` / `should` / `must_not` of
//! field conditions matching keywords, integers, booleans and `any` lists on top-level keys,
//! an array field matching when one of its elements does; counts, deletions by ids and by
//! filter, and retrieval by ids. Unknown collections are `NOT_FOUND`, bad input
//! `INVALID_ARGUMENT` with a Qdrant-like message, and every call it does not implement is
//! `UNIMPLEMENTED`. It is what the tests run against when no real Qdrant is reachable; the
//! same tests run against a real one when `QDRANT_URL` is set.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use qdrant_client::qdrant::collections_server::{Collections, CollectionsServer};
use qdrant_client::qdrant::points_server::{Points, PointsServer};
use qdrant_client::qdrant::qdrant_server::{Qdrant, QdrantServer};
use qdrant_client::qdrant::{self as q};
use tonic::{Request, Response, Status};

struct Collection {
    size: usize,
    distance: q::Distance,
    /// Points by id (`Uuid`s as text, numbers as `#n`).
    points: BTreeMap<String, Stored>,
}

#[derive(Clone)]
struct Stored {
    id: q::PointId,
    vector: Vec<f32>,
    payload: HashMap<String, q::Value>,
}

/// The PROTOCOL FAKE's state, shared by its three services.
#[derive(Clone, Default)]
struct Fake {
    collections: Arc<Mutex<BTreeMap<String, Collection>>>,
}

/// Start a PROTOCOL FAKE on 127.0.0.1 (a port the system picks) and give its
/// `http://127.0.0.1:port` URL. The server runs on the current Tokio runtime and stops with it.
pub async fn start() -> std::io::Result<String> {
    start_with_key(None).await
}

/// [`start`], and with `Some(key)` every call must carry it in the `api-key` header, as
/// Qdrant's do when it has an API key (`UNAUTHENTICATED` otherwise).
pub async fn start_with_key(key: Option<&str>) -> std::io::Result<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let incoming = tonic::transport::server::TcpIncoming::bind(addr)?;
    let local = incoming.local_addr()?;
    let fake = Fake::default();
    let key = key.map(str::to_owned);
    let check = move |request: Request<()>| -> Result<Request<()>, Status> {
        let Some(key) = &key else {
            return Ok(request);
        };
        match request.metadata().get("api-key").map(|v| v.to_str()) {
            Some(Ok(sent)) if sent == key => Ok(request),
            _ => Err(Status::unauthenticated(
                "Must provide an API key or an Authorization bearer token",
            )),
        }
    };
    let server = tonic::transport::Server::builder()
        .add_service(QdrantServer::with_interceptor(fake.clone(), check.clone()))
        .add_service(CollectionsServer::with_interceptor(
            fake.clone(),
            check.clone(),
        ))
        .add_service(PointsServer::with_interceptor(fake, check))
        .serve_with_incoming(incoming);
    tokio::spawn(server);
    Ok(format!("http://{local}"))
}

fn unused<T>(call: &str) -> Result<T, Status> {
    Err(Status::unimplemented(format!(
        "the Qdrant PROTOCOL FAKE does not implement {call}"
    )))
}

fn not_found(name: &str) -> Status {
    Status::not_found(format!("Not found: Collection `{name}` doesn't exist!"))
}

impl Fake {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Collection>> {
        self.collections.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn key_of(id: &q::PointId) -> Result<String, Status> {
    match &id.point_id_options {
        Some(q::point_id::PointIdOptions::Num(n)) => Ok(format!("#{n}")),
        Some(q::point_id::PointIdOptions::Uuid(u)) => uuid::Uuid::parse_str(u)
            .map(|u| u.to_string())
            .map_err(|e| Status::invalid_argument(format!("Unable to parse UUID: {u}: {e}"))),
        None => Err(Status::invalid_argument("Wrong input: point id is empty")),
    }
}

#[allow(deprecated)] // clients before 1.16 send the deprecated `data` field
fn dense_of(vectors: Option<q::Vectors>) -> Result<Vec<f32>, Status> {
    match vectors.and_then(|v| v.vectors_options) {
        Some(q::vectors::VectorsOptions::Vector(v)) => match v.vector {
            Some(q::vector::Vector::Dense(d)) => Ok(d.data),
            None => Ok(v.data),
            Some(_) => unused("vectors other than dense ones"),
        },
        Some(q::vectors::VectorsOptions::Vectors(_)) => unused("named vectors"),
        None => Err(Status::invalid_argument("Wrong input: point has no vector")),
    }
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Qdrant's cosine preprocessing: scale to length 1 (a zero vector stays as it is).
fn normalised(v: Vec<f32>) -> Vec<f32> {
    let norm = dot(&v, &v).sqrt();
    if norm < f32::EPSILON {
        v
    } else {
        v.into_iter().map(|x| x / norm).collect()
    }
}

/// Qdrant's score of a stored vector against a query: cosine and dot the dot product (of
/// normalised vectors for cosine), euclid the distance.
fn score(distance: q::Distance, stored: &[f32], query: &[f32]) -> f32 {
    match distance {
        q::Distance::Euclid => stored
            .iter()
            .zip(query)
            .map(|(x, y)| (x - y) * (x - y))
            .sum::<f32>()
            .sqrt(),
        _ => dot(stored, query),
    }
}

fn value_matches(v: &q::Value, m: &q::r#match::MatchValue) -> Result<bool, Status> {
    use q::r#match::MatchValue as M;
    use q::value::Kind as K;
    Ok(match (m, &v.kind) {
        (M::Keyword(k), Some(K::StringValue(s))) => k == s,
        (M::Integer(i), Some(K::IntegerValue(n))) => i == n,
        (M::Boolean(b), Some(K::BoolValue(x))) => b == x,
        (M::Keywords(ks), Some(K::StringValue(s))) => ks.strings.contains(s),
        (M::Integers(is), Some(K::IntegerValue(n))) => is.integers.contains(n),
        (M::Keyword(_) | M::Integer(_) | M::Boolean(_) | M::Keywords(_) | M::Integers(_), _) => {
            false
        }
        _ => return unused("this kind of match"),
    })
}

fn condition_holds(c: &q::Condition, payload: &HashMap<String, q::Value>) -> Result<bool, Status> {
    match &c.condition_one_of {
        Some(q::condition::ConditionOneOf::Field(f)) => {
            let Some(m) = f.r#match.as_ref().and_then(|m| m.match_value.as_ref()) else {
                return unused("field conditions other than match");
            };
            let Some(held) = payload.get(&f.key) else {
                return Ok(false);
            };
            match &held.kind {
                Some(q::value::Kind::ListValue(items)) => {
                    for item in &items.values {
                        if value_matches(item, m)? {
                            return Ok(true);
                        }
                    }
                    Ok(false)
                }
                _ => value_matches(held, m),
            }
        }
        Some(q::condition::ConditionOneOf::Filter(inner)) => filter_holds(Some(inner), payload),
        _ => unused("conditions other than field matches and nested filters"),
    }
}

fn filter_holds(
    filter: Option<&q::Filter>,
    payload: &HashMap<String, q::Value>,
) -> Result<bool, Status> {
    let Some(f) = filter else {
        return Ok(true);
    };
    if f.min_should.is_some() {
        return unused("min_should");
    }
    for c in &f.must {
        if !condition_holds(c, payload)? {
            return Ok(false);
        }
    }
    for c in &f.must_not {
        if condition_holds(c, payload)? {
            return Ok(false);
        }
    }
    if f.should.is_empty() {
        return Ok(true);
    }
    for c in &f.should {
        if condition_holds(c, payload)? {
            return Ok(true);
        }
    }
    Ok(false)
}

fn payload_wanted(s: Option<&q::WithPayloadSelector>) -> Result<bool, Status> {
    match s.and_then(|s| s.selector_options.as_ref()) {
        None => Ok(false),
        Some(q::with_payload_selector::SelectorOptions::Enable(on)) => Ok(*on),
        Some(_) => unused("payload include/exclude selectors"),
    }
}

fn vectors_wanted(s: Option<&q::WithVectorsSelector>) -> Result<bool, Status> {
    match s.and_then(|s| s.selector_options.as_ref()) {
        None => Ok(false),
        Some(q::with_vectors_selector::SelectorOptions::Enable(on)) => Ok(*on),
        Some(_) => unused("vector selectors"),
    }
}

fn vectors_output(v: &[f32]) -> q::VectorsOutput {
    q::VectorsOutput {
        vectors_options: Some(q::vectors_output::VectorsOptions::Vector(q::VectorOutput {
            vector: Some(q::vector_output::Vector::Dense(q::DenseVector {
                data: v.to_vec(),
            })),
            ..Default::default()
        })),
    }
}

fn done() -> q::PointsOperationResponse {
    q::PointsOperationResponse {
        result: Some(q::UpdateResult {
            operation_id: Some(0),
            status: q::UpdateStatus::Completed.into(),
        }),
        time: 0.0,
        usage: None,
    }
}

#[tonic::async_trait]
impl Qdrant for Fake {
    async fn health_check(
        &self,
        _: Request<q::HealthCheckRequest>,
    ) -> Result<Response<q::HealthCheckReply>, Status> {
        Ok(Response::new(q::HealthCheckReply {
            title: "qdrant - PROTOCOL FAKE for FlowBot's tests".into(),
            version: "1.20.0".into(),
            commit: None,
        }))
    }
}

#[tonic::async_trait]
impl Collections for Fake {
    async fn get(
        &self,
        request: Request<q::GetCollectionInfoRequest>,
    ) -> Result<Response<q::GetCollectionInfoResponse>, Status> {
        let name = request.into_inner().collection_name;
        let collections = self.lock();
        let c = collections.get(&name).ok_or_else(|| not_found(&name))?;
        let params = q::VectorParams {
            size: c.size as u64,
            distance: c.distance.into(),
            ..Default::default()
        };
        Ok(Response::new(q::GetCollectionInfoResponse {
            result: Some(q::CollectionInfo {
                status: q::CollectionStatus::Green.into(),
                config: Some(q::CollectionConfig {
                    params: Some(q::CollectionParams {
                        shard_number: 1,
                        vectors_config: Some(q::VectorsConfig {
                            config: Some(q::vectors_config::Config::Params(params)),
                        }),
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                points_count: Some(c.points.len() as u64),
                ..Default::default()
            }),
            time: 0.0,
        }))
    }

    async fn list(
        &self,
        _: Request<q::ListCollectionsRequest>,
    ) -> Result<Response<q::ListCollectionsResponse>, Status> {
        let collections = self.lock();
        Ok(Response::new(q::ListCollectionsResponse {
            collections: collections
                .keys()
                .map(|name| q::CollectionDescription { name: name.clone() })
                .collect(),
            time: 0.0,
        }))
    }

    async fn create(
        &self,
        request: Request<q::CreateCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        let r = request.into_inner();
        let Some(q::vectors_config::Config::Params(params)) =
            r.vectors_config.and_then(|v| v.config)
        else {
            return unused("collections without one unnamed vector");
        };
        let distance = q::Distance::try_from(params.distance)
            .ok()
            .filter(|d| {
                matches!(
                    d,
                    q::Distance::Cosine | q::Distance::Dot | q::Distance::Euclid
                )
            })
            .ok_or_else(|| Status::invalid_argument("Wrong input: unsupported distance"))?;
        if params.size == 0 {
            return Err(Status::invalid_argument(
                "Validation error in JSON body: [vectors_config.size: value 0 invalid, must be 1 or larger]",
            ));
        }
        let mut collections = self.lock();
        if collections.contains_key(&r.collection_name) {
            return Err(Status::already_exists(format!(
                "Wrong input: Collection `{}` already exists!",
                r.collection_name
            )));
        }
        collections.insert(
            r.collection_name,
            Collection {
                size: params.size as usize,
                distance,
                points: BTreeMap::new(),
            },
        );
        Ok(Response::new(q::CollectionOperationResponse {
            result: true,
            time: 0.0,
        }))
    }

    async fn delete(
        &self,
        request: Request<q::DeleteCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        let name = request.into_inner().collection_name;
        let existed = self.lock().remove(&name).is_some();
        Ok(Response::new(q::CollectionOperationResponse {
            result: existed,
            time: 0.0,
        }))
    }

    async fn collection_exists(
        &self,
        request: Request<q::CollectionExistsRequest>,
    ) -> Result<Response<q::CollectionExistsResponse>, Status> {
        let name = request.into_inner().collection_name;
        let exists = self.lock().contains_key(&name);
        Ok(Response::new(q::CollectionExistsResponse {
            result: Some(q::CollectionExists { exists }),
            time: 0.0,
        }))
    }

    async fn update(
        &self,
        _: Request<q::UpdateCollection>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        unused("update")
    }
    async fn update_aliases(
        &self,
        _: Request<q::ChangeAliases>,
    ) -> Result<Response<q::CollectionOperationResponse>, Status> {
        unused("update_aliases")
    }
    async fn list_collection_aliases(
        &self,
        _: Request<q::ListCollectionAliasesRequest>,
    ) -> Result<Response<q::ListAliasesResponse>, Status> {
        unused("list_collection_aliases")
    }
    async fn list_aliases(
        &self,
        _: Request<q::ListAliasesRequest>,
    ) -> Result<Response<q::ListAliasesResponse>, Status> {
        unused("list_aliases")
    }
    async fn collection_cluster_info(
        &self,
        _: Request<q::CollectionClusterInfoRequest>,
    ) -> Result<Response<q::CollectionClusterInfoResponse>, Status> {
        unused("collection_cluster_info")
    }
    async fn update_collection_cluster_setup(
        &self,
        _: Request<q::UpdateCollectionClusterSetupRequest>,
    ) -> Result<Response<q::UpdateCollectionClusterSetupResponse>, Status> {
        unused("update_collection_cluster_setup")
    }
    async fn create_shard_key(
        &self,
        _: Request<q::CreateShardKeyRequest>,
    ) -> Result<Response<q::CreateShardKeyResponse>, Status> {
        unused("create_shard_key")
    }
    async fn delete_shard_key(
        &self,
        _: Request<q::DeleteShardKeyRequest>,
    ) -> Result<Response<q::DeleteShardKeyResponse>, Status> {
        unused("delete_shard_key")
    }
    async fn list_shard_keys(
        &self,
        _: Request<q::ListShardKeysRequest>,
    ) -> Result<Response<q::ListShardKeysResponse>, Status> {
        unused("list_shard_keys")
    }
}

#[tonic::async_trait]
impl Points for Fake {
    async fn upsert(
        &self,
        request: Request<q::UpsertPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        let r = request.into_inner();
        let mut collections = self.lock();
        let c = collections
            .get_mut(&r.collection_name)
            .ok_or_else(|| not_found(&r.collection_name))?;
        // Check every point before writing any (Qdrant validates the whole batch first).
        let mut checked = Vec::with_capacity(r.points.len());
        for p in r.points {
            let id =
                p.id.ok_or_else(|| Status::invalid_argument("Wrong input: point id is empty"))?;
            let key = key_of(&id)?;
            let vector = dense_of(p.vectors)?;
            if vector.len() != c.size {
                return Err(Status::invalid_argument(format!(
                    "Wrong input: Vector dimension error: expected dim: {}, got {}",
                    c.size,
                    vector.len()
                )));
            }
            let vector = if c.distance == q::Distance::Cosine {
                normalised(vector)
            } else {
                vector
            };
            checked.push((
                key,
                Stored {
                    id,
                    vector,
                    payload: p.payload,
                },
            ));
        }
        c.points.extend(checked);
        Ok(Response::new(done()))
    }

    async fn delete(
        &self,
        request: Request<q::DeletePoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        let r = request.into_inner();
        let mut collections = self.lock();
        let c = collections
            .get_mut(&r.collection_name)
            .ok_or_else(|| not_found(&r.collection_name))?;
        match r.points.and_then(|p| p.points_selector_one_of) {
            Some(q::points_selector::PointsSelectorOneOf::Points(list)) => {
                for id in &list.ids {
                    c.points.remove(&key_of(id)?);
                }
            }
            Some(q::points_selector::PointsSelectorOneOf::Filter(f)) => {
                let mut doomed = Vec::new();
                for (k, p) in &c.points {
                    if filter_holds(Some(&f), &p.payload)? {
                        doomed.push(k.clone());
                    }
                }
                for k in doomed {
                    c.points.remove(&k);
                }
            }
            None => return Err(Status::invalid_argument("Wrong input: no points selector")),
        }
        Ok(Response::new(done()))
    }

    async fn get(
        &self,
        request: Request<q::GetPoints>,
    ) -> Result<Response<q::GetResponse>, Status> {
        let r = request.into_inner();
        let with_payload = payload_wanted(r.with_payload.as_ref())?;
        let with_vectors = vectors_wanted(r.with_vectors.as_ref())?;
        let collections = self.lock();
        let c = collections
            .get(&r.collection_name)
            .ok_or_else(|| not_found(&r.collection_name))?;
        let mut result = Vec::new();
        for id in &r.ids {
            if let Some(p) = c.points.get(&key_of(id)?) {
                result.push(q::RetrievedPoint {
                    id: Some(p.id.clone()),
                    payload: if with_payload {
                        p.payload.clone()
                    } else {
                        HashMap::new()
                    },
                    vectors: with_vectors.then(|| vectors_output(&p.vector)),
                    ..Default::default()
                });
            }
        }
        Ok(Response::new(q::GetResponse {
            result,
            time: 0.0,
            usage: None,
        }))
    }

    async fn count(
        &self,
        request: Request<q::CountPoints>,
    ) -> Result<Response<q::CountResponse>, Status> {
        let r = request.into_inner();
        let collections = self.lock();
        let c = collections
            .get(&r.collection_name)
            .ok_or_else(|| not_found(&r.collection_name))?;
        let mut count = 0;
        for p in c.points.values() {
            if filter_holds(r.filter.as_ref(), &p.payload)? {
                count += 1;
            }
        }
        Ok(Response::new(q::CountResponse {
            result: Some(q::CountResult { count }),
            time: 0.0,
            usage: None,
        }))
    }

    async fn query(
        &self,
        request: Request<q::QueryPoints>,
    ) -> Result<Response<q::QueryResponse>, Status> {
        let r = request.into_inner();
        if !r.prefetch.is_empty() || r.using.is_some() {
            return unused("prefetch and named vectors");
        }
        let with_payload = payload_wanted(r.with_payload.as_ref())?;
        let with_vectors = vectors_wanted(r.with_vectors.as_ref())?;
        let query = match r.query.and_then(|q| q.variant) {
            Some(q::query::Variant::Nearest(q::VectorInput {
                variant: Some(q::vector_input::Variant::Dense(d)),
            })) => d.data,
            _ => return unused("queries other than nearest to a dense vector"),
        };
        let collections = self.lock();
        let c = collections
            .get(&r.collection_name)
            .ok_or_else(|| not_found(&r.collection_name))?;
        if query.len() != c.size {
            return Err(Status::invalid_argument(format!(
                "Wrong input: Vector dimension error: expected dim: {}, got {}",
                c.size,
                query.len()
            )));
        }
        let euclid = c.distance == q::Distance::Euclid;
        let query = if c.distance == q::Distance::Cosine {
            normalised(query)
        } else {
            query
        };
        let mut scored = Vec::new();
        for p in c.points.values() {
            if !filter_holds(r.filter.as_ref(), &p.payload)? {
                continue;
            }
            let s = score(c.distance, &p.vector, &query);
            let passes = match r.score_threshold {
                None => true,
                Some(t) if euclid => s <= t,
                Some(t) => s >= t,
            };
            if passes {
                scored.push((s, p));
            }
        }
        // Best first: lower distance for euclid, higher score for the others.
        scored.sort_by(|a, b| {
            let order = a.0.total_cmp(&b.0);
            if euclid { order } else { order.reverse() }
        });
        let offset = r.offset.unwrap_or(0) as usize;
        let limit = r.limit.unwrap_or(10) as usize;
        let result = scored
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|(score, p)| q::ScoredPoint {
                id: Some(p.id.clone()),
                payload: if with_payload {
                    p.payload.clone()
                } else {
                    HashMap::new()
                },
                score,
                version: 0,
                vectors: with_vectors.then(|| vectors_output(&p.vector)),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(q::QueryResponse {
            result,
            time: 0.0,
            usage: None,
        }))
    }

    async fn update_vectors(
        &self,
        _: Request<q::UpdatePointVectors>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("update_vectors")
    }
    async fn delete_vectors(
        &self,
        _: Request<q::DeletePointVectors>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("delete_vectors")
    }
    async fn set_payload(
        &self,
        _: Request<q::SetPayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("set_payload")
    }
    async fn overwrite_payload(
        &self,
        _: Request<q::SetPayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("overwrite_payload")
    }
    async fn delete_payload(
        &self,
        _: Request<q::DeletePayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("delete_payload")
    }
    async fn clear_payload(
        &self,
        _: Request<q::ClearPayloadPoints>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("clear_payload")
    }
    async fn create_field_index(
        &self,
        _: Request<q::CreateFieldIndexCollection>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("create_field_index")
    }
    async fn delete_field_index(
        &self,
        _: Request<q::DeleteFieldIndexCollection>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("delete_field_index")
    }
    async fn create_vector_name(
        &self,
        _: Request<q::CreateVectorNameRequest>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("create_vector_name")
    }
    async fn delete_vector_name(
        &self,
        _: Request<q::DeleteVectorNameRequest>,
    ) -> Result<Response<q::PointsOperationResponse>, Status> {
        unused("delete_vector_name")
    }
    async fn search(
        &self,
        _: Request<q::SearchPoints>,
    ) -> Result<Response<q::SearchResponse>, Status> {
        unused("search")
    }
    async fn search_batch(
        &self,
        _: Request<q::SearchBatchPoints>,
    ) -> Result<Response<q::SearchBatchResponse>, Status> {
        unused("search_batch")
    }
    async fn search_groups(
        &self,
        _: Request<q::SearchPointGroups>,
    ) -> Result<Response<q::SearchGroupsResponse>, Status> {
        unused("search_groups")
    }
    async fn scroll(
        &self,
        _: Request<q::ScrollPoints>,
    ) -> Result<Response<q::ScrollResponse>, Status> {
        unused("scroll")
    }
    async fn recommend(
        &self,
        _: Request<q::RecommendPoints>,
    ) -> Result<Response<q::RecommendResponse>, Status> {
        unused("recommend")
    }
    async fn recommend_batch(
        &self,
        _: Request<q::RecommendBatchPoints>,
    ) -> Result<Response<q::RecommendBatchResponse>, Status> {
        unused("recommend_batch")
    }
    async fn recommend_groups(
        &self,
        _: Request<q::RecommendPointGroups>,
    ) -> Result<Response<q::RecommendGroupsResponse>, Status> {
        unused("recommend_groups")
    }
    async fn discover(
        &self,
        _: Request<q::DiscoverPoints>,
    ) -> Result<Response<q::DiscoverResponse>, Status> {
        unused("discover")
    }
    async fn discover_batch(
        &self,
        _: Request<q::DiscoverBatchPoints>,
    ) -> Result<Response<q::DiscoverBatchResponse>, Status> {
        unused("discover_batch")
    }
    async fn update_batch(
        &self,
        _: Request<q::UpdateBatchPoints>,
    ) -> Result<Response<q::UpdateBatchResponse>, Status> {
        unused("update_batch")
    }
    async fn query_batch(
        &self,
        _: Request<q::QueryBatchPoints>,
    ) -> Result<Response<q::QueryBatchResponse>, Status> {
        unused("query_batch")
    }
    async fn query_groups(
        &self,
        _: Request<q::QueryPointGroups>,
    ) -> Result<Response<q::QueryGroupsResponse>, Status> {
        unused("query_groups")
    }
    async fn facet(
        &self,
        _: Request<q::FacetCounts>,
    ) -> Result<Response<q::FacetResponse>, Status> {
        unused("facet")
    }
    async fn search_matrix_pairs(
        &self,
        _: Request<q::SearchMatrixPoints>,
    ) -> Result<Response<q::SearchMatrixPairsResponse>, Status> {
        unused("search_matrix_pairs")
    }
    async fn search_matrix_offsets(
        &self,
        _: Request<q::SearchMatrixPoints>,
    ) -> Result<Response<q::SearchMatrixOffsetsResponse>, Status> {
        unused("search_matrix_offsets")
    }
}
