//! A channel inside the process: the application feeds events and reads replies itself. For
//! tests, examples, benchmarks and apps that embed a bot behind their own transport.

use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::channel::{Capabilities, Channel, ChannelListener, ChannelSender, Inbox, SentId};
use crate::error::{Error, Result};
use crate::message::{ChannelName, Event, Message, MessageId, Outbound, Sender};

/// Creates in-process channels.
#[derive(Debug)]
pub struct InProcess;

impl InProcess {
    /// A channel named `name` and the handle that talks to it. `capacity` bounds the events
    /// waiting to enter the pipeline.
    pub fn channel(name: impl Into<ChannelName>, capacity: usize) -> (Channel, InProcessHandle) {
        let name = name.into();
        let (in_tx, in_rx) = mpsc::channel(capacity.max(1));
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let listener = Listener {
            rx: Mutex::new(Some(in_rx)),
            name: name.clone(),
        };
        let sender = OutSender { tx: out_tx };
        let channel = Channel::new(name.clone(), sender).with_listener(listener);
        (
            channel,
            InProcessHandle {
                name,
                tx: in_tx,
                replies: out_rx,
            },
        )
    }
}

/// The application's end of an in-process channel.
#[derive(Debug)]
pub struct InProcessHandle {
    name: ChannelName,
    tx: mpsc::Sender<Event>,
    replies: mpsc::UnboundedReceiver<Outbound>,
}

impl InProcessHandle {
    /// Send a text message from `user` in `conversation`; returns its message id.
    pub async fn say(&self, user: &str, conversation: &str, text: &str) -> Result<MessageId> {
        let message = Message::text(self.name.clone(), conversation, Sender::user(user), text);
        let id = message.id.clone();
        self.send(Event::Message(message)).await?;
        Ok(id)
    }

    /// Send any event.
    pub async fn send(&self, event: Event) -> Result<()> {
        self.tx
            .send(event)
            .await
            .map_err(|_| Error::channel(self.name.to_string(), "the bot is not running"))
    }

    /// The next message the bot sent through this channel; `None` once the bot is gone.
    pub async fn next_reply(&mut self) -> Option<Outbound> {
        self.replies.recv().await
    }

    /// A reply if one is waiting.
    pub fn try_reply(&mut self) -> Option<Outbound> {
        self.replies.try_recv().ok()
    }
}

struct Listener {
    rx: Mutex<Option<mpsc::Receiver<Event>>>,
    name: ChannelName,
}

#[async_trait]
impl ChannelListener for Listener {
    async fn listen(&self, inbox: Inbox, shutdown: CancellationToken) -> Result<()> {
        let taken = self.rx.lock().unwrap_or_else(|p| p.into_inner()).take();
        let mut rx = taken.ok_or_else(|| {
            Error::channel(
                self.name.to_string(),
                "an in-process channel can be listened to once",
            )
        })?;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                event = rx.recv() => match event {
                    Some(event) => inbox.send(event).await?,
                    None => return Ok(()),
                },
            }
        }
    }
}

struct OutSender {
    tx: mpsc::UnboundedSender<Outbound>,
}

#[async_trait]
impl ChannelSender for OutSender {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        let id = SentId(uuid::Uuid::now_v7().to_string());
        self.tx.send(message.clone()).map_err(|_| {
            Error::channel(
                message
                    .target
                    .as_ref()
                    .map(|t| t.channel.to_string())
                    .unwrap_or_default(),
                "the in-process handle was dropped",
            )
        })?;
        Ok(id)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            markdown: true,
            buttons: true,
            edit: false,
            threads: true,
            ephemeral: true,
        }
    }
}
