//! The rule file format, as written by people: TOML deserialised into these types, then
//! compiled by [`crate::RuleSet::compile`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One rule file: global variables and rules.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Variables visible to every template and script of the rule set as `vars`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, Value>,
    /// The rules.
    #[serde(default, rename = "rule", skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<RuleSpec>,
    /// Multi-turn dialogs, started by the `dialog` action.
    #[serde(default, rename = "dialog", skip_serializing_if = "Vec::is_empty")]
    pub dialogs: Vec<DialogSpec>,
}

/// A multi-turn dialog: steps that ask and collect answers into slots, then actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialogSpec {
    /// Unique name, used by `{ dialog = "<name>" }`.
    pub name: String,
    /// A dialog left unanswered this long ends by itself (default 30 minutes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Answers that end the dialog at any step (default: `cancel`), ignoring case.
    #[serde(default = "cancel_words")]
    pub cancel: Vec<String>,
    /// Reply when the dialog is cancelled.
    #[serde(default = "cancelled")]
    pub on_cancel: String,
    /// Answers that repeat the current question with its hint (default: `help`).
    #[serde(default = "help_words")]
    pub help: Vec<String>,
    /// The steps, asked in order unless a step says otherwise.
    #[serde(rename = "step")]
    pub steps: Vec<StepSpec>,
    /// Actions run when the last step is answered; templates see `slots`.
    #[serde(default)]
    pub then: Vec<ActionSpec>,
}

fn cancel_words() -> Vec<String> {
    vec!["cancel".into()]
}

fn help_words() -> Vec<String> {
    vec!["help".into()]
}

fn cancelled() -> String {
    "Cancelled.".into()
}

/// One question of a dialog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the dialog.
    pub name: String,
    /// The question (a template; sees `slots`).
    pub ask: String,
    /// What counts as an answer (default: any text).
    #[serde(default)]
    pub expect: ExpectSpec,
    /// Said before asking again after an answer that does not fit (a template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<String>,
    /// Slot the answer is stored in (default: the step's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slot: Option<String>,
    /// Conditional jumps, tried in order after the answer is stored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub branch: Vec<BranchSpec>,
    /// The step after this one (default: the next in the list; `end` finishes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// What a step accepts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectSpec {
    /// `text` (default), `int`, `float`, `bool` (yes/no), `duration`, or `confirm` (yes
    /// goes on, no cancels the dialog).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Smallest number accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest number accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Accepted answers (ignoring case); shown as buttons.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    /// A regex the whole answer must match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// A rhai expression over `answer` and `slots` that must be `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
}

/// A conditional jump.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BranchSpec {
    /// A rhai expression over `slots` (and `answer`).
    pub when: String,
    /// The step to go to, or `end`.
    pub goto: String,
}

/// One rule: when its conditions hold, its actions run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Unique name within the rule set (letters, digits, `_`, `-`, `.`).
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Higher runs first; equal priorities keep file order.
    #[serde(default)]
    pub priority: i32,
    /// Whether later rules are still tried after this one matched (default: stop).
    #[serde(default, rename = "continue")]
    pub keep_going: bool,
    /// A disabled rule is compiled and checked, but never matches.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Conditions; all of those given must hold. No conditions: always matches.
    #[serde(default)]
    pub when: When,
    /// Actions, run in order.
    #[serde(default)]
    pub then: Vec<ActionSpec>,
}

fn yes() -> bool {
    true
}

/// Conditions. Every condition given must hold (`all`, `any` and `not` nest).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// A slash command with typed arguments: `"remind <delay:duration> <text...>"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// The whole text, ignoring case and surrounding space.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A substring of the text, ignoring case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contains: Option<String>,
    /// Any of these words or phrases, as whole words, ignoring case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keywords: Option<Vec<String>>,
    /// A regular expression over the text; its groups become `captures`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
    /// Channel names (any of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<OneOrMany>,
    /// Conversation ids (any of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<OneOrMany>,
    /// User ids (any of).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<OneOrMany>,
    /// Sender roles (any of): `user`, `moderator`, `admin`, `bot` or a platform role name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<OneOrMany>,
    /// Event kinds (any of): `message`, `message_edited`, `button`, `member_joined`,
    /// `reaction`, `custom`. Edits reach only rules that name `message_edited`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<OneOrMany>,
    /// A time window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<TimeSpec>,
    /// An intent label from the bot's classifier, with a minimum confidence.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intent: Option<IntentSpec>,
    /// A rhai expression that must evaluate to `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    /// All of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<When>>,
    /// At least one of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<When>>,
    /// Not this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<When>>,
    /// A condition kind registered by the application: `{ name = "...", ...arguments }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<CustomSpec>,
}

/// A single value or a list of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a list.
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s.clone()],
            OneOrMany::Many(v) => v.clone(),
        }
    }
}

/// A time window: `from`–`to` (local `HH:MM`, may wrap past midnight) on `days`, in `tz`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeSpec {
    /// Start, `HH:MM`, inclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// End, `HH:MM`, exclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// Weekdays (`mon` … `sun`); none given: every day.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub days: Vec<String>,
    /// IANA time zone (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
}

/// An intent condition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntentSpec {
    /// The label.
    pub label: String,
    /// Lowest confidence that counts (default 0.5).
    #[serde(default = "half")]
    pub min: f32,
    /// Example texts of this intent: a classifier that learns (flowbot-gpu's) is trained
    /// with the examples of every label each time the rules load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub examples: Vec<String>,
}

fn half() -> f32 {
    0.5
}

/// A custom condition: its registered kind and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomSpec {
    /// The registered kind.
    pub kind: String,
    /// Arguments, handed to the kind's compiler.
    #[serde(flatten)]
    pub args: serde_json::Map<String, Value>,
}

/// One action. Written as a table with one key naming the action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ActionSpec {
    /// Reply with a template (minijinja).
    Reply(String),
    /// Call a registered action with templated input.
    Call {
        /// The action's name.
        action: String,
        /// Its input; every string in it is a template.
        #[serde(default)]
        input: Value,
        /// Session variable that receives the action's output.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        save_as: Option<String>,
    },
    /// Set a session variable; string values are templates.
    Set {
        /// Variable name.
        var: String,
        /// Its value.
        value: Value,
    },
    /// Remove session variables.
    Clear(OneOrMany),
    /// Run a rhai script.
    Script(String),
    /// Start a dialog (its first question is the reply).
    Dialog(String),
    /// Start a run of a workflow (through the `workflow.run` action) with templated inputs;
    /// the run knows the conversation, so its `send_message` nodes answer there.
    Workflow {
        /// The workflow's name.
        name: String,
        /// Its inputs; every string in it is a template.
        #[serde(default)]
        input: Value,
        /// Session variable that receives `{"run_id": …, "status": …}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        save_as: Option<String>,
    },
    /// Ask the bot's language model (its assistant), which may call `tools`; the answer is
    /// the reply, or goes into `save_as`.
    Llm(LlmSpec),
}

/// The `llm` action: `{ llm = { prompt = "…", tools = ["send_later"] } }`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    /// The system prompt (a template); none: the assistant's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    /// What to ask (a template); none: the message's text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A model configured under `[llm.models]`; none: the default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Actions the model may call; none: the assistant's default tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Session variable that receives `{"text": …, "run": …}` instead of replying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub save_as: Option<String>,
    /// The reply (a template) when the bot has no language model configured; without it,
    /// such a rule fails with an error saying so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub otherwise: Option<String>,
    /// A knowledge base collection: passages found in it for the question go into the
    /// prompt and the answer cites them (docs/knowledge.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<String>,
}
