//! `[secrets_store]`: where the key of secrets stored through the API comes from (see
//! docs/security.md, "Secrets at rest").

use std::path::{Path, PathBuf};

use flowbot_core::secrets::{KeyRing, SecretKey};
use serde::Deserialize;

use super::{ConfigError, err};

/// `[secrets_store]`. The current key is read from `key_file` when it is set, else from the
/// environment variable `key_env`; with neither, secrets cannot be stored (the secrets API
/// answers 409). Previous keys (a rotation under way) come from `previous_keys_file` and the
/// variable `previous_keys_env`, both if set. A key is 32 bytes as 64 hex digits or base64.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecretsStoreConfig {
    /// The environment variable holding the current key.
    pub key_env: String,
    /// A file holding the current key (wins over `key_env`).
    pub key_file: Option<PathBuf>,
    /// The environment variable holding previous keys, separated by commas or whitespace.
    pub previous_keys_env: String,
    /// A file holding previous keys, one a line (`#` starts a comment).
    pub previous_keys_file: Option<PathBuf>,
}

/// The default of `key_env`.
pub(super) const KEY_ENV: &str = "FLOWBOT_SECRETS_KEY";
/// The default of `previous_keys_env`.
pub(super) const PREVIOUS_KEYS_ENV: &str = "FLOWBOT_SECRETS_PREVIOUS_KEYS";

impl Default for SecretsStoreConfig {
    fn default() -> Self {
        SecretsStoreConfig {
            key_env: KEY_ENV.into(),
            key_file: None,
            previous_keys_env: PREVIOUS_KEYS_ENV.into(),
            previous_keys_file: None,
        }
    }
}

fn read(path: &Path, at: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        err(
            at,
            format!("cannot read the key file '{}': {e}", path.display()),
        )
    })
}

/// A key from `text`, an error at `at` without the text.
fn key(text: &str, at: &str, from: &str) -> Result<SecretKey, ConfigError> {
    SecretKey::parse(text).map_err(|e| err(at, format!("{from}: {e}")))
}

impl SecretsStoreConfig {
    /// Where the current key is looked for, in words (for messages).
    pub fn key_place(&self) -> String {
        match &self.key_file {
            Some(f) => format!("the file '{}' ([secrets_store] key_file)", f.display()),
            None => format!(
                "the environment variable {} ([secrets_store] key_env)",
                self.key_env
            ),
        }
    }

    /// The key ring from the process environment and the key files; `None` when no current
    /// key is configured.
    pub fn key_ring(&self) -> Result<Option<KeyRing>, ConfigError> {
        self.key_ring_with(|name| std::env::var(name).ok())
    }

    /// [`key_ring`](Self::key_ring) with `env` for the environment.
    pub fn key_ring_with(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<KeyRing>, ConfigError> {
        let current = match &self.key_file {
            Some(path) => {
                let at = "secrets_store.key_file";
                Some(key(&read(path, at)?, at, &format!("'{}'", path.display()))?)
            }
            None => env(&self.key_env)
                .filter(|v| !v.trim().is_empty())
                .map(|v| {
                    key(
                        &v,
                        "secrets_store.key_env",
                        &format!("the variable {}", self.key_env),
                    )
                })
                .transpose()?,
        };
        let mut previous = Vec::new();
        if let Some(path) = &self.previous_keys_file {
            let at = "secrets_store.previous_keys_file";
            let text = read(path, at)?;
            for (n, line) in text.lines().enumerate() {
                let line = line.split('#').next().unwrap_or_default().trim();
                if !line.is_empty() {
                    previous.push(key(
                        line,
                        at,
                        &format!("'{}' line {}", path.display(), n + 1),
                    )?);
                }
            }
        }
        if let Some(v) = env(&self.previous_keys_env) {
            let at = "secrets_store.previous_keys_env";
            for (n, k) in v
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|k| !k.is_empty())
                .enumerate()
            {
                previous.push(key(
                    k,
                    at,
                    &format!("the variable {} (key {})", self.previous_keys_env, n + 1),
                )?);
            }
        }
        match current {
            Some(current) => Ok(Some(KeyRing::new(current).with_previous(previous))),
            None if previous.is_empty() => Ok(None),
            None => Err(err(
                "secrets_store",
                format!(
                    "previous keys are set but no current key: set {}",
                    self.key_place()
                ),
            )),
        }
    }

    /// Check the section, naming the key at fault.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        for (at, name) in [
            ("secrets_store.key_env", &self.key_env),
            ("secrets_store.previous_keys_env", &self.previous_keys_env),
        ] {
            if name.is_empty() || name.contains(['=', '\0']) {
                return Err(err(
                    at,
                    format!("'{name}' is not an environment variable name"),
                ));
            }
        }
        if self.key_env == self.previous_keys_env {
            return Err(err(
                "secrets_store.previous_keys_env",
                "must name another variable than key_env",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use std::collections::BTreeMap;

    fn load(toml_text: &str) -> Result<Config, ConfigError> {
        crate::config::tests::load_unique(toml_text, &[])
    }

    fn text() -> String {
        SecretKey::generate_text().expect("random")
    }

    #[test]
    fn keys_come_from_the_environment_or_files() -> Result<(), ConfigError> {
        let (current, old1, old2) = (text(), text(), text());
        let id = |t: &str| SecretKey::parse(t).expect("key").id().to_owned();
        let c = Config::default().secrets_store;
        assert_eq!(c.key_env, "FLOWBOT_SECRETS_KEY");
        assert!(c.key_ring_with(|_| None)?.is_none());
        let env = BTreeMap::from([
            ("FLOWBOT_SECRETS_KEY", current.clone()),
            ("FLOWBOT_SECRETS_PREVIOUS_KEYS", format!("{old1}, {old2}")),
        ]);
        let ring = c
            .key_ring_with(|n| env.get(n).cloned())?
            .expect("a key ring");
        assert_eq!(ring.current().id(), id(&current));
        let previous: Vec<&str> = ring.previous().iter().map(|k| k.id()).collect();
        assert_eq!(previous, [id(&old1), id(&old2)]);

        let dir = std::env::temp_dir().join(format!("flowbot-keys-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| err("test", e.to_string()))?;
        let (key_file, old_file) = (dir.join("key"), dir.join("old"));
        std::fs::write(&key_file, format!("{current}\n")).map_err(|e| err("t", e.to_string()))?;
        std::fs::write(
            &old_file,
            format!("# rotated in May\n{old1}\n\n{old2} # before\n"),
        )
        .map_err(|e| err("t", e.to_string()))?;
        let c = load(&format!(
            "[secrets_store]\nkey_file = {:?}\nprevious_keys_file = {:?}\nkey_env = \"MY_KEY\"\n",
            key_file.display().to_string(),
            old_file.display().to_string()
        ))?
        .secrets_store;
        let ring = c.key_ring_with(|_| None)?.expect("a key ring");
        assert_eq!(ring.current().id(), id(&current));
        assert_eq!(ring.previous().len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn bad_keys_and_settings_are_errors_naming_the_setting_not_the_key() {
        let bad = "0123456789abcdef-not-a-key";
        let c = SecretsStoreConfig::default();
        let e = c
            .key_ring_with(|n| (n == KEY_ENV).then(|| bad.to_owned()))
            .expect_err("a bad key");
        assert_eq!(e.path, "secrets_store.key_env");
        assert!(
            e.message.contains("FLOWBOT_SECRETS_KEY") && !e.message.contains(bad),
            "{e}"
        );
        let e = c
            .key_ring_with(|n| (n == PREVIOUS_KEYS_ENV).then(text))
            .expect_err("previous keys alone");
        assert_eq!(e.path, "secrets_store");
        let c = SecretsStoreConfig {
            key_file: Some("/nonexistent/flowbot-key".into()),
            ..SecretsStoreConfig::default()
        };
        let e = c.key_ring_with(|_| None).expect_err("no file");
        assert_eq!(e.path, "secrets_store.key_file");
        let e = load("[secrets_store]\nkey_env = \"\"\n").expect_err("empty name");
        assert_eq!(e.path, "secrets_store.key_env");
        let e = load("[secrets_store]\nkey = \"x\"\n").expect_err("unknown key");
        assert_eq!(e.path, "secrets_store.key");
        let e = load("[secrets_store]\nprevious_keys_env = \"FLOWBOT_SECRETS_KEY\"\n")
            .expect_err("same variable");
        assert_eq!(e.path, "secrets_store.previous_keys_env");
    }
}
