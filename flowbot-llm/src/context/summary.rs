//! Running summaries of what no longer fits: the model folds the turns dropped since the last
//! summary into it.

use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, FinishReason, ModelError, ModelErrorKind,
};

/// What the model is told to do with the previous summary and the dropped turns.
pub const DEFAULT_SUMMARY_INSTRUCTIONS: &str = "You maintain a running summary of a \
conversation between a user and an assistant, so that the assistant can go on without the \
older messages. You get the summary so far (possibly empty) and the messages that were left \
out since. Answer with the updated summary only: keep every fact, name, number, decision, \
open question and promise that may matter later, and what tools were called with what \
result; drop greetings and repetition. Write in the conversation's language, in at most a \
few short paragraphs.";

/// The heading of the system message that carries the summary in a prompt.
pub const SUMMARY_HEADING: &str =
    "Summary of the earlier conversation (its messages were left out):";

/// The system message that puts a summary back into a prompt, ahead of the kept turns.
pub fn summary_message(summary: &str) -> ChatMessage {
    ChatMessage::system(format!("{SUMMARY_HEADING}\n{summary}"))
}

/// Asks a model for a running summary. [`summarize`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Summarizer {
    /// The system message of the request.
    pub instructions: String,
    /// The most tokens the summary may have.
    pub max_tokens: u32,
    /// Each dropped message is cut to this many characters in the request, so that a huge
    /// tool result does not overflow the summarising model's own window.
    pub max_chars_per_message: usize,
}

impl Default for Summarizer {
    fn default() -> Self {
        Summarizer {
            instructions: DEFAULT_SUMMARY_INSTRUCTIONS.to_owned(),
            max_tokens: 1024,
            max_chars_per_message: 4000,
        }
    }
}

/// `text` cut to at most `max` characters, with a mark when it was cut.
fn cut(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        None => text.to_owned(),
        Some((at, _)) => format!("{}… [cut]", &text[..at]),
    }
}

impl Summarizer {
    /// One message as a transcript line.
    fn line(&self, message: &ChatMessage) -> String {
        let max = self.max_chars_per_message;
        match message {
            ChatMessage::System { content } => format!("System: {}", cut(content, max)),
            ChatMessage::User { content } => format!("User: {}", cut(content, max)),
            ChatMessage::Assistant {
                content,
                tool_calls,
            } => {
                let mut s = String::new();
                if !content.is_empty() {
                    s = format!("Assistant: {}", cut(content, max));
                }
                for call in tool_calls {
                    if !s.is_empty() {
                        s.push('\n');
                    }
                    s.push_str(&format!(
                        "Assistant called the tool `{}` with {}",
                        call.name,
                        cut(&call.arguments, max)
                    ));
                }
                if s.is_empty() {
                    s = "Assistant: (no text)".to_owned();
                }
                s
            }
            ChatMessage::Tool(result) => {
                let verb = if result.is_error {
                    "failed"
                } else {
                    "returned"
                };
                format!(
                    "The tool `{}` {verb}: {}",
                    result.name,
                    cut(&result.content, max)
                )
            }
            #[allow(unreachable_patterns)]
            other => format!("Message: {}", cut(other.text(), max)),
        }
    }

    /// The request that asks for the new summary: the previous summary and the dropped
    /// messages as a transcript.
    pub fn request(&self, previous: Option<&str>, dropped: &[ChatMessage]) -> ChatRequest {
        let previous = previous.map(str::trim).filter(|p| !p.is_empty());
        let transcript: Vec<String> = dropped.iter().map(|m| self.line(m)).collect();
        let user = format!(
            "Summary so far:\n{}\n\nMessages left out since:\n{}\n\nWrite the updated summary.",
            previous.unwrap_or("(none yet)"),
            transcript.join("\n")
        );
        ChatRequest::new(vec![
            ChatMessage::system(self.instructions.clone()),
            ChatMessage::user(user),
        ])
        .with_max_tokens(self.max_tokens)
    }

    /// The new running summary: `model`'s fold of `dropped` into `previous`. With nothing
    /// dropped the previous summary comes back as it is, without a call.
    ///
    /// Store the result in the session and remove the dropped messages from the history
    /// ([`Prepared::remaining_history`](super::Prepared::remaining_history)); the next
    /// [`prepare`](super::ContextManager::prepare) then gets the summary and only what came
    /// after, so each message is summarised once.
    pub async fn summarize(
        &self,
        model: &dyn ChatModel,
        previous: Option<&str>,
        dropped: &[ChatMessage],
    ) -> Result<String, ModelError> {
        if dropped.is_empty() {
            return Ok(previous.unwrap_or_default().to_owned());
        }
        let answer = model.complete(&self.request(previous, dropped)).await?;
        let text = answer.text.trim();
        if text.is_empty() {
            return Err(ModelError::new(
                ModelErrorKind::Protocol,
                model.name(),
                "the model answered the summary request without text",
            ));
        }
        if answer.finish == Some(FinishReason::Length) {
            tracing::warn!(
                model = model.name(),
                max_tokens = self.max_tokens,
                "the conversation summary was cut at its token limit"
            );
        }
        Ok(text.to_owned())
    }
}

/// [`Summarizer::summarize`] with the default instructions and limits.
pub async fn summarize(
    model: &dyn ChatModel,
    previous: Option<&str>,
    dropped: &[ChatMessage],
) -> Result<String, ModelError> {
    Summarizer::default()
        .summarize(model, previous, dropped)
        .await
}
