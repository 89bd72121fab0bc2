//! A workflow in your own program: the engine on an embedded SQLite store, a definition
//! applied from YAML, a run started, and its timeline printed when it completes. The messages
//! the workflow sends arrive on an in-process channel.
//!
//! ```text
//! cargo run -p flowbot-examples --example workflow
//! ```
#![allow(clippy::print_stdout)] // an example talks on the terminal

use std::sync::Arc;
use std::time::Duration;

use flowbot_core::workflow::{Format, WorkflowSpec, Workflows};
use flowbot_core::{Bot, CancellationToken, Handlers, InProcess, Reply, Store};
use serde_json::json;

const WELCOME: &str = r#"
name: welcome
inputs:
  user: { type: string, required: true }
nodes:
  - { id: greet, action: send_message, with: { channel: local, conversation: lobby, text: "Welcome, {{ inputs.user }}!" } }
  - { id: later, delay: 1s }
  - { id: check, action: send_message, with: { channel: local, conversation: lobby, text: "Found your way around, {{ inputs.user }}?" } }
edges: [ { from: greet, to: later }, { from: later, to: check } ]
"#;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("flowbot-workflow-example-{}", std::process::id()));
    let store: Arc<dyn Store> = Arc::new(flowbot_store::SqliteStore::open_in_dir(&dir).await?);
    let engine = Arc::new(Workflows::new(store.clone()));
    let (channel, mut handle) = InProcess::channel("local", 64);
    let bot = Bot::builder()
        .store(store)
        .channel(channel)
        .router(Handlers::new(()).fallback(|_cx| async { Ok(Reply::none()) }))
        .workflows(engine.clone())
        .build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));

    let applied = engine
        .apply(WorkflowSpec::parse(WELCOME, Format::Yaml)?)
        .await?;
    println!("applied {} version {}", applied.name, applied.version);
    let run = engine
        .start("welcome", json!({"user": "Ada"}), json!({"kind": "manual"}))
        .await?;
    for _ in 0..2 {
        match tokio::time::timeout(Duration::from_secs(5), handle.next_reply()).await {
            Ok(Some(out)) => println!("bot says: {}", out.text),
            _ => println!("no message within 5 s"),
        }
    }
    // Returns when the run ends, woken by the engine (no polling).
    let done = tokio::time::timeout(Duration::from_secs(10), engine.finished(&run.id)).await??;
    println!("run {} {}", done.id, done.status.as_str());
    for n in engine
        .run(&run.id)
        .await?
        .ok_or("the run disappeared")?
        .nodes
    {
        println!(
            "  {:<6} {:<9} attempt {}",
            n.node,
            n.status.as_str(),
            n.attempt
        );
    }
    stop.cancel();
    running.await??;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
