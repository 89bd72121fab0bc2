//! The agent loop: a model answers a turn, calling registered actions as tools, within
//! budgets, checkpointing every step so that a crash resumes where it stopped.
//!
//! - **Tools are actions.** A use (the agent's defaults, a rule's `tools`) allows a set of
//!   actions; the model sees their JSON Schemas. Arguments are parsed and validated against
//!   the action's schema before the call; an unknown or not allowed tool, arguments that are
//!   not JSON or do not match the schema, and an action's own error all go back to the model
//!   as the call's result, so it can correct itself — at most
//!   [`Limits::max_failed_calls`] times in a row.
//! - **Parallel calls** run concurrently; each result is checkpointed as it completes.
//! - **Budgets**: turns, tokens and wall time per run, and tokens per user per day. Each ends
//!   the run with a message saying which was spent.
//! - **Durable runs**: the run's id is the event's id plus the ask's key, so when the queue
//!   hands an interrupted event to another agent, the run resumes from its last checkpoint;
//!   a call whose result was checkpointed is never made again (its id is the idempotency
//!   key).
//! - **Approvals**: a tool listed in [`AgentBuilder::approval`] pauses the run and asks the
//!   user with two buttons. The run waits in the store, not in memory: the click can reach
//!   any server, even after a restart, and resumes it.
//! - **A newer message stops an answer** ([`AgentBuilder::stop_when_overtaken`], on by
//!   default): FlowBot's pipeline handles one message per conversation at a time, so a new
//!   message waits in the queue while an answer is written. The agent asks the queue
//!   ([`superseded`](flowbot_core::task::superseded)) between steps and every half second
//!   while the model streams; when a newer message of the conversation waits, the answer
//!   stops (the text shown so far stays, marked with "…"), the run is recorded as stopped,
//!   and the newer message is answered next. With
//!   [`AgentBuilder::cancel_on_new_message`], applications that call the agent from their
//!   own concurrent handlers get the same within one process.
//! - **Prompts**: with [`AgentBuilder::prompts`], a prompt (the agent's own or an ask's) that
//!   names a prompt of the library is rendered for the run — the active version, or the
//!   user's arm of an A/B split, its variant for the model — with the message, the session's
//!   variables and [`AgentBuilder::prompt_vars`]; anything else is the system text itself.
//!   The run remembers the version, and its outcome (tokens, cost, time) is added to that
//!   version's statistics when it ends.

mod run;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowbot_core::llm::{
    Answer, Ask, Assistant, ChatMessage, ChatModel, ChatRequest, CompletionBuilder, ModelErrorKind,
    StreamEvent, ToolCall, ToolResult, ToolSpec, Usage,
};
use flowbot_core::{CancellationToken, Draft, Error, Event, Outbound, Refusal, Turn};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;

use crate::PriceTable;
use crate::context::{ContextError, ContextManager, RelevanceFilter, summarize};
use crate::prompt::{MessageVars, Outcome, PromptContext, PromptError, SharedPrompts};
use flowbot_core::store::KvStore;
use serde_json::{Map, Value};
use tokio::time::Instant;

pub use run::{
    CallRecord, DailyUsage, HISTORIES, History, PromptUse, RUNS, RunState, RunStatus, Runs, USAGE,
};

/// Button values start with this; the rest is `approve:<run>:<call>` or `deny:<run>:<call>`.
pub const APPROVAL_PREFIX: &str = "llm:";

/// The default system prompt.
pub const DEFAULT_PROMPT: &str = "You are a helpful assistant in a chat. Answer briefly. \
Use the tools you are given when they help; never invent their results.";

/// Limits of one run.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Model turns per run (each tool round is a turn).
    pub max_turns: u32,
    /// Tokens (in + out) per run.
    pub max_run_tokens: u64,
    /// Seconds per run, tools included.
    pub max_run_secs: u64,
    /// Tool calls in a row that may fail before the run stops.
    pub max_failed_calls: u32,
    /// Tokens per user per day (UTC); 0: no limit.
    pub max_user_daily_tokens: u64,
    /// Tokens per conversation per day (UTC); 0: no limit.
    pub max_conversation_daily_tokens: u64,
    /// US dollars per user per day (UTC), from the price table; 0: no limit.
    pub max_user_daily_cost_usd: f64,
    /// US dollars per conversation per day (UTC); 0: no limit.
    pub max_conversation_daily_cost_usd: f64,
    /// Latest history messages kept per user and conversation (older ones are folded into
    /// the running summary when they no longer fit the context window).
    pub history_messages: usize,
    /// The model's context window in tokens: the prompt (system, summary, history, tools)
    /// is trimmed to it, less `answer_tokens`.
    pub context_tokens: usize,
    /// Tokens kept free for the answer.
    pub answer_tokens: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_turns: 8,
            max_run_tokens: 200_000,
            max_run_secs: 300,
            max_failed_calls: 3,
            max_user_daily_tokens: 0,
            max_conversation_daily_tokens: 0,
            max_user_daily_cost_usd: 0.0,
            max_conversation_daily_cost_usd: 0.0,
            history_messages: 20,
            context_tokens: 128_000,
            answer_tokens: 4_096,
        }
    }
}

impl Limits {
    /// Check the ranges; the error names the field.
    pub fn check(&self) -> Result<(), crate::SettingsError> {
        self.problems().map_err(crate::SettingsError)
    }

    /// [`Limits::check`], in words.
    fn problems(&self) -> Result<(), String> {
        for (key, usd) in [
            ("max_user_daily_cost_usd", self.max_user_daily_cost_usd),
            (
                "max_conversation_daily_cost_usd",
                self.max_conversation_daily_cost_usd,
            ),
        ] {
            if !(usd.is_finite() && (0.0..=1_000_000.0).contains(&usd)) {
                return Err(format!("{key} = {usd}: must be from 0 to 1000000 dollars"));
            }
        }
        if self.max_turns == 0 || self.max_turns > 100 {
            return Err(format!("max_turns = {}: must be 1 to 100", self.max_turns));
        }
        if self.max_run_secs == 0 || self.max_run_secs > 86_400 {
            return Err(format!(
                "max_run_secs = {}: must be 1 to 86400",
                self.max_run_secs
            ));
        }
        if self.max_run_tokens == 0 {
            return Err("max_run_tokens must be more than 0".into());
        }
        if self.context_tokens <= self.answer_tokens || self.context_tokens > 10_000_000 {
            return Err(format!(
                "context_tokens = {}: must be more than answer_tokens ({}) and at most 10000000",
                self.context_tokens, self.answer_tokens
            ));
        }
        if self.history_messages > 1000 {
            return Err(format!(
                "history_messages = {}: at most 1000",
                self.history_messages
            ));
        }
        Ok(())
    }
}

/// Streams a run's text as it is written (e.g. into a chat that shows the answer growing).
pub trait TextSink: Send {
    /// The answer so far.
    fn text(&mut self, so_far: &str);
}

/// An answerer of turns: a model (or chain), a system prompt, tools and limits.
pub struct Agent {
    model: Arc<dyn ChatModel>,
    models: HashMap<String, Arc<dyn ChatModel>>,
    prompt: String,
    tools: Vec<String>,
    approval: HashSet<String>,
    limits: Limits,
    cancel_on_new_message: bool,
    stop_when_overtaken: bool,
    relevance: Option<Arc<dyn RelevanceFilter>>,
    active: Mutex<HashMap<String, CancellationToken>>,
    prompts: Option<Arc<SharedPrompts>>,
    prompt_vars: Map<String, Value>,
    prices: Option<PriceTable>,
    model_ids: HashMap<String, String>,
    #[cfg(feature = "knowledge")]
    knowledge: Option<Arc<crate::knowledge::Knowledge>>,
    #[cfg(feature = "knowledge")]
    knowledge_options: crate::knowledge::KnowledgeOptions,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("model", &self.model.name())
            .field("models", &self.models.keys().collect::<Vec<_>>())
            .field("tools", &self.tools)
            .field("approval", &self.approval)
            .field("limits", &self.limits)
            .field("prompts", &self.prompts.is_some())
            .field("model_ids", &self.model_ids)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Agent`].
pub struct AgentBuilder {
    agent: Agent,
}

impl std::fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.agent.fmt(f)
    }
}

impl AgentBuilder {
    /// The system prompt: the name of a prompt in the library ([`AgentBuilder::prompts`]),
    /// or the system text itself.
    pub fn prompt(mut self, prompt: impl Into<String>) -> Self {
        self.agent.prompt = prompt.into();
        self
    }

    /// The prompt library: prompts named by the agent or an ask are rendered from it.
    pub fn prompts(mut self, prompts: Arc<SharedPrompts>) -> Self {
        self.agent.prompts = Some(prompts);
        self
    }

    /// Values the prompts see as `vars` (the bot's name, settings).
    pub fn prompt_vars(mut self, vars: Map<String, Value>) -> Self {
        self.agent.prompt_vars = vars;
        self
    }

    /// Prices, for each run's cost (in its record and its prompt's statistics).
    pub fn prices(mut self, prices: PriceTable) -> Self {
        self.agent.prices = Some(prices);
        self
    }

    /// The provider model (`dialect/model`) behind the model named `name` (a chain's first
    /// model): prompt variants are picked and prices looked up by it. Without one, the
    /// model's own [`name`](ChatModel::name) is used.
    pub fn model_id(mut self, name: impl Into<String>, id: impl Into<String>) -> Self {
        self.agent.model_ids.insert(name.into(), id.into());
        self
    }

    /// Actions the model may call unless an ask names its own.
    pub fn tools<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.agent.tools = tools.into_iter().map(Into::into).collect();
        self
    }

    /// Actions that need a person's approval before each call.
    pub fn approval<S: Into<String>>(mut self, tools: impl IntoIterator<Item = S>) -> Self {
        self.agent.approval = tools.into_iter().map(Into::into).collect();
        self
    }

    /// Another model an ask can name.
    pub fn model(mut self, name: impl Into<String>, model: Arc<dyn ChatModel>) -> Self {
        self.agent.models.insert(name.into(), model);
        self
    }

    /// The limits.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.agent.limits = limits;
        self
    }

    /// Leave older turns of the history unrelated to the new message out of the prompt (they
    /// stay in the history): [`KeywordFilter`](crate::context::KeywordFilter), or an
    /// [`EmbeddingFilter`](crate::context::EmbeddingFilter) over any embedder.
    pub fn relevance(mut self, filter: Arc<dyn RelevanceFilter>) -> Self {
        self.agent.relevance = Some(filter);
        self
    }

    /// Stop an answer being written when a newer message of the same conversation is waiting
    /// behind it in the queue (on by default; see the [module](self) docs).
    pub fn stop_when_overtaken(mut self, yes: bool) -> Self {
        self.agent.stop_when_overtaken = yes;
        self
    }

    /// Cancel an answer being written when another one starts for the same user in the same
    /// conversation in this process (off by default; see the [module](self) docs).
    pub fn cancel_on_new_message(mut self, yes: bool) -> Self {
        self.agent.cancel_on_new_message = yes;
        self
    }

    /// The knowledge base: an ask naming a collection (or any ask, with
    /// [`KnowledgeOptions::collection`](crate::knowledge::KnowledgeOptions)) is answered from
    /// the passages found in it for the user's words, given to the model as numbered
    /// sources; the answer ends with the sources it cites. When nothing is found, the agent
    /// answers [`KnowledgeOptions::dont_know`](crate::knowledge::KnowledgeOptions) without
    /// calling the model.
    #[cfg(feature = "knowledge")]
    #[cfg_attr(docsrs, doc(cfg(feature = "knowledge")))]
    pub fn knowledge(mut self, knowledge: Arc<crate::knowledge::Knowledge>) -> Self {
        self.agent.knowledge = Some(knowledge);
        self
    }

    /// How answers use the knowledge base (default collection, search, room in the prompt,
    /// the words when nothing is found).
    #[cfg(feature = "knowledge")]
    #[cfg_attr(docsrs, doc(cfg(feature = "knowledge")))]
    pub fn knowledge_options(mut self, options: crate::knowledge::KnowledgeOptions) -> Self {
        self.agent.knowledge_options = options;
        self
    }

    /// The agent, or what is wrong with its limits.
    pub fn build(self) -> Result<Agent, Error> {
        self.agent
            .limits
            .check()
            .map_err(|e| Error::Build(format!("llm limits: {e}")))?;
        Ok(self.agent)
    }
}

/// The system text (and user message) a run starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ResolvedPrompt {
    /// The system message.
    pub system: String,
    /// The user message, when the library prompt has a user template; `None`: the user's
    /// own words.
    pub user: Option<String>,
    /// The library prompt and version rendered; `None` for literal system text.
    pub used: Option<PromptUse>,
}

/// Whether `s` can be a prompt's name (letters, digits, `_`, `-`, `.`; at most 100 bytes),
/// and so is looked up in the library before it is taken as system text.
fn looks_like_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 100
        && !s.starts_with('.')
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

#[allow(clippy::needless_pass_by_value)] // used as `map_err(prompt_error)`
fn prompt_error(e: PromptError) -> Error {
    match e {
        PromptError::Store(s) => Error::Store(s),
        other => Error::Handler(format!("llm prompt: {other}").into()),
    }
}

/// How a run step ended.
enum Step {
    /// The final text.
    Answer(String),
    /// Waiting for approval of this call.
    Approval(ToolCall),
    /// Stopped, with the words for the user.
    Stopped(String),
    /// Overtaken by a newer message of the same conversation: stopped, no answer of its own.
    Superseded,
}

/// What the knowledge base adds to a run.
#[cfg(feature = "knowledge")]
enum Grounding {
    /// No collection is asked for.
    None,
    /// The sources block for the system prompt and its citations.
    Sources(String, Vec<crate::knowledge::Citation>),
    /// Nothing found: the agent does not know.
    DontKnow,
}

/// How often an answer being written checks whether a newer message is waiting.
const SUPERSEDED_POLL: Duration = Duration::from_millis(500);

/// Resolves once a newer message of the same conversation waits behind the one being
/// answered (never outside a queued task).
async fn overtaken() {
    loop {
        tokio::time::sleep(SUPERSEDED_POLL).await;
        if flowbot_core::task::superseded().await {
            return;
        }
    }
}

fn today() -> String {
    flowbot_core::clock::now().format("%Y-%m-%d").to_string()
}

/// The answer to an approval click: `(approve?, run, call)`.
fn parse_click(value: &str) -> Option<(bool, &str, &str)> {
    let rest = value.strip_prefix(APPROVAL_PREFIX)?;
    let (verb, rest) = rest.split_once(':')?;
    let approve = match verb {
        "approve" => true,
        "deny" => false,
        _ => return None,
    };
    let (run, call) = rest.rsplit_once(':')?;
    Some((approve, run, call))
}

impl Agent {
    /// An agent answering with `model`.
    pub fn builder(model: Arc<dyn ChatModel>) -> AgentBuilder {
        AgentBuilder {
            agent: Agent {
                model,
                models: HashMap::new(),
                prompt: DEFAULT_PROMPT.to_owned(),
                tools: Vec::new(),
                approval: HashSet::new(),
                limits: Limits::default(),
                cancel_on_new_message: false,
                stop_when_overtaken: true,
                relevance: None,
                active: Mutex::new(HashMap::new()),
                prompts: None,
                prompt_vars: Map::new(),
                prices: None,
                model_ids: HashMap::new(),
                #[cfg(feature = "knowledge")]
                knowledge: None,
                #[cfg(feature = "knowledge")]
                knowledge_options: crate::knowledge::KnowledgeOptions::default(),
            },
        }
    }

    /// The model named `name` (a name given to [`AgentBuilder::model`]), or the default
    /// one for `None`; an error listing the names for an unknown one.
    pub fn chat_model(&self, name: Option<&str>) -> Result<Arc<dyn ChatModel>, Error> {
        let mut ask = Ask::default();
        ask.model = name.map(str::to_owned);
        self.model_for(&ask)
    }

    fn model_for(&self, ask: &Ask) -> Result<Arc<dyn ChatModel>, Error> {
        match &ask.model {
            None => Ok(self.model.clone()),
            Some(name) if name == self.model.name() => Ok(self.model.clone()),
            Some(name) => self.models.get(name).cloned().ok_or_else(|| {
                let mut known: Vec<&str> = self.models.keys().map(String::as_str).collect();
                known.push(self.model.name());
                known.sort_unstable();
                Error::Handler(
                    format!(
                        "llm: unknown model '{name}' (configured: {})",
                        known.join(", ")
                    )
                    .into(),
                )
            }),
        }
    }

    /// The prompt library, when the agent has one.
    pub fn prompts(&self) -> Option<&Arc<SharedPrompts>> {
        self.prompts.as_ref()
    }

    /// The provider model behind `model` (see [`AgentBuilder::model_id`]).
    pub fn model_id<'a>(&'a self, model: &'a dyn ChatModel) -> &'a str {
        self.model_ids
            .get(model.name())
            .map_or(model.name(), String::as_str)
    }

    /// What `usage` cost on `model`, in whole micro-dollars, when its price is known.
    pub fn cost_micros(&self, model: &dyn ChatModel, usage: &Usage) -> Option<u64> {
        let cost = self.prices.as_ref()?.cost(self.model_id(model), usage)?;
        Some(u64::try_from(cost.micro_usd()).unwrap_or(u64::MAX))
    }

    /// The system text for answering `text` in `turn` with `model`: `prompt` (else the
    /// agent's own), rendered from the library when it names a library prompt — the version
    /// the sender is assigned (the active one without a split), its variant for the model,
    /// over the message, the session's variables and the agent's `vars` — else taken as it
    /// is.
    pub async fn resolve_prompt(
        &self,
        turn: &Turn,
        prompt: Option<&str>,
        model: &dyn ChatModel,
        text: &str,
    ) -> Result<ResolvedPrompt, Error> {
        let source = prompt.unwrap_or(&self.prompt);
        let literal = || ResolvedPrompt {
            system: source.to_owned(),
            user: None,
            used: None,
        };
        let Some(shared) = &self.prompts else {
            return Ok(literal());
        };
        if !looks_like_name(source) {
            return Ok(literal());
        }
        let kv = turn.services.store().map(|s| &**s as &dyn KvStore);
        let library = shared.library(kv).await.map_err(prompt_error)?;
        if library.get(source).is_none() {
            tracing::warn!(prompt = %source, "no prompt of that name in the library: it is sent as the system text itself");
            return Ok(literal());
        }
        let user = turn.event.sender().map(|s| s.id.to_string());
        let mut cx = PromptContext::new();
        cx.message = MessageVars {
            text: text.to_owned(),
            user: user.clone(),
            channel: turn.source().map(|t| t.channel.to_string()),
        };
        cx.session = turn.session.lock().vars.clone();
        cx.vars = self.prompt_vars.clone();
        let rendered = library
            .render(source, self.model_id(model), user.as_deref(), &cx)
            .map_err(prompt_error)?;
        tracing::debug!(prompt = %rendered.name, version = rendered.version, variant = ?rendered.variant, "prompt rendered");
        Ok(ResolvedPrompt {
            system: rendered.system,
            user: rendered.user,
            used: Some(PromptUse {
                name: rendered.name,
                version: rendered.version,
                variant: rendered.variant,
            }),
        })
    }

    /// Add a finished run's tokens, cost and time to its prompt version's statistics.
    async fn record_outcome(&self, turn: &Turn, run: &RunState) {
        let (Some(used), Some(shared), Some(store)) =
            (&run.prompt, &self.prompts, turn.services.store())
        else {
            return;
        };
        let outcome = Outcome::call(
            &run.usage,
            run.cost_micros,
            Duration::from_millis(run.busy_ms),
        );
        if let Err(e) = shared
            .record(&**store, &used.name, used.version, &outcome)
            .await
        {
            tracing::warn!(run = %run.id, prompt = %used.name, version = used.version, error = %e, "prompt outcome not recorded");
        }
    }

    /// Answer `turn`, streaming the text into `sink` as it is written.
    pub async fn answer_with(
        &self,
        turn: &Turn,
        ask: &Ask,
        sink: &mut dyn TextSink,
    ) -> Result<Answer, Error> {
        let runs = Runs::new(
            turn.services
                .store()
                .map(|s| s.clone() as Arc<dyn flowbot_core::store::KvStore>),
        );
        if let Event::Interaction(click) = &*turn.event
            && let Some((approve, run, call)) = parse_click(&click.value)
        {
            return self.decide(turn, &runs, run, call, approve, sink).await;
        }
        let event_id = turn
            .event
            .dedupe_id()
            .map(|id| id.to_string())
            .unwrap_or_else(uuid_like);
        let id = if ask.key.is_empty() {
            event_id
        } else {
            format!("{event_id}:{}", ask.key)
        };
        // Run ids go into URLs (the REST API) and button values: keep them plain.
        let id: String = id
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.:".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let model = self.model_for(ask)?;
        let mut run = match runs.load(&id).await? {
            Some(run) => {
                tracing::info!(run = %id, status = ?run.status, "resuming an llm run");
                run
            }
            None => self.start(turn, ask, &runs, &id, &*model).await?,
        };
        match &run.status {
            RunStatus::Done => return Ok(self.answer(&run, run.answer.clone())),
            RunStatus::Stopped { reason } => {
                let reason = reason.clone();
                return Ok(self.answer(&run, reason));
            }
            RunStatus::WaitingApproval { call } => {
                let call = run.calls.get(call).map(|c| c.call.clone());
                if let Some(call) = call {
                    return Ok(self.ask_approval(&run, &call));
                }
            }
            RunStatus::Running => {}
        }
        self.drive(turn, &runs, &mut run, &*model, sink).await
    }

    /// A new run: the prompt, the history and the user's words.
    async fn start(
        &self,
        turn: &Turn,
        ask: &Ask,
        runs: &Runs,
        id: &str,
        model: &dyn ChatModel,
    ) -> Result<RunState, Error> {
        let text = match &ask.text {
            Some(t) => t.clone(),
            None => turn.text().unwrap_or_default().to_owned(),
        };
        if text.trim().is_empty() {
            return Err(Error::Handler(
                Refusal::new("There is nothing to answer: the message has no text.").into(),
            ));
        }
        let (channel, conversation) = turn
            .source()
            .map(|t| (t.channel.to_string(), t.conversation.to_string()))
            .unwrap_or_default();
        let user = turn
            .event
            .sender()
            .map(|s| s.id.to_string())
            .unwrap_or_default();
        let key = history_key(&channel, &conversation, &user);
        let mut history = runs.history(&key).await?;
        let prompt = self
            .resolve_prompt(turn, ask.prompt.as_deref(), model, &text)
            .await?;
        let tools = ask.tools.clone().unwrap_or_else(|| self.tools.clone());
        let specs = turn.services.actions().tool_specs(&tools)?;
        #[cfg_attr(not(feature = "knowledge"), allow(unused_mut))]
        let mut system = prompt.system;
        #[cfg(feature = "knowledge")]
        let mut sources = Vec::new();
        #[cfg(feature = "knowledge")]
        match self.ground(ask, &text, &system, model, &specs).await? {
            Grounding::None => {}
            Grounding::Sources(block, citations) => {
                system.push_str("\n\n");
                system.push_str(&block);
                sources = citations;
            }
            Grounding::DontKnow => {
                let now = flowbot_core::clock::now();
                let mut run = RunState {
                    id: id.to_owned(),
                    status: RunStatus::Done,
                    model: model.name().to_owned(),
                    channel,
                    conversation,
                    user,
                    messages: vec![ChatMessage::user(text)],
                    calls: Default::default(),
                    turns: 0,
                    failed_calls: 0,
                    usage: Usage::default(),
                    cost_micros: 0,
                    answer: self.knowledge_options.dont_know.clone(),
                    prompt: prompt.used,
                    busy_ms: 0,
                    feedback: None,
                    sources: Vec::new(),
                    created_at: now,
                    updated_at: now,
                };
                runs.save(&mut run).await?;
                return Ok(run);
            }
        }
        let mut all = vec![ChatMessage::system(system)];
        all.extend(history.messages.iter().cloned());
        all.push(ChatMessage::user(prompt.user.unwrap_or(text)));
        let window = self.context(model, &specs);
        let prepared = window
            .prepare(&all, history.summary.as_deref())
            .await
            .map_err(|e| {
                Error::Handler(
                    Refusal::new(format!("This message is too long for the assistant: {e}")).into(),
                )
            })?;
        if prepared.summary_needed {
            // Older turns no longer fit: fold them into the running summary, once.
            match summarize(model, history.summary.as_deref(), &prepared.to_summarize()).await {
                Ok(summary) => {
                    let kept = prepared.remaining_history(&all);
                    history.summary = Some(summary);
                    history.messages = kept[1..kept.len().saturating_sub(1)].to_vec();
                    if let Err(e) = runs.save_history(&key, &history).await {
                        tracing::warn!(error = %e, "llm history summary not saved");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "llm history could not be summarised; older turns are left out")
                }
            }
        }
        let messages = prepared.messages;
        let now = flowbot_core::clock::now();
        let mut run = RunState {
            id: id.to_owned(),
            status: RunStatus::Running,
            model: model.name().to_owned(),
            channel,
            conversation,
            user,
            messages,
            calls: Default::default(),
            turns: 0,
            failed_calls: 0,
            usage: Usage::default(),
            cost_micros: 0,
            answer: String::new(),
            prompt: prompt.used,
            busy_ms: 0,
            feedback: None,
            #[cfg(feature = "knowledge")]
            sources,
            created_at: now,
            updated_at: now,
        };
        // Tools of the ask, remembered with the run so a resumed run offers the same.
        run.calls.insert(
            TOOLS_KEY.to_owned(),
            CallRecord {
                call: ToolCall {
                    id: TOOLS_KEY.to_owned(),
                    name: TOOLS_KEY.to_owned(),
                    arguments: serde_json::to_string(&tools).unwrap_or_default(),
                },
                result: None,
                approved: None,
                finished_at: None,
            },
        );
        runs.save(&mut run).await?;
        Ok(run)
    }

    /// The knowledge base's part of a new run's prompt, when the ask (or the agent's
    /// options) names a collection.
    #[cfg(feature = "knowledge")]
    async fn ground(
        &self,
        ask: &Ask,
        text: &str,
        system: &str,
        model: &dyn ChatModel,
        specs: &[ToolSpec],
    ) -> Result<Grounding, Error> {
        let options = &self.knowledge_options;
        let Some(collection) = ask.knowledge.as_ref().or(options.collection.as_ref()) else {
            return Ok(Grounding::None);
        };
        let Some(kb) = &self.knowledge else {
            return Err(Error::Handler(
                format!("llm: the ask names knowledge collection '{collection}', but the assistant has no knowledge base").into(),
            ));
        };
        let passages = kb
            .search(collection, text, &options.search)
            .await
            .map_err(|e| Error::Handler(format!("llm knowledge: {e}").into()))?;
        if passages.is_empty() {
            tracing::info!(collection = %collection, "no passage found: answering that the assistant does not know");
            return Ok(Grounding::DontKnow);
        }
        // The sources take what the system prompt and the user's words leave of the window,
        // at most `max_tokens`; history is trimmed after them.
        let window = self.context(model, specs);
        let counter = window.counter().clone();
        let used = counter.count_messages(&[
            ChatMessage::system(system.to_owned()),
            ChatMessage::user(text.to_owned()),
        ]) + counter.count_tools(specs);
        let room = window.budget().saturating_sub(used).min(options.max_tokens);
        let (block, citations) = crate::knowledge::sources_prompt(&passages, &*counter, room);
        if citations.is_empty() {
            tracing::warn!(collection = %collection, room, "no passage fits the context window: answering that the assistant does not know");
            return Ok(Grounding::DontKnow);
        }
        if citations.len() < passages.len() {
            tracing::debug!(
                kept = citations.len(),
                found = passages.len(),
                "passages left out of the prompt for room"
            );
        }
        Ok(Grounding::Sources(block, citations))
    }

    /// The knowledge base given to the agent and how answers use it (the `llm` action's
    /// default).
    #[cfg(feature = "knowledge")]
    pub(crate) fn knowledge_base(
        &self,
    ) -> Option<(
        &Arc<crate::knowledge::Knowledge>,
        &crate::knowledge::KnowledgeOptions,
    )> {
        self.knowledge
            .as_ref()
            .map(|kb| (kb, &self.knowledge_options))
    }

    /// The context window for `model` with `tools`.
    pub(crate) fn context(&self, model: &dyn ChatModel, tools: &[ToolSpec]) -> ContextManager {
        let window = ContextManager::for_model(
            model.name(),
            self.limits.context_tokens,
            self.limits.answer_tokens,
        )
        .with_tools(tools);
        match &self.relevance {
            Some(filter) => window.with_filter(filter.clone()),
            None => window,
        }
    }

    fn answer(&self, run: &RunState, text: String) -> Answer {
        let mut a = Answer::default();
        a.reply = vec![Outbound::text(text.clone())];
        a.text = text;
        a.run = run.id.clone();
        a.usage = run.usage;
        a
    }

    fn ask_approval(&self, run: &RunState, call: &ToolCall) -> Answer {
        let args = if call.arguments.len() > 500 {
            let mut end = 500;
            while !call.arguments.is_char_boundary(end) {
                end -= 1;
            }
            format!("{}…", &call.arguments[..end])
        } else {
            call.arguments.clone()
        };
        let question = Outbound::text(format!(
            "I would like to run '{}' with {args}. Do you approve?",
            call.name
        ))
        .button(
            "Approve",
            format!("{APPROVAL_PREFIX}approve:{}:{}", run.id, call.id),
        )
        .button(
            "Deny",
            format!("{APPROVAL_PREFIX}deny:{}:{}", run.id, call.id),
        );
        let mut a = Answer::default();
        a.reply = vec![question];
        a.run = run.id.clone();
        a.usage = run.usage;
        a
    }

    /// A person approved or denied a call: record it and carry on.
    async fn decide(
        &self,
        turn: &Turn,
        runs: &Runs,
        id: &str,
        call_id: &str,
        approve: bool,
        sink: &mut dyn TextSink,
    ) -> Result<Answer, Error> {
        let Some(mut run) = runs.load(id).await? else {
            return Err(Error::Handler(
                Refusal::new("That request has expired or is unknown.").into(),
            ));
        };
        let clicker = turn.event.sender().map(|s| s.id.to_string());
        if clicker.as_deref() != Some(run.user.as_str()) {
            return Err(Error::Handler(
                Refusal::new("Only the person who asked can approve this.").into(),
            ));
        }
        match &run.status {
            RunStatus::WaitingApproval { call } if call == call_id => {}
            // A second click, or a click on an old question: say where the run stands.
            RunStatus::Done => return Ok(self.answer(&run, run.answer.clone())),
            RunStatus::Stopped { reason } => {
                let reason = reason.clone();
                return Ok(self.answer(&run, reason));
            }
            _ => {
                return Err(Error::Handler(
                    Refusal::new("That request was already answered.").into(),
                ));
            }
        }
        if let Some(record) = run.calls.get_mut(call_id) {
            record.approved = Some(approve);
        }
        run.status = RunStatus::Running;
        runs.save(&mut run).await?;
        let model = match self.models.get(&run.model) {
            Some(m) => m.clone(),
            None => self.model.clone(),
        };
        self.drive(turn, runs, &mut run, &*model, sink).await
    }

    /// Run until the answer, a pause or a stop.
    async fn drive(
        &self,
        turn: &Turn,
        runs: &Runs,
        run: &mut RunState,
        model: &dyn ChatModel,
        sink: &mut dyn TextSink,
    ) -> Result<Answer, Error> {
        let key = history_key(&run.channel, &run.conversation, &run.user);
        let cancel = CancellationToken::new();
        if self.cancel_on_new_message {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(previous) = active.insert(key.clone(), cancel.clone()) {
                previous.cancel();
            }
        }
        let began = Instant::now();
        let step = self.steps(turn, runs, run, model, sink, &cancel).await;
        let busy = u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX);
        run.busy_ms = run.busy_ms.saturating_add(busy);
        if self.cancel_on_new_message {
            let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
            if active
                .get(&key)
                .is_some_and(|c| c.is_cancelled() || !cancel.is_cancelled())
            {
                active.remove(&key);
            }
        }
        let step = match step {
            Ok(step) => step,
            Err(e) => {
                // Transient failures leave the run as it is, to resume when the event is
                // tried again; others stop it with the error's words.
                if !e.is_transient() {
                    run.status = RunStatus::Stopped {
                        reason: e.to_string(),
                    };
                    if let Err(save) = runs.save(run).await {
                        tracing::warn!(run = %run.id, error = %save, "could not record the failed run");
                    }
                    self.record_outcome(turn, run).await;
                }
                return Err(e);
            }
        };
        match step {
            Step::Answer(text) => {
                #[cfg(feature = "knowledge")]
                let text = if run.sources.is_empty() {
                    text
                } else {
                    crate::knowledge::sources_reply(&text, &run.sources)
                };
                run.status = RunStatus::Done;
                run.answer = text.clone();
                runs.save(run).await?;
                self.remember(runs, run, &key).await;
                self.record_outcome(turn, run).await;
                Ok(self.answer(run, text))
            }
            Step::Approval(call) => {
                run.status = RunStatus::WaitingApproval {
                    call: call.id.clone(),
                };
                runs.save(run).await?;
                Ok(self.ask_approval(run, &call))
            }
            Step::Stopped(reason) => {
                run.status = RunStatus::Stopped {
                    reason: reason.clone(),
                };
                runs.save(run).await?;
                self.record_outcome(turn, run).await;
                Ok(self.answer(run, reason))
            }
            Step::Superseded => {
                tracing::info!(run = %run.id, "answer stopped: a newer message arrived");
                run.status = RunStatus::Stopped {
                    reason: SUPERSEDED.to_owned(),
                };
                runs.save(run).await?;
                self.record_outcome(turn, run).await;
                let mut a = self.answer(run, String::new());
                a.reply.clear();
                Ok(a)
            }
        }
    }

    /// Keep the user's words and the answer in the conversation's history.
    async fn remember(&self, runs: &Runs, run: &RunState, key: &str) {
        let mut history = match runs.history(key).await {
            Ok(h) => h,
            Err(e) => {
                tracing::warn!(error = %e, "llm history unreadable; starting a new one");
                History::default()
            }
        };
        if let Some(user) = run
            .messages
            .iter()
            .rev()
            .find(|m| matches!(m, ChatMessage::User { .. }))
        {
            history.messages.push(user.clone());
        }
        history
            .messages
            .push(ChatMessage::assistant(run.answer.clone()));
        let keep = self.limits.history_messages;
        if history.messages.len() > keep {
            let drop = history.messages.len() - keep;
            history.messages.drain(..drop);
        }
        if let Err(e) = runs.save_history(key, &history).await {
            tracing::warn!(error = %e, "llm history not saved");
        }
        self.count_daily(runs, run).await;
    }

    /// Add the run's tokens to the day's counters of its user and conversation.
    async fn count_daily(&self, runs: &Runs, run: &RunState) {
        let tokens = run
            .usage
            .input_tokens
            .saturating_add(run.usage.output_tokens);
        for key in daily_keys(run) {
            if let Err(e) = runs.add_daily(&key, tokens, run.cost_micros).await {
                tracing::warn!(error = %e, "daily usage not saved");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn steps(
        &self,
        turn: &Turn,
        runs: &Runs,
        run: &mut RunState,
        model: &dyn ChatModel,
        sink: &mut dyn TextSink,
        cancel: &CancellationToken,
    ) -> Result<Step, Error> {
        let started = Instant::now();
        let limits = &self.limits;
        let [user_key, conversation_key] = daily_keys(run);
        for (key, tokens, usd, who) in [
            (
                &user_key,
                limits.max_user_daily_tokens,
                limits.max_user_daily_cost_usd,
                "You have",
            ),
            (
                &conversation_key,
                limits.max_conversation_daily_tokens,
                limits.max_conversation_daily_cost_usd,
                "This conversation has",
            ),
        ] {
            if tokens == 0 && usd <= 0.0 {
                continue;
            }
            let used = runs.daily(key).await?;
            if (tokens > 0 && used.tokens >= tokens)
                || (usd > 0.0 && used.cost_micros >= usd_to_micros(usd))
            {
                return Ok(Step::Stopped(format!(
                    "{who} used today's allowance of the assistant. Please try again tomorrow."
                )));
            }
        }
        let tools: Vec<String> = run
            .calls
            .get(TOOLS_KEY)
            .and_then(|c| serde_json::from_str(&c.call.arguments).ok())
            .unwrap_or_default();
        let registry = turn.services.actions();
        let specs = registry.tool_specs(&tools)?;
        let mut window = self.context(model, &specs);
        let mut shrinks = 0u32;
        loop {
            if cancel.is_cancelled() {
                return Ok(Step::Stopped("(cancelled: a newer message arrived)".into()));
            }
            if self.stop_when_overtaken && flowbot_core::task::superseded().await {
                return Ok(Step::Superseded);
            }
            // Tool calls of the last turn that have no result yet.
            if let Some(ChatMessage::Assistant { tool_calls, .. }) = run.messages.last().cloned()
                && !tool_calls.is_empty()
            {
                if let Some(step) = self
                    .call_tools(turn, runs, run, &tools, &tool_calls)
                    .await?
                {
                    return Ok(step);
                }
                if run.failed_calls >= limits.max_failed_calls {
                    return Ok(Step::Stopped(format!(
                        "I could not complete this: {} tool calls in a row failed.",
                        run.failed_calls
                    )));
                }
            }
            if run.turns >= limits.max_turns {
                return Ok(Step::Stopped(format!(
                    "I stopped after {} steps without reaching an answer.",
                    run.turns
                )));
            }
            let used = run
                .usage
                .input_tokens
                .saturating_add(run.usage.output_tokens);
            if used >= limits.max_run_tokens {
                return Ok(Step::Stopped(format!(
                    "I stopped: this answer used its budget of {} tokens.",
                    limits.max_run_tokens
                )));
            }
            let left = Duration::from_secs(limits.max_run_secs).saturating_sub(started.elapsed());
            if left.is_zero() {
                return Ok(Step::Stopped(format!(
                    "I stopped: this answer took longer than {} seconds.",
                    limits.max_run_secs
                )));
            }
            let request = ChatRequest::new(run.messages.clone()).with_tools(specs.clone());
            let completion = tokio::select! {
                c = tokio::time::timeout(left, self.call_model(model, &request, sink)) => match c {
                    Ok(Err(Error::Model(e))) if e.kind == ModelErrorKind::ContextTooLong => {
                        // The window is smaller than configured (or the count was off):
                        // trim harder and try again, a bounded number of times.
                        let sent = window.trim(&run.messages, None).map_err(context_refusal)?;
                        shrinks += 1;
                        if shrinks > 3 || !window.shrink_after(&e, &sent) {
                            return Err(Error::Model(e));
                        }
                        tracing::info!(run = %run.id, budget = window.budget(), "context too long for the model; trimming");
                        run.messages = window.trim(&run.messages, None).map_err(context_refusal)?.messages;
                        runs.save(run).await?;
                        continue;
                    }
                    Ok(c) => c?,
                    Err(_) => return Ok(Step::Stopped(format!(
                        "I stopped: this answer took longer than {} seconds.",
                        limits.max_run_secs
                    ))),
                },
                _ = cancel.cancelled() => {
                    return Ok(Step::Stopped("(cancelled: a newer message arrived)".into()));
                }
                () = overtaken(), if self.stop_when_overtaken => return Ok(Step::Superseded),
            };
            run.turns = run.turns.saturating_add(1);
            if let Some(u) = completion.usage {
                add_usage(&mut run.usage, &u);
                if let Some(cost) = self.cost_micros(model, &run.usage) {
                    run.cost_micros = cost;
                }
            }
            if let Some(refusal) = completion.refusal.filter(|r| !r.is_empty())
                && completion.tool_calls.is_empty()
            {
                run.messages.push(ChatMessage::assistant(refusal.clone()));
                runs.save(run).await?;
                return Ok(Step::Answer(refusal));
            }
            let calls = completion.tool_calls;
            run.messages.push(ChatMessage::Assistant {
                content: completion.text.clone(),
                tool_calls: calls.clone(),
            });
            for call in &calls {
                run.calls.insert(
                    call.id.clone(),
                    CallRecord {
                        call: call.clone(),
                        result: None,
                        approved: None,
                        finished_at: None,
                    },
                );
            }
            // Checkpoint the model's turn.
            runs.save(run).await?;
            if calls.is_empty() {
                return Ok(Step::Answer(completion.text));
            }
        }
    }

    /// One model call, streamed into `sink`.
    async fn call_model(
        &self,
        model: &dyn ChatModel,
        request: &ChatRequest,
        sink: &mut dyn TextSink,
    ) -> Result<flowbot_core::llm::Completion, Error> {
        let mut stream = model.stream(request).await?;
        let mut builder = CompletionBuilder::default();
        while let Some(event) = stream.next().await {
            let event = event?;
            let text = matches!(event, StreamEvent::TextDelta { .. });
            builder.push(&event);
            if text {
                sink.text(builder.text());
            }
        }
        Ok(builder.finish())
    }

    /// Run the calls that have no result yet; `Some(step)` when one needs approval first.
    async fn call_tools(
        &self,
        turn: &Turn,
        runs: &Runs,
        run: &mut RunState,
        allowed: &[String],
        calls: &[ToolCall],
    ) -> Result<Option<Step>, Error> {
        let registry = turn.services.actions();
        let cx = turn.services.action_context(turn.source());
        let mut ready = Vec::new();
        for call in calls {
            if run.result(&call.id).is_some() {
                continue; // checkpointed: never again
            }
            let approved = run.calls.get(&call.id).and_then(|c| c.approved);
            if self.approval.contains(&call.name) && allowed.contains(&call.name) {
                match approved {
                    None => return Ok(Some(Step::Approval(call.clone()))),
                    Some(false) => {
                        let refused = ToolResult {
                            call_id: call.id.clone(),
                            name: call.name.clone(),
                            content: "The user denied this call.".into(),
                            is_error: true,
                        };
                        self.record(runs, run, refused, false).await?;
                        continue;
                    }
                    Some(true) => {}
                }
            }
            ready.push(call.clone());
        }
        let mut pending: FuturesUnordered<_> = ready
            .into_iter()
            .map(|call| {
                let cx = cx.clone();
                async move {
                    let result = run_tool(registry, &cx, allowed, &call).await;
                    (call, result)
                }
            })
            .collect();
        while let Some((call, result)) = pending.next().await {
            let failed = result.is_err();
            let content = match result {
                Ok(v) => v,
                Err(e) => e,
            };
            tracing::debug!(tool = %call.name, call = %call.id, failed, "tool call finished");
            let result = ToolResult {
                call_id: call.id.clone(),
                name: call.name.clone(),
                content,
                is_error: failed,
            };
            self.record(runs, run, result, failed).await?;
        }
        Ok(None)
    }

    /// Checkpoint one call's result and add it to the conversation.
    async fn record(
        &self,
        runs: &Runs,
        run: &mut RunState,
        result: ToolResult,
        failed: bool,
    ) -> Result<(), Error> {
        run.failed_calls = if failed {
            run.failed_calls.saturating_add(1)
        } else {
            0
        };
        if let Some(record) = run.calls.get_mut(&result.call_id) {
            record.result = Some(result.clone());
            record.finished_at = Some(flowbot_core::clock::now());
        }
        run.messages.push(ChatMessage::Tool(result));
        runs.save(run).await?;
        Ok(())
    }
}

/// The reason recorded for a run stopped by a newer message.
const SUPERSEDED: &str = "a newer message arrived";

/// The key under which a run remembers the tools it may call.
const TOOLS_KEY: &str = "$tools";

#[allow(clippy::needless_pass_by_value)] // used as `map_err(context_refusal)`
fn context_refusal(e: ContextError) -> Error {
    Error::Handler(
        Refusal::new(format!(
            "This conversation is too long for the assistant: {e}"
        ))
        .into(),
    )
}

/// Dollars (checked by [`Limits::check`]: finite, 0 to a million) as micro-dollars.
fn usd_to_micros(usd: f64) -> u64 {
    // In range by the check, so the conversion is exact enough and cannot overflow.
    (usd * 1_000_000.0).round() as u64
}

fn history_key(channel: &str, conversation: &str, user: &str) -> String {
    format!("{channel}:{conversation}:{user}")
}

fn daily_keys(run: &RunState) -> [String; 2] {
    let day = today();
    [
        format!("tokens:user:{}:{}:{day}", run.channel, run.user),
        format!(
            "tokens:conversation:{}:{}:{day}",
            run.channel, run.conversation
        ),
    ]
}

fn add_usage(total: &mut Usage, u: &Usage) {
    total.input_tokens = total.input_tokens.saturating_add(u.input_tokens);
    total.output_tokens = total.output_tokens.saturating_add(u.output_tokens);
    let add = |a: Option<u64>, b: Option<u64>| match (a, b) {
        (None, None) => None,
        (a, b) => Some(a.unwrap_or(0).saturating_add(b.unwrap_or(0))),
    };
    total.cached_input_tokens = add(total.cached_input_tokens, u.cached_input_tokens);
    total.reasoning_tokens = add(total.reasoning_tokens, u.reasoning_tokens);
    total.cache_creation_input_tokens = add(
        total.cache_creation_input_tokens,
        u.cache_creation_input_tokens,
    );
    total.total_tokens = add(total.total_tokens, u.total_tokens);
}

/// Check and run one call: `Ok(output JSON)` or `Err(words for the model)`.
async fn run_tool(
    registry: &flowbot_core::ActionRegistry,
    cx: &flowbot_core::ActionContext,
    allowed: &[String],
    call: &ToolCall,
) -> Result<String, String> {
    if !allowed.iter().any(|a| a == &call.name) {
        tracing::warn!(tool = %call.name, "the model called a tool it was not offered");
        return Err(format!(
            "There is no tool named '{}' here. Available tools: {}.",
            call.name,
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ));
    }
    let input = call.parsed_arguments().map_err(|e| {
        tracing::warn!(tool = %call.name, error = %e, "tool arguments are not JSON");
        format!("The arguments are not valid JSON ({e}). Send a JSON object.")
    })?;
    registry.check_input(&call.name, &input).map_err(|e| {
        tracing::warn!(tool = %call.name, error = %e, "tool arguments do not match the schema");
        format!("{e}")
    })?;
    match registry.call(&call.name, cx, input).await {
        Ok(output) => Ok(output.to_string()),
        Err(e) => {
            let words = e
                .refusal()
                .map(str::to_owned)
                .unwrap_or_else(|| e.to_string());
            Err(words)
        }
    }
}

fn uuid_like() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

struct NoSink;

impl TextSink for NoSink {
    fn text(&mut self, _: &str) {}
}

impl TextSink for Draft {
    fn text(&mut self, so_far: &str) {
        self.update(so_far);
    }
}

#[flowbot_core::async_trait]
impl Assistant for Agent {
    /// Answer `turn`; on a channel that can show an answer while it is written, the text
    /// grows there (a [`Draft`]) and the final reply completes it.
    async fn answer(&self, turn: &Turn, ask: &Ask) -> Result<Answer, Error> {
        let Some(mut draft) = Draft::for_turn(turn) else {
            return self.answer_with(turn, ask, &mut NoSink).await;
        };
        let mut answer = self.answer_with(turn, ask, &mut draft).await?;
        let plain = answer.reply.len() == 1 && answer.reply[0].buttons.is_empty();
        if plain && !answer.text.is_empty() {
            let last = answer.reply.remove(0);
            answer.reply.push(draft.complete(last).await);
        } else if answer.reply.is_empty() && !draft.text().is_empty() {
            // Stopped by a newer message: what was shown stays, marked as cut short.
            let shown = format!("{} …", draft.text().trim_end());
            answer
                .reply
                .push(draft.complete(Outbound::text(shown)).await);
        }
        Ok(answer)
    }
}
