//! `[limits]`: abuse limits on the HTTP surface (see docs/security.md).

use serde::Deserialize;

use super::{ConfigError, err};

/// `[limits]`. Each `*_per_minute` is a token bucket per key: that many requests at once,
/// refilled at that many a minute; 0 turns it off. Loopback clients are not limited by
/// address.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Requests per client address to the public endpoints (webhooks, trigger hooks, web
    /// chat).
    pub public_per_address_per_minute: u32,
    /// Requests per client address to the admin API.
    pub api_per_address_per_minute: u32,
    /// Requests per credential (API key, token subject) to the admin API.
    pub api_per_credential_per_minute: u32,
    /// Failed authentications per client address before its credentials are refused
    /// unchecked (429) until the bucket refills.
    pub auth_failures_per_address_per_minute: u32,
    /// Open web chat connections per client address (0: no limit).
    pub websockets_per_address: u64,
    /// Addresses and networks that may reach the admin API (`10.0.0.0/8`, `192.0.2.7`);
    /// empty: any.
    pub admin_allow: Vec<String>,
    /// Reverse proxies whose `X-Forwarded-For` names the client.
    pub trusted_proxies: Vec<String>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            public_per_address_per_minute: 6000,
            api_per_address_per_minute: 1200,
            api_per_credential_per_minute: 1200,
            auth_failures_per_address_per_minute: 30,
            websockets_per_address: 20,
            admin_allow: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

impl LimitsConfig {
    /// The limits in force.
    pub fn limits(&self) -> Result<crate::http::limits::Limits, ConfigError> {
        use crate::http::limits::{Failures, Limiter, Limits, networks};
        Ok(Limits {
            public: Limiter::per_minute(self.public_per_address_per_minute),
            api_address: Limiter::per_minute(self.api_per_address_per_minute),
            api_credential: Limiter::per_minute(self.api_per_credential_per_minute),
            auth_failures: Failures::per_minute(self.auth_failures_per_address_per_minute),
            admin_allow: networks(&self.admin_allow).map_err(|e| err("limits.admin_allow", e))?,
            trusted_proxies: networks(&self.trusted_proxies)
                .map_err(|e| err("limits.trusted_proxies", e))?,
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.limits().map(|_| ())
    }
}
