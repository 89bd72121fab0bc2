//! Who a web chat visitor is.
//!
//! An anonymous visitor gets fresh ids and a **visitor token** from the server (in the
//! `welcome` frame): `v1~<user>~<conversation>~<issued at>~<HMAC-SHA256>`, signed with the
//! channel's secret. Presented again (`/ws/chat?token=…`) it resumes that user and
//! conversation; anything else (no token, a token for other ids, a tampered or expired one)
//! gets a new identity, so a guessed id reveals nothing and cannot speak as anyone. Each
//! connection is given a newly issued token, so an active visitor's token does not expire.
//!
//! A site embedding the chat can instead pass its own signed identity
//! (`/ws/chat?identity=<JWT>`), verified with [`JwtVerifier`]: the user id comes from a claim
//! (`sub` by default), the conversation is that user's, so a signed-in user has the same
//! history on every device.

use std::sync::Arc;
use std::time::Duration;

use flowbot_core::StoreError;
use flowbot_core::jwt::JwtVerifier;
use flowbot_core::lease::LeaseStore;
use flowbot_core::store::KvStore;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// Shortest visitor-token secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// How long a visitor token is honoured after it was issued, by default (30 days).
pub const DEFAULT_TOKEN_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);

/// How far in the future a token's issue time may be (clock skew between servers).
const FUTURE_SKEW_SECS: i64 = 300;

/// The prefix of the user ids of host-signed identities (`h:<claim>`), which anonymous ids
/// (32 hex digits) never have.
pub const HOST_USER_PREFIX: &str = "h:";

/// The key-value namespace (reserved for FlowBot) where [`ChatIdentity::from_store`] keeps
/// the generated secret.
pub const SECRET_NAMESPACE: &str = "flowbot.web";

/// How a [`WebChat`](super::WebChat) identifies visitors; see the [module docs](self).
#[derive(Clone)]
pub struct ChatIdentity {
    secret: Vec<u8>,
    max_age: Duration,
    host: Option<Arc<JwtVerifier>>,
    user_claim: String,
}

impl std::fmt::Debug for ChatIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret is never shown.
        f.debug_struct("ChatIdentity")
            .field("max_age", &self.max_age)
            .field("host", &self.host)
            .field("user_claim", &self.user_claim)
            .finish_non_exhaustive()
    }
}

/// Why a presented visitor token was not honoured (told to the visitor, who then starts
/// over with a new identity).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a visitor token.
    #[error("the chat token is malformed")]
    Malformed,
    /// The signature does not match (tampered, or signed with another secret).
    #[error("the chat token is not valid")]
    BadSignature,
    /// Issued longer ago than the max age.
    #[error("the chat token has expired")]
    Expired,
    /// Issued in the future.
    #[error("the chat token's issue time is in the future")]
    FromTheFuture,
}

/// A host identity that was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// This chat takes no host identities.
    #[error("this chat does not accept signed identities")]
    NotAccepted,
    /// The JWT did not verify.
    #[error("the signed identity was refused: {0}")]
    Refused(#[from] flowbot_core::jwt::JwtError),
    /// The user claim is missing or not a string.
    #[error("the signed identity has no '{0}' claim naming the user")]
    NoUser(String),
}

/// A verified host identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostUser {
    /// The user id (`h:` and the claim, or `h:` and a hash of a claim that is not a valid id).
    pub user: String,
    /// The `name` claim, if it is a short string.
    pub name: Option<String>,
}

impl ChatIdentity {
    /// Visitor tokens signed with `secret` (at least [`MIN_SECRET_BYTES`]; checked by
    /// [`validate`](Self::validate)), valid for [`DEFAULT_TOKEN_MAX_AGE`], no host identities.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        ChatIdentity {
            secret: secret.into(),
            max_age: DEFAULT_TOKEN_MAX_AGE,
            host: None,
            user_claim: "sub".into(),
        }
    }

    /// A random secret of this process: tokens are not honoured by other processes or after
    /// a restart (use a configured secret, or [`from_store`](Self::from_store), for those).
    pub fn random() -> Self {
        ChatIdentity::new(random_secret())
    }

    /// The secret kept in `store` for `channel`, generated (32 random bytes) by the first
    /// process to ask, so every server sharing the store honours the same tokens, after
    /// restarts too.
    pub async fn from_store<S>(store: &S, channel: &str) -> Result<Self, crate::Error>
    where
        S: KvStore + LeaseStore + ?Sized,
    {
        let key = format!("{channel}.token_secret");
        let store_err = |source| crate::Error::Store {
            channel: channel.to_owned(),
            source,
        };
        let fail = |detail: String| store_err(StoreError::Corrupt(detail));
        let read = |v: serde_json::Value| {
            v.as_str()
                .and_then(|s| hex::decode(s).ok())
                .filter(|s| s.len() >= MIN_SECRET_BYTES)
                .ok_or_else(|| {
                    fail(format!(
                        "the stored {SECRET_NAMESPACE}/{key} is not a secret"
                    ))
                })
        };
        if let Some(v) = store
            .kv_get(SECRET_NAMESPACE, &key)
            .await
            .map_err(store_err)?
        {
            return Ok(ChatIdentity::new(read(v)?));
        }
        // Servers starting together on a new database: one generates, the others read it.
        let lease_name = format!("{SECRET_NAMESPACE}.{key}");
        let owner = uuid::Uuid::new_v4().to_string();
        for _ in 0..200 {
            if let Some(lease) = store
                .acquire_lease(&lease_name, &owner, Duration::from_secs(30))
                .await
                .map_err(store_err)?
            {
                let secret = match store
                    .kv_get(SECRET_NAMESPACE, &key)
                    .await
                    .map_err(store_err)?
                {
                    Some(v) => read(v),
                    None => {
                        let secret = random_secret();
                        store
                            .kv_set(
                                SECRET_NAMESPACE,
                                &key,
                                &serde_json::Value::String(hex::encode(&secret)),
                            )
                            .await
                            .map_err(store_err)?;
                        tracing::info!(channel, "generated the web chat token secret");
                        Ok(secret)
                    }
                };
                store.release_lease(&lease).await.map_err(store_err)?;
                return secret.map(ChatIdentity::new);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(store_err(StoreError::Unavailable(
            "another process held the secret's lease for 10 s without writing it".into(),
        )))
    }

    /// Honour visitor tokens for `max_age` after they were issued.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// Accept identities signed by the host site, checked by `verifier`.
    pub fn host(mut self, verifier: Arc<JwtVerifier>) -> Self {
        self.host = Some(verifier);
        self
    }

    /// The claim of a host identity that names the user (default `sub`).
    pub fn user_claim(mut self, claim: impl Into<String>) -> Self {
        self.user_claim = claim.into();
        self
    }

    /// Whether host identities are accepted.
    pub fn accepts_host(&self) -> bool {
        self.host.is_some()
    }

    /// Check the settings, saying what is wrong.
    pub fn validate(&self) -> std::result::Result<(), crate::SettingsError> {
        self.problems().map_err(crate::SettingsError)
    }

    /// [`Self::validate`], in words.
    fn problems(&self) -> std::result::Result<(), String> {
        if self.secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "the chat token secret is {} bytes; at least {MIN_SECRET_BYTES} are needed",
                self.secret.len()
            ));
        }
        if self.max_age < Duration::from_secs(60) {
            return Err("the chat token max age must be at least 60 seconds".into());
        }
        if self.user_claim.is_empty() {
            return Err("the user claim is empty".into());
        }
        Ok(())
    }

    /// A token for `user` in `conversation` of `channel`, issued now.
    pub(crate) fn issue(&self, channel: &str, user: &str, conversation: &str) -> String {
        sign_token(
            &self.secret,
            channel,
            user,
            conversation,
            flowbot_core::clock::now().timestamp(),
        )
    }

    /// The user and conversation `token` was issued for, if it is valid now.
    pub fn check(
        &self,
        channel: &str,
        token: &str,
    ) -> std::result::Result<(String, String), TokenError> {
        let parts: Vec<&str> = token.split('~').collect();
        let [version, user, conversation, issued, signature] = parts[..] else {
            return Err(TokenError::Malformed);
        };
        if version != "v1"
            || !crate::valid_id(user, 64)
            || !crate::valid_id(conversation, 64)
            || signature.len() != 64
        {
            return Err(TokenError::Malformed);
        }
        let issued: i64 = issued.parse().map_err(|_| TokenError::Malformed)?;
        let signature = hex::decode(signature).map_err(|_| TokenError::Malformed)?;
        // Constant-time comparison.
        mac(&self.secret, channel, user, conversation, issued)
            .verify_slice(&signature)
            .map_err(|_| TokenError::BadSignature)?;
        let now = flowbot_core::clock::now().timestamp();
        if issued > now.saturating_add(FUTURE_SKEW_SECS) {
            return Err(TokenError::FromTheFuture);
        }
        let max_age = i64::try_from(self.max_age.as_secs()).unwrap_or(i64::MAX);
        if now.saturating_sub(issued) > max_age {
            return Err(TokenError::Expired);
        }
        Ok((user.to_owned(), conversation.to_owned()))
    }

    /// The user of a host-signed identity.
    pub async fn host_user(&self, jwt: &str) -> std::result::Result<HostUser, IdentityError> {
        let verifier = self.host.as_ref().ok_or(IdentityError::NotAccepted)?;
        let claims = verifier.verify(jwt).await?;
        let id = match claims.get(&self.user_claim) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => s.clone(),
            Some(serde_json::Value::Number(n)) => n.to_string(),
            _ => return Err(IdentityError::NoUser(self.user_claim.clone())),
        };
        let max = 64 - HOST_USER_PREFIX.len();
        let user = if crate::valid_id(&id, max) {
            format!("{HOST_USER_PREFIX}{id}")
        } else {
            // Ids with other characters (`auth0|123`) or too long: a stable digest of them.
            let digest = hex::encode(Sha256::digest(id.as_bytes()));
            format!("{HOST_USER_PREFIX}{}", &digest[..40])
        };
        let name = claims
            .get("name")
            .and_then(|v| v.as_str())
            .filter(|n| !n.trim().is_empty() && n.chars().count() <= 100)
            .map(str::to_owned);
        Ok(HostUser { user, name })
    }
}

/// A visitor token for `user` in `conversation` of web chat channel `channel`, issued at
/// `issued_at` (Unix seconds), signed with `secret`: what the server hands a visitor.
/// Anyone holding the secret can make one (an application's own tests, a trusted backend
/// that opens a conversation for a user).
pub fn sign_token(
    secret: &[u8],
    channel: &str,
    user: &str,
    conversation: &str,
    issued_at: i64,
) -> String {
    let signature = mac(secret, channel, user, conversation, issued_at)
        .finalize()
        .into_bytes();
    format!(
        "v1~{user}~{conversation}~{issued_at}~{}",
        hex::encode(signature)
    )
}

fn mac(secret: &[u8], channel: &str, user: &str, conversation: &str, issued: i64) -> Hmac<Sha256> {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes keys of any length");
    // Fields joined by newlines, which none of them can hold.
    mac.update(
        format!("flowbot-web-chat-v1\n{channel}\n{user}\n{conversation}\n{issued}").as_bytes(),
    );
    mac
}

/// 32 bytes from the operating system's random source (two v4 UUIDs, 244 random bits).
fn random_secret() -> Vec<u8> {
    let mut secret = Vec::with_capacity(32);
    secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    secret
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_names_its_user_and_conversation_and_nothing_else() {
        let id = ChatIdentity::new(SECRET);
        let token = id.issue("web", "u1", "c1");
        assert_eq!(
            id.check("web", &token),
            Ok(("u1".to_owned(), "c1".to_owned()))
        );
        // Another channel, another secret, another id: refused.
        assert_eq!(id.check("web2", &token), Err(TokenError::BadSignature));
        let other = ChatIdentity::new(b"fedcba9876543210fedcba9876543210".to_vec());
        assert_eq!(other.check("web", &token), Err(TokenError::BadSignature));
        let swapped = token.replacen("~u1~", "~u2~", 1);
        assert_eq!(id.check("web", &swapped), Err(TokenError::BadSignature));
        for bad in ["", "v1", "v1~u~c~1~zz", "v2~u1~c1~1~00", &"~".repeat(9)] {
            assert_eq!(id.check("web", bad), Err(TokenError::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn old_and_future_tokens_are_refused() {
        let id = ChatIdentity::new(SECRET).max_age(Duration::from_secs(3600));
        let now = flowbot_core::clock::now().timestamp();
        let old = sign_token(SECRET, "web", "u1", "c1", now - 7200);
        assert_eq!(id.check("web", &old), Err(TokenError::Expired));
        let recent = sign_token(SECRET, "web", "u1", "c1", now - 60);
        assert!(id.check("web", &recent).is_ok());
        let future = sign_token(SECRET, "web", "u1", "c1", now + 3600);
        assert_eq!(id.check("web", &future), Err(TokenError::FromTheFuture));
        let far = sign_token(SECRET, "web", "u1", "c1", i64::MIN);
        assert_eq!(id.check("web", &far), Err(TokenError::Expired));
    }

    #[test]
    fn settings_are_checked_and_the_secret_stays_hidden() {
        assert!(ChatIdentity::new(b"short".to_vec()).validate().is_err());
        assert!(ChatIdentity::random().validate().is_ok());
        assert!(
            ChatIdentity::new(SECRET)
                .max_age(Duration::from_secs(1))
                .validate()
                .is_err()
        );
        assert!(!format!("{:?}", ChatIdentity::new(SECRET)).contains("0123456789abcdef"));
        assert_ne!(random_secret(), random_secret());
    }
}
