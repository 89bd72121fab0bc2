//! Routing: the pipeline asks a [`Router`] what to do with each event. `flowbot-rules`
//! implements it with rule files; [`Handlers`] implements it with plain Rust functions over
//! typed shared state.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::action::{ActionContext, ActionRegistry};
use crate::channel::Senders;
use crate::error::{Error, Result};
use crate::message::{Event, Outbound, Target};
use crate::session::SessionHandle;
use crate::store::Store;
use crate::task::TaskClient;

/// What handlers can reach besides the event: the store, the task queue, actions, channels.
#[derive(Clone)]
pub struct Services {
    pub(crate) store: Option<Arc<dyn Store>>,
    pub(crate) tasks: Option<TaskClient>,
    pub(crate) actions: Arc<ActionRegistry>,
    pub(crate) senders: Arc<Senders>,
    pub(crate) assistant: Option<Arc<dyn crate::llm::Assistant>>,
}

impl std::fmt::Debug for Services {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Services")
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .field("tasks", &self.tasks.is_some())
            .field("actions", &self.actions)
            .field("senders", &self.senders)
            .field("assistant", &self.assistant.is_some())
            .finish()
    }
}

impl Services {
    /// The store, if the bot has one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.store.as_ref()
    }

    /// The task client, if the bot has a store.
    pub fn tasks(&self) -> Result<&TaskClient> {
        self.tasks
            .as_ref()
            .ok_or_else(|| Error::Build("this bot has no store, so it cannot enqueue tasks".into()))
    }

    /// The action registry.
    pub fn actions(&self) -> &ActionRegistry {
        &self.actions
    }

    /// Every channel's sender.
    pub fn senders(&self) -> &Senders {
        &self.senders
    }

    /// Every channel's sender, shared (for work that outlives the call, such as a reply
    /// streamed while it is written).
    pub fn senders_arc(&self) -> &Arc<Senders> {
        &self.senders
    }

    /// The assistant (a language model with tools), if the bot has one.
    pub fn assistant(&self) -> Option<&Arc<dyn crate::llm::Assistant>> {
        self.assistant.as_ref()
    }

    /// The context an action called for this turn gets.
    pub fn action_context(&self, source: Option<Target>) -> ActionContext {
        ActionContext {
            store: self.store.clone(),
            senders: self.senders.clone(),
            source,
        }
    }
}

/// One event on its way through the router: the event, the sender's session and services.
#[derive(Debug, Clone)]
pub struct Turn {
    /// The event.
    pub event: Arc<Event>,
    /// The session of the event's sender in its conversation.
    pub session: SessionHandle,
    /// Services.
    pub services: Services,
}

impl Turn {
    /// Where a reply to this event goes, if the event belongs to a conversation.
    pub fn source(&self) -> Option<Target> {
        self.event.reply_target()
    }

    /// The message text, if the event is a message.
    pub fn text(&self) -> Option<&str> {
        self.event.as_message().map(|m| m.text.as_str())
    }

    /// Call an action with this turn's conversation as its source.
    pub async fn call_action(&self, name: &str, input: Value) -> Result<Value> {
        let cx = self.services.action_context(self.source());
        self.services.actions.call(name, &cx, input).await
    }
}

/// The messages a router answers with (none is fine). Messages without a target go to the
/// event's conversation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Reply(pub Vec<Outbound>);

impl Reply {
    /// No answer.
    pub fn none() -> Self {
        Reply(Vec::new())
    }

    /// One plain text answer.
    pub fn text(text: impl Into<String>) -> Self {
        Reply(vec![Outbound::text(text)])
    }
}

impl From<Outbound> for Reply {
    fn from(o: Outbound) -> Self {
        Reply(vec![o])
    }
}

impl From<Vec<Outbound>> for Reply {
    fn from(v: Vec<Outbound>) -> Self {
        Reply(v)
    }
}

/// Decides what to do with an event.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot router",
    note = "use `Handlers` for Rust functions, `flowbot-rules` for rule files, or implement `Router`"
)]
pub trait Router: Send + Sync + 'static {
    /// Handle one event: change the session, enqueue tasks, call actions, and return replies.
    async fn route(&self, turn: &Turn) -> Result<Reply>;
}

/// What a Rust handler gets: typed shared state, the turn, and for commands the arguments.
#[derive(Debug)]
pub struct HandlerCx<S> {
    /// Shared application state.
    pub state: Arc<S>,
    /// The event, session and services.
    pub turn: Turn,
    /// For a command, the text after its name; for the fallback, the whole text.
    pub args: String,
}

type BoxedHandler<S> = Arc<dyn Fn(HandlerCx<S>) -> BoxFuture<'static, Result<Reply>> + Send + Sync>;

/// A [`Router`] made of Rust functions: one per slash command, and a fallback for everything
/// else. `S` is the application's shared state, handed to every handler as `Arc<S>`.
///
/// ```
/// use flowbot_core::{Handlers, Reply};
///
/// struct App { greeting: String }
///
/// let router = Handlers::new(App { greeting: "hello".into() })
///     .command("hi", |cx| async move { Ok(Reply::text(cx.state.greeting.clone())) })
///     .fallback(|_cx| async move { Ok(Reply::text("try /hi")) });
/// # let _ = router;
/// ```
pub struct Handlers<S> {
    state: Arc<S>,
    commands: HashMap<String, BoxedHandler<S>>,
    fallback: Option<BoxedHandler<S>>,
}

impl<S> std::fmt::Debug for Handlers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("commands", &self.commands.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .finish()
    }
}

impl<S: Send + Sync + 'static> Handlers<S> {
    /// Handlers sharing `state`.
    pub fn new(state: S) -> Self {
        Handlers {
            state: Arc::new(state),
            commands: HashMap::new(),
            fallback: None,
        }
    }

    fn boxed<F, Fut>(f: F) -> BoxedHandler<S>
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply>> + Send + 'static,
    {
        Arc::new(move |cx| Box::pin(f(cx)))
    }

    /// Handle `/name args…`. A later registration of the same name replaces the earlier one.
    pub fn command<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply>> + Send + 'static,
    {
        self.commands.insert(name.to_owned(), Self::boxed(f));
        self
    }

    /// Handle every event no command matched.
    pub fn fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Reply>> + Send + 'static,
    {
        self.fallback = Some(Self::boxed(f));
        self
    }

    /// Names of the registered commands, sorted.
    pub fn command_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.commands.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

#[async_trait]
impl<S: Send + Sync + 'static> Router for Handlers<S> {
    async fn route(&self, turn: &Turn) -> Result<Reply> {
        let message = turn.event.as_message();
        let command = message.and_then(|m| m.command());
        let (handler, args) =
            match command.and_then(|(name, args)| Some((self.commands.get(name)?, args))) {
                Some((handler, args)) => (handler, args.to_owned()),
                None => match &self.fallback {
                    Some(handler) => (handler, message.map(|m| m.text.clone()).unwrap_or_default()),
                    None => return Ok(Reply::none()),
                },
            };
        handler(HandlerCx {
            state: self.state.clone(),
            turn: turn.clone(),
            args,
        })
        .await
    }
}
