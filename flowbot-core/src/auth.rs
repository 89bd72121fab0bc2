//! Who is calling and what they may do: [`Identity`], [`Role`]s made of [`Permission`]s over
//! [`Resource`]s, and [`ApiKeys`].
//!
//! A permission is a resource and an access, written `rules:read`, `rules:write`, `rules:*`
//! (both), `*:read` (every resource) or `*` (everything). Four roles are built in
//! ([`Roles::builtin`]):
//!
//! | role | may |
//! |---|---|
//! | `admin` | everything |
//! | `editor` | read and change rules, workflows, prompts and schedules; start runs; read runs, tasks and metrics |
//! | `operator` | read everything but keys, secrets and the audit log; act on runs, tasks, schedules and sessions |
//! | `viewer` | read rules, workflows, runs, tasks, schedules, prompts and metrics (no conversations) |
//!
//! An application defines its own with [`Roles::define`].
//!
//! API keys look like `fbk_<id>_<secret>`: the id is public and finds the key; only the
//! SHA-256 of the secret is stored (the secret is 256 random bits, so a fast hash is the right
//! one: there is nothing to guess), and it is compared in constant time. A key is shown once,
//! when it is created.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::StoreError;
use crate::store::KvStore;

/// What a permission is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resource {
    /// Rule files.
    Rules,
    /// Workflow definitions.
    Workflows,
    /// Workflow and assistant runs.
    Runs,
    /// Queued tasks and dead letters.
    Tasks,
    /// Schedules.
    Schedules,
    /// Conversations and their messages.
    Conversations,
    /// Users' sessions (dialog state, variables).
    Sessions,
    /// Prompt templates.
    Prompts,
    /// API keys.
    Keys,
    /// Stored secrets.
    Secrets,
    /// The audit log.
    Audit,
    /// Metrics.
    Metrics,
    /// The knowledge base: collections, documents, ingestion jobs and searches.
    Knowledge,
}

impl Resource {
    /// Every resource.
    pub const ALL: [Resource; 13] = [
        Resource::Rules,
        Resource::Workflows,
        Resource::Runs,
        Resource::Tasks,
        Resource::Schedules,
        Resource::Conversations,
        Resource::Sessions,
        Resource::Prompts,
        Resource::Keys,
        Resource::Secrets,
        Resource::Audit,
        Resource::Metrics,
        Resource::Knowledge,
    ];

    /// The resource's name, as permissions write it.
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Rules => "rules",
            Resource::Workflows => "workflows",
            Resource::Runs => "runs",
            Resource::Tasks => "tasks",
            Resource::Schedules => "schedules",
            Resource::Conversations => "conversations",
            Resource::Sessions => "sessions",
            Resource::Prompts => "prompts",
            Resource::Keys => "keys",
            Resource::Secrets => "secrets",
            Resource::Audit => "audit",
            Resource::Metrics => "metrics",
            Resource::Knowledge => "knowledge",
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Reading or changing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Access {
    /// Reading.
    Read,
    /// Creating, changing, deleting, acting on.
    Write,
}

/// One resource and one access: `rules:write`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Permission {
    /// What.
    pub resource: Resource,
    /// How.
    pub access: Access,
}

impl Permission {
    /// Read `resource`.
    pub const fn read(resource: Resource) -> Self {
        Permission {
            resource,
            access: Access::Read,
        }
    }

    /// Change `resource`.
    pub const fn write(resource: Resource) -> Self {
        Permission {
            resource,
            access: Access::Write,
        }
    }

    /// The permissions a grant such as `rules:*`, `*:read` or `*` stands for.
    pub fn parse_grant(grant: &str) -> Result<Vec<Permission>, AuthError> {
        let bad = |why: &str| AuthError::BadPermission(format!("'{grant}': {why}"));
        let (resource, access) = match grant.split_once(':') {
            Some((r, a)) => (r.trim(), a.trim()),
            None if grant.trim() == "*" => ("*", "*"),
            None => return Err(bad("write resource:access, e.g. rules:read")),
        };
        let resources: Vec<Resource> = if resource == "*" {
            Resource::ALL.to_vec()
        } else {
            vec![
                Resource::ALL
                    .into_iter()
                    .find(|r| r.as_str() == resource)
                    .ok_or_else(|| {
                        bad(&format!(
                            "no resource '{resource}' (one of {})",
                            Resource::ALL.map(Resource::as_str).join(", ")
                        ))
                    })?,
            ]
        };
        let accesses: &[Access] = match access {
            "read" => &[Access::Read],
            "write" => &[Access::Write],
            "*" => &[Access::Read, Access::Write],
            _ => return Err(bad("the access is read, write or *")),
        };
        Ok(resources
            .into_iter()
            .flat_map(|resource| {
                accesses
                    .iter()
                    .map(move |&access| Permission { resource, access })
            })
            .collect())
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.access {
            Access::Read => "read",
            Access::Write => "write",
        };
        write!(f, "{}:{access}", self.resource)
    }
}

impl FromStr for Permission {
    type Err = AuthError;

    fn from_str(s: &str) -> Result<Self, AuthError> {
        match Permission::parse_grant(s)?.as_slice() {
            [one] => Ok(*one),
            _ => Err(AuthError::BadPermission(format!(
                "'{s}' stands for several permissions"
            ))),
        }
    }
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    name: String,
    permissions: BTreeSet<Permission>,
}

impl Role {
    /// A role from grants (`rules:*`, `runs:read`, `*`…).
    pub fn new<I, S>(name: &str, grants: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(AuthError::BadRole(format!(
                "'{name}': a role name is letters, digits, '-' and '_'"
            )));
        }
        let mut permissions = BTreeSet::new();
        for g in grants {
            permissions.extend(Permission::parse_grant(g.as_ref())?);
        }
        Ok(Role {
            name: name.to_owned(),
            permissions,
        })
    }

    /// The role's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the role holds `permission`.
    pub fn allows(&self, permission: Permission) -> bool {
        self.permissions.contains(&permission)
    }

    /// The role's permissions, in order.
    pub fn permissions(&self) -> impl Iterator<Item = Permission> + '_ {
        self.permissions.iter().copied()
    }
}

/// The roles an installation knows: the built-in four and its own.
#[derive(Debug, Clone)]
pub struct Roles {
    roles: HashMap<String, Arc<Role>>,
}

impl Default for Roles {
    fn default() -> Self {
        Roles::builtin()
    }
}

/// The built-in roles' grants.
const BUILTIN: [(&str, &[&str]); 4] = [
    ("admin", &["*"]),
    (
        "editor",
        &[
            "rules:*",
            "workflows:*",
            "prompts:*",
            "schedules:*",
            "runs:*",
            "tasks:read",
            "metrics:read",
        ],
    ),
    (
        "operator",
        &[
            "rules:read",
            "workflows:read",
            "prompts:read",
            "metrics:read",
            "conversations:read",
            "runs:*",
            "tasks:*",
            "schedules:*",
            "sessions:*",
        ],
    ),
    (
        "viewer",
        &[
            "rules:read",
            "workflows:read",
            "runs:read",
            "tasks:read",
            "schedules:read",
            "prompts:read",
            "metrics:read",
        ],
    ),
];

impl Roles {
    /// `admin`, `editor`, `operator` and `viewer`.
    pub fn builtin() -> Self {
        let mut roles = HashMap::new();
        for (name, grants) in BUILTIN {
            if let Ok(role) = Role::new(name, grants.iter()) {
                roles.insert(name.to_owned(), Arc::new(role));
            }
        }
        Roles { roles }
    }

    /// Add a role, or replace a built-in one (`admin` keeps every permission: it cannot be
    /// redefined).
    pub fn define(&mut self, role: Role) -> Result<(), AuthError> {
        if role.name == "admin" {
            return Err(AuthError::BadRole(
                "'admin' is built in and holds every permission".into(),
            ));
        }
        self.roles.insert(role.name.clone(), Arc::new(role));
        Ok(())
    }

    /// The role called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<Role>> {
        self.roles.get(name).cloned()
    }

    /// The names of every role, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.roles.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

/// How a caller proved who they are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "method", rename_all = "snake_case")]
pub enum Via {
    /// An API key (its public id).
    ApiKey {
        /// The key's id.
        id: String,
    },
    /// A JWT bearer token.
    Jwt,
    /// A signed-in person's session cookie.
    Session,
    /// No credential: a server that runs without authentication, on loopback.
    Unauthenticated,
}

/// A caller: who, in which role, proven how.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Who: a key's name, a token's subject, a person's e-mail.
    pub subject: String,
    /// Their role.
    pub role: Arc<Role>,
    /// How they proved it.
    pub via: Via,
}

impl Identity {
    /// Whether this caller holds `permission`.
    pub fn allows(&self, permission: Permission) -> bool {
        self.role.allows(permission)
    }
}

/// What went wrong with a role, a permission or a key.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A permission that does not parse.
    #[error("bad permission {0}")]
    BadPermission(String),
    /// A role that cannot be defined or is unknown.
    #[error("bad role {0}")]
    BadRole(String),
    /// A key's name or expiry that cannot be used.
    #[error("{0}")]
    BadKey(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No random bytes could be had for a new key.
    #[error("cannot make a key: no randomness ({0})")]
    Random(String),
}

/// Why a presented API key was refused. The messages never include the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyRejected {
    /// Not of the form `fbk_<id>_<secret>`.
    #[error("not an API key (they look like fbk_<id>_<secret>)")]
    Malformed,
    /// No such key, or the secret does not match.
    #[error("unknown API key")]
    Unknown,
    /// The key was revoked.
    #[error("the API key was revoked")]
    Revoked,
    /// The key expired.
    #[error("the API key has expired")]
    Expired,
}

/// An API key as stored and listed: everything but its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyInfo {
    /// The public id (`fbk_<id>_…`).
    pub id: String,
    /// What it is for.
    pub name: String,
    /// The role it acts in.
    pub role: String,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When it was last used (updated at most once a minute).
    pub last_used_at: Option<DateTime<Utc>>,
}

/// What is stored: the key's info and the SHA-256 of its secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    #[serde(flatten)]
    info: KeyInfo,
    sha256: String,
}

/// A key just made: its info and, this once, the whole key.
#[derive(Clone)]
pub struct CreatedKey {
    /// The key's info.
    pub info: KeyInfo,
    /// `fbk_<id>_<secret>`: shown now, never again.
    pub key: String,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedKey")
            .field("info", &self.info)
            .field("key", &"<hidden>")
            .finish()
    }
}

/// The KV namespace keys live in.
pub const KEYS_NAMESPACE: &str = "auth.keys";
/// How long a verified key is trusted without reading the store again: a key revoked on
/// another server stops working here within this time (at once on the server that revoked it).
pub const KEY_CACHE_TTL: Duration = Duration::from_secs(5);
/// How often a key's `last_used_at` is written, at most.
pub const LAST_USED_EVERY: Duration = Duration::from_secs(60);
/// The longest name a key may have.
pub const MAX_KEY_NAME: usize = 100;

/// API keys in the store's KV (namespace [`KEYS_NAMESPACE`]).
pub struct ApiKeys {
    store: Arc<dyn KvStore>,
    /// Keys read lately: id → (stored key, when read). Shared, so a check holds the lock
    /// only to copy a pointer.
    cache: Mutex<HashMap<String, (Arc<StoredKey>, Instant)>>,
    /// When each key's `last_used_at` was last written by this process.
    written: Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys").finish_non_exhaustive()
    }
}

fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(bytes: usize) -> Result<String, AuthError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| AuthError::Random(e.to_string()))?;
    Ok(hex::encode(buf))
}

/// `fbk_<12 hex>_<64 hex>` split into id and secret.
fn split_key(key: &str) -> Option<(&str, &str)> {
    let rest = key.strip_prefix("fbk_")?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(id, 12) && hex(secret, 64)).then_some((id, secret))
}

impl ApiKeys {
    /// Keys kept in `store`'s key-value data (any store: `Arc<dyn Store>` converts).
    pub fn new(store: Arc<dyn KvStore>) -> Self {
        ApiKeys {
            store,
            cache: Mutex::new(HashMap::new()),
            written: Mutex::new(HashMap::new()),
        }
    }

    /// Whether `presented` looks like one of our keys (rather than, say, a JWT).
    pub fn looks_like_key(presented: &str) -> bool {
        presented.starts_with("fbk_")
    }

    /// Make a key called `name` acting in `role` (the caller checks the role exists),
    /// expiring at `expires_at` if given (which must be in the future).
    pub async fn create(
        &self,
        name: &str,
        role: &str,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<CreatedKey, AuthError> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_KEY_NAME
            || name.chars().any(char::is_control)
        {
            return Err(AuthError::BadKey(format!(
                "a key's name is 1 to {MAX_KEY_NAME} characters, without control characters"
            )));
        }
        let now = crate::clock::now();
        if let Some(at) = expires_at
            && at <= now
        {
            return Err(AuthError::BadKey(format!(
                "the expiry {at} is not in the future"
            )));
        }
        let id = random_hex(6)?;
        let secret = random_hex(32)?;
        let info = KeyInfo {
            id: id.clone(),
            name: name.to_owned(),
            role: role.to_owned(),
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        let stored = StoredKey {
            info: info.clone(),
            sha256: sha256_hex(&secret),
        };
        self.put(&stored).await?;
        Ok(CreatedKey {
            info,
            key: format!("fbk_{id}_{secret}"),
        })
    }

    async fn put(&self, key: &StoredKey) -> Result<(), AuthError> {
        let value = serde_json::to_value(key)
            .map_err(|e| AuthError::BadKey(format!("cannot store the key: {e}")))?;
        self.store
            .kv_set(KEYS_NAMESPACE, &key.info.id, &value)
            .await?;
        Ok(())
    }

    async fn read(&self, id: &str) -> Result<Option<StoredKey>, AuthError> {
        Ok(self
            .store
            .kv_get(KEYS_NAMESPACE, id)
            .await?
            .and_then(|v| serde_json::from_value(v).ok()))
    }

    /// Every key, newest first.
    pub async fn list(&self) -> Result<Vec<KeyInfo>, AuthError> {
        let mut keys: Vec<KeyInfo> = self
            .store
            .kv_list(KEYS_NAMESPACE)
            .await?
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value::<StoredKey>(v).ok())
            .map(|k| k.info)
            .collect();
        keys.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
        Ok(keys)
    }

    /// The key with this id.
    pub async fn get(&self, id: &str) -> Result<Option<KeyInfo>, AuthError> {
        Ok(self.read(id).await?.map(|k| k.info))
    }

    /// Revoke a key: it stops working at once here, within [`KEY_CACHE_TTL`] elsewhere.
    /// `None` when there is no such key; revoking twice keeps the first time.
    pub async fn revoke(&self, id: &str) -> Result<Option<KeyInfo>, AuthError> {
        let Some(mut key) = self.read(id).await? else {
            return Ok(None);
        };
        if key.info.revoked_at.is_none() {
            key.info.revoked_at = Some(crate::clock::now());
            self.put(&key).await?;
        }
        self.cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        Ok(Some(key.info))
    }

    /// The key `presented`, if it is a valid one: its secret matches (compared in constant
    /// time), it is not revoked and has not expired.
    pub async fn verify(&self, presented: &str) -> Result<KeyInfo, VerifyError> {
        let (id, secret) = split_key(presented).ok_or(KeyRejected::Malformed)?;
        let cached = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache
                .get(id)
                .filter(|(_, at)| at.elapsed() < KEY_CACHE_TTL)
                .map(|(k, _)| Arc::clone(k))
        };
        let key = match cached {
            Some(k) => k,
            None => {
                let k = Arc::new(self.read(id).await?.ok_or(KeyRejected::Unknown)?);
                let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
                if cache.len() >= 10_000 {
                    cache.retain(|_, (_, at)| at.elapsed() < KEY_CACHE_TTL);
                }
                cache.insert(id.to_owned(), (Arc::clone(&k), Instant::now()));
                k
            }
        };
        // The hex digest on the stack: no allocation on the hot path.
        let mut hash = [0u8; 64];
        hex::encode_to_slice(Sha256::digest(secret.as_bytes()), &mut hash)
            .map_err(|_| KeyRejected::Malformed)?;
        if !bool::from(hash.as_slice().ct_eq(key.sha256.as_bytes())) {
            return Err(KeyRejected::Unknown.into());
        }
        if key.info.revoked_at.is_some() {
            return Err(KeyRejected::Revoked.into());
        }
        let now = crate::clock::now();
        if key.info.expires_at.is_some_and(|at| at <= now) {
            return Err(KeyRejected::Expired.into());
        }
        self.touch(&key.info.id, now).await;
        Ok(key.info.clone())
    }

    /// Record the use of key `id`, at most once a [`LAST_USED_EVERY`] per key and process.
    async fn touch(&self, id: &str, now: DateTime<Utc>) {
        {
            let mut written = self.written.lock().unwrap_or_else(|p| p.into_inner());
            if written
                .get(id)
                .is_some_and(|at| at.elapsed() < LAST_USED_EVERY)
            {
                return;
            }
            written.insert(id.to_owned(), Instant::now());
        }
        // Read again so a revocation made elsewhere is not overwritten.
        let mut key = match self.read(id).await {
            Ok(Some(fresh)) => fresh,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(key = %id, error = %e, "cannot read an API key to record its use");
                return;
            }
        };
        key.info.last_used_at = Some(now);
        if let Err(e) = self.put(&key).await {
            tracing::warn!(key = %key.info.id, error = %e, "cannot record an API key's use");
        }
    }
}

/// Why [`ApiKeys::verify`] failed: the key was refused, or the store could not say.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The key was refused.
    #[error(transparent)]
    Rejected(#[from] KeyRejected),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] AuthError),
}

impl From<StoreError> for VerifyError {
    fn from(e: StoreError) -> Self {
        VerifyError::Store(AuthError::Store(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_roles_hold_them() {
        assert_eq!(Permission::parse_grant("rules:*").expect("grant").len(), 2);
        assert_eq!(
            Permission::parse_grant("*:read").expect("grant").len(),
            Resource::ALL.len()
        );
        assert_eq!(
            "runs:write".parse::<Permission>().expect("permission"),
            Permission::write(Resource::Runs)
        );
        for bad in ["rules", "rule:read", "rules:delete", "", ":"] {
            let e = Permission::parse_grant(bad).expect_err(bad);
            assert!(e.to_string().contains(&format!("'{bad}'")), "{e}");
        }
        let roles = Roles::builtin();
        let viewer = roles.get("viewer").expect("viewer");
        assert!(viewer.allows(Permission::read(Resource::Rules)));
        assert!(!viewer.allows(Permission::write(Resource::Rules)));
        assert!(!viewer.allows(Permission::read(Resource::Conversations)));
        let admin = roles.get("admin").expect("admin");
        assert!(
            Resource::ALL
                .iter()
                .all(|&r| admin.allows(Permission::write(r)))
        );
        let mut roles = roles;
        assert!(
            roles
                .define(Role::new("admin", ["rules:read"]).expect("role"))
                .is_err()
        );
        assert!(Role::new("bad name", ["rules:read"]).is_err());
        roles
            .define(Role::new("support", ["conversations:read", "sessions:*"]).expect("role"))
            .expect("define");
        assert_eq!(
            roles.names(),
            ["admin", "editor", "operator", "support", "viewer"]
        );
    }

    #[test]
    fn keys_split_only_when_well_formed() {
        let good = format!("fbk_{}_{}", "a".repeat(12), "0".repeat(64));
        assert!(split_key(&good).is_some());
        for bad in [
            "fbk_",
            "fbk_abc_def",
            &format!("fbk_{}_{}", "g".repeat(12), "0".repeat(64)),
            &format!("fbk_{}_{}x", "a".repeat(12), "0".repeat(64)),
            "Bearer x",
        ] {
            assert!(split_key(bad).is_none(), "{bad}");
        }
    }
}
