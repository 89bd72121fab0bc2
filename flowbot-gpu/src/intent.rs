//! Intent classification: sentence embeddings and a small softmax head trained in Rust from
//! the example texts declared with the rules, with confidences calibrated on held-out
//! examples (temperature scaling).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use flowbot_core::{Classifier, Label};
use serde::{Deserialize, Serialize};
use tch::{Device, Kind, Tensor, nn, nn::OptimizerConfig};

use crate::batcher::Batcher;
use crate::error::{Error, Result};

/// How the head is trained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct TrainOptions {
    /// Full passes over the examples.
    pub epochs: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// The weight of the L2 penalty on the head's weights (keeps confidences moderate).
    pub l2: f64,
    /// Train an extra, unnamed class on [`OUT_OF_SCOPE`] texts (those not close to any
    /// example), so that a text unlike every intent gets low confidences instead of the
    /// nearest intent's. Its share is never reported as a label: the labels' confidences
    /// then add up to less than 1.
    pub out_of_scope: bool,
}

/// Texts about nothing a bot's intents are likely to be about (trivia, arithmetic, recipes,
/// small statements, noise): the negative class of [`TrainOptions::out_of_scope`]. A text
/// with a cosine of more than 0.6 to one of the rules' examples is left out of it.
pub const OUT_OF_SCOPE: &[&str] = &[
    "what is the capital of Peru",
    "who wrote War and Peace",
    "how many legs does a spider have",
    "what is 17 times 23",
    "solve x squared minus four equals zero",
    "give me a recipe for banana bread",
    "how long should I boil an egg",
    "who won the world cup in 1998",
    "explain quantum entanglement",
    "translate good luck into Japanese",
    "write a poem about the sea",
    "tell me a joke about cats",
    "what is the meaning of life",
    "how far away is the moon",
    "recommend a good science fiction novel",
    "what year did the Berlin wall fall",
    "how do I center a div in CSS",
    "what's the difference between a list and a tuple in Python",
    "how tall is Mount Everest",
    "name three primary colours",
    "what does a photosynthesis reaction produce",
    "play some jazz music",
    "my cat is sleeping on the keyboard",
    "the train was five minutes late this morning",
    "I like pineapple on pizza",
    "blue is my favourite colour",
    "the meeting moved to Thursday",
    "asdf qwerty zxcv",
    "lorem ipsum dolor sit amet",
    "ok",
    "hmm",
    "123456",
    "what is the population of Canada",
    "who painted the Mona Lisa",
    "how do airplanes stay in the air",
    "what is the boiling point of water in Fahrenheit",
    "suggest a name for my dog",
    "how many days are in a leap year",
    "define the word serendipity",
    "what rhymes with orange",
    "convert 10 miles to kilometres",
    "is a tomato a fruit or a vegetable",
    "the stock market went up today",
    "I am learning to play the guitar",
    "draw a picture of a horse",
    "what is the speed of light",
    "how do you say hello in French",
    "list the planets of the solar system",
    "who is the main character in Hamlet",
    "what are the rules of chess",
];

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            epochs: 200,
            learning_rate: 0.05,
            l2: 1e-4,
            out_of_scope: true,
        }
    }
}

/// What one training produced.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Training {
    /// The labels learned, sorted.
    pub labels: Vec<String>,
    /// The example texts.
    pub examples: usize,
    /// The examples held out to calibrate and score (every fifth of a label with three or
    /// more).
    pub held_out: usize,
    /// The share of held-out examples the head trained on the others labels right; `None`
    /// when no label had enough examples to hold some out.
    pub held_out_accuracy: Option<f32>,
    /// The softmax temperature fitted on the held-out examples (1 when none).
    pub temperature: f32,
    /// Time spent embedding examples not seen before.
    pub embedding: Duration,
    /// Time spent training the head (both fits) and calibrating.
    pub training: Duration,
}

/// A trained head: `logits = x · w + b`, divided by the temperature.
#[derive(Debug)]
struct Head {
    /// The learned labels; the head has one more class after them with
    /// [`TrainOptions::out_of_scope`].
    labels: Vec<String>,
    classes: usize,
    /// `[dimension][labels]`, row-major.
    w: Vec<f32>,
    b: Vec<f32>,
    temperature: f32,
}

impl Head {
    fn confidences(&self, x: &[f32]) -> Vec<f32> {
        let k = self.classes;
        let mut logits = self.b.clone();
        for (i, xi) in x.iter().enumerate() {
            let row = &self.w[i * k..(i + 1) * k];
            for (l, wij) in logits.iter_mut().zip(row) {
                *l += xi * wij;
            }
        }
        softmax(&logits, self.temperature)
    }
}

pub(crate) fn softmax(logits: &[f32], temperature: f32) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let e: Vec<f32> = logits
        .iter()
        .map(|l| ((l - max) / temperature).exp())
        .collect();
    let sum: f32 = e.iter().sum();
    e.into_iter().map(|v| v / sum).collect()
}

/// Labels texts with intents learned from examples, on a [`Batcher`]'s embeddings.
/// Implements core's [`Classifier`]: the rules engine trains it with the examples of its
/// `intent` conditions ([`Classifier::learn`]) each time the rules load.
pub struct IntentClassifier {
    embedder: Batcher,
    options: TrainOptions,
    head: RwLock<Option<Arc<Head>>>,
    cache: tokio::sync::Mutex<HashMap<String, Vec<f32>>>,
    last: RwLock<Option<Training>>,
}

impl std::fmt::Debug for IntentClassifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IntentClassifier")
            .field("embedder", &self.embedder)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl IntentClassifier {
    /// A classifier on `embedder`'s vectors; it labels nothing until it learns.
    pub fn new(embedder: Batcher, options: TrainOptions) -> IntentClassifier {
        IntentClassifier {
            embedder,
            options,
            head: RwLock::new(None),
            cache: tokio::sync::Mutex::new(HashMap::new()),
            last: RwLock::new(None),
        }
    }

    /// The last training's figures.
    pub fn training(&self) -> Option<Training> {
        self.last
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Learn `examples` (label → texts) and put the new head in force; the figures of the
    /// training. At least two labels are needed, each with at least one text.
    pub async fn train(&self, examples: &BTreeMap<String, Vec<String>>) -> Result<Training> {
        let labels: Vec<String> = examples.keys().cloned().collect();
        if let Some((label, _)) = examples.iter().find(|(_, texts)| texts.is_empty()) {
            return Err(Error::settings(
                "examples",
                format!("intent '{label}' has no example texts"),
            ));
        }
        if labels.len() < 2 {
            return Err(Error::settings(
                "examples",
                format!(
                    "at least two intents need examples to tell them apart (only {})",
                    if labels.is_empty() {
                        "none".to_owned()
                    } else {
                        format!("'{}'", labels[0])
                    }
                ),
            ));
        }
        // Embed the texts not seen before; keep only this set's in the cache.
        let started = Instant::now();
        let mut cache = self.cache.lock().await;
        let mut wanted: Vec<String> = examples.values().flatten().cloned().collect();
        if self.options.out_of_scope {
            wanted.extend(OUT_OF_SCOPE.iter().map(|t| (*t).to_owned()));
        }
        wanted.sort();
        wanted.dedup();
        let new: Vec<String> = wanted
            .iter()
            .filter(|t| !cache.contains_key(*t))
            .cloned()
            .collect();
        let vectors = self.embedder.embed_many(&new).await?;
        cache.extend(new.into_iter().zip(vectors));
        cache.retain(|t, _| wanted.binary_search(t).is_ok());
        let embedding = started.elapsed();
        let mut rows = Vec::new();
        for (y, texts) in examples.values().enumerate() {
            for (i, t) in texts.iter().enumerate() {
                // Every fifth example of a label with three or more is held out.
                let held = texts.len() >= 3 && i % 5 == 4;
                rows.push((cache[t].clone(), y, held));
            }
        }
        let mut classes = labels.len();
        if self.options.out_of_scope {
            let near = |v: &[f32]| {
                rows.iter().any(|(e, _, _): &(Vec<f32>, usize, bool)| {
                    e.iter().zip(v).map(|(a, b)| a * b).sum::<f32>() > 0.6
                })
            };
            let negatives: Vec<Vec<f32>> = OUT_OF_SCOPE
                .iter()
                .map(|t| cache[*t].clone())
                .filter(|v| !near(v))
                .collect();
            if !negatives.is_empty() {
                rows.extend(negatives.into_iter().map(|v| (v, classes, false)));
                classes += 1;
            }
        }
        drop(cache);
        let options = self.options.clone();
        let k = classes;
        let fitted = tokio::task::spawn_blocking(move || fit_and_calibrate(&rows, k, &options))
            .await
            .map_err(|e| Error::Torch(format!("training stopped: {e}")))??;
        let training = Training {
            labels: labels.clone(),
            examples: examples.values().map(Vec::len).sum(),
            held_out: fitted.held_out,
            held_out_accuracy: fitted.accuracy,
            temperature: fitted.temperature,
            embedding,
            training: fitted.took,
        };
        *self
            .head
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(Head {
            labels,
            classes: k,
            w: fitted.w,
            b: fitted.b,
            temperature: fitted.temperature,
        }));
        *self
            .last
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(training.clone());
        tracing::info!(
            labels = training.labels.len(),
            examples = training.examples,
            held_out_accuracy = ?training.held_out_accuracy,
            temperature = training.temperature,
            took_ms = (training.embedding + training.training).as_millis() as u64,
            "intent classifier trained"
        );
        Ok(training)
    }

    /// Every learned label with its confidence for `text`, most confident first; empty
    /// before the first training.
    pub async fn labels(&self, text: &str) -> Result<Vec<Label>> {
        let head = self
            .head
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let Some(head) = head else {
            return Ok(Vec::new());
        };
        let x = self.embedder.embed_one(text).await?;
        Ok(ranked(&head.labels, head.confidences(&x)))
    }
}

/// `labels` with their `confidences` (in the same order; extra confidences, such as the
/// out-of-scope class's, are left out), most confident first.
pub(crate) fn ranked(labels: &[String], confidences: Vec<f32>) -> Vec<Label> {
    let mut out: Vec<Label> = labels
        .iter()
        .zip(confidences)
        .map(|(label, confidence)| Label {
            label: label.clone(),
            confidence,
        })
        .collect();
    out.sort_by(|a, b| b.confidence.total_cmp(&a.confidence));
    out
}

#[async_trait]
impl Classifier for IntentClassifier {
    async fn classify(&self, text: &str) -> flowbot_core::Result<Vec<Label>> {
        self.labels(text)
            .await
            .map_err(|e| flowbot_core::Error::Model(e.into_model_error(self.embedder.name())))
    }

    async fn learn(&self, examples: &BTreeMap<String, Vec<String>>) -> flowbot_core::Result<()> {
        self.train(examples)
            .await
            .map(|_| ())
            .map_err(|e| flowbot_core::Error::Model(e.into_model_error(self.embedder.name())))
    }
}

struct Fitted {
    w: Vec<f32>,
    b: Vec<f32>,
    temperature: f32,
    accuracy: Option<f32>,
    held_out: usize,
    took: Duration,
}

fn tensors(rows: &[&(Vec<f32>, usize, bool)]) -> Result<(Tensor, Tensor)> {
    let d = rows.first().map(|r| r.0.len()).unwrap_or(0);
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.0.iter().copied()).collect();
    let y: Vec<i64> = rows
        .iter()
        .map(|r| i64::try_from(r.1).unwrap_or(0))
        .collect();
    let n = i64::try_from(rows.len()).map_err(|e| Error::Torch(e.to_string()))?;
    let d = i64::try_from(d).map_err(|e| Error::Torch(e.to_string()))?;
    Ok((
        Tensor::from_slice(&flat).f_view([n, d])?,
        Tensor::from_slice(&y),
    ))
}

/// Softmax regression with an L2 penalty, full batch, Adam.
fn fit(x: &Tensor, y: &Tensor, k: usize, options: &TrainOptions) -> Result<(Tensor, Tensor)> {
    let d = x.size().get(1).copied().unwrap_or(0);
    let k = i64::try_from(k).map_err(|e| Error::Torch(e.to_string()))?;
    let vs = nn::VarStore::new(Device::Cpu);
    let w = vs.root().zeros("w", &[d, k]);
    let b = vs.root().zeros("b", &[k]);
    let mut opt = nn::Adam::default().build(&vs, options.learning_rate)?;
    for _ in 0..options.epochs {
        let logits = x.f_matmul(&w)?.f_add(&b)?;
        let loss = logits
            .f_log_softmax(-1, Kind::Float)?
            .f_nll_loss(y, None::<Tensor>, tch::Reduction::Mean, -100)?
            .f_add(&w.f_square()?.f_sum(Kind::Float)?.f_mul_scalar(options.l2)?)?;
        opt.zero_grad();
        loss.f_backward()?;
        opt.step();
    }
    let _guard = tch::no_grad_guard();
    Ok((w.f_detach()?, b.f_detach()?))
}

fn fit_and_calibrate(
    rows: &[(Vec<f32>, usize, bool)],
    k: usize,
    options: &TrainOptions,
) -> Result<Fitted> {
    let started = Instant::now();
    let train: Vec<_> = rows.iter().filter(|r| !r.2).collect();
    let held: Vec<_> = rows.iter().filter(|r| r.2).collect();
    let (mut temperature, mut accuracy) = (1.0f32, None);
    if !held.is_empty() {
        let (x, y) = tensors(&train)?;
        let (w, b) = fit(&x, &y, k, options)?;
        let (hx, hy) = tensors(&held)?;
        let _guard = tch::no_grad_guard();
        let logits = hx.f_matmul(&w)?.f_add(&b)?;
        let right = logits
            .f_argmax(1, false)?
            .f_eq_tensor(&hy)?
            .f_to_kind(Kind::Float)?
            .f_mean(Kind::Float)?;
        accuracy = Some(f32::try_from(right)?);
        // Temperature scaling: the T in [0.05, 20] (log grid) with the least negative
        // log-likelihood of the held-out labels.
        let mut best = (f64::INFINITY, 1.0f64);
        for step in 0..=60 {
            let t = 0.05f64 * (400f64).powf(f64::from(step) / 60.0);
            let nll = logits
                .f_div_scalar(t)?
                .f_log_softmax(-1, Kind::Float)?
                .f_nll_loss(&hy, None::<Tensor>, tch::Reduction::Mean, -100)?;
            let nll = f64::try_from(nll)?;
            if nll < best.0 {
                best = (nll, t);
            }
        }
        temperature = best.1 as f32;
    }
    let all: Vec<_> = rows.iter().collect();
    let (x, y) = tensors(&all)?;
    let (w, b) = fit(&x, &y, k, options)?;
    Ok(Fitted {
        w: Vec::<f32>::try_from(w.f_contiguous()?.f_view([-1])?)?,
        b: Vec::<f32>::try_from(b)?,
        temperature,
        accuracy,
        held_out: held.len(),
        took: started.elapsed(),
    })
}
