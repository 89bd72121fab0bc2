//! rhai, embedded with a sandbox: one shared engine, scripts compiled once, limits on
//! operations, call depth, expression depth, string, array and map sizes and wall time. The
//! engine has no modules, no file, process or network access: scripts reach the world only
//! through the functions registered here, which go through the bot's action registry.

use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::{AST, Dynamic, Engine, EvalAltResult, ImmutableString, Map as RhaiMap, Position};
use serde_json::Value;

pub(crate) use crate::compile::SCRIPT_VARIABLES;

/// A compiled script.
pub(crate) type Ast = AST;

/// Sandbox limits for rhai scripts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScriptLimits {
    /// Most operations one run may perform.
    pub max_operations: u64,
    /// Deepest function call nesting.
    pub max_call_levels: usize,
    /// Deepest expression nesting (global, inside functions).
    pub max_expr_depth: (usize, usize),
    /// Longest string, in bytes.
    pub max_string_size: usize,
    /// Largest array.
    pub max_array_size: usize,
    /// Largest object map.
    pub max_map_size: usize,
    /// Longest a run may take.
    pub wall_time: Duration,
}

impl Default for ScriptLimits {
    fn default() -> Self {
        ScriptLimits {
            max_operations: 200_000,
            max_call_levels: 32,
            max_expr_depth: (64, 32),
            max_string_size: 1 << 20,
            max_array_size: 10_000,
            max_map_size: 10_000,
            wall_time: Duration::from_millis(250),
        }
    }
}

/// Calls an action by name from a script thread.
pub(crate) type ActionCaller = Box<dyn FnMut(&str, Value) -> Result<Value, String>>;

/// What a running action script can do: it gathers replies and session changes, and reaches
/// actions through `call`.
pub(crate) struct ScriptHost {
    pub(crate) replies: Vec<String>,
    pub(crate) session: serde_json::Map<String, Value>,
    pub(crate) call: ActionCaller,
}

thread_local! {
    /// rhai's function-resolution caches, kept from one condition to the next on this thread
    /// (rhai starts empty caches on every evaluation otherwise), with the id of the engine
    /// they belong to.
    static CACHES: RefCell<(u64, rhai::Caches)> = const { RefCell::new((0, rhai::Caches::new())) };
    static DEADLINE: RefCell<Option<Instant>> = const { RefCell::new(None) };
    static HOST: RefCell<Option<ScriptHost>> = const { RefCell::new(None) };
}

fn with_host<T>(
    what: &str,
    f: impl FnOnce(&mut ScriptHost) -> Result<T, String>,
) -> Result<T, Box<EvalAltResult>> {
    HOST.with(|h| match h.borrow_mut().as_mut() {
        Some(host) => f(host).map_err(|e| e.into()),
        None => {
            Err(format!("{what}() is only available in action scripts, not in conditions").into())
        }
    })
}

fn to_dynamic(v: Value) -> Result<Dynamic, Box<EvalAltResult>> {
    rhai::serde::to_dynamic(v)
}

fn to_json(d: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
    rhai::serde::from_dynamic(d)
}

/// The shared rhai engine and its limits.
pub struct Scripting {
    engine: Engine,
    limits: ScriptLimits,
    /// Tells this engine's function-resolution caches from another's (see `CACHES`).
    id: u64,
    /// The application reached the engine through [`Scripting::engine_mut`], so it may have
    /// registered functions that change what an expression means: conditions then always
    /// run in rhai (see [`crate::fast`]).
    extended: bool,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl std::fmt::Debug for Scripting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scripting")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Default for Scripting {
    fn default() -> Self {
        Scripting::new(ScriptLimits::default())
    }
}

impl Scripting {
    /// An engine with `limits` and FlowBot's script API registered.
    pub fn new(limits: ScriptLimits) -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(limits.max_operations)
            .set_max_call_levels(limits.max_call_levels)
            .set_max_expr_depths(limits.max_expr_depth.0, limits.max_expr_depth.1)
            .set_max_string_size(limits.max_string_size)
            .set_max_array_size(limits.max_array_size)
            .set_max_map_size(limits.max_map_size)
            .set_strict_variables(true)
            .set_fail_on_invalid_map_property(false);
        engine.on_print(|s| tracing::info!(target: "flowbot_rules::script", "{s}"));
        engine.on_debug(|s, src, pos| {
            tracing::debug!(target: "flowbot_rules::script", source = src.unwrap_or(""), %pos, "{s}");
        });
        // Wall time: checked every 256 operations against the deadline of the current run.
        engine.on_progress(|ops| {
            if ops % 256 != 0 {
                return None;
            }
            DEADLINE.with(|d| match *d.borrow() {
                Some(deadline) if Instant::now() > deadline => {
                    Some(Dynamic::from("wall time limit exceeded"))
                }
                _ => None,
            })
        });
        engine.register_fn("reply", |text: ImmutableString| {
            with_host("reply", |h| {
                h.replies.push(text.to_string());
                Ok(())
            })
        });
        engine.register_fn("session_get", |name: ImmutableString| {
            let v = with_host("session_get", |h| {
                Ok(h.session.get(name.as_str()).cloned().unwrap_or(Value::Null))
            })?;
            to_dynamic(v)
        });
        engine.register_fn("session_set", |name: ImmutableString, value: Dynamic| {
            let v = to_json(&value)?;
            with_host("session_set", |h| {
                h.session.insert(name.to_string(), v);
                Ok(())
            })
        });
        engine.register_fn("call", |action: ImmutableString, input: RhaiMap| {
            let input = to_json(&Dynamic::from_map(input))?;
            let out = with_host("call", |h| (h.call)(action.as_str(), input))?;
            to_dynamic(out)
        });
        engine.register_fn("kv_get", |key: ImmutableString| {
            let out = with_host("kv_get", |h| {
                (h.call)("kv.get", serde_json::json!({ "key": key.as_str() }))
            })?;
            to_dynamic(out.get("value").cloned().unwrap_or(Value::Null))
        });
        engine.register_fn("kv_set", |key: ImmutableString, value: Dynamic| {
            let value = to_json(&value)?;
            with_host("kv_set", |h| {
                (h.call)(
                    "kv.set",
                    serde_json::json!({ "key": key.as_str(), "value": value }),
                )
                .map(|_| ())
            })
        });
        engine.register_fn(
            "send",
            |channel: ImmutableString, conversation: ImmutableString, text: ImmutableString| {
                with_host("send", |h| {
                    (h.call)(
                        "send_message",
                        serde_json::json!({
                            "channel": channel.as_str(),
                            "conversation": conversation.as_str(),
                            "text": text.as_str(),
                        }),
                    )
                    .map(|_| ())
                })
            },
        );
        Scripting {
            engine,
            limits,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            extended: false,
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> ScriptLimits {
        self.limits
    }

    /// The engine, to register more functions before rules are compiled.
    pub fn engine_mut(&mut self) -> &mut Engine {
        self.extended = true;
        &mut self.engine
    }

    /// Whether the application has had the engine to itself ([`Scripting::engine_mut`]).
    pub(crate) fn is_extended(&self) -> bool {
        self.extended
    }

    /// Compile a script (or an expression, when `expression`) for a rule.
    pub(crate) fn compile(&self, source: &str, expression: bool) -> Result<Arc<AST>, String> {
        self.compile_with(source, expression, &SCRIPT_VARIABLES)
    }

    /// Compile with `variables` as the only free names (strict variables: any other name is
    /// an error now, not when the script runs).
    pub(crate) fn compile_with(
        &self,
        source: &str,
        expression: bool,
        variables: &[&str],
    ) -> Result<Arc<AST>, String> {
        let mut scope = rhai::Scope::new();
        for name in variables {
            // Not constants: the optimiser would fold a constant into the script.
            scope.push_dynamic(*name, Dynamic::UNIT);
        }
        let ast = if expression {
            self.engine.compile_expression_with_scope(&scope, source)
        } else {
            self.engine.compile_with_scope(&scope, source)
        };
        ast.map(Arc::new)
            .map_err(|e| describe_parse(&e.to_string(), e.1))
    }

    /// Run `ast` with `scope` under the wall-time limit; the value it returns.
    pub(crate) fn eval(
        &self,
        scope: &mut rhai::Scope<'static>,
        ast: &AST,
    ) -> Result<Dynamic, String> {
        self.within_wall_time(|| self.engine.eval_ast_with_scope::<Dynamic>(scope, ast))
    }

    /// Run `f` with this engine's wall-time limit armed for `on_progress`.
    fn within_wall_time(
        &self,
        f: impl FnOnce() -> Result<Dynamic, Box<EvalAltResult>>,
    ) -> Result<Dynamic, String> {
        // A wall time too long to add to the clock is no limit at all, not a panic.
        let deadline = Instant::now().checked_add(self.limits.wall_time);
        let previous = DEADLINE.with(|d| d.replace(deadline));
        let out = f();
        DEADLINE.with(|d| *d.borrow_mut() = previous);
        out.map_err(|e| describe_runtime(&e))
    }

    /// Evaluate a condition: an expression, so it defines no functions of its own, and the
    /// functions it calls resolve the same way every time. rhai's function-resolution caches
    /// are kept per thread for that (a fresh evaluation would rebuild them on every call).
    pub(crate) fn eval_condition(
        &self,
        scope: &mut rhai::Scope<'static>,
        ast: &AST,
    ) -> Result<Dynamic, String> {
        self.within_wall_time(|| {
            CACHES.with(|cell| match cell.try_borrow_mut() {
                Ok(mut c) => {
                    if c.0 != self.id {
                        *c = (self.id, rhai::Caches::new());
                    }
                    let mut global = self.engine.new_global_runtime_state();
                    #[allow(deprecated)] // the one way to pass caches in; rhai keeps it in 1.x
                    self.engine
                        .eval_statements_raw(&mut global, &mut c.1, scope, ast.statements())
                }
                // A condition evaluated from inside another (a registered function that routes):
                // fresh caches.
                Err(_) => self.engine.eval_ast_with_scope::<Dynamic>(scope, ast),
            })
        })
    }

    /// Run an action script with `host` available to its API functions; returns the host
    /// (with the replies and session changes) and the script's error, if any.
    pub(crate) fn run_action(
        &self,
        scope: &mut rhai::Scope<'static>,
        ast: &AST,
        host: ScriptHost,
    ) -> (ScriptHost, Result<(), String>) {
        HOST.with(|h| *h.borrow_mut() = Some(host));
        let out = self.eval(scope, ast).map(|_| ());
        let host = HOST
            .with(|h| h.borrow_mut().take())
            .expect("the host was set above on this thread and only taken here");
        (host, out)
    }
}

fn describe_parse(message: &str, pos: Position) -> String {
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) if !message.contains("line ") => {
            format!("{message} (script line {l}, column {c})")
        }
        _ => message.to_owned(),
    }
}

fn describe_runtime(e: &EvalAltResult) -> String {
    let msg = match e {
        EvalAltResult::ErrorTerminated(_, _) => "script stopped: wall time limit exceeded".into(),
        EvalAltResult::ErrorTooManyOperations(_) => {
            "script stopped: operations limit exceeded".into()
        }
        EvalAltResult::ErrorDataTooLarge(what, _) => {
            format!("script stopped: {what} exceeds the size limit")
        }
        EvalAltResult::ErrorStackOverflow(_) => "script stopped: call depth limit exceeded".into(),
        other => other.to_string(),
    };
    let pos = e.position();
    match (pos.line(), pos.position()) {
        (Some(l), Some(c)) if !msg.contains("line ") => {
            format!("{msg} (script line {l}, column {c})")
        }
        _ => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A wall time too long to add to the clock runs the script without a deadline.
    #[test]
    fn an_endless_wall_time_is_no_limit_not_a_panic() {
        for wall_time in [
            Duration::MAX,
            Duration::from_secs(u64::MAX / 2),
            Duration::ZERO,
        ] {
            let scripting = Scripting::new(ScriptLimits {
                wall_time,
                ..ScriptLimits::default()
            });
            let ast = scripting.compile("40 + 2", true).expect("compiles");
            let mut scope = rhai::Scope::new();
            for name in SCRIPT_VARIABLES {
                scope.push_dynamic(name, Dynamic::UNIT);
            }
            let out = scripting.eval(&mut scope, &ast);
            if !wall_time.is_zero() {
                assert_eq!(out.expect("runs").as_int().expect("an int"), 42);
            }
        }
    }
}
