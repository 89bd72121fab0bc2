//! Secrets at rest: named values (workflow secrets, tokens, keys) kept encrypted in the
//! store's key-value data, for workflows' `{{ secrets.NAME }}` next to the configured ones.
//!
//! Each value is sealed with AES-256-GCM under the current key of a [`KeyRing`], with a
//! random 96-bit nonce of its own and the secret's name as associated data, so a sealed value
//! copied to another name does not open. A sealed value records the id of the key that sealed
//! it (a digest of the key, not the key); opening takes that key from the ring, whose previous
//! keys keep values readable while [`SecretStore::rotate`] seals them again under the current
//! one.
//!
//! Values and keys never appear in `Debug` or `Display` output or in errors: an error names
//! the secret and, where it helps, the key's id.
//!
//! The cipher is aws-lc-rs's `RandomizedNonceKey` (AES-256-GCM, nonces from its own random
//! generator): the same crate rustls builds for every FlowBot server, so no second
//! implementation of AES is compiled, and a maintained, constant-time, hardware-accelerated
//! one is used rather than anything written here.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::error::StoreError;
use crate::store::KvStore;
#[cfg(feature = "workflows")]
use crate::workflow::{SecretSource, SourceSecrets, WorkflowError};

/// The key-value namespace of stored secrets (one key per secret name).
pub const SECRETS_NAMESPACE: &str = "flowbot.secrets";
/// Longest secret name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Shortest secret value, in bytes: run records hide values this long or longer (a shorter one
/// could not be told apart from ordinary text).
pub const MIN_VALUE_LEN: usize = 4;
/// Longest secret value, in bytes.
pub const MAX_VALUE_LEN: usize = 64 * 1024;
/// Bytes in a key (AES-256).
pub const KEY_LEN: usize = 32;

/// The version of [`Sealed`]'s layout.
const SEALED_VERSION: u32 = 1;

/// Errors of secrets at rest. None carries a value or a key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// Key material that is not 32 bytes in base64 or hex (the text is not repeated).
    #[error("invalid secret key: {0}")]
    InvalidKey(String),
    /// A name that cannot be a secret's.
    #[error("invalid secret name '{name}': {reason}")]
    InvalidName {
        /// The name (at most its first 64 characters).
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value that cannot be stored.
    #[error("secret '{name}': {reason}")]
    InvalidValue {
        /// The secret.
        name: String,
        /// What is wrong with it (never the value).
        reason: String,
    },
    /// The value was sealed under a key the ring does not hold.
    #[error(
        "secret '{name}' was encrypted under key {key}, which is neither the current key ({current}) nor a previous one: configure that key as a previous key"
    )]
    UnknownKey {
        /// The secret.
        name: String,
        /// The id of the key that sealed it.
        key: String,
        /// The id of the ring's current key.
        current: String,
    },
    /// The sealed value does not open under its key with its name: tampered with, moved from
    /// another name, or sealed under a different key with the same id.
    #[error(
        "secret '{name}' could not be decrypted: the stored value was altered, moved from another name, or the key does not match"
    )]
    Decrypt {
        /// The secret.
        name: String,
    },
    /// The stored record is not a sealed value.
    #[error("secret '{name}': the stored record is malformed: {reason}")]
    Corrupt {
        /// The secret.
        name: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The random generator or the cipher failed.
    #[error("encryption failed: {0}")]
    Crypto(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A 256-bit key for secrets at rest. `Debug` shows its id only; the key's bytes are wiped
/// from the buffers this type reads them into.
#[derive(Clone)]
pub struct SecretKey {
    id: String,
    aead: Arc<RandomizedNonceKey>,
}

impl SecretKey {
    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, SecretError> {
        if bytes.len() != KEY_LEN {
            return Err(SecretError::InvalidKey(format!(
                "a key is {KEY_LEN} bytes, this one is {}",
                bytes.len()
            )));
        }
        let aead = RandomizedNonceKey::new(&AES_256_GCM, bytes)
            .map_err(|_| SecretError::Crypto("the cipher refused the key".into()))?;
        let digest = Sha256::new()
            .chain_update(b"flowbot secret key id\0")
            .chain_update(bytes)
            .finalize();
        Ok(SecretKey {
            id: hex::encode(&digest[..8]),
            aead: Arc::new(aead),
        })
    }

    /// A key from text: 64 hex digits, or base64 (standard or URL-safe, padded or not) of
    /// 32 bytes, such as `openssl rand -base64 32` prints. Surrounding whitespace is ignored.
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        let text = text.trim();
        if text.is_empty() {
            return Err(SecretError::InvalidKey("the key is empty".into()));
        }
        let bytes = Zeroizing::new(
            if text.len() == 2 * KEY_LEN && text.bytes().all(|b| b.is_ascii_hexdigit()) {
                hex::decode(text).ok()
            } else {
                // Padded or not, standard or URL-safe alphabet.
                let unpadded = text.trim_end_matches('=');
                STANDARD_NO_PAD
                    .decode(unpadded)
                    .or_else(|_| URL_SAFE_NO_PAD.decode(unpadded))
                    .ok()
            }
            .ok_or_else(|| {
                SecretError::InvalidKey(
                    "not hex or base64: give 32 bytes as 64 hex digits or in base64 (e.g. the output of `openssl rand -base64 32`)".into(),
                )
            })?,
        );
        SecretKey::from_bytes(&bytes)
    }

    /// A new random key, as the base64 text [`parse`](Self::parse) reads.
    pub fn generate_text() -> Result<String, SecretError> {
        let mut bytes = Zeroizing::new([0u8; KEY_LEN]);
        aws_lc_rs::rand::fill(&mut bytes[..])
            .map_err(|_| SecretError::Crypto("the random generator failed".into()))?;
        Ok(STANDARD.encode(&bytes[..]))
    }

    /// The key's id: the first 8 bytes of a SHA-256 digest of it, in hex. It tells keys apart
    /// and says nothing about the key.
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey").field("id", &self.id).finish()
    }
}

/// A sealed secret value as stored: the key's id, the nonce, the ciphertext with its tag,
/// and when the value was stored.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sealed {
    /// Layout version (1).
    pub v: u32,
    /// Id of the key that sealed it.
    pub key: String,
    /// The 96-bit nonce, base64.
    pub nonce: String,
    /// Ciphertext and tag, base64.
    pub sealed: String,
    /// When the value was stored (kept when it is sealed again under another key).
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for Sealed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealed")
            .field("key", &self.key)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl Sealed {
    /// The stored record of secret `name`.
    fn from_value(name: &str, v: &Value) -> Result<Self, SecretError> {
        let sealed = Sealed::deserialize(v).map_err(|e| SecretError::Corrupt {
            name: name.to_owned(),
            reason: e.to_string(),
        })?;
        if sealed.v != SEALED_VERSION {
            return Err(SecretError::Corrupt {
                name: name.to_owned(),
                reason: format!(
                    "layout version {} (this FlowBot reads {SEALED_VERSION})",
                    sealed.v
                ),
            });
        }
        Ok(sealed)
    }

    fn to_value(&self) -> Value {
        serde_json::json!({
            "v": self.v,
            "key": self.key,
            "nonce": self.nonce,
            "sealed": self.sealed,
            "updated_at": self.updated_at,
        })
    }
}

/// The keys secrets are sealed and opened with: the current key, which seals, and previous
/// keys, which still open values sealed before a rotation.
#[derive(Clone, Debug)]
pub struct KeyRing {
    current: SecretKey,
    previous: Vec<SecretKey>,
}

/// The associated data of secret `name`'s value: its name, in a context of its own.
fn aad(name: &str) -> Vec<u8> {
    format!("flowbot.secrets/v{SEALED_VERSION}/{name}").into_bytes()
}

impl KeyRing {
    /// A ring of one key.
    pub fn new(current: SecretKey) -> Self {
        KeyRing {
            current,
            previous: Vec::new(),
        }
    }

    /// The ring with `keys` as previous keys (the current key and repeats are left out).
    pub fn with_previous(mut self, keys: impl IntoIterator<Item = SecretKey>) -> Self {
        for k in keys {
            if k.id != self.current.id && !self.previous.iter().any(|p| p.id == k.id) {
                self.previous.push(k);
            }
        }
        self
    }

    /// The key that seals.
    pub fn current(&self) -> &SecretKey {
        &self.current
    }

    /// The keys that only open.
    pub fn previous(&self) -> &[SecretKey] {
        &self.previous
    }

    fn find(&self, id: &str) -> Option<&SecretKey> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|k| k.id == id)
    }

    /// Seal `value` as secret `name`'s under the current key.
    pub fn seal(&self, name: &str, value: &str) -> Result<Sealed, SecretError> {
        check_name(name)?;
        check_value(name, value)?;
        self.seal_at(name, value, crate::clock::now())
    }

    fn seal_at(
        &self,
        name: &str,
        value: &str,
        updated_at: DateTime<Utc>,
    ) -> Result<Sealed, SecretError> {
        let mut buf = Zeroizing::new(value.as_bytes().to_vec());
        let nonce = self
            .current
            .aead
            .seal_in_place_append_tag(Aad::from(aad(name)), &mut *buf)
            .map_err(|_| SecretError::Crypto("sealing failed".into()))?;
        Ok(Sealed {
            v: SEALED_VERSION,
            key: self.current.id.clone(),
            nonce: STANDARD.encode(nonce.as_ref()),
            sealed: STANDARD.encode(&buf[..]),
            updated_at,
        })
    }

    /// Open secret `name`'s sealed value with the key that sealed it.
    pub fn open(&self, name: &str, sealed: &Sealed) -> Result<String, SecretError> {
        let corrupt = |reason: &str| SecretError::Corrupt {
            name: name.to_owned(),
            reason: reason.to_owned(),
        };
        let key = self
            .find(&sealed.key)
            .ok_or_else(|| SecretError::UnknownKey {
                name: name.to_owned(),
                key: sealed.key.clone(),
                current: self.current.id.clone(),
            })?;
        let nonce: [u8; NONCE_LEN] = STANDARD
            .decode(&sealed.nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| corrupt("the nonce is not 12 bytes of base64"))?;
        let mut buf = Zeroizing::new(
            STANDARD
                .decode(&sealed.sealed)
                .map_err(|_| corrupt("the ciphertext is not base64"))?,
        );
        let plain = key
            .aead
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name)),
                &mut buf[..],
            )
            .map_err(|_| SecretError::Decrypt {
                name: name.to_owned(),
            })?;
        std::str::from_utf8(plain)
            .map(str::to_owned)
            .map_err(|_| corrupt("the value is not UTF-8"))
    }

    /// `sealed` sealed again under the current key (keeping its time), or `None` when the
    /// current key sealed it.
    pub fn reseal(&self, name: &str, sealed: &Sealed) -> Result<Option<Sealed>, SecretError> {
        if sealed.key == self.current.id {
            return Ok(None);
        }
        let value = Zeroizing::new(self.open(name, sealed)?);
        self.seal_at(name, &value, sealed.updated_at).map(Some)
    }
}

/// Check a secret's name: a template identifier (`{{ secrets.NAME }}`), ASCII letters,
/// digits and `_`, not starting with a digit, at most [`MAX_NAME_LEN`] bytes.
pub fn check_name(name: &str) -> Result<(), SecretError> {
    let bad = |reason: &str| SecretError::InvalidName {
        name: name.chars().take(64).collect(),
        reason: reason.to_owned(),
    };
    if name.is_empty() {
        return Err(bad("the name is empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(&format!(
            "the name is longer than {MAX_NAME_LEN} bytes"
        )));
    }
    if !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        || name.as_bytes()[0].is_ascii_digit()
    {
        return Err(bad(
            "use ASCII letters, digits and '_', not starting with a digit (it is written {{ secrets.NAME }})",
        ));
    }
    Ok(())
}

fn check_value(name: &str, value: &str) -> Result<(), SecretError> {
    let bad = |reason: String| SecretError::InvalidValue {
        name: name.to_owned(),
        reason,
    };
    if value.len() < MIN_VALUE_LEN {
        return Err(bad(format!(
            "the value is shorter than {MIN_VALUE_LEN} bytes (run records could not hide it)"
        )));
    }
    if value.len() > MAX_VALUE_LEN {
        return Err(bad(format!(
            "the value is longer than {MAX_VALUE_LEN} bytes"
        )));
    }
    Ok(())
}

/// A stored secret, without its value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretInfo {
    /// Its name.
    pub name: String,
    /// When its value was stored (`None` when the record is malformed).
    pub updated_at: Option<DateTime<Utc>>,
    /// The id of the key that sealed it (`None` when the record is malformed).
    pub key: Option<String>,
}

/// What [`SecretStore::rotate`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Rotation {
    /// Values sealed again under the current key.
    pub resealed: usize,
    /// Values the current key had sealed already.
    pub current: usize,
}

/// Secrets sealed under a [`KeyRing`] in a store's key-value data ([`SECRETS_NAMESPACE`]).
/// Any process with the same store and key reads what another stored.
#[derive(Clone)]
pub struct SecretStore {
    store: Arc<dyn KvStore>,
    ring: KeyRing,
}

impl fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretStore")
            .field("ring", &self.ring)
            .finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Secrets in `store`'s key-value data (any store: `Arc<dyn Store>` converts), sealed
    /// and opened with `ring`.
    pub fn new(store: Arc<dyn KvStore>, ring: KeyRing) -> Self {
        SecretStore { store, ring }
    }

    /// The key ring.
    pub fn ring(&self) -> &KeyRing {
        &self.ring
    }

    /// Store `value` as secret `name` (replacing any); true when it is new.
    pub async fn put(&self, name: &str, value: &str) -> Result<bool, SecretError> {
        let sealed = self.ring.seal(name, value)?;
        let new = self.store.kv_get(SECRETS_NAMESPACE, name).await?.is_none();
        self.store
            .kv_set(SECRETS_NAMESPACE, name, &sealed.to_value())
            .await?;
        Ok(new)
    }

    /// Delete secret `name`; true when it existed.
    pub async fn delete(&self, name: &str) -> Result<bool, SecretError> {
        check_name(name)?;
        Ok(self.store.kv_delete(SECRETS_NAMESPACE, name).await?)
    }

    /// Every stored secret, without values, by name.
    pub async fn list(&self) -> Result<Vec<SecretInfo>, SecretError> {
        Ok(self
            .store
            .kv_list(SECRETS_NAMESPACE)
            .await?
            .into_iter()
            .map(|(name, v)| {
                let sealed = Sealed::from_value(&name, &v).ok();
                SecretInfo {
                    updated_at: sealed.as_ref().map(|s| s.updated_at),
                    key: sealed.map(|s| s.key),
                    name,
                }
            })
            .collect())
    }

    /// The value of secret `name`, if stored.
    pub async fn get(&self, name: &str) -> Result<Option<String>, SecretError> {
        check_name(name)?;
        match self.store.kv_get(SECRETS_NAMESPACE, name).await? {
            None => Ok(None),
            Some(v) => self
                .ring
                .open(name, &Sealed::from_value(name, &v)?)
                .map(Some),
        }
    }

    /// Every stored secret with its value; the first that does not open is an error naming it.
    pub async fn all(&self) -> Result<BTreeMap<String, String>, SecretError> {
        self.store
            .kv_list(SECRETS_NAMESPACE)
            .await?
            .into_iter()
            .map(|(name, v)| {
                let value = self.ring.open(&name, &Sealed::from_value(&name, &v)?)?;
                Ok((name, value))
            })
            .collect()
    }

    /// Seal every value again under the ring's current key (key rotation: build the store
    /// with the new key as current and the old ones as previous). Every value is opened before
    /// any is written, so a value no key of the ring opens fails the rotation with nothing
    /// changed. A value stored by another process during the rotation is kept (and sealed
    /// again if an old key sealed it); run the rotation when nothing else stores secrets, as
    /// the store has no compare-and-set to make that airtight.
    pub async fn rotate(&self) -> Result<Rotation, SecretError> {
        let mut todo = Vec::new();
        let mut done = Rotation {
            resealed: 0,
            current: 0,
        };
        for (name, v) in self.store.kv_list(SECRETS_NAMESPACE).await? {
            let sealed = Sealed::from_value(&name, &v)?;
            match self.ring.reseal(&name, &sealed)? {
                None => done.current += 1,
                Some(again) => todo.push((name, v, again)),
            }
        }
        for (name, before, mut again) in todo {
            match self.store.kv_get(SECRETS_NAMESPACE, &name).await? {
                // Deleted meanwhile.
                None => continue,
                Some(now) if now != before => {
                    // Stored again meanwhile: seal the new value, unless it is current.
                    match self.ring.reseal(&name, &Sealed::from_value(&name, &now)?)? {
                        None => {
                            done.current += 1;
                            continue;
                        }
                        Some(a) => again = a,
                    }
                }
                Some(_) => {}
            }
            self.store
                .kv_set(SECRETS_NAMESPACE, &name, &again.to_value())
                .await?;
            done.resealed += 1;
        }
        Ok(done)
    }
}

#[cfg(feature = "workflows")]
fn workflow_error(e: SecretError) -> WorkflowError {
    match e {
        SecretError::Store(s) => WorkflowError::Store(s),
        other => WorkflowError::Secrets(other.to_string()),
    }
}

/// For the workflow engine: every value that opens, and for each that does not, why (a
/// secret altered in the database fails the nodes that use it, not every node).
#[cfg(feature = "workflows")]
#[async_trait::async_trait]
impl SecretSource for SecretStore {
    async fn names(&self) -> Result<std::collections::BTreeSet<String>, WorkflowError> {
        Ok(self
            .list()
            .await
            .map_err(workflow_error)?
            .into_iter()
            .map(|i| i.name)
            .collect())
    }

    async fn values(&self) -> Result<SourceSecrets, WorkflowError> {
        let mut out = SourceSecrets::default();
        let stored = self
            .store
            .kv_list(SECRETS_NAMESPACE)
            .await
            .map_err(WorkflowError::Store)?;
        for (name, v) in stored {
            match Sealed::from_value(&name, &v).and_then(|s| self.ring.open(&name, &s)) {
                Ok(value) => {
                    out.values.insert(name, value);
                }
                Err(e) => {
                    out.unreadable.insert(name, e.to_string());
                }
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALUE: &str = "sk-live-0123456789abcdef";

    fn key() -> SecretKey {
        SecretKey::parse(&SecretKey::generate_text().expect("random")).expect("key")
    }

    #[test]
    fn a_value_round_trips_and_each_sealing_has_its_own_nonce() {
        let ring = KeyRing::new(key());
        let a = ring.seal("api_token", VALUE).expect("seal");
        let b = ring.seal("api_token", VALUE).expect("seal");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.sealed, b.sealed);
        assert_eq!(a.key, ring.current().id());
        assert_eq!(ring.open("api_token", &a).expect("open"), VALUE);
        assert_eq!(ring.open("api_token", &b).expect("open"), VALUE);
        // As stored and read back.
        let stored = Sealed::from_value("api_token", &a.to_value()).expect("record");
        assert_eq!(stored, a);
        assert!(!a.to_value().to_string().contains(VALUE));
    }

    #[test]
    fn keys_parse_from_hex_and_base64_and_bad_ones_are_refused_without_echo() {
        let bytes = [7u8; KEY_LEN];
        let hex_key = SecretKey::parse(&hex::encode(bytes)).expect("hex");
        let b64 = SecretKey::parse(&format!("  {}\n", STANDARD.encode(bytes))).expect("base64");
        let url = SecretKey::parse(&URL_SAFE_NO_PAD.encode([0xfbu8; KEY_LEN])).expect("url-safe");
        let std_fb = SecretKey::parse(&STANDARD.encode([0xfbu8; KEY_LEN])).expect("standard");
        assert_eq!(hex_key.id(), b64.id());
        assert_eq!(url.id(), std_fb.id());
        assert_ne!(hex_key.id(), url.id());
        assert_eq!(hex_key.id().len(), 16);
        for bad in [
            "",
            "   ",
            "not a key at all!",
            &STANDARD.encode([1u8; 16]),
            &"ab".repeat(31),
        ] {
            let e = SecretKey::parse(bad).expect_err(bad).to_string();
            assert!(e.starts_with("invalid secret key"), "{e}");
            if !bad.trim().is_empty() {
                assert!(!e.contains(bad.trim()), "{e}");
            }
        }
    }

    #[test]
    fn another_key_does_not_open_and_the_error_names_the_secret_only() {
        let ring = KeyRing::new(key());
        let sealed = ring.seal("db_password", VALUE).expect("seal");
        let other = KeyRing::new(key());
        let e = other.open("db_password", &sealed).expect_err("wrong key");
        assert!(matches!(e, SecretError::UnknownKey { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.contains("'db_password'") && text.contains(&sealed.key),
            "{text}"
        );
        assert!(!text.contains(VALUE));
        // A key claiming the right id (a record edited to point at the current key).
        let claimed = Sealed {
            key: other.current().id().to_owned(),
            ..sealed
        };
        let e = other.open("db_password", &claimed).expect_err("wrong key");
        assert!(matches!(e, SecretError::Decrypt { ref name } if name == "db_password"));
        assert!(!format!("{e} {e:?}").contains(VALUE));
    }

    #[test]
    fn a_tampered_value_does_not_open() {
        let ring = KeyRing::new(key());
        let sealed = ring.seal("token", VALUE).expect("seal");
        let mut bytes = STANDARD.decode(&sealed.sealed).expect("base64");
        bytes[3] ^= 1;
        let flipped = Sealed {
            sealed: STANDARD.encode(&bytes),
            ..sealed.clone()
        };
        let e = ring.open("token", &flipped).expect_err("tampered");
        assert_eq!(
            e.to_string(),
            SecretError::Decrypt {
                name: "token".into()
            }
            .to_string()
        );
        // The tag cut off, another nonce, garbage.
        let cut = Sealed {
            sealed: STANDARD.encode(&bytes[..bytes.len() - 16]),
            ..sealed.clone()
        };
        assert!(matches!(
            ring.open("token", &cut),
            Err(SecretError::Decrypt { .. })
        ));
        let renonced = Sealed {
            nonce: STANDARD.encode([0u8; NONCE_LEN]),
            ..sealed.clone()
        };
        assert!(matches!(
            ring.open("token", &renonced),
            Err(SecretError::Decrypt { .. })
        ));
        let garbage = Sealed {
            nonce: "!!".into(),
            ..sealed
        };
        assert!(matches!(
            ring.open("token", &garbage),
            Err(SecretError::Corrupt { .. })
        ));
        let e = Sealed::from_value("token", &serde_json::json!({"v": 1})).expect_err("record");
        assert!(
            e.to_string()
                .starts_with("secret 'token': the stored record is malformed")
        );
    }

    #[test]
    fn a_value_moved_to_another_name_does_not_open() {
        let ring = KeyRing::new(key());
        let sealed = ring.seal("admin_token", VALUE).expect("seal");
        let e = ring.open("guest_token", &sealed).expect_err("moved");
        assert!(matches!(e, SecretError::Decrypt { ref name } if name == "guest_token"));
    }

    #[test]
    fn rotation_reseals_under_the_new_key_and_the_old_one_then_opens_nothing() {
        let (old, new) = (key(), key());
        let before = KeyRing::new(old.clone())
            .seal("webhook_secret", VALUE)
            .expect("seal");
        // During the rotation: the new key seals, the old one still opens.
        let during =
            KeyRing::new(new.clone()).with_previous([old.clone(), new.clone(), old.clone()]);
        assert_eq!(during.previous().len(), 1);
        assert_eq!(during.open("webhook_secret", &before).expect("open"), VALUE);
        let after = during
            .reseal("webhook_secret", &before)
            .expect("reseal")
            .expect("an old key sealed it");
        assert_eq!(after.key, new.id());
        assert_eq!(after.updated_at, before.updated_at);
        assert!(
            during
                .reseal("webhook_secret", &after)
                .expect("reseal")
                .is_none()
        );
        // After: the new key alone opens it; the old key alone does not.
        assert_eq!(
            KeyRing::new(new)
                .open("webhook_secret", &after)
                .expect("open"),
            VALUE
        );
        assert!(matches!(
            KeyRing::new(old).open("webhook_secret", &after),
            Err(SecretError::UnknownKey { .. })
        ));
        // A value the ring cannot open is not resealed.
        let stranger = KeyRing::new(key()).seal("other", VALUE).expect("seal");
        assert!(matches!(
            during.reseal("other", &stranger),
            Err(SecretError::UnknownKey { .. })
        ));
    }

    #[test]
    fn names_and_values_are_checked() {
        let ring = KeyRing::new(key());
        for good in ["a", "_x", "API_TOKEN_2", &"n".repeat(MAX_NAME_LEN)] {
            check_name(good).expect(good);
        }
        for bad in [
            "",
            "2fa",
            "with-dash",
            "dotted.name",
            "sp ace",
            "é",
            &"n".repeat(MAX_NAME_LEN + 1),
        ] {
            let e = ring.seal(bad, VALUE).expect_err(bad);
            assert!(matches!(e, SecretError::InvalidName { .. }), "{bad}: {e}");
        }
        for bad in ["", "abc", &"v".repeat(MAX_VALUE_LEN + 1)] {
            let e = ring.seal("name", bad).expect_err("value");
            assert!(matches!(e, SecretError::InvalidValue { .. }), "{e}");
            if !bad.is_empty() {
                assert!(!e.to_string().contains(bad), "{e}");
            }
        }
        ring.seal("name", "abcd").expect("the shortest value");
    }

    #[test]
    fn debug_output_shows_no_key_and_no_value() {
        let text = SecretKey::generate_text().expect("random");
        let k = SecretKey::parse(&text).expect("key");
        let raw = STANDARD.decode(&text).expect("base64");
        let ring = KeyRing::new(k.clone()).with_previous([key()]);
        let sealed = ring.seal("name", VALUE).expect("seal");
        let shown = format!("{k:?} {ring:?} {sealed:?} {:#?}", ring);
        assert!(shown.contains(k.id()), "{shown}");
        for hidden in [
            text.as_str(),
            &hex::encode(&raw),
            VALUE,
            sealed.sealed.as_str(),
            sealed.nonce.as_str(),
        ] {
            assert!(!shown.contains(hidden), "{shown}");
        }
    }
}
