//! The knowledge base end to end: `flowbot-server kb ingest` (the real binary) reads a folder
//! of Markdown into the server's SQLite database; the running server answers a question at
//! `/chat` from the right document and cites it; `/kb <query>` lists passages without a
//! model; the REST API manages collections, ingests inline documents as a job on the queue
//! and searches. The model and the embeddings come from `flowbot_llm::fake::FakeProvider`
//! (OpenAI's wire protocol on 127.0.0.1); its embeddings depend only on the text, so the
//! keyword half of the hybrid search is what finds the right page here.

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod common;
mod harness;

use std::collections::BTreeMap;

use common::TempDir;
use flowbot_core::VectorStore;
use flowbot_core::vector::Filter;
use flowbot_llm::fake::{FakeProvider, Reply, Turn};
use serde_json::{Value, json};

const SERVER: &str = env!("CARGO_BIN_EXE_flowbot-server");

/// A folder of three documents.
fn docs(dir: &std::path::Path) -> std::path::PathBuf {
    let docs = dir.join("docs");
    std::fs::create_dir_all(docs.join("ops")).unwrap();
    std::fs::write(
        docs.join("leases.md"),
        "# Task leases\n\nA claimed task carries a lease. The worker heartbeats; a lease \
         that expires returns the task to the queue after thirty seconds.\n",
    )
    .unwrap();
    std::fs::write(
        docs.join("ops/discord.md"),
        "# Discord shards\n\nOne server owns each gateway shard through a database lease \
         and hands it over when it dies.\n",
    )
    .unwrap();
    std::fs::write(
        docs.join("webhooks.txt"),
        "Generic webhooks answer 202 once the message is durably stored.\n",
    )
    .unwrap();
    std::fs::write(docs.join("logo.png"), [0x89, b'P', b'N', b'G']).unwrap();
    docs
}

/// `[llm.models.main]`: `fake`'s chat model and embeddings.
fn model_toml(fake: &FakeProvider) -> String {
    format!(
        "[llm.models.main]\ndialect = \"openai\"\nmodel = \"fake-model\"\nbase_url = \"http://{}/v1\"\nembedding_model = \"fake-embed\"\n",
        fake.addr()
    )
}

/// The model `main` of `c`: `fake`'s chat model and embeddings.
fn fake_model(c: &mut flowbot_server::config::Config, fake: &FakeProvider) {
    let mut main = flowbot_llm::ProviderConfig::new(flowbot_llm::Dialect::Openai, "fake-model");
    main.base_url = Some(format!("http://{}/v1", fake.addr()));
    main.embedding_model = Some("fake-embed".into());
    c.llm.models.insert("main".into(), main);
}

/// `POST /api/v1/kb/collections/docs/search` with `body`: the answer, which must be a 200.
async fn search_docs(base: &str, body: Value) -> Value {
    let res = reqwest::Client::new()
        .post(format!("{base}/api/v1/kb/collections/docs/search"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Run `flowbot-server --config FILE kb ARGS…`; its exit status, stdout and stderr.
async fn kb(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(SERVER)
        .arg("--config")
        .arg(config)
        .arg("kb")
        .args(args)
        .env_remove("FLOWBOT_MINILM_DIR")
        .output()
        .await
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn ingested_docs_ground_answers_at_chat_with_citations_and_the_api_manages_them() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    let dir = TempDir::new("flowbot-kb");
    let docs = docs(&dir.0);
    let db = format!("sqlite://{}/flowbot.db", dir.0.display());
    let rules = dir.0.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("kb.toml"),
        r#"
[[rule]]
name = "kb"
when = { command = "kb <query...>" }
then = [
  { call = { action = "kb_search", input = { query = "{{ args.query }}", limit = 2 }, save_as = "kb" } },
  { reply = "{{ session.kb.text }}" },
]

[[rule]]
name = "ask"
when = { command = "ask <question...>" }
then = [{ llm = { text = "{{ args.question }}", knowledge = "docs" } }]
"#,
    )
    .unwrap();
    let config = dir.0.join("flowbot.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[database]
url = "{db}"

{model}
[knowledge]
embedder = "main"
collection = "docs"
"#,
            model = model_toml(&fake)
        ),
    )
    .unwrap();

    // The CLI: every supported file, the picture in the folder passed over by name, a
    // summary; a picture named on its own fails the run.
    let docs_arg = docs.display().to_string();
    let (ok, out, err) = kb(&config, &["ingest", &docs_arg]).await;
    assert!(ok, "{out}{err}");
    assert!(
        out.contains("3 added, 0 replaced, 0 unchanged, 0 failed, 1 skipped"),
        "{out}"
    );
    assert!(
        out.contains("skipped: ") && out.contains("logo.png"),
        "{out}"
    );
    let logo = docs.join("logo.png").display().to_string();
    let (ok, out, _) = kb(&config, &["ingest", &logo]).await;
    assert!(
        !ok && out.contains("failed: ") && out.contains("unsupported"),
        "{out}"
    );
    let (_, again, _) = kb(&config, &["ingest", &docs_arg]).await;
    assert!(
        again.contains("0 added, 0 replaced, 3 unchanged"),
        "{again}"
    );
    let (ok, found, err) = kb(&config, &["search", "lease", "expires", "--limit", "1"]).await;
    assert!(ok, "{err}");
    assert!(found.starts_with("1. Task leases"), "{found}");
    let (ok, listed, _) = kb(&config, &["list"]).await;
    assert!(
        ok && listed.contains("docs") && listed.contains("chunks"),
        "{listed}"
    );
    let (ok, _, err) = kb(&config, &["ingest", &docs_arg, "--collection", "no spaces"]).await;
    assert!(!ok && err.contains("collection name"), "{err}");

    // The server on the same database.
    let s = harness::start_with(|c| {
        c.database.url = db.clone();
        c.rules.dir = Some(rules.clone());
        fake_model(c, &fake);
        c.knowledge.embedder = Some("main".into());
        c.knowledge.root = Some(docs.clone());
    })
    .await;

    // A question at /chat: the passages go to the model, the answer cites the right page.
    fake.push(Turn::Reply(Reply::text(
        "An expired lease returns the task to the queue after thirty seconds [1].",
    )));
    let mut chat = harness::chat(&s, "ann", "k1").await;
    let answer = harness::say(
        &mut chat,
        "/ask do claimed tasks expire without heartbeats?",
    )
    .await;
    let text = answer["text"].as_str().unwrap();
    assert!(text.contains("thirty seconds [1]"), "{text}");
    assert!(text.contains("Sources:"), "{text}");
    assert!(
        text.contains("[1] Task leases") && text.contains("leases.md"),
        "the citation names the right page: {text}"
    );
    let asked = fake.requests().last().unwrap().body.clone();
    let system = asked["messages"][0]["content"].as_str().unwrap_or_default();
    assert!(
        system.contains("returns the task to the queue"),
        "the passage is in the prompt: {asked}"
    );

    // `/kb` without a model.
    let listed = harness::say(&mut chat, "/kb discord gateway shard").await;
    let listed = listed["text"].as_str().unwrap();
    assert!(listed.starts_with("1. Discord shards"), "{listed}");

    // The API: collections, an inline document as a job, a search, a removal.
    let client = reqwest::Client::new();
    let cols = common::get_json(format!("{}/api/v1/kb/collections", s.base)).await;
    assert_eq!(cols["items"][0]["name"], "docs", "{cols}");
    let res = client
        .post(format!("{}/api/v1/kb/collections/docs/documents", s.base))
        .json(&json!({"sources": [
            {"source": "faq", "kind": "markdown", "text": "# Refunds\n\nRefunds take five business days."},
            {"path": "ops"},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    let job: Value = res.json().await.unwrap();
    let id = job["id"].as_str().unwrap();
    // The answer waits for the job (run by the server's queue workers) to finish.
    let job = common::get_json(format!("{}/api/v1/kb/jobs/{id}?wait=30", s.base)).await;
    assert_eq!(job["status"], "done", "{job}");
    assert_eq!(job["done"], job["total"], "{job}");
    let res = client
        .get(format!("{}/api/v1/kb/jobs/{id}?wait=61", s.base))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let problem: Value = res.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("wait = 61"),
        "{problem}"
    );
    let hits = search_docs(
        &s.base,
        json!({"query": "refunds business days", "limit": 1}),
    )
    .await;
    assert_eq!(hits["items"][0]["source"], "faq", "{hits}");
    let outside = client
        .post(format!("{}/api/v1/kb/collections/docs/documents", s.base))
        .json(&json!({"sources": [{"path": "../flowbot.toml"}]}))
        .send()
        .await
        .unwrap();
    harness::problem(outside, 422).await;
    let bad = client
        .post(format!("{}/api/v1/kb/collections/docs/search", s.base))
        .json(&json!({"query": "x", "limit": 0}))
        .send()
        .await
        .unwrap();
    harness::problem(bad, 422).await;
    let unknown = client
        .post(format!("{}/api/v1/kb/collections/nope/search", s.base))
        .json(&json!({"query": "x"}))
        .send()
        .await
        .unwrap();
    harness::problem(unknown, 404).await;
    let removed = client
        .delete(format!(
            "{}/api/v1/kb/collections/docs/documents?source=faq",
            s.base
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(removed.status(), 204);
    let col = common::get_json(format!("{}/api/v1/kb/collections/docs", s.base)).await;
    let sources: Vec<&str> = col["documents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["source"].as_str().unwrap())
        .collect();
    assert!(!sources.contains(&"faq"), "{sources:?}");
    s.stop().await;
}

/// Without `[knowledge]`, the API says how to set it up.
#[tokio::test]
async fn without_a_knowledge_base_the_api_says_how_to_configure_one() {
    let s = harness::start_with(|c| {
        let env = BTreeMap::new();
        c.llm.from_openai_env(&env);
    })
    .await;
    let res = reqwest::get(format!("{}/api/v1/kb/collections", s.base))
        .await
        .unwrap();
    let problem = harness::problem(res, 409).await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("[knowledge] embedder"),
        "{problem}"
    );
    s.stop().await;
}

/// `[knowledge.qdrant]`: the collections live in Qdrant (here its PROTOCOL FAKE, NOT Qdrant,
/// `flowbot_store::qdrant::fake`, over the real client and gRPC wire), with the API key taken
/// from `[secrets]`; the database keeps the documents' records, not their vectors. A wrong key
/// or a bad URL is an error that names the setting and never shows the key.
#[tokio::test]
async fn qdrant_holds_the_collections_when_configured() {
    let fake = FakeProvider::start().await.unwrap();
    fake.expect_key(None);
    let qdrant = flowbot_store::qdrant::fake::start_with_key(Some("qdrant-key-5f1e"))
        .await
        .unwrap();
    let dir = TempDir::new("flowbot-kb-qdrant");
    let docs = docs(&dir.0);
    let db = format!("sqlite://{}/flowbot.db", dir.0.display());
    let config = dir.0.join("flowbot.toml");
    let write = |url: &str, key: &str| {
        std::fs::write(
            &config,
            format!(
                r#"
[database]
url = "{db}"

[secrets]
qdrant_key = "{key}"

{model}
[knowledge]
embedder = "main"

[knowledge.qdrant]
url = "{url}"
api_key = "{{{{ secrets.qdrant_key }}}}"
"#,
                model = model_toml(&fake)
            ),
        )
        .unwrap();
    };
    write(&qdrant, "qdrant-key-5f1e");
    let (ok, out, err) = kb(&config, &["ingest", &docs.display().to_string()]).await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("3 added"), "{out}");

    // The chunks are in Qdrant, none in the database's embedded store.
    let q = flowbot_store::qdrant::QdrantVectors::connect(&qdrant, Some("qdrant-key-5f1e".into()))
        .await
        .unwrap();
    let in_qdrant = q.count("docs", &Filter::all()).await.unwrap();
    assert!(in_qdrant >= 3, "{in_qdrant} chunks in Qdrant");
    let sqlite = flowbot_store::SqliteStore::open_with(flowbot_store::SqliteOptions::new(
        dir.0.join("flowbot.db"),
    ))
    .await
    .unwrap();
    let embedded = flowbot_store::vectors::EmbeddedVectors::sqlite(
        &sqlite,
        flowbot_store::vectors::IndexOptions::default(),
    )
    .unwrap();
    assert!(embedded.collections().await.unwrap().is_empty());
    let (ok, found, err) = kb(&config, &["search", "lease", "--limit", "2"]).await;
    assert!(ok, "{err}");
    assert!(
        found.starts_with("1. ") && found.contains("\n2. "),
        "{found}"
    );

    // The server searches Qdrant too.
    let s = harness::start_with(|c| {
        c.database.url = db.clone();
        fake_model(c, &fake);
        c.knowledge.embedder = Some("main".into());
        c.knowledge.qdrant = Some(flowbot_server::config::QdrantConfig {
            url: qdrant.clone(),
            api_key: Some("qdrant-key-5f1e".into()),
        });
    })
    .await;
    let hits = search_docs(&s.base, json!({"query": "gateway shard", "limit": 3})).await;
    assert_eq!(hits["items"].as_array().unwrap().len(), 3, "{hits}");

    // A wrong key: refused, naming the setting, the key not shown.
    write(&qdrant, "wrong-key-0000");
    let (ok, out, err) = kb(&config, &["list"]).await;
    assert!(!ok, "{out}");
    assert!(err.contains("[knowledge.qdrant]"), "{err}");
    assert!(!format!("{out}{err}").contains("wrong-key-0000"), "{err}");
    // Not Qdrant's URL.
    write("ftp://127.0.0.1:6334", "qdrant-key-5f1e");
    let (ok, _, err) = kb(&config, &["list"]).await;
    assert!(!ok && err.contains("knowledge.qdrant.url"), "{err}");
}
