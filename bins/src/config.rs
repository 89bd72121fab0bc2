//! Configuration: one TOML file plus `FLOWBOT_*` environment overrides, with defaults that
//! start a useful single-node server with no file at all.
//!
//! Environment variables name a key path with `__` between levels:
//! `FLOWBOT_SERVER__LISTEN=0.0.0.0:8080`, `FLOWBOT_DATABASE__URL=postgres://…`,
//! `FLOWBOT_WEBHOOKS__CRM__CALLBACK_URL=https://…`. Values are read as TOML values when they
//! parse as one (numbers, booleans, arrays) and as strings otherwise. Variables without `__`
//! (such as `FLOWBOT_CONFIG`) are not config keys. Unknown keys and invalid values are
//! rejected at start with the key's path.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

mod platforms;
pub use platforms::{DiscordEntry, SlackEntry, TailchatEntry, TelegramEntry, TelegramMode};

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// HTTP server.
    pub server: ServerConfig,
    /// Database.
    pub database: DatabaseConfig,
    /// Logging.
    pub log: LogConfig,
    /// Task workers (embedded agent and `flowbot-agent`).
    pub workers: WorkersConfig,
    /// Web chat channel.
    pub web: WebConfig,
    /// Generic webhook channels, by name.
    pub webhooks: BTreeMap<String, WebhookEntry>,
    /// How the bot answers the people it talks to.
    pub bot: BotConfig,
    /// The demo bot.
    pub demo: DemoConfig,
    /// Rule files.
    pub rules: RulesConfig,
    /// Named secrets for workflows (`{{ secrets.name }}`, hook triggers), by name.
    pub secrets: SecretValues,
    /// Notifiers for the `notify` action, by name.
    pub notifiers: BTreeMap<String, NotifierEntry>,
    /// Telegram bots, by channel name.
    pub telegram: BTreeMap<String, TelegramEntry>,
    /// Tailchat bots, by channel name.
    pub tailchat: BTreeMap<String, TailchatEntry>,
    /// Slack apps, by channel name.
    pub slack: BTreeMap<String, SlackEntry>,
    /// Discord applications, by channel name.
    pub discord: BTreeMap<String, DiscordEntry>,
}

/// `[notifiers.<name>]`: a send-only channel for the `notify` action, by `kind`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum NotifierEntry {
    /// ntfy: `base_url` (default `https://ntfy.sh`), `topic`, optional `token`.
    Ntfy {
        /// The server.
        #[serde(default = "ntfy_url")]
        base_url: String,
        /// The topic.
        topic: String,
        /// Access token for a protected topic.
        token: Option<String>,
    },
    /// A Slack incoming webhook: `url`.
    SlackWebhook {
        /// The webhook URL Slack gave.
        url: String,
    },
    /// Pushover: `token` (application), `user` (user or group key), `base_url` (default
    /// `https://api.pushover.net`).
    Pushover {
        /// The API.
        #[serde(default = "pushover_url")]
        base_url: String,
        /// Application token.
        token: String,
        /// User or group key.
        user: String,
    },
    /// E-mail over SMTP: `host`, `port`, `tls` (`starttls`, `tls` or `none`), `username`,
    /// `password`, `from`, `to` (a list).
    Email {
        /// SMTP server.
        host: String,
        /// Port (default: 587 for starttls, 465 for tls, 25 for none).
        port: Option<u16>,
        /// Connection security.
        #[serde(default)]
        tls: flowbot_channels::notifiers::SmtpTls,
        /// Login.
        username: Option<String>,
        /// Password.
        password: Option<String>,
        /// Sender address.
        from: String,
        /// Recipients.
        to: Vec<String>,
        /// A PEM file of extra root certificates to trust (a private CA).
        #[serde(default)]
        ca_file: Option<std::path::PathBuf>,
    },
    /// A JSON `POST` to `url`, signed with `secret` when given.
    Webhook {
        /// Where.
        url: String,
        /// HMAC secret.
        secret: Option<String>,
    },
}

fn ntfy_url() -> String {
    "https://ntfy.sh".into()
}

fn pushover_url() -> String {
    "https://api.pushover.net".into()
}

impl NotifierEntry {
    /// The URL it posts to (checked at start; empty for e-mail).
    pub fn url(&self) -> &str {
        match self {
            NotifierEntry::Ntfy { base_url, .. } | NotifierEntry::Pushover { base_url, .. } => {
                base_url
            }
            NotifierEntry::SlackWebhook { url } | NotifierEntry::Webhook { url, .. } => url,
            NotifierEntry::Email { .. } => "",
        }
    }
}

impl std::fmt::Debug for NotifierEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Tokens and webhook URLs are secrets: only the kind is shown.
        let kind = match self {
            NotifierEntry::Ntfy { .. } => "ntfy",
            NotifierEntry::SlackWebhook { .. } => "slack_webhook",
            NotifierEntry::Pushover { .. } => "pushover",
            NotifierEntry::Webhook { .. } => "webhook",
            NotifierEntry::Email { .. } => "email",
        };
        f.debug_struct("NotifierEntry")
            .field("kind", &kind)
            .finish_non_exhaustive()
    }
}

/// `[secrets]`: name = value. Values never appear in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(transparent)]
pub struct SecretValues(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys()).finish()
    }
}

/// `[server]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Run an embedded agent (workers and schedules) in the server process.
    pub agent: bool,
    /// Largest request body in bytes; larger ones get 413.
    pub body_limit_bytes: usize,
    /// Time limit of one HTTP request in seconds; slower ones get 408.
    pub request_timeout_secs: u64,
    /// How long shutdown waits for requests, sockets and tasks, in seconds.
    pub shutdown_timeout_secs: u64,
    /// Origins allowed by CORS; empty (the default) turns CORS off.
    pub cors_origins: Vec<String>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            agent: true,
            body_limit_bytes: 64 * 1024,
            request_timeout_secs: 30,
            shutdown_timeout_secs: 30,
            cors_origins: Vec::new(),
        }
    }
}

/// `[database]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path/to/file.db` or `postgres://user@host/db`.
    pub url: String,
    /// Connection pool size (PostgreSQL).
    pub max_connections: u32,
    /// PostgreSQL schema for FlowBot's tables (created if missing); default: the server's
    /// search path, usually `public`.
    pub schema: Option<String>,
    /// SQLite: while webhooks and API requests flood in, the least share of the database
    /// writer's time left to processing them (0.01 to 1; 1: no priority for acknowledgements).
    pub sqlite_work_share: f64,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://./data/flowbot.db".into(),
            max_connections: 10,
            schema: None,
            sqlite_work_share: flowbot_store::DEFAULT_WORK_SHARE,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `pretty` or `json`.
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `info,flowbot_core=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Pretty,
            level: "info".into(),
        }
    }
}

/// `[workers]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WorkersConfig {
    /// Tasks run at once.
    pub concurrency: usize,
    /// Polling interval when no wake-up arrives, in milliseconds.
    pub poll_interval_ms: u64,
    /// Lease length in seconds (2 to 86400); leases are extended every third of it.
    pub lease_secs: u64,
    /// How often expired leases and processes that ended are looked for, in milliseconds
    /// (50 to 3600000).
    pub recover_interval_ms: u64,
    /// Liveness locks: the tasks of a process on this host that ended (crashed, killed) go
    /// back to the queue at once, not when their leases expire.
    pub liveness: bool,
    /// Where the liveness locks are kept; default: next to the SQLite database file
    /// (`<file>.workers`), or for PostgreSQL a directory per database and schema under the
    /// system's temporary directory. Every process of one database on one host must use the
    /// same directory to see each other.
    pub liveness_dir: Option<std::path::PathBuf>,
}

impl Default for WorkersConfig {
    fn default() -> Self {
        WorkersConfig {
            concurrency: 16,
            poll_interval_ms: 1000,
            lease_secs: 10,
            recover_interval_ms: 1000,
            liveness: true,
            liveness_dir: None,
        }
    }
}

impl WorkersConfig {
    /// The worker pool settings these give, with `id` as the worker id.
    pub fn worker_config(&self, id: String) -> flowbot_core::task::WorkerConfig {
        use flowbot_core::task::{Liveness, WorkerConfig};
        let lease = std::time::Duration::from_secs(self.lease_secs);
        WorkerConfig {
            id,
            concurrency: self.concurrency,
            poll_interval: std::time::Duration::from_millis(self.poll_interval_ms),
            lease,
            heartbeat: lease / 3,
            recover_interval: std::time::Duration::from_millis(self.recover_interval_ms),
            liveness: match (&self.liveness, &self.liveness_dir) {
                (false, _) => Liveness::Off,
                (true, Some(dir)) => Liveness::Dir(dir.clone()),
                (true, None) => Liveness::Auto,
            },
            ..WorkerConfig::default()
        }
    }

    /// Check the `[workers]` keys, naming the one out of range.
    fn validate(&self) -> Result<(), ConfigError> {
        let range = |key: &str, value: u64, min: u64, max: u64, most: &str| {
            if (min..=max).contains(&value) {
                Ok(())
            } else {
                Err(err(
                    format!("workers.{key}"),
                    format!("must be from {min} to {max} ({most}), got {value}"),
                ))
            }
        };
        let most = flowbot_core::task::MAX_WORKERS;
        if self.concurrency > most {
            return Err(err(
                "workers.concurrency",
                format!("must be at most {most}, got {}", self.concurrency),
            ));
        }
        range("lease_secs", self.lease_secs, 2, 86_400, "1 day")?;
        range(
            "recover_interval_ms",
            self.recover_interval_ms,
            50,
            3_600_000,
            "1 hour",
        )?;
        if self
            .liveness_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(err(
                "workers.liveness_dir",
                "must be a directory path, not empty",
            ));
        }
        // The settings fit together as the worker pool sees them.
        self.worker_config("check".into())
            .validate()
            .map_err(|e| err("workers", e.to_string()))
    }
}

/// `[web]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebConfig {
    /// Serve `/chat` and `/ws/chat`.
    pub enabled: bool,
}

impl Default for WebConfig {
    fn default() -> Self {
        WebConfig { enabled: true }
    }
}

/// `[webhooks.<name>]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookEntry {
    /// Where replies are POSTed.
    pub callback_url: Option<String>,
    /// HMAC-SHA256 secret for both directions (at least 16 bytes).
    pub secret: Option<String>,
    /// Replay window for signatures, in seconds.
    pub replay_window_secs: Option<u64>,
}

/// `[bot]`
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BotConfig {
    /// What a person hears when handling their message fails (an outage, a failed action);
    /// empty: nothing (refusals are still answered, see `failure_reply_refusals`).
    pub failure_reply: String,
    /// Answer input the bot refused with the refusal's own words ("the delay must be more
    /// than zero and at most 1year") instead of `failure_reply`.
    pub failure_reply_refusals: bool,
}

impl Default for BotConfig {
    fn default() -> Self {
        let reply = flowbot_core::FailureReply::default();
        BotConfig {
            failure_reply: reply.text.unwrap_or_default(),
            failure_reply_refusals: reply.show_refusals,
        }
    }
}

impl BotConfig {
    /// The pipeline's [`FailureReply`](flowbot_core::FailureReply) for these settings.
    pub fn failure_reply(&self) -> flowbot_core::FailureReply {
        let reply = if self.failure_reply.trim().is_empty() {
            flowbot_core::FailureReply::silent()
        } else {
            flowbot_core::FailureReply::text(self.failure_reply.clone())
        };
        reply.show_refusals(self.failure_reply_refusals)
    }
}

/// `[demo]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DemoConfig {
    /// Answer `/help`, `/echo` and `/remind`.
    pub enabled: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig { enabled: true }
    }
}

/// `[rules]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// A directory of `*.toml` rule files. Unset: the demo bot's rules (built in), when
    /// `demo.enabled`, else no rules.
    pub dir: Option<std::path::PathBuf>,
    /// Reload the rules when a file in `dir` changes.
    pub watch: bool,
    /// How often `dir` is checked for changes, in milliseconds.
    pub poll_interval_ms: u64,
}

impl Default for RulesConfig {
    fn default() -> Self {
        RulesConfig {
            dir: None,
            watch: true,
            poll_interval_ms: 1000,
        }
    }
}

/// A configuration error: the key path (or file) and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {path}: {message}")]
pub struct ConfigError {
    /// `server.listen`, the file name, or an environment variable.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

const HOUR_SECS: u64 = 3600;
const DAY_SECS: u64 = 24 * HOUR_SECS;

/// `value` of the key at `path` within `min..=max` (`most` says `max` in words).
fn in_range(path: &str, value: u64, min: u64, max: u64, most: &str) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(err(
            path,
            format!("must be from {min} to {max} ({most}), got {value}"),
        ))
    }
}

impl Config {
    /// Load from an optional file and the given environment (name, value) pairs.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| err(path.display().to_string(), format!("cannot read: {e}")))?;
                text.parse::<toml::Table>()
                    .map_err(|e| err(path.display().to_string(), e.to_string()))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("FLOWBOT_") else {
                continue;
            };
            if !rest.contains("__") {
                continue;
            }
            let keys: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            if keys.iter().any(String::is_empty) {
                return Err(err(name.clone(), "empty key segment"));
            }
            set_path(&mut table, &keys, parse_env_value(&value))
                .map_err(|m| err(name.clone(), m))?;
        }
        let config: Config = deserialize_with_path(&table)?;
        config.validate()?;
        Ok(config)
    }

    /// Load from `FLOWBOT_CONFIG` (or `path`) and the process environment.
    pub fn from_env(path: Option<&Path>) -> Result<Self, ConfigError> {
        let from_var = std::env::var_os("FLOWBOT_CONFIG").map(std::path::PathBuf::from);
        let file = path.map(Path::to_path_buf).or(from_var);
        Config::load(file.as_deref(), std::env::vars())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = &self.database.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(err(
                "database.url",
                format!(
                    "'{}' is not a sqlite:// or postgres:// URL",
                    flowbot_store::redact_url(url)
                ),
            ));
        }
        if self.database.max_connections == 0 {
            return Err(err("database.max_connections", "must be at least 1"));
        }
        let share = self.database.sqlite_work_share;
        if !(0.01..=1.0).contains(&share) {
            return Err(err(
                "database.sqlite_work_share",
                format!("must be between 0.01 and 1, got {share}"),
            ));
        }
        if self.server.body_limit_bytes < 1024 {
            return Err(err("server.body_limit_bytes", "must be at least 1024"));
        }
        // Durations: each within a range that says what it is for, so that none turns into
        // a time past what the clocks hold.
        in_range(
            "server.request_timeout_secs",
            self.server.request_timeout_secs,
            1,
            DAY_SECS,
            "1 day",
        )?;
        in_range(
            "server.shutdown_timeout_secs",
            self.server.shutdown_timeout_secs,
            0,
            HOUR_SECS,
            "1 hour",
        )?;
        in_range(
            "rules.poll_interval_ms",
            self.rules.poll_interval_ms,
            50,
            HOUR_SECS * 1000,
            "1 hour",
        )?;
        if self.workers.concurrency == 0 {
            return Err(err("workers.concurrency", "must be at least 1"));
        }
        in_range(
            "workers.poll_interval_ms",
            self.workers.poll_interval_ms,
            1,
            HOUR_SECS * 1000,
            "1 hour",
        )?;
        for (name, w) in &self.webhooks {
            if let Some(secs) = w.replay_window_secs {
                in_range(
                    &format!("webhooks.{name}.replay_window_secs"),
                    secs,
                    1,
                    DAY_SECS,
                    "1 day",
                )?;
            }
        }
        self.workers.validate()?;
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return Err(err("log.level", format!("'{}': {e}", self.log.level)));
        }
        for origin in &self.server.cors_origins {
            if origin.parse::<axum::http::HeaderValue>().is_err()
                || !(origin.starts_with("http://") || origin.starts_with("https://"))
            {
                return Err(err(
                    "server.cors_origins",
                    format!("'{origin}' is not an http(s) origin"),
                ));
            }
        }
        for (name, d) in &self.discord {
            d.channel_config(name)
                .and_then(|c| c.validate())
                .map_err(|e| err(format!("discord.{name}"), e))?;
        }
        for (name, s) in &self.slack {
            s.channel_config(name)
                .validate()
                .map_err(|e| err(format!("slack.{name}"), e))?;
        }
        for (name, t) in &self.tailchat {
            t.channel_config(name)
                .validate()
                .map_err(|e| err(format!("tailchat.{name}"), e))?;
        }
        for (name, t) in &self.telegram {
            t.channel_config(name)
                .map_err(|e| err(format!("telegram.{name}"), e))?;
        }
        for (name, n) in &self.notifiers {
            if let NotifierEntry::Email { .. } = n {
                crate::run::email_settings(n)
                    .and_then(|s| flowbot_channels::notifiers::Email::new(&s))
                    .map_err(|e| err(format!("notifiers.{name}"), e))?;
                continue;
            }
            let url = n.url();
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(err(
                    format!("notifiers.{name}"),
                    format!("'{url}' is not an http(s) URL"),
                ));
            }
        }
        Ok(())
    }
}

fn parse_env_value(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
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
fn deserialize_with_path(table: &toml::Table) -> Result<Config, ConfigError> {
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
    ];
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            return Err(err(
                key.clone(),
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
                let entry = WebhookEntry::deserialize(v.clone()).map_err(|e| {
                    err(
                        field_path(&format!("webhooks.{name}"), &e.to_string()),
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
                let at = format!("{section}.{name}");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = std::env::temp_dir().join(format!("flowbot-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join(format!("{}.toml", toml_text.len()));
        std::fs::write(&path, toml_text).expect("write");
        let r = Config::load(
            Some(&path),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let _ = std::fs::remove_file(&path);
        r
    }

    #[test]
    fn defaults_need_no_file() {
        let c = Config::load(None, Vec::new()).expect("defaults");
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:8080");
        assert!(c.server.agent && c.web.enabled && c.demo.enabled);
        assert_eq!(c.database.url, "sqlite://./data/flowbot.db");
        assert!(c.server.cors_origins.is_empty(), "CORS off by default");
    }

    #[test]
    fn worker_settings_are_checked_by_key() {
        let c = Config::load(None, Vec::new()).expect("defaults");
        assert_eq!(
            (c.workers.lease_secs, c.workers.recover_interval_ms),
            (10, 1000)
        );
        let w = c.workers.worker_config("server-1".into());
        assert_eq!(w.lease, std::time::Duration::from_secs(10));
        assert!(
            w.heartbeat < w.lease
                && w.heartbeat * 3 >= w.lease - std::time::Duration::from_millis(1)
        );
        assert_eq!(w.liveness, flowbot_core::task::Liveness::Auto);
        w.validate().expect("the defaults fit together");
        let env = |pairs: &[(&str, &str)]| {
            Config::load(
                None,
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
        };
        for (var, value, key) in [
            ("FLOWBOT_WORKERS__LEASE_SECS", "1", "workers.lease_secs"),
            ("FLOWBOT_WORKERS__LEASE_SECS", "86401", "workers.lease_secs"),
            (
                "FLOWBOT_WORKERS__LEASE_SECS",
                "9223372036854775807",
                "workers.lease_secs",
            ),
            (
                "FLOWBOT_WORKERS__RECOVER_INTERVAL_MS",
                "0",
                "workers.recover_interval_ms",
            ),
            (
                "FLOWBOT_WORKERS__RECOVER_INTERVAL_MS",
                "3600001",
                "workers.recover_interval_ms",
            ),
            (
                "FLOWBOT_WORKERS__CONCURRENCY",
                "100001",
                "workers.concurrency",
            ),
            (
                "FLOWBOT_WORKERS__LIVENESS_DIR",
                "\"\"",
                "workers.liveness_dir",
            ),
        ] {
            let e = env(&[(var, value)]).expect_err(value);
            assert_eq!(e.path, key, "{var}={value}: {e}");
            assert!(!e.message.is_empty());
        }
        let e = env(&[("FLOWBOT_WORKERS__LIVENESS", "maybe")]).expect_err("not a bool");
        assert!(e.path.starts_with("workers"), "{e}");
        let c = env(&[
            ("FLOWBOT_WORKERS__LEASE_SECS", "86400"),
            ("FLOWBOT_WORKERS__LIVENESS", "false"),
        ])
        .expect("in range");
        let w = c.workers.worker_config("agent-1".into());
        assert_eq!(w.liveness, flowbot_core::task::Liveness::Off);
        w.validate().expect("a day's lease is allowed");
        let c = env(&[("FLOWBOT_WORKERS__LIVENESS_DIR", "/run/flowbot")]).expect("a dir");
        assert_eq!(
            c.workers.worker_config("a".into()).liveness,
            flowbot_core::task::Liveness::Dir("/run/flowbot".into())
        );
    }

    #[test]
    fn file_and_environment_overrides() {
        let c = load(
            "[server]\nlisten = \"127.0.0.1:9000\"\n[webhooks.crm]\ncallback_url = \"http://127.0.0.1:1/cb\"\n",
            &[
                ("FLOWBOT_SERVER__AGENT", "false"),
                ("FLOWBOT_WORKERS__CONCURRENCY", "4"),
                ("FLOWBOT_DATABASE__URL", "postgres://u:secret@db/flowbot"),
                ("FLOWBOT_WEBHOOKS__CRM__SECRET", "0123456789abcdef0123"),
                ("FLOWBOT_TEST_POSTGRES_URL", "ignored: no __ in the name"),
            ],
        )
        .expect("valid");
        assert_eq!(c.server.listen.port(), 9000);
        assert!(!c.server.agent);
        assert_eq!(c.workers.concurrency, 4);
        assert_eq!(c.database.url, "postgres://u:secret@db/flowbot");
        assert_eq!(
            c.webhooks["crm"].secret.as_deref(),
            Some("0123456789abcdef0123")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("[server]\nlisen = \"x\"\n", &[]).expect_err("unknown key");
        assert_eq!(e.path, "server.lisen", "{e}");
        let e = load("[server]\nlisten = \"not an address\"\n", &[]).expect_err("bad value");
        assert_eq!(e.path, "server", "{e}");
        assert!(e.message.contains("invalid socket address"), "{e}");
        let e = load("[nope]\n", &[]).expect_err("unknown section");
        assert_eq!(e.path, "nope");
        let e = load("", &[("FLOWBOT_WORKERS__CONCURRENCY", "0")]).expect_err("zero workers");
        assert_eq!(e.path, "workers.concurrency");
        let e = load("", &[("FLOWBOT_DATABASE__URL", "mysql://u:pw@h/db")]).expect_err("scheme");
        assert_eq!(e.path, "database.url");
        assert!(!e.message.contains("pw"), "password redacted: {e}");
        let e = load("", &[("FLOWBOT_DATABASE__SQLITE_WORK_SHARE", "0")]).expect_err("share");
        assert_eq!(e.path, "database.sqlite_work_share");
        assert!(e.message.contains("between 0.01 and 1"), "{e}");
        let ok = load("[database]\nsqlite_work_share = 1\n", &[]).expect("integer share");
        assert!((ok.database.sqlite_work_share - 1.0).abs() < f64::EPSILON);
        let e = load("[notifiers.ops]\nkind = \"carrier_pigeon\"\n", &[]).expect_err("kind");
        assert!(e.path.starts_with("notifiers.ops"), "{e}");
        assert!(e.message.contains("carrier_pigeon"), "{e}");
        let e = load("[notifiers.ops]\nkind = \"ntfy\"\n", &[]).expect_err("topic");
        assert!(
            e.path.starts_with("notifiers.ops") && e.message.contains("topic"),
            "{e}"
        );
        let e = load(
            "[notifiers.ops]\nkind = \"slack_webhook\"\nurl = \"ftp://x\"\n",
            &[],
        )
        .expect_err("url");
        assert_eq!(e.path, "notifiers.ops");
        let ok = load(
            "[notifiers.ops]\nkind = \"pushover\"\ntoken = \"t0ken\"\nuser = \"u\"\n",
            &[],
        )
        .expect("pushover");
        assert!(
            !format!("{ok:?}").contains("t0ken"),
            "tokens stay out of Debug"
        );
        let e = load("", &[("FLOWBOT_LOG__LEVEL", "info,=[")]).expect_err("filter");
        assert_eq!(e.path, "log.level");
        let e = load("[webhooks.crm]\ncallbak_url = \"x\"\n", &[]).expect_err("typo in webhook");
        assert_eq!(e.path, "webhooks.crm.callbak_url");
        let e = load("this is not toml", &[]).expect_err("syntax");
        assert!(e.path.ends_with(".toml"), "{e}");
    }

    #[test]
    fn telegram_sections() {
        let token = "123456:secret-token_abcdef";
        let ok = load(
            "[telegram.support]\nmode = \"webhook\"\nsecret_token = \"s3cret\"\n",
            &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
        )
        .expect("token from the environment");
        let t = &ok.telegram["support"];
        assert_eq!((t.mode, t.token.as_str()), (TelegramMode::Webhook, token));
        assert_eq!(t.api_base, "https://api.telegram.org");
        assert!(!format!("{ok:?}").contains("secret-token"), "{ok:?}");
        let e = load("[telegram.support]\nmode = \"polling\"\n", &[]).expect_err("no token");
        assert!(
            e.path.starts_with("telegram.support") && e.message.contains("token"),
            "{e}"
        );
        let e = load(
            "[telegram.support]\nmode = \"webhook\"\n",
            &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
        )
        .expect_err("webhook without secret");
        assert_eq!(e.path, "telegram.support");
        assert!(e.message.contains("secret_token"), "{e}");
        let e = load("[telegram.support]\ntoken = \"nonsense\"\n", &[]).expect_err("token");
        assert!(e.message.contains("not a bot token"), "{e}");
        let e = load(
            "[telegram.support]\nmode = \"carrier\"\n",
            &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
        )
        .expect_err("mode");
        assert!(
            e.path.starts_with("telegram.support") && e.message.contains("carrier"),
            "{e}"
        );
    }

    /// Environment only, no file.
    fn env_only(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(
            None,
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        )
    }

    /// A file of its own (`load` names files by their length, shared between tests).
    fn load_unique(toml_text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let path =
            std::env::temp_dir().join(format!("flowbot-config-{}.toml", uuid::Uuid::new_v4()));
        std::fs::write(&path, toml_text).expect("write");
        let r = Config::load(
            Some(&path),
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
        );
        let _ = std::fs::remove_file(&path);
        r
    }

    /// Every duration key, given any number (or something else) through the environment:
    /// the configuration loads with the value in its range, or fails naming the key, never
    /// panics. (bins has no property-test dependency; the values sweep the edges and a
    /// pseudo-random spread.)
    #[test]
    fn durations_are_in_range_or_name_their_key() {
        let keys: &[(&str, &str, u64, u64)] = &[
            (
                "FLOWBOT_SERVER__REQUEST_TIMEOUT_SECS",
                "server.request_timeout_secs",
                1,
                86_400,
            ),
            (
                "FLOWBOT_SERVER__SHUTDOWN_TIMEOUT_SECS",
                "server.shutdown_timeout_secs",
                0,
                3600,
            ),
            (
                "FLOWBOT_WORKERS__POLL_INTERVAL_MS",
                "workers.poll_interval_ms",
                1,
                3_600_000,
            ),
            (
                "FLOWBOT_RULES__POLL_INTERVAL_MS",
                "rules.poll_interval_ms",
                50,
                3_600_000,
            ),
            (
                "FLOWBOT_WEBHOOKS__CRM__REPLAY_WINDOW_SECS",
                "webhooks.crm.replay_window_secs",
                1,
                86_400,
            ),
        ];
        let mut values: Vec<String> = [
            "0",
            "1",
            "49",
            "50",
            "3600",
            "3601",
            "86400",
            "86401",
            "3600000",
            "3600001",
            "18446744073709551",
            "9223372036854775807",
            "18446744073709551615",
            "99999999999999999999999",
            "-1",
            "-9223372036854775808",
            "1.5",
            "nan",
            "inf",
            "-inf",
            "\"30s\"",
            "soon",
            "",
        ]
        .iter()
        .map(|v| (*v).to_owned())
        .collect();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..64 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            values.push((x >> (x % 64)).to_string());
        }
        for (var, key, min, max) in keys {
            for v in &values {
                match env_only(&[(*var, v.as_str())]) {
                    Ok(c) => {
                        let got = match *key {
                            "server.request_timeout_secs" => c.server.request_timeout_secs,
                            "server.shutdown_timeout_secs" => c.server.shutdown_timeout_secs,
                            "workers.poll_interval_ms" => c.workers.poll_interval_ms,
                            "rules.poll_interval_ms" => c.rules.poll_interval_ms,
                            _ => c.webhooks["crm"].replay_window_secs.unwrap_or_default(),
                        };
                        assert!(
                            (*min..=*max).contains(&got),
                            "{key} = {v} accepted as {got}"
                        );
                    }
                    Err(e) => assert!(
                        key.starts_with(e.path.as_str()) && !e.message.is_empty(),
                        "{key} = {v}: {e}"
                    ),
                }
            }
        }
        let e = env_only(&[(
            "FLOWBOT_SERVER__REQUEST_TIMEOUT_SECS",
            "9223372036854775807",
        )])
        .expect_err("too long");
        assert_eq!(e.path, "server.request_timeout_secs");
        assert!(e.message.contains("must be from 1 to 86400 (1 day)"), "{e}");
        // The SQLite writer's share: NaN and the infinities are refused by name too.
        for v in [
            "nan",
            "inf",
            "-inf",
            "-0.0",
            "0",
            "0.009",
            "1.0000001",
            "1e308",
            "-1e308",
        ] {
            let e =
                env_only(&[("FLOWBOT_DATABASE__SQLITE_WORK_SHARE", v)]).expect_err("out of range");
            assert_eq!(e.path, "database.sqlite_work_share", "{v}: {e}");
        }
        for v in ["0.01", "0.5", "1"] {
            env_only(&[("FLOWBOT_DATABASE__SQLITE_WORK_SHARE", v)]).expect("in range");
        }
    }

    /// A platform lease's ttl is 3 to 3600 seconds; past it the section is refused with the
    /// key named, never a multiplication that overflows.
    #[test]
    fn platform_lease_ttls_are_in_range() {
        let token = "123456:secret-token_abcdef";
        for (v, ok) in [
            ("2", false),
            ("3", true),
            ("3600", true),
            ("3601", false),
            ("18446744073709552", false),
            ("9223372036854775807", false),
        ] {
            let telegram = load_unique(
                &format!("[telegram.support]\nlease_ttl_secs = {v}\n"),
                &[("FLOWBOT_TELEGRAM__SUPPORT__TOKEN", token)],
            );
            let discord = load_unique(
                &format!(
                    "[discord.d]\nbot_token = \"bot-token-0123456789abcdef\"\napplication_id = \"1\"\nlease_ttl_secs = {v}\n"
                ),
                &[],
            );
            for (what, r) in [("telegram.support", telegram), ("discord.d", discord)] {
                match r {
                    Ok(_) => assert!(ok, "{what} lease_ttl_secs = {v} accepted"),
                    Err(e) => {
                        assert!(!ok, "{what} lease_ttl_secs = {v}: {e}");
                        assert_eq!(e.path, what, "{e}");
                        assert!(
                            e.message.contains("lease_ttl_secs must be from 3 to 3600"),
                            "{e}"
                        );
                    }
                }
            }
        }
    }
}
