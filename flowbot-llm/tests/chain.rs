//! Fallback chains, retries, circuit breakers, prices and per-call metrics against the fake
//! provider (OpenAI Chat Completions dialect), with tokio's clock paused: every wait is
//! virtual, and its length is asserted.

#![cfg(all(feature = "test-util", feature = "openai"))]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flowbot_core::llm::{ChatMessage, ChatModel, ChatRequest, FinishReason, ModelErrorKind, Usage};
use flowbot_llm::fake::{FAKE_KEY, FakeProvider, FakeRequest, Reply, Turn};
use flowbot_llm::{
    BreakerPolicy, BreakerState, ChainConfig, ChainEntry, Dialect, LlmMetrics, ModelChain,
    Observed, PriceTable, RetryPolicy,
};
use tokio::time::Instant;

use support::{ask, run, text_of};

fn hi() -> ChatRequest {
    ask("Hi!")
}

fn model(fake: &FakeProvider, name: &str) -> Arc<dyn ChatModel> {
    flowbot_llm::connect(&fake.config(Dialect::Openai, name)).unwrap()
}

fn retry(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        max_retry_after: Duration::from_secs(5),
    }
}

/// The models the fake was asked for, in order.
fn asked(fake: &FakeProvider) -> Vec<String> {
    fake.requests().into_iter().map(|r| r.model).collect()
}

fn status(status: u16, message: &str, retry_after: Option<&str>) -> Turn {
    Turn::Status {
        status,
        message: message.into(),
        retry_after: retry_after.map(str::to_owned),
    }
}

#[tokio::test(start_paused = true)]
async fn a_429_with_retry_after_is_retried_after_that_wait() {
    let fake = FakeProvider::start().await.unwrap();
    fake.push(status(429, "Rate limit reached for requests", Some("2")));
    fake.push(Turn::Reply(Reply::text("Hello there")));
    let chain = ModelChain::new(vec![ChainEntry::new(model(&fake, "a")).retry(retry(3))]).unwrap();
    let started = Instant::now();
    let answer = chain.complete(&hi()).await.unwrap();
    let waited = started.elapsed();
    assert_eq!(answer.text, "Hello there");
    assert_eq!(asked(&fake), ["a", "a"]);
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_millis(2500),
        "waited {waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_retry_after_over_the_cap_moves_on_at_once() {
    let fake = FakeProvider::start().await.unwrap();
    fake.respond_with(|r: &FakeRequest| match r.model.as_str() {
        "a" => status(429, "Rate limit reached for requests", Some("60")),
        _ => Turn::Reply(Reply::text("from b")),
    });
    let chain = ModelChain::new(vec![
        ChainEntry::new(model(&fake, "a")).retry(retry(3)),
        ChainEntry::new(model(&fake, "b")).retry(retry(3)),
    ])
    .unwrap();
    let started = Instant::now();
    let answer = chain.complete(&hi()).await.unwrap();
    assert_eq!(answer.text, "from b");
    assert_eq!(asked(&fake), ["a", "b"]);
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(start_paused = true)]
async fn an_overloaded_model_is_retried_then_the_next_one_answers() {
    let fake = FakeProvider::start().await.unwrap();
    fake.respond_with(|r: &FakeRequest| match r.model.as_str() {
        "a" => status(503, "The server is overloaded", None),
        _ => Turn::Reply(Reply::text("from b")),
    });
    let chain = ModelChain::new(vec![
        ChainEntry::new(model(&fake, "a")).retry(retry(2)),
        ChainEntry::new(model(&fake, "b")).retry(retry(2)),
    ])
    .unwrap();
    let started = Instant::now();
    let answer = chain.complete(&hi()).await.unwrap();
    assert_eq!(answer.text, "from b");
    assert_eq!(answer.model.as_deref(), Some("b"));
    assert_eq!(asked(&fake), ["a", "a", "b"]);
    // One backoff with full jitter: at most the first ceiling.
    assert!(
        started.elapsed() <= Duration::from_millis(100),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(chain.name(), "chain(openai/a,openai/b)");
}

#[tokio::test(start_paused = true)]
async fn an_open_breaker_skips_its_model_until_a_trial_after_the_cooldown() {
    let fake = FakeProvider::start().await.unwrap();
    let a_down = Arc::new(AtomicBool::new(true));
    let down = a_down.clone();
    fake.respond_with(move |r: &FakeRequest| match r.model.as_str() {
        "a" if down.load(Ordering::SeqCst) => status(503, "The server is overloaded", None),
        "a" => Turn::Reply(Reply::text("from a")),
        _ => Turn::Reply(Reply::text("from b")),
    });
    let breaker = BreakerPolicy {
        failures: 2,
        cooldown: Duration::from_secs(30),
    };
    let chain = ModelChain::new(vec![
        ChainEntry::new(model(&fake, "a"))
            .retry(retry(1))
            .breaker(breaker),
        ChainEntry::new(model(&fake, "b")).retry(retry(1)),
    ])
    .unwrap();
    let calls_to_a = || asked(&fake).iter().filter(|m| *m == "a").count();

    // Two failures open it.
    for _ in 0..2 {
        assert_eq!(chain.complete(&hi()).await.unwrap().text, "from b");
    }
    assert_eq!(calls_to_a(), 2);
    assert_eq!(
        chain.breakers()[0],
        (
            "openai/a".to_owned(),
            BreakerState::Open {
                remaining: Duration::from_secs(30)
            }
        )
    );
    // During the cool-down A is not called, even though it is up again.
    a_down.store(false, Ordering::SeqCst);
    for _ in 0..3 {
        assert_eq!(chain.complete(&hi()).await.unwrap().text, "from b");
    }
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(chain.complete(&hi()).await.unwrap().text, "from b");
    assert_eq!(calls_to_a(), 2);
    // Then one trial, which succeeds and closes the breaker.
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(chain.complete(&hi()).await.unwrap().text, "from a");
    assert_eq!(calls_to_a(), 3);
    assert_eq!(chain.breakers()[0].1, BreakerState::Closed { failures: 0 });

    // Down again: two failures open it, a failed trial opens it for another cool-down.
    a_down.store(true, Ordering::SeqCst);
    for _ in 0..2 {
        assert_eq!(chain.complete(&hi()).await.unwrap().text, "from b");
    }
    assert_eq!(calls_to_a(), 5);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert_eq!(chain.complete(&hi()).await.unwrap().text, "from b");
    assert_eq!(calls_to_a(), 6);
    assert_eq!(chain.complete(&hi()).await.unwrap().text, "from b");
    assert_eq!(calls_to_a(), 6);
    assert!(matches!(chain.breakers()[0].1, BreakerState::Open { .. }));
}

#[tokio::test(start_paused = true)]
async fn every_breaker_open_fails_fast_with_a_transient_error_and_its_wait() {
    let fake = FakeProvider::start().await.unwrap();
    fake.respond_with(|_: &FakeRequest| status(500, "Internal error", None));
    let chain = ModelChain::new(vec![
        ChainEntry::new(model(&fake, "a"))
            .retry(retry(1))
            .breaker(BreakerPolicy {
                failures: 1,
                cooldown: Duration::from_secs(60),
            }),
    ])
    .unwrap();
    let e = chain.complete(&hi()).await.unwrap_err();
    assert_eq!((e.kind, e.status), (ModelErrorKind::Server, Some(500)));
    tokio::time::advance(Duration::from_secs(20)).await;
    let e = chain.complete(&hi()).await.unwrap_err();
    assert_eq!(asked(&fake).len(), 1);
    assert_eq!(e.kind, ModelErrorKind::Overloaded);
    assert!(e.is_transient());
    assert_eq!(e.retry_after, Some(Duration::from_secs(40)));
    assert!(
        e.message.ends_with(
            "[every model of chain(openai/a) failed: openai/a: skipped, circuit breaker open]"
        ),
        "{e}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_drops_after_text_fails_to_the_caller_without_a_retry() {
    let fake = FakeProvider::start().await.unwrap();
    // Written in pieces, so that the text before the cut leaves the server.
    fake.chunked(64);
    let mut reply = Reply::text("word ".repeat(200));
    reply.delta_chars = 4;
    fake.push(Turn::Drop {
        reply,
        after_bytes: 3000,
    });
    fake.respond_with(|_: &FakeRequest| Turn::Reply(Reply::text("must not be asked")));
    let chain = ModelChain::new(vec![
        ChainEntry::new(model(&fake, "a")).retry(retry(3)),
        ChainEntry::new(model(&fake, "b")).retry(retry(3)),
    ])
    .unwrap();
    let (events, error) = run(&chain, &hi()).await;
    let text = text_of(&events);
    assert!(!text.is_empty() && text.len() < 1000, "{text:?}");
    assert!("word ".repeat(200).starts_with(&text), "{text:?}");
    let error = error.expect("the drop reaches the caller");
    assert_eq!(error.kind, ModelErrorKind::Connection, "{error}");
    assert_eq!(error.model, "openai/a");
    assert!(!error.message.contains("every model"), "{error}");
    assert_eq!(asked(&fake), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn a_stream_that_drops_before_any_answer_is_retried() {
    let fake = FakeProvider::start().await.unwrap();
    fake.push(Turn::Drop {
        reply: Reply::text("lost"),
        after_bytes: 0,
    });
    fake.push(Turn::Reply(Reply::text("second try")));
    let chain = ModelChain::new(vec![ChainEntry::new(model(&fake, "a")).retry(retry(2))]).unwrap();
    let (events, error) = run(&chain, &hi()).await;
    assert!(error.is_none(), "{error:?}");
    let text = text_of(&events);
    assert_eq!(text, "second try");
    assert_eq!(asked(&fake), ["a", "a"]);
}

#[tokio::test(start_paused = true)]
async fn a_rejected_key_on_the_first_model_moves_on_to_the_next() {
    let fake = FakeProvider::start().await.unwrap();
    fake.respond_with(|_: &FakeRequest| Turn::Reply(Reply::text("from b")));
    let metrics = LlmMetrics::new(PriceTable::empty());
    let bad = fake.config(Dialect::Openai, "a").api_key("not-the-key");
    let a: Arc<dyn ChatModel> = Arc::new(Observed::new(
        flowbot_llm::connect(&bad).unwrap(),
        metrics.clone(),
    ));
    let chain = ModelChain::new(vec![
        ChainEntry::new(a).retry(retry(3)),
        ChainEntry::new(model(&fake, "b")).retry(retry(3)),
    ])
    .unwrap();
    let started = Instant::now();
    assert_eq!(chain.complete(&hi()).await.unwrap().text, "from b");
    assert_eq!(started.elapsed(), Duration::ZERO);
    // A was called once (the fake records only requests with the right key) and not retried.
    let a = metrics.snapshot();
    let a = a.model("openai/a").unwrap();
    assert_eq!(a.calls, 1);
    assert_eq!(a.errors, [("auth".to_owned(), 1)]);
    assert_eq!(asked(&fake), ["b"]);
}

#[tokio::test(start_paused = true)]
async fn a_context_too_long_error_is_returned_as_it_is() {
    let fake = FakeProvider::start().await.unwrap();
    let message = "This model's maximum context length is 128000 tokens. However, your messages resulted in 130000 tokens.";
    fake.respond_with(move |r: &FakeRequest| match r.model.as_str() {
        "a" => status(400, message, None),
        _ => Turn::Reply(Reply::text("must not be asked")),
    });
    let chain = ModelChain::new(vec![
        ChainEntry::new(model(&fake, "a")).retry(retry(3)),
        ChainEntry::new(model(&fake, "b")).retry(retry(3)),
    ])
    .unwrap();
    let e = chain.complete(&hi()).await.unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::ContextTooLong);
    assert_eq!((e.model.as_str(), e.status), ("openai/a", Some(400)));
    assert_eq!(e.message, message);
    assert_eq!(asked(&fake), ["a"]);
}

#[tokio::test(start_paused = true)]
async fn when_every_model_fails_the_transient_error_is_returned_with_every_model_tried() {
    let fake = FakeProvider::start().await.unwrap();
    fake.respond_with(|_: &FakeRequest| status(503, "The server is overloaded", None));
    let bad = fake.config(Dialect::Openai, "b").api_key("not-the-key");
    let chain = ModelChain::new(vec![
        ChainEntry::new(model(&fake, "a")).retry(retry(2)),
        ChainEntry::new(flowbot_llm::connect(&bad).unwrap()).retry(retry(2)),
    ])
    .unwrap()
    .with_name("assistant");
    let e = chain.complete(&hi()).await.unwrap_err();
    // B's rejected key is permanent, A's overload may pass: A's error is the call's.
    assert_eq!(e.kind, ModelErrorKind::Overloaded);
    assert_eq!((e.model.as_str(), e.status), ("openai/a", Some(503)));
    assert_eq!(
        e.message,
        "The server is overloaded [every model of assistant failed: openai/a: 2 attempts, \
         last overloaded (HTTP 503); openai/b: 1 attempt, last auth (HTTP 401)]"
    );
    assert_eq!(asked(&fake), ["a", "a"]);
}

#[tokio::test(start_paused = true)]
async fn a_chain_from_toml_counts_each_model_and_prices_it_exactly() {
    let fake = FakeProvider::start().await.unwrap();
    let usage = Usage {
        input_tokens: 1200,
        output_tokens: 300,
        cached_input_tokens: Some(200),
        reasoning_tokens: Some(100),
        ..Usage::default()
    };
    fake.respond_with(move |r: &FakeRequest| match r.model.as_str() {
        "gpt-4o" => status(429, "Rate limit reached for requests", None),
        _ => {
            let mut reply = Reply::text("Priced answer");
            reply.usage = usage;
            Turn::Reply(reply)
        }
    });
    let toml = format!(
        r#"
        name = "assistant"
        retry = {{ max_attempts = 2, initial_backoff_ms = 100 }}
        breaker = {{ failures = 10 }}
        [[models]]
        provider = {{ dialect = "openai", model = "gpt-4o", base_url = "http://{addr}/v1", api_key = "{FAKE_KEY}" }}
        retry = {{ max_attempts = 1 }}
        [[models]]
        provider = {{ dialect = "openai", model = "gpt-4o-mini", base_url = "http://{addr}/v1", api_key = "{FAKE_KEY}" }}
        "#,
        addr = fake.addr()
    );
    let config: ChainConfig = toml::from_str(&toml).unwrap();
    let metrics = LlmMetrics::new(PriceTable::with_defaults());
    let chain = ModelChain::from_config(&config, Some(&metrics)).unwrap();
    assert_eq!(chain.name(), "assistant");
    for _ in 0..3 {
        let answer = chain.complete(&hi()).await.unwrap();
        assert_eq!(answer.text, "Priced answer");
        assert_eq!(answer.finish, Some(FinishReason::Stop));
    }
    assert_eq!(
        asked(&fake),
        [
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o",
            "gpt-4o-mini",
            "gpt-4o",
            "gpt-4o-mini"
        ]
    );
    let snapshot = metrics.snapshot();
    let mini = snapshot.model("openai/gpt-4o-mini").unwrap();
    assert_eq!(mini.calls, 3);
    assert!(mini.errors.is_empty());
    assert_eq!(
        (
            mini.input_tokens,
            mini.output_tokens,
            mini.cached_input_tokens,
            mini.reasoning_tokens
        ),
        (3600, 900, 600, 300)
    );
    // Per call, in pico-dollars: 1000 uncached × 150000 + 200 cached × 75000 +
    // 200 output × 600000 + 100 reasoning × 600000 = 345,000,000; three calls.
    assert_eq!(mini.cost.unwrap().pico_usd(), 3 * 345_000_000);
    assert_eq!(mini.time_to_first_token.count, 3);
    assert_eq!(mini.duration.count, 3);
    let big = snapshot.model("openai/gpt-4o").unwrap();
    assert_eq!(big.calls, 3);
    assert_eq!(big.errors, [("rate_limited".to_owned(), 3)]);
    assert_eq!((big.input_tokens, big.output_tokens), (0, 0));
    assert_eq!(big.cost.unwrap().pico_usd(), 0);
    assert_eq!(big.time_to_first_token.count, 0);
    assert_eq!(big.duration.count, 3);

    let mut text = String::new();
    snapshot.render_prometheus(&mut text);
    for line in [
        "# TYPE flowbot_llm_calls_total counter",
        "flowbot_llm_calls_total{model=\"openai/gpt-4o\"} 3",
        "flowbot_llm_calls_total{model=\"openai/gpt-4o-mini\"} 3",
        "flowbot_llm_errors_total{model=\"openai/gpt-4o\",kind=\"rate_limited\"} 3",
        "flowbot_llm_tokens_total{model=\"openai/gpt-4o-mini\",direction=\"input\"} 3600",
        "flowbot_llm_tokens_total{model=\"openai/gpt-4o-mini\",direction=\"output\"} 900",
        "flowbot_llm_tokens_total{model=\"openai/gpt-4o-mini\",direction=\"cached_input\"} 600",
        "flowbot_llm_tokens_total{model=\"openai/gpt-4o-mini\",direction=\"reasoning\"} 300",
        "flowbot_llm_cost_usd_total{model=\"openai/gpt-4o-mini\"} 0.001035",
        "flowbot_llm_cost_usd_total{model=\"openai/gpt-4o\"} 0",
        "# TYPE flowbot_llm_time_to_first_token_seconds histogram",
        "flowbot_llm_time_to_first_token_seconds_count{model=\"openai/gpt-4o-mini\"} 3",
        "flowbot_llm_time_to_first_token_seconds_bucket{model=\"openai/gpt-4o-mini\",le=\"+Inf\"} 3",
        "flowbot_llm_call_duration_seconds_count{model=\"openai/gpt-4o\"} 3",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    // Every sample line parses as `name{labels} number`.
    for l in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = l.rsplit_once(' ').unwrap();
        assert!(value.parse::<f64>().is_ok(), "{l}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_bad_chain_config_names_the_key() {
    let config: ChainConfig = toml::from_str(
        "retry = { max_attempts = 11 }\n[[models]]\nprovider = { dialect = \"openai\", model = \"a\" }\n",
    )
    .unwrap();
    let e = ModelChain::from_config(&config, None).unwrap_err();
    assert_eq!(e.kind, ModelErrorKind::Config);
    assert_eq!(e.message, "retry.max_attempts = 11: must be 1..=10");
}

/// Fields as (name, value as text).
type FieldList = Vec<(String, String)>;

/// A subscriber that keeps every span's fields and every event's fields, as text.
#[derive(Clone, Default)]
struct Capture {
    level: Option<tracing::Level>,
    spans: Arc<Mutex<Vec<(String, FieldList)>>>,
    events: Arc<Mutex<Vec<FieldList>>>,
}

struct Fields<'a>(&'a mut FieldList);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push((field.name().to_owned(), format!("{value:?}")));
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.push((field.name().to_owned(), value.to_owned()));
    }
}

impl tracing::Subscriber for Capture {
    fn register_callsite(
        &self,
        _: &'static tracing::Metadata<'static>,
    ) -> tracing::subscriber::Interest {
        tracing::subscriber::Interest::sometimes()
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        self.level.is_some_and(|l| *metadata.level() <= l)
    }

    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = Vec::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((span.metadata().name().to_owned(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }

    fn record(&self, span: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let index = usize::try_from(span.into_u64()).unwrap() - 1;
        values.record(&mut Fields(&mut spans[index].1));
    }

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut fields = Vec::new();
        event.record(&mut Fields(&mut fields));
        self.events.lock().unwrap().push(fields);
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

impl Capture {
    fn llm_calls(&self) -> Vec<FieldList> {
        let spans = self.spans.lock().unwrap();
        spans
            .iter()
            .filter(|(name, _)| name == "llm.call")
            .map(|(_, f)| f.clone())
            .collect()
    }

    fn everything(&self) -> String {
        format!(
            "{:?} {:?}",
            self.spans.lock().unwrap(),
            self.events.lock().unwrap()
        )
    }
}

#[tokio::test(start_paused = true)]
async fn each_call_has_a_span_with_its_numbers_and_text_only_at_debug() {
    for level in [tracing::Level::INFO, tracing::Level::DEBUG] {
        let fake = FakeProvider::start().await.unwrap();
        let mut reply = Reply::text("The secret answer");
        reply.usage = Usage {
            input_tokens: 1000,
            output_tokens: 10,
            ..Usage::default()
        };
        fake.push(Turn::Reply(reply));
        let capture = Capture {
            level: Some(level),
            ..Capture::default()
        };
        let _guard = tracing::subscriber::set_default(capture.clone());
        let metrics = LlmMetrics::new(PriceTable::with_defaults());
        let model = Observed::new(model(&fake, "gpt-4o-mini"), metrics);
        let request = ChatRequest::new(vec![ChatMessage::user("What is the prompt word?")]);
        let answer = model.complete(&request).await.unwrap();
        assert_eq!(answer.text, "The secret answer");

        let calls = capture.llm_calls();
        assert_eq!(calls.len(), 1, "{level}");
        let fields: std::collections::BTreeMap<String, String> = calls[0].iter().cloned().collect();
        assert_eq!(fields["model"], "openai/gpt-4o-mini");
        assert_eq!(fields["input_tokens"], "1000");
        assert_eq!(fields["output_tokens"], "10");
        assert_eq!(fields["cached_input_tokens"], "0");
        assert_eq!(fields["reasoning_tokens"], "0");
        assert_eq!(fields["finish_reason"], "stop");
        // 1000 × 0.15 + 10 × 0.60 USD per million.
        assert_eq!(fields["cost_usd"], "0.000156");
        assert!(!fields.contains_key("error"));

        let all = capture.everything();
        assert!(!all.contains(FAKE_KEY), "{all}");
        let texts_logged =
            all.contains("What is the prompt word?") && all.contains("The secret answer");
        let any_text = all.contains("prompt word") || all.contains("secret answer");
        if level == tracing::Level::DEBUG {
            assert!(texts_logged, "{all}");
        } else {
            assert!(!any_text, "{all}");
        }
    }
}
