//! The HTTP surface: health, readiness, metrics, the REST API under `/api/v1` (errors as
//! `application/problem+json`, cursor pagination) and its OpenAPI document, generated from
//! the handlers with utoipa.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowbot_channels::problem::Problem;
use flowbot_core::metrics::{HistogramSnapshot, LATENCY_BUCKETS};
use flowbot_core::task::{
    MisfirePolicy, ScheduleDef, TaskFilter, TaskId, TaskState, WorkerStats, register_schedule,
};
use flowbot_core::{PipelineStats, SessionKey, Store};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::ServerConfig;

pub mod auth;
mod channels;
mod document;
mod knowledge;
pub mod limits;
mod llm;
pub mod oidc;
mod secrets;
mod workflows;

pub use channels::{ChannelRoutes, channel_docs};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The store.
    pub store: Arc<dyn Store>,
    /// Pipeline counters.
    pub pipeline: Arc<PipelineStats>,
    /// Worker counters (zero without an embedded agent).
    pub workers: Arc<WorkerStats>,
    /// The rules in force, and the database's rules.
    pub rules: Arc<flowbot_rules::RuleLibrary>,
    /// The workflow engine.
    pub workflows: Arc<flowbot_core::workflow::Workflows>,
    /// The secrets stored through the API (`None`: no key is configured).
    pub secrets: Option<Arc<flowbot_core::secrets::SecretStore>>,
    /// The platform adapters served by this process (Telegram, Tailchat), for metrics.
    pub adapters: Vec<Arc<dyn flowbot_channels::AdapterStats>>,
    /// The language model calls of this process, when `[llm]` is configured.
    pub llm: Option<Arc<flowbot_llm::LlmMetrics>>,
    /// The assistant's prompt library (`None` without `[llm]` models: the API then manages
    /// the database's prompts alone).
    pub prompts: Option<Arc<flowbot_llm::prompt::SharedPrompts>>,
    /// The local model of `[gpu]`, for metrics.
    #[cfg(feature = "gpu")]
    pub gpu: Option<flowbot_gpu::Batcher>,
    /// Who may use the API ([`auth::guard`]).
    pub gate: Arc<auth::Gate>,
    /// The knowledge base of `[knowledge]`.
    pub knowledge: Option<crate::knowledge::KnowledgeBase>,
}

type ApiResult<T> = Result<Json<T>, Problem>;

/// A problem document (RFC 9457).
#[derive(Serialize, ToSchema)]
struct ProblemDoc {
    #[serde(rename = "type")]
    kind: String,
    title: String,
    status: u16,
    detail: String,
    /// Each problem found, when a request has several (e.g. every error of a workflow
    /// definition, with its node and field).
    #[schema(value_type = Option<Vec<Object>>)]
    errors: Vec<Value>,
}

/// A page of results with the cursor of the next page.
#[derive(Serialize, ToSchema)]
struct PageDoc {
    #[schema(value_type = Vec<Object>)]
    items: Vec<Value>,
    next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct Status {
    status: String,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct PageQuery {
    /// Cursor from the previous page's `next_cursor`.
    pub(crate) cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TaskQuery {
    /// `queued`, `running`, `done`, `dead` or `cancelled`.
    #[param(pattern = "^(queued|running|done|dead|cancelled)$")]
    state: Option<String>,
    /// Task kind.
    kind: Option<String>,
    /// Queue.
    queue: Option<String>,
    /// Cursor from the previous page.
    pub(crate) cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub(crate) limit: Option<u32>,
}

/// A schedule to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "nightly-report", "cron": "0 3 * * *", "timezone": "Europe/Paris", "kind": "report", "payload": {"to": "ops"}}))]
struct NewSchedule {
    /// Unique name.
    name: String,
    /// Cron expression, 5 fields or 6 with seconds first.
    cron: String,
    /// IANA time zone (default UTC).
    timezone: Option<String>,
    /// Task kind to enqueue.
    kind: String,
    /// Task payload, any JSON (default null).
    #[schema(value_type = Option<Value>)]
    payload: Option<Value>,
    /// Queue (default `default`).
    queue: Option<String>,
    /// `skip` (default) or `catch_up`.
    misfire: Option<String>,
}

fn limit(l: Option<u32>) -> Result<u32, Problem> {
    match l {
        None => Ok(50),
        Some(n) if (1..=1000).contains(&n) => Ok(n),
        Some(n) => Err(Problem::bad_request(format!(
            "limit must be between 1 and 1000, got {n}"
        ))),
    }
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, Problem> {
    q.map(|Query(q)| q)
        .map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))
}

fn path<T>(p: Result<Path<T>, PathRejection>) -> Result<T, Problem> {
    p.map(|Path(p)| p)
        .map_err(|e| Problem::bad_request(format!("invalid path: {}", e.body_text())))
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(store_err)`
fn store_err(e: flowbot_core::StoreError) -> Problem {
    Problem::from_store(&e)
}

fn page<T: Serialize>(p: flowbot_core::store::Page<T>) -> Result<Json<PageDoc>, Problem> {
    let items = p
        .items
        .iter()
        .map(serde_json::to_value)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(PageDoc {
        items,
        next_cursor: p.next_cursor,
    }))
}

/// Process is up.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, body = Status)))]
async fn healthz() -> Json<Status> {
    Json(Status {
        status: "ok".into(),
    })
}

/// Database reachable and migrated (stores migrate when they open).
#[utoipa::path(get, path = "/readyz", tag = "health", responses((status = 200, body = Status), (status = 503, body = ProblemDoc)))]
async fn readyz(State(s): State<AppState>) -> ApiResult<Status> {
    s.store.ping().await.map_err(store_err)?;
    Ok(Json(Status {
        status: "ready".into(),
    }))
}

fn histogram(out: &mut String, name: &str, help: &str, h: &HistogramSnapshot) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (bound, n) in LATENCY_BUCKETS.iter().zip(&h.cumulative) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}",
        h.count, h.sum_seconds, h.count
    );
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "health", responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(s): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let mut out = String::with_capacity(4096);
    for (name, help, counter) in [
        (
            "flowbot_messages_in_total",
            "Events received, per channel.",
            &s.pipeline.in_by_channel,
        ),
        (
            "flowbot_messages_out_total",
            "Messages delivered, per channel.",
            &s.pipeline.out_by_channel,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (channel, n) in counter.snapshot() {
            let _ = writeln!(out, "{name}{{channel=\"{}\"}} {n}", escape_label(&channel));
        }
    }
    let reloads = s.rules.reloads();
    let _ = writeln!(
        out,
        "# HELP flowbot_rules_reloads_total Rule changes (files or stored rules) put in force or rejected.\n# TYPE flowbot_rules_reloads_total counter\nflowbot_rules_reloads_total{{outcome=\"applied\"}} {}\nflowbot_rules_reloads_total{{outcome=\"rejected\"}} {}",
        reloads.applied, reloads.rejected
    );
    histogram(
        &mut out,
        "flowbot_pipeline_latency_seconds",
        "Time to handle one event.",
        &s.pipeline.latency.snapshot(),
    );
    let _ = writeln!(
        out,
        "# HELP flowbot_pipeline_errors_total Errors reported by the pipeline.\n# TYPE flowbot_pipeline_errors_total counter\nflowbot_pipeline_errors_total {}",
        s.pipeline.errors.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP flowbot_pipeline_failures_total Events whose handling failed, by stage.\n# TYPE flowbot_pipeline_failures_total counter"
    );
    for (stage, n) in s.pipeline.failures.snapshot() {
        let _ = writeln!(
            out,
            "flowbot_pipeline_failures_total{{stage=\"{}\"}} {n}",
            escape_label(&stage)
        );
    }
    let _ = writeln!(
        out,
        "# HELP flowbot_pipeline_failures_answered_total Failures answered to the sender with the bot's failure reply.\n# TYPE flowbot_pipeline_failures_answered_total counter\nflowbot_pipeline_failures_answered_total {}",
        s.pipeline.failures_answered.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP flowbot_channel_accepted_total Platform events stored for the pipeline, by channel.\n# TYPE flowbot_channel_accepted_total counter"
    );
    for a in &s.adapters {
        let _ = writeln!(
            out,
            "flowbot_channel_accepted_total{{channel=\"{}\"}} {}",
            escape_label(a.channel()),
            a.counters().accepted.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP flowbot_channel_ignored_total Platform updates ignored, by channel and reason.\n# TYPE flowbot_channel_ignored_total counter"
    );
    for a in &s.adapters {
        for (reason, n) in a.counters().ignored.snapshot() {
            let _ = writeln!(
                out,
                "flowbot_channel_ignored_total{{channel=\"{}\",reason=\"{}\"}} {n}",
                escape_label(a.channel()),
                escape_label(&reason)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP flowbot_channel_api_errors_total Failed platform API calls, by channel.\n# TYPE flowbot_channel_api_errors_total counter"
    );
    for a in &s.adapters {
        let _ = writeln!(
            out,
            "flowbot_channel_api_errors_total{{channel=\"{}\"}} {}",
            escape_label(a.channel()),
            a.counters().api_errors.load(Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP flowbot_tasks Tasks in the store, by state.\n# TYPE flowbot_tasks gauge"
    );
    match s.store.count_tasks().await {
        Ok(counts) => {
            for state in [
                TaskState::Queued,
                TaskState::Running,
                TaskState::Done,
                TaskState::Dead,
                TaskState::Cancelled,
            ] {
                let n = counts
                    .iter()
                    .find(|(s, _)| *s == state)
                    .map(|(_, n)| *n)
                    .unwrap_or(0);
                let _ = writeln!(out, "flowbot_tasks{{state=\"{}\"}} {n}", state.as_str());
            }
        }
        Err(e) => tracing::warn!(error = %e, "metrics: counting tasks failed"),
    }
    histogram(
        &mut out,
        "flowbot_task_start_delay_seconds",
        "Time from a task being due to its handler starting.",
        &s.workers.start_delay.snapshot(),
    );
    histogram(
        &mut out,
        "flowbot_task_run_seconds",
        "Task handler run time.",
        &s.workers.run_time.snapshot(),
    );
    let _ = writeln!(
        out,
        "# HELP flowbot_task_outcomes_total Task outcomes in this process.\n# TYPE flowbot_task_outcomes_total counter"
    );
    for (outcome, n) in [
        ("completed", s.workers.completed.load(Relaxed)),
        ("retried", s.workers.retried.load(Relaxed)),
        ("dead", s.workers.dead.load(Relaxed)),
        ("lease_lost", s.workers.lease_lost.load(Relaxed)),
    ] {
        let _ = writeln!(
            out,
            "flowbot_task_outcomes_total{{outcome=\"{outcome}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP flowbot_store_errors_total Store errors seen by workers.\n# TYPE flowbot_store_errors_total counter\nflowbot_store_errors_total {}",
        s.workers.store_errors.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP flowbot_tasks_recovered_total Tasks this process returned to the queue for workers that were gone (ended processes, expired leases).\n# TYPE flowbot_tasks_recovered_total counter\nflowbot_tasks_recovered_total {}",
        s.workers.recovered.load(Relaxed)
    );
    if let Some(llm) = &s.llm {
        llm.snapshot().render_prometheus(&mut out);
    }
    #[cfg(feature = "gpu")]
    if let Some(gpu) = &s.gpu {
        gpu.metrics()
            .snapshot()
            .render_prometheus(gpu.name(), &mut out);
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    )
        .into_response()
}

/// Conversations, most recently active first.
#[utoipa::path(get, path = "/api/v1/conversations", tag = "conversations", params(PageQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
async fn list_conversations(
    State(s): State<AppState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let q = query(q)?;
    page(
        s.store
            .list_conversations(q.cursor.as_deref(), limit(q.limit)?)
            .await
            .map_err(store_err)?,
    )
}

/// Messages of a conversation, oldest first.
#[utoipa::path(get, path = "/api/v1/conversations/{channel}/{conversation}/messages", tag = "conversations",
    params(("channel" = String, Path), ("conversation" = String, Path), PageQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
async fn list_messages(
    State(s): State<AppState>,
    p: Result<Path<(String, String)>, PathRejection>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let (channel, conversation) = path(p)?;
    let q = query(q)?;
    let p = s
        .store
        .list_messages(
            &channel.into(),
            &conversation.into(),
            q.cursor.as_deref(),
            limit(q.limit)?,
        )
        .await
        .map_err(store_err)?;
    page(p)
}

/// One user's session in a conversation.
#[utoipa::path(get, path = "/api/v1/sessions/{channel}/{conversation}/{user}", tag = "sessions",
    params(("channel" = String, Path), ("conversation" = String, Path), ("user" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
async fn get_session(
    State(s): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> ApiResult<Value> {
    let (channel, conversation, user) = path(p)?;
    let key = SessionKey {
        channel: channel.into(),
        conversation: conversation.into(),
        user: user.into(),
    };
    let session = s
        .store
        .load_session(&key)
        .await
        .map_err(store_err)?
        .ok_or_else(|| Problem::not_found("no such session"))?;
    Ok(Json(json!(session)))
}

/// Delete a session (the user starts afresh).
#[utoipa::path(delete, path = "/api/v1/sessions/{channel}/{conversation}/{user}", tag = "sessions",
    params(("channel" = String, Path), ("conversation" = String, Path), ("user" = String, Path)),
    responses((status = 204), (status = 404, body = ProblemDoc)))]
async fn delete_session(
    State(s): State<AppState>,
    p: Result<Path<(String, String, String)>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let (channel, conversation, user) = path(p)?;
    let key = SessionKey {
        channel: channel.into(),
        conversation: conversation.into(),
        user: user.into(),
    };
    match s.store.delete_session(&key).await.map_err(store_err)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Problem::not_found("no such session")),
    }
}

/// Tasks, newest first, filtered by state, kind and queue.
#[utoipa::path(get, path = "/api/v1/tasks", tag = "tasks", params(TaskQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
async fn list_tasks(
    State(s): State<AppState>,
    q: Result<Query<TaskQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let q = query(q)?;
    let state = q
        .state
        .as_deref()
        .map(|st| {
            TaskState::parse(st).ok_or_else(|| {
                Problem::bad_request(format!(
                    "unknown state '{st}'; expected queued, running, done, dead or cancelled"
                ))
            })
        })
        .transpose()?;
    let filter = TaskFilter {
        state,
        kind: q.kind,
        queue: q.queue,
        cursor: q.cursor,
        limit: limit(q.limit)?,
    };
    page(s.store.list_tasks(&filter).await.map_err(store_err)?)
}

fn task_id(p: Result<Path<String>, PathRejection>) -> Result<TaskId, Problem> {
    let raw = path(p)?;
    raw.parse::<i64>()
        .map(TaskId)
        .map_err(|_| Problem::bad_request(format!("task id must be an integer, got '{raw}'")))
}

/// One task.
#[utoipa::path(get, path = "/api/v1/tasks/{id}", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
async fn get_task(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let id = task_id(p)?;
    let t = s
        .store
        .get_task(id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| Problem::not_found(format!("no task {id}")))?;
    Ok(Json(json!(t)))
}

/// Cancel a queued task.
#[utoipa::path(post, path = "/api/v1/tasks/{id}/cancel", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = Status), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
async fn cancel_task(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Status> {
    let id = task_id(p)?;
    if s.store.cancel_task(id).await.map_err(store_err)? {
        return Ok(Json(Status {
            status: "cancelled".into(),
        }));
    }
    match s.store.get_task(id).await.map_err(store_err)? {
        None => Err(Problem::not_found(format!("no task {id}"))),
        Some(t) => Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "task {id} is {}, only queued tasks can be cancelled",
                t.state.as_str()
            ),
        )),
    }
}

/// Dead-lettered tasks with their error history, newest first.
#[utoipa::path(get, path = "/api/v1/dead-letters", tag = "tasks", params(PageQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
async fn list_dead_letters(
    State(s): State<AppState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let q = query(q)?;
    page(
        s.store
            .dead_letters(q.cursor.as_deref(), limit(q.limit)?)
            .await
            .map_err(store_err)?,
    )
}

/// Put a dead-lettered task back in the queue.
#[utoipa::path(post, path = "/api/v1/dead-letters/{id}/requeue", tag = "tasks", params(("id" = i64, Path)),
    responses((status = 200, body = Status), (status = 404, body = ProblemDoc)))]
async fn requeue(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Status> {
    let id = task_id(p)?;
    match s.store.requeue_dead(id).await.map_err(store_err)? {
        true => Ok(Json(Status {
            status: "queued".into(),
        })),
        false => Err(Problem::not_found(format!(
            "task {id} is not dead-lettered"
        ))),
    }
}

/// Schedules, by name.
#[utoipa::path(get, path = "/api/v1/schedules", tag = "schedules", params(PageQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
async fn list_schedules(
    State(s): State<AppState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let q = query(q)?;
    page(
        s.store
            .list_schedules(q.cursor.as_deref(), limit(q.limit)?)
            .await
            .map_err(store_err)?,
    )
}

/// Create or replace a schedule.
#[utoipa::path(post, path = "/api/v1/schedules", tag = "schedules", request_body = NewSchedule,
    responses((status = 201, body = Object), (status = 400, body = ProblemDoc), (status = 415, body = ProblemDoc),
        (status = 422, body = ProblemDoc)))]
async fn create_schedule(
    State(s): State<AppState>,
    body: Result<Json<NewSchedule>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let Json(n) = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    let misfire = match n.misfire.as_deref() {
        None => MisfirePolicy::Skip,
        Some(m) => MisfirePolicy::parse(m).ok_or_else(|| {
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("misfire must be 'skip' or 'catch_up', got '{m}'"),
            )
        })?,
    };
    if n.kind.is_empty() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "kind must not be empty",
        ));
    }
    let mut def = ScheduleDef::new(n.name, n.cron, n.kind, &n.payload.unwrap_or(Value::Null))
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?
        .misfire(misfire);
    if let Some(tz) = n.timezone {
        def = def.timezone(tz);
    }
    if let Some(q) = n.queue {
        def = def.queue(q);
    }
    register_schedule(s.store.as_ref(), &def)
        .await
        .map_err(|e| match e {
            flowbot_core::Error::Store(e) => store_err(e),
            other => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
        })?;
    let state = s.store.get_schedule(&def.name).await.map_err(store_err)?;
    Ok((StatusCode::CREATED, Json(json!(state))))
}

/// One schedule.
#[utoipa::path(get, path = "/api/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
async fn get_schedule(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let st = s
        .store
        .get_schedule(&name)
        .await
        .map_err(store_err)?
        .ok_or_else(|| Problem::not_found(format!("no schedule '{name}'")))?;
    Ok(Json(json!(st)))
}

async fn set_paused(s: &AppState, name: &str, paused: bool) -> ApiResult<Status> {
    let st = s
        .store
        .get_schedule(name)
        .await
        .map_err(store_err)?
        .ok_or_else(|| Problem::not_found(format!("no schedule '{name}'")))?;
    let spec = st
        .def
        .spec()
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let next = spec
        .next_after(flowbot_core::clock::now())
        .map_err(|e| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    s.store
        .set_schedule_paused(name, paused, next)
        .await
        .map_err(store_err)?;
    Ok(Json(Status {
        status: if paused { "paused" } else { "active" }.into(),
    }))
}

/// Pause a schedule.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/pause", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, body = Status), (status = 404, body = ProblemDoc)))]
async fn pause_schedule(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Status> {
    set_paused(&s, &path(p)?, true).await
}

/// Resume a paused schedule from its next fire time.
#[utoipa::path(post, path = "/api/v1/schedules/{name}/resume", tag = "schedules", params(("name" = String, Path)),
    responses((status = 200, body = Status), (status = 404, body = ProblemDoc)))]
async fn resume_schedule(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Status> {
    set_paused(&s, &path(p)?, false).await
}

/// Delete a schedule.
#[utoipa::path(delete, path = "/api/v1/schedules/{name}", tag = "schedules", params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ProblemDoc)))]
async fn delete_schedule(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let name = path(p)?;
    match s.store.delete_schedule(&name).await.map_err(store_err)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Problem::not_found(format!("no schedule '{name}'"))),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(title = "FlowBot", description = "FlowBot server API. Errors are application/problem+json."),
    tags(
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "conversations", description = "Conversations and their messages"),
        (name = "sessions", description = "Per-user conversation state"),
        (name = "tasks", description = "The durable task queue and its dead letters"),
        (name = "schedules", description = "Cron schedules"),
        (name = "rules", description = "Rules in force; rules stored through the API"),
        (name = "workflows", description = "Workflow definitions, runs, analytics and trigger hooks"),
        (name = "channels", description = "Chat channels' HTTP endpoints"),
        (name = "llm", description = "The assistant's runs (turns, tool calls, approvals, usage) and its prompt library (versions, activation, rollback, diffs, A/B splits, statistics)"),
        (name = "auth", description = "API keys, the caller's identity, the audit log"),
        (name = "secrets", description = "Secrets stored encrypted for workflows: written and deleted, listed by name, never read back"),
        (name = "knowledge", description = "The knowledge base: collections, documents, ingestion jobs with progress, and hybrid searches"),
    ),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

/// The API's credential: `Authorization: Bearer <API key or JWT>`.
struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

fn rules_err(e: flowbot_rules::Error) -> Problem {
    use flowbot_rules::Error as E;
    match e {
        E::NotFound(m) => Problem::not_found(m),
        E::Conflict(m) => Problem::new(StatusCode::CONFLICT, m),
        E::Store(s) => Problem::from_store(&s),
        E::Io { .. } => Problem::unavailable(e.to_string()),
        E::Classifier(ref c) if !c.is_permanent() => Problem::unavailable(e.to_string()),
        other => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
    }
}

fn rule_body(
    body: Result<Json<Value>, JsonRejection>,
) -> Result<flowbot_rules::spec::RuleSpec, Problem> {
    let Json(v) = body.map_err(|e| Problem::new(e.status(), e.body_text()))?;
    flowbot_rules::rule_from_json(v).map_err(rules_err)
}

/// Every rule in force (from files and stored through the API), highest priority first.
#[utoipa::path(get, path = "/api/v1/rules", tag = "rules",
    responses((status = 200, body = Object, description = "{\"items\": [{\"rule\": …, \"source\": \"file\"|\"api\", \"location\": \"path:line\"}]}")))]
async fn list_rules(State(s): State<AppState>) -> Json<Value> {
    Json(json!({ "items": s.rules.list() }))
}

/// Store a new rule (the format of docs/rules.md, as JSON). It takes effect at once, here and
/// on every process sharing the database.
#[utoipa::path(post, path = "/api/v1/rules", tag = "rules",
    request_body(content = Object, example = json!({"name": "example-greeting", "when": {"command": "hello"}, "then": [{"reply": "Hello!"}]})),
    responses((status = 201, body = Object), (status = 400, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "a rule of that name exists"),
        (status = 415, body = ProblemDoc),
        (status = 422, body = ProblemDoc, description = "the rule does not compile")))]
async fn create_rule(
    State(s): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let rule = rule_body(body)?;
    let name = rule.name.clone();
    s.rules.create(rule).await.map_err(rules_err)?;
    Ok((StatusCode::CREATED, Json(json!(s.rules.get(&name)))))
}

/// Check a rule against every other rule without storing it.
#[utoipa::path(post, path = "/api/v1/rules/validate", tag = "rules",
    request_body(content = Object, example = json!({"name": "example-greeting", "when": {"command": "hello"}, "then": [{"reply": "Hello!"}]})),
    responses((status = 200, body = Status), (status = 400, body = ProblemDoc), (status = 415, body = ProblemDoc),
        (status = 422, body = ProblemDoc)))]
async fn validate_rule(
    State(s): State<AppState>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Status> {
    let rule = rule_body(body)?;
    s.rules.validate(&rule).await.map_err(rules_err)?;
    Ok(Json(Status {
        status: "valid".into(),
    }))
}

fn rule_name(p: Result<Path<String>, PathRejection>) -> Result<String, Problem> {
    p.map(|Path(n)| n)
        .map_err(|e| Problem::bad_request(e.body_text()))
}

/// One rule in force.
#[utoipa::path(get, path = "/api/v1/rules/{name}", tag = "rules", params(("name" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
async fn get_rule(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let name = rule_name(p)?;
    s.rules
        .get(&name)
        .map(|e| Json(json!(e)))
        .ok_or_else(|| Problem::not_found(format!("no rule named '{name}'")))
}

/// Replace a stored rule (rules from files are edited in their files).
#[utoipa::path(put, path = "/api/v1/rules/{name}", tag = "rules", params(("name" = String, Path)),
    request_body(content = Object, example = json!({"name": "example-greeting", "when": {"command": "hello"}, "then": [{"reply": "Hello!"}]})),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "the rule is defined in a file"),
        (status = 415, body = ProblemDoc), (status = 422, body = ProblemDoc)))]
async fn update_rule(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<Value>, JsonRejection>,
) -> ApiResult<Value> {
    let name = rule_name(p)?;
    let rule = rule_body(body)?;
    s.rules.update(&name, rule).await.map_err(rules_err)?;
    Ok(Json(json!(s.rules.get(&name))))
}

/// Delete a stored rule.
#[utoipa::path(delete, path = "/api/v1/rules/{name}", tag = "rules", params(("name" = String, Path)),
    responses((status = 200, body = Status), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
async fn delete_rule(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Status> {
    let name = rule_name(p)?;
    s.rules.delete(&name).await.map_err(rules_err)?;
    Ok(Json(Status {
        status: "deleted".into(),
    }))
}

/// The API routes and their OpenAPI document (channel routes are added by the caller and
/// documented through [`channel_docs`]).
pub fn api(state: AppState) -> (axum::Router, utoipa::openapi::OpenApi) {
    let gate = state.gate.clone();
    let (router, mut doc) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(list_conversations))
        .routes(routes!(list_messages))
        .routes(routes!(get_session, delete_session))
        .routes(routes!(list_tasks))
        .routes(routes!(get_task))
        .routes(routes!(cancel_task))
        .routes(routes!(list_dead_letters))
        .routes(routes!(requeue))
        .routes(routes!(list_schedules, create_schedule))
        .routes(routes!(get_schedule, delete_schedule))
        .routes(routes!(pause_schedule))
        .routes(routes!(resume_schedule))
        .routes(routes!(list_rules, create_rule))
        .routes(routes!(validate_rule))
        .routes(routes!(get_rule, update_rule, delete_rule))
        .routes(routes!(
            workflows::list_workflows,
            workflows::apply_workflow
        ))
        .routes(routes!(workflows::validate_workflow))
        .routes(routes!(workflows::get_workflow, workflows::delete_workflow))
        .routes(routes!(workflows::start_run))
        .routes(routes!(workflows::analytics))
        .routes(routes!(workflows::list_runs))
        .routes(routes!(workflows::get_run))
        .routes(routes!(workflows::cancel_run))
        .routes(routes!(workflows::retry_run))
        .routes(routes!(workflows::trigger_hook))
        .routes(routes!(llm::list_runs))
        .routes(routes!(llm::get_run))
        .routes(routes!(llm::usage))
        .routes(routes!(llm::run_feedback))
        .routes(routes!(llm::list_prompts))
        .routes(routes!(llm::get_prompt, llm::put_prompt))
        .routes(routes!(llm::activate_prompt))
        .routes(routes!(llm::rollback_prompt))
        .routes(routes!(llm::diff_prompt))
        .routes(routes!(llm::split_prompt))
        .routes(routes!(llm::prompt_stats))
        .routes(routes!(auth::whoami))
        .routes(routes!(auth::list_keys, auth::create_key))
        .routes(routes!(auth::get_key, auth::revoke_key))
        .routes(routes!(auth::list_audit))
        .routes(routes!(secrets::list_secrets))
        .routes(routes!(secrets::put_secret, secrets::delete_secret))
        .routes(routes!(
            knowledge::list_collections,
            knowledge::create_collection
        ))
        .routes(routes!(
            knowledge::get_collection,
            knowledge::delete_collection
        ))
        .routes(routes!(knowledge::ingest, knowledge::delete_document))
        .routes(routes!(knowledge::search))
        .routes(routes!(knowledge::list_jobs))
        .routes(routes!(knowledge::get_job))
        .with_state(state)
        .split_for_parts();
    document::complete(&mut doc.paths.paths);
    let router = router.route_layer(axum::middleware::from_fn_with_state(gate, auth::guard));
    (router, doc)
}

/// Problem answers for unknown routes and wrong methods.
pub async fn not_found(uri: axum::http::Uri) -> Problem {
    Problem::not_found(format!("no route for {}", uri.path()))
}

/// 405 with a problem body.
pub async fn method_not_allowed(method: Method, uri: axum::http::Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// On the public address of a server whose admin API has its own (`server.admin_listen`):
/// `/api/v1` (but its OpenAPI document) and `/metrics` are not found here.
pub async fn public_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let path = req.uri().path();
    if (path.starts_with("/api/") && path != "/api/v1/openapi.json") || path == "/metrics" {
        return Problem::not_found(format!(
            "no route for {path} on this address: the admin API is served on its own"
        ))
        .into_response();
    }
    next.run(req).await
}

/// Strict-Transport-Security on every answer of a server on TLS.
async fn hsts(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mut res = next.run(req).await;
    res.headers_mut().insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000"),
    );
    res
}

/// Apply body limit, timeout and CORS settings, and HSTS on TLS.
pub fn layers(router: axum::Router, cfg: &ServerConfig) -> axum::Router {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let mut router = router
        .layer(axum::extract::DefaultBodyLimit::max(cfg.body_limit_bytes))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(cfg.request_timeout_secs),
        ));
    if !cfg.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = cfg
            .cors_origins
            .iter()
            .filter_map(|o| o.parse().ok())
            .collect();
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
                .allow_headers([header::CONTENT_TYPE, header::AUTHORIZATION]),
        );
    }
    if cfg.tls.as_ref().is_some_and(|t| t.hsts) {
        router = router.layer(axum::middleware::from_fn(hsts));
    }
    router
}
