//! Workflows over HTTP: apply, list, get and delete definitions, start runs, list and inspect
//! runs with their node timeline, cancel and retry, analytics, and trigger hooks
//! (`POST /hooks/trigger/{path}` with a bearer token or an HMAC signature).

use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use chrono::{DateTime, Utc};
use flowbot_channels::problem::Problem;
use flowbot_core::workflow::{Format, RunFilter, RunStatus, WorkflowError, WorkflowSpec};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{ApiResult, AppState, PageDoc, ProblemDoc, limit, page, path, query};

/// How far a trigger signature's timestamp may be from now.
const REPLAY_WINDOW: Duration = Duration::from_secs(300);

pub(super) fn workflow_err(e: WorkflowError) -> Problem {
    match e {
        WorkflowError::Invalid(problems) => {
            let errors = problems.iter().map(|p| json!(p)).collect();
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                WorkflowError::Invalid(problems).to_string(),
            )
            .with_errors(errors)
        }
        WorkflowError::Parse(_) | WorkflowError::Inputs { .. } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        WorkflowError::NotFound(m) => Problem::not_found(m),
        WorkflowError::State(m) => Problem::new(StatusCode::CONFLICT, m),
        WorkflowError::Store(s) => Problem::from_store(&s),
        other => Problem::unavailable(other.to_string()),
    }
}

/// A request body, or the problem that kept it from being read (a body over the size limit:
/// 413 as a problem document, as every refusal is).
fn body_of(body: Result<Bytes, BytesRejection>) -> Result<Bytes, Problem> {
    body.map_err(|e| Problem::new(e.status(), e.body_text()))
}

/// A definition from a request body: YAML when the content type says so, JSON otherwise.
fn definition(headers: &HeaderMap, body: &[u8]) -> Result<WorkflowSpec, Problem> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = if content_type.contains("yaml") {
        Format::Yaml
    } else if content_type.is_empty() || content_type.contains("json") {
        Format::Json
    } else {
        return Err(Problem::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type '{content_type}' is not supported; send application/json or application/yaml"
            ),
        ));
    };
    let text = std::str::from_utf8(body)
        .map_err(|_| Problem::bad_request("the body is not UTF-8 text"))?;
    WorkflowSpec::parse(text, format).map_err(|e| workflow_err(WorkflowError::Parse(e.message)))
}

/// Apply a workflow definition (JSON, or YAML with `Content-Type: application/yaml`): a new
/// version when it changed. Cron triggers become schedules.
#[utoipa::path(post, path = "/api/v1/workflows", tag = "workflows",
    request_body(content = Object, example = json!({"name": "greet", "inputs": {"who": {"type": "string", "required": true}}, "nodes": [{"id": "hello", "action": "log", "with": {"message": "hello {{ inputs.who }}"}}]})),
    responses((status = 201, body = Object, description = "{\"name\", \"version\", \"created\": true}"),
        (status = 200, body = Object, description = "unchanged: the latest version"),
        (status = 415, body = ProblemDoc),
        (status = 422, body = ProblemDoc, description = "invalid: `errors` lists each problem with its node and field")))]
pub(super) async fn apply_workflow(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let spec = definition(&headers, &body_of(body)?)?;
    let applied = s.workflows.apply(spec).await.map_err(workflow_err)?;
    let status = if applied.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!(applied))))
}

/// Check a definition without storing it.
#[utoipa::path(post, path = "/api/v1/workflows/validate", tag = "workflows",
    request_body(content = Object, example = json!({"name": "greet", "inputs": {"who": {"type": "string", "required": true}}, "nodes": [{"id": "hello", "action": "log", "with": {"message": "hello {{ inputs.who }}"}}]})),
    responses((status = 200, body = Object), (status = 422, body = ProblemDoc)))]
pub(super) async fn validate_workflow(
    State(s): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult<Value> {
    let spec = definition(&headers, &body_of(body)?)?;
    s.workflows.check(spec).await.map_err(workflow_err)?;
    Ok(Json(json!({"status": "valid"})))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Cursor from the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Workflows (their latest versions), by name.
#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows", params(ListQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
pub(super) async fn list_workflows(
    State(s): State<AppState>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let q = query(q)?;
    let p = s
        .workflows
        .list(q.cursor.as_deref(), limit(q.limit)?)
        .await
        .map_err(workflow_err)?;
    page(p)
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct VersionQuery {
    /// A version (default: the latest).
    version: Option<u32>,
}

/// One workflow version with its definition.
#[utoipa::path(get, path = "/api/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path), VersionQuery),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
pub(super) async fn get_workflow(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<VersionQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let q = query(q)?;
    match s
        .workflows
        .get(&name, q.version)
        .await
        .map_err(workflow_err)?
    {
        Some(w) => Ok(Json(json!(w))),
        None => Err(Problem::not_found(match q.version {
            Some(v) => format!("workflow '{name}' has no version {v}"),
            None => format!("there is no workflow '{name}'"),
        })),
    }
}

/// Delete a workflow and its schedules; its runs stay.
#[utoipa::path(delete, path = "/api/v1/workflows/{name}", tag = "workflows",
    params(("name" = String, Path)),
    responses((status = 204), (status = 404, body = ProblemDoc)))]
pub(super) async fn delete_workflow(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let name = path(p)?;
    match s.workflows.delete(&name).await.map_err(workflow_err)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Problem::not_found(format!("there is no workflow '{name}'"))),
    }
}

/// Inputs of a run.
fn inputs_of(body: &[u8]) -> Result<Value, Problem> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Value::Null);
    }
    serde_json::from_slice(body)
        .map_err(|e| Problem::bad_request(format!("the body is not valid JSON: {e}")))
}

/// A run to start.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"inputs": {"who": "Ada"}}))]
#[allow(dead_code)] // documents the body that `start_run` reads
pub(super) struct StartRun {
    /// The workflow's inputs.
    #[schema(value_type = Option<Object>)]
    inputs: Option<Value>,
}

/// Start a run of the latest version. Body: `{"inputs": {...}}` (or nothing).
#[utoipa::path(post, path = "/api/v1/workflows/{name}/runs", tag = "workflows",
    params(("name" = String, Path)), request_body(content = Option<StartRun>),
    responses((status = 202, body = Object, description = "the run, running or queued"),
        (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 422, body = ProblemDoc, description = "inputs do not fit the workflow")))]
pub(super) async fn start_run(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let name = path(p)?;
    let inputs = match inputs_of(&body_of(body)?)? {
        Value::Null => Value::Null,
        Value::Object(mut m) => {
            if let Some(k) = m.keys().find(|k| *k != "inputs") {
                return Err(Problem::bad_request(format!(
                    "unknown field '{k}': the body is {{\"inputs\": {{...}}}}"
                )));
            }
            m.remove("inputs").unwrap_or(Value::Null)
        }
        other => {
            return Err(Problem::bad_request(format!(
                "the body must be a JSON object, got {other}"
            )));
        }
    };
    let run = s
        .workflows
        .start(&name, inputs, json!({"kind": "manual"}))
        .await
        .map_err(workflow_err)?;
    Ok((StatusCode::ACCEPTED, Json(json!(run))))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct WindowQuery {
    /// Window start, RFC 3339 (default: 24 hours before `until`).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Window end, RFC 3339 (default: now).
    #[param(format = DateTime)]
    until: Option<String>,
}

fn time(field: &str, v: Option<&str>, default: DateTime<Utc>) -> Result<DateTime<Utc>, Problem> {
    match v {
        None => Ok(default),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Problem::bad_request(format!("{field}: '{s}' is not an RFC 3339 time ({e})"))
            }),
    }
}

/// Counts by status, success rate and p50/p95 durations of a workflow's runs and of each of
/// its nodes, for runs created in a window.
#[utoipa::path(get, path = "/api/v1/workflows/{name}/analytics", tag = "workflows",
    params(("name" = String, Path), WindowQuery),
    responses((status = 200, body = Object), (status = 400, body = ProblemDoc)))]
pub(super) async fn analytics(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<WindowQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let q = query(q)?;
    let now = flowbot_core::clock::now();
    let until = time("until", q.until.as_deref(), now)?;
    let day_before = until
        .checked_sub_signed(chrono::Duration::hours(24))
        .unwrap_or(DateTime::<Utc>::MIN_UTC);
    let since = time("since", q.since.as_deref(), day_before)?;
    if since >= until {
        return Err(Problem::bad_request("since must be before until"));
    }
    let a = s
        .workflows
        .analytics(&name, since, until)
        .await
        .map_err(workflow_err)?;
    Ok(Json(json!(a)))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct RunQuery {
    /// Only runs of this workflow.
    workflow: Option<String>,
    /// `queued`, `running`, `completed`, `failed` or `cancelled`.
    #[param(pattern = "^(queued|running|completed|failed|cancelled)$")]
    status: Option<String>,
    /// Cursor from the previous page.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Runs, newest first.
#[utoipa::path(get, path = "/api/v1/runs", tag = "workflows", params(RunQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
pub(super) async fn list_runs(
    State(s): State<AppState>,
    q: Result<Query<RunQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let q = query(q)?;
    let status = match q.status.as_deref() {
        None => None,
        Some(v) => Some(RunStatus::parse(v).ok_or_else(|| {
            Problem::bad_request(format!(
                "unknown status '{v}': use queued, running, completed, failed or cancelled"
            ))
        })?),
    };
    let filter = RunFilter {
        workflow: q.workflow,
        status,
        cursor: q.cursor,
        limit: limit(q.limit)?,
    };
    page(s.workflows.runs(&filter).await.map_err(workflow_err)?)
}

/// A run with its node timeline (input, output, error, attempt, start and end of each node).
#[utoipa::path(get, path = "/api/v1/runs/{id}", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
pub(super) async fn get_run(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let id = path(p)?;
    match s.workflows.run(&id).await.map_err(workflow_err)? {
        Some(d) => Ok(Json(json!(d))),
        None => Err(Problem::not_found(format!("there is no run '{id}'"))),
    }
}

/// Cancel a queued or running run (and the sub-workflow runs it waits for).
#[utoipa::path(post, path = "/api/v1/runs/{id}/cancel", tag = "workflows", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
pub(super) async fn cancel_run(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let id = path(p)?;
    let status = s.workflows.cancel(&id).await.map_err(workflow_err)?;
    Ok(Json(json!({"id": id, "status": status.as_str()})))
}

/// Retry a failed run from its failed nodes.
#[utoipa::path(post, path = "/api/v1/runs/{id}/retry", tag = "workflows", params(("id" = String, Path)),
    responses((status = 202, body = Object), (status = 404, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "the run is not failed")))]
pub(super) async fn retry_run(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let id = path(p)?;
    let run = s.workflows.retry(&id).await.map_err(workflow_err)?;
    Ok((StatusCode::ACCEPTED, Json(json!(run))))
}

/// Start a run from a hook trigger. The caller proves it may: `Authorization: Bearer
/// <secret>` for a `token_secret` trigger, or `X-FlowBot-Signature: t=<unix>,v1=<hex>` (as the
/// webhook channel) for an `hmac_secret` trigger. The JSON body is the run's inputs.
#[utoipa::path(post, path = "/hooks/trigger/{path}", tag = "workflows", params(("path" = String, Path)),
    request_body = Object,
    responses((status = 202, body = Object, description = "{\"run_id\": …, \"status\": …}"),
        (status = 401, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 422, body = ProblemDoc)))]
pub(super) async fn trigger_hook(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let hook = path(p)?;
    let body = body_of(body)?;
    let (workflow, trigger) = s
        .workflows
        .find_hook(&hook)
        .await
        .map_err(workflow_err)?
        .ok_or_else(|| Problem::not_found(format!("no workflow has the hook '{hook}'")))?;
    let secrets = s.workflows.secrets().await.map_err(workflow_err)?;
    let unauthorized = |m: String| Problem::new(StatusCode::UNAUTHORIZED, m);
    let missing = |name: &str| {
        Problem::unavailable(match secrets.unreadable(name) {
            Some(why) => format!("the hook's secret cannot be read: {why}"),
            None => format!("the hook's secret '{name}' is not configured"),
        })
    };
    if let Some(name) = &trigger.token_secret {
        let expected = secrets.get(name).ok_or_else(|| missing(name))?;
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| unauthorized("missing 'Authorization: Bearer <token>' header".into()))?;
        if !constant_time_eq(given.as_bytes(), expected.as_bytes()) {
            return Err(unauthorized("the bearer token does not match".into()));
        }
    } else if let Some(name) = &trigger.hmac_secret {
        let secret = secrets.get(name).ok_or_else(|| missing(name))?;
        let header = headers
            .get(flowbot_channels::webhook::SIGNATURE_HEADER)
            .and_then(|v| v.to_str().ok());
        flowbot_channels::webhook::verify(
            secret,
            header,
            &body,
            flowbot_core::clock::now().timestamp(),
            REPLAY_WINDOW,
        )
        .map_err(|e| unauthorized(e.to_string()))?;
    } else {
        return Err(unauthorized("the hook has no secret configured".into()));
    }
    let inputs = inputs_of(&body)?;
    let run = s
        .workflows
        .start(&workflow, inputs, json!({"kind": "hook", "hook": hook}))
        .await
        .map_err(workflow_err)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run_id": run.id, "status": run.status.as_str()})),
    ))
}

/// Compare without leaking where the first difference is.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
