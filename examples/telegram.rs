//! The smallest Telegram bot on the `flowbot` facade (`cargo add flowbot -F telegram`): `/ping`
//! answered with `pong`, over long polling, its conversations and queue in SQLite under
//! `./data`. Ctrl-C stops it gracefully.
//!
//! ```text
//! TELEGRAM_TOKEN=123456:ABC… cargo run -p flowbot-examples --example telegram
//! ```
use std::sync::Arc;

use flowbot::prelude::*;

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let store = Arc::new(SqliteStore::open_in_dir("data").await?);
    let config = TelegramConfig::polling("telegram", std::env::var("TELEGRAM_TOKEN")?);
    let (_telegram, channel) = Telegram::connect(store.clone(), config).await?;
    let handlers = Handlers::new(()).command("ping", |_cx| async { Ok(Reply::text("pong")) });
    let bot = Bot::builder()
        .store(store)
        .channel(channel)
        .router(handlers)
        .build()?;
    bot.run(flowbot::stop_on_signals()).await?;
    Ok(())
}
