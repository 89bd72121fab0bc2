//! `[web]`: the web chat channel, and how its visitors are identified (visitor tokens, and
//! identities signed by a site that embeds the chat).

use std::sync::Arc;
use std::time::Duration;

use flowbot_channels::web::ChatIdentity;
use flowbot_core::Store;
use flowbot_core::jwt::{JwksSource, JwtAlgorithm, JwtConfig, JwtKeys, JwtVerifier};
use serde::Deserialize;

use super::{ConfigError, DAY_SECS, err, in_range};

/// `[web]`
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve `/chat` and `/ws/chat`.
    pub enabled: bool,
    /// The secret visitor tokens are signed with (at least 32 bytes). Unset: one generated
    /// once and kept in the database, shared by every server.
    pub secret: Option<String>,
    /// How long a visitor token is honoured after it was issued, in seconds (each
    /// connection is given a new one).
    pub token_max_age_secs: u64,
    /// `[web.host_identity]`: accept identities signed by the site embedding the chat.
    pub host_identity: Option<HostIdentityConfig>,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig {
            enabled: true,
            secret: None,
            token_max_age_secs: flowbot_channels::web::identity::DEFAULT_TOKEN_MAX_AGE.as_secs(),
            host_identity: None,
        }
    }
}

impl std::fmt::Debug for WebConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never shown.
        f.debug_struct("WebConfig")
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
pub struct HostIdentityConfig {
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

impl Default for HostIdentityConfig {
    fn default() -> Self {
        HostIdentityConfig {
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

impl std::fmt::Debug for HostIdentityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are never shown.
        f.debug_struct("HostIdentityConfig")
            .field("secrets", &self.secrets.len())
            .field("jwks_url", &self.jwks_url)
            .field("algorithms", &self.algorithms)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

const PATH: &str = "web.host_identity";

impl HostIdentityConfig {
    /// The JWT verifier's settings, or the key at fault.
    pub fn jwt_config(&self) -> Result<JwtConfig, ConfigError> {
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
                return Err(err(
                    PATH,
                    "give either `secrets` (HMAC) or `jwks_url` (public keys), not both or neither",
                ));
            }
        };
        let algorithms = self
            .algorithms
            .iter()
            .map(|a| a.parse::<JwtAlgorithm>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(format!("{PATH}.algorithms"), e.to_string()))?;
        let mut config = JwtConfig::with_keys(keys)
            .algorithms(algorithms)
            .leeway(Duration::from_secs(self.leeway_secs));
        if let Some(iss) = &self.issuer {
            config = config.issuer(iss.clone());
        }
        if let Some(aud) = &self.audience {
            config = config.audience(aud.clone());
        }
        config.validate().map_err(|e| err(PATH, e.to_string()))?;
        Ok(config)
    }
}

impl WebConfig {
    /// Check the `[web]` keys, naming the one at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let min = flowbot_channels::web::identity::MIN_SECRET_BYTES;
        if let Some(secret) = &self.secret
            && secret.len() < min
        {
            return Err(err(
                "web.secret",
                format!("is {} bytes; at least {min} are needed", secret.len()),
            ));
        }
        in_range(
            "web.token_max_age_secs",
            self.token_max_age_secs,
            60,
            366 * DAY_SECS,
            "366 days",
        )?;
        if let Some(host) = &self.host_identity {
            host.jwt_config()?;
            in_range(
                &format!("{PATH}.leeway_secs"),
                host.leeway_secs,
                0,
                DAY_SECS,
                "1 day",
            )?;
            in_range(
                &format!("{PATH}.jwks_min_refetch_secs"),
                host.jwks_min_refetch_secs,
                0,
                DAY_SECS,
                "1 day",
            )?;
            in_range(
                &format!("{PATH}.jwks_max_age_secs"),
                host.jwks_max_age_secs,
                1,
                30 * DAY_SECS,
                "30 days",
            )?;
            if host.user_claim.is_empty() {
                return Err(err(format!("{PATH}.user_claim"), "must not be empty"));
            }
        }
        Ok(())
    }

    /// How the web chat identifies visitors: tokens signed with `web.secret` or the secret
    /// kept in `store`, and host identities when `[web.host_identity]` is set.
    pub async fn identity(
        &self,
        store: &Arc<dyn Store>,
    ) -> Result<ChatIdentity, crate::run::RunError> {
        let mut identity = match &self.secret {
            Some(secret) => ChatIdentity::new(secret.as_bytes().to_vec()),
            None => ChatIdentity::from_store(store.as_ref(), "web")
                .await
                .map_err(|e| {
                    crate::run::RunError::Channel(format!("web chat token secret: {e}"))
                })?,
        };
        identity = identity.max_age(Duration::from_secs(self.token_max_age_secs));
        if let Some(host) = &self.host_identity {
            let verifier = host
                .jwt_config()
                .and_then(|c| JwtVerifier::new(c).map_err(|e| err(PATH, e.to_string())))?;
            identity = identity
                .host(Arc::new(verifier))
                .user_claim(host.user_claim.clone());
        }
        Ok(identity)
    }
}

#[cfg(test)]
mod tests {
    use super::super::Config;

    fn load(env: &[(&str, &str)]) -> Result<Config, super::ConfigError> {
        Config::load(
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    #[test]
    fn web_identity_keys_are_read_and_checked_by_key() {
        let c = load(&[
            (
                "FLOWBOT_WEB__SECRET",
                "a-secret-of-thirty-two-bytes-0123456789",
            ),
            (
                "FLOWBOT_WEB__HOST_IDENTITY__JWKS_URL",
                "https://login.example.com/jwks.json",
            ),
            ("FLOWBOT_WEB__HOST_IDENTITY__ALGORITHMS", r#"["ES256"]"#),
            ("FLOWBOT_WEB__HOST_IDENTITY__AUDIENCE", "flowbot-chat"),
        ])
        .expect("valid");
        let host = c.web.host_identity.as_ref().expect("host identity");
        assert_eq!(host.user_claim, "sub");
        assert_eq!(host.algorithms, ["ES256"]);
        let debug = format!("{c:?}");
        assert!(
            !debug.contains("thirty-two"),
            "the secret is hidden: {debug}"
        );

        let path_of = |env: &[(&str, &str)]| load(env).expect_err("refused").path;
        assert_eq!(path_of(&[("FLOWBOT_WEB__SECRET", "short")]), "web.secret");
        assert_eq!(
            path_of(&[("FLOWBOT_WEB__TOKEN_MAX_AGE_SECS", "5")]),
            "web.token_max_age_secs"
        );
        assert_eq!(
            path_of(&[("FLOWBOT_WEB__HOST_IDENTITY__USER_CLAIM", "email")]),
            "web.host_identity",
            "neither secrets nor a JWKS URL"
        );
        assert_eq!(
            path_of(&[
                (
                    "FLOWBOT_WEB__HOST_IDENTITY__SECRETS",
                    r#"["0123456789abcdef0123456789abcdef"]"#
                ),
                (
                    "FLOWBOT_WEB__HOST_IDENTITY__JWKS_URL",
                    "https://login.example.com/jwks.json"
                ),
            ]),
            "web.host_identity"
        );
        assert_eq!(
            path_of(&[
                (
                    "FLOWBOT_WEB__HOST_IDENTITY__JWKS_URL",
                    "https://login.example.com/jwks.json"
                ),
                ("FLOWBOT_WEB__HOST_IDENTITY__ALGORITHMS", r#"["none"]"#),
            ]),
            "web.host_identity.algorithms"
        );
        let short = load(&[("FLOWBOT_WEB__HOST_IDENTITY__SECRETS", r#"["too short"]"#)])
            .expect_err("refused");
        assert!(short.message.contains("at least 32"), "{short}");
        assert!(
            !short.to_string().contains("too short"),
            "the secret is not echoed"
        );
        assert_eq!(
            path_of(&[
                (
                    "FLOWBOT_WEB__HOST_IDENTITY__SECRETS",
                    r#"["0123456789abcdef0123456789abcdef"]"#
                ),
                ("FLOWBOT_WEB__HOST_IDENTITY__LEEWAY_SECS", "90000"),
            ]),
            "web.host_identity"
        );
    }
}
