//! Reading the configuration: environment values, key paths, and deserialising section by
//! section so that an error names the key it is about.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::{Config, ConfigError, WebhookSettings, err};

pub(super) fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

pub(super) fn set_path(
    table: &mut toml::Table,
    keys: &[String],
    value: toml::Value,
) -> Result<(), String> {
    let (last, parents) = keys.split_last().ok_or("empty key")?;
    let mut t = table;
    for k in parents {
        let entry = t
            .entry(k.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .ok_or_else(|| format!("'{k}' is not a table"))?;
    }
    t.insert(last.clone(), value);
    Ok(())
}

/// Deserialise, reporting the dotted path of the offending key.
pub(super) fn deserialize_with_path(table: &toml::Table) -> Result<Config, ConfigError> {
    // Deserialise section by section, so an error names its section, then check the
    // whole (which catches unknown sections).
    let known = [
        "server",
        "database",
        "log",
        "workers",
        "web",
        "webhooks",
        "bot",
        "demo",
        "rules",
        "secrets",
        "notifiers",
        "telegram",
        "tailchat",
        "slack",
        "discord",
        "llm",
        "auth",
        "limits",
        "network",
        "secrets_store",
        "gpu",
        "knowledge",
    ];
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            return Err(err(
                key_name(key),
                format!("unknown section; expected one of {}", known.join(", ")),
            ));
        }
    }
    fn section<T: for<'de> Deserialize<'de> + Default>(
        table: &toml::Table,
        name: &str,
    ) -> Result<T, ConfigError> {
        match table.get(name) {
            None => Ok(T::default()),
            Some(v) => T::deserialize(v.clone())
                .map_err(|e| err(field_path(name, &e.to_string()), clean(&e.to_string()))),
        }
    }
    let webhooks = match table.get("webhooks") {
        None => BTreeMap::new(),
        Some(toml::Value::Table(t)) => {
            let mut out = BTreeMap::new();
            for (name, v) in t {
                let entry = WebhookSettings::deserialize(v.clone()).map_err(|e| {
                    err(
                        field_path(&format!("webhooks.{}", key_name(name)), &e.to_string()),
                        clean(&e.to_string()),
                    )
                })?;
                out.insert(name.clone(), entry);
            }
            out
        }
        Some(_) => {
            return Err(err(
                "webhooks",
                "must be a table of [webhooks.<name>] sections",
            ));
        }
    };
    Ok(Config {
        server: section(table, "server")?,
        database: section(table, "database")?,
        log: section(table, "log")?,
        workers: section(table, "workers")?,
        web: section(table, "web")?,
        webhooks,
        bot: section(table, "bot")?,
        demo: section(table, "demo")?,
        rules: section(table, "rules")?,
        secrets: section(table, "secrets")?,
        notifiers: named_sections(table, "notifiers")?,
        telegram: named_sections(table, "telegram")?,
        tailchat: named_sections(table, "tailchat")?,
        slack: named_sections(table, "slack")?,
        discord: named_sections(table, "discord")?,
        llm: section(table, "llm")?,
        gpu: section(table, "gpu")?,
        knowledge: section(table, "knowledge")?,
        auth: section(table, "auth")?,
        limits: section(table, "limits")?,
        network: section(table, "network")?,
        secrets_store: section(table, "secrets_store")?,
    })
}

/// A table of `[<section>.<name>]` tables, each deserialised on its own so an error names it.
fn named_sections<T: for<'de> Deserialize<'de>>(
    table: &toml::Table,
    section: &str,
) -> Result<BTreeMap<String, T>, ConfigError> {
    match table.get(section) {
        None => Ok(BTreeMap::new()),
        Some(toml::Value::Table(t)) => t
            .iter()
            .map(|(name, v)| {
                let at = format!("{section}.{}", key_name(name));
                T::deserialize(v.clone())
                    .map(|e| (name.clone(), e))
                    .map_err(|e| err(field_path(&at, &e.to_string()), clean(&e.to_string())))
            })
            .collect(),
        Some(_) => Err(err(
            section,
            format!("must be a table of [{section}.<name>] sections"),
        )),
    }
}

/// A key as a path segment: as it is, or quoted as TOML writes it when it is empty (`""`),
/// so that an error about it still names it.
fn key_name(key: &str) -> String {
    if key.is_empty() {
        "\"\"".to_owned()
    } else {
        key.to_owned()
    }
}

/// `section.field` when the serde message names a field (unknown field `x` / invalid value
/// for `x`), else the section.
fn field_path(section: &str, message: &str) -> String {
    let field = message
        .split('`')
        .nth(1)
        .filter(|_| message.contains("unknown field") || message.contains("missing field"));
    match field {
        Some(f) => format!("{section}.{f}"),
        None => section.to_owned(),
    }
}

fn clean(message: &str) -> String {
    message.lines().next().unwrap_or(message).trim().to_owned()
}
