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

mod auth;
mod gpu;
mod knowledge;
mod limits;
mod llm;
mod load;
mod network;
mod oidc;
mod references;
mod secrets_store;
pub use auth::{AuthConfig, JwtAuthConfig};
pub use flowbot_channels::discord::DiscordSettings;
pub use flowbot_channels::notifiers::NotifierSettings;
pub use flowbot_channels::slack::SlackSettings;
pub use flowbot_channels::tailchat::TailchatSettings;
pub use flowbot_channels::telegram::{TelegramMode, TelegramSettings};
pub use flowbot_channels::web::{HostIdentitySettings, WebSettings};
pub use flowbot_channels::webhook::WebhookSettings;
pub use gpu::GpuConfig;
pub use knowledge::{KnowledgeConfig, QdrantConfig};
pub use limits::LimitsConfig;
pub use llm::{LlmConfig, Relevance};
pub use network::NetworkConfig;
pub use oidc::OidcConfig;
pub use secrets_store::SecretsStoreConfig;

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
    pub web: WebSettings,
    /// Generic webhook channels, by name.
    pub webhooks: BTreeMap<String, WebhookSettings>,
    /// How the bot answers the people it talks to.
    pub bot: BotConfig,
    /// The demo bot.
    pub demo: DemoConfig,
    /// Rule files.
    pub rules: RulesConfig,
    /// Named secrets for workflows (`{{ secrets.name }}`, hook triggers), by name.
    pub secrets: SecretValues,
    /// Notifiers for the `notify` action, by name.
    pub notifiers: BTreeMap<String, NotifierSettings>,
    /// Telegram bots, by channel name.
    pub telegram: BTreeMap<String, TelegramSettings>,
    /// Tailchat bots, by channel name.
    pub tailchat: BTreeMap<String, TailchatSettings>,
    /// Slack apps, by channel name.
    pub slack: BTreeMap<String, SlackSettings>,
    /// Discord applications, by channel name.
    pub discord: BTreeMap<String, DiscordSettings>,
    /// The language model.
    pub llm: LlmConfig,
    /// Local inference (the intent classifier), with the `gpu` feature.
    pub gpu: GpuConfig,
    /// The knowledge base.
    pub knowledge: KnowledgeConfig,
    /// Who may use the admin API.
    pub auth: AuthConfig,
    /// Abuse limits on the HTTP surface.
    pub limits: LimitsConfig,
    /// What `http_request` may reach.
    pub network: NetworkConfig,
    /// The key of the secrets stored through the API.
    pub secrets_store: SecretsStoreConfig,
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
    /// Serve the admin API (`/api/v1`, `/metrics`) on this address only; `listen` then serves
    /// the public surface (webhooks, web chat, health).
    pub admin_listen: Option<SocketAddr>,
    /// HTTPS on every address the server listens on.
    pub tls: Option<TlsConfig>,
    /// Once listening, write the base URL of `listen` (and on a second line that of
    /// `admin_listen`) to this file, replaced atomically, and remove it when the server stops:
    /// with port 0, how a supervisor or a test learns the port the system chose.
    pub address_file: Option<std::path::PathBuf>,
}

impl ServerConfig {
    /// The address the admin API is served on.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_listen.unwrap_or(self.listen)
    }
}

/// `[server.tls]`: the certificate and key (PEM files, read again when they change).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, the server's certificate first.
    pub cert_file: std::path::PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: std::path::PathBuf,
    /// How often the files are checked for changes, in seconds (1 to 86400; default 10).
    #[serde(default = "tls_reload")]
    pub reload_secs: u64,
    /// Send `Strict-Transport-Security` (default on).
    #[serde(default = "yes")]
    pub hsts: bool,
}

fn tls_reload() -> u64 {
    10
}

fn yes() -> bool {
    true
}

impl TlsConfig {
    /// The files, as the listener takes them.
    pub fn files(&self) -> crate::tls::TlsFiles {
        crate::tls::TlsFiles {
            cert: self.cert_file.clone(),
            key: self.key_file.clone(),
            reload_every: std::time::Duration::from_secs(self.reload_secs),
        }
    }
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
            admin_listen: None,
            tls: None,
            address_file: None,
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
        let mut openai = BTreeMap::new();
        for (name, value) in env {
            if name.starts_with("OPENAI_") {
                openai.insert(name.clone(), value.clone());
            }
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
            load::set_path(&mut table, &keys, load::parse_env_value(&value))
                .map_err(|m| err(name.clone(), m))?;
        }
        let mut config: Config = load::deserialize_with_path(&table)?;
        config.llm.from_openai_env(&openai);
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
        self.refuse_unread_references()?;
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
        self.llm.validate()?;
        self.gpu.validate()?;
        self.knowledge.validate()?;
        if let Some(name) = &self.knowledge.embedder
            && name != "local"
            && !self.llm.models.contains_key(name)
        {
            return Err(err(
                "knowledge.embedder",
                format!("'{name}' is not `local` nor a model under [llm.models]"),
            ));
        }
        let admin_key = if self.server.admin_listen.is_some() {
            "server.admin_listen"
        } else {
            "server.listen"
        };
        self.auth.validate(admin_key, self.server.admin_address())?;
        if let Some(tls) = &self.server.tls {
            in_range(
                "server.tls.reload_secs",
                tls.reload_secs,
                1,
                DAY_SECS,
                "1 day",
            )?;
        }
        if self.server.admin_listen == Some(self.server.listen) && self.server.listen.port() != 0 {
            return Err(err(
                "server.admin_listen",
                "must differ from server.listen (leave it out to serve everything on one address)",
            ));
        }
        self.limits.validate()?;
        self.network.validate()?;
        self.secrets_store.validate()?;
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
            w.channel_config(name)
                .map_err(|e| err(format!("webhooks.{name}"), e.0))?;
        }
        self.workers.validate()?;
        self.web.validate().map_err(|e| err("web", e.0))?;
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
        if self.secret_references()? > 0 {
            // Credentials are read from secrets as the process starts; the channels and
            // notifiers are checked then, with the values in place.
            return Ok(());
        }
        for (name, d) in &self.discord {
            d.channel_config(name)
                .and_then(|c| c.validate())
                .map_err(|e| err(format!("discord.{name}"), e.0))?;
        }
        for (name, s) in &self.slack {
            s.channel_config(name)
                .validate()
                .map_err(|e| err(format!("slack.{name}"), e.0))?;
        }
        for (name, t) in &self.tailchat {
            t.channel_config(name)
                .validate()
                .map_err(|e| err(format!("tailchat.{name}"), e.0))?;
        }
        for (name, t) in &self.telegram {
            t.channel_config(name)
                .map_err(|e| err(format!("telegram.{name}"), e.0))?;
        }
        for (name, n) in &self.notifiers {
            n.notifier()
                .map_err(|e| err(format!("notifiers.{name}"), e.0))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
