//! The knowledge base over the API (`[knowledge]`, docs/knowledge.md): collections, their
//! documents, ingestion jobs on the task queue (with progress), and searches.

use std::path::{Component, PathBuf};

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use flowbot_channels::problem::Problem;
use flowbot_core::VectorError;
use flowbot_core::task::TaskClient;
use flowbot_core::vector::{Filter, check_collection_name};
use flowbot_llm::knowledge::{
    DocKind, IngestJob, JobState, Knowledge, KnowledgeError, Passage, SearchOptions, Source,
    docs_namespace, enqueue_ingest,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{AppState, ProblemDoc, path};
use crate::knowledge::KnowledgeBase;

/// Most sources in one ingestion request.
const MAX_SOURCES: usize = 1_000;

/// The knowledge base, or 409 when none is configured.
fn base(s: &AppState) -> Result<&KnowledgeBase, Problem> {
    s.knowledge.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "this server has no knowledge base: set [knowledge] embedder (docs/knowledge.md)",
        )
    })
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(vector_err)`
fn vector_err(e: VectorError) -> Problem {
    match e {
        VectorError::UnknownCollection(_) => Problem::not_found(e.to_string()),
        VectorError::Invalid(_) | VectorError::DimensionMismatch { .. } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        VectorError::Conflict(_) => Problem::new(StatusCode::CONFLICT, e.to_string()),
        VectorError::Store(s) => Problem::from_store(&s),
        other => Problem::unavailable(other.to_string()),
    }
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(kb_err)`
fn kb_err(e: KnowledgeError) -> Problem {
    match e {
        KnowledgeError::Vectors { error, .. } => vector_err(error),
        e if e.is_transient() => Problem::unavailable(e.to_string()),
        e => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()),
    }
}

fn collection(p: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    let name = path(p)?;
    check_collection_name(&name).map_err(|e| Problem::bad_request(e.to_string()))?;
    Ok(name)
}

/// The body of `POST /api/v1/kb/collections`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct NewCollection {
    /// Letters, digits, `-`, `_` and `.`.
    name: String,
}

/// The collections, with their chunk counts.
#[utoipa::path(get, path = "/api/v1/kb/collections", tag = "knowledge",
    responses((status = 200, body = Object),
        (status = 409, body = ProblemDoc, description = "no knowledge base is configured")))]
pub(super) async fn list_collections(State(s): State<AppState>) -> Result<Json<Value>, Problem> {
    let kb = base(&s)?;
    let items = kb
        .knowledge
        .vectors()
        .collections()
        .await
        .map_err(vector_err)?;
    Ok(Json(json!({ "items": items })))
}

/// Create a collection for the embedder's vectors (doing nothing when it exists).
#[utoipa::path(post, path = "/api/v1/kb/collections", tag = "knowledge", request_body = NewCollection,
    responses((status = 201, body = Object), (status = 400, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "no knowledge base, or the collection holds vectors of another dimension"),
        (status = 503, body = ProblemDoc, description = "the embedder could not be reached")))]
pub(super) async fn create_collection(
    State(s): State<AppState>,
    body: Result<Json<NewCollection>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let kb = base(&s)?;
    let Json(n) = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    check_collection_name(&n.name).map_err(|e| Problem::bad_request(e.to_string()))?;
    let spec = kb
        .knowledge
        .ensure_collection(&n.name)
        .await
        .map_err(kb_err)?;
    Ok((StatusCode::CREATED, Json(json!(spec))))
}

/// A collection and its documents.
#[utoipa::path(get, path = "/api/v1/kb/collections/{name}", tag = "knowledge",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub(super) async fn get_collection(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, Problem> {
    let name = collection(p)?;
    let kb = base(&s)?;
    let info = kb
        .knowledge
        .vectors()
        .collection(&name)
        .await
        .map_err(vector_err)?
        .ok_or_else(|| Problem::not_found(format!("no collection '{name}'")))?;
    let documents = kb.knowledge.documents(&name).await.map_err(kb_err)?;
    Ok(Json(json!({ "collection": info, "documents": documents })))
}

/// Delete a collection, its chunks and its document records.
#[utoipa::path(delete, path = "/api/v1/kb/collections/{name}", tag = "knowledge",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")),
    responses((status = 204), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub(super) async fn delete_collection(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let name = collection(p)?;
    let kb = base(&s)?;
    let existed = kb
        .knowledge
        .vectors()
        .delete_collection(&name)
        .await
        .map_err(vector_err)?;
    let namespace = docs_namespace(&name);
    for (key, _) in s
        .store
        .kv_list(&namespace)
        .await
        .map_err(|e| Problem::from_store(&e))?
    {
        s.store
            .kv_delete(&namespace, &key)
            .await
            .map_err(|e| Problem::from_store(&e))?;
    }
    if existed {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no collection '{name}'")))
    }
}

/// Which document to remove.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct SourceQuery {
    /// The document's source, as listed.
    source: String,
}

/// Remove a document and its chunks.
#[utoipa::path(delete, path = "/api/v1/kb/collections/{name}/documents", tag = "knowledge",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$"), SourceQuery),
    responses((status = 204), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "no knowledge base is configured")))]
pub(super) async fn delete_document(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<SourceQuery>, QueryRejection>,
) -> Result<StatusCode, Problem> {
    let name = collection(p)?;
    let Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    let kb = base(&s)?;
    if kb
        .knowledge
        .remove(&name, &q.source)
        .await
        .map_err(kb_err)?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!(
            "collection '{name}' has no document '{}'",
            q.source
        )))
    }
}

/// One source of an ingestion request.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(untagged, deny_unknown_fields)]
pub(super) enum SourceBody {
    /// A file or folder under `[knowledge] root`, relative to it.
    Path {
        /// The relative path.
        path: String,
    },
    /// A web page or file, fetched through the outbound network guard (`[network] allow`).
    Url {
        /// `http://` or `https://`.
        url: String,
    },
    /// A document given inline.
    Inline {
        /// Its name (shown in citations).
        source: String,
        /// `markdown`, `html` or `text`.
        #[schema(value_type = String)]
        kind: DocKind,
        /// Its content.
        text: String,
    },
}

/// The body of `POST /api/v1/kb/collections/{name}/documents`.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct IngestBody {
    /// What to read.
    sources: Vec<SourceBody>,
    /// Also remove the collection's documents that the given folders no longer hold.
    #[serde(default)]
    sync: bool,
}

/// A path under the API's root folder: relative, without `..`.
fn under_root(kb: &KnowledgeBase, relative: &str) -> Result<PathBuf, Problem> {
    let root = kb.knowledge.options().root.clone().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "files cannot be ingested through the API: set [knowledge] root to the folder they lie in (inline documents need no root)",
        )
    })?;
    let rel = std::path::Path::new(relative);
    let plain = !relative.is_empty()
        && rel
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !plain {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("path '{relative}': give a path relative to [knowledge] root, without '..'"),
        ));
    }
    Ok(root.join(rel))
}

/// Ingest documents as a job on the task queue; answers the job, whose progress
/// `GET /api/v1/kb/jobs/{id}` shows. Unchanged documents are skipped.
#[utoipa::path(post, path = "/api/v1/kb/collections/{name}/documents", tag = "knowledge",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")), request_body = IngestBody,
    responses((status = 202, body = Object), (status = 400, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "no knowledge base, or files without [knowledge] root"),
        (status = 422, body = ProblemDoc)))]
pub(super) async fn ingest(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<IngestBody>, JsonRejection>,
) -> Result<(StatusCode, Json<JobState>), Problem> {
    let name = collection(p)?;
    let kb = base(&s)?;
    let Json(body) = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    if body.sources.is_empty() || body.sources.len() > MAX_SOURCES {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("give 1 to {MAX_SOURCES} sources"),
        ));
    }
    let mut sources = Vec::with_capacity(body.sources.len());
    for source in body.sources {
        sources.push(match source {
            SourceBody::Path { path } => Source::path(under_root(kb, &path)?),
            SourceBody::Url { url } => {
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("'{url}' is not an http:// or https:// URL"),
                    ));
                }
                Source::url(url)
            }
            SourceBody::Inline { source, kind, text } => {
                if kind == DocKind::Pdf {
                    return Err(Problem::new(
                        StatusCode::UNPROCESSABLE_ENTITY,
                        format!("'{source}': a PDF cannot be given inline; put it under [knowledge] root and give its path"),
                    ));
                }
                Source::inline(source, kind, text)
            }
        });
    }
    kb.knowledge
        .ensure_collection(&name)
        .await
        .map_err(kb_err)?;
    let job = IngestJob::new(name, sources).sync(body.sync);
    let tasks = TaskClient::new(s.store.clone());
    let id = enqueue_ingest(&tasks, &kb.knowledge, &job)
        .await
        .map_err(kb_err)?;
    let state = kb
        .knowledge
        .job(&id)
        .await
        .map_err(kb_err)?
        .ok_or_else(|| Problem::unavailable(format!("job {id} was not recorded")))?;
    Ok((StatusCode::ACCEPTED, Json(state)))
}

/// The ingestion jobs, newest first.
#[utoipa::path(get, path = "/api/v1/kb/jobs", tag = "knowledge",
    responses((status = 200, body = Object), (status = 409, body = ProblemDoc)))]
pub(super) async fn list_jobs(State(s): State<AppState>) -> Result<Json<Value>, Problem> {
    let jobs = base(&s)?.knowledge.jobs().await.map_err(kb_err)?;
    Ok(Json(json!({ "items": jobs })))
}

/// How long to wait for a job.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WaitQuery {
    /// Seconds to wait, at most 60, for the job to be done or failed before answering with
    /// its state then (default 0: answer at once).
    #[param(minimum = 0, maximum = 60)]
    wait: Option<u64>,
}

/// Longest wait for a job, in seconds.
const MAX_WAIT_SECS: u64 = 60;

/// An ingestion job: its status, progress, and each document's outcome or error. With
/// `?wait=N` the answer waits up to N seconds for the job to be done or failed.
#[utoipa::path(get, path = "/api/v1/kb/jobs/{id}", tag = "knowledge",
    params(("id" = String, Path), WaitQuery),
    responses((status = 200, body = Object), (status = 400, body = ProblemDoc),
        (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub(super) async fn get_job(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<WaitQuery>, QueryRejection>,
) -> Result<Json<JobState>, Problem> {
    let id = path(p)?;
    let Query(q) = q.map_err(|e| Problem::bad_request(e.body_text()))?;
    let wait = q.wait.unwrap_or(0);
    if wait > MAX_WAIT_SECS {
        return Err(Problem::bad_request(format!(
            "wait = {wait}: at most {MAX_WAIT_SECS} seconds"
        )));
    }
    base(&s)?
        .knowledge
        .wait_job(&id, std::time::Duration::from_secs(wait))
        .await
        .map_err(kb_err)?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no ingestion job '{id}'")))
}

/// The body of a search.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct SearchBody {
    /// What to look for.
    query: String,
    /// Most passages (1 to 100; default: `[knowledge] limit`).
    limit: Option<usize>,
    /// Metadata conditions: `{"must": [{"key": "source", "value": "guide.md"}]}`.
    #[schema(value_type = Option<Object>)]
    filter: Option<Filter>,
    /// The least vector score of the best passage (default: `[knowledge] threshold`).
    threshold: Option<f32>,
    /// Fuse keyword search (default: `[knowledge] hybrid`).
    hybrid: Option<bool>,
}

/// Search a collection: passages best first, with their sources and scores.
#[utoipa::path(post, path = "/api/v1/kb/collections/{name}/search", tag = "knowledge",
    params(("name" = String, Path, pattern = r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")), request_body = SearchBody,
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc),
        (status = 409, body = ProblemDoc), (status = 422, body = ProblemDoc)))]
pub(super) async fn search(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<SearchBody>, JsonRejection>,
) -> Result<Json<Value>, Problem> {
    let name = collection(p)?;
    let kb = base(&s)?;
    let Json(body) = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let unprocessable = |m: String| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, m);
    if body.query.trim().is_empty() || body.query.len() > 2_000 {
        return Err(unprocessable(
            "query must be 1 to 2000 bytes of text".into(),
        ));
    }
    let mut options: SearchOptions = kb.search.clone();
    if let Some(limit) = body.limit {
        if !(1..=100).contains(&limit) {
            return Err(unprocessable(format!("limit {limit}: must be 1 to 100")));
        }
        options.limit = limit;
    }
    if let Some(filter) = body.filter {
        filter.check().map_err(|e| unprocessable(e.to_string()))?;
        options.filter = filter;
    }
    if let Some(t) = body.threshold {
        if !(t.is_finite() && (-1.0..=1.0).contains(&t)) {
            return Err(unprocessable(format!(
                "threshold {t}: must be from -1 to 1"
            )));
        }
        options.threshold = Some(t);
    }
    if let Some(h) = body.hybrid {
        options.hybrid = h;
    }
    let passages: Vec<Passage> = kb
        .knowledge
        .search(&name, &body.query, &options)
        .await
        .map_err(kb_err)?;
    Ok(Json(json!({
        "items": passages,
        "text": Knowledge::format_hits(&passages),
    })))
}
