//! `[auth.oidc]`: people sign in to the admin API through an OpenID Connect provider
//! (authorization code with PKCE) and hold a session cookie. See docs/security.md.

use std::collections::BTreeMap;

use flowbot_core::auth::Roles;
use serde::Deserialize;

use super::{ConfigError, err};
use crate::http::oidc::CALLBACK_PATH;

/// `[auth.oidc]`: sign-in through an OpenID Connect provider.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL, e.g. `https://idp.example/realms/ops`; its discovery
    /// document is read from `<issuer>/.well-known/openid-configuration`.
    pub issuer: String,
    /// This server's client id at the provider.
    pub client_id: String,
    /// The client secret (none for a public client, which PKCE protects alone).
    pub client_secret: Option<String>,
    /// Where the provider sends people back: this server's public URL followed by
    /// `/auth/callback`, exactly as registered at the provider. The session cookie is
    /// `Secure` when it is `https`.
    pub redirect_url: String,
    /// Scopes asked for besides `openid` (default `email`, `profile`).
    #[serde(default = "scopes")]
    pub scopes: Vec<String>,
    /// The ID token claim naming the person (default `sub`; `email` reads better in the
    /// audit log).
    #[serde(default = "sub")]
    pub subject_claim: String,
    /// The ID token claim holding the person's role or roles (a string or a list; a dotted
    /// path reaches into objects). Default `role`.
    #[serde(default = "role")]
    pub role_claim: String,
    /// Claim values → role names (e.g. `"flowbot-admins" = "admin"`). Without a map, a
    /// claim value is a role name. A person whose values name no role is refused (403).
    #[serde(default)]
    pub roles: BTreeMap<String, String>,
    /// How long a session lasts, in seconds (default 28800, 8 hours; 60 to 2592000).
    #[serde(default = "session_secs")]
    pub session_secs: u64,
    /// Sign-in attempts (`/auth/login` and `/auth/callback`) per client address a minute
    /// (default 30; 0: no limit). Loopback clients are not limited.
    #[serde(default = "attempts")]
    pub attempts_per_address_per_minute: u32,
}

impl std::fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The client secret is a secret.
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "…"))
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("subject_claim", &self.subject_claim)
            .field("role_claim", &self.role_claim)
            .field("roles", &self.roles)
            .field("session_secs", &self.session_secs)
            .field(
                "attempts_per_address_per_minute",
                &self.attempts_per_address_per_minute,
            )
            .finish()
    }
}

fn scopes() -> Vec<String> {
    vec!["email".into(), "profile".into()]
}

fn sub() -> String {
    "sub".into()
}

fn role() -> String {
    "role".into()
}

fn session_secs() -> u64 {
    8 * 3600
}

fn attempts() -> u32 {
    30
}

/// An absolute `http` or `https` URL, or what is wrong with `value`.
fn web_url(value: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(value).map_err(|e| format!("'{value}' is not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(format!("'{value}' is not an http or https URL"));
    }
    Ok(url)
}

impl OidcConfig {
    /// Whether the session cookie is `Secure`: the browser reaches the server over https.
    pub fn secure_cookie(&self) -> bool {
        self.redirect_url.starts_with("https:")
    }

    /// Check the section against the server's roles.
    pub(super) fn validate(&self, roles: &Roles) -> Result<(), ConfigError> {
        let at = |key: &str| format!("auth.oidc.{key}");
        web_url(&self.issuer).map_err(|e| err(at("issuer"), e))?;
        if self.issuer.contains('?') || self.issuer.contains('#') {
            return Err(err(at("issuer"), "an issuer URL has no query or fragment"));
        }
        let redirect = web_url(&self.redirect_url).map_err(|e| err(at("redirect_url"), e))?;
        if !redirect.path().ends_with(CALLBACK_PATH)
            || redirect.query().is_some()
            || redirect.fragment().is_some()
        {
            return Err(err(
                at("redirect_url"),
                format!(
                    "must be this server's public URL followed by {CALLBACK_PATH}, e.g. https://flowbot.example{CALLBACK_PATH}, got '{}'",
                    self.redirect_url
                ),
            ));
        }
        if self.client_id.trim().is_empty() {
            return Err(err(at("client_id"), "must not be empty"));
        }
        if self.client_secret.as_ref().is_some_and(String::is_empty) {
            return Err(err(
                at("client_secret"),
                "must not be empty (leave it out for a public client)",
            ));
        }
        for s in &self.scopes {
            if s.is_empty() || s.contains(char::is_whitespace) {
                return Err(err(at("scopes"), format!("'{s}' is not a scope")));
            }
        }
        for (key, value) in [
            ("subject_claim", &self.subject_claim),
            ("role_claim", &self.role_claim),
        ] {
            if value.trim().is_empty() {
                return Err(err(at(key), "must name a claim"));
            }
        }
        if !(60..=30 * 86_400).contains(&self.session_secs) {
            return Err(err(
                at("session_secs"),
                format!(
                    "must be from 60 to 2592000 (30 days), got {}",
                    self.session_secs
                ),
            ));
        }
        for (value, role) in &self.roles {
            if roles.get(role).is_none() {
                return Err(err(
                    format!("auth.oidc.roles.{value}"),
                    format!("no role '{role}' (one of {})", roles.names().join(", ")),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> OidcConfig {
        toml::from_str(
            r#"
            issuer = "https://idp.example/realms/ops"
            client_id = "flowbot"
            client_secret = "s3cret"
            redirect_url = "https://flowbot.example/auth/callback"
            roles = { "flowbot-admins" = "admin" }
            "#,
        )
        .expect("config")
    }

    #[test]
    fn defaults_and_the_secret_stays_out_of_debug() {
        let c = config();
        assert_eq!(c.scopes, ["email", "profile"]);
        assert_eq!(c.subject_claim, "sub");
        assert_eq!(c.role_claim, "role");
        assert_eq!(c.session_secs, 28_800);
        assert!(c.secure_cookie());
        assert!(c.validate(&Roles::builtin()).is_ok());
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn bad_values_name_their_key() {
        let roles = Roles::builtin();
        let bad = |f: fn(&mut OidcConfig)| {
            let mut c = config();
            f(&mut c);
            c.validate(&roles).expect_err("refused")
        };
        let e = bad(|c| c.issuer = "idp.example".into());
        assert_eq!(e.path, "auth.oidc.issuer");
        let e = bad(|c| c.issuer = "ftp://idp.example".into());
        assert!(e.message.contains("http or https"), "{e}");
        let e = bad(|c| c.redirect_url = "https://flowbot.example/elsewhere".into());
        assert_eq!(e.path, "auth.oidc.redirect_url");
        assert!(e.message.contains("/auth/callback"), "{e}");
        let e = bad(|c| c.client_id = " ".into());
        assert_eq!(e.path, "auth.oidc.client_id");
        let e = bad(|c| c.client_secret = Some(String::new()));
        assert_eq!(e.path, "auth.oidc.client_secret");
        let e = bad(|c| c.scopes = vec!["email profile".into()]);
        assert_eq!(e.path, "auth.oidc.scopes");
        let e = bad(|c| c.session_secs = 10);
        assert_eq!(e.path, "auth.oidc.session_secs");
        let e = bad(|c| {
            c.roles.insert("ops".into(), "superuser".into());
        });
        assert_eq!(e.path, "auth.oidc.roles.ops");
        assert!(e.message.contains("no role 'superuser'"), "{e}");
        let e = bad(|c| c.role_claim = String::new());
        assert_eq!(e.path, "auth.oidc.role_claim");
    }

    #[test]
    fn plain_http_means_no_secure_cookie() {
        let mut c = config();
        c.redirect_url = "http://127.0.0.1:8080/auth/callback".into();
        assert!(!c.secure_cookie());
        assert!(c.validate(&Roles::builtin()).is_ok());
    }
}
