//! Dynamic batching: concurrent callers' texts are gathered into batches on the model's
//! thread, up to a maximum batch size or a maximum wait, grouped by length so that short
//! texts are not padded to long ones.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowbot_core::llm::{Embedder, ModelError};
use flowbot_core::metrics::{Histogram, HistogramSnapshot};
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::encoder::{Encoder, TextTokenizer, Tokens};
use crate::error::{Error, Result};

/// How a [`Batcher`] gathers texts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BatchOptions {
    /// The most texts in one model call.
    pub max_batch: usize,
    /// How long the first text of a batch waits for others to join it. Zero: run what is
    /// queued at once.
    #[serde(with = "humantime_serde_compat")]
    pub max_wait: Duration,
    /// The most texts waiting; one more is refused with [`Error::QueueFull`].
    pub queue: usize,
}

impl Default for BatchOptions {
    fn default() -> Self {
        BatchOptions {
            max_batch: 32,
            max_wait: Duration::from_millis(2),
            queue: 1024,
        }
    }
}

impl BatchOptions {
    /// With at most `n` texts per model call.
    pub fn max_batch(mut self, n: usize) -> BatchOptions {
        self.max_batch = n;
        self
    }

    /// With the first text of a batch waiting at most `d` for others.
    pub fn max_wait(mut self, d: Duration) -> BatchOptions {
        self.max_wait = d;
        self
    }

    /// With at most `n` texts waiting.
    pub fn queue(mut self, n: usize) -> BatchOptions {
        self.queue = n;
        self
    }

    fn check(&self) -> Result<()> {
        if self.max_batch == 0 {
            return Err(Error::settings("max_batch", "must be 1 or more"));
        }
        if self.queue == 0 {
            return Err(Error::settings("queue", "must be 1 or more"));
        }
        if self.max_wait > Duration::from_secs(10) {
            return Err(Error::settings(
                "max_wait",
                format!(
                    "{:?} is more than the 10 s a caller should wait",
                    self.max_wait
                ),
            ));
        }
        Ok(())
    }
}

/// Durations in settings files as humantime strings (`2ms`, `1s`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map_err(|e| serde::de::Error::custom(format!("'{text}': {e} (e.g. 2ms or 1s)")))
    }
}

/// Upper bounds of the batch size buckets.
pub const BATCH_BUCKETS: [u64; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Counters of a [`Batcher`]: batch sizes, time in the queue, time in the model.
#[derive(Debug, Default)]
pub struct BatchMetrics {
    sizes: [AtomicU64; BATCH_BUCKETS.len() + 1],
    texts: AtomicU64,
    batches: AtomicU64,
    refused: AtomicU64,
    cancelled: AtomicU64,
    errors: AtomicU64,
    queue_wait: Histogram,
    inference: Histogram,
}

/// A copy of a [`BatchMetrics`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct BatchMetricsSnapshot {
    /// Cumulative counts of batches by size (≤ each of [`BATCH_BUCKETS`]).
    pub sizes: Vec<u64>,
    /// Texts embedded.
    pub texts: u64,
    /// Model calls.
    pub batches: u64,
    /// Texts refused because the queue was full.
    pub refused: u64,
    /// Texts whose caller gave up before their batch ran.
    pub cancelled: u64,
    /// Model calls that failed.
    pub errors: u64,
    /// Time from queueing a text to the start of its batch.
    pub queue_wait: HistogramSnapshot,
    /// Time in the model per batch.
    pub inference: HistogramSnapshot,
}

impl BatchMetrics {
    fn batch(&self, n: usize) {
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        let i = BATCH_BUCKETS
            .iter()
            .position(|b| n <= *b)
            .unwrap_or(BATCH_BUCKETS.len());
        self.sizes[i].fetch_add(1, Ordering::Relaxed);
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.texts.fetch_add(n, Ordering::Relaxed);
    }

    /// The current values.
    pub fn snapshot(&self) -> BatchMetricsSnapshot {
        let mut total = 0;
        let sizes = self.sizes[..BATCH_BUCKETS.len()]
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        BatchMetricsSnapshot {
            sizes,
            texts: self.texts.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            cancelled: self.cancelled.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            queue_wait: self.queue_wait.snapshot(),
            inference: self.inference.snapshot(),
        }
    }
}

impl BatchMetricsSnapshot {
    /// The Prometheus text format, each series labelled with `model="<name>"`.
    pub fn render_prometheus(&self, model: &str, out: &mut String) {
        use std::fmt::Write as _;
        let model = model.replace(['\\', '"', '\n'], "_");
        let _ = writeln!(
            out,
            "# HELP flowbot_gpu_batch_size Texts per model call.\n# TYPE flowbot_gpu_batch_size histogram"
        );
        for (bound, n) in BATCH_BUCKETS.iter().zip(&self.sizes) {
            let _ = writeln!(
                out,
                "flowbot_gpu_batch_size_bucket{{model=\"{model}\",le=\"{bound}\"}} {n}"
            );
        }
        let _ = writeln!(
            out,
            "flowbot_gpu_batch_size_bucket{{model=\"{model}\",le=\"+Inf\"}} {}",
            self.batches
        );
        let _ = writeln!(
            out,
            "flowbot_gpu_batch_size_sum{{model=\"{model}\"}} {}",
            self.texts
        );
        let _ = writeln!(
            out,
            "flowbot_gpu_batch_size_count{{model=\"{model}\"}} {}",
            self.batches
        );
        for (name, help, v) in [
            (
                "refused",
                "Texts refused because the inference queue was full.",
                self.refused,
            ),
            (
                "cancelled",
                "Texts whose caller gave up before their batch ran.",
                self.cancelled,
            ),
            ("errors", "Model calls that failed.", self.errors),
        ] {
            let _ = writeln!(
                out,
                "# HELP flowbot_gpu_{name}_total {help}\n# TYPE flowbot_gpu_{name}_total counter\nflowbot_gpu_{name}_total{{model=\"{model}\"}} {v}"
            );
        }
        for (name, help, h) in [
            (
                "queue_wait",
                "Time from queueing a text to the start of its batch.",
                &self.queue_wait,
            ),
            ("inference", "Time in the model per batch.", &self.inference),
        ] {
            let _ = writeln!(
                out,
                "# HELP flowbot_gpu_{name}_seconds {help}\n# TYPE flowbot_gpu_{name}_seconds histogram"
            );
            for (bound, n) in flowbot_core::metrics::LATENCY_BUCKETS
                .iter()
                .zip(&h.cumulative)
            {
                let _ = writeln!(
                    out,
                    "flowbot_gpu_{name}_seconds_bucket{{model=\"{model}\",le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "flowbot_gpu_{name}_seconds_bucket{{model=\"{model}\",le=\"+Inf\"}} {}\nflowbot_gpu_{name}_seconds_sum{{model=\"{model}\"}} {}\nflowbot_gpu_{name}_seconds_count{{model=\"{model}\"}} {}",
                h.count, h.sum_seconds, h.count
            );
        }
    }
}

struct Item {
    tokens: Tokens,
    queued: Instant,
    reply: oneshot::Sender<Result<Vec<f32>>>,
}

/// An [`Encoder`] on its own thread, fed by a bounded queue: concurrent callers' texts are
/// run together. Implements core's [`Embedder`]. Dropping the last clone stops the thread
/// once the queue is empty.
#[derive(Clone)]
pub struct Batcher {
    tx: SyncSender<Item>,
    tokenizer: TextTokenizer,
    metrics: Arc<BatchMetrics>,
    name: Arc<str>,
    dimension: usize,
    options: BatchOptions,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("name", &self.name)
            .field("dimension", &self.dimension)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Batcher {
    /// Start the model's thread.
    pub fn start(encoder: Encoder, options: BatchOptions) -> Result<Batcher> {
        let (batcher, rx) = Batcher::parts(&encoder, options)?;
        let metrics = batcher.metrics.clone();
        let options = batcher.options.clone();
        std::thread::Builder::new()
            .name(format!("flowbot-gpu {}", encoder.name()))
            .spawn(move || worker(&encoder, &rx, &options, &metrics))
            .map_err(|e| Error::Torch(format!("could not start the inference thread: {e}")))?;
        Ok(batcher)
    }

    /// The front of a batcher and the queue its worker reads.
    fn parts(encoder: &Encoder, options: BatchOptions) -> Result<(Batcher, Receiver<Item>)> {
        options.check()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(options.queue);
        let batcher = Batcher {
            tx,
            tokenizer: encoder.tokenizer().clone(),
            metrics: Arc::new(BatchMetrics::default()),
            name: Arc::from(encoder.name()),
            dimension: encoder.dimension(),
            options,
        };
        Ok((batcher, rx))
    }

    /// The model's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The length of every vector.
    pub fn dimension(&self) -> usize {
        self.dimension
    }

    /// Its counters.
    pub fn metrics(&self) -> &Arc<BatchMetrics> {
        &self.metrics
    }

    /// Queue one text; the receiver gets its vector. Refused at once when the queue is full.
    fn submit(&self, text: &str) -> Result<oneshot::Receiver<Result<Vec<f32>>>> {
        let tokens = self.tokenizer.tokenize(text)?;
        let (reply, rx) = oneshot::channel();
        let item = Item {
            tokens,
            queued: Instant::now(),
            reply,
        };
        match self.tx.try_send(item) {
            Ok(()) => Ok(rx),
            Err(TrySendError::Full(_)) => {
                self.metrics.refused.fetch_add(1, Ordering::Relaxed);
                Err(Error::QueueFull {
                    capacity: self.options.queue,
                })
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::Stopped),
        }
    }

    /// The vector of one text. Dropping the future before it is ready takes the text out
    /// of its batch if the batch has not started.
    pub async fn embed_one(&self, text: &str) -> Result<Vec<f32>> {
        let rx = self.submit(text)?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// The vectors of `texts`, in order. They are queued `max_batch` at a time, so that one
    /// large call does not fill the queue that other callers share.
    pub async fn embed_many(&self, texts: &[String]) -> Result<Vec<Vec<f32>>> {
        let mut out = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(self.options.max_batch) {
            let pending = chunk
                .iter()
                .map(|t| self.submit(t))
                .collect::<Result<Vec<_>>>()?;
            for rx in pending {
                out.push(rx.await.map_err(|_| Error::Stopped)??);
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Embedder for Batcher {
    fn name(&self) -> &str {
        &self.name
    }

    fn dimension(&self) -> Option<usize> {
        Some(self.dimension)
    }

    async fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, ModelError> {
        self.embed_many(texts)
            .await
            .map_err(|e| e.into_model_error(&self.name))
    }
}

/// Splits texts sorted by length into groups whose padding stays small: a group closes when
/// padding everything to the next text would more than double its tokens.
fn groups(lengths: &[usize]) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut sum = 0usize;
    for (i, len) in lengths.iter().enumerate() {
        let n = i - start;
        let padded = (n + 1).saturating_mul(*len);
        if n >= 4 && padded > 2usize.saturating_mul(sum + len) {
            out.push(start..i);
            start = i;
            sum = 0;
        }
        sum += len;
    }
    if start < lengths.len() {
        out.push(start..lengths.len());
    }
    out
}

fn worker(encoder: &Encoder, rx: &Receiver<Item>, options: &BatchOptions, metrics: &BatchMetrics) {
    let _guard = tch::no_grad_guard();
    loop {
        let Ok(first) = rx.recv() else {
            return; // every Batcher is gone
        };
        let deadline = Instant::now() + options.max_wait;
        let mut items = vec![first];
        while items.len() < options.max_batch {
            match rx.try_recv() {
                Ok(item) => {
                    items.push(item);
                    continue;
                }
                Err(std::sync::mpsc::TryRecvError::Disconnected) => break,
                Err(std::sync::mpsc::TryRecvError::Empty) => {}
            }
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match rx.recv_timeout(deadline - now) {
                Ok(item) => items.push(item),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => break,
            }
        }
        // A caller that gave up leaves the batch.
        let before = items.len();
        items.retain(|i| !i.reply.is_closed());
        let gone = before - items.len();
        if gone > 0 {
            metrics
                .cancelled
                .fetch_add(u64::try_from(gone).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
        items.sort_by_key(|i| i.tokens.len());
        let lengths: Vec<usize> = items.iter().map(|i| i.tokens.len()).collect();
        let mut items = items.into_iter().map(Some).collect::<Vec<_>>();
        for range in groups(&lengths) {
            let group: Vec<Item> = items[range].iter_mut().filter_map(Option::take).collect();
            let started = Instant::now();
            for item in &group {
                metrics.queue_wait.observe(started - item.queued);
            }
            let refs: Vec<&Tokens> = group.iter().map(|i| &i.tokens).collect();
            let result = encoder.encode(&refs);
            metrics.inference.observe(started.elapsed());
            metrics.batch(group.len());
            match result {
                Ok(vectors) => {
                    for (item, v) in group.into_iter().zip(vectors) {
                        let _ = item.reply.send(Ok(v));
                    }
                }
                Err(e) => {
                    metrics.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(model = encoder.name(), error = %e, "inference failed");
                    for item in group {
                        let _ = item.reply.send(Err(e.clone()));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

    use super::*;
    use crate::Options;

    fn minilm() -> Encoder {
        let dir = std::env::var("FLOWBOT_MINILM_DIR")
            .expect("FLOWBOT_MINILM_DIR is unset: source scripts/torch-env first");
        Encoder::load(dir, &Options::cpu()).unwrap()
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_next_text_by_name_and_keeps_the_others() {
        let encoder = minilm();
        let options = BatchOptions {
            queue: 2,
            ..BatchOptions::default()
        };
        // No worker yet: the queue fills.
        let (batcher, rx) = Batcher::parts(&encoder, options.clone()).unwrap();
        let a = batcher.submit("first").unwrap();
        let b = batcher.submit("second").unwrap();
        let err = batcher.submit("third").unwrap_err();
        assert!(matches!(err, Error::QueueFull { capacity: 2 }), "{err}");
        assert_eq!(
            err.to_string(),
            "the inference queue is full (2 texts waiting)"
        );
        assert!(err.is_transient());
        assert_eq!(batcher.metrics().snapshot().refused, 1);
        // The texts already accepted are embedded once the worker runs.
        let metrics = batcher.metrics().clone();
        std::thread::spawn(move || worker(&encoder, &rx, &options, &metrics));
        let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
        assert_eq!((a.len(), b.len()), (384, 384));
        assert_ne!(a, b);
    }

    #[tokio::test]
    async fn a_cancelled_request_leaves_its_batch() {
        let encoder = minilm();
        let options = BatchOptions::default();
        let (batcher, rx) = Batcher::parts(&encoder, options.clone()).unwrap();
        let gone = batcher.submit("nobody waits for this").unwrap();
        let kept = batcher.submit("somebody waits for this").unwrap();
        drop(gone);
        let metrics = batcher.metrics().clone();
        std::thread::spawn(move || worker(&encoder, &rx, &options, &metrics));
        assert_eq!(kept.await.unwrap().unwrap().len(), 384);
        let m = batcher.metrics().snapshot();
        assert_eq!((m.cancelled, m.texts, m.batches), (1, 1, 1));
    }

    #[test]
    fn settings_out_of_range_are_refused_by_name() {
        for (options, setting) in [
            (
                BatchOptions {
                    max_batch: 0,
                    ..BatchOptions::default()
                },
                "max_batch",
            ),
            (
                BatchOptions {
                    queue: 0,
                    ..BatchOptions::default()
                },
                "queue",
            ),
            (
                BatchOptions {
                    max_wait: Duration::from_secs(60),
                    ..BatchOptions::default()
                },
                "max_wait",
            ),
        ] {
            let err = options.check().unwrap_err();
            assert!(
                matches!(err, Error::Settings { setting: s, .. } if s == setting),
                "{err}"
            );
        }
    }

    #[test]
    fn similar_lengths_stay_in_one_group() {
        assert_eq!(groups(&[5, 6, 7, 8, 9, 10]), vec![0..6]);
    }

    #[test]
    fn a_long_text_does_not_pad_many_short_ones() {
        assert_eq!(groups(&[4, 4, 4, 4, 4, 4, 4, 4, 100]), vec![0..8, 8..9]);
    }

    #[test]
    fn a_few_texts_run_together_whatever_their_lengths() {
        assert_eq!(groups(&[3, 200]), vec![0..2]);
        assert!(groups(&[]).is_empty());
    }
}
