//! A channel on stdin and stdout, for trying a bot in a terminal: each line typed is a
//! message from the user `console` in the conversation `console`; replies are printed.

use async_trait::async_trait;
use flowbot_core::{
    Channel, ChannelListener, ChannelSender, Error, Event, Inbox, Message, Outbound, Result,
    Sender, SentId,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;

/// The console channel named `name`.
pub fn channel(name: &str) -> Channel {
    Channel::new(name, Stdout).with_listener(Stdin {
        name: name.to_owned(),
    })
}

struct Stdin {
    name: String,
}

#[async_trait]
impl ChannelListener for Stdin {
    async fn listen(&self, inbox: Inbox, shutdown: CancellationToken) -> Result<()> {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        loop {
            let line = tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                line = lines.next_line() => line,
            };
            let line =
                line.map_err(|e| Error::channel(self.name.clone(), format!("reading stdin: {e}")))?;
            let Some(line) = line else { return Ok(()) };
            let text = line.trim();
            if text.is_empty() {
                continue;
            }
            let message =
                Message::text(self.name.as_str(), "console", Sender::user("console"), text);
            inbox.send(Event::Message(message)).await?;
        }
    }
}

struct Stdout;

#[async_trait]
impl ChannelSender for Stdout {
    async fn send(&self, message: &Outbound) -> Result<SentId> {
        let mut out = tokio::io::stdout();
        let mut text = format!("bot: {}\n", message.text);
        for b in &message.buttons {
            text.push_str(&format!("  [{}] (type: {})\n", b.label, b.value));
        }
        let channel = message
            .target
            .as_ref()
            .map(|t| t.channel.to_string())
            .unwrap_or_default();
        let io =
            |e: std::io::Error| Error::channel(channel.clone(), format!("writing stdout: {e}"));
        out.write_all(text.as_bytes()).await.map_err(io)?;
        out.flush().await.map_err(io)?;
        Ok(SentId(uuid::Uuid::now_v7().to_string()))
    }
}
