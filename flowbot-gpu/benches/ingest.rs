//! The knowledge base's ingestion (flowbot-llm's `Knowledge` on the embedded vector store in
//! SQLite) against the embedder alone, on the same chunks, in one run: how much of the local
//! MiniLM's throughput survives loading, chunking, storing and indexing.
//!
//! The corpus is this repository's docs/ (Markdown), copied `--copies` times under distinct
//! names (each copy's bytes differ, so none is skipped as unchanged).
//!
//! ```text
//! . scripts/torch-env
//! cargo bench -p flowbot-gpu --bench ingest -- [--copies N] [--rounds R] [--threads T]
//! ```

#![allow(clippy::print_stdout, clippy::unwrap_used)] // a benchmark prints its table

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use flowbot_core::llm::Embedder;
use flowbot_gpu::{BatchOptions, Batcher, Encoder, Options};
use flowbot_llm::knowledge::{
    ChunkOptions, Document, IngestOptions, Knowledge, LoadOptions, Source, chunk_document,
};
use flowbot_store::vectors::{EmbeddedVectors, IndexOptions};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The Markdown files under `dir`.
fn markdown(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let p = e.path();
        if p.is_dir() {
            markdown(&p, out);
        } else if p.extension().is_some_and(|x| x == "md") {
            out.push(p);
        }
    }
}

#[tokio::main]
async fn main() {
    let copies = arg("--copies", 8);
    let rounds = arg("--rounds", 3);
    let threads = arg("--threads", 2);
    let model =
        std::env::var("FLOWBOT_MINILM_DIR").expect("FLOWBOT_MINILM_DIR (. scripts/torch-env)");
    let encoder = Encoder::load(&model, &Options::default().threads(threads)).unwrap();
    let batcher = Batcher::start(encoder, BatchOptions::default().max_batch(64)).unwrap();
    let embedder: Arc<dyn Embedder> = Arc::new(batcher);

    let docs_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    let mut files = Vec::new();
    markdown(&docs_dir, &mut files);
    let work = std::env::temp_dir().join(format!("flowbot-ingest-bench-{}", std::process::id()));
    let corpus = work.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    for copy in 0..copies {
        for f in &files {
            let name = format!("{copy}-{}", f.file_name().unwrap().to_string_lossy());
            let mut text = std::fs::read_to_string(f).unwrap();
            text.push_str(&format!("\n\nCopy {copy}.\n"));
            std::fs::write(corpus.join(name), text).unwrap();
        }
    }
    // The chunks the knowledge base will embed, as it cuts them.
    let options = IngestOptions::default();
    let counter = flowbot_llm::context::counter_for(embedder.name());
    let mut chunks: Vec<String> = Vec::new();
    let mut paths = Vec::new();
    markdown(&corpus, &mut paths);
    for p in &paths {
        let doc = Document::load(p, &LoadOptions::default()).unwrap();
        chunks.extend(
            chunk_document(&doc, &ChunkOptions::default(), &counter)
                .unwrap()
                .into_iter()
                .map(|c| c.text),
        );
    }
    println!(
        "corpus: {} documents ({} copies of docs/), {} chunks of at most {} tokens",
        paths.len(),
        copies,
        chunks.len(),
        options.chunk.max_tokens
    );
    let (mut alone, mut ingest) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let started = Instant::now();
        for batch in chunks.chunks(options.batch_size) {
            embedder.embed(batch).await.unwrap();
        }
        alone.push(chunks.len() as f64 / started.elapsed().as_secs_f64());

        let db = work.join(format!("round{round}.db"));
        let store = flowbot_store::SqliteStore::open_with(flowbot_store::SqliteOptions::new(&db))
            .await
            .unwrap();
        let vectors = Arc::new(EmbeddedVectors::sqlite(&store, IndexOptions::default()).unwrap());
        let kb = Knowledge::new(vectors, embedder.clone(), Arc::new(store.clone()))
            .with_options(options.clone())
            .unwrap();
        let started = Instant::now();
        let report = kb
            .ingest_all("bench", &[Source::path(&corpus)], false, |_| {})
            .await
            .unwrap();
        assert_eq!(report.failed().count(), 0);
        assert_eq!(report.chunks(), chunks.len());
        ingest.push(report.chunks() as f64 / started.elapsed().as_secs_f64());
        println!(
            "round {round}: embedder alone {:.0} chunks/s, ingestion {:.0} chunks/s",
            alone[round], ingest[round]
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, i) = (median(&mut alone), median(&mut ingest));
    println!(
        "median: embedder alone {a:.0} chunks/s, ingestion {i:.0} chunks/s: {:.2}x the embedder's throughput",
        i / a
    );
    std::fs::remove_dir_all(&work).unwrap();
}
