//! Context windows: counting a prompt's tokens, trimming a conversation to what the model
//! takes, filtering history by relevance, and a running summary of what had to go.
//!
//! ```
//! # async fn demo(history: Vec<flowbot_core::llm::ChatMessage>, model: &dyn flowbot_core::llm::ChatModel) -> Result<(), Box<dyn std::error::Error>> {
//! use flowbot_llm::context::{ContextManager, summarize};
//! // gpt-4o-mini: a 128k window; keep 4k for the answer.
//! let manager = ContextManager::for_model("openai/gpt-4o-mini", 128_000, 4_000);
//! let mut summary: Option<String> = None; // stored in the session
//! let prepared = manager.prepare(&history, summary.as_deref()).await?;
//! // … call the model with prepared.messages …
//! if prepared.summary_needed {
//!     let new = summarize(model, summary.as_deref(), &prepared.to_summarize()).await?;
//!     summary = Some(new);
//!     let history = prepared.remaining_history(&history); // store this instead
//! }
//! # Ok(()) }
//! ```
//!
//! # How a conversation is trimmed
//!
//! The budget is the model's context window less the room reserved for the answer (less
//! what the tools' definitions cost, counted too). System messages are always kept, in their
//! places. The other messages are grouped into turns: a user message and everything after it
//! up to the next user message (the assistant's answers, its tool calls and their results).
//! An assistant message that calls tools and the results of those calls are one unit and go
//! together, wherever the results are. Then, while the prompt is over the budget:
//!
//! 1. the oldest turn before the latest user message goes, whole;
//! 2. then, inside the latest turn, the oldest tool-calling steps between the latest user
//!    message and the latest step;
//! 3. then the running summary;
//!
//! and when the system messages, the latest user message and the latest step still do not
//! fit, [`ContextError::LatestTooLarge`] says by how much. What went is reported in
//! [`Prepared::dropped`], with [`DropReason::Budget`]: those are the messages to fold into
//! the summary. A [`RelevanceFilter`] then looks at the older turns that fit and may leave
//! out those unrelated to the latest user message ([`DropReason::Irrelevant`]); they are not
//! summarised and stay in the history.

mod count;
mod relevance;
mod summary;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::Arc;

use flowbot_core::llm::{ChatMessage, ModelError, ModelErrorKind, ToolSpec};

#[cfg(feature = "tiktoken")]
pub use count::{Encoding, TiktokenCounter};
pub use count::{EstimateCounter, TokenCounter, counter_for};
pub use relevance::{EmbeddingFilter, KeywordFilter, RelevanceFilter, keywords};
pub use summary::{
    DEFAULT_SUMMARY_INSTRUCTIONS, SUMMARY_HEADING, Summarizer, summarize, summary_message,
};

/// Why a message was left out of a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DropReason {
    /// It did not fit: fold it into the running summary and remove it from the history.
    Budget,
    /// The relevance filter found it unrelated to the latest user message; it stays in the
    /// history.
    Irrelevant,
}

/// A message left out of a prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Dropped {
    /// Its position in the messages given to [`ContextManager::prepare`].
    pub index: usize,
    /// The message.
    pub message: ChatMessage,
    /// Why.
    pub reason: DropReason,
}

/// A prompt that fits, and what was left out of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Prepared {
    /// The messages to send: the system messages, the summary (as a system message after
    /// the leading ones), the kept turns.
    pub messages: Vec<ChatMessage>,
    /// What was left out, in the order of the input.
    pub dropped: Vec<Dropped>,
    /// Messages were dropped for the budget: refresh the running summary with
    /// [`to_summarize`](Prepared::to_summarize).
    pub summary_needed: bool,
    /// The summary given to `prepare` is in [`messages`](Prepared::messages) (false when
    /// there was none or it did not fit).
    pub summary_included: bool,
    /// What the prompt costs: the messages and the tools' definitions.
    pub tokens: usize,
    /// The most the prompt could cost.
    pub budget: usize,
    /// Whether [`tokens`](Prepared::tokens) is an exact count or an estimate.
    pub exact: bool,
}

impl Prepared {
    /// The messages dropped for the budget, in order: what the summary must take in.
    pub fn to_summarize(&self) -> Vec<ChatMessage> {
        self.dropped
            .iter()
            .filter(|d| d.reason == DropReason::Budget)
            .map(|d| d.message.clone())
            .collect()
    }

    /// `history` (the messages given to `prepare`) without those dropped for the budget:
    /// what to store once their summary is stored.
    pub fn remaining_history(&self, history: &[ChatMessage]) -> Vec<ChatMessage> {
        let gone: BTreeSet<usize> = self
            .dropped
            .iter()
            .filter(|d| d.reason == DropReason::Budget)
            .map(|d| d.index)
            .collect();
        history
            .iter()
            .enumerate()
            .filter(|(i, _)| !gone.contains(i))
            .map(|(_, m)| m.clone())
            .collect()
    }
}

/// Why no prompt fits.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The window has no room left for messages.
    #[error(
        "the context window of {window} tokens has no room for messages: {reserved} are \
         reserved for the answer and {tools} go to the tools' definitions"
    )]
    NoRoom {
        /// The window (or the shrunk limit).
        window: usize,
        /// Reserved for the answer.
        reserved: usize,
        /// The tools' definitions.
        tools: usize,
    },
    /// Even the system messages, the latest user message and the latest step do not fit.
    #[error(
        "the latest user message does not fit the context window: with the system messages \
         and the tools it needs {needed} tokens{}, and the budget is {budget} tokens",
        if *.exact { "" } else { " (estimated)" }
    )]
    LatestTooLarge {
        /// What the smallest prompt costs.
        needed: usize,
        /// The budget.
        budget: usize,
        /// Whether `needed` is an exact count.
        exact: bool,
    },
    /// The relevance filter failed.
    #[error("the relevance filter failed: {0}")]
    Filter(#[source] ModelError),
}

/// One unit of history: an assistant message with the results of its tool calls, or a
/// single message. Indices into the input, ascending.
#[derive(Debug, Default)]
struct Unit {
    members: Vec<usize>,
}

/// The input, grouped.
struct Layout {
    /// Indices of system messages.
    system: Vec<usize>,
    units: Vec<Unit>,
    /// Units by turn, in order.
    turns: Vec<Vec<usize>>,
    /// The turn that begins with the latest user message (the last turn), if any.
    latest_has_user: bool,
}

fn layout(messages: &[ChatMessage]) -> Layout {
    let mut system = Vec::new();
    let mut units: Vec<Unit> = Vec::new();
    let mut turns: Vec<Vec<usize>> = Vec::new();
    let mut call_owner: HashMap<&str, usize> = HashMap::new();
    let mut last_user_turn = None;
    for (i, m) in messages.iter().enumerate() {
        match m {
            ChatMessage::System { .. } => system.push(i),
            ChatMessage::Tool(result) => {
                let owner = call_owner
                    .get(result.call_id.as_str())
                    .copied()
                    .or(units.len().checked_sub(1));
                match owner {
                    Some(u) => units[u].members.push(i),
                    None => {
                        units.push(Unit { members: vec![i] });
                        turns.push(vec![units.len() - 1]);
                    }
                }
            }
            other => {
                let u = units.len();
                units.push(Unit { members: vec![i] });
                if let ChatMessage::Assistant { tool_calls, .. } = other {
                    for call in tool_calls {
                        call_owner.insert(call.id.as_str(), u);
                    }
                }
                let is_user = matches!(other, ChatMessage::User { .. });
                if is_user || turns.is_empty() {
                    turns.push(Vec::new());
                }
                if is_user {
                    last_user_turn = Some(turns.len() - 1);
                }
                if let Some(t) = turns.last_mut() {
                    t.push(u);
                }
            }
        }
    }
    for unit in &mut units {
        unit.members.sort_unstable();
    }
    Layout {
        system,
        units,
        latest_has_user: last_user_turn.is_some_and(|t| t + 1 == turns.len()),
        turns,
    }
}

/// Trims conversations to a model's context window. Cheap to clone.
#[derive(Clone)]
pub struct ContextManager {
    counter: Arc<dyn TokenCounter>,
    window: usize,
    reserve_output: usize,
    tool_tokens: usize,
    limit: Option<usize>,
    shrink_percent: usize,
    filter: Option<Arc<dyn RelevanceFilter>>,
}

impl fmt::Debug for ContextManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContextManager")
            .field("counter", &self.counter)
            .field("window", &self.window)
            .field("reserve_output", &self.reserve_output)
            .field("tool_tokens", &self.tool_tokens)
            .field("limit", &self.limit)
            .field("filter", &self.filter)
            .finish()
    }
}

impl ContextManager {
    /// A manager for a model whose window is `context_window` tokens, keeping
    /// `reserve_output` of them for the answer, counting with `counter`.
    pub fn new(
        counter: Arc<dyn TokenCounter>,
        context_window: usize,
        reserve_output: usize,
    ) -> Self {
        ContextManager {
            counter,
            window: context_window,
            reserve_output,
            tool_tokens: 0,
            limit: None,
            shrink_percent: 75,
            filter: None,
        }
    }

    /// A manager counting with [`counter_for`]`(model)`.
    pub fn for_model(model: &str, context_window: usize, reserve_output: usize) -> Self {
        ContextManager::new(counter_for(model), context_window, reserve_output)
    }

    /// Count these tools' definitions against the budget (they are sent with every call).
    pub fn with_tools(mut self, tools: &[ToolSpec]) -> Self {
        self.tool_tokens = self.counter.count_tools(tools);
        self
    }

    /// Filter older turns by relevance in [`prepare`](ContextManager::prepare).
    pub fn with_filter(mut self, filter: Arc<dyn RelevanceFilter>) -> Self {
        self.filter = Some(filter);
        self
    }

    /// How much of the budget [`shrink_after`](ContextManager::shrink_after) keeps, in
    /// percent (1 to 99; the default is 75).
    pub fn with_shrink_percent(mut self, percent: u8) -> Self {
        self.shrink_percent = usize::from(percent.clamp(1, 99));
        self
    }

    /// The counter.
    pub fn counter(&self) -> &Arc<dyn TokenCounter> {
        &self.counter
    }

    /// The most tokens a prompt (messages and tools) may cost: the window less the reserve,
    /// or less after [`shrink_after`](ContextManager::shrink_after).
    pub fn budget(&self) -> usize {
        let room = self.window.saturating_sub(self.reserve_output);
        self.limit.map_or(room, |l| l.min(room))
    }

    /// After a call failed with [`ModelErrorKind::ContextTooLong`] (the counts were off, or
    /// the window is smaller than configured), lower the budget to 75 % of what that prompt
    /// cost, so the retry's [`prepare`](ContextManager::prepare) drops more. True when the
    /// budget was lowered; false for any other error, or when there is nothing left to
    /// lower.
    pub fn shrink_after(&mut self, error: &ModelError, sent: &Prepared) -> bool {
        if error.kind != ModelErrorKind::ContextTooLong {
            return false;
        }
        let base = self.budget().min(sent.tokens);
        let lowered = base.saturating_mul(self.shrink_percent) / 100;
        if lowered == 0 || lowered >= self.budget() {
            return false;
        }
        self.limit = Some(lowered);
        true
    }

    /// Trim `messages` (the history not yet folded into `summary`) to the budget, without
    /// the relevance filter.
    pub fn trim(
        &self,
        messages: &[ChatMessage],
        summary: Option<&str>,
    ) -> Result<Prepared, ContextError> {
        self.plan(messages, summary)
            .map(|plan| plan.finish(messages))
    }

    /// Trim `messages` (the history not yet folded into `summary`, oldest first) to the
    /// budget, then let the relevance filter, if any, leave out older turns unrelated to
    /// the latest user message. See the [module](self) for the rules.
    pub async fn prepare(
        &self,
        messages: &[ChatMessage],
        summary: Option<&str>,
    ) -> Result<Prepared, ContextError> {
        let mut plan = self.plan(messages, summary)?;
        if let Some(filter) = &self.filter {
            plan.filter(filter.as_ref(), messages).await?;
        }
        Ok(plan.finish(messages))
    }

    fn plan<'a>(
        &'a self,
        messages: &[ChatMessage],
        summary: Option<&str>,
    ) -> Result<Plan<'a>, ContextError> {
        let budget = self.budget();
        let priming = self.counter.reply_priming();
        let fixed_min = self.tool_tokens.saturating_add(priming);
        if budget <= fixed_min {
            return Err(ContextError::NoRoom {
                window: self.limit.unwrap_or(self.window),
                reserved: self.reserve_output,
                tools: self.tool_tokens,
            });
        }
        let cost: Vec<usize> = messages
            .iter()
            .map(|m| self.counter.count_message(m))
            .collect();
        let layout = layout(messages);
        let unit_cost: Vec<usize> = layout
            .units
            .iter()
            .map(|u| {
                u.members
                    .iter()
                    .fold(0usize, |n, &i| n.saturating_add(cost[i]))
            })
            .collect();
        let summary_msg = summary
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(summary_message);
        let summary_cost = summary_msg
            .as_ref()
            .map_or(0, |m| self.counter.count_message(m));
        let system_cost = layout
            .system
            .iter()
            .fold(0usize, |n, &i| n.saturating_add(cost[i]));
        let mut total = fixed_min
            .saturating_add(system_cost)
            .saturating_add(summary_cost)
            .saturating_add(unit_cost.iter().fold(0usize, |n, c| n.saturating_add(*c)));

        let mut kept_units = vec![true; layout.units.len()];
        let mut budget_dropped: Vec<usize> = Vec::new();
        let n_turns = layout.turns.len();
        // The latest turn is protected when it starts with the latest user message; without
        // any user message, all of history is the latest turn and only its last unit is
        // protected.
        let (older, latest): (&[Vec<usize>], Option<&Vec<usize>>) = if layout.latest_has_user {
            (&layout.turns[..n_turns - 1], layout.turns.last())
        } else {
            (&[], None)
        };
        let mut drop_unit = |u: usize, total: &mut usize, kept: &mut Vec<bool>| {
            kept[u] = false;
            *total = total.saturating_sub(unit_cost[u]);
            budget_dropped.push(u);
        };
        // 1. Whole older turns, oldest first.
        let mut older_kept_from = 0;
        for turn in older {
            if total <= budget {
                break;
            }
            for &u in turn {
                drop_unit(u, &mut total, &mut kept_units);
            }
            older_kept_from += 1;
        }
        // 2. Steps inside the latest turn, between its user message (or its start) and its
        //    last step.
        if total > budget {
            let steps: Vec<usize> = match latest {
                Some(turn) => turn.iter().skip(1).copied().collect(),
                None => layout.turns.iter().flatten().copied().collect(),
            };
            if let Some((_, middle)) = steps.split_last() {
                for &u in middle {
                    if total <= budget {
                        break;
                    }
                    drop_unit(u, &mut total, &mut kept_units);
                }
            }
        }
        // 3. The summary.
        let mut summary_included = summary_msg.is_some();
        if total > budget && summary_included {
            total = total.saturating_sub(summary_cost);
            summary_included = false;
        }
        if total > budget {
            return Err(ContextError::LatestTooLarge {
                needed: total,
                budget,
                exact: self.counter.is_exact(),
            });
        }
        let older_kept = older[older_kept_from..].to_vec();
        Ok(Plan {
            manager: self,
            layout,
            kept_units,
            budget_dropped,
            irrelevant: Vec::new(),
            older_kept,
            unit_cost,
            summary: summary_msg.filter(|_| summary_included),
            total,
            budget,
        })
    }
}

/// A trimming decision, before the messages are assembled.
struct Plan<'a> {
    manager: &'a ContextManager,
    layout: Layout,
    kept_units: Vec<bool>,
    budget_dropped: Vec<usize>,
    irrelevant: Vec<usize>,
    /// Older turns that fit (units), oldest first.
    older_kept: Vec<Vec<usize>>,
    unit_cost: Vec<usize>,
    summary: Option<ChatMessage>,
    total: usize,
    budget: usize,
}

impl Plan<'_> {
    fn transcript(&self, messages: &[ChatMessage], turn: &[usize]) -> String {
        let mut lines = Vec::new();
        for &u in turn {
            for &i in &self.layout.units[u].members {
                let m = &messages[i];
                let role = match m {
                    ChatMessage::User { .. } => "user",
                    ChatMessage::Assistant { .. } => "assistant",
                    ChatMessage::Tool(_) => "tool",
                    _ => "system",
                };
                let mut line = format!("{role}: {}", m.text());
                if let ChatMessage::Assistant { tool_calls, .. } = m {
                    for call in tool_calls {
                        line.push_str(&format!(" [{} {}]", call.name, call.arguments));
                    }
                }
                lines.push(line);
            }
        }
        lines.join("\n")
    }

    async fn filter(
        &mut self,
        filter: &dyn RelevanceFilter,
        messages: &[ChatMessage],
    ) -> Result<(), ContextError> {
        if self.older_kept.is_empty() || !self.layout.latest_has_user {
            return Ok(());
        }
        let latest = self
            .layout
            .turns
            .last()
            .and_then(|t| t.first())
            .and_then(|&u| self.layout.units[u].members.first())
            .map(|&i| messages[i].text())
            .unwrap_or_default();
        let texts: Vec<String> = self
            .older_kept
            .iter()
            .map(|t| self.transcript(messages, t))
            .collect();
        let keep = filter
            .relevant(latest, &texts)
            .await
            .map_err(ContextError::Filter)?;
        if keep.len() != texts.len() {
            return Err(ContextError::Filter(ModelError::new(
                ModelErrorKind::Protocol,
                format!("{filter:?}"),
                format!(
                    "the filter answered for {} turns, asked about {}",
                    keep.len(),
                    texts.len()
                ),
            )));
        }
        for (turn, keep) in self.older_kept.iter().zip(keep) {
            if !keep {
                for &u in turn {
                    self.kept_units[u] = false;
                    self.total = self.total.saturating_sub(self.unit_cost[u]);
                    self.irrelevant.push(u);
                }
            }
        }
        Ok(())
    }

    fn finish(self, messages: &[ChatMessage]) -> Prepared {
        let mut keep = vec![false; messages.len()];
        for &i in &self.layout.system {
            keep[i] = true;
        }
        for (u, unit) in self.layout.units.iter().enumerate() {
            if self.kept_units[u] {
                for &i in &unit.members {
                    keep[i] = true;
                }
            }
        }
        let mut dropped = Vec::new();
        for (units, reason) in [
            (&self.budget_dropped, DropReason::Budget),
            (&self.irrelevant, DropReason::Irrelevant),
        ] {
            for &u in units {
                for &i in &self.layout.units[u].members {
                    dropped.push(Dropped {
                        index: i,
                        message: messages[i].clone(),
                        reason,
                    });
                }
            }
        }
        dropped.sort_by_key(|d| d.index);
        // The summary goes after the leading system messages.
        let lead = messages
            .iter()
            .take_while(|m| matches!(m, ChatMessage::System { .. }))
            .count();
        let mut out = Vec::with_capacity(messages.len() + 1);
        for (i, m) in messages.iter().enumerate() {
            if i == lead
                && let Some(s) = &self.summary
            {
                out.push(s.clone());
            }
            if keep[i] {
                out.push(m.clone());
            }
        }
        if lead == messages.len()
            && let Some(s) = &self.summary
        {
            out.push(s.clone());
        }
        Prepared {
            messages: out,
            summary_needed: !self.budget_dropped.is_empty(),
            summary_included: self.summary.is_some(),
            dropped,
            tokens: self.total,
            budget: self.budget,
            exact: self.manager.counter.is_exact(),
        }
    }
}
