//! [`Agent`]: what `flowbot-agent` runs, as a library.

use super::*;

/// What `flowbot-agent` runs, as a library: workers and schedules against the shared
/// database, delivering replies through send-only channels (the servers receive), with any
/// [`Router`] in place of the rules.
///
/// ```no_run
/// use flowbot_core::{CancellationToken, Handlers, Reply};
/// use flowbot_server::{config::Config, run::Agent};
///
/// # async fn start() -> Result<(), flowbot_server::run::RunError> {
/// let handlers = Handlers::new(())
///     .command("ping", |_cx| async { Ok(Reply::text("pong")) });
/// Agent::new(Config::default())
///     .handlers(handlers)
///     .run(CancellationToken::new())
///     .await
/// # }
/// ```
pub struct Agent {
    config: Config,
    routing: Routing,
    channels: Vec<Box<dyn ChannelSpec>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("routing", &self.routing)
            .field("channels", &self.channels.len())
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// The agent of `config`: its channels (sending only), and the rules as the router.
    pub fn new(config: Config) -> Self {
        Agent {
            config,
            routing: Routing::default(),
            channels: Vec::new(),
        }
    }

    /// Route events with `router` instead of the rules.
    pub fn router(mut self, router: impl Router) -> Self {
        self.routing.router(router);
        self
    }

    /// Route events with Rust `handlers` instead of the rules. Give the servers the same
    /// handlers: the server that receives an event and the agent that handles it may differ.
    pub fn handlers<S: Send + Sync + 'static>(mut self, handlers: Handlers<S>) -> Self {
        self.routing.handlers(handlers);
        self
    }

    /// Route events with Rust `handlers` first and the rules for the rest.
    pub fn handlers_then_rules<S: Send + Sync + 'static>(mut self, handlers: Handlers<S>) -> Self {
        self.routing.handlers_then_rules(handlers);
        self
    }

    /// Add a channel besides those of the configuration, built to send only
    /// ([`Setup::send_only`]).
    pub fn channel(mut self, channel: impl ChannelSpec + 'static) -> Self {
        self.channels.push(Box::new(channel));
        self
    }

    /// Run the workers and schedules until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RunError> {
        let Agent {
            mut config,
            routing,
            channels,
        } = self;
        // Agents declare no commands: the servers do.
        let Parts {
            builder, assistant, ..
        } = parts(&mut config, &shutdown, routing, channels, false).await?;
        let bot = builder.workers(worker_config(&config, "agent")).build()?;
        if assistant.is_some() {
            crate::llm::check_tools(&config.llm, bot.pipeline().services().actions())?;
        }
        tracing::info!(database = %redact(&config.database.url), concurrency = config.workers.concurrency, "flowbot-agent running");
        bot.run(shutdown).await?;
        Ok(())
    }
}
