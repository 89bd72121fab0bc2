//! all-MiniLM-L6-v2 on libtorch against sentence-transformers itself: the reference vectors
//! are computed by sentence-transformers (fp32, CPU) in the project's venv when the test runs,
//! and every vector of ours must have a cosine of at least 0.9999 with its reference.
//!
//! Needs `. scripts/torch-env` (libtorch, sentence-transformers and the model in .venv).

#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value it got

mod common;

use common::{cosine, minilm_dir, reference};
use flowbot_gpu::{BatchOptions, Batcher, Encoder, Error, Options};

/// Sentences that exercise the tokenizer and the model: cases, accents, scripts the
/// WordPiece vocabulary splits into pieces or maps to `[UNK]`, emoji, whitespace, an empty
/// text, and texts longer than the model's 256 tokens (truncated the same way).
fn sentences() -> Vec<String> {
    let mut s: Vec<String> = [
        "Hello!",
        "How do I reset my password?",
        "I forgot my PASSWORD and can't log in",
        "Where is my order #12345? It was due on 2026-11-30.",
        "Please cancel my subscription immediately.",
        "The quick brown fox jumps over the lazy dog.",
        "Café déjà vu — naïve façade, Ångström, Straße.",
        "東京で一番おいしいラーメン屋はどこですか？",
        "Как сбросить пароль?",
        "مرحبا، كيف حالك؟",
        "I ❤️ this bot 🤖🚀!!",
        "   leading and trailing spaces   ",
        "tabs\tand\nnew\nlines",
        "",
        "a",
        "unbelievably-hyphenated, co-operative re-engineering",
        "SELECT * FROM users WHERE id = 1; -- not an injection, just text",
        "https://example.com/path?query=1&x=y",
        "The weather today is sunny with a chance of rain in the evening.",
        "Machine learning models turn sentences into vectors of numbers.",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    s.push("word ".repeat(300));
    s.push(
        "A long support request that goes on and on about a delivery that never arrived. "
            .repeat(12),
    );
    s
}

#[test]
fn embeddings_equal_sentence_transformers_on_the_cpu() {
    let dir = minilm_dir();
    let texts = sentences();
    let expected = reference(&dir, &texts, "cpu");
    let encoder = Encoder::load(&dir, &Options::cpu()).unwrap();
    assert_eq!(encoder.dimension(), 384);
    assert_eq!(encoder.max_length(), 256);
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    // One batch of every length (padded to the longest), and each text alone (no padding).
    let batched = encoder.embed(&refs).unwrap();
    for (i, text) in texts.iter().enumerate() {
        let alone = encoder.embed(&[text]).unwrap().remove(0);
        for (how, v) in [("batched", &batched[i]), ("alone", &alone)] {
            let c = cosine(v, &expected[i]);
            assert!(
                c >= 0.9999,
                "{how}: cosine {c} with sentence-transformers for {text:?}"
            );
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-4, "{how}: norm {norm} for {text:?}");
        }
    }
    // Truncation: a text of 300 words keeps 256 tokens, as sentence-transformers keeps.
    let long = encoder.tokenizer().tokenize(&texts[20]).unwrap();
    assert_eq!(long.len(), 256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_through_the_batcher_get_the_same_vectors() {
    let dir = minilm_dir();
    let texts = sentences();
    let expected = reference(&dir, &texts, "cpu");
    let encoder = Encoder::load(&dir, &Options::cpu()).unwrap();
    let batcher = Batcher::start(encoder, BatchOptions::default().max_batch(8)).unwrap();
    let mut tasks = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        let b = batcher.clone();
        let text = text.clone();
        tasks.push(tokio::spawn(async move { (i, b.embed_one(&text).await) }));
    }
    for t in tasks {
        let (i, v) = t.await.unwrap();
        let c = cosine(&v.unwrap(), &expected[i]);
        assert!(c >= 0.9999, "cosine {c} for {:?}", texts[i]);
    }
    // Through core's Embedder trait, many texts in one call, in order.
    let many = flowbot_core::llm::Embedder::embed(&batcher, &texts)
        .await
        .unwrap();
    assert_eq!(many.len(), texts.len());
    for (i, v) in many.iter().enumerate() {
        assert!(cosine(v, &expected[i]) >= 0.9999);
    }
    let m = batcher.metrics().snapshot();
    assert_eq!(m.texts, 2 * texts.len() as u64);
    assert!(m.batches < m.texts, "texts were batched: {m:?}");
    assert_eq!(m.sizes.last().copied(), Some(m.batches));
    let mut prom = String::new();
    m.render_prometheus("all-MiniLM", &mut prom);
    assert!(
        prom.contains("flowbot_gpu_batch_size_count{model=\"all-MiniLM\"}"),
        "{prom}"
    );
}

#[test]
fn a_directory_without_a_model_is_refused_naming_the_file() {
    let tmp = std::env::temp_dir().join(format!("flowbot-gpu-empty-{}", std::process::id()));
    std::fs::create_dir_all(&tmp).unwrap();
    let err = Encoder::load(&tmp, &Options::cpu()).unwrap_err();
    assert!(matches!(err, Error::Load { .. }), "{err}");
    assert!(err.to_string().contains("config.json"), "{err}");
    // A broken config names the file and the key.
    std::fs::write(tmp.join("config.json"), r#"{"model_type": "gpt2"}"#).unwrap();
    let err = Encoder::load(&tmp, &Options::cpu()).unwrap_err();
    assert!(err.to_string().contains("config.json"), "{err}");
    // Weights cut short, or not safetensors at all, are refused naming the file.
    let model = minilm_dir();
    std::fs::copy(model.join("config.json"), tmp.join("config.json")).unwrap();
    let weights = std::fs::read(model.join("model.safetensors")).unwrap();
    for (bytes, says) in [
        (&weights[..weights.len() / 2], "lie past the end"),
        (
            &b"\xff\xff\xff\xff\xff\xff\xff\x7fjunk"[..],
            "not a safetensors file",
        ),
        (&b"\x04\x00\x00\x00\x00\x00\x00\x00{]}}"[..], "header:"),
    ] {
        std::fs::write(tmp.join("model.safetensors"), bytes).unwrap();
        let err = Encoder::load(&tmp, &Options::cpu())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&tmp.join("model.safetensors").display().to_string()),
            "{err}"
        );
        assert!(err.contains(says), "{err}");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
    let err = Encoder::load(tmp.join("nowhere"), &Options::cpu()).unwrap_err();
    assert!(err.to_string().contains("not a directory"), "{err}");
}

#[test]
fn settings_the_cpu_cannot_honour_are_refused_by_name() {
    let dir = minilm_dir();
    let err =
        Encoder::load(&dir, &Options::cpu().precision(flowbot_gpu::Precision::F16)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Settings {
                setting: "precision",
                ..
            }
        ),
        "{err}"
    );
    let err = Encoder::load(&dir, &Options::cpu().threads(0)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::Settings {
                setting: "threads",
                ..
            }
        ),
        "{err}"
    );
    if !flowbot_gpu::cuda_available() {
        let err = Encoder::load(
            &dir,
            &Options::default().device(flowbot_gpu::DeviceChoice::Cuda(0)),
        )
        .unwrap_err();
        assert!(err.to_string().contains("0 CUDA device(s)"), "{err}");
    }
}
