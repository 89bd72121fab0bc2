//! Collecting a stream of events into one answer.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

use super::{ChatStream, FinishReason, ModelError, StreamEvent, ToolCall, Usage};

/// A whole answer: what a stream of [`StreamEvent`]s adds up to.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The provider's response id.
    pub id: Option<String>,
    /// The model that answered, as the provider named it.
    pub model: Option<String>,
    /// The visible text.
    pub text: String,
    /// Reasoning text, when the model showed any.
    pub reasoning: Option<String>,
    /// The refusal's text, when the model refused.
    pub refusal: Option<String>,
    /// Tool calls, in order.
    pub tool_calls: Vec<ToolCall>,
    /// Why it stopped (`None` when the stream ended without saying).
    pub finish: Option<FinishReason>,
    /// The provider's own word for why it stopped.
    pub finish_raw: Option<String>,
    /// Token counts (the last the provider reported).
    pub usage: Option<Usage>,
}

impl Completion {
    /// Read a stream to its end.
    pub async fn collect(mut stream: ChatStream) -> Result<Completion, ModelError> {
        let mut builder = CompletionBuilder::default();
        while let Some(event) = stream.next().await {
            builder.push(&event?);
        }
        Ok(builder.finish())
    }
}

/// Adds events up into a [`Completion`], one at a time (for callers that also forward the
/// events, e.g. to stream text into a chat).
#[derive(Debug, Default)]
pub struct CompletionBuilder {
    done: Completion,
    /// Calls by index: started, maybe finished.
    calls: Vec<Option<(ToolCall, bool)>>,
}

impl CompletionBuilder {
    /// Take one event into account.
    pub fn push(&mut self, event: &StreamEvent) {
        let c = &mut self.done;
        match event {
            StreamEvent::Started { id, model } => {
                c.id = Some(id.clone());
                c.model = Some(model.clone());
            }
            StreamEvent::TextDelta { text } => c.text.push_str(text),
            StreamEvent::ReasoningDelta { text } => {
                c.reasoning.get_or_insert_with(String::new).push_str(text)
            }
            StreamEvent::RefusalDelta { text } => {
                c.refusal.get_or_insert_with(String::new).push_str(text)
            }
            StreamEvent::ToolCallStarted { index, id, name } => {
                let slot = self.slot(*index);
                *slot = Some((
                    ToolCall {
                        id: id.clone(),
                        name: name.clone(),
                        arguments: String::new(),
                    },
                    false,
                ));
            }
            StreamEvent::ToolCallDelta { index, arguments } => {
                if let Some((call, false)) = self.slot(*index) {
                    call.arguments.push_str(arguments);
                }
            }
            StreamEvent::ToolCallFinished { index, call } => {
                *self.slot(*index) = Some((call.clone(), true));
            }
            StreamEvent::Usage { usage } => c.usage = Some(*usage),
            StreamEvent::Finished { reason, raw } => {
                c.finish = Some(reason.clone());
                c.finish_raw = Some(raw.clone());
            }
            StreamEvent::Raw { .. } => {}
        }
    }

    fn slot(&mut self, index: usize) -> &mut Option<(ToolCall, bool)> {
        if self.calls.len() <= index {
            self.calls.resize(index + 1, None);
        }
        &mut self.calls[index]
    }

    /// The visible text so far.
    pub fn text(&self) -> &str {
        &self.done.text
    }

    /// The answer. Calls that started but never finished keep the arguments received.
    pub fn finish(mut self) -> Completion {
        self.done.tool_calls = self.calls.into_iter().flatten().map(|(c, _)| c).collect();
        self.done
    }
}
