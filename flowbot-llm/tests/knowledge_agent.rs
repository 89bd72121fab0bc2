//! The knowledge base with the rest of FlowBot: an agent answering from it with citations
//! (the model is `FakeProvider`, a local server speaking OpenAI's wire protocol), OpenAI
//! embeddings through the same fake, and the ingestion job run by a bot's task workers on
//! the in-memory queue.

#![cfg(all(feature = "knowledge", feature = "openai", feature = "test-util"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod knowledge_kit;

use std::sync::Arc;
use std::time::Duration;

use flowbot_core::llm::{Ask, Assistant, ChatMessage};
use flowbot_core::{
    Bot, Event, InProcess, Message, Reply as BotReply, Result as CoreResult, Router, Sender, Turn,
    async_trait,
};
use flowbot_llm::context::counter_for;
use flowbot_llm::fake::{FakeProvider, Reply, Turn as FakeTurn};
use flowbot_llm::knowledge::*;
use flowbot_llm::{Agent, Dialect, Limits};
use flowbot_store::MemoryStore;
use knowledge_kit::{HashEmbedder, Vectors};
use serde_json::Value;

const MODEL: &str = "gpt-4o-mini";

/// Routes every message to the agent, asking the `docs` collection.
struct AskDocs(Arc<Agent>);

#[async_trait]
impl Router for AskDocs {
    async fn route(&self, turn: &Turn) -> CoreResult<BotReply> {
        let mut ask = Ask::default();
        ask.knowledge = Some("docs".into());
        let answer = self.0.answer(turn, &ask).await?;
        Ok(BotReply(answer.reply))
    }
}

async fn kb_with(docs: &[(&str, &str)]) -> Arc<Knowledge> {
    let kb = Knowledge::new(
        Arc::new(Vectors::memory()),
        Arc::new(HashEmbedder::new(64)),
        Arc::new(MemoryStore::new()),
    );
    for (source, text) in docs {
        let doc = Document::from_bytes(
            source,
            DocKind::Markdown,
            text.as_bytes(),
            &LoadOptions::default(),
        )
        .unwrap();
        kb.ingest("docs", &doc).await.unwrap();
    }
    Arc::new(kb)
}

/// The bot's answer to `text` and the chat requests the model got.
async fn ask_bot(agent: Agent, fake: &FakeProvider, text: &str) -> (String, Vec<Value>) {
    let (channel, _handle) = InProcess::channel("web", 8);
    let bot = Bot::builder()
        .channel(channel)
        .router(AskDocs(Arc::new(agent)))
        .without_workers()
        .build()
        .unwrap();
    let message = Message::text("web", "c1", Sender::user("ann"), text);
    let replies = bot.handle(Event::Message(message)).await;
    assert_eq!(replies.len(), 1, "{replies:?}");
    let requests = fake.requests().into_iter().map(|r| r.body).collect();
    (replies[0].text.clone(), requests)
}

async fn fake_agent() -> (FakeProvider, flowbot_llm::AgentBuilder) {
    let fake = FakeProvider::start().await.unwrap();
    let model = flowbot_llm::connect(&fake.config(Dialect::Openai, MODEL)).unwrap();
    (fake, Agent::builder(model))
}

fn system_of(request: &Value) -> String {
    request["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn the_agent_answers_from_the_sources_and_lists_those_it_cites() {
    let kb = kb_with(&[
        (
            "faq.md",
            "# FAQ\n\n## Parking\n\nPark in lot B behind the office.",
        ),
        ("menu.md", "# Canteen\n\nSoup is served on Fridays."),
    ])
    .await;
    let (fake, builder) = fake_agent().await;
    fake.push(FakeTurn::Reply(Reply::text("Use lot B [1].")));
    let agent = builder.knowledge(kb).build().unwrap();
    let (answer, requests) = ask_bot(agent, &fake, "where do I park in the lot?").await;
    assert_eq!(answer, "Use lot B [1].\n\nSources:\n[1] FAQ — faq.md");
    assert_eq!(requests.len(), 1);
    let system = system_of(&requests[0]);
    assert!(system.contains(CITE_INSTRUCTIONS), "{system}");
    assert!(
        system.contains("[1] FAQ — Parking — faq.md\nPark in lot B behind the office."),
        "{system}"
    );
    let last = requests[0]["messages"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["content"], "where do I park in the lot?");
}

#[tokio::test]
async fn with_nothing_above_the_threshold_the_agent_does_not_know_without_the_model() {
    let kb = kb_with(&[("faq.md", "# FAQ\n\nPark in lot B.")]).await;
    let (fake, builder) = fake_agent().await;
    let mut options = KnowledgeOptions::default();
    options.search.threshold = Some(0.99);
    options.dont_know = "Sorry, I have nothing on that.".into();
    let agent = builder
        .knowledge(kb)
        .knowledge_options(options)
        .build()
        .unwrap();
    let (answer, requests) = ask_bot(agent, &fake, "what about the weather?").await;
    assert_eq!(answer, "Sorry, I have nothing on that.");
    assert!(requests.is_empty(), "the model was called: {requests:?}");
}

#[tokio::test]
async fn the_sources_stay_within_the_context_budget() {
    let filler = "lot parking rules apply to every car and every visitor all week long ".repeat(4);
    let docs: Vec<(String, String)> = (1..=3)
        .map(|i| {
            (
                format!("p{i}.md"),
                format!("# Part {i}\n\nParking lot {i}: {filler}"),
            )
        })
        .collect();
    let docs: Vec<(&str, &str)> = docs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let kb = kb_with(&docs).await;
    let (fake, builder) = fake_agent().await;
    fake.push(FakeTurn::Reply(Reply::text("See [1].")));
    let limits = Limits {
        context_tokens: 330,
        answer_tokens: 60,
        ..Limits::default()
    };
    let agent = builder.knowledge(kb).limits(limits).build().unwrap();
    let (answer, requests) = ask_bot(agent, &fake, "parking lot rules").await;
    assert!(
        answer.starts_with("See [1].\n\nSources:\n[1] Part "),
        "{answer}"
    );
    let system = system_of(&requests[0]);
    assert!(system.contains("\n[1] Part "), "{system}");
    assert!(
        !system.contains("\n[3] Part "),
        "not every passage fits: {system}"
    );
    // What the agent sent fits the window less the room kept for the answer.
    let counter = counter_for(MODEL);
    let sent = counter.count_messages(&[
        ChatMessage::system(system),
        ChatMessage::user("parking lot rules"),
    ]);
    assert!(sent <= 330 - 60, "{sent} tokens for a budget of 270");
}

#[tokio::test]
async fn openai_embeddings_through_the_fake_fill_and_search_a_collection() {
    let fake = FakeProvider::start().await.unwrap();
    let mut config = fake.config(Dialect::Openai, MODEL);
    config.embedding_model = Some("text-embedding-3-small".into());
    let embedder = flowbot_llm::connect_embedder(&config).unwrap();
    let kb = Knowledge::new(
        Arc::new(Vectors::memory()),
        embedder,
        Arc::new(MemoryStore::new()),
    );
    // The embedder learns its dimension from a first call.
    let spec = kb.ensure_collection("web").await.unwrap();
    assert_eq!(spec.dimension, 8);
    for (s, t) in [
        ("a.txt", "The first text."),
        ("b.txt", "Another one entirely."),
    ] {
        let doc =
            Document::from_bytes(s, DocKind::Text, t.as_bytes(), &LoadOptions::default()).unwrap();
        assert_eq!(kb.ingest("web", &doc).await.unwrap(), IngestOutcome::Added);
    }
    let found = kb
        .search("web", "Another one entirely.", &SearchOptions::default())
        .await
        .unwrap();
    assert_eq!(found[0].source, "b.txt");
    assert!(
        (found[0].vector_score.unwrap() - 1.0).abs() < 1e-4,
        "{found:?}"
    );
    assert!(fake.requests().iter().all(|r| r.path == "/v1/embeddings"));
}

struct Nobody;

#[async_trait]
impl Router for Nobody {
    async fn route(&self, _: &Turn) -> CoreResult<BotReply> {
        Ok(BotReply::none())
    }
}

#[tokio::test]
async fn the_ingestion_job_runs_on_the_queue_and_records_its_state() {
    let kv = Arc::new(MemoryStore::new());
    let kb = Arc::new(Knowledge::new(
        Arc::new(Vectors::memory()),
        Arc::new(HashEmbedder::new(64)),
        kv.clone(),
    ));
    let mut registry = flowbot_core::task::TaskRegistry::new();
    register_ingest(&mut registry, kb.clone()).unwrap();
    assert!(registry.contains(INGEST_TASK));

    let (channel, _handle) = InProcess::channel("web", 8);
    let bot = Bot::builder()
        .channel(channel)
        .router(Nobody)
        .store(Arc::new(MemoryStore::new()))
        .task(INGEST_TASK, ingest_handler(kb.clone()))
        .build()
        .unwrap();
    let tasks = bot.tasks().unwrap().clone();
    let job = IngestJob::new(
        "docs",
        vec![
            Source::inline("a.md", DocKind::Markdown, "Apples."),
            Source::inline("b.txt", DocKind::Text, ""),
        ],
    );
    let id = enqueue_ingest(&tasks, &kb, &job).await.unwrap();
    assert_eq!(id, job.id);
    assert_eq!(
        kb.job(&id).await.unwrap().unwrap().status,
        JobStatus::Queued
    );

    // Nothing runs it yet: a wait ends at its deadline with the state then.
    let queued = kb
        .wait_job(&id, Duration::from_millis(20))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(queued.status, JobStatus::Queued);
    assert!(
        kb.wait_job("no-such-job", Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );

    let shutdown = flowbot_core::CancellationToken::new();
    let running = tokio::spawn(bot.run(shutdown.clone()));
    // The wait ends when the queue's worker saves the job's last state.
    let state = kb
        .wait_job(&id, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    shutdown.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(state.status, JobStatus::Done);
    assert_eq!((state.total, state.done, state.chunks), (2, 2, 1));
    assert_eq!(state.attempts, 1);
    assert!(
        state.errors["b.txt"].contains("b.txt: the document has no text"),
        "{:?}",
        state.errors
    );
    assert!(state.retry.is_empty());
    assert_eq!(kb.documents("docs").await.unwrap().len(), 1);
}

// ---------------------------------------------------------------------------------------
// The `llm` action (what workflow `llm` nodes call)

fn action_cx() -> flowbot_core::ActionContext {
    flowbot_core::ActionContext {
        store: None,
        senders: Arc::new(flowbot_core::Senders::default()),
        source: None,
    }
}

fn registry_with(action: flowbot_llm::LlmAction) -> flowbot_core::ActionRegistry {
    let mut registry = flowbot_core::ActionRegistry::default();
    registry.register(action).unwrap();
    registry
}

#[tokio::test]
async fn the_llm_action_answers_from_a_collection_and_lists_the_sources_it_cites() {
    let kb = kb_with(&[
        (
            "faq.md",
            "# FAQ\n\n## Parking\n\nPark in lot B behind the office.",
        ),
        ("menu.md", "# Canteen\n\nSoup is served on Fridays."),
    ])
    .await;
    let (fake, builder) = fake_agent().await;
    fake.push(FakeTurn::Reply(Reply::text("Use lot B [1].")));
    let agent = Arc::new(builder.build().unwrap());
    let action = flowbot_llm::LlmAction::new(agent).with_knowledge(kb, KnowledgeOptions::default());
    let registry = registry_with(action);
    let input = serde_json::json!({
        "text": "where do I park in the lot?",
        "prompt": "Be brief.",
        "knowledge": "docs",
    });
    let out = registry.call("llm", &action_cx(), input).await.unwrap();
    assert_eq!(out["text"], "Use lot B [1].\n\nSources:\n[1] FAQ — faq.md");
    assert_eq!(
        out["sources"],
        serde_json::json!([{"n": 1, "title": "FAQ", "source": "faq.md", "url": null, "page": null}])
    );
    let requests: Vec<Value> = fake.requests().into_iter().map(|r| r.body).collect();
    assert_eq!(requests.len(), 1);
    let system = system_of(&requests[0]);
    assert!(system.starts_with("Be brief.\n\n"), "{system}");
    assert!(system.contains(CITE_INSTRUCTIONS), "{system}");
    assert!(
        system.contains("[1] FAQ — Parking — faq.md\nPark in lot B behind the office."),
        "{system}"
    );
    // Without `knowledge`, no sources: the plain action.
    fake.push(FakeTurn::Reply(Reply::text("Hello.")));
    let out = registry
        .call("llm", &action_cx(), serde_json::json!({"text": "hi"}))
        .await
        .unwrap();
    assert_eq!(out["text"], "Hello.");
    assert!(out.get("sources").is_none(), "{out}");
    let requests = fake.requests();
    assert_eq!(requests[1].body["messages"][0]["role"], "user");
    // The input schema names the field; an empty collection name is refused.
    let e = registry
        .call(
            "llm",
            &action_cx(),
            serde_json::json!({"text": "hi", "knowledge": ""}),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("knowledge"), "{e}");
}

#[tokio::test]
async fn the_llm_action_does_not_know_without_the_model_and_uses_the_agents_knowledge() {
    let kb = kb_with(&[("faq.md", "# FAQ\n\nPark in lot B.")]).await;
    let (fake, builder) = fake_agent().await;
    let mut options = KnowledgeOptions::default();
    options.search.threshold = Some(0.99);
    options.dont_know = "Sorry, I have nothing on that.".into();
    // The agent's knowledge base and options are the action's.
    let agent = Arc::new(
        builder
            .knowledge(kb)
            .knowledge_options(options)
            .build()
            .unwrap(),
    );
    let registry = registry_with(flowbot_llm::LlmAction::new(agent));
    let input = serde_json::json!({"text": "what about the weather?", "knowledge": "docs"});
    let out = registry.call("llm", &action_cx(), input).await.unwrap();
    assert_eq!(out["text"], "Sorry, I have nothing on that.");
    assert_eq!(out["sources"], serde_json::json!([]));
    assert!(fake.requests().is_empty(), "the model was called");

    // An action without a knowledge base refuses an input naming a collection.
    let (fake, builder) = fake_agent().await;
    let registry = registry_with(flowbot_llm::LlmAction::new(Arc::new(
        builder.build().unwrap(),
    )));
    let input = serde_json::json!({"text": "where to park?", "knowledge": "docs"});
    let e = registry.call("llm", &action_cx(), input).await.unwrap_err();
    assert!(e.to_string().contains("no knowledge base"), "{e}");
    assert!(fake.requests().is_empty());
}
