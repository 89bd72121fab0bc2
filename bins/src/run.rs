//! Wiring: the store, channels, bot and HTTP server from a [`Config`].

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use flowbot_channels::http_action::HttpRequest;
use flowbot_channels::web::WebChat;
use flowbot_channels::webhook::WebhookConfig;
use flowbot_channels::{AdapterStats, ChannelSpec, CommandMenu, Ready, Setup};
use flowbot_core::secrets::SecretStore;
use flowbot_core::task::WorkerConfig;
use flowbot_core::workflow::{Secrets, Workflows};
use flowbot_core::{Bot, BotBuilder, CancellationToken, CommandInfo, Handlers, Router, Store};
use flowbot_rules::{Plugins, Reload, RuleFiles, RuleLibrary, Source, WorkflowScripts};
use flowbot_store::vectors::{EmbeddedVectors, IndexOptions};
use flowbot_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};

use flowbot_store::redact_url as redact;

use crate::config::Config;
use crate::http::{self, AppState};

mod agent;
mod routing;
mod server;

pub use agent::Agent;
pub use server::{Assembled, Server};

use routing::Routing;

/// Errors that stop a server or agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database could not be opened.
    #[error("database {url}: {source}")]
    Store {
        /// The URL, password hidden.
        url: String,
        /// The store's error.
        #[source]
        source: flowbot_store::Error,
    },
    /// A channel could not be built (its settings, or the platform's answer at start).
    #[error(transparent)]
    Channel(#[from] flowbot_channels::Error),
    /// The bot stopped (or its task failed) before the server could serve.
    #[error("the bot stopped before serving: {0}")]
    Stopped(String),
    /// The bot could not be built or failed.
    #[error(transparent)]
    Bot(#[from] flowbot_core::Error),
    /// The local model (`[gpu]`) could not be loaded.
    #[cfg(feature = "gpu")]
    #[error("gpu: {0}")]
    Gpu(#[from] flowbot_gpu::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The address file (`server.address_file`) could not be written.
    #[error("cannot write server.address_file {}: {source}", path.display())]
    AddressFile {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Serving HTTP failed.
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
    /// The rule files could not be loaded.
    #[error("rules: {0}")]
    Rules(#[from] flowbot_rules::Error),
    /// The language model is misconfigured or unreachable.
    #[error("{0}")]
    Llm(String),
    /// A command-line command was misused.
    #[error("{0}")]
    Usage(String),
}

/// The configured database, opened (migrations applied).
enum Database {
    Sqlite(SqliteStore),
    Postgres(PostgresStore),
}

impl Database {
    fn store(&self) -> Arc<dyn Store> {
        match self {
            Database::Sqlite(s) => Arc::new(s.clone()),
            Database::Postgres(s) => Arc::new(s.clone()),
        }
    }
}

async fn open_database(config: &Config) -> Result<Database, RunError> {
    let url = &config.database.url;
    let wrap = |source| RunError::Store {
        url: redact(url),
        source,
    };
    if url.starts_with("sqlite:") {
        let mut options = SqliteOptions::from_url(url).map_err(wrap)?;
        options.work_share = config.database.sqlite_work_share;
        Ok(Database::Sqlite(
            SqliteStore::open_with(options).await.map_err(wrap)?,
        ))
    } else {
        let options =
            PostgresOptions::new(url.clone()).max_connections(config.database.max_connections);
        let options = match &config.database.schema {
            Some(schema) => options.schema(schema.clone()),
            None => options,
        };
        Ok(Database::Postgres(
            PostgresStore::connect_with(options).await.map_err(wrap)?,
        ))
    }
}

/// Open the configured store (applying migrations).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, RunError> {
    Ok(open_database(config).await?.store())
}

/// Open the configured store (applying migrations), fill the settings written
/// `{{ secrets.NAME }}` from `[secrets]` or the stored secrets, then open the knowledge base's
/// vector store: Qdrant when `[knowledge.qdrant]` names one (its key may be such a setting),
/// else the embedded store over the database. Gives the stored secrets too, when they are on.
pub async fn open_stores(
    config: &mut Config,
) -> Result<
    (
        Arc<dyn Store>,
        Arc<dyn flowbot_core::VectorStore>,
        Option<Arc<SecretStore>>,
    ),
    RunError,
> {
    let database = open_database(config).await?;
    let store = database.store();
    let secrets = secret_store(config, &store)?;
    resolve_references(config, secrets.as_deref()).await?;
    let vectors: Arc<dyn flowbot_core::VectorStore> = match &config.knowledge.qdrant {
        Some(q) => Arc::new(
            flowbot_store::qdrant::QdrantVectors::connect(&q.url, q.api_key.clone())
                .await
                .map_err(|e| RunError::Llm(format!("[knowledge.qdrant]: {e}")))?,
        ),
        None => {
            let mut index = IndexOptions::default();
            index.exact_below = config.knowledge.exact_below;
            index.expansion_search = config.knowledge.ef_search;
            let embedded = match &database {
                Database::Sqlite(s) => EmbeddedVectors::sqlite(s, index),
                Database::Postgres(s) => EmbeddedVectors::postgres(s, index),
            };
            Arc::new(embedded.map_err(|e| RunError::Llm(format!("[knowledge]: {e}")))?)
        }
    };
    Ok((store, vectors, secrets))
}

fn worker_config(config: &Config, role: &str) -> WorkerConfig {
    let id = format!(
        "{role}-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    );
    WorkerConfig {
        shutdown_timeout: Duration::from_secs(config.server.shutdown_timeout_secs),
        ..config.workers.worker_config(id)
    }
}

/// The demo bot's rules, built into the binary (the file ships in `bins/rules/`).
pub const DEMO_RULES: &str = include_str!("../rules/demo.toml");

/// The rules of `config`: the rule files of `rules.dir` (or the demo rules, built in, or
/// none) together with the rules stored in the database through the API. A task reloads them
/// until `stop` when a file changes (with `rules.watch`), when the stored rules change, or
/// when another process announces a change; an invalid change is logged and the previous
/// rules stay in force.
pub async fn rule_library(
    config: &Config,
    store: &Arc<dyn Store>,
    stop: &CancellationToken,
) -> Result<Arc<RuleLibrary>, RunError> {
    let files = match &config.rules.dir {
        Some(dir) => RuleFiles::Dir(dir.clone()),
        None if config.demo.enabled => RuleFiles::Fixed(vec![Source {
            file: Some("bins/rules/demo.toml (built in)".into()),
            text: DEMO_RULES.to_owned(),
        }]),
        None => RuleFiles::Fixed(Vec::new()),
    };
    // The bot adds the workflow engine's actions to the built-in ones.
    let mut plugins = Plugins::default()
        .action_name("workflow.run")
        .action_name("publish_event")
        .action_name("http_request");
    if !config.notifiers.is_empty() {
        plugins = plugins.action_name("notify");
    }
    if config.knowledge.embedder.is_some() {
        plugins = plugins.action_name("kb_search");
    }
    let library = Arc::new(RuleLibrary::open(files, Some(store.clone()), plugins).await?);
    tracing::info!(rules = library.list().len(), dir = ?config.rules.dir, "rules loaded");
    let interval = if config.rules.dir.is_some() && !config.rules.watch {
        // Files are not watched; stored rules still are, less often.
        Duration::from_secs(30)
    } else {
        Duration::from_millis(config.rules.poll_interval_ms)
    };
    tokio::spawn(library.clone().watch(interval, stop.clone(), |outcome| match outcome {
        Reload::Applied(n) => tracing::info!(rules = n, "rules reloaded"),
        Reload::Rejected(e) => {
            tracing::warn!(error = %e, "rule change rejected; the previous rules stay in force");
        }
        _ => {}
    }));
    Ok(library)
}

/// The secrets stored through the API, when `[secrets_store]` finds a key (in the process
/// environment or the key files, read now); `None` without one.
pub fn secret_store(
    config: &Config,
    store: &Arc<dyn Store>,
) -> Result<Option<Arc<SecretStore>>, RunError> {
    let Some(ring) = config.secrets_store.key_ring()? else {
        tracing::info!(
            "stored secrets are off: no key in {}",
            config.secrets_store.key_place()
        );
        return Ok(None);
    };
    tracing::info!(key = %ring.current().id(), previous_keys = ring.previous().len(), "stored secrets are on");
    Ok(Some(Arc::new(SecretStore::new(store.clone(), ring))))
}

/// Fill the settings written `{{ secrets.NAME }}` (platform tokens, provider keys, …) from
/// `[secrets]` or the stored secrets, once, as the process starts.
async fn resolve_references(
    config: &mut Config,
    stored: Option<&SecretStore>,
) -> Result<(), RunError> {
    let n = config.resolve_secret_references(stored).await?;
    if n > 0 {
        tracing::info!(settings = n, "settings filled from secrets");
    }
    Ok(())
}

/// The workflow engine of `config`: rhai scripts with the rules engine's sandbox, the
/// configured secrets, and the `stored` ones (read on each use; the configured ones win).
pub fn workflow_engine(
    config: &Config,
    store: &Arc<dyn Store>,
    stored: Option<Arc<SecretStore>>,
) -> Arc<Workflows> {
    let mut engine = Workflows::new(store.clone())
        .with_scripts(Arc::new(WorkflowScripts::default()))
        .with_secrets(Secrets::new(config.secrets.0.clone()));
    if let Some(stored) = stored {
        engine = engine.with_secret_source(stored);
    }
    Arc::new(engine)
}

/// Add the configured notifiers to `builder` (their settings were checked with the config).
fn with_notifiers(mut builder: BotBuilder, config: &Config) -> Result<BotBuilder, RunError> {
    for (name, n) in &config.notifiers {
        let notifier = n.notifier().map_err(|e| crate::config::ConfigError {
            path: format!("notifiers.{name}"),
            message: e.0,
        })?;
        builder = builder.notifier_arc(name, notifier);
    }
    Ok(builder)
}

fn webhook_configs(config: &Config) -> Result<Vec<WebhookConfig>, RunError> {
    Ok(config
        .webhooks
        .iter()
        .map(|(name, e)| {
            e.channel_config(name)
                .map_err(|e| flowbot_channels::Error::settings(name.as_str(), e))
        })
        .collect::<Result<_, _>>()?)
}

/// The channels of `config`: web chat, the generic webhooks, and each platform's. With
/// `receive` false (an agent), web chat is its sender alone, whatever `[web]` says: replies
/// reach the browsers over the bus, through whichever server holds their sockets.
async fn config_channels(
    config: &Config,
    store: &Arc<dyn Store>,
    receive: bool,
) -> Result<Vec<Box<dyn ChannelSpec>>, RunError> {
    let mut specs: Vec<Box<dyn ChannelSpec>> = Vec::new();
    if !receive {
        specs.push(Box::new(WebChat::new("web", Some(store.clone()))));
    } else if config.web.enabled {
        let identity = config.web.identity(store, "web").await?;
        specs.push(Box::new(
            WebChat::new("web", Some(store.clone()))
                .with_identity(identity)?
                .max_sockets_per_address(config.limits.websockets_per_address),
        ));
    }
    specs.push(Box::new(webhook_configs(config)?));
    let settings = |name: &str| {
        let name = name.to_owned();
        move |e| flowbot_channels::Error::settings(name, e)
    };
    for (name, entry) in &config.tailchat {
        specs.push(Box::new(entry.channel_config(name)));
    }
    for (name, entry) in &config.slack {
        specs.push(Box::new(entry.channel_config(name)));
    }
    for (name, entry) in &config.discord {
        specs.push(Box::new(
            entry.channel_config(name).map_err(settings(name))?,
        ));
    }
    for (name, entry) in &config.telegram {
        specs.push(Box::new(
            entry.channel_config(name).map_err(settings(name))?,
        ));
    }
    Ok(specs)
}

/// Every channel of a server or agent, built.
#[derive(Default)]
struct Channels {
    routes: axum::Router,
    stats: Vec<Arc<dyn AdapterStats>>,
    menus: Vec<Arc<dyn CommandMenu>>,
    ready: Vec<Ready>,
}

/// What a server and an agent put together alike.
struct Parts {
    store: Arc<dyn Store>,
    rules: Arc<RuleLibrary>,
    /// The local models of `[gpu]`.
    #[cfg(feature = "gpu")]
    local: Option<crate::gpu::LocalModels>,
    secrets: Option<Arc<SecretStore>>,
    workflows: Arc<Workflows>,
    /// The bot so far: store, router, actions, notifiers and every channel.
    builder: BotBuilder,
    assistant: Option<crate::llm::Assistant>,
    /// The commands to declare to platforms (`None`: leave their lists alone).
    declared: Option<Vec<CommandInfo>>,
    channels: Channels,
    /// The knowledge base of `[knowledge]`.
    knowledge: Option<crate::knowledge::KnowledgeBase>,
}

/// Open the store, load the rules, resolve secret references in `config`, and build the bot's
/// parts with `routing` and the channels of `config` and `extra` (receiving, or sending only).
async fn parts(
    config: &mut Config,
    shutdown: &CancellationToken,
    routing: Routing,
    extra: Vec<Box<dyn ChannelSpec>>,
    receive: bool,
) -> Result<Parts, RunError> {
    let (store, vectors, secrets) = open_stores(config).await?;
    let rules = rule_library(config, &store, shutdown).await?;
    #[cfg(feature = "gpu")]
    let local = crate::gpu::load(&config.gpu).await?;
    #[cfg(feature = "gpu")]
    if let Some(models) = &local {
        crate::gpu::attach(models, &rules).await?;
    }
    #[cfg(feature = "gpu")]
    let local_embedder = local
        .as_ref()
        .map(|m| Arc::new(m.embedder.clone()) as Arc<dyn flowbot_core::Embedder>);
    #[cfg(not(feature = "gpu"))]
    let local_embedder = None;
    let knowledge = crate::knowledge::open(config, store.clone(), vectors, local_embedder, true)?;
    if rules.router().classifier().is_none()
        && rules
            .router()
            .current()
            .intent_examples()
            .values()
            .any(|v| !v.is_empty())
    {
        tracing::warn!(
            "the rules give intent examples but no classifier is loaded: `intent` conditions \
             will not match (build flowbot-server with the `gpu` feature and set [gpu] model, \
             or FLOWBOT_MINILM_DIR; docs/gpu.md)"
        );
    }
    let workflows = workflow_engine(config, &store, secrets.clone());
    let (builder, assistant) = bot_builder(
        config,
        &store,
        &rules,
        workflows.clone(),
        knowledge.as_ref(),
    )
    .await?;
    let (builder, declared) = routing.apply(builder, &rules);
    let mut specs = config_channels(config, &store, receive).await?;
    specs.extend(extra);
    let setup = Setup::new(store.clone());
    let setup = if receive { setup } else { setup.send_only() };
    let (builder, channels) = build_channels(specs, &setup, builder).await?;
    Ok(Parts {
        store,
        rules,
        #[cfg(feature = "gpu")]
        local,
        secrets,
        workflows,
        builder,
        assistant,
        declared,
        channels,
        knowledge,
    })
}

/// Build `specs` in `setup`, adding their channels to `builder`.
async fn build_channels(
    specs: Vec<Box<dyn ChannelSpec>>,
    setup: &Setup,
    mut builder: BotBuilder,
) -> Result<(BotBuilder, Channels), RunError> {
    let mut out = Channels::default();
    let mut names = std::collections::HashSet::new();
    for spec in specs {
        let built = spec.build(setup).await?;
        let first = built.channels.first().map(|c| c.name().to_string());
        for channel in built.channels {
            if !names.insert(channel.name().to_string()) {
                return Err(flowbot_channels::Error::settings(
                    channel.name().as_str(),
                    "another channel has this name",
                )
                .into());
            }
            builder = builder.channel(channel);
        }
        if let Some(routes) = built.routes {
            // axum refuses (by panicking) a route served twice: say which channel asked.
            let have = std::mem::take(&mut out.routes);
            let merged =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || have.merge(routes)));
            out.routes = merged.map_err(|_| {
                flowbot_channels::Error::settings(
                    first.unwrap_or_default(),
                    "its HTTP routes overlap those of a channel built before it (a server has \
                     one web chat, from [web], and its generic webhooks come from [webhooks])",
                )
            })?;
        }
        out.stats.extend(built.stats);
        out.menus.extend(built.menus);
        out.ready.extend(built.ready);
    }
    Ok((builder, out))
}

/// Declare `commands` to every platform that lists them; a failure is logged, not fatal
/// (the bot works without its menu).
async fn declare_commands(menus: &[Arc<dyn CommandMenu>], commands: &[CommandInfo]) {
    for menu in menus {
        match menu.declare(commands).await {
            Ok(n) => tracing::info!(channel = %menu.channel(), commands = n, "commands declared"),
            Err(e) => {
                tracing::warn!(channel = %menu.channel(), error = %e, "could not declare the bot's commands")
            }
        }
    }
}

/// What the server and the agent build alike: the store, the rules, the actions, the
/// workflow engine, the failure reply, the notifiers, and the assistant of `[llm]` (with its
/// `llm` action), which also answers the messages no rule matched when `llm.unmatched`.
async fn bot_builder(
    config: &Config,
    store: &Arc<dyn Store>,
    rules: &RuleLibrary,
    workflows: Arc<Workflows>,
    knowledge: Option<&crate::knowledge::KnowledgeBase>,
) -> Result<(BotBuilder, Option<crate::llm::Assistant>), RunError> {
    let builder = Bot::builder()
        .store(store.clone())
        .router_arc(rules.router())
        .action(HttpRequest::with_policy(Arc::new(config.network.policy()?)))
        .workflows(workflows)
        .failure_reply(config.bot.failure_reply());
    let mut builder = with_notifiers(builder, config)?;
    if let Some(kb) = knowledge {
        builder = builder
            .task(
                flowbot_llm::knowledge::INGEST_TASK,
                flowbot_llm::knowledge::ingest_handler(kb.knowledge.clone()),
            )
            .action(flowbot_llm::knowledge::SearchAction::new(
                kb.knowledge.clone(),
                kb.collection.clone(),
                kb.search.clone(),
            ));
    }
    let assistant = crate::llm::assistant(&config.llm, knowledge).await?;
    if let Some(a) = &assistant {
        builder = builder
            .assistant(a.agent.clone())
            .action(flowbot_llm::LlmAction::new(a.agent.clone()));
        rules
            .router()
            .set_unmatched_to_assistant(config.llm.unmatched);
    }
    Ok((builder, assistant))
}

/// A running server's handles, for tests and embedding.
#[derive(Debug, Clone)]
pub struct Running {
    /// The address actually bound (useful with port 0).
    pub addr: std::net::SocketAddr,
    /// The admin API's own address, when `server.admin_listen` is set.
    pub admin: Option<std::net::SocketAddr>,
}

/// Run the server until `shutdown` is cancelled. `ready` receives the bound address.
pub async fn run_server(
    config: Config,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), RunError> {
    Server::new(config).run(shutdown, ready).await
}

/// [`run_server`], optionally with the console channel (stdin and stdout) as well.
pub async fn run_server_with(
    config: Config,
    console: bool,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), RunError> {
    let mut server = Server::new(config);
    if console {
        server = server.channel(flowbot_channels::console::channel("console"));
    }
    server.run(shutdown, ready).await
}

/// Remove audit entries older than `days`, at start and every hour, until `stop`.
async fn prune_audit(
    store: Arc<dyn flowbot_core::store::AuditStore>,
    days: u32,
    stop: CancellationToken,
) {
    loop {
        let before = flowbot_core::clock::now() - chrono::Duration::days(i64::from(days));
        match store.prune_audit(before).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                removed = n,
                days,
                "audit entries past their retention removed"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot prune the audit log"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
        }
    }
}

/// The admin API's gate from `[auth]` (the config was validated: a server reachable from the
/// network has authentication, or says loudly that it runs without).
pub fn gate(config: &Config, store: &Arc<dyn Store>) -> Result<http::auth::Gate, RunError> {
    let auth = &config.auth;
    let roles = auth.roles()?;
    if !auth.required() {
        if config.server.admin_address().ip().is_loopback() {
            tracing::info!(
                "the admin API needs no credential: it listens on loopback only ([auth] in docs/security.md)"
            );
        } else {
            tracing::warn!(listen = %config.server.admin_address(), "THE ADMIN API IS OPEN TO THE NETWORK WITHOUT AUTHENTICATION ([auth] allow_unauthenticated = true): anyone who reaches this address can read every conversation and change the bot");
        }
    }
    let jwt = match &auth.jwt {
        Some(j) => Some(http::auth::JwtAuth {
            verifier: flowbot_core::jwt::JwtVerifier::new(j.verifier()?).map_err(|e| {
                crate::config::ConfigError {
                    path: "auth.jwt".into(),
                    message: e.to_string(),
                }
            })?,
            subject_claim: j.subject_claim.clone(),
            role_claim: j.role_claim.clone(),
            roles: j.roles.clone(),
        }),
        None => None,
    };
    Ok(http::auth::Gate {
        jwt,
        keys: auth
            .api_keys
            .then(|| Arc::new(flowbot_core::auth::ApiKeys::new(store.clone()))),
        roles: Arc::new(roles),
        required: auth.required(),
        hosts: auth.hosts(config.server.admin_address()),
        origins: config.server.cors_origins.clone(),
        limits: Arc::new(config.limits.limits()?),
        audit: Some(store.clone()),
        sessions: auth
            .oidc
            .as_ref()
            .map(|o| Arc::new(http::oidc::Sessions::new(store.clone(), o))),
    })
}

/// Run an agent (workers and schedules only) until `shutdown` is cancelled: [`Agent::run`].
pub async fn run_agent(config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    Agent::new(config).run(shutdown).await
}

/// Cancel `token` on SIGINT or SIGTERM.
pub fn cancel_on_signals(token: CancellationToken) {
    flowbot_core::cancel_on_signals(token);
}

/// Set up logging as configured.
pub fn init_logging(config: &Config) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(&config.log.level).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match config.log.format {
        crate::config::LogFormat::Pretty => builder.try_init(),
        crate::config::LogFormat::Json => builder.json().try_init(),
    };
}
