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
use crate::error::{Error, HandlerResult, Result};
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

    /// The message text, if the event is a message or an edit (the text as edited).
    pub fn text(&self) -> Option<&str> {
        self.event
            .as_message()
            .or(self.event.as_edit())
            .map(|m| m.text.as_str())
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

/// What a Rust handler gets: typed shared state, the turn, and the text its registration
/// matched on (a command's arguments, a button's value, a reaction's emoji).
///
/// Besides the fields, it offers what handlers usually need: [`HandlerCx::parse`] for typed
/// command arguments, [`HandlerCx::session`], [`HandlerCx::store`], [`HandlerCx::text`] and
/// [`HandlerCx::event`].
#[derive(Debug)]
pub struct HandlerCx<S> {
    /// Shared application state.
    pub state: Arc<S>,
    /// The event, session and services.
    pub turn: Turn,
    /// For a command, the text after its name; for a button, its value; for a reaction, the
    /// emoji; for the fallback, the whole text of a message (empty for other events).
    pub args: String,
    /// The usage line of the command being handled (`/remind <delay> <text>`), when it was
    /// registered with one.
    usage: Option<Arc<str>>,
}

impl<S> HandlerCx<S> {
    /// The arguments as `A`: a `String` takes them whole; a tuple of [`FromStr`] values
    /// takes one word each, its last element the rest of the text. Input that does not fit
    /// is a [`Refusal`](crate::Refusal) naming the argument and the command's usage, which
    /// the pipeline shows to the user.
    ///
    /// [`FromStr`]: std::str::FromStr
    pub fn parse<A: FromArgs>(&self) -> std::result::Result<A, crate::Refusal> {
        A::from_args(&self.args).map_err(|e| {
            crate::Refusal::new(match &self.usage {
                Some(usage) => format!("{e}. Usage: {usage}"),
                None => e,
            })
        })
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.turn.event
    }

    /// The message text, if the event is a message.
    pub fn text(&self) -> Option<&str> {
        self.turn.text()
    }

    /// The session of the event's sender in its conversation.
    pub fn session(&self) -> &SessionHandle {
        &self.turn.session
    }

    /// The bot's store, when it has one.
    pub fn store(&self) -> Option<&Arc<dyn Store>> {
        self.turn.services.store()
    }

    /// The application state.
    pub fn state(&self) -> &S {
        &self.state
    }
}

/// Command arguments parsed from text: see [`HandlerCx::parse`].
pub trait FromArgs: Sized {
    /// Parse `text` (the text after the command's name), or say what is wrong.
    fn from_args(text: &str) -> std::result::Result<Self, String>;
}

impl FromArgs for String {
    fn from_args(text: &str) -> std::result::Result<Self, String> {
        Ok(text.trim().to_owned())
    }
}

impl FromArgs for () {
    fn from_args(text: &str) -> std::result::Result<Self, String> {
        if text.trim().is_empty() {
            Ok(())
        } else {
            Err("this command takes no arguments".into())
        }
    }
}

/// One argument: `word` is what the user wrote in its place (`None` when missing).
fn parse_arg<T: std::str::FromStr>(
    word: Option<&str>,
    position: usize,
) -> std::result::Result<T, String>
where
    T::Err: std::fmt::Display,
{
    let word = word.ok_or_else(|| format!("argument {position} is missing"))?;
    word.parse()
        .map_err(|e| format!("argument {position} ('{word}'): {e}"))
}

macro_rules! tuple_args {
    ($($t:ident),+ ; $last:ident) => {
        impl<$($t,)+ $last> FromArgs for ($($t,)+ $last,)
        where
            $($t: std::str::FromStr, $t::Err: std::fmt::Display,)+
            $last: std::str::FromStr,
            $last::Err: std::fmt::Display,
        {
            #[allow(non_snake_case)]
            fn from_args(text: &str) -> std::result::Result<Self, String> {
                let mut rest = text.trim();
                let mut position = 0;
                $(
                    position += 1;
                    let (word, after) = match rest.split_once(char::is_whitespace) {
                        Some((w, r)) => (Some(w), r.trim_start()),
                        None => ((!rest.is_empty()).then_some(rest), ""),
                    };
                    rest = after;
                    let $t: $t = parse_arg(word, position)?;
                )+
                position += 1;
                let $last: $last = parse_arg((!rest.is_empty()).then_some(rest), position)?;
                Ok(($($t,)+ $last,))
            }
        }
    };
}

impl<A> FromArgs for (A,)
where
    A: std::str::FromStr,
    A::Err: std::fmt::Display,
{
    fn from_args(text: &str) -> std::result::Result<Self, String> {
        let text = text.trim();
        Ok((parse_arg((!text.is_empty()).then_some(text), 1)?,))
    }
}
tuple_args!(A ; B);
tuple_args!(A, B ; C);
tuple_args!(A, B, C ; D);
tuple_args!(A, B, C, D ; E);

type BoxedHandler<S> = Arc<dyn Fn(HandlerCx<S>) -> BoxFuture<'static, HandlerResult> + Send + Sync>;

/// The arguments a usage line names: `<name>` a required word, `[name]` an optional one; the
/// last takes the rest of the text (as [`HandlerCx::parse`] reads it). A name given twice,
/// and a required argument after an optional one, are left out (platforms refuse them).
fn usage_params(usage: &str) -> Vec<crate::CommandParam> {
    let mut params: Vec<crate::CommandParam> = usage
        .split_whitespace()
        .filter_map(|word| {
            let (inner, optional) = if let Some(w) = word.strip_prefix('<') {
                (w.strip_suffix('>')?, false)
            } else {
                (word.strip_prefix('[')?.strip_suffix(']')?, true)
            };
            let name = inner.trim_end_matches("...").trim_end_matches('…');
            (!name.is_empty()).then(|| crate::CommandParam {
                name: name.to_owned(),
                kind: "word",
                optional,
                rest: false,
            })
        })
        .collect();
    let mut seen = std::collections::HashSet::new();
    let mut optional_seen = false;
    params.retain(|p| {
        let keep = seen.insert(p.name.clone()) && (p.optional || !optional_seen);
        optional_seen |= keep && p.optional;
        keep
    });
    if let Some(last) = params.last_mut() {
        last.rest = true;
    }
    params
}

/// A handler picked for an event: the handler, its `args` and the command's usage.
type Picked<'a, S> = (&'a BoxedHandler<S>, String, Option<Arc<str>>);

struct Registered<S> {
    handler: BoxedHandler<S>,
    usage: Option<Arc<str>>,
}

/// A [`Router`] made of Rust functions, by event kind: one per slash command, per button
/// value, for joins, for reactions, for custom events by name, and a fallback for the
/// messages no command matched. `S` is the application's shared state, handed to every
/// handler as `Arc<S>`. A handler returns a [`HandlerResult`]: `?` works on any error.
///
/// ```
/// use flowbot_core::{Handlers, Reply};
///
/// struct App { greeting: String }
///
/// let router = Handlers::new(App { greeting: "hello".into() })
///     .command("hi", |cx| async move { Ok(Reply::text(cx.state.greeting.clone())) })
///     .command_usage("add", "/add <a> <b>", |cx| async move {
///         let (a, b): (i64, i64) = cx.parse()?;
///         Ok(Reply::text((a + b).to_string()))
///     })
///     .button("yes", |_cx| async move { Ok(Reply::text("noted")) })
///     .fallback(|_cx| async move { Ok(Reply::text("try /hi")) });
/// # let _ = router;
/// ```
pub struct Handlers<S> {
    state: Arc<S>,
    commands: HashMap<String, Registered<S>>,
    buttons: HashMap<String, BoxedHandler<S>>,
    any_button: Option<BoxedHandler<S>>,
    joins: Option<BoxedHandler<S>>,
    reactions: Option<BoxedHandler<S>>,
    edits: Option<BoxedHandler<S>>,
    custom: HashMap<String, BoxedHandler<S>>,
    fallback: Option<BoxedHandler<S>>,
    otherwise: Option<Arc<dyn Router>>,
}

impl<S> std::fmt::Debug for Handlers<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handlers")
            .field("commands", &self.command_names())
            .field("buttons", &self.buttons.keys().collect::<Vec<_>>())
            .field("any_button", &self.any_button.is_some())
            .field("joins", &self.joins.is_some())
            .field("reactions", &self.reactions.is_some())
            .field("edits", &self.edits.is_some())
            .field("custom", &self.custom.keys().collect::<Vec<_>>())
            .field("fallback", &self.fallback.is_some())
            .field("otherwise", &self.otherwise.is_some())
            .finish()
    }
}

impl<S> Handlers<S> {
    /// Names of the registered commands, sorted.
    pub fn command_names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.commands.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }
}

impl<S: Send + Sync + 'static> Handlers<S> {
    /// Handlers sharing `state`.
    pub fn new(state: S) -> Self {
        Handlers {
            state: Arc::new(state),
            commands: HashMap::new(),
            buttons: HashMap::new(),
            any_button: None,
            joins: None,
            edits: None,
            reactions: None,
            custom: HashMap::new(),
            fallback: None,
            otherwise: None,
        }
    }

    fn boxed<F, Fut>(f: F) -> BoxedHandler<S>
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        Arc::new(move |cx| Box::pin(f(cx)))
    }

    /// Handle `/name args…`. A later registration of the same name replaces the earlier one.
    pub fn command<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.commands.insert(
            name.to_owned(),
            Registered {
                handler: Self::boxed(f),
                usage: None,
            },
        );
        self
    }

    /// [`Handlers::command`] with a usage line (`/remind <delay> <text>`), which
    /// [`HandlerCx::parse`] shows when the arguments do not fit and
    /// [`Handlers::commands`] declares to platforms.
    pub fn command_usage<F, Fut>(mut self, name: &str, usage: &str, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self = self.command(name, f);
        if let Some(r) = self.commands.get_mut(name) {
            r.usage = Some(Arc::from(usage));
        }
        self
    }

    /// Handle a click on a button whose value is `value` (see
    /// [`Button`](crate::Button)); `cx.args` holds the value.
    pub fn button<F, Fut>(mut self, value: &str, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.buttons.insert(value.to_owned(), Self::boxed(f));
        self
    }

    /// Handle a click on any button no [`Handlers::button`] names; `cx.args` holds the value.
    pub fn any_button<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.any_button = Some(Self::boxed(f));
        self
    }

    /// Handle someone joining a conversation ([`Event::MemberJoined`]).
    pub fn on_join<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.joins = Some(Self::boxed(f));
        self
    }

    /// Handle a reaction ([`Event::Reaction`]); `cx.args` holds the emoji.
    pub fn on_reaction<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.reactions = Some(Self::boxed(f));
        self
    }

    /// Handle an edited message ([`Event::MessageEdited`]); `cx.args` and `cx.text()` hold the
    /// text as edited. Edits reach this handler only: without one, an edit goes to the
    /// router given to [`Handlers::or`], or is left unanswered, never to the fallback (a
    /// corrected typo does not run a command again).
    pub fn on_edit<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.edits = Some(Self::boxed(f));
        self
    }

    /// Handle the application's own events named `name` ([`Event::Custom`]).
    pub fn on_custom<F, Fut>(mut self, name: &str, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.custom.insert(name.to_owned(), Self::boxed(f));
        self
    }

    /// Handle every event no other handler takes: a message no command matched (`cx.args`
    /// holds its text), and a click, join, reaction or custom event with no handler of its
    /// kind (`cx.args` empty). Edits never reach it (see [`Handlers::on_edit`]).
    pub fn fallback<F, Fut>(mut self, f: F) -> Self
    where
        F: Fn(HandlerCx<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = HandlerResult> + Send + 'static,
    {
        self.fallback = Some(Self::boxed(f));
        self
    }

    /// Hand every event no handler takes to `router` (rules, an assistant, other handlers)
    /// instead of the [fallback](Handlers::fallback): Rust handlers for some commands, and
    /// rule files for the rest of the conversation, in one bot.
    pub fn or(mut self, router: impl Router) -> Self {
        self.otherwise = Some(Arc::new(router));
        self
    }

    /// [`Handlers::or`] with a shared router.
    pub fn or_arc(mut self, router: Arc<dyn Router>) -> Self {
        self.otherwise = Some(router);
        self
    }

    /// The registered commands, for platforms that declare them (Telegram's menu, Discord's
    /// slash commands), sorted by name.
    pub fn commands(&self) -> Vec<crate::CommandInfo> {
        let mut list: Vec<crate::CommandInfo> = self
            .commands
            .iter()
            .map(|(name, r)| crate::CommandInfo {
                name: name.clone(),
                description: None,
                usage: r
                    .usage
                    .as_deref()
                    .map_or_else(|| format!("/{name}"), str::to_owned),
                params: r.usage.as_deref().map(usage_params).unwrap_or_default(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The handler for `event` and the text it gets as `args`, with the command's usage;
    /// the fallback (with the message's text, or nothing) when no handler of its kind is
    /// registered.
    fn pick(&self, event: &Event) -> Option<Picked<'_, S>> {
        let own = match event {
            Event::Message(m) => m
                .command()
                .and_then(|(name, args)| Some((self.commands.get(name)?, args)))
                .map(|(r, args)| (&r.handler, args.to_owned(), r.usage.clone())),
            Event::Interaction(i) => self
                .buttons
                .get(&i.value)
                .or(self.any_button.as_ref())
                .map(|h| (h, i.value.clone(), None)),
            Event::MemberJoined { .. } => self.joins.as_ref().map(|h| (h, String::new(), None)),
            Event::Reaction { emoji, .. } => {
                self.reactions.as_ref().map(|h| (h, emoji.clone(), None))
            }
            Event::Custom { name, .. } => self.custom.get(name).map(|h| (h, String::new(), None)),
            Event::MessageEdited(m) => {
                // Only `on_edit` takes edits, never the fallback.
                return self.edits.as_ref().map(|h| (h, m.text.clone(), None));
            }
        };
        own.or_else(|| {
            if self.otherwise.is_some() {
                return None;
            }
            let text = event
                .as_message()
                .map(|m| m.text.clone())
                .unwrap_or_default();
            Some((self.fallback.as_ref()?, text, None))
        })
    }
}

#[async_trait]
impl<S: Send + Sync + 'static> Router for Handlers<S> {
    async fn route(&self, turn: &Turn) -> Result<Reply> {
        let Some((handler, args, usage)) = self.pick(&turn.event) else {
            return match &self.otherwise {
                Some(router) => router.route(turn).await,
                None => Ok(Reply::none()),
            };
        };
        handler(HandlerCx {
            state: self.state.clone(),
            turn: turn.clone(),
            args,
            usage,
        })
        .await
        .map_err(Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tuple_arguments_take_a_word_each_and_the_rest_last() {
        let (n, text): (u32, String) = FromArgs::from_args(" 5  buy milk ").expect("fits");
        assert_eq!((n, text.as_str()), (5, "buy milk"));
        let (a, b, c): (i64, i64, String) = FromArgs::from_args("1 2 three four").expect("fits");
        assert_eq!((a, b, c.as_str()), (1, 2, "three four"));
        let (one,): (f64,) = FromArgs::from_args("2.5").expect("fits");
        assert!((one - 2.5).abs() < f64::EPSILON);
    }

    #[test]
    fn usage_lines_declare_their_arguments() {
        let params = usage_params("/remind <delay> [note...]");
        let described: Vec<_> = params
            .iter()
            .map(|p| (p.name.as_str(), p.optional, p.rest))
            .collect();
        assert_eq!(described, [("delay", false, false), ("note", true, true)]);
        assert!(usage_params("/help").is_empty());
        let names =
            |u: &str| -> Vec<String> { usage_params(u).into_iter().map(|p| p.name).collect() };
        assert_eq!(names("/cmd [a] <b> [c]"), ["a", "c"]);
        assert_eq!(names("/cmd <a> <a> <b>"), ["a", "b"]);
    }

    #[test]
    fn edits_reach_on_edit_only_never_the_fallback() {
        let edit = Event::MessageEdited(crate::Message::text(
            "local",
            "r",
            crate::Sender::user("ada"),
            "/start again",
        ));
        let fallback_only = Handlers::new(())
            .command("start", |_cx| async { Ok(Reply::text("started")) })
            .fallback(|_cx| async { Ok(Reply::text("what?")) });
        assert!(fallback_only.pick(&edit).is_none());
        let with_edits =
            fallback_only.on_edit(|cx| async move { Ok(Reply::text(format!("now: {}", cx.args))) });
        let (_, args, usage) = with_edits.pick(&edit).expect("on_edit takes it");
        assert_eq!((args.as_str(), usage), ("/start again", None));
    }

    #[test]
    fn arguments_that_do_not_fit_name_the_argument() {
        let e = <(u32, String)>::from_args("five things").expect_err("not a number");
        assert!(e.starts_with("argument 1 ('five')"), "{e}");
        let e = <(u32, String)>::from_args("5").expect_err("second missing");
        assert_eq!(e, "argument 2 is missing");
        let e = <(u32,)>::from_args("").expect_err("missing");
        assert_eq!(e, "argument 1 is missing");
        assert!(<()>::from_args("x").is_err());
        assert_eq!(String::from_args("  a b ").expect("any"), "a b");
    }
}
