//! flowbot-gpu against sentence-transformers on the same machine, threads and model
//! (all-MiniLM-L6-v2), in one run: sentences per second at batch 1 and 32 (short texts and
//! texts of about 128 tokens), 32 concurrent callers through the dynamic batcher against
//! sequential batch-1 calls, and on a CUDA device (when present) batch 128 in fp32 and fp16.
//!
//! ```text
//! . scripts/torch-env
//! cargo bench -p flowbot-gpu --bench encode -- [--threads N] [--seconds S] [--rounds R]
//! ```
//!
//! Each figure is the median of `rounds` runs of `seconds` each; the two sides alternate.

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark prints its table

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use flowbot_gpu::{BatchOptions, Batcher, DeviceChoice, Encoder, Options, Precision};

/// sentence-transformers' side: reads one JSON job per line ({texts, batch, seconds,
/// device, half}) and answers each with sentences per second.
const PYTHON: &str = r#"
import json, sys, time, torch
from sentence_transformers import SentenceTransformer
model_dir, threads = sys.argv[1], int(sys.argv[2])
torch.set_num_threads(threads)
models = {}
for line in sys.stdin:
    job = json.loads(line)
    key = (job["device"], job["half"])
    if key not in models:
        m = SentenceTransformer(model_dir, device=job["device"])
        if job["half"]:
            m = m.half()
        models[key] = m
    m = models[key]
    texts, batch = job["texts"], job["batch"]
    m.encode(texts[:batch], batch_size=batch)  # warm-up
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < job["seconds"]:
        m.encode(texts[:batch], batch_size=batch, convert_to_numpy=True)
        n += batch
    if job["device"].startswith("cuda"):
        torch.cuda.synchronize()
    print(json.dumps(n / (time.perf_counter() - start)), flush=True)
"#;

struct Python {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Python {
    fn start(model: &std::path::Path, threads: usize) -> Python {
        let py = std::env::var_os("VIRTUAL_ENV")
            .map(|v| std::path::PathBuf::from(v).join("bin/python"))
            .expect("VIRTUAL_ENV is unset: run `. scripts/torch-env` first");
        let mut child = Command::new(py)
            .arg("-c")
            .arg(PYTHON)
            .arg(model)
            .arg(threads.to_string())
            .env("HF_HUB_OFFLINE", "1")
            .env("TRANSFORMERS_OFFLINE", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Python { child, out }
    }

    fn rate(
        &mut self,
        texts: &[String],
        batch: usize,
        seconds: f64,
        device: &str,
        half: bool,
    ) -> f64 {
        use std::io::BufRead as _;
        let job = serde_json::json!({
            "texts": texts, "batch": batch, "seconds": seconds, "device": device, "half": half,
        });
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{job}").unwrap();
        stdin.flush().unwrap();
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        line.trim().parse().expect("a rate from python")
    }
}

fn rust_rate(encoder: &Encoder, texts: &[String], batch: usize, seconds: f64) -> f64 {
    let refs: Vec<&str> = texts[..batch].iter().map(String::as_str).collect();
    encoder.embed(&refs).unwrap(); // warm-up
    let start = Instant::now();
    let mut n = 0usize;
    while start.elapsed().as_secs_f64() < seconds {
        encoder.embed(&refs).unwrap();
        n += batch;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `callers` tasks each embedding one text at a time through the batcher, for `seconds`.
fn batcher_rate(
    rt: &tokio::runtime::Runtime,
    batcher: &Batcher,
    texts: &[String],
    callers: usize,
    seconds: f64,
) -> f64 {
    let done = Arc::new(AtomicU64::new(0));
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for c in 0..callers {
            let b = batcher.clone();
            let text = texts[c % texts.len()].clone();
            let done = done.clone();
            tasks.push(tokio::spawn(async move {
                while Instant::now() < until {
                    b.embed_one(&text).await.unwrap();
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn short_texts() -> Vec<String> {
    let base = [
        "How do I reset my password?",
        "Where is my order?",
        "Cancel my subscription please",
        "What's the weather like tomorrow?",
        "I want to talk to a person",
        "Thanks for the help!",
        "My package arrived damaged",
        "Can I change my delivery address?",
    ];
    (0..128).map(|i| base[i % base.len()].to_owned()).collect()
}

/// Texts of about 128 word-piece tokens.
fn long_texts() -> Vec<String> {
    let para = "The parcel I ordered last week was supposed to arrive on Monday, but the tracking page \
                has not changed since Friday and the courier's hotline keeps putting me on hold. \
                Could you check where it is, tell me whether it was lost, and if so send a \
                replacement or refund the order to the card I paid with? I also moved house \
                recently, so please make sure the address on my account is the new one before \
                anything is shipped again. The last time this happened the replacement took two \
                weeks, so I would rather have the refund this time.";
    (0..128).map(|i| format!("{i}. {para}")).collect()
}

fn main() {
    let threads: usize = arg("--threads")
        .map(|t| t.parse().unwrap())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
        });
    let seconds: f64 = arg("--seconds").map(|t| t.parse().unwrap()).unwrap_or(3.0);
    let rounds: usize = arg("--rounds").map(|t| t.parse().unwrap()).unwrap_or(3);
    let model = std::path::PathBuf::from(
        std::env::var_os("FLOWBOT_MINILM_DIR")
            .expect("FLOWBOT_MINILM_DIR: run `. scripts/torch-env`"),
    );
    let encoder = Encoder::load(&model, &Options::cpu().threads(threads)).unwrap();
    let mut python = Python::start(&model, threads);
    let short = short_texts();
    let long = long_texts();
    let tokens = encoder.tokenizer().tokenize(&long[0]).unwrap().len();

    println!(
        "# flowbot-gpu against sentence-transformers (all-MiniLM-L6-v2, CPU, {threads} threads)\n"
    );
    println!(
        "Sentences per second, median of {rounds} runs of {seconds} s each, the two sides alternating.\n"
    );
    println!("| case | sentence-transformers | flowbot-gpu | ratio |\n|---|---|---|---|");
    for (name, texts, batch) in [
        ("batch 1, short", &short, 1),
        ("batch 32, short", &short, 32),
        (&*format!("batch 32, {tokens} tokens"), &long, 32),
    ] {
        let (mut st, mut ours) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            st.push(python.rate(texts, batch, seconds, "cpu", false));
            ours.push(rust_rate(&encoder, texts, batch, seconds));
        }
        let (st, ours) = (median(st), median(ours));
        println!("| {name} | {st:.0} | {ours:.0} | {:.2}× |", ours / st);
    }

    // Dynamic batching: 32 callers, one sentence each, against sequential batch-1 calls on a
    // second copy of the model, the two alternating.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let batcher = Batcher::start(encoder, BatchOptions::default().max_batch(32)).unwrap();
    let direct = Encoder::load(&model, &Options::cpu().threads(threads)).unwrap();
    let (mut seq, mut conc) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        seq.push(rust_rate(&direct, &short, 1, seconds));
        conc.push(batcher_rate(&rt, &batcher, &short, 32, seconds));
    }
    drop(direct);
    let (sequential, concurrent) = (median(seq), median(conc));
    let m = batcher.metrics().snapshot();
    let mean_batch = m.texts as f64 / m.batches.max(1) as f64;
    println!(
        "\n| dynamic batching | sequential batch 1 | 32 concurrent callers | ratio |\n|---|---|---|---|\n| short sentences | {sequential:.0} | {concurrent:.0} | {:.2}× (mean batch {mean_batch:.1}) |",
        concurrent / sequential
    );

    // Intent training: 1,000 examples over 20 intents (50 each).
    let topics = [
        "password",
        "order",
        "refund",
        "invoice",
        "delivery",
        "account",
        "subscription",
        "address",
        "payment",
        "discount",
        "warranty",
        "return",
        "size",
        "stock",
        "gift card",
        "newsletter",
        "login",
        "complaint",
        "appointment",
        "opening hours",
    ];
    let asks = [
        "I have a question about my {t}",
        "help me with the {t}",
        "what about my {t} number {n}",
        "can you check the {t} for me",
        "there is a problem with my {t}",
        "tell me about {t} options",
        "I need to change the {t}",
        "why is the {t} wrong",
        "how does the {t} work",
        "update on {t} {n} please",
    ];
    let mut examples = std::collections::BTreeMap::new();
    for t in topics {
        let texts: Vec<String> = (0..50)
            .map(|i| {
                asks[i % asks.len()]
                    .replace("{t}", t)
                    .replace("{n}", &(i * 37 % 1000).to_string())
            })
            .collect();
        examples.insert(t.replace(' ', "_"), texts);
    }
    let classifier =
        flowbot_gpu::IntentClassifier::new(batcher, flowbot_gpu::TrainOptions::default());
    let first = rt.block_on(classifier.train(&examples)).unwrap();
    let again = rt.block_on(classifier.train(&examples)).unwrap();
    println!(
        "\n| intent training, 1,000 examples, 20 intents | embedding | head (two fits and calibration) | held-out accuracy |\n|---|---|---|---|\n| first training | {:.0} ms | {:.0} ms | {:.3} |\n| retraining (examples cached) | {:.0} ms | {:.0} ms | {:.3} |",
        first.embedding.as_secs_f64() * 1e3,
        first.training.as_secs_f64() * 1e3,
        first.held_out_accuracy.unwrap_or(0.0),
        again.embedding.as_secs_f64() * 1e3,
        again.training.as_secs_f64() * 1e3,
        again.held_out_accuracy.unwrap_or(0.0),
    );

    if flowbot_gpu::cuda_available() {
        println!(
            "\n| CUDA, batch 128, short | sentence-transformers | flowbot-gpu | ratio |\n|---|---|---|---|"
        );
        for (precision, half) in [(Precision::F32, false), (Precision::F16, true)] {
            let gpu = Encoder::load(
                &model,
                &Options::default()
                    .device(DeviceChoice::Cuda(0))
                    .precision(precision),
            )
            .unwrap();
            let (mut st, mut ours) = (Vec::new(), Vec::new());
            for _ in 0..rounds {
                st.push(python.rate(&short, 128, seconds, "cuda", half));
                ours.push(rust_rate(&gpu, &short, 128, seconds));
            }
            let (st, ours) = (median(st), median(ours));
            println!(
                "| {precision:?} | {st:.0} | {ours:.0} | {:.2}× |",
                ours / st
            );
        }
    } else {
        println!("\nNo CUDA device: the GPU rows were not measured.");
    }
    drop(python.child.stdin.take());
    let _ = python.child.wait();
}
