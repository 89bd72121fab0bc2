//! [`Routing`]: which router a [`Server`](super::Server) or [`Agent`](super::Agent) runs, and
//! which commands it declares to platforms that list them.

use super::*;

/// The router of a server or agent: the rules (the default), another router, or Rust
/// handlers in front of the rules.
#[derive(Default)]
pub(super) struct Routing {
    router: Option<Arc<dyn Router>>,
    commands: Declare,
    then_rules: Option<ThenRules>,
}

/// Handlers to put in front of the rules: the router both make, and the handlers' commands.
type ThenRules =
    Box<dyn FnOnce(Arc<dyn Router>) -> (Arc<dyn Router>, Vec<CommandInfo>) + Send + Sync>;

/// Which commands are declared to platforms that list them.
#[derive(Default)]
enum Declare {
    /// The rules' (the default).
    #[default]
    Rules,
    /// These (Rust handlers' commands).
    These(Vec<CommandInfo>),
    /// None: the platforms' lists are left as they are (a router whose commands are unknown).
    Leave,
}

impl std::fmt::Debug for Routing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routing")
            .field("own_router", &self.router.is_some())
            .field("handlers_then_rules", &self.then_rules.is_some())
            .finish_non_exhaustive()
    }
}

impl Routing {
    /// `router` instead of the rules; its commands are unknown.
    pub(super) fn router(&mut self, router: impl Router) {
        *self = Routing {
            router: Some(Arc::new(router)),
            commands: Declare::Leave,
            then_rules: None,
        };
    }

    /// Rust `handlers` instead of the rules, declaring their commands.
    pub(super) fn handlers<S: Send + Sync + 'static>(&mut self, handlers: Handlers<S>) {
        *self = Routing {
            commands: Declare::These(handlers.commands()),
            router: Some(Arc::new(handlers)),
            then_rules: None,
        };
    }

    /// Rust `handlers` first, the rules for the rest; both sets of commands are declared, the
    /// handlers' winning a name both use.
    pub(super) fn handlers_then_rules<S: Send + Sync + 'static>(&mut self, handlers: Handlers<S>) {
        *self = Routing {
            router: None,
            commands: Declare::Rules,
            then_rules: Some(Box::new(move |rules: Arc<dyn Router>| {
                let commands = handlers.commands();
                let router: Arc<dyn Router> = Arc::new(handlers.or_arc(rules));
                (router, commands)
            })),
        };
    }

    /// Put the router on `builder` (which routes with the rules until told otherwise);
    /// returns the commands to declare (as the rules are at start), or `None` to leave the
    /// platforms' lists alone.
    pub(super) fn apply(
        self,
        mut builder: BotBuilder,
        rules: &RuleLibrary,
    ) -> (BotBuilder, Option<Vec<CommandInfo>>) {
        let Routing {
            router,
            mut commands,
            then_rules,
        } = self;
        if let Some(router) = router {
            builder = builder.router_arc(router);
        }
        if let Some(then_rules) = then_rules {
            let (router, theirs) = then_rules(rules.router());
            builder = builder.router_arc(router);
            let mut all = rules.router().current().commands();
            all.retain(|c| theirs.iter().all(|t| t.name != c.name));
            all.extend(theirs);
            all.sort_by(|a, b| a.name.cmp(&b.name));
            commands = Declare::These(all);
        }
        let declared = match commands {
            Declare::Rules => Some(rules.router().current().commands()),
            Declare::These(list) => Some(list),
            Declare::Leave => None,
        };
        (builder, declared)
    }
}
