//! Who may use the admin API: one layer ([`guard`]) in front of every route under `/api/v1`
//! and `/metrics` that checks the `Host` (DNS rebinding), authenticates the caller (an API key
//! or a JWT bearer token), refuses cross-site changes, and checks the route's permission
//! ([`policy`]) against the caller's role. The keys API (`/api/v1/keys`) and `whoami` live
//! here too.
//!
//! A route with no policy is refused to everyone (it fails closed), and the authorization
//! matrix test walks the OpenAPI document, so a new route without a policy fails the suite.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flowbot_channels::problem::Problem;
use flowbot_core::auth::{
    Access, ApiKeys, Identity, KeyInfo, Permission, Resource, Roles, VerifyError, Via,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{AppState, Status, path};

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Anyone: health, the OpenAPI document, trigger hooks (verified by their own secret).
    Public,
    /// Any authenticated caller.
    Authenticated,
    /// A permission.
    Needs(Permission),
    /// No policy is written for this route: nobody may use it.
    Missing,
}

/// The policy of the route `template` (axum's matched path, e.g. `/api/v1/rules/{name}`)
/// for `method`: reads need `<resource>:read`, anything else `<resource>:write`.
pub fn policy(method: &Method, template: &str) -> Policy {
    use Resource as R;
    let access = if matches!(*method, Method::GET | Method::HEAD) {
        Access::Read
    } else {
        Access::Write
    };
    let needs = |resource| Policy::Needs(Permission { resource, access });
    match template {
        "/healthz" | "/readyz" | "/api/v1/openapi.json" | "/hooks/trigger/{path}" => {
            return Policy::Public;
        }
        "/metrics" => return Policy::Needs(Permission::read(R::Metrics)),
        "/api/v1/whoami" => return Policy::Authenticated,
        // Validating is reading: it changes nothing.
        "/api/v1/rules/validate" => return Policy::Needs(Permission::read(R::Rules)),
        "/api/v1/workflows/validate" => return Policy::Needs(Permission::read(R::Workflows)),
        "/api/v1/workflows/{name}/analytics" => return Policy::Needs(Permission::read(R::Runs)),
        // Starting a run acts on runs, not on the definition.
        "/api/v1/workflows/{name}/runs" => return Policy::Needs(Permission::write(R::Runs)),
        // An assistant run holds what people said.
        "/api/v1/llm/runs" | "/api/v1/llm/runs/{id}" => {
            return Policy::Needs(Permission::read(R::Conversations));
        }
        "/api/v1/llm/runs/{id}/feedback" | "/api/v1/llm/usage" => return needs(R::Runs),
        // Searching is reading: it changes nothing.
        "/api/v1/kb/collections/{name}/search" => {
            return Policy::Needs(Permission::read(R::Knowledge));
        }
        _ => {}
    }
    let Some(rest) = template.strip_prefix("/api/v1/") else {
        return Policy::Missing;
    };
    let resource = match rest.split('/').next().unwrap_or_default() {
        "conversations" => R::Conversations,
        "sessions" => R::Sessions,
        "tasks" | "dead-letters" => R::Tasks,
        "schedules" => R::Schedules,
        "rules" => R::Rules,
        "workflows" => R::Workflows,
        "runs" => R::Runs,
        "keys" => R::Keys,
        "audit" => R::Audit,
        "secrets" => R::Secrets,
        "kb" => R::Knowledge,
        "llm" if rest.starts_with("llm/prompts") => R::Prompts,
        _ => return Policy::Missing,
    };
    needs(resource)
}

/// Bearer JWTs: the verifier and how claims become an identity.
pub struct JwtAuth {
    /// Checks signatures and the registered claims.
    pub verifier: flowbot_core::jwt::JwtVerifier,
    /// The claim naming the caller.
    pub subject_claim: String,
    /// The claim (a dotted path) holding the role or roles.
    pub role_claim: String,
    /// Claim values → role names; empty: the values are role names.
    pub roles: std::collections::BTreeMap<String, String>,
}

impl JwtAuth {
    /// The first role the token's role claim names (through the map, if any).
    fn role_of(&self, claims: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        claimed_role(&self.role_claim, &self.roles, claims)
    }
}

/// The first role that the claim `role_claim` (a dotted path; a string or a list) of
/// `claims` names, through `roles` (claim value → role name; empty: the values are role
/// names). Bearer JWTs and OpenID Connect sign-in map their claims alike.
pub fn claimed_role(
    role_claim: &str,
    roles: &std::collections::BTreeMap<String, String>,
    claims: &serde_json::Map<String, serde_json::Value>,
) -> Option<String> {
    let mut parts = role_claim.split('.');
    let first = parts.next()?;
    let mut value = claims.get(first)?;
    for p in parts {
        value = value.get(p)?;
    }
    let values: Vec<&str> = match value {
        serde_json::Value::String(s) => vec![s.as_str()],
        serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
        _ => Vec::new(),
    };
    values.into_iter().find_map(|v| {
        if roles.is_empty() {
            Some(v.to_owned())
        } else {
            roles.get(v).cloned()
        }
    })
}

/// How the API authenticates callers.
pub struct Gate {
    /// API keys (when `[auth] api_keys` is on).
    pub keys: Option<Arc<ApiKeys>>,
    /// Bearer JWTs (when `[auth.jwt]` is set).
    pub jwt: Option<JwtAuth>,
    /// The roles callers act in.
    pub roles: Arc<Roles>,
    /// Whether a credential is required. Without one (a loopback server with no
    /// authentication configured) every caller acts as `admin`, and only the `Host` and
    /// cross-site checks stand in front of the API.
    pub required: bool,
    /// Host names (without port) the API answers to; empty: any.
    pub hosts: Vec<String>,
    /// Origins whose pages may make changes without a credential (`[server] cors_origins`).
    pub origins: Vec<String>,
    /// Abuse limits and the admin API's address allow-list.
    pub limits: Arc<super::limits::Limits>,
    /// Where changes and failed authentications are recorded (`None`: not recorded).
    pub audit: Option<Arc<dyn flowbot_core::Store>>,
    /// Signed-in people's sessions (when `[auth.oidc]` is set).
    pub sessions: Option<Arc<super::oidc::Sessions>>,
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("keys", &self.keys.is_some())
            .field("jwt", &self.jwt.is_some())
            .field("required", &self.required)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

/// The host names a loopback server answers to (any port).
pub const LOOPBACK_HOSTS: [&str; 4] = ["localhost", "127.0.0.1", "[::1]", "::1"];

fn unauthorized(detail: impl Into<String>) -> Response {
    let mut res = Problem::new(StatusCode::UNAUTHORIZED, detail).into_response();
    res.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Bearer realm=\"flowbot\""),
    );
    res
}

fn forbidden(detail: impl Into<String>) -> Response {
    Problem::new(StatusCode::FORBIDDEN, detail).into_response()
}

/// The host name of a `Host` header value, lower-cased, without the port.
fn host_name(value: &str) -> String {
    let v = value.trim().to_ascii_lowercase();
    if v.starts_with('[') {
        return v
            .split_once(']')
            .map_or(v.clone(), |(h, _)| format!("{h}]"));
    }
    match v.rsplit_once(':') {
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            h.to_owned()
        }
        _ => v,
    }
}

/// The credential in `Authorization: Bearer …` or `X-API-Key`.
fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then_some(token.trim());
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok())
}

/// Whether a change arrives from a page of another site (Go's `CrossOriginProtection`
/// rules: `Sec-Fetch-Site` when the browser sends it, else `Origin` against `Host`).
fn cross_site(headers: &HeaderMap, origins: &[String]) -> bool {
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    if origin.is_some_and(|o| origins.iter().any(|t| t == o)) {
        return false;
    }
    if let Some(site) = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) {
        return !matches!(site, "same-origin" | "none");
    }
    let Some(origin) = origin else {
        // Not from a browser: browsers send Origin with every cross-site change.
        return false;
    };
    let host = headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let origin_host = origin
        .split_once("://")
        .map_or(origin, |(_, rest)| rest)
        .trim_end_matches('/');
    !origin_host.eq_ignore_ascii_case(host)
}

impl Gate {
    /// Who is calling; with no credential where none is required, a local `admin`.
    async fn identify(&self, method: &Method, headers: &HeaderMap) -> Result<Identity, Response> {
        let Some(presented) = credential(headers) else {
            // A signed-in person's session cookie; a change must carry its CSRF token.
            if let Some(sessions) = &self.sessions
                && let Some(found) = sessions.identify(method, headers, &self.roles).await
            {
                return found;
            }
            if self.required {
                return Err(unauthorized(if self.sessions.is_some() {
                    "this API needs a credential: send 'Authorization: Bearer <API key or token>', or sign in at /auth/login"
                } else {
                    "this API needs a credential: send 'Authorization: Bearer <API key or token>'"
                }));
            }
            let role = self
                .roles
                .get("admin")
                .ok_or_else(|| forbidden("no admin role"))?;
            return Ok(Identity {
                subject: "local".into(),
                role,
                via: Via::Unauthenticated,
            });
        };
        if ApiKeys::looks_like_key(presented) {
            let Some(keys) = &self.keys else {
                return Err(unauthorized(
                    "API keys are not accepted here ([auth] api_keys is off)",
                ));
            };
            return match keys.verify(presented).await {
                Ok(key) => {
                    let role = key.role.clone();
                    self.identity_of_key(key).ok_or_else(|| {
                        forbidden(format!(
                            "the key's role '{role}' is not defined on this server"
                        ))
                    })
                }
                Err(VerifyError::Rejected(why)) => {
                    tracing::info!(reason = %why, "API key refused");
                    Err(unauthorized(why.to_string()))
                }
                Err(VerifyError::Store(e)) => {
                    tracing::warn!(error = %e, "cannot check an API key");
                    Err(Problem::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "cannot check the API key now: the database is unavailable",
                    )
                    .into_response())
                }
            };
        }
        let Some(jwt) = &self.jwt else {
            return Err(unauthorized(
                "the bearer credential is not an API key, and this server accepts no tokens ([auth.jwt])",
            ));
        };
        let claims = match jwt.verifier.verify_shared(presented).await {
            Ok(c) => c,
            Err(flowbot_core::jwt::JwtError::Jwks(why)) => {
                tracing::warn!(error = %why, "cannot check a bearer token: the JWKS is unavailable");
                return Err(Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "cannot check the token now: the identity provider's keys are unavailable",
                )
                .into_response());
            }
            Err(e) => {
                tracing::info!(reason = %e, "bearer token refused");
                return Err(unauthorized(e.to_string()));
            }
        };
        let subject = claims
            .get(&jwt.subject_claim)
            .and_then(|v| v.as_str())
            .ok_or_else(|| unauthorized(format!("the token has no '{}' claim", jwt.subject_claim)))?
            .to_owned();
        let role = jwt
            .role_of(&claims)
            .and_then(|r| self.roles.get(&r))
            .ok_or_else(|| {
                forbidden(format!(
                    "the token's '{}' claim names no role of this server",
                    jwt.role_claim
                ))
            })?;
        Ok(Identity {
            subject,
            role,
            via: Via::Jwt,
        })
    }

    /// The identity of a verified key; `None` when its role is not defined here (any more).
    fn identity_of_key(&self, key: KeyInfo) -> Option<Identity> {
        Some(Identity {
            role: self.roles.get(&key.role)?,
            subject: key.name,
            via: Via::ApiKey { id: key.id },
        })
    }
}

/// The layer in front of the admin API (see the module docs). The caller's [`Identity`]
/// goes into the request's extensions.
pub async fn guard(
    State(gate): State<Arc<Gate>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let template = matched.as_ref().map_or("", MatchedPath::as_str).to_owned();
    let request_id = request_id(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let client = gate.limits.client(&req);
    let rule = policy(&method, &template);
    let (mut res, identity) = check(&gate, &template, rule, client, req, next).await;
    if let Ok(v) = header::HeaderValue::from_str(&request_id) {
        res.headers_mut().insert("x-request-id", v);
    }
    // Every change, and every failed authentication, goes to the audit log.
    let change = !matches!(method, Method::GET | Method::HEAD | Method::OPTIONS);
    let failed_auth = res.status() == StatusCode::UNAUTHORIZED;
    if let Some(store) = &gate.audit
        && rule != Policy::Public
        && (change || failed_auth)
    {
        let event = flowbot_core::store::AuditEvent {
            at: flowbot_core::clock::now(),
            subject: identity.as_ref().map(|i| i.subject.clone()),
            role: identity.as_ref().map(|i| i.role.name().to_owned()),
            method: method.to_string(),
            route: template,
            path,
            resource: match rule {
                Policy::Needs(p) => Some(p.resource.as_str().to_owned()),
                _ => None,
            },
            outcome: res.status().as_u16(),
            request_id,
            client: client.map(|c| c.to_string()),
            detail: failed_auth.then(|| "authentication failed".to_owned()),
        };
        if let Err(e) = store.record_audit(std::slice::from_ref(&event)).await {
            tracing::error!(error = %e, request_id = %event.request_id, route = %event.route, "cannot record an audit event");
        }
    }
    res
}

/// The request's id: the caller's `X-Request-Id` when it is a short printable token, else a
/// new one.
fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

/// The checks of [`guard`], then the route; the answer and who the caller was, if known.
async fn check(
    gate: &Gate,
    template: &str,
    policy: Policy,
    client: Option<std::net::IpAddr>,
    mut req: Request,
    next: Next,
) -> (Response, Option<Identity>) {
    use super::limits::{Limits, too_many};
    let limits = &gate.limits;
    if policy == Policy::Public {
        if let Err(wait) = Limits::by_address(limits.public.as_ref(), client) {
            return (too_many(wait, "too many requests from this address"), None);
        }
        return (next.run(req).await, None);
    }
    if !limits.admin_allowed(client) {
        return (
            forbidden("this address may not use the admin API ([limits] admin_allow)"),
            None,
        );
    }
    if let Err(wait) = Limits::by_address(limits.api_address.as_ref(), client) {
        return (too_many(wait, "too many requests from this address"), None);
    }
    let headers = req.headers();
    if !gate.hosts.is_empty()
        && let Some(host) = headers.get(header::HOST).and_then(|v| v.to_str().ok())
        && !gate.hosts.contains(&host_name(host))
    {
        let res = Problem::new(
            StatusCode::MISDIRECTED_REQUEST,
            format!(
                "this server does not answer to the host '{}': add it to [auth] allowed_hosts",
                host_name(host)
            ),
        )
        .into_response();
        return (res, None);
    }
    let has_credential = credential(headers).is_some();
    let failures = limits
        .auth_failures
        .as_ref()
        .zip(client.filter(|c| !c.is_loopback()));
    if has_credential
        && let Some((f, c)) = failures
        && let Some(wait) = f.blocked(c)
    {
        return (
            too_many(wait, "too many failed authentications from this address"),
            None,
        );
    }
    let identity = match gate.identify(req.method(), headers).await {
        Ok(i) => i,
        Err(res) => {
            if res.status() == StatusCode::UNAUTHORIZED
                && has_credential
                && let Some((f, c)) = failures
                && f.failed(c).is_some()
            {
                tracing::warn!(client = %c, "too many failed authentications; refusing this address for a while");
            }
            return (res, None);
        }
    };
    let who = match &identity.via {
        Via::ApiKey { id } => Some(format!("key:{id}")),
        Via::Jwt | Via::Session => Some(format!("sub:{}", identity.subject)),
        Via::Unauthenticated => None,
    };
    if let (Some(l), Some(who)) = (&limits.api_credential, who)
        && let Err(wait) = l.check(&who)
    {
        return (
            too_many(wait, "too many requests with this credential"),
            None,
        );
    }
    // A browser attaches no bearer credential on its own: only a change without one can be
    // forged by another site's page.
    if !has_credential
        && !matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && cross_site(req.headers(), &gate.origins)
    {
        let res = forbidden(
            "a change from another site's page is refused: send a credential, or list the page's origin in [server] cors_origins",
        );
        return (res, Some(identity));
    }
    match policy {
        Policy::Public | Policy::Authenticated => {}
        Policy::Needs(p) if identity.allows(p) => {}
        Policy::Needs(p) => {
            let res = forbidden(format!(
                "the role '{}' does not have the permission {p}",
                identity.role.name()
            ));
            return (res, Some(identity));
        }
        Policy::Missing => {
            let res = forbidden(format!(
                "{} {template}: no access policy is written for this route",
                req.method()
            ));
            return (res, Some(identity));
        }
    }
    req.extensions_mut().insert(identity.clone());
    (next.run(req).await, Some(identity))
}

/// The caller, as the API sees them.
#[derive(Serialize, ToSchema)]
pub(super) struct WhoAmI {
    subject: String,
    role: String,
    /// `api_key`, `jwt`, `session` or `unauthenticated`.
    method: String,
    /// The API key's id, when one was used.
    key: Option<String>,
    permissions: Vec<String>,
}

/// Who the credential sent stands for, and what it may do.
#[utoipa::path(get, path = "/api/v1/whoami", tag = "auth",
    responses((status = 200, body = WhoAmI), (status = 401, body = super::ProblemDoc)))]
pub(super) async fn whoami(identity: axum::Extension<Identity>) -> Json<WhoAmI> {
    let (method, key) = match &identity.via {
        Via::ApiKey { id } => ("api_key", Some(id.clone())),
        Via::Jwt => ("jwt", None),
        Via::Session => ("session", None),
        Via::Unauthenticated => ("unauthenticated", None),
    };
    Json(WhoAmI {
        subject: identity.subject.clone(),
        role: identity.role.name().to_owned(),
        method: method.into(),
        key,
        permissions: identity.role.permissions().map(|p| p.to_string()).collect(),
    })
}

/// A key to make.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"name": "grafana", "role": "viewer"}))]
pub(super) struct NewKey {
    /// What the key is for (1 to 100 characters).
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// The role it acts in.
    role: String,
    /// When it stops working (RFC 3339); never by default.
    #[schema(value_type = Option<String>, format = DateTime)]
    expires_at: Option<DateTime<Utc>>,
}

/// A key just made: `key` is shown this once.
#[derive(Serialize, ToSchema)]
pub(super) struct CreatedKeyDoc {
    #[schema(value_type = Object)]
    #[serde(flatten)]
    info: KeyInfo,
    /// The whole key (`fbk_<id>_<secret>`): store it now, it is not shown again.
    key: String,
}

fn keys_of(s: &AppState) -> Result<&Arc<ApiKeys>, Problem> {
    s.gate.keys.as_ref().ok_or_else(|| {
        Problem::new(
            StatusCode::CONFLICT,
            "API keys are off on this server: set [auth] api_keys = true",
        )
    })
}

fn key_err(e: flowbot_core::auth::AuthError) -> Problem {
    match e {
        flowbot_core::auth::AuthError::Store(e) => super::store_err(e),
        other => Problem::new(StatusCode::UNPROCESSABLE_ENTITY, other.to_string()),
    }
}

/// Every API key (never their secrets), newest first.
#[utoipa::path(get, path = "/api/v1/keys", tag = "auth",
    responses((status = 200, body = Vec<Object>), (status = 409, body = super::ProblemDoc)))]
pub(super) async fn list_keys(State(s): State<AppState>) -> Result<Json<Vec<KeyInfo>>, Problem> {
    Ok(Json(keys_of(&s)?.list().await.map_err(key_err)?))
}

/// Make an API key. The answer holds the key; it is not shown again.
#[utoipa::path(post, path = "/api/v1/keys", tag = "auth", request_body = NewKey,
    responses((status = 201, body = CreatedKeyDoc),
        (status = 409, body = super::ProblemDoc, description = "API keys are off on this server"),
        (status = 415, body = super::ProblemDoc), (status = 422, body = super::ProblemDoc)))]
pub(super) async fn create_key(
    State(s): State<AppState>,
    body: Result<Json<NewKey>, JsonRejection>,
) -> Result<(StatusCode, Json<CreatedKeyDoc>), Problem> {
    let Json(new) = body.map_err(|e| {
        let status = match e.status() {
            s @ (StatusCode::PAYLOAD_TOO_LARGE | StatusCode::UNSUPPORTED_MEDIA_TYPE) => s,
            _ => StatusCode::BAD_REQUEST,
        };
        Problem::new(status, e.body_text())
    })?;
    let keys = keys_of(&s)?;
    if s.gate.roles.get(&new.role).is_none() {
        return Err(Problem::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!(
                "no role '{}' (one of {})",
                new.role,
                s.gate.roles.names().join(", ")
            ),
        ));
    }
    let made = keys
        .create(&new.name, &new.role, new.expires_at)
        .await
        .map_err(key_err)?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedKeyDoc {
            info: made.info,
            key: made.key,
        }),
    ))
}

/// One key.
#[utoipa::path(get, path = "/api/v1/keys/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 200, body = Object), (status = 404, body = super::ProblemDoc),
        (status = 409, body = super::ProblemDoc, description = "API keys are off on this server")))]
pub(super) async fn get_key(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<KeyInfo>, Problem> {
    let id = path(p)?;
    keys_of(&s)?
        .get(&id)
        .await
        .map_err(key_err)?
        .map(Json)
        .ok_or_else(|| Problem::not_found(format!("no API key '{id}'")))
}

/// Revoke a key: it stops working at once on this server, within seconds on others.
#[utoipa::path(delete, path = "/api/v1/keys/{id}", tag = "auth", params(("id" = String, Path)),
    responses((status = 200, body = Status), (status = 404, body = super::ProblemDoc),
        (status = 409, body = super::ProblemDoc, description = "API keys are off on this server")))]
pub(super) async fn revoke_key(
    State(s): State<AppState>,
    p: Result<Path<String>, PathRejection>,
) -> Result<Json<Status>, Problem> {
    let id = path(p)?;
    keys_of(&s)?
        .revoke(&id)
        .await
        .map_err(key_err)?
        .ok_or_else(|| Problem::not_found(format!("no API key '{id}'")))?;
    Ok(Json(Status {
        status: "revoked".into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lose_their_ports() {
        assert_eq!(host_name("LocalHost:8080"), "localhost");
        assert_eq!(host_name("127.0.0.1"), "127.0.0.1");
        assert_eq!(host_name("[::1]:80"), "[::1]");
        assert_eq!(host_name("evil.example:1:2"), "evil.example:1:2");
    }

    #[test]
    fn cross_site_changes_are_recognised() {
        let h = |pairs: &[(&'static str, &'static str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(*k, v.parse().expect("header"));
            }
            m
        };
        assert!(!cross_site(&h(&[]), &[]), "curl");
        assert!(!cross_site(&h(&[("sec-fetch-site", "same-origin")]), &[]));
        assert!(cross_site(&h(&[("sec-fetch-site", "cross-site")]), &[]));
        assert!(cross_site(
            &h(&[
                ("origin", "http://evil.example"),
                ("host", "127.0.0.1:8080")
            ]),
            &[]
        ));
        assert!(!cross_site(
            &h(&[
                ("origin", "http://127.0.0.1:8080"),
                ("host", "127.0.0.1:8080")
            ]),
            &[]
        ));
        assert!(!cross_site(
            &h(&[
                ("origin", "https://admin.example"),
                ("sec-fetch-site", "cross-site")
            ]),
            &["https://admin.example".into()]
        ));
    }

    #[test]
    fn routes_map_to_permissions() {
        let p = |m: Method, t: &str| policy(&m, t);
        assert_eq!(
            p(Method::DELETE, "/api/v1/rules/{name}"),
            Policy::Needs(Permission::write(Resource::Rules))
        );
        assert_eq!(
            p(Method::GET, "/api/v1/dead-letters"),
            Policy::Needs(Permission::read(Resource::Tasks))
        );
        assert_eq!(p(Method::POST, "/hooks/trigger/{path}"), Policy::Public);
        assert_eq!(p(Method::GET, "/api/v1/unheard-of"), Policy::Missing);
        assert_eq!(p(Method::GET, "/elsewhere"), Policy::Missing);
    }
}

/// Which audit entries to list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct AuditQuery {
    /// Only this caller's entries (a key's name, a token's subject).
    subject: Option<String>,
    /// An outcome class (`4xx`) or status (`403`).
    #[param(pattern = "^[1-5]([xX][xX]|[0-9][0-9])$")]
    outcome: Option<String>,
    /// Entries at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    since: Option<DateTime<Utc>>,
    /// Entries before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    until: Option<DateTime<Utc>>,
    /// Entries whose route starts with this, e.g. `/api/v1/rules`.
    route: Option<String>,
    /// Cursor from the previous page's `next_cursor`.
    cursor: Option<String>,
    /// Page size, 1 to 1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The audit log, newest first: every change through the API and every failed
/// authentication (who, role, route, resource, outcome, request id, client, time).
#[utoipa::path(get, path = "/api/v1/audit", tag = "auth", params(AuditQuery),
    responses((status = 200, body = super::PageDoc), (status = 400, body = super::ProblemDoc)))]
pub(super) async fn list_audit(
    State(s): State<AppState>,
    q: Result<axum::extract::Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<super::PageDoc>, Problem> {
    let q = super::query(q)?;
    let outcome = match &q.outcome {
        Some(o) => Some(flowbot_core::store::AuditOutcome::parse(o).ok_or_else(|| {
            Problem::bad_request(format!(
                "outcome '{o}' is neither a status (403) nor a class (4xx)"
            ))
        })?),
        None => None,
    };
    let filter = flowbot_core::store::AuditFilter {
        subject: q.subject,
        outcome,
        since: q.since,
        until: q.until,
        route_prefix: q.route,
    };
    let page = s
        .store
        .list_audit(&filter, q.cursor.as_deref(), super::limit(q.limit)?)
        .await
        .map_err(super::store_err)?;
    super::page(page)
}
