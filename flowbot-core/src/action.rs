//! The action registry: named operations with JSON Schemas for input and output, invoked by
//! rules, workflows and LLM tool calls alike.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Value, json};

use crate::channel::Senders;
use crate::error::{BoxError, Error, Refusal, Result};
use crate::message::{ChannelName, ConversationId, Format, Outbound, Target};
use crate::store::Store;

/// What an action can reach while it runs.
#[derive(Clone)]
pub struct ActionContext {
    /// The store, when the bot has one.
    pub store: Option<Arc<dyn Store>>,
    /// Every channel's sender.
    pub senders: Arc<Senders>,
    /// The conversation that caused the call, if any (default target of `send_message`).
    pub source: Option<Target>,
}

impl std::fmt::Debug for ActionContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionContext")
            .field("store", &self.store.as_ref().map(|s| s.backend()))
            .field("senders", &self.senders)
            .field("source", &self.source)
            .finish()
    }
}

/// A named operation with typed (JSON Schema) input and output.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot action",
    note = "implement `Action`: a name, JSON Schemas for input and output, and `call`"
)]
pub trait Action: Send + Sync + 'static {
    /// Unique name (e.g. `send_message`, `kv.get`).
    fn name(&self) -> &str;
    /// One line saying what it does (shown to LLMs as the tool description).
    fn description(&self) -> &str;
    /// JSON Schema of the input.
    fn input_schema(&self) -> Value;
    /// JSON Schema of the output.
    fn output_schema(&self) -> Value;
    /// Run with input already validated against the input schema.
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError>;
}

struct Entry {
    action: Arc<dyn Action>,
    input: jsonschema::Validator,
    output: jsonschema::Validator,
}

/// Registered actions by name, with their compiled schemas.
#[derive(Default)]
pub struct ActionRegistry {
    actions: HashMap<String, Entry>,
}

impl std::fmt::Debug for ActionRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.actions.keys()).finish()
    }
}

/// Describes a registered action (for API listings and LLM tool definitions).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ActionInfo {
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// Input schema.
    pub input_schema: Value,
    /// Output schema.
    pub output_schema: Value,
}

fn first_error(validator: &jsonschema::Validator, value: &Value) -> Option<String> {
    validator.iter_errors(value).next().map(|e| {
        let path = e.instance_path().to_string();
        let at = if path.is_empty() {
            "input".to_owned()
        } else {
            format!("at '{path}'")
        };
        format!("{at}: {e}")
    })
}

impl ActionRegistry {
    /// A registry holding the built-in actions that need nothing external: `send_message`,
    /// `send_later`, `kv.get`, `kv.set`, `kv.delete` (also as `kv_get` and `kv_set`, the
    /// names workflows use) and `log`.
    pub fn with_builtins() -> Self {
        let mut r = ActionRegistry::default();
        for action in [
            Arc::new(SendMessage) as Arc<dyn Action>,
            Arc::new(SendLater) as Arc<dyn Action>,
            Arc::new(KvGet) as Arc<dyn Action>,
            Arc::new(KvSet) as Arc<dyn Action>,
            Arc::new(KvDelete) as Arc<dyn Action>,
            Arc::new(Alias("kv_get", Arc::new(KvGet))) as Arc<dyn Action>,
            Arc::new(Alias("kv_set", Arc::new(KvSet))) as Arc<dyn Action>,
            Arc::new(Log) as Arc<dyn Action>,
        ] {
            // Built-in schemas are fixed and tested; a failure here is a bug in this crate.
            if let Err(e) = r.register_arc(action) {
                tracing::error!(error = %e, "built-in action failed to register");
            }
        }
        r
    }

    /// Register an action; fails if the name is taken or a schema is not a valid JSON Schema.
    pub fn register(&mut self, action: impl Action) -> Result<()> {
        self.register_arc(Arc::new(action))
    }

    /// Register a shared action.
    pub fn register_arc(&mut self, action: Arc<dyn Action>) -> Result<()> {
        let name = action.name().to_owned();
        if name.is_empty() {
            return Err(Error::Build("action names must not be empty".into()));
        }
        if self.actions.contains_key(&name) {
            return Err(Error::Build(format!("action '{name}' is registered twice")));
        }
        let compile = |which: &str, schema: Value| {
            jsonschema::validator_for(&schema).map_err(|e| {
                Error::Build(format!(
                    "action '{name}': {which} schema is not a valid JSON Schema: {e}"
                ))
            })
        };
        let input = compile("input", action.input_schema())?;
        let output = compile("output", action.output_schema())?;
        self.actions.insert(
            name,
            Entry {
                action,
                input,
                output,
            },
        );
        Ok(())
    }

    /// Whether an action is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.actions.contains_key(name)
    }

    /// Every registered action, sorted by name.
    pub fn list(&self) -> Vec<ActionInfo> {
        let mut list: Vec<ActionInfo> = self
            .actions
            .values()
            .map(|e| ActionInfo {
                name: e.action.name().to_owned(),
                description: e.action.description().to_owned(),
                input_schema: e.action.input_schema(),
                output_schema: e.action.output_schema(),
            })
            .collect();
        list.sort_by(|a, b| a.name.cmp(&b.name));
        list
    }

    /// The tool specs a model is offered for these actions, in the order given. Fails on a
    /// name that is not registered.
    pub fn tool_specs<S: AsRef<str>>(&self, names: &[S]) -> Result<Vec<crate::llm::ToolSpec>> {
        names
            .iter()
            .map(|name| {
                let name = name.as_ref();
                let entry = self
                    .actions
                    .get(name)
                    .ok_or_else(|| Error::UnknownAction(name.to_owned()))?;
                Ok(crate::llm::ToolSpec {
                    name: name.to_owned(),
                    description: entry.action.description().to_owned(),
                    parameters: entry.action.input_schema(),
                })
            })
            .collect()
    }

    /// Check `input` against the action's input schema without running it.
    pub fn check_input(&self, name: &str, input: &Value) -> Result<()> {
        let entry = self
            .actions
            .get(name)
            .ok_or_else(|| Error::UnknownAction(name.to_owned()))?;
        match first_error(&entry.input, input) {
            Some(detail) => Err(Error::ActionInput {
                action: name.to_owned(),
                detail,
            }),
            None => Ok(()),
        }
    }

    /// Validate `input`, run the action, and validate its output.
    pub async fn call(&self, name: &str, cx: &ActionContext, input: Value) -> Result<Value> {
        self.check_input(name, &input)?;
        let entry = self
            .actions
            .get(name)
            .ok_or_else(|| Error::UnknownAction(name.to_owned()))?;
        let output = entry
            .action
            .call(cx, input)
            .await
            .map_err(|source| Error::Action {
                action: name.to_owned(),
                source,
            })?;
        if let Some(detail) = first_error(&entry.output, &output) {
            return Err(Error::Action {
                action: name.to_owned(),
                source: format!("output does not match its schema: {detail}").into(),
            });
        }
        Ok(output)
    }
}

/// Another name for an action (same schemas, same behaviour).
struct Alias(&'static str, Arc<dyn Action>);

#[async_trait]
impl Action for Alias {
    fn name(&self) -> &str {
        self.0
    }
    fn description(&self) -> &str {
        self.1.description()
    }
    fn input_schema(&self) -> Value {
        self.1.input_schema()
    }
    fn output_schema(&self) -> Value {
        self.1.output_schema()
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        self.1.call(cx, input).await
    }
}

/// Built-in `log`: write a line to the structured log (target `flowbot::log`).
struct Log;

#[async_trait]
impl Action for Log {
    fn name(&self) -> &str {
        "log"
    }
    fn description(&self) -> &str {
        "Write a message (and optional fields) to the log at a level"
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "message": {"type": "string"},
                "level": {"enum": ["error", "warn", "info", "debug", "trace"], "default": "info"},
                "fields": {"type": "object"}
            },
            "required": ["message"],
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"logged": {"type": "boolean"}}})
    }
    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let message = input["message"].as_str().unwrap_or_default();
        let fields = input
            .get("fields")
            .map(Value::to_string)
            .unwrap_or_default();
        match input["level"].as_str().unwrap_or("info") {
            "error" => tracing::error!(target: "flowbot::log", fields, "{message}"),
            "warn" => tracing::warn!(target: "flowbot::log", fields, "{message}"),
            "debug" => tracing::debug!(target: "flowbot::log", fields, "{message}"),
            "trace" => tracing::trace!(target: "flowbot::log", fields, "{message}"),
            _ => tracing::info!(target: "flowbot::log", fields, "{message}"),
        }
        Ok(json!({"logged": true}))
    }
}

/// Built-in `send_message`: send text to a conversation (the caller's, unless named).
struct SendMessage;

#[async_trait]
impl Action for SendMessage {
    fn name(&self) -> &str {
        "send_message"
    }
    fn description(&self) -> &str {
        "Send a text message, optionally with buttons, to a conversation (the current one unless channel and conversation are given)."
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "channel": {"type": "string", "minLength": 1},
                "conversation": {"type": "string", "minLength": 1},
                "thread": {"type": "string"},
                "markdown": {"type": "boolean"},
                "buttons": {
                    "type": "array",
                    "maxItems": 25,
                    "items": {
                        "type": "object",
                        "properties": {
                            "label": {"type": "string", "minLength": 1},
                            "value": {"type": "string", "minLength": 1}
                        },
                        "required": ["label", "value"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["text"],
            "dependentRequired": {"channel": ["conversation"], "conversation": ["channel"]},
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"message_id": {"type": "string"}},
            "required": ["message_id"]
        })
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let text = input["text"].as_str().unwrap_or_default().to_owned();
        let target = match (input["channel"].as_str(), input["conversation"].as_str()) {
            (Some(channel), Some(conversation)) => Target {
                channel: ChannelName::from(channel),
                conversation: ConversationId::from(conversation),
                thread: input["thread"].as_str().map(str::to_owned),
            },
            _ => cx
                .source
                .clone()
                .ok_or("no channel and conversation given, and no current conversation")?,
        };
        let format = if input["markdown"].as_bool() == Some(true) {
            Format::Markdown
        } else {
            Format::Plain
        };
        let buttons = serde_json::from_value(input.get("buttons").cloned().unwrap_or(json!([])))?;
        let message = Outbound {
            target: Some(target),
            text,
            format,
            buttons,
            ..Outbound::default()
        };
        let id = cx.senders.send(&message).await?;
        if let Some(store) = &cx.store {
            store.save_outbound(&message).await?;
        }
        Ok(json!({ "message_id": id.0 }))
    }
}

/// Longest delay `send_later` accepts: 366 days.
const MAX_SEND_LATER: std::time::Duration = std::time::Duration::from_secs(366 * 24 * 3600);

/// The `delay` of a `send_later` input: a number of seconds or a duration such as "1h 30m",
/// more than zero and at most [`MAX_SEND_LATER`]. The error is in words for the person who
/// asked, and names the limit.
fn send_later_delay(v: &Value) -> std::result::Result<std::time::Duration, String> {
    let limit = format!(
        "the delay must be at most {} days",
        MAX_SEND_LATER.as_secs() / (24 * 3600)
    );
    let zero = || "the delay must be more than zero".to_owned();
    let delay = match v {
        Value::String(s) => humantime::parse_duration(s).map_err(|e| match e {
            humantime::DurationError::NumberOverflow => format!("{limit}; '{s}' is out of range"),
            e => format!("'{s}' is not a duration ({e}); try 10s, 5m or 1h 30m"),
        })?,
        v => match v.as_f64() {
            // Compared as numbers first: a float past what a Duration holds never converts.
            Some(secs) if secs > MAX_SEND_LATER.as_secs_f64() => {
                return Err(format!("{limit}, got {v} seconds"));
            }
            Some(secs) if secs > 0.0 => {
                std::time::Duration::try_from_secs_f64(secs).map_err(|_| zero())?
            }
            Some(_) => return Err(zero()),
            None => return Err(format!("delay {v} is neither seconds nor a duration")),
        },
    };
    if delay.is_zero() {
        return Err(zero());
    }
    if delay > MAX_SEND_LATER {
        return Err(format!(
            "{limit}, got {}",
            humantime::format_duration(delay)
        ));
    }
    Ok(delay)
}

/// Built-in `send_later`: a message delivered after a delay, through the durable task queue
/// (so it survives restarts and is delivered by whichever agent is running then).
struct SendLater;

#[async_trait]
impl Action for SendLater {
    fn name(&self) -> &str {
        "send_later"
    }
    fn description(&self) -> &str {
        "Send a text message after a delay (seconds, or a duration such as \"10m\" or \"1h 30m\"), to the current conversation unless channel and conversation are given."
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "text": {"type": "string", "minLength": 1},
                "delay": {"oneOf": [
                    {"type": "number", "exclusiveMinimum": 0},
                    {"type": "string", "minLength": 1}
                ]},
                "channel": {"type": "string", "minLength": 1},
                "conversation": {"type": "string", "minLength": 1}
            },
            "required": ["text", "delay"],
            "dependentRequired": {"channel": ["conversation"], "conversation": ["channel"]},
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"task_id": {"type": "integer"}, "delay_secs": {"type": "number"}},
            "required": ["task_id", "delay_secs"]
        })
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let store = cx
            .store
            .as_ref()
            .ok_or("this bot has no store, so nothing can be sent later")?;
        // Refusals: the delay comes from the person asking, who hears these words.
        let delay = send_later_delay(&input["delay"]).map_err(Refusal)?;
        let target = match (input["channel"].as_str(), input["conversation"].as_str()) {
            (Some(channel), Some(conversation)) => Target {
                channel: ChannelName::from(channel),
                conversation: ConversationId::from(conversation),
                thread: None,
            },
            _ => cx
                .source
                .clone()
                .ok_or("no channel and conversation given, and no current conversation")?,
        };
        let text = input["text"].as_str().unwrap_or_default();
        let message = Outbound::text(text).to(target);
        let task = crate::task::NewTask::new(crate::pipeline::DELIVER_TASK, &message)?.delay(delay);
        let id = store.enqueue(&task).await?.id();
        Ok(json!({ "task_id": id.0, "delay_secs": delay.as_secs_f64() }))
    }
}

fn kv_store(cx: &ActionContext) -> Result<&Arc<dyn Store>, BoxError> {
    cx.store
        .as_ref()
        .ok_or_else(|| "this bot has no store, so kv actions are unavailable".into())
}

const KV_NAMESPACE: &str = "default";

/// The namespace of a kv action's input; those starting with `flowbot.` hold FlowBot's own
/// data (stored rules, for one) and are refused.
fn kv_namespace(input: &Value) -> Result<&str, BoxError> {
    let ns = input["namespace"].as_str().unwrap_or(KV_NAMESPACE);
    if ns.starts_with("flowbot.") {
        return Err(format!("namespace '{ns}' is reserved for FlowBot's own data").into());
    }
    Ok(ns)
}

/// Built-in `kv.get`.
struct KvGet;

#[async_trait]
impl Action for KvGet {
    fn name(&self) -> &str {
        "kv.get"
    }
    fn description(&self) -> &str {
        "Read a value from the key-value store (null when absent)."
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "namespace": {"type": "string", "minLength": 1, "maxLength": 200},
                "key": {"type": "string", "minLength": 1, "maxLength": 500}
            },
            "required": ["key"],
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object", "properties": {"value": {}}, "required": ["value"]})
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let ns = kv_namespace(&input)?;
        let key = input["key"].as_str().unwrap_or_default();
        let value = kv_store(cx)?.kv_get(ns, key).await?;
        Ok(json!({ "value": value.unwrap_or(Value::Null) }))
    }
}

/// Built-in `kv.set`.
struct KvSet;

#[async_trait]
impl Action for KvSet {
    fn name(&self) -> &str {
        "kv.set"
    }
    fn description(&self) -> &str {
        "Write a JSON value to the key-value store."
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "namespace": {"type": "string", "minLength": 1, "maxLength": 200},
                "key": {"type": "string", "minLength": 1, "maxLength": 500},
                "value": {}
            },
            "required": ["key", "value"],
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({"type": "object"})
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let ns = kv_namespace(&input)?;
        let key = input["key"].as_str().unwrap_or_default();
        kv_store(cx)?.kv_set(ns, key, &input["value"]).await?;
        Ok(json!({}))
    }
}

/// Built-in `kv.delete`.
struct KvDelete;

#[async_trait]
impl Action for KvDelete {
    fn name(&self) -> &str {
        "kv.delete"
    }
    fn description(&self) -> &str {
        "Delete a value from the key-value store."
    }
    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {
                "namespace": {"type": "string", "minLength": 1, "maxLength": 200},
                "key": {"type": "string", "minLength": 1, "maxLength": 500}
            },
            "required": ["key"],
            "additionalProperties": false
        })
    }
    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": {"existed": {"type": "boolean"}},
            "required": ["existed"]
        })
    }
    async fn call(&self, cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let ns = kv_namespace(&input)?;
        let key = input["key"].as_str().unwrap_or_default();
        let existed = kv_store(cx)?.kv_delete(ns, key).await?;
        Ok(json!({ "existed": existed }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::in_process::InProcess;

    mod send_later_delays {
        use super::*;
        use proptest::prelude::*;

        #[test]
        fn refusals_name_the_limit() {
            for (input, want) in [
                (json!("0s"), "the delay must be more than zero"),
                (json!(0), "the delay must be more than zero"),
                (json!(-5), "the delay must be more than zero"),
                (
                    json!("367d"),
                    "the delay must be at most 366 days, got 1year",
                ),
                (json!("300000y"), "the delay must be at most 366 days"),
                (
                    json!("99999999999999999999999y"),
                    "the delay must be at most 366 days",
                ),
                (
                    json!(1e300),
                    "the delay must be at most 366 days, got 1e+300 seconds",
                ),
                (json!(u64::MAX), "the delay must be at most 366 days"),
                (json!("soon"), "'soon' is not a duration"),
                (json!(true), "neither seconds nor a duration"),
            ] {
                let e = send_later_delay(&input).expect_err("refused");
                assert!(e.contains(want), "{input}: {e}");
            }
            assert_eq!(
                send_later_delay(&json!("1h 30m")),
                Ok(std::time::Duration::from_secs(5400))
            );
            assert_eq!(
                send_later_delay(&json!(1.5)),
                Ok(std::time::Duration::from_millis(1500))
            );
            assert_eq!(send_later_delay(&json!("366d")), Ok(MAX_SEND_LATER));
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any delay a person can type or a rule can pass: a delay within the limit, or
            /// words that say what is wrong.
            #[test]
            fn any_delay_is_within_the_limit_or_refused(
                input in prop_oneof![
                    any::<f64>().prop_map(|f| json!(f)),
                    any::<i64>().prop_map(|n| json!(n)),
                    any::<u64>().prop_map(|n| json!(n)),
                    (any::<u64>(), prop::sample::select(vec!["s", "m", "h", "d", "w", "M", "y", "ms", "ns", ""]))
                        .prop_map(|(n, u)| json!(format!("{n}{u}"))),
                    "[0-9]{1,40}[a-z]{0,3}".prop_map(|s| json!(s)),
                    "[ -~]{0,20}".prop_map(|s| json!(s)),
                ],
            ) {
                match send_later_delay(&input) {
                    Ok(d) => prop_assert!(!d.is_zero() && d <= MAX_SEND_LATER, "{input}: {d:?}"),
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }
        }
    }

    fn cx() -> (ActionContext, crate::in_process::InProcessHandle) {
        let (channel, handle) = InProcess::channel("local", 8);
        let mut senders = Senders::default();
        senders
            .insert(channel.name().clone(), channel.sender().clone())
            .expect("one channel");
        let source = Target {
            channel: "local".into(),
            conversation: "c1".into(),
            thread: None,
        };
        (
            ActionContext {
                store: None,
                senders: Arc::new(senders),
                source: Some(source),
            },
            handle,
        )
    }

    #[tokio::test]
    async fn send_message_reaches_the_current_conversation() {
        let registry = ActionRegistry::with_builtins();
        let (cx, mut handle) = cx();
        let out = registry
            .call("send_message", &cx, json!({"text": "hi"}))
            .await
            .expect("sent");
        assert!(out["message_id"].is_string());
        let reply = handle.try_reply().expect("delivered");
        assert_eq!(reply.text, "hi");
        assert_eq!(reply.target.expect("target").conversation.as_str(), "c1");
    }

    #[tokio::test]
    async fn bad_input_names_the_problem() {
        let registry = ActionRegistry::with_builtins();
        let (cx, _handle) = cx();
        let e = registry
            .call("send_message", &cx, json!({"txt": "hi"}))
            .await
            .expect_err("bad");
        let msg = e.to_string();
        assert!(
            msg.starts_with("action 'send_message': invalid input"),
            "{msg}"
        );
        let e = registry
            .call("send_message", &cx, json!({"text": 5}))
            .await
            .expect_err("wrong type");
        assert!(e.to_string().contains("at '/text'"), "{e}");
        let e = registry
            .call("sned", &cx, json!({}))
            .await
            .expect_err("unknown");
        assert_eq!(e.to_string(), "unknown action 'sned'");
        let e = registry
            .call("kv.get", &cx, json!({"key": "a"}))
            .await
            .expect_err("no store");
        assert!(e.to_string().contains("no store"), "{e}");
    }

    struct BadSchema;

    #[async_trait]
    impl Action for BadSchema {
        fn name(&self) -> &str {
            "bad"
        }
        fn description(&self) -> &str {
            "bad"
        }
        fn input_schema(&self) -> Value {
            json!({"type": "no-such-type"})
        }
        fn output_schema(&self) -> Value {
            json!({})
        }
        async fn call(&self, _: &ActionContext, _: Value) -> Result<Value, BoxError> {
            Ok(Value::Null)
        }
    }

    #[test]
    fn invalid_schemas_and_duplicates_are_rejected() {
        let mut registry = ActionRegistry::with_builtins();
        let e = registry.register(BadSchema).expect_err("bad schema");
        assert!(
            e.to_string()
                .contains("action 'bad': input schema is not a valid JSON Schema"),
            "{e}"
        );
        let e = registry.register(KvGet).expect_err("duplicate");
        assert!(
            e.to_string().contains("'kv.get' is registered twice"),
            "{e}"
        );
        assert_eq!(registry.list().len(), 8, "the built-ins, no more");
    }
}
