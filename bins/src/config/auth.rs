//! `[auth]`: who may use the admin API (`/api/v1`, `/metrics`). See docs/security.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use flowbot_core::auth::{Role, Roles};
use serde::Deserialize;

use super::{ConfigError, err};

/// `[auth]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
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
}

impl AuthConfig {
    /// Whether callers must present a credential.
    pub fn required(&self) -> bool {
        self.api_keys
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

    /// Check the section against the address the server listens on: a server reachable from
    /// the network needs authentication, or the explicit opt-out.
    pub(super) fn validate(&self, listen: SocketAddr) -> Result<(), ConfigError> {
        self.roles()?;
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
                "server.listen",
                format!(
                    "{listen} is reachable from the network, and the admin API has no authentication: \
                     set [auth] api_keys = true and make a key with `flowbot-server keys create --name NAME --role admin`, \
                     or listen on 127.0.0.1; to serve the API open anyway, set [auth] allow_unauthenticated = true"
                ),
            ));
        }
        Ok(())
    }
}
