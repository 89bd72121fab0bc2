//! A custom action with its JSON Schemas: `quote` looks up a price. FlowBot checks every call
//! against the input schema before the action runs (and its answer against the output
//! schema), so rules, workflows, handlers and language models calling it get the same clear
//! refusal for bad input. Here a Rust command calls it over an in-process channel.
//!
//! ```text
//! cargo run -p flowbot-examples --example custom_action
//! ```
#![allow(clippy::print_stdout)] // an example talks on the terminal

use std::time::Duration;

use flowbot_core::{
    Action, ActionContext, Bot, BoxError, CancellationToken, Error, Handlers, InProcess, Refusal,
    Reply, async_trait,
};
use serde_json::{Value, json};

/// Prices in cents, by ticker symbol.
struct Quote;

#[async_trait]
impl Action for Quote {
    fn name(&self) -> &str {
        "quote"
    }

    fn description(&self) -> &str {
        "The price of a stock, by its ticker symbol"
    }

    fn input_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": { "symbol": { "type": "string", "pattern": "^[A-Z]{1,5}$" } },
            "required": ["symbol"],
            "additionalProperties": false
        })
    }

    fn output_schema(&self) -> Value {
        json!({
            "type": "object",
            "properties": { "symbol": { "type": "string" }, "cents": { "type": "integer" } },
            "required": ["symbol", "cents"]
        })
    }

    async fn call(&self, _cx: &ActionContext, input: Value) -> Result<Value, BoxError> {
        let symbol = input["symbol"].as_str().unwrap_or_default();
        let cents = match symbol {
            "ACME" => 12_345,
            "INIT" => 990,
            // The words are shown to the user as the answer.
            _ => return Err(Refusal::new(format!("no price for {symbol}")).into()),
        };
        Ok(json!({ "symbol": symbol, "cents": cents }))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let handlers = Handlers::new(()).command_usage("price", "/price <symbol>", |cx| async move {
        let symbol: String = cx.parse()?;
        match cx
            .turn
            .call_action("quote", json!({ "symbol": symbol }))
            .await
        {
            Ok(v) => {
                let cents = v["cents"].as_i64().unwrap_or_default();
                Ok(Reply::text(format!(
                    "{symbol}: ${}.{:02}",
                    cents / 100,
                    cents % 100
                )))
            }
            // Input the schema refuses: say what is wrong.
            Err(Error::ActionInput { detail, .. }) => {
                Ok(Reply::text(format!("Not a ticker symbol ({detail})")))
            }
            Err(e) => Err(e.into()),
        }
    });
    let (channel, mut chat) = InProcess::channel("local", 16);
    let bot = Bot::builder()
        .channel(channel)
        .router(handlers)
        .action(Quote)
        .build()?;
    let stop = CancellationToken::new();
    let running = tokio::spawn(bot.run(stop.clone()));
    for text in ["/price ACME", "/price acme!", "/price ZZZ"] {
        chat.say("ada", "desk", text).await?;
        let answer = tokio::time::timeout(Duration::from_secs(10), chat.next_reply())
            .await?
            .ok_or("the bot stopped")?;
        println!("{text} -> {}", answer.text);
    }
    stop.cancel();
    running.await??;
    Ok(())
}
