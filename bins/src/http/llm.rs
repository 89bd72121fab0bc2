//! `/api/v1/llm/…`: the assistant's runs — their conversation with the model, each tool call
//! with its result and approval, the tokens used — and its prompt library: versions,
//! activation, rollback, diffs, A/B splits and statistics per version.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use flowbot_channels::problem::Problem;
use flowbot_core::store::{KvStore, Page};
use flowbot_llm::agent::{RunState, Runs};
use flowbot_llm::prompt::{
    Prompt, PromptContent, PromptError, PromptLibrary, SharedPrompts, Variant, VersionMeta,
};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::{
    ApiResult, AppState, PageDoc, PageQuery, ProblemDoc, limit, page, path, query, store_err,
};

/// The assistant's runs, newest first. The cursor is the number of runs to skip.
#[utoipa::path(get, path = "/api/v1/llm/runs", tag = "llm", params(PageQuery),
    responses((status = 200, body = PageDoc), (status = 400, body = ProblemDoc)))]
pub(super) async fn list_runs(
    State(s): State<AppState>,
    q: Result<Query<PageQuery>, QueryRejection>,
) -> ApiResult<PageDoc> {
    let q = query(q)?;
    let limit = limit(q.limit)? as usize;
    let skip = match q.cursor.as_deref() {
        None => 0,
        Some(c) => c.parse::<usize>().map_err(|_| {
            Problem::bad_request(format!("cursor '{c}' is not a cursor of this list"))
        })?,
    };
    let runs = Runs::new(Some(s.store.clone()))
        .list()
        .await
        .map_err(store_err)?;
    let end = skip.saturating_add(limit).min(runs.len());
    let next = (end < runs.len()).then(|| end.to_string());
    let items: Vec<RunState> = runs.into_iter().skip(skip).take(limit).collect();
    page(Page {
        items,
        next_cursor: next,
    })
}

/// How `/api/v1/llm/usage` groups the runs.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct UsageQuery {
    /// `model` (the default), `user`, `conversation`, `channel` or `day` (UTC).
    #[param(pattern = "^(model|user|conversation|channel|day)$")]
    by: Option<String>,
    /// Only runs created at or after this RFC 3339 time.
    #[param(format = DateTime)]
    since: Option<String>,
}

/// Tokens, cost and runs of the assistant, grouped by model, user, conversation, channel or
/// day (from the stored runs; a run is one answer to one message).
#[utoipa::path(get, path = "/api/v1/llm/usage", tag = "llm", params(UsageQuery),
    responses((status = 200, body = Object), (status = 400, body = ProblemDoc)))]
pub(super) async fn usage(
    State(s): State<AppState>,
    q: Result<Query<UsageQuery>, QueryRejection>,
) -> ApiResult<Value> {
    let q = query(q)?;
    let by = q.by.as_deref().unwrap_or("model");
    let since = match q.since.as_deref() {
        None => None,
        Some(t) => Some(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| {
                    Problem::bad_request(format!("since = '{t}': not an RFC 3339 time ({e})"))
                })?
                .with_timezone(&chrono::Utc),
        ),
    };
    let key: fn(&RunState) -> String = match by {
        "model" => |r| r.model.clone(),
        "user" => |r| format!("{}:{}", r.channel, r.user),
        "conversation" => |r| format!("{}:{}", r.channel, r.conversation),
        "channel" => |r| r.channel.clone(),
        "day" => |r| r.created_at.format("%Y-%m-%d").to_string(),
        other => {
            return Err(Problem::bad_request(format!(
                "by = '{other}': use model, user, conversation, channel or day"
            )));
        }
    };
    let runs = Runs::new(Some(s.store.clone()))
        .list()
        .await
        .map_err(store_err)?;
    #[derive(Default)]
    struct Sum {
        runs: u64,
        input: u64,
        output: u64,
        cached: u64,
        cost_micros: u64,
    }
    let mut groups: BTreeMap<String, Sum> = BTreeMap::new();
    for r in runs
        .iter()
        .filter(|r| since.is_none_or(|t| r.created_at >= t))
    {
        let g = groups.entry(key(r)).or_default();
        g.runs = g.runs.saturating_add(1);
        g.input = g.input.saturating_add(r.usage.input_tokens);
        g.output = g.output.saturating_add(r.usage.output_tokens);
        g.cached = g
            .cached
            .saturating_add(r.usage.cached_input_tokens.unwrap_or(0));
        g.cost_micros = g.cost_micros.saturating_add(r.cost_micros);
    }
    let items: Vec<Value> = groups
        .into_iter()
        .map(|(k, g)| {
            json!({
                by: k,
                "runs": g.runs,
                "input_tokens": g.input,
                "output_tokens": g.output,
                "cached_input_tokens": g.cached,
                "cost_usd": format!("{}.{:06}", g.cost_micros / 1_000_000, g.cost_micros % 1_000_000),
            })
        })
        .collect();
    Ok(Json(json!({"by": by, "items": items})))
}

/// One run: its status, messages, tool calls with results and approvals, and usage.
#[utoipa::path(get, path = "/api/v1/llm/runs/{id}", tag = "llm", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
pub(super) async fn get_run(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let id = path(p)?;
    let run = Runs::new(Some(s.store.clone()))
        .load(&id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| Problem::not_found(format!("no llm run '{id}'")))?;
    serde_json::to_value(run)
        .map(Json)
        .map_err(|e| Problem::bad_request(e.to_string()))
}

/// A verdict on an answer.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"positive": true}))]
pub(super) struct Feedback {
    /// Whether the answer helped.
    positive: bool,
}

/// Record the user's verdict on a run's answer, once: it is kept with the run and counted in
/// the statistics of the prompt version that wrote the answer (A/B splits compare them).
#[utoipa::path(post, path = "/api/v1/llm/runs/{id}/feedback", tag = "llm",
    params(("id" = String, Path)), request_body = Feedback,
    responses((status = 200, body = Object), (status = 400, body = ProblemDoc),
        (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc), (status = 415, body = ProblemDoc)))]
pub(super) async fn run_feedback(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Result<Json<Feedback>, JsonRejection>,
) -> ApiResult<Value> {
    let id = path(p)?;
    let Json(feedback) =
        body.map_err(|e| Problem::bad_request(format!("invalid body: {}", e.body_text())))?;
    let runs = Runs::new(Some(s.store.clone()));
    let mut run = runs
        .load(&id)
        .await
        .map_err(store_err)?
        .ok_or_else(|| Problem::not_found(format!("no llm run '{id}'")))?;
    if let Some(given) = run.feedback {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!("run '{id}' already has feedback (positive: {given})"),
        ));
    }
    run.feedback = Some(feedback.positive);
    runs.save(&mut run).await.map_err(store_err)?;
    let mut counted = Value::Null;
    if let Some(used) = &run.prompt {
        let stats = library(&s)
            .record(
                &*s.store,
                &used.name,
                used.version,
                &flowbot_llm::prompt::Outcome::feedback(feedback.positive),
            )
            .await
            .map_err(prompt_err)?;
        counted = json!({"prompt": used.name, "version": used.version, "stats": stats});
    }
    Ok(Json(
        json!({"run": id, "positive": feedback.positive, "prompt": counted}),
    ))
}

/// The prompt library: the assistant's, or (without `[llm]` models) the database's alone.
fn library(s: &AppState) -> Arc<SharedPrompts> {
    s.prompts
        .clone()
        .unwrap_or_else(|| Arc::new(SharedPrompts::default()))
}

fn kv(s: &AppState) -> Option<&dyn KvStore> {
    Some(&*s.store)
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(prompt_err)`
fn prompt_err(e: PromptError) -> Problem {
    let unprocessable =
        |e: &PromptError| Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string());
    match &e {
        PromptError::NotFound(_) | PromptError::NoVersion { .. } => {
            Problem::not_found(e.to_string())
        }
        PromptError::InvalidName { .. } => Problem::bad_request(e.to_string()),
        PromptError::Syntax { template, line, .. } | PromptError::Render { template, line, .. } => {
            unprocessable(&e).with_errors(vec![json!({ "template": template, "line": line })])
        }
        PromptError::InvalidVariant { .. } | PromptError::InvalidSplit { .. } => unprocessable(&e),
        PromptError::NoPrevious(_) => Problem::new(StatusCode::CONFLICT, e.to_string()),
        PromptError::Store(s) => Problem::from_store(s),
        _ => Problem::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// A JSON body, or a 400 naming what is wrong with it (413 when it is too large, 415
/// without a JSON content type).
fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Problem> {
    b.map(|Json(v)| v).map_err(|e| {
        let status = match e.status() {
            s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
            _ => StatusCode::BAD_REQUEST,
        };
        Problem::new(status, format!("invalid body: {}", e.body_text()))
    })
}

/// A prompt's name, in a path.
#[derive(IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documents the path parameter the prompt handlers read
pub(super) struct PromptName {
    /// Letters, digits, `_`, `-` and `.` (not first), at most 100.
    #[param(pattern = "^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}$")]
    name: String,
}

fn prompt_json(library: &PromptLibrary, name: &str) -> Result<Value, Problem> {
    let p = library
        .get(name)
        .ok_or_else(|| prompt_err(PromptError::NotFound(name.to_owned())))?;
    Ok(json!(p))
}

fn summary(p: &Prompt) -> Value {
    let latest = p.latest();
    json!({
        "name": p.name(),
        "active": p.active(),
        "latest": latest.map(|v| v.version),
        "versions": p.versions().len(),
        "updated_at": latest.map(|v| v.created_at),
        "split": p.split(),
    })
}

/// Every prompt of the library, by name: active and latest version, number of versions,
/// the A/B split.
#[utoipa::path(get, path = "/api/v1/llm/prompts", tag = "llm",
    responses((status = 200, body = Object, description = "{\"items\": [{\"name\", \"active\", \"latest\", \"versions\", \"updated_at\", \"split\"}]}")))]
pub(super) async fn list_prompts(State(s): State<AppState>) -> ApiResult<Value> {
    let library = library(&s).library(kv(&s)).await.map_err(prompt_err)?;
    let items: Vec<Value> = library
        .names()
        .filter_map(|n| library.get(n))
        .map(summary)
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// One prompt: every version (number, time, author, comment, hash, templates), the active
/// one, the activation history and the A/B split.
#[utoipa::path(get, path = "/api/v1/llm/prompts/{name}", tag = "llm", params(PromptName),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
pub(super) async fn get_prompt(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let library = library(&s).library(kv(&s)).await.map_err(prompt_err)?;
    prompt_json(&library, &name).map(Json)
}

/// A new version of a prompt.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"system": "You are FlowBot, a helpful assistant.", "comment": "first version"}))]
pub(super) struct NewVersion {
    /// The system message's template (minijinja; `message`, `session`, `slots`, `vars`,
    /// `context`, `now`).
    system: String,
    /// The user message's template, when the prompt writes the user's turn.
    user: Option<String>,
    /// Overrides for some models, by `dialect/model` or a prefix ending in `*`:
    /// `{"anthropic/*": {"system": "…"}}`.
    #[serde(default)]
    #[schema(value_type = BTreeMap<String, VariantDoc>)]
    variants: BTreeMap<String, Variant>,
    /// Who made it.
    author: Option<String>,
    /// Why.
    comment: Option<String>,
    /// Activate the new version at once (a new prompt's first version always is).
    #[serde(default)]
    activate: bool,
}

/// Add a version to a prompt (creating the prompt), unless the content is the latest
/// version's already: 201 with the new version, 200 when nothing changed. Every template must
/// compile: 422 names the template and the line. It applies at once here and in every
/// process sharing the database.
#[utoipa::path(put, path = "/api/v1/llm/prompts/{name}", tag = "llm", params(PromptName),
    request_body = NewVersion,
    responses((status = 201, body = Object), (status = 200, body = Object), (status = 400, body = ProblemDoc),
        (status = 415, body = ProblemDoc), (status = 422, body = ProblemDoc, description = "a template does not compile, or a variant is invalid")))]
pub(super) async fn put_prompt(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Json<NewVersion>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), Problem> {
    let name = path(p)?;
    let v = body(b)?;
    let content = PromptContent {
        system: v.system,
        user: v.user,
        variants: v.variants,
    };
    let meta = VersionMeta {
        author: v.author,
        comment: v.comment,
    };
    let activate = v.activate;
    let shared = library(&s);
    let put = shared
        .update(kv(&s), &name, |l| {
            let put = l.put(&name, content, meta)?;
            if activate {
                l.activate(&name, put.version)?;
            }
            Ok(put)
        })
        .await
        .map_err(prompt_err)?;
    let library = shared.library(kv(&s)).await.map_err(prompt_err)?;
    let status = if put.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({
            "version": put.version,
            "created": put.created,
            "prompt": prompt_json(&library, &name)?,
        })),
    ))
}

/// A model-specific override of a prompt's templates.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Variant)]
#[allow(dead_code)] // documents `flowbot_llm::prompt::Variant`
pub(super) struct VariantDoc {
    /// Replaces the system template.
    system: Option<String>,
    /// Replaces the user template.
    user: Option<String>,
}

/// The version to activate.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"version": 1}))]
pub(super) struct Activate {
    /// The version's number.
    #[schema(maximum = 4294967295_u32)]
    version: u32,
}

/// Make a version the active one (the one before is remembered for rollback).
#[utoipa::path(post, path = "/api/v1/llm/prompts/{name}/activate", tag = "llm", params(PromptName),
    request_body = Activate,
    responses((status = 200, body = Object), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 415, body = ProblemDoc)))]
pub(super) async fn activate_prompt(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Json<Activate>, JsonRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let a = body(b)?;
    let shared = library(&s);
    shared
        .update(kv(&s), &name, |l| l.activate(&name, a.version))
        .await
        .map_err(prompt_err)?;
    let library = shared.library(kv(&s)).await.map_err(prompt_err)?;
    prompt_json(&library, &name).map(Json)
}

/// Make the previously active version active again (repeated rollbacks walk further back);
/// 409 when there is none.
#[utoipa::path(post, path = "/api/v1/llm/prompts/{name}/rollback", tag = "llm", params(PromptName),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc), (status = 409, body = ProblemDoc)))]
pub(super) async fn rollback_prompt(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let shared = library(&s);
    shared
        .update(kv(&s), &name, |l| l.rollback(&name))
        .await
        .map_err(prompt_err)?;
    let library = shared.library(kv(&s)).await.map_err(prompt_err)?;
    prompt_json(&library, &name).map(Json)
}

/// The two versions to compare.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct DiffQuery {
    /// The older version.
    from: u32,
    /// The newer version.
    to: u32,
}

/// A unified diff between two versions (every template, one section each); empty when they
/// say the same.
#[utoipa::path(get, path = "/api/v1/llm/prompts/{name}/diff", tag = "llm", params(PromptName, DiffQuery),
    responses((status = 200, description = "unified diff", content_type = "text/plain"),
        (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc)))]
pub(super) async fn diff_prompt(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    q: Result<Query<DiffQuery>, QueryRejection>,
) -> Result<Response, Problem> {
    let name = path(p)?;
    let q = query(q)?;
    let library = library(&s).library(kv(&s)).await.map_err(prompt_err)?;
    let diff = library.diff(&name, q.from, q.to).map_err(prompt_err)?;
    Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], diff).into_response())
}

/// An A/B split.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"weights": {"1": 100}}))]
pub(super) struct Split {
    /// Weight per version: `{"1": 90, "2": 10}`. Each user is assigned a version by a hash
    /// of the prompt's name and the user's id, so the same user always gets the same one.
    /// Empty: the split ends, everyone gets the active version.
    #[schema(schema_with = weights_schema)]
    weights: BTreeMap<u32, u32>,
}

/// An object from version numbers (as JSON writes integers) to weights, both `u32`.
fn weights_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    let version = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^(0|[1-9][0-9]*)$"))
        .build();
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .property_names(Some(version))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0))
                .maximum(Some(u32::MAX)),
        ))
        .build()
}

/// Split a prompt's traffic between versions by weight.
#[utoipa::path(put, path = "/api/v1/llm/prompts/{name}/split", tag = "llm", params(PromptName),
    request_body = Split,
    responses((status = 200, body = Object), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 415, body = ProblemDoc),
        (status = 422, body = ProblemDoc, description = "every weight is 0")))]
pub(super) async fn split_prompt(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    b: Result<Json<Split>, JsonRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let split = body(b)?;
    let arms: Vec<(u32, u32)> = split.weights.into_iter().collect();
    let shared = library(&s);
    shared
        .update(kv(&s), &name, |l| l.set_split(&name, &arms))
        .await
        .map_err(prompt_err)?;
    let library = shared.library(kv(&s)).await.map_err(prompt_err)?;
    prompt_json(&library, &name).map(Json)
}

/// Outcomes per version: runs, tokens in and out, cost (micro-dollars), latency (total and
/// mean), and feedback.
#[utoipa::path(get, path = "/api/v1/llm/prompts/{name}/stats", tag = "llm", params(PromptName),
    responses((status = 200, body = Object), (status = 404, body = ProblemDoc)))]
pub(super) async fn prompt_stats(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> ApiResult<Value> {
    let name = path(p)?;
    let shared = library(&s);
    let library = shared.library(kv(&s)).await.map_err(prompt_err)?;
    let active = library
        .get(&name)
        .map(Prompt::active)
        .ok_or_else(|| prompt_err(PromptError::NotFound(name.clone())))?;
    let stats = shared.stats(&*s.store, &name).await.map_err(prompt_err)?;
    let versions: Vec<Value> = stats
        .iter()
        .map(|v| {
            let mut out = json!(v);
            out["active"] = json!(v.version == active);
            out["mean_latency_ms"] = json!(v.mean_latency_ms());
            out["positive_rate"] = json!(v.positive_rate());
            out
        })
        .collect();
    Ok(Json(json!({ "name": name, "versions": versions })))
}
