//! JSON Web Token verification (feature `jwt`).
//!
//! A [`JwtVerifier`] checks a bearer token's signature, its algorithm against an allow-list,
//! its `exp` (required) and `nbf` (when present) with a leeway for clock skew, and its
//! issuer and audience when configured, and hands back the verified claims. What the claims
//! mean (roles, user ids) is up to the caller.
//!
//! Keys come from one of two places ([`JwtKeys`]):
//!
//! - **shared secrets** for the HMAC algorithms (HS256, HS384, HS512): a token verifies
//!   against any of them, so a new secret can be added before the old one is retired;
//! - **a JWKS URL** for the public-key algorithms (RS*, PS*, ES256, ES384, EdDSA): the key
//!   set is fetched on first use and cached; a token naming a key id (`kid`) the cache does
//!   not know makes it fetch the set again (the provider rotated its keys), but at most once
//!   per [`JwksSource::min_refetch_interval`], so a flood of made-up key ids cannot make us
//!   hammer the provider; the set is also fetched again after [`JwksSource::max_age`].
//!   Concurrent verifications waiting for the set share one fetch.
//!
//! Shared secrets and public keys never mix: a JWKS verifier refuses the HMAC algorithms and
//! ignores symmetric (`oct`) keys in the set, so a token "signed" with a public key as an
//! HMAC secret is refused, and `alg: none` is refused by every verifier.
//!
//! ```no_run
//! # async fn example(token: &str) -> Result<(), flowbot_core::jwt::JwtError> {
//! use std::time::Duration;
//! use flowbot_core::jwt::{JwtConfig, JwtVerifier};
//!
//! let verifier = JwtVerifier::new(
//!     JwtConfig::jwks("https://login.example.com/.well-known/jwks.json")
//!         .issuer("https://login.example.com/")
//!         .audience("flowbot")
//!         .leeway(Duration::from_secs(30)),
//! )?;
//! let claims = verifier.verify(token).await?;
//! let user = claims.get("sub").and_then(|v| v.as_str());
//! # let _ = user;
//! # Ok(())
//! # }
//! ```
//!
//! A token that verified is remembered (by its SHA-256) for up to [`VERIFIED_TTL`], never
//! past its own `exp` (with the leeway), so a client sending the same token with every
//! request pays for the signature and the claims' parsing once. With a JWKS, never longer
//! than [`JwksSource::max_age`], and every remembered token is checked anew once the set is
//! fetched again, so a key the provider retired stops working at the next fetch.
//!
//! Errors ([`JwtError`]) say what was wrong with a token and never contain the token.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, Validation};
use serde_json::{Map, Value};
use tokio::time::Instant;

/// How long a verified token is remembered at most.
pub const VERIFIED_TTL: Duration = Duration::from_secs(30);
/// Most verified tokens remembered.
const VERIFIED_MAX: usize = 10_000;

/// Verified claims by the SHA-256 of their token, with when to forget them: the Unix time
/// after which the token is expired (its `exp` plus the leeway), a time after it was
/// verified, and a new key set.
#[derive(Default)]
struct Verified {
    entries: HashMap<[u8; 32], VerifiedToken>,
}

/// A verified token's claims, the Unix time it expires (with the leeway), when it was
/// verified, and the key set's generation it was verified with.
type VerifiedToken = (Arc<Map<String, Value>>, u64, Instant, u64);

impl Verified {
    /// The claims of a token verified less than `ttl` ago with the key set of
    /// `generation`, if still valid at Unix time `now`.
    fn get(
        &self,
        digest: &[u8; 32],
        now: u64,
        ttl: Duration,
        generation: u64,
    ) -> Option<Arc<Map<String, Value>>> {
        self.entries
            .get(digest)
            .filter(|(_, expires, at, g)| now <= *expires && at.elapsed() < ttl && *g == generation)
            .map(|(claims, ..)| Arc::clone(claims))
    }

    /// Remember a verified token until Unix time `expires` (in `token`) or for `ttl`.
    fn insert(&mut self, digest: [u8; 32], token: VerifiedToken, now: u64, ttl: Duration) {
        if self.entries.len() >= VERIFIED_MAX {
            let generation = token.3;
            self.entries
                .retain(|_, (_, e, at, g)| now <= *e && at.elapsed() < ttl && *g == generation);
            if self.entries.len() >= VERIFIED_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(digest, token);
    }
}

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Largest JWKS document accepted, in bytes.
pub const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// Shortest HMAC secret accepted, in bytes: RFC 7518 §3.2 asks for a key at least as long as
/// the hash output (32 bytes for HS256).
pub const MIN_SECRET_BYTES: usize = 32;

/// Largest leeway accepted.
pub const MAX_LEEWAY: Duration = Duration::from_secs(24 * 3600);

/// Why a token was refused, or a verifier could not be built.
///
/// Messages say what was wrong and never contain the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not a well-formed JWT (three base64url parts of JSON), or a claim of the wrong type.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token's `alg` is not one this verifier accepts.
    #[error("the token's algorithm {0} is not allowed")]
    AlgorithmNotAllowed(String),
    /// `exp` is past (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet (nbf is in the future)")]
    NotYetValid,
    /// A claim the verifier requires (`exp`, or `iss`/`aud` when configured) is missing or
    /// not of its type (`exp` a number of seconds).
    #[error("the token lacks a valid '{0}' claim")]
    MissingClaim(String),
    /// `iss` is not the configured issuer.
    #[error("the token's issuer (iss) is not the expected one")]
    WrongIssuer,
    /// `aud` does not name the configured audience.
    #[error("the token's audience (aud) is not the expected one")]
    WrongAudience,
    /// No configured key (or key of the set) verifies the signature.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// The key set has no key for the token's `kid` and algorithm, even after fetching it
    /// again (or it was fetched too recently to fetch again).
    #[error("no key for the token's key id {}", kid.as_deref().map_or_else(|| "(none given)".to_owned(), |k| format!("{k:?}")))]
    UnknownKey {
        /// The token's key id (at most 64 characters of it).
        kid: Option<String>,
    },
    /// The key set could not be fetched (and none is cached).
    #[error("JWKS unavailable: {0}")]
    Jwks(String),
    /// The settings are invalid.
    #[error("JWT settings: {0}")]
    Config(String),
}

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(clippy::upper_case_acronyms)]
#[non_exhaustive]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256.
    HS256,
    /// HMAC with SHA-384.
    HS384,
    /// HMAC with SHA-512.
    HS512,
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    RS256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    RS384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    RS512,
    /// RSASSA-PSS with SHA-256.
    PS256,
    /// RSASSA-PSS with SHA-384.
    PS384,
    /// RSASSA-PSS with SHA-512.
    PS512,
    /// ECDSA on P-256 with SHA-256.
    ES256,
    /// ECDSA on P-384 with SHA-384.
    ES384,
    /// Ed25519.
    EdDSA,
}

impl JwtAlgorithm {
    /// Every algorithm, in the order above.
    pub const ALL: [JwtAlgorithm; 12] = [
        JwtAlgorithm::HS256,
        JwtAlgorithm::HS384,
        JwtAlgorithm::HS512,
        JwtAlgorithm::RS256,
        JwtAlgorithm::RS384,
        JwtAlgorithm::RS512,
        JwtAlgorithm::PS256,
        JwtAlgorithm::PS384,
        JwtAlgorithm::PS512,
        JwtAlgorithm::ES256,
        JwtAlgorithm::ES384,
        JwtAlgorithm::EdDSA,
    ];

    /// The name in a token's header (`HS256`, `EdDSA`).
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::HS256 => "HS256",
            JwtAlgorithm::HS384 => "HS384",
            JwtAlgorithm::HS512 => "HS512",
            JwtAlgorithm::RS256 => "RS256",
            JwtAlgorithm::RS384 => "RS384",
            JwtAlgorithm::RS512 => "RS512",
            JwtAlgorithm::PS256 => "PS256",
            JwtAlgorithm::PS384 => "PS384",
            JwtAlgorithm::PS512 => "PS512",
            JwtAlgorithm::ES256 => "ES256",
            JwtAlgorithm::ES384 => "ES384",
            JwtAlgorithm::EdDSA => "EdDSA",
        }
    }

    /// Whether it is an HMAC (shared secret) algorithm.
    pub fn is_hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::HS256 | JwtAlgorithm::HS384 | JwtAlgorithm::HS512
        )
    }

    fn to_jsonwebtoken(self) -> Algorithm {
        match self {
            JwtAlgorithm::HS256 => Algorithm::HS256,
            JwtAlgorithm::HS384 => Algorithm::HS384,
            JwtAlgorithm::HS512 => Algorithm::HS512,
            JwtAlgorithm::RS256 => Algorithm::RS256,
            JwtAlgorithm::RS384 => Algorithm::RS384,
            JwtAlgorithm::RS512 => Algorithm::RS512,
            JwtAlgorithm::PS256 => Algorithm::PS256,
            JwtAlgorithm::PS384 => Algorithm::PS384,
            JwtAlgorithm::PS512 => Algorithm::PS512,
            JwtAlgorithm::ES256 => Algorithm::ES256,
            JwtAlgorithm::ES384 => Algorithm::ES384,
            JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        }
    }
}

impl fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JwtAlgorithm {
    type Err = JwtError;

    fn from_str(s: &str) -> Result<Self, JwtError> {
        JwtAlgorithm::ALL
            .into_iter()
            .find(|a| a.as_str() == s)
            .ok_or_else(|| {
                JwtError::Config(format!(
                    "unknown algorithm '{s}'; expected one of {}",
                    JwtAlgorithm::ALL.map(JwtAlgorithm::as_str).join(", ")
                ))
            })
    }
}

/// Where a JWKS comes from and how long it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwksSource {
    /// The `http(s)://` URL of the JWK Set.
    pub url: String,
    /// The shortest time between two fetches (an unknown `kid` does not fetch sooner;
    /// default 30 s).
    pub min_refetch_interval: Duration,
    /// How long a fetched set is used before it is fetched again (default 1 hour).
    pub max_age: Duration,
    /// Time limit of one fetch (default 10 s).
    pub timeout: Duration,
}

impl JwksSource {
    /// The set at `url`, with the default timings.
    pub fn new(url: impl Into<String>) -> Self {
        JwksSource {
            url: url.into(),
            min_refetch_interval: Duration::from_secs(30),
            max_age: Duration::from_secs(3600),
            timeout: Duration::from_secs(10),
        }
    }

    /// Set [`min_refetch_interval`](Self::min_refetch_interval).
    pub fn min_refetch_interval(mut self, interval: Duration) -> Self {
        self.min_refetch_interval = interval;
        self
    }

    /// Set [`max_age`](Self::max_age).
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Set [`timeout`](Self::timeout).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// The keys a verifier checks signatures with.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwtKeys {
    /// HMAC secrets (each at least [`MIN_SECRET_BYTES`]); a token verifies against any.
    Secrets(Vec<Vec<u8>>),
    /// A JWK Set fetched over HTTP.
    Jwks(JwksSource),
}

impl fmt::Debug for JwtKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Secrets are never shown.
            JwtKeys::Secrets(s) => write!(f, "Secrets({} hidden)", s.len()),
            JwtKeys::Jwks(source) => f.debug_tuple("Jwks").field(source).finish(),
        }
    }
}

/// What a [`JwtVerifier`] accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JwtConfig {
    /// The keys.
    pub keys: JwtKeys,
    /// The algorithms accepted; empty: HS256 for secrets, RS256 and ES256 for a JWKS.
    pub algorithms: Vec<JwtAlgorithm>,
    /// The issuer `iss` must be, if set (then `iss` is required).
    pub issuer: Option<String>,
    /// The audience `aud` must name, if set (then `aud` is required).
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf` (default 60 s, at most [`MAX_LEEWAY`]).
    pub leeway: Duration,
}

impl JwtConfig {
    /// Tokens signed with any of `secrets` (HMAC).
    pub fn secrets<S: AsRef<[u8]>>(secrets: impl IntoIterator<Item = S>) -> Self {
        JwtConfig::with_keys(JwtKeys::Secrets(
            secrets.into_iter().map(|s| s.as_ref().to_vec()).collect(),
        ))
    }

    /// Tokens signed with a key of the JWK Set at `url` (default timings).
    pub fn jwks(url: impl Into<String>) -> Self {
        JwtConfig::with_keys(JwtKeys::Jwks(JwksSource::new(url)))
    }

    /// Tokens signed with `keys`.
    pub fn with_keys(keys: JwtKeys) -> Self {
        JwtConfig {
            keys,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
        }
    }

    /// Accept only `algorithms`.
    pub fn algorithms(mut self, algorithms: impl IntoIterator<Item = JwtAlgorithm>) -> Self {
        self.algorithms = algorithms.into_iter().collect();
        self
    }

    /// Require `iss` to be `issuer`.
    pub fn issuer(mut self, issuer: impl Into<String>) -> Self {
        self.issuer = Some(issuer.into());
        self
    }

    /// Require `aud` to name `audience`.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Allow `leeway` of clock skew on `exp` and `nbf`.
    pub fn leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }

    /// The algorithms in force: the configured ones, or the keys' defaults.
    fn effective_algorithms(&self) -> Vec<JwtAlgorithm> {
        if !self.algorithms.is_empty() {
            return self.algorithms.clone();
        }
        match self.keys {
            JwtKeys::Secrets(_) => vec![JwtAlgorithm::HS256],
            JwtKeys::Jwks(_) => vec![JwtAlgorithm::RS256, JwtAlgorithm::ES256],
        }
    }

    /// Check the settings, naming what is wrong.
    pub fn validate(&self) -> Result<(), JwtError> {
        let config = |m: String| Err(JwtError::Config(m));
        match &self.keys {
            JwtKeys::Secrets(secrets) => {
                if secrets.is_empty() {
                    return config("at least one shared secret is needed".into());
                }
                if let Some(i) = secrets.iter().position(|s| s.len() < MIN_SECRET_BYTES) {
                    return config(format!(
                        "shared secret {} is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                        i + 1,
                        secrets[i].len()
                    ));
                }
                if let Some(a) = self.algorithms.iter().find(|a| !a.is_hmac()) {
                    return config(format!(
                        "algorithm {a} needs a public key (a JWKS URL), not a shared secret"
                    ));
                }
            }
            JwtKeys::Jwks(source) => {
                let url = reqwest::Url::parse(&source.url)
                    .map_err(|e| JwtError::Config(format!("JWKS URL '{}': {e}", source.url)))?;
                if !matches!(url.scheme(), "http" | "https") {
                    return config(format!("JWKS URL '{}' is not http(s)", source.url));
                }
                if let Some(a) = self.algorithms.iter().find(|a| a.is_hmac()) {
                    return config(format!(
                        "algorithm {a} takes a shared secret; a JWKS holds public keys"
                    ));
                }
                if source.timeout.is_zero() {
                    return config("the JWKS fetch timeout must be more than zero".into());
                }
            }
        }
        if self.leeway > MAX_LEEWAY {
            return config(format!(
                "the leeway is {}s; at most {}s (1 day) is allowed",
                self.leeway.as_secs(),
                MAX_LEEWAY.as_secs()
            ));
        }
        if self.issuer.as_deref().is_some_and(str::is_empty) {
            return config("the issuer is empty".into());
        }
        if self.audience.as_deref().is_some_and(str::is_empty) {
            return config("the audience is empty".into());
        }
        Ok(())
    }
}

/// Verifies tokens; see the [module docs](self). Cheap to share behind an `Arc`.
pub struct JwtVerifier {
    keys: Keys,
    algorithms: Vec<JwtAlgorithm>,
    /// The checks for each accepted algorithm (jsonwebtoken wants every listed algorithm of
    /// a key's family, so each lists only its own), made once.
    validations: Vec<(Algorithm, Validation)>,
    /// The leeway on `exp`, seconds.
    leeway: u64,
    /// Tokens verified lately, and how long one is remembered (zero: not at all).
    verified: Mutex<Verified>,
    verified_ttl: Duration,
}

impl fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys = match &self.keys {
            Keys::Secrets(s) => format!("{} shared secrets", s.len()),
            Keys::Jwks(j) => format!("JWKS {}", j.source.url),
        };
        f.debug_struct("JwtVerifier")
            .field("keys", &keys)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

enum Keys {
    Secrets(Vec<DecodingKey>),
    Jwks(Jwks),
}

struct Jwks {
    source: JwksSource,
    client: reqwest::Client,
    cache: tokio::sync::Mutex<JwksCache>,
    /// Counts the sets fetched, so tokens verified with an older one are checked again.
    generation: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct JwksCache {
    keys: Vec<CachedKey>,
    /// When the keys were fetched.
    fetched_at: Option<Instant>,
    /// When a fetch was last started, successful or not.
    attempted_at: Option<Instant>,
    /// Why the last fetch failed, if it did.
    last_error: Option<String>,
}

#[derive(Clone)]
struct CachedKey {
    kid: Option<String>,
    /// The key's own `alg`, if the set names one.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

impl JwtVerifier {
    /// A verifier for `config`, checked first ([`JwtConfig::validate`]).
    pub fn new(config: JwtConfig) -> Result<Self, JwtError> {
        config.validate()?;
        if jsonwebtoken::crypto::CryptoProvider::try_get_default().is_none() {
            return Err(JwtError::Config(
                "no JWT crypto provider: jsonwebtoken was built with both or neither of its \
                 aws_lc_rs and rust_crypto features"
                    .into(),
            ));
        }
        let algorithms = config.effective_algorithms();
        let mut validation = Validation::new(Algorithm::HS256);
        validation.algorithms = algorithms.iter().map(|a| a.to_jsonwebtoken()).collect();
        validation.leeway = config.leeway.as_secs();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp"];
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        match &config.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        let keys = match config.keys {
            JwtKeys::Secrets(secrets) => Keys::Secrets(
                secrets
                    .iter()
                    .map(|s| DecodingKey::from_secret(s))
                    .collect::<Result<_, _>>()
                    .map_err(|e| JwtError::Config(format!("shared secret: {e}")))?,
            ),
            JwtKeys::Jwks(source) => {
                let client = reqwest::Client::builder()
                    .timeout(source.timeout)
                    .build()
                    .map_err(|e| JwtError::Config(format!("HTTP client: {e}")))?;
                Keys::Jwks(Jwks {
                    source,
                    client,
                    cache: tokio::sync::Mutex::new(JwksCache::default()),
                    generation: std::sync::atomic::AtomicU64::new(0),
                })
            }
        };
        let validations = algorithms
            .iter()
            .map(|a| {
                let mut v = validation.clone();
                v.algorithms = vec![a.to_jsonwebtoken()];
                (a.to_jsonwebtoken(), v)
            })
            .collect();
        let verified_ttl = match &keys {
            Keys::Secrets(_) => VERIFIED_TTL,
            Keys::Jwks(j) => VERIFIED_TTL.min(j.source.max_age),
        };
        Ok(JwtVerifier {
            keys,
            algorithms,
            validations,
            leeway: config.leeway.as_secs(),
            verified: Mutex::new(Verified::default()),
            verified_ttl,
        })
    }

    /// The algorithms this verifier accepts.
    pub fn algorithms(&self) -> &[JwtAlgorithm] {
        &self.algorithms
    }

    /// Verify `token` (the compact JWS form, without a `Bearer ` prefix) and return its
    /// claims.
    pub async fn verify(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        self.verify_shared(token).await.map(Arc::unwrap_or_clone)
    }

    /// [`verify`](Self::verify), the claims shared with the cache of verified tokens.
    pub async fn verify_shared(&self, token: &str) -> Result<Arc<Map<String, Value>>, JwtError> {
        use sha2::Digest as _;
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed(format!(
                "{} bytes, over the limit of {MAX_TOKEN_BYTES}",
                token.len()
            )));
        }
        let digest: [u8; 32] = sha2::Sha256::digest(token.as_bytes()).into();
        let now = jsonwebtoken::get_current_timestamp();
        let known = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(
            &digest,
            now,
            self.verified_ttl,
            self.generation(),
        );
        if let Some(claims) = known {
            return Ok(claims);
        }
        // The generation before the check: a set fetched meanwhile makes the entry stale.
        let generation = self.generation();
        let claims = Arc::new(self.check(token).await?);
        // `exp` is required and was checked; a token whose `exp` is not a whole number of
        // seconds is not remembered.
        let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
            return Ok(claims);
        };
        if self.verified_ttl.is_zero() {
            return Ok(claims);
        }
        let entry = (
            Arc::clone(&claims),
            exp.saturating_add(self.leeway),
            Instant::now(),
            generation,
        );
        self.verified
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(digest, entry, now, self.verified_ttl);
        Ok(claims)
    }

    /// The key set's generation: 0 with shared secrets, else the count of sets fetched.
    fn generation(&self) -> u64 {
        match &self.keys {
            Keys::Secrets(_) => 0,
            Keys::Jwks(j) => j.generation.load(std::sync::atomic::Ordering::Acquire),
        }
    }

    /// The whole check of `token` (its length already checked): its form, header,
    /// algorithm, signature and claims.
    async fn check(&self, token: &str) -> Result<Map<String, Value>, JwtError> {
        if token.split('.').count() != 3 {
            return Err(JwtError::Malformed(
                "a JWT has three dot-separated parts".into(),
            ));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            // `alg: none` and other names we do not know end up here.
            ErrorKind::Json(e) if e.to_string().contains("unknown variant") => {
                let text = e.to_string();
                let name = text.split('`').nth(1).unwrap_or("?");
                JwtError::AlgorithmNotAllowed(short(name))
            }
            _ => JwtError::Malformed(format!("header: {}", describe(e.kind()))),
        })?;
        let alg = header.alg;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == alg) else {
            return Err(JwtError::AlgorithmNotAllowed(format!("{alg:?}")));
        };
        let fetched;
        let candidates: &[DecodingKey] = match &self.keys {
            Keys::Secrets(keys) => keys,
            Keys::Jwks(jwks) => {
                fetched = jwks.keys_for(header.kid.as_deref(), alg).await?;
                &fetched
            }
        };
        for key in candidates {
            match jsonwebtoken::decode::<Map<String, Value>>(token, key, validation) {
                Ok(data) => return Ok(data.claims),
                // Another key may be the one (several secrets, keys without a kid).
                Err(e) if matches!(e.kind(), ErrorKind::InvalidSignature) => {}
                Err(e) => return Err(map_error(e.kind(), alg)),
            }
        }
        Err(JwtError::BadSignature)
    }
}

/// A jsonwebtoken error as ours.
fn map_error(kind: &ErrorKind, alg: Algorithm) -> JwtError {
    match kind {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(c) => JwtError::MissingClaim(c.clone()),
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => {
            JwtError::AlgorithmNotAllowed(format!("{alg:?}"))
        }
        other => JwtError::Malformed(describe(other)),
    }
}

/// What a jsonwebtoken error says, without anything of the token.
fn describe(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidToken => "not a JWT".into(),
        ErrorKind::Base64(_) => "a part is not base64url".into(),
        ErrorKind::Json(e) => format!("not the expected JSON ({e})"),
        ErrorKind::Utf8(_) => "a part is not UTF-8".into(),
        ErrorKind::InvalidClaimFormat(c) => format!("the '{c}' claim has the wrong type"),
        ErrorKind::InvalidSubject => "wrong subject".into(),
        ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat => "the key cannot check this token".into(),
        _ => "cannot be verified".into(),
    }
}

/// At most 64 characters of an untrusted string, for messages.
fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

impl JwksCache {
    fn may_fetch(&self, now: Instant, interval: Duration) -> bool {
        self.attempted_at
            .is_none_or(|t| now.saturating_duration_since(t) >= interval)
    }

    fn matching(&self, kid: Option<&str>, alg: Algorithm) -> Vec<DecodingKey> {
        let family = alg.family();
        self.keys
            .iter()
            .filter(|k| kid.is_none_or(|kid| k.kid.as_deref() == Some(kid)))
            .filter(|k| k.alg.is_none_or(|a| a == alg))
            .filter(|k| k.key.family() == family)
            .map(|k| k.key.clone())
            .collect()
    }
}

impl Jwks {
    /// The cached keys that may have signed a token with `kid` and `alg`, fetching the set
    /// when it is missing, too old, or lacks the key (at most once per interval).
    async fn keys_for(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Vec<DecodingKey>, JwtError> {
        let interval = self.source.min_refetch_interval;
        // Held across the fetch: verifications that arrive meanwhile wait for its result
        // instead of fetching again.
        let mut cache = self.cache.lock().await;
        let stale = cache
            .fetched_at
            .is_none_or(|t| t.elapsed() >= self.source.max_age);
        if stale && cache.may_fetch(Instant::now(), interval) {
            self.refresh(&mut cache).await;
        }
        let mut found = cache.matching(kid, alg);
        if found.is_empty() && cache.may_fetch(Instant::now(), interval) {
            // Perhaps the provider rotated its keys.
            self.refresh(&mut cache).await;
            found = cache.matching(kid, alg);
        }
        if !found.is_empty() {
            return Ok(found);
        }
        if cache.fetched_at.is_none() {
            return Err(JwtError::Jwks(
                cache
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "not fetched yet".into()),
            ));
        }
        Err(JwtError::UnknownKey {
            kid: kid.map(short),
        })
    }

    /// Fetch the set into `cache`; on failure the keys cached before stay.
    async fn refresh(&self, cache: &mut JwksCache) {
        cache.attempted_at = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => {
                tracing::debug!(url = %self.source.url, keys = keys.len(), "JWKS fetched");
                cache.keys = keys;
                cache.fetched_at = Some(Instant::now());
                self.generation
                    .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                cache.last_error = None;
            }
            Err(e) => {
                tracing::warn!(url = %self.source.url, error = %e, "fetching the JWKS failed");
                cache.last_error = Some(e);
            }
        }
    }

    async fn fetch(&self) -> Result<Vec<CachedKey>, String> {
        let url = &self.source.url;
        let mut res = self
            .client
            .get(url)
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !res.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", res.status()));
        }
        let mut body = Vec::new();
        while let Some(chunk) = res
            .chunk()
            .await
            .map_err(|e| format!("GET {url}: reading the body: {e}"))?
        {
            if body.len() + chunk.len() > MAX_JWKS_BYTES {
                return Err(format!("GET {url}: over {MAX_JWKS_BYTES} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        parse_jwks(&body).map_err(|e| format!("{url}: {e}"))
    }
}

/// The signing keys of a JWK Set document; keys of kinds we cannot use (encryption keys,
/// symmetric keys, unknown types) are skipped.
fn parse_jwks(body: &[u8]) -> Result<Vec<CachedKey>, String> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<Value>,
    }
    let set: Set = serde_json::from_slice(body)
        .map_err(|e| format!("not a JWK Set ({{\"keys\": [...]}}): {e}"))?;
    let mut keys = Vec::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption))
            || matches!(
                jwk.algorithm,
                AlgorithmParameters::OctetKey(_) | AlgorithmParameters::Other(_)
            )
        {
            continue;
        }
        let alg = match jwk.common.key_algorithm {
            // A key for something other than signing (RSA-OAEP and the like) is skipped.
            Some(a) => match Algorithm::from_str(&a.to_string()) {
                Ok(a) => Some(a),
                Err(_) => continue,
            },
            None => None,
        };
        let Ok(key) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        if key.family() == AlgorithmFamily::Hmac {
            continue;
        }
        keys.push(CachedKey {
            kid: jwk.common.key_id.clone(),
            alg,
            key,
        });
    }
    if keys.is_empty() {
        return Err("the set has no usable signing keys".into());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn verified_tokens_are_forgotten_at_their_expiry_and_after_the_ttl() {
        let mut v = Verified::default();
        let ttl = VERIFIED_TTL;
        let entry = (Arc::new(Map::new()), 1_000, Instant::now(), 3);
        v.insert([1; 32], entry, 900, ttl);
        assert!(
            v.get(&[1; 32], 1_000, ttl, 3).is_some(),
            "valid up to its expiry"
        );
        assert!(
            v.get(&[1; 32], 1_001, ttl, 3).is_none(),
            "not a second past it"
        );
        assert!(v.get(&[2; 32], 900, ttl, 3).is_none(), "another token");
        assert!(v.get(&[1; 32], 900, ttl, 4).is_none(), "a newer key set");
        tokio::time::advance(Duration::from_secs(5)).await;
        let shorter = Duration::from_secs(5);
        assert!(v.get(&[1; 32], 900, shorter, 3).is_none(), "a shorter TTL");
        tokio::time::advance(VERIFIED_TTL).await;
        assert!(
            v.get(&[1; 32], 900, ttl, 3).is_none(),
            "forgotten after the TTL"
        );
    }

    #[test]
    fn settings_that_cannot_work_are_refused_with_the_reason() {
        let short = JwtConfig::secrets(["too short"]);
        assert!(matches!(short.validate(), Err(JwtError::Config(m)) if m.contains("9 bytes")));
        let none: Vec<&str> = Vec::new();
        assert!(JwtConfig::secrets(none).validate().is_err());
        let mixed = JwtConfig::secrets([[7u8; 32]]).algorithms([JwtAlgorithm::RS256]);
        assert!(matches!(mixed.validate(), Err(JwtError::Config(m)) if m.contains("RS256")));
        let hs_jwks = JwtConfig::jwks("https://example.com/jwks").algorithms([JwtAlgorithm::HS256]);
        assert!(matches!(hs_jwks.validate(), Err(JwtError::Config(m)) if m.contains("HS256")));
        assert!(
            JwtConfig::jwks("ftp://example.com/jwks")
                .validate()
                .is_err()
        );
        assert!(JwtConfig::jwks("not a url").validate().is_err());
        let leeway = JwtConfig::secrets([[7u8; 32]]).leeway(Duration::from_secs(2 * 86_400));
        assert!(leeway.validate().is_err());
        assert!("none".parse::<JwtAlgorithm>().is_err());
        assert_eq!("ES256".parse::<JwtAlgorithm>(), Ok(JwtAlgorithm::ES256));
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let config = JwtConfig::secrets(["a-very-secret-value-0123456789abcdef"]);
        assert!(!format!("{config:?}").contains("very-secret"));
        let verifier = JwtVerifier::new(config).expect("valid");
        assert!(!format!("{verifier:?}").contains("very-secret"));
    }

    #[test]
    fn a_jwks_keeps_the_signing_keys_it_can_use() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "sym"},
            {"kty": "RSA", "use": "enc", "kid": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "XYZ", "kid": "future"},
            {"kty": "EC", "crv": "P-256", "kid": "ec",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).expect("one usable key");
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("ec"));
        assert!(parse_jwks(br#"{"keys": []}"#).is_err());
        assert!(parse_jwks(b"[]").is_err());
    }
}
