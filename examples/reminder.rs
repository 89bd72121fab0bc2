//! A bot in your terminal: the in-process channel, an embedded SQLite store and the task
//! scheduler. Type `/remind 2s hello` and the reminder arrives two seconds later, through a
//! delayed task on the durable queue.
//!
//! ```text
//! cargo run -p flowbot-examples --example reminder
//! ```
//!
//! Data goes to `./data/reminder-example` (set `FLOWBOT_DATA_DIR` to change it). With piped
//! input the example waits for pending reminders before it exits:
//! `printf '/remind 2s hello\n' | cargo run -p flowbot-examples --example reminder`.

use std::sync::Arc;
use std::time::Duration;

use flowbot_core::task::{TaskFilter, TaskState, WorkerConfig};
use flowbot_core::{Bot, CancellationToken, InProcess, Store};
use flowbot_examples::{demo_router, help_text};
use flowbot_store::SqliteStore;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let dir = std::env::var("FLOWBOT_DATA_DIR").unwrap_or_else(|_| "./data".into());
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open_in_dir(format!("{dir}/reminder-example")).await?);

    let (channel, mut handle) = InProcess::channel("console", 64);
    let workers = WorkerConfig {
        poll_interval: Duration::from_millis(200),
        ..WorkerConfig::default()
    };
    let bot = Bot::builder()
        .channel(channel)
        .store(store.clone())
        .router(demo_router())
        .workers(workers)
        .build()?;
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(bot.run(shutdown.clone()));

    let mut out = tokio::io::stdout();
    out.write_all(format!("{}\n(Ctrl-D to quit)\n> ", help_text()).as_bytes())
        .await?;
    out.flush().await?;
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = lines.next_line() => match line? {
                Some(line) if !line.trim().is_empty() => { handle.say("you", "console", line.trim()).await?; }
                Some(_) => {}
                None => break,
            },
            Some(reply) = handle.next_reply() => {
                out.write_all(format!("bot: {}\n> ", reply.text).as_bytes()).await?;
                out.flush().await?;
            }
        }
    }
    // Input closed: print what is still coming (answers and pending reminders), then stop.
    loop {
        let pending = store
            .list_tasks(&TaskFilter {
                state: Some(TaskState::Queued),
                limit: 1,
                ..TaskFilter::default()
            })
            .await?
            .items
            .len()
            + store
                .list_tasks(&TaskFilter {
                    state: Some(TaskState::Running),
                    limit: 1,
                    ..TaskFilter::default()
                })
                .await?
                .items
                .len();
        match tokio::time::timeout(Duration::from_millis(500), handle.next_reply()).await {
            Ok(Some(reply)) => {
                out.write_all(format!("bot: {}\n", reply.text).as_bytes())
                    .await?
            }
            _ if pending == 0 => break,
            _ => {}
        }
        out.flush().await?;
    }
    shutdown.cancel();
    running.await??;
    Ok(())
}
