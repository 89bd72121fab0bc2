//! Wiring: the store, channels, bot and HTTP server from a [`Config`].

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use flowbot_channels::discord::Discord;
use flowbot_channels::http_action::HttpRequest;
use flowbot_channels::slack::Slack;
use flowbot_channels::tailchat::Tailchat;
use flowbot_channels::telegram::Telegram;
use flowbot_channels::web::WebChat;
use flowbot_channels::webhook::{WebhookConfig, Webhooks};
use flowbot_core::secrets::SecretStore;
use flowbot_core::task::WorkerConfig;
use flowbot_core::workflow::{Secrets, Workflows};
use flowbot_core::{Bot, BotBuilder, CancellationToken, CommandInfo, Handlers, Router, Store};
use flowbot_rules::{Plugins, Reload, RuleFiles, RuleLibrary, Source, WorkflowScripts};
use flowbot_store::{PostgresOptions, PostgresStore, SqliteOptions, SqliteStore};

use flowbot_store::redact_url as redact;

use crate::config::{Config, NotifierEntry};
use crate::http::{self, AppState};

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
    /// A channel is misconfigured.
    #[error("channel configuration: {0}")]
    Channel(String),
    /// The bot could not be built or failed.
    #[error(transparent)]
    Bot(#[from] flowbot_core::Error),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
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

/// Open the configured store (applying migrations).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, RunError> {
    let url = &config.database.url;
    let wrap = |source| RunError::Store {
        url: redact(url),
        source,
    };
    if url.starts_with("sqlite:") {
        let mut options = SqliteOptions::from_url(url).map_err(wrap)?;
        options.work_share = config.database.sqlite_work_share;
        Ok(Arc::new(
            SqliteStore::open_with(options).await.map_err(wrap)?,
        ))
    } else {
        let options =
            PostgresOptions::new(url.clone()).max_connections(config.database.max_connections);
        let options = match &config.database.schema {
            Some(schema) => options.schema(schema.clone()),
            None => options,
        };
        Ok(Arc::new(
            PostgresStore::connect_with(options).await.map_err(wrap)?,
        ))
    }
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

/// The SMTP settings of an e-mail notifier entry.
pub(crate) fn email_settings(
    n: &NotifierEntry,
) -> Result<flowbot_channels::notifiers::EmailSettings, flowbot_channels::SettingsError> {
    match n {
        NotifierEntry::Email {
            host,
            port,
            tls,
            username,
            password,
            from,
            to,
            ca_file,
        } => Ok(flowbot_channels::notifiers::EmailSettings {
            host: host.clone(),
            port: *port,
            tls: *tls,
            username: username.clone(),
            password: password.clone(),
            from: from.clone(),
            to: to.clone(),
            ca_file: ca_file.clone(),
        }),
        _ => Err("not an e-mail notifier".into()),
    }
}

/// Add the configured notifiers to `builder` (their settings were checked with the config).
fn with_notifiers(mut builder: BotBuilder, config: &Config) -> Result<BotBuilder, RunError> {
    use flowbot_channels::notifiers::{Email, JsonWebhook, Ntfy, Pushover, SlackWebhook};
    for (name, n) in &config.notifiers {
        builder = match n {
            NotifierEntry::Ntfy {
                base_url,
                topic,
                token,
            } => builder.notifier(name, Ntfy::new(base_url, topic, token.clone())),
            NotifierEntry::SlackWebhook { url } => builder.notifier(name, SlackWebhook::new(url)),
            NotifierEntry::Pushover {
                base_url,
                token,
                user,
            } => builder.notifier(name, Pushover::new(base_url, token, user)),
            NotifierEntry::Webhook { url, secret } => {
                builder.notifier(name, JsonWebhook::new(url, secret.clone()))
            }
            NotifierEntry::Email { .. } => {
                let email = email_settings(n)
                    .and_then(|s| Email::new(&s))
                    .map_err(|e| RunError::Channel(format!("notifiers.{name}: {e}")))?;
                builder.notifier(name, email)
            }
        };
    }
    Ok(builder)
}

fn webhook_configs(config: &Config) -> Vec<WebhookConfig> {
    config
        .webhooks
        .iter()
        .map(|(name, e)| WebhookConfig {
            name: name.clone(),
            callback_url: e.callback_url.clone(),
            secret: e.secret.clone(),
            replay_window: Duration::from_secs(e.replay_window_secs.unwrap_or(300)),
        })
        .collect()
}

/// What the server and the agent build alike: the store, the rules, the actions, the
/// workflow engine, the failure reply, the notifiers, and the assistant of `[llm]` (with its
/// `llm` action), which also answers the messages no rule matched when `llm.unmatched`.
async fn bot_builder(
    config: &Config,
    store: &Arc<dyn Store>,
    rules: &RuleLibrary,
    workflows: Arc<Workflows>,
) -> Result<(BotBuilder, Option<crate::llm::Assistant>), RunError> {
    let builder = Bot::builder()
        .store(store.clone())
        .router_arc(rules.router())
        .action(HttpRequest::with_policy(Arc::new(config.network.policy()?)))
        .workflows(workflows)
        .failure_reply(config.bot.failure_reply());
    let mut builder = with_notifiers(builder, config)?;
    let assistant = crate::llm::assistant(&config.llm).await?;
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

/// What `flowbot-server` runs, as a library: the store, the channels of the configuration
/// (and any you add), the HTTP API with its authentication and limits, platform webhooks, web
/// chat, metrics, the embedded agent and graceful shutdown, with any [`Router`] in place of
/// the rules.
///
/// [`Server::run`] listens on `server.listen` (and `server.admin_listen`) as the binary does;
/// [`Server::assemble`] gives the routes to mount in an application's own axum app, and the
/// bot to run beside them.
///
/// ```no_run
/// use flowbot_core::{CancellationToken, Handlers, Reply};
/// use flowbot_server::{config::Config, run::Server};
///
/// # async fn start() -> Result<(), flowbot_server::run::RunError> {
/// let handlers = Handlers::new(())
///     .command("ping", |_cx| async { Ok(Reply::text("pong")) });
/// Server::new(Config::default())
///     .handlers(handlers)
///     .run(CancellationToken::new(), None)
///     .await
/// # }
/// ```
pub struct Server {
    config: Config,
    router: Option<Arc<dyn Router>>,
    commands: Declare,
    then_rules: Option<ThenRules>,
    channels: Vec<flowbot_core::Channel>,
}

/// Handlers to put in front of the rules: the router both make, and the handlers' commands.
type ThenRules =
    Box<dyn FnOnce(Arc<dyn Router>) -> (Arc<dyn Router>, Vec<CommandInfo>) + Send + Sync>;

/// Which commands the server declares to platforms that list them.
enum Declare {
    /// The rules' (the default).
    Rules,
    /// These (Rust handlers' commands).
    These(Vec<CommandInfo>),
    /// None: the platforms' lists are left as they are (a router whose commands are unknown).
    Leave,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("own_router", &self.router.is_some())
            .field("handlers_then_rules", &self.then_rules.is_some())
            .field("channels", &self.channels)
            .finish_non_exhaustive()
    }
}

/// A [`Server`] put together but not listening: see [`Server::assemble`].
pub struct Assembled {
    /// Every route of the server (API, metrics, web chat, webhooks, platform webhooks), with
    /// its authentication, limits and layers: merge it into the application's router. Serve
    /// with `into_make_service_with_connect_info::<SocketAddr>()` so that the per-address
    /// limits see the client's address.
    pub routes: axum::Router,
    /// The bot: run it (`bot.run(stop)`) for as long as the routes are served.
    pub bot: Bot,
    web: Option<WebChat>,
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled").finish_non_exhaustive()
    }
}

impl Assembled {
    /// Start the bot on its own task, stopping when `stop` is cancelled, and wait until the web
    /// chat (when enabled) accepts connections. The routes can be served from then on.
    pub async fn start_bot(
        self,
        stop: CancellationToken,
    ) -> Result<
        (
            axum::Router,
            tokio::task::JoinHandle<flowbot_core::Result<()>>,
        ),
        RunError,
    > {
        let mut task = tokio::spawn(self.bot.run(stop));
        if let Some(web) = &self.web {
            tokio::select! {
                () = web.listening() => {}
                ended = &mut task => {
                    return Err(match ended {
                        Ok(Ok(())) => RunError::Channel("the bot stopped before serving".into()),
                        Ok(Err(e)) => e.into(),
                        Err(e) => RunError::Channel(format!("bot task failed before serving: {e}")),
                    });
                }
            }
        }
        Ok((self.routes, task))
    }
}

impl Server {
    /// The server of `config`: its channels, and the rules (rule files and stored rules) as
    /// the router.
    pub fn new(config: Config) -> Self {
        Server {
            config,
            router: None,
            commands: Declare::Rules,
            then_rules: None,
            channels: Vec::new(),
        }
    }

    /// Route events with `router` instead of the rules (the rules API still edits the stored
    /// rules, which this router does not read unless it asks for them). Its commands are
    /// unknown, so the platforms' command lists (Telegram's menu, Discord's slash commands)
    /// are left as they are.
    pub fn router(mut self, router: impl Router) -> Self {
        self.router = Some(Arc::new(router));
        self.then_rules = None;
        // Its commands are unknown: the platforms' command lists are left as they are.
        self.commands = Declare::Leave;
        self
    }

    /// Route events with Rust `handlers`; their commands are declared to the platforms that
    /// list commands (Telegram's menu, Discord's slash commands).
    pub fn handlers<S: Send + Sync + 'static>(mut self, handlers: Handlers<S>) -> Self {
        self.commands = Declare::These(handlers.commands());
        self.router = Some(Arc::new(handlers));
        self.then_rules = None;
        self
    }

    /// Route events with Rust `handlers` first, and every event they do not take with the
    /// rules (rule files and stored rules, hot-reloaded as usual; `llm.unmatched` applies).
    /// Both sets of commands are declared to platforms, the handlers' winning a name both use.
    pub fn handlers_then_rules<S: Send + Sync + 'static>(mut self, handlers: Handlers<S>) -> Self {
        self.commands = Declare::Rules;
        self.router = None;
        self.then_rules = Some(Box::new(move |rules: Arc<dyn Router>| {
            let commands = handlers.commands();
            let router: Arc<dyn Router> = Arc::new(handlers.or_arc(rules));
            (router, commands)
        }));
        self
    }

    /// Add a channel besides those of the configuration.
    pub fn channel(mut self, channel: flowbot_core::Channel) -> Self {
        self.channels.push(channel);
        self
    }

    /// Listen on `server.listen` (and `server.admin_listen`) and serve until `shutdown` is
    /// cancelled, then drain HTTP and stop the bot. `ready` receives the bound addresses.
    pub async fn run(
        self,
        shutdown: CancellationToken,
        ready: Option<tokio::sync::oneshot::Sender<Running>>,
    ) -> Result<(), RunError> {
        let config = self.config.clone();
        // Boxed: both futures are large, and `run` is held in callers' futures.
        let assembled = Box::pin(self.assemble(&shutdown)).await?;
        Box::pin(serve_assembled(config, assembled, shutdown, ready)).await
    }

    /// Put the server together without listening: the routes to mount in an application's
    /// axum app, and the bot to run beside them ([`Assembled::start_bot`]). Tasks of the
    /// server (rule reloads, audit pruning) stop with `shutdown`.
    ///
    /// `server.listen` (or `server.admin_listen`) must be the address the application serves
    /// on: it decides whether the admin API asks for credentials (`[auth]`).
    pub async fn assemble(self, shutdown: &CancellationToken) -> Result<Assembled, RunError> {
        let Server {
            mut config,
            router,
            commands,
            then_rules,
            channels,
        } = self;
        let shutdown = shutdown.clone();
        let store = open_store(&config).await?;
        let rules = rule_library(&config, &store, &shutdown).await?;
        let secrets = secret_store(&config, &store)?;
        resolve_references(&mut config, secrets.as_deref()).await?;
        let workflows = workflow_engine(&config, &store, secrets.clone());
        let (mut builder, assistant) =
            bot_builder(&config, &store, &rules, workflows.clone()).await?;
        if let Some(router) = router {
            builder = builder.router_arc(router);
        }
        let mut commands = commands;
        if let Some(then_rules) = then_rules {
            let (router, theirs) = then_rules(rules.router());
            builder = builder.router_arc(router);
            let mut all = rules.router().current().commands();
            all.retain(|c| theirs.iter().all(|t| t.name != c.name));
            all.extend(theirs);
            all.sort_by(|a, b| a.name.cmp(&b.name));
            commands = Declare::These(all);
        }
        for c in channels {
            builder = builder.channel(c);
        }
        // The commands declared to platforms: the handlers', or the rules' (as loaded at
        // start); none (the platforms' lists left as they are) for a router of unknown commands.
        let declared = match commands {
            Declare::Rules => Some(rules.router().current().commands()),
            Declare::These(list) => Some(list),
            Declare::Leave => None,
        };
        let web = if config.web.enabled {
            let identity = config.web.identity(&store).await?;
            Some(
                WebChat::new("web", Some(store.clone()))
                    .with_identity(identity)?
                    .max_sockets_per_address(config.limits.websockets_per_address),
            )
        } else {
            None
        };
        if let Some(web) = &web {
            builder = builder.channel(web.channel());
        }
        let (webhooks, hook_channels) = Webhooks::new(store.clone(), &webhook_configs(&config))
            .map_err(|e| RunError::Channel(e.to_string()))?;
        for c in hook_channels {
            builder = builder.channel(c);
        }
        let mut adapters: Vec<Arc<dyn flowbot_channels::AdapterStats>> = Vec::new();
        let mut routes = axum::Router::new();
        for (name, entry) in &config.tailchat {
            let (tc, channel) = Tailchat::new(store.clone(), entry.channel_config(name))
                .map_err(|e| RunError::Channel(e.0))?;
            builder = builder.channel(channel);
            routes = routes.merge(tc.router());
            adapters.push(Arc::new(tc));
        }
        for (name, entry) in &config.slack {
            let (slack, channel) = Slack::new(store.clone(), entry.channel_config(name))
                .map_err(|e| RunError::Channel(e.0))?;
            builder = builder.channel(channel);
            routes = routes.merge(slack.router());
            adapters.push(Arc::new(slack));
        }
        for (name, entry) in &config.discord {
            let settings = entry
                .channel_config(name)
                .map_err(|e| RunError::Channel(e.0))?;
            let (discord, channel) =
                Discord::new(store.clone(), settings).map_err(|e| RunError::Channel(e.0))?;
            // The router's commands as the application's slash commands (as loaded at start).
            match declared
                .as_deref()
                .map(|list| discord.register_commands(list))
            {
                None => {}
                Some(registering) => match registering.await {
                    Ok(n) => {
                        tracing::info!(channel = %name, commands = n, "discord slash commands registered")
                    }
                    Err(e) => {
                        tracing::warn!(channel = %name, error = %e, "could not register the slash commands")
                    }
                },
            }
            builder = builder.channel(channel);
            routes = routes.merge(discord.router());
            adapters.push(Arc::new(discord));
        }
        for (name, entry) in &config.telegram {
            let settings = entry
                .channel_config(name)
                .map_err(|e| RunError::Channel(e.0))?;
            let (tg, channel) = Telegram::connect(store.clone(), settings)
                .await
                .map_err(|e| RunError::Channel(e.to_string()))?;
            tracing::info!(channel = %name, username = %tg.username(), "telegram bot connected");
            // The router's commands in Telegram's command menu (as loaded at start).
            if let Some(list) = &declared
                && let Err(e) = tg.set_commands(list).await
            {
                tracing::warn!(channel = %name, error = %e, "could not declare the bot's commands");
            }
            builder = builder.channel(channel);
            routes = routes.merge(tg.router());
            adapters.push(Arc::new(tg));
        }
        builder = if config.server.agent {
            builder.workers(worker_config(&config, "server"))
        } else {
            builder.without_workers()
        };
        let bot = builder.build()?;
        if assistant.is_some() {
            crate::llm::check_tools(&config.llm, bot.pipeline().services().actions())?;
        }

        let state = AppState {
            store: store.clone(),
            pipeline: bot.pipeline().stats().clone(),
            workers: bot.worker_stats().clone(),
            rules: rules.clone(),
            workflows,
            secrets,
            adapters,
            llm: assistant.as_ref().map(|a| a.metrics.clone()),
            prompts: assistant.as_ref().map(|a| a.prompts.clone()),
            gate: Arc::new(gate(&config, &store)?),
        };
        let limits = state.gate.limits.clone();
        let sign_in = match (&config.auth.oidc, &state.gate.sessions) {
            (Some(o), Some(sessions)) => {
                tokio::spawn(
                    sessions
                        .clone()
                        .prune_every(Duration::from_secs(3600), shutdown.clone()),
                );
                Some(http::oidc::router(Arc::new(http::oidc::Oidc::new(
                    o,
                    &state.gate,
                )?)))
            }
            _ => None,
        };
        tokio::spawn(prune_audit(
            store.clone(),
            config.auth.audit_retention_days,
            shutdown.clone(),
        ));
        let (mut api, mut doc) = http::api(state);
        http::channel_docs(
            &mut doc,
            http::ChannelRoutes {
                web: web.is_some(),
                webhooks: true,
                telegram: !config.telegram.is_empty(),
                tailchat: !config.tailchat.is_empty(),
                slack: !config.slack.is_empty(),
                discord: config.discord.values().any(|d| d.public_key.is_some()),
            },
        );
        if let Some((routes, paths)) = sign_in {
            api = api.merge(routes);
            doc.merge(paths);
        }
        let doc = Arc::new(doc);
        let mut app = api.route(
            "/api/v1/openapi.json",
            get(move || {
                let doc = doc.clone();
                async move { axum::Json((*doc).clone()) }
            }),
        );
        // The public endpoints: platform webhooks, generic webhooks, web chat, each with its own
        // verification, all limited per client address.
        let mut public = webhooks.router().merge(routes);
        if let Some(web) = &web {
            public = public.merge(web.router());
        }
        app = app.merge(public.route_layer(axum::middleware::from_fn_with_state(
            limits,
            http::limits::public,
        )));
        let app = http::layers(
            app.fallback(http::not_found)
                .method_not_allowed_fallback(http::method_not_allowed),
            &config.server,
        );

        Ok(Assembled {
            routes: app,
            bot,
            web,
        })
    }
}

/// Serve `assembled` as `config` says until `shutdown`, then stop its bot.
async fn serve_assembled(
    config: Config,
    assembled: Assembled,
    shutdown: CancellationToken,
    ready: Option<tokio::sync::oneshot::Sender<Running>>,
) -> Result<(), RunError> {
    // Start the bot first and let the web channel start listening, so the first browser that
    // connects after the port opens is served rather than refused.
    let bot_stop = CancellationToken::new();
    let (app, bot_task) = assembled.start_bot(bot_stop.clone()).await?;
    let bind = |addr: std::net::SocketAddr| async move {
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| RunError::Listen { addr, source })
    };
    let listeners = match (
        bind(config.server.listen).await,
        match config.server.admin_listen {
            Some(a) => bind(a).await.map(Some),
            None => Ok(None),
        },
    ) {
        (Ok(main), Ok(admin)) => (main, admin),
        (Err(e), _) | (_, Err(e)) => {
            bot_stop.cancel();
            let _ = bot_task.await;
            return Err(e);
        }
    };
    let (listener, admin_listener) = listeners;
    let addr = listener.local_addr().map_err(RunError::Serve)?;
    let admin = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(RunError::Serve)?),
        None => None,
    };
    let scheme = if config.server.tls.is_some() {
        "https"
    } else {
        "http"
    };
    tracing::info!(%addr, admin = ?admin, database = %redact(&config.database.url), agent = config.server.agent, "flowbot-server listening; chat at {scheme}://{addr}/chat");
    if let Some(ready) = ready {
        let _ = ready.send(Running { addr, admin });
    }

    let tls = config
        .server
        .tls
        .as_ref()
        .map(crate::config::TlsConfig::files);
    let served = match admin_listener {
        None => serve_on(listener, app, tls, shutdown.clone()).await,
        Some(admin_listener) => {
            // The main address serves the public surface only.
            let public = app
                .clone()
                .layer(axum::middleware::from_fn(http::public_only));
            let (a, b) = tokio::join!(
                serve_on(listener, public, tls.clone(), shutdown.clone()),
                serve_on(admin_listener, app, tls, shutdown.clone()),
            );
            a.and(b)
        }
    };
    // HTTP drained (WebSockets are closed by the web channel as the bot stops): stop the bot,
    // which drains the pipeline and releases running tasks.
    bot_stop.cancel();
    match bot_task.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "bot task failed"),
    }
    served
}

/// Serve `app` on `tcp` (through TLS with `tls`) until `stop`, then drain.
async fn serve_on(
    tcp: tokio::net::TcpListener,
    app: axum::Router,
    tls: Option<crate::tls::TlsFiles>,
    stop: CancellationToken,
) -> Result<(), RunError> {
    use axum::serve::ListenerExt;
    let graceful = {
        let stop = stop.clone();
        async move { stop.cancelled().await }
    };
    let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => axum::serve(tcp, app)
            .with_graceful_shutdown(graceful)
            .await
            .map_err(RunError::Serve),
        Some(files) => {
            let listener = crate::tls::TlsListener::new(tcp, files, stop).map_err(|e| {
                crate::config::ConfigError {
                    path: "server.tls".into(),
                    message: e.to_string(),
                }
            })?;
            axum::serve(listener.tap_io(|_| {}), app)
                .with_graceful_shutdown(graceful)
                .await
                .map_err(RunError::Serve)
        }
    }
}

/// Remove audit entries older than `days`, at start and every hour, until `stop`.
async fn prune_audit(store: Arc<dyn Store>, days: u32, stop: CancellationToken) {
    loop {
        let before = chrono::Utc::now() - chrono::Duration::days(i64::from(days));
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

/// Run an agent (workers and schedules only) until `shutdown` is cancelled.
pub async fn run_agent(mut config: Config, shutdown: CancellationToken) -> Result<(), RunError> {
    let store = open_store(&config).await?;
    let rules = rule_library(&config, &store, &shutdown).await?;
    let secrets = secret_store(&config, &store)?;
    resolve_references(&mut config, secrets.as_deref()).await?;
    let workflows = workflow_engine(&config, &store, secrets);
    let (builder, assistant) = bot_builder(&config, &store, &rules, workflows).await?;
    let mut builder = builder.workers(worker_config(&config, "agent"));
    // Agents hold no sockets: web replies go over the bus to the servers.
    builder = builder.channel(WebChat::new("web", Some(store.clone())).sender_only());
    let (_, hook_channels) = Webhooks::new(store.clone(), &webhook_configs(&config))
        .map_err(|e| RunError::Channel(e.to_string()))?;
    for c in hook_channels {
        builder = builder.channel(c);
    }
    // Agents deliver replies; the servers receive.
    for (name, entry) in &config.discord {
        // No gateway here: the servers receive.
        let mut settings = entry
            .channel_config(name)
            .map_err(|e| RunError::Channel(e.0))?;
        settings.gateway = None;
        let (_, channel) =
            Discord::new(store.clone(), settings).map_err(|e| RunError::Channel(e.0))?;
        builder = builder.channel(channel);
    }
    for (name, entry) in &config.slack {
        // No Socket Mode here: the servers receive.
        let settings = flowbot_channels::slack::SlackConfig {
            app_token: None,
            ..entry.channel_config(name)
        };
        let (_, channel) =
            Slack::new(store.clone(), settings).map_err(|e| RunError::Channel(e.0))?;
        builder = builder.channel(channel);
    }
    for (name, entry) in &config.tailchat {
        let (_, channel) = Tailchat::new(store.clone(), entry.channel_config(name))
            .map_err(|e| RunError::Channel(e.0))?;
        builder = builder.channel(channel);
    }
    for (name, entry) in &config.telegram {
        let settings = entry
            .channel_config(name)
            .map_err(|e| RunError::Channel(e.0))?;
        builder = builder.channel(
            Telegram::sender_only(store.clone(), settings)
                .map_err(|e| RunError::Channel(e.to_string()))?,
        );
    }
    let bot = builder.build()?;
    if assistant.is_some() {
        crate::llm::check_tools(&config.llm, bot.pipeline().services().actions())?;
    }
    tracing::info!(database = %redact(&config.database.url), concurrency = config.workers.concurrency, "flowbot-agent running");
    bot.run(shutdown).await?;
    Ok(())
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
