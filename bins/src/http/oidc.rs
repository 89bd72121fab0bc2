//! Sign-in for people through OpenID Connect (`[auth.oidc]`): the authorization code flow
//! with PKCE (S256), `state` and `nonce`, the ID token verified with the `openidconnect`
//! crate against the provider's discovery document and JWK Set, then a session cookie.
//!
//! - `GET /auth/login` sends the browser to the provider. The sign-in under way (PKCE
//!   verifier, nonce, where to return) is kept in the store's KV (`auth.logins`, ten
//!   minutes, used once) under a hash of its `state`, and the browser holds the `state` in
//!   the `flowbot_login` cookie, so a callback started in another browser is refused.
//! - `GET /auth/callback` checks the `state`, exchanges the code, verifies the ID token
//!   (signature, issuer, audience, expiry, nonce, access token hash), maps its role claim
//!   as `[auth.jwt]` does, and makes a session: a random id whose hash keys the store's KV
//!   (`auth.sessions`: subject, role, expiry, CSRF token), sent as the `flowbot_session`
//!   cookie (`HttpOnly`, `SameSite=Lax`, `Path=/`, `Secure` when `redirect_url` is https).
//! - `GET /auth/session` says who is signed in and gives the CSRF token that every change
//!   made with the cookie must carry in `X-CSRF-Token`; `POST /auth/logout` ends the session.
//!
//! The admin API's gate ([`super::auth::guard`]) reads the cookie through
//! [`Sessions::identify`]. Sign-in attempts are limited per client address, and a refused
//! callback counts as a failed authentication (`[limits]`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use flowbot_channels::problem::Problem;
use flowbot_core::auth::{Identity, Roles, Via};
use flowbot_core::store::KvStore;
use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessTokenHash, AdditionalClaims, AuthorizationCode, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenFields, IssuerUrl,
    Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier, RedirectUrl,
    RequestTokenError, Scope, StandardErrorResponse, StandardTokenResponse, TokenResponse,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::Digest;
use subtle::ConstantTimeEq;
use utoipa::ToSchema;

use super::limits::{Limiter, Limits, too_many};
use crate::config::OidcConfig;

/// The sign-in callback's path; `[auth.oidc] redirect_url` ends with it.
pub const CALLBACK_PATH: &str = "/auth/callback";
/// The session cookie.
pub const SESSION_COOKIE: &str = "flowbot_session";
/// The cookie holding the `state` of the sign-in under way.
const LOGIN_COOKIE: &str = "flowbot_login";
/// The header a change made with the session cookie carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// KV namespace of the sessions.
const SESSIONS: &str = "auth.sessions";
/// KV namespace of the sign-ins under way.
const LOGINS: &str = "auth.logins";
/// How long a sign-in may take at the provider.
const LOGIN_TTL: Duration = Duration::from_secs(600);
/// How long the provider's discovery document and keys are kept before being read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The most the provider may send in one answer.
const MAX_ANSWER: usize = 1 << 20;

/// The ID token's claims beyond the standard ones (a role claim), as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
struct AllClaims(Map<String, Value>);

impl AdditionalClaims for AllClaims {}

type IdFields = IdTokenFields<
    AllClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;

type Tokens = StandardTokenResponse<IdFields, CoreTokenType>;

/// The client, as made from the provider's discovery document.
type Client = openidconnect::Client<
    AllClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The signature algorithms an ID token may use: the asymmetric ones.
const ALGORITHMS: [CoreJwsSigningAlgorithm; 9] = [
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha256,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha384,
    CoreJwsSigningAlgorithm::RsaSsaPkcs1V15Sha512,
    CoreJwsSigningAlgorithm::RsaSsaPssSha256,
    CoreJwsSigningAlgorithm::RsaSsaPssSha384,
    CoreJwsSigningAlgorithm::RsaSsaPssSha512,
    CoreJwsSigningAlgorithm::EcdsaP256Sha256,
    CoreJwsSigningAlgorithm::EcdsaP384Sha384,
    CoreJwsSigningAlgorithm::EdDsa,
];

/// A failed request to the provider.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct ProviderHttpError(String);

/// One request to the provider through the server's reqwest client (no redirects followed,
/// answers of at most 1 MiB).
async fn send(
    http: reqwest::Client,
    request: openidconnect::HttpRequest,
) -> Result<openidconnect::HttpResponse, ProviderHttpError> {
    let url = request.uri().to_string();
    let fail = |e: &dyn std::fmt::Display| ProviderHttpError(format!("{url}: {e}"));
    let request = reqwest::Request::try_from(request).map_err(|e| fail(&e))?;
    let mut res = http.execute(request).await.map_err(|e| fail(&e))?;
    let mut answer = openidconnect::http::Response::builder().status(res.status());
    for (name, value) in res.headers() {
        answer = answer.header(name, value);
    }
    let mut body = Vec::new();
    while let Some(chunk) = res.chunk().await.map_err(|e| fail(&e))? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(fail(&"the answer is larger than 1 MiB"));
        }
        body.extend_from_slice(&chunk);
    }
    answer.body(body).map_err(|e| fail(&e))
}

/// A session as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Session {
    subject: String,
    role: String,
    csrf: String,
    name: Option<String>,
    email: Option<String>,
    signed_in_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
}

/// A sign-in under way, as stored.
#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    pkce_verifier: String,
    nonce: String,
    return_to: String,
    expires_at: DateTime<Utc>,
}

/// `n` random bytes, hex-encoded.
fn random_hex(n: usize) -> Result<String, Problem> {
    let mut bytes = vec![0u8; n];
    getrandom::fill(&mut bytes).map_err(|e| {
        tracing::error!(error = %e, "no random bytes for a session");
        Problem::unavailable("cannot make a session now: no random numbers")
    })?;
    Ok(hex::encode(bytes))
}

/// The store key of a secret: its SHA-256, so the database never holds the secret itself.
fn key_of(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Whether two secrets are equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// The value of the cookie `name` in the request's `Cookie` headers.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Lax`, `Secure` when `secure`; `max_age`
/// 0 removes the cookie.
fn set_cookie(name: &str, value: &str, path: &str, max_age: u64, secure: bool) -> String {
    let secure = if secure { "; Secure" } else { "" };
    format!("{name}={value}; Path={path}; Max-Age={max_age}; HttpOnly; SameSite=Lax{secure}")
}

/// Whether a session cookie value has the shape of one this server makes.
fn well_formed(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_change(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Signed-in people's sessions, kept in the store's KV so that every server of a deployment
/// knows them.
pub struct Sessions {
    store: Arc<dyn KvStore>,
    lifetime: Duration,
    secure: bool,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("lifetime", &self.lifetime)
            .field("secure", &self.secure)
            .finish_non_exhaustive()
    }
}

impl Sessions {
    /// Sessions in `store`, as `[auth.oidc]` says (lifetime, `Secure` cookies).
    pub fn new(store: Arc<dyn KvStore>, config: &OidcConfig) -> Self {
        Sessions {
            store,
            lifetime: Duration::from_secs(config.session_secs),
            secure: config.secure_cookie(),
        }
    }

    /// The session the request's cookie names, if it names one that has not ended.
    async fn load(&self, headers: &HeaderMap) -> Result<Option<(String, Session)>, Problem> {
        let Some(id) = cookie(headers, SESSION_COOKIE) else {
            return Ok(None);
        };
        if !well_formed(id) {
            return Ok(None);
        }
        let key = key_of(id);
        let Some(value) = self
            .store
            .kv_get(SESSIONS, &key)
            .await
            .map_err(|e| unavailable("check the session", &e))?
        else {
            return Ok(None);
        };
        let Ok(session) = serde_json::from_value::<Session>(value) else {
            tracing::warn!("a stored session cannot be read; it is removed");
            self.forget(&key).await;
            return Ok(None);
        };
        if session.expires_at <= flowbot_core::clock::now() {
            self.forget(&key).await;
            return Ok(None);
        }
        Ok(Some((key, session)))
    }

    /// Remove an ended session now (else the hourly pruning does).
    async fn forget(&self, key: &str) {
        if let Err(e) = self.store.kv_delete(SESSIONS, key).await {
            tracing::warn!(error = %e, "cannot remove an ended session; pruning will");
        }
    }

    /// Who the request's session cookie stands for: `None` without the cookie; `401` when
    /// the session has ended (or never was); `403` when its role is gone from the server, or
    /// when a change does not carry the session's CSRF token in `X-CSRF-Token`.
    pub async fn identify(
        &self,
        method: &Method,
        headers: &HeaderMap,
        roles: &Roles,
    ) -> Option<Result<Identity, Response>> {
        cookie(headers, SESSION_COOKIE)?;
        let session = match self.load(headers).await {
            Ok(Some((_, s))) => s,
            Ok(None) => {
                return Some(Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "the session has ended (signed out or expired): sign in again at /auth/login",
                )
                .into_response()));
            }
            Err(p) => return Some(Err(p.into_response())),
        };
        let Some(role) = roles.get(&session.role) else {
            return Some(Err(Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "the session's role '{}' is not defined on this server",
                    session.role
                ),
            )
            .into_response()));
        };
        if is_change(method) {
            let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
            if !sent.is_some_and(|t| same(t, &session.csrf)) {
                return Some(Err(Problem::new(
                    StatusCode::FORBIDDEN,
                    "a change made with the session cookie must carry the session's CSRF token in X-CSRF-Token (GET /auth/session gives it)",
                )
                .into_response()));
            }
        }
        Some(Ok(Identity {
            subject: session.subject,
            role,
            via: Via::Session,
        }))
    }

    /// Make a session; its id (the cookie's value) and the session.
    async fn create(
        &self,
        subject: String,
        role: String,
        name: Option<String>,
        email: Option<String>,
    ) -> Result<(String, Session), Problem> {
        let id = random_hex(32)?;
        let now = flowbot_core::clock::now();
        let session = Session {
            subject,
            role,
            csrf: random_hex(32)?,
            name,
            email,
            signed_in_at: now,
            expires_at: now
                + chrono::Duration::from_std(self.lifetime)
                    .unwrap_or_else(|_| chrono::Duration::hours(8)),
        };
        let value = serde_json::to_value(&session).map_err(|e| {
            Problem::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot store the session: {e}"),
            )
        })?;
        self.store
            .kv_set(SESSIONS, &key_of(&id), &value)
            .await
            .map_err(|e| unavailable("store the session", &e))?;
        Ok((id, session))
    }

    /// Remove the sessions and sign-ins under way that have expired; how many.
    pub async fn prune(&self) -> Result<usize, flowbot_core::StoreError> {
        let now = flowbot_core::clock::now();
        let mut removed = 0;
        for namespace in [SESSIONS, LOGINS] {
            for (key, value) in self.store.kv_list(namespace).await? {
                let ended = value
                    .get("expires_at")
                    .and_then(|v| serde_json::from_value::<DateTime<Utc>>(v.clone()).ok())
                    .is_none_or(|at| at <= now);
                if ended && self.store.kv_delete(namespace, &key).await? {
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// [`Sessions::prune`] at start and every `every` until `stop`.
    pub async fn prune_every(
        self: Arc<Self>,
        every: Duration,
        stop: flowbot_core::CancellationToken,
    ) {
        loop {
            match self.prune().await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "expired sign-in sessions removed"),
                Err(e) => tracing::warn!(error = %e, "cannot remove expired sign-in sessions"),
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

fn unavailable(what: &str, e: &flowbot_core::StoreError) -> Problem {
    tracing::warn!(error = %e, "cannot {what}");
    Problem::unavailable(format!("cannot {what} now: the database is unavailable"))
}

/// The provider's discovery document and keys, with when they were read.
type Discovered = (Instant, Arc<CoreProviderMetadata>);

/// Sign-in through an OpenID Connect provider: the routes' state.
pub struct Oidc {
    issuer: IssuerUrl,
    client_id: ClientId,
    client_secret: Option<ClientSecret>,
    redirect: RedirectUrl,
    scopes: Vec<String>,
    subject_claim: String,
    role_claim: String,
    roles_map: std::collections::BTreeMap<String, String>,
    http: reqwest::Client,
    discovered: tokio::sync::RwLock<Option<Discovered>>,
    sessions: Arc<Sessions>,
    roles: Arc<Roles>,
    limits: Arc<Limits>,
    attempts: Option<Limiter<IpAddr>>,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id.as_str())
            .finish_non_exhaustive()
    }
}

/// Why the provider cannot be used now (`503`), logged in full.
fn provider_down(detail: &str) -> Problem {
    tracing::warn!(error = %detail, "the identity provider cannot be used");
    Problem::unavailable(format!(
        "cannot sign in now: the identity provider is unavailable ({detail})"
    ))
}

/// At most `n` characters of `s`, for text the provider or the browser sent.
fn clip(s: &str, n: usize) -> String {
    let mut out: String = s.chars().take(n).filter(|c| !c.is_control()).collect();
    if s.chars().count() > n {
        out.push('…');
    }
    out
}

impl Oidc {
    /// Sign-in as `[auth.oidc]` says, with the gate's sessions, roles and limits.
    pub fn new(
        config: &OidcConfig,
        gate: &super::auth::Gate,
    ) -> Result<Self, crate::config::ConfigError> {
        let bad = |key: &str, e: &dyn std::fmt::Display| crate::config::ConfigError {
            path: format!("auth.oidc.{key}"),
            message: e.to_string(),
        };
        let sessions = gate.sessions.clone().ok_or_else(|| {
            bad(
                "issuer",
                &"the admin API's gate keeps no sessions (an [auth.oidc] gate is needed)",
            )
        })?;
        let http = reqwest::Client::builder()
            // Following redirects would let the provider's answers send us anywhere.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| bad("issuer", &e))?;
        Ok(Oidc {
            issuer: IssuerUrl::new(config.issuer.clone()).map_err(|e| bad("issuer", &e))?,
            client_id: ClientId::new(config.client_id.clone()),
            client_secret: config.client_secret.clone().map(ClientSecret::new),
            redirect: RedirectUrl::new(config.redirect_url.clone())
                .map_err(|e| bad("redirect_url", &e))?,
            scopes: config.scopes.clone(),
            subject_claim: config.subject_claim.clone(),
            role_claim: config.role_claim.clone(),
            roles_map: config.roles.clone(),
            http,
            discovered: tokio::sync::RwLock::new(None),
            sessions,
            roles: gate.roles.clone(),
            limits: gate.limits.clone(),
            attempts: Limiter::per_minute(config.attempts_per_address_per_minute),
        })
    }

    /// The provider's discovery document and keys: as read within the hour, or read now
    /// (also when `fresh`).
    async fn metadata(&self, fresh: bool) -> Result<Arc<CoreProviderMetadata>, Problem> {
        if !fresh
            && let Some((at, m)) = self.discovered.read().await.as_ref()
            && at.elapsed() < METADATA_TTL
        {
            return Ok(m.clone());
        }
        let http = self.http.clone();
        let client = move |r| send(http.clone(), r);
        let m = CoreProviderMetadata::discover_async(self.issuer.clone(), &client)
            .await
            .map_err(|e| provider_down(&error_chain(&e)))?;
        let m = Arc::new(m);
        *self.discovered.write().await = Some((Instant::now(), m.clone()));
        Ok(m)
    }

    fn client(&self, metadata: &CoreProviderMetadata) -> Client {
        Client::from_provider_metadata(
            metadata.clone(),
            self.client_id.clone(),
            self.client_secret.clone(),
        )
        .set_redirect_uri(self.redirect.clone())
    }

    /// The sign-in limits' `429`, if `client` is over one: attempts per address, or too
    /// many failed authentications.
    fn over_limit(&self, client: Option<IpAddr>) -> Option<Response> {
        if let Err(wait) = Limits::by_address(self.attempts.as_ref(), client) {
            return Some(too_many(
                wait,
                "too many sign-in attempts from this address",
            ));
        }
        if let (Some(f), Some(c)) = (&self.limits.auth_failures, client)
            && !c.is_loopback()
            && let Some(wait) = f.blocked(c)
        {
            return Some(too_many(
                wait,
                "too many failed authentications from this address",
            ));
        }
        None
    }

    /// A refused callback counts as a failed authentication of the client's address.
    fn failed(&self, client: Option<IpAddr>) {
        if let (Some(f), Some(c)) = (&self.limits.auth_failures, client)
            && !c.is_loopback()
            && f.failed(c).is_some()
        {
            tracing::warn!(client = %c, "too many failed sign-ins; refusing this address for a while");
        }
    }

    /// The ID token's claims, verified; on a key the cached JWK Set lacks, once more with
    /// the provider's keys read again.
    async fn verify(
        &self,
        metadata: Arc<CoreProviderMetadata>,
        tokens: &Tokens,
        nonce: &Nonce,
    ) -> Result<Map<String, Value>, Problem> {
        use openidconnect::{ClaimsVerificationError as C, SignatureVerificationError as S};
        let id_token = tokens.id_token().ok_or_else(|| {
            Problem::new(
                StatusCode::BAD_GATEWAY,
                "the identity provider sent no ID token: is 'openid' among the client's scopes there?",
            )
        })?;
        let mut metadata = metadata;
        for attempt in 0..2 {
            let client = self.client(&metadata);
            let verifier = client.id_token_verifier().set_allowed_algs(ALGORITHMS);
            let claims = match id_token.claims(&verifier, nonce) {
                Ok(c) => c,
                Err(C::SignatureVerification(S::NoMatchingKey)) if attempt == 0 => {
                    metadata = self.metadata(true).await?;
                    continue;
                }
                Err(e) => {
                    tracing::info!(error = %error_chain(&e), "ID token refused");
                    return Err(Problem::new(
                        StatusCode::UNAUTHORIZED,
                        format!("the ID token was refused: {}", error_chain(&e)),
                    ));
                }
            };
            if let Some(expected) = claims.access_token_hash() {
                let actual = id_token
                    .signing_alg()
                    .ok()
                    .zip(id_token.signing_key(&verifier).ok())
                    .and_then(|(alg, key)| {
                        AccessTokenHash::from_token(tokens.access_token(), alg, key).ok()
                    });
                if actual.as_ref() != Some(expected) {
                    return Err(Problem::new(
                        StatusCode::UNAUTHORIZED,
                        "the ID token's at_hash does not match the access token",
                    ));
                }
            }
            // The standard claims and the provider's own (a role claim), as one object.
            return match serde_json::to_value(claims) {
                Ok(Value::Object(all)) => Ok(all),
                _ => Err(Problem::new(
                    StatusCode::BAD_GATEWAY,
                    "the ID token's claims cannot be read",
                )),
            };
        }
        Err(Problem::new(
            StatusCode::UNAUTHORIZED,
            "the ID token is signed with a key the identity provider does not publish",
        ))
    }
}

/// An error with its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A `303 See Other` to `location`, setting `cookies`, never cached.
fn see_other(location: &str, cookies: &[String]) -> Response {
    let mut res = StatusCode::SEE_OTHER.into_response();
    let h = res.headers_mut();
    if let Ok(v) = HeaderValue::from_str(location) {
        h.insert(header::LOCATION, v);
    }
    for c in cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    res
}

/// Where the browser may be sent after signing in: a path of this server.
fn local_path(p: &str) -> Result<String, Problem> {
    let ok = p.starts_with('/')
        && !p.starts_with("//")
        && !p.starts_with("/\\")
        && p.len() <= 2000
        && !p.chars().any(|c| c.is_control() || c == '\\');
    if ok {
        Ok(p.to_owned())
    } else {
        Err(Problem::bad_request(format!(
            "return_to must be a path of this server such as /chat, got '{}'",
            clip(p, 100)
        )))
    }
}

/// `GET /auth/login`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct LoginQuery {
    /// Where to go once signed in: a path of this server (default `/auth/session`).
    return_to: Option<String>,
}

/// Start signing in: a redirect to the identity provider.
#[utoipa::path(get, path = "/auth/login", tag = "auth", params(LoginQuery),
    responses((status = 303, description = "to the identity provider"),
        (status = 400, body = super::ProblemDoc), (status = 429, body = super::ProblemDoc),
        (status = 503, body = super::ProblemDoc)))]
async fn login(State(o): State<Arc<Oidc>>, req: Request) -> Response {
    let client = o.limits.client(&req);
    if let Some(res) = o.over_limit(client) {
        return res;
    }
    let (parts, _) = req.into_parts();
    match start(&o, &parts).await {
        Ok(res) => res,
        Err(p) => p.into_response(),
    }
}

async fn start(o: &Oidc, req: &axum::http::request::Parts) -> Result<Response, Problem> {
    let q = Query::<LoginQuery>::try_from_uri(&req.uri)
        .map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))?;
    let return_to = local_path(q.return_to.as_deref().unwrap_or("/auth/session"))?;
    let metadata = o.metadata(false).await?;
    let client = o.client(&metadata);
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    let mut auth = client
        .authorize_url(
            CoreAuthenticationFlow::AuthorizationCode,
            CsrfToken::new_random,
            Nonce::new_random,
        )
        .set_pkce_challenge(challenge);
    for s in &o.scopes {
        auth = auth.add_scope(Scope::new(s.clone()));
    }
    let (url, state, nonce) = auth.url();
    let pending = Pending {
        pkce_verifier: verifier.secret().clone(),
        nonce: nonce.secret().clone(),
        return_to,
        expires_at: flowbot_core::clock::now()
            + chrono::Duration::seconds(LOGIN_TTL.as_secs() as i64),
    };
    let value = serde_json::to_value(&pending).map_err(|e| {
        Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot keep the sign-in: {e}"),
        )
    })?;
    o.sessions
        .store
        .kv_set(LOGINS, &key_of(state.secret()), &value)
        .await
        .map_err(|e| unavailable("start a sign-in", &e))?;
    let cookie = set_cookie(
        LOGIN_COOKIE,
        state.secret(),
        CALLBACK_PATH,
        LOGIN_TTL.as_secs(),
        o.sessions.secure,
    );
    Ok(see_other(url.as_str(), &[cookie]))
}

/// What the provider sends back.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct CallbackQuery {
    /// The authorization code.
    code: Option<String>,
    /// The `state` sent with the sign-in.
    state: Option<String>,
    /// The provider's error, when it refused.
    error: Option<String>,
    /// The provider's explanation.
    error_description: Option<String>,
    /// The issuer answering (RFC 9207), when the provider says.
    iss: Option<String>,
}

/// The provider's answer: check it, verify the ID token, and make a session (a cookie).
#[utoipa::path(get, path = "/auth/callback", tag = "auth", params(CallbackQuery),
    responses((status = 303, description = "signed in: the session cookie, and on to `return_to`"),
        (status = 400, body = super::ProblemDoc), (status = 401, body = super::ProblemDoc),
        (status = 403, body = super::ProblemDoc), (status = 429, body = super::ProblemDoc),
        (status = 503, body = super::ProblemDoc)))]
async fn callback(State(o): State<Arc<Oidc>>, req: Request) -> Response {
    let client = o.limits.client(&req);
    if let Some(res) = o.over_limit(client) {
        return res;
    }
    let (parts, _) = req.into_parts();
    match finish(&o, &parts).await {
        Ok(res) => res,
        Err(p) => {
            let res = p.into_response();
            if res.status().is_client_error() {
                o.failed(client);
            }
            res
        }
    }
}

async fn finish(o: &Oidc, req: &axum::http::request::Parts) -> Result<Response, Problem> {
    let Query(q) = Query::<CallbackQuery>::try_from_uri(&req.uri)
        .map_err(|e| Problem::bad_request(format!("invalid query: {}", e.body_text())))?;
    if let Some(error) = &q.error {
        let why = q
            .error_description
            .as_deref()
            .map(|d| format!(" ({})", clip(d, 200)))
            .unwrap_or_default();
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "the identity provider refused the sign-in: {}{why}",
                clip(error, 100)
            ),
        ));
    }
    if let Some(iss) = &q.iss
        && iss.trim_end_matches('/') != o.issuer.as_str().trim_end_matches('/')
    {
        return Err(Problem::bad_request(format!(
            "the callback comes from the issuer '{}', not from this server's provider",
            clip(iss, 200)
        )));
    }
    let state = q
        .state
        .as_deref()
        .ok_or_else(|| Problem::bad_request("the callback has no 'state'"))?;
    let held = cookie(&req.headers, LOGIN_COOKIE).ok_or_else(|| {
        Problem::bad_request(
            "no sign-in is under way in this browser (its cookie is missing): start at /auth/login",
        )
    })?;
    if !same(held, state) {
        return Err(Problem::bad_request(
            "the callback's state is not the one this browser's sign-in sent: start again at /auth/login",
        ));
    }
    // The sign-in is used once: whoever removes it goes on.
    let store = &o.sessions.store;
    let key = key_of(state);
    let stored = store
        .kv_get(LOGINS, &key)
        .await
        .map_err(|e| unavailable("finish the sign-in", &e))?;
    let removed = store
        .kv_delete(LOGINS, &key)
        .await
        .map_err(|e| unavailable("finish the sign-in", &e))?;
    let pending = stored
        .filter(|_| removed)
        .and_then(|v| serde_json::from_value::<Pending>(v).ok())
        .filter(|p| p.expires_at > flowbot_core::clock::now())
        .ok_or_else(|| {
            Problem::bad_request(
                "this sign-in has expired or was already used: start again at /auth/login",
            )
        })?;
    let code = q
        .code
        .ok_or_else(|| Problem::bad_request("the callback has no 'code'"))?;
    let metadata = o.metadata(false).await?;
    let client = o.client(&metadata);
    let http = o.http.clone();
    let send_with = move |r| send(http.clone(), r);
    let tokens = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| provider_down(&format!("no token endpoint: {e}")))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
        .request_async(&send_with)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                tracing::info!(error = %r, "the identity provider refused the code");
                Problem::new(
                    StatusCode::UNAUTHORIZED,
                    format!("the identity provider refused the authorization code: {r}"),
                )
            }
            other => provider_down(&error_chain(&other)),
        })?;
    let claims = o
        .verify(metadata, &tokens, &Nonce::new(pending.nonce))
        .await?;
    let subject = claims
        .get(&o.subject_claim)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| {
            Problem::new(
                StatusCode::UNAUTHORIZED,
                format!("the ID token has no '{}' claim", o.subject_claim),
            )
        })?
        .to_owned();
    let role = super::auth::claimed_role(&o.role_claim, &o.roles_map, &claims)
        .filter(|r| o.roles.get(r).is_some())
        .ok_or_else(|| {
            tracing::info!(%subject, "sign-in refused: the role claim names no role");
            Problem::new(
                StatusCode::FORBIDDEN,
                format!(
                    "your '{}' claim names no role of this server: ask an administrator for access",
                    o.role_claim
                ),
            )
        })?;
    let text = |k: &str| claims.get(k).and_then(Value::as_str).map(str::to_owned);
    let (id, session) = o
        .sessions
        .create(subject, role, text("name"), text("email"))
        .await?;
    tracing::info!(subject = %session.subject, role = %session.role, "signed in");
    let cookies = [
        set_cookie(
            SESSION_COOKIE,
            &id,
            "/",
            o.sessions.lifetime.as_secs(),
            o.sessions.secure,
        ),
        set_cookie(LOGIN_COOKIE, "", CALLBACK_PATH, 0, o.sessions.secure),
    ];
    Ok(see_other(&pending.return_to, &cookies))
}

/// Who is signed in.
#[derive(Serialize, ToSchema)]
struct SessionInfo {
    subject: String,
    role: String,
    name: Option<String>,
    email: Option<String>,
    /// Send it in `X-CSRF-Token` with every change made with the session cookie.
    csrf_token: String,
    #[schema(value_type = String, format = DateTime)]
    signed_in_at: DateTime<Utc>,
    #[schema(value_type = String, format = DateTime)]
    expires_at: DateTime<Utc>,
}

fn signed_out() -> Problem {
    Problem::new(
        StatusCode::UNAUTHORIZED,
        "nobody is signed in here: sign in at /auth/login",
    )
}

/// Who is signed in with this browser's session cookie, and the session's CSRF token.
#[utoipa::path(get, path = "/auth/session", tag = "auth",
    responses((status = 200, body = SessionInfo), (status = 401, body = super::ProblemDoc)))]
async fn session(State(o): State<Arc<Oidc>>, headers: HeaderMap) -> Response {
    match o.sessions.load(&headers).await {
        Ok(Some((_, s))) => {
            let mut res = axum::Json(SessionInfo {
                subject: s.subject,
                role: s.role,
                name: s.name,
                email: s.email,
                csrf_token: s.csrf,
                signed_in_at: s.signed_in_at,
                expires_at: s.expires_at,
            })
            .into_response();
            res.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            res
        }
        Ok(None) => signed_out().into_response(),
        Err(p) => p.into_response(),
    }
}

/// Sign out: the session ends on every server, and the cookie is removed. It needs the
/// session's CSRF token in `X-CSRF-Token`.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    responses((status = 200, body = super::Status), (status = 401, body = super::ProblemDoc),
        (status = 403, body = super::ProblemDoc)))]
async fn logout(State(o): State<Arc<Oidc>>, headers: HeaderMap) -> Response {
    let (key, s) = match o.sessions.load(&headers).await {
        Ok(Some(found)) => found,
        Ok(None) => return signed_out().into_response(),
        Err(p) => return p.into_response(),
    };
    let sent = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    if !sent.is_some_and(|t| same(t, &s.csrf)) {
        return Problem::new(
            StatusCode::FORBIDDEN,
            "signing out needs the session's CSRF token in X-CSRF-Token (GET /auth/session gives it)",
        )
        .into_response();
    }
    if let Err(e) = o.sessions.store.kv_delete(SESSIONS, &key).await {
        return unavailable("end the session", &e).into_response();
    }
    tracing::info!(subject = %s.subject, "signed out");
    let mut res = axum::Json(super::Status {
        status: "signed out".into(),
    })
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&set_cookie(SESSION_COOKIE, "", "/", 0, o.sessions.secure))
    {
        res.headers_mut().insert(header::SET_COOKIE, v);
    }
    res
}

/// The sign-in routes (`/auth/…`) and their OpenAPI paths. They stand outside the admin
/// API's gate (they are how a person gets a credential), behind the public endpoints'
/// limit of requests per address.
pub fn router(oidc: Arc<Oidc>) -> (axum::Router, utoipa::openapi::OpenApi) {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let limits = oidc.limits.clone();
    let (router, doc) = OpenApiRouter::new()
        .routes(routes!(login))
        .routes(routes!(callback))
        .routes(routes!(session))
        .routes(routes!(logout))
        .with_state(oidc)
        .split_for_parts();
    let router = router.route_layer(axum::middleware::from_fn_with_state(
        limits,
        super::limits::public,
    ));
    (router, doc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_and_written() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; flowbot_session=abc"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "flowbot"), None);
        assert_eq!(
            set_cookie(SESSION_COOKIE, "x", "/", 60, true),
            "flowbot_session=x; Path=/; Max-Age=60; HttpOnly; SameSite=Lax; Secure"
        );
        assert!(!set_cookie(SESSION_COOKIE, "x", "/", 60, false).contains("Secure"));
    }

    #[test]
    fn only_local_paths_are_return_targets() {
        assert_eq!(local_path("/chat?x=1").expect("local"), "/chat?x=1");
        for bad in [
            "https://evil.example/",
            "//evil.example",
            "/\\evil.example",
            "chat",
            "/a\nb",
        ] {
            let e = local_path(bad).expect_err(bad);
            assert_eq!(e.status, 400, "{bad}");
        }
    }

    #[test]
    fn session_ids_have_one_shape_and_secrets_compare_whole() {
        let id = random_hex(32).expect("random");
        assert!(well_formed(&id));
        assert!(!well_formed("abc"));
        assert!(!well_formed(&"z".repeat(64)));
        assert_ne!(key_of(&id), id);
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
