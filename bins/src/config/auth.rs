//! `[auth]`: who may use the admin API (`/api/v1`, `/metrics`). See docs/security.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use flowbot_core::auth::{Role, Roles};
use serde::Deserialize;

use super::{ConfigError, err};

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accept API keys (`Authorization: Bearer fbk_…`), made with
    /// `flowbot-server keys create` or through `/api/v1/keys`. Turning this on makes the API
    /// require a credential.
    pub api_keys: bool,
    /// Serve the admin API without authentication on a non-loopback address. The server
    /// refuses to start that way unless this is set, and warns at every start when it is.
    pub allow_unauthenticated: bool,
    /// Host names the API answers to (the `Host` header, without port). A loopback server
    /// always answers to `localhost`, `127.0.0.1` and `[::1]`; other names must be listed,
    /// so that a web page cannot reach the API through a name it controls (DNS rebinding).
    /// Empty on a non-loopback server: any host.
    pub allowed_hosts: Vec<String>,
    /// Roles of this installation beyond the built-in `admin`, `editor`, `operator` and
    /// `viewer`, by name: each a list of grants (`rules:read`, `runs:*`, `*:read`).
    pub roles: BTreeMap<String, Vec<String>>,
    /// Bearer JWTs from an identity provider or a shared secret.
    pub jwt: Option<JwtAuthConfig>,
    /// People signing in through an OpenID Connect provider (a session cookie).
    pub oidc: Option<super::OidcConfig>,
    /// How long audit entries are kept, in days (1 to 36500; default 90).
    pub audit_retention_days: u32,
}

/// `[auth.jwt]`: bearer JWTs, signed with a shared secret (HS256) or a key of the
/// provider's JWK Set (RS256, ES256…), mapped to roles by a claim.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuthConfig {
    /// Shared secrets (at least 32 bytes each; several while one replaces another).
    #[serde(default)]
    pub secrets: Vec<String>,
    /// The provider's JWK Set, e.g. `https://idp.example/.well-known/jwks.json`.
    pub jwks_url: Option<String>,
    /// Algorithms accepted (default: HS256 with secrets, RS256 and ES256 with a JWKS).
    #[serde(default)]
    pub algorithms: Vec<String>,
    /// The `iss` tokens must carry.
    pub issuer: Option<String>,
    /// The audience `aud` must name.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds (default 60, at most 86400).
    #[serde(default = "leeway")]
    pub leeway_secs: u64,
    /// The claim naming the caller (default `sub`).
    #[serde(default = "sub")]
    pub subject_claim: String,
    /// The claim holding the caller's role or roles (a string or a list; a dotted path
    /// reaches into objects, e.g. `realm_access.roles`). Default `role`.
    #[serde(default = "role")]
    pub role_claim: String,
    /// Claim values → role names (e.g. `"flowbot-admins" = "admin"`). Without a map, a
    /// claim value is a role name. A token whose values name no role is refused (403).
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
}

fn leeway() -> u64 {
    60
}

fn sub() -> String {
    "sub".into()
}

fn role() -> String {
    "role".into()
}

impl JwtAuthConfig {
    /// The verifier's settings.
    pub fn verifier(&self) -> Result<flowbot_core::jwt::JwtConfig, ConfigError> {
        use flowbot_core::jwt::JwtConfig;
        let mut config = match (&self.jwks_url, self.secrets.is_empty()) {
            (Some(url), true) => JwtConfig::jwks(url.clone()),
            (None, false) => JwtConfig::secrets(self.secrets.iter().map(String::as_bytes)),
            _ => {
                return Err(err(
                    "auth.jwt",
                    "set either secrets (shared secrets) or jwks_url (the provider's keys), not both",
                ));
            }
        };
        let mut algorithms = Vec::new();
        for a in &self.algorithms {
            algorithms.push(a.parse().map_err(|e: flowbot_core::jwt::JwtError| {
                err("auth.jwt.algorithms", e.to_string())
            })?);
        }
        config = config
            .algorithms(algorithms)
            .leeway(std::time::Duration::from_secs(self.leeway_secs));
        if let Some(i) = &self.issuer {
            config = config.issuer(i.clone());
        }
        if let Some(a) = &self.audience {
            config = config.audience(a.clone());
        }
        config
            .validate()
            .map_err(|e| err("auth.jwt", e.to_string()))?;
        Ok(config)
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            api_keys: false,
            allow_unauthenticated: false,
            allowed_hosts: Vec::new(),
            roles: BTreeMap::new(),
            jwt: None,
            oidc: None,
            audit_retention_days: 90,
        }
    }
}

impl AuthConfig {
    /// Whether callers must present a credential.
    pub fn required(&self) -> bool {
        self.api_keys || self.jwt.is_some() || self.oidc.is_some()
    }

    /// The roles: the built-in ones and `[auth.roles]`.
    pub fn roles(&self) -> Result<Roles, ConfigError> {
        let mut roles = Roles::builtin();
        for (name, grants) in &self.roles {
            let path = format!("auth.roles.{name}");
            let role = Role::new(name, grants).map_err(|e| err(&path, e.to_string()))?;
            roles.define(role).map_err(|e| err(&path, e.to_string()))?;
        }
        Ok(roles)
    }

    /// The host names the API answers to when listening on `listen` (empty: any).
    pub fn hosts(&self, listen: SocketAddr) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .allowed_hosts
            .iter()
            .map(|h| h.trim().to_ascii_lowercase())
            .collect();
        if listen.ip().is_loopback() {
            hosts.extend(crate::http::auth::LOOPBACK_HOSTS.map(str::to_owned));
        }
        hosts
    }

    /// Check the section against the address the admin API listens on: an API reachable from
    /// the network needs authentication, or the explicit opt-out.
    pub(crate) fn validate(&self, key: &str, listen: SocketAddr) -> Result<(), ConfigError> {
        let roles = self.roles()?;
        if !(1..=36_500).contains(&self.audit_retention_days) {
            return Err(err(
                "auth.audit_retention_days",
                format!(
                    "must be from 1 to 36500 (100 years), got {}",
                    self.audit_retention_days
                ),
            ));
        }
        if let Some(jwt) = &self.jwt {
            jwt.verifier()?;
            for (value, role) in &jwt.roles {
                if roles.get(role).is_none() {
                    return Err(err(
                        format!("auth.jwt.roles.{value}"),
                        format!("no role '{role}' (one of {})", roles.names().join(", ")),
                    ));
                }
            }
        }
        if let Some(oidc) = &self.oidc {
            oidc.validate(&roles)?;
        }
        for h in &self.allowed_hosts {
            if h.trim().is_empty() || h.contains('/') || h.contains(' ') {
                return Err(err(
                    "auth.allowed_hosts",
                    format!("'{h}' is not a host name"),
                ));
            }
        }
        if !listen.ip().is_loopback() && !self.required() && !self.allow_unauthenticated {
            return Err(err(
                key,
                format!(
                    "{listen} is reachable from the network, and the admin API served there has no authentication: \
                     set [auth] api_keys = true and make a key with `flowbot-server keys create --name NAME --role admin`, \
                     or configure [auth.jwt] or [auth.oidc], or serve the API on loopback (listen, or admin_listen = \"127.0.0.1:…\"); to serve the API open anyway, set [auth] allow_unauthenticated = true"
                ),
            ));
        }
        Ok(())
    }
}
