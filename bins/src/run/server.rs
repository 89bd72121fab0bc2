//! [`Server`]: what `flowbot-server` runs, assembled from a configuration, served on its
//! listeners or mounted in an application's axum app.

use super::*;

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
    routing: Routing,
    channels: Vec<Box<dyn ChannelSpec>>,
    listener: Option<tokio::net::TcpListener>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("routing", &self.routing)
            .field("channels", &self.channels.len())
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
    /// What the channels wait for before serving (web chat's listener running).
    ready: Vec<flowbot_channels::Ready>,
}

impl std::fmt::Debug for Assembled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Assembled").finish_non_exhaustive()
    }
}

impl Assembled {
    /// Start the bot on its own task, stopping when `stop` is cancelled, and wait until every
    /// channel is ready (web chat accepting connections). The routes can be served from then on.
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
        let ready = async {
            for r in self.ready {
                r.await;
            }
        };
        tokio::select! {
            () = ready => {}
            ended = &mut task => {
                return Err(match ended {
                    Ok(Ok(())) => RunError::Stopped("it returned".into()),
                    Ok(Err(e)) => e.into(),
                    Err(e) => RunError::Stopped(format!("its task failed: {e}")),
                });
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
            routing: Routing::default(),
            channels: Vec::new(),
            listener: None,
        }
    }

    /// Route events with `router` instead of the rules (the rules API still edits the stored
    /// rules, which this router does not read unless it asks for them). Its commands are
    /// unknown, so the platforms' command lists (Telegram's menu, Discord's slash commands)
    /// are left as they are.
    pub fn router(mut self, router: impl Router) -> Self {
        self.routing.router(router);
        self
    }

    /// Route events with Rust `handlers`; their commands are declared to the platforms that
    /// list commands (Telegram's menu, Discord's slash commands).
    pub fn handlers<S: Send + Sync + 'static>(mut self, handlers: Handlers<S>) -> Self {
        self.routing.handlers(handlers);
        self
    }

    /// Route events with Rust `handlers` first, and every event they do not take with the
    /// rules (rule files and stored rules, hot-reloaded as usual; `llm.unmatched` applies).
    /// Both sets of commands are declared to platforms, the handlers' winning a name both use.
    pub fn handlers_then_rules<S: Send + Sync + 'static>(mut self, handlers: Handlers<S>) -> Self {
        self.routing.handlers_then_rules(handlers);
        self
    }

    /// Serve on `listener`, already bound, instead of binding `server.listen` (which becomes
    /// the listener's address): bind port 0, learn the port, then hand the listener over, and
    /// no other process can take the port in between. Only [`run`](Self::run) listens.
    ///
    /// The admin API's rules are checked again for the listener's address: one open to the
    /// network needs credentials (`[auth]`) unless the admin API has an address of its own.
    pub fn listener(mut self, listener: tokio::net::TcpListener) -> Result<Self, RunError> {
        let addr = listener.local_addr().map_err(RunError::Serve)?;
        self.config.server.listen = addr;
        if self.config.server.admin_listen.is_none() {
            self.config.auth.validate("server.listen", addr)?;
        }
        self.listener = Some(listener);
        Ok(self)
    }

    /// Add a channel besides those of the configuration: a [`Channel`](flowbot_core::Channel),
    /// a built-in platform's settings, or any [`ChannelSpec`] of your own. Its routes are
    /// served with the public endpoints (limited per client address), its counters reported
    /// in the metrics, and the bot's commands declared to its menu.
    pub fn channel(mut self, channel: impl ChannelSpec + 'static) -> Self {
        self.channels.push(Box::new(channel));
        self
    }

    /// Listen on `server.listen` (and `server.admin_listen`) and serve until `shutdown` is
    /// cancelled, then drain HTTP and stop the bot. `ready` receives the bound addresses.
    pub async fn run(
        mut self,
        shutdown: CancellationToken,
        ready: Option<tokio::sync::oneshot::Sender<Running>>,
    ) -> Result<(), RunError> {
        let config = self.config.clone();
        let listener = self.listener.take();
        // Boxed: both futures are large, and `run` is held in callers' futures.
        let assembled = Box::pin(self.assemble(&shutdown)).await?;
        Box::pin(serve_assembled(
            config, listener, assembled, shutdown, ready,
        ))
        .await
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
            routing,
            channels,
            listener: _,
        } = self;
        let shutdown = shutdown.clone();
        let Parts {
            store,
            rules,
            #[cfg(feature = "gpu")]
            local,
            secrets,
            workflows,
            mut builder,
            assistant,
            declared,
            channels: built,
            knowledge,
        } = parts(&mut config, &shutdown, routing, channels, true).await?;
        // The commands declared to platforms: the handlers', or the rules' (as loaded at
        // start); none (the platforms' lists left as they are) for a router of unknown commands.
        if let Some(list) = &declared {
            declare_commands(&built.menus, list).await;
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
            adapters: built.stats,
            llm: assistant.as_ref().map(|a| a.metrics.clone()),
            prompts: assistant.as_ref().map(|a| a.prompts.clone()),
            #[cfg(feature = "gpu")]
            gpu: local.map(|m| m.embedder),
            gate: Arc::new(gate(&config, &store)?),
            knowledge,
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
                web: config.web.enabled,
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
        // (axum refuses a layer over no routes.)
        if built.routes.has_routes() {
            app = app.merge(
                built
                    .routes
                    .route_layer(axum::middleware::from_fn_with_state(
                        limits,
                        http::limits::public,
                    )),
            );
        }
        let app = http::layers(
            app.fallback(http::not_found)
                .method_not_allowed_fallback(http::method_not_allowed),
            &config.server,
        );

        Ok(Assembled {
            routes: app,
            bot,
            ready: built.ready,
        })
    }
}

/// Serve `assembled` as `config` says until `shutdown`, then stop its bot.
async fn serve_assembled(
    config: Config,
    listener: Option<tokio::net::TcpListener>,
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
    let main = match listener {
        Some(l) => Ok(l),
        None => bind(config.server.listen).await,
    };
    let listeners = match (
        main,
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
    if let Some(path) = &config.server.address_file {
        let mut text = format!("{scheme}://{addr}\n");
        if let Some(admin) = admin {
            text.push_str(&format!("{scheme}://{admin}\n"));
        }
        if let Err(source) = write_atomically(path, &text) {
            bot_stop.cancel();
            let _ = bot_task.await;
            return Err(RunError::AddressFile {
                path: path.clone(),
                source,
            });
        }
    }
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
    // Not listening any more: the address file would point at nothing.
    if let Some(path) = &config.server.address_file {
        let _ = std::fs::remove_file(path);
    }
    // HTTP drained (WebSockets are closed by the web channel as the bot stops): stop the bot,
    // which drains the pipeline and releases running tasks.
    bot_stop.cancel();
    match bot_task.await {
        Ok(r) => r?,
        Err(e) => tracing::error!(error = %e, "bot task failed"),
    }
    served
}

/// Write `text` to `path` through a new temporary file beside it (created, never opened
/// through a link someone left there), so a reader never sees half.
fn write_atomically(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", uuid::Uuid::new_v4().simple()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .and_then(|mut f| f.write_all(text.as_bytes()));
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
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
