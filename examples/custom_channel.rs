//! A channel of your own: a listener that turns your platform's traffic into events, and a
//! sender that delivers the bot's answers. This one reads a scripted conversation (one
//! message per line) and prints the answers; a real one would read a socket or a queue.
//! Everything the built-in channels get — ordering per conversation, sessions, the durable
//! queue, middleware — works the same for it.
//!
//! ```text
//! cargo run -p flowbot-examples --example custom_channel
//! ```
#![allow(clippy::print_stdout)] // an example talks on the terminal

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use flowbot_core::{
    Bot, BoxError, CancellationToken, Channel, ChannelListener, ChannelSender, Event, Handlers,
    Inbox, Message, Outbound, Reply, Sender, SentId, Transient, async_trait,
};
use tokio::sync::mpsc;

/// The inbound half: each line is a message from `user` in one conversation.
struct Script {
    lines: Vec<&'static str>,
}

#[async_trait]
impl ChannelListener for Script {
    async fn listen(&self, inbox: Inbox, shutdown: CancellationToken) -> flowbot_core::Result<()> {
        for line in &self.lines {
            let message = Message::text("script", "room-1", Sender::user("ada"), *line);
            inbox.send(Event::Message(message)).await?;
        }
        // A listener runs until shutdown; a real one keeps reading its platform.
        shutdown.cancelled().await;
        Ok(())
    }
}

/// The outbound half: hands each answer to the printer.
struct Printer {
    out: mpsc::UnboundedSender<String>,
    sent: AtomicU64,
}

#[async_trait]
impl ChannelSender for Printer {
    async fn send(&self, message: &Outbound) -> flowbot_core::Result<SentId> {
        // A platform that cannot take the message now says so, and the bot retries it later
        // through its queue (with a store): say that with `Transient`.
        self.out.send(message.text.clone()).map_err(|_| {
            flowbot_core::Error::channel("script", Transient::new("the printer is gone"))
        })?;
        // The platform's id of the message it took (here a counter).
        let n = self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(SentId(format!("line-{n}")))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let lines = vec!["/hello", "what is this?", "/hello again"];
    let expected = lines.len();
    let (out, mut printed) = mpsc::unbounded_channel();
    let channel = Channel::new(
        "script",
        Printer {
            out,
            sent: AtomicU64::new(0),
        },
    )
    .with_listener(Script { lines });
    let handlers = Handlers::new(())
        .command("hello", |cx| async move {
            let who = if cx.args.is_empty() {
                "you"
            } else {
                cx.args.as_str()
            };
            Ok(Reply::text(format!("hello, {who}!")))
        })
        .fallback(|cx| async move { Ok(Reply::text(format!("you said: {}", cx.args))) });
    let bot = Bot::builder().channel(channel).router(handlers).build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));
    for _ in 0..expected {
        let text = tokio::time::timeout(Duration::from_secs(10), printed.recv())
            .await?
            .ok_or("the bot stopped")?;
        println!("bot: {text}");
    }
    stop.cancel();
    running.await??;
    Ok(())
}
