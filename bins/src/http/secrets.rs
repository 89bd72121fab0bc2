//! Secrets stored through the API, encrypted at rest (`flowbot_core::secrets`): written and
//! deleted by name, listed by name and time, never read back. Workflows see them as
//! `{{ secrets.NAME }}` next to the configuration's `[secrets]`, which win on a name clash
//! (storing such a name is refused).

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use flowbot_channels::problem::Problem;
use flowbot_core::secrets::{SecretError, SecretStore};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use super::{AppState, ProblemDoc, path};

/// A stored secret, without its value.
#[derive(Serialize, ToSchema)]
pub(super) struct SecretItem {
    /// Its name.
    name: String,
    /// When its value was stored.
    #[schema(value_type = Option<String>, format = DateTime)]
    updated_at: Option<DateTime<Utc>>,
}

/// The stored secrets.
#[derive(Serialize, ToSchema)]
pub(super) struct SecretList {
    /// By name.
    items: Vec<SecretItem>,
}

/// What storing a secret did.
#[derive(Serialize, ToSchema)]
pub(super) struct SecretStored {
    /// Its name.
    name: String,
    /// False when it replaced a stored value.
    created: bool,
}

/// The body of `PUT /api/v1/secrets/{name}`.
#[derive(ToSchema)]
#[allow(dead_code)] // documents the body, which is read by hand (see `value_of`)
pub(super) struct SecretBody {
    /// The value (4 bytes to 64 KiB of text).
    value: String,
}

/// The store, or 409 when no key is configured.
fn stored(s: &AppState) -> Result<&Arc<SecretStore>, Problem> {
    s.secrets.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "secrets cannot be stored here: no key is configured; set the environment variable named by [secrets_store] key_env (FLOWBOT_SECRETS_KEY by default) or [secrets_store] key_file to a 32-byte key, and restart",
        )
    })
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(secret_err)`
fn secret_err(e: SecretError) -> Problem {
    match e {
        SecretError::InvalidName { .. } => Problem::bad_request(e.to_string()),
        SecretError::InvalidValue { .. } => {
            Problem::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string())
        }
        SecretError::Store(s) => Problem::from_store(&s),
        other => Problem::unavailable(other.to_string()),
    }
}

/// The value of a `{"value": "…"}` body. Messages never repeat the body: it holds a secret.
fn value_of(body: &[u8]) -> Result<String, Problem> {
    let bad = |m: &str| Problem::bad_request(format!("the body must be {{\"value\": \"…\"}}: {m}"));
    let v: Value = serde_json::from_slice(body).map_err(|_| bad("it is not valid JSON"))?;
    let Value::Object(mut m) = v else {
        return Err(bad("it is not a JSON object"));
    };
    let value = match m.remove("value") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(bad("`value` is not a string")),
        None => return Err(bad("`value` is missing")),
    };
    if let Some(other) = m.keys().next() {
        return Err(bad(&format!(
            "unknown field `{}`",
            other.chars().take(64).collect::<String>()
        )));
    }
    Ok(value)
}

/// The stored secrets' names and times; values are never answered.
#[utoipa::path(get, path = "/api/v1/secrets", tag = "secrets",
    responses((status = 200, body = SecretList),
        (status = 409, body = ProblemDoc, description = "no key is configured ([secrets_store])")))]
pub(super) async fn list_secrets(State(s): State<AppState>) -> Result<Json<SecretList>, Problem> {
    let items = stored(&s)?
        .list()
        .await
        .map_err(secret_err)?
        .into_iter()
        .map(|i| SecretItem {
            name: i.name,
            updated_at: i.updated_at,
        })
        .collect();
    Ok(Json(SecretList { items }))
}

/// Store a secret (`{"value": "…"}`), encrypted, replacing any value of that name. Workflows
/// see it as `{{ secrets.NAME }}` from their next node on, on every process sharing the
/// database. The answer never holds the value.
#[utoipa::path(put, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path, description = "letters, digits and `_`, not starting with a digit")),
    request_body = SecretBody,
    responses((status = 200, body = SecretStored),
        (status = 400, body = ProblemDoc, description = "a bad name or body"),
        (status = 409, body = ProblemDoc, description = "no key is configured, or the configuration's [secrets] holds the name"),
        (status = 422, body = ProblemDoc, description = "the value is too short or too long")))]
pub(super) async fn put_secret(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
    body: Bytes,
) -> Result<Json<SecretStored>, Problem> {
    let name = path(p)?;
    let store = stored(&s)?;
    flowbot_core::secrets::check_name(&name).map_err(secret_err)?;
    let value = value_of(&body)?;
    if s.workflows.configured_secrets().get(&name).is_some() {
        return Err(Problem::new(
            StatusCode::CONFLICT,
            format!(
                "the secret '{name}' is set in the configuration ([secrets]), which wins over stored secrets: change it there, or store this one under another name"
            ),
        ));
    }
    let created = store.put(&name, &value).await.map_err(secret_err)?;
    Ok(Json(SecretStored { name, created }))
}

/// Delete a stored secret. A workflow that still uses it fails at its node, naming it.
#[utoipa::path(delete, path = "/api/v1/secrets/{name}", tag = "secrets",
    params(("name" = String, Path)),
    responses((status = 204), (status = 400, body = ProblemDoc), (status = 404, body = ProblemDoc),
        (status = 409, body = ProblemDoc, description = "no key is configured ([secrets_store])")))]
pub(super) async fn delete_secret(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, Problem> {
    let name = path(p)?;
    match stored(&s)?.delete(&name).await.map_err(secret_err)? {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(Problem::not_found(format!("no stored secret '{name}'"))),
    }
}
