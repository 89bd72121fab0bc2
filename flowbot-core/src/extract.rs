//! Extractors: handler functions that name what they need as typed parameters, as in axum.
//!
//! ```
//! use flowbot_core::extract::{Args, Session, State, handler};
//! use flowbot_core::{HandlerResult, Handlers, Reply};
//!
//! struct App {
//!     unit: &'static str,
//! }
//!
//! /// `/add <a> <b>`: the arguments parsed, the application state, the sender's session.
//! async fn add(
//!     Args((a, b)): Args<(i64, i64)>,
//!     State(app): State<App>,
//!     Session(session): Session,
//! ) -> HandlerResult {
//!     let sum = a + b;
//!     session.set_var("last_sum", sum.into());
//!     Ok(Reply::text(format!("{sum} {}", app.unit)))
//! }
//!
//! let router = Handlers::new(App { unit: "apples" })
//!     .command_usage("add", "/add <a> <b>", handler(add))
//!     // A closure's parameters need their types.
//!     .command("hi", handler(|Args(name): Args<String>| async move {
//!         Ok(Reply::text(format!("hello, {name}")))
//!     }));
//! # let _ = router;
//! ```
//!
//! A parameter that cannot be extracted ends the handler with the extractor's error before
//! the function runs: arguments that do not fit are a [`Refusal`](crate::Refusal) naming the
//! argument and the command's usage (shown to the user); a missing store or a handler asking
//! for the text of an event without one is a [`Permanent`] error. Functions
//! of up to six extractors are handlers; `HandlerCx` itself stays available through the
//! closures that [`Handlers`](crate::Handlers) takes directly.

use std::future::Future;
use std::sync::Arc;

use futures_util::future::BoxFuture;

use crate::router::{FromArgs, HandlerCx, Services};
use crate::{Event, HandlerError, HandlerResult, Permanent, SessionHandle};

/// A value a handler function takes from the handler's context.
pub trait FromCx<S>: Sized {
    /// Take it from `cx`, or say why not.
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError>;
}

/// The command's arguments as `A` ([`HandlerCx::parse`]): a `String` takes them whole, a
/// tuple of `FromStr` values one word each. Input that does not fit is a refusal naming the
/// argument and the usage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args<A>(pub A);

impl<S, A: FromArgs> FromCx<S> for Args<A> {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        Ok(Args(cx.parse()?))
    }
}

/// The text the handler was matched with, as it came: a command's arguments, a button's
/// value, a reaction's emoji, the whole message for the fallback (`cx.args`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawArgs(pub String);

impl<S> FromCx<S> for RawArgs {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        Ok(RawArgs(cx.args.clone()))
    }
}

/// The message's whole text. An event without text (a join, a reaction) is a permanent
/// error: register such a handler where messages arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<S> FromCx<S> for Text {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        cx.text()
            .map(|t| Text(t.to_owned()))
            .ok_or_else(|| Permanent::new("this event has no text for a `Text` parameter").into())
    }
}

/// The application state the [`Handlers`](crate::Handlers) were made with.
#[derive(Debug)]
pub struct State<S>(pub Arc<S>);

impl<S> FromCx<S> for State<S> {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        Ok(State(cx.state.clone()))
    }
}

/// The session of the event's sender in its conversation (saved after the handler returns
/// if it changed).
#[derive(Debug, Clone)]
pub struct Session(pub SessionHandle);

impl<S> FromCx<S> for Session {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        Ok(Session(cx.session().clone()))
    }
}

/// The bot's store. A bot built without one is a permanent error.
#[derive(Clone)]
pub struct Db(pub Arc<dyn crate::Store>);

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Db").finish_non_exhaustive()
    }
}

impl<S> FromCx<S> for Db {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        cx.store()
            .map(|s| Db(s.clone()))
            .ok_or_else(|| Permanent::new("the bot has no store for a `Db` parameter").into())
    }
}

impl<S> FromCx<S> for Arc<Event> {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        Ok(cx.turn.event.clone())
    }
}

impl<S> FromCx<S> for Services {
    fn from_cx(cx: &HandlerCx<S>) -> Result<Self, HandlerError> {
        Ok(cx.turn.services.clone())
    }
}

/// A function of extractors `T` that handles an event; see [`handler`].
pub trait Handler<S, T>: Send + Sync + 'static {
    /// Extract the parameters from `cx` and call the function.
    fn call(&self, cx: HandlerCx<S>) -> BoxFuture<'static, HandlerResult>;
}

macro_rules! handler_of {
    ($($t:ident),*) => {
        impl<S, F, Fut, $($t,)*> Handler<S, ($($t,)*)> for F
        where
            F: Fn($($t),*) -> Fut + Send + Sync + 'static,
            Fut: Future<Output = HandlerResult> + Send + 'static,
            $($t: FromCx<S>,)*
        {
            #[allow(non_snake_case, unused_variables)]
            fn call(&self, cx: HandlerCx<S>) -> BoxFuture<'static, HandlerResult> {
                $(
                    let $t = match $t::from_cx(&cx) {
                        Ok(value) => value,
                        Err(e) => return Box::pin(std::future::ready(Err(e))),
                    };
                )*
                Box::pin(self($($t),*))
            }
        }
    };
}

handler_of!();
handler_of!(T1);
handler_of!(T1, T2);
handler_of!(T1, T2, T3);
handler_of!(T1, T2, T3, T4);
handler_of!(T1, T2, T3, T4, T5);
handler_of!(T1, T2, T3, T4, T5, T6);

/// `f`, a function of extractors, as a handler for [`Handlers`](crate::Handlers)' methods
/// (`command`, `button`, `on_join`, `fallback`, …).
pub fn handler<S, T, H>(
    f: H,
) -> impl Fn(HandlerCx<S>) -> BoxFuture<'static, HandlerResult> + Send + Sync + 'static
where
    H: Handler<S, T>,
{
    move |cx| f.call(cx)
}
