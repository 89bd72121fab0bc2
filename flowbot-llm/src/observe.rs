//! Per-call observability: [`Observed`] and [`LlmMetrics`].

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use flowbot_core::llm::{
    ChatModel, ChatRequest, ChatStream, FinishReason, ModelError, StreamEvent, Usage,
};
use flowbot_core::metrics::{Histogram, HistogramSnapshot, LATENCY_BUCKETS, LabeledCounter};
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::Instrument;

use crate::chain::is_answer;
use crate::price::{Cost, Counting, PriceTable};

/// One model's counters.
#[derive(Debug, Default)]
struct ModelStats {
    calls: AtomicU64,
    errors: LabeledCounter,
    input: AtomicU64,
    output: AtomicU64,
    cached_input: AtomicU64,
    reasoning: AtomicU64,
    cost: Mutex<Cost>,
    first_token: Histogram,
    duration: Histogram,
}

fn add(counter: &AtomicU64, n: u64) {
    // Saturating: a counter that reached u64::MAX stays there.
    let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
        Some(v.saturating_add(n))
    });
}

/// Calls, errors, tokens, cost and latencies of LLM calls, per model. Shared by every
/// [`Observed`] model; [`snapshot`](Self::snapshot) reads them, and
/// [`LlmMetricsSnapshot::render_prometheus`] writes them for an exporter.
#[derive(Debug, Default)]
pub struct LlmMetrics {
    prices: PriceTable,
    models: Mutex<BTreeMap<String, Arc<ModelStats>>>,
}

impl LlmMetrics {
    /// Metrics that price calls with `prices`.
    pub fn new(prices: PriceTable) -> Arc<LlmMetrics> {
        Arc::new(LlmMetrics {
            prices,
            models: Mutex::new(BTreeMap::new()),
        })
    }

    /// The prices used.
    pub fn prices(&self) -> &PriceTable {
        &self.prices
    }

    fn stats(&self, model: &str) -> Arc<ModelStats> {
        let mut models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        models.entry(model.to_owned()).or_default().clone()
    }

    /// The current values, per model, sorted by name.
    pub fn snapshot(&self) -> LlmMetricsSnapshot {
        let models = self.models.lock().unwrap_or_else(|p| p.into_inner());
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LlmMetricsSnapshot {
            models: models
                .iter()
                .map(|(name, s)| ModelMetrics {
                    model: name.clone(),
                    calls: load(&s.calls),
                    errors: s.errors.snapshot(),
                    input_tokens: load(&s.input),
                    output_tokens: load(&s.output),
                    cached_input_tokens: load(&s.cached_input),
                    reasoning_tokens: load(&s.reasoning),
                    cost: self
                        .prices
                        .price(name)
                        .map(|_| *s.cost.lock().unwrap_or_else(|p| p.into_inner())),
                    time_to_first_token: s.first_token.snapshot(),
                    duration: s.duration.snapshot(),
                })
                .collect(),
        }
    }
}

/// A copy of [`LlmMetrics`].
#[derive(Debug, Clone, PartialEq)]
pub struct LlmMetricsSnapshot {
    /// Per model, sorted by name.
    pub models: Vec<ModelMetrics>,
}

/// One model's values.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelMetrics {
    /// The model's name (`dialect/model`).
    pub model: String,
    /// Calls started.
    pub calls: u64,
    /// Failed calls by [`ModelErrorKind::as_str`](flowbot_core::llm::ModelErrorKind::as_str),
    /// sorted.
    pub errors: Vec<(String, u64)>,
    /// Prompt tokens, cached ones included.
    pub input_tokens: u64,
    /// Generated tokens, reasoning included.
    pub output_tokens: u64,
    /// Prompt tokens read from the cache.
    pub cached_input_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// What the calls cost; `None` when the price table has no price for the model.
    pub cost: Option<Cost>,
    /// From the call to the first event of the answer (text, reasoning, a tool call or the
    /// finish), for calls that got one.
    pub time_to_first_token: HistogramSnapshot,
    /// From the call to the end of its stream (or its failure, or the caller dropping it).
    pub duration: HistogramSnapshot,
}

impl LlmMetricsSnapshot {
    /// The values of `model`.
    pub fn model(&self, model: &str) -> Option<&ModelMetrics> {
        self.models.iter().find(|m| m.model == model)
    }

    /// Append the metrics in the Prometheus text format (0.0.4), in the style of the
    /// server's `/metrics`: `flowbot_llm_calls_total{model}`,
    /// `flowbot_llm_errors_total{model,kind}`, `flowbot_llm_tokens_total{model,direction}`
    /// (`input`, `output`, `cached_input`, `reasoning`), `flowbot_llm_cost_usd_total{model}`
    /// (exact decimal dollars; models without a price are left out), and the histograms
    /// `flowbot_llm_time_to_first_token_seconds{model}` and
    /// `flowbot_llm_call_duration_seconds{model}`.
    pub fn render_prometheus(&self, out: &mut String) {
        counter_header(
            out,
            "flowbot_llm_calls_total",
            "Model calls started, per model.",
        );
        for m in &self.models {
            let _ = writeln!(
                out,
                "flowbot_llm_calls_total{{model=\"{}\"}} {}",
                escape_label(&m.model),
                m.calls
            );
        }
        counter_header(
            out,
            "flowbot_llm_errors_total",
            "Failed model calls, per model and error kind.",
        );
        for m in &self.models {
            for (kind, n) in &m.errors {
                let _ = writeln!(
                    out,
                    "flowbot_llm_errors_total{{model=\"{}\",kind=\"{}\"}} {n}",
                    escape_label(&m.model),
                    escape_label(kind)
                );
            }
        }
        counter_header(
            out,
            "flowbot_llm_tokens_total",
            "Tokens, per model and direction (input includes cached_input, output includes reasoning).",
        );
        for m in &self.models {
            for (direction, n) in [
                ("input", m.input_tokens),
                ("output", m.output_tokens),
                ("cached_input", m.cached_input_tokens),
                ("reasoning", m.reasoning_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "flowbot_llm_tokens_total{{model=\"{}\",direction=\"{direction}\"}} {n}",
                    escape_label(&m.model)
                );
            }
        }
        counter_header(
            out,
            "flowbot_llm_cost_usd_total",
            "Cost of model calls in US dollars from the price table, per model.",
        );
        for m in &self.models {
            if let Some(cost) = m.cost {
                let _ = writeln!(
                    out,
                    "flowbot_llm_cost_usd_total{{model=\"{}\"}} {cost}",
                    escape_label(&m.model)
                );
            }
        }
        for (name, help, pick) in [
            (
                "flowbot_llm_time_to_first_token_seconds",
                "Time from a model call to the first event of its answer.",
                (|m: &ModelMetrics| &m.time_to_first_token)
                    as fn(&ModelMetrics) -> &HistogramSnapshot,
            ),
            (
                "flowbot_llm_call_duration_seconds",
                "Time from a model call to the end of its answer.",
                |m: &ModelMetrics| &m.duration,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for m in &self.models {
                let h = pick(m);
                let model = escape_label(&m.model);
                for (bound, n) in LATENCY_BUCKETS.iter().zip(&h.cumulative) {
                    let _ = writeln!(out, "{name}_bucket{{model=\"{model}\",le=\"{bound}\"}} {n}");
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{{model=\"{model}\",le=\"+Inf\"}} {}\n{name}_sum{{model=\"{model}\"}} {}\n{name}_count{{model=\"{model}\"}} {}",
                    h.count, h.sum_seconds, h.count
                );
            }
        }
    }
}

fn counter_header(out: &mut String, name: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A model whose calls are counted and traced. It wraps any [`ChatModel`] and counts, per
/// model, calls, errors by kind, tokens, cost (from a [`PriceTable`]), time to first token
/// and call duration in an [`LlmMetrics`], and opens a `tracing` span `llm.call` per call.
///
/// Wrap each model of a [`ModelChain`](crate::ModelChain), not the chain: then the metrics
/// say which model answered and which failed, and each is priced by its own name
/// ([`ModelChain::from_config`](crate::ModelChain::from_config) does this when given the
/// metrics).
///
/// Tokens are counted the same way for every provider: `input` is every prompt token, cached
/// ones included (Anthropic's separate cache counts are added to its input count), `output`
/// every generated token, reasoning included (Gemini's separate thought count is added);
/// `cached_input` and `reasoning` are the parts of those. A call's tokens are the last
/// [`StreamEvent::Usage`] it reported, counted when the call ends (also when it failed or was
/// dropped after reporting usage).
///
/// The span carries the model's name and, after the call, its token counts, finish reason,
/// cost and error kind; the prompt (the messages as JSON) and the answer's text are logged as
/// DEBUG events inside it, and only when DEBUG is enabled. Nothing else of the request, and
/// nothing of a provider's configuration (headers, keys), reaches the span.
pub struct Observed {
    model: Arc<dyn ChatModel>,
    metrics: Arc<LlmMetrics>,
    stats: Arc<ModelStats>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed")
            .field("model", &self.model.name())
            .finish_non_exhaustive()
    }
}

impl Observed {
    /// `model`, counted in `metrics`.
    pub fn new(model: Arc<dyn ChatModel>, metrics: Arc<LlmMetrics>) -> Observed {
        let stats = metrics.stats(model.name());
        Observed {
            model,
            metrics,
            stats,
        }
    }
}

fn finish_name(reason: &FinishReason) -> String {
    serde_json::to_value(reason)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "other".to_owned())
}

#[async_trait]
impl ChatModel for Observed {
    fn name(&self) -> &str {
        self.model.name()
    }

    async fn stream(&self, request: &ChatRequest) -> Result<ChatStream, ModelError> {
        let name = self.model.name();
        let span = tracing::info_span!(
            "llm.call",
            model = name,
            input_tokens = tracing::field::Empty,
            output_tokens = tracing::field::Empty,
            cached_input_tokens = tracing::field::Empty,
            reasoning_tokens = tracing::field::Empty,
            finish_reason = tracing::field::Empty,
            cost_usd = tracing::field::Empty,
            error = tracing::field::Empty,
        );
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        if debug {
            let prompt = serde_json::to_string(&request.messages).unwrap_or_default();
            tracing::debug!(parent: &span, prompt = %prompt, "llm prompt");
        }
        add(&self.stats.calls, 1);
        let mut call = Call {
            name: name.to_owned(),
            metrics: self.metrics.clone(),
            stats: self.stats.clone(),
            span: span.clone(),
            started: Instant::now(),
            answered: false,
            failed: false,
            usage: None,
            finish: None,
            answer: debug.then(String::new),
        };
        match self.model.stream(request).instrument(span).await {
            Ok(inner) => Ok(Box::pin(ObservedStream { inner, call })),
            Err(e) => {
                call.fail(&e);
                Err(e)
            }
        }
    }
}

/// One call, recorded when it is dropped (its stream ended, failed or was dropped).
struct Call {
    name: String,
    metrics: Arc<LlmMetrics>,
    stats: Arc<ModelStats>,
    span: tracing::Span,
    started: Instant,
    answered: bool,
    failed: bool,
    usage: Option<Usage>,
    finish: Option<FinishReason>,
    /// The answer's text, kept only when DEBUG is enabled.
    answer: Option<String>,
}

impl Call {
    fn event(&mut self, event: &StreamEvent) {
        if !self.answered && is_answer(event) {
            self.answered = true;
            self.stats.first_token.observe(self.started.elapsed());
        }
        match event {
            StreamEvent::Usage { usage } => self.usage = Some(*usage),
            StreamEvent::Finished { reason, .. } => self.finish = Some(reason.clone()),
            StreamEvent::TextDelta { text } => {
                if let Some(a) = &mut self.answer {
                    a.push_str(text);
                }
            }
            _ => {}
        }
    }

    fn fail(&mut self, e: &ModelError) {
        if !self.failed {
            self.failed = true;
            self.stats.errors.inc(e.kind.as_str());
            self.span.record("error", e.kind.as_str());
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.stats.duration.observe(self.started.elapsed());
        if let Some(u) = self.usage {
            let counting = Counting::of(&self.name);
            let cached = u.cached_input_tokens.unwrap_or(0);
            let reasoning = u.reasoning_tokens.unwrap_or(0);
            let input = if counting.input_includes_cache {
                u.input_tokens
            } else {
                u.input_tokens
                    .saturating_add(cached)
                    .saturating_add(u.cache_creation_input_tokens.unwrap_or(0))
            };
            let output = if counting.output_includes_reasoning {
                u.output_tokens
            } else {
                u.output_tokens.saturating_add(reasoning)
            };
            add(&self.stats.input, input);
            add(&self.stats.output, output);
            add(&self.stats.cached_input, cached);
            add(&self.stats.reasoning, reasoning);
            self.span.record("input_tokens", input);
            self.span.record("output_tokens", output);
            self.span.record("cached_input_tokens", cached);
            self.span.record("reasoning_tokens", reasoning);
            if let Some(cost) = self.metrics.prices.cost(&self.name, &u) {
                let mut total = self.stats.cost.lock().unwrap_or_else(|p| p.into_inner());
                *total = total.saturating_add(cost);
                self.span.record("cost_usd", tracing::field::display(cost));
            }
        }
        if let Some(reason) = &self.finish {
            self.span.record("finish_reason", finish_name(reason));
        }
        if let Some(answer) = self.answer.take() {
            tracing::debug!(parent: &self.span, answer = %answer, "llm answer");
        }
    }
}

/// The inner stream, observed; polled inside the call's span.
struct ObservedStream {
    inner: ChatStream,
    call: Call,
}

impl Stream for ObservedStream {
    type Item = Result<StreamEvent, ModelError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let span = this.call.span.clone();
        let _entered = span.enter();
        let item = this.inner.poll_next_unpin(cx);
        match &item {
            Poll::Ready(Some(Ok(event))) => this.call.event(event),
            Poll::Ready(Some(Err(e))) => this.call.fail(e),
            Poll::Ready(None) | Poll::Pending => {}
        }
        item
    }
}
