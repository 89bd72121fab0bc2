//! Helpers the provider tests share: a fake provider that cuts its bodies, one call streamed
//! to its end, and what its events add up to.
#![allow(dead_code)] // each test file uses some of these

use flowbot_core::llm::{
    ChatMessage, ChatModel, ChatRequest, Completion, CompletionBuilder, ModelError, StreamEvent,
    Usage,
};
use flowbot_llm::fake::FakeProvider;
use futures_util::StreamExt;

/// A fake provider that writes every body in random pieces of at most 3 bytes, so events,
/// JSON and UTF-8 sequences arrive cut anywhere.
pub(crate) async fn chunked_fake() -> FakeProvider {
    let fake = FakeProvider::start().await.unwrap();
    fake.chunked(3);
    fake
}

/// A request of one user message.
pub(crate) fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(vec![ChatMessage::user(text)])
}

/// Every event of one call, and the error that ended it, if one did. A stream ends with its
/// error: an event after it fails the test.
pub(crate) async fn run(
    model: &dyn ChatModel,
    request: &ChatRequest,
) -> (Vec<StreamEvent>, Option<ModelError>) {
    let mut stream = match model.stream(request).await {
        Ok(s) => s,
        Err(e) => return (Vec::new(), Some(e)),
    };
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(e) => events.push(e),
            Err(e) => {
                assert!(stream.next().await.is_none(), "an event after the error");
                return (events, Some(e));
            }
        }
    }
    (events, None)
}

/// What `events` add up to.
pub(crate) fn completion(events: &[StreamEvent]) -> Completion {
    let mut b = CompletionBuilder::default();
    for e in events {
        b.push(e);
    }
    b.finish()
}

/// The text deltas of `events`, one by one.
pub(crate) fn deltas(events: &[StreamEvent]) -> Vec<&str> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::TextDelta { text } => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The text of `events`, whole.
pub(crate) fn text_of(events: &[StreamEvent]) -> String {
    deltas(events).concat()
}

/// The usage events of `events`, in order.
pub(crate) fn usages(events: &[StreamEvent]) -> Vec<Usage> {
    events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Usage { usage } => Some(*usage),
            _ => None,
        })
        .collect()
}

/// Whether `events` have a `Finished` event.
pub(crate) fn finished(events: &[StreamEvent]) -> bool {
    events
        .iter()
        .any(|e| matches!(e, StreamEvent::Finished { .. }))
}

/// `text` cut into pieces of `n` characters, as every fake streams text.
pub(crate) fn pieces(text: &str, n: usize) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    chars.chunks(n.max(1)).map(|c| c.iter().collect()).collect()
}
