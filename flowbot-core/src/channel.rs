//! Channels: a listener that turns platform traffic into events on the [`Inbox`], and a sender
//! that delivers [`Outbound`] messages.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::draft::{DEFAULT_EDIT_INTERVAL, Streaming};
use crate::error::{Error, Result};
use crate::message::{ChannelName, Event, Outbound, Target};

/// Where listeners put inbound events. Cloneable; sending waits when the pipeline is busy.
#[derive(Debug, Clone)]
pub struct Inbox {
    tx: mpsc::Sender<Event>,
}

impl Inbox {
    /// An inbox holding up to `capacity` events, and the receiving end the pipeline reads.
    pub fn new(capacity: usize) -> (Inbox, mpsc::Receiver<Event>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Inbox { tx }, rx)
    }

    /// Hand an event to the pipeline. Fails only when the pipeline has stopped.
    pub async fn send(&self, event: Event) -> Result<()> {
        let channel = event.channel().to_string();
        self.tx.send(event).await.map_err(|_| {
            Error::channel(
                channel,
                crate::Transient::new("the pipeline has stopped; event not accepted"),
            )
        })
    }
}

/// The inbound half of a channel.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot channel listener",
    note = "a listener turns platform traffic into `Event`s on the `Inbox` until shut down"
)]
pub trait ChannelListener: Send + Sync + 'static {
    /// Put inbound events on `inbox` until `shutdown` is cancelled.
    async fn listen(&self, inbox: Inbox, shutdown: CancellationToken) -> Result<()>;
}

/// What a channel's platform supports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Markdown rendering.
    pub markdown: bool,
    /// Buttons.
    pub buttons: bool,
    /// Editing sent messages.
    pub edit: bool,
    /// Threads.
    pub threads: bool,
    /// Ephemeral messages.
    pub ephemeral: bool,
}

/// Platform id of a message the bot sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SentId(pub String);

/// The outbound half of a channel.
#[async_trait]
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a FlowBot channel sender",
    note = "a sender delivers `Outbound` messages to its platform"
)]
pub trait ChannelSender: Send + Sync + 'static {
    /// Deliver `message`; its `target` is always set.
    async fn send(&self, message: &Outbound) -> Result<SentId>;

    /// Replace the content of a sent message. Channels without [`Capabilities::edit`] keep
    /// this default, which refuses.
    async fn edit(&self, id: &SentId, message: &Outbound) -> Result<()> {
        let _ = (id, message);
        Err(Error::channel(
            message
                .target
                .as_ref()
                .map(|t| t.channel.to_string())
                .unwrap_or_default(),
            crate::Permanent::new("this channel cannot edit messages"),
        ))
    }

    /// What the platform supports.
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }

    /// How an answer to `target` is shown while it is written (see
    /// [`Draft`](crate::Draft)). The default edits a message every
    /// [`DEFAULT_EDIT_INTERVAL`] on a channel with [`Capabilities::edit`], and shows only the
    /// final message on any other; a channel says its platform's own rate limit for the
    /// conversation here.
    fn streaming(&self, target: &Target) -> Streaming {
        let _ = target;
        if self.capabilities().edit {
            Streaming::Edit {
                interval: DEFAULT_EDIT_INTERVAL,
            }
        } else {
            Streaming::Final
        }
    }

    /// Show the text so far of an answer still being written: `partial` carries the target,
    /// the text so far, its format and [`Outbound::draft`] (the draft's id). Channels with
    /// [`Streaming::Partial`] implement it; the default refuses.
    async fn send_partial(&self, partial: &Outbound) -> Result<()> {
        Err(Error::channel(
            partial
                .target
                .as_ref()
                .map(|t| t.channel.to_string())
                .unwrap_or_default(),
            crate::Permanent::new("this channel does not show partial answers"),
        ))
    }

    /// Turn the draft message `shown` into the final `message` (which completes the draft);
    /// the id of the last message it leaves. The default [edits](ChannelSender::edit) it; a
    /// channel whose edit cannot carry a whole message (text longer than one message,
    /// attachments) sends the rest as new messages.
    async fn finish_draft(&self, shown: &SentId, message: &Outbound) -> Result<SentId> {
        self.edit(shown, message).await?;
        Ok(shown.clone())
    }
}

/// A named channel: a sender, and a listener unless the channel only sends (a notifier) or is
/// fed by HTTP routes.
#[derive(Clone)]
pub struct Channel {
    name: ChannelName,
    listener: Option<Arc<dyn ChannelListener>>,
    sender: Arc<dyn ChannelSender>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("listens", &self.listener.is_some())
            .finish()
    }
}

impl Channel {
    /// A channel named `name` that sends through `sender` and has no listener.
    pub fn new(name: impl Into<ChannelName>, sender: impl ChannelSender) -> Self {
        Channel {
            name: name.into(),
            listener: None,
            sender: Arc::new(sender),
        }
    }

    /// Add a listener.
    pub fn with_listener(mut self, listener: impl ChannelListener) -> Self {
        self.listener = Some(Arc::new(listener));
        self
    }

    /// From already shared halves.
    pub fn from_parts(
        name: impl Into<ChannelName>,
        sender: Arc<dyn ChannelSender>,
        listener: Option<Arc<dyn ChannelListener>>,
    ) -> Self {
        Channel {
            name: name.into(),
            listener,
            sender,
        }
    }

    /// The channel's name.
    pub fn name(&self) -> &ChannelName {
        &self.name
    }

    /// The listener, if any.
    pub fn listener(&self) -> Option<&Arc<dyn ChannelListener>> {
        self.listener.as_ref()
    }

    /// The sender.
    pub fn sender(&self) -> &Arc<dyn ChannelSender> {
        &self.sender
    }
}

/// The senders of every registered channel, by name.
#[derive(Clone, Default)]
pub struct Senders {
    by_name: HashMap<ChannelName, Arc<dyn ChannelSender>>,
}

impl std::fmt::Debug for Senders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.by_name.keys()).finish()
    }
}

impl Senders {
    /// Add a sender; fails if the name is taken.
    pub fn insert(&mut self, name: ChannelName, sender: Arc<dyn ChannelSender>) -> Result<()> {
        if self.by_name.contains_key(&name) {
            return Err(Error::Build(format!(
                "channel '{name}' is registered twice"
            )));
        }
        self.by_name.insert(name, sender);
        Ok(())
    }

    /// The sender of `name`.
    pub fn get(&self, name: &ChannelName) -> Option<&Arc<dyn ChannelSender>> {
        self.by_name.get(name)
    }

    /// Deliver `message` through the channel its target names. A message completing a
    /// [`Draft`](crate::Draft) that the channel shows as a message replaces it
    /// ([`ChannelSender::finish_draft`]); when that fails, the message is sent as a new one.
    pub async fn send(&self, message: &Outbound) -> Result<SentId> {
        let target = message.target.as_ref().ok_or_else(|| {
            Error::channel(
                String::new(),
                crate::Permanent::new("outbound message has no target"),
            )
        })?;
        let sender = self.get(&target.channel).ok_or_else(|| {
            Error::channel(
                target.channel.to_string(),
                "no channel with this name is registered",
            )
        })?;
        if let Some(shown) = message.draft.as_ref().and_then(|d| d.shown.as_ref()) {
            match sender.finish_draft(shown, message).await {
                Ok(id) => return Ok(id),
                Err(e) => tracing::warn!(
                    channel = %target.channel,
                    error = %e,
                    "the draft could not be replaced by the final message; sending it as a new one"
                ),
            }
        }
        sender.send(message).await
    }
}
