//! The knowledge base: loading, chunking, ingestion, jobs and retrieval, over flowbot-store's
//! embedded vector store (in memory, or on a SQLite file for keyword search), a hashed
//! bag-of-words embedder and the in-memory store, all real implementations of core's traits.

#![cfg(feature = "knowledge")]
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod knowledge_kit;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use flowbot_core::store::KvStore;
use flowbot_core::vector::{Condition, Filter, VectorStore};
use flowbot_llm::context::{EstimateCounter, TokenCounter};
use flowbot_llm::knowledge::*;
use flowbot_store::MemoryStore;
use knowledge_kit::{HashEmbedder, Vectors, encrypted_pdf, pdf};

fn opts() -> LoadOptions {
    LoadOptions::default()
}

struct Kit {
    store: Arc<Vectors>,
    embedder: Arc<HashEmbedder>,
    kv: Arc<MemoryStore>,
    kb: Knowledge,
}

fn kit_with(store: Vectors) -> Kit {
    let store = Arc::new(store);
    let embedder = Arc::new(HashEmbedder::new(64));
    let kv = Arc::new(MemoryStore::new());
    let kb = Knowledge::new(store.clone(), embedder.clone(), kv.clone());
    Kit {
        store,
        embedder,
        kv,
        kb,
    }
}

fn kit() -> Kit {
    kit_with(Vectors::memory())
}

fn md(source: &str, text: &str) -> Document {
    Document::from_bytes(source, DocKind::Markdown, text.as_bytes(), &opts()).unwrap()
}

// ---------------------------------------------------------------------------------------
// Loading

#[test]
fn markdown_has_sections_at_its_headings_and_its_title() {
    let doc = md(
        "guide.md",
        "Intro words.\n\n# The Guide\n\nFirst part.\n\n## Setup `cargo`\n\nRun it.\n\nSetext\n------\n\nLast.\n",
    );
    assert_eq!(doc.title, "The Guide");
    assert_eq!(doc.kind, DocKind::Markdown);
    let sections: Vec<(Option<&str>, &str)> = doc
        .sections
        .iter()
        .map(|s| (s.heading.as_deref(), s.text.as_str()))
        .collect();
    assert_eq!(
        sections,
        [
            (None, "Intro words."),
            (Some("The Guide"), "First part."),
            (Some("Setup cargo"), "Run it."),
            (Some("Setext"), "Last."),
        ]
    );
    assert_eq!(doc.hash.len(), 64);
    // Without headings, the file's name is the title.
    assert_eq!(md("docs/notes.md", "just text").title, "notes");
}

#[test]
fn html_gives_visible_text_title_and_heading_sections() {
    let page = r#"<!doctype html><html><head><title> Shop  help </title>
        <style>body { color: red }</style><script>var hidden = "no";</script></head>
        <body><nav>Home</nav><h1>Returns</h1><p>Send it back within <b>30 days</b>.</p>
        <div hidden>secret</div><h2>Refunds</h2><ul><li>Card</li><li>Cash</li></ul>
        <noscript>enable js</noscript></body></html>"#;
    let doc = Document::from_bytes(
        "https://shop.example/help",
        DocKind::Html,
        page.as_bytes(),
        &opts(),
    )
    .unwrap();
    assert_eq!(doc.title, "Shop help");
    let all = doc.text();
    for gone in ["color", "hidden", "secret", "enable js"] {
        assert!(!all.contains(gone), "{gone:?} in {all:?}");
    }
    assert_eq!(doc.sections[0].heading, None);
    assert_eq!(doc.sections[0].text, "Home");
    assert_eq!(doc.sections[1].heading.as_deref(), Some("Returns"));
    assert_eq!(doc.sections[1].text, "Send it back within 30 days.");
    assert_eq!(doc.sections[2].heading.as_deref(), Some("Refunds"));
    assert_eq!(doc.sections[2].text, "Card\nCash");
    // No <title>: the first <h1>.
    let doc = Document::from_bytes(
        "p.html",
        DocKind::Html,
        b"<h1>Only heading</h1><p>x</p>",
        &opts(),
    )
    .unwrap();
    assert_eq!(doc.title, "Only heading");
}

#[test]
fn text_files_load_from_disk_by_extension() {
    let dir = tempdir("text");
    let path = dir.join("readme.txt");
    std::fs::write(&path, "\u{feff}Plain words.\nSecond line.\n").unwrap();
    let doc = Document::load(&path, &opts()).unwrap();
    assert_eq!(doc.kind, DocKind::Text);
    assert_eq!(doc.title, "readme");
    assert_eq!(doc.source, path.display().to_string());
    assert_eq!(doc.sections.len(), 1);
    assert_eq!(doc.sections[0].text, "Plain words.\nSecond line.");
    assert_eq!(
        DocKind::parse("text/markdown; charset=utf-8"),
        Some(DocKind::Markdown)
    );
    assert_eq!(DocKind::parse(".HTM"), Some(DocKind::Html));
    assert_eq!(DocKind::parse("image/png"), None);
}

#[cfg(feature = "pdf")]
#[test]
fn pdf_text_comes_per_page_with_page_numbers() {
    let bytes = pdf(&["Hello from page one", "Goodbye on page two"]);
    let doc = Document::from_bytes("manual.pdf", DocKind::Pdf, &bytes, &opts()).unwrap();
    assert_eq!(doc.kind, DocKind::Pdf);
    assert_eq!(doc.title, "manual");
    assert_eq!(doc.sections.len(), 2, "{:?}", doc.sections);
    assert_eq!(doc.sections[0].page, Some(1));
    assert!(
        doc.sections[0].text.contains("Hello from page one"),
        "{:?}",
        doc.sections
    );
    assert_eq!(doc.sections[1].page, Some(2));
    assert!(doc.sections[1].text.contains("Goodbye on page two"));
}

#[cfg(feature = "pdf")]
#[test]
fn corrupt_and_encrypted_pdfs_are_errors_naming_the_file() {
    let not_pdf = Document::from_bytes("a.pdf", DocKind::Pdf, b"hello there", &opts());
    assert!(
        matches!(&not_pdf, Err(KnowledgeError::CorruptPdf { source_name, .. }) if source_name == "a.pdf"),
        "{not_pdf:?}"
    );
    // A real PDF cut in half, and one whose objects are garbage: errors, never a panic.
    let good = pdf(&["Some text here"]);
    let cut = &good[..good.len() / 2];
    let e = Document::from_bytes("cut.pdf", DocKind::Pdf, cut, &opts()).unwrap_err();
    assert!(e.to_string().starts_with("cut.pdf: "), "{e}");
    let garbage = b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 9 0 R >> endobj\n\xff\xfe garbage\ntrailer << /Root 1 0 R >>\n%%EOF";
    let e = Document::from_bytes("junk.pdf", DocKind::Pdf, garbage, &opts()).unwrap_err();
    assert!(
        matches!(
            &e,
            KnowledgeError::CorruptPdf { .. } | KnowledgeError::Empty { .. }
        ),
        "{e:?}"
    );
    assert!(e.to_string().starts_with("junk.pdf: "), "{e}");
    let e =
        Document::from_bytes("locked.pdf", DocKind::Pdf, &encrypted_pdf(), &opts()).unwrap_err();
    assert!(
        matches!(&e, KnowledgeError::EncryptedPdf { source_name } if source_name == "locked.pdf"),
        "{e:?}"
    );
}

#[test]
fn other_extensions_binary_text_empty_and_large_documents_are_refused() {
    let dir = tempdir("refused");
    let exe = dir.join("tool.exe");
    std::fs::write(&exe, b"MZ").unwrap();
    let e = Document::load(&exe, &opts()).unwrap_err();
    assert!(
        matches!(&e, KnowledgeError::Unsupported { kind, .. } if kind == "exe"),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("tool.exe") && e.to_string().contains("\"exe\""),
        "{e}"
    );

    let bin = dir.join("image.md");
    std::fs::write(&bin, b"# Title\n\x00\x01\x02").unwrap();
    let e = Document::load(&bin, &opts()).unwrap_err();
    assert!(
        matches!(
            e,
            KnowledgeError::Binary {
                kind: "markdown",
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("image.md") && e.to_string().contains("NUL"),
        "{e}"
    );
    let e = Document::from_bytes("latin.txt", DocKind::Text, b"caf\xe9", &opts()).unwrap_err();
    assert!(e.to_string().contains("invalid UTF-8 at byte 3"), "{e}");

    for (name, kind, bytes) in [
        ("blank.md", DocKind::Markdown, &b"  \n\n# \n"[..]),
        (
            "blank.html",
            DocKind::Html,
            b"<html><script>x()</script></html>",
        ),
        ("blank.txt", DocKind::Text, b""),
    ] {
        let e = Document::from_bytes(name, kind, bytes, &opts()).unwrap_err();
        assert!(
            matches!(&e, KnowledgeError::Empty { source_name, .. } if source_name == name),
            "{e:?}"
        );
    }

    let small = LoadOptions { max_bytes: 10 };
    let big = dir.join("big.txt");
    std::fs::write(&big, "eleven byte").unwrap();
    let e = Document::load(&big, &small).unwrap_err();
    assert!(
        matches!(
            e,
            KnowledgeError::TooLarge {
                size: 11,
                limit: 10,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(Document::from_bytes("u", DocKind::Text, &[b'a'; 11], &small).is_err());
    assert!(Document::from_bytes("u", DocKind::Text, &[b'a'; 10], &small).is_ok());
    let missing = Document::load(&dir.join("missing.md"), &opts()).unwrap_err();
    assert!(
        missing.to_string().contains("missing.md: cannot read it"),
        "{missing}"
    );
}

#[test]
fn a_folder_walk_lists_supported_files_sorted_and_the_others_apart() {
    let dir = tempdir("walk");
    for f in [
        "b.md",
        "a.txt",
        "sub/c.html",
        "sub/deeper/d.markdown",
        "x.png",
        ".hidden.md",
        ".git/config.md",
        "sub/notes.docx",
    ] {
        let path = dir.join(f);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, "words").unwrap();
    }
    let folder = walk(&dir).unwrap();
    let rel = |v: &[std::path::PathBuf]| -> Vec<String> {
        v.iter()
            .map(|p| p.strip_prefix(&dir).unwrap().display().to_string())
            .collect()
    };
    assert_eq!(
        rel(&folder.files),
        ["a.txt", "b.md", "sub/c.html", "sub/deeper/d.markdown"]
    );
    assert_eq!(rel(&folder.unsupported), ["sub/notes.docx", "x.png"]);
    assert!(walk(&dir.join("nope")).is_err());
}

// ---------------------------------------------------------------------------------------
// Chunking

#[test]
fn chunks_stay_under_the_size_overlap_and_keep_heading_and_page() {
    let counter: Arc<dyn TokenCounter> = Arc::new(EstimateCounter::default());
    let sentences: Vec<String> = (0..60)
        .map(|i| format!("Sentence number {i} talks about topic {i}."))
        .collect();
    let text = format!("# Topics\n\n{}\n\n## Other\n\nShort.", sentences.join(" "));
    let doc = md("topics.md", &text);
    let options = ChunkOptions {
        max_tokens: 60,
        overlap: 25,
    };
    let chunks = chunk_document(&doc, &options, &counter).unwrap();
    assert!(chunks.len() > 5, "{}", chunks.len());
    for (i, c) in chunks.iter().enumerate() {
        assert_eq!(c.index, i);
        assert!(counter.count_text(&c.text) <= 60, "{c:?}");
        assert_eq!(c.id, format!("topics.md#{}#{i}", &doc.hash[..12]));
    }
    let last = chunks.last().unwrap();
    assert_eq!(
        (last.heading.as_deref(), last.text.as_str()),
        (Some("Other"), "Short.")
    );
    let topics: Vec<_> = chunks
        .iter()
        .filter(|c| c.heading.as_deref() == Some("Topics"))
        .collect();
    // Overlap: each chunk of a section starts with words the previous one ends with.
    for pair in topics.windows(2) {
        let first_words: String = pair[1]
            .text
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            pair[0].text.contains(&first_words),
            "no overlap between {:?} and {:?}",
            pair[0].text,
            pair[1].text
        );
    }
    // Without overlap, no sentence is repeated.
    let none = chunk_document(
        &doc,
        &ChunkOptions {
            max_tokens: 40,
            overlap: 0,
        },
        &counter,
    )
    .unwrap();
    let total: usize = none
        .iter()
        .map(|c| c.text.matches("Sentence number").count())
        .sum();
    assert_eq!(total, 60);
    // Same content, same ids.
    assert_eq!(chunk_document(&doc, &options, &counter).unwrap(), chunks);
}

#[test]
fn chunk_options_are_checked() {
    for bad in [
        ChunkOptions {
            max_tokens: 10,
            overlap: 10,
        },
        ChunkOptions {
            max_tokens: 0,
            overlap: 0,
        },
    ] {
        assert!(
            matches!(bad.check(), Err(KnowledgeError::Options(_))),
            "{bad:?}"
        );
    }
    let k = kit();
    let options = IngestOptions {
        batch_size: 0,
        ..IngestOptions::default()
    };
    assert!(k.kb.with_options(options).is_err());
    // A long source still gives a valid point id.
    let long = "x".repeat(400);
    assert!(chunk_id(&long, &"a".repeat(64), 3).len() <= flowbot_core::vector::MAX_POINT_ID);
}

// ---------------------------------------------------------------------------------------
// Ingestion

#[tokio::test]
async fn an_unchanged_document_is_skipped_and_a_changed_one_replaced() {
    let k = kit();
    let v1 = md(
        "faq.md",
        "# FAQ\n\nThe office opens at nine.\n\n## Parking\n\nPark in lot B.",
    );
    assert_eq!(
        k.kb.ingest("docs", &v1).await.unwrap(),
        IngestOutcome::Added
    );
    let points = k.store.points("docs").await;
    assert_eq!(points.len(), 2);
    let p = &points
        .iter()
        .find(|p| p.payload["section"] == "Parking")
        .unwrap()
        .payload;
    assert_eq!(p["text"], "Park in lot B.");
    assert_eq!(p["source"], "faq.md");
    assert_eq!(p["title"], "FAQ");
    assert_eq!(p["hash"], v1.hash.as_str());
    assert_eq!(p["chunk"], 1);
    assert!(p.get("url").is_none());
    let calls = k.embedder.calls.load(Ordering::SeqCst);

    assert_eq!(
        k.kb.ingest("docs", &v1).await.unwrap(),
        IngestOutcome::Unchanged
    );
    assert_eq!(
        k.embedder.calls.load(Ordering::SeqCst),
        calls,
        "nothing embedded again"
    );
    // A deleted collection is filled again, its old records notwithstanding.
    k.store.delete_collection("docs").await.unwrap();
    assert_eq!(
        k.kb.ingest("docs", &v1).await.unwrap(),
        IngestOutcome::Added
    );
    assert_eq!(k.store.points("docs").await.len(), 2);

    let v2 = md("faq.md", "# FAQ\n\nThe office opens at ten now.");
    assert_eq!(
        k.kb.ingest("docs", &v2).await.unwrap(),
        IngestOutcome::Replaced
    );
    let points = k.store.points("docs").await;
    assert_eq!(points.len(), 1, "the old chunks are gone");
    assert_eq!(points[0].payload["hash"], v2.hash.as_str());
    let records = k.kb.documents("docs").await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(
        (records[0].hash.as_str(), records[0].chunks),
        (v2.hash.as_str(), 1)
    );
    // The record is in the store under the collection's namespace.
    assert!(
        k.kv.kv_get("kb.docs.docs", "faq.md")
            .await
            .unwrap()
            .is_some()
    );

    // A URL source carries its URL.
    let web =
        Document::from_bytes("https://x.example/a", DocKind::Text, b"web words", &opts()).unwrap();
    k.kb.ingest("docs", &web).await.unwrap();
    let hits =
        k.kb.search("docs", "web words", &SearchOptions::default())
            .await
            .unwrap();
    assert_eq!(hits[0].url.as_deref(), Some("https://x.example/a"));
}

#[tokio::test]
async fn all_chunks_are_written_in_one_upsert_after_batched_embedding() {
    let k = kit();
    let kb = Knowledge::new(k.store.clone(), k.embedder.clone(), k.kv.clone())
        .with_options(IngestOptions {
            batch_size: 3,
            chunk: ChunkOptions {
                max_tokens: 12,
                overlap: 0,
            },
            ..IngestOptions::default()
        })
        .unwrap();
    let text: Vec<String> = (0..20)
        .map(|i| format!("Paragraph {i} with some words.\n"))
        .collect();
    let doc = Document::from_bytes(
        "long.txt",
        DocKind::Text,
        text.join("\n").as_bytes(),
        &opts(),
    )
    .unwrap();
    kb.ingest("docs", &doc).await.unwrap();
    let chunks = k.store.points("docs").await.len();
    assert!(chunks >= 7, "{chunks}");
    assert_eq!(k.embedder.calls.load(Ordering::SeqCst), chunks.div_ceil(3));
    assert_eq!(k.store.upserts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_embedder_failing_mid_document_leaves_the_old_version() {
    let k = kit();
    let v1 = md("a.md", "Alpha version one words.");
    k.kb.ingest("docs", &v1).await.unwrap();
    k.embedder.fail_on(Some("outage"));
    let v2 = md(
        "a.md",
        "Alpha version two words.\n\nThen an outage paragraph.",
    );
    let e = k.kb.ingest("docs", &v2).await.unwrap_err();
    assert!(
        matches!(&e, KnowledgeError::Embed { source_name, .. } if source_name == "a.md"),
        "{e:?}"
    );
    assert!(e.is_transient());
    let points = k.store.points("docs").await;
    assert_eq!(points.len(), 1);
    assert_eq!(points[0].payload["hash"], v1.hash.as_str());
    assert_eq!(k.kb.documents("docs").await.unwrap()[0].hash, v1.hash);
    assert_eq!(
        k.store.upserts.load(Ordering::SeqCst),
        1,
        "nothing half-written"
    );
}

#[tokio::test]
async fn a_dimension_that_does_not_fit_the_collection_is_a_clear_error() {
    let k = kit();
    k.kb.ingest("docs", &md("a.md", "words")).await.unwrap();
    let narrow = Knowledge::new(
        k.store.clone(),
        Arc::new(HashEmbedder::new(32)),
        k.kv.clone(),
    );
    let e = narrow.ensure_collection("docs").await.unwrap_err();
    assert!(
        matches!(
            e,
            KnowledgeError::Dimension {
                expected: 64,
                got: 32,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(
        e.to_string().contains("dimension 32") && e.to_string().contains("\"docs\""),
        "{e}"
    );
    let e = narrow
        .ingest("docs", &md("b.md", "other"))
        .await
        .unwrap_err();
    assert!(matches!(e, KnowledgeError::Dimension { .. }), "{e:?}");
    let e = narrow
        .search("docs", "words", &SearchOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(e, KnowledgeError::Dimension { .. }), "{e:?}");
}

#[tokio::test]
async fn a_folder_run_reports_each_file_goes_on_past_errors_and_syncs_removals() {
    let k = kit();
    let dir = tempdir("run");
    std::fs::write(dir.join("one.md"), "# One\n\nFirst file about apples.").unwrap();
    std::fs::write(dir.join("two.txt"), "Second file about pears.").unwrap();
    std::fs::write(dir.join("bad.md"), b"\x00\x00").unwrap();
    std::fs::write(dir.join("photo.jpg"), b"\xff\xd8").unwrap();
    let sources = [
        Source::path(&dir),
        Source::inline(
            "https://x.example/faq",
            DocKind::Markdown,
            "# FAQ\n\nCherries.",
        ),
    ];
    let mut seen = Vec::new();
    let report =
        k.kb.ingest_all("docs", &sources, true, |p| seen.push(p.clone()))
            .await
            .unwrap();
    let name = |f: &str| dir.join(f).display().to_string();
    let outcome: Vec<(String, Option<IngestOutcome>, bool)> = report
        .results
        .iter()
        .map(|r| (r.source.clone(), r.outcome, r.error.is_some()))
        .collect();
    assert_eq!(
        outcome,
        [
            (name("bad.md"), None, true),
            (name("one.md"), Some(IngestOutcome::Added), false),
            (name("two.txt"), Some(IngestOutcome::Added), false),
            (name("photo.jpg"), None, true),
            (
                "https://x.example/faq".into(),
                Some(IngestOutcome::Added),
                false
            ),
        ]
    );
    assert!(
        report.results[3]
            .error
            .as_ref()
            .unwrap()
            .contains("unsupported document type \"jpg\"")
    );
    assert_eq!(seen.len(), 5);
    assert_eq!(seen.last().unwrap().done, 5);
    assert_eq!(seen.last().unwrap().total, 5);
    assert_eq!(seen.last().unwrap().chunks, 3);
    assert_eq!(report.chunks(), 3);

    // Again after a file is deleted: the rest is unchanged, the deleted one is removed.
    std::fs::remove_file(dir.join("two.txt")).unwrap();
    let report =
        k.kb.ingest_all("docs", &sources, true, |_| {})
            .await
            .unwrap();
    assert_eq!(report.removed, [name("two.txt")]);
    assert!(
        report
            .results
            .iter()
            .filter_map(|r| r.outcome)
            .all(|o| o == IngestOutcome::Unchanged)
    );
    let sources_left: Vec<String> =
        k.kb.documents("docs")
            .await
            .unwrap()
            .into_iter()
            .map(|d| d.source)
            .collect();
    assert_eq!(
        sources_left,
        [name("one.md"), "https://x.example/faq".to_owned()]
    );
    let gone = Filter::must(Condition::eq("source", name("two.txt")));
    assert_eq!(k.store.count("docs", &gone).await.unwrap(), 0);
    assert!(k.kb.remove("docs", &name("one.md")).await.unwrap());
    assert!(!k.kb.remove("docs", &name("one.md")).await.unwrap());
}

#[tokio::test]
async fn a_job_records_progress_and_errors_and_keeps_the_old_version_of_a_failing_document() {
    let k = kit();
    let job = IngestJob::new(
        "docs",
        vec![
            Source::inline("a.md", DocKind::Markdown, "Apples are red."),
            Source::inline("b.md", DocKind::Markdown, "Bananas are yellow."),
            Source::inline("c.md", DocKind::Markdown, "Cherries are dark."),
        ],
    );
    let state = k.kb.run_job(&job).await.unwrap();
    assert_eq!(
        (state.status, state.total, state.done, state.chunks),
        (JobStatus::Done, 3, 3, 3)
    );
    let old_b = k.kb.document("docs", "b.md").await.unwrap().unwrap();

    // The embedder fails on b's new version: a and c go on, b keeps its old version.
    k.embedder.fail_on(Some("outage"));
    let job2 = IngestJob::new(
        "docs",
        vec![
            Source::inline("a.md", DocKind::Markdown, "Apples are green now."),
            Source::inline("b.md", DocKind::Markdown, "Bananas and an outage."),
            Source::inline("c.md", DocKind::Markdown, "Cherries are sweet now."),
        ],
    );
    let state = k.kb.run_job(&job2).await.unwrap();
    assert_eq!(
        state.status,
        JobStatus::Failed,
        "a transient failure asks for a retry"
    );
    assert_eq!(state.done, 3);
    assert_eq!(state.retry, ["b.md"]);
    assert!(
        state.errors["b.md"].contains("b.md: embedding failed"),
        "{:?}",
        state.errors
    );
    assert_eq!(state.outcomes["replaced"], 2);
    assert!(state.started_at.is_some() && state.finished_at.is_some());
    assert_eq!(k.kb.document("docs", "b.md").await.unwrap().unwrap(), old_b);
    let b =
        k.kb.search(
            "docs",
            "bananas",
            &SearchOptions {
                filter: Filter::must(Condition::eq("source", "b.md")),
                ..SearchOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(b[0].text, "Bananas are yellow.");

    // The retry (the queue's next attempt) skips what is done and finishes b.
    k.embedder.fail_on(None);
    let state = k.kb.run_job(&job2).await.unwrap();
    assert_eq!(state.status, JobStatus::Done);
    assert_eq!(state.attempts, 2);
    assert_eq!(state.outcomes["unchanged"], 2);
    assert_eq!(state.outcomes["replaced"], 1);
    assert!(state.errors.is_empty(), "{:?}", state.errors);
    assert_eq!(k.kb.job(&job2.id).await.unwrap().unwrap(), state);
    assert_eq!(k.kb.jobs().await.unwrap().len(), 2);
}

#[tokio::test]
async fn files_outside_the_root_folder_are_refused() {
    let k = kit();
    let root = tempdir("root");
    let outside = tempdir("outside");
    std::fs::write(root.join("in.md"), "Inside words.").unwrap();
    std::fs::write(outside.join("secret.txt"), "Secret words.").unwrap();
    let kb = Knowledge::new(k.store.clone(), k.embedder.clone(), k.kv.clone())
        .with_options(IngestOptions {
            root: Some(root.clone()),
            ..IngestOptions::default()
        })
        .unwrap();
    let sneaky = root
        .join("..")
        .join(outside.file_name().unwrap())
        .join("secret.txt");
    let sources = [Source::path(root.join("in.md")), Source::path(sneaky)];
    let report = kb
        .ingest_all("docs", &sources, false, |_| {})
        .await
        .unwrap();
    assert_eq!(report.results[0].outcome, Some(IngestOutcome::Added));
    let refused = report.results[1].error.as_deref().unwrap();
    assert!(
        refused.contains("outside the knowledge base's folder"),
        "{refused}"
    );
    assert_eq!(k.store.points("docs").await.len(), 1);
}

// ---------------------------------------------------------------------------------------
// Retrieval

#[tokio::test]
async fn a_threshold_nobody_reaches_returns_nothing() {
    let k = kit();
    k.kb.ingest("docs", &md("a.md", "The cat sat on the mat."))
        .await
        .unwrap();
    let found =
        k.kb.search("docs", "cat mat", &SearchOptions::default())
            .await
            .unwrap();
    assert_eq!(found.len(), 1);
    let best = found[0].vector_score.unwrap();
    assert!(best > 0.3, "{best}");
    let strict = SearchOptions {
        threshold: Some(best + 0.01),
        ..SearchOptions::default()
    };
    assert!(
        k.kb.search("docs", "cat mat", &strict)
            .await
            .unwrap()
            .is_empty()
    );
    let lenient = SearchOptions {
        threshold: Some(best - 0.01),
        ..SearchOptions::default()
    };
    assert_eq!(
        k.kb.search("docs", "cat mat", &lenient)
            .await
            .unwrap()
            .len(),
        1
    );
    assert!(
        k.kb.search("docs", "   ", &SearchOptions::default())
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        k.kb.search("nope", "cat", &SearchOptions::default())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn hybrid_search_fuses_vector_and_keyword_ranks() {
    let k = kit_with(Vectors::sqlite().await);
    // The query's words: "reset password email". Vector search favours `v` (the same words
    // and little else); the keyword search (SQLite FTS5, BM25) favours `kw`, which holds all
    // three. Longer unrelated documents make the collection big enough for BM25's weights to
    // mean something (with four short documents, a word in two of them weighs nothing).
    let docs = [
        ("v.md", "reset password"),
        ("kw.md", "reset your password by email"),
        ("e.md", "email"),
        ("z.md", "unrelated gardening tips"),
    ];
    for (s, t) in docs {
        k.kb.ingest("docs", &md(s, t)).await.unwrap();
    }
    for i in 0..6 {
        let filler = format!(
            "filler {i} talks about rivers mountains forests clouds weather birds and trees"
        );
        k.kb.ingest("docs", &md(&format!("f{i}.md"), &filler))
            .await
            .unwrap();
    }
    let query = "reset password email";
    let hybrid =
        k.kb.search(
            "docs",
            query,
            &SearchOptions {
                limit: 4,
                ..SearchOptions::default()
            },
        )
        .await
        .unwrap();
    let vector_only =
        k.kb.search(
            "docs",
            query,
            &SearchOptions {
                limit: 4,
                hybrid: false,
                ..SearchOptions::default()
            },
        )
        .await
        .unwrap();

    // Recompute the fusion from the two rankings and check the order and scores.
    let vector_rank = |id: &str| vector_only.iter().position(|p| p.id == id).map(|r| r + 1);
    for p in &hybrid {
        let mut expected = 0.0f32;
        if let Some(r) = vector_rank(&p.id) {
            expected += 1.0 / (RRF_K + r as f32);
        }
        if let Some(r) = p.keyword_rank {
            expected += 1.0 / (RRF_K + r as f32);
        }
        assert!((p.score - expected).abs() < 1e-6, "{p:?}");
    }
    assert!(hybrid.windows(2).all(|w| w[0].score >= w[1].score));
    let source_of = |v: &[Passage]| v.iter().map(|p| p.source.clone()).collect::<Vec<_>>();
    // kw.md holds all three words: first by keyword; v.md leads by vector.
    assert_eq!(
        hybrid
            .iter()
            .find(|p| p.source == "kw.md")
            .unwrap()
            .keyword_rank,
        Some(1)
    );
    assert_eq!(vector_only[0].source, "v.md");
    assert_eq!(
        source_of(&hybrid)[..2]
            .iter()
            .collect::<std::collections::BTreeSet<_>>(),
        ["kw.md".to_owned(), "v.md".to_owned()].iter().collect()
    );
    assert!(
        hybrid
            .iter()
            .find(|p| p.source == "z.md")
            .is_none_or(|p| p.keyword_rank.is_none())
    );
    // Vector-only scores are the cosine similarities.
    assert!(
        vector_only
            .iter()
            .all(|p| p.keyword_rank.is_none() && Some(p.score) == p.vector_score)
    );
    // A filter applies to both searches.
    let only_e = SearchOptions {
        filter: Filter::must(Condition::eq("source", "e.md")),
        ..SearchOptions::default()
    };
    let found = k.kb.search("docs", query, &only_e).await.unwrap();
    assert_eq!(source_of(&found), ["e.md"]);
}

struct Reverse;

#[flowbot_core::async_trait]
impl Reranker for Reverse {
    async fn rerank(
        &self,
        _query: &str,
        mut passages: Vec<Passage>,
    ) -> Result<Vec<Passage>, KnowledgeError> {
        passages.reverse();
        Ok(passages)
    }
}

#[tokio::test]
async fn a_reranker_orders_the_candidates_before_the_limit() {
    let k = kit();
    for (s, t) in [
        ("a.md", "alpha beta gamma"),
        ("b.md", "alpha beta"),
        ("c.md", "alpha"),
    ] {
        k.kb.ingest("docs", &md(s, t)).await.unwrap();
    }
    let plain =
        k.kb.search(
            "docs",
            "alpha beta gamma",
            &SearchOptions {
                limit: 1,
                ..SearchOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(plain[0].source, "a.md");
    let kb = Knowledge::new(k.store.clone(), k.embedder.clone(), k.kv.clone())
        .with_reranker(Arc::new(Reverse));
    let reranked = kb
        .search(
            "docs",
            "alpha beta gamma",
            &SearchOptions {
                limit: 1,
                ..SearchOptions::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(
        reranked[0].source, "c.md",
        "the last candidate, moved first"
    );
}

#[tokio::test]
async fn hits_format_as_a_plain_list() {
    let k = kit();
    let bytes = pdf(&["Refunds take five days"]);
    #[cfg(feature = "pdf")]
    {
        let doc = Document::from_bytes("policy.pdf", DocKind::Pdf, &bytes, &opts()).unwrap();
        k.kb.ingest("docs", &doc).await.unwrap();
        let hits =
            k.kb.search("docs", "refunds", &SearchOptions::default())
                .await
                .unwrap();
        assert_eq!(hits[0].page, Some(1));
        let list = Knowledge::format_hits(&hits);
        assert!(
            list.starts_with("1. policy — policy.pdf, page 1\n   Refunds take five days"),
            "{list}"
        );
    }
    let _ = bytes;
    assert_eq!(
        Knowledge::format_hits(&[]),
        "Nothing found in the knowledge base."
    );
}

#[test]
fn sources_fit_the_budget_and_the_answer_lists_what_it_cites() {
    let counter = EstimateCounter::default();
    let passage = |n: usize| Passage {
        id: format!("p{n}"),
        text: format!("Passage {n} {}", "words ".repeat(30)),
        title: format!("Doc {n}"),
        source: format!("doc{n}.md"),
        section: None,
        page: (n == 2).then_some(7),
        url: (n == 3).then(|| "https://x.example/3".to_owned()),
        score: 1.0,
        vector_score: Some(0.5),
        keyword_rank: None,
    };
    let passages: Vec<Passage> = (1..=3).map(passage).collect();
    let (all, citations) = sources_prompt(&passages, &counter, 10_000);
    assert_eq!(citations.len(), 3);
    assert!(all.starts_with(CITE_INSTRUCTIONS) && all.contains("[3] Doc 3 — https://x.example/3"));
    let one_cost = counter.count_text(&sources_prompt(&passages[..1], &counter, 10_000).0);
    let (two, citations) = sources_prompt(&passages, &counter, one_cost + 50);
    assert_eq!(
        citations.len(),
        1,
        "the lower-ranked passages that do not fit are left out"
    );
    assert!(counter.count_text(&two) <= one_cost + 50);
    assert!(sources_prompt(&passages, &counter, 5).1.is_empty());

    let (_, citations) = sources_prompt(&passages, &counter, 10_000);
    assert_eq!(cited("See [2] and [3, 1]; not [9] or [x].", 3), [1, 2, 3]);
    let reply = sources_reply("Yes [2], and [3].", &citations);
    assert_eq!(
        reply,
        "Yes [2], and [3].\n\nSources:\n[2] Doc 2 — doc2.md, page 7\n[3] Doc 3 — https://x.example/3"
    );
    assert_eq!(sources_reply("No citations.", &citations), "No citations.");
}

// ---------------------------------------------------------------------------------------
// URLs

#[cfg(feature = "urls")]
mod urls {
    use super::*;
    use axum::http::{StatusCode, header};
    use axum::routing::get;
    use flowbot_core::net::NetPolicy;

    const PAGE: &str = "<html><head><title>Shop help</title></head><body>\
        <h1>Returns</h1><p>Send parcels back within thirty days for a refund.</p></body></html>";

    /// A local server: an HTML page, Markdown without an extension, a large body with its
    /// length, a large body streamed without one; anything else is a 404.
    async fn server() -> String {
        let app = axum::Router::new()
            .route(
                "/help",
                get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
            )
            .route(
                "/notes",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/markdown")],
                        "# Notes\n\nThe gate code is 4321.",
                    )
                }),
            )
            .route(
                "/guide.md",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "application/octet-stream")],
                        "# Guide\n\nWords.",
                    )
                }),
            )
            .route("/big.txt", get(|| async { "x".repeat(100) }))
            .route(
                "/stream.txt",
                get(|| async {
                    let pieces = (0..10)
                        .map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from("y".repeat(10))));
                    axum::body::Body::from_stream(futures_util::stream::iter(pieces))
                }),
            )
            .route("/down", get(|| async { StatusCode::SERVICE_UNAVAILABLE }));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    fn local() -> Arc<NetPolicy> {
        Arc::new(NetPolicy::allowing(["127.0.0.1"]).unwrap())
    }

    fn kb_with_policy(k: &Kit, policy: Option<Arc<NetPolicy>>) -> Knowledge {
        let kb = Knowledge::new(k.store.clone(), k.embedder.clone(), k.kv.clone());
        match policy {
            Some(p) => kb.with_net_policy(p),
            None => kb,
        }
    }

    #[tokio::test]
    async fn a_web_page_is_fetched_ingested_and_found_with_its_link() {
        let base = server().await;
        let k = kit();
        let kb = kb_with_policy(&k, Some(local()));
        let page = format!("{base}/help");
        let notes = format!("{base}/notes");
        let guide = format!("{base}/guide.md");
        let sources = [Source::url(&page), Source::url(&notes), Source::url(&guide)];
        let report = kb
            .ingest_all("docs", &sources, false, |_| {})
            .await
            .unwrap();
        let outcomes: Vec<_> = report
            .results
            .iter()
            .map(|r| (r.outcome, r.error.clone()))
            .collect();
        assert_eq!(outcomes, vec![(Some(IngestOutcome::Added), None); 3]);
        let hits = kb
            .search(
                "docs",
                "send parcels back for a refund",
                &SearchOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(hits[0].source, page);
        assert_eq!(hits[0].url.as_deref(), Some(page.as_str()));
        assert_eq!(hits[0].title, "Shop help");
        assert_eq!(hits[0].section.as_deref(), Some("Returns"));
        let (_, citations) = sources_prompt(&hits[..1], &EstimateCounter::default(), 1_000);
        assert_eq!(citations[0].line(), format!("[1] Shop help — {page}"));
        // The kind comes from the Content-Type, else the path's extension.
        let records = kb.documents("docs").await.unwrap();
        let kind = |s: &str| records.iter().find(|r| r.source == s).unwrap().kind;
        assert_eq!(kind(&page), DocKind::Html);
        assert_eq!(kind(&notes), DocKind::Markdown);
        assert_eq!(kind(&guide), DocKind::Markdown);
        let points = k.store.points("docs").await;
        assert!(
            points
                .iter()
                .all(|p| p.payload["url"] == p.payload["source"])
        );
    }

    #[tokio::test]
    async fn urls_need_a_network_policy_that_allows_their_address() {
        let base = server().await;
        let k = kit();
        let page = format!("{base}/help");
        let e = kb_with_policy(&k, None).fetch(&page).await.unwrap_err();
        assert!(
            matches!(&e, KnowledgeError::NoNetPolicy { source_name } if *source_name == page),
            "{e:?}"
        );
        assert!(e.to_string().contains("needs a network policy"), "{e}");
        let guarded = kb_with_policy(&k, Some(Arc::new(NetPolicy::guarded())));
        let e = guarded.fetch(&page).await.unwrap_err();
        assert!(matches!(&e, KnowledgeError::Refused { .. }), "{e:?}");
        assert!(
            e.to_string()
                .starts_with(&format!("{page}: refused by the network policy")),
            "{e}"
        );
        // A run reports the refusal and goes on.
        let report = guarded
            .ingest_all("docs", &[Source::url(&page)], false, |_| {})
            .await
            .unwrap();
        assert!(
            report.results[0]
                .error
                .as_deref()
                .unwrap()
                .contains("refused")
        );
        let doc = kb_with_policy(&k, Some(local()))
            .fetch(&page)
            .await
            .unwrap();
        assert_eq!((doc.kind, doc.title.as_str()), (DocKind::Html, "Shop help"));
        // Not http(s): refused by the policy too.
        let e = kb_with_policy(&k, Some(local()))
            .fetch("file:///etc/passwd")
            .await
            .unwrap_err();
        assert!(matches!(&e, KnowledgeError::Refused { .. }), "{e:?}");
    }

    #[tokio::test]
    async fn a_missing_page_an_unavailable_server_and_bodies_over_the_limit_are_errors() {
        let base = server().await;
        let k = kit();
        let kb = kb_with_policy(&k, Some(local()))
            .with_options(IngestOptions {
                load: LoadOptions { max_bytes: 50 },
                ..IngestOptions::default()
            })
            .unwrap();
        let missing = format!("{base}/nothing-here.md");
        let e = kb.fetch(&missing).await.unwrap_err();
        assert!(
            matches!(
                &e,
                KnowledgeError::Fetch {
                    status: Some(404),
                    transient: false,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(
            e.to_string().starts_with(&missing) && e.to_string().contains("404"),
            "{e}"
        );
        let e = kb.fetch(&format!("{base}/down")).await.unwrap_err();
        assert!(
            matches!(
                &e,
                KnowledgeError::Fetch {
                    status: Some(503),
                    ..
                }
            ) && e.is_transient(),
            "{e:?}"
        );
        // Refused from its Content-Length, and while streaming one without it.
        let e = kb.fetch(&format!("{base}/big.txt")).await.unwrap_err();
        assert!(
            matches!(
                e,
                KnowledgeError::TooLarge {
                    size: 100,
                    limit: 50,
                    ..
                }
            ),
            "{e:?}"
        );
        let e = kb.fetch(&format!("{base}/stream.txt")).await.unwrap_err();
        assert!(
            matches!(e, KnowledgeError::TooLarge { size, limit: 50, .. } if size > 50),
            "{e:?}"
        );
    }

    #[test]
    fn a_url_source_round_trips_through_the_jobs_json() {
        let job = IngestJob::new(
            "docs",
            vec![
                Source::url("https://shop.example/help"),
                Source::path("handbook/"),
                Source::inline("note", DocKind::Text, "words"),
            ],
        );
        let json = serde_json::to_value(&job).unwrap();
        assert_eq!(
            json["sources"][0],
            serde_json::json!({"url": "https://shop.example/help"})
        );
        let back: IngestJob = serde_json::from_value(json).unwrap();
        assert_eq!(back, job);
        assert_eq!(back.sources[0].name(), "https://shop.example/help");
    }
}

// ---------------------------------------------------------------------------------------
// Evaluation

#[test]
fn questions_parse_from_jsonl_naming_a_bad_line() {
    let text = "# a comment\n\n{\"question\": \"q one\", \"expected\": [\"a.md\"]}\n   \n{\"question\": \"q two\", \"expected\": [\"https://x.example/b\", \"./c.md\"]}\n";
    let questions = parse_questions(text).unwrap();
    assert_eq!(
        questions,
        [
            EvalQuestion {
                question: "q one".into(),
                expected: vec!["a.md".into()],
            },
            EvalQuestion {
                question: "q two".into(),
                expected: vec!["https://x.example/b".into(), "./c.md".into()],
            },
        ]
    );
    for (bad, line) in [
        (
            "{\"question\": \"q\", \"expected\": [\"a.md\"]}\n{\"question\": \"q\"}",
            2,
        ),
        ("\n\n# c\nnot json", 4),
        ("{\"question\": \"q\", \"expected\": []}", 1),
        ("{\"question\": \" \", \"expected\": [\"a.md\"]}", 1),
        (
            "{\"question\": \"q\", \"expected\": [\"a.md\"], \"extra\": 1}",
            1,
        ),
    ] {
        let e = parse_questions(bad).unwrap_err();
        assert!(
            matches!(&e, KnowledgeError::Questions { line: l, .. } if *l == line),
            "{bad:?}: {e:?}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("questions, line {line}: ")),
            "{e}"
        );
    }
}

#[tokio::test]
async fn evaluation_measures_recall_at_k_and_mrr_over_distinct_sources() {
    // A wide embedder: these few words never share a component.
    let store = Arc::new(Vectors::memory());
    let kb = Knowledge::new(
        store,
        Arc::new(HashEmbedder::new(4096)),
        Arc::new(MemoryStore::new()),
    );
    for (s, t) in [
        // Two chunks of one source: the distinct sources count it once.
        (
            "fruit.md",
            "# Red apple pie\n\nred apple pie\n\n## Tart\n\nred apple tart",
        ),
        ("colors.md", "red blue green"),
        ("pets.md", "dogs bark loud"),
    ] {
        kb.ingest("docs", &md(s, t)).await.unwrap();
    }
    let q = |question: &str, expected: &str| EvalQuestion {
        question: question.into(),
        expected: vec![expected.into()],
    };
    let questions = [
        q("red apple pie", "./fruit.md"), // rank 1 (a leading ./ does not matter)
        q("red apple pie", "colors.md"),  // rank 2: fruit.md's two chunks come first
        q("dogs bark", "pets.md"),        // rank 1
        q("red apple pie", "pets.md"),    // rank 3: outside the top 2
    ];
    let options = SearchOptions {
        hybrid: false,
        ..SearchOptions::default()
    };
    let report = kb.evaluate("docs", &questions, 2, &options).await.unwrap();
    assert_eq!((report.questions, report.k), (4, 2));
    let ranks: Vec<Option<usize>> = report.per_question.iter().map(|r| r.rank).collect();
    assert_eq!(ranks, [Some(1), Some(2), Some(1), None]);
    assert_eq!(report.per_question[0].found, ["fruit.md", "colors.md"]);
    // recall@2 = 3/4; MRR = (1 + 1/2 + 1 + 0) / 4.
    assert!(
        (report.recall_at_k - 0.75).abs() < 1e-12,
        "{}",
        report.recall_at_k
    );
    assert!((report.mrr - 0.625).abs() < 1e-12, "{}", report.mrr);
    // With k = 3 the last one is found third: recall 1, MRR = (1 + 1/2 + 1 + 1/3) / 4.
    let report3 = kb.evaluate("docs", &questions, 3, &options).await.unwrap();
    assert_eq!(report3.per_question[3].rank, Some(3));
    assert_eq!(report3.recall_at_k, 1.0);
    assert!((report3.mrr - (1.0 + 0.5 + 1.0 + 1.0 / 3.0) / 4.0).abs() < 1e-12);

    let table = report.render();
    assert!(
        table.starts_with("4 question(s), k = 2: recall@2 = 0.750, MRR = 0.625\n"),
        "{table}"
    );
    assert!(
        table.contains("red apple pie") && table.contains("*colors.md"),
        "{table}"
    );
    assert_eq!(report.to_string(), table);
    assert!(kb.evaluate("docs", &questions, 0, &options).await.is_err());
    let empty = kb.evaluate("docs", &[], 2, &options).await.unwrap();
    assert_eq!((empty.recall_at_k, empty.mrr), (0.0, 0.0));
}

fn tempdir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "flowbot-kb-{name}-{}-{}",
        std::process::id(),
        fastrand_suffix()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fastrand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}
