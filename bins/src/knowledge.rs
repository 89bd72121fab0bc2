//! The knowledge base of `[knowledge]`: the embedder it names, the database's embedded vector
//! store, and the `flowbot-server kb …` commands.

use std::sync::Arc;
use std::time::Instant;

use flowbot_core::llm::Embedder;
use flowbot_core::store::KvStore;
use flowbot_core::vector::VectorStore;
use flowbot_llm::knowledge::{
    ChunkOptions, IngestOptions, IngestOutcome, Knowledge, KnowledgeOptions, LoadOptions,
    SearchOptions, Source,
};

use crate::config::Config;
use crate::run::{RunError, open_stores};

/// A knowledge base and how the server uses it.
#[derive(Clone)]
pub struct KnowledgeBase {
    /// Documents, chunks, searches and ingestion jobs.
    pub knowledge: Arc<Knowledge>,
    /// The collection used when none is named.
    pub collection: String,
    /// How searches run (limit, threshold, hybrid).
    pub search: SearchOptions,
    /// How answers use it.
    pub answers: KnowledgeOptions,
}

impl std::fmt::Debug for KnowledgeBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KnowledgeBase")
            .field("collection", &self.collection)
            .finish_non_exhaustive()
    }
}

/// The embedder `[knowledge] embedder` names: `local` (the `[gpu]` model, `local`) or a
/// model of `[llm.models]`.
fn embedder(
    config: &Config,
    name: &str,
    local: Option<Arc<dyn Embedder>>,
) -> Result<Arc<dyn Embedder>, RunError> {
    if name == "local" {
        return local.ok_or_else(|| {
            RunError::Llm(if cfg!(feature = "gpu") {
                "knowledge.embedder = \"local\" needs the [gpu] model: set [gpu] model (or FLOWBOT_MINILM_DIR) and leave [gpu] enabled".into()
            } else {
                "knowledge.embedder = \"local\" needs a server built with the `gpu` feature (docs/gpu.md); or name a model under [llm.models] whose provider embeds".into()
            })
        });
    }
    let provider = config.llm.models.get(name).ok_or_else(|| {
        RunError::Llm(format!(
            "knowledge.embedder: no model named '{name}' under [llm.models]"
        ))
    })?;
    flowbot_llm::connect_embedder(provider)
        .map_err(|e| RunError::Llm(format!("knowledge.embedder ({name}): {e}")))
}

/// The knowledge base of `[knowledge]`, or `None` when it names no embedder. `api` limits
/// the files ingestion jobs may read to `[knowledge] root` (the CLI reads what it is given).
pub fn open(
    config: &Config,
    kv: Arc<dyn KvStore>,
    vectors: Arc<dyn VectorStore>,
    local: Option<Arc<dyn Embedder>>,
    api: bool,
) -> Result<Option<KnowledgeBase>, RunError> {
    let k = &config.knowledge;
    let Some(name) = &k.embedder else {
        return Ok(None);
    };
    let embedder = embedder(config, name, local)?;
    let options = IngestOptions {
        load: LoadOptions {
            max_bytes: k.max_file_bytes,
        },
        chunk: ChunkOptions {
            max_tokens: k.chunk_tokens,
            overlap: k.chunk_overlap,
        },
        batch_size: k.batch_size,
        root: if api { k.root.clone() } else { None },
    };
    // URLs go through the outbound network guard of `[network]`, as `http_request` does.
    let policy = config
        .network
        .policy()
        .map_err(|e| RunError::Llm(e.to_string()))?;
    let knowledge = Knowledge::new(vectors, embedder, kv)
        .with_options(options)
        .map_err(|e| RunError::Llm(format!("[knowledge]: {e}")))?
        .with_net_policy(Arc::new(policy));
    let search = SearchOptions {
        limit: k.limit,
        threshold: (k.threshold > 0.0).then_some(k.threshold),
        hybrid: k.hybrid,
        ..SearchOptions::default()
    };
    let mut answers = KnowledgeOptions {
        collection: k.always.then(|| k.collection.clone()),
        search: search.clone(),
        max_tokens: k.max_tokens,
        ..KnowledgeOptions::default()
    };
    if let Some(text) = &k.dont_know {
        answers.dont_know = text.clone();
    }
    Ok(Some(KnowledgeBase {
        knowledge: Arc::new(knowledge),
        collection: k.collection.clone(),
        search,
        answers,
    }))
}

/// The usage of `flowbot-server kb`.
pub const USAGE: &str = "usage: flowbot-server [--config FILE] kb <command>\n\n\
  kb ingest PATH|URL… [--collection NAME] [--sync]\n\
                  read files, folders or URLs into a collection, with a progress bar;\n\
                  unchanged documents are skipped; --sync also removes the documents of\n\
                  the collection that the given folders no longer hold\n\
  kb eval QUESTIONS.jsonl [--collection NAME] [--k N]\n\
                  recall@k and MRR of the searches for questions with their expected\n\
                  sources: one {\"question\": …, \"expected\": [\"path or URL\", …]} per line\n\
  kb search QUERY… [--collection NAME] [--limit N]\n\
                  the passages found, without a model\n\
  kb list [--collection NAME]\n\
                  the collections, or one collection's documents\n\
  kb remove SOURCE [--collection NAME]\n\
                  remove a document\n\
The embedder is [knowledge] embedder of the configuration (docs/knowledge.md).";

fn usage(why: &str) -> RunError {
    RunError::Usage(format!("{why}\n\n{USAGE}"))
}

/// The knowledge base of `config` for a command, with its local model loaded when it needs
/// one.
async fn command_base(config: &Config) -> Result<KnowledgeBase, RunError> {
    if config.knowledge.embedder.is_none() {
        return Err(RunError::Usage(
            "kb: [knowledge] embedder is not set: name `local` (the [gpu] model) or a model under [llm.models] (docs/knowledge.md)".into(),
        ));
    }
    // The settings written `{{ secrets.NAME }}` (a provider's key, Qdrant's) filled in.
    let mut config = config.clone();
    let (store, vectors, _) = open_stores(&mut config).await?;
    let local = local_embedder(&config).await?;
    open(&config, store, vectors, local, false)?.ok_or_else(|| usage("kb: no embedder"))
}

/// The `[gpu]` model as an embedder, when the configuration asks for it.
#[cfg(feature = "gpu")]
async fn local_embedder(config: &Config) -> Result<Option<Arc<dyn Embedder>>, RunError> {
    if config.knowledge.embedder.as_deref() != Some("local") {
        return Ok(None);
    }
    Ok(crate::gpu::load(&config.gpu)
        .await?
        .map(|m| Arc::new(m.embedder) as Arc<dyn Embedder>))
}

#[cfg(not(feature = "gpu"))]
async fn local_embedder(_config: &Config) -> Result<Option<Arc<dyn Embedder>>, RunError> {
    Ok(None)
}

/// Split `--flag value` options (those in `flags`) from the other arguments.
fn options<'a>(
    args: &'a [String],
    flags: &[&str],
    switches: &[&str],
) -> Result<(Vec<&'a str>, std::collections::HashMap<String, String>), RunError> {
    let mut rest = Vec::new();
    let mut found = std::collections::HashMap::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if flags.contains(&a.as_str()) {
            let v = it
                .next()
                .ok_or_else(|| usage(&format!("kb: {a} needs a value")))?;
            found.insert(a.clone(), v.clone());
        } else if switches.contains(&a.as_str()) {
            found.insert(a.clone(), String::new());
        } else if a.starts_with("--") {
            return Err(usage(&format!("kb: unknown option {a}")));
        } else {
            rest.push(a.as_str());
        }
    }
    Ok((rest, found))
}

/// Run `kb <args>`; the answer is what to print, and whether everything succeeded.
pub async fn command(config: &Config, args: &[String]) -> Result<(String, bool), RunError> {
    let (sub, rest) = args
        .split_first()
        .ok_or_else(|| usage("kb: which command?"))?;
    let (words, opts) = options(rest, &["--collection", "--limit", "--k"], &["--sync"])?;
    let collection = opts
        .get("--collection")
        .cloned()
        .unwrap_or_else(|| config.knowledge.collection.clone());
    flowbot_core::vector::check_collection_name(&collection)
        .map_err(|e| usage(&format!("kb: --collection: {e}")))?;
    match sub.as_str() {
        "ingest" => {
            if words.is_empty() {
                return Err(usage("kb ingest: which files, folders or URLs?"));
            }
            let base = command_base(config).await?;
            ingest(&base, &collection, &words, opts.contains_key("--sync")).await
        }
        "search" => {
            if words.is_empty() {
                return Err(usage("kb search: what to look for?"));
            }
            let base = command_base(config).await?;
            let mut search = base.search.clone();
            if let Some(limit) = opts.get("--limit") {
                search.limit = limit
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| usage("kb search: --limit must be 1 to 100"))?;
            }
            let passages = base
                .knowledge
                .search(&collection, &words.join(" "), &search)
                .await
                .map_err(|e| RunError::Llm(e.to_string()))?;
            Ok((format!("{}\n", Knowledge::format_hits(&passages)), true))
        }
        "eval" => {
            let [file] = words.as_slice() else {
                return Err(usage("kb eval: which one questions file?"));
            };
            let k = match opts.get("--k") {
                None => 5,
                Some(k) => k
                    .parse()
                    .ok()
                    .filter(|n| (1..=100).contains(n))
                    .ok_or_else(|| usage("kb eval: --k must be 1 to 100"))?,
            };
            let text = std::fs::read_to_string(file)
                .map_err(|e| RunError::Usage(format!("kb eval: {file}: {e}")))?;
            let questions = flowbot_llm::knowledge::parse_questions(&text)
                .map_err(|e| RunError::Usage(format!("kb eval: {file}: {e}")))?;
            let base = command_base(config).await?;
            let report = base
                .knowledge
                .evaluate(&collection, &questions, k, &base.search)
                .await
                .map_err(|e| RunError::Llm(e.to_string()))?;
            Ok((report.render(), true))
        }
        "list" => {
            let base = command_base(config).await?;
            list(&base, opts.get("--collection").map(String::as_str)).await
        }
        "remove" => {
            let [source] = words.as_slice() else {
                return Err(usage("kb remove: which one source?"));
            };
            let base = command_base(config).await?;
            let removed = base
                .knowledge
                .remove(&collection, source)
                .await
                .map_err(|e| RunError::Llm(e.to_string()))?;
            Ok(if removed {
                (format!("removed {source} from {collection}\n"), true)
            } else {
                (format!("{collection} has no document {source}\n"), false)
            })
        }
        other => Err(usage(&format!("kb: unknown command '{other}'"))),
    }
}

async fn list(base: &KnowledgeBase, collection: Option<&str>) -> Result<(String, bool), RunError> {
    let kb = &base.knowledge;
    let failed = |e: flowbot_core::VectorError| RunError::Llm(e.to_string());
    let mut out = String::new();
    match collection {
        None => {
            for c in kb.vectors().collections().await.map_err(failed)? {
                out.push_str(&format!(
                    "{:<24} {:>8} chunks  dimension {}  {}\n",
                    c.spec.name,
                    c.points,
                    c.spec.dimension,
                    c.spec.distance.as_str()
                ));
            }
            if out.is_empty() {
                out.push_str("no collections\n");
            }
        }
        Some(name) => {
            let docs = kb
                .documents(name)
                .await
                .map_err(|e| RunError::Llm(e.to_string()))?;
            for d in &docs {
                out.push_str(&format!(
                    "{}  {} chunks  {}  {}\n",
                    d.source,
                    d.chunks,
                    d.ingested_at.format("%Y-%m-%d %H:%M"),
                    d.title
                ));
            }
            if docs.is_empty() {
                out.push_str(&format!("{name} has no documents\n"));
            }
        }
    }
    Ok((out, true))
}

/// `kb ingest`: each source with a progress bar on the terminal, then a summary.
async fn ingest(
    base: &KnowledgeBase,
    collection: &str,
    words: &[&str],
    sync: bool,
) -> Result<(String, bool), RunError> {
    let sources: Vec<Source> = words.iter().map(|w| source_of(w)).collect();
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{bar:30}] {pos}/{len} documents, {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let started = Instant::now();
    let report = base
        .knowledge
        .ingest_all(collection, &sources, sync, |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.done as u64);
            bar.set_message(format!("{} chunks; {}", p.chunks, p.current));
        })
        .await
        .map_err(|e| RunError::Llm(e.to_string()))?;
    bar.finish_and_clear();
    let mut counts = [0usize; 3];
    let mut out = String::new();
    let mut failed = 0;
    for r in report.skipped() {
        out.push_str(&format!(
            "skipped: {}\n",
            r.error.as_deref().unwrap_or(&r.source)
        ));
    }
    for r in report.results.iter().filter(|r| !r.skipped) {
        match (&r.outcome, &r.error) {
            (_, Some(e)) => {
                failed += 1;
                out.push_str(&format!("failed: {}: {e}\n", r.source));
            }
            (Some(IngestOutcome::Added), _) => counts[0] += 1,
            (Some(IngestOutcome::Replaced), _) => counts[1] += 1,
            (Some(IngestOutcome::Unchanged), _) => counts[2] += 1,
            _ => {}
        }
    }
    out.push_str(&format!(
        "{collection}: {} added, {} replaced, {} unchanged, {failed} failed, {} skipped, {} removed; {} chunks written in {:.1} s\n",
        counts[0],
        counts[1],
        counts[2],
        report.skipped().count(),
        report.removed.len(),
        report.chunks(),
        started.elapsed().as_secs_f64()
    ));
    Ok((out, failed == 0))
}

/// A URL (`http://`, `https://`), else a file or folder path.
fn source_of(word: &str) -> Source {
    if word.starts_with("http://") || word.starts_with("https://") {
        Source::url(word)
    } else {
        Source::path(word)
    }
}
