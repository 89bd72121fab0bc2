//! `/api/v1/llm/…`: the assistant's runs — their conversation with the model, each tool call
//! with its result and approval, the tokens used.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use flowbot_channels::problem::Problem;
use flowbot_core::store::Page;
use flowbot_llm::agent::{RunState, Runs};
use serde_json::Value;

use super::{ApiResult, AppState, PageDoc, PageQuery, ProblemDoc, limit, page, path, query, store_err};

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
        Some(c) => c
            .parse::<usize>()
            .map_err(|_| Problem::bad_request(format!("cursor '{c}' is not a cursor of this list")))?,
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
