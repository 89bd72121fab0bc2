//! Answers shown while they are written: [`Draft`] and what channels do with one.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::channel::{ChannelSender, Senders, SentId};
use crate::message::{Format, MessageId, Outbound, Target, UserId};
use crate::router::Turn;

/// How often an edit-capable channel that says nothing else has its draft edited
/// ([`ChannelSender::streaming`]'s default).
pub const DEFAULT_EDIT_INTERVAL: Duration = Duration::from_secs(2);

/// Consecutive failed updates after which a draft stops being shown (its final message is
/// still delivered).
const MAX_FAILURES: u32 = 3;

/// How a channel shows an answer while it is being written (see [`Draft`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Streaming {
    /// Only the final message is shown.
    Final,
    /// The text so far goes to [`ChannelSender::send_partial`] at most once per `interval`;
    /// newer text replaces text not yet shown.
    Partial {
        /// The shortest time between two partial texts.
        interval: Duration,
    },
    /// The first text is sent as a message, then edited as the text grows, at most once per
    /// `interval` (the platform's limit for one conversation); the final message edits it
    /// once more, no sooner than `interval` after the last edit.
    Edit {
        /// The shortest time between the end of one request and the start of the next.
        interval: Duration,
    },
}

/// What an [`Outbound`] completing a draft carries: plain data, so a delivery queued and
/// retried after a restart still replaces the draft.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DraftRef {
    /// The draft's id (web chat's frames name it).
    pub id: String,
    /// The platform's message showing the draft, on an edit-capable channel once the first
    /// text was sent: delivery edits it into the final message instead of sending another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shown: Option<SentId>,
}

/// An answer shown while it is written: a draft shows the text of an answer that is
/// generated piece by piece (by a language model), and the final [`Outbound`] completes it.
///
/// How a draft is shown depends on the channel ([`ChannelSender::streaming`]):
///
/// - [`Streaming::Partial`] (web chat): each new text so far goes to
///   [`ChannelSender::send_partial`] (web chat's `partial` frames), and the final message names
///   the draft it completes;
/// - [`Streaming::Edit`] (Telegram, Slack, Discord): the first text is sent as a message, which
///   is edited as the text grows, never more often than the channel's interval; the final
///   message replaces it ([`ChannelSender::finish_draft`]) instead of being sent again;
/// - [`Streaming::Final`]: nothing is shown until the final message.
///
/// Showing a draft is best effort: a failed update is logged and never fails the answer, and
/// only the final message is stored in the history (the pipeline stores what it delivers).
///
/// ```no_run
/// # async fn answer(turn: &flowbot_core::Turn) -> flowbot_core::Result<flowbot_core::Reply> {
/// use flowbot_core::{Draft, Outbound, Reply};
///
/// let Some(mut draft) = Draft::for_turn(turn) else {
///     return Ok(Reply::none());
/// };
/// for piece in ["Hello", ", ", "world"] {
///     draft.push(piece); // returns at once; the draft is shown in the background
/// }
/// let text = draft.text().to_owned();
/// Ok(Reply::from(draft.complete(Outbound::text(text)).await))
/// # }
/// ```
///
/// [`update`](Draft::update) and [`push`](Draft::push) return at once: the text is shown by a
/// background task, which keeps only the newest text, so a slow platform never slows the
/// generation down. [`complete`](Draft::complete) (or [`finish`](Draft::finish)) ends it.
/// A draft dropped without finishing stops being updated and its message stays as it was.
pub struct Draft {
    id: String,
    text: String,
    /// Target, format, reply and recipient of every shown text.
    template: Outbound,
    sender: Option<Arc<dyn ChannelSender>>,
    streaming: Streaming,
    worker: Option<Worker>,
}

struct Worker {
    text: watch::Sender<String>,
    finish: CancellationToken,
    task: JoinHandle<Shown>,
}

/// What the background task showed.
#[derive(Debug, Default)]
struct Shown {
    /// The message sent (edit-capable channels).
    sent: Option<SentId>,
    /// When the last request ended.
    last: Option<Instant>,
}

impl std::fmt::Debug for Draft {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Draft")
            .field("id", &self.id)
            .field("target", &self.template.target)
            .field("streaming", &self.streaming)
            .field("chars", &self.text.chars().count())
            .field("running", &self.worker.is_some())
            .finish()
    }
}

impl Draft {
    /// A draft shown in `target`, through the sender of its channel in `senders` (a channel
    /// that is not registered shows nothing).
    pub fn new(senders: &Senders, target: Target) -> Draft {
        let sender = senders.get(&target.channel).cloned();
        let streaming = sender
            .as_ref()
            .map_or(Streaming::Final, |s| s.streaming(&target));
        let id = uuid::Uuid::now_v7().to_string();
        Draft {
            template: Outbound {
                target: Some(target),
                draft: Some(DraftRef {
                    id: id.clone(),
                    shown: None,
                }),
                ..Outbound::default()
            },
            id,
            text: String::new(),
            sender,
            streaming,
            worker: None,
        }
    }

    /// A draft of the answer to `turn`, in its conversation and as a reply to its message;
    /// `None` when the event belongs to no conversation.
    pub fn for_turn(turn: &Turn) -> Option<Draft> {
        let mut draft = Draft::new(turn.services.senders(), turn.source()?);
        draft.template.reply_to = turn.event.dedupe_id().cloned();
        draft.template.recipient = turn.event.sender().map(|s| s.id.clone());
        Some(draft)
    }

    /// Show the text in `format` (plain by default; language models usually write Markdown).
    pub fn format(mut self, format: Format) -> Draft {
        self.template.format = format;
        self
    }

    /// Show the first text as a reply to `message`.
    pub fn reply_to(mut self, message: MessageId) -> Draft {
        self.template.reply_to = Some(message);
        self
    }

    /// The user the answer is for.
    pub fn recipient(mut self, user: UserId) -> Draft {
        self.template.recipient = Some(user);
        self
    }

    /// The draft's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The text so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// How the channel shows this draft.
    pub fn streaming(&self) -> Streaming {
        self.streaming
    }

    /// Show `text_so_far` (the whole answer so far, replacing what was shown).
    pub fn update(&mut self, text_so_far: &str) {
        if text_so_far == self.text {
            return;
        }
        self.text.clear();
        self.text.push_str(text_so_far);
        if let Some(w) = &self.worker {
            w.text.send_modify(|t| {
                t.clear();
                t.push_str(text_so_far);
            });
        } else {
            self.start();
        }
    }

    /// Add `delta` to the text and show it.
    pub fn push(&mut self, delta: &str) {
        if delta.is_empty() {
            return;
        }
        self.text.push_str(delta);
        if let Some(w) = &self.worker {
            w.text.send_modify(|t| t.push_str(delta));
        } else {
            self.start();
        }
    }

    /// Start showing the text in the background, unless there is nothing to show.
    fn start(&mut self) {
        if self.text.trim().is_empty() {
            return;
        }
        let Some(sender) = self.sender.clone() else {
            return;
        };
        if matches!(self.streaming, Streaming::Final) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(draft = %self.id, "a draft needs a Tokio runtime to be shown; only the final message will be");
            self.streaming = Streaming::Final;
            return;
        };
        let (tx, rx) = watch::channel(self.text.clone());
        let finish = CancellationToken::new();
        let task = runtime.spawn(show(
            sender,
            self.template.clone(),
            self.streaming,
            rx,
            finish.clone(),
        ));
        self.worker = Some(Worker {
            text: tx,
            finish,
            task,
        });
    }

    /// Stop showing the draft: wait for a request in flight (so the message it sends is
    /// known), and on an edit-capable channel until the final edit keeps to its interval.
    /// Text not shown yet is left to the final message. The reference goes in the final
    /// [`Outbound::draft`] (see [`Draft::complete`]).
    pub async fn finish(mut self) -> DraftRef {
        let mut shown = None;
        if let Some(w) = self.worker.take() {
            w.finish.cancel();
            match w.task.await {
                Ok(s) => {
                    if let (Streaming::Edit { interval }, Some(_), Some(last)) =
                        (self.streaming, &s.sent, s.last)
                    {
                        tokio::time::sleep_until(after(last, interval)).await;
                    }
                    shown = s.sent;
                }
                Err(e) => {
                    tracing::warn!(draft = %self.id, error = %e, "showing a draft stopped abnormally")
                }
            }
        }
        DraftRef {
            id: std::mem::take(&mut self.id),
            shown,
        }
    }

    /// `message` completing this draft: it replaces the shown draft when delivered.
    pub async fn complete(self, mut message: Outbound) -> Outbound {
        message.draft = Some(self.finish().await);
        message
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        if let Some(w) = &self.worker {
            w.finish.cancel();
        }
    }
}

/// The longest interval kept to: a channel asking for more gets this.
const MAX_INTERVAL: Duration = Duration::from_secs(60);

/// `at + interval` (at most [`MAX_INTERVAL`]).
fn after(at: Instant, interval: Duration) -> Instant {
    at.checked_add(interval.min(MAX_INTERVAL)).unwrap_or(at)
}

/// The background task: show each newest text, keeping to the interval, until finished.
async fn show(
    sender: Arc<dyn ChannelSender>,
    template: Outbound,
    streaming: Streaming,
    mut text: watch::Receiver<String>,
    finish: CancellationToken,
) -> Shown {
    let (interval, edit) = match streaming {
        Streaming::Partial { interval } => (interval, false),
        Streaming::Edit { interval } => (interval, true),
        _ => return Shown::default(),
    };
    let draft = template.draft.as_ref().map_or("", |d| d.id.as_str());
    let mut shown = Shown::default();
    let mut last_text = String::new();
    let mut failures = 0u32;
    // The first text is waiting already.
    text.mark_changed();
    loop {
        tokio::select! {
            biased;
            () = finish.cancelled() => break,
            changed = text.changed() => if changed.is_err() { break },
        }
        let now = text.borrow_and_update().clone();
        if now == last_text || now.trim().is_empty() {
            continue;
        }
        let mut out = template.clone();
        out.text = now;
        let result = match (&shown.sent, edit) {
            (_, false) => sender.send_partial(&out).await,
            (None, true) => match sender.send(&out).await {
                Ok(id) => {
                    shown.sent = Some(id);
                    Ok(())
                }
                Err(e) => {
                    // Sending again could show the draft twice; the final message comes
                    // as usual.
                    tracing::warn!(draft, error = %e, "sending a draft failed; only the final message will be shown");
                    shown.last = Some(Instant::now());
                    break;
                }
            },
            (Some(id), true) => sender.edit(id, &out).await,
        };
        shown.last = Some(Instant::now());
        match result {
            Ok(()) => {
                failures = 0;
                last_text = out.text;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(draft, error = %e, failures, "showing a draft failed");
                if failures >= MAX_FAILURES {
                    tracing::warn!(
                        draft,
                        "stopped showing a draft; only the final message will be shown"
                    );
                    break;
                }
            }
        }
        if !interval.is_zero() {
            tokio::select! {
                biased;
                () = finish.cancelled() => break,
                () = tokio::time::sleep_until(after(Instant::now(), interval)) => {}
            }
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::channel::Capabilities;
    use crate::error::{Error, Result};
    use crate::message::ChannelName;

    /// A channel that keeps what it was asked to do, each request taking 50 ms.
    struct Recorder {
        streaming: Streaming,
        calls: Mutex<Vec<Call>>,
        fail_sends: AtomicBool,
        fail_edits: AtomicBool,
    }

    #[derive(Debug, Clone)]
    struct Call {
        what: &'static str,
        text: String,
        draft: Option<DraftRef>,
        started: Instant,
        ended: Instant,
    }

    const LATENCY: Duration = Duration::from_millis(50);

    impl Recorder {
        fn new(streaming: Streaming) -> Arc<Recorder> {
            Arc::new(Recorder {
                streaming,
                calls: Mutex::new(Vec::new()),
                fail_sends: AtomicBool::new(false),
                fail_edits: AtomicBool::new(false),
            })
        }

        async fn record(&self, what: &'static str, message: &Outbound, fail: bool) -> Result<()> {
            let started = Instant::now();
            tokio::time::sleep(LATENCY).await;
            self.calls.lock().unwrap().push(Call {
                what,
                text: message.text.clone(),
                draft: message.draft.clone(),
                started,
                ended: Instant::now(),
            });
            if fail {
                return Err(Error::channel("rec", format!("{what} refused")));
            }
            Ok(())
        }

        fn calls(&self) -> Vec<Call> {
            self.calls.lock().unwrap().clone()
        }

        fn whats(&self) -> Vec<&'static str> {
            self.calls().iter().map(|c| c.what).collect()
        }
    }

    #[async_trait]
    impl ChannelSender for Arc<Recorder> {
        async fn send(&self, message: &Outbound) -> Result<SentId> {
            let fail = self.fail_sends.load(Ordering::Relaxed);
            self.record("send", message, fail).await?;
            Ok(SentId(format!("m{}", self.calls().len())))
        }

        async fn edit(&self, id: &SentId, message: &Outbound) -> Result<()> {
            assert_eq!(id.0, "m1", "edits go to the draft's message");
            let fail = self.fail_edits.load(Ordering::Relaxed);
            self.record("edit", message, fail).await
        }

        async fn send_partial(&self, partial: &Outbound) -> Result<()> {
            self.record("partial", partial, false).await
        }

        fn capabilities(&self) -> Capabilities {
            Capabilities {
                edit: matches!(self.streaming, Streaming::Edit { .. }),
                ..Capabilities::default()
            }
        }

        fn streaming(&self, target: &Target) -> Streaming {
            assert_eq!(target.conversation.as_str(), "c1");
            self.streaming
        }
    }

    fn senders(recorder: &Arc<Recorder>) -> Senders {
        let mut senders = Senders::default();
        senders
            .insert(ChannelName::from("rec"), Arc::new(recorder.clone()))
            .unwrap();
        senders
    }

    fn target() -> Target {
        Target {
            channel: "rec".into(),
            conversation: "c1".into(),
            thread: None,
        }
    }

    /// Write `words` one every 100 ms, as a model would.
    async fn generate(draft: &mut Draft, words: usize) -> String {
        let mut text = String::new();
        for i in 0..words {
            let word = format!("w{i} ");
            text.push_str(&word);
            draft.push(&word);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(draft.text(), text);
        text
    }

    #[tokio::test(start_paused = true)]
    async fn an_edit_channel_sees_one_message_edited_no_faster_than_its_interval() {
        let interval = Duration::from_secs(1);
        let rec = Recorder::new(Streaming::Edit { interval });
        let senders = senders(&rec);
        let mut draft = Draft::new(&senders, target()).format(Format::Markdown);
        let text = generate(&mut draft, 35).await;
        let out = draft
            .complete(Outbound::markdown(text.clone()).to(target()))
            .await;
        let reference = out.draft.clone().unwrap();
        assert_eq!(reference.shown, Some(SentId("m1".into())));
        let id = senders.send(&out).await.unwrap();
        assert_eq!(id.0, "m1", "the final message is the draft's");

        let calls = rec.calls();
        assert_eq!(calls[0].what, "send");
        assert!(calls[1..].iter().all(|c| c.what == "edit"), "{calls:?}");
        // 3.5 s of writing at most one request a second (plus its 50 ms), and the final edit.
        assert!((4..=5).contains(&calls.len()), "{calls:?}");
        for pair in calls.windows(2) {
            assert!(
                pair[1].started >= pair[0].ended + interval,
                "a request {:?} after the previous one ended",
                pair[1].started - pair[0].ended
            );
        }
        // Each shown text is a prefix of the answer, growing; the last is the whole answer.
        for pair in calls.windows(2) {
            assert!(
                pair[1].text.starts_with(&pair[0].text) && pair[1].text.len() > pair[0].text.len()
            );
        }
        let last = calls.last().unwrap();
        assert_eq!(last.text, text);
        assert_eq!(last.draft.as_ref().unwrap().id, reference.id);
        assert!(
            calls
                .iter()
                .all(|c| c.draft.as_ref().unwrap().id == reference.id)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_channel_gets_the_newest_text_and_the_final_message_names_the_draft() {
        let interval = Duration::from_millis(250);
        let rec = Recorder::new(Streaming::Partial { interval });
        let senders = senders(&rec);
        let mut draft = Draft::new(&senders, target());
        let id = draft.id().to_owned();
        let text = generate(&mut draft, 20).await;
        let out = draft
            .complete(Outbound::text(text.clone()).to(target()))
            .await;
        assert_eq!(
            out.draft,
            Some(DraftRef {
                id: id.clone(),
                shown: None
            })
        );
        senders.send(&out).await.unwrap();

        let calls = rec.calls();
        let (last, partials) = calls.split_last().unwrap();
        assert_eq!((last.what, last.text.as_str()), ("send", text.as_str()));
        assert_eq!(last.draft.as_ref().unwrap().id, id);
        assert!(partials.iter().all(|c| c.what == "partial"), "{calls:?}");
        // Fewer partials than pieces (newer text replaced older), at the interval.
        assert!((4..20).contains(&partials.len()), "{partials:?}");
        for pair in partials.windows(2) {
            assert!(pair[1].started >= pair[0].ended + interval);
            assert!(pair[1].text.starts_with(&pair[0].text));
        }
        assert!(partials.iter().all(|c| c.draft.as_ref().unwrap().id == id));
    }

    #[tokio::test(start_paused = true)]
    async fn a_channel_without_streaming_gets_only_the_final_message() {
        let rec = Recorder::new(Streaming::Final);
        let senders = senders(&rec);
        let mut draft = Draft::new(&senders, target());
        let text = generate(&mut draft, 5).await;
        let out = draft
            .complete(Outbound::text(text.clone()).to(target()))
            .await;
        assert_eq!(out.draft.as_ref().unwrap().shown, None);
        senders.send(&out).await.unwrap();
        assert_eq!(rec.whats(), ["send"]);
        assert_eq!(rec.calls()[0].text, text);

        // A channel that is not registered shows nothing either.
        let mut draft = Draft::new(
            &senders,
            Target {
                channel: "elsewhere".into(),
                ..target()
            },
        );
        draft.update("hello");
        assert_eq!(draft.streaming(), Streaming::Final);
        assert_eq!(draft.finish().await.shown, None);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_updates_never_fail_the_answer() {
        // Every edit fails: the draft stops after three tries, and the final message, whose
        // edit fails too, is sent as a new one.
        let interval = Duration::from_secs(1);
        let rec = Recorder::new(Streaming::Edit { interval });
        rec.fail_edits.store(true, Ordering::Relaxed);
        let senders = senders(&rec);
        let mut draft = Draft::new(&senders, target());
        let text = generate(&mut draft, 80).await;
        let out = draft
            .complete(Outbound::text(text.clone()).to(target()))
            .await;
        assert_eq!(out.draft.as_ref().unwrap().shown, Some(SentId("m1".into())));
        senders.send(&out).await.unwrap();
        assert_eq!(
            rec.whats(),
            ["send", "edit", "edit", "edit", "edit", "send"],
            "three failed edits, the failed final edit, the final message"
        );
        assert_eq!(rec.calls().last().unwrap().text, text);

        // The first send fails: nothing more is tried, and the final message is sent.
        let rec = Recorder::new(Streaming::Edit { interval });
        rec.fail_sends.store(true, Ordering::Relaxed);
        let senders = self::senders(&rec);
        let mut draft = Draft::new(&senders, target());
        generate(&mut draft, 30).await;
        assert_eq!(draft.finish().await.shown, None);
        assert_eq!(rec.whats(), ["send"]);
    }

    #[tokio::test(start_paused = true)]
    async fn finishing_waits_for_a_send_in_flight_and_a_dropped_draft_stops() {
        let rec = Recorder::new(Streaming::Edit {
            interval: Duration::from_secs(1),
        });
        let senders = senders(&rec);
        let mut draft = Draft::new(&senders, target());
        draft.update("  ");
        assert!(draft.worker.is_none(), "blank text is not shown");
        draft.update("first");
        tokio::task::yield_now().await;
        // The first send is in flight: finishing waits for its id, so the final message
        // replaces it instead of appearing twice.
        let reference = draft.finish().await;
        assert_eq!(reference.shown, Some(SentId("m1".into())));
        assert_eq!(rec.whats(), ["send"]);

        let rec = Recorder::new(Streaming::Edit {
            interval: Duration::from_secs(1),
        });
        let senders = self::senders(&rec);
        let mut draft = Draft::new(&senders, target());
        draft.update("one");
        tokio::time::sleep(Duration::from_millis(500)).await;
        draft.update("one two");
        drop(draft);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(rec.whats(), ["send"], "nothing after the draft was dropped");
    }

    #[test]
    fn the_reference_is_plain_data_and_absent_without_a_draft() {
        let plain = serde_json::to_value(Outbound::text("hi")).unwrap();
        assert!(plain.get("draft").is_none(), "{plain}");
        let out = Outbound {
            draft: Some(DraftRef {
                id: "d1".into(),
                shown: Some(SentId("chat:7".into())),
            }),
            ..Outbound::text("hi")
        };
        let json = serde_json::to_value(&out).unwrap();
        assert_eq!(
            json["draft"],
            serde_json::json!({"id": "d1", "shown": "chat:7"})
        );
        let back: Outbound = serde_json::from_value(json).unwrap();
        assert_eq!(back, out);
        let old: Outbound = serde_json::from_str(r#"{"text": "queued before drafts"}"#).unwrap();
        assert_eq!(old.draft, None);
    }
}
