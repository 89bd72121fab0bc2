//! `flowbot-vector-bench`: the embedded vector store's search — recall@k against exact
//! search, query latency (p50, p99), queries per second on one thread and memory per vector
//! — over synthetic embeddings; and the hybrid search of a SQLite collection (vector and
//! FTS5 keyword search of the same query).
//!
//! The vectors are clustered like sentence embeddings (unit vectors around `n / 100`
//! random centres), not uniform noise, on which no graph index does well. With `--export
//! DIR` the data set, the queries and the true neighbours are written as raw little-endian
//! files for `benches/vectors_hnswlib.py`, which measures hnswlib on the same data in the
//! same run (`benches/vectors.sh` runs both).
//!
//! ```text
//! flowbot-vector-bench [--n 100000] [--dim 384] [--queries 1000] [--k 10]
//!                      [--ef 128] [--export DIR] [--hybrid N]
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // a benchmark reports to its terminal

use std::sync::Arc;
use std::time::{Duration, Instant};

use flowbot_core::VectorStore;
use flowbot_core::vector::{
    CollectionSpec, Distance, Filter, Point, TEXT_KEY, TextQuery, VectorQuery, dot,
};
use flowbot_store::vectors::{EmbeddedVectors, IndexOptions};

struct Args {
    n: usize,
    dim: usize,
    queries: usize,
    k: usize,
    ef: usize,
    export: Option<std::path::PathBuf>,
    hybrid: usize,
}

fn args() -> Result<Args, String> {
    let mut a = Args {
        n: 100_000,
        dim: 384,
        queries: 1_000,
        k: 10,
        ef: 128,
        export: None,
        hybrid: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag}: {e}"));
        match flag.as_str() {
            "--n" => a.n = number(value()?)?,
            "--dim" => a.dim = number(value()?)?,
            "--queries" => a.queries = number(value()?)?,
            "--k" => a.k = number(value()?)?,
            "--ef" => a.ef = number(value()?)?,
            "--hybrid" => a.hybrid = number(value()?)?,
            "--export" => a.export = Some(value()?.into()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

/// Unit vectors around random centres.
fn clustered(rng: &mut fastrand::Rng, centres: &[Vec<f32>], count: usize) -> Vec<Vec<f32>> {
    let dim = centres[0].len();
    (0..count)
        .map(|_| {
            let c = &centres[rng.usize(..centres.len())];
            // Noise of norm ~0.6 around a unit centre: neighbours at cosine ~0.7, as sentence
            // embeddings of one topic.
            let sigma = 0.6 / (dim as f32).sqrt();
            let mut v: Vec<f32> = (0..dim).map(|i| c[i] + sigma * normal(rng)).collect();
            let norm = dot(&v, &v).sqrt();
            v.iter_mut().for_each(|x| *x /= norm);
            v
        })
        .collect()
}

fn normal(rng: &mut fastrand::Rng) -> f32 {
    // Box–Muller.
    let (u, v) = (rng.f32().max(f32::MIN_POSITIVE), rng.f32());
    (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
}

fn unit(rng: &mut fastrand::Rng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| normal(rng)).collect();
    let norm = dot(&v, &v).sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

/// The true k nearest (by dot product of unit vectors), on every core.
fn truth(data: &[Vec<f32>], queries: &[Vec<f32>], k: usize) -> Vec<Vec<u32>> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let per = queries.len().div_ceil(threads).max(1);
    std::thread::scope(|s| {
        let parts: Vec<_> = queries
            .chunks(per)
            .map(|qs| {
                s.spawn(move || {
                    qs.iter()
                        .map(|q| {
                            let mut scored: Vec<(f32, u32)> = data
                                .iter()
                                .enumerate()
                                .map(|(i, v)| (dot(q, v), i as u32))
                                .collect();
                            let kth = k.min(scored.len()) - 1;
                            scored.select_nth_unstable_by(kth, |a, b| b.0.total_cmp(&a.0));
                            scored.truncate(k);
                            scored.sort_by(|a, b| b.0.total_cmp(&a.0));
                            scored.into_iter().map(|(_, i)| i).collect()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        parts
            .into_iter()
            .flat_map(|p| p.join().expect("a truth thread"))
            .collect()
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn write_f32(path: &std::path::Path, rows: &[Vec<f32>]) -> std::io::Result<()> {
    let bytes: Vec<u8> = rows
        .iter()
        .flat_map(|r| r.iter().flat_map(|x| x.to_le_bytes()))
        .collect();
    std::fs::write(path, bytes)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let mut rng = fastrand::Rng::with_seed(7);
    let centres: Vec<Vec<f32>> = (0..(a.n / 100).max(1))
        .map(|_| unit(&mut rng, a.dim))
        .collect();
    let data = clustered(&mut rng, &centres, a.n);
    let queries = clustered(&mut rng, &centres, a.queries);
    let started = Instant::now();
    let truth = truth(&data, &queries, a.k);
    println!(
        "data: {} x {} clustered unit vectors, {} queries; exact neighbours in {:.1} s",
        a.n,
        a.dim,
        a.queries,
        started.elapsed().as_secs_f64()
    );
    if let Some(dir) = &a.export {
        std::fs::create_dir_all(dir)?;
        write_f32(&dir.join("data.f32"), &data)?;
        write_f32(&dir.join("queries.f32"), &queries)?;
        let t: Vec<u8> = truth
            .iter()
            .flat_map(|r| r.iter().flat_map(|i| i.to_le_bytes()))
            .collect();
        std::fs::write(dir.join("truth.u32"), t)?;
        std::fs::write(
            dir.join("shape.json"),
            format!(
                "{{\"n\": {}, \"dim\": {}, \"queries\": {}, \"k\": {}}}",
                a.n, a.dim, a.queries, a.k
            ),
        )?;
    }

    let mut options = IndexOptions::default();
    options.expansion_search = a.ef;
    let store = EmbeddedVectors::memory(options)?;
    store
        .create_collection(&CollectionSpec::new("bench", a.dim, Distance::Cosine))
        .await?;
    let started = Instant::now();
    for (start, batch) in (0..).step_by(10_000).zip(data.chunks(10_000)) {
        let points: Vec<Point> = batch
            .iter()
            .enumerate()
            .map(|(i, v)| Point {
                id: (start + i).to_string(),
                vector: v.clone(),
                payload: Default::default(),
            })
            .collect();
        store.upsert("bench", &points).await?;
    }
    let build = started.elapsed();
    let bytes = store.memory_bytes("bench").unwrap_or(0);
    let mut latencies = Vec::with_capacity(queries.len());
    let mut found = 0usize;
    for (q, want) in queries.iter().zip(&truth) {
        let started = Instant::now();
        let hits = store
            .search("bench", &VectorQuery::new(q.clone(), a.k))
            .await?;
        latencies.push(started.elapsed());
        found += hits
            .iter()
            .filter(|h| h.id.parse::<u32>().is_ok_and(|i| want.contains(&i)))
            .count();
    }
    let total: Duration = latencies.iter().sum();
    latencies.sort();
    println!(
        "flowbot embedded (HNSW M=16 efC=128 ef={}): build {:.1} s, \
         recall@{} {:.4}, p50 {:.3} ms, p99 {:.3} ms, {:.0} queries/s on one thread, {:.0} bytes per vector",
        a.ef,
        build.as_secs_f64(),
        a.k,
        found as f64 / (truth.len() * a.k) as f64,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        queries.len() as f64 / total.as_secs_f64(),
        bytes as f64 / a.n as f64,
    );
    drop(store);

    if a.hybrid > 0 {
        hybrid(a.hybrid, &centres, &mut rng).await?;
    }
    Ok(())
}

/// Hybrid search over `n` chunks in a SQLite store: the vector search and the FTS5 keyword
/// search of one query, one after the other, as the knowledge base runs them.
async fn hybrid(
    n: usize,
    centres: &[Vec<f32>],
    rng: &mut fastrand::Rng,
) -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::temp_dir().join(format!("flowbot-vector-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let sqlite =
        flowbot_store::SqliteStore::open_with(flowbot_store::SqliteOptions::new(dir.join("kb.db")))
            .await?;
    let store: Arc<dyn VectorStore> =
        Arc::new(EmbeddedVectors::sqlite(&sqlite, IndexOptions::default())?);
    let dim = centres[0].len();
    store
        .create_collection(&CollectionSpec::new("chunks", dim, Distance::Cosine))
        .await?;
    // English-like text: 60 common words (which keyword queries leave out) and 5,000
    // content words, drawn by Zipf's law over both, as words occur in prose.
    const COMMON: &[&str] = &[
        "the", "of", "and", "a", "to", "in", "is", "you", "that", "it", "for", "on", "are", "with",
        "as", "be", "this", "have", "from", "or", "by", "not", "but", "what", "all", "were",
        "when", "we", "there", "can", "an", "your", "which", "their", "if", "do", "will", "each",
        "about", "how", "up", "so", "them", "then", "she", "many", "some", "would", "into", "has",
        "more", "her", "two", "like", "him", "see", "time", "could", "no", "may",
    ];
    let mut vocabulary: Vec<String> = COMMON.iter().map(|w| (*w).to_owned()).collect();
    vocabulary.extend((0..5_000).map(|i| format!("term{i}")));
    let weights: Vec<f64> = (0..vocabulary.len())
        .map(|r| 1.0 / (r + 1) as f64)
        .collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = Vec::with_capacity(weights.len());
    let mut acc = 0.0;
    for w in &weights {
        acc += w / total;
        cumulative.push(acc);
    }
    let word = |rng: &mut fastrand::Rng| {
        let x = rng.f64();
        let i = cumulative
            .partition_point(|c| *c < x)
            .min(vocabulary.len() - 1);
        vocabulary[i].clone()
    };
    let started = Instant::now();
    let vectors = clustered(rng, centres, n);
    for (start, batch) in (0..).step_by(2_000).zip(vectors.chunks(2_000)) {
        let points: Vec<Point> = batch
            .iter()
            .enumerate()
            .map(|(i, v)| {
                let text: Vec<String> = (0..60).map(|_| word(rng)).collect();
                let mut payload = serde_json::Map::new();
                payload.insert(TEXT_KEY.into(), text.join(" ").into());
                payload.insert(
                    "source".into(),
                    format!("doc{}.md", (start + i) / 20).into(),
                );
                Point {
                    id: format!("c{}", start + i),
                    vector: v.clone(),
                    payload,
                }
            })
            .collect();
        store.upsert("chunks", &points).await?;
    }
    println!(
        "hybrid: {n} chunks of 60 words written to SQLite in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let queries = clustered(rng, centres, 300);
    // A question: a few common words around a few content words.
    let texts: Vec<String> = (0..queries.len())
        .map(|_| (0..6).map(|_| word(rng)).collect::<Vec<_>>().join(" "))
        .collect();
    let text_query = |text: &str| TextQuery {
        text: text.to_owned(),
        limit: 20,
        filter: Filter::all(),
    };
    // Warm-up, untimed: the first queries after the writes meet the WAL's checkpoint and a
    // cold page cache.
    for (q, text) in queries.iter().zip(&texts).take(50) {
        store
            .search("chunks", &VectorQuery::new(q.clone(), 20))
            .await?;
        store.search_text("chunks", &text_query(text)).await?;
    }
    // As `Knowledge::search` runs them: both searches at once, the keyword one polled first.
    let mut latencies = Vec::with_capacity(queries.len());
    let mut keyword_hits = 0;
    for (q, text) in queries.iter().zip(&texts) {
        let started = Instant::now();
        let query = VectorQuery::new(q.clone(), 20);
        let words = text_query(text);
        let (by_words, by_vector) = tokio::join!(
            store.search_text("chunks", &words),
            store.search("chunks", &query)
        );
        latencies.push(started.elapsed());
        assert!(!by_vector?.is_empty());
        keyword_hits += by_words?.unwrap_or_default().len();
    }
    // The keyword half alone, the same questions again.
    let mut keyword_latencies = Vec::with_capacity(queries.len());
    for text in &texts {
        let started = Instant::now();
        store.search_text("chunks", &text_query(text)).await?;
        keyword_latencies.push(started.elapsed());
    }
    let asked = queries.len();
    latencies.sort();
    keyword_latencies.sort();
    println!(
        "hybrid search over {n} chunks (SQLite, 20 by vector + 20 by FTS5 keywords at once, {:.1} keyword hits a query): p50 {:.2} ms, p99 {:.2} ms; the keyword search alone: p50 {:.2} ms, p99 {:.2} ms",
        keyword_hits as f64 / asked as f64,
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        percentile(&keyword_latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&keyword_latencies, 0.99).as_secs_f64() * 1e3,
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
