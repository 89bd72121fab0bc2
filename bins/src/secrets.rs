//! `flowbot-server secrets …`: rotate the key of the secrets stored through the API, make a
//! new key, list what is stored (names and the key each is encrypted under, never values).

use flowbot_core::secrets::{SecretKey, SecretStore};

use crate::config::Config;
use crate::run::{RunError, open_store};

/// The usage of `flowbot-server secrets`.
pub const USAGE: &str = "usage: flowbot-server [--config FILE] secrets <command>\n\n\
  secrets rotate-key    encrypt every stored secret again under the current key: set the new\n\
                        key where [secrets_store] looks for it (FLOWBOT_SECRETS_KEY by default)\n\
                        and the old one as a previous key (FLOWBOT_SECRETS_PREVIOUS_KEYS)\n\
  secrets generate-key  print a new random key (base64)\n\
  secrets list          the stored secrets: name, key id, time stored (never values)";

fn usage(why: &str) -> RunError {
    RunError::Usage(format!("{why}\n\n{USAGE}"))
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Run `secrets <args>`; the answer is what to print.
pub async fn command(config: &Config, args: &[String]) -> Result<String, RunError> {
    let (sub, rest) = args
        .split_first()
        .ok_or_else(|| usage("secrets: which command?"))?;
    if !rest.is_empty() {
        return Err(usage(&format!("secrets {sub}: takes no arguments")));
    }
    let err = |e: flowbot_core::secrets::SecretError| RunError::Usage(e.to_string());
    match sub.as_str() {
        "generate-key" => Ok(format!("{}\n", SecretKey::generate_text().map_err(err)?)),
        "rotate-key" | "list" => {
            let ring = config.secrets_store.key_ring()?.ok_or_else(|| {
                RunError::Usage(format!(
                    "secrets {sub}: no key is configured: set {}",
                    config.secrets_store.key_place()
                ))
            })?;
            let current = ring.current().id().to_owned();
            let secrets = SecretStore::new(open_store(config).await?, ring);
            if sub == "list" {
                let all = secrets.list().await.map_err(err)?;
                if all.is_empty() {
                    return Ok("no stored secrets\n".into());
                }
                return Ok(all
                    .iter()
                    .map(|s| {
                        format!(
                            "{:<32}  key {}  stored {}\n",
                            s.name,
                            s.key.as_deref().unwrap_or("(malformed record)"),
                            s.updated_at.map_or_else(
                                || "-".to_owned(),
                                |t| t.format("%Y-%m-%d %H:%M").to_string()
                            )
                        )
                    })
                    .collect());
            }
            let done = secrets.rotate().await.map_err(err)?;
            Ok(format!(
                "re-encrypted {} secret{} under key {current}; {} already used it\n",
                done.resealed,
                plural(done.resealed),
                done.current
            ))
        }
        other => Err(usage(&format!("secrets: unknown command '{other}'"))),
    }
}
