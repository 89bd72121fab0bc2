//! `flowbot-server keys …`: make, list and revoke API keys from the command line (the first
//! admin key cannot come from the API, which needs one).

use flowbot_core::auth::{ApiKeys, KeyInfo};

use crate::config::Config;
use crate::run::{RunError, open_store};

/// The usage of `flowbot-server keys`.
pub const USAGE: &str = "usage: flowbot-server [--config FILE] keys <command>\n\n\
  keys create --name NAME --role ROLE [--expires-in DURATION]\n\
                  make a key (shown once); DURATION like 90d or 12h\n\
  keys list       every key: id, name, role, created, expires, revoked, last used\n\
  keys revoke ID  revoke a key\n\
Roles: admin, editor, operator, viewer, and [auth.roles] of the configuration.";

fn usage(why: &str) -> RunError {
    RunError::Usage(format!("{why}\n\n{USAGE}"))
}

fn line(k: &KeyInfo) -> String {
    let when = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(
            || "-".to_owned(),
            |t| t.format("%Y-%m-%d %H:%M").to_string(),
        )
    };
    format!(
        "{}  {:<20}  {:<10}  created {}  expires {}  revoked {}  last used {}",
        k.id,
        k.name,
        k.role,
        when(Some(k.created_at)),
        when(k.expires_at),
        when(k.revoked_at),
        when(k.last_used_at)
    )
}

/// Run `keys <args>` against the configured database; the answer is what to print.
pub async fn command(config: &Config, args: &[String]) -> Result<String, RunError> {
    let (sub, rest) = args
        .split_first()
        .ok_or_else(|| usage("keys: which command?"))?;
    let store = open_store(config).await?;
    let keys = ApiKeys::new(store);
    let auth_err = |e: flowbot_core::auth::AuthError| RunError::Usage(e.to_string());
    match sub.as_str() {
        "create" => {
            let (mut name, mut role, mut expires) = (None, None, None);
            let mut it = rest.iter();
            while let Some(flag) = it.next() {
                let value = it
                    .next()
                    .ok_or_else(|| usage(&format!("keys create: {flag} needs a value")))?;
                match flag.as_str() {
                    "--name" => name = Some(value.clone()),
                    "--role" => role = Some(value.clone()),
                    "--expires-in" => {
                        let d = humantime::parse_duration(value).map_err(|e| {
                            usage(&format!("keys create: --expires-in '{value}': {e}"))
                        })?;
                        let d = chrono::Duration::from_std(d)
                            .ok()
                            .and_then(|d| flowbot_core::clock::now().checked_add_signed(d))
                            .ok_or_else(|| {
                                usage(&format!("keys create: --expires-in '{value}' is too long"))
                            })?;
                        expires = Some(d);
                    }
                    other => return Err(usage(&format!("keys create: unknown flag '{other}'"))),
                }
            }
            let name = name.ok_or_else(|| usage("keys create: --name is required"))?;
            let role = role.ok_or_else(|| usage("keys create: --role is required"))?;
            let roles = config.auth.roles()?;
            if roles.get(&role).is_none() {
                return Err(usage(&format!(
                    "keys create: no role '{role}' (one of {})",
                    roles.names().join(", ")
                )));
            }
            let made = keys.create(&name, &role, expires).await.map_err(auth_err)?;
            let mut out = format!(
                "API key '{}' (id {}, role {}). It is shown this once:\n{}\n",
                made.info.name, made.info.id, made.info.role, made.key
            );
            if !config.auth.api_keys {
                out.push_str(
                    "note: this server does not accept API keys until [auth] api_keys = true\n",
                );
            }
            Ok(out)
        }
        "list" => {
            let all = keys.list().await.map_err(auth_err)?;
            if all.is_empty() {
                return Ok("no API keys\n".into());
            }
            Ok(all.iter().map(|k| line(k) + "\n").collect())
        }
        "revoke" => {
            let [id] = rest else {
                return Err(usage("keys revoke: give one key id"));
            };
            match keys.revoke(id).await.map_err(auth_err)? {
                Some(k) => Ok(format!("revoked {}\n", line(&k))),
                None => Err(RunError::Usage(format!("keys revoke: no API key '{id}'"))),
            }
        }
        other => Err(usage(&format!("keys: unknown command '{other}'"))),
    }
}
