//! # flowbot-rules
//!
//! The rules engine: rule files (TOML) that decide, for every inbound event, what the bot
//! does. A rule has a name, a priority, conditions (`when`) and actions (`then`), and either
//! stops matching or lets later rules run too (`continue = true`).
//!
//! - Conditions: slash commands with typed arguments, exact text, substrings, keywords,
//!   regular expressions (one pass over the text for all of them), channel, conversation,
//!   user and role filters, event kinds, time windows in a time zone, intents from a
//!   [`Classifier`](flowbot_core::Classifier), rhai expressions, and conditions registered by
//!   the application; combined with `all`, `any` and `not`.
//! - Actions: replies rendered with minijinja, calls to any registered action with templated
//!   input, session variables set and cleared, and rhai scripts.
//! - rhai runs sandboxed (see [`ScriptLimits`]): a script error or a limit hit is reported
//!   through the pipeline's `on_error` hook and never disturbs other messages.
//!
//! The format is taught in `docs/rules.md`.
//!
//! ```
//! use flowbot_rules::{Plugins, RuleSet, RulesRouter, Source};
//!
//! let rules = r#"
//! [[rule]]
//! name = "greet"
//! when = { keywords = ["hello", "hi"] }
//! then = [{ reply = "Hello, {{ message.user_name or message.user }}!" }]
//! "#;
//! let set = RuleSet::compile(&[Source::inline(rules)], &Plugins::default()).unwrap();
//! let router = RulesRouter::new(set);
//! # let _ = router;
//! ```
#![cfg_attr(docsrs, feature(doc_cfg))]

mod command;
mod compile;
mod dialog;
#[cfg(feature = "scripts")]
mod fast;
mod library;
mod route;
#[cfg_attr(not(feature = "scripts"), path = "script_off.rs")]
mod script;
pub mod spec;
mod watch;
#[cfg(all(feature = "scripts", feature = "workflows"))]
mod workflow;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use serde_json::Value;

pub use command::{CommandInfo, CommandParam};
pub use compile::{Origin, RuleSet, Source, parse_file, read_dir};
pub use library::{
    RULES_NAMESPACE, RULES_TOPIC, Reloads, RuleEntry, RuleFiles, RuleLibrary, rule_from_json,
};
pub use route::{Facts, RulesRouter};
#[cfg(feature = "scripts")]
#[cfg_attr(docsrs, doc(cfg(feature = "scripts")))]
pub use script::{ScriptLimits, Scripting};
pub use watch::{Reload, watch_dir};
#[cfg(all(feature = "scripts", feature = "workflows"))]
#[cfg_attr(docsrs, doc(cfg(all(feature = "scripts", feature = "workflows"))))]
pub use workflow::WorkflowScripts;

/// Re-exported so applications register rhai functions with the same version.
#[cfg(feature = "scripts")]
#[cfg_attr(docsrs, doc(cfg(feature = "scripts")))]
pub use rhai;

/// Errors from loading and compiling rules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A rule file is not valid TOML or does not follow the format.
    #[error("{origin}: {message}")]
    Parse {
        /// Where.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A rule is well-formed but cannot be compiled.
    #[error("{origin}: rule '{rule}': {message}")]
    Rule {
        /// The rule's name.
        rule: String,
        /// Where it is defined.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A dialog cannot be compiled.
    #[error("{origin}: dialog '{dialog}': {message}")]
    Dialog {
        /// The dialog's name.
        dialog: String,
        /// Where it is defined.
        origin: Origin,
        /// What is wrong.
        message: String,
    },
    /// A rule file or directory could not be read.
    #[error("{}: {message}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        message: String,
    },
    /// Something else is inconsistent.
    #[error("{0}")]
    Invalid(String),
    /// No such rule.
    #[error("{0}")]
    NotFound(String),
    /// The change conflicts with what exists.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database: {0}")]
    Store(#[source] flowbot_core::StoreError),
    /// The intent classifier could not learn the rules' examples (the rules stay as they
    /// were).
    #[error("intent examples: {0}")]
    Classifier(#[source] flowbot_core::Error),
}

/// A condition kind registered by the application, after compiling: it checks one event.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot rule condition",
    note = "implement `CustomCondition::matches`, and register a compiler with `Plugins::condition`"
)]
pub trait CustomCondition: Send + Sync + 'static {
    /// Whether the condition holds for these facts.
    fn matches(&self, facts: &Facts<'_>) -> bool;
}

type ConditionCompiler =
    Arc<dyn Fn(&Value) -> Result<Arc<dyn CustomCondition>, String> + Send + Sync>;

/// What rules may use besides the built-ins: the bot's actions, custom condition kinds, and
/// the rhai engine (with any functions the application registered).
#[derive(Clone)]
pub struct Plugins {
    pub(crate) actions: HashSet<String>,
    pub(crate) conditions: HashMap<String, ConditionCompiler>,
    pub(crate) scripting: Arc<script::Scripting>,
}

impl std::fmt::Debug for Plugins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plugins")
            .field("actions", &self.actions)
            .field("conditions", &self.conditions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Default for Plugins {
    /// The built-in actions of `flowbot-core` and the default sandbox.
    fn default() -> Self {
        Plugins {
            actions: compile::action_names(&flowbot_core::ActionRegistry::with_builtins()),
            conditions: HashMap::new(),
            scripting: Arc::new(script::Scripting::default()),
        }
    }
}

impl Plugins {
    /// Rules may call every action of `registry` (which should be the bot's).
    pub fn actions(mut self, registry: &flowbot_core::ActionRegistry) -> Self {
        self.actions = compile::action_names(registry);
        self
    }

    /// Also allow calls to an action by name (one the bot registers itself).
    pub fn action_name(mut self, name: impl Into<String>) -> Self {
        self.actions.insert(name.into());
        self
    }

    /// Register a condition kind: rules write `custom = { kind = "<kind>", ... }`, and
    /// `compile` turns the arguments into a condition once, when rules are loaded.
    pub fn condition<F, C>(mut self, kind: impl Into<String>, compile: F) -> Self
    where
        F: Fn(&Value) -> Result<C, String> + Send + Sync + 'static,
        C: CustomCondition,
    {
        self.conditions.insert(
            kind.into(),
            Arc::new(move |args| compile(args).map(|c| Arc::new(c) as Arc<dyn CustomCondition>)),
        );
        self
    }

    /// Use this script engine (e.g. with application functions registered through
    /// [`Scripting::engine_mut`], or other [`ScriptLimits`]).
    #[cfg(feature = "scripts")]
    #[cfg_attr(docsrs, doc(cfg(feature = "scripts")))]
    pub fn scripting(mut self, scripting: Scripting) -> Self {
        self.scripting = Arc::new(scripting);
        self
    }
}
