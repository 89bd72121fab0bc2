//! [`WebSettings`]: web chat's settings with the keys of a configuration file (`[web]` in the
//! server's), and how visitors are identified (visitor tokens, and identities signed by a
//! site that embeds the chat).

use std::sync::Arc;
use std::time::Duration;

use flowbot_core::Store;
use flowbot_core::jwt::{JwksSource, JwtAlgorithm, JwtConfig, JwtKeys, JwtVerifier};
use serde::Deserialize;

use super::identity::{ChatIdentity, DEFAULT_TOKEN_MAX_AGE, MIN_SECRET_BYTES};
use crate::SettingsError;

const DAY_SECS: u64 = 24 * 3600;

/// Web chat as a configuration file describes it (`[web]` in the server's file). Check it
/// with [`validate`](Self::validate); [`identity`](Self::identity) makes how visitors are
/// identified, for [`WebChat::with_identity`](super::WebChat::with_identity).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebSettings {
    /// Serve `/chat` and `/ws/chat`.
    pub enabled: bool,
    /// The secret visitor tokens are signed with (at least 32 bytes). Unset: one generated
    /// once and kept in the database, shared by every server.
    pub secret: Option<String>,
    /// How long a visitor token is honoured after it was issued, in seconds (each
    /// connection is given a new one).
    pub token_max_age_secs: u64,
    /// `[web.host_identity]`: accept identities signed by the site embedding the chat.
    pub host_identity: Option<HostIdentitySettings>,
}

impl Default for WebSettings {
    fn default() -> Self {
        WebSettings {
            enabled: true,
            secret: None,
            token_max_age_secs: DEFAULT_TOKEN_MAX_AGE.as_secs(),
            host_identity: None,
        }
    }
}

impl std::fmt::Debug for WebSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never shown.
        f.debug_struct("WebSettings")
            .field("enabled", &self.enabled)
            .field("secret", &self.secret.as_ref().map(|_| "(hidden)"))
            .field("token_max_age_secs", &self.token_max_age_secs)
            .field("host_identity", &self.host_identity)
            .finish()
    }
}

/// `[web.host_identity]`: JWTs from the host application, with HMAC `secrets` or a
/// `jwks_url` (one of the two).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HostIdentitySettings {
    /// HMAC secrets (HS256 by default), each at least 32 bytes; several during a rotation.
    pub secrets: Vec<String>,
    /// The URL of the JWK Set with the host's public keys (RS256 and ES256 by default).
    pub jwks_url: Option<String>,
    /// The algorithms accepted (default: HS256 with secrets, RS256 and ES256 with a JWKS).
    pub algorithms: Vec<String>,
    /// The issuer (`iss`) tokens must have.
    pub issuer: Option<String>,
    /// The audience (`aud`) tokens must name.
    pub audience: Option<String>,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_secs: u64,
    /// The claim naming the user.
    pub user_claim: String,
    /// The shortest time between two fetches of the JWKS, in seconds.
    pub jwks_min_refetch_secs: u64,
    /// How long a fetched JWKS is used, in seconds.
    pub jwks_max_age_secs: u64,
}

impl Default for HostIdentitySettings {
    fn default() -> Self {
        HostIdentitySettings {
            secrets: Vec::new(),
            jwks_url: None,
            algorithms: Vec::new(),
            issuer: None,
            audience: None,
            leeway_secs: 60,
            user_claim: "sub".into(),
            jwks_min_refetch_secs: 30,
            jwks_max_age_secs: 3600,
        }
    }
}

impl std::fmt::Debug for HostIdentitySettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never shown.
        f.debug_struct("HostIdentitySettings")
            .field("secrets", &self.secrets.len())
            .field("jwks_url", &self.jwks_url)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

/// `key`'s `value` within `min..=max` (`most` says `max` in words).
fn in_range(key: &str, value: u64, min: u64, max: u64, most: &str) -> Result<(), SettingsError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!("{key} must be from {min} to {max} ({most}), got {value}").into())
    }
}

impl HostIdentitySettings {
    /// The JWT verifier's settings; the error names the key at fault (`host_identity`,
    /// `host_identity.algorithms`).
    pub fn jwt_config(&self) -> Result<JwtConfig, SettingsError> {
        let keys = match (self.secrets.is_empty(), &self.jwks_url) {
            (false, None) => {
                JwtKeys::Secrets(self.secrets.iter().map(|s| s.as_bytes().to_vec()).collect())
            }
            (true, Some(url)) => JwtKeys::Jwks(
                JwksSource::new(url.clone())
                    .min_refetch_interval(Duration::from_secs(self.jwks_min_refetch_secs))
                    .max_age(Duration::from_secs(self.jwks_max_age_secs)),
            ),
            _ => {
                return Err("host_identity: give either `secrets` (HMAC) or `jwks_url` \
                     (public keys), not both or neither"
                    .into());
            }
        };
        let algorithms = self
            .algorithms
            .iter()
            .map(|a| a.parse::<JwtAlgorithm>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("host_identity.algorithms: {e}"))?;
        let mut config = JwtConfig::with_keys(keys)
            .algorithms(algorithms)
            .leeway(Duration::from_secs(self.leeway_secs));
        if let Some(iss) = &self.issuer {
            config = config.issuer(iss.clone());
        }
        if let Some(aud) = &self.audience {
            config = config.audience(aud.clone());
        }
        config
            .validate()
            .map_err(|e| format!("host_identity: {e}"))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        self.jwt_config()?;
        in_range(
            "host_identity.leeway_secs",
            self.leeway_secs,
            0,
            DAY_SECS,
            "1 day",
        )?;
        in_range(
            "host_identity.jwks_min_refetch_secs",
            self.jwks_min_refetch_secs,
            0,
            DAY_SECS,
            "1 day",
        )?;
        in_range(
            "host_identity.jwks_max_age_secs",
            self.jwks_max_age_secs,
            1,
            30 * DAY_SECS,
            "30 days",
        )?;
        if self.user_claim.is_empty() {
            return Err("host_identity.user_claim must not be empty".into());
        }
        Ok(())
    }
}

impl WebSettings {
    /// Check the keys; the error names the one at fault (`secret`, `token_max_age_secs`,
    /// `host_identity.…`) and never echoes a secret.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if let Some(secret) = &self.secret
            && secret.len() < MIN_SECRET_BYTES
        {
            return Err(format!(
                "secret is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                secret.len()
            )
            .into());
        }
        in_range(
            "token_max_age_secs",
            self.token_max_age_secs,
            60,
            366 * DAY_SECS,
            "366 days",
        )?;
        if let Some(host) = &self.host_identity {
            host.validate()?;
        }
        Ok(())
    }

    /// How the web chat `channel` identifies visitors: tokens signed with `secret`, or with
    /// the secret kept in `store` (generated once, shared by every server on the database),
    /// and host identities when `host_identity` is set.
    pub async fn identity(
        &self,
        store: &Arc<dyn Store>,
        channel: &str,
    ) -> Result<ChatIdentity, crate::Error> {
        self.validate()
            .map_err(|e| crate::Error::settings(channel, e))?;
        let mut identity = match &self.secret {
            Some(secret) => ChatIdentity::new(secret.as_bytes().to_vec()),
            None => ChatIdentity::from_store(store.as_ref(), channel).await?,
        };
        identity = identity.max_age(Duration::from_secs(self.token_max_age_secs));
        if let Some(host) = &self.host_identity {
            let verifier = host
                .jwt_config()
                .and_then(|c| JwtVerifier::new(c).map_err(|e| format!("host_identity: {e}").into()))
                .map_err(|e| crate::Error::settings(channel, e))?;
            identity = identity
                .host(Arc::new(verifier))
                .user_claim(host.user_claim.clone());
        }
        Ok(identity)
    }
}
